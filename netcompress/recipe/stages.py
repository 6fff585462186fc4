"""Stage kinds: the plug-in point for every technique family.

A recipe stage is ``{kind: {config}}``. Each kind is registered in `STAGES` with its frozen config
class and a `run(ctx, model, cfg) -> StageResult` function. Families register their kinds in their
own ``netcompress/<family>/stages.py`` through a ``register(stages)`` function, listed in
`netcompress.plugins.FAMILIES` (explicit registration, no import side effects).
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.core.method import Method
from netcompress.core.registry import Registry
from netcompress.train.loop import History, TrainConfig, fit


@dataclass
class StageResult:
    """What a stage hands back.

    Attributes:
        model: the output model (a plain nn.Module), input to the next stage.
        file: an artifact whose size is the honest 'bytes on disk' (archive, int8 file); when None
            the runner saves the model with `netcompress.models.save` and measures that file.
        measure_model: a different module to measure for latency / accuracy (e.g. the int8 model),
            when `model` itself stays the float model for later stages.
        extra: JSON-able facts for metrics.json and the report (per-layer sparsity, curves, ...).
        history: training curves of the stage, if it trained.
        metrics: measured figures that replace the runner's generic ones, where the generic
            measurement would mislead (an early-exit model's MACs are an average over the test set,
            not the cost of one example image); the replaced names are listed in the entry.
    """

    model: nn.Module
    file: Path | None = None
    measure_model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may use besides its config and input model.

    Attributes:
        data: the recipe's DataBundle.
        train: the recipe's training settings (defaults for fine-tuning).
        seed: the recipe's seed.
        out_dir: this stage's own folder inside the run directory (files, checkpoints).
        models: models produced so far by name ("baseline", then each stage's name); stages must
            deep-copy before changing them (use `ctx.model(name)`).
        resume: continue from checkpoints found in `out_dir`.
        progress: show progress bars.
    """

    data: Any
    train: TrainConfig
    seed: int
    out_dir: Path
    models: dict[str, nn.Module] = field(default_factory=dict)
    resume: bool = False
    progress: bool | None = None
    name: str = "stage"
    figures: dict[str, bytes] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def model(self, name: str) -> nn.Module:
        """A deep copy of an earlier model ('baseline' or a stage name)."""
        from netcompress.core.errors import NetcompressError

        if name not in self.models:
            raise NetcompressError(f"stage {self.name!r}: no model named {name!r}; known: {', '.join(self.models)}")
        return copy.deepcopy(self.models[name])

    def fit(self, model: nn.Module, overrides: dict[str, Any] | None = None, *, methods: Sequence[Method] = (),
            loss_fn: Callable | None = None, tag: str = "finetune", data: Any = None) -> History:
        """Train with the recipe's settings plus `overrides`; checkpointed and resumable in `out_dir`."""
        cfg = self.train.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        hist = fit(model, data or self.data, TrainConfig.from_dict(cfg.model_dump()), methods=methods,
                   loss_fn=loss_fn, checkpoint=self.out_dir / f"{tag}.ckpt", resume=self.resume,
                   seed=self.seed, progress=self.progress, desc=f"{self.name}:{tag}")
        self.histories[tag] = hist.to_list()
        return hist

    def figure(self, title: str, fig) -> None:
        """Attach a matplotlib figure to the report (stored as PNG bytes; the figure is closed)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures[f"{self.name}: {title}"] = buf.getvalue()


@dataclass(frozen=True)
class StageKind:
    config: type[Config]
    run: Callable[[StageContext, nn.Module, Any], StageResult]
    help: str = ""


STAGES: Registry[StageKind] = Registry("stage kind")


class TrainStageConfig(Config):
    """`train` / `finetune`: fields override the recipe's `train:` settings for this stage."""

    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    max_steps: int | None = None
    from_scratch: bool = False
    model: str | dict[str, Any] | None = Field(
        None, description="train a fresh model of this zoo architecture instead (name or {name, kwargs})")


def _fresh_model(ctx: StageContext, ref: str | dict[str, Any]) -> nn.Module:
    from netcompress.core.errors import NetcompressError
    from netcompress.models import create_for

    name, kwargs = (ref, {}) if isinstance(ref, str) else (ref.get("name"), dict(ref.get("kwargs", {})))
    if not isinstance(name, str) or set(ref if isinstance(ref, dict) else {}) - {"name", "kwargs"}:
        raise NetcompressError(f"stage {ctx.name!r}: model must be a name or {{name, kwargs}}, got {ref!r}")
    torch.manual_seed(ctx.seed)
    return create_for(name, ctx.data, **kwargs)


def _run_train(ctx: StageContext, model: nn.Module, cfg: TrainStageConfig) -> StageResult:
    if cfg.model is not None:
        model = _fresh_model(ctx, cfg.model)
    elif cfg.from_scratch:
        from netcompress.models.io import build, describe

        model = build(describe(model))
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    hist = ctx.fit(model, cfg.model_dump(exclude={"from_scratch", "model"}), tag="train")
    return StageResult(model, history=hist.to_list())


def _run_finetune(ctx: StageContext, model: nn.Module, cfg: TrainStageConfig) -> StageResult:
    if cfg.model is not None or cfg.from_scratch:
        from netcompress.core.errors import NetcompressError

        raise NetcompressError(f"stage {ctx.name!r}: finetune continues the current model; use `train` for model / from_scratch")
    over = cfg.model_dump(exclude={"from_scratch", "model"})
    over.setdefault("lr", None)
    if over["lr"] is None:
        over["lr"] = ctx.train.lr * 0.1
    if over["epochs"] is None:
        over["epochs"] = max(1.0, ctx.train.epochs * 0.3)
    hist = ctx.fit(model, over, tag="finetune")
    return StageResult(model, history=hist.to_list())


STAGES.register("train", StageKind(TrainStageConfig, _run_train, "train the current model (fields override train:)"))
STAGES.register("finetune", StageKind(TrainStageConfig, _run_finetune, "fine-tune the current model (default lr x0.1, 30% of epochs)"))
