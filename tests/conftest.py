import os

import pytest
import torch

# scripts run by the DDP tests (not test modules: importing them would start training)
collect_ignore = ["ddp_worker.py", "ddp_methods_worker.py"]

os.environ.setdefault("NETCOMPRESS_DATA", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    import netcompress as nc

    return nc.data.load("digits")


@pytest.fixture(scope="session")
def mnist():
    import netcompress as nc

    return nc.data.load("mnist-5k")


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """1,000 train / 300 test real MNIST images: for tests that train for a few steps."""
    return mnist.subset(1000, 300)


@pytest.fixture
def one_thread():
    """2 shared cores: intra-op threads only add contention for tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
