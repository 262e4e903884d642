"""Launch code of kernels/fractional_pool.cu: fractional max pooling forward (windows from the planes'
samples) and backward (a deterministic gather over the outputs that can reach each input pixel).
x (N, C, H, W) -> y (N, C, P, Q), or volumes x (N, C, D, H, W) -> y (N, C, T, P, Q) (the kernels named
..._pool3d_...)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, check_planes, i32, i64, plane_pixel_grid

REACH = 3   # kernels/fractional_pool.cu REACH: how far a window start may lie from floor(i * alpha)
# float32 (and float16's FP32) window starts stay within REACH of floor(i * alpha) while their products'
# rounding errors stay below one (kernels/fractional_pool.cu)
FP32_AXIS_LIMIT = 2**22


def _args(x_shape, out_size, kernel_size, dtype):
    n, c, *in_size = x_shape
    check_planes("fractional max pooling", input=math.prod(in_size), output=math.prod(out_size))
    for size, outputs in zip(in_size, out_size):
        if (size + REACH + 1) * outputs >= 2**31:
            raise ValueError(f"fractional max pooling kernels find the outputs reaching an input pixel with 32-bit "
                             f"ints: (input size {size} + {REACH + 1}) x (output size {outputs}) reaches 2^31")
        if size >= FP32_AXIS_LIMIT and backend.compute_dtype(dtype) == np.float32:
            raise ValueError(f"fractional max pooling kernels compute {np.dtype(dtype)} windows in FP32, whose "
                             f"rounding is bounded for axes of fewer than 2^22 inputs, got {size}")
    return (*i64(n * c), *i32(*in_size, *out_size, *kernel_size))


def _kernel(name: str, shape) -> str:
    """The kernel of the rank of `shape`: fractional_max_pool_forward, or ..._pool3d_... for volumes."""
    return name if len(shape) == 4 else name.replace("_pool_", "_pool3d_")


def forward(be, x, samples, kernel_size, out_size):
    """(y, indices int32): each window's maximum and its flat index (d*H + h)*W + w in the plane.
    samples (N, C, 2 | 3) contiguous, of x's dtype and in [0, 1)."""
    xp = backend.array_module(be)
    y = xp.empty(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    indices = xp.empty(y.shape, dtype=np.int32)
    backend.launch(be, "fractional_pool", x.dtype, _kernel("fractional_max_pool_forward", x.shape),
                   plane_pixel_grid(x.shape[0] * x.shape[1], math.prod(out_size)), (THREADS,),
                   (x, samples, y, indices, *_args(x.shape, out_size, kernel_size, x.dtype)))
    return y, indices


def backward(be, dy, indices, x_shape, kernel_size):
    """dx: dy added at the input pixels its indices name (each within its output's reach)."""
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    backend.launch(be, "fractional_pool", dy.dtype, _kernel("fractional_max_pool_backward", x_shape),
                   plane_pixel_grid(x_shape[0] * x_shape[1], math.prod(x_shape[2:])), (THREADS,),
                   (dy, indices, dx, *_args(x_shape, dy.shape[2:], kernel_size, dy.dtype)))
    return dx
