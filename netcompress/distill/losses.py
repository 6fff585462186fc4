"""Distillation losses as pure tensor functions (no modules, no state).

Each function takes tensors and returns a scalar; the teacher side is always used as a constant
target (callers pass teacher tensors computed under `torch.no_grad()`, and every function detaches
them again so that gradients can never reach a teacher).

References:
    Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (KD).
    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (hint loss).
    Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (AT).
    Park, Kim, Lu, Cho 2019, "Relational Knowledge Distillation" (RKD).
    Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (SP).
    Zhang, Xiang, Hospedales, Lu 2018, "Deep Mutual Learning" (DML).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from netcompress.core.errors import NetcompressError

__all__ = [
    "kd_loss", "hint_loss", "attention_map", "at_loss", "pairwise_distances", "rkd_distance_loss",
    "rkd_angle_loss", "rkd_loss", "sp_gram", "sp_loss", "mutual_kl",
]


def _check_batch(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape[0] != t.shape[0]:
        raise NetcompressError(f"{what}: student batch {s.shape[0]} != teacher batch {t.shape[0]}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. 2015 soft-target loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The ``T^2`` factor keeps the gradient scale independent of the temperature (paper, section 2),
    so the loss can be mixed with cross-entropy as ``(1 - alpha) * CE + alpha * kd_loss``; the
    mixing itself is done by `netcompress.distill.KD` (see its docstring).

    Args:
        student_logits: (N, C) raw student logits.
        teacher_logits: (N, C) raw teacher logits (detached here).
        temperature: T > 0.

    Example:
        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> round(kd_loss(s, t, 1.0).item(), 4)   # KL([.269,.731] || [.731,.269])
        0.4621
    """
    if temperature <= 0:
        raise NetcompressError(f"kd_loss: temperature must be > 0, got {temperature}")
    _check_batch(student_logits, teacher_logits, "kd_loss")
    if student_logits.shape != teacher_logits.shape:
        raise NetcompressError(f"kd_loss: student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}")
    t = temperature
    if student_logits.dim() == 3:  # (batch, seq, vocab): per-token KL, mean over every position
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def mutual_kl(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
    """Deep Mutual Learning (Zhang et al. 2018, eq. 10): for each peer i, the mean over the other
    peers j of ``KL(p_j || p_i)`` with p_j detached (each peer is a fixed target for the others).

    With ``temperature != 1`` the terms are softened and scaled by T^2 as in `kd_loss`; the paper
    uses T = 1.

    Returns:
        One loss per peer, in order; gradients of loss i reach only peer i's logits.
    """
    if len(logits) < 2:
        raise NetcompressError(f"mutual_kl: needs at least 2 peers, got {len(logits)}")
    out = []
    for i, li in enumerate(logits):
        terms = [kd_loss(li, lj.detach(), temperature) for j, lj in enumerate(logits) if j != i]
        out.append(torch.stack(terms).mean())
    return out


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015, eq. 3): squared L2 distance between the teacher's hint
    and the regressor's output for the student's guided layer.

    The paper writes ``1/2 ||u_h - r(v_g)||^2`` summed over elements; we use the element mean (as
    torchdistill and most re-implementations do), which only rescales the loss weight.

    Args:
        student_feature: the regressed student feature, already shaped like the teacher's.
        teacher_feature: the teacher's hint (detached here).
    """
    if student_feature.shape != teacher_feature.shape:
        raise NetcompressError(
            f"hint_loss: regressed student feature {tuple(student_feature.shape)} != teacher hint "
            f"{tuple(teacher_feature.shape)}; use an adapter (netcompress.distill.adapters)")
    return F.mse_loss(student_feature.float(), teacher_feature.detach().float())


def attention_map(feature: torch.Tensor, p: float = 2.0, mode: Literal["code", "paper"] = "code") -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis 2017 (eq. 1 with F = sum |A_c|^p), flattened and
    L2-normalised per sample: shape (N, H*W).

    ``mode="paper"`` sums over channels as in the paper; ``mode="code"`` averages over channels as
    the authors' code does (`at()` in szagoruyko/attention-transfer utils.py). After normalisation
    the two maps are identical; the mode matters only for the distance in `at_loss`.
    """
    if feature.dim() < 3:
        raise NetcompressError(f"attention_map: needs a (N, C, H, W) feature map, got shape {tuple(feature.shape)}")
    if feature.dim() == 3:  # transformer tokens (N, T, D): the map is over tokens, channels last
        feature = feature.transpose(1, 2)
    a = feature.float().abs().pow(p)
    a = a.sum(1) if mode == "paper" else a.mean(1)
    return F.normalize(a.flatten(1), dim=1)


