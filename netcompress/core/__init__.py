"""Shared machinery: registry, configs, feature taps, training-method protocol, errors."""
from netcompress.core.errors import NetcompressError
from netcompress.core.registry import Registry
from netcompress.core.config import Config
from netcompress.core.method import Method
from netcompress.core.taps import Taps

__all__ = ["NetcompressError", "Registry", "Config", "Method", "Taps"]
