"""Adaptive BN after pruning: `nc.train.recalibrate_bn_` and the prune stage's `recalibrate_bn`."""
import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_statistics_are_the_exact_average_with_dropout_off_and_state_restored():
    net = _net()
    bn = net[2]
    bn.momentum = 0.3
    net.train()
    net[5].eval()  # a submodule in its own mode must keep it
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3 + 1
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    info = nc.train.recalibrate_bn_(net, [(x, torch.zeros(20, dtype=torch.long))], samples=20)
    assert info == {"layers": 1, "samples": 20}
    feats = net[0](x)  # dropout off: the statistics of the conv output itself
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, feats.var((0, 2, 3), unbiased=True), atol=1e-4)
    assert bn.momentum == 0.3 and net.training and not net[5].training and net[1].training
    after = {k: v for k, v in net.state_dict().items() if k in before}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_samples_cap_and_batches_of_several_forms():
    net = _net()
    x = torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    info = nc.train.recalibrate_bn_(net, [(x[:16], None), (x[16:], None)], samples=20)
    assert info["samples"] == 20  # the second batch is cut to 4 samples
    # equal to the cumulative average of the two batches actually seen (16 and 4 samples)
    f = net[0](x[:20])
    m = (f[:16].mean((0, 2, 3)) + f[16:20].mean((0, 2, 3))) / 2
    assert torch.allclose(net[2].running_mean, m, atol=1e-5)
    with pytest.raises(NetcompressError, match="samples"):
        nc.train.recalibrate_bn_(net, [(x, None)], samples=0)
    with pytest.raises(NetcompressError, match="no batch"):
        nc.train.recalibrate_bn_(net, [], samples=4)
    assert nc.train.recalibrate_bn_(nn.Linear(2, 2), [(torch.ones(1, 2), None)]) == {"layers": 0, "samples": 0}


@pytest.fixture(scope="module")
def trained_vgg():
    data = nc.data.load("digits")
    torch.manual_seed(0)
    m = nc.models.create("vgg-small", in_channels=1, input_size=8)
    nc.train.fit(m, data, epochs=3, progress=False)
    return m, data


def test_pruned_cnn_recovers_its_accuracy_before_any_fine_tune(trained_vgg):
    model, data = trained_vgg
    small = nc.prune.channels(model, "l1", 0.3, example_inputs=data.example)
    stale = nc.train.evaluate(small, data)
    nc.train.recalibrate_bn_(small, data, samples=256)
    fresh = nc.train.evaluate(small, data)
    assert fresh > stale + 0.3  # measured: 0.26 -> 0.95 (dense 0.98)


def test_prune_stage_recalibrates_by_default(trained_vgg, tmp_path):
    from netcompress.prune.stages import PruneConfig, run_prune
    from netcompress.recipe.stages import StageContext
    from netcompress.train import TrainConfig

    model, data = trained_vgg
    ctx = StageContext(data=data, train=TrainConfig(epochs=1), seed=0, out_dir=tmp_path, name="prune", progress=False)
    accs = {}
    for flag in (True, False):
        cfg = PruneConfig.from_dict({"ratio": 0.3, "epochs": 0, "recalibrate_bn": flag}, "prune")
        accs[flag] = nc.train.evaluate(run_prune(ctx, copy.deepcopy(model), cfg).model, data)
    assert PruneConfig.from_dict({"ratio": 0.3}, "prune").recalibrate_bn is True
    assert accs[True] > accs[False] + 0.3
