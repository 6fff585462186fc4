"""B12 half-size gpt-tiny student at 4x the budget: is the KD gap at 800 steps a training-time gap?

At the converged-benchmark budget (800 steps, `B12_student_init_gpt.md`) the half student alone is
far from trained: this script trains the teacher (gpt-tiny) and the half student (gpt-tiny-half)
for `--steps` (default 3200 = 4x; batch 16 x 128 bytes, AdamW 3e-3 cosine, as the other B12 runs),
the student alone (labels) and by logit KD (T 2, alpha 0.5: the B12 setting), from the same
initialisation, and reports test and training perplexity. Gap recovered = (alone - KD) / (alone -
teacher), summed over seeds. Seeds run in parallel processes, 1 thread each.

    python benchmarks/bench_student_budget.py             # 3 seeds, 2 processes: about 50 minutes
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, write_result  # noqa: E402
from bench_student_init import gpt_trainer, trained  # noqa: E402
from bench_transformers import dense_gpt, ms  # noqa: E402
from netcompress.train.lm import evaluate_lm  # noqa: E402


def perplexities(model, data) -> tuple[float, float]:
    return evaluate_lm(model, data)["perplexity"], evaluate_lm(model, data, split="train")["perplexity"]


def run_seed(seed: int, steps: int) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base, data = dense_gpt(seed, steps)
    r = {"seed": seed, "teacher": perplexities(base, data), "teacher_s": time.perf_counter() - t0}
    torch.manual_seed(seed)
    init = nc.models.create_for("gpt-tiny-half", data)
    train = gpt_trainer(data, seed, steps)
    for row, kd in (("alone", False), ("kd", True)):
        r[row], r[f"{row}_s"] = trained(init, base if kd else None, train, lambda m: perplexities(m, data))
    print(seed, r, flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3200)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(run_seed, a.seeds, [a.steps] * len(a.seeds)))
    gap = sum(r["alone"][0] - r["teacher"][0] for r in runs)
    rows = []
    for key, label in (("teacher", "teacher gpt-tiny"), ("alone", "half student alone (labels)"),
                       ("kd", "half student, logit KD (T 2, alpha 0.5)")):
        rec = "" if key != "kd" else f"{sum(r['alone'][0] - r['kd'][0] for r in runs) / gap:.2f}"
        beats = "" if key != "kd" else f"{sum(r['kd'][0] < r['alone'][0] for r in runs)}/{len(runs)}"
        rows.append([label, ms([r[key][0] for r in runs]), ms([r[key][1] for r in runs]), rec, beats,
                     ms([r[f"{key}_s"] for r in runs], 0)])
    per_seed = "; ".join(f"seed {r['seed']}: teacher {r['teacher'][0]:.3f}, alone {r['alone'][0]:.3f}, "
                         f"kd {r['kd'][0]:.3f}" for r in runs)
    body = (f"Seeds {a.seeds}; teacher and students {a.steps} steps (batch 16 x 128 bytes, AdamW 3e-3 cosine), "
            f"1 thread per seed; {time.perf_counter() - t0:.0f} s. The same seeds at 800 steps: "
            "`B12_student_init_gpt.md`.\n\n"
            + md_table(["model", "test perplexity", "train perplexity", "gap recovered", "KD below alone (seeds)",
                        "seconds"], rows)
            + f"\n{per_seed}\n")
    write_result("B12_student_budget_gpt", f"B12: half-size gpt-tiny student at {a.steps} steps, KD vs alone", body)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
