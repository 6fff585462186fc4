"""Sparse Variational Dropout (Molchanov et al. 2017): KL approximation, layers, masks, stage, archive."""
import copy
import math

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.archive import pack, unpack
from netcompress.core.errors import NetcompressError
from netcompress.prune.variational import (K1, K2, K3, SparseVDConfig, SparseVDMethod, kl_approx, log_alpha_of,
                                           run_sparse_vd, svdo_layers, train_sparse_vd, variational_dropout_)
from netcompress.train.stage import STAGES, StageContext
from netcompress.train import TrainConfig


def _paper_neg_kl(la: float) -> float:
    """Eq. 14 of the paper written out: k1 sigma(k2 + k3 log a) - 0.5 log(1 + 1/a) - k1."""
    return K1 / (1 + math.exp(-(K2 + K3 * la))) - 0.5 * math.log(1 + math.exp(-la)) - K1


def test_constants_are_the_papers():
    assert (K1, K2, K3) == (0.63576, 1.87320, 1.48695)


@pytest.mark.parametrize("la", [-8.0, -3.0, -1.0, 0.0, 0.5, 2.0, 3.0, 6.0, 10.0])
def test_kl_approx_golden_values(la):
    got = kl_approx(torch.tensor([la], dtype=torch.float64)).item()
    assert got == pytest.approx(-_paper_neg_kl(la), abs=1e-12)


def test_kl_approx_hand_values_and_limits():
    # log alpha = 0: k1 - k1 sigmoid(k2) + 0.5 log 2, by hand
    assert kl_approx(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(
        0.63576 - 0.63576 / (1 + math.exp(-1.87320)) + 0.5 * math.log(2), abs=1e-12)
    big = kl_approx(torch.tensor([20.0, 40.0], dtype=torch.float64))
    assert torch.all(big.abs() < 1e-8)  # alpha -> inf: no information, KL -> 0
    la = torch.linspace(-10, 10, 201, dtype=torch.float64)
    assert torch.all(kl_approx(la)[1:] < kl_approx(la)[:-1])  # larger dropout rate, smaller KL


@pytest.mark.parametrize("la", [-2.0, 0.0, 2.0])
def test_kl_approx_matches_the_true_kl(la):
    """-KL = 0.5 log a - E_{e ~ N(1, a)} log|e| - k1 (the constant makes it 0 at a -> inf); the paper's
    fit is within ~0.01 of it. Monte Carlo with 4M draws (standard error ~ 0.001)."""
    g = torch.Generator().manual_seed(0)
    a = math.exp(la)
    eps = 1 + math.sqrt(a) * torch.randn(4_000_000, generator=g, dtype=torch.float64)
    true_neg_kl = 0.5 * la - torch.log(eps.abs()).mean().item() - K1
    assert -kl_approx(torch.tensor(la, dtype=torch.float64)).item() == pytest.approx(true_neg_kl, abs=0.015)


def _svd_linear(weights, log_sigma2):
    lin = nn.Linear(weights.shape[1], weights.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weights)
        lin.bias.zero_()
    model = nn.Sequential(lin)
    method = SparseVDMethod(n_train=100)
    method.prepare(model)
    with torch.no_grad():
        model[0].log_sigma2.copy_(log_sigma2)
    return model, method


def test_mask_at_the_threshold():
    w = torch.ones(1, 5)  # log theta^2 = 0, so log alpha = log sigma^2
    model, method = _svd_linear(w, torch.tensor([[2.9, 3.0, 3.01, 5.0, -10.0]]))
    assert torch.equal(model[0].keep_mask(), torch.tensor([[True, True, False, False, True]]))
    model.eval()
    x = torch.ones(2, 5)
    assert torch.allclose(model(x), torch.full((2, 1), 3.0))  # eval: the thresholded mean weights
    method.finalize(model)
    assert type(model[0]) is nn.Linear and not hasattr(model[0], "log_sigma2")
    assert torch.equal(model[0].weight_mask.bool(), torch.tensor([[True, True, False, False, True]]))
    assert torch.equal(model[0].weight, torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]]))


def test_log_alpha_is_clipped_and_additive():
    w = torch.tensor([0.5, 1e-9, 2.0])
    ls = torch.tensor([-3.0, 0.0, -30.0])
    la = log_alpha_of(w, ls)
    assert la[0].item() == pytest.approx(-3.0 - math.log(0.25), rel=1e-6)
    assert la[1].item() == 10.0 and la[2].item() == -10.0


def test_local_reparameterisation_has_the_posterior_moments():
    """Training forward: output ~ N(x theta + b, x^2 (alpha theta^2)), one draw per output unit."""
    w = torch.tensor([[0.5, -1.0, 2.0]])
    model, _ = _svd_linear(w, torch.log(torch.tensor([[0.04, 0.25, 1.0]])))
    model.train()
    x = torch.tensor([[1.0, 2.0, -1.0]]).repeat(200_000, 1)
    with torch.no_grad():
        y = model(x)
    assert y.mean().item() == pytest.approx(0.5 - 2.0 - 2.0, abs=0.01)
    assert y.var().item() == pytest.approx(0.04 + 4 * 0.25 + 1.0, rel=0.02)


