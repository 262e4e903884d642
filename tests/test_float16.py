"""float16: FP16 storage, FP32 math, every output rounded to FP16 once.

- The NumPy oracle against float64 rounded once: exactly where FP32 computes the exact result
  (inputs on a coarse grid, k/64, make every sum and product exact in FP32), within one float16
  ulp where FP32 itself rounds (transcendentals, divisions).
- The software FP32 <-> FP16 conversions of the emulator against NumPy's, on every float16 value
  and every tie between two of them (round to nearest even, subnormals, overflow).
- The float16 builds compile with NVRTC (sm_70, sm_90) without spills.
- Each kernel converted to float16 on "emu" against the oracle, under forward, reverse and random
  schedules with guard zones: within two float16 ulps of the output (one rounding each, near a
  tie) plus the FP32 rounding of the terms (2^-20 of the largest output).
- Optimizer master weights: a float16 parameter follows an FP32 run exactly (numpy) or within one
  float16 ulp (emu), state_dict round-trips, a replaced parameter array resyncs its master.
- Errors: dtype mixing is refused.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, emu, launch_checks, nn, nvrtc, optim
from cnn_gpu import functional as F
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv as gpu_conv
from cnn_gpu.nn.module import Parameter

F16, F32, F64 = np.float16, np.float32, np.float64
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


def grid_values(rng, shape, scale=127):
    """Random multiples of 1/64 in (-2, 2), never all zero: float16 holds them exactly, and sums
    of a few hundred of their products are exact in FP32."""
    return (rng.integers(-scale, scale + 1, size=shape) / 64).astype(F16)


def normal(rng, shape, sigma=1.0):
    return (rng.standard_normal(shape) * sigma).astype(F16)


def ulp16(values):
    """The float16 ulp at each value (2^-24 below the normal range)."""
    return np.spacing(np.abs(np.asarray(values, dtype=F64).astype(F16))).astype(F64)


def assert_rounded_once(got, exact, ulps=0, what=""):
    """got is float16 and equals `exact` (float64) rounded once (ulps=0), or lies within `ulps`
    float16 ulps of it."""
    assert got.dtype == F16, f"{what}: dtype {got.dtype}"
    exact = np.asarray(exact, dtype=F64)
    if ulps == 0:
        np.testing.assert_array_equal(got, exact.astype(F16), err_msg=what)
        return
    error = np.abs(got.astype(F64) - exact)
    worst = float(np.max(error / ulp16(exact), initial=0.0))
    assert worst <= ulps, f"{what}: {worst:.2f} float16 ulps from the float64 result"


def assert_fp16_close(got, expected, what=""):
    """Kernel (FP32 math, own order) against the oracle (FP32 math, NumPy's order): two float16 ulps
    plus 2^-20 of the largest output; NaNs and infinities at the same places."""
    assert got.dtype == F16 and got.shape == expected.shape, f"{what}: {got.dtype} {got.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[~finite], expected[~finite], err_msg=what)
    got, expected = got[finite].astype(F64), expected[finite].astype(F64)
    allowed = 2 * ulp16(expected) + 2.0**-20 * float(np.abs(expected).max(initial=0.0))
    excess = np.abs(got - expected) - allowed
    assert float(excess.max(initial=-1.0)) <= 0, f"{what}: off by {np.abs(got - expected).max():.3g}"


def as64(*arrays):
    return tuple(None if a is None else a.astype(F64) for a in arrays)


# --- the NumPy oracle against float64 rounded once -----------------------------------------------

CONV = dict(stride=2, padding=1, dilation=1, groups=2)
TRANSPOSED = dict(stride=2, padding=1, output_padding=1, groups=2)
POOL = dict(kernel_size=2, stride=1, padding=1)


def _exact_cases(rng):
    """(name, op taking arrays, inputs) whose FP32 computation is exact on grid values."""
    x, w, b = grid_values(rng, (2, 4, 7, 6)), grid_values(rng, (6, 2, 3, 3)), grid_values(rng, (6,))
    xt, wt = grid_values(rng, (2, 4, 5, 4)), grid_values(rng, (4, 3, 3, 3))
    dy = grid_values(rng, F.conv2d(x, w, **CONV).shape)
    dyt = grid_values(rng, F.conv_transpose2d(xt, wt, **TRANSPOSED).shape)
    a, lw, lb = grid_values(rng, (5, 9)), grid_values(rng, (3, 9)), grid_values(rng, (3,))
    pooled = F.avg_pool2d(x, **POOL).shape
    _, indices = F.max_pool2d(x, 3, 1, 1)
    return [
        ("conv2d", lambda x, w, b: F.conv2d(x, w, b, **CONV), (x, w, b)),
        ("conv2d_backward", lambda dy, x, w: F.conv2d_backward(dy, x, w, **CONV), (dy, x, w)),
        ("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b, **TRANSPOSED), (xt, wt, b[:6])),
        ("conv_transpose2d_backward", lambda dy, x, w: F.conv_transpose2d_backward(dy, x, w, **TRANSPOSED),
         (dyt, xt, wt)),
        ("linear", F.linear, (a, lw, lb)),
        ("linear_backward", F.linear_backward, (grid_values(rng, (5, 3)), a, lw)),
        ("max_pool2d", lambda x: F.max_pool2d(x, 3, 1, 1), (x,)),
        ("max_pool2d_backward (overlapping windows)",
         lambda dy: F.max_pool2d_backward(dy, indices, x.shape, 3, 1, 1), (grid_values(rng, indices.shape),)),
        ("avg_pool2d", lambda x: F.avg_pool2d(x, **POOL), (x,)),
        ("avg_pool2d_backward", lambda dy: F.avg_pool2d_backward(dy, x.shape, **POOL), (grid_values(rng, pooled),)),
        ("relu", F.relu, (x,)),
        ("relu_backward", F.relu_backward, (dy[:, :4, :4, :3], x[:, :, :4, :3])),
        ("leaky_relu", lambda x: F.leaky_relu(x, 0.25), (x,)),
        ("leaky_relu_backward", lambda dy, x: F.leaky_relu_backward(dy, x, 0.25), (x[::-1], x)),
        ("mse_loss gradient", lambda p, t: F.mse_loss(p, t)[1], (a, a[::-1])),
        ("mse_loss none", lambda p, t: F.mse_loss(p, t, "none"), (a, a[::-1])),
        ("dropout p=0.5", lambda x: F.dropout(x, 0.5, seed=3, step=1), (x,)),
    ]


@pytest.mark.parametrize("index", range(17))
def test_numpy_oracle_rounds_the_exact_result_once(index):
    """Where FP32 computes exactly, the float16 result is the float64 result rounded once (no
    double rounding, no float16 accumulation)."""
    name, op, inputs = _exact_cases(np.random.default_rng(index))[index]
    got, exact = op(*inputs), op(*as64(*inputs))
    got, exact = (got, exact) if isinstance(got, tuple) else ((got,), (exact,))
    for i, (g, e) in enumerate(zip(got, exact)):
        if g is not None and g.dtype.kind == "i":   # max_pool2d's indices: the float64 run's
            np.testing.assert_array_equal(g, e, err_msg=f"{name} indices")
        elif g is not None:
            assert_rounded_once(g, e, what=f"{name} output {i}")


def test_numpy_oracle_within_one_ulp_where_fp32_rounds():
    """Transcendentals, divisions and normalisation: FP32 errors far below a float16 ulp, so at
    most one float16 ulp from the float64 result."""
    rng = np.random.default_rng(20)
    x, dy = normal(rng, (4, 3, 5, 5), 3.0), normal(rng, (4, 3, 5, 5))
    for name, options in (("sigmoid", {}), ("tanh", {}), ("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
                          ("hardsigmoid", {}), ("hardswish", {}), ("elu", {"alpha": 0.7}), ("mish", {})):
        what = f"{name} {options}"
        assert_rounded_once(getattr(F, name)(x, **options), getattr(F, name)(x.astype(F64), **options), 1, what)
        backward = getattr(F, f"{name}_backward")
        assert_rounded_once(backward(dy, x, **options), backward(*as64(dy, x), **options), 1, f"{what} backward")
    assert_rounded_once(F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                        F.avg_pool2d(x.astype(F64), 3, 2, 1, count_include_pad=False), 1, "avg_pool2d / 9")
    assert_rounded_once(F.adaptive_avg_pool2d(x, 3), F.adaptive_avg_pool2d(x.astype(F64), 3), 1, "adaptive_avg_pool2d")
    for mode in ("nearest", "nearest-exact", "bilinear", "area"):
        assert_rounded_once(F.interpolate(x, scale_factor=1.5, mode=mode),
                            F.interpolate(x.astype(F64), scale_factor=1.5, mode=mode), 1, f"interpolate {mode}")
        assert_rounded_once(F.interpolate_backward(dy, (4, 3, 9, 9), size=5, mode=mode),
                            F.interpolate_backward(dy.astype(F64), (4, 3, 9, 9), size=5, mode=mode), 1,
                            f"interpolate_backward {mode}")
    # bicubic's negative tap weights cancel: an output 2500 times smaller than its taps (x of scale 3,
    # an output of 0.0012) keeps FP32's error of the taps, 1.6 float16 ulps there, as PyTorch's FP32 math
    # does: the float32 op's result rounded once, bit for bit
    np.testing.assert_array_equal(F.interpolate(x, scale_factor=1.5, mode="bicubic"),
                                  F.interpolate(x.astype(F32), scale_factor=1.5, mode="bicubic").astype(F16))
    np.testing.assert_array_equal(F.interpolate_backward(dy, (4, 3, 9, 9), size=5, mode="bicubic"),
                                  F.interpolate_backward(dy.astype(F32), (4, 3, 9, 9), size=5,
                                                         mode="bicubic").astype(F16))
    logits, labels = normal(rng, (6, 5, 3), 2.0), rng.integers(0, 5, (6, 3))
    weight = rng.uniform(0.5, 2.0, 5).astype(F16)
    loss, grad = F.cross_entropy(logits, labels, weight, label_smoothing=0.1)
    loss64, grad64 = F.cross_entropy(*as64(logits), labels, weight.astype(F64), label_smoothing=0.1)
    assert_rounded_once(grad, grad64, 1, "cross_entropy dlogits")
    assert isinstance(loss, float) and loss == pytest.approx(loss64, rel=1e-6)
    mean, var = normal(rng, (3,)), rng.uniform(0.5, 2.0, 3).astype(F16)
    y = F.batch_norm(x, mean, var, training=False)
    assert_rounded_once(y, F.batch_norm(*as64(x, mean, var), training=False), 1, "batch_norm eval")


def test_losses_are_fp32_values_and_gradients_float16():
    """A float16 loss is the float32 op's loss on the same values (not rounded to float16)."""
    rng = np.random.default_rng(21)
    logits, labels = normal(rng, (8, 7), 2.0), rng.integers(0, 7, 8)
    loss, grad = F.cross_entropy(logits, labels)
    assert type(loss) is float and grad.dtype == F16
    assert loss == F.cross_entropy(logits.astype(F32), labels)[0]
    assert loss != float(np.float16(loss))   # kept in FP32: float16 would drop these bits
    pred, target = normal(rng, (5, 6)), normal(rng, (5, 6))
    for reduction in ("mean", "sum"):
        loss, grad = F.mse_loss(pred, target, reduction)
        assert type(loss) is float and grad.dtype == F16
        assert loss == F.mse_loss(pred.astype(F32), target.astype(F32), reduction)[0]
    assert F.mse_loss(pred, target, "none")[0].dtype == F16


def test_batch_norm_updates_float16_running_statistics():
    rng = np.random.default_rng(22)
    x = normal(rng, (4, 3, 5, 5))
    mean, var = np.zeros(3, F16), np.ones(3, F16)
    mean32, var32 = mean.astype(F32), var.astype(F32)
    y = F.batch_norm(x, mean, var, training=True, momentum=0.5)
    y32 = F.batch_norm(x.astype(F32), mean32, var32, training=True, momentum=0.5)
    np.testing.assert_array_equal(y, y32.astype(F16))
    np.testing.assert_array_equal(mean, mean32.astype(F16))
    np.testing.assert_array_equal(var, var32.astype(F16))
    assert not np.array_equal(mean, np.zeros(3, F16))


# --- the emulator's conversions ----------------------------------------------------------------

ROUND_TRIP = r"""
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
round_trip(const float* __restrict__ x, half_bits* __restrict__ h, float* __restrict__ back, long long n)
{
    GRID_STRIDE_LOOP(i, n) {
        h[i] = to_real(x[i]);
        back[i] = to_acc(h[i]);
    }
}
"""


def _conversion_inputs():
    """Every float16 value, every midpoint between neighbours (the ties), the float32 values just
    either side of each midpoint, and the edges: overflow, the smallest subnormal's half, NaN."""
    every = np.arange(2**16, dtype=np.uint16).view(F16)
    finite = np.sort(np.unique(every[np.isfinite(every)].astype(F64)))
    midpoints = ((finite[:-1] + finite[1:]) / 2).astype(F32)     # exact in FP32
    above = np.nextafter(midpoints, np.float32(np.inf))
    below = np.nextafter(midpoints, np.float32(-np.inf))
    edges = np.array([65504, 65519.996, 65520, 65536, 3.0e38, 2.0**-25, np.nextafter(F32(2.0**-25), F32(1)),
                      1e-45, -1e-45, 0.0, -0.0, np.inf, -np.inf, np.nan], dtype=F32)
    return np.concatenate([every.astype(F32), midpoints, above, below, edges])


@needs_emu
def test_emulator_float16_conversions_match_numpy():
    """to_real rounds FP32 to FP16 as NumPy does (nearest even, subnormals, overflow to inf) and
    to_acc widens exactly: bit for bit on all 65536 values and every tie."""
    source = (backend.kernel_dir() / "common.cuh").read_text() + ROUND_TRIP
    kernel = emu.RawModule(code=source, options=backend.dtype_options(F16)).get_function("round_trip")
    x = _conversion_inputs()
    h, back = np.empty(x.shape, F16), np.empty(x.shape, F32)
    kernel((256,), (256,), (x, h, back, np.int64(x.size)))
    with np.errstate(over="ignore"):
        expected = x.astype(F16)
    nan = np.isnan(x)
    assert np.isnan(h[nan]).all() and np.isnan(back[nan]).all()
    np.testing.assert_array_equal(h[~nan].view(np.uint16), expected[~nan].view(np.uint16))
    np.testing.assert_array_equal(back[~nan].view(np.uint32), expected[~nan].astype(F32).view(np.uint32))


# --- the float16 kernels on the emulator against the oracle ---------------------------------------

@pytest.mark.skipif(bool(nvrtc.why_unavailable()), reason=f"NVRTC unavailable: {nvrtc.why_unavailable()}")
@pytest.mark.parametrize("family, arch", [
    (family, arch if backend.has_build(family, "float16", arch) else "sm_80")   # the oldest arch each is built for
    for family in backend.FLOAT16_FAMILIES for arch in ("sm_70", "sm_90")])
def test_float16_builds_compile_without_spills(family, arch):
    if reason := nvrtc.why_arch_unsupported(arch):   # CUDA 13's NVRTC has no sm_70
        pytest.skip(reason)
    from cnn_gpu.gpu import conv_tc
    reports = nvrtc.file_report(backend.kernel_dir() / f"{family}.cu", "float16", arch)
    float32_only = set(conv_tc.FLOAT32_ONLY_KERNELS if family == "conv2d_tc" else ())
    assert {r.name for r in reports} == set(launch_checks.parse_signatures(backend.kernel_source(family))) - float32_only
    for r in reports:
        assert r.spill_bytes == 0 and r.max_threads is not None, f"{family}:{r.name} {arch}: {r}"


SCHEDULES = [dict(schedule="forward"), dict(schedule="reverse"), dict(schedule="random", seed=5)]


def _on_both(op, *args, **kwargs):
    """(emu result, numpy result) of one op."""
    return op(*args, backend="emu", **kwargs), op(*args, backend="numpy", **kwargs)


def _compare(pair, what):
    got, expected = pair
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    for i, (g, e) in enumerate(zip(got, expected)):
        if isinstance(e, float):
            assert g == pytest.approx(e, rel=1e-5, nan_ok=True), f"{what} loss"
        elif e is not None and e.dtype == np.int32:
            np.testing.assert_array_equal(g, e, err_msg=f"{what} indices")
        elif e is not None and e.dtype == F32:   # statistics kept in FP32 (batch_norm's return_stats)
            assert g.dtype == F32, f"{what} output {i}: {g.dtype}"
            np.testing.assert_allclose(g, e, rtol=2e-6, err_msg=f"{what} output {i}")
        elif e is not None:
            assert_fp16_close(g, e, f"{what} output {i}")


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_elementwise_kernels(settings):
    rng = np.random.default_rng(30)
    x, dy = normal(rng, (3, 5, 17), 4.0), normal(rng, (3, 5, 17))
    x.flat[:4] = [0, -0.0, np.inf, -np.inf]
    with emu.checking(guard=True, **settings):
        for name, options in (("relu", {}), ("leaky_relu", {}), ("sigmoid", {}), ("tanh", {}), ("silu", {}),
                              ("gelu", {}), ("gelu", {"approximate": "tanh"}), ("hardtanh", {"max_val": 0.1}),
                              ("relu6", {}), ("hardsigmoid", {}), ("hardswish", {}), ("elu", {"alpha": 0.7}),
                              ("mish", {})):
            _compare(_on_both(getattr(F, name), x, **options), f"{name} {options}")
            _compare(_on_both(getattr(F, f"{name}_backward"), dy, x, **options), f"{name} {options} backward")
        _compare(_on_both(F.linear, x[2], normal(rng, (4, 17)), normal(rng, (4,))), "linear")
        _compare(_on_both(F.linear_backward, dy[2, :, :4], x[2], normal(rng, (4, 17))), "linear_backward")


POOLS = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True),
         dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))]


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_pool_kernels(settings):
    rng = np.random.default_rng(31)
    x = normal(rng, (2, 3, 9, 8))
    x[0, 0, 2, 2] = np.nan
    with emu.checking(guard=True, **settings):
        for geometry in POOLS:
            y, indices = F.max_pool2d(x, **geometry)
            _compare(_on_both(F.max_pool2d, x, **geometry), f"max_pool2d {geometry}")
            dy = normal(rng, y.shape)
            _compare(_on_both(F.max_pool2d_backward, dy, indices, x.shape, **geometry), f"max_pool2d_backward {geometry}")
            if "dilation" in geometry:
                continue
            for options in (dict(), dict(count_include_pad=False), dict(divisor_override=3)):
                _compare(_on_both(F.avg_pool2d, x, **geometry, **options), f"avg_pool2d {geometry} {options}")
                _compare(_on_both(F.avg_pool2d_backward, dy, x.shape, **geometry, **options),
                         f"avg_pool2d_backward {geometry} {options}")


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_loss_kernels(settings):
    rng = np.random.default_rng(32)
    with emu.checking(guard=True, **settings):
        for shape in ((6, 10), (3, 40), (2, 5, 3, 4)):   # rows kernel (two block sizes), positions kernel
            logits = normal(rng, shape, 3.0)
            labels = rng.integers(0, shape[1], shape[:1] + shape[2:])
            labels.flat[0] = -100
            weight = rng.uniform(0.5, 2.0, shape[1]).astype(F16)
            probabilities = rng.dirichlet(np.ones(shape[1]), shape[:1] + shape[2:])
            probabilities = np.moveaxis(probabilities, -1, 1).astype(F16)
            for options in (dict(), dict(weight=weight, label_smoothing=0.2), dict(reduction="sum"),
                            dict(reduction="none")):
                _compare(_on_both(F.cross_entropy, logits, labels, **options), f"cross_entropy {shape} {options}")
            _compare(_on_both(F.cross_entropy, logits, probabilities), f"cross_entropy probabilities {shape}")
        pred, target = normal(rng, (7, 9)), normal(rng, (7, 9))
        for reduction in ("mean", "sum", "none"):
            _compare(_on_both(F.mse_loss, pred, target, reduction), f"mse_loss {reduction}")


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_depthwise_conv_kernels(settings):
    """conv2d_depthwise.cu's float16 build through its launchers."""
    rng = np.random.default_rng(34)
    x, w, b = normal(rng, (2, 4, 7, 6)), normal(rng, (8, 1, 3, 3)), normal(rng, (8,))
    options = dict(stride=2, padding=1, dilation=(1, 2), groups=4)
    g = conv_geometry(x.shape, w.shape, **options)
    y = F.conv2d(x, w, b, **options)
    dy = normal(rng, y.shape)
    dx, dw, _ = F.conv2d_backward(dy, x, w, **options)
    with emu.checking(guard=True, **settings):
        assert_fp16_close(gpu_conv.fprop("emu", x, w, b, g), y, "depthwise fprop")
        assert_fp16_close(gpu_conv.dgrad("emu", dy, w, g), dx, "depthwise dgrad")
        assert_fp16_close(gpu_conv.wgrad("emu", dy, x, g), dw, "depthwise wgrad")


