"""One way to use torch's global RNG without leaving a trace on it."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def forked_rng(seed: int | None = None, cuda: bool = True) -> Iterator[None]:
    """Run the body on a fork of torch's global RNG, seeded with `seed` when one is given; the
    caller's RNG state comes back afterwards.

    Args:
        seed: ``torch.manual_seed(seed)`` inside the fork (None: the body draws on from the
            caller's state, which is restored all the same).
        cuda: also fork (and restore) every CUDA device's generator; False forks the CPU one only
            (model construction on the CPU, which need not start CUDA).
    """
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
