"""Pickle-free model files.

A model is stored as an *architecture description* (JSON) plus a state dict of tensors. The
description holds the zoo spec (`model.netcompress_spec`) and a table of every module by qualified
name: its type, constructor arguments for the types we know (Conv, Linear, BatchNorm, pooling,
Sequential, ...) and its plain attributes. Loading rebuilds the zoo model, then replaces every module
whose description differs (a pruned Conv2d with fewer channels, a Linear factorised into a Sequential
of two Linears, an added exit head), and finally loads the tensors with `strict=True`.

Nothing is unpickled: `torch.load(..., weights_only=True)` reads the file, and only allow-listed
module types can be constructed from it.

Every parameter and buffer is stored once, non-persistent buffers included (a rotary embedding's
`inv_freq`, position ids), so the reloaded model computes exactly what the saved one did; a tensor
shared by several modules (an LM head tied to the embedding) is stored under its first name and the
description's `tied` table ({alias: source}) makes the reloaded model share it again. Files written
before these two rules (every state-dict key, no `tied`) load as before.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from netcompress.core.errors import NetcompressError

FORMAT = "netcompress-model"
VERSION = 1


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                dilation=list(m.dilation), groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)


def _bn_args(m: nn.Module) -> dict[str, Any]:
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


def _pool_args(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    def get(m: nn.Module) -> dict[str, Any]:
        out = {}
        for n in names:
            v = getattr(m, n)
            out[n] = list(v) if isinstance(v, tuple) else v
        return out

    return get


# type name -> (class, function giving constructor kwargs, builder from kwargs or None for cls(**kw))
MODULE_TYPES: dict[str, tuple[type, Callable[[nn.Module], dict[str, Any]], Callable[[dict], nn.Module] | None]] = {}


def register_module_type(cls: type, get_args: Callable[[nn.Module], dict[str, Any]],
                         build: Callable[[dict], nn.Module] | None = None, name: str | None = None) -> None:
    """Allow `cls` in saved architectures. `build(args)` must return a module whose children may be
    missing: they are filled in afterwards from their own entries in the table."""
    MODULE_TYPES[name or cls.__name__] = (cls, get_args, build)


for _c in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d):
    register_module_type(_c, _conv_args)
register_module_type(nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None))
for _c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_module_type(_c, _bn_args)
register_module_type(nn.LayerNorm, lambda m: dict(normalized_shape=list(m.normalized_shape), eps=m.eps,
                                                  elementwise_affine=m.elementwise_affine, bias=getattr(m, "bias", None) is not None))
register_module_type(nn.GroupNorm, lambda m: dict(num_groups=m.num_groups, num_channels=m.num_channels, eps=m.eps, affine=m.affine))
for _c in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid):
    register_module_type(_c, _pool_args("inplace"))
for _c in (nn.GELU,):
    register_module_type(_c, _pool_args("approximate"))
for _c in (nn.Sigmoid, nn.Tanh, nn.Identity):
    register_module_type(_c, lambda m: {})
register_module_type(nn.Flatten, _pool_args("start_dim", "end_dim"))
for _c in (nn.Dropout, nn.Dropout2d):
    register_module_type(_c, _pool_args("p", "inplace"))
register_module_type(nn.MaxPool2d, _pool_args("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
register_module_type(nn.AvgPool2d, _pool_args("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"))
register_module_type(nn.AdaptiveAvgPool2d, _pool_args("output_size"))
register_module_type(nn.AdaptiveMaxPool2d, _pool_args("output_size"))
register_module_type(nn.Sequential, lambda m: {}, lambda a: nn.Sequential())
register_module_type(nn.ModuleList, lambda m: {}, lambda a: nn.ModuleList())
register_module_type(nn.ModuleDict, lambda m: {}, lambda a: nn.ModuleDict())


def _plain(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v)


def _describe_module(m: nn.Module) -> dict[str, Any]:
    tname = type(m).__name__
    entry: dict[str, Any] = {"type": tname, "children": [n for n, _ in m.named_children()],
                             "params": sorted(n for n, p in m._parameters.items() if p is not None),
                             "buffers": sorted(n for n, b in m._buffers.items() if b is not None)}
    known = MODULE_TYPES.get(tname)
    if known is not None and type(m) is known[0]:
        entry["args"] = known[1](m)
    else:  # opaque: a class whose forward is code; keep its simple attributes
        entry["attrs"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m).items()
                          if not k.startswith("_") and k not in ("training", "netcompress_spec") and _plain(v)}
    return entry


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every parameter and buffer of `model` once (non-persistent buffers included), and the
    {alias: source name} table of tensors shared between modules (tied weights)."""
    first: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(t) in first:
            tied[name] = first[id(t)]
        else:
            first[id(t)] = name
            tensors[name] = t.detach()
    return tensors, tied


