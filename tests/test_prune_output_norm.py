"""The `output_norm` criterion: a channel's importance is the mean norm of what it adds to the outputs
of the layers that read it (an attention head: its output after the output projection, Kobayashi et
al. 2020). Golden values against brute-force computations, heads of a ViT, end to end on a ViT and a
Hugging Face model."""
import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.core.graph import ChannelGraph
from netcompress.models.sources import TINY_CONFIGS
from netcompress.prune import channels, importance
from netcompress.prune.importance import CRITERIA, NEEDS_DATA, ScoreContext
from netcompress.prune.structured import _macs


def _group_of(g, module, kind="in"):
    """The index of the (only) group with the member (module, kind)."""
    hits = [i for i, gr in enumerate(g.groups) if (module, kind) in gr.members]
    assert len(hits) == 1, hits
    return hits[0]


def _member(g, module, kind="in"):
    return next(m for m in g.members if (m.module, m.kind) == (module, kind))


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_registered_and_needs_data():
    assert "output_norm" in CRITERIA and "output_norm" in NEEDS_DATA
    assert CRITERIA.describe("output_norm")  # the one-line help `netcompress list` prints


@pytest.mark.parametrize("chunk", [None, 5])  # 5: one token per chunk
def test_mlp_neurons_golden_over_batches_of_unequal_size(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(importance, "_CHUNK", chunk)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(24, dtype=torch.float).view(6, 4).sin())
        m[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, 0.0]))
        m[2].weight.copy_(torch.arange(18, dtype=torch.float).view(3, 6).cos() * torch.tensor([1, 2, 3, 0.5, 0.1, 4.0]))
    xa, xb = torch.randn(5, 4), torch.randn(3, 4)  # unequal batches: the mean is over samples, not batches
    batches = [(xa, torch.zeros(5, dtype=torch.long)), (xb, torch.zeros(3, dtype=torch.long))]
    g = ChannelGraph.build(m, xa)
    assert len(g.groups) == 1 and len(g.groups[0].classes) == 6
    assert torch.equal(g.class_index(_member(g, "2"), g.groups[0].classes), torch.arange(6))
    s = CRITERIA.get("output_norm")(ScoreContext(m, g, batches))[0]
    # brute force: the contribution vector h_j * W2[:, j] of every neuron, its norm, the mean over the 8 samples
    h = torch.relu(torch.cat([xa, xb]) @ m[0].weight.T + m[0].bias)
    expect = torch.stack([(h[:, j:j + 1] * m[2].weight[:, j]).norm(dim=1).mean() for j in range(6)]).detach()
    torch.testing.assert_close(s, expect, rtol=1e-5, atol=1e-7)
    # data-driven: not the ranking of the producing filters
    l1 = CRITERIA.get("l1")(ScoreContext(m, g))[0]
    assert not torch.equal(torch.argsort(s), torch.argsort(l1))


