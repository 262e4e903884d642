"""max_pool2d and avg_pool2d with their backward passes (PyTorch's output sizes, ceil_mode rule,
tie and NaN rules and avg divisors).

NumPy path: one pass per kernel tap over a strided view of the padded input (a loop over taps, never
over pixels). The max pool takes the running maximum (NaN propagating), then the first tap holding
it; its backward pass scatters dy to the saved indices with one bincount.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .. import backend as _backend
from . import _checks
from .geometry import PoolGeometry, pool_geometry


# --- NumPy building blocks ----------------------------------------------------------------------

def _tap_positions(out_size, kernel, stride, pad, dil):
    """Input coordinate of every (output position, tap) along one axis: shape (out_size, kernel)."""
    return np.arange(out_size)[:, None] * stride - pad + np.arange(kernel)[None, :] * dil


def _padded_shape(g: PoolGeometry):
    """(Hp, Wp) of a padded input in which every window of g lies."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    return (max((g.P - 1) * sh + (kh - 1) * dh + 1, ph + g.H),
            max((g.Q - 1) * sw + (kw - 1) * dw + 1, pw + g.W))


def _padded(x, g: PoolGeometry, value):
    if g.padding == (0, 0) and _padded_shape(g) == (g.H, g.W):
        return x  # every window already lies inside x
    out = np.full((g.N, g.C) + _padded_shape(g), value, dtype=x.dtype)
    ph, pw = g.padding
    out[:, :, ph:ph + g.H, pw:pw + g.W] = x
    return out


def _tap_view(a, g: PoolGeometry, r, s):
    """The (N, C, P, Q) view of padded `a` that tap (r, s) of every window reads."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return a[:, :, r * dh:r * dh + (g.P - 1) * sh + 1:sh, s * dw:s * dw + (g.Q - 1) * sw + 1:sw]


@functools.lru_cache(maxsize=16)
def _window_table(g: PoolGeometry):
    """Per window and tap (scan order) the flat input index h*W + w, -1 for taps in the padding:
    (P*Q, kh*kw) int32; and per window its first in-bounds index, -1 when it has none: (P, Q)."""
    (kh, kw) = g.kernel
    rows = _tap_positions(g.P, kh, g.stride[0], g.padding[0], g.dilation[0])
    cols = _tap_positions(g.Q, kw, g.stride[1], g.padding[1], g.dilation[1])
    valid = ((rows >= 0) & (rows < g.H))[:, None, :, None] & ((cols >= 0) & (cols < g.W))[None, :, None, :]
    flat = np.where(valid, rows[:, None, :, None] * g.W + cols[None, :, None, :], -1)
    flat = flat.reshape(g.P * g.Q, kh * kw).astype(np.int32)
    in_bounds = flat >= 0
    first = np.take_along_axis(flat, np.argmax(in_bounds, axis=1)[:, None], axis=1)[:, 0]
    first = np.where(in_bounds.any(axis=1), first, -1).reshape(g.P, g.Q)
    return flat, first


def _max_forward(x, g: PoolGeometry):
    (kh, kw) = g.kernel
    taps = kh * kw
    xp = _padded(x, g, -np.inf)
    windows = np.empty((taps,) + g.y_shape, dtype=x.dtype)   # contiguous: fast passes below
    for r in range(kh):
        for s in range(kw):
            windows[r * kw + s] = _tap_view(xp, g, r, s)
    best = windows.max(axis=0)   # NaN propagates
    # The index is the first tap holding the maximum: walk the taps backwards so the earliest match
    # is written last (as a product: a masked copy branches per element). PyTorch lets every NaN
    # take over, so a window with NaNs reports its last NaN: walk those forwards.
    best_tap = np.zeros(g.y_shape, dtype=np.int32)
    for t in reversed(range(taps)):
        best_tap += (t - best_tap) * (windows[t] == best)
    nan_windows = np.isnan(best)
    if nan_windows.any():
        for t in range(taps):
            best_tap += (t - best_tap) * (nan_windows & np.isnan(windows[t]))
    flat, first = _window_table(dataclasses.replace(g, N=1, C=1))
    offsets = np.arange(g.P * g.Q, dtype=np.int32).reshape(g.P, g.Q) * taps
    indices = flat.ravel()[offsets + best_tap]
    # A window whose values are all -inf reports its first in-bounds tap (PyTorch's rule); one lying
    # wholly in the padding has none and reports -1.
    empty = best == -np.inf
    if empty.any():
        indices = np.where(empty, first, indices)
    return best, indices


def _max_backward(dy, indices, g: PoolGeometry):
    plane = g.H * g.W
    target = np.arange(g.N * g.C).reshape(g.N, g.C, 1, 1) * plane + indices
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


def _avg_divisors(g: PoolGeometry, dtype):
    """PyTorch's divisor of every window, (P, Q): the window clipped to the padded input when padding
    counts, clipped to the input itself otherwise."""
    def one_axis(out_size, kernel, stride, pad, size):
        start = np.arange(out_size) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        if g.count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)
    rows = one_axis(g.P, g.kernel[0], g.stride[0], g.padding[0], g.H)
    cols = one_axis(g.Q, g.kernel[1], g.stride[1], g.padding[1], g.W)
    return (rows[:, None] * cols[None, :]).astype(dtype)


def _avg_forward(x, g: PoolGeometry):
    xp = _padded(x, g, 0)
    total = np.zeros(g.y_shape, dtype=x.dtype)
    for r in range(g.kernel[0]):
        for s in range(g.kernel[1]):
            total += _tap_view(xp, g, r, s)
    total /= _avg_divisors(g, x.dtype)
    return total


def _avg_backward(dy, g: PoolGeometry):
    share = dy / _avg_divisors(g, dy.dtype)
    dxp = np.zeros((g.N, g.C) + _padded_shape(g), dtype=dy.dtype)
    for r in range(g.kernel[0]):
        for s in range(g.kernel[1]):
            _tap_view(dxp, g, r, s)[...] += share
    ph, pw = g.padding
    return np.ascontiguousarray(dxp[:, :, ph:ph + g.H, pw:pw + g.W])


# --- public ops ---------------------------------------------------------------------------------

def _x_shape(x_shape):
    return _checks.shape_tuple(x_shape, "x_shape", 4)


def _dy(dy, g: PoolGeometry):
    _checks.array(dy, "dy", ndim=4)
    _checks.shape_is(dy, "dy", g.y_shape, f" (the pooled shape of x_shape {g.x_shape})")
    return dy


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, backend=None):
    """Max pooling as torch.nn.functional.max_pool2d(..., return_indices=True) -> (y, indices int32).

    indices[n, c, p, q] is the flat index h*W + w of the maximum within the (n, c) input plane; ties
    take the first maximum in scan order; a NaN in the window wins (the last NaN's index, as
    PyTorch's kernels take over on every NaN); a window lying wholly in the padding gives -inf and index -1."""
    _checks.array(x, "x", ndim=4)
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, _checks.flag(ceil_mode, "ceil_mode"))
    be = _backend.resolve(backend, x)
    if be == "numpy":
        return _max_forward(x, g)
    from ..gpu import pool as gpu_pool
    return gpu_pool.max_forward(be, _checks.for_kernels(be, x, "x"), g)


