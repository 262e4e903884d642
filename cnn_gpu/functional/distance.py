"""normalize, cosine_similarity, pairwise_distance (torch.nn.functional's semantics) and their backward
passes, and one_hot.

- normalize(x, p=2.0, dim=1, eps=1e-12): x / max(||x||_p, eps) along `dim`.
- cosine_similarity(x1, x2, dim=1, eps=1e-8): PyTorch 2's, the sum along `dim` of
  (x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps)), the clamps made without gradient.
- pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False): ||x1 - x2 + eps||_p along the last dim.
- one_hot(labels, num_classes=-1): int64 labels -> int64 (*labels.shape, num_classes) (no gradient).

p is a finite p > 0 or inf (PyTorch also takes 0 and negative p; refused here). x1 and x2 must have
the same shape (PyTorch broadcasts them; not here). Gradients are PyTorch's (its norm_backward: 0
where a norm is 0; the infinity norm's split evenly over the elements at the maximum).

NumPy path (the oracle): the same formulas; float16 computes in FP32 and rounds each output once.
emu and cuda: kernels/distance.cu (a group of lanes a contiguous row, else a thread a row, or a block's
segments a row where strided rows are too few to fill the GPU a thread each; each sum in a fixed order).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


def _p(p) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a real number, got {p!r}")
    p = float(p)
    if not (p > 0 and (math.isfinite(p) or p == math.inf)):
        raise ValueError(f"p must be a finite number > 0 or inf (PyTorch's other norms are not supported), got {p}")
    return p


def _dim(dim, ndim: int) -> int:
    """`dim` of an array of ndim >= 1 dimensions, negative counted from the end (PyTorch's IndexError)."""
    dim = _checks.whole_number(dim, "dim", minimum=-2**63)
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return dim % ndim


def _at_least_1d(a, op: str):
    if a.ndim == 0:
        raise ValueError(f"{op}: the input must have at least one dimension")


def _view(shape, dim) -> tuple[int, int, int]:
    """shape as (outer, size, inner) around `dim`."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def _pair(x1, x2, name="x1", other="x2"):
    _checks.array(x1, name)
    _checks.array(x2, other)
    _checks.same_dtype(name, x1, **{other: x2})
    if x1.shape != x2.shape:
        raise ValueError(f"{name} and {other} must have the same shape (broadcasting is not supported), got "
                         f"{tuple(x1.shape)} and {tuple(x2.shape)}")


def _lp_norm(a, p, axis):
    """PyTorch's vector norm of a along `axis`, kept as a size-1 axis."""
    magnitude = np.abs(a)
    if p == math.inf:
        return magnitude.max(axis=axis, keepdims=True)
    if p == 1:
        return magnitude.sum(axis=axis, keepdims=True)
    if p == 2:
        return np.sqrt((magnitude * magnitude).sum(axis=axis, keepdims=True))
    return (magnitude ** p).sum(axis=axis, keepdims=True) ** (1 / p)


def _lp_norm_gradient(a, norm, p, axis):
    """d norm / d a (PyTorch's norm_backward), norm from _lp_norm."""
    if p == math.inf:
        magnitude = np.abs(a)
        at_maximum = (magnitude == norm) | np.isnan(magnitude)
        return np.sign(a) * at_maximum / at_maximum.sum(axis=axis, keepdims=True).astype(a.dtype)
    if p == 1:
        return np.sign(a)
    safe = np.where(norm == 0, 1, norm)
    if p == 2:
        return np.where(norm == 0, 0, a / safe)
    with np.errstate(divide="ignore", invalid="ignore"):   # |0|^(p-1) for p < 1: masked, as PyTorch's
        return np.where((norm == 0) | (a == 0), 0, np.sign(a) * np.abs(a) ** (p - 1) / safe ** (p - 1))


def _clamp_min(norm, eps):
    return np.where(norm < eps, eps, norm)   # a NaN norm stays NaN


@takes_float16(kernels=True)
def normalize(x, p=2.0, dim=1, eps=1e-12, *, backend=None):
    """x / max(||x||_p, eps), the norm along `dim`."""
    _checks.array(x, "x")
    _at_least_1d(x, "normalize")
    p, dim, eps = _p(p), _dim(dim, x.ndim), _checks.real_number(eps, "eps")
    be = _backend.resolve(backend, x)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if be == "numpy":
        with np.errstate(invalid="ignore", divide="ignore"):
            return x / _clamp_min(_lp_norm(x, p, dim), eps)
    from ..gpu import distance as gpu_distance
    return gpu_distance.normalize(be, _checks.for_kernels(be, x, "x"), _view(x.shape, dim), p, eps)


@takes_float16(kernels=True)
def normalize_backward(dy, x, p=2.0, dim=1, eps=1e-12, *, backend=None):
    """dx of normalize(x, p, dim, eps)."""
    _pair(x, dy, "x", "dy")
    _at_least_1d(x, "normalize_backward")
    p, dim, eps = _p(p), _dim(dim, x.ndim), _checks.real_number(eps, "eps")
    be = _backend.resolve(backend, dy, x)
    if x.size == 0:
        return _backend.array_module(be).empty(x.shape, dtype=x.dtype)
    if be == "numpy":
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            norm = _lp_norm(x, p, dim)
            denominator = _clamp_min(norm, eps)
            to_norm = np.where(norm >= eps, -(dy * x).sum(axis=dim, keepdims=True) / (denominator * denominator), 0)
            return dy / denominator + to_norm * _lp_norm_gradient(x, norm, p, dim)
    from ..gpu import distance as gpu_distance
    dy, x = _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, x, "x")
    return gpu_distance.normalize_backward(be, dy, x, _view(x.shape, dim), p, eps)