class _ConvNet(nn.Module):
    """conv(2 -> 4) -> relu -> conv(4 -> 3, 3x3, stride 2, reflect padding): one group of 4 channels
    consumed by a convolution."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 3, stride=2, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean((2, 3))


@pytest.mark.parametrize("chunk", [None, 5])  # 5: every sample and every class in its own chunk
def test_conv_consumer_is_the_exact_per_channel_contribution(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(importance, "_CHUNK", chunk)
    m = _ConvNet().eval()
    x = torch.randn(3, 2, 7, 7)
    g = ChannelGraph.build(m, x)
    s = CRITERIA.get("output_norm")(ScoreContext(m, g, [(x, torch.zeros(3))]))[_group_of(g, "b")]
    h = torch.relu(m.a(x)).detach()
    expect = []
    for c in range(4):  # the consumer with only input channel c and no bias: what channel c adds
        only = copy.deepcopy(m.b)
        with torch.no_grad():
            only.weight[:, [i for i in range(4) if i != c]] = 0
            only.bias.zero_()
            expect.append(only(h).norm(dim=1).mean())  # norm over output channels, mean over samples x positions
    torch.testing.assert_close(s, torch.stack(expect), rtol=1e-4, atol=1e-6)


def _vit():
    torch.manual_seed(0)
    return nc.models.create("vit-tiny", num_classes=10, in_channels=1, input_size=28, depth=2).eval()


@pytest.mark.parametrize("chunk", [None, 1000])  # 1000: tokens in many chunks
def test_vit_heads_are_the_norm_of_each_heads_projected_output(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(importance, "_CHUNK", chunk)
    m = _vit()
    proj = m.blocks[0].attn.proj
    hd = m.blocks[0].attn.head_dim
    x = torch.randn(6, 1, 28, 28)
    batches = [(x[:4], torch.zeros(4, dtype=torch.long)), (x[4:], torch.zeros(2, dtype=torch.long))]
    g = ChannelGraph.build(m, x[:1])
    gi = _group_of(g, "blocks.0.attn.proj")
    heads = g.class_index(_member(g, "blocks.0.attn.proj"), g.groups[gi].classes)
    assert torch.equal(heads, torch.arange(4).repeat_interleave(hd))  # class i is head i
    l1 = CRITERIA.get("l1")(ScoreContext(m, g))[gi]  # the q/k/v filters: blind to the output projection
    weak = int(l1.argmax())
    with torch.no_grad():
        proj.weight[:, weak * hd:(weak + 1) * hd] *= 1e-3
    s = CRITERIA.get("output_norm")(ScoreContext(m, g, batches))[gi]
    assert int(s.argmin()) == weak and int(CRITERIA.get("l1")(ScoreContext(m, g))[gi].argmin()) != weak
    seen = []
    handle = proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        for xb, _ in batches:
            m(xb)
    handle.remove()
    tokens = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen])  # every token of every sample
    expect = torch.stack([(tokens[:, h * hd:(h + 1) * hd] @ proj.weight[:, h * hd:(h + 1) * hd].T).norm(dim=1).mean()
                          for h in range(4)])
    torch.testing.assert_close(s, expect.detach(), rtol=1e-4, atol=0)


def _check_end_to_end(model, x, batches):
    before, structure = _state(model), str(model)
    y = _out(model, x)
    small = channels(model, "output_norm", 0.5, example_inputs=x, data=batches).eval()
    assert _out(small, x).shape == y.shape
    assert _macs(small, x) < _macs(model, x)
    assert str(model) == structure and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(NetcompressError, match="needs calibration data") as err:
        channels(model, "output_norm", 0.5, example_inputs=x)
    assert "\n" not in str(err.value)
    return small


def _out(m, x):
    with torch.no_grad():
        y = m(**x) if isinstance(x, dict) else m(x)
    return y if isinstance(y, torch.Tensor) else y.logits


def _weakened_head_is_removed(model, proj_name, hd, x, batches):
    """Attenuate head 1's columns of the output projection `proj_name`: pruning half of the heads (the
    width kept, so the projection's rows stay) removes it and keeps other heads' columns unchanged."""
    w = model.get_submodule(proj_name).weight
    with torch.no_grad():
        w[:, hd:2 * hd] *= 1e-3
    small = channels(model, "output_norm", 0.5, example_inputs=x, data=batches, width=False)
    kept = small.get_submodule(proj_name).weight
    assert kept.shape[1] == w.shape[1] // 2
    cols = [w[:, h * hd:(h + 1) * hd] for h in range(w.shape[1] // hd)]
    kept_heads = [h for h, c in enumerate(cols) if any(torch.equal(c, kept[:, i * hd:(i + 1) * hd])
                                                       for i in range(kept.shape[1] // hd))]
    assert len(kept_heads) == kept.shape[1] // hd and 1 not in kept_heads


def test_channels_end_to_end_on_the_zoo_vit():
    m = _vit().train()
    x = torch.randn(4, 1, 28, 28)
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    small = _check_end_to_end(m, x, batches)
    assert m.training  # the criterion restored the mode
    assert small.blocks[0].attn.proj.in_features == 32 and small.blocks[0].mlp.fc1.out_features == 64
    _weakened_head_is_removed(m, "blocks.0.attn.proj", 16, x, batches)


def test_channels_end_to_end_on_hugging_face_bert_with_dict_batches():
    torch.manual_seed(0)
    m = nc.models.create("hf:bert", **TINY_CONFIGS["bert"]).eval()
    ids = torch.randint(2, 128, (4, 12))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    small = _check_end_to_end(m, x, batches)
    assert small.config.num_attention_heads == 2
    _weakened_head_is_removed(m, "bert.encoder.layer.0.attention.output.dense", 8, x, batches)


def test_gpt2_conv1d_heads_golden_and_end_to_end():
    """Hugging Face GPT-2's Conv1D stores its weight [in, out]: the head's projected output is
    x[..., P_h] @ W[P_h, :]."""
    torch.manual_seed(0)
    m = nc.models.create("hf:gpt2", **TINY_CONFIGS["gpt2"]).eval()
    ids = torch.randint(2, 128, (3, 10))
    x = {"input_ids": ids}
    batches = [(x, torch.zeros(3, dtype=torch.long))]
    g = ChannelGraph.build(m, x)
    name, hd = "transformer.h.0.attn.c_proj", 8
    gi = _group_of(g, name)
    assert torch.equal(g.class_index(_member(g, name), g.groups[gi].classes), torch.arange(4).repeat_interleave(hd))
    s = CRITERIA.get("output_norm")(ScoreContext(m, g, batches))[gi]
    proj = m.get_submodule(name)
    seen = []
    handle = proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        m(**x)
    handle.remove()
    t = seen[0].reshape(-1, 32)
    expect = torch.stack([(t[:, h * hd:(h + 1) * hd] @ proj.weight[h * hd:(h + 1) * hd]).norm(dim=1).mean()
                          for h in range(4)])
    torch.testing.assert_close(s, expect.detach(), rtol=1e-4, atol=0)
    _check_end_to_end(m, x, batches)


def test_llama_gqa_runs_end_to_end():
    torch.manual_seed(0)
    m = nc.models.create("hf:llama", **TINY_CONFIGS["llama"]).eval()
    ids = torch.randint(2, 128, (2, 12))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    small = _check_end_to_end(m, x, [(x, torch.zeros(2, dtype=torch.long))])
    assert small.config.num_key_value_heads == 1 and small.config.num_attention_heads == 2


class _ParamConsumer(nn.Module):
    """A group read only by a parameter used as a weight (F.linear): no supported consumer."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.w = nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return nn.functional.linear(torch.relu(self.lin(x)), self.w)


