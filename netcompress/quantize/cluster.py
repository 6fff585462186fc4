"""k-means weight sharing and centroid fine-tuning (Han et al. 2016, "Deep Compression", section 3).

Each selected layer's non-zero weights are clustered into 2^bits shared values; every weight is
replaced by its centroid, so the layer stores a small codebook plus one index per weight. Pruned
zeros stay exactly zero and are not a cluster. Fine-tuning (`CentroidFineTune`) trains the shared
values: the gradient of each centroid is the sum of the gradients of its weights (paper eq. 3).

1-D k-means is fast here: the weights are sorted once, then each Lloyd iteration needs only
`searchsorted` of the k-1 midpoints and prefix sums (O(k log n) per iteration, not O(nk)).

Example:
    >>> import torch, netcompress as nc
    >>> m = torch.nn.Sequential(torch.nn.Linear(20, 10))
    >>> info = nc.quantize.cluster_(m, bits=2)
    >>> int(torch.unique(m[0].weight).numel()) <= 4
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layers import is_hf_conv1d
from netcompress.core.method import Method

Init = Literal["linear", "density", "random", "k-means++", "optimal", "best"]
FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class KMeansResult:
    """Sorted centroids, the cluster of each input value, and the sum of squared errors."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    iterations: int


def _init_centroids(xs: np.ndarray, k: int, init: str, rng: np.random.Generator, cum=None, cum2=None) -> np.ndarray:
    if init == "optimal":
        return _optimal_on_grid(xs, k, cum, cum2)
    if init == "linear":  # evenly spaced between min and max: keeps the rare large weights (paper's choice)
        return np.linspace(xs[0], xs[-1], k)
    if init == "density":  # evenly spaced on the CDF
        return xs[np.minimum(((np.arange(k) + 0.5) / k * len(xs)).astype(np.int64), len(xs) - 1)]
    if init == "random":  # Forgy: k distinct weights at random
        return np.sort(xs[rng.choice(len(xs), size=k, replace=False)])
    if init == "k-means++":  # Arthur & Vassilvitskii 2007, on a subsample of at most 20,000 values
        sub = xs[np.sort(rng.choice(len(xs), size=min(len(xs), 20_000), replace=False))]
        cs = [sub[rng.integers(len(sub))]]
        d2 = (sub - cs[0]) ** 2
        for _ in range(k - 1):
            tot = d2.sum()
            c = sub[rng.integers(len(sub))] if tot <= 0 else sub[min(int(np.searchsorted(np.cumsum(d2), rng.random() * tot)), len(sub) - 1)]
            cs.append(c)
            d2 = np.minimum(d2, (sub - c) ** 2)
        return np.sort(np.array(cs))
    raise NetcompressError(f"k-means init {init!r}; valid: linear, density, random, optimal, best")


def _optimal_on_grid(xs: np.ndarray, k: int, cum: np.ndarray, cum2: np.ndarray) -> np.ndarray:
    """Exact optimal k-segmentation of the sorted values with boundaries restricted to a quantile grid.

    Dynamic programming of Wang & Song 2011 (Ckmeans.1d.dp) over B grid cells: the cost of a
    segment is its exact sum of squared errors from prefix sums; each of the k levels is one
    vectorised (B+1) x (B+1) minimisation. Lloyd iterations afterwards free the boundaries.
    """
    n = len(xs)
    B = int(min(2048, max(4 * k, np.sqrt((1 << 28) / k)), n))
    E = np.unique(np.linspace(0, n, B + 1).astype(np.int64))
    P1, P2, PN = cum[E], cum2[E], E.astype(np.float64)
    m = len(E)
    k = min(k, m - 1)
    d1 = P1[None, :] - P1[:, None]
    cost = (P2[None, :] - P2[:, None]) - d1 * d1 / np.maximum(PN[None, :] - PN[:, None], 1)
    cost[np.tril_indices(m)] = np.inf
    D = cost[0].copy()
    back = np.zeros((k, m), dtype=np.int64)
    for j in range(1, k):
        tot = D[:, None] + cost
        back[j] = np.argmin(tot, axis=0)
        D = tot[back[j], np.arange(m)]
    cuts = [m - 1]
    for j in range(k - 1, 0, -1):
        cuts.append(int(back[j][cuts[-1]]))
    cuts.append(0)
    idx = E[np.array(cuts[::-1])]
    cnt = np.diff(idx)
    keep = cnt > 0
    return ((cum[idx[1:]] - cum[idx[:-1]])[keep] / cnt[keep])


