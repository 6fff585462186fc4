"""One meaning per word, stage kinds available on import, no side effects on the caller's objects."""
import subprocess
import sys

import torch

import netcompress as nc
from netcompress.cli import main
from netcompress.recipe.stages import STAGES


def test_import_alone_registers_every_family_and_run_recipe_works(tmp_path):
    code = ("import netcompress as nc\n"
            "r = nc.recipe.Recipe(name='t', data='digits', model='lenet300', train={'epochs': 0, 'max_steps': 1},\n"
            "    measure={'latency': False}, stages=[{'prune': {'ratio': 0.5, 'epochs': 0}}])\n"
            f"res = nc.recipe.run_recipe(r, out={str(tmp_path / 'run')!r}, progress=False)\n"
            "print(sorted(nc.recipe.STAGES.list()), res.entries[1]['kind'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "'distill'" in done.stdout and "'dynamic'" in done.stdout and done.stdout.strip().endswith("prune")


def test_every_stage_kind_has_one_line_help_and_described_fields(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "Config(" not in listing and "StageKind(" not in listing
    for kind in STAGES.list():
        sk = STAGES.get(kind)
        assert sk.help and "\n" not in sk.help and f"  {kind:24s} {sk.help}" in listing
        missing = [n for n, f in sk.config.model_fields.items() if not f.description]
        assert not missing, f"{kind}: fields without a description (the CLI help): {missing}"


def test_measure_is_the_package_and_callable(digits):
    m = nc.models.create_for("lenet300", digits)
    assert nc.measure.count_params(m)[0] == 50_610  # the package is not shadowed by the function
    assert nc.measure(m, digits, latency=False).params == nc.measure.measure(m, digits, latency=False).params


def test_int8_quantize_leaves_the_float_model_and_global_state(mnist_small):
    """int8 deployment compiles a copy for its runtime: the float model and torch's global
    quantized engine are as before (the old eager path switched the engine)."""
    engine = torch.backends.quantized.engine
    model = nc.models.create_for("lenet5-quarter", mnist_small).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = nc.quantize.int8_quantize(model, mnist_small.calibration(32))
    assert torch.backends.quantized.engine == engine and q.int8_layers > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_apply_leaves_the_callers_model_unchanged(digits):
    model = nc.models.create_for("lenet300", digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nc.apply("prune", model, digits.subset(256, 64), sparsity=0.5, epochs=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.extra["kept_weights"] < res.extra["total_weights"]


def test_python_and_recipe_defaults_agree():
    """The k-means fine-tuning and codebook defaults of the Python classes are the stage's."""
    from netcompress.quantize.cluster import CentroidFineTune, cluster_
    from netcompress.quantize.stages import QuantizeConfig
    import inspect

    cfg = QuantizeConfig()
    assert inspect.signature(CentroidFineTune).parameters["reduce"].default == cfg.reduce
    assert inspect.signature(CentroidFineTune).parameters["codebook_dtype"].default == cfg.codebook
    assert inspect.signature(cluster_).parameters["codebook_dtype"].default == cfg.codebook


def test_fit_leaves_the_callers_global_rng_as_it_was(digits):
    """`fit` seeds on a fork of the global RNG: the caller's next random draw is the one it would
    have been without the training (before, `fit(seed=0)` left the RNG at `manual_seed(0)`)."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    model = nc.models.create("lenet300", in_channels=1, input_size=8)
    after_init = torch.get_rng_state()
    nc.train.fit(model, digits, epochs=1, max_steps=2, progress=False, seed=0)
    assert torch.equal(torch.get_rng_state(), after_init)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(4), expected)


def test_apply_without_out_dir_leaves_no_checkpoints_behind(digits, tmp_path, monkeypatch):
    """Each call without out_dir made a temporary folder that kept every training checkpoint (a
    sweep of stages over 60 models filled 70 GB of /tmp). Now only a result file stays."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = digits.subset(128, 64)
    model = nc.models.create_for("lenet300", data)
    nc.recipe.apply("prune", model, data, ratio=0.5, max_steps=2)
    nc.recipe.apply("distill", model, data, student="lenet300-half", max_steps=2)
    assert not list(tmp_path.glob("netcompress-*"))
    res = nc.recipe.apply("export", model, data, latency=False, check_samples=16)
    assert res.file.is_file() and [p.name for p in tmp_path.glob("netcompress-*/*")] == ["model.onnx"]
    kept = tmp_path / "kept"
    nc.recipe.apply("prune", model, data, ratio=0.5, max_steps=2, out_dir=kept)  # a folder given: all of it stays
    assert list(kept.rglob("*.ckpt"))
