"""Lossless tensor encodings of the .ncz archive (Deep Compression's storage, Han et al. 2016, sec. 2-4).

A float32 tensor is stored in the smallest of these exact (bit-identical) forms:

* positions `dense` (every entry) or `sparse`: the relative index of each stored entry as a gap of
  `gap_bits` bits; a gap too long for the field gets *filler* entries of value zero (paper Fig. 2);
  gaps are written fixed-width or Huffman-coded;
* values `raw32` / `raw16` (fp16 only where every value is exactly representable) or `codebook`:
  the distinct values once (fp32) plus an index per entry, fixed-width (`bits`: packed bits, e.g.
  1 bit per binary weight) or Huffman-coded.

The encoder tries the candidates on sizes computed from symbol counts, encodes the winner and checks
that decoding gives back exactly the input (otherwise it falls back to raw32). Other dtypes (int64
buffers, ...) are stored raw. The decoder validates every length, count and range first and raises
`NetcompressError` on any inconsistency.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from netcompress.core.errors import NetcompressError
from netcompress.quantize import huffman as hf

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
          "uint8": torch.uint8, "bool": torch.bool}
NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64, "int32": np.int32,
      "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
MAX_NUMEL = 1 << 31
MAX_CODEBOOK = 4096


def dtype_name(t: torch.Tensor) -> str:
    for k, v in DTYPES.items():
        if v == t.dtype:
            return k
    raise NetcompressError(f"archive: tensors of dtype {t.dtype} are not supported")


def _huff_bits(symbols: np.ndarray, nsym: int) -> int:
    counts = np.bincount(symbols, minlength=nsym)
    lengths = hf.code_lengths(counts)
    chunk = hf._chunk_size(len(symbols))
    nchunks = -(-len(symbols) // chunk)
    used = np.flatnonzero(lengths)
    table = hf.table_bits(lengths[: int(used[-1]) + 1 if used.size else 1])
    return int((counts * lengths).sum()) + 8 * 21 + table + max(0, nchunks - 1) * 12


def _sparse_entries(pos: np.ndarray, gap_bits: int, numel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stored gaps (jump - 1) and the index in `pos` of each entry (-1 for a filler zero).

    With `numel`, filler zeros also cover the tail after the last stored entry, so that fewer than
    2**gap_bits trailing zeros stay implicit: the stream then bounds the tensor's size."""
    span = 1 << gap_bits
    if numel is not None:
        last = int(pos[-1]) if len(pos) else -1
        tail = (numel - 1 - last) // span
        pos = np.concatenate([pos, last + span * np.arange(1, tail + 1, dtype=np.int64)]) if tail else pos
    d = np.diff(pos, prepend=-1)
    fill = (d - 1) // span
    total = len(pos) + int(fill.sum())
    gaps = np.full(total, span - 1, dtype=np.int64)
    src = np.full(total, -1, dtype=np.int64)
    last = np.cumsum(fill + 1) - 1  # slot of each real entry after its fillers
    gaps[last] = d - fill * span - 1
    src[last] = np.arange(len(pos))
    return gaps, src


def _fixed_width(k: int) -> int:
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


def _values_plan(vals: np.ndarray, allow16: bool) -> list[tuple[int, dict[str, Any]]]:
    """(bits, plan) candidates for storing `vals` (float32)."""
    n = len(vals)
    out = [(32 * n, {"val": "raw32"})]
    if allow16:
        out.append((16 * n, {"val": "raw16"}))
    uniq = np.unique(vals.view(np.uint32))
    if 0 < len(uniq) <= MAX_CODEBOOK and n:
        k = len(uniq)
        idx = np.searchsorted(uniq, vals.view(np.uint32))
        f = uniq.view(np.float32)
        cb16 = bool(np.array_equal(f.astype(np.float16).astype(np.float32).view(np.uint32), uniq))
        cbits = (16 if cb16 else 32) * k
        base = {"val": "codebook", "cb": "f16" if cb16 else "f32", "_cb": uniq, "_idx": idx}
        out.append((cbits + _fixed_width(k) * n, {**base, "idx_code": "fixed"}))
        if k > 1:
            out.append((cbits + _huff_bits(idx, k), {**base, "idx_code": "huffman"}))
    return out


GRID_GROUPS = (32, 64, 128, 256, 512, 1024)  # chunk lengths tried besides whole rows (weight-only groups)


