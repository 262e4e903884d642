"""fractional_max_pool2d / fractional_max_pool3d (Graham's fractional max pooling, PyTorch's windows)
and their backward passes.

Along an axis of `size` inputs, `outputs` outputs and windows of k taps, with the (n, c) plane's sample u
in [0, 1) for that axis, output i's window is [start_i, start_i + k): alpha = (size - k) / (outputs - 1),
start_i = int((i + u) * alpha) - int(u * alpha) computed in the compute dtype (float32 for float16, as
PyTorch's CUDA kernels; its CPU kernels round each float16 step), the last window at size - k (ATen's
generate_intervals). The samples, (N, C, 2) holding (u_w, u_h) for images and (N, C, 3) holding
(u_t, u_h, u_w) for volumes (PyTorch's orders), are `_random_samples` when given (pass PyTorch's to get
its windows); without them they are drawn in [0, 1) from cnn_gpu.nn.init's NumPy generator (as Dropout
layers draw their seeds: nn.init.manual_seed makes them reproducible, the same on every backend; the
numbers are not torch.rand's).

NumPy path: the windows' first flat positions from the samples, then a pass per tap in scan order
keeping PyTorch's maximum (a later tap replaces it only if strictly greater or NaN). Its backward adds dy
at the indices (np.bincount); the kernels gather instead (kernels/fractional_pool.cu), visiting the
outputs whose windows can reach each input pixel for any samples, which is why the backward needs no
samples: an index must lie within REACH pixels of its output's window span for any samples, checked.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .. import backend as _backend
from ..gpu import fractional_pool as gpu_pool   # (at import: no import statement a call)
from ..gpu.fractional_pool import REACH
from . import _checks
from ._float16 import takes_float16
from .adaptive_pool import max_backward_arrays, scatter_at_indices
from .geometry import as_batch, batch_shape, pair, triple
from .pool import _plane_strides

_AXIS_NAMES = {2: ("height", "width"), 3: ("time", "height", "width")}   # PyTorch's, in its errors


def _sizes(rank: int):
    """pair or triple: an image's or a volume's size argument."""
    return pair if rank == 2 else triple


def _output_size(op, batch_shape_, kernel_size, output_size, output_ratio):
    """The output size from output_size (which wins where both are given, as in PyTorch's functional)
    or from output_ratio (int(size * ratio) per axis), each checked to fit its windows."""
    rank, in_size = len(kernel_size), batch_shape_[2:]
    if output_size is None and output_ratio is None:
        raise ValueError(f"{op} requires specifying either an output_size or an output_ratio")
    if output_size is not None:
        out_size = _sizes(rank)(output_size, "output_size")
    else:
        ratios = output_ratio if isinstance(output_ratio, (tuple, list)) else (output_ratio,) * rank
        if len(ratios) != rank:
            raise ValueError(f"output_ratio must be a number or a tuple of {rank}, got {output_ratio!r}")
        ratios = [_checks.real_number(r, "output_ratio", minimum=0) for r in ratios]
        out_size = tuple(int(size * ratio) for size, ratio in zip(in_size, ratios))
        if min(out_size) < 1:
            raise ValueError(f"output_ratio {output_ratio!r} of an input of size {tuple(in_size)} gives the empty "
                             f"output {out_size}")
    for name, size, outputs, k in zip(_AXIS_NAMES[rank], in_size, out_size, kernel_size):
        if outputs > largest_output(size, k, rank):
            raise ValueError(f"{op}(): pool {name} {k} too large relative to input {name} {size} (output {name} "
                             f"{outputs}: output + kernel_size - 1 must be {'<=' if rank == 2 else '<'} input)")
    return out_size


def largest_output(size: int, k: int, rank: int) -> int:
    """The most outputs an axis of `size` inputs takes with windows of k: PyTorch's output + k - 1 <= size
    for images, < size for volumes (its 3-D check is strict)."""
    return size - k + 1 if rank == 2 else size - k


def draw_samples(batch: int, channels: int, rank: int, dtype):
    """Samples (batch, channels, rank) in [0, 1) of `dtype` from nn.init's generator: float32 and
    float64 uniform in their own precision, float16 as multiples of 2^-11 (a float32 draw near 1 would
    round to 1.0)."""
    from ..nn import init
    rng, shape = init.generator(), (batch, channels, rank)
    if np.dtype(dtype) == np.float16:
        return (rng.integers(0, 2**11, shape) * 2.0**-11).astype(np.float16)
    return rng.random(shape, dtype=dtype)


def _checked_samples(samples, batch, rank, op, be):
    """The first N rows of PyTorch's _random_samples (N or more, C, rank) of the input's dtype, every
    value in [0, 1) (on CuPy, one flag read back, after the check of their GPU and layout)."""
    if not _checks.is_array(samples):
        raise TypeError(f"_random_samples must be a NumPy or CuPy array, got {type(samples).__name__}")
    if samples.dtype != batch.dtype:
        raise TypeError(f"_random_samples must have the same dtype as the input ({batch.dtype}), got {samples.dtype}")
    n, c = batch.shape[:2]
    if samples.ndim != 3 or samples.shape[0] < n or samples.shape[1:] != (c, rank):
        raise ValueError(f"{op}: _random_samples must have shape (N, C, {rank}) with N at least the input's batch "
                         f"size {n} and C its {c} channels, got {tuple(samples.shape)}")
    samples = _checks.for_kernels(be, samples[:n], "_random_samples")
    if not bool(((samples >= 0) & (samples < 1)).all()):
        raise ValueError(f"{op}: _random_samples must lie in [0, 1) (windows from other values could leave the "
                         f"input)")
    return samples


def _window_starts(u, size: int, outputs: int, k: int):
    """(N, C, outputs) int64 window starts along an axis from its samples u (N, C), in u's dtype."""
    starts = np.full(u.shape + (outputs,), size - k, dtype=np.int64)
    if outputs > 1:
        alpha = u.dtype.type(size - k) / u.dtype.type(outputs - 1)
        i = np.arange(outputs - 1, dtype=u.dtype)
        starts[..., :-1] = (((i + u[..., None]) * alpha).astype(np.int64)
                            - (u * alpha).astype(np.int64)[..., None])
    return starts


def _max_windows(batch, samples, kernel_size, out_size):
    """(y, indices int32) of the windows the samples give (NumPy)."""
    n, c, *in_size = batch.shape
    # samples' column per spatial axis: (u_w, u_h) for images, (u_t, u_h, u_w) for volumes
    columns = (1, 0) if len(in_size) == 2 else (0, 1, 2)
    strides = _plane_strides(in_size)
    first = np.zeros((n, c) + (1,) * len(in_size), dtype=np.int64)   # each window's first flat position
    for axis, (column, size, outputs, k) in enumerate(zip(columns, in_size, out_size, kernel_size)):
        starts = _window_starts(samples[..., column], size, outputs, k)
        first = first + (starts * strides[axis]).reshape((n, c) + tuple(outputs if a == axis else 1
                                                                         for a in range(len(in_size))))
    first, flat = first.reshape(n, c, math.prod(out_size)), batch.reshape(n, c, math.prod(in_size))
    best = best_index = None
    for tap in itertools.product(*map(range, kernel_size)):   # scan order
        index = first + sum(t * s for t, s in zip(tap, strides))
        v = np.take_along_axis(flat, index, axis=2)
        if best is None:
            best, best_index = v, index
            continue
        with np.errstate(invalid="ignore"):
            take = (v > best) | np.isnan(v)
        best, best_index = np.where(take, v, best), np.where(take, index, best_index)
    shape = (n, c) + tuple(out_size)
    return best.reshape(shape), best_index.astype(np.int32).reshape(shape)


@takes_float16(kernels=True)
def _pool_with_samples(x, samples, kernel_size, out_size, *, backend=None):
    """(y, indices) of a batch with checked samples and sizes."""
    be = _backend.resolve(backend, x, samples)
    if be == "numpy":
        return _max_windows(x, samples, kernel_size, out_size)
    return gpu_pool.forward(be, _checks.for_kernels(be, x, "x"), samples, kernel_size, out_size)


def _fractional_max(x, kernel_size, output_size, output_ratio, return_indices, samples, rank, backend):
    op = f"fractional_max_pool{rank}d"
    return_indices = _checks.flag(return_indices, "return_indices")
    batch, unbatched = as_batch(_checks.array(x, "x", ndim=(rank + 1, rank + 2)), rank + 2)
    if 0 in batch.shape[1:]:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x.shape)}")
    kernel_size = _sizes(rank)(kernel_size, "kernel_size")
    out_size = _output_size(op, batch.shape, kernel_size, output_size, output_ratio)
    drawn = samples is None
    if drawn:
        samples = draw_samples(*batch.shape[:2], rank, x.dtype)
        if _backend.is_cupy_array(x):
            samples = _backend.module_of(x).asarray(samples)
    be = _backend.resolve(backend, batch, samples)
    if drawn:   # in [0, 1) by construction: not checked (on CuPy the check reads a flag back, every call)
        samples = _checks.for_kernels(be, samples, "_random_samples")
    else:
        samples = _checked_samples(samples, batch, rank, op, be)
    y, indices = _pool_with_samples(batch, samples, kernel_size, out_size, backend=be)
    if unbatched:
        y, indices = y[0], indices[0]
    return (y, indices) if return_indices else y


