"""Launch code of kernels/unpool.cu: max unpooling forward (the owner table cleared, an integer claim of
each output position by the last input naming it, then a gather) and backward (the same gather kernel).
Deterministic, no float atomics. Arrays are batches viewed as `planes` (n, c) planes; indices int32 in
[-1, out_plane), checked by cnn_gpu.functional.unpool."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import THREADS, check_planes, i32, i64, plane_pixel_grid


def _shape_args(planes: int, in_plane: int, out_plane: int):
    check_planes("max unpooling", input=in_plane, output=out_plane)
    return (*i64(planes), *i32(in_plane, out_plane))


def forward(be, x, indices, out_shape):
    """y of out_shape (planes as x's, then the output plane): x scattered to its indices, zeros elsewhere."""
    xp = backend.array_module(be)
    planes, in_plane = int(np.prod(x.shape[:-2])), x.shape[-2] * x.shape[-1]
    out_plane = out_shape[-2] * out_shape[-1]
    shape_args = _shape_args(planes, in_plane, out_plane)
    owner = xp.empty(planes * out_plane, dtype=np.int32)
    backend.launch(be, "unpool", x.dtype, "max_unpool_clear", plane_pixel_grid(planes, out_plane), (THREADS,),
                   (owner, shape_args[0], shape_args[2]))
    backend.launch(be, "unpool", x.dtype, "max_unpool_claim", plane_pixel_grid(planes, in_plane), (THREADS,),
                   (indices, owner, *shape_args))
    y = xp.empty(out_shape, dtype=x.dtype)
    backend.launch(be, "unpool", x.dtype, "max_unpool_gather", plane_pixel_grid(planes, out_plane), (THREADS,),
                   (x, owner, y, *shape_args))
    return y


def backward(be, dy, indices):
    """dx of indices' shape: dy gathered at the indices, 0 where an index is -1."""
    planes, in_plane = int(np.prod(indices.shape[:-2])), indices.shape[-2] * indices.shape[-1]
    out_plane = dy.shape[-2] * dy.shape[-1]
    planes_arg, in_plane_arg, out_plane_arg = _shape_args(planes, in_plane, out_plane)
    dx = backend.array_module(be).empty(indices.shape, dtype=dy.dtype)
    # the gather from the unpooled planes of dy into planes shaped as the indices
    backend.launch(be, "unpool", dy.dtype, "max_unpool_gather", plane_pixel_grid(planes, in_plane), (THREADS,),
                   (dy, indices, dx, planes_arg, out_plane_arg, in_plane_arg))
    return dx
