"""B12 (LM early exit): per-token early-exit decoding of gpt-tiny on pydoc-text, vs the same model
trained as long without exits.

Per (depth, seed), in one process, every row from the same dense model:

* gpt-tiny (4 blocks; `--depths 4 8` adds an 8-block version of it) trained 800 steps on
  pydoc-text (batch 16 x 128 bytes, AdamW 3e-3, cosine), as the other B12 scripts.
* Control: the dense model trained 2 more epochs on the same training windows (all but the 500
  held out), the exit training's budget, without exits.
* The `dynamic` stage with its defaults for a language model (one exit halfway, after block
  depth / 2 - 1, sharing the final norm and LM head; the whole model trains 2 epochs with the exit
  loss at SDN weight; lr = train.lr), calibrated with `accuracy_drop: 0` (no next-token accuracy
  lost on the 500 held-out training windows). On 4 blocks also exits after blocks 0, 1 and 2.
  Operating points of the same trained model: accuracy_drop 0 and 0.005, a budget of 0.8 of the
  MACs (all calibrated on the held-out windows), and no exit (threshold 2).
Reported: test perplexity of the early-exit model itself (state propagation: a token that leaves
gives the blocks it skips its exit hidden state for their keys and values), its change vs the
control, average MACs per token (attention over a 64-token context included), and the CPU time of
decoding 8 prompts (32 test bytes each) by 64 tokens at batch 1 with a key/value cache, the model
without exits vs with them (1 thread, median of 5 rounds, both in the same process).

    python benchmarks/bench_lm_exit.py                       # 3 seeds, 4 blocks, ~35 min on 2 cores
    python benchmarks/bench_lm_exit.py --depths 4 8          # also 8 blocks, ~60 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
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
from bench_transformers import GPT_STEPS, GPT_TRAIN, ms, ppl  # noqa: E402
from netcompress.dynamic import (calibrate_accuracy, calibrate_budget, decode_latency, exit_outputs,  # noqa: E402
                                 lm_exit_eval, token_costs)
from netcompress.dynamic.stages import holdout_split  # noqa: E402
from netcompress.train import TrainConfig  # noqa: E402

HOLDOUT, EPOCHS = 500, 2.0


def points(ee, data, held) -> dict:
    """Every operating point of one trained early-exit model."""
    ho, hy = exit_outputs(ee, held)
    cum, full = token_costs(ee)
    test = list(data.loader("test", shuffle=False))
    prompts = torch.cat([x for x, _ in test])[:8, :32].reshape(8, 1, 32)
    out = {}
    for name, t in (("accuracy_drop 0", calibrate_accuracy(ho, hy, cum, 0.0)[0]),
                    ("accuracy_drop 0.005", calibrate_accuracy(ho, hy, cum, 0.005)[0]),
                    ("budget 0.8", calibrate_budget(ho, cum, 0.8 * full)[0]), ("no exit", 2.0)):
        ee.set_policy_("max_softmax", t)
        r = lm_exit_eval(ee, test)
        lat = decode_latency(ee, prompts, 64, rounds=5)
        out[name] = {"threshold": t, "ppl": r["perplexity"], "acc": r["token_accuracy"],
                     "macs": sum(c * s for c, s in zip(cum, r["exit_share"])) / full, "speedup": lat["speedup"], "tok_s": lat["early_exit_tokens_per_s"],
                     "full_tok_s": lat["full_tokens_per_s"]}
    return out


def one(depth: int, seed: int) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    data = nc.data.load("pydoc-text", batch_size=16, seed=seed)
    torch.manual_seed(seed)
    base = nc.models.create_for("gpt-tiny", data, depth=depth)
    nc.train.fit(base, data, epochs=100, max_steps=GPT_STEPS, seed=seed, progress=False, evaluate_each_epoch=False,
                 **GPT_TRAIN)
    train_data, held = holdout_split(data, HOLDOUT)
    control = copy.deepcopy(base)
    nc.train.fit(control, train_data, TrainConfig(epochs=EPOCHS, **GPT_TRAIN), seed=seed, progress=False,
                 evaluate_each_epoch=False)
    r: dict = {"depth": depth, "seed": seed, "dense": ppl(base, data),
               "control": ppl(control, data), "settings": {}}
    settings = {"one exit halfway (default)": {}}
    if depth == 4:
        settings["exits after blocks 0, 1, 2"] = {"exits": ["blocks.0", "blocks.1", "blocks.2"]}
    for label, kw in settings.items():
        res = nc.apply("dynamic", base, data, seed=seed, train=GPT_TRAIN, accuracy_drop=0.0, latency=False, **kw)
        ee = res.model
        r["settings"][label] = {"exits": list(ee.exits), "stage_ppl": res.extra["perplexity"],
                                "points": points(ee, data, held)}
    r["seconds"] = time.time() - t0
    print(f"depth {depth} seed {seed} done in {r['seconds']:.0f} s", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--depths", type=int, nargs="+", default=[4])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    t0 = time.time()
    jobs = [(d, s) for d in a.depths for s in a.seeds]
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(one, *zip(*jobs)))
    write_result("B12_lm_exit", "B12: early-exit decoding of gpt-tiny on pydoc-text (CALM-style, shared LM head)",
                 report(results, a.seeds, a.depths, a.jobs, time.time() - t0))


def report(results: list[dict], seeds: list[int], depths: list[int], jobs: int, secs: float) -> str:
    body = [f"Seeds {seeds}; gpt-tiny trained {GPT_STEPS} steps (batch 16 x 128 bytes, AdamW 3e-3, cosine); "
            f"exit training and control {EPOCHS:g} epochs on the training windows minus {HOLDOUT} held out; "
            f"1 thread per job, {jobs} jobs; {secs:.0f} s. Perplexity on the test topics; "
            "'vs control' = perplexity / control's - 1, per seed, then mean ± std; MACs per token as a fraction "
            "of the model without exits; speed = CPU time of cached batch-1 decoding without exits / with them.\n"]
    for depth in depths:
        rs = [r for r in results if r["depth"] == depth]
        rows = [["dense (800 steps)", ms([r["dense"] for r in rs]), "", "1", "1"],
                ["control (+2 epochs, no exits)", ms([r["control"] for r in rs]), "0", "1", "1"]]
        for label in rs[0]["settings"]:
            for pt in rs[0]["settings"][label]["points"]:
                ps = [r["settings"][label]["points"][pt] for r in rs]
                rows.append([f"{label}: {pt}", ms([p["ppl"] for p in ps]),
                             ms([100 * (p["ppl"] / r["control"] - 1) for p, r in zip(ps, rs)], 1) + " %",
                             ms([p["macs"] for p in ps]), ms([p["speedup"] for p in ps], 2)])
        body.append(f"## gpt-tiny, {depth} blocks\n")
        body.append(md_table(["model", "test perplexity", "vs control", "MACs / token", "decode speed"], rows))
        tok = [p["full_tok_s"] for r in rs for s in r["settings"].values() for p in s["points"].values()]
        body.append(f"\nDecoding without exits: {statistics.mean(tok):.0f} tokens/s (1 thread, cached). Per seed "
                    "(accuracy_drop 0, default exit): " + "; ".join(
                        f"seed {r['seed']}: control {r['control']:.3f}, early exit "
                        f"{r['settings']['one exit halfway (default)']['points']['accuracy_drop 0']['ppl']:.3f} "
                        f"(stage {r['settings']['one exit halfway (default)']['stage_ppl']:.3f}), speed "
                        f"{r['settings']['one exit halfway (default)']['points']['accuracy_drop 0']['speedup']:.2f}"
                        for r in rs) + "\n")
    return "\n".join(body) + "\n"


if __name__ == "__main__":
    main()
