"""Launch code of kernels/pad.cu: F.pad's four modes, forward and backward (a deterministic gather).
x (..., H, W) -> y (..., P, Q), every leading dim a plane; `pad` (left, right, top, bottom) as
cnn_gpu.functional.pad checked it (sizes against the mode's rules, a non-empty output), `windows` the
rows' and columns' source windows it computed."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import MAX_GRID_Y, THREADS, acc, blocks_for, check_planes, i32

MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}   # kernels/pad.cu: PAD_*


def _args(x_shape, out_size, pad, windows, mode):
    h, w = x_shape[-2:]
    p, q = out_size
    left, right, top, bottom = pad
    check_planes("padding", input=h * w, output=p * q)
    (row0, rows, top), (col0, cols, left) = windows   # functional.padding.source_window's, rows then columns
    # the backward pass's reader positions reach 2 * in + |before| along an axis (circular's wrap)
    i32(2 * h + abs(top) + abs(bottom), 2 * w + abs(left) + abs(right))
    return np.int64(math.prod(x_shape[:-2])), *i32(h, w, p, q, row0, col0, rows, cols, top, left, MODES[mode])


def _grid(planes_shape, pixels):
    return blocks_for(pixels), min(math.prod(planes_shape), MAX_GRID_Y)


def forward(be, x, pad, windows, mode, value, out_size):
    y = backend.array_module(be).empty(x.shape[:-2] + tuple(out_size), dtype=x.dtype)
    if y.size:   # a batch of none is an empty result, and a grid of no blocks no launch
        backend.launch(be, "pad", x.dtype, "pad_forward", _grid(x.shape[:-2], y.shape[-2] * y.shape[-1]), (THREADS,),
                       (x, y, *_args(x.shape, out_size, pad, windows, mode), *acc(x.dtype, value)))
    return y


def backward(be, dy, x_shape, pad, windows, mode):
    dx = backend.array_module(be).empty(x_shape, dtype=dy.dtype)
    if dx.size:
        backend.launch(be, "pad", dy.dtype, "pad_backward", _grid(x_shape[:-2], x_shape[-2] * x_shape[-1]),
                       (THREADS,), (dy, dx, *_args(x_shape, dy.shape[-2:], pad, windows, mode)))
    return dx
