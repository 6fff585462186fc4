"""Early-exit networks: exits, staged inference parity, policies, calibration, save/load, errors."""
import math

import pytest
import torch
from torch import nn

from exit_thresholds import between

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.dynamic import MultiExitModel, early_exit, early_exit_predict, early_exit_stream, segment_mode
from netcompress.dynamic.policy import (calibrate_accuracy, calibrate_budget, exit_macs, exit_outputs, full_macs, policy_report,
                                        simulate_exits)
from netcompress.dynamic.training import ExitTraining, FrozenBackbone, exit_losses
from netcompress.export.early_exit import export_early_exit


@pytest.fixture(scope="module")
def lenet_mx():
    torch.manual_seed(0)
    return early_exit(nc.models.create("lenet5", in_channels=1, input_size=28), ["features.2"]).eval()


def _x(n=16, c=1, s=28):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(1))


def test_threshold_nobody_passes_equals_full_network(lenet_mx):
    x = _x()
    logits, exit_at = early_exit_predict(lenet_mx, x, thresholds=2.0)
    full = lenet_mx.backbone.eval()(x)
    assert torch.equal(exit_at, torch.ones(16, dtype=torch.long))
    assert torch.allclose(logits, full, atol=1e-6)
    assert torch.equal(logits.argmax(1), full.argmax(1))


def test_threshold_zero_exits_everything_at_first_head(lenet_mx):
    x = _x()
    logits, exit_at = early_exit_predict(lenet_mx, x, thresholds=0.0)
    assert exit_at.eq(0).all()
    assert torch.allclose(logits, lenet_mx.all_exits(x)[0], atol=1e-6)


def test_entropy_policy_extremes(lenet_mx):
    x = _x()
    assert early_exit_predict(lenet_mx, x, 1.0, "entropy")[1].eq(0).all()
    assert early_exit_predict(lenet_mx, x, -1.0, "entropy")[1].eq(1).all()


def test_policy_forward_in_eval_and_lists_in_training(lenet_mx):
    mx = early_exit(nc.models.create("lenet5"), ["features.2"])
    x = _x(4)
    assert isinstance(mx.train()(x), list) and len(mx(x)) == 2
    mx.eval().set_policy_("max_softmax", 0.0)
    assert torch.allclose(mx(x), mx.all_exits(x)[0], atol=1e-6)


@pytest.mark.parametrize("engine", [early_exit_predict, early_exit_stream])
def test_inference_switches_modes_only_when_the_model_trains(engine, monkeypatch):
    """A deployed (eval-mode) model is not walked by eval()/train() on every call: at batch 1 the walk
    cost LeNet-5 as much as its conv stage. A training model is evaluated and put back in training."""
    mx = early_exit(nc.models.create("lenet5", in_channels=1, input_size=28), ["features.2"])
    calls = []
    real = nn.Module.train
    monkeypatch.setattr(nn.Module, "train", lambda self, mode=True: (calls.append(mode), real(self, mode))[1])
    x = _x(1)
    mx.eval()
    engine(mx, x, thresholds=0.0)  # the first call traces and caches the segments
    calls.clear()
    engine(mx, x, thresholds=0.0)
    assert calls == [] and not mx.training
    mx.train()
    calls.clear()
    logits, exit_at = engine(mx, x, thresholds=0.0)
    assert mx.training and all(m.training for m in mx.modules())
    assert calls and calls[0] is False  # evaluated inside, restored after
    assert torch.allclose(logits, mx.eval().all_exits(x)[0], atol=1e-6)


def test_resnet_segments_match_backbone_and_simulation():
    torch.manual_seed(0)
    r = nc.models.create("resnet8", in_channels=1, input_size=28)
    mx = early_exit(r, ["layer2.0", "layer1"]).eval()  # out of order on purpose, and inside a residual stage
    assert mx.exit_names == ["layer1", "layer2.0"]
    assert segment_mode(mx) == "segments"
    x = _x(32)
    assert torch.allclose(early_exit_predict(mx, x, 2.0)[0], r.eval()(x), atol=1e-5)
    with torch.no_grad():
        outs = mx.all_exits(x)
    t = float(torch.softmax(outs[0], 1).max(1).values.median())  # a threshold some samples pass
    logits, exit_at = early_exit_predict(mx, x, t)
    assert torch.equal(exit_at, simulate_exits(outs, t, "max_softmax"))
    for k in range(3):
        sel = exit_at == k
        assert torch.allclose(logits[sel], outs[k][sel], atol=1e-5)


