"""One code path per technique: every registered stage kind has a generated CLI command, and the
command and the recipe stage give the identical model (same seed, same tiny budget)."""
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import netcompress as nc
from netcompress.cli import build_parser, main
from netcompress.recipe.stages import STAGES

MODEL = "lenet5-quarter"
# kind -> list of (case id, config[, {model, data} instead of MODEL on digits]); a new stage kind needs a
# tiny case here (the test says so)
CASES = {
    "train": [("train", {"epochs": 1})],
    "finetune": [("finetune", {})],
    "prune": [("channels", {"ratio": 0.5, "criterion": "fpgm"}),
              ("channels-macs-iterative", {"macs": 0.5, "schedule": "iterative", "steps": 2}),
              ("weights-agp", {"sparsity": 0.8, "schedule": "agp", "epochs": 1})],
    "distill": [("kd", {"method": "kd", "student": "lenet5-quarter", "epochs": 1})],
    "quantize": [("kmeans", {"method": "kmeans", "bits": {"Conv2d": 4, "Linear": 3}}),
                 ("uniform-qat", {"method": "uniform", "bits": 4, "epochs": 1}),
                 ("binary", {"method": "binary", "epochs": 1}),
                 ("int8", {"method": "int8", "calibration_samples": 64})],
    "pack": [("pack", {"coding": "huffman"})],
    "design": [("lowrank", {"op": "lowrank", "budget": 0.5, "conv": "channel"})],
    "sparse-vd": [("sparse-vd", {"epochs": 1, "max_steps": 3, "finetune_epochs": 1})],
    "dynamic": [("exits", {"exits": ["features.2"], "holdout": 100, "latency": False, "budget": 0.5}),
                ("lm-exits", {"holdout": 8, "latency": False}, {"model": "gpt-tiny", "data": "pydoc-text-tiny"})],
    "sparsify": [("sparsegpt", {"criterion": "sparsegpt", "sparsity": 0.5, "samples": 16})],
    "weight-only": [("gptq-int4", {"method": "gptq", "bits": 4, "group_size": 16, "samples": 16})],
    "export": [("onnx-int8", {"format": "onnx", "int8": True, "calibration_samples": 32, "check_samples": 32,
                              "latency": False})],
}
TRAIN = {"epochs": 0, "max_steps": 2, "batch_size": 32}
# int8 export is checked against the fp32 model's top-1: an untrained model's logits are near-ties
# that any rounding flips (65.6 % agreement with onnxruntime 1.32), so both doors get a trained model file
TRAINED_FIRST = {"export"}


def flags(cfg: dict) -> list[str]:
    """The command-line flags a user would type for `cfg` (through the generated parser)."""
    out = []
    for k, v in cfg.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(name if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            out += [name, *map(str, v)]
        elif isinstance(v, dict):
            out += [name, ",".join(f"{a}={b}" for a, b in v.items())]
        else:
            out += [name, str(v)]
    return out


def test_every_stage_kind_has_a_command_and_a_parity_case():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for kind in STAGES.list():
        assert kind in sub.choices, f"stage kind {kind!r} has no CLI command"
        assert kind in CASES, f"stage kind {kind!r}: add a tiny parity case to CASES in {__file__}"
        text = sub.choices[kind].format_help()
        for field in STAGES.get(kind).config.model_fields:
            assert "--" + field.replace("_", "-") in text, (kind, field)


def test_generated_flags_keep_config_defaults():
    """A flag not given leaves the config's default: parsing no flags gives the config's defaults."""
    from netcompress.commands import config_from_args

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for kind in STAGES.list():
        sk = STAGES.get(kind)
        required = [n for n, f in sk.config.model_fields.items() if f.is_required()]
        argv = [MODEL, "--data", "digits"] + sum((["--" + n.replace("_", "-"), "lowrank"] for n in required), [])
        args = sub.choices[kind].parse_args(argv)
        assert set(config_from_args(args, sk.config)) == set(required), kind


def test_bool_or_name_flags_take_true_false_or_a_name():
    """A `bool | Literal[...]` field (sparsify's and weight-only's `sequential`) is one word on the
    command line: true / false become booleans, a listed name stays a name, anything else is refused."""
    from netcompress.commands import config_from_args
    from netcompress.prune.llm_stages import SparsifyConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["sparsify"]
    for word, value in (("true", True), ("False", False), ("block", "block"), ("layer", "layer")):
        cfg = config_from_args(sub.parse_args([MODEL, "--data", "digits", "--sequential", word]), SparsifyConfig)
        assert cfg == {"sequential": value} and SparsifyConfig(**cfg).sequential == value
    with pytest.raises(SystemExit) as e:
        sub.parse_args([MODEL, "--data", "digits", "--sequential", "blocks"])
    assert e.value.code == 2


def _digest(path: Path) -> str:
    """Weights + architecture of a model file; outputs of a TorchScript file (its bytes carry
    per-export ids); bytes of anything else (.ncz)."""
    if path.suffix == ".pt" and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()):
        m = torch.jit.load(str(path))
        x = nc.data.load("digits").example
        return hashlib.sha256(m(x).detach().numpy().tobytes()).hexdigest()
    if path.suffix == ".pt":
        m = nc.models.load(path)
        return hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in m.state_dict().values())
                              + json.dumps(nc.models.describe(m), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind,case,cfg,where", [(k, c[0], c[1], c[2] if len(c) > 2 else {})
                                                  for k, cases in CASES.items() for c in cases],
                         ids=[f"{k}-{c[0]}" for k, cases in CASES.items() for c in cases])
def test_cli_and_recipe_stage_give_the_same_model(tmp_path, kind, case, cfg, where, one_thread):
    model, dataset = where.get("model", MODEL), where.get("data", "digits")
    if kind in TRAINED_FIRST:
        data = nc.data.load("digits", batch_size=32, seed=3)
        m = nc.models.create_for(MODEL, data)
        nc.train.fit(m, data, epochs=1, max_steps=60, seed=3, progress=False)
        model = str(tmp_path / "trained.pt")
        nc.models.save(m, model)
    recipe = {"name": "parity", "seed": 3, "data": dataset, "model": model, "train": TRAIN,
              "measure": {"latency": False}, "stages": [{kind: cfg}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = nc.recipe.run_recipe(tmp_path / "r.yaml", out=tmp_path / "run", progress=False)
    stage_dir = next((tmp_path / "run" / "stages").glob("01-*"))
    artifacts = [p for p in stage_dir.iterdir() if p.name not in ("model.pt", "done.json", "key.txt", "figures") and p.suffix != ".ckpt"]
    out = tmp_path / ("cli" + (artifacts[0].suffix if artifacts else ".pt"))
    argv = [kind, model, "--data", dataset, "--seed", "3", *flags(cfg), "--train-epochs", "0",
            "--train-max-steps", "2", "--train-batch-size", "32", "--out", str(out)]
    assert main(argv) == 0
    assert len(artifacts) <= 1
    expected = artifacts[0] if artifacts else stage_dir / "model.pt"
    assert _digest(out) == _digest(expected), f"netcompress {' '.join(argv)} differs from the recipe stage"
    assert res.entries[1]["kind"] == kind
