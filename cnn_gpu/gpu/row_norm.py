"""Launch code of kernels/row_norm.cu: GroupNorm and LayerNorm as one row normalisation. x (C-contiguous)
is viewed as (rows, L) and as (N, P, inner): a row is one (sample, group) of GroupNorm or one
normalised slice of LayerNorm, and element (n, p, i) takes the affine parameters p (see the
kernels). A `RowLayout` says which: GroupNorm's is (N * G rows, G groups, HW inner), LayerNorm's
(rows, 1 group, 1 inner).

The statistics (mean, invstd: one a row) are in the kernels' compute type (float32 for float16);
`backward` widens float16 ones it is given. Without affine parameters the kernels are told so and
read none: nothing is allocated for them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ._grid import THREADS, acc, i32, row_threads
from .reduce import MAX_GRID_X

COLUMN_LANES = 32   # kernels/row_norm.cu: the parameters a block of row_norm_param_grads_columns takes


@dataclass(frozen=True)
class RowLayout:
    """x as `rows` rows of `length` elements, `groups` rows a sample, each row's parameters one a
    run of `inner` consecutive elements."""
    rows: int
    length: int
    groups: int
    inner: int

    @property
    def samples(self) -> int:
        return self.rows // self.groups

    @property
    def per_group(self) -> int:
        """the parameters of one row"""
        return self.length // self.inner

    @property
    def parameters(self) -> int:
        return self.groups * self.per_group

    def int_args(self):
        """(L, groups, inner) as the kernels' int arguments: refused here, before any launch, past 32 bits"""
        i32(self.parameters)
        return i32(self.length, self.groups, self.inner)


def _row_grid(layout):
    return (min(layout.rows, MAX_GRID_X),), (row_threads(layout.length),)


def forward(be, x, layout: RowLayout, weight, bias, eps, write_y=True):
    """(y, mean, invstd) of x in `layout`, y None without write_y (the statistics alone)."""
    xp = backend.array_module(be)
    compute = backend.compute_dtype(x.dtype)
    ints = layout.int_args()
    mean, invstd = xp.empty(layout.rows, compute), xp.empty(layout.rows, compute)
    y = xp.empty(x.shape if write_y else 0, x.dtype)   # without write_y, never written
    grid, block = _row_grid(layout)
    # an absent parameter's pointer is x, which the kernel then never reads
    backend.launch(be, "row_norm", x.dtype, "row_norm_forward", grid, block,
                   (x, y, mean, invstd, x if weight is None else weight,
                    x if bias is None else bias, np.int64(layout.rows), *ints, *acc(x.dtype, eps),
                    *i32(weight is not None, bias is not None, write_y)))
    return (y if write_y else None), mean, invstd


def backward(be, dy, x, layout: RowLayout, mean, invstd, weight, need_parameter_grads):
    """(dx, dweight, dbias) from the rows' statistics: dx in one launch, then, with
    need_parameter_grads, both parameter gradients in one more (else None, None)."""
    xp = backend.array_module(be)
    compute = backend.compute_dtype(x.dtype)
    mean, invstd = backend.astype(mean, compute), backend.astype(invstd, compute)
    ints = layout.int_args()
    dx = xp.empty(x.shape, x.dtype)
    grid, block = _row_grid(layout)
    backend.launch(be, "row_norm", x.dtype, "row_norm_backward_dx", grid, block,
                   (dy, x, mean, invstd, x if weight is None else weight, dx, np.int64(layout.rows), *ints,
                    *i32(weight is not None)))
    if not need_parameter_grads:
        return dx, None, None
    dweight, dbias = xp.empty(layout.parameters, x.dtype), xp.empty(layout.parameters, x.dtype)
    parameters, groups, per_group = i32(layout.parameters, layout.groups, layout.per_group)
    if layout.inner == 1:
        kernel, extra = "row_norm_param_grads_columns", ()
        grid = (min(-(-layout.parameters // COLUMN_LANES), MAX_GRID_X),)
        block = (COLUMN_LANES, THREADS // COLUMN_LANES)
    else:
        kernel, extra = "row_norm_param_grads_planes", i32(layout.inner)
        grid, block = (min(layout.parameters, MAX_GRID_X),), (row_threads(layout.samples * layout.inner),)
    backend.launch(be, "row_norm", x.dtype, kernel, grid, block,
                   (dy, x, mean, invstd, dweight, dbias, np.int64(layout.samples), parameters, groups, per_group,
                    *extra))
    return dx, dweight, dbias
