"""Run by test_foundation_train.py under `torchrun --nproc_per_node=2` (and once without it)."""
import sys

import torch

import netcompress as nc
from netcompress.train import dist_info

torch.set_num_threads(1)
out = sys.argv[1]
# 1,408 = 22 x 64: every batch is full, so DistributedSampler adds no padding duplicates
data = nc.data.load("digits").subset(1408)
torch.manual_seed(0)
model = nc.models.create("lenet300", in_channels=1, input_size=8)
hist = nc.train.fit(model, data, epochs=2, lr=0.05, batch_size=64, seed=1, progress=False)
if dist_info().rank == 0:
    torch.save({"state": model.state_dict(), "acc": hist.final_test_acc}, out)