def test_cached_segments_follow_a_backbone_edited_in_place():
    """The cut segments are cached per model; replacing a module the segments call, a parent of one,
    or a parameter they read makes the next call cut the new backbone, not run the old modules."""
    torch.manual_seed(0)
    m = nc.models.create("lenet5", in_channels=1, input_size=28)
    mx = early_exit(m, ["features.2"]).eval()
    x = _x()
    before = early_exit_predict(mx, x, thresholds=2.0)[0]
    assert torch.allclose(before, mx.backbone(x), atol=1e-6)
    mx.backbone.features[3] = nn.Conv2d(20, 50, 5)  # a module the second segment calls
    assert torch.allclose(early_exit_predict(mx, x, thresholds=2.0)[0], mx.backbone(x), atol=1e-6)
    mx.backbone.classifier = nn.Sequential(nn.Linear(800, 10))  # a parent of called modules, with new children
    after = early_exit_predict(mx, x, thresholds=2.0)[0]
    assert torch.allclose(after, mx.backbone(x), atol=1e-6)
    assert not torch.allclose(after, before, atol=1e-3)
    mx.backbone.features[0].weight = nn.Parameter(torch.zeros(20, 1, 5, 5))  # a new parameter object
    assert torch.allclose(early_exit_predict(mx, x, thresholds=2.0)[0], mx.backbone(x), atol=1e-6)
    assert torch.allclose(early_exit_predict(mx, x, thresholds=0.0)[0], mx.all_exits(x)[0], atol=1e-6)


class _SizeNet(nn.Module):
    """A size read from the input (x.size(0)) is used after the exit cut: torch.fx would pass a
    non-tensor across it; the torch.export graph reads the size again from the live tensor."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        n = x.size(0)
        return self.fc(self.b(self.a(x)).reshape(n, -1))


class _BranchNet(_SizeNet):
    """A branch on the input's values after the exit: neither torch.fx nor torch.export can cut
    the graph there, so stages restart from the input (the fallback)."""

    def forward(self, x):
        h = self.b(self.a(x))
        if bool(h.mean() > 1e9):  # never true on these inputs, but only known at run time
            h = -h
        return self.fc(h.flatten(1))


class _MaskNet(nn.Module):
    """A backbone whose forward takes optional arguments after the input (like timm's ViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4 * 24 * 24, 10)

    def forward(self, x, mask=None, scale: float = 1.0, *, flag: bool = False):
        h = self.b(self.a(x))
        if mask is not None:
            h = h * mask
        return self.fc(h.flatten(1)) * scale


@pytest.mark.parametrize("name", ["custom", "timm:vit_tiny_patch16_224?depth=3"])
def test_optional_forward_arguments_do_not_force_the_restart_fallback(name):
    """Arguments after the input with defaults (timm's VisionTransformer: attn_mask=None,
    is_causal=False) are fixed at their defaults for tracing, so the backbone splits into segments
    (each stage computed once) and the exits match the backbone's own features."""
    if name == "custom":
        model, exits, x = _MaskNet().eval(), ["a"], _x(6)
    else:
        model = nc.models.create(name, num_classes=10, in_channels=1, input_size=32).eval()
        exits, x = ["blocks.0", "blocks.1"], _x(6, 1, 32)
    mx = early_exit(model, exits, example_inputs=x[:2]).eval()
    assert segment_mode(mx) == "segments"
    with torch.no_grad():
        outs = mx.all_exits(x)
        assert torch.allclose(outs[-1], model(x), atol=1e-5)
        t = float(torch.softmax(outs[0], 1).max(1).values.median())
        logits, exit_at = early_exit_predict(mx, x, t)
    assert torch.equal(exit_at, simulate_exits(outs, t, "max_softmax"))


def test_hugging_face_vit_returning_an_output_object_gets_exits(tmp_path):
    """A Hugging Face ViT returns an ImageClassifierOutput, not a tensor: the multi-exit copy reads
    its logits (a forward hook on the copy, rebuilt on load), trains, exits like the simulated
    policy at batch 64 and batch 1, and saves and loads with the same exits."""
    data = nc.data.load("mnist-5k")
    torch.manual_seed(0)
    model = nc.models.create_for("hf:vit", data, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)
    assert not isinstance(model.eval()(data.example[:2]), torch.Tensor)
    mx = early_exit(model, ["vit.layers.0"], example_inputs=data.example)
    nc.train.fit(mx, data, epochs=1, max_steps=3, lr=1e-3, seed=0, progress=False)
    mx.eval()
    x = data.example[:16]
    with torch.no_grad():
        outs = mx.all_exits(x)
        assert not torch.allclose(outs[-1], model.eval()(x).logits)  # trained: the copy moved, the input model did not
        assert torch.allclose(outs[-1], mx.backbone(x), atol=1e-6)
    t = between(torch.softmax(outs[0], 1).max(1).values, 0.5)  # batch 1 and 16 may differ in the last bits
    logits, exit_at = early_exit_predict(mx, x, t)
    assert torch.equal(exit_at, simulate_exits(outs, t, "max_softmax")) and 0 < int(exit_at.sum()) < 16
    one, one_at = early_exit_predict(mx, x[:1], t)
    assert one_at.item() == exit_at[0].item() and torch.allclose(one, logits[:1], atol=1e-5)
    nc.models.save(mx, tmp_path / "mx.pt")
    back = nc.models.load(tmp_path / "mx.pt").eval()
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(back.all_exits(x), outs))


