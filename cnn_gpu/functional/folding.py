"""unfold (im2col) and fold (col2im), torch.nn.functional.unfold / fold's semantics, and their backward
passes (each is the other's).

unfold(x, kernel_size, dilation=1, padding=0, stride=1): the image x (N, C, H, W) or (C, H, W) as
columns (N, C*KH*KW, L) or (C*KH*KW, L): row c*KH*KW + i*KW + j holds tap (i, j) of each of the
L = LH*LW sliding blocks (zero where a tap falls in the padding), LH = (H + 2 pad_h - dil_h (KH - 1) - 1)
// stride_h + 1 and LW likewise. fold(cols, output_size, kernel_size, ...) puts the columns back into an
image of output_size (H, W), summing the values of overlapping blocks.

NumPy path (the oracle): fold adds the taps' slices tap by tap in increasing (i, j) order, the order in
which the kernel's thread of each pixel sums them, so NumPy and the kernels agree bit for bit. float16:
FP32 sums, each output rounded once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import batch_shape, pair


@dataclass(frozen=True)
class FoldGeometry:
    N: int
    C: int
    H: int
    W: int
    kernel_size: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]
    blocks: tuple[int, int]   # (LH, LW): the sliding blocks along each axis

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def L(self) -> int:
        return self.blocks[0] * self.blocks[1]

    def tap_slices(self):
        """((i, j), the rows and columns of the padded image that tap (i, j) reads) in increasing (i, j)."""
        (kh, kw), (dh, dw), (sh, sw), (lh, lw) = self.kernel_size, self.dilation, self.stride, self.blocks
        for i in range(kh):
            for j in range(kw):
                yield (i, j), (slice(i * dh, i * dh + sh * (lh - 1) + 1, sh),
                               slice(j * dw, j * dw + sw * (lw - 1) + 1, sw))


def _sizes(kernel_size, dilation, padding, stride):
    """PyTorch's checks of the four size arguments (each an int or an (h, w) pair)."""
    kernel_size, dilation = pair(kernel_size, "kernel_size"), pair(dilation, "dilation")
    padding, stride = pair(padding, "padding", minimum=0), pair(stride, "stride")
    return kernel_size, dilation, padding, stride


def _blocks(size, kernel_size, dilation, padding, stride):
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, d, p, st in zip(size, kernel_size, dilation, padding, stride))


def _unfold_geometry(x_shape, kernel_size, dilation, padding, stride, name="x") -> FoldGeometry:
    sizes = _sizes(kernel_size, dilation, padding, stride)
    if len(x_shape) not in (3, 4) or 0 in x_shape[-3:]:
        raise ValueError(f"Expected 3D or 4D (batch mode) {name} with possibly 0 batch size and other non-zero "
                         f"dimensions, but got: {list(x_shape)}")
    N, C, H, W = (1, *x_shape) if len(x_shape) == 3 else x_shape
    blocks = _blocks((H, W), *sizes)
    if min(blocks) < 1:
        raise ValueError(f"Given input with spatial size {(H, W)}, kernel_size={sizes[0]}, dilation={sizes[1]}, "
                         f"padding={sizes[2]}, calculated shape of the array of sliding blocks as {blocks}, but its "
                         f"components must be at least one.")
    return FoldGeometry(N, C, H, W, *sizes, blocks)


