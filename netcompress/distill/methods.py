"""Distillation techniques as `netcompress.core.Method` objects, used with `netcompress.train.fit`.

How the task loss and the distillation terms mix (one convention for every class here):
``fit`` computes ``task = loss_fn(outputs, targets)`` and adds each Method's `loss_terms`. A distiller
exposes ``task_loss(outputs, targets) = (1 - alpha) * CE`` and returns ``alpha * kd_loss`` (plus its
own weighted feature terms) from `loss_terms`, so Hinton's mixture ``(1 - alpha) CE + alpha T^2 KL``
is obtained by passing both:

    kd = KD(teacher, temperature=4.0, alpha=0.9)
    fit(student, data, methods=[kd], loss_fn=kd.task_loss)

(`netcompress.distill.train_student(student, data, kd)` does exactly that.) Without ``loss_fn`` the
CE weight stays 1 (``CE + alpha T^2 KL``), which is also a valid, documented mixture.

The teacher is put in eval mode and run under ``torch.no_grad()`` on every step; its
``requires_grad`` flags are not touched, and no gradient can reach it (tests check this).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import nn

from netcompress.core.batch import Batch, call, head, logits_of, to_device
from netcompress.core.errors import NetcompressError
from netcompress.core.method import Method
from netcompress.core.modes import eval_mode, restore_training_flags, training_flags
from netcompress.core.taps import Taps
from netcompress.distill import losses
from netcompress.distill.features import (embedding_layer, example_for, make_adapter, pair_layers, probe,
                                          spatial_layers)
from netcompress.train.distributed import gather_batch, mean_over_ranks
from netcompress.train.loop import default_loss

__all__ = ["TeacherMethod", "KD", "Hint", "AT", "RKD", "SP", "DML", "Peers", "Ensemble", "DISTILLERS"]


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class TeacherMethod(Method):
    """Base for single-teacher distillers: frozen teacher, optional KD term, `task_loss` weighting.

    Args:
        teacher: the trained teacher (any nn.Module returning logits); it is never updated.
        temperature: KD temperature T.
        alpha: weight of the KD term; the task cross-entropy gets ``1 - alpha`` through `task_loss`.
            0 disables the KD term (and the teacher's logits are not needed).
    """

    name = "teacher"

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> None:
        if not isinstance(teacher, nn.Module):
            raise NetcompressError(f"{self.name}: teacher must be an nn.Module, got {type(teacher).__name__}")
        if temperature <= 0:
            raise NetcompressError(f"{self.name}: temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise NetcompressError(f"{self.name}: alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self._teacher_modes = training_flags(teacher)  # restored exactly in finalize

    def prepare(self, model: nn.Module) -> nn.Module:
        if model is self.teacher:
            raise NetcompressError(f"{self.name}: the student must not be the teacher object itself (deep-copy it)")
        self.teacher.to(_device_of(model))
        self.teacher.eval()
        return model

    @torch.no_grad()
    def teacher_outputs(self, inputs: Batch) -> torch.Tensor:
        """The teacher's logits in eval mode, without gradients (features land in its taps)."""
        self.teacher.eval()
        return logits_of(call(self.teacher, inputs))

    def task_loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * cross_entropy``: pass as `fit(..., loss_fn=method.task_loss)`."""
        return (1.0 - self.alpha) * default_loss(outputs, targets)

    def kd_terms(self, outputs: Any, teacher_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.alpha == 0:
            return {}
        return {"kd": self.alpha * losses.kd_loss(logits_of(outputs), teacher_logits, self.temperature)}

    def finalize(self, model: nn.Module) -> nn.Module:
        restore_training_flags(self._teacher_modes)
        return model


class KD(TeacherMethod):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015): ``(1-alpha) CE + alpha T^2 KL(p_t^T || p_s^T)``.

    `loss_terms` returns ``{"kd": alpha * T^2 * KL}``; the ``(1 - alpha)`` CE weight comes from
    `task_loss` (see the module docstring).

    Example:
        kd = KD(teacher, temperature=4.0, alpha=0.9)
        fit(student, data, methods=[kd], loss_fn=kd.task_loss)
    """

    name = "kd"

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        return self.kd_terms(outputs, self.teacher_outputs(inputs))


class TappedMethod(TeacherMethod):
    """A teacher method that taps layers of both models (`_s_taps`, `_t_taps`) and trains
    `adapters` between them: closing the taps, finalizing, checkpointing the adapters, and
    balancing its feature terms against the task loss.

    Balancing (``balance=True``): weights set for one network can make a feature term many times
    the cross-entropy on another (AT 9x, SP 5x on LeNet-5 at initialisation; TinyBERT's hidden MSE
    10x on a pruned vit-tiny, 18x on a pruned gpt-tiny), and the student then serves the features,
    not the task. So on the first training step the feature terms are multiplied by
    ``min(1, task_share() * CE / their sum)``, both measured on that batch (averaged over DDP ranks):
    they start no larger than the task loss, and are never raised. The factor is kept for the whole run (and in
    checkpoints).
    """

    adapters: nn.ModuleList
    _s_taps: Taps | None = None
    _t_taps: Taps | None = None
    balance: bool = False
    scale: float | None = None  # the balancing factor, set on the first step

    def balanced(self, feats: dict[str, torch.Tensor], outputs: Any, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`feats` scaled by the balancing factor (unchanged when ``balance`` is off or there is no term)."""
        if not self.balance or not feats:
            return feats
        if self.scale is None:
            ce, f = mean_over_ranks(torch.stack([default_loss(outputs, targets).float(),
                                                 sum(feats.values()).float()])).tolist()
            ref = ce * self.task_share()
            self.scale = min(1.0, ref / f) if f > 0 else 1.0
        return {k: v * self.scale for k, v in feats.items()}

    def task_share(self) -> float:
        """The fraction of the cross-entropy the feature terms are balanced against: 1 here."""
        return 1.0

    def close(self) -> None:
        for taps in (self._s_taps, self._t_taps):
            if taps is not None:
                taps.close()
        self._s_taps = self._t_taps = None

    def finalize(self, model: nn.Module) -> nn.Module:
        self.close()
        return super().finalize(model)

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict(), "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("adapters"):
            self.adapters.load_state_dict(state["adapters"])
        self.scale = state.get("scale", self.scale)


class _FeatureMethod(TappedMethod):
    """Shared machinery: taps on teacher and student layers, adapters built from one probe pass.

    Balancing (see `TappedMethod`) is the default of AT, RKD and SP, whose papers' weights were set
    for CIFAR ResNets with BatchNorm: unbalanced, a BatchNorm-free student collapses to one class.
    ``balance=False`` uses the weights as given.

    Here the feature terms are balanced against the task loss the student actually trains with,
    ``(1 - alpha) * CE`` (0.1 CE beside the default KD term), not the full CE: against the full CE,
    with KD's alpha 0.9, the feature term started 10x the task term and AT / RKD on lenet5-quarter
    gained less than KD alone. With ``alpha=1`` (no task term) they are balanced against the full CE.
    """

    adapters_always = False
    default_layers = "spatial"  # or "embedding"
    relational = False  # the loss relates the samples of a batch to each other (RKD, SP)

    def __init__(self, teacher: nn.Module, layers: Sequence[str | Sequence[str]] | None = None,
                 weight: float = 1.0, temperature: float = 4.0, alpha: float = 0.0,
                 example_inputs: torch.Tensor | None = None, adapters: bool = False,
                 balance: bool = False) -> None:
        super().__init__(teacher, temperature, alpha)
        if weight < 0:
            raise NetcompressError(f"{self.name}: weight must be >= 0, got {weight}")
        self.layers = layers
        self.weight = float(weight)
        self.example_inputs = example_inputs
        self.use_adapters = adapters or self.adapters_always
        self.pairs: list[tuple[str, str]] = []
        self.adapters = nn.ModuleList()
        self.balance = bool(balance)

    def task_share(self) -> float:
        return 1.0 - self.alpha if self.alpha < 1.0 else 1.0

    def _defaults(self, model: nn.Module, x: torch.Tensor) -> tuple[list[str], list[str]]:
        if self.default_layers == "embedding":
            return [embedding_layer(model, x)], [embedding_layer(self.teacher, x)]
        return spatial_layers(model, x), spatial_layers(self.teacher, x)

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        x = to_device(example_for(model, self.example_inputs), _device_of(model))
        if not self.pairs:
            defaults = ([], []) if self.layers else self._defaults(model, x)
            self.pairs = pair_layers(self.layers, *defaults)
            s_shapes, t_shapes = dict(probe(model, x, False)), dict(probe(self.teacher, x, False))
            for s, t in self.pairs:
                for nm, shapes, who in ((s, s_shapes, "student"), (t, t_shapes, "teacher")):
                    if nm not in shapes:
                        raise NetcompressError(f"{self.name}: {who} has no module {nm!r} producing a tensor "
                                               f"(known: {', '.join(list(shapes)[:12])})")
            if self.use_adapters:
                self.adapters = nn.ModuleList(make_adapter(s_shapes[s], t_shapes[t], self.adapters_always)
                                              for s, t in self.pairs)
        self.adapters.to(_device_of(model))
        self.close()
        self._s_taps = Taps(model, [s for s, _ in self.pairs])
        self._t_taps = Taps(self.teacher, [t for _, t in self.pairs])
        return model

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def features(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student features, adapted where configured; teacher features) of the latest forward."""
        assert self._s_taps is not None and self._t_taps is not None, "prepare() was not called"
        s = [self._s_taps[n] for n, _ in self.pairs]
        if self.use_adapters:
            s = [a(f) for a, f in zip(self.adapters, s)]
        return s, [self._t_taps[n].detach() for _, n in self.pairs]

    def feature_loss(self, s: list[torch.Tensor], t: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        t_logits = self.teacher_outputs(inputs)
        terms = self.kd_terms(outputs, t_logits)
        s, t = self.features()
        if self.relational:  # relations between the samples of the whole (global) batch, not of one shard
            s, t = [gather_batch(f) for f in s], [gather_batch(f) for f in t]
        terms.update(self.balanced(self.feature_loss(s, t), outputs, targets))
        return terms


class Hint(_FeatureMethod):
    """FitNets stage-1 hint term (Romero et al. 2015): MSE between the teacher's hint layer and the
    student's guided layer passed through a trained 1x1-conv (or linear) regressor.

    Default layers: the middle 'end of resolution' layer of each network (the paper uses the
    middle layers). Use with ``loss_fn=zero_task_loss`` to train only the student's lower part.
    """

    name = "hint"
    adapters_always = True

    def __init__(self, teacher: nn.Module, layers=None, weight: float = 1.0, example_inputs=None) -> None:
        super().__init__(teacher, layers, weight, alpha=0.0, example_inputs=example_inputs, adapters=True)

    def _defaults(self, model, x):
        s, t = spatial_layers(model, x), spatial_layers(self.teacher, x)
        if not s or not t:
            return [embedding_layer(model, x)], [embedding_layer(self.teacher, x)]
        return [s[len(s) // 2]], [t[len(t) // 2]]

    def prepare(self, model: nn.Module) -> nn.Module:
        """Also freezes the student's parameters the hint cannot reach (the layers above the guided
        one): stage 1 trains only the lower part, and under DDP every trained parameter gets a gradient."""
        model = super().prepare(model)
        x = to_device(example_for(model, self.example_inputs), _device_of(model))
        trainable = [p for p in model.parameters() if p.requires_grad]
        with eval_mode(model), torch.enable_grad():
            call(model, head(x, 2))
            s = [self._s_taps[n] for n, _ in self.pairs]
            grads = torch.autograd.grad(sum(f.float().sum() for f in s), trainable, allow_unused=True)
        self._frozen = [p for p, g in zip(trainable, grads) if g is None]
        for p in self._frozen:
            p.requires_grad_(False)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        for p in getattr(self, "_frozen", []):
            p.requires_grad_(True)
        self._frozen = []
        return super().finalize(model)

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        self.teacher_outputs(inputs)
        s, t = self.features()
        return {"hint": self.weight * sum(losses.hint_loss(a, b) for a, b in zip(s, t))}


class AT(_FeatureMethod):
    """Attention Transfer (Zagoruyko & Komodakis 2017) added to Hinton's KD mixture (``alpha`` 0.9, as
    the paper's AT+KD; ``alpha=0`` gives CE + AT alone).

    Default weight 500 = beta/2 with the paper's beta = 1e3, for ``mode="code"`` (the authors' code,
    see `losses.at_loss` for how it differs from the paper's eq. 2), balanced on the first step
    (see `_FeatureMethod`). Default layers: the last layer at each spatial resolution, paired from
    the deepest.
    """

    name = "at"

    def __init__(self, teacher, layers=None, weight: float = 500.0, p: float = 2.0,
                 mode: Literal["code", "paper"] = "code", temperature: float = 4.0, alpha: float = 0.9,
                 example_inputs=None, balance: bool = True) -> None:
        super().__init__(teacher, layers, weight, temperature, alpha, example_inputs, balance=balance)
        self.p, self.mode = p, mode

    def feature_loss(self, s, t):
        return {"at": self.weight * losses.at_loss(s, t, self.p, self.mode)}


class RKD(_FeatureMethod):
    """Relational KD (Park et al. 2019), distance + angle on the penultimate embedding, added to Hinton's
    KD mixture (``alpha`` 0.9, the paper's RKD + HKD; ``alpha=0`` gives CE + RKD alone).

    Defaults 25 (distance) and 50 (angle) are the paper's classification weights, balanced on the
    first step (see `_FeatureMethod`).
    """

    name = "rkd"
    default_layers = "embedding"
    relational = True

    def __init__(self, teacher, layers=None, distance_weight: float = 25.0, angle_weight: float = 50.0,
                 temperature: float = 4.0, alpha: float = 0.9, example_inputs=None, balance: bool = True) -> None:
        super().__init__(teacher, layers, 1.0, temperature, alpha, example_inputs, balance=balance)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def feature_loss(self, s, t):
        out = {}
        if self.distance_weight:
            out["rkd_distance"] = self.distance_weight * sum(losses.rkd_distance_loss(a, b) for a, b in zip(s, t))
        if self.angle_weight:
            out["rkd_angle"] = self.angle_weight * sum(losses.rkd_angle_loss(a, b) for a, b in zip(s, t))
        return out


class SP(_FeatureMethod):
    """Similarity-Preserving KD (Tung & Mori 2019) added to Hinton's KD mixture (``alpha`` 0.9, the
    paper's SP + KD; ``alpha=0`` gives CE + SP alone); default gamma = 3000 (paper, CIFAR-10),
    balanced on the first step (see `_FeatureMethod`), on the penultimate embedding (the paper uses
    the last block's activation map)."""

    name = "sp"
    default_layers = "embedding"
    relational = True

    def __init__(self, teacher, layers=None, weight: float = 3000.0, temperature: float = 4.0,
                 alpha: float = 0.9, example_inputs=None, balance: bool = True) -> None:
        super().__init__(teacher, layers, weight, temperature, alpha, example_inputs, balance=balance)

    def feature_loss(self, s, t):
        return {"sp": self.weight * losses.sp_loss(s, t)}


class Peers(nn.Module):
    """N models trained together (Deep Mutual Learning); `forward` returns the list of their logits."""

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise NetcompressError(f"Peers: needs at least 2 models, got {len(peers)}")
        self.peers = nn.ModuleList(peers)

    def forward(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        return [logits_of(p(*args, **kwargs)) for p in self.peers]


class Ensemble(nn.Module):
    """Averages the logits of its members (Born-Again ensembles, DML ensembles)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise NetcompressError("Ensemble: needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.stack([logits_of(m(*args, **kwargs)) for m in self.members]).mean(0)


def peers_ce(outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Sum of every peer's cross-entropy: the task loss of a `Peers` model."""
    return sum(default_loss(o, targets) for o in outputs)


class DML(Method):
    """Deep Mutual Learning (Zhang et al. 2018) as a Method on a `Peers` model: each peer gets
    ``w(t) * mean_j KL(p_j || p_i)`` with the other peers' outputs detached; the task loss is `peers_ce`.

    All peers are updated in the same step from the same batch (the paper updates them one after
    another within a step; with per-parameter optimizers such as SGD the only difference is that
    peer i sees peer j's pre-update outputs).

    Args:
        temperature: softening of the mutual KL (T^2-scaled as in KD); the paper uses 1.
        weight: the term's full weight.
        rampup: fraction of the training steps over which the weight rises to `weight` along
            ``exp(-5 (1 - t)^2)``, the ramp of consistency training (Laine & Aila 2017, Tarvainen &
            Valpola 2017); 0 keeps it constant from the first step, as in the paper. At the start
            both peers are random, so each pulls the other towards noise: on mnist-5k a constant
            weight of 2 costs the MLP 784-64-10 0.86 points against the paper's 1 (8 seeds) and
            left lenet5-quarter at 7.4 % on one seed of 8, while ramped to 2 it is the best of the
            three on every student (benchmarks/results/defaults_dml.md).
    """

    name = "dml"

    def __init__(self, temperature: float = 1.0, weight: float = 1.0, rampup: float = 0.0) -> None:
        if not 0 <= rampup <= 1:
            raise NetcompressError(f"dml: rampup is a fraction of the training steps in [0, 1], got {rampup}")
        self.temperature, self.weight, self.rampup = float(temperature), float(weight), float(rampup)
        self.total_steps, self.step = 0, 0

    def prepare(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, Peers):
            raise NetcompressError("dml: the model must be a netcompress.distill.Peers of the models to train")
        return model

    def on_train_begin(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def after_step(self, model: nn.Module, step: int) -> None:
        self.step = step

    def current_weight(self) -> float:
        """The mutual term's weight at the current step (the full `weight` after the ramp)."""
        ramp = self.rampup * self.total_steps
        if ramp <= 0 or self.step >= ramp:
            return self.weight
        return self.weight * math.exp(-5.0 * (1.0 - self.step / ramp) ** 2)

    task_loss = staticmethod(peers_ce)

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        w = self.current_weight()
        kls = losses.mutual_kl(outputs, self.temperature)
        return {f"kl{i}": w * k for i, k in enumerate(kls)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))


def zero_task_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """A task loss of 0 (no gradient): FitNet stage 1 trains only through the hint term."""
    return logits_of(outputs).new_zeros(())


from netcompress.distill.protocols import DISTILLERS  # noqa: E402  (the registry of whole protocols)
