"""Structured (channel / filter / neuron) pruning with physical removal.

`channels(model, ...)` finds coupled-channel groups with `netcompress.core.graph.ChannelGraph`,
scores every channel with a criterion from `CRITERIA`, and returns a new, smaller model made of the
same module classes (the input model is unchanged). `plan(...)` is the dry run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import torch
from torch import nn

from netcompress.core.batch import calibration_batches
from netcompress.core.errors import NetcompressError
from netcompress.core.graph import ChannelGraph
from netcompress.core.modes import eval_mode
from netcompress.prune.importance import CRITERIA, NEEDS_DATA, ScoreContext


@dataclass
class PrunePlan:
    """A dry run: what `channels` would remove, and the size before and after."""

    groups: list[dict[str, Any]]
    removed: list[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    per_layer: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.groups)} channel groups"]
        for g in self.groups:
            lines.append(f"  group {g['id']:3d}: {g['total']:5d} ch, remove {g['remove']:5d}: {', '.join(g['members'][:6])}"
                         + (f" (+{len(g['members']) - 6})" if len(g["members"]) > 6 else ""))
        lines.append(f"params {self.params_before:,} -> {self.params_after:,} "
                     f"({100 * self.params_after / max(self.params_before, 1):.1f}%)")
        lines.append(f"MACs   {self.macs_before:,} -> {self.macs_after:,} "
                     f"({100 * self.macs_after / max(self.macs_before, 1):.1f}%)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def ratio_or_macs(ratio: float | None, macs: float | None) -> tuple[float | None, float | None]:
    """(ratio, macs) after the defaults: one of the two, ratio 0.5 when neither is given."""
    if ratio is not None and macs is not None:
        raise NetcompressError(f"give ratio or macs, not both (ratio={ratio!r}, macs={macs!r})")
    if macs is not None and (isinstance(macs, bool) or not isinstance(macs, (int, float)) or not 0 < macs < 1):
        raise NetcompressError(f"macs must be a fraction of the dense MACs in (0, 1), got {macs!r}")
    return (0.5 if ratio is None and macs is None else ratio), macs


def _validate(criterion: str, ratio: float | None, scope: str, example_inputs: Any) -> None:
    CRITERIA.get(criterion)
    if ratio is not None and (not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
        raise NetcompressError(f"ratio must be in [0, 1), got {ratio!r}")
    if scope not in ("layer", "global"):
        raise NetcompressError(f"scope must be 'layer' or 'global', got {scope!r}")
    from netcompress.core.graph_trace import first_sample

    first_sample(example_inputs, None)  # a tensor, a tuple of tensors or a dict of named tensors


def select(scores: list[torch.Tensor], graph: ChannelGraph, ratio: float, scope: str = "layer",
           min_keep: int = 1) -> list[int]:
    """Channel classes to remove: the lowest-scoring `ratio` of each group (scope='layer') or of
    all channels with scores normalised by each group's mean (scope='global'); every group keeps
    at least `min_keep` channels."""
    removed: list[int] = []
    if ratio <= 0:
        return removed
    if scope == "layer":
        for gr, s in zip(graph.groups, scores):
            k = min(int(ratio * len(gr.classes)), len(gr.classes) - min_keep)
            if k > 0:
                order = torch.argsort(s, stable=True)[:k]
                removed += [gr.classes[i] for i in order.tolist()]
        return removed
    flat = []
    for gi, (gr, s) in enumerate(zip(graph.groups, scores)):
        norm = s / s.abs().mean().clamp_min(1e-12)
        flat += [(float(v), gi, i) for i, v in enumerate(norm.tolist())]
    flat.sort()
    budget = int(ratio * len(flat))
    left = [len(g.classes) for g in graph.groups]
    for v, gi, i in flat:
        if budget <= 0:
            break
        if left[gi] > min_keep:
            removed.append(graph.groups[gi].classes[i])
            left[gi] -= 1
            budget -= 1
    return removed


def _analyse(model: nn.Module, criterion: str, ratio: float | None, example_inputs: Any, data: Any,
             scope: str, ignore: Iterable[str], seed: int, calibration: int, attention: str = "heads",
             width: bool = True, macs: float | None = None) -> tuple[ChannelGraph, list[int], nn.Module | None]:
    """(graph, channel classes to remove, the pruned model where finding them built it: `macs`)."""
    ratio, macs = ratio_or_macs(ratio, macs)
    _validate(criterion, ratio, scope, example_inputs)
    batches = calibration_batches(data, calibration)
    if criterion in NEEDS_DATA and not batches:
        raise NetcompressError(f"criterion {criterion!r} needs calibration data: pass data=")
    graph = ChannelGraph.build(model, example_inputs, ignore, attention=attention, width=width)
    scores = CRITERIA.get(criterion)(ScoreContext(model, graph, batches, seed))
    if macs is None:
        return graph, select(scores, graph, ratio, scope), None
    return graph, *_select_for_macs(model, graph, scores, scope, macs, example_inputs)


def _select_for_macs(model: nn.Module, graph: ChannelGraph, scores: list[torch.Tensor], scope: str, macs: float,
                     x: Any, steps: int = 14) -> tuple[list[int], nn.Module]:
    """The removal of the smallest ratio whose pruned model keeps at most `macs` of the MACs, and
    that pruned model (bisection on the ratio: a larger ratio removes a superset of the channels,
    so fewer MACs)."""
    dense = _macs(model, x)

    def kept(r: float) -> tuple[tuple[list[int], nn.Module], float]:
        removed = select(scores, graph, r, scope)
        small = graph.prune(removed)
        return (removed, small), _macs(small, x) / dense

    best, least = kept(_MAX_RATIO)
    if least > macs:
        raise NetcompressError(f"macs {macs}: with every group cut to one channel the model still keeps "
                               f"{least:.3f} of its MACs (what cannot shrink: the outputs, ignored modules)")
    lo, hi = 0.0, _MAX_RATIO
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand, frac = kept(mid)
        if frac <= macs:
            hi, best = mid, cand
        else:
            lo = mid
    return best


_MAX_RATIO = 1 - 1e-9  # every group down to its last channel


def channels(model: nn.Module, criterion: str = "l1", ratio: float | None = None, *, example_inputs: Any,
             data: Any = None, scope: Literal["layer", "global"] = "layer", ignore: Iterable[str] = (),
             seed: int = 0, calibration: int = 256, attention: Literal["heads", "head_dim", "none"] = "heads",
             width: bool = True, macs: float | None = None) -> nn.Module:
    """Remove the least important `ratio` of channels (or as many as it takes to keep `macs` of the
    MACs); returns a new, smaller model.

    Coupled channels (conv outputs, their BatchNorm, every consumer's inputs, residual partners,
    concatenation slices, depthwise groups, flatten blocks, channel shuffles) are removed together.
    Attention is pruned by whole heads (q, k, v and output-projection slices together; a key/value
    group with its query heads under grouped-query attention), MLP hidden widths and the embedding
    width of transformers through every block, norm, positional embedding and tied head.
    The model's outputs and inputs keep their size. The result is made of the original module
    classes and runs without netcompress. Filter pruning after Li et al. 2017; other criteria:
    see `netcompress.prune.importance`.

    Args:
        model: any model (traced with torch.fx, or recorded eagerly when fx cannot); unchanged.
        criterion: a name in `CRITERIA` (l1, l2, fpgm, slimming, apoz, taylor, output_norm, random);
            output_norm scores what a channel adds to the outputs of its consumers (for a head, its
            output after the output projection; Kobayashi et al. 2020).
        ratio: fraction of each group's channels to remove, in [0, 1); default 0.5.
        example_inputs: a real input batch (the first sample is traced): a tensor, a tuple of
            tensors or a dict of named tensors (e.g. {'input_ids': ...}).
        data: calibration data for apoz / taylor / output_norm (a DataBundle or (x, y) batches).
        scope: 'layer' removes `ratio` of every group; 'global' ranks all channels together.
        ignore: module names (prefixes or fnmatch patterns) whose channels stay.
        attention: 'heads' (whole heads), 'head_dim' (the same dimensions of every head) or 'none'.
        width: also prune the LayerNorm / RMSNorm-normalised width (a transformer's embedding width).
        macs: instead of `ratio`, keep at most this fraction of the model's MACs (batch 1, counted as
            `netcompress.measure.count_macs` does): the smallest ratio that gets there, by bisection
            over the same ranking (about 15 trial removals, each counted).

    Example:
        small = channels(model, "l1", 0.5, example_inputs=data.example)
        half = channels(model, "l1", macs=0.5, example_inputs=data.example)
    """
    graph, removed, new = _analyse(model, criterion, ratio, example_inputs, data, scope, ignore, seed, calibration,
                                   attention, width, macs)
    new = new if new is not None else graph.prune(removed)
    if hasattr(model, "netcompress_spec"):
        new.netcompress_spec = model.netcompress_spec
    return new


def per_layer(before: nn.Module, after: nn.Module) -> dict[str, dict[str, int]]:
    """{layer: {"kept": k, "total": n}} output channels / features of every conv and linear layer."""
    old = dict(before.named_modules())
    out = {}
    for name, m in after.named_modules():
        o = old.get(name)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(o, type(m)):
            out[name] = {"kept": m.out_channels, "total": o.out_channels}
        elif isinstance(m, nn.Linear) and isinstance(o, nn.Linear):
            out[name] = {"kept": m.out_features, "total": o.out_features}
    return out


def plan(model: nn.Module, criterion: str = "l1", ratio: float | None = None, *, example_inputs: Any,
         data: Any = None, scope: Literal["layer", "global"] = "layer", ignore: Iterable[str] = (),
         seed: int = 0, calibration: int = 256, attention: Literal["heads", "head_dim", "none"] = "heads",
         width: bool = True, macs: float | None = None) -> PrunePlan:
    """Dry run of `channels` with the same arguments: the groups, the channels each would lose, and
    parameters / MACs before and after. The model is not changed.

    Example:
        print(plan(model, "fpgm", 0.5, example_inputs=data.example))
    """
    from netcompress.measure import count_params

    ignore, notes = list(ignore), []
    for _ in range(50):  # list what the graph cannot handle, leave it unpruned, and go on
        try:
            graph, removed, small = _analyse(model, criterion, ratio, example_inputs, data, scope, ignore, seed,
                                             calibration, attention, width, macs)
            break
        except NetcompressError as e:
            mod = getattr(e, "module", None)
            if not mod or mod in ignore:
                raise
            notes.append(f"cannot handle: {e}; left unpruned (channels() needs ignore=[{mod!r}])")
            ignore.append(mod)
    else:
        raise NetcompressError("plan: too many unsupported modules")
    gone = set(removed)
    groups = [{"id": g.id, "total": len(g.classes), "remove": sum(c in gone for c in g.classes),
               "members": [f"{m}[{k}]" for m, k in g.members]} for g in graph.groups]
    small = small if small is not None else graph.prune(removed)
    frozen = [m.module for m in graph.members if m.kind == "out"
              and bool((graph.uf.roots(m.labels) == 0).all())]
    if frozen:
        notes.append(f"layers whose outputs stay (model output, literal sizes or ignored): {', '.join(sorted(set(frozen)))}")
    return PrunePlan(groups, removed, count_params(model)[0], count_params(small)[0], _macs(model, example_inputs),
                     _macs(small, example_inputs), per_layer(model, small), notes)


def _macs(model: nn.Module, x: Any) -> int:
    """MACs at batch 1 for any example input (a tensor, a tuple or a dict of tensors)."""
    from netcompress.core.graph_trace import first_sample
    from netcompress.measure import MacCounter, count_macs

    if isinstance(x, torch.Tensor):
        return count_macs(model, x)
    x = first_sample(x, next((p.device for p in model.parameters()), None))
    counter = MacCounter()
    with eval_mode(model), torch.no_grad(), counter:
        model(**x) if isinstance(x, dict) else model(*x)
    return counter.macs
