"""BatchNorm statistics re-estimated after a structural change (adaptive BN).

Removing channels or blocks changes what every later BatchNorm sees, so its running mean and
variance, kept from training the dense model, no longer normalise the pruned model's features: a
pruned CNN evaluated as it is can fall to chance accuracy although its weights are fine. Re-estimating
the statistics on a few hundred training samples, with no gradient step, restores it (Li et al. 2020,
"EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning", adaptive BN).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.batch import batch_len, calibration_batches, call, head, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

__all__ = ["recalibrate_bn_"]


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, data: Any, samples: int = 256) -> dict[str, int]:
    """Re-estimate the running mean and variance of every BatchNorm of `model` in place from
    `samples` training samples: the statistics are reset and averaged over the batches with equal
    weight (torch's cumulative average, momentum None; one batch gives its exact mean and unbiased
    variance). Nothing else changes: other layers run in eval mode, so dropout is off, and no weight
    moves. The model's train / eval modes and the layers' momentum are restored.

    Args:
        model: any model; one without BatchNorm layers is left as it is.
        data: a DataBundle (its first `samples` training samples) or an iterable of (inputs,
            targets) batches (inputs: a tensor, a tuple or a dict of tensors).
        samples: how many samples to average over.

    Returns:
        {"layers": BatchNorm layers re-estimated, "samples": samples seen}.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("digits")
        >>> m = nc.models.create("vgg-small", in_channels=1, input_size=8)
        >>> nc.train.recalibrate_bn_(m, data, samples=64)
        {'layers': 6, 'samples': 64}
    """
    if not isinstance(samples, int) or samples < 1:
        raise NetcompressError(f"recalibrate_bn_: samples must be an integer >= 1, got {samples!r}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return {"layers": 0, "samples": 0}
    momenta = [m.momentum for m in bns]
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    with eval_mode(model):
        try:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over every batch seen
                m.train()
            for x, _ in calibration_batches(data, samples):
                x = head(x, samples - seen)  # an iterable's last batch may hold more than asked
                call(model, to_device(x, dev))
                seen += batch_len(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    if seen == 0:
        raise NetcompressError("recalibrate_bn_: the data gave no batch")
    return {"layers": len(bns), "samples": seen}
