"""The `dynamic` recipe stage, its config, the CLI command, and msdnet-small."""

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.dynamic import default_exits, early_exit_predict
from netcompress.dynamic.msdnet import MSDNetSmall
from netcompress.dynamic.policy import exit_macs, full_macs
from netcompress.dynamic.stages import DynamicConfig, run_dynamic
from netcompress.recipe.stages import STAGES, StageContext
from netcompress.train import TrainConfig


def _ctx(data, tmp_path):
    return StageContext(data=data, train=TrainConfig(epochs=1, lr=0.05), seed=0, out_dir=tmp_path, name="dyn",
                        progress=False)


def test_config_validation_and_round_trip():
    cfg = DynamicConfig.from_dict({"exits": ["features.2"], "budget": 0.4, "head": {"pool": 2}})
    assert DynamicConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(NetcompressError, match="only one of threshold, budget, accuracy_drop"):
        DynamicConfig.from_dict({"threshold": 0.9, "budget": 0.5})
    with pytest.raises(NetcompressError, match=r"\(got budget and accuracy_drop\)"):
        DynamicConfig.from_dict({"budget": 0.5, "accuracy_drop": 0.0})
    with pytest.raises(NetcompressError, match="unknown key"):
        DynamicConfig.from_dict({"exit": ["features.2"]})
    with pytest.raises(NetcompressError, match="unknown key"):
        DynamicConfig.from_dict({"head": {"pool": 2, "width": 3}})


def test_stage_registered():

    assert STAGES.get("dynamic").config is DynamicConfig


def test_dynamic_stage_on_lenet(mnist_small, tmp_path):
    torch.manual_seed(0)
    model = nc.models.create("lenet5-half", in_channels=1, input_size=28)
    nc.train.fit(model, mnist_small, max_steps=15, epochs=1, progress=False, evaluate_each_epoch=False)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = _ctx(mnist_small, tmp_path)
    cfg = DynamicConfig.from_dict({"exits": ["features.2"], "max_steps": 5, "budget": 0.6, "holdout": 200,
                                   "latency_samples": 64, "latency_batch": 32})
    res = run_dynamic(ctx, model, cfg)
    ex = res.extra
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())  # input untouched
    # head-only training: the final exit is the input network
    assert ex["full_accuracy"] == pytest.approx(nc.train.evaluate(model, mnist_small))
    assert sum(e["share"] for e in ex["exits"]) == pytest.approx(1.0)
    assert ex["real_exit_share"] == pytest.approx([e["share"] for e in ex["exits"]])
    assert ex["calibration"]["holdout_fraction"] <= 0.6
    assert ex["latency"]["full_ms"] > 0 and ex["latency"]["speedup"] > 0
    assert len(ex["curve"]) > 3 and ctx.figures
    assert nc.train.evaluate(res.model, mnist_small) == pytest.approx(ex["accuracy"])
    path = nc.models.save(res.model, tmp_path / "m.pt")
    back = nc.models.load(path)
    assert back.thresholds == res.model.thresholds
    assert nc.train.evaluate(back, mnist_small) == pytest.approx(ex["accuracy"])


def test_dynamic_stage_accuracy_drop_keeps_the_held_out_accuracy(mnist_small, tmp_path):
    """`accuracy_drop: 0` calibrates on the held-out training samples: there the early exits lose
    nothing against the full network, and the policy is the one `calibrate_accuracy` picks."""
    torch.manual_seed(0)
    model = nc.models.create("lenet5-half", in_channels=1, input_size=28)
    nc.train.fit(model, mnist_small, max_steps=30, epochs=1, progress=False, evaluate_each_epoch=False)
    cfg = DynamicConfig.from_dict({"exits": ["features.1"], "head": {"hidden": 0}, "max_steps": 20,
                                   "accuracy_drop": 0.0, "holdout": 200, "latency": False})
    ex = run_dynamic(_ctx(mnist_small, tmp_path), model, cfg).extra
    cal = ex["calibration"]
    assert cal["accuracy_drop"] == 0.0 and cal["holdout_accuracy"] >= cal["holdout_full_accuracy"]
    assert 0 < cal["holdout_fraction"] <= 1.0 and "latency" not in ex


def test_default_exits_sit_at_blocks_near_a_quarter_half_and_three_quarters_of_the_macs():
    lenet = nc.models.create("lenet5")
    assert default_exits(lenet, torch.zeros(1, 1, 28, 28)) == ["features.2"]  # conv2 ends at 82 %: too late
    # conv1, its ReLU and its pooling end at the same MACs: one exit there, after the pooling
    assert default_exits(lenet, torch.zeros(1, 1, 28, 28), fractions=(0.25, 0.3)) == ["features.2"]
    x = torch.zeros(1, 3, 32, 32)
    vit = nc.models.create("timm:test_vit", num_classes=10, img_size=32)
    resnet = nc.models.create("resnet20", input_size=32)
    tv = nc.models.create("torchvision:mobilenet_v2", input_size=32)
    for model, want in ((resnet, ["layer1.1", "layer2.0", "layer3.0"]), (tv, ["features.3", "features.10", "features.14"])):
        assert default_exits(model, x) == want  # blocks (children of a Sequential), never a layer inside one
        mx = nc.dynamic.early_exit(model, want, example_inputs=x)
        frac = [c / full_macs(mx, x) for c in exit_macs(mx, x)[:-1]]
        assert all(abs(f - t) < 0.15 for f, t in zip(frac, (0.25, 0.5, 0.75))), frac
    assert all(n.startswith("blocks.") and n.count(".") == 1 for n in default_exits(vit, x))
    assert nc.dynamic.early_exit(resnet, example_inputs=x).exit_names == default_exits(resnet, x)  # exits=None


