"""Tiny tampered files must not force huge memory: every size is backed by the file's bytes.

Each hostile file is opened in a child process under an address-space limit (RLIMIT_AS) and a time
limit; the child must end with a NetcompressError, without coming near the limit.
"""
import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.archive import codec, inspect, pack, unpack
from netcompress.archive.format import _PRE
from netcompress.core.errors import NetcompressError
from netcompress.quantize import cluster_

ROOT = Path(nc.__file__).resolve().parents[1]  # the netcompress under test
LIMIT_MB = 768  # address space a child may add after importing torch

CHILD = """\
import os, resource, signal, sys, json
import torch, numpy
import netcompress as nc
from netcompress.archive import inspect, unpack
from netcompress.core.errors import NetcompressError

def vm():
    return int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024

lim = vm() + {limit_mb} * 2**20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
signal.alarm({seconds})
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = []
for path, op in json.loads(sys.argv[1]):
    try:
        {{"inspect": inspect, "unpack": unpack, "load": nc.models.load}}[op](path)
        results.append("ok")
    except NetcompressError as e:
        results.append("NetcompressError: " + str(e))
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) // 1024
print(json.dumps({{"results": results, "rss_growth_mb": grown}}))
"""


def run_limited(jobs: list[tuple[Path, str]], seconds: int = 120) -> dict:
    """Open each (file, op) in a child under the memory and time limits; its report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = CHILD.format(limit_mb=LIMIT_MB, seconds=seconds)
    p = subprocess.run([sys.executable, "-c", code, json.dumps([(str(f), op) for f, op in jobs])],
                       capture_output=True, text=True, env=env, timeout=seconds + 30)
    assert p.returncode == 0, f"decoder crashed under the memory limit:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def pruned_clustered(name: str = "lenet300", density: float = 0.05) -> nn.Module:
    torch.manual_seed(0)
    m = nc.models.create(name, num_classes=10)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                w = mod.weight
                thr = w.abs().flatten().kthvalue(int((1 - density) * w.numel())).values
                w.mul_(w.abs() > thr)
    cluster_(m, bits={"Conv2d": 8, "Linear": 5})
    return m.eval()


def rewrite(data: bytes, edit, version: int | None = None) -> bytes:
    """Tamper with the manifest and recompute every checksum (an attacker's archive)."""
    _, v, hlen, _ = _PRE.unpack_from(data, 0)
    man = json.loads(zlib.decompress(data[_PRE.size:_PRE.size + hlen]))
    payload = data[_PRE.size + hlen:]
    payload = edit(man, payload) or payload
    if version is not None:
        v = man["version"] = version
    man["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header = zlib.compress(json.dumps(man).encode())
    return _PRE.pack(b"NCZ\x00", v, len(header), hashlib.sha256(header).digest()) + header + payload


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("a") / "a.ncz"
    pack(pruned_clustered(), p)
    return p.read_bytes()


def sparse_entry(man: dict) -> dict:
    return next(t for t in man["tensors"] if t["enc"].get("pos") == "sparse")


def hostile_files(good: bytes, tmp: Path) -> dict[str, Path]:
    def huge_sparse(man, payload):  # the 600M-parameter row
        sparse_entry(man)["shape"] = [24000, 25000]

    def at_the_maximum(man, payload):  # a tensor at the largest allowed size (8 GiB of float32)
        sparse_entry(man)["shape"] = [codec.MAX_NUMEL - 1]

    def huge_dense_raw(man, payload):
        t = next(t for t in man["tensors"] if t["enc"].get("val") == "raw32")
        t["shape"] = [30000, 30000]

    def huge_layer_in_table(man, payload):  # the arch table declares Linear(30000, 30000)
        arch = man["arch"]
        if arch.get("modules") is None:
            with torch.device("meta"):
                arch["modules"] = nc.models.describe(nc.models.create(arch["spec"]["name"], **arch["spec"]["kwargs"]))["modules"]
        arch["modules"]["fc1"]["args"].update(in_features=30000, out_features=30000)

    def huge_zoo_kwargs(man, payload):  # a compact archive rebuilt from a spec asking for a huge input
        man["arch"]["spec"]["kwargs"]["input_size"] = 2000

    def many_huge_tensors(man, payload):
        e = sparse_entry(man)
        man["tensors"] += [dict(e, name=f"x{i}", shape=[4000, 4000]) for i in range(200)]

    out = {}
    for edit in (huge_sparse, at_the_maximum, huge_dense_raw, huge_layer_in_table, huge_zoo_kwargs, many_huge_tensors):
        p = tmp / f"{edit.__name__}.ncz"
        p.write_bytes(rewrite(good, edit))
        out[edit.__name__] = p
    return out


def test_tampered_archives_cost_no_memory(good, tmp_path):
    files = hostile_files(good, tmp_path)
    assert all(p.stat().st_size < 300_000 for p in files.values())
    jobs = [(p, op) for p in files.values() for op in ("inspect", "unpack")]
    rep = run_limited(jobs)
    for (p, op), res in zip(jobs, rep["results"]):
        if op == "inspect" and p.stem in ("huge_layer_in_table", "huge_zoo_kwargs"):
            assert res == "ok", (p.stem, res)  # inspect reads tensors only: the table is never built
        else:
            assert res.startswith("NetcompressError") and str(p) in res, (p.stem, op, res)
    assert rep["rss_growth_mb"] < 200, rep


def test_the_messages_name_what_is_not_backed_by_the_bytes(good, tmp_path):
    files = hostile_files(good, tmp_path)
    with pytest.raises(NetcompressError, match="declares 600000000 values but its sparse stream describes only"):
        inspect(files["huge_sparse"])
    with pytest.raises(NetcompressError, match=r"fc1\.weight.*expects \(30000, 30000\)"):
        unpack(files["huge_layer_in_table"])
    with pytest.raises(NetcompressError, match="value section has the wrong size"):
        inspect(files["huge_dense_raw"])
    with pytest.raises(NetcompressError, match="more than the limit"):
        inspect(files["many_huge_tensors"])


def test_cap_on_rebuilt_values_is_configurable_with_a_clear_error(good, tmp_path, monkeypatch):
    p = tmp_path / "a.ncz"
    p.write_bytes(good)
    with pytest.raises(NetcompressError, match=r"declares 266,610 values, more than the limit of 1,000 .*NETCOMPRESS_MAX_PARAMS"):
        unpack(p, max_params=1000)
    monkeypatch.setenv("NETCOMPRESS_MAX_PARAMS", "1000")
    with pytest.raises(NetcompressError, match="limit of 1,000"):
        inspect(p)
    monkeypatch.setenv("NETCOMPRESS_MAX_PARAMS", "300000")
    assert sum(t.numel() for t in unpack(p).parameters()) == 266_610


def test_version_1_archives_with_implicit_trailing_zeros_still_load():
    t = torch.zeros(5000)
    t[[3, 10]] = torch.tensor([1.5, -2.0])
    # what the version-1 encoder wrote: entries up to the last nonzero, the zero tail implicit
    gaps = codec.hf.pack_uint(torch.tensor([3, 6]).numpy(), 4)
    vals = torch.tensor([1.5, -2.0]).numpy().astype("<f4").tobytes()
    old = {"pos": "sparse", "gap_bits": 4, "gap_code": "fixed", "m": 2, "val": "raw32", "sections": [len(gaps), len(vals)]}
    assert torch.equal(codec.decode_tensor(old, gaps + vals, "float32", [5000], "v1", legacy_tail=[1 << 24]), t)
    with pytest.raises(NetcompressError, match="declares 5000 values but its sparse stream describes only 11"):
        codec.decode_tensor(old, gaps + vals, "float32", [5000], "v2")
    with pytest.raises(NetcompressError, match="not backed by the data"):  # the legacy allowance is finite
        codec.decode_tensor(old, gaps + vals, "float32", [5000], "v1", legacy_tail=[100])
    # today's encoder makes the stream reach the end of the tensor
    desc, blob = codec.encode_tensor(t)
    assert desc["pos"] == "sparse"
    assert torch.equal(codec.decode_tensor(desc, blob, "float32", [5000], "v2"), t)


def test_a_version_1_archive_file_still_unpacks(good, tmp_path):
    p = tmp_path / "v1.ncz"
    p.write_bytes(rewrite(good, lambda man, payload: None, version=1))
    a, b = unpack(p), pruned_clustered()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_saved_model_file_declaring_a_huge_layer_costs_no_memory(tmp_path):
    m = nc.models.create("lenet300")
    nc.models.save(m, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    arch = json.loads(blob["arch"])
    arch["modules"]["fc1"]["args"].update(in_features=30000, out_features=30000)
    blob["arch"] = json.dumps(arch)
    torch.save(blob, tmp_path / "huge.pt")
    arch = json.loads(blob["arch"])
    arch["spec"]["kwargs"]["input_size"] = 3000  # the zoo model itself asked to be huge
    blob["arch"] = json.dumps(arch)
    torch.save(blob, tmp_path / "huge_spec.pt")
    rep = run_limited([(tmp_path / "huge.pt", "load"), (tmp_path / "huge_spec.pt", "load")])
    for r in rep["results"]:
        assert r.startswith("NetcompressError") and "fc1.weight" in r, r
    assert rep["rss_growth_mb"] < 200, rep


FUZZ = """\
import json, random, sys, zlib, hashlib, struct, traceback
from pathlib import Path
import torch
from netcompress.archive.format import _PRE
from netcompress.archive import inspect, unpack
from netcompress.core.errors import NetcompressError

good = Path(sys.argv[2]).read_bytes()
rng = random.Random(int(sys.argv[3]))
_, v, hlen, _ = _PRE.unpack_from(good, 0)
base = json.loads(zlib.decompress(good[_PRE.size:_PRE.size + hlen]))
payload = good[_PRE.size + hlen:]
big = [0, 1, 2, 7, 4095, 4096, 2**20, 2**24 + 1, 2**30, 2**31 - 1, -1]
keys = ["k", "m", "gap_bits", "sections", "rows", "nmin", "val", "pos", "idx_code", "cb", "shape", "length", "offset"]
fails = []
for case in range(int(sys.argv[4])):
    man = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        t = rng.choice(man["tensors"])
        key = rng.choice(keys)
        if key == "shape":
            t["shape"] = [rng.choice(big) for _ in range(rng.randint(1, 3))]
        elif key in ("length", "offset"):
            t[key] = rng.choice(big)
        elif key == "sections":
            t["enc"]["sections"] = [rng.choice(big) for _ in range(rng.randint(0, 3))]
        else:
            t["enc"][key] = rng.choice(big + ["raw32", "codebook", "sparse", "huffman", "fixed", "f16"])
    if rng.random() < 0.3:
        man["arch"]["spec"]["kwargs"]["input_size"] = rng.choice([28, 1000, 30000])
    man["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header = zlib.compress(json.dumps(man).encode())
    data = _PRE.pack(b"NCZ\\x00", v, len(header), hashlib.sha256(header).digest()) + header + payload
    p = Path(sys.argv[1])
    p.write_bytes(data)
    for fn in (inspect, unpack):
        try:
            fn(p)
        except NetcompressError:
            pass
        except BaseException as e:
            fails.append(f"case {case} {fn.__name__}: {type(e).__name__}: {e}")
print(json.dumps(fails))
"""


def test_fuzzed_manifests_under_a_memory_and_time_limit(good, tmp_path):
    src = tmp_path / "good.ncz"
    src.write_bytes(good)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    limiter = ("import resource, sys\n"
               "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
               "import torch, netcompress.archive\n"
               "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
               f"lim = vm + {LIMIT_MB} * 2**20\n"
               "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n")
    p = subprocess.run([sys.executable, "-c", limiter + FUZZ, str(tmp_path / "f.ncz"), str(src), "0", "150"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    fails = json.loads(p.stdout.strip().splitlines()[-1])
    assert fails == [], fails[:5]
