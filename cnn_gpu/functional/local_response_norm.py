"""local_response_norm and its backward pass (torch.nn.functional.local_response_norm's semantics):
each element divided by (k + alpha * S / size)^beta, S the sum of the squares of the `size` channels
around it (channel c's window [c - size//2, c + (size-1)//2], PyTorch's zero padding of the channels
and average pooling of the squares, whose divisor is always `size`), over x (N, C, *) of 3 or more
dimensions.

Built on a small kernel family of its own (kernels/local_response_norm.cu), not from the library's
pooling and element-wise ops: PyTorch's composition (square, pad, avg_pool3d, scale, pow, divide) is
six passes and a padded copy where one pass reads each window straight from x; the backward pass is
two (each element's terms, then the windows' sums), summed in a fixed order.

NumPy path (the oracle): PyTorch's operations in the same order (the squares summed in increasing
channel, / size, * alpha, + k, ** beta), its autograd's chain for the backward pass. float16: FP32
math, each output rounded once.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


def _view(x, size, alpha, beta, k):
    """(x as (N, C, inner), size, alpha, beta, k) after PyTorch's checks."""
    _checks.array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {x.ndim} dimensions)")
    size = _checks.whole_number(size, "size")
    settings = tuple(_checks.real_number(value, name) for value, name in ((alpha, "alpha"), (beta, "beta"), (k, "k")))
    return (x.shape[0], x.shape[1], math.prod(x.shape[2:])), size, *settings


def _window_sums(a, before, size):
    """For each channel c of a (N, C, inner): the sum of a over channels [c - before, c - before + size)
    within [0, C), added in increasing channel (zeros for the channels outside, as PyTorch pads)."""
    N, C, inner = a.shape
    padded = np.zeros((N, C + size - 1, inner), dtype=a.dtype)
    padded[:, before:before + C] = a
    sums = np.zeros_like(a)
    for offset in range(size):
        sums += padded[:, offset:offset + C]
    return sums


def _numpy_base(planes, size, alpha, k):
    return _window_sums(planes * planes, size // 2, size) / size * alpha + k


@takes_float16(kernels=True)
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, backend=None):
    """x / (k + alpha * S / size)^beta over x (N, C, *), S the sum of squares over the `size` channels
    [c - size//2, c + (size-1)//2] around each channel c (those past the edges count as zeros)."""
    view, size, alpha, beta, k = _view(x, size, alpha, beta, k)
    be = _backend.resolve(backend, x)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if be == "numpy":
        planes = x.reshape(view)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (planes / _numpy_base(planes, size, alpha, k) ** beta).reshape(x.shape)
    from ..gpu import local_response_norm as gpu_lrn
    return gpu_lrn.forward(be, _checks.for_kernels(be, x, "x"), view, size, alpha, beta, k)


@takes_float16(kernels=True)
def local_response_norm_backward(dy, x, size, alpha=1e-4, beta=0.75, k=1.0, *, backend=None):
    """dx of local_response_norm(x, ...): PyTorch's autograd chain, dy / P - 2 x sum over the windows
    holding the element of dy x beta d^(beta-1) alpha / (size P^2), d = k + alpha S / size, P = d^beta."""
    view, size, alpha, beta, k = _view(x, size, alpha, beta, k)
    _checks.array(dy, "dy")
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", x.shape, " (the shape of x)")
    be = _backend.resolve(backend, dy, x)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if be == "numpy":
        planes, grads = x.reshape(view), dy.reshape(view)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            base = _numpy_base(planes, size, alpha, k)
            power = base ** beta
            terms = -grads * planes / (power * power) * (beta * base ** (beta - 1)) * alpha / size
            dx = grads / power + 2 * planes * _window_sums(terms, (size - 1) // 2, size)
        return dx.reshape(x.shape)
    from ..gpu import local_response_norm as gpu_lrn
    dy, x = _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, x, "x")
    return gpu_lrn.backward(be, dy, x, view, size, alpha, beta, k)
