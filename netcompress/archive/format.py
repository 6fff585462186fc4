"""The .ncz compressed model file: `pack(model, path)`, `unpack(path) -> model`, `inspect(path)`.

Layout (little endian)::

    b"NCZ\\x00"  u16 version  u32 header_len  32-byte SHA-256 of the header  header  payload

The header is zlib-compressed JSON: format name and version, the architecture description of
`netcompress.models.describe` (rebuilt by `netcompress.models.build`; no pickle, no code), the
SHA-256 of the payload, and per tensor: name, dtype, shape, its encoding (`archive.codec`), offset,
length and CRC-32. Reading checks the magic, version, both digests and every field before any
tensor is decoded; any problem raises `NetcompressError`. Files are written atomically.

Memory is bounded by the file: every declared size must be backed by the bytes present (see
`codec.decode_tensor`); the architecture is built on the meta device and compared with the declared
tensors before any weight is allocated; the total number of values is capped (`max_params`, default
`NETCOMPRESS_MAX_PARAMS` or 2**30). `inspect` never rebuilds the model and decodes one tensor at a
time. Version 2 (written now) makes sparse streams reach the end of their tensor; version-1 files
still load, with at most 2**24 implicit trailing zeros in all.

Example:
    nc.archive.pack(model, "lenet5.ncz")
    same = nc.archive.unpack("lenet5.ncz")
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.archive import codec
from netcompress.core.errors import NetcompressError

MAGIC = b"NCZ\x00"
FORMAT = "netcompress-archive"
VERSION = 2
_PRE = struct.Struct("<4sHI32s")
MAX_HEADER = 64 << 20
LEGACY_TAIL = 1 << 24  # version 1: implicit trailing zeros allowed in all


def max_params_default() -> int:
    """The cap on values rebuilt from one file: `NETCOMPRESS_MAX_PARAMS`, else 2**30."""
    env = os.environ.get("NETCOMPRESS_MAX_PARAMS")
    try:
        return int(env) if env else 1 << 30
    except ValueError:
        raise NetcompressError(f"NETCOMPRESS_MAX_PARAMS={env!r}: expected an integer") from None


def pack(model: nn.Module, path: str | os.PathLike, coding: str = "huffman") -> dict[str, Any]:
    """Write `model` as a compressed archive (Han et al. 2016: sparse + codebook + Huffman), atomically.

    Every tensor is stored exactly, in its smallest lossless form, so `unpack(path)` gives a model
    with bit-identical outputs.

    Args:
        model: a model built by `netcompress.models.create` (possibly pruned, clustered, binarised).
        path: the .ncz file to write.
        coding: 'huffman' (default) or 'fixed' (no Huffman coding; fixed-width fields only).

    Returns:
        The manifest (what `inspect` reads back), with the file size under "file_bytes".
    """
    if coding not in ("huffman", "fixed"):
        raise NetcompressError(f"pack: coding {coding!r}; valid: huffman, fixed")
    from netcompress.models.io import atomic_write, describe, model_tensors

    arch = _compact_arch(describe(model))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    entries, blobs, off = [], [], 0
    for name, t in model_tensors(model)[0].items():  # tied tensors once (the `tied` table of arch)
        desc, blob = codec.encode_tensor(t, coding)
        entries.append({"name": name, "dtype": codec.dtype_name(t), "shape": list(t.shape), "enc": desc,
                        "offset": off, "length": len(blob), "crc32": zlib.crc32(blob)})
        if name not in params:
            entries[-1]["buffer"] = True
        blobs.append(blob)
        off += len(blob)
    payload = b"".join(blobs)
    manifest = {"format": FORMAT, "version": VERSION, "arch": arch, "tensors": entries,
                "payload_sha256": hashlib.sha256(payload).hexdigest()}
    header = zlib.compress(json.dumps(manifest, separators=(",", ":")).encode(), 9)
    pre = _PRE.pack(MAGIC, VERSION, len(header), hashlib.sha256(header).digest())
    atomic_write(path, lambda f: f.write(pre + header + payload))
    manifest["file_bytes"] = len(pre) + len(header) + len(payload)
    return manifest


def _zoo_modules(spec: dict[str, Any]) -> dict[str, Any] | None:
    from netcompress.models.io import describe
    from netcompress.models.zoo import create

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"].startswith("python:"):
        return None
    try:
        with torch.device("meta"):  # a description only: no weights are allocated
            return describe(create(spec["name"], **dict(spec.get("kwargs", {}))))["modules"]
    except Exception:  # noqa: BLE001 - any failure just means "store the full table"
        return None


def _compact_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Drop the module table when it equals the unchanged zoo model's (rebuilt at unpack)."""
    if _zoo_modules(arch["spec"]) == arch["modules"]:
        return {**arch, "modules": None}
    return arch


