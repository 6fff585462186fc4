"""`export(model, format=...)`: write a model for a deployment runtime, checked before it is reported.

Formats: 'onnx' (ONNX Runtime; `int8=True`: static QDQ int8, per-channel weights) and
'executorch' (`.pte`, XNNPACK delegate; `int8=True`: PT2E with the XNNPACK quantizer). Every export
is CHECKED: the program is loaded in its runtime and run on real inputs next to the PyTorch model
before anything is written. It passes when

* fp32: max |runtime - PyTorch| <= `fp32_tolerance` x max(1, max |PyTorch output|) (default 1e-4)
  and top-1 agreement >= `min_top1` (default 0.99; a near-tie may flip);
* int8: max |difference| <= `int8_tolerance` x max |PyTorch output| (default 0.25) and top-1
  agreement >= `min_top1_int8` (default 0.9).

A failed check or export raises one `NetcompressError` naming the module / op; the file is written
through a temporary file and renamed, so a failure leaves no half file. Early-exit models export
as one graph per stage with the exit policy in Python for batches, and (ONNX) one graph with the
policy inside for a single sample (see `netcompress.export.early_exit`); they are checked exit by
exit, and int8 (ONNX) quantizes each stage on the inputs it sees.

Example:
    res = export(model, "onnx", example_inputs=data.example, out="model.onnx")
    res.check["top1_agreement"], res.latency["runtime_ms_b1"]
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.measure.runtime import (Inputs, at_batch, compare_outputs, onnx_program, pte_program, runtime_latency_ms,
                                         runtime_module, split_inputs)

Format = Literal["onnx", "executorch"]
SUFFIX = {"onnx": ".onnx", "executorch": ".pte"}


@dataclass
class ExportResult:
    """What `export` wrote and measured.

    Attributes:
        path: the written file (None when `out` was None).
        format, int8: what was exported.
        bytes: size of the program; bytes_gzip: the same gzip-compressed (level 9), which is what
            unstructured sparsity buys in a runtime without sparse kernels.
        check: max_abs_diff, max_abs_ref, top1_agreement, top1_within_diff, samples, tolerance, passed.
        latency: runtime_ms_b1/b64 and eager_ms_b1/b64 at `threads` (when measured).
        module: the program loaded in its runtime, as an nn.Module.
    """

    path: Path | None
    format: str
    int8: bool
    bytes: int
    bytes_gzip: int
    check: dict[str, Any]
    latency: dict[str, float] = field(default_factory=dict)
    module: nn.Module | None = None
    early_exit: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "format": self.format, "int8": self.int8,
                "bytes": self.bytes, "bytes_gzip": self.bytes_gzip, "check": self.check, "latency": self.latency,
                "early_exit": self.early_exit,
                "runtime": "onnxruntime" if self.format == "onnx" else "executorch"}


def _is_multi_exit(model: nn.Module) -> bool:
    from netcompress.dynamic.base import MultiExitBase

    return isinstance(model, MultiExitBase)


class _EveryExit(nn.Module):
    """A multi-exit model's logits of every exit for every sample, stacked: [exits, batch, classes]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.model.all_exits(x))


def _check_batches(check_inputs: Any, example: Inputs) -> list[Inputs]:
    if check_inputs is None:
        return [example]
    if isinstance(check_inputs, (torch.Tensor, dict)):
        return [check_inputs]
    out = []
    for item in check_inputs:
        out.append(item[0] if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (torch.Tensor, dict)) else item)
    return out or [example]


def lower(model: nn.Module, fmt: Format, example: Inputs, int8: bool = False, calibration: Any = None) -> bytes:
    """The serialized program of `model` for `fmt` (no check, nothing written)."""
    if fmt not in SUFFIX:
        raise NetcompressError(f"export format {fmt!r} unknown; valid: onnx, executorch")
    if _is_multi_exit(model):
        from netcompress.export.early_exit import export_early_exit

        return export_early_exit(model, example, fmt, int8, calibration)
    if int8:
        if calibration is None:
            raise NetcompressError("export --int8 needs calibration data (real training inputs)")
        from netcompress.quantize.deploy import onnx_int8, pte_int8

        return onnx_int8(model, calibration, example) if fmt == "onnx" else pte_int8(model, calibration, example)
    return onnx_program(model, example) if fmt == "onnx" else pte_program(model, example)


def load_program(program: bytes, fmt: Format, threads: int = 1) -> nn.Module:
    """The program loaded in its runtime (an early-exit zip gives an `EarlyExitRuntime`)."""
    if program[:2] == b"PK":
        from netcompress.export.early_exit import EarlyExitRuntime

        return EarlyExitRuntime(program, threads)
    return runtime_module(program, fmt, threads)


def load_exported(path: str | os.PathLike, threads: int = 1) -> nn.Module:
    """Load a file written by `export` (.onnx, .pte, or an early-exit zip) in its runtime."""
    p = Path(path)
    if not p.is_file():
        raise NetcompressError(f"exported file {p} does not exist")
    data = p.read_bytes()
    if data[:2] == b"PK":
        return load_program(data, "onnx", threads)
    fmt = "executorch" if p.suffix == ".pte" else "onnx"
    return load_program(data, fmt, threads)


