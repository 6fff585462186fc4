"""B6: real int8 deployment measured in the runtime that ships it, all peers in one run.

Per model: PyTorch fp32 eager, ONNX Runtime fp32, ONNX Runtime int8 (static QDQ, per-channel,
`quant_pre_process`), ExecuTorch XNNPACK fp32 and int8 (PT2E, XNNPACKQuantizer), and the old
torch.ao FX int8 (x86 backend) as the baseline peer for as long as torch ships it (it warns that
it is deprecated: that is the peer, not netcompress). Models: torchvision resnet18 and mobilenet_v2
(random init, 224x224: latency and agreement with fp32 only, no ImageNet offline), resnet18 with
50 % of channels pruned (nc.prune.channels, l1), and the mnist-5k zoo models lenet5 and vgg-small
trained briefly, with test accuracy over 3 seeds. Latency: torch.utils.benchmark median after a
warm-up call, batch 1 and 64, 1 and 2 threads (ORT intra-op threads / XNNPACK thread pool / torch
threads). Also: the ORT int8 settings sweep on resnet18 (batch 1, 1 thread), the PT2E
X86InductorQuantizer + torch.compile path (compile time and latency, resnet18), and what
unstructured sparsity buys in each runtime (file size, gzip size, latency).

    nice -n 10 python benchmarks/bench_deploy.py            # all of the above, about 20-30 min on 2 shared cores
    nice -n 10 python benchmarks/bench_deploy.py --quick    # mnist models only, 1 seed (smoke run)
"""
from __future__ import annotations

import argparse
import copy
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_result  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.measure.runtime import (OrtModule, PteModule, compare_outputs, onnx_program, pte_program,  # noqa: E402
                                         runtime_latency_ms)
from netcompress.quantize.deploy import onnx_int8, pt2e_int8  # noqa: E402
from netcompress.train import evaluate  # noqa: E402

THREADS = [1, 2]
BATCHES = (1, 64)


