"""Tensor-core convolutions on the emulator against the NumPy backend in the same mode: seeded
random sweeps of SWEEP configurations per op (conv2d forward, input, weight and bias gradients;
conv_transpose2d forward and its gradients) in the "tf32" math mode, and in float16.

Shapes are tiny (a few channels, images of a few pixels, batch 1-2) but not multiples of any tile:
K, channels and pixels straddle the tiles' edges (more than 64 rows, more than 16 channels, more than
128 pixels now and then), strides 1-3 give dgrad every stride phase (some with no tap), padding 0-2
and dilation 1-2 give wgrad partial tap masks, groups 1-3 (never depthwise: that runs the direct
kernels). The tf32 sweep rotates the plans through every TILES variant with 1-3 splits and leaves
every FORCED-th configuration to the planner through the public ops, as do the filters with
R + S > 32 whose wgrad falls back to the SIMT kernel; test_tc_sweep_reaches_every_plan checks that
the sweep really runs all of these. NaN and +-inf go through conv2d (through the fused bias + ReLU
epilogue too); the chunks rotate through the emulator's thread schedules with guard zones on.
"""
from __future__ import annotations

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import backend, check
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry, conv_transpose_geometry
from cnn_gpu.gpu import conv, conv_tc
from cnn_gpu.precision import round_to_tf32

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

SWEEP = 200          # configurations per op
CHUNKS = 4           # sweep slices, so pytest-xdist can spread them
OPS = {"conv": ("y", "dx", "dw", "db"), "transpose": ("y", "dx", "dw", "db")}

# Tolerance of the tf32 mode (the rule of `cnn-gpu check --math tf32`, cnn_gpu.check): a product of
# two TF32 numbers (11-bit significands) is exact in FP32 (22 <= 24 bits), so the emulated tensor
# cores and the oracle -- float64 sums of the same TF32 operands, exact to ~2^-53 -- differ only by
# the FP32 additions of the kernel (mma accumulation, split-K partial sums, the bias) and the final
# rounding. Each addition errs by at most 2^-24 times its partial sum, and a partial sum is at most
# sum|products|: the worst case is Kgemm * 2^-24 * sum|products|, but with zero-mean random inputs
# the partial sums stay far below sum|products| and the errors take random signs, so a few units
# of 2^-24 * sum|products| bound it whatever Kgemm; TF32_SUM_K = 32 units leaves room for the
# order of the sums, while an operand that misses its TF32 rounding (2^-12 relative per product)
# fails. sum|products| is the same op run on the operands' magnitudes (|bias| included). The
# NumPy backend in the tf32 mode (float32 GEMMs of the same rounded operands) is held to the same
# bound. The bias gradient is a plain FP32 sum of dy, unrounded: the same bound against sum|dy|.
TF32_TOLERANCE = check.TF32_SUM_K * check.FP32_UNIT_ROUNDOFF
# float16: FP16 products are exact in FP32 too, so the error before the output's rounding to FP16
# is the same accumulation-order bound; the rounding adds at most half an FP16 ulp of the result
# (one ulp of the reference allowed).
FLOAT16_ULPS = 1.0

# The plans the forced part of the sweep rotates through; None: the planner's choice through the
# public ops in the tf32 mode.
FORCED = [dict(tile=tile, splits=splits) for splits in (1, 2, 3) for tile in conv_tc.TILES] + [None]


def wgrad_forced(plan: dict) -> dict:
    """A forced plan as wgrad takes it: its tiles are the 128- and 64-channel ones (WGRAD_EFFICIENCY),
    so the 96-pixel fprop and dgrad tile runs the 128-channel wgrad one."""
    return {**plan, "tile": plan["tile"] if plan["tile"] in conv_tc.WGRAD_EFFICIENCY else "tc"}


# --- configurations -----------------------------------------------------------------------------

def _dimension(rng, taps, wide: bool, spread: int):
    """(size, stride, pad, dil) of one dimension with a non-empty output, the size at most `spread`
    - 1 past the least one: wide filters (R + S > 32) get padding of about half their extent."""
    stride, dil = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    pad = dil * (taps - 1) // 2 if wide else int(rng.integers(0, 3))
    least = max(1, dil * (taps - 1) + 1 - 2 * pad)
    return int(rng.integers(least, least + spread)), stride, pad, dil


