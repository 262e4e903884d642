"""F.unfold / F.fold, their backward passes and nn.Unfold / nn.Fold (kernels/fold.cu) against PyTorch
2.13: values and gradients (kernel size, dilation, padding and stride per axis, strides past the
kernel, unbatched inputs; three dtypes, float16 summed in FP32 and rounded once), NumPy and the
kernels bit for bit, finite differences, the emulator under guard zones and every schedule, a grid
smaller than the work, the layers, empty batches and PyTorch's refusals."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.functional import folding
from cnn_gpu.gradcheck import check_op
from helpers import (assert_close, assert_network_matches_torch, assert_refused_before_any_launch, needs_cuda,
                     needs_emu, record_launches, refuse_kernel_runs)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
# (image shape, kernel_size, dilation, padding, stride): overlapping blocks, dilation and padding per
# axis, a stride past the kernel (pixels no block reads), an unbatched image, a kernel wider than the
# image made up by padding, a 1x1 kernel
CASES = [((2, 3, 7, 8), (2, 3), (1, 2), (1, 0), (2, 1)), ((3, 6, 5), 3, 1, 1, 2),
         ((1, 2, 9, 9), (3, 2), 2, (2, 1), (3, 2)), ((2, 1, 5, 4), 2, 1, 0, (3, 3)),
         ((1, 2, 2, 3), (4, 3), 1, (2, 1), 1), ((2, 3, 4, 4), 1, 1, 0, 1)]


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torchs(torch, op, a, dy, *args):
    """op's output and input gradient in float64 (PyTorch's autograd)."""
    ta = torch.from_numpy(a.astype(np.float64)).requires_grad_()
    ty = op(ta, *args)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    return ty.detach().numpy(), ta.grad.numpy()


def within_one_float16_rounding(got, want, what):
    bound = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64) / 2
    assert (np.abs(got.astype(np.float64) - want) <= bound).all(), what


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_values_and_gradients_are_pytorchs(dtype, be, torch):
    """unfold and fold_backward copy (bit exact); fold and unfold_backward sum: float64 and float32 to
    their rounding, float16 within half an FP16 ulp of the float64 sum (FP32 sums rounded once)."""
    tf = torch.nn.functional
    for i, (shape, *sizes) in enumerate(CASES):
        x = draw(shape, dtype, i)
        cols = F.unfold(x, *sizes, backend=be)
        dcols = draw(cols.shape, dtype, 20 + i)
        want_cols, want_dx = torchs(torch, tf.unfold, x, dcols, *sizes)
        assert cols.dtype == dtype and cols.astype(np.float64).tobytes() == want_cols.tobytes(), shape
        dx = F.unfold_backward(dcols, shape, *sizes, backend=be)
        y = F.fold(dcols, shape[-2:], *sizes, backend=be)
        dy = draw(y.shape, dtype, 40 + i)
        want_y, want_dcols = torchs(torch, tf.fold, dcols, dy, shape[-2:], *sizes)
        got_dcols = F.fold_backward(dy, *sizes, backend=be)
        assert got_dcols.dtype == dtype and got_dcols.astype(np.float64).tobytes() == want_dcols.tobytes(), shape
        for got, want, what in ((dx, want_dx, "dx"), (y, want_y, "y")):
            assert got.dtype == dtype and got.shape == want.shape, (shape, what)
            if dtype == np.float16:
                within_one_float16_rounding(got, want, f"{shape} {what}")
            else:
                assert_close(got, want.astype(dtype), dtype, f"{shape} {what}")


@pytest.mark.parametrize("be, count", [("numpy", 80), pytest.param("emu", 20, marks=needs_emu)])
def test_a_seeded_sweep_of_geometries_is_pytorchs(be, count, torch):
    """Random kernel sizes, dilations, paddings, strides and images (empty batches too) in float64:
    unfold bit for bit, fold to 1e-12; we refuse exactly the geometries PyTorch refuses."""
    tf, rng = torch.nn.functional, np.random.default_rng(5)
    for _ in range(count):
        N, C, H, W = int(rng.integers(0, 3)), int(rng.integers(1, 4)), *(int(v) for v in rng.integers(1, 9, 2))
        sizes = [tuple(int(v) for v in rng.integers(low, high, 2)) for low, high in ((1, 5), (1, 4), (0, 3), (1, 4))]
        x = rng.standard_normal((N, C, H, W))
        try:
            want = tf.unfold(torch.from_numpy(x), *sizes).numpy()
        except RuntimeError:
            with pytest.raises(ValueError, match="sliding blocks"):
                F.unfold(x, *sizes, backend=be)
            continue
        assert F.unfold(x, *sizes, backend=be).tobytes() == want.tobytes(), ((N, C, H, W), sizes)
        cols = rng.standard_normal(want.shape)
        want_y = tf.fold(torch.from_numpy(cols), (H, W), *sizes).numpy()
        np.testing.assert_allclose(F.fold(cols, (H, W), *sizes, backend=be), want_y, rtol=1e-12, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernels_sum_in_numpys_order_bit_for_bit(dtype):
    for i, (shape, *sizes) in enumerate(CASES):
        cols = F.unfold(draw(shape, dtype, i), *sizes)
        cols = draw(cols.shape, dtype, 60 + i)
        want = F.fold(cols, shape[-2:], *sizes)
        assert F.fold(cols, shape[-2:], *sizes, backend="emu").tobytes() == want.tobytes(), shape
        assert F.unfold_backward(cols, shape, *sizes, backend="emu").tobytes() == want.tobytes(), shape


@pytest.mark.parametrize("be", BACKENDS)
def test_float16_fold_sums_in_float32_and_rounds_once(be):
    """Pixel 1 of a (1, 3) image under a (1, 3) kernel padded by 2 is read by three blocks, taps 0, 1,
    2 in that order: 2048 + 1 + 1 is 2050 in FP32; rounded after each add (2049 is a tie in FP16, to
    even: 2048) it would stay 2048."""
    cols = np.zeros((1, 3, 5), np.float16)
    cols[0, 0, 3], cols[0, 1, 2], cols[0, 2, 1] = 2048, 1, 1
    y = F.fold(cols, (1, 3), (1, 3), padding=(0, 2), backend=be)
    assert y.dtype == np.float16 and y[0, 0, 0, 1] == 2050


def test_gradients_match_finite_differences():
    for shape, *sizes in CASES[:3]:
        x = np.random.default_rng(7).standard_normal(shape)
        report = check_op(lambda a: F.unfold(a, *sizes), lambda dy, a: F.unfold_backward(dy, a.shape, *sizes), [x])
        assert report.max_rel_error < 1e-8, (shape, report)
        cols = F.unfold(x, *sizes)
        report = check_op(lambda c: F.fold(c, shape[-2:], *sizes), lambda dy, c: F.fold_backward(dy, *sizes), [cols])
        assert report.max_rel_error < 1e-8, (shape, report)


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emulated_kernels_are_bit_identical_under_schedules_and_guard_zones(schedule):
    from cnn_gpu import emu
    shape, *sizes = CASES[0]
    x = draw(shape, np.float32, 1)
    results = []
    for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=5)):
        with emu.checking(guard=True, **settings):
            cols = F.unfold(x, *sizes, backend="emu")
            results.append((cols, F.fold(cols, shape[-2:], *sizes, backend="emu")))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes(), schedule


@needs_emu
def test_a_grid_smaller_than_the_work_covers_every_row_plane_and_pixel():
    """blockIdx.y strides over more rows (planes) than the grid has, x threads over more blocks
    (pixels) than the grid's threads (unfold's carry: a step of 256 blocks is 13 rows and 9 columns);
    fold's rows take every second tap (stride 2, dilation 1)."""
    shape, sizes = (3, 5, 41, 37), ((2, 3), (1, 2), (1, 2), 2)   # 21 x 19 = 399 blocks a row
    x = draw(shape, np.float64, 4)
    g = folding._unfold_geometry(shape, *sizes)
    geometry = tuple(np.int32(v) for v in (g.H, g.W, *g.kernel_size, *g.blocks, *g.stride, *g.padding, *g.dilation))
    cols = np.empty((3, 5 * g.taps, g.L))
    rows = np.int64(15 * g.taps)
    backend.launch("emu", "fold", x.dtype, "unfold_forward", (1, 2), (256,), (x, cols, rows, *geometry))
    np.testing.assert_array_equal(cols, F.unfold(x, *sizes))
    y = np.empty(shape)
    periods = (np.int32(2), np.int32(1))   # stride / gcd(stride, dilation)
    backend.launch("emu", "fold", x.dtype, "fold_forward", (1, 2), (256,), (cols, y, np.int64(15), *geometry, *periods))
    np.testing.assert_array_equal(y, F.fold(cols, shape[-2:], *sizes))


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_unfold_of_more_than_half_a_block_reads_zeros_one_past_every_edge(dtype):
    """Maps of more than 128 blocks (unfold's walk of a row a block row) whose padded taps reach the
    row and the column just past the image (h == H, w == W): zeros, NumPy's bits, never the next
    row's or plane's pixel (the sweep's geometries reach this walk only inside the image)."""
    from cnn_gpu import emu
    for i, (shape, sizes) in enumerate([((2, 3, 12, 13), (3, 1, 1, 1)), ((1, 2, 15, 11), ((3, 2), (2, 1), (2, 1), 1))]):
        x = draw(shape, dtype, 70 + i)
        assert folding._unfold_geometry(shape, *sizes).L > 128
        with emu.checking(guard=True):
            got = F.unfold(x, *sizes, backend="emu")
        assert got.tobytes() == F.unfold(x, *sizes).tobytes(), shape

