"""Label-propagation rules of the channel graph (see `netcompress.core.graph`).

A `torch.fx.Interpreter` runs the traced (or recorded) model once and computes, next to every real
value, a label tensor naming the channel class of each element: fresh labels at conv / linear /
embedding outputs, the op itself for data movement, unions for element-wise combinations and
contractions, freezing where sizes are literal. Ops are matched by name, so a module, its functional
form (`F.batch_norm`, `F.linear`, ...) and its tensor method (`x.norm`, `x.matmul`) share one rule."""
from __future__ import annotations

import fnmatch
import operator
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.graph import _CONV, _NORM, FROZEN, Member, _compact
from netcompress.core.graph_ops import (contract, einsum_letters, frozen, matmul_letters, merge, neutral, reduce, resize,
                                        squash)

if TYPE_CHECKING:
    from netcompress.core.graph import ChannelGraph

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                  nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.Hardtanh, nn.CELU,
                  nn.Softsign, nn.Tanhshrink, nn.LogSigmoid)
_RESIZE_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                   nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                   nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                   nn.ReplicationPad2d, nn.ZeroPad1d, nn.ConstantPad1d)
ELEMENTWISE = set("""add sub mul truediv div iadd imul isub itruediv neg relu sigmoid tanh clamp exp abs where
maximum minimum relu6 leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh softplus softsign
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout softmax log_softmax stochastic_depth
contiguous clone float double half bfloat16 bool int long to type type_as detach masked_fill add_ mul_ sub_ div_
relu_ sigmoid_ clamp_ clamp_min clamp_max clamp_min_ hardtanh_ rsqrt sqrt pow square addcmul addcdiv erf log log1p
sin cos reciprocal sign floor ceil round lt le gt ge eq ne and_ or_ xor invert logical_not logical_and logical_or
lerp tanh_ exp_ gelu_ silu_ hardswish_ leaky_relu_ elu_ logsigmoid threshold nan_to_num fill_ zero_ cumsum cumprod
requires_grad_ neg_ abs_ masked_fill_ mod floordiv fmod remainder sigmoid_ pow_ sqrt_ rsqrt_ copy_ cpu cuda
softmin erfinv tan atan log2 exp2 expm1 sinh cosh asinh trunc frac signbit isnan isinf isfinite float_power
hypot atan2 copysign xlogy normalize sub_ rsub mul_ true_divide heaviside relu6_ square_ mish_ celu_ selu_ identity
multiply divide subtract negative absolute clip clip_ fmax fmin greater less greater_equal less_equal not_equal
bitwise_and bitwise_or bitwise_xor bitwise_not logical_xor
""".split())
# ops whose tensor arguments after the first give only a dtype / device (x.type_as(y), x.to(y))
DTYPE_OF = {"type_as", "to", "type"}
MOVES = set("""view reshape flatten transpose swapaxes swapdims permute chunk split tensor_split unbind squeeze
unsqueeze expand expand_as view_as reshape_as t repeat stack cat concat concatenate getitem movedim moveaxis
narrow unflatten roll flip select tile broadcast_to split_with_sizes hstack vstack gather index_select unfold
take_along_dim repeat_interleave""".split())
REDUCE = {"mean": 1, "sum": 1, "amax": 1, "amin": 1, "std": 1, "var": 1, "prod": 1, "logsumexp": 1, "max": 1,
          "min": 1, "argmax": 1, "argmin": 1, "norm": 2, "vector_norm": 2, "nansum": 1, "nanmean": 1, "all": 1,
          "any": 1, "count_nonzero": 1}
RESIZE = set("""adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
adaptive_max_pool3d max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d interpolate upsample pad
_pad upsample_nearest upsample_bilinear lp_pool2d local_response_norm pixel_shuffle_free""".split())
CREATE = set("""zeros ones full empty arange rand randn randint linspace logspace eye tensor as_tensor new_zeros
new_ones new_full new_empty new_tensor _constant zeros_like_free""".split())
SIZE_ARITH = {"add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "abs", "pow", "radd", "rsub", "rmul",
              "rfloordiv"}  # python arithmetic on sizes
LIKE = {"zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like"}
NORMS = {"batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"}
MATMUL = {"matmul", "bmm", "mm", "einsum", "scaled_dot_product_attention", "baddbmm", "addmm"}
LINEAR = {"linear", "conv1d", "conv2d", "conv3d", "embedding"}


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return node.target if node.op == "call_module" else ""


def _op_name(node: fx.Node) -> str:
    t = node.target
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return name.lstrip("_") if name.startswith("_") and name not in ("_constant", "_pad") else name


def _size_args(n: fx.Node, name: str) -> list[Any]:
    """The arguments of tensor factory `n` that give its size (not its fill value, range or data)."""
    args = list(n.args)
    if name in ("new_zeros", "new_ones", "new_full", "new_empty"):
        args = args[1:]  # the tensor the method is called on
    if name in ("full", "new_full"):
        return args[:1] + [n.kwargs["size"]] if "size" in n.kwargs else args[:1]
    if name in ("linspace", "logspace"):
        return args[2:3] + [n.kwargs["steps"]] if "steps" in n.kwargs else args[2:3]
    if name == "randint":  # randint([low,] high, size)
        return [a for a in args if isinstance(a, (list, tuple, torch.Size))] + (
            [n.kwargs["size"]] if "size" in n.kwargs else [])
    return args + [v for k, v in n.kwargs.items() if k in ("size", "n", "m")]


