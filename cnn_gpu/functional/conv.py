"""conv2d and conv_transpose2d with their backward passes.

NumPy path (exact and fast; it is both the CPU backend and the kernels' oracle):
- Windows of the padded input are gathered through a strided view into an im2col matrix, one
  (C/groups * R * S, B * P * Q) matrix per group for a block of B images, and contracted with the
  filters in one BLAS GEMM per group. The batch is processed in blocks sized so that this matrix
  stays in the L2 cache (a cache-blocking loop of a few iterations, not a per-image loop): the
  im2col matrix of a whole batch is many times larger than the input and would otherwise be
  written to and read back from memory.
- The input gradient is the seeds' flipped-filter sum dx[h] = sum_r dy[(h + pad - r*dil)/stride] w[r].
  It is evaluated either by gathering (a correlation of dy with the flipped filters; for stride > 1
  one dense correlation per stride phase over the taps that reach that phase, so no zero-inserted
  dy) or by scattering (col2im: one GEMM w^T dy for all taps, each tap's plane added at its
  offset), whichever moves less memory for the channel counts at hand.
- Kernels of at least ROW_GEMM_MIN_HEIGHT rows (stride 1 in height) gather only their width taps,
  (C/groups * S, Hp * B * Q), and run one GEMM per kernel row on a strided view of that matrix:
  R times less copying for one GEMM per row (measured: a win from 5x5 on, a wash at 3x3).
  Outputs narrower than NARROW_OUTPUT gather with the batch innermost, so that the copy runs over
  Q * B contiguous elements instead of Q (twice as fast on 4x4 outputs).
- 1x1 convolutions without stride or padding are plain batched matrix products.
conv_transpose2d's forward pass is the input gradient of its geometry; its backward pass is the
forward convolution and the weight gradient with the roles of x and dy swapped.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backend as _backend
from . import _checks
from .geometry import ConvGeometry, conv_geometry, conv_transpose_geometry

ACTIVATIONS = (None, "relu")

# Bytes of im2col matrix per batch block: about half of a core's L2 cache.
BLOCK_BYTES = 1 << 20
# Kernels at least this tall (with stride 1 in height) use one GEMM per kernel row.
ROW_GEMM_MIN_HEIGHT = 4
# Outputs narrower than this gather with the batch innermost.
NARROW_OUTPUT = 8


# --- NumPy building blocks ----------------------------------------------------------------------

def _padded(a, top, bottom, left, right):
    """(N, C, H, W) zero-padded to (N, C, H + top + bottom, W + left + right); a negative amount crops."""
    N, C, H, W = a.shape
    out_h, out_w = H + top + bottom, W + left + right
    if (top, bottom, left, right) == (0, 0, 0, 0):
        return a
    out = np.zeros((N, C, out_h, out_w), dtype=a.dtype)
    # rows/cols of the source that land inside the output, and where they land
    r0, r1 = max(0, -top), min(H, out_h - top)
    c0, c1 = max(0, -left), min(W, out_w - left)
    if r1 > r0 and c1 > c0:
        out[:, :, r0 + top:r1 + top, c0 + left:c1 + left] = a[:, :, r0:r1, c0:c1]
    return out


def _batch_blocks(n, bytes_per_image):
    """Slices of the batch whose per-block working set is about BLOCK_BYTES."""
    size = max(1, BLOCK_BYTES // max(1, bytes_per_image))
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


# Column orders of the gathered matrices of each strategy, as permutations of a (B, K, P, Q) block.
_COLUMN_ORDER = {"im2col": (1, 0, 2, 3), "batch_last": (1, 2, 3, 0), "rows": (1, 2, 0, 3)}


def _gather_strategy(kernel_h, stride_h, out_w):
    """How a correlation gathers its windows: "rows" (width taps only, one GEMM per kernel row),
    "batch_last" (im2col with the batch innermost: the copy runs over Q*B contiguous elements
    instead of Q, which wins for narrow outputs) or plain "im2col"."""
    if stride_h == 1 and kernel_h >= ROW_GEMM_MIN_HEIGHT:
        return "rows"
    if out_w < NARROW_OUTPUT:
        return "batch_last"
    return "im2col"


def _gather(strategy, xp, groups, kernel, stride, dilation, out_hw):
    """Windows of the padded input block xp (B, C, Hp, Wp) as one matrix per group, columns in the
    strategy's order: (groups, C/groups * R * S, B*P*Q), row (c, r, s) holding
    xp[b, c, p*sh + r*dh, q*sw + s*dw]; for "rows", (groups, C/groups * S, Hp*B*Q), row (c, s)
    holding xp[b, c, h, q*sw + s*dw], so that kernel row r reads the contiguous columns from
    h = r*dh on (see _row_range)."""
    B, C, Hp, _ = xp.shape
    (R, S), (sh, sw), (dh, dw), (P, Q) = kernel, stride, dilation, out_hw
    if strategy == "rows":
        sn, sc, shh, sww = xp.strides
        shape, strides, rows = (C, S, Hp, B, Q), (sc, dw * sww, shh, sn, sw * sww), S
    elif strategy == "batch_last":
        xp = np.ascontiguousarray(xp.transpose(1, 2, 3, 0))   # (C, Hp, Wp, B)
        sc, shh, sww, sn = xp.strides
        shape, strides, rows = (C, R, S, P, Q, B), (sc, dh * shh, dw * sww, sh * shh, sw * sww, sn), R * S
    else:
        sn, sc, shh, sww = xp.strides
        shape, strides, rows = (C, R, S, B, P, Q), (sc, dh * shh, dw * sww, sn, sh * shh, sw * sww), R * S
    windows = as_strided(xp, shape=shape, strides=strides, writeable=False)
    return windows.reshape(groups, (C // groups) * rows, -1)


def _row_range(r, dilation_h, block, out_h, out_w):
    """Columns of a "rows" matrix that kernel row r reads for all outputs of the block."""
    start = r * dilation_h * block * out_w
    return slice(start, start + out_h * block * out_w)


def _to_columns(a, strategy, groups):
    """A (B, C, H, W) block as (groups, C/groups, B*H*W) with columns in the strategy's order."""
    B, C, H, W = a.shape
    return np.ascontiguousarray(a.transpose(_COLUMN_ORDER[strategy])).reshape(groups, C // groups, B * H * W)


def _from_columns(m, strategy, block_shape):
    """The inverse of _to_columns: a (B, K, P, Q) view of a matrix with columns in that order."""
    order = _COLUMN_ORDER[strategy]
    return m.reshape([block_shape[i] for i in order]).transpose(np.argsort(order))


def _gather_bytes(strategy, C, kernel, padded_h, out_hw, itemsize):
    """Bytes of one image's gathered matrix."""
    (R, S), (P, Q) = kernel, out_hw
    if strategy == "rows":
        return C * S * padded_h * Q * itemsize
    return C * R * S * P * Q * itemsize


def _correlate(xp, w, groups, stride, dilation, out_hw, bias=None):
    """Cross-correlation of the padded input xp (N, C, Hp, Wp) with w (K, C/groups, R, S), plus an
    optional per-channel bias: y (N, K, P, Q)."""
    K, Cg, R, S = w.shape
    N, C, Hp, _ = xp.shape
    P, Q = out_hw
    y = np.empty((N, K, P, Q), dtype=xp.dtype)
    strategy = _gather_strategy(R, stride[0], Q)
    if strategy == "rows":
        w_rows = [w[:, :, r].reshape(groups, K // groups, Cg * S) for r in range(R)]
    else:
        w_mat = w.reshape(groups, K // groups, Cg * R * S)
    for block in _batch_blocks(N, _gather_bytes(strategy, C, (R, S), Hp, out_hw, xp.itemsize)):
        B = len(range(N)[block])
        cols = _gather(strategy, xp[block], groups, (R, S), stride, dilation, out_hw)
        if strategy == "rows":
            y_cols = np.matmul(w_rows[0], cols[:, :, _row_range(0, dilation[0], B, P, Q)])
            part = np.empty_like(y_cols)
            for r in range(1, R):
                y_cols += np.matmul(w_rows[r], cols[:, :, _row_range(r, dilation[0], B, P, Q)], out=part)
        else:
            y_cols = np.matmul(w_mat, cols)
        y_block = _from_columns(y_cols, strategy, (B, K, P, Q))
        if bias is None:
            y[block] = y_block
        else:
            np.add(y_block, bias[:, None, None], out=y[block])
    return y


def _is_pointwise(g: ConvGeometry) -> bool:
    """A 1x1 convolution without stride or padding: a plain (batched) matrix product."""
    return g.R == g.S == 1 and g.stride == (1, 1) and g.padding == (0, 0)


def _pointwise_operands(a, groups):
    """(N, C, H, W) viewed as (N, groups, C/groups, H*W) without a copy."""
    N, C, H, W = a.shape
    return a.reshape(N, groups, C // groups, H * W)


def _forward(x, w, bias, g: ConvGeometry):
    """y (N, K, P, Q) of the convolution g."""
    G = g.groups
    if _is_pointwise(g):
        y = np.matmul(w.reshape(G, g.K // G, g.C // G), _pointwise_operands(x, G)).reshape(g.y_shape)
        if bias is not None:
            y += bias[:, None, None]
        return y
    (ph, pw) = g.padding
    return _correlate(_padded(x, ph, ph, pw, pw), w, G, g.stride, g.dilation, (g.P, g.Q), bias)


def _input_grad(dy, w, g: ConvGeometry):
    """dx (N, C, H, W) of the convolution g from dy (N, K, P, Q), by whichever evaluation of the
    seeds' flipped-filter sum moves less memory."""
    G = g.groups
    if _is_pointwise(g):
        w_t = w.reshape(G, g.K // G, g.C // G).transpose(0, 2, 1)
        return np.matmul(w_t, _pointwise_operands(dy, G)).reshape(g.x_shape)
    # gathering copies the dy window of every tap (K channels at each dx pixel); scattering
    # writes, re-reads and adds one product per tap (C channels at each dy pixel), which costs
    # about three times as much per element (measured)
    gather = g.K * g.H * g.W / (g.stride[0] * g.stride[1])
    scatter = 3 * g.C * g.P * g.Q
    if scatter < gather:
        return _input_grad_scatter(dy, w, g)
    return _input_grad_gather(dy, w, g)


def _phase_taps(phase, pad, dil, stride, taps):
    """Taps of one spatial axis reaching output rows h = phase + stride*i of the input gradient.

    Row h receives dy[(h + pad - r*dil) / stride] * w[r] for the taps r that divide evenly. Returns
    (taps in flipped order, first dy offset, dilation of the dense correlation over those taps)."""
    reaching = [r for r in range(taps) if (phase + pad - r * dil) % stride == 0]
    flipped = reaching[::-1]
    if not flipped:
        return flipped, 0, 1
    first_offset = (phase + pad - flipped[0] * dil) // stride
    step = dil // math.gcd(stride, dil)
    return flipped, first_offset, step


def _input_grad_gather(dy, w, g: ConvGeometry):
    """The seeds' correlation of dy with the flipped filters, gathered one stride phase at a time:
    each phase of dx is a dense stride-1 correlation of dy with the taps that reach it."""
    K, Cg, R, S = w.shape
    G, N, C, H, W = g.groups, g.N, g.C, g.H, g.W
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    # The correlation runs from dy (K channels) to dx (C channels) with filter (C, K/groups, R, S).
    w_t = w.reshape(G, K // G, Cg, R, S).transpose(0, 2, 1, 3, 4).reshape(C, K // G, R, S)
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    for a in range(min(sh, H)):
        rows_r, first_h, step_h = _phase_taps(a, ph, dh, sh, R)
        out_h = len(range(a, H, sh))
        for b in range(min(sw, W)):
            rows_s, first_w, step_w = _phase_taps(b, pw, dw, sw, S)
            out_w = len(range(b, W, sw))
            target = dx[:, :, a::sh, b::sw]
            if not rows_r or not rows_s:
                target[...] = 0  # no tap reaches this phase (kernel smaller than the stride)
                continue
            sub = w_t[:, :, rows_r][:, :, :, rows_s]
            need_h = out_h + (len(rows_r) - 1) * step_h
            need_w = out_w + (len(rows_s) - 1) * step_w
            dyp = _padded(dy, -first_h, need_h + first_h - g.P, -first_w, need_w + first_w - g.Q)
            target[...] = _correlate(dyp, sub, G, (1, 1), (step_h, step_w), (out_h, out_w))
    return dx


def _input_grad_scatter(dy, w, g: ConvGeometry):
    """The same sum taken tap by tap: for each tap (r, s), the product w[:, :, r, s]^T dy (one GEMM
    for all taps) is added to dx shifted by that tap's offset (col2im)."""
    K, Cg, R, S = w.shape
    G, N, C, H, W, P, Q = g.groups, g.N, g.C, g.H, g.W, g.P, g.Q
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    w_t = w.reshape(G, K // G, Cg * R * S).transpose(0, 2, 1)
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    for block in _batch_blocks(N, C * R * S * P * Q * dy.itemsize):
        products = np.matmul(w_t, _to_columns(dy[block], "im2col", G)).reshape(C, R, S, -1, P, Q)
        dxp = np.zeros((C, products.shape[3], H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
        for r in range(R):
            for s in range(S):
                dxp[:, :, r * dh:r * dh + (P - 1) * sh + 1:sh, s * dw:s * dw + (Q - 1) * sw + 1:sw] += products[:, r, s]
        dx[block] = dxp[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3)
    return dx


def _weight_grad(dy, x, g: ConvGeometry):
    """dw (K, C/groups, R, S) = sum over n, p, q of dy times the window of x each tap saw (seeds)."""
    G = g.groups
    if _is_pointwise(g):
        per_image = np.matmul(_pointwise_operands(dy, G), _pointwise_operands(x, G).transpose(0, 1, 3, 2))
        return per_image.sum(axis=0).reshape(g.w_shape)
    (ph, pw) = g.padding
    xp = _padded(x, ph, ph, pw, pw)
    Cg, Kg, R, S, P, Q = g.C // G, g.K // G, g.R, g.S, g.P, g.Q
    strategy = _gather_strategy(R, g.stride[0], Q)
    taps = R if strategy == "rows" else 1   # row GEMMs: one weight row per kernel row
    # accumulated transposed, cols @ dy^T: OpenBLAS runs this orientation up to twice as fast when
    # there are few output channels
    dw_t = np.zeros((taps, G, Cg * (R * S // taps), Kg), dtype=x.dtype)
    for block in _batch_blocks(g.N, _gather_bytes(strategy, g.C, (R, S), xp.shape[2], (P, Q), x.itemsize)):
        B = len(range(g.N)[block])
        cols = _gather(strategy, xp[block], G, (R, S), g.stride, g.dilation, (P, Q))
        dy_cols = _to_columns(dy[block], strategy, G).transpose(0, 2, 1)
        if strategy == "rows":
            for r in range(R):
                dw_t[r] += np.matmul(cols[:, :, _row_range(r, g.dilation[0], B, P, Q)], dy_cols)
        else:
            dw_t[0] += np.matmul(cols, dy_cols)
    if strategy == "rows":
        dw = dw_t.reshape(R, G, Cg, S, Kg).transpose(1, 4, 2, 0, 3)
    else:
        dw = dw_t[0].transpose(0, 2, 1)
    return np.ascontiguousarray(dw).reshape(g.w_shape)


def _bias_grad(dy):
    return dy.sum(axis=(0, 2, 3))


# --- public ops ---------------------------------------------------------------------------------

def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None, backend=None):
    """2-D cross-correlation as torch.nn.functional.conv2d: x (N, C, H, W), weight
    (K, C/groups, R, S), optional bias (K,) -> y (N, K, P, Q).

    Extension: activation="relu" applies ReLU to the output (fused into the kernel on GPU)."""
    _checks.array(x, "x", ndim=4)
    _checks.array(weight, "weight", ndim=4)
    _checks.same_dtype("x", x, weight=weight)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _checks.bias(bias, g.K, weight)
    _check_activation(activation)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = _forward(x, weight, bias, g)
        if activation == "relu":
            np.maximum(y, 0, out=y)
        return y
    from ..gpu import conv as gpu_conv
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    return gpu_conv.fprop(be, x, weight, bias, g, activation=activation)


def _check_dy(dy, x, weight, expected_shape):
    _checks.array(dy, "dy", ndim=4)
    _checks.same_dtype("x", x, weight=weight, dy=dy)
    _checks.shape_is(dy, "dy", expected_shape, " (the shape of the op's output)")


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True, *, backend=None):
    """Gradients of conv2d: (dx, dweight, dbias); dbias is None when bias=False."""
    _checks.array(x, "x", ndim=4)
    _checks.array(weight, "weight", ndim=4)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _check_dy(dy, x, weight, g.y_shape)
    bias = _checks.flag(bias, "bias")
    be = _backend.resolve(backend, dy, x, weight)
    if be == "numpy":
        return _input_grad(dy, weight, g), _weight_grad(dy, x, g), (_bias_grad(dy) if bias else None)
    from ..gpu import conv as gpu_conv
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    dx = gpu_conv.dgrad(be, dy, weight, g)
    dw = gpu_conv.wgrad(be, dy, x, g)
    return dx, dw, (gpu_conv.bgrad(be, dy) if bias else None)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1, *,
                     backend=None):
    """Transposed convolution as torch.nn.functional.conv_transpose2d: x (N, Cin, Hin, Win), weight
    (Cin, Cout/groups, kH, kW), optional bias (Cout,) -> y (N, Cout, Hout, Wout). It is the input
    gradient of the convolution described by its geometry (the seeds' "expanding" convolution)."""
    _checks.array(x, "x", ndim=4)
    _checks.array(weight, "weight", ndim=4)
    _checks.same_dtype("x", x, weight=weight)
    g = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    _checks.bias(bias, g.C, weight)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = _input_grad(x, weight, g)
        if bias is not None:
            y += bias[:, None, None]
        return y
    from ..gpu import conv as gpu_conv
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    y = gpu_conv.dgrad(be, x, weight, g)
    if bias is not None:
        from ..gpu import elementwise
        elementwise.bias_add(be, y, bias)
    return y


def conv_transpose2d_backward(dy, x, weight, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                              bias=True, *, backend=None):
    """Gradients of conv_transpose2d: (dx, dweight, dbias); dbias is None when bias=False."""
    _checks.array(x, "x", ndim=4)
    _checks.array(weight, "weight", ndim=4)
    g = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    _check_dy(dy, x, weight, g.x_shape)
    bias = _checks.flag(bias, "bias")
    be = _backend.resolve(backend, dy, x, weight)
    # The roles of the underlying convolution swap: dy is its input, x its output gradient.
    if be == "numpy":
        return _forward(dy, weight, None, g), _weight_grad(x, dy, g), (_bias_grad(dy) if bias else None)
    from ..gpu import conv as gpu_conv
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    dx = gpu_conv.fprop(be, dy, weight, None, g)
    dw = gpu_conv.wgrad(be, x, dy, g)
    return dx, dw, (gpu_conv.bgrad(be, dy) if bias else None)
