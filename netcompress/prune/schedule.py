"""Pruning schedules (one-shot, iterative prune / fine-tune) and Network Slimming's sparsity training.

The lecture's loop: trained network -> score -> remove the least important -> fine-tune -> repeat.
Fine-tuning always goes through `netcompress.train.fit` (or a stage's `ctx.fit`), passed in as
`finetune(model, methods) -> None`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method
from netcompress.prune.structured import channels, ratio_or_macs
from netcompress.prune.unstructured import FilterFn, MaskMethod, finalize_, weights_

Finetune = Callable[[nn.Module, Sequence[Method]], Any]


def step_sparsities(final: float, steps: int) -> list[float]:
    """Sparsity after each of `steps` iterative rounds: equal shares of the weights still left
    (1 - (1 - s)^(k / steps)), so every round removes the same fraction of the survivors."""
    if steps < 1:
        raise NetcompressError(f"steps must be >= 1, got {steps}")
    return [1.0 - (1.0 - final) ** ((k + 1) / steps) for k in range(steps)]


def iterative_weights_(model: nn.Module, finetune: Finetune | None, sparsity: float | Mapping[str, float] = 0.9,
                       steps: int = 3, criterion: str = "l1", scope: str = "global",
                       filter_fn: FilterFn | None = None, finalize: bool = True, seed: int = 0) -> nn.Module:
    """Iterative magnitude pruning (Han et al. 2015): `steps` rounds of `weights_` towards
    `sparsity`, each followed by `finetune(model, [MaskMethod()])`; masks become permanent at the end.

    Example:
        iterative_weights_(model, lambda m, ms: nc.train.fit(m, data, epochs=1, methods=ms), 0.9, 3)
    """
    if isinstance(sparsity, Mapping):
        plans = [{k: s for k, s in zip(sparsity, vals)} for vals in zip(*(step_sparsities(v, steps) for v in sparsity.values()))]
    else:
        plans = step_sparsities(sparsity, steps)
    for s in plans:
        weights_(model, criterion, s, scope, filter_fn, seed=seed)
        if finetune is not None:
            finetune(model, [MaskMethod()])
    return finalize_(model) if finalize else model


def iterative_channels(model: nn.Module, finetune: Finetune | None, ratio: float | None = None, steps: int = 3, *,
                       example_inputs: torch.Tensor, criterion: str = "l1", data: Any = None,
                       scope: str = "layer", ignore: Iterable[str] = (), seed: int = 0, calibration: int = 256,
                       macs: float | None = None) -> nn.Module:
    """Iterative filter pruning: `steps` rounds of `channels`, each removing the same share of the
    channels left (together `ratio` of every group; default 0.5), or each keeping the same share of
    the MACs left (together `macs` of the model's MACs), each followed by `finetune(model, [])`.
    Returns the new model (the input model is unchanged)."""
    if steps < 1:
        raise NetcompressError(f"steps must be >= 1, got {steps}")
    ratio, macs = ratio_or_macs(ratio, macs)
    per_step = ({"macs": macs ** (1.0 / steps)} if macs is not None else
                {"ratio": 1.0 - (1.0 - ratio) ** (1.0 / steps)})
    cur = model
    for _ in range(steps):
        cur = channels(cur, criterion, example_inputs=example_inputs, data=data, scope=scope, ignore=ignore, seed=seed,
                       calibration=calibration, **per_step)
        if finetune is not None:
            finetune(cur, [])
    return cur


class SlimmingMethod(Method):
    """Network Slimming's sparsity training (Liu et al. 2017): adds lambda * sum |gamma| over the
    BatchNorm scales to the loss, so unimportant channels' gammas go to zero before pruning with the
    `slimming` criterion. `filter_fn(module, name)` picks the norm layers (default: all BatchNorm).

    Example:
        fit(model, data, epochs=5, methods=[SlimmingMethod(1e-4)])
    """

    name = "slimming"

    def __init__(self, lam: float = 1e-4, filter_fn: FilterFn | None = None) -> None:
        if lam < 0:
            raise NetcompressError(f"slimming lambda must be >= 0, got {lam}")
        self.lam = lam
        self.filter_fn = filter_fn or (lambda m, n: isinstance(m, nn.modules.batchnorm._BatchNorm))

    def loss_terms(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: Any) -> dict[str, torch.Tensor]:
        gammas = [m.weight.abs().sum() for n, m in model.named_modules()
                  if self.filter_fn(m, n) and getattr(m, "weight", None) is not None]
        if not gammas:
            return {}
        return {"slimming_l1": self.lam * torch.stack(gammas).sum()}


Schedule = Literal["oneshot", "iterative", "agp"]
