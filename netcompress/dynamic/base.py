"""The multi-exit model protocol and confidence-based early-exit inference.

A multi-exit model computes its network in `num_exits` stages. Stage k turns a *state* (the
tensors still needed downstream, batch first) into the next state and the logits of exit k; the
last exit is the full network's output. Inference with a policy runs stage by stage and removes
from the batch every sample whose exit confidence passes the threshold, so the saving is real
wall time, not only counted MACs (BranchyNet, Teerapittayanon et al. 2016; Shallow-Deep Networks,
Kaya et al. 2019).

Policies and their thresholds (one per early exit, or one shared):

* ``max_softmax``: exit when the largest softmax probability is >= threshold. ``0`` exits every
  sample at the first head; any value > 1 (``NEVER``) lets nobody exit early.
* ``entropy``: exit when the entropy of the softmax divided by ``log(num_classes)`` (in [0, 1]) is
  <= threshold (BranchyNet's rule, normalised). ``1`` exits everything early, ``-1`` nothing.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode

POLICIES = ("max_softmax", "entropy")
NEVER = {"max_softmax": 2.0, "entropy": -1.0}


def confidence(logits: torch.Tensor, policy: str = "max_softmax") -> torch.Tensor:
    """Per-sample exit score, larger = more confident (max softmax, or minus normalised entropy).

    Example:
        >>> confidence(torch.zeros(1, 4)).item()
        0.25
    """
    p = F.softmax(logits if logits.dtype == torch.float32 else logits.float(), dim=1)
    if policy == "max_softmax":
        return p.amax(dim=1)
    if policy == "entropy":
        h = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
        return -h / math.log(max(logits.shape[1], 2))
    raise NetcompressError(f"unknown exit policy {policy!r}; choose one of {', '.join(POLICIES)}")


def score_cut(threshold: float, policy: str) -> float:
    """The user threshold mapped to the score scale of `confidence` (exit when score >= cut)."""
    if policy not in POLICIES:
        raise NetcompressError(f"unknown exit policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return float(threshold) if policy == "max_softmax" else -float(threshold)


def user_threshold(cut: float, policy: str) -> float:
    """Inverse of `score_cut`; an infinite cut becomes the finite `NEVER` value of the policy."""
    if math.isinf(cut):
        return NEVER[policy] if cut > 0 else (0.0 if policy == "max_softmax" else 1.0)
    return float(cut) if policy == "max_softmax" else -float(cut)


def expand_thresholds(thresholds: float | Sequence[float], num_exits: int) -> list[float]:
    """One threshold per early exit (`num_exits - 1` of them)."""
    if isinstance(thresholds, (int, float)):
        return [float(thresholds)] * (num_exits - 1)
    out = [float(t) for t in thresholds]
    if len(out) != num_exits - 1:
        raise NetcompressError(f"thresholds: {len(out)} given, the model has {num_exits - 1} early exits")
    return out


def subset_state(state: Any, keep: torch.Tensor) -> Any:
    """Keep the rows `keep` (bool mask or index) of every tensor in a (nested) state."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, keep) if keep.dtype != torch.bool else state[keep]
    if isinstance(state, (list, tuple)):
        return type(state)(subset_state(s, keep) for s in state)
    if isinstance(state, dict):
        return {k: subset_state(v, keep) for k, v in state.items()}
    return state


