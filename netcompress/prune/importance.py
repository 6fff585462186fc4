"""Channel importance criteria: one score per prunable channel of every group (higher = keep).

Each criterion is a function `score(ctx: ScoreContext) -> list[Tensor]` (one vector per group,
aligned with `group.classes`), registered in `CRITERIA`. A channel's filters are the output slices
of every conv / linear (and depthwise conv) in its group; a channel shared by a residual sum thus
scores the filters of all its producers together.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.graph import ChannelGraph, Group, Member, is_conv1d_t, member_slices
from netcompress.core.registry import Registry


@dataclass
class ScoreContext:
    """What a criterion may read: the model, its channel graph, calibration batches, a seed."""

    model: nn.Module
    graph: ChannelGraph
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    seed: int = 0

    def need_batches(self, criterion: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self.batches:
            raise NetcompressError(f"criterion {criterion!r} needs calibration data: pass data= (a dataset or batches)")
        return self.batches


Criterion = Callable[[ScoreContext], list[torch.Tensor]]
CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def calibration_batches(data: Any, n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Turn `data` (a DataBundle, a loader / list of (x, y) batches, or None) into a list of batches."""
    if data is None:
        return None
    if hasattr(data, "calibration"):
        return list(data.calibration(n))
    out, seen = [], 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise NetcompressError("data must be a dataset or an iterable of (inputs, targets) batches")
        out.append((batch[0], batch[1]))
        seen += len(batch[0])
        if seen >= n:
            break
    return out


def _members(g: ChannelGraph, group: Group, kinds: tuple[str, ...]) -> list[Member]:
    want = {(m, k) for m, k in group.members if k in kinds}
    seen, out = set(), []
    for mem in g.members:
        key = (mem.module, mem.kind)
        if key in want and key not in seen:
            seen.add(key)
            out.append(mem)
    return out


def _param(model: nn.Module, mem: Member, name: str = "weight") -> torch.Tensor | None:
    """The member's `name` tensor (its only tensor for kind 'param') with the pruned dim first."""
    for mod_name, pname, dim, _ in member_slices(model, mem):
        if mem.kind == "param" or pname == name:
            t = getattr(model.get_submodule(mod_name), pname, None)
            if isinstance(t, torch.Tensor) and t.dim() > dim:
                return t.detach().movedim(dim, 0).cpu()
    return None


def _per_class(ctx: ScoreContext, group: Group, rowscore: Callable[[torch.Tensor], torch.Tensor],
               kinds: tuple[str, ...] = ("out", "dw", "emb")) -> torch.Tensor:
    """Sum over the group's filter tensors of `rowscore(rows)` at the positions of each channel.
    Groups without filters (only norms / parameters) score their norm / parameter rows."""
    mems = _members(ctx.graph, group, kinds) or _members(ctx.graph, group, ("norm", "param"))
    total = torch.zeros(len(group.classes))
    for mem in mems:
        w = _param(ctx.model, mem)
        if w is None:
            continue
        rows = rowscore(w.reshape(w.shape[0], -1).float())
        total += _scatter(ctx.graph.class_index(mem, group.classes), rows, len(group.classes))
    return total


