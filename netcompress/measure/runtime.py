"""Run and time a model inside the deployment runtime that ships it: ONNX Runtime or ExecuTorch.

`onnx_program(model, example)` lowers a model with `torch.onnx.export(dynamo=True)` (torch.export,
then ONNX opset 18+, weights inlined: one self-contained file); `pte_program(model, example)` lowers
it with `torch.export` and ExecuTorch's `to_edge_transform_and_lower` to the XNNPACK delegate.
`OrtModule` / `PteModule` wrap the serialized program as an `nn.Module` whose forward calls the
runtime (ONNX Runtime `InferenceSession`, ExecuTorch `executorch.runtime`), so `measure`,
`evaluate` and `latency_ms` work on them unchanged and time the runtime itself.

Example inputs may be a tensor, a tuple of tensors or a dict of named tensors (Hugging Face
`input_ids`); the batch dimension is dynamic in ONNX; ExecuTorch gets one static method per
batch size (see `pte_program`). ExecuTorch's thread pool is process-wide: `PteModule` resets it to its own `threads`
before each call (`_unsafe_reset_threadpool`, the only thread control its Python runtime offers).

Example:
    ort = OrtModule(onnx_program(model, x), threads=1)
    runtime_latency_ms(ort, x, batch_size=1)
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.core.optional import need
from netcompress.measure.metrics import median_ms

Inputs = Any  # torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def split_inputs(example: Inputs) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """(args, kwargs) of an example: a tensor, a tuple/list of tensors, or a dict of named tensors."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example), {}
    if isinstance(example, dict) and all(isinstance(t, torch.Tensor) for t in example.values()):
        return (), dict(example)
    raise NetcompressError(f"example inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(example).__name__}")


def input_names(example: Inputs) -> list[str]:
    args, kwargs = split_inputs(example)
    if kwargs:
        return list(kwargs)
    return ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]


