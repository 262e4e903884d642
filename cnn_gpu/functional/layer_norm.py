"""layer_norm and its backward pass (torch.nn.functional.layer_norm's semantics).

Each row of x, its last len(normalized_shape) axes (which must be normalized_shape), is normalised
by its mean and biased variance, then scaled and shifted element by element: y = (x - mean) *
invstd * weight + bias, weight and bias of normalized_shape. No running statistics.

Kernels (kernels/row_norm.cu, shared with group_norm): a block a row; the forward is one launch
(statistics and y with the affine fused); the backward one launch for dx (dy * weight fused) and
one for dweight and dbias (8 lanes an element of normalized_shape, each summing every 8th row in
order, then added in order), plus one for the statistics when they are not given. Fewer rows than
the GPU's SMs take are split into slices of several blocks, their statistics and backward sums
in a launch of their own (gpu.row_norm.plan).

NumPy path (the oracle): the statistics and dx are batch norm's functions on x viewed as (1,
rows, row length): each row a channel, whose batch statistics are the row's; dx is batch norm's
training backward, without affine, of dy * weight on that view. y and the sums of dweight and
dbias over the rows are NumPy expressions in the compute type, y rounded once.

float16: statistics, sums, y and dy * weight in FP32, each output rounded once (on both paths).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from ._normalization import check_backward_arguments, saved_statistic, statistics_of_nothing
from .batch_norm import _invstd, _numpy_backward, _numpy_stats


def normalized_shape_tuple(normalized_shape) -> tuple[int, ...]:
    """PyTorch's normalized_shape, an int or a sequence of ints, as a tuple."""
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        length = len(normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}") from None
    return _checks.shape_tuple(normalized_shape, "normalized_shape", length)


def _rows(x, row_length):
    """(1, rows, row length): each row a channel."""
    return x.reshape(1, -1, row_length)


def _element_array(a, name, x, shape):
    if a is None:
        return None
    _checks.array(a, name)
    _checks.shape_is(a, name, shape, " (normalized_shape)")
    _checks.same_dtype("x", x, **{name: a})
    return a


def _check_common(x, normalized_shape, weight, bias, eps):
    _checks.array(x, "x")
    shape = normalized_shape_tuple(normalized_shape)
    if not shape or x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"x must end with normalized_shape={shape} (shape [*, {', '.join(map(str, shape))}]), got "
                         f"shape {tuple(x.shape)}")
    _element_array(weight, "weight", x, shape)
    _element_array(bias, "bias", x, shape)
    return shape, _checks.real_number(eps, "eps", minimum=0.0)


def _stats_shape(x, shape):
    """PyTorch's (native_layer_norm's) shape of the statistics: x's leading axes, then ones."""
    return x.shape[:x.ndim - len(shape)] + (1,) * len(shape)


def _statistics(x, row_length, eps):
    """(mean, invstd) of every row on the NumPy path, in x's dtype (float32 for float16 x, widened)."""
    mean, variance = _numpy_stats(_rows(x, row_length))
    return mean, _invstd(variance, eps)


