"""Model inputs and outputs of any shape: one place that knows how to call a model and read its prediction.

An input batch is a tensor, a tuple of tensors (passed positionally) or a dict of named tensors
(passed as keyword arguments, e.g. Hugging Face ``input_ids`` / ``attention_mask`` /
``pixel_values``). An output is a tensor, a list/tuple of tensors (multi-exit models: the last is
the final prediction) or an object with ``.logits`` (Hugging Face ``ModelOutput``). Every loop,
measurement and technique uses these helpers, so none of them needs a wrapper around such models.

Example:
    >>> import torch
    >>> x = {"input_ids": torch.zeros(4, 8, dtype=torch.long)}
    >>> batch_len(x), batch_len(head(x, 2))
    (4, 2)
"""
from __future__ import annotations

from typing import Any, Mapping, Union

import torch
from torch import nn

from netcompress.core.errors import NetcompressError

Batch = Union[torch.Tensor, tuple, dict]


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [v for v in x.values() if isinstance(v, torch.Tensor)]
    if isinstance(x, (list, tuple)):
        return [v for v in x if isinstance(v, torch.Tensor)]
    return []


def first_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor of a value: a tensor, a tuple / list, or a mapping (a Hugging Face
    ``ModelOutput`` included); None when it holds none."""
    ts = _tensors(x)
    return ts[0] if ts else None


def check_batch(x: Any, what: str = "example_inputs") -> None:
    """Raise a clear error unless `x` is a tensor, a tuple of tensors or a dict of named tensors."""
    ts = _tensors(x)
    if not ts or (isinstance(x, (Mapping, list, tuple)) and len(ts) != len(x)):
        raise NetcompressError(f"{what} must be a tensor batch, a tuple of tensors or a dict of named tensors "
                               f"(e.g. data.example), got {type(x).__name__}")
    n = {t.shape[0] if t.dim() else None for t in ts}
    if len(n) != 1 or None in n:
        raise NetcompressError(f"{what}: every tensor needs the same batch dimension, got sizes {sorted(map(str, n))}")


def _map(x: Any, fn) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(fn(v) if isinstance(v, torch.Tensor) else v for v in x)
    raise NetcompressError(f"inputs must be a tensor, a tuple or a dict of tensors, got {type(x).__name__}")


def batch_len(x: Batch) -> int:
    """The batch dimension (first dimension) of an input batch."""
    ts = _tensors(x)
    if not ts:
        raise NetcompressError(f"inputs must be a tensor, a tuple or a dict of tensors, got {type(x).__name__}")
    return int(ts[0].shape[0])


def to_device(x: Batch, device: torch.device | str, non_blocking: bool = False) -> Batch:
    """Every tensor of the batch on `device`."""
    return _map(x, lambda t: t.to(device, non_blocking=non_blocking))


def take(x: Batch, index: Any) -> Batch:
    """The samples `index` (a slice, an index tensor) of every tensor of the batch."""
    return _map(x, lambda t: t[index])


def head(x: Batch, n: int) -> Batch:
    """The first `n` samples of a batch."""
    return take(x, slice(0, n))


def concat(batches: list[Batch]) -> Batch:
    """One batch from several of the same layout (tensors, tuples or dicts of tensors), along dim 0.

    Example:
        >>> concat([{"ids": torch.zeros(2, 3)}, {"ids": torch.ones(1, 3)}])["ids"].shape
        torch.Size([3, 3])
    """
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, Mapping):
        return {k: torch.cat([b[k] for b in batches]) if isinstance(v, torch.Tensor) else v for k, v in first.items()}
    return type(first)(torch.cat([b[i] for b in batches]) if isinstance(v, torch.Tensor) else v for i, v in enumerate(first))


def calibration_batches(data: Any, n: int = 256) -> list[tuple[Batch, Any]] | None:
    """Turn `data` (a DataBundle, a loader / list of (x, y) batches, or None) into a list of batches."""
    if data is None:
        return None
    if hasattr(data, "calibration"):
        return list(data.calibration(n))
    out, seen = [], 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise NetcompressError("data must be a dataset or an iterable of (inputs, targets) batches")
        out.append((batch[0], batch[1]))
        seen += batch_len(batch[0])  # a dict of named tensors counts its samples, not its keys
        if seen >= n:
            break
    return out


def repeat_to(x: Batch, n: int) -> Batch:
    """A contiguous batch of `n` copies of the first sample (for timing at a batch size)."""
    return _map(x, lambda t: t[:1].expand(n, *t.shape[1:]).contiguous())


def call(model: nn.Module, x: Batch) -> Any:
    """Run `model` on a batch: ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output.

    A tensor is returned as it is; a list/tuple gives its last tensor (the final exit of a
    multi-exit model); an object or mapping with ``logits`` (a Hugging Face ``ModelOutput``) gives
    that; a headless Hugging Face model gives its ``last_hidden_state``.
    """
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        v = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(output, (list, tuple)) and output and isinstance(output[-1], torch.Tensor):
        return output[-1]
    raise NetcompressError(f"model returned {type(output).__name__}; expected a tensor of logits, a list of them "
                           "or an output object with .logits")
