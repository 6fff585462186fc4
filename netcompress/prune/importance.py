"""Channel importance criteria: one score per prunable channel of every group (higher = keep).

Each criterion is a function `score(ctx: ScoreContext) -> list[Tensor]` (one vector per group,
aligned with `group.classes`), registered in `CRITERIA`. A channel's filters are the output slices
of every conv / linear (and depthwise conv) in its group; a channel shared by a residual sum thus
scores the filters of all its producers together. The data-driven criteria (`NEEDS_DATA`: apoz,
taylor, output_norm) read calibration batches (inputs: a tensor, a tuple of tensors or a dict of named
tensors; run in eval mode by `_run`); `output_norm` scores the consumer side instead (what a channel
adds to the outputs of the layers that read it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.batch import Batch, call, first_tensor, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.graph import _CONV, _NORM, ChannelGraph, Group, Member, is_conv1d_t, member_slices, weight_dims
from netcompress.core.modes import eval_mode
from netcompress.core.registry import Registry
from netcompress.train.loop import default_loss


@dataclass
class ScoreContext:
    """What a criterion may read: the model, its channel graph, calibration batches, a seed."""

    model: nn.Module
    graph: ChannelGraph
    batches: list[tuple[Batch, torch.Tensor]] | None = None
    seed: int = 0

    def need_batches(self, criterion: str) -> list[tuple[Batch, torch.Tensor]]:
        if not self.batches:
            raise NetcompressError(f"criterion {criterion!r} needs calibration data: pass data= (a dataset or batches)")
        return self.batches


Criterion = Callable[[ScoreContext], list[torch.Tensor]]
CRITERIA: Registry[Criterion] = Registry("pruning criterion")


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


def _run(model: nn.Module, batches: Iterable[tuple[Batch, Any]],
         step: Callable[[Any, Any], None] | None = None, grad: bool = False) -> None:
    """Run `model` over calibration batches in eval mode (fixed BatchNorm statistics, no dropout),
    restoring its mode afterwards. Each batch's inputs (a tensor, a tuple of tensors or a dict of
    named tensors) go to the model's device and through `call`; `step(output, targets)` then sees
    the raw output (a tensor, a list of exits or a Hugging Face output object) with the targets on
    the same device. Under no_grad unless `grad`; with `grad`, the model is put in training mode
    and back before each batch, which clears what an eval-mode forward caches for the next one
    (timm LeViT's attention biases: cached with their graph, they would be backpropagated twice)."""
    dev = next(model.parameters()).device
    with eval_mode(model):
        for x, y in batches:
            if grad:
                model.train().eval()
            with torch.set_grad_enabled(grad):
                out = call(model, to_device(x, dev))
                if step is not None:
                    step(out, to_device(y, dev))


_CHANNELS_FIRST = (*_CONV, *_NORM, nn.GroupNorm)  # outputs [N, C, ...]; every other member layer is channels-last


def apoz(ctx: ScoreContext) -> list[torch.Tensor]:
    """1 - APoZ (Hu et al. 2016, Network Trimming): the fraction of positive activations after ReLU,
    measured on calibration batches at each channel's norm layer (or its producer's output), over
    every sample and position (tokens of a sequence model, padding included). Batches may be tensors,
    tuples or dicts of named tensors (Hugging Face `input_ids` / `attention_mask`)."""
    batches = ctx.need_batches("apoz")
    targets: dict[str, Member] = {}
    for gr in ctx.graph.groups:
        mems = _members(ctx.graph, gr, ("norm",)) or _members(ctx.graph, gr, ("out", "dw"))
        for mem in mems:
            targets.setdefault(mem.module, mem)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, mod: nn.Module):
        dim = 1 if isinstance(mod, _CHANNELS_FIRST) else -1  # -1: linear, Conv1D, Layer/RMSNorm (and look-alikes)

        def fn(_m, _i, out):
            out = first_tensor(out)
            if out is None:
                return
            pos = (out > 0).float().movedim(dim, -1).reshape(-1, out.shape[dim]).sum(0).cpu()
            sums[name] = sums.get(name, 0) + pos
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[dim]
        return fn

    handles = [ctx.model.get_submodule(n).register_forward_hook(hook(n, ctx.model.get_submodule(n))) for n in targets]
    try:
        _run(ctx.model, batches)
    finally:
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


