"""`netcompress dynamic MODEL --data D --exits NAME ... [--budget F | --threshold T] --out FILE`."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from netcompress.cli import add_data_args, add_model_args, load_data, load_model, save_output


def cmd_dynamic(args) -> int:
    from netcompress.dynamic.stages import DynamicConfig, run_dynamic
    from netcompress.recipe.stages import StageContext
    from netcompress.train import TrainConfig

    data = load_data(args)
    model = load_model(args, data)
    cfg_dict = {"exits": args.exits or [], "epochs": args.epochs, "policy": args.policy,
                "train_backbone": args.train_backbone, "distill": args.distill, "holdout": args.holdout,
                "latency": not args.no_latency}
    for key in ("threshold", "budget", "lr", "max_steps"):
        if getattr(args, key) is not None:
            cfg_dict[key] = getattr(args, key)
    if args.head_pool is not None or args.head_hidden is not None:
        cfg_dict["head"] = {k: v for k, v in (("pool", args.head_pool), ("hidden", args.head_hidden)) if v is not None}
    cfg = DynamicConfig.from_dict(cfg_dict, where="netcompress dynamic")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(data=data, train=TrainConfig(lr=args.lr or 0.05, batch_size=args.batch_size), seed=args.seed,
                           out_dir=Path(tmp), name="dynamic", progress=None)
        res = run_dynamic(ctx, model, cfg)
        if args.plot:
            png = next(iter(ctx.figures.values()))
            Path(args.plot).write_bytes(png)
    save_output(res.model, args.out)
    ex = res.extra
    if args.json:
        print(json.dumps(ex, indent=1))
        return 0
    print(f"policy {ex['policy']} thresholds {[round(t, 4) for t in ex['thresholds']]}")
    print(f"{'exit':>14s} {'MACs':>12s} {'acc(all)':>9s} {'share':>7s} {'acc(exited)':>11s}")
    for e in ex["exits"]:
        acc_ex = f"{100 * e['accuracy_exited']:.2f}" if e["accuracy_exited"] is not None else "-"
        print(f"{e['name']:>14s} {e['macs']:>12,d} {100 * e['accuracy_all']:>9.2f} {100 * e['share']:>6.1f}% {acc_ex:>11s}")
    print(f"accuracy {100 * ex['accuracy']:.2f}% (full network {100 * ex['full_accuracy']:.2f}%), average MACs "
          f"{ex['avg_macs']:,.0f} = {100 * ex['avg_macs_fraction']:.1f}% of {ex['full_macs']:,}")
    if "latency" in ex:
        lat = ex["latency"]
        print(f"CPU time for {lat['samples']} samples in batches of {lat['batch_size']}: full {lat['full_ms']:.2f} ms, "
              f"early exit {lat['early_exit_ms']:.2f} ms ({lat['speedup']:.2f}x)")
    print(f"saved {args.out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("dynamic", help="early exits: add heads, train them, calibrate a threshold or a MACs budget",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--exits", nargs="+", default=None, help="module names to put exits after (not for msdnet-small)")
    p.add_argument("--budget", type=float, default=None, help="average MACs as a fraction of the full network")
    p.add_argument("--threshold", type=float, default=None, help="fixed exit threshold instead of a budget")
    p.add_argument("--policy", default="max_softmax", choices=["max_softmax", "entropy"])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--train-backbone", action="store_true", help="train the whole network, not only the heads")
    p.add_argument("--distill", type=float, default=0.0, help="self-distillation share from the last exit")
    p.add_argument("--head-pool", type=int, default=None)
    p.add_argument("--head-hidden", type=int, default=None)
    p.add_argument("--holdout", type=int, default=500, help="training samples held out for calibration")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--plot", default=None, help="write the accuracy-MACs curve to this PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", required=True, help="output multi-exit model file (.pt)")
    p.set_defaults(func=cmd_dynamic)