def tc_config(rng, index: int) -> dict:
    """A conv2d configuration, mostly with images a few pixels past the least: every 5th has a
    batch of two larger ones, every 15th 17-20 or 65-70 channels (two or five reduction steps of
    16; dgrad's rows), every 16th 65-70 output channels (two 64-row tiles, one ragged 128-row
    tile), both in one group; every 100th a filter with R + S > 32 (one image, a few pixels)."""
    wide = index % 100 == 25
    many_channels, many_outputs = index % 15 == 4, index % 16 == 5
    groups = 1 if wide or many_channels or many_outputs else int(rng.choice([1, 1, 1, 2, 3]))
    if many_channels:   # past one 16-deep step; every other time past dgrad's 64-row tile too
        cg = int(rng.integers(65, 71)) if index % 30 == 4 else int(rng.integers(17, 21))
    else:
        cg = int(rng.integers(1 if groups == 1 else 2, 7))
    kg = int(rng.integers(65, 71)) if many_outputs else int(rng.integers(1, 13))
    if wide:
        cg, kg = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        long = int(rng.integers(30, 33))            # a long thin filter: few taps for the emulator
        R, S = long, 33 - long + int(rng.integers(0, 2))
        if index % 200 >= 100:
            R, S = S, R
    else:   # mostly up to 3x3 (the emulator's time goes with the taps); every 11th up to 5x5
        taps = 6 if index % 11 == 7 else 4
        R, S = int(rng.integers(1, taps)), int(rng.integers(1, taps))
    large = index % 5 == 2      # images of up to 11 x 11 pixels, batch 2: more than 128 pixels
    spread = 3 if wide else 11 if large else 6
    H, sh, ph, dh = _dimension(rng, R, wide, spread)
    W, sw, pw, dw = _dimension(rng, S, wide, spread)
    return dict(N=2 if large else 1 if wide else int(rng.integers(1, 3)), C=groups * cg, H=H, W=W, K=groups * kg, R=R, S=S, stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), groups=groups, wide=wide)


def transpose_config(rng, index: int) -> dict:
    """A conv_transpose2d configuration: x (N, Cin, Hin, Win), weight (Cin, Cout/groups, R, S)."""
    while True:
        c = tc_config(rng, index)
        (sh, sw), (dh, dw) = c["stride"], c["dilation"]
        most = 3 if c["wide"] else 7
        cfg = dict(N=c["N"], Cin=c["K"], Hin=int(rng.integers(1, most + 1)), Win=int(rng.integers(1, most + 1)),
                   Coutg=c["C"] // c["groups"], R=c["R"], S=c["S"], stride=c["stride"], padding=c["padding"],
                   output_padding=(int(rng.integers(0, max(sh, dh))), int(rng.integers(0, max(sw, dw)))),
                   dilation=c["dilation"], groups=c["groups"], wide=c["wide"])
        try:
            geometry("transpose", cfg)
        except ValueError:
            continue   # padding larger than the output: draw again
        return cfg


def geometry(kind, cfg):
    if kind == "transpose":
        return conv_transpose_geometry((cfg["N"], cfg["Cin"], cfg["Hin"], cfg["Win"]),
                                       (cfg["Cin"], cfg["Coutg"], cfg["R"], cfg["S"]), cfg["stride"], cfg["padding"],
                                       cfg["output_padding"], cfg["dilation"], cfg["groups"])
    return conv_geometry((cfg["N"], cfg["C"], cfg["H"], cfg["W"]), (cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]),
                         cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])


# Non-finite value classes of the conv2d sweep by position in a chunk, as in test_kernels_conv: NaN
# through the fused bias + ReLU epilogue (1) and a plain convolution (8), +-inf through the
# epilogue (6). Not for the transposed ops (numpy multiplies a non-finite input by the padding's
# zeros where the kernels add no term).
VALUE_CLASSES = {1: "nan", 6: "inf", 8: "nan"}


def sweep(kind: str, chunk: int) -> list:
    """Slice `chunk` of the SWEEP seeded configurations of `kind`, each with its plan ("forced", a
    FORCED entry) and, for conv, its value class and whether ReLU is fused."""
    rng = np.random.default_rng({"conv": 21, "transpose": 22}[kind])
    make = transpose_config if kind == "transpose" else tc_config
    configs = [make(rng, index) for index in range(SWEEP)]
    for index, cfg in enumerate(configs):
        cfg["forced"] = None if cfg["wide"] else FORCED[index % len(FORCED)]
    chunked = configs[chunk::CHUNKS]
    for i, cfg in enumerate(chunked):
        cfg["values"] = VALUE_CLASSES.get(i % 10, "normal") if kind == "conv" else "normal"
        cfg["relu"] = kind == "conv" and i % 10 in (1, 3, 6)
    return chunked


