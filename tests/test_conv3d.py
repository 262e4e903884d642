"""conv3d, conv3d_backward and nn.Conv3d: the NumPy path and the implicit-GEMM kernels
(kernels/conv3d_fprop.cu, kernels/conv3d_dgrad.cu and kernels/conv3d_wgrad.cu).

Proof: PyTorch CPU values and gradients (stride, padding int/triple/"same"/"valid", dilation, groups,
bias, odd sizes, unbatched) on numpy and emu in float64 (1e-10) and float32 (1e-5); the direct loops of
reference_loops.py; finite differences; float16 against the NumPy oracle (FP32 math, rounded once); the
emulator's guard zones, race check and reverse/random schedules on every tile, split-K, the padded copy
of a long filter, stride > 1 dgrad's phases in one launch and its bordered dy; the weight-gradient kernel
on its own cases (groups, dilation, stride, uneven split-K, edge tiles) against the direct loops and
PyTorch, with no device copy; refusals before any launch; the layer and its padding modes against
torch.nn.Conv3d."""
import numpy as np
import pytest

import reference_loops as ref
import cnn_gpu
from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.functional.conv3d import conv3d_geometry
from cnn_gpu.gpu import conv, conv3d as gpu_conv3d
from cnn_gpu.gradcheck import check_op
from helpers import (assert_close, assert_refused_as_torch_refuses, assert_refused_before_any_launch,
                     assert_within_a_float16_rounding, emulate_arch, needs_emu, record_launches, refuse_device_work)


# (x shape, weight shape, stride, padding, dilation, groups, bias)
CASES = {
    "plain": ((2, 3, 4, 5, 6), (4, 3, 3, 2, 3), 1, 1, 1, 1, True),
    "strided": ((2, 4, 7, 5, 9), (6, 2, 2, 3, 2), (2, 1, 3), (1, 0, 2), (1, 2, 1), 2, True),
    "same": ((1, 3, 4, 5, 4), (3, 1, 3, 2, 3), 1, "same", (2, 1, 1), 3, False),
    "valid": ((3, 2, 5, 3, 4), (5, 2, 1, 3, 2), 2, "valid", 1, 1, True),
    "unbatched": ((2, 5, 4, 3), (4, 2, 2, 2, 1), (1, 2, 1), 2, 1, 1, True),
    "pointwise": ((2, 4, 3, 3, 3), (2, 4, 1, 1, 1), 1, 0, 1, 1, False),
    # kernel smaller than the stride: dgrad's phases that no tap reaches are zeros
    "sparse": ((1, 2, 5, 4, 6), (2, 2, 1, 2, 1), (2, 3, 2), 0, 1, 1, True),
    "one_deep": ((2, 2, 1, 4, 5), (3, 2, 1, 2, 2), (3, 1, 2), 0, 1, 1, False),
    # dgrad's 8 stride phases, each with its own taps (dilation 2 in the rows: a period of 1), groups
    "phases": ((2, 4, 6, 7, 5), (6, 2, 3, 3, 2), 2, (1, 0, 1), (1, 2, 1), 2, True),
    # stride 3 past a 2-tap kernel in depth and width: phases no tap reaches beside ones that two reach
    "empty_phases": ((1, 3, 8, 5, 9), (2, 3, 2, 3, 2), (3, 2, 3), (0, 1, 1), 1, 1, False),
}
BACKEND_DTYPES = [pytest.param(be, dtype, marks=needs_emu if be == "emu" else (), id=f"{be}-{np.dtype(dtype)}")
                  for be in ("numpy", "emu") for dtype in (np.float64, np.float32)]


def operands(case, dtype, seed=0):
    x_shape, w_shape, *_, bias = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    return x, w, rng.standard_normal(w_shape[0]).astype(dtype) if bias else None, rng


def options(case):
    return dict(zip(("stride", "padding", "dilation", "groups"), CASES[case][2:6]))


