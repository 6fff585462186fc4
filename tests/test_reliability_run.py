"""The run folder under careless and hostile use: failures keep the previous run, nothing in a run
folder runs code, changed recipes are not silently resumed, one writer at a time."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.cli import main
from netcompress.recipe import run_recipe
from netcompress.recipe.stages import StageContext

TINY = """\
name: tiny
seed: 0
data: digits
model: lenet300
train: {epochs: 1, lr: 0.05, batch_size: 64, max_steps: 6}
measure: {latency: false}
stages:
  - finetune: {epochs: 1, max_steps: 3}
variants:
  - name: longer
    from: baseline
    stages:
      - train: {epochs: 1, lr: 0.02, max_steps: 3}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def count_fits(monkeypatch) -> list[str]:
    calls: list[str] = []
    orig = StageContext.fit
    monkeypatch.setattr(StageContext, "fit", lambda self, *a, **k: calls.append(self.name) or orig(self, *a, **k))
    return calls


# ---------------------------------------------------------------- 11.3: failures keep the last good run

@pytest.fixture
def previous_run(tmp_path):
    recipe = write(tmp_path, TINY)
    out = tmp_path / "run"
    run_recipe(recipe, out=out, progress=False)
    return recipe, out, tree_hashes(out)


def test_a_typo_in_the_model_name_leaves_the_previous_run_byte_for_byte(previous_run, capsys):
    recipe, out, before = previous_run
    code, err = run_cli(["run", str(recipe), "--out", str(out), "--set", "model=lenett300", "--quiet"], capsys)
    assert code == 2 and "lenett300" in err and len(err.strip().splitlines()) == 1
    assert tree_hashes(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".run")) == []


def test_a_failure_mid_run_leaves_the_previous_run_byte_for_byte(previous_run, monkeypatch, capsys):
    recipe, out, before = previous_run
    orig = StageContext.fit

    def failing(self, *a, **k):
        if self.name == "longer/train":
            raise nc.NetcompressError("simulated failure in a late stage")
        return orig(self, *a, **k)

    monkeypatch.setattr(StageContext, "fit", failing)
    code, err = run_cli(["run", str(recipe), "--out", str(out), "--set", "seed=3", "--quiet"], capsys)
    assert code == 2 and "simulated failure" in err
    assert tree_hashes(out) == before
    # the finished stages of the failed run are kept aside for --resume, never mixed into the old run
    partial = out.parent / ".run.partial"
    assert (partial / "stages" / "00-baseline" / "done.json").is_file()
    monkeypatch.setattr(StageContext, "fit", orig)
    calls = count_fits(monkeypatch)
    run_recipe(recipe, out=out, overrides=["seed=3"], resume=True, progress=False)
    assert calls == ["longer/train"] and not partial.exists()
    assert "seed: 3" in (out / "recipe.yaml").read_text()


def test_unknown_layer_is_refused_before_the_baseline_trains(tmp_path, monkeypatch, capsys):
    text = TINY.replace("  - finetune: {epochs: 1, max_steps: 3}\n",
                        "  - finetune: {epochs: 1, max_steps: 3}\n"
                        "  - prune: {granularity: weight, sparsity: 0.5, ignore: [fc9]}\n")
    calls = count_fits(monkeypatch)
    code, err = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and calls == [] and not (tmp_path / "run").exists()
    assert "r.yaml:9:" in err and "stage 'prune'" in err and "'fc9'" in err and "fc1" in err


