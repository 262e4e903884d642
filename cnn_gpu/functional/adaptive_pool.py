"""adaptive_avg_pool2d, adaptive_max_pool2d, their 3-D forms (volumes) and their backward passes
(PyTorch's adaptive windows): output p of P along an axis of size H covers [floor(p*H/P), ceil((p+1)*H/P)).
Both ranks share the code below, which loops over the spatial axes (and the kernels, which take a depth).

NumPy path of the average: the windows of each axis as a 0/1 matrix (P, H), so y = rows @ x @
cols.T / area (the depth's matrix applied likewise) and the backward pass dx = rows.T @ (dy / area)
@ cols, with BLAS (_window_sums, which keeps an inf or NaN in its windows as PyTorch and the kernels do).
NumPy path of the maximum: separable, along w, then h, then d (_axis_max): the first maximum of a
window in row-major scan order is the first maximum of the first row (slice) holding the window's
maximum, and its last NaN the last NaN of the last row holding one. Its backward adds dy at the indices.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import as_batch, batch_shape
from .pool import _plane_strides


def _window_bounds(outputs: int, size: int):
    o = np.arange(outputs)
    return (o * size) // outputs, -((-(o + 1) * size) // outputs)


@functools.lru_cache(maxsize=32)
def _window_matrix(outputs: int, size: int, dtype) -> np.ndarray:
    start, end = _window_bounds(outputs, size)
    positions = np.arange(size)
    return ((positions >= start[:, None]) & (positions < end[:, None])).astype(dtype)


def _areas(out_size, in_size, dtype):
    """Every window's size (its area, or volume), (*out_size)."""
    lengths = [end - start for start, end in (_window_bounds(o, s) for o, s in zip(out_size, in_size))]
    return functools.reduce(np.multiply.outer, lengths).astype(dtype)


_SIZE_NAMES = {2: "a pair (h, w)", 3: "a triple (d, h, w)"}


def _output_size(output_size, in_size):
    """PyTorch's output_size: an int, or an (h, w) pair ((d, h, w) triple for volumes) whose None
    entries keep the input size."""
    count = len(in_size)
    items = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * count
    if len(items) != count:
        raise ValueError(f"output_size must be an int or {_SIZE_NAMES[count]}, got {output_size!r}")
    sizes = []
    for item, size in zip(items, in_size):
        if item is None:
            item = size
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"output_size must be an int, None or a {_SIZE_NAMES[count].split()[1]} of them, "
                            f"got {output_size!r}")
        if item < 1:
            raise ValueError(f"output_size must be positive, got {output_size!r}")
        sizes.append(int(item))
    return tuple(sizes)


def _through_windows(a, matrices):
    """Each spatial axis of `a` through its matrix (new size, old size): the last two by matmul
    from the right and the left, a depth one along its axis."""
    *depth, rows, cols = matrices
    out = np.matmul(np.matmul(rows, a), cols.T)
    for m in depth:
        out = np.moveaxis(np.matmul(m, np.moveaxis(out, 2, -2)), -2, 2)
    return out


def _window_sums(a, matrices):
    """_through_windows(a, matrices) of 0/1 window matrices, an inf or NaN of `a` kept to the sums of
    its windows: a product of one with the matrices' zeros would make every sum of its rows and columns
    NaN. The finite values are summed as without them (the same bits); a window's sum is NaN where
    it holds a NaN or infinities of both signs, else the infinity it holds."""
    finite = np.isfinite(a)
    if finite.all():
        return _through_windows(a, matrices)
    sums = _through_windows(np.where(finite, a, 0), matrices)
    holds = lambda mask: _through_windows(mask.astype(a.dtype), matrices) > 0   # noqa: E731
    positive, negative, nan = holds(a == np.inf), holds(a == -np.inf), holds(np.isnan(a))
    sums[positive] = np.inf
    sums[negative] = -np.inf
    sums[nan | (positive & negative)] = np.nan
    return sums


