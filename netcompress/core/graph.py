"""Channel dependency graph, for structured pruning and architecture transforms.

Idea (after Torch-Pruning's DepGraph, Fang et al. 2023, built differently): trace the model, then run
it once on an example input while propagating, next to every real tensor, a *label tensor* of the
same shape whose entries name the channel each element belongs to. Every conv / linear output gets
fresh labels; data-movement ops (view, flatten, transpose, cat, chunk, getitem, ...) are executed on
the label tensors themselves, so channel shuffles, concatenations at offsets and flatten-into-linear
blocks come out exactly; element-wise ops (residual additions, squeeze-excitation multiplications,
parameters broadcast into activations) *unite* the labels they combine (union-find); contractions
(matmul, einsum, attention) unite the contracted positions. After the pass, each union-find class is
one prunable channel: removing it removes every position carrying one of its labels, in every layer
that touches it. Classes reaching the model input or output, literal sizes, or ignored layers are
frozen (never removed). Label -1 (*neutral*) marks values that carry no channel identity (a mean
over channels, a constant built from computed sizes): they combine with anything.

Tracing: `torch.fx.symbolic_trace` first; a model fx cannot trace (data-dependent control flow,
Hugging Face models, dict inputs) is recorded by running it eagerly under a `TorchFunctionMode`
(`netcompress.core.graph_trace`). Attention blocks and user layers with a registered rule
(`netcompress.core.graph_layers.register_layer`) are leaves with their own coupling rules.

A `ChannelGraph` lists `Group`s (classes touching the same set of layers), prints them for a dry run,
and `prune(removed)` returns a physically smaller deep copy made of the original module classes.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

FROZEN = 0  # the class of channels that may never be removed
NEUTRAL = -1  # a position with no channel identity

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
OUTPUT_KINDS = ("out", "dw", "emb", "norm", "param")  # kinds whose positions are a channel's own weights


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` without its broadcast (stride-0) dimensions' repeats: a view, never a copy."""
    return t[tuple(slice(0, 1) if t.stride(d) == 0 else slice(None) for d in range(t.dim()))]


def is_conv1d_t(mod: nn.Module) -> bool:
    """Hugging Face's GPT-2 `Conv1D`: a linear layer with its weight stored as [in, out]."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and hasattr(mod, "nx")


@dataclass
class Member:
    """One place whose size follows channel classes: `kind` in out (conv/linear filters), in
    (conv/linear inputs), in_grouped (grouped conv inputs, per-group positions), dw (depthwise conv),
    emb (embedding vectors), norm (BatchNorm / LayerNorm / RMSNorm), param (a parameter used directly
    in forward, indexed along `dim`), param_in (the input side of a parameter used as a weight)."""

    module: str
    kind: str
    labels: torch.Tensor  # label per position along the pruned dim
    dim: int = 0

    def __post_init__(self) -> None:
        self.labels = self.labels.clamp_min(FROZEN)  # neutral inputs are a fixed size: frozen


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
        self._table: torch.Tensor | None = None  # root of every label, rebuilt after a change

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self._table = None
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
        self._table = None

    def union_tensors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        both = tuple(slice(0, 1) if a.stride(d) == 0 and b.stride(d) == 0 else slice(None) for d in range(a.dim()))
        a, b = a[both], b[both]
        if torch.equal(a, b):
            return
        ok = (a >= 0) & (b >= 0)  # neutral positions combine with anything
        a, b = (a, b) if bool(ok.all()) else (a[ok], b[ok])
        keys = torch.unique((a.reshape(-1) << 32) | b.reshape(-1))
        for x, y in zip((keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist()):
            if x != y:
                self.union(x, y)

    def union_all(self, t: torch.Tensor) -> None:
        """Unite every (non-neutral) label of `t` into one class."""
        u = torch.unique(_compact(t))
        u = u[u >= 0].tolist()
        for x in u[1:]:
            self.union(u[0], x)

    def freeze(self, t: torch.Tensor) -> None:
        for x in torch.unique(_compact(t)).tolist():
            if x >= 0:
                self.union(FROZEN, x)

    def roots(self, t: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            p = torch.tensor(self.parent, dtype=torch.long)
            while True:  # pointer jumping: every label points at its root
                q = p[p]
                if torch.equal(q, p):
                    break
                p = q
            self._table = p
        return torch.where(t < 0, NEUTRAL, self._table[t.clamp_min(0)])


def weight_dims(mod: nn.Module) -> tuple[int, int]:
    """(output dim, input dim) of `mod.weight`."""
    return (1, 0) if is_conv1d_t(mod) else (0, 1)


def member_slices(model: nn.Module, mem: Member) -> list[tuple[str, str, int, bool]]:
    """(module, tensor name, dim, output side) of every tensor `mem`'s positions index."""
    if mem.kind in ("param", "param_in"):
        mod_name, _, pname = mem.module.rpartition(".")
        return [(mod_name, pname, mem.dim, mem.kind == "param")]
    mod = model.get_submodule(mem.module)
    out_d, in_d = weight_dims(mod)
    if mem.kind == "out":
        return [(mem.module, "weight", out_d, True), (mem.module, "bias", 0, True)]
    if mem.kind == "dw":
        return [(mem.module, "weight", 0, True), (mem.module, "bias", 0, True)]
    if mem.kind == "emb":
        return [(mem.module, "weight", 1, True)]
    if mem.kind == "norm":
        return [(mem.module, p, 0, True) for p in ("weight", "bias", "running_mean", "running_var")]
    return [(mem.module, "weight", in_d, False)]  # in, in_grouped


