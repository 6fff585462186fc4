"""Dynamic computation: multi-exit networks that stop early under a confidence threshold or a
compute budget (BranchyNet, Shallow-Deep Networks), and a small MSDNet (Huang et al. 2018)."""
from netcompress.dynamic.base import MultiExitBase, confidence, early_exit_predict
from netcompress.dynamic.early_exit import HeadConfig, MultiExitModel, early_exit, segment_mode, split_at_exits

__all__ = ["MultiExitBase", "MultiExitModel", "HeadConfig", "early_exit", "early_exit_predict", "confidence",
           "segment_mode", "split_at_exits"]
