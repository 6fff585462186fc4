"""Layer-by-layer calibration for one-shot compressors (Wanda, SparseGPT, GPTQ).

`sequential_(model, inputs, kind, apply)` visits the model's blocks in order (the biggest
`nn.ModuleList` of blocks holding Linear layers: `blocks`, `layers`, `h`; the whole model when
there is none). For each block it runs the calibration inputs through the model as it is NOW (the
earlier blocks already compressed, as in SparseGPT's sequential mode), collects for each of the
block's Linear layers a statistic of its inputs, and calls `apply(name, linear, stat)`:

* ``kind="sqnorm"``: the per-input-feature sum of squares over all N tokens, ||X_j||_2^2 (Wanda).
* ``kind="hessian"``: H = 2 X X^T / N (d_in x d_in), the Hessian of ||W X - W' X||^2 (OBS, GPTQ).
* ``kind="awq"``: (H, the per-input-feature mean |X_j| over the N tokens) (AWQ).

With ``sequential="layer"`` (the default of the compressors; GPTQ's and SparseGPT's reference code
call it "true sequential") a block's Linears are visited in groups: the layers that read the same
input tensor (q, k, v; gate and up) form one group, groups in the order the forward pass reaches
them, and each group is calibrated on the block as it is after the earlier groups were compressed,
so o_proj sees the compressed attention and down_proj the compressed MLP. The groups are found by
one traced pass, not by names, so any block layout works.

Each pass stops right after the last layer it calibrates, so block i costs i+1 block evaluations
("block" mode). In "layer" mode the block's inputs (args and keyword args, captured by one such
pass) are replayed through the block alone for each group; a block called with something that a
second call could change (a cache object) is reached by full passes instead. On any error every
visited weight is restored (the transform is atomic).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from netcompress.core.batch import Batch, batch_len, call, check_batch, head, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.layers import read_by_ancestor
from netcompress.core.modes import eval_mode

Kind = Literal["sqnorm", "hessian", "awq"]


def calibration_inputs(calibration: Any, n: int = 64) -> list[Batch]:
    """Up to `n` calibration samples as a list of input batches (tensors, or the dicts of named
    tensors a Hugging Face model takes).

    `calibration` is a DataBundle (its fixed first training samples), a tensor of inputs, or an
    iterable of input batches or (inputs, targets) pairs.
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
        if not isinstance(x, (torch.Tensor, Mapping)):
            raise NetcompressError(f"calibration: expected tensors or (inputs, targets) batches, got {type(x).__name__}")
        check_batch(x, "calibration")
        x = head(x, n - seen)
        out.append(x)
        seen += batch_len(x)
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
    """[(block, {qualified name: Linear})] for every block, in order; `ignore` lists names left alone,
    and so is a Linear whose weight a forward reads instead of calling the layer (BEiT's
    ``F.linear(x, self.qkv.weight, qkv_bias)``): its inputs cannot be observed."""
    ignore = set(ignore)
    out = []
    for bname, block in find_blocks(model):
        lin = {}
        for n, m in block.named_modules():
            q = ".".join(p for p in (bname, n) if p)
            if isinstance(m, nn.Linear) and q not in ignore and read_by_ancestor(model, q) is None:
                lin[q] = m
        if lin:
            out.append((block, lin))
    if not out:
        raise NetcompressError(f"{type(model).__name__}: no Linear layer to calibrate")
    return out


def _collector(kind: Kind, stats: dict[str, list], name: str) -> Callable:
    def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
        s = stats.setdefault(name, [None, 0, None])
        add = (x * x).sum(0) if kind == "sqnorm" else x.t() @ x
        s[0] = add if s[0] is None else s[0] + add
        s[1] += x.shape[0]
        if kind == "awq":
            a = x.abs().sum(0)
            s[2] = a if s[2] is None else s[2] + a

    return hook


def _finish(kind: Kind, s: list) -> Any:
    total, n, absum = s
    if kind == "awq":
        return 2.0 * total / n, absum / n
    return total if kind == "sqnorm" else 2.0 * total / n


class _Stop(Exception):
    pass


def _stop_after(module: nn.Module):
    def stop(*_: Any) -> None:
        raise _Stop

    return module.register_forward_hook(stop)


def _run_until(model: nn.Module, x: Batch, dev: torch.device) -> None:
    try:
        call(model, to_device(x, dev))
    except _Stop:
        pass


def _replayable(value: Any) -> bool:
    """Whether a block argument can be passed again: tensors, plain values and tuples / lists of
    them (not a cache object that a call would change, like a Hugging Face DynamicCache)."""
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_replayable(v) for v in value)
    return False


def _fresh(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    return value


def capture_block_inputs(model: nn.Module, block: nn.Module, inputs: list[Batch]) -> list[tuple] | None:
    """The (args, kwargs) `block` is called with for each calibration input (one pass of the model
    up to the block), or None when one of them cannot be replayed (see `_replayable`)."""
    dev = next(model.parameters()).device
    seen: list[tuple] = []

    def grab(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))
        raise _Stop

    h = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for x in inputs:
            _run_until(model, x, dev)
    finally:
        h.remove()
    if len(seen) != len(inputs) or not all(_replayable(a) and _replayable(list(k.values())) for a, k in seen):
        return None
    return seen


