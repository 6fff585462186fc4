"""CLI commands generated from the stage kinds: `netcompress KIND MODEL --data D [config flags] --out F`.

Every registered `StageKind` gets a command of its name. Its flags are its config's fields
(``max_steps`` -> ``--max-steps``; type, choices, default and description from the field), so a
command can neither miss a setting nor carry a default of its own: flags that are not given leave
the config's default, exactly as an absent key in a recipe. Values of structured fields (dicts,
nested configs, unions) are JSON or ``KEY=VALUE[,KEY=VALUE]``; list fields take several values.

The generic arguments are shared: MODEL (the stage input; also the recipe's ``baseline``, so a
distillation's teacher), ``--data``, ``--seed``, ``--train-*`` (the recipe's ``train:`` defaults),
``--out``, ``--work-dir`` / ``--resume`` (checkpoints), ``--figures``, ``--json``. The command
then calls `netcompress.recipe.apply`, the same handler a recipe stage runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from netcompress.archive import unpack
from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.data import load as load_data
from netcompress.measure import count_macs, count_params, measure
from netcompress.models import create_for, load as load_model_file, save
from netcompress.models.io import atomic_write
from netcompress.recipe.stages import STAGES, StageKind, apply
from netcompress.train.loop import TrainConfig
from netcompress.train.distributed import is_main
from netcompress.train.stage import StageContext

GENERIC = {"data", "data_dir", "seed", "out", "work_dir", "resume", "figures", "json", "dry_run",
           "trust_python", "debug", "help"}
_SIMPLE = (int, float, str)


def _strip_none(ann: Any) -> Any:
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]
    return ann


def _admits_dict(ann: Any) -> bool:
    if typing.get_origin(ann) is dict or (isinstance(ann, type) and issubclass(ann, BaseModel)):
        return True
    return any(_admits_dict(a) for a in typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType))


def _structured(ann: Any):
    """A converter for one command-line word of a structured field: JSON, KEY=VALUE pairs or a string."""

    def convert(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            pass
        if "=" in text and _admits_dict(ann):
            out: dict[str, Any] = {}
            for part in text.split(","):
                k, sep, v = part.partition("=")
                if not sep or not k.strip():
                    raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE[,KEY=VALUE] or JSON")
                try:
                    out[k.strip()] = json.loads(v)
                except ValueError:
                    out[k.strip()] = v
            return out
        return text

    convert.__name__ = "value"
    return convert


def _bool_or_words(ann: Any) -> tuple[str, ...] | None:
    """The names of a ``bool | Literal[...]`` annotation (None for any other annotation)."""
    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(ann)
    lits = [a for a in args if typing.get_origin(a) is typing.Literal]
    if bool not in args or len(lits) + 1 != len(args):
        return None
    words = tuple(w for lit in lits for w in typing.get_args(lit))
    return words if all(isinstance(w, str) for w in words) else None


def _bool_or_word(text: str) -> bool | str:
    low = text.strip().lower()
    return True if low == "true" else False if low == "false" else text


def _flag_kwargs(name: str, f: FieldInfo) -> dict[str, Any]:
    """argparse keyword arguments for one config field (default None: not given, config decides)."""
    ann = _strip_none(f.annotation)
    default = None if f.is_required() else f.get_default(call_default_factory=True)
    if f.is_required():
        shown = "required"
    elif default is None:
        shown = "default: unset"
    else:
        shown = f"default: {default.model_dump_json() if isinstance(default, BaseModel) else json.dumps(default)}"
    text = f"{f.description}; {shown}" if f.description else shown
    kw: dict[str, Any] = {"dest": f"cfg_{name}", "default": None, "help": text.replace("%", "%%")}
    origin = typing.get_origin(ann)
    words = _bool_or_words(ann)
    if ann is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif words is not None:  # e.g. bool | Literal["block", "layer"]: one word, true / false or a name
        kw["type"] = _bool_or_word
        kw["choices"] = [True, False, *words]
        kw["metavar"] = "{" + ",".join(["true", "false", *words]) + "}"
    elif ann in _SIMPLE:
        kw["type"] = ann
        kw["metavar"] = ann.__name__.upper()
    elif origin is typing.Literal:
        values = typing.get_args(ann)
        kw["choices"] = values
        kw["type"] = type(values[0])
    elif origin is list:
        (item,) = typing.get_args(ann) or (str,)
        kw["nargs"] = "+"
        kw["type"] = item if item in _SIMPLE else _structured(item)
        kw["metavar"] = "VALUE"
    else:
        kw["type"] = _structured(ann)
        kw["metavar"] = "JSON|K=V"
    if f.is_required():
        kw["required"] = True
    return kw


def add_config_flags(p: argparse.ArgumentParser, config: type[Config], prefix: str = "", title: str | None = None) -> None:
    """One flag per field of `config` (``--{prefix}{field-name}``)."""
    g = p.add_argument_group(title) if title else p
    for name, f in config.model_fields.items():
        if not prefix and name in GENERIC:
            raise ValueError(f"{config.__name__}.{name}: the name is taken by a generic CLI argument")
        kw = _flag_kwargs(name, f)
        if prefix:
            kw["dest"] = f"{prefix.replace('-', '_')}{name}"
            kw.pop("required", None)
        g.add_argument(f"--{prefix}{name.replace('_', '-')}", **kw)


def config_from_args(args: argparse.Namespace, config: type[Config], prefix: str = "cfg_") -> dict[str, Any]:
    """The config dict holding only the flags that were given."""
    out = {}
    for name in config.model_fields:
        v = getattr(args, f"{prefix}{name}", None)
        if v is not None:
            if isinstance(v, list) and len(v) == 1 and isinstance(v[0], list):
                v = v[0]  # one JSON list given for a list field
            out[name] = v
    return out


def load_model(ref: str, data: Any, seed: int = 0, trust_python: bool = False) -> torch.nn.Module:
    """MODEL: a .ncz archive, a saved model file, or a zoo / source name built for `data` (seeded
    as a recipe seeds its model)."""
    p = Path(ref)
    if p.suffix == ".ncz":
        return unpack(p)
    if p.suffix in (".pt", ".ncm") or p.exists():
        return load_model_file(p, trust_python=trust_python)
    return create_for(ref, data, seed=seed)


def check_output_file(out: str | None) -> None:
    """Refuse, before any work, an output path that cannot become a file (an existing folder)."""
    if out is not None and Path(out).is_dir():
        raise NetcompressError(f"--out {out}: is an existing directory; give a file name such as {Path(out) / 'model.pt'}")


def _copy_into(src: Path, f: Any) -> None:
    with src.open("rb") as s:
        shutil.copyfileobj(s, f)


def add_stage_command(sub: argparse._SubParsersAction, kind: str, sk: StageKind) -> None:
    """The command `netcompress KIND`, generated from the stage kind's config."""
    p = sub.add_parser(kind, help=sk.help.replace("%", "%%"), description=f"{sk.help.replace('%', '%%')}. Same config, defaults and handler as the "
                       f"recipe stage `{kind}:`; flags not given keep the config's defaults.")
    p.add_argument("model", help="the input model: a model file (.pt), a .ncz archive or a zoo name")
    p.add_argument("--data", required=True, help="dataset name (see `netcompress list`), e.g. mnist-5k")
    p.add_argument("--data-dir", default=None, help="where online datasets are cached")
    p.add_argument("--seed", type=int, default=0, help="the seed (a recipe's seed:); default: 0")
    p.add_argument("--out", default=None, help="output file: the stage's model (.pt), or its artifact "
                   "(.ncz archive, deployed file) when the stage writes one")
    p.add_argument("--work-dir", default=None, help="folder for checkpoints (default: a temporary one)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work-dir")
    p.add_argument("--figures", default=None, help="write the stage's report figures as PNG files here")
    p.add_argument("--json", action="store_true", help="print the stage's facts and metrics as JSON")
    p.add_argument("--trust-python", action="store_true", help="allow model files that name python code")
    if sk.dry_run is not None:
        p.add_argument("--dry-run", action="store_true", help="print what the stage would do; change and save nothing")
    add_config_flags(p, sk.config, title=f"{kind} settings (the recipe stage's keys)")
    add_config_flags(p, TrainConfig, prefix="train-", title="training defaults (a recipe's train: section)")
    p.set_defaults(func=lambda args: run_stage_command(kind, args))


