"""Exit heads after named modules of any CNN: `early_exit(model, exits=[...])`.

Nobody edits the backbone: training reads the exit features with forward hooks
(`netcompress.core.Taps`). For inference with samples leaving the batch, the backbone must be
computed stage by stage. Design choice: we trace the backbone once with `torch.fx` (exit modules
kept as leaves) and cut the graph at the exit nodes into segments; each segment is a small
GraphModule sharing the backbone's modules and takes / returns exactly the tensors that are live
across the cut (residual branches included). The segments are a runtime cache, never the model:
the model stays the plain backbone plus heads and is saved as such. When torch.fx cannot trace the
backbone (a Hugging Face model) or a non-tensor value (``x.size(0)``) would cross a cut, the graph
comes from `torch.export` (flat ATen, dynamic batch, parameters read by name from the backbone);
there sizes, and values made of sizes and parameters alone (an attention mask), are computed again
after a cut instead of crossing it. When neither works (a branch on the input's values), we fall
back to a forward pass with a hook that stops at the exit; that recomputes the prefix for the
samples still in flight (correct, but the saving is smaller) and `segment_mode(model)` reports
which one is used.
"""
from __future__ import annotations

import copy
import functools
import inspect
import weakref
from typing import Any, Callable, Literal, Sequence

import torch
import torch.fx as fx
from pydantic import Field
from torch import nn

from netcompress.core.batch import call
from netcompress.core.batch import head as batch_head
from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.core.taps import Taps, resolve_module
from netcompress.dynamic.base import MultiExitBase
from netcompress.measure.metrics import FrozenParameters, MacCounter


class HeadConfig(Config):
    """An exit head: average pooling to `pool` x `pool`, flatten, then a classifier with one
    hidden layer of `hidden` units (0: a single Linear). Shallow-Deep Networks use a similar
    pooled linear head."""

    pool: int = Field(6, ge=1, description="average-pool the features to pool x pool")
    hidden: int = Field(128, ge=0, description="hidden units of the head (0: one Linear)")
    tokens: Literal["cls", "mean", "flatten"] = Field(
        "cls", description="token features (T, D) of a transformer: a LayerNorm + classifier on the class "
                           "token, or on the mean over the tokens, or flatten all")


