import pytest
import torch

import netcompress as nc
from netcompress.measure import count_macs, count_params, latency_ms, macs_by_module


def test_macs_and_params_match_formulas():
    m = nc.models.create("lenet300")
    x = torch.zeros(1, 1, 28, 28)
    assert count_macs(m, x) == 784 * 300 + 300 * 100 + 100 * 10
    assert count_params(m) == (266_610, 266_610)
    l5 = nc.models.create("lenet5")
    # conv1: 20*24*24*25, conv2: 50*8*8*20*25, fc: 800*500 + 500*10
    assert count_macs(l5, x) == 20 * 576 * 25 + 50 * 64 * 500 + 800 * 500 + 5000
    per = macs_by_module(l5, x)
    assert per["features.3"] == 50 * 64 * 500 and sum(per.values()) == count_macs(l5, x)


def test_nonzero_counts_and_bytes(digits):
    m = nc.models.create("lenet300", in_channels=1, input_size=8)
    with torch.no_grad():
        m.fc1.weight[:, :10] = 0
    met = nc.measure(m, digits, latency=False)
    assert met.params - met.nonzero_params == 300 * 10
    assert met.bytes > 4 * met.params  # a real file: fp32 weights plus the description
    assert met.accuracy == pytest.approx(nc.train.evaluate(m, digits), abs=1e-6)


def test_latency_is_measured_and_mode_restored():
    m = nc.models.create("lenet5").train()
    t1 = latency_ms(m, torch.zeros(1, 1, 28, 28), batch_size=1, min_run_time=0.05)
    t64 = latency_ms(m, torch.zeros(1, 1, 28, 28), batch_size=64, min_run_time=0.05)
    assert 0 < t1 < t64 and m.training


def test_latency_leaves_torchs_loggers_as_they_were():
    """Timing must not change global state: the logger raised for torch.utils.benchmark's import is
    put back (it stayed at ERROR, hiding every later cpp_extension message of the user's program)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    before = log.level
    try:
        log.setLevel(logging.INFO)
        latency_ms(nc.models.create("lenet5"), torch.zeros(1, 1, 28, 28), min_run_time=0.01)
        assert log.level == logging.INFO
    finally:
        log.setLevel(before)


def test_count_macs_when_a_parameter_is_passed_between_modules():
    """torch's module tracker asserts on a grad-requiring leaf module input under no_grad (timm PiT
    passes its class token between stages); counting freezes parameters and restores them."""
    from torch import nn as _nn

    class Stage(_nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = _nn.Linear(4, 4)

        def forward(self, xt):
            x, t = xt
            return self.fc(x) + t, t

    class M(_nn.Module):
        def __init__(self):
            super().__init__()
            self.token = _nn.Parameter(torch.zeros(1, 4))
            self.stage = Stage()

        def forward(self, x):
            return self.stage((x, self.token.expand(x.shape[0], -1)))[0]  # a no_grad view still requires grad

    m = M()
    assert nc.measure.count_macs(m, torch.randn(2, 4)) == 16
    assert all(p.requires_grad for p in m.parameters())


def test_fused_attention_counts_like_its_matmuls():
    """Torch has no FLOP formula for the CPU kernel of scaled_dot_product_attention: without ours a
    transformer's attention scores cost nothing. The fused call (plain, causal, grouped-query) must
    count what the same attention written as matmuls counts."""
    import torch.nn.functional as F
    from torch import nn as _nn

    class Attn(_nn.Module):
        def __init__(self, fused, kv_heads, causal):
            super().__init__()
            self.fused, self.kv_heads, self.causal = fused, kv_heads, causal

        def forward(self, q):  # q: (batch, 4 heads, tokens, 8)
            k = v = q[:, : self.kv_heads]
            if self.fused:
                return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                      enable_gqa=self.kv_heads != q.shape[1])
            k = v = k.repeat_interleave(q.shape[1] // self.kv_heads, dim=1)
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    x = torch.randn(1, 4, 10, 8)
    for kv_heads, causal in [(4, False), (4, True), (2, False)]:
        fused = nc.measure.count_macs(Attn(True, kv_heads, causal), x)
        assert fused == nc.measure.count_macs(Attn(False, kv_heads, causal), x) == 2 * 4 * 10 * 10 * 8


def test_torch_attention_modules_count_outside_their_fast_path():
    """In eval mode without grad, nn.MultiheadAttention and nn.TransformerEncoderLayer run fused ops
    that have no FLOP formula (a torchvision ViT counted 11.3 of its 17.6 GMACs). Counting takes
    the slow path, which is the same math, and leaves torch's fast-path switch as it was."""
    from torch import nn as _nn

    class MHA(_nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = _nn.MultiheadAttention(64, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    x = torch.randn(1, 10, 64)
    attention = 2 * 10 * 10 * 64  # q.K^T and p.V over 4 heads of 16
    assert nc.measure.count_macs(MHA().eval(), x) == 10 * 4 * 64 * 64 + attention
    layer = _nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    assert nc.measure.count_macs(layer, x) == 10 * (4 * 64 * 64 + 2 * 64 * 128) + attention
    assert torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        nc.measure.count_macs(layer, x)
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
