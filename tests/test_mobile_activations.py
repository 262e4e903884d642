"""F.hardtanh, F.relu6, F.hardsigmoid, F.hardswish, F.elu and F.mish (MobileNet, EfficientNet and YOLO
activations) with their backward passes: PyTorch 2.13 CPU at the kinks, +-inf, NaN, -0.0 and large |x| and
in seeded sweeps, on every backend and dtype; the float64 oracle of elu and mish against 60-digit
references in both tails; float16 against PyTorch's CPU half; the kernels on the emulator under guard zones
and the race check; empty and 0-d inputs; bad arguments refused before any launch. Direct-loop references:
test_functional_reference.py; finite differences: test_gradcheck_ops.py; the layers: test_nn.py and, in the
benchmark's models, here."""
from __future__ import annotations

import decimal

import numpy as np
import pytest

from cnn_gpu import backend, emu
from cnn_gpu import functional as F
from helpers import (activation_and_gradient, assert_close, assert_fp16_within_one_ulp, needs_cuda, needs_emu,
                     torch_activation_and_gradient)

torch = pytest.importorskip("torch", reason="torch is not installed (make torch)")
TF = torch.nn.functional

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu), pytest.param("cuda", marks=needs_cuda)]
DTYPES = [np.float64, np.float32, np.float16]

# case: (our op, its options, PyTorch's function, the kinks of its gradient)
CASES = {
    "hardtanh": ("hardtanh", {}, TF.hardtanh, (-1.0, 1.0)),
    "hardtanh(-2.5, 0.1)": ("hardtanh", dict(min_val=-2.5, max_val=0.1), lambda t: TF.hardtanh(t, -2.5, 0.1),
                            (-2.5, 0.1)),
    "hardtanh(2, 2)": ("hardtanh", dict(min_val=2.0, max_val=2.0), lambda t: TF.hardtanh(t, 2.0, 2.0), (2.0,)),
    "relu6": ("relu6", {}, TF.relu6, (0.0, 6.0)),
    "hardsigmoid": ("hardsigmoid", {}, TF.hardsigmoid, (-3.0, 3.0)),
    "hardswish": ("hardswish", {}, TF.hardswish, (-3.0, 3.0)),
    "elu": ("elu", {}, TF.elu, (0.0,)),
    "elu(0.3)": ("elu", dict(alpha=0.3), lambda t: TF.elu(t, 0.3), (0.0,)),
    "elu(-1.5)": ("elu", dict(alpha=-1.5), lambda t: TF.elu(t, -1.5), (0.0,)),
    "mish": ("mish", {}, TF.mish, ()),
}
TORCH_DTYPES = {np.float64: torch.float64, np.float32: torch.float32, np.float16: torch.float16}
RTOL = {np.float64: 1e-12, np.float32: 1e-6, np.float16: 1e-3}


def ours(case, x, dy, be):
    """Our y and dx as NumPy arrays (cuda: computed on CuPy copies)."""
    op, options, _, _ = CASES[case]
    return activation_and_gradient(op, options, x, dy, be)


def _torch_run(case, x, dy):
    return torch_activation_and_gradient(torch, CASES[case][2], x, dy)


def theirs(case, x, dy):
    """PyTorch's y and dx in x's dtype (float16: its CPU half kernels), the gradient at a NaN x from its
    scalar path (a one-element tensor). Its CPU kernels disagree there: their vectorised loops give 0
    (hardtanh, relu6) or NaN (hardswish, elu) where the scalar loop that finishes a tensor, and its CUDA
    kernels, give dy, the rule as its kernels write it, which ours follow."""
    y, dx = _torch_run(case, x, dy)
    for i in np.flatnonzero(np.isnan(x)):
        dx[i] = _torch_run(case, x[i:i + 1], dy[i:i + 1])[1][0]
    return y, dx


def special_values(case, dtype):
    """The kinks, one float below and above each, -0.0, +-inf, NaN, large |x| and the dtype's extremes."""
    kinks = np.array(CASES[case][3] + (-3.0, -1.0, 0.0, 1.0, 3.0, 6.0), dtype)
    big, nonzero = np.finfo(dtype).max, kinks[kinks != 0]   # next to 0: +-tiny below (no subnormals)
    values = np.concatenate([kinks, np.nextafter(nonzero, np.array(-np.inf, dtype)),
                             np.nextafter(nonzero, np.array(np.inf, dtype)),
                             np.array([-0.0, np.inf, -np.inf, np.nan, -big, big, -1e4, 1e4, -800, 800, -40, 40, -1e-3,
                                       1e-3, -2.5e-5, 2.5e-5, -np.finfo(dtype).tiny, np.finfo(dtype).tiny], dtype)])
    return values


