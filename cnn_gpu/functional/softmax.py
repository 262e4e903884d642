"""softmax, log_softmax and softmin (softmax(-x)) over one dimension (torch.nn.functional's, with an
explicit dim) and their
backward passes `<name>_backward(dy, y, dim)`, which take the forward OUTPUT y, not x as the other
activations' backward passes do: PyTorch's formulas need only y,
    softmax:     dx = y * (dy - sum(dy * y))
    log_softmax: dx = dy - exp(y) * sum(dy)
with the sums over dim. The forward pass subtracts the maximum first (no overflow); a slice holding
NaN or +inf, or only -inf, is NaN throughout, as in PyTorch."""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


def _axis(dim, ndim: int) -> int:
    """dim as an axis of an array of rank ndim, negative dims counted from the end (a 0-d array
    takes 0 or -1, as in PyTorch); IndexError out of range, as PyTorch raises."""
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {dim!r}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"dim {dim} is out of range for an array of {ndim} dimensions "
                         f"(expected in [{-rank}, {rank - 1}])")
    return int(dim) % rank


def _as_rows(shape: tuple, axis: int) -> tuple[int, int, int]:
    """(outer, size, inner): the array viewed with the softmax dimension in the middle."""
    shape = shape or (1,)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _forward(x, dim, log: bool, backend, negate: bool = False):
    """softmax (log_softmax) of x, or of -x (negate: softmin's), along dim; -x made after the checks."""
    _checks.array(x, "x")
    axis = _axis(dim, x.ndim)
    be = _backend.resolve(backend, x)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if negate:
        x = _negated(x)
    if be == "numpy":
        with np.errstate(invalid="ignore"):   # inf - inf: the NaN PyTorch gives too
            z = x - x.max(axis=axis, keepdims=True)
            sum_exp = np.exp(z).sum(axis=axis, keepdims=True)
            return np.asarray(z - np.log(sum_exp) if log else np.exp(z) / sum_exp)   # asarray: 0-d x
    from ..gpu import softmax
    return softmax.forward(be, _checks.for_kernels(be, x, "x"), _as_rows(x.shape, axis), log)


def _backward(dy, y, dim, log: bool, backend, negate: bool = False):
    """The gradient of softmax (log_softmax) from dy, or from -dy (negate: softmin's), made after the checks."""
    _checks.array(y, "y")
    _checks.array(dy, "dy")
    _checks.same_dtype("y", y, dy=dy)
    _checks.shape_is(dy, "dy", y.shape, " (the shape of y)")
    axis = _axis(dim, y.ndim)
    be = _backend.resolve(backend, dy, y)
    if y.size == 0:
        return _backend.array_module(be).empty(y.shape, dtype=y.dtype)
    if negate:
        dy = _negated(dy)
    if be == "numpy":
        with np.errstate(invalid="ignore", over="ignore"):   # NaN and inf pass through as PyTorch's
            if log:
                return np.asarray(dy - np.exp(y) * dy.sum(axis=axis, keepdims=True))
            return np.asarray(y * (dy - (dy * y).sum(axis=axis, keepdims=True)))
    from ..gpu import softmax
    return softmax.backward(be, _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, y, "y"),
                            _as_rows(y.shape, axis), log)


@takes_float16(kernels=True)
def softmax(x, dim, *, backend=None):
    """exp(x) / sum(exp(x)) over dimension dim (negative counts from the end)."""
    return _forward(x, dim, False, backend)


@takes_float16(kernels=True)
def log_softmax(x, dim, *, backend=None):
    """x - log(sum(exp(x))) over dimension dim, without the cancellation of log(softmax(x))."""
    return _forward(x, dim, True, backend)


@takes_float16(kernels=True)
def softmax_backward(dy, y, dim, *, backend=None):
    """Gradient of softmax from the upstream gradient dy and the forward OUTPUT y = softmax(x, dim):
    y * (dy - sum(dy * y)) over dim."""
    return _backward(dy, y, dim, False, backend)


@takes_float16(kernels=True)
def log_softmax_backward(dy, y, dim, *, backend=None):
    """Gradient of log_softmax from the upstream gradient dy and the forward OUTPUT
    y = log_softmax(x, dim): dy - exp(y) * sum(dy) over dim."""
    return _backward(dy, y, dim, True, backend)


def _negated(a):
    """-a as device work (a replay negates its input again) and an array even for 0-d a (NumPy's
    negation of a 0-d array is a scalar)."""
    return _backend.device_call(lambda: _backend.module_of(a).asarray(-a))


@takes_float16(kernels=True)
def softmin(x, dim, *, backend=None):
    """softmax(-x, dim), as PyTorch's: the softmax kernels on the negated input (one more pass over x)."""
    return _forward(x, dim, False, backend, negate=True)


@takes_float16(kernels=True)
def softmin_backward(dy, y, dim, *, backend=None):
    """Gradient of softmin from dy and the forward OUTPUT y = softmin(x, dim): softmax_backward(-dy, y, dim),
    the bits of PyTorch's -softmax_backward(dy, y) (a negation is exact)."""
    return _backward(dy, y, dim, False, backend, negate=True)