@needs_emu
@pytest.mark.parametrize("rows", [None, 1, 2, 3])
def test_small_rows_and_planes_go_several_to_a_block_on_any_grid(rows, monkeypatch):
    """Rows of 70 blocks go 3 to a block, image planes of 99 pixels 2 (plane_pixel_grid's groups, where
    one a block row left 186 and 157 of 256 threads idle); on grids of 1, 2 and 3 block rows each
    thread's rows step by 3, 6 and 9 (a tap (0, 1) + (1, 1) carries into the next kernel row, (2, 1)
    + (1, 1) into the next image plane), under guard zones and the race check."""
    from cnn_gpu import emu
    from cnn_gpu.gpu import fold
    shape, sizes = (2, 3, 9, 11), ((3, 2), 1, 0, 1)   # 7 x 10 blocks, 6 taps
    x = draw(shape, np.float64, 6)
    want_cols = F.unfold(x, *sizes)
    dcols = draw(want_cols.shape, np.float64, 7)
    if rows is not None:
        monkeypatch.setattr(fold, "plane_pixel_grid", lambda planes, pixels: (1, rows))
    launched = []
    launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda be, family, dtype, kernel, grid, *args:
                        launched.append(grid) or launch(be, family, dtype, kernel, grid, *args))
    with emu.checking(guard=True, race=True):
        cols = F.unfold(x, *sizes, backend="emu")
        y = F.fold(dcols, shape[-2:], *sizes, backend="emu")
    monkeypatch.undo()
    assert launched == ([(1, 12), (1, 3)] if rows is None else [(1, rows)] * 2)
    np.testing.assert_array_equal(cols, want_cols)
    np.testing.assert_array_equal(y, F.fold(dcols, shape[-2:], *sizes))


