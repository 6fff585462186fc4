"""B12 half-size student, patient: does distillation recover the gap when it trains longer than the
student alone stops gaining? (Beyer et al. 2022: a good teacher is patient.)

Per seed, in one process: vit-tiny trained 30 epochs on mnist-5k (the converged dense model of the
transformer benchmarks, AdamW 2e-3 cosine), then a half-depth, half-width student (vit-tiny-half)
from one initialisation trained
  - alone for 30 epochs and for 60 epochs (the control at both budgets),
  - by logit KD (T 2, alpha 0.5: HiddenKD's logit term) for 60 epochs,
  - by HiddenKD (logits + hidden states through projections + attention relations, defaults) for 60.
Gap recovered = (KD - best alone) / (dense - best alone), summed over seeds (a per-seed ratio is
unstable when a seed's gap is a few tenths of a point). Goal (issue 15): >= 0.5.

    python benchmarks/bench_patient_kd.py                # 3 seeds, 2 jobs, ~35 min on 2 cores
    python benchmarks/bench_patient_kd.py --seeds 0 --jobs 1
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from bench_transformers import VIT_EPOCHS, VIT_TRAIN, dense_vit  # noqa: E402
from netcompress.distill.methods import KD  # noqa: E402
from netcompress.distill.transformer import HiddenKD  # noqa: E402
from netcompress.train import TrainConfig  # noqa: E402


def one_seed(seed: int, factor: float) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base, data = dense_vit(seed)
    r = {"seed": seed, "dense": nc.train.evaluate(base, data)}
    torch.manual_seed(1000 + seed)
    init = nc.models.create_for("vit-tiny-half", data)
    long = VIT_EPOCHS * factor

    def train(epochs: float, make_method=None) -> float:
        s = copy.deepcopy(init)
        method = make_method(s) if make_method is not None else None
        kw = {"methods": [method], "loss_fn": method.task_loss} if method is not None else {}
        nc.train.fit(s, data, TrainConfig(epochs=epochs, **VIT_TRAIN), seed=seed, progress=False,
                     evaluate_each_epoch=False, **kw)
        if method is not None:
            method.finalize(s)
        return nc.train.evaluate(s, data)

    r["alone"] = train(VIT_EPOCHS)
    r["alone_long"] = train(long)
    r["kd_logits_long"] = train(long, lambda s: KD(base, 2.0, 0.5))
    r["hidden_long"] = train(long, lambda s: HiddenKD(base, s))
    r["seconds"] = time.perf_counter() - t0
    print(r, flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--factor", type=float, default=2.0, help="the distillation's epochs over the dense model's")
    ap.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes (1 thread each)")
    a = ap.parse_args()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rs = list(pool.map(one_seed, a.seeds, [a.factor] * len(a.seeds)))
    else:
        rs = [one_seed(s, a.factor) for s in a.seeds]
    long = VIT_EPOCHS * a.factor

    def pct(key: str) -> list[float]:
        return [100 * r[key] for r in rs]

    best = [max(r["alone"], r["alone_long"]) for r in rs]
    gap = sum(r["dense"] - b for r, b in zip(rs, best))
    rows = [["dense vit-tiny (teacher)", f"{VIT_EPOCHS:g}", mean_std([r["dense"] for r in rs]), "", ""],
            ["student alone", f"{VIT_EPOCHS:g}", mean_std([r["alone"] for r in rs]), "", ""],
            ["student alone", f"{long:g}", mean_std([r["alone_long"] for r in rs]), "", ""]]
    for key, label in (("kd_logits_long", "logit KD (T 2, alpha 0.5)"), ("hidden_long", "HiddenKD (defaults)")):
        gain = sum(r[key] - b for r, b in zip(rs, best))
        wins = sum(r[key] > b for r, b in zip(rs, best))
        rows.append([label, f"{long:g}", mean_std([r[key] for r in rs]),
                     f"{gain / gap:.2f}" if gap > 0 else "n/a (no gap)", f"{wins}/{len(rs)}"])
    per_seed = "\n".join(f"- seed {r['seed']}: dense {100 * r['dense']:.1f}, alone {100 * r['alone']:.1f} / "
                         f"{100 * r['alone_long']:.1f}, logit KD {100 * r['kd_logits_long']:.1f}, HiddenKD "
                         f"{100 * r['hidden_long']:.1f} ({r['seconds']:.0f} s)" for r in rs)
    body = (f"Seeds {a.seeds}; vit-tiny {VIT_EPOCHS:g} epochs; vit-tiny-half from one initialisation per seed; "
            f"AdamW 2e-3 cosine, batch 64, 1 thread per seed. Test accuracy % (mean ± std). Gap recovered = "
            "sum over seeds of (method - best alone) / sum of (dense - best alone), best alone = the better "
            f"of the {VIT_EPOCHS:g}- and {long:g}-epoch runs of that seed; 'beats best alone' counts seeds.\n\n"
            + md_table(["model", "epochs", "test acc %", "gap recovered", "beats best alone (seeds)"], rows)
            + f"\n\nDense - best alone, summed over seeds: {100 * gap:.2f} points.\n\n" + per_seed + "\n")
    write_result("B12_patient_kd_vit", "B12: half-size ViT student, distilled for longer than alone", body)


if __name__ == "__main__":
    main()
