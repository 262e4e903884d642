"""The "tf32" math mode on every backend and convolution pass: NumPy and the emulator agree, and
the mode changes the result (the operands are rounded to TF32)."""
from __future__ import annotations

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import backend, check
from cnn_gpu import functional as F

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")


@needs_emu
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"])
@pytest.mark.parametrize("stride", [1, 2])     # stride 2: dgrad runs as stride phases on the tensor cores
def test_tf32_mode_agrees_between_numpy_and_emu_and_differs_from_fp32(op, stride):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    kw = dict(stride=stride, padding=1, groups=2)
    if op == "conv2d":
        args = (x, w)
    elif op == "conv2d_backward":
        dy = rng.standard_normal(F.conv2d(x, w, **kw).shape).astype(np.float32)
        args = (dy, x, w)
    elif op == "conv_transpose2d":
        args = (x, w)
    else:
        dy = rng.standard_normal(F.conv_transpose2d(x, w, **kw).shape).astype(np.float32)
        args = (dy, x, w)
    fn = getattr(F, op)
    with cnn_gpu.math_mode("tf32"):
        on_numpy, on_emu = fn(*args, **kw, backend="numpy"), fn(*args, **kw, backend="emu")
    exact = fn(*(a.astype(np.float64) for a in args), **kw, backend="numpy")
    results = zip(*(r if isinstance(r, tuple) else (r,) for r in (on_numpy, on_emu, exact)))
    for index, (a, b, e) in enumerate(results):
        scale = np.abs(e).max()
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * scale)
        if index < 2:                                     # dx, dw (a bias gradient is a plain sum)
            assert np.abs(a - e).max() > 2e-5 * scale    # the mode changed the operands


@needs_emu
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"])
def test_tf32_mode_rounds_depthwise_operands_on_the_direct_kernels(op):
    """Depthwise convolutions (groups == C) are no GEMM and stay on their direct kernels, but in the
    "tf32" mode they too multiply TF32-rounded operands (API.md: float32 convolutions round their
    operands), summed in FP32, on NumPy and the emulator alike."""
    from cnn_gpu.functional.conv import _on_tensor_cores
    from cnn_gpu.functional.geometry import conv_geometry
    from cnn_gpu.precision import round_to_tf32
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, groups=4)
    assert conv_geometry(x.shape, w.shape, **kw).is_depthwise
    with cnn_gpu.math_mode("tf32"):
        assert not _on_tensor_cores("emu", x, conv_geometry(x.shape, w.shape, **kw))
    fn = getattr(F, op)
    args = [x, w]
    if op.endswith("backward"):
        y = (F.conv2d if op == "conv2d_backward" else F.conv_transpose2d)(x, w, **kw)
        args = [rng.standard_normal(y.shape).astype(np.float32), x, w]
    with cnn_gpu.math_mode("tf32"):
        on_numpy, on_emu = fn(*args, **kw, backend="numpy"), fn(*args, **kw, backend="emu")
    rounded = fn(*(round_to_tf32(a).astype(np.float64) for a in args), **kw, backend="numpy")
    exact = fn(*(a.astype(np.float64) for a in args), **kw, backend="numpy")
    magnitude = fn(*(np.abs(round_to_tf32(a)).astype(np.float64) for a in args), **kw, backend="numpy")
    results = zip(*(r if isinstance(r, tuple) else (r,) for r in (on_numpy, on_emu, rounded, exact, magnitude)))
    for index, (a, b, want, e, scale) in enumerate(results):
        if index == 2:       # the bias gradient: a plain sum of dy
            continue
        bound = check.TF32_SUM_K * check.FP32_UNIT_ROUNDOFF * scale     # cnn-gpu check --math tf32's rule
        assert np.all(np.abs(a - want) <= bound) and np.all(np.abs(b - want) <= bound), (op, index)
        assert np.abs(b - e).max() > 1e-4 * np.abs(e).max()     # not the FP32 result: the operands were rounded