def test_group_without_a_supported_consumer_falls_back_to_l1():
    m = _ParamConsumer().eval()
    x = torch.randn(5, 3)
    g = ChannelGraph.build(m, x)
    assert g.groups[0].members == [("lin", "out"), ("w", "param_in")]
    s = CRITERIA.get("output_norm")(ScoreContext(m, g, [(x, torch.zeros(5))]))[0]
    torch.testing.assert_close(s, CRITERIA.get("l1")(ScoreContext(m, g))[0])
    assert bool((s > 0).all())


def test_classes_of_unequal_size_and_positions_of_other_groups():
    """Position classes [0, 0, 1, other, 1, 1] of a linear consumer: padded to one batched product,
    the result is each class's own contribution; the other group's position adds nothing."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    idx = torch.tensor([0, 0, 1, -1, 1, 1])
    c = importance._Consumer(lin, importance._consumer_weight(lin), idx)
    x = torch.randn(2, 7, 6)
    c.add_linear(x)
    t = x.reshape(-1, 6)
    expect = torch.stack([(t[:, p] @ lin.weight[:, p].T).norm(dim=1).sum() for p in ([0, 1], [2, 4, 5])])
    assert torch.equal(c.classes, torch.tensor([0, 1]))
    torch.testing.assert_close(c.sums, expect.detach(), rtol=1e-5, atol=1e-6)
