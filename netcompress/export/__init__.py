"""Deployment: export any model to ONNX Runtime or ExecuTorch (fp32 or int8), checked against
PyTorch on real inputs before it is written, and measured in the runtime that ships it."""
from netcompress.export.api import ExportResult, check_export, export, load_exported, lower
from netcompress.export.stages import ExportConfig, run_export

__all__ = ["ExportConfig", "ExportResult", "check_export", "export", "load_exported", "lower", "run_export"]
