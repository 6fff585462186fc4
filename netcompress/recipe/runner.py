"""Run a recipe: baseline -> main stages -> variants, one run directory, resumable.

Run directory:
    recipe.yaml      the resolved recipe (defaults filled in, overrides applied)
    metrics.json     list of entries, baseline first; one per stage; Metrics fields + stage facts
    report.md/html   rewritten after every stage, so a stopped run still has its report
    model.pt         the final model of the main chain (model.ncz too when it ends with `pack`)
    stages/NN-NAME/  each stage's model.pt, done.json, checkpoints (*.ckpt), figures and artifacts

Everything (recipe, stage configs, data, model, layer names) is validated before the output folder
is touched. The run is written into ``.NAME.partial`` beside `out` under an exclusive lock and moved
into place when it has finished, so a failed or stopped run leaves the previous run as it was
(`netcompress.recipe.rundir`). `resume=True` continues the unfinished folder (or the finished run):
a stage is reused only when the hash of its resolved settings and inputs is unchanged; a changed
stage is recomputed, with the stages that depend on it, and a line names the changed fields.
Model files of the run folder never import code unless `trust_python=True`.
Variants start from a deep copy of their parent's model: the parent never retrains.
Under torchrun every rank runs the stages (training is data-parallel); only rank 0 writes files.
"""
from __future__ import annotations

import copy
import json
import os
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
from netcompress.recipe import rundir
from netcompress.recipe.schema import Recipe, load_recipe
from netcompress.recipe.stages import STAGES, StageContext, StageResult


@dataclass
class RunResult:
    out: Path
    entries: list[dict[str, Any]]
    models: dict[str, nn.Module] = field(default_factory=dict)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _stage_plan(recipe: Recipe, locs: dict[str, tuple] | None = None) -> list[tuple[str, str, str, dict, str]]:
    """(name, kind, parent, config, variant) for every stage, in run order; names are unique.
    `locs` receives each stage's field path in the recipe, e.g. ('stages', 0, 'prune')."""
    plan, used = [], {"baseline"}
    locs = {} if locs is None else locs

    def name_for(item: dict, kind: str, prefix: str) -> str:
        base = item.get("name") or kind
        name, k = f"{prefix}{base}", 2
        while name in used:
            name, k = f"{prefix}{base}-{k}", k + 1
        used.add(name)
        return name

    parent = "baseline"
    for i, item in enumerate(recipe.stages):
        kind = next(k for k in item if k != "name")
        name = name_for(item, kind, "")
        plan.append((name, kind, parent, item[kind] or {}, "main"))
        locs[name] = ("stages", i, kind)
        parent = name
    for j, v in enumerate(recipe.variants):
        if v.name in used:
            raise NetcompressError(f"variant name {v.name!r} is already a stage or variant name")
        if v.from_ not in used:
            raise NetcompressError(f"variant {v.name!r}: from: {v.from_!r} is not an earlier stage or variant "
                                   f"(known: {', '.join(sorted(used))})")
        parent = v.from_
        for si, item in enumerate(v.stages):
            kind = next(k for k in item if k != "name")
            name = name_for(item, kind, f"{v.name}/")
            plan.append((name, kind, parent, item[kind] or {}, v.name))
            locs[name] = ("variants", j, "stages", si, kind)
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