@needs_emu
def test_a_plane_of_2_31_column_elements_is_refused_before_any_launch(monkeypatch):
    """A 46341 x 46341 kernel over a padded 1x1 image: one block, but 46341^2 >= 2^31 taps, which
    the kernels index with 32-bit ints (the fold direction's input could not be allocated here)."""
    refuse_kernel_runs(monkeypatch)
    with pytest.raises(ValueError, match="32-bit ints: the columns plane has 2147488281 pixels"):
        F.unfold(np.ones((1, 1, 1, 1), np.float16), 46341, padding=23170, backend="emu")


@needs_emu
def test_the_layers_in_a_network_and_their_launches(torch, monkeypatch):
    """nn.Unfold -> nn.Fold (a patch-wise model's round trip) against torch's: values, dx, the
    conv's gradients; the reprs; one launch a pass."""
    nn.init.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2),
                          nn.Fold((6, 5), (2, 3), dilation=(1, 2), padding=1, stride=2))
    model.to("emu")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1),
                                 torch.nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2),
                                 torch.nn.Fold((6, 5), (2, 3), dilation=(1, 2), padding=1, stride=2))
    assert [repr(m) for m in model][1:] == [repr(m) for m in theirs][1:]
    assert_network_matches_torch(torch, model, theirs, draw((2, 2, 6, 5), np.float32, 8))
    launched = record_launches(monkeypatch)
    unfold, fold = model[1], model[2]
    fold(unfold(draw((1, 3, 6, 5), np.float32, 10)))
    unfold.backward(fold.backward(draw((1, 3, 6, 5), np.float32, 11)))
    assert launched == [("fold", "unfold_forward"), ("fold", "fold_forward")] * 2


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_replay_computes_new_inputs(dtype):
    """Recorded (cnn_gpu.replay), the inputs overwritten and replayed: what the ops compute eagerly on
    the new inputs, bit for bit (every device step is a launch)."""
    from test_replay_ops import assert_replay_is_eager
    shape, *sizes = CASES[0]

    def run(a):
        cols = F.unfold(a["x"], *sizes, backend="emu")
        return dict(cols=cols, y=F.fold(cols, shape[-2:], *sizes, backend="emu"),
                    dx=F.unfold_backward(a["dcols"], shape, *sizes, backend="emu"))
    inputs = [dict(x=draw(shape, dtype, seed), dcols=draw((2, 18, 16), dtype, seed + 1)) for seed in (1, 3)]
    assert_replay_is_eager(run, *inputs, "fold")