def _scatter(idx: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Sum `rows` (one value per position) into `n` class totals; positions of other classes (-1) drop."""
    ok = idx >= 0
    return torch.zeros(n, dtype=rows.dtype).index_add_(0, idx[ok], rows[ok])


def l1(ctx: ScoreContext) -> list[torch.Tensor]:
    """Sum of absolute filter weights (Li et al. 2017, 'Pruning Filters for Efficient ConvNets')."""
    return [_per_class(ctx, gr, lambda r: r.abs().sum(1)) for gr in ctx.graph.groups]


def l2(ctx: ScoreContext) -> list[torch.Tensor]:
    """L2 norm of each filter (the squared-norm variant of Li et al. 2017)."""
    return [_per_class(ctx, gr, lambda r: r.pow(2).sum(1).sqrt()) for gr in ctx.graph.groups]


def fpgm(ctx: ScoreContext) -> list[torch.Tensor]:
    """Filter Pruning via Geometric Median (He et al. 2019): a filter's score is its summed distance
    to the other filters of its layer; the filters nearest the geometric median score lowest and are
    the redundant ones."""
    return [_per_class(ctx, gr, lambda r: torch.cdist(r[None], r[None])[0].sum(1)) for gr in ctx.graph.groups]


def slimming(ctx: ScoreContext) -> list[torch.Tensor]:
    """|gamma| of the BatchNorm scales (Liu et al. 2017, Network Slimming); groups without a norm
    layer fall back to L1 of their filters. Train with `SlimmingMethod` first to make gammas sparse."""
    out = []
    for gr in ctx.graph.groups:
        if _members(ctx.graph, gr, ("norm",)):
            out.append(_per_class(ctx, gr, lambda r: r.abs().sum(1), kinds=("norm",)))
        else:
            out.append(_per_class(ctx, gr, lambda r: r.abs().sum(1)))
    return out


def random(ctx: ScoreContext) -> list[torch.Tensor]:
    """Uniform random scores (the control every criterion must beat), seeded."""
    gen = torch.Generator().manual_seed(ctx.seed)
    return [torch.rand(len(gr.classes), generator=gen) for gr in ctx.graph.groups]


def apoz(ctx: ScoreContext) -> list[torch.Tensor]:
    """1 - APoZ (Hu et al. 2016, Network Trimming): the fraction of positive activations after ReLU,
    measured on calibration batches at each channel's norm layer (or its producer's output)."""
    batches = ctx.need_batches("apoz")
    targets: dict[str, Member] = {}
    for gr in ctx.graph.groups:
        mems = _members(ctx.graph, gr, ("norm",)) or _members(ctx.graph, gr, ("out", "dw"))
        for mem in mems:
            targets.setdefault(mem.module, mem)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, mod: nn.Module):
        dim = -1 if isinstance(mod, (nn.Linear, nn.LayerNorm, nn.Embedding, nn.RMSNorm)) or is_conv1d_t(mod) else 1

        def fn(_m, _i, out):
            pos = (out > 0).float().movedim(dim, -1).reshape(-1, out.shape[dim]).sum(0).cpu()
            sums[name] = sums.get(name, 0) + pos
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[dim]
        return fn

    handles = [ctx.model.get_submodule(n).register_forward_hook(hook(n, ctx.model.get_submodule(n))) for n in targets]
    was = ctx.model.training
    ctx.model.eval()
    dev = next(ctx.model.parameters()).device
    try:
        with torch.no_grad():
            for x, _ in batches:
                ctx.model(x.to(dev))
    finally:
        ctx.model.train(was)
        for h in handles:
            h.remove()
    out = []
    for gr in ctx.graph.groups:
        mems = _members(ctx.graph, gr, ("norm",)) or _members(ctx.graph, gr, ("out", "dw"))
        score = torch.zeros(len(gr.classes))
        n = 0
        for mem in mems:
            if mem.module not in sums:
                continue
            frac = sums[mem.module] / counts[mem.module]
            idx = ctx.graph.class_index(mem, gr.classes)
            cnt = _scatter(idx, torch.ones_like(frac), len(gr.classes)).clamp_min(1)
            score += _scatter(idx, frac, len(gr.classes)) / cnt
            n += 1
        out.append(score / max(n, 1))
    return out


def taylor(ctx: ScoreContext) -> list[torch.Tensor]:
    """First-order Taylor importance |w * dL/dw| summed over each filter and the calibration
    batches (Molchanov et al. 2017/2019), with the cross-entropy loss; BN gamma/beta included."""
    batches = ctx.need_batches("taylor")
    model = copy.deepcopy(ctx.model)
    model.eval()  # fixed BN statistics: the importance of the deployed network
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    dev = next(model.parameters()).device
    for x, y in batches:
        x, y = x.to(dev), y.to(dev)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        F.cross_entropy(out, y).backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.grad is not None:
                    acc[n] += (p * p.grad).abs()
    scores = []
    for gr in ctx.graph.groups:
        total = torch.zeros(len(gr.classes))
        for mem in _members(ctx.graph, gr, ("out", "dw", "emb", "norm", "param")):
            for mod_name, pname, dim, _ in member_slices(ctx.model, mem):
                pn = f"{mod_name}.{pname}" if mod_name else pname
                if pn not in acc or acc[pn].dim() <= dim:
                    continue
                t = acc[pn].movedim(dim, 0).cpu()
                rows = t.reshape(t.shape[0], -1).sum(1)
                total += _scatter(ctx.graph.class_index(mem, gr.classes), rows, len(gr.classes))
        scores.append(total)
    return scores


for _name, _fn in [("l1", l1), ("l2", l2), ("fpgm", fpgm), ("slimming", slimming), ("apoz", apoz),
                   ("taylor", taylor), ("random", random)]:
    CRITERIA.register(_name, _fn)

NEEDS_DATA = frozenset({"apoz", "taylor"})


def names() -> Iterable[str]:
    return CRITERIA.list()
