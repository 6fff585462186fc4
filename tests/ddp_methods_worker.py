"""Run by test_ddp_methods.py: every training method of every family for a few steps, once in one
process and once under `torchrun --nproc_per_node=2` (gloo, CPU); rank 0 saves the final weights."""
import sys

import torch
from torch import nn

import netcompress as nc
from netcompress.train import dist_info

torch.set_num_threads(1)
out = sys.argv[1]
# 1,408 = 22 x 64: every batch is full, so DistributedSampler adds no padding duplicates
data = nc.data.load("digits").subset(1408, 200)
STEPS = dict(epochs=1, max_steps=4, batch_size=64, lr=0.02)


def net(seed: int = 0, width: float = 0.25) -> nn.Module:
    torch.manual_seed(seed)
    return nc.models.create_for("lenet5", data, width=width)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nc.models.create_for("lenet300", data)


teacher = net(1, 0.5)
nc.train.fit(teacher, data, seed=5, progress=False, **STEPS)
results: dict[str, dict[str, torch.Tensor]] = {"teacher": teacher.state_dict()}
train = nc.train.TrainConfig(**STEPS)
for method in ("kd", "fitnet", "at", "rkd", "sp", "dml", "born-again", "takd"):
    student = net(2) if method != "born-again" else None
    res = nc.distill.distill(method, teacher, student, data, seed=3, train=train, epochs=1, max_steps=4,
                             hint_epochs=1, generations=1, compare_direct=False)
    results[method] = res.student.state_dict()
ctx_kw = dict(seed=3, train=STEPS)
stage_cases = {
    "slimming": ("prune", net(4), {"ratio": 0.25, "criterion": "slimming", "slimming_epochs": 1, "epochs": 1}),
    "qat-uniform": ("quantize", mlp(5), {"method": "uniform", "bits": 4, "epochs": 1}),
    "binaryconnect": ("quantize", mlp(6), {"method": "binary", "epochs": 1}),
    "kmeans-finetune": ("quantize", mlp(7), {"method": "kmeans", "bits": 3, "epochs": 1}),
    "early-exit": ("dynamic", net(8), {"exits": ["features.2"], "holdout": 128, "epochs": 1, "latency": False,
                                       "train_backbone": True}),
    "sparse-vd": ("sparse-vd", mlp(10), {"epochs": 1, "finetune_epochs": 0}),
}
for name, (kind, model, cfg) in stage_cases.items():
    results[name] = nc.recipe.apply(kind, model, data, **ctx_kw, **cfg).model.state_dict()
# per-token exits of a language model: 64 - 8 held-out windows = 7 full global batches of 8
text = nc.data.load("pydoc-text-tiny")
torch.manual_seed(9)
gpt = nc.models.create_for("gpt-tiny", text, dim=32, depth=2, n_heads=2)
results["lm-early-exit"] = nc.recipe.apply("dynamic", gpt, text, seed=3, train={**STEPS, "batch_size": 8},
                                           holdout=8, epochs=1, latency=False).model.state_dict()
# transformer KD: logits + hidden states through projection adapters (the method's own parameters)
torch.manual_seed(11)
small = nc.models.create_for("gpt-tiny", text, dim=16, depth=1, n_heads=2)
res = nc.distill.distill("hidden", gpt, small, text, seed=3, train=nc.train.TrainConfig(**{**STEPS, "batch_size": 8}),
                         epochs=1, max_steps=4)
results["hidden"] = res.student.state_dict()
if dist_info().rank == 0:
    torch.save(results, out)
