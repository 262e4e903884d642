"""Deterministic bucketed reductions of parameters and gradients across ranks."""
from __future__ import annotations

import hashlib

import numpy as np

from .. import backend, replay
from ._world import ReplicaMismatch, world

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


def _check_layouts(arrays, w, collective="all-reduce") -> None:
    """ReplicaMismatch on every rank, before any data moves, where the ranks' arrays differ in
    number, shape, dtype or kind (host or GPU): the reductions' message sizes follow each rank's own
    arrays, and MPI would sum misaligned bytes (another rank's model, or a float32 against a
    float64 parameter) without a word. One 16-byte all-gather of each rank's layout digest; the
    layouts themselves only where they differ, to name the difference."""
    layout = [(np.dtype(a.dtype).str, tuple(a.shape), backend.is_cupy_array(a)) for a in arrays]
    digest = np.frombuffer(hashlib.blake2b(repr(layout).encode(), digest_size=16).digest(), dtype=np.uint8)
    digests = np.empty((w.size, digest.size), dtype=np.uint8)
    w.wait(w.comm.Iallgather(digest, digests), f"the {collective}'s layout check")
    if (digests == digests[0]).all():
        return
    layouts = w.allgather_object(layout, f"the {collective}'s layout check")
    differ = [r for r in range(1, w.size) if layouts[r] != layouts[0]]
    first = next(i for i, (mine, theirs) in enumerate(zip(layouts[0] + [None], layouts[differ[0]] + [None]))
                 if mine != theirs)
    verb, cause = (("reduce", ": the ranks' models or gradients differ") if collective == "all-reduce"
                   else ("gather", ""))
    raise ReplicaMismatch(f"the {collective}: rank{'s' * (len(differ) > 1)} {', '.join(map(str, differ))} {verb} "
                          f"other arrays than rank 0 ({len(layouts[differ[0]])} arrays against {len(layouts[0])}; "
                          f"array {first}: (dtype, shape, on GPU) {(layouts[differ[0]] + [None])[first]} against "
                          f"{(layouts[0] + [None])[first]}){cause}")


def _refuse_in_recording(collective="all-reduce") -> None:
    replay.refuse(f"an {collective} over ranks (MPI/NCCL communication, which a replay would not repeat)")


def allreduce_sum(arrays) -> list:
    """Each array of `arrays` (all NumPy, or all CuPy) summed over the ranks; returns the summed
    arrays (same shapes and dtypes; new arrays, except in a single-process world, which returns
    the given arrays untouched). Arrays are grouped by dtype and packed in order."""
    w = world()
    arrays = list(arrays)
    if w.size == 1 or not arrays:
        return arrays
    _refuse_in_recording()
    on_gpu = backend.is_cupy_array(arrays[0])
    if any(backend.is_cupy_array(a) != on_gpu for a in arrays):
        raise TypeError("allreduce_sum: the arrays must be all NumPy or all CuPy, not a mix")
    _check_layouts(arrays, w)
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


def allgather(array):
    """Every rank's `array` (NumPy or CuPy, of the same shape and dtype on every rank) stacked in
    rank order: a new (ranks, *shape) array, the same bits on every rank (in a single-process
    world, array[None], a view). ReplicaMismatch, before any data moves, where the ranks' arrays
    differ."""
    w = world()
    if w.size == 1:
        return array[None]
    _refuse_in_recording("all-gather")
    _check_layouts([array], w, "all-gather")
    flat = array.reshape(-1)
    if backend.is_cupy_array(array):
        from . import _nccl
        gathered = _nccl.gather(flat if flat.flags.c_contiguous else flat.copy(), w)
    else:
        gathered = np.empty((w.size, flat.size), dtype=flat.dtype)
        w.wait(w.comm.Iallgather(np.ascontiguousarray(flat), gathered), "the all-gather")
    return gathered.reshape((w.size, *array.shape))


