"""Text datasets for language models: byte-level tokens, fixed context length.

* ``pydoc-text`` (offline): the Python reference manual's topics that every CPython install ships
  in `pydoc_data.topics` (79 topics, ~465 KB of English and code). The topics are split BY TOPIC
  with a fixed seed into train / validation / test (about 80 / 10 / 10 % of the bytes), so no test
  text was seen in training, not even as an overlapping window.
* ``hf-text:NAME[:CONFIG]`` (online): a Hugging Face dataset (e.g. ``hf-text:wikitext:wikitext-2-raw-v1``
  or the short ``hf-text:wikitext-2-raw-v1``) through the `datasets` package, imported only when
  asked; its own train / validation / test splits.

Tokens are the UTF-8 bytes (vocabulary 256), so the loss in nats per token divided by ln 2 is the
bits per byte, comparable across tokenisers. Each split is cut into non-overlapping windows of
``context + 1`` bytes: inputs are the first ``context`` bytes, targets the same shifted by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from netcompress.core.errors import NetcompressError
from netcompress.data.datasets import DATASETS, DataBundle, TensorLoader

TEXT_SPLIT_SEED = 20240501
VOCAB = 256


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of `text` as a long tensor (the byte-level tokeniser)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """Inverse of `encode` (invalid UTF-8 sequences become U+FFFD)."""
    return bytes(int(i) for i in ids.flatten()).decode("utf-8", errors="replace")


def windows(ids: torch.Tensor, context: int) -> TensorDataset:
    """Non-overlapping (input, target) windows of `context` tokens; target = input shifted by one."""
    n = (len(ids) - 1) // context
    if n < 1:
        raise NetcompressError(f"text of {len(ids)} tokens is shorter than one window of {context + 1}")
    x = ids[: n * context].view(n, context)
    y = ids[1 : n * context + 1].view(n, context)
    return TensorDataset(x.contiguous(), y.contiguous())


@dataclass
class TextBundle(DataBundle):
    """A language-modelling dataset: `train` / `val` / `test` loaders of (input_ids, targets).

    `num_classes` is the vocabulary size and `input_shape` is `(context,)`, so
    `models.create_for("gpt-tiny", data)` sizes the model. `task == "lm"` tells `fit`, `evaluate`
    and `measure` to count per-token cross-entropy, perplexity and bits per byte.
    """

    val_set: TensorDataset | None = None
    task: str = "lm"
    bytes_per_token: float = 1.0
    topics: dict[str, list[str]] = field(default_factory=dict)

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None,
               rank: int = 0, world_size: int = 1, seed: int | None = None):
        sets = {"train": self.train_set, "val": self.val_set, "validation": self.val_set, "test": self.test_set}
        if split not in sets or sets[split] is None:
            raise NetcompressError(f"dataset {self.name!r} has no split {split!r}; splits: train, val, test")
        x, y = sets[split].tensors
        shuffle = (split == "train") if shuffle is None else shuffle
        return TensorLoader(x, y, batch_size or self.batch_size, shuffle=shuffle,
                            seed=self.seed if seed is None else seed, rank=rank, world_size=world_size)

    @property
    def val(self):
        return self.loader("val")

    def subset(self, n_train: int, n_test: int | None = None) -> "TextBundle":
        """A smaller bundle (the first windows of each split), for tiny test budgets."""
        m = n_test or len(self.test_set)
        cut = lambda ds, k: TensorDataset(*(t[:k] for t in ds.tensors))  # noqa: E731
        return TextBundle(self.name, cut(self.train_set, n_train), cut(self.test_set, m), self.num_classes,
                          self.input_shape, self.batch_size, self.seed, val_set=cut(self.val_set, m),
                          bytes_per_token=self.bytes_per_token, topics=self.topics)


def split_topics(names: list[str], sizes: list[int], seed: int = TEXT_SPLIT_SEED,
                 fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, list[str]]:
    """Seeded split of documents into test, then validation, until each holds its share of bytes."""
    order = np.random.RandomState(seed).permutation(len(names))
    total = sum(sizes)
    out: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    acc = {"test": 0, "val": 0}
    for i in order:
        for split, frac in (("test", fractions[0]), ("val", fractions[1])):
            if acc[split] < frac * total:
                out[split].append(names[i])
                acc[split] += sizes[i]
                break
        else:
            out["train"].append(names[i])
    return out


def _bundle(name: str, texts: dict[str, str], context: int, batch_size: int, seed: int,
            topics: dict[str, list[str]]) -> TextBundle:
    sets = {k: windows(encode(v), context) for k, v in texts.items()}
    return TextBundle(name, sets["train"], sets["test"], VOCAB, (context,), batch_size, seed,
                      val_set=sets["val"], topics=topics)


@DATASETS.register("pydoc-text", help="Python reference manual topics (pydoc_data), byte-level LM, split by topic (offline)")
def pydoc_text(batch_size: int = 32, seed: int = 0, data_dir: str | None = None, context: int = 128) -> TextBundle:
    """The `pydoc-text` bundle: byte tokens, windows of `context`, train / val / test by topic."""
    from pydoc_data.topics import topics as docs

    names = sorted(docs)
    parts = split_topics(names, [len(docs[n].encode("utf-8")) for n in names])
    texts = {k: "\n\n".join(docs[n] for n in sorted(v)) for k, v in parts.items()}
    return _bundle("pydoc-text", texts, context, batch_size, seed, {k: sorted(v) for k, v in parts.items()})


_HF_SHORT = {"wikitext-2-raw-v1": ("wikitext", "wikitext-2-raw-v1"), "wikitext-2-v1": ("wikitext", "wikitext-2-v1"),
             "wikitext-103-raw-v1": ("wikitext", "wikitext-103-raw-v1")}


def hf_text(ref: str, batch_size: int = 32, seed: int = 0, data_dir: str | None = None, context: int = 128) -> TextBundle:
    """``hf-text:NAME[:CONFIG]``: a Hugging Face text dataset, byte-level, its own splits (downloads)."""
    name, config = _HF_SHORT.get(ref, tuple(ref.split(":", 1)) if ":" in ref else (ref, None))
    try:
        import datasets as hfd
    except ImportError:
        raise NetcompressError(f"hf-text:{ref} needs the Hugging Face `datasets` package: pip install datasets") from None
    try:
        ds = hfd.load_dataset(name, config, cache_dir=data_dir)
    except Exception as e:  # network, unknown name: say what and how to fix it
        raise NetcompressError(
            f"hf-text:{ref}: could not load Hugging Face dataset {name!r} (config {config!r}) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it needs internet the first time "
            f"(then HF_DATASETS_OFFLINE=1 uses the cache); offline text dataset: pydoc-text") from None
    splits = {"train": "train", "val": "validation" if "validation" in ds else None, "test": "test"}
    texts = {}
    for k, s in splits.items():
        if s is None or s not in ds:
            raise NetcompressError(f"hf-text:{ref}: dataset has splits {list(ds)}; need train, validation, test")
        col = "text" if "text" in ds[s].column_names else ds[s].column_names[0]
        texts[k] = "\n".join(ds[s][col])
    return _bundle(f"hf-text:{ref}", texts, context, batch_size, seed, {})


@DATASETS.register("pydoc-text-tiny", help="a smoke-test slice of pydoc-text: 64 / 16 / 16 windows of 64 bytes (offline)")
def pydoc_text_tiny(batch_size: int = 16, seed: int = 0, data_dir: str | None = None) -> TextBundle:
    """The first windows of each `pydoc-text` split, context 64: for tests and quick recipe checks."""
    full = pydoc_text(batch_size, seed, data_dir, context=64)
    small = full.subset(64, 16)
    small.name = "pydoc-text-tiny"
    return small
