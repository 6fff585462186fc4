"""Layer kinds that several techniques treat alike, recognised without importing their libraries.

Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections) is a Linear layer whose weight is
stored transposed, as (in_features, out_features): ``y = x @ W + b``. Weight pruning, k-means sharing
and low-rank factorisation treat it as the Linear it is.
"""
from __future__ import annotations

import torch
from torch import nn


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether `module` is Hugging Face's ``transformers.pytorch_utils.Conv1D``."""
    return (type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")
            and hasattr(module, "nf") and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() == 2)


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a Hugging Face ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out_features, in_features) weight of a Linear or a Hugging Face Conv1D (a view)."""
    return module.weight.t() if is_hf_conv1d(module) else module.weight


_SOURCE: dict[type, str] = {}
_SKIP = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, object)
_METHODS = r"(?!forward\b|train\b|eval\b|to\b|__call__\b)"


def _forward_source(cls: type) -> str:
    """The source of the forward methods (``forward``, ``forward_*``, ``_forward*``) of `cls` and its bases."""
    import inspect

    if cls not in _SOURCE:
        parts = []
        for c in cls.__mro__:
            if c in _SKIP:
                continue
            for k, v in vars(c).items():
                if callable(v) and (k == "forward" or k.startswith(("forward_", "_forward"))):
                    try:
                        parts.append(inspect.getsource(v))
                    except (OSError, TypeError):
                        pass
        _SOURCE[cls] = "\n".join(parts)
    return _SOURCE[cls]


def read_by_ancestor(model: nn.Module, name: str) -> str | None:
    """The module whose forward code reads an attribute of layer `name` (``self.proj.weight.dtype``,
    ``self.embeddings.patch_embeddings.projection.weight``...), or hands the layer itself to a
    function (``apply_tf_padding(x, self.convolution)``, which reads its stride), or None.

    Such a layer cannot be swapped for an ``nn.Sequential`` of two layers: Hugging Face's ViT, for
    one, reads its patch projection's ``weight.dtype``. Classes without Python source count as not
    reading anything.
    """
    import re

    parts = name.split(".")
    for i in range(len(parts)):
        anc_name = ".".join(parts[:i])
        anc = model.get_submodule(anc_name) if anc_name else model
        rel = re.escape(".".join(parts[i:]))
        # a type check (``isinstance(self.classifier, nn.Identity)``, timm's HRNet) reads nothing
        if re.search(rf"(?<!isinstance\()(?<!type\()self\.{rel}(\.{_METHODS}[A-Za-z_]\w*|\s*[,)])",
                     _forward_source(type(anc))):
            return anc_name or "(the model)"
    return None
