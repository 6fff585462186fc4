"""B5: knowledge distillation on mnist-5k -- every netcompress method next to the scratch student, and
torchdistill 1.1.5's loss implementations for the methods it has (KD, FitNet, AT, RKD, SP).

How torchdistill is compared: its full runner needs YAML configs that build models and data through
its own registries, so instead its *loss classes* (`KDLoss`, `ATLoss(mode="code")`, `RKDLoss`,
`SPKDLoss`, and `SimpleLossWrapper(nn.MSELoss)` for the FitNet hint) and its *feature capture*
(`ForwardHookManager`) run inside the same training loop (`netcompress.train.fit`, through one
Method), with identical data order, student initialisation (same seed), teacher, layers, loss weights,
temperature, schedule and epochs. Differences in accuracy therefore come from the loss code only, and
the epoch-time ratio measures the per-step overhead of the two implementations.

    python benchmarks/bench_distill.py            # short default (see the table header for budgets)
    python benchmarks/bench_distill.py --full     # longer: teacher 15 epochs, students 10 epochs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netcompress as nc  # noqa: E402
from _common import md_table, mean_std, write_result  # noqa: E402
from netcompress.core.method import Method  # noqa: E402
from netcompress.distill import DistillConfig, make_fit, run_distill  # noqa: E402
from netcompress.distill.features import make_adapter, probe  # noqa: E402
from netcompress.distill.methods import zero_task_loss  # noqa: E402

STUDENT = ("lenet5", {"width": 0.1})  # 4,867 parameters vs the teacher's 431,080


class TorchdistillTerm(Method):
    """Runs one torchdistill loss module on io-dicts captured by torchdistill's ForwardHookManager."""

    name = "torchdistill"

    def __init__(self, teacher, loss, student_paths, teacher_paths, weight=1.0, regressor=None, guided=None):
        self.teacher, self.loss, self.weight = teacher, loss, weight
        self.s_paths, self.t_paths = list(student_paths), list(teacher_paths)
        self.regressor, self.guided = regressor, guided

    def prepare(self, model):
        from torchdistill.core.forward_hook import ForwardHookManager

        dev = next(model.parameters()).device
        self.fs, self.ft = ForwardHookManager(dev), ForwardHookManager(dev)
        for p in self.s_paths:
            self.fs.add_hook(model, p, requires_input=False, requires_output=True)
        for p in self.t_paths:
            self.ft.add_hook(self.teacher, p, requires_input=False, requires_output=True)
        self.teacher.eval()
        return model

    def extra_parameters(self):
        return list(self.regressor.parameters()) if self.regressor is not None else []

    def loss_terms(self, model, x, y, out):
        with torch.no_grad():
            t_out = self.teacher(x)
        s_io, t_io = self.fs.pop_io_dict(), self.ft.pop_io_dict()
        s_io["logits"], t_io["logits"] = {"output": out}, {"output": t_out}
        if self.regressor is not None:
            s_io["regressor"] = {"output": self.regressor(s_io[self.guided]["output"])}
        return {"td": self.weight * self.loss(s_io, t_io, y)}

    def finalize(self, model):
        self.fs.clear()
        self.ft.clear()
        return model


def td_method(method, teacher, pairs, cfg: DistillConfig, example):
    from torchdistill.losses.mid_level import ATLoss, KDLoss, RKDLoss, SimpleLossWrapper, SPKDLoss

    if method == "kd":  # torchdistill's alpha weighs CE, beta the KL: ours alpha=0.9 -> (0.1, 0.9)
        loss = KDLoss("logits", "output", "logits", "output", temperature=cfg.temperature, alpha=0.1, beta=0.9)
        return TorchdistillTerm(teacher, loss, [], []), zero_task_loss
    s_paths, t_paths = [p[0] for p in pairs], [p[1] for p in pairs]
    if method in ("at", "at-w50"):
        at_pairs = {f"p{i}": {"student": {"io": "output", "path": s}, "teacher": {"io": "output", "path": t}, "weight": 1}
                    for i, (s, t) in enumerate(pairs)}
        return TorchdistillTerm(teacher, ATLoss(at_pairs, mode="code"), s_paths, t_paths, 500.0), None
    if method == "rkd":
        loss = RKDLoss(s_paths[0], t_paths[0], dist_factor=25.0, angle_factor=50.0, reduction="mean")
        return TorchdistillTerm(teacher, loss, s_paths, t_paths), None
    if method == "sp":
        return TorchdistillTerm(teacher, SPKDLoss(s_paths[0], t_paths[0], reduction="batchmean"), s_paths, t_paths, 3000.0), None
    if method == "hint":
        s_shape = dict(probe(STUDENT_MODEL_FOR_SHAPES, example))[s_paths[0]]
        t_shape = dict(probe(teacher, example))[t_paths[0]]
        reg = make_adapter(s_shape, t_shape, always=True)
        loss = SimpleLossWrapper(nn.MSELoss(), input={"is_from_teacher": False, "module_path": "regressor", "io": "output"},
                                 target={"is_from_teacher": True, "module_path": t_paths[0], "io": "output"})
        return TorchdistillTerm(teacher, loss, s_paths, t_paths, regressor=reg, guided=s_paths[0]), zero_task_loss
    raise ValueError(method)