def test_conv_layer_and_method_swap_back():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    ref = copy.deepcopy(model).eval()
    method = SparseVDMethod(n_train=10, ignore=["3"])
    method.prepare(model)
    assert set(svdo_layers(model)) == {"0"} and type(model[3]) is nn.Linear
    model.eval()
    x = torch.randn(2, 1, 4, 4)
    assert torch.allclose(model(x), ref(x))  # log sigma^2 = -10: nothing is above the threshold yet
    terms = method.loss_terms(model, x, None, None)
    expect = kl_approx(log_alpha_of(model[0].weight, model[0].log_sigma2)).sum() / 10  # no annealing: 1/N from step 0
    assert set(terms) == {"kl"} and terms["kl"].item() == pytest.approx(expect.item(), rel=1e-6)
    method.finalize(model)
    assert type(model[0]) is nn.Conv2d and "log_sigma2" not in dict(model.named_parameters())
    assert torch.allclose(model(x), ref(x))


def test_kl_is_annealed_and_scaled_by_dataset_size():
    m = SparseVDMethod(n_train=4000, kl_weight=0.5, anneal_steps=100)
    assert m.kl_scale() == 0.0
    m.after_step(None, 50)
    assert m.kl_scale() == pytest.approx(0.5 * 0.5 / 4000)
    m.after_step(None, 1000)
    assert m.kl_scale() == pytest.approx(0.5 / 4000)


def test_bad_input_is_refused_and_changes_nothing(mnist_small):
    model = nc.models.create_for("lenet300", mnist_small)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NetcompressError, match="ignore names no Linear"):
        variational_dropout_(model, mnist_small, epochs=1, ignore=["nope"], progress=False)
    with pytest.raises(NetcompressError, match="unknown key"):
        variational_dropout_(model, mnist_small, epochs=1, bogus=1, progress=False)
    assert not svdo_layers(model)

    def failing_fit(m, over, methods, tag):
        for meth in methods:
            meth.prepare(m)
        raise NetcompressError("boom")

    with pytest.raises(NetcompressError, match="boom"):
        train_sparse_vd(model, SparseVDConfig(epochs=1), 1000, 16, failing_fit)
    assert not svdo_layers(model) and type(model.fc1) is nn.Linear
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.fixture(scope="module")
def trained(mnist_small):
    """A real (tiny) run: LeNet-300-100 trained 5 epochs on 1,000 MNIST images, then Sparse VD."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nc.models.create_for("lenet300", mnist_small)
    nc.train.fit(model, mnist_small, epochs=5, lr=0.05, seed=0, progress=False)
    base = nc.train.evaluate(model, mnist_small)
    info = variational_dropout_(model, mnist_small, epochs=6, anneal_epochs=1, kl_weight=0.1, seed=0, progress=False)
    return model, base, info


def test_sparsity_grows_while_accuracy_holds(trained, mnist_small):
    model, base, info = trained
    curve = [c["sparsity"] for c in info["curve"]]
    assert len(curve) == 6 and curve[-1] > curve[0] and curve[-1] > 0.8
    assert all(b >= a - 0.02 for a, b in zip(curve, curve[1:]))  # grows (small noise allowed)
    acc = nc.train.evaluate(model, mnist_small)
    assert acc >= base - 0.03
    zeros = sum(int((m.weight == 0).sum()) for m in (model.fc1, model.fc2, model.fc3))
    assert zeros == info["total_weights"] - info["kept_weights"]
    assert type(model.fc1) is nn.Linear and not hasattr(model.fc1, "weight_mask")  # plain, permanent zeros


def test_masked_model_archive_round_trip_is_bit_identical(trained, mnist_small, tmp_path):
    model = copy.deepcopy(trained[0])
    nc.quantize.cluster_(model, bits=5)
    pack(model, tmp_path / "m.ncz")
    back = unpack(tmp_path / "m.ncz")
    x = next(iter(mnist_small.loader("test", batch_size=128)))[0]
    model.eval()
    assert torch.equal(model(x), back(x))
    dense = 4 * sum(p.numel() for p in model.parameters())
    assert (tmp_path / "m.ncz").stat().st_size * 10 < dense  # sparse + codebook: > 10x smaller


def test_stage_runs_in_a_recipe_context(mnist_small, tmp_path):
    kind = STAGES.get("sparse-vd")
    cfg = kind.config.from_dict({"epochs": 1, "max_steps": 5, "threshold": 2.0})
    assert SparseVDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(NetcompressError, match="epochs"):
        kind.config.from_dict({"epochs": -1})
    ctx = StageContext(data=mnist_small, train=TrainConfig(epochs=1), seed=0, out_dir=tmp_path, name="svd", progress=False)
    model = nc.models.create_for("lenet5", mnist_small)
    res = run_sparse_vd(ctx, model, cfg)
    assert res.model is model and res.history and res.extra["criterion"] == "sparse-vd"
    assert set(res.extra["per_layer"]) == {"features.0", "features.3", "classifier.0", "classifier.2"}
    assert type(model.features[0]) is nn.Conv2d and not svdo_layers(model)
