"""The training-method protocol.

A Method is one technique with one frozen config. The single training loop (`netcompress.train.fit`)
calls these hooks; a technique adds loss terms or adjusts weights, it never copies the loop.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Method:
    """Base class; every hook is optional. Lifecycle like an optimizer.

    Order inside `fit`, per step: forward -> `loss_terms` -> backward -> `after_backward`
    -> optimizer.step -> `after_step`. Per epoch: `on_epoch_end`. Once: `prepare` before training,
    `on_train_begin` with the step budget before the first step, `finalize` after training (called by
    the owner of the method, not by `fit`).
    """

    name: str = "method"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained together with the model (regressors, adapters, exit heads)."""
        return []

    def on_train_begin(self, total_steps: int) -> None:
        """Called by `fit` before its first step with the number of optimizer steps it will take
        (the whole budget, also when it resumes part way); schedules over training read it."""

    def loss_terms(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: Any
    ) -> dict[str, torch.Tensor]:
        """Named extra loss parts; `fit` adds them to the task loss and logs each by name."""
        return {}

    def after_backward(self, model: nn.Module) -> None:
        """Edit gradients (e.g. sum per cluster, zero masked weights' grads)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Edit weights after the optimizer step (re-apply masks, clip, schedule)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Called after each epoch's evaluation."""

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
