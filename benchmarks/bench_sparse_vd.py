"""B1 past the papers: Sparse Variational Dropout (Molchanov et al. 2017) + k-means + Huffman vs Deep
Compression (Han et al. 2016) on LeNet-300-100 and LeNet-5, mnist-5k, in the same run.

Runs recipes/sparse-vd-{lenet300,lenet5}.yaml and recipes/deep-compression-{lenet300,lenet5}.yaml for
each seed (each recipe trains its own baseline with the same seed and budget) and reports archive bytes
vs dense fp32 (4 bytes per parameter), nonzero weights, and accuracy lost, measured on the model
unpacked from the .ncz file. Accuracy is the last-epoch figure; nothing is selected on the test set.

    python benchmarks/bench_sparse_vd.py                 # 1 seed
    python benchmarks/bench_sparse_vd.py --seeds 3       # the 3-seed table
    python benchmarks/bench_sparse_vd.py --seeds 3 --first-seed 3 --models lenet300 --methods sparse-vd
        # held-out seeds 3-5 for the recipe chosen on seeds 0-2 (results/B1_sparse_vd_seeds3-5.md)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, mean_std, write_result  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.archive import inspect, unpack  # noqa: E402
from netcompress.recipe import run_recipe  # noqa: E402

# Molchanov et al. 2017, Table 1 (full MNIST, 60,000 images): error %, params reduction, no coding.
# Han et al. 2016, Table 1: archive ratio after pruning + sharing + Huffman.
PAPER = {("lenet300", "sparse-vd"): "1.64 -> 1.92 % error, 68x fewer params (before coding)",
         ("lenet5", "sparse-vd"): "0.80 -> 0.75 % error, 280x fewer params (before coding)",
         ("lenet300", "deep-compression"): "1.64 -> 1.58 % error, 40x bytes",
         ("lenet5", "deep-compression"): "0.80 -> 0.74 % error, 39x bytes"}
GOAL = {"lenet300": 40.0, "lenet5": 100.0}


def _spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:+.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1; another "
                    "first seed writes its own file (held-out seeds that played no part in choosing a recipe)")
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--methods", default="sparse-vd,deep-compression")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = nc.data.load("mnist-5k")
    rows, stage_rows, layer_rows, curve_rows = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for method in args.methods.split(","):
                recipe = ROOT / "recipes" / f"{method}-{name}.yaml"
                base, final, ratios, nbytes, nonzero = [], [], [], [], []
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    out = Path(tmp) / f"{method}-{name}-{seed}"
                    run_recipe(recipe, out=out, overrides=[f"seed={seed}"], progress=False)
                    metrics = json.loads((out / "metrics.json").read_text())
                    by = {e["stage"]: e for e in metrics}
                    ncz = next(out.glob("stages/*pack*/model.ncz"))
                    info = inspect(ncz)
                    acc = nc.train.evaluate(unpack(ncz), data)
                    assert abs(acc - by["pack"]["accuracy"]) < 1e-9, "archive must reproduce the packed model"
                    base.append(by["baseline"]["accuracy"])
                    final.append(acc)
                    ratios.append(info["dense_fp32_bytes"] / info["file_bytes"])
                    nbytes.append(info["file_bytes"])
                    nonzero.append(by["pack"]["nonzero_params"])
                    print(f"{method} {name} seed {seed}: {100 * by['baseline']['accuracy']:.2f} -> {100 * acc:.2f} %, "
                          f"{info['file_bytes']} B = {ratios[-1]:.1f}x", flush=True)
                    if seed == args.first_seed:
                        for st in metrics:
                            stage_rows.append([name, method, st["stage"], f"{100 * st['accuracy']:.2f}",
                                               st["nonzero_params"], st["bytes"]])
                        if method == "sparse-vd":
                            svd = by["sparse-vd"]["extra"]
                            for lname, d in svd["per_layer"].items():
                                layer_rows.append([name, lname, d["total"], d["kept"], f"{d['total'] / max(d['kept'], 1):.1f}x"])
                            curve_rows.append([name, " ".join(f"{100 * c['sparsity']:.1f}" for c in svd["curve"])])
                lost = [100 * (b - f) for b, f in zip(base, final)]
                total = info["params"]
                ok = statistics.mean(ratios) >= GOAL[name] and statistics.mean(lost) <= 0.3
                rows.append([name, method, mean_std(base), mean_std(final), _spread(lost),
                             f"{statistics.mean(nonzero):.0f}", f"{total / statistics.mean(nonzero):.0f}x",
                             f"{statistics.mean(nbytes):.0f}", f"{statistics.mean(ratios):.1f}x (min {min(ratios):.1f}x)",
                             ("met" if ok else "missed") if method == "sparse-vd" else "", PAPER[(name, method)]])
    first = f"seed {args.first_seed}"
    body = ("## Archive bytes vs dense fp32, accuracy (mean ± std over seeds)\n\n"
            + md_table(["model", "method", "baseline acc %", "compressed acc %", "points lost", "nonzero params",
                        "params reduction", ".ncz bytes", "bytes ratio vs dense fp32",
                        "goal (lenet5 >= 100x, lenet300 >= 40x, <= 0.3 points)", "paper"], rows)
            + f"\n{args.seeds} seed(s) from seed {args.first_seed}; each recipe trains its own baseline (10 epochs) with the seed. Accuracy of the "
              "compressed model is measured on the model unpacked from the .ncz file. Points lost = baseline - "
              "compressed, per seed, then mean ± std. The papers trained on the full 60,000-image MNIST; mnist-5k "
              "has 4,000 training images.\n\n"
              f"## Sparse VD: kept weights per layer ({first})\n\n"
            + md_table(["model", "layer", "weights", "kept (log alpha <= 3)", "reduction"], layer_rows)
            + f"\n## Sparse VD: sparsity % after each training epoch ({first})\n\n"
            + md_table(["model", "sparsity per epoch"], curve_rows)
            + f"\n## Stages ({first})\n\n"
            + md_table(["model", "method", "stage", "accuracy %", "nonzero params", "bytes on disk"], stage_rows))
    suffix = f"_seeds{args.first_seed}-{args.first_seed + args.seeds - 1}" if args.first_seed else ""
    write_result("B1_sparse_vd" + suffix, "B1: Sparse Variational Dropout vs Deep Compression on LeNet-300-100 and LeNet-5 (mnist-5k)", body)


if __name__ == "__main__":
    main()
