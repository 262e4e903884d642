"""adaptive_avg_pool2d and its backward pass (torch.nn.functional.adaptive_avg_pool2d's windows):
output p of P along an axis of size H averages [floor(p*H/P), ceil((p+1)*H/P)).

NumPy path: the windows of each axis as a 0/1 matrix (P, H), so y = rows @ x @ cols.T / area and
the backward pass dx = rows.T @ (dy / area) @ cols, with BLAS (_window_sums, which keeps an inf
or NaN in its windows as PyTorch and the kernels do).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import as_batch


def _window_bounds(outputs: int, size: int):
    o = np.arange(outputs)
    return (o * size) // outputs, -((-(o + 1) * size) // outputs)


@functools.lru_cache(maxsize=32)
def _window_matrix(outputs: int, size: int, dtype) -> np.ndarray:
    start, end = _window_bounds(outputs, size)
    positions = np.arange(size)
    return ((positions >= start[:, None]) & (positions < end[:, None])).astype(dtype)


def _areas(out_size, in_size, dtype):
    (rows_start, rows_end), (cols_start, cols_end) = (_window_bounds(o, s) for o, s in zip(out_size, in_size))
    return ((rows_end - rows_start)[:, None] * (cols_end - cols_start)[None, :]).astype(dtype)


def _output_size(output_size, in_size):
    """PyTorch's output_size: an int, or an (h, w) pair whose None entries keep the input size."""
    items = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(items) != 2:
        raise ValueError(f"output_size must be an int or a pair (h, w), got {output_size!r}")
    sizes = []
    for item, size in zip(items, in_size):
        if item is None:
            item = size
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"output_size must be an int, None or a pair of them, got {output_size!r}")
        if item < 1:
            raise ValueError(f"output_size must be positive, got {output_size!r}")
        sizes.append(int(item))
    return tuple(sizes)


def _window_sums(left, a, right):
    """left @ a @ right for 0/1 window matrices, an inf or NaN of `a` kept to the sums of its
    windows: a product of one with the matrices' zeros would make every sum of its rows and columns
    NaN. The finite values are summed as without them (the same bits); a window's sum is NaN where
    it holds a NaN or infinities of both signs, else the infinity it holds."""
    finite = np.isfinite(a)
    if finite.all():
        return np.matmul(np.matmul(left, a), right)
    sums = np.matmul(np.matmul(left, np.where(finite, a, 0)), right)
    holds = lambda mask: np.matmul(np.matmul(left, mask.astype(a.dtype)), right) > 0   # noqa: E731
    positive, negative, nan = holds(a == np.inf), holds(a == -np.inf), holds(np.isnan(a))
    sums[positive] = np.inf
    sums[negative] = -np.inf
    sums[nan | (positive & negative)] = np.nan
    return sums


def _batched(a, name):
    """a as (N, C, H, W) (an unbatched (C, H, W) input gets N = 1) and whether it was unbatched."""
    return as_batch(_checks.array(a, name, ndim=(3, 4)))


@takes_float16(kernels=True)
def adaptive_avg_pool2d(x, output_size, *, backend=None):
    """Adaptive average pooling as torch.nn.functional.adaptive_avg_pool2d ((N, C, H, W) or (C, H, W))."""
    x4, unbatched = _batched(x, "x")
    if 0 in x4.shape[1:]:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x.shape)}")
    out_size = _output_size(output_size, x4.shape[2:])
    be = _backend.resolve(backend, x)
    if be == "numpy":
        rows, cols = (_window_matrix(o, s, x.dtype) for o, s in zip(out_size, x4.shape[2:]))
        y = _window_sums(rows, x4, cols.T)
        y /= _areas(out_size, x4.shape[2:], x.dtype)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        y = gpu_pool.forward(be, _checks.for_kernels(be, x4, "x"), out_size)
    return y[0] if unbatched else y


@takes_float16(kernels=True)
def adaptive_avg_pool2d_backward(dy, x_shape, *, backend=None):
    """Gradient of adaptive_avg_pool2d for an input of shape x_shape (the output size is dy's)."""
    dy4, unbatched = _batched(dy, "dy")
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    x4_shape = (1,) + x_shape if unbatched else x_shape
    if x4_shape[:2] != dy4.shape[:2] or min(x4_shape[2:]) < 1:
        raise ValueError(f"dy of shape {tuple(dy.shape)} cannot come from an input of shape {x_shape} "
                         f"(batch and channels must agree, spatial sizes be positive)")
    out_size = tuple(dy4.shape[2:])
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        rows, cols = (_window_matrix(o, s, dy.dtype) for o, s in zip(out_size, x4_shape[2:]))
        dx = _window_sums(rows.T, dy4 / _areas(out_size, x4_shape[2:], dy.dtype), cols)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        dx = gpu_pool.backward(be, _checks.for_kernels(be, dy4, "dy"), x4_shape)
    return dx[0] if unbatched else dx
