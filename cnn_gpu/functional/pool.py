"""max_pool2d, avg_pool2d, max_pool3d and avg_pool3d with their backward passes (PyTorch's output
sizes, ceil_mode rule, tie and NaN rules and avg divisors). The ops of both ranks share one code path
(the NumPy helpers loop over the spatial axes; the kernels take a depth).

NumPy path: one pass per kernel tap over a strided view of the padded input (a loop over taps, never
over pixels), skipping the taps that read only padding in every window (so huge windows over small
inputs cost what their overlap with the input costs). The max pool takes the running maximum (NaN
propagating), then the first tap holding it; its backward pass scatters dy to the saved indices with
one bincount.

Every op takes a batch (N, C, H, W) or one unbatched image (C, H, W) (run as a batch of one, a view)
and returns results of the input's rank; the 3-D ops a batch (N, C, D, H, W) or one volume (C, D, H, W).

max_pool2d_backward (and max_pool3d_backward) accepts only indices that name a tap of their own window (what max_pool2d
returns), or -1 for a window wholly in the padding: PyTorch's backward scatters dy to whatever
in-range index it is given, but the kernels gather (deterministic, no atomics) and could not see an
index outside its window, so such an index is refused with a ValueError on every backend.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import as_batch, batch_shape, pool3d_geometry, pool_geometry


# --- NumPy building blocks ----------------------------------------------------------------------
# Written for either geometry (PoolGeometry, Pool3dGeometry): they loop over its spatial axes
# (g.in_size, g.out_size and the per-axis kernel, stride, padding and dilation).

@functools.lru_cache(maxsize=64)
def _reaching_taps(out_size, size, kernel, stride, pad, dil):
    """Along one axis: (first, stop, origin, end): the taps range(first, stop) that can reach the
    input from some window (every other tap reads padding in every window and is skipped: a window
    46342 wide over a 1-pixel input reads one tap), and the extent [origin, end), in input
    coordinates, of a padded input holding the input and everything those taps read."""
    first = max(0, -(((out_size - 1) * stride - pad) // dil))
    stop = min(kernel, (pad + size - 1) // dil + 1)
    if first >= stop:
        return 0, 0, 0, size
    return (first, stop, min(0, first * dil - pad),
            max(size, (out_size - 1) * stride - pad + (stop - 1) * dil + 1))


def _reach(g):
    """_reaching_taps of every spatial axis."""
    return tuple(_reaching_taps(*axis) for axis in zip(g.out_size, g.in_size, g.kernel, g.stride, g.padding,
                                                       g.dilation))


def _taps(g):
    """The reaching taps, one index an axis, in scan order."""
    return list(itertools.product(*(range(first, stop) for first, stop, _, _ in _reach(g))))


def _padded_shape_and_crop(g):
    """The spatial shape of the padded input that holds every reaching tap, and the slices of the
    input within it."""
    extents = [(origin, end) for _, _, origin, end in _reach(g)]
    return (tuple(end - origin for origin, end in extents),
            tuple(slice(-origin, size - origin) for (origin, _), size in zip(extents, g.in_size)))


def _padded(x, g, value):
    """x inside a padded input filled with `value` that holds every reaching tap of every window."""
    shape, crop = _padded_shape_and_crop(g)
    if shape == g.in_size:
        return x  # every reaching tap lies inside x
    out = np.full(g.x_shape[:2] + shape, value, dtype=x.dtype)
    out[(Ellipsis,) + crop] = x
    return out


def _tap_view(a, g, tap):
    """The (N, C, *out_size) view of padded `a` (from _padded) that tap `tap` of every window reads."""
    views = []
    for t, out, stride, pad, dil, (_, _, origin, _) in zip(tap, g.out_size, g.stride, g.padding, g.dilation,
                                                          _reach(g)):
        start = t * dil - pad - origin
        views.append(slice(start, start + (out - 1) * stride + 1, stride))
    return a[(Ellipsis,) + tuple(views)]


def _plane_strides(in_size):
    """The flat in-plane offset of a step along each spatial axis: (W, 1) or (H*W, W, 1)."""
    return tuple(math.prod(in_size[axis + 1:]) for axis in range(len(in_size)))


@functools.lru_cache(maxsize=16)
def _window_table(g):
    """Per window and reaching tap (scan order) the flat input index ((d*H) + h)*W + w, -1 for taps in
    the padding: (windows, taps) int32; and per window its first in-bounds index, -1 when it has
    none: (*out_size)."""
    axes = len(g.in_size)
    flat, valid = 0, True
    for axis, ((first, stop, _, _), out, size, stride, pad, dil, step) in enumerate(zip(
            _reach(g), g.out_size, g.in_size, g.stride, g.padding, g.dilation, _plane_strides(g.in_size))):
        positions = np.arange(out)[:, None] * stride - pad + np.arange(first, stop)[None, :] * dil
        shape = [1] * (2 * axes)   # outputs on axis `axis`, taps on axis `axes + axis`
        shape[axis], shape[axes + axis] = positions.shape
        positions = positions.reshape(shape)
        flat = flat + positions * step
        valid = valid & (positions >= 0) & (positions < size)
    flat = np.where(valid, flat, -1).reshape(math.prod(g.out_size), -1).astype(np.int32)
    in_bounds = flat >= 0
    first = np.take_along_axis(flat, np.argmax(in_bounds, axis=1)[:, None], axis=1)[:, 0]
    first = np.where(in_bounds.any(axis=1), first, -1).reshape(g.out_size)
    return flat, first


def _holds_negative_zero(x) -> bool:
    """Whether any element of x is -0.0 (its bits compared: -0.0 == 0.0 as numbers)."""
    unsigned = np.dtype(f"u{x.itemsize}")
    return bool((x.view(unsigned) == np.array(-0.0, x.dtype).view(unsigned)).any())


def _max_forward(x, g):
    taps = _taps(g)
    if not taps:   # no tap of any window reaches the input: all padding
        return np.full(g.y_shape, -np.inf, dtype=x.dtype), np.full(g.y_shape, -1, dtype=np.int32)
    xp = _padded(x, g, -np.inf)
    windows = np.empty((len(taps),) + g.y_shape, dtype=x.dtype)   # contiguous: fast passes below
    for t, tap in enumerate(taps):
        windows[t] = _tap_view(xp, g, tap)
    best = windows.max(axis=0)   # NaN propagates
    # The index is the first tap holding the maximum: walk the taps backwards so the earliest match
    # is written last (as a product: a masked copy branches per element). PyTorch lets every NaN
    # take over, so a window with NaNs reports its last NaN: walk those forwards.
    # tap numbers in uint8 where they fit: the walk runs 2.5x faster than in int32
    best_tap = np.zeros(g.y_shape, dtype=np.uint8 if len(taps) <= 256 else np.int32)
    for t in reversed(range(len(taps))):
        best_tap += (t - best_tap) * (windows[t] == best)
    nan_windows = np.isnan(best)
    if nan_windows.any():
        for t in range(len(taps)):
            best_tap += (t - best_tap) * (nan_windows & np.isnan(windows[t]))
    # the value at that tap: max() may return either of a tied -0.0 and 0.0, PyTorch the first
    # (only a -0.0 in x makes them differ; the gather costs as much as the rest of the pass)
    if _holds_negative_zero(x):
        best = np.take_along_axis(windows, best_tap[None], axis=0)[0]
    flat, first = _window_table(dataclasses.replace(g, N=1, C=1))
    offsets = np.arange(math.prod(g.out_size), dtype=np.int32).reshape(g.out_size) * len(taps)
    indices = flat.ravel()[offsets + best_tap]
    # A window whose values are all -inf reports its first in-bounds tap (PyTorch's rule); one lying
    # wholly in the padding has none and reports -1.
    empty = best == -np.inf
    if empty.any():
        indices = np.where(empty, first, indices)
    return best, indices


def _max_backward(dy, indices, g):
    plane = math.prod(g.in_size)
    target = np.arange(g.N * g.C).reshape((g.N, g.C) + (1,) * len(g.in_size)) * plane + indices
    dy_values = dy
    hit = indices >= 0
    if not hit.all():   # -1: the window lay in the padding and its gradient goes nowhere
        target, dy_values = target[hit], dy[hit]
    disjoint = all(s >= (k - 1) * d + 1 for k, s, d in zip(g.kernel, g.stride, g.dilation))
    if disjoint:   # every input feeds at most one window: a plain scatter
        dx = np.zeros(g.N * g.C * plane, dtype=dy.dtype)
        dx[target.ravel()] = dy_values.ravel()
        return dx.reshape(g.x_shape)
    dx = np.bincount(target.ravel(), weights=dy_values.ravel(), minlength=g.N * g.C * plane)
    return dx.astype(dy.dtype, copy=False).reshape(g.x_shape)


def _avg_divisors(g, dtype):
    """PyTorch's divisor of every window, (*out_size): divisor_override when given; otherwise the
    window clipped to the padded input when padding counts, clipped to the input itself otherwise."""
    if g.divisor_override is not None:
        return np.full(g.out_size, g.divisor_override, dtype=dtype)

    def one_axis(out_size, kernel, stride, pad, size):
        start = np.arange(out_size) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        if g.count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)
    extents = [one_axis(*axis) for axis in zip(g.out_size, g.kernel, g.stride, g.padding, g.in_size)]
    return functools.reduce(np.multiply.outer, extents).astype(dtype)   # int64 products: no overflow


def _avg_forward(x, g):
    xp = _padded(x, g, 0)
    total = np.zeros(g.y_shape, dtype=x.dtype)
    for tap in _taps(g):
        total += _tap_view(xp, g, tap)
    total /= _avg_divisors(g, x.dtype)
    return total


def _avg_backward(dy, g):
    share = dy / _avg_divisors(g, dy.dtype)
    shape, crop = _padded_shape_and_crop(g)
    dxp = np.zeros(g.x_shape[:2] + shape, dtype=dy.dtype)
    for tap in _taps(g):
        _tap_view(dxp, g, tap)[...] += share
    return np.ascontiguousarray(dxp[(Ellipsis,) + crop])


# the spatial axes' names in the index errors, by rank
_AXIS_NAMES = {2: ("row", "col"), 3: ("depth", "row", "col")}


def _check_indices(indices, g, op="max_pool2d") -> None:
    """Every index is -1 in a window wholly in the padding, and otherwise the flat position
    ((d*H) + h)*W + w of one of its own window's taps (NumPy or CuPy arrays alike; on CuPy this
    reads one flag back). `op` names the forward in the error."""
    xp = _backend.module_of(indices)
    plane = math.prod(g.in_size)
    if indices.size == 0:
        return
    axes = len(g.in_size)
    inside = []   # per axis: (window origins, whether a tap of the window is inside the input), (out,)
    for out_size, size, k, s, p, d in zip(g.out_size, g.in_size, g.kernel, g.stride, g.padding, g.dilation):
        origin = np.arange(out_size) * s - p
        # taps r in [0, k) with 0 <= origin + r*d < size
        first_tap, last_tap = np.maximum(0, -(origin // d)), np.minimum(k - 1, (size - 1 - origin) // d)
        inside.append((origin, first_tap <= last_tap))

    def along(axis, values):   # (out,) values of `axis` broadcast against the (..., *out_size) indices
        return values.reshape((-1,) + (1,) * (axes - 1 - axis))
    # offset of each index from its window's origin, per axis: a tap is 0 <= offset <= (k-1)*d, a
    # multiple of d (one unsigned comparison: a negative offset is huge unsigned); int32 where it fits
    wide = max(o * s for o, s in zip(g.out_size, g.stride)) + max(g.padding) >= 2**31
    signed, unsigned = (np.int64, np.uint64) if wide else (np.int32, np.uint32)
    wide_indices = indices.astype(signed, copy=False)
    on_tap, any_inside = None, None
    for axis, ((origin, axis_inside), k, d, step, size) in enumerate(zip(inside, g.kernel, g.dilation,
                                                                          _plane_strides(g.in_size), g.in_size)):
        position = wide_indices // step
        if axis:   # the first axis keeps an index outside the plane outside every window
            position = position % size
        offset = (position - xp.asarray(along(axis, origin).astype(signed))).view(unsigned)
        ok = offset <= (k - 1) * d
        if d > 1:
            ok &= offset % d == 0
        on_tap = ok if on_tap is None else on_tap & ok
        axis_inside = along(axis, axis_inside)
        any_inside = axis_inside if any_inside is None else any_inside & axis_inside
    valid = (indices >= -1) & (indices < plane) & xp.where(indices == -1, xp.asarray(~any_inside), on_tap)
    if bool(valid.all()):   # the one read back; the messages below read more, on failure only
        return
    low, high = int(indices.min()), int(indices.max())
    sizes = "x".join(map(str, g.in_size))
    if low < -1 or high >= plane:
        raise ValueError(f"indices must lie in [-1, {plane}) (flat positions in a {sizes} plane), "
                         f"got values in [{low}, {high}]")
    where = tuple(int(i) for i in np.unravel_index(int((~valid).ravel().argmax()), indices.shape))
    value = int(indices[where])
    names = _AXIS_NAMES[axes]
    window = ", ".join(f"{name}s {origin[o]}..{origin[o] + (k - 1) * d} step {d}" for name, (origin, _), o, k, d
                       in zip(names, inside, where[2:], g.kernel, g.dilation))
    position = ", ".join(f"{name} {value // step % size if axis else value // step}" for axis, (name, step, size)
                         in enumerate(zip(names, _plane_strides(g.in_size), g.in_size)))
    what = "-1 (no tap)" if value == -1 else f"{value} ({position})"
    raise ValueError(f"indices{list(where)} = {what} is not a tap of its window ({window}); indices must be "
                     f"those {op} returned for this geometry")


# --- public ops ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Rank:
    """What the public ops of one rank differ in: their name's suffix, the rank of a batch, and its
    geometry."""
    suffix: str
    batched: int
    geometry: object


_IMAGES = _Rank("2d", 4, pool_geometry)
_VOLUMES = _Rank("3d", 5, pool3d_geometry)


def _unbatched(a, unbatched: bool):
    return a[0] if unbatched else a


def _forward_geometry(x, rank: _Rank, *geometry):
    """(geometry, x as a batch, whether x was unbatched) of a forward pass."""
    _checks.array(x, "x", ndim=(rank.batched - 1, rank.batched))
    x, unbatched = as_batch(x, rank.batched)
    return rank.geometry(x.shape, *geometry), x, unbatched


def _backward_geometry(dy, x_shape, rank: _Rank, **geometry):
    """(geometry, dy as a batch, whether x was unbatched) of a backward pass: dy must have the rank
    of x_shape and the pooled shape."""
    shape, unbatched = batch_shape(x_shape, rank.batched)
    g = rank.geometry(shape, **geometry)
    _checks.array(dy, "dy", ndim=len(shape) - unbatched)
    _checks.shape_is(dy, "dy", g.y_shape[unbatched:], f" (the pooled shape of x_shape {tuple(x_shape)})")
    return g, as_batch(dy, rank.batched)[0], unbatched


def _kernel_inputs(be, g, *named):
    """The arrays the kernels read (C-contiguous), once the geometry is known to fit their ints."""
    from ..gpu import pool as gpu_pool
    gpu_pool.check_geometry(g)   # before any copy
    return gpu_pool, [_checks.for_kernels(be, a, name) for a, name in named]


def _max_pool(x, rank: _Rank, kernel_size, stride, padding, dilation, ceil_mode, backend):
    g, x, unbatched = _forward_geometry(x, rank, kernel_size, stride, padding, dilation,
                                        _checks.flag(ceil_mode, "ceil_mode"))
    be = _backend.resolve(backend, x)
    if be == "numpy":
        y, indices = _max_forward(x, g)
    else:
        gpu_pool, (x,) = _kernel_inputs(be, g, (x, "x"))
        y, indices = gpu_pool.max_forward(be, x, g)
    return _unbatched(y, unbatched), _unbatched(indices, unbatched)


def _max_pool_backward(dy, indices, x_shape, rank: _Rank, kernel_size, stride, padding, dilation, ceil_mode,
                       backend, check_indices: bool):
    g, dy, unbatched = _backward_geometry(dy, x_shape, rank, kernel_size=kernel_size, stride=stride,
                                          padding=padding, dilation=dilation,
                                          ceil_mode=_checks.flag(ceil_mode, "ceil_mode"))
    op = f"max_pool{rank.suffix}"
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as {op} returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape[unbatched:], " (the shape of dy)")
    indices = as_batch(indices, rank.batched)[0]
    be = _backend.resolve(backend, dy, indices)
    if be != "numpy":   # the arrays' GPU and layout checked before the index check computes on them
        gpu_pool, (dy, indices) = _kernel_inputs(be, g, (dy, "dy"), (indices, "indices"))
    if check_indices:
        _check_indices(indices, g, op)
    if be == "numpy":
        return _unbatched(_max_backward(dy, indices, g), unbatched)
    return _unbatched(gpu_pool.max_backward(be, dy, indices, g), unbatched)


def _check_volume_holds_kernel(rank: _Rank, g) -> None:
    """PyTorch's avg_pool3d (CPU and CUDA) refuses an input smaller than the window along any axis,
    padding or not (avg_pool2d and the max pools take it)."""
    if rank is _VOLUMES and any(size < k for size, k in zip(g.in_size, g.kernel)):
        (d, h, w), (kd, kh, kw) = g.in_size, g.kernel
        raise ValueError(f"input image (T: {d} H: {h} W: {w}) smaller than kernel size (kT: {kd} kH: {kh} kW: {kw})")


def _avg_pool(x, rank: _Rank, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
              backend):
    g, x, unbatched = _forward_geometry(x, rank, kernel_size, stride, padding, 1,
                                        _checks.flag(ceil_mode, "ceil_mode"),
                                        _checks.flag(count_include_pad, "count_include_pad"), divisor_override)
    _check_volume_holds_kernel(rank, g)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        return _unbatched(_avg_forward(x, g), unbatched)
    gpu_pool, (x,) = _kernel_inputs(be, g, (x, "x"))
    return _unbatched(gpu_pool.avg_forward(be, x, g), unbatched)


def _avg_pool_backward(dy, x_shape, rank: _Rank, kernel_size, stride, padding, ceil_mode, count_include_pad,
                       divisor_override, backend):
    g, dy, unbatched = _backward_geometry(dy, x_shape, rank, kernel_size=kernel_size, stride=stride,
                                          padding=padding, dilation=1,
                                          ceil_mode=_checks.flag(ceil_mode, "ceil_mode"),
                                          count_include_pad=_checks.flag(count_include_pad, "count_include_pad"),
                                          divisor_override=divisor_override)
    _check_volume_holds_kernel(rank, g)
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        return _unbatched(_avg_backward(dy, g), unbatched)
    gpu_pool, (dy,) = _kernel_inputs(be, g, (dy, "dy"))
    return _unbatched(gpu_pool.avg_backward(be, dy, g), unbatched)


@takes_float16(kernels=True)
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, backend=None):
    """Max pooling as torch.nn.functional.max_pool2d(..., return_indices=True): x (N, C, H, W) or
    (C, H, W) -> (y, indices int32) of the same rank.

    indices[n, c, p, q] is the flat index h*W + w of the maximum within the (n, c) input plane; ties
    take the first maximum in scan order; a NaN in the window wins (the last NaN's index, as
    PyTorch's kernels take over on every NaN); a window lying wholly in the padding gives -inf and index -1."""
    return _max_pool(x, _IMAGES, kernel_size, stride, padding, dilation, ceil_mode, backend)


@takes_float16(kernels=True)
def max_pool2d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        *, backend=None):
    """Gradient of max_pool2d: dy routed to the input positions its indices name. x_shape is
    (N, C, H, W) or (C, H, W); dy, indices and dx have that rank. Each index must name a tap of its
    own window (or be -1 for a window wholly in the padding): ValueError otherwise."""
    return _max_pool_backward(dy, indices, x_shape, _IMAGES, kernel_size, stride, padding, dilation, ceil_mode,
                              backend, check_indices=True)


