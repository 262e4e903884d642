"""F.softplus, selu, celu, logsigmoid, softsign, tanhshrink, hardshrink, softshrink, threshold, glu and softmin
with their backward passes, the in-place spellings (relu_, leaky_relu_, elu_, hardtanh_, threshold_, selu_,
celu_) and the layers (Softplus ... Softmax2d): PyTorch 2.13 CPU at the kinks, +-inf, NaN, -0.0 and in seeded
sweeps (float64, float32); float16 against the float64 result rounded once; the kernels on the emulator under
guard zones and the race check against the NumPy path; finite differences in float64; bad arguments refused
before any launch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from test_gradcheck_ops import away_from
from helpers import (activation_and_gradient, assert_close, float16_steps, needs_cuda, needs_emu, refuse_kernel_runs,
                     refuse_launches, to_host, torch_activation_and_gradient)

torch = pytest.importorskip("torch", reason="torch is not installed (make torch)")
TF = torch.nn.functional

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu), pytest.param("cuda", marks=needs_cuda)]

# case: (our op, its options, PyTorch's function, the kinks of its gradient)
CASES = {
    "softplus": ("softplus", {}, TF.softplus, (20.0,)),
    "softplus(0.5, 3)": ("softplus", dict(beta=0.5, threshold=3.0), lambda t: TF.softplus(t, 0.5, 3.0), (6.0,)),
    "selu": ("selu", {}, TF.selu, (0.0,)),
    "celu": ("celu", {}, TF.celu, (0.0,)),
    "celu(0.4)": ("celu", dict(alpha=0.4), lambda t: TF.celu(t, 0.4), (0.0,)),
    "celu(-1.5)": ("celu", dict(alpha=-1.5), lambda t: TF.celu(t, -1.5), (0.0,)),
    "logsigmoid": ("logsigmoid", {}, TF.logsigmoid, ()),
    "softsign": ("softsign", {}, TF.softsign, ()),
    "tanhshrink": ("tanhshrink", {}, TF.tanhshrink, ()),
    "hardshrink": ("hardshrink", {}, TF.hardshrink, (-0.5, 0.5)),
    "hardshrink(-0.3)": ("hardshrink", dict(lambd=-0.3), lambda t: TF.hardshrink(t, -0.3), (-0.3, 0.3)),
    "softshrink": ("softshrink", {}, TF.softshrink, (-0.5, 0.5)),
    "softshrink(1.5)": ("softshrink", dict(lambd=1.5), lambda t: TF.softshrink(t, 1.5), (-1.5, 1.5)),
    "threshold": ("threshold", dict(threshold=0.1, value=-2.0), lambda t: TF.threshold(t, 0.1, -2.0), (0.1,)),
}
RTOL = {np.float64: 1e-12, np.float32: 1e-6}


def ours(case, x, dy, be):
    return activation_and_gradient(*CASES[case][:2], x, dy, be)


def _torch_run(case, x, dy):
    return torch_activation_and_gradient(torch, CASES[case][2], x, dy)


def theirs(case, x, dy):
    """PyTorch's y and dx; at a NaN x and at a zero result from its scalar path (one-element tensors), the
    rule its CUDA kernels share: its CPU kernels' vectorised loops give the shrinks' and threshold's
    gradient 0 at NaN (the scalar loop: dy) and softshrink's zeros as +0.0 (the scalar loop: x * 0)."""
    y, dx = _torch_run(case, x, dy)
    for i in np.flatnonzero(np.isnan(x) | (y == 0)):
        y[i], dx[i] = (r[0] for r in _torch_run(case, x[i:i + 1], dy[i:i + 1]))
    return y, dx


def special_values(case, dtype):
    kinks = np.array(CASES[case][3] + (-1.0, 0.0, 1.0, 20.0, 40.0), dtype)
    nonzero = kinks[kinks != 0]
    return np.concatenate([kinks, np.nextafter(nonzero, np.array(-np.inf, dtype)),
                           np.nextafter(nonzero, np.array(np.inf, dtype)),
                           np.array([-0.0, np.inf, -np.inf, np.nan, -1e4, 1e4, -100, 100, -30, 30, -1e-3, 1e-3,
                                     -2.5e-5, 2.5e-5, -np.finfo(dtype).tiny, np.finfo(dtype).tiny], dtype)])


