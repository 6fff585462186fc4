"""Small transformers built from plain layers, so every family can transform them.

* `ViT` (Dosovitskiy et al. 2021): patch embedding (a strided Conv2d), a class token, learned
  position embeddings, pre-norm blocks of `Attention` (one `qkv` Linear and one `proj` Linear, as
  in timm) and an `Mlp` (fc1 -> GELU -> fc2), a LayerNorm and a Linear head on the class token.
* `GPT`: a LLaMA-style decoder (Touvron et al. 2023): RMSNorm, rotary position embeddings (Su et
  al. 2021), grouped-query attention (`n_kv_heads`, Ainslie et al. 2023), SwiGLU MLP
  (`gate_proj`, `up_proj`, `down_proj`), optionally an LM head tied to the token embedding.

Head counts are never stored for `forward`: the number of heads is the projection width divided
by `head_dim`, so removing whole heads (rows of q/k/v and columns of the output projection) leaves
a model that still runs. Rotary tables are computed in `forward` (no buffers), so state dicts hold
only weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.models.io import register_module_type


def _scaled(dim: int, width: float, multiple: int) -> int:
    """`dim * width` rounded to a positive multiple of `multiple` (whole heads)."""
    return max(multiple, int(round(dim * width / multiple)) * multiple)


class ClassToken(nn.Module):
    """Selects token 0 of a (batch, tokens, dim) sequence: the class token of a ViT (exit heads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


register_module_type(ClassToken, lambda m: {})


class TokenMean(nn.Module):
    """The mean over the tokens of a (batch, tokens, dim) sequence (global-average-pool exit heads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


register_module_type(TokenMean, lambda m: {})


class Attention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection, split by `unbind` (timm's layout, so
    tools written for timm ViTs, e.g. Torch-Pruning's head pruning, read it as they read timm's)."""

    def __init__(self, dim: int, num_heads: int = 4, head_dim: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim or dim // num_heads
        inner = self.head_dim * num_heads
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer; `forward` returns class logits from the class token."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, patch: int | None = None,
                 dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0, width: float = 1.0,
                 stem: int = 32) -> None:
        super().__init__()
        dim = _scaled(dim, width, num_heads)
        if patch is None:  # the largest patch of at most 7 px that tiles the image (28 -> 7, 32 -> 4, 8 -> 4)
            patch = next(p for p in range(min(7, input_size), 0, -1) if input_size % p == 0)
        if input_size % patch:
            raise NetcompressError(f"vit: input_size {input_size} is not a multiple of patch {patch}")
        if stem > 0 and patch == 4:  # two stride-2 3x3 convolutions make the 4x4 patches (Xiao et al. 2021,
            # "Early convolutions help transformers see better"): what lets a ViT learn from 4,000 images
            self.patch_embed: nn.Module = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1), nn.GELU(),
                                                        nn.Conv2d(stem, dim, 3, 2, 1))
        elif stem > 0:  # a 3x3 convolution, then the patches
            self.patch_embed = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1), nn.GELU(),
                                             nn.Conv2d(stem, dim, patch, stride=patch))
        else:
            self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        n = (input_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token first, plus position embeddings."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def rotary(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """Rotary position embedding of x (batch, heads, seq, head_dim), rotate-half layout; the first
    position is `offset` (the tokens already in a key/value cache)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(offset, offset + t, device=x.device, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos().to(x.dtype), torch.cat([ang, ang], -1).sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def append_kv(cache: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow a key/value cache ([keys, values] along the sequence axis, empty at first); returns its content."""
    if cache:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    cache[:] = [k, v]
    return k, v


class CausalSelfAttention(nn.Module):
    """Causal attention with rotary embeddings and grouped-query attention (n_kv_heads <= n_heads)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None) -> None:
        super().__init__()
        n_kv = n_kv_heads or n_heads
        if n_heads % n_kv:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv}")
        self.head_dim = head_dim or dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = rotary(q), rotary(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def keys_values(self, x: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (batch, kv_heads, seq, head_dim) of x at positions offset, offset + 1, ..."""
        b, t, _ = x.shape
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        return rotary(k, offset=offset), v

    def cached(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """Attention of x's positions after the `cache` ([keys, values], empty at first), which grows by x's
        keys and values: incremental decoding. Equal to `forward` on the whole sequence."""
        b, t, _ = x.shape
        offset = cache[0].shape[2] if cache else 0
        q = rotary(self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2), offset=offset)
        k, v = append_kv(cache, *self.keys_values(x, offset))
        # a query at position offset + i sees keys 0 .. offset + i (the causal mask shifted by offset)
        mask = None if t == 1 else torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(offset)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    """LLaMA's MLP: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None, hidden: int) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.attn = CausalSelfAttention(dim, n_heads, n_kv_heads)
        self.mlp_norm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def cached(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """`forward` of x's positions after those in the attention's key/value `cache` (which grows)."""
        x = x + self.attn.cached(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))

    def fill(self, x: torch.Tensor, cache: list[torch.Tensor]) -> None:
        """Only the keys and values of x's positions, appended to `cache` (a block an early exit skips:
        its attention state is computed from the exited hidden state, CALM's state propagation)."""
        append_kv(cache, *self.attn.keys_values(self.attn_norm(x), cache[0].shape[2] if cache else 0))


class GPT(nn.Module):
    """A LLaMA-style decoder-only LM; `forward(input_ids)` returns logits (batch, seq, vocab).

    Args:
        num_classes: vocabulary size (256 for byte-level text).
        input_size: longest context (only checked; rotary needs no table).
        in_channels: ignored (accepted so `models.create_for` can size every zoo model alike).
        dim, depth, n_heads, n_kv_heads, hidden: width, blocks, query heads, key/value heads, MLP width.
        width: multiplies `dim` (and `hidden`), rounded to whole heads.
        tie: the LM head reuses the token embedding matrix (no separate weight).
    """

    def __init__(self, num_classes: int = 256, in_channels: int | None = None, input_size: int = 128, dim: int = 128,
                 depth: int = 4, n_heads: int = 4, n_kv_heads: int | None = None, hidden: int | None = None,
                 tie: bool = False, width: float = 1.0) -> None:
        super().__init__()
        if width != 1.0:
            hidden = _scaled(hidden, width, 16) if hidden else None
            dim = _scaled(dim, width, 2 * n_heads)
        self.max_len, self.tie = int(input_size), bool(tie)
        self.tok_emb = nn.Embedding(num_classes, dim)
        hid = hidden or -(-8 * dim // 3 // 64) * 64  # SwiGLU width ~8/3 dim, whole groups of 64
        self.blocks = nn.ModuleList(DecoderBlock(dim, n_heads, n_kv_heads, hid) for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.lm_head = None if tie else nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def _vocab(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.tok_emb.weight.t() if self.lm_head is None else self.lm_head(h)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a block's output x: the final norm and the LM head (also an early exit's head)."""
        return self._vocab(self.norm(x))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._vocab(self.hidden(input_ids))

    def decode_step(self, ids: torch.Tensor, caches: list[list[torch.Tensor]]) -> torch.Tensor:
        """Logits of the last position of `ids` (the positions after the cached ones) through every block."""
        x = self.tok_emb(ids)
        for blk, cache in zip(self.blocks, caches):
            x = blk.cached(x, cache)
        return self.head(x[:, -1])

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, new_tokens: int, temperature: float = 0.0, seed: int = 0) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation of `input_ids` by `new_tokens` tokens, with a
        key/value cache. See `decode`."""
        return decode(self.decode_step, len(self.blocks), self.max_len, input_ids, new_tokens, temperature, seed)


def decode(step, depth: int, max_len: int, input_ids: torch.Tensor, new_tokens: int, temperature: float = 0.0,
           seed: int = 0) -> torch.Tensor:
    """Incremental decoding: `step(ids, caches)` returns the last position's logits of `ids` following
    the positions in `caches` (one key/value cache per block, grown by the step). When the context
    would pass `max_len`, the caches restart from the last max_len / 2 tokens (the model never sees
    positions it was not trained on)."""
    g = torch.Generator().manual_seed(seed)
    ids = input_ids[:, -max_len:]
    out = [input_ids]
    caches: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    pending = ids
    for _ in range(new_tokens):
        logits = step(pending, caches).float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1).cpu(), 1, generator=g).to(ids.device)
        out.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        if ids.shape[1] > max_len:
            ids = ids[:, -(max_len // 2):]
            caches = [[] for _ in range(depth)]
            pending = ids
        else:
            pending = nxt
    return torch.cat(out, 1)
