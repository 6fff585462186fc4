"""`fit` and `evaluate`: the only training loop in netcompress.

Techniques plug in as `Method` objects (extra named loss terms, gradient and weight edits) rather
than copies of the loop. Checkpoints are written every epoch; `resume=True` continues exactly
(same final weights as an uninterrupted run with the same seed), because the data order of epoch
e depends only on (seed, e) and the global RNG state is checkpointed.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.core.batch import call, logits_of, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method
from netcompress.core.modes import eval_mode
from netcompress.core.seeding import forked_rng
from netcompress.train.distributed import barrier, dist_info, init_distributed

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


class TrainConfig(Config):
    """Training settings shared by `fit`, recipes (`train:`) and every fine-tuning stage."""

    epochs: float = Field(10, ge=0, description="epochs; fractions train that share of one epoch")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    batch_size: int = Field(64, ge=1, description="global batch size (split across DDP ranks)")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    schedule: Literal["constant", "cosine", "step"] = Field("cosine", description="learning-rate schedule over the epochs")
    step_size: int = Field(5, ge=1, description="epochs between x0.1 decays for schedule=step")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tiny budgets)")
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU")


@dataclass
class History:
    """Per-epoch logs: epoch, loss, each named loss part, train_acc, test_acc, lr, seconds."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def to_list(self) -> list[dict[str, float]]:
        return list(self.epochs)

    @property
    def final_test_acc(self) -> float | None:
        return self.epochs[-1].get("test_acc") if self.epochs else None


_logits = logits_of  # the old private name, kept for callers outside this module


