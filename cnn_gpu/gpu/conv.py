"""Launch code of the convolution kernels (kernels/conv2d_fprop.cu, conv2d_dgrad.cu, conv2d_wgrad.cu,
conv2d_depthwise.cu, conv2d_pad.cu) for the "cuda" and "emu" backends.

`g` is the ConvGeometry of the convolution (for a transposed convolution, that of the convolution
whose input gradient it is). Depthwise geometries (groups == C > 1) run the direct kernels of
conv2d_depthwise.cu, everything else the implicit-GEMM kernels. The plan_* functions make every
launch decision (tile variant, split-K) for a given SM count; the keyword-only `tile` (a TILES
variant) and `splits` arguments, or a `forced(...)` block, override them so that tests reach every
kernel variant with small shapes.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from . import _plan_cache, reduce
from ._grid import Launch, blocks_for, i32, i64

THREADS = 256   # block of the depthwise kernels
BK = 8   # reduction depth of a block tile (kernels' BK)
# What the picker counts resident blocks by: an SM's register file and thread slots (sm_70..sm_90).
SM_REGISTERS = 65536
SM_THREADS = 2048


@dataclass(frozen=True)
class TileSpec:
    """One block-tile variant of the GEMM kernels (kernels/igemm.cuh, IGEMM_LARGE ...): its BM x BN
    edge, its threads, the register cap its __launch_bounds__ sets, and its issue efficiency (the
    sm_90 hot-loop FMA share of the fprop kernel, rounded: the picker's weight for the loop's
    overhead)."""
    bm: int
    bn: int
    threads: int
    registers: int
    efficiency: float

    @property
    def blocks_per_sm(self) -> int:
        """Resident blocks per SM: as many as the registers (at the cap) and thread slots allow."""
        return min(SM_REGISTERS // (self.threads * self.registers), SM_THREADS // self.threads)


# The kernels' tiles per dtype (IGEMM_LARGE ... in kernels/igemm.cuh), the same edges in both: fp32
# tiles give every thread 8 x 8 outputs (64 to 256 threads), fp64 tiles have 256 threads of 8 x 8
# (large) down to 4 x 4 (small) outputs.
TILES = {np.dtype(np.float32): {"large": TileSpec(128, 128, 256, 128, 0.84), "tall": TileSpec(128, 64, 128, 168, 0.83),
                                "wide": TileSpec(64, 128, 128, 168, 0.82), "small": TileSpec(64, 64, 64, 168, 0.81)},
         np.dtype(np.float64): {"large": TileSpec(128, 128, 256, 255, 0.80), "tall": TileSpec(128, 64, 256, 255, 0.71),
                                "wide": TileSpec(64, 128, 256, 255, 0.70), "small": TileSpec(64, 64, 256, 80, 0.59)}}
# dgrad's transposed filter is padded by the tallest tile edge of its dtype (the kernel reads up to
# a tile edge of channels past the last filter row)
FILTER_TAIL = {dtype: max(spec.bm for spec in tiles.values()) for dtype, tiles in TILES.items()}
# SM count the picker plans for when the device cannot be asked (emu, the model): H100 SXM5.
DEFAULT_SMS = 132
# Split-K: each split sums at least MIN_SPLIT_CHUNK reduction rows; at most MAX_SPLITS splits.
MIN_SPLIT_CHUNK = 64
MAX_SPLITS = 256
# Cost of split-K's extra traffic and launch, in FMA issue slots of one SM (H100: 128 fp32 FMA per
# clock per SM against ~15 bytes of DRAM per clock per SM; a launch ~4 us).
SPLIT_SLOTS_PER_BYTE = 8
LAUNCH_SLOTS = 1_000_000
# Filter taps per dimension the GEMM kernels' tap masks hold (kernels/igemm.cuh); with more, the
# gathered operand is first copied with zero borders wide enough that every tap lands inside it.
MASK_TAPS = 16
# depthwise wgrad keeps one partial per thread and tap: cap that workspace (elements)
MAX_PARTIALS = 2**24
MAX_GRID_YZ = 65535
# The kernels index with 32-bit ints; a row index may run one image past the end of a tensor.
INDEX_LIMIT = 2**31
SPATIAL_LIMIT = 2**28

_forced = contextvars.ContextVar("conv_forced", default={})


@contextlib.contextmanager
def forced(*, tile=None, splits=None):
    """Inside the block, the GEMM plans use this tile variant and/or split count (clamped to what
    the problem allows) unless a call passes its own: the tests reach every variant through the
    public ops with small shapes."""
    if tile is not None and tile not in TILES[np.dtype(np.float32)]:
        raise ValueError(f"tile must be one of {', '.join(TILES[np.dtype(np.float32)])} or None, got {tile!r}")
    _check_splits(splits)
    token = _forced.set({"tile": tile, "splits": splits})
    try:
        yield
    finally:
        _forced.reset(token)


_forced_seen = ({}, ())   # the last settings _forced_choices was asked about, and its answer


def _forced_choices() -> tuple:
    """What `forced` sets now, as the plan memo's context (a plan launch asks: each `forced` block
    sets a dict of its own, never changed, so the last one's answer serves while it is current)."""
    global _forced_seen
    settings = _forced.get()
    seen, choices = _forced_seen
    if settings is not seen:
        choices = tuple(sorted(settings.items()))
        _forced_seen = (settings, choices)
    return choices


