"""Arrival counts of the kernels whose last block to arrive at a tile or channel finishes its sum
(conv2d_tc's wgrad, batch_norm's statistics and backward sums, reduce's channel_sum_block): zero
uint32 counts cached per backend, device, CuPy stream and thread. Each such kernel leaves them
zero (the finishing block resets its count), so the launches of one stream, which run in order,
share them without a zeroing launch; a launch that fails may leave counts part-way, so its counts
are dropped."""
from __future__ import annotations

import threading

import numpy as np

from .. import backend

_COUNTS = {}


def _key(be) -> tuple:
    """The backend, its current device and CuPy stream (None, None on the emulator) and the calling
    thread: with CuPy's per-thread default stream every thread's stream has one handle, and the
    emulator runs two threads' launches at once."""
    cupy = backend.cupy_or_none() if be == "cuda" else None
    device, stream = (cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr) if cupy else (None, None)
    return be, device, stream, threading.get_ident()


def zeroed(be, count: int):
    """At least `count` zero arrival counts for `be`'s current device and stream and this thread."""
    key = _key(be)
    counts = _COUNTS.get(key)
    if counts is None or counts.size < count:
        counts = _COUNTS[key] = backend.array_module(be).zeros(max(count, 1024), dtype=np.uint32)
    return counts


def scratch_bytes(partials: int, counts: int, partial_bytes: int) -> int:
    """The DRAM bytes the scratch of a reduction split over blocks moves (the roofline model's): every
    block writes its `partials` (`partial_bytes` each) and the last to arrive at each of the `counts`
    reads them all; each count is read and written by its atomic increment."""
    return 2 * (partials * partial_bytes + counts * np.dtype(np.uint32).itemsize)


def launch(be, family, dtype, kernel, grid, block, args):
    """backend.launch of a kernel given zeroed(be, ...) counts; dropping them where it fails."""
    try:
        backend.launch(be, family, dtype, kernel, grid, block, args)
    except BaseException:
        _COUNTS.pop(_key(be), None)   # its counts may be left part-way
        raise
