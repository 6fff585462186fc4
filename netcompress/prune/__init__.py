"""Pruning: unstructured weight masks, structured channel removal and depth (whole blocks).

Example:
    import netcompress as nc
    from netcompress import prune
    small = prune.channels(model, "fpgm", 0.5, example_inputs=data.example)
    shallow = prune.depth(model, 0.25, example_inputs=data.example, data=data)
    prune.weights_(model, "l1", 0.9)
"""
from netcompress.core.graph import ChannelGraph
from netcompress.core.graph_layers import LayerContext, register_layer, unregister_layer
from netcompress.prune.depth import DEPTH_CRITERIA, depth, plan_depth, remove_blocks
from netcompress.prune.importance import CRITERIA
from netcompress.prune.llm import magnitude_, prune_ as sparsify_, sparsegpt_, wanda_
from netcompress.prune.schedule import SlimmingMethod, iterative_channels, iterative_weights_, step_sparsities
from netcompress.prune.structured import PrunePlan, channels, per_layer, plan
from netcompress.prune.unstructured import (AGPMethod, MaskMethod, agp_sparsity, finalize_, masks_of, sparsity_of,
                                            weights_)
from netcompress.prune.variational import SparseVDConfig, SparseVDMethod, kl_approx, variational_dropout_

__all__ = ["CRITERIA", "DEPTH_CRITERIA", "depth", "plan_depth", "remove_blocks", "ChannelGraph", "register_layer", "unregister_layer", "LayerContext", "channels", "plan", "PrunePlan", "per_layer", "weights_", "finalize_",
           "masks_of", "sparsity_of", "MaskMethod", "AGPMethod", "agp_sparsity", "SlimmingMethod",
           "iterative_weights_", "iterative_channels", "step_sparsities",
           "variational_dropout_", "SparseVDConfig", "SparseVDMethod", "kl_approx",
           "sparsify_", "magnitude_", "wanda_", "sparsegpt_"]
