"""Whole distillation protocols (teacher -> student training schedules) and their registry.

Every protocol is ``run(teacher, student, data, cfg, fit_fn) -> DistillResult`` and trains only through
`netcompress.train.fit` (wrapped as `fit_fn`, so recipes can add checkpoints and resuming). The
registry `DISTILLERS` (re-exported by `netcompress.distill.methods`) maps the method names used by
recipes and the CLI to these functions.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from netcompress.core.batch import call, head, logits_of, to_device
from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.core.registry import Registry
from netcompress.train.loop import History, TrainConfig, evaluate, fit

__all__ = ["ModelRef", "DistillConfig", "DistillResult", "DISTILLERS", "make_fit", "train_student",
           "fresh_copy", "build_student", "student_from_teacher", "assistant_for", "run_distill", "default_lr",
           "lm_defaults", "default_epochs", "PATIENCE", "LM_TEMPERATURE", "LM_ALPHA"]

FitFn = Callable[..., History]
"""``fit_fn(model, methods=(), loss_fn=None, tag="train", **train_overrides) -> History``."""


class ModelRef(Config):
    """A zoo model by name plus keyword arguments, e.g. ``{name: lenet5, kwargs: {width: 0.25}}``."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


_WEIGHT_KEYS = {"kd": set(), "fitnet": {"hint"}, "at": {"at"}, "rkd": {"distance", "angle"}, "sp": {"sp"},
                "dml": {"kl"}, "born-again": set(), "takd": set(), "hidden": {"hidden", "attention"}}