def _min_gap(x: np.ndarray) -> np.ndarray:
    """Per row, the smallest difference between two distinct values (inf for a row of one value)."""
    gaps = np.diff(np.sort(x, 1), axis=1)
    return np.where(gaps > 0, gaps, np.inf).min(1) if gaps.shape[1] else np.full(len(x), np.inf)


def _step_candidates(full: np.ndarray, sample: np.ndarray) -> list[np.ndarray]:
    """Candidate grid steps per row (see `_grid_scales`), in the dtype of `full`."""
    amax = np.abs(full).max(1)
    gap = _min_gap(sample)
    gap = np.where(np.isfinite(gap), gap, 0).astype(full.dtype)
    cands = [amax / full.dtype.type(2 ** b - 1) for b in range(1, 9)]
    cands += [amax / full.dtype.type(2 ** (b - 1) - 1) for b in range(2, 9)]
    cands += [(full.max(1) - full.min(1)) / full.dtype.type(2 ** b - 1) for b in range(2, 9)]
    # the gap is a difference of rounded values, many ulps off the step: divide the largest value
    # by its integer instead (about one ulp off), for the gap being 1, 2 or 3 steps
    steps = np.rint(amax.astype(np.float64) / np.where(gap > 0, gap, 1)).clip(1, 4096)
    cands += [np.where(gap > 0, amax / (steps * d), 0).astype(full.dtype) for d in (1, 2, 3)]
    return cands


