"""One-shot unstructured pruning of transformers, calibrated layer by layer: magnitude, Wanda, SparseGPT.

* magnitude: drop the smallest |W_ij| of each layer (Han et al. 2015), no data.
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  score S_ij = |W_ij| * ||X_j||_2, where X_j is input feature j over all calibration tokens;
  weights are compared within each output row; no weight update.
* SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
  in One-Shot"): with H = 2 X X^T (+ damping), columns are visited left to right; the mask of each
  block of columns (`mask_block_for`: the paper's 128 on LLM widths, in_features // 32 on narrow
  layers) is chosen by w^2 / [H^-1]_jj^2, and every pruned weight's error is spread over
  the not-yet-visited weights of its row with the OBS update
  dW = -(w_j / [H^-1]_jj) [H^-1]_j,: (the upper Cholesky factor of H^-1 does it row by row).

`pattern="N:M"` keeps N of every M consecutive input weights of each row (2:4 is the pattern of
NVIDIA's sparse tensor cores). Only Linear layers inside the blocks are pruned (embeddings, the
LM / classifier head and the patch embedding stay dense, as in both papers). Masks are kept as
`weight_mask` buffers (see `netcompress.prune.unstructured`), so `MaskMethod` can fine-tune them.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layerwise import calibration_inputs, damped_hessian_inverse, obs_sweep_, sequential_
from netcompress.prune.unstructured import MASK

Criterion = Literal["magnitude", "wanda", "sparsegpt"]


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep N of every M; None -> None (unstructured)."""
    if pattern is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise NetcompressError(f"pattern must be 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}")
    return int(m.group(1)), int(m.group(2))


def _check(sparsity: float, nm: tuple[int, int] | None, cols: int, name: str) -> None:
    if nm is None and not 0 <= sparsity < 1:
        raise NetcompressError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if nm is not None and cols % nm[1]:
        raise NetcompressError(f"layer {name!r}: {cols} input features are not a multiple of M={nm[1]}")


def _drop_lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask removing the `k` lowest scores of the whole tensor (ties: the earlier ones)."""
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    keep[torch.argsort(score.flatten(), stable=True)[:k]] = False
    return keep.view_as(score)


def mask_from_scores(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                     per_row: bool = True) -> torch.Tensor:
    """Keep-mask removing the lowest scores: `sparsity` of each row (or of the whole matrix), or
    M-N of every M consecutive entries of a row for `nm = (N, M)`."""
    rows, cols = score.shape
    if nm is not None:
        n, m = nm
        g = score.reshape(rows, cols // m, m)
        drop = torch.topk(g, m - n, dim=-1, largest=False).indices
        keep = torch.ones_like(g, dtype=torch.bool).scatter_(-1, drop, False)
        return keep.reshape(rows, cols)
    if per_row:
        k = int(cols * sparsity)
        keep = torch.ones_like(score, dtype=torch.bool)
        if k:
            keep.scatter_(1, torch.argsort(score, dim=1, stable=True)[:, :k], False)
        return keep
    return _drop_lowest(score, int(score.numel() * sparsity))


def wanda_score(weight: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """Wanda's S_ij = |W_ij| * ||X_j||_2 from the per-feature sum of squares ||X_j||_2^2."""
    return weight.abs().double() * sqnorm.double().clamp_min(0).sqrt().unsqueeze(0)