def make_head(feature_shape: Sequence[int], num_classes: int, cfg: HeadConfig) -> nn.Sequential:
    """A head for features of shape (C, H, W) or (F,), built only from savable module types."""
    layers: list[nn.Module] = []
    if len(feature_shape) == 3:
        c, h, w = feature_shape
        ph, pw = min(cfg.pool, h), min(cfg.pool, w)
        # a plain AvgPool2d when the size divides evenly: same result, faster on CPU than adaptive
        # pooling; none at all (an Identity, so the layer indices stay) when pool >= the map
        pool: nn.Module = (nn.Identity() if (ph, pw) == (h, w) else nn.AvgPool2d((h // ph, w // pw))
                           if h % ph == 0 and w % pw == 0 else nn.AdaptiveAvgPool2d((ph, pw)))
        layers += [pool, nn.Flatten()]
        d = c * ph * pw
    elif len(feature_shape) == 2 and cfg.tokens in ("cls", "mean"):
        from netcompress.models.transformers import ClassToken, TokenMean

        layers += [ClassToken() if cfg.tokens == "cls" else TokenMean(), nn.LayerNorm(feature_shape[1])]
        d = int(feature_shape[1])
    else:
        layers.append(nn.Flatten())
        d = int(torch.Size(feature_shape).numel())
    if cfg.hidden > 0:
        layers += [nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, num_classes)]
    else:
        layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def _segment_step(segs: Sequence[Callable], heads: Sequence[nn.Module], last: int, k: int,
                  state: Any) -> tuple[Any, torch.Tensor]:
    """Stage k on cut segments: (live tensors after cut k, exit k's logits); the last stage returns
    ((), the backbone's output)."""
    if k == last:
        return (), segs[k](*state)
    live, feat = segs[k](*state)
    return tuple(live), heads[k](feat)


class _Stop(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class MultiExitModel(MultiExitBase):
    """A backbone (stored as the child `backbone`) with exit heads (`heads`) after named modules.

    Attributes:
        exit_names: qualified backbone module names, in forward order, one per early exit.
    """

    def __init__(self, backbone: nn.Module, exit_names: Sequence[str], heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.exit_names = list(exit_names)

    @property
    def num_exits(self) -> int:
        return len(self.exit_names) + 1

    def head_modules(self) -> list[nn.Module]:
        return list(self.heads)

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        with Taps(self.backbone, self.exit_names) as taps:
            out = self.backbone(x)
            return [h(taps[n]) for n, h in zip(self.exit_names, self.heads)] + [out]

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def start(self, x: torch.Tensor) -> Any:
        return (x,)

    def stepper(self):
        segs = _segments(self)
        if segs is None:
            return self._restart_step
        # each stage's calls with their look-ups done once, kept while the segments and the head
        # list are the same objects: at batch 1 a call's Python overhead is a visible part of a
        # small network's time
        heads = self._modules["heads"]
        hit = _STEPPERS.get(self)
        if hit is not None and hit[0] is segs and hit[1] is heads:
            return hit[2]
        step = functools.partial(_segment_step, [s.forward for s in segs], heads, self.num_exits - 1)
        _STEPPERS[self] = (segs, heads, step)
        return step

    def step(self, k: int, state: Any) -> tuple[Any, torch.Tensor]:
        return self.stepper()(k, state)

    def segment_step(self, segs: Sequence[Callable], k: int, state: Any) -> tuple[Any, torch.Tensor]:
        """Stage k computed by the given segments (e.g. copies held for an export) and this model's heads."""
        return _segment_step(segs, self.heads, self.num_exits - 1, k, state)

    def _restart_step(self, k: int, state: Any) -> tuple[Any, torch.Tensor]:
        """The fallback stage k: recompute the backbone from the input, stop at exit k."""
        (x,) = state
        if k == self.num_exits - 1:
            return state, self.backbone(x)
        mod = resolve_module(self.backbone, self.exit_names[k])

        def hook(m, i, o):
            raise _Stop(o[0] if isinstance(o, (tuple, list)) else o)

        h = mod.register_forward_hook(hook)
        try:
            self.backbone(x)
        except _Stop as s:
            return state, self.heads[k](s.value)
        finally:
            h.remove()
        raise NetcompressError(f"exit module {self.exit_names[k]!r} was not called by the backbone")


# ---------------------------------------------------------------- building


def _raw_logits(out: Any) -> Any:
    """The output itself when it is a tensor, else the ``logits`` field of an output object or
    mapping (a Hugging Face ``ModelOutput``), whatever it holds."""
    if isinstance(out, torch.Tensor):
        return out
    return out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)


def _logits_field(out: Any) -> torch.Tensor | None:
    """The output itself when it is a tensor, else the ``logits`` tensor [batch, classes] of an
    output object or mapping (a Hugging Face ``ModelOutput``), else None."""
    v = _raw_logits(out)
    return v if isinstance(out, torch.Tensor) or (isinstance(v, torch.Tensor) and v.dim() == 2) else None


def _output_logits(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
    """Forward hook on a backbone that returns an output object (a Hugging Face ``ModelOutput``):
    the multi-exit model, its heads' training and its policy see the object's ``logits``."""
    logits = _logits_field(out)
    if logits is None:  # a hook returning None would keep the object
        raise NetcompressError(f"the backbone returns {type(out).__name__} without a logits tensor")
    return logits


def _probe(backbone: nn.Module, names: Sequence[str], x: torch.Tensor) -> tuple[list[str], dict[str, torch.Size], torch.Tensor, bool]:
    """Forward once: the order in which the exit modules run, their output shapes, the output's
    logits, and whether the output is an object holding them (not a tensor)."""
    mods = {n: resolve_module(backbone, n) for n in names}  # clear error for a bad name
    calls: list[str] = []
    shapes: dict[str, torch.Size] = {}
    handles = []
    for n, m in mods.items():
        def hook(mod, inp, out, n=n):
            calls.append(n)
            o = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(o, torch.Tensor):
                raise NetcompressError(f"exit module {n!r} returns {type(o).__name__}, not a tensor")
            shapes[n] = o.shape[1:]
        handles.append(m.register_forward_hook(hook))
    try:
        with eval_mode(backbone), torch.no_grad():
            out = backbone(x)
    finally:
        for h in handles:
            h.remove()
    for n in names:
        c = calls.count(n)
        if c != 1:
            raise NetcompressError(f"exit module {n!r} runs {c} times in one forward pass; an exit must run exactly once")
    logits = _logits_field(out)
    seq = _raw_logits(out)
    if isinstance(seq, torch.Tensor) and seq.dim() == 3:
        raise NetcompressError(f"the backbone returns per-token logits {tuple(seq.shape)}: a language model; early_exit's "
                               "heads classify whole samples. Per-token exits (dynamic on a language model) take "
                               "netcompress's gpt models, whose exits share the final norm and LM head")
    if logits is None:
        raise NetcompressError(f"the backbone returns {type(out).__name__}; early_exit needs a tensor of logits "
                               "(or an output object with a logits tensor)")
    return sorted(names, key=calls.index), shapes, logits, logits is not out


def _example(model: nn.Module, example_inputs: torch.Tensor | None) -> torch.Tensor:
    if example_inputs is not None:
        return batch_head(example_inputs, 2)

    kw = dict(getattr(model, "netcompress_spec", {}).get("kwargs", {}))
    try:
        defaults = {k: p.default for k, p in inspect.signature(type(model).__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    c, s = kw.get("in_channels", defaults.get("in_channels")), kw.get("input_size", defaults.get("input_size"))
    if isinstance(c, int) and isinstance(s, int):
        return torch.zeros(2, c, s, s)
    raise NetcompressError("early_exit: pass example_inputs (a batch of real inputs) to size the exit heads")


DEFAULT_EXIT_FRACTIONS = (0.25, 0.5, 0.75)


@torch.no_grad()
def default_exits(model: nn.Module, example_inputs: Any, fractions: Sequence[float] = DEFAULT_EXIT_FRACTIONS,
                  max_fraction: float = 0.8) -> list[str]:
    """Where to put exits when none are named: for each of `fractions` of the model's MACs, a
    module whose output comes near that share of the forward pass (Shallow-Deep Networks place
    exits by compute in the same way). Candidates are the modules that run once and return a
    tensor, one exit per point of the forward pass. The one chosen is the closest to the target,
    where each ancestor with its own forward counts as 25 % of the MACs further away (a block or
    a stage, where the data flows on, beats a layer inside a residual block or an attention); then
    the outermost, then the one that ends last (after its activation and pooling). A target whose
    best candidate is further than 30 % away gets no exit (unless no other target got one).
    Outputs after `max_fraction` of the MACs are left out: an exit there saves too little.

    Example:
        >>> import netcompress as nc, torch
        >>> default_exits(nc.models.create("lenet5"), torch.zeros(1, 1, 28, 28))
        ['features.2']
    """
    x = batch_head(example_inputs, 1)
    ends: list[tuple[str, int]] = []
    calls: dict[str, int] = {}
    counter = MacCounter()

    def hook(name: str) -> Callable:
        def end(mod: nn.Module, inp: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            o = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                ends.append((name, counter.macs))
        return end

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), FrozenParameters(model), counter:
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    full = counter.macs
    cands = [(i, n, c) for i, (n, c) in enumerate(ends) if calls[n] == 1 and 0 < c <= max_fraction * full]
    if not cands:
        raise NetcompressError(f"dynamic: exits: none named, and {type(model).__name__} has no module output before "
                               f"{max_fraction:.0%} of its MACs to put one after; name the modules in exits")
    mods = dict(model.named_modules())

    def inside(name: str) -> int:
        """How many of the module's ancestors have their own forward: 0 for a block or a stage (where
        the data flows on), more for a layer inside a residual block or a branch."""
        parts = name.split(".")
        return sum(not isinstance(mods[".".join(parts[:k])], (nn.Sequential, nn.ModuleList)) for k in range(1, len(parts)))

    def score(t: tuple[int, str, int], f: float) -> float:  # a level of nesting costs 25 % of the MACs
        return 0.25 * inside(t[1]) + abs(t[2] - f * full) / full

    chosen: list[tuple[int, str, int]] = []
    for f in fractions:
        free = [t for t in cands if t[2] not in {c for _, _, c in chosen}]  # one exit per point of the forward pass
        if free:
            best = min(free, key=lambda t: (score(t, f), t[1].count("."), -t[0]))
            if score(best, f) <= 0.3 or (f == fractions[-1] and not chosen):
                chosen.append(best)
    return [n for _, n, _ in sorted(chosen)]


def early_exit(model: nn.Module, exits: Sequence[str] | None = None, head: HeadConfig | dict | Callable | None = None,
               example_inputs: torch.Tensor | None = None) -> MultiExitModel:
    """A multi-exit copy of `model` with exit heads after the modules named in `exits` (None: the
    modules `default_exits` picks by MACs, as the `dynamic` stage does).

    The input model is not changed (it is deep-copied into the child ``backbone``). Heads are
    ``pool -> flatten -> [Linear -> ReLU] -> Linear`` (`HeadConfig`), or `head(feature_shape,
    num_classes) -> nn.Module` for a custom one. Exits are sorted into forward order.
    (BranchyNet, Teerapittayanon et al. 2016; Shallow-Deep Networks, Kaya et al. 2019.)

    Example:
        mx = early_exit(nc.models.create("lenet5"), exits=["features.2"])
        [o.shape for o in mx.train()(x)]   # [exit 0 logits, full network logits]
    """
    if isinstance(model, MultiExitBase):
        raise NetcompressError("early_exit: the model already has exits; pass its backbone instead")
    x = _example(model, example_inputs)
    if not isinstance(x, torch.Tensor):
        raise NetcompressError(f"early_exit: {type(model).__name__} takes {type(x).__name__} inputs; exits need a model "
                               "called with one input tensor (images, token ids). A model fed a dict of named tensors "
                               "(a Hugging Face text classifier's input_ids and attention_mask) is not supported")
    exits = default_exits(model, x) if exits is None else list(exits)
    if not exits:
        raise NetcompressError("early_exit: name at least one module in exits (e.g. 'features.2'), or none for the default")
    if len(set(exits)) != len(exits):
        raise NetcompressError(f"early_exit: exits repeat a name: {exits}")
    if "" in exits:
        raise NetcompressError("early_exit: '' is the whole model; name an inner module")
    order, shapes, logits, wrapped = _probe(model, exits, x)  # validates before anything is built
    num_classes = int(logits.shape[1])
    if callable(head) and not isinstance(head, (dict, HeadConfig)):
        heads = [head(tuple(shapes[n]), num_classes) for n in order]
        head_dict = None
    else:
        cfg = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head or {}, "early_exit: head")
        heads = [make_head(tuple(shapes[n]), num_classes, cfg) for n in order]
        head_dict = cfg.to_dict()
    backbone = copy.deepcopy(model)
    if wrapped:
        backbone.register_forward_hook(_output_logits)
    mx = MultiExitModel(backbone, order, heads).to(next(model.parameters()).device)
    mx._input_shape = list(x.shape[1:])
    spec = getattr(model, "netcompress_spec", None)
    if spec is not None and head_dict is not None:
        mx.netcompress_spec = {"name": "early-exit", "kwargs": {
            "backbone": spec, "exits": order, "head": head_dict, "input_shape": list(x.shape[1:]),
            "num_classes": num_classes, **({"output": "logits"} if wrapped else {})}}
    mx.training = model.training  # the heads take the model's mode; the backbone copy keeps its modules' own
    mx.heads.train(model.training)
    return mx


def build_early_exit(backbone: dict, exits: list[str], head: dict, input_shape: list[int],
                     num_classes: int = 10, output: Literal["tensor", "logits"] = "tensor", **_: Any) -> MultiExitModel:
    """Zoo factory ("early-exit") used by `netcompress.models.load` to rebuild a saved multi-exit model."""
    from netcompress.models.zoo import create

    bb = create(backbone["name"], **backbone.get("kwargs", {}))
    bb.netcompress_spec = backbone
    if output == "logits":
        bb.register_forward_hook(_output_logits)
    _, shapes, _, _ = _probe(bb, exits, torch.zeros(2, *input_shape))
    cfg = HeadConfig.from_dict(head, "early-exit: head")
    return MultiExitModel(bb, exits, [make_head(tuple(shapes[n]), num_classes, cfg) for n in exits])


# ---------------------------------------------------------------- segments (fx)

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_STEPPERS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class _ExitTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _links(backbone: nn.Module, segs: list[nn.Module] | None) -> list[tuple[dict, str, Any]]:
    """(table, name, object) for each step of each path from the backbone to what the segments call
    or read (every module for the fallback), each step once; `table` is the parent's own
    `_modules`, `_parameters` or `_buffers` dict. The segments stay valid while every table still
    holds the same object under that name (a missing name: while no table gains it), which checks
    each path from the root without splitting the names again on every call."""
    if segs is None:
        names = sorted(n for n, _ in backbone.named_modules() if n)
    else:
        names = sorted({name for seg in segs for name in seg.netcompress_paths})
    seen: set[tuple[int, str]] = set()
    out: list[tuple[dict, str, Any]] = []
    for name in names:
        obj: Any = backbone
        for part in name.split("."):
            if not isinstance(obj, nn.Module):
                break
            tables = (obj._modules, obj._parameters, obj._buffers)
            table = next((t for t in tables if part in t), None)
            if (id(obj), part) not in seen:
                seen.add((id(obj), part))
                out += [(table, part, table[part])] if table is not None else [(t, part, None) for t in tables]
            if table is None:
                break
            obj = table[part]
    return out


def _segments(model: MultiExitModel) -> list[nn.Module] | None:
    """The cached segments of `model` (None: fallback), rebuilt when the backbone's structure changed
    or its parameters moved to another device or dtype (a torch.export graph fixes the device of the
    tensors it creates, and its constants were computed on it).

    Validation is one dict look-up per step of the paths the segments use (`_links`): every module
    (or tensor) they use must still be the object found under its name in the backbone."""
    hit = _CACHE.get(model)
    if hit is not None:
        names, backbone, links, segs, placed = hit
        if (names == tuple(model.exit_names) and backbone is model.backbone
                and (placed is None or (placed[0].device, placed[0].dtype) == placed[1:])):
            for table, key, obj in links:
                if table.get(key) is not obj:
                    break
            else:
                return segs
    try:
        segs = split_at_exits(model.backbone, model.exit_names, _example_for(model))
    except NetcompressError:
        segs = None
    p = next(model.backbone.parameters(), None)
    _CACHE[model] = (tuple(model.exit_names), model.backbone, _links(model.backbone, segs), segs,
                     None if p is None else (p, p.device, p.dtype))
    return segs


def _example_for(model: MultiExitModel) -> torch.Tensor:
    shape = getattr(model, "netcompress_spec", {}).get("kwargs", {}).get("input_shape")
    if shape is None:
        shape = getattr(model, "_input_shape", None)
    if shape is None:
        raise NetcompressError("no input shape known for checking the segments")
    p = next(model.backbone.parameters())
    return torch.zeros(2, *shape, dtype=p.dtype, device=p.device)


def segment_mode(model: MultiExitModel) -> str:
    """'segments' (each stage computed once) or 'restart' (fallback: prefix recomputed)."""
    return "segments" if _segments(model) is not None else "restart"


def _optional_args(backbone: nn.Module) -> dict[str, Any]:
    """The forward's arguments after the input that have defaults, fixed at those defaults (the
    model is called with the input alone): traced as placeholders they would cross every cut as
    non-tensor values (timm's VisionTransformer takes ``attn_mask=None, is_causal=False``)."""
    params = list(inspect.signature(backbone.forward).parameters.values())[1:]
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def split_at_exits(backbone: nn.Module, exits: Sequence[str], example: torch.Tensor) -> list[nn.Module]:
    """Cut `backbone` into len(exits) + 1 GraphModules sharing its modules.

    Segment k < last maps the live tensors at cut k-1 to (live tensors at cut k, exit k's feature);
    the last segment returns the backbone's output. The graph comes from `torch.fx` with the exit
    modules as leaves, or, where that cannot trace the backbone (a Hugging Face model, a size read
    from the input), from `torch.export` with a dynamic batch (`_exported_graph`). Raises
    NetcompressError when neither gives a graph whose cuts carry only batch-first tensors.
    """
    try:
        root, graph, feats = _fx_graph(backbone, exits)
        return _cut(backbone, root, graph, feats, example)
    except NetcompressError as fx_error:
        try:
            root, graph, feats = _exported_graph(backbone, exits, example)
            return _cut(backbone, root, graph, feats, example)
        except NetcompressError as e:
            raise NetcompressError(f"{fx_error}; {e}") from None
        except Exception as e:  # noqa: BLE001 - an exported graph these cuts do not handle: no segments
            raise NetcompressError(f"{fx_error}; cannot cut the exported graph: {type(e).__name__}: {e}") from None


def _fx_graph(backbone: nn.Module, exits: Sequence[str]) -> tuple[nn.Module, fx.Graph, list[fx.Node]]:
    """(root, graph, the node of each exit) from `torch.fx`, the exit modules kept as leaves."""
    try:
        graph = _ExitTracer(exits).trace(backbone, concrete_args=_optional_args(backbone))
    except Exception as e:  # noqa: BLE001 - any tracing failure means: try the next way
        raise NetcompressError(f"cannot trace the backbone with torch.fx: {type(e).__name__}: {e}") from None
    nodes = list(graph.nodes)
    feats = []
    for name in exits:
        found = [n for n in nodes if n.op == "call_module" and n.target == name]
        if len(found) != 1:
            raise NetcompressError(f"exit {name!r} appears {len(found)} times in the traced graph")
        feats.append(found[0])
    return fx.GraphModule(backbone, graph), graph, feats


class _Called(nn.Module):
    """Calls the backbone as a module, so its forward hooks run in the export (a Hugging Face
    model's `_output_logits`)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.b = backbone

    def forward(self, x: torch.Tensor) -> Any:
        return self.b(x)


def _exported_graph(backbone: nn.Module, exits: Sequence[str], example: torch.Tensor
                    ) -> tuple[nn.Module, fx.Graph, list[fx.Node]]:
    """(root, graph, the node of each exit) from `torch.export` (non-strict, dynamic batch).

    The exported graph is flat ATen: parameters and buffers are read by name from the backbone
    (so the segments keep sharing its weights), and each node records the modules it ran inside
    (``nn_module_stack``). An exit's feature is the value computed inside the exit module that is
    used outside it and equals what a forward hook sees (the first element of a tuple output)."""
    try:
        with eval_mode(backbone), torch.no_grad():
            ep = torch.export.export(_Called(backbone), (example,), strict=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},))
        flat = ep.module(check_guards=False)
    except Exception as e:  # noqa: BLE001 - any export failure means: no segments
        raise NetcompressError(f"cannot export the backbone with torch.export: {type(e).__name__}: {e}") from None
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in flat.graph.nodes:
        if n.op == "call_module":  # the input guards
            continue
        if n.op == "get_attr":
            if not str(n.target).startswith("b."):
                raise NetcompressError(f"the exported backbone reads a constant {n.target!r} that is not one of its tensors")
            env[n] = graph.get_attr(str(n.target)[2:])
            env[n].meta = dict(n.meta)
        elif n.op == "output":
            outs = n.args[0]
            if not (isinstance(outs, (tuple, list)) and len(outs) == 1):
                raise NetcompressError("the exported backbone does not return one tensor")
            graph.output(env[outs[0]])
        else:
            env[n] = graph.node_copy(n, lambda a: env[a])
    for n in reversed(list(graph.nodes)):  # shape asserts, and values nothing reads (last first: whole chains)
        if n.op in ("call_function", "get_attr") and not n.users:
            graph.erase_node(n)
    root = fx.GraphModule(backbone, graph)

    def inside(n: fx.Node, name: str) -> bool:
        return any(path == "b." + name for path, _ in (n.meta.get("nn_module_stack") or {}).values())

    with Taps(backbone, exits) as taps, eval_mode(backbone), torch.no_grad():
        backbone(example)
        interp = fx.Interpreter(root, garbage_collect_values=False)
        interp.run(example)
        want = {name: taps[name] for name in exits}
    feats = []
    for name in exits:
        found = [n for n in graph.nodes if inside(n, name) and any(not inside(u, name) for u in n.users)
                 and isinstance(interp.env.get(n), torch.Tensor) and interp.env[n].shape == want[name].shape
                 and torch.equal(interp.env[n], want[name])]
        if not found:
            raise NetcompressError(f"exit {name!r}: no value of the exported graph is the module's output")
        feats.append(found[-1])
    return root, graph, feats


def _is_size(n: fx.Node) -> bool:
    """A node of an exported graph that computes a size (a SymInt), not a tensor."""
    return isinstance(n.meta.get("val"), torch.SymInt)


def _reads_input(nodes: Sequence[fx.Node]) -> dict[fx.Node, bool]:
    """Per node: does its value depend on the input's values? Sizes read from a tensor and
    anything computed from parameters, constants and sizes alone (an attention mask built from
    ``arange`` and the batch size) do not: those are computed again after a cut, never passed."""
    out: dict[fx.Node, bool] = {}
    for n in nodes:
        if n.op == "placeholder":
            out[n] = True
        elif n.op == "get_attr" or _is_size(n):
            out[n] = False
        else:
            out[n] = any(out[a] for a in n.all_input_nodes)
    return out


def _constants(nodes: Sequence[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """The values of an exported graph's ATen calls that read nothing (``arange(17)``, and what is
    computed from such values alone: the index grid of an attention mask), computed once here; every
    segment reads them as constants instead of running those calls again on each forward."""
    out: dict[fx.Node, torch.Tensor] = {}
    for n in nodes:
        tags = getattr(n.target, "tags", None)  # ATen operator overloads only, never a seeded random one
        if (n.op == "call_function" and tags is not None and torch.Tag.nondeterministic_seeded not in tags
                and all(a in out for a in n.all_input_nodes)):
            with torch.no_grad():
                v = n.target(*fx.map_arg(n.args, out.__getitem__), **fx.map_arg(n.kwargs, out.__getitem__))
            if isinstance(v, torch.Tensor):
                out[n] = v
    return out


def _segment_module(root: nn.Module, g: fx.Graph, consts: dict[str, torch.Tensor]) -> fx.GraphModule:
    """A GraphModule of `g` whose parameters and modules are `root`'s own objects held under flat
    names (one attribute look-up each per call, not one per level of the dotted path); the dotted
    paths are kept in ``netcompress_paths`` for `_links`."""
    attrs: dict[str, Any] = {}
    paths: set[str] = set()
    for n in g.nodes:
        if n.op not in ("get_attr", "call_module"):
            continue
        target = str(n.target)
        if target in consts:
            attrs[target] = consts[target]
            continue
        paths.add(target)
        obj: Any = root
        for part in target.split("."):
            obj = getattr(obj, part)
        n.target = f"a{len(attrs)}_{target.replace('.', '_')}"
        attrs[n.target] = obj
    seg = fx.GraphModule(attrs, g)
    seg.netcompress_paths = sorted(paths)
    return seg


def _cut(backbone: nn.Module, root: nn.Module, graph: fx.Graph, feats: Sequence[fx.Node],
         example: torch.Tensor) -> list[nn.Module]:
    """The segments of `graph` cut after each exit node in `feats` (checked against the backbone).

    Only values computed from the input's values cross a cut; a segment computes again what it
    needs of the rest: parameters are re-read, a size is read from a tensor passed to it (the
    batch size from ``x.size(0)``), values computed from nothing are constants (`_constants`), and
    values made of those alone are recomputed."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    data = _reads_input(nodes)
    folded = _constants(nodes)
    const_name = {n: f"const{i}" for i, n in enumerate(folded)}
    cut_pos = [pos[f] for f in feats]
    if cut_pos != sorted(cut_pos):
        raise NetcompressError("exits are not in graph order")

    def live_after(p: int) -> list[fx.Node]:
        return [n for n in nodes[: p + 1] if data[n] and any(pos[u] > p for u in n.users)]

    bounds = [-1] + cut_pos + [len(nodes) - 1]
    segments: list[nn.Module] = []
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        consts: dict[str, torch.Tensor] = {}
        for i, n in enumerate(live_after(lo) if lo >= 0 else []):
            env[n] = g.placeholder(f"live_{i}")
            env[n].meta = dict(n.meta)
        passed = list(env.values())

        def arg(n: fx.Node) -> fx.Node:
            if n in env:
                return env[n]
            if n.op == "get_attr":  # parameters are re-read, never passed along
                env[n] = g.get_attr(n.target)
            elif n in folded:
                consts[const_name[n]] = folded[n]
                env[n] = g.get_attr(const_name[n])
            elif _is_size(n) and (found := _size_of(n, passed, g)) is not None:
                env[n] = found
            elif n.op == "placeholder" or data[n]:
                raise NetcompressError(f"{n.name} is needed after an exit cut but is not passed across it")
            else:  # made of parameters, constants and sizes: computed again here
                env[n] = g.node_copy(n, arg)
            return env[n]

        for n in nodes[lo + 1: hi + 1]:
            if n.op == "output":
                g.output(fx.map_arg(n.args[0], arg))
            elif n.op != "get_attr" and n not in folded:  # both read where first used
                env[n] = g.node_copy(n, arg)
        if k < len(bounds) - 2:
            outs = live_after(hi)
            g.output((tuple(env[n] for n in outs), env[nodes[hi]]))
        segments.append(_segment_module(root, g, consts))
    _check_segments(backbone, segments, example)
    return segments


def _size_of(n: fx.Node, tensors: Sequence[fx.Node], g: fx.Graph) -> fx.Node | None:
    """The size `n` read from one of the tensors passed to a segment, or None where none has it
    (a size computed from others is then computed again from them)."""
    want = n.meta["val"].node.expr
    for t in tensors:
        for d, s in enumerate(getattr(t.meta.get("val"), "shape", ())):
            if isinstance(s, torch.SymInt) and s.node.expr == want:
                return g.call_function(torch.ops.aten.sym_size.int, (t, d))
    return None


@torch.no_grad()
def _check_segments(backbone: nn.Module, segments: list[nn.Module], x: torch.Tensor) -> None:
    """Every live value is a batch-first tensor, and chaining the segments reproduces the backbone."""
    with eval_mode(backbone):
        state: tuple = (x,)
        for seg in segments[:-1]:
            live, _ = seg(*state)
            for v in live:
                if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != x.shape[0]:
                    raise NetcompressError("a non-batch value crosses an exit cut")
            state = tuple(live)
        out = segments[-1](*state)  # an output object where a hook gives the backbone's logits
        if not isinstance(out, torch.Tensor) or not torch.allclose(out, backbone(x), atol=1e-5, rtol=1e-4):
            raise NetcompressError("segments do not reproduce the backbone")