def check_export(model: nn.Module, runtime: nn.Module, inputs: list[Inputs], int8: bool,
                 fp32_tolerance: float = 1e-4, int8_tolerance: float = 0.25,
                 min_top1: float = 0.99, min_top1_int8: float = 0.9) -> dict[str, Any]:
    """Compare the runtime with the PyTorch model on `inputs`; raises NetcompressError when it fails.

    An early-exit model is compared exit by exit (every exit's logits for every input, so a sample
    whose confidence sits on the threshold cannot swap one head's logits for another's);
    `same_exit` reports the share of samples that leave at the same exit."""
    try:
        if _is_multi_exit(model) and _is_multi_exit(runtime):
            from netcompress.dynamic.base import early_exit_predict

            c = compare_outputs(_EveryExit(model), _EveryExit(runtime), inputs)
            if model.thresholds is not None:
                same = [early_exit_predict(model, x)[1] == early_exit_predict(runtime, x)[1] for x in inputs]
                c["same_exit"] = float(torch.cat(same).float().mean())
        else:
            c = compare_outputs(model, runtime, inputs)
    except NetcompressError:
        raise
    except Exception as e:
        raise NetcompressError(f"export check: the runtime failed on real inputs ({type(e).__name__}: {str(e).strip()[:200]})") from None
    tol = int8_tolerance * c["max_abs_ref"] if int8 else fp32_tolerance * max(1.0, c["max_abs_ref"])
    top1 = min_top1_int8 if int8 else min_top1
    # fp32: a different choice on a tie the runtime's own rounding decides is not a failure; int8 must
    # keep the choices themselves
    agreement = c["top1_agreement"] if int8 else c.get("top1_within_diff", c["top1_agreement"])
    c.update(tolerance=tol, min_top1=top1, passed=c["max_abs_diff"] <= tol and agreement >= top1)
    if not c["passed"]:
        raise NetcompressError(
            f"export check failed for {type(model).__name__} ({'int8' if int8 else 'fp32'}): max |difference| "
            f"{c['max_abs_diff']:.3g} (tolerance {tol:.3g}), top-1 agreement {100 * agreement:.1f} % "
            f"(needed {100 * top1:.0f} %) on {c['samples']} real inputs")
    return c


def export(model: nn.Module, format: Format = "onnx", example_inputs: Inputs | None = None, calibration: Any = None,
           int8: bool = False, out: str | os.PathLike | None = None, check_inputs: Any = None, threads: int = 1,
           measure_latency: bool = False, min_run_time: float = 0.2, fp32_tolerance: float = 1e-4,
           int8_tolerance: float = 0.25, min_top1: float = 0.99, min_top1_int8: float = 0.9) -> ExportResult:
    """Export `model` for ONNX Runtime or ExecuTorch, check it on real inputs, then write `out`.

    Args:
        model: any model netcompress produces or loads (not modified); dict inputs are fine.
        format: 'onnx' or 'executorch'.
        example_inputs: a tensor, tuple or dict of tensors with a batch dimension.
        calibration: training inputs for int8 activation ranges (tensor or (x, y) batches).
        int8: static int8 (ONNX QDQ / PT2E XNNPACK); needs `calibration`.
        out: the file to write (None: nothing is written).
        check_inputs: real inputs the export is checked on (default: `example_inputs`).
        threads: the runtime's thread count (latency, and the returned module).
        measure_latency: time the runtime and PyTorch eager at batch 1 and 64.
        fp32_tolerance, int8_tolerance, min_top1, min_top1_int8: the check's thresholds (module docstring).
    """
    if example_inputs is None:
        if calibration is None:
            raise NetcompressError("export needs example_inputs (or calibration data to take them from)")
        from netcompress.quantize.deploy import calibration_inputs

        example_inputs = calibration_inputs(calibration)[0]
    split_inputs(example_inputs)
    # eval mode for the trace, the check and eager latency; the caller's per-module flags come back after
    with eval_mode(model):
        program = lower(model, format, example_inputs, int8, calibration)
        runtime = load_program(program, format, threads)
        check = check_export(model, runtime, _check_batches(check_inputs, example_inputs), int8,
                             fp32_tolerance, int8_tolerance, min_top1, min_top1_int8)
        latency: dict[str, float] = {}
        if measure_latency:
            for b in (1, 64):
                latency[f"runtime_ms_b{b}"] = runtime_latency_ms(runtime, example_inputs, b, threads, min_run_time)
                latency[f"eager_ms_b{b}"] = runtime_latency_ms(model, example_inputs, b, threads, min_run_time)
            latency["threads"] = threads
    path = None
    if out is not None:
        from netcompress.models.io import atomic_write

        path = Path(out)
        atomic_write(path, lambda f: f.write(program))
    return ExportResult(path, format, int8, len(program), len(gzip.compress(program, 9)), check, latency, runtime,
                        early_exit=_is_multi_exit(model))


__all__ = ["ExportResult", "SUFFIX", "check_export", "export", "load_exported", "load_program", "lower", "at_batch"]