def test_hugging_face_vit_is_cut_into_stages_by_torch_export_and_ships_to_both_runtimes():
    """torch.fx cannot trace a Hugging Face ViT; the torch.export graph is cut at the exit (the
    batch size and the attention mask are computed again after the cut, only the hidden states
    cross it), the stages share the backbone's weights, and the model exports to ONNX Runtime and
    ExecuTorch, where every sample leaves at eager's exit with eager's logits."""
    from netcompress.dynamic.early_exit import _segments
    from netcompress.export.early_exit import EarlyExitRuntime

    data = nc.data.load("mnist-5k")
    torch.manual_seed(0)
    model = nc.models.create_for("hf:vit", data, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)
    mx = early_exit(model, ["vit.layers.0"], example_inputs=data.example).eval()
    assert segment_mode(mx) == "segments"
    x = next(iter(data.test))[0][:16]
    with torch.no_grad():
        live, _ = _segments(mx)[0](x)
        hidden = mx.backbone.vit.layers[0](mx.backbone.vit.embeddings(x))
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        assert len(live) == 1 and torch.equal(live[0], hidden)  # the hidden states alone cross the cut
        calls = [n.target for seg in _segments(mx) for n in seg.graph.nodes if n.op == "call_function"]
        assert torch.ops.aten.arange.default not in calls  # the mask's index grid is a constant, built once
        mx.backbone.vit.layers[1].mlp.fc2.weight.mul_(2)  # the stages read the backbone's own weights
        mx.backbone.vit.layers[1].mlp.fc1 = nn.Linear(32, 64)  # a replaced module: the stages are cut again
        outs = mx.all_exits(x)
        cut = _segments(mx)
        assert _segments(mx) is cut
        mx.double()  # another dtype (or device) of the same parameter objects: cut again there
        assert _segments(mx) is not cut
        mx.float()
    t = between(torch.softmax(outs[0], 1).max(1).values, 0.5)
    mx.set_policy_("max_softmax", [t])
    ref, ref_at = early_exit_predict(mx, x)
    assert torch.equal(ref_at, simulate_exits(outs, [t], "max_softmax")) and 0 < int(ref_at.sum()) < 16
    assert torch.allclose(ref[ref_at == 1], outs[1][ref_at == 1], atol=1e-5)
    for fmt in ("onnx", "executorch"):
        rt = EarlyExitRuntime(export_early_exit(mx, x[:2], fmt))
        logits, at = early_exit_predict(rt, x)
        assert torch.equal(at, ref_at) and torch.allclose(logits, ref, atol=1e-4), fmt
        one, one_at = early_exit_predict(rt, x[:1])
        assert one_at.item() == ref_at[0].item() and torch.allclose(one, ref[:1], atol=1e-4), fmt


