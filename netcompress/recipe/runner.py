"""Run a recipe: baseline -> main stages -> variants, one run directory, resumable.

Run directory:
    recipe.yaml      the resolved recipe (defaults filled in, overrides applied)
    metrics.json     list of entries, baseline first; one per stage; Metrics fields + stage facts
    report.md/html   rewritten after every stage, so a stopped run still has its report
    model.pt         the final model of the main chain (model.ncz too when it ends with `pack`)
    stages/NN-NAME/  each stage's model.pt, done.json, checkpoints (*.ckpt) and artifacts

`resume=True` skips stages whose done.json exists and continues a stage's training from its
checkpoint. Variants start from a deep copy of their parent's model: the parent never retrains.
Under torchrun every rank runs the stages (training is data-parallel); only rank 0 writes files.
"""
from __future__ import annotations

import copy
import json
import sys
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.recipe.schema import Recipe, load_recipe
from netcompress.recipe.stages import STAGES, StageContext, StageResult


@dataclass
class RunResult:
    out: Path
    entries: list[dict[str, Any]]
    models: dict[str, nn.Module] = field(default_factory=dict)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe"):
            pass
    except OSError as e:
        raise NetcompressError(f"output directory {out} cannot be written: {e.strerror or e}") from None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _stage_plan(recipe: Recipe) -> list[tuple[str, str, str, dict, str]]:
    """(name, kind, parent, config, variant) for every stage, in run order; names are unique."""
    plan, used = [], {"baseline"}

    def name_for(item: dict, kind: str, prefix: str) -> str:
        base = item.get("name") or kind
        name, k = f"{prefix}{base}", 2
        while name in used:
            name, k = f"{prefix}{base}-{k}", k + 1
        used.add(name)
        return name

    parent = "baseline"
    for item in recipe.stages:
        kind = next(k for k in item if k != "name")
        name = name_for(item, kind, "")
        plan.append((name, kind, parent, item[kind] or {}, "main"))
        parent = name
    for v in recipe.variants:
        if v.name in used:
            raise NetcompressError(f"variant name {v.name!r} is already a stage or variant name")
        if v.from_ not in used:
            raise NetcompressError(f"variant {v.name!r}: from: {v.from_!r} is not an earlier stage or variant "
                                   f"(known: {', '.join(sorted(used))})")
        parent = v.from_
        for item in v.stages:
            kind = next(k for k in item if k != "name")
            name = name_for(item, kind, f"{v.name}/")
            plan.append((name, kind, parent, item[kind] or {}, v.name))
            parent = name
        used.add(v.name)
        plan.append((v.name, "@alias", parent, {}, v.name))
    return plan


def _entry(name: str, kind: str, variant: str, parent: str | None, metrics, seconds: float,
           extra: dict, history: list) -> dict[str, Any]:
    d = {"stage": name, "kind": kind, "variant": variant, "parent": parent, **metrics.to_dict(),
         "seconds": round(seconds, 2), "history": history}
    d["extra"] = {**d.get("extra", {}), **extra}
    return d


