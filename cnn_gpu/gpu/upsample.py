"""Launch code of kernels/upsample.cu: nearest, nearest-exact, bilinear and bicubic interpolation,
forward and backward (a deterministic gather). x (N, C, H, W) -> y (N, C, P, Q); `axis_params` per
axis (rows, columns): the nearest modes' FP32 scale, or bilinear's and bicubic's ratio
(cnn_gpu.functional.upsample works them out)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import THREADS, acc, check_planes, i32, i64, plane_pixel_grid


def _args(mode, dtype, x_shape, out_size, axis_params, align_corners):
    n, c, h, w = x_shape
    p, q = out_size
    check_planes("upsampling", input=h * w, output=p * q)
    if mode.startswith("nearest"):
        scalars = tuple(map(np.float32, axis_params))
    else:
        scalars = (*acc(dtype, *axis_params), *i32(align_corners))
    return *i64(n * c), *i32(h, w, p, q), *scalars


def kernel_name(mode, direction):
    """The kernel of `mode` ("nearest-exact" runs upsample_nearest_exact_*), direction "forward" or "backward"."""
    return f"upsample_{mode.replace('-', '_')}_{direction}"


def forward(be, mode, x, out_size, axis_params, align_corners=False):
    n, c = x.shape[:2]
    y = backend.array_module(be).empty((n, c) + tuple(out_size), dtype=x.dtype)
    grid = plane_pixel_grid(n * c, out_size[0] * out_size[1])
    backend.launch(be, "upsample", x.dtype, kernel_name(mode, "forward"), grid, (THREADS,),
                   (x, y, *_args(mode, x.dtype, x.shape, out_size, axis_params, align_corners)))
    return y


def backward(be, mode, dy, x_shape, axis_params, align_corners=False):
    n, c, h, w = x_shape
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    grid = plane_pixel_grid(n * c, h * w)
    backend.launch(be, "upsample", dy.dtype, kernel_name(mode, "backward"), grid, (THREADS,),
                   (dy, dx, *_args(mode, dy.dtype, x_shape, dy.shape[2:], axis_params, align_corners)))
    return dx
