"""F.lp_pool1d/2d, their backward and nn.LPPool1d/2d against PyTorch 2.13 CPU (values and autograd
gradients of its definition, p = +-inf, ceil_mode's partial windows, NaN where PyTorch gives NaN, the
zero gradient of a window whose sum is 0), finite differences, float16 rounded once, refusals; the
pools run on the emulator's kernels."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_fp16_within_one_ulp, needs_cuda, needs_emu, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
NORMS = (2, 3, 1, 1.5, 0.5, -1.0, float("inf"), -float("inf"))


def draw(rng):
    """(x shape, norm_type, kernel_size, stride, ceil_mode) of a 2-D call with a non-empty output."""
    kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride = None if rng.random() < 0.3 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(kernel[0], 8)),
             int(rng.integers(kernel[1], 8)))
    if rng.random() < 0.2:
        shape = shape[1:]
    kernel_size = kernel[0] if kernel[0] == kernel[1] and rng.random() < 0.5 else kernel
    return shape, NORMS[int(rng.integers(len(NORMS)))], kernel_size, stride, bool(rng.random() < 0.5)


def values(rng, shape, norm_type, dtype):
    """Positive values (finite everywhere) for fractional and negative p, signed ones otherwise (odd p:
    NaN roots of negative sums, as PyTorch's)."""
    x = rng.standard_normal(shape)
    if np.isfinite(norm_type) and (norm_type != int(norm_type) or norm_type < 0):
        x = np.abs(x) + 0.2
    return x.astype(dtype)


def theirs(torch, x, dy, norm_type, kernel_size, stride, ceil_mode, one_d=False):
    xt = torch.tensor(x, requires_grad=True)
    op = torch.nn.functional.lp_pool1d if one_d else torch.nn.functional.lp_pool2d
    yt = op(xt, norm_type, kernel_size, stride, ceil_mode)
    if dy is None:
        return yt.detach().numpy(), None
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("be", BACKENDS)
def test_against_pytorch(be, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for i in range(40 if be == "numpy" else 16):
        shape, norm_type, kernel_size, stride, ceil_mode = draw(rng)
        x = values(rng, shape, norm_type, dtype)
        y = F.lp_pool2d(x, norm_type, kernel_size, stride, ceil_mode, backend=be)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ty, tdx = theirs(torch, x, dy, norm_type, kernel_size, stride, ceil_mode)
        what = f"config {i}: {shape} p={norm_type} k={kernel_size} s={stride} ceil={ceil_mode}"
        assert_close(y, ty, dtype, what)
        assert_close(F.lp_pool2d_backward(dy, x, norm_type, kernel_size, stride, ceil_mode, backend=be), tdx, dtype,
                     what + " dx")
        # 1-D: the rows of x as signals
        signal = x.reshape(-1, x.shape[-1])
        k, s = np.ravel(kernel_size)[-1], None if stride is None else stride[1]
        y = F.lp_pool1d(signal, norm_type, int(k), s, ceil_mode, backend=be)
        dy = rng.standard_normal(y.shape).astype(dtype)
        ty, tdx = theirs(torch, signal, dy, norm_type, int(k), s, ceil_mode, one_d=True)
        assert_close(y, ty, dtype, what + " 1-D")
        assert_close(F.lp_pool1d_backward(dy, signal, norm_type, int(k), s, ceil_mode, backend=be), tdx, dtype,
                     what + " 1-D dx")


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_nans_and_a_zero_sum_match_pytorch(be):
    """A negative sum under an odd p gives NaN (value and gradient), a negative x under a fractional p
    NaN; a window whose x ** p sums to 0 has a zero gradient (relu's), not NaN."""
    torch = pytest.importorskip("torch")
    x = np.array([[[[-1.0, -2.0, 0.0, 0.0], [-0.5, 0.25, 0.0, 0.0]]]])
    dy = np.ones((1, 1, 1, 2))
    for norm_type in (3, 2, 1.5):
        y = F.lp_pool2d(x, norm_type, 2, backend=be)
        dx = F.lp_pool2d_backward(dy, x, norm_type, 2, backend=be)
        ty, tdx = theirs(torch, x, dy, norm_type, 2, None, False)
        np.testing.assert_allclose(y, ty, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(dx, tdx, rtol=1e-12, equal_nan=True)
        assert (dx[..., 2:] == 0).all() and y[0, 0, 0, 1] == 0, norm_type


def test_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.01 + 0.3   # distinct: no max-pool ties
    for norm_type, kernel, stride, ceil_mode in [(2, 3, 2, True), (3, (2, 3), None, False), (1.5, 2, 1, False),
                                                 (float("inf"), 3, 2, True), (-float("inf"), 2, None, True),
                                                 (-1.0, (3, 2), (2, 1), True)]:
        report = check_op(lambda x: F.lp_pool2d(x, norm_type, kernel, stride, ceil_mode),
                          lambda dy, x: F.lp_pool2d_backward(dy, x, norm_type, kernel, stride, ceil_mode), [x])
        assert report.max_rel_error < 1e-6, f"{norm_type}: {report}"
    signal = x[0]
    report = check_op(lambda s: F.lp_pool1d(s, 2.5, 3, 2, True),
                      lambda dy, s: F.lp_pool1d_backward(dy, s, 2.5, 3, 2, True), [signal.reshape(3, 42)])
    assert report.max_rel_error < 1e-6, report


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_is_computed_in_fp32_and_rounded_once(be):
    """Within one float16 ulp of PyTorch's float64 result on the float16 values."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for i in range(10):
        shape, norm_type, kernel_size, stride, ceil_mode = draw(rng)
        x = values(rng, shape, norm_type, np.float16)
        y = F.lp_pool2d(x, norm_type, kernel_size, stride, ceil_mode, backend=be)
        dy = rng.standard_normal(y.shape).astype(np.float16)
        ty, tdx = theirs(torch, x.astype(np.float64), dy.astype(np.float64), norm_type, kernel_size, stride,
                         ceil_mode)
        dx = F.lp_pool2d_backward(dy, x, norm_type, kernel_size, stride, ceil_mode, backend=be)
        assert y.dtype == dx.dtype == np.float16
        what = f"config {i}: p={norm_type}"
        assert_fp16_within_one_ulp(y, ty.astype(np.float16), what)
        assert_fp16_within_one_ulp(dx, tdx.astype(np.float16), what + " dx")


@pytest.mark.torch
def test_layers_match_pytorchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    for ours, their_layer, shape in [
            (nn.LPPool2d(2, 3), torch.nn.LPPool2d(2, 3), (2, 3, 7, 8)),
            (nn.LPPool2d(1.5, (2, 3), (1, 2), True), torch.nn.LPPool2d(1.5, (2, 3), (1, 2), True), (3, 5, 6)),
            (nn.LPPool1d(float("inf"), 3, 2), torch.nn.LPPool1d(float("inf"), 3, 2), (2, 3, 9))]:
        assert repr(ours) == repr(their_layer) and ours.state_dict() == {}
        x = np.abs(rng.standard_normal(shape)) + 0.1
        xt = torch.tensor(x, requires_grad=True)
        yt = their_layer(xt)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10)


@pytest.mark.torch
@needs_emu
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    """norm_type 0 raises PyTorch's ZeroDivisionError; the rest ValueError/TypeError naming the argument."""
    torch = pytest.importorskip("torch")
    with pytest.raises(ZeroDivisionError):
        torch.nn.functional.lp_pool2d(torch.ones(1, 1, 4, 4), 0, 2)
    refuse_launches(monkeypatch)
    x = np.ones((2, 3, 4, 4))
    for call, error, match in [
        (lambda be: F.lp_pool2d(x, 0, 2, backend=be), ZeroDivisionError, "norm_type"),
        (lambda be: F.lp_pool2d(x, float("nan"), 2, backend=be), ValueError, "norm_type"),
        (lambda be: F.lp_pool2d(x, True, 2, backend=be), TypeError, "norm_type"),
        (lambda be: F.lp_pool2d(x, "2", 2, backend=be), TypeError, "norm_type"),
        (lambda be: F.lp_pool2d(x, 2, 0, backend=be), ValueError, "kernel_size"),
        (lambda be: F.lp_pool2d(x, 2, 5, backend=be), ValueError, "empty"),
        (lambda be: F.lp_pool2d(x, 2, 2, 0, backend=be), ValueError, "stride"),
        (lambda be: F.lp_pool2d(x, 2, 2, ceil_mode=1, backend=be), TypeError, "ceil_mode"),
        (lambda be: F.lp_pool2d(x[0, 0], 2, 2, backend=be), ValueError, "3-D or 4-D"),
        (lambda be: F.lp_pool2d(x.astype(np.int32), 2, 2, backend=be), TypeError, "float"),
        (lambda be: F.lp_pool2d_backward(np.ones((2, 3, 3, 3)), x, 2, 2, backend=be), ValueError, "dy"),
        (lambda be: F.lp_pool2d_backward(np.ones((2, 3, 2, 2), np.float32), x, 2, 2, backend=be), TypeError, "dtype"),
        (lambda be: F.lp_pool2d_backward(np.ones((2, 3, 3, 3)), x, float("inf"), 2, backend=be), ValueError, "dy"),
        (lambda be: F.lp_pool1d(x, 2, 2, backend=be), ValueError, "2-D or 3-D"),
        (lambda be: F.lp_pool1d(x[0], 2, (2, 2), backend=be), ValueError, "kernel_size"),
        (lambda be: F.lp_pool1d(x[0], 2, 5, backend=be), ValueError, "empty"),
        (lambda be: F.lp_pool1d_backward(np.ones((3, 4)), x[0], 2, 2, backend=be), ValueError, "dy"),
        (lambda be: nn.LPPool2d(0, 2), ZeroDivisionError, "norm_type"),
        (lambda be: nn.LPPool1d(2, (2, 2)), ValueError, "kernel_size"),
    ]:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                call(be)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(5)
    for i in range(12):
        shape, norm_type, kernel_size, stride, ceil_mode = draw(rng)
        x = values(rng, shape, norm_type, dtype)
        y = F.lp_pool2d(cupy.asarray(x), norm_type, kernel_size, stride, ceil_mode)
        want = F.lp_pool2d(x, norm_type, kernel_size, stride, ceil_mode)
        assert_close(y.get(), want, dtype, f"config {i}")
        dy = rng.standard_normal(want.shape).astype(dtype)
        assert_close(F.lp_pool2d_backward(cupy.asarray(dy), cupy.asarray(x), norm_type, kernel_size, stride,
                                          ceil_mode).get(),
                     F.lp_pool2d_backward(dy, x, norm_type, kernel_size, stride, ceil_mode), dtype, f"config {i} dx")
