"""Standard convolution -> depthwise separable convolution (Howard et al. 2017, "MobileNets").

A k x k Conv2d with N inputs and M outputs (groups=1) becomes ``nn.Sequential(depthwise k x k conv
(N -> N, groups=N, no bias), pointwise 1 x 1 conv (N -> M))``, costing 1/M + 1/k^2 of the original.

Initialisation, so that recovery starts close to the original network:

1. Weight fit: for each input channel c, the slice W[:, c] (M x k^2) is replaced by its best rank-1
   approximation sigma u v^T (Eckart-Young), giving depthwise filter sqrt(sigma) v and pointwise
   column sqrt(sigma) u. This is the least-squares optimum in weight space.
2. Output fit (when `calibration` inputs are given): with the depthwise filters fixed, the pointwise
   weights and bias are re-solved by ridge least squares so the layer's outputs on real inputs match
   the original's (the data-driven reconstruction of Zhang et al. 2016 / He et al. 2017, applied to
   the linear pointwise step, where it has a closed form). Each channel's two factors are then
   rescaled to equal norms (same function), which keeps SGD stable during recovery.

Recovery afterwards (fine-tuning, or distillation from the original model) is done by the caller:
the `design` recipe stage and the `netcompress design` command.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from netcompress.core.batch import call, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.layers import read_by_ancestor
from netcompress.core.modes import eval_mode

FilterFn = Callable[[nn.Module, str], bool]


def is_standard_conv(module: nn.Module) -> bool:
    """A Conv2d with groups=1, a kernel larger than 1 x 1 and more than one input channel.

    A conv with one input channel already is depthwise (groups == in_channels), so it is not converted.
    """
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.in_channels > 1
            and max(module.kernel_size) > 1)


def default_convs(model: nn.Module) -> list[str]:
    """The convs converted when no filter_fn names them: standard k x k convs whose attributes no
    forward code reads (`read_by_ancestor`)."""
    return [n for n, m in model.named_modules() if n and is_standard_conv(m) and read_by_ancestor(model, n) is None]


def _selected(model: nn.Module, filter_fn: FilterFn | None) -> list[str]:
    if filter_fn is None:
        return default_convs(model) or _none_selected()
    names = []
    for n, m in model.named_modules():
        if n and isinstance(m, nn.Conv2d) and filter_fn(m, n):
            if not is_standard_conv(m):
                raise NetcompressError(
                    f"separable: layer {n!r} (Conv2d {m.in_channels}->{m.out_channels}, kernel {tuple(m.kernel_size)}, "
                    f"groups {m.groups}) is not a standard k x k conv with several input channels; leave it out with filter_fn")
            reader = read_by_ancestor(model, n)
            if reader is not None:
                raise NetcompressError(f"separable: layer {n!r} cannot be replaced: the forward code of {reader!r} "
                                       "reads its attributes (e.g. .weight); leave it out (filter_fn; in a recipe, exclude)")
            names.append(n)
    return names or _none_selected()


def _none_selected() -> list[str]:
    raise NetcompressError("separable: no standard k x k Conv2d (groups=1, in_channels > 1) selected")


@torch.no_grad()
def separable_conv(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise + pointwise approximation of `conv` by per-input-channel rank-1 SVD (step 1 above)."""
    w = conv.weight.detach().double()
    o, c, kh, kw = w.shape
    slices = w.permute(1, 0, 2, 3).reshape(c, o, kh * kw)  # per input channel: M x k^2
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)  # batched over channels
    r = s[:, 0].sqrt()
    dw = nn.Conv2d(c, c, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=c, bias=False, padding_mode=conv.padding_mode)
    pw = nn.Conv2d(c, o, 1, bias=conv.bias is not None)
    dt, dev = conv.weight.dtype, conv.weight.device
    dw.weight.copy_((vh[:, 0, :] * r[:, None]).reshape(c, 1, kh, kw).to(dt))
    pw.weight.copy_((u[:, :, 0] * r[:, None]).T.reshape(o, c, 1, 1).to(dt))
    if conv.bias is not None:
        pw.bias.copy_(conv.bias.detach())
    return nn.Sequential(dw, pw).to(dev)


