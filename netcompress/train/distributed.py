"""Data parallelism through PyTorch's own DDP, started by `torchrun`.

`torchrun --nproc_per_node=N -m netcompress run RECIPE` sets RANK / WORLD_SIZE / MASTER_ADDR; we
initialise the process group (gloo on CPU, nccl on CUDA), shard the data with DistributedSampler's
indices, let DDP average gradients, and write files from rank 0 only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather  # differentiable collectives


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Initialise the process group if torchrun started us and it is not initialised yet."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist_info()


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def is_main() -> bool:
    return dist_info().rank == 0


def barrier() -> None:
    if dist_info().enabled:
        dist.barrier()


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank tensor (concatenated over ranks, differentiable): losses that
    relate the samples of a batch (RKD, SP) see the same batch as in one process. Each rank then
    computes the same global loss; the gather's backward sums the ranks' gradients and DDP averages
    them, which gives the one-process gradient."""
    if not dist_info().enabled:
        return t
    return torch.cat(all_gather(t.contiguous()))


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` (detached) averaged over the ranks; `t` itself in one process. With equal shards the
    mean of per-rank batch means is the global batch mean, so a statistic taken from it is the
    same on every rank and in a one-process run."""
    t = t.detach().clone()
    if dist_info().enabled:
        dist.all_reduce(t)
        t /= dist_info().world_size
    return t
