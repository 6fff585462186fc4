"""Each distillation protocol runs end to end on a tiny budget and returns what it promises;
gradients never reach the teacher; the recipe stage and the CLI work."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.distill import AT, DML, KD, RKD, SP, DistillConfig, Hint, Peers, distill, make_fit
from netcompress.distill.methods import zero_task_loss

TINY = dict(epochs=1, max_steps=3)


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.subset(256, 64)


@pytest.fixture(scope="module")
def teacher(small):
    t = nc.models.create("lenet5")
    nc.train.fit(t, small, epochs=1, max_steps=4, progress=False)
    return t


def student():
    return nc.models.create("lenet5-quarter")


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cls", [KD, AT, RKD, SP, Hint])
def test_teacher_gets_no_gradient_and_stays_unchanged(small, cls):
    teacher = nc.models.create("resnet8", in_channels=1, input_size=28)  # BN: running stats must not move
    teacher.train()
    before = _state(teacher)
    s = nc.models.create("lenet5-quarter")
    kw = {"example_inputs": small.example} if cls is not KD else {}
    if cls in (AT,):
        kw["alpha"] = 0.5
    m = cls(teacher, **kw)
    loss_fn = zero_task_loss if cls is Hint else m.task_loss
    x, y = next(iter(small.train))
    s = m.prepare(s)
    out = s(x)
    parts = m.loss_terms(s, x, y, out)
    sum(parts.values()).add(loss_fn(out, y)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in s.parameters())
    m.finalize(s)
    assert _same(before, _state(teacher)) and teacher.training  # mode restored, BN stats unchanged
    assert not teacher._forward_hooks and not any(mod._forward_hooks for mod in teacher.modules())


def test_kd_mixing_and_task_loss(small, teacher):
    kd = KD(teacher, temperature=4.0, alpha=0.9)
    x, y = next(iter(small.train))
    s = kd.prepare(student())
    out = s(x)
    ce = torch.nn.functional.cross_entropy(out, y)
    assert kd.task_loss(out, y).item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
    want = 0.9 * nc.distill.kd_loss(out, teacher(x), 4.0)
    assert kd.loss_terms(s, x, y, out)["kd"].item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(NetcompressError, match="alpha"):
        KD(teacher, alpha=1.5)
    with pytest.raises(NetcompressError, match="teacher object"):
        KD(teacher).prepare(teacher)


def test_fitnet_hint_stage_trains_only_the_lower_part_and_regressor(small, teacher):
    s = student()
    hint = Hint(teacher, layers=["features.3"], example_inputs=small.example)  # student conv2 -> teacher conv2
    before = _state(s)
    make_fit(small, **TINY)(s, methods=[hint], loss_fn=zero_task_loss, tag="hint")
    hint.finalize(s)
    after = _state(s)
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert not torch.equal(before["features.3.weight"], after["features.3.weight"])
    assert torch.equal(before["classifier.0.weight"], after["classifier.0.weight"])  # upper part untouched
    reg = hint.adapters[0].proj
    assert isinstance(reg, torch.nn.Conv2d) and reg.in_channels == 12 and reg.out_channels == 50


def test_feature_adapter_when_shapes_differ(small):
    t = nc.models.create("resnet8", in_channels=1, input_size=28)
    m = Hint(t, layers=[["features.4", "layer2"]], example_inputs=small.example)
    s = m.prepare(student())
    a = m.adapters[0]
    assert a.proj.out_channels == 32 and a.size == (14, 14)  # 12ch 8x8 -> 32ch 14x14
    assert len(m.extra_parameters()) == 1
    m.finalize(s)
    with pytest.raises(NetcompressError, match="has no module"):
        AT(t, layers=["nope"], example_inputs=small.example).prepare(student())


@pytest.mark.parametrize("method", ["kd", "fitnet", "at", "rkd", "sp"])
def test_single_teacher_protocols_run(small, teacher, method):
    before = _state(teacher)
    r = distill(method, teacher, student(), small, **TINY)
    assert r.accuracy == pytest.approx(nc.train.evaluate(r.student, small), abs=1e-6)
    assert r.extra["method"] == method and r.extra["teacher_acc"] == pytest.approx(nc.train.evaluate(teacher, small), abs=1e-6)
    assert r.student.netcompress_spec["name"] == "lenet5-quarter"
    assert _same(before, _state(teacher))
    hist = next(iter(r.histories.values()))
    assert hist and hist[-1]["steps"] == 3
    if method in ("at", "rkd", "sp"):
        assert r.extra["layer_pairs"]


def test_dml_returns_n_peers_and_ensemble(small):
    r = distill("dml", None, student(), small, peers=3, **TINY)
    assert len(r.extra["peer_acc"]) == 3
    assert (r.extra["temperature"], r.extra["alpha"]) == (1.0, None)  # what the mutual KL used, not T 4
    assert r.extra["ensemble_acc"] == pytest.approx(nc.train.evaluate(r.models["ensemble"], small), abs=1e-6)
    assert {"peer0", "peer1", "peer2", "ensemble"} <= set(r.models)
    logs = r.histories["dml"][-1]
    assert {"kl0", "kl1", "kl2"} <= set(logs)
    peers = [r.models[f"peer{i}"] for i in range(3)]
    assert not torch.equal(peers[0].features[0].weight, peers[1].features[0].weight)  # different inits


def test_dml_peers_differ_after_a_seeded_fit(small):
    """Regression: a student built right after ``torch.manual_seed(0)`` and a `fit(seed=0)` of
    another model used to get a peer with identical weights (fit left the RNG at manual_seed(0)),
    so the KL terms were 0 and DML was the student trained alone."""
    torch.manual_seed(0)
    s = student()
    nc.train.fit(copy.deepcopy(s), small, max_steps=1, progress=False, seed=0)
    r = distill("dml", None, s, small, **TINY)
    assert not torch.equal(r.models["peer0"].features[0].weight, r.models["peer1"].features[0].weight)
    assert r.histories["dml"][-1]["kl0"] > 0


def test_dml_refuses_peers_that_cannot_be_reinitialised(small):
    class Frozen(torch.nn.Module):  # no submodule has reset_parameters
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(784, 10) * 0.01)

        def forward(self, x):
            return x.flatten(1) @ self.w

    with pytest.raises(NetcompressError, match="dml: peer 1 starts from the same weights"):
        distill("dml", None, Frozen(), small, **TINY)


def test_dml_step_gives_each_peer_only_its_own_gradient(small):
    a, b = student(), student()
    x, y = next(iter(small.train))
    group = DML().prepare(Peers([a, b]))
    out = group(x)
    DML().loss_terms(group, x, y, out)["kl0"].backward()
    assert any(p.grad is not None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters())  # peer 1's output is detached in peer 0's loss


def test_dml_weight_ramps_up_over_the_first_share_of_the_steps(small):
    """The mutual term starts at exp(-5) of its weight and reaches it after `rampup` of the budget,
    which `fit` gives the method before the first step; rampup 0 is the paper's constant weight."""
    m = DML(weight=2.0, rampup=0.5)
    m.on_train_begin(100)
    at = []
    for step in (0, 25, 50, 99):
        m.after_step(None, step)
        at.append(m.current_weight())
    assert at == pytest.approx([2 * math.exp(-5), 2 * math.exp(-5 * 0.25), 2.0, 2.0])
    a, b = student(), student()
    x, y = next(iter(small.train))
    group = Peers([a, b])
    out = group(x)
    m.after_step(None, 0)
    ramped = m.loss_terms(group, x, y, out)["kl0"]
    flat = DML(weight=2.0).loss_terms(group, x, y, out)["kl0"]
    assert ramped.item() == pytest.approx(math.exp(-5) * flat.item(), rel=1e-5)
    with pytest.raises(NetcompressError, match="rampup"):
        DML(rampup=1.5)

    class Budget(nc.core.Method):
        def on_train_begin(self, total_steps):
            self.total = total_steps

    seen = Budget()
    nc.train.fit(student(), small, methods=[seen], epochs=1, max_steps=3, progress=False)
    assert seen.total == 3
    nc.train.fit(student(), small, methods=[seen], epochs=2, progress=False, batch_size=64)
    assert seen.total == 2 * 4  # 256 training images in batches of 64


