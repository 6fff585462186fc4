"""Unstructured (weight) pruning with masks kept while fine-tuning.

`weights_(model, ...)` zeroes the least important weights in place and stores each layer's mask as a
`weight_mask` buffer (saved and loaded with the model). `MaskMethod` keeps masked weights at zero
during `netcompress.train.fit` (gradients zeroed, masks re-applied after each step) and `finalize_`
drops the buffers, leaving the zeros permanent. Magnitude pruning after Han et al. 2015.
"""
from __future__ import annotations

from typing import Callable, Literal, Mapping

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layers import is_hf_conv1d
from netcompress.core.method import Method

FilterFn = Callable[[nn.Module, str], bool]
MASK = "weight_mask"


def default_filter(module: nn.Module, name: str) -> bool:
    """Conv and Linear layers (the weights Deep Compression prunes)."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or is_hf_conv1d(module)


def _targets(model: nn.Module, sparsity: float | Mapping[str, float], filter_fn: FilterFn | None) -> dict[str, tuple[nn.Module, float]]:
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, nn.Parameter):
            continue
        if not (filter_fn or default_filter)(m, name):
            continue
        if isinstance(sparsity, Mapping):
            s = sparsity.get(name, sparsity.get(type(m).__name__))
            if s is None:
                continue
        else:
            s = sparsity
        out[name] = (m, float(s))
    return out


def _validate(criterion: str, sparsity: float | Mapping[str, float], scope: str) -> None:
    if criterion not in ("l1", "random"):
        raise NetcompressError(f"weight criterion must be 'l1' or 'random', got {criterion!r}")
    if scope not in ("global", "layer"):
        raise NetcompressError(f"scope must be 'global' or 'layer', got {scope!r}")
    values = sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]
    for v in values:
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise NetcompressError(f"sparsity must be in [0, 1), got {v!r}")


def current_mask(m: nn.Module) -> torch.Tensor:
    mask = getattr(m, MASK, None)
    return mask.bool() if isinstance(mask, torch.Tensor) else torch.ones_like(m.weight, dtype=torch.bool)


@torch.no_grad()
def weights_(model: nn.Module, criterion: Literal["l1", "random"] = "l1", sparsity: float | Mapping[str, float] = 0.9,
             scope: Literal["global", "layer"] = "global", filter_fn: FilterFn | None = None,
             seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero the least important weights in place and keep their masks (`weight_mask` buffers).

    Already-masked weights stay masked, so repeated calls with growing sparsity give iterative
    pruning (Han et al. 2015, 'Learning both Weights and Connections').

    Args:
        model: changed in place.
        criterion: 'l1' (magnitude) or 'random' (the control).
        sparsity: fraction of zero weights, or a dict by layer type / qualified name
            ({"Conv2d": 0.6, "Linear": 0.92}): each listed layer gets its own sparsity.
        scope: 'global' ranks all selected weights together; 'layer' prunes each layer to `sparsity`.
            A dict of sparsities is always per layer.
        filter_fn: `filter_fn(module, name) -> bool` selects layers (default: conv and linear).

    Returns:
        {layer name: bool mask} of the layers pruned.

    Example:
        masks = weights_(model, "l1", 0.9)
    """
    _validate(criterion, sparsity, scope)
    targets = _targets(model, sparsity, filter_fn)
    if not targets:
        raise NetcompressError("weights_: no layer selected (check filter_fn / the sparsity dict's keys)")
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for name, (m, _) in targets.items():
        s = m.weight.detach().abs().float() if criterion == "l1" else torch.rand(m.weight.shape, generator=gen)
        s = s.to(m.weight.device).masked_fill(~current_mask(m).to(m.weight.device), -1.0)
        scores[name] = s
    masks: dict[str, torch.Tensor] = {}
    if scope == "global" and not isinstance(sparsity, Mapping):
        flat = torch.cat([s.flatten().cpu() for s in scores.values()])
        k = int(sparsity * flat.numel())
        order = torch.argsort(flat, stable=True)
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[order[:k]] = False
        off = 0
        for name, s in scores.items():
            n = s.numel()
            masks[name] = keep[off:off + n].view(s.shape).to(s.device)
            off += n
    else:
        for name, (m, sp) in targets.items():
            s = scores[name].flatten()
            k = int(sp * s.numel())
            keep = torch.ones_like(s, dtype=torch.bool)
            keep[torch.argsort(s, stable=True)[:k]] = False
            masks[name] = keep.view(scores[name].shape)
    for name, mask in masks.items():
        m = targets[name][0]
        m.weight.mul_(mask.to(m.weight.dtype))
        if isinstance(getattr(m, MASK, None), torch.Tensor):
            setattr(m, MASK, mask.to(torch.uint8))
        else:
            m.register_buffer(MASK, mask.to(torch.uint8))
    return masks


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: bool mask} of every layer carrying a `weight_mask` buffer."""
    return {n: m.weight_mask.bool() for n, m in model.named_modules() if isinstance(getattr(m, MASK, None), torch.Tensor)}


def finalize_(model: nn.Module) -> nn.Module:
    """Make masks permanent: weights stay zero, the `weight_mask` buffers are removed."""
    with torch.no_grad():
        for _, m in model.named_modules():
            mask = m._buffers.get(MASK) if hasattr(m, "_buffers") else None
            if isinstance(mask, torch.Tensor):
                m.weight.mul_(mask.to(m.weight.dtype))
                del m._buffers[MASK]
    return model


def sparsity_of(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, float]:
    """Fraction of zero weights of each selected layer."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and (filter_fn or default_filter)(m, name):
            out[name] = 1.0 - torch.count_nonzero(w).item() / w.numel()
    return out


