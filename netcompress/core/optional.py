"""Optional dependencies: one clear line naming the package and the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

from netcompress.core.errors import NetcompressError


def need(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` or raise a NetcompressError saying `what` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise NetcompressError(f"{what} needs the {top} package: pip install 'netcompress[{extra}]'") from None
