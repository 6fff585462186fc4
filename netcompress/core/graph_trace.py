"""Tracers for the channel graph: `torch.fx` first, an eager recorder when fx cannot trace.

The recorder runs the model once under a `TorchFunctionMode` and writes every torch function and
tensor method it calls into a `torch.fx.Graph` (values kept in `node.meta['val']`), so the same label
rules apply. Python control flow simply runs on the example input. Sizes read from tensors
(`x.shape`, `x.size()`) are returned as `_Dyn` ints that stay `_Dyn` through arithmetic, and become
graph nodes where they are used: a reshape to a size computed from a tensor is told apart from a
literal size, as fx does with its proxies.
"""
from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

from netcompress.core.errors import NetcompressError

if TYPE_CHECKING:
    from netcompress.core.graph import ChannelGraph


def first_sample(x: Any, device: torch.device | None) -> Any:
    """The first sample of an example input: a tensor, a tuple / list of them, or a dict of named tensors."""
    def one(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t = t[:1] if t.dim() > 0 else t
            return t.to(device) if device is not None else t
        return t
    if isinstance(x, torch.Tensor):
        return one(x)
    if isinstance(x, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in x):
        return tuple(one(t) for t in x)
    if isinstance(x, dict) and any(isinstance(t, torch.Tensor) for t in x.values()):
        return {k: one(v) for k, v in x.items()}
    raise NetcompressError("example_inputs must be a tensor batch, a tuple of tensors or a dict of named tensors "
                           f"(e.g. data.example or {{'input_ids': ...}}), got {type(x).__name__}")


class _Dyn(int):
    """An int read from a tensor's shape; arithmetic keeps it one. `src`: (tensor, dim) it was read
    from, None once computed; `srcs`: every (tensor, dim) a computed one was made from."""

    src: tuple[Any, int] | None = None
    srcs: tuple[tuple[Any, int], ...] = ()


def _read(v: int, t: torch.Tensor, d: int) -> _Dyn:
    out = _Dyn(v)
    out.src = (t, d)
    return out


def _dyn_op(name: str):
    base = getattr(int, name)

    def f(self: int, *other: Any) -> Any:
        r = base(self, *other)
        if not isinstance(r, int) or isinstance(r, bool):
            return r
        out = _Dyn(r)
        out.srcs = tuple(s for a in (self, *other) if isinstance(a, _Dyn) for s in ((a.src,) if a.src else a.srcs))
        return out
    return f


for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__",
           "__mod__", "__neg__", "__pos__", "__abs__", "__pow__"):
    setattr(_Dyn, _n, _dyn_op(_n))


def _dyn(v: int) -> int:
    """A size computed from a tensor shape (a graph node so rules see it is not a literal)."""
    return v


def _constant() -> None:
    """A tensor that came from outside the recorded ops (a plain attribute, a closure)."""


_DUNDER = {"__add__": operator.add, "__iadd__": operator.iadd, "__sub__": operator.sub, "__mul__": operator.mul,
           "__imul__": operator.imul, "__truediv__": operator.truediv, "__matmul__": operator.matmul,
           "__getitem__": operator.getitem, "__neg__": operator.neg, "__pow__": operator.pow,
           "__and__": operator.and_, "__or__": operator.or_, "__xor__": operator.xor, "__invert__": operator.invert,
           "__lt__": operator.lt, "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
           "__eq__": operator.eq, "__ne__": operator.ne, "__mod__": operator.mod, "__floordiv__": operator.floordiv,
           "__abs__": operator.abs, "__setitem__": operator.setitem}
_RDUNDER = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
            "__rtruediv__": operator.truediv, "__rmatmul__": operator.matmul, "__rpow__": operator.pow,
            "__rand__": operator.and_, "__ror__": operator.or_}
