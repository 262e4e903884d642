"""The convolution kernels (kernels/conv2d_*.cu through cnn_gpu.gpu.conv) against the NumPy backend.

Seeded random sweeps of >= 200 configurations per op (stride 1-3, padding 0-2, dilation 1-2,
groups incl. depthwise, non-square, batch 1, C = 1, sizes that are no multiple of any tile,
kernels as large as the padded input) run on the emulator in float64 and float32 through the
public cnn_gpu.functional calls; the same sweep runs on "cuda" when a GPU is present. Each kernel
variant (large/small tile, split-K, depthwise, stride phases) also runs under the emulator's
reverse and random thread schedules with guard zones, and must give bit-identical results.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry, conv_transpose_geometry
from cnn_gpu.gpu import conv
from helpers import assert_close

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
    return configs[chunk::CHUNKS]


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def conv_arrays(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = conv_geometry((cfg["N"], cfg["C"], cfg["H"], cfg["W"]), (cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"]),
                      cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    return (g, _random(rng, g.x_shape, dtype), _random(rng, g.w_shape, dtype), _random(rng, (g.K,), dtype),
            _random(rng, g.y_shape, dtype))


def transpose_arrays(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    g = transpose_geometry(cfg)
    x = _random(rng, g.y_shape, dtype)                       # the transposed op's input
    w = _random(rng, (cfg["Cin"], cfg["Coutg"], cfg["R"], cfg["S"]), dtype)
    return g, x, w, _random(rng, (g.C,), dtype), _random(rng, g.x_shape, dtype)


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


def check_sweep(kind, chunk, dtype, be, to_device=lambda a: a):
    for i, cfg in enumerate(sweep(kind, chunk)):
        if kind in ("transpose", "depthwise_t"):
            results = run_transpose_ops(cfg, dtype, be, to_device)
        else:
            results = run_conv_ops(cfg, dtype, be, to_device, activation="relu" if i % 5 == 1 else None)
        for name, got, want in results:
            assert_close(got, want, dtype, f"{kind} {name} {cfg}")


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


# --- emulator sweeps ----------------------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("kind", ["conv", "transpose", "depthwise", "depthwise_t"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_emu_sweep_matches_numpy(kind, chunk, dtype):
    """Guard zones on every array; the chunks rotate through the three thread schedules."""
    from cnn_gpu import emu
    with emu.checking(schedule=emu.SCHEDULES[chunk % len(emu.SCHEDULES)], seed=chunk, guard=True):
        check_sweep(kind, chunk, dtype, "emu")


# --- every kernel variant, and thread schedules -------------------------------------------------

# (name, configuration, launcher overrides): "large"/"small" force a tile variant with several
# ragged tiles per dimension and several wgrad splits; "phases" has stride phases of unequal size,
# so whole dgrad blocks of the smaller phases exit early; "depthwise" splits its wgrad.
VARIANTS = [
    ("large", dict(N=2, C=130, H=9, W=16, K=135, R=3, S=2, stride=(1, 2), padding=(1, 0), dilation=(1, 1),
                   groups=1), dict(tile="large", splits=3)),
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
    tile = {} if g.is_depthwise else {"tile": overrides.get("tile")}
    return {"y": conv.fprop("emu", x, w, b, g, activation="relu", **tile),
            "dx": conv.dgrad("emu", dy, w, g, **tile),
            "dw": conv.wgrad("emu", dy, x, g, splits=overrides.get("splits"), **tile),
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
@pytest.mark.parametrize("name,cfg,overrides", [VARIANTS[0], VARIANTS[3]], ids=["gemm", "depthwise"])
def test_emu_weight_and_bias_gradients_are_bit_identical_across_runs(name, cfg, overrides):
    from cnn_gpu import emu
    with emu.checking(guard=True):
        first, second = run_variant(cfg, np.float32, overrides), run_variant(cfg, np.float32, overrides)
    for key in ("dw", "db"):
        np.testing.assert_array_equal(first[key], second[key], err_msg=f"{name} {key}")


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
def test_cuda_sweep_matches_numpy(kind, dtype):
    cupy = backend.cupy_or_none()
    for chunk in range(CHUNKS):
        check_sweep(kind, chunk, dtype, "cuda", to_device=cupy.asarray)


def test_plans_name_the_launches_the_launchers_make():
    g = conv_geometry((2, 3, 9, 9), (5, 3, 3, 3))
    assert conv.plan_fprop(g, np.float64, tile="small").main.kernel == "conv2d_fprop_small"
    single = conv.plan_wgrad(g, np.float64, tile="large", splits=1)
    split = conv.plan_wgrad(g, np.float64, tile="large", splits=3)
    assert [launch.family for launch in single.launches] == ["conv2d_wgrad"]
    assert [launch.family for launch in split.launches] == ["conv2d_wgrad", "reduce"]
    assert split.main.grid[2] == split.splits > 1 and split.chunk % conv.BK == 0
    assert conv.plan_dgrad(conv_geometry((2, 4, 9, 9), (4, 1, 3, 3), groups=4), np.float32).tile is None