def describe(model: nn.Module) -> dict[str, Any]:
    """The JSON-able architecture description of `model` (see module docstring)."""
    spec = getattr(model, "netcompress_spec", None)
    if spec is None:
        raise NetcompressError(
            f"cannot describe a {type(model).__name__} that was not built by netcompress.models.create; "
            "build it with create('python:your.module:factory') so it can be rebuilt without pickling"
        )
    arch = {"format": FORMAT, "version": VERSION, "spec": spec,
            "modules": {name: _describe_module(m) for name, m in model.named_modules()}}
    tied = model_tensors(model)[1]
    if tied:
        arch["tied"] = tied
    return arch


def _get(model: nn.Module, name: str) -> nn.Module | None:
    m = model
    for part in name.split(".") if name else []:
        m = m._modules.get(part) if isinstance(m, nn.Module) else None
        if m is None:
            return None
    return m


def _construct(name: str, entry: dict[str, Any]) -> nn.Module:
    known = MODULE_TYPES.get(entry["type"])
    if known is None or "args" not in entry:
        raise NetcompressError(f"module {name!r}: type {entry['type']!r} cannot be rebuilt from a file "
                               f"(allowed: {', '.join(sorted(MODULE_TYPES))})")
    cls, _, build = known
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["args"].items()}
    try:
        return build(args) if build is not None else cls(**args)
    except (TypeError, ValueError) as e:
        raise NetcompressError(f"module {name!r}: bad arguments for {entry['type']}: {e}") from None


def build(arch: dict[str, Any], trust_python: bool = False) -> nn.Module:
    """Rebuild the module tree described by `arch` (weights uninitialised, load a state dict next)."""
    from netcompress.models.zoo import create

    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise NetcompressError("not a netcompress architecture description")
    spec, table = arch["spec"], arch["modules"]
    if spec["name"].startswith("python:") and not trust_python:
        raise NetcompressError(f"this file names python code ({spec['name']}); pass trust_python=True "
                               "(CLI: --trust-python) only if you trust its author")
    kwargs = dict(spec.get("kwargs", {}))
    model = create(spec["name"], **kwargs)
    for name in sorted(table, key=lambda n: (n.count(".") + (n != ""), n)):
        entry = table[name]
        cur = _get(model, name)
        if cur is not None and _describe_module(cur).get("args", "opaque") == entry.get("args", "opaque") \
                and type(cur).__name__ == entry["type"]:
            new = cur
        elif "args" in entry or cur is None:
            new = _construct(name, entry)
            if name == "":
                raise NetcompressError("the root module cannot be replaced")
            parent_name, _, leaf = name.rpartition(".")
            parent = _get(model, parent_name)
            if parent is None:
                raise NetcompressError(f"module {name!r}: its parent {parent_name!r} is missing in the description")
            parent.add_module(leaf, new)
        else:
            raise NetcompressError(f"module {name!r}: file says {entry['type']}, model has {type(cur).__name__}")
        for k, v in entry.get("attrs", {}).items():
            setattr(new, k, tuple(v) if isinstance(v, list) and isinstance(getattr(new, k, None), tuple) else v)
        for child in [c for c in new._modules if c not in entry["children"]]:
            del new._modules[child]  # removed by a transform
        for p in entry["params"]:
            if p not in new._parameters or new._parameters[p] is None:
                new.register_parameter(p, nn.Parameter(torch.empty(0)))
        for b in entry["buffers"]:
            if b not in new._buffers or new._buffers[b] is None:
                new.register_buffer(b, torch.empty(0))
    model.netcompress_spec = spec
    return model


