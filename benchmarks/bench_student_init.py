"""B12 half-size student: does a student cut out of the teacher (DistilBERT / Minitron) close the gap?

Per seed, in one process, the converged dense model of the transformer benchmarks (gpt-tiny 800
steps AdamW 3e-3 cosine on pydoc-text; vit-tiny 30 epochs AdamW 2e-3 cosine on mnist-5k), then the
half-depth, half-width student (gpt-tiny-half / vit-tiny-half architecture) trained for the same
budget as the dense model, four ways:
  - alone: the zoo's half model from its own initialisation, labels only (the control);
  - KD: the same initialisation, logit KD (T 2, alpha 0.5);
  - cut + labels: `nc.distill.student_from_teacher(teacher, data, depth=0.5, width=0.5)` (the most
    influential half of the blocks, then half of every head / MLP / embedding group by L1; the ViT's
    conv stem keeps its width so the shape is vit-tiny-half's), labels only;
  - cut + KD: that student, logit KD.
gpt-tiny adds the two KD rows at T 1 (alpha 0.5) and a row that picks, per seed, T 1 or T 2 by the
student's perplexity on the validation topics (never the test topics): per-token distributions over
256 bytes, softened at T 2, spread the teacher's mass over bytes it gives almost none.
Gap recovered = (dense - alone) minus (dense - method), over (dense - alone), summed over seeds.
Goal (issue 15): KD recovers >= 50 % of the gap.

    python benchmarks/bench_student_init.py --skip-vit    # gpt-tiny, 3 seeds, about 40 min on 1 core
    python benchmarks/bench_student_init.py --skip-gpt    # vit-tiny, 3 seeds, about 27 min on 1 core
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, write_result  # noqa: E402
from bench_transformers import GPT_STEPS, GPT_TRAIN, VIT_EPOCHS, VIT_TRAIN, dense_gpt, dense_vit, ms, ppl, run_seeds  # noqa: E402
from netcompress.distill.methods import KD  # noqa: E402
from netcompress.train import TrainConfig  # noqa: E402
from netcompress.train.lm import evaluate_lm  # noqa: E402

ROWS = [("alone", "alone (zoo half model, labels)"), ("kd", "KD (same init, logits T 2, alpha 0.5)"),
        ("cut", "cut from the teacher, labels"), ("cut_kd", "cut from the teacher, KD")]
GPT_ROWS = ROWS + [("kd_t1", "KD (same init, logits T 1, alpha 0.5)"), ("cut_kd_t1", "cut from the teacher, KD T 1"),
                   ("cut_kd_chosen", "cut from the teacher, KD, T (1 or 2) chosen on validation")]


def students(base, data, half: str, train, score, ignore=(), val=None) -> dict:
    """The four students of one seed: {row: score, row_s: seconds}, plus the cut model's score before
    training. With `val` (a validation scorer, lower is better) the two KD students are also trained
    at T 1 and 'cut_kd_chosen' is the cut KD student whose validation score is lower."""
    scratch = nc.models.create_for(half, data)
    t = time.perf_counter()
    cut = nc.distill.student_from_teacher(base, data, depth=0.5, width=0.5, ignore=ignore)
    r = {"cut_s": time.perf_counter() - t, "cut_untrained": score(cut),
         "same_shape": all(a.shape == b.shape for a, b in zip(cut.state_dict().values(), scratch.state_dict().values()))
         and len(cut.state_dict()) == len(scratch.state_dict())}
    runs = [("alone", scratch, None), ("kd", scratch, 2.0), ("cut", cut, None), ("cut_kd", cut, 2.0)]
    if val is not None:
        runs += [("kd_t1", scratch, 1.0), ("cut_kd_t1", cut, 1.0)]
    for row, init, temp in runs:
        r[row], r[f"{row}_s"], r[f"{row}_val"] = trained(init, base if temp else None, train, score, temp or 2.0, val)
    if val is not None:
        r["cut_kd_chosen"] = r["cut_kd_t1"] if r["cut_kd_t1_val"] < r["cut_kd_val"] else r["cut_kd"]
        r["cut_kd_chosen_s"] = r["cut_kd_s"] + r["cut_kd_t1_s"]
    return r


def trained(init, teacher, train, score, temperature: float = 2.0, val=None) -> tuple:
    """(score, seconds including the scoring, validation score or None) of a copy of `init` trained
    by `train` on labels, or by logit KD (`temperature`, alpha 0.5) from `teacher` when one is given."""
    m, t = copy.deepcopy(init), time.perf_counter()
    k = [KD(teacher, temperature, 0.5)] if teacher is not None else []
    train(m, methods=k, loss_fn=k[0].task_loss if k else None)
    if k:
        k[0].finalize(m)
    return score(m), time.perf_counter() - t, None if val is None else val(m)


def gpt_trainer(data, seed: int, steps: int = GPT_STEPS):
    """`train(model, **fit kwargs)`: the gpt-tiny budget (`steps`, batch 16 x 128 bytes, AdamW 3e-3 cosine)."""
    def train(m, **kw):
        nc.train.fit(m, data, epochs=100, max_steps=steps, seed=seed, progress=False, evaluate_each_epoch=False,
                     schedule="cosine", **GPT_TRAIN, **kw)

    return train


def gpt_seed(seed: int) -> dict:
    base, data = dense_gpt(seed)
    return {"dense": ppl(base, data),
            **students(base, data, "gpt-tiny-half", gpt_trainer(data, seed), lambda m: ppl(m, data),
                       val=lambda m: evaluate_lm(m, data, "val")["perplexity"])}


def vit_seed(seed: int) -> dict:
    base, data = dense_vit(seed)
    cfg = TrainConfig(epochs=VIT_EPOCHS, **VIT_TRAIN)

    def train(m, **kw):
        nc.train.fit(m, data, cfg, seed=seed, progress=False, evaluate_each_epoch=False, **kw)

    score = lambda m: 100 * nc.train.evaluate(m, data)  # noqa: E731
    return {"dense": score(base), **students(base, data, "vit-tiny-half", train, score, ignore=["patch_embed.0"])}


def table(runs: list[dict], unit: str, lower_better: bool, keys=ROWS) -> str:
    sign = -1 if lower_better else 1
    gap = sum(sign * (r["dense"] - r["alone"]) for r in runs)
    rows = [["dense (teacher)", ms([r["dense"] for r in runs]), "", ""]]
    for key, label in keys:
        rec = sum(sign * (r[key] - r["alone"]) for r in runs) / gap
        beats = sum(sign * (r[key] - r["alone"]) > 0 for r in runs)
        rows.append([label, ms([r[key] for r in runs]), "" if key == "alone" else f"{rec:.2f}",
                     "" if key == "alone" else f"{beats}/{len(runs)}"])
    per_seed = "; ".join(f"seed {i}: " + ", ".join(f"{k} {r[k]:.3f}" for k in ("dense", "alone", "kd", "cut", "cut_kd"))
                         + "".join(f", {k} {r[k]:.3f}" for k, _ in keys[len(ROWS):]) for i, r in enumerate(runs))
    return (md_table(["student", unit, "gap recovered", "beats alone (seeds)"], rows)
            + f"\nThe cut student before training: {ms([r['cut_untrained'] for r in runs])} ({unit}); cut in "
            f"{ms([r['cut_s'] for r in runs], 1)} s; same parameter shapes as the zoo half model: "
            f"{all(r['same_shape'] for r in runs)}. Seconds per student: "
            + ", ".join(f"{k} {ms([r[f'{k}_s'] for r in runs], 0)}" for k, _ in keys) + f".\n\n{per_seed}\n"
            + ("" if keys is ROWS else "\nValidation perplexity of the KD students (the T choice): "
               + "; ".join(f"seed {i}: cut T 2 {r['cut_kd_val']:.3f}, cut T 1 {r['cut_kd_t1_val']:.3f}, "
                           f"fresh T 2 {r['kd_val']:.3f}, fresh T 1 {r['kd_t1_val']:.3f}" for i, r in enumerate(runs)) + "\n"))


def main() -> None:
    t0 = time.perf_counter()
    a, v, g = run_seeds(__doc__, vit_seed, gpt_seed)
    head = (f"Seeds {a.seeds}; 1 thread; {time.perf_counter() - t0:.0f} s. Every student trains as long as its teacher "
            f"did (gpt {GPT_STEPS} steps batch 16 x 128 bytes, AdamW 3e-3 cosine; vit {VIT_EPOCHS} epochs AdamW 2e-3 "
            "cosine). Gap recovered: summed over seeds, relative to the student alone.\n")
    if g:
        write_result("B12_student_init_gpt", "B12: half-size gpt-tiny student, cut from the teacher or trained from scratch",
                     head + "\n## gpt-tiny on pydoc-text (test perplexity)\n\n" + table(g, "test perplexity", True, GPT_ROWS))
    if v:
        write_result("B12_student_init_vit", "B12: half-size vit-tiny student, cut from the teacher or trained from scratch",
                     head + "\n## vit-tiny on mnist-5k (test accuracy %)\n\n" + table(v, "test accuracy %", False))


if __name__ == "__main__":
    main()
