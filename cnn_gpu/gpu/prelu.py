"""Launch code of kernels/prelu.cu: PReLU forward, and its backward (dx and the slope's gradient: the
kernel's per-element terms summed per channel by reduce.channel_sum, in the compute type, rounded once).
x is viewed as (N, C, inner), C the slopes' count (1: one slope for every element)."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import reduce
from ._grid import MAX_GRID_Y, THREADS, blocks_for, check_planes, i32


def _launch_shape(view):
    """(grid, trailing kernel arguments) of x viewed as (outer, channels, inner)."""
    outer, channels, inner = view
    check_planes("PReLU", plane=inner)
    return (blocks_for(inner), min(outer * channels, MAX_GRID_Y)), (np.int64(outer * channels), *i32(channels, inner))


def forward(be, x, weight, view):
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    grid, shape_args = _launch_shape(view)
    backend.launch(be, "prelu", x.dtype, "prelu_forward", grid, (THREADS,), (x, weight, y, *shape_args))
    return y


def backward(be, dy, x, weight, view):
    """(dx, dweight): dweight summed in the compute type and rounded to x's dtype once."""
    xp = backend.array_module(be)
    dx = xp.empty(x.shape, dtype=x.dtype)
    terms = xp.empty(x.shape, dtype=backend.compute_dtype(x.dtype))
    grid, shape_args = _launch_shape(view)
    backend.launch(be, "prelu", x.dtype, "prelu_backward", grid, (THREADS,), (dy, x, weight, dx, terms, *shape_args))
    outer, channels, inner = view
    dweight = reduce.channel_sum(be, terms, outer, channels, inner)
    return dx, dweight if dweight.dtype == x.dtype else backend.device_call(dweight.astype, x.dtype)
