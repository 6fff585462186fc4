"""Architecture design transforms: low-rank factorisation and depthwise-separable conversion.

Both return a new plain ``nn.Module`` (the input is not changed) whose replaced layers are
``nn.Sequential`` of standard layers, so the result saves and reloads with `netcompress.models.save`.
"""
from netcompress.design.costs import (
    Cost, LayerRow, break_even_rank, channel_lowrank_cost, compare_layers, conv_cost, linear_cost,
    lowrank_linear_cost, module_cost, separable_cost, separable_ratio, spatial_lowrank_cost,
)
from netcompress.design.lowrank import RankChoice, apply_plan, factorize_conv, factorize_linear, lowrank, plan_lowrank
from netcompress.design.separable import is_standard_conv, separable, separable_conv

__all__ = [
    "lowrank", "plan_lowrank", "apply_plan", "factorize_linear", "factorize_conv", "RankChoice",
    "separable", "separable_conv", "is_standard_conv",
    "Cost", "LayerRow", "break_even_rank", "linear_cost", "lowrank_linear_cost", "conv_cost",
    "channel_lowrank_cost", "spatial_lowrank_cost", "separable_cost", "separable_ratio", "module_cost",
    "compare_layers",
]
