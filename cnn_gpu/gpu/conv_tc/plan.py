"""The tensor-core plans of fprop and dgrad: the block-tile picker they share with wgrad
(_choose, _clocks: whole waves of resident blocks, split-K), the filter tiles their first launch
makes (FilterTilePart) and dgrad's stride phases (DgradPhases). wgrad's plans: wgrad_plans."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .. import _plan_cache, reduce
from .._grid import Launch, blocks_for
from ..conv import (DEFAULT_SMS, INDEX_LIMIT, MAX_GRID_YZ, ConvPlan, _ceil_div, _check_grid, _check_index_range,
                    _check_splits)

TILE_N = 128             # output pixels (fprop, dgrad) or filter columns (wgrad) of a block tile
TILE_K = 16              # operand words of a step (mma_tile.cuh TC_BK)
THREADS = 128            # 4 warps (kernels/mma_tile.cuh)
BLOCKS_PER_SM = 2        # the kernels' __launch_bounds__, but for DGRAD_BLOCKS_PER_SM
MAX_TAP_BITS = 32        # wgrad's tap masks: R + S bits in one word
# fprop over the flattened (r, s, c) reduction (the _flat kernels): at most FLAT_MAX indices (the
# kernel's shared table, TC_FLAT_MAX) and R + S < 32 (tap bits below the table's past-the-end bit)
FLAT_MAX = 512
FLAT_KERNEL = "conv2d_fprop_tc_flat"
FILTER_TILES_KERNEL = "conv2d_tc_filter_tiles"   # fprop's and dgrad's first launch: their filter tiles


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
    back by a summing launch; or where the kernel sums them itself (wgrad) all but one, the last
    segment's, which its block sums from its accumulators."""
    waves = _ceil_div(blocks, sms * blocks_per_sm)
    clocks = waves * blocks_per_sm * steps * bm * bn * TILE_K / 1024 / efficiency
    if partial_outputs > 1:
        written = partial_outputs if summing_launch else partial_outputs - 1
        clocks += 2 * written * output_elements * 4 * CLOCKS_PER_BYTE / sms
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


@_plan_cache.memoized()
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


@_plan_cache.memoized()
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