class MaskMethod(Method):
    """Keeps masked weights at zero while training: zeroes their gradients after backward and
    re-applies the masks after every optimizer step (momentum and weight decay cannot revive them)."""

    name = "mask"

    def after_backward(self, model: nn.Module) -> None:
        for _, m in model.named_modules():
            mask = m._buffers.get(MASK)
            if isinstance(mask, torch.Tensor) and m.weight.grad is not None:
                m.weight.grad.mul_(mask.to(m.weight.grad.dtype))

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for _, m in model.named_modules():
            mask = m._buffers.get(MASK)
            if isinstance(mask, torch.Tensor):
                m.weight.mul_(mask.to(m.weight.dtype))

    def finalize(self, model: nn.Module) -> nn.Module:
        return finalize_(model)


def agp_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """The cubic schedule of Zhu & Gupta 2017 ('To prune, or not to prune'):
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, clamped to [t0, t_end]."""
    if end <= start:
        return final
    frac = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


class AGPMethod(MaskMethod):
    """Automated gradual pruning (Zhu & Gupta 2017) as a training Method: every `frequency` steps
    between `start` and `end` it raises the sparsity along the cubic schedule; masks hold between.

    Example:
        fit(model, data, epochs=3, methods=[AGPMethod(0.9, end=300)])
    """

    name = "agp"

    def __init__(self, sparsity: float, end: int, start: int = 0, frequency: int = 10, initial: float = 0.0,
                 criterion: str = "l1", scope: str = "global", filter_fn: FilterFn | None = None) -> None:
        _validate(criterion, sparsity, scope)
        if end < start or frequency < 1:
            raise NetcompressError(f"AGP: need start <= end and frequency >= 1, got {start}, {end}, {frequency}")
        self.final, self.start, self.end, self.frequency, self.initial = sparsity, start, end, frequency, initial
        self.criterion, self.scope, self.filter_fn = criterion, scope, filter_fn
        self.current = 0.0

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.initial > 0 and self.current < self.initial:
            weights_(model, self.criterion, self.initial, self.scope, self.filter_fn)
            self.current = self.initial
        return model

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.start <= step <= self.end and ((step - self.start) % self.frequency == 0 or step == self.end):
            s = agp_sparsity(step, self.final, self.start, self.end, self.initial)
            if s > self.current:
                weights_(model, self.criterion, s, self.scope, self.filter_fn)
                self.current = s
        super().after_step(model, step)

    def finalize(self, model: nn.Module) -> nn.Module:
        if self.current < self.final:  # training stopped before the schedule's end
            weights_(model, self.criterion, self.final, self.scope, self.filter_fn)
            self.current = self.final
        return finalize_(model)

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.current = float(state.get("current", 0.0))
