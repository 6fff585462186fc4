"""Depth pruning: remove whole blocks (transformer layers, residual blocks) from any model.

A *block* is a child of an `nn.Sequential` or `nn.ModuleList` that holds at least two children of
the same class (timm's `blocks`, Hugging Face's `encoder.layer` / `model.layers` / `h`, a ResNet
stage), that has parameters (an activation, a dropout or an identity is not a block), that runs
exactly once on the example input, and whose output (its first tensor) has the shape of its input
(its first tensor), so the stream it adds to can skip it. Blocks inside another
block are scored as part of the outer one only when the outer one is not itself a block (the
innermost repeated level is pruned).

Importance ('influence', the default) is ShortGPT's Block Influence (Men et al. 2024, "ShortGPT:
Layers in Large Language Models are More Redundant Than You Expect"): 1 - cos(input, output) of the
block over the calibration data, per token for (batch, tokens, width) streams and per sample
(flattened) otherwise; the blocks that change their input least go first. 'random' is the control.

The blocks are deleted from their container (later ones renumbered), counts that named the old depth
in a Hugging Face config (`num_hidden_layers`, `n_layer`, `num_layers`, per-layer lists such as
`layer_types`: a list named `*layer*` as long as the old depth) and the kept attention layers'
`layer_idx` are updated, and the pruned model is run on the example input: when it fails or changes
the output shape, one error names the container and the input model is unchanged either way.

Example:
    >>> import netcompress as nc, torch
    >>> vit = nc.models.create("vit-tiny", num_classes=10, in_channels=1, input_size=28)
    >>> small = nc.prune.depth(vit, 0.5, example_inputs=torch.randn(2, 1, 28, 28))
    >>> len(small.blocks), len(vit.blocks)
    (2, 4)
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from netcompress.core.batch import call, check_batch, first_tensor
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

DEPTH_CRITERIA = ("influence", "random")


@dataclass
class Block:
    """One removable block: `container` (qualified name) holds it at `index`."""

    container: str
    index: int
    name: str
    siblings: int  # children of the container (blocks or not)
    score: float = 0.0


def _containers(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)) and len(mod) >= 2:
            if max(Counter(type(c) for c in mod).values()) >= 2:
                out[name] = mod
    return out


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _hooked(model: nn.Module, modules: Iterable[nn.Module], hook: Callable, batches: Iterable[Any]) -> None:
    """Run `model` (in eval mode, without gradients) on each batch with `hook(module, input, output)`
    on every module of `modules` (input, output: their first tensors); the model is left as it was."""
    def fwd(mod, args, kwargs, out):
        hook(mod, first_tensor(args) if args else first_tensor(kwargs), first_tensor(out))

    hs = [m.register_forward_hook(fwd, with_kwargs=True) for m in modules]
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches:
                call(model, x)
    finally:
        for h in hs:
            h.remove()


def find_blocks(model: nn.Module, example_inputs: Any, ignore: Iterable[str] = ()) -> list[Block]:
    """The removable blocks of `model` (see the module docstring), in forward order."""
    check_batch(example_inputs)
    ignore = list(ignore)
    cands: dict[nn.Module, Block] = {}
    for cname, cont in _containers(model).items():
        kinds = Counter(type(c) for c in cont)
        for i, child in enumerate(cont):
            name = _join(cname, str(i))
            if kinds[type(child)] >= 2 and next(child.parameters(), None) is not None and not any(
                    name == p or name.startswith(p + ".") for p in ignore):
                cands[child] = Block(cname, i, name, siblings=len(cont))
    seen: dict[nn.Module, list[tuple[torch.Size | None, torch.Size | None]]] = {}  # in call order

    def hook(mod, x, y):
        seen.setdefault(mod, []).append((x.shape if x is not None else None, y.shape if y is not None else None))

    _hooked(model, cands, hook, [example_inputs])
    ok = [m for m, calls in seen.items() if len(calls) == 1 and calls[0][0] is not None and calls[0][0] == calls[0][1]]
    names = {cands[m].name for m in ok}
    # keep the innermost level: drop a block that contains another block
    inner = [m for m in ok if not any(n != cands[m].name and n.startswith(cands[m].name + ".") for n in names)]
    return [cands[m] for m in inner]


def _cosine_change(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(sum of 1 - cos(x, y), count) per token (3-D streams) or per sample (anything else)."""
    x, y = x.detach().float(), y.detach().float()
    if x.dim() == 3:
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    else:
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    cos = nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12)
    return float((1 - cos).sum()), len(cos)


def score_blocks(model: nn.Module, blocks: list[Block], batches: list[Any], criterion: str = "influence",
                 seed: int = 0) -> list[Block]:
    """Set every block's `score` (higher = more important) and return `blocks`."""
    if criterion not in DEPTH_CRITERIA:
        raise NetcompressError(f"depth criterion {criterion!r}; valid: {', '.join(DEPTH_CRITERIA)}")
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        for b, s in zip(blocks, torch.rand(len(blocks), generator=g).tolist()):
            b.score = s
        return blocks
    acc = {model.get_submodule(b.name): [0.0, 0] for b in blocks}  # sum of 1 - cos, count

    def hook(mod, x, y):
        s, n = _cosine_change(x, y)
        acc[mod][0] += s
        acc[mod][1] += n

    _hooked(model, acc, hook, batches)
    for b, (s, n) in zip(blocks, acc.values()):
        b.score = s / max(n, 1)
    return blocks


