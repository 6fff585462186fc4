"""The data-driven criteria `apoz` and `taylor` on batches of every form (a tensor, a tuple of tensors,
a dict of named tensors), on models returning output objects (Hugging Face `.logits`) or several exits,
and on language models (logits (N, T, V), targets (N, T), per-token loss): golden values against
brute-force computations on tiny hand-built models, end to end on a Hugging Face BERT classifier and a
LLaMA causal LM."""
import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.batch import call, logits_of
from netcompress.core.graph import ChannelGraph
from netcompress.models.sources import TINY_CONFIGS
from netcompress.prune import channels
from netcompress.prune.importance import CRITERIA, ScoreContext
from netcompress.prune.structured import _macs

V, T = 7, 6  # vocabulary and sequence length of the token models (T != hidden width 5: a wrong channel dim fails)


class MLP(nn.Module):
    """dropout -> linear(4 -> 5) -> relu -> linear(5 -> 3): one prunable group of 5 hidden neurons. With
    `exits`, an auxiliary head on the hidden layer too, returning [aux, final] (an early-exit model).
    The input dropout makes every score depend on the mode: the criteria must run in eval mode."""

    def __init__(self, exits: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)
        self.aux = nn.Linear(5, 3) if exits else None

    def forward(self, x):
        h = torch.relu(self.fc1(self.drop(x)))
        out = self.fc2(h)
        return [self.aux(h), out] if self.aux is not None else out


class TinyRMSNorm(nn.Module):
    """An RMSNorm that is not `nn.RMSNorm` (like Hugging Face's LlamaRMSNorm): channels last."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TokenLM(nn.Module):
    """input_ids (N, T) -> embedding(V, 4) -> dropout -> linear(4 -> 5) [-> TinyRMSNorm(5)] -> relu ->
    linear(5 -> V): logits (N, T, V); the 5 hidden neurons are one group."""

    def __init__(self, norm: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(V, 4)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4, 5)
        self.norm = TinyRMSNorm(5) if norm else nn.Identity()
        self.fc2 = nn.Linear(5, V)

    def forward(self, input_ids):
        return self.fc2(torch.relu(self.norm(self.fc1(self.drop(self.emb(input_ids))))))


def _form(x, form, key="input_ids"):
    return {"tensor": x, "tuple": (x,), "dict": {key: x}}[form]


def _hidden_scores(m, criterion, batches):
    """The criterion's scores of the 5 hidden neurons (the group `fc2` reads)."""
    x0 = batches[0][0]
    g = ChannelGraph.build(m, x0)
    gi = [i for i, gr in enumerate(g.groups) if ("fc2", "in") in gr.members]
    assert len(gi) == 1 and len(g.groups[gi[0]].classes) == 5
    assert torch.equal(g.class_index(next(mm for mm in g.members if (mm.module, mm.kind) == ("fc1", "out")),
                                     g.groups[gi[0]].classes), torch.arange(5))
    return CRITERIA.get(criterion)(ScoreContext(m, g, batches))[gi[0]]


def _brute_taylor(m, batches, loss):
    """The mean over batches of (dL/ds)^2 for a gate s = 1 on each hidden neuron where fc2 reads it
    (the first-order change of the loss when the neuron is removed), the model in eval mode."""
    m = copy.deepcopy(m).eval()
    total = torch.zeros(5)
    for x, y in batches:
        s = torch.ones(5, requires_grad=True)
        h = m.fc2.register_forward_pre_hook(lambda _m, a: (a[0] * s,))
        loss(m(x), y).backward()
        h.remove()
        total += s.grad.pow(2)
    return total / len(batches)


def _mlp_batches():
    torch.manual_seed(2)
    return [(torch.randn(3, 4), torch.tensor([0, 2, 1])), (torch.randn(5, 4), torch.tensor([1, 1, 0, 2, 2]))]


