"""B6: real int8 deployment on CPU (PyTorch x86 backend through torch.ao FX) vs fp32, same process.

torchvision resnet18 (224x224, random weights: no ImageNet offline, so outputs are compared instead
of accuracy) and zoo CNNs trained briefly on mnist-5k (accuracy fp32 vs int8 on the 1,000 test images).
Latency: torch.utils.benchmark, 1 thread, median, batch 1 and 64. Sizes: files on disk (fp32:
netcompress.models.save; int8: the TorchScript file of save_int8).

    python benchmarks/bench_quant_int8.py            # resnet18 + lenet5, vgg-small (1 epoch each)
    python benchmarks/bench_quant_int8.py --full     # + resnet20, mobilenet-small, 3 epochs
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_result  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.measure.metrics import latency_ms  # noqa: E402
from netcompress.quantize import int8_layers, int8_quantize, save_int8  # noqa: E402


def row(name, fp32, q, x, tmp, acc=None, min_run=0.3):
    torch.set_num_threads(1)
    f32 = Path(tmp) / f"{name}.pt"
    try:
        nc.models.save(fp32, f32)
        fbytes = f32.stat().st_size
    except nc.NetcompressError:
        torch.save(fp32.state_dict(), f32)
        fbytes = f32.stat().st_size
    i8 = save_int8(q, Path(tmp) / f"{name}.int8.pt", x)
    l = {}
    for tag, m in (("fp32", fp32.eval()), ("int8", q)):
        l[tag] = (latency_ms(m, x, 1, 1, min_run), latency_ms(m, x, 64, 1, min_run))
    acc_s = "-" if acc is None else f"{100 * acc[0]:.2f} / {100 * acc[1]:.2f}"
    return [name, int8_layers(q), f"{l['fp32'][0]:.2f} / {l['int8'][0]:.2f}", f"{l['fp32'][0] / l['int8'][0]:.2f}x",
            f"{l['fp32'][1]:.1f} / {l['int8'][1]:.1f}", f"{l['fp32'][1] / l['int8'][1]:.2f}x",
            f"{fbytes / 1e6:.2f} / {i8.stat().st_size / 1e6:.2f}", f"{fbytes / i8.stat().st_size:.2f}x", acc_s]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        torch.manual_seed(0)
        r18 = nc.models.create("torchvision:resnet18", num_classes=1000).eval()
        x = torch.randn(8, 3, 224, 224)
        q = int8_quantize(r18, [torch.randn(8, 3, 224, 224) for _ in range(4)])
        with torch.no_grad():
            agree = (q(x).argmax(1) == r18(x).argmax(1)).float().mean().item()
        rows.append(row("torchvision resnet18", r18, q, x, tmp, min_run=0.5))
        data = nc.data.load("mnist-5k")
        zoo = ["lenet5", "vgg-small"] + (["resnet20", "mobilenet-small"] if args.full else [])
        epochs = 3 if args.full else 1
        for name in zoo:
            torch.manual_seed(0)
            m = nc.models.create(name, num_classes=10, in_channels=1, input_size=28)
            nc.train.fit(m, data, epochs=epochs, progress=False, seed=0)
            q = int8_quantize(m, data.calibration(256))
            acc = (nc.train.evaluate(m, data), nc.train.evaluate(q, data))
            rows.append(row(f"{name} (mnist-5k, {epochs} ep)", m, q, data.example, tmp, acc))
    body = md_table(["model", "int8 layers", "b1 ms fp32 / int8", "b1 speedup", "b64 ms fp32 / int8", "b64 speedup",
                     "MB fp32 / int8", "size ratio", "accuracy % fp32 / int8"], rows)
    body += (f"\nresnet18: int8 and fp32 agree on the top-1 class of {100 * agree:.0f} % of 8 random inputs "
             "(random weights, calibration on random inputs; no ImageNet offline).\n"
             "Flow: torch.ao.quantization prepare_fx/convert_fx, x86 backend (fbgemm + oneDNN), per-channel int8 "
             "weights, uint8 activations calibrated on 256 training images. torchao's PT2E flow converts too, "
             "but only runs int8 kernels after torch.compile, so it is not used.\n")
    write_result("B6_int8", "B6: real int8 deployment on CPU vs fp32", body)


if __name__ == "__main__":
    main()
