"""Real int8 inference on CPU through PyTorch's own quantization backend.

On torch 2.14 the path whose int8 kernels run eagerly on CPU is torch.ao's FX graph mode
(`prepare_fx` / `convert_fx`) with the x86 backend (fbgemm + oneDNN kernels): conv, linear and
their fused ReLU become `torch.ao.nn.quantized` modules that compute in int8. torchao's PT2E flow
also converts, but its output is a float graph with quantize/dequantize ops that only becomes
int8 code after `torch.compile` (Inductor), so it is not used here. Post-training static
quantization: per-channel int8 weights, uint8 activations calibrated on real inputs
(Jacob et al. 2018; Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient
inference: a whitepaper").

The int8 module is an fx GraphModule used for measuring and deployment; the float model it came
from is left unchanged. `save_int8` writes a TorchScript file (what a C++ or Python runtime loads).

Example:
    >>> q = int8_quantize(model, data.calibration(256))     # doctest: +SKIP
    >>> save_int8(q, "model.int8.pt", data.example)          # doctest: +SKIP
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from netcompress.core.errors import NetcompressError


def _batches(calibration) -> list[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        return list(calibration.split(64))
    out = []
    for item in calibration:
        x = item[0] if isinstance(item, (tuple, list)) else item
        out.append(x)
    if not out:
        raise NetcompressError("int8_quantize: no calibration inputs")
    return out


def int8_quantize(model: nn.Module, calibration: torch.Tensor | Iterable, backend: str = "x86") -> nn.Module:
    """Post-training static int8 quantization with PyTorch's FX flow; returns a new module.

    Args:
        model: a float model (not modified).
        calibration: input tensor(s) or (input, target) batches used to observe activation ranges.
        backend: 'x86' (fbgemm + oneDNN) or 'qnnpack' (ARM).
    """
    if backend not in torch.backends.quantized.supported_engines:
        raise NetcompressError(f"int8 backend {backend!r} unavailable; valid: {', '.join(torch.backends.quantized.supported_engines)}")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = _batches(calibration)
    previous_engine = torch.backends.quantized.engine  # global state: restored below
    torch.backends.quantized.engine = backend
    try:
        m = copy.deepcopy(model).cpu().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                prepared = prepare_fx(m, get_default_qconfig_mapping(backend), (batches[0][:1],))
            except Exception as e:  # symbolic tracing failed: data-dependent control flow etc.
                raise NetcompressError(f"int8: cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {str(e)[:200]})") from None
            with torch.no_grad():
                for x in batches:
                    prepared(x)
            q = convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous_engine
    if int8_layers(q) == 0:
        raise NetcompressError("int8: no layer was converted to an int8 kernel")
    return q.eval()


def int8_layers(qmodel: nn.Module) -> int:
    """Number of modules that run int8 kernels (torch.ao.nn.quantized conv/linear and fused variants)."""
    return sum(1 for m in qmodel.modules() if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
               and hasattr(m, "weight") and callable(getattr(m, "weight")))


def int8_params(qmodel: nn.Module) -> int:
    """Weights held by the int8 kernels (packed, so `model.parameters()` does not list them) plus
    any remaining float parameters."""
    n = sum(p.numel() for p in qmodel.parameters())
    for m in qmodel.modules():
        w = getattr(m, "weight", None)
        if callable(w) and type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
            n += w().numel()
            b = getattr(m, "bias", None)
            b = b() if callable(b) else b
            n += b.numel() if isinstance(b, torch.Tensor) else 0
    return n


def save_int8(qmodel: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Write the int8 model as a TorchScript file (atomic); its size is the int8 bytes on disk."""
    from netcompress.models.io import atomic_write

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(qmodel, example[:1])
    def write(f) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(ts, f)

    atomic_write(path, write)
    return Path(path)


def load_int8(path: str | os.PathLike) -> nn.Module:
    """Load a file written by `save_int8` (TorchScript; only load files you created)."""
    p = Path(path)
    if not p.is_file():
        raise NetcompressError(f"int8 file {p} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:
        raise NetcompressError(f"{p}: not a readable int8 TorchScript file ({type(e).__name__})") from None
