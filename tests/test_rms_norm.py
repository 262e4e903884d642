"""F.rms_norm, F.rms_norm_backward and nn.RMSNorm (the NumPy path and kernels/row_norm.cu's
mean-free mode): PyTorch CPU on numpy and on the emulated kernels, eps None as PyTorch's, float16
rounded once, finite differences, refusals, the launches, guard zones and the race check on whole
and split rows (the layer's state, repr and values: tests/test_group_and_layer_norm.py's LAYERS)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_kernel_runs_match, needs_cuda, to_host

BACKENDS = ["numpy", "emu"]
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def skip_unless(be):
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)


def run_case(x, dy, shape, weight, eps, be):
    """(y, dx, dweight) on `be`, the backward with the forward's invstd."""
    y, invstd = F.rms_norm(x, shape, weight, eps, return_stats=True, backend=be)
    return (y, *F.rms_norm_backward(dy, x, shape, weight, eps, save_invstd=invstd, backend=be))


def torch_results(torch, x, dy, shape, weight, eps, dtype=None):
    """(y, dx, dweight) of torch.nn.functional.rms_norm in `dtype` (x's where None)."""
    def tensor(a):
        return None if a is None else torch.tensor(a if dtype is None else a.astype(dtype), requires_grad=True)
    tx, tw = tensor(x), tensor(weight)
    y = torch.nn.functional.rms_norm(tx, list(np.atleast_1d(shape)), tw, eps)
    y.backward(torch.tensor(dy if dtype is None else dy.astype(dtype)))
    return y.detach().numpy(), tx.grad.numpy(), None if tw is None else tw.grad.numpy()


# (x's shape, normalized_shape, x's scale): rows of 8, of a 2-D shape, an int shape, rows of 300;
# a scale of 1e-4 makes eps count (mean(x^2) near float32's machine epsilon)
CASES = [((3, 5, 8), (8,), 1.0), ((4, 6, 5), (6, 5), 2.0), ((2, 7), 7, 1e-4), ((5, 300), (300,), 1e-4),
         ((3, 2, 4, 5), (2, 4, 5), 3.0)]


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_against_pytorch(be, dtype, eps):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(135)
    for x_shape, shape, scale in CASES:
        for affine in (True, False):
            x = (rng.standard_normal(x_shape) * scale).astype(dtype)
            dy = rng.standard_normal(x_shape).astype(dtype)
            weight = rng.standard_normal(np.atleast_1d(shape)).astype(dtype) if affine else None
            got = run_case(x, dy, shape, weight, eps, be)
            for a, e, name in zip(got, torch_results(torch, x, dy, shape, weight, eps), ("y", "dx", "dweight")):
                what = f"{x_shape} affine={affine} {name}"
                assert (a is None) == (e is None), what
                if e is not None:
                    assert_close(a, e, dtype, what)