@torch.no_grad()
def _refit_pointwise(seq: nn.Sequential, conv: nn.Conv2d, inputs: torch.Tensor, ridge: float) -> None:
    dw, pw = seq[0], seq[1]
    z = dw(inputs).permute(0, 2, 3, 1).reshape(-1, dw.out_channels).double()
    y = nn.functional.conv2d(inputs, conv.weight, None, conv.stride, conv.padding, conv.dilation) \
        if conv.padding_mode == "zeros" else conv._conv_forward(inputs, conv.weight, None)
    y = y.permute(0, 2, 3, 1).reshape(-1, conv.out_channels).double()
    if pw.bias is not None:
        z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], 1)
    a = z.T @ z
    lam = ridge * a.diagonal().mean().clamp_min(1e-12)
    sol = torch.linalg.solve(a + lam * torch.eye(len(a), dtype=a.dtype, device=a.device), z.T @ y)  # (C[+1]) x M
    c = dw.out_channels
    pw.weight.copy_(sol[:c].T.reshape(pw.weight.shape).to(pw.weight.dtype))
    if pw.bias is not None:
        pw.bias.copy_((sol[c] + conv.bias.double()).to(pw.bias.dtype))
    _balance(dw, pw)


@torch.no_grad()
def _balance(dw: nn.Conv2d, pw: nn.Conv2d) -> None:
    """Rescale each channel's depthwise filter by a and its pointwise column by 1/a so both have the
    same norm (the function is unchanged); unbalanced factors make SGD unstable."""
    d = dw.weight.flatten(1).norm(dim=1)  # (C,)
    p = pw.weight.flatten(2).norm(dim=(0, 2))  # (C,)
    a = torch.where((d > 0) & (p > 0), (p / d.clamp_min(1e-12)).sqrt(), torch.ones_like(d))
    dw.weight.mul_(a.view(-1, 1, 1, 1))
    pw.weight.div_(a.view(1, -1, 1, 1))


def separable(model: nn.Module, filter_fn: FilterFn | None = None, *, calibration: torch.Tensor | None = None,
              ridge: float = 1e-4) -> nn.Module:
    """Replace each standard k x k Conv2d by depthwise k x k + pointwise 1 x 1; returns a new model.

    Args:
        model: any nn.Module (left unchanged).
        filter_fn: `filter_fn(module, name) -> bool` picks the convs; default every Conv2d with
            groups=1, kernel > 1 and more than one input channel (MobileNet also keeps its first conv
            standard). A selected conv that is not such a layer is refused, naming it.
        calibration: optional real inputs (e.g. `data.calibration(256)`); when given, each pointwise
            conv is re-fitted by least squares to the original layer's outputs on them.
        ridge: relative ridge regularisation of that fit.

    Example:
        >>> from netcompress.models import create
        >>> m = create("vgg-small", in_channels=1, input_size=28)
        >>> sep = separable(m)
        >>> type(sep.features[3]).__name__, sep.features[3][0].groups
        ('Sequential', 32)

    Raises:
        NetcompressError: nothing to convert, or a selected layer that cannot be converted.
    """
    names = _selected(model, filter_fn)
    if ridge < 0:
        raise NetcompressError(f"separable: ridge must be >= 0, got {ridge}")
    inputs: dict[str, torch.Tensor] = {}
    if calibration is not None:
        mods = dict(model.named_modules())
        def keep(name: str):
            def pre(module: nn.Module, inp: tuple) -> None:
                inputs[name] = inp[0].detach()

            return pre

        hooks = [mods[n].register_forward_pre_hook(keep(n)) for n in names]
        try:
            with eval_mode(model), torch.no_grad():
                dev = next(model.parameters()).device
                call(model, to_device(calibration, dev))
        finally:
            for h in hooks:
                h.remove()
    new = copy.deepcopy(model)
    mods = dict(new.named_modules())
    for n in names:
        conv = mods[n]
        seq = separable_conv(conv)
        if n in inputs:
            _refit_pointwise(seq, conv, inputs[n], ridge)
        seq.train(conv.training)
        parent_name, _, leaf = n.rpartition(".")
        setattr(new.get_submodule(parent_name) if parent_name else new, leaf, seq)
    return new
