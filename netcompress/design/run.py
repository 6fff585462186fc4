"""One design step as data: a frozen config, the transform, the recovery and the cost report.

Shared by the `design` recipe stage and the `netcompress design` command, so both behave alike.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netcompress.core.batch import concat
from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method


class DesignConfig(Config):
    """`design` stage / command settings.

    op: "lowrank" (give one of rank / energy / budget) or "separable".
    include / exclude: fnmatch patterns on qualified layer names (default: every eligible layer).
    recover: "none", "finetune" (plain training) or "distill" (KD from the untransformed model,
    Hinton et al. 2015, through `netcompress.distill.KD`).
    """

    op: Literal["lowrank", "separable"] = Field(description="lowrank (SVD factorisation) or separable (depthwise + pointwise)")
    rank: int | dict[str, int] | None = Field(None, description="lowrank: K for every layer, or per layer name")
    energy: float | None = Field(None, gt=0, le=1, description="lowrank: kept singular-value energy")
    budget: float | None = Field(None, gt=0, lt=1, description="lowrank: fraction of params/MACs to keep")
    budget_metric: Literal["params", "macs"] = Field("params", description="lowrank: what budget counts")
    conv: Literal["spatial", "channel"] = Field("spatial", description="conv decomposition: spatial (kx1 + 1xk, "
                                                "Jaderberg et al.) or channel (k x k to K, then 1x1)")
    include: list[str] | None = Field(None, description="only layers matching these fnmatch patterns (default all)")
    exclude: list[str] = Field(default_factory=list, description="skip layers matching these fnmatch patterns")
    calibration_samples: int = Field(256, ge=0, description="separable: training samples for the pointwise least-squares fit")
    recover: Literal["none", "finetune", "distill"] = Field("finetune", description="recovery: none, fine-tuning "
                                                           "or KD from the untransformed model")
    epochs: float | None = Field(None, ge=0, description="recovery epochs (default 30% of train.epochs, >= 1)")
    lr: float | None = Field(None, gt=0, description="recovery learning rate (default train.lr x 0.1; x 0.04 for "
                             "distill, whose T^2-scaled term has up to T times larger gradients)")
    temperature: float = Field(4.0, gt=0, description="distill: KD temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="distill: KD weight (CE gets 1 - alpha)")
    teacher: str | None = Field(None, description="distill: model name in the run (default: the stage input)")

    @model_validator(mode="after")
    def _check(self) -> "DesignConfig":
        given = [k for k in ("rank", "energy", "budget") if getattr(self, k) is not None]
        if self.op == "lowrank" and len(given) != 1:
            raise ValueError(f"op lowrank needs exactly one of rank, energy, budget (got {', '.join(given) or 'none'})")
        if self.op == "separable" and given:
            raise ValueError(f"op separable takes no {', '.join(given)}")
        return self


def name_filter(include: list[str] | None, exclude: list[str]):
    """A name test from fnmatch patterns: included (default all) and not excluded."""

    def fn(name: str) -> bool:
        ok = include is None or any(fnmatch.fnmatchcase(name, p) for p in include)
        return ok and not any(fnmatch.fnmatchcase(name, p) for p in exclude)

    return fn


def transform(model: nn.Module, cfg: DesignConfig, data: Any = None) -> tuple[nn.Module, dict[str, tuple[str, int | None]]]:
    """Apply `cfg`'s transform; returns the new model and {replaced layer: (op label, rank)}.

    Only eligible layers whose names pass include / exclude are transformed (Linear and ungrouped
    Conv2d for lowrank, standard k x k convs for separable).
    """
    from netcompress.design.lowrank import apply_plan, default_filter, default_layers, plan_lowrank
    from netcompress.design.separable import default_convs, is_standard_conv, separable

    example = getattr(data, "example", None)
    names_ok = name_filter(cfg.include, cfg.exclude)
    # layers named by `include` are the user's choice (one that cannot be replaced is an error);
    # without it, the transform's own default set (which leaves out what it cannot replace)
    if cfg.op == "lowrank":
        auto = set(default_layers(model)) if cfg.include is None else None
        filt = lambda m, n: (n in auto if auto is not None else default_filter(m, n)) and names_ok(n)  # noqa: E731
        plans = plan_lowrank(model, cfg.rank, cfg.energy, cfg.budget, None if isinstance(cfg.rank, dict) else filt,
                             conv=cfg.conv, budget_metric=cfg.budget_metric, example_inputs=example)
        new = apply_plan(model, plans, cfg.conv)
        return new, {p.name: (p.kind, p.rank) for p in plans if p.rank is not None}
    auto = set(default_convs(model)) if cfg.include is None else None
    filt = lambda m, n: (n in auto if auto is not None else is_standard_conv(m)) and names_ok(n)  # noqa: E731
    calib = None
    if data is not None and cfg.calibration_samples > 0:
        calib = concat([x for x, _ in data.calibration(cfg.calibration_samples)])
    new = separable(model, filt, calibration=calib)
    names = [n for n, m in model.named_modules() if n and filt(m, n)]
    return new, {n: ("separable", None) for n in names}


def recovery(cfg: DesignConfig, teacher: nn.Module) -> tuple[list[Method], Any]:
    """The training methods and task loss of the recovery step: ([], None) for plain fine-tuning,
    ([KD], KD.task_loss) for distillation from `teacher` (Hinton et al. 2015: (1-a) CE + a T^2 KL)."""
    if cfg.recover != "distill":
        return [], None
    try:
        from netcompress.distill import KD
    except ImportError as e:
        raise NetcompressError(f"design: recover 'distill' needs netcompress.distill.KD ({e}); use recover: finetune") from None
    kd = KD(teacher, temperature=cfg.temperature, alpha=cfg.alpha)
    return [kd], kd.task_loss


def cost_report(original: nn.Module, new: nn.Module, layers: dict[str, tuple[str, int | None]],
                example_inputs: torch.Tensor, latency: bool = True) -> dict[str, Any]:
    """Params and MACs (counted and by formula) per layer and in total, the MobileNets / SVD theory
    ratios, and measured batch-1 latency of both models."""
    from netcompress.design.costs import compare_layers, separable_ratio
    from netcompress.measure.metrics import count_macs, count_params, latency_ms

    rows = compare_layers(original, new, layers, example_inputs)
    mods = dict(original.named_modules())
    out_rows = []
    for r in rows:
        d = r.to_dict()
        m = mods[r.name]
        if r.op == "separable":
            d["theory_ratio"] = separable_ratio(m.out_channels, m.kernel_size)
        else:
            d["theory_ratio"] = r.theory_macs / max(1, r.before_macs)
        d["measured_ratio"] = r.after_macs / max(1, r.before_macs)
        out_rows.append(d)
    rep: dict[str, Any] = {
        "layers": out_rows,
        "params_before": count_params(original)[0], "params_after": count_params(new)[0],
        "macs_before": count_macs(original, example_inputs), "macs_after": count_macs(new, example_inputs),
        "layer_macs_before": sum(r.before_macs for r in rows), "layer_macs_after": sum(r.after_macs for r in rows),
    }
    if latency:
        rep["latency_ms_b1_before"] = latency_ms(original, example_inputs, 1)
        rep["latency_ms_b1_after"] = latency_ms(new, example_inputs, 1)
        rep["speedup_b1"] = rep["latency_ms_b1_before"] / rep["latency_ms_b1_after"]
    return rep


def format_report(rep: dict[str, Any]) -> str:
    """A plain-text table of `cost_report`'s output."""
    lines = [f"{'layer':28s} {'op':13s} {'rank':>5s} {'params':>17s} {'MACs':>23s} {'theory':>7s} {'counted':>7s}"]
    for r in rep["layers"]:
        lines.append(f"{r['name']:28s} {r['op']:13s} {str(r['rank'] or '-'):>5s} "
                     f"{r['before_params']:>8,}->{r['after_params']:<8,} {r['before_macs']:>11,}->{r['after_macs']:<11,} "
                     f"{r['theory_ratio']:7.3f} {r['measured_ratio']:7.3f}")
    lines.append(f"model: params {rep['params_before']:,} -> {rep['params_after']:,} "
                 f"({rep['params_before'] / max(1, rep['params_after']):.2f}x), MACs {rep['macs_before']:,} -> "
                 f"{rep['macs_after']:,} ({rep['macs_before'] / max(1, rep['macs_after']):.2f}x), transformed layers' MACs "
                 f"{rep['layer_macs_before'] / max(1, rep['layer_macs_after']):.2f}x fewer")
    if "speedup_b1" in rep:
        lines.append(f"latency b1: {rep['latency_ms_b1_before']:.3f} ms -> {rep['latency_ms_b1_after']:.3f} ms "
                     f"({rep['speedup_b1']:.2f}x)")
    return "\n".join(lines)
