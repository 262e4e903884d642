"""conv2d and conv_transpose2d with their backward passes.

NumPy path (exact and fast; it is both the CPU backend and the kernels' oracle):
- Windows of the padded input are gathered through a strided view into an im2col matrix, one per
  group for a block of B images, and contracted with the filters in one BLAS GEMM per group. The
  batch is processed in blocks sized so that this matrix stays in the L2 cache (the im2col matrix
  of a whole batch is many times larger than the input and would otherwise be written to and read
  back from memory), into per-thread scratch buffers that are reused (fresh memory costs a page
  fault per 4 KiB).
- The blocks run on a thread pool as large as BLAS's thread count, with BLAS single-threaded
  inside: the copies then use every core too, and BLAS's own threads gained little on the
  per-block GEMMs. Each block writes its own output slice; weight-gradient partial sums are added
  in block order, and blocks depend on the shapes only, so results are the same bits every run.
- The copy is fastest where it moves long contiguous runs, which picks the gather
  (_gather_strategy): channels-last, (B*P*Q, R*S*C/groups) with runs of S*C elements,
  for many channels; channels-first (C*R*S, B*P*Q), runs of an output row (Q elements), for few
  channels; with the batch innermost, runs of Q*B, for outputs narrower than NARROW_OUTPUT.
  Kernels of at least ROW_GEMM_MIN_HEIGHT rows (stride 1 in height) gather only their width taps,
  (C/groups * S, Hp * B * Q), and run one GEMM per kernel row on a strided view of that matrix:
  R times less copying for one GEMM per row (measured: a win from 5x5 on, a wash at 3x3).
- The input gradient is the seeds' flipped-filter sum dx[h] = sum_r dy[(h + pad - r*dil)/stride] w[r].
  It is evaluated either by gathering (a correlation of dy with the flipped filters; for stride > 1
  one dense correlation per stride phase over the taps that reach that phase, so no zero-inserted
  dy) or by scattering (col2im: one GEMM w^T dy for all taps, each tap's plane added at its
  offset), whichever moves less memory for the channel counts at hand.
- 1x1 convolutions without stride or padding are plain batched matrix products.
conv_transpose2d's forward pass is the input gradient of its geometry; its backward pass is the
forward convolution and the weight gradient with the roles of x and dy swapped.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backend as _backend, precision
from ..gpu import conv as gpu_conv, conv_tc, elementwise   # (at import: an import statement in a pass costs 0.5 us)
from . import _checks
from ._float16 import takes_float16
from .activation import relu_in_place
from .geometry import ConvGeometry, as_batch, conv_geometry, conv_transpose_geometry

ACTIVATIONS = (None, "relu")

# Bytes of im2col matrix per batch block: about a core's L2 cache (2 MiB here).
BLOCK_BYTES = 2 << 20
# A batch that takes several blocks is cut into a multiple of this many, so 2 or 4 threads get
# equal shares.
BLOCK_COUNT_MULTIPLE = 4
# Kernels at least this tall (with stride 1 in height) use one GEMM per kernel row.
ROW_GEMM_MIN_HEIGHT = 4
# Outputs narrower than this gather channels-first with the batch innermost.
NARROW_OUTPUT = 8
# The channels-last gather is used where its contiguous runs are this many times longer, and
# there are at least this many channels per group (with fewer, transposing the input to channels
# last and the output back costs more than the copy saves: 1.8x slower on a 3-channel 7x7 stem).
CHANNELS_LAST_RUN_RATIO = 1
CHANNELS_LAST_MIN_CHANNELS = 16


# --- batch blocks on threads ----------------------------------------------------------------------

_blas = None        # threadpoolctl's handle on NumPy's BLAS, made on first use
_pool = None        # (process id, threads, ThreadPoolExecutor) running the batch blocks
_pool_lock = threading.Lock()


def blas_threads():
    """The number of threads NumPy's BLAS may use now (what the user or threadpoolctl set)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas")
    return max((lib.num_threads for lib in _blas.lib_controllers), default=1)