def test_dml_step_is_checkpointed():
    m = DML(rampup=0.3)
    m.after_step(None, 17)
    again = DML(rampup=0.3)
    again.load_state_dict(m.state_dict())
    assert again.step == 17


def test_dml_defaults_ramp_to_weight_two_and_the_paper_keeps_one(small, monkeypatch):
    made = []
    real = nc.distill.methods.DML.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append((self.weight, self.rampup))

    monkeypatch.setattr(nc.distill.methods.DML, "__init__", spy)
    distill("dml", None, student(), small, **TINY)
    distill("dml", None, student(), small, rampup=0, **TINY)
    distill("dml", None, student(), small, rampup=0.1, weights={"kl": 0.5}, **TINY)
    assert made == [(2.0, 0.3), (1.0, 0.0), (0.5, 0.1)]


def test_distill_result_depends_on_the_seed_alone(small):
    """`distill(..., seed=s)` builds peers (and any other model) from `s`, not from whatever the
    caller drew before, and gives the caller's RNG state back."""
    torch.manual_seed(3)
    s = student()
    runs = []
    for draws in (0, 5):
        torch.rand(draws)
        state = torch.get_rng_state()
        r = distill("dml", None, copy.deepcopy(s), small, seed=1, **TINY)
        assert torch.equal(torch.get_rng_state(), state)
        runs.append(_state(r.models["peer1"]))
    assert _same(*runs)
    other = distill("dml", None, copy.deepcopy(s), small, seed=2, **TINY)
    assert not _same(runs[0], _state(other.models["peer1"]))


