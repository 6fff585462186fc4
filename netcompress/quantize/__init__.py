"""Parameter quantization: uniform n-bit (PTQ and QAT), k-means weight sharing, Huffman coding,
BinaryConnect, and real int8 deployment on CPU."""
from netcompress.quantize import huffman
from netcompress.quantize.binary import BinaryConnect
from netcompress.quantize.cluster import CentroidFineTune, KMeansResult, cluster_, kmeans_1d
from netcompress.quantize.deploy import int8_layers, int8_params, int8_quantize, load_int8, save_int8
from netcompress.quantize.weight_only import awq_, gptq_, hqq_, quantize_weights_, rtn_
from netcompress.quantize.uniform import UniformQAT, WeightSwap, calibrate, fake_quantize, quantize_

__all__ = [
    "huffman", "BinaryConnect", "CentroidFineTune", "KMeansResult", "cluster_", "kmeans_1d",
    "int8_layers", "int8_params", "int8_quantize", "load_int8", "save_int8",
    "UniformQAT", "WeightSwap", "calibrate", "fake_quantize", "quantize_",
    "quantize_weights_", "rtn_", "hqq_", "gptq_", "awq_",
]