def _lloyd_sorted(xs: np.ndarray, cs: np.ndarray, cum: np.ndarray, cum2: np.ndarray, max_iter: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    n = len(xs)
    it = 0
    for it in range(1, max_iter + 1):
        cs = np.unique(cs)  # sorted, duplicates merged
        mids = (cs[1:] + cs[:-1]) / 2
        b = np.concatenate([[0], np.searchsorted(xs, mids, side="right"), [n]])
        cnt = np.diff(b)
        sums = cum[b[1:]] - cum[b[:-1]]
        keep = cnt > 0
        new = (sums / np.maximum(cnt, 1))[keep]
        missing = k - len(new)
        if missing > 0:  # re-seed empty clusters by splitting the clusters with the largest error
            c, s2 = cnt[keep], (cum2[b[1:]] - cum2[b[:-1]])[keep]
            var = np.maximum(s2 / c - new * new, 0)
            top = np.argsort(-(var * c))[:missing]
            top = top[var[top] > 0]
            new = np.sort(np.concatenate([new, new[top] + 0.5 * np.sqrt(var[top])]))
        if len(new) == len(cs) and np.array_equal(new, cs):
            break
        cs = new
    cs = np.unique(cs)
    mids = (cs[1:] + cs[:-1]) / 2
    b = np.concatenate([[0], np.searchsorted(xs, mids, side="right"), [n]])
    return cs, b, it


def _sse(cs: np.ndarray, b: np.ndarray, cum: np.ndarray, cum2: np.ndarray) -> float:
    cnt = np.diff(b)
    s1 = cum[b[1:]] - cum[b[:-1]]
    s2 = cum2[b[1:]] - cum2[b[:-1]]
    return float(np.maximum(s2 - 2 * cs * s1 + cnt * cs * cs, 0).sum())


def kmeans_1d(values: np.ndarray | torch.Tensor, k: int, init: Init = "linear", max_iter: int = 1000,
              seed: int = 0, relocate: int = 0) -> KMeansResult:
    """Lloyd's k-means on scalars via sorting and prefix sums (exact Lloyd iterations).

    Args:
        values: 1-D array of values to cluster.
        k: number of clusters (fewer are returned when there are fewer distinct values).
        init: 'linear' (Han et al.'s default), 'density', 'random' (Forgy) or 'best' (all three, the
            lowest sum of squared errors wins).
        max_iter: Lloyd iterations at most (stops earlier at a fixed point).
        seed: for 'random'.
        relocate: after convergence, up to this many moves that merge the two closest clusters and
            split the one with the largest error, each kept only when the final error drops
            (escapes Lloyd's local minima; 'best' uses 50).

    Returns:
        `KMeansResult` with sorted float64 centroids and int64 labels aligned with `values`.
    """
    x = values.detach().cpu().double().numpy().ravel() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64).ravel()
    if x.size == 0:
        raise NetcompressError("k-means: no values to cluster")
    if k < 1:
        raise NetcompressError(f"k-means: k must be >= 1, got {k}")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    cum = np.concatenate([[0.0], np.cumsum(xs)])
    cum2 = np.concatenate([[0.0], np.cumsum(xs * xs)])
    k = min(k, int((np.diff(xs) != 0).sum()) + 1)
    rng = np.random.default_rng(seed)
    inits = ["linear", "density"] + ["k-means++"] * 4 if init == "best" else [init]
    relocate = max(relocate, 50 if init == "best" else 0)
    best = None
    for name in inits:
        cs0 = _init_centroids(xs, min(k, len(xs)), name, rng, cum, cum2)
        cs, b, it = _lloyd_sorted(xs, cs0, cum, cum2, max_iter, len(cs0))
        sse = _sse(cs, b, cum, cum2)
        if best is None or sse < best[0]:
            best = (sse, cs, b, it)
    sse, cs, b, it = best
    for _ in range(relocate):  # merge the cheapest neighbour pair, split the worst cluster; keep if better
        cnt = np.diff(b).astype(np.float64)
        if len(cs) < 3:
            break
        s1 = cum[b[1:]] - cum[b[:-1]]
        s2 = cum2[b[1:]] - cum2[b[:-1]]
        err = np.maximum(s2 - s1 * s1 / np.maximum(cnt, 1), 0)
        ward = cnt[:-1] * cnt[1:] / np.maximum(cnt[:-1] + cnt[1:], 1) * np.diff(cs) ** 2
        j = int(np.argmin(ward))
        err_split = err.copy()
        err_split[[j, j + 1]] = -1
        w = int(np.argmax(err_split))
        if err_split[w] <= ward[j]:
            break
        std = np.sqrt(err[w] / max(cnt[w], 1))
        merged = (cs[j] * cnt[j] + cs[j + 1] * cnt[j + 1]) / max(cnt[j] + cnt[j + 1], 1)
        cand = np.sort(np.concatenate([np.delete(cs, [j, j + 1, w]), [merged, cs[w] - std / 2, cs[w] + std / 2]]))
        cs2, b2, it2 = _lloyd_sorted(xs, cand, cum, cum2, max_iter, len(cand))
        sse2 = _sse(cs2, b2, cum, cum2)
        if sse2 >= sse * (1 - 1e-12):
            break
        sse, cs, b, it = sse2, cs2, b2, it + it2
    labels_sorted = np.repeat(np.arange(len(cs)), np.diff(b))
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return KMeansResult(cs, labels, sse, it)


