"""Recipe stage kind `export`: the current model written for a deployment runtime, checked, and
measured there (accuracy on the held-out test set, latency, file bytes) next to PyTorch eager.

    - export: {format: onnx}                 # ONNX Runtime, fp32
    - export: {format: onnx, int8: true}     # static QDQ int8, calibrated on training data
    - export: {format: executorch}           # .pte, XNNPACK delegate

The stage's entry is measured on the exported program in its runtime (accuracy, latency, bytes of
the file); `extra.export` adds PyTorch eager latency of the same model, the gzip size and the check.
The model handed to the next stage is the float model, unchanged.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from netcompress.core.batch import batch_len, head
from netcompress.core.config import Config
from netcompress.train.stage import StageKind, StageResult


class ExportConfig(Config):
    """`export:` stage, `netcompress export` command and `nc.export` (one set of defaults)."""

    format: Literal["onnx", "executorch"] = Field("onnx", description="onnx (ONNX Runtime) or executorch (.pte, XNNPACK)")
    int8: bool = Field(False, description="static int8: ONNX QDQ (per-channel) or PT2E XNNPACK, calibrated on training data")
    calibration_samples: int = Field(256, ge=1, description="int8: training samples that calibrate activation ranges")
    check_samples: int = Field(256, ge=1, description="held-out test samples the export is checked on")
    threads: int = Field(1, ge=1, description="the runtime's thread count when measured")
    fp32_tolerance: float = Field(1e-4, gt=0, description="fp32 check: max |difference| <= this x max(1, max |output|)")
    int8_tolerance: float = Field(0.25, gt=0, description="int8 check: max |difference| <= this x max |output|")
    min_top1: float = Field(0.99, ge=0, le=1, description="fp32 check: least top-1 agreement with PyTorch")
    min_top1_int8: float = Field(0.9, ge=0, le=1, description="int8 check: least top-1 agreement with PyTorch")
    latency: bool = Field(True, description="time runtime and PyTorch eager at batch 1 and 64")


def check_inputs(data, n: int) -> list:
    """The first `n` held-out test inputs, in batches."""
    out, seen = [], 0
    for x, _ in data.loader("test", batch_size=min(n, 64), shuffle=False):
        if seen >= n:
            break
        x = head(x, n - seen)
        out.append(x)
        seen += batch_len(x)
    return out


def run_export(ctx, model: nn.Module, cfg: ExportConfig):
    """Export, check and measure `model` in its runtime; the float model goes on unchanged."""
    from netcompress.export.api import SUFFIX, export

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    name = "model" + (".int8" if cfg.int8 else "") + SUFFIX[cfg.format]
    res = export(model, cfg.format, example_inputs=ctx.data.example,
                 calibration=ctx.data.calibration(cfg.calibration_samples) if cfg.int8 else None, int8=cfg.int8,
                 out=ctx.out_dir / name, check_inputs=check_inputs(ctx.data, cfg.check_samples), threads=cfg.threads,
                 measure_latency=cfg.latency, fp32_tolerance=cfg.fp32_tolerance, int8_tolerance=cfg.int8_tolerance,
                 min_top1=cfg.min_top1, min_top1_int8=cfg.min_top1_int8)
    return StageResult(model, file=res.path, measure_model=res.module, extra={"export": res.to_dict()})


def summary(extra: dict) -> str:
    """One line for the terminal: file, check and runtime latency beside eager."""
    info = extra["export"]
    c = info["check"]
    line = (f"{info['format']}{' int8' if info['int8'] else ''} ({info['bytes']:,} bytes, gzip {info['bytes_gzip']:,}); check: max |diff| "
            f"{c['max_abs_diff']:.3g} <= {c['tolerance']:.3g}, top-1 agreement {100 * c['top1_agreement']:.1f} % "
            f"on {c['samples']} test inputs")
    if info.get("latency"):
        lat = info["latency"]
        line += f"; {info['runtime']} {lat['runtime_ms_b1']:.3f} ms vs eager {lat['eager_ms_b1']:.3f} ms (batch 1)"
    return line


def register(stages) -> None:
    help = "export for ONNX Runtime or ExecuTorch (fp32 or int8), checked on real inputs and measured in the runtime"
    from netcompress.export.api import SUFFIX

    stages.register("export", StageKind(ExportConfig, run_export, help, summary=summary,
                                        artifact_suffix=lambda cfg: SUFFIX[cfg.format]))