@pytest.mark.parametrize("arch,kwargs,exit_name,runtime", [
    ("resnet", dict(task="image-classification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                    layer_type="basic"), "resnet.encoder.stages.0", True),
    ("convnext", dict(task="image-classification", hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=2),
     "convnext.encoder.stages.0", True),
    # torch.onnx cannot translate Swin's window reshapes, even for the plain model: eager stages only
    ("swin", dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], patch_size=2, window_size=7),
     "swin.encoder.layers.0", False),
])
def test_other_hugging_face_image_classifiers_are_cut_into_stages(arch, kwargs, exit_name, runtime):
    """The torch.export cut is not ViT-specific: a CNN (ResNet, ConvNeXt) and a windowed transformer
    (Swin) from Hugging Face get stages whose chain is each exit's logits, and exits like the policy."""
    from netcompress.export.early_exit import EarlyExitRuntime

    data = nc.data.load("mnist-5k")
    torch.manual_seed(0)
    model = nc.models.create_for(f"hf:{arch}", data, **kwargs)
    mx = early_exit(model, [exit_name], example_inputs=data.example).eval()
    assert segment_mode(mx) == "segments"
    x = next(iter(data.test))[0][:16]
    with torch.no_grad():
        outs = mx.all_exits(x)
        state, first = mx.step(0, (x,))
        _, last = mx.step(1, state)
    assert torch.allclose(first, outs[0], atol=1e-5) and torch.allclose(last, outs[1], atol=1e-5)
    t = between(torch.softmax(outs[0], 1).max(1).values, 0.5)
    mx.set_policy_("max_softmax", [t])
    ref, ref_at = early_exit_predict(mx, x)
    assert torch.equal(ref_at, simulate_exits(outs, [t], "max_softmax")) and 0 < int(ref_at.sum()) < 16
    if runtime:
        logits, at = early_exit_predict(EarlyExitRuntime(export_early_exit(mx, x[:2], "onnx")), x)
        assert torch.equal(at, ref_at) and torch.allclose(logits, ref, atol=1e-4)


def test_a_size_read_from_the_input_after_the_cut_is_read_again_from_the_live_tensor():
    """_SizeNet reshapes by x.size(0) after the exit: torch.fx would pass an int across the cut,
    so the torch.export graph is cut instead, and the stages reproduce the model at batch 1 and 8."""
    mx = early_exit(_SizeNet(), ["a"], example_inputs=_x(2)).eval()
    assert segment_mode(mx) == "segments"
    for n in (1, 8):
        x = _x(n)
        with torch.no_grad():
            outs = mx.all_exits(x)
            state, first = mx.step(0, (x,))
            _, last = mx.step(1, state)
        assert torch.allclose(first, outs[0], atol=1e-6) and torch.allclose(last, outs[1], atol=1e-6)


def test_a_restart_mode_model_refuses_export_with_one_clear_line():
    mx = early_exit(_BranchNet(), ["a"], example_inputs=_x(2)).eval()
    assert segment_mode(mx) == "restart"
    with pytest.raises(NetcompressError, match=r"^onnx: cannot export this early-exit model: neither torch.fx nor torch.export "
                       r"can cut its backbone at the exits \['a'\] into stages \(it runs in restart mode\)"):
        export_early_exit(mx, _x(2), "onnx")


