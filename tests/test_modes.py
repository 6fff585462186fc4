"""Temporary eval mode restores every module's own flag: a caller's frozen BatchNorm stays frozen.

`model.train(was)` sets every submodule to `was`, so the old save/restore unfroze a BatchNorm the
caller had put in eval mode inside a training model (the usual fine-tuning setup)."""
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.modes import eval_mode


def _frozen_bn(seed: int = 0) -> nn.Sequential:
    """A digits classifier in train mode whose BatchNorm the caller froze."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    m.train()
    m[1].eval()
    return m


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_eval_mode_evaluates_every_module_and_restores_each_flag():
    m = _frozen_bn()
    before = _flags(m)
    assert before == [True, True, False, True, True, True]
    with eval_mode(m) as inner:
        assert inner is m and not any(_flags(m))
    assert _flags(m) == before


def test_eval_mode_restores_each_flag_when_the_block_raises():
    m = _frozen_bn()
    before = _flags(m)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(m):
        raise RuntimeError("boom")
    assert _flags(m) == before


CALLERS = {
    "measure": lambda m, d: nc.measure(m, d, latency=False),
    "latency_ms": lambda m, d: nc.measure.latency_ms(m, d.example, min_run_time=0.01),
    "evaluate": lambda m, d: nc.train.evaluate(m, d),
    "count_macs": lambda m, d: nc.measure.count_macs(m, d.example[:1]),
    "macs_by_module": lambda m, d: nc.measure.macs_by_module(m, d.example[:1]),
    "prune_channels_l1": lambda m, d: nc.prune.channels(m, "l1", 0.5, example_inputs=d.example),
    "prune_channels_taylor": lambda m, d: nc.prune.channels(m, "taylor", 0.5, example_inputs=d.example, data=d,
                                                            calibration=16),
    "early_exit": lambda m, d: nc.dynamic.early_exit(m, ["2"], example_inputs=d.example),
}


@pytest.mark.parametrize("name", list(CALLERS))
def test_public_functions_leave_a_frozen_batchnorm_frozen(name, digits, one_thread):
    m = _frozen_bn()
    before = _flags(m)
    CALLERS[name](m, digits.subset(64, 32))
    assert _flags(m) == before


@pytest.mark.parametrize("name", ["predict", "stream", "exit_outputs"])
def test_early_exit_inference_leaves_a_frozen_batchnorm_frozen(name, digits, one_thread):
    mx = nc.dynamic.early_exit(_frozen_bn(), ["2"], example_inputs=digits.example)
    mx.train()
    mx.backbone[1].eval()
    before = _flags(mx)
    x = digits.example
    if name == "predict":
        nc.dynamic.early_exit_predict(mx, x, thresholds=0.5)
    elif name == "stream":
        nc.dynamic.early_exit_stream(mx, x, batch_size=4, thresholds=0.5)
    else:
        nc.dynamic.exit_outputs(mx, [(x, torch.zeros(len(x), dtype=torch.long))])
    assert _flags(mx) == before


def test_kd_restores_the_teachers_own_flags(digits, one_thread):
    """A KD run puts the teacher in eval mode; `finalize` gives every teacher module its flag back."""
    teacher, student = _frozen_bn(0), _frozen_bn(1).train()
    before = _flags(teacher)
    fit_fn = nc.distill.make_fit(digits.subset(64, 32), nc.train.TrainConfig(epochs=1, max_steps=1))
    nc.distill.train_student(student, nc.distill.KD(teacher), fit_fn, "kd")
    assert _flags(teacher) == before


def test_distill_leaves_the_teachers_flags(digits, one_thread):
    teacher, student = _frozen_bn(0), _frozen_bn(1).train()
    before = _flags(teacher)
    nc.distill.distill("kd", teacher, student, digits.subset(64, 32), epochs=1, max_steps=1)
    assert _flags(teacher) == before
