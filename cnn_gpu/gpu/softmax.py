"""Launch code of kernels/softmax.cu: softmax and log-softmax over one dimension, forward and
backward (from the forward output y). Arrays are viewed as (outer, size, inner) with `size` the
softmax dimension; contiguous rows (inner == 1) get a block a row, others a thread a row or, where
they are too few to fill the GPU so (_grid.split_row_lanes), a block's segments a row."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import THREADS, blocks_for, check_int_walk, i32, row_threads, split_row_lanes
from .conv import device_sms
from .reduce import MAX_GRID_X


def _launch(be, kernel: str, arrays, out, shape, log: bool) -> None:
    """kernels/softmax.cu's <kernel>_rows, <kernel>_columns or <kernel>_split on `arrays` (C-contiguous,
    the first one's dtype), writing `out`; shape = (outer, size, inner), none of them 0."""
    outer, size, inner = shape
    rows = outer * inner
    size_arg, log_arg = i32(size, log)   # a size of 2^31 or more is refused here, before any launch
    split = ()
    if inner == 1:
        name, grid, block = f"{kernel}_rows", min(rows, MAX_GRID_X), row_threads(size)
        check_int_walk(size, block)
    elif lanes := split_row_lanes(rows, size, inner, arrays[0].dtype.itemsize, device_sms(be)):
        name, grid, block, split = f"{kernel}_split", min(-(-rows // lanes), MAX_GRID_X), THREADS, i32(lanes)
    else:
        name, grid, block = f"{kernel}_columns", blocks_for(rows), THREADS
    backend.launch(be, "softmax", arrays[0].dtype, name, (grid,), (block,),
                   (*arrays, out, np.int64(rows), size_arg, np.int64(inner), log_arg, *split))


def forward(be, x, shape, log: bool):
    """softmax (log_softmax where `log`) of x viewed as shape = (outer, size, inner) over `size`."""
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    _launch(be, "softmax_forward", (x,), y, shape, log)
    return y


def backward(be, dy, y, shape, log: bool):
    """The gradient from dy and the forward output y, both viewed as shape = (outer, size, inner)."""
    dx = backend.array_module(be).empty(y.shape, dtype=y.dtype)
    _launch(be, "softmax_backward", (dy, y), dx, shape, log)
    return dx
