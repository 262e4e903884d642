"""Launch code of kernels/batch_norm.cu: per-channel statistics (with the running-statistics update),
the fused normalise + affine (+ activation) pass and the backward (channel sums, then dx). x is viewed
as (N, C, HW). The reductions run a block per chunk of reduce.CHUNK elements of a channel (see the kernels).

`scale_source` is the per-channel invstd (training: from `stats`) or, with from_variance=True, a
variance (eval mode: the running variance) from which the kernels compute invstd themselves.
Without affine parameters the launchers pass weight 1 and bias 0. `activation` is the fused one's
name (cnn_gpu.functional.batch_norm.ACTIVATIONS) or None; the kernels take its ACTIVATION_CODES code.

float16 x: the statistics are FP32 (the kernels' acc_t): `stats` returns FP32 mean and invstd,
and `forward` / `backward` widen float16 statistics (running or saved ones) to FP32 first."""
from __future__ import annotations

import math

from .. import backend
from . import _arrivals
from ._grid import THREADS, acc, i32, i64, plane_walk_grid
from .reduce import chunked_blocks


def _view(x):
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _affine(xp, weight, bias, channels, dtype):
    return (xp.ones(channels, dtype=dtype) if weight is None else weight,
            xp.zeros(channels, dtype=dtype) if bias is None else bias)


def _statistics(mean, scale_source, dtype):
    """mean and scale_source in the kernels' compute type (a copy, a device call, only for float16
    ones)."""
    wide = backend.compute_dtype(dtype)
    return backend.astype(mean, wide), backend.astype(scale_source, wide)


def _reduction(be, n, channels, inner, compute):
    """(grid, partial workspace in the `compute` dtype, arrival counts) of a per-channel reduction."""
    blocks = chunked_blocks("batch_norm", n, channels, inner)
    xp = backend.array_module(be)
    partial = xp.empty(2 * blocks if blocks > channels else 0, dtype=compute)
    return (blocks,), partial, _arrivals.zeroed(be, channels)


# kernels/batch_norm.cu's ACTIVATION_* codes of the fused activation
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4}


def stats(be, x, running_mean, running_var, factor, eps):
    """(mean, invstd) of every channel with the biased variance, in the compute type; when
    running_mean is given, blends the mean and the unbiased variance into running_mean /
    running_var in place with `factor`."""
    xp = backend.array_module(be)
    n, channels, inner = _view(x)
    mean = xp.empty(channels, dtype=backend.compute_dtype(x.dtype))
    invstd = xp.empty(channels, dtype=mean.dtype)
    update = running_mean is not None
    if not update:   # the kernel's running arguments are unused: any arrays of the right size
        running_mean, running_var = xp.empty(channels, dtype=x.dtype), xp.empty(channels, dtype=x.dtype)
    grid, partial, arrivals = _reduction(be, n, channels, inner, mean.dtype)
    _arrivals.launch(be, "batch_norm", x.dtype, "batch_norm_stats", grid, (THREADS,),
                     (x, mean, invstd, running_mean, running_var, partial, arrivals,
                      *i64(n, channels, inner), *acc(x.dtype, eps, factor), *i32(update)))
    return mean, invstd


def forward(be, x, mean, scale_source, weight, bias, eps, from_variance, activation):
    xp = backend.array_module(be)
    n, channels, inner = _view(x)
    weight, bias = _affine(xp, weight, bias, channels, x.dtype)
    mean, scale_source = _statistics(mean, scale_source, x.dtype)
    y = xp.empty(x.shape, dtype=x.dtype)
    if x.size == 0:   # an empty batch or empty planes (eval mode takes them): nothing to normalise
        return y
    grid = plane_walk_grid(n * channels, inner, x.dtype)
    backend.launch(be, "batch_norm", x.dtype, "batch_norm_forward", grid, (THREADS,),
                   (x, y, mean, scale_source, weight, bias, *i64(n * channels), *i32(channels), *i64(inner),
                    *acc(x.dtype, eps), *i32(from_variance, ACTIVATION_CODES[activation])))
    return y