BATCH_NORMS = [((4, 3, 5, 7), dict(training=True, momentum=0.3)),
               ((2, 2, 17, 19), dict(training=True, activation="relu")),     # a channel beyond one block
               ((6, 4, 1, 1), dict(training=False, activation="relu")),
               ((3, 4, 6, 5), dict(training=True, activation="silu")),
               ((5, 3, 4, 4), dict(training=True, activation="hardswish")),
               ((6, 4, 2, 1), dict(training=False, activation="relu6")),
               ((3, 5, 4, 3), dict(training=True, affine=False, running=False)),
               ((4, 2, 43, 41), dict(training=True))]   # 2 chunks a channel, a partial round after a full one


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_batch_norm_kernels(settings):
    """FP32 statistics and normalisation, float16 outputs, gradients and running statistics: the
    forward (train and eval, fused ReLU, SiLU, Hardswish, ReLU6; return_stats' statistics in FP32, as the backward takes
    them), the running-statistics blend and the backward with saved (FP32, and rounded to float16)
    and with recomputed statistics, against the oracle."""
    rng = np.random.default_rng(35)
    with emu.checking(guard=True, **settings):
        for shape, options in BATCH_NORMS:
            options = dict(options)
            affine, running = options.pop("affine", True), options.pop("running", True)
            channels = shape[1]
            x, dy = normal(rng, shape, 2.0) + F16(1), normal(rng, shape)
            weight, bias = (normal(rng, (channels,)), normal(rng, (channels,))) if affine else (None, None)
            stats = ((normal(rng, (channels,)), rng.uniform(0.5, 2.0, channels).astype(F16)) if running
                     else (None, None))
            updated = {be: tuple(None if s is None else s.copy() for s in stats) for be in ("emu", "numpy")}
            got, expected = (F.batch_norm(x, *updated[be], weight, bias, return_stats=True, backend=be, **options)
                             for be in ("emu", "numpy"))
            what = f"batch_norm {shape} {options}"
            _compare((got, expected), what)
            if running:
                _compare((updated["emu"], updated["numpy"]), f"{what} running statistics")
            training, relu = options["training"], options.get("activation")
            _, mean, invstd = expected
            assert mean.dtype == invstd.dtype == F32
            for saved in ((mean, invstd), (mean.astype(F16), invstd.astype(F16))):
                _compare(_on_both(F.batch_norm_backward, dy, x, *stats, weight, bias, training, activation=relu,
                                  save_mean=saved[0], save_invstd=saved[1]), f"{what} backward, saved statistics")
            _compare(_on_both(F.batch_norm_backward, dy, x, *stats, weight, bias, training, activation=relu),
                     f"{what} backward")


