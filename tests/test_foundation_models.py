import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.models import create, load, save


@pytest.mark.parametrize("name", nc.models.list_models())
def test_every_zoo_model_runs_and_round_trips(name, tmp_path):
    m = create(name, num_classes=10, in_channels=1, input_size=28).eval()
    first = next(mod for mod in m.modules() if not list(mod.children()))
    if isinstance(first, nn.Embedding):  # a language model: tokens in, (batch, seq, vocab) logits out
        x = torch.randint(0, first.num_embeddings, (2, 16))
        expected = (2, 16, first.num_embeddings)
    else:
        x, expected = torch.randn(2, 1, 28, 28), (2, 10)
    y = m(x)
    assert y.shape == expected if isinstance(y, torch.Tensor) else y[-1].shape == expected
    m2 = load(save(m, tmp_path / "m.pt"))
    y2 = m2(x)
    assert torch.equal(y if isinstance(y, torch.Tensor) else y[-1], y2 if isinstance(y2, torch.Tensor) else y2[-1])


def test_lenet_sizes_match_the_papers():
    assert sum(p.numel() for p in create("lenet300").parameters()) == 266_610
    assert sum(p.numel() for p in create("lenet5").parameters()) == 431_080


def test_structurally_changed_model_reloads_identically(tmp_path):
    m = create("resnet20", in_channels=1, input_size=28).eval()
    # a pruned conv (fewer channels) with its BN and consumer, a factorised linear, an extra buffer
    blk = m.layer1[0]
    blk.conv1 = nn.Conv2d(16, 9, 3, 1, 1, bias=False)
    blk.bn1 = nn.BatchNorm2d(9)
    blk.conv2 = nn.Conv2d(9, 16, 3, 1, 1, bias=False)
    m.fc = nn.Sequential(nn.Linear(64, 4, bias=False), nn.Linear(4, 10))
    m.fc[1].register_buffer("mask", torch.ones(10, 4))
    m.eval()
    m2 = load(save(m, tmp_path / "m.pt"))
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert isinstance(m2.fc, nn.Sequential) and m2.layer1[0].conv1.out_channels == 9
    assert type(m2.layer1[0]).__name__ == "BasicBlock"  # original classes, no pickled code


def test_torchvision_and_python_factories(tmp_path):
    m = create("torchvision:resnet18", num_classes=7)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    p = create("python:torch.nn:Identity")
    assert isinstance(p, nn.Identity)
    with pytest.raises(nc.NetcompressError, match="cannot import factory"):
        create("python:no.such.module:fn")
    save(m, tmp_path / "tv.pt")
    assert load(tmp_path / "tv.pt")(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_python_factory_file_needs_trust(tmp_path):
    m = create("python:torch.nn:Identity")
    save(m, tmp_path / "p.pt")
    with pytest.raises(nc.NetcompressError, match="trust_python"):
        load(tmp_path / "p.pt")
    assert isinstance(load(tmp_path / "p.pt", trust_python=True), nn.Identity)


def test_bad_model_files(tmp_path):
    with pytest.raises(nc.NetcompressError, match="does not exist"):
        load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(nc.NetcompressError, match="not a readable netcompress model file"):
        load(tmp_path / "junk.pt")
    torch.save({"state": {}}, tmp_path / "other.pt")
    with pytest.raises(nc.NetcompressError, match="not a netcompress model file"):
        load(tmp_path / "other.pt")
    with pytest.raises(nc.NetcompressError, match="unknown model 'lenet7'; valid:"):
        create("lenet7")


def test_unbuilt_model_cannot_be_saved_and_no_file_is_left(tmp_path):
    with pytest.raises(nc.NetcompressError, match="not built by netcompress"):
        save(nn.Linear(2, 2), tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_create_for_shapes_a_model_for_the_data_and_loads_files(digits, tmp_path):
    from netcompress.models import create_for

    m = create_for("lenet300", digits)
    assert m.fc1.in_features == 64 and m.fc3.out_features == digits.num_classes
    assert create_for("lenet300", digits, num_classes=3).fc3.out_features == 3  # explicit kwargs win
    save(m, tmp_path / "m.pt")
    again = create_for(str(tmp_path / "m.pt"), digits)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
