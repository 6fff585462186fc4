"""Canonical Huffman coding with vectorised numpy encode and decode.

Deep Compression (Han et al. 2016, section 4) Huffman-codes the cluster indices and the sparse-index
gaps of a pruned, clustered network. Here:

* code lengths come from the symbol counts (classic Huffman, Huffman 1952), limited to
  `MAX_LEN` bits by flattening the counts when a pathological distribution would exceed it;
* codes are canonical (Schwartz & Kallick 1964): only the code length of each symbol is stored;
* encoding is vectorised over symbols (one numpy pass per bit position of the longest code);
* decoding is vectorised over *chunks*: the encoder records the bit offset of every `chunk`-th symbol
  (a "gap array", Yamamoto et al. 2020, "Huffman coding with gap arrays for GPU acceleration"),
  and all chunks are decoded in lock step with a 2^MAX_LEN lookup table. There is no per-symbol
  Python loop; the loop runs `chunk` (about sqrt(n)) times over arrays of n / chunk chains.

Example:
    >>> import numpy as np
    >>> x = np.array([0, 0, 0, 1, 2, 0, 1], dtype=np.int64)
    >>> code = encode(x)
    >>> bool((decode(code) == x).all())
    True
"""
from __future__ import annotations

import heapq
import math
import struct
from dataclasses import dataclass

import numpy as np

from netcompress.core.errors import NetcompressError

MAX_LEN = 16
MAX_SYMBOLS = 1 << 13
_HEAD = "<IHHBIQ"  # n, stored alphabet size, chunk, offset width, offset base, payload bits


def entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the empirical distribution of `symbols`, in bits per symbol."""
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length of each symbol (0 for unused symbols), at most `max_len` bits."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts > 0)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    if len(used) > (1 << max_len):
        raise NetcompressError(f"huffman: {len(used)} symbols cannot fit codes of {max_len} bits")
    c = counts[used].copy()
    while True:
        heap = [(int(w), i, (i,)) for i, w in enumerate(c)]
        heapq.heapify(heap)
        depth = np.zeros(len(c), dtype=np.int64)
        tie = len(c)
        while len(heap) > 1:  # loop over distinct symbols (<= 8192), not over the data
            w1, _, s1 = heapq.heappop(heap)
            w2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[list(merged)] += 1
            heapq.heappush(heap, (w1 + w2, tie, merged))
            tie += 1
        if depth.max() <= max_len:
            break
        c = (c >> 1) | 1  # flatten the distribution and retry (zlib-style length limiting)
    lengths[used] = depth
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for `lengths` (symbols ordered by (length, symbol))."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    code, prev = 0, 0
    for s in order:  # loop over the alphabet only
        L = int(lengths[s])
        code <<= L - prev
        codes[s] = code
        code += 1
        prev = L
    return codes


def _chunk_size(n: int) -> int:
    return min(1 << 15, max(1024, 1 << max(0, math.ceil(math.log2(max(1.0, math.sqrt(n) * 2))))))


@dataclass
class HuffmanCode:
    """An encoded stream: code lengths per symbol, chunk offsets, and the packed bits."""

    n: int
    lengths: np.ndarray
    chunk: int
    offsets: np.ndarray
    payload: bytes
    nbits: int

    def to_bytes(self) -> bytes:
        """Serialise: header, code lengths (5 bits each, trailing unused symbols dropped), chunk
        offset deltas (fixed width above their minimum), then the bits."""
        used = np.flatnonzero(self.lengths)
        nsym = int(used[-1]) + 1 if used.size else 1
        packed_lens = pack_lengths(self.lengths[:nsym])
        deltas = np.diff(self.offsets) if len(self.offsets) > 1 else np.zeros(0, np.int64)
        base = int(deltas.min()) if deltas.size else 0
        width = int(deltas.max() - base).bit_length() if deltas.size else 0
        packed_off = pack_uint(deltas - base, width) if width else b""
        head = struct.pack(_HEAD, self.n, nsym, self.chunk, width, base, self.nbits)
        return head + packed_lens + packed_off + self.payload

    @classmethod
    def from_bytes(cls, buf: bytes, where: str = "huffman stream") -> "HuffmanCode":
        hs = struct.calcsize(_HEAD)
        if len(buf) < hs:
            raise NetcompressError(f"{where}: truncated header")
        n, nsym, chunk, width, base, nbits = struct.unpack_from(_HEAD, buf, 0)
        if nsym == 0 or nsym > MAX_SYMBOLS or chunk == 0 or width > 40:
            raise NetcompressError(f"{where}: corrupt header")
        pos = hs
        lengths, nl = unpack_lengths(buf[pos:], nsym, where)
        pos += nl
        nchunks = (n + chunk - 1) // chunk if n else 0
        nd = max(0, nchunks - 1)
        no = (nd * width + 7) // 8
        if len(buf) < pos + no:
            raise NetcompressError(f"{where}: truncated chunk offsets")
        deltas = (unpack_uint(buf[pos:pos + no], width, nd) if width else np.zeros(nd, np.int64)) + base
        pos += no
        offsets = np.concatenate([[0], np.cumsum(deltas)]).astype(np.int64) if nchunks else np.zeros(0, np.int64)
        payload = bytes(buf[pos:])
        if nbits > len(payload) * 8 or (n and offsets[-1] > nbits):
            raise NetcompressError(f"{where}: truncated bit payload")
        if len(payload) != (nbits + 7) // 8:
            raise NetcompressError(f"{where}: payload size does not match its header")
        used = lengths[lengths > 0]
        if n and (used.size == 0 or n * int(used.min()) > nbits):  # every symbol costs >= 1 bit: also
            # bounds what decode allocates by the payload's size, whatever the header claims
            raise NetcompressError(f"{where}: {n} symbols cannot fit in {nbits} coded bits")
        return cls(n, lengths, chunk, offsets, payload, nbits)


def encode(symbols: np.ndarray, nsym: int | None = None) -> HuffmanCode:
    """Huffman-encode non-negative integer `symbols` (vectorised; Huffman 1952, canonical codes)."""
    s = np.asarray(symbols).ravel()
    if s.dtype.kind not in "iu":
        s = s.astype(np.int64)
    if s.size and (s.min() < 0):
        raise NetcompressError("huffman: symbols must be non-negative integers")
    nsym = int(nsym if nsym is not None else (s.max() + 1 if s.size else 1))
    if nsym > MAX_SYMBOLS:
        raise NetcompressError(f"huffman: alphabet of {nsym} symbols exceeds {MAX_SYMBOLS}")
    if s.size >= 1 << 32:
        raise NetcompressError("huffman: at most 2^32 - 1 symbols per stream")
    counts = np.bincount(s, minlength=nsym)
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    if nsym <= 256 and s.size >= 2:
        starts, nbits, payload = _place_pairs(s, lengths, codes, nsym)
    else:
        starts, nbits, payload = _place_single(s, lengths, codes)
    chunk = _chunk_size(len(s))
    step = chunk // 2 if nsym <= 256 and s.size >= 2 else chunk  # pair starts are every other symbol's
    offsets = starts[::step].astype(np.int64) if s.size else np.zeros(0, np.int64)
    return HuffmanCode(len(s), lengths, chunk, offsets, payload, nbits)


def _int_type(nbits_bound: int):
    return np.int32 if nbits_bound < (1 << 31) - 64 else np.int64


def _place_single(s: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, int, bytes]:
    """Bit layout of one code per symbol: every code (<= 16 bits) lies inside the 32-bit window
    starting at its 16-bit slot; codes never share bits, so summing one slot's windows ORs them."""
    idt = _int_type(s.size * MAX_LEN)
    L = lengths.astype(idt)[s]
    ends = np.cumsum(L, dtype=idt)
    nbits = int(ends[-1]) if s.size else 0
    starts = ends - L
    field = codes[s] << (32 - (starts & 15) - L)
    n16 = (nbits + 15) // 16
    v = np.bincount(starts >> 4, weights=field, minlength=n16 + 1).astype(np.int64) if s.size else np.zeros(1, np.int64)
    out = v[:n16] >> 16
    out[1:] += v[: n16 - 1] & 0xFFFF
    return starts, nbits, out.astype(">u2").tobytes()[: (nbits + 7) // 8]


def _place_pairs(s: np.ndarray, lengths: np.ndarray, codes: np.ndarray, nsym: int) -> tuple[np.ndarray, int, bytes]:
    """Same layout, two symbols at a time (a code table of nsym^2 pairs, <= 32 bits each, placed in
    64-bit windows at 32-bit slots): half the array passes of `_place_single`."""
    K = nsym + 1  # an empty symbol pads an odd count
    Lx = np.append(lengths, 0).astype(np.int64)
    Cx = np.append(codes, 0).astype(np.int64)
    idt = _int_type(s.size * MAX_LEN)
    PL = (Lx[:, None] + Lx[None, :]).ravel().astype(idt)
    PC = ((Cx[:, None] << Lx[None, :]) | Cx[None, :]).ravel().astype(np.uint64)
    sp = s if len(s) % 2 == 0 else np.append(s, nsym)
    p = sp[0::2].astype(np.int32) * K + sp[1::2]
    L = PL[p]
    ends = np.cumsum(L, dtype=idt)
    nbits = int(ends[-1])
    starts = ends - L
    field = PC[p] << (64 - (starts & 31) - L).astype(np.uint64)
    slot = starts >> 5
    n32 = (nbits + 31) // 32
    first = np.flatnonzero(np.diff(slot, prepend=-1))
    v = np.bitwise_or.reduceat(field, first)  # fields in one slot never share bits
    u = slot[first]
    out = np.zeros(n32 + 1, dtype=np.uint64)
    out[u] = v >> np.uint64(32)
    out[u + 1] |= v & np.uint64(0xFFFFFFFF)
    out = out[:n32]
    return starts, nbits, out.astype(">u4").tobytes()[: (nbits + 7) // 8]


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = canonical_codes(lengths)
    sym = np.zeros(1 << MAX_LEN, dtype=np.int64)
    ln = np.zeros(1 << MAX_LEN, dtype=np.int64)
    for s in np.flatnonzero(lengths):  # alphabet loop; each fills a contiguous range of the table
        L = int(lengths[s])
        lo = int(codes[s]) << (MAX_LEN - L)
        hi = lo + (1 << (MAX_LEN - L))
        sym[lo:hi] = s
        ln[lo:hi] = L
    return sym, ln


def decode(code: HuffmanCode, where: str = "huffman stream") -> np.ndarray:
    """Decode a `HuffmanCode` back to its int64 symbols; corrupt input raises NetcompressError."""
    n = code.n
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = code.lengths
    if lengths.max() > MAX_LEN or lengths.max() == 0:
        raise NetcompressError(f"{where}: bad code lengths")
    used = lengths[lengths > 0]
    if (np.power(2.0, -used.astype(np.float64)).sum() > 1.0 + 1e-12):
        raise NetcompressError(f"{where}: code lengths violate the Kraft inequality")
    sym_t, len_t = _decode_table(lengths)
    nbytes = len(code.payload)
    buf = np.frombuffer(code.payload + b"\x00\x00\x00\x00", dtype=np.uint8).astype(np.int64)
    nchunks, chunk = len(code.offsets), code.chunk
    last = n - chunk * (nchunks - 1)
    if nchunks == 0 or not 0 < last <= chunk:
        raise NetcompressError(f"{where}: chunk table does not match the symbol count")
    pos = code.offsets.copy()
    out = np.empty((nchunks, chunk), dtype=np.int64)
    for i in range(chunk):  # lock step over all chains (about sqrt(n) iterations)
        k = nchunks if i < last else nchunks - 1
        p = pos[:k]
        byte = np.minimum(p >> 3, nbytes)
        w = (buf[byte] << 16) | (buf[byte + 1] << 8) | buf[byte + 2]
        w = (w >> (8 - (p & 7))) & 0xFFFF
        out[:k, i] = sym_t[w]
        pos[:k] = p + len_t[w]
    ends = np.append(code.offsets[1:], code.nbits)
    if (pos != ends).any() or (out[:, :last] < 0).any():
        raise NetcompressError(f"{where}: corrupt huffman bits")
    return np.concatenate([out[:-1].ravel(), out[-1, :last]])


def _length_bits(lengths: np.ndarray) -> list[str]:
    out, prev = [], 0
    for L in lengths.tolist():  # alphabet loop (<= 8192), not a data loop
        if L == 0 and prev != 0:
            out.append("110")  # unused symbol; the next length is still coded against `prev`
            continue
        out.append("0" if L == prev else "10" if L == prev + 1 else "111" + format(L, "05b"))
        prev = L
    return out


def table_bits(lengths: np.ndarray) -> int:
    """Size in bits of the code-length table as `pack_lengths` writes it."""
    return sum(len(c) for c in _length_bits(lengths))


def pack_lengths(lengths: np.ndarray) -> bytes:
    """Code lengths as deltas from the previous used symbol's: '0' same, '10' one more, '110'
    unused symbol, '111' + 5 bits otherwise. Lengths of gap and index alphabets change slowly,
    so this takes ~1-3 bits per symbol instead of 5."""
    bits = "".join(_length_bits(lengths))
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def unpack_lengths(buf: bytes, nsym: int, where: str) -> tuple[np.ndarray, int]:
    """Inverse of `pack_lengths`: (lengths, bytes consumed)."""
    need_max = min(len(buf), (nsym * 8 + 7) // 8)
    bits = np.unpackbits(np.frombuffer(bytes(buf[:need_max]), dtype=np.uint8)).tolist()
    out, prev, i = [], 0, 0
    try:
        for _ in range(nsym):
            if bits[i] == 0:
                i += 1
            elif bits[i + 1] == 0:
                prev += 1
                i += 2
            elif bits[i + 2] == 0:
                i += 3
                out.append(0)
                continue
            else:
                if i + 8 > len(bits):
                    raise IndexError
                prev = int("".join(map(str, bits[i + 3:i + 8])), 2)
                i += 8
            out.append(prev)
    except IndexError:
        raise NetcompressError(f"{where}: truncated code lengths") from None
    return np.array(out, dtype=np.int64), (i + 7) // 8


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers into `width`-bit big-endian fields (vectorised)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if width == 0 or v.size == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((v[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def unpack_uint(buf: bytes, width: int, n: int) -> np.ndarray:
    """Inverse of `pack_uint`: `n` integers of `width` bits from `buf`."""
    if width == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    need = (n * width + 7) // 8
    if len(buf) < need:
        raise NetcompressError(f"packed integers: need {need} bytes, have {len(buf)}")
    bits = np.unpackbits(np.frombuffer(bytes(buf[:need]), dtype=np.uint8))[: n * width].reshape(n, width)
    weights = (1 << np.arange(width - 1, -1, -1, dtype=np.int64))
    return bits.astype(np.int64) @ weights
