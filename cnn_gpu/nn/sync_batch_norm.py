"""SyncBatchNorm: batch normalisation with the statistics of the whole batch that the ranks of a
data-parallel job (cnn_gpu.distributed) share, as torch.nn.SyncBatchNorm.

In training, with more than one process, each rank reduces its own share of the batch to every
channel's mean and M2 (batch_norm's statistics: Welford in the kernels, two passes in NumPy), the
ranks all-gather their counts on the host (MPI) and the (mean, M2) rows (MPI for host arrays, NCCL
for CuPy ones: cnn_gpu.distributed.allgather), and every rank merges them in closed form in float64
(Chan et al.'s combination of all the ranks at once), so all ranks normalise with the same bits and
no E[x^2] - E[x]^2 cancels. The running statistics take the
global mean and unbiased variance. The backward all-reduces the channel sums of dy and dy * xhat
(cnn_gpu.distributed.allreduce_sum: in rank order over MPI, NCCL's ring order on cuda, the same bits
on every rank either way) and takes dx from them; the weight's and bias's
gradients stay this rank's own (PyTorch's: DistributedDataParallel, here allreduce_gradients,
reduces them with the other parameters). In eval mode, or in a single-process world, it is
BatchNorm (any input rank from 2).

torch.nn.SyncBatchNorm refuses CPU tensors; here the numpy and emu backends synchronise over MPI as
the cuda one does over NCCL. A rank may hold an empty share, or one value per channel: only the
whole batch needs more than one.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import backend as _backend
from .. import distributed
from ..functional import _checks
from ..functional._normalization import check_backward_arguments
from ..functional.batch_norm import _channel_shape, _check_common, _numpy_forward, _numpy_stats, _reduce_axes
from ..gpu import batch_norm as gpu_bn
from .layers import _BatchNorm

# What a synchronised forward keeps for its backward: the statistics and count of the whole batch.
_Synced = namedtuple("_Synced", "x mean invstd count")


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation over (N, C, *) inputs with the batch statistics of every rank's share
    (see the module's docstring); PyTorch's arguments, state and convert_sync_batchnorm.
    process_group: None, the world (cnn_gpu.distributed has no other group)."""

    _input_ranks = range(2, 65)   # any rank NumPy holds, from 2
    _expected_input = "an input of at least 2 dimensions (N, C, ...)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, dtype=np.float32):
        if process_group is not None:
            raise ValueError(f"process_group must be None (the world of cnn_gpu.distributed, its only group), "
                             f"got {process_group!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        self.process_group = None

    def forward(self, x):
        if not self.training or distributed.world_size() == 1:   # BatchNorm's statistics are the batch's
            return super().forward(x)
        if x.ndim not in self._input_ranks:
            raise ValueError(f"{type(self).__name__} expects {self._expected_input}, got shape {tuple(x.shape)}")
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        weight, bias = (self.weight.data, self.bias.data) if self.affine else (None, None)
        # batch_norm's checks but the count's, which is the whole batch's here (after the gather)
        _check_common(x, *running, weight, bias, False, self.eps, None, have_stats=True)
        _checks.shape_is(x, "x", (*x.shape[:1], self.num_features, *x.shape[2:]), f" ({self.num_features} channels)")
        for name, buffer in zip(("running_mean", "running_var"), running):
            _checks.updatable(buffer, name)
        if self.eps == 0.0:   # a constant channel would divide by zero (PyTorch refuses it too)
            raise ValueError("eps must be positive during training, got 0.0")
        be = _backend.resolve(self.backend, x, *running, weight, bias)
        if be != "numpy":
            x = _checks.for_kernels(be, x, "x")
        count, mean, variance = _whole_batch_moments(be, x)
        factor = self._blend_factor()
        compute = _backend.compute_dtype(x.dtype)
        xp = _backend.array_module(be)
        if running[0] is not None:
            for buffer, value in zip(running, (mean, variance * (count / (count - 1)))):
                buffer[...] = ((1 - factor) * buffer.astype(compute) + factor * value.astype(compute)).astype(
                    buffer.dtype)
        mean = mean.astype(compute)
        invstd = 1 / xp.sqrt(variance.astype(compute) + compute.type(self.eps))
        if be == "numpy":
            weight, bias = (None, None) if weight is None else (weight.astype(compute), bias.astype(compute))
            y = _numpy_forward(x.astype(compute, copy=False), mean, invstd, weight, bias, None)
            y = y.astype(x.dtype, copy=False)
        else:
            y = gpu_bn.forward(be, x, mean, invstd, weight, bias, self.eps, False, None)
        self._saved = _Synced(x, mean, invstd, count)
        return y

    def backward(self, dy, input_grad=True):
        """In training with several ranks, dx needs every rank's sums, so every rank must run it."""
        saved = self._saved_for_backward()
        if not isinstance(saved, _Synced):
            return super().backward(dy, input_grad)
        if self._nothing_to_compute(input_grad):
            return None
        x, mean, invstd, count = saved
        check_backward_arguments(dy, x, None, None)
        weight, bias = (self.weight.data, self.bias.data) if self.affine else (None, None)
        be = _backend.resolve(self.backend, dy, x)
        # without input_grad (every rank alike) only the local dweight and dbias: no all-reduce, no dx
        if be == "numpy":
            dx, dweight, dbias = _numpy_backward(dy, x, mean, invstd, weight, count, input_grad)
        else:
            dx, dweight, dbias = _kernel_backward(be, _checks.for_kernels(be, dy, "dy"), x, mean, invstd, weight,
                                                  bias, count, input_grad)
        if self.affine:
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
        return dx

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """`module` with every BatchNorm1d, 2d and 3d in it (itself included) replaced by a
        SyncBatchNorm holding the same parameters and buffers (the same arrays) and training flag;
        containers are changed in place and returned, as PyTorch's. Refused before anything changes
        where a lazy batch norm has not inferred its num_features yet (PyTorch makes a
        SyncBatchNorm(0) of it, which no input fits)."""
        waiting = [name or type(module).__name__ for name, child in module.named_modules()
                   if isinstance(child, _BatchNorm) and getattr(child, "has_uninitialized_params", bool)()]
        if waiting:
            raise ValueError(f"convert_sync_batchnorm: the lazy batch norm {waiting[0]} has no num_features yet; "
                             f"run a forward first")
        return cls._converted(module, process_group)

    @classmethod
    def _converted(cls, module, process_group):
        converted = module
        if isinstance(module, _BatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, dtype=_dtype_of(module))
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(converted, name, getattr(module, name))
            object.__setattr__(converted, "training", module.training)
            object.__setattr__(converted, "backend", module.backend)
        for name, child in list(module.named_children()):
            converted.add_module(name, cls._converted(child, process_group))
        return converted


def _dtype_of(batch_norm) -> np.dtype:
    state = batch_norm.weight.data if batch_norm.affine else batch_norm.running_mean
    return np.float32 if state is None else state.dtype


def _whole_batch_moments(be, x):
    """(count, mean, biased variance) of each channel over every rank's x, the count an int, mean
    and variance float64 arrays on x's backend, the same bits on every rank: the ranks' counts
    all-gathered on the host (MPI: no read of the device), then this rank's (mean, M2) all-gathered
    and merged in closed form (Chan et al.'s combination of all ranks at once: the count-weighted
    mean, then M2 as the sum of the ranks' M2 and their count-weighted squared distances from it;
    no E[x^2] - E[x]^2 cancels). ValueError on every rank, before any device work, where the whole
    batch holds at most one value per channel."""
    xp = _backend.array_module(be)
    count = x.size // x.shape[1]
    counts = distributed.world().allgather_object(count, "SyncBatchNorm's counts")
    total = sum(counts)
    if total <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got {total} over the "
                         f"{len(counts)} ranks (input of shape {tuple(x.shape)} on this one)")
    if count == 0:   # an empty share: nothing to reduce (its mean would be 0 / 0)
        mean = variance = xp.zeros(x.shape[1])
    elif be == "numpy":
        mean, variance = _numpy_stats(x.astype(_backend.compute_dtype(x.dtype)))
    else:   # eps 0: invstd = 1 / sqrt(variance) (inf for a constant channel, whose variance is 0 again)
        mean, invstd = gpu_bn.stats(be, x, None, None, 0.0, 0.0)
        variance = 1 / xp.square(invstd.astype(np.float64))
    gathered = distributed.allgather(xp.concatenate((mean.astype(np.float64), variance * count)))
    means, m2s = gathered[:, :x.shape[1]], gathered[:, x.shape[1]:]
    weights = xp.asarray(np.array(counts, dtype=np.float64)[:, None])
    mean = (weights * means).sum(axis=0) / total
    delta = means - mean
    m2 = m2s.sum(axis=0) + (weights * delta * delta).sum(axis=0)
    return total, mean, m2 / total


