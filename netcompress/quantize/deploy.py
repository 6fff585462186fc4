"""Real int8 inference on CPU in the runtimes that ship it: ONNX Runtime and ExecuTorch.

Post-training static quantization: per-channel symmetric int8 weights, 8-bit activations
calibrated on real training inputs (Jacob et al. 2018, "Quantization and training of neural
networks for efficient integer-arithmetic-only inference"; Krishnamoorthi 2018, "Quantizing deep
convolutional networks for efficient inference: a whitepaper").

* `onnx_int8`: the model lowered to ONNX (`torch.onnx.export`, dynamo), pre-processed by
  onnxruntime's `quant_pre_process` (shape inference and ONNX Runtime's graph optimisation, which
  folds batch norm and fuses activations, so the quantizer sees conv+relu as one op), then
  `onnxruntime.quantization.quantize_static` in QDQ format: QuantizeLinear / DequantizeLinear
  pairs around every conv and matmul, which ONNX Runtime's CPU provider fuses into integer
  kernels (u8 activations x s8 weights, the VNNI path). Measured on this CPU (AVX512-VNNI,
  resnet18, batch 1, 1 thread): the int8 graph took 28 ms without the pre-processing and 11.7 ms
  with it (fp32: 39 ms); s8 activations (symmetric) or u8 weights
  leave the VNNI path (30 ms). `benchmarks/bench_deploy.py` holds the full comparison.
* `pte_int8`: PT2E (`torch.export`, torchao's `prepare_pt2e` / `convert_pt2e`) with ExecuTorch's
  `XNNPACKQuantizer` (per-channel symmetric weights), lowered to an XNNPACK-delegated `.pte`.

`int8_quantize` returns the int8 program wrapped as an `nn.Module` (`OrtModule` / `PteModule`)
whose forward runs the runtime, so accuracy and latency are measured where the model ships; the
float model is left unchanged. `save_int8` writes the program (`.onnx` / `.pte`) atomically.

Example:
    q = int8_quantize(model, data.calibration(256))
    save_int8(q, "model.int8.onnx")
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Literal

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.optional import need
from netcompress.measure.runtime import (Inputs, OrtModule, PteModule, at_batch, input_names, onnx_program,
                                         pte_program, split_inputs)

Runtime = Literal["onnxruntime", "executorch"]
SUFFIX = {"onnxruntime": ".onnx", "executorch": ".pte"}


def calibration_inputs(calibration: Any) -> list[Inputs]:
    """Input batches of `calibration`: a tensor (split in 64s), or an iterable of inputs or
    (input, target) pairs, each input a tensor, tuple or dict of tensors."""
    if isinstance(calibration, torch.Tensor):
        return list(calibration.split(64))
    out = []
    for item in calibration:
        if isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[1], dict) and isinstance(item[0], (torch.Tensor, dict)):
            item = item[0]
        split_inputs(item)  # validates
        out.append(item)
    if not out:
        raise NetcompressError("int8: no calibration inputs")
    return out


def onnx_int8(model: nn.Module, calibration: Any, example: Inputs | None = None, *, per_channel: bool = True,
              fmt: Literal["qdq", "qoperator"] = "qdq", activations: Literal["u8", "s8"] = "u8",
              preprocess: bool = True, reduce_range: bool = False) -> bytes:
    """Static int8 ONNX (QDQ by default) for ONNX Runtime, calibrated on `calibration`; returns bytes.

    Args:
        model: a float model (not modified).
        calibration: real inputs (see `calibration_inputs`); min/max of every activation is observed.
        example: inputs for the export (default: the first calibration batch).
        per_channel: one weight scale per output channel (else one per tensor).
        fmt: 'qdq' (Q/DQ pairs ONNX Runtime fuses) or 'qoperator' (QLinearConv ... nodes).
        activations: 'u8' (asymmetric, the x86 VNNI path) or 's8' (symmetric).
        preprocess: run `quant_pre_process` first (shape inference + graph optimisation).
        reduce_range: 7-bit weights, for CPUs without VNNI whose u8 x s8 products can saturate.
    """
    return quantize_onnx(model, calibration_inputs(calibration), example, per_channel=per_channel, fmt=fmt,
                         activations=activations, preprocess=preprocess, reduce_range=reduce_range)


def quantize_onnx(model: nn.Module, batches: list[Inputs], example: Inputs | None = None, *, per_channel: bool = True,
                  fmt: Literal["qdq", "qoperator"] = "qdq", activations: Literal["u8", "s8"] = "u8",
                  preprocess: bool = True, reduce_range: bool = False, all_outputs: bool = False) -> bytes:
    """`onnx_int8` on `batches` taken as they are: each one the model's positional inputs (a
    tensor or a tuple of tensors, e.g. an early-exit stage's state) or a dict of named inputs;
    `all_outputs`: every tensor of the tuple the model returns is an output (`onnx_program`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise NetcompressError("int8: no calibration inputs")
    fp32 = onnx_program(model, batches[0] if example is None else example, all_outputs=all_outputs)
    names = input_names(batches[0])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.it, None)
            if x is None:
                return None
            args, kwargs = split_inputs(x)
            feed = kwargs if kwargs else dict(zip(names, args))
            return {k: v.detach().cpu().numpy() for k, v in feed.items()}

    # QDQ quantizes every op it knows (ONNX Runtime's default) except LayerNormalization: its scale
    # is one vector, which per-channel quantization cannot split along the weight axis (onnxruntime
    # warns and falls back per op), and the CPU runtime has no int8 LayerNormalization to run
    ops = [op for op in QDQRegistry if op != "LayerNormalization"] if fmt == "qdq" else None
    with tempfile.TemporaryDirectory(prefix="nc-int8-") as d:
        src, pre, dst = Path(d) / "fp32.onnx", Path(d) / "pre.onnx", Path(d) / "int8.onnx"
        src.write_bytes(fp32)
        if preprocess:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            src = pre
        try:
            quantize_static(str(src), str(dst), Reader(),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
                            op_types_to_quantize=ops, extra_options={"ActivationSymmetric": activations == "s8"})
        except Exception as e:
            raise NetcompressError(f"int8: onnxruntime could not quantize {type(model).__name__} "
                                   f"({type(e).__name__}: {str(e).strip()[:200]})") from None
        return dst.read_bytes()


