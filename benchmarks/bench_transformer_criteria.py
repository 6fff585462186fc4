"""B12 (criteria): which channel / head criterion keeps vit-tiny and gpt-tiny best at half the MACs.

Per seed, in one process, from the converged dense models of `bench_transformer_prune.py` (vit-tiny
30 epochs on mnist-5k, gpt-tiny 800 cosine steps on pydoc-text):

* one channel ratio for every criterion: the ratio at which L1 keeps closest to (at most) 50 % of
  the dense MACs. With per-group ratios every criterion removes the same number of heads, MLP
  neurons and width channels, so the pruned models have equal MACs and differ only in *which*
  channels went;
* criteria: l1, l2, taylor (first order, |w dL/dw| on 256 training samples), output_norm (the norm
  of each head's / neuron's contribution to the output of the layers that read it, on the same
  samples; Kobayashi et al. 2020) and random (the control);
* scores: right after pruning (no recovery) and after a short fine-tune (vit 1 epoch, gpt 40 steps,
  AdamW at the training lr), test accuracy for the ViT, test perplexity for the LM.
'vs random' is the per-seed difference to random pruning of the same dense model (paired).

    python benchmarks/bench_transformer_criteria.py              # 3 seeds, ~30 min on 1 core
    python benchmarks/bench_transformer_criteria.py --seeds 0 --skip-vit
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, write_result  # noqa: E402
from bench_transformer_prune import half_macs_ratio  # noqa: E402
from bench_transformers import GPT_TRAIN, VIT_TRAIN, dense_gpt, dense_vit, ms, ppl, run_seeds  # noqa: E402
from netcompress.measure import count_macs  # noqa: E402

CRITERIA = ["l1", "l2", "taylor", "output_norm", "random"]


def one(base, data, score, fit_kw: dict, seed: int) -> dict:
    x = data.example
    ratio, frac = half_macs_ratio(base, x)
    r: dict = {"dense": score(base), "ratio": ratio, "macs": frac}
    for crit in CRITERIA:
        t = time.perf_counter()
        pruned = nc.prune.channels(base, crit, ratio, example_inputs=x, data=data, seed=seed)
        r[f"{crit}_s"] = time.perf_counter() - t
        r[f"{crit}_macs"] = count_macs(pruned, x) / count_macs(base, x)
        r[f"{crit}_none"] = score(pruned)
        nc.train.fit(pruned, data, **fit_kw)
        r[f"{crit}_ft"] = score(pruned)
    return r


def vit_seed(seed: int) -> dict:
    base, data = dense_vit(seed)
    fit_kw = dict(epochs=1, seed=seed, progress=False, evaluate_each_epoch=False, **VIT_TRAIN)
    return one(base, data, lambda m: 100 * nc.train.evaluate(m, data), fit_kw, seed)


def gpt_seed(seed: int) -> dict:
    base, data = dense_gpt(seed)
    fit_kw = dict(epochs=100, max_steps=40, seed=seed, progress=False, evaluate_each_epoch=False,
                  schedule="constant", **GPT_TRAIN)
    return one(base, data, lambda m: ppl(m, data), fit_kw, seed)


def table(runs: list[dict], unit: str, lower_better: bool) -> str:
    rows = [["dense", "1.00", ms([r["dense"] for r in runs], 2), "", "", ""]]
    better = (lambda a, b: a < b) if lower_better else (lambda a, b: a > b)
    verdicts = []
    for crit in CRITERIA:
        cells = [crit, f"{statistics.mean(r[f'{crit}_macs'] for r in runs):.3f}"]
        for rec in ("none", "ft"):
            vals = [r[f"{crit}_{rec}"] for r in runs]
            cells.append(ms(vals, 2))
            if crit == "random":
                cells.append("")
                continue
            d = [r[f"{crit}_{rec}"] - r[f"random_{rec}"] for r in runs]
            wins = sum(better(r[f"{crit}_{rec}"], r[f"random_{rec}"]) for r in runs)
            cells.append(f"{ms(d, 2)} ({wins}/{len(runs)})")
            spread = statistics.stdev(d) if len(d) > 1 else 0.0
            if wins == len(runs) and abs(statistics.mean(d)) > spread:
                verdicts.append(f"{crit} {'(no recovery)' if rec == 'none' else '(fine-tuned)'}")
        rows.append(cells)
    return (md_table(["criterion", "MACs kept", f"{unit}, no recovery", "vs random (seeds better)",
                      f"{unit}, fine-tuned", "vs random (seeds better)"], rows)
            + f"\nChannel ratio: {', '.join(format(r['ratio'], '.3f') for r in runs)}. Beat random on every seed by "
              f"more than the spread: {', '.join(verdicts) or 'none'}.\n")


def main() -> None:
    t0 = time.perf_counter()
    a, v, g = run_seeds(__doc__, vit_seed, gpt_seed, vit_first=False)
    body = [f"Seeds {a.seeds}; dense models as in bench_transformer_prune.py (vit 30 epochs AdamW 2e-3 cosine, gpt "
            "800 steps AdamW 3e-3 cosine); one channel ratio for every criterion (L1's ratio for 50 % of the MACs); "
            "fine-tune: vit 1 epoch, gpt 40 steps. 1 thread.\n"]
    if g:
        body += ["## gpt-tiny on pydoc-text (test perplexity, lower is better)\n", table(g, "perplexity", True)]
    if v:
        body += ["\n## vit-tiny on mnist-5k (test accuracy %)\n", table(v, "accuracy %", False)]
    secs = [r[f"{c}_s"] for r in g + v for c in ("output_norm",)]
    if secs:
        body.append(f"\noutput_norm prune call (scores on 256 samples + removal): {ms(secs, 2)} s. "
                    f"Total time {time.perf_counter() - t0:.0f} s.\n")
    name = "B12_transformer_criteria" + ("_gpt" if a.skip_vit else "_vit" if a.skip_gpt else "")
    write_result(name, "B12 (criteria): pruning criteria on vit-tiny and gpt-tiny at half the MACs", "\n".join(body))


if __name__ == "__main__":
    main()
