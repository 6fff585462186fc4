"""The `design` recipe stage, its config validation, a recipe run, and the `netcompress design` command."""
import json
import textwrap

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.cli import main
from netcompress.design.run import DesignConfig, cost_report, format_report, transform
from netcompress.recipe.stages import STAGES, StageContext
from netcompress.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(data, tmp_path, models):
    return StageContext(data=data, train=TrainConfig(epochs=1, lr=0.05, max_steps=3), seed=0,
                        out_dir=tmp_path / "s", models=models, name="design", progress=False)


def test_stage_is_registered():
    assert "design" in STAGES.list()
    assert STAGES.get("design").config is DesignConfig


@pytest.mark.parametrize("cfg, msg", [
    ({"op": "lowrank"}, "exactly one of rank, energy, budget"),
    ({"op": "separable", "rank": 4}, "takes no rank"),
    ({"op": "lowrank", "budget": 1.5}, "budget"),
    ({"op": "prune"}, "op"),
    ({"op": "lowrank", "rank": 4, "speed": 2}, "speed: unknown key"),
])
def test_config_errors_name_the_field(cfg, msg):
    with pytest.raises(nc.NetcompressError, match=msg):
        DesignConfig.from_dict(cfg, "stage design")


def test_config_round_trips():
    cfg = DesignConfig.from_dict({"op": "lowrank", "rank": {"fc1": 20}, "recover": "distill", "exclude": ["fc3"]})
    assert DesignConfig.from_dict(cfg.to_dict()) == cfg


