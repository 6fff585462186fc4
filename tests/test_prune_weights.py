"""Unstructured pruning, schedules, Network Slimming training, the `prune` stage and CLI."""
import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.cli import main
from netcompress.core.errors import NetcompressError
from netcompress.prune.schedule import SlimmingMethod, iterative_weights_, step_sparsities
from netcompress.prune.unstructured import AGPMethod, MaskMethod, agp_sparsity, finalize_, masks_of, sparsity_of, weights_
from netcompress.recipe.stages import STAGES, StageContext
from netcompress.train import TrainConfig


def _zeros(model):
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_global_sparsity_is_exact_and_keeps_the_largest():
    m = nc.models.create("lenet300", input_size=8)
    w_before = m.fc1.weight.detach().abs().clone()
    masks = weights_(m, "l1", 0.8)
    assert _zeros(m) == pytest.approx(0.8, abs=1e-4)
    assert set(masks) == {"fc1", "fc2", "fc3"}
    kept = w_before[masks["fc1"]]
    assert kept.min() >= w_before[~masks["fc1"]].max()  # magnitude order inside a layer
    assert torch.equal(m.fc1.weight_mask.bool(), masks["fc1"])


def test_layer_scope_and_per_type_dict():
    m = nc.models.create("lenet5")
    weights_(m, "l1", 0.5, scope="layer")
    assert all(v == pytest.approx(0.5, abs=1e-3) for v in sparsity_of(m).values())
    m = nc.models.create("lenet5")
    weights_(m, "l1", {"Conv2d": 0.6, "Linear": 0.92})
    sp = sparsity_of(m)
    assert sp["features.0"] == pytest.approx(0.6, abs=0.01) and sp["classifier.0"] == pytest.approx(0.92, abs=1e-3)
    m = nc.models.create("lenet5")
    weights_(m, "l1", 0.5, filter_fn=lambda mod, name: name == "classifier.2")
    assert set(masks_of(m)) == {"classifier.2"}


def test_random_differs_from_magnitude_and_masks_only_grow():
    a, b = nc.models.create("lenet300", input_size=8), None
    b = copy.deepcopy(a)
    weights_(a, "l1", 0.5)
    weights_(b, "random", 0.5, seed=1)
    assert not torch.equal(a.fc1.weight_mask, b.fc1.weight_mask)
    first = b.fc1.weight_mask.clone()
    weights_(b, "random", 0.7, seed=2)
    assert bool((b.fc1.weight_mask <= first).all())  # pruned weights stay pruned


def test_masks_hold_during_finetuning_then_finalize(digits, tmp_path):
    m = nc.models.create("lenet300", input_size=8)
    weights_(m, "l1", 0.9)
    mask = m.fc1.weight_mask.bool().clone()
    nc.train.fit(m, digits, epochs=1, max_steps=5, lr=0.1, methods=[MaskMethod()], progress=False)
    assert bool((m.fc1.weight[~mask] == 0).all()) and bool((m.fc1.weight[mask] != 0).any())
    nc.models.save(m, tmp_path / "masked.pt")  # masks are buffers: they round-trip
    assert torch.equal(nc.models.load(tmp_path / "masked.pt").fc1.weight_mask, m.fc1.weight_mask)
    finalize_(m)
    assert not masks_of(m) and _zeros(m) >= 0.9 - 1e-4
    nc.models.save(m, tmp_path / "final.pt")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(nc.models.load(tmp_path / "final.pt")(x), m.eval()(x))


def test_agp_cubic_schedule_golden():
    assert agp_sparsity(0, 0.8, 0, 100) == 0.0
    assert agp_sparsity(50, 0.8, 0, 100) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert agp_sparsity(100, 0.8, 0, 100) == pytest.approx(0.8)
    assert agp_sparsity(500, 0.8, 0, 100) == pytest.approx(0.8)
    assert agp_sparsity(10, 0.9, 10, 110, initial=0.1) == pytest.approx(0.1)


def test_agp_method_reaches_its_target_during_training(digits):
    m = nc.models.create("lenet300", input_size=8)
    agp = AGPMethod(0.75, end=8, frequency=2)
    seen = []
    nc.train.fit(m, digits, epochs=1, max_steps=10, methods=[agp], progress=False,
                 callbacks=[lambda log: seen.append(_zeros(m))])
    assert _zeros(m) == pytest.approx(0.75, abs=1e-3) and agp.current == pytest.approx(0.75)
    agp.finalize(m)
    assert not masks_of(m)


def test_iterative_rounds_and_sparsity_steps():
    assert step_sparsities(0.75, 2) == pytest.approx([0.5, 0.75])
    m = nc.models.create("lenet300", input_size=8)
    seen = []
    iterative_weights_(m, lambda model, methods: seen.append((_zeros(model), type(methods[0]).__name__)), 0.875, 3)
    assert [round(s, 3) for s, _ in seen] == [0.5, 0.75, 0.875] and seen[0][1] == "MaskMethod"
    assert not masks_of(m)