@pytest.mark.torch
def test_eps_none_is_the_compute_types_machine_epsilon():
    """eps None: float32's epsilon for float16 and float32 x, float64's for float64 (PyTorch's);
    x of scale 1e-4 makes the difference visible."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((4, 6)) * 1e-4
    for dtype, eps in ((np.float64, np.finfo(np.float64).eps), (np.float32, np.finfo(np.float32).eps),
                       (np.float16, np.finfo(np.float32).eps)):
        default = F.rms_norm(x.astype(dtype), 6)
        np.testing.assert_array_equal(default, F.rms_norm(x.astype(dtype), 6, eps=float(eps)))
        theirs = torch.nn.functional.rms_norm(torch.from_numpy(x.astype(dtype)), [6]).numpy()
        assert_close(default, theirs, dtype, str(dtype))
    assert not np.allclose(F.rms_norm(x.astype(np.float32), 6), F.rms_norm(x.astype(np.float32), 6, eps=1e-12))


@pytest.mark.parametrize("be", BACKENDS)
def test_float16_rounds_each_output_once(be):
    """float16: FP32 math, dy * weight never stored, each output within one float16 ulp of the
    float64 result rounded once (plus FP32's error of the largest value: dx of an element where g and
    xhat * mean(g * xhat) cancel keeps FP32's absolute error, a few float16 ulps of a tiny result)."""
    skip_unless(be)
    rng = np.random.default_rng(12)
    for x_shape, shape, scale in CASES:
        x = (rng.standard_normal(x_shape) * max(scale, 1e-2)).astype(np.float16)
        dy = rng.standard_normal(x_shape).astype(np.float16)
        weight = (rng.standard_normal(np.atleast_1d(shape)) * 3).astype(np.float16)
        wide = [None if a is None else a.astype(np.float64) for a in (x, dy, weight)]
        exact = run_case(wide[0], wide[1], shape, wide[2], float(np.finfo(np.float32).eps), "numpy")
        for got, want, name in zip(run_case(x, dy, shape, weight, None, be), exact, ("y", "dx", "dweight")):
            want = want.astype(np.float16)
            ulp = np.spacing(np.abs(want)).astype(np.float64)
            error = np.abs(to_host(got).astype(np.float64) - want.astype(np.float64))
            fp32_error = 1e-6 * float(np.abs(want).max())
            assert got.dtype == np.float16 and (error <= ulp + fp32_error).all(), \
                f"{x_shape} {name}: {(error / ulp).max()} ulps"


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("x_shape, shape", [((3, 4, 5), (4, 5)), ((4, 6), 6), ((2, 3), (3,))])
def test_finite_differences(be, x_shape, shape):
    skip_unless(be)
    rng = np.random.default_rng(5)
    x, weight = rng.standard_normal(x_shape) * 2, rng.standard_normal(np.atleast_1d(shape))

    def forward(x, weight):
        return F.rms_norm(x, shape, weight, 1e-6, backend=be)

    def backward(dy, x, weight):
        return F.rms_norm_backward(dy, x, shape, weight, 1e-6, backend=be)

    report = check_op(forward, backward, [x, weight], names=["x", "weight"])
    assert report.max_rel_error < 1e-6, str(report)


# --- the layer: tests/test_group_and_layer_norm.py's test_layer_matches_torch_and_its_state_dict_round_trips ---

# --- refusals and empty inputs ------------------------------------------------------------------

@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_before_any_launch(be, monkeypatch):
    skip_unless(be)
    launches = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launches.append(args[3]) or real_launch(*args))
    x, w = np.ones((2, 3, 4)), np.ones(4)
    calls = [(lambda: F.rms_norm(x, 3, backend=be), ValueError, "must end with normalized_shape"),
             (lambda: F.rms_norm(x, 4, np.ones(3), backend=be), ValueError, "weight"),
             (lambda: F.rms_norm(x, 4, w.astype(np.float32), backend=be), TypeError, "dtype"),
             (lambda: F.rms_norm(x, 4, eps=-1.0, backend=be), ValueError, "eps"),
             (lambda: F.rms_norm(x, 4, eps="1e-5", backend=be), TypeError, "eps"),
             (lambda: F.rms_norm_backward(np.ones((2, 3, 5)), x, 4, backend=be), ValueError, "dy"),
             (lambda: F.rms_norm_backward(x, x, 4, save_invstd=np.ones((2, 3)), backend=be), ValueError,
              "save_invstd"),
             (lambda: nn.RMSNorm(4).backward(x), RuntimeError, "before forward")]
    for call, error, match in calls:
        with pytest.raises(error, match=match):
            call()
    assert launches == []
    F.rms_norm(x, 4, w, backend=be)
    assert bool(launches) == (be != "numpy")   # the spy sees the kernels of the calls taken


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("x_shape", [(0, 6), (2, 0, 6)])
def test_an_empty_input_gives_empty_results_and_a_zero_weight_gradient(be, x_shape):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    x, weight = np.zeros(x_shape), np.ones(6)
    y, invstd = F.rms_norm(x, 6, weight, return_stats=True, backend=be)
    assert y.shape == x_shape == tuple(torch.nn.functional.rms_norm(torch.from_numpy(x), [6]).shape)
    assert invstd.shape == x_shape[:-1] + (1,)
    dx, dweight = F.rms_norm_backward(x, x, 6, weight, backend=be)
    assert dx.shape == x_shape
    np.testing.assert_array_equal(dweight, np.zeros(6))


# --- the kernels (kernels/row_norm.cu, centered 0) ----------------------------------------------

def recorded_launches(monkeypatch):
    """The names of the kernels backend.launch runs from now on, in order."""
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launched.append(args[3]) or real_launch(*args))
    return launched


def test_a_launch_for_the_forward_and_two_for_the_backward(monkeypatch):
    skip_unless("emu")
    rng = np.random.default_rng(13)
    x, dy, weight = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5)), rng.standard_normal((4, 5))
    launched = recorded_launches(monkeypatch)
    _, invstd = F.rms_norm(x, (4, 5), weight, return_stats=True, backend="emu")
    assert launched == ["row_norm_forward"]
    launched.clear()
    F.rms_norm_backward(dy, x, (4, 5), weight, save_invstd=invstd, backend="emu")
    assert launched == ["row_norm_backward_dx", "row_norm_param_grads_columns"]
    launched.clear()
    F.rms_norm_backward(dy, x, (4, 5), backend="emu")
    assert launched == ["row_norm_forward", "row_norm_backward_dx"]