def _bits_for(module: nn.Module, name: str, bits: int | Mapping[str, int]) -> int | None:
    if isinstance(bits, int):
        return bits
    if name in bits:
        return bits[name]
    return bits.get(type(module).__name__)


def _default_filter(module: nn.Module, name: str) -> bool:
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or is_hf_conv1d(module)) and getattr(module, "weight", None) is not None


def cluster_(model: nn.Module, bits: int | Mapping[str, int] = 5, init: Init = "linear",
             filter_fn: FilterFn | None = None, max_iter: int = 1000, seed: int = 0,
             codebook_dtype: Literal["float32", "float16"] = "float16") -> dict[str, dict[str, Any]]:
    """Share weights by per-layer 1-D k-means, in place (Han et al. 2016, section 3).

    Args:
        model: the model; each selected layer's `weight` gets at most 2^bits distinct non-zero values.
        bits: an int for every layer, or a mapping from module type name ('Conv2d', 'Linear') or
            qualified module name to bits; layers not in the mapping are left alone.
        init: centroid initialisation ('linear' as in the paper, 'density', 'random', 'best').
        filter_fn: `filter_fn(module, name) -> bool` selects layers (default: Conv and Linear).
        max_iter: Lloyd iterations per layer at most.
        seed: for random initialisation.
        codebook_dtype: 'float16' rounds every shared value to the nearest fp16 number, so the
            archive stores the codebook in 2 bytes per entry (exactly).

    Returns:
        Per-layer info `{name: {"bits", "clusters", "nonzero", "inertia"}}`.

    Example:
        cluster_(model, bits={"Conv2d": 8, "Linear": 5})
    """
    if isinstance(bits, Mapping):
        bad = {k: v for k, v in bits.items() if not isinstance(v, int) or not 1 <= v <= 16}
    else:
        bad = {} if isinstance(bits, int) and 1 <= bits <= 16 else {"bits": bits}
    if bad:
        raise NetcompressError(f"cluster_: bits must be integers in 1..16, got {bad}")
    if codebook_dtype not in ("float32", "float16"):
        raise NetcompressError(f"cluster_: codebook_dtype {codebook_dtype!r}; valid: float32, float16")
    if init not in ("linear", "density", "random", "k-means++", "optimal", "best"):
        raise NetcompressError(f"cluster_: init {init!r}; valid: linear, density, random, k-means++, optimal, best")
    select = filter_fn or _default_filter
    mods = dict(model.named_modules())
    if isinstance(bits, Mapping):
        types = {type(m).__name__ for m in mods.values()}
        unknown = [k for k in bits if k not in mods and k not in types and not isinstance(getattr(nn, k, None), type)]
        if unknown:
            raise NetcompressError(f"cluster_: {unknown} match no module name or type in the model "
                                   f"(types: {', '.join(sorted(t for t in types if t in ('Conv2d', 'Conv1d', 'Linear')))})")
    plan = []
    for name, m in mods.items():
        if not select(m, name):
            continue
        b = _bits_for(m, name, bits)
        if b is not None:
            plan.append((name, m, b))
    if not plan:
        raise NetcompressError("cluster_: no layer selected (check bits and filter_fn)")
    info: dict[str, dict[str, Any]] = {}
    new_weights = []
    for name, m, b in plan:  # compute everything first, then write (atomic)
        w = m.weight.detach()
        flat = w.reshape(-1)
        nz = torch.nonzero(flat != 0).squeeze(1)
        if nz.numel() == 0:
            info[name] = {"bits": b, "clusters": 0, "nonzero": 0, "inertia": 0.0}
            continue
        res = kmeans_1d(flat[nz], 1 << b, init=init, max_iter=max_iter, seed=seed)
        cents = torch.tensor(res.centroids, dtype=w.dtype)
        if codebook_dtype == "float16":
            cents = cents.half().to(w.dtype)
        new = torch.zeros_like(flat)
        new[nz] = cents[torch.from_numpy(res.labels)].to(w.dtype)
        new_weights.append((m, new.view_as(w)))
        info[name] = {"bits": b, "clusters": int(len(cents)), "nonzero": int(nz.numel()), "inertia": res.inertia,
                      "centroids": [float(c) for c in cents]}
    with torch.no_grad():
        for m, new in new_weights:
            m.weight.copy_(new)
    return info