class DistillConfig(Config):
    """The `distill` stage / CLI settings (fields not used by a method are ignored by it).

    Attributes:
        method: kd, fitnet, at, rkd, sp, dml, born-again, takd, hidden.
        teacher: "baseline", an earlier stage's name, or a saved model file.
        student: a zoo name, ``{name, kwargs}`` or a model file; born-again defaults to the
            teacher's architecture, dml to the stage's input model architecture.
        temperature, alpha: KD softening and KD weight (CE gets 1 - alpha). alpha defaults to 0.9
            for kd/fitnet/born-again/takd/at/rkd/sp (the feature methods' papers report them best
            added to KD; alpha 0 gives CE + feature term alone). dml has no teacher: its mutual KL
            uses T 1 unless alpha is given, then `temperature`. On language-modelling data the
            ones not given are T 1 and alpha 0.5 (`LM_TEMPERATURE`, `LM_ALPHA`).
        weights: per-term weights overriding the paper defaults: fitnet {hint}, at {at},
            rkd {distance, angle}, sp {sp}, dml {kl}. Without them, at / rkd / sp lower the paper's
            weights on the first step so the feature term starts no larger than the task loss,
            (1 - alpha) CE (`methods._FeatureMethod`); given weights are used as they are.
        layers: module names, or [student_name, teacher_name] pairs, for feature methods.
        epochs, lr, max_steps: training budget of each phase (default: `default_epochs`, twice the
            recipe's ``train.epochs``; `default_lr`; no step limit).
        hint_epochs: FitNet stage 1 budget (default: the same as `epochs`).
        peers: DML peer count N; generations: Born-Again K; assistant: TAKD's assistant
            (default: the teacher's architecture at the width giving the geometric-mean size).
        rampup: DML: the mutual term's weight rises to its full value over this share of the
            steps (`methods.DML`); its full weight ``weights.kl`` defaults to 2 with the ramp, to
            the paper's 1 without it (rampup 0).
        compare_scratch: also train the student alone (CE only, same budget) and report it.
        compare_direct: TAKD also trains the student by direct KD from the teacher.
    """

    method: str = Field("kd", description="kd, fitnet, at, rkd, sp, dml, born-again or takd")
    teacher: str = Field("baseline", description="the teacher: a model of the run ('baseline' is the input "
                         "model) or a saved model file")
    student: str | ModelRef | None = Field(None, description="zoo name, {name, kwargs}, a model file, or "
                                           "from-teacher ({name: from-teacher, kwargs: {depth, width}}: cut out "
                                           "of the teacher) (born-again: the teacher's architecture; dml: the input's)")
    temperature: float = Field(4.0, gt=0, description="KD softening temperature T (not given: 4, or 1 on "
                               "language-modelling data)")
    alpha: float | None = Field(None, ge=0, le=1, description="KD weight, CE gets 1 - alpha (default 0.9, 0.5 "
                                "on language-modelling data; 0 for at, rkd, sp gives CE + their feature term alone)")
    weights: dict[str, float] = Field(default_factory=dict, description="loss weights over the paper defaults: "
                                      "fitnet {hint}, at {at}, rkd {distance, angle}, sp {sp}, dml {kl} (without them at/rkd/sp "
                                      "lower the paper weights so the term starts <= the task loss)")
    layers: list[str | list[str]] | None = Field(None, description="feature modules, or [student, teacher] pairs "
                                                 "(default: matched automatically)")
    at_mode: Literal["code", "paper"] = Field("code", description="AT normalisation: the authors' code or the paper's")
    epochs: float | None = Field(None, ge=0, description="epochs of each training phase (default 2 x train.epochs: "
                                  "a student keeps learning from a teacher long after it would stop alone)")
    lr: float | None = Field(None, gt=0, description="learning rate (default train.lr / T for the methods whose "
                             "loss has a T^2-scaled KD term under SGD, train.lr otherwise)")
    max_steps: int | None = Field(None, ge=1, description="stop each phase after this many steps")
    hint_epochs: float | None = Field(None, ge=0, description="FitNet stage-1 (hint) epochs (default: epochs)")
    peers: int = Field(2, ge=2, description="DML: number of peers N")
    rampup: float = Field(0.3, ge=0, le=1, description="DML: share of the steps over which the mutual term's "
                          "weight rises to its full value (exp(-5(1-t)^2)); 0 = constant from the start, as in the paper")
    generations: int = Field(2, ge=1, description="Born-Again: number of generations K")
    assistant: str | ModelRef | None = Field(None, description="TAKD assistant (default: the teacher's zoo "
                                             "architecture at the geometric-mean size, else the teacher cut to that size)")
    compare_scratch: bool = Field(False, description="also train the student alone (CE, same budget) and report it")
    compare_direct: bool = Field(True, description="TAKD: also distil the student directly from the teacher")

    def validate_method(self, where: str = "distill") -> None:
        """Raise `NetcompressError` for an unknown method or weight key (before any training)."""
        DISTILLERS.get(self.method)
        bad = set(self.weights) - _WEIGHT_KEYS[self.method]
        if bad:
            allowed = ", ".join(sorted(_WEIGHT_KEYS[self.method])) or "none"
            raise NetcompressError(f"{where}: weights: unknown key(s) {', '.join(sorted(bad))} for method "
                                   f"{self.method!r} (allowed: {allowed})")


@dataclass
class DistillResult:
    """What a protocol returns: the output student, its accuracy, JSON-able facts, and extra models
    (peers, generations, assistant, ensembles) by name."""

    student: nn.Module
    accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)


def make_fit(data, config: TrainConfig | None = None, seed: int = 0, progress: bool | None = False,
             **overrides: Any) -> FitFn:
    """A `FitFn` around `netcompress.train.fit` with fixed data, settings and seed."""

    def _fit(model: nn.Module, methods=(), loss_fn=None, tag: str = "train", **over: Any) -> History:
        kw = {**overrides, **{k: v for k, v in over.items() if v is not None}}
        return fit(model, data, config, methods=methods, loss_fn=loss_fn, seed=seed, progress=progress, desc=tag, **kw)

    return _fit