def test_an_output_without_logits_is_refused():
    class Headless(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return {"last_hidden_state": self.a(x)}

    with pytest.raises(NetcompressError, match="returns dict; early_exit needs a tensor of logits"):
        early_exit(Headless(), ["a"], example_inputs=torch.randn(2, 4))


def test_fallback_restart_mode_gives_same_predictions():
    mx = early_exit(_BranchNet(), ["a"], example_inputs=_x(2)).eval()
    assert segment_mode(mx) == "restart"
    x = _x(8)
    with torch.no_grad():
        outs = mx.all_exits(x)
    t = float(torch.softmax(outs[0], 1).max(1).values.median())
    logits, exit_at = early_exit_predict(mx, x, t)
    assert torch.equal(exit_at, simulate_exits(outs, t, "max_softmax"))
    assert torch.allclose(logits[exit_at == 1], outs[1][exit_at == 1], atol=1e-6)


@pytest.mark.parametrize("kind", ["segments", "restart", "msdnet"])
def test_stream_mode_rebatches_and_predicts_like_per_batch(kind):
    """Throughput mode: the samples that stay are re-batched for every later stage; each sample still
    gets the exit and logits of the per-batch engine, and no later stage runs on fewer than
    batch_size samples except the last call of each stage."""
    torch.manual_seed(0)
    if kind == "segments":
        r = nc.models.create("resnet8", in_channels=1, input_size=28)
        mx, x = early_exit(r, ["layer1", "layer2.0"]).eval(), _x(50)
    elif kind == "restart":
        mx, x = early_exit(_BranchNet(), ["a"], example_inputs=_x(2)).eval(), _x(50)
    else:
        mx, x = nc.models.create("msdnet-small", in_channels=1, input_size=28).eval(), _x(50)
    with torch.no_grad():
        outs = mx.all_exits(x)
    t = float(torch.softmax(outs[0], 1).max(1).values.median())
    ref, ref_at = early_exit_predict(mx, x, t)
    sizes: list[tuple[int, int]] = []
    real = mx.stepper

    def counting():
        step = real()

        def wrapped(k, state):
            leaves = [state] if torch.is_tensor(state) else torch.utils._pytree.tree_leaves(state)
            sizes.append((k, int(next(v for v in leaves if torch.is_tensor(v)).shape[0])))
            return step(k, state)
        return wrapped

    mx.stepper = counting
    try:
        logits, exit_at = early_exit_stream(mx, x, batch_size=8, thresholds=t)
    finally:
        del mx.stepper
    assert torch.equal(exit_at, ref_at)
    assert torch.allclose(logits, ref, atol=1e-5)
    for k in range(1, mx.num_exits):
        calls = [n for j, n in sizes if j == k]
        assert sum(calls) == int((ref_at >= k).sum())
        assert all(n == 8 for n in calls[:-1])  # full batches but the last
    with pytest.raises(NetcompressError, match="batch_size"):
        early_exit_stream(mx, x, batch_size=0)


def test_bad_exit_names_give_clear_errors_and_leave_model_unchanged():
    m = nc.models.create("lenet5")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(NetcompressError, match="no module named 'features.9'"):
        early_exit(m, ["features.9"])
    with pytest.raises(NetcompressError, match="at least one"):
        early_exit(m, [])
    with pytest.raises(NetcompressError, match="repeat"):
        early_exit(m, ["features.2", "features.2"])
    shared = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    shared.r = nn.ReLU()
    shared.forward = lambda x: shared.r(shared[0](shared.r(x)))
    with pytest.raises(NetcompressError, match="runs 2 times"):
        early_exit(shared, ["r"], example_inputs=_x(2))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(isinstance(c, MultiExitModel) for c in m.modules())


def test_save_reload_keeps_exits_policy_and_outputs(tmp_path):
    mx = early_exit(nc.models.create("lenet5-half", in_channels=1, input_size=28), ["features.2"],
                    head={"pool": 3, "hidden": 16}).eval()
    mx.set_policy_("entropy", [0.3])
    x = _x(8)
    ref = mx.all_exits(x)
    nc.models.save(mx, tmp_path / "mx.pt")
    back = nc.models.load(tmp_path / "mx.pt")
    assert isinstance(back, MultiExitModel)
    assert back.exit_names == ["features.2"] and back.policy == "entropy" and back.thresholds == [0.3]
    for a, b in zip(ref, back.all_exits(x)):
        assert torch.equal(a, b)
    assert torch.equal(back(x), mx(x))


def test_exit_losses_golden_values():
    z = [torch.zeros(2, 3), torch.zeros(2, 3)]
    y = torch.tensor([0, 1])
    assert exit_losses(z, y, [0.5])["exit0"].item() == pytest.approx(0.5 * math.log(3), rel=1e-6)
    # distillation from identical logits: KL = 0, so loss = (1 - a) * CE
    zs = [torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]])]
    ce = -torch.log_softmax(zs[0], 1)[0, 1].item()
    got = exit_losses(zs, torch.tensor([1]), [1.0], distill=0.25, temperature=2.0)["exit0"].item()
    assert got == pytest.approx(0.75 * ce, rel=1e-5)
    # hand-computed KL with T = 1
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p, q = torch.softmax(t, 1), torch.log_softmax(s, 1)
    kl = (p * (p.log() - q)).sum().item()
    got = exit_losses([s, t], torch.tensor([0]), [1.0], distill=1.0, temperature=1.0)["exit0"].item()
    assert got == pytest.approx(kl, rel=1e-5)
    with pytest.raises(NetcompressError, match="weights"):
        exit_losses(z, y, [1.0, 1.0])