def _context_parts(args: argparse.Namespace) -> tuple[Any, TrainConfig, torch.nn.Module]:
    train = TrainConfig.from_dict(config_from_args(args, TrainConfig, prefix="train_"), "--train-*")
    data = load_data(args.data, batch_size=train.batch_size, seed=args.seed, data_dir=args.data_dir)
    model = load_model(args.model, data, args.seed, args.trust_python)
    return data, train, model


def run_stage_command(kind: str, args: argparse.Namespace) -> int:
    """Build the config and the context from the arguments, call the stage's handler, save."""
    sk = STAGES.get(kind)
    cfg_dict = config_from_args(args, sk.config)
    cfg = sk.config.from_dict(cfg_dict, where=f"netcompress {kind}")  # bad flags fail before any loading
    dry = getattr(args, "dry_run", False)
    if not dry and not args.out:
        raise NetcompressError(f"netcompress {kind}: --out is required" + (" (or --dry-run)" if sk.dry_run else ""))
    check_output_file(args.out)
    if args.out and sk.artifact_suffix is not None and Path(args.out).suffix != (suffix := sk.artifact_suffix(cfg)):
        raise NetcompressError(f"netcompress {kind}: --out {args.out}: with these settings the stage writes a {suffix} file; "
                               f"name it {Path(args.out).with_suffix(suffix)}")
    if args.resume and not args.work_dir:
        raise NetcompressError(f"netcompress {kind}: --resume needs --work-dir (where the checkpoints are)")
    data, train, model = _context_parts(args)
    if dry:
        ctx = StageContext(data=data, train=train, seed=args.seed, out_dir=Path(tempfile.gettempdir()),
                           models={"baseline": model}, name=kind)
        print(sk.dry_run(ctx, model, cfg))
        return 0
    with tempfile.TemporaryDirectory(prefix=f"netcompress-{kind}-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        res = apply(kind, model, data, seed=args.seed, train=train, out_dir=work, resume=args.resume,
                    progress=None if not args.json else False, **cfg_dict)
        if not is_main():
            return 0
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if res.file is not None:
            atomic_write(out, lambda f, src=Path(res.file): _copy_into(src, f))
        else:
            save(res.model, out)
        digest = sk.summary(res.extra) if sk.summary is not None and not args.json else None
    if args.figures:
        folder = Path(args.figures)
        folder.mkdir(parents=True, exist_ok=True)
        for title, png in res.figures.items():
            (folder / ("".join(c if c.isalnum() else "_" for c in title).strip("_") + ".png")).write_bytes(png)
    target = res.measure_model if res.measure_model is not None else res.model
    m = measure(target, data, file=out, latency=False)
    if res.measure_model is not None:  # deployed kernels hide their weights: count the float model, as a run does
        m.params, m.nonzero_params = count_params(res.model)
        m.macs = count_macs(res.model, data.example)
    for k, v in res.metrics.items():
        setattr(m, k, v)
    if args.json:
        print(json.dumps({"extra": res.extra, "metrics": m.to_dict()}, indent=1, default=str))
    else:
        if digest:
            print(digest)
        print(m)
        print(f"saved {out}")
    return 0


def add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """A command for every registered stage kind."""
    for kind in STAGES.list():
        add_stage_command(sub, kind, STAGES.get(kind))
