"""The convolution kernels (kernels/conv2d_*.cu through cnn_gpu.gpu.conv) against the NumPy backend.

Seeded random sweeps of >= 200 configurations per op (stride 1-3, padding 0-2, dilation 1-2,
groups incl. depthwise, non-square, batch 1, C = 1, sizes that are no multiple of any tile,
kernels as large as the padded input) run on the emulator in float64 and float32 through the
public cnn_gpu.functional calls; the same sweep runs on "cuda" when a GPU is present. Each kernel
variant (large/small tile, split-K, depthwise, stride phases) also runs under the emulator's
reverse and random thread schedules with guard zones, and must give bit-identical results.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry, conv_transpose_geometry
from cnn_gpu.gpu import _plan_cache, conv
from helpers import assert_close, emulate_arch

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

SWEEP = 200          # configurations per op and dtype
CHUNKS = 4           # sweep slices, so pytest-xdist can spread them


# --- configurations -----------------------------------------------------------------------------

def _spatial(rng, taps, smallest: bool):
    """(size, kernel, stride, pad, dil) of one dimension with a non-empty output; `smallest` makes
    the dilated kernel exactly as large as the padded input."""
    stride, pad, dil = int(rng.integers(1, 4)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
    least = max(1, dil * (taps - 1) + 1 - 2 * pad)
    size = least if smallest else int(rng.integers(least, least + 9))
    return size, stride, pad, dil


def conv_config(rng, index: int, depthwise: bool = False) -> dict:
    """A conv2d configuration; every 7th has the kernel as large as the padded input."""
    smallest = index % 7 == 3
    if depthwise:
        groups = int(rng.integers(2, 6))
        cg, kg = 1, int(rng.integers(1, 4))
    else:
        groups = int(rng.choice([1, 1, 1, 2, 3]))
        cg, kg = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    R, S = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    H, sh, ph, dh = _spatial(rng, R, smallest)
    W, sw, pw, dw = _spatial(rng, S, smallest and index % 2 == 0)
    return dict(N=int(rng.choice([1, 1, 2, 3])), C=groups * cg, H=H, W=W, K=groups * kg, R=R, S=S,
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)


def transpose_config(rng, index: int, depthwise: bool = False) -> dict:
    """A conv_transpose2d configuration (x (N, Cin, Hin, Win), weight (Cin, Cout/groups, R, S))."""
    while True:
        c = conv_config(rng, index, depthwise)
        sh, sw = c["stride"]
        dh, dw = c["dilation"]
        out_pad = (int(rng.integers(0, max(sh, dh))), int(rng.integers(0, max(sw, dw))))
        # the transposed op maps the conv's output back; its input is (N, K, Hin, Win)
        cfg = dict(N=c["N"], Cin=c["K"], Hin=int(rng.integers(1, 7)), Win=int(rng.integers(1, 7)),
                   Coutg=c["C"] // c["groups"], R=c["R"], S=c["S"], stride=c["stride"], padding=c["padding"],
                   output_padding=out_pad, dilation=c["dilation"], groups=c["groups"])
        try:
            transpose_geometry(cfg)
        except ValueError:
            continue   # padding larger than the output: draw again
        return cfg


def transpose_geometry(cfg):
    return conv_transpose_geometry((cfg["N"], cfg["Cin"], cfg["Hin"], cfg["Win"]),
                                   (cfg["Cin"], cfg["Coutg"], cfg["R"], cfg["S"]), cfg["stride"], cfg["padding"],
                                   cfg["output_padding"], cfg["dilation"], cfg["groups"])


def sweep(kind: str, chunk: int):
    """Slice `chunk` of the 200 seeded configurations of `kind`."""
    rng = np.random.default_rng({"conv": 11, "transpose": 12, "depthwise": 13, "depthwise_t": 14}[kind])
    make = transpose_config if kind in ("transpose", "depthwise_t") else conv_config
    configs = [make(rng, i, depthwise=kind.startswith("depthwise")) for i in range(SWEEP)]
    chunked = configs[chunk::CHUNKS]
    if kind in ("conv", "depthwise"):
        for i, cfg in enumerate(chunked):   # i % 10 in (1, 6) also fuses ReLU (check_sweep: i % 5 == 1)
            cfg["values"] = VALUE_CLASSES.get(i % 10, "normal")
    return chunked


# Non-finite value classes of the conv2d sweeps, by position in a chunk: NaN through the fused
# bias+ReLU epilogue (1) and through a plain convolution (8), +-inf through the epilogue (6).
# Not for the transposed ops: where a weight tap reaches no output pixel, numpy (as PyTorch)
# multiplies a non-finite input by padding zeros (NaN) while the kernels add no term (0).
VALUE_CLASSES = {1: "nan", 6: "inf", 8: "nan"}


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _plant_values(rng, x, bias, values: str) -> None:
    """'nan': a NaN in x and in bias[0] (a whole output channel NaN); 'inf': +inf and -inf in x
    (outputs inf, or NaN where both meet); 'normal': nothing."""
    flat = x.reshape(-1)
    if values == "nan":
        flat[rng.integers(flat.size)] = np.nan
        bias[0] = np.nan
    elif values == "inf":
        flat[rng.integers(flat.size)] = np.inf
        flat[rng.integers(flat.size)] = -np.inf


def conv_arrays(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = conv_geometry((cfg["N"], cfg["C"], cfg["H"], cfg["W"]), (cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]),
                      cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    x, w, b, dy = (_random(rng, shape, dtype) for shape in (g.x_shape, g.w_shape, (g.K,), g.y_shape))
    _plant_values(rng, x, b, cfg.get("values", "normal"))
    return g, x, w, b, dy


def transpose_arrays(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = transpose_geometry(cfg)
    x = _random(rng, g.y_shape, dtype)                       # the transposed op's input
    w = _random(rng, (cfg["Cin"], cfg["Coutg"], cfg["R"], cfg["S"]), dtype)
    b, dy = _random(rng, (g.C,), dtype), _random(rng, g.x_shape, dtype)
    _plant_values(rng, x, b, cfg.get("values", "normal"))
    return g, x, w, b, dy


def conv_kwargs(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])


def transpose_kwargs(cfg):
    return dict(conv_kwargs(cfg), output_padding=cfg["output_padding"])


# --- comparison ---------------------------------------------------------------------------------

def run_conv_ops(cfg, dtype, be, to_device=lambda a: a, activation=None):
    """conv2d forward and backward on `be` and on numpy: [(name, got, want), ...]."""
    g, x, w, b, dy = conv_arrays(cfg, dtype)
    kw = conv_kwargs(cfg)
    want_y = F.conv2d(x, w, b, **kw, activation=activation, backend="numpy")
    want = F.conv2d_backward(dy, x, w, **kw, backend="numpy")
    x_, w_, b_, dy_ = (to_device(a) for a in (x, w, b, dy))
    got_y = F.conv2d(x_, w_, b_, **kw, activation=activation, backend=be)
    got = F.conv2d_backward(dy_, x_, w_, **kw, backend=be)
    return [("y", got_y, want_y), ("dx", got[0], want[0]), ("dw", got[1], want[1]), ("db", got[2], want[2])]


def run_transpose_ops(cfg, dtype, be, to_device=lambda a: a):
    g, x, w, b, dy = transpose_arrays(cfg, dtype)
    kw = transpose_kwargs(cfg)
    want_y = F.conv_transpose2d(x, w, b, **kw, backend="numpy")
    want = F.conv_transpose2d_backward(dy, x, w, **kw, backend="numpy")
    x_, w_, b_, dy_ = (to_device(a) for a in (x, w, b, dy))
    got_y = F.conv_transpose2d(x_, w_, b_, **kw, backend=be)
    got = F.conv_transpose2d_backward(dy_, x_, w_, **kw, backend=be)
    return [("y", got_y, want_y), ("dx", got[0], want[0]), ("dw", got[1], want[1]), ("db", got[2], want[2])]


# The sweep rotates the GEMM plans through every tile variant and split count (1-3; the plans
# clamp it to what the reduction allows), and leaves every 13th configuration to the picker.
FORCED = [dict(tile=tile, splits=splits) for splits in (1, 2, 3) for tile in conv.TILES[np.dtype(np.float32)]]
FORCED.append({})


def forced_plan(index: int) -> dict:
    return FORCED[index % len(FORCED)]


def check_sweep(kind, chunk, dtype, be, to_device=lambda a: a):
    for i, cfg in enumerate(sweep(kind, chunk)):
        with conv.forced(**forced_plan(chunk + CHUNKS * i)):
            if kind in ("transpose", "depthwise_t"):
                results = run_transpose_ops(cfg, dtype, be, to_device)
            else:
                results = run_conv_ops(cfg, dtype, be, to_device, activation="relu" if i % 5 == 1 else None)
        for name, got, want in results:
            assert_close(got, want, dtype, f"{kind} {name} {cfg} {forced_plan(chunk + CHUNKS * i)}")


def test_sweeps_cover_the_required_cases():
    """The sweep really holds the shapes the issue asks for (and enough of them)."""
    convs = [c for k in range(CHUNKS) for c in sweep("conv", k)]
    transposed = [c for k in range(CHUNKS) for c in sweep("transpose", k)]
    depthwise = [c for k in range(CHUNKS) for c in sweep("depthwise", k)]
    assert len(convs) == len(transposed) == len(depthwise) == SWEEP
    for key, values in (("stride", {1, 2, 3}), ("padding", {0, 1, 2}), ("dilation", {1, 2})):
        assert {v for c in convs for v in c[key]} == values
    assert any(c["N"] == 1 for c in convs) and any(c["C"] == 1 for c in convs)
    assert any(c["groups"] > 1 for c in convs) and any(c["H"] != c["W"] for c in convs)
    geometries = [conv_geometry((c["N"], c["C"], c["H"], c["W"]), (c["K"], c["C"] // c["groups"], c["R"], c["S"]),
                                c["stride"], c["padding"], c["dilation"], c["groups"]) for c in convs]
    assert any(g.P == 1 and g.H + 2 * g.padding[0] == g.dilation[0] * (g.R - 1) + 1 for g in geometries)
    assert all(conv_geometry((c["N"], c["C"], c["H"], c["W"]), (c["K"], 1, c["R"], c["S"]), c["stride"],
                             c["padding"], c["dilation"], c["groups"]).is_depthwise for c in depthwise)
    assert any(max(c["output_padding"]) > 0 for c in transposed)


def _sweep_plans(kind):
    """(pass, tile, splits) of every GEMM launch the sweep of `kind` makes (fp32 and fp64 alike)."""
    seen = set()
    for index in range(SWEEP):
        chunk, i = index % CHUNKS, index // CHUNKS
        cfg = sweep(kind, chunk)[i]
        g = transpose_geometry(cfg) if kind == "transpose" else conv_arrays(cfg, np.float32)[0]
        with conv.forced(**forced_plan(index)):
            for plan in (conv.plan_fprop(g, np.float32), conv.plan_dgrad(g, np.float32),
                         conv.plan_wgrad(g, np.float32)):
                seen.add((plan.pass_name, plan.tile, plan.splits > 1))
    return seen


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_sweep_reaches_every_tile_variant_and_split_k(kind):
    seen = _sweep_plans(kind)
    for pass_name in ("fprop", "dgrad", "wgrad"):
        for tile in conv.TILES[np.dtype(np.float32)]:
            assert (pass_name, tile, False) in seen, f"{kind} sweep never runs {pass_name} {tile} unsplit"
            assert (pass_name, tile, True) in seen, f"{kind} sweep never runs {pass_name} {tile} with split-K"


def test_conv_sweeps_hold_non_finite_values_through_the_fused_epilogue():
    for kind in ("conv", "depthwise"):
        for chunk in range(CHUNKS):
            classes = {(cfg["values"], i % 5 == 1) for i, cfg in enumerate(sweep(kind, chunk))}
            assert {("nan", True), ("inf", True), ("nan", False), ("normal", False)} <= classes, (kind, chunk)


# --- emulator sweeps ----------------------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("kind", ["conv", "transpose", "depthwise", "depthwise_t"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the oracle's inf - inf
def test_emu_sweep_matches_numpy(kind, chunk, dtype):
    """Guard zones on every array; the chunks rotate through the three thread schedules."""
    from cnn_gpu import emu
    with emu.checking(schedule=emu.SCHEDULES[chunk % len(emu.SCHEDULES)], seed=chunk, guard=True):
        check_sweep(kind, chunk, dtype, "emu")


# --- every kernel variant, and thread schedules -------------------------------------------------

# (name, configuration, launcher overrides): "large", "tall", "wide" and "small" force a tile
# variant with several ragged tiles per dimension, and split-K (fprop, dgrad and wgrad); "phases" has stride phases of unequal size,
# so whole dgrad blocks of the smaller phases exit early; "depthwise" splits its wgrad.
VARIANTS = [
    ("large", dict(N=2, C=130, H=9, W=16, K=135, R=3, S=2, stride=(1, 2), padding=(1, 0), dilation=(1, 1),
                   groups=1), dict(tile="large", splits=3)),
    ("tall", dict(N=2, C=70, H=9, W=8, K=140, R=3, S=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                  groups=1), dict(tile="tall", splits=1)),
    ("wide", dict(N=3, C=66, H=8, W=9, K=70, R=2, S=2, stride=(2, 2), padding=(1, 0), dilation=(1, 1),
                  groups=1), dict(tile="wide", splits=2)),
    ("small", dict(N=2, C=132, H=7, W=10, K=140, R=2, S=3, stride=(2, 1), padding=(0, 2), dilation=(2, 1),
                   groups=2), dict(tile="small", splits=2)),
    ("phases", dict(N=4, C=5, H=11, W=9, K=4, R=4, S=5, stride=(3, 2), padding=(2, 1), dilation=(2, 2), groups=1),
     dict(tile=None, splits=None)),
    ("depthwise", dict(N=2, C=3, H=8, W=7, K=6, R=3, S=4, stride=(2, 3), padding=(1, 2), dilation=(1, 2), groups=3),
     dict(splits=2)),
]


def run_variant(cfg, dtype, overrides):
    """fprop (bias + ReLU), dgrad, wgrad and bgrad of one configuration on emu with overrides."""
    g, x, w, b, dy = conv_arrays(cfg, dtype, seed=5)
    tile = {} if g.is_depthwise else {"tile": overrides.get("tile"), "splits": overrides.get("splits")}
    return {"y": conv.fprop("emu", x, w, b, g, activation="relu", **tile),
            "dx": conv.dgrad("emu", dy, w, g, **tile),
            "dw": conv.wgrad("emu", dy, x, g, **dict(tile, splits=overrides.get("splits"))),
            "db": conv.bgrad("emu", dy)}


def numpy_variant(cfg, dtype):
    g, x, w, b, dy = conv_arrays(cfg, dtype, seed=5)
    kw = conv_kwargs(cfg)
    y = F.conv2d(x, w, b, **kw, activation="relu", backend="numpy")
    dx, dw, db = F.conv2d_backward(dy, x, w, **kw, backend="numpy")
    return {"y": y, "dx": dx, "dw": dw, "db": db}


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,cfg,overrides", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_emu_kernel_variants_under_every_schedule(name, cfg, overrides, dtype):
    from cnn_gpu import emu
    want = numpy_variant(cfg, dtype)
    runs = {}
    for schedule in ("forward", "reverse", "random"):
        with emu.checking(schedule=schedule, seed=7, guard=True):
            runs[schedule] = run_variant(cfg, dtype, overrides)
    for key in want:
        assert_close(runs["forward"][key], want[key], dtype, f"{name} {key}")
        for schedule in ("reverse", "random"):
            np.testing.assert_array_equal(runs[schedule][key], runs["forward"][key],
                                          err_msg=f"{name} {key} under {schedule}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_emu_register_staged_loop_matches_the_cp_async_ring_bit_for_bit(dtype, monkeypatch):
    """The GEMM kernels' two main loops (kernels/igemm.cuh): sm_80 and newer copy with cp.async into a
    ring, sm_70/75 stage through registers; both sum the same products in the same order, so the
    register path (emulated as sm_70) under every schedule reproduces the ring's (sm_80) bits."""
    from cnn_gpu import emu
    gemm = [v for v in VARIANTS if v[2].get("tile")]
    emulate_arch(monkeypatch, 800)
    with emu.checking(guard=True):
        ring = {name: run_variant(cfg, dtype, overrides) for name, cfg, overrides in gemm}
    emulate_arch(monkeypatch, 700)
    for schedule in ("forward", "reverse", "random"):
        with emu.checking(schedule=schedule, seed=11, guard=True):
            for name, cfg, overrides in gemm:
                staged = run_variant(cfg, dtype, overrides)
                for key in ("y", "dx", "dw"):
                    np.testing.assert_array_equal(staged[key], ring[name][key],
                                                  err_msg=f"{name} {key} register path under {schedule}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_emu_sweep_classes_under_reverse_and_random_schedules(dtype):
    """A few configurations of each sweep class through the public calls: no fault, same bits."""
    from cnn_gpu import emu
    for kind in ("conv", "transpose", "depthwise", "depthwise_t"):
        for cfg in sweep(kind, 0)[:3]:
            run = run_transpose_ops if kind.endswith("_t") or kind == "transpose" else run_conv_ops
            with emu.checking(schedule="forward", guard=True):
                first = run(cfg, dtype, "emu")
            for schedule in ("reverse", "random"):
                with emu.checking(schedule=schedule, seed=3, guard=True):
                    again = run(cfg, dtype, "emu")
                for (name, got, _), (_, ref, _) in zip(again, first):
                    np.testing.assert_array_equal(got, ref, err_msg=f"{kind} {name} {cfg} under {schedule}")


@needs_emu
@pytest.mark.parametrize("name,cfg,overrides", [VARIANTS[0], VARIANTS[-1]], ids=["gemm", "depthwise"])
def test_emu_weight_and_bias_gradients_are_bit_identical_across_runs(name, cfg, overrides):
    from cnn_gpu import emu
    with emu.checking(guard=True):
        first, second = run_variant(cfg, np.float32, overrides), run_variant(cfg, np.float32, overrides)
    for key in ("dw", "db"):
        np.testing.assert_array_equal(first[key], second[key], err_msg=f"{name} {key}")


@needs_emu
def test_emu_bias_gradient_over_many_chunks_is_bit_identical_under_every_schedule():
    """dbias of a 70 x 70 image: each channel's 9800 elements span three blocks of reduce.cu, whose
    partials the channel's last block folds; the order never depends on which block ends last."""
    from cnn_gpu import emu
    from cnn_gpu.gpu import reduce
    dy = np.random.default_rng(4).standard_normal((2, 3, 70, 70)).astype(np.float32)
    assert reduce.plan_channel_sum(2, 3, 70 * 70).grid[0] == 3 * 3
    runs = []
    for schedule in emu.SCHEDULES:
        with emu.checking(schedule=schedule, seed=5, guard=True):
            runs.append(conv.bgrad("emu", dy))
    assert_close(runs[0], dy.astype(np.float64).sum(axis=(0, 2, 3)).astype(np.float32), np.float32, "dbias")
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])


