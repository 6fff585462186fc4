"""The one training loop: `fit`, `evaluate`, DDP helpers."""
from netcompress.train.bn import recalibrate_bn_
from netcompress.train.loop import History, TrainConfig, evaluate, fit, predict
from netcompress.train.distributed import DistInfo, dist_info, init_distributed, is_main

__all__ = ["History", "TrainConfig", "evaluate", "fit", "predict", "recalibrate_bn_", "DistInfo", "dist_info", "init_distributed", "is_main"]
