"""BinaryConnect (Courbariaux, Bengio & David 2015, "BinaryConnect: training deep neural networks with
binary weights during propagations").

The forward and backward passes use binary weights +H / -H; the optimizer updates real-valued
shadow weights, clipped to [-H, H] after each step. Deterministic binarisation takes the sign;
stochastic binarisation draws +H with probability hard_sigmoid(w / H) = clip((w / H + 1) / 2, 0, 1).
H is per layer: the authors' code (BinaryConnect/binary_net.py) uses the Glorot scale
H = sqrt(1.5 / (fan_in + fan_out)) (the paper writes [-1, 1], i.e. units of H). After training the
binary weights are written into the model, so the archive stores one bit per weight.

Example:
    bc = BinaryConnect(stochastic=False)
    nc.train.fit(model, data, methods=[bc], epochs=5)
    bc.finalize(model)
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.quantize.uniform import FilterFn, WeightSwap


def glorot_h(module: nn.Module) -> float:
    """The binary magnitude H of a layer: sqrt(1.5 / (fan_in + fan_out)) (authors' code)."""
    w = module.weight
    rf = w[0][0].numel() if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * rf, w.shape[0] * rf
    return math.sqrt(1.5 / (fan_in + fan_out))


class BinaryConnect(WeightSwap):
    """Binary weights in propagation, clipped real-valued shadow weights in the update."""

    name = "binaryconnect"

    def __init__(self, stochastic: bool = False, scale: Literal["glorot", "mean"] = "glorot",
                 filter_fn: FilterFn | None = None, seed: int = 0) -> None:
        if scale not in ("glorot", "mean"):
            raise NetcompressError(f"BinaryConnect: scale {scale!r}; valid: glorot, mean")
        super().__init__(filter_fn)
        self.stochastic, self.scale = stochastic, scale
        self.H: dict[nn.Module, float] = {}
        self.gen = torch.Generator().manual_seed(seed)

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        with torch.no_grad():
            for m in self._mods:
                h = glorot_h(m) if self.scale == "glorot" else float(m.weight.abs().mean())
                self.H[m] = h
                m.weight.clamp_(-h, h)
        return model

    def transform(self, module: nn.Module, w: torch.Tensor) -> torch.Tensor:
        h = self.H[module]
        if self.stochastic and module.training:
            p = ((w / h + 1) / 2).clamp(0, 1)
            r = torch.rand(w.shape, generator=self.gen).to(w.device)
            return torch.where(r < p, h, -h).to(w.dtype)
        return torch.where(w >= 0, h, -h).to(w.dtype)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for m in self._mods:
            h = self.H[m]
            m.weight.clamp_(-h, h)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Write the deterministic binary weights (sign of the shadow weights times H)."""
        self.remove()
        for m in self._mods:
            h = self.H[m]
            m.weight.copy_(torch.where(m.weight >= 0, h, -h).to(m.weight.dtype))
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"H": [self.H[m] for m in self._mods]}
