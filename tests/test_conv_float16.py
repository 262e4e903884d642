"""float16 convolutions on the emulator: the tensor-core kernels' FP16 build (kernels/conv2d_tc.cu,
mma.sync m16n8k16, two halves per operand word) and the SIMT fallback, against float64.

Tolerance (from the formats): FP16 products are exact in FP32, so a result differs from the exact
sum only by the FP32 accumulation of its Kgemm terms in some order, at most Kgemm * 2^-24 *
sum|products| (`scale`: the same convolution of the magnitudes), then by its one rounding to
FP16, at most one FP16 ulp of the result (half an ulp at round-to-nearest, doubled to cover a
sum the accumulation moved across a tie). Split-K partials are FP32 and add one term per split
(the planner's choice: up to MAX_SPLITS terms where a test does not force it).
"""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, emu, precision
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv_tc, reduce
from cnn_gpu.launch_checks import memory_span
from test_kernels_tc import tc_config

F16, F64 = np.float16, np.float64
EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
TILES = (None, "tc", "tc_m64")   # the planner's choice, then each variant forced
SPLITS = conv_tc.MAX_SPLITS      # accumulation terms split-K may add where the planner chooses


def ulp16(values):
    """The float16 ulp at each magnitude (2^-24 below the normal range)."""
    return np.spacing(np.abs(values).astype(F16)).astype(F64)


def assert_within_bound(got, want, scale, terms, what):
    """got (float16) against the exact `want`: the module docstring's bound for `terms` FP32 terms."""
    assert got.dtype == F16 and got.shape == want.shape, f"{what}: {got.dtype} {got.shape}"
    accumulation = terms * 2.0**-24 * scale
    allowed = accumulation + ulp16(np.abs(want) + accumulation)
    error = np.abs(got.astype(F64) - want)
    assert np.all(error <= allowed), f"{what}: off by {error.max():.3g} (> bound by {(error - allowed).max():.3g})"


def options(cfg):
    return dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"], groups=cfg["groups"])


