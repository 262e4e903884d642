"""The tensor-core plans of wgrad: its blocks' runs of (tile, step) pairs (split-K, or stream-K over
whole waves of resident blocks: the balanced kernel), and the kernel that reads dy as its layout
allows (DY_PATHS: 16- or 8-byte vectors, a channel-major copy, or element by element) and x by
filter columns or, where it can, by filter rows (the _rows kernel)."""
from __future__ import annotations

import math

import numpy as np

from .. import _plan_cache
from .._grid import Launch
from ..conv import DEFAULT_SMS, INDEX_LIMIT, ConvPlan, _ceil_div, _check_index_range, _check_splits
from .plan import (BLOCKS_PER_SM, CLOCKS_PER_BYTE, LAUNCH_CLOCKS, MAX_SPLITS, MAX_TAP_BITS, MIN_SPLIT_STEPS, THREADS,
                   TILE_N, TILES, _clocks, step_depth)

# wgrad's dy where a lane's 4 words of pixels would straddle two images in NCHW (P*Q no multiple of
# 4 words): a channel-major copy of dy (2 x dy's bytes of DRAM traffic) keeps the 16-byte loads, or
# the _gather kernels read dy element by element, at about 0.70 of the vector loop's 0.89 MMA issue
# rate (float32, sm_90 hot loops). wgrad does 2*C/G*R*S FLOPs per dy element, so with H100's TF32
# peak at 148 FLOPs per byte of DRAM bandwidth the copy pays from C/G*R*S = 4 * 148 / (1/0.70 -
# 1/0.89) ~ 1900. float16's gather runs on the 64-channel tile only (the 128-channel one spills) at
# an MMA issue ceiling of 0.41 against the vector loop's 0.93: no such threshold, as the passes where
# the copy costs more are those the gather loop's slowness does not limit (bound by DRAM, or by
# split-K partials), so wgrad_dy_path compares their costs (_wgrad_path_clocks), and the _residues
# kernel's where it runs.
CHANNEL_MAJOR_MIN_CRS = {np.dtype(np.float32): 1900}
DY_PATHS = ("vector", "pairs", "channel_major", "gather", "residues")
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
# float16 wgrad's dy where P*Q is no multiple of 4 words (one group, K a multiple of 8): the
# _residues kernel splits the output channels into bands by their residue mod 8 (a lane's 16 bytes
# of dy), whose NCHW rows share one misalignment, and reads each image's row in whole aligned
# 16-byte chunks from the row's start rounded down, masking the neighbouring rows' elements
# (tables._residue_pixel_tables): vector loads with no copy of dy, at the price of the rows padded
# to whole chunks (49 pixels: 56 entries) and of the masks. 128-channel tiles; float32's _gather
# kernel issues at 0.70 of the MMA rate, a float32 build of this one at 0.81 x 49/52 = 0.76 (not
# built: float32's 7x7 layers meet their target). Its weight for the picker: its sm_90 hot loop's
# MMA issue ceiling.
RESIDUES_KERNEL = "conv2d_wgrad_tc_residues"
RESIDUES_EFFICIENCY = 0.85
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
COLUMN_RUN_BITS = 10   # the tap masks' column bits: 2 + 4 FP16 words of pixels (tables._tap_masks)
FLOAT32_ONLY_KERNELS = (GATHER_KERNEL,)   # not in the float16 build
# wgrad's variants of the same two tiles (128 or 64 output channels) and their weights for the
# picker: the least of the sm_90 hot loops' MMA issue ceilings, float32 and float16 (dy in
# registers, x from shared memory)
WGRAD_EFFICIENCY = {"tc": 0.89, "tc_m64": 0.57}
# wgrad's balanced grids (_choose_wgrad): up to this many whole waves of resident blocks, and the
# balanced kernel's weight (the least of its sm_90 hot loops' MMA issue ceilings, float32 and float16:
# the outer loop's registers)
BALANCED_WAVES = 4
BALANCED_EFFICIENCY = 0.87


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


def wgrad_supported(g) -> bool:
    """Whether wgrad of `g` runs on tensor cores: its tap masks hold R + S bits in one word."""
    return g.R + g.S <= MAX_TAP_BITS


