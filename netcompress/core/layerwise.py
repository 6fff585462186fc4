"""Layer-by-layer calibration for one-shot compressors (Wanda, SparseGPT, GPTQ).

`sequential_(model, inputs, kind, apply)` visits the model's blocks in order (the biggest
`nn.ModuleList` of blocks holding Linear layers: `blocks`, `layers`, `h`; the whole model when
there is none). For each block it runs the calibration inputs through the model as it is NOW (the
earlier blocks already compressed, as in SparseGPT's sequential mode), collects for each of the
block's Linear layers a statistic of its inputs, and calls `apply(name, linear, stat)`:

* ``kind="sqnorm"``: the per-input-feature sum of squares over all N tokens, ||X_j||_2^2 (Wanda).
* ``kind="hessian"``: H = 2 X X^T / N (d_in x d_in), the Hessian of ||W X - W' X||^2 (OBS, GPTQ).

The pass stops right after the block being calibrated, so block i costs i+1 block evaluations.
On any error every visited weight is restored (the transform is atomic).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

Kind = Literal["sqnorm", "hessian"]


class _Stop(Exception):
    pass


def calibration_inputs(calibration: Any, n: int = 64) -> list[torch.Tensor]:
    """Up to `n` calibration samples as a list of input batches.

    `calibration` is a DataBundle (its fixed first training samples), a tensor of inputs, or an
    iterable of tensors or (inputs, targets) pairs.
    """
    if hasattr(calibration, "calibration"):
        src: Iterable = calibration.calibration(n)
    elif isinstance(calibration, torch.Tensor):
        src = [calibration[:n]]
    else:
        src = calibration
    out, seen = [], 0
    for b in src:
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor):
            raise NetcompressError(f"calibration: expected tensors or (inputs, targets) batches, got {type(x).__name__}")
        x = x[: n - seen]
        out.append(x)
        seen += len(x)
        if seen >= n:
            break
    if not out:
        raise NetcompressError("calibration: no samples given")
    return out


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of a transformer (the largest ModuleList with Linear layers inside)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and any(isinstance(x, nn.Linear) for b in m for x in b.modules()):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        return [("", model)]
    return [(f"{best[0]}.{i}" if best[0] else str(i), b) for i, b in enumerate(best[1])]


def block_linears(model: nn.Module, ignore: Iterable[str] = ()) -> list[tuple[nn.Module, dict[str, nn.Linear]]]:
    """[(block, {qualified name: Linear})] for every block, in order; `ignore` lists names left alone."""
    ignore = set(ignore)
    out = []
    for bname, block in find_blocks(model):
        lin = {}
        for n, m in block.named_modules():
            q = ".".join(p for p in (bname, n) if p)
            if isinstance(m, nn.Linear) and q not in ignore:
                lin[q] = m
        if lin:
            out.append((block, lin))
    if not out:
        raise NetcompressError(f"{type(model).__name__}: no Linear layer to calibrate")
    return out


def _collector(kind: Kind, stats: dict[str, list], name: str) -> Callable:
    def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
        s = stats.setdefault(name, [None, 0])
        add = (x * x).sum(0) if kind == "sqnorm" else x.t() @ x
        s[0] = add if s[0] is None else s[0] + add
        s[1] += x.shape[0]

    return hook


def _finish(kind: Kind, s: list) -> torch.Tensor:
    total, n = s
    return total if kind == "sqnorm" else 2.0 * total / n


@torch.no_grad()
def sequential_(model: nn.Module, inputs: list[torch.Tensor], kind: Kind,
                apply: Callable[[str, nn.Linear, torch.Tensor], None], ignore: Iterable[str] = (),
                sequential: bool = True) -> list[str]:
    """Calibrate and transform every block's Linear layers in order; returns the names visited.

    With `sequential=False` all statistics come from the unchanged model (one pass).
    """
    groups = block_linears(model, ignore)
    backup = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
              for _, lin in groups for n, m in lin.items()}
    dev = next(model.parameters()).device
    done: list[str] = []

    def collect(targets: list[tuple[nn.Module, dict[str, nn.Linear]]]) -> dict[str, list]:
        stats: dict[str, list] = {}
        hooks = [m.register_forward_hook(_collector(kind, stats, n)) for _, lin in targets for n, m in lin.items()]
        last = targets[-1][0]

        def stop(*_: Any) -> None:
            raise _Stop

        hooks.append(last.register_forward_hook(stop))
        try:
            for x in inputs:
                try:
                    model(x.to(dev))
                except _Stop:
                    pass
        finally:
            for h in hooks:
                h.remove()
        return stats

    with eval_mode(model):
        try:
            plan = [[g] for g in groups] if sequential else [groups]
            for targets in plan:
                stats = collect(targets)
                for _, lin in targets:
                    for n, m in lin.items():
                        if n not in stats:
                            raise NetcompressError(f"calibration: layer {n!r} was not called by the forward pass")
                        apply(n, m, _finish(kind, stats[n]))
                        done.append(n)
        except BaseException:
            for _, lin in groups:
                for n, m in lin.items():
                    w, b = backup[n]
                    m.weight.copy_(w)
                    if b is not None:
                        m.bias.copy_(b)
            raise
    return done


def damped_hessian_inverse(weight: torch.Tensor, hessian: torch.Tensor, damp: float,
                           who: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared start of SparseGPT and GPTQ: (weight in float64 with dead inputs zeroed, the
    upper Cholesky factor of the damped inverse Hessian, the dead-input mask).

    Inputs never seen in calibration (zero diagonal) get H_ii = 1 and a zero weight column;
    lambda = damp * mean(diag H) is added to the diagonal."""
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(cols, dtype=h.dtype, device=h.device) * damp * torch.diag(h).mean()
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise NetcompressError(f"{who}: the calibration Hessian is not positive definite; raise damp") from None
    return w, hinv, dead


def obs_sweep_(w: torch.Tensor, hinv: torch.Tensor, blocksize: int,
               step: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Optimal-brain-surgeon column sweep with lazy block updates (SparseGPT / GPTQ), in place.

    For each block of `blocksize` columns, column i of the block is replaced by
    ``step(i1, i, w1, hinv1)`` (its pruned or quantized value; `w1` is the block as updated so
    far, `hinv1` its part of `hinv`); the error, scaled by the inverse Hessian, is spread over the
    block's remaining columns at once and over later blocks after the block."""
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = step(i1, i, w1, hinv1)
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