def test_frozen_backbone_trains_only_heads(mnist_small):
    mx = early_exit(nc.models.create("lenet5-half", in_channels=1, input_size=28), ["features.2"])
    bb = {k: v.clone() for k, v in mx.backbone.state_dict().items()}
    h0 = [p.clone() for p in mx.heads.parameters()]
    fb = FrozenBackbone()
    nc.train.fit(mx, mnist_small, methods=[fb, ExitTraining([0.3])], max_steps=3, epochs=1, progress=False,
                 evaluate_each_epoch=False)
    fb.finalize(mx)
    assert all(torch.equal(bb[k], v) for k, v in mx.backbone.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(h0, mx.heads.parameters()))
    assert all(p.requires_grad for p in mx.parameters())


def test_budget_calibration_meets_target(mnist_small):
    torch.manual_seed(0)
    mx = early_exit(nc.models.create("lenet5-half", in_channels=1, input_size=28), ["features.2", "features.5"])
    nc.train.fit(mx, mnist_small, methods=[ExitTraining([0.3, 0.6])], max_steps=20, epochs=1, progress=False,
                 evaluate_each_epoch=False)
    ex = mnist_small.example
    cum = exit_macs(mx, ex)
    assert cum == sorted(cum) and cum[-1] >= full_macs(mx, ex)
    outs, y = exit_outputs(mx, mnist_small.calibration(300))
    jump = (cum[-1] - cum[0]) / len(y)  # one sample moving between exits: the stated tolerance
    for frac in (0.3, 0.5, 0.8):
        budget = frac * full_macs(mx, ex)
        t, reached = calibrate_budget(outs, cum, budget)
        assert budget - 2 * jump <= reached <= budget
        again = policy_report(outs, y, cum, t, "max_softmax")["avg_macs"]
        assert again == pytest.approx(reached)
    with pytest.raises(NetcompressError, match="below the first exit"):
        calibrate_budget(outs, cum, 0.5 * cum[0])
    t, reached = calibrate_budget(outs, cum, 10 * cum[-1])
    assert t > 1 and reached == cum[-1]


def _two_class_logits(margins):
    """Logits [m, 0]: max-softmax confidence sigmoid(|m|), prediction class 0 when m > 0."""
    m = torch.tensor(margins, dtype=torch.float32)
    return torch.stack([m, torch.zeros_like(m)], 1)