def _read_done(stage_dir: Path) -> dict[str, Any] | None:
    """The record of a finished stage (None when absent, unreadable or written by an older version)."""
    try:
        rec = json.loads((stage_dir / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("entry"), dict) and "key" in rec else None


def run_recipe(recipe: str | Path | Recipe | None = None, out: str | Path | None = None,
               overrides: list[str] | None = None, resume: bool = False, progress: bool | None = None,
               trust_python: bool = False) -> RunResult:
    """Run a recipe file (None: the built-in default) and write the run directory.

    Args:
        recipe: a recipe file, a `Recipe`, or None for the built-in default.
        out: the run directory (default ``runs/<recipe name>``).
        overrides: ``KEY=VALUE`` strings applied to the recipe file.
        resume: continue a stopped run in `out`; unchanged finished stages are reused.
        progress: progress bars (None: when the terminal is interactive).
        trust_python: allow model files of the run folder that name python code (resume).

    Example:
        from netcompress.recipe import run_recipe
        res = run_recipe("recipes/quick.yaml", out="runs/quick")
    """
    from netcompress.data import load as load_data
    from netcompress.models import create_for
    from netcompress.recipe.names import check_layer_names
    from netcompress.train import init_distributed

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    info = init_distributed()
    main = info.rank == 0
    out_dir = Path(out) if out is not None else Path("runs") / r.name
    # 1. validate everything before the output folder is touched
    locs: dict[str, tuple] = {}
    plan = _stage_plan(r, locs)
    cfgs = {name: STAGES.get(kind).config.from_dict(cfg_dict, where=f"stage {name!r}")
            for name, kind, _, cfg_dict, _ in plan if kind != "@alias"}
    if main:
        rundir.check_target(out_dir, resume)
    data = load_data(r.data, batch_size=r.train.batch_size, seed=r.seed, data_dir=r.data_dir)
    model = create_for(r.model.name, data, seed=r.seed, **r.model.kwargs)
    check_layer_names(model, plan, lambda name, kind, fld: r.line_of(*locs[name], fld))
    # 2. one writer: the lock, then a folder of our own beside the target
    if not main:
        work = Path(tempfile.mkdtemp(prefix=f"nc-rank{info.rank}-"))
        try:
            return _execute(r, plan, cfgs, data, model, work, out_dir, resume, progress, trust_python, main)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with rundir.RunLock(out_dir):
        work = rundir.start_work(out_dir, resume)
        try:
            res = _execute(r, plan, cfgs, data, model, work, out_dir, resume, progress, trust_python, main)
        except BaseException as e:
            finished = any((work / "stages").glob("*/done.json")) if work.exists() else False
            if not finished:
                shutil.rmtree(work, ignore_errors=True)
            elif isinstance(e, NetcompressError):
                raise NetcompressError(f"{e} (the finished stages are kept; --resume continues the run)") from None
            raise
        rundir.commit_work(work, out_dir)
    return res


def _execute(r: Recipe, plan, cfgs, data, model, work: Path, out_dir: Path, resume: bool, progress: bool | None,
             trust_python: bool, main: bool) -> RunResult:
    from netcompress.measure import measure
    from netcompress.measure.checks import result_warnings
    from netcompress.models import load as load_model, save as save_model
    from netcompress.report import write_report

    t_start = time.perf_counter()
    if main:
        (work / "recipe.yaml").write_text(r.to_yaml())
    entries: list[dict[str, Any]] = []
    total_stages = 1 + sum(1 for p in plan if p[1] != "@alias")
    counter = iter(range(1, total_stages + 1))

    def say(name: str, kind: str, note: str = "") -> None:
        if main and progress is not False:
            print(f"[{next(counter)}/{total_stages}] {name} ({kind}){note}", file=sys.stderr, flush=True)

    def tell(text: str) -> None:
        if main:
            print(text, file=sys.stderr, flush=True)

    figures: dict[str, bytes] = {}
    models: dict[str, nn.Module] = {}
    keys: dict[str, str] = {}
    common = {"seed": r.seed, "data": r.data, "data_dir": r.data_dir, "model": r.model.model_dump(mode="json"),
              "train": r.train.to_dict(), "measure": r.measure.to_dict(),
              "data_shape": {"classes": data.num_classes, "input": list(data.input_shape),
                             "train": len(data.train_set), "test": len(data.test_set)}}

    def final_path(v: Any) -> Any:
        """Paths inside the work folder, as they will be once the run is in place."""
        if isinstance(v, str) and v.startswith(str(work) + os.sep):
            return str(out_dir / os.path.relpath(v, work))
        return v

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

    def write_outputs() -> None:
        (work / "metrics.json").write_text(json.dumps(entries, indent=1))
        write_report(work, r, entries, figures, time.perf_counter() - t_start)

    def finish(name: str, stage_dir: Path, res: StageResult, entry: dict, key: str, flat: dict, before: set) -> None:
        entry["extra"] = {k: final_path(v) for k, v in entry.get("extra", {}).items()}
        entry["warnings"] = result_warnings(entry.get("accuracy"), data.num_classes, entry["extra"])
        for w in entry["warnings"]:
            tell(f"WARNING: stage {name!r}: {w}")
        if main:
            if res.file is not None:
                save_model(res.model, stage_dir / "model.pt")
            new_figs = [t for t in figures if t not in before]
            (stage_dir / "figures").mkdir(exist_ok=True)
            for i, t in enumerate(new_figs):
                (stage_dir / "figures" / f"{i:02d}.png").write_bytes(figures[t])
            rec = {"entry": entry, "key": key, "settings": flat, "figures": new_figs,
                   "model_sha256": rundir.file_sha256(stage_dir / "model.pt")}
            (stage_dir / "done.json").write_text(json.dumps(rec))
        entries.append(entry)
        models[name] = res.model
        if main:
            write_outputs()

    def reuse(name: str, stage_dir: Path, key: str, flat: dict, parent: str | None) -> bool:
        """Load a finished stage when `resume` and nothing it depends on changed."""
        if not resume:
            return False
        rec = _read_done(stage_dir)
        if rec is None:
            if (stage_dir / "done.json").exists():
                tell(f"stage {name!r}: its record predates settings hashes; recomputing it")
            return False
        if rec["key"] != key:
            changed = rundir.changed_fields(rec.get("settings", {}), flat)
            why = "; ".join(changed[:6]) + (f" (and {len(changed) - 6} more)" if len(changed) > 6 else "") \
                if changed else f"its input {parent!r} was recomputed"
            tell(f"stage {name!r}: changed since the stopped run ({why}); recomputing it and the stages after it")
            return False
        mfile = stage_dir / "model.pt"
        if not mfile.is_file() or rundir.file_sha256(mfile) != rec.get("model_sha256"):
            tell(f"stage {name!r}: its model file is missing or differs from the one it wrote; recomputing it")
            return False
        models[name] = load_model(mfile, trust_python=trust_python)
        entries.append(rec["entry"])
        for i, t in enumerate(rec.get("figures", [])):
            png = stage_dir / "figures" / f"{i:02d}.png"
            if png.is_file():
                figures[t] = png.read_bytes()
        return True

    def fresh(stage_dir: Path, key: str) -> bool:
        """Prepare a stage folder for running: checkpoints are resumed only when written under the same key."""
        stage_dir.mkdir(parents=True, exist_ok=True)
        kfile = stage_dir / "key.txt"
        same = resume and kfile.is_file() and kfile.read_text() == key
        if not same and main:
            for p in list(stage_dir.iterdir()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            kfile.write_text(key)
        return same

    def ctx_for(name: str, stage_dir: Path, can_resume: bool) -> StageContext:
        return StageContext(data=data, train=r.train, seed=r.seed, out_dir=stage_dir, models=models,
                            resume=can_resume, progress=progress, name=name, figures=figures)

    # baseline
    bdir = work / "stages" / "00-baseline"
    bkey, bflat = rundir.stage_key({"kind": "train", **common}, None)
    keys["baseline"] = bkey
    if reuse("baseline", bdir, bkey, bflat, None):
        say("baseline", "train", " (resumed: done)")
    else:
        say("baseline", "train")
        can = fresh(bdir, bkey)
        t0, before = time.perf_counter(), set(figures)
        ctx = ctx_for("baseline", bdir, can)
        hist = ctx.fit(model, {}, tag="train") if r.train.epochs > 0 else None
        res = StageResult(model, history=hist.to_list() if hist else [])
        m = measure_result(res, bdir)
        finish("baseline", bdir, res, _entry("baseline", "train", "main", None, m, time.perf_counter() - t0, {}, res.history),
               bkey, bflat, before)

    for i, (name, kind, parent, cfg_dict, variant) in enumerate(plan, start=1):
        if kind == "@alias":
            models[name] = models[parent]
            keys[name] = keys[parent]
            continue
        sdir = work / "stages" / f"{i:02d}-{_slug(name)}"
        cfg = cfgs[name]
        key, flat = rundir.stage_key({"kind": kind, "stage": cfg.to_dict(), **common}, keys[parent])
        keys[name] = key
        if reuse(name, sdir, key, flat, parent):
            say(name, kind, " (resumed: done)")
            continue
        say(name, kind, f" from {parent}")
        can = fresh(sdir, key)
        sk = STAGES.get(kind)
        t0, before = time.perf_counter(), set(figures)
        ctx = ctx_for(name, sdir, can)
        torch.manual_seed(r.seed)  # each stage starts from the seed, run or resumed alike (as its CLI command)
        res = sk.run(ctx, copy.deepcopy(models[parent]), cfg)
        if not isinstance(res, StageResult):
            raise TypeError(f"stage kind {kind!r} returned {type(res).__name__}, not StageResult")
        hist = res.history or next(iter(ctx.histories.values()), [])
        m = measure_result(res, sdir)
        finish(name, sdir, res, _entry(name, kind, variant, parent, m, time.perf_counter() - t0, res.extra, hist),
               key, flat, before)

    last_main = [n for n, k, *_, v in plan if v == "main"]
    final_name = last_main[-1] if last_main else "baseline"
    if main:
        save_model(models[final_name], work / "model.pt")
        final_entry = next(e for e in entries if e["stage"] == final_name)
        src = final_entry.get("extra", {}).get("archive")
        if isinstance(src, str):
            src_now = work / os.path.relpath(src, out_dir) if src.startswith(str(out_dir) + os.sep) else Path(src)
            if src_now.exists():
                shutil.copyfile(src_now, work / src_now.name)
        write_outputs()  # again: the report's wall time now covers the whole run
    return RunResult(out_dir, entries, models)