def _lm_batches():
    torch.manual_seed(3)
    out = []
    for n in (2, 3):  # inputs the first T tokens, targets the same shifted by one
        ids = torch.randint(0, V, (n, T + 1))
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])  # dict: traced eagerly, which also lists fc1.bias
@pytest.mark.parametrize("exits", [False, True])
def test_taylor_golden_on_an_mlp_any_batch_form(form, exits):
    m = MLP(exits).train()
    before = copy.deepcopy(m.state_dict())
    batches = _mlp_batches()
    s = _hidden_scores(m, "taylor", [(_form(x, form, "x"), y) for x, y in batches])
    # the final prediction (the last exit) and the cross-entropy of the classes
    expect = _brute_taylor(m, batches, lambda out, y: nn.functional.cross_entropy(out[-1] if exits else out, y))
    torch.testing.assert_close(s, expect, rtol=1e-5, atol=1e-7)
    assert bool((s > 0).all()) and len(set(s.tolist())) == 5
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())  # gradients on a copy


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_taylor_golden_on_a_token_model_uses_the_per_token_loss(form):
    m = TokenLM().train()
    batches = _lm_batches()
    s = _hidden_scores(m, "taylor", [(_form(x, form), y) for x, y in batches])
    # cross-entropy per token: the mean over every (sample, position) of the batch
    expect = _brute_taylor(m, batches, lambda out, y: nn.functional.cross_entropy(out.reshape(-1, V), y.reshape(-1)))
    torch.testing.assert_close(s, expect, rtol=1e-5, atol=1e-7)
    assert bool((s > 0).all()) and m.training


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_apoz_golden_on_an_mlp_any_batch_form(form):
    m = MLP().train()
    batches = _mlp_batches()
    s = _hidden_scores(m, "apoz", [(_form(x, form, "x"), y) for x, y in batches])
    h = torch.cat([m.fc1(x) for x, _ in batches]).detach()  # eval mode: no input dropout
    expect = (h > 0).float().mean(0)  # per neuron, over all 8 samples (batches of unequal size)
    torch.testing.assert_close(s, expect)
    assert 0 < float(s.min()) < float(s.max()) < 1  # not a constant: the count is per neuron
    assert m.training  # the mode restored


def test_apoz_golden_on_a_token_model_with_an_rmsnorm_look_alike_dict_batches():
    """The norm layer is measured (a channel's norm before its producer), channels last per token."""
    m = TokenLM(norm=True).train()
    batches = _lm_batches()
    with torch.no_grad():
        m.fc1.bias.copy_(torch.tensor([0.8, -0.8, 0.2, -0.1, 0.0]))
    s = _hidden_scores(m, "apoz", [({"input_ids": x}, y) for x, y in batches])
    with torch.no_grad():
        h = torch.cat([m.norm(m.fc1(m.emb(x))).reshape(-1, 5) for x, _ in batches])  # 12 + 18 tokens
    torch.testing.assert_close(s, (h > 0).float().mean(0))
    assert len(set(s.tolist())) > 2 and m.training


def _out(m, x):
    with torch.no_grad():
        y = call(m, x)
    return logits_of(y)


def _check_end_to_end(m, criterion, x, batches):
    before, structure, mode = {k: v.clone() for k, v in m.state_dict().items()}, str(m), m.training
    y = _out(m.eval(), x)
    m.train(mode)
    small = channels(m, criterion, 0.3, example_inputs=x, data=batches).eval()
    assert _out(small, x).shape == y.shape
    assert _macs(small, x) < _macs(m, x)
    assert m.training == mode and str(m) == structure
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    return small


@pytest.mark.parametrize("criterion", ["apoz", "taylor"])
def test_hugging_face_bert_classifier_dict_batches(criterion):
    torch.manual_seed(0)
    m = nc.models.create("hf:bert", **TINY_CONFIGS["bert"]).train()
    ids = torch.randint(2, 128, (6, 12))
    x = {"input_ids": ids[:4], "attention_mask": torch.ones_like(ids[:4])}
    batches = [(x, torch.tensor([0, 1, 1, 0])),
               ({"input_ids": ids[4:], "attention_mask": torch.ones_like(ids[4:])}, torch.tensor([1, 0]))]
    small = _check_end_to_end(m, criterion, x, batches)
    assert small.bert.encoder.layer[0].intermediate.dense.out_features < 64


@pytest.mark.parametrize("criterion", ["apoz", "taylor"])
def test_hugging_face_llama_causal_lm_with_lm_targets(criterion):
    torch.manual_seed(0)
    m = nc.models.create("hf:llama", **TINY_CONFIGS["llama"]).eval()
    ids = torch.randint(2, 128, (5, 13))
    batches = [({"input_ids": ids[:3, :-1], "attention_mask": torch.ones(3, 12, dtype=torch.long)}, ids[:3, 1:]),
               ({"input_ids": ids[3:, :-1], "attention_mask": torch.ones(2, 12, dtype=torch.long)}, ids[3:, 1:])]
    x = batches[0][0]
    small = _check_end_to_end(m, criterion, x, batches)
    assert _out(small, x).shape == (3, 12, 128)
    assert small.model.layers[0].mlp.gate_proj.out_features < 64
