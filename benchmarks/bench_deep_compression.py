"""B1 + B2: Deep Compression (Han et al. 2016, Table 1) on LeNet-300-100 and LeNet-5, mnist-5k.

Runs recipes/deep-compression-lenet300.yaml and recipes/deep-compression-lenet5.yaml (iterative
magnitude pruning to the paper's per-layer densities, k-means sharing 6 bits / 8 conv + 5 fc bits
with centroid fine-tuning, sparse + Huffman .ncz archive) and reports archive bytes vs dense fp32
(4 bytes per parameter), accuracy lost, and per layer the coded index/gap streams vs their entropy
bound (B2). Accuracy is the last-epoch figure of each stage; nothing is selected on the test set.

    python benchmarks/bench_deep_compression.py              # 1 seed each
    python benchmarks/bench_deep_compression.py --seeds 3    # the 3-seed table
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

PAPER = {"lenet300": ("40x", "1.64 -> 1.58 % error"), "lenet5": ("39x", "0.80 -> 0.74 % error")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--models", default="lenet300,lenet5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, b2_rows, stage_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            recipe = ROOT / "recipes" / f"deep-compression-{name}.yaml"
            base_acc, final_acc, ratios, nbytes = [], [], [], []
            for seed in range(args.seeds):
                out = Path(tmp) / f"{name}-{seed}"
                run_recipe(recipe, out=out, overrides=[f"seed={seed}"], progress=False)
                metrics = json.loads((out / "metrics.json").read_text())
                by = {e["stage"]: e for e in metrics}
                ncz = next(out.glob("stages/*pack*/model.ncz"))
                info = inspect(ncz)
                model = unpack(ncz)
                data = nc.data.load("mnist-5k")
                acc = nc.train.evaluate(model, data)
                assert abs(acc - by["pack"]["accuracy"]) < 1e-9, "archive must reproduce the packed model"
                base_acc.append(by["baseline"]["accuracy"])
                final_acc.append(acc)
                ratios.append(info["dense_fp32_bytes"] / info["file_bytes"])
                nbytes.append(info["file_bytes"])
                if seed == 0:
                    for st in metrics:
                        stage_rows.append([name, st["stage"], f"{100 * st['accuracy']:.2f}", st["nonzero_params"], st["bytes"]])
                    for r in info["layers"]:
                        if r["entropy_bytes"]:
                            b2_rows.append([name, r["name"], r["params"], r["nonzero"], r["encoding"], r["bytes"],
                                            f"{r['bits_per_weight']:.3f}", f"{r['entropy_bytes']:.0f}", f"{r['stream_bytes']:.0f}",
                                            f"{100 * (r['stream_bytes'] / r['entropy_bytes'] - 1):+.2f} %"])
                    b2_rows.append([name, "**total (streams)**", "", "", "", "", "", f"{info['entropy_bytes']:.0f}",
                                    f"{info['coded_stream_bytes']:.0f}", f"{100 * info['stream_overhead']:+.2f} %"])
                    b2_rows.append([name, "**file (all: header, codebooks, biases, tables)**", info["params"], "", "",
                                    info["file_bytes"], f"{8 * info['file_bytes'] / info['params']:.3f}", "", "", ""])
            lost = [100 * (b - f) for b, f in zip(base_acc, final_acc)]
            rows.append([name, mean_std(base_acc), mean_std(final_acc), f"{statistics.mean(lost):+.2f}",
                         f"{statistics.mean(nbytes):.0f}", f"{statistics.mean(ratios):.1f}x", *PAPER[name]])
    body = ("## B1: archive bytes vs dense fp32, accuracy\n\n"
            + md_table(["model", "baseline acc %", "compressed acc %", "points lost", ".ncz bytes", "ratio vs dense fp32",
                        "paper ratio", "paper"], rows)
            + f"\n{args.seeds} seed(s). The accuracy of the compressed model is measured on the model unpacked from the "
              ".ncz file (identical to the packed model).\n\n## Stages (seed 0)\n\n"
            + md_table(["model", "stage", "accuracy %", "nonzero params", "bytes on disk"], stage_rows)
            + "\n## B2: coded streams vs entropy bound (seed 0)\n\n"
            + md_table(["model", "tensor", "params", "nonzero", "encoding", "bytes", "bits/weight", "entropy bound B",
                        "coded streams B", "overhead"], b2_rows)
            + "\nEntropy bound: n x H(empirical distribution) of each coded symbol stream (sparse-index gaps and "
              "cluster indices). Coded streams include Huffman code-length tables and chunk offsets.\n")
    write_result("B1_deep_compression", "B1 + B2: Deep Compression on LeNet-300-100 and LeNet-5 (mnist-5k)", body)


if __name__ == "__main__":
    main()