def cat_state(states: Sequence[Any]) -> Any:
    """Concatenate (nested) states along the batch dim: the inverse of splitting with `subset_state`."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(states)) if len(states) > 1 else first
    if isinstance(first, (list, tuple)):
        return type(first)(cat_state([s[i] for s in states]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: cat_state([s[k] for s in states]) for k in first}
    return first


class MultiExitBase(nn.Module):
    """Base of every multi-exit model (`MultiExitModel`, `MSDNetSmall`).

    Subclasses implement `num_exits`, `start(x)`, `step(k, state)` and `head_modules()`. In training
    mode, or while `thresholds` is None, `forward` returns the list of all exits' logits (last = the
    full network). In eval mode with `thresholds` set it returns, for each sample, the logits of the
    exit its confidence chose, computed with samples leaving the batch (`early_exit_predict`).
    `policy` and `thresholds` are plain attributes, so they are saved with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.policy: str = "max_softmax"
        self.thresholds: list[float] | None = None

    @property
    def num_exits(self) -> int:
        raise NotImplementedError

    def start(self, x: torch.Tensor) -> Any:
        """The initial state for stage 0."""
        return x

    def step(self, k: int, state: Any) -> tuple[Any, torch.Tensor]:
        """Run stage `k`: (next state, logits of exit k)."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules that exist only for the early exits (trained alone when the backbone is frozen)."""
        raise NotImplementedError

    def stepper(self):
        """`step` with any per-call validation done once (used by `early_exit_predict`)."""
        return self.step

    def predict_one(self, x: torch.Tensor, cuts: list[float], policy: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Early exit of one sample in a single call, for a model that has such a path (a deployed
        program with the policy inside its graph); None runs the stage-by-stage loop. `cuts` are
        score cuts (`score_cut`), one per early exit."""
        return None

    def full_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full network alone (no early heads): the latency reference."""
        state = self.start(x)
        logits = None
        for k in range(self.num_exits):
            state, logits = self.step(k, state)
        return logits

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit for every sample."""
        state, outs = self.start(x), []
        for k in range(self.num_exits):
            state, logits = self.step(k, state)
            outs.append(logits)
        return outs

    def set_policy_(self, policy: str = "max_softmax", thresholds: float | Sequence[float] | None = None) -> "MultiExitBase":
        """Set the inference policy in place; `thresholds=None` returns all exits again."""
        score_cut(0.0, policy)  # validates the name
        self.policy = policy
        self.thresholds = None if thresholds is None else expand_thresholds(thresholds, self.num_exits)
        return self

    def forward(self, x: torch.Tensor):
        if self.training or self.thresholds is None:
            return self.all_exits(x)
        return early_exit_predict(self, x)[0]


def _cuts(model: MultiExitBase, thresholds: float | Sequence[float] | None, policy: str | None) -> tuple[str, list[float]]:
    """(policy, per-exit confidence cut) from the arguments or, where None, the model's own policy."""
    policy = policy or model.policy
    thr = model.thresholds if thresholds is None else thresholds
    k_total = model.num_exits
    cuts = [math.inf] * (k_total - 1) if thr is None else [score_cut(t, policy) for t in expand_thresholds(thr, k_total)]
    return policy, cuts


def _evaluating(model: nn.Module, fn, *args):
    """`fn(*args)` with `model` in eval mode, every module's own flag restored after (`eval_mode`).
    A model already in eval mode (the deployed case) is left alone, and no context is entered: the
    `eval()` walk and its restore cost LeNet-5 at batch 1 as much as its forward (2 x 0.12 ms
    against 0.95 ms), and even a context manager is a visible cost there."""
    if not model.training:
        return fn(*args)
    with eval_mode(model):
        return fn(*args)


def _leave(k: int, logits: torch.Tensor, idx: torch.Tensor, out: torch.Tensor, exit_at: torch.Tensor, cut: float,
           policy: str) -> torch.Tensor:
    """Write the logits and exit `k` of the samples `idx` whose confidence passes `cut`; return the
    positions (in this batch) of the samples that stay."""
    done = confidence(logits, policy) >= cut
    gone = done.nonzero().squeeze(1)
    if len(gone):
        out[idx[gone]] = logits.index_select(0, gone)
        exit_at[idx[gone]] = k
    return (~done).nonzero().squeeze(1)


def early_exit_predict(model: MultiExitBase, x: torch.Tensor, thresholds: float | Sequence[float] | None = None,
                       policy: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched early-exit inference: (logits of the chosen exit, exit index) per sample.

    Samples whose confidence passes their exit's threshold leave the batch; only the others run the
    next stage (Shallow-Deep Networks, Kaya et al. 2019, 'early exit'; BranchyNet). Gradients are
    never recorded.

    Example:
        logits, exit_at = early_exit_predict(mx, x, thresholds=0.9)
    """
    if torch.is_grad_enabled():  # entered only when needed: at batch 1 each context is a visible cost
        with torch.no_grad():
            return early_exit_predict(model, x, thresholds, policy)
    policy, cuts = _cuts(model, thresholds, policy)
    return _evaluating(model, _predict, model, x, cuts, policy)


def _predict(model: MultiExitBase, x: torch.Tensor, cuts: list[float], policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    if n == 1:  # a model with a one-call path for a single sample (a deployed program) takes it
        one = model.predict_one(x, cuts, policy)
        if one is not None:
            return one
    step = model.stepper()
    state = model.start(x)
    if n == 1:  # no batch bookkeeping for a single sample
        for k, cut in enumerate(cuts):
            state, logits = step(k, state)
            if confidence(logits, policy).item() >= cut:
                return logits, torch.full((1,), k, dtype=torch.long, device=x.device)
        return step(len(cuts), state)[1], torch.full((1,), len(cuts), dtype=torch.long, device=x.device)
    k_total = model.num_exits
    idx = torch.arange(n, device=x.device)
    exit_at = torch.full((n,), k_total - 1, dtype=torch.long, device=x.device)
    out: torch.Tensor | None = None
    for k in range(k_total):
        state, logits = step(k, state)
        if out is None:
            out = logits.new_zeros((n, logits.shape[1]))
        if k == k_total - 1:
            out[idx] = logits
            break
        keep = _leave(k, logits, idx, out, exit_at, cuts[k], policy)
        if not len(keep):  # everyone left
            break
        if len(keep) < len(idx):
            idx = idx[keep]
            state = subset_state(state, keep)
    return out, exit_at


@torch.no_grad()
def early_exit_stream(model: MultiExitBase, x: torch.Tensor, batch_size: int = 64,
                      thresholds: float | Sequence[float] | None = None,
                      policy: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Throughput mode of `early_exit_predict` for many samples: every stage runs on full batches.

    `x` is cut into batches of `batch_size` for the first stage; the samples that stay are queued
    for the next stage, which runs as soon as `batch_size` of them wait (the rest at the end). So a
    deep stage never runs on the few samples one batch left over, and its per-call cost is spread
    over a full batch. Same predictions as `early_exit_predict` (each sample sees the same layers
    and the same policy); only the order work is done in differs.

    Example:
        logits, exit_at = early_exit_stream(mx, test_images, batch_size=64)
    """
    if batch_size < 1:
        raise NetcompressError(f"early_exit_stream: batch_size must be >= 1, got {batch_size}")
    policy, cuts = _cuts(model, thresholds, policy)
    k_total = model.num_exits
    n = x.shape[0]
    exit_at = torch.full((n,), k_total - 1, dtype=torch.long, device=x.device)
    out: torch.Tensor | None = None
    queues: list[list[tuple[Any, torch.Tensor]]] = [[] for _ in range(k_total)]

    def run(k: int, state: Any, idx: torch.Tensor) -> None:
        nonlocal out
        state, logits = step(k, state)
        if out is None:
            out = logits.new_zeros((n, logits.shape[1]))
        if k == k_total - 1:
            out[idx] = logits
            return
        keep = _leave(k, logits, idx, out, exit_at, cuts[k], policy)
        if len(keep):
            queues[k + 1].append((subset_state(state, keep), idx[keep]))
            flush(k + 1, final=False)

    def flush(k: int, final: bool) -> None:
        while queues[k]:
            waiting = sum(len(i) for _, i in queues[k])
            if waiting < batch_size and not final:
                return
            state = cat_state([s for s, _ in queues[k]])
            idx = torch.cat([i for _, i in queues[k]])
            queues[k] = []
            if waiting > batch_size:  # the surplus waits for the next batch
                tail = torch.arange(batch_size, waiting, device=idx.device)
                queues[k].append((subset_state(state, tail), idx[tail]))
                state, idx = subset_state(state, torch.arange(batch_size, device=idx.device)), idx[:batch_size]
            run(k, state, idx)

    def stream() -> None:
        nonlocal step
        step = model.stepper()  # after eval(): a stepper may check the mode once
        for start in range(0, n, batch_size):
            chunk = x[start:start + batch_size]
            run(0, model.start(chunk), torch.arange(start, start + len(chunk), device=x.device))
        for k in range(1, k_total):
            flush(k, final=True)

    step = None
    _evaluating(model, stream)
    assert out is not None
    return out, exit_at