def inputs(case, dtype, seed, size=3000):
    rng = np.random.default_rng(seed)
    x = np.concatenate([special_values(case, dtype), (rng.standard_normal(size) * 4).astype(dtype)])
    dy = rng.uniform(0.5, 2.0, x.shape).astype(dtype) * rng.choice([-1, 1], x.shape).astype(dtype)
    return x, dy


def cancellation_scale(case, x, dy):
    """Where PyTorch's own formula cancels (so its result is off by a rounding of the terms, not of the
    result): the magnitude of those terms, else 0. softsign's gradient dy / b - dy x sgn(x) / b^2 (b = 1 + |x|),
    tanhshrink's x - tanh(x) and its gradient dy - dy (1 - tanh(x)^2)."""
    op = CASES[case][0]
    with np.errstate(all="ignore"):
        if op == "softsign":
            return np.zeros_like(x), np.abs(dy) / (1 + np.abs(x))
        if op == "tanhshrink":
            return np.abs(x), np.abs(dy)
    return np.zeros_like(x), np.zeros_like(x)


def assert_like_torch(got, expected, rtol, what, atol=0.0):
    got = np.asarray(got)
    assert got.dtype == expected.dtype, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN positions")
    zeros = expected == 0
    np.testing.assert_array_equal(np.signbit(got[zeros & (got == 0)]), np.signbit(expected[zeros & (got == 0)]),
                                  err_msg=f"{what}: zero signs")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(got[infinite], expected[infinite], err_msg=f"{what}: infinities")
    finite = np.isfinite(expected)
    atol = np.broadcast_to(atol, got.shape)[finite]
    off = np.abs(got[finite].astype(np.float64) - expected[finite]) - atol
    assert (off <= rtol * np.abs(expected[finite])).all(), (
        f"{what}: x index {np.flatnonzero(finite)[np.argmax(off - rtol * np.abs(expected[finite]))]}")


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_pytorch_at_kinks_infinities_nan_and_in_a_sweep(case, dtype, be):
    """PyTorch's values at every special value (the gradients' sides at the kinks: 0 at +-lambd and at the
    threshold, alpha scale dy at 0 for selu/celu, softplus's switch to x at threshold; NaN where PyTorch's
    formulas give it: softsign at +-inf) and on a seeded sweep, within RTOL of PyTorch's, and within RTOL of
    the terms where PyTorch's own formula cancels (cancellation_scale): ours do not."""
    x, dy = inputs(case, dtype, 21)
    y, dx = ours(case, x, dy, be)
    y_torch, dx_torch = theirs(case, x, dy)
    # the float32 kernels flush subnormal results to zero (-ftz=true); a subnormal result holds no relative
    # precision (softplus(-100) in float32: exp's and log1p's last subnormal bits)
    flushed = np.finfo(dtype).tiny if be != "numpy" and dtype == np.float32 else 0.0
    atol = flushed + 4 * np.finfo(dtype).smallest_subnormal
    scale_y, scale_dx = cancellation_scale(case, x.astype(np.float64), dy.astype(np.float64))
    if CASES[case][0] == "celu":
        # PyTorch's celu gradient takes input_scale = 1 / alpha with alpha rounded to float32
        # (derivatives.yaml: alpha.toFloat()): exp(x input_scale) is then |x| 1.5e-8 relative off for alpha
        # = 0.4; ours is 1 / alpha (test_finite_differences_in_float64 holds it)
        scale_dx = np.abs(dx_torch) * (1 + np.fmin(np.abs(x), 1e6)) * (1e-8 / RTOL[dtype])
    assert_like_torch(y, y_torch, RTOL[dtype], f"{case} forward", atol=atol + 4 * RTOL[dtype] * scale_y)
    assert_like_torch(dx, dx_torch, RTOL[dtype], f"{case} backward", atol=atol + 4 * RTOL[dtype] * scale_dx)