_SIZE_FUNCS = ("size", "shape")


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, leaves: dict[int, str]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.node_of: dict[int, fx.Node] = {}
        self.keep: list[Any] = []  # recorded tensors stay alive: their ids stay unique
        self.names = {id(t): n for n, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                                         model.named_buffers(remove_duplicate=False))}
        self.leaves = leaves
        self.leaf_depth = 0
        self.stack: list[tuple[str, type]] = []

    def bind(self, value: Any, node: fx.Node) -> None:
        node.meta["val"] = value
        if self.stack:
            node.meta["nn_module_stack"] = {self.stack[-1][0]: self.stack[-1]}
        if isinstance(value, torch.Tensor):
            self.node_of[id(value)] = node
            self.keep.append(value)
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, i))
                    self.bind(v, item)

    def node(self, t: torch.Tensor) -> fx.Node:
        n = self.node_of.get(id(t))
        if n is None:
            name = self.names.get(id(t))
            n = self.graph.get_attr(name) if name is not None else self.graph.call_function(_constant, ())
            self.bind(t, n)
        return n

    def map(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return self.node(a)
        if isinstance(a, _Dyn):
            n = self.graph.call_function(_dyn, (int(a),))
            n.meta["val"] = int(a)
            if a.src is not None and id(a.src[0]) in self.node_of:
                n.meta["size_of"] = (self.node_of[id(a.src[0])], a.src[1] % max(a.src[0].dim(), 1))
            elif a.srcs:
                n.meta["size_from"] = [(self.node_of[id(t)], d % max(t.dim(), 1)) for t, d in a.srcs
                                       if id(t) in self.node_of]
            return n
        if isinstance(a, (list, tuple)):
            items = [self.map(x) for x in a]
            return items if isinstance(a, list) else tuple(items)
        if isinstance(a, dict):
            return {k: self.map(v) for k, v in a.items()}
        return a

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth:
            return out
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if name == "__get__" and owner is not None:  # a tensor property
            prop = getattr(owner, "__name__", "")
            x = args[0]
            if prop == "shape":
                return torch.Size(_read(v, x, d) for d, v in enumerate(out))
            if prop == "T":
                return self._record("call_method", "permute", (x, *reversed(range(x.dim()))), {}, out)
            if prop == "mT":
                return self._record("call_method", "transpose", (x, -2, -1), {}, out)
            if prop == "data":
                return self._record("call_method", "detach", (x,), {}, out)
            return out
        if name == "size":
            if isinstance(out, tuple):
                return torch.Size(_read(v, args[0], d) for d, v in enumerate(out))
            d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return _read(out, args[0], d % max(args[0].dim(), 1))
        if not any(isinstance(v, torch.Tensor) for v in _pytree.tree_leaves(out)) and name != "__setitem__":
            return out
        if name in _DUNDER:
            return self._record("call_function", _DUNDER[name], args, kwargs, out)
        if name in _RDUNDER:
            return self._record("call_function", _RDUNDER[name], (args[1], args[0], *args[2:]), kwargs, out)
        if getattr(torch.Tensor, name, None) is func or getattr(torch._C.TensorBase, name, None) is func:
            return self._record("call_method", name, args, kwargs, out)
        return self._record("call_function", func, args, kwargs, out)

    def _record(self, op: str, target: Any, args: Sequence[Any], kwargs: dict, out: Any) -> Any:
        node = self.graph.create_node(op, target, self.map(tuple(args)), self.map(kwargs))
        if target is operator.setitem:  # in place: later uses of the tensor see the new node
            node.meta["val"] = args[0]
            self.bind(args[0], node)
        else:
            self.bind(out, node)
        return out

    # leaves and the module stack --------------------------------------------------------------
    def pre(self, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.leaf_depth == 0 and id(mod) in self.leaves:
            self._leaf_args = (self.map(args), self.map(kwargs))
        if id(mod) in self.leaves or self.leaf_depth:
            self.leaf_depth += 1

    def post(self, mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if self.leaf_depth:
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                a, k = self._leaf_args
                node = self.graph.create_node("call_module", self.leaves[id(mod)], a, k)
                self.bind(out, node)


def record(model: nn.Module, x: Any, leaves: dict[int, str]) -> tuple[fx.Graph, list[Any]]:
    """Run `model(x)` once and return the recorded graph and its placeholder values."""
    rec = _Recorder(model, leaves)
    names = {id(m): n for n, m in model.named_modules()}
    hooks = []
    for n, m in model.named_modules():
        if id(m) in leaves:
            hooks.append(m.register_forward_pre_hook(rec.pre, with_kwargs=True))
            hooks.append(m.register_forward_hook(rec.post, with_kwargs=True, always_call=True))

    def push(mod: nn.Module, *_: Any) -> None:
        rec.stack.append((names.get(id(mod), ""), type(mod)))

    def pop(mod: nn.Module, *_: Any) -> None:
        if rec.stack:
            rec.stack.pop()
    hooks.append(nn.modules.module.register_module_forward_pre_hook(push))
    hooks.append(nn.modules.module.register_module_forward_hook(pop, always_call=True))
    values = []
    try:
        with rec:
            if isinstance(x, dict):
                inputs = {}
                for k, v in x.items():
                    inputs[k] = v
                    if isinstance(v, torch.Tensor):
                        rec.bind(v, rec.graph.placeholder(k))
                        values.append(v)
                out = model(**inputs)
            else:
                xs = x if isinstance(x, tuple) else (x,)
                for i, v in enumerate(xs):
                    if isinstance(v, torch.Tensor):
                        rec.bind(v, rec.graph.placeholder(f"input_{i}"))
                        values.append(v)
                out = model(*xs)
            leaves_out = [t for t in _output_tensors(out)]
            rec.graph.output([rec.node(t) for t in leaves_out])
    finally:
        for h in hooks:
            h.remove()
    return rec.graph, values


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):  # Hugging Face ModelOutput
        out = out.to_tuple()
    leaves = _pytree.tree_leaves(out)
    found = [t for t in leaves if isinstance(t, torch.Tensor)]
    for t in leaves:
        if not isinstance(t, torch.Tensor) and hasattr(t, "__dict__") and not isinstance(t, (type, nn.Module)):
            found += [v for v in vars(t).values() if isinstance(v, torch.Tensor)]
    return found


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: dict[int, str]) -> None:
        super().__init__()
        self.leaf_ids = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaf_ids or super().is_leaf_module(m, qualname)


def run_labels(g: "ChannelGraph", x: Any, ignore: Sequence[str]) -> None:
    """Fill `g` with members and unions: fx when it traces and runs, else the eager recorder.
    Attention leaves whose layout fails its check on the real call (`graph_layers._reject`) are
    traced through on one more pass (an error met while some were pending is from that pass)."""
    while True:
        try:
            _run_labels(g, x, ignore)
        except NetcompressError:
            if not g.rejected:
                raise
        else:
            if not g.rejected:
                return
        g.not_leaves |= g.rejected  # each pass has fewer leaves, so this ends
        g.rejected = set()
        g.reset_labels()
        g.tracer = "fx"


def _run_labels(g: "ChannelGraph", x: Any, ignore: Sequence[str]) -> None:
    """One pass of `run_labels`, with the leaves that are not in `g.not_leaves`."""
    from netcompress.core.graph_layers import leaf_rule
    from netcompress.core.graph_rules import _LabelInterpreter, _RecordedInterpreter

    model = g.model
    leaves = {id(m): n for n, m in model.named_modules() if n and id(m) not in g.not_leaves and leaf_rule(m) is not None}
    reason = ""
    if not isinstance(x, dict):
        try:
            tracer = _LeafTracer(leaves)
            traced = tracer.trace(model)
            gm = fx.GraphModule(tracer.root, traced)
        except Exception as e:  # fx cannot trace this forward: record it instead
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            try:
                _LabelInterpreter(gm, g, ignore).run(*(x if isinstance(x, tuple) else (x,)))
                return
            except NetcompressError:
                raise
            except Exception as e:  # the traced graph does not run as traced (specialised control flow)
                reason = f"{type(e).__name__}: {e}"
                g.reset_labels()
    try:
        graph, values = record(model, x, leaves)
    except NetcompressError:
        raise
    except Exception as e:
        raise NetcompressError(f"cannot trace {type(model).__name__}: fx failed ({reason}) and running it on the "
                               f"example input failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                               ) from None
    g.tracer = "eager"
    _RecordedInterpreter(model, graph, g, ignore).run(*values)