def _torch_layer(mod: Any) -> bool:
    """A torch Linear / Conv with torch's own forward (a subclass's forward may compute anything)."""
    return isinstance(mod, (nn.Linear, *_CONV)) and type(mod).forward in (
        nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _along(labels: torch.Tensor, dim: int, where: str, uf: Any = None, freeze_mixed: bool = False) -> torch.Tensor:
    """The labels along `dim`, checked constant (up to unions in `uf`) along every other dim.

    Channels that vary along another dim are mixed there by the consumer. With `freeze_mixed` (a
    conv or linear layer, whose weights do not depend on that dim's size: ECA's 1-d conv run along
    the channels) every class in `labels` is frozen, since removing one would change which channels
    the layer mixes, and the layer's own input channels are frozen; else it is an error."""
    dim = dim % labels.dim()
    labels = labels[tuple(slice(0, 1) if labels.stride(d) == 0 and d != dim else slice(None) for d in range(labels.dim()))]
    moved = labels.movedim(dim, -1).reshape(-1, labels.shape[dim])
    if not bool((moved == moved[:1]).all()):
        roots = uf.roots(moved) if uf is not None else moved
        if not bool((roots == roots[:1]).all()):
            if freeze_mixed and uf is not None:
                uf.freeze(labels)
                return frozen([labels.shape[dim]]).clone()
            raise NetcompressError(f"{where}: channels are mixed with other dimensions; cannot prune its inputs")
        return roots[0].clone()
    return moved[0].clone()


class _LabelInterpreter(fx.Interpreter):
    def __init__(self, gm: nn.Module, graph: "ChannelGraph", ignore: Sequence[str], fx_graph: fx.Graph | None = None) -> None:
        super().__init__(gm, graph=fx_graph) if fx_graph is not None else super().__init__(gm)
        self.g = graph
        self.uf = graph.uf
        self.ignore = ignore
        self.labels: dict[fx.Node, Any] = {}
        self.seen_out: dict[str, torch.Tensor] = {}
        self.seen_in: dict[tuple[str, str, int], torch.Tensor] = {}
        self.size_src: dict[fx.Node, tuple[fx.Node, int | None]] = {}
        self.size_from: dict[fx.Node, list[tuple[fx.Node, int]]] = {}  # sizes computed from read sizes
        self.size_fixed: set[tuple[str, str]] = set()
        self.pending: dict[str, torch.Tensor] = {}  # broadcast parameters, resolved after the pass

    # -- helpers ---------------------------------------------------------------------------
    def _lab(self, a: Any) -> Any:
        """`a` with every node replaced by its labels (tensors) or its real value (sizes, numbers)."""
        def one(x: Any) -> Any:
            if not isinstance(x, fx.Node):
                return x
            lab = self.labels.get(x)
            return lab if lab is not None else self.env.get(x)
        return fx.node.map_aggregate(a, one)

    def _val(self, a: Any) -> Any:
        return fx.node.map_aggregate(a, lambda x: self.env.get(x) if isinstance(x, fx.Node) else x)

    def _ignored(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") or fnmatch.fnmatch(name, p) for p in self.ignore)

    def _frozen_like(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return frozen(value.shape)
        if isinstance(value, (tuple, list)):
            return type(value)(self._frozen_like(v) for v in value) if not hasattr(value, "_fields") else \
                tuple(self._frozen_like(v) for v in value)
        return None

    def _freeze_all(self, a: Any) -> None:
        if isinstance(a, torch.Tensor):
            self.uf.freeze(a)
        elif isinstance(a, (tuple, list)):
            for x in a:
                self._freeze_all(x)
        elif isinstance(a, dict):
            for x in a.values():
                self._freeze_all(x)

    def _tensor_labels(self, node: fx.Node) -> list[torch.Tensor]:
        out = []
        for a in node.all_input_nodes:
            lab = self.labels.get(a)
            if isinstance(lab, torch.Tensor):
                out.append(lab)
        return out

    def _arg(self, n: fx.Node, i: int, name: str, default: Any = None) -> Any:
        if name == "dim" and "axis" in n.kwargs:  # numpy's name, which torch accepts too
            name = "axis"
        return n.kwargs[name] if name in n.kwargs else (n.args[i] if len(n.args) > i else default)

    def _param_name(self, a: Any) -> str | None:
        return a.target if isinstance(a, fx.Node) and a.op == "get_attr" else None

    def _out_ids(self, name: str, n: int) -> torch.Tensor:
        if name not in self.seen_out:  # a module called twice shares its filters
            self.seen_out[name] = self.uf.new(n)
        return self.seen_out[name]

    def add(self, module: str, kind: str, labels: torch.Tensor, dim: int = 0) -> None:
        if kind in ("in", "in_grouped", "param_in"):  # a layer called again: its inputs must agree
            key = (module, kind, dim)
            seen = self.seen_in.setdefault(key, labels)
            if seen is not labels and seen.shape == labels.shape:
                self.uf.union_tensors(seen, labels)
                return
        self.g.members.append(Member(module, kind, labels, dim))

    # -- node rules ------------------------------------------------------------------------
    def _value(self, n: fx.Node) -> Any:
        return super().run_node(n)

    def run_node(self, n: fx.Node) -> Any:
        value = self._value(n)
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
        name = _op_name(n)
        if name == "setitem":
            return self._setitem(n)
        self._note_size(n, name, value)
        if not isinstance(value, (torch.Tensor, tuple, list)) or (
                isinstance(value, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in value)):
            return None  # sizes, shapes, python numbers
        if n.op == "call_module":
            from netcompress.core.graph_layers import leaf_rule

            m = self.g.model.get_submodule(n.target)
            rule = leaf_rule(m) if id(m) not in self.g.not_leaves else None
            if rule is not None:
                return rule(self, n, m, value)
            return self._module_rule(n, m, value)
        if name in CREATE or name == "constant":
            return self._create(n, value)
        if name in LIKE:
            lab = self._lab(n.args[0])
            return lab if isinstance(lab, torch.Tensor) else neutral(value.shape)
        if name in ELEMENTWISE:
            return self._elementwise(n, value)
        if name in ("unfold", "fold") and n.op == "call_function":  # F.unfold / F.fold (Tensor.unfold is a move)
            return self._patches(n, name, self._lab(n.args[0]), value)
        if name in MOVES:
            return self._move(n, value)
        if name in RESIZE:
            lab = self._lab(n.args[0])
            return resize(lab, value.shape, self.uf) if isinstance(lab, torch.Tensor) else neutral(value.shape)
        if name in REDUCE:
            return self._reduce(n, name, value)
        if name in NORMS:
            return self._norm(n, name, value)
        if name in MATMUL:
            return self._matmul(n, name, value)
        if name in LINEAR:
            return self._linear(n, name, value)
        return self._unknown(n, value)

    def _note_size(self, n: fx.Node, name: str, value: Any) -> None:
        """Remember which tensor dimension a size was read from (x.shape[i], x.size(i), unpacking)."""
        if isinstance(value, torch.Size) and n.args and isinstance(n.args[0], fx.Node):
            if name == "size" and len(n.args) == 1 or name == "getattr" and n.args[1:] == ("shape",):
                self.size_src[n] = (n.args[0], None)
        elif isinstance(value, int) and not isinstance(value, bool):
            if name == "size" and len(n.args) == 2 and isinstance(n.args[1], int):
                self.size_src[n] = (n.args[0], n.args[1])
            elif name == "getitem" and n.args[0] in self.size_src and isinstance(n.args[1], int):
                self.size_src[n] = (self.size_src[n.args[0]][0], n.args[1])
            elif "size_of" in n.meta:
                self.size_src[n] = n.meta["size_of"]
            elif name in SIZE_ARITH or "size_from" in n.meta:
                srcs = n.meta.get("size_from") or [src for a in n.args if isinstance(a, fx.Node) for src in (
                    [self.size_src[a]] if a in self.size_src else self.size_from.get(a, []))]
                if srcs and all(d is not None for _, d in srcs):
                    self.size_from[n] = list(srcs)

    def _size_ties(self, sizes: Sequence[Any], out: torch.Tensor) -> None:
        """A reshape to a size read from another tensor's dimension, or computed from such sizes
        (`C // num_heads`): those dimensions and this reshaped one must hold the same channels, else
        all stay (their counts are tied by the code)."""
        for d, s in enumerate(sizes):
            srcs = ([self.size_src[s]] if s in self.size_src else self.size_from.get(s, [])) if isinstance(s, fx.Node) \
                else []
            slabs = [(self.labels.get(t), i) for t, i in srcs if i is not None]
            slabs = [(t, i) for t, i in slabs if isinstance(t, torch.Tensor) and t.dim() > 0]
            if not slabs or out.shape[d] <= 1:
                continue
            a = set().union(*(self._dim_classes(t, i) for t, i in slabs))
            b = self._dim_classes(out, d)
            if a != b and (a | b) - {FROZEN}:
                for t, _ in slabs:
                    self.uf.freeze(t)
                self.uf.freeze(out)

    def _size_attr(self, n: fx.Node, s: int) -> bool:
        """Whether literal `s` is a known size attribute of the module running `n` (reset after pruning)."""
        from netcompress.core.graph_layers import SIZE_ATTRS, size_attr

        owner = _module_of(n)
        try:
            mod = self.g.model.get_submodule(owner) if owner else self.g.model
        except AttributeError:
            return False
        attr = size_attr(mod, s) if type(mod).__name__ in SIZE_ATTRS else None
        if attr is None:
            return False
        if (owner, attr) not in self.size_fixed:
            self.size_fixed.add((owner, attr))
            get = SIZE_ATTRS[type(mod).__name__][attr]
            self.g.fixers.append(lambda new, g, removed: setattr(new.get_submodule(owner), attr,
                                                                 get(new.get_submodule(owner))))
        return True

    def _dim_classes(self, t: torch.Tensor, d: int) -> set[int]:
        """The channel classes laid along dim `d` of labels `t` (empty: none vary along it)."""
        sq = squash(t)
        if sq.shape[d] == 1:
            return set()
        return set(self.uf.roots(torch.unique(sq)).tolist()) - {-1}

    def _channel_free(self, n: fx.Node) -> bool | None:
        """True: no tensor input carries prunable channels (neutral only); False: frozen ones only;
        None: some input has prunable channels."""
        labs = [lab for lab in self._tensor_labels(n)]
        if not labs:
            return True
        roots = torch.cat([self.uf.roots(torch.unique(_compact(lab))) for lab in labs])
        if bool((roots > FROZEN).any()):
            return None
        return bool((roots < 0).all())

    def _unknown(self, n: fx.Node, value: Any) -> Any:
        free = self._channel_free(n)
        if free is not None:  # an op on masks, positions or frozen data: nothing to follow
            return fx.node.map_aggregate(value, lambda v: (neutral(v.shape) if free else frozen(v.shape))
                                         if isinstance(v, torch.Tensor) else None)
        mod = _module_of(n)
        if self._ignored(mod):
            for lab in self._tensor_labels(n):
                self.uf.freeze(lab)
            return self._frozen_like(value)
        hint = (f"pass ignore=[{mod!r}] to leave that module unpruned, or register a rule for it with "
                "netcompress.prune.register_layer" if mod else
                "it is in the model's own forward, so the model cannot be pruned structurally")
        err = NetcompressError(f"op {_op_name(n)!r} ({n.op}) in module {mod or '<top>'!r} is not understood by the "
                               f"channel graph; {hint}")
        err.module = mod  # lets `plan` list it and go on
        raise err

    def _param_labels(self, n: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        if not value.is_floating_point():
            return frozen(value.shape)  # indices, ids, masks
        if self._layer_weight(n):
            return neutral(value.shape)  # `_linear` puts the members on the layer
        big = [d for d, s in enumerate(value.shape) if s > 1]
        if len(big) > 1 and value.dim() >= 2 and value.shape[0] == 1:
            return self._broadcast_param(n, value)
        if len(big) != 1:
            return frozen(value.shape)
        d = big[0]
        ids = self.uf.new(value.shape[d])
        shape = [1] * value.dim()
        shape[d] = -1
        lab = ids.view(shape).expand(value.shape)
        mod = n.target.rpartition(".")[0]
        if self._ignored(mod):
            self.uf.freeze(ids)
        self.add(n.target, "param", ids, d)
        return lab

    def _layer_weight(self, n: fx.Node) -> bool:
        """Whether parameter `n` is the weight of a torch Embedding / Linear / Conv read only by the
        functional form of that layer (recorded eagerly): its channels are the layer's members, so
        a member of its own (an Embedding(1, D) has one dim > 1) would prune it a second way."""
        owner, _, pname = n.target.rpartition(".")
        try:
            mod = self.g.model.get_submodule(owner) if owner and pname == "weight" else None
        except AttributeError:
            return False
        plain = isinstance(mod, nn.Embedding) or _torch_layer(mod)
        return plain and bool(n.users) and all(
            _op_name(u) in LINEAR and self._arg(u, 1, "weight") is n for u in n.users)

    def _broadcast_param(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        """A [1, ...] parameter with several sizes > 1, broadcast over the batch (a positional
        embedding, [1, tokens, D] or [1, C, H, W]): which of its dims holds channels is known only
        from its uses, so every element gets its own label; `_resolve_params` picks the dim after
        the pass (the one its classes vary along), or freezes it when they vary along none or several."""
        ids = self.pending.get(n.target)
        if ids is None or ids.shape != value.shape:
            ids = self.pending[n.target] = self.uf.new(value.numel()).view(value.shape)
            if self._ignored(n.target.rpartition(".")[0]):
                self.uf.freeze(ids)
        return ids

    def _resolve_params(self) -> None:
        for target, ids in self.pending.items():
            sq = squash(self.uf.roots(ids))
            vary = [d for d in range(sq.dim()) if sq.shape[d] > 1]
            if len(vary) != 1:
                self.uf.freeze(ids)  # channels mixed with positions, or no channel dim: it keeps its shape
                continue
            self.add(target, "param", sq.reshape(-1), vary[0])

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = super().run(*args, **kwargs)
        self._resolve_params()
        return out

    def _create(self, n: fx.Node, value: Any) -> Any:
        """A new tensor: frozen when a literal number fixes its size (it cannot follow pruned
        channels), neutral when its size comes from computed sizes."""
        if not isinstance(value, torch.Tensor):
            return None
        if value.numel() <= 1:
            return neutral(value.shape)
        name = _op_name(n)
        if name == "arange":  # the length follows start / end / step: literal only when all three are
            ends = list(n.args[:3]) + [n.kwargs[k] for k in ("start", "end", "step") if k in n.kwargs]
            literal = not any(isinstance(a, fx.Node) for a in ends)
        else:
            flat: list[Any] = []
            fx.node.map_aggregate(_size_args(n, name), lambda x: flat.append(x))
            literal = any(isinstance(s, int) and not isinstance(s, bool) and s > 1 for s in flat)
        return frozen(value.shape) if literal else neutral(value.shape)

    def _setitem(self, n: fx.Node) -> Any:
        dst, src = self._lab(n.args[0]), self._lab(n.args[2])
        if isinstance(dst, torch.Tensor):
            self._index_ties(dst, self._val(n.args[1]))
            if isinstance(src, torch.Tensor):
                self.uf.freeze(src)
        return dst

    def _elementwise(self, n: fx.Node, value: Any) -> Any:
        labs = self._tensor_labels(n)
        if _op_name(n) in DTYPE_OF and n.args and isinstance(n.args[0], fx.Node):
            first = self.labels.get(n.args[0])
            labs = [first] if isinstance(first, torch.Tensor) else []
        if not isinstance(value, torch.Tensor):
            return self._unknown(n, value)
        if not labs:
            return neutral(value.shape)
        base = None
        for lab in labs:
            if lab.shape != value.shape and lab.numel() == value.numel() and lab.dim() != value.dim():
                lab = lab.reshape(value.shape)
            lab = lab.expand(value.shape) if lab.dim() <= value.dim() else lab
            base = lab if base is None else merge(base, lab, self.uf)
        return base

    def _reduce(self, n: fx.Node, name: str, value: Any) -> Any:
        lab = self._lab(n.args[0])
        if not isinstance(lab, torch.Tensor):
            return self._unknown(n, value)
        pos = REDUCE[name]
        other = self._arg(n, pos, "other")
        if name in ("min", "max") and isinstance(other, fx.Node) and isinstance(self.env.get(other), torch.Tensor):
            return self._elementwise(n, value)  # torch.min(a, b): element-wise
        dims = self._arg(n, pos, "dim")
        keep = bool(self._arg(n, pos + 1, "keepdim", False))
        if isinstance(dims, fx.Node):
            dims = self.env.get(dims)
        shapes = [v.shape for v in (value if isinstance(value, tuple) else (value,))]
        if dims is None or (isinstance(dims, (list, tuple)) and not dims):
            out = [neutral(s) for s in shapes]
        else:
            dims = [dims] if isinstance(dims, int) else list(dims)
            if not self.g.width and name in ("mean", "var", "std"):
                # statistics over channels: a hand-written LayerNorm (Cohere's), whose width stays
                sq = squash(lab)
                for d in dims:
                    if sq.shape[d] > 1:
                        self.uf.freeze(sq)
            out = [reduce(lab, dims, keep, s, self.uf) for s in shapes]
        return tuple(out) if isinstance(value, tuple) else out[0]

    def _norm(self, n: fx.Node, name: str, value: torch.Tensor) -> torch.Tensor:
        lab = self._lab(n.args[0])
        dim = -1 if name in ("layer_norm", "rms_norm") else 1
        ch = _along(lab, dim, f"op {name!r} in {_module_of(n) or '<top>'!r}", uf=self.uf)
        params = [self._lab(a) for a in list(n.args[1:]) + list(n.kwargs.values()) if isinstance(a, fx.Node)]
        params = [p for p in params if isinstance(p, torch.Tensor) and p.dim() == 1]
        raw = self._arg(n, 1, "normalized_shape") if dim == -1 else None
        shape = self._val(raw)
        groups = self._val(self._arg(n, 1, "num_groups")) if name == "group_norm" else 1
        fixed = (name in ("layer_norm", "rms_norm", "group_norm") and not self.g.width) or groups != 1 or (
            isinstance(shape, (list, tuple)) and len(shape) != 1) or self._ignored(_module_of(n))
        for p in params:
            self.uf.union_tensors(ch, _compact(p).reshape(-1))
        computed = isinstance(raw, fx.Node) or (isinstance(raw, (list, tuple)) and any(isinstance(v, fx.Node) for v in raw))
        if not fixed and not params and dim == -1 and not computed:
            # no weight to slice, and the shape is no size read from the input: a size attribute of
            # the calling module (OLMo's LayerNorm) that must follow the pruned width, or a literal
            owner = _module_of(n)
            mod = self.g.model.get_submodule(owner) if owner else self.g.model
            attr = getattr(mod, "normalized_shape", None)
            if isinstance(attr, (tuple, list, torch.Size)) and list(attr) == list(shape or ()):
                self._resize_attr(owner, "normalized_shape", ch, type(attr) if type(attr) is not torch.Size else tuple)
            elif isinstance(attr, int) and [attr] == list(shape or ()):
                self._resize_attr(owner, "normalized_shape", ch, int)
            else:
                fixed = True
        if fixed:
            self.uf.freeze(ch)
        return lab

    def _resize_attr(self, owner: str, attr: str, ch: torch.Tensor, kind: type) -> None:
        """After pruning, set module `owner`'s size attribute `attr` to the number of channels of
        `ch` that stay (as an int, or a one-element tuple / list)."""
        labels = ch.clone()

        def fix(new: nn.Module, g: "ChannelGraph", removed: set[int]) -> None:
            kept = int(g.kept(labels, g.removed_table(removed)).sum())
            setattr(new.get_submodule(owner), attr, kept if kind is int else kind([kept]))

        self.g.fixers.append(fix)

    def _matmul(self, n: fx.Node, name: str, value: torch.Tensor) -> torch.Tensor:
        if name == "einsum":
            ops = [self._lab(a) for a in (n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple))
                                          else n.args[1:])]
            letters, out = einsum_letters(n.args[0], [o.dim() for o in ops])
            return contract(list(zip(ops, letters)), out, value.shape, self.uf)
        if name == "scaled_dot_product_attention":
            q, k, v = (self._lab(a) for a in n.args[:3])
            mask = self._lab(self._arg(n, 3, "attn_mask"))
            if isinstance(mask, torch.Tensor):
                self.uf.freeze(mask)
            if k.dim() >= 3 and q.shape[-3] != k.shape[-3]:  # grouped-query attention
                rep = q.shape[-3] // k.shape[-3]
                k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
            b = "ABCDEFGH"[:q.dim() - 2]
            s = contract([(q, b + "le"), (k, b + "se")], b + "ls", q.shape[:-1] + k.shape[-2:-1], self.uf)
            return contract([(s, b + "ls"), (v, b + "sv")], b + "lv", value.shape, self.uf)
        if name in ("addmm", "baddbmm"):
            names = ("input", "batch1", "batch2") if name == "baddbmm" else ("input", "mat1", "mat2")
            bias, a, b = (self._lab(self._arg(n, i, k)) for i, k in enumerate(names))
            la, lb, lo = matmul_letters(a.dim(), b.dim())
            out = contract([(a, la), (b, lb)], lo, value.shape, self.uf)
            return merge(out, bias.expand(value.shape), self.uf) if isinstance(bias, torch.Tensor) else out
        a, b = self._lab(n.args[0]), self._lab(n.args[1])
        la, lb, lo = matmul_letters(a.dim(), b.dim())
        return contract([(a, la), (b, lb)], lo, value.shape, self.uf)

    def _linear(self, n: fx.Node, name: str, value: torch.Tensor) -> torch.Tensor:
        """F.linear / F.conv* / F.embedding: members on the module owning the weight when it is a
        torch layer, else on the parameters themselves."""
        x, w = self._lab(n.args[0]), self._arg(n, 1, "weight")
        wname = self._param_name(w)
        mod_name = wname.rpartition(".")[0] if wname else ""
        mod = self.g.model.get_submodule(mod_name) if wname and wname.endswith(".weight") else None
        if name == "embedding":
            if wname is None:
                return self._unknown(n, value)
            ids = self._out_ids(wname, self.env[w].shape[1])
            if isinstance(mod, nn.Embedding):
                self.add(mod_name, "emb", ids)
            else:
                self.add(wname, "param", ids, 1)
            if self._ignored(mod_name):
                self.uf.freeze(ids)
            self.uf.freeze(x)
            return ids.expand(value.shape)
        if wname is None or not isinstance(x, torch.Tensor):
            if isinstance(x, torch.Tensor):
                self.uf.freeze(x)
            self._freeze_all(self._lab(n.args[1:]))
            return frozen(value.shape)
        b = self._lab(self._arg(n, 2, "bias"))
        if _torch_layer(mod):
            out = self._layer(mod_name, mod, x, value)
            if isinstance(b, torch.Tensor):
                self.uf.union_tensors(_along(out, -1 if name == "linear" else 1, mod_name, uf=self.uf), _compact(b).reshape(-1))
            return out
        wv = self.env[w]
        groups = self._val(self._arg(n, 6, "groups", 1)) if name != "linear" else 1
        dim = -1 if name == "linear" else 1
        in_lab = _along(x, dim, f"op {name!r} in {_module_of(n) or '<top>'!r}", uf=self.uf, freeze_mixed=True)
        ignored = self._ignored(mod_name)
        if groups == 1:
            out_ids = self._out_ids(wname, wv.shape[0])
            self.add(wname, "param", out_ids, 0)
            self.add(wname, "param_in", in_lab, 1)
        elif groups == wv.shape[0] == len(in_lab) * wv.shape[0] // max(len(in_lab), 1) and wv.shape[1] == 1:
            out_ids = in_lab.repeat_interleave(wv.shape[0] // len(in_lab))
            if isinstance(mod, _CONV):  # a conv subclass with its own forward (same padding): `prune` sets its groups
                self.add(mod_name, "dw", out_ids)
            else:
                if not isinstance(self._arg(n, 6, "groups"), fx.Node):
                    self.uf.freeze(in_lab)  # a group count written in the forward (a blur filter's) cannot follow
                self.add(wname, "param", out_ids, 0)
        else:
            self.uf.freeze(in_lab)
            out_ids = self._out_ids(wname, wv.shape[0])
            self.uf.freeze(out_ids)
        if isinstance(b, torch.Tensor):
            self.uf.union_tensors(out_ids, _compact(b).reshape(-1))
        if ignored:
            self.uf.freeze(in_lab)
            self.uf.freeze(out_ids)
        shape = [1] * value.dim()
        shape[dim] = -1
        return out_ids.view(shape).expand(value.shape)

    def _move(self, n: fx.Node, value: Any) -> Any:
        name = _op_name(n)
        if name == "getitem":
            args, kwargs = (self._lab(n.args[0]), self._val(n.args[1])), {}
        elif name in ("gather", "index_select", "take_along_dim"):
            src, dim = self._lab(n.args[0]), self._val(self._arg(n, 1, "dim"))
            if not isinstance(src, torch.Tensor) or not isinstance(dim, int):
                return self._unknown(n, value)
            sq = _compact(src)
            if sq.dim() and sq.shape[dim] > 1 and not bool((sq == sq.narrow(dim, 0, 1)).all()):
                self.uf.freeze(src)  # picking channels by index: they stay
            return src.narrow(dim, 0, 1).expand(value.shape) if src.shape[dim] != value.shape[dim] or src.dim() != \
                value.dim() else src.expand(value.shape) if src.dim() == value.dim() else frozen(value.shape)
        elif name == "repeat_interleave" and (not isinstance(self._val(self._arg(n, 1, "repeats")), int)
                                              or self._val(self._arg(n, 2, "dim")) is None):
            return self._unknown(n, value)  # per-element repeats or a flattening repeat: not a channel move
        elif name in ("view_as", "reshape_as", "expand_as"):
            src, other = self._lab(n.args[0]), self._val(n.args[1])
            out = src.expand(other.shape) if name == "expand_as" else src.reshape(other.shape)
            return out
        else:
            args = (self._lab(n.args[0]),) + tuple(self._scalar_or_lab(a) for a in n.args[1:])
            kwargs = {k: self._scalar_or_lab(v) for k, v in n.kwargs.items()}
        src = args[0] if not isinstance(args[0], (list, tuple)) else None
        if name in ("view", "reshape"):
            self._reshape_ties(n, src, value)
        elif name in ("chunk", "split", "unbind") and isinstance(src, torch.Tensor):
            self._split_ties(n, src, value, args)
        elif name == "getitem" and isinstance(src, torch.Tensor):
            self._index_ties(src, args[1])
        if name in ("cat", "concat", "concatenate") and isinstance(args[0], (list, tuple)) and isinstance(value, torch.Tensor):
            dim = kwargs.get("dim", kwargs.get("axis", args[1] if len(args) > 1 else 0)) % value.dim()
            # torch.cat skips empty 1-d tensors whatever `dim` is (a key/value cache starts as one)
            parts = [p for p in args[0] if not (isinstance(p, torch.Tensor) and p.dim() == 1 and p.numel() == 0)
                     or value.dim() == 1]
            flat = tuple(slice(0, 1) if d != dim and all(p.stride(d) == 0 for p in parts) else slice(None)
                         for d in range(value.dim()))
            out = torch.cat([p[flat] for p in parts], dim)
            if self._cat_ties(parts, dim):
                out = self.uf.roots(out)  # one name per class, so later checks compare classes
            return out.expand(value.shape)  # stays a broadcast view
        if n.op == "call_method":
            method = "reshape" if n.target == "view" else n.target  # label tensors may be non-contiguous
            return getattr(src, method)(*args[1:], **kwargs)
        if name == "getitem":
            return operator.getitem(*args)
        return n.target(*args, **kwargs)

    def _patches(self, n: fx.Node, name: str, lab: Any, value: Any) -> Any:
        """im2col and back. unfold: (B, C, H, W) -> (B, C * k, L), each channel's k kernel positions
        laid one after another along dim 1; fold: the reverse, so the k positions of a channel are
        one channel (united)."""
        if not isinstance(lab, torch.Tensor) or not isinstance(value, torch.Tensor) or lab.dim() < 3 \
                or value.dim() < 3:
            return self._unknown(n, value)  # unbatched inputs
        ch = _along(lab, 1, f"op {name!r} in {_module_of(n) or '<top>'!r}", uf=self.uf)
        shape = [1] * value.dim()
        shape[1] = -1
        if name == "unfold":
            return ch.repeat_interleave(value.shape[1] // len(ch)).view(shape).expand(value.shape)
        blocks = ch.view(value.shape[1], -1)
        self.uf.union_tensors(blocks[:, :1].expand(blocks.shape).reshape(-1), blocks.reshape(-1))
        return blocks[:, 0].clone().view(shape).expand(value.shape)

    def _scalar_or_lab(self, a: Any) -> Any:
        """An argument after a move's source: a 0-d tensor is a size or an index (narrow's length
        held in a tensor), so its value counts; anything else, as `_lab` gives it."""
        if isinstance(a, fx.Node) and isinstance(self.env.get(a), torch.Tensor) and self.env[a].dim() == 0:
            return self.env[a]
        return self._lab(a)

    def _cat_ties(self, parts: Sequence[torch.Tensor], dim: int) -> bool:
        """Parts concatenated along `dim` share every other dim: channels laid along one (a class
        token put before patch tokens) are the same channels in every part, position by position.
        A [1, ...] parameter whose dim is not yet known (register tokens) gets every slice along
        `dim` tied to those channels; other parts whose labels vary along `dim` itself are left to
        the ops that read them. Returns whether parts with different labels were united."""
        squashed = [squash(p) for p in parts if isinstance(p, torch.Tensor)]
        flat = [sq for sq in squashed if sq.shape[dim] == 1]
        tied = False
        for sq in flat[1:]:
            if not (sq.shape == flat[0].shape and torch.equal(sq, flat[0])):
                self.uf.union_tensors(flat[0], sq)
                tied = True
        pending = torch.cat([ids.reshape(-1) for ids in self.pending.values()]) if self.pending else None
        for sq in squashed:  # register tokens ([1, R, D] parameter): each of its rows holds the same channels
            if flat and pending is not None and sq.shape[dim] > 1 and bool(torch.isin(sq, pending).all()) \
                    and sq.narrow(dim, 0, 1).shape == flat[0].shape:
                for i in range(sq.shape[dim]):
                    self.uf.union_tensors(flat[0], sq.narrow(dim, i, 1))
                tied = True
        return tied

    def _reshape_ties(self, n: fx.Node, src: torch.Tensor, value: torch.Tensor) -> None:
        sizes = n.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple, torch.Size)):
            sizes = sizes[0]
        if any(isinstance(s, str) for s in sizes) or len(sizes) != value.dim():
            return
        literal = [isinstance(s, int) and s != -1 and not self._size_attr(n, s) for s in sizes]
        out = src.reshape(value.shape)
        self._size_ties(sizes, out)
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
            if varying:
                if all(literal[d] for d in block if outs[d] > 1):
                    self.uf.freeze(out)  # a literal size: these channels cannot change
                elif len(block) > 1:
                    for d in block:
                        if literal[d] and outs[d] > 1:
                            first = out.narrow(d, 0, 1)
                            self.uf.union_tensors(first, out)
            i, j = i + 1, j + 1

    def _split_ties(self, n: fx.Node, src: torch.Tensor, value: Any, args: Sequence[Any]) -> None:
        name = _op_name(n)
        dim = self._val(self._arg(n, 1 if name == "unbind" else 2, "dim", 0)) % src.dim()
        if dim == 0 or src.shape[dim] == 1:
            return
        parts = list(value)
        if name == "unbind":
            return self.uf.freeze(src) if not bool((_compact(src) == _compact(src).narrow(dim, 0, 1)).all()) else None
        if name == "chunk" and len({p.shape[dim] for p in parts}) == 1:
            k = parts[0].shape[dim]
            for p in range(1, len(parts)):
                self.uf.union_tensors(src.narrow(dim, 0, k), src.narrow(dim, p * k, k))
        elif name == "split" and isinstance(n.args[1], (list, tuple)) and all(isinstance(s, fx.Node) for s in n.args[1]):
            pass  # sizes computed in forward follow the pruned shapes
        elif name == "split" and isinstance(n.args[1], fx.Node) and len({p.shape[dim] for p in parts}) == 1:
            k = parts[0].shape[dim]  # equal parts of a computed size
            for p in range(1, len(parts)):
                self.uf.union_tensors(src.narrow(dim, 0, k), src.narrow(dim, p * k, k))
        else:
            self.uf.freeze(src)

    def _index_ties(self, src: torch.Tensor, idx: Any) -> None:
        idx = idx if isinstance(idx, tuple) else (idx,)
        for d, s in enumerate(idx):
            if s is Ellipsis:
                return
            if d == 0 or (isinstance(s, slice) and s == slice(None)) or s is None:
                continue
            if d < src.dim() and bool((_compact(src) == _compact(src).narrow(d, 0, 1)).all()):
                continue  # no channels along this dim
            self.uf.freeze(src)  # a literal index or slice over channels
            return

    def _layer(self, name: str, m: nn.Module, inp: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Members of a conv / linear layer `m` called on labels `inp`."""
        ignored = self._ignored(name)
        if isinstance(m, _CONV):
            in_lab = _along(inp, 1, f"module {name!r}", uf=self.uf, freeze_mixed=True)
            if ignored:
                self.uf.freeze(in_lab)
            g = m.groups
            if g == 1:
                self.add(name, "in", in_lab)
                out_ids = self._out_ids(name, m.out_channels)
                self.add(name, "out", out_ids)
            elif g == m.in_channels:
                out_ids = in_lab.repeat_interleave(m.out_channels // m.in_channels)
                self.add(name, "dw", out_ids)
            else:
                per_in = in_lab.view(g, -1)
                self.uf.union_tensors(per_in[:1], per_in)
                out_ids = self._out_ids(name, m.out_channels)
                per_out = out_ids.view(g, -1)
                self.uf.union_tensors(per_out[:1], per_out)
                self.add(name, "in_grouped", per_in[0].clone(), 1)
                self.add(name, "out", out_ids)
            if ignored:
                self.uf.freeze(out_ids)
            shape = [1] * value.dim()
            shape[1] = -1
            return out_ids.view(shape).expand(value.shape)
        out_ids = self._out_ids(name, m.weight.shape[0] if isinstance(m, nn.Linear) else m.nf)
        rows = self._rowwise(inp)
        if rows is not None:  # a linear over positions (tokens), applied to every channel alike
            self.uf.freeze(out_ids)
            self.add(name, "in", frozen([inp.shape[-1]]).clone(), 1)
            self.add(name, "out", out_ids)
            return rows.expand(value.shape)
        in_lab = _along(inp, -1, f"module {name!r}", uf=self.uf, freeze_mixed=True)
        if ignored:
            self.uf.freeze(in_lab)
            self.uf.freeze(out_ids)
        self.add(name, "in", in_lab, 1)
        self.add(name, "out", out_ids)
        return out_ids.expand(value.shape)

    def _rowwise(self, inp: torch.Tensor) -> torch.Tensor | None:
        """The labels of `inp` narrowed to one position along its last dim, when channels vary along
        other dims only (a channels-first tensor fed to a linear over tokens, like gMLP's spatial
        gating): each row keeps its channel and the layer's features hold none. Else None."""
        sq = squash(self.uf.roots(squash(inp)))
        if inp.dim() < 2 or sq.shape[-1] != 1 or not bool((sq > FROZEN).any()):
            return None
        return sq

    def _module_rule(self, n: fx.Node, m: nn.Module, value: Any) -> Any:
        name = n.target
        inp = self._lab(n.args[0]) if n.args else None
        ignored = self._ignored(name)
        if isinstance(m, (*_CONV, nn.Linear)) and isinstance(inp, torch.Tensor):
            return self._layer(name, m, inp, value)
        if isinstance(m, (nn.Unfold, nn.Fold)):
            return self._patches(n, "unfold" if isinstance(m, nn.Unfold) else "fold", inp, value)
        if isinstance(m, nn.Embedding):
            ids = self._out_ids(name, m.embedding_dim)
            self.add(name, "emb", ids)
            if ignored:
                self.uf.freeze(ids)
            return ids.expand(value.shape)
        one_d = isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and len(m.normalized_shape) == 1
        gn1 = isinstance(m, nn.GroupNorm) and m.num_groups == 1
        if isinstance(m, _NORM) or one_d or gn1:
            dim = -1 if one_d else 1
            ch = _along(inp, dim, f"module {name!r}", uf=self.uf)
            if ignored or ((one_d or gn1) and not self.g.width):
                self.uf.freeze(ch)
            has_params = any(p is not None for p in m._parameters.values()) or any(b is not None and b.dim() == 1 for b in m._buffers.values())
            if has_params:
                self.add(name, "norm", ch)
            elif one_d:  # nothing to slice, but the size it checks its input against must follow
                self._resize_attr(name, "normalized_shape", ch, tuple)
            elif gn1:
                self._resize_attr(name, "num_channels", ch, int)
            return inp
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)) and isinstance(inp, torch.Tensor):
            self.uf.freeze(inp)  # groups must stay equal / multi-dim shapes are literal: its channels stay
            return inp
        if isinstance(m, _UNARY_MODULES) or isinstance(m, nn.PReLU) and m.num_parameters == 1:
            return inp if isinstance(inp, torch.Tensor) else self._frozen_like(value)
        if isinstance(m, nn.Flatten):
            return inp.flatten(m.start_dim, m.end_dim)
        if isinstance(m, _RESIZE_MODULES) and isinstance(value, torch.Tensor) and isinstance(inp, torch.Tensor):
            return resize(inp, value.shape, self.uf)
        return self._unknown(n, value)


class _RecordedInterpreter(_LabelInterpreter):
    """Runs the label rules over a graph recorded eagerly (values stored on the nodes)."""

    def __init__(self, model: nn.Module, fx_graph: fx.Graph, graph: "ChannelGraph", ignore: Sequence[str]) -> None:
        super().__init__(model, graph, ignore, fx_graph=fx_graph)

    def _value(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            return next(self.args_iter)
        if n.op == "output":
            return None
        return n.meta.get("val")
