"""Golden values for every distillation loss, computed by hand on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from netcompress.core.errors import NetcompressError
from netcompress.distill import losses as L


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_kd_loss_golden_t1_and_t2():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # KL(p_t || p_s) with p_t = [s(-1), s(1)], p_s reversed = (p_t1 - p_t0) * 1
    assert L.kd_loss(s, t, 1.0).item() == pytest.approx(sig(1) - sig(-1), abs=1e-6)
    # T = 2: logits halved -> (s(.5) - s(-.5)) * 0.5, times T^2 = 4
    assert L.kd_loss(s, t, 2.0).item() == pytest.approx(4 * 0.5 * (sig(0.5) - sig(-0.5)), abs=1e-6)
    # batchmean: a second, identical row (KL 0) halves the value
    s2, t2 = torch.tensor([[1.0, 0.0], [3.0, 1.0]]), torch.tensor([[0.0, 1.0], [3.0, 1.0]])
    assert L.kd_loss(s2, t2, 1.0).item() == pytest.approx((sig(1) - sig(-1)) / 2, abs=1e-6)


def test_kd_loss_matches_torch_oracle_and_is_zero_on_equal_logits():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ref = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
    assert L.kd_loss(s, t, 3.0).item() == pytest.approx(ref.item(), rel=1e-5)
    assert L.kd_loss(s, s.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_rejects_bad_input():
    with pytest.raises(NetcompressError, match="temperature"):
        L.kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    with pytest.raises(NetcompressError, match="teacher"):
        L.kd_loss(torch.zeros(1, 2), torch.zeros(1, 3))


def test_mutual_kl_golden_and_detached():
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0]], requires_grad=True)
    la, lb = L.mutual_kl([a, b])
    assert la.item() == pytest.approx(sig(1) - sig(-1), abs=1e-6)
    assert lb.item() == pytest.approx(sig(1) - sig(-1), abs=1e-6)
    la.backward()
    assert a.grad is not None and b.grad is None  # peer b's output is a fixed target for a


def test_hint_loss_golden():
    assert L.hint_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)
    with pytest.raises(NetcompressError, match="adapter"):
        L.hint_loss(torch.zeros(1, 2), torch.zeros(1, 3))


def test_attention_map_golden():
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # (1, 2 channels, 1, 2)
    want = torch.tensor([[1.0, 2.0]]) / math.sqrt(5)   # code: mean of squares [1, 2]; paper: sum [2, 4]
    assert torch.allclose(L.attention_map(f, mode="code"), want, atol=1e-6)
    assert torch.allclose(L.attention_map(f, mode="paper"), want, atol=1e-6)


def test_at_loss_golden_code_vs_paper_and_resize():
    s = torch.zeros(1, 1, 1, 2); s[0, 0, 0, 0] = 1.0
    t = torch.zeros(1, 1, 1, 2); t[0, 0, 0, 1] = 1.0
    assert L.at_loss([s], [t], mode="code").item() == pytest.approx(1.0)            # mean((1,-1)^2)
    assert L.at_loss([s], [t], mode="paper").item() == pytest.approx(math.sqrt(2))  # ||(1,-1)||_2
    assert L.at_loss([s, s], [t, t]).item() == pytest.approx(2.0)                   # summed over layers
    big = torch.ones(1, 3, 4, 4)  # uniform map pooled to 2x2 == uniform map of the 2x2 student
    assert L.at_loss([torch.ones(1, 5, 2, 2)], [big]).item() == pytest.approx(0.0, abs=1e-7)


def test_rkd_distance_golden():
    s = torch.tensor([[0.0], [1.0], [3.0]])   # distances 1,3,2 / mean 2  -> .5, 1.5, 1
    t = torch.tensor([[0.0], [1.0], [2.0]])   # distances 1,2,1 / mean 4/3 -> .75, 1.5, .75
    # Huber(0.25) = 0.5*0.0625 for pairs (0,1) and (1,2), both orders; mean over 9 entries
    assert L.rkd_distance_loss(s, t).item() == pytest.approx(4 * 0.03125 / 9, abs=1e-6)


def test_rkd_angle_golden():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # cosines at vertex 0/1/2: student 0, .7071, .7071; teacher 1, -1, 1 (collinear)
    # Huber: |1| -> .5, |1.7071| -> 1.2071, |.2929| -> .0429; each twice; total 3.5; mean over 27
    assert L.rkd_angle_loss(s, t).item() == pytest.approx(3.5 / 27, abs=1e-5)
    assert L.rkd_loss(s, t, 0.0, 2.0).item() == pytest.approx(7 / 27, abs=1e-5)


def test_rkd_is_scale_invariant():
    e = torch.randn(6, 4)
    assert L.rkd_distance_loss(3 * e, e).item() == pytest.approx(0.0, abs=1e-5)
    assert L.rkd_angle_loss(3 * e, e).item() == pytest.approx(0.0, abs=1e-5)


def test_sp_loss_golden():
    # G_s = I; G_t rows (2,2) normalised -> 1/sqrt2; (2*(1-1/sqrt2)^2 + 2*(1/sqrt2)^2) / 2^2
    want = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4
    assert L.sp_loss(torch.eye(2), torch.ones(2, 2)).item() == pytest.approx(want, abs=1e-6)
    # student and teacher may differ in every dimension but the batch
    assert L.sp_loss(torch.randn(3, 5, 2, 2), torch.randn(3, 11)).item() >= 0
    with pytest.raises(NetcompressError, match="batch"):
        L.sp_loss(torch.zeros(2, 3), torch.zeros(3, 3))


@pytest.mark.parametrize("fn", [
    lambda s, t: L.kd_loss(s, t),
    lambda s, t: L.hint_loss(s, t),
    lambda s, t: L.at_loss([s.view(4, 2, 2, 2)], [t.view(4, 2, 2, 2)]),
    lambda s, t: L.rkd_loss(s, t),
    lambda s, t: L.sp_loss(s, t),
])
def test_no_gradient_reaches_the_teacher_tensor(fn):
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