def all_configs(kind: str) -> list:
    return [cfg for chunk in range(CHUNKS) for cfg in sweep(kind, chunk)]


def arrays(kind, cfg, dtype, seed):
    """(x, weight, bias, dy) of the op, random normal; NaN or +-inf planted in x by value class."""
    rng = np.random.default_rng(seed)
    g = geometry(kind, cfg)
    x_shape, dy_shape = (g.y_shape, g.x_shape) if kind == "transpose" else (g.x_shape, g.y_shape)
    bias_size = g.C if kind == "transpose" else g.K
    x, w, b, dy = (rng.standard_normal(shape).astype(dtype) for shape in (x_shape, g.w_shape, (bias_size,), dy_shape))
    flat = x.reshape(-1)
    if cfg["values"] == "nan":
        flat[rng.integers(flat.size)] = np.nan
        b[0] = np.nan
    elif cfg["values"] == "inf":
        flat[rng.integers(flat.size)] = np.inf
        flat[rng.integers(flat.size)] = -np.inf
    return g, x, w, b, dy


def kwargs(kind, cfg):
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    if kind == "transpose":
        kw["output_padding"] = cfg["output_padding"]
    return kw


# --- the ops on each backend --------------------------------------------------------------------

def run_public(kind, cfg, x, w, b, dy, be):
    """(y, dx, dw, db) through cnn_gpu.functional on `be` (the caller picks the mode and dtype)."""
    kw = kwargs(kind, cfg)
    if kind == "transpose":
        return (F.conv_transpose2d(x, w, b, **kw, backend=be),) + F.conv_transpose2d_backward(dy, x, w, **kw, backend=be)
    y = F.conv2d(x, w, b, **kw, activation="relu" if cfg["relu"] else None, backend=be)
    return (y,) + F.conv2d_backward(dy, x, w, **kw, backend=be)


def run_forced(kind, cfg, g, x, w, b, dy):
    """(y, dx, dw, db) through the tensor-core launchers with the configuration's forced plan
    (conv_transpose2d as functional.conv runs it: its forward is dgrad, its backward fprop and
    wgrad with x and dy swapped)."""
    plan = cfg["forced"]
    if kind == "transpose":
        y = conv_tc.dgrad("emu", x, w, g, bias=b, **plan)
        return y, conv_tc.fprop("emu", dy, w, None, g, **plan), conv_tc.wgrad("emu", x, dy, g, **wgrad_forced(plan)), \
            conv.bgrad("emu", dy)
    y = conv_tc.fprop("emu", x, w, b, g, activation="relu" if cfg["relu"] else None, **plan)
    return y, conv_tc.dgrad("emu", dy, w, g, **plan), conv_tc.wgrad("emu", dy, x, g, **wgrad_forced(plan)), \
        conv.bgrad("emu", dy)


def oracle(kind, cfg, x, w, b, dy, operands):
    """(want, sum|products|) per output: the op in float64 on numpy of the operands as `operands`
    makes them (TF32 rounding, or none for float16), the bias gradient of dy as it is."""
    b, plain_dy = b.astype(np.float64), dy.astype(np.float64)
    x, w, dy = (operands(a).astype(np.float64) for a in (x, w, dy))
    want = run_public(kind, cfg, x, w, b, dy, "numpy")[:3] + (plain_dy.sum(axis=(0, 2, 3)),)
    magnitude = run_public(kind, cfg, np.abs(x), np.abs(w), np.abs(b), np.abs(dy), "numpy")[:3] + \
        (np.abs(plain_dy).sum(axis=(0, 2, 3)),)
    return want, magnitude


def assert_within(got, want, magnitude, dtype, what):
    """Same dtype and shape; NaN and infinities where the reference has them; elsewhere
    |got - want| <= TF32_TOLERANCE * sum|products| (plus FLOAT16_ULPS ulps of want for float16)."""
    got = np.asarray(got)
    assert got.dtype == dtype and got.shape == want.shape, f"{what}: {got.dtype} {got.shape} vs {want.shape}"
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=f"{what}: non-finite values differ")
    bound = TF32_TOLERANCE * magnitude[finite]
    if dtype == np.float16:
        bound += FLOAT16_ULPS * np.spacing(np.abs(want[finite]).astype(np.float16)).astype(np.float64)
    error = np.abs(got[finite].astype(np.float64) - want[finite])
    bad = ~(error <= bound)    # a NaN error fails
    if bad.any():
        worst = int(np.argmax(np.where(bad, error / np.maximum(bound, 1e-300), 0)))
        raise AssertionError(f"{what}: {int(bad.sum())} elements past the bound, worst error {error[worst]:.3g} "
                             f"vs bound {bound[worst]:.3g}")


