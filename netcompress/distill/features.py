"""Feature pairing for feature-based distillation: default layer choice and adapters.

Features are captured with `netcompress.core.Taps` by qualified module name, for any nn.Module;
nobody edits a model. When a student feature and its teacher feature differ in channels or size,
an `Adapter` (1x1 conv or linear, then a resize) maps student -> teacher and is trained with the
student (it is returned by the method's `extra_parameters`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.batch import batch_len, call, head, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

__all__ = ["Adapter", "make_adapter", "probe", "embedding_layer", "spatial_layers", "example_for", "pair_layers"]


class Adapter(nn.Module):
    """Student feature -> teacher feature shape: 1x1 conv (4-D) or linear (2-D), then a resize.

    FitNets' regressor (Romero et al. 2015) is this with a conv; Attention/relational losses need
    none (they are channel-free), FitNet always uses one.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        s, t = tuple(student_shape), tuple(teacher_shape)
        self.student_shape, self.teacher_shape = s, t
        if len(t) == 4 and len(s) == 4:
            self.proj: nn.Module = nn.Conv2d(s[1], t[1], kernel_size=1, bias=False)
            self.size: tuple[int, int] | None = (t[2], t[3]) if s[2:] != t[2:] else None
        elif len(t) == 3 and len(s) == 3 and s[1] == t[1]:  # transformer tokens: project the width
            self.proj = nn.Linear(s[2], t[2], bias=False)
            self.size = None
        elif len(t) == 2:
            self.proj = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(s[1:]).prod()), t[1]))
            self.size = None
        else:
            raise NetcompressError(f"no adapter from a student feature of shape {s} to a teacher feature of shape {t}; "
                                   "pick layers whose outputs are (N, C, H, W) or (N, D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.size is not None:
            if y.shape[-1] >= self.size[-1]:
                y = F.adaptive_avg_pool2d(y, self.size)
            else:
                y = F.interpolate(y, size=self.size, mode="bilinear", align_corners=False)
        return y


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], always: bool = False) -> nn.Module:
    """An `Adapter` when shapes differ (or `always`), else `nn.Identity()`."""
    if not always and tuple(student_shape[1:]) == tuple(teacher_shape[1:]):
        return nn.Identity()
    return Adapter(student_shape, teacher_shape)


def example_for(model: nn.Module, example_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """`example_inputs`, or two zero images shaped from the model's `netcompress_spec`."""
    if example_inputs is not None:
        return head(example_inputs, 2)
    kw = getattr(model, "netcompress_spec", {}).get("kwargs", {})
    if "in_channels" in kw and "input_size" in kw:
        return torch.zeros(2, kw["in_channels"], kw["input_size"], kw["input_size"])
    raise NetcompressError("cannot infer the input shape of this model; pass example_inputs (e.g. data.example)")


@torch.no_grad()
def probe(model: nn.Module, example_inputs: torch.Tensor, leaves_only: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every leaf module (or every named module) in the order their forward
    passes end, for one forward pass in eval mode."""
    order: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, m in model.named_modules():
        if name and (not leaves_only or not list(m.children())):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: order.append((n, tuple(o.shape))) if isinstance(o, torch.Tensor) else None))
    try:
        with eval_mode(model):
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            call(model, to_device(example_inputs, dev))
    finally:
        for h in handles:
            h.remove()
    return order


def embedding_layer(model: nn.Module, example_inputs: torch.Tensor) -> str:
    """The penultimate representation: the last leaf module executed before the one giving the logits."""
    order = probe(model, example_inputs)
    if len(order) < 2:
        raise NetcompressError("cannot find a penultimate layer; name one in `layers`")
    return order[-2][0]


def spatial_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """For each spatial resolution (larger than 1x1), the last leaf module producing a 4-D map of it,
    in execution order: the natural 'end of a group' layers used by Attention Transfer. A map
    counts when it has one row per sample and, in dim 1, a channel count that a Conv2d or
    BatchNorm2d of the same pass gives: channels-last maps and attention windows folded into the
    batch dim (Swin, MaxViT) are not channel-first feature maps and are left out."""
    order = probe(model, example_inputs)
    mods = dict(model.named_modules())
    batch = batch_len(example_inputs)
    channels = {shape[1] for name, shape in order if isinstance(mods[name], (nn.Conv2d, nn.BatchNorm2d))}
    last: dict[tuple[int, int], tuple[int, str]] = {}
    for i, (name, shape) in enumerate(order):
        if len(shape) == 4 and shape[0] == batch and shape[1] in channels and shape[2] * shape[3] > 1:
            last[(shape[2], shape[3])] = (i, name)
    return [n for _, n in sorted(last.values())]


def pair_layers(layers: Sequence[str | Sequence[str]] | None, student_default: list[str],
                teacher_default: list[str]) -> list[tuple[str, str]]:
    """(student, teacher) module-name pairs. A string entry names the same module in both models;
    a two-item entry is [student_name, teacher_name]. No `layers`: the defaults, paired from the end."""
    if layers:
        pairs = []
        for item in layers:
            if isinstance(item, str):
                pairs.append((item, item))
            elif len(item) == 2:
                pairs.append((str(item[0]), str(item[1])))
            else:
                raise NetcompressError(f"layers: {item!r} must be a module name or [student_name, teacher_name]")
        return pairs
    k = min(len(student_default), len(teacher_default))
    if k == 0:
        raise NetcompressError("no feature layers found in the student or teacher; name them in `layers`")
    return list(zip(student_default[len(student_default) - k:], teacher_default[len(teacher_default) - k:]))
