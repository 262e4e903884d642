"""max_unpool2d and max_unpool1d with their backward passes (torch.nn.functional's partial inverses of
max pooling, PyTorch 2.13's output sizes and output_size checks).

Each (n, c) plane of x is written into a zero-filled output plane at the flat positions its indices
name (h*W + w, or the position within L): max_pool2d's / max_pool1d's indices, int32 as this library
returns them, or int64 as PyTorch's. Rules where PyTorch's leave a choice:
- Several inputs naming one position: the last in scan order wins, on every backend (PyTorch's serial
  CPU loop; its threaded CPU loop and its CUDA kernel let any of them win: torch 2.13 CPU gives either
  of two values for the same call). The backward gives every one of them dy at that position, as
  PyTorch's does.
- An index of -1 (max_pool2d's index of a window wholly in the padding) names no position: its value is
  dropped and its gradient is 0. Any other index outside the output plane is refused (ValueError where
  PyTorch raises RuntimeError, with PyTorch's message).
- An empty output plane (output_size or padding giving a 0 size) is refused; PyTorch returns an empty
  tensor without looking at the indices.

NumPy path: each position's owner (the last input naming it) by np.maximum.at, then a gather: the
kernels' rule, so every backend gives the same bits. kernels/unpool.cu on emu and cuda.
"""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import pair, pool_stride
from .one_d import pool_sizes, single

_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def default_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size - 1) * stride + kernel - 2 * padding


def output_plane(in_size, kernel, stride, padding, output_size) -> tuple[int, ...]:
    """The output plane's sizes (one per pooled dim) by torch.nn.functional._unpool_output_size:
    the default (in - 1) * stride + kernel - 2 * padding, or output_size (the plane's sizes, or the
    whole shape with its two leading entries) strictly within a stride of it."""
    dims = len(kernel)
    default = tuple(default_size(*axis) for axis in zip(in_size, kernel, stride, padding))
    if output_size is None:
        sizes = default
    else:
        if isinstance(output_size, (str, bytes)) or not hasattr(output_size, "__len__"):
            raise TypeError(f"output_size must be a sequence of {dims} or {dims + 2} ints, got {output_size!r}")
        if len(output_size) == dims + 2:
            output_size = output_size[2:]
        if len(output_size) != dims:
            raise ValueError(f"output_size should be a sequence containing {dims} or {dims + 2} elements, but it "
                             f"has a length of '{len(output_size)}'")
        if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) for s in output_size):
            raise TypeError(f"output_size must hold ints, got {output_size!r}")
        sizes = tuple(int(s) for s in output_size)
        for d, (size, s, want) in enumerate(zip(sizes, stride, default)):
            if not want - s < size < want + s:
                raise ValueError(f'invalid output_size "{output_size}" (dim {d} must be between {want - s} and '
                                 f'{want + s})')
    for d, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"max_unpooling: output_size must contain non-negative spatial dimensions, but got "
                             f"output_size[{d}]={size}")
        if size == 0:
            raise ValueError(f"output would be empty: output size {sizes} (PyTorch returns an empty tensor)")
    return sizes


def _check_index_array(indices) -> None:
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 or int64 array, got {type(indices).__name__}")
    if indices.dtype not in _INDEX_DTYPES:
        raise TypeError(f"indices must be int32 (as the max pools return them) or int64 (PyTorch's), "
                        f"got {indices.dtype}")


def _check_indices(indices, x):
    """indices: an int32 or int64 array of x's shape."""
    _check_index_array(indices)
    _checks.shape_is(indices, "indices", x.shape, " (the shape of the pooled input)")


def _check_index_range(indices, out_sizes) -> None:
    """Every index in [-1, out_plane) (on CuPy this reads two numbers back)."""
    if indices.size == 0:
        return
    out_plane = int(np.prod(out_sizes))
    low, high = int(indices.min()), int(indices.max())
    if low < -1 or high >= out_plane:
        bad = low if low < -1 else high
        raise ValueError(f"Found an invalid max index: {bad} (output volumes are of size "
                         f"{'x'.join(map(str, out_sizes))}); indices must lie in [-1, {out_plane})")


def _planes(a):
    """a (..., h, w) as (planes, h * w) (an empty batch too)."""
    return a.reshape(int(np.prod(a.shape[:-2])), a.shape[-2] * a.shape[-1])


def _numpy_forward(x, indices, out_shape):
    flat_x, flat_indices = _planes(x), _planes(indices)
    planes, in_plane = flat_x.shape
    out_plane = out_shape[-1] * out_shape[-2]
    named = flat_indices >= 0
    plane_of = np.broadcast_to(np.arange(planes)[:, None], flat_indices.shape)
    owner = np.full(planes * out_plane, -1, dtype=np.int64)
    pixel = np.broadcast_to(np.arange(in_plane)[None, :], flat_indices.shape)
    np.maximum.at(owner, (plane_of * out_plane + flat_indices)[named], pixel[named])
    owner = owner.reshape(planes, out_plane)
    y = np.where(owner >= 0, np.take_along_axis(flat_x, np.maximum(owner, 0), axis=1), np.zeros((), x.dtype))
    return y.astype(x.dtype, copy=False).reshape(out_shape)


def _numpy_backward(dy, indices):
    flat_dy, flat_indices = _planes(dy), _planes(indices)
    gathered = np.take_along_axis(flat_dy, np.maximum(flat_indices, 0), axis=1)
    dx = np.where(flat_indices >= 0, gathered, np.zeros((), dy.dtype))
    return dx.astype(dy.dtype, copy=False).reshape(indices.shape)


