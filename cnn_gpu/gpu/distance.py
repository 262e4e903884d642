"""Launch code of kernels/distance.cu: normalize, cosine_similarity and pairwise_distance, forward and
backward, over the rows of the inputs viewed as (outer, size, inner): a group of row_lanes(size) threads
a row where the rows are contiguous (inner == 1; pairwise_distance always), else a thread a row (rows.cuh's
for_each_row) or, where strided rows are too few to fill the GPU so (_grid.split_row_lanes), a block's
segments a row (the <kernel>_split kernels, rows.cuh's for_each_split_row). `p` is a finite p > 0 or inf,
passed to the kernels as 0 (their infinity norm)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, acc, i32, i64, row_walk_blocks, split_row_lanes
from .conv import device_sms
from .reduce import MAX_GRID_X


def _launch(be, kernel, dtype, view, args):
    """<kernel> on for_each_row's grid over the (outer * inner) rows of `view`, or <kernel>_split on
    for_each_split_row's where split_row_lanes splits its strided rows."""
    outer, size, inner = view
    rows = outer * inner
    if inner > 1 and (lanes := split_row_lanes(rows, size, inner, np.dtype(dtype).itemsize, device_sms(be))):
        backend.launch(be, "distance", dtype, f"{kernel}_split", (min(-(-rows // lanes), MAX_GRID_X),), (THREADS,),
                       (*args, *i32(lanes)))
    else:
        backend.launch(be, "distance", dtype, kernel, (row_walk_blocks(rows, size, inner == 1),), (THREADS,), args)


def _p(p):
    return 0.0 if math.isinf(p) else p


def _rows(view):
    outer, size, inner = view
    return *i64(outer * inner), *i32(size), *i64(inner)


def normalize(be, x, view, p, eps):
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    _launch(be, "normalize_forward", x.dtype, view, (x, y, *_rows(view), *acc(x.dtype, _p(p), eps)))
    return y


def normalize_backward(be, dy, x, view, p, eps):
    dx = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    _launch(be, "normalize_backward", x.dtype, view,
            (dy, x, dx, *_rows(view), *acc(x.dtype, _p(p), eps)))
    return dx


def cosine_similarity(be, x1, x2, view, eps):
    """(outer, inner) similarities; the caller reshapes them."""
    out = backend.array_module(be).empty((view[0], view[2]), dtype=x1.dtype)
    _launch(be, "cosine_similarity_forward", x1.dtype, view, (x1, x2, out, *_rows(view), *acc(x1.dtype, eps)))
    return out


def cosine_similarity_backward(be, dout, x1, x2, view, eps):
    xp = backend.array_module(be)
    dx1, dx2 = xp.empty(x1.shape, dtype=x1.dtype), xp.empty(x1.shape, dtype=x1.dtype)
    _launch(be, "cosine_similarity_backward", x1.dtype, view,
            (dout, x1, x2, dx1, dx2, *_rows(view), *acc(x1.dtype, eps)))
    return dx1, dx2


def pairwise_distance(be, x1, x2, rows, size, p, eps):
    """(rows,) distances of x1 and x2 viewed as (rows, size)."""
    out = backend.array_module(be).empty((rows,), dtype=x1.dtype)
    _launch(be, "pairwise_distance_forward", x1.dtype, (rows, size, 1),
            (x1, x2, out, *i64(rows), *i32(size), *acc(x1.dtype, _p(p), eps)))
    return out


def pairwise_distance_backward(be, dout, x1, x2, rows, size, p, eps):
    xp = backend.array_module(be)
    dx1, dx2 = xp.empty(x1.shape, dtype=x1.dtype), xp.empty(x1.shape, dtype=x1.dtype)
    _launch(be, "pairwise_distance_backward", x1.dtype, (rows, size, 1),
            (dout, x1, x2, dx1, dx2, *i64(rows), *i32(size), *acc(x1.dtype, _p(p), eps)))
    return dx1, dx2