def problem(rng, cfg):
    """Random float16 x, weight and bias of `cfg`, its geometry, and a random float16 dy."""
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(F16)
    w = rng.standard_normal((cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"])).astype(F16)
    b = rng.standard_normal(cfg["k"]).astype(F16)
    g = conv_geometry(x.shape, w.shape, **options(cfg))
    return x, w, b, g, rng.standard_normal(g.y_shape).astype(F16)


def exact(op, *arrays, **kwargs):
    """(op of the float16 values in float64, op of their magnitudes: the error scale)."""
    wide = [None if a is None else a.astype(F64) for a in arrays]
    return (op(*wide, backend="numpy", **kwargs),
            op(*[None if a is None else np.abs(a) for a in wide], backend="numpy", **kwargs))


@needs_emu
@pytest.mark.parametrize("chunk", range(3))
def test_every_pass_matches_float64_within_the_format_bound(chunk):
    """fprop (both tiles, bias, ReLU), dgrad (every stride phase) and wgrad, with and without
    split-K, on random geometries: strides 1-3, padding 0-2, dilation, groups, channels in
    partial and whole 32-channel steps."""
    rng = np.random.default_rng(1600 + chunk)
    for index in range(6):
        cfg = tc_config(rng, channels=40, outputs=71, stride=3, pad=2)   # partial and whole 32-channel steps
        x, w, b, g, dy = problem(rng, cfg)
        relu, splits, tile = index % 2 == 1, (None, 2, 3)[index % 3], TILES[(index + chunk) % 3]
        want, scale = exact(F.conv2d, x, w, b, **options(cfg))
        if relu:
            want = np.maximum(want, 0)
        terms = g.C // g.groups * g.R * g.S + 1 + (splits or 1)
        got = conv_tc.fprop("emu", x, w, b, g, activation="relu" if relu else None, tile=tile, splits=splits)
        assert_within_bound(got, want, scale, terms, f"fprop {cfg} relu={relu} splits={splits} tile={tile}")
        (want_dx, want_dw, _), (scale_dx, scale_dw, _) = exact(F.conv2d_backward, dy, x, w, bias=False,
                                                              **options(cfg))
        dx = conv_tc.dgrad("emu", dy, w, g, tile=tile, splits=splits)
        assert_within_bound(dx, want_dx, scale_dx, g.K // g.groups * g.R * g.S + (splits or 1), f"dgrad {cfg}")
        dw = conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=splits)
        assert_within_bound(dw, want_dw, scale_dw, g.N * g.P * g.Q + (splits or 1), f"wgrad {cfg}")


@needs_emu
@pytest.mark.parametrize("splits, tile", [(1, "tc"), (3, "tc_m64")])
def test_whole_tiles_and_steps(splits, tile):
    """Channels in whole steps of 32 (no channel tests in fprop and dgrad) and whole 128-row tiles
    with whole 32-pixel steps (wgrad's unpredicated loads), next to a partial tile."""
    rng = np.random.default_rng(1610)
    cfg = dict(n=2, c=64, h=8, w=8, k=144, r=3, s=3, stride=1, pad=1, dil=1, groups=1)   # 128 pixels
    x, w, b, g, dy = problem(rng, cfg)
    want, scale = exact(F.conv2d, x, w, b, **options(cfg))
    got = conv_tc.fprop("emu", x, w, b, g, tile=tile, splits=splits)
    assert_within_bound(got, want, scale, 64 * 9 + 1 + splits, "fprop")
    (want_dx, want_dw, _), (scale_dx, scale_dw, _) = exact(F.conv2d_backward, dy, x, w, bias=False, **options(cfg))
    assert_within_bound(conv_tc.dgrad("emu", dy, w, g, tile=tile, splits=splits), want_dx, scale_dx,
                        144 * 9 + splits, "dgrad")
    assert_within_bound(conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=splits), want_dw, scale_dw, 128 + splits, "wgrad")


@needs_emu
def test_functional_ops_run_float16_on_the_emulator():
    """conv2d, conv2d_backward (bias gradient too), conv_transpose2d (bias added before the one
    rounding) and its backward route float16 to the tensor-core kernels and match float64."""
    rng = np.random.default_rng(1620)
    x, w, b = rng.standard_normal((2, 6, 9, 8)).astype(F16), rng.standard_normal((10, 3, 3, 3)).astype(F16), \
        rng.standard_normal(10).astype(F16)
    conv = dict(stride=2, padding=1, groups=2)
    launched = []
    real_launch = backend.launch

    def spy(be, family, dtype, *args, **kwargs):
        launched.append((family, np.dtype(dtype).name))
        return real_launch(be, family, dtype, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "launch", spy)
        y = F.conv2d(x, w, b, activation="relu", backend="emu", **conv)
        dy = rng.standard_normal(y.shape).astype(F16)
        dx, dw, db = F.conv2d_backward(dy, x, w, backend="emu", **conv)
        xt = rng.standard_normal((2, 10, 5, 4)).astype(F16)
        yt = F.conv_transpose2d(xt, w, b[:6], output_padding=1, backend="emu", **conv)
        dyt = rng.standard_normal(yt.shape).astype(F16)
        dxt, dwt, dbt = F.conv_transpose2d_backward(dyt, xt, w, output_padding=1, backend="emu", **conv)
    assert ("conv2d_tc", "float16") in launched and not any(f.startswith("conv2d_") and f != "conv2d_tc"
                                                            for f, _ in launched)
    want, scale = exact(F.conv2d, x, w, b, **conv)
    assert_within_bound(y, np.maximum(want, 0), scale, 3 * 9 + 1 + SPLITS, "conv2d")
    (want_dx, want_dw, want_db), (scale_dx, scale_dw, scale_db) = exact(F.conv2d_backward, dy, x, w, **conv)
    assert_within_bound(dx, want_dx, scale_dx, 5 * 9 + SPLITS, "conv2d dx")
    assert_within_bound(dw, want_dw, scale_dw, dy[:, :1].size + SPLITS, "conv2d dw")
    assert_within_bound(db, want_db, scale_db, dy[:, :1].size, "conv2d db")
    want, scale = exact(F.conv_transpose2d, xt, w, b[:6], output_padding=1, **conv)
    assert_within_bound(yt, want, scale, 5 * 9 + 1 + SPLITS, "conv_transpose2d")
    wants, scales = exact(F.conv_transpose2d_backward, dyt, xt, w, output_padding=1, **conv)
    for got, want, scale, terms, what in zip((dxt, dwt, dbt), wants, scales, (3 * 9 + SPLITS, xt[:, :1].size + SPLITS,
                                                                              dyt[:, :1].size), ("dx", "dw", "db")):
        assert_within_bound(got, want, scale, terms, f"conv_transpose2d_backward {what}")


@needs_emu
def test_bias_gradient_sums_float16_dy_as_it_is():
    """dbias reads a float16 dy with reduce.cu's float16 build (one launch, no widened copy), adds
    in FP32 and rounds once: bit-identical to the sum of dy widened to float32, within one FP16 ulp
    of the NumPy oracle and within the format bound of float64; (3, 4, 40, 40) and (2, 3, 70, 70)
    span two and three blocks per channel, whose FP32 partials the last block adds."""
    from cnn_gpu.gpu import conv as gpu_conv
    rng = np.random.default_rng(1625)
    launched = []
    real_launch = backend.launch

    def spy(be, family, dtype, kernel, grid, block, args, *rest, **kwargs):
        launched.append((family, np.dtype(dtype).name, kernel, args[0].dtype.name, args[0].size))
        return real_launch(be, family, dtype, kernel, grid, block, args, *rest, **kwargs)

    for shape in ((2, 5, 3, 4), (3, 4, 40, 40), (2, 3, 70, 70)):
        n, k, p, q = shape
        x, w = rng.standard_normal((n, 2, p, q)).astype(F16), rng.standard_normal((k, 2, 1, 1)).astype(F16)
        dy = (rng.standard_normal(shape) + 0.25).astype(F16)
        launched.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(backend, "launch", spy)
            db = (gpu_conv.bgrad("emu", dy) if p * q > 100 else F.conv2d_backward(dy, x, w, backend="emu")[2])
        kernel = reduce.plan_channel_sum(n, k, p * q).kernel
        sums = [launch for launch in launched if launch[0] == "reduce"]
        assert sums == [("reduce", "float16", kernel, "float16", dy.size)], f"{shape}: {launched}"
        assert db.dtype == F16 and db.shape == (k,)
        widened = gpu_conv.bgrad("emu", dy.astype(np.float32))
        np.testing.assert_array_equal(db.view(np.uint16), precision.round_to_float16(widened).view(np.uint16))
        oracle = F.conv2d_backward(dy, x, w, backend="numpy")[2]
        assert np.all(np.abs(db.astype(F64) - oracle) <= ulp16(oracle)), f"{shape}: {db} vs {oracle}"
        want, scale = exact(F.conv2d_backward, dy, x, w)
        assert_within_bound(db, want[2], scale[2], n * p * q, f"dbias {shape}")
    assert reduce.plan_channel_sum(2, 3, 70 * 70).grid[0] == 3 * 3


@needs_emu
def test_wgrad_on_balanced_grids(monkeypatch):
    """Grids whose blocks meet two tiles (stream-K: conv_tc.BALANCED_KERNEL's float16 build): 3
    filter-column tiles x 2 groups over 8 or 11 steps of 32 pixels, block counts that give tiles
    1 to 6 segments, the ranks a tile lacks never read (the workspace starts NaN), dy in vectors and
    from the channel-major copy; each within the bound, and the same bits twice."""
    monkeypatch.setattr(conv_tc, "_partials", lambda xp, count, shape: xp.full((count,) + shape, np.nan, np.float32))
    rng = np.random.default_rng(1625)
    for side, dy_path in ((9, "channel_major"), (8, "vector")):
        cfg = dict(n=4, c=60, h=side, w=side, k=40, r=3, s=3, stride=1, pad=1, dil=1, groups=2)
        x, w, _, g, dy = problem(rng, cfg)
        (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, bias=False, **options(cfg))
        tiles, steps = conv_tc.wgrad_tiles(g, "tc"), -(-g.N * g.P * g.Q // 32)
        assert tiles == 6 and steps in (11, 8)
        for blocks in (7, 10, 13, 25, tiles * steps - 1):
            plan = conv_tc.plan_wgrad(g, dtype=F16, tile="tc", blocks=blocks, dy_path=dy_path)
            assert plan.main.kernel == conv_tc.BALANCED_KERNEL and plan.main.grid == (blocks, 1, 1)
            assert plan.splits == conv_tc.wgrad_ranks(tiles, steps, blocks) > 1
            dw = conv_tc.wgrad("emu", dy, x, g, tile="tc", blocks=blocks, dy_path=dy_path)
            assert_within_bound(dw, want, scale, g.N * g.P * g.Q + plan.splits, f"wgrad {side} {blocks}")
            again = conv_tc.wgrad("emu", dy, x, g, tile="tc", blocks=blocks, dy_path=dy_path)
            assert dw.view(np.uint16).tobytes() == again.view(np.uint16).tobytes()


@needs_emu
def test_bit_identical_under_every_schedule_and_run_to_run():
    rng = np.random.default_rng(1630)
    cfg = dict(n=2, c=35, h=7, w=6, k=20, r=3, s=2, stride=2, pad=1, dil=1, groups=1)
    x, w, b, g, dy = problem(rng, cfg)
    runs = []
    for schedule in ("forward", "reverse", "random", "random"):
        with emu.checking(schedule=schedule, seed=len(runs), guard=True):
            runs.append(b"".join(a.tobytes() for a in (
                conv_tc.fprop("emu", x, w, b, g, activation="relu", splits=2),
                conv_tc.dgrad("emu", dy, w, g, splits=2), conv_tc.wgrad("emu", dy, x, g, splits=2),
                conv_tc.wgrad("emu", dy, x, g, splits=1))))
    assert all(run == runs[0] for run in runs)


@needs_emu
def test_split_k_sums_fp32_partials_in_order_and_rounds_once_in_one_launch(monkeypatch):
    """With 3 splits fprop and dgrad launch their kernel and split_sum_epilogue, nothing else (the
    plan's two launches), and wgrad its kernel alone (the block whose segment of a tile arrives last
    sums the others' partials with its own): the output is the FP32 sum of the kernel's partials in split order (fprop: plus the
    bias, then ReLU) rounded to float16 once, bit for bit. Rounding the first two splits' sum
    (fprop: the sum before the bias) to float16 first, or summing float16 partials, differs."""
    rng = np.random.default_rng(1635)
    cfg = dict(n=2, c=40, h=6, w=8, k=24, r=3, s=3, stride=1, pad=1, dil=1, groups=1)   # 3 steps of wgrad
    x, w, b, g, dy = problem(rng, cfg)
    launched, written = [], {}
    real_launch = backend.launch

    def spy(be, family, dtype, kernel, grid, block, args):
        launched.append((kernel, args))
        real_launch(be, family, dtype, kernel, grid, block, args)
        if family == "conv2d_tc":   # the FP32 arrays as the pass's kernel left them
            written.update({id(a): a.copy() for a in args if isinstance(a, np.ndarray) and a.dtype == np.float32})

    monkeypatch.setattr(backend, "launch", spy)
    f32 = np.float32
    runs = (("fprop", lambda: conv_tc.fprop("emu", x, w, b, g, activation="relu", splits=3), b),
            ("dgrad", lambda: conv_tc.dgrad("emu", dy, w, g, splits=3), None),
            ("wgrad", lambda: conv_tc.wgrad("emu", dy, x, g, splits=3), None))
    for pass_name, run, bias in runs:
        launched.clear(), written.clear()
        with emu.checking(schedule="forward"):   # the block order the NaN partial below assumes
            got = run()
        plan = getattr(conv_tc, f"plan_{pass_name}")(g, dtype=F16, splits=3)
        sum_launches = () if pass_name == "wgrad" else (reduce.plan_split_sum_epilogue(got.size),)
        assert plan.splits == 3 and plan.launches[plan.main_index:] == (plan.main, *sum_launches)
        assert [kernel for kernel, _ in launched] == [launch.kernel for launch in plan.launches], pass_name
        main = plan.main_index   # after fprop's and dgrad's filter tiles
        if pass_name == "wgrad":   # the kernel writes the float16 output itself from its partials
            assert launched[main][1][3] is got
            partials = written[id(launched[main][1][4])].reshape((3,) + got.shape)
            # the block whose segment arrives last writes no partial (rank 2 in the forward block
            # order; the workspace starts NaN): its partial from a run in the reverse order
            assert np.isnan(partials[2]).all() and not np.isnan(partials[:2]).any()
            with emu.checking(schedule="reverse"):
                assert run().tobytes() == got.tobytes()
            partials[2] = written[id(launched[-1][1][4])].reshape((3,) + got.shape)[2]
        else:   # the sum writes the float16 output itself: no rounding after it
            assert launched[main + 1][1][2] is got
            partials = written[id(launched[main + 1][1][0])]   # what the sum reads: the kernel's partials
        assert partials.size == 3 * got.size
        partials = partials.reshape((3,) + got.shape)
        channel_bias = 0 if bias is None else bias.astype(f32)[:, None, None]
        finish = (lambda t: np.maximum(t, f32(0))) if pass_name == "fprop" else (lambda t: t)
        first_two = partials[0] + partials[1]
        want = finish(first_two + partials[2] + channel_bias).astype(F16)
        assert got.dtype == F16 and got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes(), pass_name
        if bias is None:
            twice = first_two.astype(F16).astype(f32) + partials[2]
        else:
            twice = (first_two + partials[2]).astype(F16).astype(f32) + channel_bias
        halves = partials.astype(F16)
        through_fp16 = finish((halves[0] + halves[1] + halves[2]).astype(f32) + channel_bias).astype(F16)
        for other in (finish(twice).astype(F16), through_fp16):
            assert not np.array_equal(other.view(np.uint16), want.view(np.uint16)), "the test must tell them apart"


@needs_emu
def test_nan_and_inf_propagate_and_fp16_overflow_gives_inf():
    """A NaN input poisons exactly the outputs whose windows hold it (ReLU passes NaN), an inf
    gives inf or NaN (inf * 0, inf - inf) where FP32 does, and a sum past 65504 (exact in FP32,
    from FP16 products) rounds to inf, as the NumPy oracle's do."""
    rng = np.random.default_rng(1640)
    x = rng.standard_normal((1, 5, 8, 8)).astype(F16)
    w = rng.standard_normal((6, 5, 3, 3)).astype(F16)
    x[0, 1, 2, 3], x[0, 3, 6, 6] = np.nan, np.inf
    x[0, 0, 0, 7], w[2, 0, :, :] = 300, 300      # 300 * 300 = 90000 > 65504
    g = conv_geometry(x.shape, w.shape, padding=1)
    for splits in (1, 2):
        got = conv_tc.fprop("emu", x, w, None, g, activation="relu", splits=splits)
        with np.errstate(over="ignore"):   # the oracle's FP32 -> FP16 rounding overflows on purpose
            want = F.conv2d(x, w, padding=1, activation="relu", backend="numpy")
        assert np.isnan(want).any() and np.isinf(want).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
        dy = rng.standard_normal(g.y_shape).astype(F16)
        dy[0, 4, 5, 5] = np.nan
        dx, dw, _ = F.conv2d_backward(dy, x, w, padding=1, bias=False, backend="numpy")
        np.testing.assert_array_equal(np.isnan(conv_tc.dgrad("emu", dy, w, g, splits=splits)), np.isnan(dx))
        np.testing.assert_array_equal(np.isnan(conv_tc.wgrad("emu", dy, x, g, splits=splits)), np.isnan(dw))


# (x shape, filter shape, stride, padding, dilation, splits) of the _residues kernel's test: P*Q of
# 49, 25, 35, 9, 81 and 1 (odd: every misalignment of a band's rows) and 18 (even: misalignments 0,
# 2, 4, 6), K of 8 (one channel a band), 16, 40, 136 and 1032 (a band's 17 and 129 channels: partial
# and two tiles), 1x1 and 3x3 filters with padding, stride and dilation, 1-3 splits, batches whose
# last step is partial
RESIDUE_LAYERS = [((3, 20, 7, 7), (40, 20, 1, 1), 1, 0, 1, 1), ((2, 9, 5, 5), (8, 9, 3, 3), 1, 1, 1, 2),
                  ((1, 130, 7, 5), (136, 130, 1, 1), 1, 0, 1, 3), ((2, 7, 6, 6), (1032, 7, 3, 3), 2, 1, 1, 2),
                  ((5, 12, 3, 3), (16, 12, 3, 3), 3, 1, 1, 1), ((2, 5, 9, 9), (16, 5, 3, 3), 1, 2, 2, 2),
                  ((3, 6, 3, 6), (24, 6, 1, 1), 1, 0, 1, 1)]


@needs_emu
@pytest.mark.parametrize("layer", RESIDUE_LAYERS, ids=lambda layer: "x".join(map(str, layer[0][2:] + layer[1])))
def test_wgrad_reads_dy_in_residue_bands_within_the_format_bound(layer):
    """The _residues kernel (conv_tc.RESIDUES_KERNEL): the output channels in 8 bands by their
    residue mod 8, whose NCHW rows of dy share one misalignment (k*P*Q mod 8 elements), each image's
    row read in aligned 16-byte chunks from its start rounded down. Against float64 within the
    format bound, and bit for bit under every schedule."""
    x_shape, w_shape, stride, padding, dilation, splits = layer
    rng = np.random.default_rng(sum(w_shape))
    x, w = rng.standard_normal(x_shape).astype(F16), rng.standard_normal(w_shape).astype(F16)
    g = conv_geometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation)
    dy = rng.standard_normal(g.y_shape).astype(F16)
    assert (g.P * g.Q) % 4   # (a multiple of 4 FP16 values would take the vector or the _pairs kernel)
    plan = conv_tc.plan_wgrad(g, dtype=F16, splits=splits, dy_path="residues")
    assert plan.main.kernel == conv_tc.RESIDUES_KERNEL   # splits: at most one a step
    dw = conv_tc.wgrad("emu", dy, x, g, splits=splits, dy_path="residues")
    (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, bias=False, stride=stride, padding=padding,
                                        dilation=dilation)
    assert_within_bound(dw, want, scale, g.N * g.P * g.Q + plan.splits, f"residues {layer}")
    for seed, schedule in enumerate(("forward", "reverse", "random")):
        with emu.checking(schedule=schedule, seed=seed, guard=True):
            again = conv_tc.wgrad("emu", dy, x, g, splits=splits, dy_path="residues")
        assert again.tobytes() == dw.tobytes(), schedule


@needs_emu
def test_wgrad_in_residue_bands_never_multiplies_a_neighbouring_rows_values():
    """A 16-byte chunk of a band's row holds elements of the rows beside it (other channels, the
    same image): the kernel zeroes them by the table's word masks before they are multiplied, so an
    inf or NaN there leaves this row's filter gradients finite (x at those places is zero: inf * 0
    would be NaN). Only the channels holding the non-finite values get non-finite gradients, as in
    the oracle; a dy that does not start on 16 bytes (a view) is copied first. 128 channels: 16 a
    band, every column of a lane's tile stored; rows of every band poisoned at their first and at
    their last pixel, so every word of a chunk is masked somewhere."""
    rng = np.random.default_rng(4811)
    x = rng.standard_normal((2, 16, 7, 7)).astype(F16)
    w = rng.standard_normal((128, 16, 1, 1)).astype(F16)
    g = conv_geometry(x.shape, w.shape)
    dy = rng.standard_normal(g.y_shape).astype(F16)
    firsts, lasts = list(range(41, 49)), list(range(90, 98))   # each 8 channels: one of every band
    dy[0, firsts, 0, 0], dy[1, lasts, 6, 6] = np.inf, -np.inf
    dy[1, 17, 3, 2] = np.nan   # a row's middle
    with np.errstate(invalid="ignore"):   # the oracle's dx meets inf - inf on purpose
        (_, want, _), _ = exact(F.conv2d_backward, dy, x, w, bias=False)
    poisoned = ~np.isfinite(want).all(axis=(1, 2, 3))
    assert poisoned.nonzero()[0].tolist() == sorted(firsts + lasts + [17])
    storage = np.empty(dy.size + 1, dtype=F16)
    view = storage[1:].reshape(dy.shape)   # 2 bytes past an aligned start
    view[...] = dy
    # the emulator stages the view 2 bytes off 16 as a GPU holds it: without the launcher's copy the
    # kernel's 16-byte loads below would fault (checked); the copy itself:
    copied = conv_tc._dy_operand(np, view, g, "residues")[0]
    assert memory_span(view)[0] % 16 and not memory_span(copied)[0] % 16 and copied.tobytes() == view.tobytes()
    assert conv_tc._dy_operand(np, copied, g, "residues")[0] is copied
    for operand in (dy, view):
        dw = conv_tc.wgrad("emu", operand, x, g, splits=2, dy_path="residues")
        assert (~np.isfinite(dw).all(axis=(1, 2, 3)) == poisoned).all()
        np.testing.assert_array_equal(np.isnan(dw), np.isnan(want))
        fine = ~poisoned
        _, scale = exact(F.conv2d_backward, np.where(np.isfinite(dy), dy, 0).astype(F16), x, w, bias=False)
        assert_within_bound(dw[fine], want[fine], scale[1][fine], g.N * g.P * g.Q + 2, "finite rows")


def test_residue_tables_hold_each_pixel_once_per_band():
    """The _residues kernel's tables (conv_tc.tables._residue_pixel_tables), cached per geometry:
    per band, every output pixel has one x entry (a tap mask) and one unmasked FP16 half in the word
    masks, each chunk's dy offset lies on 16 bytes, and their bytes are what the model counts
    (pixel_table_bytes)."""
    g = conv_geometry((3, 4, 7, 7), (16, 4, 3, 3), padding=1)
    dy_image = g.K * g.P * g.Q
    tables = conv_tc._cached_pixel_table("emu", None, g, dy_image, 32, True)
    assert conv_tc._cached_pixel_table("emu", None, g, dy_image, 32, True) is tables and not tables.flags.writeable
    steps = conv_tc.wgrad_tile_steps(g, F16, "residues")
    assert tables.shape == (8, steps, 4, 32) and tables.nbytes == conv_tc.pixel_table_bytes(g, F16, "residues")
    for band in range(8):
        words = tables[band, :, 3].reshape(-1, 8)[:, :4].view(np.uint32)
        assert {int(word) for word in np.unique(words)} <= {0, 0xFFFF, 0xFFFF0000, 0xFFFFFFFF}
        halves = (words & 0xFFFF != 0).sum() + (words >> 16 != 0).sum()
        assert halves == (tables[band, :, 1] != 0).sum() == g.N * g.P * g.Q
        assert (tables[band, :, 2] % 8 == 0).all()


def test_wgrad_picks_residue_bands_for_the_1x1_expansion_at_7x7(monkeypatch):
    """float16's 1x1 expansion at 7x7 (512 -> 2048 channels, batch 128): P*Q = 49 leaves dy's rows
    misaligned, and the planner (its modeled clocks on H100) reads them in residue bands rather than
    element by element (the _gather_m64 kernel, an mma every 10 instructions) or from a
    channel-major copy. The kernel is float16's alone and takes one group and K a multiple of 8 on
    the 128-channel tile; the planner refuses it otherwise."""
    from cnn_gpu import roofline
    g = conv_geometry((128, 512, 7, 7), (2048, 512, 1, 1))
    spec = roofline.spec("h100")
    assert conv_tc.wgrad_dy_path(g, F16, spec.sms) == "residues"
    assert conv_tc.plan_wgrad(g, dtype=F16, sms=spec.sms).main.kernel == conv_tc.RESIDUES_KERNEL
    seconds = {path: sum(e.seconds for e in roofline.model_conv("wgrad", g, "float16", spec, dy_path=path))
               for path in ("residues", "gather", "channel_major")}
    assert seconds["residues"] < min(seconds["gather"], seconds["channel_major"]), seconds
    # where it cannot run, the planner passes it over even when the model would put it first
    monkeypatch.setattr(conv_tc.wgrad_plans, "_wgrad_path_clocks",
                        lambda g, dtype, path, sms: 0.0 if path == "residues" else 1.0)
    grouped = conv_geometry((2, 16, 7, 7), (16, 8, 1, 1), groups=2)
    assert conv_tc.wgrad_dy_path(conv_geometry((2, 16, 7, 7), (16, 16, 1, 1)), F16, spec.sms) == "residues"
    for geometry, dtype, tile, match in ((g, np.float32, None, "float16"), (grouped, F16, None, "one group"),
                                         (conv_geometry((2, 16, 7, 7), (12, 16, 1, 1)), F16, None, "multiple of 8"),
                                         (g, F16, "tc_m64", "the tile tc")):
        with pytest.raises(ValueError, match=match):
            conv_tc.plan_wgrad(geometry, dtype=dtype, tile=tile, dy_path="residues")
        assert conv_tc.wgrad_dy_path(geometry, dtype, spec.sms, tile=tile) != "residues"


@needs_emu
def test_taps_outside_small_images_add_exact_zeros():
    """fprop and dgrad where most taps fall outside small images (padding past the filter,
    dilation, stride 2), with whole and partial 32-channel steps: the B loader reads a whole
    step's outside tap at pixel (0, 0) of its channels and zeroes the words, so a NaN there reaches
    exactly the outputs whose windows hold that pixel, and the rest keep the format bound."""
    rng = np.random.default_rng(1645)
    for cfg, tile in ((dict(n=2, c=45, h=4, w=5, k=40, r=3, s=3, stride=1, pad=3, dil=2, groups=1), "tc"),
                      (dict(n=1, c=64, h=3, w=3, k=64, r=3, s=3, stride=2, pad=2, dil=1, groups=2), "tc_m64")):
        x, w, b, g, dy = problem(rng, cfg)
        x[0, 0, 0, 0] = x[-1, -1, 0, 0] = dy[0, 0, 0, 0] = dy[-1, -1, 0, 0] = np.nan
        for got, (want, scale), terms, what in (
                (conv_tc.fprop("emu", x, w, b, g, tile=tile, splits=1), exact(F.conv2d, x, w, b, **options(cfg)),
                 g.C // g.groups * 9 + 2, "fprop"),
                (conv_tc.dgrad("emu", dy, w, g, tile=tile, splits=1),
                 [grads[0] for grads in exact(F.conv2d_backward, dy, x, w, bias=False, **options(cfg))],
                 g.K // g.groups * 9 + 1, "dgrad")):
            nan = np.isnan(want)
            assert nan.any() and not nan.all(), what
            np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what} {cfg}")
            assert_within_bound(got[~nan], want[~nan], scale[~nan], terms, f"{what} {cfg}")


@needs_emu
def test_filter_words_pair_consecutive_channels_low_half_first():
    """One output channel of 64 input channels: its filter tiles' 32 nonzero words pair channels
    2j and 2j + 1, 2j in the low half (tests/test_filter_tiles.py checks the whole layout)."""
    w = np.arange(1, 65, dtype=F16).reshape(1, 64, 1, 1)
    g = conv_geometry((1, 64, 2, 2), w.shape)
    plan = conv_tc.plan_fprop(g, dtype=F16, tile="tc", flat=False)
    words = conv_tc._filter_tiles("emu", w, g, plan)
    bits = w.view(np.uint16).astype(np.uint32).ravel()
    np.testing.assert_array_equal(np.sort(words[words != 0]), np.sort(bits[0::2] | bits[1::2] << 16))
    assert conv_tc.step_depth(F16) == 32 and conv_tc.step_depth(np.float32) == 16
    g = conv_geometry((2, 40, 8, 8), (8, 40, 3, 3), padding=1)
    fp16, fp32 = (conv_tc.plan_fprop(g, dtype=dtype, splits=1, flat=False) for dtype in (F16, np.float32))
    assert (fp16.chunk, fp32.chunk) == (9 * 2, 9 * 3)   # 40 channels: 2 steps of 32, 3 of 16, per tap
    flat16, flat32 = (conv_tc.plan_fprop(g, dtype=dtype, splits=1) for dtype in (F16, np.float32))
    assert (flat16.chunk, flat32.chunk) == (12, 23)     # the flattened 360 indices: steps of 32, of 16


@needs_emu
def test_swapped_half_pairs_are_caught(monkeypatch):
    """Planted: filter words with their two halves swapped (channel c + 1 multiplies input channel
    c) fail the bound the correct packing meets."""
    rng = np.random.default_rng(1650)
    cfg = dict(n=1, c=8, h=6, w=6, k=8, r=1, s=1, stride=1, pad=0, dil=1, groups=1)
    x, w, b, g, _ = problem(rng, cfg)
    want, scale = exact(F.conv2d, x, w, b)
    assert_within_bound(conv_tc.fprop("emu", x, w, b, g), want, scale, 8 + 1, "correct packing")
    packed = conv_tc._filter_tiles
    monkeypatch.setattr(conv_tc, "_filter_tiles", lambda *args: (lambda u: u >> 16 | u << 16)(packed(*args)))
    with pytest.raises(AssertionError, match="off by"):
        assert_within_bound(conv_tc.fprop("emu", x, w, b, g), want, scale, 8 + 1, "swapped halves")


@needs_emu
def test_simt_fallback_widens_runs_fp32_and_rounds_once(monkeypatch):
    """Where no FP16 tensor core runs a pass (a GPU below sm_80: conv_tc.supported is False; a
    wgrad filter with R + S > 32), float16 runs the float32 SIMT kernels on widened operands and
    rounds once: the same bound, no conv2d_tc launch."""
    rng = np.random.default_rng(1660)
    monkeypatch.setattr(conv_tc, "supported", lambda be, dtype=None: False)
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda be, family, dtype, *a, **k: (
        launched.append((family, np.dtype(dtype).name)), real_launch(be, family, dtype, *a, **k))[1])
    x, w, b = rng.standard_normal((2, 4, 7, 7)).astype(F16), rng.standard_normal((6, 4, 3, 3)).astype(F16), \
        rng.standard_normal(6).astype(F16)
    y = F.conv2d(x, w, b, padding=1, activation="relu", backend="emu")
    want, scale = exact(F.conv2d, x, w, b, padding=1)
    assert_within_bound(y, np.maximum(want, 0), scale, 4 * 9 + 1 + SPLITS, "SIMT fprop")
    dy = rng.standard_normal(y.shape).astype(F16)
    grads = F.conv2d_backward(dy, x, w, padding=1, backend="emu")
    wants, scales = exact(F.conv2d_backward, dy, x, w, padding=1)
    terms = (6 * 9 + SPLITS, 2 * 49 + SPLITS, 2 * 49)
    for got, want, scale, terms, what in zip(grads, wants, scales, terms, ("dx", "dw", "db")):
        assert_within_bound(got, want, scale, terms, f"SIMT {what}")
    yt = F.conv_transpose2d(dy, w, b[:4], padding=1, backend="emu")
    want, scale = exact(F.conv_transpose2d, dy, w, b[:4], padding=1)
    assert_within_bound(yt, want, scale, 6 * 9 + 1 + SPLITS, "SIMT conv_transpose2d")
    assert launched and all(dtype == "float32" for family, dtype in launched if family.startswith("conv2d"))
    assert not any(family == "conv2d_tc" for family, _ in launched)
    monkeypatch.undo()
    tall = conv_geometry((1, 2, 20, 20), (3, 2, 17, 16))          # R + S = 33: no room in a tap mask
    xs, ws = rng.standard_normal(tall.x_shape).astype(F16), rng.standard_normal(tall.w_shape).astype(F16)
    dys = rng.standard_normal(tall.y_shape).astype(F16)
    _, dw, _ = F.conv2d_backward(dys, xs, ws, bias=False, backend="emu")
    (_, want_dw, _), (_, scale_dw, _) = exact(F.conv2d_backward, dys, xs, ws, bias=False)
    assert_within_bound(dw, want_dw, scale_dw, tall.P * tall.Q + SPLITS, "SIMT wgrad of a 17x16 filter")
