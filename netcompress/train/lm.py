"""Language-model evaluation: per-token cross-entropy, perplexity, bits per byte, tokens per second.

Perplexity is exp(mean per-token cross-entropy in nats) over every target position of a split;
bits per byte divides the cross-entropy in bits by the bytes each token stands for (1 for the
byte-level `pydoc-text`), so models with different tokenisers compare.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: Any, split: str = "test", device: str | torch.device | None = None,
                max_batches: int | None = None) -> dict[str, float]:
    """Loss (nats / token), perplexity, bits per byte, token accuracy and tokens/s of `model` on a split.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("pydoc-text").subset(8, 8)
        >>> r = evaluate_lm(nc.models.create_for("gpt-tiny-half", data), data)
        >>> 180 < r["perplexity"] < 400  # an untrained model: near the vocabulary size (256)
        True
    """
    from netcompress.core.batch import logits_of
    from netcompress.train.loop import _device

    dev = _device(device)
    loader = data.loader(split, shuffle=False) if hasattr(data, "loader") else data
    nll = 0.0
    correct = tokens = 0
    with eval_mode(model):
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(dev), y.to(dev)
            logits = logits_of(model(x)).float()
            if logits.dim() != 3:
                raise NetcompressError(f"evaluate_lm: model returned logits of shape {tuple(logits.shape)}; "
                                       "a language model returns (batch, seq, vocab)")
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            tokens += y.numel()
    secs = time.perf_counter() - t0
    if tokens == 0:
        raise NetcompressError(f"evaluate_lm: split {split!r} is empty")
    loss = nll / tokens
    bpt = float(getattr(data, "bytes_per_token", 1.0))
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2) / bpt,
            "token_accuracy": correct / tokens, "tokens_per_s": tokens / max(secs, 1e-9)}
