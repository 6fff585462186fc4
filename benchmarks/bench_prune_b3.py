"""B3: structured pruning vs Torch-Pruning (DepGraph), in the same process.

Part 1 (latency): torchvision resnet18, mobilenet_v2, vgg11_bn, densenet121 at 224x224, 50 % of the
channels of every prunable group removed (L1 magnitude, classifier outputs kept) by netcompress and by
Torch-Pruning's MetaPruner; MACs (batch 1), CPU latency (torch.utils.benchmark, median, batch 1,
fixed threads) of dense / ours / peer, and the prune-call time (trace + score + remove) of each.
Part 2 (coverage): every torchvision CNN classifier (not ViT / Swin / MaxViT) pruned at 50 % by each
tool at a small input; counts a success when the pruned model runs, keeps its output shape and has
fewer parameters. The default run covers the smallest model of each family; `--full` covers all.

Run: python benchmarks/bench_prune_b3.py [--full] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import md_table, write_result  # noqa: E402

from netcompress.measure import count_macs, latency_ms  # noqa: E402
from netcompress.models import create  # noqa: E402
from netcompress.prune import channels  # noqa: E402

LAT_MODELS = ["resnet18", "mobilenet_v2", "vgg11_bn", "densenet121"]
SMALL = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
         "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
         "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "squeezenet1_0", "vgg11_bn",
         "wide_resnet50_2"]


def classifier_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The final layer(s) whose outputs are the logits (Torch-Pruning must be told; we find them)."""
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    out = [last[-1]]
    if hasattr(model, "fc") and isinstance(model.fc, torch.nn.Linear):
        out = [model.fc]
    return out


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float = 0.5) -> torch.nn.Module:
    import torch_pruning as tp

    m = copy.deepcopy(model)  # Torch-Pruning works in place; ours returns a copy: count both
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=classifier_of(m))
    pruner.step()
    return m


def ours_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float = 0.5) -> torch.nn.Module:
    return channels(model, "l1", ratio, example_inputs=x)


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def latency_part(threads: int, size: int, calls: int) -> str:
    rows = []
    warm = torchvision.models.get_model("resnet18", weights=None).eval()
    for fn in (ours_prune, tp_prune):  # one-time imports and caches of both tools, outside the timings
        fn(warm, torch.randn(1, 3, 32, 32))
    for name in LAT_MODELS:
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, size, size)
        t_ours, t_peer = [], []
        for _ in range(calls):  # interleaved, so a load change hits both tools alike
            ours, t = timed(ours_prune, model, x)
            t_ours.append(t)
            peer, t = timed(tp_prune, model, x)
            t_peer.append(t)
        t_ours, t_peer = statistics.median(t_ours), statistics.median(t_peer)
        macs = [count_macs(m, x) for m in (model, ours, peer)]
        rounds = [[latency_ms(m.eval(), x, threads=threads) for m in (model, ours, peer)] for _ in range(calls)]
        lat = [statistics.median(r[i] for r in rounds) for i in range(3)]  # interleaved rounds, as the prune calls
        rows.append([name, f"{macs[0] / 1e9:.2f}G", f"{macs[1] / 1e9:.2f}G", f"{macs[2] / 1e9:.2f}G",
                     f"{lat[0]:.1f}", f"{lat[1]:.1f}", f"{lat[2]:.1f}",
                     f"{lat[0] / lat[1]:.2f}x", f"{lat[0] / lat[2]:.2f}x",
                     f"{(lat[0] / lat[1]) / (macs[0] / macs[1]):.2f}", f"{(lat[0] / lat[2]) / (macs[0] / macs[2]):.2f}",
                     f"{t_ours:.3f}", f"{t_peer:.3f}"])
        print(rows[-1], flush=True)
        del model, ours, peer
        gc.collect()
    head = ["model", "MACs dense", "MACs ours", "MACs TP", "ms dense", "ms ours", "ms TP", "speedup ours",
            "speedup TP", "speedup/MAC-ratio ours", "speedup/MAC-ratio TP", "prune s ours", "prune s TP"]
    return md_table(head, rows)


HEAVY = ("128gf", "32gf", "16gf", "8gf", "large", "_l", "b7", "b6", "b5", "101", "152", "161", "201", "_m")