def fractional_max_pool2d(x, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                          _random_samples=None, *, backend=None):
    """Fractional max pooling as torch.nn.functional.fractional_max_pool2d: x (N, C, H, W) or (C, H, W),
    kh x kw windows at pseudo-random steps to output_size (an int or (oh, ow)) or to int(size *
    output_ratio) (a number or a pair; output_size wins where both are given). Returns y, or (y, indices
    int32: the flat h*W + w of each maximum in its plane) with return_indices. Ties take the first
    maximum in scan order, a NaN wins (the last NaN's index), as PyTorch's. _random_samples (N, C, 2) of
    x's dtype in [0, 1): see the module docstring; drawn from nn.init's generator when None."""
    return _fractional_max(x, kernel_size, output_size, output_ratio, return_indices, _random_samples, 2, backend)


def fractional_max_pool3d(x, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                          _random_samples=None, *, backend=None):
    """Fractional max pooling of volumes as torch.nn.functional.fractional_max_pool3d: x (N, C, T, H, W)
    or (C, T, H, W), kt x kh x kw windows, sizes and ratios as triples; indices the flat (t*H + h)*W + w;
    _random_samples (N, C, 3). Otherwise as fractional_max_pool2d."""
    return _fractional_max(x, kernel_size, output_size, output_ratio, return_indices, _random_samples, 3, backend)


