"""Weight-only quantization of transformers: int8 / int4 per group, round-to-nearest, HQQ, GPTQ or AWQ.

Each Linear of the model's blocks gets asymmetric min-max integer codes per group of `group_size`
consecutive input weights of a row (one scale and one zero point per group; groups shorter than
`group_size` when a row is shorter or not a multiple). Activations stay float.

* RTN: round every weight to its group's grid.
* HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models"): no
  calibration data; per group the zero point is fitted to the weights by half-quadratic splitting of
  min_z ||W - Q_z^-1(Q_z(W))||_p^p (p = 0.7 < 1, so a few outlier weights do not pull the grid):
  W_e <- shrink_p(W - W_r, beta), z <- mean(W_q - (W - W_e) / s), beta <- kappa beta, keeping each
  group's best zero point. The scale stays min-max; the zero point is a float (stored fp16, as the
  scale), so codes are q = clamp(round(w / s + z)) and values (q - z) s.
* GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers"): with H = 2 X X^T from calibration inputs (+ 1 % damping), columns are quantized
  left to right and each column's error is compensated on the columns not yet quantized,
  dW = -((w_j - q_j) / [H^-1]_jj) [H^-1]_j,: , using the upper Cholesky factor of H^-1; updates are
  applied lazily per block of columns; a group's scale is taken when its first column is reached
  (from the already updated weights).

* AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
  Acceleration"): the weights of input features with large activations matter more, so each input
  column j is scaled by s_j = mean|X_j|^alpha before RTN and divided by it after, Q(W diag(s))
  diag(s)^-1 (the input is divided by s at run time, or s folded into the layer before); alpha is
  searched on a grid of 20 per layer for the smallest output error on the calibration tokens (as
  torchao's AWQ, which also scales per Linear); then, as the paper, each group's clipping range is
  searched (`clip_search`: the weights clamped to a shrinking fraction of their largest magnitude
  before RTN, the fraction with the smallest output error of the group kept).

`quantize_weights_` leaves the dequantized values in the float weights (so every tool keeps
working on the model) and returns per layer the codes' bit width and the size the packed form takes
(codes at `bits` each plus an fp16 scale and zero point per group, and AWQ's input scales).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layerwise import (block_linears, calibration_inputs, damped_hessian_inverse, obs_sweep_,
                                        sequential_)


def group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max (scale, zero) for each row of `w` (rows x group), zero point an integer."""
    maxq = 2 ** bits - 1
    lo = w.min(1).values.clamp(max=0)
    hi = w.max(1).values.clamp(min=0)
    scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_to(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantized value of round(w / scale) + zero clamped to [0, 2^bits - 1]."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
    # float32 (q - zero) * float32 scale, exactly: a row that is one group is a per-row integer grid
    # that the .ncz archive stores as codes plus one scale
    return ((q - zero).float() * scale.float()).to(w.dtype)


def _groups(cols: int, group_size: int) -> list[tuple[int, int]]:
    g = min(group_size, cols)
    return [(s, min(s + g, cols)) for s in range(0, cols, g)]


def _per_group(weight: torch.Tensor, group_size: int, dequant) -> torch.Tensor:
    """`dequant(group)` (in float64) applied to each group of columns of `weight`, in its dtype."""
    w = weight.detach().double()
    out = torch.empty_like(w)
    for a, b in _groups(w.shape[1], group_size):
        out[:, a:b] = dequant(w[:, a:b])
    return out.to(weight.dtype)


def _rtn_group(g: torch.Tensor, bits: int) -> torch.Tensor:
    """Each row of `g` (rows x group) rounded to its own min-max grid, dequantized."""
    s, z = group_params(g, bits)
    return quantize_to(g, s.unsqueeze(1), z.unsqueeze(1), bits)


def rtn(weight: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Round-to-nearest per group; returns the dequantized weight."""
    return _per_group(weight, group_size, lambda g: _rtn_group(g, bits))


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """HQQ's generalised soft threshold: the minimiser over e of |e|^p + beta/2 (e - x)^2, one
    fixed-point step: sign(x) max(|x| - |x|^(p-1) / beta, 0)."""
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.clamp_min(1e-12).pow(p - 1) / beta)


def _hqq_codes(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int) -> torch.Tensor:
    """HQQ's codes q = clamp(round(w / s + z), 0, 2^bits - 1); the values are (q - z) s."""
    return torch.clamp(torch.round(w / s + z), 0, 2 ** bits - 1)


def hqq_group(w: torch.Tensor, bits: int, iters: int = 20, p: float = 0.7, beta: float = 10.0,
              kappa: float = 1.01) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ's (scale, zero) for each row of `w` (rows x group): min-max scale, zero point fitted by
    half-quadratic splitting; both rounded to fp16, as stored. `iters=0` gives min-max with a float zero."""
    maxq = 2 ** bits - 1

    def minmax(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = ((hi - lo) / maxq).half().double()
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s, -lo / s

    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    s, z = minmax(lo, hi)
    far = z.abs() > 6e4  # a narrow group far from 0: an fp16 zero point could not hold it
    if far.any():  # such groups take RTN's range, which contains 0, so 0 <= z <= maxq
        s0, z0 = minmax(lo.clamp(max=0), hi.clamp(min=0))
        s, z = torch.where(far, s0, s), torch.where(far, z0, z)
    q = _hqq_codes(w, s, z, bits)
    best_z, best = z, ((q - z) * s - w).abs().pow(p).mean(1, keepdim=True)
    for _ in range(iters):
        e = shrink_lp(w - (q - z) * s, beta, p)
        z = (q - (w - e) / s).mean(1, keepdim=True)
        beta *= kappa
        q = _hqq_codes(w, s, z, bits)  # the codes of the new zero point, also the next step's
        cur = ((q - z) * s - w).abs().pow(p).mean(1, keepdim=True)
        better = cur < best
        best = torch.where(better, cur, best)
        best_z = torch.where(better, z, best_z)
    return s.squeeze(1), best_z.half().double().squeeze(1)


def hqq(weight: torch.Tensor, bits: int = 4, group_size: int = 128, iters: int = 20) -> torch.Tensor:
    """HQQ per group (no calibration data); returns the dequantized weight."""
    def dequant(g: torch.Tensor) -> torch.Tensor:
        s, z = (t.unsqueeze(1) for t in hqq_group(g, bits, iters))
        return (_hqq_codes(g, s, z, bits) - z) * s

    return _per_group(weight, group_size, dequant)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
         blocksize: int = 128, damp: float = 0.01) -> torch.Tensor:
    """GPTQ on one layer: the dequantized weight. weight (out, in); hessian (in, in) = 2 X X^T / N."""
    cols = weight.shape[1]
    g = min(group_size, cols)
    bs = max(g, -(-blocksize // g) * g)  # whole groups in a block: a group's scale sees updated weights
    w, hinv, _ = damped_hessian_inverse(weight, hessian, damp, "gptq")
    grid: list[torch.Tensor] = []  # the current group's (scale, zero)

    def step(i1: int, i: int, w1: torch.Tensor, hinv1: torch.Tensor) -> torch.Tensor:
        if (i1 + i) % g == 0:
            grid[:] = group_params(w1[:, i:i + g], bits)
        return quantize_to(w1[:, i], grid[0], grid[1], bits)

    obs_sweep_(w, hinv, bs, step)
    return w.to(weight.dtype)


def clip_search(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128, grid: int = 20,
                max_shrink: float = 0.5) -> torch.Tensor:
    """AWQ's clipping step: per row and group, the weights clamped to [-r m, r m] (m = the group's
    largest |w|, r = 1, 1 - 1/grid, ... down to 1 - max_shrink, exclusive) before min-max RTN, r
    chosen for the smallest output error of that group alone, d H_gg d^T (the paper's per-group
    search, cross-group terms ignored). r = 1 is RTN, so no group's error rises. Returns the
    dequantized weight."""
    w = weight.detach().double()
    h = hessian.double()
    out = torch.empty_like(w)
    for a, b in _groups(w.shape[1], group_size):
        g, hg = w[:, a:b], h[a:b, a:b]
        amax = g.abs().amax(1, keepdim=True)
        best_err = torch.full((w.shape[0],), float("inf"), dtype=w.dtype)
        for i in range(max(1, int(max_shrink * grid))):
            m = amax * (1 - i / grid)
            q = _rtn_group(torch.minimum(torch.maximum(g, -m), m), bits)
            d = q - g
            err = ((d @ hg) * d).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            out[better, a:b] = q[better]
    return out.to(weight.dtype)


def awq(weight: torch.Tensor, hessian: torch.Tensor, act_mean: torch.Tensor, bits: int = 4, group_size: int = 128,
        grid: int = 20, clip: bool = True) -> tuple[torch.Tensor, float]:
    """AWQ on one layer: (the effective dequantized weight Q(W diag(s)) diag(s)^-1, the alpha chosen).

    s = mean|X_j|^alpha per input feature (floored at 1e-4, then divided by sqrt(max s * min s)),
    alpha searched on {0, 1/grid, ..., (grid - 1)/grid} with RTN for the smallest output error on
    the calibration tokens, tr(dW H dW^T) / 2 = mean over tokens of ||dW x||^2 (H = 2 X X^T / N);
    alpha 0 is RTN, so the error is never above RTN's; ties keep the smaller alpha. Then, with
    `clip`, each group's clipping range is searched on the scaled weights (`clip_search`, the input
    scaled by 1/s: H_s = diag(1/s) H diag(1/s)), as the paper does after the scales.
    """
    w = weight.detach().double()
    h = hessian.double()
    a = act_mean.double()
    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    for i in range(grid):
        alpha = i / grid
        sc = a.pow(alpha).clamp_min(1e-4)
        sc = sc / (sc.max() * sc.min()).sqrt()
        q = rtn(w * sc, bits, group_size) / sc
        d = q - w
        err = ((d @ h) * d).sum().item()
        if best is None or err < best[0]:
            best = (err, alpha, sc, q)
    assert best is not None
    _, alpha, sc, q = best
    if clip:
        q = clip_search(w * sc, h / sc.unsqueeze(0) / sc.unsqueeze(1), bits, group_size) / sc
    return q.to(weight.dtype), alpha


CALIBRATED = ("gptq", "awq")  # the methods that need calibration inputs (rtn and hqq need none)


@dataclass(frozen=True)
class LayerInfo:
    bits: int
    group_size: int
    packed_bytes: int


def packed_bytes(weight: torch.Tensor, bits: int, group_size: int, input_scale: bool = False) -> int:
    """Bytes of the packed form: ceil(numel * bits / 8) codes + fp16 scale and zero per group
    (+ one fp16 scale per input feature for AWQ, where the input is divided by s at run time)."""
    rows, cols = weight.shape
    return -(-rows * cols * bits // 8) + rows * len(_groups(cols, group_size)) * 4 + (2 * cols if input_scale else 0)


@torch.no_grad()
def quantize_weights_(model: nn.Module, method: Literal["rtn", "hqq", "gptq", "awq"] = "gptq", bits: int = 4,
                      group_size: int = 128, calibration: Any = None, samples: int = 64, blocksize: int = 128,
                      damp: float = 0.01, sequential: bool | Literal["block", "layer"] = True,
                      ignore: Iterable[str] = (), clip: bool = True) -> dict[str, LayerInfo]:
    """Weight-only quantize the Linear layers of a transformer's blocks in place.

    Args:
        model: changed in place (weights replaced by their dequantized values); unchanged on error.
        method: 'rtn', 'hqq' (no calibration), 'gptq' or 'awq' (need `calibration`: a DataBundle,
            a tensor or batches).
        bits: 2..8 (4 and 8 are the usual int4 / int8 weight-only formats).
        group_size: weights per scale along the input dimension (128 in the GPTQ paper; a row is
            one group when it is shorter).
        sequential: calibrate each group of layers sharing an input on the already quantized
            earlier ones (True or "layer"), each block on the earlier blocks ("block"), or all in
            one pass (False); see `netcompress.core.layerwise.sequential_`.
        clip: awq only: also search each group's clipping range after the scales (the paper's
            second step; False: scales only, as torchao's AWQ).

    Example:
        info = quantize_weights_(model, "gptq", 4, 128, calibration=data)
    """
    if method not in ("rtn", "hqq", "gptq", "awq"):
        raise NetcompressError(f"weight-only method must be rtn, hqq, gptq or awq, got {method!r}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise NetcompressError(f"bits must be an integer in 2..8, got {bits!r}")
    if group_size < 1:
        raise NetcompressError(f"group_size must be >= 1, got {group_size}")
    info: dict[str, LayerInfo] = {}

    def apply(name: str, m: nn.Linear, stat: Any) -> None:
        if method == "gptq":
            new = gptq(m.weight, stat, bits, group_size, blocksize, damp)
        elif method == "awq":
            new, _ = awq(m.weight, stat[0], stat[1], bits, group_size, clip=clip)
        else:
            new = (hqq if method == "hqq" else rtn)(m.weight, bits, group_size)
        m.weight.copy_(new)
        info[name] = LayerInfo(bits, min(group_size, m.in_features),
                               packed_bytes(m.weight, bits, group_size, input_scale=method == "awq"))

    if method not in CALIBRATED:
        groups = block_linears(model, ignore)
        for _, lin in groups:
            for n, m in lin.items():
                apply(n, m, None)
    else:
        if calibration is None:
            raise NetcompressError(f"{method} needs calibration data (a DataBundle or input batches)")
        sequential_(model, calibration_inputs(calibration, samples), "hessian" if method == "gptq" else "awq", apply,
                    ignore, sequential)
    return info


def rtn_(model: nn.Module, bits: int = 4, group_size: int = 128, **kw: Any) -> dict[str, LayerInfo]:
    """Round-to-nearest weight-only quantization per group. See `quantize_weights_`."""
    return quantize_weights_(model, "rtn", bits, group_size, **kw)


def hqq_(model: nn.Module, bits: int = 4, group_size: int = 128, **kw: Any) -> dict[str, LayerInfo]:
    """HQQ (Badri & Shaji 2023) weight-only quantization per group, no calibration. See `quantize_weights_`."""
    return quantize_weights_(model, "hqq", bits, group_size, **kw)


def awq_(model: nn.Module, calibration: Any, bits: int = 4, group_size: int = 128, **kw: Any) -> dict[str, LayerInfo]:
    """AWQ (Lin et al. 2024) weight-only quantization per group, calibrated. See `quantize_weights_`."""
    return quantize_weights_(model, "awq", bits, group_size, calibration=calibration, **kw)


def gptq_(model: nn.Module, calibration: Any, bits: int = 4, group_size: int = 128, **kw: Any) -> dict[str, LayerInfo]:
    """GPTQ (Frantar et al. 2023) weight-only quantization per group. See `quantize_weights_`."""
    return quantize_weights_(model, "gptq", bits, group_size, calibration=calibration, **kw)
