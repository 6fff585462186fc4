"""Why Deep Mutual Learning and Born-Again gain little on mnist-5k: what a same-size model still has
to teach.

DML (Zhang et al. 2018) trains N peers, each on CE + KL to the others' predictions. Its signal is the
peers' disagreement on the training images. On mnist-5k every student here fits its training set
(99.6-100 % training accuracy), so this script measures, after
`nc.distill.distill("dml", None, student, data)` with all defaults (2 peers, T 1, 20 epochs, the
mutual term's weight ramped up to 2 over the first 30 % of the steps):

* the peers' agreement and mutual KL (T 1, nats per image) on the 4,000 training images, where the
  DML term acts, and on the 1,000 test images;
* the mean entropy of a peer's own predictions on the training images (how soft the targets it
  gives the other peer are);
* for contrast, the KD target a teacher gives the same peer: the entropy of a lenet5 teacher's
  softened (T 4) predictions on the training images and the T^2-scaled KL of the peer to them.
Born-Again (Furlanello et al. 2018) distils generation k from generation k-1 of the same
architecture, generation 0 being the student trained alone. After
`nc.distill.distill("born-again", alone, None, data)` with all defaults (2 generations, T 4, alpha 0.9,
20 epochs each) from the 20-epoch student alone, it measures generation 0's training accuracy, the
entropy of its softened (T 4) targets on the training images (where the KD term acts) and on the
test images, and how often generation 1 gives generation 0's class on the test images.
Students: the MLP 784-64-10, lenet5-quarter and lenet5 at width 0.1 of `bench_defaults.py`, 3 seeds.

    python benchmarks/bench_dml_why.py        # ~7 min on 1 core
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from bench_defaults import STUDENTS, train_teacher  # noqa: E402
from netcompress.distill import losses  # noqa: E402


def logits(model, data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a split in its fixed order (`nc.train.predict`, eval mode, the model's mode restored)."""
    return nc.train.predict(model, data.loader(split, batch_size=500, shuffle=False))