def wgrad_tiles(g, tile: str, dtype=np.float32, dy_path=None) -> int:
    """wgrad's block tiles with TILES variant `tile`: 128 filter columns by bm output channels, per
    group (dy_path "residues": per residue band of the output channels)."""
    crs = (g.C // g.groups) * g.R * g.S
    bands = residue_bands(dtype) if dy_path == "residues" else g.groups
    return _ceil_div(crs, TILE_N) * _ceil_div(g.K // bands, TILES[tile].bm) * bands


def wgrad_tile_steps(g, dtype, dy_path=None) -> int:
    """The reduction steps of each wgrad tile: the N*P*Q pixels in steps of step_depth(dtype), or
    for dy_path "residues" each image's residue_chunks."""
    if dy_path == "residues":
        return _ceil_div(g.N * residue_chunks(g, step_depth(dtype)) * residue_bands(dtype), step_depth(dtype))
    return _ceil_div(g.N * g.P * g.Q, step_depth(dtype))


def residue_bands(dtype) -> int:
    """The _residues kernel's bands of output channels: a lane's 16 bytes of dy, in elements."""
    return step_depth(dtype) // 4


def residue_chunks(g, depth: int) -> int:
    """The 16-byte chunks of dy an image's row spans in the _residues kernel, at most over its bands:
    P*Q elements from the row's start rounded down, band b's rows b * P*Q mod `bands` elements past
    a chunk's start."""
    bands, pq = depth // 4, g.P * g.Q
    return max(_ceil_div(pq + band * pq % bands, bands) for band in range(bands))


def residues_supported(g, dtype) -> bool:
    """Whether the _residues kernel may read dy (RESIDUES_KERNEL): float16, one group, K a multiple
    of its bands (so that an image's dy, K*P*Q elements, is whole chunks and a band's rows share one
    misalignment)."""
    return np.dtype(dtype) == np.float16 and g.groups == 1 and g.K % residue_bands(dtype) == 0


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


def _choose_wgrad(g, tile_steps: int, sms, tile, splits, blocks, balanced: bool, weights=None, tiles_of=None):
    """(clocks, tile name, blocks, ranks) of wgrad: _choose's costs over grids of tiles x splits
    blocks (split-K) and, where `balanced` (BALANCED_KERNEL runs), of BALANCED_WAVES whole waves or
    fewer of resident blocks of the 128-channel tile that share the tiles' steps evenly (stream-K: no
    partly idle last wave, at the price of partial outputs). `splits` or `blocks` force the grid.
    `weights`: {tile name: efficiency} of the kernels that run (default WGRAD_EFFICIENCY);
    `tiles_of`: the tiles of a tile name (default wgrad_tiles of `g`)."""
    weights = weights or WGRAD_EFFICIENCY
    tiles_of = tiles_of or (lambda name: wgrad_tiles(g, name))
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
        tiles = tiles_of(name)
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


@_plan_cache.memoized()
def plan_wgrad(g, *, dtype=np.float32, tile=None, splits=None, blocks=None, sms=None, dy_path=None) -> ConvPlan:
    """The launches of wgrad: the kernel of the TILES variant `tile` (chosen when None) on a grid
    of `blocks` blocks that share the tiles' steps of N*P*Q pixels in equal runs (_choose_wgrad:
    `splits` per tile, or balanced over the SMs); where a tile has more than one segment, the block
    whose segment arrives last sums the others' partial filters with its own in a fixed order. The
    _pairs, _gather or _residues kernel where dy is read in 8-byte vectors, element by element or
    in residue bands (`dy_path`, wgrad_dy_path when None). The plan's `splits` are the partial
    outputs (its `chunk` is unused: the kernel derives each block's run from the grid)."""
    _check_index_range(g)
    if not wgrad_supported(g):
        raise ValueError(f"the tensor-core wgrad kernel takes filters with R + S <= {MAX_TAP_BITS}, not {g.R}x{g.S}")
    if dy_path not in (None, *DY_PATHS):
        raise ValueError(f"dy_path must be one of {', '.join(DY_PATHS)} or None, got {dy_path!r}")
    if dy_path == "gather" and tile is not None and tile not in GATHER_EFFICIENCY[np.dtype(dtype)]:
        raise ValueError(f"the {np.dtype(dtype)} _gather kernel has the tiles "
                         f"{', '.join(GATHER_EFFICIENCY[np.dtype(dtype)])}, not {tile!r}")
    if dy_path == "residues" and not residues_supported(g, dtype):
        raise ValueError(f"the _residues kernel takes float16, one group and K a multiple of {residue_bands(dtype)}, "
                         f"not {np.dtype(dtype)}, groups={g.groups}, K={g.K}")
    if dy_path == "residues" and tile not in (None, "tc"):
        raise ValueError(f"the _residues kernel has the tile tc, not {tile!r}")
    dy_path = dy_path or wgrad_dy_path(g, dtype, sms, tile, blocks)
    if pixel_table_bytes(g, dtype, dy_path) // 4 >= INDEX_LIMIT:
        raise ValueError(f"conv2d kernels use 32-bit indices: wgrad's pixel table of {g.N * g.P * g.Q} output pixels "
                         f"({pixel_table_bytes(g, dtype, dy_path) // 4} entries) is too large; split the batch")
    balanced = dy_path in ("vector", "channel_major")
    _, name, blocks, ranks = _choose_wgrad(g, wgrad_tile_steps(g, dtype, dy_path), sms, tile, splits, blocks, balanced,
                                           _dy_path_weights(g, dtype, dy_path),
                                           lambda name: wgrad_tiles(g, name, dtype, dy_path))
    if blocks % wgrad_tiles(g, name, dtype, dy_path):
        kernel = BALANCED_KERNEL
    else:
        # the 64-channel tile's warps take half steps, 8 bytes of dy a lane: its vector kernel takes pairs too
        kernels = {"gather": GATHER_KERNEL, "pairs": PAIRS_KERNEL if TILES[name].bm == TILE_N else "conv2d_wgrad_tc",
                   "residues": RESIDUES_KERNEL}   # (the 128-channel tile's suffix is "")
        kernel = kernels.get(dy_path, "conv2d_wgrad_tc") + TILES[name].suffix
        if kernel == "conv2d_wgrad_tc_m64" and tap_rows_supported(g, dtype):
            kernel = TAP_ROWS_KERNEL
    return ConvPlan("wgrad", (Launch("conv2d_tc", kernel, (blocks, 1, 1), (THREADS, 1, 1)),), tile=name, splits=ranks,
                    dy_path=dy_path)


def _dy_path_weights(g, dtype, dy_path) -> dict:
    """The picker's weights of wgrad's tiles with dy read by `dy_path`: the _gather kernels', the
    _residues kernel's, or with dy in vectors or pairs the regular ones (the _rows kernel's on the
    64-channel tile where it runs)."""
    if dy_path == "gather":
        return GATHER_EFFICIENCY[np.dtype(dtype)]
    if dy_path == "residues":
        return {"tc": RESIDUES_EFFICIENCY}
    return {**WGRAD_EFFICIENCY, "tc_m64": TAP_ROWS_EFFICIENCY} if tap_rows_supported(g, dtype) else WGRAD_EFFICIENCY


def wgrad_dy_path(g, dtype, sms=None, tile=None, blocks=None) -> str:
    """How wgrad reads dy (DY_PATHS): "vector", 16-byte loads from NCHW (P*Q a multiple of 4
    words), "pairs", 8-byte loads from NCHW (P*Q a multiple of 2 words, by PAIRS_MAX_CRS on the
    128-channel tile); else
    "channel_major", 16-byte loads from a channel-major copy (K, N*P*Q rounded up to 4 words),
    "gather", element by element (the _gather kernels), or "residues", 16-byte loads from NCHW in
    residue bands (the float16 _residues kernel, where residues_supported): float32 by
    CHANNEL_MAJOR_MIN_CRS, float16 by the paths' costs on a GPU of `sms` SMs (_wgrad_path_clocks)
    among those whose kernels have a forced `tile` and divide a forced grid of `blocks`."""
    lane_pixels = step_depth(dtype) // 4
    if (g.P * g.Q) % lane_pixels == 0:
        return "vector"
    crs = (g.C // g.groups) * g.R * g.S
    narrow = tile == "tc_m64" or (tile is None and g.K // g.groups <= TILES["tc_m64"].bm)
    if (g.P * g.Q) % (lane_pixels // 2) == 0 and (crs < PAIRS_MAX_CRS or narrow):
        return "pairs"
    if np.dtype(dtype) in CHANNEL_MAJOR_MIN_CRS:
        return "channel_major" if crs >= CHANNEL_MAJOR_MIN_CRS[np.dtype(dtype)] else "gather"
    def fits(path):   # the forced tile and grid
        tiles = _dy_path_weights(g, dtype, path)
        return (tile is None or tile in tiles) and (
            blocks is None or not any(blocks % wgrad_tiles(g, name, dtype, path) for name in tiles))
    paths = [path for path in ("gather", "residues") if fits(path)
             and (path != "residues" or residues_supported(g, dtype))]
    return min(["channel_major", *paths], key=lambda path: _wgrad_path_clocks(g, dtype, path, sms))


def _wgrad_path_clocks(g, dtype, dy_path, sms) -> float:
    """The busiest SM's clocks of wgrad reading dy by `dy_path` ("channel_major", "gather" or
    "residues"): the picker's clocks of its best grid (_choose_wgrad: MMAs at the kernels' weights,
    partials) or the pass's DRAM traffic (dy and x read, dw written, the pixel table read), whichever
    is longer, plus for the channel-major copy its traffic (dy read and written) and launch."""
    sms = DEFAULT_SMS if sms is None else sms
    copying = dy_path == "channel_major"
    clocks = _choose_wgrad(g, wgrad_tile_steps(g, dtype, dy_path), sms, None, None, None, copying,
                           _dy_path_weights(g, dtype, dy_path), lambda name: wgrad_tiles(g, name, dtype, dy_path))[0]
    item = np.dtype(dtype).itemsize
    dy_bytes = math.prod(g.y_shape) * item
    table = pixel_table_bytes(g, dtype, dy_path)
    dram = (dy_bytes + (math.prod(g.x_shape) + math.prod(g.w_shape)) * item + table) * CLOCKS_PER_BYTE / sms
    copy = 2 * dy_bytes * CLOCKS_PER_BYTE / sms + LAUNCH_CLOCKS if copying else 0
    return max(clocks, dram) + copy


def pixel_table_bytes(g, dtype, dy_path=None) -> int:
    """Bytes of wgrad's pixel table (tables._pixel_table): 3 ints per output pixel, the last step
    padded; dy_path "residues": 4 ints per entry of each band's table (tables._residue_pixel_tables)."""
    steps = wgrad_tile_steps(g, dtype, dy_path) * step_depth(dtype)
    return 4 * (4 * residue_bands(dtype) if dy_path == "residues" else 3) * steps
