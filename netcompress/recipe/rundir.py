"""The run folder's safety: one writer at a time, no half-written runs, resume only what is unchanged.

* `RunLock`: an exclusive `flock` on ``.NAME.lock`` beside the run folder, holding the owner's pid.
  The kernel drops the lock when its process dies (even by SIGKILL), so a stale lock file never
  blocks a new run; a live owner is named by its pid.
* `start_work` / `commit_work`: a run is written into ``.NAME.partial`` beside the target and moved
  into place when it has finished; a run that fails or is stopped leaves the previous run untouched
  (``--resume`` continues the unfinished folder).
* `stage_key`: the hash of everything a stage's result depends on (its resolved config, the
  recipe's seed, data, model, train and measure settings, and its parent's key), stored with each
  finished stage; `--resume` reuses a stage only when its key is unchanged.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from netcompress.core.errors import NetcompressError


class RunLock:
    """Exclusive lock on a run folder (see module docstring). Use as a context manager."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NetcompressError(f"output directory {self.out} cannot be written: {e.strerror or e}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise NetcompressError(f"output directory {self.out} cannot be written: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise NetcompressError(f"run folder {self.out} is in use by another netcompress run (pid {pid}); "
                                       "wait for it to finish, stop it, or choose another --out") from None
            try:  # the file we locked must still be the one at the path (a finishing run unlinks it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _remove(path: Path, what: str) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError as e:
        raise NetcompressError(f"{what} {e.filename or path} cannot be deleted ({e.strerror or e}); "
                               "delete it by hand or choose another --out") from None


def _check_removable(folder: Path) -> None:
    """Every folder under `folder` must allow deleting its entries (checked before a run starts)."""
    for d, _, _ in os.walk(folder):
        if not os.access(d, os.W_OK | os.X_OK):
            raise NetcompressError(f"{d}: a folder of the previous run cannot be deleted (no write permission); "
                                   "delete it by hand or choose another --out")


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def check_target(out: Path, resume: bool) -> None:
    """Refuse, before anything is written, an --out that is not a run folder or has nothing to resume."""
    if out.exists() and not out.is_dir():
        raise NetcompressError(f"output directory {out} cannot be written: it is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "recipe.yaml").exists():
        raise NetcompressError(f"--out {out}: the folder exists and is not a netcompress run (no recipe.yaml); "
                               "choose a new or empty folder")
    if resume and not (out / "recipe.yaml").exists() and not (partial_dir(out) / "recipe.yaml").exists():
        raise NetcompressError(f"--resume: {out} holds no run to resume (no recipe.yaml)")


def start_work(out: Path, resume: bool) -> Path:
    """The folder this run writes into (call with the lock held)."""
    work = partial_dir(out)
    if resume and (work / "recipe.yaml").exists():
        return work  # the unfinished folder of a stopped run
    if work.exists():
        _remove(work, "the unfinished folder of an earlier run")
    if out.is_dir():
        _check_removable(out)
    try:
        if resume:
            shutil.copytree(out, work, symlinks=True)
        else:
            work.mkdir(parents=True)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise NetcompressError(f"output directory {out} cannot be written: {e.strerror or e}") from None
    return work


def commit_work(work: Path, out: Path) -> None:
    """Put the finished run in place of the previous one (two renames; the old one is then deleted)."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        _remove(old, "a previous run's leftover folder")
    if out.exists():
        os.rename(out, old)
    os.rename(work, out)
    if old.exists():
        _remove(old, f"the run finished in {out}, but the previous run moved to")


# ---------------------------------------------------------------- resume keys

def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: d}


def stage_key(settings: dict[str, Any], parent_key: str | None) -> tuple[str, dict[str, Any]]:
    """(hash, flat settings) of one stage; the hash chains the parent's, so a change propagates."""
    flat = _flat(settings)
    blob = json.dumps({"settings": flat, "parent": parent_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), flat


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'field: old -> new' for every setting that differs."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}")
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
