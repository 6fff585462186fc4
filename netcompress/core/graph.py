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
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError

FROZEN = 0  # the class of channels that may never be removed

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                  nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.Hardtanh)
_CHANNELWISE_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                        nn.UpsamplingBilinear2d, nn.LocalResponseNorm, nn.ZeroPad2d, nn.ConstantPad2d,
                        nn.ReflectionPad2d, nn.ReplicationPad2d)
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.neg,
    torch.exp, torch.abs, torch.where, torch.maximum, torch.minimum,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.sigmoid, F.tanh, F.hardtanh, F.softplus, F.dropout, F.dropout2d, F.softmax, F.log_softmax,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid",
                        "sigmoid_", "tanh", "clamp", "clamp_", "clamp_min", "contiguous", "clone", "float",
                        "to", "type_as", "neg", "exp", "abs", "softmax", "detach", "hardtanh_", "masked_fill"}
_MOVE_FUNCS = {torch.flatten, torch.cat, torch.concat, torch.chunk, torch.split, torch.transpose, torch.permute,
               torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem, torch.stack}
_MOVE_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "chunk", "split", "squeeze",
                 "unsqueeze", "expand", "expand_as", "view_as", "t", "repeat"}
_CHANNELWISE_FUNCS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d, F.interpolate,
                      F.adaptive_avg_pool1d, F.max_pool1d, F.avg_pool1d, F.pad, torch.nn.functional.upsample}