@needs_emu
def test_dropout_kernels_draw_the_float32_mask():
    """Forward and backward against the oracle, under every schedule; for the same seed and step
    a float16 array loses exactly the elements a float32 one does."""
    rng = np.random.default_rng(36)
    x, dy = normal(rng, (3, 5, 67), 3.0), normal(rng, (3, 5, 67))
    for settings in SCHEDULES:
        with emu.checking(guard=True, **settings):
            for p in (0.1, 0.5, 1.0):
                _compare(_on_both(F.dropout, x, p, seed=2**40 + 7, step=3), f"dropout p={p}")
                _compare(_on_both(F.dropout_backward, dy, p, 2**40 + 7, 3), f"dropout_backward p={p}")
    half = F.dropout(x, 0.5, seed=11, step=4, backend="emu")
    single = F.dropout(x.astype(F32), 0.5, seed=11, step=4, backend="emu")
    np.testing.assert_array_equal(half == 0, single == 0)
    assert 0 < np.count_nonzero(half == 0) < x.size


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_adaptive_pool_kernels(settings):
    rng = np.random.default_rng(37)
    x = normal(rng, (2, 3, 9, 7), 3.0)
    with emu.checking(guard=True, **settings):
        for out in ((1, 1), (4, 3), (9, 7), (12, 10)):   # global, shrinking, identity, overlapping windows
            _compare(_on_both(F.adaptive_avg_pool2d, x, out), f"adaptive_avg_pool2d {out}")
            dy = normal(rng, (2, 3) + out)
            _compare(_on_both(F.adaptive_avg_pool2d_backward, dy, x.shape), f"adaptive_avg_pool2d_backward {out}")