def test_dynamic_stage_with_its_defaults_halves_the_macs(mnist_small, tmp_path):
    """No exits named: the stage puts them by MACs, trains them and calibrates to half the MACs."""
    torch.manual_seed(0)
    model = nc.models.create("resnet8", in_channels=1, input_size=28)
    nc.train.fit(model, mnist_small, max_steps=40, epochs=1, lr=0.05, progress=False, evaluate_each_epoch=False)
    cfg = DynamicConfig.from_dict({"max_steps": 20, "holdout": 200, "latency": False})
    ex = run_dynamic(_ctx(mnist_small, tmp_path), model, cfg).extra
    assert ex["exit_modules"] == default_exits(model, mnist_small.example) and len(ex["exit_modules"]) >= 2
    assert ex["calibration"]["holdout_fraction"] <= 0.5 and ex["avg_macs_fraction"] < 0.6
    assert ex["real_exit_share"][-1] < 1  # samples leave early


def test_default_budget_is_halfway_from_a_costly_first_exit(mnist_small, tmp_path):
    """An exit after 82 % of lenet5's MACs (its conv2): the default budget 0.5 cannot be met, so the
    default becomes halfway from that exit's cost to the full network; a budget given stays strict."""
    torch.manual_seed(0)
    model = nc.models.create("lenet5-half", in_channels=1, input_size=28)
    cfg = {"exits": ["features.5"], "max_steps": 2, "holdout": 100, "latency": False}
    ex = run_dynamic(_ctx(mnist_small, tmp_path), model, DynamicConfig.from_dict(cfg)).extra
    first = ex["exits"][0]["macs"] / ex["full_macs"]
    assert first > 0.5 and ex["calibration"]["budget"] == pytest.approx((first + 1) / 2)
    with pytest.raises(NetcompressError, match="below the first exit's cost"):
        run_dynamic(_ctx(mnist_small, tmp_path), model, DynamicConfig.from_dict({**cfg, "budget": 0.5}))


def test_dynamic_stage_errors(mnist_small, tmp_path):
    ctx = _ctx(mnist_small, tmp_path)
    with pytest.raises(NetcompressError, match="exits: none named, and LeNet300 has no module output before 80% of its MACs"):
        run_dynamic(ctx, nc.models.create("lenet300"), DynamicConfig())  # its first Linear is 88 % of the MACs
    with pytest.raises(NetcompressError, match="no module named"):
        run_dynamic(ctx, nc.models.create("lenet5"), DynamicConfig(exits=["nope"]))
    with pytest.raises(NetcompressError, match="already has exits"):
        run_dynamic(ctx, nc.models.create("msdnet-small"), DynamicConfig(exits=["first"]))


@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_msdnet_small_shapes_macs_and_save(shape, tmp_path):
    c, s = shape
    m = nc.models.create("msdnet-small", in_channels=c, input_size=s)
    assert isinstance(m, MSDNetSmall) and m.num_exits == 4
    x = torch.randn(3, c, s, s)
    outs = m.train()(x)
    assert len(outs) == 4 and all(o.shape == (3, 10) for o in outs)
    m.eval()
    cum = exit_macs(m, x)
    assert cum == sorted(cum) and cum[0] < 0.4 * cum[-1]
    assert full_macs(m, x) < cum[-1]  # the full path skips the early classifiers
    logits, exit_at = early_exit_predict(m, x, 2.0)
    assert exit_at.eq(3).all() and torch.allclose(logits, m.full_forward(x), atol=1e-5)
    assert early_exit_predict(m, x, 0.0)[1].eq(0).all()
    m.set_policy_("max_softmax", [0.9, 0.9, 0.9])
    nc.models.save(m, tmp_path / "ms.pt")
    back = nc.models.load(tmp_path / "ms.pt")
    assert back.thresholds == [0.9, 0.9, 0.9]
    assert torch.equal(back(x), m(x))


def test_msdnet_stage_trains_all_exits(mnist_small, tmp_path):
    m = nc.models.create("msdnet-small", in_channels=1, input_size=28, width=0.5)
    res = run_dynamic(_ctx(mnist_small, tmp_path), m, DynamicConfig(train_backbone=True, max_steps=3, threshold=0.5,
                                                                    holdout=100, latency=False))
    assert res.model.thresholds == [0.5, 0.5, 0.5]
    assert len(res.extra["exits"]) == 4 and res.extra["segment_mode"] == "native"


def test_cli_dynamic(tmp_path, capsys):
    from netcompress.cli import main

    out = tmp_path / "ee.pt"
    rc = main(["dynamic", "lenet5-quarter", "--data", "digits", "--exits", "features.2", "--max-steps", "2",
               "--threshold", "0.8", "--no-latency", "--holdout", "100", "--out", str(out)])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "features.2" in text and "average MACs" in text
    rc = main(["dynamic", "lenet5", "--data", "digits", "--exits", "bogus", "--out", str(tmp_path / "x.pt")])
    assert rc == 2 and "no module named 'bogus'" in capsys.readouterr().err


def test_macs_of_exits_count_a_backbone_that_expands_a_parameter_under_no_grad():
    """timm CaiT expands its class token (a parameter) inside the forward: under no_grad the view
    still requires grad without a grad_fn, and torch's module tracker asserted while counting."""
    from netcompress.measure import count_macs

    cait = nc.models.create("timm:cait_xxs24_224", num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=3,
                            num_heads=2, depth_token_only=1, seed=0)
    x = torch.randn(2, 3, 32, 32)
    mx = nc.dynamic.early_exit(cait, ["blocks.0", "blocks.1"], example_inputs=x)
    assert full_macs(mx, x) == count_macs(cait, x)
    cum = exit_macs(mx, x)
    assert cum == sorted(cum) and len(cum) == 3
