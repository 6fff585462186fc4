"""Sparse Variational Dropout (Molchanov, Ashukha & Vetrov 2017, "Variational Dropout Sparsifies
Deep Neural Networks", ICML).

Every weight gets a Gaussian posterior q(w) = N(theta, sigma^2) under the log-uniform prior. The
network trains on the evidence lower bound: the task loss plus KL(q || p) / N (N = training-set
size). The dropout rate of a weight is alpha = sigma^2 / theta^2, trained in the additive
parameterisation (log sigma^2 is the free parameter, log alpha = log sigma^2 - log theta^2, which
keeps the gradient variance low for large alpha). Outputs are sampled with the local
reparameterisation trick (Kingma et al. 2015): a layer's pre-activation is Gaussian with mean
x theta and variance x^2 (alpha theta^2), so one noise draw per output unit, not per weight.
Weights with log alpha > 3 (alpha > ~20: they are noise) are removed; the result is an ordinary
masked model that k-means sharing and the sparse + Huffman archive compress further.

The KL has no closed form; the paper's eq. 14 approximates it to within 0.009:
    -KL(q || p) ~= k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1,
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695.
As in the authors' code, log alpha is clipped to [-10, 10] and the KL weight is annealed linearly
from 0 during the first `anneal_epochs`.

Example:
    >>> import netcompress as nc
    >>> data = nc.data.load("digits")
    >>> model = nc.models.create_for("lenet300", data)
    >>> info = nc.prune.variational_dropout_(model, data, epochs=1, progress=False)
    >>> 0 <= info["sparsity"] <= 1
    True
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method
from netcompress.prune.unstructured import MASK, MaskMethod, finalize_
from netcompress.train.distributed import dist_info

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = 10.0
PARAM = "log_sigma2"


def kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q(w | theta, alpha) || log-uniform prior), the paper's eq. 14 approximation:
    k1 - k1 sigmoid(k2 + k3 log alpha) + 0.5 log(1 + exp(-log alpha)); tends to 0 as alpha -> inf."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def log_alpha_of(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log alpha = log sigma^2 - log theta^2 (additive reparameterisation), clipped to [-10, 10]."""
    la = log_sigma2 - torch.log(weight * weight + 1e-16)
    return torch.clamp(la, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)


