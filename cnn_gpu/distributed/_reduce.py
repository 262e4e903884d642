"""Deterministic bucketed reductions of parameters and gradients across ranks."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._world import world

# Gradients are reduced in buckets of this many bytes (per dtype, in parameter order): large
# enough to keep the network busy, small enough that the scratch copies stay small.
BUCKET_BYTES = 4 << 20


def _buckets(total: int, itemsize: int, ranks: int):
    """(start, stop) of each bucket of a flat array of `total` elements; every bucket but the last
    holds a multiple of `ranks` elements, so it splits into equal per-rank chunks."""
    per_bucket = max(ranks, (BUCKET_BYTES // itemsize) // ranks * ranks)
    return [(start, min(start + per_bucket, total)) for start in range(0, total, per_bucket)]


def _sum_host(flat: np.ndarray, w) -> None:
    """flat summed over the ranks, in place: for every bucket, rank r sums chunk r of every rank
    in rank order, then all ranks gather the summed chunks."""
    ranks = w.size
    for start, stop in _buckets(flat.size, flat.itemsize, ranks):
        chunk = -(-(stop - start) // ranks)
        send = np.zeros(chunk * ranks, dtype=flat.dtype)
        send[:stop - start] = flat[start:stop]
        received = np.empty((ranks, chunk), dtype=flat.dtype)
        w.wait(w.comm.Ialltoall(send, received), "the gradient all-reduce (all-to-all)")
        mine = received[0].copy()
        for other in received[1:]:      # rank order, whatever the MPI library would do
            mine += other
        gathered = np.empty(chunk * ranks, dtype=flat.dtype)
        w.wait(w.comm.Iallgather(mine, gathered), "the gradient all-reduce (all-gather)")
        flat[start:stop] = gathered[:stop - start]


def allreduce_sum(arrays) -> list:
    """Each array of `arrays` (all NumPy, or all CuPy) summed over the ranks; returns the summed
    arrays (new arrays, same shapes and dtypes). Arrays are grouped by dtype and packed in order."""
    w = world()
    arrays = list(arrays)
    if w.size == 1 or not arrays:
        return arrays
    on_gpu = backend.is_cupy_array(arrays[0])
    xp = backend.array_module("cuda" if on_gpu else "numpy")
    out = [None] * len(arrays)
    for dtype in dict.fromkeys(np.dtype(a.dtype) for a in arrays):
        members = [i for i, a in enumerate(arrays) if np.dtype(a.dtype) == dtype]
        flat = xp.concatenate([arrays[i].reshape(-1) for i in members])
        if on_gpu:
            from . import _nccl
            _nccl.sum_in_place(flat, w)
        else:
            _sum_host(flat, w)
        offset = 0
        for i in members:
            out[i] = flat[offset:offset + arrays[i].size].reshape(arrays[i].shape)
            offset += arrays[i].size
    return out


def allreduce_gradients(model, count=None) -> None:
    """Replace every parameter's `.grad` by its mean over the ranks (a parameter without a gradient
    counts as zeros). With `count` (this rank's number of samples in the batch), the mean is
    weighted by the counts, which keeps an uneven last batch equal to one big batch:
    sum_r count_r * grad_r / sum_r count_r."""
    w = world()
    if w.size == 1:
        return
    params = list(model.parameters())
    grads = []
    for p in params:
        g = p.grad if p.grad is not None else backend.array_module(
            "cuda" if backend.is_cupy_array(p.data) else "numpy").zeros_like(p.data)
        grads.append(g * count if count is not None else g)
    summed = allreduce_sum(grads)
    if count is None:
        divisor = w.size
    else:
        divisor = sum(w.allgather_object(int(count), "the batch-size all-gather"))
    for p, g in zip(params, summed):
        p.grad = g / divisor if divisor else g


def broadcast_parameters(model, root: int = 0) -> None:
    """Every rank's parameters and buffers (the whole state_dict) become rank `root`'s."""
    w = world()
    if w.size == 1:
        return
    state = model.state_dict()
    for name, value in state.items():
        value = np.ascontiguousarray(value)
        w.wait(w.comm.Ibcast(value, root=root), f"the broadcast of {name}")
        state[name] = value
    model.load_state_dict(state)
