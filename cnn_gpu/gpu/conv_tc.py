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
table of its output pixels (x window origin, tap mask, dy offset: _pixel_table, made once per
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
idle; its kernels sum a tile's partials themselves, in the block that finishes the tile's last
segment, in the same fixed order. The plan_* functions decide for an SM count (the emulator and
the model plan for an H100); `tile=` and `splits=` force them."""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from .. import backend
from . import reduce
from ._grid import Launch, blocks_for, i32
from .conv import (DEFAULT_SMS, INDEX_LIMIT, MAX_GRID_YZ, ConvPlan, _ceil_div, _check_grid, _check_index_range,
                   _check_splits, _geometry_args, device_sms)

TILE_N = 128             # output pixels (fprop, dgrad) or filter columns (wgrad) of a block tile
TILE_K = 16              # operand words of a step (mma_tile.cuh TC_BK)
THREADS = 128            # 4 warps (kernels/mma_tile.cuh)
BLOCKS_PER_SM = 2        # the kernels' __launch_bounds__, but for DGRAD_BLOCKS_PER_SM
MIN_ARCH = backend.TENSOR_CORE_MIN_ARCH   # mma.sync with TF32 (and m16n8k16 FP16) operands: Ampere on
DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
PARTIALS = np.dtype(np.float32)   # split-K partial outputs (float16 passes too: their sum rounds once)
MAX_TAP_BITS = 32        # wgrad's tap masks: R + S bits in one word
# fprop over the flattened (r, s, c) reduction (the _flat kernels): at most FLAT_MAX indices (the
# kernel's shared table, TC_FLAT_MAX) and R + S < 32 (tap bits below the table's past-the-end bit)
FLAT_MAX = 512
FLAT_KERNEL = "conv2d_fprop_tc_flat"
FILTER_TILES_KERNEL = "conv2d_tc_filter_tiles"   # fprop's and dgrad's first launch: their filter tiles
# wgrad's dy where a lane's 4 words of pixels would straddle two images in NCHW (P*Q no multiple of
# 4 words): a channel-major copy of dy (2 x dy's bytes of DRAM traffic) keeps the 16-byte loads, or
# the _gather kernels read dy element by element, at about 0.70 of the vector loop's 0.89 MMA issue
# rate (float32, sm_90 hot loops). wgrad does 2*C/G*R*S FLOPs per dy element, so with H100's TF32
# peak at 148 FLOPs per byte of DRAM bandwidth the copy pays from C/G*R*S = 4 * 148 / (1/0.70 -
# 1/0.89) ~ 1900. float16's gather runs on the 64-channel tile only (the 128-channel one spills) at
# an MMA issue ceiling of 0.41 against the vector loop's 0.93: no such threshold, as the passes where
# the copy costs more are those the gather loop's slowness does not limit (bound by DRAM, or by
# split-K partials), so wgrad_dy_path compares the two (_wgrad_path_clocks).
CHANNEL_MAJOR_MIN_CRS = {np.dtype(np.float32): 1900}
DY_PATHS = ("vector", "pairs", "channel_major", "gather")
GATHER_KERNEL = "conv2d_wgrad_tc_gather"
# the _gather kernels' tiles per dtype and their weights for the picker (sm_90 hot loops' MMA issue
# ceilings: float32 730 and 493 instructions for 128 and 64 HMMAs, float16 621 for 64)
GATHER_EFFICIENCY = {np.dtype(np.float32): {"tc": 0.70, "tc_m64": 0.52}, np.dtype(np.float16): {"tc_m64": 0.41}}
# wgrad's dy where P*Q is a multiple of 2 words but not of 4 (float16's 14x14 layers): the _pairs kernel
# loads a lane's words of a step in two 8-byte vectors, at 0.84-0.87 of the vector loop's 0.89-0.93 MMA
# issue rate (sm_90 hot loops, float32 and float16), 6-7% of the pass's time. The channel-major copy
# costs 2 x 4 bytes (float32) or 2 x 2 bytes (float16) a dy element against 2*C/G*R*S FLOPs: at H100's
# 148 TF32 or 295 FP16 FLOPs per byte, 590 / (C/G*R*S) of the time; it pays from C/G*R*S ~ 9000 on.
# The 64-channel tile's lanes load 8 bytes in any case (its warps take half steps): pairs cost it
# nothing, so it never copies for them.
PAIRS_KERNEL = "conv2d_wgrad_tc_pairs"
PAIRS_MAX_CRS = 9000
# wgrad on a grid whose blocks may meet two tiles (stream-K: _choose_wgrad), 128-channel tiles with dy
# in 16-byte vectors
BALANCED_KERNEL = "conv2d_wgrad_tc_balanced"
# wgrad's x by filter rows (the _rows kernel, on the 64-channel tile with dy in vectors): filters of
# 3 taps a row at column stride and dilation 1, where a lane's 4 words of pixels lie in one output
# row (tap_rows_supported). A filter row (c, r) then reads 6 (TF32) or 10 (FP16) values of x for
# its 12 operand words of a step, not 12 or 24; its weight for the picker is its sm_90 hot loops'
# least MMA issue ceiling, float32 and float16.
TAP_ROWS_KERNEL = "conv2d_wgrad_tc_rows_m64"
TAP_ROWS_EFFICIENCY = 0.69
COLUMN_RUN_BITS = 10   # the tap masks' column bits: 2 + 4 FP16 words of pixels (_tap_masks)
FLOAT32_ONLY_KERNELS = (GATHER_KERNEL,)   # not in the float16 build


@dataclass(frozen=True)
class TcTile:
    """A block-tile variant of the kernels: `bm` output channels by `bn` output pixels (fprop,
    dgrad; wgrad's tiles are bm channels by TILE_N filter columns) per block, the kernel name
    suffix, and its fprop and dgrad mma issue efficiency (the sm_90 hot loop's MMA issue ceiling,
    4 clocks per m16n8k8 TF32 or m16n8k16 FP16, rounded: the picker's weight)."""
    bm: int
    suffix: str
    efficiency: float
    bn: int = TILE_N


# 2 x 2 warps of 64 x 64, 1 x 4 warps of 64 x 32 for layers of 64 or fewer channels (0.78: the
# least of the 64-row fprop and dgrad ceilings, float32 and float16, 0.78-0.83), and for fprop and
# dgrad 2 x 2 warps of 64 x 48 (0.98: 96 HMMAs in 372 and 392 instructions, float32 and float16),
# whose 3/4 as many pixels per block make finer waves: ResNet's 7x7 and 14x14 layers at batch 128
# have 49 x 128 and 196 x 128 pixels, 0.74 of a wave of 128-pixel tiles, 0.99 of 96-pixel ones.
TILES = {"tc": TcTile(128, "", 1.0), "tc_m64": TcTile(64, "_m64", 0.78), "tc_n96": TcTile(128, "_n96", 0.98, 96)}
FLAT_TILES = ("tc", "tc_m64")   # the _flat kernels' tiles
# wgrad's variants of the same two tiles (128 or 64 output channels) and their weights for the
# picker: the least of the sm_90 hot loops' MMA issue ceilings, float32 and float16 (dy in
# registers, x from shared memory)
WGRAD_EFFICIENCY = {"tc": 0.89, "tc_m64": 0.56}
# wgrad's balanced grids (_choose_wgrad): up to this many whole waves of resident blocks, and the
# balanced kernel's weight (the least of its sm_90 hot loops' MMA issue ceilings, float32 and float16:
# the outer loop's registers)
BALANCED_WAVES = 4
BALANCED_EFFICIENCY = 0.86
# Per dtype, the dgrad tiles that fit more resident blocks per SM than BLOCKS_PER_SM: the 64-row
# kernel's float32 build fits 3 (kernels/conv2d_tc.cu TC_DGRAD_M64_BLOCKS: at most 168 registers),
# finer waves of blocks for the picker
DGRAD_BLOCKS_PER_SM = {np.dtype(np.float32): {"tc_m64": 3}}
# Split-K: each split keeps at least MIN_SPLIT_STEPS reduction steps, at most MAX_SPLITS splits.
MIN_SPLIT_STEPS = 8
MAX_SPLITS = 256   # as the SIMT kernels: the stem's wgrad (2 x 1 block tiles over 1.6M pixels) fills 2 waves
# The picker's costs in clocks of one SM: an mma (m16n8k8 TF32 or m16n8k16 FP16) at full rate (an
# H100 SM finishes one per clock), a byte of split-K partials (an H100 SM's share of DRAM: ~14 bytes per clock) and the
# summing launch (~4 us).
CLOCKS_PER_BYTE = 1 / 14
LAUNCH_CLOCKS = 7000


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


def step_depth(dtype) -> int:
    """Reduction indices of one 16-word step: 16 TF32 values (float32) or 32 FP16 ones (float16)."""
    return TILE_K * (2 if np.dtype(dtype) == np.float16 else 1)


def _choose(M: int, Ngemm: int, batches: int, steps: int, output_elements: int, sms, tiles, tile, splits):
    """(tile name, splits, chunk) of an M x Ngemm GEMM repeated `batches` times over
    `steps` reduction steps, each split taking `chunk` of them (one block per tile and split).
    Unforced choices minimise the busiest SM's clocks: whole waves of the tile's resident blocks
    per SM (a partial last wave counts whole; the blocks share the SM's MMA rate, so a wave takes
    blocks_per_sm times a block's bm x bn x chunk steps at the tile's efficiency), plus split-K's
    extra traffic (its partials written and read) and launch. `tiles`: {name: (bm, bn, efficiency,
    blocks_per_sm)} to choose from."""
    _check_splits(splits)
    if tile is not None and tile not in tiles:
        raise ValueError(f"tile must be one of {', '.join(tiles)} or None, got {tile!r}")
    sms = DEFAULT_SMS if sms is None else sms
    most = max(1, min(MAX_SPLITS, _ceil_div(steps, MIN_SPLIT_STEPS),
                      (INDEX_LIMIT - 1) // max(output_elements, 1), MAX_GRID_YZ // batches))
    best = None
    for name in [tile] if tile else tiles:
        bm, bn, efficiency, blocks_per_sm = tiles[name]
        blocks = _ceil_div(M, bm) * _ceil_div(Ngemm, bn) * batches
        for wanted in ([min(splits, steps)] if splits else range(1, most + 1)):
            chunk = _ceil_div(steps, wanted)
            count = _ceil_div(steps, chunk)          # no empty split
            clocks = _clocks(blocks * count, chunk, count, output_elements, sms, bm, efficiency, blocks_per_sm, bn)
            if best is None or clocks < best[0]:
                best = (clocks, name, count, chunk)
    return best[1], best[2], best[3]


def _clocks(blocks, steps, partial_outputs, output_elements, sms, bm, efficiency, blocks_per_sm, bn=TILE_N,
            summing_launch: bool = True) -> float:
    """_choose's cost of `blocks` blocks of a bm x bn tile, the busiest running `steps` steps, and
    `partial_outputs` FP32 partial outputs of output_elements each (1: none), written and read
    back, by a summing launch unless the kernel sums them itself (wgrad)."""
    waves = _ceil_div(blocks, sms * blocks_per_sm)
    clocks = waves * blocks_per_sm * steps * bm * bn * TILE_K / 1024 / efficiency
    if partial_outputs > 1:
        clocks += 2 * partial_outputs * output_elements * 4 * CLOCKS_PER_BYTE / sms
        clocks += LAUNCH_CLOCKS if summing_launch else 0
    return clocks


def _mma_tiles(blocks_per_sm=None, names=tuple(TILES)) -> dict:
    """_choose's tiles `names` of fprop, or of dgrad with its {name: blocks per SM} (BLOCKS_PER_SM
    otherwise)."""
    return {name: (TILES[name].bm, TILES[name].bn, TILES[name].efficiency,
                   (blocks_per_sm or {}).get(name, BLOCKS_PER_SM)) for name in names}


def _check_tiles(words: int) -> None:
    if words >= INDEX_LIMIT:
        raise ValueError(f"conv2d kernels use 32-bit indices: the padded filter tiles have {words} operand words")


def flat_supported(g) -> bool:
    """Whether fprop of `g` can run over the flattened reduction (FLAT_MAX states the limits)."""
    return g.R * g.S * (g.C // g.groups) <= FLAT_MAX and g.R + g.S < MAX_TAP_BITS


def fprop_steps(g, depth: int, flat: bool) -> int:
    """Reduction steps of fprop, `depth` indices each: R*S taps of C/G channels padded to `depth`,
    or (flat) the R*S*C/G indices of the flattened reduction padded once."""
    cg = g.C // g.groups
    return _ceil_div(g.R * g.S * cg, depth) if flat else g.R * g.S * _ceil_div(cg, depth)


def is_flat(plan) -> bool:
    """Whether an fprop plan runs over the flattened reduction."""
    return plan.main.kernel.startswith(FLAT_KERNEL)


def tap_rows_supported(g, dtype) -> bool:
    """Whether wgrad of `g` may read x by filter rows (TAP_ROWS_KERNEL): S = 3 at column stride and
    dilation 1, Q a multiple of a lane's pixels (4 words: each run of them in one output row), and
    the tap masks' bits for the run's 2 + 4 words of x columns past the R filter rows."""
    lane_pixels = step_depth(dtype) // 4
    return (g.S == 3 and g.stride[1] == 1 and g.dilation[1] == 1 and g.Q % lane_pixels == 0
            and g.R + lane_pixels + 2 <= MAX_TAP_BITS)


def is_gather(plan) -> bool:
    """Whether a wgrad plan reads dy element by element (the _gather kernels)."""
    return plan.main.kernel.startswith(GATHER_KERNEL)


@dataclass(frozen=True)
class FilterTilePart:
    """One part of the filter tiles (the A operand of fprop and dgrad: kernels/conv2d_tc.cu
    conv2d_tc_filter_tiles), the tiles of a filter view (G, rows, R', S', channels): fprop's
    (output channels, R, S, input channels), or flat (output channels, 1, 1, the R*S*C/G flattened
    (r, s, c)); a dgrad stride phase's (dx channels, its taps, dy channels). Filter row and column
    of tap (r', s'): first_r + r' * step_r, first_s + s' * step_s. Rows are padded to whole bm-row
    block tiles, a tap's channels to whole steps."""
    offset: int          # first operand word
    rows: int
    padded_rows: int
    taps_h: int
    taps_w: int
    channels: int
    channel_words: int   # operand words of a tap's padded channels
    first_r: int
    step_r: int
    first_s: int
    step_s: int

    def words(self, groups: int) -> int:
        return groups * self.padded_rows * self.taps_h * self.taps_w * self.channel_words

    def table_row(self) -> tuple:
        """The kernel's table row (TC_TILE_TABLE ints): padded rows counted in 64-row blocks."""
        return (self.offset, self.rows, self.padded_rows // 64, self.taps_h, self.taps_w, self.channels,
                self.channel_words, self.first_r, self.step_r, self.first_s, self.step_s)


def _progression(taps) -> tuple:
    """(first, step) of filter indices in arithmetic progression (a dgrad phase's, flipped)."""
    taps = list(taps) or [0]
    return taps[0], (taps[1] - taps[0] if len(taps) > 1 else 0)


@functools.lru_cache(maxsize=256)
def filter_tile_parts(g, pass_name: str, bm: int, depth: int, flat: bool = False) -> tuple:
    """The FilterTileParts of fprop's (one; `flat`: over the flattened reduction) or dgrad's (one
    per stride phase, in phase order) filter tiles for a bm-row tile and steps of `depth` values."""
    kg, cg, words_per_step = g.K // g.groups, g.C // g.groups, TILE_K
    if pass_name == "fprop":
        channels = g.R * g.S * cg if flat else cg
        taps = ((0,),) * 2 if flat else (tuple(range(g.R)), tuple(range(g.S)))
        views = [(kg, taps[0], taps[1], channels)]
    else:
        phases = dgrad_phases(g)
        views = [(cg, rows, cols, kg) for rows, cols in zip(phases.rows, phases.cols)]
    parts, offset = [], 0
    for rows, taps_h, taps_w, channels in views:
        part = FilterTilePart(offset, rows, _ceil_div(rows, bm) * bm, len(taps_h), len(taps_w), channels,
                              _ceil_div(channels, depth) * words_per_step, *_progression(taps_h),
                              *_progression(taps_w))
        parts.append(part)
        offset += part.words(g.groups)
    _check_tiles(offset)
    return tuple(parts)


def filter_tile_words(parts, groups: int) -> int:
    """Operand words of all the filter tiles of `parts`."""
    return parts[-1].offset + parts[-1].words(groups)


def _filter_tiles_launch(g, parts) -> Launch:
    """The launch that makes the filter tiles of `parts` (one thread per word)."""
    return Launch("conv2d_tc", FILTER_TILES_KERNEL, (blocks_for(filter_tile_words(parts, g.groups)), 1, 1))


def plan_fprop(g, *, dtype=np.float32, tile=None, splits=None, sms=None, flat=None) -> ConvPlan:
    """The launches of fprop on geometry `g` for `dtype`: the kernel of the TILES variant `tile`
    (chosen when None), and with split-K the fixed-order sum that also adds the bias and applies
    ReLU. The kernel runs over the flattened reduction when that takes fewer steps and fits
    (flat_supported; few channels per group, e.g. ResNet's stem); `flat` forces either way."""
    _check_index_range(g)
    depth = step_depth(dtype)
    if flat is None:
        flat = (flat_supported(g) and fprop_steps(g, depth, True) < fprop_steps(g, depth, False)
                and tile in (None, *FLAT_TILES))
    elif flat and not flat_supported(g):
        raise ValueError(f"the flattened fprop kernel takes R*S*C/G <= {FLAT_MAX} and R + S < {MAX_TAP_BITS}, not "
                         f"{g.R}x{g.S} over {g.C // g.groups} channels per group")
    elif flat and tile not in (None, *FLAT_TILES):
        raise ValueError(f"the flattened fprop kernel has the tiles {', '.join(FLAT_TILES)}, not {tile!r}")
    kg, npq = g.K // g.groups, g.N * g.P * g.Q
    out = math.prod(g.y_shape)
    tiles = _mma_tiles(names=FLAT_TILES if flat else tuple(TILES))
    name, splits, chunk = _choose(kg, npq, g.groups, fprop_steps(g, depth, flat), out, sms, tiles, tile, splits)
    spec = TILES[name]
    parts = filter_tile_parts(g, "fprop", spec.bm, depth, flat)
    grid = (_ceil_div(npq, spec.bn), _ceil_div(kg, spec.bm), g.groups * splits)
    kernel = (FLAT_KERNEL if flat else "conv2d_fprop_tc") + spec.suffix
    _check_grid(kernel, grid)
    launches = (_filter_tiles_launch(g, parts), Launch("conv2d_tc", kernel, grid, (THREADS, 1, 1)))
    if splits > 1:
        launches += (reduce.plan_split_sum_epilogue(out),)
    return ConvPlan("fprop", launches, tile=name, splits=splits, chunk=chunk, main_index=1)


@dataclass(frozen=True)
class DgradPhases:
    """dx of a convolution as one stride-1 convolution of dy per stride phase of dx.

    Phase (ph, pw) holds the dx pixels (ph + i*stride_h, pw + j*stride_w), out_shape[k] of them per
    image; it convolves dy with the filter taps rows[k] x cols[k] (original indices, flipped order),
    dilation `dilation` and padding pads[k]. A phase no tap reaches has empty taps (its dx is 0)."""
    phases: tuple        # (ph, pw) per phase
    rows: tuple          # filter rows of each phase, in the order the phase's convolution reads them
    cols: tuple
    pads: tuple          # (pad_h, pad_w) per phase
    out_shape: tuple     # (H', W') per phase
    dilation: tuple

    def steps(self, k: int, channels: int, depth: int = TILE_K) -> int:
        """Reduction steps of phase k over `channels` dy channels (per group), `depth` per step."""
        return len(self.rows[k]) * len(self.cols[k]) * _ceil_div(channels, depth)


def _phase_dimension(size, taps, stride, pad, dilation):
    """Per phase of one dimension: (output size, filter taps in read order, padding), and the dilation."""
    period, dilated = stride // math.gcd(stride, dilation), dilation // math.gcd(stride, dilation)
    phases = []
    for phase in range(stride):
        first = next((t for t in range(min(period, taps)) if (phase + pad - t * dilation) % stride == 0), None)
        reach = [] if first is None else list(range(first, taps, period))
        origin = 0 if first is None else (phase + pad - first * dilation) // stride
        phases.append((_ceil_div(size - phase, stride) if phase < size else 0, reach[::-1],
                       (len(reach) - 1) * dilated - origin))
    return phases, dilated


@functools.lru_cache(maxsize=256)
def dgrad_phases(g) -> DgradPhases:
    """The stride phases of dx of geometry `g` as convolutions of dy (cached per geometry)."""
    rows, dil_h = _phase_dimension(g.H, g.R, g.stride[0], g.padding[0], g.dilation[0])
    cols, dil_w = _phase_dimension(g.W, g.S, g.stride[1], g.padding[1], g.dilation[1])
    pairs = [(a, b) for a in range(g.stride[0]) for b in range(g.stride[1])]
    return DgradPhases(tuple(pairs), tuple(tuple(rows[a][1]) for a, _ in pairs), tuple(tuple(cols[b][1]) for _, b in pairs),
                       tuple((rows[a][2], cols[b][2]) for a, b in pairs), tuple((rows[a][0], cols[b][0]) for a, b in pairs),
                       (dil_h, dil_w))


def plan_dgrad(g, *, dtype=np.float32, tile=None, splits=None, sms=None) -> ConvPlan:
    """The launches of dgrad: every stride phase of dx in one launch of the TILES variant `tile`
    (grid.z = phases x splits x G), and with split-K the fixed-order sum of the partial dx."""
    _check_index_range(g)
    phases = dgrad_phases(g)
    depth = step_depth(dtype)
    kg, cg = g.K // g.groups, g.C // g.groups
    pixels = max(g.N * h * w for h, w in phases.out_shape)
    batches = g.groups * len(phases.phases)
    steps = max(1, max(phases.steps(k, kg, depth) for k in range(len(phases.phases))))
    out = math.prod(g.x_shape)
    tiles = _mma_tiles(DGRAD_BLOCKS_PER_SM.get(np.dtype(dtype)))
    name, splits, chunk = _choose(cg, pixels, batches, steps, out, sms, tiles, tile, splits)
    spec = TILES[name]
    parts = filter_tile_parts(g, "dgrad", spec.bm, depth)
    grid = (max(1, _ceil_div(pixels, spec.bn)), _ceil_div(cg, spec.bm), batches * splits)
    _check_grid("conv2d_dgrad_tc", grid)
    launches = (_filter_tiles_launch(g, parts), Launch("conv2d_tc", "conv2d_dgrad_tc" + spec.suffix, grid,
                                                       (THREADS, 1, 1)))
    if splits > 1:
        launches += (reduce.plan_split_sum_epilogue(out),)
    return ConvPlan("dgrad", launches, tile=name, splits=splits, chunk=chunk, main_index=1)


def wgrad_supported(g) -> bool:
    """Whether wgrad of `g` runs on tensor cores: its tap masks hold R + S bits in one word."""
    return g.R + g.S <= MAX_TAP_BITS


def wgrad_tiles(g, tile: str) -> int:
    """wgrad's block tiles with TILES variant `tile`: 128 filter columns by bm output channels, per group."""
    crs = (g.C // g.groups) * g.R * g.S
    return _ceil_div(crs, TILE_N) * _ceil_div(g.K // g.groups, TILES[tile].bm) * g.groups


def wgrad_tile_steps(g, dtype) -> int:
    """The reduction steps of each wgrad tile: the N*P*Q pixels in steps of step_depth(dtype)."""
    return _ceil_div(g.N * g.P * g.Q, step_depth(dtype))


def wgrad_ranks(tiles: int, tile_steps: int, blocks: int) -> int:
    """The most segments (partial outputs) of one tile when `blocks` blocks take equal runs of the
    tiles x tile_steps (tile, step) pairs in order (kernels/conv2d_tc.cu wgrad_mma): `splits` each
    for tiles x splits blocks; otherwise a run's tail, then runs of at least the shortest length."""
    if blocks % tiles == 0:
        return blocks // tiles
    return min(blocks, 1 + _ceil_div(tile_steps - 1, tiles * tile_steps // blocks))


def wgrad_segments(tiles: int, tile_steps: int, blocks: int) -> int:
    """The segments of all tiles together: each block's run of the tiles x tile_steps (tile, step)
    pairs has one per tile it meets (kernels/conv2d_tc.cu wgrad_mma)."""
    work = tiles * tile_steps
    return sum(((b + 1) * work // blocks - 1) // tile_steps - b * work // blocks // tile_steps + 1
               for b in range(blocks))


def _choose_wgrad(g, tile_steps: int, sms, tile, splits, blocks, balanced: bool, weights=None):
    """(clocks, tile name, blocks, ranks) of wgrad: _choose's costs over grids of tiles x splits
    blocks (split-K) and, where `balanced` (BALANCED_KERNEL runs), of BALANCED_WAVES whole waves or
    fewer of resident blocks of the 128-channel tile that share the tiles' steps evenly (stream-K: no
    partly idle last wave, at the price of partial outputs). `splits` or `blocks` force the grid.
    `weights`: {tile name: efficiency} of the kernels that run (default WGRAD_EFFICIENCY)."""
    weights = weights or WGRAD_EFFICIENCY
    _check_splits(splits)
    if splits and blocks:
        raise ValueError("wgrad takes splits= or blocks=, not both")
    if tile is not None and tile not in weights:
        raise ValueError(f"tile must be one of {', '.join(weights)} or None, got {tile!r}")
    sms = DEFAULT_SMS if sms is None else sms
    output_elements = g.K * (g.C // g.groups) * g.R * g.S
    most = max(1, min(MAX_SPLITS, _ceil_div(tile_steps, MIN_SPLIT_STEPS), (INDEX_LIMIT - 1) // output_elements))
    slots = sms * BLOCKS_PER_SM
    best = None
    for name in [tile] if tile else weights:
        tiles = wgrad_tiles(g, name)
        work = tiles * tile_steps
        if blocks is not None and not tiles <= blocks <= work:
            raise ValueError(f"wgrad's blocks must be {tiles} to {work} (its block tiles to their steps), got {blocks}")
        if blocks and blocks % tiles and not (balanced and name == "tc"):
            raise ValueError(f"wgrad's blocks must be a multiple of its {tiles} tiles: only the 128-channel "
                             f"tile with dy in 16-byte vectors has the kernel for blocks that meet two tiles")
        if work * max(blocks or 0, tiles * most, slots * BALANCED_WAVES) >= 2 ** 63:
            raise ValueError("conv2d kernels split wgrad's work in 64-bit arithmetic: too many tiles and pixels")
        if blocks or splits:
            options = [blocks or tiles * min(splits, tile_steps)]
        else:
            options = [tiles * count for count in range(1, most + 1)]
            options += [slots * waves for waves in range(1, BALANCED_WAVES + 1) if balanced and name == "tc"
                        and tiles < slots * waves <= work // MIN_SPLIT_STEPS and (slots * waves) % tiles]
        for count in options:
            ranks = wgrad_ranks(tiles, tile_steps, count)
            if ranks > most and not (blocks or splits):
                continue
            efficiency = weights[name] if count % tiles == 0 else BALANCED_EFFICIENCY
            clocks = _clocks(count, _ceil_div(work, count), ranks, output_elements, sms, TILES[name].bm, efficiency,
                             BLOCKS_PER_SM, summing_launch=False)
            if best is None or clocks < best[0]:
                best = (clocks, name, count, ranks)
    return best


def plan_wgrad(g, *, dtype=np.float32, tile=None, splits=None, blocks=None, sms=None, dy_path=None) -> ConvPlan:
    """The launches of wgrad: the kernel of the TILES variant `tile` (chosen when None) on a grid
    of `blocks` blocks that share the tiles' steps of N*P*Q pixels in equal runs (_choose_wgrad:
    `splits` per tile, or balanced over the SMs); where a tile has more than one segment, the block
    that finishes its last one sums its partial filters in a fixed order. The _pairs or _gather
    kernel where dy is read in 8-byte vectors or element by element (`dy_path`, wgrad_dy_path when
    None). The plan's `splits` are the partial outputs (its `chunk` is unused: the kernel derives
    each block's run from the grid)."""
    _check_index_range(g)
    if not wgrad_supported(g):
        raise ValueError(f"the tensor-core wgrad kernel takes filters with R + S <= {MAX_TAP_BITS}, not {g.R}x{g.S}")
    if dy_path not in (None, *DY_PATHS):
        raise ValueError(f"dy_path must be one of {', '.join(DY_PATHS)} or None, got {dy_path!r}")
    if dy_path == "gather" and tile is not None and tile not in GATHER_EFFICIENCY[np.dtype(dtype)]:
        raise ValueError(f"the {np.dtype(dtype)} _gather kernel has the tiles "
                         f"{', '.join(GATHER_EFFICIENCY[np.dtype(dtype)])}, not {tile!r}")
    if pixel_table_bytes(g, dtype) // 4 >= INDEX_LIMIT:
        raise ValueError(f"conv2d kernels use 32-bit indices: wgrad's pixel table of {g.N * g.P * g.Q} output pixels "
                         f"(3 entries each) is too large; split the batch")
    tile_steps = wgrad_tile_steps(g, dtype)
    dy_path = dy_path or wgrad_dy_path(g, dtype, sms, tile, blocks)
    balanced = dy_path in ("vector", "channel_major")
    weights = GATHER_EFFICIENCY[np.dtype(dtype)] if dy_path == "gather" else _wgrad_weights(g, dtype)
    _, name, blocks, ranks = _choose_wgrad(g, tile_steps, sms, tile, splits, blocks, balanced, weights)
    if blocks % wgrad_tiles(g, name):
        kernel = BALANCED_KERNEL
    else:
        # the 64-channel tile's warps take half steps, 8 bytes of dy a lane: its vector kernel takes pairs too
        kernels = {"gather": GATHER_KERNEL, "pairs": PAIRS_KERNEL if TILES[name].bm == TILE_N else "conv2d_wgrad_tc"}
        kernel = kernels.get(dy_path, "conv2d_wgrad_tc") + TILES[name].suffix
        if kernel == "conv2d_wgrad_tc_m64" and tap_rows_supported(g, dtype):
            kernel = TAP_ROWS_KERNEL
    return ConvPlan("wgrad", (Launch("conv2d_tc", kernel, (blocks, 1, 1), (THREADS, 1, 1)),), tile=name, splits=ranks,
                    dy_path=dy_path)


def _wgrad_weights(g, dtype) -> dict:
    """The picker's weights of wgrad's tiles with dy in vectors or pairs (the _rows kernel's on the
    64-channel tile where it runs)."""
    return {**WGRAD_EFFICIENCY, "tc_m64": TAP_ROWS_EFFICIENCY} if tap_rows_supported(g, dtype) else WGRAD_EFFICIENCY


def wgrad_dy_path(g, dtype, sms=None, tile=None, blocks=None) -> str:
    """How wgrad reads dy (DY_PATHS): "vector", 16-byte loads from NCHW (P*Q a multiple of 4
    words), "pairs", 8-byte loads from NCHW (P*Q a multiple of 2 words, by PAIRS_MAX_CRS on the
    128-channel tile); else
    "channel_major", 16-byte loads from a channel-major copy (K, N*P*Q rounded up to 4 words), or
    "gather", element by element (the _gather kernels): float32 by CHANNEL_MAJOR_MIN_CRS, float16
    by the two paths' costs on a GPU of `sms` SMs (_wgrad_path_clocks), and by the copy where a
    forced `tile` or grid of `blocks` has no float16 _gather kernel."""
    lane_pixels = step_depth(dtype) // 4
    if (g.P * g.Q) % lane_pixels == 0:
        return "vector"
    crs = (g.C // g.groups) * g.R * g.S
    narrow = tile == "tc_m64" or (tile is None and g.K // g.groups <= TILES["tc_m64"].bm)
    if (g.P * g.Q) % (lane_pixels // 2) == 0 and (crs < PAIRS_MAX_CRS or narrow):
        return "pairs"
    if np.dtype(dtype) in CHANNEL_MAJOR_MIN_CRS:
        return "channel_major" if crs >= CHANNEL_MAJOR_MIN_CRS[np.dtype(dtype)] else "gather"
    gather_tiles = GATHER_EFFICIENCY[np.dtype(dtype)]
    if (tile is not None and tile not in gather_tiles) or (
            blocks is not None and any(blocks % wgrad_tiles(g, name) for name in gather_tiles)):
        return "channel_major"
    return min(("channel_major", "gather"), key=lambda path: _wgrad_path_clocks(g, dtype, path, sms))


def _wgrad_path_clocks(g, dtype, dy_path, sms) -> float:
    """The busiest SM's clocks of wgrad reading dy by `dy_path` ("channel_major" or "gather"): the
    picker's clocks of its best grid (_choose_wgrad: MMAs at the kernels' weights, partials) or the
    pass's compulsory DRAM traffic (dy and x read, dw written), whichever is longer, plus for the
    channel-major copy its traffic (dy read and written) and launch."""
    sms = DEFAULT_SMS if sms is None else sms
    gather = dy_path == "gather"
    weights = GATHER_EFFICIENCY[np.dtype(dtype)] if gather else None
    clocks = _choose_wgrad(g, wgrad_tile_steps(g, dtype), sms, None, None, None, not gather, weights)[0]
    item = np.dtype(dtype).itemsize
    dy_bytes = math.prod(g.y_shape) * item
    dram = (dy_bytes + (math.prod(g.x_shape) + math.prod(g.w_shape)) * item) * CLOCKS_PER_BYTE / sms
    copy = 0 if gather else 2 * dy_bytes * CLOCKS_PER_BYTE / sms + LAUNCH_CLOCKS
    return max(clocks, dram) + copy


def _dy_operand(xp, dy, g, dy_path):
    """(dy as the wgrad kernel reads it, its image and channel strides in elements)."""
    pq, npq = g.P * g.Q, g.N * g.P * g.Q
    if dy_path != "channel_major":
        return dy, g.K * pq, pq
    lane_pixels = step_depth(dy.dtype) // 4
    rows = _ceil_div(npq, lane_pixels) * lane_pixels
    packed = xp.empty((g.K, rows), dtype=dy.dtype)   # the padding is never read
    packed[:, :npq].reshape(g.K, g.N, pq)[...] = dy.reshape(g.N, g.K, pq).transpose(1, 0, 2)
    return packed, pq, rows


def _check_dtype(a):
    if a.dtype not in DTYPES:
        raise TypeError(f"the tensor-core kernels take float32 (TF32) or float16 arrays, not {a.dtype}")


def _filter_tiles(be, w, g, plan):
    """The filter tiles of fprop's or dgrad's `plan` (filter_tile_parts) made from w by its first launch
    (conv2d_tc_filter_tiles): operand words zero-padded to whole block rows and steps, in the
    order the warps load their mma A fragments: per group, 64-row block and 16-word step, 4 KiB of
    (m tile, k8 half, lane, register) with lane = 4*g + t and registers (g, t), (g + 8, t),
    (g, t + 4), (g + 8, t + 4) in words of the m16n8k8 tile (PTX ISA fragment layout; the m16n8k16
    FP16 one in words), so a warp reads each step as 8 coalesced 512-byte rows of 16-byte vectors."""
    xp = backend.array_module(be)
    parts = filter_tile_parts(g, plan.pass_name, TILES[plan.tile].bm, step_depth(w.dtype), is_flat(plan))
    words = filter_tile_words(parts, g.groups)
    tiles = xp.empty(max(words, 1), dtype=np.uint32)   # a dgrad whose phases have no taps reads none
    table = _filter_tile_table(be, _device_id(be), parts)
    launch = plan.launches[0]
    args = (xp.ascontiguousarray(w), tiles, table) + i32(len(parts), words, g.K // g.groups, g.C // g.groups, g.R,
                                                         g.S, plan.pass_name == "dgrad", is_flat(plan))
    backend.launch(be, launch.family, w.dtype, launch.kernel, launch.grid, launch.block, args)
    return tiles


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


def _device_id(be):
    """The GPU an array of `be` lives on (None on the emulator): part of a device array's cache key."""
    return backend.cupy_or_none().cuda.Device().id if be == "cuda" else None


@functools.lru_cache(maxsize=256)
def _phase_table(be, device_id, g, bm, depth):
    """dgrad's phase table on the device, cached per geometry and tile (never written): per stride
    phase ph, pw, R', S', pad_h', pad_w', H', W' and the offset of its filter tiles, in words."""
    phases = dgrad_phases(g)
    table = [(ph, pw, part.taps_h, part.taps_w, pad_h, pad_w, out_h, out_w, part.offset)
             for (ph, pw), (pad_h, pad_w), (out_h, out_w), part in zip(
                 phases.phases, phases.pads, phases.out_shape, filter_tile_parts(g, "dgrad", bm, depth))]
    return _read_only(backend.array_module(be).asarray(np.array(table, dtype=np.int32)))


@functools.lru_cache(maxsize=256)
def _filter_tile_table(be, device_id, parts):
    """conv2d_tc_filter_tiles' table of `parts` on the device, cached (never written): a row of
    FilterTilePart.table_row per part."""
    rows = np.array([part.table_row() for part in parts], dtype=np.int32)
    return _read_only(backend.array_module(be).asarray(rows))


@functools.lru_cache(maxsize=64)
def _cached_pixel_table(be, device_id, g, dy_image, depth):
    """_pixel_table on the device, cached per geometry and dy layout (never written): 12 bytes per
    output pixel, 4.8 MB for ResNet's 56x56 layers at batch 128."""
    xp = backend.array_module(be)
    return _read_only(_pixel_table(xp, g, _tap_masks(xp, g), dy_image, depth))


# wgrad's per-tile counts of finished segments (kernels/conv2d_tc.cu wgrad_sum_tile), per backend,
# device and stream. The kernel leaves them zero (a tile's summing block resets its count), so the
# launches of one stream, which run in order, reuse them without a zeroing launch; a launch that
# fails drops them.
_ARRIVALS = {}


def _arrivals_key(be) -> tuple:
    """_ARRIVALS' key: the backend, its current device and CuPy stream (None, None on the emulator)."""
    cupy = backend.cupy_or_none() if be == "cuda" else None
    return be, _device_id(be), cupy.cuda.get_current_stream().ptr if cupy else None


def _arrivals(be, count: int):
    """At least `count` zero arrival counts for `be`'s current device and stream (_ARRIVALS)."""
    key = _arrivals_key(be)
    counts = _ARRIVALS.get(key)
    if counts is None or counts.size < count:
        counts = _ARRIVALS[key] = backend.array_module(be).zeros(max(count, 1024), dtype=np.uint32)
    return counts


def _read_only(a):
    """A cached array, read-only where NumPy holds it (the emulator's)."""
    if isinstance(a, np.ndarray):
        a.setflags(write=False)
    return a


def pixel_table_bytes(g, dtype) -> int:
    """Bytes of wgrad's pixel table (_pixel_table): 3 ints per output pixel, the last step padded."""
    depth = step_depth(dtype)
    return 3 * 4 * _ceil_div(g.N * g.P * g.Q, depth) * depth


def _pixel_table(xp, g, tap_masks, dy_image, depth):
    """wgrad's pixel table, (steps, 3, depth) int32 for the N*P*Q output pixels in steps of `depth`
    (the last one padded; int32 throughout, as the kernel's offsets are): per pixel the x offset of
    its window origin (h0, w0) in channel 0 of its image, its tap mask row_taps[p] | col_taps[q]
    (0 for padding), and the offset of its dy in channel 0 (image * dy_image + p * Q + q; -1 for
    padding). The dy offsets stand in pixel order; the x origins and tap masks at the shared column
    of the A tile that holds the pixel's operand word: step word w in column 8 * (w / 2 % 2) +
    4 * (w % 2) + w / 4, as the kernel's dy loader places it (kernels/conv2d_tc.cu)."""
    npq, pq = g.N * g.P * g.Q, g.P * g.Q
    steps = _ceil_div(npq, depth)
    pixel = xp.arange(steps * depth, dtype=np.int32)   # plan_wgrad: 3 entries a pixel stay below 2^31
    inside = pixel < npq
    image, at = pixel // pq, pixel % pq
    p, q = at // g.Q, at % g.Q
    row_taps, col_taps = tap_masks
    origin = image * (g.C * g.H * g.W) + (p * g.stride[0] - g.padding[0]) * g.W + q * g.stride[1] - g.padding[1]
    taps = (row_taps[p] | col_taps[q]).view(np.int32)   # the masks fill 32 bits at most (_tap_masks)
    table = xp.empty((steps, 3, depth), dtype=np.int32)
    per_word = depth // TILE_K
    t = xp.arange(depth)
    word = t // per_word
    slot = (8 * (word // 2 % 2) + 4 * (word % 2) + word // 4) * per_word + t % per_word
    table[:, 0, slot] = xp.where(inside, origin, 0).reshape(steps, depth)
    table[:, 1, slot] = xp.where(inside, taps, 0).reshape(steps, depth)
    table[:, 2, :] = xp.where(inside, image * dy_image + at, -1).reshape(steps, depth)
    return table


def _tap_masks(xp, g):
    """(row_taps[P], col_taps[Q]) as uint32: bit r of row_taps[p] set when filter row r of output
    row p falls inside the input, bit R + s of col_taps[q] likewise for filter column s, and on
    past the filter's S columns to COLUMN_RUN_BITS columns (as far as 32 bits go): the _rows
    kernel's test of the x columns a lane's run of pixels reads (tap_rows_supported)."""
    def masks(out, taps, stride, pad, dilation, size, shift):
        at = xp.arange(out)[:, None] * stride - pad + xp.arange(taps)[None, :] * dilation
        inside = ((at >= 0) & (at < size)).astype(np.uint64)
        return (inside << (xp.arange(taps, dtype=np.uint64) + shift)[None, :]).sum(axis=1).astype(np.uint32)
    columns = max(g.S, min(COLUMN_RUN_BITS, MAX_TAP_BITS - g.R))
    return (masks(g.P, g.R, g.stride[0], g.padding[0], g.dilation[0], g.H, 0),
            masks(g.Q, columns, g.stride[1], g.padding[1], g.dilation[1], g.W, g.R))


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
    arrivals = _arrivals(be, wgrad_tiles(g, plan.tile) if plan.splits > 1 else 1)
    dy, dy_image, dy_channel = _dy_operand(xp, dy, g, plan.dy_path)
    pixel_table = _cached_pixel_table(be, _device_id(be), g, dy_image, step_depth(x.dtype))
    args = ((dy, x, pixel_table, dw, partials, arrivals)   # stride and padding: in the table
            + i32(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, *g.dilation)
            + i32(g.groups, plan.splits, dy_image, dy_channel))
    launch = plan.main
    try:
        backend.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    except BaseException:
        _ARRIVALS.pop(_arrivals_key(be), None)   # its counts may be left part-way
        raise
    return dw


def flops(g) -> int:
    """Multiply-adds x 2 of each pass (fprop, dgrad and wgrad do the same number)."""
    return 2 * math.prod(g.y_shape) * (g.C // g.groups) * g.R * g.S