@needs_emu
@pytest.mark.parametrize("groups", [1, 4], ids=["gemm", "depthwise"])
def test_emu_nan_propagates_through_conv_and_fused_relu(groups):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 6, 5))
    x[1, 2, 3, 1] = np.nan
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    kw = dict(padding=1, groups=groups, activation="relu")
    got = F.conv2d(x, w, None, **kw, backend="emu")
    want = F.conv2d(x, w, None, **kw, backend="numpy")
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-10, atol=1e-10)


@needs_emu
@pytest.mark.parametrize("cfg", [
    dict(N=1, C=2, H=20, W=9, K=3, R=18, S=3, stride=(1, 2), padding=(4, 1), dilation=(1, 1), groups=1),
    dict(N=2, C=4, H=6, W=23, K=2, R=2, S=20, stride=(2, 1), padding=(1, 5), dilation=(2, 1), groups=2),
], ids=["tall-filter", "wide-filter"])
def test_emu_filters_wider_than_the_tap_masks(cfg):
    """More than 16 taps in a dimension (the kernels' tap masks hold 16): the launchers pad the
    gathered operand so that every tap lands inside it, for conv2d and its transpose."""
    from cnn_gpu import emu
    g = conv_arrays(cfg, np.float64)[0]
    assert max(g.R, g.S) > conv.MASK_TAPS
    assert conv.plan_fprop(g, np.float64).main_index == 1 and conv.plan_dgrad(g, np.float64).main_index == 2
    with emu.checking(guard=True):
        for name, got, want in run_conv_ops(cfg, np.float64, "emu", activation="relu"):
            assert_close(got, want, np.float64, f"{name} {cfg}")
        tcfg = dict(N=cfg["N"], Cin=cfg["K"], Hin=5, Win=4, Coutg=cfg["C"] // cfg["groups"], R=cfg["R"], S=cfg["S"],
                    stride=cfg["stride"], padding=(0, 0), output_padding=(0, 0), dilation=cfg["dilation"],
                    groups=cfg["groups"])
        for name, got, want in run_transpose_ops(tcfg, np.float64, "emu"):
            assert_close(got, want, np.float64, f"transpose {name} {tcfg}")


