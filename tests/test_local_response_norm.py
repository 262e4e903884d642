"""F.local_response_norm / its backward and nn.LocalResponseNorm (kernels/local_response_norm.cu)
against PyTorch 2.13: values and gradients (3- to 5-D inputs, windows wider than the channels, even
and odd sizes; three dtypes, float16 computed in FP32 and rounded once), finite differences in
float64, the emulator under guard zones and every schedule, a grid smaller than the work, the layer,
empty inputs and PyTorch's refusals."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import (assert_close, assert_network_matches_torch, assert_refused_before_any_launch, needs_cuda,
                     needs_emu, record_launches, refuse_kernel_runs)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
# (x shape, size, alpha, beta, k): AlexNet's settings on a signal, an image, a 5-D volume with an
# even size, a window wider than the channels, a large alpha (the squares dominate k)
CASES = [((2, 5, 7), 3, 1e-4, 0.75, 1.0), ((2, 6, 3, 4), 5, 0.5, 0.75, 2.0), ((1, 4, 2, 2, 3), 2, 1.0, 0.5, 1.0),
         ((2, 3, 4), 10, 2.0, 1.5, 0.5), ((3, 7, 2, 5), 4, 20.0, 0.75, 1.0)]


def draw(shape, dtype, seed):
    return (2 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def close(got, want, dtype, what):
    """float16: within one FP16 ulp of `want` (FP32 math rounded once on both sides, FMA contraction
    and powf's last bit aside); else assert_close's relative bound."""
    if dtype == np.float16:
        bound = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert (np.abs(np.asarray(got, np.float64) - want) <= bound).all(), what
    else:
        assert_close(got, np.asarray(want).astype(dtype), dtype, what)


def torchs(torch, x, dy, *settings):
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = torch.nn.functional.local_response_norm(tx, *settings)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    return ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_values_and_gradients_are_pytorchs(dtype, be, torch):
    """float64 and float32 to their rounding; float16 within one FP16 ulp of the float64 result (FP32
    math, each output rounded once)."""
    for i, (shape, *settings) in enumerate(CASES):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 30 + i)
        y = F.local_response_norm(x, *settings, backend=be)
        dx = F.local_response_norm_backward(dy, x, *settings, backend=be)
        for got, want, what in zip((y, dx), torchs(torch, x, dy, *settings), ("y", "dx")):
            assert got.dtype == dtype and got.shape == shape, (shape, what)
            close(got, want, dtype, f"{shape} {what}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_match_numpy(dtype):
    for i, (shape, *settings) in enumerate(CASES):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 30 + i)
        assert_close(F.local_response_norm(x, *settings, backend="emu"), F.local_response_norm(x, *settings),
                     dtype, f"{shape} y")
        assert_close(F.local_response_norm_backward(dy, x, *settings, backend="emu"),
                     F.local_response_norm_backward(dy, x, *settings), dtype, f"{shape} dx")


def test_gradients_match_finite_differences():
    for i, (shape, *settings) in enumerate(CASES):
        x = np.random.default_rng(7 + i).standard_normal(shape)
        report = check_op(lambda a: F.local_response_norm(a, *settings),
                          lambda dy, a: F.local_response_norm_backward(dy, a, *settings), [x])
        assert report.max_rel_error < 1e-6, (shape, report)


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emulated_kernels_are_bit_identical_under_schedules_and_guard_zones(schedule):
    from cnn_gpu import emu
    shape, *settings = CASES[1]
    x, dy = draw(shape, np.float32, 1), draw(shape, np.float32, 2)
    results = []
    for options in (dict(schedule="forward"), dict(schedule=schedule, seed=5)):
        with emu.checking(guard=True, **options):
            results.append((F.local_response_norm(x, *settings, backend="emu"),
                            F.local_response_norm_backward(dy, x, *settings, backend="emu")))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes(), schedule


@needs_emu
def test_a_grid_smaller_than_the_work_covers_every_plane_and_position():
    """blockIdx.y strides over more planes than the grid has rows, x threads over more positions
    than the grid's threads."""
    shape, size, alpha, beta, k = (3, 5, 23, 17), 3, 0.5, 0.75, 1.0
    x, dy = draw(shape, np.float64, 4), draw(shape, np.float64, 5)
    args = (np.int64(15), np.int32(5), np.int32(23 * 17), np.int32(size))
    settings = (np.float64(alpha), np.float64(beta), np.float64(k))
    y, direct, terms, dx = (np.empty(shape) for _ in range(4))
    family = "local_response_norm"
    backend.launch("emu", family, x.dtype, "local_response_norm_forward", (1, 2), (256,), (x, y, *args, *settings))
    backend.launch("emu", family, x.dtype, "local_response_norm_terms", (1, 2), (256,),
                   (dy, x, direct, terms, *args, *settings))
    backend.launch("emu", family, x.dtype, "local_response_norm_backward", (1, 2), (256,),
                   (x, direct, terms, dx, *args))
    assert_close(y, F.local_response_norm(x, size, alpha, beta, k), np.float64, "y")
    assert_close(dx, F.local_response_norm_backward(dy, x, size, alpha, beta, k), np.float64, "dx")


@needs_emu
def test_the_layer_in_a_network_and_its_launches(torch, monkeypatch):
    nn.init.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=2.0))
    model.to("emu")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1),
                                 torch.nn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=2.0))
    assert repr(model[1]) == repr(theirs[1]) == "LocalResponseNorm(3, alpha=0.1, beta=0.75, k=2.0)"
    assert_network_matches_torch(torch, model, theirs, draw((2, 2, 5, 4), np.float32, 8))
    launched = record_launches(monkeypatch)
    layer = model[1]
    layer.backward(layer(draw((2, 6, 5, 4), np.float32, 10)))
    assert launched == [("local_response_norm", f"local_response_norm_{kernel}")
                        for kernel in ("forward", "terms", "backward")]


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_replay_computes_new_inputs(dtype):
    """Recorded (cnn_gpu.replay), the inputs overwritten and replayed: what the ops compute eagerly on
    the new inputs, bit for bit (the backward's compute-type terms included)."""
    from test_replay_ops import assert_replay_is_eager
    shape, *settings = CASES[1]

    def run(a):
        return dict(y=F.local_response_norm(a["x"], *settings, backend="emu"),
                    dx=F.local_response_norm_backward(a["dy"], a["x"], *settings, backend="emu"))
    inputs = [dict(x=draw(shape, dtype, seed), dy=draw(shape, dtype, seed + 1)) for seed in (1, 3)]
    assert_replay_is_eager(run, *inputs, "local_response_norm")


