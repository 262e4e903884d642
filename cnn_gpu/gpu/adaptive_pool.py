"""Launch code of kernels/adaptive_pool.cu: adaptive average and max pooling forward and backward
(deterministic gathers). x (N, C, H, W) -> y (N, C, P, Q)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import THREADS, check_planes, i32, plane_pixel_grid


def _args(x_shape, out_size):
    n, c, h, w = x_shape
    p, q = out_size
    check_planes("adaptive pooling", input=h * w, output=p * q)
    return np.int64(n * c), *i32(h, w, p, q)


def forward(be, x, out_size):
    n, c = x.shape[:2]
    y = backend.array_module(be).empty((n, c) + tuple(out_size), dtype=x.dtype)
    grid = plane_pixel_grid(n * c, out_size[0] * out_size[1])
    backend.launch(be, "adaptive_pool", x.dtype, "adaptive_avg_pool_forward", grid, (THREADS,),
                   (x, y, *_args(x.shape, out_size)))
    return y


def backward(be, dy, x_shape):
    n, c, h, w = x_shape
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    grid = plane_pixel_grid(n * c, h * w)
    backend.launch(be, "adaptive_pool", dy.dtype, "adaptive_avg_pool_backward", grid, (THREADS,),
                   (dy, dx, *_args(x_shape, dy.shape[2:])))
    return dx


def max_forward(be, x, out_size):
    """(y, indices int32): each window's maximum and its flat index h*W + w in the plane."""
    n, c = x.shape[:2]
    xp = backend.array_module(be)
    y = xp.empty((n, c) + tuple(out_size), dtype=x.dtype)
    indices = xp.empty(y.shape, dtype=np.int32)
    grid = plane_pixel_grid(n * c, out_size[0] * out_size[1])
    backend.launch(be, "adaptive_pool", x.dtype, "adaptive_max_pool_forward", grid, (THREADS,),
                   (x, y, indices, *_args(x.shape, out_size)))
    return y, indices


def max_backward(be, dy, indices, x_shape):
    n, c, h, w = x_shape
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    grid = plane_pixel_grid(n * c, h * w)
    backend.launch(be, "adaptive_pool", dy.dtype, "adaptive_max_pool_backward", grid, (THREADS,),
                   (dy, indices, dx, *_args(x_shape, dy.shape[2:])))
    return dx
