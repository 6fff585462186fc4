"""Low-rank factorisation of Linear and Conv2d layers by truncated SVD.

* Linear (Denton et al. 2014, "Exploiting Linear Structure Within Convolutional Networks"): W (M x N)
  ~ U_K S_K V_K^T becomes ``nn.Sequential(Linear(N, K, bias=False), Linear(K, M))``. Hugging Face's
  ``Conv1D`` (GPT-2's projections: a Linear storing its weight transposed) is factorised the same way.
  A Linear whose weight is shared with another module (an LM head tied to the embedding) is left out
  by default: factorising it would add parameters, not remove them.
* Conv2d, ``conv="spatial"`` (Jaderberg, Vedaldi & Zisserman 2014, "Speeding up Convolutional Neural
  Networks with Low Rank Expansions", scheme 2): the kernel reshaped to a (N kh) x (M kw) matrix is
  truncated to rank K and becomes a kh x 1 conv (N -> K) then a 1 x kw conv (K -> M). We compute the
  SVD closed form of the weight-reconstruction problem; the paper's "filter reconstruction" optimises
  the same objective iteratively, its "data reconstruction" variant is not implemented.
* Conv2d, ``conv="channel"`` (Zhang, Zou, He & Sun 2016, "Accelerating Very Deep Convolutional
  Networks for Classification and Detection", without their nonlinear response reconstruction): the
  kernel as an M x (N kh kw) matrix becomes a kh x kw conv (N -> K) then a 1 x 1 conv (K -> M).

Ranks: explicit (``rank=``), by kept singular-value energy (``energy=``), or by a global parameter /
MAC ``budget=`` allocated across layers greedily with Zhang et al.'s objective (maximise the product
over layers of the kept energy fractions).
"""
from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layers import is_linear as _is_linear, linear_weight as _linear_weight, read_by_ancestor
from netcompress.design.costs import break_even_rank, conv_output_hw, input_sizes

FilterFn = Callable[[nn.Module, str], bool]
ConvMethod = Literal["spatial", "channel"]


@dataclass
class RankChoice:
    """The plan for one layer: its matrix shape (m x n), singular values and chosen rank.

    `rank` is None when the layer stays dense (its energy / budget rank is not below break-even).
    """

    name: str
    kind: str  # "linear" | "conv-spatial" | "conv-channel"
    m: int
    n: int
    singular_values: torch.Tensor
    rank: int | None = None
    unit_params: int = 0  # parameters per unit of rank
    unit_macs: int = 0  # MACs per unit of rank (batch 1)
    dense_params: int = 0  # weights of the dense layer (bias excluded: it is kept as is)
    dense_macs: int = 0

    @property
    def break_even(self) -> float:
        return break_even_rank(self.m, self.n)

    def energy(self, k: int) -> float:
        s2 = self.singular_values.double() ** 2
        return float(s2[:k].sum() / s2.sum()) if s2.sum() > 0 else 1.0


def _conv_pad(conv: nn.Conv2d) -> tuple[int, int] | None:
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    eff = [conv.dilation[i] * (conv.kernel_size[i] - 1) for i in range(2)]
    if all(e % 2 == 0 for e in eff):  # 'same' with symmetric padding
        return (eff[0] // 2, eff[1] // 2)
    return None


def default_filter(module: nn.Module, name: str) -> bool:
    """Linear layers (Hugging Face Conv1D included) and ungrouped Conv2d layers."""
    return _is_linear(module) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def default_layers(model: nn.Module) -> list[str]:
    """The layers factorised when no filter_fn names them: those of `default_filter` (convs with
    symmetric zero padding) that share no weight with another layer (tied embeddings) and whose
    attributes no forward code reads (`read_by_ancestor`: XCiT's positional projection, Hugging
    Face ViT's patch projection)."""
    counts: dict[int, int] = {}
    for _, prm in model.named_parameters(remove_duplicate=False):
        counts[id(prm)] = counts.get(id(prm), 0) + 1
    return [n for n, m in model.named_modules()
            if n and default_filter(m, n) and counts.get(id(m.weight), 0) <= 1
            and (not isinstance(m, nn.Conv2d) or (m.padding_mode == "zeros" and _conv_pad(m) is not None))
            and read_by_ancestor(model, n) is None]


def _matrix(module: nn.Module, conv: ConvMethod) -> tuple[str, torch.Tensor]:
    if _is_linear(module):
        return "linear", _linear_weight(module).detach().double()
    w = module.weight.detach().double()
    o, c, kh, kw = w.shape
    if conv == "spatial" and kh > 1 and kw > 1:
        return "conv-spatial", w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)  # (N kh) x (M kw)
    return "conv-channel", w.reshape(o, c * kh * kw)