def _grid_scales(full: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row of `full` (rows x n, float32) a float32 scale s with every value exactly
    float32(k * s) for integers |k| < 2048, the smallest span of k found, and the integers k;
    None when a row has none.

    Candidates per row: the largest |v| or the range over 2^b - 1 (symmetric and min-max grids) and
    the step implied by the smallest gap between two distinct sampled values (1, 2 or 3 steps: a
    grid whose extreme codes are not used, as after GPTQ's updates), each +-2 ulp; searched on a
    sample of the row, then checked on all of it."""
    v = np.concatenate([full[:, :63], full[np.arange(len(full)), np.abs(full).argmax(1)][:, None]], 1)  # search on a sample
    cands = [c.astype(np.float32) for c in _step_candidates(full, v)]
    best_s = np.zeros(v.shape[0], np.float32)
    best_n = np.full(v.shape[0], np.iinfo(np.int64).max)
    for c in cands:
        c = c.astype(np.float32)
        for ulp in (0, 1, -1, 2, -2):
            s = c if ulp == 0 else np.nextafter(c, np.float32(np.inf) if ulp > 0 else np.float32(0)).astype(np.float32)
            if abs(ulp) == 2:
                s = np.nextafter(s, np.float32(np.inf) if ulp > 0 else np.float32(0)).astype(np.float32)
            # float64 quotient: a denormal scale cannot overflow it; clipped so the float32 check cannot either
            q = v.astype(np.float64) / np.where(s > 0, s, 1).astype(np.float64)[:, None]
            n = np.clip(np.where(s[:, None] > 0, np.rint(q), 0), -4096, 4096)
            ok = (np.abs(n) < 2048).all(1) & ((n.astype(np.float32) * s[:, None]).astype(np.float32).view(np.uint32)
                                              == v.view(np.uint32)).all(1)
            span = np.where(ok, np.abs(n).max(1), np.iinfo(np.int64).max)
            better = span < best_n
            best_s = np.where(better, s, best_s)
            best_n = np.where(better, span, best_n)
    if (best_n == np.iinfo(np.int64).max).any():
        return None
    n = np.rint(full / np.where(best_s > 0, best_s, 1)[:, None]).astype(np.int64)
    n[best_s == 0] = 0
    if (np.abs(n) >= 2048).any() or not np.array_equal((n.astype(np.float32) * best_s[:, None]).astype(np.float32).view(np.uint32),
                                                        full.view(np.uint32)):
        return None
    return best_s, n


def _near_grid(chunks: np.ndarray) -> bool:
    """Whether every chunk looks like an integer grid to within 1e-3 of a step, for one of the
    candidate steps of `_grid_scales` (no ulp search): a vectorised filter that rejects ordinary
    float weights at once."""
    x = chunks.astype(np.float64)
    ok = np.zeros(len(x), bool)
    for st in _step_candidates(x, x):
        r = x / np.where(st > 0, st, 1)[:, None]
        ok |= ((np.abs(r - np.rint(r)) < 1e-3) & (np.abs(r) < 2048)).all(1)
    return bool(ok.all())


def _affine_scales(full: np.ndarray, max_shift: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per row of `full` (rows x n, float32) a scale s and a zero point z, both fp16 values, with
    every value exactly float32((n - z) * s) for integers 0 <= n < 4096 (the product exact in
    float64): an asymmetric grid with a float zero point, as HQQ's (Badri & Shaji 2023). Returns
    (s, z, n), or None when a row has none.

    s is the smallest gap between two distinct values of the row, or a half or third of it, or its
    range over a whole number of such gaps or over 2^b - 1, rounded to fp16; z is the row's smallest value's -v / s plus an
    integer c (that value's own code, unknown: c = 0, 1, ... up to `max_shift` are tried until the
    fp16 rounding of z reproduces every value)."""
    v = full.astype(np.float64)
    lo, hi = v.min(1), v.max(1)
    gap = _min_gap(v)
    flat = ~np.isfinite(gap)  # one distinct value: s = 1, z = -v
    gap = np.where(flat, 1.0, gap)
    steps = np.maximum(np.rint((hi - lo) / gap), 1)
    best_s = np.zeros(len(v))
    best_z = np.zeros(len(v))
    found = np.zeros(len(v), bool)
    # the smallest gap may span 2 or 3 steps when a short group leaves codes unused; HQQ's own
    # scale is the range of the original weights over 2^b - 1
    cands = [gap, (hi - lo) / steps, gap / 2, gap / 3] + [(hi - lo) / (2 ** b - 1) for b in range(1, 9)]
    for cand in cands:
        s16 = np.where(flat, 1.0, cand).astype(np.float16).astype(np.float64)
        ok_s = (s16 > 0) & np.isfinite(s16) & ~found
        if not ok_s.any():
            continue
        sd = np.where(s16 > 0, s16, 1)
        r, base = v / sd[:, None], -lo / sd
        for c in range(max_shift):
            todo = ok_s & ~found
            if not todo.any():
                break
            z = (base + c).astype(np.float16).astype(np.float64)
            n = np.rint(r + z[:, None])
            good = todo & np.isfinite(z) & (n >= 0).all(1) & (n < 4096).all(1)
            good &= ((((n - z[:, None]) * s16[:, None]).astype(np.float32).view(np.uint32)) == full.view(np.uint32)).all(1)
            best_s = np.where(good, s16, best_s)
            best_z = np.where(good, z, best_z)
            found |= good
    if not found.all():
        return None
    n = np.rint(v / best_s[:, None] + best_z[:, None]).astype(np.int64)
    return best_s, best_z, n


def _grid_plan(t: torch.Tensor) -> list[tuple[int, dict[str, Any]]]:
    """Integer grid per row, or per chunk of GRID_GROUPS consecutive values of a row: every value of
    chunk r is float32(n * s_r) with a small integer n (per-channel uniform quantization, Jacob et
    al. 2018; weight-only RTN / GPTQ per group). Stored as one fp32 scale per chunk plus the
    integers, fixed-width or Huffman-coded. Returns [] when the tensor is no such grid."""
    if t.dim() < 2 or t.numel() < 64:
        return []
    rows = t.reshape(t.shape[0], -1).numpy().astype(np.float32)
    cols = rows.shape[1]
    out: list[tuple[int, dict[str, Any]]] = []
    for g in (cols, *[g for g in GRID_GROUPS if g < cols and cols % g == 0]):
        full = rows.reshape(-1, g)
        # chunks shorter than a row get a cheap probe before the exact search
        found = _grid_scales(full) if g == cols or _near_grid(full[:16]) else None
        if found is None:
            out += _affine_plan(full)
            continue
        best_s, n = found
        nmin, k = int(n.min()), int(n.max() - n.min() + 1)
        if k > 1 << 12:
            continue
        idx = (n - nmin).ravel()
        out += _index_plans(32 * full.shape[0], {"val": "grid", "rows": int(full.shape[0]), "nmin": nmin, "k": k,
                                                 "_scales": best_s, "_idx": idx})
    return out


def _index_plans(header_bits: int, base: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(bits, plan) for a grid whose `k` integer codes `base["_idx"]` are stored fixed-width or
    Huffman-coded after `header_bits` of scales."""
    idx, k = base["_idx"], base["k"]
    out = [(header_bits + _fixed_width(k) * idx.size, {**base, "idx_code": "fixed"})]
    if k > 1:
        out.append((header_bits + _huff_bits(idx, k), {**base, "idx_code": "huffman"}))
    return out


def _affine_plan(full: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
    """Plans for chunks that are affine grids (`_affine_scales`): fp16 scale and zero point per chunk
    plus the integer codes."""
    probe = full[:16].astype(np.float64)  # a cheap filter first: (v - min) / smallest gap near integers
    step = _min_gap(probe)
    if not np.isfinite(step).all():
        return []
    near = False
    for d in (1, 2, 3):  # the smallest gap is 1, 2 or 3 steps
        r = (probe - probe.min(1, keepdims=True)) / (step[:, None] / d)
        near |= bool((np.abs(r - np.rint(r)) < 1e-2).all() and (r < 4096).all())
    if not near:
        return []
    found = _affine_scales(full)
    if found is None:
        return []
    best_s, best_z, n = found
    return _index_plans(32 * full.shape[0], {"val": "agrid", "rows": int(full.shape[0]), "k": int(n.max() + 1),
                                             "_scales": best_s, "_zeros": best_z, "_idx": n.ravel()})


def _encode_ints(x: np.ndarray, code: str, width: int, nsym: int) -> bytes:
    if code == "fixed":
        return hf.pack_uint(x, width)
    return hf.encode(x, nsym=nsym).to_bytes()


def encode_tensor(t: torch.Tensor, coding: str = "huffman", info: dict[str, float] | None = None) -> tuple[dict[str, Any], bytes]:
    """The smallest exact encoding of `t`: (JSON-able description, bytes). `coding='fixed'` disables Huffman.

    When `info` is a dict it receives `entropy_bits` (the entropy bound of the coded symbol streams)
    and `stream_bits` (their coded size)."""
    t = t.detach().cpu().contiguous()
    dt = dtype_name(t)
    if dt != "float32" or t.numel() == 0:
        return {"pos": "dense", "val": "raw"}, _raw(t)
    flat = t.reshape(-1).numpy()
    n = flat.size
    allow16 = bool(np.array_equal(flat.astype(np.float16).astype(np.float32).view(np.uint32), flat.view(np.uint32)))
    nz = np.flatnonzero(flat.view(np.uint32) != 0)  # +0.0 only; -0.0 is stored like any value
    best: tuple[int, dict[str, Any]] | None = None
    for bits, plan in _values_plan(flat, allow16) + _grid_plan(t):
        if coding == "fixed" and plan.get("idx_code") == "huffman":
            continue
        cand = (bits, {"pos": "dense", **plan})
        best = cand if best is None or cand[0] < best[0] else best
    if len(nz) < 0.6 * n:
        for gb in range(1, 13):
            gaps, src = _sparse_entries(nz, gb, n)
            src = np.where(src < len(nz), src, -1)  # tail fillers are zeros
            picked = flat[nz[np.maximum(src, 0)]] if len(nz) else np.zeros(len(src), np.float32)
            vals = np.where(src >= 0, picked, np.float32(0)).astype(np.float32)
            gap_opts = [(gb * len(gaps), "fixed")]
            if coding == "huffman":
                gap_opts.append((_huff_bits(gaps, 1 << gb), "huffman"))
            gbits, gcode = min(gap_opts)
            for vbits, plan in _values_plan(vals, allow16):
                if coding == "fixed" and plan.get("idx_code") == "huffman":
                    continue
                total = gbits + vbits
                if best is None or total < best[0]:
                    best = (total, {"pos": "sparse", "gap_bits": gb, "gap_code": gcode, "m": len(gaps),
                                    "_gaps": gaps, "_vals": vals, **plan})
    assert best is not None
    enc = best[1]
    sections: list[bytes] = []
    if enc["pos"] == "sparse":
        sections.append(_encode_ints(enc["_gaps"], enc["gap_code"], enc["gap_bits"], 1 << enc["gap_bits"]))
        vals = enc["_vals"]
    else:
        vals = flat
    if enc["val"] in ("grid", "agrid"):
        if enc["val"] == "grid":
            sections.append(enc["_scales"].astype("<f4").tobytes())
        else:
            sections += [enc["_scales"].astype("<f2").tobytes(), enc["_zeros"].astype("<f2").tobytes()]
        sections.append(_encode_ints(enc["_idx"], enc["idx_code"], _fixed_width(enc["k"]), enc["k"]))
    elif enc["val"] == "raw32":
        sections.append(vals.astype("<f4").tobytes())
    elif enc["val"] == "raw16":
        sections.append(vals.astype("<f2").tobytes())
    else:
        cb = enc["_cb"]
        enc["k"] = int(len(cb))
        sections.append(cb.view(np.float32).astype("<f2").tobytes() if enc["cb"] == "f16" else cb.astype("<u4").tobytes())
        sections.append(_encode_ints(enc["_idx"], enc["idx_code"], _fixed_width(len(cb)), len(cb)))
    desc = {k: v for k, v in enc.items() if not k.startswith("_")}
    desc["sections"] = [len(s) for s in sections]
    blob = b"".join(sections)
    if info is not None:
        info["entropy_bits"], info["stream_bits"] = _entropy_info(enc)
    back = decode_tensor(desc, blob, dt, list(t.shape), "self-check")
    if not torch.equal(back.view(torch.int32), t.view(torch.int32)):  # bit-exact or fall back
        return {"pos": "dense", "val": "raw"}, _raw(t)
    return desc, blob


def _raw(t: torch.Tensor) -> bytes:
    flat = t.reshape(-1)
    return (flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat).numpy().tobytes()


def _entropy_info(enc: dict[str, Any]) -> tuple[float, float]:
    """Entropy bound and the coded size (bits) of the symbol streams (gaps and indices)."""
    ent = bits = 0.0
    if enc["pos"] == "sparse":
        g = enc["_gaps"]
        ent += hf.entropy_bits(g) * len(g)
        bits += enc["gap_bits"] * len(g) if enc["gap_code"] == "fixed" else _huff_bits(g, 1 << enc["gap_bits"])
    if enc["val"] in ("codebook", "grid", "agrid"):
        i = enc["_idx"]
        k = enc["k"] if enc["val"] in ("grid", "agrid") else len(enc["_cb"])
        ent += hf.entropy_bits(i) * len(i)
        bits += _fixed_width(k) * len(i) if enc["idx_code"] == "fixed" else _huff_bits(i, k)
    return float(ent), float(bits)


def _need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise NetcompressError(f"{where}: {what}")


def _decode_ints(buf: bytes, code: str, width: int, n: int, nsym: int, where: str) -> np.ndarray:
    if code == "fixed":
        _need(len(buf) == (n * width + 7) // 8, where, "packed section has the wrong size")
        x = hf.unpack_uint(buf, width, n)
    elif code == "huffman":
        hc = hf.HuffmanCode.from_bytes(buf, where)
        _need(hc.n == n and len(hc.lengths) <= nsym, where, "huffman stream does not match its description")
        x = hf.decode(hc, where)
    else:
        raise NetcompressError(f"{where}: unknown code {code!r}")
    _need(bool((x < nsym).all()), where, "symbol out of range")
    return x


def declared_numel(shape: Any, where: str) -> int:
    """The element count of a manifest shape, refused when malformed or beyond `MAX_NUMEL`."""
    _need(isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_NUMEL
                                          for s in shape) and len(shape) <= 8, where, "bad shape")
    numel = math.prod(shape)
    _need(numel < MAX_NUMEL, where, "tensor too large")
    return numel


def decode_tensor(desc: dict[str, Any], blob: bytes, dtype: str, shape: list[int], where: str,
                  legacy_tail: list[int] | None = None) -> torch.Tensor:
    """Inverse of `encode_tensor`; every inconsistency raises NetcompressError naming `where`.

    Every size is checked against the bytes present before memory is allocated: raw data must be
    exactly its section, a coded stream holds at least one bit per value, and a sparse stream must
    reach the tensor's end (fewer than 2**gap_bits implicit trailing zeros). `legacy_tail` (a
    one-element budget) allows the longer implicit tails of version-1 archives, up to that many
    zeros in all."""
    _need(dtype in DTYPES, where, f"unknown dtype {dtype!r}")
    numel = declared_numel(shape, where)
    if desc.get("val") == "raw":
        if dtype == "bfloat16":
            _need(len(blob) == 2 * numel, where, "raw data has the wrong size")
            return torch.from_numpy(np.frombuffer(blob, dtype="<i2").copy()).view(torch.bfloat16).reshape(shape)
        item = np.dtype(NP[dtype]).itemsize
        _need(len(blob) == item * numel, where, "raw data has the wrong size")
        return torch.from_numpy(np.frombuffer(blob, dtype=NP[dtype]).copy()).reshape(shape)
    _need(dtype == "float32", where, "only float32 tensors use coded storage")
    secs = desc.get("sections")
    _need(isinstance(secs, list) and all(isinstance(s, int) and s >= 0 for s in secs) and sum(secs) == len(blob),
          where, "section table does not match the data")
    parts, off = [], 0
    for s in secs:
        parts.append(blob[off:off + s])
        off += s
    pos = desc.get("pos")
    if pos == "sparse":
        gb, m = desc.get("gap_bits"), desc.get("m")
        _need(isinstance(gb, int) and 1 <= gb <= 12 and isinstance(m, int) and 0 <= m <= numel, where, "bad sparse header")
        _need(len(parts) >= 2, where, "missing sections")
        gaps = _decode_ints(parts.pop(0), desc.get("gap_code"), gb, m, 1 << gb, where + " (gaps)")
        idx = np.cumsum(gaps + 1) - 1
        _need(m == 0 or int(idx[-1]) < numel, where, "sparse index beyond the tensor")
        tail = numel - 1 - (int(idx[-1]) if m else -1)
        if tail >= 1 << gb:  # more implicit zeros than a gap can say: size not backed by the stream
            ok = legacy_tail is not None and tail <= legacy_tail[0]
            _need(ok, where, f"declares {numel} values but its sparse stream describes only "
                             f"{numel - tail} (the size is not backed by the data)")
            legacy_tail[0] -= tail
        count = m
    elif pos == "dense":
        idx, count = None, numel
    else:
        raise NetcompressError(f"{where}: unknown position coding {pos!r}")
    val = desc.get("val")
    if val in ("raw32", "raw16"):
        _need(len(parts) == 1, where, "wrong number of sections")
        item = 4 if val == "raw32" else 2
        _need(len(parts[0]) == item * count, where, "value section has the wrong size")
        vals = np.frombuffer(parts[0], dtype="<f4" if val == "raw32" else "<f2").astype(np.float32)
    elif val == "grid":
        k, rows, nmin = desc.get("k"), desc.get("rows"), desc.get("nmin")
        _need(pos == "dense" and isinstance(k, int) and 1 <= k <= 1 << 12 and isinstance(rows, int) and rows >= 1
              and numel % rows == 0 and isinstance(nmin, int) and abs(nmin) < 1 << 12 and len(parts) == 2
              and len(parts[0]) == 4 * rows, where, "bad integer-grid header")
        scales = np.frombuffer(parts[0], dtype="<f4").astype(np.float32)
        ix = _decode_ints(parts[1], desc.get("idx_code"), _fixed_width(k), count, k, where + " (integers)")
        q = (ix + nmin).astype(np.float32).reshape(rows, -1)
        vals = (q * scales[:, None]).astype(np.float32).ravel()
    elif val == "agrid":
        k, rows = desc.get("k"), desc.get("rows")
        _need(pos == "dense" and isinstance(k, int) and 1 <= k <= 1 << 12 and isinstance(rows, int) and rows >= 1
              and numel % rows == 0 and len(parts) == 3 and len(parts[0]) == 2 * rows and len(parts[1]) == 2 * rows,
              where, "bad affine-grid header")
        sc = np.frombuffer(parts[0], dtype="<f2").astype(np.float64)
        zp = np.frombuffer(parts[1], dtype="<f2").astype(np.float64)
        ix = _decode_ints(parts[2], desc.get("idx_code"), _fixed_width(k), count, k, where + " (integers)")
        vals = ((ix.reshape(rows, -1) - zp[:, None]) * sc[:, None]).astype(np.float32).ravel()
    elif val == "codebook":
        k, cbt = desc.get("k"), desc.get("cb", "f32")
        item = {"f32": 4, "f16": 2}.get(cbt, 0) if isinstance(cbt, str) else 0
        _need(isinstance(k, int) and 1 <= k <= MAX_CODEBOOK and len(parts) == 2 and item and len(parts[0]) == item * k,
              where, "bad codebook")
        cb = (np.frombuffer(parts[0], dtype="<u4") if cbt == "f32"
              else np.frombuffer(parts[0], dtype="<f2").astype(np.float32).view(np.uint32))
        ix = _decode_ints(parts[1], desc.get("idx_code"), _fixed_width(k), count, k, where + " (indices)")
        vals = cb[ix].view(np.float32)
    else:
        raise NetcompressError(f"{where}: unknown value coding {val!r}")
    if idx is None:
        out = vals.astype(np.float32, copy=False)
    else:
        out = np.zeros(numel, dtype=np.float32)
        out[idx] = vals
    return torch.from_numpy(np.ascontiguousarray(out).copy()).reshape(shape)