def _row_layout(x, row_length):
    """kernels/row_norm.cu's view of x: its rows, one parameter an element."""
    from ..gpu.row_norm import RowLayout
    return RowLayout(x.size // row_length, row_length, 1, 1)


def _xhat(x, mean, invstd, row_length):
    """The normalised rows (rows, row length) in the statistics' (compute) type."""
    return (x.reshape(-1, row_length).astype(mean.dtype) - mean[:, None]) * invstd[:, None]


@takes_float16(kernels=True, compute_outputs=2)
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, backend=None):
    """Layer normalisation as torch.nn.functional.layer_norm. Extension: return_stats=True returns
    (y, mean, invstd), the statistics of each row in native_layer_norm's shape (x's leading axes,
    then ones) and the compute type (float32 for float16 x), which layer_norm_backward can reuse."""
    shape, eps = _check_common(x, normalized_shape, weight, bias, eps)
    be = _backend.resolve(backend, x, weight, bias)
    x, weight, bias = (_checks.for_kernels(be, a, name) for a, name in ((x, "x"), (weight, "weight"), (bias, "bias")))
    xp = _backend.array_module(be)
    row_length, compute = math.prod(shape), _backend.compute_dtype(x.dtype)
    if x.size == 0:   # as PyTorch: an empty y
        y = xp.empty(x.shape, x.dtype)
        return (y, *statistics_of_nothing(xp, _stats_shape(x, shape), x.dtype)) if return_stats else y
    if be == "numpy":
        mean, invstd = _statistics(x, row_length, eps)
        y = _xhat(x, mean, invstd, row_length)
        if weight is not None:
            y *= weight.reshape(-1).astype(compute)
        if bias is not None:
            y += bias.reshape(-1).astype(compute)
        y = y.astype(x.dtype).reshape(x.shape)
    else:
        from ..gpu import row_norm
        y, mean, invstd = row_norm.forward(be, x, _row_layout(x, row_length), weight, bias, eps)
    stats_shape = _stats_shape(x, shape)
    return (y, mean.reshape(stats_shape), invstd.reshape(stats_shape)) if return_stats else y


@takes_float16(kernels=True, compute_args=("save_mean", "save_invstd"))
def layer_norm_backward(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5, *, save_mean=None,
                        save_invstd=None, backend=None):
    """Gradients of layer_norm: (dx, dweight, dbias); dweight / dbias are None when weight / bias
    are. The statistics are save_mean / save_invstd when given (layer_norm(..., return_stats=True)),
    otherwise recomputed from x."""
    shape, eps = _check_common(x, normalized_shape, weight, bias, eps)
    check_backward_arguments(dy, x, save_mean, save_invstd)
    save_mean, save_invstd = (saved_statistic(a, name, x, _stats_shape(x, shape), "one value per row")
                              for a, name in ((save_mean, "save_mean"), (save_invstd, "save_invstd")))
    be = _backend.resolve(backend, dy, x, weight, bias, save_mean, save_invstd)
    dy, x, weight, bias, save_mean, save_invstd = (
        _checks.for_kernels(be, a, name) for a, name in (
            (dy, "dy"), (x, "x"), (weight, "weight"), (bias, "bias"), (save_mean, "save_mean"),
            (save_invstd, "save_invstd")))
    xp = _backend.array_module(be)
    row_length = math.prod(shape)
    if x.size == 0:   # sums over no element
        return (xp.empty(x.shape, x.dtype), *(None if a is None else xp.zeros(shape, x.dtype) for a in (weight, bias)))
    if be != "numpy":
        from ..gpu import row_norm
        layout = _row_layout(x, row_length)
        if save_mean is None:
            _, save_mean, save_invstd = row_norm.forward(be, x, layout, None, None, eps, write_y=False)
        dx, dweight, dbias = row_norm.backward(be, dy, x, layout, save_mean, save_invstd, weight,
                                               weight is not None or bias is not None)
        return (dx, *(None if a is None else gradient.reshape(shape)
                      for a, gradient in ((weight, dweight), (bias, dbias))))
    mean, invstd = (save_mean, save_invstd) if save_mean is not None else _statistics(x, row_length, eps)
    dy_rows = dy.reshape(-1, row_length)
    dweight = None if weight is None else (
        (dy_rows.astype(mean.dtype) * _xhat(x, mean, invstd, row_length)).sum(axis=0).astype(x.dtype).reshape(shape))
    dbias = None if bias is None else dy_rows.sum(axis=0, dtype=mean.dtype).astype(x.dtype).reshape(shape)
    g = dy if weight is None else dy * weight
    dx = _numpy_backward(_rows(g, row_length), _rows(x, row_length), mean, invstd, None, None, True, None)[0]
    return dx.reshape(x.shape), dweight, dbias
