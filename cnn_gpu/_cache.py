"""The on-disk caches of derived results ($CNN_GPU_CACHE/<kind>, else ~/.cache/cnn_gpu/<kind>).

An entry is <group>-<key>.<suffix>: the key digests everything the result depends on, and storing
a group's new key removes its older ones, so a folder holds one entry per group (kernel file,
options...) rather than one per edit. Reads and writes are best effort: a missing or unwritable
cache only costs recomputation."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path


def folder(kind: str) -> Path:
    """$CNN_GPU_CACHE/<kind>, else ~/.cache/cnn_gpu/<kind> (not created here)."""
    root = os.environ.get("CNN_GPU_CACHE")
    return Path(root) / kind if root else Path.home() / ".cache" / "cnn_gpu" / kind


def entry(kind: str, group: str, key: str, suffix: str = "json") -> Path:
    """The path of the group's entry for `key`."""
    return folder(kind) / f"{group}-{key}.{suffix}"


def read(kind: str, group: str, key: str, suffix: str = "json") -> bytes | None:
    try:
        return entry(kind, group, key, suffix).read_bytes()
    except OSError:
        return None


def write(kind: str, group: str, key: str, data: bytes, suffix: str = "json", replace_group: bool = True) -> None:
    """Store `data` atomically as the group's entry for `key`; the group's other keys are removed,
    unless not `replace_group` (entries a running process may still read: remove_unused)."""
    from .checkpoint import atomic_write
    path = entry(kind, group, key, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
        for stale in path.parent.glob(f"{group}-*.{suffix}") if replace_group else ():
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass


def remove_unused(kind: str, suffix: str, seconds: float, keep: Path) -> None:
    """Remove the kind's .<suffix> entries that have not been written or marked used (os.utime)
    for `seconds`, but `keep`."""
    now = time.time()
    for path in folder(kind).glob(f"*.{suffix}"):
        try:
            if path != keep and now - path.stat().st_mtime > seconds:
                path.unlink()
        except OSError:
            pass


def read_json(kind: str, group: str, key: str):
    """The entry's JSON value; None where it is absent or not JSON (a damaged entry)."""
    data = read(kind, group, key)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def write_json(kind: str, group: str, key: str, value) -> None:
    write(kind, group, key, json.dumps(value).encode())


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on the file `path` (created if need be) while the block runs, so that a
    second process asking for an entry another is computing (another pytest-xdist worker) waits and
    reads it rather than computing it again. A no-op where the file cannot be opened."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def group_lock(kind: str, group: str):
    """locked() on the group's lock file in the kind's folder."""
    where = folder(kind)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return contextlib.nullcontext()
    return locked(where / f"{group}.lock")