def test_accuracy_calibration_golden_and_not_fooled_by_a_lucky_threshold():
    """Six samples, target class 0, exit-0 confidences rising from a to f. a: the exit is right, the
    full network wrong; b: the exit wrong; c-f: both right. Full accuracy 5/6. Lowering the threshold
    from 'nobody exits', c-f leave at no loss, then b's exit costs a sample: the result is c's
    confidence, although a lower threshold (a's) is back at 5/6 by luck."""
    exit0 = _two_class_logits([0.5, -1.0, 1.5, 2.0, 2.5, 3.0])
    final = _two_class_logits([-1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    y = torch.zeros(6, dtype=torch.long)
    conf = torch.sigmoid(torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0]))
    t, macs, acc = calibrate_accuracy([exit0, final], y, [1, 10])
    assert t == pytest.approx(conf[2].item()) and macs == pytest.approx((4 * 1 + 2 * 10) / 6)
    assert acc == pytest.approx(5 / 6)
    assert policy_report([exit0, final], y, [1, 10], t, "max_softmax")["accuracy"] == pytest.approx(5 / 6)
    # allowing one sample (1/6) lost: b may leave too, and then a (back to 4/6 + 1/6 = 5/6)
    t, macs, acc = calibrate_accuracy([exit0, final], y, [1, 10], max_drop=1 / 6)
    assert t == pytest.approx(conf[0].item()) and macs == 1.0 and acc == pytest.approx(5 / 6)
    # an exit that is always wrong: nobody may leave early
    t, macs, acc = calibrate_accuracy([_two_class_logits([-3.0] * 6), final], y, [1, 10])
    assert t > 1 and macs == 10.0 and acc == pytest.approx(5 / 6)
    with pytest.raises(NetcompressError, match="fraction"):
        calibrate_accuracy([exit0, final], y, [1, 10], max_drop=2.0)
    with pytest.raises(NetcompressError, match="5 targets for outputs of \\[6, 6\\] samples"):
        calibrate_accuracy([exit0, final], y[:5], [1, 10])


@pytest.mark.parametrize("policy", ["max_softmax", "entropy"])
def test_calibrate_accuracy_sweep_matches_trying_every_threshold(policy):
    """The calibration sweeps the distinct scores once; it must pick what simulating every candidate
    threshold picks, ties (rounded logits) and three exits included."""
    from netcompress.dynamic.base import confidence, user_threshold

    def run(outs, y, cum, threshold):
        exit_at = simulate_exits(outs, threshold, policy)
        right = torch.stack([z.argmax(1) for z in outs]).gather(0, exit_at[None])[0] == y
        return threshold, torch.tensor(cum, dtype=torch.float64)[exit_at].mean().item(), right.double().mean().item()

    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        k, n = 2 + trial % 3, 5 + trial
        outs = [(3 * torch.randn(n, 3, generator=g)).round() for _ in range(k)]
        y = torch.randint(0, 3, (n,), generator=g)
        cum = list(range(1, 2 * k, 2))
        for drop in (0.0, 0.1):
            best = run(outs, y, cum, user_threshold(math.inf, policy))
            for cut in torch.unique(torch.cat([confidence(z, policy) for z in outs[:-1]])).flip(0).tolist():
                r = run(outs, y, cum, user_threshold(cut, policy))
                if r[2] < run(outs, y, cum, user_threshold(math.inf, policy))[2] - drop - 1e-12:
                    break
                best = r
            assert calibrate_accuracy(outs, y, cum, drop, policy) == pytest.approx(best, rel=1e-12)


def test_batch_one_path_records_no_graph_and_returns_a_fresh_exit_index():
    torch.manual_seed(0)
    mx = early_exit(nc.models.create("lenet5", in_channels=1, input_size=28), ["features.1"],
                    head={"hidden": 0}).eval()
    x = _x(1)
    logits, exit_at = early_exit_predict(mx, x, thresholds=0.0)  # grad mode on: no graph is recorded
    assert not logits.requires_grad and exit_at.dtype == torch.long and exit_at.tolist() == [0]
    exit_at[0] = 5  # the caller owns the returned tensor: nothing cached is changed
    assert early_exit_predict(mx, x, thresholds=0.0)[1].tolist() == [0]
    logits, exit_at = early_exit_predict(mx, x, thresholds=2.0)
    assert exit_at.tolist() == [1] and torch.allclose(logits, mx.backbone(x), atol=1e-6)


