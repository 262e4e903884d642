"""Training checkpoints: model and optimizer state plus JSON metadata (epoch, RNG state, the
run's settings) in one .npz, written atomically so a crash never leaves a truncated file."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .data import read_npz

FORMAT = "cnn_gpu-checkpoint-1"


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file next to `path`, fsync it and rename it over `path`:
    readers see the old file or the complete new one, never a partial one."""
    path = Path(path)
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file private; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
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
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(path, model_state: dict, optimizer_state: dict, meta: dict) -> None:
    """Write a checkpoint. Arrays of the optimizer state go into the .npz; its other values (step
    counts, hyper-parameters) and `meta` into a JSON entry."""
    arrays = {f"model/{name}": value for name, value in model_state.items()}
    scalar_state = []
    for i, entry in enumerate(optimizer_state["state"]):
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


def load(path):
    """(model_state, optimizer_state, meta) as given to `save`."""
    entries = read_npz(path, "cnn_gpu checkpoint")
    try:
        header = json.loads(str(entries.pop("header")))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a readable cnn_gpu checkpoint (no valid header: {err})") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {header.get('format')!r} (expected {FORMAT})")
    model_state = {key[len("model/"):]: value for key, value in entries.items() if key.startswith("model/")}
    optimizer = header["optimizer"]
    state = [dict(scalars) for scalars in optimizer["scalar_state"]]
    for key, value in entries.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state[int(index)][name] = value
    return model_state, {"param_groups": optimizer["param_groups"], "state": state}, header["meta"]
