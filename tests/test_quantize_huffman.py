import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netcompress.core.errors import NetcompressError
from netcompress.quantize import huffman as hf


def roundtrip(x, nsym=None):
    code = hf.encode(x, nsym=nsym)
    return hf.decode(hf.HuffmanCode.from_bytes(code.to_bytes())), code


def reference_total_bits(counts):
    """Textbook Huffman: the total coded length is sum of merged weights (oracle)."""
    h = [c for c in counts if c > 0]
    if len(h) == 1:
        return h[0]
    heapq.heapify(h)
    total = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        total += a + b
        heapq.heappush(h, a + b)
    return total


def test_golden_lengths_and_canonical_codes():
    lengths = hf.code_lengths(np.array([5, 2, 1, 1]))
    assert lengths.tolist() == [1, 2, 3, 3]
    assert hf.canonical_codes(lengths).tolist() == [0b0, 0b10, 0b110, 0b111]


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 1000, 4097, 70_000])
def test_roundtrip_sizes(n):
    rng = np.random.default_rng(n)
    x = np.clip(rng.geometric(0.3, n) - 1, 0, 40)
    y, _ = roundtrip(x)
    assert np.array_equal(x, y)


def test_single_symbol_and_empty():
    y, code = roundtrip(np.zeros(1000, np.int64))
    assert np.array_equal(y, np.zeros(1000)) and code.nbits == 1000
    y, _ = roundtrip(np.zeros(0, np.int64), nsym=4)
    assert y.size == 0


def test_optimal_and_within_one_bit_of_entropy():
    rng = np.random.default_rng(0)
    x = np.clip(np.round(rng.normal(16, 3, 50_000)), 0, 31).astype(np.int64)
    code = hf.encode(x)
    counts = np.bincount(x)
    assert code.nbits == reference_total_bits(counts)  # optimal prefix code
    h = hf.entropy_bits(x)
    assert h * len(x) <= code.nbits <= (h + 1) * len(x)


def test_length_limit_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    x = np.repeat(np.arange(30), fib[:30])
    y, code = roundtrip(x)
    assert np.array_equal(x, y) and code.lengths.max() <= hf.MAX_LEN


def test_matches_dahuffman_size():
    import dahuffman  # a dev dependency: the peer is the oracle here
    rng = np.random.default_rng(1)
    x = rng.integers(0, 9, 20_000) * rng.integers(0, 2, 20_000)
    codec = dahuffman.HuffmanCodec.from_data(x.tolist())
    table = codec.get_code_table()
    theirs = sum(table[s][0] for s in x.tolist())
    assert hf.encode(x).nbits <= theirs  # dahuffman adds an end-of-file symbol to the alphabet


def test_pack_uint_roundtrip():
    x = np.arange(0, 1000) % 37
    assert np.array_equal(hf.unpack_uint(hf.pack_uint(x, 6), 6, len(x)), x)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=0, max_size=3000))
def test_property_roundtrip(xs):
    x = np.array(xs, dtype=np.int64)
    y, _ = roundtrip(x, nsym=301)
    assert np.array_equal(x, y)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_decoder_never_crashes(tail, pos, val):
    rng = np.random.default_rng(len(tail))
    good = bytearray(hf.encode(rng.integers(0, 12, 600)).to_bytes())
    good[pos % len(good)] = val
    for buf in (bytes(good), bytes(good[: pos % len(good)]), bytes(good) + tail, tail):
        try:
            hf.decode(hf.HuffmanCode.from_bytes(buf))
        except NetcompressError:
            pass


def test_header_claiming_more_symbols_than_bits_is_refused_before_allocating():
    # found by the fuzz test: one flipped header byte claimed ~3.9e9 symbols (a 28.8 GiB buffer)
    good = bytearray(hf.encode(np.random.default_rng(0).integers(0, 12, 600)).to_bytes())
    good[3] = 230
    with pytest.raises(NetcompressError):
        hf.decode(hf.HuffmanCode.from_bytes(bytes(good)))