def _similarity_dim(x1, dim):
    _at_least_1d(x1, "cosine_similarity")
    return _dim(dim, x1.ndim)


@takes_float16(kernels=True)
def cosine_similarity(x1, x2, dim=1, eps=1e-8, *, backend=None):
    """sum along `dim` of (x1 / max(||x1||_2, eps)) * (x2 / max(||x2||_2, eps)); x1's shape without `dim`."""
    _pair(x1, x2)
    dim, eps = _similarity_dim(x1, dim), _checks.real_number(eps, "eps")
    be = _backend.resolve(backend, x1, x2)
    out_shape = x1.shape[:dim] + x1.shape[dim + 1:]
    if x1.size == 0:
        return _backend.array_module(be).zeros(out_shape, dtype=x1.dtype)
    if be == "numpy":
        with np.errstate(invalid="ignore", divide="ignore"):
            unit1, unit2 = x1 / _clamp_min(_lp_norm(x1, 2, dim), eps), x2 / _clamp_min(_lp_norm(x2, 2, dim), eps)
            return (unit1 * unit2).sum(axis=dim)
    from ..gpu import distance as gpu_distance
    x1, x2 = _checks.for_kernels(be, x1, "x1"), _checks.for_kernels(be, x2, "x2")
    return gpu_distance.cosine_similarity(be, x1, x2, _view(x1.shape, dim), eps).reshape(out_shape)


@takes_float16(kernels=True)
def cosine_similarity_backward(dout, x1, x2, dim=1, eps=1e-8, *, backend=None):
    """(dx1, dx2) of cosine_similarity(x1, x2, dim, eps), dout of its output's shape."""
    _pair(x1, x2)
    dim, eps = _similarity_dim(x1, dim), _checks.real_number(eps, "eps")
    _checks.array(dout, "dout")
    _checks.same_dtype("x1", x1, dout=dout)
    _checks.shape_is(dout, "dout", x1.shape[:dim] + x1.shape[dim + 1:], " (cosine_similarity's output)")
    be = _backend.resolve(backend, dout, x1, x2)
    xp = _backend.array_module(be)
    if x1.size == 0:
        return xp.empty(x1.shape, dtype=x1.dtype), xp.empty(x1.shape, dtype=x1.dtype)
    if be == "numpy":
        g = np.expand_dims(dout, dim)
        with np.errstate(invalid="ignore", divide="ignore"):
            n1, n2 = _lp_norm(x1, 2, dim), _lp_norm(x2, 2, dim)
            d1, d2 = _clamp_min(n1, eps), _clamp_min(n2, eps)
            dot = (x1 / d1 * (x2 / d2)).sum(axis=dim, keepdims=True)
            dx1 = g * (x2 / d2) / d1 - g * dot / d1 * _lp_norm_gradient(x1, n1, 2, dim)
            dx2 = g * (x1 / d1) / d2 - g * dot / d2 * _lp_norm_gradient(x2, n2, 2, dim)
        return dx1, dx2
    from ..gpu import distance as gpu_distance
    dout, x1, x2 = (_checks.for_kernels(be, a, name) for a, name in ((dout, "dout"), (x1, "x1"), (x2, "x2")))
    return gpu_distance.cosine_similarity_backward(be, dout, x1, x2, _view(x1.shape, dim), eps)


