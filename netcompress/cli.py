"""The `netcompress` command.

Every bad input raises `NetcompressError`; `main` prints it as one line `netcompress: error: ...`
and exits with code 2 (a traceback only with --debug). Families add commands through
`netcompress.plugins.add_commands`; each command is `set_defaults(func=handler)` with
`handler(args) -> int`. Shared argument helpers live here: `add_model_args`, `add_data_args`,
`load_model`, `load_data`, `save_output`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from netcompress.core.errors import NetcompressError


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, default=None if required else "mnist-5k",
                   help="dataset name (see `netcompress list`), e.g. mnist-5k")
    p.add_argument("--data-dir", default=None, help="where online datasets are cached")
    p.add_argument("--batch-size", type=int, default=64)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a saved model file (.pt, .ncz), a zoo name, torchvision:NAME or python:mod:fn")
    p.add_argument("--trust-python", action="store_true", help="allow model files that name python code")


def load_data(args):
    from netcompress.data import load

    return load(args.data, batch_size=args.batch_size, data_dir=args.data_dir)


def load_model(args, data=None):
    """The model named by `args.model`: a file is loaded, a name is built for `data`'s shape."""
    from netcompress.models import create, create_for, load

    ref = args.model
    p = Path(ref)
    if p.suffix == ".ncz":
        from netcompress.archive import unpack

        return unpack(p)
    if p.suffix in (".pt", ".ncm") or p.exists():
        return load(p, trust_python=getattr(args, "trust_python", False))
    return create(ref) if data is None else create_for(ref, data)


def save_output(model, out: str) -> Path:
    from netcompress.models import save

    return save(model, out)


def _print_metrics(m, as_json: bool) -> None:
    if as_json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        print(m)


def cmd_list(args) -> int:
    from netcompress.data import DATASETS
    from netcompress.models import MODELS
    from netcompress.plugins import load_stages
    from netcompress.recipe.stages import STAGES

    load_stages()
    sections = [("models", MODELS), ("datasets", DATASETS), ("stage kinds", STAGES)]
    try:
        from netcompress.prune.importance import CRITERIA

        sections.append(("pruning criteria", CRITERIA))
    except ImportError:
        pass
    try:
        from netcompress.distill.methods import DISTILLERS

        sections.append(("distillation methods", DISTILLERS))
    except ImportError:
        pass
    for title, reg in sections:
        print(f"{title}:")
        for n in reg.list():
            d = reg.describe(n)
            print(f"  {n:24s} {d}" if d else f"  {n}")
    from netcompress.models.sources import SOURCES_HELP

    print("model sources:")
    for line in SOURCES_HELP:
        print(f"  {line}")
    return 0


def cmd_measure(args) -> int:
    from netcompress.measure import measure

    data = load_data(args)
    model = load_model(args, data)
    file = args.model if Path(args.model).is_file() else None
    m = measure(model, data, file=file, latency=not args.no_latency, threads=args.threads)
    _print_metrics(m, args.json)
    return 0


def cmd_train(args) -> int:
    from netcompress.measure import measure
    from netcompress.train import TrainConfig, fit, is_main

    data = load_data(args)
    model = load_model(args, data)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer)
    fit(model, data, cfg, seed=args.seed, checkpoint=args.checkpoint, resume=args.resume)
    if is_main():
        save_output(model, args.out)
        print(measure(model, data, file=args.out, latency=False))
        print(f"saved {args.out}")
    return 0


def cmd_run(args) -> int:
    from netcompress.recipe.runner import run_recipe
    from netcompress.report import markdown_table, summary_rows
    from netcompress.train import is_main

    res = run_recipe(args.recipe, out=args.out, overrides=args.set or [], resume=args.resume,
                     progress=None if not args.quiet else False)
    if is_main():
        print(markdown_table(summary_rows(res.entries)))
        print(f"report: {res.out / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from netcompress.plugins import add_commands

    p = argparse.ArgumentParser(prog="netcompress", description="Compress neural networks and measure the result.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe (no argument: the built-in offline default)")
    r.add_argument("recipe", nargs="?", default=None, help="a recipe YAML file")
    r.add_argument("--out", default=None, help="run directory (default runs/<recipe name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. train.epochs=2")
    r.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("measure", help="accuracy, parameters, MACs, bytes, latency of a model")
    add_model_args(m)
    add_data_args(m)
    m.add_argument("--json", action="store_true")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--no-latency", action="store_true")
    m.set_defaults(func=cmd_measure)

    t = sub.add_parser("train", help="train a model and save it")
    add_model_args(t)
    add_data_args(t)
    t.add_argument("--epochs", type=float, default=10)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--out", required=True, help="output model file (.pt)")
    t.set_defaults(func=cmd_train)

    ls = sub.add_parser("list", help="models, datasets, stage kinds, criteria")
    ls.set_defaults(func=cmd_list)
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except NetcompressError as e:
        if debug:
            raise
        print(f"netcompress: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netcompress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
