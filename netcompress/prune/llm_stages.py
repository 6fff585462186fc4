"""Recipe stage kind `sparsify`: one-shot magnitude / Wanda / SparseGPT pruning of a transformer's
block Linears (50 % or N:M), calibrated on training data, optionally fine-tuned with the masks held.

    - sparsify: {criterion: wanda, sparsity: 0.5}
    - sparsify: {criterion: sparsegpt, pattern: "2:4", samples: 64}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from netcompress.core.config import Config
from netcompress.train.stage import StageKind, StageResult


class SparsifyConfig(Config):
    """`sparsify:` stage (see `netcompress.prune.llm.prune_`)."""

    criterion: Literal["magnitude", "wanda", "sparsegpt"] = Field("wanda", description="magnitude (no data), wanda or sparsegpt")
    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of zeros per layer (ignored with pattern)")
    pattern: str | None = Field(None, description="N:M semi-structured sparsity, e.g. '2:4'")
    samples: int = Field(64, ge=1, description="calibration samples from the training split")
    blocksize: int = Field(128, ge=1, description="sparsegpt: columns per lazy update (speed only)")
    mask_block: int | None = Field(None, ge=1, description="sparsegpt: columns whose mask is chosen together "
                                   "(default: in_features // 32, between 1 and 128)")
    damp: float = Field(0.01, gt=0, description="sparsegpt: damping, fraction of the mean Hessian diagonal")
    sequential: bool | Literal["block", "layer"] = Field(True, description="true or 'layer': calibrate each group of "
                                                         "layers on the already pruned earlier ones; 'block': per "
                                                         "block; false: one pass over the unpruned model")
    ignore: list[str] = Field(default_factory=list, description="Linear layers left dense (qualified names)")
    epochs: float = Field(0, ge=0, description="fine-tune epochs with the masks held (0: one-shot, no retraining)")
    lr: float | None = Field(None, gt=0, description="fine-tune learning rate; default train.lr x 0.1")
    max_steps: int | None = Field(None, ge=1, description="fine-tune: stop after this many optimizer steps")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        from netcompress.prune.llm import parse_pattern

        try:
            parse_pattern(v)
        except Exception as e:
            raise ValueError(str(e)) from None
        return v


def run_sparsify(ctx, model: nn.Module, cfg: SparsifyConfig):
    """Prune, fine-tune if asked, make the masks permanent; extra['per_layer'] = {layer: sparsity}."""
    from netcompress.prune.llm import prune_
    from netcompress.prune.unstructured import MaskMethod, finalize_

    per = prune_(model, cfg.criterion, None if cfg.criterion == "magnitude" else ctx.data, cfg.sparsity, cfg.pattern,
                 cfg.samples, cfg.blocksize, cfg.damp, cfg.sequential, cfg.ignore, cfg.mask_block)
    history = []
    if cfg.epochs > 0:
        over = {"epochs": cfg.epochs, "lr": cfg.lr or ctx.train.lr * 0.1, "max_steps": cfg.max_steps}
        history = ctx.fit(model, over, methods=[MaskMethod()], tag="finetune").to_list()
    finalize_(model)
    extra = {"criterion": cfg.criterion, "pattern": cfg.pattern, "sparsity": cfg.sparsity if cfg.pattern is None else None,
             "per_layer": per}
    return StageResult(model, extra=extra, history=history)


def register(stages) -> None:
    help = "one-shot unstructured / N:M pruning of transformer Linears: magnitude, Wanda, SparseGPT"
    stages.register("sparsify", StageKind(SparsifyConfig, run_sparsify, help))