@pytest.mark.parametrize("be", BACKENDS)
def test_softplus_stays_finite_past_exps_range_unlike_pytorch(be):
    """Deliberately unlike PyTorch: with a threshold past exp's range, log1p(exp(t)) is t past t = 40 (where
    it rounds to t), so softplus(100) is 100 and its gradient dy, where PyTorch's float32 gives inf and NaN."""
    x = np.array([100.0, 50.0, 41.0, -100.0], np.float32)
    xp = backend.array_module(be)
    y = to_host(F.softplus(xp.asarray(x), threshold=200.0, backend=be))
    dx = to_host(F.softplus_backward(xp.ones_like(xp.asarray(x)), xp.asarray(x), threshold=200.0, backend=be))
    np.testing.assert_array_equal(y[:3], x[:3])
    np.testing.assert_array_equal(dx[:3], 1.0)
    t = TF.softplus(torch.tensor(x[:1]), 1.0, 200.0)
    assert torch.isinf(t).all()


# float16 elements (of ~20000) one float16 step from the float64 result rounded once: the NumPy path (FP32
# with libm) and the kernels (their fast map_exp, map_divide, map_log1p, map_expm1: the emulator gives them
# their documented worst error); none is further, measured
FLOAT16_STEPS = {"numpy": 1, "emu": 1, "cuda": 1}


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_float16_rounds_the_exact_result_once(case, be):
    """float16 (FP32 math, each output rounded once) within one float16 step of the float64 result rounded
    to float16, NaN and infinities where float64 has them. PyTorch's CPU half is not the reference here: its
    composite softsign and tanhshrink and its logsigmoid round every intermediate to half (tanhshrink(x)
    is 0 there for |x| < 0.03, where x - tanh(x) ~ x^3 / 3 is a normal float16)."""
    x, dy = inputs(case, np.float16, 22, size=20000)
    got = ours(case, x, dy, be)
    with np.errstate(all="ignore"):
        exact = ours(case, x.astype(np.float64), dy.astype(np.float64), "numpy")
    for g, e, what in zip(got, exact, ("forward", "backward")):
        with np.errstate(over="ignore"):   # past float16's range: inf, as the kernels round it
            reference = e.astype(np.float32).astype(np.float16)
        assert g.dtype == np.float16
        np.testing.assert_array_equal(np.isnan(g), np.isnan(reference), err_msg=f"{case} {what}")
        finite = ~np.isnan(reference)
        steps = float16_steps(g[finite], reference[finite])
        assert steps.max() <= FLOAT16_STEPS[be], f"{case} {what}: {steps.max()} steps at x={x[finite][steps.argmax()]}"


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case's kernels, glu's and softmin's on the emulator with guard zones and the race check in a
    random schedule, on sizes around a block's 1024 elements: the NumPy path's results within the dtype's
    tolerance (float16: one step), NaN, infinities and (float64) the signs of zero included; the shrinks'
    and threshold's bit for bit."""
    rng = np.random.default_rng(23)
    with emu.checking(guard=True, race=True, schedule="random", seed=5):
        for size in (1, 7, 1025, 2 * 1024 + 3):
            x = (rng.standard_normal(size) * 4).astype(dtype)
            x[::5] = np.resize(special_values("softshrink", dtype), x[::5].size)
            dy = rng.standard_normal(size).astype(dtype)
            for case, (op, _, _, _) in CASES.items():
                for got, expected in zip(ours(case, x, dy, "emu"), ours(case, x, dy, "numpy")):
                    compare(got, expected, dtype, f"{case} size {size}", exact=op in ("hardshrink", "softshrink",
                                                                                      "threshold"))
            for shape, dim in (((2, 2 * size), -1), ((3, 2, size), 1)):
                g = (rng.standard_normal(shape) * 4).astype(dtype)
                half = F.glu(g, dim)
                gy = rng.standard_normal(half.shape).astype(dtype)
                compare(F.glu(g, dim, backend="emu"), half, dtype, f"glu {shape}")
                compare(F.glu_backward(gy, g, dim, backend="emu"), F.glu_backward(gy, g, dim), dtype, f"glu' {shape}")
                compare(F.softmin(g, dim, backend="emu"), F.softmin(g, dim), dtype, f"softmin {shape}")


