"""Deep Mutual Learning's default vs the paper's constant weight vs the student trained alone, on more seeds.

DML has no teacher: two peers of the student's architecture train together, each on CE + the KL to
the other's outputs. On mnist-5k the peers fit the 4,000 training images, so that term has little to
pass on late in training (`B5_dml_why.md`); early on, both peers are random and the term pulls each
towards noise. netcompress's default therefore ramps the term's weight up along exp(-5 (1 - t)^2)
over the first 30 % of the steps (Laine & Aila 2017; Tarvainen & Valpola 2017) to a full weight of 2
(`DistillConfig.rampup`, `protocols.DML_RAMPED_WEIGHT`). Per student and seed, from the same initial
weights and data order:
  - alone:    `nc.train.fit(student, data)` (10 epochs) and `epochs=20` (each DML phase's budget)
  - paper:    `nc.distill.distill("dml", None, student, data, rampup=0)`: weight 1 from the first step
  - paper x2: the same with `weights={"kl": 2}`: the default's full weight without its ramp
  - default:  `nc.distill.distill("dml", None, student, data)`
The output model is peer 0 in every DML row. 'beats both alone' counts seeds above the better of the
two alone runs; 'default - paper' is the paired per-seed difference.

    python benchmarks/bench_defaults_dml.py                 # 8 seeds, 3 students, 2 jobs
    python benchmarks/bench_defaults_dml.py --seeds 2 --students mlp
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from bench_defaults import STUDENTS, alone_runs  # noqa: E402

RUNS = {"paper": {"rampup": 0.0}, "paper x2": {"rampup": 0.0, "weights": {"kl": 2.0}}, "default": {}}


def run_one(key: str, seed: int) -> dict:
    torch.set_num_threads(1)
    data = nc.data.load("mnist-5k")
    torch.manual_seed(seed)
    init = STUDENTS[key][1](data)
    out: dict = {"key": key, "seed": seed, **alone_runs(init, data, seed)}
    for name, kw in RUNS.items():
        res = nc.distill.distill("dml", None, copy.deepcopy(init), data, seed=seed, **kw)
        out[name] = res.accuracy
        out[name + " ensemble"] = res.extra["ensemble_acc"]
    print(key, seed, {k: round(100 * v, 1) for k, v in out.items() if isinstance(v, float)}, flush=True)
    return out


def _pct(xs: list[float]) -> list[float]:
    return [round(100 * x, 1) for x in xs]


def main(seeds: int, students: list[str], jobs: int) -> None:
    tasks = [(k, s) for k in students for s in range(seeds)]
    t0 = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(run_one, [k for k, _ in tasks], [s for _, s in tasks]))
    else:
        parts = [run_one(k, s) for k, s in tasks]
    rows, notes = [], []
    for key in students:
        rs = sorted((p for p in parts if p["key"] == key), key=lambda p: p["seed"])
        label = STUDENTS[key][0]
        best = [max(r["alone"], r["alone2"]) for r in rs]
        col = {n: [r[n] for r in rs] for n in ("alone", "alone2", *RUNS)}
        rows.append([label, "alone, 10 epochs (fit defaults)", mean_std(col["alone"]), "", "", "", ""])
        rows.append([label, "alone, 20 epochs", mean_std(col["alone2"]), "", "", "", ""])
        for n in RUNS:
            acc = col[n]
            diff = [100 * (a - b) for a, b in zip(acc, best)]
            vs_paper = [100 * (a - b) for a, b in zip(acc, col["paper"])]
            ens = [r[n + " ensemble"] for r in rs]
            rows.append([label, f"dml {n}", mean_std(acc),
                         f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff) if len(diff) > 1 else 0:.2f}",
                         f"{sum(d > 0 for d in diff)}/{len(rs)}",
                         "" if n == "paper" else f"{statistics.mean(vs_paper):+.2f} ± "
                         f"{statistics.stdev(vs_paper) if len(vs_paper) > 1 else 0:.2f}",
                         mean_std(ens)])
        notes.append(f"{label}: per seed alone {_pct(col['alone'])}; alone 20 epochs {_pct(col['alone2'])}; "
                     + "; ".join(f"dml {n} {_pct(col[n])}" for n in RUNS))
    body = (f"Seeds 0-{seeds - 1}; mnist-5k test accuracy (%), mean ± std over seeds; 1 thread per job, "
            f"{jobs} jobs, {time.perf_counter() - t0:.0f} s. 'vs best alone' is the per-seed difference from the "
            "better of the two alone runs (points, mean ± std over seeds).\n\n"
            + md_table(["student", "run", "test acc %", "vs best alone (points)", "beats both alone (seeds)",
                        "vs dml paper, paired (points)", "ensemble of the peers %"], rows)
            + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_result("defaults_dml", "DML: default (ramped weight 2) vs the paper's constant weight vs the student alone "
                 "(mnist-5k)", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    main(a.seeds, a.students, a.jobs)
