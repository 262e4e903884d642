"""Data-parallel training on MPI (mpi4py) and NCCL (cupy.cuda.nccl).

MPI starts and coordinates the processes (`mpiexec -n 4 cnn-gpu train ...`) and reduces host
arrays (the numpy and emu backends); NCCL reduces CuPy arrays between GPUs, one process per GPU
(the device is the local rank). Without MPI (mpi4py missing, or not launched by mpiexec) the
world is a single process and every call is a cheap no-op, so the same script runs either way.

Reductions are deterministic. Over MPI, gradients are packed into fixed-size buckets in parameter
order, each bucket is split into one chunk per rank, rank r sums chunk r over the ranks in rank
order (0, 1, ..., P-1), and the summed chunks are gathered back, whatever algorithm the MPI library
would have chosen for its own all-reduce. Over NCCL, each dtype's gradients are one reduce-scatter
(each chunk summed in the order of NCCL's algorithm) and one all-gather. Either way every rank holds
bit-identical results, and a rerun with the same world size (and NCCL setup) reproduces them.
allgather hands every rank all ranks' arrays in rank order (MPI's or NCCL's all-gather), for
statistics merged otherwise than by a sum (nn.SyncBatchNorm's per-channel count, mean and M2).

    from cnn_gpu import distributed as dist
    dist.init()
    dist.broadcast_parameters(model)          # every rank starts from rank 0's weights
    ...
    model.backward(loss_fn.backward())
    dist.allreduce_gradients(model)           # mean over ranks
    optimizer.step()
"""
from ._world import (CollectiveTimeout, ReplicaMismatch, World, barrier, check_replicas, find_mpiexec, init,
                     local_rank, rank, world, world_size)
from ._reduce import (BUCKET_BYTES, allgather, allreduce_gradients, allreduce_sum, broadcast_buffers,
                      broadcast_parameters)
from ._shard import shard_batches

__all__ = ["init", "rank", "world_size", "local_rank", "barrier", "world", "World", "broadcast_parameters",
           "broadcast_buffers",
           "allreduce_gradients", "allreduce_sum", "allgather", "check_replicas", "shard_batches", "BUCKET_BYTES",
           "CollectiveTimeout", "ReplicaMismatch", "find_mpiexec"]
