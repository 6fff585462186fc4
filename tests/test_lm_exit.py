"""Key/value-cached decoding of GPT and per-token early-exit decoding (netcompress.dynamic.lm_exit)."""
from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.dynamic import EarlyExitLM, exit_losses, lm_early_exit, lm_exit_eval, token_costs
from netcompress.dynamic.base import confidence
from netcompress.models.transformers import GPT


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return nc.models.create("gpt-tiny", 256, **{"dim": 32, "depth": 4, "n_heads": 4, "n_kv_heads": 2,
                                           "input_size": 48, **kw}).eval()


def _uncached(m: GPT, ids: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@torch.no_grad()
def test_cached_decoding_equals_the_full_forward(one_thread):
    m = _gpt()
    x = torch.randint(0, 256, (2, 12))
    full = m(x)
    caches: list = [[] for _ in m.blocks]
    parts = [m.decode_step(x[:, :5], caches), m.decode_step(x[:, 5:6], caches), m.decode_step(x[:, 6:], caches)]
    for got, pos in zip(parts, (4, 5, 11)):
        torch.testing.assert_close(got, full[:, pos], rtol=1e-5, atol=1e-5)
    assert caches[0][0].shape[2] == 12  # every position's keys cached once
    assert torch.equal(m.generate(x, 30), _uncached(m, x, 30))  # 42 tokens < input_size 48
    long = m.generate(x[:1], 60)  # past the context length the cache restarts from the last half
    assert long.shape == (1, 72) and torch.equal(long[:, :12], x[:1])


def _mixed_threshold(ee: EarlyExitLM, ids: torch.Tensor) -> float:
    """A threshold at which some positions leave at the first exit and some run to the end: halfway
    between the two confidences around the median, so that no position sits on it (the median itself
    is one position's confidence, whose exit then depends on how the cached and the whole-sequence
    kernels round)."""
    with torch.no_grad():
        z = ee.all_exits(ids)[0]
    c = confidence(z.reshape(-1, z.shape[-1])).sort().values
    k = len(c) // 2
    return ((c[k - 1] + c[k]) / 2).item()


@torch.no_grad()
def test_early_exit_decoding_equals_its_teacher_forced_forward(one_thread):
    assert lm_early_exit(_gpt()).exits == (1,)  # default: halfway
    ee = lm_early_exit(_gpt(), [0, 1, 2]).eval()
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    ee.set_policy_("max_softmax", 2.0)  # nobody leaves: the model itself
    torch.testing.assert_close(ee(x), ee.lm(x))
    ee.set_policy_("max_softmax", _mixed_threshold(ee, x))
    taken: list = []
    out = ee.generate(x[:, :10], 30, exits_taken=taken)
    logits, exit_at = ee.run(out[:, :-1])
    # decoding (cache, skipped blocks filled with keys and values only) == the whole sequence at once
    assert torch.equal(logits.argmax(-1)[0, 9:], out[0, 10:])
    assert torch.equal(exit_at[0, 9:], torch.cat(taken))
    assert len(set(exit_at[0].tolist())) >= 2  # positions left at different exits
    caches: list = [[] for _ in ee.lm.blocks]
    steps = [ee.decode_step(x[:, :20], caches)] + [ee.decode_step(x[:, i:i + 1], caches) for i in range(20, 40)]
    torch.testing.assert_close(torch.cat(steps), ee.run(x)[0][0, 19:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_token_that_leaves_skips_the_rest_of_the_blocks(one_thread):
    ee = lm_early_exit(_gpt(), ["blocks.1"]).eval().set_policy_("max_softmax", 0.0)  # everyone leaves at blocks.1
    calls = {i: 0 for i in range(4)}
    hooks = [b.mlp.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, b in enumerate(ee.lm.blocks)]
    taken: list = []
    ee.generate(torch.randint(0, 256, (1, 8)), 5, exits_taken=taken)
    for h in hooks:
        h.remove()
    assert calls == {0: 5, 1: 5, 2: 0, 3: 0} and torch.cat(taken).tolist() == [0] * 5  # prefill + 4 steps
    ee.set_policy_("max_softmax", 2.0)
    caches: list = [[] for _ in ee.lm.blocks]
    ee.decode_step(torch.randint(0, 256, (1, 3)), caches)
    assert [c[0].shape[2] for c in caches] == [3, 3, 3, 3]


def test_token_costs_count_blocks_heads_and_skipped_keys_values():
    m = _gpt(dim=16, depth=3, n_heads=2, n_kv_heads=2, hidden=32)
    ee = lm_early_exit(m, ["blocks.0"])
    c = 10
    cum, full = token_costs(ee, context=c)
    proj, mlp, attn = 4 * 16 * 16, 3 * 16 * 32, 2 * 2 * 8 * (c + 1)  # q k v o; gate up down; q.K and p.V
    block, kv, head = proj + mlp + attn, 2 * 16 * 16, 16 * 256
    assert full == 3 * block + head
    assert cum == [block + head + 2 * kv, 3 * block + 2 * head]


def test_exit_losses_of_sequences_are_per_token():
    z = [torch.randn(2, 5, 7), torch.randn(2, 5, 7)]
    y = torch.randint(0, 7, (2, 5))
    got = exit_losses(z, y, [0.5])["exit0"]
    torch.testing.assert_close(got, 0.5 * torch.nn.functional.cross_entropy(z[0].reshape(10, 7), y.reshape(10)))


def test_bad_exits_are_one_clear_error():
    m = _gpt()
    with pytest.raises(NetcompressError, match=r"blocks\.0 \.\. blocks\.2"):
        lm_early_exit(m, ["blocks.3"])
    with pytest.raises(NetcompressError, match="not a decoder"):
        lm_early_exit(torch.nn.Sequential(torch.nn.Embedding(4, 4)))
    with pytest.raises(NetcompressError, match="no threshold"):
        lm_early_exit(m).eval().run(torch.zeros(1, 3, dtype=torch.long))
    ee = lm_early_exit(m).eval()
    ee.threshold = "0.5"  # as a tampered model file could set it
    with pytest.raises(NetcompressError, match="must be a number"):
        ee(torch.zeros(1, 3, dtype=torch.long))


@pytest.fixture(scope="module")
def tiny_text():
    return nc.data.load("pydoc-text-tiny")


def test_dynamic_stage_on_a_language_model(tiny_text, tmp_path, one_thread):
    model = nc.models.create_for("gpt-tiny", tiny_text, dim=32, depth=3, n_heads=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nc.apply("dynamic", model, tiny_text, max_steps=3, holdout=8, budget=0.8, latency_samples=64)
    ee, ex = res.model, res.extra
    assert isinstance(ee, EarlyExitLM) and ee.exits == (0,) and ee.threshold == ex["thresholds"][0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is unchanged
    assert any(not torch.equal(v, ee.lm.state_dict()[k]) for k, v in before.items())  # the exits trained it
    assert ex["calibration"]["holdout_fraction"] <= 0.8
    assert ex["perplexity"] == pytest.approx(lm_exit_eval(ee, tiny_text.loader("test", shuffle=False))["perplexity"])
    assert sum(ex["real_exit_share"]) == pytest.approx(1.0)
    assert ex["latency"]["tokens"] == 64 and ex["latency"]["batch_size"] == 1
    assert res.metrics["macs"] == round(ex["avg_macs_fraction"] * ex["window_macs"])  # per window, as the runner
    path = nc.models.save(ee, tmp_path / "ee.pt")
    back = nc.models.load(path).eval()
    assert isinstance(back, EarlyExitLM) and back.exits == ee.exits and back.threshold == ee.threshold
    x = next(iter(tiny_text.loader("test", shuffle=False)))[0]
    torch.testing.assert_close(back(x), ee.eval()(x))
    res = nc.apply("dynamic", model, tiny_text, max_steps=1, holdout=8, latency=False)  # defaults: nothing lost
    assert res.extra["calibration"]["accuracy_drop"] == 0.0
    assert res.extra["calibration"]["holdout_accuracy"] >= res.extra["calibration"]["holdout_full_accuracy"]
    for bad, msg in (({"head": {"hidden": 16}}, "share its final norm"), ({"train_backbone": False}, "train_backbone"),
                     ({"threshold": [0.5, 0.6]}, "one threshold"), ({"budget": 0.1}, "below the first exit")):
        with pytest.raises(NetcompressError, match=msg):
            nc.apply("dynamic", model, tiny_text, max_steps=1, holdout=8, latency=False, **bad)
