"""Layers the channel graph treats as leaves: attention blocks, GPT-2's Conv1D, RMSNorm-style
norms, and any user layer registered with `register_layer` (the extension point).

Attention is pruned as attention (whole heads, or the same dimensions of every head, as in Michel
et al. 2019, "Are Sixteen Heads Really Better than One?"): the q, k, v output slices of a head (a
fused qkv projection included), the matching input slice of the output projection, and for
grouped-query attention a key/value group together with the query heads that read it, form one
channel class. After pruning, the module's size attributes (num_heads, head_dim, ...) are set from
the kept counts; its softmax scale is left as it was. A module matched by its attributes is held to
that layout only when it fits: no parameters outside the named projections and norms, channels along
its input's last dim, and a copy cut by one head runs on the real call; otherwise it is traced through.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.graph import FROZEN, Member, fix_attributes, is_conv1d_t, member_slices
from netcompress.core.graph_ops import frozen

if TYPE_CHECKING:
    from netcompress.core.graph import ChannelGraph
    from netcompress.core.graph_rules import _LabelInterpreter

Rule = Callable[["_LabelInterpreter", fx.Node, nn.Module, Any], Any]


# -- the extension point ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRule:
    """How a custom layer's channels couple (see `register_layer`)."""

    kind: str
    channel_dim: int = 1
    params: tuple[tuple[str, int], ...] = ()
    weight: str = "weight"
    weight_dims: tuple[int, int] = (0, 1)
    bias: str | None = "bias"
    fix: Callable[[nn.Module], None] | None = None
    rule: Callable[..., Any] | None = None


_REGISTRY: dict[type, LayerRule] = {}


def register_layer(cls: type, kind: str = "elementwise", *, channel_dim: int = 1, params: dict[str, int] | None = None,
                   weight: str = "weight", weight_dims: tuple[int, int] = (0, 1), bias: str | None = "bias",
                   fix: Callable[[nn.Module], None] | None = None, rule: Callable[..., Any] | None = None) -> None:
    """Tell the channel graph how the channels of `cls` (a layer the graph does not know) couple.

    The layer then becomes a leaf: its forward is not traced, the rule below stands for it.

    Args:
        cls: the module class (instances of subclasses match too).
        kind: 'elementwise' (output channels are its input channels, e.g. a learned per-channel
            scale; `params` lists its per-channel parameters and the dim they index), 'linear'
            (maps input channels along `channel_dim` to new output channels through `weight`, whose
            (output, input) dims are `weight_dims`, plus an optional `bias`), or 'fixed' (its input and
            output channels stay, like `ignore=`).
        channel_dim: the channel dimension of its input and output.
        params: {parameter name: the dim that indexes channels} for 'elementwise'.
        fix: called with the pruned module to update its size attributes.
        rule: advanced: `rule(ctx, module, inputs)` returning the output labels, where `ctx` is a
            `LayerContext` and `inputs` the input labels (see `LayerContext`).

    Example:
        class Scale(nn.Module):
            def __init__(self, c): super().__init__(); self.g = nn.Parameter(torch.ones(c))
            def forward(self, x): return x * self.g.view(1, -1, 1, 1) ** 2
        register_layer(Scale, "elementwise", params={"g": 0})
    """
    if kind not in ("elementwise", "linear", "fixed") and rule is None:
        raise NetcompressError(f"register_layer: kind must be 'elementwise', 'linear' or 'fixed', got {kind!r}")
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise NetcompressError(f"register_layer: {cls!r} is not an nn.Module class")
    _REGISTRY[cls] = LayerRule(kind, channel_dim, tuple((params or {}).items()), weight, weight_dims, bias, fix, rule)


def unregister_layer(cls: type) -> None:
    """Forget a rule given with `register_layer`."""
    _REGISTRY.pop(cls, None)