def device_sms(be) -> int:
    """SMs of the GPU a launch on `be` runs on (cuda: the device's attribute; emu: DEFAULT_SMS)."""
    if be == "cuda":
        return _cuda_device_sms(backend.cupy_or_none().cuda.Device().id)
    return DEFAULT_SMS


@functools.lru_cache(maxsize=None)
def _cuda_device_sms(device_id: int) -> int:
    """Asked once per device: CuPy's `attributes` queries the driver for every attribute it knows."""
    return int(backend.cupy_or_none().cuda.Device(device_id).attributes["MultiProcessorCount"])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_splits(splits) -> None:
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
        raise ValueError(f"splits must be a positive int or None, got {splits!r}")


def _check_index_range(g) -> None:
    # the kernels add tap offsets to pixel origins in 32-bit ints: every padded extent stays below 2^28
    padded = max(g.H + 2 * g.padding[0] + g.dilation[0] * g.R, g.W + 2 * g.padding[1] + g.dilation[1] * g.S,
                 g.P * g.stride[0], g.Q * g.stride[1])
    if padded >= SPATIAL_LIMIT:
        raise ValueError(f"conv2d kernels take spatial sizes below 2^28: input {g.H}x{g.W}, padding {g.padding}, "
                         f"kernel {g.R}x{g.S}, dilation {g.dilation}")
    check_element_counts("conv2d", g)


def check_element_counts(kernels: str, g, limit: int | None = None) -> None:
    """ValueError where x, y or the weight of g has too many elements for the kernels' 32-bit offsets
    (a row index may run one image past the end); limit: INDEX_LIMIT unless given."""
    limit = INDEX_LIMIT if limit is None else limit
    for name, shape in (("x", g.x_shape), ("y", g.y_shape), ("weight", g.w_shape)):
        size = math.prod(shape)
        if size + size // shape[0] >= limit:
            raise ValueError(f"{kernels} kernels use 32-bit indices: {name} of shape {shape} has {size} elements, "
                             f"too many (limit about 2^31); split the batch")


def _check_grid(kernel: str, grid) -> None:
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"{kernel}: grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} blocks in y and z "
                         f"(too many channels or groups)")


def _split(kgemm: int, splits: int) -> tuple[int, int]:
    """(splits, chunk) for `splits` wanted over a kgemm-row reduction: chunk a multiple of BK, no
    split empty."""
    chunk = _ceil_div(_ceil_div(max(kgemm, 1), splits), BK) * BK
    return _ceil_div(max(kgemm, 1), chunk), chunk