def _map_blocks(work, blocks):
    """[work(block) for block in blocks], run on as many threads as BLAS may use, each with a
    single-threaded BLAS (NumPy releases the GIL in its copies and products): BLAS's own threads gain
    little on the small per-block GEMMs and leave the gathers on one core. Thread t takes blocks
    t, t + threads, ...; the calling thread is thread 0, so that a call wakes only the others, once.
    Each block's result is computed by one thread whichever it is, so results are reproducible bit
    for bit. While the pool runs, BLAS is limited to one thread process-wide, so concurrent callers
    take turns."""
    global _pool
    threads = min(len(blocks), blas_threads())
    if threads < 2:
        return [work(block) for block in blocks]
    results = [None] * len(blocks)

    def run_share(first):
        for i in range(first, len(blocks), threads):
            results[i] = work(blocks[i])

    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), threads):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown()
            # a forked child has none of its parent's pool threads: it makes its own
            _pool = (os.getpid(), threads, ThreadPoolExecutor(threads - 1, thread_name_prefix="cnn_gpu_conv"))
        with _blas.limit(limits=1):
            shares = [_pool[2].submit(run_share, first) for first in range(1, threads)]
            try:
                run_share(0)
            finally:
                wait(shares)   # all threads are done before BLAS gets its threads back
            for share in shares:
                share.result()   # re-raises a worker's exception
    return results


_scratch = threading.local()
# Scratch arrays up to this size are kept for reuse; larger ones (whole-image matrices of big
# images, larger than a batch block) are allocated each time rather than held on to.
SCRATCH_KEEP_BYTES = 2 * BLOCK_BYTES


def _scratch_array(slot, shape, dtype):
    """An uninitialized array for temporary use within one block of work, reusing this thread's
    memory of the previous request for the same slot: fresh memory costs a page fault per 4 KiB,
    which made the gathers 3-4 times slower (measured)."""
    size, dtype = math.prod(shape), np.dtype(dtype)
    if size * dtype.itemsize > SCRATCH_KEEP_BYTES:
        return np.empty(shape, dtype)
    buffers = _scratch.__dict__
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.size < size:
        buffer = buffers[(slot, dtype)] = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