def _match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two (N, C, H, W) maps down to the smaller one's spatial size."""
    hs, ht = s.shape[-2:], t.shape[-2:]
    if s.dim() == 3:  # token features (N, T, D): same tokens, any width
        if s.shape[1] != t.shape[1]:
            raise NetcompressError(f"at_loss: student has {s.shape[1]} tokens, teacher {t.shape[1]}")
        return s, t
    if hs == ht:
        return s, t
    size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def at_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
            p: float = 2.0, mode: Literal["code", "paper"] = "code") -> torch.Tensor:
    """Attention Transfer (Zagoruyko & Komodakis 2017), summed over layer pairs.

    Paper (eq. 2), ``mode="paper"``: ``sum_j || Q_s^j/||Q_s^j|| - Q_t^j/||Q_t^j|| ||_2``, batch mean.
    Authors' code, ``mode="code"`` (default, used for their published numbers):
    ``sum_j mean((Q_s^j/||Q_s^j|| - Q_t^j/||Q_t^j||)^2)`` -- squared, and averaged over the batch *and*
    the H*W positions. The paper's weight beta = 1e3 multiplies ``beta/2`` times this sum.
    Maps of different spatial sizes are average-pooled to the smaller size first.

    Example:
        >>> s = torch.zeros(1, 1, 1, 2); s[0, 0, 0, 0] = 1.0
        >>> t = torch.zeros(1, 1, 1, 2); t[0, 0, 0, 1] = 1.0
        >>> at_loss([s], [t]).item()   # maps [1,0] and [0,1]: mean of (1, 1)
        1.0
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise NetcompressError(f"at_loss: {len(student_features)} student maps vs {len(teacher_features)} teacher maps")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features):
        _check_batch(s, t, "at_loss")
        s, t = _match_spatial(s, t.detach())
        diff = attention_map(s, p, mode) - attention_map(t, p, mode)
        total = total + (diff.norm(dim=1).mean() if mode == "paper" else diff.pow(2).mean())
    return total


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(N, N) Euclidean distances between the rows of a flattened (N, D) embedding, zero diagonal."""
    e = e.flatten(1).float()
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019, eqs. 3-5): Huber loss between pairwise distances,
    each set normalised by its mean over distinct pairs (mu = mean of ||t_i - t_j||, i != j).

    Huber is PyTorch's smooth-L1 with delta 1, averaged over all N^2 entries (the zero diagonal
    included), as in the authors' code (lenscloth/RKD metric/loss.py).
    """
    _check_batch(student, teacher, "rkd_distance_loss")
    n = student.shape[0]
    if n < 2:
        raise NetcompressError("rkd_distance_loss: needs a batch of at least 2")
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    with torch.no_grad():
        td = pairwise_distances(teacher.detach())
        td = td / td[off].mean()
    sd = pairwise_distances(student)
    sd = sd / sd[off].mean()
    return F.smooth_l1_loss(sd, td)


def _angles(e: torch.Tensor) -> torch.Tensor:
    e = e.flatten(1).float()
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[j, i] = e_i - e_j, unit
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()      # cos of angle i-j-k for all j, i, k


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss (Park et al. 2019, eqs. 6-7): Huber loss between the cosines of the angles
    formed by every triplet (i, j, k) at vertex j, averaged over all N^3 triplets."""
    _check_batch(student, teacher, "rkd_angle_loss")
    with torch.no_grad():
        ta = _angles(teacher.detach())
    return F.smooth_l1_loss(_angles(student), ta)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Weighted RKD-DA (Park et al. 2019): ``distance_weight * L_D + angle_weight * L_A``.

    Defaults 25 / 50 are the paper's classification setting (section 4.2, also RepDistiller's);
    the authors' metric-learning code uses 1 / 2.
    """
    return distance_weight * rkd_distance_loss(student, teacher) + angle_weight * rkd_angle_loss(student, teacher)


def sp_gram(feature: torch.Tensor) -> torch.Tensor:
    """Row-normalised batch similarity matrix of Tung & Mori 2019 (eqs. 1-2): G = Q Q^T with Q the
    (N, D) flattened feature, each row of G divided by its L2 norm."""
    q = feature.flatten(1).float()
    return F.normalize(q @ q.t(), p=2, dim=1)


def sp_loss(student_features: Sequence[torch.Tensor] | torch.Tensor,
            teacher_features: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Similarity-Preserving KD (Tung & Mori 2019, eq. 4): ``1/b^2 sum_l ||G_t^l - G_s^l||_F^2``.

    Student and teacher features may differ in every dimension but the batch. The paper's weight
    gamma = 3000 (CIFAR-10) multiplies this loss.

    Example:
        >>> s = torch.eye(2)                 # orthogonal rows: G = identity
        >>> t = torch.ones(2, 2)             # identical rows: G = all 1/sqrt(2)
        >>> round(sp_loss(s, t).item(), 4)   # (2*(1-.7071)^2 + 2*.5) / 4
        0.2929
    """
    if isinstance(student_features, torch.Tensor):
        student_features, teacher_features = [student_features], [teacher_features]
    if len(student_features) != len(teacher_features) or not student_features:
        raise NetcompressError(f"sp_loss: {len(student_features)} student features vs {len(teacher_features)} teacher features")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_features, teacher_features):
        _check_batch(s, t, "sp_loss")
        b = s.shape[0]
        total = total + (sp_gram(t.detach()) - sp_gram(s)).pow(2).sum() / (b * b)
    return total
