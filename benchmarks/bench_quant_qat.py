"""B7: n-bit uniform QAT (8/4/2 bits, per-channel symmetric weights) and BinaryConnect on mnist-5k.

Float LeNet-300-100 trained for `--epochs`; each QAT run starts from it and trains `--qat-epochs`
with the straight-through estimator (lr x0.1); post-training quantization (MSE clip) is shown
beside it. BinaryConnect (deterministic and stochastic) trains from scratch for `--epochs`.
Accuracy of the last epoch on the 1,000 test images; mean ± std over seeds.

    python benchmarks/bench_quant_qat.py                # 1 seed
    python benchmarks/bench_quant_qat.py --seeds 3      # the 3-seed table
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, mean_std, write_result  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.archive import pack  # noqa: E402
from netcompress.quantize import BinaryConnect, UniformQAT, quantize_  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--qat-epochs", type=float, default=2)
    ap.add_argument("--model", default="lenet300")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = nc.data.load("mnist-5k")
    res: dict[str, list[float]] = {}
    size: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def archive_bytes(tag, m):
            size[tag] = pack(m, Path(tmp) / f"{tag}.ncz")["file_bytes"]

        for seed in range(args.seeds):
            torch.manual_seed(seed)
            base = nc.models.create(args.model, num_classes=10)
            nc.train.fit(base, data, epochs=args.epochs, seed=seed, progress=False)
            res.setdefault("float32", []).append(nc.train.evaluate(base, data))
            archive_bytes("float32", base)
            for bits in (8, 4, 2):
                ptq = copy.deepcopy(base)
                quantize_(ptq, bits, observer="mse")
                res.setdefault(f"{bits}-bit PTQ (MSE clip)", []).append(nc.train.evaluate(ptq, data))
                m = copy.deepcopy(base)
                qat = UniformQAT(bits=bits, per_channel=True)
                nc.train.fit(m, data, methods=[qat], epochs=args.qat_epochs, lr=0.005, seed=seed, progress=False)
                qat.finalize(m)
                res.setdefault(f"{bits}-bit QAT", []).append(nc.train.evaluate(m, data))
                archive_bytes(f"{bits}-bit QAT", m)
            for stochastic in (False, True):
                tag = f"BinaryConnect {'stochastic' if stochastic else 'deterministic'}"
                torch.manual_seed(seed)
                m = nc.models.create(args.model, num_classes=10)
                bc = BinaryConnect(stochastic=stochastic, seed=seed)
                nc.train.fit(m, data, methods=[bc], epochs=args.epochs, lr=0.05, seed=seed, progress=False)
                bc.finalize(m)
                res.setdefault(tag, []).append(nc.train.evaluate(m, data))
                archive_bytes(tag, m)
    f = sum(res["float32"]) / len(res["float32"])
    rows = []
    for tag, accs in res.items():
        mean = sum(accs) / len(accs)
        rows.append([tag, mean_std(accs), f"{100 * (f - mean):+.2f}", size.get(tag, "-"),
                     f"{size['float32'] / size[tag]:.1f}x" if tag in size else "-"])
    body = md_table(["weights", "accuracy %", "points lost vs float", ".ncz bytes", "size vs float .ncz"], rows)
    body += (f"\nModel {args.model}, {args.seeds} seed(s), float {args.epochs} epochs, QAT {args.qat_epochs} epochs "
             "from the float model, BinaryConnect from scratch for the same epochs as float. Weight quantization "
             "only (activations stay float). Archive bytes: the lossless .ncz of the final weights (codebook + "
             "packed bits: binary layers take 1 bit per weight).\n")
    write_result("B7_qat_binary", "B7: n-bit QAT and BinaryConnect on mnist-5k", body)


if __name__ == "__main__":
    main()
