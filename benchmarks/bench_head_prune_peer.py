"""B12 peer: head + MLP + width pruning of vit-tiny to half its MACs, netcompress vs Torch-Pruning.

Per seed, in one process, both tools prune the same converged dense vit-tiny (30 epochs on mnist-5k,
AdamW 2e-3 cosine: `bench_transformers.dense_vit`) with the same rule, then recover on the same
budget:

* criterion: L1 magnitude of each coupled group (ours: `nc.prune.channels(model, "l1", ratio)`;
  Torch-Pruning: `GroupMagnitudeImportance(p=1)`), one uniform ratio for every group, attention
  heads removed whole at the same ratio (Torch-Pruning's documented head options:
  `num_heads={attn.qkv: heads}`, `prune_num_heads=True`, `prune_head_dims=False`,
  `head_pruning_ratio=ratio`), the classifier kept;
* the ratio of each tool found by bisection so that its pruned model keeps at most half of the dense
  MACs (batch 1);
* recovery: fine-tuning, and KD from the dense model (`HiddenKD` defaults), 5 epochs AdamW 2e-3
  cosine each, as in `bench_transformer_prune.py`.
Reported: MACs and parameters kept, heads left, test accuracy before and after recovery, the prune
call's time (median of 3 interleaved calls, each on a fresh copy), and the pruned models' CPU
latency at batch 64 (`nc.measure.latency_ms`, median of 7 interleaved rounds, 1 thread).

gpt-tiny is tried with Torch-Pruning too (its q/k/v projections given as `num_heads`): the failure,
if any, is structural (the same for any weights), so it is tried on the freshly built model.

    python benchmarks/bench_head_prune_peer.py              # 3 seeds, ~10 min on 1 core
    python benchmarks/bench_head_prune_peer.py --seeds 0 --epochs 1 --recover-epochs 0.2   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import interleaved_latency, l1_channels, md_table, write_result  # noqa: E402
from bench_transformer_prune import half_macs_ratio, heads, recover  # noqa: E402
from bench_transformers import VIT_EPOCHS, VIT_TRAIN, dense_vit, ms  # noqa: E402
from netcompress.measure import count_macs  # noqa: E402


def torch_pruning(model, x, ratio: float):
    import torch_pruning as tp

    m = copy.deepcopy(model)
    num_heads = {b.attn.qkv: b.attn.qkv.out_features // (3 * b.attn.head_dim) for b in m.blocks}
    pruner = tp.pruner.MetaPruner(
        m, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio, ignored_layers=[m.head],
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        unwrapped_parameters=[(m.cls_token, 2), (m.pos_embed, 2)])  # prune their embedding dimension
    pruner.step()
    return m


TOOLS = {"netcompress": l1_channels, "Torch-Pruning": torch_pruning}


def vit_seed(seed: int, epochs: float, recover_epochs: float) -> dict:
    base, data = dense_vit(seed, epochs)
    x = data.example[:1]
    fit_kw = dict(epochs=recover_epochs, seed=seed, progress=False, evaluate_each_epoch=False, **VIT_TRAIN)
    acc = lambda m: 100 * nc.train.evaluate(m, data)  # noqa: E731
    dense_macs = count_macs(base, x)
    dense_params = sum(p.numel() for p in base.parameters())
    r: dict = {"dense": acc(base), "dense_heads": heads(base)}
    pruned, calls = {}, {k: [] for k in TOOLS}
    for k, prune in TOOLS.items():
        r[f"{k}_ratio"] = half_macs_ratio(base, x, prune=prune)[0]
    for _ in range(3):  # interleaved, each call on the dense model (both tools copy it)
        for k, prune in TOOLS.items():
            t0 = time.perf_counter()
            pruned[k] = prune(base, x, r[f"{k}_ratio"])
            calls[k].append(time.perf_counter() - t0)
    for k, m in pruned.items():
        r[f"{k}_macs"] = count_macs(m, x) / dense_macs
        r[f"{k}_params"] = sum(p.numel() for p in m.parameters()) / dense_params
        r[f"{k}_heads"] = heads(m)
        r[f"{k}_call"] = statistics.median(calls[k])
        r[f"{k}_none"] = acc(m)
        r[f"{k}_ft"] = acc(recover(base, m, data, fit_kw, kd=False))
        r[f"{k}_kd"] = acc(recover(base, m, data, fit_kw, kd=True))
    lat = interleaved_latency({"dense": base, **pruned}, next(iter(data.test))[0][:64], batch_size=64)
    for k, v in lat.items():
        r[f"{k}_ms"] = statistics.median(v)
    print(seed, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    return r


def gpt_attempt() -> str:
    """Torch-Pruning on gpt-tiny (q/k/v projections as `num_heads`): 'ok' or its error line."""
    import torch_pruning as tp

    data = nc.data.load("pydoc-text", batch_size=16)
    torch.manual_seed(0)
    m = nc.models.create_for("gpt-tiny", data)
    x = data.example[:1]
    num_heads = {p: p.out_features // b.attn.head_dim for b in m.blocks
                 for p in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj)}
    try:
        pruner = tp.pruner.MetaPruner(
            m, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.3, ignored_layers=[m.lm_head],
            num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.3)
        pruner.step()
        m(x)
    except Exception as e:  # a peer's failure is a result here, reported with its message
        return f"fails: {type(e).__name__}: {str(e).splitlines()[0]}"
    n = nc.prune.channels(nc.models.create_for("gpt-tiny", data), "l1", 0.3, example_inputs=x)
    return f"ok ({heads(m)} heads left; ours at the same ratio: {heads(n)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=VIT_EPOCHS, help="dense vit-tiny training epochs")
    ap.add_argument("--recover-epochs", type=float, default=5.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = [vit_seed(s, a.epochs, a.recover_epochs) for s in a.seeds]
    gpt = gpt_attempt()
    rows = [["dense", "", "1.00", "1.00", str(runs[0]["dense_heads"]), ms([r["dense"] for r in runs], 2), "", "", "",
             ms([r["dense_ms"] for r in runs], 2)]]
    for k in TOOLS:
        rows.append([k, ms([r[f"{k}_ratio"] for r in runs], 3), ms([r[f"{k}_macs"] for r in runs], 3),
                     ms([r[f"{k}_params"] for r in runs], 3), ", ".join(str(r[f"{k}_heads"]) for r in runs),
                     ms([r[f"{k}_none"] for r in runs], 2), ms([r[f"{k}_ft"] for r in runs], 2),
                     ms([r[f"{k}_kd"] for r in runs], 2), ms([r[f"{k}_call"] for r in runs], 3),
                     ms([r[f"{k}_ms"] for r in runs], 2)])
    tp_k, nc_k = "Torch-Pruning", "netcompress"
    wins = {rec: sum(r[f"{nc_k}_{rec}"] > r[f"{tp_k}_{rec}"] for r in runs) for rec in ("none", "ft", "kd")}
    ties = {rec: sum(r[f"{nc_k}_{rec}"] == r[f"{tp_k}_{rec}"] for r in runs) for rec in ("none", "ft", "kd")}
    call_ratio = [r[f"{tp_k}_call"] / r[f"{nc_k}_call"] for r in runs]
    speed = [r["dense_ms"] / r[f"{k}_ms"] for r in runs for k in TOOLS]
    body = (f"Seeds {a.seeds}; dense vit-tiny {a.epochs:g} epochs (AdamW 2e-3 cosine); recovery {a.recover_epochs:g} "
            f"epochs (AdamW 2e-3 cosine) for fine-tuning and for KD. Peer: Torch-Pruning {version('torch-pruning')}. "
            f"1 thread; {time.perf_counter() - t0:.0f} s.\n\n"
            + md_table(["tool", "ratio (bisection)", "MACs kept", "params kept", "heads left (per seed)",
                        "no recovery %", "fine-tune %", "KD from dense %", "prune call s", "ms / batch 64"], rows)
            + f"\nnetcompress above Torch-Pruning (seeds, ties apart): no recovery {wins['none']}/{len(runs)} "
              f"(ties {ties['none']}), fine-tune {wins['ft']}/{len(runs)} (ties {ties['ft']}), KD {wins['kd']}/{len(runs)} "
              f"(ties {ties['kd']}). Torch-Pruning's prune call / ours: {ms(call_ratio, 2)}. Speed-up over dense "
              f"at batch 64, both tools: {min(speed):.2f}-{max(speed):.2f}x.\n\n"
              f"gpt-tiny (nn.RMSNorm, rotary, separate q/k/v) with Torch-Pruning: {gpt}\n")
    write_result("B12_head_prune_peer", "B12 peer: vit-tiny heads + MLP + width to half the MACs, netcompress vs "
                 "Torch-Pruning", body)


if __name__ == "__main__":
    main()