def pt2e_int8(model: nn.Module, calibration: Any, example: Inputs | None = None) -> torch.fx.GraphModule:
    """PT2E static int8 for XNNPACK: a converted graph with quantize/dequantize ops around each
    conv and linear (per-channel symmetric weights), ready for `pte_program`."""
    need("executorch", "deploy", "ExecuTorch int8 (PT2E, XNNPACK)")
    need("torchao", "deploy", "ExecuTorch int8 (PT2E, XNNPACK)")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from netcompress.measure.runtime import _Logits, _dynamic_shapes, _raise_export_error, positional

    batches = calibration_inputs(calibration)
    ex = at_batch(batches[0] if example is None else example, 2)
    m = _Logits(copy.deepcopy(model).cpu().eval())
    args = positional(m, ex)
    try:
        captured = torch.export.export(m, args, dynamic_shapes=_dynamic_shapes(args)).module()
    except Exception as e:
        _raise_export_error(m, ex, e, "int8 (PT2E)")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in batches:
            a, k = split_inputs(x)
            prepared(*(tuple(k.values()) if k else a))
    return convert_pt2e(prepared)


def pte_int8(model: nn.Module, calibration: Any, example: Inputs | None = None, batches: tuple[int, ...] = (1, 64)) -> bytes:
    """PT2E int8 lowered to an XNNPACK-delegated ExecuTorch program (bytes)."""
    cal = calibration_inputs(calibration)
    q = pt2e_int8(model, cal, example)
    return pte_program(q, cal[0] if example is None else example, batches=batches)


