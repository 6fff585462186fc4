import pytest
import torch
from torch import nn

from netcompress.core import Config, NetcompressError, Registry, Taps
from netcompress.core.taps import resolve_module


def test_registry_get_lists_valid_names():
    r = Registry("widget")
    r.register("a", 1)
    r.register("b", 2)
    assert r.get("a") == 1 and r.list() == ["a", "b"] and "b" in r
    with pytest.raises(NetcompressError, match="unknown widget 'c'; valid: a, b"):
        r.get("c")
    with pytest.raises(KeyError):
        r.register("a", 3)


def test_config_forbids_unknown_keys_and_round_trips():
    class C(Config):
        x: int = 1
        y: str = "a"

    c = C.from_dict({"x": 3})
    assert C.from_dict(c.to_dict()) == c
    with pytest.raises(NetcompressError, match="C: z: unknown key"):
        C.from_dict({"z": 1})
    with pytest.raises(NetcompressError, match="x"):
        C.from_dict({"x": "not an int"})
    with pytest.raises(Exception):
        c.x = 5  # frozen


def test_taps_capture_by_qualified_name_and_detach_hooks():
    m = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    x = torch.randn(5, 4)
    with Taps(m, ["0", "1.1"]) as taps:
        out = m(x)
        assert torch.equal(taps["1.1"], out)
        assert torch.allclose(taps["0"], m[0](x))
    assert not m[0]._forward_hooks and not m[1][1]._forward_hooks


def test_taps_unknown_name_is_clear_and_hooks_nothing():
    m = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(NetcompressError, match="no module named 'features.9'"):
        Taps(m, ["0", "features.9"])
    assert not m[0]._forward_hooks
    with pytest.raises(NetcompressError):
        resolve_module(m, "nope")
