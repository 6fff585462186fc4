"""The `netcompress` command.

Every bad input raises `NetcompressError`; `main` prints it as one line `netcompress: error: ...`
and exits with code 2 (a traceback only with --debug). Besides `run`, `measure`, `list`, `unpack`
and `inspect`, every stage kind has a command generated from its config (`netcompress.commands`):
`netcompress prune`, `distill`, `quantize`, `pack`, `design`, `dynamic`, `train`, `finetune`, ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from netcompress.archive import format_table, inspect, unpack
from netcompress.commands import add_stage_commands, check_output_file, load_model
from netcompress.core.config import format_validation_error
from netcompress.core.errors import NetcompressError
from netcompress.core.seeding import forked_rng
from netcompress.data import DATASETS, load as load_data
from netcompress.distill.protocols import DISTILLERS
from netcompress.measure import measure
from netcompress.models import MODELS, save
from netcompress.prune.importance import CRITERIA
from netcompress.recipe.runner import run_recipe
from netcompress.report import markdown_table, summary_rows
from netcompress.train import is_main
from netcompress.train.stage import STAGES


def _print_metrics(m, as_json: bool) -> None:
    if as_json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        print(m)


def _param_count(name: str) -> str:
    """'431K params' for a zoo model at its default input shape (built on the meta device: no memory)."""
    import torch

    from netcompress.models import create

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in create(name).parameters())
    except Exception:  # noqa: BLE001 - a wrapper built by a stage, or a source that needs a download
        return ""
    return f"{n / 1e6:.2f}M params" if n >= 1e6 else f"{n / 1e3:.0f}K params"


def cmd_list(args) -> int:
    sections = [("models", MODELS), ("datasets", DATASETS), ("stage kinds (each is also a command)", STAGES),
                ("pruning criteria", CRITERIA), ("distillation methods", DISTILLERS)]
    for title, reg in sections:
        print(f"{title}:")
        for n in reg.list():
            d = reg.describe(n)
            count = _param_count(n) if reg is MODELS else ""
            if count:
                d = f"{d}; {count}" if d else count
            print(f"  {n:24s} {d}" if d else f"  {n}")
    from netcompress.models.sources import SOURCES_HELP

    print("model sources:")
    for line in SOURCES_HELP:
        print(f"  {line}")
    return 0


def cmd_measure(args) -> int:
    if args.threads < 1:
        raise NetcompressError(f"--threads {args.threads}: must be at least 1")
    data = load_data(args.data, batch_size=args.batch_size, data_dir=args.data_dir)
    model = load_model(args.model, data, trust_python=args.trust_python)
    file = args.model if Path(args.model).is_file() else None
    m = measure(model, data, file=file, latency=not args.no_latency, threads=args.threads)
    _print_metrics(m, args.json)
    return 0


def cmd_unpack(args) -> int:
    check_output_file(args.out)
    model = unpack(args.archive)
    save(model, args.out)
    print(f"saved {args.out}")
    return 0


def cmd_inspect(args) -> int:
    info = inspect(args.archive)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0


def cmd_run(args) -> int:
    res = run_recipe(args.recipe, out=args.out, overrides=args.set or [], resume=args.resume,
                     progress=None if not args.quiet else False, trust_python=args.trust_python)
    if is_main():
        print(markdown_table(summary_rows(res.entries)))
        print(f"report: {res.out / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netcompress", description="Compress neural networks and measure the result.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe (no argument: the built-in offline default)")
    r.add_argument("recipe", nargs="?", default=None, help="a recipe YAML file")
    r.add_argument("--out", default=None, help="run directory (default runs/<recipe name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. train.epochs=2")
    r.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--trust-python", action="store_true",
                   help="allow model files of the run folder (on --resume) that name python code")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("measure", help="accuracy, parameters, MACs, bytes, latency of a model")
    m.add_argument("model", help="a saved model file (.pt, .ncz) or a zoo name")
    m.add_argument("--data", required=True, help="dataset name (see `netcompress list`), e.g. mnist-5k")
    m.add_argument("--data-dir", default=None, help="where online datasets are cached")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--trust-python", action="store_true", help="allow model files that name python code")
    m.add_argument("--json", action="store_true")
    m.add_argument("--threads", type=int, default=1, help="CPU threads for latency (>= 1)")
    m.add_argument("--no-latency", action="store_true")
    m.set_defaults(func=cmd_measure)

    u = sub.add_parser("unpack", help="rebuild the model in a .ncz archive and save it as a model file")
    u.add_argument("archive")
    u.add_argument("--out", required=True, help="model file to write (.pt)")
    u.set_defaults(func=cmd_unpack)

    i = sub.add_parser("inspect", help="per-layer table of a .ncz archive: params, nonzeros, bits/weight, entropy bound")
    i.add_argument("archive")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    ls = sub.add_parser("list", help="models, datasets, stage kinds, criteria")
    ls.set_defaults(func=cmd_list)
    add_stage_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        # a command's models, data order and results are a function of its seed alone (`--seed`, else 0)
        with forked_rng(getattr(args, "seed", None) or 0, cuda=False):
            return int(args.func(args) or 0)
    except ValidationError as e:  # a config a command built from its flags
        if debug:
            raise
        print(f"netcompress: error: {format_validation_error(e, argv[0] if argv else 'netcompress')}", file=sys.stderr)
        return 2
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
