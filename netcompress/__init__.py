"""netcompress: make neural networks smaller and faster without losing accuracy, and prove it.

Every technique family is a subpackage: `prune`, `distill`, `quantize`, `archive`, `design`,
`dynamic`; `export` writes models for ONNX Runtime and ExecuTorch; `data`, `models`, `train`, `measure` and `recipe` are the ground they stand on.
Importing netcompress never initialises CUDA.

Example:
    import netcompress as nc
    data = nc.data.load("mnist-5k")
    model = nc.models.create("lenet5", num_classes=10)
    history = nc.train.fit(model, data, epochs=10)
    small = nc.prune.channels(model, "fpgm", 0.5, example_inputs=data.example)
    print(nc.measure(small, data))

`nc.measure` is the measuring package and is callable (``nc.measure(model, data)``);
`nc.apply(kind, model, data, **config)` runs any stage kind from Python, the same handler as a
recipe stage and the CLI command of that name.
"""
from netcompress import (archive, data, design, distill, dynamic, measure, models, prune, quantize, recipe, report,
                         train)
from netcompress.export import export
from netcompress.core import Config, Method, NetcompressError, Registry, Taps
from netcompress.measure import Metrics
from netcompress.recipe import apply

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # ground
    "data", "models", "train", "measure", "Metrics", "recipe", "report", "apply",
    "Config", "Method", "NetcompressError", "Registry", "Taps",
    # technique families
    "prune", "distill", "quantize", "archive", "design", "dynamic",
    # deployment
    "export",
]