def _batched(a, name, batched_rank):
    """a as a batch (an unbatched input gets N = 1) and whether it was unbatched."""
    return as_batch(_checks.array(a, name, ndim=(batched_rank - 1, batched_rank)), batched_rank)


def _pooled_input(x, output_size, batched_rank):
    """(x as a batch, whether it was unbatched, the output size) of a forward pass."""
    batch, unbatched = _batched(x, "x", batched_rank)
    if 0 in batch.shape[1:]:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x.shape)}")
    return batch, unbatched, _output_size(output_size, batch.shape[2:])


def _adaptive_avg(x, output_size, batched_rank, backend):
    batch, unbatched, out_size = _pooled_input(x, output_size, batched_rank)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        matrices = [_window_matrix(o, s, x.dtype) for o, s in zip(out_size, batch.shape[2:])]
        y = _window_sums(batch, matrices)
        y /= _areas(out_size, batch.shape[2:], x.dtype)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        y = gpu_pool.forward(be, _checks.for_kernels(be, batch, "x"), out_size)
    return y[0] if unbatched else y


def _adaptive_avg_backward(dy, x_shape, batched_rank, backend):
    batch, unbatched = _batched(dy, "dy", batched_rank)
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    batch_x_shape = (1,) + x_shape if unbatched else x_shape
    if batch_x_shape[:2] != batch.shape[:2] or min(batch_x_shape[2:]) < 1:
        raise ValueError(f"dy of shape {tuple(dy.shape)} cannot come from an input of shape {x_shape} "
                         f"(batch and channels must agree, spatial sizes be positive)")
    out_size = tuple(batch.shape[2:])
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        matrices = [_window_matrix(o, s, dy.dtype).T for o, s in zip(out_size, batch_x_shape[2:])]
        dx = _window_sums(batch / _areas(out_size, batch_x_shape[2:], dy.dtype), matrices)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        dx = gpu_pool.backward(be, _checks.for_kernels(be, batch, "dy"), batch_x_shape)
    return dx[0] if unbatched else dx


@takes_float16(kernels=True)
def adaptive_avg_pool2d(x, output_size, *, backend=None):
    """Adaptive average pooling as torch.nn.functional.adaptive_avg_pool2d ((N, C, H, W) or (C, H, W))."""
    return _adaptive_avg(x, output_size, 4, backend)


@takes_float16(kernels=True)
def adaptive_avg_pool2d_backward(dy, x_shape, *, backend=None):
    """Gradient of adaptive_avg_pool2d for an input of shape x_shape (the output size is dy's)."""
    return _adaptive_avg_backward(dy, x_shape, 4, backend)


@takes_float16(kernels=True)
def adaptive_avg_pool3d(x, output_size, *, backend=None):
    """Adaptive average pooling of volumes as torch.nn.functional.adaptive_avg_pool3d ((N, C, D, H, W)
    or (C, D, H, W); output_size an int or a (d, h, w) triple whose None entries keep the input size)."""
    return _adaptive_avg(x, output_size, 5, backend)


@takes_float16(kernels=True)
def adaptive_avg_pool3d_backward(dy, x_shape, *, backend=None):
    """Gradient of adaptive_avg_pool3d for an input of shape x_shape (the output size is dy's)."""
    return _adaptive_avg_backward(dy, x_shape, 5, backend)


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


def _max_windows(batch, out_size):
    """(y, indices int32) of adaptive max pooling of a batch (N, C, *in_size): along the last axis,
    then each axis before it, each pass adding that axis's offset to the flat positions."""
    in_size = batch.shape[2:]
    values, positions = batch, np.zeros((1,) * batch.ndim, dtype=np.int32)
    for axis in reversed(range(len(in_size))):
        dim = 2 + axis
        offsets = (np.arange(in_size[axis], dtype=np.int32) * _plane_strides(in_size)[axis])
        positions = positions + offsets.reshape((-1,) + (1,) * (len(in_size) - 1 - axis))
        positions = np.broadcast_to(positions, values.shape)
        values, positions = (np.moveaxis(a, -1, dim) for a in _axis_max(
            np.moveaxis(values, dim, -1), np.moveaxis(positions, dim, -1), out_size[axis]))
    return np.ascontiguousarray(values), np.ascontiguousarray(positions)