def assert_like_torch(got, expected, rtol, what, atol=0.0):
    """NaN where PyTorch has NaN, the same infinities and signs of zero, every other element within rtol
    (and atol)."""
    got = np.asarray(got)
    assert got.dtype == expected.dtype, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN positions")
    zeros = expected == 0
    np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(expected[zeros]), err_msg=f"{what}: zero signs")
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)],
                                  err_msg=f"{what}: infinities")
    np.testing.assert_allclose(got[finite].astype(np.float64), expected[finite].astype(np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_pytorch_at_kinks_infinities_nan_and_in_a_sweep(case, dtype, be):
    """PyTorch's values at every special value (its conventions at the kinks: hardtanh's and relu6's
    gradient 0 at both bounds, hardsigmoid's 0 at +-3 and at NaN, hardswish's 0 at -3 and dy at 3,
    elu's alpha dy at 0 and -0.0; NaN passing the clamps and -0.0 kept; NaN for hardswish(-inf),
    mish(-inf) and mish's gradient at +-inf) and on a seeded sweep, each element within RTOL of
    PyTorch's in the same dtype (its float16: the CPU half kernels, FP32 math rounded once). Except:
    hardsigmoid's float64 gradient, which PyTorch computes with the float32 constant 1/6 (3e-8
    relative off): ours is the exact dy / 6."""
    rng = np.random.default_rng(11)
    x = np.concatenate([special_values(case, dtype), (rng.standard_normal(3000) * 4).astype(dtype)])
    dy = rng.uniform(0.5, 2.0, x.shape).astype(dtype) * rng.choice([-1, 1], x.shape).astype(dtype)
    y, dx = ours(case, x, dy, be)
    y_torch, dx_torch = theirs(case, x, dy)
    # the float32 kernels flush subnormal results to zero (-ftz=true)
    flushed = np.finfo(dtype).tiny if be != "numpy" and dtype == np.float32 else 0.0
    assert_like_torch(y, y_torch, RTOL[dtype], f"{case} forward", atol=flushed)
    if case == "hardsigmoid" and dtype == np.float64:
        assert_like_torch(dx, dx_torch, 1e-7, f"{case} backward (PyTorch's float32 1/6)")
        np.testing.assert_array_equal(dx, np.where((x > -3) & (x < 3), dy / 6, 0.0))
    else:   # mish's gradient relative to dy's scale: its two terms cancel around its zero at x = -1.19
        assert_like_torch(dx, dx_torch, RTOL[dtype], f"{case} backward",
                          atol=2 * RTOL[dtype] if case == "mish" else flushed)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("case", ["hardtanh", "relu6", "hardsigmoid", "hardswish"])
def test_gradient_is_zero_past_the_kinks_whatever_dy(case, be):
    """Where PyTorch's piecewise gradients are 0 they are an exact 0, also for an infinite or NaN dy (no
    0 * inf); between the kinks an infinite or NaN dy passes."""
    x = np.array([-7.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 7.0, 0.5, np.nan] * 2)
    dy = np.array([np.inf] * 10 + [np.nan] * 10)
    _, dx = ours(case, x, dy, be)
    assert_like_torch(dx, theirs(case, x, dy)[1], 0, case)


def _tail_references(v, alpha):
    """elu(v), its derivative, mish(v), its derivative and the sum of the magnitudes of that
    derivative's two terms (the scale of its rounding errors near its zero at -1.19), at float v in
    60-digit decimal arithmetic, small arguments by their series (no cancellation)."""
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, decimal.MAX_EMAX, decimal.MIN_EMIN
        x = decimal.Decimal(v)
        e = x.exp()
        expm1 = x + x * x / 2 + x ** 3 / 6 + x ** 4 / 24 if abs(x) < decimal.Decimal("1e-12") else e - 1
        softplus = e - e * e / 2 if e < decimal.Decimal("1e-25") else (1 + e).ln()
        tanh = softplus - softplus ** 3 / 3 if softplus < decimal.Decimal("1e-25") else (
            1 - 2 / ((2 * softplus).exp() + 1))
        sech_squared = 4 / (softplus.exp() + (-softplus).exp()) ** 2
        sigmoid = 1 / (1 + 1 / e)
        slope_term = x * sigmoid * sech_squared
        a = decimal.Decimal(alpha)
        return (x if x > 0 else a * expm1, 1 if x > 0 else a * e, x * tanh, tanh + slope_term,
                abs(tanh) + abs(slope_term))


@pytest.mark.parametrize("name", ["elu", "mish"])
def test_float64_oracle_in_both_tails_element_by_element(name):
    """The float64 NumPy oracle of elu (alpha 1.7) and mish and their gradients from |x| = 1e-8 to 800,
    each element within 1e-12 relative of 60-digit references wherever they are normal numbers: elu
    by expm1 (exp(x) - 1 loses all relative precision near 0), mish's tanh(softplus(x)) and 1 - tanh^2
    without overflow or cancellation (1 - tanh^2 as such is 0 past x = 19); mish's gradient relative to
    the magnitudes of its two terms (they cancel at its zero)."""
    x = np.concatenate([-np.geomspace(1e-8, 800, 300), np.geomspace(1e-8, 800, 300)])
    references = [_tail_references(v, 1.7) for v in x.tolist()]
    options = {"alpha": 1.7} if name == "elu" else {}
    got = (getattr(F, name)(x, **options), getattr(F, name + "_backward")(np.ones_like(x), x, **options))
    first = 0 if name == "elu" else 2
    for i in range(2):
        expected = np.array([float(r[first + i]) for r in references])
        scale = np.array([float(r[4]) for r in references]) if name == "mish" and i == 1 else np.abs(expected)
        normal = np.abs(expected) >= np.finfo(np.float64).tiny
        assert normal.sum() > 500 and (np.abs(got[i][~normal]) < np.finfo(np.float64).tiny).all()
        relative = np.abs(got[i][normal] - expected[normal]) / scale[normal]
        assert relative.max() <= 1e-12, f"{name} output {i}: x={x[normal][np.argmax(relative)]}"


# float16 elements (of 20000) where our FP32 formulas, rounded once, land one float16 ulp from PyTorch's CPU
# half: elu's gradient as dy (alpha exp(x)), not (dy alpha) exp(x); mish from exp(-|x|) alone, not PyTorch's
# tanh(log1p(exp(x))) and 1 - tanh^2
FLOAT16_ULPS_FROM_PYTORCH = {"elu": (0, 1), "elu(0.3)": (0, 1), "elu(-1.5)": (0, 1), "mish": (1, 1)}
# and the kernels' (emu, cuda), whose float16 builds take __expf and __fdividef (kernels/common.cuh: map_exp,
# map_divide; the emulator gives them their documented worst error): an element near a tie rounds the other
# way (tests/test_fast_math.py counts them), and mish's gradient at its zero (x = -1.19), where two terms of
# ~0.3 cancel to ~2e-5, in FP16's subnormal range, is 2 of its 2^-24 steps off
FLOAT16_KERNEL_ULPS_FROM_PYTORCH = {"elu": (1, 1), "elu(0.3)": (1, 1), "elu(-1.5)": (1, 1), "mish": (1, 2)}


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_float16_against_pytorchs_cpu_half(case, be):
    """float16 (FP32 math, each output rounded once) against PyTorch's CPU half, which rounds its FP32
    results once too: the same bits for hardtanh, relu6, hardsigmoid, hardswish and (NumPy's) elu forward, and
    at most FLOAT16_ULPS_FROM_PYTORCH (the kernels: FLOAT16_KERNEL_ULPS_FROM_PYTORCH) ulps elsewhere."""
    rng = np.random.default_rng(12)
    x = np.concatenate([special_values(case, np.float16), (rng.standard_normal(20000) * 4).astype(np.float16)])
    dy = rng.standard_normal(x.shape).astype(np.float16)
    bounds = FLOAT16_ULPS_FROM_PYTORCH if be == "numpy" else FLOAT16_KERNEL_ULPS_FROM_PYTORCH
    for got, expected, ulps in zip(ours(case, x, dy, be), theirs(case, x, dy), bounds.get(case, (0, 0))):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(got[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
        ulp = np.spacing(np.abs(expected[finite]).astype(np.float64)) * 2.0 ** (52 - 10)   # float16's (normal)
        off = np.abs(got[finite].astype(np.float64) - expected[finite]) / np.maximum(ulp, 2.0 ** -24)
        assert off.max() <= ulps, f"{case}: {off.max()} ulps at x={x[finite][np.argmax(off)]}"


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case's kernels on the emulator with guard zones (an access past any array faults) and the
    race check, in a random schedule, on sizes around the 1024 elements a block takes per round: the
    NumPy path's results (hardtanh, relu6, hardsigmoid and hardswish bit for bit, they round the same
    operations, but for float32's subnormal results, which the kernels flush to zero), NaN and the
    signs of zero included; the float16 builds' elu and mish (map_exp, map_divide: fast forms) within one
    float16 ulp of the NumPy path's FP32 math."""
    rng = np.random.default_rng(13)
    with emu.checking(guard=True, race=True, schedule="random", seed=3):
        for size in (1, 7, 1023, 1025, 2 * 1024 + 3):
            x = (rng.standard_normal(size) * 4).astype(dtype)
            x[::7] = np.resize(special_values("hardtanh", dtype), x[::7].size)
            dy = rng.standard_normal(size).astype(dtype)
            for case, (op, _, _, _) in CASES.items():
                for got, expected in zip(ours(case, x, dy, "emu"), ours(case, x, dy, "numpy")):
                    if op in ("hardtanh", "relu6", "hardsigmoid", "hardswish"):
                        subnormal = (np.abs(expected) < np.finfo(dtype).tiny) & (expected != 0) & (dtype == np.float32)
                        np.testing.assert_array_equal(got[subnormal], 0.0 * expected[subnormal], err_msg=case)
                        np.testing.assert_array_equal(got[~subnormal].view(np.uint8),
                                                      expected[~subnormal].view(np.uint8), err_msg=case)
                    elif dtype == np.float16:
                        assert_fp16_within_one_ulp(got, expected, f"{case} size {size}")
                    else:
                        assert_close(got, expected, dtype, f"{case} size {size}")
                        zeros = expected == 0
                        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(expected[zeros]))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3)])
