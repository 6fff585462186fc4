import json
import textwrap
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.cli import main
from netcompress.recipe import load_recipe, run_recipe
from netcompress.recipe.stages import StageContext

TINY = """\
name: tiny
seed: 0
data: digits
model: lenet300
train: {epochs: 1, lr: 0.05, batch_size: 64}
measure: {latency: false}
stages:
  - finetune: {epochs: 1}
variants:
  - name: longer
    from: baseline
    stages:
      - train: {epochs: 1, lr: 0.02}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_run_writes_a_complete_run_directory(tmp_path):
    res = run_recipe(write(tmp_path, TINY), out=tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for f in ("metrics.json", "report.md", "report.html", "recipe.yaml", "model.pt"):
        assert (out / f).is_file(), f
    entries = json.loads((out / "metrics.json").read_text())
    assert [e["stage"] for e in entries] == ["baseline", "finetune", "longer/train"]
    assert entries[2]["parent"] == "baseline" and entries[2]["variant"] == "longer"
    for e in entries:
        assert e["params"] == 50_610 and 0.5 < e["accuracy"] <= 1 and e["bytes"] > 0 and e["macs"] > 0
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "data:image/png;base64," in html
    assert "longer" in (out / "report.md").read_text()
    reloaded = nc.models.load(out / "model.pt")
    assert nc.train.evaluate(reloaded, nc.data.load("digits")) == pytest.approx(entries[1]["accuracy"])
    # the resolved recipe runs again as written
    assert load_recipe(out / "recipe.yaml").name == "tiny"
    assert set(res.models) >= {"baseline", "finetune", "longer"}


def test_variants_do_not_retrain_their_parent(tmp_path, monkeypatch):
    calls = []
    orig = StageContext.fit

    def counting(self, model, overrides=None, **kw):
        calls.append(self.name)
        return orig(self, model, overrides, **kw)

    monkeypatch.setattr(StageContext, "fit", counting)
    text = TINY + """\
  - name: second
    from: finetune
    stages:
      - finetune: {epochs: 1}
"""
    run_recipe(write(tmp_path, text), out=tmp_path / "run", progress=False)
    assert calls == ["baseline", "finetune", "longer/train", "second/finetune"]


def test_resume_skips_finished_stages_and_reproduces_the_run(tmp_path, monkeypatch):
    recipe = write(tmp_path, TINY)
    run_recipe(recipe, out=tmp_path / "full", progress=False)
    out = tmp_path / "run"
    run_recipe(recipe, out=out, progress=False)
    # pretend the run was killed during the variant: its stage never finished
    stage_dir = next((out / "stages").glob("*-longer_train"))
    (stage_dir / "done.json").unlink()
    calls = []
    orig = StageContext.fit
    monkeypatch.setattr(StageContext, "fit", lambda self, *a, **k: calls.append(self.name) or orig(self, *a, **k))
    run_recipe(recipe, out=out, resume=True, progress=False)
    assert calls == ["longer/train"]
    a = nc.models.load(tmp_path / "full" / "stages" / stage_dir.name / "model.pt").state_dict()
    b = nc.models.load(stage_dir / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(json.loads((out / "metrics.json").read_text())) == 3


def test_set_overrides_any_field(tmp_path):
    r = load_recipe(write(tmp_path, TINY), ["train.epochs=3", "stages.0.finetune.lr=0.001", "seed=7"])
    assert r.train.epochs == 3 and r.seed == 7 and r.stages[0]["finetune"]["lr"] == 0.001


def test_default_recipe_is_valid():
    r = load_recipe(None)
    assert r.data == "mnist-5k" and r.model.name == "lenet5"


# ------------------------------------------------------------------ bad input: one line, exit 2

def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


BAD = {
    "yaml syntax": ("name: x\nmodel: lenet5\ntrain: {epochs: 1\n", r"r\.yaml:\d+: YAML syntax error"),
    "unknown key": ("name: x\nmodel: lenet5\ntrain:\n  epochs: 1\n  ephocs: 2\n", r"r\.yaml:5: train\.ephocs: unknown key"),
    "wrong type": ("name: x\nmodel: lenet5\ntrain:\n  epochs: many\n", r"r\.yaml:4: train\.epochs: Input should be a valid number"),
    "unknown stage kind": ("name: x\nmodel: lenet5\nstages:\n  - prnue: {}\n", r"r\.yaml:4: stages\[0\]: unknown stage kind 'prnue'; valid: .*finetune.*train"),
    "unknown stage key": ("name: x\nmodel: lenet5\nstages:\n  - finetune:\n      epoch: 1\n", r"r\.yaml:5: stages\[0\]\.finetune\.epoch: unknown key"),
    "missing model": ("name: x\n", r"r\.yaml:1: model: Field required"),
    "unknown model": ("name: x\nmodel: lenet7\ndata: digits\ntrain: {epochs: 0}\n", r"unknown model 'lenet7'; valid: .*lenet5"),
    "unknown dataset": ("name: x\nmodel: lenet5\ndata: mnist6k\n", r"unknown dataset 'mnist6k'; valid: .*mnist-5k"),
    "bad variant parent": ("name: x\nmodel: lenet5\nvariants:\n  - {name: v, from: nowhere, stages: [{finetune: {}}]}\n", r"from: 'nowhere' is not an earlier stage"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_give_one_clear_line(case, tmp_path, capsys):
    text, pattern = BAD[case]
    code, err = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("netcompress: error: ")
    import re

    assert re.search(pattern, lines[0]), lines[0]
    out = tmp_path / "out"
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


def test_missing_recipe_file(tmp_path, capsys):
    code, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "recipe file" in err and "nope.yaml does not exist" in err


def test_unwritable_output_directory(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(["run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "afile" / "run")], capsys)
    assert code == 2 and "cannot be written" in err and "afile" in err


def test_bad_override(tmp_path, capsys):
    code, err = run_cli(["run", str(write(tmp_path, TINY)), "--set", "train.epochs"], capsys)
    assert code == 2 and "expected KEY=VALUE" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(nc.NetcompressError):
        main(["--debug", "run", str(tmp_path / "nope.yaml")])


def test_list_train_measure_commands(tmp_path, capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "lenet5" in listing and "mnist-5k" in listing and "finetune" in listing
    out = tmp_path / "m.pt"
    assert main(["train", "lenet300", "--data", "digits", "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["measure", str(out), "--data", "digits", "--json", "--no-latency"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["params"] == 50_610 and m["bytes"] == out.stat().st_size and m["accuracy"] > 0.5


def test_stage_can_replace_misleading_generic_metrics(tmp_path):
    from netcompress.core import Config
    from netcompress.recipe.stages import STAGES, StageKind, StageResult

    class NoConfig(Config):
        pass

    STAGES.register("test-average-cost", StageKind(NoConfig, lambda ctx, m, cfg: StageResult(m, metrics={"macs": 123}),
                                                   "a test stage reporting its own MACs"))
    try:
        text = TINY.replace("  - finetune: {epochs: 1}\n", "  - test-average-cost: {}\n", 1)
        res = run_recipe(write(tmp_path, text), out=tmp_path / "run", progress=False)
    finally:
        STAGES.unregister("test-average-cost")
    e = res.entries[1]
    assert e["macs"] == 123 and e["extra"]["measured_by_stage"] == ["macs"]
    assert res.entries[0]["macs"] == 50_200


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid_and_say_how_to_run_them(path):
    r = load_recipe(path)
    assert r.name and (r.stages or r.variants)
    assert f"netcompress run recipes/{path.name}" in path.read_text()  # the header gives the command