@needs_emu
def test_an_empty_batch_runs_no_kernel(monkeypatch):
    refuse_kernel_runs(monkeypatch)
    cols = F.unfold(np.ones((0, 3, 5, 6), np.float32), 2, backend="emu")
    assert cols.shape == (0, 12, 20)
    assert F.fold(cols, (5, 6), 2, backend="emu").shape == (0, 3, 5, 6)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), 7), ValueError,
     r"spatial size \(5, 6\), kernel_size=\(7, 7\).*sliding blocks as \(-1, 0\), but its components must be at least"),
    (lambda: F.unfold(np.ones((2, 0, 5, 6)), 2), ValueError, r"Expected 3D or 4D .* got: \[2, 0, 5, 6\]"),
    (lambda: F.unfold(np.ones((5, 6)), 2), ValueError, "Expected 3D or 4D"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), 0), ValueError, "kernel_size must be >= 1"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), 2, stride=0), ValueError, "stride must be >= 1"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), 2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), 2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6)), (2, 2, 2)), ValueError, "kernel_size must be an int or a pair"),
    (lambda: F.fold(np.ones((2, 12, 20)), (5, 7), 2), ValueError,
     r"output_size=\(5, 7\).*dimension 2 to match the calculated number of sliding blocks 4 \* 6 = 24, but got "
     r"cols.size\(2\)=20"),
    (lambda: F.fold(np.ones((2, 12, 20)), (1, 1), 2), ValueError, r"sliding blocks 0 \* 0 = 0"),
    (lambda: F.fold(np.ones((2, 13, 20)), (5, 6), 2), ValueError,
     r"dimension 1 to be divisible by the product of kernel_size, but got cols.size\(1\)=13"),
    (lambda: F.fold(np.ones((2, 12, 20, 1)), (5, 6), 2), ValueError, r"Expected 2D or 3D .* got: \[2, 12, 20, 1\]"),
    (lambda: F.fold(np.ones((2, 12, 0)), (5, 6), 2), ValueError, "Expected 2D or 3D"),
    (lambda: F.fold(np.ones((2, 12, 20)), (5, 6, 1), 2), ValueError, "output_size must be an int or a pair"),
    (lambda: F.unfold_backward(np.ones((2, 12, 19)), (2, 3, 5, 6), 2), ValueError, r"dy must have shape \(2, 12, 20\)"),
    (lambda: F.unfold_backward(np.ones((12, 20)), (2, 3, 5, 6), 2), ValueError, r"dy must have shape \(2, 12, 20\)"),
    (lambda: F.fold_backward(np.ones((2, 3, 1, 6)), 2), ValueError, r"sliding blocks as \(0, 5\)"),
    (lambda: F.unfold(np.ones((2, 3, 5, 6), np.int64), 2), TypeError, "float16, float32 or float64"),
])
def test_pytorchs_refusals_before_any_launch(call, error, message, monkeypatch):
    assert_refused_before_any_launch(monkeypatch, call, error, message)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    for i, (shape, *sizes) in enumerate(CASES):
        x = draw(shape, dtype, i)
        cols = F.unfold(cupy.asarray(x), *sizes)
        np.testing.assert_array_equal(cols.get(), F.unfold(x, *sizes))
        y = F.fold(cols, shape[-2:], *sizes)
        np.testing.assert_array_equal(y.get(), F.fold(cols.get(), shape[-2:], *sizes))
        np.testing.assert_array_equal(F.unfold_backward(cols, shape, *sizes).get(), y.get())
        np.testing.assert_array_equal(F.fold_backward(y, *sizes).get(), F.unfold(y.get(), *sizes))
