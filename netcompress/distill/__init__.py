"""Knowledge distillation: losses (pure functions), Methods for `netcompress.train.fit`, protocols.

Example:
    import netcompress as nc
    from netcompress.distill import KD, train_student, make_fit
    data = nc.data.load("digits")
    kd = KD(teacher, temperature=4.0, alpha=0.9)
    train_student(student, kd, make_fit(data, epochs=5))
"""
from netcompress.core.seeding import forked_rng
from netcompress.distill import losses
from netcompress.train.loop import TrainConfig
from netcompress.distill.features import Adapter, make_adapter
from netcompress.distill.losses import at_loss, hint_loss, kd_loss, rkd_loss, sp_loss
from netcompress.distill.methods import AT, DML, KD, RKD, SP, Ensemble, Hint, Peers, TeacherMethod
from netcompress.distill.protocols import (DISTILLERS, DistillConfig, DistillResult, ModelRef, assistant_for,
                                           build_student, default_epochs, default_lr, fresh_copy, make_fit, run_distill,
                                           student_from_teacher, train_student)

__all__ = [
    "losses", "kd_loss", "hint_loss", "at_loss", "rkd_loss", "sp_loss", "Adapter", "make_adapter",
    "TeacherMethod", "KD", "Hint", "AT", "RKD", "SP", "DML", "Peers", "Ensemble",
    "DISTILLERS", "DistillConfig", "DistillResult", "ModelRef", "make_fit", "train_student", "fresh_copy",
    "build_student", "student_from_teacher", "assistant_for", "run_distill", "default_lr", "default_epochs",
    "distill", "kd",
]


def distill(method: str, teacher, student, data, *, seed: int = 0, progress: bool | None = False,
            train: TrainConfig | None = None, **config) -> DistillResult:
    """Run one distillation protocol end to end with `netcompress.train.fit`.

    Args:
        method: a name in `DISTILLERS` (kd, fitnet, at, rkd, sp, dml, born-again, takd, hidden).
        teacher, student: models (student: a model, None for born-again, or a reference for
            `build_student`: a zoo name, ``{name, kwargs}``, a file, or ``from-teacher``).
        data: a DataBundle.
        train: the training defaults (like a recipe's ``train:``; default `TrainConfig()`).
        config: `DistillConfig` fields (temperature, alpha, weights, layers, epochs, lr, ...); the
            same defaults as the recipe stage and `netcompress distill`, lr and epochs included
            (`default_lr`, `default_epochs`).

    The models the protocol builds (a student by name, DML's other peers, Born-Again's
    generations, TAKD's assistant, regressors and adapters) are initialised from `seed`, as in
    the command and the recipe stage, on a fork of torch's global RNG: the result does not depend
    on what the caller drew before, and the caller's RNG state is left as it was.
    """
    cfg = DistillConfig.from_dict({"method": method, **config}, "distill")
    train = train or TrainConfig()
    with forked_rng(seed):
        if isinstance(student, (str, dict, ModelRef)):
            student = build_student(student, data, "distill", teacher)
        return run_distill(cfg, teacher, student, data, make_fit(data, train, seed=seed, progress=progress),
                           train=train)


def kd(teacher, student, data, **config) -> DistillResult:
    """Hinton et al. 2015 knowledge distillation of `teacher` into `student` (trained in place);
    `config` as in `distill` (temperature 4, alpha 0.9; unless given, 2 x train.epochs at train.lr / T,
    `default_epochs` and `default_lr`).

    Example:
        res = kd(teacher, nc.models.create("lenet5-quarter"), data, epochs=3)
        res.accuracy, res.extra["teacher_acc"]
    """
    return distill("kd", teacher, student, data, **config)