class LayerContext:
    """What a custom `rule` may do: read the channels of an input, make new channels, tie or freeze
    channels, and declare which parameter slices follow them."""

    def __init__(self, it: "_LabelInterpreter", name: str) -> None:
        self._it, self.name = it, name

    def channels(self, labels: torch.Tensor, dim: int) -> torch.Tensor:
        """The channel labels of an input along `dim` (one per channel)."""
        from netcompress.core.graph_rules import _along
        return _along(labels, dim, f"module {self.name!r}", uf=self._it.uf)

    def new(self, n: int) -> torch.Tensor:
        """`n` fresh channels."""
        return self._it._out_ids(self.name, n)

    def tie(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Channels `a[i]` and `b[i]` must be removed together."""
        self._it.uf.union_tensors(a, b)

    def freeze(self, a: torch.Tensor) -> None:
        self._it.uf.freeze(a)

    def param(self, pname: str, labels: torch.Tensor, dim: int, input_side: bool = False) -> None:
        """Parameter `pname` of this module is indexed by `labels` along `dim`."""
        self._it.add(f"{self.name}.{pname}", "param_in" if input_side else "param", labels, dim)

    def output(self, labels: torch.Tensor, dim: int, value: torch.Tensor) -> torch.Tensor:
        """Output labels: `labels` along `dim` of a value shaped like `value`."""
        shape = [1] * value.dim()
        shape[dim] = -1
        return labels.reshape(shape).expand(value.shape)


def _inputs(it: "_LabelInterpreter", n: fx.Node) -> list[Any]:
    return [it._lab(a) for a in list(n.args) + list(n.kwargs.values())]


def _first_tensor(it: "_LabelInterpreter", n: fx.Node, names: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """(node, labels) of the main input: the first named kwarg in `names`, else the first tensor arg."""
    for k in names:
        if isinstance(n.kwargs.get(k), fx.Node):
            return n.kwargs[k], it._lab(n.kwargs[k])
    for a in n.args:
        if isinstance(a, fx.Node) and isinstance(it.labels.get(a), torch.Tensor):
            return a, it.labels[a]
    raise NetcompressError(f"module {n.target!r}: no tensor input")


def _freeze_others(it: "_LabelInterpreter", n: fx.Node, main: fx.Node) -> None:
    for a in n.all_input_nodes:
        if a is not main and isinstance(it.labels.get(a), torch.Tensor):
            it.uf.freeze(it.labels[a])


def _registered_rule(spec: LayerRule) -> Rule:
    def rule(it: "_LabelInterpreter", n: fx.Node, m: nn.Module, value: Any) -> Any:
        name = n.target
        ctx = LayerContext(it, name)
        if spec.fix is not None:
            it.g.fixers.append(lambda new, g, removed: spec.fix(new.get_submodule(name)))
        if spec.rule is not None:
            return spec.rule(ctx, m, _inputs(it, n))
        main, lab = _first_tensor(it, n)
        _freeze_others(it, n, main)
        if spec.kind == "fixed" or it._ignored(name):
            it.uf.freeze(lab)
            return it._frozen_like(value)
        ch = ctx.channels(lab, spec.channel_dim)
        if spec.kind == "elementwise":
            for pname, d in spec.params:
                ctx.param(pname, ch, d)
            if not isinstance(value, torch.Tensor) or value.shape != it.env[main].shape:
                raise NetcompressError(f"module {name!r}: registered as 'elementwise' but its output shape differs")
            return lab
        w = getattr(m, spec.weight)
        out = ctx.new(w.shape[spec.weight_dims[0]])
        ctx.param(spec.weight, out, spec.weight_dims[0])
        ctx.param(spec.weight, ch, spec.weight_dims[1], input_side=True)
        if spec.bias and getattr(m, spec.bias, None) is not None:
            ctx.param(spec.bias, out, 0)
        return ctx.output(out, spec.channel_dim, value)
    return rule


# -- built-in leaves ----------------------------------------------------------------------------
def _conv1d_rule(it: "_LabelInterpreter", n: fx.Node, m: nn.Module, value: Any) -> Any:
    main, lab = _first_tensor(it, n)
    return it._layer(n.target, m, lab, value)


def _is_linear_like(m: nn.Module) -> bool:
    """An nn.Linear subclass with its own forward that computes the linear layer all the same
    (Falcon's ``x @ self.weight.T + self.bias``): checked on a fixed probe input, so a subclass that
    adds anything (a low-rank update, a scale, quantization) is traced through instead."""
    if not isinstance(m, nn.Linear) or type(m).forward is nn.Linear.forward or list(m.children()):
        return False
    w = m.weight
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point() or w.is_meta:
        return False
    probe = torch.randn(2, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    try:
        with torch.no_grad():
            out = m(probe)
            ref = nn.functional.linear(probe, w, m.bias)
    except Exception:  # a forward that needs more than one tensor is not a plain linear layer
        return False
    return isinstance(out, torch.Tensor) and out.shape == ref.shape and bool(torch.allclose(out, ref, rtol=1e-4, atol=1e-5))


def is_rmsnorm_like(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (type(m).__name__.endswith("RMSNorm") and not isinstance(m, nn.RMSNorm) and isinstance(w, torch.Tensor)
            and w.dim() == 1 and not list(m.children()))


def _norm_rule(it: "_LabelInterpreter", n: fx.Node, m: nn.Module, value: Any) -> Any:
    main, lab = _first_tensor(it, n)
    from netcompress.core.graph_rules import _along
    ch = _along(lab, -1, f"module {n.target!r}", uf=it.uf)
    if it._ignored(n.target) or not it.g.width:
        it.uf.freeze(ch)
    it.add(n.target, "norm", ch)
    return lab


@dataclass
class AttnSpec:
    """Where a head's slices live: (submodule, offset) of q, k and v outputs, the output projection
    (None: the module returns the heads' concatenation), counts, and the attribute update."""

    q: tuple[str, int]
    k: tuple[str, int]
    v: tuple[str, int]
    o: str | None
    heads: int
    kv_heads: int
    head_dim: int
    fix: Callable[[nn.Module, int, int, int], None]
    rotary: bool = False
    inputs: tuple[str, ...] = ("hidden_states",)
    head_norms: tuple[str, ...] = ()  # norms over head_dim (qk-norm)
    q_norms: tuple[str, ...] = ()  # norms over the heads' concatenation
    gates: tuple[str, ...] = ()  # projections from the input to the q layout


def _reject(it: "_LabelInterpreter", n: fx.Node, m: nn.Module, value: Any) -> Any:
    """Mark attention leaf `m` as not fitting its layout (channels not along its input's last dim,
    or the cut of `_cut_runs` fails on the real call): `run_labels` builds the graph again with it
    traced through. Until then its inputs and outputs are frozen, so the pass goes on and finds
    every such module at once."""
    it.g.rejected.add(id(m))
    it._freeze_all(it._tensor_labels(n))
    return it._frozen_like(value)


def _cut(model: nn.Module, path: str, kind: str, keep: torch.Tensor) -> None:
    """Keep the `keep` positions of the tensors a `kind` member of module `path` indexes (the
    tensors `member_slices` names for `ChannelGraph.prune`), then reset the module's size attributes."""
    idx = torch.nonzero(keep).flatten()
    for mod_name, pname, dim, _ in member_slices(model, Member(path, kind, keep.long())):
        mod = model.get_submodule(mod_name)
        t = getattr(mod, pname, None)
        if not isinstance(t, torch.Tensor) or t.dim() <= dim or t.shape[dim] != len(keep):
            continue
        v = t.detach().index_select(dim, idx.to(t.device)).clone()
        setattr(mod, pname, nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v)
    fix_attributes(model.get_submodule(path))


def _cut_runs(m: nn.Module, spec: "AttnSpec", mode: str, lays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              args: tuple, kwargs: dict, value: Any) -> bool:
    """Whether a copy of attention module `m`, cut as pruning would cut it (its last key/value
    group of heads, or the last dim of every head, out of q, k, v, gates, norms and the output
    projection, then `spec.fix`), still runs on the real call's arguments and gives the output
    shape pruning promises. A module whose forward does not follow the spec's attributes (a
    reshape to its input width, a size kept in an attribute the spec does not know) fails here
    and is traced through instead, where such sizes freeze what they fix."""
    q_lay, kv_lay, per_dim = lays
    last = int(per_dim[-1]) if mode == "head_dim" else int(kv_lay[-1])
    if (spec.head_dim if mode == "head_dim" else spec.kv_heads) < 2:
        return True  # nothing can be cut
    first = value[0] if isinstance(value, (tuple, list)) else value
    args = tuple(a if _plain(a) else None for a in args)  # a cache the real call has already filled: left out
    kwargs = {k: v for k, v in kwargs.items() if _plain(v)}
    if _out_shape(copy.deepcopy(m), args, kwargs) != list(first.shape):  # the model itself is never called
        return True  # the module does not run on these arguments alone: nothing to learn from the cut one
    keep_q, keep_kv = q_lay != last, kv_lay != last
    keep_d = per_dim != last if mode == "head_dim" else torch.ones(len(per_dim), dtype=torch.bool)
    new = copy.deepcopy(m)
    rows: dict[str, torch.Tensor] = {}
    for (path, off), keep in ((spec.q, keep_q), (spec.k, keep_kv), (spec.v, keep_kv)):
        mod = new.get_submodule(path)
        mask = rows.setdefault(path, torch.ones(mod.nf if is_conv1d_t(mod) else mod.out_features, dtype=torch.bool))
        mask[off:off + len(keep)] &= keep
    rows.update({path: keep_q for path in spec.gates})
    for path, keep in rows.items():
        _cut(new, path, "out", keep)
    norms = [(path, keep_q) for path in spec.q_norms]
    for path in spec.head_norms:
        w = getattr(m.get_submodule(path), "weight", None)
        whole = keep_kv if path.startswith("k") else keep_q
        if isinstance(w, torch.Tensor):
            norms.append((path, keep_d if w.shape[0] == len(keep_d) else whole))
    for path, keep in norms:
        _cut(new, path, "norm", keep)
    if spec.o is not None:
        _cut(new, spec.o, "in", keep_q)
    h, kv, hd = spec.heads, spec.kv_heads, spec.head_dim
    spec.fix(new, *((h - h // kv, kv - 1, hd) if mode == "heads" else (h, kv, hd - 1)))
    want = list(first.shape) if spec.o is not None else list(first.shape[:-1]) + [int(keep_q.sum())]
    return _out_shape(new, args, kwargs) == want


def _unspecified_parameters(m: nn.Module, spec: "AttnSpec") -> bool:
    """Whether attention module `m` holds parameters in a submodule its spec does not name
    (SegFormer's sequence-reduction conv and norm): pruning the module as its spec says would leave
    them the wrong size."""
    known = [k for k in (spec.q[0], spec.k[0], spec.v[0], spec.o, *spec.head_norms, *spec.q_norms, *spec.gates) if k]
    return any(next(sub.parameters(recurse=False), None) is not None
               and not any(name == k or name.startswith(k + ".") for k in known)
               for name, sub in m.named_modules())


def _plain(v: Any) -> bool:
    """Tensors, numbers, strings and None, or containers of them (not objects such as a cache)."""
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(x) for x in v.values())
    return v is None or isinstance(v, (torch.Tensor, int, float, str, bool, torch.dtype))


def _out_shape(m: nn.Module, args: tuple, kwargs: dict) -> list[int] | None:
    """The shape of `m`'s first output tensor on copies of `args` / `kwargs` (no grad), or None."""
    try:
        with torch.no_grad():
            out = m(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    except Exception:
        return None
    out = out[0] if isinstance(out, (tuple, list)) else out
    return list(out.shape) if isinstance(out, torch.Tensor) else None


def _setattrs(mod: nn.Module, **kw: int) -> None:
    for k, v in kw.items():
        if hasattr(mod, k):
            setattr(mod, k, v)


def _timm_spec(m: nn.Module) -> AttnSpec | None:
    if not (type(m).__module__.startswith("timm.") and isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "proj", None), nn.Linear) and hasattr(m, "num_heads") and hasattr(m, "head_dim")):
        return None
    h, hd = m.num_heads, m.head_dim
    if m.qkv.out_features != 3 * h * hd or "rope" in inspect.signature(m.forward).parameters:
        return None

    def fix(mod: nn.Module, heads: int, kv: int, head_dim: int) -> None:
        _setattrs(mod, num_heads=heads, head_dim=head_dim, attn_dim=heads * head_dim)

    norms = tuple(k for k in ("q_norm", "k_norm") if not isinstance(getattr(m, k, None), (nn.Identity, type(None))))
    return AttnSpec(("qkv", 0), ("qkv", h * hd), ("qkv", 2 * h * hd), "proj", h, h, hd, fix, inputs=("x",),
                    head_norms=norms, q_norms=("norm",) if not isinstance(getattr(m, "norm", None), (nn.Identity, type(None))) else (),
                    gates=("gate",) if isinstance(getattr(m, "gate", None), nn.Linear) else ())


def _hf_spec(m: nn.Module) -> AttnSpec | None:
    if not type(m).__module__.startswith("transformers."):
        return None
    lin = lambda *names: all(isinstance(getattr(m, k, None), nn.Linear) for k in names)  # noqa: E731
    if lin("query", "key", "value") and hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size"):
        h, hd = m.num_attention_heads, m.attention_head_size

        def fix_bert(mod: nn.Module, heads: int, kv: int, head_dim: int) -> None:
            _setattrs(mod, num_attention_heads=heads, attention_head_size=head_dim, all_head_size=heads * head_dim)
        return AttnSpec(("query", 0), ("key", 0), ("value", 0), None, h, h, hd, fix_bert)
    if lin("q_lin", "k_lin", "v_lin", "out_lin") and hasattr(m, "n_heads"):
        h = m.n_heads
        hd = m.q_lin.out_features // h

        def fix_distil(mod: nn.Module, heads: int, kv: int, head_dim: int) -> None:
            _setattrs(mod, n_heads=heads, dim=heads * head_dim, attention_head_size=head_dim)
        return AttnSpec(("q_lin", 0), ("k_lin", 0), ("v_lin", 0), "out_lin", h, h, hd, fix_distil,
                        inputs=("query", "hidden_states"))
    if is_conv1d_t(getattr(m, "c_attn", nn.Identity())) and is_conv1d_t(getattr(m, "c_proj", nn.Identity())) \
            and hasattr(m, "split_size") and not getattr(m, "is_cross_attention", False):
        h, hd = m.num_heads, m.head_dim

        def fix_gpt2(mod: nn.Module, heads: int, kv: int, head_dim: int) -> None:
            _setattrs(mod, num_heads=heads, head_dim=head_dim, split_size=heads * head_dim, embed_dim=heads * head_dim)
        return AttnSpec(("c_attn", 0), ("c_attn", h * hd), ("c_attn", 2 * h * hd), "c_proj", h, h, hd, fix_gpt2)
    if lin("q_proj", "k_proj", "v_proj", "o_proj") and isinstance(getattr(m, "head_dim", None), int):
        hd = m.head_dim
        h, kv = m.q_proj.out_features // hd, m.k_proj.out_features // hd
        rotary = "position_embeddings" in inspect.signature(m.forward).parameters

        def fix_llama(mod: nn.Module, heads: int, kvh: int, head_dim: int) -> None:
            _setattrs(mod, head_dim=head_dim, num_key_value_groups=heads // kvh, num_heads=heads,
                      num_attention_heads=heads, num_key_value_heads=kvh, num_kv_heads=kvh)
        norms = tuple(k for k in ("q_norm", "k_norm") if getattr(m, k, None) is not None
                      and not isinstance(getattr(m, k), nn.Identity))
        return AttnSpec(("q_proj", 0), ("k_proj", 0), ("v_proj", 0), "o_proj", h, kv, hd, fix_llama, rotary=rotary,
                        head_norms=norms)
    return None


def attention_spec(m: nn.Module) -> AttnSpec | None:
    """The head layout of a known attention module, or None."""
    return _timm_spec(m) or _hf_spec(m)


def _attention_rule(it: "_LabelInterpreter", n: fx.Node, m: nn.Module, value: Any) -> Any:
    from netcompress.core.graph_rules import _along

    spec = attention_spec(m)
    name = n.target
    main, lab = _first_tensor(it, n, spec.inputs)
    if id(m) in it.g.rejected or _unspecified_parameters(m, spec):
        return _reject(it, n, m, value)
    _freeze_others(it, n, main)
    try:
        x = _along(lab, -1, f"module {name!r}", uf=it.uf)
    except NetcompressError:  # channels not along the input's last dim (channels first): not the spec's layout
        return _reject(it, n, m, value)
    mode = "none" if it._ignored(name) else it.g.attention
    if mode == "head_dim" and spec.rotary:
        raise NetcompressError(f"module {name!r}: head_dim pruning of rotary attention is not supported "
                               "(use attention='heads')")
    h, kv, hd = spec.heads, spec.kv_heads, spec.head_dim
    if mode == "heads":
        ids = it.uf.new(kv)
        q_lay, kv_lay = ids.repeat_interleave((h // kv) * hd), ids.repeat_interleave(hd)
        per_dim = torch.zeros(hd, dtype=torch.long)
    elif mode == "head_dim":
        ids = it.uf.new(hd)
        q_lay, kv_lay, per_dim = ids.repeat(h), ids.repeat(kv), ids
    else:
        q_lay, kv_lay = torch.zeros(h * hd, dtype=torch.long), torch.zeros(kv * hd, dtype=torch.long)
        per_dim = torch.zeros(hd, dtype=torch.long)
    if mode != "none":
        args, kwargs = it.fetch_args_kwargs_from_env(n)
        if not _cut_runs(m, spec, mode, (q_lay, kv_lay, per_dim), args, kwargs, value):
            return _reject(it, n, m, value)
    outs: dict[str, torch.Tensor] = {}
    for (path, off), lay in ((spec.q, q_lay), (spec.k, kv_lay), (spec.v, kv_lay)):
        mod = m.get_submodule(path)
        size = mod.nf if is_conv1d_t(mod) else mod.out_features
        buf = outs.setdefault(path, torch.full((size,), FROZEN, dtype=torch.long))
        buf[off:off + len(lay)] = lay
    for path in spec.gates:
        outs[path] = q_lay
    for path, lay in outs.items():
        full = f"{name}.{path}"
        it.add(full, "in", x, 1)
        it.add(full, "out", lay)
    for path in spec.head_norms:
        w = getattr(m.get_submodule(path), "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        # one head's width (Qwen3, Gemma 3) or the whole projection's (OLMo 2: q over h heads, k over kv)
        whole = kv_lay if path.startswith("k") else q_lay
        if w.shape[0] == hd:
            it.add(f"{name}.{path}", "norm", per_dim)
        elif w.shape[0] == len(whole):
            it.add(f"{name}.{path}", "norm", whole)
        else:
            raise NetcompressError(f"module {name}.{path!r}: a norm of width {w.shape[0]} fits neither one head "
                                   f"({hd}) nor the projection ({len(whole)}); pass ignore=[{name!r}]")
    for path in spec.q_norms:
        it.add(f"{name}.{path}", "norm", q_lay)
    if spec.o is not None:
        o = m.get_submodule(spec.o)
        full = f"{name}.{spec.o}"
        it.add(full, "in", q_lay, 1)
        out_ids = it._out_ids(full, o.nf if is_conv1d_t(o) else o.out_features)
        it.add(full, "out", out_ids)
        if it._ignored(name):
            it.uf.freeze(out_ids)
            it.uf.freeze(x)
    else:
        out_ids = q_lay
    first = value[0] if isinstance(value, (tuple, list)) else value
    out = out_ids.expand(first.shape)

    def fix(new: nn.Module, g: "ChannelGraph", removed: set[int]) -> None:
        kq, kk = int(_kept(g, q_lay, removed)), int(_kept(g, kv_lay, removed))
        if mode == "heads":
            spec.fix(new.get_submodule(name), kq // hd, kk // hd, hd)
        elif mode == "head_dim":
            spec.fix(new.get_submodule(name), h, kv, kq // h)
    it.g.fixers.append(fix)
    if isinstance(value, (tuple, list)):
        return type(value)([out] + [it._frozen_like(v) for v in value[1:]])
    return out


def _kept(g: "ChannelGraph", labels: torch.Tensor, removed: set[int]) -> int:
    if not removed:
        return len(labels)
    return int((~torch.isin(g.uf.roots(labels), torch.tensor(sorted(removed), dtype=torch.long))).sum())


def _mha_rule(it: "_LabelInterpreter", n: fx.Node, m: nn.MultiheadAttention, value: Any) -> Any:
    """nn.MultiheadAttention: its inner width is its input width, so heads are blocks of the
    residual stream (every block's attention removes the same heads)."""
    from netcompress.core.graph_rules import _along

    name = n.target
    q, k, v = (n.args + tuple(n.kwargs.get(a) for a in ("query", "key", "value")))[:3] if len(n.args) >= 3 else (
        n.kwargs.get("query", n.args[0] if n.args else None), n.kwargs.get("key"), n.kwargs.get("value"))
    lab = it._lab(q)
    x = _along(lab, -1, f"module {name!r}", uf=it.uf)
    others = [a for a in n.all_input_nodes if a is not q]
    for a in others:
        if isinstance(it.labels.get(a), torch.Tensor) and not (a is k or a is v):
            it.uf.freeze(it.labels[a])
    h, hd = m.num_heads, m.head_dim
    mode = "none" if it._ignored(name) or not m._qkv_same_embed_dim or k is not q or v is not q else it.g.attention
    if mode == "heads":
        for i in range(h):
            it.uf.union_all(x[i * hd:(i + 1) * hd])
    elif mode == "head_dim":
        for d in range(hd):
            it.uf.union_all(x[d::hd])
    else:
        it.uf.freeze(x)
        for a in (k, v):
            if isinstance(it.labels.get(a), torch.Tensor):
                it.uf.freeze(it.labels[a])
    three = torch.cat([x, x, x])
    it.add(f"{name}.in_proj_weight", "param", three, 0)
    it.add(f"{name}.in_proj_weight", "param_in", x, 1)
    if m.in_proj_bias is not None:
        it.add(f"{name}.in_proj_bias", "param", three, 0)
    it.add(f"{name}.out_proj", "in", x, 1)
    out_ids = it._out_ids(f"{name}.out_proj", m.out_proj.out_features)
    it.add(f"{name}.out_proj", "out", out_ids)

    def fix(new: nn.Module, g: "ChannelGraph", removed: set[int]) -> None:
        mod = new.get_submodule(name)
        e = mod.out_proj.in_features
        mod.embed_dim = mod.kdim = mod.vdim = e
        if mode == "heads":
            mod.num_heads = e // hd
        elif mode == "head_dim":
            mod.head_dim = e // h
    it.g.fixers.append(fix)
    first = value[0] if isinstance(value, (tuple, list)) else value
    out = out_ids.expand(first.shape)
    if isinstance(value, (tuple, list)):
        return type(value)([out] + [frozen(v.shape) if isinstance(v, torch.Tensor) else None for v in value[1:]])
    return out


# Size attributes some model classes use as literal reshape sizes: read at trace time, reset after
# pruning from the pruned layers.
SIZE_ATTRS: dict[str, dict[str, Callable[[nn.Module], int]]] = {
    "VisionTransformer": {"hidden_dim": lambda m: m.conv_proj.out_channels},  # torchvision
}


def size_attr(m: nn.Module, value: int) -> str | None:
    """The name of `m`'s size attribute equal to `value`, if `m`'s class has one in SIZE_ATTRS."""
    for attr in SIZE_ATTRS.get(type(m).__name__, {}):
        if getattr(m, attr, None) == value:
            return attr
    return None


def leaf_rule(m: nn.Module) -> Rule | None:
    """The rule standing for module `m` when it is a leaf of the channel graph, else None."""
    for cls in type(m).__mro__:
        if cls in _REGISTRY:
            return _registered_rule(_REGISTRY[cls])
    if isinstance(m, nn.MultiheadAttention):
        return _mha_rule
    if is_conv1d_t(m) or _is_linear_like(m):
        return _conv1d_rule
    if is_rmsnorm_like(m):
        return _norm_rule
    if attention_spec(m) is not None:
        return _attention_rule
    return None


def fix_hf_config(model: nn.Module) -> None:
    """Set a Hugging Face config's size fields from the pruned modules, where they are uniform."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return
    heads, kvs, dims, inter = set(), set(), set(), set()
    for name, m in model.named_modules():
        spec = attention_spec(m)
        if spec is not None:
            heads.add(spec.heads)
            kvs.add(spec.kv_heads)
            dims.add(spec.head_dim)
        for up in ("up_proj", "intermediate.dense", "c_fc", "lin1", "fc1"):
            if name.endswith(up):
                inter.add(m.nf if is_conv1d_t(m) else getattr(m, "out_features", None))
    try:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:  # a model without one input embedding (CANINE hashes characters)
        emb = None
    one = lambda s: next(iter(s)) if len(s) == 1 else None  # noqa: E731
    updates = {"num_attention_heads": one(heads), "n_head": one(heads), "n_heads": one(heads),
               "num_key_value_heads": one(kvs), "head_dim": one(dims), "intermediate_size": one(inter),
               "n_inner": one(inter), "hidden_dim": one(inter)}
    if isinstance(emb, nn.Embedding):
        updates.update(hidden_size=emb.embedding_dim, n_embd=emb.embedding_dim, dim=emb.embedding_dim)
    for k, v in updates.items():
        if v is not None and getattr(cfg, k, None) is not None and isinstance(getattr(cfg, k), int):
            try:
                setattr(cfg, k, v)
            except (AttributeError, TypeError):  # a read-only alias (e.g. GPT-2's n_embd -> hidden_size)
                pass
