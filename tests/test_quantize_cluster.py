import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.quantize import CentroidFineTune, cluster_, kmeans_1d


def test_kmeans_fixed_point_and_objective():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.2, 3000), rng.normal(0.5, 0.1, 2000), rng.normal(2, 0.5, 500)])
    r = kmeans_1d(x, 8)
    # Lloyd fixed point: labels are the nearest centroid, centroids are the means of their members
    nearest = np.abs(x[:, None] - r.centroids[None]).argmin(1)
    assert np.array_equal(nearest, r.labels)
    for j, c in enumerate(r.centroids):
        assert c == pytest.approx(x[r.labels == j].mean(), rel=1e-9, abs=1e-12)
    assert r.inertia == pytest.approx(((x - r.centroids[r.labels]) ** 2).sum(), rel=1e-9)


def test_kmeans_at_least_as_good_as_sklearn():
    import sklearn.cluster as sk
    rng = np.random.default_rng(1)
    x = rng.standard_t(4, 5_000) * 0.05
    ours = kmeans_1d(x, 16, init="best").inertia
    theirs = sk.KMeans(16, n_init=3, random_state=0).fit(x.reshape(-1, 1)).inertia_
    assert ours <= theirs * (1 + 1e-6)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_inits_use_all_clusters(init):
    x = np.concatenate([np.linspace(-1, -0.9, 500), np.linspace(0.9, 1, 500)])  # a pruned-like gap
    assert len(kmeans_1d(x, 16, init=init).centroids) == 16


def lenet_pruned():
    torch.manual_seed(0)
    m = nc.models.create("lenet5", num_classes=10)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(torch.rand_like(mod.weight) > 0.8)
    return m


def test_cluster_shares_values_and_keeps_zeros():
    m = lenet_pruned()
    zeros = {n: (mod.weight == 0).clone() for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    info = cluster_(m, bits={"Conv2d": 4, "Linear": 3})
    for n, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight.detach()
            assert torch.equal(w == 0, zeros[n])  # pruned stay zero, nothing new becomes zero
            k = 16 if isinstance(mod, nn.Conv2d) else 8
            assert torch.unique(w[w != 0]).numel() <= k
            assert info[n]["clusters"] == k


def test_cluster_bad_input_leaves_model_unchanged():
    m = lenet_pruned()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(NetcompressError, match="Conv3x"):
        cluster_(m, bits={"Conv3x": 4})
    with pytest.raises(NetcompressError, match="bits"):
        cluster_(m, bits=0)
    with pytest.raises(NetcompressError, match="init"):
        cluster_(m, bits=4, init="kmeans++")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_centroid_gradient_is_the_cluster_sum():
    lin = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.5, -1.0, 0.0, -1.0, 0.5]]))
    ft = CentroidFineTune(reduce="sum")
    model = nn.Sequential(lin)
    ft.prepare(model)
    lin.weight.grad = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    ft.after_backward(model)
    # cluster 0.5 -> 1+2+6 = 9, cluster -1 -> 3+5 = 8, pruned zero -> 0
    assert lin.weight.grad.tolist() == [[9.0, 9.0, 8.0, 0.0, 8.0, 9.0]]


def test_centroid_finetune_trains_shared_values(digits):
    m = nc.models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    nc.train.fit(m, digits, epochs=1, max_steps=10, progress=False)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(mod.weight.abs() > mod.weight.abs().median())
    cluster_(m, bits=3)
    before = m.fc1.weight.detach().clone()
    nc.train.fit(m, digits, methods=[CentroidFineTune(reduce="mean")], epochs=1, max_steps=8, lr=0.01, progress=False)
    w = m.fc1.weight.detach()
    assert torch.equal(w == 0, before == 0)
    assert torch.unique(w[w != 0]).numel() <= 8
    assert not torch.equal(w, before)
    # weights that shared a value still share one
    vals = torch.unique(before[before != 0])
    for v in vals:
        assert torch.unique(w[before == v]).numel() == 1


def test_optimal_init_is_the_exact_optimum_on_small_data():
    import itertools

    rng = np.random.default_rng(3)
    x = np.sort(np.concatenate([rng.normal(0, 1, 7), rng.normal(5, 0.5, 5)]))
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), 2):  # brute force over all 3-segmentations
        parts = np.split(x, cuts)
        best = min(best, sum(((p - p.mean()) ** 2).sum() for p in parts))
    assert kmeans_1d(x, 3, init="optimal").inertia == pytest.approx(best, rel=1e-9)
    assert kmeans_1d(x, 3, init="best").inertia <= kmeans_1d(x, 3, init="linear").inertia + 1e-12