def test_zero_dimensional_and_empty_inputs(shape, be, monkeypatch):
    """0-d and empty arrays give arrays of their shape and dtype, a 0-d one PyTorch's values, and
    nothing is launched for an empty one."""
    x = np.full(shape, -0.5, np.float32)
    if 0 in shape:   # backend.launch may be asked (an empty grid returns there); no kernel may run
        def kernel(*args, **kwargs):
            raise AssertionError("a kernel ran for an empty input")
        monkeypatch.setattr(backend, "kernel_function", lambda *args: kernel)
    for case in CASES:
        expected = (theirs(case, x.reshape(1), x.reshape(1)) if x.size else (np.empty(shape, np.float32),) * 2)
        for got, want in zip(ours(case, x, x, be), expected):
            assert isinstance(got, np.ndarray) and got.shape == shape and got.dtype == np.float32
            assert_close(got, want.reshape(shape), np.float32, case)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, be: F.hardtanh(x.astype(np.int64), backend=be), TypeError, "x must be float16, float32 or float64"),
    (lambda x, be: F.relu6_backward(x[:1], x, backend=be), ValueError, r"dy must have shape \(2, 3\)"),
    (lambda x, be: F.hardsigmoid_backward(x.astype(np.float32), x, backend=be), TypeError, "dy has dtype float32"),
    (lambda x, be: F.hardswish([1.0], backend=be), TypeError, "x must be a NumPy or CuPy array"),
    (lambda x, be: F.mish_backward(x, x.astype(np.float16), backend=be), TypeError,
     "dy has dtype float64 but x has dtype float16"),
    (lambda x, be: F.hardtanh(x, 2.0, 1.0, backend=be), ValueError, "min_val cannot be greater than max_val"),
    (lambda x, be: F.hardtanh_backward(x, x, 0.5, -0.5, backend=be), ValueError,
     "min_val cannot be greater than max_val"),
    (lambda x, be: F.hardtanh(x, "a", backend=be), TypeError, "min_val must be a real number"),
    (lambda x, be: F.hardtanh(x, -1.0, np.nan, backend=be), ValueError, "max_val must be finite"),
    (lambda x, be: F.elu(x, "1", backend=be), TypeError, "alpha must be a real number"),
    (lambda x, be: F.elu_backward(x, x, np.inf, backend=be), ValueError, "alpha must be finite"),
    (lambda x, be: F.elu(x, True, backend=be), TypeError, "alpha must be a real number"),
    (lambda x, be: F.relu6(x, 6.0, backend=be), TypeError, "positional argument"),
])
def test_bad_arguments_are_refused_before_any_launch(call, error, message, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError(f"launched {args[3]}")
    monkeypatch.setattr(backend, "launch", no_launch)
    for be in ("numpy", "emu"):
        with pytest.raises(error, match=message):
            call(np.ones((2, 3)), be)


def test_benchmark_models_know_the_layers():
    """A model with the six layers gets its shapes, its launches (kernels elementwise.cu holds; ReLU6
    runs hardtanh's) and a PyTorch mirror that computes what it does."""
    from cnn_gpu import nn
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=np.float64), nn.Hardtanh(-0.5, 2.0), nn.ReLU6(), nn.Hardsigmoid(),
                          nn.Hardswish(), nn.ELU(0.4), nn.Mish())
    x = np.random.default_rng(9).standard_normal((2, 2, 7, 6)) * 4
    shapes = [(type(leaf).__name__, shape_in, shape_out)
              for leaf, shape_in, shape_out, _ in leaf_layers(model, x.shape)]
    assert shapes == [("Conv2d", (2, 2, 7, 6), (2, 3, 5, 4))] + [(type(layer).__name__, (2, 3, 5, 4), (2, 3, 5, 4))
                                                                for layer in model[1:]]
    source = backend.kernel_source("elementwise")
    kernels = [kernel for layer in model[1:] for kernel, _ in _layer_passes(layer, 1, 1, 8)]
    assert kernels == [f"{name}_{direction}" for name in ("hardtanh", "hardtanh", "hardsigmoid", "hardswish", "elu",
                                                           "mish") for direction in ("forward", "backward")]
    assert all(f"\n{kernel}(" in source for kernel in kernels)
    mirror = torch_mirror(model, torch)
    assert [type(m).__name__ for m in mirror] == [type(m).__name__ for m in model]
    with torch.no_grad():
        np.testing.assert_allclose(mirror(torch.tensor(x)).numpy(), model(x), rtol=1e-12)