def at_batch(example: Inputs, n: int) -> Inputs:
    """The example with batch size `n` (its first sample repeated, or its first `n` samples)."""
    def one(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        if t.shape[0] >= n:
            return t[:n].contiguous()
        return t[:1].expand(n, *t.shape[1:]).contiguous()

    args, kwargs = split_inputs(example)
    if kwargs:
        return {k: one(v) for k, v in kwargs.items()}
    return one(args[0]) if len(args) == 1 and isinstance(example, torch.Tensor) else tuple(one(a) for a in args)


def first_output(y: Any) -> torch.Tensor:
    """The prediction tensor of a model output: a tensor, `.logits`, a dict's 'logits', or the first element."""
    if isinstance(y, torch.Tensor):
        return y
    if hasattr(y, "logits") and isinstance(y.logits, torch.Tensor):
        return y.logits
    if isinstance(y, dict):
        return first_output(y["logits"] if "logits" in y else next(iter(y.values())))
    if isinstance(y, (tuple, list)) and y:
        return first_output(y[0])
    raise NetcompressError(f"model output of type {type(y).__name__} holds no tensor")


class _Logits(nn.Module):
    """Wraps a model so the exported graph returns the prediction tensor only (with `all_outputs`,
    every tensor of the tuple the model returns). Named (dict) inputs become positional graph
    inputs in the dict's order (`names`): torch.export of keyword inputs leaves a guard node that
    ONNX translation cannot run."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None, all_outputs: bool = False) -> None:
        super().__init__()
        self.model = model
        self.names = list(names) if names else None
        self.all_outputs = all_outputs

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.names:
            args, kwargs = (), dict(zip(self.names, args))
        out = self.model(*args, **kwargs)
        return tuple(out) if self.all_outputs else first_output(out)


def positional(model: "_Logits", example: Inputs) -> tuple[torch.Tensor, ...]:
    """The example as positional inputs of `model` (setting its `names` for a dict example)."""
    args, kwargs = split_inputs(example)
    if kwargs:
        model.names = list(kwargs)
        return tuple(kwargs.values())
    return args


def _dynamic_shapes(example: Inputs) -> Any:
    batch = torch.export.Dim("batch", min=1)
    args, kwargs = split_inputs(example)
    spec = lambda t: {0: batch} if t.ndim >= 1 else None  # noqa: E731
    if kwargs:
        return {"kwargs": {k: spec(v) for k, v in kwargs.items()}}
    return {"args": tuple(spec(a) for a in args)}


def _op_of(msg: str) -> str | None:
    m = re.search(r"op='([A-Za-z0-9_.]+)'", msg) or re.search(r"target=torch\.ops\.([A-Za-z0-9_.]+)", msg) \
        or re.search(r"((?:aten|prims)[:.]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", msg)
    return m.group(1) if m else None


def _module_of(ep: torch.export.ExportedProgram, op: str) -> str | None:
    """'name (Type)' of the module whose forward called `op`, from the graph's nn_module_stack."""
    base = op.split(".")[1] if op.count(".") >= 1 and op.split(".")[0] in ("aten", "prims") else op
    for node in ep.graph.nodes:
        if node.op == "call_function" and base in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, typ = list(stack.values())[-1]
                path = re.sub(r"^L\['self'\]\.?", "", str(path))
                path = re.sub(r"^model\.?", "", path)  # the _Logits wrapper
                tname = typ.__name__ if isinstance(typ, type) else str(typ).rsplit(".", 1)[-1].strip("'>")
                return f"{path or '(root)'} ({tname})"
    return None


def first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    for line in text.splitlines():
        if "No ONNX function found" in line or "DispatchError" in line:
            return line.split(">: ", 1)[-1][:200]
    return text.splitlines()[0][:200] if text else type(e).__name__


def locate_failure(model: nn.Module, example: Inputs, attempt: Callable[[nn.Module, tuple, dict], Any]) -> str | None:
    """The qualified name of the deepest submodule for which `attempt(module, args, kwargs)` fails alone.

    Every submodule's inputs are captured in one eager forward pass; submodules are retried from
    the leaves up, so the name points at the layer that holds the unsupported op.
    """
    seen: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue
        def pre(m, args, kwargs, name=name):
            if name not in seen and all(isinstance(a, torch.Tensor) for a in args) and args:
                seen[name] = (tuple(a.detach() for a in args), dict(kwargs))
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        args, kwargs = split_inputs(example)
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    for name in sorted(seen, key=lambda n: -n.count(".")):
        try:
            attempt(mods[name], *seen[name])
        except Exception:
            return name
    return None


def _export(model: "_Logits", example: Inputs, what: str) -> torch.export.ExportedProgram:
    args = positional(model, example)
    try:
        return torch.export.export(model, args, dynamic_shapes=_dynamic_shapes(args))
    except Exception as e:  # retry with a static batch: some graphs specialise the batch size
        try:
            return torch.export.export(model, args)
        except Exception:
            pass
        _raise_export_error(model, example, e, what)


def _raise_export_error(model: nn.Module, example: Inputs, e: BaseException, what: str) -> None:
    inner = model.model if isinstance(model, _Logits) else model
    where = locate_failure(inner, example, lambda m, a, k: torch.export.export(m, a, k))
    op = _op_of(str(e))
    first = first_line(e)
    raise NetcompressError(f"{what}: cannot export {type(inner).__name__}"
                           + (f": module {where!r} ({type(dict(inner.named_modules())[where]).__name__})" if where else "")
                           + (f", op {op}" if op else "") + f" ({type(e).__name__}: {first})") from None


def onnx_program(model: nn.Module, example: Inputs, opset: int | None = None, all_outputs: bool = False) -> bytes:
    """The model as one self-contained ONNX file (bytes); the prediction tensor is output 'output'
    (with `all_outputs`, every tensor of the tuple the model returns is an output, in order)."""
    import onnx  # noqa: F401  (a clear ImportError before the long export)

    m = _Logits(copy.deepcopy(model).cpu().eval(), all_outputs=all_outputs)
    example = at_batch(example, 2)  # batch 2: a batch of 1 would be specialised as a constant
    ep = _export(m, example, "onnx")

    def translate(program: torch.export.ExportedProgram):
        return torch.onnx.export(program, (), kwargs=None, dynamo=True, verbose=False, external_data=False,
                                 input_names=None, output_names=None if all_outputs else ["output"],
                                 opset_version=opset)
    try:
        try:
            prog = translate(ep)
        except Exception:
            # torch.onnx decomposes attention with other output strides than the export recorded, so a
            # reshape it lowered to a view fails (timm Swin, MaxViT, BEiT: "Cannot view a tensor");
            # decomposed to core ATen first, the strides agree
            prog = translate(ep.run_decompositions(torch.export.default_decompositions()))
    except Exception as e:
        op = _op_of(str(e)) or _op_of(str(e.__cause__ or ""))
        where = _module_of(ep, op) if op else None
        raise NetcompressError(f"onnx: cannot translate {type(model).__name__} to ONNX"
                               + (f": module {where}" if where else "") + (f", op {op}" if op else "")
                               + f" ({type(e).__name__}: {first_line(e)})") from None
    proto = prog.model_proto
    names = input_names(example)
    graph_inputs = [i.name for i in proto.graph.input]
    if len(graph_inputs) != len(names):
        raise NetcompressError(f"onnx: the graph takes {len(graph_inputs)} inputs, the example has {len(names)}")
    for old, new in zip(graph_inputs, names):  # the runtime is fed by these names
        if old != new:
            rename_input(proto, old, new)
    return proto.SerializeToString()


def rename_input(proto, old: str, new: str) -> None:
    for i in proto.graph.input:
        if i.name == old:
            i.name = new
    for node in proto.graph.node:
        for k, n in enumerate(node.input):
            if n == old:
                node.input[k] = new


def pte_program(model: nn.Module | dict[str, tuple[nn.Module, Inputs]], example: Inputs | None = None,
                batches: Sequence[int] = (1, 64)) -> bytes:
    """The model as an ExecuTorch program (bytes) lowered to the XNNPACK delegate.

    ExecuTorch plans memory for static shapes (its bounded dynamic batch was capped at 15 samples
    here whatever bound was asked), so the program holds one method per batch size, named
    `b1`, `b64`, ...; `PteModule` picks the method of the batch size and pads other sizes.
    `model` may be a dict `{prefix: (module, example)}` for several graphs in one program (an
    early-exit model's stages, methods `PREFIX_b1`, ...). PT2E-converted graphs are fine.
    """
    need("executorch", "deploy", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    items = model if isinstance(model, dict) else {"": (model, example)}
    eps = {}
    for prefix, (mod, ex) in items.items():
        if isinstance(mod, torch.fx.GraphModule):  # a PT2E graph takes the inputs positionally
            ex = tuple(split_inputs(ex)[1].values()) or ex
        else:
            mod = copy.deepcopy(mod).cpu().eval()
        for n in batches:
            wrapped = _Logits(mod)
            args = positional(wrapped, at_batch(ex, n))
            try:
                ep = torch.export.export(wrapped, args)
            except Exception as e:
                _raise_export_error(wrapped, at_batch(ex, n), e, "executorch")
            eps[f"{prefix}_b{n}" if prefix else f"b{n}"] = ep
    try:
        edge = to_edge_transform_and_lower(eps, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch().buffer
    except Exception as e:
        op = _op_of(str(e))
        where = next((w for w in (_module_of(ep, op) for ep in eps.values()) if w), None) if op else None
        raise NetcompressError(f"executorch: cannot lower {type(model).__name__}"
                               + (f": module {where}" if where else "") + (f", op {op}" if op else "")
                               + f" ({type(e).__name__}: {first_line(e)})") from None


class OrtModule(nn.Module):
    """An ONNX program run by ONNX Runtime (CPU) behind an `nn.Module` forward.

    Args:
        program: the serialized ONNX model (bytes).
        threads: ONNX Runtime intra-op threads (inter-op 1, sequential execution).
        optimization: ONNX Runtime graph optimisation level: 'all', 'extended', 'basic' or 'none'.
    """

    def __init__(self, program: bytes, threads: int = 1, optimization: str = "all") -> None:
        super().__init__()
        import onnxruntime as ort

        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = levels[optimization]
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(program, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise NetcompressError(f"onnxruntime cannot load the program ({type(e).__name__}: {str(e).strip()[:200]})") from None
        self.program = program
        self.threads = threads
        self.names = [i.name for i in self.session.get_inputs()]
        self.runtime = "onnxruntime"
        self.eval()

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.outputs(*args, **kwargs)[0]

    def outputs(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the program, in order (`forward` returns the first)."""
        feed = dict(kwargs) if kwargs else dict(zip(self.names, args))
        out = self.session.run(None, {k: v.detach().cpu().numpy() for k, v in feed.items()})
        return [torch.from_numpy(np.asarray(o)) for o in out]

    def __deepcopy__(self, memo) -> "OrtModule":  # sessions cannot be copied; a copy reloads the program
        return type(self)(self.program, self.threads)


class PteModule(nn.Module):
    """An ExecuTorch program run by the ExecuTorch runtime behind an `nn.Module` forward.

    Args:
        program: the serialized `.pte` program (bytes) written by `pte_program`.
        threads: XNNPACK thread pool size used for each call.
        prefix: the graph to call (early-exit stages: 'stage0', ...); '' for a plain model.
    """

    def __init__(self, program: bytes, threads: int = 1, prefix: str = "") -> None:
        super().__init__()
        need("executorch", "deploy", "running a .pte program")
        from executorch.runtime import Runtime

        try:
            self._program = Runtime.get().load_program(program)
            self.methods = {name: self._program.load_method(name) for name in self._program.method_names}
        except Exception as e:
            raise NetcompressError(f"executorch cannot load the program ({type(e).__name__}: {str(e).strip()[:200]})") from None
        self.program = program
        self.threads = threads
        self.prefix = prefix
        self.runtime = "executorch"
        self.eval()
        if not self.sizes(prefix):
            raise NetcompressError(f"executorch program has no graph {prefix or 'b1'!r}; methods: {', '.join(sorted(self.methods))}")

    def sizes(self, prefix: str) -> list[int]:
        """The batch sizes the program has a method for, for graph `prefix`."""
        head = f"{prefix}_b" if prefix else "b"
        return sorted(int(n[len(head):]) for n in self.methods if n.startswith(head) and n[len(head):].isdigit())

    def call(self, prefix: str, *args: torch.Tensor) -> torch.Tensor:
        """Run graph `prefix` on a batch of any size (padded up to a planned size, or chunked)."""
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

        if _threadpool_get_thread_count() != self.threads:
            _unsafe_reset_threadpool(self.threads)
        sizes = self.sizes(prefix)
        n = args[0].shape[0]
        name = lambda b: f"{prefix}_b{b}" if prefix else f"b{b}"  # noqa: E731
        if n in sizes:
            return self.methods[name(n)].execute([a.detach().cpu().contiguous() for a in args])[0]
        size = next((b for b in sizes if b >= n), sizes[-1])
        outs = []
        for s in range(0, n, size):
            part = [a[s:s + size] for a in args]
            k = part[0].shape[0]
            if k < size:
                part = [torch.cat([p, p[:1].expand(size - k, *p.shape[1:])]) for p in part]
            outs.append(self.methods[name(size)].execute([p.detach().cpu().contiguous() for p in part])[0][:k])
        return torch.cat(outs)

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.call(self.prefix, *(tuple(kwargs.values()) if kwargs else args))

    def __deepcopy__(self, memo) -> "PteModule":
        return type(self)(self.program, self.threads, self.prefix)


def runtime_module(program: bytes, fmt: str, threads: int = 1) -> nn.Module:
    """`OrtModule` for format 'onnx', `PteModule` for 'executorch'."""
    if fmt == "onnx":
        return OrtModule(program, threads)
    if fmt == "executorch":
        return PteModule(program, threads)
    raise NetcompressError(f"unknown export format {fmt!r}; valid: onnx, executorch")


def runtime_latency_ms(module: nn.Module, example: Inputs, batch_size: int = 1, threads: int = 1,
                       min_run_time: float = 0.2) -> float:
    """Median latency (ms) of one call at `batch_size`: `median_ms` after a warm-up call.

    Works for eager modules and for runtime modules (whose own thread setting is used).
    """
    args, kwargs = split_inputs(at_batch(example, batch_size))
    with eval_mode(module), torch.inference_mode():
        module(*args, **kwargs)  # warm-up: first-call allocations and kernel selection
        return median_ms(lambda: module(*args, **kwargs), threads, min_run_time)


def compare_outputs(reference: nn.Module, candidate: nn.Module, inputs: Sequence[Inputs]) -> dict[str, float]:
    """Max |difference| of the prediction tensors, the reference's max |value|, top-1 agreement, and
    top-1 agreement where a different choice on a near tie counts as agreeing (`top1_within_diff`: the
    reference's logit of the runtime's choice is within twice that row's largest difference of its
    maximum; for untrained or saturated models whose logits are nearly equal)."""
    diff, scale, agree, near, n = 0.0, 0.0, 0, 0, 0
    with eval_mode(reference), eval_mode(candidate), torch.no_grad():
        for x in inputs:
            args, kwargs = split_inputs(x)
            a = first_output(reference(*args, **kwargs)).float()
            b = first_output(candidate(*args, **kwargs)).float()
            if a.shape != b.shape:
                raise NetcompressError(f"exported output shape {tuple(b.shape)} differs from the model's {tuple(a.shape)}")
            diff = max(diff, float((a - b).abs().max()))
            scale = max(scale, float(a.abs().max()))
            if a.ndim >= 2:
                a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
                same = a2.argmax(-1) == b2.argmax(-1)
                gap = a2.max(-1).values - a2.gather(1, b2.argmax(-1, keepdim=True)).squeeze(1)
                agree += int(same.sum())
                near += int((same | (gap <= 2 * (a2 - b2).abs().max(-1).values)).sum())
                n += a2.shape[0]
    return {"max_abs_diff": diff, "max_abs_ref": scale, "top1_agreement": agree / n if n else 1.0,
            "top1_within_diff": near / n if n else 1.0, "samples": n}
