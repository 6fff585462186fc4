"""Capture intermediate features with forward hooks, by fully qualified module name.

Nobody edits a model: `Taps(model, ["layer2", "features.3"])` records each named module's output
on every forward pass, and removes its hooks on `close()` or when the `with` block ends.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from netcompress.core.errors import NetcompressError


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; a clear error lists near names when it does not exist."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n and (name in n or n in name)][:8]
        hint = f"; similar: {', '.join(close)}" if close else f"; first names: {', '.join(list(modules)[1:9])}"
        raise NetcompressError(f"model has no module named {name!r}{hint}")
    return modules[name]


class Taps:
    """Forward hooks that keep the latest output of each named module.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> with Taps(m, ["0"]) as taps:
        ...     _ = m(torch.zeros(2, 4))
        ...     taps["0"].shape
        torch.Size([2, 3])
    """

    def __init__(self, model: nn.Module, names: Iterable[str], detach: bool = False) -> None:
        self.names = list(names)
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        mods = [resolve_module(model, n) for n in self.names]  # validate all before hooking any
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in zip(self.names, mods)]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            out = output
            while isinstance(out, (tuple, list)) and out:  # the first tensor, however deep (PVT v2's ((x, h, w),))
                out = out[0]
            self.features[name] = out.detach() if self.detach else out

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.features:
            raise NetcompressError(f"module {name!r} produced no output yet (was forward called?)")
        return self.features[name]

    def clear(self) -> None:
        self.features.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "Taps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
