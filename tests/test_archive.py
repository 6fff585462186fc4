import hashlib
import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netcompress as nc
from netcompress.archive import codec, inspect, pack, unpack
from netcompress.archive.format import _PRE
from netcompress.cli import main
from netcompress.core.errors import NetcompressError
from netcompress.quantize import cluster_


def pruned_clustered(name="lenet5", density=0.1, **kw):
    torch.manual_seed(0)
    m = nc.models.create(name, num_classes=10, **kw)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                w = mod.weight
                thr = w.abs().flatten().kthvalue(int((1 - density) * w.numel())).values
                w.mul_(w.abs() > thr)
    cluster_(m, bits={"Conv2d": 8, "Linear": 5})
    return m.eval()


def same_outputs(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_deep_compression_roundtrip_is_exact_and_small(tmp_path):
    m = pruned_clustered()
    man = pack(m, tmp_path / "m.ncz")
    assert (tmp_path / "m.ncz").stat().st_size == man["file_bytes"]
    back = unpack(tmp_path / "m.ncz")
    assert same_outputs(m, back, torch.randn(4, 1, 28, 28))
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    info = inspect(tmp_path / "m.ncz")
    assert info["ratio"] > 25  # 10 % density of uniform random weights, <= 8-bit codebooks
    fc = next(r for r in info["layers"] if r["name"] == "classifier.0.weight")
    assert "sparse" in fc["encoding"] and "codebook" in fc["encoding"]
    assert fc["bits_per_weight"] < 1.0


@pytest.mark.parametrize("name,kw", [("lenet300", {}), ("resnet8", {"in_channels": 1, "input_size": 28}),
                                     ("mobilenet-small", {"in_channels": 1, "input_size": 28})])
def test_dense_models_with_buffers_roundtrip(tmp_path, name, kw):
    m = nc.models.create(name, num_classes=10, **kw).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.num_batches_tracked.fill_(7)
    pack(m, tmp_path / "d.ncz")
    assert inspect(tmp_path / "d.ncz")["params"] == sum(p.numel() for p in m.parameters())  # buffers not counted
    back = unpack(tmp_path / "d.ncz")
    assert same_outputs(m, back, torch.randn(2, 1, 28, 28))
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]) and v.dtype == back.state_dict()[k].dtype


def test_fp16_exact_weights_take_16_bits(tmp_path):
    m = nc.models.create("lenet300", num_classes=10)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    pack(m, tmp_path / "h.ncz")
    info = inspect(tmp_path / "h.ncz")
    assert all(r["bits_per_weight"] <= 16.01 for r in info["layers"] if r["params"] > 1000)
    assert same_outputs(m, unpack(tmp_path / "h.ncz"), torch.randn(2, 1, 28, 28))


def test_structurally_pruned_layer_survives(tmp_path):
    m = nc.models.create("lenet300", num_classes=10)
    m.fc1 = nn.Linear(784, 120)
    m.fc2 = nn.Linear(120, 100)
    pack(m, tmp_path / "s.ncz")
    back = unpack(tmp_path / "s.ncz")
    assert back.fc1.out_features == 120 and same_outputs(m, back, torch.randn(2, 1, 28, 28))


def test_a_buffer_the_forward_resized_survives(tmp_path):
    """ConViT caches its relative indices in a non-persistent buffer that its forward resizes to the
    input (1, 1, 1, 3) -> (1, N, N, 3): the archive takes the stored shape, as a model file does."""
    m = nc.models.create("timm:convit_tiny", num_classes=10, input_size=32, depth=2, local_up_to_layer=1).eval()
    x = torch.randn(2, 3, 32, 32)
    m(x)
    assert m.blocks[0].attn.rel_indices.shape == (1, 4, 4, 3)
    pack(m, tmp_path / "c.ncz", coding="fixed")
    back = unpack(tmp_path / "c.ncz")
    assert back.blocks[0].attn.rel_indices.shape == (1, 4, 4, 3) and same_outputs(m, back, x)


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_sparse_filler_zeros_and_codings(coding):
    t = torch.zeros(5000)
    t[[0, 1, 400, 4999]] = torch.tensor([1.5, -2.0, 1.5, 3.0])  # gaps far beyond small fields
    t[1000:1010] = 0.25
    desc, blob = codec.encode_tensor(t, coding)
    assert desc["pos"] == "sparse"
    assert torch.equal(codec.decode_tensor(desc, blob, "float32", [5000], "t"), t)
    if coding == "fixed":
        assert desc.get("gap_code") == "fixed" and desc.get("idx_code", "fixed") == "fixed"