def test_cached_stepper_follows_replaced_heads():
    """The per-stage calls are cached with the segments; a head replaced in the list, or a new head
    list, is what the next call runs."""
    torch.manual_seed(0)
    mx = early_exit(nc.models.create("lenet5", in_channels=1, input_size=28), ["features.1"]).eval()
    x = _x(4)
    early_exit_predict(mx, x, thresholds=0.0)
    mx.heads[0] = nn.Sequential(nn.Flatten(), nn.Linear(20 * 24 * 24, 10))
    assert torch.allclose(early_exit_predict(mx, x, thresholds=0.0)[0], mx.all_exits(x)[0], atol=1e-6)
    mx.heads = nn.ModuleList([nn.Sequential(nn.Flatten(), nn.Linear(20 * 24 * 24, 10))])
    assert torch.allclose(early_exit_predict(mx, x[:1], thresholds=0.0)[0], mx.all_exits(x[:1])[0], atol=1e-6)


def test_head_without_pooling_when_pool_covers_the_map(tmp_path):
    """pool >= the feature map: no pooling layer runs (an Identity keeps the layer indices), and the
    model saves and loads."""
    torch.manual_seed(0)
    mx = early_exit(nc.models.create("lenet5", in_channels=1, input_size=28), ["features.2"],
                    head={"pool": 12, "hidden": 0}).eval()
    assert isinstance(mx.heads[0][0], nn.Identity) and mx.heads[0][2].in_features == 20 * 12 * 12
    back = nc.models.load(nc.models.save(mx, tmp_path / "m.pt")).eval()
    x = _x(3)
    assert torch.allclose(back.all_exits(x)[0], mx.all_exits(x)[0], atol=1e-6)


def test_policy_report_counts(lenet_mx):
    x = _x(20)
    y = torch.randint(0, 10, (20,))
    outs = lenet_mx.all_exits(x)
    cum = exit_macs(lenet_mx, x)
    r = policy_report(outs, y, cum, 0.0, "max_softmax")
    assert r["exits"][0]["share"] == 1.0 and r["avg_macs"] == cum[0]
    assert r["accuracy"] == pytest.approx((outs[0].argmax(1) == y).float().mean().item())
    r = policy_report(outs, y, cum, 2.0, "max_softmax")
    assert r["exits"][1]["share"] == 1.0 and r["exits"][0]["accuracy_exited"] is None


def test_segment_cache_follows_structural_changes():
    torch.manual_seed(0)
    mx = early_exit(nc.models.create("lenet5-half", in_channels=1, input_size=28), ["features.1"]).eval()
    x = _x(6)
    early_exit_predict(mx, x, 2.0)  # builds the cached segments
    old = mx.backbone.features[3]
    new = nn.Conv2d(old.in_channels, 7, 5)  # a 'pruned' conv: fewer channels, and its consumers shrink too
    mx.backbone.features[3] = new
    mx.backbone.classifier[0] = nn.Linear(7 * 4 * 4, mx.backbone.classifier[0].out_features)
    logits, _ = early_exit_predict(mx, x, 2.0)
    assert torch.allclose(logits, mx.backbone(x), atol=1e-6)


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_transformer_exit_heads_read_the_class_token_or_the_token_mean(tokens, tmp_path):
    """A ViT exit head on (batch, tokens, dim) features: the class token (token 0) or the mean over the
    tokens, then LayerNorm + Linear; the multi-exit model saves and loads pickle-free."""
    torch.manual_seed(0)
    vit = nc.models.create("vit-tiny", num_classes=10, in_channels=1, input_size=28)
    x = torch.randn(3, 1, 28, 28)
    m = early_exit(vit, ["blocks.1"], head={"hidden": 0, "tokens": tokens}, example_inputs=x).eval()
    feats = {}
    handle = m.backbone.blocks[1].register_forward_hook(lambda mod, i, o: feats.setdefault("t", o))
    outs = m(x)
    handle.remove()
    head = m.heads[0]
    pooled = feats["t"][:, 0] if tokens == "cls" else feats["t"].mean(1)
    torch.testing.assert_close(outs[0], head[2](head[1](pooled)))
    nc.models.save(m, tmp_path / "m.pt")
    back = nc.models.load(tmp_path / "m.pt").eval()
    torch.testing.assert_close(back(x)[0], outs[0])