def check_against(model: nn.Module, declared: dict[str, tuple[tuple[int, ...], torch.dtype | None]],
                  tied: dict[str, str] | None = None) -> list[str]:
    """Compare a model built on the meta device with the tensors a file declares (name -> shape,
    dtype; `tied` aliases share their source's entry). Returns the non-persistent buffers the file
    does not hold (older files); anything else missing, unexpected or of another shape is an error.

    Run before any weight is allocated, so an architecture table declaring layers larger than the
    file's tensors costs no memory."""
    tied = dict(tied or {})
    own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    full = dict(declared)
    for alias, src in tied.items():
        if src in declared:
            full[alias] = declared[src]
    required = set(model.state_dict(keep_vars=True))
    missing = sorted((required - set(full)))
    extra = sorted(set(full) - set(own))
    if missing or extra:
        raise NetcompressError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, t in own.items():
        if k not in full:
            continue
        shape, dtype = full[k]
        placeholder = t.dim() == 1 and t.numel() == 0  # a tensor the table adds to a module: any shape
        if not placeholder and (tuple(t.shape) != tuple(shape) or (dtype is not None and t.dtype != dtype)):
            raise NetcompressError(f"tensor {k!r} has shape {tuple(shape)} {dtype}, "
                                   f"the architecture expects {tuple(t.shape)} {t.dtype}")
    return sorted(set(own) - set(full))


def build_checked(arch: dict[str, Any], state: dict[str, torch.Tensor], trust_python: bool = False) -> nn.Module:
    """`build` on the meta device, `check_against` the file's tensors, then materialise and load.

    Only when a file of an older version lacks non-persistent buffers (whose values the rebuilt
    model computes) is the model built for real, and only if those buffers are not larger than the
    tensors the file holds."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NetcompressError("the state holds something other than tensors")
    tied = arch.get("tied") if isinstance(arch, dict) else None
    try:
        with torch.device("meta"):
            model = build(arch, trust_python=trust_python)
    except NetcompressError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, NotImplementedError) as e:
        raise NetcompressError(f"architecture cannot be rebuilt ({type(e).__name__}: {e})") from None
    undeclared_shapes_from_file(model, arch, state)
    computed = check_against(model, {k: (tuple(v.shape), v.dtype) for k, v in state.items()}, tied)
    model = materialize(model, arch, computed, state, trust_python)
    load_state_exact(model, state, tied)
    return model


def undeclared_shapes_from_file(meta_model: nn.Module, arch: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Tensors whose size the architecture table does not declare take the file's shape.

    A registered module type (Linear, Conv2d, ...) declares its sizes in the table's ``args``, and
    those must match the file exactly (`check_against`). The tensors of an opaque module (a class
    token, an embedding, anything a constructor made) are not declared: a pruned model's file holds
    them at their new width, and the meta model takes that shape (still on the meta device; what is
    allocated later is exactly the file's tensors)."""
    table = arch.get("modules", {}) if isinstance(arch, dict) else {}
    for k, v in state.items():
        mod_name, _, leaf = k.rpartition(".")
        entry = table.get(mod_name)
        if not isinstance(entry, dict) or "args" in entry:
            continue
        mod = _get(meta_model, mod_name)
        if mod is None:
            continue
        if leaf in mod._parameters and mod._parameters[leaf] is not None:
            cur = mod._parameters[leaf]
            if tuple(cur.shape) != tuple(v.shape) and cur.dim() == v.dim() and cur.dtype == v.dtype:
                mod._parameters[leaf] = nn.Parameter(torch.empty(v.shape, dtype=v.dtype, device="meta"),
                                                     requires_grad=cur.requires_grad)
        elif leaf in mod._buffers and mod._buffers[leaf] is not None:
            cur = mod._buffers[leaf]
            if tuple(cur.shape) != tuple(v.shape) and cur.dim() == v.dim() and cur.dtype == v.dtype:
                mod._buffers[leaf] = torch.empty(v.shape, dtype=v.dtype, device="meta")