def _fold_geometry(cols_shape, output_size, kernel_size, dilation, padding, stride, name="cols") -> FoldGeometry:
    output_size = pair(output_size, "output_size", minimum=0)
    sizes = _sizes(kernel_size, dilation, padding, stride)
    if len(cols_shape) not in (2, 3) or 0 in cols_shape[-2:]:
        raise ValueError(f"Expected 2D or 3D (batch mode) {name} with possibly 0 batch size and non-zero dimensions, "
                         f"but got: {list(cols_shape)}")
    N, rows, L = (1, *cols_shape) if len(cols_shape) == 2 else cols_shape
    taps = sizes[0][0] * sizes[0][1]
    if rows % taps:
        raise ValueError(f"Expected size of {name}'s dimension 1 to be divisible by the product of kernel_size, but "
                         f"got {name}.size(1)={rows} and kernel_size={sizes[0]}.")
    blocks = _blocks(output_size, *sizes)
    if blocks[0] * blocks[1] != L or min(blocks) < 1:
        raise ValueError(f"Given output_size={output_size}, kernel_size={sizes[0]}, dilation={sizes[1]}, "
                         f"padding={sizes[2]}, stride={sizes[3]}, expected size of {name}'s dimension 2 to match the "
                         f"calculated number of sliding blocks {blocks[0]} * {blocks[1]} = {blocks[0] * blocks[1]}, "
                         f"but got {name}.size(2)={L}.")
    return FoldGeometry(N, rows // taps, *output_size, *sizes, blocks)


def _numpy_unfold(x, g: FoldGeometry):
    (ph, pw), (lh, lw) = g.padding, g.blocks
    padded = np.pad(x.reshape(g.N, g.C, g.H, g.W), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((g.N, g.C, *g.kernel_size, lh, lw), dtype=x.dtype)
    for (i, j), (rows, columns) in g.tap_slices():
        cols[:, :, i, j] = padded[:, :, rows, columns]
    return cols.reshape(g.N, g.C * g.taps, g.L)


def _numpy_fold(cols, g: FoldGeometry):
    (ph, pw), (lh, lw) = g.padding, g.blocks
    padded = np.zeros((g.N, g.C, g.H + 2 * ph, g.W + 2 * pw), dtype=cols.dtype)
    taps = cols.reshape(g.N, g.C, *g.kernel_size, lh, lw)
    for (i, j), (rows, columns) in g.tap_slices():
        padded[:, :, rows, columns] += taps[:, :, i, j]   # tap by tap: each pixel's sum in (i, j) order
    # blocks past the image's far edge (padding plus the stride's remainder) read only padding
    return padded[:, :, ph:ph + g.H, pw:pw + g.W]


def _unfold(x, g, be):
    if be == "numpy":
        return _numpy_unfold(x, g)
    from ..gpu import fold as gpu_fold
    return gpu_fold.unfold(be, _checks.for_kernels(be, x, "x").reshape(g.N, g.C, g.H, g.W), g)


def _fold(cols, g, be):
    if be == "numpy":
        return np.ascontiguousarray(_numpy_fold(cols, g))
    from ..gpu import fold as gpu_fold
    return gpu_fold.fold(be, _checks.for_kernels(be, cols, "cols").reshape(g.N, g.C * g.taps, g.L), g)


def _unfold_call(x, name, kernel_size, dilation, padding, stride, backend):
    _checks.array(x, name)
    g = _unfold_geometry(x.shape, kernel_size, dilation, padding, stride, name)
    be = _backend.resolve(backend, x)
    cols = _unfold(x, g, be)
    return cols.reshape(cols.shape[1:]) if x.ndim == 3 else cols


@takes_float16(kernels=True)
def unfold(x, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """The sliding blocks of x (N, C, H, W) or (C, H, W) as columns (N, C*KH*KW, L) or (C*KH*KW, L)
    (im2col; row c*KH*KW + i*KW + j holds tap (i, j) of every block, zero in the padding)."""
    return _unfold_call(x, "x", kernel_size, dilation, padding, stride, backend)


@takes_float16(kernels=True)
def unfold_backward(dy, x_shape, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """dx (x_shape) of unfold: fold(dy, (H, W), ...), each pixel's gradient summed over the blocks reading it."""
    _checks.array(dy, "dy")
    batch, unbatched = batch_shape(x_shape)
    g = _unfold_geometry(batch, kernel_size, dilation, padding, stride, "x_shape")
    _checks.shape_is(dy, "dy", (g.N,) * (not unbatched) + (g.C * g.taps, g.L), " (unfold's output)")
    be = _backend.resolve(backend, dy)
    return _fold(dy, g, be).reshape(batch[unbatched:])


@takes_float16(kernels=True)
def fold(cols, output_size, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """The image (N, C, H, W) or (C, H, W), (H, W) = output_size, of the columns cols (N, C*KH*KW, L) or
    (C*KH*KW, L) (col2im): each block's taps added at their pixels, overlapping blocks summed (in a
    fixed order: deterministic); pixels no block reads are 0."""
    _checks.array(cols, "cols")
    g = _fold_geometry(cols.shape, output_size, kernel_size, dilation, padding, stride)
    be = _backend.resolve(backend, cols)
    y = _fold(cols, g, be)
    return y.reshape(y.shape[1:]) if cols.ndim == 2 else y


@takes_float16(kernels=True)
def fold_backward(dy, kernel_size, dilation=1, padding=0, stride=1, *, backend=None):
    """dcols of fold: unfold(dy, ...), dy (N, C, H, W) or (C, H, W) the gradient of fold's output."""
    return _unfold_call(dy, "dy", kernel_size, dilation, padding, stride, backend)