def _tensor(model: nn.Module, mod_name: str, pname: str) -> torch.Tensor | None:
    t = getattr(model.get_submodule(mod_name), pname, None)
    return t if isinstance(t, torch.Tensor) else None


class ChannelGraph:
    """Coupled-channel groups of a model (see module docstring). Build with `ChannelGraph.build`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uf = _UnionFind()
        self.members: list[Member] = []
        self.groups: list[Group] = []
        self.fixers: list[Callable[[nn.Module, "ChannelGraph", set[int]], None]] = []
        self.example: Any = None  # the traced first sample (set by `build`): pruned models are checked on it
        self._out_shape: tuple[int, ...] | None = None
        self.tracer = "fx"
        self.not_leaves: set[int] = set()  # ids of modules whose leaf layout failed its probe: traced through
        self.rejected: set[int] = set()  # such modules found in the current pass (see `run_labels`)

    def reset_labels(self) -> None:
        """Forget what a labelling pass found (members, unions, fixers), before another pass."""
        self.uf, self.members, self.fixers = _UnionFind(), [], []

    @classmethod
    def build(cls, model: nn.Module, example_inputs: Any, ignore: Iterable[str] = (), *,
              attention: str = "heads", width: bool = True) -> "ChannelGraph":
        """Trace `model` (unchanged) and find its channel groups.

        Args:
            model: any nn.Module (fx-traceable or not; see the module docstring).
            example_inputs: a real input: a tensor, a tuple of tensors or a dict of named tensors
                (e.g. Hugging Face `input_ids`); only the first sample is used.
            ignore: qualified module names (or fnmatch patterns, or prefixes) to leave unpruned.
            attention: 'heads' (remove whole attention heads / key-value groups), 'head_dim'
                (remove the same dimensions of every head) or 'none' (attention stays).
            width: also prune channels normalised by LayerNorm / RMSNorm / GroupNorm(1) or by a
                mean / variance over channels in a hand-written norm (the embedding width of a
                transformer, coupled through every block).

        Example:
            g = ChannelGraph.build(nc.models.create("resnet8"), torch.randn(1, 3, 32, 32))
            print(g.describe())
        """
        from netcompress.core.graph_trace import first_sample, run_labels

        if attention not in ("heads", "head_dim", "none"):
            raise NetcompressError(f"attention must be 'heads', 'head_dim' or 'none', got {attention!r}")
        ignore = list(ignore)
        names = {n for n, _ in model.named_modules()}
        for p in ignore:
            if p not in names and not any(fnmatch.fnmatch(n, p) or n.startswith(p + ".") for n in names):
                raise NetcompressError(f"ignore: no module named {p!r} in {type(model).__name__}")
        g = cls(model)
        g.attention, g.width = attention, width
        x = first_sample(example_inputs, next((p.device for p in model.parameters()), None))
        with eval_mode(model), torch.no_grad():
            run_labels(g, x, ignore)
        g._make_groups()
        g.example = x
        return g

    def _run(self, model: nn.Module) -> tuple[int, ...] | None:
        """The shape of `model`'s first output tensor on the traced example (eval mode, no grad);
        later outputs (attention maps, key/value caches) may rightly lose heads."""
        from netcompress.core.graph_trace import _output_tensors

        x = self.example
        with eval_mode(model), torch.no_grad():
            out = model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)
        first = _output_tensors(out)[:1]
        return tuple(first[0].shape) if first else None

    def check_runs(self, new: nn.Module) -> None:
        """Raise a NetcompressError naming the module where the pruned model `new` fails on the
        traced example, or if its first output changes shape: a size the trace did not see as one
        (a literal, an attribute read inside a module's forward) kept the old width."""
        if self.example is None:
            return
        if self._out_shape is None:
            self._out_shape = self._run(self.model)
        try:
            shape = self._run(new)
        except Exception as e:  # any failure of the user's forward on the pruned weights
            where = _failing_module(new, e.__traceback__)
            hint = f"; pass ignore=[{where!r}] to leave it unpruned" if where else ""
            raise NetcompressError(f"the pruned model fails in module {where or '<top>'!r} on the example input "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): a size "
                                   f"there did not follow the removed channels{hint}") from None
        if shape != self._out_shape:
            raise NetcompressError(f"the pruned model's output changes shape on the example input ({self._out_shape} "
                                   f"-> {shape}): a model output was pruned")

    def _make_groups(self) -> None:
        """Classes touched by the same set of (module, kind) members form one group. Vectorised: one
        (root, member key, member index) triple per distinct root of each member."""
        keys: dict[tuple[str, str], int] = {}
        rs, ks, ms = [], [], []
        for i, mem in enumerate(self.members):
            k = keys.setdefault((mem.module, mem.kind), len(keys))
            r = torch.unique(self.uf.roots(mem.labels))
            r = r[r != FROZEN]
            rs.append(r)
            ks.append(torch.full_like(r, k))
            ms.append(torch.full_like(r, i))
        self.groups = []
        if not rs or not sum(len(r) for r in rs):
            return
        nk = len(keys)
        R, K, M = torch.cat(rs) + 1, torch.cat(ks), torch.cat(ms)  # + 1: a neutral root (-1) sorts first
        code = torch.unique(R * nk + K)  # sorted by root, then member key
        root, key = (code // nk).tolist(), (code % nk).tolist()
        # first member (in trace order) that carries each root: the order classes were first met
        first = torch.full((int(R.max()) + 1,), len(self.members), dtype=torch.long).scatter_reduce(
            0, R, M, reduce="amin").tolist()
        sig_of: dict[int, tuple[int, ...]] = {}
        start = 0
        for end in range(1, len(root) + 1):
            if end == len(root) or root[end] != root[start]:
                sig_of[root[start]] = tuple(key[start:end])
                start = end
        met = sorted(sig_of, key=lambda r: (first[r], r))
        by_sig: dict[tuple[int, ...], list[int]] = {}
        for r in met:
            by_sig.setdefault(sig_of[r], []).append(r - 1)
        names = {v: k for k, v in keys.items()}
        order: dict[str, int] = {}
        for i, m in enumerate(self.members):
            order.setdefault(m.module, i)
        sigs = [(sorted(names[k] for k in sig), cls) for sig, cls in by_sig.items()]
        sigs.sort(key=lambda sc: min(order[m] for m, _ in sc[0]))
        self.groups = [Group(i, sorted(cls), sorted(mk, key=lambda x: order[x[0]])) for i, (mk, cls) in enumerate(sigs)]

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
        table = self.removed_table(removed)
        new = copy.deepcopy(self.model)
        with torch.no_grad():
            for mem in self.members:
                drop = ~self.keep_mask(mem, table)
                if mem.kind not in OUTPUT_KINDS or not bool(drop.any()):
                    continue
                for mod_name, pname, dim, _ in member_slices(self.model, mem):
                    t = _tensor(new, mod_name, pname)
                    if t is not None and t.dim() > dim and t.shape[dim] == len(drop) and not (
                            pname in ("running_mean", "running_var")):
                        t.movedim(dim, 0)[drop] = 0
        return new

    def keep_mask(self, member: Member, removed: torch.Tensor) -> torch.Tensor:
        """Which positions of `member`'s pruned dim stay when the classes marked in `removed` (the
        table from `removed_table`) go."""
        return self.kept(member.labels, removed)

    def kept(self, labels: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Which of the channel `labels` stay when the classes marked in `removed` go."""
        roots = self.uf.roots(labels)
        return ~removed[roots.clamp_min(0)] | (roots < 0)

    def removed_table(self, removed: Iterable[int]) -> torch.Tensor:
        """A boolean per channel label: True where its class is in `removed` (one lookup per member)."""
        table = torch.zeros(len(self.uf.parent), dtype=torch.bool)
        ids = list(removed)
        if ids:
            table[torch.tensor(ids, dtype=torch.long)] = True
        return table

    def prune(self, removed: Iterable[int]) -> nn.Module:
        """A deep copy of the model without the channel classes in `removed` (the model is unchanged).
        Only the kept slices of pruned tensors are copied."""
        removed = set(removed)
        if FROZEN in removed:
            raise NetcompressError("cannot remove frozen channels")
        plan: dict[int, tuple[torch.Tensor, str, dict[int, torch.Tensor]]] = {}  # id(tensor) -> (t, name, {dim: kept})
        touched: set[str] = set()
        dw: set[str] = set()
        table = self.removed_table(removed)
        for mem in self.members:
            keep = self.keep_mask(mem, table)
            if bool(keep.all()):
                continue
            idx = torch.nonzero(keep).flatten()
            if mem.kind == "dw":
                dw.add(mem.module)
            for mod_name, pname, dim, _ in member_slices(self.model, mem):
                t = _tensor(self.model, mod_name, pname)
                if t is None or t.dim() <= dim or t.shape[dim] != len(keep):
                    continue
                touched.add(mod_name)
                _, _, dims = plan.setdefault(id(t), (t, f"{mod_name}.{pname}", {}))
                if dim in dims and not torch.equal(dims[dim], idx):
                    raise NetcompressError(f"tensor {mod_name}.{pname} would be pruned two different ways along dim "
                                           f"{dim} (a tied or shared weight used with different channels)")
                dims[dim] = idx
        memo: dict[int, Any] = {}
        with torch.no_grad():
            for key, (t, _, dims) in plan.items():
                v = t.detach()
                for d, idx in dims.items():
                    v = v.index_select(d, idx.to(v.device))
                v = v.clone()
                memo[key] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v
        new = copy.deepcopy(self.model, memo)
        for mod_name in touched:
            mod = new.get_submodule(mod_name)
            if mod_name in dw:
                mult = mod.out_channels // mod.groups
                mod.groups = mod.weight.shape[0] // mult
            fix_attributes(mod)
        for fix in self.fixers:
            fix(new, self, removed)
        from netcompress.core.graph_layers import fix_hf_config

        fix_hf_config(new)
        self.check_runs(new)
        return new


def _failing_module(model: nn.Module, tb: Any) -> str | None:
    """The qualified name of the innermost module of `model` whose forward is on traceback `tb`."""
    names = {id(m): n for n, m in model.named_modules() if n}
    found = None
    while tb is not None:
        mod = tb.tb_frame.f_locals.get("self")
        if isinstance(mod, nn.Module) and id(mod) in names:
            found = names[id(mod)]
        tb = tb.tb_next
    return found


def fix_attributes(mod: nn.Module) -> None:
    """Make a module's size attributes agree with its (pruned) tensors."""
    if isinstance(mod, _CONV):
        mod.out_channels = mod.weight.shape[0]
        mod.in_channels = mod.weight.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, _NORM):
        ref = mod.weight if mod.weight is not None else mod.running_mean
        mod.num_features = ref.shape[0]
    elif isinstance(mod, nn.GroupNorm) and mod.weight is not None:
        mod.num_channels = mod.weight.shape[0]
    elif isinstance(mod, nn.Embedding):
        mod.embedding_dim = mod.weight.shape[1]
    elif is_conv1d_t(mod):
        mod.nx, mod.nf = mod.weight.shape
    elif getattr(mod, "weight", None) is not None and isinstance(getattr(mod, "normalized_shape", None), (tuple, list)) \
            and len(mod.normalized_shape) == 1:
        mod.normalized_shape = (mod.weight.shape[0],)  # LayerNorm, RMSNorm and their subclasses
    elif getattr(mod, "weight", None) is not None and isinstance(getattr(mod, "num_features", None), int):
        mod.num_features = mod.weight.shape[0]
