"""Low-rank factorisation: exactness at full rank, Eckart-Young optimality, MAC formulas, refusals,
rank selection by energy and budget, save / reload."""
import math

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.design import (apply_plan, break_even_rank, factorize_conv, factorize_linear, lowrank,
                                plan_lowrank)
from netcompress.measure import count_macs, count_params, macs_by_module


pytestmark = pytest.mark.usefixtures("one_thread")


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_rank_linear_reproduces_outputs():
    m = nc.models.create("lenet300", input_size=28).eval()
    x = torch.randn(16, 1, 28, 28)
    full = {"fc1": 300, "fc2": 100, "fc3": 10}
    f = lowrank(m, rank=full, allow_larger=True).eval()
    assert isinstance(f.fc1, nn.Sequential) and [type(c) for c in f.fc1] == [nn.Linear, nn.Linear]
    assert f.fc1[0].bias is None and f.fc1[0].out_features == 300
    torch.testing.assert_close(f(x), m(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["spatial", "channel"])
@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 10, 3, padding=1),
    nn.Conv2d(5, 8, (5, 3), stride=2, padding=(2, 1)),
    nn.Conv2d(4, 6, 3, stride=(2, 1), padding=2, dilation=2, bias=False),
    nn.Conv2d(4, 6, 3, padding="same"),
])
def test_full_rank_conv_reproduces_outputs(conv, method):
    o, c, kh, kw = conv.weight.shape
    full = min(c * kh, o * kw) if method == "spatial" else min(o, c * kh * kw)
    f = factorize_conv(conv, full, method)
    x = torch.randn(2, c, 13, 11)
    torch.testing.assert_close(f(x), conv(x), atol=1e-5, rtol=0)
    if method == "spatial":
        assert f[0].kernel_size == (kh, 1) and f[1].kernel_size == (1, kw)
    else:
        assert f[0].kernel_size == (kh, kw) and f[1].kernel_size == (1, 1)


def test_full_rank_model_with_convs_reproduces_outputs():
    m = nc.models.create("lenet5").eval()
    x = torch.randn(4, 1, 28, 28)
    f = lowrank(m, rank={"features.0": 5, "features.3": 100}, conv="spatial", allow_larger=True).eval()
    torch.testing.assert_close(f(x), m(x), atol=1e-5, rtol=0)


def test_truncation_error_is_eckart_young_optimum():
    """The rank-K factorisation's weight error equals the energy of the dropped singular values."""
    lin = nn.Linear(40, 30)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    for k in (1, 5, 12):
        f = factorize_linear(lin, k)
        w = (f[1].weight @ f[0].weight).double()
        err = torch.linalg.matrix_norm(w - lin.weight.double())
        assert math.isclose(err.item(), s[k:].square().sum().sqrt().item(), rel_tol=1e-4)


def test_lowrank_linear_macs_and_params_equal_formula():
    m = nc.models.create("lenet300")
    x = torch.zeros(1, 1, 28, 28)
    f = lowrank(m, rank={"fc1": 40, "fc2": 20})
    # fc1: 40 (784 + 300) ; fc2: 20 (300 + 100) ; fc3 dense 100 x 10
    assert count_macs(f, x) == 40 * (784 + 300) + 20 * (300 + 100) + 100 * 10
    assert count_params(f)[0] == 40 * (784 + 300) + 300 + 20 * (300 + 100) + 100 + 100 * 10 + 10


def test_lowrank_conv_macs_equal_formula():
    m = nc.models.create("lenet5")  # conv2: 20 -> 50, 5 x 5, input 12 x 12, output 8 x 8
    x = torch.zeros(1, 1, 28, 28)
    k = 8
    sp = macs_by_module(lowrank(m, rank={"features.3": k}, conv="spatial"), x)
    # 5 x 1 conv 20 -> K on 12 x 12 gives 8 x 12; then 1 x 5 conv K -> 50 gives 8 x 8
    assert sp["features.3.0"] == 20 * 5 * k * 8 * 12
    assert sp["features.3.1"] == k * 5 * 50 * 8 * 8
    ch = macs_by_module(lowrank(m, rank={"features.3": k}, conv="channel"), x)
    assert ch["features.3.0"] == 20 * 25 * k * 8 * 8 and ch["features.3.1"] == k * 50 * 8 * 8
    rows = nc.design.compare_layers(m, lowrank(m, rank={"features.3": k}), {"features.3": ("conv-spatial", k)}, x)
    assert rows[0].after_macs == rows[0].theory_macs == sp["features.3.0"] + sp["features.3.1"]
    assert rows[0].after_params == rows[0].theory_params == 20 * 5 * k + k * 5 * 50 + 50


