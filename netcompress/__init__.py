"""netcompress: make neural networks smaller and faster without losing accuracy, and prove it.

Importing netcompress never initialises CUDA.

Example:
    >>> import netcompress as nc
    >>> data = nc.data.load("mnist-5k")
    >>> model = nc.models.create("lenet5", num_classes=10)
    >>> history = nc.train.fit(model, data, epochs=1)        # doctest: +SKIP
    >>> print(nc.measure(model, data))                        # doctest: +SKIP
"""
from netcompress import data, models, train
from netcompress.core import Config, Method, NetcompressError, Registry, Taps
from netcompress.measure import Metrics, measure

__version__ = "0.1.0"

__all__ = [
    "__version__", "data", "models", "train", "measure", "Metrics",
    "Config", "Method", "NetcompressError", "Registry", "Taps",
]
