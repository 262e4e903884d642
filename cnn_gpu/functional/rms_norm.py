"""rms_norm and its backward pass (torch.nn.functional.rms_norm's semantics).

Each row of x, its last len(normalized_shape) axes (which must be normalized_shape), is divided by
its root mean square, then scaled element by element: y = x * invstd * weight, invstd =
1/sqrt(mean(x^2) + eps), weight of normalized_shape (no bias). eps None is PyTorch's default: the
machine epsilon of the compute type (float32's for float16 and float32 x, float64's for float64).

Kernels: layer_norm's (kernels/row_norm.cu) in their mean-free mode (centered 0): the mean is
taken as 0, so the same launches, plans and fixed-order sums give mean(x^2) and drop dx's mean(g)
term. The backward's gradient of the weight comes with a bias gradient the kernel sums too and
that is dropped (one pass over dy that RMSNorm does not need, where a kernel of its own would
have duplicated every walk and slice plan).

NumPy path (the oracle): xhat = x * invstd in the compute type, y = xhat * weight rounded once;
dx = invstd * (g - xhat * mean(g * xhat)), g = dy * weight; dweight = the sum of dy * xhat over
the rows.

float16: statistics, sums, y and dy * weight in FP32, each output rounded once (on both paths).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from ._normalization import check_backward_arguments, saved_statistic, statistics_of_nothing
from .layer_norm import _check_common as check_layer_norm_arguments, _row_layout, _stats_shape


def _check_common(x, normalized_shape, weight, eps):
    """(normalized_shape as a tuple, eps), eps None PyTorch's default: the compute type's machine epsilon."""
    shape, checked_eps = check_layer_norm_arguments(x, normalized_shape, weight, None, 0.0 if eps is None else eps)
    return shape, float(np.finfo(_backend.compute_dtype(x.dtype)).eps) if eps is None else checked_eps


def _invstd(x, row_length, eps):
    """1/sqrt(mean(x^2) + eps) of every row on the NumPy path, in the compute type."""
    rows = x.reshape(-1, row_length).astype(_backend.compute_dtype(x.dtype))
    return 1 / np.sqrt(np.mean(rows * rows, axis=1) + rows.dtype.type(eps))


@takes_float16(kernels=True, compute_outputs=1)
def rms_norm(x, normalized_shape, weight=None, eps=None, *, return_stats=False, backend=None):
    """RMS normalisation as torch.nn.functional.rms_norm. Extension: return_stats=True returns (y,
    invstd), each row's 1/sqrt(mean(x^2) + eps) in native_layer_norm's statistics shape (x's
    leading axes, then ones) and the compute type, which rms_norm_backward can reuse."""
    shape, eps = _check_common(x, normalized_shape, weight, eps)
    be = _backend.resolve(backend, x, weight)
    x, weight = _checks.for_kernels(be, x, "x"), _checks.for_kernels(be, weight, "weight")
    xp = _backend.array_module(be)
    row_length, stats_shape = math.prod(shape), _stats_shape(x, shape)
    if x.size == 0:   # as PyTorch: an empty y
        y = xp.empty(x.shape, x.dtype)
        return (y, statistics_of_nothing(xp, stats_shape, x.dtype)[1]) if return_stats else y
    if be == "numpy":
        invstd = _invstd(x, row_length, eps)
        y = x.reshape(-1, row_length).astype(invstd.dtype) * invstd[:, None]
        if weight is not None:
            y *= weight.reshape(-1).astype(invstd.dtype)
        y = y.astype(x.dtype).reshape(x.shape)
    else:
        from ..gpu import row_norm
        y, _, invstd = row_norm.forward(be, x, _row_layout(x, row_length), weight, None, eps, centered=False)
    return (y, invstd.reshape(stats_shape)) if return_stats else y


@takes_float16(kernels=True, compute_args=("save_invstd",))
def rms_norm_backward(dy, x, normalized_shape, weight=None, eps=None, *, save_invstd=None, backend=None):
    """Gradients of rms_norm: (dx, dweight); dweight is None when weight is. The statistics are
    save_invstd when given (rms_norm(..., return_stats=True)), otherwise recomputed from x."""
    shape, eps = _check_common(x, normalized_shape, weight, eps)
    check_backward_arguments(dy, x, None, None)
    save_invstd = saved_statistic(save_invstd, "save_invstd", x, _stats_shape(x, shape), "one value per row")
    be = _backend.resolve(backend, dy, x, weight, save_invstd)
    dy, x, weight, save_invstd = (_checks.for_kernels(be, a, name) for a, name in (
        (dy, "dy"), (x, "x"), (weight, "weight"), (save_invstd, "save_invstd")))
    xp = _backend.array_module(be)
    row_length, compute = math.prod(shape), _backend.compute_dtype(x.dtype)
    if x.size == 0:   # sums over no element
        return xp.empty(x.shape, x.dtype), None if weight is None else xp.zeros(shape, x.dtype)
    if be != "numpy":
        from ..gpu import row_norm
        layout = _row_layout(x, row_length)
        if save_invstd is None:
            _, mean, save_invstd = row_norm.forward(be, x, layout, None, None, eps, write_y=False, centered=False)
        else:
            mean = xp.zeros(layout.rows, compute)
        dx, dweight, _ = row_norm.backward(be, dy, x, layout, mean, save_invstd, weight, weight is not None,
                                           centered=False)
        return dx, None if weight is None else dweight.reshape(shape)
    invstd = save_invstd.astype(compute) if save_invstd is not None else _invstd(x, row_length, eps)
    dy_rows = dy.reshape(-1, row_length).astype(compute)
    xhat = x.reshape(-1, row_length).astype(compute) * invstd[:, None]
    dweight = None if weight is None else (dy_rows * xhat).sum(axis=0).astype(x.dtype).reshape(shape)
    g = dy_rows if weight is None else dy_rows * weight.reshape(-1).astype(compute)
    dx = invstd[:, None] * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx.astype(x.dtype).reshape(x.shape), dweight
