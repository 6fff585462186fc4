"""Exit policies offline: per-exit MACs, budget calibration, per-exit report, accuracy-MACs curve,
measured latency.

All exits' logits are computed once on a dataset; a threshold policy is then simulated exactly
(`simulate_exits` gives the same exit for every sample as `early_exit_predict`, a parity the tests
check). With one threshold shared by all exits (Shallow-Deep Networks), the average MACs never
decrease when the threshold rises, so `calibrate_budget` finds by bisection the largest threshold
whose average MACs on held-out training data stay within the budget (the budgeted batch
classification setting of MSDNet, Huang et al. 2018, with SDN's single threshold instead of
MSDNet's geometric exit distribution).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.dynamic.base import (MultiExitBase, confidence, early_exit_predict, early_exit_stream,
                                      expand_thresholds, score_cut, user_threshold)
from netcompress.measure import MacCounter
from netcompress.measure.metrics import FrozenParameters


@torch.no_grad()
def exit_outputs(model: nn.Module, batches: Iterable) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of every exit for every sample of `batches` ((x, y) pairs), and the targets, from
    `model.all_exits` (a `MultiExitBase` or an `EarlyExitLM`). Sequence logits (batch, seq, vocab) are
    flattened to one row per position, the input of the policy tools (`calibrate_budget`, ...)."""
    outs: list[list[torch.Tensor]] = []
    ys = []
    dev = next(model.parameters()).device
    with eval_mode(model):
        for x, y in batches:
            zs = model.all_exits(x.to(dev))
            if not outs:
                outs = [[] for _ in zs]
            for acc, z in zip(outs, zs):
                acc.append(z.reshape(-1, z.shape[-1]).float().cpu())
            ys.append(y.reshape(-1))
    if not ys:
        raise NetcompressError("no samples to evaluate the exits on")
    return [torch.cat(o) for o in outs], torch.cat(ys)


@torch.no_grad()
def exit_macs(model: MultiExitBase, example: torch.Tensor) -> list[int]:
    """Cumulative MACs (batch 1) of a sample leaving at each exit: its stages plus the heads it ran."""
    with eval_mode(model):
        state = model.start(example[:1])
        for k in range(model.num_exits):  # warm-up: builds cached segments outside the counter
            state, _ = model.step(k, state)
        state, total, out = model.start(example[:1]), 0, []
        for k in range(model.num_exits):
            counter = MacCounter()
            with FrozenParameters(model), counter:
                state, _ = model.step(k, state)
            total += counter.macs
            out.append(total)
    return out


@torch.no_grad()
def full_macs(model: MultiExitBase, example: torch.Tensor) -> int:
    """MACs (batch 1) of the full network without early heads. Parameters are frozen while counting,
    as in `count_macs` (timm CaiT's class token, expanded under no_grad, tripped the module tracker)."""
    counter = MacCounter()
    with eval_mode(model), FrozenParameters(model), counter:
        model.full_forward(example[:1])
    return counter.macs


def simulate_exits(outputs: Sequence[torch.Tensor], thresholds: float | Sequence[float], policy: str) -> torch.Tensor:
    """The exit each sample takes under `thresholds` (same rule as `early_exit_predict`)."""
    k_total = len(outputs)
    cuts = [score_cut(t, policy) for t in expand_thresholds(thresholds, k_total)]
    return _exits_for_cuts([confidence(z, policy) for z in outputs[:-1]], cuts, k_total)


def _exits_for_cuts(scores: Sequence[torch.Tensor], cuts: Sequence[float], k_total: int) -> torch.Tensor:
    n = scores[0].shape[0] if scores else 0
    exit_at = torch.full((n,), k_total - 1, dtype=torch.long)
    for k in reversed(range(k_total - 1)):
        exit_at[scores[k] >= cuts[k]] = k
    return exit_at


def calibrate_budget(outputs: Sequence[torch.Tensor], cum_macs: Sequence[int], budget_macs: float,
                     policy: str = "max_softmax") -> tuple[float, float]:
    """The threshold (shared by all exits) meeting an average-MACs budget on these outputs.

    Returns (threshold in the policy's scale, average MACs reached). The average reached is <= the
    budget and, without ties in the scores, within ``(cum_macs[-1] - cum_macs[0]) / n`` of it
    (one sample moving). A budget below the first exit's cost is an error.

    Example:
        t, reached = calibrate_budget(zs, exit_macs(mx, x), 0.5 * full_macs(mx, x))
    """
    k_total = len(outputs)
    if k_total < 2:
        raise NetcompressError("budget calibration needs at least one early exit")
    costs = torch.tensor(cum_macs, dtype=torch.float64)
    if budget_macs < costs[0]:
        raise NetcompressError(f"budget of {budget_macs:,.0f} MACs is below the first exit's cost "
                               f"({int(costs[0]):,} MACs); raise the budget or add an earlier exit")
    scores = [confidence(z, policy).double() for z in outputs[:-1]]

    def avg(cut: float) -> float:
        return costs[_exits_for_cuts(scores, [cut] * (k_total - 1), k_total)].mean().item()

    if avg(math.inf) <= budget_macs:
        return user_threshold(math.inf, policy), avg(math.inf)
    cands = torch.unique(torch.cat(scores)).tolist()  # sorted ascending; avg() is non-decreasing
    lo, hi = 0, len(cands) - 1  # avg(cands[0]) == cost of exit 0 (everything exits there)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if avg(cands[mid]) <= budget_macs:
            lo = mid
        else:
            hi = mid - 1
    return user_threshold(cands[lo], policy), avg(cands[lo])


