"""Launch code of kernels/prelu.cu: PReLU forward, and its backward (dx and the slope's gradient: the
kernel's per-element terms summed per channel by reduce.channel_sum, in the compute type, rounded once).
x is viewed as (N, C, inner), C the slopes' count (1: one slope for every element)."""
from __future__ import annotations

from .. import backend
from . import reduce
from ._grid import THREADS, check_planes, i32, i64, plane_walk_grid


def _launch_shape(view, dtype):
    """(grid, trailing kernel arguments) of x viewed as (outer, channels, inner)."""
    outer, channels, inner = view
    check_planes("PReLU", plane=inner)
    planes = outer * channels
    return plane_walk_grid(planes, inner, dtype), (*i64(planes), *i32(channels, inner))


def forward(be, x, weight, view):
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    grid, shape_args = _launch_shape(view, x.dtype)
    backend.launch(be, "prelu", x.dtype, "prelu_forward", grid, (THREADS,), (x, weight, y, *shape_args))
    return y


def backward(be, dy, x, weight, view):
    """(dx, dweight): dweight summed in the compute type and rounded to x's dtype once."""
    xp = backend.array_module(be)
    dx = xp.empty(x.shape, dtype=x.dtype)
    terms = xp.empty(x.shape, dtype=backend.compute_dtype(x.dtype))
    grid, shape_args = _launch_shape(view, x.dtype)
    backend.launch(be, "prelu", x.dtype, "prelu_backward", grid, (THREADS,), (dy, x, weight, dx, terms, *shape_args))
    outer, channels, inner = view
    dweight = reduce.channel_sum(be, terms, outer, channels, inner)
    return dx, dweight if dweight.dtype == x.dtype else backend.device_call(dweight.astype, x.dtype)