# --- tf32 ---------------------------------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the oracle's inf - inf
def test_tf32_sweep_matches_numpy_in_the_tf32_mode(kind, chunk):
    from cnn_gpu import emu
    with emu.checking(schedule=emu.SCHEDULES[chunk % len(emu.SCHEDULES)], seed=chunk, guard=True):
        for i, cfg in enumerate(sweep(kind, chunk)):
            g, x, w, b, dy = arrays(kind, cfg, np.float32, seed=1000 * chunk + i)
            want, magnitude = oracle(kind, cfg, x, w, b, dy, round_to_tf32)
            with cnn_gpu.math_mode("tf32"):
                on_numpy = run_public(kind, cfg, x, w, b, dy, "numpy")
                on_emu = (run_public(kind, cfg, x, w, b, dy, "emu") if cfg["forced"] is None
                          else run_forced(kind, cfg, g, x, w, b, dy))
            for name, got_emu, got_numpy, ref, scale in zip(OPS[kind], on_emu, on_numpy, want, magnitude):
                assert_within(got_emu, ref, scale, np.float32, f"emu {name} {kind} {cfg}")
                assert_within(got_numpy, ref, scale, np.float32, f"numpy {name} {kind} {cfg}")


def _plans(kind, cfg):
    """(pass, tile, split) of the fprop, dgrad and wgrad launches a configuration makes (wgrad on
    the SIMT kernel: tile "simt")."""
    g = geometry(kind, cfg)
    forced = cfg["forced"] or {}
    plans = [conv_tc.plan_fprop(g, **forced), conv_tc.plan_dgrad(g, **forced)]
    if conv_tc.wgrad_supported(g):
        plans.append(conv_tc.plan_wgrad(g, **(wgrad_forced(forced) if forced else {})))
    return {(plan.pass_name, plan.tile, plan.splits > 1) for plan in plans} | \
        (set() if conv_tc.wgrad_supported(g) else {("wgrad", "simt", False)})


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_tc_sweep_reaches_every_plan(kind):
    configs = all_configs(kind)
    assert len(configs) == SWEEP
    seen = set().union(*(_plans(kind, cfg) for cfg in configs))
    for pass_name in ("fprop", "dgrad", "wgrad"):
        for tile in conv_tc.WGRAD_EFFICIENCY if pass_name == "wgrad" else conv_tc.TILES:
            for split in (False, True):
                assert (pass_name, tile, split) in seen, (kind, pass_name, tile, split)
    assert ("wgrad", "simt", False) in seen                     # R + S > 32: the SIMT fallback
    # fprop over the flattened reduction (few channels per group) and over taps, both tiles
    kernels = {conv_tc.plan_fprop(geometry(kind, cfg), **(cfg["forced"] or {})).main.kernel for cfg in configs}
    assert kernels >= {base + suffix for base in ("conv2d_fprop_tc", conv_tc.FLAT_KERNEL) for suffix in ("", "_m64")}
    # wgrad's dy in vectors from NCHW, in pairs of 8-byte vectors (the _pairs kernel) and, where a
    # lane's pixels straddle images, by the _gather kernels (float32 with small filters; float16 on
    # the 64-row tile), from the channel-major copy (float16 on a forced 128-row tile) or in residue
    # bands (float16, K a multiple of 8)
    geometries = [geometry(kind, cfg) for cfg in configs]
    for dtype, straddling in ((np.float32, {"gather"}), (np.float16, {"gather", "channel_major", "residues"})):
        paths = {conv_tc.wgrad_dy_path(g, dtype, tile=(cfg["forced"] or {}).get("tile"))
                 for g, cfg in zip(geometries, configs) if conv_tc.wgrad_supported(g)}
        assert paths >= {"vector", "pairs"} | straddling, (dtype, paths)
    # wgrad reading x by filter rows (the _rows kernel: 3-tap rows at column stride 1, Q a multiple
    # of 4 TF32 pixels); float16's needs Q a multiple of 8, which its own tests cover
    assert any(conv_tc.plan_wgrad(g).main.kernel == conv_tc.TAP_ROWS_KERNEL for g in geometries
               if conv_tc.wgrad_supported(g))
    assert sum(cfg["forced"] is None for cfg in configs) >= SWEEP // len(FORCED)
    # dgrad's stride phases: every stride in both dimensions, phases that no tap reaches
    for axis in (0, 1):
        assert {g.stride[axis] for g in geometries} == {1, 2, 3}
        assert {g.dilation[axis] for g in geometries} == {1, 2}
        assert {g.padding[axis] for g in geometries} >= {0, 1, 2}
    assert any(not rows or not cols for g in geometries for rows, cols in
               zip(conv_tc.dgrad_phases(g).rows, conv_tc.dgrad_phases(g).cols))
    assert any(len(conv_tc.dgrad_phases(g).phases) == 9 for g in geometries)
    # wgrad's tap masks: some taps of some output rows and columns fall into the padding
    full = [(1 << g.R) - 1 for g in geometries]
    assert any(int(min(conv_tc.tables._tap_masks(np, g)[0])) != f for g, f in zip(geometries, full) if conv_tc.wgrad_supported(g))
    # tile edges: ragged rows (fprop's K, dgrad's C) past one 64-row tile, channels past one step,
    # pixels past one 128-wide tile (and not a multiple of it), groups, batch 1 and 2
    assert any(g.K // g.groups > 64 for g in geometries) and any(g.C // g.groups > 64 for g in geometries)
    assert any(16 < g.C // g.groups < 64 for g in geometries)
    pixels = [g.N * max(g.P * g.Q, g.H * g.W) for g in geometries]     # fprop's, or dgrad's at stride 1
    assert any(p > conv_tc.TILE_N and p % conv_tc.TILE_N for p in pixels)
    assert {g.groups for g in geometries} == {1, 2, 3} and {g.N for g in geometries} == {1, 2}
    assert not any(g.is_depthwise for g in geometries)


def test_conv_sweep_holds_non_finite_values_through_the_fused_epilogue():
    classes = {(cfg["values"], cfg["relu"]) for cfg in all_configs("conv")}
    assert {("nan", True), ("inf", True), ("nan", False), ("normal", False), ("normal", True)} <= classes


def test_the_tolerance_catches_an_operand_that_misses_its_tf32_rounding():
    """The bound is tight enough: fprop of operands truncated (not rounded) to TF32 fails it."""
    cfg = all_configs("conv")[0]
    g, x, w, b, dy = arrays("conv", dict(cfg, values="normal"), np.float32, seed=3)
    want, magnitude = oracle("conv", cfg, x, w, b, dy, round_to_tf32)
    truncated = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    y = F.conv2d(truncated.astype(np.float64), round_to_tf32(w).astype(np.float64), b.astype(np.float64),
                 **kwargs("conv", cfg), activation="relu" if cfg["relu"] else None, backend="numpy")
    with pytest.raises(AssertionError, match="past the bound"):
        assert_within(y.astype(np.float32), want[0], magnitude[0], np.float32, "truncated")


# --- float16 ------------------------------------------------------------------------------------

def _float16(a):
    return a.astype(np.float16)


@needs_emu
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the oracle's inf - inf
def test_float16_sweep_matches_numpy(kind, chunk):
    """The same configurations in float16 through the public ops (the planner's choices): FP16
    operands, FP32 sums, each output rounded to FP16 once, against the float64 sums of the FP16
    operands; the NumPy backend (float32 math, one rounding) is held to the same bound."""
    from cnn_gpu import emu
    with emu.checking(schedule=emu.SCHEDULES[chunk % len(emu.SCHEDULES)], seed=chunk, guard=True):
        for i, cfg in enumerate(sweep(kind, chunk)):
            g, x, w, b, dy = arrays(kind, cfg, np.float16, seed=1000 * chunk + i)
            want, magnitude = oracle(kind, cfg, x, w, b, dy, _float16)
            on_numpy = run_public(kind, cfg, x, w, b, dy, "numpy")
            on_emu = run_public(kind, cfg, x, w, b, dy, "emu")
            for name, got_emu, got_numpy, ref, scale in zip(OPS[kind], on_emu, on_numpy, want, magnitude):
                assert_within(got_emu, ref, scale, np.float16, f"emu {name} {kind} {cfg}")
                assert_within(got_numpy, ref, scale, np.float16, f"numpy {name} {kind} {cfg}")
