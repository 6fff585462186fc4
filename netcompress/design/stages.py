"""The `design` recipe stage: low-rank or separable transform, then recovery by fine-tuning or KD.

Example (a recipe variant):
    - name: svd-half
      from: baseline
      stages: [ {design: {op: lowrank, budget: 0.5, recover: finetune, epochs: 1}} ]
"""
from __future__ import annotations

from torch import nn

from netcompress.design.run import DesignConfig, cost_report, format_report, recovery, transform
from netcompress.train.stage import StageKind, StageResult


def _run_design(ctx, model: nn.Module, cfg: DesignConfig):
    from netcompress.train.loop import evaluate

    original = model
    new, layers = transform(model, cfg, ctx.data)
    extra = cost_report(original, new, layers, ctx.data.example)
    extra["accuracy_before_recovery"] = evaluate(new, ctx.data, device="cpu")
    _figure(ctx, extra, cfg.op)
    history = []
    if cfg.recover != "none":
        teacher = ctx.model(cfg.teacher) if cfg.teacher else original
        methods, loss_fn = recovery(cfg, teacher)
        budget = ctx.budget(cfg.epochs, cfg.lr, lr_factor=0.04 if cfg.recover == "distill" else 0.1)
        hist = ctx.fit(new, budget, methods=methods, loss_fn=loss_fn, tag=cfg.recover)
        for m in methods:
            new = m.finalize(new) or new
        history = hist.to_list()
    return StageResult(new, extra={"design": extra}, history=history)


def _figure(ctx, rep: dict, op: str) -> None:
    """Bar chart: MACs of each transformed layer before, after (counted) and by the formula."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["layers"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["before_macs"] for r in rows], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [r["after_macs"] for r in rows], 0.4, label="after (counted)")
    ax.plot(list(xs), [r["theory_macs"] for r in rows], "k_", markersize=18, label="formula")
    ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MACs (batch 1)")
    ax.set_title(f"{op}: MACs per transformed layer")
    ax.legend(fontsize=8)
    ctx.figure(f"{op}: MACs per layer", fig)


def register(stages) -> None:
    """Add the `design` stage kind to the STAGES registry."""
    stages.register("design", StageKind(DesignConfig, _run_design, summary=lambda ex: format_report(ex["design"]), help=
                                        "low-rank (SVD) or depthwise-separable transform, then fine-tune / distill"))