def _call_block(block: nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        block(*_fresh(args), **{k: _fresh(v) for k, v in kwargs.items()})  # fresh: an in-place op cannot alter the capture
    except _Stop:
        pass


def input_groups(model: nn.Module, block: nn.Module, lin: dict[str, nn.Linear],
                 x: Batch, replay: tuple | None = None) -> list[dict[str, nn.Linear]]:
    """`lin` split into groups of layers that read the same input tensor, in the order the forward
    pass reaches them (one traced pass of `x` up to the end of `block`, or of `block` alone on a
    captured ``(args, kwargs)``)."""
    dev = next(model.parameters()).device
    first: dict[str, tuple[int, int]] = {}  # name -> (call index, group key)
    keys: dict[tuple, int] = {}
    held: list[torch.Tensor] = []  # kept alive, so no later input can reuse a traced input's memory

    def tracer(name: str) -> Callable:
        def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
            if name not in first:
                t = inp[0]
                held.append(t)
                key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
                first[name] = (len(first), keys.setdefault(key, len(keys)))

        return hook

    hooks = [m.register_forward_hook(tracer(n)) for n, m in lin.items()]
    hooks.append(_stop_after(block))
    try:
        if replay is not None:
            _call_block(block, *replay)
        else:
            _run_until(model, x, dev)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in lin if n not in first]
    if missing:
        raise NetcompressError(f"calibration: layer {missing[0]!r} was not called by the forward pass")
    groups: dict[int, dict[str, nn.Linear]] = {}
    for n in sorted(lin, key=lambda n: first[n][0]):
        groups.setdefault(first[n][1], {})[n] = lin[n]
    return [groups[k] for k in sorted(groups, key=lambda k: min(first[n][0] for n in groups[k]))]


@torch.no_grad()
def sequential_(model: nn.Module, inputs: list[Batch], kind: Kind,
                apply: Callable[[str, nn.Linear, Any], None], ignore: Iterable[str] = (),
                sequential: bool | Literal["block", "layer"] = True) -> list[str]:
    """Calibrate and transform every block's Linear layers in order; returns the names visited.

    Args:
        sequential: True or "layer": groups of layers sharing an input, each calibrated on the
            model with every earlier group already transformed; "block": a block's layers all
            calibrated from one pass after the earlier blocks were transformed; False: every
            statistic from the unchanged model (one pass). On gpt-tiny (seeds 0-1) "layer" vs
            "block" changed GPTQ's int4 perplexity increase from 0.33 / 0.60 to 0.28 / 0.46 of
            RTN's and SparseGPT's 50 % increase from 0.39 / 0.36 to 0.38 / 0.35 of magnitude's.
    """
    if sequential not in (True, False, "block", "layer"):
        raise NetcompressError(f"calibration: sequential must be 'layer', 'block' or False, got {sequential!r}")
    groups = block_linears(model, ignore)
    backup = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
              for _, lin in groups for n, m in lin.items()}
    dev = next(model.parameters()).device
    done: list[str] = []

    def collect(lin: dict[str, nn.Linear], last: nn.Module, block: nn.Module | None = None,
                captured: list[tuple] | None = None) -> dict[str, list]:
        """Statistics of `lin`'s inputs over every calibration input; each pass stops after `last`
        (the last layer of the group, or the block). With `captured`, only `block` runs, on its
        captured inputs."""
        stats: dict[str, list] = {}
        hooks = [m.register_forward_hook(_collector(kind, stats, n)) for n, m in lin.items()]
        hooks.append(_stop_after(last))
        try:
            if captured is not None:
                for args, kwargs in captured:
                    _call_block(block, args, kwargs)
            else:
                for x in inputs:
                    _run_until(model, x, dev)
        finally:
            for h in hooks:
                h.remove()
        return stats

    def transform(lin: dict[str, nn.Linear], stats: dict[str, list]) -> None:
        for n, m in lin.items():
            if n not in stats:
                raise NetcompressError(f"calibration: layer {n!r} was not called by the forward pass")
            apply(n, m, _finish(kind, stats[n]))
            done.append(n)

    with eval_mode(model):
        try:
            if sequential is False:
                every = {n: m for _, lin in groups for n, m in lin.items()}
                transform(every, collect(every, groups[-1][0]))
            elif sequential == "block":
                for block, lin in groups:
                    transform(lin, collect(lin, block))
            else:
                for block, lin in groups:
                    # the block's inputs are fixed by now (earlier blocks are done): capture them once and
                    # run only the block for each group, unless an argument cannot be passed twice
                    cap = capture_block_inputs(model, block, inputs)
                    for part in input_groups(model, block, lin, inputs[0], cap[0] if cap else None):
                        transform(part, collect(part, list(part.values())[-1], block, cap))
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
