"""Channel dependency graph on torch.fx, for structured pruning and architecture transforms.

Idea (after Torch-Pruning's DepGraph, Fang et al. 2023, built differently): trace the model with
`torch.fx`, then run it once on an example input while propagating, next to every real tensor, a
*label tensor* of the same shape whose entries name the channel each element belongs to. Every
conv / linear output gets fresh labels; data-movement ops (view, flatten, transpose, cat, chunk,
getitem, ...) are executed on the label tensors themselves, so channel shuffles, concatenations at
offsets and flatten-into-linear blocks come out exactly; element-wise ops (residual additions,
squeeze-excitation multiplications, parameters broadcast into activations) *unite* the labels they
combine (union-find). After the pass, each union-find class is one prunable channel: removing it
removes every position carrying one of its labels, in every layer that touches it. Classes reaching
the model input or output, literal sizes, or ignored layers are frozen (never removed).

A `ChannelGraph` lists `Group`s (classes touching the same set of layers), prints them for a dry run,
and `prune(removed)` returns a physically smaller deep copy made of the original module classes.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from netcompress.core.errors import NetcompressError

FROZEN = 0  # the class of channels that may never be removed

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` without its broadcast (stride-0) dimensions' repeats: a view, never a copy."""
    return t[tuple(slice(0, 1) if t.stride(d) == 0 else slice(None) for d in range(t.dim()))]


@dataclass
class Member:
    """One place whose size follows channel classes: `kind` in out (conv/linear filters), in
    (conv/linear inputs), in_grouped (grouped conv inputs, per-group positions), dw (depthwise conv),
    norm (BatchNorm / LayerNorm), param (a parameter used directly in forward)."""

    module: str
    kind: str
    labels: torch.Tensor  # label per position along the pruned dim
    dim: int = 0


@dataclass
class Group:
    """Coupled channels removed together: `classes` are the prunable channels (one id each)."""

    id: int
    classes: list[int]
    members: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        names = ", ".join(f"{m}[{k}]" for m, k in self.members[:8])
        more = f" (+{len(self.members) - 8} more)" if len(self.members) > 8 else ""
        return f"group {self.id}: {len(self.classes)} channels: {names}{more}"