def train_student(student: nn.Module, method, fit_fn: FitFn, tag: str = "distill", **overrides: Any) -> History:
    """Train `student` with one distiller: ``fit(methods=[method], loss_fn=method.task_loss)``,
    then `method.finalize` (hooks removed, teacher mode restored) even when training fails."""
    try:
        return fit_fn(student, methods=[method], loss_fn=method.task_loss, tag=tag, **overrides)
    finally:
        method.finalize(student)


def fresh_copy(model: nn.Module) -> nn.Module:
    """Same architecture, newly initialised weights (every module with `reset_parameters`)."""
    new = copy.deepcopy(model)
    for m in new.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    new.train()
    return new


FROM_TEACHER = "from-teacher"


def student_from_teacher(teacher: nn.Module, data, depth: float = 1.0, width: float = 0.5,
                         criterion: str = "l1", ignore: Sequence[str] = ()) -> nn.Module:
    """A student cut out of the teacher: its most important blocks and channels, with their weights
    (DistilBERT's "one layer out of two", Sanh et al. 2019; Minitron's pruned-then-distilled
    students, Muralidharan et al. 2024). The teacher is unchanged.

    Args:
        teacher: the trained teacher.
        data: calibration data (a DataBundle); its example batch traces the model.
        depth: fraction of the teacher's repeated blocks kept (Block Influence picks which); 1 keeps all.
        width: fraction of every channel group kept (attention heads, MLP widths, the embedding
            width, conv filters), ranked by `criterion` (see `netcompress.prune.importance`).
        ignore: module names (prefixes or fnmatch patterns) whose channels stay, e.g. a conv stem.

    Example:
        >>> import netcompress as nc
        >>> data = nc.data.load("pydoc-text").subset(16, 8)
        >>> t = nc.models.create_for("gpt-tiny", data, seed=0)
        >>> s = student_from_teacher(t, data, depth=0.5, width=0.5)
        >>> len(s.blocks), s.blocks[0].attn.q_proj.out_features, s.tok_emb.embedding_dim
        (2, 64, 64)
    """
    from netcompress.prune.depth import depth as prune_depth
    from netcompress.prune.structured import channels

    for name, v in (("depth", depth), ("width", width)):
        if not 0 < v <= 1:
            raise NetcompressError(f"student {FROM_TEACHER}: {name} must be in (0, 1], got {v}")
    x = data.example
    student = prune_depth(teacher, 1 - depth, example_inputs=x, data=data) if depth < 1 else copy.deepcopy(teacher)
    if width < 1:
        student = channels(student, criterion, 1 - width, example_inputs=x, data=data, ignore=ignore)
    return student.train()


def build_student(ref: str | ModelRef | dict | None, data, where: str = "distill",
                  teacher: nn.Module | None = None) -> nn.Module:
    """A new model from a zoo name, ``{name, kwargs}`` or a saved file, shaped for `data`; or
    ``from-teacher`` (kwargs: depth, width, criterion, ignore), cut out of `teacher` by
    `student_from_teacher`."""
    from pathlib import Path

    from netcompress.models import create_for, load

    if ref is None:
        raise NetcompressError(f"{where}: student: required for this method (a zoo name such as lenet5-quarter)")
    if isinstance(ref, dict):
        ref = ModelRef.from_dict(ref, f"{where}: student")
    if isinstance(ref, str) and (ref.endswith((".pt", ".ncm")) or Path(ref).is_file()):
        return load(ref)
    name, kw = (ref, {}) if isinstance(ref, str) else (ref.name, dict(ref.kwargs))
    if name == FROM_TEACHER:
        if teacher is None:
            raise NetcompressError(f"{where}: student: {FROM_TEACHER} needs a teacher")
        unknown = set(kw) - {"depth", "width", "criterion", "ignore"}
        if unknown:
            raise NetcompressError(f"{where}: student: {FROM_TEACHER} takes depth, width, criterion, ignore; "
                                   f"not {', '.join(sorted(unknown))}")
        return student_from_teacher(teacher, data, **kw)
    return create_for(name, data, **kw)


