"""Sanity checks of a result against its controls: a collapsed method must not look like a success."""
from __future__ import annotations

from typing import Any

# keys of a stage's facts that hold the accuracy of a control run, and what that control is
CONTROLS = {
    "scratch_acc": "the same student trained alone",
    "direct_kd_acc": "the student distilled directly from the teacher",
}


def result_warnings(accuracy: float | None, num_classes: int | None, extra: dict[str, Any] | None = None) -> list[str]:
    """Warnings for an accuracy below chance (1 / classes) or below a control found in `extra`.

    Example:
        >>> result_warnings(0.074, 10)
        ['accuracy 7.40% is below chance (10.00% for 10 classes): the model has collapsed']
        >>> result_warnings(0.636, 10, {"scratch_acc": 0.941})[0][:60]
        'accuracy 63.60% is below its control, the same student train'
    """
    out: list[str] = []
    if accuracy is None:
        return out
    if num_classes and num_classes > 1:
        chance = 1.0 / num_classes
        if accuracy < chance:
            out.append(f"accuracy {100 * accuracy:.2f}% is below chance ({100 * chance:.2f}% for {num_classes} classes): "
                       "the model has collapsed")
        elif accuracy < 1.5 * chance:
            out.append(f"accuracy {100 * accuracy:.2f}% is barely above chance ({100 * chance:.2f}% for "
                       f"{num_classes} classes): the model has collapsed")
    for key, what in CONTROLS.items():
        ctrl = (extra or {}).get(key)
        if isinstance(ctrl, (int, float)) and accuracy < ctrl:
            out.append(f"accuracy {100 * accuracy:.2f}% is below its control, {what} "
                       f"({100 * ctrl:.2f}%, {100 * (ctrl - accuracy):.2f} points higher)")
    return out
