"""Launch code of kernels/row_norm.cu: GroupNorm, LayerNorm and RMSNorm as one row normalisation. x (C-contiguous)
is viewed as (rows, L) and as (N, P, inner): a row is one (sample, group) of GroupNorm or one
normalised slice of LayerNorm, and element (n, p, i) takes the affine parameters p (see the
kernels). A `RowLayout` says which: GroupNorm's is (N * G rows, G groups, HW inner), LayerNorm's
(rows, 1 group, 1 inner). A `RowPlan` (`plan`) says how the kernels walk it: a block a row, or,
for fewer rows than 2 blocks an SM of the device, a block a slice of a row (the slices'
statistics and backward sums merged in order by each row's last block to arrive, in launches of
their own); 16-byte packs where the arrays allow, else the _unaligned kernels.

The statistics (mean, invstd: one a row) are in the kernels' compute type (float32 for float16);
`backward` widens float16 ones it is given. Without affine parameters the kernels are told so and
read none: nothing is allocated for them. RMSNorm is LayerNorm's layout with centered=False: the
kernels take the mean as 0 (they write 0 for it), invstd = 1/sqrt(mean(x^2) + eps)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ..launch_checks import memory_span
from . import _arrivals
from ._grid import THREADS, acc, check_int_walk, i32, i64, row_threads
from .conv import device_sms
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


# kernels/row_norm.cu: the bytes a wide load moves (WIDE elements of the dtype)
WIDE_BYTES = 16
# The fewest elements a slice of a split row takes (as a CHUNK of batch_norm's reductions); slice
# starts are multiples of SLICE_ALIGN elements, so a row's packs stay whole across its slices.
MIN_SLICE = THREADS * 16
SLICE_ALIGN = 8
# kernels/row_norm.cu for_each_pack: the packs (_unaligned: elements) a thread's walk loads an iteration
WALK_UNROLL = 2
# Blocks a GPU's SMs take before rows are split: two an SM (a row a block leaves SMs idle below it)
BLOCKS_PER_SM = 2


@dataclass(frozen=True)
class RowPlan:
    """How the kernels walk a layout: `span` elements a block (a row's slices: ceil(length / span);
    one slice: a block a row, statistics and sums in the same launch as y and dx), `wide` packs of
    WIDE_BYTES (else the _unaligned kernels), `threads` a block."""
    slices: int
    span: int
    wide: bool
    threads: int

    def grid(self, rows):
        return (min(rows * self.slices, MAX_GRID_X),), (self.threads,)

    def kernel(self, name):
        return name if self.wide else f"{name}_unaligned"


def plan(layout: RowLayout, dtype, sms: int, wide: bool) -> RowPlan:
    """Rows split into slices where fewer than BLOCKS_PER_SM * sms rows leave SMs idle (GroupNorm of a
    small batch: N * G long rows), each slice at least MIN_SLICE elements; a block's threads fit its
    slice's packs (WIDE_BYTES each where `wide`) WALK_UNROLL a thread: a short row's block is small,
    so an SM holds more of them, and more rows' bytes in flight (LayerNorm(768) in float32: 128
    threads; 256 held 4 blocks an SM at 62 registers, below the bytes DRAM speed needs)."""
    rows, length = layout.rows, layout.length
    slices = 1
    if 0 < rows < BLOCKS_PER_SM * sms:
        slices = max(1, min(-(-BLOCKS_PER_SM * sms // rows), length // MIN_SLICE))
    span = max(length, 1) if slices == 1 else -(-length // (slices * SLICE_ALIGN)) * SLICE_ALIGN
    slices = -(-length // span)
    pack = WIDE_BYTES // np.dtype(dtype).itemsize if wide else 1
    i32(span)   # a kernel argument
    threads = row_threads(-(-span // (pack * WALK_UNROLL)))
    check_int_walk(length, threads * pack)   # for_each_pack's int index steps by a block's packs
    return RowPlan(slices, span, wide, threads)


def _wide(layout, *arrays) -> bool:
    """Whether the wide kernels take these arrays: every one's address a multiple of WIDE_BYTES and
    the rows' length of a pack's (every row, and slice: SLICE_ALIGN, starts a pack); else the
    _unaligned ones. Either way the order of every sum is fixed by the shape, the plan's slices and
    this choice."""
    pack = WIDE_BYTES // arrays[0].dtype.itemsize
    return layout.length % pack == 0 and all(memory_span(a)[0] % WIDE_BYTES == 0 for a in arrays)


def _plan(be, layout, x, *arrays):
    """plan() on `be`'s device for x and the other arrays the kernels stream."""
    return plan(layout, x.dtype, device_sms(be), _wide(layout, x, *arrays))


