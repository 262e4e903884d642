"""Launch code of kernels/dropout.cu: the dropout map y = x * (keep ? scale : 0), the mask drawn
from Philox4x32-10 keyed by (seed, step) per element, or per (n, c) plane for dropout2d (forward
and backward alike)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import THREADS, acc, blocks_for, i64, plane_walk_grid


def apply(be, x, seed, step, threshold, scale):
    """x with dropout applied; `threshold` = round(p * 2^32) (an element is kept when its number is
    >= threshold), `scale` = 1 / (1 - p) (0 for p = 1), in the kernel's compute type."""
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    groups = -(-x.size // 4)
    backend.launch(be, "dropout", x.dtype, "dropout_apply", (blocks_for(groups),), (THREADS,),
                   (x, y, *i64(x.size), np.uint64(seed), np.uint64(step), *i64(threshold),
                    *acc(x.dtype, scale)))
    return y


def apply_planes(be, x, seed, step, threshold, scale):
    """x with channel dropout applied: one keep decision per (n, c) plane (x's first two axes),
    drawn as apply draws element n * C + c; threshold and scale as apply's."""
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    planes = x.shape[0] * x.shape[1]
    pixels = x.size // planes if planes else 0
    backend.launch(be, "dropout", x.dtype, "dropout2d_apply", plane_walk_grid(planes, pixels, x.dtype), (THREADS,),
                   (x, y, *i64(planes, pixels), np.uint64(seed), np.uint64(step), *i64(threshold),
                    *acc(x.dtype, scale)))
    return y
