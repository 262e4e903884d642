"""F.adaptive_avg_pool2d / its backward and nn.AdaptiveAvgPool2d: the window rule written out,
PyTorch CPU over a seeded sweep, finite differences, and the kernels on the emulator (a sweep with
guard zones, bit-identical results under every schedule)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, refuse_kernel_runs

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")



def draw(rng):
    """x shape and output_size: outputs smaller, equal and larger than the input, None entries."""
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    out = [int(rng.integers(1, 14)) for _ in range(2)]
    if rng.random() < 0.1:
        out[int(rng.integers(2))] = None
    output_size = tuple(out) if rng.random() < 0.8 or None in out else out[0]
    return shape, output_size


def loop_reference(x, out_h, out_w):
    n, c, h, w = x.shape
    y = np.empty((n, c, out_h, out_w))
    for p in range(out_h):
        h0, h1 = (p * h) // out_h, -(-(p + 1) * h // out_h)
        for q in range(out_w):
            w0, w1 = (q * w) // out_w, -(-(q + 1) * w // out_w)
            y[:, :, p, q] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def test_windows_match_the_rule():
    rng = np.random.default_rng(1)
    for shape, out in [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), (1, 1)), ((1, 1, 4, 6), (7, 2)), ((2, 1, 10, 3), 10)]:
        x = rng.standard_normal(shape)
        size = out if isinstance(out, tuple) else (out, out)
        np.testing.assert_allclose(F.adaptive_avg_pool2d(x, out), loop_reference(x, *size), rtol=1e-13, atol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("dtype, count", [(np.float64, 200), (np.float32, 60)])
def test_against_pytorch(dtype, count):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for i in range(count):
        shape, output_size = draw(rng)
        x = rng.standard_normal(shape).astype(dtype)
        unbatched = rng.random() < 0.15
        if unbatched:
            x = x[0]
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        what = f"config {i}: {x.shape} -> {output_size}"
        assert_close(F.adaptive_avg_pool2d(x, output_size), yt.detach().numpy(), dtype, what)
        assert_close(F.adaptive_avg_pool2d_backward(dy, x.shape), xt.grad.numpy(), dtype, what + " dx")


def test_finite_differences():
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 5))
    for out in [(3, 2), (1, 1), (9, 6)]:
        report = check_op(lambda x: F.adaptive_avg_pool2d(x, out),
                          lambda dy, x: F.adaptive_avg_pool2d_backward(dy, x.shape), [x])
        assert report.max_rel_error < 1e-6, f"{out}: {report}"


def test_bad_arguments():
    x = np.ones((2, 3, 4, 4))
    for call, error, match in [
        (lambda: F.adaptive_avg_pool2d(x, 0), ValueError, "positive"),
        (lambda: F.adaptive_avg_pool2d(x, (1, 2, 3)), ValueError, "pair"),
        (lambda: F.adaptive_avg_pool2d(x, 1.5), TypeError, "output_size"),
        (lambda: F.adaptive_avg_pool2d(x[0, 0], 1), ValueError, "3-D or 4-D"),
        (lambda: F.adaptive_avg_pool2d(np.ones((2, 3, 0, 4)), 1), ValueError, "non-empty"),
        (lambda: F.adaptive_avg_pool2d_backward(np.ones((2, 4, 1, 1)), x.shape), ValueError, "channels"),
        (lambda: F.adaptive_avg_pool2d_backward(np.ones((2, 3, 1, 1)), (2, 3, 4)), ValueError, "x_shape"),
    ]:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_empty_batch(be, monkeypatch):
    """PyTorch allows N = 0 (an empty result), average and max pooling both. No kernel runs for it:
    backend.launch takes a grid of no blocks (which CUDA refuses) as nothing to launch."""
    refuse_kernel_runs(monkeypatch)
    x = np.zeros((0, 2, 5, 4), np.float32)
    y = F.adaptive_avg_pool2d(x, (3, 2), backend=be)
    assert y.shape == (0, 2, 3, 2) and y.dtype == np.float32
    assert F.adaptive_avg_pool2d_backward(y, x.shape, backend=be).shape == x.shape
    y, indices = F.adaptive_max_pool2d(x, (3, 2), backend=be)
    assert y.shape == indices.shape == (0, 2, 3, 2) and indices.dtype == np.int32
    assert F.adaptive_max_pool2d_backward(y, indices, x.shape, (3, 2), backend=be).shape == x.shape


def test_layer_global_pooling():
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 6)).astype(np.float32)
    layer = nn.AdaptiveAvgPool2d(1)
    y = layer(x)
    assert y.shape == (2, 3, 1, 1) and y.dtype == np.float32
    assert_close(y, x.mean(axis=(2, 3), keepdims=True), np.float32, "global average")
    dx = layer.backward(np.ones(y.shape, np.float32))
    assert_close(dx, np.full(x.shape, 1 / 30, np.float32), np.float32, "global average gradient")
    assert nn.AdaptiveAvgPool2d((None, 2))(x).shape == (2, 3, 5, 2)
    size = [2, 2]
    layer = nn.AdaptiveAvgPool2d(size)   # kept as a tuple: an edit of the list later changes nothing
    size[1] = 4                          # (a recorded step, cnn_gpu.replay, could not see it)
    assert layer.output_size == (2, 2) and layer(x).shape == (2, 3, 2, 2)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_emu_sweep(dtype):
    from cnn_gpu import emu
    rng = np.random.default_rng(5)
    with emu.checking(schedule="forward", guard=True):
        for i in range(150):
            shape, output_size = draw(rng)
            x = rng.standard_normal(shape).astype(dtype)
            y = F.adaptive_avg_pool2d(x, output_size, backend="emu")
            dy = rng.standard_normal(y.shape).astype(dtype)
            what = f"config {i}: {shape} -> {output_size}"
            assert_close(y, F.adaptive_avg_pool2d(x, output_size, backend="numpy"), dtype, what)
            assert_close(F.adaptive_avg_pool2d_backward(dy, shape, backend="emu"),
                         F.adaptive_avg_pool2d_backward(dy, shape, backend="numpy"), dtype, what + " dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(6)
    for shape, out in [((2, 3, 7, 9), (3, 4)), ((1, 2, 17, 19), (1, 1)), ((2, 1, 4, 6), (7, 5)),
                       ((1, 1, 30, 20), (4, 3))]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal((shape[0], shape[1]) + out).astype(np.float32)
        results = []
        for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
            with emu.checking(guard=True, **settings):
                results.append((F.adaptive_avg_pool2d(x, out, backend="emu"),
                                F.adaptive_avg_pool2d_backward(dy, shape, backend="emu")))
        for a, b in zip(*results):
            assert a.tobytes() == b.tobytes(), f"{shape} -> {out} under {schedule}"


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(7)
    for i in range(100):
        shape, output_size = draw(rng)
        x = rng.standard_normal(shape).astype(dtype)
        y = F.adaptive_avg_pool2d(cupy.asarray(x), output_size)
        dy = rng.standard_normal(y.shape).astype(dtype)
        what = f"config {i}: {shape} -> {output_size}"
        assert_close(y, F.adaptive_avg_pool2d(x, output_size), dtype, what)
        assert_close(F.adaptive_avg_pool2d_backward(cupy.asarray(dy), shape),
                     F.adaptive_avg_pool2d_backward(dy, shape), dtype, what + " dx")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_an_inf_or_nan_stays_in_its_windows_on_numpy_as_on_the_kernels(dtype):
    """helper-95: the NumPy path's window matrices multiplied a NaN or inf by their zeros, so one
    spread to every output of its rows and columns (an inf as NaN); PyTorch and the kernels keep it
    in the windows that hold it, forward and backward."""
    rng = np.random.default_rng(41)
    for shape, out in (((2, 3, 7, 5), (3, 4)), ((1, 2, 4, 4), 2), ((3, 6, 6), (4, None))):
        for bad in (np.nan, np.inf, -np.inf):
            x = rng.standard_normal(shape).astype(dtype)
            x[(0,) * (len(shape) - 2) + (1, 1)] = bad
            got, want = (F.adaptive_avg_pool2d(x, out, backend=be) for be in ("numpy", "emu"))
            assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isfinite(got).sum() > 1, (shape, bad)
            assert_close(np.nan_to_num(got), np.nan_to_num(want), dtype, f"forward {shape} {bad}")
            dy = rng.standard_normal(want.shape).astype(dtype)
            dy[(0,) * (dy.ndim - 1)] = bad
            got, want = (F.adaptive_avg_pool2d_backward(dy, shape, backend=be) for be in ("numpy", "emu"))
            assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isfinite(got).sum() > 1, (shape, bad)
            assert_close(np.nan_to_num(got), np.nan_to_num(want), dtype, f"backward {shape} {bad}")
