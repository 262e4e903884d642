"""Launch code of kernels/local_response_norm.cu: the forward pass, and the backward pass as two maps
(each element's direct gradient dy / P and its window term t in the compute type, then dx summing the
terms of the windows holding it in a fixed order, rounded once). x is viewed as (N, C, inner)."""
from __future__ import annotations

from .. import backend
from ._grid import THREADS, acc, check_planes, i32, i64, plane_pixel_grid


def _launch_shape(view):
    """(grid, the kernels' shape arguments) of x viewed as (N, C, inner)."""
    N, C, inner = view
    check_planes("LocalResponseNorm", sample=C * inner)
    return plane_pixel_grid(N * C, inner), (*i64(N * C), *i32(C, inner))


def forward(be, x, view, size, alpha, beta, k):
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    grid, shape_args = _launch_shape(view)
    backend.launch(be, "local_response_norm", x.dtype, "local_response_norm_forward", grid, (THREADS,),
                   (x, y, *shape_args, *i32(size), *acc(x.dtype, alpha, beta, k)))
    return y


def backward(be, dy, x, view, size, alpha, beta, k):
    xp = backend.array_module(be)
    direct, terms = (xp.empty(x.shape, dtype=backend.compute_dtype(x.dtype)) for _ in range(2))
    dx = xp.empty(x.shape, dtype=x.dtype)
    grid, shape_args = _launch_shape(view)
    backend.launch(be, "local_response_norm", x.dtype, "local_response_norm_terms", grid, (THREADS,),
                   (dy, x, direct, terms, *shape_args, *i32(size), *acc(x.dtype, alpha, beta, k)))
    backend.launch(be, "local_response_norm", x.dtype, "local_response_norm_backward", grid, (THREADS,),
                   (x, direct, terms, dx, *shape_args, *i32(size)))
    return dx
