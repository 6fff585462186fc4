"""Label-propagation rules of the channel graph (see `netcompress.core.graph`).

A `torch.fx.Interpreter` runs the traced model once and computes, next to every real value, a label
tensor naming the channel class of each element: fresh labels at conv / linear outputs, the op itself
for data movement, unions for element-wise combinations, freezing where sizes are literal."""
from __future__ import annotations

import fnmatch
import operator
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.graph import _CONV, _NORM, Member, _compact

if TYPE_CHECKING:
    from netcompress.core.graph import ChannelGraph

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


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return node.target if node.op == "call_module" else ""


def _op_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


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
            pi, pj, j0 = ins[i], outs[j], j
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
        if isinstance(m, nn.GroupNorm) and isinstance(inp, torch.Tensor):
            self.uf.freeze(_along(inp, 1, f"module {name!r}"))  # groups must stay equal: its channels stay
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
