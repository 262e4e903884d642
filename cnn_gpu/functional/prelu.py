"""prelu and its backward pass (torch.nn.functional.prelu's semantics): y = x where x > 0, else
weight * x, with one slope for every element or one per channel (dimension 1 of x).

NumPy path (the oracle): the same comparisons as the kernels (a NaN x takes the slope; -0.0 gives
weight * -0.0), the slope's gradient summed per channel. float16: FP32 math, each output rounded once
(the slope's gradient summed unrounded, then rounded).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


def _view(x, weight) -> tuple[int, int, int]:
    """x as (outer, channels, inner), channels the slopes' count, after PyTorch's checks."""
    _checks.array(x, "x")
    _checks.array(weight, "weight")
    _checks.same_dtype("x", x, weight=weight)
    if x.ndim == 0:
        raise ValueError("prelu: Not allow zero-dim input tensor.")
    if weight.ndim > 1:
        raise ValueError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {weight.ndim}")
    slopes = weight.size
    channels = x.shape[1] if x.ndim >= 2 else 1
    if slopes not in (1, channels):
        raise ValueError(f"Mismatch of parameter numbers and input channel size. Found parameter numbers = {slopes} "
                         f"and channel size = {channels}.")
    if slopes == 1:
        return 1, 1, x.size
    return x.shape[0], channels, math.prod(x.shape[2:])


def _numpy_slopes(x, weight, view):
    outer, channels, inner = view
    return weight.reshape(1, channels, 1), x.reshape(outer, channels, inner)


@takes_float16(kernels=True)
def prelu(x, weight, *, backend=None):
    """x where x > 0, else weight * x; weight a scalar or (C,) of x's dimension 1 (its channels)."""
    view = _view(x, weight)
    be = _backend.resolve(backend, x, weight)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if be == "numpy":
        slopes, planes = _numpy_slopes(x, weight, view)
        with np.errstate(invalid="ignore"):
            return np.where(planes > 0, planes, slopes * planes).reshape(x.shape)
    from ..gpu import prelu as gpu_prelu
    x, weight = _checks.for_kernels(be, x, "x"), _checks.for_kernels(be, weight, "weight")
    return gpu_prelu.forward(be, x, weight, view)


@takes_float16(kernels=True)
def prelu_backward(dy, x, weight, *, backend=None):
    """(dx, dweight): dx = dy where x > 0, else weight * dy; dweight, weight's shape, the sum of
    x * dy where x <= 0 (over every element for one slope, else over each channel's)."""
    view = _view(x, weight)
    _checks.array(dy, "dy")
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", x.shape, " (the shape of x)")
    be = _backend.resolve(backend, dy, x, weight)
    xp = _backend.array_module(be)
    if x.size == 0:
        return xp.empty(x.shape, dtype=x.dtype), xp.zeros(weight.shape, dtype=weight.dtype)
    if be == "numpy":
        slopes, planes = _numpy_slopes(x, weight, view)
        grads = dy.reshape(planes.shape)
        with np.errstate(invalid="ignore"):
            positive = planes > 0
            dx = np.where(positive, grads, slopes * grads)
            dweight = np.where(positive, 0, planes * grads).sum(axis=(0, 2))
        return dx.reshape(x.shape), dweight.reshape(weight.shape).astype(x.dtype)
    from ..gpu import prelu as gpu_prelu
    dy, x, weight = (_checks.for_kernels(be, a, name) for a, name in ((dy, "dy"), (x, "x"), (weight, "weight")))
    dx, dweight = gpu_prelu.backward(be, dy, x, weight, view)
    return dx, dweight.reshape(weight.shape)