def _choose(dtype, M: int, Ngemm: int, batches: int, kgemm: int, output_elements: int, sms, tile, splits,
            max_splits: int, tiles=None):
    """(tile variant, TileSpec, splits, chunk) of an M x Ngemm x kgemm GEMM repeated `batches` times,
    on `tiles` (default TILES: a family whose tiles run other register caps passes its own).

    Unforced choices minimise a wave model: a block of tile t takes bm*bn*chunk / efficiency FMA
    issue slots of its SM's share; the busiest SM runs ceil(blocks / (SMs * blocks_per_sm)) waves
    of blocks_per_sm blocks (resident blocks from the tile's threads and register cap; the partial
    last wave counts whole); split-K adds the traffic of its partials (written and read once, plus
    the output) and a launch."""
    tiles = (TILES if tiles is None else tiles)[np.dtype(dtype)]
    forced_now = _forced.get()
    tile = tile if tile is not None else forced_now.get("tile")
    splits = splits if splits is not None else forced_now.get("splits")
    if tile is not None and tile not in tiles:
        raise ValueError(f"tile must be one of {', '.join(tiles)} or None, got {tile!r}")
    _check_splits(splits)
    sms = DEFAULT_SMS if sms is None else sms
    item = np.dtype(dtype).itemsize
    most = max(1, min(max_splits, MAX_SPLITS, _ceil_div(kgemm, MIN_SPLIT_CHUNK)))
    split_options = [min(splits, max(1, min(max_splits, _ceil_div(kgemm, BK))))] if splits else range(1, most + 1)
    best = None
    for name in ([tile] if tile else tiles):
        spec = tiles[name]
        base_blocks = _ceil_div(M, spec.bm) * _ceil_div(Ngemm, spec.bn) * batches
        for wanted in split_options:
            count, chunk = _split(kgemm, wanted)
            waves = _ceil_div(base_blocks * count, sms * spec.blocks_per_sm)
            cost = waves * spec.blocks_per_sm * spec.bm * spec.bn * chunk / spec.efficiency
            if count > 1:
                cost += (2 * count + 1) * output_elements * item * SPLIT_SLOTS_PER_BYTE / sms + LAUNCH_SLOTS
            if best is None or cost < best[0]:
                best = (cost, name, spec, count, chunk)
    return best[1:]