# where `taylor` reads a channel: the layers that read it (its consumers' input columns), else its
# norm's scale and shift, else its own filters
_TAYLOR_KINDS = (("in", "in_grouped", "param_in"), ("norm",), ("out", "dw", "emb", "param"))


def taylor(ctx: ScoreContext) -> list[torch.Tensor]:
    """First-order Taylor importance (Molchanov et al. 2017, 2019): the loss change of removing a channel.

    Per calibration batch, a channel's first-order change is c = sum(w * dL/dw) over the weights
    that read it (the input columns of every layer that consumes it: zeroing them removes the
    channel, and the sum equals the channel's activation times dL/d(activation), summed over
    samples and positions, the 2017 criterion); its score is the mean of c^2 over the batches (the
    2019 paper's estimate). The sum comes before the square: weights whose contributions cancel do
    not count, unlike a sum of |w * dL/dw| per weight. Behind a ReLU (or max-pool) the consumer form
    equals the 2019 paper's BatchNorm form (gamma dL/dgamma + beta dL/dbeta)^2. Channels no layer
    reads (only norms or a parameter) use their norm's scale and shift, else their own filters.

    L is the task loss `netcompress.train.loop.default_loss`: cross-entropy on the model's logits
    (`logits_of`: a tensor, the last exit of a list, a Hugging Face output's `.logits`), per token
    (mean over every position) for sequence logits (N, T, V) with (N, T) targets. Batches may be
    tensors, tuples or dicts of named tensors. The gradients are taken on a copy of the model in
    eval mode (fixed BN statistics: the importance of the deployed network); the model itself is
    unchanged."""
    batches = ctx.need_batches("taylor")
    model = copy.deepcopy(ctx.model)
    params = dict(model.named_parameters())
    plan: list[list[tuple[str, int, torch.Tensor]]] = []  # per group: (parameter, channel dim, class index)
    for gr in ctx.graph.groups:
        ent: list[tuple[str, int, torch.Tensor]] = []
        seen: set[tuple[str, int]] = set()  # once per tensor: the eager tracer also lists a layer's bias as a 'param'
        for kinds in _TAYLOR_KINDS:
            for mem in _members(ctx.graph, gr, kinds):
                idx = ctx.graph.class_index(mem, gr.classes)
                for mod_name, pname, dim, _ in member_slices(ctx.model, mem):
                    pn = f"{mod_name}.{pname}" if mod_name else pname
                    if pn in params and params[pn].dim() > dim and (pn, dim) not in seen:
                        seen.add((pn, dim))
                        ent.append((pn, dim, idx))
            if ent:
                break
        plan.append(ent)
    scores = [torch.zeros(len(gr.classes), dtype=torch.float64) for gr in ctx.graph.groups]

    def step(out: Any, y: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        default_loss(out, y).backward()
        rows: dict[tuple[str, int], torch.Tensor] = {}
        with torch.no_grad():
            for total, ent in zip(scores, plan):
                change = torch.zeros_like(total)
                for pn, dim, idx in ent:
                    grad = params[pn].grad
                    if grad is None:
                        continue
                    if (pn, dim) not in rows:
                        t = (params[pn] * grad).movedim(dim, 0)
                        rows[(pn, dim)] = t.reshape(t.shape[0], -1).sum(1).double().cpu()
                    change += _scatter(idx, rows[(pn, dim)], len(change))
                total += change.pow(2)

    _run(model, batches, step, grad=True)
    return [(t / len(batches)).float() for t in scores]


_CHUNK = 1 << 22  # elements of one intermediate tensor of per-class contributions (16 MiB in float32)
_CONV_F = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _consumer_weight(mod: nn.Module) -> torch.Tensor | None:
    """The weight of a supported consumer as [out, in, *kernel] (float32), else None: nn.Linear,
    Hugging Face's Conv1D (stored [in, out]) and ungrouped Conv1d / 2d / 3d."""
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(mod, nn.Linear) or is_conv1d_t(mod):
        out_d, in_d = weight_dims(mod)
        return w.detach().permute(out_d, in_d).float() if w.dim() == 2 else None
    if type(mod) in _CONV_F and mod.groups == 1:
        return w.detach().float()
    return None


class _Consumer:
    """Running sums of ||x[P_c] W[:, P_c]^T|| for the classes of one group read by one layer.

    `pos` is [classes, K]: the input positions of each class, padded with index `in` (a zero column
    appended to the input and the weight), so classes of unequal sizes share one batched product.
    The padded weight is gathered at each call, so no copy of the model's weights is kept."""

    def __init__(self, mod: nn.Module, w: torch.Tensor, idx: torch.Tensor) -> None:
        where = torch.nonzero(idx >= 0).flatten()
        order = torch.argsort(idx[where], stable=True)
        where, cls = where[order], idx[where][order]
        present, counts = torch.unique_consecutive(cls, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(cls)) - starts.repeat_interleave(counts)
        pos = torch.full((len(present), int(counts.max())), w.shape[1], dtype=torch.long)
        pos[torch.arange(len(present)).repeat_interleave(counts), rank] = where
        self.mod, self.k, self.n_in = mod, pos.shape[1], w.shape[1]
        self.classes = present
        self.pos = pos.to(w.device)
        self.sums = torch.zeros(len(present), device=w.device)
        if w.dim() == 2 and self.k == 1:  # single positions: ||x_j W[:, j]|| = |x_j| ||W[:, j]||
            self.colnorm = w[:, self.pos[:, 0]].norm(dim=0)

    def _weight(self) -> torch.Tensor:
        """The consumer's weight [out, in + 1, *kernel] with a zero input column at index `in`."""
        w = _consumer_weight(self.mod)
        return torch.cat([w, w.new_zeros(w.shape[0], 1, *w.shape[2:])], 1)

    def add_linear(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.n_in).float()
        c = len(self.pos)
        if self.k == 1:
            step = max(1, _CHUNK // c)
            for t in range(0, x.shape[0], step):
                self.sums += (x[t:t + step, self.pos[:, 0]].abs() * self.colnorm).sum(0)
            return
        x = torch.cat([x, x.new_zeros(x.shape[0], 1)], 1)
        w = self._weight()[:, self.pos].permute(1, 2, 0)  # [classes, K, out]
        step = max(1, _CHUNK // (c * w.shape[-1]))
        for t in range(0, x.shape[0], step):
            y = torch.einsum("tck,cko->tco", x[t:t + step, self.pos], w)
            self.sums += y.norm(dim=-1).sum(0)

    def add_conv(self, x: torch.Tensor, spatial_out: int) -> None:
        mod, conv = self.mod, _CONV_F[type(self.mod)]
        w = self._weight()
        out, c = w.shape[0], len(self.pos)
        # [classes * out, K, *kernel]: one group per class of a grouped convolution
        w = w[:, self.pos].movedim(1, 0).reshape(c * out, self.k, *w.shape[2:])
        x = x.float()
        x = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)
        padding = mod.padding
        if mod.padding_mode != "zeros":
            x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
            padding = 0
        per_class = out * spatial_out
        ns = max(1, min(x.shape[0], _CHUNK // per_class))
        nc = max(1, _CHUNK // (ns * per_class))
        for s in range(0, x.shape[0], ns):
            for c0 in range(0, c, nc):
                c1 = min(c, c0 + nc)
                y = conv(x[s:s + ns, self.pos[c0:c1].flatten()], w[c0 * out:c1 * out], None, mod.stride, padding,
                         mod.dilation, c1 - c0)
                self.sums[c0:c1] += y.reshape(y.shape[0], c1 - c0, out, -1).norm(dim=2).sum((0, 2))


def output_norm(ctx: ScoreContext) -> list[torch.Tensor]:
    """Mean norm of a channel's contribution to its consumers' outputs (a head: its projected output).

    For a consumer linear layer y = x W^T and a channel class c with input positions P_c, the score is
    E ||x[..., P_c] W[:, P_c]^T||_2 over the calibration samples and tokens, summed over the group's
    consumers: for an attention head, the norm of the head's output after the output projection
    (Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing Transformers with Vector Norms";
    the head importance of Michel et al. 2019 measured by its output); for an MLP neuron or a
    residual-stream channel (one position), |x_j| ||W[:, j]||_2 per token. A convolution consumer
    counts each class's exact contribution (a grouped convolution, one group per class) by its norm
    over output channels, averaged over samples and output positions. Supported consumers: nn.Linear,
    Hugging Face's Conv1D and ungrouped Conv1d / 2d / 3d; grouped-conv inputs and parameters used
    directly as weights (e.g. nn.MultiheadAttention's in_proj_weight) are not counted. Groups without
    a supported consumer fall back to L1 of their filters. Inputs are captured with forward hooks on
    the calibration batches (eval mode, no grad; tensors, tuples or dicts such as Hugging Face
    `input_ids`); every position counts, padding tokens included. Memory holds per-class sums only;
    the per-class products are computed in chunks of at most `_CHUNK` elements.

    Example:
        >>> from netcompress.core.graph import ChannelGraph
        >>> m = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.eye(2)), m[1].weight.copy_(torch.tensor([[3.0, -4.0]]))
        >>> x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # hidden = x: (|1|*3 + |2|*3) / 2, (|1|*4 + 0) / 2
        >>> output_norm(ScoreContext(m, ChannelGraph.build(m, x), [(x, torch.zeros(2))]))
        [tensor([4.5000, 2.0000])]
    """
    batches = ctx.need_batches("output_norm")
    model, graph = ctx.model, ctx.graph
    consumers: dict[str, list[tuple[int, _Consumer]]] = {}
    for gi, gr in enumerate(graph.groups):
        for mem in _members(graph, gr, ("in",)):
            mod = model.get_submodule(mem.module)
            w = _consumer_weight(mod)
            if w is None or len(mem.labels) != w.shape[1]:
                continue
            idx = graph.class_index(mem, gr.classes)
            if bool((idx >= 0).any()):
                consumers.setdefault(mem.module, []).append((gi, _Consumer(mod, w, idx)))
    tokens: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else first_tensor(kwargs)
            y = first_tensor(out)
            if x is None or y is None:
                return
            conv = type(mod) in _CONV_F
            for _, c in consumers[name]:
                if conv:
                    c.add_conv(x, y[0, 0].numel())
                else:
                    c.add_linear(x)
            tokens[name] = tokens.get(name, 0) + (y.numel() // y.shape[1] if conv else x.numel() // x.shape[-1])
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in consumers]
    try:
        _run(model, batches)
    finally:
        for h in handles:
            h.remove()
    scores: list[torch.Tensor | None] = [None] * len(graph.groups)
    for name, lst in consumers.items():
        if not tokens.get(name):
            continue  # never called on the calibration data
        for gi, c in lst:
            total = scores[gi] if scores[gi] is not None else torch.zeros(len(graph.groups[gi].classes))
            scores[gi] = total.index_add_(0, c.classes, (c.sums / tokens[name]).cpu())
    return [s if s is not None else _per_class(ctx, gr, lambda r: r.abs().sum(1))
            for s, gr in zip(scores, graph.groups)]


for _name, _fn in [("l1", l1), ("l2", l2), ("fpgm", fpgm), ("slimming", slimming), ("apoz", apoz),
                   ("taylor", taylor), ("output_norm", output_norm), ("random", random)]:
    CRITERIA.register(_name, _fn)

NEEDS_DATA = frozenset({"apoz", "taylor", "output_norm"})


def names() -> Iterable[str]:
    return CRITERIA.list()