def test_born_again_k_generations_plus_ensemble(small, teacher):
    r = distill("born-again", teacher, None, small, generations=3, **TINY)
    assert len(r.extra["generation_acc"]) == 3 and "ensemble_acc" in r.extra
    gens = [r.models[f"gen{k}"] for k in (1, 2, 3)]
    assert r.student is gens[-1]
    x = small.example
    with torch.no_grad():
        want = torch.stack([g.eval()(x) for g in gens]).mean(0)
        assert torch.allclose(r.models["ensemble"](x), want, atol=1e-6)
    assert sum(p.numel() for p in gens[0].parameters()) == sum(p.numel() for p in teacher.parameters())


def test_takd_builds_interpolated_assistant_and_reports_direct_kd(small, teacher):
    r = distill("takd", teacher, student(), small, **TINY)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(r.student) < r.extra["assistant_params"] < n(teacher)
    assert {"assistant_acc", "direct_kd_acc", "takd_acc"} <= set(r.extra)
    r2 = distill("takd", teacher, student(), small, assistant="lenet5-half", compare_direct=False, **TINY)
    assert r2.models["assistant"].netcompress_spec["name"] == "lenet5-half" and "direct_kd_acc" not in r2.extra


def test_takd_assistant_for_a_teacher_outside_the_zoo_is_cut_from_it(small):
    """A timm teacher has no width argument: the assistant is the teacher cut to the width whose
    parameter count is about the geometric mean of teacher and student (it used to be an error)."""
    torch.manual_seed(0)
    t = nc.models.create_for("timm:test_resnet", small)
    s = nc.distill.student_from_teacher(t, small, width=0.25)
    before = copy.deepcopy(s.state_dict())
    r = distill("takd", t, s, small, compare_direct=False, **TINY)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(s) < r.extra["assistant_params"] < n(t)
    assert abs(math.log(r.extra["assistant_params"] / math.sqrt(n(s) * n(t)))) < math.log(1.3)
    assert any(not torch.equal(v, r.student.state_dict()[k]) for k, v in before.items())
    with pytest.raises(NetcompressError, match=r"takd: the student \(.* parameters\) is not smaller than the teacher"):
        distill("takd", t, copy.deepcopy(t), small, compare_direct=False, **TINY)


