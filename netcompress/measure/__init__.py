"""Honest metrics: accuracy, parameters, nonzeros, MACs, bytes on disk, CPU latency."""
from netcompress.measure.metrics import Metrics, count_macs, count_params, file_bytes, latency_ms, measure, macs_by_module

__all__ = ["Metrics", "count_macs", "count_params", "file_bytes", "latency_ms", "measure", "macs_by_module"]