def entropy(lg: torch.Tensor, t: float = 1.0) -> float:
    p = F.log_softmax(lg / t, 1)
    return float(-(p.exp() * p).sum(1).mean())


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = nc.data.load("mnist-5k")
    teacher = train_teacher("lenet5", data)
    t_tr, y_tr = logits(teacher, data, "train")
    rows, notes, agree, shrink, ratio = [], [], [], [], []
    ban_rows, ban_notes, ban_soft, ban_fit, ban_copy, ban_pair = [], [], [], [], [], []
    for key, (label, make) in STUDENTS.items():
        r: dict[str, list[float]] = {k: [] for k in ("gain", "agree_tr", "agree_te", "kl_tr", "kl_te", "ent", "kd", "train_acc", "ban",
                                                "ban1", "bane", "g0_train", "g0_ent_tr", "g0_ent_te", "copy", "pair")}
        for seed in range(3):
            torch.manual_seed(seed)
            init = make(data)
            alone = copy.deepcopy(init)
            nc.train.fit(alone, data, seed=seed, progress=False, epochs=20)
            alone_acc = nc.train.evaluate(alone, data)  # the control of DML and of Born-Again
            res = nc.distill.distill("dml", None, copy.deepcopy(init), data, seed=seed)
            p0, p1 = res.models["peer0"], res.models["peer1"]
            (a_tr, _), (b_tr, _) = logits(p0, data, "train"), logits(p1, data, "train")
            (a_te, _), (b_te, _) = logits(p0, data, "test"), logits(p1, data, "test")
            r["gain"].append(res.accuracy - alone_acc)
            r["train_acc"].append(float((a_tr.argmax(1) == y_tr).float().mean()))
            r["agree_tr"].append(float((a_tr.argmax(1) == b_tr.argmax(1)).float().mean()))
            r["agree_te"].append(float((a_te.argmax(1) == b_te.argmax(1)).float().mean()))
            r["kl_tr"].append(float(losses.kd_loss(a_tr, b_tr, 1.0)))
            r["kl_te"].append(float(losses.kd_loss(a_te, b_te, 1.0)))
            r["ent"].append(entropy(a_tr))
            r["kd"].append(float(losses.kd_loss(a_tr, t_tr, 4.0)))
            ban = nc.distill.distill("born-again", alone, None, data, seed=seed)
            (g_tr, _), (g_te, _) = logits(alone, data, "train"), logits(alone, data, "test")
            (n_te, _) = logits(ban.models["gen1"], data, "test")
            r["ban"].append(ban.accuracy - alone_acc)
            r["ban1"].append(ban.extra["generation_acc"][0] - alone_acc)
            r["bane"].append(ban.extra["ensemble_acc"] - alone_acc)
            r["g0_train"].append(float((g_tr.argmax(1) == y_tr).float().mean()))
            r["g0_ent_tr"].append(entropy(g_tr, 4.0))
            r["g0_ent_te"].append(entropy(g_te, 4.0))
            r["copy"].append(float((n_te.argmax(1) == g_te.argmax(1)).float().mean()))
            torch.manual_seed(seed + 100)  # another initialisation, the same data order: a second student alone
            other = make(data)
            nc.train.fit(other, data, seed=seed, progress=False, epochs=20)
            r["pair"].append(float((logits(other, data, "test")[0].argmax(1) == g_te.argmax(1)).float().mean()))
        agree.append(100 * statistics.mean(r["agree_tr"]))
        shrink.append(statistics.mean(r["kl_te"]) / statistics.mean(r["kl_tr"]))
        ratio.append(statistics.mean(r["kd"]) / statistics.mean(r["kl_tr"]))
        f3 = lambda xs: f"{statistics.mean(xs):.4f}"  # noqa: E731
        rows.append([label, mean_std(r["gain"]), mean_std(r["train_acc"]), mean_std(r["agree_tr"]), mean_std(r["agree_te"]),
                     f3(r["kl_tr"]), f3(r["kl_te"]), f3(r["ent"]), f3(r["kd"])])
        notes.append(f"{label}: DML peer 0 - alone (20 epochs), points per seed {[round(100 * g, 1) for g in r['gain']]}")
        ban_soft.append(statistics.mean(r["g0_ent_tr"]))
        ban_fit.append(100 * statistics.mean(r["g0_train"]))
        ban_copy.append(100 * statistics.mean(r["copy"]))
        ban_pair.append(100 * statistics.mean(r["pair"]))
        ban_rows.append([label, mean_std(r["ban1"]), mean_std(r["ban"]), mean_std(r["bane"]), mean_std(r["g0_train"]),
                         f3(r["g0_ent_tr"]), f3(r["g0_ent_te"]), mean_std(r["copy"]),
                         mean_std(r["pair"])])
        ban_notes.append(f"{label}: generation 2 - alone, points per seed {[round(100 * g, 1) for g in r['ban']]}; "
                         f"beats alone on {sum(g > 0 for g in r['ban'])}/3 seeds")
    body = ("Per student, mean (± std for percentages) over seeds 0-2. KL in nats per image; 'teacher T4' is a lenet5 "
            f"teacher (fit defaults, seed 0) whose softened targets have entropy {entropy(t_tr, 4.0):.3f} nats on the "
            f"training images. {time.perf_counter() - t0:.0f} s, 1 thread.\n\n"
            + md_table(["student", "DML - alone (points)", "peer train acc %", "peers agree, train %", "peers agree, test %",
                        "mutual KL train", "mutual KL test", "peer entropy, train", "T²·KL(teacher T4 ‖ peer), train"], rows)
            + "\n" + "\n".join(f"- {n}" for n in notes)
            + f"\n\nReading: at the end the peers classify {min(agree):.2f}-{max(agree):.2f} % of the training images "
              f"alike, and their mutual KL there is {min(shrink):.0f}-{max(shrink):.0f} times smaller than on unseen "
              "images: the DML term, which only sees training images, has almost nothing left to pass on. On the same "
              f"images a teacher's T²-scaled KD term is {min(ratio):.0f}-{max(ratio):.0f} times the mutual KL. Every "
              "student here memorises mnist-5k's 4,000 training images; mutual learning has something to pass on only "
              "where the peers cannot (more data, or augmented views of it). Its default ramp (`defaults_dml.md`) keeps "
              "the term small while the peers are random; late in training there is little left for any weight to "
              "scale.\n"
            + "\n## Born-Again from the student alone\n\n"
              "Generation 0 is the 20-epoch student alone of each row above (the control); generations 1-2 with "
              "`nc.distill.distill('born-again', alone, None, data)` defaults (T 4, alpha 0.9, 20 epochs each). "
              "Entropy of generation 0's T 4 targets in nats per image; 'gen 1 = gen 0, test': the share of the test "
              "images on which generation 1 predicts generation 0's class; 'alone' = gen 0': the same for a second student "
              "trained alone from another initialisation (same data order).\n\n"
            + md_table(["student", "gen 1 - alone (points)", "gen 2 - alone", "ensemble (gens 1-2) - alone",
                        "gen 0 train acc %", "gen 0 T4 entropy, train", "gen 0 T4 entropy, test", "gen 1 = gen 0, test %",
                        "second alone = gen 0, test %"], ban_rows)
            + "\n" + "\n".join(f"- {n}" for n in ban_notes)
            + f"\n\nReading: generation 0's T 4 targets on the training images are soft (entropy {min(ban_soft):.2f}-"
              f"{max(ban_soft):.2f} nats, against {entropy(t_tr, 4.0):.3f} for the lenet5 teacher's), so the generations are "
              f"taught more than labels; but generation 0 is the control itself, fits {min(ban_fit):.2f}-{max(ban_fit):.2f} % "
              f"of the training images, and generation 1 ends up predicting its class on {min(ban_copy):.1f}-"
              f"{max(ban_copy):.1f} % of the test images (a second student alone: {min(ban_pair):.1f}-{max(ban_pair):.1f} %): "
              "a same-size teacher passes on its own fit of the 4,000 training "
              "images, which the student reaches from the labels alone. A teacher that generalises better (KD in "
              "`defaults_distill.md`) or more data is what this task lacks.\n")
    write_result("B5_dml_why", "Why DML and Born-Again gain little on mnist-5k: what a same-size model has left to "
                 "teach on the training images", body)


if __name__ == "__main__":
    main()