def _check_layer(name: str, module: nn.Module) -> None:
    if _is_linear(module):
        return
    if not isinstance(module, nn.Conv2d):
        raise NetcompressError(f"lowrank: layer {name!r} is a {type(module).__name__}; only Linear and Conv2d "
                               "can be factorised (check filter_fn)")
    if module.groups != 1:
        raise NetcompressError(f"lowrank: layer {name!r} is a grouped conv (groups={module.groups}); "
                               "only groups=1 can be factorised")
    if module.padding_mode != "zeros" or _conv_pad(module) is None:
        raise NetcompressError(f"lowrank: layer {name!r} has padding {module.padding!r} / mode "
                               f"{module.padding_mode!r}; only symmetric zero padding is supported")


def plan_lowrank(model: nn.Module, rank: int | Mapping[str, int] | None = None, energy: float | None = None,
                 budget: float | None = None, filter_fn: FilterFn | None = None, *, conv: ConvMethod = "spatial",
                 budget_metric: Literal["params", "macs"] = "params", example_inputs: torch.Tensor | None = None,
                 allow_larger: bool = False) -> list[RankChoice]:
    """Choose a rank for every selected layer without changing `model` (see `lowrank`)."""
    given = [k for k, v in (("rank", rank), ("energy", energy), ("budget", budget)) if v is not None]
    if len(given) != 1:
        raise NetcompressError(f"lowrank: give exactly one of rank, energy, budget (got {', '.join(given) or 'none'})")
    if conv not in ("spatial", "channel"):
        raise NetcompressError(f"lowrank: conv must be 'spatial' or 'channel', not {conv!r}")
    if energy is not None and not 0 < energy <= 1:
        raise NetcompressError(f"lowrank: energy must be in (0, 1], got {energy}")
    if budget is not None and not 0 < budget < 1:
        raise NetcompressError(f"lowrank: budget is the fraction of the model's {budget_metric} to keep, in (0, 1); got {budget}")
    if budget_metric not in ("params", "macs"):
        raise NetcompressError(f"lowrank: budget_metric must be 'params' or 'macs', not {budget_metric!r}")
    auto = set(default_layers(model)) if filter_fn is None else set()
    named = [(n, m) for n, m in model.named_modules()
             if n and (n in auto if filter_fn is None else (_is_linear(m) or isinstance(m, nn.Conv2d)) and filter_fn(m, n))]
    if isinstance(rank, Mapping):
        unknown = sorted(set(rank) - {n for n, _ in model.named_modules()})
        if unknown:
            raise NetcompressError(f"lowrank: rank names unknown layers: {', '.join(unknown)}")
        named = [(n, m) for n, m in model.named_modules() if n in rank]
    if not named:
        raise NetcompressError("lowrank: no layer selected (filter_fn matched no Linear / Conv2d)")
    for n, m in named:
        _check_layer(n, m)
        reader = read_by_ancestor(model, n)
        if reader is not None:
            raise NetcompressError(f"lowrank: layer {n!r} cannot be replaced: the forward code of {reader!r} reads its "
                                   "attributes (e.g. .weight); leave it out (filter_fn; in a recipe, exclude)")

    shapes: dict[str, tuple[int, ...]] = {}
    if any(isinstance(m, nn.Conv2d) for _, m in named) and (budget is not None and budget_metric == "macs"):
        if example_inputs is None:
            raise NetcompressError("lowrank: a MAC budget over conv layers needs example_inputs")
        shapes = input_sizes(model, example_inputs, [n for n, _ in named])

    plans = []
    for n, m in named:
        kind, mat = _matrix(m, conv)
        s = torch.linalg.svdvals(mat).float()
        p = RankChoice(n, kind, mat.shape[0], mat.shape[1], s, dense_params=m.weight.numel())
        if _is_linear(m):
            p.unit_params = p.unit_macs = p.m + p.n
            p.dense_macs = m.weight.numel()
        else:
            o, c, kh, kw = m.weight.shape
            p.unit_params = c * kh + o * kw if kind == "conv-spatial" else c * kh * kw + o
            if n in shapes:
                hin = shapes[n][-2:]
                ho, wo = conv_output_hw(m, hin)
                if kind == "conv-spatial":  # kh x 1 conv keeps the input width (no width padding / stride)
                    wmid = hin[1]
                    p.unit_macs = c * kh * ho * wmid + o * kw * ho * wo
                else:
                    p.unit_macs = (c * kh * kw + o) * ho * wo
                p.dense_macs = m.weight.numel() * ho * wo
        plans.append(p)

    if rank is not None:
        for p in plans:
            k = rank[p.name] if isinstance(rank, Mapping) else rank
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise NetcompressError(f"lowrank: layer {p.name!r}: rank must be a positive integer, got {k!r}")
            if k > min(p.m, p.n):
                raise NetcompressError(f"lowrank: layer {p.name!r}: rank {k} exceeds the matrix rank bound "
                                       f"min({p.m}, {p.n}) = {min(p.m, p.n)}")
            if k >= p.break_even and not allow_larger:
                raise NetcompressError(
                    f"lowrank: layer {p.name!r} ({p.kind}, {p.m} x {p.n}): rank {k} would not make it smaller "
                    f"(needs K < mn/(m+n) = {p.break_even:.1f}); lower the rank or leave the layer out with filter_fn")
            p.rank = k
    elif energy is not None:
        for p in plans:
            s2 = p.singular_values.double() ** 2
            cum = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-300)
            k = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
            k = min(k, len(s2))
            p.rank = k if (k < p.break_even or allow_larger) else None
    else:
        _allocate_budget(model, plans, budget, budget_metric, example_inputs)
    return plans


