"""Launch code of the tensor-core convolutions (kernels/conv2d_tc.cu) on sm_80 and newer GPUs and
on the emulator: float32 convolutions in the "tf32" math mode (TF32 operands), and float16 ones
(FP16 operands, two per 32-bit operand word); FP32 accumulation, each output rounded once.

A reduction step is 16 operand words: 16 TF32 values, or 32 FP16 values (step_depth). fprop
hands the kernel its filter as tiles of operand words: transposed to the kernel's reduction order
(r, s, c), rounded to TF32 (or paired as FP16), zero-padded to whole block rows and steps and laid
out in mma fragment order by the plan's first launch (conv2d_tc_filter_tiles, from the parts
filter_tile_parts describes), so the kernel converts only the input and loads the filter straight
into registers. Where that reduction is mostly padding (few channels per group: ResNet's stem has
3, 3/16 of each TF32 step), fprop runs over the flattened (r, s, c) reduction instead, padded once
at its end (the _flat kernels; plan_fprop decides). dgrad runs every stride phase of dx as the
stride-1 convolution of dy with that phase's taps of the flipped filter (dgrad_phases; the tiles
of every phase made by one launch the same way), all phases in one launch. wgrad hands the kernel a
table of its output pixels (x window origin, tap mask, dy offset: tables._pixel_table, made once per
geometry), which it copies into shared memory two steps at a time; filters with R + S > 32 (no room in
a mask word) stay on the SIMT kernel.

Every pass chooses among block tiles (TILES: 128 or 64 output channels, and for fprop and dgrad
128 channels by 96 instead of 128 pixels, which fills whole waves where 128 would not), and may
split its reduction (split-K) when its block tiles alone would leave the GPU's last wave of blocks
partly idle: the splits write FP32 partial outputs that one more launch (reduce.split_sum_epilogue)
sums in a fixed order (bit-identical run to run), adding the bias (fprop's, and its ReLU; dgrad's
for conv_transpose2d, which the kernel adds itself without split-K), and rounds once to the pass's
dtype. wgrad's blocks take equal runs of its tiles' steps, so a grid of whole waves of resident
blocks may also cut tiles unevenly (stream-K: BALANCED_KERNEL), leaving no last wave partly
idle; its kernels sum a tile's partials themselves, in the block whose segment of the tile arrives
last, in the same fixed order (that block writes no partial: it adds its own accumulators). The plan_* functions decide for an SM count (the emulator and
the model plan for an H100); `tile=` and `splits=` force them.

The package: plan (the tile picker, fprop's and dgrad's plans), wgrad_plans (wgrad's), tables (the
device-side tables the launches take) and, here, the launchers."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from ... import backend
from ...launch_checks import memory_span
from .. import _arrivals, reduce
from .._grid import i32
from ..conv import _ceil_div, _geometry_args, device_sms
# the planners' names, as this package's
from .plan import (BLOCKS_PER_SM, CLOCKS_PER_BYTE, DGRAD_BLOCKS_PER_SM, FILTER_TILES_KERNEL, FLAT_KERNEL,  # noqa: F401
                   FLAT_MAX, FLAT_TILES, LAUNCH_CLOCKS, MAX_SPLITS, MAX_TAP_BITS, MIN_SPLIT_STEPS, THREADS, TILE_K,
                   TILE_N, TILES, DgradPhases, FilterTilePart, TcTile, dgrad_phases, filter_tile_parts,
                   filter_tile_words, flat_supported, fprop_steps, is_flat, plan_dgrad, plan_fprop, step_depth)
from .tables import _cached_pixel_table, _device_id, _filter_tiles, _phase_table
from .wgrad_plans import (BALANCED_EFFICIENCY, BALANCED_KERNEL, BALANCED_WAVES, CHANNEL_MAJOR_MIN_CRS,  # noqa: F401
                          COLUMN_RUN_BITS, DY_PATHS, FLOAT32_ONLY_KERNELS, GATHER_EFFICIENCY, GATHER_KERNEL,
                          PAIRS_KERNEL, PAIRS_MAX_CRS, RESIDUES_EFFICIENCY, RESIDUES_KERNEL, TAP_ROWS_EFFICIENCY,
                          TAP_ROWS_KERNEL, WGRAD_EFFICIENCY, is_gather, pixel_table_bytes, plan_wgrad, residue_bands,
                          residue_chunks, residues_supported, tap_rows_supported, wgrad_dy_path, wgrad_ranks,
                          wgrad_segments, wgrad_supported, wgrad_tile_steps, wgrad_tiles)

MIN_ARCH = backend.TENSOR_CORE_MIN_ARCH   # mma.sync with TF32 (and m16n8k16 FP16) operands: Ampere on
DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
PARTIALS = np.dtype(np.float32)   # split-K partial outputs (float16 passes too: their sum rounds once)


@functools.lru_cache(maxsize=None)
def _device_arch(device_id: int) -> int:
    """The GPU's compute capability as one number (90 for sm_90, 100 for sm_100)."""
    import cupy
    return backend.device_arch(cupy, device_id)


