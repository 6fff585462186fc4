"""B12: transformers through every family -- gpt-tiny on pydoc-text, vit-tiny on mnist-5k.

Per seed, in one process (same data, same base models for every row of that seed):

* gpt-tiny (0.9M params, LLaMA-style) is trained once on pydoc-text's training topics; perplexity
  is measured on the test topics (byte-level, so log2(ppl) is bits per byte).
* 50 % unstructured and 2:4 sparsity of every block Linear, no retraining: magnitude (per layer),
  Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023), calibrated on 64 training
  windows, group of layers by group of layers (q/k/v, o, gate/up, down; `sequential=True`). Goal: Wanda and SparseGPT each at most half of magnitude's increase.
  Anchor (Wanda paper, LLaMA-7B, 50 %): dense 5.68, magnitude 17.29, SparseGPT 7.22, Wanda 7.26.
* 4-bit weight-only, groups of 128 inputs: RTN vs GPTQ (Frantar et al. 2023), and torchao 0.18's
  `IntxWeightOnlyConfig(int4, PerGroup(128), asymmetric)` as the peer for the RTN step (its
  `Int4WeightOnlyConfig` needs the mslk kernels, absent on CPU). Goal: GPTQ's increase at most half
  of RTN's.
* A student of half the depth and width (gpt-tiny-half / vit-tiny-half), same budget: trained alone
  vs distilled (per-token logit KD + hidden states through projections + attention relations,
  method `hidden`). Goal: KD recovers >= 50 % of the teacher-vs-alone gap (perplexity for the LM,
  accuracy for the ViT).
* Not here: ViT early exit (`bench_vit_early_exit.py`, converged models, timed alone) and head + MLP
  pruning to half the MACs (`bench_transformer_prune.py`, peer in `bench_head_prune_peer.py`).

    nice -n 10 python benchmarks/bench_transformers.py            # 3 seeds, short budgets
    nice -n 10 python benchmarks/bench_transformers.py --full     # longer training
    python benchmarks/bench_transformers.py --converged --skip-vit  # converged dense gpt, students as long
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, write_result  # noqa: E402
from netcompress.distill.methods import KD  # noqa: E402
from netcompress.distill.transformer import HiddenKD  # noqa: E402
from netcompress.train import TrainConfig  # noqa: E402
from netcompress.train.lm import evaluate_lm  # noqa: E402

GPT_TRAIN = dict(lr=3e-3, optimizer="adamw", weight_decay=0.01, batch_size=16)
VIT_TRAIN = dict(lr=2e-3, optimizer="adamw", weight_decay=0.05, batch_size=64)


def ppl(model, data) -> float:
    return evaluate_lm(model, data)["perplexity"]


VIT_EPOCHS, GPT_STEPS = 30, 800  # the converged dense models of the transformer benchmarks


def dense_vit(seed: int, epochs: float = VIT_EPOCHS) -> tuple[torch.nn.Module, object]:
    """(vit-tiny trained `epochs` on mnist-5k, AdamW 2e-3 cosine; the seed's data)."""
    data = nc.data.load("mnist-5k", seed=seed)
    torch.manual_seed(seed)
    base = nc.models.create_for("vit-tiny", data)
    nc.train.fit(base, data, TrainConfig(epochs=epochs, **VIT_TRAIN), seed=seed, progress=False,
                 evaluate_each_epoch=False)
    return base, data


def dense_gpt(seed: int, steps: int = GPT_STEPS, schedule: str = "cosine") -> tuple[torch.nn.Module, object]:
    """(gpt-tiny trained `steps` on pydoc-text, batch 16 x 128 bytes, AdamW 3e-3; the seed's data)."""
    data = nc.data.load("pydoc-text", batch_size=16, seed=seed)
    torch.manual_seed(seed)
    base = nc.models.create_for("gpt-tiny", data)
    nc.train.fit(base, data, epochs=100, max_steps=steps, seed=seed, progress=False, evaluate_each_epoch=False,
                 schedule=schedule, **GPT_TRAIN)
    return base, data


def run_seeds(doc: str, vit_fn, gpt_fn, vit_first: bool = True):
    """The command line of a two-model benchmark (--seeds, --skip-vit, --skip-gpt) and its seed loop:
    (arguments, vit results, gpt results), one thread."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--skip-gpt", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    v: list[dict] = []
    g: list[dict] = []
    order = [("vit", vit_fn, v), ("gpt", gpt_fn, g)]
    for s in a.seeds:
        for name, fn, out in order if vit_first else order[::-1]:
            if not getattr(a, f"skip_{name}"):
                out.append(fn(s))
                print(name, s, out[-1], flush=True)
    return a, v, g


def torchao_int4(model: torch.nn.Module, group: int) -> torch.nn.Module | str:
    try:
        import torchao.quantization as q
        from torchao.quantization.quant_primitives import MappingType
    except ImportError as e:
        return f"torchao not importable ({e})"
    m = copy.deepcopy(model)
    try:
        q.quantize_(m.blocks, q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(group),
                                                     mapping_type=MappingType.ASYMMETRIC))
    except Exception as e:  # a peer that does not run is reported, not hidden
        return f"{type(e).__name__}: {str(e)[:120]}"
    return m


def feature_spread(model: torch.nn.Module, data, samples: int = 64) -> float:
    """Median over the block Linears of max_j ||X_j|| / median_j ||X_j||, X_j = input feature j over
    the calibration tokens, collected by the pass Wanda itself calibrates with (unchanged model): how
    unequal the input features are. Wanda's score |W_ij| ||X_j|| differs from magnitude only through
    these norms; its gain on LLMs comes from a few features up to 100x larger than the rest
    (Dettmers et al. 2022, Sun et al. 2023)."""
    from netcompress.core.layerwise import calibration_inputs, sequential_

    sq: dict[str, torch.Tensor] = {}
    sequential_(model, calibration_inputs(data, samples), "sqnorm", lambda n, m, stat: sq.__setitem__(n, stat),
                sequential=False)
    return statistics.median(float(v.sqrt().max() / v.sqrt().median()) for v in sq.values())


def gpt_seed(seed: int, steps: int, student_steps: int, schedule: str = "constant") -> dict:
    t0 = time.perf_counter()
    base, data = dense_gpt(seed, steps, schedule)
    r = {"train_s": time.perf_counter() - t0, "dense": ppl(base, data), "spread": feature_spread(base, data)}
    for pattern in (None, "2:4"):
        for crit in ("magnitude", "wanda", "sparsegpt"):
            m = copy.deepcopy(base)
            t = time.perf_counter()
            nc.prune.sparsify_(m, crit, data, 0.5, pattern, samples=64)
            r[f"{crit}@{pattern or '50%'}"] = ppl(m, data)
            r[f"{crit}@{pattern or '50%'}_s"] = time.perf_counter() - t
    for meth in ("rtn", "gptq"):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        nc.quantize.quantize_weights_(m, meth, 4, 128, calibration=data, samples=64)
        r[f"int4-{meth}"] = ppl(m, data)
        r[f"int4-{meth}_s"] = time.perf_counter() - t
    ao = torchao_int4(base, 128)
    r["int4-torchao"] = ppl(ao, data) if isinstance(ao, torch.nn.Module) else ao
    # half depth + width student: alone vs distilled, same steps and settings
    alone = nc.models.create_for("gpt-tiny-half", data)
    init, kd_student = copy.deepcopy(alone), copy.deepcopy(alone)
    nc.train.fit(alone, data, epochs=100, max_steps=student_steps, seed=seed, progress=False,
                 evaluate_each_epoch=False, schedule=schedule, **GPT_TRAIN)
    kd = HiddenKD(base, kd_student)
    nc.train.fit(kd_student, data, epochs=100, max_steps=student_steps, seed=seed, progress=False,
                 evaluate_each_epoch=False, schedule=schedule, methods=[kd], loss_fn=kd.task_loss, **GPT_TRAIN)
    kd.finalize(kd_student)
    r["student_alone"], r["student_kd"] = ppl(alone, data), ppl(kd_student, data)
    # the same logit term alone (HiddenKD's T 2, alpha 0.5; hidden and attention terms off)
    logit_student = copy.deepcopy(init)
    k = KD(base, kd.temperature, kd.alpha)
    nc.train.fit(logit_student, data, epochs=100, max_steps=student_steps, seed=seed, progress=False,
                 evaluate_each_epoch=False, schedule=schedule, methods=[k], loss_fn=k.task_loss, **GPT_TRAIN)
    k.finalize(logit_student)
    r["student_kd_logits"] = ppl(logit_student, data)
    return r


def vit_seed(seed: int, epochs: float, student_epochs: float) -> dict:
    t0 = time.perf_counter()
    base, data = dense_vit(seed, epochs)
    r = {"train_s": time.perf_counter() - t0, "dense": nc.train.evaluate(base, data)}
    alone = nc.models.create_for("vit-tiny-half", data)
    init, kd_student = copy.deepcopy(alone), copy.deepcopy(alone)
    st = TrainConfig(epochs=student_epochs, **VIT_TRAIN)
    nc.train.fit(alone, data, st, seed=seed, progress=False, evaluate_each_epoch=False)
    kd = HiddenKD(base, kd_student)
    nc.train.fit(kd_student, data, st, seed=seed, progress=False, evaluate_each_epoch=False, methods=[kd],
                 loss_fn=kd.task_loss)
    kd.finalize(kd_student)
    r["student_alone"], r["student_kd"] = nc.train.evaluate(alone, data), nc.train.evaluate(kd_student, data)
    k = KD(base, kd.temperature, kd.alpha)  # the logit term alone, as for gpt
    nc.train.fit(init, data, st, seed=seed, progress=False, evaluate_each_epoch=False, methods=[k], loss_fn=k.task_loss)
    k.finalize(init)
    r["student_kd_logits"] = nc.train.evaluate(init, data)
    return r


def ms(xs: list[float], p: int = 3) -> str:
    return f"{statistics.mean(xs):.{p}f} ± {statistics.stdev(xs):.{p}f}" if len(xs) > 1 else f"{xs[0]:.{p}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="longer training (gpt 1000 steps, vit 20 epochs)")
    ap.add_argument("--converged", action="store_true",
                    help="dense models trained to convergence (gpt 800 cosine steps, vit 30 epochs) and students "
                         "given the same budget")
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--skip-gpt", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    gsteps, gstud = (1000, 500) if a.full else (200, 120)
    vep, vstud = (20, 10) if a.full else (10, 5)
    schedule = "constant"
    if a.converged:  # the dense settings of bench_transformer_prune.py; students as long as their teacher
        (gsteps, gstud), (vep, vstud), schedule = (800, 800), (30, 30), "cosine"
    g, v = [], []
    for s in a.seeds:
        if not a.skip_gpt:
            g.append(gpt_seed(s, gsteps, gstud, schedule))
            print("gpt", s, g[-1], flush=True)
        if not a.skip_vit:
            v.append(vit_seed(s, vep, vstud))
            print("vit", s, v[-1], flush=True)
    body = [f"Seeds {a.seeds}; gpt-tiny {gsteps} steps (batch 16 x 128 bytes, AdamW 3e-3, {schedule} lr), students {gstud} steps; "
            f"vit-tiny {vep} epochs, students {vstud} epochs (AdamW 2e-3, cosine). 1 thread.\n"]
    if g:
        dense = [x["dense"] for x in g]
        inc = lambda k: [x[k] - x["dense"] for x in g]  # noqa: E731
        rows = [["dense", ms(dense), "-", "-"]]
        for pat in ("50%", "2:4"):
            mag = inc(f"magnitude@{pat}")
            for crit in ("magnitude", "wanda", "sparsegpt"):
                i = inc(f"{crit}@{pat}")
                ratio = [a_ / b_ for a_, b_ in zip(i, mag)]
                rows.append([f"{crit} {pat}", ms([x[f"{crit}@{pat}"] for x in g]), ms(i),
                             "1" if crit == "magnitude" else ms(ratio, 2)])
        rtn = inc("int4-rtn")
        for meth in ("rtn", "gptq"):
            i = inc(f"int4-{meth}")
            rows.append([f"int4 g128 {meth}", ms([x[f"int4-{meth}"] for x in g]), ms(i, 4),
                         ms([a_ / b_ for a_, b_ in zip(i, rtn)], 2)])
        if all(isinstance(x["int4-torchao"], float) for x in g):
            i = inc("int4-torchao")
            rows.append(["int4 g128 torchao IntxWeightOnly (peer)", ms([x["int4-torchao"] for x in g]), ms(i, 4),
                         ms([a_ / b_ for a_, b_ in zip(i, rtn)], 2)])
        else:
            rows.append(["int4 g128 torchao (peer)", g[0]["int4-torchao"], "-", "-"])
        body.append("## gpt-tiny on pydoc-text: perplexity on the test topics, no retraining\n")
        body.append("Increase = perplexity - dense; ratio = increase / magnitude's (pruning) or / RTN's "
                    "(int4), per seed, then mean ± std.\n")
        body.append(md_table(["method", "test perplexity", "increase", "ratio"], rows))
        body.append("\nInput-feature spread of the pruned layers (median over layers of max_j ||X_j|| / median_j "
                    f"||X_j|| on the 64 calibration windows): {ms([x['spread'] for x in g], 1)}. Wanda's score differs "
                    "from magnitude's only through these norms (at 2:4 both compare the same 4 weights of a row); "
                    "its gain on LLMs comes from outlier features 100x the median (Dettmers et al. 2022).\n")
        gap = [(x["student_alone"] - x["student_kd"]) / (x["student_alone"] - x["dense"]) for x in g]
        body.append("\n## Half depth + width student (gpt-tiny-half, 0.14M params), same steps\n")
        body.append(md_table(["teacher", "alone", "KD (logits + hidden + attention)", "gap recovered"],
                             [[ms(dense), ms([x["student_alone"] for x in g]), ms([x["student_kd"] for x in g]),
                               ms(gap, 2)]]))
        if all("student_kd_logits" in x for x in g):
            gl = [(x["student_alone"] - x["student_kd_logits"]) / (x["student_alone"] - x["dense"]) for x in g]
            body.append(f"\nThe logit term alone (T 2, alpha 0.5, hidden and attention terms off): "
                        f"{ms([x['student_kd_logits'] for x in g])}, gap recovered {ms(gl, 2)}.\n")
        body.append("\nSeconds per seed: train " + ms([x["train_s"] for x in g], 0) + ", SparseGPT " +
                    ms([x["sparsegpt@50%_s"] for x in g], 1) + ", Wanda " + ms([x["wanda@50%_s"] for x in g], 1) +
                    ", GPTQ " + ms([x["int4-gptq_s"] for x in g], 1) + " (each includes its calibration passes).\n")
    if v:
        pct = lambda k: [100 * x[k] for x in v]  # noqa: E731
        gap = [(x["student_kd"] - x["student_alone"]) / (x["dense"] - x["student_alone"]) for x in v]
        body.append("\n## vit-tiny on mnist-5k (test accuracy %)\n")
        body.append(md_table(["dense", "student alone", "student KD", "gap recovered"],
                             [[ms(pct("dense"), 2), ms(pct("student_alone"), 2), ms(pct("student_kd"), 2), ms(gap, 2)]]))
        gl = [(x["student_kd_logits"] - x["student_alone"]) / (x["dense"] - x["student_alone"]) for x in v]
        body.append(f"\nThe logit term alone (T 2, alpha 0.5, hidden and attention terms off): "
                    f"{ms(pct('student_kd_logits'), 2)} %, gap recovered {ms(gl, 2)}.\n")
        body.append("\nPer seed (dense, alone, KD): " + "; ".join(
            f"{100 * x['dense']:.1f} / {100 * x['student_alone']:.1f} / {100 * x['student_kd']:.1f}" for x in v) + "\n")
    body.append("\nNot in this file: head + MLP pruning to 50 % MACs with recovery (B12_transformer_prune.md) and "
                "early exit on converged ViTs (B12_vit_early_exit.md).\n")
    name = "B12_transformers_converged" if a.converged else "B12_transformers"
    name += "_gpt" if a.skip_vit else "_vit" if a.skip_gpt else ""
    write_result(name, "B12: transformers (gpt-tiny on pydoc-text, vit-tiny on mnist-5k)", "\n".join(body))


if __name__ == "__main__":
    main()