class _SVDOMixin:
    """Forward of a layer under Sparse VD: sampled (local reparameterisation) when training, the
    thresholded mean weights in eval mode. Set on a plain nn.Linear / nn.Conv2d by `prepare`."""

    threshold: float = 3.0

    def log_alpha(self) -> torch.Tensor:
        return log_alpha_of(self.weight, getattr(self, PARAM))

    def keep_mask(self) -> torch.Tensor:
        return self.log_alpha() <= self.threshold

    def _mean(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return self._mean(x, self.weight * self.keep_mask().to(self.weight.dtype), self.bias)
        mu = self._mean(x, self.weight, self.bias)
        var = self._mean(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight, None)
        return mu + torch.sqrt(var + 1e-8) * batch_noise(mu)


def batch_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `like` whose sample i is the same however the batch is split
    over data-parallel ranks: each rank draws the whole global batch's noise (every rank's random
    state is the same) and keeps its own samples, rank r's j-th being the global batch's r + W j
    (the sharding of `netcompress.data`'s loaders and DistributedSampler). One process: randn_like."""
    info = dist_info()
    if not info.enabled:
        return torch.randn_like(like)
    full = torch.randn((like.shape[0] * info.world_size, *like.shape[1:]), dtype=like.dtype, device=like.device)
    return full[info.rank::info.world_size]


class LinearSVDO(_SVDOMixin, nn.Linear):
    """nn.Linear trained with Sparse VD (same parameters plus `log_sigma2`)."""

    def _mean(self, x, w, b):
        return F.linear(x, w, b)


class Conv2dSVDO(_SVDOMixin, nn.Conv2d):
    """nn.Conv2d trained with Sparse VD (same parameters plus `log_sigma2`)."""

    def _mean(self, x, w, b):
        return self._conv_forward(x, w, b)


_SWAP = {nn.Linear: LinearSVDO, nn.Conv2d: Conv2dSVDO}
_BACK = {v: k for k, v in _SWAP.items()}


def svdo_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: layer} of the layers currently under Sparse VD."""
    return {n: m for n, m in model.named_modules() if type(m) in _BACK}


class SparseVDConfig(Config):
    """`sparse-vd:` stage (and `variational_dropout_`): train with Sparse Variational Dropout, then
    remove every weight whose log alpha exceeds `threshold` (Molchanov et al. 2017)."""

    epochs: float = Field(30, gt=0, description="Sparse VD training epochs")
    lr: float = Field(1e-3, gt=0, description="learning rate (Adam, as in the paper)")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimizer of the Sparse VD training (sgd, adam, adamw)")
    schedule: Literal["constant", "cosine", "step"] = Field("cosine", description="learning-rate schedule (constant, cosine, step)")
    batch_size: int | None = Field(None, ge=1, description="default: the recipe's train.batch_size")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tiny budgets)")
    kl_weight: float = Field(1.0, ge=0, description="scale of the KL term (1 = the ELBO; the KL is divided by N)")
    anneal_epochs: float = Field(5, ge=0, description="epochs over which the KL weight rises linearly from 0")
    threshold: float = Field(3.0, description="log alpha above which a weight is removed (paper: 3)")
    init_log_sigma2: float = Field(-10.0, description="initial log sigma^2 of every weight (authors' code: -10)")
    ignore: list[str] = Field(default_factory=list, description="Linear / Conv2d layers left out of Sparse VD")
    finetune_epochs: float = Field(0, ge=0, description="masked deterministic fine-tune epochs after thresholding")
    finetune_lr: float | None = Field(None, gt=0, description="fine-tune learning rate; default lr x 0.1")


class SparseVDMethod(Method):
    """The training Method: `prepare` puts the selected Linear / Conv2d layers under Sparse VD,
    `loss_terms` adds kl_weight(t) * sum KL / N, `finalize` applies the log-alpha threshold as
    `weight_mask` buffers and turns the layers back into plain nn.Linear / nn.Conv2d.

    Example:
        m = SparseVDMethod(n_train=4000)
        nc.train.fit(model, data, epochs=30, optimizer="adam", lr=1e-3, weight_decay=0, methods=[m])
        masks = m.finalize(model)
    """

    name = "sparse-vd"

    def __init__(self, n_train: int, kl_weight: float = 1.0, anneal_steps: int = 0, threshold: float = 3.0,
                 init_log_sigma2: float = -10.0, ignore: Sequence[str] = ()) -> None:
        if n_train < 1:
            raise NetcompressError(f"sparse-vd: n_train must be >= 1, got {n_train}")
        self.n_train, self.kl_weight, self.anneal_steps = int(n_train), float(kl_weight), int(anneal_steps)
        self.threshold, self.init_log_sigma2, self.ignore = float(threshold), float(init_log_sigma2), set(ignore)
        self.step = 0
        self.curve: list[dict[str, float]] = []

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        return {n: m for n, m in model.named_modules() if type(m) in _SWAP and n not in self.ignore}

    def prepare(self, model: nn.Module) -> nn.Module:
        layers = self.targets(model)
        unknown = sorted(self.ignore - {n for n, m in model.named_modules() if type(m) in _SWAP or type(m) in _BACK})
        if unknown:
            raise NetcompressError(f"sparse-vd: ignore names no Linear / Conv2d layer: {', '.join(unknown)}")
        if not layers and not svdo_layers(model):
            raise NetcompressError("sparse-vd: the model has no plain nn.Linear / nn.Conv2d layer to train")
        for m in layers.values():
            if isinstance(getattr(m, MASK, None), torch.Tensor):
                raise NetcompressError("sparse-vd: the model already carries weight masks; finalize them first")
        for m in layers.values():
            m.__class__ = _SWAP[type(m)]
            m.register_parameter(PARAM, nn.Parameter(torch.full_like(m.weight, self.init_log_sigma2)))
            m.threshold = self.threshold
        return model

    def kl_scale(self) -> float:
        ramp = 1.0 if self.anneal_steps <= 0 else min(1.0, self.step / self.anneal_steps)
        return self.kl_weight * ramp / self.n_train

    def loss_terms(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: Any) -> dict[str, torch.Tensor]:
        layers = svdo_layers(model)
        if not layers:
            return {}
        kl = torch.stack([kl_approx(m.log_alpha()).sum() for m in layers.values()]).sum()
        return {"kl": self.kl_scale() * kl}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.step = step

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        kept, total = _counts(model)
        self.curve.append({"epoch": epoch + 1, "sparsity": 1.0 - kept / max(total, 1)})

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Threshold log alpha into `weight_mask` buffers (masked weights zeroed) and restore the
        plain layer classes; `netcompress.prune.finalize_` makes the zeros permanent."""
        for m in svdo_layers(model).values():
            mask = m.keep_mask()
            m.weight.mul_(mask.to(m.weight.dtype))
            del m._parameters[PARAM]
            m.__dict__.pop("threshold", None)
            m.__class__ = _BACK[type(m)]
            m.register_buffer(MASK, mask.to(torch.uint8))
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "curve": list(self.curve)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.curve = list(state.get("curve", []))


def _counts(model: nn.Module) -> tuple[int, int]:
    kept = total = 0
    for m in svdo_layers(model).values():
        kept += int(m.keep_mask().sum().item())
        total += m.weight.numel()
    return kept, total