def compare(got, expected, dtype, what, exact=False):
    got = to_host(got)
    if exact or dtype != np.float16:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=what)
    if exact:
        tiny = (np.abs(expected) < np.finfo(dtype).tiny) & (dtype == np.float32)   # -ftz=true
        np.testing.assert_array_equal(got[~tiny].view(np.uint8), expected[~tiny].view(np.uint8), err_msg=what)
    elif dtype == np.float16:
        finite = ~np.isnan(expected)
        assert float16_steps(got[finite], expected[finite]).max() <= 1, what
    else:
        assert_close(got, expected, dtype, what)
        zeros = (expected == 0) & (got == 0)
        if dtype == np.float64:
            np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(expected[zeros]), err_msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_differences_in_float64(case):
    op, options, _, kinks = CASES[case]
    x = away_from(kinks, np.random.default_rng(24).standard_normal((3, 5)) * 3)
    report = check_op(lambda v: getattr(F, op)(v, **options),
                      lambda dy, v: getattr(F, op + "_backward")(dy, v, **options), [x])
    assert report.checks >= 3 and report.max_rel_error < 1e-6, str(report)


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_glu_and_softmin_finite_differences_and_pytorch(dim):
    x = np.random.default_rng(25).standard_normal((4, 6, 2)) * 2
    report = check_op(lambda v: F.glu(v, dim), lambda dy, v: F.glu_backward(dy, v, dim), [x])
    assert report.max_rel_error < 1e-6, str(report)
    report = check_op(lambda v: F.softmin(v, dim), lambda dy, v: F.softmin_backward(dy, F.softmin(v, dim), dim), [x])
    assert report.max_rel_error < 1e-6, str(report)
    for be in ("numpy", "emu") if "emu" in backend.available_backends() else ("numpy",):
        xt = torch.tensor(x, requires_grad=True)
        for ours_f, ours_b, theirs_f in ((F.glu, F.glu_backward, TF.glu), (F.softmin, None, TF.softmin)):
            xt.grad = None
            yt = theirs_f(xt, dim)
            dy = np.random.default_rng(26).standard_normal(yt.shape)
            yt.backward(torch.tensor(dy))
            y = ours_f(x, dim, backend=be)
            dx = ours_b(dy, x, dim, backend=be) if ours_b else F.softmin_backward(dy, y, dim, backend=be)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("be", BACKENDS)
def test_in_place_spellings_write_into_x_and_return_it(be):
    """F.relu_ ... F.celu_ give x itself holding what the out-of-place op returns (PyTorch's in-place
    contract); a read-only x is refused before anything runs."""
    spellings = [(F.relu_, F.relu, ()), (F.leaky_relu_, F.leaky_relu, (0.2,)), (F.elu_, F.elu, (0.7,)),
                 (F.hardtanh_, F.hardtanh, (-0.5, 0.25)), (F.threshold_, F.threshold, (0.1, 5.0)),
                 (F.selu_, F.selu, ()), (F.celu_, F.celu, (0.6,))]
    base = np.random.default_rng(27).standard_normal((3, 7)).astype(np.float32)
    xp = backend.array_module(be)
    for in_place, op, args in spellings:
        x = xp.asarray(base.copy())
        expected = to_host(op(x, *args, backend=be))
        assert in_place(x, *args, backend=be) is x
        np.testing.assert_array_equal(to_host(x), expected, err_msg=in_place.__name__)
    frozen = base.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.relu_(frozen, backend=be if be != "cuda" else "numpy")