_REDUCE = {"mean", "sum", "amax", "amin"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_ELEMENTWISE_NAMES = {"stochastic_depth"}  # torchvision's fx-wrapped leaf functions (identity in eval)


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


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return node.target if node.op == "call_module" else ""


def _op_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _compact(t: torch.Tensor) -> torch.Tensor:
    """`t` without its broadcast (stride-0) dimensions' repeats: a view, never a copy."""
    return t[tuple(slice(0, 1) if t.stride(d) == 0 else slice(None) for d in range(t.dim()))]


def _along(labels: torch.Tensor, dim: int, where: str) -> torch.Tensor:
    """The labels along `dim`, checked constant along every other dim (batch excluded)."""
    dim = dim % labels.dim()
    labels = labels[tuple(slice(0, 1) if labels.stride(d) == 0 and d != dim else slice(None) for d in range(labels.dim()))]
    moved = labels.movedim(dim, -1).reshape(-1, labels.shape[dim])
    if not bool((moved == moved[:1]).all()):
        raise NetcompressError(f"{where}: channels are mixed with other dimensions; cannot prune its inputs")
    return moved[0].clone()


class _LabelInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, graph: "ChannelGraph", ignore: Sequence[str]) -> None:
        super().__init__(gm)
        self.g = graph
        self.uf = graph.uf
        self.ignore = ignore
        self.labels: dict[fx.Node, Any] = {}
        self.seen_out: dict[str, torch.Tensor] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _lab(self, a: Any) -> Any:
        """`a` with every node replaced by its labels (tensors) or its real value (sizes, numbers)."""
        def one(x: Any) -> Any:
            if not isinstance(x, fx.Node):
                return x
            lab = self.labels.get(x)
            return lab if lab is not None else self.env.get(x)
        return fx.node.map_aggregate(a, one)

    def _ignored(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") or fnmatch.fnmatch(name, p) for p in self.ignore)

    def _frozen_like(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return torch.zeros(1, dtype=torch.long).expand(value.shape)
        if isinstance(value, (tuple, list)):
            return type(value)(self._frozen_like(v) for v in value)
        return None

    def _freeze_all(self, a: Any) -> None:
        if isinstance(a, torch.Tensor):
            self.uf.freeze(a)
        elif isinstance(a, (tuple, list)):
            for x in a:
                self._freeze_all(x)

    def _tensor_labels(self, node: fx.Node) -> list[torch.Tensor]:
        out = []
        for a in node.all_input_nodes:
            lab = self.labels.get(a)
            if isinstance(lab, torch.Tensor):
                out.append(lab)
        return out

    # -- node rules ------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        try:
            self.labels[n] = self._label(n, value)
        except NetcompressError:
            raise
        except Exception as e:  # a rule met a case it cannot handle
            raise NetcompressError(f"op {_op_name(n)!r} in module {_module_of(n) or '<top>'!r}: cannot follow "
                                   f"channels through it ({type(e).__name__}: {e})") from None
        return value

    def _label(self, n: fx.Node, value: Any) -> Any:
        if n.op == "placeholder":
            return self._frozen_like(value)
        if n.op == "output":
            self._freeze_all(self._lab(n.args[0]))
            return None
        if n.op == "get_attr":
            return self._param_labels(n, value)
        if not isinstance(value, (torch.Tensor, tuple, list)) or (
                isinstance(value, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in value)):
            return None  # sizes, shapes, python numbers
        if n.op == "call_module":
            return self._module_rule(n, self.g.model.get_submodule(n.target), value)
        if n.op == "call_function" and (n.target in _ELEMENTWISE_FUNCS or _op_name(n) in _ELEMENTWISE_NAMES) or \
                n.op == "call_method" and n.target in _ELEMENTWISE_METHODS:
            return self._elementwise(n, value)
        if n.op == "call_function" and n.target in _MOVE_FUNCS or n.op == "call_method" and n.target in _MOVE_METHODS:
            return self._move(n, value)
        if n.op == "call_function" and n.target in _CHANNELWISE_FUNCS:
            return self._channelwise(n, value)
        if (n.op == "call_method" and n.target in _REDUCE) or (n.op == "call_function" and n.target in _REDUCE_FUNCS):
            return self._reduce(n, value)
        if n.op == "call_function" and n.target is F.layer_norm:
            return self._layer_norm(n, value)
        return self._unknown(n, value)

    def _unknown(self, n: fx.Node, value: Any) -> Any:
        mod = _module_of(n)
        if self._ignored(mod):
            for lab in self._tensor_labels(n):
                self.uf.freeze(lab)
            return self._frozen_like(value)
        hint = (f"pass ignore=[{mod!r}] to leave that module unpruned" if mod else
                "it is in the model's own forward, so the model cannot be pruned structurally")
        err = NetcompressError(f"op {_op_name(n)!r} ({n.op}) in module {mod or '<top>'!r} is not understood by the "
                               f"channel graph; {hint}")
        err.module = mod  # lets `plan` list it and go on
        raise err

    def _param_labels(self, n: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        big = [d for d, s in enumerate(value.shape) if s > 1]
        if len(big) != 1:
            return torch.zeros(1, dtype=torch.long).expand(value.shape)
        d = big[0]
        ids = self.uf.new(value.shape[d])
        shape = [1] * value.dim()
        shape[d] = -1
        lab = ids.view(shape).expand(value.shape)
        mod = n.target.rpartition(".")[0]
        if self._ignored(mod):
            self.uf.freeze(ids)
        self.g.members.append(Member(n.target, "param", ids, d))
        return lab

    def _elementwise(self, n: fx.Node, value: Any) -> Any:
        labs = self._tensor_labels(n)
        if not isinstance(value, torch.Tensor):
            return self._unknown(n, value)
        if not labs:
            return torch.zeros(1, dtype=torch.long).expand(value.shape)
        base = None
        for lab in labs:
            if lab.shape != value.shape and lab.numel() == value.numel() and lab.dim() != value.dim():
                lab = lab.reshape(value.shape)
            lab = lab.expand(value.shape) if lab.dim() <= value.dim() else lab
            if base is None:
                base = lab
            else:
                self.uf.union_tensors(base, lab)
        return base

    def _channelwise(self, n: fx.Node, value: Any) -> torch.Tensor:
        labs = self._lab(n.args[0])
        ch = _along(labs, 1, f"op {_op_name(n)!r} in {_module_of(n) or '<top>'!r}")
        shape = [1] * value.dim()
        shape[1] = -1
        return ch.view(shape).expand(value.shape)

    def _reduce(self, n: fx.Node, value: Any) -> torch.Tensor:
        lab = self._lab(n.args[0])
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if dims is None:
            return torch.zeros(1, dtype=torch.long).expand(value.shape)
        dims = sorted({d % lab.dim() for d in ([dims] if isinstance(dims, int) else dims)})
        lab_c = _compact(lab)
        idx = tuple(slice(0, 1) if d in dims else slice(None) for d in range(lab.dim()))
        first = lab_c[idx]
        if not bool((lab_c == first).all()):
            return torch.zeros(1, dtype=torch.long).expand(value.shape)  # a sum over channels: no identity
        out = first
        if not keep:
            for d in reversed(dims):
                out = out.squeeze(d)
        return out.expand(value.shape)

    def _layer_norm(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        lab = self._lab(n.args[0])
        for a in list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]:
            la = self._lab(a) if isinstance(a, fx.Node) else None
            if isinstance(la, torch.Tensor):
                self.uf.union_tensors(lab, la)
        return lab

    def _move(self, n: fx.Node, value: Any) -> Any:
        args, kwargs = self._lab(n.args), {k: self._lab(v) for k, v in n.kwargs.items()}
        name = _op_name(n)
        src = args[0] if not isinstance(args[0], (list, tuple)) else None
        if name in ("view", "reshape"):
            self._reshape_ties(n, src, value)
        elif name in ("chunk", "split") and isinstance(src, torch.Tensor):
            self._split_ties(n, src, value, args)
        elif name == "getitem" and isinstance(src, torch.Tensor):
            self._index_ties(src, args[1])
        elif name == "stack":
            pass
        if name in ("cat", "concat") and isinstance(args[0], (list, tuple)) and isinstance(value, torch.Tensor):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % value.dim()
            parts = list(args[0])
            flat = tuple(slice(0, 1) if d != dim and all(p.stride(d) == 0 for p in parts) else slice(None)
                         for d in range(value.dim()))
            return torch.cat([p[flat] for p in parts], dim).expand(value.shape)  # stays a broadcast view
        if n.op == "call_method":
            method = "reshape" if n.target == "view" else n.target  # label tensors may be non-contiguous
            return getattr(src, method)(*args[1:], **kwargs)
        return n.target(*args, **kwargs)

    def _reshape_ties(self, n: fx.Node, src: torch.Tensor, value: torch.Tensor) -> None:
        sizes = n.args[1:] if n.op == "call_method" else n.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        if any(isinstance(s, str) for s in sizes) or len(sizes) != value.dim():
            return
        literal = [isinstance(s, int) and s != -1 for s in sizes]
        out = src.reshape(value.shape)
        i = j = 0  # walk matching blocks of equal products
        ins, outs = list(src.shape), list(value.shape)
        while i < len(ins) and j < len(outs):
            pi, pj, i0, j0 = ins[i], outs[j], i, j
            while pi != pj:
                if pi < pj:
                    i += 1
                    pi *= ins[i]
                else:
                    j += 1
                    pj *= outs[j]
            block = range(j0, j + 1)
            varying = any(not bool((out.select(d, 0).unsqueeze(d) == out).all()) for d in block if outs[d] > 1)
            if varying and j0 > 0:
                if all(literal[d] for d in block if outs[d] > 1):
                    self.uf.freeze(out.narrow(0, 0, 1))  # a literal size: these channels cannot change
                elif len(block) > 1:
                    for d in block:
                        if literal[d] and outs[d] > 1:
                            first = out.narrow(d, 0, 1)
                            self.uf.union_tensors(first, out)
            i, j = i + 1, j + 1

    def _split_ties(self, n: fx.Node, src: torch.Tensor, value: Any, args: Sequence[Any]) -> None:
        dim = n.kwargs.get("dim", args[2] if len(args) > 2 else 0) % src.dim()
        if dim == 0 or src.shape[dim] == 1:
            return
        parts = list(value)
        if _op_name(n) == "chunk" and len({p.shape[dim] for p in parts}) == 1:
            k = parts[0].shape[dim]
            for p in range(1, len(parts)):
                self.uf.union_tensors(src.narrow(dim, 0, k), src.narrow(dim, p * k, k))
        elif _op_name(n) == "split" and isinstance(n.args[1], (list, tuple)) and all(isinstance(s, fx.Node) for s in n.args[1]):
            pass  # sizes computed in forward follow the pruned shapes
        else:
            self.uf.freeze(src)

    def _index_ties(self, src: torch.Tensor, idx: Any) -> None:
        idx = idx if isinstance(idx, tuple) else (idx,)
        for d, s in enumerate(idx):
            if s is Ellipsis:
                return
            if d == 0 or (isinstance(s, slice) and s == slice(None)) or s is None:
                continue
            self.uf.freeze(src)  # a literal index or slice over channels
            return

    def _module_rule(self, n: fx.Node, m: nn.Module, value: Any) -> Any:
        name = n.target
        inp = self._lab(n.args[0]) if n.args else None
        ignored = self._ignored(name)
        if isinstance(m, _CONV) and isinstance(inp, torch.Tensor):
            in_lab = _along(inp, 1, f"module {name!r}")
            if ignored:
                self.uf.freeze(in_lab)
            g = m.groups
            if g == 1:
                self.g.members.append(Member(name, "in", in_lab))
                out_ids = self._out_ids(name, m.out_channels)
                self.g.members.append(Member(name, "out", out_ids))
            elif g == m.in_channels:
                out_ids = in_lab.repeat_interleave(m.out_channels // m.in_channels)
                self.g.members.append(Member(name, "dw", out_ids))
            else:
                per_in = in_lab.view(g, -1)
                self.uf.union_tensors(per_in[:1], per_in)
                out_ids = self._out_ids(name, m.out_channels)
                per_out = out_ids.view(g, -1)
                self.uf.union_tensors(per_out[:1], per_out)
                self.g.members.append(Member(name, "in_grouped", per_in[0].clone(), 1))
                self.g.members.append(Member(name, "out", out_ids))
            if ignored:
                self.uf.freeze(out_ids)
            shape = [1] * value.dim()
            shape[1] = -1
            return out_ids.view(shape).expand(value.shape)
        if isinstance(m, nn.Linear) and isinstance(inp, torch.Tensor):
            in_lab = _along(inp, -1, f"module {name!r}")
            out_ids = self._out_ids(name, m.out_features)
            if ignored:
                self.uf.freeze(in_lab)
                self.uf.freeze(out_ids)
            self.g.members.append(Member(name, "in", in_lab, 1))
            self.g.members.append(Member(name, "out", out_ids))
            return out_ids.expand(value.shape)
        if isinstance(m, _NORM) or isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            dim = -1 if isinstance(m, nn.LayerNorm) else 1
            ch = _along(inp, dim, f"module {name!r}")
            if ignored:
                self.uf.freeze(ch)
            has_params = any(p is not None for p in m._parameters.values()) or any(b is not None and b.dim() == 1 for b in m._buffers.values())
            if has_params:
                self.g.members.append(Member(name, "norm", ch))
            return inp
        if isinstance(m, _UNARY_MODULES) or isinstance(m, nn.PReLU) and m.num_parameters == 1:
            return inp if isinstance(inp, torch.Tensor) else self._frozen_like(value)
        if isinstance(m, nn.Flatten):
            return inp.flatten(m.start_dim, m.end_dim)
        if isinstance(m, _CHANNELWISE_MODULES) and isinstance(value, torch.Tensor):
            return self._channelwise(n, value)
        return self._unknown(n, value)

    def _out_ids(self, name: str, n: int) -> torch.Tensor:
        if name not in self.seen_out:  # a module called twice shares its filters
            self.seen_out[name] = self.uf.new(n)
        return self.seen_out[name]


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