def allreduce_gradients(model, count=None):
    """Replace every trained parameter's `.grad` by its mean over the ranks (a parameter without a
    gradient counts as zeros; a frozen one, requires_grad False, is left alone). With `count`
    (this rank's number of samples in the batch), the mean is weighted by the counts, which keeps
    an uneven last batch equal to one big batch: sum_r count_r * grad_r / sum_r count_r, and the
    sum of the counts is returned (None without `count`). float16 gradients are reduced in FP32 (a loss-scaled gradient times a sample count
    would overflow float16) and rounded back once."""
    _check_model(model, "allreduce_gradients")
    if count is not None and (isinstance(count, (bool, np.bool_)) or not (isinstance(count, (int, np.integer))
                                                                         and count >= 0)):
        raise ValueError(f"allreduce_gradients: count must be a sample count >= 0, got {count!r}")
    w = world()
    if w.size == 1:
        return count
    _refuse_in_recording()
    params = [p for p in model.parameters() if p.requires_grad]   # a frozen one keeps no gradient
    grads = []
    for p in params:
        g = p.grad if p.grad is not None else backend.array_module(
            "cuda" if backend.is_cupy_array(p.data) else "numpy").zeros_like(p.data)
        if g.dtype == np.float16:
            g = g.astype(np.float32)
        grads.append(g * count if count is not None else g)
    summed = allreduce_sum(grads)
    if count is None:
        divisor = w.size
    else:
        divisor = sum(w.allgather_object(int(count), "the batch-size all-gather"))
    for p, g in zip(params, summed):
        p.grad = (g / divisor if divisor else g).astype(p.data.dtype, copy=False)
    return None if count is None else divisor


def broadcast_parameters(model, root: int = 0) -> None:
    """Every rank's parameters and buffers (the whole state_dict, integer counters such as
    BatchNorm's num_batches_tracked included) become rank `root`'s. Raises ReplicaMismatch, on
    every rank and before any data moves, when the ranks' state names, shapes or dtypes differ."""
    _check_model(model, "broadcast_parameters")
    _broadcast_state(model, root, None, "broadcast_parameters")


def broadcast_buffers(model, root: int = 0) -> None:
    """Every rank's buffers (batch-norm running statistics, which each rank updates from its own
    shards) become rank `root`'s, as PyTorch's DistributedDataParallel syncs them; parameters,
    identical on every rank after each reduced step, are left alone."""
    _check_model(model, "broadcast_buffers")
    # every name of a buffer two modules share: a load by one name alone would split the pair
    _broadcast_state(model, root, {name for name, _ in model.named_buffers(remove_duplicate=False)},
                     "broadcast_buffers")


def _check_model(model, caller: str) -> None:
    """TypeError for what is no model, in a one-process world too (where nothing else reads it)."""
    from ..nn import Module
    if not isinstance(model, Module):
        raise TypeError(f"{caller}: model must be a cnn_gpu.nn.Module, got {type(model).__name__}")


def _broadcast_state(model, root, only, caller: str) -> None:
    w = world()
    if isinstance(root, (bool, np.bool_)) or not (isinstance(root, (int, np.integer)) and 0 <= root < w.size):
        raise ValueError(f"{caller}: root must be a rank in 0..{w.size - 1}, got {root!r}")
    if w.size == 1:
        return
    # state_dict() holds host copies; np.array keeps 0-d buffers 0-d (ascontiguousarray would not)
    state = {name: np.array(value, order="C") for name, value in model.state_dict().items()}
    moved = [name for name in state if only is None or name in only]
    layouts = w.allgather_object([(name, state[name].shape, state[name].dtype.str) for name in moved],
                                 "the state layout check")
    differing = [r for r, layout in enumerate(layouts) if layout != layouts[root]]
    if differing:
        raise ReplicaMismatch(f"{caller}: ranks {differing} have other state names, shapes or dtypes than rank {root}")
    for name in moved:
        w.wait(w.comm.Ibcast(state[name], root=root), f"the broadcast of {name}")
    model.load_state_dict(state)
