import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.quantize import BinaryConnect, UniformQAT, calibrate, fake_quantize, quantize_
from netcompress.quantize.uniform import quantize_dequantize


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_fake_quant_levels_and_error(bits, symmetric, per_channel):
    w = torch.randn(6, 20)
    q = fake_quantize(w, bits, symmetric, per_channel)
    s, z = calibrate(w, bits, symmetric, per_channel)
    rows = q if per_channel else q.reshape(1, -1)
    for r in rows:
        assert torch.unique(r).numel() <= 2 ** bits
    scale = s.view(-1, 1) if per_channel else s
    assert ((q - w).abs() <= scale / 2 + 1e-6).all()  # min/max range: nothing clipped


def test_golden_symmetric_4bit():
    w = torch.tensor([-1.0, -0.55, 0.1, 0.7])
    # scale = 1 / 7, levels k/7
    q = fake_quantize(w, 4, symmetric=True)
    assert torch.allclose(q, torch.tensor([-7, -4, 1, 5]) / 7.0)


def test_affine_represents_zero_exactly():
    w = torch.rand(50) * 3 + 0.2  # all positive
    s, z = calibrate(w, 4, symmetric=False)
    q = quantize_dequantize(torch.tensor([0.0]), s, z, 4, False, False)
    assert q.item() == 0.0


def test_straight_through_gradient_is_clipped_outside_range():
    w = torch.tensor([-2.0, -0.2, 0.3, 2.0], requires_grad=True)
    s, z = calibrate(w.detach() * 0.5, 4)  # a range that clips the outer two
    from netcompress.quantize.uniform import _STEQuant

    _STEQuant.apply(w, s, z, 4, True, False).sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_mse_calibration_beats_minmax_on_outliers():
    torch.manual_seed(0)
    w = torch.randn(10_000)
    w[0] = 40.0
    err, scale = {}, {}
    for method in ("minmax", "mse", "percentile"):
        s, z = calibrate(w, 4, method=method)
        scale[method] = s.item()
        err[method] = (quantize_dequantize(w, s, z, 4, True, False) - w).pow(2).mean().item()
    assert err["mse"] < 0.5 * err["minmax"]
    assert scale["percentile"] == pytest.approx(w.abs().quantile(0.999).item() / 7, rel=1e-5)


def test_quantize_bad_input_leaves_model_unchanged():
    m = nc.models.create("lenet300", in_channels=1, input_size=8)
    before = m.fc1.weight.clone()
    with pytest.raises(NetcompressError, match="bits"):
        quantize_(m, bits=9)
    with pytest.raises(NetcompressError, match="observer"):
        quantize_(m, bits=4, observer="entropy")
    assert torch.equal(before, m.fc1.weight)


def test_qat_forward_sees_quantized_weights_and_updates_shadow(digits):
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    qat = UniformQAT(bits=4, per_channel=True)
    qat.prepare(m)
    x = digits.example
    out = m(x)
    shadow = qat._shadow[m.fc1].clone()
    ref = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    ref.load_state_dict(m.state_dict())  # m currently holds quantized weights
    assert torch.equal(out, ref(x))
    out.sum().backward()
    qat.after_backward(m)
    assert torch.equal(m.fc1.weight.detach(), shadow)  # float shadow back before the optimizer step
    qat.remove()
    h = nc.train.fit(m, digits, methods=[UniformQAT(bits=4)], epochs=1, max_steps=15, progress=False)
    assert h.final_test_acc > 0.2


def test_qat_finalize_writes_4bit_weights(digits):
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    qat = UniformQAT(bits=4, per_channel=True)
    nc.train.fit(m, digits, methods=[qat], epochs=1, max_steps=5, progress=False)
    qat.finalize(m)
    for row in m.fc1.weight.detach():
        assert torch.unique(row).numel() <= 16


def test_qat_default_observer_starts_at_the_mse_ptq_weights_and_rechooses_each_epoch(digits):
    """QAT's default observer is PTQ's (mse): its first forward sees exactly the weights quantize_
    writes, so training starts where PTQ ends, not at the coarser min/max grid."""
    torch.manual_seed(0)
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    nc.train.fit(m, digits, epochs=1, max_steps=20, progress=False)
    ptq = copy.deepcopy(m)
    quantize_(ptq, bits=2)
    minmax = copy.deepcopy(m)
    quantize_(minmax, bits=2, observer="minmax")
    qat = UniformQAT(bits=2)
    assert qat.observer == "mse"
    qat.prepare(m)
    m(digits.example)
    assert torch.equal(m.fc1.weight, ptq.fc1.weight)
    assert not torch.equal(m.fc1.weight, minmax.fc1.weight)
    kept = qat._ratio[m.fc1].clone()
    assert bool((kept < 1).any())  # some channel clips below its min/max range
    qat.on_epoch_end(m, 0)  # the float weights are back and the ratios are chosen again next epoch
    assert not qat._ratio
    m(digits.example)
    assert torch.equal(qat._ratio[m.fc1], kept)  # same weights, same choice
    qat.finalize(m)
    assert torch.equal(m.fc1.weight, ptq.fc1.weight)


def test_binaryconnect_deterministic(digits):
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    bc = BinaryConnect()
    h = nc.train.fit(m, digits, methods=[bc], epochs=1, max_steps=20, lr=0.01, progress=False)
    for mod, H in bc.H.items():  # shadow weights stay inside [-H, H]
        assert mod.weight.abs().max() <= H + 1e-7
    bc.finalize(m)
    for mod, H in bc.H.items():
        assert set(torch.unique(mod.weight.detach()).tolist()) <= {-H, H} or torch.allclose(
            torch.unique(mod.weight.detach()).abs(), torch.tensor(H))
    assert h.final_test_acc > 0.15


def test_binaryconnect_stochastic_probability():
    lin = nn.Linear(1000, 10)
    bc = BinaryConnect(stochastic=True)
    m = nn.Sequential(lin)
    bc.prepare(m)
    H = bc.H[lin]
    w = torch.full((10, 1000), 0.5 * H)  # p(+H) = 0.75
    b = bc.transform(lin, w)
    assert torch.equal(b.abs(), torch.full_like(b, H))  # every weight is exactly -H or +H
    frac = (b > 0).float().mean().item()
    assert 0.72 < frac < 0.78
    lin.eval()
    assert (bc.transform(lin, w) > 0).all()  # deterministic sign at evaluation


def test_binary_archive_is_one_bit_per_weight(tmp_path, digits):
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    bc = BinaryConnect()
    bc.prepare(m)
    bc.finalize(m)
    import netcompress.archive as nc_archive
    nc_archive.pack(m, tmp_path / "b.ncz")
    info = nc_archive.inspect(tmp_path / "b.ncz")
    fc1 = next(r for r in info["layers"] if r["name"] == "fc1.weight")
    assert fc1["bits_per_weight"] <= 1.01
    x = digits.example
    assert torch.equal(m.eval()(x), nc_archive.unpack(tmp_path / "b.ncz")(x))
