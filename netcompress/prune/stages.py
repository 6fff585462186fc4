"""Recipe stage kind `prune`: weight or channel pruning, any criterion, one-shot / iterative / AGP,
with fine-tuning through the recipe's training loop (`ctx.fit`)."""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.prune.depth import DEPTH_CRITERIA, plan_depth, remove_blocks
from netcompress.prune.importance import CRITERIA
from netcompress.prune.schedule import SlimmingMethod, iterative_channels, iterative_weights_
from netcompress.prune.structured import per_layer, plan
from netcompress.prune.unstructured import AGPMethod, weights_
from netcompress.train.bn import recalibrate_bn_
from netcompress.train.stage import StageKind, StageResult


class PruneConfig(Config):
    """`prune:` stage. Channel granularity removes channels physically (`ratio` of each group);
    weight granularity masks single weights (`sparsity`, a number or {layer type or name: s}); block
    granularity removes whole blocks (transformer layers, residual blocks: `ratio` of them)."""

    granularity: Literal["weight", "channel", "block"] = Field(
        "channel", description="channel: remove channels (ratio); weight: mask single weights (sparsity); "
        "block: remove whole blocks, i.e. depth (ratio); default: weight when only sparsity is given")
    criterion: str = Field("l1", description="l1, l2, fpgm, slimming, apoz, taylor, output_norm, random "
                           "(weight: l1, random; block: influence (the default there), random)")
    ratio: float | None = Field(None, ge=0, lt=1, description="channel: fraction of channels removed; block: of blocks")
    macs: float | None = Field(None, gt=0, lt=1, description="channel: instead of ratio, keep at most this fraction "
                               "of the dense MACs (the smallest ratio that gets there, by bisection)")
    sparsity: float | dict[str, float] | None = Field(None, description="weight: fraction of zero weights")
    scope: Literal["layer", "global"] | None = Field(None, description="default: layer (channel), global (weight)")
    schedule: Literal["oneshot", "iterative", "agp"] = Field(
        "oneshot", description="oneshot, iterative (steps rounds) or agp (gradual, weight only)")
    steps: int = Field(3, ge=1, description="iterative: prune / fine-tune rounds")
    epochs: float | None = Field(None, ge=0, description="fine-tune epochs (per round when iterative); default 30% of train.epochs")
    lr: float | None = Field(None, gt=0, description="fine-tune learning rate; default train.lr x 0.1")
    max_steps: int | None = Field(None, ge=1, description="stop each fine-tuning after this many steps")
    ignore: list[str] = Field(default_factory=list, description="module names left unpruned")
    slimming_lambda: float = Field(1e-4, ge=0, description="lambda of Network Slimming's L1 on BN gammas")
    slimming_epochs: float = Field(0, ge=0, description="sparsity-training epochs before pruning (criterion slimming)")
    calibration_samples: int = Field(256, ge=1, description="training samples scored by apoz / taylor / output_norm "
                                     "and averaged by recalibrate_bn")
    recalibrate_bn: bool = Field(True, description="channel / block: re-estimate the BatchNorm statistics on "
                                 "calibration_samples training samples after each removal, before fine-tuning "
                                 "(adaptive BN, Li et al. 2020); nothing to do without BatchNorm")

    @model_validator(mode="before")
    @classmethod
    def _granularity(cls, data: Any) -> Any:
        if isinstance(data, dict) and "granularity" not in data and data.get("sparsity") is not None \
                and data.get("ratio") is None:
            return {**data, "granularity": "weight"}
        if isinstance(data, dict) and data.get("granularity") == "block" and "criterion" not in data:
            return {**data, "criterion": "influence"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "PruneConfig":
        if self.granularity == "block":
            if self.ratio is None:
                raise ValueError("block pruning needs ratio")
            if self.sparsity is not None:
                raise ValueError("sparsity is for granularity weight; use ratio")
            if self.schedule != "oneshot":
                raise ValueError("block pruning is one-shot")
            if self.macs is not None:
                raise ValueError("macs is for granularity channel")
            if self.criterion not in DEPTH_CRITERIA:
                raise ValueError(f"block criterion must be {' or '.join(DEPTH_CRITERIA)}, got {self.criterion!r}")
        elif self.granularity == "channel":
            if (self.ratio is None) == (self.macs is None):
                raise ValueError("channel pruning needs ratio or macs (one of them)")
            if self.sparsity is not None:
                raise ValueError("sparsity is for granularity weight; use ratio")
            if self.schedule == "agp":
                raise ValueError("schedule agp is for granularity weight")
            if self.criterion not in CRITERIA:
                raise ValueError(f"unknown criterion {self.criterion!r}; valid: {', '.join(CRITERIA.list())}")
        else:
            if self.sparsity is None:
                raise ValueError("weight pruning needs sparsity")
            if self.ratio is not None or self.macs is not None:
                raise ValueError(f"{'ratio' if self.ratio is not None else 'macs'} is for granularity channel; "
                                 "use sparsity")
            if self.criterion not in ("l1", "random"):
                raise ValueError(f"weight criterion must be l1 or random, got {self.criterion!r}")
            vals = self.sparsity.values() if isinstance(self.sparsity, dict) else [self.sparsity]
            if any(not 0 <= v < 1 for v in vals):
                raise ValueError("sparsity must be in [0, 1)")
        return self


def _weight_per_layer(model: nn.Module) -> dict[str, dict[str, int]]:
    from netcompress.prune.unstructured import default_filter

    out = {}
    for name, m in model.named_modules():
        if default_filter(m, name):
            out[name] = {"kept": int((m.weight != 0).sum().item()), "total": m.weight.numel()}
    return out


def _chart(ctx, per: dict[str, dict[str, int]], what: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(per)
    kept = [per[n]["kept"] / max(per[n]["total"], 1) for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(names) + 2), 3))
    ax.bar(range(len(names)), kept, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"kept {what}")
    ax.set_title(f"kept {what} per layer")
    ctx.figure(f"kept {what} per layer", fig)