def _run(values, name: str, indices, be, user_sizes, numpy_op, kernel_op, *args):
    """numpy_op or kernel_op(be, ...) of (values, indices, *args) after the arrays' device check (for the
    kernels) and then the index check, which computes on the indices; user_sizes: the output plane as
    the caller's dims (its messages')."""
    if be != "numpy":
        values, indices = _checks.for_kernels(be, values, name), _checks.for_kernels(be, indices, "indices")
    _check_index_range(indices, user_sizes)
    if be == "numpy":
        return numpy_op(values, indices, *args)
    indices = indices if indices.dtype == np.int32 else _backend.astype(indices, np.int32)   # values fit: checked
    return kernel_op(be, values, indices, *args)


def _unpool(x, indices, out_sizes, be, user_sizes):
    """x (..., h, w) unpooled to (..., *out_sizes), on 2-D planes."""
    from ..gpu import unpool as gpu_unpool
    out_shape = tuple(x.shape[:-2]) + tuple(out_sizes)
    return _run(x, "x", indices, be, user_sizes, _numpy_forward, gpu_unpool.forward, out_shape)


def _unpool_backward(dy, indices, be, user_sizes):
    from ..gpu import unpool as gpu_unpool
    return _run(dy, "dy", indices, be, user_sizes, _numpy_backward, gpu_unpool.backward)


def _check_input(x, indices, ranks, op: str):
    """x of a rank in `ranks` (batched: the last) with non-empty sizes but the batch's, as PyTorch's."""
    _checks.array(x, "x", ndim=ranks)
    if min(x.shape[1:] if x.ndim == ranks[-1] else x.shape) <= 0:
        raise ValueError(f"{op}: x must have non-zero sizes except the batch's, got shape {tuple(x.shape)}")
    _check_indices(indices, x)


def _check_backward(dy, indices, ranks, plane_dims: int):
    """dy of indices' rank and leading sizes (its plane the unpooled one)."""
    _check_index_array(indices)
    if indices.ndim not in ranks:
        raise ValueError(f"indices must be {' or '.join(f'{r}-D' for r in ranks)}, got shape {tuple(indices.shape)}")
    _checks.array(dy, "dy", ndim=indices.ndim)
    if tuple(dy.shape[:-plane_dims]) != tuple(indices.shape[:-plane_dims]) or min(dy.shape[-plane_dims:]) <= 0:
        raise ValueError(f"dy must have the leading sizes of indices {tuple(indices.shape[:-plane_dims])} and a "
                         f"non-empty unpooled plane, got shape {tuple(dy.shape)}")


@takes_float16(kernels=True)
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None, *, backend=None):
    """Max unpooling as torch.nn.functional.max_unpool2d: x (N, C, H, W) or (C, H, W) and its max_pool2d
    indices (int32 or int64, x's shape) -> y (N, C, H', W') or (C, H', W'), zero but at the indices.
    H' = (H - 1) * stride + kernel_size - 2 * padding unless output_size ((H', W') or (N, C, H', W'))
    says otherwise, strictly within a stride of it. See the module docstring for duplicate and -1
    indices."""
    _check_input(x, indices, (3, 4), "max_unpool2d")
    kernel, stride = pair(kernel_size, "kernel_size"), pool_stride(stride, kernel_size)
    out_sizes = output_plane(x.shape[-2:], kernel, stride, pair(padding, "padding", minimum=0), output_size)
    return _unpool(x, indices, out_sizes, _backend.resolve(backend, x, indices), out_sizes)


@takes_float16(kernels=True)
def max_unpool2d_backward(dy, indices, *, backend=None):
    """Gradient of max_unpool2d: dx[i] = dy at the position indices[i] names (0 for -1), dx of indices'
    shape; dy (N, C, H', W') or (C, H', W'), the unpooled shape."""
    _check_backward(dy, indices, (3, 4), 2)
    return _unpool_backward(dy, indices, _backend.resolve(backend, dy, indices), dy.shape[-2:])


@takes_float16(kernels=True)
def max_unpool1d(x, indices, kernel_size, stride=None, padding=0, output_size=None, *, backend=None):
    """Max unpooling as torch.nn.functional.max_unpool1d: x (N, C, L) or (C, L) and its max_pool1d
    indices -> y (N, C, L') or (C, L'), L' = (L - 1) * stride + kernel_size - 2 * padding unless
    output_size ((L',) or (N, C, L')) says otherwise; max_unpool2d's rules, run on (.., 1, L) views."""
    _check_input(x, indices, (2, 3), "max_unpool1d")
    kernel, stride, _, _ = pool_sizes(kernel_size, stride, 0)
    (out_length,) = output_plane(x.shape[-1:], (kernel,), (stride,), (single(padding, "padding", minimum=0),),
                                 output_size)
    y = _unpool(x[..., None, :], indices[..., None, :], (1, out_length), _backend.resolve(backend, x, indices),
                (out_length,))
    return y[..., 0, :]


@takes_float16(kernels=True)
def max_unpool1d_backward(dy, indices, *, backend=None):
    """Gradient of max_unpool1d: dx[i] = dy at the position indices[i] names (0 for -1)."""
    _check_backward(dy, indices, (2, 3), 1)
    dx = _unpool_backward(dy[..., None, :], indices[..., None, :], _backend.resolve(backend, dy, indices),
                          dy.shape[-1:])
    return dx[..., 0, :]
