"""Layer names in a recipe, checked against the model before the baseline trains.

Stage fields that name modules (`prune.ignore`, `dynamic.exits`, the keys of `quantize.bits`, ...)
are looked up in the recipe's model. A chain of stages is checked up to and including the first
stage that renames modules (distillation swaps the model, design replaces layers, early exit wraps
the backbone): later names refer to a model that does not exist yet.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable

from torch import nn

from netcompress.core.errors import NetcompressError

# kind -> (field, how): "names" = module names, prefixes or fnmatch patterns; "keys" = dict keys
# naming modules or module types; "patterns" = fnmatch patterns that must match some module
LAYER_FIELDS: dict[str, list[tuple[str, str]]] = {
    "prune": [("ignore", "names"), ("sparsity", "keys")],
    "quantize": [("bits", "keys")],
    "design": [("include", "patterns"), ("exclude", "patterns"), ("rank", "keys")],
    "dynamic": [("exits", "names")],
}
# kinds whose output model keeps the module names of its input
KEEP_NAMES = {"prune", "quantize", "finetune", "pack"}


def _known(name: str, modules: list[str], types: set[str], how: str) -> bool:
    if how == "keys" and name in types:
        return True
    if name in modules or any(m.startswith(name + ".") for m in modules):
        return True
    return any(fnmatch.fnmatchcase(m, name) for m in modules)


def _names_in(value: Any, how: str) -> Iterable[str]:
    if how == "keys":
        return list(value) if isinstance(value, dict) else []
    if isinstance(value, str):
        return [value]
    return [v for v in (value or []) if isinstance(v, str)]


def check_layer_names(model: nn.Module, plan: list[tuple[str, str, str, dict, str]],
                      locate: Any = None) -> None:
    """Raise `NetcompressError` for the first stage field naming a module `model` does not have.

    Args:
        model: the recipe's model, as built for the baseline.
        plan: the runner's stage plan (name, kind, parent, config dict, variant).
        locate: `locate(stage_name, kind, field) -> "file:line"` or None, for the message.
    """
    modules = [n for n, _ in model.named_modules() if n]
    types = {type(m).__name__ for m in model.modules()}
    named = {"baseline"}  # stages whose output still has the baseline's module names
    for name, kind, parent, cfg, _ in plan:
        if kind == "@alias":
            if parent in named:
                named.add(name)
            continue
        if parent not in named:
            continue
        for fld, how in LAYER_FIELDS.get(kind, []):
            for layer in _names_in(cfg.get(fld), how):
                if not _known(layer, modules, types, how):
                    where = locate(name, kind, fld) if locate else None
                    close = [m for m in modules if layer.split(".")[-1] in m][:3] or modules[:6]
                    raise NetcompressError(
                        f"{where + ': ' if where else ''}stage {name!r} ({kind}.{fld}): the model has no layer "
                        f"{layer!r}; its layers include {', '.join(close)}")
        keeps = kind in KEEP_NAMES or (kind == "train" and not cfg.get("model"))
        if keeps:
            named.add(name)
