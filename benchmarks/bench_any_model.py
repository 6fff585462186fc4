"""B11: any-model coverage, netcompress vs Torch-Pruning 1.6 in the same loop.

Models (all built with pretrained=False, offline):
* timm: one model per architecture family. A family is the timm module that defines the model
  (`timm.models._registry._model_to_module`, e.g. `resnet`, `efficientnet`, `vision_transformer`);
  timm's own `test_*` models are left out. The family's representative is its smallest variant by
  parameter count: the family's names are ordered by their size tags (atto < femto < pico < nano <
  micro < tiny < xs < small ...) and numbers, the first `--candidates` of them are built on the meta
  device (no memory, no weights) and the one with the fewest parameters is taken (cached per timm
  version under ~/.cache/netcompress). The default run covers `DEFAULT_FAMILIES` (a spread of CNNs
  and transformers); `--full` covers every family.
* Hugging Face: BERT, DistilBERT, RoBERTa, GPT-2, ViT, LLaMA, Qwen2, Mistral from the small configs
  in `netcompress.models.sources.TINY_CONFIGS`.

For each model, on a copy and with one example input (images `--size` px, or 16 tokens):
prune 30 % and 50 % of the channels (L1) with `netcompress.prune.channels` and with Torch-Pruning's
`BasePruner` (GroupMagnitudeImportance p=1, the classifier / LM head ignored, and for attention its
documented head options: `num_heads` per q/k/v (or fused qkv) layer, `prune_num_heads=True`,
`prune_head_dims=False`, `head_pruning_ratio` = the ratio; after pruning the attention modules' head
counts are updated as in Torch-Pruning's examples, and timm's `Attention.forward` is given the
reshape-by-`-1` that its timm example uses). A prune counts when the pruned model runs, keeps the
output shape, gives finite outputs, has fewer MACs, and the original model's outputs and weights are
unchanged. Then netcompress's transforms: low-rank (`design.lowrank`, budget 0.5 of the parameters),
weight pruning 50 % + k-means 4 bits + `.ncz` archive round trip (identical outputs), save / load of
the low-rank model and of netcompress's 50 % channel-pruned model (identical outputs). Every failure is recorded with its reason; the script never
stops on one.

Latency part: each tool at the channel ratio (bisection) keeping the most MACs up to 50 % of the
dense MACs, CPU latency
(torch.utils.benchmark, median, batch 1, `--threads`) of vit_tiny_patch16_224,
deit_tiny_patch16_224 (224 px) and a small BERT (4 layers, width 256, 128 tokens), both tools in
one run, timed in interleaved rounds; speedup = dense / pruned per round, and speedup x MACs kept
(the share of the MAC reduction realised in latency) to compare across the tools' MAC fractions.

Run: python benchmarks/bench_any_model.py [--full] [--size 64] [--threads 1] [--no-latency | --latency-only]
(the coverage table goes to results/B11_any_model.md, the latency table to results/B11_latency.md)
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import interleaved_latency, l1_channels, md_table, write_result  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.core.batch import call, logits_of  # noqa: E402
from netcompress.measure import count_macs  # noqa: E402
from netcompress.models.sources import TINY_CONFIGS  # noqa: E402

DEFAULT_FAMILIES = [
    "resnet", "efficientnet", "mobilenetv3", "regnet", "byobnet", "densenet", "ghostnet", "rexnet", "dpn",
    "cspnet", "convnext", "dla", "hrnet", "senet", "vgg", "res2net", "fastvit", "metaformer", "efficientformer",
    "levit", "edgenext", "swin_transformer", "vision_transformer", "deit", "mobilevit", "maxxvit", "mlp_mixer",
    "xcit", "pit", "beit",
]
SIZE_TAGS = ["atto", "femto", "pico", "zepto", "nano", "micro", "mini", "xxxs", "xxs", "tiny", "t", "xs", "xsmall",
             "small", "s", "lite", "light", "base", "b", "medium", "m", "large", "l", "huge", "h", "giant", "g"]
STEP_SECONDS = 90


class StepTimeout(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - only on a hang
    raise StepTimeout(f"over {STEP_SECONDS} s (--step-seconds)")


def guarded(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None) or (None, one-line reason); a step never stops the benchmark."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(STEP_SECONDS)
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - the reason is the result
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"{type(e).__name__}: {msg}"[:160].replace("|", "/")
    finally:
        signal.alarm(0)


# ------------------------------------------------------------------ model selection


def _size_key(name: str) -> tuple:
    toks = re.split(r"[_.\-]", name)
    tag = min((SIZE_TAGS.index(t) for t in toks if t in SIZE_TAGS), default=len(SIZE_TAGS))
    nums = [int(n) for n in re.findall(r"\d+", name)]
    return (tag, sum(nums), len(name), name)


def timm_families() -> dict[str, list[str]]:
    import timm
    from timm.models import _registry

    fam: dict[str, list[str]] = {}
    for n in timm.list_models():
        if not n.startswith("test_"):
            fam.setdefault(_registry._model_to_module[n], []).append(n)
    return fam


def timm_module_of() -> dict[str, str]:
    """timm model name -> the timm module (family) that defines it."""
    from timm.models import _registry  # importing the package registers every model

    return dict(_registry._model_to_module)


def meta_params(name: str) -> int | None:
    import timm

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # noqa: BLE001 - a model that cannot be built is not a candidate
        return None


def select_timm(families: list[str], candidates: int) -> dict[str, tuple[str, int]]:
    """{family: (smallest model, parameters)}; parameter counts cached per timm version."""
    import timm

    cache = Path.home() / ".cache" / "netcompress" / f"b11-timm-{timm.__version__}-params.json"
    counts = json.loads(cache.read_text()) if cache.is_file() else {}
    fam = timm_families()
    out = {}
    for f in families:
        names = sorted(fam.get(f, []), key=_size_key)[:candidates]
        for n in names:
            if n not in counts:
                counts[n] = meta_params(n)
        ok = [(counts[n], n) for n in names if counts[n]]
        if ok:
            p, n = min(ok)
            out[f] = (n, p)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(counts, sort_keys=True))
    return out


# ------------------------------------------------------------------ building and checking


def build(name: str, size: int) -> tuple[torch.nn.Module, Any]:
    if name.startswith("hf:"):
        arch = name[3:]
        m = nc.models.create(name, num_classes=10, **TINY_CONFIGS[arch]).eval()
        if TINY_CONFIGS[arch]["task"] == "image-classification":
            size = TINY_CONFIGS[arch]["image_size"]
            return m, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        ids = torch.randint(2, 128, (1, 16), generator=torch.Generator().manual_seed(0))
        return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    import timm

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        m = nc.models.create(name, num_classes=10, input_size=size).eval()
        with torch.no_grad():
            m(x)
        return m, x
    except Exception:  # noqa: BLE001 - fixed-size models: their default input size
        s = timm.get_pretrained_cfg(name[5:]).input_size[-1] if timm.get_pretrained_cfg(name[5:]) else 224
        m = nc.models.create(name, num_classes=10).eval()
        x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            m(x)
        return m, x


def out(model, x) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call(model, x))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, x, y0, state0) -> bool:
    sd = model.state_dict()
    return set(sd) == set(state0) and all(torch.equal(sd[k], v) for k, v in state0.items()) and torch.equal(out(model, x), y0)


def check_pruned(small, x, y0, macs0) -> tuple[int, str | None]:
    y = out(small.eval(), x)
    if y.shape != y0.shape:
        return 0, f"output shape {tuple(y.shape)} != {tuple(y0.shape)}"
    if not torch.isfinite(y).all():
        return 0, "non-finite outputs"
    macs = count_macs(small, x)
    if macs >= macs0:
        return macs, f"MACs not reduced ({macs:,} >= {macs0:,})"
    return macs, None


# ------------------------------------------------------------------ the two pruners


def _timm_attention_forward(self, x, attn_mask=None, **kw):
    """timm's Attention with the output reshaped by -1 (Torch-Pruning's timm example does the same)."""
    import torch.nn.functional as F

    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x.transpose(1, 2).reshape(b, n, -1)
    x = self.norm(x) if hasattr(self, "norm") else x
    return self.proj_drop(self.proj(x))


def head_layers(model) -> list[torch.nn.Module]:
    """The layers producing the logits, which Torch-Pruning must be told to keep."""
    heads = []
    if hasattr(model, "get_classifier"):
        c = model.get_classifier()
        heads += [c] if isinstance(c, torch.nn.Module) else []
    for attr in ("classifier", "pre_classifier", "score", "lm_head", "pooler"):
        c = getattr(model, attr, None)
        if isinstance(c, torch.nn.Module):
            heads.append(c)
    if not heads:
        heads = [[m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]]
    return heads


def tp_heads(model) -> tuple[dict, list[Callable[[Any], None]]]:
    """Torch-Pruning's `num_heads` for every attention it documents, and the fixes after pruning."""
    heads, fixes = {}, []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if type(m).__name__ == "Attention" and hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            heads[m.qkv] = m.num_heads
            m.forward = _timm_attention_forward.__get__(m)

            def fix(p, m=m):
                m.num_heads = p.num_heads[m.qkv]
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            fixes.append(fix)
        elif all(hasattr(m, a) for a in ("query", "key", "value")):
            n = getattr(m, "num_attention_heads", None) or cfg.num_attention_heads
            for lin in (m.query, m.key, m.value):
                heads[lin] = n

            def fix(p, m=m):
                if hasattr(m, "num_attention_heads"):
                    m.num_attention_heads = p.num_heads[m.query]
                if hasattr(m, "all_head_size"):
                    m.all_head_size = m.query.out_features
            fixes.append(fix)
        elif all(hasattr(m, a) for a in ("q_lin", "k_lin", "v_lin")):
            for lin in (m.q_lin, m.k_lin, m.v_lin):
                heads[lin] = m.n_heads

            def fix(p, m=m):
                m.n_heads = p.num_heads[m.q_lin]
                m.dim = m.q_lin.out_features
            fixes.append(fix)
        elif all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj")) and cfg is not None:
            heads[m.q_proj] = cfg.num_attention_heads
            heads[m.k_proj] = heads[m.v_proj] = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        elif hasattr(m, "c_attn") and hasattr(m, "split_size"):
            heads[m.c_attn] = m.num_heads

            def fix(p, m=m):
                m.num_heads = p.num_heads[m.c_attn]
                m.split_size = m.c_attn.weight.shape[1] // 3
            fixes.append(fix)
    return heads, fixes