def run_prune(ctx, model: nn.Module, cfg: PruneConfig):
    """Run one `prune` stage; returns a StageResult with extra['per_layer'] = {layer: {kept, total}}."""
    over: dict[str, Any] = {**ctx.budget(cfg.epochs, cfg.lr), "max_steps": cfg.max_steps}
    history: list[dict[str, float]] = []

    steps = cfg.steps if cfg.schedule == "iterative" else 1
    rounds = iter(range(steps))

    def finetune(m: nn.Module, methods, tag: str) -> None:
        if over["epochs"] > 0:
            history.extend(ctx.fit(m, over, methods=methods, tag=tag).to_list())

    def recalibrate(m: nn.Module) -> None:
        if cfg.recalibrate_bn:
            recalibrate_bn_(m, ctx.data, cfg.calibration_samples)

    def after_round(m: nn.Module, methods) -> None:  # the schedules' `finetune` callback, once per round
        k = next(rounds)
        if cfg.granularity == "channel":
            recalibrate(m)
        finetune(m, methods, f"finetune{k}" if steps > 1 else "finetune")

    before = model
    if cfg.granularity == "block":
        blocks, gone = _plan_blocks(ctx, model, cfg)
        cur = remove_blocks(model, gone, ctx.data.example)
        recalibrate(cur)
        finetune(cur, [], "finetune")
        extra = {"granularity": "block", "criterion": cfg.criterion, "kept_blocks": len(blocks) - len(gone),
                 "total_blocks": len(blocks), "per_layer": per_layer(before, cur)}
        return StageResult(cur, extra=extra, history=history)
    if cfg.criterion == "slimming" and cfg.slimming_epochs > 0:
        history.extend(ctx.fit(model, {"epochs": cfg.slimming_epochs, "max_steps": cfg.max_steps},
                               methods=[SlimmingMethod(cfg.slimming_lambda)], tag="slimming").to_list())
    if cfg.granularity == "channel":
        cur = iterative_channels(model, after_round, cfg.ratio, steps, example_inputs=ctx.data.example,
                                 criterion=cfg.criterion, data=ctx.data, scope=cfg.scope or "layer", ignore=cfg.ignore,
                                 seed=ctx.seed, calibration=cfg.calibration_samples, macs=cfg.macs)
        per = per_layer(before, cur)
        what = "channels"
    else:
        scope = cfg.scope or "global"
        cur = model
        if cfg.schedule == "agp":
            if over["epochs"] <= 0:
                raise NetcompressError(f"stage {ctx.name!r}: schedule agp needs epochs > 0")
            total = int(round(over["epochs"] * len(ctx.data.loader("train", batch_size=ctx.train.batch_size))))
            total = min(total, cfg.max_steps) if cfg.max_steps else total
            if isinstance(cfg.sparsity, dict):
                raise NetcompressError(f"stage {ctx.name!r}: schedule agp takes one sparsity number")
            agp = AGPMethod(float(cfg.sparsity), end=max(1, int(0.8 * total)), frequency=max(1, total // 20),
                            criterion=cfg.criterion, scope=scope)
            finetune(cur, [agp], "agp")
            agp.finalize(cur)
        else:
            iterative_weights_(cur, after_round, cfg.sparsity, steps, cfg.criterion, scope, seed=ctx.seed)
        per = _weight_per_layer(cur)
        what = "weights"
    _chart(ctx, per, what)
    kept = sum(v["kept"] for v in per.values())
    total = sum(v["total"] for v in per.values())
    extra = {"per_layer": per, "granularity": cfg.granularity, "criterion": cfg.criterion,
             f"kept_{what}": kept, f"total_{what}": total}
    return StageResult(cur, extra=extra, history=history)


def _plan_blocks(ctx, model: nn.Module, cfg: PruneConfig):
    return plan_depth(model, cfg.ratio, example_inputs=ctx.data.example, data=ctx.data, criterion=cfg.criterion,
                      calibration=cfg.calibration_samples, seed=ctx.seed, ignore=cfg.ignore)


def dry_run_prune(ctx, model: nn.Module, cfg: PruneConfig) -> str:
    """What `cfg` would remove, without changing `model` (the CLI's --dry-run)."""
    model = copy.deepcopy(model).eval()
    if cfg.granularity == "block":
        blocks, gone = _plan_blocks(ctx, model, cfg)
        names = {b.name for b in gone}
        return "\n".join(f"{b.name:40s} {cfg.criterion} {b.score:.4f} {'remove' if b.name in names else 'keep'}"
                         for b in blocks)
    if cfg.granularity == "channel":
        return str(plan(model, cfg.criterion, cfg.ratio, example_inputs=ctx.data.example, data=ctx.data,
                        scope=cfg.scope or "layer", ignore=cfg.ignore, seed=ctx.seed,
                        calibration=cfg.calibration_samples, macs=cfg.macs))
    masks = weights_(model, cfg.criterion, cfg.sparsity, cfg.scope or "global", seed=ctx.seed)
    return "\n".join(f"{name:40s} keeps {int(m.sum())} of {m.numel()} weights" for name, m in masks.items())


def register(stages) -> None:
    help = "prune weights (masks) or channels (physical removal), then fine-tune"
    stages.register("prune", StageKind(PruneConfig, run_prune, help, dry_run=dry_run_prune))
    from netcompress.prune.variational import SparseVDConfig, run_sparse_vd

    help = "Sparse Variational Dropout (Molchanov et al. 2017): learn log alpha per weight, drop log alpha > 3"
    stages.register("sparse-vd", StageKind(SparseVDConfig, run_sparse_vd, help))
    from netcompress.prune import llm_stages

    llm_stages.register(stages)