def _alpha(cfg: DistillConfig, default: float) -> float:
    return default if cfg.alpha is None else cfg.alpha


def _budget(cfg: DistillConfig) -> dict[str, Any]:
    return {"epochs": cfg.epochs, "lr": cfg.lr, "max_steps": cfg.max_steps}


def _acc(model: nn.Module, data) -> float:
    return round(evaluate(model, data), 6)


# ---------------------------------------------------------------- single-teacher protocols
def _run_kd(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """KD (Hinton et al. 2015): frozen eval-mode teacher under no_grad; CE + KD."""
    from netcompress.distill.methods import KD

    h = train_student(student, KD(teacher, cfg.temperature, _alpha(cfg, 0.9)), fit_fn, "kd", **_budget(cfg))
    return DistillResult(student, _acc(student, data), histories={"kd": h.to_list()})


def _run_fitnet(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """FitNets (Romero et al. 2015): stage 1 trains the student's layers up to the guided layer to
    regress the teacher's hint (task loss 0, so only those layers and the regressor get gradients);
    the regressor is then dropped and stage 2 trains the whole student by KD."""
    from netcompress.distill.methods import KD, Hint, zero_task_loss

    hint = Hint(teacher, cfg.layers, cfg.weights.get("hint", 1.0), example_inputs=data.example)
    b1 = {**_budget(cfg), "epochs": cfg.hint_epochs if cfg.hint_epochs is not None else cfg.epochs}
    try:
        h1 = fit_fn(student, methods=[hint], loss_fn=zero_task_loss, tag="hint", **b1)
    finally:
        hint.finalize(student)
    h2 = train_student(student, KD(teacher, cfg.temperature, _alpha(cfg, 0.9)), fit_fn, "kd", **_budget(cfg))
    return DistillResult(student, _acc(student, data), extra={"hint_pairs": [list(p) for p in hint.pairs]},
                         histories={"hint": h1.to_list(), "kd": h2.to_list()})


def _feature_protocol(kind: str):
    def run(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
        from netcompress.distill.methods import AT, RKD, SP

        # the papers' weights, balanced on the first step unless weights are given (see methods._FeatureMethod)
        common = dict(temperature=cfg.temperature, alpha=_alpha(cfg, _KD_ALPHA[kind]), example_inputs=data.example,
                      balance=not cfg.weights)
        if kind == "at":
            m = AT(teacher, cfg.layers, cfg.weights.get("at", 500.0), mode=cfg.at_mode, **common)
        elif kind == "rkd":
            m = RKD(teacher, cfg.layers, cfg.weights.get("distance", 25.0), cfg.weights.get("angle", 50.0), **common)
        else:
            m = SP(teacher, cfg.layers, cfg.weights.get("sp", 3000.0), **common)
        h = train_student(student, m, fit_fn, kind, **_budget(cfg))
        extra = {"layer_pairs": [list(p) for p in m.pairs]}
        if m.balance:
            extra["weight_scale"] = m.scale
        return DistillResult(student, _acc(student, data), extra=extra, histories={kind: h.to_list()})

    run.__doc__ = {"at": "Attention Transfer (Zagoruyko & Komodakis 2017) added to CE + KD (CE only if alpha 0).",
                   "rkd": "Relational KD (Park et al. 2019), distance + angle, added to CE + KD (CE only if alpha 0).",
                   "sp": "Similarity-Preserving KD (Tung & Mori 2019) added to CE + KD (CE only if alpha 0)."}[kind]
    return run


# ---------------------------------------------------------------- multi-model protocols
DML_RAMPED_WEIGHT = 2.0
"""DML's default full weight of the mutual term when it ramps up: the ramp keeps the term small
while the peers are still random, so it can end at twice the paper's weight. On mnist-5k (8 seeds,
benchmarks/results/defaults_dml.md) it gains over the paper's constant weight 1 by +0.09 ± 0.47
points on the MLP 784-64-10, +0.46 ± 0.60 on lenet5-quarter (whose paper runs fell to 95.1 % on
one seed) and +0.49 ± 0.45 on lenet5 at width 0.1; against the better of the student's two runs
alone (10 and 20 epochs) it is +0.15, -0.08 and +0.85 points."""


def _run_dml(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """Deep Mutual Learning (Zhang et al. 2018): N peers of the student architecture trained together,
    each on CE + KL to the others' detached outputs; no teacher. Reports each peer and the ensemble;
    the output model is peer 0 (never selected on the test set)."""
    from netcompress.distill.methods import DML, Ensemble, Peers

    peers = [student]
    for i in range(1, cfg.peers):
        p = fresh_copy(student)
        # a student built right after torch.manual_seed(s), distilled with seed s, draws the same
        # numbers as its first fresh copy: the next draw differs
        for _ in range(2):
            if not any(all(torch.equal(a, b) for a, b in zip(p.parameters(), q.parameters())) for q in peers):
                break
            p = fresh_copy(student)
        else:
            raise NetcompressError(f"dml: peer {i} starts from the same weights as peer 0 (no module of the "
                                   f"student has reset_parameters), so mutual learning would be training alone")
        peers.append(p)
    group = Peers(peers)
    m = DML(temperature=cfg.temperature if cfg.alpha is not None else 1.0,
            weight=cfg.weights.get("kl", DML_RAMPED_WEIGHT if cfg.rampup > 0 else 1.0), rampup=cfg.rampup)
    h = fit_fn(group, methods=[m], loss_fn=m.task_loss, tag="dml", **_budget(cfg))
    ens = Ensemble(peers).eval()
    accs = [_acc(p, data) for p in peers]
    models = {f"peer{i}": p for i, p in enumerate(peers)}
    models["ensemble"] = ens
    return DistillResult(peers[0], accs[0], extra={"peer_acc": accs, "ensemble_acc": _acc(ens, data)},
                         histories={"dml": h.to_list()}, models=models)


def _run_born_again(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """Born-Again Networks (Furlanello et al. 2018): generation k (same architecture, new init) is
    distilled from generation k-1, generation 0 being the teacher; the ensemble of generations
    1..K (averaged logits, BANE) is evaluated. The output model is generation K."""
    from netcompress.distill.methods import KD, Ensemble

    arch = student if student is not None else teacher
    gens: list[nn.Module] = []
    hist: dict[str, list] = {}
    prev = teacher
    for k in range(1, cfg.generations + 1):
        g = fresh_copy(arch)
        hist[f"gen{k}"] = train_student(g, KD(prev, cfg.temperature, _alpha(cfg, 0.9)), fit_fn, f"gen{k}",
                                        **_budget(cfg)).to_list()
        gens.append(g)
        prev = g
    ens = Ensemble(gens).eval()
    accs = [_acc(g, data) for g in gens]
    models = {f"gen{i + 1}": g for i, g in enumerate(gens)}
    models["ensemble"] = ens
    return DistillResult(gens[-1], accs[-1], extra={"generation_acc": accs, "ensemble_acc": _acc(ens, data)},
                         histories=hist, models=models)


def _width_of(spec: dict[str, Any]) -> tuple[str, float]:
    name, kw = spec["name"], spec.get("kwargs", {})
    base, w = name, 1.0
    for suffix, sw in (("-half", 0.5), ("-quarter", 0.25)):
        if name.endswith(suffix):
            base, w = name[: -len(suffix)], sw
    return base, float(kw.get("width", w))


def assistant_for(teacher: nn.Module, student: nn.Module, data) -> nn.Module:
    """TAKD's teacher assistant by width interpolation, at about the geometric mean of the teacher's
    and the student's parameter counts (params ~ width^2, so width_ta = width_t * (P_s / P_t) ** 0.25):
    the teacher's zoo architecture at that width when its builder takes a width, else a model cut
    out of the teacher at that width (`student_from_teacher`: timm, Hugging Face, torchvision or
    any other model the channel graph can prune)."""
    from netcompress.models import MODELS, create_for

    p_t = sum(p.numel() for p in teacher.parameters())
    p_s = sum(p.numel() for p in student.parameters())
    if p_s >= p_t:
        raise NetcompressError(f"takd: the student ({p_s:,} parameters) is not smaller than the teacher ({p_t:,}); "
                               "an assistant goes between them")
    ratio = (p_s / p_t) ** 0.25
    spec = getattr(teacher, "netcompress_spec", None) or {}
    base, w_t = _width_of(spec) if spec else ("", 1.0)
    if base in MODELS and "width" in inspect.signature(MODELS.get(base)).parameters:
        shape_keys = ("width", "num_classes", "in_channels", "input_size")  # the assistant is shaped for `data`
        kw = {k: v for k, v in spec.get("kwargs", {}).items() if k not in shape_keys}
        return create_for(base, data, width=round(w_t * ratio, 4), **kw)
    return student_from_teacher(teacher, data, width=round(ratio, 4))


def _run_takd(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """TAKD (Mirzadeh et al. 2020): teacher -> assistant (KD) -> student (KD), reported next to the
    same student distilled directly from the teacher (`compare_direct`)."""
    from netcompress.distill.methods import KD

    direct = copy.deepcopy(student) if cfg.compare_direct else None
    assistant = (build_student(cfg.assistant, data, "takd: assistant") if cfg.assistant is not None
                 else assistant_for(teacher, student, data))
    alpha = _alpha(cfg, 0.9)
    h_a = train_student(assistant, KD(teacher, cfg.temperature, alpha), fit_fn, "assistant", **_budget(cfg))
    h_s = train_student(student, KD(assistant, cfg.temperature, alpha), fit_fn, "student", **_budget(cfg))
    extra: dict[str, Any] = {"assistant_acc": _acc(assistant, data), "assistant_params": sum(p.numel() for p in assistant.parameters()),
                             "assistant_spec": getattr(assistant, "netcompress_spec", {}).get("name")}
    hist = {"assistant": h_a.to_list(), "student": h_s.to_list()}
    models = {"assistant": assistant}
    if direct is not None:
        hist["direct_kd"] = train_student(direct, KD(teacher, cfg.temperature, alpha), fit_fn, "direct_kd",
                                          **_budget(cfg)).to_list()
        extra["direct_kd_acc"] = _acc(direct, data)
        models["direct_kd"] = direct
    acc = _acc(student, data)
    extra["takd_acc"] = acc
    return DistillResult(student, acc, extra=extra, histories=hist, models=models)


DISTILLERS: Registry[Callable[..., DistillResult]] = Registry("distillation method")
DISTILLERS.register("kd", _run_kd, help="Hinton et al. 2015: CE + T^2 KL to a frozen teacher")
DISTILLERS.register("fitnet", _run_fitnet, help="Romero et al. 2015: hint stage through a regressor, then KD")
DISTILLERS.register("at", _feature_protocol("at"), help="Zagoruyko & Komodakis 2017: attention transfer + KD")
DISTILLERS.register("rkd", _feature_protocol("rkd"), help="Park et al. 2019: relational (distance, angle) + KD")
DISTILLERS.register("sp", _feature_protocol("sp"), help="Tung & Mori 2019: similarity-preserving + KD")
DISTILLERS.register("dml", _run_dml, help="Zhang et al. 2018: N peers learn mutually; peers + ensemble")
DISTILLERS.register("born-again", _run_born_again, help="Furlanello et al. 2018: K generations + ensemble")
DISTILLERS.register("takd", _run_takd, help="Mirzadeh et al. 2020: teacher -> assistant -> student")


def _run_hidden(teacher, student, data, cfg: DistillConfig, fit_fn: FitFn) -> DistillResult:
    """TinyBERT / MiniLM-style: per-token KD + hidden states through projections + attention relations."""
    from netcompress.distill.transformer import _run_hidden as run

    return run(teacher, student, data, cfg, fit_fn)


DISTILLERS.register("hidden", _run_hidden, help="Jiao et al. 2020 / Wang et al. 2021: transformer KD of logits, "
                    "hidden states (layer map + projections) and attention relations")


@torch.no_grad()
def _check_runs(model: nn.Module, data, who: str) -> None:
    """Fail early, with a clear message, when `model` cannot classify `data`'s inputs."""
    try:
        with eval_mode(model):
            out = call(model, to_device(head(data.example, 2), next((p.device for p in model.parameters()), torch.device("cpu"))))
    except RuntimeError as e:
        raise NetcompressError(f"distill: the {who} cannot run on {tuple(data.input_shape)} inputs: "
                               f"{str(e).splitlines()[0]}") from None
    logits = logits_of(out)
    if logits.shape[-1] != data.num_classes:
        raise NetcompressError(f"distill: the {who} has {logits.shape[-1]} outputs but the data has "
                               f"{data.num_classes} classes")


_KD_ALPHA = {"kd": 0.9, "fitnet": 0.9, "born-again": 0.9, "takd": 0.9, "at": 0.9, "rkd": 0.9, "sp": 0.9, "dml": 0.0,
             "hidden": 0.5}


def default_lr(cfg: DistillConfig, train: TrainConfig) -> float:
    """The distillation learning rate when `cfg.lr` is not given: ``train.lr / T`` under SGD for the
    methods whose loss has Hinton's T^2-scaled KD term (kd, fitnet, born-again, takd, hidden, and
    at / rkd / sp with alpha > 0), ``train.lr`` otherwise. The gradient of T^2 KL(p_t^T || p_s^T)
    with respect to the student's logits is T (p_s^T - p_t^T) (Hinton et al. 2015), up to T times a
    cross-entropy gradient, so SGD's same step size overshoots: at lr 0.05 KD does not beat the
    student trained alone; at 0.05 / 4 it does (benchmarks/results/defaults_distill*.md). Adam and
    AdamW normalise the gradient's scale away, so they keep ``train.lr``."""
    if cfg.lr is not None:
        return cfg.lr
    if train.optimizer != "sgd":
        return train.lr
    kd_term = _alpha(cfg, _KD_ALPHA[cfg.method]) > 0
    return train.lr / cfg.temperature if kd_term else train.lr


LM_TEMPERATURE, LM_ALPHA = 1.0, 0.5
"""KD's temperature and weight on language-modelling data (``data.task == "lm"``) when not given.
Per token the teacher's distribution spans the whole vocabulary (256 bytes on pydoc-text) and puts
almost no mass on most of it; softened at T 2 or 4 it spreads that mass back over bytes the teacher
rules out. On gpt-tiny's half-size student cut from the teacher, T 1 beat T 2 on the validation
topics on every seed and recovered 0.40 of the gap to the teacher against 0.33 (3/3 seeds better;
labels alone 0.33, benchmarks/results/B12_student_init_gpt.md); alpha 0.5 keeps the labels' half
of the loss, as every B12 KD run does."""


def lm_defaults(cfg: DistillConfig, data: Any) -> DistillConfig:
    """`cfg` with `LM_TEMPERATURE` / `LM_ALPHA` for the settings not given, on language-modelling data
    (DML, which has no teacher, keeps its own)."""
    if getattr(data, "task", None) != "lm" or cfg.method == "dml":
        return cfg
    upd: dict[str, Any] = {}
    if "temperature" not in cfg.model_fields_set:
        upd["temperature"] = LM_TEMPERATURE
    if cfg.alpha is None:
        upd["alpha"] = LM_ALPHA
    return cfg.model_copy(update=upd) if upd else cfg


PATIENCE = 2.0
"""Distillation phases train this many times the task's ``train.epochs`` unless `epochs` is given."""


def default_epochs(cfg: DistillConfig, train: TrainConfig) -> float:
    """The epochs of each distillation phase when `cfg.epochs` is not given: ``PATIENCE x train.epochs``.

    A teacher's soft targets keep teaching long after the labels alone stop helping ("a good teacher
    is patient", Beyer et al. 2022): on mnist-5k the MLP 784-64-10 trained alone saturates (94.33 %
    at 10 epochs, 94.40 % at 20), while KD from a lenet5 teacher with every other default reaches
    95.20 % at 20 (3 seeds; benchmarks/results/defaults_distill_lenet5.md compares each method with
    the student alone at both budgets)."""
    return cfg.epochs if cfg.epochs is not None else PATIENCE * train.epochs


def run_distill(cfg: DistillConfig, teacher: nn.Module | None, student: nn.Module | None, data,
                fit_fn: FitFn, train: TrainConfig | None = None) -> DistillResult:
    """Run `cfg.method`; adds teacher accuracy and, with `compare_scratch`, the student trained alone
    (same architecture and epochs, CE only, at the plain training lr) and the share of the
    teacher-scratch gap recovered.

    Args:
        train: the settings `fit_fn` trains with by default (a recipe's ``train:``); when given,
            each phase trains `default_epochs` at `default_lr` unless `cfg` sets them. Without it,
            `fit_fn`'s own defaults apply.
    """
    cfg.validate_method()
    cfg = lm_defaults(cfg, data)
    if teacher is None and cfg.method != "dml":
        raise NetcompressError(f"distill: method {cfg.method!r} needs a teacher")
    if student is None and cfg.method not in ("born-again",):
        raise NetcompressError(f"distill: method {cfg.method!r} needs a student model")
    for who, m in (("teacher", teacher), ("student", student)):
        if m is not None:
            _check_runs(m, data, who)
    scratch = fresh_copy(student if student is not None else teacher) if cfg.compare_scratch else None
    if train is not None:
        cfg = cfg.model_copy(update={"epochs": default_epochs(cfg, train)})
    scratch_budget = _budget(cfg)  # the same epochs, at the plain training lr unless one is given
    if train is not None:
        cfg = cfg.model_copy(update={"lr": default_lr(cfg, train)})
    # the teacher teaches in eval mode; the caller gets its own per-module flags back
    with eval_mode(teacher) if teacher is not None else contextlib.nullcontext():
        res = DISTILLERS.get(cfg.method)(teacher, student, data, cfg, fit_fn)
        dml_t1 = cfg.method == "dml" and cfg.alpha is None  # DML's mutual KL: T 1 unless alpha is given
        res.extra = {"method": cfg.method, "student_acc": res.accuracy, "lr": cfg.lr, "epochs": cfg.epochs,
                     "temperature": 1.0 if dml_t1 else cfg.temperature,
                     "alpha": None if dml_t1 else _alpha(cfg, _KD_ALPHA[cfg.method]), **res.extra}
        if teacher is not None:
            res.extra["teacher_acc"] = _acc(teacher, data)
    if scratch is not None:
        res.histories["scratch"] = fit_fn(scratch, tag="scratch", **scratch_budget).to_list()
        s_acc = _acc(scratch, data)
        res.extra["scratch_acc"] = s_acc
        if teacher is not None and res.extra["teacher_acc"] > s_acc:  # only meaningful with a real gap
            res.extra["gap_recovered"] = round((res.accuracy - s_acc) / (res.extra["teacher_acc"] - s_acc), 4)
        res.models["scratch"] = scratch
    return res