@pytest.mark.filterwarnings("ignore:Using padding='same'")   # PyTorch's note on its own padded copy
@pytest.mark.parametrize("be, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_match_torch(torch, case, be, dtype):
    x, w, b, rng = operands(case, dtype)
    y = F.conv3d(x, w, b, **options(case), backend=be)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv3d(xt, wt, bt, **options(case))
    assert_close(y, yt.detach().numpy(), dtype, f"{case} y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = F.conv3d_backward(dy, x, w, **options(case), bias=b is not None, backend=be)
    assert_close(dx, xt.grad.numpy(), dtype, f"{case} dx")
    assert_close(dw, wt.grad.numpy(), dtype, f"{case} dw")
    if b is None:
        assert db is None
    else:
        assert_close(db, bt.grad.numpy(), dtype, f"{case} db")



def draw(rng):
    """A random conv3d configuration: (x shape, weight shape, options), every option drawn as an int, a
    triple or (stride 1) a padding string, groups 1 to 3, sizes that are no tile multiples, unbatched
    a fifth of the time."""
    groups = int(rng.choice([1, 1, 2, 3]))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 3))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 3))
    stride = tuple(int(v) for v in rng.integers(1, 4, 3)) if rng.random() < 0.6 else 1
    if stride == 1 and rng.random() < 0.3:
        padding = str(rng.choice(["same", "valid"]))
    else:
        padding = tuple(int(v) for v in rng.integers(0, 3, 3)) if rng.random() < 0.5 else int(rng.integers(0, 3))
    pads = (0, 0, 0) if isinstance(padding, str) else (padding,) * 3 if isinstance(padding, int) else padding
    # every input at least as large as its dilated kernel less the padding
    sizes = [max(1, d * (k - 1) + 1 - 2 * p) + int(rng.integers(0, 4)) for d, k, p in zip(dilation, kernel, pads)]
    x_shape = (int(rng.integers(1, 3)), groups * int(rng.integers(1, 3)), *sizes)
    w_shape = (groups * int(rng.integers(1, 3)), x_shape[1] // groups, *kernel)
    if rng.random() < 0.2:
        x_shape = x_shape[1:]
    return x_shape, w_shape, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_seeded_sweep_matches_torch(torch, be):
    """200 random configurations (draw) against PyTorch in float64: y, dx, dw and db."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        x_shape, w_shape, settings = draw(rng)
        x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = torch.nn.functional.conv3d(xt, wt, bt, **settings)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        what = f"{x_shape} {w_shape} {settings}"
        assert_close(F.conv3d(x, w, b, **settings, backend=be), yt.detach().numpy(), np.float64, f"{what} y")
        for ours, theirs, name in zip(F.conv3d_backward(dy, x, w, **settings, backend=be), (xt, wt, bt),
                                      ("dx", "dw", "db")):
            assert_close(ours, theirs.grad.numpy(), np.float64, f"{what} {name}")

@pytest.mark.parametrize("case", ["strided", "same", "unbatched"])
def test_numpy_path_matches_the_direct_loops(case):
    x, w, b, rng = operands(case, np.float64, seed=1)
    unbatched = x.ndim == 4
    xb = x[None] if unbatched else x
    y = F.conv3d(x, w, b, **options(case), backend="numpy")
    want = ref.conv3d(xb, w, b, **options(case))
    assert_close(y, want[0] if unbatched else want, np.float64, "y")
    dy = rng.standard_normal(y.shape)
    dyb = dy[None] if unbatched else dy
    dx, dw, _ = F.conv3d_backward(dy, x, w, **options(case), backend="numpy")
    want_dx = ref.conv3d_input_grad(dyb, w, xb.shape, **options(case))
    assert_close(dx, want_dx[0] if unbatched else want_dx, np.float64, "dx")
    assert_close(dw, ref.conv3d_weight_grad(dyb, xb, w.shape, **options(case)), np.float64, "dw")


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_finite_differences(be):
    case = "strided"
    x, w, b, _ = operands(case, np.float64, seed=2)

    def forward(x, w, b):
        return F.conv3d(x, w, b, **options(case), backend=be)

    def backward(dy, x, w, b):
        return F.conv3d_backward(dy, x, w, **options(case), backend=be)

    report = check_op(forward, backward, [x, w, b])
    assert report.max_rel_error < 1e-6, str(report)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_float16_is_the_float32_math_rounded_once(be):
    x, w, b, rng = operands("strided", np.float16, seed=3)
    dy = rng.standard_normal(F.conv3d(x, w, b, **options("strided"), backend="numpy").shape).astype(np.float16)
    wide = [a.astype(np.float32) for a in (x, w, b, dy)]
    y = F.conv3d(x, w, b, **options("strided"), backend=be)
    grads = F.conv3d_backward(dy, x, w, **options("strided"), backend=be)
    want_y = F.conv3d(*wide[:3], **options("strided"), backend="numpy")
    want = F.conv3d_backward(wide[3], wide[0], wide[1], **options("strided"), backend="numpy")
    for got, expected, name in zip((y,) + grads, (want_y,) + want, ("y", "dx", "dw", "db")):
        assert_within_a_float16_rounding(got, expected, name)



@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_tf32_mode_multiplies_tf32_rounded_operands(be):
    """In the "tf32" math mode every pass multiplies operands rounded to TF32: the float32 result is the
    float64 convolution of the rounded operands up to FP32 accumulation, not the unrounded one."""
    from cnn_gpu import precision
    x, w, b, rng = operands("strided", np.float32, seed=10)
    dy = rng.standard_normal(F.conv3d(x, w, b, **options("strided"), backend="numpy").shape).astype(np.float32)
    with precision.math_mode("tf32"):
        got = (F.conv3d(x, w, b, **options("strided"), backend=be),)
        got += F.conv3d_backward(dy, x, w, **options("strided"), backend=be)
    rounded = [precision.round_to_tf32(a).astype(np.float64) for a in (x, w, dy)]
    want = (F.conv3d(rounded[0], rounded[1], b.astype(np.float64), **options("strided"), backend="numpy"),)
    want += F.conv3d_backward(rounded[2], rounded[0], rounded[1], **options("strided"), backend="numpy")
    exact = F.conv3d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                              **options("strided"), backend="numpy")
    # the bias gradient sums dy itself: no product, no rounding
    for ours, expected, name in zip(got, want[:3] + exact[2:], ("y", "dx", "dw", "db")):
        assert_close(ours.astype(np.float64), expected, np.float32, f"tf32 {name}")
    assert np.abs(got[2] - exact[1]).max() > 1e-4   # TF32's rounding shows (the exact weight gradient differs)

# --- the emulator's checks: every tile, split-K, the padded copy, stride > 1 dgrad ---------------

# (x shape, weight shape, stride, padding, dilation, groups, plan forced)
EMU_CASES = [
    ((2, 3, 4, 5, 6), (5, 3, 3, 2, 3), (1, 2, 1), 1, 1, 1, dict(tile="large", splits=1)),
    ((1, 4, 5, 4, 5), (4, 2, 2, 3, 2), (2, 1, 2), (1, 1, 0), (1, 1, 2), 2, dict(tile="tall", splits=3)),
    ((2, 2, 3, 4, 3), (3, 2, 2, 2, 2), 1, "same", 1, 1, dict(tile="wide", splits=2)),
    # 12 taps across: past the column field (11), so x gets a zero-bordered copy
    ((1, 2, 3, 3, 14), (2, 2, 1, 2, 12), (1, 1, 2), (0, 1, 3), 1, 1, dict(tile="small", splits=None)),
    # 12 depth taps without padding: no copy, the all-ones mask reads x in place
    ((1, 2, 14, 3, 4), (3, 2, 12, 2, 2), (1, 1, 2), 0, 1, 1, dict(tile="tall", splits=2)),
    # dgrad: 2 x 2 x 3 stride phases in one launch (dilation, groups, phases no tap reaches), split-K
    ((1, 4, 5, 4, 7), (4, 2, 2, 3, 2), (2, 2, 3), (1, 1, 0), (1, 2, 1), 2, dict(tile="large", splits=2)),
    # dgrad: 11 depth taps in a stride-1 phase, past the depth field (10), so dy gets a zero-bordered copy
    ((1, 2, 12, 2, 3), (2, 2, 11, 1, 2), 1, (3, 0, 1), 1, 1, dict(tile="wide", splits=1)),
]


def _every_pass(case, dtype, be):
    x_shape, w_shape, stride, padding, dilation, groups, _ = case
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y = F.conv3d(x, w, b, stride, padding, dilation, groups, backend=be)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return (y,) + F.conv3d_backward(dy, x, w, stride, padding, dilation, groups, backend=be)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_emu_under_guard_zones_the_race_check_and_every_schedule(dtype):
    """Every case against the NumPy path with guard zones and the race check, then bit for bit the same
    under the reverse and random schedules."""
    from cnn_gpu import emu
    for case in EMU_CASES:
        want = _every_pass(case, dtype, "numpy")
        with conv.forced(**case[-1]):
            with emu.checking(guard=True, race=True):
                checked = _every_pass(case, dtype, "emu")
            for got, expected, name in zip(checked, want, ("y", "dx", "dw", "db")):
                assert_close(got, expected, dtype, f"{case} {name}")
            for schedule in ("reverse", "random"):
                with emu.checking(schedule=schedule, seed=5, guard=True):
                    for got, first, name in zip(_every_pass(case, dtype, "emu"), checked, ("y", "dx", "dw", "db")):
                        np.testing.assert_array_equal(got, first, err_msg=f"{case} {name} under {schedule}")


def test_plans_reach_the_tiles_split_k_and_the_padded_copy():
    g = conv3d_geometry((2, 8, 6, 6, 6), (16, 8, 3, 3, 3), padding=1)
    for tile in ("large", "tall", "wide", "small"):
        plan = gpu_conv3d.plan_fprop(g, np.float32, tile=tile, splits=2)
        assert plan.main.kernel == f"conv3d_fprop_{tile}" and plan.splits == 2 and plan.chunk % conv.BK == 0
        assert [launch.kernel for launch in plan.launches] == [f"conv3d_fprop_{tile}", "split_sum_epilogue"]
    assert gpu_conv3d.plan_fprop(g, np.float32).padded is None
    long_filter = conv3d_geometry((1, 1, 3, 3, 20), (1, 1, 1, 1, 12))
    assert gpu_conv3d.plan_fprop(long_filter, np.float64).padded is None   # unpadded: every tap lies in x
    padded_long = conv3d_geometry((1, 1, 3, 3, 20), (1, 1, 1, 1, 12), padding=(0, 0, 1))
    assert gpu_conv3d.plan_fprop(padded_long, np.float64).padded.shape == (1, 1, 3, 3, 22)
    # wgrad: its own kernel on every tile, split-K summed by reduce's column sum, no copy of any operand
    for tile in ("large", "tall", "wide", "small"):
        plan = gpu_conv3d.plan_wgrad(g, np.float64, tile=tile, splits=3)
        assert [launch.kernel for launch in plan.launches] == [f"conv3d_wgrad_{tile}", "channel_sum_column"]
        assert plan.splits == 3 and plan.chunk % conv.BK == 0 and plan.padded is None
        assert plan.main.grid[2] == g.groups * 3
    unsplit = gpu_conv3d.plan_wgrad(long_filter, np.float32, splits=1)
    assert [launch.kernel for launch in unsplit.launches] == [f"conv3d_wgrad_{unsplit.tile}"]


# --- the weight-gradient kernel (kernels/conv3d_wgrad.cu) --------------------------------------

# (x shape, weight shape, stride, padding, dilation, groups, plan forced): groups with dilation and stride
# and 3 splits of 40, 40 and 28 of N*O*P*Q = 108 voxels; a filter 14 taps across (past fprop's mask field)
# with 2 uneven splits; 70 output channels and 81 taps, past the small tile's 64 rows and 64 columns, 5
# splits of 16 rows but the last of 8; a one-voxel reduction, shorter than a BK step
WGRAD_CASES = [
    ((2, 6, 5, 6, 7), (6, 2, 2, 3, 2), (2, 1, 2), (1, 1, 0), (2, 1, 2), 3, dict(tile="wide", splits=3)),
    ((1, 2, 3, 4, 17), (4, 2, 1, 2, 14), (1, 2, 1), (0, 1, 5), 1, 1, dict(tile="tall", splits=2)),
    ((2, 3, 3, 4, 3), (70, 3, 3, 3, 3), 1, 1, 1, 1, dict(tile="small", splits=5)),
    ((1, 4, 2, 3, 2), (4, 2, 2, 2, 2), (2, 3, 1), 0, 1, 2, dict(tile="large", splits=None)),
]


def _wgrad_operands(case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups, _ = case
    rng = np.random.default_rng(14)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    dy = rng.standard_normal(F.conv3d(x, w, None, stride, padding, dilation, groups).shape).astype(dtype)
    return dy, x, w


def _emu_wgrad(case, dy, x, w):
    with conv.forced(**case[-1]):
        return F.conv3d_backward(dy, x, w, *case[2:6], bias=False, input_grad=False, backend="emu")[1]


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_wgrad_kernel_matches_the_direct_loops_and_torch(torch, dtype):
    """Each case's forced plan under guard zones and the race check, against the direct loops (float64)
    and PyTorch's weight gradient in the dtype, then bit for bit the same under the reverse and random
    schedules."""
    from cnn_gpu import emu
    for case in WGRAD_CASES:
        dy, x, w = _wgrad_operands(case, dtype)
        stride, padding, dilation, groups = case[2:6]
        with emu.checking(guard=True, race=True):
            dw = _emu_wgrad(case, dy, x, w)
        loops = ref.conv3d_weight_grad(dy.astype(np.float64), x.astype(np.float64), w.shape, stride, padding,
                                       dilation, groups)
        assert_close(dw.astype(np.float64), loops, dtype, f"{case} dw against the loops")
        wt = torch.tensor(w, requires_grad=True)
        torch.nn.functional.conv3d(torch.tensor(x), wt, None, stride, padding, dilation, groups).backward(
            torch.tensor(dy))
        assert_close(dw, wt.grad.numpy(), dtype, f"{case} dw against torch")
        for schedule in ("reverse", "random"):
            with emu.checking(schedule=schedule, seed=15, guard=True):
                np.testing.assert_array_equal(_emu_wgrad(case, dy, x, w), dw, err_msg=f"{case} under {schedule}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_wgrad_register_staged_loop_matches_the_cp_async_ring_bit_for_bit(dtype, monkeypatch):
    """conv3d_wgrad.cu's two main loops (igemm.cuh): the sm_80 ring, which tests every step here, and the
    sm_70/75 register staging (emulated as sm_70, under every schedule) give the same bits."""
    from cnn_gpu import emu
    operands = [_wgrad_operands(case, dtype) for case in WGRAD_CASES]
    emulate_arch(monkeypatch, 800)
    ring = [_emu_wgrad(case, *arrays) for case, arrays in zip(WGRAD_CASES, operands)]
    emulate_arch(monkeypatch, 700)
    for schedule in ("forward", "reverse", "random"):
        with emu.checking(schedule=schedule, seed=16, guard=True):
            for case, arrays, want in zip(WGRAD_CASES, operands, ring):
                np.testing.assert_array_equal(_emu_wgrad(case, *arrays), want, err_msg=f"{case} under {schedule}")


@needs_emu
def test_wgrad_reads_x_and_dy_in_place(monkeypatch):
    """No device copy of x or dy (the rearranged operands the forward kernel took): one kernel launch,
    then split-K's fixed-order sum of the workspace."""
    launched = record_launches(monkeypatch)
    monkeypatch.setattr(backend, "device_call", lambda *args, **kwargs: pytest.fail("a device copy"))
    case = WGRAD_CASES[0]
    dy, x, w = _wgrad_operands(case, np.float64)
    dw = _emu_wgrad(case, dy, x, w)
    assert launched == [("conv3d_wgrad", "conv3d_wgrad_wide"), ("reduce", "channel_sum_column")]
    assert_close(dw, F.conv3d_backward(dy, x, w, *case[2:6], backend="numpy")[1], np.float64, "dw")


@needs_emu
@pytest.mark.parametrize("splits", [1, 2])
def test_dgrad_past_the_grids_z_limit_runs_in_z_slices(monkeypatch, splits):
    """splits x groups x stride phases past CUDA's 65535 z blocks (a 1x1x1 filter at stride 41 over 41^3
    voxels: 68921 phases; depthwise 8192 channels at stride 2) runs as launches of z slices, each from its
    z_first (refused as a grid past the limit before): the limit lowered to 5 for 2 groups x 8 phases (x 2
    splits), dx against the NumPy path and each launch's z slice."""
    monkeypatch.setattr(gpu_conv3d, "MAX_GRID_YZ", 5)
    grids = []
    launch = backend.launch

    def recording(be, family, dtype, kernel, grid, block, args, **kwargs):
        if kernel.startswith("conv3d_dgrad_") and not kernel.endswith("transpose"):
            grids.append((grid[2], int(args[-1])))
        return launch(be, family, dtype, kernel, grid, block, args, **kwargs)
    monkeypatch.setattr(backend, "launch", recording)
    rng = np.random.default_rng(41)
    x, w = rng.standard_normal((2, 4, 5, 6, 5)), rng.standard_normal((6, 2, 3, 2, 3))
    dy = rng.standard_normal(F.conv3d(x, w, stride=2, padding=1, groups=2).shape)
    with conv.forced(tile="small", splits=splits), emu.checking(guard=True, race=True):
        dx = F.conv3d_backward(dy, x, w, stride=2, padding=1, groups=2, weight_grad=False, bias=False, backend="emu")[0]
    assert_close(dx, F.conv3d_backward(dy, x, w, stride=2, padding=1, groups=2, backend="numpy")[0], np.float64, "dx")
    z_blocks = splits * 2 * 8
    assert grids == [(min(5, z_blocks - first), first) for first in range(0, z_blocks, 5)]


def test_dgrad_runs_every_stride_phase_in_one_launch(monkeypatch):
    """stride (2, 2, 2): the filter transpose and one conv3d_dgrad launch over all 8 phases (was 8 launches
    of the forward kernel, each result copied into dx's strided voxels); split-K adds the fold, a long
    filter the bordered copy of dy (a device copy, no launch)."""
    g = conv3d_geometry((2, 4, 6, 7, 5), (6, 2, 3, 3, 2), stride=2, padding=1, groups=2)
    plan = gpu_conv3d.plan_dgrad(g, np.float64, tile="small", splits=1)
    assert [launch.kernel for launch in plan.launches] == ["conv3d_dgrad_filter_transpose", "conv3d_dgrad_small"]
    assert plan.main.grid[2] == 2 * 8 and plan.padded is None
    # 3 filters a group x 4 taps a phase at most: 12 reduction rows, at most 2 splits of BK
    split = gpu_conv3d.plan_dgrad(g, np.float32, tile="tall", splits=3)
    assert [launch.kernel for launch in split.launches][1:] == ["conv3d_dgrad_tall", "channel_sum_column"]
    assert split.splits == 2 and split.main.grid[2] == 2 * 2 * 8
    # phases per dimension: min(stride, size), a depth of 2 under stride 3 has 2
    assert gpu_conv3d.dgrad_phase_counts(conv3d_geometry((1, 1, 2, 5, 5), (1, 1, 1, 1, 1), stride=3)) == (2, 3, 3)
    long_filter = conv3d_geometry((1, 2, 12, 2, 3), (2, 2, 11, 1, 2), padding=(3, 0, 1))
    assert gpu_conv3d.plan_dgrad(long_filter, np.float64).padded is not None
    assert gpu_conv3d.plan_dgrad(conv3d_geometry((1, 2, 12, 2, 3), (2, 2, 10, 1, 2)), np.float64).padded is None
    if "emu" not in backend.available_backends():
        return
    launched = record_launches(monkeypatch)
    rng = np.random.default_rng(14)
    dy, x, w = (rng.standard_normal(shape) for shape in (g.y_shape, g.x_shape, g.w_shape))
    F.conv3d_backward(dy, x, w, stride=2, padding=1, groups=2, bias=False, weight_grad=False, backend="emu")
    assert [kernel for _, kernel in launched] == ["conv3d_dgrad_filter_transpose", launched[1][1]]
    assert launched[1][1].startswith("conv3d_dgrad_")


# --- refusals ----------------------------------------------------------------------------------

def _torch_backward(torch, x, w, dy):
    torch.nn.functional.conv3d(torch.tensor(x, requires_grad=True), torch.tensor(w)).backward(torch.tensor(dy))


@pytest.mark.parametrize("call, theirs, error, message", [
    (lambda x, w: F.conv3d(x[0, 0], w), lambda T, x, w: T.nn.functional.conv3d(T.tensor(x[0, 0]), T.tensor(w)),
     ValueError, "x must be 4-D or 5-D"),
    (lambda x, w: F.conv3d(x, w[0]), lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w[0])),
     ValueError, "weight must be 5-D"),
    (lambda x, w: F.conv3d(x, w.astype(np.float64)),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w.astype(np.float64))), TypeError, "dtype"),
    (lambda x, w: F.conv3d(x, w, groups=2), lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), groups=2),
     ValueError, "divisible by groups"),
    (lambda x, w: F.conv3d(x[:, :2], w), lambda T, x, w: T.nn.functional.conv3d(T.tensor(x[:, :2]), T.tensor(w)),
     ValueError, "expects 3 input channels"),
    (lambda x, w: F.conv3d(x, w, dilation=3),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), dilation=3), ValueError, "output would be empty"),
    (lambda x, w: F.conv3d(x[:, :, :0], w), lambda T, x, w: T.nn.functional.conv3d(T.tensor(x[:, :, :0]), T.tensor(w)),
     ValueError, "empty dimension"),
    (lambda x, w: F.conv3d(x, w, stride=2, padding="same"),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), stride=2, padding="same"), ValueError,
     "not supported for strided"),
    (lambda x, w: F.conv3d(x, w, padding="full"),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), padding="full"), ValueError, "padding must be"),
    (lambda x, w: F.conv3d(x, w, stride=(1, 2)),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), stride=(1, 2)), ValueError,
     "stride must be an int or a triple"),
    (lambda x, w: F.conv3d(x, w, np.zeros(5, np.float32)),
     lambda T, x, w: T.nn.functional.conv3d(T.tensor(x), T.tensor(w), T.zeros(5)), ValueError, "bias must have shape"),
    (lambda x, w: F.conv3d_backward(np.zeros((2, 4, 2, 3, 4), np.float32), x, w),
     lambda T, x, w: _torch_backward(T, x, w, np.zeros((2, 4, 2, 3, 4), np.float32)), ValueError, "dy must have shape"),
])
def test_refused_before_any_launch_as_pytorch_refuses(monkeypatch, torch, call, theirs, error, message):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32)
    assert_refused_as_torch_refuses(monkeypatch, torch, call, theirs, (x, w), error, message)


