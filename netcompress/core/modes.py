"""Temporary eval / train mode with the caller's per-module flags restored exactly.

``was = model.training; model.eval(); ...; model.train(was)`` is not a restore: `train(flag)` sets
every submodule to `flag`, so a model in train mode with a deliberately frozen BatchNorm
(``model.train(); model.bn.eval()``, a common fine-tuning setup) would come back with that
BatchNorm in train mode.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


Flags = list[tuple[nn.Module, bool]]


def training_flags(model: nn.Module) -> Flags:
    """Every module of `model` with its own `training` flag, for `restore_training_flags`."""
    return [(m, m.training) for m in model.modules()]


def restore_training_flags(flags: Flags) -> None:
    """Give each module its recorded flag back (not `train(flag)`, which would recurse)."""
    for m, flag in flags:
        m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block; afterwards (also on an exception) every module gets back
    its own `training` flag, not the top module's, so a caller's frozen BatchNorm stays frozen.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> _ = m[1].eval()
        >>> with eval_mode(m):
        ...     m.training, m[1].training
        (False, False)
        >>> m.training, m[0].training, m[1].training
        (True, True, False)
    """
    flags = training_flags(model)
    model.eval()
    try:
        yield model
    finally:
        restore_training_flags(flags)