def coverage_part(names: list[str], size: int, deadline: float) -> tuple[str, int, int, int]:
    """Prune each model with both tools; models not reached before `deadline` (time.time()) are listed."""
    rows, ok_ours, ok_tp = [], 0, 0
    names = sorted(names, key=lambda n: any(h in n for h in HEAVY))  # the largest models last
    for name in names:
        if time.time() > deadline:
            rows.append([name, "not run (time budget)", "not run (time budget)"])
            continue
        s = 299 if name == "inception_v3" else size
        try:
            model = create(f"torchvision:{name}", num_classes=10).eval()  # explicit init: no torchvision warning
        except Exception as e:  # pragma: no cover - torchvision itself
            rows.append([name, f"build failed: {e}", ""])
            continue
        x = torch.randn(1, 3, s, s)
        p0 = sum(p.numel() for p in model.parameters())
        res = []
        for fn in (ours_prune, tp_prune):
            try:
                small = fn(model, x)  # Torch-Pruning traces with autograd: no no_grad here
                with torch.no_grad():
                    y = small.eval()(x)
                p1 = sum(p.numel() for p in small.parameters())
                good = tuple(y.shape) == (1, 10) and p1 < p0
                res.append(f"ok ({p1 / p0:.2f} params)" if good else f"FAIL shape {tuple(y.shape)} params {p1 / p0:.2f}")
            except Exception as e:
                res.append(f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
        ok_ours += res[0].startswith("ok")
        ok_tp += res[1].startswith("ok")
        rows.append([name, res[0], res[1]])
        print(rows[-1], flush=True)
        del model
        gc.collect()
    ran = sum(not r[1].startswith("not run") for r in rows)
    return md_table(["model", "netcompress", "Torch-Pruning"], rows), ok_ours, ok_tp, ran


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="coverage over every torchvision CNN classifier")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="input size for the latency part")
    ap.add_argument("--coverage-size", type=int, default=64)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--calls", type=int, default=5, help="prune calls and latency rounds per tool and model (interleaved; median)")
    ap.add_argument("--no-coverage", action="store_true")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds for the coverage part; models after it are listed as not run")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    body = (f"Peer: Torch-Pruning {version('torch-pruning')} (MetaPruner, MagnitudeImportance p=1, pruning_ratio 0.5, classifier "
            f"ignored). Ours: `netcompress.prune.channels(model, 'l1', 0.5)`. Both remove 50 % of every prunable group's "
            f"channels; the classifier keeps its outputs. Prune time: the median of {args.calls} calls per tool, the tools "
            f"interleaved, after one warm-up call of each; it includes tracing, scoring and removal; both copy the "
            f"model (TP prunes in place, so its deepcopy is inside its timed call, as ours is).\n\n")
    if not args.skip_latency:
        body += (f"## Latency at {args.size}x{args.size}, batch 1, {args.threads} threads (median ms of {args.calls} "
                 "interleaved rounds: dense, ours, TP, dense, ...)\n\n"
                 "speedup/MAC-ratio = measured speedup divided by the MAC reduction (1.0: latency falls as fast as MACs).\n\n")
        load0 = os.getloadavg()[0]
        table = latency_part(args.threads, args.size, args.calls)
        body += table + (f"\nLoad average (1 min) before / after the latency part: {load0:.1f} / {os.getloadavg()[0]:.1f} on "
                         f"{os.cpu_count()} cores; a load above the core count makes these latencies unreliable.\n\n")
    if not args.no_coverage:
        names = [n for n in torchvision.models.list_models(module=torchvision.models)
                 if not n.startswith(("vit_", "swin", "maxvit"))]
        if not args.full:
            names = [n for n in names if n in SMALL]
        table, a, b, n = coverage_part(names, args.coverage_size, time.time() + args.budget)
        body += (f"## Coverage at {args.coverage_size}x{args.coverage_size} (inception_v3 at 299): "
                 f"{'all' if args.full else 'one or two of each family'}\n\n"
                 f"netcompress pruned **{a} of {n}**, Torch-Pruning **{b} of {n}** of the {n} models run out of {len(names)} "
                 f"(success = runs, output (1, 10), fewer params).\n\n")
        body += table
    name = "prune_b3_latency" if args.no_coverage else "prune_b3_full" if args.full else "prune_b3"
    write_result(name, "B3: structured pruning vs Torch-Pruning", body)


if __name__ == "__main__":
    main()