@needs_emu
def test_empty_inputs_run_no_kernel(monkeypatch):
    refuse_kernel_runs(monkeypatch)
    for shape in ((0, 3, 4), (2, 0, 4, 4), (2, 3, 0)):
        x = np.ones(shape, np.float32)
        assert F.local_response_norm(x, 3, backend="emu").shape == shape
        assert F.local_response_norm_backward(x, x, 3, backend="emu").shape == shape


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.local_response_norm(np.ones((2, 3)), 2), ValueError,
     r"Expected 3D or higher dimensionality input \(got 2 dimensions\)"),
    (lambda: F.local_response_norm(np.ones((2, 3, 4)), 0), ValueError, "size must be a positive int"),
    (lambda: F.local_response_norm(np.ones((2, 3, 4)), 2.0), TypeError, "size must be a positive int"),
    (lambda: F.local_response_norm(np.ones((2, 3, 4)), 2, alpha=float("nan")), ValueError, "alpha must be finite"),
    (lambda: F.local_response_norm(np.ones((2, 3, 4)), 2, k="1"), TypeError, "k must be a real number"),
    (lambda: F.local_response_norm_backward(np.ones((2, 3, 5)), np.ones((2, 3, 4)), 2), ValueError, "dy must have"),
    (lambda: F.local_response_norm_backward(np.ones((2, 3, 4), np.float32), np.ones((2, 3, 4)), 2), TypeError,
     "dy has dtype float32"),
])
def test_pytorchs_refusals_before_any_launch(call, error, message, monkeypatch):
    assert_refused_before_any_launch(monkeypatch, call, error, message)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    for i, (shape, *settings) in enumerate(CASES):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 30 + i)
        y = F.local_response_norm(cupy.asarray(x), *settings)
        dx = F.local_response_norm_backward(cupy.asarray(dy), cupy.asarray(x), *settings)
        close(y.get(), F.local_response_norm(x, *settings).astype(np.float64), dtype, f"{shape} y")
        close(dx.get(), F.local_response_norm_backward(dy, x, *settings).astype(np.float64), dtype, f"{shape} dx")