def fractional_max_pool2d_with_indices(x, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                                       _random_samples=None, *, backend=None):
    """torch.nn.functional.fractional_max_pool2d_with_indices: (y, indices) whatever return_indices says."""
    _checks.flag(return_indices, "return_indices")
    return fractional_max_pool2d(x, kernel_size, output_size, output_ratio, True, _random_samples, backend=backend)


def fractional_max_pool3d_with_indices(x, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                                       _random_samples=None, *, backend=None):
    """torch.nn.functional.fractional_max_pool3d_with_indices: (y, indices) whatever return_indices says."""
    _checks.flag(return_indices, "return_indices")
    return fractional_max_pool3d(x, kernel_size, output_size, output_ratio, True, _random_samples, backend=backend)


def check_indices(indices, batch_x_shape, kernel_size, op: str, given_x_shape) -> None:
    """Every index is the flat position of a pixel within REACH of its output's window span along each
    axis ([floor(i * (size - k) / (outputs - 1)) - REACH, ... + k - 1 + REACH]), or, on an axis of one
    output, among its last k pixels (its one window): where a window of any samples in [0, 1) lies, and
    within what the kernels' gather visits (NumPy or CuPy arrays; on CuPy this reads one flag back)."""
    xp = _backend.module_of(indices)
    in_size, out_size = tuple(batch_x_shape[2:]), tuple(indices.shape[2:])
    axes = len(in_size)
    inside = (indices >= 0) & (indices < math.prod(in_size))
    for axis, (outputs, size, k, step) in enumerate(zip(out_size, in_size, kernel_size, _plane_strides(in_size))):
        position = indices // step % size
        if outputs == 1:   # its one window is the axis's last k pixels, whatever the sample (ATen's rule)
            inside &= position >= size - k
            continue
        floor_starts = (np.arange(outputs) * (size - k)) // (outputs - 1)
        floor_starts = xp.asarray(floor_starts.reshape((-1,) + (1,) * (axes - 1 - axis)))
        inside &= (floor_starts >= position - k + 1 - REACH) & (floor_starts <= position + REACH)
    if not bool(inside.all()):
        where = tuple(int(i) for i in np.unravel_index(int((~inside).ravel().argmax()), indices.shape))
        raise ValueError(f"indices{list(where)} = {int(indices[where])} is not a pixel its window can hold; indices "
                         f"must be those {op} returned for an input of shape {tuple(given_x_shape)}")