def forward(be, x, layout: RowLayout, weight, bias, eps, write_y=True, centered=True):
    """(y, mean, invstd) of x in `layout`, y None without write_y (the statistics alone). A split
    row's statistics are one launch (row_norm_slice_stats) and y another. Not `centered`: RMSNorm's
    (mean 0)."""
    xp = backend.array_module(be)
    compute = backend.compute_dtype(x.dtype)
    ints = layout.int_args()
    mean, invstd = xp.empty(layout.rows, compute), xp.empty(layout.rows, compute)
    y = xp.empty(x.shape if write_y else 0, x.dtype)   # without write_y, never written
    how = _plan(be, layout, x, *((y,) if write_y else ()))
    grid, block = how.grid(layout.rows)
    split = how.slices > 1
    if split:
        partial = xp.empty(2 * layout.rows * how.slices, compute)
        _arrivals.launch(be, "row_norm", x.dtype, how.kernel("row_norm_slice_stats"), grid, block,
                         (x, mean, invstd, partial, _arrivals.zeroed(be, layout.rows), *i64(layout.rows),
                          *i32(layout.length, how.span), *acc(x.dtype, eps), *i32(centered)))
        if not write_y:
            return None, mean, invstd
    # an absent parameter's pointer is x, which the kernel then never reads
    backend.launch(be, "row_norm", x.dtype, how.kernel("row_norm_forward"), grid, block,
                   (x, y, mean, invstd, x if weight is None else weight,
                    x if bias is None else bias, *i64(layout.rows), *ints, *i32(how.span), *acc(x.dtype, eps),
                    *i32(weight is not None, bias is not None, write_y, split, centered)))
    return (y if write_y else None), mean, invstd


def backward(be, dy, x, layout: RowLayout, mean, invstd, weight, need_parameter_grads, centered=True):
    """(dx, dweight, dbias) from the rows' statistics: dx in one launch (a split row's sums in one
    more before it), then, with need_parameter_grads, both parameter gradients in one more (else
    None, None). Not `centered`: RMSNorm's dx (mean zeros: the forward's)."""
    xp = backend.array_module(be)
    compute = backend.compute_dtype(x.dtype)
    mean, invstd = backend.astype(mean, compute), backend.astype(invstd, compute)
    ints = layout.int_args()
    dx = xp.empty(x.shape, x.dtype)
    how = _plan(be, layout, x, dy, dx)
    grid, block = how.grid(layout.rows)
    weight_arg = x if weight is None else weight
    split = how.slices > 1
    row_sums = mean   # read only where split
    if split:
        row_sums = xp.empty(2 * layout.rows, compute)
        partial = xp.empty(2 * layout.rows * how.slices, compute)
        _arrivals.launch(be, "row_norm", x.dtype, how.kernel("row_norm_slice_sums"), grid, block,
                         (dy, x, mean, invstd, weight_arg, row_sums, partial, _arrivals.zeroed(be, layout.rows),
                          *i64(layout.rows), *ints, *i32(how.span, weight is not None)))
    backend.launch(be, "row_norm", x.dtype, how.kernel("row_norm_backward_dx"), grid, block,
                   (dy, x, mean, invstd, weight_arg, row_sums, dx, *i64(layout.rows), *ints,
                    *i32(how.span, weight is not None, split, centered)))
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
                   (dy, x, mean, invstd, dweight, dbias, *i64(layout.samples), parameters, groups, per_group,
                    *extra))
    return dx, dweight, dbias