def max_pool2d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        *, backend=None):
    """Gradient of max_pool2d: dy routed to the input positions its indices name."""
    g = pool_geometry(_x_shape(x_shape), kernel_size, stride, padding, dilation,
                      _checks.flag(ceil_mode, "ceil_mode"))
    _dy(dy, g)
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as max_pool2d returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape, " (the shape of dy)")
    be = _backend.resolve(backend, dy, indices)
    if isinstance(indices, np.ndarray) and indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < -1 or high >= g.H * g.W:
            raise ValueError(f"indices must lie in [-1, {g.H * g.W}) (flat positions in a {g.H}x{g.W} plane), "
                             f"got values in [{low}, {high}]")
    if be == "numpy":
        return _max_backward(dy, indices, g)
    from ..gpu import pool as gpu_pool
    return gpu_pool.max_backward(be, _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, indices, "indices"), g)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *, backend=None):
    """Average pooling as torch.nn.functional.avg_pool2d (PyTorch's divisors, also with ceil_mode)."""
    _checks.array(x, "x", ndim=4)
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, _checks.flag(ceil_mode, "ceil_mode"),
                      _checks.flag(count_include_pad, "count_include_pad"))
    be = _backend.resolve(backend, x)
    if be == "numpy":
        return _avg_forward(x, g)
    from ..gpu import pool as gpu_pool
    return gpu_pool.avg_forward(be, _checks.for_kernels(be, x, "x"), g)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        *, backend=None):
    """Gradient of avg_pool2d: each window's dy shared among its taps by the forward divisor."""
    g = pool_geometry(_x_shape(x_shape), kernel_size, stride, padding, 1, _checks.flag(ceil_mode, "ceil_mode"),
                      _checks.flag(count_include_pad, "count_include_pad"))
    _dy(dy, g)
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        return _avg_backward(dy, g)
    from ..gpu import pool as gpu_pool
    return gpu_pool.avg_backward(be, _checks.for_kernels(be, dy, "dy"), g)