class CentroidFineTune(Method):
    """Train the shared centroids of a clustered model (Han et al. 2016, section 3.3, eq. 3).

    Each layer's weights keep their cluster assignment; after `backward` every weight's gradient
    is replaced by the summed (`reduce='sum'`, the paper) or averaged gradient of its cluster, so
    the optimizer moves all members of a cluster together. Pruned zeros get no gradient. After
    each step the weights are re-projected onto their cluster means, so sharing is exact.

    Example:
        ft = CentroidFineTune(reduce="mean")
        nc.train.fit(model, data, methods=[ft], epochs=1, lr=0.001)
    """

    name = "centroid-finetune"

    def __init__(self, reduce: Literal["sum", "mean"] = "mean", filter_fn: FilterFn | None = None,
                 codebook_dtype: Literal["float32", "float16"] = "float16") -> None:
        if reduce not in ("sum", "mean"):
            raise NetcompressError(f"CentroidFineTune: reduce {reduce!r}; valid: sum, mean")
        self.reduce = reduce
        self.codebook_dtype = codebook_dtype
        self.filter_fn = filter_fn or _default_filter
        self.layers: dict[str, tuple[torch.Tensor, int]] = {}

    def prepare(self, model: nn.Module) -> nn.Module:
        self.layers = {}
        for name, m in model.named_modules():
            if not self.filter_fn(m, name):
                continue
            flat = m.weight.detach().reshape(-1)
            vals, inv = torch.unique(flat, return_inverse=True)
            if vals.numel() > 1 << 16:
                continue  # not a clustered layer
            zero = (vals == 0).nonzero()
            labels = inv.clone()
            if zero.numel():
                labels[inv == zero.item()] = -1
            self.layers[name] = (labels, int(vals.numel()))
        if not self.layers:
            raise NetcompressError("CentroidFineTune: no clustered layer found (run cluster_ first)")
        return model

    def _mods(self, model: nn.Module):
        mods = dict(model.named_modules())
        for name, (labels, k) in self.layers.items():
            yield mods[name], labels.to(mods[name].weight.device), k

    def after_backward(self, model: nn.Module) -> None:
        for m, labels, k in self._mods(model):
            g = m.weight.grad
            if g is None:
                continue
            flat = g.reshape(-1)
            valid = labels >= 0
            lab = labels.clamp(min=0)
            s = torch.zeros(k, dtype=g.dtype, device=g.device).index_add_(0, lab[valid], flat[valid])
            if self.reduce == "mean":
                cnt = torch.bincount(lab[valid], minlength=k).clamp(min=1).to(g.dtype)
                s = s / cnt
            m.weight.grad = torch.where(valid, s[lab], torch.zeros_like(flat)).view_as(g)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for m, labels, k in self._mods(model):
            flat = m.weight.reshape(-1)
            valid = labels >= 0
            lab = labels.clamp(min=0)
            s = torch.zeros(k, dtype=flat.dtype, device=flat.device).index_add_(0, lab[valid], flat[valid])
            cnt = torch.bincount(lab[valid], minlength=k).clamp(min=1).to(flat.dtype)
            cent = s / cnt
            m.weight.copy_(torch.where(valid, cent[lab], torch.zeros_like(flat)).view_as(m.weight))

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Round the trained shared values to `codebook_dtype` (float16: 2-byte codebooks)."""
        if self.codebook_dtype == "float16":
            for m, _, _ in self._mods(model):
                m.weight.copy_(m.weight.half().to(m.weight.dtype))
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"labels": {n: l for n, (l, _) in self.layers.items()}, "k": {n: k for n, (_, k) in self.layers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers = {n: (state["labels"][n], int(state["k"][n])) for n in state.get("labels", {})}