def _count_onnx_int8(program: bytes) -> int:
    import onnx

    g = onnx.load_from_string(program).graph
    dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    direct = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    return sum(1 for n in g.node if n.op_type in direct
               or (n.op_type in {"Conv", "Gemm", "MatMul", "ConvTranspose"} and len(n.input) > 1 and n.input[1] in dq))


def _count_pt2e_int8(q: torch.fx.GraphModule) -> int:
    def from_dq(node: Any) -> bool:
        return isinstance(node, torch.fx.Node) and "dequantize" in str(node.target)

    return sum(1 for n in q.graph.nodes if n.op == "call_function"
               and any(k in str(n.target) for k in ("conv", "linear", "addmm", "mm.default"))
               and len(n.args) > 1 and from_dq(n.args[1]))


def int8_quantize(model: nn.Module, calibration: torch.Tensor | Iterable, runtime: Runtime = "onnxruntime",
                  threads: int = 1, example: Inputs | None = None) -> nn.Module:
    """Post-training static int8; returns the int8 program run by `runtime` as an `nn.Module`.

    Args:
        model: a float model (not modified).
        calibration: input tensor(s) or (input, target) batches used to observe activation ranges.
        runtime: 'onnxruntime' (ONNX QDQ) or 'executorch' (PT2E + XNNPACK `.pte`).
        threads: the runtime's thread count.
        example: export inputs (default: the first calibration batch).
    """
    if runtime == "onnxruntime":
        program = onnx_int8(model, calibration, example)
        q: nn.Module = OrtModule(program, threads)
        q.int8_layers = _count_onnx_int8(program)
    elif runtime == "executorch":
        cal = calibration_inputs(calibration)
        g = pt2e_int8(model, cal, example)
        q = PteModule(pte_program(g, cal[0] if example is None else example), threads)
        q.int8_layers = _count_pt2e_int8(g)
    else:
        raise NetcompressError(f"int8 runtime {runtime!r} unknown; valid: onnxruntime, executorch")
    if q.int8_layers == 0:
        raise NetcompressError(f"int8: no conv or linear layer of {type(model).__name__} was quantized")
    q.float_params = sum(p.numel() for p in model.parameters())
    return q


def int8_layers(qmodel: nn.Module) -> int:
    """Number of conv / linear layers that run int8 kernels in the runtime."""
    n = getattr(qmodel, "int8_layers", None)
    if n is None and isinstance(qmodel, OrtModule):
        n = _count_onnx_int8(qmodel.program)
    if n is None:
        raise NetcompressError(f"{type(qmodel).__name__} is not an int8 program from int8_quantize")
    return int(n)


def int8_params(qmodel: nn.Module) -> int:
    """Weights held by the int8 program: the parameters of the float model it came from."""
    n = getattr(qmodel, "float_params", None)
    if n is None:
        raise NetcompressError(f"{type(qmodel).__name__} is not an int8 program from int8_quantize")
    return int(n)


def save_int8(qmodel: nn.Module, path: str | os.PathLike, example: Any = None) -> Path:
    """Write the int8 program (`.onnx` for ONNX Runtime, `.pte` for ExecuTorch) atomically.

    `example` is accepted for compatibility and unused: the program is already lowered.
    """
    from netcompress.models.io import atomic_write

    program = getattr(qmodel, "program", None)
    if not isinstance(program, bytes):
        raise NetcompressError(f"{type(qmodel).__name__} is not an int8 program from int8_quantize")
    atomic_write(path, lambda f: f.write(program))
    return Path(path)


def load_int8(path: str | os.PathLike, threads: int = 1) -> nn.Module:
    """Load a program written by `save_int8` (`.onnx`: ONNX Runtime; `.pte`: ExecuTorch)."""
    p = Path(path)
    if not p.is_file():
        raise NetcompressError(f"int8 file {p} does not exist")
    data = p.read_bytes()
    if p.suffix == ".pte":
        return PteModule(data, threads)
    if p.suffix == ".onnx":
        return OrtModule(data, threads)
    raise NetcompressError(f"{p}: int8 programs are .onnx (ONNX Runtime) or .pte (ExecuTorch) files")