def test_refused_rank_names_layer_and_leaves_model_unchanged():
    m = nc.models.create("lenet300")
    before = _state(m)
    be = break_even_rank(100, 300)  # fc2 is 100 x 300: 75
    assert be == 75
    with pytest.raises(nc.NetcompressError, match=r"layer 'fc2'.*rank 75 would not make it smaller.*75\.0"):
        lowrank(m, rank={"fc1": 10, "fc2": 75})
    with pytest.raises(nc.NetcompressError, match="layer 'fc3'.*would not make it smaller"):
        lowrank(m, rank=10, filter_fn=lambda mod, n: n in ("fc2", "fc3"))  # fc3: 10 x 100, break-even 9.09
    lowrank(m, rank=9, filter_fn=lambda mod, n: n in ("fc2", "fc3"))  # 9 < 9.09 is accepted
    with pytest.raises(nc.NetcompressError, match="layer 'fc3'.*exceeds"):
        lowrank(m, rank=50)
    assert _same_state(before, _state(m)) and isinstance(m.fc2, nn.Linear) and isinstance(m.fc1, nn.Linear)
    lowrank(m, rank={"fc2": 74})  # just below break-even is accepted


@pytest.mark.parametrize("kwargs, msg", [
    ({}, "exactly one of rank, energy, budget"),
    ({"rank": 5, "energy": 0.9}, "exactly one"),
    ({"energy": 1.5}, "energy must be in"),
    ({"budget": 1.2}, "budget"),
    ({"rank": 0}, "positive integer"),
    ({"rank": {"nope": 3}}, "unknown layers: nope"),
    ({"budget": 0.001}, "unreachable"),
    ({"rank": 4, "filter_fn": lambda m, n: False}, "no layer selected"),
])
def test_bad_arguments(kwargs, msg):
    m = nc.models.create("lenet300")
    before = _state(m)
    with pytest.raises(nc.NetcompressError, match=msg):
        lowrank(m, **kwargs)
    assert _same_state(before, _state(m))


def test_energy_picks_smallest_rank_reaching_the_energy():
    torch.manual_seed(1)
    m = nc.models.create("lenet300")
    plans = plan_lowrank(m, energy=0.6)
    for p in plans:
        s2 = p.singular_values.double() ** 2
        cum = (s2.cumsum(0) / s2.sum()).tolist()
        k = next(i + 1 for i, c in enumerate(cum) if c >= 0.6 - 1e-12)
        assert p.rank == (k if k < p.break_even else None)
        if p.rank is not None:
            assert p.energy(p.rank) >= 0.6 - 1e-9 and p.energy(p.rank - 1) < 0.6
    # untrained random layers are nearly full rank: at 95 % fc3 (10 x 100, break-even 9.09) stays dense
    assert next(p for p in plan_lowrank(m, energy=0.95) if p.name == "fc3").rank is None


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_param_budget_is_met_and_used(budget):
    m = nc.models.create("lenet300")
    total = count_params(m)[0]
    f = lowrank(m, budget=budget)
    got = count_params(f)[0]
    assert got <= budget * total
    assert got >= budget * total - (784 + 300)  # within one rank unit of the largest layer


def test_mac_budget_with_convs():
    m = nc.models.create("vgg-small", in_channels=1, input_size=28)
    x = torch.randn(2, 1, 28, 28)
    total = count_macs(m, x)
    f = lowrank(m, budget=0.4, budget_metric="macs", example_inputs=x, conv="channel")
    assert count_macs(f, x) <= 0.4 * total
    assert count_macs(f, x) >= 0.3 * total
    with pytest.raises(nc.NetcompressError, match="needs example_inputs"):
        lowrank(m, budget=0.4, budget_metric="macs")


def test_input_model_unchanged_and_result_independent():
    m = nc.models.create("lenet300")
    before = _state(m)
    f = lowrank(m, budget=0.5)
    assert _same_state(before, _state(m))
    with torch.no_grad():
        f.fc3.weight.add_(1.0)
    assert _same_state(before, _state(m))


def test_grouped_conv_refused_by_name():
    m = nc.models.create("mobilenet-small")
    with pytest.raises(nc.NetcompressError, match=r"layer 'blocks.0.0'.*grouped"):
        lowrank(m, rank=2, filter_fn=lambda mod, n: n == "blocks.0.0")


def test_transformed_model_saves_and_reloads(tmp_path):
    m = nc.models.create("lenet5").eval()
    f = lowrank(m, rank={"features.3": 8, "classifier.0": 32}, conv="spatial").eval()
    path = nc.models.save(f, tmp_path / "lr.pt")
    g = nc.models.load(path)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(g(x), f(x), atol=0, rtol=0)
    assert isinstance(g.features[3], nn.Sequential) and g.features[3][0].kernel_size == (5, 1)
    assert all(type(mod).__module__.startswith("torch.nn") for mod in g.modules() if mod is not g)


def test_apply_plan_skips_dense_layers():
    m = nc.models.create("lenet300")
    plans = plan_lowrank(m, energy=1.0)
    f = apply_plan(m, plans)
    assert all(isinstance(getattr(f, n), nn.Linear) for n in ("fc1", "fc2", "fc3"))