def _allocate_budget(model: nn.Module, plans: list[RankChoice], budget: float, metric: str,
                     example_inputs: torch.Tensor | None) -> None:
    """Greedy global rank allocation: maximise sum_l log(kept energy_l) under the cost budget."""
    if metric == "params":
        total = sum(p.numel() for p in model.parameters())
        unit = [p.unit_params for p in plans]
        dense = [p.dense_params for p in plans]
    else:
        from netcompress.measure.metrics import count_macs

        if example_inputs is None:
            raise NetcompressError("lowrank: a MAC budget needs example_inputs")
        total = count_macs(model, example_inputs)
        unit = [p.unit_macs for p in plans]
        dense = [p.dense_macs for p in plans]
    fixed = total - sum(dense)
    target = budget * total
    avail = target - fixed
    if avail < sum(unit):
        raise NetcompressError(
            f"lowrank: budget {budget:.3g} of {metric} ({target:,.0f}) is unreachable: the unfactorised part "
            f"costs {fixed:,} and rank 1 everywhere adds {sum(unit):,}")
    ranks = [1] * len(plans)

    def cost(i: int, k: int) -> float:
        return k * unit[i] if k < plans[i].break_even else dense[i]

    def gain(i: int, k: int) -> float:  # log-energy gained by going from rank k to k + 1
        e0, e1 = plans[i].energy(k), plans[i].energy(k + 1)
        return math.log(max(e1, 1e-300)) - math.log(max(e0, 1e-300))

    spent = sum(cost(i, 1) for i in range(len(plans)))
    heap = [(-gain(i, 1) / unit[i], i) for i in range(len(plans)) if len(plans[i].singular_values) > 1]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        k = ranks[i]
        if k >= plans[i].break_even:  # already dense: full quality
            continue
        delta = cost(i, k + 1) - cost(i, k)
        if spent + delta > avail:
            continue  # this layer cannot grow; others with cheaper units still may
        ranks[i], spent = k + 1, spent + delta
        if k + 1 < len(plans[i].singular_values) and k + 1 < plans[i].break_even:
            heapq.heappush(heap, (-gain(i, k + 1) / unit[i], i))
    for p, k in zip(plans, ranks):
        p.rank = k if k < p.break_even else None


@torch.no_grad()
def factorize_linear(layer: nn.Module, rank: int) -> nn.Sequential:
    """Linear(N, M) (or a Hugging Face Conv1D) -> Sequential(Linear(N, K, bias=False), Linear(K, M))
    by truncated SVD."""
    w = _linear_weight(layer).detach().double()
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = s[:rank].sqrt()
    first = nn.Linear(in_f, rank, bias=False)
    second = nn.Linear(rank, out_f, bias=layer.bias is not None)
    dt, dev = layer.weight.dtype, layer.weight.device
    first.weight.copy_((r[:, None] * vh[:rank]).to(dt))
    second.weight.copy_((u[:, :rank] * r[None, :]).to(dt))
    if layer.bias is not None:
        second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).to(dev)


