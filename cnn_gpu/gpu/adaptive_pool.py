"""Launch code of kernels/adaptive_pool.cu: adaptive average and max pooling forward and backward
(deterministic gathers). x (N, C, H, W) -> y (N, C, P, Q), or volumes x (N, C, D, H, W) ->
y (N, C, T, P, Q) (the kernels named ..._pool3d_...)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, check_planes, i32, i64, plane_pixel_grid

# the 3-D kernels take the window bounds' products in 32-bit ints (kernels/adaptive_pool.cu Product)
PRODUCT_LIMIT = 2**31


def _args(x_shape, out_size):
    n, c, *in_size = x_shape
    check_planes("adaptive pooling", input=math.prod(in_size), output=math.prod(out_size))
    if len(in_size) == 3:
        for axis, size, outputs in zip(("depth", "height", "width"), in_size, out_size):
            if (size + 1) * (outputs + 1) >= PRODUCT_LIMIT:
                raise ValueError(f"3-D adaptive pooling kernels compute window bounds with 32-bit ints: along the "
                                 f"{axis}, (input {size} + 1) x (output {outputs} + 1) reaches 2^31")
    return *i64(n * c), *i32(*in_size, *out_size)


def _kernel(name: str, shape) -> str:
    """The kernel of the rank of `shape`: adaptive_avg_pool_forward, or ..._pool3d_... for volumes."""
    return name if len(shape) == 4 else name.replace("_pool_", "_pool3d_")


def _grid(shape, plane_shape):
    return plane_pixel_grid(shape[0] * shape[1], math.prod(plane_shape))


def forward(be, x, out_size):
    y = backend.array_module(be).empty(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    backend.launch(be, "adaptive_pool", x.dtype, _kernel("adaptive_avg_pool_forward", x.shape),
                   _grid(x.shape, out_size), (THREADS,), (x, y, *_args(x.shape, out_size)))
    return y


def backward(be, dy, x_shape):
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    backend.launch(be, "adaptive_pool", dy.dtype, _kernel("adaptive_avg_pool_backward", x_shape),
                   _grid(x_shape, x_shape[2:]), (THREADS,), (dy, dx, *_args(x_shape, dy.shape[2:])))
    return dx


def max_forward(be, x, out_size):
    """(y, indices int32): each window's maximum and its flat index (d*H + h)*W + w in the plane."""
    xp = backend.array_module(be)
    y = xp.empty(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    indices = xp.empty(y.shape, dtype=np.int32)
    backend.launch(be, "adaptive_pool", x.dtype, _kernel("adaptive_max_pool_forward", x.shape),
                   _grid(x.shape, out_size), (THREADS,), (x, y, indices, *_args(x.shape, out_size)))
    return y, indices


def max_backward(be, dy, indices, x_shape):
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    backend.launch(be, "adaptive_pool", dy.dtype, _kernel("adaptive_max_pool_backward", x_shape),
                   _grid(x_shape, x_shape[2:]), (THREADS,), (dy, indices, dx, *_args(x_shape, dy.shape[2:])))
    return dx