def test_compare_scratch_and_config_errors(small, teacher):
    r = distill("kd", teacher, student(), small, compare_scratch=True, **TINY)
    e = r.extra
    assert "scratch_acc" in e and "scratch" in r.models
    if e["teacher_acc"] > e["scratch_acc"]:
        want = (e["student_acc"] - e["scratch_acc"]) / (e["teacher_acc"] - e["scratch_acc"])
        assert e["gap_recovered"] == pytest.approx(want, abs=1e-3)
    else:
        assert "gap_recovered" not in e
    with pytest.raises(NetcompressError, match="unknown distillation method 'kdd'"):
        distill("kdd", teacher, student(), small)
    with pytest.raises(NetcompressError, match="weights: unknown key"):
        distill("at", teacher, student(), small, weights={"sp": 1.0})
    with pytest.raises(NetcompressError, match="temperature"):
        DistillConfig.from_dict({"method": "kd", "temperature": 0})
    with pytest.raises(NetcompressError, match="unknown key"):
        DistillConfig.from_dict({"method": "kd", "temprature": 2})


def test_distill_stage_in_a_context(small, teacher, tmp_path):
    from netcompress.distill.stages import run_stage
    from netcompress.recipe.stages import StageContext
    from netcompress.train import TrainConfig

    ctx = StageContext(data=small, train=TrainConfig(epochs=1, max_steps=3), seed=0, out_dir=tmp_path / "s",
                       models={"baseline": teacher}, progress=False, name="kd-student")
    cfg = DistillConfig.from_dict({"method": "kd", "student": {"name": "lenet5", "kwargs": {"width": 0.25}},
                                   "compare_scratch": True})
    res = run_stage(ctx, copy.deepcopy(teacher), cfg)
    assert res.extra["student_acc"] >= 0 and "scratch_acc" in res.extra and res.history
    assert (tmp_path / "s" / "kd.ckpt").exists() and (tmp_path / "s" / "scratch.ckpt").exists()
    assert ctx.figures
    with pytest.raises(NetcompressError, match="teacher"):
        run_stage(ctx, teacher, DistillConfig.from_dict({"method": "kd", "teacher": "nope", "student": "lenet5"}))
    with pytest.raises(NetcompressError, match="student: required"):
        run_stage(ctx, teacher, DistillConfig.from_dict({"method": "kd"}))


def test_cli_distill(tmp_path, teacher):
    from netcompress.cli import main
    from netcompress.models import save

    tfile = save(teacher, tmp_path / "t.pt")
    out = tmp_path / "s.pt"
    rc = main(["distill", str(tfile), "--data", "digits", "--student", "lenet300-quarter", "--method", "kd",
               "--max-steps", "2", "--epochs", "1", "--out", str(out)])
    # lenet5 teacher trained on 28x28 cannot read 8x8 digits: a clean error (exit 2), no traceback
    assert rc == 2
    dfile = save(nc.models.create("lenet300", in_channels=1, input_size=8), tmp_path / "d.pt")
    rc = main(["distill", str(dfile), "--data", "digits", "--student", "lenet300-quarter", "--method", "rkd",
               "--weights", "distance=10", "--max-steps", "2", "--epochs", "1", "--out", str(out)])
    assert rc == 0 and out.exists()
    assert nc.models.load(out).fc1.out_features == 75
    assert main(["distill", str(dfile), "--data", "digits", "--student", "lenet300-quarter", "--weights", "x",
                 "--out", str(out)]) == 2


def test_recipe_file_validates():
    from netcompress.recipe.schema import load_recipe

    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "distill-lenet5.yaml")
    methods = set()
    for v in r.variants:
        for item in v.stages:
            cfg = DistillConfig.from_dict(item["distill"])
            cfg.validate_method()
            methods.add(cfg.method)
    assert methods == {"kd", "fitnet", "at", "rkd", "sp", "dml", "born-again", "takd"}


