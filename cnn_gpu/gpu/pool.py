"""Launch code of kernels/pool.cu: max pool (values and int32 plane indices) and avg pool,
forward and backward (gathers, deterministic), of images and volumes. `g` is a PoolGeometry or a
Pool3dGeometry (the kernels named ..._pool3d_...)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, acc, check_planes, i32, plane_pixel_grid

# indices are int32 flat positions within one plane (check_planes); the kernels decode pixels and
# window positions with 32-bit ints
SPAN_LIMIT = 2**31

_AXES = ("depth", "height", "width")


def check_geometry(g) -> None:
    """ValueError for a geometry whose plane indices or window positions overflow the kernels' ints
    (run before anything is copied or launched)."""
    check_planes("pooling", input=math.prod(g.in_size), output=math.prod(g.out_size))
    # bounds every window start p*stride - pad, tap start + r*dilation and end the kernels compute
    for axis, size, k, s, p, d in zip(_AXES[-len(g.in_size):], g.in_size, g.kernel, g.stride, g.padding,
                                      g.dilation):
        if size + 2 * p + (k - 1) * d + s >= SPAN_LIMIT:
            raise ValueError(f"pooling kernels compute window positions with 32-bit ints: along the {axis}, input "
                             f"{size} + 2 x padding {p} + (kernel_size {k} - 1) x dilation {d} + stride {s} reaches "
                             f"2^31")


def _grid(plane_pixels: int, g):
    """for_each_plane_pixel's grid over g's (n, c) planes of `plane_pixels` each (small planes several a block)."""
    return plane_pixel_grid(g.N * g.C, plane_pixels)


def _kernel(name: str, g) -> str:
    """The kernel of `g`'s rank: max_pool_forward, or max_pool3d_forward for volumes."""
    return name if len(g.in_size) == 2 else name.replace("_pool_", "_pool3d_")


def _window_args(g, with_dilation: bool):
    args = (*g.in_size, *g.out_size, *g.kernel, *g.stride, *g.padding) + (g.dilation if with_dilation else ())
    return (np.int64(g.N * g.C), *i32(*args))


def _avg_args(g, dtype):
    """count_include_pad and the divisor override (0: none) after the window arguments."""
    return (np.int32(g.count_include_pad), *acc(dtype, g.divisor_override or 0))


def max_forward(be, x, g):
    check_geometry(g)
    xp = backend.array_module(be)
    y = xp.empty(g.y_shape, dtype=x.dtype)
    indices = xp.empty(g.y_shape, dtype=np.int32)
    backend.launch(be, "pool", x.dtype, _kernel("max_pool_forward", g), _grid(math.prod(g.out_size), g),
                   (THREADS,), (x, y, indices, *_window_args(g, True)))
    return y, indices


def max_backward(be, dy, indices, g):
    check_geometry(g)
    dx = backend.array_module(be).empty(g.x_shape, dtype=dy.dtype)
    backend.launch(be, "pool", dy.dtype, _kernel("max_pool_backward", g), _grid(math.prod(g.in_size), g),
                   (THREADS,), (dy, indices, dx, *_window_args(g, True)))
    return dx


def _check_no_dilation(g) -> None:
    if any(d != 1 for d in g.dilation):
        raise ValueError(f"avg pooling has no dilation, got geometry with dilation {g.dilation}")


def avg_forward(be, x, g):
    check_geometry(g)
    _check_no_dilation(g)
    y = backend.array_module(be).empty(g.y_shape, dtype=x.dtype)
    backend.launch(be, "pool", x.dtype, _kernel("avg_pool_forward", g), _grid(math.prod(g.out_size), g),
                   (THREADS,), (x, y, *_window_args(g, False), *_avg_args(g, x.dtype)))
    return y


def avg_backward(be, dy, g):
    check_geometry(g)
    _check_no_dilation(g)
    dx = backend.array_module(be).empty(g.x_shape, dtype=dy.dtype)
    backend.launch(be, "pool", dy.dtype, _kernel("avg_pool_backward", g), _grid(math.prod(g.in_size), g),
                   (THREADS,), (dy, dx, *_window_args(g, False), *_avg_args(g, dy.dtype)))
    return dx
