import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.core import Method
from netcompress.train import TrainConfig, evaluate, fit


def test_fit_learns_real_digits(digits):
    m = nc.models.create("lenet300", in_channels=1, input_size=8)
    before = evaluate(m, digits)
    h = fit(m, digits, epochs=3, progress=False)
    assert len(h.epochs) == 3 and h.final_test_acc > 0.85 > before
    assert {"loss", "task", "train_acc", "test_acc", "lr"} <= set(h.epochs[-1])


def test_methods_add_named_loss_terms_and_hooks(digits):
    calls = []

    class L2(Method):
        def loss_terms(self, model, x, y, out):
            return {"l2": 1e-3 * sum((p ** 2).sum() for p in model.parameters())}

        def after_step(self, model, step):
            calls.append(step)

    m = nc.models.create("lenet300", in_channels=1, input_size=8)
    h = fit(m, digits, epochs=1, max_steps=5, methods=[L2()], progress=False)
    assert calls == [1, 2, 3, 4, 5] and h.epochs[-1]["l2"] > 0
    assert abs(h.epochs[-1]["loss"] - h.epochs[-1]["task"] - h.epochs[-1]["l2"]) < 1e-5


def test_fit_is_deterministic(digits):
    ws = []
    for _ in range(2):
        torch.manual_seed(0)
        m = nc.models.create("lenet300", in_channels=1, input_size=8)
        fit(m, digits, epochs=1, seed=4, progress=False)
        ws.append(m.fc1.weight.detach().clone())
    assert torch.equal(ws[0], ws[1])


def test_resume_after_kill_gives_identical_weights(digits, tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, schedule="cosine")

    def fresh():
        torch.manual_seed(0)
        return nc.models.create("vgg-small-quarter", in_channels=1, input_size=8)  # BN + running stats

    full = fresh()
    fit(full, digits, cfg, seed=2, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first(log):
        if log["epoch"] == 1:
            raise Killed

    part = fresh()
    with pytest.raises(Killed):
        fit(part, digits, cfg, seed=2, checkpoint=tmp_path / "c.ckpt", callbacks=[kill_after_first], progress=False)
    # the callback ran before the checkpoint of epoch 1, so the checkpoint holds epoch 0 only
    resumed = fresh()
    h = fit(resumed, digits, cfg, seed=2, checkpoint=tmp_path / "c.ckpt", resume=True, progress=False)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_nan_loss_is_reported(digits):
    m = nc.models.create("lenet300", in_channels=1, input_size=8)
    with pytest.raises(nc.NetcompressError, match="lower the learning rate"):
        fit(m, digits, epochs=1, lr=1e6, momentum=0.0, progress=False)


@pytest.mark.timeout(300)
def test_ddp_two_processes_match_single_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) == one process with the same global batch."""
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, worker, str(tmp_path / "single.pt")], check=True, env=env, timeout=240)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                    worker, str(tmp_path / "ddp.pt")], check=True, env=env, timeout=240)
    a = torch.load(tmp_path / "single.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for k in a["state"]:
        # same batches, gradients averaged: equal up to float reduction order
        assert torch.allclose(a["state"][k], b["state"][k], atol=1e-4, rtol=1e-4), k
    assert abs(a["acc"] - b["acc"]) <= 0.01


def test_dataloader_order_depends_only_on_seed_and_epoch(digits):
    from torch.utils.data import DataLoader

    from netcompress.train.loop import _set_epoch

    def first_batch(epoch, warmup):
        loader = DataLoader(digits.train_set, 32, shuffle=True, generator=torch.Generator().manual_seed(9))
        for e in range(warmup):  # earlier epochs consumed (or not, after a resume)
            _set_epoch(loader, e, seed=3)
            next(iter(loader))
        _set_epoch(loader, epoch, seed=3)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(2, warmup=0), first_batch(2, warmup=2))
    assert not torch.equal(first_batch(2, warmup=0), first_batch(3, warmup=0))
