"""`netcompress distill TEACHER --student NAME --method kd ...`: distil a teacher into a student."""
from __future__ import annotations

import argparse
import json

from netcompress.cli import add_data_args, add_model_args, load_data, load_model, save_output


def _parse_weights(items: list[str] | None) -> dict[str, float]:
    from netcompress.core.errors import NetcompressError

    out = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            sep = ""
        if not sep:
            raise NetcompressError(f"--weight {it!r}: expected NAME=NUMBER, e.g. --weight at=500")
    return out


def cmd_distill(args) -> int:
    from netcompress.distill.protocols import DistillConfig, build_student, make_fit, run_distill
    from netcompress.measure import measure
    from netcompress.train import TrainConfig

    cfg = DistillConfig.from_dict({k: v for k, v in dict(
        method=args.method, student=args.student, temperature=args.temperature, alpha=args.alpha,
        weights=_parse_weights(args.weight),
        layers=[l.split(':', 1) if ':' in l else l for l in args.layer] if args.layer else None, epochs=args.epochs, max_steps=args.max_steps,
        peers=args.peers, generations=args.generations, assistant=args.assistant,
        compare_scratch=args.compare_scratch, hint_epochs=args.hint_epochs).items() if v is not None}, "distill")
    cfg.validate_method()
    data = load_data(args)
    teacher = load_model(args, data)
    student = build_student(cfg.student, data) if cfg.student is not None else None
    if student is None and cfg.method == "dml":
        from netcompress.distill.protocols import fresh_copy

        student = fresh_copy(teacher)
        teacher = None
    train = TrainConfig(epochs=args.epochs or 10, lr=args.lr, batch_size=args.batch_size)
    res = run_distill(cfg, teacher, student, data, make_fit(data, train, seed=args.seed, progress=None))
    save_output(res.student, args.out)
    print(json.dumps(res.extra, indent=1))
    print(measure(res.student, data, file=args.out, latency=False))
    print(f"saved {args.out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("distill", help="train a student from a teacher (kd, fitnet, at, rkd, sp, dml, born-again, takd)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--method", default="kd", help="kd, fitnet, at, rkd, sp, dml, born-again or takd")
    p.add_argument("--student", default=None, help="student zoo name or model file (born-again: the teacher's)")
    p.add_argument("--temperature", type=float, default=None, help="KD temperature (default 4)")
    p.add_argument("--alpha", type=float, default=None, help="KD weight; CE gets 1-alpha")
    p.add_argument("--weight", action="append", metavar="NAME=W", help="loss weight, e.g. at=500, distance=25")
    p.add_argument("--layer", action="append", help="feature module name (repeatable), or STUDENT:TEACHER")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--hint-epochs", type=float, default=None, help="FitNet stage-1 epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--peers", type=int, default=None, help="DML peers")
    p.add_argument("--generations", type=int, default=None, help="Born-Again generations")
    p.add_argument("--assistant", default=None, help="TAKD assistant zoo name (default: width interpolation)")
    p.add_argument("--compare-scratch", action="store_true", help="also train the student alone and report it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output student model file (.pt)")
    p.set_defaults(func=cmd_distill)
