"""Knowledge distillation: losses (pure functions), Methods for `netcompress.train.fit`, protocols.

Example:
    >>> import netcompress as nc
    >>> from netcompress.distill import KD, train_student, make_fit
    >>> data = nc.data.load("digits")                                           # doctest: +SKIP
    >>> kd = KD(teacher, temperature=4.0, alpha=0.9)                             # doctest: +SKIP
    >>> train_student(student, kd, make_fit(data, epochs=5))                     # doctest: +SKIP
"""
from netcompress.distill import losses
from netcompress.distill.features import Adapter, make_adapter
from netcompress.distill.losses import at_loss, hint_loss, kd_loss, rkd_loss, sp_loss
from netcompress.distill.methods import AT, DML, KD, RKD, SP, Ensemble, Hint, Peers, TeacherMethod
from netcompress.distill.protocols import (DISTILLERS, DistillConfig, DistillResult, ModelRef, assistant_for,
                                           build_student, fresh_copy, make_fit, run_distill, train_student)

__all__ = [
    "losses", "kd_loss", "hint_loss", "at_loss", "rkd_loss", "sp_loss", "Adapter", "make_adapter",
    "TeacherMethod", "KD", "Hint", "AT", "RKD", "SP", "DML", "Peers", "Ensemble",
    "DISTILLERS", "DistillConfig", "DistillResult", "ModelRef", "make_fit", "train_student", "fresh_copy",
    "build_student", "assistant_for", "run_distill", "distill", "kd",
]


def distill(method: str, teacher, student, data, *, seed: int = 0, progress: bool | None = False,
            **config) -> DistillResult:
    """Run one distillation protocol end to end with `netcompress.train.fit`.

    Args:
        method: a name in `DISTILLERS` (kd, fitnet, at, rkd, sp, dml, born-again, takd).
        teacher, student: models (student: a model, or None for born-again).
        data: a DataBundle.
        config: `DistillConfig` fields (temperature, alpha, weights, layers, epochs, lr, ...).
    """
    cfg = DistillConfig.from_dict({"method": method, **config}, "distill")
    return run_distill(cfg, teacher, student, data, make_fit(data, seed=seed, progress=progress))


def kd(teacher, student, data, T: float = 4.0, alpha: float = 0.9, **config) -> DistillResult:
    """Hinton et al. 2015 knowledge distillation of `teacher` into `student` (trained in place).

    Example:
        >>> res = kd(teacher, nc.models.create("lenet5-quarter"), data, T=4.0, epochs=3)  # doctest: +SKIP
        >>> res.accuracy, res.extra["teacher_acc"]                                       # doctest: +SKIP
    """
    return distill("kd", teacher, student, data, temperature=T, alpha=alpha, **config)