def test_negative_zero_and_nan_are_bit_exact():
    t = torch.tensor([0.0, -0.0, float("nan"), 1.0] * 50)
    desc, blob = codec.encode_tensor(t)
    back = codec.decode_tensor(desc, blob, "float32", [200], "t")
    assert torch.equal(back.view(torch.int32), t.view(torch.int32))


def archive_bytes(tmp_path) -> bytes:
    m = pruned_clustered("lenet300", density=0.05)
    pack(m, tmp_path / "a.ncz")
    return (tmp_path / "a.ncz").read_bytes()


def rewrite(data: bytes, edit) -> bytes:
    """Tamper with the manifest and recompute every checksum (an attacker's archive)."""
    _, version, hlen, _ = _PRE.unpack_from(data, 0)
    man = json.loads(zlib.decompress(data[_PRE.size:_PRE.size + hlen]))
    payload = data[_PRE.size + hlen:]
    payload = edit(man, payload) or payload
    man["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header = zlib.compress(json.dumps(man).encode())
    return _PRE.pack(b"NCZ\x00", version, len(header), hashlib.sha256(header).digest()) + header + payload


def test_corruption_truncation_and_tampering_are_clear_errors(tmp_path):
    data = archive_bytes(tmp_path)
    p = tmp_path / "bad.ncz"
    cases = {
        "bad magic": b"PK\x03\x04" + data[4:],
        "version 9": data[:4] + struct.pack("<H", 9) + data[6:],
        "truncated": data[: len(data) // 2],
        "header checksum": data[:_PRE.size + 5] + bytes([data[_PRE.size + 5] ^ 1]) + data[_PRE.size + 6:],
        "payload checksum": data[:-10] + bytes([data[-10] ^ 0x40]) + data[-9:],
    }
    for what, bad in cases.items():
        p.write_bytes(bad)
        with pytest.raises(NetcompressError, match=str(p).replace(".", r"\.")):
            unpack(p)

    def python_arch(man, payload):
        man["arch"]["spec"]["name"] = "python:os:system"

    def wrong_shape(man, payload):
        man["tensors"][0]["shape"] = [7, 7]

    def bad_gap_bits(man, payload):
        for t in man["tensors"]:
            if t["enc"].get("pos") == "sparse":
                t["enc"]["gap_bits"] = 40

    def swap_payload(man, payload):
        return payload[::-1]

    for edit, msg in [(python_arch, "python"), (wrong_shape, "size|shape|sparse"), (bad_gap_bits, "sparse"),
                      (swap_payload, "CRC")]:
        p.write_bytes(rewrite(data, edit))
        with pytest.raises(NetcompressError, match=msg):
            unpack(p)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_archive_never_crashes(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fz")
    if not hasattr(test_fuzz_archive_never_crashes, "good"):
        test_fuzz_archive_never_crashes.good = archive_bytes(tmp)
    good = bytearray(test_fuzz_archive_never_crashes.good)
    mode = data.draw(st.sampled_from(["flip", "truncate", "payload-resigned", "enc-resigned"]))
    if mode == "flip":
        for _ in range(data.draw(st.integers(1, 5))):
            i = data.draw(st.integers(0, len(good) - 1))
            good[i] ^= data.draw(st.integers(1, 255))
        bad = bytes(good)
    elif mode == "truncate":
        bad = bytes(good[: data.draw(st.integers(0, len(good) - 1))])
    elif mode == "payload-resigned":  # attacker fixes checksums: only the decoder's validation is left
        i = data.draw(st.integers(0, 3000))
        v = data.draw(st.integers(1, 255))

        def edit(man, payload):
            pb = bytearray(payload)
            pb[i % len(pb)] ^= v
            for t in man["tensors"]:
                t["crc32"] = zlib.crc32(bytes(pb[t["offset"]:t["offset"] + t["length"]]))
            return bytes(pb)

        bad = rewrite(bytes(good), edit)
    else:
        key = data.draw(st.sampled_from(["k", "m", "gap_bits", "sections", "val", "pos", "idx_code"]))
        val = data.draw(st.one_of(st.integers(-5, 10**6), st.text(max_size=4), st.lists(st.integers(-3, 5000), max_size=4)))
        j = data.draw(st.integers(0, 5))

        def edit(man, payload):
            man["tensors"][j % len(man["tensors"])]["enc"][key] = val

        bad = rewrite(bytes(good), edit)
    p = tmp / "f.ncz"
    p.write_bytes(bad)
    try:
        unpack(p)
    except NetcompressError:
        pass


def test_pack_refuses_models_without_spec(tmp_path):
    with pytest.raises(NetcompressError, match="describe"):
        pack(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x.ncz")
    with pytest.raises(NetcompressError, match="coding"):
        pack(nc.models.create("lenet300"), tmp_path / "x.ncz", coding="zip")
    assert not (tmp_path / "x.ncz").exists()


def test_cli_pack_inspect_unpack(tmp_path, capsys):
    m = pruned_clustered("lenet300", density=0.05)
    nc.models.save(m, tmp_path / "m.pt")
    assert main(["pack", str(tmp_path / "m.pt"), "--data", "mnist-5k", "--out", str(tmp_path / "m.ncz")]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "ratio" in out
    assert main(["inspect", str(tmp_path / "m.ncz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ratio"] > 20 and info["entropy_bytes"] > 0
    assert main(["unpack", str(tmp_path / "m.ncz"), "--out", str(tmp_path / "back.pt")]) == 0
    assert same_outputs(m, nc.models.load(tmp_path / "back.pt"), torch.randn(2, 1, 28, 28))
    (tmp_path / "junk.ncz").write_bytes(b"hello")
    assert main(["inspect", str(tmp_path / "junk.ncz")]) == 2
    assert "netcompress: error:" in capsys.readouterr().err


@pytest.mark.parametrize("bits,symmetric", [(4, True), (2, False), (8, True)])
def test_per_channel_uniform_weights_take_about_b_bits(tmp_path, bits, symmetric):
    from netcompress.quantize import quantize_

    m = nc.models.create("lenet300", num_classes=10)
    quantize_(m, bits, symmetric=symmetric, per_channel=True, observer="minmax")
    pack(m, tmp_path / "u.ncz")
    fc1 = next(r for r in inspect(tmp_path / "u.ncz")["layers"] if r["name"] == "fc1.weight")
    assert "grid" in fc1["encoding"] and fc1["bits_per_weight"] <= bits + 0.2
    assert same_outputs(m, unpack(tmp_path / "u.ncz"), torch.randn(2, 1, 28, 28))


def test_fp16_codebook_is_stored_in_two_bytes(tmp_path):
    m = nc.models.create("lenet300", num_classes=10)
    cluster_(m, bits=6, codebook_dtype="float16")
    desc, blob = codec.encode_tensor(m.fc2.weight.detach())
    assert desc["val"] == "codebook" and desc["cb"] == "f16"
    pack(m, tmp_path / "c.ncz")
    assert same_outputs(m, unpack(tmp_path / "c.ncz"), torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("method,bits,group", [("rtn", 4, 64), ("gptq", 4, 32), ("gptq", 3, 128), ("rtn", 8, 256)])
def test_weight_only_groups_are_stored_as_per_group_integer_grids(method, bits, group):
    """A row of several weight-only groups (RTN, or GPTQ whose updates leave the grid's extreme codes
    unused) is found as one integer grid per group: about `bits` bits per weight plus a 32-bit scale
    per group, bit-exact."""
    from netcompress.quantize.weight_only import gptq, rtn

    g = torch.Generator().manual_seed(bits)
    w, x = torch.randn(32, 512, generator=g), torch.randn(256, 512, generator=g)
    q = rtn(w, bits, group) if method == "rtn" else gptq(w, 2 * x.t() @ x / 256, bits, group)
    desc, blob = codec.encode_tensor(q)
    assert desc["val"] == "grid" and desc["rows"] == 32 * 512 // group
    assert 8 * len(blob) / q.numel() <= bits + 32 / group + 0.05
    assert torch.equal(codec.decode_tensor(desc, blob, "float32", [32, 512], "t"), q)


@pytest.mark.parametrize("bits,group", [(4, 128), (3, 64), (2, 64), (8, 32)])
def test_hqq_groups_are_stored_as_affine_grids(bits, group):
    """HQQ's values (q - z) s, with a float (fp16) zero point z per group, are found as an affine grid
    per group: the integer codes plus an fp16 scale and zero point, bit-exact."""
    from netcompress.quantize.weight_only import hqq

    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(bits))
    q = hqq(w, bits, group)
    desc, blob = codec.encode_tensor(q)
    assert desc["val"] == "agrid" and desc["rows"] == 32 * 512 // group
    assert 8 * len(blob) / q.numel() <= bits + 32 / group + 0.05
    assert torch.equal(codec.decode_tensor(desc, blob, "float32", [32, 512], "t"), q)
    sections = desc["sections"]
    with pytest.raises(NetcompressError, match="bad affine-grid header"):  # a scale section that lies
        codec.decode_tensor({**desc, "sections": [sections[0] - 2, sections[1] + 2, sections[2]]}, blob, "float32",
                            [32, 512], "t")
    with pytest.raises(NetcompressError, match="bad affine-grid header"):
        codec.decode_tensor({**desc, "rows": 7}, blob, "float32", [32, 512], "t")


def test_weight_only_quantized_transformer_archive_is_about_b_bits(tmp_path):
    """A GPTQ int4 (group 64) gpt's block Linears pack at about 4.5 bits per weight."""
    torch.manual_seed(0)
    m = nc.models.create("gpt-tiny", num_classes=256, dim=64, depth=2, n_heads=2).eval()
    ids = torch.randint(0, 256, (8, 32))
    nc.quantize.gptq_(m, ids, bits=4, group_size=64)
    pack(m, tmp_path / "q.ncz")
    rows = [r for r in inspect(tmp_path / "q.ncz")["layers"] if ".blocks." in f".{r['name']}" and r["name"].endswith("proj.weight")]
    assert len(rows) == 14 and all("grid" in r["encoding"] and r["bits_per_weight"] <= 4.6 for r in rows)
    back = unpack(tmp_path / "q.ncz").eval()
    assert torch.equal(back(ids), m(ids))
    h = nc.models.create("gpt-tiny", num_classes=256, dim=64, depth=2, n_heads=2).eval()
    nc.quantize.hqq_(h, bits=4, group_size=64)  # float zero points: affine grids
    pack(h, tmp_path / "h.ncz")
    rows = [r for r in inspect(tmp_path / "h.ncz")["layers"] if ".blocks." in f".{r['name']}" and r["name"].endswith("proj.weight")]
    assert len(rows) == 14 and all("agrid" in r["encoding"] and r["bits_per_weight"] <= 4.6 for r in rows)
    assert torch.equal(unpack(tmp_path / "h.ncz").eval()(ids), h(ids))