def _fix_counts(new: nn.Module, removed: dict[str, list[int]], old_len: dict[str, int]) -> None:
    """Hugging Face configs and the kept layers' `layer_idx` follow the removal."""
    configs = {id(c): c for m in new.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "to_dict")}
    for cname, gone in removed.items():
        n = old_len[cname]
        keep = [i for i in range(n) if i not in gone]
        for cfg in configs.values():
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                if getattr(cfg, key, None) == n:
                    setattr(cfg, key, len(keep))
            for key, val in list(vars(cfg).items()):
                if isinstance(val, list) and len(val) == n and "layer" in key:  # layer_types, no_rope_layers...
                    setattr(cfg, key, [val[i] for i in keep])
        cont = new.get_submodule(cname)
        for j, (i, block) in enumerate(zip(keep, cont)):
            for m in block.modules():
                if getattr(m, "layer_idx", None) == i:
                    m.layer_idx = j


def select_blocks(blocks: list[Block], ratio: float) -> list[Block]:
    """The lowest-scoring `ratio` of the blocks; every container keeps at least one child."""
    if not 0 <= ratio < 1:
        raise NetcompressError(f"depth: ratio must be in [0, 1), got {ratio!r}")
    k = int(ratio * len(blocks))
    left = {b.container: b.siblings for b in blocks}
    out = []
    for b in sorted(blocks, key=lambda b: (b.score, b.name)):
        if len(out) == k:
            break
        if left[b.container] > 1:
            out.append(b)
            left[b.container] -= 1
    return out


def plan_depth(model: nn.Module, ratio: float, *, example_inputs: Any, data: Any = None,
               criterion: str = "influence", calibration: int = 256, seed: int = 0,
               ignore: Iterable[str] = ()) -> tuple[list[Block], list[Block]]:
    """(every removable block, scored; the ones `depth` with the same arguments removes). The model
    is unchanged (the dry run of `depth`)."""
    from netcompress.core.batch import calibration_batches

    if criterion not in DEPTH_CRITERIA:
        raise NetcompressError(f"depth criterion {criterion!r}; valid: {', '.join(DEPTH_CRITERIA)}")
    blocks = find_blocks(model, example_inputs, ignore)
    if not blocks:
        raise NetcompressError(f"depth: {type(model).__name__} has no removable block (a repeated child with "
                               "parameters of an nn.Sequential / nn.ModuleList whose output has its input's shape)")
    batches = calibration_batches(data, calibration) if data is not None else None
    xs = [x for x, _ in batches] if batches else [example_inputs]
    return blocks, select_blocks(score_blocks(model, blocks, xs, criterion, seed), ratio)


def remove_blocks(model: nn.Module, gone: Iterable[Block], example_inputs: Any) -> nn.Module:
    """A copy of `model` without the blocks `gone` (from `find_blocks` / `plan_depth`), its counts
    updated and checked on `example_inputs` (see the module docstring); `model` is unchanged."""
    removed: dict[str, list[int]] = {}
    for b in gone:
        removed.setdefault(b.container, []).append(b.index)
    if not removed:
        return copy.deepcopy(model)
    old_len = {c: len(model.get_submodule(c)) for c in removed}
    new = copy.deepcopy(model)
    for cname, idx in removed.items():
        cont = new.get_submodule(cname)
        for i in sorted(idx, reverse=True):
            del cont[i]
    _fix_counts(new, removed, old_len)
    # `new` is a deep copy, so restoring its own flags gives it the model's per-module modes
    with eval_mode(model), eval_mode(new), torch.no_grad():
        ref = first_tensor(call(model, example_inputs))
        try:
            out = first_tensor(call(new, example_inputs))
        except Exception as e:  # the model's own forward indexes its blocks in a way we cannot follow
            raise NetcompressError(f"depth: the model no longer runs without blocks of {', '.join(removed)} "
                                   f"({type(e).__name__}: {e})") from None
    if ref is not None and (out is None or out.shape != ref.shape):
        raise NetcompressError(f"depth: removing blocks of {', '.join(removed)} changes the output shape "
                               f"({tuple(ref.shape)} -> {None if out is None else tuple(out.shape)})")
    if hasattr(model, "netcompress_spec"):
        new.netcompress_spec = model.netcompress_spec
    return new


def depth(model: nn.Module, ratio: float = 0.25, *, example_inputs: Any, data: Any = None,
          criterion: Literal["influence", "random"] = "influence", calibration: int = 256, seed: int = 0,
          ignore: Iterable[str] = ()) -> nn.Module:
    """Remove the least important `ratio` of the model's blocks; returns a new, shallower model
    (`model` is unchanged). See the module docstring for what a block is and how it is scored;
    `plan_depth` is the dry run.

    Args:
        model: any model with repeated blocks in an nn.Sequential / nn.ModuleList.
        ratio: fraction of all removable blocks to remove, in [0, 1).
        example_inputs: a real input batch (a tensor, a tuple or a dict of named tensors).
        data: calibration data for 'influence' (a DataBundle or (x, y) batches); default: the example.
        criterion: 'influence' (Block Influence) or 'random'.
        calibration: training samples scored.
        ignore: block names (or prefixes) that stay.
    """
    _, gone = plan_depth(model, ratio, example_inputs=example_inputs, data=data, criterion=criterion,
                         calibration=calibration, seed=seed, ignore=ignore)
    return remove_blocks(model, gone, example_inputs)
