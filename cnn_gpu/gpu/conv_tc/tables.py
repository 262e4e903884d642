"""The device-side tables of the tensor-core launches: fprop's and dgrad's filter tiles (made by a
launch on each call) and, cached per geometry and never written, the filter tiles' table, dgrad's
phase table and wgrad's pixel table with its tap masks."""
from __future__ import annotations

import functools

import numpy as np

from ... import backend
from .._grid import i32
from ..conv import _ceil_div
from .plan import MAX_TAP_BITS, TILE_K, TILES, dgrad_phases, filter_tile_parts, filter_tile_words, is_flat, step_depth
from .wgrad_plans import COLUMN_RUN_BITS, residue_chunks

def _filter_tiles(be, w, g, plan):
    """The filter tiles of fprop's or dgrad's `plan` (filter_tile_parts) made from w by its first launch
    (conv2d_tc_filter_tiles): operand words zero-padded to whole block rows and steps, in the
    order the warps load their mma A fragments: per group, 64-row block and 16-word step, 4 KiB of
    (m tile, k8 half, lane, register) with lane = 4*g + t and registers (g, t), (g + 8, t),
    (g, t + 4), (g + 8, t + 4) in words of the m16n8k8 tile (PTX ISA fragment layout; the m16n8k16
    FP16 one in words), so a warp reads each step as 8 coalesced 512-byte rows of 16-byte vectors."""
    xp = backend.array_module(be)
    words, table, sizes = _filter_tile_arguments(be, _device_id(be), g, plan.pass_name, plan.tile, w.dtype,
                                                 is_flat(plan))
    tiles = xp.empty(max(words, 1), dtype=np.uint32)   # a dgrad whose phases have no taps reads none
    launch = plan.launches[0]
    backend.launch(be, launch.family, w.dtype, launch.kernel, launch.grid, launch.block,
                   (xp.ascontiguousarray(w), tiles, table) + sizes)
    return tiles