def test_layers_reprs_and_passes_match_pytorch():
    """Each layer's repr is PyTorch's, its forward and backward are the functional op's, inplace=True is
    refused as the other activation layers refuse it, and Softmax2d takes 3-D and 4-D inputs only."""
    pairs = [(nn.Softplus(0.5, 3.0), torch.nn.Softplus(0.5, 3.0)), (nn.SELU(), torch.nn.SELU()),
             (nn.CELU(0.4), torch.nn.CELU(0.4)), (nn.LogSigmoid(), torch.nn.LogSigmoid()),
             (nn.Softsign(), torch.nn.Softsign()), (nn.Tanhshrink(), torch.nn.Tanhshrink()),
             (nn.Hardshrink(0.3), torch.nn.Hardshrink(0.3)), (nn.Softshrink(0.7), torch.nn.Softshrink(0.7)),
             (nn.Threshold(0.1, 20.0), torch.nn.Threshold(0.1, 20.0)), (nn.GLU(1), torch.nn.GLU(1)),
             (nn.Softmin(1), torch.nn.Softmin(1)), (nn.Softmax2d(), torch.nn.Softmax2d())]
    x = np.random.default_rng(28).standard_normal((2, 4, 3, 5))
    for ours_layer, their_layer in pairs:
        assert repr(ours_layer) == repr(their_layer)
        xt = torch.tensor(x, requires_grad=True)
        yt = their_layer(xt)
        dy = np.random.default_rng(29).standard_normal(yt.shape)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(ours_layer(x), yt.detach().numpy(), rtol=1e-12, atol=1e-15)
        # CELU: PyTorch's gradient rounds alpha to float32 (see the sweep above)
        rtol = 1e-7 if isinstance(ours_layer, nn.CELU) else 1e-10
        np.testing.assert_allclose(ours_layer.backward(dy), xt.grad.numpy(), rtol=rtol, atol=1e-14)
    for layer in (nn.SELU, nn.CELU):
        with pytest.raises(ValueError, match="inplace"):
            layer(inplace=True)
    with pytest.raises(ValueError, match="inplace"):
        nn.Threshold(0.0, 1.0, True)
    with pytest.raises(ValueError, match="expected input to be 3D or 4D, got 2D"):
        nn.Softmax2d()(x[0, 0])
    with pytest.raises(ValueError, match="alpha cannot be 0"):
        nn.CELU(0.0)
    with pytest.raises(ValueError, match="lambda must be greater or equal to 0"):
        nn.Softshrink(-0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nn.Softmin()(x[0])
    assert any("Implicit dimension choice for softmin" in str(w.message) for w in caught)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, be: F.softplus(x.astype(np.int64), backend=be), TypeError, "x must be float16, float32 or float64"),
    (lambda x, be: F.selu_backward(x[:1], x, backend=be), ValueError, r"dy must have shape \(2, 4\)"),
    (lambda x, be: F.celu(x, 0.0, backend=be), ValueError, "alpha cannot be 0 for CELU"),
    (lambda x, be: F.softshrink(x, -0.5, backend=be), ValueError, "lambda must be greater or equal to 0"),
    (lambda x, be: F.hardshrink(x, np.nan, backend=be), ValueError, "lambd must be finite"),
    (lambda x, be: F.threshold(x, 0.1, "a", backend=be), TypeError, "value must be a real number"),
    (lambda x, be: F.softplus_backward(x, x.astype(np.float32), backend=be), TypeError, "dy has dtype float64"),
    (lambda x, be: F.glu(x[:, :3], backend=be), ValueError,
     "Halving dimension must be even, but dimension 1 is size 3"),
    (lambda x, be: F.glu(x[0, 0:1].reshape(()), backend=be), ValueError, "glu does not support scalars"),
    (lambda x, be: F.glu(x, 2, backend=be), IndexError, "dim 2 is out of range"),
    (lambda x, be: F.glu_backward(x, x, backend=be), ValueError, r"dy must have shape \(2, 2\)"),
    (lambda x, be: F.softmin(x, 3, backend=be), IndexError, "out of range"),
])
def test_bad_arguments_are_refused_before_any_launch(call, error, message, monkeypatch):
    refuse_launches(monkeypatch)
    for be in ("numpy", "emu"):
        with pytest.raises(error, match=message):
            call(np.ones((2, 4)), be)


