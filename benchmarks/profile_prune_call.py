"""Where the time of one structured prune call goes (torchvision mobilenet_v2, 50 % channels, l1),
with Torch-Pruning's MetaPruner on the same model in the same run.

The call is split into the phases of `netcompress.prune.channels`: building the channel graph
(torch.fx trace + label propagation), scoring, and physical removal; cProfile's top functions
(cumulative time) are listed for the whole call.

    python benchmarks/profile_prune_call.py [--model mobilenet_v2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import cProfile
import copy
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import md_table, write_result  # noqa: E402

from netcompress.core.graph import ChannelGraph  # noqa: E402
from netcompress.prune import channels  # noqa: E402


def tp_prune(model, x, ratio=0.5):
    import torch_pruning as tp

    m = copy.deepcopy(model)
    tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                         ignored_layers=[m.classifier]).step()
    return m


def best_of(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    channels(model, "l1", 0.5, example_inputs=x)  # warm: imports and caches of both tools
    tp_prune(model, x)
    t_ours = best_of(lambda: channels(model, "l1", 0.5, example_inputs=x), args.repeats)
    t_tp = best_of(lambda: tp_prune(model, x), args.repeats)
    t_copy = best_of(lambda: copy.deepcopy(model), args.repeats)
    t_build = best_of(lambda: ChannelGraph.build(model, x), args.repeats)
    t_trace = best_of(lambda: torch.fx.symbolic_trace(model), args.repeats)
    prof = cProfile.Profile()
    prof.enable()
    channels(model, "l1", 0.5, example_inputs=x)
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("cumulative")
    rows = []
    for (file, line, fn), (cc, nc_, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][3]):
        if ct < 0.01 * t_ours or "{built-in" in file or fn.startswith("<"):
            continue
        where = file.split("site-packages/")[-1].split("/wt/")[-1]
        rows.append([f"{where}:{line} {fn}", nc_, f"{ct:.3f}", f"{tt:.3f}"])
        if len(rows) >= 25:
            break
    phases = [["whole channels() call", f"{t_ours:.3f}", "100 %"],
              ["ChannelGraph.build (fx trace + channel labels + groups)", f"{t_build:.3f}", f"{100 * t_build / t_ours:.0f} %"],
              ["  of which torch.fx.symbolic_trace alone", f"{t_trace:.3f}", f"{100 * t_trace / t_ours:.0f} %"],
              ["copy.deepcopy(model) (both tools copy)", f"{t_copy:.3f}", f"{100 * t_copy / t_ours:.0f} %"],
              ["rest: scoring, choosing, physical removal", f"{max(t_ours - t_build, 0):.3f}",
               f"{100 * max(t_ours - t_build, 0) / t_ours:.0f} %"],
              ["Torch-Pruning MetaPruner (deepcopy + DepGraph + step)", f"{t_tp:.3f}", f"{t_tp / t_ours:.2f}x of ours"]]
    body = (f"- model: torchvision {args.model}, input 1x3x{args.size}x{args.size}, 50 % channels, l1; median of "
            f"{args.repeats} calls after a warm-up call\n\n## Phases\n\n"
            + md_table(["phase", "seconds", "share"], phases)
            + "\n## cProfile, one call (cumulative seconds; functions >= 1 % of the call)\n\n"
            + md_table(["function", "calls", "cumulative s", "own s"], rows))
    write_result(f"prune_call_profile_{args.model}", f"Prune-call profile: {args.model}", body)


if __name__ == "__main__":
    main()