def run_recipe(recipe: str | Path | Recipe | None = None, out: str | Path | None = None,
               overrides: list[str] | None = None, resume: bool = False, progress: bool | None = None) -> RunResult:
    """Run a recipe file (None: the built-in default) and write the run directory.

    Example:
        >>> from netcompress.recipe import run_recipe
        >>> res = run_recipe("recipes/quick.yaml", out="runs/quick")   # doctest: +SKIP
    """
    from netcompress.data import load as load_data
    from netcompress.measure import measure
    from netcompress.models import create_for, load as load_model, save as save_model
    from netcompress.report import write_report
    from netcompress.train import dist_info, init_distributed

    t_start = time.perf_counter()
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    info = init_distributed()
    main = info.rank == 0
    out_dir = Path(out) if out is not None else Path("runs") / r.name
    work = out_dir if main else Path(tempfile.mkdtemp(prefix=f"nc-rank{info.rank}-"))
    if main:
        _check_writable(out_dir)
        if resume and not (out_dir / "recipe.yaml").exists():
            raise NetcompressError(f"--resume: {out_dir} holds no run to resume (no recipe.yaml)")
        if not resume:
            for old in ("stages", "metrics.json", "report.md", "report.html", "model.pt", "model.ncz"):
                p = out_dir / old
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        (out_dir / "recipe.yaml").write_text(r.to_yaml())
    plan = _stage_plan(r)

    data = load_data(r.data, batch_size=r.train.batch_size, seed=r.seed, data_dir=r.data_dir)
    torch.manual_seed(r.seed)
    model = create_for(r.model.name, data, **r.model.kwargs)

    entries: list[dict[str, Any]] = []
    total_stages = 1 + sum(1 for p in plan if p[1] != "@alias")
    counter = iter(range(1, total_stages + 1))

    def say(name: str, kind: str, note: str = "") -> None:
        if main and progress is not False:
            print(f"[{next(counter)}/{total_stages}] {name} ({kind}){note}", file=sys.stderr, flush=True)
    figures: dict[str, bytes] = {}
    models: dict[str, nn.Module] = {}

    def measure_result(res: StageResult, stage_dir: Path) -> Any:
        file = res.file
        if file is None and main:
            file = save_model(res.model, stage_dir / "model.pt")
        target = res.measure_model if res.measure_model is not None else res.model
        m = measure(target, data, file=file, latency=r.measure.latency and main, threads=r.measure.threads,
                    min_run_time=r.measure.min_run_time)
        if res.measure_model is not None:
            # a deployed form (e.g. int8 kernels) hides its weights from parameter and FLOP counters:
            # count them on the float model of the same architecture it was converted from
            from netcompress.measure import count_macs, count_params

            m.params, m.nonzero_params = count_params(res.model)
            m.macs = count_macs(res.model, data.example)
            m.extra["counted_on"] = "float model of the same architecture"
        for k, v in res.metrics.items():
            if not hasattr(m, k) or k == "extra":
                raise TypeError(f"StageResult.metrics names {k!r}, which is not a Metrics field")
            setattr(m, k, v)
        if res.metrics:
            m.extra["measured_by_stage"] = sorted(res.metrics)
        return m

    def finish(name: str, stage_dir: Path, res: StageResult, entry: dict) -> None:
        if main:
            if res.file is not None:
                save_model(res.model, stage_dir / "model.pt")
            (stage_dir / "done.json").write_text(json.dumps(entry))
        entries.append(entry)
        models[name] = res.model
        if main:
            _write_outputs()

    def _write_outputs() -> None:
        (out_dir / "metrics.json").write_text(json.dumps(entries, indent=1))
        write_report(out_dir, r, entries, figures, time.perf_counter() - t_start)

    def ctx_for(name: str, stage_dir: Path) -> StageContext:
        return StageContext(data=data, train=r.train, seed=r.seed, out_dir=stage_dir, models=models,
                            resume=resume, progress=progress, name=name, figures=figures)

    # baseline
    bdir = work / "stages" / "00-baseline"
    bdir.mkdir(parents=True, exist_ok=True)
    done = bdir / "done.json"
    say("baseline", "train", " (resumed: done)" if resume and done.exists() else "")
    if resume and done.exists() and (bdir / "model.pt").exists():
        model = load_model(bdir / "model.pt", trust_python=True)
        entry = json.loads(done.read_text())
        entries.append(entry)
        models["baseline"] = model
    else:
        t0 = time.perf_counter()
        ctx = ctx_for("baseline", bdir)
        hist = ctx.fit(model, {}, tag="train") if r.train.epochs > 0 else None
        res = StageResult(model, history=hist.to_list() if hist else [])
        m = measure_result(res, bdir)
        finish("baseline", bdir, res, _entry("baseline", "train", "main", None, m, time.perf_counter() - t0, {}, res.history))

    for i, (name, kind, parent, cfg_dict, variant) in enumerate(plan, start=1):
        if kind == "@alias":
            models[name] = models[parent]
            continue
        sdir = work / "stages" / f"{i:02d}-{_slug(name)}"
        sdir.mkdir(parents=True, exist_ok=True)
        done = sdir / "done.json"
        say(name, kind, " (resumed: done)" if resume and done.exists() else f" from {parent}")
        if resume and done.exists() and (sdir / "model.pt").exists():
            entries.append(json.loads(done.read_text()))
            models[name] = load_model(sdir / "model.pt", trust_python=True)
            continue
        sk = STAGES.get(kind)
        cfg = sk.config.from_dict(cfg_dict, where=f"stage {name!r}")
        t0 = time.perf_counter()
        ctx = ctx_for(name, sdir)
        res = sk.run(ctx, copy.deepcopy(models[parent]), cfg)
        if not isinstance(res, StageResult):
            raise TypeError(f"stage kind {kind!r} returned {type(res).__name__}, not StageResult")
        hist = res.history or next(iter(ctx.histories.values()), [])
        m = measure_result(res, sdir)
        finish(name, sdir, res, _entry(name, kind, variant, parent, m, time.perf_counter() - t0, res.extra, hist))

    last_main = [n for n, k, *_ , v in plan if v == "main"]
    final_name = last_main[-1] if last_main else "baseline"
    if main:
        save_model(models[final_name], out_dir / "model.pt")
        final_entry = next(e for e in entries if e["stage"] == final_name)
        src = final_entry.get("extra", {}).get("archive")
        if src and Path(src).exists():
            shutil.copyfile(src, out_dir / Path(src).name)
        _write_outputs()  # again: the report's wall time now covers the whole run
    elif work != out_dir:
        shutil.rmtree(work, ignore_errors=True)
    return RunResult(out_dir, entries, models)