def test_lowrank_stage_finetunes_and_reports(mnist_small, tmp_path):
    model = nc.models.create("lenet300")
    ctx = _ctx(mnist_small, tmp_path, {"baseline": model})
    cfg = DesignConfig.from_dict({"op": "lowrank", "budget": 0.5, "recover": "finetune", "epochs": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = STAGES.get("design").run(ctx, model, cfg)
    rep = res.extra["design"]
    assert rep["params_after"] <= 0.5 * rep["params_before"]
    assert [r["name"] for r in rep["layers"]] == ["fc1"]
    row = rep["layers"][0]
    assert row["after_macs"] == row["theory_macs"] and row["after_params"] == row["theory_params"]
    assert rep["latency_ms_b1_after"] > 0 and "accuracy_before_recovery" in rep
    assert len(res.history) == 1 and isinstance(res.model.fc1, nn.Sequential)
    assert any("MACs per layer" in k for k in ctx.figures)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched


def test_separable_stage_distills_from_the_original(mnist_small, tmp_path):
    model = nc.models.create("lenet5")
    ctx = _ctx(mnist_small, tmp_path, {"baseline": model})
    cfg = DesignConfig.from_dict({"op": "separable", "recover": "distill", "epochs": 1, "calibration_samples": 32})
    seen = {}
    orig_fit = StageContext.fit

    def spy(self, m, overrides=None, **kw):
        seen.update(kw)
        return orig_fit(self, m, overrides, **kw)

    StageContext.fit = spy
    try:
        res = STAGES.get("design").run(ctx, model, cfg)
    finally:
        StageContext.fit = orig_fit
    from netcompress.distill import KD

    assert isinstance(seen["methods"][0], KD) and seen["methods"][0].teacher is model
    assert seen["loss_fn"] == seen["methods"][0].task_loss
    rep = res.extra["design"]
    row = rep["layers"][0]
    assert row["name"] == "features.3" and row["theory_ratio"] == pytest.approx(1 / 50 + 1 / 25)
    assert row["measured_ratio"] == pytest.approx(row["theory_ratio"])
    assert "features.3" in format_report(rep)


def test_include_exclude_patterns(digits):
    m = nc.models.create("lenet300", input_size=8)
    new, layers = transform(m, DesignConfig(op="lowrank", rank=8, exclude=["fc3"]), digits)
    assert list(layers) == ["fc1", "fc2"] and isinstance(new.fc3, nn.Linear)
    new, layers = transform(m, DesignConfig(op="lowrank", rank=8, include=["fc2"]), digits)
    assert list(layers) == ["fc2"]


def test_recipe_with_design_variants(tmp_path):
    from netcompress.recipe import run_recipe

    text = """\
    name: design-tiny
    seed: 0
    data: digits
    model: lenet5
    train: {epochs: 1, lr: 0.05, batch_size: 64}
    measure: {latency: false}
    stages: []
    variants:
      - name: svd
        from: baseline
        stages: [ {design: {op: lowrank, budget: 0.5, recover: finetune, epochs: 0.2}} ]
      - name: sep
        from: baseline
        stages: [ {design: {op: separable, recover: distill, epochs: 0.2}} ]
    """
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    res = run_recipe(p, out=tmp_path / "run", progress=False)
    entries = json.loads((tmp_path / "run" / "metrics.json").read_text())
    by = {e["stage"]: e for e in entries}
    assert by["svd/design"]["params"] <= 0.5 * by["baseline"]["params"]
    assert by["sep/design"]["macs"] < by["baseline"]["macs"]
    assert isinstance(res.models["sep"].features[3], nn.Sequential)


def test_cli_design_writes_a_model_that_reloads(tmp_path, capsys, digits):
    out = tmp_path / "lr.pt"
    rc = main(["design", "lenet300", "--data", "digits", "--op", "lowrank", "--rank", "8", "--recover", "none",
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "saved" in text
    m = nc.models.load(out)
    assert isinstance(m.fc1, nn.Sequential) and m.fc1[0].out_features == 8


def test_cli_design_refused_rank_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "x.pt"
    rc = main(["design", "lenet300", "--data", "digits", "--op", "lowrank", "--rank", "10", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "layer 'fc3'" in err and "would not make it smaller" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cost_report_counts_match_measure(digits):
    m = nc.models.create("lenet5", input_size=8)
    new, layers = transform(m, DesignConfig(op="separable"), digits)
    rep = cost_report(m, new, layers, digits.example, latency=False)
    assert rep["macs_before"] - rep["macs_after"] == rep["layer_macs_before"] - rep["layer_macs_after"]


class _ReadsItsConv(nn.Module):
    """A forward that reads one conv's weight (as XCiT's positional encoding reads its projection's)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x).relu().to(self.conv2.weight.dtype)).relu()
        return self.fc(self.conv3(x).relu().mean((2, 3)))


@pytest.mark.parametrize("op,kw", [("lowrank", {"budget": 0.6}), ("separable", {})])
def test_stage_defaults_leave_out_a_layer_the_forward_reads_and_include_naming_it_is_an_error(op, kw, mnist, tmp_path):
    data = mnist.subset(64, 32)
    torch.manual_seed(0)
    model = _ReadsItsConv()
    res = nc.recipe.apply("design", model, data, op=op, epochs=0, out_dir=tmp_path, **kw)
    assert isinstance(res.model.conv2, nn.Conv2d) and not isinstance(res.model.conv3, nn.Conv2d)
    with pytest.raises(nc.NetcompressError, match=f"{op}: layer 'conv2' cannot be replaced: the forward code of "
                       r"'\(the model\)' reads its attributes .* in a recipe, exclude"):
        nc.recipe.apply("design", model, data, op=op, epochs=0, out_dir=tmp_path, include=["conv2", "conv3"], **kw)


class _DictConv(nn.Module):
    """A conv model fed a dict of named tensors (as Hugging Face models are)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, pixel_values, scale):
        return self.fc(self.conv2(self.conv1(pixel_values * scale[:, None, None, None]).relu()).relu().mean((2, 3)))


def test_separable_stage_calibrates_on_dict_batches(mnist):
    (x, y), (tx, ty) = (next(iter(mnist.loader(s, batch_size=64, shuffle=False))) for s in ("train", "test"))
    data = nc.data.DataBundle.from_tensors("mnist-dict", ({"pixel_values": x, "scale": torch.ones(64)}, y),
                                           ({"pixel_values": tx, "scale": torch.ones(64)}, ty), 10)
    res = nc.recipe.apply("design", _DictConv(), data, op="separable", epochs=0, calibration_samples=32)
    assert not isinstance(res.model.conv2, nn.Conv2d)