def _backward_sums(be, dy, x, mean, scale_source, weight, bias, eps, from_variance, activation):
    """(dweight, dbias, sums) of a non-empty x, the arguments as the kernels take them: the channel
    sums of g * xhat and g, and both in the compute type (sums: g's, then g * xhat's)."""
    xp = backend.array_module(be)
    n, channels, inner = _view(x)
    dweight = xp.empty(channels, dtype=x.dtype)
    dbias = xp.empty(channels, dtype=x.dtype)
    sums = xp.empty(2 * channels, dtype=mean.dtype)
    grid, partial, arrivals = _reduction(be, n, channels, inner, mean.dtype)
    _arrivals.launch(be, "batch_norm", x.dtype, "batch_norm_backward_sums", grid, (THREADS,),
                     (dy, x, mean, scale_source, weight, bias, dweight, dbias, sums,
                      partial, arrivals, *i64(n, channels, inner), *acc(x.dtype, eps),
                      *i32(from_variance, ACTIVATION_CODES[activation])))
    return dweight, dbias, sums


def _backward_dx(be, dy, x, mean, scale_source, weight, bias, sums, count, eps, from_variance, training, activation):
    """dx of a non-empty x, the arguments as the kernels take them; `sums` over `count` elements a channel."""
    n, channels, inner = _view(x)
    dx = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    grid = plane_walk_grid(n * channels, inner, x.dtype)
    backend.launch(be, "batch_norm", x.dtype, "batch_norm_backward_dx", grid, (THREADS,),
                   (dy, x, mean, scale_source, weight, bias, sums, dx, *i64(n * channels), *i32(channels),
                    *i64(inner, count), *acc(x.dtype, eps),
                    *i32(from_variance, training, ACTIVATION_CODES[activation])))
    return dx


def backward(be, dy, x, mean, scale_source, weight, bias, eps, from_variance, training, activation):
    """(dx, dweight, dbias); dweight and dbias are the channel sums of g * xhat and g."""
    xp = backend.array_module(be)
    n, channels, inner = _view(x)
    weight, bias = _affine(xp, weight, bias, channels, x.dtype)
    mean, scale_source = _statistics(mean, scale_source, x.dtype)
    if x.size == 0:   # eval mode's empty batch: sums over no element
        return xp.empty(x.shape, dtype=x.dtype), xp.zeros(channels, dtype=x.dtype), xp.zeros(channels, dtype=x.dtype)
    dweight, dbias, sums = _backward_sums(be, dy, x, mean, scale_source, weight, bias, eps, from_variance,
                                          activation)
    dx = _backward_dx(be, dy, x, mean, scale_source, weight, bias, sums, n * inner, eps, from_variance, training,
                      activation)
    return dx, dweight, dbias


# SyncBatchNorm's backward: the sums of its rank's share of the batch, added over the ranks, then dx
# from them. Statistics and weights as `backward` takes them.

def backward_sums(be, dy, x, mean, invstd, weight, bias):
    """(dweight, dbias, sums) of a non-empty x in training mode: the channel sums of g * xhat and g
    in x's dtype, and both in the compute type for backward_dx (sums: g's, then g * xhat's)."""
    weight, bias = _affine(backend.array_module(be), weight, bias, x.shape[1], x.dtype)
    mean, invstd = _statistics(mean, invstd, x.dtype)
    return _backward_sums(be, dy, x, mean, invstd, weight, bias, 0.0, False, None)


def backward_dx(be, dy, x, mean, invstd, weight, bias, sums, count):
    """Training mode's dx of a non-empty x from channel sums over `count` elements a channel (the
    whole batch's, of which x is a rank's share)."""
    weight, bias = _affine(backend.array_module(be), weight, bias, x.shape[1], x.dtype)
    mean, invstd = _statistics(mean, invstd, x.dtype)
    return _backward_dx(be, dy, x, mean, invstd, weight, bias, sums, count, 0.0, False, True, None)
