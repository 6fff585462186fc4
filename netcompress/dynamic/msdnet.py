"""A small Multi-Scale Dense Network (MSDNet, Huang et al. 2018, ICLR) for 28x28 / 32x32 inputs.

The network keeps features at three scales (full, 1/2, 1/4 resolution). Each layer makes, at
every scale s, new features from the same scale (3x3 conv) and from the finer scale s-1 (strided
3x3 conv) and *concatenates* them to its input (dense connectivity, so early classifiers do not
ruin later features). Classifiers read the coarsest scale after each block: early exits see coarse,
global features, as in the paper. Deeper blocks drop the finest scales (the paper's reduction of
scales with depth); 1x1 transitions after each block halve the channels at the kept scales.
Differences from the paper: no bottleneck 1x1 inside layers, four blocks, and small widths, so the
whole net costs a few million MACs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.dynamic.base import MultiExitBase


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MSDFirstLayer(nn.Module):
    """Input -> features at every scale (each scale from the previous one by a strided conv)."""

    def __init__(self, in_channels: int, channels: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_cbr(in_channels if s == 0 else channels[s - 1], c, 1 if s == 0 else 2)
                                    for s, c in enumerate(channels)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for conv in self.convs:
            x = conv(x)
            out.append(x)
        return out


class MSDLayer(nn.Module):
    """One dense multi-scale layer: input scales lo_in.. , output scales lo_out.. (lo_out >= lo_in).

    Output at scale s = cat(x_s, conv(x_s), strided_conv(x_{s-1})) (the last part when s-1 is an input).
    """

    def __init__(self, in_ch: list[int], growth: list[int], lo_in: int, lo_out: int) -> None:
        super().__init__()
        scales = len(in_ch)
        self.lo_in, self.lo_out = lo_in, lo_out
        self.regular = nn.ModuleList([_cbr(in_ch[s], growth[s]) for s in range(lo_out, scales)])
        self.down = nn.ModuleList([_cbr(in_ch[s - 1], growth[s], 2) for s in range(lo_out, scales) if s - 1 >= lo_in])
        self.out_ch = [0] * lo_out + [in_ch[s] + growth[s] * (2 if s - 1 >= lo_in else 1) for s in range(lo_out, scales)]

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out, j = [], 0
        for i, s in enumerate(range(self.lo_out, self.lo_out + len(self.regular))):
            x = xs[s - self.lo_in]
            parts = [x, self.regular[i](x)]
            if s - 1 >= self.lo_in:
                parts.append(self.down[j](xs[s - 1 - self.lo_in]))
                j += 1
            out.append(torch.cat(parts, 1))
        return out


class MSDTransition(nn.Module):
    """1x1 conv-BN-ReLU per kept scale, compressing the concatenated channels."""

    def __init__(self, in_ch: list[int], out_ch: list[int], lo: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_cbr(in_ch[s], out_ch[s], 1, 1) for s in range(lo, len(in_ch))])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs)]


class MSDNetSmall(MultiExitBase):
    """MSDNet-small: 3 scales, `blocks` blocks of `step` layers, one classifier per block.

    Args:
        num_classes, in_channels, input_size: data shape (input_size 28 or 32 and similar).
        width: multiplies every channel count.
        blocks: number of blocks = number of exits.
        step: layers per block.

    Example:
        m = nc.models.create("msdnet-small", in_channels=1, input_size=28)
        [z.shape for z in m.train()(torch.zeros(2, 1, 28, 28))]  # 4 exits
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: float = 1.0,
                 blocks: int = 4, step: int = 2) -> None:
        super().__init__()
        if input_size < 8:
            raise NetcompressError(f"msdnet-small needs inputs of at least 8x8, got {input_size}")
        if blocks < 2 or step < 1:
            raise NetcompressError("msdnet-small: blocks must be >= 2 and step >= 1")
        scales = 3
        w = lambda c: max(2, int(round(c * width)))  # noqa: E731
        base, growth, head = [w(8), w(16), w(32)], [w(4), w(8), w(16)], w(32)
        self.first = MSDFirstLayer(in_channels, base)
        ch, lo_prev = list(base), 0
        block_list, classifiers = [], []
        for b in range(blocks):
            lo = min(scales - 1, (b * scales) // blocks)
            layers: list[nn.Module] = []
            for i in range(step):
                layer = MSDLayer(ch, growth, lo_prev if i == 0 else lo, lo)
                layers.append(layer)
                ch = layer.out_ch
            reduced = [c // 2 if s >= lo else 0 for s, c in enumerate(ch)]
            layers.append(MSDTransition(ch, reduced, lo))
            ch, lo_prev = reduced, lo
            block_list.append(nn.Sequential(*layers))
            classifiers.append(nn.Sequential(_cbr(ch[-1], head, 2), _cbr(head, head, 2), nn.AdaptiveAvgPool2d(1),
                                             nn.Flatten(), nn.Linear(head, num_classes)))
        self.blocks = nn.ModuleList(block_list)
        self.classifiers = nn.ModuleList(classifiers)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    def head_modules(self) -> list[nn.Module]:
        return list(self.classifiers[:-1])

    def start(self, x: torch.Tensor) -> Any:
        return self.first(x)

    def step(self, k: int, state: Any) -> tuple[Any, torch.Tensor]:
        xs = self.blocks[k](state)
        return xs, self.classifiers[k](xs[-1])

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.first(x)
        for block in self.blocks:
            xs = block(xs)
        return self.classifiers[-1](xs[-1])
