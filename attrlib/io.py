"""Atomic writes: a crash mid-write never leaves a truncated checkpoint or result file.

In a run of several processes (torchrun, attrlib.distributed) only rank 0 writes: on the
other ranks every writer here returns the path without touching the disk.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from attrlib.distributed import is_main

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temp file in the same folder, fsync, then rename over `path`
    (on rank 0 only, see the module's docstring)."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # a writer killed by SIGKILL never reaches its `finally`: sweep the temp files it left
    # for this target (one writer per target, so none of them is still being written)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold `path`'s lock (flock on `.<name>.lock` beside it, the lock scripts/claim.sh
    takes): one writer at a time among processes, released when the holder exits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")

    return write_atomic(path, write)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def save_torch_atomic(path: str | Path, obj: Any) -> Path:
    """`torch.save` through `write_atomic`, byte-identical for identical contents.

    Saved through a file object, so the archive's inner folder is torch's fixed "archive"
    rather than the random temp file's name (which would make equal checkpoints differ).
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return write_atomic(path, write)


def as_stored(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so stored and fresh configs
    compare equal."""
    return json.loads(json.dumps(obj, default=_jsonable))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
