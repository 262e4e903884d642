"""NCCL reductions of CuPy arrays (one process per GPU), with the communicator set up over MPI.

NCCL's collectives are queued on a CUDA stream and wait on the GPU for the other ranks, so a dead
peer would hang the first synchronisation after them. The host instead polls an event recorded
after them, with the world's timeout (CNN_GPU_COLLECTIVE_TIMEOUT), as the MPI collectives do."""
from __future__ import annotations

import numpy as np

from ._world import poll_until

# ncclCommGetAsyncError and ncclCommAbort came with NCCL 2.4.
ASYNC_ERRORS_SINCE = 2400

# (device id, communicator): NCCL binds a communicator to the device current at its creation.
_communicator = None


def why_unavailable() -> str:
    """Why CuPy cannot run NCCL collectives here ("" when it can): CuPy's NCCL binding imports
    without the library (cupy.cuda.nccl.available is then False), and only fails at the first call."""
    try:
        from cupy.cuda import nccl
    except Exception as err:   # no CuPy, or a broken one
        return f"cupy.cuda.nccl does not import ({type(err).__name__}: {err})"
    if not getattr(nccl, "available", False):
        return ("CuPy finds no NCCL library: install NCCL where CuPy looks for it (CuPy's installation guide, "
                "\"Additional CUDA Libraries\")")
    return ""


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
        raise RuntimeError(f"rank {w.rank}: NCCL collective on arrays on GPU {device_id}, but this process's "
                           f"communicator is on GPU {_communicator[0]} (one GPU per process)")
    return _communicator[1]


def sum_in_place(flat, w) -> None:
    """flat (a CuPy array) summed over the ranks on its device's current stream: a reduce-scatter
    (each chunk summed once, in NCCL's fixed ring order) then an all-gather, so every rank holds
    the same bits. The scratch arrays go back to CuPy's pool for this stream, so no later
    allocation can reuse them before the NCCL calls queued before it have finished. Returns once
    the reduction has completed (see wait_for_collective for what a dead peer makes of it)."""
    def reduce(cupy, nccl, comm, code, stream):
        chunk = -(-flat.size // w.size)
        padded = cupy.zeros(chunk * w.size, dtype=flat.dtype)
        padded[:flat.size] = flat
        mine = cupy.empty(chunk, dtype=flat.dtype)
        comm.reduceScatter(padded.data.ptr, mine.data.ptr, chunk, code, nccl.NCCL_SUM, stream)
        comm.allGather(mine.data.ptr, padded.data.ptr, chunk, code, stream)
        flat[...] = padded[:flat.size]

    _collective(flat, w, reduce, "the gradient all-reduce")


def gather(flat, w):
    """Every rank's flat (a contiguous 1-D CuPy array of the same size on every rank), in rank
    order: a (ranks, size) array, returned once the all-gather has completed."""
    def queue(cupy, nccl, comm, code, stream):
        gathered = cupy.empty((w.size, flat.size), dtype=flat.dtype)
        comm.allGather(flat.data.ptr, gathered.data.ptr, flat.size, code, stream)
        return gathered

    return _collective(flat, w, queue, "the all-gather")


def _collective(flat, w, queue, what: str):
    """queue(cupy, nccl, communicator, NCCL dtype code, stream) queues NCCL calls with flat's device
    current (where it allocates too); returns what it returned once they have completed."""
    import cupy
    reason = why_unavailable()
    if reason:
        raise RuntimeError(f"rank {w.rank}: {what} of CuPy arrays needs NCCL: {reason}")
    from cupy.cuda import nccl
    code = _nccl_dtype(nccl, flat.dtype)
    with flat.device:
        comm = communicator(w, flat.device.id)
        result = queue(cupy, nccl, comm, code, cupy.cuda.get_current_stream().ptr)
        finished = cupy.cuda.Event(disable_timing=True)
        finished.record()
        wait_for_collective(finished, comm, w, f"{what} (NCCL)", nccl.get_version() >= ASYNC_ERRORS_SINCE)
    return result


def wait_for_collective(event, comm, w, what: str, async_errors: bool) -> None:
    """Poll `event` (recorded after the NCCL calls; `.done` never blocks) until it completes, for at
    most w.timeout_s. On a timeout, or an asynchronous NCCL error (`async_errors`: the library can
    report them), the communicator is aborted (ncclCommAbort, which also ends its kernels waiting
    on the GPU) and forgotten, and the error raised: the timeout as the MPI collectives raise it,
    a CollectiveTimeout, which the abort hook of distributed.init turns into the end of the job."""
    def completed():
        if async_errors:
            comm.check_async_error()      # raises NcclError once a peer's connection has failed
        return event.done

    try:
        in_time = poll_until(completed, w.timeout_s)
    except Exception:
        _abort(comm)
        raise
    if not in_time:
        _abort(comm)
        raise w.timeout_error(what)


def _abort(comm) -> None:
    """Abort `comm` where NCCL can (2.4 on) and drop it: a later reduction must not use it."""
    global _communicator
    if _communicator is not None and _communicator[1] is comm:
        _communicator = None
    abort = getattr(comm, "abort", None)
    if abort is not None:
        abort()
