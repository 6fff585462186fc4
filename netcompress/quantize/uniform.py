"""Uniform n-bit weight quantization: fake quantization with a straight-through estimator, post-training
calibration (min/max, MSE, percentile clipping) and quantization-aware training.

A b-bit quantizer maps w to s * (clamp(round(w / s) + z, qmin, qmax) - z) (Jacob et al. 2018,
"Quantization and training of neural networks for efficient integer-arithmetic-only inference").
Symmetric: z = 0, levels -(2^(b-1) - 1) .. 2^(b-1) - 1; affine: levels 0 .. 2^b - 1 with a zero
point. Per-tensor or per-channel (output channel = dim 0). Training uses the straight-through
estimator (Bengio et al. 2013): the forward pass sees quantized weights, the gradient reaches the
float "shadow" weights unchanged (zero outside the clipping range).

Example:
    >>> import torch
    >>> w = torch.randn(8, 4)
    >>> q = fake_quantize(w, bits=4)
    >>> int(torch.unique(q).numel()) <= 16
    True
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method

Observer = Literal["minmax", "mse", "percentile"]
"""How a weight range is chosen (the *observer*; `calibration` always means data in netcompress)."""
FilterFn = Callable[[nn.Module, str], bool]


def _default_filter(module: nn.Module, name: str) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and getattr(module, "weight", None) is not None


def _check(bits: int, observer: str = "minmax") -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise NetcompressError(f"uniform quantization: bits must be an integer in 2..8, got {bits!r}")
    if observer not in ("minmax", "mse", "percentile"):
        raise NetcompressError(f"uniform quantization: observer {observer!r}; valid: minmax, mse, percentile")


def _levels(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _ranges(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = w.detach().reshape(w.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
    return x.min(1).values, x.max(1).values


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range [lo, hi] (per entry)."""
    qmin, qmax = _levels(bits, symmetric)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / qmax).clamp(min=1e-12)
        return scale, torch.zeros_like(scale)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-12)
    zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero


def _shape(t: torch.Tensor, w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return t.view(-1, *([1] * (w.dim() - 1))) if per_channel else t.reshape(())


def quantize_dequantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool,
                        per_channel: bool) -> torch.Tensor:
    """The dequantized b-bit value of every weight (no gradient trick)."""
    qmin, qmax = _levels(bits, symmetric)
    s, z = _shape(scale, w, per_channel), _shape(zero, w, per_channel)
    return (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z) * s


