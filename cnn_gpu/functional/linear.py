"""Fully connected layer y = x @ weight.T + bias and its backward pass (BLAS GEMMs)."""
from __future__ import annotations

from .. import backend as _backend
from . import _checks


def _check(x, weight):
    _checks.array(x, "x", ndim=2)
    _checks.array(weight, "weight", ndim=2)
    _checks.same_dtype("x", x, weight=weight)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features (shape {tuple(x.shape)}) but weight expects "
                         f"{weight.shape[1]} (weight shape {tuple(weight.shape)}: (out_features, in_features))")


def linear(x, weight, bias=None, *, backend=None):
    """x (N, in_features), weight (out_features, in_features), bias (out_features,) -> (N, out_features)."""
    _check(x, weight)
    _checks.bias(bias, weight.shape[0], weight)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y
    from ..gpu import linear as gpu_linear
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    return gpu_linear.forward(be, x, weight, bias)


def linear_backward(dy, x, weight, bias=True, *, backend=None):
    """Gradients of linear: (dx, dweight, dbias); dbias is None when bias=False."""
    _check(x, weight)
    _checks.array(dy, "dy", ndim=2)
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", (x.shape[0], weight.shape[0]), " (batch, out_features)")
    bias = _checks.flag(bias, "bias")
    be = _backend.resolve(backend, dy, x, weight)
    if be == "numpy":
        return dy @ weight, dy.T @ x, (dy.sum(axis=0) if bias else None)
    from ..gpu import linear as gpu_linear
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    return gpu_linear.backward(be, dy, x, weight, bias)
