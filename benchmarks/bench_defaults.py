"""Defaults that work: every distiller with every default vs the same student trained alone with every default.

Teacher: lenet5 trained with `nc.train.fit` defaults (10 epochs, lr 0.05) on mnist-5k. Students,
each from the same initial weights per seed:
  - alone:   `nc.train.fit(student, data)`                       (defaults: 10 epochs, lr 0.05)
  - METHOD:  `nc.distill.distill(METHOD, teacher, student, data)` for kd, fitnet, at, rkd, sp, dml,
             born-again, takd, with no other argument (their defaults: T 4, alpha 0.9 for the KD
             methods at lr train.lr / T; AT / RKD / SP at the papers' weights, balanced on the first
             step; DML 2 peers; Born-Again 2 generations from the teacher; TAKD's assistant by width)
  - KD CLI:  `netcompress distill teacher.pt --data mnist-5k --student student.pt --out s.pt`
             (zoo student only: a plain nn.Sequential has no name for a command line)
on a plain user MLP (784-64-10, nn.Sequential) and on the zoo student lenet5-quarter; 3 seeds.
AT needs spatial feature maps, so it does not apply to the MLP (the call fails with one line).

    python benchmarks/bench_defaults.py            # ~15 min on 1 CPU core
    python benchmarks/bench_defaults.py --methods kd dml --seeds 1
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from netcompress.cli import main  # noqa: E402
from netcompress.core.errors import NetcompressError  # noqa: E402

METHODS = ["kd", "fitnet", "at", "rkd", "sp", "dml", "born-again", "takd"]


def mlp(data) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def zoo(data) -> nn.Module:
    return nc.models.create_for("lenet5-quarter", data)


STUDENTS = {"mlp": ("MLP 784-64-10 (nn.Sequential)", mlp), "lenet5-quarter": ("lenet5-quarter (zoo)", zoo)}
EXTRA_ACC = {"dml": "ensemble_acc", "born-again": "ensemble_acc", "takd": "assistant_acc"}


def run(seeds: int, methods: list[str], students: list[str]) -> None:
    torch.set_num_threads(1)
    data = nc.data.load("mnist-5k")
    tmp = Path(tempfile.mkdtemp(prefix="bench-defaults-"))
    torch.manual_seed(0)
    teacher = nc.models.create_for("lenet5", data)
    nc.train.fit(teacher, data, progress=False)
    t_acc = nc.train.evaluate(teacher, data)
    nc.models.save(teacher, tmp / "teacher.pt")
    rows, notes = [], []
    for key in students:
        label, make = STUDENTS[key]
        alone: list[float] = []
        acc: dict[str, list[float]] = {m: [] for m in methods}
        extra: dict[str, list[float]] = {m: [] for m in methods if m in EXTRA_ACC}
        cli: list[float] = []
        na: dict[str, str] = {}
        for seed in range(seeds):
            torch.manual_seed(seed)
            init = make(data)
            a = copy.deepcopy(init)
            nc.train.fit(a, data, seed=seed, progress=False)
            alone.append(nc.train.evaluate(a, data))
            for m in methods:
                if m in na:
                    continue
                try:
                    res = nc.distill.distill(m, teacher, copy.deepcopy(init), data, seed=seed)
                except NetcompressError as e:  # a method that does not apply to this student
                    na[m] = str(e)
                    continue
                acc[m].append(res.accuracy)
                if m in extra:
                    extra[m].append(res.extra[EXTRA_ACC[m]])
                print(label, seed, m, f"alone {alone[-1]:.4f} {m} {res.accuracy:.4f}", flush=True)
            if make is zoo and "kd" in methods:  # a plain nn.Sequential has no name a command line could give
                nc.models.save(init, tmp / "student.pt")
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = main(["distill", str(tmp / "teacher.pt"), "--data", "mnist-5k", "--student",
                               str(tmp / "student.pt"), "--seed", str(seed), "--out", str(tmp / "s.pt")])
                assert rc == 0
                cli.append(nc.train.evaluate(nc.models.load(tmp / "s.pt"), data))
        rows.append([label, "alone (fit defaults)", mean_std(alone), "", "", ""])
        for m in methods:
            if m in na:
                rows.append([label, m, "n/a", "", "", na[m]])
                continue
            gain = statistics.mean(acc[m]) - statistics.mean(alone)
            wins = sum(x > y for x, y in zip(acc[m], alone))
            note = ""
            if m in extra:
                note = f"{EXTRA_ACC[m].replace('_acc', '')} {mean_std(extra[m])}"
            if m == "kd" and cli:
                note = f"CLI `netcompress distill` defaults: {mean_std(cli)}"
            rows.append([label, m, mean_std(acc[m]), f"{100 * gain:+.2f}", f"{wins}/{seeds}", note])
        notes.append(f"{label}: per seed alone {[round(100 * x, 2) for x in alone]}; "
                     + "; ".join(f"{m} {[round(100 * x, 2) for x in acc[m]]}" for m in methods if m not in na))
    body = (f"Teacher lenet5 (fit defaults, seed 0): {100 * t_acc:.2f} %. Test accuracy (%), mean ± std over "
            f"{seeds} seeds; for each seed every student starts from the same weights.\n\n"
            + md_table(["student", "method (all defaults)", "test acc %", "method - alone (points)",
                        "beats alone (seeds)", "note"], rows)
            + "\n" + "\n".join(f"- {n}" for n in notes)
            + "\n\nDefaults that matter here: the KD-term methods train at train.lr / T = 0.0125 "
              "(`netcompress.distill.default_lr`: the T²-scaled KD gradient is up to T times a CE "
              "gradient); AT / RKD / SP lower the papers' weights on the first step so the feature "
              "term starts no larger than the cross-entropy (at the paper's weights AT reached 7.4 % "
              "and SP 22 % on lenet5-quarter). The Python function and the CLI command are the same "
              "handler with the same config, so KD's CLI column agrees with the Python one seed by seed.\n")
    write_result("defaults_distill", "Every distiller with default arguments vs the student alone (mnist-5k)", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    ap.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS))
    t0 = time.perf_counter()
    a = ap.parse_args()
    run(a.seeds, a.methods, a.students)
    print(f"{time.perf_counter() - t0:.0f} s")
