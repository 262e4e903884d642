"""Tensor-core convolutions (kernels/conv2d_tc.cu) on the emulator against the NumPy oracle with
TF32-rounded operands."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, emu, nvrtc, sass
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv as gpu_conv
from cnn_gpu.gpu import _arrivals, _plan_cache, conv_tc
from cnn_gpu.precision import round_to_tf32

EMU_REASON = backend.why_unavailable("emu")
TILES = (None, "tc", "tc_m64")   # the planner's choice, then each variant forced
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")


def tc_config(rng, *, channels=20, outputs=39, stride=2, pad=1):
    """A random geometry: up to `channels` input and `outputs` output channels per group, strides
    up to `stride`, padding up to `pad`, dilation 1-2, filters up to 3x3, images up to 11x11."""
    groups = int(rng.choice([1, 1, 1, 2]))
    r, s = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride, pad, dil = int(rng.integers(1, stride + 1)), int(rng.integers(0, pad + 1)), int(rng.integers(1, 3))
    h = int(rng.integers(dil * (r - 1) + 1, 12))
    w = int(rng.integers(dil * (s - 1) + 1, 12))
    return dict(n=int(rng.integers(1, 3)), c=groups * int(rng.integers(1, channels + 1)), h=h, w=w,
                k=groups * int(rng.integers(1, outputs + 1)), r=r, s=s, stride=stride, pad=pad, dil=dil, groups=groups)


def _arrays(rng, cfg):
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(np.float32)
    w = rng.standard_normal((cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"])).astype(np.float32)
    b = rng.standard_normal(cfg["k"]).astype(np.float32)
    return x, w, b


def _backward_oracle(dy, x, w, cfg):
    """float64 (dx, dw) of the TF32-rounded operands, and of their magnitudes (error scale)."""
    kw = dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"], groups=cfg["groups"], backend="numpy",
              bias=False)
    ops = [round_to_tf32(a).astype(np.float64) for a in (dy, x, w)]
    want = F.conv2d_backward(*ops, **kw)[:2]
    scale = F.conv2d_backward(*(np.abs(a) for a in ops), **kw)[:2]
    return want, scale


def _geometry(x, w, cfg):
    return conv_geometry(x.shape, w.shape, stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"],
                         groups=cfg["groups"])


@needs_emu
@pytest.mark.parametrize("chunk", range(4))
def test_tf32_dgrad_and_wgrad_sweep_match_the_tf32_oracle(chunk):
    rng = np.random.default_rng(200 + chunk)
    for index in range(10):
        cfg = tc_config(rng)
        x, w, _ = _arrays(rng, cfg)
        g = _geometry(x, w, cfg)
        dy = rng.standard_normal(g.y_shape).astype(np.float32)
        (want_dx, want_dw), (scale_dx, scale_dw) = _backward_oracle(dy, x, w, cfg)
        dw = conv_tc.wgrad("emu", dy, x, g, tile=TILES[(index + 1) % 3], splits=int(rng.integers(1, 4)) if index % 2 else None)
        assert np.all(np.abs(dw - want_dw) <= 2e-6 * (scale_dw + 1.0)), cfg
        dx = conv_tc.dgrad("emu", dy, w, g, tile=TILES[index % 3], splits=int(rng.integers(1, 4)) if index % 2 else None)
        assert np.all(np.abs(dx - want_dx) <= 2e-6 * (scale_dx + 1.0)), cfg


@needs_emu
def test_tf32_wgrad_partials_are_summed_in_a_fixed_order(monkeypatch):
    """wgrad with 3 splits is one launch: the block whose segment of a tile arrives last writes no
    partial and sums the others' with its own in rank order ((p0 + p1) + p2, bit for bit, which
    another order misses), whichever block that is under the emulator's block orders (forward:
    rank 2 arrives last, reverse: rank 0)."""
    rng = np.random.default_rng(9)
    cfg = dict(n=3, c=4, h=9, w=9, k=5, r=3, s=3, stride=1, pad=1, dil=1, groups=1)
    x, w, _ = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    plan = conv_tc.plan_wgrad(g, splits=3)
    assert plan.splits == 3 and [launch.kernel for launch in plan.launches] == [plan.main.kernel]
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda be, family, dt, kernel, grid, block, args: (
        real_launch(be, family, dt, kernel, grid, block, args), launched.append((kernel, args[4].copy())))[0])
    runs = []
    for seed, schedule in enumerate(("forward", "reverse", "random", "random")):
        with emu.checking(schedule=schedule, seed=seed):
            runs.append(conv_tc.wgrad("emu", dy, x, g, splits=3))
    assert [kernel for kernel, _ in launched] == [plan.main.kernel] * 4
    forward, reverse = (args.reshape((3,) + runs[0].shape) for _, args in launched[:2])
    assert np.isnan(forward[2]).all() and np.isnan(reverse[0]).all()   # the workspace starts NaN
    assert np.array_equal(forward[1], reverse[1])
    partials = (forward[0], forward[1], reverse[2])
    want = (partials[0] + partials[1]) + partials[2]
    assert not np.array_equal(want, (partials[2] + partials[1]) + partials[0]), "the test must tell orders apart"
    assert all(run.tobytes() == want.tobytes() for run in runs)


@needs_emu
def test_wgrad_leaves_its_arrival_counts_zero_and_a_failed_launch_drops_them(monkeypatch):
    """The kernel resets each tile's count of arrived and written segments, so the cached counts are zero
    after every launch; a launch that fails part-way drops them, and the next call starts from
    fresh zeros and gives the same bits."""
    rng = np.random.default_rng(12)
    cfg = dict(n=3, c=20, h=9, w=9, k=40, r=3, s=3, stride=1, pad=1, dil=1, groups=2)
    x, w, _ = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    first = conv_tc.wgrad("emu", dy, x, g, splits=3)
    counts = _arrivals._COUNTS[_arrivals._key("emu")]
    assert counts.size >= conv_tc.wgrad_tiles(g, conv_tc.plan_wgrad(g, splits=3).tile) and not counts.any()

    def failing(be, family, dtype, kernel, grid, block, args):
        args[5][:2] = 1   # counts left part-way
        raise RuntimeError("launch failed")

    with monkeypatch.context() as patch:
        patch.setattr(backend, "launch", failing)
        with pytest.raises(RuntimeError, match="launch failed"):
            conv_tc.wgrad("emu", dy, x, g, splits=3)
    assert _arrivals._key("emu") not in _arrivals._COUNTS
    assert conv_tc.wgrad("emu", dy, x, g, splits=3).tobytes() == first.tobytes()
    assert not _arrivals._COUNTS[_arrivals._key("emu")].any()


def _oracle(x, w, b, cfg, relu):
    """float64 conv of the TF32-rounded operands, and the same conv of their magnitudes (the
    scale of the FP32 accumulation error)."""
    kw = dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"], groups=cfg["groups"], backend="numpy")
    xr, wr = round_to_tf32(x).astype(np.float64), round_to_tf32(w).astype(np.float64)
    want = F.conv2d(xr, wr, b.astype(np.float64), **kw)
    if relu:
        want = np.maximum(want, 0)
    scale = F.conv2d(np.abs(xr), np.abs(wr), np.abs(b).astype(np.float64), **kw)
    return want, scale


def _run(x, w, b, cfg, relu, splits=None, tile=None):
    g = conv_geometry(x.shape, w.shape, stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"],
                      groups=cfg["groups"])
    return conv_tc.fprop("emu", x, w, b, g, activation="relu" if relu else None, tile=tile, splits=splits)


@needs_emu
@pytest.mark.parametrize("chunk", range(4))
def test_tf32_fprop_sweep_matches_the_tf32_oracle(chunk):
    rng = np.random.default_rng(100 + chunk)
    for index in range(10):
        cfg = tc_config(rng)
        x, w, b = _arrays(rng, cfg)
        relu = index % 2 == 1
        want, scale = _oracle(x, w, b, cfg, relu)
        got = _run(x, w, b, cfg, relu, splits=int(rng.integers(2, 4)) if index % 3 == 2 else None, tile=TILES[index % 3])
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.all(np.abs(got - want) <= 2e-6 * (scale + 1.0)), cfg


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_96_pixel_tiles_match_the_oracle(dtype):
    """The 96-pixel fprop and dgrad kernels (tc_n96: 2 x 2 warps of 64 x 48, the last warp loading
    no pixels) on random geometries with several pixel tiles, stride phases, groups and split-K,
    against the TF32 or float16 bound. The emulator poisons shared memory (NaN) before each block,
    so a warp reading the stage rows past 96, which nothing writes, would show."""
    from test_conv_float16 import assert_within_bound, exact
    rng = np.random.default_rng(2200 + (dtype == np.float16))
    for index in range(8):
        cfg = tc_config(rng, channels=40, outputs=70)
        x, w, b = (a.astype(dtype) for a in _arrays(rng, cfg))
        g = _geometry(x, w, cfg)
        dy = rng.standard_normal(g.y_shape).astype(dtype)
        splits = (1, 2, 3)[index % 3]
        y = conv_tc.fprop("emu", x, w, b, g, tile="tc_n96", splits=splits)
        dx = conv_tc.dgrad("emu", dy, w, g, tile="tc_n96", splits=splits)
        plans = (conv_tc.plan_fprop(g, dtype=dtype, tile="tc_n96", splits=splits),
                 conv_tc.plan_dgrad(g, dtype=dtype, tile="tc_n96", splits=splits))
        assert [plan.main.kernel for plan in plans] == ["conv2d_fprop_tc_n96", "conv2d_dgrad_tc_n96"]
        if dtype == np.float16:
            want, scale = exact(F.conv2d, x, w, b, **_options(cfg))
            assert_within_bound(y, want, scale, g.C // g.groups * g.R * g.S + 1 + splits, f"fprop {cfg}")
            (want, _, _), (scale, _, _) = exact(F.conv2d_backward, dy, x, w, bias=False, **_options(cfg))
            assert_within_bound(dx, want, scale, g.K // g.groups * g.R * g.S + splits, f"dgrad {cfg}")
        else:
            want, scale = _oracle(x, w, b, cfg, relu=False)
            assert np.all(np.abs(y - want) <= 2e-6 * (scale + 1.0)), cfg
            (want, _), (scale, _) = _backward_oracle(dy, x, w, cfg)
            assert np.all(np.abs(dx - want) <= 2e-6 * (scale + 1.0)), cfg


def _options(cfg):
    return dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dil"], groups=cfg["groups"])


def test_96_pixel_tiles_fill_the_waves_of_resnets_7x7_and_14x14_layers():
    """At batch 128 on H100 (132 SMs, 2 blocks each), ResNet's 7x7 layers have 6272 pixels: 49
    tiles of 128 (4 x 49 = 196 blocks for 512 channels, 0.74 of a wave) or 66 of 96 (264 blocks,
    one wave); its 14x14 ones 25088: 392 or 524 blocks for 256 channels (1.48 or 1.98 waves). The
    picker takes the 96-pixel tile for their fprop and dgrad, and keeps 128 where it fills as well
    (the 28x28 layer: 784 blocks, 2.97 waves)."""
    for (x_shape, w_shape, padding), tile in ((((128, 512, 7, 7), (512, 512, 3, 3), 1), "tc_n96"),
                                              (((128, 256, 14, 14), (256, 256, 3, 3), 1), "tc_n96"),
                                              (((128, 128, 28, 28), (128, 128, 3, 3), 1), "tc")):
        g = conv_geometry(x_shape, w_shape, padding=padding)
        for dtype in (np.float32, np.float16):
            for plan in (conv_tc.plan_fprop(g, dtype=dtype, sms=132), conv_tc.plan_dgrad(g, dtype=dtype, sms=132)):
                assert (plan.tile, plan.splits) == (tile, 1), (x_shape, dtype, plan.pass_name, plan.tile)
    with pytest.raises(ValueError, match="tile must be one of tc, tc_m64"):   # wgrad has no 96-pixel tile
        conv_tc.plan_wgrad(g, tile="tc_n96")
    with pytest.raises(ValueError, match="flattened fprop kernel has the tiles tc, tc_m64"):
        conv_tc.plan_fprop(conv_geometry((2, 3, 16, 16), (64, 3, 7, 7), 2, 3), tile="tc_n96", flat=True)


@needs_emu
def test_tf32_fprop_spans_several_block_tiles_and_differs_from_exact_fp32():
    rng = np.random.default_rng(7)
    cfg = dict(n=2, c=20, h=12, w=12, k=130, r=3, s=3, stride=1, pad=1, dil=1, groups=1)  # 288 pixels, 130 rows
    x, w, b = _arrays(rng, cfg)
    want, scale = _oracle(x, w, b, cfg, relu=False)
    got = _run(x, w, b, cfg, relu=False)
    assert np.all(np.abs(got - want) <= 2e-6 * (scale + 1.0))
    exact = F.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1, backend="numpy")
    assert np.abs(got - exact).max() > 1e-4 * np.abs(exact).max() / 10     # TF32 is not FP32


@needs_emu
def test_tf32_fprop_is_bit_identical_under_every_schedule():
    rng = np.random.default_rng(8)
    cfg = dict(n=1, c=5, h=7, w=6, k=9, r=3, s=2, stride=1, pad=1, dil=1, groups=1)
    x, w, b = _arrays(rng, cfg)
    g = conv_geometry(x.shape, w.shape, padding=1)
    from cnn_gpu import emu
    runs = []
    for schedule in ("forward", "reverse", "random"):
        with emu.checking(schedule=schedule, seed=5, guard=True):
            runs.append(conv_tc.fprop("emu", x, w, b, g))
    assert all(r.tobytes() == runs[0].tobytes() for r in runs)


@needs_emu
def test_tensor_core_kernels_have_no_race():
    """The race check sees every shared word of the two stages and of wgrad's pixel table, in every
    tile (the 96-pixel one's idle loader warp included) and float16's gather and residues kernels,
    and every global word: wgrad's partials too (split-K, stream-K), which the block summing a tile
    reads after the fences and the arrival count that order it after the blocks that wrote them."""
    from cnn_gpu import emu
    rng = np.random.default_rng(14)
    cfg = dict(n=2, c=5, h=9, w=8, k=9, r=3, s=2, stride=2, pad=1, dil=1, groups=1)   # 4 wgrad steps
    x, w, b = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    with emu.checking(schedule="random", seed=3, race=True):
        for tile in conv_tc.TILES:
            conv_tc.fprop("emu", x, w, b, g, splits=2, tile=tile)
            conv_tc.dgrad("emu", dy, w, g, tile=tile)
        for tile in conv_tc.WGRAD_EFFICIENCY:
            conv_tc.wgrad("emu", dy, x, g, splits=1, tile=tile)
        conv_tc.wgrad("emu", dy.astype(np.float16), x.astype(np.float16), g, splits=1, dy_path="gather")
    cfg = dict(n=2, c=20, h=9, w=8, k=9, r=3, s=3, stride=1, pad=1, dil=1, groups=1)   # 2 tiles of 9 steps
    x, w, b = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    stream_k = dict(tile="tc", blocks=5)   # blocks that meet two tiles
    assert conv_tc.plan_wgrad(g, **stream_k).main.kernel == conv_tc.BALANCED_KERNEL
    # 3x3 at Q = 8: the 64-channel tile reads x by filter rows (the _rows kernel), in both dtypes
    assert all(conv_tc.plan_wgrad(g, dtype=dtype, tile="tc_m64").main.kernel == conv_tc.TAP_ROWS_KERNEL
               for dtype in (np.float32, np.float16))
    with emu.checking(schedule="random", seed=4, race=True):
        for tile in conv_tc.WGRAD_EFFICIENCY:
            conv_tc.wgrad("emu", dy, x, g, splits=3, tile=tile)
        streamed = conv_tc.wgrad("emu", dy, x, g, **stream_k)
        conv_tc.wgrad("emu", dy.astype(np.float16), x.astype(np.float16), g, splits=2, dy_path="gather")
        conv_tc.wgrad("emu", dy.astype(np.float16), x.astype(np.float16), g, splits=2, tile="tc_m64")
    # float16's dy in residue bands (P*Q = 49, K a multiple of 8): 11 steps round its table slots,
    # each step's word masks read again once the step before has been multiplied
    cfg = dict(n=6, c=6, h=7, w=7, k=24, r=1, s=1, stride=1, pad=0, dil=1, groups=1)
    x16, w16, _ = (a.astype(np.float16) for a in _arrays(rng, cfg))
    g16 = _geometry(x16, w16, cfg)
    assert conv_tc.wgrad_tile_steps(g16, np.float16, "residues") == 11
    with emu.checking(schedule="random", seed=5, race=True):
        conv_tc.wgrad("emu", rng.standard_normal(g16.y_shape).astype(np.float16), x16, g16, splits=1,
                      dy_path="residues")
    # in forward order the block that meets both tiles is not the one that sums its second tile:
    # another block reads what it released in its second segment
    for schedule in ("forward", "reverse"):
        with emu.checking(schedule=schedule, race=True):
            assert conv_tc.wgrad("emu", dy, x, g, **stream_k).tobytes() == streamed.tobytes()


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_segments_of_every_length_see_their_whole_pixel_table(dtype):
    """wgrad copies its pixel table two steps at a time, at every other step, into 4 slots
    (kernels/conv2d_tc.cu, wgrad_segment): one tile of 9 steps split 1, 2, 3, 5 and 9 ways gives
    segments of 1, 2, 3, 4, 5 and 9 steps (a last store at an even and at an odd step), each the
    column loader's and the filter-row loader's (3x3 at Q = 8), under the race check, which reads an
    unwaited copy as poison."""
    rng = np.random.default_rng(31)
    n = 1 if dtype == np.float32 else 2   # 144 or 288 pixels: 9 steps of 16 TF32 or 32 FP16 pixels
    cfg = dict(n=n, c=5, h=18, w=8, k=9, r=3, s=3, stride=1, pad=1, dil=1, groups=1)
    x, w, _ = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    x, dy = x.astype(dtype), dy.astype(dtype)
    # float16 values are TF32 numbers already: the oracle's rounding leaves them as they are
    (_, want), (_, scale) = _backward_oracle(dy.astype(np.float32), x.astype(np.float32), w, cfg)
    assert conv_tc.plan_wgrad(g, dtype=dtype, tile="tc_m64").main.kernel == conv_tc.TAP_ROWS_KERNEL
    with emu.checking(schedule="random", seed=6, race=True):
        for tile in ("tc", "tc_m64"):
            for splits in (1, 2, 3, 5, 9):
                plan = conv_tc.plan_wgrad(g, dtype=dtype, tile=tile, splits=splits)
                assert plan.splits == splits and plan.main.grid == (splits, 1, 1), (tile, splits)
                dw = conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=splits).astype(np.float64)
                # FP32 sums, then (float16) one rounding to FP16
                bound = 2e-6 * (scale + 1.0) + (np.abs(want) * 2.0 ** -11 if dtype == np.float16 else 0.0)
                assert np.all(np.abs(dw - want) <= bound), (tile, splits)

def test_tensor_core_kernels_refuse_other_dtypes():
    x = np.ones((1, 1, 3, 3))
    g = conv_geometry(x.shape, (1, 1, 1, 1))
    with pytest.raises(TypeError, match="float32 \\(TF32\\) or float16"):
        conv_tc.fprop("emu", x, x[:, :, :1, :1], None, g)



def test_gpus_before_sm80_fall_back_to_simt_and_say_so_once(monkeypatch):
    import sys
    import types
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(id=0)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(conv_tc, "_device_arch", lambda device_id: 75)
    conv_tc._warn_no_tensor_cores.cache_clear()
    with pytest.warns(RuntimeWarning, match="sm_75"):
        assert conv_tc.supported("cuda") is False
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert conv_tc.supported("cuda") is False      # said once only
    monkeypatch.setattr(conv_tc, "_device_arch", lambda device_id: 90)
    assert conv_tc.supported("cuda") is True and conv_tc.supported("numpy") is False
    monkeypatch.setattr(conv_tc, "_device_arch", lambda device_id: 75)
    with pytest.warns(RuntimeWarning, match="sm_75: float16 convolutions.*widened operands.*rounded to float16 once"):
        assert conv_tc.supported("cuda", np.float16) is False


@needs_emu
@pytest.mark.parametrize("splits, tile", [(1, "tc"), (3, "tc_m64")])
def test_tf32_whole_tiles_take_the_unpredicated_paths(splits, tile):
    """Channels in whole steps of 16 (fprop, dgrad: no channel tests) and whole 128-row tiles with
    whole pixel steps (wgrad: no row or pixel tests), next to a partial tile and a partial step."""
    rng = np.random.default_rng(12)
    cfg = dict(n=2, c=32, h=6, w=7, k=144, r=3, s=3, stride=1, pad=1, dil=1, groups=1)   # 84 pixels
    x, w, b = _arrays(rng, cfg)
    want, scale = _oracle(x, w, b, cfg, relu=True)
    assert np.all(np.abs(_run(x, w, b, cfg, True, splits, tile) - want) <= 2e-6 * (scale + 1.0))
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    (want_dx, want_dw), (scale_dx, scale_dw) = _backward_oracle(dy, x, w, cfg)
    assert np.all(np.abs(conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=splits) - want_dw) <= 2e-6 * (scale_dw + 1.0))
    assert np.all(np.abs(conv_tc.dgrad("emu", dy, w, g, tile=tile, splits=splits) - want_dx) <= 2e-6 * (scale_dx + 1.0))


def _vector_dy_requests(prof):
    """Warp requests of wgrad's 16- and 8-byte dy loads (load_operand_words and load_operand_pair in
    kernels/mma_tile.cuh)."""
    header = backend.kernel_dir() / "mma_tile.cuh"
    vectors = [f"__ldg((const {kind}*)" for kind in ("float4", "uint4", "float2", "uint2")]
    lines = {number for number, text in enumerate(header.read_text().splitlines(), 1)
             if any(vector in text for vector in vectors)}
    return sum(site["requests"] for site in prof.sites if site["kernel"].startswith("conv2d_wgrad_tc")
               and site["file"].endswith("mma_tile.cuh") and site["line"] in lines)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_loads_dy_in_vectors_where_aligned_and_by_element_elsewhere(dtype):
    """wgrad's dy loader: 16-byte loads where each lane's pixels lie in one image and dy's rows are
    16-byte aligned (P*Q = 64), and where they would straddle two images (P*Q = 49) from the
    launcher's channel-major copy of dy; pairs of 8-byte loads (the _pairs kernel) where P*Q is a
    multiple of 2 words but not 4 (30 float32 or 36 float16 pixels); one element at a time in the
    _gather kernel (P*Q = 49 with a small filter: the copy would not pay; float16 has the 64-row one
    only, so a forced 128-row tile copies) and where dy starts off a 16- or 8-byte boundary (a view
    one element into a buffer it shares with x); each against the oracle."""
    from cnn_gpu import emu
    from test_conv_float16 import assert_within_bound, exact
    rng = np.random.default_rng(15)
    wide_gather = "gather" if dtype == np.float32 else "channel_major"
    pairs = (6, 5) if dtype == np.float32 else (6, 6)
    cases = (((8, 8), False, "tc", None, "vector"), ((7, 7), False, None, None, "gather"),
             ((7, 7), False, "tc", None, wide_gather), ((7, 7), True, None, None, "gather"),
             ((7, 7), False, "tc_m64", "channel_major", "channel_major"), ((8, 8), True, None, None, "vector"),
             (pairs, False, None, None, "pairs"), (pairs, False, "tc_m64", None, "pairs"), (pairs, True, "tc", None, "pairs"))
    for (height, width), misaligned, tile, dy_path, path in cases:
        side = f"{height}x{width}"
        cfg = dict(n=2, c=5, h=height, w=width, k=9, r=3, s=3, stride=1, pad=1, dil=1, groups=1)
        w = rng.standard_normal((9, 5, 3, 3)).astype(dtype)
        g = conv_geometry((2, 5, height, width), w.shape, padding=1)
        x, dy = (rng.standard_normal(shape).astype(dtype) for shape in (g.x_shape, g.y_shape))
        if misaligned:
            shared = rng.standard_normal(dy.size + 1).astype(dtype)
            x, dy = shared[:x.size].reshape(g.x_shape), shared[1:].reshape(g.y_shape)
        with emu.profiling() as prof:
            dw = conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=2, dy_path=dy_path)
        assert (_vector_dy_requests(prof) > 0) == (path != "gather" and not misaligned), (side, misaligned, path)
        assert (dy_path or conv_tc.wgrad_dy_path(g, dtype, tile=tile)) == path
        kernels = {name for name in prof.kernels if name.startswith("conv2d_wgrad")}
        plan = conv_tc.plan_wgrad(g, dtype=dtype, tile=tile, splits=2, dy_path=dy_path)
        assert kernels == {plan.main.kernel} and plan.dy_path == path
        kernel = kernels.pop()
        assert kernel.startswith(conv_tc.GATHER_KERNEL) == (path == "gather")
        # the 64-channel tile loads 8 bytes a lane anyway: its vector kernel takes pairs
        assert kernel.startswith(conv_tc.PAIRS_KERNEL) == (path == "pairs" and conv_tc.TILES[plan.tile].bm == 128)
        if dtype == np.float16:
            (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, bias=False, padding=1)
            assert_within_bound(dw, want, scale, g.N * g.P * g.Q + 2, f"wgrad {side} misaligned={misaligned}")
        else:
            (_, want), (_, scale) = _backward_oracle(dy, x, w, cfg)
            assert np.all(np.abs(dw - want) <= 2e-6 * (scale + 1.0)), (side, misaligned)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_dy_rows_of_partial_channel_tiles(dtype):
    """wgrad's dy rows run at one stride from each lane's first: a lane whose channels pass the
    group's last starts earlier (Kg - NT), and where Kg < NT each lane repeats one channel. Groups
    of 136, 100, 70 (no multiples of 8: whole tiles next to partial ones) and 3 channels, two
    groups, every tile and dy path, 2 splits of 50 pixels (the first ends mid-image)."""
    from test_conv_float16 import assert_within_bound, exact
    rng = np.random.default_rng(27)
    paths = ("vector", "channel_major") + (("gather",) if dtype == np.float32 else ())
    cases = [(136, "tc", paths[0]), (100, "tc", paths[1]), (70, "tc_m64", paths[-1]), (3, "tc", paths[-1]),
             (3, "tc_m64", paths[0])]
    for kg, tile, dy_path in cases:
        cfg = dict(n=2, c=6, h=5, w=5, k=2 * kg, r=3, s=3, stride=1, pad=1, dil=1, groups=2)
        x = rng.standard_normal((2, 6, 5, 5)).astype(dtype)
        w = rng.standard_normal((2 * kg, 3, 3, 3)).astype(dtype)
        g = _geometry(x, w, cfg)
        dy = rng.standard_normal(g.y_shape).astype(dtype)
        dw = conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=2, dy_path=dy_path)
        if dtype == np.float16:
            (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, bias=False, padding=1, groups=2)
            assert_within_bound(dw, want, scale, g.N * g.P * g.Q + 2, f"wgrad Kg={kg} {tile} {dy_path}")
        else:
            (_, want), (_, scale) = _backward_oracle(dy, x, w, cfg)
            assert np.all(np.abs(dw - want) <= 2e-6 * (scale + 1.0)), (kg, tile, dy_path)


# (x shape, filter shape, row stride, padding, row dilation, groups, splits) of the _rows kernel's
# test: every tile phase (tiles of 128 filter columns start at s = 0, 2, 1: 261 columns), R of 1, 2,
# 3 and 5, x columns left and right of the image (padding 0-2 each way), partial channel tiles
# (Kg 5, 40 and 70 on the 64-channel tile), 1-3 splits, a run of pixels that ends an image mid-step
ROWS_LAYERS = [((2, 29, 5, 12), (70, 29, 3, 3), 1, (1, 1), 1, 1, 2),
               ((1, 12, 9, 6), (40, 6, 2, 3), 2, (0, 0), 2, 2, 3),
               ((2, 3, 7, 10), (5, 3, 5, 3), 1, (2, 2), 1, 1, 1),
               ((3, 10, 4, 4), (64, 10, 1, 3), 1, (0, 1), 1, 1, 2)]


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_by_filter_rows_matches_the_column_loader_bit_for_bit(dtype, monkeypatch):
    """The _rows kernel reads x by filter rows (a row's 3 taps over a lane's 4 words of pixels from
    6 or 10 loads, ROWS_LAYERS' geometries) into the same A tile as the 64-channel column loader,
    so its dw is bit-identical to that kernel's, and within the oracle's bound."""
    from test_conv_float16 import assert_within_bound, exact
    rng = np.random.default_rng(44)
    lane_pixels = conv_tc.step_depth(dtype) // 4
    for x_shape, w_shape, stride, padding, dilation, groups, splits in ROWS_LAYERS:
        x_shape = x_shape[:3] + (x_shape[3] + lane_pixels - 4,)   # Q, 4 or 12 (+ pw twice - 2): 8 or 16 for float16
        g = conv_geometry(x_shape, w_shape, stride=(stride, 1), padding=padding, dilation=(dilation, 1),
                          groups=groups)
        assert conv_tc.tap_rows_supported(g, dtype), g
        x, w, dy = (rng.standard_normal(shape).astype(dtype) for shape in (g.x_shape, g.w_shape, g.y_shape))
        plan = conv_tc.plan_wgrad(g, dtype=dtype, tile="tc_m64", splits=splits)
        assert plan.main.kernel == conv_tc.TAP_ROWS_KERNEL
        dw = conv_tc.wgrad("emu", dy, x, g, tile="tc_m64", splits=splits)
        with monkeypatch.context() as patch:
            patch.setattr(conv_tc.wgrad_plans, "tap_rows_supported", lambda *args: False)
            _plan_cache.clear()
            assert conv_tc.plan_wgrad(g, dtype=dtype, tile="tc_m64", splits=splits).main.kernel == "conv2d_wgrad_tc_m64"
            by_columns = conv_tc.wgrad("emu", dy, x, g, tile="tc_m64", splits=splits)
        _plan_cache.clear()   # the plans made under the patch
        assert dw.tobytes() == by_columns.tobytes(), g
        kw = dict(bias=False, stride=(stride, 1), padding=padding, dilation=(dilation, 1), groups=groups)
        if dtype == np.float16:
            (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, **kw)
            assert_within_bound(dw, want, scale, g.N * g.P * g.Q + 2, f"wgrad by rows {g}")
        else:
            ops = [round_to_tf32(a).astype(np.float64) for a in (dy, x, w)]
            want = F.conv2d_backward(*ops, backend="numpy", **kw)[1]
            scale = F.conv2d_backward(*(np.abs(a) for a in ops), backend="numpy", **kw)[1]
            assert np.all(np.abs(dw - want) <= 2e-6 * (scale + 1.0)), g


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_reads_x_by_filter_rows_where_a_lanes_pixels_share_an_output_row(dtype):
    """The planner runs the _rows kernel for 3-tap filter rows at column stride and dilation 1 where Q
    is a multiple of a lane's pixels (4 words): ResNet's 64-channel 3x3 layer at 56x56; the
    64-channel column loader where any of these fails, or the tap masks lack the bits of a run's x
    columns (R + 2 + a lane's pixels > 32)."""
    lane_pixels = conv_tc.step_depth(dtype) // 4
    layer = conv_geometry((128, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert conv_tc.plan_wgrad(layer, dtype=dtype).main.kernel == conv_tc.TAP_ROWS_KERNEL
    others = [conv_geometry((2, 64, 56, 56), (64, 64, 3, 3), stride=(1, 2), padding=1),
              conv_geometry((2, 64, 56, 56), (64, 64, 3, 3), padding=2, dilation=(1, 2)),
              conv_geometry((2, 64, 56, 56), (64, 64, 3, 5), padding=(1, 2)),
              conv_geometry((2, 64, 14, lane_pixels + 2), (64, 64, 3, 3), padding=1),
              conv_geometry((2, 4, 40, 8), (64, 4, 33 - 2 - lane_pixels, 3), padding=(0, 1))]
    for g in others:
        assert not conv_tc.tap_rows_supported(g, dtype), g
        assert conv_tc.plan_wgrad(g, dtype=dtype, tile="tc_m64").main.kernel != conv_tc.TAP_ROWS_KERNEL
    edge = conv_geometry((2, 4, 40, 8), (64, 4, 32 - 2 - lane_pixels, 3), padding=(0, 1))
    assert conv_tc.tap_rows_supported(edge, dtype)


def test_wgrad_ranks_bound_the_segments_of_every_tile():
    """wgrad_ranks against a walk of the runs kernels/conv2d_tc.cu's wgrad_mma gives the blocks:
    each tile's segments are partial outputs 0, 1, ... in step order, at most wgrad_ranks of them
    (exactly, with tiles x splits blocks), as many as the kernel counts from the blocks of the
    tile's first and last steps, wgrad_segments of them in all, and a run meets two tiles at most
    (blocks >= tiles)."""
    rng = np.random.default_rng(41)
    for _ in range(2000):
        tiles, steps = int(rng.integers(1, 30)), int(rng.integers(1, 50))
        work = tiles * steps
        blocks = int(rng.integers(tiles, work + 1))
        segments = {}
        for block in range(blocks):
            start, end = block * work // blocks, (block + 1) * work // blocks
            met = range(start // steps, (end - 1) // steps + 1)
            assert end > start and len(met) <= 2
            for tile in met:   # the kernel's rank: the block minus the one of the tile's first step
                segments.setdefault(tile, []).append(block - ((tile * steps + 1) * blocks - 1) // work)
        ranks = conv_tc.wgrad_ranks(tiles, steps, blocks)
        assert all(got == list(range(len(got))) and len(got) <= ranks for got in segments.values())
        assert blocks % tiles or max(map(len, segments.values())) == ranks
        for tile, got in segments.items():
            first_block = ((tile * steps + 1) * blocks - 1) // work
            assert len(got) == ((tile + 1) * steps * blocks - 1) // work - first_block + 1
        assert sum(map(len, segments.values())) == conv_tc.wgrad_segments(tiles, steps, blocks)


@needs_emu
def test_tf32_wgrad_on_balanced_grids_matches_the_oracle(monkeypatch):
    """Grids whose blocks meet two tiles (stream-K: conv_tc.BALANCED_KERNEL): 3 filter-column tiles
    x 2 groups over 11 steps (the last partial), block counts that give tiles 1 to 6 segments, the
    ranks a tile lacks never read (the workspace starts NaN), every dy path that has 16-byte loads;
    each against the oracle, and the same bits twice."""
    monkeypatch.setattr(conv_tc, "_partials", lambda xp, count, shape: xp.full((count,) + shape, np.nan, np.float32))
    rng = np.random.default_rng(43)
    for side, dy_path in ((9, "channel_major"), (8, "vector")):
        cfg = dict(n=2, c=60, h=side, w=side, k=40, r=3, s=3, stride=1, pad=1, dil=1, groups=2)
        x, w, _ = _arrays(rng, cfg)
        g = _geometry(x, w, cfg)
        dy = rng.standard_normal(g.y_shape).astype(np.float32)
        (_, want), (_, scale) = _backward_oracle(dy, x, w, cfg)
        tiles, steps = conv_tc.wgrad_tiles(g, "tc"), -(-g.N * g.P * g.Q // 16)
        assert tiles == 6 and steps in (11, 8)
        for blocks in (7, 10, 13, 25, tiles * steps - 1):
            plan = conv_tc.plan_wgrad(g, tile="tc", blocks=blocks, dy_path=dy_path)
            assert plan.main.kernel == conv_tc.BALANCED_KERNEL and plan.main.grid == (blocks, 1, 1)
            assert plan.splits == conv_tc.wgrad_ranks(tiles, steps, blocks) > 1
            dw = conv_tc.wgrad("emu", dy, x, g, tile="tc", blocks=blocks, dy_path=dy_path)
            assert np.all(np.abs(dw - want) <= 2e-6 * (scale + 1.0)), (side, blocks)
            again = conv_tc.wgrad("emu", dy, x, g, tile="tc", blocks=blocks, dy_path=dy_path)
            assert dw.tobytes() == again.tobytes()


def test_wgrad_balances_the_512_channel_7x7_layer():
    """ResNet's 512@7x7 3x3 wgrad at batch 128: 144 block tiles over 392 steps fill 1.64 waves of
    264 resident blocks as 3 splits, so both dtypes run 264 balanced blocks (3 partial outputs:
    every tile meets 2 or 3 runs). Forced grids outside the kernels (blocks that meet two tiles
    on the 64-row tile or with dy read in pairs or element by element) are refused before any
    launch, as is float16 with dy element by element on the 128-row tile (its _gather kernel has
    the 64-row one only)."""
    g = conv_geometry((128, 512, 7, 7), (512, 512, 3, 3), padding=1)
    for dtype in (np.float32, np.float16):
        plan = conv_tc.plan_wgrad(g, dtype=dtype, sms=132)
        assert (plan.main.kernel, plan.main.grid, plan.splits) == (conv_tc.BALANCED_KERNEL, (264, 1, 1), 3)
    for dtype, tile, blocks, dy_path, match in ((np.float16, "tc", 145, "pairs", "multiple"),
                                                (np.float32, "tc", 145, "gather", "multiple"),
                                                (np.float32, "tc_m64", 289, None, "multiple"),
                                                (np.float32, "tc", 143, None, "must be 144"),
                                                (np.float32, "tc", 10 ** 6, None, "must be")):
        with pytest.raises(ValueError, match=match):
            conv_tc.plan_wgrad(g, dtype=dtype, tile=tile, blocks=blocks, dy_path=dy_path)
    with pytest.raises(ValueError, match="float16 _gather kernel has the tiles tc_m64, not 'tc'"):
        conv_tc.plan_wgrad(g, dtype=np.float16, dy_path="gather", tile="tc")
    assert conv_tc.plan_wgrad(g, dtype=np.float16, dy_path="gather").main.kernel == conv_tc.GATHER_KERNEL + "_m64"
    with pytest.raises(ValueError, match="not both"):
        conv_tc.plan_wgrad(g, splits=2, blocks=288)


def test_tf32_wgrad_leaves_filters_past_its_tap_masks_to_simt():
    g = conv_geometry((1, 1, 40, 40), (1, 1, 17, 16))
    assert not conv_tc.wgrad_supported(g) and conv_tc.wgrad("emu", None, np.ones(g.x_shape, np.float32), g) is None
    with pytest.raises(ValueError, match="R \\+ S"):
        conv_tc.plan_wgrad(g)
    assert conv_tc.wgrad_supported(conv_geometry((1, 1, 40, 40), (1, 1, 16, 16)))


def test_tf32_plans_split_small_grids_and_not_large_ones():
    small = conv_geometry((8, 512, 7, 7), (512, 512, 3, 3), padding=1)         # 16 block tiles
    large = conv_geometry((128, 128, 28, 28), (128, 128, 3, 3), padding=1)     # 784 block tiles
    assert conv_tc.plan_fprop(small).splits > 1 and conv_tc.plan_fprop(large).splits == 1
    plan = conv_tc.plan_fprop(small, tile="tc")
    assert [launch.kernel for launch in plan.launches] == [conv_tc.FILTER_TILES_KERNEL, "conv2d_fprop_tc",
                                                           "split_sum_epilogue"]
    assert plan.main.grid[2] == plan.splits and plan.main.block == (conv_tc.THREADS, 1, 1)
    wgrad = conv_tc.plan_wgrad(large)   # 9 block tiles over 100352 pixels
    blocks = wgrad.main.grid[0] * wgrad.main.grid[1] * wgrad.main.grid[2]
    assert wgrad.splits > 1 and blocks % (gpu_conv.DEFAULT_SMS * conv_tc.BLOCKS_PER_SM) > 200
    narrow = conv_geometry((128, 64, 56, 56), (64, 64, 3, 3), padding=1)      # 64 output channels
    assert conv_tc.plan_fprop(narrow).tile == "tc_m64" and conv_tc.plan_fprop(large).tile == "tc"
    assert conv_tc.plan_fprop(narrow).main.kernel == "conv2d_fprop_tc_m64"
    assert conv_tc.plan_dgrad(narrow, tile="tc").main.kernel == "conv2d_dgrad_tc"
    assert conv_tc.plan_wgrad(narrow).main.kernel == conv_tc.TAP_ROWS_KERNEL and wgrad.tile == "tc"
    narrow_1x1 = conv_geometry((128, 64, 56, 56), (64, 64, 1, 1))
    assert conv_tc.plan_wgrad(narrow_1x1).main.kernel == "conv2d_wgrad_tc_m64"
    with pytest.raises(ValueError, match="tile must be"):
        conv_tc.plan_fprop(narrow, tile="large")


@needs_emu
@pytest.mark.parametrize("cfg", [
    dict(n=2, c=3, h=11, w=10, k=5, r=2, s=3, stride=3, pad=1, dil=2, groups=1),   # phases with no tap
    dict(n=1, c=4, h=9, w=8, k=6, r=1, s=1, stride=2, pad=0, dil=1, groups=2),     # 1x1 stride 2: one phase
    dict(n=1, c=2, h=7, w=7, k=3, r=3, s=3, stride=1, pad=3, dil=1, groups=1),     # padding past the kernel
])
def test_tf32_dgrad_runs_every_stride_phase_on_tensor_cores(cfg):
    rng = np.random.default_rng(13)
    x, w, _ = _arrays(rng, cfg)
    g = _geometry(x, w, cfg)
    dy = rng.standard_normal(g.y_shape).astype(np.float32)
    (want_dx, _), (scale_dx, _) = _backward_oracle(dy, x, w, cfg)
    for splits in (None, 2):
        dx = conv_tc.dgrad("emu", dy, w, g, splits=splits)
        assert np.all(np.abs(dx - want_dx) <= 2e-6 * (scale_dx + 1.0)), (cfg, splits)
    phases = conv_tc.dgrad_phases(g)
    assert len(phases.phases) == g.stride[0] * g.stride[1]
    assert sum(len(r) * len(c) for r, c in zip(phases.rows, phases.cols)) == g.R * g.S   # each tap once


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dgrad_adds_the_bias_to_the_fp32_sum_before_its_one_rounding(dtype, monkeypatch):
    """conv_transpose2d's bias: without split-K the dgrad kernel adds it and rounds once (its one
    launch after the filter tiles': no bias_add, no FP32 partials); with split-K the summing launch
    adds it. Operands on a 1/64 grid make every FP32 sum exact in any order, so dx has the bits of
    the exact sum plus the bias rounded once (a float16 dx rounded before the bias is added differs)."""
    rng = np.random.default_rng(29)
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda be, family, dt, kernel, *rest: (
        launched.append(kernel), real_launch(be, family, dt, kernel, *rest))[1])
    for cfg in (dict(n=2, c=20, h=9, w=7, k=12, r=3, s=3, stride=2, pad=1, dil=1, groups=2),
                dict(n=2, c=3, h=11, w=10, k=5, r=2, s=3, stride=3, pad=1, dil=2, groups=1)):   # phases with no tap
        x, _, _ = _arrays(rng, cfg)
        w = (rng.integers(-64, 65, (cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"])) / 64).astype(dtype)
        g = _geometry(x, w, cfg)
        dy = (rng.integers(-64, 65, g.y_shape) / 64).astype(dtype)
        bias = (rng.integers(-1024, 1025, g.C) / 256).astype(dtype)
        exact = F.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), bias=False,
                                  stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups,
                                  backend="numpy")[0]
        want = (exact + bias.astype(np.float64)[:, None, None]).astype(dtype)
        if dtype == np.float16:
            twice = (exact.astype(dtype).astype(np.float64) + bias.astype(np.float64)[:, None, None]).astype(dtype)
            assert not np.array_equal(twice, want), "the operands must tell one rounding from two"
        for tile, splits in (("tc", 1), ("tc_m64", 1), ("tc", 2)):
            launched.clear()
            dx = conv_tc.dgrad("emu", dy, w, g, bias=bias, tile=tile, splits=splits)
            plan = conv_tc.plan_dgrad(g, dtype=dtype, tile=tile, splits=splits)   # 1 split where 1 step
            assert launched == [launch.kernel for launch in plan.launches], launched
            assert launched[1:] == [plan.main.kernel] + (["split_sum_epilogue"] if plan.splits > 1 else [])
            assert dx.dtype == dtype and np.array_equal(dx.view(f"u{dx.itemsize}"), want.view(f"u{dx.itemsize}")), \
                (cfg, tile, splits)


SASS_MISSING = nvrtc.why_unavailable() or sass.why_unavailable("sm_90")


@pytest.mark.skipif(bool(SASS_MISSING), reason=f"SASS report unavailable: {SASS_MISSING}")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_float16_kernels_issue_hmma_in_their_hot_loops_without_local_memory(arch):
    """The float16 build: HMMA.16816 (mma.sync m16n8k16) in every hot loop, 64 per 16-word step
    of the 128-row tiles (4 x 8 warp tiles x 2 half steps) and two steps per loop (register
    fragments alternate), no local memory, no stack; the main
    fprop and dgrad tiles issue an HMMA at least every 4 instructions (an H100 SMSP's tensor pipe
    takes one every 4 clocks: an MMA issue ceiling of 100%)."""
    rows = {row["kernel"]: row for row in sass.kernel_rows("conv2d_tc", "float16", arch)}
    tiles = rows.pop(conv_tc.FILTER_TILES_KERNEL)   # memory-bound: no mma
    assert tiles["mma"] == 0 and tiles["local_memory"] == 0 and tiles["stack_bytes"] == 0
    assert set(rows) == {"conv2d_fprop_tc", "conv2d_fprop_tc_m64", "conv2d_fprop_tc_flat", "conv2d_fprop_tc_flat_m64",
                         "conv2d_dgrad_tc", "conv2d_dgrad_tc_m64",
                         "conv2d_wgrad_tc", "conv2d_wgrad_tc_m64", "conv2d_wgrad_tc_pairs",
                         conv_tc.BALANCED_KERNEL, conv_tc.GATHER_KERNEL + "_m64", conv_tc.TAP_ROWS_KERNEL,
                         conv_tc.RESIDUES_KERNEL, "conv2d_fprop_tc_n96", "conv2d_dgrad_tc_n96"}
    for name, row in rows.items():
        where = f"{name} float16 {arch}"
        per_step = 32 if name.endswith("_m64") else 48 if name.endswith("_n96") else 64
        assert row["mma"] == per_step * 2, f"{where}: {row['mma']} MMA"
        assert row["local_memory"] == 0 and row["stack_bytes"] == 0, where
        if name in ("conv2d_fprop_tc", "conv2d_dgrad_tc"):
            assert row["mma"] * 4 >= row["instructions"], f"{where}: {row['instructions']} instructions per loop"


@pytest.mark.skipif(bool(SASS_MISSING), reason=f"SASS report unavailable: {SASS_MISSING}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_wgrad_hot_loops_priced_are_the_vector_dy_paths(dtype):
    """The SASS report prices the path through a loop that falls through every guard
    (cnn_gpu.sass.loops). In the wgrad kernels that load dy in vectors that must be the vector
    path, not the element path of a last partial step: NVRTC laid the latter out as the fall-through
    once load_dy's condition was hoisted out of the loop, and the report then priced 485
    instructions a loop instead of 394 (conv2d_wgrad_tc_rows_m64, float32). Per step: 8 vector
    loads of dy (16 bytes; 8 in the 64-channel tiles' half steps; two of 8 bytes in _pairs), 2 steps
    a loop."""
    rows = {row["kernel"]: row for row in sass.kernel_rows("conv2d_tc", dtype, "sm_90")}
    vectors = {"conv2d_wgrad_tc": (128, 16), conv_tc.BALANCED_KERNEL: (128, 16), "conv2d_wgrad_tc_m64": (64, 16),
               conv_tc.TAP_ROWS_KERNEL: (64, 16), "conv2d_wgrad_tc_pairs": (64, 32)}
    if dtype == "float16":   # no element path at all: its table is whole steps of whole chunks
        vectors[conv_tc.RESIDUES_KERNEL] = (128, 16)
    for kernel, (bits, loads) in vectors.items():
        assert rows[kernel]["ldg_bits"].count(bits) == loads, (kernel, rows[kernel]["ldg_bits"])


@pytest.mark.skipif(bool(SASS_MISSING), reason=f"SASS report unavailable: {SASS_MISSING}")
def test_wgrad_picker_weights_are_the_sm_90_issue_ceilings():
    """WGRAD_EFFICIENCY, the picker's weight of each wgrad tile, is the least of its float32 and
    float16 hot loops' MMA issue ceilings on H100 (rounded to 0.01), and BALANCED_EFFICIENCY and
    TAP_ROWS_EFFICIENCY the balanced and _rows kernels' likewise (RESIDUES_EFFICIENCY the float16
    _residues kernel's), so a faster or slower loop cannot leave the picker weighing stale figures."""
    from cnn_gpu import roofline
    spec = roofline.spec("h100")
    for name, weight in conv_tc.WGRAD_EFFICIENCY.items():
        kernel = "conv2d_wgrad_tc" + conv_tc.TILES[name].suffix
        ceilings = [roofline.mma_issue_ceiling(roofline.kernel_traits("conv2d_tc", kernel, dtype, "sm_90"), spec, pipe)
                    for dtype, pipe in (("float32", "tf32"), ("float16", "fp16"))]
        assert weight == pytest.approx(min(ceilings), abs=0.005), (name, ceilings)
    for kernel, weight in ((conv_tc.BALANCED_KERNEL, conv_tc.BALANCED_EFFICIENCY),
                           (conv_tc.TAP_ROWS_KERNEL, conv_tc.TAP_ROWS_EFFICIENCY)):
        ceilings = [roofline.mma_issue_ceiling(roofline.kernel_traits("conv2d_tc", kernel, dtype, "sm_90"), spec, pipe)
                    for dtype, pipe in (("float32", "tf32"), ("float16", "fp16"))]
        assert weight == pytest.approx(min(ceilings), abs=0.005), (kernel, ceilings)
    ceiling = roofline.mma_issue_ceiling(roofline.kernel_traits("conv2d_tc", conv_tc.RESIDUES_KERNEL, "float16",
                                                                "sm_90"), spec, "fp16")   # float16 only
    assert conv_tc.RESIDUES_EFFICIENCY == pytest.approx(ceiling, abs=0.005)


def test_tile_picker_weights_are_the_sm_90_issue_ceilings():
    """TILES' efficiency, the picker's weight of the 64-row and 96-pixel fprop and dgrad tiles, is
    the least of their float32 and float16 hot loops' MMA issue ceilings on H100 (rounded to 0.01;
    the 128 x 128 tile's loops issue an HMMA every 4 instructions or sooner: 1.0)."""
    from cnn_gpu import roofline
    spec = roofline.spec("h100")
    for name, tile in conv_tc.TILES.items():
        kernels = [f"conv2d_{pass_name}_tc{tile.suffix}" for pass_name in ("fprop", "dgrad")]
        ceilings = [roofline.mma_issue_ceiling(roofline.kernel_traits("conv2d_tc", kernel, dtype, "sm_90"), spec, pipe)
                    for kernel in kernels for dtype, pipe in (("float32", "tf32"), ("float16", "fp16"))]
        assert tile.efficiency == pytest.approx(min(ceilings), abs=0.005), (name, ceilings)


@needs_emu
def test_launchers_plan_a_geometry_once(monkeypatch):
    """Each pass's launcher searches its plan on the first call only (the same geometry every
    step): wgrad's grid and dy path searches, fprop's and dgrad's tile searches."""
    searches = []
    for module, name in ((conv_tc.wgrad_plans, "_choose_wgrad"), (conv_tc.plan, "_choose")):
        search = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, search=search, **kw: searches.append(1) or search(*args, **kw))
    rng = np.random.default_rng(45)
    g = conv_geometry((2, 24, 7, 7), (16, 24, 3, 3), padding=1)
    x, w, dy = (rng.standard_normal(shape).astype(np.float16) for shape in (g.x_shape, g.w_shape, g.y_shape))
    for step in range(2):
        conv_tc.fprop("emu", x, w, None, g), conv_tc.dgrad("emu", dy, w, g), conv_tc.wgrad("emu", dy, x, g)
        if step == 0:
            first = len(searches)
    assert first >= 5 and len(searches) == first   # wgrad: its three dy paths' searches, then the plan's


def test_float32_dgrad_plans_waves_of_3_resident_64_row_blocks(monkeypatch):
    """132 block tiles of 64 rows over 128 steps: split 3 ways, one wave of 3 resident blocks per SM
    (the float32 64-row dgrad kernel's launch bounds); at 2 blocks per SM, 2 ways."""
    g = conv_geometry((132, 64, 8, 16), (2048, 64, 1, 1))
    plan = conv_tc.plan_dgrad(g, dtype=np.float32)
    assert (plan.tile, plan.splits, plan.main.grid) == ("tc_m64", 3, (132, 1, 3))
    monkeypatch.setattr(conv_tc.plan, "DGRAD_BLOCKS_PER_SM", {})
    _plan_cache.clear()
    assert conv_tc.plan_dgrad(g, dtype=np.float32).splits == 2


@pytest.mark.skipif(bool(SASS_MISSING), reason=f"SASS report unavailable: {SASS_MISSING}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dgrad_kernels_fit_the_resident_blocks_the_planner_counts(dtype):
    """sm_90: each dgrad kernel, as compiled, holds exactly DGRAD_BLOCKS_PER_SM (else BLOCKS_PER_SM)
    resident blocks per SM (nvrtc.occupancy, the figure the model uses), without local memory or stack."""
    from cnn_gpu import roofline
    rows = {row["kernel"]: row for row in sass.kernel_rows("conv2d_tc", dtype, "sm_90")}
    for name in conv_tc.TILES:
        kernel = "conv2d_dgrad_tc" + conv_tc.TILES[name].suffix
        traits = roofline.kernel_traits("conv2d_tc", kernel, np.dtype(dtype).name, "sm_90")
        blocks = conv_tc.DGRAD_BLOCKS_PER_SM.get(np.dtype(dtype), {}).get(name, conv_tc.BLOCKS_PER_SM)
        resident = nvrtc.occupancy("sm_90", traits.registers, traits.shared_bytes, conv_tc.THREADS)[1]
        assert resident == blocks, (name, traits.registers, resident, blocks)
        assert rows[kernel]["local_memory"] == 0 and rows[kernel]["stack_bytes"] == 0, name


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dgrad_phase_table_is_cached_per_geometry(dtype):
    """Made once per geometry and tile instead of per call, read-only; the table's tile offsets
    (in operand words) are where dgrad concatenates each phase's filter tiles."""
    g = conv_geometry((2, 40, 9, 9), (6, 40, 3, 3), stride=2, padding=1)
    bm, depth = conv_tc.TILES["tc"].bm, conv_tc.step_depth(dtype)
    table = conv_tc._phase_table("emu", None, g, bm, depth)
    assert conv_tc._phase_table("emu", None, g, bm, depth) is table and not table.flags.writeable
    phases = conv_tc.dgrad_phases(g)
    # 40 dx channels: one 128-row block; 6 dy channels: one step (16 words) per tap
    sizes = [128 * len(rows) * len(cols) * 16 for rows, cols in zip(phases.rows, phases.cols)]
    np.testing.assert_array_equal(table[:, 8], np.cumsum([0] + sizes[:-1]))


# a 3x3 filter at stride 2, and a 1x31 one whose tap masks use all 32 bits (bit 31: negative ints)
PIXEL_TABLE_LAYERS = [((2, 40, 9, 9), (6, 40, 3, 3), (2, 2), (1, 1), (1, 1)),
                      ((3, 2, 5, 33), (4, 2, 1, 31), (1, 2), (0, 15), (1, 1)),
                      ((2, 3, 11, 8), (5, 3, 2, 3), (1, 1), (1, 2), (3, 2))]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layer", PIXEL_TABLE_LAYERS)
def test_wgrad_pixel_table_is_cached_and_describes_every_pixel(dtype, layer):
    """wgrad's pixel table, made once per geometry and dy layout, read-only: every entry against a
    direct decode of its pixel (n, p, q) and direct loops over its taps, in the slot order the
    kernel's loaders read; the padding of the last step adds nothing (tap mask 0, dy offset -1)."""
    x_shape, w_shape, stride, padding, dilation = layer
    g = conv_geometry(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation)
    depth = conv_tc.step_depth(dtype)
    for dy_image in (g.K * g.P * g.Q, g.P * g.Q):   # NCHW dy, the channel-major copy
        pixels = conv_tc._cached_pixel_table("emu", None, g, dy_image, depth)
        assert conv_tc._cached_pixel_table("emu", None, g, dy_image, depth) is pixels and not pixels.flags.writeable
        assert pixels.nbytes == conv_tc.pixel_table_bytes(g, dtype) and pixels.dtype == np.int32
        per_word, (sh, sw), (ph, pw), (dh, dw) = depth // conv_tc.TILE_K, g.stride, g.padding, g.dilation
        for index in range(pixels.shape[0] * depth):
            step, t = divmod(index, depth)
            word = t // per_word
            column = 8 * (word // 2 % 2) + 4 * (word % 2) + word // 4
            slot = column * per_word + t % per_word
            origin, taps, dy_at = pixels[step, 0, slot], pixels[step, 1, slot], pixels[step, 2, t]
            if index >= g.N * g.P * g.Q:
                assert (taps, dy_at) == (0, -1)
                continue
            n, p, q = index // (g.P * g.Q), index // g.Q % g.P, index % g.Q
            h0, w0 = p * sh - ph, q * sw - pw
            assert origin == n * g.C * g.H * g.W + h0 * g.W + w0
            expected = sum(1 << r for r in range(g.R) if 0 <= h0 + r * dh < g.H)
            # past the S taps, the x columns of the _rows kernel's runs of pixels, as far as 32 bits go
            columns = max(g.S, min(conv_tc.COLUMN_RUN_BITS, 32 - g.R))
            expected |= sum(1 << (g.R + s) for s in range(columns) if 0 <= w0 + s * dw < g.W)
            assert (int(taps) & 0xFFFFFFFF, dy_at) == (expected, n * dy_image + p * g.Q + q)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_of_a_filter_whose_tap_masks_fill_32_bits(dtype):
    """R + S = 32 (1x31, padding 15): tap bit 31 set, so negative table entries; both tiles, split
    and not, against the oracle."""
    from test_conv_float16 import assert_within_bound, exact
    rng = np.random.default_rng(32)
    w = rng.standard_normal((4, 2, 1, 31)).astype(dtype)
    g = conv_geometry((3, 2, 5, 33), w.shape, stride=(1, 2), padding=(0, 15))
    assert conv_tc.wgrad_supported(g) and g.R + g.S == 32
    x, dy = (rng.standard_normal(shape).astype(dtype) for shape in (g.x_shape, g.y_shape))
    cfg = dict(n=3, c=2, h=5, w=33, k=4, r=1, s=31, stride=(1, 2), pad=(0, 15), dil=1, groups=1)
    for tile, splits in (("tc", 1), ("tc_m64", 2)):
        dw = conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=splits)
        if dtype == np.float16:
            (_, want, _), (_, scale, _) = exact(F.conv2d_backward, dy, x, w, bias=False, stride=(1, 2), padding=(0, 15))
            assert_within_bound(dw, want, scale, g.N * g.P * g.Q + 2, f"wgrad 1x31 {tile}")
        else:
            (_, want), (_, scale) = _backward_oracle(dy, x, w, cfg)
            assert np.all(np.abs(dw - want) <= 2e-6 * (scale + 1.0)), tile


def test_wgrad_refuses_a_pixel_table_past_32_bit_indexing():
    """x and dy within 32-bit indices, but not the table's 3 ints per output pixel: refused when
    planned, before anything is allocated."""
    conv_tc.plan_wgrad(conv_geometry((100, 1, 2000, 2000), (1, 1, 1, 1)))   # 1.2e9 entries: fits
    with pytest.raises(ValueError, match="pixel table"):
        conv_tc.plan_wgrad(conv_geometry((200, 1, 2000, 2000), (1, 1, 1, 1)))
