"""Fully connected layer y = x @ weight.T + bias and its backward pass (BLAS GEMMs).

x has any number of leading dimensions, (..., in_features), including none (a 1-D x); they are
flattened into the rows of one GEMM (a view for C-contiguous x) and restored on the results."""
from __future__ import annotations

import math

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


def _check(x, weight):
    _checks.array(x, "x")
    _checks.array(weight, "weight", ndim=2)
    _checks.same_dtype("x", x, weight=weight)
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension (..., in_features), got a 0-D array")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features (shape {tuple(x.shape)}) but weight expects "
                         f"{weight.shape[1]} (weight shape {tuple(weight.shape)}: (out_features, in_features))")


def _rows(be, a, name):
    """`a` (..., features) as a (rows, features) matrix: C-contiguous for the kernel backends
    (refused rather than copied on cuda, as every op does)."""
    rows = math.prod(a.shape[:-1])   # not -1: a reshape cannot infer it with 0 features
    return _checks.for_kernels(be, a, name).reshape(rows, a.shape[-1])


@takes_float16(kernels="float32")
def linear(x, weight, bias=None, *, backend=None):
    """x (..., in_features), weight (out_features, in_features), bias (out_features,) ->
    y (..., out_features)."""
    _check(x, weight)
    _checks.bias(bias, weight.shape[0], weight)
    be = _backend.resolve(backend, x, weight, bias)
    out_shape = x.shape[:-1] + (weight.shape[0],)
    x = _rows(be, x, "x")
    if be == "numpy":
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y.reshape(out_shape)
    from ..gpu import linear as gpu_linear
    weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((weight, "weight"), (bias, "bias")))
    return gpu_linear.forward(be, x, weight, bias).reshape(out_shape)


@takes_float16(kernels="float32")
def linear_backward(dy, x, weight, bias=True, *, input_grad=True, weight_grad=True, backend=None):
    """Gradients of linear: (dx, dweight, dbias); dbias is None when bias=False, dx None when
    input_grad=False, dweight None when weight_grad=False (as conv2d_backward). dy is
    (..., out_features) with the leading dimensions of x; dx has the shape of x."""
    _check(x, weight)
    _checks.array(dy, "dy")
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", x.shape[:-1] + (weight.shape[0],), " (x's leading dimensions, out_features)")
    bias, input_grad, weight_grad = _checks.gradient_flags(bias, input_grad, weight_grad)
    be = _backend.resolve(backend, dy, x, weight)
    x_shape = x.shape
    dy, x = _rows(be, dy, "dy"), _rows(be, x, "x")
    if be == "numpy":
        dx = (dy @ weight).reshape(x_shape) if input_grad else None
        return dx, (dy.T @ x if weight_grad else None), (dy.sum(axis=0) if bias else None)
    from ..gpu import linear as gpu_linear
    dx, dw, db = gpu_linear.backward(be, dy, x, _checks.for_kernels(be, weight, "weight"), bias, input_grad,
                                     weight_grad)
    return (None if dx is None else dx.reshape(x_shape)), dw, db
