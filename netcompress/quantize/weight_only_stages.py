"""Recipe stage kind `weight-only`: int8 / int4 per-group weight-only quantization of a transformer's
block Linears by round-to-nearest, HQQ (no calibration), GPTQ or AWQ (calibrated on training data).

    - weight-only: {method: gptq, bits: 4, group_size: 128}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.train.stage import StageKind, StageResult


class WeightOnlyConfig(Config):
    """`weight-only:` stage (see `netcompress.quantize.weight_only.quantize_weights_`)."""

    method: Literal["rtn", "hqq", "gptq", "awq"] = Field(
        "gptq", description="rtn (round to nearest), hqq (zero points fitted to the weights, no data), gptq (error "
                            "compensation) or awq (activation-aware input scales)")
    bits: int = Field(4, ge=2, le=8, description="bits per weight code (4: int4, 8: int8)")
    group_size: int = Field(128, ge=1, description="input weights sharing one scale and zero point")
    samples: int = Field(64, ge=1, description="gptq, awq: calibration samples from the training split")
    blocksize: int = Field(128, ge=1, description="gptq: columns per lazy batch update")
    damp: float = Field(0.01, gt=0, description="gptq: damping, fraction of the mean Hessian diagonal")
    sequential: bool | Literal["block", "layer"] = Field(True, description="gptq, awq: true or 'layer': calibrate each "
                                                         "group of layers on the already quantized earlier ones; "
                                                         "'block': per block; false: one pass")
    ignore: list[str] = Field(default_factory=list, description="Linear layers left in float (qualified names)")
    clip: bool = Field(True, description="awq: also search each group's clipping range after the input scales")


def run_weight_only(ctx, model: nn.Module, cfg: WeightOnlyConfig):
    """Quantize; extra holds the bits, group size and packed bytes of every layer."""
    from netcompress.quantize.weight_only import CALIBRATED, quantize_weights_

    calibration = ctx.data if cfg.method in CALIBRATED else None
    info = quantize_weights_(model, cfg.method, cfg.bits, cfg.group_size, calibration, cfg.samples, cfg.blocksize,
                             cfg.damp, cfg.sequential, cfg.ignore, cfg.clip)
    layers = {n: {"bits": i.bits, "group_size": i.group_size, "packed_bytes": i.packed_bytes} for n, i in info.items()}
    return StageResult(model, extra={"method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size,
                                     "packed_bytes": sum(i.packed_bytes for i in info.values()), "layers": layers})


def register(stages) -> None:
    help = "weight-only int8 / int4 per group of transformer Linears: round-to-nearest, HQQ, GPTQ or AWQ"
    stages.register("weight-only", StageKind(WeightOnlyConfig, run_weight_only, help))
