"""cupy.cuda.nccl on the CPU: a communicator over MPI's world (mpi4py; run the ranks under mpiexec,
one process per simulated GPU) whose collectives take device pointers, as NCCL's do, and read and
write the memory behind them. Sums run in rank order in the buffer's dtype, so every rank gets the
same bits."""
from __future__ import annotations

import ctypes

import numpy as np

from . import runtime

available = True
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
NCCL_SUM = 0
_DTYPES = {NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}


class NcclError(RuntimeError):
    pass


def get_version():
    return 22005


def get_unique_id():
    return tuple(np.random.default_rng().integers(-128, 128, 128).tolist())


def _memory(ptr: int, count: int, datatype: int) -> np.ndarray:
    """The `count` elements of `datatype` at device address `ptr` (a NumPy array's storage here)."""
    dtype = np.dtype(_DTYPES[datatype])
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype=dtype)


class NcclCommunicator:
    def __init__(self, ndev: int, commId, rank: int):
        from mpi4py import MPI
        self._comm = MPI.COMM_WORLD
        if (self._comm.Get_size(), self._comm.Get_rank()) != (ndev, rank):
            raise NcclError(f"cupy_sim: NCCL rank {rank} of {ndev}, but MPI's world has rank "
                            f"{self._comm.Get_rank()} of {self._comm.Get_size()}")
        if len(set(self._comm.allgather(tuple(commId)))) != 1:
            raise NcclError("ncclInvalidArgument: the ranks were given different unique ids")
        self._device, self._aborted = runtime.getDevice(), False

    def _check(self):
        if self._aborted:
            raise NcclError("ncclInvalidUsage: the communicator was aborted")
        if runtime.getDevice() != self._device:
            raise NcclError(f"cupy_sim: a collective on GPU {runtime.getDevice()} with a communicator of GPU "
                            f"{self._device}")

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        self._check()
        if op != NCCL_SUM:
            raise NcclError(f"cupy_sim: reduction op {op} is not simulated")
        size, rank = self._comm.Get_size(), self._comm.Get_rank()
        parts = self._comm.allgather(_memory(sendbuf, recvcount * size, datatype).copy())
        total = parts[0][rank * recvcount:(rank + 1) * recvcount].copy()
        for part in parts[1:]:
            total += part[rank * recvcount:(rank + 1) * recvcount]
        _memory(recvbuf, recvcount, datatype)[...] = total

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self._check()
        chunks = self._comm.allgather(_memory(sendbuf, count, datatype).copy())
        _memory(recvbuf, count * len(chunks), datatype)[...] = np.concatenate(chunks)

    def check_async_error(self):
        self._check()

    def abort(self):
        self._aborted = True

    def destroy(self):
        pass
