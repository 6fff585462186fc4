"""The model zoo.

Every model built by `create` carries `model.netcompress_spec = {"name": ..., "kwargs": {...}}`, a
plain dict that lets `netcompress.models.save` rebuild the architecture without pickling classes.
Models use `nn.Flatten` and adaptive pooling, never hard-coded sizes in `forward`, so structured
pruning can shrink any layer and the model still runs.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.registry import Registry
from netcompress.core.seeding import forked_rng
from netcompress.models.transformers import GPT, ViT

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _flat_features(features: nn.Module, in_channels: int, input_size: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, input_size, input_size)).flatten(1).shape[1])


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998), the fully connected net of Deep Compression's Table 1."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=1.0):
        super().__init__()
        d = in_channels * input_size * input_size
        h1, h2 = _w(300, width), _w(100, width)
        self.flatten = nn.Flatten()
        self.fc1, self.relu1 = nn.Linear(d, h1), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(h1, h2), nn.ReLU()
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant used by Deep Compression (20 and 50 5x5 filters, fc 500): 431K params."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=1.0):
        super().__init__()
        c1, c2, f = _w(20, width), _w(50, width), _w(500, width)
        pad = 0 if input_size >= 20 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(_flat_features(self.features, in_channels, input_size), f), nn.ReLU(), nn.Linear(f, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


class VGGSmall(nn.Module):
    """A small VGG with BatchNorm (conv-bn-relu x6, three max-pools), for pruning criteria studies."""

    CFG = (32, 32, "M", 64, 64, "M", 128, 128, "M")

    def __init__(self, num_classes=10, in_channels=3, input_size=32, width=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2) if input_size >= 16 else nn.Identity())
            else:
                layers += [nn.Conv2d(c, _w(v, width), 3, padding=1, bias=False), nn.BatchNorm2d(_w(v, width)), nn.ReLU()]
                c = _w(v, width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; projection shortcut (1x1 conv + BN) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, section 4.2): 16/32/64 channels."""

    def __init__(self, depth=20, num_classes=10, in_channels=3, input_size=32, width=1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise NetcompressError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        w = [_w(16, width), _w(32, width), _w(64, width)]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        stages, cin = [], w[0]
        for i, c in enumerate(w):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _dw_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class MobileNetSmall(nn.Module):
    """A MobileNet-v1-style net (Howard et al. 2017) sized for 28x28 / 32x32 inputs."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=1.0):
        super().__init__()
        c = [_w(v, width) for v in (16, 32, 64, 64, 128, 128)]
        s = [1, 2, 1, 2, 1] if input_size >= 16 else [1, 1, 1, 2, 1]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU())
        self.blocks = nn.Sequential(*[_dw_block(c[i], c[i + 1], s[i]) for i in range(5)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c[-1], num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


def _reg(name: str, fn: Callable[..., nn.Module], help: str) -> None:
    MODELS.register(name, fn, help=help)


for _base, _cls, _help in [
    ("lenet300", LeNet300, "LeNet-300-100"),
    ("lenet5", LeNet5, "LeNet-5 (Caffe variant)"),
    ("vgg-small", VGGSmall, "6-conv VGG with BatchNorm"),
    ("mobilenet-small", MobileNetSmall, "MobileNet-v1-style, depthwise separable"),
]:
    _reg(_base, _cls, _help)
    _reg(f"{_base}-half", (lambda c: lambda **kw: c(**{"width": 0.5, **kw}))(_cls), f"{_help}, half width")
    _reg(f"{_base}-quarter", (lambda c: lambda **kw: c(**{"width": 0.25, **kw}))(_cls), f"{_help}, quarter width")
_reg("resnet20", lambda **kw: CifarResNet(20, **kw), "CIFAR ResNet-20")
_reg("resnet56", lambda **kw: CifarResNet(56, **kw), "CIFAR ResNet-56")
_reg("resnet8", lambda **kw: CifarResNet(8, **kw), "CIFAR ResNet-8 (a small student)")
_reg("vit-tiny", ViT,
     "Vision Transformer, patch 7 on 28 px (largest <= 7 that tiles), dim 64, 4 blocks x 4 heads, class token (~0.24M params with the conv stem on 28 px)")
_reg("vit-tiny-half", lambda **kw: ViT(**{"dim": 32, "depth": 2, "num_heads": 2, **kw}),
     "vit-tiny at half width and half depth (a student)")
_reg("gpt-tiny", GPT,
     "LLaMA-style decoder: RMSNorm, rotary, SwiGLU, optional GQA (n_kv_heads) and tied head; dim 128, 4 blocks (~0.9M params)")
_reg("gpt-tiny-half", lambda **kw: GPT(**{"dim": 64, "depth": 2, "n_heads": 2, **kw}),
     "gpt-tiny at half width and half depth (a student)")

# entries that wrap another model (rebuilt from a saved spec), not buildable from a name alone
COMPOSITE = {"early-exit": "backbone", "early-exit-lm": "lm"}  # name -> the argument naming the inner model


def list_models(pattern: str = "*", composite: bool = False) -> list[str]:
    """Zoo names; `composite=True` adds the wrappers that need a backbone (e.g. early-exit)."""
    return [n for n in MODELS.list(pattern) if composite or n not in COMPOSITE]


_EXPLICIT_INIT = ("googlenet", "inception_v3")  # torchvision builders whose init_weights default is deprecated


def _torchvision_model(name: str, **kwargs: Any) -> nn.Module:
    import torchvision

    kwargs.pop("input_size", None)
    in_channels = kwargs.pop("in_channels", 3)
    if in_channels != 3:
        raise NetcompressError(f"torchvision:{name} takes 3 input channels, not {in_channels}")
    weights = kwargs.pop("weights", None)
    if weights is None and name in _EXPLICIT_INIT:
        # torchvision warns (FutureWarning) that these two builders' default initialisation will change;
        # asking for today's default explicitly keeps the same weights and answers the warning
        kwargs.setdefault("init_weights", True)
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except ValueError as e:
        raise NetcompressError(f"torchvision:{name}: {e}") from None


def _python_factory(ref: str, **kwargs: Any) -> nn.Module:
    try:
        mod_name, fn_name = ref.rsplit(":", 1)
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ValueError, ImportError, AttributeError) as e:
        raise NetcompressError(f"python:{ref}: cannot import factory ({e}); use python:package.module:function") from None
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        # shape arguments filled in from the data are offered, not imposed: drop those it does not take
        kwargs = {k: v for k, v in kwargs.items() if k in sig.parameters or k not in _SHAPE_KEYS}
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            raise NetcompressError(f"python:{ref}: the factory cannot be called with {sorted(kwargs)} ({e})") from None
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise NetcompressError(f"python:{ref}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


_SHAPE_KEYS = ("num_classes", "in_channels", "input_size")


def _is_file_ref(name: str) -> bool:
    """Whether `name` names a saved model file rather than an architecture."""
    if name.startswith(("python:", "torchvision:", "timm:", "hf:")):
        return False
    return name.endswith((".pt", ".ncm", ".ncz")) or "/" in name


FILE_LOADERS: dict[str, Callable[[str], nn.Module]] = {}
"""Model file formats of the layers above, by file suffix (``.ncz``: `netcompress.archive` adds
its `unpack` when imported), so `create` reads them without this package importing theirs."""


def create_for(name: str, data: Any, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """`create(name)` shaped for a dataset: num_classes, in_channels and input_size default to the
    data's; explicit `kwargs` win. A saved file is loaded as it is. `seed`: see `create`.

    Example:
        >>> import netcompress as nc
        >>> create_for("lenet300", nc.data.load("digits")).fc1.in_features
        64
    """
    if _is_file_ref(name):
        return create(name)
    kwargs.setdefault("num_classes", data.num_classes)
    kwargs.setdefault("in_channels", data.input_shape[0])
    kwargs.setdefault("input_size", data.input_shape[-1])
    return create(name, seed=seed, **kwargs)


def create(name: str, num_classes: int = 10, in_channels: int | None = None, input_size: int | None = None,
           *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name: a zoo name, ``torchvision:NAME``, ``timm:NAME``, ``hf:NAME_OR_CONFIG``
    (see `netcompress.models.sources`), ``python:module:factory`` or a saved file.

    With `seed`, the initial weights are a function of the seed alone (torch's global RNG is used
    under that seed and restored afterwards); without it they come from the global RNG.

    Example:
        >>> m = create("lenet5", num_classes=10)
        >>> sum(p.numel() for p in m.parameters())
        431080
    """
    from netcompress.models import io

    if seed is not None:
        with forked_rng(seed, cuda=False):
            return create(name, num_classes, in_channels, input_size, **kwargs)
    if name in COMPOSITE and COMPOSITE[name] not in kwargs:
        raise NetcompressError(f"model {name!r} wraps another model and cannot be built from its name; "
                               "it is made by a stage (e.g. `netcompress dynamic`); pass its saved file instead")
    loader = next((fn for suffix, fn in FILE_LOADERS.items() if name.endswith(suffix)), None)
    if loader is not None:
        return loader(name)
    if _is_file_ref(name):
        return io.load(name)
    kw = dict(kwargs, num_classes=num_classes)
    if in_channels is not None:
        kw["in_channels"] = in_channels
    if input_size is not None:
        kw["input_size"] = input_size
    if name.startswith(("timm:", "hf:")):
        return _named_source(name, kw)
    if name.startswith("torchvision:"):
        model = _torchvision_model(name.split(":", 1)[1], **dict(kw))
    elif name.startswith("python:"):
        model = _python_factory(name.split(":", 1)[1], **kw)
    else:
        model = MODELS.get(name)(**kw)
    model.netcompress_spec = {"name": name, "kwargs": kw}
    return model


def _named_source(name: str, kw: dict[str, Any]) -> nn.Module:
    """``timm:`` / ``hf:`` models; the spec names the source and every setting, never code."""
    from netcompress.models import sources

    prefix, _, rest = name.partition(":")
    ref, query = sources.parse_ref(rest)
    if not ref:
        raise NetcompressError(f"{name!r}: name the model after '{prefix}:'")
    kw = {**kw, **query}
    if prefix == "timm":
        model, spec_kw = sources.build_timm(ref, kw)
        model.netcompress_spec = {"name": f"timm:{ref}", "kwargs": spec_kw}
    else:
        model, spec_kw, model_type = sources.build_hf(ref, kw)
        model.netcompress_spec = {"name": f"hf:{model_type}", "kwargs": spec_kw}
    return model


def _lazy(module: str, attr: str) -> Callable[..., nn.Module]:
    """A factory imported on first use (the dynamic family imports this module)."""
    return lambda **kw: getattr(importlib.import_module(module), attr)(**kw)


_reg("msdnet-small", _lazy("netcompress.dynamic.msdnet", "MSDNetSmall"),
     "multi-scale dense net with 4 exits (Huang et al. 2018), 28x28 / 32x32")
_reg("early-exit", _lazy("netcompress.dynamic.early_exit", "build_early_exit"),
     "a backbone with exit heads (made by netcompress.dynamic.early_exit; rebuilt on load)")
_reg("early-exit-lm", _lazy("netcompress.dynamic.lm_exit", "build_early_exit_lm"),
     "a decoder LM with early exits (made by netcompress.dynamic.lm_exit; rebuilt on load)")