def check_max_indices(indices, x4_shape, out_size, op="adaptive_max_pool2d", given=None, given_x_shape=None) -> None:
    """Every index is the flat position ((d*H) + h)*W + w of a pixel of its own window (NumPy or CuPy
    arrays; on CuPy this reads one flag back). An index outside the plane has its first coordinate
    outside every window. x4_shape is the batch's shape ((N, C, H, W), or (N, C, D, H, W)). The
    error names `op`, and the index and input shape as the caller gave them (`given`, a view of the
    same indices, and `given_x_shape`; by default the batch's)."""
    xp = _backend.module_of(indices)
    in_size = tuple(x4_shape[2:])
    axes = len(in_size)
    inside = None
    for axis, (outputs, size, step) in enumerate(zip(out_size, in_size, _plane_strides(in_size))):
        position = indices // step
        if axis:
            position = position % size
        start, end = (xp.asarray(b.astype(np.int32).reshape((-1,) + (1,) * (axes - 1 - axis)))
                      for b in _window_bounds(outputs, size))
        ok = (position >= start) & (position < end)
        inside = ok if inside is None else inside & ok
    if not bool(inside.all()):
        given = indices if given is None else given
        where = tuple(int(i) for i in np.unravel_index(int((~inside).ravel().argmax()), given.shape))
        raise ValueError(f"indices{list(where)} = {int(given[where])} is not a pixel of its window; indices must "
                         f"be those {op} returned for an input of shape {tuple(given_x_shape or x4_shape)}")


def _adaptive_max(x, output_size, batched_rank, backend):
    batch, unbatched, out_size = _pooled_input(x, output_size, batched_rank)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        y, indices = _max_windows(batch, out_size)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        y, indices = gpu_pool.max_forward(be, _checks.for_kernels(be, batch, "x"), out_size)
    return (y[0], indices[0]) if unbatched else (y, indices)


@takes_float16(kernels=True)
def adaptive_max_pool2d(x, output_size, *, backend=None):
    """Adaptive max pooling as torch.nn.functional.adaptive_max_pool2d(x, output_size,
    return_indices=True): x (N, C, H, W) or (C, H, W) -> (y, indices int32) of the same rank.
    indices hold the flat index h*W + w of each window's maximum within its (n, c) plane; ties take
    the first maximum in scan order, a NaN in the window wins (the last NaN's index), as PyTorch's."""
    return _adaptive_max(x, output_size, 4, backend)


@takes_float16(kernels=True)
def adaptive_max_pool2d_backward(dy, indices, x_shape, output_size, *, backend=None):
    """Gradient of adaptive_max_pool2d for an input of shape x_shape: dy added at the input pixels
    its indices name (several where overlapping windows share a maximum). dy, indices and x_shape
    have one rank; output_size as the forward's (None entries: x_shape's size). Each index must
    name a pixel of its own window: ValueError otherwise."""
    return _adaptive_max_backward(dy, indices, x_shape, output_size, 4, backend, check_indices=True)


@takes_float16(kernels=True)
def adaptive_max_pool2d_backward_of_own_indices(dy, indices, x_shape, output_size, *, backend=None):
    """adaptive_max_pool2d_backward for indices adaptive_max_pool2d returned (nn.AdaptiveMaxPool2d's
    own), not checked again: on CuPy the check waits for the GPU to read a flag back, every step."""
    return _adaptive_max_backward(dy, indices, x_shape, output_size, 4, backend, check_indices=False)