@functools.lru_cache(maxsize=256)
def _filter_tile_arguments(be, device_id, g, pass_name, tile, dtype, flat):
    """(words, the parts' table on the device, the int arguments) of conv2d_tc_filter_tiles for one
    geometry and plan: the same at every call of a layer, so kept (the table never written: a row
    of FilterTilePart.table_row per part)."""
    parts = filter_tile_parts(g, pass_name, TILES[tile].bm, step_depth(dtype), flat)
    words = filter_tile_words(parts, g.groups)
    sizes = i32(len(parts), words, g.K // g.groups, g.C // g.groups, g.R, g.S, pass_name == "dgrad", flat)
    table = np.array([part.table_row() for part in parts], dtype=np.int32)
    return words, _read_only(backend.array_module(be).asarray(table)), sizes


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


@functools.lru_cache(maxsize=64)
def _cached_pixel_table(be, device_id, g, dy_image, depth, residues=False):
    """_pixel_table (or with `residues` _residue_pixel_tables) on the device, cached per geometry
    and dy layout (never written): 12 bytes per output pixel, 4.8 MB for ResNet's 56x56 layers at
    batch 128 (the residue bands' 16 bytes per entry of each of 8 tables: 0.9 MB for the 7x7 ones)."""
    xp = backend.array_module(be)
    make = _residue_pixel_tables if residues else _pixel_table
    return _read_only(make(xp, g, _tap_masks(xp, g), dy_image, depth))


def _read_only(a):
    """A cached array, read-only where NumPy holds it (the emulator's)."""
    if isinstance(a, np.ndarray):
        a.setflags(write=False)
    return a


def _pixel_table(xp, g, tap_masks, dy_image, depth):
    """wgrad's pixel table, (steps, 3, depth) int32 for the N*P*Q output pixels in steps of `depth`
    (the last one padded; int32 throughout, as the kernel's offsets are): per pixel the x offset of
    its window origin (h0, w0) in channel 0 of its image, its tap mask row_taps[p] | col_taps[q]
    (0 for padding), and the offset of its dy in channel 0 (image * dy_image + p * Q + q; -1 for
    padding). The dy offsets stand in pixel order, the x origins and tap masks in the A tile's
    (_put_x_entries; kernels/conv2d_tc.cu)."""
    npq, pq = g.N * g.P * g.Q, g.P * g.Q
    steps = _ceil_div(npq, depth)
    pixel = xp.arange(steps * depth, dtype=np.int32)   # plan_wgrad: 3 entries a pixel stay below 2^31
    inside = pixel < npq
    image, at = pixel // pq, pixel % pq
    table = xp.empty((steps, 3, depth), dtype=np.int32)
    _put_x_entries(xp, g, tap_masks, table, image, at, inside)
    table[:, 2, :] = xp.where(inside, image * dy_image + at, -1).reshape(steps, depth)
    return table


def _put_x_entries(xp, g, tap_masks, table, image, at, inside):
    """Rows 0 and 1 of the (steps, rows, depth) pixel `table`, entry i of the flattened steps for
    pixel at[i] of image[i] where inside[i] (else 0, 0): the x offset of its window origin and its
    tap mask, each at the shared column of the A tile that holds the pixel's operand word: step word
    w in column 8 * (w / 2 % 2) + 4 * (w % 2) + w / 4, as the kernel's dy loader places it."""
    steps, _, depth = table.shape
    at = xp.where(inside, at, 0)
    p, q = at // g.Q, at % g.Q
    row_taps, col_taps = tap_masks
    origin = image * (g.C * g.H * g.W) + (p * g.stride[0] - g.padding[0]) * g.W + q * g.stride[1] - g.padding[1]
    taps = (row_taps[p] | col_taps[q]).view(np.int32)   # the masks fill 32 bits at most (_tap_masks)
    per_word = depth // TILE_K
    t = xp.arange(depth)
    word = t // per_word
    slot = (8 * (word // 2 % 2) + 4 * (word % 2) + word // 4) * per_word + t % per_word
    table[:, 0, slot] = xp.where(inside, origin, 0).reshape(steps, depth)
    table[:, 1, slot] = xp.where(inside, taps, 0).reshape(steps, depth)


def _residue_pixel_tables(xp, g, tap_masks, dy_image, depth):
    """The _residues kernel's pixel tables, (bands, steps, 4, depth) int32: band b (dy's channels b,
    b + bands, ..., bands = a lane's 16-byte chunk of dy in elements) steps over each image's dy row
    in residue_chunks(g, depth) chunks from the row's start rounded down to a chunk, image after
    image, the last step padded. Entry e of a chunk of image n stands for pixel chunk * bands + e -
    shift, shift = b * P * Q mod bands (the band's rows' misalignment), inside where 0 <= pixel < P*Q.
    Rows 0, 1: x origins and tap masks as _pixel_table's (0, 0 outside); row 2: the chunk's dy offset
    from the band's row start rounded down, n * dy_image + chunk * bands (chunks past the row's, and
    padding, read chunk 0 of the image, or of image 0); row 3: at the chunk's first 4 entries, the
    masks of its 4 operand words (the inside elements' bits set)."""
    bands = depth // 4
    pq, chunks = g.P * g.Q, residue_chunks(g, depth)
    steps = _ceil_div(g.N * chunks * bands, depth)
    entry = xp.arange(steps * depth, dtype=np.int32)
    image, chunk, element = entry // (chunks * bands), entry // bands % chunks, entry % bands
    real = image < g.N
    per_word = depth // TILE_K
    width = 32 // per_word   # an element's bits in its operand word: one half (FP16) or all 32
    element_bits = (((1 << width) - 1) << (width * (element % per_word).astype(np.int64))).astype(np.uint32)
    tables = xp.zeros((bands, steps, 4, depth), dtype=np.int32)
    for band in range(bands):
        shift = band * pq % bands
        at = chunk * bands + element - shift
        inside = real & (at >= 0) & (at < pq)
        _put_x_entries(xp, g, tap_masks, tables[band], image, at, inside)
        spans = real & (chunk * bands < shift + pq)   # a chunk the row reaches
        dy_offset = xp.where(real, image, 0) * dy_image + xp.where(spans, chunk * bands, 0)
        tables[band, :, 2, :] = dy_offset.reshape(steps, depth)
        words = xp.where(inside, element_bits, np.uint32(0)).reshape(-1, 4, per_word).sum(axis=2, dtype=np.uint32)
        masks = xp.zeros((words.shape[0], bands), dtype=np.uint32)
        masks[:, :4] = words
        tables[band, :, 3, :] = masks.view(np.int32).reshape(steps, depth)
    return tables


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
