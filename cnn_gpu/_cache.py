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
from pathlib import Path


def folder(kind: str) -> Path:
    """$CNN_GPU_CACHE/<kind>, else ~/.cache/cnn_gpu/<kind> (not created here)."""
    root = os.environ.get("CNN_GPU_CACHE")
    return Path(root) / kind if root else Path.home() / ".cache" / "cnn_gpu" / kind


def read(kind: str, group: str, key: str, suffix: str = "json") -> bytes | None:
    try:
        return (folder(kind) / f"{group}-{key}.{suffix}").read_bytes()
    except OSError:
        return None


def write(kind: str, group: str, key: str, data: bytes, suffix: str = "json") -> None:
    """Store `data` atomically as the group's entry; the group's other keys are removed."""
    from .checkpoint import atomic_write
    where = folder(kind)
    name = f"{group}-{key}.{suffix}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        atomic_write(where / name, lambda f: f.write(data))
        for stale in where.glob(f"{group}-*.{suffix}"):
            if stale.name != name:
                stale.unlink(missing_ok=True)
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