@needs_emu
@pytest.mark.parametrize("settings", SCHEDULES, ids=lambda s: s["schedule"])
def test_upsample_kernels(settings):
    rng = np.random.default_rng(40)
    x = normal(rng, (2, 3, 9, 7), 3.0)
    with emu.checking(guard=True, **settings):
        for upsample in (dict(scale_factor=2.5), dict(size=(4, 14)), dict(size=(13, 5), mode="bilinear"),
                         dict(scale_factor=(0.5, 1.7), mode="bilinear", align_corners=True),
                         dict(size=(13, 5), mode="bicubic"), dict(scale_factor=(0.6, 1.7), mode="bicubic",
                                                                  align_corners=True),
                         dict(scale_factor=(1.6, 0.7), mode="nearest-exact"), dict(size=(4, 5), mode="area")):
            y = _on_both(F.interpolate, x, **upsample)
            _compare(y, f"interpolate {upsample}")
            dy = normal(rng, y[0].shape)
            _compare(_on_both(F.interpolate_backward, dy, x.shape, **upsample), f"interpolate_backward {upsample}")


@pytest.mark.torch
@needs_emu
def test_upsample_kernels_match_pytorch_half():
    """PyTorch CPU float16 computes in FP32 too: the nearest modes' forward the same bits, the rest
    within assert_fp16_close's tolerance. But for its bicubic forward pass and area's backward
    (adaptive average pooling's), which land up to an ulp off its own FP32 result rounded once
    (seen here): ours is compared with that."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(41)
    x = normal(rng, (2, 3, 7, 6), 2.0)
    off_an_ulp = {"bicubic": "forward", "area": "backward"}
    for upsample in (dict(scale_factor=2.5), dict(size=(5, 13), mode="bilinear"),
                     dict(scale_factor=(0.6, 2.0), mode="bilinear", align_corners=True),
                     dict(scale_factor=(1.6, 0.7), mode="nearest-exact"), dict(size=(9, 4), mode="bicubic"),
                     dict(scale_factor=(0.6, 2.2), mode="bicubic", align_corners=True), dict(size=(3, 4), mode="area")):
        results = []
        for dtype in (torch.float16, torch.float32):
            tx = torch.tensor(x, dtype=dtype, requires_grad=True)
            ty = torch.nn.functional.interpolate(tx, **upsample)
            dy = normal(np.random.default_rng(42), tuple(ty.shape))
            ty.backward(torch.tensor(dy, dtype=dtype))
            results.append({"forward": ty.detach().half().numpy(), "backward": tx.grad.half().numpy()})
        half, rounded_once = results
        odd_pass = off_an_ulp.get(upsample.get("mode"))
        if odd_pass:
            assert np.abs(half[odd_pass].astype(F64) - rounded_once[odd_pass]).max() > 0, upsample
            half[odd_pass] = rounded_once[odd_pass]
        y = F.interpolate(x, **upsample, backend="emu")
        if upsample.get("mode", "nearest").startswith("nearest"):
            assert y.tobytes() == half["forward"].tobytes(), upsample
        assert_fp16_close(y, half["forward"], f"interpolate {upsample}")
        assert_fp16_close(F.interpolate_backward(dy, x.shape, **upsample, backend="emu"), half["backward"],
                          f"interpolate_backward {upsample}")


@needs_emu
def test_batch_norm_dropout_adaptive_pool_upsample_kernels_are_race_free():
    """Neighbouring float16 elements written by different threads share 4-byte words: the race
    check (exact to the byte) finds no unordered accesses in any of these kernels."""
    rng = np.random.default_rng(39)
    x, dy = normal(rng, (2, 3, 9, 7)), normal(rng, (2, 3, 9, 7))
    weight, bias, mean, var = normal(rng, (3,)), normal(rng, (3,)), np.zeros(3, F16), np.ones(3, F16)
    with emu.checking(race=True, schedule="random", seed=6):
        _, saved_mean, saved_invstd = F.batch_norm(x, mean, var, weight, bias, True, return_stats=True, backend="emu")
        F.batch_norm_backward(dy, x, None, None, weight, bias, True, save_mean=saved_mean, save_invstd=saved_invstd,
                              backend="emu")
        F.batch_norm(x, mean, var, weight, bias, False, activation="relu", backend="emu")
        F.dropout_backward(F.dropout(x, 0.3, seed=1, backend="emu"), 0.3, 1, backend="emu")
        F.adaptive_avg_pool2d_backward(F.adaptive_avg_pool2d(x, (4, 3), backend="emu"), x.shape, backend="emu")
        for mode in ("nearest", "nearest-exact", "bilinear", "bicubic"):
            F.interpolate_backward(F.interpolate(x, scale_factor=1.5, mode=mode, backend="emu"), x.shape,
                                   scale_factor=1.5, mode=mode, backend="emu")


@pytest.mark.torch
@needs_emu
def test_batch_norm_and_adaptive_pool_kernels_match_pytorch_half():
    """The emulated float16 kernels against PyTorch CPU float16, which also computes in FP32:
    adaptive average pooling within assert_fp16_close's tolerance; batch norm in training mode
    with float16 running buffers (outputs, gradients, running statistics) within one more float16
    ulp of the largest output, since PyTorch's CPU kernel normalises with its mean and invstd
    rounded to float16 (relative errors of 2^-11 each), where ours keeps them in FP32."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(38)
    x, dy = normal(rng, (4, 3, 6, 5), 2.0), normal(rng, (4, 3, 6, 5))
    weight, bias = normal(rng, (3,)), normal(rng, (3,))
    mean, var = normal(rng, (3,)), rng.uniform(0.5, 2.0, 3).astype(F16)
    t = {k: torch.tensor(v, requires_grad=k in ("x", "w", "b")) for k, v in
         dict(x=x, w=weight, b=bias, m=mean.copy(), v=var.copy()).items()}
    ours = F.batch_norm(x, mean, var, weight, bias, True, 0.2, return_stats=True, backend="emu")
    grads = F.batch_norm_backward(dy, x, None, None, weight, bias, True, save_mean=ours[1], save_invstd=ours[2],
                                  backend="emu")
    y = torch.nn.functional.batch_norm(t["x"], t["m"], t["v"], t["w"], t["b"], True, 0.2)
    y.backward(torch.tensor(dy))
    theirs = (y, t["x"].grad, t["w"].grad, t["b"].grad, t["m"], t["v"])
    for name, got, want in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"),
                               (ours[0], *grads, mean, var), theirs):
        want = want.detach().numpy().astype(F64)
        allowed = 2 * ulp16(want) + 2.0**-10 * np.abs(want).max()
        assert got.dtype == F16 and np.all(np.abs(got - want) <= allowed), f"batch_norm {name}"
    # overlapping windows forward; disjoint ones backward, where PyTorch's CPU kernel rounds each
    # share dy / area to float16 before adding the shares of overlapping windows
    tx = torch.tensor(x)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, (4, 2))
    assert_fp16_close(F.adaptive_avg_pool2d(x, (4, 2), backend="emu"), ty.numpy(), "adaptive_avg_pool2d")
    tx.requires_grad_(True)
    torch.nn.functional.adaptive_avg_pool2d(tx, (3, 1)).backward(torch.tensor(dy[:, :, :3, :1]))
    assert_fp16_close(F.adaptive_avg_pool2d_backward(dy[:, :, :3, :1], x.shape, backend="emu"), tx.grad.numpy(),
                      "adaptive_avg_pool2d_backward")