def test_slimming_loss_golden():
    m = nc.models.create("vgg-small", in_channels=1, input_size=28)
    with torch.no_grad():
        for bn in [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]:
            bn.weight.fill_(-0.5)
    n = sum(bn.num_features for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
    terms = SlimmingMethod(1e-3).loss_terms(m, None, None, None)
    assert terms["slimming_l1"].item() == pytest.approx(1e-3 * 0.5 * n)
    terms["slimming_l1"].backward()
    assert m.features[1].weight.grad[0].item() == pytest.approx(-1e-3)


def test_bad_inputs_leave_the_model_unchanged():
    m = nc.models.create("lenet300", input_size=8)
    before = copy.deepcopy(m.state_dict())
    for kw in [dict(sparsity=1.0), dict(criterion="fpgm"), dict(scope="net"), dict(sparsity={"Conv2d": 0.5}),
               dict(sparsity={"Linear": 2.0})]:
        with pytest.raises(NetcompressError):
            weights_(m, **kw)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()) and not masks_of(m)
    with pytest.raises(NetcompressError):
        AGPMethod(0.5, end=1, start=5)
    with pytest.raises(NetcompressError):
        SlimmingMethod(-1.0)


def _ctx(data, tmp_path):
    return StageContext(data=data, train=TrainConfig(epochs=1, lr=0.05, batch_size=64), seed=0,
                        out_dir=tmp_path, progress=False, name="prune")


def test_prune_stage_channels_with_finetune(mnist_small, tmp_path):

    kind = STAGES.get("prune")
    m = nc.models.create("lenet5")
    nc.train.fit(m, mnist_small, epochs=1, max_steps=5, progress=False)
    cfg = kind.config.from_dict({"criterion": "taylor", "ratio": 0.5, "epochs": 1, "max_steps": 3, "calibration_samples": 64})
    ctx = _ctx(mnist_small, tmp_path)
    res = kind.run(ctx, m, cfg)
    per = res.extra["per_layer"]
    assert per["features.0"] == {"kept": 10, "total": 20} and per["classifier.2"] == {"kept": 10, "total": 10}
    assert res.history and res.model.features[0].out_channels == 10 and m.features[0].out_channels == 20
    assert any("per layer" in k for k in ctx.figures)


def test_prune_stage_weights_iterative_and_agp(digits, tmp_path):
    from netcompress.prune.stages import PruneConfig, run_prune

    m = nc.models.create("lenet300", input_size=8)
    cfg = PruneConfig.from_dict({"granularity": "weight", "sparsity": 0.8, "schedule": "iterative", "steps": 2,
                                 "epochs": 1, "max_steps": 2})
    res = run_prune(_ctx(digits, tmp_path), m, cfg)
    assert _zeros(res.model) == pytest.approx(0.8, abs=1e-3) and not masks_of(res.model)
    assert res.extra["per_layer"]["fc1"]["kept"] == int((res.model.fc1.weight != 0).sum())
    cfg = PruneConfig.from_dict({"granularity": "weight", "sparsity": 0.6, "schedule": "agp", "epochs": 1, "max_steps": 6})
    res = run_prune(_ctx(digits, tmp_path / "agp"), nc.models.create("lenet300", input_size=8), cfg)
    assert _zeros(res.model) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("bad,match", [({"ratio": 0.5, "granularity": "weight"}, "sparsity"),
                                       ({"granularity": "channel"}, "ratio"),
                                       ({"ratio": 0.5, "criterion": "magic"}, "unknown criterion"),
                                       ({"ratio": 0.5, "schedule": "agp"}, "agp"),
                                       ({"ratio": 0.5, "colour": 1}, "unknown key"),
                                       ({"ratio": 0.5, "macs": 0.5}, "ratio or macs"),
                                       ({"macs": 1.0}, "macs"),
                                       ({"sparsity": 0.5, "macs": 0.5, "granularity": "weight"},
                                        "macs is for granularity channel"),
                                       ({"granularity": "block", "ratio": 0.5, "macs": 0.5},
                                        "macs is for granularity channel")])
def test_prune_stage_config_errors(bad, match):
    from netcompress.prune.stages import PruneConfig

    with pytest.raises(NetcompressError, match=match):
        PruneConfig.from_dict(bad, "stage prune")


def test_cli_prune_dry_run_and_out(tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["prune", "lenet300", "--data", "digits", "--ratio", "0.5", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "group" in text and "MACs" in text and not out.exists()
    assert main(["prune", "lenet300", "--data", "digits", "--ratio", "0.5", "--epochs", "0.2",
                 "--out", str(out)]) == 0
    small = nc.models.load(out)
    assert small.fc1.out_features == 150 and small.fc3.out_features == 10
    assert main(["prune", "lenet300", "--data", "digits", "--sparsity", "0.9", "--out", str(tmp_path / "w.pt")]) == 0
    assert _zeros(nc.models.load(tmp_path / "w.pt")) == pytest.approx(0.9, abs=1e-3)
    assert main(["prune", "lenet300", "--data", "digits", "--ratio", "0.5", "--sparsity", "0.5", "--out", "x.pt"]) == 2
    assert "sparsity is for granularity weight" in capsys.readouterr().err
