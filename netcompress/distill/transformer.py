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
from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.graph import is_conv1d_t
from netcompress.core.graph_layers import attention_spec, is_rmsnorm_like
from netcompress.core.layers import read_by_ancestor
from netcompress.core.taps import Taps
from netcompress.distill.methods import TappedMethod, _device_of


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block index for each student block: (i + 1) * T // S - 1 (TinyBERT's uniform map)."""
    if n_student < 1 or n_teacher < 1:
        raise NetcompressError("layer map: both models need at least one block")
    return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of a transformer: the `nn.ModuleList` or `nn.Sequential` with the most
    children, all of one type, each holding a Linear layer (or Hugging Face's Conv1D): `blocks`,
    `layers`, `h`, `encoder.layer`, timm's `blocks`. The model's own block stack, whatever its
    attribute names; blocks of one width (equal parameter shapes) come first, so in a hierarchical
    model (Swin, PVT) it is the longest stage, not the list of stages.

    Example:
        >>> import netcompress as nc
        >>> vit = nc.models.create("vit-tiny", num_classes=10, in_channels=1, input_size=28)
        >>> [n for n, _ in transformer_blocks(vit)]
        ['blocks.0', 'blocks.1', 'blocks.2', 'blocks.3']
    """
    def shapes(c: nn.Module) -> tuple:
        return tuple(tuple(p.shape) for p in c.parameters())

    best: tuple[str, nn.Module, tuple] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or not len(m) or len(Counter(type(c) for c in m)) > 1:
            continue
        if all(any(isinstance(x, nn.Linear) or is_conv1d_t(x) for x in c.modules()) and not isinstance(c, nn.Linear)
               for c in m):
            # blocks of one width first (not the stages of a pyramid, PVT / Swin), then the longest
            key = (len({shapes(c) for c in m}) == 1, len(m))
            if best is None or key > best[2]:
                best = (name, m, key)
    if best is None:
        raise NetcompressError(f"hidden: {type(model).__name__} has no repeated transformer blocks (a ModuleList or "
                               "Sequential of blocks with Linear layers); for a CNN use fitnet or at")
    return [(f"{best[0]}.{i}" if best[0] else str(i), b) for i, b in enumerate(best[1])]


def _attention_projections(block: nn.Module, prefix: str) -> tuple[list[str], bool] | None:
    """Names of the (q, k, v) projections of a block, or of a fused qkv; and whether attention is
    causal. netcompress's own blocks by name; timm and Hugging Face attention by the layout the
    channel graph reads (`netcompress.core.graph_layers.attention_spec`)."""
    names = {n: m for n, m in block.named_modules()}
    for q, k, v in (("attn.q_proj", "attn.k_proj", "attn.v_proj"), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
        if q in names and k in names and v in names:
            return [f"{prefix}.{q}", f"{prefix}.{k}", f"{prefix}.{v}"], True
    if "attn.qkv" in names:
        return [f"{prefix}.attn.qkv"], False
    for sub, m in names.items():
        spec = attention_spec(m)
        if spec is None:
            continue
        base = ".".join(p for p in (prefix, sub) if p)
        causal = bool(getattr(m, "is_causal", False))
        q, k, v = spec.q[0], spec.k[0], spec.v[0]
        if q == k == v:  # one fused projection: its output splits into three equal parts, unless grouped
            return ([f"{base}.{q}"], causal) if spec.kv_heads == spec.heads else None
        return [f"{base}.{q}", f"{base}.{k}", f"{base}.{v}"], causal
    return None


def _tappable(block: nn.Module, found: tuple[list[str], bool] | None, prefix: str) -> tuple[list[str], bool] | None:
    """`found`, unless the block's forward reads a projection's weight instead of calling it (BEiT's
    ``F.linear(x, self.qkv.weight, ...)``): such a layer has no output to tap."""
    if found is None:
        return None
    rel = [n[len(prefix) + 1:] if prefix else n for n in found[0]]
    return None if any(read_by_ancestor(block, n) is not None for n in rel) else found


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
        student: the student (to map its blocks); both need a stack of blocks (`transformer_blocks`).
        hidden_weight: weight of the summed hidden-state MSE (0 disables it).
        attention_weight: weight of the MiniLMv2 relation KL on the last block pair (0 disables it;
            None: 1 where both blocks of that pair hold a recognised attention, else 0).
        relation_heads: R, the relation heads (fewer, the largest number dividing every projection
            width, where R does not).
        layers: explicit [student_block, teacher_block] name pairs instead of the uniform map.
        temperature, alpha: the logit KD term (alpha 0 disables it; CE gets 1 - alpha).
        balance: scale the hidden + attention terms on the first step so that they start no larger
            than the task loss (see `TappedMethod`); False uses the weights as given.
    """

    name = "hidden"

    def __init__(self, teacher: nn.Module, student: nn.Module, hidden_weight: float = 1.0,
                 attention_weight: float | None = None, relation_heads: int = 2,
                 layers: Sequence[Sequence[str]] | None = None, temperature: float = 2.0, alpha: float = 0.5,
                 balance: bool = True) -> None:
        super().__init__(teacher, temperature, alpha)
        self.balance = bool(balance)
        if layers:
            self.pairs = [(str(s), str(t)) for s, t in layers]
        else:
            sb, tb = transformer_blocks(student), transformer_blocks(teacher)
            self.pairs = [(sb[i][0], tb[j][0]) for i, j in enumerate(uniform_layer_map(len(sb), len(tb)))]
        self.hidden_weight, self.relation_heads = float(hidden_weight), int(relation_heads)
        self.att: tuple[list[str], list[str], bool, bool] | None = None
        s_name, t_name = self.pairs[-1]
        sm, tm = dict(student.named_modules()), dict(teacher.named_modules())
        for n, mods in ((s_name, sm), (t_name, tm)):
            if n not in mods:
                raise NetcompressError(f"hidden: layers: no module {n!r} in the {'student' if mods is sm else 'teacher'}")
        sa = _tappable(sm[s_name], _attention_projections(sm[s_name], s_name), s_name)
        ta = _tappable(tm[t_name], _attention_projections(tm[t_name], t_name), t_name)
        found = sa is not None and ta is not None
        if attention_weight is not None and attention_weight > 0 and not found:
            raise NetcompressError(f"hidden: no attention projections found in {s_name!r} / {t_name!r}; "
                                   "set attention_weight 0")
        self.attention_weight = float(attention_weight if attention_weight is not None else found)
        if self.attention_weight > 0 and sa is not None and ta is not None:
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
        """The block's width: its first norm's size (LayerNorm, RMSNorm or a model's own RMSNorm),
        else the input width of its first Linear (or Conv1D)."""
        mods = list(model.get_submodule(block).modules())
        for m in mods:
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                return int(m.normalized_shape[0])
            if is_rmsnorm_like(m):
                return int(m.weight.shape[0])
        for m in mods:
            if isinstance(m, nn.Linear):
                return int(m.in_features)
            if is_conv1d_t(m):
                return int(m.weight.shape[0])
        raise NetcompressError(f"hidden: cannot tell the width of block {block!r} (no norm or Linear inside)")

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def loss_terms(self, model, inputs, targets, outputs) -> dict[str, torch.Tensor]:
        assert self._s_taps is not None and self._t_taps is not None, "prepare() was not called"
        t_logits = self.teacher_outputs(inputs)
        terms = self.kd_terms(outputs, t_logits)
        feats: dict[str, torch.Tensor] = {}
        if self.hidden_weight > 0:
            width = self.adapters[0].in_features
            for s, _ in self.pairs:
                if self._s_taps[s].shape[-1] != width:
                    raise NetcompressError(f"hidden: block {s!r} returns {tuple(self._s_taps[s].shape)}, not tokens "
                                           f"of its width {width} in the last dim; for a CNN use fitnet or at")
            mse = sum(F.mse_loss(a(self._s_taps[s]).float(), self._t_taps[t].detach().float())
                      for a, (s, t) in zip(self.adapters, self.pairs))
            feats["hidden"] = self.hidden_weight * mse
        if self.att is not None:
            s_names, t_names, causal, fused = self.att
            s_parts = [p for n in s_names for p in _split(self._s_taps[n], fused)]
            t_parts = [p for n in t_names for p in _split(self._t_taps[n], len(t_names) == 1)]
            # R relation heads where every projection width allows it, else the largest R that divides them
            # all (a student cut from LeViT has 171-wide projections)
            r = math.gcd(self.relation_heads, *(int(p.shape[-1]) for p in s_parts + t_parts))
            feats["attention"] = self.attention_weight * sum(
                relation_kl(a, b, r, causal) for a, b in zip(s_parts, t_parts)) / len(s_parts)
        terms.update(self.balanced(feats, outputs, targets))
        return terms


def _run_hidden(teacher, student, data, cfg, fit_fn):
    """TinyBERT / MiniLM-style: per-token KD + hidden states through projections + attention relations."""
    from netcompress.distill.protocols import _KD_ALPHA, DistillResult, _acc, _alpha, _budget, train_student

    # balanced on the first step unless weights are given, as for AT / RKD / SP
    m = HiddenKD(teacher, student, cfg.weights.get("hidden", 1.0), cfg.weights.get("attention"),
                 layers=cfg.layers, temperature=cfg.temperature, alpha=_alpha(cfg, _KD_ALPHA["hidden"]),
                 balance=not cfg.weights)
    h = train_student(student, m, fit_fn, "hidden", **_budget(cfg))
    extra = {"layer_pairs": [list(p) for p in m.pairs], "attention_layers": [m.att[0], m.att[1]] if m.att else None}
    if m.balance:
        extra["weight_scale"] = m.scale
    return DistillResult(student, _acc(student, data), extra=extra, histories={"hidden": h.to_list()})
