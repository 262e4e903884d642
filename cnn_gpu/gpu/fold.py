"""Launch code of kernels/fold.cu: unfold (im2col) and fold (col2im, a deterministic gather). Each is
the other's backward pass. `g` is a FoldGeometry (cnn_gpu.functional.folding): the image (N, C, H, W), the
kernel, its dilation, padding and stride, and the blocks (LH, LW)."""
from __future__ import annotations

import math

from .. import backend
from ._grid import THREADS, check_planes, i32, i64, plane_pixel_grid


def _shape_args(g):
    return i32(g.H, g.W, *g.kernel_size, *g.blocks, *g.stride, *g.padding, *g.dilation)


def unfold(be, x, g):
    """cols (N, C*KH*KW, LH*LW) of the image x (N, C, H, W)."""
    rows, blocks = g.N * g.C * g.taps, g.L
    check_planes("Unfold", image=g.H * g.W, columns=g.taps * blocks)
    cols = backend.array_module(be).empty((g.N, g.C * g.taps, blocks), dtype=x.dtype)
    grid = plane_pixel_grid(rows, blocks)   # no rows: nothing launched
    backend.launch(be, "fold", x.dtype, "unfold_forward", grid, (THREADS,), (x, cols, *i64(rows), *_shape_args(g)))
    return cols


def fold(be, cols, g):
    """The image (N, C, H, W) summing the columns cols (N, C*KH*KW, LH*LW) over the blocks that overlap."""
    planes, pixels = g.N * g.C, g.H * g.W
    check_planes("Fold", image=pixels, columns=g.taps * g.L)
    y = backend.array_module(be).empty((g.N, g.C, g.H, g.W), dtype=cols.dtype)
    grid = plane_pixel_grid(planes, pixels)
    periods = i32(*(stride // math.gcd(stride, dil) for stride, dil in zip(g.stride, g.dilation)))
    backend.launch(be, "fold", cols.dtype, "fold_forward", grid, (THREADS,),
                   (cols, y, *i64(planes), *_shape_args(g), *periods))
    return y
