"""Deterministic per-channel sums (kernels/reduce.cu): bias gradients, loss means and split-K workspaces;
float16 arrays are summed in FP32 and rounded once."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import _arrivals
from ._grid import Launch, blocks_for, i32, i64

THREADS = 256
# Above this many rows a one-thread-per-channel loop is too serial; blocks of channel_sum_block are used.
COLUMN_MAX_OUTER = 256
# Elements per block of channel_sum_block and of batch_norm's reductions (CHUNK in
# kernels/channel_chunks.cuh): 16 per thread, 4 per accumulator.
CHUNK = THREADS * 16
MAX_GRID_X = 2**31 - 1
# The chunked reductions walk a channel's planes of `inner` elements with an int position
# (ChannelCursor in kernels/channel_chunks.cuh): planes up to this size.
CURSOR_PLANE_LIMIT = 2**30


def chunks(outer: int, inner: int) -> int:
    """Blocks of CHUNK elements a channel of outer * inner elements takes."""
    return -(-(outer * inner) // CHUNK)


def chunked_blocks(what: str, outer: int, channels: int, inner: int) -> int:
    """The blocks of a chunked per-channel reduction (kernels/channel_chunks.cuh), channels x chunks;
    ValueError past the grid's limit or for planes of more than CURSOR_PLANE_LIMIT elements."""
    if inner > CURSOR_PLANE_LIMIT:
        raise ValueError(f"{what}: planes of {inner} elements, past the {CURSOR_PLANE_LIMIT} (2^30) the kernels' "
                         f"int positions in a plane take")
    blocks = channels * chunks(outer, inner)
    if blocks > MAX_GRID_X:
        raise ValueError(f"{what}: {channels} channels of {outer * inner} elements need {blocks} blocks, past "
                         f"the grid limit of {MAX_GRID_X}")
    return blocks


def plan_channel_sum(outer, channels, inner):
    """The launch that channel_sum makes for `a` viewed as (outer, channels, inner): channel_sum_column
    for short columns (inner == 1), else channel_sum_block, one block per CHUNK elements of a channel."""
    if inner == 1 and outer <= COLUMN_MAX_OUTER:
        return Launch("reduce", "channel_sum_column", (-(-channels // THREADS), 1, 1))
    outer, inner = _block_view(outer, channels, inner)
    return Launch("reduce", "channel_sum_block", (chunked_blocks("channel_sum", outer, channels, inner), 1, 1))


def channel_sum_bytes(outer: int, channels: int, inner: int, dtype) -> int:
    """The DRAM bytes plan_channel_sum's launch moves (the roofline model's): the elements read and a
    sum a channel written (both in `dtype`), and where a channel takes more than one block the chunk
    partials (compute type) and the channels' arrival counts."""
    launch = plan_channel_sum(outer, channels, inner)
    traffic = (outer * channels * inner + channels) * np.dtype(dtype).itemsize
    blocks = launch.grid[0]
    if launch.kernel == "channel_sum_block" and blocks > channels:
        traffic += _arrivals.scratch_bytes(blocks, channels, backend.compute_dtype(np.dtype(dtype)).itemsize)
    return traffic


def _block_view(outer: int, channels: int, inner: int) -> tuple:
    """(outer, inner) as channel_sum_block takes them: one channel's sum as planes of one element
    (the same elements in the same order, and no plane past CURSOR_PLANE_LIMIT)."""
    return (outer * inner, 1) if channels == 1 else (outer, inner)


def unread_bias(xp, dtype):
    """The bias argument of a kernel called with has_bias == 0: never read, but its own array (the
    launch checks refuse an output aliased by any other argument)."""
    return xp.zeros(1, dtype=dtype)


def plan_split_sum_epilogue(elements):
    """The launch that split_sum_epilogue makes for `elements` outputs."""
    return Launch("reduce", "split_sum_epilogue", (blocks_for(elements), 1, 1))


def split_sum_epilogue(be, partials, out, channels, inner, bias=None, relu=False):
    """out = sum of `partials` (splits, *out.shape) over its first axis in order (split 0, 1, 2, ...),
    plus bias per channel of out viewed as (outer, channels, inner), then ReLU when `relu`: the
    epilogue of a split-K convolution, in one launch. `partials` are in out's compute type
    (backend.compute_dtype: FP32 for a float16 out), `bias` in out's dtype; each output is summed in
    the compute type and rounded to out's dtype once."""
    splits, elements = partials.shape[0], out.size
    launch = plan_split_sum_epilogue(elements)
    bias_arg = unread_bias(backend.array_module(be), out.dtype) if bias is None else bias
    args = (partials, bias_arg, out, *i64(splits, elements, channels, inner),
            *i32(bias is not None, relu))
    backend.launch(be, "reduce", out.dtype, launch.kernel, launch.grid, launch.block, args)
    return out


def channel_sum(be, a, outer, channels, inner):
    """Sum of `a` viewed as (outer, channels, inner) over axes 0 and 2 -> (channels,), in a's dtype.

    The summation order depends only on the shape, so results are bit-identical run to run. A
    float16 `a` is read as it is and summed in FP32 (chunk partials too), each sum rounded once:
    bit-identical to the float32 sum of `a` widened, then rounded."""
    outer, channels, inner = int(outer), int(channels), int(inner)
    if min(outer, channels, inner) <= 0 or a.size != outer * channels * inner:
        raise ValueError(f"channel_sum: array of shape {tuple(a.shape)} (size {a.size}) cannot be viewed as "
                         f"(outer={outer}, channels={channels}, inner={inner})")
    launch = plan_channel_sum(outer, channels, inner)
    xp = backend.array_module(be)
    out = xp.empty((channels,), dtype=a.dtype)
    if launch.kernel == "channel_sum_column":
        args = (a, out, *i64(outer, channels))
    else:
        # the chunk partials (in the compute type; none where a channel is one block's) and the per-channel
        # arrival counts of the channels' last blocks
        outer, inner = _block_view(outer, channels, inner)
        blocks = launch.grid[0]
        partial = xp.empty(blocks if blocks > channels else 0, dtype=backend.compute_dtype(a.dtype))
        args = (a, out, partial, _arrivals.zeroed(be, channels), *i64(outer, channels, inner))
    _arrivals.launch(be, "reduce", a.dtype, launch.kernel, launch.grid, launch.block, args)
    return out
