"""The technique contract: one frozen config, one handler, one registration.

Every technique is a `StageKind(config, run, help)` in `STAGES`, with
``run(ctx: StageContext, model, cfg) -> StageResult``. The recipe runner, the Python function
`netcompress.recipe.apply` and the generated CLI command of the same name are three doors onto that
one handler. It lives here, just above the training loop, so that every technique family can use it
without importing the recipe layer above it.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
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
        figures: the report figures (PNG bytes by title) the stage attached, filled by `apply`.
    """

    model: nn.Module
    file: Path | None = None
    measure_model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)


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


    def budget(self, epochs: float | None, lr: float | None, *, lr_factor: float = 0.1,
               epochs_factor: float = 0.3) -> dict[str, float]:
        """The fine-tuning budget every stage uses (the only copy of these defaults): `epochs` or
        30 % of the recipe's ``train.epochs`` (at least 1), `lr` or ``train.lr`` x `lr_factor`."""
        return {"epochs": epochs if epochs is not None else max(1.0, self.train.epochs * epochs_factor),
                "lr": lr if lr is not None else self.train.lr * lr_factor}


@dataclass(frozen=True)
class StageKind:
    """A technique: its frozen config class, its handler and a one-line help.

    Attributes:
        config: the `Config` subclass; its fields (types, defaults, descriptions) are the recipe
            keys and the generated CLI flags.
        run: ``run(ctx, model, cfg) -> StageResult``.
        help: one line for `netcompress list` and the CLI command's help.
        dry_run: optional ``dry_run(ctx, model, cfg) -> str``: what the stage would do, changing
            nothing (the CLI's ``--dry-run``).
        summary: optional ``summary(extra) -> str``: a readable digest of `StageResult.extra`,
            printed by the CLI command (``--json`` prints `extra` itself).
        artifact_suffix: optional ``artifact_suffix(cfg) -> str``: the suffix of the file the stage
            writes (`StageResult.file`) under these settings; the CLI refuses, before any work, an
            ``--out`` with another suffix.
    """

    config: type[Config]
    run: Callable[[StageContext, nn.Module, Any], StageResult]
    help: str = ""
    dry_run: Callable[[StageContext, nn.Module, Any], str] | None = None
    summary: Callable[[dict[str, Any]], str] | None = None
    artifact_suffix: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if not self.help or "\n" in self.help:
            raise ValueError(f"StageKind({self.config.__name__}): help must be one non-empty line")


class _StageRegistry(Registry[StageKind]):
    """The stage-kind registry; its help text is always the kind's own one-line `help`."""

    def register(self, name: str, obj: StageKind | None = None, *, help: str = ""):
        if obj is None:
            raise TypeError("STAGES.register(name, StageKind(...)) takes the stage kind directly")
        return super().register(name, obj, help=help or obj.help)


STAGES: Registry[StageKind] = _StageRegistry("stage kind")