def calibrate_accuracy(outputs: Sequence[torch.Tensor], targets: torch.Tensor, cum_macs: Sequence[int],
                       max_drop: float = 0.0, policy: str = "max_softmax") -> tuple[float, float, float]:
    """The cheapest threshold (shared by all exits) that keeps the full network's accuracy on these
    outputs, within `max_drop` (a fraction: 0.0 loses nothing, 0.005 half a point).

    Accuracy is not monotone in the threshold, so a single lucky threshold is not trusted: going
    down from "nobody exits early", the result is the lowest threshold such that it and every
    higher one stay within `max_drop` of the full network on these samples (use held-out training
    data, never the test set). Returns (threshold in the policy's scale, average MACs, accuracy).

    Example:
        t, macs, acc = calibrate_accuracy(held_out_logits, held_out_y, exit_macs(mx, x))
    """
    k_total = len(outputs)
    if k_total < 2:
        raise NetcompressError("accuracy calibration needs at least one early exit")
    if not 0.0 <= max_drop <= 1.0:
        raise NetcompressError(f"max_drop must be a fraction in [0, 1], got {max_drop}")
    if any(z.shape[0] != len(targets) for z in outputs) or len(targets) == 0:
        raise NetcompressError(f"accuracy calibration: {len(targets)} targets for outputs of "
                               f"{[int(z.shape[0]) for z in outputs]} samples")
    costs = torch.tensor(cum_macs, dtype=torch.float64)
    scores = torch.stack([confidence(z, policy).double() for z in outputs[:-1]])  # (K-1) x N
    right = torch.stack([z.argmax(1) for z in outputs]) == targets[None]  # K x N: is exit k right on sample n
    n = right.shape[1]
    target = right[-1].double().mean().item() - max_drop - 1e-12
    # One sweep down the distinct scores instead of re-simulating every cut. At cut c a sample leaves
    # at its first exit scoring >= c; that exit is always a "record" (a score above all earlier ones),
    # and as c falls past a record's score the sample moves there from its next record (or the end).
    record = scores > torch.cat([torch.full((1, n), -math.inf, dtype=torch.float64),
                                 scores.cummax(0).values[:-1]])
    moved_from = torch.empty_like(scores, dtype=torch.long)
    nxt = torch.full((n,), k_total - 1, dtype=torch.long)
    for k in reversed(range(k_total - 1)):
        moved_from[k] = nxt
        nxt = torch.where(record[k], k, nxt)
    cuts = torch.unique(scores).flip(0)  # descending: more samples leave at each
    ks, ns = record.nonzero(as_tuple=True)
    group = cuts.numel() - 1 - torch.searchsorted(cuts.flip(0), scores[ks, ns])
    old = moved_from[ks, ns]
    d_cost = torch.zeros(cuts.numel(), dtype=torch.float64).index_add_(0, group, costs[ks] - costs[old])
    d_right = torch.zeros(cuts.numel(), dtype=torch.long).index_add_(
        0, group, right[ks, ns].long() - right[old, ns].long())
    macs = costs[-1].item() * n + d_cost.cumsum(0)
    acc = (int(right[-1].sum()) + d_right.cumsum(0)).double() / n
    fails = (acc < target).nonzero()
    last = int(fails[0]) - 1 if fails.numel() else cuts.numel() - 1  # the lowest cut before the first failure
    best = ((math.inf, costs[-1].item(), right[-1].double().mean().item()) if last < 0 else
            (cuts[last].item(), macs[last].item() / n, acc[last].item()))
    return user_threshold(best[0], policy), best[1], best[2]


