"""CLI command `netcompress export MODEL --format onnx|executorch [--int8 --data D] --out F`.

A thin door: flags are the fields of `ExportConfig` (same defaults), and the command calls the
same handler as the recipe stage (`run_export`) with a one-off stage context.
"""
from __future__ import annotations

import json
from pathlib import Path


def cmd_export(args) -> int:
    import tempfile

    from netcompress.cli import load_data, load_model
    from netcompress.core.errors import NetcompressError
    from netcompress.export.api import SUFFIX
    from netcompress.export.stages import ExportConfig, run_export
    from netcompress.models.io import atomic_write
    from netcompress.recipe.stages import StageContext
    from netcompress.train.loop import TrainConfig

    fields = {k: getattr(args, k) for k in ExportConfig.model_fields if getattr(args, k, None) is not None}
    cfg = ExportConfig.from_dict(fields, "export")
    if args.data is None:
        raise NetcompressError("export needs --data: the export is checked on its held-out inputs (and int8 calibrated on its training inputs)")
    out = Path(args.out)
    if out.suffix != SUFFIX[cfg.format] and out.suffix != ".zip":
        raise NetcompressError(f"--out {out}: {cfg.format} exports are {SUFFIX[cfg.format]} files")
    data = load_data(args)
    model = load_model(args, data)
    with tempfile.TemporaryDirectory(prefix="nc-export-") as d:
        ctx = StageContext(data=data, train=TrainConfig(), seed=0, out_dir=Path(d), name="export")
        res = run_export(ctx, model, cfg)
        blob = res.file.read_bytes()
        atomic_write(out, lambda f: f.write(blob))
    info = dict(res.extra["export"], path=str(out))
    print(json.dumps(info, indent=1) if args.json else
          f"saved {out} ({info['bytes']:,} bytes, gzip {info['bytes_gzip']:,}); check: max |diff| "
          f"{info['check']['max_abs_diff']:.3g} <= {info['check']['tolerance']:.3g}, top-1 agreement "
          f"{100 * info['check']['top1_agreement']:.1f} % on {info['check']['samples']} test inputs"
          + (f"; {info['runtime']} {info['latency']['runtime_ms_b1']:.3f} ms vs eager {info['latency']['eager_ms_b1']:.3f} ms (batch 1)"
             if info["latency"] else ""))
    return 0


def add_commands(sub) -> None:
    import argparse

    from netcompress.cli import add_data_args, add_model_args
    from netcompress.export.stages import ExportConfig

    p = sub.add_parser("export", help="export a model for ONNX Runtime or ExecuTorch (fp32 or int8), checked on real inputs")
    add_model_args(p)
    add_data_args(p, required=False)
    p.set_defaults(data=None)
    for name, f in ExportConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if f.annotation is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{f.description} (default {f.default})")
        elif name == "format":
            p.add_argument(flag, choices=["onnx", "executorch"], default=None, help=f"{f.description} (default {f.default})")
        else:
            p.add_argument(flag, type=type(f.default), default=None, help=f"{f.description} (default {f.default})")
    p.add_argument("--out", required=True, help="the file to write (.onnx or .pte)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)
