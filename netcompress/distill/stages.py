"""The `distill` recipe stage kind.

```yaml
variants:
  - name: kd-student
    from: baseline
    stages:
      - distill: {method: kd, teacher: baseline, student: lenet5-quarter, epochs: 3, compare_scratch: true}
```
The stage's output model is the distilled student (DML: peer 0; Born-Again: the last generation;
TAKD: the student taught by the assistant). Its report extra holds the student, teacher and (when
asked) scratch accuracies, plus per-peer / per-generation / assistant / ensemble accuracies.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.distill.protocols import DISTILLERS, DistillConfig, build_student, fresh_copy, run_distill
from netcompress.train.stage import StageContext, StageKind, StageResult


def resolve_teacher(ctx: StageContext, ref: str) -> nn.Module:
    """A teacher by recipe model name ("baseline", a stage name) or a saved model file."""
    if ref in ctx.models:
        return ctx.model(ref)
    if Path(ref).is_file():
        from netcompress.models import load

        return load(ref)
    raise NetcompressError(f"stage {ctx.name!r}: distill.teacher: {ref!r} is neither a model of this recipe "
                           f"({', '.join(ctx.models) or 'none yet'}) nor a model file")


def _plot(ctx: StageContext, extra: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report simply has no figure
        return
    bars = {k: extra[k] for k in ("teacher_acc", "scratch_acc", "student_acc", "assistant_acc", "direct_kd_acc",
                                  "ensemble_acc") if k in extra}
    for key, prefix in (("peer_acc", "peer"), ("generation_acc", "gen")):
        for i, a in enumerate(extra.get(key, [])):
            bars[f"{prefix}{i}"] = a
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(list(bars), [100 * v for v in bars.values()], color="#4c72b0")
    lo = min(bars.values()) * 100
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"distill: {extra['method']}")
    ax.tick_params(axis="x", labelrotation=30)
    ctx.figure(f"distillation ({extra['method']})", fig)


def run_stage(ctx: StageContext, model: nn.Module, cfg: DistillConfig) -> StageResult:
    """Run one distillation protocol with the recipe's data, seed and checkpointed training."""
    where = f"stage {ctx.name!r}: distill"
    cfg.validate_method(where)
    teacher = resolve_teacher(ctx, cfg.teacher) if cfg.method != "dml" else None
    if cfg.student is not None:
        student = build_student(cfg.student, ctx.data, where, teacher)
    elif cfg.method == "dml":
        student = fresh_copy(model)
    elif cfg.method == "born-again":
        student = None
    else:
        raise NetcompressError(f"{where}: student: required for method {cfg.method!r} (a model name, e.g. lenet5-quarter, or from-teacher: "
                               "the teacher cut to half its width)")

    def fit_fn(m, methods=(), loss_fn=None, tag="train", **over):
        return ctx.fit(m, over, methods=methods, loss_fn=loss_fn, tag=tag)

    res = run_distill(cfg, teacher, student, ctx.data, fit_fn, train=ctx.train)
    _plot(ctx, res.extra)
    history = next(reversed(res.histories.values())) if res.histories else []
    return StageResult(res.student, extra=res.extra, history=history)


def summary(extra: dict) -> str:
    """The accuracies of a `distill` stage's extra, one line."""
    keys = ("student_acc", "teacher_acc", "scratch_acc", "assistant_acc", "direct_kd_acc", "ensemble_acc")
    parts = [f"{k[:-4]} {100 * extra[k]:.2f}%" for k in keys if k in extra]
    return f"{extra['method']} (lr {extra.get('lr')}, epochs {extra.get('epochs')}): " + ", ".join(parts)


def register(stages) -> None:
    stages.register("distill", StageKind(DistillConfig, run_stage,
                                         "knowledge distillation: " + ", ".join(DISTILLERS),
                                         summary=summary))
