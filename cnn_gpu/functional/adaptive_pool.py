"""adaptive_avg_pool2d, adaptive_max_pool2d and their backward passes (PyTorch's adaptive windows):
output p of P along an axis of size H covers [floor(p*H/P), ceil((p+1)*H/P)).

NumPy path of the average: the windows of each axis as a 0/1 matrix (P, H), so y = rows @ x @
cols.T / area and the backward pass dx = rows.T @ (dy / area) @ cols, with BLAS (_window_sums,
which keeps an inf or NaN in its windows as PyTorch and the kernels do).
NumPy path of the maximum: separable, along w then h (_axis_max): the first maximum of a window
in row-major scan order is the first maximum of the first row holding the window's maximum, and
its last NaN the last NaN of the last row holding one. Its backward adds dy at the indices.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import as_batch, batch_shape


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


def _pooled_input(x, output_size):
    """(x as (N, C, H, W), whether it was unbatched, the output size) of a forward pass."""
    x4, unbatched = _batched(x, "x")
    if 0 in x4.shape[1:]:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x.shape)}")
    return x4, unbatched, _output_size(output_size, x4.shape[2:])


@takes_float16(kernels=True)
def adaptive_avg_pool2d(x, output_size, *, backend=None):
    """Adaptive average pooling as torch.nn.functional.adaptive_avg_pool2d ((N, C, H, W) or (C, H, W))."""
    x4, unbatched, out_size = _pooled_input(x, output_size)
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


def _axis_max(values, positions, outputs: int):
    """Each adaptive window's maximum along the last axis of `values` (PyTorch's scan: a later tap
    replaces the maximum only if strictly greater or NaN) and the `positions` entry of its tap:
    (values, positions) with `outputs` on the last axis. Loops over the taps of the longest window."""
    size = values.shape[-1]
    start, end = _window_bounds(outputs, size)
    best, best_position = values[..., start], positions[..., start]
    for tap in range(1, int((end - start).max())):
        column = np.minimum(start + tap, size - 1)
        v = values[..., column]
        with np.errstate(invalid="ignore"):
            take = (start + tap < end) & ((v > best) | np.isnan(v))
        best, best_position = np.where(take, v, best), np.where(take, positions[..., column], best_position)
    return best, best_position


def _max_windows(x4, out_size):
    """(y, indices int32) of adaptive max pooling of x4 (N, C, H, W): along w, then along h."""
    height, width = x4.shape[2:]
    rows, columns = _axis_max(x4, np.broadcast_to(np.arange(width, dtype=np.int32), x4.shape), out_size[1])
    flat = columns + (np.arange(height, dtype=np.int32) * width)[:, None]   # (N, C, H, Q) of h*W + w
    y, indices = _axis_max(rows.swapaxes(2, 3), flat.swapaxes(2, 3), out_size[0])
    return np.ascontiguousarray(y.swapaxes(2, 3)), np.ascontiguousarray(indices.swapaxes(2, 3))


def check_max_indices(indices, x4_shape, out_size, op="adaptive_max_pool2d", given=None, given_x_shape=None) -> None:
    """Every index is the flat position h*W + w of a pixel of its own window (NumPy or CuPy arrays;
    on CuPy this reads one flag back). An index outside the plane has its row outside every window.
    The error names `op`, and the index and input shape as the caller gave them (`given`, a view of
    the same indices, and `given_x_shape`; by default the 4-D ones)."""
    xp = _backend.module_of(indices)
    width = x4_shape[3]
    inside = None
    for position, axis, (outputs, size) in ((indices // width, 2, (out_size[0], x4_shape[2])),
                                            (indices % width, 3, (out_size[1], x4_shape[3]))):
        start, end = (xp.asarray(b.astype(np.int32).reshape((-1, 1) if axis == 2 else (1, -1)))
                      for b in _window_bounds(outputs, size))
        ok = (position >= start) & (position < end)
        inside = ok if inside is None else inside & ok
    if not bool(inside.all()):
        given = indices if given is None else given
        where = tuple(int(i) for i in np.unravel_index(int((~inside).ravel().argmax()), given.shape))
        raise ValueError(f"indices{list(where)} = {int(given[where])} is not a pixel of its window; indices must "
                         f"be those {op} returned for an input of shape {tuple(given_x_shape or x4_shape)}")


@takes_float16(kernels=True)
def adaptive_max_pool2d(x, output_size, *, backend=None):
    """Adaptive max pooling as torch.nn.functional.adaptive_max_pool2d(x, output_size,
    return_indices=True): x (N, C, H, W) or (C, H, W) -> (y, indices int32) of the same rank.
    indices hold the flat index h*W + w of each window's maximum within its (n, c) plane; ties take
    the first maximum in scan order, a NaN in the window wins (the last NaN's index), as PyTorch's."""
    x4, unbatched, out_size = _pooled_input(x, output_size)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        y, indices = _max_windows(x4, out_size)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        y, indices = gpu_pool.max_forward(be, _checks.for_kernels(be, x4, "x"), out_size)
    return (y[0], indices[0]) if unbatched else (y, indices)


@takes_float16(kernels=True)
def adaptive_max_pool2d_backward(dy, indices, x_shape, output_size, *, backend=None):
    """Gradient of adaptive_max_pool2d for an input of shape x_shape: dy added at the input pixels
    its indices name (several where overlapping windows share a maximum). dy, indices and x_shape
    have one rank; output_size as the forward's (None entries: x_shape's size). Each index must
    name a pixel of its own window: ValueError otherwise."""
    return _adaptive_max_pool2d_backward(dy, indices, x_shape, output_size, backend, check_indices=True)


@takes_float16(kernels=True)
def adaptive_max_pool2d_backward_of_own_indices(dy, indices, x_shape, output_size, *, backend=None):
    """adaptive_max_pool2d_backward for indices adaptive_max_pool2d returned (nn.AdaptiveMaxPool2d's
    own), not checked again: on CuPy the check waits for the GPU to read a flag back, every step."""
    return _adaptive_max_pool2d_backward(dy, indices, x_shape, output_size, backend, check_indices=False)


def _adaptive_max_pool2d_backward(dy, indices, x_shape, output_size, backend, check_indices: bool):
    x4_shape, unbatched = batch_shape(x_shape)
    if min(x4_shape[1:]) < 1 or x4_shape[0] < 0:   # x had no empty axis but the batch
        raise ValueError(f"x_shape must have non-empty channel and spatial dimensions, got {tuple(x_shape)}")
    out_size = _output_size(output_size, x4_shape[2:])
    _checks.array(dy, "dy", ndim=4 - unbatched)
    _checks.shape_is(dy, "dy", (x4_shape[:2] + out_size)[unbatched:],
                     f" (the pooled shape of x_shape {tuple(x_shape)} to output_size {output_size!r})")
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as adaptive_max_pool2d returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape, " (the shape of dy)")
    dy4, indices4 = as_batch(dy)[0], as_batch(indices)[0]
    be = _backend.resolve(backend, dy, indices)
    if be != "numpy":   # the arrays' GPU and layout checked before the index check computes on them
        dy4, indices4 = _checks.for_kernels(be, dy4, "dy"), _checks.for_kernels(be, indices4, "indices")
    if check_indices:
        check_max_indices(indices4, x4_shape, out_size)
    if be == "numpy":
        planes, plane = x4_shape[0] * x4_shape[1], x4_shape[2] * x4_shape[3]
        target = np.arange(planes).reshape(x4_shape[:2] + (1, 1)) * plane + indices4
        dx = np.bincount(target.ravel(), weights=dy4.ravel(), minlength=planes * plane)
        dx = dx.astype(dy.dtype, copy=False).reshape(x4_shape)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        dx = gpu_pool.max_backward(be, dy4, indices4, x4_shape)
    return dx[0] if unbatched else dx
