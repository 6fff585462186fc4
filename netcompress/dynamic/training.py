"""Joint training of the exits: weighted exit losses and optional self-distillation.

Shallow-Deep Networks (Kaya et al. 2019, section 4.1) weight internal classifier i by tau_i, which
grows linearly during training from 0.01 to q_i, where q_i is the classifier's relative position in
the network's compute (0.15, 0.3, ... in the paper); the final classifier keeps weight 1 (here: the
task loss of `fit`). Self-distillation from the last exit to the earlier ones follows Zhang et al.
2019 ("Be Your Own Teacher"): a Hinton KD term with the final logits as a detached teacher.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method
from netcompress.dynamic.base import MultiExitBase


def exit_losses(outputs: Sequence[torch.Tensor], targets: torch.Tensor, weights: Sequence[float],
                distill: float = 0.0, temperature: float = 3.0) -> dict[str, torch.Tensor]:
    """Weighted losses of the early exits (`outputs[:-1]`); the last output is the teacher.

    ``loss_k = w_k * ((1 - distill) * CE(z_k, y) + distill * T^2 * KL(softmax(z_K / T) || softmax(z_k / T)))``

    Example:
        >>> z = [torch.zeros(2, 3), torch.zeros(2, 3)]
        >>> round(exit_losses(z, torch.tensor([0, 1]), [1.0])["exit0"].item(), 4)
        1.0986
    """
    if len(weights) != len(outputs) - 1:
        raise NetcompressError(f"exit weights: {len(weights)} given for {len(outputs) - 1} early exits")
    if outputs[-1].dim() == 3 and targets.dim() == 2:  # a language model's (batch, seq, vocab): per token
        outputs = [z.reshape(-1, z.shape[-1]) for z in outputs]
        targets = targets.reshape(-1)
    teacher = outputs[-1].detach()
    parts: dict[str, torch.Tensor] = {}
    for k, (z, w) in enumerate(zip(outputs[:-1], weights)):
        loss = F.cross_entropy(z, targets)
        if distill > 0:
            kd = F.kl_div(F.log_softmax(z / temperature, 1), F.softmax(teacher / temperature, 1),
                          reduction="batchmean") * temperature ** 2
            loss = (1 - distill) * loss + distill * kd
        parts[f"exit{k}"] = w * loss
    return parts


def sdn_weights(positions: Sequence[float]) -> list[float]:
    """Shallow-Deep Networks' final weights q_i: the exits' relative compute positions in (0, 1]."""
    return [float(min(max(q, 0.01), 1.0)) for q in positions]


class ExitTraining(Method):
    """Adds the early exits' weighted losses to `fit` (the final exit is `fit`'s task loss).

    Args:
        weights: final weight of each early exit.
        ramp_epochs: weights grow linearly from 0.01 to `weights` over this many epochs (SDN); 0: fixed.
        distill: share of the self-distillation term in each early exit's loss (0: none).
        temperature: distillation temperature.

    Example:
        fit(mx, data, methods=[ExitTraining([0.15, 0.3])], epochs=2)
    """

    name = "exits"

    def __init__(self, weights: Sequence[float], ramp_epochs: int = 0, distill: float = 0.0,
                 temperature: float = 3.0) -> None:
        if not 0 <= distill <= 1:
            raise NetcompressError(f"exit training: distill must be in [0, 1], got {distill}")
        self.target = [float(w) for w in weights]
        self.ramp_epochs = int(ramp_epochs)
        self.distill = distill
        self.temperature = temperature
        self.epoch = 0

    def current_weights(self) -> list[float]:
        if self.ramp_epochs <= 0:
            return list(self.target)
        f = min(1.0, (self.epoch + 1) / self.ramp_epochs)
        return [0.01 + (w - 0.01) * f for w in self.target]

    def loss_terms(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: Any) -> dict[str, torch.Tensor]:
        if not isinstance(outputs, (list, tuple)):
            raise NetcompressError("exit training needs a multi-exit model (its forward returns a list of logits)")
        return exit_losses(outputs, targets, self.current_weights(), self.distill, self.temperature)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self.epoch = epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))


class FrozenBackbone(Method):
    """Train only the early heads (Shallow-Deep Networks' 'IC-only' training of a trained network):
    `prepare` freezes every other parameter and keeps the other BatchNorm layers in eval mode;
    `finalize` undoes both. The final exit then stays exactly the original network.

    Example:
        fb = FrozenBackbone(); fit(mx, data, methods=[fb, ExitTraining([0.2])]); fb.finalize(mx)
    """

    name = "frozen-backbone"

    def __init__(self) -> None:
        self.frozen: list[nn.Parameter] = []
        self.bns: list[nn.Module] = []
        self._handle = None

    def prepare(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, MultiExitBase):
            raise NetcompressError("FrozenBackbone needs a multi-exit model")
        heads = {id(m) for h in model.head_modules() for m in h.modules()}
        head_params = {id(p) for h in model.head_modules() for p in h.parameters()}
        self.frozen = [p for p in model.parameters() if id(p) not in head_params and p.requires_grad]
        for p in self.frozen:
            p.requires_grad_(False)
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in heads]
        self._handle = model.register_forward_pre_hook(self._eval_bns)
        return model

    def _eval_bns(self, module, inputs) -> None:
        for bn in self.bns:
            bn.eval()

    def finalize(self, model: nn.Module) -> nn.Module:
        for p in self.frozen:
            p.requires_grad_(True)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return model
