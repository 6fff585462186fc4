"""The explicit list of technique families: one line per family, no import magic.

Each `netcompress.<family>.stages` module has a `register(stages)` function adding its stage kinds;
`netcompress.recipe.stages` registers them all when `netcompress` is imported. Every stage kind
gets its CLI command generated from its config (`netcompress.commands`), so a new technique adds one
folder, one config, one handler and, for a new family, one line here.
"""
from __future__ import annotations

FAMILIES: tuple[str, ...] = (
    "prune",
    "distill",
    "quantize",
    "archive",
    "design",
    "dynamic",
    "export",
)