def _all_ranks_sums(sums):
    """The channel sums (dy's, then dy * xhat's) added over the ranks."""
    return distributed.allreduce_sum([sums])[0]


def _numpy_backward(dy, x, mean, invstd, weight, count, input_grad):
    compute = mean.dtype
    shape, axes = _channel_shape(x), _reduce_axes(x)
    dy = dy.astype(compute)
    xhat = (x.astype(compute) - mean.reshape(shape)) * invstd.reshape(shape)
    local = np.concatenate((dy.sum(axis=axes), (dy * xhat).sum(axis=axes)))
    channels = x.shape[1]
    dweight, dbias = local[channels:].astype(x.dtype), local[:channels].astype(x.dtype)
    if not input_grad:
        return None, dweight, dbias
    sum_dy, sum_dy_xhat = _all_ranks_sums(local).reshape(2, -1)
    scale = invstd if weight is None else invstd * weight.astype(compute)
    dx = (dy - (sum_dy / count).reshape(shape) - xhat * (sum_dy_xhat / count).reshape(shape)) * scale.reshape(shape)
    return dx.astype(x.dtype), dweight, dbias


def _kernel_backward(be, dy, x, mean, invstd, weight, bias, count, input_grad):
    xp = _backend.array_module(be)
    if x.size == 0:   # an empty share adds nothing, but meets the other ranks in the all-reduce
        zeros = xp.zeros(x.shape[1], x.dtype)
        if not input_grad:
            return None, zeros, zeros.copy()
        _all_ranks_sums(xp.zeros(2 * x.shape[1], mean.dtype))
        return xp.empty(x.shape, x.dtype), zeros, zeros.copy()
    dweight, dbias, sums = gpu_bn.backward_sums(be, dy, x, mean, invstd, weight, bias)
    if not input_grad:
        return None, dweight, dbias
    dx = gpu_bn.backward_dx(be, dy, x, mean, invstd, weight, bias, _all_ranks_sums(sums), count)
    return dx, dweight, dbias
