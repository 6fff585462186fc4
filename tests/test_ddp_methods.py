"""Data parallelism for every method: 2 gloo ranks (CPU) train the same weights as one process.

Tolerance: 1e-4 (absolute and relative) on every weight after 4 steps. The two runs see the same
global batches (1,408 samples, global batch 64); what may differ is the order of float reductions.
All processes run in one `torchrun` group for all 16 methods, to pay the start-up once."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

METHODS = ["kd", "fitnet", "at", "rkd", "sp", "dml", "born-again", "takd", "slimming", "qat-uniform",
           "binaryconnect", "kmeans-finetune", "early-exit", "lm-early-exit", "sparse-vd", "hidden"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    worker = str(Path(__file__).with_name("ddp_methods_worker.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, worker, str(tmp / "single.pt")], check=True, env=env, timeout=400)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                    worker, str(tmp / "ddp.pt")], check=True, env=env, timeout=400)
    return torch.load(tmp / "single.pt", weights_only=True), torch.load(tmp / "ddp.pt", weights_only=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", METHODS)
def test_method_under_two_ranks_matches_one_process(runs, method):
    single, ddp = runs
    a, b = single[method], ddp[method]
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), f"{method}: {k} differs by {(a[k] - b[k]).abs().max():.2e}"