def fx_int8(model, calib):
    """The old peer: torch.ao FX graph mode, x86 backend (deprecated upstream; benchmark only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    m = copy.deepcopy(model).eval()
    p = prepare_fx(m, get_default_qconfig_mapping("x86"), (calib[0][:1],))
    with torch.no_grad():
        for x in calib:
            p(x)
    return convert_fx(p).eval()


def load_line() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min) on {os.cpu_count()} cores"


def programs(model, x, calib, log):
    """name -> (factory(threads) -> module, bytes or None, seconds to build)."""
    out = {}
    t = time.perf_counter()
    fp32 = onnx_program(model, x)
    out["ORT fp32"] = (lambda th, p=fp32: OrtModule(p, th), fp32, time.perf_counter() - t)
    t = time.perf_counter()
    i8 = onnx_int8(model, calib, x)
    out["ORT int8"] = (lambda th, p=i8: OrtModule(p, th), i8, time.perf_counter() - t)
    t = time.perf_counter()
    pf = pte_program(model, x, batches=BATCHES)
    out["ET fp32"] = (lambda th, p=pf: PteModule(p, th), pf, time.perf_counter() - t)
    t = time.perf_counter()
    pi = pte_program(pt2e_int8(model, calib, x), x, batches=BATCHES)
    out["ET int8"] = (lambda th, p=pi: PteModule(p, th), pi, time.perf_counter() - t)
    t = time.perf_counter()
    fx = fx_int8(model, calib)
    out["FX int8 (old peer)"] = (lambda th, m=fx: m, None, time.perf_counter() - t)
    log("  built programs: " + ", ".join(f"{k} {v[2]:.0f}s" for k, v in out.items()))
    return out


def latency_rows(name, model, x, calib, check_x, log, min_run):
    progs = programs(model, x, calib, log)
    rows, agree = [], {}
    lat = {}
    for th in THREADS:
        for b in BATCHES:
            lat[("eager", th, b)] = runtime_latency_ms(model, x, b, th, min_run)
        for k, (make, prog, _) in progs.items():
            mod = make(th)
            for b in BATCHES:
                torch.set_num_threads(th)
                lat[(k, th, b)] = runtime_latency_ms(mod, x, b, th, min_run)
            if th == 1:
                agree[k] = compare_outputs(model, mod, [check_x])
        log(f"  {name}: threads {th} done")
    torch.set_num_threads(1)
    for k in ["eager", *progs]:
        prog = progs[k][1] if k in progs else None
        c = agree.get(k)
        cells = [name, "PyTorch fp32 eager" if k == "eager" else k]
        for th in THREADS:
            for b in BATCHES:
                v = lat[(k, th, b)]
                cells.append(f"{v:.2f} ({lat[('eager', th, b)] / v:.2f}x)")
        cells.append("-" if prog is None else f"{len(prog) / 1e6:.2f}")
        cells.append("-" if c is None else f"{c['max_abs_diff']:.2g} / {100 * c['top1_agreement']:.0f} %")
        rows.append(cells)
    return rows, lat, progs


def sweep_ort(model, x, calib, log, min_run):
    """ORT int8 settings on one model at batch 1, 1 thread."""
    from onnxruntime.quantization import CalibrationMethod  # noqa: F401  (installed check)

    rows = []
    fp32 = OrtModule(onnx_program(model, x), 1)
    base = runtime_latency_ms(fp32, x, 1, 1, min_run)
    rows.append(["fp32 (graph optimisation all)", f"{base:.2f}", "1.00x"])
    settings = [("QDQ, per-channel, u8 act / s8 weights, pre-processed (default)", {}),
                ("QDQ, per-channel, no quant_pre_process", {"preprocess": False}),
                ("QDQ, per-tensor weights", {"per_channel": False}),
                ("QDQ, s8 symmetric activations", {"activations": "s8"}),
                ("QDQ, reduce_range (7-bit weights)", {"reduce_range": True}),
                ("QOperator (QLinearConv), per-channel", {"fmt": "qoperator"})]
    for label, kw in settings:
        try:
            q = OrtModule(onnx_int8(model, calib, x, **kw), 1)
            ms = runtime_latency_ms(q, x, 1, 1, min_run)
            rows.append([label, f"{ms:.2f}", f"{base / ms:.2f}x"])
        except Exception as e:  # report what fails, do not hide it
            rows.append([label, f"failed: {type(e).__name__}: {str(e)[:80]}", "-"])
        log(f"  sweep: {label} done")
    q = onnx_int8(model, calib, x)
    for opt in ("basic", "extended"):
        ms = runtime_latency_ms(OrtModule(q, 1, optimization=opt), x, 1, 1, min_run)
        rows.append([f"default int8, graph optimisation '{opt}'", f"{ms:.2f}", f"{base / ms:.2f}x"])
    return rows


def inductor_int8(model, x, calib, log, min_run):
    """PT2E X86InductorQuantizer + torch.compile (PyTorch-native server path)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (X86InductorQuantizer,
                                                                            get_default_x86_inductor_quantization_config)

    torch.set_num_threads(1)
    t = time.perf_counter()
    ep = torch.export.export(copy.deepcopy(model).eval(), (x[:1],)).module()
    p = prepare_pt2e(ep, X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    with torch.no_grad():
        for c in calib:
            for i in range(0, len(c)):
                p(c[i:i + 1])
    q = convert_pt2e(p)
    with torch.no_grad():
        f = torch.compile(q)
        f(x[:1])
    secs = time.perf_counter() - t
    ms = runtime_latency_ms(f, x, 1, 1, min_run)
    log(f"  inductor int8: compile {secs:.0f}s, {ms:.2f} ms")
    return secs, ms, compare_outputs(model, lambda_module(f), [x[:1]])


def lambda_module(f):
    class M(torch.nn.Module):
        def forward(self, *a):
            return f(*a)
    return M()


def mnist_rows(name, seeds, epochs, log, min_run):
    data = nc.data.load("mnist-5k")
    accs = {k: [] for k in ("fp32", "ORT fp32", "ORT int8", "ET int8", "FX int8 (old peer)")}
    lat_rows = None
    for seed in seeds:
        torch.manual_seed(seed)
        m = nc.models.create_for(name, data)
        nc.train.fit(m, data, epochs=epochs, lr=0.05, seed=seed, progress=False, evaluate_each_epoch=False)
        m.eval()
        calib = [x for x, _ in data.calibration(256)]
        accs["fp32"].append(evaluate(m, data))
        accs["ORT fp32"].append(evaluate(OrtModule(onnx_program(m, data.example)), data))
        accs["ORT int8"].append(evaluate(OrtModule(onnx_int8(m, calib, data.example)), data))
        accs["ET int8"].append(evaluate(PteModule(pte_program(pt2e_int8(m, calib, data.example), data.example)), data))
        accs["FX int8 (old peer)"].append(evaluate(fx_int8(m, calib), data))
        log(f"  {name} seed {seed}: " + ", ".join(f"{k} {100 * v[-1]:.2f}" for k, v in accs.items()))
        if lat_rows is None:
            test_x = next(iter(data.loader("test", batch_size=256, shuffle=False)))[0]
            lat_rows, _, _ = latency_rows(name, m, data.example, calib, test_x, log, min_run)
    return accs, lat_rows


def sparse_rows(log, min_run, epochs):
    """What unstructured sparsity buys in each runtime: lenet5 dense vs 90 % sparse vs sparse + 5-bit clusters."""
    data = nc.data.load("mnist-5k")
    torch.manual_seed(0)
    dense = nc.models.create_for("lenet5", data)
    nc.train.fit(dense, data, epochs=epochs, lr=0.05, seed=0, progress=False, evaluate_each_epoch=False)
    sparse = copy.deepcopy(dense)
    nc.prune.weights_(sparse, sparsity=0.9)
    clustered = copy.deepcopy(sparse)
    nc.quantize.cluster_(clustered, bits=5)
    rows = []
    for label, m in (("dense", dense), ("90 % sparse (prune-weights)", sparse), ("90 % sparse + 5-bit k-means (deep compression)", clustered)):
        m.eval()
        for fmt, prog in (("ONNX", onnx_program(m, data.example)), ("ExecuTorch", pte_program(m, data.example))):
            mod = OrtModule(prog) if fmt == "ONNX" else PteModule(prog)
            rows.append([label, fmt, f"{len(prog):,}", f"{len(gzip.compress(prog, 9)):,}",
                         f"{runtime_latency_ms(mod, data.example, 1, 1, min_run):.3f}",
                         f"{runtime_latency_ms(mod, data.example, 64, 1, min_run):.2f}", f"{100 * evaluate(mod, data):.2f}"])
        log(f"  sparse: {label} done")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="mnist models only, one seed")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--min-run", type=float, default=0.3)
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS),
                    help="thread counts to time (default 1 2; on a shared machine 1 only: 2 threads then measure the load)")
    args = ap.parse_args()
    THREADS[:] = args.threads
    t_all = time.perf_counter()
    load_start = load_line()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    heads = ["model", "runtime"] + [f"b{b} {th}T ms" for th in THREADS for b in BATCHES] + ["MB", "max diff / top-1 agree"]
    rows = []
    seeds = [0] if args.quick else [0, 1, 2]
    mn = {}
    for name in ("lenet5", "vgg-small"):
        log(f"{name}")
        accs, lr = mnist_rows(name, seeds, args.epochs, log, args.min_run)
        mn[name] = accs
        rows += lr
    big = {}
    if not args.quick:
        torch.manual_seed(0)
        x = torch.randn(8, 3, 224, 224)
        calib = [torch.randn(8, 3, 224, 224) for _ in range(4)]
        r18 = nc.models.create("torchvision:resnet18", num_classes=1000).eval()
        pr18 = nc.prune.channels(r18, "l1", 0.5, example_inputs=x[:1]).eval()
        mv2 = nc.models.create("torchvision:mobilenet_v2", num_classes=1000).eval()
        for name, m in (("resnet18", r18), ("resnet18 50 % channels", pr18), ("mobilenet_v2", mv2)):
            log(name)
            lr, lat, _ = latency_rows(name, m, x, calib, x, log, args.min_run)
            rows += lr
            big[name] = lat
        log("ORT sweep")
        sweep = sweep_ort(r18, x, calib, log, args.min_run)
        log("inductor")
        try:
            ind = inductor_int8(r18, x, calib, log, args.min_run)
        except Exception as e:
            ind = e
    spr = sparse_rows(log, args.min_run, args.epochs)

    body = [f"Load while running: {load_start} at the start, {load_line()} at the end (shared machine, run with "
            f"`nice -n 10`; absolute times are noisy, the ratios are measured back to back). Wall time "
            f"{time.perf_counter() - t_all:.0f} s.\n",
            "## Latency (ms, median; in brackets: speedup over PyTorch fp32 eager at the same batch and threads)\n",
            md_table(heads, rows),
            "max diff / top-1 agree: max |output - PyTorch fp32| and top-1 agreement on 8 random 224x224 inputs "
            "(torchvision models, random init) or 256 held-out mnist-5k test images.\n"]
    acc_rows = []
    for name, accs in mn.items():
        base = accs["fp32"]
        for k, v in accs.items():
            d = [100 * (a - b) for a, b in zip(v, base)]
            acc_rows.append([name, k, nc_mean_std(v), "-" if k == "fp32" else f"{statistics.mean(d):+.2f} (worst {min(d):+.2f})"])
    body += [f"## mnist-5k test accuracy (1,000 images; {len(seeds)} seed(s), {args.epochs:g} epochs each; mean ± std %)\n",
             md_table(["model", "runtime", "accuracy %", "points vs fp32 (mean, worst seed)"], acc_rows)]
    if big:
        g = []
        r = big["resnet18"]
        p = big["resnet18 50 % channels"]
        best = min(("ORT int8", "ET int8"), key=lambda k: r[(k, 1, 1)])
        g.append(["int8 on a supported stack >= 3x PyTorch fp32 eager, resnet18 b1 1T",
                  f"{best}: {r[('eager', 1, 1)] / r[(best, 1, 1)]:.2f}x", "yes" if r[("eager", 1, 1)] / r[(best, 1, 1)] >= 3 else "no"])
        fx = r[("FX int8 (old peer)", 1, 1)] / r[(best, 1, 1)]
        g.append([">= 0.9x the FX int8 path (speed of FX time / ours)", f"{fx:.2f}x", "yes" if fx >= 0.9 else "no"])
        o = r[("ORT fp32", 1, 1)] / r[("ORT int8", 1, 1)]
        g.append(["ORT int8 faster than ORT fp32 (resnet18 b1 1T)", f"{o:.2f}x", "yes" if o > 1 else "no"])
        pbest = min(("ORT int8", "ET int8"), key=lambda k: p[(k, 1, 1)])
        pp = r[("eager", 1, 1)] / p[(pbest, 1, 1)]
        g.append(["pruned + int8 resnet18 >= 6x (vs unpruned fp32 eager, b1 1T)", f"{pbest}: {pp:.2f}x", "yes" if pp >= 6 else "no"])
        worst = min(100 * (a - b) for accs in mn.values() for k in ("ORT int8", "ET int8") for a, b in zip(accs[k], accs["fp32"]))
        g.append(["every mnist-5k int8 model within 0.5 points of fp32", f"worst seed {worst:+.2f} points", "yes" if worst >= -0.5 else "no"])
        body += ["## Goals\n", md_table(["goal", "measured", "met"], g)]
        body += ["## ONNX Runtime int8 settings (resnet18, batch 1, 1 thread)\n", md_table(["setting", "ms", "vs ORT fp32"], sweep)]
        if isinstance(ind, Exception):
            body.append(f"PT2E X86InductorQuantizer + torch.compile: failed ({type(ind).__name__}: {str(ind)[:200]})\n")
        else:
            body.append(f"## PT2E X86InductorQuantizer + torch.compile (resnet18, batch 1, 1 thread)\n\nprepare + calibrate + convert + "
                        f"compile: {ind[0]:.0f} s; latency {ind[1]:.2f} ms ({r[('eager', 1, 1)] / ind[1]:.2f}x eager fp32); "
                        f"max diff {ind[2]['max_abs_diff']:.2g}, top-1 agreement {100 * ind[2]['top1_agreement']:.0f} %.\n")
    body += ["## Unstructured sparsity in the runtimes (lenet5, mnist-5k)\n",
             md_table(["model", "runtime", "file bytes", "gzip bytes", "b1 ms", "b64 ms", "accuracy %"], spr),
             "Neither ONNX Runtime's CPU provider nor ExecuTorch's XNNPACK delegate has a sparse convolution or sparse "
             "fully-connected kernel for these models, so zeros are multiplied like any weight: the gain is storage "
             "only (the gzip column; the .ncz archive stores the same model smaller still).\n"]
    write_result("B6_deploy", "B6: int8 deployment in ONNX Runtime and ExecuTorch vs PyTorch eager and torch.ao FX", "\n".join(body))


def nc_mean_std(v):
    return f"{100 * statistics.mean(v):.2f}" + (f" ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else "")


if __name__ == "__main__":
    main()