@takes_float16(kernels=True)
def max_pool2d_backward_of_own_indices(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                                       ceil_mode=False, *, backend=None):
    """max_pool2d_backward for indices that max_pool2d returned for this geometry (nn.MaxPool2d's,
    from its own forward), not checked again: on CuPy the check is a dozen elementwise launches and
    a read back that waits for the GPU, every step."""
    return _max_pool_backward(dy, indices, x_shape, _IMAGES, kernel_size, stride, padding, dilation, ceil_mode,
                              backend, check_indices=False)


@takes_float16(kernels=True)
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average pooling as torch.nn.functional.avg_pool2d (PyTorch's divisors, also with ceil_mode;
    divisor_override, a non-zero int, replaces every window's divisor): x (N, C, H, W) or (C, H, W)
    -> y of the same rank."""
    return _avg_pool(x, _IMAGES, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                     backend)


@takes_float16(kernels=True)
def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None, *, backend=None):
    """Gradient of avg_pool2d: each window's dy shared among its taps by the forward divisor. x_shape
    is (N, C, H, W) or (C, H, W); dy and dx have that rank."""
    return _avg_pool_backward(dy, x_shape, _IMAGES, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, backend)


@takes_float16(kernels=True)
def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, backend=None):
    """Max pooling of volumes as torch.nn.functional.max_pool3d(..., return_indices=True): x
    (N, C, D, H, W) or (C, D, H, W) -> (y, indices int32) of the same rank; sizes an int or a
    (d, h, w) triple.

    indices[n, c, t, p, q] is the flat index (d*H + h)*W + w of the maximum within the (n, c) input
    volume; max_pool2d's tie, NaN, ceil_mode and padding rules (scan order d, h, w)."""
    return _max_pool(x, _VOLUMES, kernel_size, stride, padding, dilation, ceil_mode, backend)


@takes_float16(kernels=True)
def max_pool3d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        *, backend=None):
    """Gradient of max_pool3d, as max_pool2d_backward's: x_shape (N, C, D, H, W) or (C, D, H, W); each
    index must name a tap of its own window (or be -1 for a window wholly in the padding)."""
    return _max_pool_backward(dy, indices, x_shape, _VOLUMES, kernel_size, stride, padding, dilation, ceil_mode,
                              backend, check_indices=True)


@takes_float16(kernels=True)
def max_pool3d_backward_of_own_indices(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                                       ceil_mode=False, *, backend=None):
    """max_pool3d_backward for indices max_pool3d returned for this geometry (nn.MaxPool3d's own),
    not checked again (see max_pool2d_backward_of_own_indices)."""
    return _max_pool_backward(dy, indices, x_shape, _VOLUMES, kernel_size, stride, padding, dilation, ceil_mode,
                              backend, check_indices=False)


@takes_float16(kernels=True)
def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average pooling of volumes as torch.nn.functional.avg_pool3d (avg_pool2d's divisors a third
    axis): x (N, C, D, H, W) or (C, D, H, W) -> y of the same rank."""
    return _avg_pool(x, _VOLUMES, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                     backend)


@takes_float16(kernels=True)
def avg_pool3d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None, *, backend=None):
    """Gradient of avg_pool3d; x_shape (N, C, D, H, W) or (C, D, H, W)."""
    return _avg_pool_backward(dy, x_shape, _VOLUMES, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, backend)
