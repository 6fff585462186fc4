"""CLI commands `netcompress pack`, `unpack` and `inspect`."""
from __future__ import annotations

import json


def cmd_pack(args) -> int:
    from netcompress.archive.format import format_table, inspect, pack
    from netcompress.cli import load_model

    model = load_model(args)
    pack(model, args.out, coding=args.coding)
    print(format_table(inspect(args.out)))
    print(f"saved {args.out}")
    return 0


def cmd_unpack(args) -> int:
    from netcompress.archive.format import unpack
    from netcompress.cli import save_output

    model = unpack(args.archive)
    save_output(model, args.out)
    print(f"saved {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from netcompress.archive.format import format_table, inspect

    info = inspect(args.archive)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0


def add_commands(sub) -> None:
    from netcompress.cli import add_model_args

    p = sub.add_parser("pack", help="write a model as a compressed .ncz archive (sparse + codebook + Huffman)")
    add_model_args(p)
    p.add_argument("--out", required=True, help="the .ncz file to write")
    p.add_argument("--coding", default="huffman", choices=["huffman", "fixed"])
    p.set_defaults(func=cmd_pack)

    u = sub.add_parser("unpack", help="rebuild the model in a .ncz archive and save it as a model file")
    u.add_argument("archive")
    u.add_argument("--out", required=True, help="model file to write (.pt)")
    u.set_defaults(func=cmd_unpack)

    i = sub.add_parser("inspect", help="per-layer table of a .ncz archive: params, nonzeros, bits/weight, entropy bound")
    i.add_argument("archive")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)
