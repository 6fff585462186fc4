"""The .ncz compressed model archive: sparse + codebook + Huffman storage without pickle."""
from netcompress.archive.codec import decode_tensor, encode_tensor
from netcompress.archive.format import format_table, inspect, pack, unpack

__all__ = ["pack", "unpack", "inspect", "format_table", "encode_tensor", "decode_tensor"]

from netcompress.models.zoo import FILE_LOADERS  # noqa: E402

FILE_LOADERS[".ncz"] = unpack  # a .ncz archive names a model wherever a model file does
