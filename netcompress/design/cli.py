"""`netcompress design MODEL --data D --op lowrank|separable ... --out PATH`."""
from __future__ import annotations

import json


def cmd_design(args) -> int:
    from netcompress.cli import load_data, load_model, save_output
    from netcompress.design.run import DesignConfig, cost_report, format_report, recovery, transform
    from netcompress.train import TrainConfig, evaluate, fit

    raw = {"op": args.op, "rank": args.rank, "energy": args.energy, "budget": args.budget,
           "budget_metric": args.budget_metric, "conv": args.conv, "include": args.include,
           "exclude": args.exclude or [], "calibration": args.calibration, "recover": args.recover,
           "epochs": args.epochs, "lr": args.lr, "temperature": args.temperature, "alpha": args.alpha}
    cfg: DesignConfig = DesignConfig.from_dict({k: v for k, v in raw.items() if v is not None}, "netcompress design")
    data = load_data(args)
    model = load_model(args, data)
    new, layers = transform(model, cfg, data)
    rep = cost_report(model, new, layers, data.example, latency=not args.no_latency)
    acc0, acc1 = evaluate(model, data, device="cpu"), evaluate(new, data, device="cpu")
    rep.update(accuracy_original=acc0, accuracy_before_recovery=acc1)
    if cfg.recover != "none":
        methods, loss_fn = recovery(cfg, model)
        lr = cfg.lr or (0.002 if cfg.recover == "distill" else 0.005)
        train = TrainConfig(epochs=cfg.epochs if cfg.epochs is not None else 3.0, lr=lr,
                            batch_size=args.batch_size)
        fit(new, data, train, methods=methods, loss_fn=loss_fn, seed=args.seed)
        for m in methods:
            new = m.finalize(new) or new
    rep["accuracy_after"] = evaluate(new, data, device="cpu")
    save_output(new, args.out)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(format_report(rep))
        print(f"accuracy: original {100 * acc0:.2f}% | transformed {100 * acc1:.2f}% | "
              f"after {cfg.recover} {100 * rep['accuracy_after']:.2f}%")
        print(f"saved {args.out}")
    return 0


def add_commands(subparsers) -> None:
    """Register `netcompress design`."""
    from netcompress.cli import add_data_args, add_model_args

    p = subparsers.add_parser("design", help="low-rank factorisation or depthwise-separable conversion")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--op", required=True, choices=["lowrank", "separable"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int, help="lowrank: rank K of every selected layer")
    g.add_argument("--energy", type=float, help="lowrank: kept singular-value energy, e.g. 0.9")
    g.add_argument("--budget", type=float, help="lowrank: fraction of params (or MACs) to keep, e.g. 0.5")
    p.add_argument("--budget-metric", choices=["params", "macs"], default=None)
    p.add_argument("--conv", choices=["spatial", "channel"], default=None,
                   help="conv decomposition: spatial (Jaderberg kx1+1xk) or channel (kxk to K, then 1x1)")
    p.add_argument("--include", action="append", metavar="PATTERN", help="only layers matching (fnmatch), repeatable")
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="skip layers matching, repeatable")
    p.add_argument("--calibration", type=int, default=None, help="separable: samples for the least-squares fit")
    p.add_argument("--recover", choices=["none", "finetune", "distill"], default="finetune")
    p.add_argument("--epochs", type=float, default=None, help="recovery epochs (default 3)")
    p.add_argument("--lr", type=float, default=None, help="recovery learning rate (default 0.005; 0.002 for distill)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", required=True, help="output model file (.pt)")
    p.set_defaults(func=cmd_design)