def test_index_range_refused_before_any_launch(monkeypatch):
    """A tensor of 2^31 elements or more would overflow the kernel's 32-bit offsets: refused by the
    plans before a launch, dgrad's and wgrad's too (their operands are copies of other shapes)."""
    monkeypatch.setattr(gpu_conv3d, "INDEX_LIMIT", 4000)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32)
    for call in (lambda: F.conv3d(x, w), lambda: F.conv3d_backward(np.zeros((2, 4, 6, 6, 6), np.float32), x, w)):
        assert_refused_before_any_launch(monkeypatch, call, ValueError, "32-bit")
    # float16's widening and tf32's rounding are device work on the kernels' backends: refused before them
    refuse_device_work(monkeypatch)
    with pytest.raises(ValueError, match="32-bit"):
        F.conv3d(x.astype(np.float16), w.astype(np.float16), backend="emu")
    with cnn_gpu.math_mode("tf32"), pytest.raises(ValueError, match="32-bit"):
        F.conv3d(x, w, backend="emu")


# --- the layer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("settings", [dict(padding=1, stride=(1, 2, 1), bias=False),
                                      dict(padding="same", padding_mode="reflect", groups=2),
                                      dict(padding=(1, 0, 2), padding_mode="circular", dilation=(1, 2, 1)),
                                      dict(padding="valid", padding_mode="replicate")])