def _sum_in_order(parts):
    """The sum of the blocks' partial results, always added in block order (bitwise reproducible)."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


# --- NumPy building blocks ----------------------------------------------------------------------

def _padded(a, pads, channels_last=False):
    """A block (B, C, H, W) zero-padded by pads = (top, bottom, left, right) (a negative amount
    crops), as (B, C, H', W') or, channels_last, as (B, H', W', C), in scratch memory (the block
    itself where there is nothing to do)."""
    top, bottom, left, right = pads
    B, C, H, W = a.shape
    out_h, out_w = H + top + bottom, W + left + right
    if not channels_last and pads == (0, 0, 0, 0):
        return a
    out = _scratch_array("padded", (B, out_h, out_w, C) if channels_last else (B, C, out_h, out_w), a.dtype)
    out[...] = 0
    inner = out.transpose(0, 3, 1, 2) if channels_last else out
    # rows/cols of the source that land inside the output, and where they land
    r0, r1 = max(0, -top), min(H, out_h - top)
    c0, c1 = max(0, -left), min(W, out_w - left)
    if r1 > r0 and c1 > c0:
        inner[:, :, r0 + top:r1 + top, c0 + left:c1 + left] = a[:, :, r0:r1, c0:c1]
    return out


def _batch_blocks(n, bytes_per_image):
    """Slices of the batch of (nearly) equal sizes whose per-block working set is at most about
    BLOCK_BYTES, their number rounded up to a multiple of BLOCK_COUNT_MULTIPLE where there are
    several. They depend on the shapes only, never on the thread count."""
    count = -(-n // max(1, BLOCK_BYTES // max(1, bytes_per_image)))
    if count > 1:
        count = min(n, -(-count // BLOCK_COUNT_MULTIPLE) * BLOCK_COUNT_MULTIPLE)
    size = -(-n // count)
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


# Column orders of the channels-first strategies' gathered matrices, as permutations of a (B, K, P, Q) block.
_COLUMN_ORDER = {"im2col": (1, 0, 2, 3), "batch_last": (1, 2, 3, 0), "rows": (1, 2, 0, 3)}


def _gather_strategy(kernel, stride, dilation, channels_per_group, out_w):
    """How a correlation gathers its windows, by the length of the contiguous runs its copy moves:
    "rows" (width taps only, one GEMM per kernel row: R times less copying for R GEMMs, a win from
    5x5 on, a wash at 3x3); "channels_last" (im2col of the channels-last input, runs of S*C/groups
    elements) where those runs are longer than the output rows (Q elements) of the channels-first
    "im2col"; "batch_last" (channels-first im2col with the batch innermost, runs of Q*B) for narrow
    outputs. Measured: channels-last wins by 10-30% with 16+ channels, loses on 3."""
    (R, S), (stride_h, stride_w), dilation_w = kernel, stride, dilation[1]
    if stride_h == 1 and R >= ROW_GEMM_MIN_HEIGHT:
        return "rows"
    channels_last_run = channels_per_group * (S if dilation_w == 1 else 1)
    channels_first_run = out_w if stride_w == 1 else 1
    # converting the whole input to channels-last pays only where the im2col matrix is at least
    # as large as the input (not for 1x1 stride-2 shortcuts: 1.7x slower, measured)
    if (channels_per_group >= CHANNELS_LAST_MIN_CHANNELS and R * S >= stride_h * stride_w
            and channels_last_run > channels_first_run * CHANNELS_LAST_RUN_RATIO):
        return "channels_last"
    if out_w < NARROW_OUTPUT:
        return "batch_last"
    return "im2col"


def _gather(strategy, xp, groups, kernel, stride, dilation, out_hw):
    """Windows of the padded input block xp as one matrix per group.

    "channels_last": xp is (B, Hp, Wp, C); (groups, B*P*Q, R*S*C/groups), row (b, p, q) and
    column (r, s, c) holding xp[b, p*sh + r*dh, q*sw + s*dw, c] of the group's channels.
    Otherwise xp is (B, C, Hp, Wp); (groups, C/groups * R * S, B*P*Q), row (c, r, s) holding
    xp[b, c, p*sh + r*dh, q*sw + s*dw] with the columns in the strategy's _COLUMN_ORDER; for "rows",
    (groups, C/groups * S, Hp*B*Q), row (c, s) holding xp[b, c, h, q*sw + s*dw], so that kernel row
    r reads the contiguous columns from h = r*dh on (see _row_range)."""
    (R, S), (sh, sw), (dh, dw), (P, Q) = kernel, stride, dilation, out_hw
    if strategy == "channels_last":
        B, Hp, _, C = xp.shape
        sn, shh, sww, sc = xp.strides
        Cg = C // groups
        shape = (groups, B, P, Q, R, S, Cg)
        strides = (Cg * sc, sn, sh * shh, sw * sww, dh * shh, dw * sww, sc)
        matrix = (groups, B * P * Q, R * S * Cg)
    else:
        B, C, Hp, _ = xp.shape
        Cg = C // groups
        if strategy == "rows":
            sn, sc, shh, sww = xp.strides
            shape, strides, taps = (C, S, Hp, B, Q), (sc, dw * sww, shh, sn, sw * sww), S
        elif strategy == "batch_last":
            block = _scratch_array("block", (C, Hp, xp.shape[3], B), xp.dtype)
            np.copyto(block, xp.transpose(1, 2, 3, 0))
            xp = block
            sc, shh, sww, sn = xp.strides
            shape, strides, taps = (C, R, S, P, Q, B), (sc, dh * shh, dw * sww, sh * shh, sw * sww, sn), R * S
        else:
            sn, sc, shh, sww = xp.strides
            shape, strides, taps = (C, R, S, B, P, Q), (sc, dh * shh, dw * sww, sn, sh * shh, sw * sww), R * S
        matrix = (groups, Cg * taps, -1)
    cols = _scratch_array("cols", shape, xp.dtype)
    np.copyto(cols, as_strided(xp, shape=shape, strides=strides, writeable=False))
    return cols.reshape(matrix)


def _row_range(r, dilation_h, block, out_h, out_w):
    """Columns of a "rows" matrix that kernel row r reads for all outputs of the block."""
    start = r * dilation_h * block * out_w
    return slice(start, start + out_h * block * out_w)


def _to_columns(a, strategy, groups):
    """A (B, C, H, W) block as (groups, C/groups, B*H*W) with columns in the strategy's order."""
    B, C, H, W = a.shape
    cols = _scratch_array("dy", (C, B * H * W), a.dtype)
    np.copyto(cols.reshape([a.shape[i] for i in _COLUMN_ORDER[strategy]]), a.transpose(_COLUMN_ORDER[strategy]))
    return cols.reshape(groups, C // groups, B * H * W)


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


def _store(target, y, bias, first_channel):
    """target[...] = y plus the bias of its channels (from first_channel on), in one pass."""
    if bias is None:
        target[...] = y
    else:
        np.add(y, bias[first_channel:first_channel + y.shape[1], None, None], out=target)


def _correlate(x, pads, w, groups, stride, dilation, out, bias=None):
    """Cross-correlation of x (N, C, H, W), zero-padded by pads = (top, bottom, left, right), with
    w (K, C/groups, R, S), plus an optional per-channel bias, written into out (N, K, P, Q) (any
    strided view)."""
    K, Cg, R, S = w.shape
    N, C = x.shape[:2]
    P, Q = out.shape[2:]
    Kg = K // groups
    strategy = _gather_strategy((R, S), stride, dilation, Cg, Q)
    padded_h = x.shape[2] + pads[0] + pads[1]
    if strategy == "channels_last":
        w_mat = np.ascontiguousarray(w.reshape(groups, Kg, Cg, R, S).transpose(0, 3, 4, 2, 1))
        w_mat = w_mat.reshape(groups, R * S * Cg, Kg)
    elif strategy == "rows":
        w_rows = [w[:, :, r].reshape(groups, Kg, Cg * S) for r in range(R)]
    else:
        w_mat = w.reshape(groups, Kg, Cg * R * S)

    def block_work(block):
        B = len(range(N)[block])
        xp = _padded(x[block], pads, channels_last=strategy == "channels_last")
        cols = _gather(strategy, xp, groups, (R, S), stride, dilation, (P, Q))
        if strategy == "channels_last":
            y_cols = np.matmul(cols, w_mat, out=_scratch_array("y", (groups, B * P * Q, Kg), x.dtype))
            # the groups' (B, K/groups, P, Q) views of the (groups, B, P, Q, K/groups) product
            y_groups = y_cols.reshape(groups, B, P, Q, Kg).transpose(0, 1, 4, 2, 3)
            for gi, channels in enumerate(range(0, K, Kg)):
                _store(out[block, channels:channels + Kg], y_groups[gi], bias, channels)
            return
        y_cols = _scratch_array("y", (groups, Kg, B * P * Q), x.dtype)
        if strategy == "rows":
            np.matmul(w_rows[0], cols[:, :, _row_range(0, dilation[0], B, P, Q)], out=y_cols)
            part = _scratch_array("part", y_cols.shape, x.dtype)
            for r in range(1, R):
                y_cols += np.matmul(w_rows[r], cols[:, :, _row_range(r, dilation[0], B, P, Q)], out=part)
        else:
            np.matmul(w_mat, cols, out=y_cols)
        _store(out[block], _from_columns(y_cols, strategy, (B, K, P, Q)), bias, 0)

    _map_blocks(block_work, _batch_blocks(N, _gather_bytes(strategy, C, (R, S), padded_h, (P, Q), x.itemsize)))
    return out


def _is_pointwise(g: ConvGeometry) -> bool:
    """A 1x1 convolution without stride or padding whose input and output sizes agree: a plain
    (batched) matrix product. A transposed one's output_padding (legal with dilation > 1) makes
    its input (this geometry's x) larger than its output (y) by rows the product does not make."""
    return g.R == g.S == 1 and g.stride == (1, 1) and g.pads == (0, 0, 0, 0) and (g.H, g.W) == (g.P, g.Q)


def _pointwise_operands(a, groups):
    """(N, C, H, W) viewed as (N, groups, C/groups, H*W) without a copy."""
    N, C, H, W = a.shape
    return a.reshape(N, groups, C // groups, H * W)


def _forward(x, w, bias, g: ConvGeometry):
    """y (N, K, P, Q) of the convolution g."""
    G = g.groups
    if _is_pointwise(g):
        # no copy to share out: OpenBLAS's own threads do as well as the pool (measured)
        y = np.matmul(w.reshape(G, g.K // G, g.C // G), _pointwise_operands(x, G)).reshape(g.y_shape)
        if bias is not None:
            y += bias[:, None, None]
        return y
    y = np.empty(g.y_shape, dtype=x.dtype)
    return _correlate(x, g.pads, w, G, g.stride, g.dilation, y, bias)


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
            pads = (-first_h, need_h + first_h - g.P, -first_w, need_w + first_w - g.Q)
            _correlate(dy, pads, sub, G, (1, 1), (step_h, step_w), target)
    return dx


def _input_grad_scatter(dy, w, g: ConvGeometry):
    """The same sum taken tap by tap: for each tap (r, s), the product w[:, :, r, s]^T dy (one GEMM
    for all taps) is added to dx shifted by that tap's offset (col2im)."""
    K, Cg, R, S = w.shape
    G, N, C, H, W, P, Q = g.groups, g.N, g.C, g.H, g.W, g.P, g.Q
    (sh, sw), (dh, dw) = g.stride, g.dilation
    top, bottom, left, right = g.pads
    w_t = w.reshape(G, K // G, Cg * R * S).transpose(0, 2, 1)
    dx = np.empty(g.x_shape, dtype=dy.dtype)

    def block_work(block):
        B = len(range(N)[block])
        products = _scratch_array("y", (G, Cg * R * S, B * P * Q), dy.dtype)
        np.matmul(w_t, _to_columns(dy[block], "im2col", G), out=products)
        products = products.reshape(C, R, S, B, P, Q)
        dxp = _scratch_array("part", (C, B, H + top + bottom, W + left + right), dy.dtype)
        dxp[...] = 0
        for r in range(R):
            for s in range(S):
                dxp[:, :, r * dh:r * dh + (P - 1) * sh + 1:sh, s * dw:s * dw + (Q - 1) * sw + 1:sw] += products[:, r, s]
        dx[block] = dxp[:, :, top:top + H, left:left + W].transpose(1, 0, 2, 3)

    _map_blocks(block_work, _batch_blocks(N, C * R * S * P * Q * dy.itemsize))
    return dx


def _weight_grad(dy, x, g: ConvGeometry):
    """dw (K, C/groups, R, S) = sum over n, p, q of dy times the window of x each tap saw (seeds);
    the batch blocks' partial sums are added in block order."""
    G = g.groups
    Cg, Kg, R, S, P, Q = g.C // G, g.K // G, g.R, g.S, g.P, g.Q
    if _is_pointwise(g):
        per_image = np.matmul(_pointwise_operands(dy, G), _pointwise_operands(x, G).transpose(0, 1, 3, 2))
        return per_image.sum(axis=0).reshape(g.w_shape)
    strategy = _gather_strategy((R, S), g.stride, g.dilation, Cg, Q)

    def block_work(block):
        B = len(range(g.N)[block])
        xp = _padded(x[block], g.pads, channels_last=strategy == "channels_last")
        cols = _gather(strategy, xp, G, (R, S), g.stride, g.dilation, (P, Q))
        if strategy == "channels_last":
            # dy (groups, B*P*Q, K/groups) with rows in the order of the rows of cols
            dy_cols = _scratch_array("dy", (B, P, Q, g.K), dy.dtype)
            np.copyto(dy_cols, dy[block].transpose(0, 2, 3, 1))
            return np.matmul(cols.transpose(0, 2, 1), dy_cols.reshape(-1, G, Kg).transpose(1, 0, 2))
        # computed transposed, cols @ dy^T: OpenBLAS runs this orientation up to twice as fast
        # when there are few output channels
        dy_cols = _to_columns(dy[block], strategy, G).transpose(0, 2, 1)
        if strategy == "rows":
            return np.stack([np.matmul(cols[:, :, _row_range(r, g.dilation[0], B, P, Q)], dy_cols) for r in range(R)])
        return np.matmul(cols, dy_cols)

    blocks = _batch_blocks(g.N, _gather_bytes(strategy, g.C, (R, S), g.H + g.pads[0] + g.pads[1], (P, Q), x.itemsize))
    dw_t = _sum_in_order(_map_blocks(block_work, blocks))
    if strategy == "channels_last":   # (groups, R*S*Cg, Kg)
        dw = dw_t.reshape(G, R, S, Cg, Kg).transpose(0, 4, 3, 1, 2)
    elif strategy == "rows":          # (R, groups, Cg*S, Kg)
        dw = dw_t.reshape(R, G, Cg, S, Kg).transpose(1, 4, 2, 0, 3)
    else:                             # (groups, Cg*R*S, Kg)
        dw = dw_t.transpose(0, 2, 1)
    return np.ascontiguousarray(dw).reshape(g.w_shape)


def _bias_grad(dy):
    return dy.sum(axis=(0, 2, 3))


# --- public ops ---------------------------------------------------------------------------------
# Every op takes a batch (N, C, H, W) or one unbatched image (C, H, W), as PyTorch does: the image
# runs as a batch of one (a view, no copy) and its results come back unbatched.

def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def _check_x_weight(x, weight):
    _checks.array(x, "x", ndim=(3, 4))
    _checks.array(weight, "weight", ndim=4)


def _check_dy(dy, x, weight, expected_shape):
    """dy of x's rank and dtype, of `expected_shape` (a batch's: 4-D, or 5-D for volumes) less its batch
    axis where x is unbatched."""
    _checks.array(dy, "dy", ndim=x.ndim)
    _checks.same_dtype("x", x, weight=weight, dy=dy)
    _checks.shape_is(dy, "dy", expected_shape[len(expected_shape) - x.ndim:], " (the shape of the op's output)")


def _unbatched(result, unbatched: bool):
    """The first array of `result` (an array or a tuple led by one) without its batch axis when the
    input was unbatched."""
    if not unbatched:
        return result
    if isinstance(result, tuple):   # a gradient tuple led by dx, which may be None
        return (None if result[0] is None else result[0][0],) + result[1:]
    return result[0]


def _tf32_operands(*arrays):
    """In the "tf32" math mode, float32 operands rounded to TF32 (the tensor cores' input format),
    so that every backend and pass multiplies the same numbers; unchanged otherwise."""
    round_operand = precision.conv_operands(arrays[0].dtype)
    return arrays if round_operand is None else tuple(_backend.device_call(round_operand, a) for a in arrays)


def _on_tensor_cores(be, a, g) -> bool:
    """Whether a convolution pass runs on the tensor-core kernels, on the emulator or an sm_80+
    GPU: float32 in the "tf32" math mode, and float16 always; depthwise convolutions keep their
    direct kernels."""
    wanted = a.dtype == np.float16 or precision.conv_operands(a.dtype) is not None
    return wanted and not g.is_depthwise and conv_tc.supported(be, a.dtype)


def _simt(pass_fn, operands, bias=None):
    """pass_fn(*operands, bias) on the SIMT kernels: float16 operands (where no FP16 tensor core
    runs the pass: below sm_80, a wgrad filter with R + S > 32) and bias widened to float32 on
    the device, the float32 kernels run, the result rounded to float16 once (FP16 products are
    exact in FP32, so this is the tensor-core result up to the accumulation order); float32
    operands TF32-rounded in the "tf32" math mode, as they are otherwise."""
    if operands[0].dtype != np.float16:
        return pass_fn(*_tf32_operands(*operands), bias)
    wide = [None if a is None else _backend.astype(a, np.float32) for a in (*operands, bias)]
    return _backend.device_call(precision.round_to_float16, pass_fn(*wide))


def _gpu_fprop(be, x, weight, bias, g, activation=None):
    if _on_tensor_cores(be, x, g):
        return conv_tc.fprop(be, x, weight, bias, g, activation=activation)

    def simt_fprop(x, w, b):
        return gpu_conv.fprop(be, x, w, b, g, activation=activation)
    if g.is_depthwise:   # direct kernels with their own float16 build
        return simt_fprop(*_tf32_operands(x, weight), bias)
    return _simt(simt_fprop, (x, weight), bias)


def _gpu_dgrad(be, dy, weight, g, bias=None):
    """dx, plus `bias` per channel (conv_transpose2d's) before a float16 result's one rounding."""
    if _on_tensor_cores(be, dy, g):
        return conv_tc.dgrad(be, dy, weight, g, bias=bias)

    def simt_dgrad(dy, w, b):
        dx = gpu_conv.dgrad(be, dy, w, g)
        if b is not None:
            elementwise.bias_add(be, dx, b)
        return dx
    if g.is_depthwise and (bias is None or dy.dtype != np.float16):   # direct kernels with a float16 build
        return simt_dgrad(*_tf32_operands(dy, weight), bias)
    return _simt(simt_dgrad, (dy, weight), bias)


def _gpu_wgrad(be, dy, x, g):
    if _on_tensor_cores(be, x, g):
        dw = conv_tc.wgrad(be, dy, x, g)
        if dw is not None:
            return dw
    if g.is_depthwise:
        return gpu_conv.wgrad(be, *_tf32_operands(dy, x), g)
    return _simt(lambda dy, x, _: gpu_conv.wgrad(be, dy, x, g), (dy, x))


def _gpu_bgrad(be, dy):
    """dbias: dy summed per channel by reduce.cu, a float16 dy read as it is (FP32 sums rounded once)."""
    return gpu_conv.bgrad(be, dy)


@takes_float16(kernels=True)
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None, backend=None):
    """2-D cross-correlation as torch.nn.functional.conv2d: x (N, C, H, W) or (C, H, W), weight
    (K, C/groups, R, S), optional bias (K,) -> y (N, K, P, Q) or (K, P, Q).

    padding: an int, an (h, w) pair, "valid" (no padding) or "same" (stride 1 only; output as
    large as the input; an even dilated kernel extent pads the odd pixel on the bottom/right).
    Extension: activation="relu" applies ReLU to the output (fused into the kernel on GPU)."""
    _check_x_weight(x, weight)
    _checks.same_dtype("x", x, weight=weight)
    x, unbatched = as_batch(x)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _checks.bias(bias, g.K, weight)
    _check_activation(activation)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = _forward(*_tf32_operands(x, weight), bias, g)
        if activation == "relu":
            relu_in_place(y)
        return _unbatched(y, unbatched)
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    return _unbatched(_gpu_fprop(be, x, weight, bias, g, activation=activation), unbatched)


@takes_float16(kernels=True)
def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True, *, input_grad=True,
                    weight_grad=True, backend=None):
    """Gradients of conv2d: (dx, dweight, dbias); dbias is None when bias=False, dx None when
    input_grad=False (the network's first layer: its input needs no gradient, so its dgrad pass
    is not run, as PyTorch skips it for an input without requires_grad), dweight None when
    weight_grad=False (a frozen weight: no wgrad pass). dy and dx have the rank of x (unbatched
    (C, H, W) or a batch)."""
    _check_x_weight(x, weight)
    g = conv_geometry(as_batch(x)[0].shape, weight.shape, stride, padding, dilation, groups)
    _check_dy(dy, x, weight, g.y_shape)
    (x, unbatched), (dy, _) = as_batch(x), as_batch(dy)
    bias, input_grad, weight_grad = _checks.gradient_flags(bias, input_grad, weight_grad)
    be = _backend.resolve(backend, dy, x, weight)
    if be == "numpy":
        dy_t, x_t, weight_t = _tf32_operands(dy, x, weight)
        dx = _input_grad(dy_t, weight_t, g) if input_grad else None
        dw = _weight_grad(dy_t, x_t, g) if weight_grad else None
        return _unbatched((dx, dw, (_bias_grad(dy) if bias else None)), unbatched)
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    dx = _gpu_dgrad(be, dy, weight, g) if input_grad else None
    dw = _gpu_wgrad(be, dy, x, g) if weight_grad else None
    return _unbatched((dx, dw, (_gpu_bgrad(be, dy) if bias else None)), unbatched)


@takes_float16(kernels=True)
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1, *,
                     backend=None):
    """Transposed convolution as torch.nn.functional.conv_transpose2d: x (N, Cin, Hin, Win) or
    (Cin, Hin, Win), weight (Cin, Cout/groups, kH, kW), optional bias (Cout,) -> y (N, Cout, Hout,
    Wout) or (Cout, Hout, Wout). It is the input gradient of the convolution described by its
    geometry (the seeds' "expanding" convolution)."""
    _check_x_weight(x, weight)
    _checks.same_dtype("x", x, weight=weight)
    x, unbatched = as_batch(x)
    g = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    _checks.bias(bias, g.C, weight)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = _input_grad(*_tf32_operands(x, weight), g)
        if bias is not None:
            y += bias[:, None, None]
        return _unbatched(y, unbatched)
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    return _unbatched(_gpu_dgrad(be, x, weight, g, bias), unbatched)


@takes_float16(kernels=True)
def conv_transpose2d_backward(dy, x, weight, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                              bias=True, *, input_grad=True, weight_grad=True, backend=None):
    """Gradients of conv_transpose2d: (dx, dweight, dbias); dbias is None when bias=False, dx None
    when input_grad=False, dweight None when weight_grad=False (as conv2d_backward). dy and dx
    have the rank of x."""
    _check_x_weight(x, weight)
    g = conv_transpose_geometry(as_batch(x)[0].shape, weight.shape, stride, padding, output_padding, dilation,
                                groups)
    _check_dy(dy, x, weight, g.x_shape)
    (x, unbatched), (dy, _) = as_batch(x), as_batch(dy)
    bias, input_grad, weight_grad = _checks.gradient_flags(bias, input_grad, weight_grad)
    be = _backend.resolve(backend, dy, x, weight)
    # The roles of the underlying convolution swap: dy is its input, x its output gradient.
    if be == "numpy":
        dy_t, x_t, weight_t = _tf32_operands(dy, x, weight)
        dx = _forward(dy_t, weight_t, None, g) if input_grad else None
        dw = _weight_grad(x_t, dy_t, g) if weight_grad else None
        return _unbatched((dx, dw, (_bias_grad(dy) if bias else None)), unbatched)
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    dx = _gpu_fprop(be, dy, weight, None, g) if input_grad else None
    dw = _gpu_wgrad(be, x, dy, g) if weight_grad else None
    return _unbatched((dx, dw, (_gpu_bgrad(be, dy) if bias else None)), unbatched)