@takes_float16(kernels=True)
def _backward(dy, indices, x_shape, kernel_size, rank, backend, check: bool):
    op = f"fractional_max_pool{rank}d"
    batch_x_shape, unbatched = batch_shape(x_shape, rank + 2)
    if min(batch_x_shape[1:]) < 1 or batch_x_shape[0] < 0:
        raise ValueError(f"x_shape must have non-empty channel and spatial dimensions, got {tuple(x_shape)}")
    kernel_size = _sizes(rank)(kernel_size, "kernel_size")
    _checks.array(dy, "dy", ndim=rank + 2 - unbatched)
    if tuple(dy.shape[:2 - unbatched]) != batch_x_shape[unbatched:2]:
        raise ValueError(f"dy must have the batch and channels of x_shape {tuple(x_shape)}, got {tuple(dy.shape)}")
    for name, size, outputs, k in zip(_AXIS_NAMES[rank], batch_x_shape[2:], dy.shape[-rank:], kernel_size):
        if not 1 <= outputs <= largest_output(size, k, rank):
            raise ValueError(f"dy of shape {tuple(dy.shape)} cannot come from {op} of x_shape {tuple(x_shape)} with "
                             f"kernel_size {kernel_size}: output {name} {outputs} must be in "
                             f"[1, {largest_output(size, k, rank)}]")
    be, dy_batch, indices_batch = max_backward_arrays(dy, indices, rank + 2, op, backend)
    if check:
        check_indices(indices_batch, batch_x_shape, kernel_size, op, x_shape)
    if be == "numpy":
        dx = scatter_at_indices(dy_batch, indices_batch, batch_x_shape)
    else:
        dx = gpu_pool.backward(be, dy_batch, indices_batch, batch_x_shape, kernel_size)
    return dx[0] if unbatched else dx


def fractional_max_pool2d_backward(dy, indices, x_shape, kernel_size, *, backend=None):
    """Gradient of fractional_max_pool2d for an input of shape x_shape: dy added at the input pixels its
    indices name (several where overlapping windows share a maximum). dy, indices and x_shape have one
    rank; the output size is dy's. No samples needed; each index must lie where its window can
    (check_indices): ValueError otherwise."""
    return _backward(dy, indices, x_shape, kernel_size, 2, backend, True)


def fractional_max_pool2d_backward_of_own_indices(dy, indices, x_shape, kernel_size, *, backend=None):
    """fractional_max_pool2d_backward for indices fractional_max_pool2d returned (nn.FractionalMaxPool2d's
    own), not checked again: on CuPy the check waits for the GPU to read a flag back, every step."""
    return _backward(dy, indices, x_shape, kernel_size, 2, backend, False)


def fractional_max_pool3d_backward(dy, indices, x_shape, kernel_size, *, backend=None):
    """Gradient of fractional_max_pool3d, as fractional_max_pool2d_backward's (each index checked)."""
    return _backward(dy, indices, x_shape, kernel_size, 3, backend, True)


def fractional_max_pool3d_backward_of_own_indices(dy, indices, x_shape, kernel_size, *, backend=None):
    """fractional_max_pool3d_backward for nn.FractionalMaxPool3d's own indices, not checked again."""
    return _backward(dy, indices, x_shape, kernel_size, 3, backend, False)
