"""Datasets: offline `digits` and `mnist-5k`, online torchvision sets, one `load(name)` entry point."""
from netcompress.data.datasets import DATASETS, DataBundle, TensorLoader, load, default_data_dir
from netcompress.data.text import TextBundle

__all__ = ["DATASETS", "DataBundle", "TensorLoader", "load", "default_data_dir", "TextBundle"]