def supported(be: str, dtype=np.float32) -> bool:
    """Whether `be` runs the tensor-core kernels for `dtype`: the emulator always, a GPU from sm_80
    on. An older one runs the SIMT kernels instead and says so once: on TF32-rounded operands
    (float32), or on operands widened to FP32 with the result rounded to FP16 once (float16)."""
    if be == "emu":
        return True
    if be != "cuda":
        return False
    import cupy
    arch = _device_arch(cupy.cuda.Device().id)
    if arch < MIN_ARCH:
        _warn_no_tensor_cores(arch, np.dtype(dtype).name)
    return arch >= MIN_ARCH


@functools.lru_cache(maxsize=None)
def _warn_no_tensor_cores(arch: int, dtype: str) -> None:
    if dtype == "float16":
        what = ("float16 convolutions: this GPU has no FP16 mma.sync (m16n8k16); they run on the FP32 SIMT kernels "
                "on widened operands, each output rounded to float16 once")
    else:
        what = ("math mode 'tf32': this GPU has no TF32 tensor cores; float32 convolutions run on the SIMT kernels "
                "with TF32-rounded operands")
    warnings.warn(f"sm_{arch}: {what}", RuntimeWarning, stacklevel=4)


def _dy_operand(xp, dy, g, dy_path):
    """(dy as the wgrad kernel reads it, its image and channel strides in elements). The _residues
    kernel's dy starts on 16 bytes (a copy where a view of another array's does not)."""
    pq, npq = g.P * g.Q, g.N * g.P * g.Q
    if dy_path == "residues" and memory_span(dy)[0] % 16:
        dy = backend.device_call(xp.array, dy, copy=True)
    if dy_path != "channel_major":
        return dy, g.K * pq, pq
    lane_pixels = step_depth(dy.dtype) // 4
    rows = _ceil_div(npq, lane_pixels) * lane_pixels
    packed = xp.empty((g.K, rows), dtype=dy.dtype)   # the padding is never read
    backend.device_call(xp.copyto, packed[:, :npq].reshape(g.K, g.N, pq), dy.reshape(g.N, g.K, pq).transpose(1, 0, 2))
    return packed, pq, rows


def _check_dtype(a):
    if a.dtype not in DTYPES:
        raise TypeError(f"the tensor-core kernels take float32 (TF32) or float16 arrays, not {a.dtype}")


def _partials(xp, count, shape):
    """The FP32 workspace of `count` partial outputs of `shape` (split-K), or with count 0 the
    one-element array a kernel that writes none takes in its place."""
    return xp.empty((count,) + tuple(shape) if count else (1,), dtype=PARTIALS)


def fprop(be, x, w, bias, g, activation=None, *, tile=None, splits=None, flat=None):
    """y = conv2d(x, w) + bias (then ReLU when activation == "relu"): TF32 (float32) or FP16
    (float16) products, FP32 sums and epilogue, y rounded once. `tile` (a TILES name), `splits` and
    `flat` force the plan's choices."""
    _check_dtype(x)
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    plan = plan_fprop(g, dtype=x.dtype, tile=tile, splits=splits, sms=device_sms(be), flat=flat)
    xp = backend.array_module(be)
    filter_tiles = _filter_tiles(be, w, g, plan)
    y = xp.empty(g.y_shape, dtype=x.dtype)
    relu = activation == "relu"
    partials = _partials(xp, plan.splits if plan.splits > 1 else 0, g.y_shape)
    epilogue = (bias is not None, relu) if plan.splits == 1 else (0, 0)   # split-K: the sum adds them
    bias_arg = reduce.unread_bias(xp, x.dtype) if bias is None or plan.splits > 1 else bias
    launch = plan.main
    args = (x, filter_tiles, bias_arg, y, partials) + _geometry_args(g) + i32(g.groups, *epilogue, plan.chunk)
    backend.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    if plan.splits == 1:
        return y
    return reduce.split_sum_epilogue(be, partials, y, g.K, g.P * g.Q, bias, relu)


