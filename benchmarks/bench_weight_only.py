"""B12 weight-only quantization: round-to-nearest vs HQQ vs AWQ vs GPTQ on gpt-tiny / pydoc-text, 4 to 2 bits.

Per seed, the converged dense gpt-tiny of the transformer benchmarks (800 steps, batch 16 x 128
bytes, AdamW 3e-3 cosine; `bench_transformers.dense_gpt`), then every block Linear quantized per
group of input weights, no retraining, at 4 bits / group 128, 3 / 128, 3 / 64 and 2 / 64:
  - rtn:  `nc.quantize.rtn_` (min-max grid containing 0, integer zero point);
  - hqq:  `nc.quantize.hqq_` (Badri & Shaji 2023: zero point fitted by half-quadratic splitting of
          the lp error, p 0.7; no calibration data);
  - torchao hqq (peer): torchao's own HQQ (`quant_primitives._choose_qparams_and_quantize_affine_hqq`,
          its proximal solver with the same lp 0.7 / beta 10 / kappa 1.01 / 20 iterations), float32 on CPU;
  - awq:  `nc.quantize.awq_` (Lin et al. 2024: input column j scaled by mean|X_j|^alpha before RTN,
          alpha searched per layer on 20 values, then each group's clipping range searched) on 64
          training windows; awq-scales: the same without the clipping step;
  - torchao awq (peer): torchao's own AWQ scale search (`prototype.awq.AWQObserver`) through its
          asymmetric per-group `IntxWeightOnlyConfig`, the scales applied by us (its convert step
          needs CUDA / XPU int4 kernels);
  - gptq: `nc.quantize.gptq_` on 64 training windows (the calibrated reference).
Increase = test perplexity - dense; ratio = increase / RTN's increase, per seed, then mean ± std.
Anchor (HQQ blog, Llama-2-7B, 4 bits group 64): HQQ's perplexity close to GPTQ's, below RTN's, with
no calibration data; its gain comes from heavy-tailed weight groups, which a 1 M-parameter model
trained for minutes has few of (the weight kurtosis is printed). Anchor (AWQ paper, OPT / LLaMA, 3 and
4 bits, group 128): AWQ well below RTN; its gain comes from salient input features with large
activations (the input-feature spread of bench_transformers measures how unequal they are here).

    python benchmarks/bench_weight_only.py            # 3 seeds, 2 processes: about 14 minutes
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, write_result  # noqa: E402
from bench_transformers import GPT_STEPS, dense_gpt, ms, ppl  # noqa: E402
from netcompress.core.layerwise import block_linears, calibration_inputs  # noqa: E402

SETTINGS = [(4, 128), (3, 128), (3, 64), (2, 64)]
METHODS = ["rtn", "hqq", "torchao-hqq", "awq", "awq-scales", "torchao-awq", "gptq"]


def torchao_hqq_(model: torch.nn.Module, bits: int, group: int) -> str | None:
    """torchao's HQQ on every block Linear (dequantized back into the float weight); None, or why it failed."""
    try:
        from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq as hqq
    except ImportError as e:
        return f"torchao HQQ not importable ({e})"
    with torch.no_grad():
        for _, lin in block_linears(model):
            for m in lin.values():
                w = m.weight
                q, s, z, shape = hqq(w, nbits=bits, group_size=group, axis=1, compute_dtype=torch.float32,
                                     device="cpu", raw_output=True)
                deq = (q.float().reshape(-1, group) - z.reshape(-1, 1)) * s.reshape(-1, 1)
                w.copy_(deq.reshape(shape))
    return None