def _workspace_splits(splits: int, elements: int) -> int:
    """Most splits whose (splits, elements) workspace stays within 32-bit indexing."""
    return max(1, min(splits, (INDEX_LIMIT - 1) // max(elements, 1)))


@functools.lru_cache(maxsize=256)
def _geometry_args(g):
    """g's sizes as the kernels' ints, made once per geometry (four launches a layer a step pass them)."""
    return i32(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride[0], g.stride[1], g.padding[0],
                g.padding[1], g.dilation[0], g.dilation[1])


def _walk_args(*values):
    """The loader walks' constants as kernel ints (made once per geometry, as _geometry_args). One
    that passes 32 bits steps a row past the end of every reduction (a step of BK rows covers it
    whole), so no kernel ever adds it: it is passed wrapped, as the kernel's own int arithmetic
    would hold it."""
    return tuple(np.int32((int(v) + 2**31) % 2**32 - 2**31) for v in values)


@functools.lru_cache(maxsize=256)
def _fprop_walk(g):
    """(walk_s, walk_r, walk_tap, walk_carry_s, walk_carry_r) of conv2d_fprop.cu: BK reduction rows
    (c, r, s) as steps of s, r and the x offset, and the offset carries when s and r wrap."""
    rs, hw, (dh, dw) = g.R * g.S, g.H * g.W, g.dilation
    walk_s, walk_r = BK % g.S, (BK % rs) // g.S
    return _walk_args(walk_s, walk_r, (BK // rs) * hw + walk_r * dh * g.W + walk_s * dw,
                      dh * g.W - g.S * dw, hw - g.R * dh * g.W)


@functools.lru_cache(maxsize=256)
def _wgrad_walk(g):
    """(walk_q, walk_p, walk_dy, walk_x, walk_q_end, walk_p_end, walk_carry_q_x, walk_carry_p_x,
    walk_carry_p_dy) of conv2d_wgrad.cu: BK reduction rows (n, p, q) as steps of q*stride_w,
    p*stride_h and the dy and x offsets, the ends of the first two, and the offset carries when they
    wrap."""
    pq, hw, (sh, sw) = g.P * g.Q, g.H * g.W, g.stride
    step_n, step_p, step_q = BK // pq, (BK % pq) // g.Q, BK % g.Q
    return _walk_args(step_q * sw, step_p * sh, step_n * g.K * pq + step_p * g.Q + step_q,
                      step_n * g.C * hw + step_p * sh * g.W + step_q * sw, g.Q * sw, g.P * sh,
                      sh * g.W - g.Q * sw, g.C * hw - g.P * sh * g.W, g.K * pq - pq)


@dataclass(frozen=True)
class Padding:
    """A zero-bordered copy of a gathered operand, (planes, height, width) with the operand at
    (top, left): kernels/conv2d_pad.cu."""
    top: int
    left: int
    height: int
    width: int


def _pad_launch(planes: int, pad: Padding) -> Launch:
    return Launch("conv2d_pad", "conv2d_pad", (blocks_for(planes * pad.height * pad.width), 1, 1))


def _fprop_padding(g) -> Padding | None:
    """fprop's copy of x for a filter past MASK_TAPS in a dimension, unless no tap can leave x: the
    rows and columns the output reads, x at (top, left)."""
    if max(g.R, g.S) <= MASK_TAPS or not any(g.pads):
        return None
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return Padding(g.padding[0], g.padding[1], (g.P - 1) * sh + (g.R - 1) * dh + 1, (g.Q - 1) * sw + (g.S - 1) * dw + 1)


def _padded_input(g, pad: Padding):
    """The geometry of the same convolution over fprop's padded copy of x."""
    return dataclasses.replace(g, H=pad.height, W=pad.width, padding=(0, 0), padding_extra=(0, 0))


def _phase_extent(size: int, taps: int, stride: int, pad: int, dil: int, outputs: int) -> tuple[int, int]:
    """(rows before 0, rows past outputs - 1) of dy that dgrad's taps reach over all stride phases of
    one dimension (kernels/conv2d_dgrad.cu: phase_taps)."""
    period, before, after = stride // math.gcd(stride, dil), 0, 0
    for phase in range(stride):
        first = (phase - pad) % stride
        r0 = next((r for r in range(min(period, taps)) if r * dil % stride == phase), None)
        if first >= size or r0 is None:
            continue
        pixels, count = _ceil_div(size - first, stride), _ceil_div(taps - r0, period)
        base, step = (first + pad - r0 * dil) // stride, period * dil // stride
        before, after = max(before, (count - 1) * step - base), max(after, pixels - 1 + base - (outputs - 1))
    return before, after


def _dgrad_padding(g) -> Padding | None:
    """dgrad's copy of dy for more than MASK_TAPS taps in a dimension of a stride phase: dy with
    borders that every tap of every phase lands inside."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    if max(_phase_taps(g.R, sh, dh), _phase_taps(g.S, sw, dw)) <= MASK_TAPS:
        return None
    top, bottom = _phase_extent(g.H, g.R, sh, g.padding[0], dh, g.P)
    left, right = _phase_extent(g.W, g.S, sw, g.padding[1], dw, g.Q)
    return Padding(top, left, top + g.P + bottom, left + g.Q + right)


def _padded_output(g, pad: Padding):
    """The geometry dgrad runs on over its padded copy of dy: dy row p sits at p + top, which the
    kernel's phase origins see as stride*top more padding."""
    (sh, sw) = g.stride
    return dataclasses.replace(g, P=pad.height, Q=pad.width,
                               padding=(g.padding[0] + pad.top * sh, g.padding[1] + pad.left * sw))


@dataclass(frozen=True)
class ConvPlan:
    """What a convolution pass launches, decided before any allocation or launch. The launchers
    below run it; the roofline model (cnn_gpu.roofline) reads it without running anything.

    `launches` run in order; `main` is the convolution kernel among them (dgrad runs its filter
    transpose first; with `padded`, a zero-bordered copy of the gathered operand comes first).
    `splits` > 1 means split-K: the main launch writes `splits` partial outputs to a workspace that
    the last launch (reduce.cu) folds in a fixed order (the tensor-core wgrad's kernel folds its
    own: it is the plan's one launch); `chunk` is each split's share of the reduction, a multiple
    of BK (dgrad: computed per stride phase by the kernel; the tensor-core wgrad derives its
    blocks' runs from the grid and has none)."""
    pass_name: str               # "fprop", "dgrad" or "wgrad"
    launches: tuple
    tile: str | None = None      # a TILES variant for the GEMM kernels, None for depthwise
    splits: int = 1
    chunk: int = 0
    main_index: int = 0
    padded: Padding | None = None   # fprop: of x; dgrad: of dy
    dy_path: str | None = None      # tensor-core wgrad: how its kernel reads dy (conv_tc.DY_PATHS)

    @property
    def main(self) -> Launch:
        return self.launches[self.main_index]


@_plan_cache.memoized(_forced_choices)
def plan_fprop(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    _check_index_range(g)
    if g.is_depthwise:
        grid = (_ceil_div(math.prod(g.y_shape), THREADS), 1, 1)
        return ConvPlan("fprop", (Launch("conv2d_depthwise", "conv2d_depthwise_fprop", grid),))
    npq, kg = g.N * g.P * g.Q, g.K // g.groups
    kgemm = (g.C // g.groups) * g.R * g.S
    out = math.prod(g.y_shape)
    variant, spec, splits, chunk = _choose(dtype, kg, npq, g.groups, kgemm, out, sms, tile, splits,
                                           min(_workspace_splits(MAX_SPLITS, out), MAX_GRID_YZ // g.groups))
    grid = (_ceil_div(npq, spec.bn), _ceil_div(kg, spec.bm), g.groups * splits)
    _check_grid("conv2d_fprop", grid)
    padded = _fprop_padding(g)
    if padded:
        _check_index_range(_padded_input(g, padded))
    launches = (() if padded is None else (_pad_launch(g.N * g.C, padded),))
    launches += (Launch("conv2d_fprop", f"conv2d_fprop_{variant}", grid, (spec.threads, 1, 1)),)
    main_index = len(launches) - 1
    if splits > 1:
        launches += (reduce.plan_split_sum_epilogue(out),)
    return ConvPlan("fprop", launches, tile=variant, splits=splits, chunk=chunk, main_index=main_index, padded=padded)


def _phase_taps(taps: int, stride: int, dilation: int) -> int:
    """Most taps of one dimension that reach one stride phase of dgrad."""
    return _ceil_div(taps, stride // math.gcd(stride, dilation))


@_plan_cache.memoized(_forced_choices)
def plan_dgrad(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    _check_index_range(g)
    if g.is_depthwise:
        grid = (_ceil_div(math.prod(g.x_shape), THREADS), 1, 1)
        return ConvPlan("dgrad", (Launch("conv2d_depthwise", "conv2d_depthwise_dgrad", grid),))
    # the grid covers the largest stride phase of the input pixels; blocks past a smaller one exit
    (sh, sw) = g.stride
    phase_pixels = g.N * _ceil_div(g.H, sh) * _ceil_div(g.W, sw)
    cg = g.C // g.groups
    kgemm = (g.K // g.groups) * _phase_taps(g.R, sh, g.dilation[0]) * _phase_taps(g.S, sw, g.dilation[1])
    out = math.prod(g.x_shape)
    batches = g.groups * sh * sw
    variant, spec, splits, chunk = _choose(dtype, cg, phase_pixels, batches, kgemm, out, sms, tile, splits,
                                           min(_workspace_splits(MAX_SPLITS, out), MAX_GRID_YZ // batches))
    grid = (_ceil_div(phase_pixels, spec.bn), _ceil_div(cg, spec.bm), batches * splits)
    _check_grid("conv2d_dgrad", grid)
    padded = _dgrad_padding(g)
    if padded:
        _check_index_range(_padded_output(g, padded))
    launches = (() if padded is None else (_pad_launch(g.N * g.K, padded),))
    launches += (Launch("conv2d_dgrad", "conv2d_dgrad_filter_transpose", (_ceil_div(math.prod(g.w_shape), THREADS), 1, 1)),
                 Launch("conv2d_dgrad", f"conv2d_dgrad_{variant}", grid, (spec.threads, 1, 1)))
    main_index = len(launches) - 1
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, out, 1),)
    return ConvPlan("dgrad", launches, tile=variant, splits=splits, chunk=chunk, main_index=main_index, padded=padded)


@_plan_cache.memoized(_forced_choices)
def plan_wgrad(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    _check_index_range(g)
    _check_splits(splits)
    npq = g.N * g.P * g.Q
    if g.is_depthwise:
        taps = g.K * g.R * g.S
        if taps * THREADS >= INDEX_LIMIT:
            raise ValueError(f"depthwise wgrad: weight of shape {g.w_shape} has too many taps ({taps}) for "
                             f"32-bit indexing of its {THREADS} partial sums per tap")
        if splits is None:
            splits = _forced.get().get("splits") or max(1, min(_ceil_div(npq, THREADS * 256), MAX_SPLITS))
        splits = max(1, min(splits, _ceil_div(npq, THREADS), MAX_PARTIALS // (taps * THREADS), MAX_GRID_YZ))
        launches = (Launch("conv2d_depthwise", "conv2d_depthwise_wgrad", (taps, splits, 1)),
                    reduce.plan_channel_sum(1, taps, splits * THREADS))
        return ConvPlan("wgrad", launches, splits=splits)
    kg, taps = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    out = math.prod(g.w_shape)
    variant, spec, splits, chunk = _choose(dtype, kg, taps, g.groups, npq, out, sms, tile, splits,
                                           min(_workspace_splits(MAX_SPLITS, out), MAX_GRID_YZ // g.groups))
    grid = (_ceil_div(taps, spec.bn), _ceil_div(kg, spec.bm), g.groups * splits)
    _check_grid("conv2d_wgrad", grid)
    launches = (Launch("conv2d_wgrad", f"conv2d_wgrad_{variant}", grid, (spec.threads, 1, 1)),)
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, out, 1),)
    return ConvPlan("wgrad", launches, tile=variant, splits=splits, chunk=chunk)


def _run(be, launch: Launch, dtype, args) -> None:
    backend.launch(be, launch.family, dtype, launch.kernel, launch.grid, launch.block, args,
                   shared_mem=launch.shared_mem)


def _pad(be, launch: Launch, a, pad: Padding):
    """`a` (N, C, H, W) in the zero-bordered array of `pad` (pad.height x pad.width planes)."""
    n, c, h, w = a.shape
    out = backend.array_module(be).empty((n, c, pad.height, pad.width), dtype=a.dtype)
    _run(be, launch, a.dtype, (a, out, *i64(n * c)) + i32(h, w, pad.height, pad.width, pad.top, pad.left))
    return out


def fprop(be, x, w, bias, g, activation=None, *, tile=None, splits=None):
    """y = conv2d(x, w) + bias, then ReLU when activation == "relu"."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    plan = plan_fprop(g, x.dtype, tile=tile, splits=splits, sms=device_sms(be))
    xp = backend.array_module(be)
    y = xp.empty(g.y_shape, dtype=x.dtype)
    relu = activation == "relu"
    bias_arg = reduce.unread_bias(xp, x.dtype) if bias is None else bias
    if g.is_depthwise:
        _run(be, plan.main, x.dtype, (x, w, bias_arg, y) + _geometry_args(g) + i32(bias is not None, relu))
        return y
    if plan.padded:
        x = _pad(be, plan.launches[0], x, plan.padded)
        g = _padded_input(g, plan.padded)
    if plan.splits == 1:
        _run(be, plan.main, x.dtype, (x, w, bias_arg, y) + _geometry_args(g)
             + i32(g.groups, bias is not None, relu, plan.chunk) + _fprop_walk(g))
        return y
    partials = xp.empty((plan.splits,) + tuple(g.y_shape), dtype=x.dtype)
    _run(be, plan.main, x.dtype, (x, w, bias_arg, partials) + _geometry_args(g) + i32(g.groups, 0, 0, plan.chunk)
         + _fprop_walk(g))
    return reduce.split_sum_epilogue(be, partials, y, g.K, g.P * g.Q, bias, relu)


def dgrad(be, dy, w, g, *, tile=None, splits=None):
    """dx of conv2d (also the forward pass of conv_transpose2d, its input passed as dy)."""
    plan = plan_dgrad(g, dy.dtype, tile=tile, splits=splits, sms=device_sms(be))
    xp = backend.array_module(be)
    dx = xp.empty(g.x_shape, dtype=dy.dtype)
    if g.is_depthwise:
        (sh, sw), (dh, dw) = g.stride, g.dilation
        periods = i32(sh // math.gcd(sh, dh), sw // math.gcd(sw, dw))   # stride phase periods
        _run(be, plan.main, dy.dtype, (dy, w, dx) + _geometry_args(g) + periods)
        return dx
    cg, rs = g.C // g.groups, g.R * g.S
    wt = xp.zeros(g.w_shape[0] * cg * rs + FILTER_TAIL[w.dtype], dtype=w.dtype)   # its padding zeroed
    _run(be, plan.launches[plan.main_index - 1], dy.dtype, (w, wt) + i32(g.K, cg, g.R, g.S, *g.stride, *g.dilation))
    if plan.padded:
        dy = _pad(be, plan.launches[0], dy, plan.padded)
        g = _padded_output(g, plan.padded)
    out = dx if plan.splits == 1 else xp.empty((plan.splits,) + tuple(g.x_shape), dtype=dy.dtype)
    _run(be, plan.main, dy.dtype, (dy, wt, out) + _geometry_args(g) + i32(g.groups, plan.splits))
    if plan.splits == 1:
        return dx
    return reduce.channel_sum(be, out, plan.splits, dx.size, 1).reshape(g.x_shape)


def wgrad(be, dy, x, g, *, tile=None, splits=None):
    """dweight of conv2d: split-K partial tiles, then a fixed-order sum over the splits."""
    plan = plan_wgrad(g, x.dtype, tile=tile, splits=splits, sms=device_sms(be))
    xp = backend.array_module(be)
    if g.is_depthwise:
        taps = g.K * g.R * g.S
        # partial sums in the kernel's compute type (FP32 for float16), the result rounded once
        partial = xp.empty((taps, plan.splits * THREADS), dtype=backend.compute_dtype(x.dtype))
        _run(be, plan.main, x.dtype, (dy, x, partial) + _geometry_args(g))
        dw = reduce.channel_sum(be, partial, 1, taps, plan.splits * THREADS).reshape(g.w_shape)
        return backend.astype(dw, x.dtype)
    taps = (g.C // g.groups) * g.R * g.S
    workspace = xp.empty((plan.splits, g.K, taps), dtype=x.dtype)
    _run(be, plan.main, x.dtype, (dy, x, workspace) + _geometry_args(g) + i32(g.groups, plan.splits, plan.chunk)
         + _wgrad_walk(g))
    if plan.splits == 1:
        return workspace.reshape(g.w_shape)
    return reduce.channel_sum(be, workspace, plan.splits, g.K * taps, 1).reshape(g.w_shape)


def bgrad(be, dy):
    """dbias: dy (N, K, P, Q) summed over N, P and Q in a fixed order (a float16 dy in FP32, rounded once)."""
    n, k, p, q = dy.shape
    return reduce.channel_sum(be, dy, n, k, p * q)