def dgrad(be, dy, w, g, *, bias=None, tile=None, splits=None):
    """dx of conv2d on tensor cores: per stride phase of dx, the convolution of dy with that
    phase's taps of the filter, flipped and transposed (filter tiles made by a launch first).
    `bias` (per channel of dx: conv_transpose2d's) is added to the FP32 sum before its one
    rounding: by the kernel, or with split-K by the summing launch."""
    _check_dtype(dy)
    plan = plan_dgrad(g, dtype=dy.dtype, tile=tile, splits=splits, sms=device_sms(be))
    phases = dgrad_phases(g)
    xp = backend.array_module(be)
    filter_tiles = _filter_tiles(be, w, g, plan)
    phase_table = _phase_table(be, _device_id(be), g, TILES[plan.tile].bm, step_depth(dy.dtype))
    dx = xp.empty(g.x_shape, dtype=dy.dtype)
    split_k = plan.splits > 1
    partials = _partials(xp, plan.splits if split_k else 0, g.x_shape)
    has_bias = bias is not None and not split_k   # split-K: the sum adds it
    bias_arg = bias if has_bias else reduce.unread_bias(xp, dy.dtype)
    args = ((dy, filter_tiles, phase_table, bias_arg, dx, partials)
            + i32(g.N, g.C, g.H, g.W, g.K, g.P, g.Q, *g.stride, *phases.dilation)
            + i32(g.groups, plan.splits, plan.chunk, has_bias))
    launch = plan.main
    backend.launch(be, launch.family, dy.dtype, launch.kernel, launch.grid, launch.block, args)
    if not split_k:
        return dx
    return reduce.split_sum_epilogue(be, partials, dx, g.C, g.H * g.W, bias)


def wgrad(be, dy, x, g, *, tile=None, splits=None, blocks=None, dy_path=None):
    """dweight of conv2d on tensor cores (split-K partials summed in a fixed order by the kernel), or
    None for a filter with R + S > 32 (the SIMT kernel runs it). `tile`, `splits` or `blocks`, and
    `dy_path` (DY_PATHS) force the plan's choices."""
    _check_dtype(x)
    if not wgrad_supported(g):
        return None
    plan = plan_wgrad(g, dtype=x.dtype, tile=tile, splits=splits, blocks=blocks, sms=device_sms(be), dy_path=dy_path)
    xp = backend.array_module(be)
    crs = (g.C // g.groups) * g.R * g.S
    dw = xp.empty(g.w_shape, dtype=x.dtype)
    partials = _partials(xp, plan.splits if plan.splits > 1 else 0, (g.K, crs))
    # per-tile counts of arrived and of written segments (kernels/conv2d_tc.cu wgrad_arrive)
    arrivals = _arrivals.zeroed(be, wgrad_tiles(g, plan.tile, x.dtype, plan.dy_path) if plan.splits > 1 else 1)
    dy, dy_image, dy_channel = _dy_operand(xp, dy, g, plan.dy_path)
    residues = plan.dy_path == "residues"
    pixel_table = _cached_pixel_table(be, _device_id(be), g, dy_image, step_depth(x.dtype), residues)
    reduction = wgrad_tile_steps(g, x.dtype, plan.dy_path) * step_depth(x.dtype) if residues else g.N * g.P * g.Q
    args = ((dy, x, pixel_table, dw, partials, arrivals)   # stride and padding: in the table
            + i32(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, *g.dilation)
            + i32(g.groups, plan.splits, dy_image, dy_channel, reduction))
    launch = plan.main
    _arrivals.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    return dw


def flops(g) -> int:
    """Multiply-adds x 2 of each pass (fprop, dgrad and wgrad do the same number)."""
    return 2 * math.prod(g.y_shape) * (g.C // g.groups) * g.R * g.S
