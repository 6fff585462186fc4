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


EXPORTS = {
    "onnx": lambda m, d: nc.export(m, "onnx", example_inputs=d.example),
    # an untrained model has near ties: int8 may flip them, which is not what this test is about
    "onnx_int8": lambda m, d: nc.export(m, "onnx", example_inputs=d.example, int8=True, calibration=d.example,
                                        min_top1_int8=0.0),
    "onnx_latency": lambda m, d: nc.export(m, "onnx", example_inputs=d.example, measure_latency=True, min_run_time=0.01),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_leaves_a_frozen_batchnorm_frozen(name, digits, one_thread):
    """Export traces and checks in eval mode, then gives every module its own flag back."""
    m = _frozen_bn()
    before = _flags(m)
    res = EXPORTS[name](m, digits.subset(64, 32))
    assert res.check["passed"]
    assert _flags(m) == before


@pytest.mark.parametrize("name", ["export", "lower"])
def test_early_exit_export_leaves_a_frozen_batchnorm_frozen(name, digits, one_thread):
    """`lower` alone (no `export` around it) traces the stages in eval mode and restores the flags too."""
    mx = nc.dynamic.early_exit(_frozen_bn(), ["2"], example_inputs=digits.example)
    mx.train()
    mx.backbone[1].eval()
    before = _flags(mx)
    if name == "export":
        res = nc.export(mx, "onnx", example_inputs=digits.example)
        assert res.early_exit and res.check["passed"]
    else:
        from netcompress.export import lower

        program = lower(mx, "onnx", digits.example)
        assert program[:2] == b"PK"
    assert _flags(mx) == before


def test_compare_outputs_leaves_both_models_flags(digits, one_thread):
    from netcompress.measure.runtime import compare_outputs

    ref, cand = _frozen_bn(0), _frozen_bn(0)
    cand[1].train()  # the candidate's BatchNorm in train mode: equal outputs only if it is compared in eval mode
    cand[0].eval()  # and a different pattern of flags
    before_ref, before_cand = _flags(ref), _flags(cand)
    c = compare_outputs(ref, cand, [digits.example])
    assert c["max_abs_diff"] == 0.0 and c["top1_agreement"] == 1.0  # both compared in eval mode
    assert _flags(ref) == before_ref and _flags(cand) == before_cand


def test_pack_stage_leaves_the_models_flags(digits, tmp_path, one_thread):
    """The pack stage returns the unpacked copy (eval mode); the model handed in keeps its flags."""
    from netcompress.recipe.stages import STAGES, StageContext

    m = nc.models.create_for("mobilenet-small-quarter", digits, seed=0)  # pack stores models create builds
    m.train()
    m.stem[1].eval()
    before = _flags(m)
    assert not all(before) and any(before)
    kind = STAGES.get("pack")
    ctx = StageContext(data=digits.subset(64, 32), train=nc.train.TrainConfig(epochs=1), seed=0,
                       out_dir=tmp_path / "pack", name="pack", progress=False)
    res = kind.run(ctx, m, kind.config.from_dict({"coding": "huffman"}, "pack"))
    assert res.model is not m and not any(_flags(res.model))
    assert _flags(m) == before


@pytest.mark.parametrize("train", [True, False])
def test_early_exit_copy_keeps_the_backbones_own_flags(train):
    """The multi-exit model's backbone is a copy of the caller's model with its per-module modes (a
    frozen BatchNorm stays frozen); the new heads take the model's mode."""
    from netcompress.dynamic import early_exit

    m = _frozen_bn()
    m.train(train)
    m[1].eval()
    mx = early_exit(m, exits=["2"], example_inputs=torch.zeros(2, 1, 8, 8))
    assert _flags(mx.backbone) == _flags(m)
    assert mx.training == train and all(h.training == train for h in mx.heads.modules())