def test_layer_matches_torch(torch, settings, be):
    rng = np.random.default_rng(8)
    ours = nn.Conv3d(4, 6, (3, 2, 3), dtype=np.float64, rng=rng, **settings)
    ours.backend = be
    theirs = torch.nn.Conv3d(4, 6, (3, 2, 3), dtype=torch.float64, **settings)
    theirs.load_state_dict({name: torch.tensor(value) for name, value in ours.state_dict().items()})
    x = rng.standard_normal((2, 4, 4, 5, 6))
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    assert_close(y, yt.detach().numpy(), np.float64, f"{settings} y")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, f"{settings} dx")
    assert_close(ours.weight.grad, theirs.weight.grad.numpy(), np.float64, f"{settings} dweight")
    assert ours.kernel_size == theirs.kernel_size and ours.stride == theirs.stride
    assert ours.padding == theirs.padding and ours.dilation == theirs.dilation


def test_layer_refuses_what_torch_refuses(torch):
    for kwargs in (dict(groups=4), dict(padding="same", stride=2), dict(padding_mode="mirror")):
        arguments = dict(in_channels=3, out_channels=6, kernel_size=3) | kwargs
        with pytest.raises(ValueError):
            torch.nn.Conv3d(**arguments)
        with pytest.raises(ValueError):
            nn.Conv3d(**arguments)
    # PyTorch takes a pair at construction and fails at the first forward; refused here at once
    with pytest.raises(ValueError, match="kernel_size must be an int or a triple"):
        nn.Conv3d(3, 6, (3, 3))