@pytest.mark.parametrize("be", BACKENDS)
def test_empty_and_zero_dimensional_inputs(be, monkeypatch):
    """Empty inputs give empty outputs without a kernel running (glu's too, whatever dimension is empty);
    a 0-d input PyTorch's value."""
    x0 = np.array(-0.7)
    for case in CASES:
        y, dx = ours(case, x0, x0, be)
        want = theirs(case, x0.reshape(1), x0.reshape(1))
        assert y.shape == () and dx.shape == ()
        np.testing.assert_allclose([y, dx], [want[0][0], want[1][0]], rtol=1e-7)   # 1e-7: celu's gradient
    refuse_kernel_runs(monkeypatch)
    for case in CASES:
        for got in ours(case, np.zeros((2, 0, 3)), np.zeros((2, 0, 3)), be):
            assert got.shape == (2, 0, 3)
    xp = backend.array_module(be)   # CuPy arrays on cuda
    for shape in ((0, 4), (3, 0), (2, 0, 2)):
        x = xp.zeros(shape)
        y = F.glu(x, -1, backend=be)
        assert y.shape == shape[:-1] + (shape[-1] // 2,)
        assert F.glu_backward(xp.zeros(y.shape), x, -1, backend=be).shape == shape


def test_benchmark_models_know_the_layers():
    """A model with the element-wise layers gets its shapes, its launches (the kernels elementwise.cu holds:
    SELU and CELU run elu's, both shrinks' gradients shrink_backward) and a PyTorch mirror that computes
    what it does."""
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    # each layer's parameters matter for the values it sees (CELU and the shrinks see both signs)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=np.float64), nn.CELU(0.4), nn.Hardshrink(0.3), nn.Softshrink(0.2),
                          nn.Threshold(-0.1, 2.0), nn.Softplus(0.5, 1.0), nn.SELU(), nn.LogSigmoid(), nn.Softsign(),
                          nn.Tanhshrink())
    x = np.random.default_rng(30).standard_normal((2, 2, 7, 6)) * 4
    shapes = [(type(leaf).__name__, shape_in, shape_out)
              for leaf, shape_in, shape_out, _ in leaf_layers(model, x.shape)]
    assert shapes == [("Conv2d", (2, 2, 7, 6), (2, 3, 5, 4))] + [(type(layer).__name__, (2, 3, 5, 4), (2, 3, 5, 4))
                                                                for layer in model[1:]]
    kernels = [kernel for layer in model[1:] for kernel, _ in _layer_passes(layer, 1, 1, 8)]
    assert kernels == ["elu_forward", "elu_backward", "hardshrink_forward", "shrink_backward", "softshrink_forward",
                       "shrink_backward", "threshold_forward", "threshold_backward", "softplus_forward",
                       "softplus_backward", "elu_forward", "elu_backward", "log_sigmoid_forward",
                       "log_sigmoid_backward", "softsign_forward", "softsign_backward", "tanhshrink_forward",
                       "tanhshrink_backward"]
    source = backend.kernel_source("elementwise")
    assert all(f"\n{kernel}(" in source for kernel in kernels)
    mirror = torch_mirror(model, torch)
    assert [type(m).__name__ for m in mirror] == [type(m).__name__ for m in model]
    with torch.no_grad():
        np.testing.assert_allclose(mirror(torch.tensor(x)).numpy(), model(x), rtol=1e-12, atol=1e-15)


@needs_emu
def test_softmin_and_the_in_place_spellings_are_replayed_on_new_inputs():
    """softmin's negations and the in-place spellings' copy into x are device work (backend.device_call):
    a replay on new inputs gives what the ops give eagerly on them, where the recording's negated
    input, or an x left unwritten, would stay."""
    from cnn_gpu import replay
    rng = np.random.default_rng(41)
    x, dy, z = (rng.standard_normal((3, 5)).astype(np.float32) for _ in range(3))
    with replay.record(x, dy, z) as step:
        y = F.softmin(x, 1, backend="emu")
        dx = F.softmin_backward(dy, y, 1, backend="emu")
        F.leaky_relu_(z, 0.2, backend="emu")
    new_x, new_dy, new_z = (rng.standard_normal((3, 5)).astype(np.float32) for _ in range(3))
    step.replay(new_x, new_dy, new_z)
    want_y = F.softmin(new_x, 1, backend="emu")
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, F.softmin_backward(new_dy, want_y, 1, backend="emu"))
    np.testing.assert_array_equal(z, F.leaky_relu(new_z, 0.2, backend="emu"))


def test_softmin_of_a_0d_array():
    assert F.softmin(np.array(1.5, np.float32), 0) == np.float32(1)   # softmax's 0-d rule, an array in and out