def materialize(meta_model: nn.Module, arch: dict[str, Any], computed: list[str], state: dict[str, torch.Tensor],
                trust_python: bool = False) -> nn.Module:
    """The checked meta model on the CPU, ready for `load_state_exact`. When the file lacks
    non-persistent buffers (`computed`, older files) the model is built for real so they get their
    computed values, and only if they are not larger than the tensors the file holds."""
    if not computed:
        return meta_model.to_empty(device="cpu")
    own = dict(meta_model.named_buffers(remove_duplicate=False))
    if sum(own[k].numel() for k in computed) > max(1 << 20, sum(v.numel() for v in state.values())):
        raise NetcompressError(f"buffers {computed[:3]} are not stored and larger than the file's tensors")
    return build(arch, trust_python=trust_python)


def load_state_exact(model: nn.Module, state: dict[str, torch.Tensor], tied: dict[str, str] | None = None) -> None:
    """Load tensors whose shapes may differ from the freshly built placeholders (strict keys), then
    share the `tied` ones ({alias: source}) again. Non-persistent buffers missing from `state`
    (files of older versions) keep the values the rebuilt model computed."""
    tied = dict(tied or {})
    own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    required = set(model.state_dict(keep_vars=True)) - set(tied)
    missing = sorted(required - set(state))
    extra = sorted(set(state) - (set(own) - set(tied)))
    bad_tie = sorted(a for a, src in tied.items() if a not in own or src not in state)
    if missing or extra or bad_tie:
        raise NetcompressError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}"
                               + (f", bad tied entries {bad_tie[:5]}" if bad_tie else ""))
    new: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, t in state.items():
            mod_name, _, leaf = k.rpartition(".")
            mod = _get(model, mod_name)
            if leaf in mod._parameters:
                new[k] = mod._parameters[leaf] = nn.Parameter(t.clone(), requires_grad=mod._parameters[leaf].requires_grad)
            else:
                new[k] = mod._buffers[leaf] = t.clone()
        for alias, src in tied.items():
            mod_name, _, leaf = alias.rpartition(".")
            mod = _get(model, mod_name)
            if leaf in mod._parameters:
                mod._parameters[leaf] = new[src]
            else:
                mod._buffers[leaf] = new[src]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename: never a half file."""
    path = Path(path)
    if path.is_dir():
        raise NetcompressError(f"cannot write {path}: it is an existing directory; give a file name")
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NetcompressError(f"cannot create folder {path.parent}: {e.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent or "."))
    except OSError as e:
        raise NetcompressError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save `model` without pickling classes; `load(path)` gives a model with identical outputs.

    Example:
        m = create("lenet300"); save(m, "/tmp/m.pt"); load("/tmp/m.pt")
    """
    arch = describe(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model_tensors(model)[0].items()}
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, "arch": json.dumps(arch), "state": state}, f))
    return Path(path)


def load(path: str | os.PathLike, trust_python: bool = False) -> nn.Module:
    """Load a model saved by `save` (eval mode, CPU)."""
    p = Path(path)
    if not p.is_file():
        raise NetcompressError(f"model file {p} does not exist")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NetcompressError(f"{p}: not a readable netcompress model file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise NetcompressError(f"{p}: not a netcompress model file")
    if blob.get("version", 0) > VERSION:
        raise NetcompressError(f"{p}: format version {blob['version']} is newer than this netcompress ({VERSION})")
    try:
        arch, state = json.loads(blob["arch"]), blob["state"]
    except (KeyError, TypeError, ValueError) as e:
        raise NetcompressError(f"{p}: not a netcompress model file ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise NetcompressError(f"{p}: not a netcompress model file (no state)")
    try:
        model = build_checked(arch, state, trust_python=trust_python)
    except NetcompressError as e:
        raise NetcompressError(f"{p}: {e}") from None
    return model.eval()
