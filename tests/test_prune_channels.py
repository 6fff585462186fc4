"""Structured pruning: the channel graph, physical removal, parity with masks, torchvision coverage."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.core.graph import ChannelGraph
from netcompress.prune import channels, plan
from netcompress.prune.importance import CRITERIA, ScoreContext
from netcompress.prune.structured import select


def _randomize_bn(model):
    """Non-trivial BN statistics so parity checks are meaningful."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _parity(model, x, ratio=0.4, criterion="l1", atol=1e-4):
    model = _randomize_bn(model)
    g = ChannelGraph.build(model, x)
    scores = CRITERIA.get(criterion)(ScoreContext(model, g))
    removed = select(scores, g, ratio)
    assert removed, "nothing removed"
    small, masked = g.prune(removed), g.masked(removed)
    with torch.no_grad():
        ys, ym = small.eval()(x), masked.eval()(x)
    assert ys.shape == ym.shape
    torch.testing.assert_close(ys, ym, atol=atol, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    return small


@pytest.mark.parametrize("name,cin,size", [("lenet5", 1, 28), ("vgg-small", 1, 28), ("resnet20", 3, 32),
                                           ("mobilenet-small", 1, 28), ("lenet300", 1, 28)])
def test_masking_equals_removal_on_the_zoo(name, cin, size):
    model = nc.models.create(name, in_channels=cin, input_size=size)
    _parity(model, torch.randn(3, cin, size, size))


FAST = ["resnet18", "mobilenet_v2", "densenet121", "shufflenet_v2_x0_5", "squeezenet1_1"]


@pytest.mark.parametrize("name", FAST)
def test_masking_equals_removal_on_torchvision(name):
    """The fast CI subset of torchvision: residual sums, depthwise convs, concatenations, ShuffleNet's
    channel shuffle; the pruned model keeps its output shape and equals the masked model."""
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    _parity(model, torch.randn(2, 3, 32, 32), atol=1e-3)


def test_flatten_into_linear_removes_channel_blocks():
    m = nc.models.create("lenet5")
    small = channels(m, "l1", 0.5, example_inputs=torch.randn(2, 1, 28, 28))
    c2 = small.features[3].out_channels
    assert c2 == 25 and small.classifier[0].in_features == c2 * 4 * 4
    assert small.classifier[2].out_features == 10  # the classifier keeps its outputs


def test_residual_branches_share_indices():
    m = nc.models.create("resnet8", in_channels=3, input_size=32)
    g = ChannelGraph.build(m, torch.randn(1, 3, 32, 32))
    stem = next(gr for gr in g.groups if ("conv1", "out") in gr.members)
    assert ("layer1.0.conv2", "out") in stem.members and ("layer2.0.shortcut.0", "in") in stem.members
    assert ("fc", "out") not in {mk for gr in g.groups for mk in gr.members}  # output frozen


def test_ratio_zero_returns_an_equal_model():
    m = _randomize_bn(nc.models.create("resnet8", in_channels=3, input_size=32))
    x = torch.randn(2, 3, 32, 32)
    same = channels(m, "l1", 0.0, example_inputs=x)
    assert same is not m
    for (k, a), (k2, b) in zip(m.state_dict().items(), same.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    torch.testing.assert_close(same.eval()(x), m(x))


def test_input_model_unchanged_and_result_is_plain():
    m = nc.models.create("vgg-small", in_channels=1, input_size=28)
    before = copy.deepcopy(m.state_dict())
    small = channels(m, "fpgm", 0.5, example_inputs=torch.randn(2, 1, 28, 28))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert type(small) is type(m) and not isinstance(small, torch.fx.GraphModule)
    assert all(type(a) is type(b) for a, b in zip(m.modules(), small.modules()))


def test_grouped_conv_keeps_equal_groups():
    m = torchvision.models.get_model("resnext50_32x4d", weights=None, num_classes=10)
    small = channels(m, "l2", 0.5, example_inputs=torch.randn(1, 3, 32, 32))
    conv = small.layer1[0].conv2
    assert conv.groups == 32 and conv.in_channels % 32 == 0 and conv.out_channels % 32 == 0
    assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_global_scope_and_plan_change_nothing():
    m = nc.models.create("resnet20", in_channels=3, input_size=32)
    x = torch.randn(2, 3, 32, 32)
    before = copy.deepcopy(m.state_dict())
    p = plan(m, "l1", 0.5, example_inputs=x, scope="global")
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert p.macs_after < p.macs_before and p.params_after < p.params_before
    assert sum(g["remove"] for g in p.groups) == int(0.5 * sum(g["total"] for g in p.groups))
    assert "groups" in str(p) and "MACs" in str(p)
    assert set(p.per_layer["conv1"]) == {"kept", "total"}


def test_pruned_model_saves_and_loads(tmp_path):
    m = nc.models.create("mobilenet-small")
    x = torch.randn(2, 1, 28, 28)
    small = channels(m, "l1", 0.5, example_inputs=x).eval()
    path = nc.models.save(small, tmp_path / "s.pt")
    back = nc.models.load(path)
    torch.testing.assert_close(back(x), small(x))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.emb = nn.ConvTranspose2d(8, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.emb(self.conv(x))).mean((2, 3))


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def test_unknown_op_names_op_and_module_and_ignore_skips_it():
    m = _Custom()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(NetcompressError, match=r"ConvTranspose2d|emb"):
        channels(m, "l1", 0.5, example_inputs=x)
    small = channels(m, "l1", 0.5, example_inputs=x, ignore=["emb"])
    assert small.conv.out_channels == 8 and small(x).shape == (1, 4)  # coupled to the ignored layer
    p = plan(m, "l1", 0.5, example_inputs=x)  # the dry run lists it and goes on
    assert any("cannot handle" in n and "emb" in n for n in p.notes) and "cannot handle" in str(p)


def test_iterative_channels_reaches_the_ratio_with_finetune_between():
    from netcompress.prune import iterative_channels

    m = nc.models.create("lenet5")
    calls = []
    small = iterative_channels(m, lambda model, methods: calls.append(model.features[0].out_channels), 0.75, 2,
                               example_inputs=torch.randn(2, 1, 28, 28))
    assert calls == [10, 5] and small.features[0].out_channels == 5 and m.features[0].out_channels == 20


def test_macs_target_keeps_the_most_macs_at_or_below_it():
    """`macs=` picks the smallest ratio at or below the target: no ratio on a fine grid keeps more
    MACs without going over. Iteratively, each round keeps the same share of the MACs left."""
    from netcompress.measure import count_macs
    from netcompress.prune import iterative_channels

    m, x = nc.models.create("lenet5"), torch.randn(2, 1, 28, 28)
    dense = count_macs(m, x)
    for target in (0.5, 0.2):
        got = count_macs(channels(m, "l1", macs=target, example_inputs=x), x) / dense
        grid = [count_macs(channels(m, "l1", r / 50, example_inputs=x), x) / dense for r in range(50)]
        assert got == max(f for f in grid if f <= target)
    kept = []
    small = iterative_channels(m, lambda model, methods: kept.append(count_macs(model, x) / dense), steps=2, macs=0.25,
                               example_inputs=x)
    assert kept[0] <= 0.5 and kept[1] <= 0.25 and kept[1] == count_macs(small, x) / dense and kept[1] > 0.2
    with pytest.raises(NetcompressError, match="ratio or macs, not both"):
        channels(m, "l1", 0.5, macs=0.5, example_inputs=x)
    with pytest.raises(NetcompressError, match=r"macs must be a fraction .* got 1\.5"):
        channels(m, "l1", macs=1.5, example_inputs=x)
    with pytest.raises(NetcompressError, match="still keeps 0.0"):
        channels(m, "l1", macs=0.001, example_inputs=x)
    assert m.features[0].out_channels == 20


def test_bad_inputs():
    m = nc.models.create("lenet5")
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(NetcompressError, match="example_inputs"):
        channels(m, "l1", 0.5, example_inputs=[1, 2])
    with pytest.raises(NetcompressError, match="valid: .*fpgm"):
        channels(m, "nope", 0.5, example_inputs=x)
    with pytest.raises(NetcompressError, match="ratio"):
        channels(m, "l1", 1.0, example_inputs=x)
    with pytest.raises(NetcompressError, match="no module named 'nope'"):
        channels(m, "l1", 0.5, example_inputs=x, ignore=["nope"])
    with pytest.raises(NetcompressError, match="calibration data"):
        channels(m, "apoz", 0.5, example_inputs=x)
    with pytest.raises(NetcompressError, match="scope"):
        channels(m, "l1", 0.5, example_inputs=x, scope="model")


CNNS = [n for n in torchvision.models.list_models(module=torchvision.models)
        if not n.startswith(("vit_", "swin", "maxvit"))]


def _prune_tv(name):
    size = 299 if name == "inception_v3" else 64
    m = nc.models.create(f"torchvision:{name}", num_classes=10).eval()  # the loader users get (no init warning)
    x = torch.randn(1, 3, size, size)
    small = channels(m, "l1", 0.5, example_inputs=x)
    with torch.no_grad():
        y = small.eval()(x)
    assert y.shape == (1, 10)
    assert sum(p.numel() for p in small.parameters()) < 0.7 * sum(p.numel() for p in m.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CNNS if n not in FAST])
def test_torchvision_all_cnns(name):
    _prune_tv(name)


def test_groupnorm_channels_stay_and_the_rest_prunes():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                      nn.Conv2d(6, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(1, 3, 12, 12)
    small = channels(m, "l1", 0.5, example_inputs=x)
    assert small[0].out_channels == 8 and small[3].out_channels == 3 and small(x).shape == (1, 4)