@pytest.mark.skipif(backend.cupy_or_none() is None, reason="no GPU: CuPy is missing or sees no device")
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
def test_cuda_matches_numpy(dtype):
    """Every pass on CuPy arrays (a GPU, or tests/cupy_sim: the cuda backend's Python on the emulator)."""
    cupy = backend.cupy_or_none()
    for case in EMU_CASES + WGRAD_CASES:
        x_shape, w_shape, stride, padding, dilation, groups, plan = case
        rng = np.random.default_rng(9)
        x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[0]).astype(dtype)
        y = F.conv3d(x, w, b, stride, padding, dilation, groups, backend="numpy")
        dy = rng.standard_normal(y.shape).astype(dtype)
        want = (y,) + F.conv3d_backward(dy, x, w, stride, padding, dilation, groups, backend="numpy")
        with conv.forced(**plan):
            got = (F.conv3d(*map(cupy.asarray, (x, w, b)), stride, padding, dilation, groups),)
            got += F.conv3d_backward(*map(cupy.asarray, (dy, x, w)), stride, padding, dilation, groups)
        for ours, expected, name in zip(got, want, ("y", "dx", "dw", "db")):
            if dtype == np.float16:
                assert_within_a_float16_rounding(ours, expected, f"{case} {name}")
            else:
                assert_close(ours, expected, dtype, f"{case} {name}")