class _UnionFind:
    def __init__(self) -> None:
        self.parent = [FROZEN]

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == FROZEN or (ra != FROZEN and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra  # the frozen class (0) always stays the root

    def union_tensors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        both = tuple(slice(0, 1) if a.stride(d) == 0 and b.stride(d) == 0 else slice(None) for d in range(a.dim()))
        a, b = a[both], b[both]
        if torch.equal(a, b):
            return
        keys = torch.unique((a.reshape(-1) << 32) | b.reshape(-1))
        for x, y in zip((keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist()):
            if x != y:
                self.union(x, y)

    def freeze(self, t: torch.Tensor) -> None:
        for x in torch.unique(_compact(t)).tolist():
            self.union(FROZEN, x)

    def roots(self, t: torch.Tensor) -> torch.Tensor:
        u, inv = torch.unique(t, return_inverse=True)
        return torch.tensor([self.find(x) for x in u.tolist()], dtype=torch.long)[inv]


class ChannelGraph:
    """Coupled-channel groups of a model (see module docstring). Build with `ChannelGraph.build`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uf = _UnionFind()
        self.members: list[Member] = []
        self.groups: list[Group] = []

    @classmethod
    def build(cls, model: nn.Module, example_inputs: torch.Tensor, ignore: Iterable[str] = ()) -> "ChannelGraph":
        """Trace `model` (unchanged) and find its channel groups.

        Args:
            model: a plain nn.Module, traceable by `torch.fx.symbolic_trace`.
            example_inputs: a real input batch (only the first sample is used).
            ignore: qualified module names (or fnmatch patterns, or prefixes) to leave unpruned.

        Example:
            >>> g = ChannelGraph.build(nc.models.create("resnet8"), torch.randn(1, 3, 32, 32))  # doctest: +SKIP
            >>> print(g.describe())                                                          # doctest: +SKIP
        """
        ignore = list(ignore)
        names = {n for n, _ in model.named_modules()}
        for p in ignore:
            if p not in names and not any(fnmatch.fnmatch(n, p) or n.startswith(p + ".") for n in names):
                raise NetcompressError(f"ignore: no module named {p!r} in {type(model).__name__}")
        try:
            gm = fx.symbolic_trace(model)
        except Exception as e:
            raise NetcompressError(f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}); structured pruning needs a traceable "
                                   "forward (no data-dependent control flow)") from None
        from netcompress.core.graph_rules import _LabelInterpreter

        g = cls(model)
        x = example_inputs[:1] if isinstance(example_inputs, torch.Tensor) else example_inputs
        dev = next((p.device for p in model.parameters()), None)
        if dev is not None and isinstance(x, torch.Tensor):
            x = x.to(dev)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                _LabelInterpreter(gm, g, ignore).run(x)
        finally:
            model.train(was)
        g._make_groups()
        return g

    def _make_groups(self) -> None:
        by_class: dict[int, set[tuple[str, str]]] = {}
        for mem in self.members:
            for r in torch.unique(self.uf.roots(mem.labels)).tolist():
                if r != FROZEN:
                    by_class.setdefault(r, set()).add((mem.module, mem.kind))
        by_sig: dict[tuple, list[int]] = {}
        for c, sig in by_class.items():
            by_sig.setdefault(tuple(sorted(sig)), []).append(c)
        order = {m.module: i for i, m in enumerate(self.members)}
        sigs = sorted(by_sig, key=lambda s: min(order[m] for m, _ in s))
        self.groups = [Group(i, sorted(by_sig[s]), sorted(s, key=lambda mk: order[mk[0]])) for i, s in enumerate(sigs)]

    def positions(self, member: Member, classes: Sequence[int]) -> list[torch.Tensor]:
        """For each class, the positions of `member`'s pruned dim that carry it."""
        idx = self.class_index(member, classes)
        return [torch.nonzero(idx == i).flatten() for i in range(len(classes))]

    def class_index(self, member: Member, classes: Sequence[int]) -> torch.Tensor:
        """For each position of `member`'s pruned dim, the index of its class in `classes` (-1: other)."""
        roots = self.uf.roots(member.labels)
        cls = torch.tensor(list(classes), dtype=torch.long)
        order = torch.argsort(cls)
        pos = torch.searchsorted(cls[order], roots).clamp_max(len(cls) - 1)
        hit = cls[order][pos] == roots
        return torch.where(hit, order[pos], torch.full_like(roots, -1))

    def describe(self) -> str:
        frozen = sum(1 for m in self.members if m.kind == "out" and bool((self.uf.roots(m.labels) == FROZEN).all()))
        lines = [str(g) for g in self.groups]
        lines.append(f"{len(self.groups)} groups; {frozen} layers keep all outputs (model output, input or ignored)")
        return "\n".join(lines)

    def masked(self, removed: Iterable[int]) -> nn.Module:
        """A deep copy with the removed channels' filters, biases and norm scales zeroed (same shapes):
        the oracle for `prune` when every activation maps 0 to 0."""
        removed = set(removed)
        new = copy.deepcopy(self.model)
        with torch.no_grad():
            for mem in self.members:
                if mem.kind in ("in", "in_grouped"):
                    continue
                drop = ~self.keep_mask(mem, removed)
                if not bool(drop.any()):
                    continue
                if mem.kind == "param":
                    mod_name, _, pname = mem.module.rpartition(".")
                    getattr(new.get_submodule(mod_name), pname).movedim(mem.dim, 0)[drop] = 0
                    continue
                mod = new.get_submodule(mem.module)
                for pname in ("weight", "bias"):
                    t = getattr(mod, pname, None)
                    if isinstance(t, torch.Tensor):
                        t[drop] = 0
        return new

    def keep_mask(self, member: Member, removed: set[int]) -> torch.Tensor:
        roots = self.uf.roots(member.labels)
        if not removed:
            return torch.ones(len(roots), dtype=torch.bool)
        return ~torch.isin(roots, torch.tensor(sorted(removed), dtype=torch.long))

    def prune(self, removed: Iterable[int]) -> nn.Module:
        """A deep copy of the model without the channel classes in `removed` (the model is unchanged).
        Only the kept slices of pruned tensors are copied."""
        removed = set(removed)
        if FROZEN in removed:
            raise NetcompressError("cannot remove frozen channels")
        plan: dict[tuple[str, str], dict[int, torch.Tensor]] = {}  # (module, tensor) -> {dim: kept idx}
        dw: set[str] = set()
        done: set[tuple[str, str]] = set()
        for mem in self.members:
            key = (mem.module, mem.kind)
            if key in done:
                continue
            done.add(key)
            keep = self.keep_mask(mem, removed)
            if bool(keep.all()):
                continue
            idx = torch.nonzero(keep).flatten()
            if mem.kind == "param":
                mod_name, _, pname = mem.module.rpartition(".")
                plan.setdefault((mod_name, pname), {})[mem.dim] = idx
            elif mem.kind in ("out", "dw"):
                plan.setdefault((mem.module, "weight"), {})[0] = idx
                plan.setdefault((mem.module, "bias"), {})[0] = idx
                if mem.kind == "dw":
                    dw.add(mem.module)
            elif mem.kind in ("in", "in_grouped"):
                plan.setdefault((mem.module, "weight"), {})[1] = idx
            elif mem.kind == "norm":
                for pname in ("weight", "bias", "running_mean", "running_var"):
                    plan.setdefault((mem.module, pname), {})[0] = idx
        memo: dict[int, Any] = {}
        with torch.no_grad():
            for (mod_name, pname), dims in plan.items():
                t = getattr(self.model.get_submodule(mod_name), pname, None)
                if not isinstance(t, torch.Tensor) or (pname in ("running_mean", "running_var", "bias") and t.dim() != 1):
                    continue
                v = t.detach()
                for d, idx in dims.items():
                    v = v.index_select(d, idx.to(v.device))
                v = v.clone()
                memo[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v
        new = copy.deepcopy(self.model, memo)
        for mod_name in {m for m, _ in plan}:
            mod = new.get_submodule(mod_name)
            if mod_name in dw:
                mult = mod.out_channels // mod.groups
                mod.groups = mod.weight.shape[0] // mult
            _fix_attributes(mod)
        return new


def _fix_attributes(mod: nn.Module) -> None:
    if isinstance(mod, _CONV):
        mod.out_channels = mod.weight.shape[0]
        mod.in_channels = mod.weight.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, _NORM):
        ref = mod.weight if mod.weight is not None else mod.running_mean
        mod.num_features = ref.shape[0]
    elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
        mod.normalized_shape = (mod.weight.shape[0],)