STUDENT_MODEL_FOR_SHAPES = None

NOTES = """
Notes
- Learning rate: the student lr is {lr} for every row (scratch included). At the recipe default 0.05 the
  T^2-scaled KD gradient (T=4) kills this BatchNorm-free student (training accuracy stays ~12 %, so the
  choice is made on the training curve, not the test set). With 6 epochs at lr 0.01 (teacher 10 epochs)
  KD recovers more of the gap than with 3 epochs at 0.02 (B5_distill_3ep_lr0.02.md).
- AT: the paper's beta = 1e3 (weight 500 on the authors' per-position mean) is calibrated on CIFAR maps
  (32x32 .. 8x8); on LeNet's 24x24 .. 4x4 maps that term is ~30x CE at the start and, used as it is, collapses
  this student to one class (torchdistill's ATLoss gives the same, bit-for-bit, with that weight). Row "at" is
  netcompress's default: the paper's weight, lowered on the first step so the AT term starts no larger than
  the CE. Row "at-w50" gives weight 50 explicitly (used as given: AT term about CE at the start), in both
  implementations.
- SP: torchdistill 1.1.5's SPKDLoss calls `normalize(G, 1)`, i.e. p=1 (rows L1-normalised), while the paper
  (Tung & Mori 2019, eq. 2) and netcompress use the L2 row norm; with the same gamma=3000 torchdistill's term is
  therefore smaller. Every other shared loss matches ours to float precision on random tensors (KD, RKD, AT
  code/paper modes), so those accuracy differences come from float-order effects and the FitNet regressor's
  initialisation only.
- Temperature: T=4 is the CIFAR convention (CRD, torchdistill configs); row "kd-T20" uses Hinton et al.'s
  MNIST setting T=20 (reported next to it whatever it gives, not selected).
- Longer budget: a `--full` run (teacher 15 epochs, students 10 epochs) was started on this machine and stopped
  for lack of time after seed 0's first rows: KD (T=4, lr 0.02) collapsed to 7.4 % (one class) in *both*
  netcompress and torchdistill (identical loss), FitNet reached 95.3 %. The 4,867-parameter, BatchNorm-free
  student (2 conv1 filters) is fragile under the T^2-scaled KD term, whose value starts ~70x the CE's.
- Timing: mean seconds per training epoch of the distillation phase (teacher forward included; FitNet averages
  the hint and KD stages), single thread; for each shared method the two implementations run back to back in
  the same process, in alternating order from seed to seed. The 2-core machine may be shared with other jobs,
  so absolute seconds are noisy; read the ratio column only.
"""


def epoch_seconds(hist_lists):
    secs = [e["seconds"] for h in hist_lists for e in h]
    return statistics.mean(secs) if secs else float("nan")