def default_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; per token (mean over every position) for sequence logits (N, T, V)."""
    logits = logits_of(outputs)
    if logits.dim() == 3 and targets.dim() == 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    info = dist_info()
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and targets of a loader, in eval mode (the model's mode is restored)."""
    dev = _device(device)
    outs, ys = [], []
    with eval_mode(model):
        for x, y in loader:
            outs.append(logits_of(call(model, to_device(x, dev))).float().cpu())
            ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, data, split: str = "test", device: str | torch.device | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` on `data.test` (or any loader / split); per token for LMs."""
    loader = data if not hasattr(data, "loader") else data.loader(split, shuffle=False)
    logits, y = predict(model, loader, device)
    return (logits.argmax(-1) == y).float().mean().item()


class _WithExtras(nn.Module):
    """The model plus the methods' extra parameters as one module (what DDP wraps); forward is the model's."""

    def __init__(self, model: nn.Module, extra: list[nn.Parameter]) -> None:
        super().__init__()
        self.model = model
        self.extra = nn.ParameterList(extra)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def _lr_at(cfg: TrainConfig, epoch: int, total: int) -> float:
    if cfg.schedule == "cosine" and total > 0:
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / total))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** (epoch // cfg.step_size))
    return cfg.lr


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _set_epoch(loader, epoch: int, seed: int) -> None:
    """Make the data order of `epoch` a function of (seed, epoch) alone, so resume is exact."""
    if hasattr(loader, "set_epoch"):  # TensorLoader (in-memory data), single process or DDP
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif getattr(loader, "generator", None) is not None:  # a shuffling DataLoader
        loader.generator.manual_seed(seed + epoch)


def _save_checkpoint(path: Path, model, opt, epoch, history, methods, step) -> None:
    from netcompress.models.io import atomic_write

    blob = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
        "history": json.dumps(history.to_list()), "rng": torch.get_rng_state(),
        "methods": [m.state_dict() for m in methods],
    }
    atomic_write(path, lambda f: torch.save(blob, f))


def _read_checkpoint(path: Path, dev: torch.device, n_methods: int) -> dict[str, Any]:
    """A training checkpoint written by `fit`, checked whole before anything is restored from it."""
    try:
        blob = torch.load(path, map_location=dev, weights_only=True)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise NetcompressError(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'truncated?'}); delete it to train from the start") from None
    need = {"model", "optimizer", "epoch", "step", "history", "rng", "methods"}
    if not isinstance(blob, dict) or need - set(blob) or not isinstance(blob.get("methods"), list) \
            or len(blob["methods"]) != n_methods:
        raise NetcompressError(f"checkpoint {path} is not a checkpoint of this training; delete it to train from the start")
    return blob


def _keeps_caller_rng(fn):
    """Run `fn` on a fork of the global RNG (CPU and every CUDA device): `fit` seeds and draws from
    it, and the caller's state is restored afterwards, so training leaves no trace on global state
    (a model built after `fit` does not get the same initial weights as one built after
    ``torch.manual_seed(seed)``, which made DML peers identical)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with forked_rng():
            return fn(*args, **kwargs)

    return run


@_keeps_caller_rng
def fit(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    methods: Sequence[Method] = (),
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callable[[dict[str, float]], None]] = (),
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    desc: str = "train",
    evaluate_each_epoch: bool = True,
    **overrides: Any,
) -> History:
    """Train `model` in place on `data` and return its per-epoch history.

    Args:
        model: any nn.Module returning logits (or a list of logits, see `loss_fn`).
        data: a `DataBundle` (see `netcompress.data.load`).
        config: a `TrainConfig`; keyword `overrides` (epochs=, lr=, ...) replace its fields.
        methods: techniques adding loss terms / editing gradients and weights (see `Method`).
        loss_fn: task loss `(outputs, targets) -> scalar`; cross-entropy on the logits by default.
        callbacks: called with each epoch's log dict.
        checkpoint: file written after every epoch (rank 0); with `resume=True` training continues
            from it when it exists.
        seed: seeds parameters' RNG use (dropout) and the data order, on a fork of the global RNG:
            the caller's RNG state is the same after `fit` as before.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("digits")
        >>> model = nc.models.create("lenet300", in_channels=1, input_size=8)
        >>> h = nc.train.fit(model, data, epochs=1, progress=False)
        >>> h.final_test_acc > 0.5
        True
    """
    cfg = (config or TrainConfig()).model_copy(update=overrides) if overrides else (config or TrainConfig())
    cfg = TrainConfig.from_dict(cfg.model_dump())  # re-validate overrides
    info = init_distributed()
    dev = _device(device)
    loss_fn = loss_fn or default_loss
    methods = list(methods)
    if info.world_size > 1 and cfg.batch_size % info.world_size:
        raise NetcompressError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} DDP processes")

    torch.manual_seed(seed)
    model.to(dev)
    for m in methods:
        model = m.prepare(model) or model
    params = [p for p in model.parameters() if p.requires_grad]
    extra = [p for m in methods for p in m.extra_parameters()]
    for p in extra:
        p.data = p.data.to(dev)
    opt = _optimizer(cfg, params + extra)

    history, start_epoch, step = History(), 0, 0
    ckpt = Path(checkpoint) if checkpoint else None
    if resume and ckpt is not None and ckpt.exists():
        blob = _read_checkpoint(ckpt, dev, len(methods))
        try:
            model.load_state_dict(blob["model"])
        except RuntimeError as e:
            raise NetcompressError(f"checkpoint {ckpt}: weights do not fit this model "
                                   f"({str(e).splitlines()[0]}); delete it to train from the start") from None
        opt.load_state_dict(blob["optimizer"])
        for m, s in zip(methods, blob["methods"]):
            m.load_state_dict(s)
        history = History(json.loads(blob["history"]))
        start_epoch, step = blob["epoch"] + 1, blob["step"]
        torch.set_rng_state(blob["rng"].cpu())

    train_model: nn.Module = model
    if info.enabled:
        # the methods' own parameters (regressors, adapters, heads) live inside the DDP module, so their
        # gradients are averaged and their initial values broadcast like the model's
        train_model = nn.parallel.DistributedDataParallel(_WithExtras(model, extra),
                                                          device_ids=[dev.index] if dev.type == "cuda" else None)
    loader = data.loader("train", batch_size=cfg.batch_size // info.world_size, rank=info.rank,
                         world_size=info.world_size, seed=seed)
    total_epochs = math.ceil(cfg.epochs)
    steps_per_epoch = len(loader)
    budget = int(round(cfg.epochs * steps_per_epoch))
    if cfg.max_steps is not None:
        budget = min(budget, cfg.max_steps)
    for m in methods:
        m.on_train_begin(budget)
    amp = cfg.amp and dev.type == "cuda"
    show = (sys.stderr.isatty() if progress is None else progress) and info.rank == 0
    # no terminal (a log file, CI, a pipe): one plain line per epoch instead of a progress bar
    lines = progress is None and not show and info.rank == 0
    bar = None
    if show and budget > step:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, initial=step, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    try:
        for epoch in range(start_epoch, total_epochs):
            if step >= budget:
                break
            lr = _lr_at(cfg, epoch, total_epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            _set_epoch(loader, epoch, seed)
            train_model.train()
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            correct = seen = seen_targets = 0
            for x, y in loader:
                if step >= budget:
                    break
                x, y = to_device(x, dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
                    out = call(train_model, x)
                    parts = {"task": loss_fn(out, y)}
                    for m in methods:
                        parts.update(m.loss_terms(model, x, y, out))
                    loss = sum(parts.values())
                if not torch.isfinite(loss):
                    raise NetcompressError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for m in methods:
                    m.after_backward(model)
                opt.step()
                step += 1
                for m in methods:
                    m.after_step(model, step)
                n = len(y)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * n
                sums["loss"] = sums.get("loss", 0.0) + loss.item() * n
                correct += (logits_of(out).argmax(-1) == y).sum().item()
                seen += n
                seen_targets += y.numel()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen_targets:.3f}", refresh=False)
            log = {"epoch": epoch + 1, "lr": lr, "seconds": time.perf_counter() - t0, "steps": step}
            log.update({k: v / max(seen, 1) for k, v in sums.items()})
            log["train_acc"] = correct / max(seen_targets, 1)
            if evaluate_each_epoch:
                log["test_acc"] = evaluate(model, data, device=dev)
                if getattr(data, "task", None) == "lm":
                    from netcompress.train.lm import evaluate_lm

                    log["test_ppl"] = evaluate_lm(model, data, device=dev)["perplexity"]
            history.epochs.append(log)
            for m in methods:
                m.on_epoch_end(model, epoch)
            if lines:
                acc = f" test_acc {log['test_acc']:.4f}" if "test_acc" in log else ""
                print(f"{desc}: epoch {epoch + 1}/{total_epochs} loss {log.get('loss', float('nan')):.4f} train_acc "
                      f"{log['train_acc']:.4f}{acc} ({log['seconds']:.1f} s)", file=sys.stderr, flush=True)
            for cb in callbacks:
                cb(log)
            if ckpt is not None and info.rank == 0:
                _save_checkpoint(ckpt, model, opt, epoch, history, methods, step)
            barrier()
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history
