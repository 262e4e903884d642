"""The tensor-core kernels' filter tiles (kernels/conv2d_tc.cu conv2d_tc_filter_tiles, one launch
before fprop's and dgrad's) on the emulator, bit for bit against a NumPy construction of the
same layout: the filter view transposed to the reduction order, zero-padded, made operand words
and permuted into mma A-fragment order."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv_tc
from cnn_gpu.precision import round_to_tf32
from helpers import needs_emu


def operand_words(values):
    """Values (..., channels) as 32-bit mma operand words: TF32-rounded float32, or float16 pairs of
    consecutive channels, the lower channel in the low half (little-endian views)."""
    if values.dtype == np.float16:
        return np.ascontiguousarray(values).view(np.uint32)
    return round_to_tf32(values).view(np.uint32)


def fragment_order(view, bm, depth):
    """Tiles of a filter view (G, rows, R', S', channels): rows padded to whole bm-row tiles, each
    tap's channels to whole steps of `depth`, as operand words in the order (G, 64-row block,
    step, m tile, k8, g, t, +4, +8): lane 4g + t of the m16n8k8 A fragment holds rows g, g + 8 and
    words t, t + 4 (PTX ISA)."""
    groups, rows, r, s, channels = view.shape
    padded = np.zeros((groups, -(-rows // bm) * bm, r, s, -(-channels // depth) * depth), dtype=view.dtype)
    padded[:, :rows, :, :, :channels] = view
    words = operand_words(padded)
    per_tap = words.shape[-1]
    # (G, row block, m tile, +8, g, step, k8, +4, t) -> (G, row block, step, m tile, k8, g, t, +4, +8)
    split = words.reshape(groups, padded.shape[1] // 64, 4, 2, 8, r * s * per_tap // 16, 2, 2, 4)
    return split.transpose(0, 1, 5, 2, 6, 4, 8, 7, 3).ravel()


def reference_tiles(w, g, pass_name, bm, depth, flat=False):
    """fprop's tiles of w (output channels x (r, s, c), or the flattened (r, s, c) as one tap), or
    dgrad's: per stride phase, dx channels x (the phase's flipped taps, dy channels), concatenated."""
    kg, cg = g.K // g.groups, g.C // g.groups
    per_group = w.reshape(g.groups, kg, cg, g.R, g.S)
    if pass_name == "fprop":
        view = per_group.transpose(0, 1, 3, 4, 2)
        return fragment_order(view.reshape(g.groups, kg, 1, 1, -1) if flat else view, bm, depth)
    phases = conv_tc.dgrad_phases(g)
    parts = [fragment_order(per_group[:, :, :, list(rows)][:, :, :, :, list(cols)].transpose(0, 2, 3, 4, 1), bm, depth)
             for rows, cols in zip(phases.rows, phases.cols)]
    return np.concatenate(parts)


def kernel_tiles(w, g, pass_name, tile, dtype, flat=False):
    plan = (conv_tc.plan_fprop(g, dtype=dtype, tile=tile, flat=flat) if pass_name == "fprop"
            else conv_tc.plan_dgrad(g, dtype=dtype, tile=tile))
    return conv_tc._filter_tiles("emu", w, g, plan)


# (x shape, w shape, stride, padding, dilation, groups): partial row tiles and channel steps, strides
# with phases no tap reaches, dilation, groups, the stem
LAYERS = [((1, 40, 9, 9), (70, 40, 3, 3), 1, 1, 1, 1),
          ((1, 40, 9, 9), (6, 40, 3, 3), 2, 1, 1, 1),
          ((1, 12, 11, 10), (10, 6, 3, 2), (3, 2), (1, 0), (2, 1), 2),
          ((1, 64, 8, 8), (130, 64, 1, 1), 2, 0, 1, 1),
          ((1, 3, 16, 16), (64, 3, 7, 7), 2, 3, 1, 1)]


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layer", LAYERS)
def test_filter_tiles_are_the_reference_layout_bit_for_bit(dtype, layer):
    x_shape, w_shape, stride, padding, dilation, groups = layer
    g = conv_geometry(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups)
    w = np.random.default_rng(2100).standard_normal(w_shape).astype(dtype)
    depth = conv_tc.step_depth(dtype)
    cases = [("fprop", False), ("dgrad", False)] + [("fprop", True)] * conv_tc.flat_supported(g)
    for (pass_name, flat) in cases:
        for tile in conv_tc.FLAT_TILES if flat else conv_tc.TILES:
            want = reference_tiles(w, g, pass_name, conv_tc.TILES[tile].bm, depth, flat)
            got = kernel_tiles(w, g, pass_name, tile, dtype, flat)
            assert got.size == max(want.size, 1), (pass_name, flat, tile)
            np.testing.assert_array_equal(got[:want.size], want, err_msg=f"{pass_name} flat={flat} {tile}")


@needs_emu
def test_tf32_filter_words_round_like_round_to_tf32_and_keep_specials():
    """Ties away from zero, the low 13 bits cleared, a carry into the exponent (the largest float
    rounds to infinity), infinities and NaN kept."""
    g = conv_geometry((1, 16, 4, 4), (8, 16, 1, 1))
    values = np.array([1 + 2.0 ** -11, -(1 + 2.0 ** -11), 1 + 3 * 2.0 ** -12, np.finfo(np.float32).max, np.inf,
                       -np.inf, np.nan, 2.0 ** -140], dtype=np.float32)
    w = np.random.default_rng(2101).standard_normal((8, 16, 1, 1)).astype(np.float32)
    w[:, :, 0, 0].flat[:values.size] = values
    got = kernel_tiles(w, g, "fprop", "tc", np.float32)
    np.testing.assert_array_equal(got, reference_tiles(w, g, "fprop", 128, 16))
    rounded = round_to_tf32(values).view(np.uint32)
    assert np.isin(rounded, got).all() and (rounded[:4] & 0x1FFF == 0).all() and np.isinf(round_to_tf32(values)[3])


def test_filter_tile_parts_offsets_follow_the_phases():
    """One part per stride phase, each starting where the one before ends (a phase no tap reaches
    has none); the table row the kernel reads holds the padded rows in 64-row blocks."""
    g = conv_geometry((1, 40, 9, 9), (6, 40, 1, 3), stride=(2, 3), padding=(0, 1))
    for dtype in (np.float32, np.float16):
        parts = conv_tc.filter_tile_parts(g, "dgrad", 64, conv_tc.step_depth(dtype))
        phases = conv_tc.dgrad_phases(g)
        assert len(parts) == len(phases.phases) == 6
        assert [p.taps_h * p.taps_w for p in parts] == [len(r) * len(c) for r, c in zip(phases.rows, phases.cols)]
        assert any(p.taps_h * p.taps_w == 0 for p in parts)
        ends = [p.offset + p.words(1) for p in parts]
        assert [p.offset for p in parts[1:]] == ends[:-1]
        assert conv_tc.filter_tile_words(parts, 1) == ends[-1] == sum(
            64 * p.taps_h * p.taps_w * 16 for p in parts)   # 6 channels of 40 rows: one row block, one step
        assert parts[0].table_row()[2] == 1
