"""fprop over the flattened (r, s, c) reduction (kernels/conv2d_tc.cu's _flat kernels: few channels
per group, e.g. ResNet's stem) on the emulator against the oracles of the unflattened kernels'
tests: TF32-rounded operands summed in float64 (float32), float16 operands summed in float64 within
the format bound (float16)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv_tc
from test_conv_float16 import assert_within_bound, exact, options, problem
from test_kernels_tc import _arrays, _oracle, _run, needs_emu


def flat_config(rng, index):
    """A random geometry of 1, 2, 3 or 5 channels per group: filters up to 7x7 (some 1xS and Rx1),
    strides 1-3, padding up to 3, dilation 1-2, groups 1-3, up to 80 output channels per group
    (past one 64-row tile), images up to 6 pixels past the dilated filter (now and then more than
    one 128-pixel tile), batch 1-2."""
    cg, groups = (1, 2, 3, 5)[index % 4], int(rng.choice([1, 1, 2, 3]))
    r, s = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    if r * s == 1:
        s = 3
    dil = int(rng.integers(1, 3))
    h, w = (int(rng.integers(dil * (t - 1) + 1, dil * (t - 1) + 7)) for t in (r, s))
    return dict(n=int(rng.integers(1, 3)), c=groups * cg, h=h, w=w, k=groups * int(rng.integers(1, 81)), r=r, s=s,
                stride=int(rng.integers(1, 4)), pad=int(rng.integers(0, 4)), dil=dil, groups=groups)


def _geometry(cfg):
    return conv_geometry((cfg["n"], cfg["c"], cfg["h"], cfg["w"]), (cfg["k"], cfg["c"] // cfg["groups"], cfg["r"],
                                                                     cfg["s"]), **options(cfg))


def _problem(rng, cfg, dtype):
    """Random x, weight and bias of `cfg` in `dtype` (float32: full significands, so that the
    kernel's TF32 rounding counts), and the geometry."""
    x, w, b = _arrays(rng, cfg) if dtype == np.float32 else problem(rng, cfg)[:3]
    return x, w, b, _geometry(cfg)


def assert_near_the_oracle(got, x, w, b, cfg, relu, splits, what):
    """float32: within the TF32 tests' bound of the float64 conv of TF32-rounded operands; float16:
    within the format bound of the float64 conv of the FP16 operands (test_conv_float16)."""
    if got.dtype == np.float32:
        want, scale = _oracle(x, w, b, cfg, relu)
        assert got.shape == want.shape and np.all(np.abs(got - want) <= 2e-6 * (scale + 1.0)), what
        return
    want, scale = exact(F.conv2d, x, w, b, **options(cfg))
    if relu:
        want = np.maximum(want, 0)
    terms = w[0].size + 1 + (splits or conv_tc.MAX_SPLITS)
    assert_within_bound(got, want, scale, terms, what)


@needs_emu
@pytest.mark.parametrize("chunk", range(2))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_flat_fprop_matches_the_oracle(dtype, chunk):
    """Both tiles, bias and ReLU, split-K, on geometries the plans flatten by themselves, under the
    emulator's thread schedules with guard zones (a read past x faults)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(300 + chunk + 10 * (dtype == np.float16))
    with emu.checking(schedule=emu.SCHEDULES[chunk % len(emu.SCHEDULES)], seed=chunk, guard=True):
        for index in range(12):
            cfg = flat_config(rng, index)
            x, w, b, g = _problem(rng, cfg, dtype)
            assert conv_tc.is_flat(conv_tc.plan_fprop(g, dtype=dtype)), cfg
            relu, splits = index % 2 == chunk, (None, 1, 2, 3)[index % 4]
            tile = (None, "tc", "tc_m64")[(index + chunk) % 3]
            got = conv_tc.fprop("emu", x, w, b, g, activation="relu" if relu else None, tile=tile, splits=splits)
            assert_near_the_oracle(got, x, w, b, cfg, relu, splits, f"{cfg} relu={relu} splits={splits} tile={tile}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_stem_runs_flat_and_agrees_with_the_unflattened_kernel(dtype):
    """ResNet's stem (C = 3, 7x7, stride 2, padding 3) at a small batch and image: 147 indices in
    ceil(147 / depth) steps instead of 49 taps of one step each; both kernels near the oracle."""
    rng = np.random.default_rng(15)
    cfg = dict(n=1, c=3, h=22, w=21, k=64, r=7, s=7, stride=2, pad=3, dil=1, groups=1)   # 121 pixels
    x, w, b, g = _problem(rng, cfg, dtype)
    depth = conv_tc.step_depth(dtype)
    plan = conv_tc.plan_fprop(g, dtype=dtype)
    assert conv_tc.is_flat(plan) and plan.main.kernel == "conv2d_fprop_tc_flat_m64"
    assert conv_tc.fprop_steps(g, depth, True) == -(-147 // depth) and conv_tc.fprop_steps(g, depth, False) == 49
    for flat in (None, False):
        got = conv_tc.fprop("emu", x, w, b, g, activation="relu", flat=flat)
        assert_near_the_oracle(got, x, w, b, cfg, True, None, f"stem flat={flat}")


@needs_emu
def test_flat_fprop_has_no_shared_memory_race():
    """The race check sees the two B stages and the flattened reduction's table, both tiles (the
    float32 build: the float16 one fills and reads the table in the same code)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(16)
    cfg = dict(n=1, c=6, h=9, w=8, k=10, r=5, s=4, stride=2, pad=2, dil=1, groups=2)   # 60 indices per group
    x, w, b, g = _problem(rng, cfg, np.float32)
    with emu.checking(schedule="random", seed=3, race=True):
        for tile, splits in (("tc", 2), ("tc_m64", 1)):
            conv_tc.fprop("emu", x, w, b, g, tile=tile, splits=splits, flat=True)


