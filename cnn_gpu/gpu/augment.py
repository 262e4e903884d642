"""Launch code of kernels/augment.cu: random crop (zero padding) and horizontal flip of an image
batch in one pass, the randomness drawn per image from Philox keyed by (seed, step)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._grid import MAX_GRID_Y, PLANE_LIMIT, THREADS, blocks_for, check_planes, i32, i64


def random_crop_flip(be, x, seed, step, pad, flip, first=0):
    n, c, h, w = x.shape
    check_planes("augmentation", image=h * w)
    # a source row or column is at most side - 1 + pad, an int in the kernel
    if max(h, w) - 1 + pad >= PLANE_LIMIT:
        raise ValueError(f"the augmentation kernel indexes rows and columns with 32-bit ints: side {max(h, w)} "
                         f"plus padding {pad} reaches 2^31")
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    backend.launch(be, "augment", x.dtype, "random_crop_flip", (blocks_for(h * w), min(n * c, MAX_GRID_Y)),
                   (THREADS,), (x, y, *i64(n * c), *i32(c, h, w, pad, flip), np.uint64(seed), np.uint64(step),
                    np.uint64(first)))
    return y
