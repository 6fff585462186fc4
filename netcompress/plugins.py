"""Explicit list of technique families. Each `netcompress.<family>.stages` module has a
`register(stages)` function adding its recipe stage kinds; each `netcompress.<family>.cli` module
has `add_commands(subparsers)` adding its CLI commands. One line per family; no import magic."""
from __future__ import annotations

import importlib

FAMILIES: tuple[str, ...] = (
    "prune",
    "distill",
    "quantize",
    "archive",
    "design",
    "dynamic",
    "export",
)

_loaded = False


def load_stages() -> None:
    """Register every family's stage kinds in `netcompress.recipe.stages.STAGES` (once)."""
    global _loaded
    if _loaded:
        return
    from netcompress.recipe.stages import STAGES

    for fam in FAMILIES:
        importlib.import_module(f"netcompress.{fam}.stages").register(STAGES)
    _loaded = True


def add_commands(subparsers) -> None:
    for fam in FAMILIES:
        importlib.import_module(f"netcompress.{fam}.cli").add_commands(subparsers)