def test_distill_variant_through_the_recipe_runner(tmp_path):
    from netcompress.recipe.runner import run_recipe

    text = """
name: t
data: digits
model: lenet300
train: {epochs: 1, max_steps: 2, batch_size: 32}
measure: {latency: false}
variants:
  - name: kd-student
    from: baseline
    stages:
      - distill: {method: kd, student: lenet300-quarter, compare_scratch: true}
"""
    (tmp_path / "r.yaml").write_text(text)
    res = run_recipe(tmp_path / "r.yaml", out=tmp_path / "run", progress=False)
    entry = next(e for e in res.entries if e["variant"] == "kd-student")
    assert {"student_acc", "teacher_acc", "scratch_acc"} <= set(entry["extra"])
    assert res.models[entry["stage"]].fc1.out_features == 75


@pytest.fixture(scope="module")
def trained_teacher(small):
    torch.manual_seed(0)
    t = nc.models.create("lenet5")
    nc.train.fit(t, small, epochs=6, progress=False)
    return t


@pytest.mark.parametrize("method,key", [("at", "at"), ("sp", "sp")])
def test_feature_weights_are_balanced_against_the_task_loss_unless_given(small, trained_teacher, method, key):
    """At the papers' weights the AT / SP terms start at 5-9x the cross-entropy on LeNet-5 and a
    BatchNorm-free student collapses (7 % / 22 % with defaults on mnist-5k); by default the first
    step lowers the weight so the term starts at the task loss the student trains with:
    (1 - alpha) CE beside the default KD term (alpha 0.9), the CE without it (alpha 0), and the full
    CE when there is no task term (alpha 1). Given weights are kept."""
    teacher = trained_teacher
    first = {}
    for alpha in (None, 0.0, 1.0):
        torch.manual_seed(0)
        r = distill(method, teacher, student(), small, epochs=1, max_steps=1,
                    **({} if alpha is None else {"alpha": alpha}))
        first[alpha] = r.histories[method][0]
        assert 0 < r.extra["weight_scale"] < 1
        assert ("kd" in first[alpha]) == (alpha != 0.0)
    ce = first[0.0]["task"]  # the same student, batch and first forward in each run
    assert first[None]["task"] == pytest.approx(0.1 * ce, rel=1e-4) and first[1.0]["task"] == 0
    for alpha, ref in ((None, 0.1 * ce), (0.0, ce), (1.0, ce)):
        assert first[alpha][key] <= ref * (1 + 1e-5)  # no larger than the task loss
        assert first[alpha][key] == pytest.approx(ref, rel=1e-4)  # lowered to it, not below
    torch.manual_seed(0)
    paper = {"at": 500.0, "sp": 3000.0}[key]
    given = distill(method, teacher, student(), small, epochs=1, max_steps=1, weights={key: paper})
    assert "weight_scale" not in given.extra
    assert given.histories[method][0][key] > first[None][key]


def test_balancing_factor_is_checkpointed(small, teacher):
    m = AT(teacher, example_inputs=small.example)
    m.scale = 0.25
    fresh = AT(teacher, example_inputs=small.example)
    fresh.load_state_dict(m.state_dict())
    assert fresh.scale == 0.25


def test_balancing_with_every_feature_weight_zero_trains_on_ce_alone(small, teacher):
    m = RKD(teacher, distance_weight=0.0, angle_weight=0.0, example_inputs=small.example)
    s = student()
    h = nc.train.fit(s, small, methods=[m], loss_fn=m.task_loss, max_steps=1, progress=False)
    m.finalize(s)
    assert m.scale is None and not {"rkd_distance", "rkd_angle"} & set(h.to_list()[0])


