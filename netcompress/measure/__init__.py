"""Honest metrics: accuracy, parameters, nonzeros, MACs, bytes on disk, CPU latency.

`nc.measure` is this package, and it is callable: ``nc.measure(model, data)`` is
``nc.measure.measure(model, data)``, so the package's other functions (``nc.measure.count_macs``)
are never shadowed by the function.

Example:
    >>> import netcompress as nc
    >>> m = nc.models.create("lenet300", in_channels=1, input_size=8)
    >>> nc.measure(m, example_inputs=nc.data.load("digits").example, latency=False).macs == nc.measure.count_macs(
    ...     m, nc.data.load("digits").example)
    True
"""
import sys
import types

from netcompress.measure.metrics import MacCounter, Metrics, count_macs, count_params, file_bytes, latency_ms, measure, macs_by_module

__all__ = ["MacCounter", "Metrics", "count_macs", "count_params", "file_bytes", "latency_ms", "measure", "macs_by_module"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Metrics:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
