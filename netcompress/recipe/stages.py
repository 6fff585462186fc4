"""Stage kinds: every technique family's, registered when `netcompress` is imported.

A recipe stage is ``{kind: {config}}``. Each kind is a `StageKind(config, run, help)` in `STAGES`
(see `netcompress.train.stage`). Families add theirs in ``netcompress/<family>/stages.py`` through a
``register(stages)`` function; the families are listed once, in `netcompress.plugins.FAMILIES`, and
registered below, so ``import netcompress`` is enough for `run_recipe`, `apply` and the CLI.

`apply(kind, model, data, **config)` is the Python door onto a stage kind: it builds the same
config and context as the recipe runner and the CLI command and calls the same handler.
"""
from __future__ import annotations

import copy
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.models import build, create_for, describe
from netcompress.plugins import FAMILIES
from netcompress.train.loop import TrainConfig
from netcompress.train.stage import STAGES, StageContext, StageKind, StageResult

__all__ = ["STAGES", "StageContext", "StageKind", "StageResult", "TrainStageConfig", "apply"]


class TrainStageConfig(Config):
    """`train` / `finetune`: fields override the recipe's `train:` settings for this stage."""

    epochs: float | None = Field(None, ge=0, description="epochs (train: default train.epochs; finetune: 30% of it)")
    lr: float | None = Field(None, gt=0, description="learning rate (train: default train.lr; finetune: x0.1)")
    batch_size: int | None = Field(None, ge=1, description="batch size (default train.batch_size)")
    optimizer: str | None = Field(None, description="sgd, adam or adamw (default train.optimizer)")
    weight_decay: float | None = Field(None, ge=0, description="weight decay (default train.weight_decay)")
    schedule: str | None = Field(None, description="constant, cosine or step (default train.schedule)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    from_scratch: bool = Field(False, description="train: re-initialise the model's weights first")
    model: str | dict[str, Any] | None = Field(
        None, description="train a fresh model of this zoo architecture instead (name or {name, kwargs})")


def _fresh_model(ctx: StageContext, ref: str | dict[str, Any]) -> nn.Module:
    name, kwargs = (ref, {}) if isinstance(ref, str) else (ref.get("name"), dict(ref.get("kwargs", {})))
    if not isinstance(name, str) or set(ref if isinstance(ref, dict) else {}) - {"name", "kwargs"}:
        raise NetcompressError(f"stage {ctx.name!r}: model must be a name or {{name, kwargs}}, got {ref!r}")
    return create_for(name, ctx.data, seed=ctx.seed, **kwargs)


def _run_train(ctx: StageContext, model: nn.Module, cfg: TrainStageConfig) -> StageResult:
    if cfg.model is not None:
        model = _fresh_model(ctx, cfg.model)
    elif cfg.from_scratch:
        model = build(describe(model))
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    hist = ctx.fit(model, cfg.model_dump(exclude={"from_scratch", "model"}), tag="train")
    return StageResult(model, history=hist.to_list())


def _run_finetune(ctx: StageContext, model: nn.Module, cfg: TrainStageConfig) -> StageResult:
    if cfg.model is not None or cfg.from_scratch:
        raise NetcompressError(f"stage {ctx.name!r}: finetune continues the current model; use `train` for model / from_scratch")
    over = {**cfg.model_dump(exclude={"from_scratch", "model"}), **ctx.budget(cfg.epochs, cfg.lr)}
    hist = ctx.fit(model, over, tag="finetune")
    return StageResult(model, history=hist.to_list())


STAGES.register("train", StageKind(TrainStageConfig, _run_train, "train the current model (fields override train:)"))
STAGES.register("finetune", StageKind(TrainStageConfig, _run_finetune, "fine-tune the current model (default lr x0.1, 30% of epochs)"))
for _family in FAMILIES:  # the one explicit list of technique families
    importlib.import_module(f"netcompress.{_family}.stages").register(STAGES)


def apply(kind: str, model: nn.Module, data: Any, *, seed: int = 0, train: TrainConfig | dict | None = None,
          out_dir: str | Path | None = None, models: dict[str, nn.Module] | None = None, resume: bool = False,
          progress: bool | None = False, **config: Any) -> StageResult:
    """Run one stage kind on `model`: the Python door, same config, defaults and handler as a recipe
    stage and the CLI command `netcompress KIND`.

    Args:
        kind: a registered stage kind (`netcompress list`).
        model: the input model; it is not changed (the stage works on a copy).
        data: a DataBundle.
        seed: the seed (a recipe's ``seed:``).
        train: training defaults (a recipe's ``train:``), a TrainConfig or a dict of its fields.
        out_dir: folder for the stage's checkpoints and files (default: a temporary folder, removed
            after the call with its checkpoints; when the stage writes a file, the file stays).
        models: other models by name (e.g. a teacher); ``baseline`` defaults to `model`.
        config: the stage's config fields.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("digits").subset(256, 64)
        >>> model = nc.models.create_for("lenet300", data)
        >>> res = nc.recipe.apply("prune", model, data, ratio=0.5, epochs=0)
        >>> res.extra["kept_channels"] < res.extra["total_channels"]
        True
    """
    sk = STAGES.get(kind)
    cfg = sk.config.from_dict(config, where=kind)
    tc = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(dict(train or {}), "train")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"netcompress-{kind}-"))
    ctx = StageContext(data=data, train=tc, seed=seed, out_dir=folder, models={"baseline": model, **(models or {})},
                       resume=resume, progress=progress, name=kind)
    res = None
    try:
        res = sk.run(ctx, copy.deepcopy(model), cfg)
        if not isinstance(res, StageResult):
            raise TypeError(f"stage kind {kind!r} returned {type(res).__name__}, not StageResult")
        res.figures = dict(ctx.figures)
        return res
    finally:
        if out_dir is None:  # a folder of our own: no run can resume from it, so only the result's file stays
            _tidy(folder, getattr(res, "file", None))


def _tidy(folder: Path, keep: Path | None) -> None:
    """Remove the training checkpoints of a temporary stage folder, and the folder itself unless it
    holds the stage's result file (an exported program, an archive)."""
    if keep is None or folder.resolve() not in Path(keep).resolve().parents:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for p in folder.rglob("*.ckpt"):
        p.unlink()