def main() -> None:
    global STUDENT_MODEL_FOR_SHAPES
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--teacher-epochs", type=float, default=None)
    ap.add_argument("--lr", type=float, default=0.02, help="student learning rate (every method and scratch)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--student", default="lenet5:0.1", help="student zoo NAME:WIDTH, e.g. resnet8:0.25 (BatchNorm)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    global STUDENT
    name, _, width = args.student.partition(":")
    STUDENT = (name, {"width": float(width or 1.0)})
    suffix = "" if args.student == "lenet5:0.1" else "_" + name.replace("-", "_")
    ep = args.epochs or (10 if args.full else 3)
    tep = args.teacher_epochs or (15 if args.full else 5)
    hint_ep = max(1.0, ep / 3)
    t_start = time.perf_counter()
    data = nc.data.load("mnist-5k")
    shape = dict(num_classes=10, in_channels=1, input_size=28)

    torch.manual_seed(0)
    teacher = nc.models.create("lenet5", **shape)
    th = nc.train.fit(teacher, data, epochs=tep, seed=0, progress=False)
    t_acc = th.final_test_acc
    STUDENT_MODEL_FOR_SHAPES = nc.models.create(STUDENT[0], **shape, **STUDENT[1])
    # label -> (method, DistillConfig overrides). "at" is the default: the paper's weight (beta/2 = 500),
    # balanced on the first step to start no larger than CE (used as it is, it collapses this student to
    # ~10 % training accuracy, see the note); "at-w50" gives weight 50, chosen from the training-loss
    # scale (AT term comparable to CE at the start), not from test accuracy.
    # at / rkd / sp at alpha 0 (CE + their term, as torchdistill's configs here; their default adds KD)
    ours = {"scratch": None, "kd": ("kd", {}), "kd-T20": ("kd", {"temperature": 20.0}), "fitnet": ("fitnet", {}),
            "at": ("at", {"alpha": 0.0}),
            "at-w50": ("at", {"weights": {"at": 50.0}, "alpha": 0.0}), "rkd": ("rkd", {"alpha": 0.0}),
            "sp": ("sp", {"alpha": 0.0}),
            "dml": ("dml", {}), "born-again": ("born-again", {}), "takd": ("takd", {})}
    shared = ["kd", "fitnet", "at-w50", "rkd", "sp"]
    acc = {m: [] for m in ours}
    tacc = {m: [] for m in shared}
    secs = {m: [] for m in ours}
    tsecs = {m: [] for m in shared}
    extras = {"dml": [], "born-again": [], "takd": []}

    pairs: dict = {}
    td_fail: dict = {}
    for seed in range(args.seeds):
        def student():
            torch.manual_seed(1000 + seed)
            return nc.models.create(STUDENT[0], **shape, **STUDENT[1])

        fit_fn = make_fit(data, seed=seed, progress=False, epochs=ep, lr=args.lr)
        s = student()
        h = fit_fn(s, tag="scratch")
        acc["scratch"].append(h.final_test_acc)
        secs["scratch"].append(epoch_seconds([h.to_list()]))
        scratch_model = s
        def run_ours(m):
            method, over = ours[m]
            cfg = DistillConfig(**{"method": method, "temperature": 4.0, "epochs": ep, "hint_epochs": hint_ep,
                                   "peers": 2, "generations": 2, "compare_direct": False, **over})
            tch = scratch_model if m == "born-again" else teacher
            r = run_distill(cfg, tch, student() if m != "born-again" else None, data, fit_fn)
            acc[m].append(r.accuracy)
            main_phase = {"fitnet": ["hint", "kd"], "takd": ["student"]}.get(method, list(r.histories))
            secs[m].append(epoch_seconds([r.histories[k] for k in main_phase]))
            pairs[m] = r.extra.get("layer_pairs") or r.extra.get("hint_pairs")
            if m in extras:
                extras[m].append(r.extra)
            print(f"seed {seed} {m}: {r.accuracy:.4f} ({time.perf_counter() - t_start:.0f}s)", flush=True)

        def run_td(m):
            cfg = DistillConfig(method="kd", temperature=4.0)
            s = student()
            hists = []
            if m == "fitnet":
                hint, lf = td_method("hint", teacher, pairs["fitnet"], cfg, data.example)
                try:
                    hists.append(fit_fn(s, methods=[hint], loss_fn=lf, tag="td-hint", epochs=hint_ep).to_list())
                finally:
                    hint.finalize(s)
                meth, lf = td_method("kd", teacher, None, cfg, data.example)
            else:
                meth, lf = td_method(m, teacher, pairs.get(m), cfg, data.example)
                if m == "at-w50":
                    meth.weight = 50.0
            try:
                hists.append(fit_fn(s, methods=[meth], loss_fn=lf, tag=f"td-{m}").to_list())
            except RuntimeError as e:  # e.g. ATLoss cannot compare maps of different spatial sizes
                td_fail[m] = str(e).splitlines()[0][:90]
                print(f"seed {seed} torchdistill {m}: failed: {td_fail[m]}", flush=True)
                return
            finally:
                meth.finalize(s)
            tacc[m].append(hists[-1][-1]["test_acc"])
            tsecs[m].append(epoch_seconds(hists))
            print(f"seed {seed} torchdistill {m}: {tacc[m][-1]:.4f} ({time.perf_counter() - t_start:.0f}s)", flush=True)

        # shared methods: ours and torchdistill back to back, order alternating by seed (layer pairs are
        # seed-independent, so seed 0 runs ours first to learn them)
        for m in list(ours)[1:]:
            if m in shared and not args.no_peer and m not in td_fail:
                for run in ((run_ours, run_td) if seed % 2 == 0 or m not in pairs else (run_td, run_ours)):
                    run(m)
            else:
                run_ours(m)

    sc = statistics.mean(acc["scratch"])
    rows = []
    for m in ours:
        mean = statistics.mean(acc[m])
        rec = (mean - sc) / (t_acc - sc) if t_acc != sc else float("nan")
        beats = sum(a > b for a, b in zip(acc[m], acc["scratch"]))
        row = [m, mean_std(acc[m]), f"{100 * (mean - sc):+.2f}", f"{100 * rec:.0f} %" if m != "scratch" else "",
               f"{beats}/{len(acc[m])}" if m != "scratch" else "", f"{statistics.mean(secs[m]):.2f}"]
        if m in shared and tacc[m]:
            tm = statistics.mean(tacc[m])
            row += [mean_std(tacc[m]), f"{100 * (mean - tm):+.2f}", f"{statistics.mean(tsecs[m]):.2f}",
                    f"{statistics.mean(secs[m]) / statistics.mean(tsecs[m]):.2f}"]
        elif m in td_fail:
            row += [f"fails: {td_fail[m]}", "", "", ""]
        else:
            row += ["", "", "", ""]
        rows.append(row)
    body = (f"Teacher lenet5 (431,080 params) trained once (seed 0, {tep:g} epochs): **{100 * t_acc:.2f} %**. "
            f"Student {STUDENT[0]} width {STUDENT[1]['width']:g} ({sum(p.numel() for p in STUDENT_MODEL_FOR_SHAPES.parameters()):,} params), {ep:g} epochs per training phase (FitNet: {hint_ep:g} hint "
            f"epochs + {ep:g} KD epochs; Born-Again: 2 generations taught from the scratch student of the same seed; "
            f"TAKD: assistant by width interpolation, {ep:g} epochs each phase), SGD lr {args.lr:g} cosine, batch 64, "
            f"{args.seeds} seeds (student init and data order), last-epoch test accuracy on the fixed 1,000-image "
            f"test split, torch threads 1. {'Full budget.' if args.full else 'Short default budget (use --full for 10/15 epochs).'}\n\n"
            "Defaults: T=4, alpha=0.9 (kd, fitnet stage 2, born-again, takd); AT weight 500 (beta/2, beta=1e3, "
            "authors' code mode) on the last layer of each resolution; RKD 25/50 and SP 3000 on the penultimate "
            "embedding (classifier.1); DML 2 peers, T=1, the mutual weight ramped up to 2 over the first 30 % of the "
            "steps.\n\n")
    if suffix:
        body += (f"Student {STUDENT[0]} is a BatchNorm network: at lr {args.lr:g} and {ep:g} epochs its scratch run is far from "
                 "converged (BatchNorm test accuracy is unstable early), so the gaps here are large and noisy. The notes at "
                 "the end were written for the default lenet5-width-0.1 table; torchdistill's ATLoss raises when student "
                 "and teacher maps differ in size (here 28x28 vs 24x24), ours pools them to the smaller size.\n\n")
    body += md_table(["method", "ours acc %", "vs scratch", "gap recovered", "beats scratch (seeds)",
                      "ours s/epoch", "torchdistill acc %", "ours - td", "td s/epoch", "time ratio ours/td"], rows)
    body += "\nMulti-model protocols (means over seeds):\n\n"
    dm = extras["dml"]
    ba = extras["born-again"]
    tk = extras["takd"]
    mrows = []
    if dm:
        for i in range(len(dm[0]["peer_acc"])):
            mrows.append([f"DML peer {i}", mean_std([e["peer_acc"][i] for e in dm])])
        mrows.append(["DML ensemble", mean_std([e["ensemble_acc"] for e in dm])])
    if ba:
        mrows.append(["Born-Again generation 0 (scratch student)", mean_std(acc["scratch"])])
        for k in range(len(ba[0]["generation_acc"])):
            mrows.append([f"Born-Again generation {k + 1}", mean_std([e["generation_acc"][k] for e in ba])])
        mrows.append(["Born-Again ensemble (gens 1..K)", mean_std([e["ensemble_acc"] for e in ba])])
    if tk:
        mrows.append([f"TAKD assistant ({tk[0]['assistant_params']} params)", mean_std([e["assistant_acc"] for e in tk])])
        mrows.append(["TAKD student", mean_std(acc["takd"])])
        mrows.append(["direct KD student (same seeds)", mean_std(acc["kd"])])
    body += md_table(["model", "acc %"], mrows)
    body += f"\nTotal wall time {time.perf_counter() - t_start:.0f} s.\n"
    body += NOTES.replace("{lr}", f"{args.lr:g}")
    write_result(("B5_distill_full" if args.full else "B5_distill") + suffix, "B5: knowledge distillation on mnist-5k (netcompress vs torchdistill 1.1.5)", body)


if __name__ == "__main__":
    main()
