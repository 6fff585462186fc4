"""Early-exit thresholds for tests that compare two computations of the same exits."""
import torch


def between(conf: torch.Tensor, q: float) -> float:
    """A threshold near the `q` quantile of the confidences that no sample sits on: the middle of
    the widest gap between neighbouring sorted confidences within an eighth of the samples of that
    quantile. ONNX Runtime and eager (or two batch sizes) differ in the last float bits, so a
    threshold equal to a sample's confidence (a median: the lower middle of an even count) may send
    it to either exit."""
    c = conf.flatten().sort().values
    i, w = int(q * (len(c) - 1)), max(1, len(c) // 8)
    lo, hi = max(0, i - w), min(len(c) - 2, i + w)
    j = lo + int((c[lo + 1:hi + 2] - c[lo:hi + 1]).argmax())
    return float((c[j] + c[j + 1]) / 2)
