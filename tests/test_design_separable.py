"""Depthwise-separable conversion: structure, MAC formula, exact recovery of separable kernels,
least-squares refit, refusals, save / reload."""
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.design import separable, separable_conv, separable_cost, separable_ratio
from netcompress.measure import count_macs, macs_by_module


pytestmark = pytest.mark.usefixtures("one_thread")


def test_structure_and_default_selection():
    m = nc.models.create("vgg-small", in_channels=1, input_size=28)
    s = separable(m)
    assert isinstance(s.features[0], nn.Conv2d)  # one input channel: already depthwise, kept
    for i in (3, 7, 10, 14, 17):
        dw, pw = s.features[i]
        c = m.features[i].in_channels
        assert dw.groups == c and dw.out_channels == c and dw.kernel_size == (3, 3) and dw.bias is None
        assert pw.kernel_size == (1, 1) and pw.out_channels == m.features[i].out_channels
    x = torch.randn(2, 1, 28, 28)
    assert s(x).shape == m(x).shape


def test_macs_equal_formula_and_mobilenet_ratio():
    m = nc.models.create("lenet5")  # conv2: 20 -> 50, 5 x 5, output 8 x 8
    x = torch.zeros(1, 1, 28, 28)
    s = separable(m)
    macs = macs_by_module(s, x)
    assert macs["features.3.0"] == 20 * 25 * 8 * 8  # depthwise
    assert macs["features.3.1"] == 20 * 50 * 8 * 8  # pointwise
    before = macs_by_module(m, x)["features.3"]
    assert before == 20 * 50 * 25 * 8 * 8
    ratio = (macs["features.3.0"] + macs["features.3.1"]) / before
    assert ratio == pytest.approx(separable_ratio(50, 5)) == pytest.approx(1 / 50 + 1 / 25)
    assert separable_cost(20, 50, 5, (8, 8)).macs == macs["features.3.0"] + macs["features.3.1"]
    assert count_macs(m, x) - count_macs(s, x) == before - separable_cost(20, 50, 5, (8, 8)).macs


def test_exactly_separable_kernel_is_recovered():
    """Oracle: a conv whose kernel is W[o, c] = P[o, c] D[c] is reproduced to 1e-5."""
    c, o, k = 6, 9, 3
    d, p = torch.randn(c, k, k), torch.randn(o, c)
    conv = nn.Conv2d(c, o, k, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(p[:, :, None, None] * d[None])
    s = separable_conv(conv)
    x = torch.randn(3, c, 11, 11)
    torch.testing.assert_close(s(x), conv(x), atol=1e-5, rtol=0)


def test_least_squares_refit_lowers_output_error():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
    m.netcompress_spec = None
    x = torch.randn(64, 3, 12, 12)
    with torch.no_grad():
        ref = m(x)
        e_svd = (separable(m)(x) - ref).norm()
        e_ls = (separable(m, calibration=x)(x) - ref).norm()
    assert e_ls < 0.9 * e_svd
    dw, pw = separable(m, calibration=x)[2]
    torch.testing.assert_close(dw.weight.flatten(1).norm(dim=1), pw.weight.flatten(2).norm(dim=(0, 2)))  # balanced


def test_refused_layer_named_and_model_unchanged():
    m = nc.models.create("mobilenet-small")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(nc.NetcompressError, match=r"layer 'blocks.0.0'.*not a standard"):
        separable(m, filter_fn=lambda mod, n: n.startswith("blocks.0"))
    with pytest.raises(nc.NetcompressError, match="no standard"):
        separable(nc.models.create("lenet300"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_input_model_unchanged():
    m = nc.models.create("lenet5")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = separable(m, calibration=torch.randn(8, 1, 28, 28))
    assert isinstance(m.features[3], nn.Conv2d) and isinstance(s.features[3], nn.Sequential)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_separable_model_saves_and_reloads(tmp_path):
    m = nc.models.create("vgg-small-quarter", in_channels=1, input_size=28).eval()
    s = separable(m).eval()
    g = nc.models.load(nc.models.save(s, tmp_path / "sep.pt"))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(g(x), s(x), atol=0, rtol=0)
    assert g.features[3][0].groups == m.features[3].in_channels