def torchao_awq_(model: torch.nn.Module, bits: int, group: int, data) -> str | None:
    """torchao's AWQ scale search (`prototype.awq.AWQObserver`: mean |x| per input feature, 20 ratios,
    output MSE through its own `IntxWeightOnlyConfig` asymmetric per-group quantizer) on every block
    Linear, all observed on the unchanged model as its `quantize_(AWQConfig(..., "prepare"))` does.
    torchao 0.18's convert step needs an int4 tensor type with activation pre-scaling (CUDA / XPU
    kernels); on CPU we apply the scales it found ourselves: W <- dequant(Q(W s)) / s."""
    try:
        import torchao.quantization as q
        from torchao.prototype.awq.core import AWQObserver
        from torchao.quantization.quant_primitives import MappingType
        from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER
        from torchao.utils import DummyModule
    except ImportError as e:
        return f"torchao AWQ not importable ({e})"
    cfg = q.IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=q.PerGroup(group),
                                 mapping_type=MappingType.ASYMMETRIC)
    lins = [m for _, lin in block_linears(model) for m in lin.values()]
    obs = [AWQObserver(m.weight, m.bias, cfg, 20) for m in lins]
    hooks = [m.register_forward_hook(lambda mod, i, o, ob=ob: ob(i[0].detach(), o)) for m, ob in zip(lins, obs)]
    try:
        with torch.no_grad():
            for x in calibration_inputs(data, 64):
                model(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for m, ob in zip(lins, obs):
            scale = ob.calculate_qparams()
            qw = _QUANTIZE_CONFIG_HANDLER[type(cfg)](DummyModule(m.weight * scale), cfg).weight
            m.weight.copy_(qw.dequantize() / scale)
    return None


def kurtosis(model: torch.nn.Module) -> float:
    """Median over block Linears of the excess kurtosis of the weights (0 for a Gaussian)."""
    ks = []
    for _, lin in block_linears(model):
        for m in lin.values():
            w = m.weight.detach().double().flatten()
            z = (w - w.mean()) / w.std()
            ks.append((z ** 4).mean().item() - 3)
    return statistics.median(ks)


def run_seed(seed: int) -> dict:
    torch.set_num_threads(1)
    base, data = dense_gpt(seed)
    dense = ppl(base, data)
    out = {"seed": seed, "dense": dense, "kurtosis": kurtosis(base), "inc": {}, "s": {}, "na": {}}
    for bits, group in SETTINGS:
        for meth in METHODS:
            m, t = copy.deepcopy(base), time.perf_counter()
            if meth.startswith("torchao-"):
                err = torchao_hqq_(m, bits, group) if meth == "torchao-hqq" else torchao_awq_(m, bits, group, data)
                if err:
                    out["na"][meth] = err
                    continue
            else:  # awq-scales: AWQ without its clipping step, the scope of torchao's AWQ
                nc.quantize.quantize_weights_(m, meth.split("-")[0], bits, group, clip=meth == "awq",
                                              calibration=data if meth not in ("rtn", "hqq") else None)
            out["s"][(bits, group, meth)] = time.perf_counter() - t
            out["inc"][(bits, group, meth)] = ppl(m, data) - dense
        print(f"seed {seed} {bits}/{group}: " + ", ".join(f"{k[2]} {v:.4f}" for k, v in out["inc"].items()
                                                            if k[:2] == (bits, group)), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes (1 thread each)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(run_seed, a.seeds))
    else:
        runs = [run_seed(s) for s in a.seeds]
    rows = [["dense", "", "", ms([r["dense"] for r in runs]), "-", "-", "", ""]]
    for bits, group in SETTINGS:
        rtn = [r["inc"][(bits, group, "rtn")] for r in runs]
        for meth in METHODS:
            if any((bits, group, meth) not in r["inc"] for r in runs):
                rows.append([bits, group, meth, "n/a", "", "", "", runs[0]["na"].get(meth, "")])
                continue
            inc = [r["inc"][(bits, group, meth)] for r in runs]
            ratio = [i / b for i, b in zip(inc, rtn)]
            better = "" if meth == "rtn" else f"{sum(i < b for i, b in zip(inc, rtn))}/{len(runs)}"
            rows.append([bits, group, meth, ms([r["dense"] + i for r, i in zip(runs, inc)]), ms(inc, 4),
                         "1" if meth == "rtn" else ms(ratio, 2), better,
                         ms([r["s"][(bits, group, meth)] for r in runs], 1)])
    per_seed = "\n".join(f"- seed {r['seed']}: " + "; ".join(
        f"{b}/{g} " + ", ".join(f"{m} {r['inc'][(b, g, m)]:.4f}" for m in METHODS if (b, g, m) in r["inc"])
        for b, g in SETTINGS) for r in runs)
    body = (f"Seeds {a.seeds}; dense gpt-tiny {GPT_STEPS} steps (batch 16 x 128 bytes, AdamW 3e-3 cosine), 1 thread "
            f"per seed; {time.perf_counter() - t0:.0f} s. Every block Linear quantized per group of input weights, "
            "no retraining; test perplexity on the held-out topics. Increase = perplexity - dense; ratio = "
            "increase / RTN's, per seed, then mean ± std; 'below RTN' counts the seeds.\n\n"
            + md_table(["bits", "group", "method", "test perplexity", "increase", "ratio to RTN", "below RTN (seeds)",
                        "seconds"], rows)
            + f"\nWeight excess kurtosis (median over the block Linears; 0 for a Gaussian): "
            f"{ms([r['kurtosis'] for r in runs], 2)}.\n\nPer seed (increase):\n{per_seed}\n")
    write_result("B12_weight_only", "B12: weight-only quantization of gpt-tiny, RTN vs HQQ vs AWQ vs GPTQ", body)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
