"""NCCL reductions of CuPy arrays (one process per GPU), with the communicator set up over MPI."""
from __future__ import annotations

import numpy as np

# (device id, communicator): NCCL binds a communicator to the device current at its creation.
_communicator = None


def _nccl_dtype(nccl, dtype):
    codes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64}
    try:
        return codes[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"NCCL reduction of {dtype} arrays is not supported") from None


def communicator(w, device_id: int):
    """The NCCL communicator of this world on GPU `device_id` (the GPU the model lives on, which
    the caller chose, normally the local rank): rank 0 makes the unique id, MPI hands it around."""
    global _communicator
    if _communicator is None:
        from cupy.cuda import nccl
        uid = nccl.get_unique_id() if w.rank == 0 else None
        uid = w.allgather_object(uid, "the NCCL id broadcast")[0]
        _communicator = (device_id, nccl.NcclCommunicator(w.size, uid, w.rank))
    if _communicator[0] != device_id:
        raise RuntimeError(f"rank {w.rank}: NCCL reduction of arrays on GPU {device_id}, but this process's "
                           f"communicator is on GPU {_communicator[0]} (one GPU per process)")
    return _communicator[1]


def sum_in_place(flat, w) -> None:
    """flat (a CuPy array) summed over the ranks on its device's current stream: a reduce-scatter
    (each chunk summed once, in NCCL's fixed ring order) then an all-gather, so every rank holds
    the same bits. The scratch arrays go back to CuPy's pool for this stream, so no later
    allocation can reuse them before the NCCL calls queued before it have finished."""
    import cupy
    from cupy.cuda import nccl
    code = _nccl_dtype(nccl, flat.dtype)
    with flat.device:
        comm = communicator(w, flat.device.id)
        stream = cupy.cuda.get_current_stream().ptr
        chunk = -(-flat.size // w.size)
        padded = cupy.zeros(chunk * w.size, dtype=flat.dtype)
        padded[:flat.size] = flat
        mine = cupy.empty(chunk, dtype=flat.dtype)
        comm.reduceScatter(padded.data.ptr, mine.data.ptr, chunk, code, nccl.NCCL_SUM, stream)
        comm.allGather(mine.data.ptr, padded.data.ptr, chunk, code, stream)
        flat[...] = padded[:flat.size]
