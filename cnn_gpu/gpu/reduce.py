"""Deterministic per-channel sums (kernels/reduce.cu): bias gradients and split-K workspaces."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import Launch

THREADS = 256
# Above this many rows a one-thread-per-channel loop is too serial; a block per channel is used.
COLUMN_MAX_OUTER = 256
MAX_GRID_X = 2**31 - 1


def plan_channel_sum(outer, channels, inner):
    """The launch that channel_sum makes for `a` viewed as (outer, channels, inner)."""
    if inner == 1 and outer <= COLUMN_MAX_OUTER:
        return Launch("reduce", "channel_sum_column", (-(-channels // THREADS), 1, 1))
    if channels > MAX_GRID_X:
        raise ValueError(f"channel_sum: {channels} channels exceed the grid limit of {MAX_GRID_X} blocks")
    return Launch("reduce", "channel_sum_block", (channels, 1, 1))


def channel_sum(be, a, outer, channels, inner):
    """Sum of `a` viewed as (outer, channels, inner) over axes 0 and 2 -> (channels,).

    The summation order depends only on the shape, so results are bit-identical run to run."""
    outer, channels, inner = int(outer), int(channels), int(inner)
    if min(outer, channels, inner) <= 0 or a.size != outer * channels * inner:
        raise ValueError(f"channel_sum: array of shape {tuple(a.shape)} (size {a.size}) cannot be viewed as "
                         f"(outer={outer}, channels={channels}, inner={inner})")
    launch = plan_channel_sum(outer, channels, inner)
    out = backend.array_module(be).empty((channels,), dtype=a.dtype)
    if launch.kernel == "channel_sum_column":
        args = (a, out, np.int64(outer), np.int64(channels))
    else:
        args = (a, out, np.int64(outer), np.int64(channels), np.int64(inner))
    backend.launch(be, "reduce", a.dtype, launch.kernel, launch.grid, launch.block, args)
    return out
