"""Launch code of kernels/pool.cu: max pool (values and int32 plane indices) and avg pool,
forward and backward (gathers, deterministic). `g` is a PoolGeometry."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import MAX_GRID_Y, THREADS, blocks_for, i32

# indices are int32 flat positions within one plane; the kernels decode pixels with 32-bit ints
PLANE_LIMIT = 2**31


def _check_planes(g) -> None:
    for name, shape in (("input", (g.H, g.W)), ("output", (g.P, g.Q))):
        if shape[0] * shape[1] >= PLANE_LIMIT:
            raise ValueError(f"pooling kernels index a plane with 32-bit ints: {name} plane {shape[0]}x{shape[1]} "
                             f"has 2^31 pixels or more")


def _grid(plane_pixels: int, g):
    return (blocks_for(plane_pixels), min(g.N * g.C, MAX_GRID_Y), 1)


def _window_args(g, with_dilation: bool):
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    args = (kh, kw, sh, sw, ph, pw) + (g.dilation if with_dilation else ())
    return (np.int64(g.N * g.C), *i32(g.H, g.W, g.P, g.Q, *args))


def max_forward(be, x, g):
    _check_planes(g)
    xp = backend.array_module(be)
    y = xp.empty(g.y_shape, dtype=x.dtype)
    indices = xp.empty(g.y_shape, dtype=np.int32)
    backend.launch(be, "pool", x.dtype, "max_pool_forward", _grid(g.P * g.Q, g), (THREADS,),
                   (x, y, indices, *_window_args(g, True)))
    return y, indices


def max_backward(be, dy, indices, g):
    _check_planes(g)
    dx = backend.array_module(be).empty(g.x_shape, dtype=dy.dtype)
    backend.launch(be, "pool", dy.dtype, "max_pool_backward", _grid(g.H * g.W, g), (THREADS,),
                   (dy, indices, dx, *_window_args(g, True)))
    return dx


def _check_no_dilation(g) -> None:
    if g.dilation != (1, 1):
        raise ValueError(f"avg pooling has no dilation, got geometry with dilation {g.dilation}")


def avg_forward(be, x, g):
    _check_planes(g)
    _check_no_dilation(g)
    y = backend.array_module(be).empty(g.y_shape, dtype=x.dtype)
    backend.launch(be, "pool", x.dtype, "avg_pool_forward", _grid(g.P * g.Q, g), (THREADS,),
                   (x, y, *_window_args(g, False), np.int32(g.count_include_pad)))
    return y


def avg_backward(be, dy, g):
    _check_planes(g)
    _check_no_dilation(g)
    dx = backend.array_module(be).empty(g.x_shape, dtype=dy.dtype)
    backend.launch(be, "pool", dy.dtype, "avg_pool_backward", _grid(g.H * g.W, g), (THREADS,),
                   (dy, dx, *_window_args(g, False), np.int32(g.count_include_pad)))
    return dx