def kernel_results(x, dy, shape, weight, be):
    """run_case's results, then the backward's with invstd recomputed (dx, dweight)."""
    return (*run_case(x, dy, shape, weight, 1e-5, be), *F.rms_norm_backward(dy, x, shape, weight, 1e-5, backend=be))


def wide(shape, dtype) -> bool:
    """Whether rows of normalized_shape `shape` take the wide kernels (16-byte packs; NumPy's arrays
    start on 16 bytes)."""
    return int(np.prod(np.atleast_1d(shape))) % (16 // np.dtype(dtype).itemsize) == 0


def assert_kernels_match_numpy(cases, dtype, monkeypatch, first_launch):
    """Each (x's shape, normalized_shape, affine) on the emulator with guard zones (an access past
    any array faults) and the race check, under every schedule: the NumPy path's results to a few
    roundings, the same bits under every schedule, and `first_launch` the first kernel launched
    (wide or _unaligned as the case takes it)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(14)
    for x_shape, shape, affine in cases:
        x, dy = (rng.standard_normal(x_shape) * 2 + 1).astype(dtype), rng.standard_normal(x_shape).astype(dtype)
        weight = rng.standard_normal(np.atleast_1d(shape)).astype(dtype) if affine else None
        expected = kernel_results(x, dy, shape, weight, "numpy")
        runs = []
        for schedule in emu.SCHEDULES:
            launched = recorded_launches(monkeypatch)
            with emu.checking(guard=True, race=True, schedule=schedule, seed=3):
                runs.append(kernel_results(x, dy, shape, weight, "emu"))
            expected_launches = [first_launch + ("" if wide(shape, dtype) else "_unaligned")]
            assert launched[:len(expected_launches)] == expected_launches, launched
        assert_kernel_runs_match(runs, expected, ("y", "dx", "dweight") * 2, dtype, f"{x_shape} affine={affine}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype, monkeypatch):
    """Rows of 300 (longer than a block), of a 2-D shape, 45 rows of 33 (the column kernel's lanes
    walk 5 or 6 rows), and an odd length (the _unaligned kernels)."""
    skip_unless("emu")
    cases = [((7, 300), (300,), True), ((3, 2, 4, 5), (4, 5), True), ((45, 33), 33, True), ((45, 33), 33, False),
             ((6, 41), 41, True)]
    assert_kernels_match_numpy(cases, dtype, monkeypatch, "row_norm_forward")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_split_rows_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype, monkeypatch):
    """Rows cut into slices of several blocks (row_norm.MIN_SLICE lowered to 64: 3 rows of 520 in 8
    slices, 2 rows of 301 in 5, unaligned): the slices' sums of squares merged by each row's last
    block to arrive."""
    from cnn_gpu.gpu import row_norm
    skip_unless("emu")
    monkeypatch.setattr(row_norm, "MIN_SLICE", 64)
    assert_kernels_match_numpy([((3, 520), 520, True), ((2, 301), (301,), True)], dtype, monkeypatch,
                               "row_norm_slice_stats")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("min_slice", [None, 64])
def test_cuda_matches_numpy(dtype, min_slice, monkeypatch):
    """On the cuda backend (whole rows, and with MIN_SLICE at 64 split ones): the NumPy path's
    results to a few roundings, the same bits twice."""
    import cupy
    from cnn_gpu.gpu import row_norm
    if min_slice:
        monkeypatch.setattr(row_norm, "MIN_SLICE", min_slice)
    rng = np.random.default_rng(15)
    for x_shape, shape in (((7, 300), (300,)), ((3, 2, 4, 5), (4, 5)), ((3, 520), 520), ((2, 301), 301)):
        x, dy = (rng.standard_normal(x_shape) * 2 + 1).astype(dtype), rng.standard_normal(x_shape).astype(dtype)
        weight = rng.standard_normal(np.atleast_1d(shape)).astype(dtype)
        on_gpu = [cupy.asarray(a) for a in (x, dy, weight)]
        runs = [tuple(to_host(a) for a in kernel_results(*on_gpu[:2], shape, on_gpu[2], "cuda")) for _ in range(2)]
        assert_kernel_runs_match(runs, kernel_results(x, dy, shape, weight, "numpy"), ("y", "dx", "dweight") * 2,
                                   dtype, f"{x_shape} on cuda")