@pytest.mark.parametrize("method, lr", [("kd", 0.01), ("fitnet", 0.01), ("dml", 0.04), ("rkd", 0.01)])
def test_default_budget_every_phase_and_the_scratch_control(small, teacher, method, lr):
    """Without `epochs`, every phase trains PATIENCE x train.epochs (the hint phase too); the scratch
    control trains as many epochs at the plain training lr; given values are kept as given."""
    from netcompress.distill import default_epochs, run_distill
    from netcompress.distill.protocols import PATIENCE
    from netcompress.train import TrainConfig
    from netcompress.train.loop import History

    calls = []

    def fit_fn(model, methods=(), loss_fn=None, tag="train", **over):
        calls.append((tag, over.get("epochs"), over.get("lr")))
        return History()

    cfg = DistillConfig.from_dict({"method": method, "compare_scratch": True})
    train = TrainConfig(epochs=3, lr=0.04)
    res = run_distill(cfg, None if method == "dml" else teacher, student(), small, fit_fn, train=train)
    assert default_epochs(cfg, train) == PATIENCE * 3 == 6
    assert res.extra["epochs"] == 6 and res.extra["lr"] == pytest.approx(lr)
    assert calls[-1] == ("scratch", 6, None)  # None: fit's own train.lr
    assert len(calls) >= 2 and all(c[1:] == (6, pytest.approx(lr)) for c in calls[:-1])
    calls.clear()
    cfg = DistillConfig.from_dict({"method": method, "epochs": 1.5, "lr": 0.2})
    run_distill(cfg, None if method == "dml" else teacher, student(), small, fit_fn, train=train)
    assert all(c[1:] == (1.5, 0.2) for c in calls)
    calls.clear()  # Adam normalises the gradient scale away: no lr / T
    run_distill(DistillConfig.from_dict({"method": method}), None if method == "dml" else teacher, student(), small,
                fit_fn, train=TrainConfig(epochs=3, lr=0.04, optimizer="adamw"))
    assert all(c[1:] == (6, 0.04) for c in calls)


def test_default_budget_through_the_function_stage_and_cli(small, teacher, tmp_path, capsys):
    """`distill(...)`, the recipe stage and `netcompress distill` resolve the same default epochs and lr."""
    from netcompress.cli import main
    from netcompress.distill.stages import run_stage
    from netcompress.models import save
    from netcompress.recipe.stages import StageContext
    from netcompress.train import TrainConfig

    train = TrainConfig(epochs=0.02, lr=0.04)
    r = distill("kd", teacher, student(), small, train=train)
    assert (r.extra["epochs"], r.extra["lr"]) == (pytest.approx(0.04), pytest.approx(0.01))
    ctx = StageContext(data=small, train=train, seed=0, out_dir=tmp_path / "s", models={"baseline": teacher},
                       progress=False, name="kd")
    res = run_stage(ctx, teacher, DistillConfig.from_dict({"method": "kd", "student": "lenet5-quarter"}))
    assert (res.extra["epochs"], res.extra["lr"]) == (r.extra["epochs"], r.extra["lr"])
    tfile = save(teacher, tmp_path / "t.pt")
    capsys.readouterr()
    rc = main(["distill", str(tfile), "--data", "mnist-5k", "--student", "lenet5-quarter", "--train-epochs", "0.02",
               "--train-lr", "0.04", "--out", str(tmp_path / "s.pt"), "--json"])
    assert rc == 0
    extra = json.loads(capsys.readouterr().out)["extra"]
    assert (extra["epochs"], extra["lr"]) == (r.extra["epochs"], r.extra["lr"])


class _Windows(torch.nn.Module):
    """A conv map that is also seen channels-last and cut into attention windows folded into the
    batch dim (as in Swin and MaxViT): only the channel-first per-sample maps are AT layers."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm, self.win, self.fc = torch.nn.LayerNorm(8), torch.nn.Identity(), torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 16)
        n = x.shape[0]
        y = self.norm(x.permute(0, 2, 3, 1))  # (N, 16, 16, 8)
        w = self.win(y.reshape(n, 2, 8, 2, 8, 8).permute(0, 1, 3, 2, 4, 5).reshape(n * 4, 8, 8, 8))
        return self.fc(self.conv2(x).mean((2, 3)) + w.mean((1, 2)).view(n, 4, 8).mean(1))


def test_attention_transfer_layers_are_channel_first_per_sample_maps(small):
    from netcompress.distill.features import spatial_layers

    x = small.example
    assert spatial_layers(_Windows(), x) == ["conv", "conv2"]  # not the channels-last norm, not the windows
    r = distill("at", _Windows(), _Windows(), small, **TINY)  # it failed: windows have 4x the batch's rows
    assert all(math.isfinite(h[-1]["at"]) for h in r.histories.values())