@takes_float16(kernels=True)
def adaptive_max_pool3d(x, output_size, *, backend=None):
    """Adaptive max pooling of volumes as torch.nn.functional.adaptive_max_pool3d(x, output_size,
    return_indices=True): x (N, C, D, H, W) or (C, D, H, W) -> (y, indices int32) of the same rank,
    indices the flat (d*H + h)*W + w in the volume; adaptive_max_pool2d's tie and NaN rules."""
    return _adaptive_max(x, output_size, 5, backend)


@takes_float16(kernels=True)
def adaptive_max_pool3d_backward(dy, indices, x_shape, output_size, *, backend=None):
    """Gradient of adaptive_max_pool3d, as adaptive_max_pool2d_backward's (each index checked)."""
    return _adaptive_max_backward(dy, indices, x_shape, output_size, 5, backend, check_indices=True)


@takes_float16(kernels=True)
def adaptive_max_pool3d_backward_of_own_indices(dy, indices, x_shape, output_size, *, backend=None):
    """adaptive_max_pool3d_backward for nn.AdaptiveMaxPool3d's own indices, not checked again."""
    return _adaptive_max_backward(dy, indices, x_shape, output_size, 5, backend, check_indices=False)


def max_backward_arrays(dy, indices, batched_rank: int, op: str, backend):
    """(the backend, dy and indices as batches) of a max pool's backward, indices checked to be an int32
    array of dy's shape (`op` returned them) and, for the kernels, both arrays' GPU and layout: before an
    index check computes on them."""
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as {op} returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape, " (the shape of dy)")
    dy_batch, indices_batch = as_batch(dy, batched_rank)[0], as_batch(indices, batched_rank)[0]
    be = _backend.resolve(backend, dy, indices)
    if be != "numpy":
        dy_batch = _checks.for_kernels(be, dy_batch, "dy")
        indices_batch = _checks.for_kernels(be, indices_batch, "indices")
    return be, dy_batch, indices_batch


def scatter_at_indices(dy, indices, x_shape):
    """dx of shape x_shape (N, C, *in_size): each dy added at the flat in-plane position its index names in
    its (n, c) plane, in float64 then rounded to dy's dtype once (NumPy; max pools' backward passes)."""
    planes, plane = x_shape[0] * x_shape[1], math.prod(x_shape[2:])
    target = np.arange(planes).reshape(tuple(x_shape[:2]) + (1,) * (indices.ndim - 2)) * plane + indices
    dx = np.bincount(target.ravel(), weights=dy.ravel(), minlength=planes * plane)
    return dx.astype(dy.dtype, copy=False).reshape(x_shape)


def _adaptive_max_backward(dy, indices, x_shape, output_size, batched_rank, backend, check_indices: bool):
    op = f"adaptive_max_pool{batched_rank - 2}d"
    batch_x_shape, unbatched = batch_shape(x_shape, batched_rank)
    if min(batch_x_shape[1:]) < 1 or batch_x_shape[0] < 0:   # x had no empty axis but the batch
        raise ValueError(f"x_shape must have non-empty channel and spatial dimensions, got {tuple(x_shape)}")
    out_size = _output_size(output_size, batch_x_shape[2:])
    _checks.array(dy, "dy", ndim=batched_rank - unbatched)
    _checks.shape_is(dy, "dy", (batch_x_shape[:2] + out_size)[unbatched:],
                     f" (the pooled shape of x_shape {tuple(x_shape)} to output_size {output_size!r})")
    be, dy_batch, indices_batch = max_backward_arrays(dy, indices, batched_rank, op, backend)
    if check_indices:
        check_max_indices(indices_batch, batch_x_shape, out_size, op)
    if be == "numpy":
        dx = scatter_at_indices(dy_batch, indices_batch, batch_x_shape)
    else:
        from ..gpu import adaptive_pool as gpu_pool
        dx = gpu_pool.max_backward(be, dy_batch, indices_batch, batch_x_shape)
    return dx[0] if unbatched else dx