def tp_prune(model, x, ratio: float):
    import torch_pruning as tp

    m = copy.deepcopy(model)
    heads, fixes = tp_heads(m)
    pruner = tp.pruner.BasePruner(
        m, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=head_layers(m), num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=False,
        head_pruning_ratio=ratio, output_transform=lambda o: logits_of(o).sum())
    pruner.step()
    for f in fixes:
        f(pruner)
    return m


TOOLS = {"netcompress": l1_channels, "torch-pruning": tp_prune}


# ------------------------------------------------------------------ one model


def run_model(name: str, size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    built, err = guarded(lambda: build(name, size))
    if err:
        row["build"] = err
        return row
    model, x = built
    row["params"] = sum(p.numel() for p in model.parameters())
    row["input"] = "x".join(map(str, x.shape[1:])) if isinstance(x, torch.Tensor) else f"{x['input_ids'].shape[1]} tokens"
    y0, state0 = out(model, x), snapshot(model)
    macs0, err = guarded(lambda: count_macs(model, x))
    if err:
        row["build"] = f"MAC count: {err}"
        return row
    row["macs"] = macs0
    pruned = None
    for tool, fn in TOOLS.items():
        for ratio in (0.3, 0.5):
            key = f"{tool}@{ratio}"
            small, err = guarded(lambda: fn(model, x, ratio))
            if err is None:
                res, err2 = guarded(lambda: check_pruned(small, x, y0, macs0))
                err = err2 or (res[1] if res else None)
                if err is None:
                    row[key + ":macs"] = res[0]
            if err is None and not unchanged(model, x, y0, state0):
                err = "the original model was changed"
            if err is not None and not unchanged(model, x, y0, state0):
                model.load_state_dict(state0)
                err += " (and the original model was changed)"
            row[key] = err or "ok"
            if key == "netcompress@0.5" and err is None:
                pruned = small
            del small
            gc.collect()
    with tempfile.TemporaryDirectory() as d:
        thin, err = guarded(lambda: nc.design.lowrank(model, budget=0.5))
        if err is None:
            yt = out(thin, x)
            err = None if yt.shape == y0.shape and torch.isfinite(yt).all() else "bad output after low-rank"
        row["lowrank"] = err or "ok"

        def archive():
            m = copy.deepcopy(model)
            nc.prune.weights_(m, "l1", sparsity=0.5)
            nc.quantize.cluster_(m, bits=4)
            info = nc.archive.pack(m, Path(d) / "m.ncz")
            if not torch.equal(out(m, x), out(nc.archive.unpack(Path(d) / "m.ncz"), x)):
                raise AssertionError("unpacked outputs differ")
            return info["file_bytes"]
        nbytes, err = guarded(archive)
        row["archive"] = err or "ok"
        row["archive_ratio"] = 4 * row["params"] / nbytes if nbytes else None

        def save_load():  # the low-rank model and netcompress's 50 % pruned model (when they exist)
            for what, m in (("low-rank", thin if thin is not None else model), ("pruned", pruned)):
                if m is None:
                    continue
                nc.models.save(m, Path(d) / "m.pt")
                if not torch.equal(out(m, x), out(nc.models.load(Path(d) / "m.pt"), x)):
                    raise AssertionError(f"loaded outputs of the {what} model differ")
        _, err = guarded(save_load)
        row["save_load"] = err or "ok"
    if not unchanged(model, x, y0, state0):
        row["save_load"] += "; the original model was changed by a transform"
    return row


# ------------------------------------------------------------------ latency at 50 % MACs


def at_macs(fn, model, x, macs0: float, target: float = 0.5, tol: float = 0.02) -> tuple[torch.nn.Module, float, float]:
    """(pruned model, channel ratio, MACs kept): the pruned model whose MACs are closest to, and at
    most, `target` of the dense MACs, by bisection on the channel ratio."""
    lo, hi, best = 0.0, 0.9, None
    for _ in range(12):
        mid = (lo + hi) / 2
        small = fn(model, x, mid)
        frac = count_macs(small, x) / macs0
        if frac <= target:
            if best is None or frac > best[2]:
                best = (small, mid, frac)
            hi = mid
        else:
            lo = mid
        if best is not None and abs(target - best[2]) < tol:
            break
    if best is None:
        raise RuntimeError(f"{target:.2f} of the MACs not reached between ratios 0 and 0.9")
    return best


def latency_cases():
    cases = []
    for n in ("vit_tiny_patch16_224", "deit_tiny_patch16_224"):
        cases.append((n, lambda n=n: (nc.models.create(f"timm:{n}", num_classes=1000).eval(), torch.randn(1, 3, 224, 224))))

    def bert():
        m = nc.models.create("hf:bert", task="sequence-classification", num_classes=2, hidden_size=256, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=1024, vocab_size=30522).eval()
        ids = torch.randint(1000, 30000, (1, 128), generator=torch.Generator().manual_seed(0))
        return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cases.append(("bert-small (4x256, 128 tokens)", bert))
    return cases


def _spread(xs: list[float], unit: str = "x") -> str:
    xs = sorted(xs)
    return f"{xs[len(xs) // 2]:.2f}{unit} ({xs[0]:.2f}-{xs[-1]:.2f})"


def latency_part(threads: int, rounds: int = 7) -> str:
    """Each tool prunes L1 at the channel ratio, found by bisection, that keeps the most MACs up to 50 %
    of the dense MACs. Attention heads are removed whole, so neither tool can reach every MAC count
    and the two land at different fractions: besides the speedup (dense / pruned ms), the table gives
    the speedup times the MACs kept, the share of the MAC reduction that shows up in latency (1 is a
    latency exactly proportional to the MACs), which compares the tools across fractions. Dense, ours
    and TP are timed in `rounds` interleaved rounds (the order rotating each round), so that load on
    the machine hits all three alike; the speedups and the ours-vs-TP ratios are computed per round
    and given as median (min-max over rounds)."""
    rows, verdicts = [], []
    for name, make in latency_cases():
        model, x = make()
        macs0 = count_macs(model, x)
        pruned = {}
        for tool, fn in TOOLS.items():
            res, err = guarded(lambda fn=fn: at_macs(fn, model, x, macs0))
            pruned[tool] = (res, err)
        timed = {"dense": model} | {t: r[0].eval() for t, (r, e) in pruned.items() if r is not None}
        ms = interleaved_latency(timed, x, rounds, threads=threads)
        row = [name, f"{macs0 / 1e6:.0f}M", f"{sorted(ms['dense'])[rounds // 2]:.2f}"]
        for tool in TOOLS:
            res, err = pruned[tool]
            if res is None:
                row += [f"failed: {err}", "-", "-", "-"]
                continue
            sp = [d / t for d, t in zip(ms["dense"], ms[tool])]
            row += [f"{res[2]:.3f} (ratio {res[1]:.3f})", f"{sorted(ms[tool])[rounds // 2]:.2f}", _spread(sp),
                    _spread([v * res[2] for v in sp], "")]
        if all(r is not None for r, _ in pruned.values()):
            ours, tp = pruned["netcompress"][0][2], pruned["torch-pruning"][0][2]
            ratio = [t / o for o, t in zip(ms["netcompress"], ms["torch-pruning"])]
            eff = [v * ours / tp for v in ratio]
            row += [_spread(ratio), _spread(eff, "")]
            verdicts.append(f"{name}: ours faster than TP in {sum(v > 1 for v in ratio)}/{rounds} rounds, "
                            f"more of its MAC reduction realised in {sum(v > 1 for v in eff)}/{rounds}")
        else:
            row += ["-", "-"]
        rows.append(row)
        print(row, flush=True)
        del model, timed
        gc.collect()
    head = ["model", "MACs dense", "ms dense", "MACs kept ours", "ms ours", "speedup ours", "speedup x MACs ours",
            "MACs kept TP", "ms TP", "speedup TP", "speedup x MACs TP", "TP ms / ours ms", "ours / TP speedup x MACs"]
    return md_table(head, rows) + "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


# ------------------------------------------------------------------ report


def write_latency(threads: int, rounds: int) -> None:
    t0 = time.time()
    body = (f"CPU latency at 50 % of the MACs: batch 1, threads {threads}, torch.utils.benchmark medians "
            f"(0.5 s each), {rounds} interleaved rounds; speedup = dense ms / pruned ms per round, given as "
            "median (min-max over rounds). Each tool prunes L1 at the channel ratio (bisection) that keeps the "
            "most MACs up to half the dense MACs (Torch-Pruning with its documented head options, see the module "
            "docstring). Whole heads go at once, so the tools land at different fractions; `speedup x MACs` is "
            "the share of the MAC reduction that shows up in latency (1 = latency proportional to MACs), which "
            "compares them across fractions.\n\n"
            + latency_part(threads, rounds) + f"\nTotal time {time.time() - t0:.0f} s.\n")
    write_result("B11_latency", "B11: pruned transformers' CPU latency at half the MACs (netcompress vs Torch-Pruning 1.6)", body)


def main() -> None:
    global STEP_SECONDS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every timm family (default: DEFAULT_FAMILIES)")
    ap.add_argument("--size", type=int, default=64, help="input size of the timm models (px)")
    ap.add_argument("--candidates", type=int, default=8, help="variants per family built on meta to find the smallest")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-latency", action="store_true", help="skip the latency part")
    ap.add_argument("--latency-only", action="store_true", help="run only the latency part")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds of the latency part")
    ap.add_argument("--only", nargs="*", help="run only these model names (timm:NAME / hf:ARCH); the table goes to "
                    "results/B11_any_model_only.md")
    ap.add_argument("--result", help="name of the result file (default: B11_any_model, _only or _full)")
    ap.add_argument("--step-seconds", type=int, default=STEP_SECONDS, help="time limit of one step (prune, transform)")
    args = ap.parse_args()
    STEP_SECONDS = args.step_seconds
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    if not args.no_latency:
        write_latency(args.threads, args.rounds)
    if args.latency_only:
        return
    if args.only:  # the named models, no family selection
        fams, chosen, names = [], {}, list(args.only)
        module_of = timm_module_of()
        fam_of = {n: module_of.get(n.removeprefix("timm:"), "hf" if n.startswith("hf:") else "?") for n in names}
    else:
        fams = sorted(timm_families()) if args.full else DEFAULT_FAMILIES
        chosen = select_timm(fams, args.candidates)
        names = [f"timm:{chosen[f][0]}" for f in fams if f in chosen] + [f"hf:{k}" for k in TINY_CONFIGS]
        fam_of = {f"timm:{v[0]}": f for f, v in chosen.items()}
        print(f"{len(chosen)} timm families ({len(fams)} asked), {len(TINY_CONFIGS)} HF architectures; "
              f"selection took {time.time() - t0:.0f} s", flush=True)
    rows = []
    for n in names:
        t = time.time()
        r = run_model(n, args.size)
        r["seconds"] = time.time() - t
        rows.append(r)
        print(json.dumps(r), flush=True)

    keys = [f"{t}@{r}" for t in TOOLS for r in (0.3, 0.5)] + ["lowrank", "archive", "save_load"]
    table = []
    for r in rows:
        if "build" in r:
            table.append([r["model"], fam_of.get(r["model"], "hf"), "-", "-", f"build failed: {r['build']}"] + [""] * (len(keys) - 1))
            continue
        cells = []
        for k in keys:
            v = r.get(k, "-")
            if v == "ok" and k + ":macs" in r:
                v = f"ok {r[k + ':macs'] / r['macs']:.2f}"
            cells.append(v)
        table.append([r["model"], fam_of.get(r["model"], "hf"), f"{r['params'] / 1e6:.2f}M", r["input"]] + cells)
    built = [r for r in rows if "build" not in r]
    totals = []
    for k in keys:
        ok = sum(r.get(k) == "ok" for r in built)
        totals.append(f"{ok}/{len(built)}")
    tp_ok = {r["model"] for r in built if r.get("torch-pruning@0.5") == "ok"}
    nc_ok = {r["model"] for r in built if r.get("netcompress@0.5") == "ok"}
    head = ["model", "family", "params", "input", "ours 30 %", "ours 50 %", "TP 30 %", "TP 50 %", "low-rank",
            "prune+kmeans+archive", "save/load"]
    what = (f"{len(names)} models named by --only" if args.only else
            f"{len(chosen)} timm families (of {len(fams)} asked; {'all families' if args.full else 'the default spread, --full for all'}) "
            f"+ {len(TINY_CONFIGS)} Hugging Face architectures")
    body = (f"{what}; {len(built)} models built. Cells: `ok F` = pruned, "
            "runs, same output shape, finite, MACs reduced to the fraction F, original unchanged; otherwise the reason. "
            f"Channel ratio 30 % / 50 %, L1, timm inputs {args.size} px where the model allows it (else its default size).\n\n"
            + md_table(head, table)
            + "\n**Totals** (of the models built): " + ", ".join(f"{h} {t}" for h, t in zip(head[4:], totals))
            + f"\n\nTorch-Pruning prunes at 50 % {len(tp_ok)} models; netcompress {len(nc_ok)}; "
            f"pruned by Torch-Pruning but not by netcompress: {', '.join(sorted(tp_ok - nc_ok)) or 'none'}.\n\n"
            + ("" if args.only else "Representatives (family: model, parameters): "
               + "; ".join(f"{f}: {n} ({p / 1e6:.2f}M)" for f, (n, p) in chosen.items()) + "\n"))
    body += f"\nTotal time {time.time() - t0:.0f} s.\n"
    name = args.result or ("B11_any_model_only" if args.only else "B11_any_model_full" if args.full else "B11_any_model")
    write_result(name, "B11: any-model coverage (netcompress vs Torch-Pruning 1.6)", body)


if __name__ == "__main__":
    main()
