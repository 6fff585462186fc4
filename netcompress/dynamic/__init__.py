"""Dynamic computation: multi-exit networks that stop early under a confidence threshold or a
compute budget (BranchyNet, Teerapittayanon et al. 2016; Shallow-Deep Networks, Kaya et al. 2019),
and a small MSDNet (Huang et al. 2018); early-exit decoding for decoder LMs (`lm_early_exit`, CALM /
LayerSkip).

Example:
    mx = early_exit(model, exits=["features.1"], example_inputs=data.example)
    fit(mx, data, methods=[FrozenBackbone(), ExitTraining([1.0])], epochs=3)
    zs, _ = exit_outputs(mx, held_out); cum = exit_macs(mx, data.example)
    t, _ = calibrate_budget(zs, cum, 0.5 * full_macs(mx, data.example))
    mx.eval().set_policy_("max_softmax", t); mx(x)  # samples leave the batch
"""
from netcompress.dynamic.base import MultiExitBase, confidence, early_exit_predict, early_exit_stream
from netcompress.dynamic.early_exit import (HeadConfig, MultiExitModel, default_exits, early_exit, segment_mode,
                                            split_at_exits)
from netcompress.dynamic.lm_exit import EarlyExitLM, decode_latency, lm_early_exit, lm_exit_eval, token_costs
from netcompress.dynamic.msdnet import MSDNetSmall
from netcompress.dynamic.policy import (calibrate_accuracy, calibrate_budget, compare_latency, exit_macs, exit_outputs,
                                        full_macs, policy_report, simulate_exits, tradeoff_curve)
from netcompress.dynamic.training import ExitTraining, FrozenBackbone, exit_losses, sdn_weights

__all__ = [
    "MultiExitBase", "MultiExitModel", "MSDNetSmall", "HeadConfig", "default_exits", "early_exit", "early_exit_predict", "early_exit_stream", "confidence",
    "segment_mode", "split_at_exits", "calibrate_accuracy", "calibrate_budget", "compare_latency", "exit_macs",
    "exit_outputs", "full_macs", "policy_report", "simulate_exits", "tradeoff_curve", "ExitTraining", "FrozenBackbone",
    "exit_losses", "sdn_weights", "EarlyExitLM", "lm_early_exit", "lm_exit_eval", "token_costs",
    "decode_latency",
]