def mask_block_for(in_features: int) -> int:
    """SparseGPT's default mask-selection block: ``max(1, min(128, in_features // 32))`` columns.

    The paper selects the mask adaptively on blocks of 128 columns of layers 4,096 to 12,288 inputs
    wide, at least 32 blocks per row, so later blocks are chosen from weights the OBS update has
    already changed. On a 128-input layer a 128-column block would leave no adaptivity at all, so
    the block keeps the paper's share of the row instead (4 columns there; 128 on LLM widths).
    On the converged gpt-tiny at 50 % (block-sequential calibration, seeds 0 and 1) 4-column
    instead of 128-column mask blocks lowered SparseGPT's perplexity increase from 0.45 / 0.49 to
    0.39 / 0.37 of magnitude pruning's; B12_transformers_converged_gpt.md has the defaults' figures."""
    return max(1, min(128, in_features // 32))


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5,
                    nm: tuple[int, int] | None = None, blocksize: int = 128, damp: float = 0.01,
                    mask: torch.Tensor | None = None, mask_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: (new weight, keep-mask). A given `mask` (keep=True) is used as it is.

    Args:
        weight: (out, in). hessian: (in, in), H = 2 X X^T / N.
        sparsity / nm: fraction of the layer pruned, or N:M.
        blocksize: columns per lazy batch update (changes nothing but speed).
        damp: lambda = damp * mean(diag H) added to the diagonal (the paper uses 1 %).
        mask_block: columns whose mask is chosen together, by w^2 / [H^-1]_jj^2 over all their
            rows, from the weights as updated so far (default `mask_block_for`). Each block prunes
            its share of the layer's `sparsity` (counts carried over, so the layer's total is
            exact). The lazy blocks are rounded up to whole mask blocks (to whole groups of M
            columns for N:M).
    """
    w, hinv, dead = damped_hessian_inverse(weight, hessian, damp, "sparsegpt")
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(w.device).bool().clone()
    rows = w.shape[0]
    mb = mask_block_for(w.shape[1]) if mask_block is None else int(mask_block)
    if mb < 1:
        raise NetcompressError(f"sparsegpt: mask_block must be >= 1, got {mask_block}")
    unit = nm[1] if nm is not None else 1 if mask is not None else mb
    bs = -(-blocksize // unit) * unit  # whole mask blocks (or N:M groups) in a lazy block: each sees its updated weights
    pruned = 0  # weights removed so far by mask selection

    def step(i1: int, i: int, w1: torch.Tensor, hinv1: torch.Tensor) -> torch.Tensor:
        nonlocal pruned
        if mask is None and nm is None and i % mb == 0:  # the next columns' mask, from their weights as updated so far
            j = slice(i, min(i + mb, w1.shape[1]))
            d = torch.diag(hinv1)[j]
            k = int(round((i1 + j.stop) * rows * sparsity)) - pruned
            keep[:, i1 + j.start:i1 + j.stop] = _drop_lowest(w1[:, j] ** 2 / d.unsqueeze(0) ** 2, k)
            pruned += k
        if mask is None and nm is not None and i % nm[1] == 0:
            j = slice(i, i + nm[1])
            d = torch.diag(hinv1)[j]
            keep[:, i1 + i:i1 + i + nm[1]] = mask_from_scores(w1[:, j] ** 2 / d.unsqueeze(0) ** 2, 0.0, nm)
        return w1[:, i] * keep[:, i1 + i]

    obs_sweep_(w, hinv, bs, step)
    keep &= ~dead.unsqueeze(0)
    return (w * keep).to(weight.dtype), keep


@torch.no_grad()
def prune_(model: nn.Module, criterion: Criterion = "wanda", calibration: Any = None, sparsity: float = 0.5,
           pattern: str | None = None, samples: int = 64, blocksize: int = 128, damp: float = 0.01,
           sequential: bool | Literal["block", "layer"] = True, ignore: Iterable[str] = (),
           mask_block: int | None = None) -> dict[str, float]:
    """Prune the Linear layers of a transformer's blocks in place; returns {layer: sparsity}.

    Args:
        model: changed in place (weights zeroed, `weight_mask` buffers added); unchanged on error.
        criterion: 'magnitude' (per layer), 'wanda' (per output row) or 'sparsegpt' (OBS update).
        calibration: a DataBundle (its first training samples), a tensor or batches; not needed
            for magnitude.
        sparsity: fraction of zeros per layer (ignored when `pattern` is given).
        pattern: 'N:M' semi-structured sparsity, e.g. '2:4'.
        samples: calibration samples (sequences or images).
        sequential: True or "layer": each group of layers sharing an input (q/k/v, o, gate/up,
            down) is calibrated on the model with every earlier group already pruned; "block":
            block i on the output of the already pruned blocks 0..i-1; False: one pass over the
            unchanged model (see `netcompress.core.layerwise.sequential_`).
        blocksize, damp, mask_block: SparseGPT's lazy-update width, damping and mask-selection
            block (see `sparsegpt_prune`).

    Example:
        prune_(model, "wanda", data, sparsity=0.5)
        prune_(model, "sparsegpt", data, pattern="2:4")
    """
    if criterion not in ("magnitude", "wanda", "sparsegpt"):
        raise NetcompressError(f"criterion must be magnitude, wanda or sparsegpt, got {criterion!r}")
    nm = parse_pattern(pattern)
    _check(sparsity, nm, 0 if nm is None else nm[1], "")
    masks: dict[str, torch.Tensor] = {}

    def apply(name: str, m: nn.Linear, stat: torch.Tensor | None) -> None:
        _check(sparsity, nm, m.in_features, name)
        if criterion == "sparsegpt":
            w, keep = sparsegpt_prune(m.weight, stat, sparsity, nm, blocksize, damp, mask_block=mask_block)
            m.weight.copy_(w)
        else:
            score = wanda_score(m.weight, stat) if criterion == "wanda" else m.weight.abs()
            keep = mask_from_scores(score, sparsity, nm, per_row=criterion == "wanda")
            m.weight.mul_(keep.to(m.weight.dtype))
        masks[name] = keep

    if criterion == "magnitude":
        from netcompress.core.layerwise import block_linears

        for _, lin in block_linears(model, ignore):
            for n, m in lin.items():
                apply(n, m, None)
    else:
        if calibration is None:
            raise NetcompressError(f"{criterion} needs calibration data (a DataBundle or input batches)")
        inputs = calibration_inputs(calibration, samples)
        sequential_(model, inputs, "sqnorm" if criterion == "wanda" else "hessian", apply, ignore, sequential)
    mods = dict(model.named_modules())
    out = {}
    for n, keep in masks.items():
        m = mods[n]
        buf = keep.to(device=m.weight.device, dtype=torch.uint8)
        if isinstance(getattr(m, MASK, None), torch.Tensor):
            setattr(m, MASK, buf & getattr(m, MASK).to(torch.uint8))
        else:
            m.register_buffer(MASK, buf)
        m.weight.mul_(getattr(m, MASK).to(m.weight.dtype))
        out[n] = 1.0 - float(getattr(m, MASK).float().mean())
    return out


def magnitude_(model: nn.Module, sparsity: float = 0.5, pattern: str | None = None, **kw: Any) -> dict[str, float]:
    """Magnitude pruning of the block Linears (per layer; per row groups for N:M)."""
    return prune_(model, "magnitude", None, sparsity, pattern, **kw)


def wanda_(model: nn.Module, calibration: Any, sparsity: float = 0.5, pattern: str | None = None, **kw: Any) -> dict[str, float]:
    """Wanda (Sun et al. 2023): |W| * ||X||_2 per output row, no update. See `prune_`."""
    return prune_(model, "wanda", calibration, sparsity, pattern, **kw)


def sparsegpt_(model: nn.Module, calibration: Any, sparsity: float = 0.5, pattern: str | None = None, **kw: Any) -> dict[str, float]:
    """SparseGPT (Frantar & Alistarh 2023): OBS-updated one-shot pruning. See `prune_`."""
    return prune_(model, "sparsegpt", calibration, sparsity, pattern, **kw)