def policy_report(outputs: Sequence[torch.Tensor], targets: torch.Tensor, cum_macs: Sequence[int],
                  thresholds: float | Sequence[float], policy: str, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, average MACs, and per exit: MACs, accuracy of all samples forced there (anytime
    prediction), share of samples that exit there and their accuracy."""
    exit_at = simulate_exits(outputs, thresholds, policy)
    preds = torch.stack([z.argmax(1) for z in outputs])  # K x N
    chosen = preds.gather(0, exit_at[None]).squeeze(0)
    correct = chosen == targets
    n = len(targets)
    per_exit = []
    for k, z in enumerate(outputs):
        sel = exit_at == k
        per_exit.append({
            "exit": k, "name": (names[k] if names else str(k)), "macs": int(cum_macs[k]),
            "accuracy_all": (preds[k] == targets).float().mean().item(),
            "share": sel.float().mean().item(),
            "accuracy_exited": correct[sel].float().mean().item() if sel.any() else None,
        })
    costs = torch.tensor(cum_macs, dtype=torch.float64)
    return {"accuracy": correct.float().mean().item(), "avg_macs": costs[exit_at].mean().item(), "n": n,
            "exits": per_exit}


def tradeoff_curve(outputs: Sequence[torch.Tensor], targets: torch.Tensor, cum_macs: Sequence[int],
                   policy: str = "max_softmax", points: int = 15) -> list[dict[str, float]]:
    """Accuracy vs average MACs over a fixed grid of shared thresholds (no selection on this data)."""
    if policy == "max_softmax":
        grid = [0.0] + [1 - 0.5 ** (i / 2) for i in range(1, points - 1)] + [2.0]
    else:
        grid = [1.0] + [0.5 ** (i / 2) for i in range(1, points - 1)] + [-1.0]
    out = []
    for t in grid:
        r = policy_report(outputs, targets, cum_macs, t, policy)
        out.append({"threshold": t, "avg_macs": r["avg_macs"], "accuracy": r["accuracy"]})
    return out


@torch.no_grad()
def compare_latency(model: MultiExitBase, x: torch.Tensor, batch_size: int = 64, threads: int = 1,
                    min_run_time: float = 0.5, rounds: int = 11,
                    reference: Callable[[torch.Tensor], Any] | None = None) -> dict[str, float]:
    """Median CPU time (ms) to classify all of `x` in batches of `batch_size`: the full network vs
    the early-exit policy currently set on `model`, per batch (samples leave their batch:
    `early_exit_ms`, the latency of a batch request) and streamed (the samples that stay are
    re-batched for each later stage, `early_exit_stream`: `stream_ms`, the throughput of a job).

    The two are timed alternately, `rounds` times each after a warm-up, each round running for at
    least `min_run_time / rounds` seconds, so load changes on a shared machine hit both alike.

    Args:
        reference: the full network to time against (default ``model.full_forward``), e.g. the
            plain backbone in the deployment runtime when `model` is an `EarlyExitRuntime`.
    """
    import time

    if model.thresholds is None:
        raise NetcompressError("compare_latency: set a policy first (thresholds or budget)")
    old_threads = torch.get_num_threads()
    xs = x.cpu().contiguous()
    chunks = [c.contiguous() for c in xs.split(batch_size)]

    ref = reference if reference is not None else model.full_forward

    def full() -> None:
        for c in chunks:
            ref(c)

    def dyn() -> None:
        for c in chunks:
            early_exit_predict(model, c)

    def stream() -> None:
        early_exit_stream(model, xs, batch_size)

    def once(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"full": [], "dyn": [], "stream": []}
    torch.set_num_threads(threads)
    try:
        with eval_mode(model), torch.inference_mode():
            per = max(once(full), once(dyn), once(stream), 1e-6)
            reps = max(1, int(min_run_time / rounds / per))
            for _ in range(rounds):
                for key, fn in (("full", full), ("dyn", dyn), ("stream", stream)):
                    times[key].append(sum(once(fn) for _ in range(reps)) / reps)
    finally:
        torch.set_num_threads(old_threads)
    f_ms = statistics.median(times["full"]) * 1e3
    d_ms = statistics.median(times["dyn"]) * 1e3
    s_ms = statistics.median(times["stream"]) * 1e3
    return {"batch_size": batch_size, "samples": len(x), "threads": threads, "full_ms": f_ms, "early_exit_ms": d_ms,
            "speedup": f_ms / d_ms, "stream_ms": s_ms, "stream_speedup": f_ms / s_ms}


def plot_curve(curve: Sequence[dict], exits: Sequence[dict], full_macs: int, full_acc: float,
               point: dict | None = None, title: str = "early exit"):
    """A matplotlib figure of accuracy vs average MACs (fraction of the full network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["avg_macs"] / full_macs for c in curve], [100 * c["accuracy"] for c in curve], "o-",
            label="threshold sweep")
    ax.plot([e["macs"] / full_macs for e in exits], [100 * e["accuracy_all"] for e in exits], "s--",
            label="single exit (anytime)")
    ax.plot([1.0], [100 * full_acc], "k*", markersize=10, label="full network")
    if point is not None:
        ax.plot([point["avg_macs"] / full_macs], [100 * point["accuracy"]], "r^", markersize=9, label="chosen policy")
    ax.set_xlabel("average MACs / full network")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