@needs_emu
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the oracle's inf - inf
def test_flat_fprop_passes_nan_and_inf_through():
    """Each index is read or zeroed by itself: a NaN at one pixel reaches exactly the outputs whose
    window holds it, an inf its own outputs, and the padding stays zero (never NaN)."""
    rng = np.random.default_rng(17)
    cfg = dict(n=1, c=3, h=9, w=9, k=5, r=3, s=3, stride=1, pad=1, dil=1, groups=1)
    x, w, b = _arrays(rng, cfg)
    x[0, 1, 4, 4], x[0, 2, 0, 8] = np.nan, np.inf
    want = F.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1, backend="numpy")
    got = _run(x, w, b, cfg, relu=False)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_plans_flatten_where_it_saves_steps_and_fits_the_table():
    def plan(c, r, s, dtype=np.float32, **kw):
        return conv_tc.plan_fprop(conv_geometry((2, c, 40, 40), (8, c, r, s)), dtype=dtype, **kw)
    assert conv_tc.is_flat(plan(3, 7, 7)) and conv_tc.is_flat(plan(20, 3, 3))      # 10 steps, not 49; 12, not 18
    assert plan(3, 3, 3).main.kernel == "conv2d_fprop_tc_flat_m64"
    assert conv_tc.plan_fprop(conv_geometry((2, 3, 40, 40), (128, 3, 3, 3)), tile="tc").main.kernel == \
        "conv2d_fprop_tc_flat"
    assert not conv_tc.is_flat(plan(32, 3, 3)) and not conv_tc.is_flat(plan(5, 1, 1))   # nothing saved
    assert conv_tc.is_flat(plan(20, 3, 3, np.float16))          # 6 steps of 32, not 9
    assert not conv_tc.is_flat(plan(32, 3, 3, np.float16))      # 9 either way
    assert not conv_tc.is_flat(plan(11, 7, 7)) and conv_tc.is_flat(plan(10, 7, 7))   # 539 > FLAT_MAX >= 490
    assert not conv_tc.is_flat(plan(1, 1, 31)) and conv_tc.is_flat(plan(1, 1, 30))   # R + S < 32: the tap bits
    assert not conv_tc.is_flat(plan(3, 7, 7, flat=False))
    with pytest.raises(ValueError, match="flattened fprop kernel takes"):
        plan(11, 7, 7, flat=True)


def test_the_table_bound_is_the_kernels():
    source = backend.kernel_source("conv2d_tc")
    assert int(re.search(r"#define TC_FLAT_MAX (\d+)", source).group(1)) == conv_tc.FLAT_MAX


def test_the_model_counts_the_flattened_steps():
    from cnn_gpu.roofline import conv as roofline_conv
    stem = conv_geometry((128, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)
    for dtype, steps in ((np.float32, 10), (np.float16, 5)):
        plan = conv_tc.plan_fprop(stem, dtype=dtype, sms=132)
        assert conv_tc.is_flat(plan)
        blocks = plan.main.grid[0] * plan.main.grid[1]
        assert roofline_conv._tensor_core_steps("fprop", stem, plan, dtype) == blocks * steps
