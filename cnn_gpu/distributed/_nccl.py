"""NCCL reductions of CuPy arrays (one process per GPU), with the communicator set up over MPI."""
from __future__ import annotations

import numpy as np

_communicator = None


def _nccl_dtype(nccl, dtype):
    codes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64}
    try:
        return codes[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"NCCL reduction of {dtype} arrays is not supported") from None


def communicator(w):
    """The NCCL communicator of this world: rank 0 makes the unique id, MPI hands it around."""
    global _communicator
    if _communicator is None:
        import cupy
        from cupy.cuda import nccl
        cupy.cuda.Device(w.local_rank).use()
        uid = nccl.get_unique_id() if w.rank == 0 else None
        uid = w.allgather_object(uid, "the NCCL id broadcast")[0]
        _communicator = nccl.NcclCommunicator(w.size, uid, w.rank)
    return _communicator


def sum_in_place(flat, w) -> None:
    """flat (a CuPy array) summed over the ranks on the current stream: a reduce-scatter (each
    chunk summed once, in NCCL's fixed ring order) then an all-gather, so every rank holds the
    same bits."""
    import cupy
    from cupy.cuda import nccl
    comm = communicator(w)
    stream = cupy.cuda.get_current_stream().ptr
    code = _nccl_dtype(nccl, flat.dtype)
    chunk = -(-flat.size // w.size)
    padded = cupy.zeros(chunk * w.size, dtype=flat.dtype)
    padded[:flat.size] = flat
    mine = cupy.empty(chunk, dtype=flat.dtype)
    comm.reduceScatter(padded.data.ptr, mine.data.ptr, chunk, code, nccl.NCCL_SUM, stream)
    comm.allGather(mine.data.ptr, padded.data.ptr, chunk, code, stream)
    flat[...] = padded[:flat.size]