def _full_arch(arch: dict[str, Any], where: str) -> dict[str, Any]:
    if arch.get("modules", {}) is None:
        spec = arch.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"].startswith("python:"):
            raise NetcompressError(f"{where}: this archive names python code ({spec['name']}); archives never run code")
        modules = _zoo_modules(spec)
        if modules is None:
            raise NetcompressError(f"{where}: architecture {spec!r} cannot be rebuilt")
        return {**arch, "modules": modules}
    return arch


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes, int]:
    p = Path(path)
    if not p.is_file():
        raise NetcompressError(f"archive {p} does not exist")
    data = p.read_bytes()
    where = str(p)
    if len(data) < _PRE.size:
        raise NetcompressError(f"{where}: truncated (not a netcompress archive)")
    magic, version, hlen, hsha = _PRE.unpack_from(data, 0)
    if magic != MAGIC:
        raise NetcompressError(f"{where}: not a netcompress archive (bad magic)")
    if version > VERSION or version < 1:
        raise NetcompressError(f"{where}: archive format version {version} is not supported (this netcompress reads {VERSION})")
    if len(data) < _PRE.size + hlen:
        raise NetcompressError(f"{where}: truncated header")
    header = data[_PRE.size:_PRE.size + hlen]
    if hashlib.sha256(header).digest() != hsha:
        raise NetcompressError(f"{where}: header checksum mismatch (corrupted or tampered)")
    try:
        d = zlib.decompressobj()
        raw = d.decompress(header, MAX_HEADER)
        if d.unconsumed_tail or not d.eof:
            raise ValueError("header too large or incomplete")
        manifest = json.loads(raw)
    except (zlib.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise NetcompressError(f"{where}: unreadable header ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != version:
        raise NetcompressError(f"{where}: header is not a netcompress archive manifest")
    payload = data[_PRE.size + hlen:]
    if hashlib.sha256(payload).hexdigest() != manifest.get("payload_sha256"):
        raise NetcompressError(f"{where}: payload checksum mismatch (truncated, corrupted or tampered)")
    if not isinstance(manifest.get("tensors"), list) or not isinstance(manifest.get("arch"), dict):
        raise NetcompressError(f"{where}: manifest lacks tensors or architecture")
    return manifest, payload, len(data)


def _check_entries(manifest: dict[str, Any], payload: bytes, where: str, max_params: int | None) -> list[dict[str, Any]]:
    """Every tensor entry well formed and inside the payload, and the total declared size under the cap."""
    names, total = set(), 0
    for i, e in enumerate(manifest["tensors"]):
        if not isinstance(e, dict):
            raise NetcompressError(f"{where}: tensor entry {i} is not an object")
        name = e.get("name")
        if not isinstance(name, str) or name in names:
            raise NetcompressError(f"{where}: tensor entry {i} has a bad or duplicate name")
        names.add(name)
        w = f"{where}: tensor {name!r}"
        off, ln = e.get("offset"), e.get("length")
        if not (isinstance(off, int) and isinstance(ln, int) and 0 <= off and 0 <= ln and off + ln <= len(payload)):
            raise NetcompressError(f"{w}: data range outside the payload")
        if not isinstance(e.get("enc"), dict):
            raise NetcompressError(f"{w}: missing encoding")
        total += codec.declared_numel(e.get("shape"), w)
    cap = max_params_default() if max_params is None else max_params
    if total > cap:
        raise NetcompressError(f"{where}: declares {total:,} values, more than the limit of {cap:,} "
                               "(raise it with max_params= or NETCOMPRESS_MAX_PARAMS if you trust this file)")
    return manifest["tensors"]


def _decode_one(e: dict[str, Any], payload: bytes, where: str, legacy_tail: list[int] | None) -> torch.Tensor:
    w = f"{where}: tensor {e['name']!r}"
    blob = payload[e["offset"]:e["offset"] + e["length"]]
    if zlib.crc32(blob) != e.get("crc32"):
        raise NetcompressError(f"{w}: CRC mismatch")
    try:
        return codec.decode_tensor(e["enc"], blob, e.get("dtype"), e.get("shape"), w, legacy_tail)
    except NetcompressError:
        raise
    except MemoryError:
        raise NetcompressError(f"{w}: not enough memory to decode it") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as ex:
        raise NetcompressError(f"{w}: undecodable ({type(ex).__name__}: {ex})") from None


def unpack(path: str | os.PathLike, max_params: int | None = None) -> nn.Module:
    """Rebuild the model stored in an archive (eval mode, CPU); outputs are bit-identical to the packed model.

    Architectures naming python code (`python:` specs) are refused: an archive never runs code. The
    architecture is built on the meta device and checked against the declared tensors before any
    memory is allocated; at most `max_params` values are rebuilt (see module docstring).
    """
    from netcompress.models.io import build, check_against, load_state_exact, materialize, undeclared_shapes_from_file

    manifest, payload, _ = _read(path)
    where = str(path)
    entries = _check_entries(manifest, payload, where, max_params)
    try:
        with torch.device("meta"):
            model = build(_full_arch(manifest["arch"], where), trust_python=False)
    except NetcompressError as e:
        raise NetcompressError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, NotImplementedError) as e:
        raise NetcompressError(f"{where}: architecture cannot be rebuilt ({type(e).__name__}: {e})") from None
    declared = {e["name"]: (tuple(e["shape"]), codec.DTYPES.get(e.get("dtype"))) for e in entries}
    tied = manifest["arch"].get("tied")
    # tensors no table entry declares (a pruned class token, a cache buffer) take the archive's shape,
    # as in a model file; meta tensors, so nothing is allocated before the check
    undeclared_shapes_from_file(model, _full_arch(manifest["arch"], where),
                                 {n: torch.empty(s, dtype=d, device="meta") for n, (s, d) in declared.items() if d})
    try:
        computed = check_against(model, declared, tied)
    except NetcompressError as e:
        raise NetcompressError(f"{where}: {e}") from None
    legacy = [LEGACY_TAIL] if manifest.get("version") == 1 else None
    state = {e["name"]: _decode_one(e, payload, where, legacy) for e in entries}
    try:
        model = materialize(model, _full_arch(manifest["arch"], where), computed, state)
        load_state_exact(model, state, tied)
    except NetcompressError as e:
        raise NetcompressError(f"{where}: {e}") from None
    return model.eval()


def inspect(path: str | os.PathLike, max_params: int | None = None) -> dict[str, Any]:
    """Per-tensor table of an archive: params, nonzeros, encoding, bytes, bits/weight, entropy bound, ratio.

    Returns `{"file_bytes", "params", "dense_fp32_bytes", "ratio", "entropy_bytes", "coded_stream_bytes",
    "layers": [...]}`; decoding every tensor also verifies the archive. The model is never rebuilt
    and one tensor at a time is decoded (its size bounded by its bytes, see module docstring).
    """
    manifest, payload, size = _read(path)
    entries = _check_entries(manifest, payload, str(path), max_params)
    legacy = [LEGACY_TAIL] if manifest.get("version") == 1 else None
    rows = []
    for e in entries:
        t = _decode_one(e, payload, str(path), legacy)
        enc = dict(e["enc"])
        if t.dtype == torch.float32 and enc.get("val") != "raw":  # re-derive the streams' entropy bound
            codec.encode_tensor(t, "huffman" if "huffman" in (enc.get("gap_code"), enc.get("idx_code")) else "fixed", enc)
        n = t.numel()
        desc = enc["pos"] if enc.get("val") == "raw" else f"{enc['pos']}/{enc['val']}"
        if enc.get("val") == "codebook":
            desc += f"[{enc['k']}]/{enc['idx_code']}"
        if enc.get("pos") == "sparse":
            desc += f" gaps {enc['gap_bits']}b/{enc['gap_code']}"
        rows.append({"name": e["name"], "params": n, "buffer": bool(e.get("buffer", False)), "nonzero": int(torch.count_nonzero(t)) if n else 0,
                     "encoding": desc, "bytes": e["length"], "bits_per_weight": 8 * e["length"] / max(n, 1),
                     "entropy_bytes": enc.get("entropy_bits", 0.0) / 8, "stream_bytes": enc.get("stream_bits", 0.0) / 8,
                     "ratio": 4 * n / max(e["length"], 1) if t.is_floating_point() else None})
    params = sum(r["params"] for r in rows if not r["buffer"])
    ent = sum(r["entropy_bytes"] for r in rows)
    coded = sum(r["stream_bytes"] for r in rows)
    return {"file_bytes": size, "header_bytes": size - len(payload), "params": params, "dense_fp32_bytes": 4 * params,
            "ratio": 4 * params / size, "entropy_bytes": ent, "coded_stream_bytes": coded,
            "stream_overhead": (coded / ent - 1) if ent else None, "layers": rows}


def format_table(info: dict[str, Any]) -> str:
    """The `inspect` result as an aligned text table."""
    head = f"{'tensor':28s} {'params':>9s} {'nonzero':>9s} {'bytes':>9s} {'bits/w':>7s} {'entropy B':>10s} {'ratio':>7s}  encoding"
    lines = [head, "-" * len(head)]
    for r in info["layers"]:
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "-"
        lines.append(f"{r['name'][:28]:28s} {r['params']:9d} {r['nonzero']:9d} {r['bytes']:9d} {r['bits_per_weight']:7.3f} "
                     f"{r['entropy_bytes']:10.1f} {ratio:>7s}  {r['encoding']}")
    lines.append("-" * len(head))
    lines.append(f"file {info['file_bytes']} bytes (header {info['header_bytes']}); {info['params']} parameters; "
                 f"dense fp32 {info['dense_fp32_bytes']} bytes; ratio {info['ratio']:.1f}x")
    if info["entropy_bytes"]:
        lines.append(f"coded index/gap streams {info['coded_stream_bytes']:.0f} bytes vs entropy bound "
                     f"{info['entropy_bytes']:.0f} bytes (+{100 * info['stream_overhead']:.2f}%)")
    return "\n".join(lines)