@torch.no_grad()
def factorize_conv(conv: nn.Conv2d, rank: int, method: ConvMethod = "spatial") -> nn.Sequential:
    """Conv2d -> two convs by truncated SVD of its kernel (see the module docstring for `method`)."""
    _check_layer("conv", conv)
    w = conv.weight.detach().double()
    o, c, kh, kw = w.shape
    pad = _conv_pad(conv)
    dt, dev = conv.weight.dtype, conv.weight.device
    has_bias = conv.bias is not None
    if method == "spatial" and kh > 1 and kw > 1:
        u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(c * kh, o * kw), full_matrices=False)
        r = s[:rank].sqrt()
        first = nn.Conv2d(c, rank, (kh, 1), stride=(conv.stride[0], 1), padding=(pad[0], 0),
                          dilation=(conv.dilation[0], 1), bias=False)
        second = nn.Conv2d(rank, o, (1, kw), stride=(1, conv.stride[1]), padding=(0, pad[1]),
                           dilation=(1, conv.dilation[1]), bias=has_bias)
        first.weight.copy_((u[:, :rank] * r[None, :]).T.reshape(rank, c, kh, 1).to(dt))
        second.weight.copy_((r[:, None] * vh[:rank]).reshape(rank, o, kw).permute(1, 0, 2)
                            .reshape(o, rank, 1, kw).to(dt))
    else:
        u, s, vh = torch.linalg.svd(w.reshape(o, c * kh * kw), full_matrices=False)
        r = s[:rank].sqrt()
        first = nn.Conv2d(c, rank, (kh, kw), stride=conv.stride, padding=pad, dilation=conv.dilation, bias=False)
        second = nn.Conv2d(rank, o, 1, bias=has_bias)
        first.weight.copy_((r[:, None] * vh[:rank]).reshape(rank, c, kh, kw).to(dt))
        second.weight.copy_((u[:, :rank] * r[None, :]).reshape(o, rank, 1, 1).to(dt))
    if has_bias:
        second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second).to(dev)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def apply_plan(model: nn.Module, plans: list[RankChoice], conv: ConvMethod = "spatial") -> nn.Module:
    """A deep copy of `model` with every planned layer (rank not None) factorised."""
    new = copy.deepcopy(model)
    mods = dict(new.named_modules())
    for p in plans:
        if p.rank is None:
            continue
        m = mods[p.name]
        rep = factorize_linear(m, p.rank) if _is_linear(m) else factorize_conv(m, p.rank, conv)
        rep.train(m.training)
        _set_module(new, p.name, rep)
    return new


def lowrank(model: nn.Module, rank: int | Mapping[str, int] | None = None, energy: float | None = None,
            budget: float | None = None, filter_fn: FilterFn | None = None, *, conv: ConvMethod = "spatial",
            budget_metric: Literal["params", "macs"] = "params", example_inputs: torch.Tensor | None = None,
            allow_larger: bool = False) -> nn.Module:
    """Factorise Linear and Conv2d layers by truncated SVD; returns a new model (`model` is unchanged).

    Give exactly one of `rank`, `energy`, `budget`.

    Args:
        model: any nn.Module.
        rank: K for every selected layer, or {qualified name: K} (then only those layers). A rank at
            which a layer would not get smaller (K >= mn / (m + n) for its m x n matrix) is refused
            with a `NetcompressError` naming the layer, unless `allow_larger=True` (e.g. full rank,
            which reproduces the layer exactly).
        energy: keep the fewest singular values whose squared sum reaches this fraction of the total;
            layers where that rank would not make them smaller stay dense.
        budget: fraction in (0, 1) of the whole model's parameters (or MACs, `budget_metric="macs"`,
            which needs `example_inputs`) to keep; ranks allocated globally (Zhang et al. 2016).
        filter_fn: `filter_fn(module, name) -> bool` selects layers; default all Linear (and
            Hugging Face Conv1D) and ungrouped Conv2d layers, except those whose weight is tied to
            another module's and those whose attributes the model's forward code reads.
        conv: "spatial" (Jaderberg et al. 2014: kh x 1 then 1 x kw) or "channel" (kh x kw to K
            channels then 1 x 1).

    Example:
        >>> from netcompress.models import create
        >>> m = create("lenet300")
        >>> small = lowrank(m, budget=0.5)
        >>> sum(p.numel() for p in small.parameters()) <= 0.5 * sum(p.numel() for p in m.parameters())
        True

    Raises:
        NetcompressError: bad arguments, an unsupported or too-large layer; `model` is not touched.
    """
    plans = plan_lowrank(model, rank, energy, budget, filter_fn, conv=conv, budget_metric=budget_metric,
                         example_inputs=example_inputs, allow_larger=allow_larger)
    return apply_plan(model, plans, conv)