# --- optimizers: FP32 master weights -------------------------------------------------------------

OPTIMIZERS = [("SGD", dict(lr=1e-3)), ("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.01)),
              ("Adam", dict(lr=1e-4, weight_decay=0.01))]


def _train(kind, config, params, grads):
    optimizer = getattr(optim, kind)(params, **config)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.astype(p.data.dtype)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("kind, config", OPTIMIZERS, ids=["sgd", "sgd_nesterov_decay", "adam_decay"])
def test_float16_parameters_track_an_fp32_run(be, kind, config):
    """Updates far below a float16 ulp (lr 1e-3 on values near 1) accumulate in the FP32 master:
    the float16 parameter stays the FP32 run rounded (exactly on numpy, one ulp on emu), where a
    plain float16 update would lose them."""
    rng = np.random.default_rng(40)
    start = [normal(rng, (40,)), normal(rng, (3, 7))]
    grads = [[normal(rng, p.shape) for p in start] for _ in range(12)]
    half = [Parameter(p.copy(), backend=be) for p in start]
    full = [Parameter(p.astype(F32)) for p in start]
    _train(kind, config, half, grads)
    _train(kind, config, full, grads)
    for h, f, p0 in zip(half, full, start):
        assert h.data.dtype == F16
        assert_rounded_once(h.data, f.data, 0 if be == "numpy" else 1, f"{kind} on {be}")
        assert not np.array_equal(h.data, p0)


def test_master_weights_round_trip_state_dict_and_resync():
    rng = np.random.default_rng(41)
    start = normal(rng, (50,))
    grads = [[normal(rng, (50,))] for _ in range(6)]
    whole = [Parameter(start.copy())]
    _train("Adam", dict(lr=1e-3), whole, grads)
    first = [Parameter(start.copy())]
    saved = _train("Adam", dict(lr=1e-3), first, grads[:3]).state_dict()
    assert {k: saved["state"][0][k].dtype for k in ("master", "exp_avg", "exp_avg_sq")} == dict.fromkeys(
        ("master", "exp_avg", "exp_avg_sq"), np.dtype(F32))
    resumed = [Parameter(first[0].data.copy())]   # a new array with the same values: the master stays
    optimizer = optim.Adam(resumed, lr=1e-3)
    optimizer.load_state_dict(saved)
    for g in grads[3:]:
        resumed[0].grad = g[0]
        optimizer.step()
    np.testing.assert_array_equal(resumed[0].data, whole[0].data)
    np.testing.assert_array_equal(optimizer.state[0]["master"], _train("Adam", dict(lr=1e-3), [Parameter(
        start.copy())], grads).state[0]["master"])
    # a parameter replaced by other values (a loaded checkpoint) gets a new master from them
    resumed[0].data = np.full(50, 2.0, F16)
    resumed[0].grad = np.zeros(50, F16)
    optimizer.step()
    assert np.abs(optimizer.state[0]["master"] - 2.0).max() < 1e-3


def test_float16_layers_train_on_numpy():
    rng = np.random.default_rng(42)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=F16, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3, dtype=F16, rng=rng))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, labels = normal(rng, (6, 1, 8, 8)), rng.integers(0, 3, 6)
    losses = []
    for _ in range(5):
        model.zero_grad()
        losses.append(loss_fn(model(x), labels))
        model.backward(loss_fn.backward())
        assert all(p.grad.dtype == F16 for p in model.parameters())
        optimizer.step()
    assert all(p.data.dtype == F16 for p in model.parameters())
    assert losses[-1] < losses[0]


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("be", ["numpy", "emu"])   # emu named: the layers' calls, without a bound signature
def test_float16_mixed_with_other_dtypes_is_refused(be):
    rng = np.random.default_rng(43)
    x = normal(rng, (2, 3, 5, 5))
    with pytest.raises(TypeError, match="weight has dtype float32 but x has dtype float16"):
        F.conv2d(x, normal(rng, (4, 3, 3, 3)).astype(F32), backend=be)
    with pytest.raises(TypeError, match="dy has dtype float64 but x has dtype float16"):
        F.relu_backward(x.astype(F64), x, backend=be)