def _distance_checks(x1, x2, p, eps, keepdim):
    _pair(x1, x2)
    _at_least_1d(x1, "pairwise_distance")
    return _p(p), _checks.real_number(eps, "eps"), _checks.flag(keepdim, "keepdim")


@takes_float16(kernels=True)
def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False, *, backend=None):
    """||x1 - x2 + eps||_p along the last dimension (kept as size 1 with keepdim)."""
    p, eps, keepdim = _distance_checks(x1, x2, p, eps, keepdim)
    be = _backend.resolve(backend, x1, x2)
    out_shape = x1.shape[:-1] + (1,) * keepdim
    if x1.size == 0:
        return _backend.array_module(be).zeros(out_shape, dtype=x1.dtype)
    if be == "numpy":
        return _lp_norm(x1 - x2 + eps, p, -1).reshape(out_shape)
    from ..gpu import distance as gpu_distance
    x1, x2 = _checks.for_kernels(be, x1, "x1"), _checks.for_kernels(be, x2, "x2")
    size = x1.shape[-1]
    return gpu_distance.pairwise_distance(be, x1, x2, x1.size // size, size, p, eps).reshape(out_shape)


@takes_float16(kernels=True)
def pairwise_distance_backward(dout, x1, x2, p=2.0, eps=1e-6, keepdim=False, *, backend=None):
    """(dx1, dx2) of pairwise_distance(x1, x2, p, eps, keepdim), dout of its output's shape."""
    p, eps, keepdim = _distance_checks(x1, x2, p, eps, keepdim)
    _checks.array(dout, "dout")
    _checks.same_dtype("x1", x1, dout=dout)
    _checks.shape_is(dout, "dout", x1.shape[:-1] + (1,) * keepdim, " (pairwise_distance's output)")
    be = _backend.resolve(backend, dout, x1, x2)
    xp = _backend.array_module(be)
    if x1.size == 0:
        return xp.empty(x1.shape, dtype=x1.dtype), xp.empty(x1.shape, dtype=x1.dtype)
    if be == "numpy":
        difference = x1 - x2 + eps
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            dx1 = dout.reshape(x1.shape[:-1] + (1,)) * _lp_norm_gradient(difference, _lp_norm(difference, p, -1), p, -1)
        return dx1, -dx1
    from ..gpu import distance as gpu_distance
    dout, x1, x2 = (_checks.for_kernels(be, a, name) for a, name in ((dout, "dout"), (x1, "x1"), (x2, "x2")))
    size = x1.shape[-1]
    return gpu_distance.pairwise_distance_backward(be, dout, x1, x2, x1.size // size, size, p, eps)


def one_hot(labels, num_classes=-1):
    """int64 (*labels.shape, num_classes): 1 at each label's class, else 0 (labels int64, >= 0;
    num_classes -1: the largest label + 1). NumPy or CuPy, as labels."""
    if not _checks.is_array(labels):
        raise TypeError(f"labels must be a NumPy or CuPy array, got {type(labels).__name__}")
    if labels.dtype != np.int64:
        raise TypeError(f"one_hot is only applicable to index tensor of type LongTensor (int64), got {labels.dtype}")
    num_classes = _checks.whole_number(num_classes, "num_classes", minimum=-1)
    xp = _backend.module_of(labels)
    if labels.size == 0:
        if num_classes <= 0:   # PyTorch's rule: 0 classes for no labels is refused too
            raise ValueError("Can not infer total number of classes from empty tensor.")
        return xp.zeros(labels.shape + (num_classes,), dtype=np.int64)
    if int(labels.min()) < 0:
        raise ValueError("Class values must be non-negative.")
    if num_classes == -1:
        num_classes = int(labels.max()) + 1
    elif int(labels.max()) >= num_classes:
        raise ValueError("Class values must be smaller than num_classes.")
    return (labels[..., None] == xp.arange(num_classes, dtype=np.int64)).astype(np.int64)
