"""Early-exit decoding for decoder-only language models (CALM, Schuster et al. 2022; LayerSkip,
Elhoushi et al. 2024).

Each position of a sequence may leave after any block named as an exit, when the confidence of
the model's own final norm + LM head on that block's output passes a threshold (shared head: no
new parameters; the blocks learn to make it readable by joint training, `ExitTraining`). A
position that left still has to serve later positions as a key and a value in the blocks it
skipped: its hidden state at the exit is copied to them (CALM's state propagation), so a skipped
block computes only that position's keys and values (`DecoderBlock.fill`), not its attention
output or MLP.

`EarlyExitLM.forward` computes exactly what decoding produces, for every position of a sequence at
once (teacher forcing: the perplexity of the early-exit model); `generate` decodes with a key/value
cache and skips the blocks for real (the time saved). The tests check that both agree token by
token.

A decoder here is a module with `tok_emb` (an Embedding), `blocks` (each with `cached(x, cache)`
and `fill(x, cache)`), `head(x)` (final norm + LM head) and `max_len`: netcompress's `GPT`.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.dynamic.base import confidence, score_cut
from netcompress.measure import MacCounter
from netcompress.models.transformers import decode
from netcompress.models.zoo import create


def is_decoder_lm(model: nn.Module) -> bool:
    """Whether `model` is a decoder this module can add exits to (see the module docstring)."""
    blocks = getattr(model, "blocks", None)
    return (isinstance(getattr(model, "tok_emb", None), nn.Embedding) and isinstance(blocks, nn.ModuleList)
            and len(blocks) > 0 and callable(getattr(model, "head", None))
            and all(callable(getattr(b, "cached", None)) and callable(getattr(b, "fill", None)) for b in blocks))


def block_indices(model: nn.Module, exits: Sequence[str | int] | None) -> list[int]:
    """Block indices of `exits` (names 'blocks.i' or integers); None or empty: one exit halfway, after
    block depth / 2 - 1 (every exit a token passes costs one LM head; on gpt-tiny, 4 blocks, exits
    after each of the first three blocks gave a worse perplexity-compute trade-off than the middle
    one alone, `benchmarks/results/B12_lm_exit.md`)."""
    depth = len(model.blocks)
    if not exits:
        if depth < 2:
            raise NetcompressError("early exit: the language model has one block; there is nothing to skip")
        return [depth // 2 - 1]
    out = []
    for e in exits:
        name = e if isinstance(e, str) else f"blocks.{e}"
        head, _, idx = name.rpartition(".")
        if head != "blocks" or not idx.isdigit() or not 0 <= int(idx) < depth - 1:
            raise NetcompressError(f"early exit: exit {e!r} is not a block of the language model before its last "
                                   f"(blocks.0 .. blocks.{depth - 2})")
        out.append(int(idx))
    if len(set(out)) != len(out):
        raise NetcompressError(f"early exit: exits repeat a block: {list(exits)}")
    return sorted(out)


class EarlyExitLM(nn.Module):
    """A decoder LM whose positions may leave after the blocks in `exits` (indices).

    In training mode, or while `threshold` is None, `forward(ids)` returns the list of every exit's
    logits (batch, seq, vocab), the last one the full model's. In eval mode with a threshold it
    returns the logits decoding produces (each position's from the exit it leaves at).
    `policy` ('max_softmax' or 'entropy') and `threshold` are plain attributes, saved with the model.
    """

    def __init__(self, lm: nn.Module, exits: Sequence[int], policy: str = "max_softmax",
                 threshold: float | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.exits = tuple(int(e) for e in exits)
        self.policy = policy
        self.threshold = threshold

    @property
    def num_exits(self) -> int:
        return len(self.exits) + 1

    @property
    def max_len(self) -> int:
        return int(self.lm.max_len)

    def all_exits(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every position, each block run on every position (full depth)."""
        x, outs, at = self.lm.tok_emb(ids), [], set(self.exits)
        for i, blk in enumerate(self.lm.blocks):
            x = blk(x)
            if i in at:
                outs.append(self.lm.head(x))
        outs.append(self.lm.head(x))
        return outs

    def set_policy_(self, policy: str = "max_softmax", threshold: float | None = None) -> "EarlyExitLM":
        """Set the exit rule in place; `threshold=None` returns every exit's logits again."""
        score_cut(0.0, policy)  # validates the name
        self.policy, self.threshold = policy, None if threshold is None else float(threshold)
        return self

    def forward(self, ids: torch.Tensor):
        if self.training or self.threshold is None:
            return self.all_exits(ids)
        return self.run(ids)[0]

    def run(self, ids: torch.Tensor, caches: list[list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, exit index per position) of `ids` under the threshold; with `caches` (one
        key/value cache per block, see `DecoderBlock.cached`) the positions follow the cached ones."""
        if self.threshold is None:
            raise NetcompressError("early exit: no threshold set (set_policy_ or the dynamic stage sets one)")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise NetcompressError(f"early exit: threshold must be a number, got {self.threshold!r}")
        lm, blocks = self.lm, self.lm.blocks
        cut = score_cut(self.threshold, self.policy)
        x = lm.tok_emb(ids)
        b, t = ids.shape
        exit_at = torch.full((b, t), len(self.exits), dtype=torch.long, device=ids.device)
        done: torch.Tensor | None = None  # positions that left (None: none yet)
        out: torch.Tensor | None = None
        k = 0
        for i, blk in enumerate(blocks):
            if done is not None and bool(done.all()):
                if caches is not None:  # the skipped blocks still serve later positions
                    for j in range(i, len(blocks)):
                        blocks[j].fill(x, caches[j])
                return out, exit_at
            new = blk(x) if caches is None else blk.cached(x, caches[i])
            x = new if done is None else torch.where(done[..., None], x, new)
            if k < len(self.exits) and self.exits[k] == i:
                z = lm.head(x)
                leave = confidence(z.reshape(b * t, -1), self.policy).view(b, t) >= cut
                if done is not None:
                    leave &= ~done
                if bool(leave.any()):
                    exit_at[leave] = k
                    out = z if out is None else torch.where(leave[..., None], z, out)
                    done = leave if done is None else done | leave
                k += 1
        z = lm.head(x)
        return (z if done is None else torch.where(done[..., None], out, z)), exit_at

    def decode_step(self, ids: torch.Tensor, caches: list[list[torch.Tensor]],
                    log: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The last position's logits of `ids` after the cached positions (exits applied)."""
        logits, exit_at = self.run(ids, caches)
        if log is not None:
            log.append(exit_at[:, -1])
        return logits[:, -1]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 exits_taken: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation with early exits and a key/value cache;
        `exits_taken` (a list) receives each generated token's exit index."""
        return decode(lambda ids, caches: self.decode_step(ids, caches, exits_taken), len(self.lm.blocks),
                      self.max_len, input_ids, new_tokens, temperature, seed)


def lm_early_exit(model: nn.Module, exits: Sequence[str | int] | None = None) -> EarlyExitLM:
    """An early-exit copy of a decoder LM (the input is not changed) with exits after `exits`
    (block names or indices; default one halfway). The exits share the model's final norm and LM head.

    Example:
        ee = lm_early_exit(nc.models.create("gpt-tiny"), ["blocks.1"])
        ee.train()(ids)            # [exit logits, full logits]
    """
    if isinstance(model, EarlyExitLM):
        raise NetcompressError("early exit: the model already has exits")
    if not is_decoder_lm(model):
        raise NetcompressError(f"early exit: a {type(model).__name__} is not a decoder netcompress can add exits to "
                               "(needs tok_emb, blocks with cached/fill, head: netcompress's GPT)")
    idx = block_indices(model, exits)
    ee = EarlyExitLM(copy.deepcopy(model), idx)
    spec = getattr(model, "netcompress_spec", None)
    if spec is not None:
        ee.netcompress_spec = {"name": "early-exit-lm", "kwargs": {"lm": spec, "exits": idx}}
    ee.train(model.training)
    return ee


def build_early_exit_lm(lm: dict, exits: list[int], **_: Any) -> EarlyExitLM:
    """Zoo factory ("early-exit-lm") used by `netcompress.models.load` to rebuild a saved model."""
    inner = create(lm["name"], **lm.get("kwargs", {}))
    inner.netcompress_spec = lm
    return EarlyExitLM(inner, block_indices(inner, exits))


# ---------------------------------------------------------------- costs, outputs, timing
@torch.no_grad()
def token_costs(model: EarlyExitLM, context: int | None = None) -> tuple[list[int], int]:
    """(cumulative MACs of one decoded token leaving at each exit, MACs of the model without exits)
    at `context` cached positions (default half the context length): the blocks it ran (attention
    over the context included), the heads it evaluated and the keys and values of the blocks it
    skipped."""
    lm = model.lm
    dev = next(lm.parameters()).device
    c = context if context is not None else max(1, model.max_len // 2)
    dim = lm.tok_emb.embedding_dim

    def macs(fn) -> int:
        counter = MacCounter()
        with counter:
            fn()
        return counter.macs

    with eval_mode(lm):
        x = torch.zeros(1, 1, dim, device=dev)
        full_block, fill = [], []
        for blk in lm.blocks:
            cache: list[torch.Tensor] = []
            blk.fill(torch.zeros(1, c, dim, device=dev), cache)
            full_block.append(macs(lambda: blk.cached(x, list(cache))))
            fill.append(macs(lambda: blk.fill(x, list(cache))))
        head = macs(lambda: lm.head(x))
    cum = []
    for k, i in enumerate(model.exits):
        cum.append(sum(full_block[: i + 1]) + (k + 1) * head + sum(fill[i + 1:]))
    cum.append(sum(full_block) + len(model.exits) * head + head)
    return cum, sum(full_block) + head


@torch.no_grad()
def lm_exit_eval(model: EarlyExitLM, batches: Iterable) -> dict[str, Any]:
    """Perplexity, token accuracy and exit shares of the early-exit model itself (`run`, with state
    propagation) on `batches`."""
    nll = 0.0
    correct = n = 0
    counts = torch.zeros(model.num_exits, dtype=torch.long)
    dev = next(model.parameters()).device
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            logits, exit_at = model.run(x)
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            n += y.numel()
            counts += torch.bincount(exit_at.reshape(-1).cpu(), minlength=model.num_exits)
    if n == 0:
        raise NetcompressError("no windows to evaluate the exits on")
    return {"perplexity": math.exp(nll / n), "token_accuracy": correct / n,
            "exit_share": (counts.double() / n).tolist(), "tokens": n}


@torch.no_grad()
def decode_latency(model: EarlyExitLM, prompts: torch.Tensor, new_tokens: int = 64, threads: int = 1,
                   rounds: int = 3) -> dict[str, Any]:
    """Median CPU time to decode `new_tokens` after each prompt (rows of `prompts`, one at a time, or
    all together when `prompts` is 3-D: (requests, batch, length)), by the model without exits
    (the same cached decoding) and with them; also the exits the generated tokens took."""
    reqs = prompts if prompts.dim() == 3 else prompts[:, None]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    lm = model.lm
    try:
        with eval_mode(model):
            def full() -> None:
                for p in reqs:
                    lm.generate(p, new_tokens)

            taken: list[torch.Tensor] = []

            def early() -> None:
                taken.clear()
                for p in reqs:
                    model.generate(p, new_tokens, exits_taken=taken)

            full()
            early()  # warm-up
            t_full, t_early = [], []
            for _ in range(rounds):
                for fn, acc in ((full, t_full), (early, t_early)):
                    t0 = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    ex = torch.cat(taken).cpu()
    tokens = reqs.shape[0] * reqs.shape[1] * new_tokens
    f, e = statistics.median(t_full), statistics.median(t_early)
    return {"full_ms": 1000 * f, "early_exit_ms": 1000 * e, "speedup": f / e, "tokens": tokens,
            "batch_size": int(reqs.shape[1]), "threads": threads, "full_tokens_per_s": tokens / f,
            "early_exit_tokens_per_s": tokens / e,
            "exit_share": (torch.bincount(ex, minlength=model.num_exits).double() / ex.numel()).tolist()}