# --- launcher checks ----------------------------------------------------------------------------

def test_launcher_refuses_sizes_past_32_bit_indexing():
    g = conv_geometry((4, 1024, 1024, 1024), (8, 1024, 1, 1))
    with pytest.raises(ValueError, match="32-bit"):
        conv.plan_fprop(g, np.float32)   # refused from the geometry alone, before any allocation


def test_launcher_refuses_spatial_sizes_past_2_to_the_28():
    g = conv_geometry((1, 1, 2**28, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="2\\^28"):
        conv.plan_dgrad(g, np.float32)


def test_launcher_rejects_unknown_activation_and_tile():
    g = conv_geometry((1, 1, 3, 3), (1, 1, 1, 1))
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="activation"):
        conv.fprop("emu", x, x[:, :, :1, :1], None, g, activation="gelu")
    with pytest.raises(ValueError, match="tile"):
        conv.fprop("emu", x, x[:, :, :1, :1], None, g, tile="huge")


# --- cuda ---------------------------------------------------------------------------------------

@pytest.mark.skipif(backend.cupy_or_none() is None, reason="no GPU: CuPy is missing or sees no device")
@pytest.mark.parametrize("kind", ["conv", "transpose", "depthwise", "depthwise_t"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the oracle's inf - inf
def test_cuda_sweep_matches_numpy(kind, dtype):
    cupy = backend.cupy_or_none()
    for chunk in range(CHUNKS):
        check_sweep(kind, chunk, dtype, "cuda", to_device=cupy.asarray)


def test_plans_name_the_launches_the_launchers_make():
    g = conv_geometry((2, 3, 9, 9), (5, 3, 3, 3))
    assert conv.plan_fprop(g, np.float64, tile="small", splits=1).main.kernel == "conv2d_fprop_small"
    single = conv.plan_wgrad(g, np.float64, tile="large", splits=1)
    split = conv.plan_wgrad(g, np.float64, tile="large", splits=3)
    assert [launch.family for launch in single.launches] == ["conv2d_wgrad"]
    assert [launch.family for launch in split.launches] == ["conv2d_wgrad", "reduce"]
    assert split.main.grid[2] == split.splits > 1 and split.chunk % conv.BK == 0
    fprop = conv.plan_fprop(g, np.float32, tile="wide", splits=2)
    assert [launch.kernel for launch in fprop.launches] == ["conv2d_fprop_wide", "split_sum_epilogue"]
    assert fprop.main.grid[2] == 2 and fprop.chunk == 16   # 27 reduction rows in chunks of 16
    dgrad = conv.plan_dgrad(g, np.float32, tile="tall", splits=1)
    assert [launch.kernel for launch in dgrad.launches] == ["conv2d_dgrad_filter_transpose", "conv2d_dgrad_tall"]
    assert dgrad.main.kernel == "conv2d_dgrad_tall"
    assert conv.plan_dgrad(conv_geometry((2, 4, 9, 9), (4, 1, 3, 3), groups=4), np.float32).tile is None


# ResNet-50 layers at batch 32 (N, C, H, W, K, R, S, stride, padding)
RESNET_3X3 = (32, 256, 14, 14, 256, 3, 3, 1, 1)
RESNET_DEEP = (32, 512, 7, 7, 512, 3, 3, 1, 1)
RESNET_EXPAND = (32, 64, 56, 56, 256, 1, 1, 1, 0)
RESNET_REDUCE = (32, 256, 56, 56, 64, 1, 1, 1, 0)


def _layer(n, c, h, w, k, r, s, stride, pad):
    return conv_geometry((n, c, h, w), (k, c, r, s), stride, pad)


def test_picker_fills_the_sms_and_counts_the_partial_last_wave():
    # 14x14x256 at batch 32: 49 x 2 large tiles = 98 blocks leave 34 of 132 SMs idle, 2 per SM fit:
    # the picker splits or shrinks the tile rather than run one partial wave of large blocks
    plan = conv.plan_fprop(_layer(*RESNET_3X3), np.float32)
    blocks = math.prod(plan.main.grid)
    assert blocks >= conv.DEFAULT_SMS
    # the deep 7x7x512 layer: 13 x 4 large tiles = 52 blocks; split-K over its 4608-row reduction
    deep = conv.plan_fprop(_layer(*RESNET_DEEP), np.float32)
    assert deep.splits > 1 and deep.launches[-1].kernel == "split_sum_epilogue"
    assert conv.plan_dgrad(_layer(*RESNET_DEEP), np.float32).splits > 1
    # a layer with plenty of blocks runs the large tile unsplit; with 64 output channels, 64 x 128
    expand = conv.plan_fprop(_layer(*RESNET_EXPAND), np.float32)
    assert (expand.tile, expand.splits) == ("large", 1)
    assert conv.plan_fprop(_layer(*RESNET_REDUCE), np.float32).tile == "wide"
    # wgrad (a long N*P*Q reduction into a small output) always splits on the large tile here
    wgrad = conv.plan_wgrad(_layer(*RESNET_3X3), np.float32)
    assert wgrad.tile == "large" and wgrad.splits > 1


def test_picker_uses_the_sm_count():
    g = _layer(*RESNET_DEEP)
    few, many = conv.plan_fprop(g, np.float32, sms=8), conv.plan_fprop(g, np.float32, sms=264)
    assert math.prod(few.main.grid) < math.prod(many.main.grid)
    assert conv.plan_fprop(g, np.float32).splits == conv.plan_fprop(g, np.float32, sms=conv.DEFAULT_SMS).splits


def test_plans_are_remembered_per_arguments_and_forced_choices(monkeypatch):
    """A planner searches once per question (the launchers ask the same ones every step): the
    geometry, dtype, options and what forced() sets are all part of the question, an unhashable
    option still gets the planner's own error, and clear() forgets."""
    searches = []
    search = conv._choose
    monkeypatch.setattr(conv, "_choose", lambda *args: searches.append(args) or search(*args))
    g = conv_geometry((2, 3, 9, 9), (5, 3, 3, 3))
    first = conv.plan_fprop(g, np.float32)
    assert conv.plan_fprop(g, np.float32) is first and len(searches) == 1 and first.tile != "small"
    with conv.forced(tile="small"):
        assert conv.plan_fprop(g, np.float32).tile == "small"
    assert conv.plan_fprop(g, np.float32, splits=2).splits == 2 and first.splits != 2
    assert conv.plan_fprop(g, np.float64) is not first
    assert conv.plan_fprop(g, np.float32) is first and len(searches) == 4
    with pytest.raises(ValueError, match="splits"):
        conv.plan_fprop(g, np.float32, splits=[2])
    _plan_cache.clear()
    assert conv.plan_fprop(g, np.float32) == first and len(searches) == 6


def test_forced_plans_and_split_workspace_limit():
    g = conv_geometry((2, 3, 9, 9), (5, 3, 3, 3))
    with conv.forced(tile="tall", splits=40):
        plan = conv.plan_fprop(g, np.float32)
    assert plan.tile == "tall" and plan.splits == 4   # 27 reduction rows: at most 4 splits of 8
    assert conv.plan_fprop(g, np.float32, tile="small", splits=1).splits == 1
    with pytest.raises(ValueError, match="tile"):
        with conv.forced(tile="huge"):
            pass
    with pytest.raises(ValueError, match="splits"):
        conv.plan_dgrad(g, np.float32, splits=0)
    # a (splits, y) workspace past 2^31 elements is never planned
    big = conv_geometry((64, 256, 128, 128), (256, 256, 3, 3), padding=1)
    assert conv.plan_fprop(big, np.float32, splits=64).splits * math.prod(big.y_shape) < conv.INDEX_LIMIT
