"""Training checkpoints: model and optimizer state plus JSON metadata (epoch, RNG state, the
run's settings) in one .npz, written atomically so a crash never leaves a truncated file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .data import read_npz
from .optim import is_index

FORMAT = "cnn_gpu-checkpoint-1"


def _temporary_file_beside(path: Path):
    """(fd, name) of a new private file in `path`'s folder, hidden and named after it."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _written_path(path) -> Path:
    """The file that writing `path` replaces: a symbolic link's target (links followed); OSError
    (ELOOP) for a loop of links, where realpath stops at a link, which a rename would replace."""
    resolved = Path(os.path.realpath(path))
    if resolved.is_symlink():
        raise OSError(errno.ELOOP, "a loop of symbolic links", str(path))
    return resolved


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file next to `path`, fsync it and rename it over `path`:
    readers see the old file or the complete new one, never a partial one. On any exception
    (KeyboardInterrupt included) the temporary file is closed and removed. A symbolic link is
    written through: its target is replaced, the link stays."""
    path = _written_path(path)
    fd, temporary = _temporary_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private; give it the permissions a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # Make the rename itself durable (best effort: not every file system allows opening a folder).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_writable(path) -> None:
    """A ValueError unless `atomic_write(path, ...)` can succeed: `path` is a file or absent, and its
    folder exists and takes new files (probed with a temporary file, removed at once); a symbolic
    link is judged by its target, which atomic_write replaces."""
    try:
        path = _written_path(path)
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror}") from None
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: its folder does not exist")
    try:
        fd, probe = _temporary_file_beside(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot write in its folder {path.parent} ({err.strerror or err})") from None
    try:
        os.close(fd)
    finally:
        os.unlink(probe)


def _per_parameter(optimizer_state: dict) -> list:
    """The optimizer's state as a list with an entry per parameter (the header's "scalar_state"):
    Optimizer.state_dict maps indices to the states of the parameters that have one."""
    states = optimizer_state["state"]
    count = sum(len(group["params"]) for group in optimizer_state["param_groups"])
    if not all(is_index(i) and i < count for i in states):
        raise ValueError(f"optimizer state: indices {sorted(map(repr, states))} are not those of the groups' {count} "
                         f"parameters")
    return [states.get(i, {}) for i in range(count)]


def save(path, model_state: dict, optimizer_state: dict, meta: dict) -> None:
    """Write a checkpoint. Arrays of the optimizer state go into the .npz; its other values (step
    counts, hyper-parameters) and `meta` into a JSON entry."""
    arrays = {f"model/{name}": value for name, value in model_state.items()}
    scalar_state = []
    for i, entry in enumerate(_per_parameter(optimizer_state)):
        scalars = {}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"optimizer/{i}/{key}"] = value
            else:
                scalars[key] = value
        scalar_state.append(scalars)
    header = {"format": FORMAT, "meta": meta, "optimizer": {"param_groups": optimizer_state["param_groups"],
                                                            "scalar_state": scalar_state}}
    arrays["header"] = np.array(json.dumps(header))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _header_problem(header, entries) -> str | None:
    """What makes a header (valid JSON) or the array names unfit for `load`, or None."""
    if not isinstance(header, dict):
        return f"the header is a JSON {type(header).__name__}, not an object"
    if not isinstance(header.get("meta"), dict):
        return "its meta is not an object"
    optimizer = header.get("optimizer")
    if not isinstance(optimizer, dict):
        return "its optimizer is not an object"
    for key in ("param_groups", "scalar_state"):
        value = optimizer.get(key)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            return f"its optimizer {key} is not a list of objects"
    for name in entries:
        kind, _, rest = name.partition("/")
        index, _, key = rest.partition("/")
        if kind == "model" and rest:
            continue
        if not (kind == "optimizer" and index.isdecimal() and key):
            return f"unexpected array {name!r}"
        if int(index) >= len(optimizer["scalar_state"]):
            return f"array {name!r} belongs to no parameter ({len(optimizer['scalar_state'])} in the header)"
        if key in optimizer["scalar_state"][int(index)]:
            return f"array {name!r} is also a value in the header"
    return None


def load(path):
    """(model_state, optimizer_state, meta) as given to `save`. A ValueError when the file is not
    a checkpoint of this format, or its header (even if valid JSON) does not fit the layout `save`
    writes; `meta`'s contents are the caller's to check."""
    entries = read_npz(path, "cnn_gpu checkpoint")
    try:
        header = json.loads(str(entries.pop("header")))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a readable cnn_gpu checkpoint (no valid header: {err})") from None
    if isinstance(header, dict) and header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {header.get('format')!r} (expected {FORMAT})")
    problem = _header_problem(header, entries)
    if problem:
        raise ValueError(f"{path}: malformed cnn_gpu checkpoint: {problem}")
    model_state = {key[len("model/"):]: value for key, value in entries.items() if key.startswith("model/")}
    optimizer = header["optimizer"]
    state = [dict(scalars) for scalars in optimizer["scalar_state"]]
    for key, value in entries.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state[int(index)][name] = value
    groups = optimizer["param_groups"]
    if len(groups) == 1 and "params" not in groups[0]:   # saved before the groups recorded their parameters
        groups = [{**groups[0], "params": list(range(len(state)))}]
    by_index = {i: entry for i, entry in enumerate(state) if entry}   # Optimizer.state_dict's layout
    return model_state, {"state": by_index, "param_groups": groups}, header["meta"]
