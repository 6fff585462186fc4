"""Recipe schema and loading.

A recipe is data: YAML read with `yaml.SafeLoader` (no tags that build objects),
validated by frozen pydantic models with `extra="forbid"`. Every error names the file, the field
path and its line: ``recipe.yaml:7: stages[0].prune.ratoi: unknown key``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.train.loop import TrainConfig
from netcompress.train.stage import STAGES

DEFAULT_RECIPE = Path(__file__).with_name("default.yaml")


class ModelRef(Config):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class MeasureConfig(Config):
    latency: bool = True
    threads: int = Field(1, ge=1)
    min_run_time: float = Field(0.1, gt=0, description="seconds per latency measurement")


class Variant(Config):
    name: str
    from_: str = Field("baseline", alias="from", description="'baseline' or the name of an earlier stage or variant")
    stages: list[dict[str, Any]] = Field(min_length=1)

    model_config = Config.model_config | {"populate_by_name": True}


class Recipe(Config):
    """A whole run: baseline (model + train) -> main `stages` -> `variants` branching off any point."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: str = "mnist-5k"
    data_dir: str | None = None
    model: str | ModelRef
    train: TrainConfig = Field(default_factory=TrainConfig)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    variants: list[Variant] = Field(default_factory=list)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    _source: tuple[str, dict] | None = PrivateAttr(None)  # (file, {field path: line}) when read from YAML

    def line_of(self, *path: Any) -> str | None:
        """'file:line' of a field path such as ('stages', 0, 'prune', 'ignore'), when known."""
        if self._source is None:
            return None
        where, lines = self._source
        line = _line_for(lines, tuple(path))
        return f"{where}:{line}" if line else where

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v):
        return ModelRef(name=v) if isinstance(v, str) else v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# ---------------------------------------------------------------- YAML with line numbers

def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_map(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, path + (i,), out)
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _fmt_loc(loc: tuple) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def parse_yaml(text: str, where: str) -> tuple[Any, dict[tuple, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise NetcompressError(f"{where}{line}: YAML syntax error: {problem}") from None
    return data, (_line_map(node) if node is not None else {})


def _set_path(data: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    cur: Any = data
    for i, k in enumerate(keys[:-1]):
        idx: Any = int(k) if k.isdigit() else k
        if isinstance(cur, list):
            if not isinstance(idx, int) or idx >= len(cur):
                raise NetcompressError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is not an item of the list")
            cur = cur[idx]
        else:
            if idx not in cur or cur[idx] is None:
                cur[idx] = {}
            elif not isinstance(cur[idx], (dict, list)):
                raise NetcompressError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is not a mapping")
            cur = cur[idx]
    last: Any = int(keys[-1]) if keys[-1].isdigit() and isinstance(cur, list) else keys[-1]
    cur[last] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise NetcompressError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        k, v = item.split("=", 1)
        _set_path(data, k.strip(), v)
    return data


def _validate_stage_items(items: list, prefix: tuple, lines: dict, where: str) -> None:
    for i, item in enumerate(items):
        loc = prefix + (i,)
        line = _line_for(lines, loc)
        at = f"{where}:{line}" if line else where
        if not isinstance(item, dict):
            raise NetcompressError(f"{at}: {_fmt_loc(loc)}: a stage is a mapping like `- prune: {{...}}`")
        kinds = [k for k in item if k != "name"]
        if len(kinds) != 1:
            raise NetcompressError(f"{at}: {_fmt_loc(loc)}: a stage needs exactly one kind key "
                                   f"(valid: {', '.join(STAGES.list())}), got {kinds or 'none'}")
        kind = kinds[0]
        if kind not in STAGES:
            line = _line_for(lines, loc + (kind,))
            raise NetcompressError(f"{where}:{line}: {_fmt_loc(loc)}: unknown stage kind {kind!r}; "
                                   f"valid: {', '.join(STAGES.list())}")
        try:
            STAGES.get(kind).config.model_validate(item[kind] or {})
        except ValidationError as e:
            err = e.errors()[0]
            full = loc + (kind,) + tuple(err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise NetcompressError(f"{where}:{_line_for(lines, full)}: {_fmt_loc(full)}: {msg}") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file (the built-in default when `path` is None)."""
    p = Path(path) if path is not None else DEFAULT_RECIPE
    if not p.is_file():
        raise NetcompressError(f"recipe file {p} does not exist")
    where = str(p) if path is not None else "default recipe"
    data, lines = parse_yaml(p.read_text(), where)
    if not isinstance(data, dict):
        raise NetcompressError(f"{where}: a recipe is a mapping with name, model, train, stages")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        if loc and loc[0] == "model" and len(loc) > 1 and loc[1] in ("str", "ModelRef"):
            loc = ("model",) + loc[2:]
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise NetcompressError(f"{where}:{_line_for(lines, loc)}: {_fmt_loc(loc) or 'recipe'}: {msg}{more}") from None
    _validate_stage_items(data.get("stages") or [], ("stages",), lines, where)
    for j, v in enumerate(data.get("variants") or []):
        _validate_stage_items(v.get("stages") or [], ("variants", j, "stages"), lines, where)
    recipe._source = (where, lines)
    return recipe
