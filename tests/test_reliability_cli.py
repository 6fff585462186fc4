"""The CLI as a careless user meets it: one seed one result, one line and exit 2 for bad input."""
import hashlib
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.cli import main

COMMANDS = {  # every command that writes a model, with a tiny budget
    "train": "train lenet300 --data digits --epochs 0.1 --seed {seed}",
    "prune": "prune lenet300 --data digits --ratio 0.5 --epochs 0.1 --seed {seed}",
    "distill": "distill lenet300 --data digits --student lenet300-half --epochs 0.1 --seed {seed}",
    "quantize": "quantize lenet300 --data digits --method kmeans --bits 3 --init random --epochs 0.1 --seed {seed}",
    "design": "design lenet300 --data digits --op lowrank --rank 4 --epochs 0.1 --seed {seed}",
    "dynamic": "dynamic lenet300 --data digits --exits fc1 --epochs 0.1 --holdout 100 --threshold 0.9 --no-latency --seed {seed}",
    "pack": "pack lenet300 --data digits --seed {seed}",
    "finetune": "finetune lenet300 --data digits --epochs 0.1 --seed {seed}",
    "sparse-vd": "sparse-vd lenet300 --data digits --epochs 0.1 --anneal-epochs 0 --seed {seed}",
    "sparsify": "sparsify lenet300 --data digits --criterion sparsegpt --samples 16 --seed {seed}",
    "weight-only": "weight-only lenet300 --data digits --method gptq --bits 4 --group-size 16 --samples 16 --seed {seed}",
    # an untrained model's logits are near-ties that int8 rounding flips (87.5 % top-1 agreement with
    # onnxruntime 1.32); the max-difference check still applies in full
    "export": "export lenet300 --data digits --int8 --calibration-samples 32 --check-samples 32 --min-top1-int8 0.5 "
              "--no-latency --seed {seed}",
}
SUFFIX = {"pack": ".ncz", "export": ".onnx"}


def test_every_stage_command_is_checked_for_determinism():
    from netcompress.recipe.stages import STAGES

    assert set(STAGES.list()) <= set(COMMANDS), sorted(set(STAGES.list()) - set(COMMANDS))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run(cmd: str, out: Path, capsys, seed: int = 0) -> str:
    torch.manual_seed(int(torch.randint(0, 2**31, (1,))) + 17)  # whatever the process did before
    code = main(cmd.format(seed=seed).split() + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return sha(out)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_same_seed_same_file(name, tmp_path, capsys, one_thread):
    ext = SUFFIX.get(name, ".pt")
    a = run(COMMANDS[name], tmp_path / f"a{ext}", capsys)
    b = run(COMMANDS[name], tmp_path / f"b{ext}", capsys)
    assert a == b, f"{name}: two runs with the same seed wrote different files"
    if "{seed}" in COMMANDS[name]:
        c = run(COMMANDS[name], tmp_path / f"c{ext}", capsys, seed=1)
        assert c != a, f"{name}: --seed changes nothing"


def test_unpack_is_deterministic(tmp_path, capsys):
    main(["pack", "lenet300", "--data", "digits", "--out", str(tmp_path / "m.ncz")])
    hashes = {run("unpack " + str(tmp_path / "m.ncz"), tmp_path / f"{i}.pt", capsys) for i in range(2)}
    assert len(hashes) == 1


def test_api_create_takes_the_seed():
    a = nc.models.create("lenet5", seed=3)
    torch.manual_seed(99)
    b = nc.models.create_for("lenet5", nc.data.load("mnist-5k"), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    state = torch.get_rng_state()
    nc.models.create("lenet5", seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left as it was


# ---------------------------------------------------------------- 12.7: one line, exit 2

def one_line(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if not ln.startswith(("train:", "["))]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith("netcompress: error: "), err
    return lines[0]


@pytest.mark.parametrize("flags,expect", [
    (["--epochs", "-1"], "epochs: Input should be greater than or equal to 0"),
    (["--lr", "-1"], "lr: Input should be greater than 0"),
    (["--batch-size", "0"], "batch_size"),
])
def test_train_refuses_bad_values(flags, expect, tmp_path, capsys):
    msg = one_line(["train", "lenet300", "--data", "digits", "--out", str(tmp_path / "m.pt")] + flags, capsys)
    assert msg.count("netcompress: error:") == 1
    assert expect in msg and not (tmp_path / "m.pt").exists()


def test_bad_values_are_refused_by_the_configs_for_every_door():
    with pytest.raises(nc.NetcompressError, match="lr"):
        nc.train.fit(nc.models.create("lenet300", in_channels=1, input_size=8), nc.data.load("digits"), lr=-1)
    with pytest.raises(nc.NetcompressError, match="batch_size"):
        nc.data.load("digits", batch_size=0)
    with pytest.raises(nc.NetcompressError, match="threads"):
        nc.measure(nc.models.create("lenet300"), threads=0)


def test_measure_threads_zero(capsys):
    assert "--threads 0" in one_line(["measure", "lenet300", "--data", "digits", "--threads", "0"], capsys)


def test_out_naming_an_existing_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    msg = one_line(["train", "lenet300", "--data", "digits", "--epochs", "0.1", "--out", str(tmp_path / "d")], capsys)
    assert "is an existing directory" in msg
    msg = one_line(["pack", "lenet300", "--data", "digits", "--out", str(tmp_path / "d")], capsys)
    assert "existing directory" in msg


def test_measure_early_exit_by_name(capsys):
    msg = one_line(["measure", "early-exit", "--data", "digits", "--no-latency"], capsys)
    assert "'early-exit'" in msg and "saved file" in msg


FACTORY = """\
from torch import nn

def mlp(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

def needs_depth(depth, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
"""


def test_python_factory_without_input_size(tmp_path, capsys, monkeypatch):
    (tmp_path / "nc_user_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["train", "python:nc_user_factory:mlp", "--data", "digits", "--epochs", "0.1",
                 "--out", str(tmp_path / "m.pt")])
    assert code == 0, capsys.readouterr().err
    assert nc.models.load(tmp_path / "m.pt", trust_python=True)[1].in_features == 64
    msg = one_line(["train", "python:nc_user_factory:needs_depth", "--data", "digits", "--out", str(tmp_path / "n.pt")], capsys)
    assert "needs_depth" in msg and "depth" in msg


def test_truncated_checkpoint_on_resume(tmp_path, capsys):
    work = tmp_path / "work"
    args = ["train", "lenet300", "--data", "digits", "--epochs", "1", "--work-dir", str(work), "--out", str(tmp_path / "m.pt")]
    assert main(args) == 0
    (ck,) = work.glob("*.ckpt")
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    msg = one_line(args + ["--resume"], capsys)
    assert str(ck) in msg and "unreadable" in msg


def test_list_counts_parameters_of_each_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    for name in ("lenet5", "lenet5-half", "lenet300-quarter", "resnet20"):
        n = sum(p.numel() for p in nc.models.create(name).parameters())
        assert f"{n / 1e3:.0f}K params" in rows[name], rows[name]
    assert "109K params" in rows["lenet5-half"]
