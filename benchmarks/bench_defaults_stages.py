"""Defaults that work, for every non-distillation technique: each stage kind called with its defaults
(only the amount it cannot guess: how much to prune, how many bits) against its control, on the same
trained model, data and seed.

Models, trained per seed with `nc.train.fit` defaults (10 epochs, lr 0.05) on mnist-5k:
  - a plain user MLP 784-300-100-10 (`nn.Sequential`, no netcompress class), and
  - the zoo's lenet5, and
  - the zoo's vit-tiny (4 blocks; block and channel pruning and the all-defaults early exit only),
  - the zoo's resnet8 (the all-defaults early exit only).
Every row is one `nc.recipe.apply(KIND, model, data, seed=seed, **fields)` call, the same handler as
the recipe stage and the CLI command. The control differs from the default call in one field (or is
the trivial alternative the technique must beat):

  prune channels 50 %  (l1, fine-tune 30 % of epochs at lr x 0.1)   vs criterion random; vs no fine-tune
  prune blocks 50 %    (influence, same fine-tune; vit-tiny)       vs criterion random; vs no fine-tune
  prune weights 90 %   (l1 global, same fine-tune)                  vs criterion random; vs no fine-tune
  quantize uniform 3b  (PTQ, per-channel, mse observer)             vs per-tensor min/max
  quantize uniform 2b  QAT (epochs 1, STE)                          vs PTQ at 2 bits (epochs 0)
  quantize kmeans 2b   (centroid fine-tune 1 epoch)                 vs no centroid fine-tune
  quantize binary      (BinaryConnect, train.epochs from the model) vs sign of the trained weights, per-layer scale
  design lowrank 0.1 of params (fine-tune)                          vs no fine-tune; vs the same factorised
                                                                       shape trained from scratch (fit defaults)
  dynamic early exits  (budget 0.5 of MACs, heads trained 2 epochs) vs the best random routing over the same
                                                                       exits at the same average MACs
  dynamic-auto         (the same with no exits named: placed by MACs) vs the same random routing; vs the full network
  sparse-vd            (30 epochs Adam, log alpha > 3)              vs l1 weight pruning at the sparsity it reached

    python benchmarks/bench_defaults_stages.py            # ~50 min on 1 CPU core
    python benchmarks/bench_defaults_stages.py --rows dynamic-auto --result defaults_stages_exits
    python benchmarks/bench_defaults_stages.py --seeds 1 --rows prune-channel qat
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from netcompress.distill.protocols import fresh_copy  # noqa: E402
from netcompress.measure import count_macs  # noqa: E402


def mlp(data) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def lenet5(data) -> nn.Module:
    return nc.models.create_for("lenet5", data)


def vit(data) -> nn.Module:
    return nc.models.create_for("vit-tiny", data)


def resnet8(data) -> nn.Module:
    return nc.models.create_for("resnet8", data)


# exits: the backbone points the early-exit row attaches heads to (None: the row does not apply, said why);
# rows: the rows run on that model (None: all)
MODELS = {"mlp": ("MLP 784-300-100-10 (nn.Sequential)", mlp, None, None),
          "lenet5": ("lenet5 (zoo)", lenet5, ["features.2", "features.5"], None),
          "vit-tiny": ("vit-tiny (zoo, 4 blocks)", vit, None, ["prune-depth", "prune-channel", "dynamic-auto"]),
          "resnet8": ("resnet8 (zoo)", resnet8, None, ["dynamic-auto"])}


def acc(model: nn.Module, data) -> float:
    return nc.train.evaluate(model, data)


def macs(model: nn.Module, data) -> int:
    return count_macs(model, data.example)


def apply(kind: str, model: nn.Module, data, seed: int, **fields: Any):
    return nc.recipe.apply(kind, model, data, seed=seed, **fields)


def nonzero(model: nn.Module) -> tuple[int, int]:
    kept = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            kept += int((m.weight != 0).sum())
            total += m.weight.numel()
    return kept, total


def random_routing(exits: list[dict[str, Any]], avg_macs: float) -> float:
    """Best accuracy of sending each sample to exit i or j at random, with the mix that costs `avg_macs`
    on average (the upper envelope of the per-exit anytime accuracies, linearly interpolated)."""
    pts = [(float(e["macs"]), float(e["accuracy_all"])) for e in exits]
    best = max((a for c, a in pts if c <= avg_macs), default=0.0)
    for ci, ai in pts:
        for cj, aj in pts:
            if ci < avg_macs < cj:
                w = (avg_macs - ci) / (cj - ci)
                best = max(best, (1 - w) * ai + w * aj)
    return best


# Each row: name -> fn(model, data, seed, exits) -> (default value, {control name: value}, note);
# values are accuracies in [0, 1] unless the row says otherwise.
Row = Callable[[nn.Module, Any, int, list[str]], tuple[float, dict[str, float], str]]


def prune_channel(model, data, seed, exits):
    d = apply("prune", model, data, seed, ratio=0.5)
    r = apply("prune", model, data, seed, ratio=0.5, criterion="random")
    n = apply("prune", model, data, seed, ratio=0.5, epochs=0)
    return acc(d.model, data), {"random": acc(r.model, data), "no fine-tune": acc(n.model, data)}, \
        f"MACs kept {macs(d.model, data) / macs(model, data):.2f}"


def prune_depth(model, data, seed, exits):
    if not hasattr(model, "blocks"):
        return None
    d = apply("prune", model, data, seed, granularity="block", ratio=0.5)
    r = apply("prune", model, data, seed, granularity="block", ratio=0.5, criterion="random")
    n = apply("prune", model, data, seed, granularity="block", ratio=0.5, epochs=0)
    kept = f"blocks kept {d.extra['kept_blocks']}/{d.extra['total_blocks']}"
    return acc(d.model, data), {"random": acc(r.model, data), "no fine-tune": acc(n.model, data)}, \
        f"{kept}, MACs kept {macs(d.model, data) / macs(model, data):.2f}"


def prune_weight(model, data, seed, exits):
    d = apply("prune", model, data, seed, sparsity=0.9)
    r = apply("prune", model, data, seed, sparsity=0.9, criterion="random")
    n = apply("prune", model, data, seed, sparsity=0.9, epochs=0)
    k, t = nonzero(d.model)
    return acc(d.model, data), {"random": acc(r.model, data), "no fine-tune": acc(n.model, data)}, \
        f"weights kept {k / t:.3f}"


def ptq3(model, data, seed, exits):
    d = apply("quantize", model, data, seed, method="uniform", bits=3)
    c = apply("quantize", model, data, seed, method="uniform", bits=3, per_channel=False, observer="minmax")
    return acc(d.model, data), {"per-tensor min/max": acc(c.model, data)}, ""


def qat2(model, data, seed, exits):
    d = apply("quantize", model, data, seed, method="uniform", bits=2, epochs=1)
    c = apply("quantize", model, data, seed, method="uniform", bits=2)
    return acc(d.model, data), {"PTQ 2 bits": acc(c.model, data)}, "QAT: epochs 1 (the default is PTQ)"


def kmeans2(model, data, seed, exits):
    d = apply("quantize", model, data, seed, method="kmeans", bits=2)
    c = apply("quantize", model, data, seed, method="kmeans", bits=2, epochs=0)
    return acc(d.model, data), {"no centroid fine-tune": acc(c.model, data)}, ""


def binary(model, data, seed, exits):
    d = apply("quantize", model, data, seed, method="binary")
    c = apply("quantize", model, data, seed, method="binary", epochs=0)
    return acc(d.model, data), {"sign of trained weights": acc(c.model, data)}, ""


def lowrank(model, data, seed, exits):
    d = apply("design", model, data, seed, op="lowrank", budget=0.1)
    n = apply("design", model, data, seed, op="lowrank", budget=0.1, recover="none")
    s = fresh_copy(d.model)
    nc.train.fit(s, data, seed=seed, progress=False)
    p = sum(x.numel() for x in d.model.parameters()) / sum(x.numel() for x in model.parameters())
    return acc(d.model, data), {"no fine-tune": acc(n.model, data), "same shape from scratch": acc(s, data)}, \
        f"params kept {p:.2f}"


def dynamic(model, data, seed, exits):
    if exits is None:  # the first Linear is 88 % of the MLP's MACs: no exit can cost half
        return None
    d = apply("dynamic", model, data, seed, exits=exits, latency=False)
    ex = d.extra
    ctrl = random_routing(ex["exits"], ex["avg_macs"])
    return ex["accuracy"], {"random routing, same MACs": ctrl}, \
        f"avg MACs {ex['avg_macs_fraction']:.2f} of full (full net {100 * ex['full_accuracy']:.2f} %)"


def dynamic_auto(model, data, seed, exits):
    """The dynamic stage with every default, exits included (placed by `default_exits`)."""
    try:
        d = apply("dynamic", model, data, seed, latency=False)
    except nc.NetcompressError as e:  # a model with no output early enough to exit after: said, not run
        NOT_APPLICABLE["dynamic-auto"] = str(e)
        return None
    ex = d.extra
    ctrl = random_routing(ex["exits"], ex["avg_macs"])
    return ex["accuracy"], {"random routing, same MACs": ctrl, "full network": ex["full_accuracy"]}, \
        f"exits {', '.join(ex['exit_modules'])}; avg MACs {ex['avg_macs_fraction']:.2f} of full"


def sparse_vd(model, data, seed, exits):
    d = apply("sparse-vd", model, data, seed)
    k, t = nonzero(d.model)
    c = apply("prune", model, data, seed, sparsity=1 - k / t)
    return acc(d.model, data), {"l1 weight pruning, same sparsity": acc(c.model, data)}, f"weights kept {k / t:.3f}"


NOT_APPLICABLE = {"dynamic": "the first Linear holds 88 % of the MLP's MACs, so no exit costs under half",
                  "prune-depth": "no repeated block"}

ROWS: dict[str, tuple[str, Row]] = {
    "prune-channel": ("prune channels 50 % (l1)", prune_channel),
    "prune-depth": ("prune blocks 50 % (influence)", prune_depth),
    "prune-weight": ("prune weights 90 % (l1, global)", prune_weight),
    "ptq3": ("quantize uniform 3 bits (PTQ)", ptq3),
    "qat": ("quantize uniform 2 bits, QAT 1 epoch", qat2),
    "kmeans": ("quantize kmeans 2 bits", kmeans2),
    "binary": ("quantize binary (BinaryConnect)", binary),
    "lowrank": ("design lowrank, 0.1 of params", lowrank),
    "dynamic": ("dynamic early exits, budget 0.5", dynamic),
    "dynamic-auto": ("dynamic, every default (exits placed by MACs)", dynamic_auto),
    "sparse-vd": ("sparse-vd", sparse_vd),
}


def run(seeds: int, rows: list[str], models: list[str], result: str = "defaults_stages") -> None:
    torch.set_num_threads(1)
    data = nc.data.load("mnist-5k")
    table, notes = [], []
    for key in models:
        label, make, exits, only = MODELS[key]
        mrows = [r for r in rows if only is None or r in only]
        dense: list[float] = []
        res: dict[str, list[tuple[float, dict[str, float], str]]] = {r: [] for r in mrows}
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = make(data)
            nc.train.fit(model, data, seed=seed, progress=False)
            dense.append(acc(model, data))
            for r in mrows:
                t0 = time.perf_counter()
                out = ROWS[r][1](model, data, seed, exits)
                if out is None:
                    continue
                res[r].append(out)
                print(label, seed, r, f"{out[0]:.4f}", {k: round(v, 4) for k, v in out[1].items()}, out[2],
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        table.append([label, "dense (fit defaults)", mean_std(dense), "", "", "", ""])
        for r in mrows:
            if not res[r]:
                table.append([label, ROWS[r][0], "n/a", "", "", "", NOT_APPLICABLE.get(r, "")])
                continue
            vals = [o[0] for o in res[r]]
            for j, ctrl in enumerate(res[r][0][1]):
                cv = [o[1][ctrl] for o in res[r]]
                gain = statistics.mean(vals) - statistics.mean(cv)
                wins = sum(a > b for a, b in zip(vals, cv))
                table.append([label, ROWS[r][0] if j == 0 else "", mean_std(vals) if j == 0 else "",
                              f"{ctrl}: {mean_std(cv)}", f"{100 * gain:+.2f}", f"{wins}/{seeds}",
                              res[r][0][2] if j == 0 else ""])
            notes.append(f"{label}, {r}: per seed {[round(100 * o[0], 2) for o in res[r]]}; "
                         + "; ".join(f"{c} {[round(100 * o[1][c], 2) for o in res[r]]}" for c in res[r][0][1]))
    body = ("Test accuracy (%), mean ± std over " f"{seeds} seeds; per seed one trained model, and the default "
            "call and its control start from it.\n\n"
            + md_table(["model", "technique (defaults)", "test acc %", "control: test acc %",
                        "default - control (points)", "beats control (seeds)", "note"], table)
            + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_result(result, "Every technique with its defaults vs its control (mnist-5k)", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--result", default="defaults_stages", help="name of the result file")
    t0 = time.perf_counter()
    a = ap.parse_args()
    run(a.seeds, a.rows, a.models, a.result)
    print(f"{time.perf_counter() - t0:.0f} s")
