"""Pruning: unstructured weight masks and structured channel removal (see ARCHITECTURE.md)."""
from netcompress.prune.importance import CRITERIA
from netcompress.prune.structured import PrunePlan, channels, per_layer, plan

__all__ = ["CRITERIA", "channels", "plan", "PrunePlan", "per_layer"]
