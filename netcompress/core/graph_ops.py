"""Label arithmetic shared by the channel-graph rules: squashing, reductions, contractions, resizes.

All functions take label tensors (long; -1 = neutral, 0 = frozen) and a union-find, never values."""
from __future__ import annotations

import string
from typing import Sequence

import torch

from netcompress.core.graph import NEUTRAL, _compact, _UnionFind


def squash(t: torch.Tensor) -> torch.Tensor:
    """`t` with every dimension along which it is constant narrowed to size 1 (broadcasts back)."""
    t = _compact(t)
    for d in range(t.dim()):
        if t.shape[d] > 1 and bool((t == t.narrow(d, 0, 1)).all()):
            t = t.narrow(d, 0, 1)
    return t


def neutral(shape: Sequence[int]) -> torch.Tensor:
    return torch.full([1] * len(shape), NEUTRAL, dtype=torch.long).expand(tuple(shape))


def frozen(shape: Sequence[int]) -> torch.Tensor:
    return torch.zeros([1] * len(shape), dtype=torch.long).expand(tuple(shape))


def merge(a: torch.Tensor, b: torch.Tensor, uf: _UnionFind) -> torch.Tensor:
    """Element-wise combination: unite the labels, keep the non-neutral one (broadcast shape)."""
    uf.union_tensors(a, b)
    a, b = torch.broadcast_tensors(a, b)
    out = torch.where(a < 0, b, a)
    if bool(((a >= 0) & (b >= 0) & (a != b)).any()):
        out = uf.roots(out)  # one name per class, so later checks compare classes
    return out


def reduce(lab: torch.Tensor, dims: Sequence[int], keepdim: bool, out_shape: Sequence[int],
           uf: _UnionFind) -> torch.Tensor:
    """Labels of a reduction over `dims`: kept where constant along them; a reduction over channels
    is neutral (its size does not follow them); mixed cases unite what is reduced together."""
    sq = squash(lab)
    dims = sorted({d % max(lab.dim(), 1) for d in dims})
    varying = [d for d in dims if sq.shape[d] > 1]
    if varying:
        kept = [d for d in range(sq.dim()) if d not in dims and sq.shape[d] > 1]
        if not kept:
            return neutral(out_shape)
        for d in varying:
            uf.union_tensors(sq.narrow(d, 0, 1), sq)
        for d in varying:
            sq = sq.narrow(d, 0, 1)
    if not keepdim:
        for d in reversed(dims):
            sq = sq.squeeze(d)
    return sq.expand(tuple(out_shape)) if sq.dim() == len(out_shape) else sq.reshape(-1)[:1].expand(tuple(out_shape))


def resize(lab: torch.Tensor, out_shape: Sequence[int], uf: _UnionFind) -> torch.Tensor:
    """Labels of an op that keeps every dimension but resizes some (pooling, interpolation, padding):
    the labels must be constant along resized dimensions; channels resized are frozen."""
    if lab.dim() != len(out_shape):
        uf.freeze(lab)
        return frozen(out_shape)
    sq = squash(lab)
    for d in range(sq.dim()):
        if sq.shape[d] not in (1, out_shape[d]):
            uf.freeze(sq)
            return frozen(out_shape)
    return sq.expand(tuple(out_shape))


def _align(sq: torch.Tensor, letters: str, full: str) -> torch.Tensor:
    perm = [letters.index(c) for c in full if c in letters]
    t = sq.permute(perm) if perm else sq
    shape, it = [], iter(t.shape)
    for c in full:
        shape.append(next(it) if c in letters else 1)
    return t.reshape(shape)


def _project(sq: torch.Tensor, letters: str, keep: str, uf: _UnionFind) -> tuple[torch.Tensor, str] | None:
    """`sq` as a function of the letters in `keep` only, uniting what varies jointly with the rest;
    None when it varies only along the dropped letters (no identity left there)."""
    drop = [i for i, c in enumerate(letters) if c not in keep and sq.shape[i] > 1]
    kept_vary = [i for i, c in enumerate(letters) if c in keep and sq.shape[i] > 1]
    if drop and not kept_vary:
        return None
    for i in drop:
        uf.union_tensors(sq.narrow(i, 0, 1), sq)
    for i in drop:
        sq = sq.narrow(i, 0, 1)
    idx = [i for i, c in enumerate(letters) if c in keep]
    out = sq.reshape([sq.shape[i] for i in idx]) if idx else sq.reshape(())
    return out, "".join(letters[i] for i in idx)


def contract(operands: Sequence[tuple[torch.Tensor, str]], out_letters: str, out_shape: Sequence[int],
             uf: _UnionFind) -> torch.Tensor:
    """Labels of an einsum: positions sharing a letter in two operands are united (contracted and
    batch letters); each output element takes the labels its operands have along output letters."""
    sqs = [(squash(uf.roots(squash(lab))), letters) for lab, letters in operands]  # classes, not label names
    for i in range(1, len(sqs)):
        a, la = sqs[0]
        b, lb = sqs[i]
        common = "".join(c for c in la if c in lb)
        if not common:
            continue
        pa, pb = _project(a, la, common, uf), _project(b, lb, common, uf)
        if pa is not None and pb is not None:
            uf.union_tensors(_align(pa[0], pa[1], common), _align(pb[0], pb[1], common))
    out = neutral([1] * len(out_letters))
    for sq, letters in sqs:
        p = _project(sq, letters, out_letters, uf)
        if p is not None:
            out = merge(out, _align(p[0], p[1], out_letters), uf)
    return out.expand(tuple(out_shape))


def matmul_letters(da: int, db: int) -> tuple[str, str, str]:
    """Einsum letters of `a @ b` for operands of `da` and `db` dimensions (numpy broadcasting)."""
    batch = string.ascii_uppercase
    if da == 1 and db == 1:
        return "k", "k", ""
    if da == 1:
        nb = db - 2
        return "k", batch[:nb] + "kj", batch[:nb] + "j"
    if db == 1:
        na = da - 2
        return batch[:na] + "ik", "k", batch[:na] + "i"
    n = max(da, db) - 2
    bl = batch[:n]
    return bl[n - (da - 2):] + "ik", bl[n - (db - 2):] + "kj", bl + "ij"


def einsum_letters(eq: str, dims: Sequence[int]) -> tuple[list[str], str]:
    """Operand and output letters of an einsum equation, '...' expanded with capitals."""
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    ins = lhs.split(",")
    n_ell = max([d - (len(s) - 3) for s, d in zip(ins, dims) if "..." in s] + [0])
    ell = string.ascii_uppercase[:n_ell]
    out_ins = []
    for s, d in zip(ins, dims):
        if "..." in s:
            k = d - (len(s) - 3)
            s = s.replace("...", ell[n_ell - k:])
        out_ins.append(s)
    if "->" not in eq:
        seen = "".join(out_ins)
        rhs = ell + "".join(sorted(c for c in set(seen) if seen.count(c) == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
    return out_ins, rhs