@needs_emu
@pytest.mark.parametrize("dtype, math", [("float32", "fp32"), ("float32", "tf32"), ("float16", "fp32")])
def test_a_replayed_conv3d_computes_its_new_inputs(dtype, math):
    """Recorded (cnn_gpu.replay), its inputs overwritten and replayed, every pass gives what it computes
    eagerly on the new inputs: the launcher's copies (wgrad's rearranged operands, the long filter's
    bordered copy) all go through backend.device_call, and dgrad's filter transpose is a launch."""
    from cnn_gpu import precision
    from test_replay_ops import assert_replay_is_eager
    for x_shape, w_shape, stride, padding, dilation, groups, _ in EMU_CASES[1:4:2]:
        def run(a):
            y = F.conv3d(a["x"], a["w"], a["b"], stride, padding, dilation, groups, backend="emu")
            dx, dw, db = F.conv3d_backward(a["dy"], a["x"], a["w"], stride, padding, dilation, groups, backend="emu")
            return dict(y=y, dx=dx, dw=dw, db=db)

        def inputs(seed):
            rng = np.random.default_rng(seed)
            a = dict(x=rng.standard_normal(x_shape), w=rng.standard_normal(w_shape), b=rng.standard_normal(w_shape[0]))
            a["dy"] = rng.standard_normal(F.conv3d(a["x"], a["w"], None, stride, padding, dilation, groups).shape)
            return {name: value.astype(dtype) for name, value in a.items()}
        with precision.math_mode(math):
            assert_replay_is_eager(run, inputs(12), inputs(13), f"{x_shape} {w_shape} {dtype} {math}")