FitFn = Callable[[nn.Module, dict[str, Any], Sequence[Method], str], Any]


def train_sparse_vd(model: nn.Module, cfg: SparseVDConfig, n_train: int, steps_per_epoch: int, fit_fn: FitFn) -> dict[str, Any]:
    """The one core of the stage and of `variational_dropout_`: Sparse VD training through `fit_fn`,
    thresholding, an optional masked fine-tune, masks made permanent. Changes `model` in place.

    Returns {"per_layer": {name: {kept, total}}, "kept_weights", "total_weights", "sparsity",
    "curve": per-epoch sparsity, "history": training logs}.
    """
    if not isinstance(cfg, SparseVDConfig):
        raise NetcompressError(f"sparse-vd: expected a SparseVDConfig, got {type(cfg).__name__}")
    method = SparseVDMethod(n_train, cfg.kl_weight, int(round(cfg.anneal_epochs * steps_per_epoch)), cfg.threshold,
                            cfg.init_log_sigma2, cfg.ignore)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    over = {"epochs": cfg.epochs, "lr": cfg.lr, "optimizer": cfg.optimizer, "schedule": cfg.schedule,
            "weight_decay": 0.0, "batch_size": cfg.batch_size, "max_steps": cfg.max_steps}
    history: list[dict[str, float]] = []
    try:
        history.extend(fit_fn(model, over, [method], "sparse-vd").to_list())
    except BaseException:  # a failed run leaves the model as it was
        mods = dict(model.named_modules())
        for n, c in classes.items():
            if type(mods[n]) is not c:
                mods[n]._parameters.pop(PARAM, None)
                mods[n].__class__ = c
        model.load_state_dict(snapshot)
        raise
    per = {n: {"kept": int(m.keep_mask().sum().item()), "total": m.weight.numel()}
           for n, m in svdo_layers(model).items()}
    method.finalize(model)
    if cfg.finetune_epochs > 0:
        ft = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr or cfg.lr * 0.1, "optimizer": cfg.optimizer,
              "schedule": cfg.schedule, "weight_decay": 0.0, "batch_size": cfg.batch_size, "max_steps": cfg.max_steps}
        history.extend(fit_fn(model, ft, [MaskMethod()], "finetune").to_list())
    finalize_(model)
    kept = sum(v["kept"] for v in per.values())
    total = sum(v["total"] for v in per.values())
    return {"per_layer": per, "kept_weights": kept, "total_weights": total, "sparsity": 1.0 - kept / max(total, 1),
            "compression": total / max(kept, 1), "curve": method.curve, "history": history}


def variational_dropout_(model: nn.Module, data, config: SparseVDConfig | None = None, *, seed: int = 0,
                         progress: bool | None = None, **fields: Any) -> dict[str, Any]:
    """Sparse Variational Dropout in place (Molchanov et al. 2017): train, remove weights with
    log alpha > threshold. Keyword `fields` set `SparseVDConfig` fields (epochs=, lr=, kl_weight=, ...).

    Returns the same summary as the `sparse-vd` stage (per-layer kept weights, sparsity, curve).

    Example:
        info = nc.prune.variational_dropout_(model, data, epochs=30)
        info["compression"]
    """
    from netcompress.train.loop import TrainConfig, fit

    base = config.model_dump() if config is not None else {}
    cfg = SparseVDConfig.from_dict({**base, **fields}, "variational_dropout_")
    bs = cfg.batch_size or TrainConfig().batch_size

    def fit_fn(m: nn.Module, over: dict[str, Any], methods: Sequence[Method], tag: str):
        tc = TrainConfig.from_dict({k: v for k, v in {**over, "batch_size": bs}.items() if v is not None}, "sparse-vd")
        return fit(m, data, tc, methods=methods, seed=seed, progress=progress, desc=tag)

    n_train = len(data.train_set)
    return train_sparse_vd(model, cfg, n_train, math.ceil(n_train / bs), fit_fn)


def run_sparse_vd(ctx, model: nn.Module, cfg: SparseVDConfig):
    """Recipe stage `sparse-vd`: the same core as `variational_dropout_`, trained through `ctx.fit`."""
    from netcompress.train.stage import StageResult

    bs = cfg.batch_size or ctx.train.batch_size
    n_train = len(ctx.data.train_set)

    def fit_fn(m: nn.Module, over: dict[str, Any], methods: Sequence[Method], tag: str):
        return ctx.fit(m, {**over, "batch_size": bs}, methods=methods, tag=tag)

    info = train_sparse_vd(model, cfg, n_train, math.ceil(n_train / bs), fit_fn)
    history = info.pop("history")
    return StageResult(model, extra={"granularity": "weight", "criterion": "sparse-vd", **info}, history=history)