@needs_emu
def test_benchmark_models_price_a_batch_norm_running_the_activation_after_it():
    """In MobileNet's and EfficientNet's Conv-BN-activation blocks nn.Sequential runs the ReLU6,
    Hardswish or SiLU inside the batch norm: the step model lists that batch norm as
    WithActivation(layer, name) and prices its kernels' launches alone, which are exactly the
    launches an emulated forward and backward of the pair make (none of the activation's)."""
    from cnn_gpu import nn
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import WithActivation, leaf_layers
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64),
                          nn.ReLU6(), nn.BatchNorm2d(3, dtype=np.float64), nn.Hardswish(),
                          nn.BatchNorm2d(3, dtype=np.float64), nn.SiLU())
    x = np.random.default_rng(10).standard_normal((2, 2, 7, 6))
    leaves = [leaf for leaf, *_ in leaf_layers(model, x.shape)]
    assert leaves[1:] == [WithActivation(model[1], "relu6"), WithActivation(model[3], "hardswish"),
                          WithActivation(model[5], "silu")]
    model.to("emu")
    for pair, name in ((nn.Sequential(model[1], model[2]), "relu6"), (nn.Sequential(model[3], model[4]), "hardswish"),
                       (nn.Sequential(model[5], model[6]), "silu")):
        launched = []
        real_launch = backend.launch
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(backend, "launch", lambda *args, **kw: launched.append(args[3]) or real_launch(*args, **kw))
            pair.backward(pair(np.random.default_rng(11).standard_normal((2, 3, 5, 4))))
        assert launched == [kernel for kernel, _ in _layer_passes(WithActivation(pair[0], name), 1, 1, 8)], name
