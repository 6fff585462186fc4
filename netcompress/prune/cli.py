"""`netcompress prune MODEL --data D --criterion C --ratio R | --sparsity S [--finetune-epochs E] [--dry-run] --out PATH`."""
from __future__ import annotations

from netcompress.core.errors import NetcompressError


def cmd_prune(args) -> int:
    from netcompress.cli import load_data, load_model, save_output
    from netcompress.measure import measure
    from netcompress.prune import channels, plan
    from netcompress.prune.unstructured import MaskMethod, finalize_, weights_
    from netcompress.train import fit

    if (args.ratio is None) == (args.sparsity is None):
        raise NetcompressError("prune: give exactly one of --ratio (channels) or --sparsity (weights)")
    if not args.dry_run and not args.out:
        raise NetcompressError("prune: --out is required (or use --dry-run)")
    data = load_data(args)
    model = load_model(args, data)
    model.eval()
    ignore = args.ignore or []
    if args.ratio is not None:
        kw = dict(example_inputs=data.example, data=data, scope=args.scope or "layer", ignore=ignore, seed=args.seed)
        if args.dry_run:
            print(plan(model, args.criterion, args.ratio, **kw))
            return 0
        steps = args.steps if args.schedule == "iterative" else 1
        if args.schedule == "agp":
            raise NetcompressError("prune: --schedule agp is for --sparsity (weight pruning)")
        r = 1.0 - (1.0 - args.ratio) ** (1.0 / steps)
        for _ in range(steps):
            model = channels(model, args.criterion, r, **kw)
            if args.finetune_epochs > 0:
                fit(model, data, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed)
    else:
        if args.dry_run:
            masks = weights_(model, args.criterion, args.sparsity, args.scope or "global", seed=args.seed)
            for name, m in masks.items():
                print(f"{name:40s} keeps {int(m.sum())} of {m.numel()} weights")
            print("(dry run: nothing saved)")
            return 0
        from netcompress.prune.unstructured import AGPMethod

        if args.schedule == "agp":
            total = int(args.finetune_epochs * len(data.loader("train", batch_size=args.batch_size)))
            if total < 1:
                raise NetcompressError("prune: --schedule agp needs --finetune-epochs > 0")
            agp = AGPMethod(args.sparsity, end=max(1, int(0.8 * total)), frequency=max(1, total // 20),
                            criterion=args.criterion, scope=args.scope or "global")
            fit(model, data, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed, methods=[agp])
            agp.finalize(model)
        else:
            from netcompress.prune.schedule import step_sparsities

            for s in step_sparsities(args.sparsity, args.steps if args.schedule == "iterative" else 1):
                weights_(model, args.criterion, s, args.scope or "global", seed=args.seed)
                if args.finetune_epochs > 0:
                    fit(model, data, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed, methods=[MaskMethod()])
            finalize_(model)
    path = save_output(model, args.out)
    print(measure(model, data, file=path, latency=False))
    print(f"saved {path}")
    return 0


def add_commands(subparsers) -> None:
    from netcompress.cli import add_data_args, add_model_args

    p = subparsers.add_parser("prune", help="prune channels (--ratio, physical removal) or weights (--sparsity, masks)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--criterion", default="l1", help="l1, l2, fpgm, slimming, apoz, taylor, random (weights: l1, random)")
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove from each group")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero")
    p.add_argument("--scope", choices=["layer", "global"], default=None)
    p.add_argument("--schedule", choices=["oneshot", "iterative", "agp"], default="oneshot")
    p.add_argument("--steps", type=int, default=3, help="rounds for --schedule iterative")
    p.add_argument("--finetune-epochs", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--ignore", action="append", metavar="MODULE", help="leave this module unpruned (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the plan; change and save nothing")
    p.add_argument("--out", default=None, help="output model file (.pt)")
    p.set_defaults(func=cmd_prune)
