"""Metrics of a model.

* MACs: `MacCounter` (torch's `FlopCounterMode`) counts FLOPs of every aten op of one forward
  pass at batch 1; a multiply-accumulate is 2 FLOPs. Dense counting: zeros in a masked weight
  still cost (only physically smaller layers reduce MACs). Torch has no formula for the CPU
  kernel of `scaled_dot_product_attention`; `MacCounter` adds one, so attention scores and their
  weighted sum count on CPU as they do on GPU (every query against every key, causal or not,
  as torch counts its GPU kernels), and it counts `nn.MultiheadAttention` outside its fused fast path.
* bytes: the size of a real file on disk: the model saved with `netcompress.models.save`, or the
  archive / int8 file a stage produced (pass `file=`).
* latency: `torch.utils.benchmark.Timer.blocked_autorange`, median, batch 1 and 64, fixed threads.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from netcompress.core.batch import Batch, call, head, repeat_to, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.models.io import save
from netcompress.train.loop import evaluate


@dataclass
class Metrics:
    """One measurement of a model. `None` means 'not measured' (e.g. no data given)."""

    accuracy: float | None = None
    params: int = 0
    nonzero_params: int = 0
    macs: int = 0
    bytes: int | None = None
    latency_ms_b1: float | None = None
    latency_ms_b64: float | None = None
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metrics":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def __str__(self) -> str:
        acc = f"{100 * self.accuracy:.2f}%" if self.accuracy is not None else "-"
        b = f"{self.bytes / 1024:.1f} KiB" if self.bytes is not None else "-"
        lat = f"{self.latency_ms_b1:.3f} ms" if self.latency_ms_b1 is not None else "-"
        return (f"accuracy {acc} | params {self.params:,} (nonzero {self.nonzero_params:,}) | "
                f"MACs {self.macs:,} | size {b} | latency b1 {lat}")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameters; shared parameters count once."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()).item())
    return total, nonzero


class FrozenParameters:
    """Parameters without requires_grad while counting: a view of a parameter made under no_grad
    (timm PiT's expanded class token, passed between stages) still requires grad but has no
    grad_fn, and torch's module tracker inside FlopCounterMode asserts on such a module input.
    Restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *a: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """FLOPs of fused attention: q.K^T and p.V, every query against every key (grouped-query
    attention: the query heads count, the key / value heads are shared)."""
    b, h, lq, e = query_shape
    s, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * s * (e + ev)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


class MacCounter(FlopCounterMode):
    """`FlopCounterMode` that also counts CPU fused attention; `.macs` = FLOPs // 2.

    While it counts, `nn.MultiheadAttention` / `nn.TransformerEncoderLayer` leave their inference
    fast path (`torch.backends.mha`, restored on exit): its fused ops (`_native_multi_head_attention`,
    `_transformer_encoder_layer_fwd`) have no FLOP formula, so a torchvision ViT's attention and
    whole encoder layers counted 0. The slow path computes the same thing through counted ops."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=_EXTRA_FORMULAS)

    def __enter__(self) -> "MacCounter":
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return super().__enter__()
        except BaseException:
            torch.backends.mha.set_fastpath_enabled(self._fastpath)
            raise

    def __exit__(self, *args: Any) -> None:
        try:
            super().__exit__(*args)
        finally:
            torch.backends.mha.set_fastpath_enabled(self._fastpath)

    @property
    def macs(self) -> int:
        return int(self.get_total_flops() // 2)


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Batch) -> int:
    """Multiply-accumulates of one forward pass of one sample (batch 1); inputs as in `core.batch`."""
    x = head(example_inputs, 1)
    counter = MacCounter()
    with eval_mode(model), FrozenParameters(model), counter:
        call(model, x)
    return counter.macs


@torch.no_grad()
def macs_by_module(model: nn.Module, example_inputs: Batch) -> dict[str, int]:
    """MACs per leaf module with weights (qualified name -> MACs at batch 1)."""
    out: dict[str, int] = {}
    x = head(example_inputs, 1)
    handles = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0 and any(True for _ in mod.parameters(recurse=False)):
            def pre(m, inp, name=name):
                m._nc_counter = MacCounter()
                m._nc_counter.__enter__()

            def post(m, inp, outp, name=name):
                m._nc_counter.__exit__(None, None, None)
                out[name] = out.get(name, 0) + m._nc_counter.macs
                del m._nc_counter

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with eval_mode(model):
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    return out


def median_ms(fn: Callable[[], Any], threads: int = 1, min_run_time: float = 0.2) -> float:
    """Median milliseconds of one `fn()` call with `threads` CPU threads (`torch.utils.benchmark`'s
    `blocked_autorange`: blocks of calls until `min_run_time` seconds, median over the blocks).

    The first import of `torch.utils.benchmark` pulls in `torch.utils.cpp_extension`, which on a CUDA
    build of torch without a CUDA runtime logs where it found CUDA_HOME: a fact about the machine, not
    about the measurement. That one logger is raised to ERROR for the import and put back after."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        log.setLevel(level)
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return t.blocked_autorange(min_run_time=min_run_time).median * 1e3


def latency_ms(model: nn.Module, example_inputs: Batch, batch_size: int = 1, threads: int = 1,
               min_run_time: float = 0.2) -> float:
    """Median CPU latency in milliseconds of one forward pass at `batch_size` (`median_ms`)."""
    x = repeat_to(to_device(example_inputs, "cpu"), batch_size)
    with eval_mode(model), torch.inference_mode():
        return median_ms(lambda: call(model, x), threads, min_run_time)


def file_bytes(path: str | os.PathLike) -> int:
    return Path(path).stat().st_size


def measure(
    model: nn.Module,
    data=None,
    example_inputs: Batch | None = None,
    file: str | os.PathLike | None = None,
    latency: bool = True,
    threads: int = 1,
    min_run_time: float = 0.2,
) -> Metrics:
    """Measure `model`; accuracy needs `data`, MACs and latency need `data` or `example_inputs`.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("digits")
        >>> m = nc.measure(nc.models.create("lenet300", in_channels=1, input_size=8), data, latency=False)
        >>> m.params
        50610
    """
    if not isinstance(threads, int) or threads < 1:
        raise NetcompressError(f"measure: threads must be an integer >= 1, got {threads!r}")
    if example_inputs is None and data is not None:
        example_inputs = data.example
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.cpu()  # CPU figures; the caller's model goes back to its device afterwards
    try:
        return _measure_cpu(model, data, example_inputs, file, latency, threads, min_run_time)
    finally:
        if device.type != "cpu":
            model.to(device)


def _measure_cpu(model: nn.Module, data, example_inputs, file, latency: bool, threads: int,
                 min_run_time: float) -> Metrics:
    total, nonzero = count_params(model)
    m = Metrics(params=total, nonzero_params=nonzero, threads=threads)
    if data is not None:
        m.accuracy = evaluate(model, data, device="cpu")
        if getattr(data, "task", None) == "lm":  # language model: accuracy is per token
            from netcompress.train.lm import evaluate_lm

            m.extra.update(evaluate_lm(model, data, device="cpu"))
    if example_inputs is not None:
        m.macs = count_macs(model, example_inputs)
        if latency:
            m.latency_ms_b1 = latency_ms(model, example_inputs, 1, threads, min_run_time)
            m.latency_ms_b64 = latency_ms(model, example_inputs, 64, threads, min_run_time)
    if file is not None:
        m.bytes = file_bytes(file)
    elif getattr(model, "netcompress_spec", None) is not None:
        with tempfile.TemporaryDirectory() as d:
            try:  # save() describes the model first and writes nothing when it cannot
                m.bytes = file_bytes(save(model, Path(d) / "model.pt"))
            except NetcompressError:
                pass
    return m