def calibrate(w: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False,
              method: Observer = "minmax", percentile: float = 99.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-training range calibration: scale and zero point of `w`.

    'minmax' uses the full range; 'percentile' clips to the given percentile of |w| (or of w for
    affine); 'mse' searches 100 clipping ratios (0.01 to 1, geometric) of the min/max range and keeps the one with the
    lowest squared error (per channel when `per_channel`), as in Banner et al. 2019 / NVIDIA's
    TensorRT calibration.
    """
    _check(bits, method)
    lo, hi = _ranges(w, per_channel)
    if method == "percentile":
        x = w.detach().reshape(w.shape[0] if per_channel else 1, -1).float()
        q = percentile / 100.0
        if symmetric:
            a = torch.quantile(x.abs(), q, dim=1)
            lo, hi = -a, a
        else:
            lo, hi = torch.quantile(x, 1 - q, dim=1), torch.quantile(x, q, dim=1)
    elif method == "mse":
        r = mse_ratio(w, bits, symmetric, per_channel)
        lo, hi = lo * r, hi * r
    return qparams(lo, hi, bits, symmetric)


def mse_ratio(w: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False) -> torch.Tensor:
    """The clipping ratio of the min/max range (one per output channel when `per_channel`, else one)
    with the lowest squared quantization error of `w`, out of 100 ratios from 0.01 to 1 (geometric)."""
    lo, hi = _ranges(w, per_channel)
    w = w.detach()
    best_err: torch.Tensor | None = None
    best = torch.ones_like(lo)
    for r in torch.logspace(-2, 0, 100):
        s, z = qparams(lo * r, hi * r, bits, symmetric)
        err = (quantize_dequantize(w, s, z, bits, symmetric, per_channel) - w).reshape(len(lo), -1).pow(2).sum(1)
        if best_err is None:
            best_err, best = err, torch.full_like(lo, float(r))
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, r.to(lo.dtype), best)
    return best


class _STEQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, zero, bits, symmetric, per_channel):
        qmin, qmax = _levels(bits, symmetric)
        s, z = _shape(scale, w, per_channel), _shape(zero, w, per_channel)
        q = torch.round(w / s) + z
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None, None, None


def fake_quantize(w: torch.Tensor, bits: int = 8, symmetric: bool = True, per_channel: bool = False,
                  observer: Observer = "minmax") -> torch.Tensor:
    """Quantize-dequantize `w` with a straight-through gradient (clipped values get none)."""
    scale, zero = calibrate(w, bits, symmetric, per_channel, observer)
    return _STEQuant.apply(w, scale, zero, bits, symmetric, per_channel)


def quantize_(model: nn.Module, bits: int = 8, symmetric: bool = True, per_channel: bool = True,
              observer: Observer = "mse", filter_fn: FilterFn | None = None) -> dict[str, dict[str, Any]]:
    """Post-training quantization in place: each selected weight becomes its dequantized b-bit value.

    Returns per-layer `{"bits", "scale_mean", "mse"}`.
    """
    _check(bits, observer)
    select = filter_fn or _default_filter
    plan = [(n, m) for n, m in model.named_modules() if select(m, n)]
    if not plan:
        raise NetcompressError("quantize_: no layer selected")
    new, info = [], {}
    for name, m in plan:
        w = m.weight.detach()
        s, z = calibrate(w, bits, symmetric, per_channel, observer)
        q = quantize_dequantize(w, s, z, bits, symmetric, per_channel)
        new.append((m, q))
        info[name] = {"bits": bits, "scale_mean": float(s.mean()), "mse": float((q - w).pow(2).mean())}
    with torch.no_grad():
        for m, q in new:
            m.weight.copy_(q)
    return info


class WeightSwap(Method):
    """Train float shadow weights while the forward pass sees transformed (quantized) weights.

    Before a forward pass the selected layers' float weights are saved and replaced by
    `transform(w)`; after `backward` the float weights come back and the optimizer updates them
    with the gradient computed at the transformed weights (the straight-through estimator, as in
    BinaryConnect, Courbariaux et al. 2015, Algorithm 1). `finalize` leaves the transformed weights.
    """

    name = "weight-swap"

    def __init__(self, filter_fn: FilterFn | None = None) -> None:
        self.filter_fn = filter_fn or _default_filter
        self._handles: list[Any] = []
        self._shadow: dict[nn.Module, torch.Tensor] = {}
        self._mods: list[nn.Module] = []

    def transform(self, module: nn.Module, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grad_mask(self, module: nn.Module, w: torch.Tensor) -> torch.Tensor | None:
        """Where the straight-through gradient passes (None: everywhere)."""
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        self.remove()
        self._mods = [m for n, m in model.named_modules() if self.filter_fn(m, n)]
        if not self._mods:
            raise NetcompressError(f"{self.name}: no layer selected")
        for m in self._mods:
            self._handles.append(m.register_forward_pre_hook(self._pre_hook))
        return model

    @torch.no_grad()
    def _pre_hook(self, module: nn.Module, inputs: Any) -> None:
        if module in self._shadow:
            return
        w = module.weight
        self._shadow[module] = w.detach().clone()
        w.copy_(self.transform(module, w.detach()))

    @torch.no_grad()
    def _restore(self) -> None:
        for m, w in self._shadow.items():
            m.weight.copy_(w)
        self._shadow.clear()

    def after_backward(self, model: nn.Module) -> None:
        shadow = dict(self._shadow)
        self._restore()
        for m, w in shadow.items():
            mask = self.grad_mask(m, w)
            if mask is not None and m.weight.grad is not None:
                m.weight.grad.mul_(mask)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self._restore()  # the checkpoint written next holds the float shadow weights

    def remove(self) -> None:
        self._restore()
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        self.remove()
        for m in self._mods:
            m.weight.copy_(self.transform(m, m.weight.detach()))
        return model


class UniformQAT(WeightSwap):
    """Quantization-aware training of b-bit weights with the straight-through estimator.

    Ranges follow the shadow weights at every forward pass: min/max and percentile are recomputed
    each time; 'mse' (the default, as for post-training quantization) keeps, per layer, the clipping
    ratio of the min/max range that `mse_ratio` chose at the start of the epoch, and applies it to
    the current min/max (searching 100 ratios at every step would cost more than the step).
    `finalize(model)` writes the dequantized b-bit weights with a fresh calibration (Jacob et al. 2018).
    """

    name = "uniform-qat"

    def __init__(self, bits: int = 4, symmetric: bool = True, per_channel: bool = True,
                 observer: Observer = "mse", filter_fn: FilterFn | None = None) -> None:
        _check(bits, observer)
        super().__init__(filter_fn)
        self.bits, self.symmetric, self.per_channel, self.observer = bits, symmetric, per_channel, observer
        self._ratio: dict[nn.Module, torch.Tensor] = {}

    def transform(self, module: nn.Module, w: torch.Tensor) -> torch.Tensor:
        if self.observer != "mse":
            s, z = calibrate(w, self.bits, self.symmetric, self.per_channel, self.observer)
        else:
            r = self._ratio.get(module)
            if r is None:
                r = self._ratio[module] = mse_ratio(w, self.bits, self.symmetric, self.per_channel)
            lo, hi = _ranges(w, self.per_channel)
            s, z = qparams(lo * r, hi * r, self.bits, self.symmetric)
        return quantize_dequantize(w, s, z, self.bits, self.symmetric, self.per_channel)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        super().on_epoch_end(model, epoch)
        self._ratio.clear()  # chosen again from the weights the next epoch starts with (as after a resume)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        self._ratio.clear()
        return super().finalize(model)
