"""Distillation between transformers of different widths and depths (TinyBERT / MiniLM style).

* Logit KD per token: `losses.kd_loss` flattens (batch, seq, vocab) logits, so the KL is averaged
  over every position (the LM form of Hinton et al. 2015).
* Hidden states (Jiao et al. 2020, "TinyBERT"): MSE between each student block's output, mapped by
  a trained Linear projection to the teacher's width, and the output of the teacher block given by
  a uniform layer map (student block i of S <- teacher block (i + 1) * T / S - 1).
* Self-attention relations (Wang et al. 2021, "MiniLMv2"): for the query, key and value projections
  the scaled dot-product relation softmax(A A^T / sqrt(d_r)) is formed over R relation heads (the
  projection split into R equal parts, whatever the model's own head count), and the student's
  relations are trained towards the teacher's by KL. Causal models mask future positions.

The features are taken with `netcompress.core.Taps` by module name; nothing edits the models.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.layerwise import find_blocks
from netcompress.core.taps import Taps
from netcompress.distill.methods import TappedMethod, _device_of


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block index for each student block: (i + 1) * T // S - 1 (TinyBERT's uniform map)."""
    if n_student < 1 or n_teacher < 1:
        raise NetcompressError("layer map: both models need at least one block")
    return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]


def _attention_projections(block: nn.Module, prefix: str) -> tuple[list[str], bool] | None:
    """Names of (q, k, v) projections of a block, or of a fused qkv; and whether attention is causal."""
    names = {n: m for n, m in block.named_modules()}
    for q, k, v in (("attn.q_proj", "attn.k_proj", "attn.v_proj"), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
        if q in names and k in names and v in names:
            return [f"{prefix}.{q}", f"{prefix}.{k}", f"{prefix}.{v}"], True
    if "attn.qkv" in names:
        return [f"{prefix}.attn.qkv"], False
    return None


def relation(a: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """MiniLMv2 relation log-probabilities (N, R, T, T) of projections a (N, T, D), R = `heads`."""
    n, t, d = a.shape
    if d % heads:
        raise NetcompressError(f"relation heads: width {d} is not a multiple of {heads}")
    x = a.float().reshape(n, t, heads, d // heads).transpose(1, 2)
    s = x @ x.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=a.device).triu(1), float("-inf"))
    return F.log_softmax(s, -1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """KL(teacher relation || student relation), mean over batch, heads and query positions."""
    ls, lt = relation(student, heads, causal), relation(teacher.detach(), heads, causal)
    p = lt.exp()
    kl = (p * (lt - ls)).masked_fill(p == 0, 0.0).sum(-1)
    return kl.mean()


def _split(x: torch.Tensor, fused: bool) -> list[torch.Tensor]:
    return list(x.chunk(3, dim=-1)) if fused else [x]


class HiddenKD(TappedMethod):
    """Per-token logit KD + hidden-state MSE through projections + attention relations (TinyBERT/MiniLM).

    Args:
        teacher: frozen teacher transformer.
        student: the student (to map its blocks); both need a ModuleList of blocks.
        hidden_weight: weight of the summed hidden-state MSE (0 disables it).
        attention_weight: weight of the MiniLMv2 relation KL on the last block pair (0 disables it).
        relation_heads: R, the relation heads (must divide both models' projection widths).
        layers: explicit [student_block, teacher_block] name pairs instead of the uniform map.
        temperature, alpha: the logit KD term (alpha 0 disables it; CE gets 1 - alpha).
        balance: scale the hidden + attention terms on the first step so that they start no larger
            than the task loss (see `TappedMethod`); False uses the weights as given.
    """

    name = "hidden"

    def __init__(self, teacher: nn.Module, student: nn.Module, hidden_weight: float = 1.0,
                 attention_weight: float = 1.0, relation_heads: int = 2,
                 layers: Sequence[Sequence[str]] | None = None, temperature: float = 2.0, alpha: float = 0.5,
                 balance: bool = True) -> None:
        super().__init__(teacher, temperature, alpha)
        self.balance = bool(balance)
        sb, tb = find_blocks(student), find_blocks(teacher)
        if layers:
            self.pairs = [(str(s), str(t)) for s, t in layers]
        else:
            self.pairs = [(sb[i][0], tb[j][0]) for i, j in enumerate(uniform_layer_map(len(sb), len(tb)))]
        self.hidden_weight, self.attention_weight = float(hidden_weight), float(attention_weight)
        self.relation_heads = int(relation_heads)
        self.att: tuple[list[str], list[str], bool, bool] | None = None
        if self.attention_weight > 0:
            s_name, t_name = self.pairs[-1]
            sm, tm = dict(student.named_modules()), dict(teacher.named_modules())
            sa, ta = _attention_projections(sm[s_name], s_name), _attention_projections(tm[t_name], t_name)
            if sa is None or ta is None:
                raise NetcompressError(f"hidden: no attention projections found in {s_name!r} / {t_name!r}; "
                                       "set attention_weight 0")
            self.att = (sa[0], ta[0], sa[1], len(sa[0]) == 1)
        self.adapters = nn.ModuleList()
        self._student = student

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        s_names = [s for s, _ in self.pairs] + (self.att[0] if self.att else [])
        t_names = [t for _, t in self.pairs] + (self.att[1] if self.att else [])
        self.close()
        self._s_taps, self._t_taps = Taps(model, s_names), Taps(self.teacher, t_names)
        if not len(self.adapters) and self.hidden_weight > 0:
            dims = []
            for name, who in ((self.pairs[0][0], model), (self.pairs[0][1], self.teacher)):
                dims.append(self._width(who, name))
            self.adapters = nn.ModuleList(nn.Linear(dims[0], dims[1], bias=False) for _ in self.pairs)
        self.adapters.to(_device_of(model))
        return model

    @staticmethod
    def _width(model: nn.Module, block: str) -> int:
        norms = [m for m in dict(model.named_modules())[block].modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
        if not norms:
            raise NetcompressError(f"hidden: cannot tell the width of block {block!r} (no LayerNorm/RMSNorm inside)")
        return int(norms[0].normalized_shape[0])

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        assert self._s_taps is not None and self._t_taps is not None, "prepare() was not called"
        t_logits = self.teacher_outputs(inputs)
        terms = self.kd_terms(outputs, t_logits)
        feats: dict[str, torch.Tensor] = {}
        if self.hidden_weight > 0:
            mse = sum(F.mse_loss(a(self._s_taps[s]).float(), self._t_taps[t].detach().float())
                      for a, (s, t) in zip(self.adapters, self.pairs))
            feats["hidden"] = self.hidden_weight * mse
        if self.att is not None:
            s_names, t_names, causal, fused = self.att
            s_parts = [p for n in s_names for p in _split(self._s_taps[n], fused)]
            t_parts = [p for n in t_names for p in _split(self._t_taps[n], len(t_names) == 1)]
            feats["attention"] = self.attention_weight * sum(
                relation_kl(a, b, self.relation_heads, causal) for a, b in zip(s_parts, t_parts)) / len(s_parts)
        terms.update(self.balanced(feats, outputs, targets))
        return terms


def _run_hidden(teacher, student, data, cfg, fit_fn):
    """TinyBERT / MiniLM-style: per-token KD + hidden states through projections + attention relations."""
    from netcompress.distill.protocols import _KD_ALPHA, DistillResult, _acc, _alpha, _budget, train_student

    # balanced on the first step unless weights are given, as for AT / RKD / SP
    m = HiddenKD(teacher, student, cfg.weights.get("hidden", 1.0), cfg.weights.get("attention", 1.0),
                 layers=cfg.layers, temperature=cfg.temperature, alpha=_alpha(cfg, _KD_ALPHA["hidden"]),
                 balance=not cfg.weights)
    h = train_student(student, m, fit_fn, "hidden", **_budget(cfg))
    extra = {"layer_pairs": [list(p) for p in m.pairs]}
    if m.balance:
        extra["weight_scale"] = m.scale
    return DistillResult(student, _acc(student, data), extra=extra, histories={"hidden": h.to_list()})
