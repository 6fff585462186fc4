"""Recipe stage kind `pack`: write the model as a .ncz archive; the stage's bytes are the file's.

    - pack: {coding: huffman}
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.archive.format import format_table, inspect, pack, unpack
from netcompress.core.batch import call, logits_of
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.train.stage import StageKind, StageResult


class PackConfig(Config):
    """`pack:` stage: `coding` huffman (Deep Compression) or fixed (fixed-width fields only)."""

    coding: Literal["huffman", "fixed"] = Field("huffman", description="huffman (Deep Compression) or fixed-width fields")


def run_pack(ctx, model: nn.Module, cfg: PackConfig):
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / "model.ncz"
    pack(model, path, coding=cfg.coding)
    restored = unpack(path)
    x = ctx.data.example
    with eval_mode(model), torch.no_grad():  # the model handed in keeps its flags; `restored` is in eval mode
        if not torch.equal(logits_of(call(model, x)), logits_of(call(restored, x))):  # pragma: no cover - a bug, never expected
            raise NetcompressError(f"stage {ctx.name!r}: unpacked archive does not reproduce the model's outputs")
    info = inspect(path)
    extra = {"file_bytes": info["file_bytes"], "ratio_vs_dense_fp32": info["ratio"], "entropy_bytes": info["entropy_bytes"],
             "coded_stream_bytes": info["coded_stream_bytes"], "stream_overhead": info["stream_overhead"],
             "layers": info["layers"], "archive": str(path)}
    return StageResult(restored, file=path, extra=extra)


def register(stages) -> None:
    help = "write the .ncz archive (sparse + codebook + Huffman); bytes are the archive's"
    stages.register("pack", StageKind(PackConfig, run_pack, help, summary=lambda ex: format_table(inspect(ex["archive"]))))