def test_stale_folder_that_cannot_be_deleted_is_one_line(previous_run, monkeypatch, capsys):
    recipe, out, before = previous_run
    stale = out.parent / ".run.partial"
    (stale / "stages").mkdir(parents=True)

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    code, err = run_cli(["run", str(recipe), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and "cannot be deleted" in err and ".run.partial" in err and len(err.strip().splitlines()) == 1
    assert tree_hashes(out) == before


def test_out_that_is_not_a_run_folder_is_refused(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, err = run_cli(["run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "mine"), "--quiet"], capsys)
    assert code == 2 and "not a netcompress run" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_keeps_the_figures_of_skipped_stages(tmp_path):
    text = TINY.replace("  - finetune: {epochs: 1, max_steps: 3}\n", "  - quantize: {method: kmeans, bits: 3, epochs: 0}\n")
    recipe = write(tmp_path, text)
    out = tmp_path / "run"
    run_recipe(recipe, out=out, progress=False)
    full = (out / "report.html").read_text()
    assert "quantize: " in full  # the k-means stage's figure caption
    (next((out / "stages").glob("*-longer_train")) / "done.json").unlink()
    run_recipe(recipe, out=out, resume=True, progress=False)
    html = (out / "report.html").read_text()
    captions = lambda h: sorted(x.split("</figcaption>")[0] for x in h.split("<figcaption>")[1:])  # noqa: E731
    assert captions(html) == captions(full)
    assert html.count("data:image/png;base64,") == full.count("data:image/png;base64,")


# ---------------------------------------------------------------- 12.1: no code from a run folder

def test_resume_never_imports_code_named_by_the_run_folder(previous_run, tmp_path, monkeypatch, capsys):
    recipe, out, _ = previous_run
    marker = tmp_path / "pwned"
    (tmp_path / "nc_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "def build(**kw):\n    raise SystemExit('never')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bdir = out / "stages" / "00-baseline"
    blob = torch.load(bdir / "model.pt", weights_only=True)
    arch = json.loads(blob["arch"])
    arch["spec"]["name"] = "python:nc_evil_mod:build"
    blob["arch"] = json.dumps(arch)
    torch.save(blob, bdir / "model.pt")
    rec = json.loads((bdir / "done.json").read_text())
    if "model_sha256" in rec:  # an attacker can recompute any hash stored in the folder
        rec["model_sha256"] = hashlib.sha256((bdir / "model.pt").read_bytes()).hexdigest()
        (bdir / "done.json").write_text(json.dumps(rec))
    (next((out / "stages").glob("*-longer_train")) / "done.json").unlink()
    code, err = run_cli(["run", str(recipe), "--out", str(out), "--resume", "--quiet"], capsys)
    assert not marker.exists(), "a run folder made netcompress import a module"
    assert code == 2 and "python code" in err and "--trust-python" in err


# ---------------------------------------------------------------- 12.2: changed recipes are not resumed

def test_resume_after_a_changed_setting_recomputes_from_the_changed_stage(previous_run, monkeypatch, capsys):
    recipe, out, _ = previous_run
    calls = count_fits(monkeypatch)
    run_recipe(recipe, out=out, overrides=["stages.0.finetune.lr=0.003"], resume=True)
    err = capsys.readouterr().err
    assert calls == ["finetune"]  # the baseline and the variant from the baseline are unchanged
    assert "stage 'finetune': changed" in err and "stage.lr: None -> 0.003" in err
    entries = json.loads((out / "metrics.json").read_text())
    assert [e["stage"] for e in entries] == ["baseline", "finetune", "longer/train"]
    calls.clear()
    run_recipe(recipe, out=out, overrides=["stages.0.finetune.lr=0.003", "train.epochs=2"], resume=True)
    err = capsys.readouterr().err
    assert calls == ["baseline", "finetune", "longer/train"]
    assert "train.epochs: 1.0 -> 2.0" in err
    calls.clear()
    run_recipe(recipe, out=out, overrides=["stages.0.finetune.lr=0.003", "train.epochs=2"], resume=True)
    assert calls == []  # nothing changed: everything is reused


def test_resume_result_equals_a_fresh_run_of_the_changed_recipe(previous_run, tmp_path):
    recipe, out, _ = previous_run
    run_recipe(recipe, out=out, overrides=["stages.0.finetune.lr=0.003"], resume=True, progress=False)
    fresh = tmp_path / "fresh"
    run_recipe(recipe, out=fresh, overrides=["stages.0.finetune.lr=0.003"], progress=False)
    for stage in ("01-finetune", "02-longer_train"):
        a = nc.models.load(out / "stages" / stage / "model.pt").state_dict()
        b = nc.models.load(fresh / "stages" / stage / "model.pt").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), stage


# ---------------------------------------------------------------- 12.5: one writer per run folder

HOLD = """\
import sys, time
from pathlib import Path
from netcompress.recipe.rundir import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_folder_is_refused_and_a_killed_owner_does_not_block(tmp_path, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(nc.__file__).resolve().parents[1]))
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert owner.stdout.readline().strip() == "locked"
        recipe = write(tmp_path, TINY)
        code, err = run_cli(["run", str(recipe), "--out", str(out), "--quiet"], capsys)
        assert code == 2 and str(out) in err and f"pid {owner.pid}" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    finally:
        owner.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        owner.wait()
    assert (tmp_path / ".run.lock").exists()
    code, _ = run_cli(["run", str(recipe), "--out", str(out), "--quiet"], capsys)
    assert code == 0 and (out / "metrics.json").is_file() and not (tmp_path / ".run.lock").exists()


def test_two_concurrent_runs_one_wins_and_the_folder_is_one_run(tmp_path):
    recipe = write(tmp_path, TINY.replace("max_steps: 6", "max_steps: 40"))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(nc.__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "netcompress", "run", str(recipe), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd + ["--set", f"seed={s}"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True, env=env) for s in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    if codes == [0, 0]:  # the first finished before the second started: each was alone, in turn
        pass
    else:
        assert codes == [0, 2], results
        loser = next(e for c, e in results if c == 2)
        assert "is in use by another netcompress run (pid" in loser
    entries = json.loads((out / "metrics.json").read_text())
    seed = int((out / "recipe.yaml").read_text().split("seed: ")[1].split()[0])
    done = [json.loads(p.read_text())["entry"] for p in sorted((out / "stages").glob("*/done.json"))]
    assert seed in (1, 2) and done == entries  # every stage of the folder belongs to the one run it reports
