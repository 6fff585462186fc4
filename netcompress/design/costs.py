"""Theoretical costs of dense, factorised and separable layers, and a per-layer comparison with
what `netcompress.measure` counts.

All MACs are for one sample (batch 1). Parameter counts include biases.

* Low rank (Denton et al. 2014; Jaderberg et al. 2014): an M x N matrix W costs MN; U (M x K) times
  V (K x N) costs K (M + N), smaller only when K < MN / (M + N) (`break_even_rank`).
* Depthwise separable (Howard et al. 2017, MobileNets eq. 5): a k x k conv with N input and M output
  channels costs k^2 N M per output pixel; depthwise k x k + pointwise 1 x 1 costs k^2 N + N M, a
  ratio of 1/M + 1/k^2 (`separable_ratio`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from netcompress.core.batch import call, head
from netcompress.core.modes import eval_mode


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates (batch 1) of a layer."""

    params: int
    macs: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.macs + other.macs)


def break_even_rank(m: int, n: int) -> float:
    """The rank K at which U (m x K) V (K x n) has as many weights as the m x n matrix: mn / (m + n)."""
    return m * n / (m + n)


def linear_cost(in_features: int, out_features: int, bias: bool = True) -> Cost:
    """A dense Linear layer: N M weights (+ M biases), N M MACs."""
    return Cost(in_features * out_features + (out_features if bias else 0), in_features * out_features)


def lowrank_linear_cost(in_features: int, out_features: int, rank: int, bias: bool = True) -> Cost:
    """Linear(N, K, bias=False) then Linear(K, M): K (N + M) weights and MACs (+ M biases)."""
    return Cost(rank * (in_features + out_features) + (out_features if bias else 0), rank * (in_features + out_features))


def conv_cost(in_channels: int, out_channels: int, kernel: int | Sequence[int], out_hw: Sequence[int],
              groups: int = 1, bias: bool = True) -> Cost:
    """A Conv2d: (N / g) kh kw M weights, times Hout Wout MACs."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    w = (in_channels // groups) * kh * kw * out_channels
    return Cost(w + (out_channels if bias else 0), w * int(out_hw[0]) * int(out_hw[1]))


def separable_cost(in_channels: int, out_channels: int, kernel: int | Sequence[int], out_hw: Sequence[int],
                   bias: bool = True) -> Cost:
    """Depthwise kh x kw (N filters, no bias) then pointwise 1 x 1 (N -> M): (kh kw N + N M) per pixel."""
    return (conv_cost(in_channels, in_channels, kernel, out_hw, groups=in_channels, bias=False)
            + conv_cost(in_channels, out_channels, 1, out_hw, bias=bias))


def separable_ratio(out_channels: int, kernel: int | Sequence[int]) -> float:
    """MobileNets' cost ratio of separable to standard convolution: 1/M + 1/k^2 (Howard et al. 2017)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return 1.0 / out_channels + 1.0 / (kh * kw)


def channel_lowrank_cost(in_channels: int, out_channels: int, kernel: int | Sequence[int], out_hw: Sequence[int],
                         rank: int, bias: bool = True) -> Cost:
    """Channel SVD (Zhang et al. 2016): kh x kw conv N -> K (no bias), then 1 x 1 conv K -> M."""
    return (conv_cost(in_channels, rank, kernel, out_hw, bias=False)
            + conv_cost(rank, out_channels, 1, out_hw, bias=bias))


def spatial_lowrank_cost(in_channels: int, out_channels: int, kernel: int | Sequence[int], mid_hw: Sequence[int],
                         out_hw: Sequence[int], rank: int, bias: bool = True) -> Cost:
    """Jaderberg et al. 2014 scheme 2: kh x 1 conv N -> K (output `mid_hw`), then 1 x kw conv K -> M."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return (conv_cost(in_channels, rank, (kh, 1), mid_hw, bias=False)
            + conv_cost(rank, out_channels, (1, kw), out_hw, bias=bias))


def module_cost(module: nn.Module, in_hw: Sequence[int] | None = None) -> Cost:
    """The theoretical cost of a Linear, Conv2d or an nn.Sequential of them, for input size `in_hw`.

    Other layer types (BatchNorm, activations) count their parameters and no MACs.
    """
    if isinstance(module, nn.Linear):
        return linear_cost(module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.Conv2d):
        out_hw = conv_output_hw(module, in_hw)
        return conv_cost(module.in_channels, module.out_channels, module.kernel_size, out_hw, module.groups,
                         module.bias is not None)
    if isinstance(module, nn.Sequential):
        total, hw = Cost(0, 0), in_hw
        for child in module:
            total = total + module_cost(child, hw)
            if isinstance(child, nn.Conv2d):
                hw = conv_output_hw(child, hw)
        return total
    return Cost(sum(p.numel() for p in module.parameters()), 0)


def conv_output_hw(conv: nn.Conv2d, in_hw: Sequence[int] | None) -> tuple[int, int]:
    """Output height and width of `conv` for an input of `in_hw` (PyTorch's formula)."""
    if in_hw is None:
        raise ValueError("conv_output_hw needs the input size")
    out = []
    for i in range(2):
        if isinstance(conv.padding, str):
            pad_total = 0 if conv.padding == "valid" else conv.dilation[i] * (conv.kernel_size[i] - 1)
            if conv.padding == "same":
                out.append(int(in_hw[i]))
                continue
            p2 = pad_total
        else:
            p2 = 2 * conv.padding[i]
        out.append((int(in_hw[i]) + p2 - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1)
    return out[0], out[1]


def input_sizes(model: nn.Module, example_inputs: torch.Tensor, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch) of the inputs each named module receives on one forward pass."""
    mods = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    def hook(name: str):
        def pre(module: nn.Module, inp: tuple) -> None:
            shapes.setdefault(name, tuple(inp[0].shape[1:]))

        return pre

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            call(model, head(example_inputs, 1))
    finally:
        for h in handles:
            h.remove()
    return shapes


@dataclass
class LayerRow:
    """One layer before and after a design transform: theory next to measurement."""

    name: str
    op: str
    before_params: int
    after_params: int
    before_macs: int
    after_macs: int
    theory_params: int
    theory_macs: int
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_layers(original: nn.Module, transformed: nn.Module, layers: dict[str, tuple[str, int | None]],
                   example_inputs: torch.Tensor) -> list[LayerRow]:
    """Per transformed layer: parameters and MACs counted by `netcompress.measure` before and after,
    next to the formulas of this module.

    Args:
        layers: qualified name -> (op label, rank or None) of every replaced module.
    """
    from netcompress.measure.metrics import macs_by_module

    before = macs_by_module(original, example_inputs)
    after = macs_by_module(transformed, example_inputs)
    shapes = input_sizes(original, example_inputs, list(layers))
    new_mods = dict(transformed.named_modules())
    old_mods = dict(original.named_modules())
    rows = []
    for name, (op, rank) in layers.items():
        shp = shapes.get(name)
        hw = shp[-2:] if shp is not None and len(shp) == 3 else None
        theory = module_cost(new_mods[name], hw)
        rows.append(LayerRow(
            name=name, op=op,
            before_params=sum(p.numel() for p in old_mods[name].parameters()),
            after_params=sum(p.numel() for p in new_mods[name].parameters()),
            before_macs=sum(v for k, v in before.items() if k == name or k.startswith(name + ".")),
            after_macs=sum(v for k, v in after.items() if k == name or k.startswith(name + ".")),
            theory_params=theory.params, theory_macs=theory.macs, rank=rank))
    return rows
