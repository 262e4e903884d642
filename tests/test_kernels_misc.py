"""The non-convolution kernels (pool, elementwise, reduce, loss, optim, linear's bias) on the emulator
against the NumPy backend: float64 to 1e-10 relative, float32 to 1e-5, max-pool indices exactly.

Pooling runs a seeded sweep of 200+ configurations per op (kernel, stride, padding, dilation,
ceil_mode, count_include_pad, non-square, batch 1, C = 1, ties, NaN, windows wholly in the padding);
one configuration of each class also runs under the "reverse" and "random" thread schedules with
guard zones on, and must give the same bits. Pool backward, reduce and cross entropy are checked
bit-identical across runs. The same comparisons run on "cuda" when a GPU is present."""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest

import cnn_gpu.functional as F
from cnn_gpu import backend
from cnn_gpu.functional.geometry import pool_geometry
from cnn_gpu.gpu import elementwise, optim, pool, reduce
from cnn_gpu.optim import nadam_step_sizes
from helpers import assert_close, assert_same_bits, to_host, tolerance

pytestmark = pytest.mark.skipif("emu" not in backend.available_backends(),
                                reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")

DTYPES = (np.float64, np.float32)
SWEEP_SIZE = 200


def to_backend(be, *arrays):
    if be == "cuda":
        import cupy
        return tuple(cupy.asarray(a) for a in arrays)
    return arrays


def emu_checking(schedule, seed=None):
    from cnn_gpu import emu
    return emu.checking(schedule=schedule, seed=seed, guard=True)


def guarded(test):
    """Runs a sweep with guard zones on every launch (an out-of-bounds access faults), however it
    is called: tests/test_reliability.py plants out-of-bounds kernels and calls the sweeps directly."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        with emu_checking("forward"):
            return test(*args, **kwargs)
    return run


# --- pooling ------------------------------------------------------------------------------------

def random_pool_config(rng, kind: str) -> dict:
    """A valid configuration of max ("max") or average ("avg") pooling."""
    while True:
        kh, kw = (int(k) for k in rng.integers(1, 5, size=2))
        config = dict(
            x_shape=(int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 2, 3])),
                     int(rng.integers(1, 12)), int(rng.integers(1, 12))),
            kernel_size=(kh, kw) if rng.random() < 0.7 else kh,
            stride=None if rng.random() < 0.25 else (int(rng.integers(1, 4)), int(rng.integers(1, 4))),
            padding=(int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))),
            ceil_mode=bool(rng.random() < 0.5),
        )
        if not isinstance(config["kernel_size"], tuple):
            config["padding"] = config["padding"][0]
        if kind == "max":
            config["dilation"] = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        else:
            config["count_include_pad"] = bool(rng.random() < 0.5)
        geometry_args = {k: v for k, v in config.items() if k != "x_shape"}
        try:
            pool_geometry(config["x_shape"], **geometry_args)
        except ValueError:
            continue
        return config


def pool_input(rng, shape, dtype, values: str):
    """'normal' values, 'ties' (few distinct values), 'nan' (normal with one NaN per plane) or
    'nans' (a third of the values NaN: windows with several NaNs, where the last one wins)."""
    if values == "ties":
        return rng.integers(-1, 2, size=shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if values == "nans":
        x[rng.random(shape) < 1 / 3] = np.nan
    if values == "nan":
        n, c, h, w = shape
        for plane in np.ndindex(n, c):
            x[plane][rng.integers(h), rng.integers(w)] = np.nan
    return x


def run_max_pool(be, x, dy_seed, config):
    args = {k: v for k, v in config.items() if k != "x_shape"}
    (xb,) = to_backend(be, x)
    y, indices = F.max_pool2d(xb, backend=be, **args)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    (dyb,) = to_backend(be, dy)
    dx = F.max_pool2d_backward(dyb, indices, x.shape, backend=be, **args)
    return y, indices, dx


def run_avg_pool(be, x, dy_seed, config):
    args = {k: v for k, v in config.items() if k != "x_shape"}
    (xb,) = to_backend(be, x)
    y = F.avg_pool2d(xb, backend=be, **args)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    (dyb,) = to_backend(be, dy)
    dx = F.avg_pool2d_backward(dyb, x.shape, backend=be, **args)
    return y, dx


def check_max_pool(be, config, dtype, values, seed):
    rng = np.random.default_rng(seed)
    x = pool_input(rng, config["x_shape"], dtype, values)
    y, indices, dx = run_max_pool(be, x, seed + 1, config)
    y0, indices0, dx0 = run_max_pool("numpy", x, seed + 1, config)
    what = f"max_pool {config} {np.dtype(dtype).name} {values}"
    assert to_host(indices).dtype == np.int32
    np.testing.assert_array_equal(to_host(indices), indices0, err_msg=what)
    assert_close(y, y0, dtype, what + " y")
    assert_close(dx, dx0, dtype, what + " dx")


def check_avg_pool(be, config, dtype, seed):
    x = pool_input(np.random.default_rng(seed), config["x_shape"], dtype, "normal")
    y, dx = run_avg_pool(be, x, seed + 1, config)
    y0, dx0 = run_avg_pool("numpy", x, seed + 1, config)
    what = f"avg_pool {config} {np.dtype(dtype).name}"
    assert_close(y, y0, dtype, what + " y")
    assert_close(dx, dx0, dtype, what + " dx")


SWEEP_CHUNKS = 4


@pytest.mark.parametrize("chunk", range(SWEEP_CHUNKS))
def test_max_pool_sweep(chunk):
    rng = np.random.default_rng(1000)
    configs = [random_pool_config(rng, "max") for _ in range(SWEEP_SIZE)]
    with emu_checking("forward"):
        for i, config in enumerate(configs[chunk::SWEEP_CHUNKS], start=chunk * SWEEP_SIZE):
            values = ("normal", "ties", "nan", "nans")[i % 4]
            for dtype in DTYPES:
                check_max_pool("emu", config, dtype, values, seed=i)


@pytest.mark.parametrize("chunk", range(SWEEP_CHUNKS))
def test_avg_pool_sweep(chunk):
    rng = np.random.default_rng(2000)
    configs = [random_pool_config(rng, "avg") for _ in range(SWEEP_SIZE)]
    with emu_checking("forward"):
        for i, config in enumerate(configs[chunk::SWEEP_CHUNKS], start=chunk * SWEEP_SIZE):
            for dtype in DTYPES:
                check_avg_pool("emu", config, dtype, seed=i)


# One configuration per class, for the schedule/guard runs and the cuda run.
MAX_POOL_CLASSES = {
    "plain": (dict(x_shape=(2, 3, 8, 6), kernel_size=2), "normal"),
    "padding_ceil": (dict(x_shape=(2, 2, 7, 9), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1),
                          ceil_mode=True), "normal"),
    "dilation": (dict(x_shape=(1, 2, 9, 8), kernel_size=3, stride=1, padding=1, dilation=(2, 3)), "normal"),
    "ties": (dict(x_shape=(2, 2, 6, 7), kernel_size=3, stride=1, padding=1), "ties"),
    "nan": (dict(x_shape=(2, 3, 6, 5), kernel_size=2, stride=1), "nan"),
    "several_nans": (dict(x_shape=(2, 2, 7, 6), kernel_size=3, stride=1, padding=1), "nans"),
    "window_in_padding": (dict(x_shape=(2, 2, 1, 5), kernel_size=(2, 3), stride=1, padding=(1, 1),
                               dilation=(2, 1)), "normal"),
    "batch1_c1_kernel_as_input": (dict(x_shape=(1, 1, 5, 3), kernel_size=(7, 5), padding=(1, 1),
                                       ceil_mode=True), "normal"),
    "stride_over_kernel": (dict(x_shape=(3, 1, 11, 10), kernel_size=2, stride=3), "normal"),
}
AVG_POOL_CLASSES = {
    "plain": dict(x_shape=(2, 3, 8, 6), kernel_size=2),
    "padding_ceil_include": dict(x_shape=(2, 2, 7, 9), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1),
                                 ceil_mode=True, count_include_pad=True),
    "padding_ceil_exclude": dict(x_shape=(2, 2, 7, 9), kernel_size=(3, 4), stride=(2, 3), padding=(1, 2),
                                 ceil_mode=True, count_include_pad=False),
    "batch1_c1_kernel_as_input": dict(x_shape=(1, 1, 3, 4), kernel_size=(5, 6), padding=(1, 1),
                                      count_include_pad=False),
    "overlapping": dict(x_shape=(2, 3, 9, 10), kernel_size=3, stride=1, padding=1),
}


def test_window_in_padding_gives_minus_inf_and_no_gradient():
    config, _ = MAX_POOL_CLASSES["window_in_padding"]
    x = np.random.default_rng(5).standard_normal(config["x_shape"])
    y, indices, dx = run_max_pool("emu", x, 6, config)
    assert (indices == -1).all() and np.isneginf(y).all()
    assert not dx.any()


@pytest.mark.parametrize("schedule", ["reverse", "random"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_classes_under_schedules(schedule, dtype):
    for seed, (name, (config, values)) in enumerate(MAX_POOL_CLASSES.items()):
        x = pool_input(np.random.default_rng(seed), config["x_shape"], dtype, values)
        with emu_checking("forward"):
            expected = run_max_pool("emu", x, seed, config)
        with emu_checking(schedule, seed=seed):
            got = run_max_pool("emu", x, seed, config)
        for a, b, part in zip(got, expected, ("y", "indices", "dx")):
            assert_same_bits(a, b, f"max_pool {name} {part} under {schedule}")
        check_max_pool("emu", config, dtype, values, seed)
    for seed, (name, config) in enumerate(AVG_POOL_CLASSES.items()):
        x = pool_input(np.random.default_rng(seed), config["x_shape"], dtype, "normal")
        with emu_checking("forward"):
            expected = run_avg_pool("emu", x, seed, config)
        with emu_checking(schedule, seed=seed):
            got = run_avg_pool("emu", x, seed, config)
        for a, b, part in zip(got, expected, ("y", "dx")):
            assert_same_bits(a, b, f"avg_pool {name} {part} under {schedule}")
        with emu_checking(schedule, seed=seed):
            check_avg_pool("emu", config, dtype, seed)


def test_max_pool_nan_index_follows_pytorch():
    """Several NaNs in one window: PyTorch keeps the last NaN's index (its CPU and CUDA kernels
    take any NaN as a new maximum)."""
    torch = pytest.importorskip("torch")
    x = np.array([[[[1.0, np.nan, 3.0, np.nan, 2.0], [np.nan, 0.0, 5.0, 1.0, np.nan]]]])
    y, indices = F.max_pool2d(x, (2, 5), backend="emu")
    ty, tindices = torch.nn.functional.max_pool2d(torch.from_numpy(x), (2, 5), return_indices=True)
    assert np.isnan(y).all() and np.isnan(ty.numpy()).all()
    np.testing.assert_array_equal(indices, tindices.numpy())


def test_max_pool_all_minus_inf_window_reports_first_tap():
    x = np.full((1, 1, 2, 3), -np.inf)
    y, indices = F.max_pool2d(x, 2, stride=1, padding=1, backend="emu")
    y0, indices0 = F.max_pool2d(x, 2, stride=1, padding=1, backend="numpy")
    np.testing.assert_array_equal(indices, indices0)
    assert np.isneginf(y).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_backward_bit_identical(dtype):
    config = dict(x_shape=(2, 3, 9, 8), kernel_size=3, stride=1, padding=1)
    x = np.random.default_rng(3).standard_normal(config["x_shape"]).astype(dtype)
    with emu_checking("forward"):
        first = run_max_pool("emu", x, 4, config)[2], run_avg_pool("emu", x, 4, config)[1]
    with emu_checking("random", seed=11):
        second = run_max_pool("emu", x, 4, config)[2], run_avg_pool("emu", x, 4, config)[1]
    for a, b in zip(first, second):
        assert_same_bits(a, b, "pool backward")


def test_pool_refuses_planes_beyond_int32():
    g = pool_geometry((1, 1, 2**16, 2**15), 2)
    x = np.zeros((1, 1, 1, 1))
    with pytest.raises(ValueError, match="32-bit"):
        pool.max_forward("emu", x, g)


# --- element-wise -------------------------------------------------------------------------------

ACTIVATIONS = [("relu", (), ()), ("leaky_relu", (0.2,), (0.2,)), ("leaky_relu", (), ()),
               ("sigmoid", (), ()), ("tanh", (), ()), ("silu", (), ()), ("gelu", (), ())]
ELEMENTWISE_SHAPES = [(7,), (3, 4, 5, 6), (1000,), (2, 3, 17, 13)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, forward_args, backward_args", ACTIVATIONS)
@guarded
def test_activations(name, forward_args, backward_args, dtype):
    rng = np.random.default_rng(7)
    forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
    for shape in ELEMENTWISE_SHAPES:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        x.ravel()[::5] = 0  # the x == 0 conventions of the backward passes
        x.ravel()[3] = np.nan
        dy = rng.standard_normal(shape).astype(dtype)
        what = f"{name} {shape} {np.dtype(dtype).name}"
        assert_close(forward(x, *forward_args, backend="emu"), forward(x, *forward_args, backend="numpy"),
                     dtype, what)
        assert_close(backward(dy, x, *backward_args, backend="emu"),
                     backward(dy, x, *backward_args, backend="numpy"), dtype, what + " backward")


# silu and gelu at the ends of their range: saturation, exp and x^3 overflowing, erfc underflowing
SMOOTH_ACTIVATION_EDGES = [-1e30, -1e4, -800.0, -100.0, -40.0, -10.0, -5.0, -1.0, -1e-3, -0.0, 0.0, 1e-3, 1.0, 5.0,
                           10.0, 40.0, 100.0, 800.0, 1e4, 1e30]


@pytest.mark.parametrize("name, options", [("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"})])
# not numpy in float64: that is the oracle itself (its own references: test_functional_reference.py)
@pytest.mark.parametrize("be, dtype", [("numpy", np.float32), ("numpy", np.float16), ("emu", np.float64),
                                       ("emu", np.float32), ("emu", np.float16)])
@guarded
def test_smooth_activations_against_float64(be, name, options, dtype):
    """silu and gelu (both forms) on each backend and dtype against the float64 NumPy oracle, element
    by element, up to the edges of each dtype's range, and never NaN or inf at a finite x. Relative
    error within tolerance(dtype) (float16: of its FP32 math, plus one float16 ulp of rounding),
    times 1 + |x| for negative x, where exp(-x^2 / 2), exp(x) and the rounding of x / sqrt(2) or of
    u scale the error of any FP32 or FP64 evaluation by up to ~x^2 ulps; absolute, relative to dy,
    for the backward passes at |x| < 4, around the zeros of the derivatives; and results within
    1 / tolerance of the smallest normal number may lose it all to underflowing intermediates
    (sigmoid(2u) far below gelu_tanh's x^3 sigmoid(2u)) or flush to zero (the float32 kernels' -ftz)."""
    forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
    rng = np.random.default_rng(8)
    with np.errstate(over="ignore"):   # float16: the largest edges become inf, left out
        x = np.concatenate([SMOOTH_ACTIVATION_EDGES, rng.standard_normal(2000) * 4]).astype(dtype)
    x = x[np.isfinite(x)]
    dy = rng.uniform(0.5, 2.0, x.shape).astype(dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    computed = np.float32 if dtype == np.float16 else dtype
    for what, got, exact, cancelling in (
            ("forward", forward(x, **options, backend=be), forward(x64, **options), 0.0),
            ("backward", backward(dy, x, **options, backend=be), backward(dy64, x64, **options),
             dy64 * (np.abs(x64) < 4))):
        assert got.dtype == dtype and np.isfinite(got).all(), f"{what}: not finite at x={x[~np.isfinite(got)]}"
        scale = np.maximum(np.abs(exact) * (1 - np.minimum(x64, 0)), cancelling)
        tolerated = tolerance(computed) * scale + np.finfo(computed).tiny / tolerance(computed)
        if dtype == np.float16:
            tolerated += np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
        excess = np.abs(got.astype(np.float64) - exact) - tolerated
        assert (excess <= 0).all(), f"{name} {options} {what}: x={x[np.argmax(excess)]}"


@pytest.mark.parametrize("call, error", [
    (lambda x: F.silu(x.astype(np.int64), backend="emu"), TypeError),
    (lambda x: F.silu_backward(x[:1], x, backend="emu"), ValueError),
    (lambda x: F.gelu_backward(x.astype(np.float32), x, backend="emu"), TypeError),
    (lambda x: F.gelu(x, approximate="exact", backend="emu"), ValueError),
    (lambda x: F.gelu_backward(x, x, approximate=None, backend="emu"), TypeError),
])
def test_smooth_activations_refuse_bad_inputs_before_any_launch(call, error, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError(f"launched {args[3]}")
    monkeypatch.setattr(backend, "launch", no_launch)
    with pytest.raises(error):
        call(np.ones((2, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@guarded
def test_elementwise_kernels_cover_every_element_with_any_grid(dtype):
    """for_each_element (common.cuh): ELEMENTS_PER_THREAD elements a thread a round, rounds over
    the grid. The launchers' grids give every thread one round (elementwise_blocks); smaller grids
    (as past the 65536-block cap) must still write every element once and none past the end (the
    emulator's fresh memory is NaN and its guard zones fault)."""
    from cnn_gpu.gpu._grid import ELEMENTS_PER_THREAD, THREADS, elementwise_blocks
    source = backend.kernel_source("elementwise")
    assert f"#define ELEMENTS_PER_THREAD {ELEMENTS_PER_THREAD}\n" in source
    span = THREADS * ELEMENTS_PER_THREAD
    rng = np.random.default_rng(21)
    for n in (1, THREADS - 1, span, span + 1, 3 * span + 7):
        a, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
        expected = F.add_relu(a, b, backend="numpy")
        assert elementwise_blocks(n) == -(-n // span)
        for blocks in {1, 2, elementwise_blocks(n)}:
            y = backend.array_module("emu").empty(n, dtype)
            backend.launch("emu", "elementwise", dtype, "add_relu_forward", (blocks,), (THREADS,),
                           (a, b, y, np.int64(n)))
            np.testing.assert_array_equal(y, expected, err_msg=f"n={n}, {blocks} blocks")


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_zero_dimensional_inputs_give_zero_dimensional_arrays_of_their_dtype(dtype):
    """NumPy's arithmetic turns a 0-d array's result into a scalar (a float16 one widened to the
    float32 the op computes in came back float32): every element-wise op returns a 0-d array of
    the input's dtype on numpy as on emu, with the same value."""
    x, dy, other = (np.array(v, dtype) for v in (-0.75, 1.5, 0.5))
    calls = {
        "relu": lambda be: F.relu(x, backend=be), "sigmoid": lambda be: F.sigmoid(x, backend=be),
        "tanh": lambda be: F.tanh(x, backend=be), "leaky_relu": lambda be: F.leaky_relu(x, 0.1, backend=be),
        "relu_backward": lambda be: F.relu_backward(dy, x, backend=be),
        "sigmoid_backward": lambda be: F.sigmoid_backward(dy, x, backend=be),
        "tanh_backward": lambda be: F.tanh_backward(dy, x, backend=be),
        "silu": lambda be: F.silu(x, backend=be), "silu_backward": lambda be: F.silu_backward(dy, x, backend=be),
        "gelu": lambda be: F.gelu(x, backend=be), "gelu_backward": lambda be: F.gelu_backward(dy, x, backend=be),
        "leaky_relu_backward": lambda be: F.leaky_relu_backward(dy, x, 0.1, backend=be),
        "add_relu": lambda be: F.add_relu(x, other, backend=be),
        "relu_backward_of_sum": lambda be: F.relu_backward_of_sum(dy, x, other, backend=be),
        "dropout": lambda be: F.dropout(x, 0.5, seed=3, backend=be),
        "mse_loss none": lambda be: F.mse_loss(x, other, "none", backend=be)[0],
        "mse_loss gradient": lambda be: F.mse_loss(x, other, backend=be)[1],
    }
    for name, call in calls.items():
        results = {be: call(be) for be in ("numpy", "emu")}
        for be, y in results.items():
            assert isinstance(y, np.ndarray) and y.shape == () and y.dtype == dtype, (name, be, type(y), y.dtype)
        assert_close(results["emu"], results["numpy"], dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@guarded
def test_add_relu_is_relu_of_the_sum_bit_for_bit(dtype):
    """F.add_relu on emu (one kernel) and numpy gives relu(a + b) as the two ops apart give it, to
    the bit: the sum rounded once (float16: as NumPy's float16 addition rounds it), -0.0 kept
    where both addends are -0.0, NaN and inf passed, overflow to inf; and relu_backward given the
    output is relu_backward given the sum."""
    rng = np.random.default_rng(12)
    big = np.finfo(dtype).max
    edges_a = np.array([-0.0, 0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, big, -big, 2.0], dtype)
    edges_b = np.array([-0.0, -0.0, 1.0, 1.0, 1.0, 3.0, np.nan, big, 1.0, -2.0], dtype)
    for shape in [(7,), (3, 4, 5, 6), (2, 3, 17, 13)]:
        a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
        a.ravel()[:len(edges_a)], b.ravel()[:len(edges_b)] = edges_a[:a.size], edges_b[:b.size]
        with np.errstate(over="ignore", invalid="ignore"):
            expected = F.relu(a + b, backend="numpy")
        for be in ("numpy", "emu"):
            with np.errstate(over="ignore", invalid="ignore"):
                y = F.add_relu(a, b, backend=be)
            assert y.dtype == dtype
            np.testing.assert_array_equal(y.view(f"u{y.itemsize}"), expected.view(f"u{y.itemsize}"),
                                          err_msg=f"{be} {shape}")
            dy = rng.standard_normal(shape).astype(dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                np.testing.assert_array_equal(F.relu_backward(dy, y, backend=be), F.relu_backward(dy, a + b, backend=be))
    with pytest.raises(ValueError, match="shape"):
        F.add_relu(np.ones((2, 3), dtype), np.ones((3, 2), dtype), backend="emu")
    with pytest.raises(TypeError, match="dtype"):
        F.add_relu(np.ones(3, dtype), np.ones(3, np.float64 if dtype != np.float64 else np.float32), backend="emu")


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@guarded
def test_relu_backward_of_sum_is_relu_backward_of_the_sum_bit_for_bit(dtype):
    """F.relu_backward_of_sum(dy_a, dy_b, x) on emu (one kernel) and numpy is relu_backward(dy_a +
    dy_b, x) as the two ops apart give it, to the bit: the sum rounded once (float16: as NumPy's
    float16 addition rounds it), overflowing to inf and passed where x > 0 or x is NaN, and 0 where
    x <= 0 whatever the sum (inf, NaN). float32 subnormals: flushed on emu (as on a GPU), kept by NumPy."""
    rng = np.random.default_rng(13)
    big = np.finfo(dtype).max
    edges_a = np.array([1.0, np.nan, np.inf, np.inf, big, -0.0, 2.5, 1.0, np.nan, -big], dtype)
    edges_b = np.array([2.0, 1.0, -np.inf, 1.0, big, -0.0, -2.5, 3.0, 1.0, -big], dtype)
    edges_x = np.array([-1.0, 1.0, 2.0, -0.0, 1.0, 3.0, 1.0, np.nan, -2.0, 0.5], dtype)
    for shape in [(7,), (3, 4, 5, 6), (2, 3, 17, 13)]:
        dy_a, dy_b, x = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
        for a, edges in ((dy_a, edges_a), (dy_b, edges_b), (x, edges_x)):
            a.ravel()[:len(edges)] = edges[:a.size]
        with np.errstate(over="ignore", invalid="ignore"):
            expected = F.relu_backward(dy_a + dy_b, x, backend="numpy")
        assert (expected == 0).any() and (expected != 0).any()
        for be in ("numpy", "emu"):
            with np.errstate(over="ignore", invalid="ignore"):
                dx = F.relu_backward_of_sum(dy_a, dy_b, x, backend=be)
            assert dx.dtype == dtype and dx.shape == shape
            np.testing.assert_array_equal(dx.view(f"u{dx.itemsize}"), expected.view(f"u{dx.itemsize}"),
                                          err_msg=f"{be} {shape}")
    if dtype == np.float32:   # the kernels' -ftz=true: a subnormal summand or sum is 0 there, kept by NumPy
        tiny = np.finfo(np.float32).tiny
        dy_a, dy_b, x = (np.array(v, np.float32) for v in ([tiny / 8, 1.5 * tiny, 1.0], [0.0, -1.25 * tiny, 1.0],
                                                            [1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(F.relu_backward_of_sum(dy_a, dy_b, x, backend="numpy"), dy_a + dy_b)
        np.testing.assert_array_equal(F.relu_backward_of_sum(dy_a, dy_b, x, backend="emu"), [0.0, 0.0, 2.0])
        np.testing.assert_array_equal(F.add_relu(dy_a, dy_b, backend="numpy"), dy_a + dy_b)
        np.testing.assert_array_equal(F.add_relu(dy_a, dy_b, backend="emu"), [0.0, 0.0, 2.0])
    other = np.float64 if dtype != np.float64 else np.float32
    for be in ("numpy", "emu"):
        with pytest.raises(ValueError, match="shape"):
            F.relu_backward_of_sum(np.ones((2, 3), dtype), np.ones((3, 2), dtype), np.ones((2, 3), dtype), backend=be)
        with pytest.raises(TypeError, match="dtype"):
            F.relu_backward_of_sum(np.ones(3, dtype), np.ones(3, other), np.ones(3, dtype), backend=be)


@pytest.mark.parametrize("dtype", DTYPES)
@guarded
def test_bias_add(dtype):
    rng = np.random.default_rng(8)
    for shape in [(2, 3, 5, 7), (1, 1, 1, 1), (4, 6), (3, 300), (2, 5, 1, 1)]:
        y = rng.standard_normal(shape).astype(dtype)
        bias = rng.standard_normal(shape[1]).astype(dtype)
        expected = y + bias.reshape((-1,) + (1,) * (len(shape) - 2))
        out = elementwise.bias_add("emu", y, bias)
        assert out is y
        assert_close(y, expected, dtype, f"bias_add {shape}")
    with pytest.raises(ValueError, match="bias"):
        elementwise.bias_add("emu", np.zeros((2, 3, 4), dtype), np.zeros(4, dtype))


def test_grid_stride_loops_cover_everything():
    """Launch with fewer blocks than elements (as on a huge tensor) and compare with a full grid."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(3001)
    y = np.empty_like(x)
    backend.launch("emu", "elementwise", x.dtype, "relu_forward", (2,), (256,), (x, y, np.int64(x.size)))
    np.testing.assert_array_equal(y, np.maximum(x, 0))

    xs = rng.standard_normal((2, 3, 19, 23))
    g = pool_geometry(xs.shape, 2, 1)
    yp, ip = np.empty(g.y_shape), np.empty(g.y_shape, dtype=np.int32)
    args = (np.int64(6), *(np.int32(v) for v in (19, 23, g.P, g.Q, 2, 2, 1, 1, 0, 0, 1, 1)))
    backend.launch("emu", "pool", xs.dtype, "max_pool_forward", (1, 4, 1), (256,), (xs, yp, ip, *args))
    y0, i0 = F.max_pool2d(xs, 2, 1, backend="numpy")
    np.testing.assert_array_equal(ip, i0)
    np.testing.assert_array_equal(yp, y0)

    # bias_add_nchw's plane walk: large planes a block row, small ones grouped (1200 planes of 5: six
    # groups of 204 over five block rows), on a grid smaller than the planes' or groups' count
    for shape in [(3, 4, 700), (3, 4, 1500), (40, 30, 5)]:
        planes = rng.standard_normal(shape)
        bias = rng.standard_normal(shape[1])
        expected = planes + bias[:, None]
        backend.launch("emu", "elementwise", planes.dtype, "bias_add_nchw", (1, 5), (256,),
                       (planes, bias, np.int64(shape[0] * shape[1]), np.int32(shape[1]), np.int64(shape[2])))
        np.testing.assert_array_equal(planes, expected)

    logits = rng.standard_normal((7, 5))
    labels = rng.integers(0, 5, 7)
    dl, rl = np.empty_like(logits), np.empty(7)
    backend.launch("emu", "loss", logits.dtype, "cross_entropy_rows", (2,), (32,),
                   (logits, labels, logits, logits, np.full(1, 7.0), dl, rl, np.int64(7), np.int32(5), np.int64(1),
                    np.int64(-100), np.int32(0), np.int32(0), np.float64(1), np.float64(0)))
    loss0, dl0 = F.cross_entropy(logits, labels, backend="numpy")
    assert_close(dl, dl0, np.float64)
    assert rl.sum() / 7 == pytest.approx(loss0, rel=1e-12)


# --- linear -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@guarded
def test_linear(dtype):
    rng = np.random.default_rng(10)
    for batch, n_in, n_out in [(1, 1, 1), (4, 7, 5), (33, 64, 10), (300, 3, 2)]:
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        w = rng.standard_normal((n_out, n_in)).astype(dtype)
        b = rng.standard_normal(n_out).astype(dtype)
        dy = rng.standard_normal((batch, n_out)).astype(dtype)
        what = f"linear {(batch, n_in, n_out)} {np.dtype(dtype).name}"
        for bias in (b, None):
            assert_close(F.linear(x, w, bias, backend="emu"), F.linear(x, w, bias, backend="numpy"), dtype, what)
        for has_bias in (True, False):
            got = F.linear_backward(dy, x, w, has_bias, backend="emu")
            expected = F.linear_backward(dy, x, w, has_bias, backend="numpy")
            for a, e, part in zip(got, expected, ("dx", "dw", "db")):
                if e is None:
                    assert a is None
                else:
                    assert_close(a, e, dtype, f"{what} {part}")


# --- reduce -------------------------------------------------------------------------------------

REDUCE_SHAPES = [(1, 1, 1), (3, 4, 5), (2, 3, 700), (257, 2, 3), (300, 7, 1), (5, 1000, 1), (64, 1, 1),
                 (1, 1, 5000), (256, 3, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_sum(dtype):
    rng = np.random.default_rng(12)
    for outer, channels, inner in REDUCE_SHAPES:
        a = rng.standard_normal((outer, channels, inner)).astype(dtype)
        expected = a.astype(np.float64).sum(axis=(0, 2))
        got = reduce.channel_sum("emu", a, outer, channels, inner)
        assert got.dtype == dtype and got.shape == (channels,)
        scale = np.abs(a).astype(np.float64).sum(axis=(0, 2)).max()
        np.testing.assert_allclose(got, expected, rtol=tolerance(dtype), atol=tolerance(dtype) * scale,
                                   err_msg=f"channel_sum {(outer, channels, inner)}")
        with emu_checking("random", seed=outer):
            again = reduce.channel_sum("emu", a, outer, channels, inner)
        assert_same_bits(got, again, f"channel_sum {(outer, channels, inner)}")


def test_channel_sum_blocks_have_no_race():
    """channel_sum_block over several chunks per channel (3 x 2 x 4900: 4 blocks each) under the race
    check, global memory included: a channel's last block reads the others' partials after the
    fences and the arrival count that order it after them."""
    from cnn_gpu import emu
    a = np.random.default_rng(13).standard_normal((3, 2, 4900)).astype(np.float32)
    assert reduce.plan_channel_sum(3, 2, 4900).kernel == "channel_sum_block"
    with emu.checking(schedule="random", seed=5, race=True):
        got = reduce.channel_sum("emu", a, 3, 2, 4900)
    assert_same_bits(got, reduce.channel_sum("emu", a, 3, 2, 4900), "channel_sum under the race check")
    scale = np.abs(a).astype(np.float64).sum(axis=(0, 2))
    assert np.all(np.abs(got - a.astype(np.float64).sum(axis=(0, 2))) <= 1e-6 * scale)
    from cnn_gpu.gpu import _arrivals
    assert not _arrivals._COUNTS[_arrivals._key("emu")].any()   # each channel's last block reset its count


def test_chunked_reductions_take_planes_up_to_the_cursors_int_limit():
    """ChannelCursor keeps a plane position in an int: channel_sum_block and batch norm refuse planes
    of more than 2^30 elements before launching, and a one-channel sum (a loss's total) is viewed
    as planes of one element (the same elements in the same order), so any length passes."""
    limit = reduce.CURSOR_PLANE_LIMIT
    assert reduce.chunked_blocks("batch_norm", 2, 3, limit) == 3 * reduce.chunks(2, limit)
    for call in (lambda: reduce.chunked_blocks("batch_norm", 2, 3, limit + 1),
                 lambda: reduce.plan_channel_sum(2, 3, limit + 1)):
        with pytest.raises(ValueError, match=r"planes of 1073741825 elements"):
            call()
    assert reduce.plan_channel_sum(1, 1, 2**33).grid[0] == reduce.chunks(1, 2**33)
    rng = np.random.default_rng(14)
    for outer, inner in ((3, 4097), (1, 9000), (2, 300)):
        a = rng.standard_normal(outer * inner).astype(np.float32)
        got = reduce.channel_sum("emu", a, outer, 1, inner)
        assert abs(float(got[0]) - a.astype(np.float64).sum()) <= 1e-5 * np.abs(a).sum()


def test_float16_channel_sums_are_the_float32_sums_of_the_widened_array_rounded_once():
    """The float16 build of reduce.cu reads FP16 and adds in FP32 in the float32 build's order (chunk
    partials too: (3, 2, 4900) spans four blocks per channel), so each sum is bit-identical to the
    float32 sum of the widened array rounded to float16, under any block schedule; likewise the
    split-K epilogue, which takes FP32 partials (a float16 array is refused) and adds the float16
    bias and ReLU before the one rounding."""
    rng = np.random.default_rng(13)
    launched = []
    real_launch = backend.launch

    def spy(be, family, dtype, kernel, *args, **kwargs):
        launched.append((family, np.dtype(dtype).name, kernel))
        return real_launch(be, family, dtype, kernel, *args, **kwargs)

    for outer, channels, inner in REDUCE_SHAPES + [(3, 2, 4900)]:
        a = (rng.standard_normal((outer, channels, inner)) * 8).astype(np.float16)
        widened = reduce.channel_sum("emu", a.astype(np.float32), outer, channels, inner)
        launched.clear()
        with pytest.MonkeyPatch.context() as patch, emu_checking("random", seed=inner):
            patch.setattr(backend, "launch", spy)
            got = reduce.channel_sum("emu", a, outer, channels, inner)
        assert launched == [("reduce", "float16", reduce.plan_channel_sum(outer, channels, inner).kernel)]
        assert got.dtype == np.float16 and got.shape == (channels,)
        assert_same_bits(got, widened.astype(np.float16), f"float16 channel_sum {(outer, channels, inner)}")
    assert reduce.plan_channel_sum(3, 2, 4900).grid[0] == 2 * 4
    # Sums whose FP32 order shows through the float16 rounding: small values of either sign (a total
    # near 0.1, whose float16 step is 6e-5) and 2^15 into element 0 and out at element 3072, so the
    # accumulator that holds it (thread 0's first: elements 0, 1024, 2048, 3072) loses the values it
    # takes meanwhile; another order loses others (~1e-3 each).
    a = (rng.uniform(2**-11, 2**-10, (1, 2, 4900)) * rng.choice([-1, 1], (1, 2, 4900))).astype(np.float16)
    a[0, :, 0], a[0, :, 3072] = 2**15, -2**15
    widened = reduce.channel_sum("emu", a.astype(np.float32), 1, 2, 4900)
    assert_same_bits(reduce.channel_sum("emu", a, 1, 2, 4900), widened.astype(np.float16), "the order of the sums")
    partials = (rng.standard_normal((3, 2, 5, 7)) * 100).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float16)
    for has_bias in (True, False):
        got, wide = np.empty((2, 5, 7), np.float16), np.empty((2, 5, 7), np.float32)
        reduce.split_sum_epilogue("emu", partials, got, 5, 7, bias if has_bias else None, relu=True)
        reduce.split_sum_epilogue("emu", partials, wide, 5, 7, bias.astype(np.float32) if has_bias else None,
                                  relu=True)
        assert (wide == 0).any() and (wide != 0).any()
        assert_same_bits(got, wide.astype(np.float16), f"float16 split_sum_epilogue, bias {has_bias}")
    with pytest.raises(TypeError, match="float32"):
        reduce.split_sum_epilogue("emu", partials.astype(np.float16), got, 5, 7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_sum_epilogue_is_the_sum_of_the_splits_in_order_then_bias_and_relu(dtype):
    """out = partials[0] + partials[1] + ... (that order: bit for bit), + bias[channel], ReLU with a
    NaN passed through, against NumPy on an (outer, channels, inner) output of odd sizes: the
    float16 test above only compares the kernel's builds with each other."""
    rng = np.random.default_rng(14)
    splits, shape = 3, (3, 5, 7)
    partials = rng.standard_normal((splits,) + shape).astype(dtype)
    partials[1, 2, 4, 6] = np.nan
    bias = rng.standard_normal(shape[1]).astype(dtype)
    total = partials[0].copy()
    for s in range(1, splits):
        total += partials[s]
    for has_bias, relu in ((True, True), (False, False)):
        want = total + bias[:, None] if has_bias else total.copy()
        if relu:
            want[want < 0] = 0
        got = np.empty(shape, dtype)
        reduce.split_sum_epilogue("emu", partials, got, shape[1], shape[2], bias if has_bias else None, relu=relu)
        assert_same_bits(got, want, f"split_sum_epilogue, bias {has_bias}, relu {relu}")

def test_channel_sum_rejects_a_wrong_view():
    with pytest.raises(ValueError, match="channel_sum"):
        reduce.channel_sum("emu", np.zeros((3, 4)), 2, 3, 3)


# --- losses -------------------------------------------------------------------------------------

CE_SHAPES = [(1, 1), (7, 10), (5, 33), (3, 300), (64, 10), (4, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@guarded
def test_cross_entropy(dtype):
    rng = np.random.default_rng(13)
    for rows, classes in CE_SHAPES:
        for offset, scale in ((0.0, 1.0), (1000.0, 10.0)):  # large logits: the max subtraction
            logits = (rng.standard_normal((rows, classes)) * scale + offset).astype(dtype)
            labels = rng.integers(0, classes, rows)
            loss, dlogits = F.cross_entropy(logits, labels, backend="emu")
            loss0, dlogits0 = F.cross_entropy(logits, labels, backend="numpy")
            what = f"cross_entropy {(rows, classes)} offset {offset} {np.dtype(dtype).name}"
            assert isinstance(loss, float) and math.isfinite(loss), what
            assert loss == pytest.approx(loss0, rel=tolerance(dtype), abs=tolerance(dtype)), what
            assert_close(dlogits, dlogits0, dtype, what)
            with emu_checking("random", seed=rows):
                loss_again, dlogits_again = F.cross_entropy(logits, labels, backend="emu")
            assert loss_again == loss, what
            assert_same_bits(dlogits, dlogits_again, what)


@pytest.mark.parametrize("dtype", DTYPES)
@guarded
def test_mse(dtype):
    rng = np.random.default_rng(14)
    for shape in [(1,), (4, 3), (2, 3, 5, 7), (3001,)]:
        pred = rng.standard_normal(shape).astype(dtype)
        target = rng.standard_normal(shape).astype(dtype)
        loss, dpred = F.mse_loss(pred, target, backend="emu")
        loss0, dpred0 = F.mse_loss(pred, target, backend="numpy")
        what = f"mse {shape} {np.dtype(dtype).name}"
        assert loss == pytest.approx(loss0, rel=tolerance(dtype)), what
        assert_close(dpred, dpred0, dtype, what)


def test_non_contiguous_inputs():
    """Views (reversed, transposed, strided) run on emu as their C-contiguous copies do on numpy; the
    cuda backend refuses them with a clear error instead of copying behind the caller's back."""
    from cnn_gpu.functional import _checks
    rng = np.random.default_rng(16)
    base = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    linear_w = rng.standard_normal((5, 9))
    views = [base[:, :, ::-1], base.transpose(0, 1, 3, 2), base[:, :, ::2, 1:]]
    calls = [
        lambda a, be: F.conv2d(a, w, stride=2, padding=1, backend=be),
        lambda a, be: F.conv2d_backward(a, a, w[:3, :, :1, :1], backend=be)[1],
        lambda a, be: F.max_pool2d(a, 3, 2, 1, backend=be)[0],
        lambda a, be: F.avg_pool2d(a, 2, ceil_mode=True, backend=be),
        lambda a, be: F.sigmoid_backward(a, a, backend=be),
        lambda a, be: F.linear(a[1, 2], linear_w[:, :a.shape[-1]], backend=be),
    ]
    for view in views:
        assert not view.flags.c_contiguous
        for i, call in enumerate(calls):
            assert_close(call(view, "emu"), call(np.ascontiguousarray(view), "numpy"), np.float64, f"call {i}")
    with pytest.raises(ValueError, match="x must be C-contiguous for the cuda backend"):
        _checks.for_kernels("cuda", views[0], "x")


@pytest.mark.parametrize("be", ["numpy", "emu"])
@guarded
def test_empty_batches(be):
    """A batch of 0 rows: the losses are NaN as PyTorch's mean over nothing, linear's gradients are
    zeros of the right shapes (the kernel backends never see an empty reduction)."""
    rng = np.random.default_rng(15)
    empty = np.empty((0, 3))
    loss, dlogits = F.cross_entropy(empty, np.empty(0, np.int64), backend=be)
    assert math.isnan(loss) and dlogits.shape == (0, 3) and dlogits.dtype == np.float64
    loss, dpred = F.mse_loss(empty.astype(np.float32), empty.astype(np.float32), backend=be)
    assert math.isnan(loss) and dpred.shape == (0, 3) and dpred.dtype == np.float32
    w = rng.standard_normal((3, 4))
    dx, dw, db = F.linear_backward(empty, np.empty((0, 4)), w, backend=be)
    assert dx.shape == (0, 4) and dw.shape == (3, 4) and db.shape == (3,)
    assert not dw.any() and not db.any()


# --- optimizers: references written from torch.optim's documented update rules -------------------

def reference_sgd(param, grads, lr, momentum, weight_decay, nesterov, dampening=0.0, maximize=False):
    param, buf = param.copy(), None
    for t, grad in enumerate(grads):
        g = (-grad if maximize else grad) + weight_decay * param
        if momentum:
            buf = g.copy() if t == 0 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g
    return param, buf


def reference_adam(param, grads, lr, beta1, beta2, eps, weight_decay, maximize=False, amsgrad=False):
    param = param.copy()
    m, v, v_max = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
    for t, grad in enumerate(grads, start=1):
        g = (-grad if maximize else grad) + weight_decay * param
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat, v_hat = m / (1 - beta1 ** t), (v_max if amsgrad else v) / (1 - beta2 ** t)
        param = param - lr * m_hat / (np.sqrt(v_hat) + eps)
    return param, m, v, v_max


def reference_rmsprop(param, grads, lr, alpha, eps, weight_decay, momentum, centered, maximize=False):
    """torch.optim.RMSprop's update, written out (float64)."""
    param = param.copy()
    square_avg, grad_avg, buf = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
    for grad in grads:
        g = (-grad if maximize else grad) + weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        grad_avg = alpha * grad_avg + (1 - alpha) * g
        avg = np.sqrt(square_avg - grad_avg ** 2 if centered else square_avg) + eps
        buf = momentum * buf + g / avg
        param = param - lr * (buf if momentum else g / avg)
    return param, square_avg, grad_avg, buf


SGD_SETTINGS = [dict(lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False),
                dict(lr=0.05, momentum=0.0, weight_decay=0.01, nesterov=False),
                dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False),
                dict(lr=0.02, momentum=0.8, weight_decay=0.001, nesterov=True),
                dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False, dampening=0.4),
                dict(lr=0.1, momentum=0.0, weight_decay=0.01, nesterov=False, maximize=True),
                dict(lr=0.02, momentum=0.8, weight_decay=0.001, nesterov=True, maximize=True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@guarded
def test_sgd_step(settings, dtype):
    rng = np.random.default_rng(15)
    shape = (3, 5, 7)
    param0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
    param = param0.copy()
    buf = np.empty_like(param) if settings["momentum"] else None
    for t, grad in enumerate(grads):
        optim.sgd_step("emu", param, grad, buf, settings["lr"], settings["momentum"], settings["weight_decay"],
                       settings["nesterov"], t == 0, settings.get("dampening", 0.0), settings.get("maximize", False))
    expected, expected_buf = reference_sgd(param0.astype(np.float64), [g.astype(np.float64) for g in grads],
                                           **settings)
    assert_close(param, expected.astype(dtype), dtype, f"sgd {settings}")
    if buf is not None:
        assert_close(buf, expected_buf.astype(dtype), dtype, f"sgd momentum buffer {settings}")


def _rounded(exact: Fraction, dtype):
    """`exact` rounded to the nearest `dtype` value, ties to even (float() alone would round a
    float32 twice)."""
    if dtype == np.float64:
        return float(exact)   # correctly rounded
    near = np.float32(float(exact))
    candidates = [near, np.nextafter(near, np.float32(-np.inf)), np.nextafter(near, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1))


def _fused(a, b, c, dtype):
    """a*b + c rounded once (an FMA), elementwise."""
    return np.array([_rounded(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)), dtype)
                     for x, y, z in zip(*np.broadcast_arrays(a, b, c))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", [dict(momentum=0.0, weight_decay=0.05, nesterov=False),
                                      dict(momentum=0.9, weight_decay=0.05, nesterov=False),
                                      dict(momentum=0.8, weight_decay=0.01, nesterov=True),
                                      dict(momentum=0.9, weight_decay=0.05, nesterov=False, maximize=True),
                                      dict(momentum=0.9, weight_decay=0.05, nesterov=False, dampening=0.3)],
                         ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@guarded
def test_sgd_step_rounds_as_pytorchs_cuda_kernels(settings, dtype):
    """Bit for bit: g = fma(weight_decay, p, grad) (torch's grad.add(p, alpha=wd) on CUDA, and
    what the compiler made of grad + wd*p before maximize and dampening existed), buf =
    fma(momentum, buf, g), the Nesterov step fma(momentum, buf, g), p = fma(-lr, step, p). A
    product by a sign for maximize had let the compiler round wd*p alone, moving every step with
    weight decay by an ulp here and there, which the tolerance of test_sgd_step could not see."""
    rng = np.random.default_rng(27)
    lr, momentum, decay, nesterov = 0.07, settings["momentum"], settings["weight_decay"], settings["nesterov"]
    maximize, dampening = settings.get("maximize", False), settings.get("dampening", 0.0)
    param = (rng.standard_normal(64) * 3).astype(dtype)
    grads = [(rng.standard_normal(64) * 2).astype(dtype) for _ in range(4)]
    buf = np.empty_like(param) if momentum else None
    expected, expected_buf = param.copy(), None
    for t, grad in enumerate(grads):
        optim.sgd_step("emu", param, grad, buf, lr, momentum, decay, nesterov, t == 0, dampening, maximize)
        c = lambda v: np.asarray(v, dtype)   # noqa: E731 (the kernel's scalars in its type)
        g = _fused(c(decay), expected, -grad if maximize else grad, dtype)
        step = g
        if momentum:
            damped = c(1 - dampening) * g   # one rounding, then the buffer's FMA
            expected_buf = g if t == 0 else _fused(c(momentum), expected_buf, damped, dtype)
            step = _fused(c(momentum), expected_buf, g, dtype) if nesterov else expected_buf
        expected = _fused(c(-lr), step, expected, dtype)
    assert_same_bits(param, expected)
    if momentum:
        assert_same_bits(buf, expected_buf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay, maximize, amsgrad", [(0.0, False, False), (0.01, False, False),
                                                              (0.01, True, False), (0.01, False, True)])
@guarded
def test_adam_step(weight_decay, maximize, amsgrad, dtype):
    rng = np.random.default_rng(16)
    shape = (1001,)
    param0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    # beta2 0.9: the maximum of v holds its place in the denominator often within 5 steps
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.9 if amsgrad else 0.999, eps=1e-8, weight_decay=weight_decay,
                 maximize=maximize, amsgrad=amsgrad)
    param, m, v = param0.copy(), np.zeros_like(param0), np.zeros_like(param0)
    v_max = np.zeros_like(param0) if amsgrad else None
    for step, grad in enumerate(grads, start=1):
        optim.adam_step("emu", param, grad, m, v, step, hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"],
                        hyper["weight_decay"], maximize=maximize, v_max=v_max)
    expected, expected_m, expected_v, expected_v_max = reference_adam(param0.astype(np.float64),
                                                                      [g.astype(np.float64) for g in grads], **hyper)
    if amsgrad:
        assert_close(v_max, expected_v_max.astype(dtype), dtype, "adam v_max")
        assert not np.array_equal(v_max, v)   # the maximum did hold somewhere
    assert_close(param, expected.astype(dtype), dtype, "adam param")
    assert_close(m, expected_m.astype(dtype), dtype, "adam m")
    assert_close(v, expected_v.astype(dtype), dtype, "adam v")


RMSPROP_SETTINGS = [dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
                    dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.0, centered=True, maximize=True),
                    dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=False),
                    dict(lr=0.01, alpha=0.8, eps=1e-8, weight_decay=0.0, momentum=0.5, centered=True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", RMSPROP_SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@guarded
def test_rmsprop_step(settings, dtype):
    rng = np.random.default_rng(23)
    param0 = rng.standard_normal(1001).astype(dtype)
    grads = [rng.standard_normal(param0.shape).astype(dtype) for _ in range(5)]
    param, square_avg = param0.copy(), np.zeros_like(param0)
    grad_avg = np.zeros_like(param0) if settings["centered"] else None
    buf = np.zeros_like(param0) if settings["momentum"] else None
    for grad in grads:
        optim.rmsprop_step("emu", param, grad, square_avg, grad_avg, buf, settings["lr"], settings["alpha"],
                           settings["eps"], settings["weight_decay"], settings["momentum"],
                           settings.get("maximize", False))
    expected = reference_rmsprop(param0.astype(np.float64), [g.astype(np.float64) for g in grads], **settings)
    for got, want, name in zip((param, square_avg, grad_avg, buf), expected, ("param", "square_avg", "grad_avg", "buf")):
        if got is not None:
            assert_close(got, want.astype(dtype), dtype, f"rmsprop {name}")


def reference_rule(rule, param, grads, lr, eps, weight_decay=0.0, maximize=False, beta1=0.9, beta2=0.999,
                   decoupled=False, lr_decay=0.0, initial=0.0, momentum_decay=4e-3, rho=0.9):
    """torch.optim's Adagrad, Adamax, NAdam, RAdam and Adadelta written out (float64): the parameter
    and the state arrays after the steps of `grads`."""
    param = param.copy()
    first = np.full_like(param, initial if rule == "adagrad" else 0.0)
    second, mu_product = np.zeros_like(param), 1.0
    for t, grad in enumerate(grads, start=1):
        g = -grad if maximize else grad
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
        if rule == "adagrad":
            first = first + g * g
            param = param - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(first) + eps)
        elif rule == "adadelta":
            first = rho * first + (1 - rho) * g * g
            delta = np.sqrt(second + eps) / np.sqrt(first + eps) * g
            second = rho * second + (1 - rho) * delta * delta
            param = param - lr * delta
        else:
            first = beta1 * first + (1 - beta1) * g
            if rule == "adamax":
                second = np.maximum(beta2 * second, np.abs(g) + eps)
                param = param - lr / (1 - beta1 ** t) * first / second
                continue
            second = beta2 * second + (1 - beta2) * g * g
            if rule == "nadam":
                mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
                mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
                mu_product = float(np.float32(mu_product * mu))   # torch's float32 state tensor
                denom = np.sqrt(second / (1 - beta2 ** t)) + eps
                param = (param - lr * (1 - mu) / (1 - mu_product) * g / denom
                         - lr * mu_next / (1 - mu_product * mu_next) * first / denom)
                continue
            rho_inf = 2 / (1 - beta2) - 1
            rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
            m_hat = first / (1 - beta1 ** t)
            if rho_t > 5:
                rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                param = param - lr * m_hat * rect * np.sqrt(1 - beta2 ** t) / (np.sqrt(second) + eps)
            else:
                param = param - lr * m_hat
    return param, first, second


RULE_SETTINGS = [("adagrad", dict(lr=0.05, eps=1e-10)),
                 ("adagrad", dict(lr=0.05, eps=1e-6, weight_decay=0.01, maximize=True, lr_decay=0.1, initial=0.3)),
                 ("adamax", dict(lr=2e-3, eps=1e-8)),
                 ("adamax", dict(lr=0.01, eps=1e-3, weight_decay=0.01, maximize=True, beta1=0.8, beta2=0.9)),
                 ("nadam", dict(lr=2e-3, eps=1e-8)),
                 ("nadam", dict(lr=0.01, eps=1e-8, weight_decay=0.1, maximize=True, momentum_decay=0.05)),
                 ("nadam", dict(lr=0.01, eps=1e-8, weight_decay=0.1, decoupled=True, beta2=0.99)),
                 # rho_t grows by about 1 a step from 1: past 5 (rectified) from step 6 with beta2 0.9, 7 with 0.8
                 ("radam", dict(lr=0.01, eps=1e-8, weight_decay=0.01, maximize=True, beta2=0.9)),
                 ("radam", dict(lr=0.01, eps=1e-8, weight_decay=0.1, decoupled=True, beta1=0.5, beta2=0.8)),
                 ("radam", dict(lr=1e-3, eps=1e-8)),
                 ("adadelta", dict(lr=1.0, eps=1e-6)),
                 ("adadelta", dict(lr=0.5, eps=1e-4, weight_decay=0.01, maximize=True, rho=0.7))]


def rule_steps(rule, param, grads, settings):
    """The steps of `grads` by cnn_gpu.gpu.optim's single-parameter launcher of `rule` on emu, in
    place; the state arrays."""
    hyper = dict(settings)
    lr, eps, wd, maximize = (hyper.pop(k, d) for k, d in (("lr", 0), ("eps", 0), ("weight_decay", 0.0),
                                                         ("maximize", False)))
    beta1, beta2 = hyper.pop("beta1", 0.9), hyper.pop("beta2", 0.999)
    decays = (0.0, wd) if hyper.pop("decoupled", False) else (wd, 0.0)
    first = np.full_like(param, hyper.pop("initial", 0.0) if rule == "adagrad" else 0.0)
    second, mu_product = np.zeros_like(param), 1.0
    for step, grad in enumerate(grads, start=1):
        if rule == "adagrad":
            optim.adagrad_step("emu", param, grad, first, step, lr, hyper.get("lr_decay", 0.0), wd, eps, maximize)
        elif rule == "adamax":
            optim.adamax_step("emu", param, grad, first, second, step, lr, beta1, beta2, eps, wd, maximize)
        elif rule == "nadam":
            mu_product, grad_step, avg_step = nadam_step_sizes(lr, beta1, hyper.get("momentum_decay", 4e-3), step,
                                                               mu_product)
            optim.nadam_step("emu", param, grad, first, second, step, grad_step, avg_step, lr, beta1, beta2, eps,
                             *decays, maximize)
        elif rule == "radam":
            optim.radam_step("emu", param, grad, first, second, step, lr, beta1, beta2, eps, *decays, maximize)
        else:
            optim.adadelta_step("emu", param, grad, first, second, lr, hyper.get("rho", 0.9), eps, wd, maximize)
    return first, second


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule, settings", RULE_SETTINGS, ids=lambda s: s if isinstance(s, str) else
                         "-".join(f"{k}{v}" for k, v in s.items()))
@guarded
def test_rule_step(rule, settings, dtype):
    """Each two-state rule's kernel over 8 steps of 1001 elements against its formulas in float64
    (RAdam's both sides of its switch)."""
    rng = np.random.default_rng(29)
    param0 = rng.standard_normal(1001).astype(dtype)
    grads = [rng.standard_normal(param0.shape).astype(dtype) for _ in range(8)]
    param = param0.copy()
    first, second = rule_steps(rule, param, grads, settings)
    expected = reference_rule(rule, param0.astype(np.float64), [g.astype(np.float64) for g in grads], **settings)
    for got, want, name in zip((param, first, second), expected, ("param", "first state", "second state")):
        if rule != "adagrad" or name != "second state":
            assert_close(got, want.astype(dtype), dtype, f"{rule} {name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_rule_kernels_over_several_slots_pass_the_race_check_bit_for_bit(dtype):
    """Each rule's multi-parameter launch (3 slots of sizes around a round, steps 1, 2 and 6 in one
    launch: RAdam's rectified and plain slots together; float16 with FP32 master weights) under guard
    zones, the race check and a random schedule gives the forward schedule's bits."""
    from cnn_gpu import emu
    rng = np.random.default_rng(31)
    sizes, steps = (5, 1024, 1500), (1, 2, 6)
    state_dtype = np.float32 if dtype == np.float16 else dtype
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = [np.abs(rng.standard_normal(n)).astype(state_dtype) for n in sizes for _ in range(2)]

    def launch(kind, **checking):
        p, s = [a.copy() for a in params], [a.copy() for a in states]
        masters = [a.astype(np.float32) for a in params] if dtype == np.float16 else [None] * 3
        per_slot = {"adagrad": lambda k: (s[2 * k], steps[k]), "adamax": lambda k: (*s[2 * k:2 * k + 2], steps[k]),
                    "nadam": lambda k: (*s[2 * k:2 * k + 2], steps[k], 1e-3 * (k + 1), 2e-3),
                    "radam": lambda k: (*s[2 * k:2 * k + 2], steps[k]), "adadelta": lambda k: tuple(s[2 * k:2 * k + 2])}
        rest = {"adagrad": (0.01, 0.1, 0.01, 1e-10), "adamax": (2e-3, 0.9, 0.999, 1e-8, 0.01),
                "nadam": (2e-3, 0.9, 0.999, 1e-8, 0.01), "radam": (1e-3, 0.9, 0.999, 1e-8, 0.01),
                "adadelta": (1.0, 0.9, 1e-6, 0.01)}
        with emu.checking(guard=True, **checking):
            getattr(optim, f"{kind}_steps")("emu", [(p[k], grads[k], *per_slot[kind](k), masters[k]) for k in range(3)],
                                            *rest[kind])
        return p + s + [m for m in masters if m is not None]

    for kind in ("adagrad", "adamax", "nadam", "radam", "adadelta"):
        expected = launch(kind, schedule="forward")
        for i, (got, want) in enumerate(zip(launch(kind, race=True, schedule="random", seed=5), expected)):
            assert_same_bits(got, want, f"{kind} array {i}")
        assert not any(np.array_equal(a, b) for a, b in zip(expected[:3], params)), kind   # every parameter updated


def run_every_other_kernel(dtype):
    """One launch of each non-pool kernel family on fixed inputs; the outputs, in order."""
    rng = np.random.default_rng(17)
    x, dy = (rng.standard_normal((2, 3, 5, 7)).astype(dtype) for _ in range(2))
    outputs = []
    for name, forward_args, backward_args in ACTIVATIONS:
        outputs += [getattr(F, name)(x, *forward_args, backend="emu"),
                    getattr(F, f"{name}_backward")(dy, x, *backward_args, backend="emu")]
    outputs.append(elementwise.bias_add("emu", x.copy(), rng.standard_normal(3).astype(dtype)))
    w, b = rng.standard_normal((4, 7)).astype(dtype), rng.standard_normal(4).astype(dtype)
    rows = x.reshape(-1, 7)
    outputs.append(F.linear(rows, w, b, backend="emu"))
    outputs += [g for g in F.linear_backward(rng.standard_normal((30, 4)).astype(dtype), rows, w, backend="emu")]
    loss, dpred = F.mse_loss(x, dy, backend="emu")
    outputs += [np.array(loss), dpred]
    param, grad, buf = x.copy(), dy.copy(), np.empty_like(x)
    optim.sgd_step("emu", param, grad, buf, 0.1, 0.9, 0.01, True, True)
    m, v = np.zeros_like(x), np.zeros_like(x)
    optim.adam_step("emu", param, grad, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01)
    outputs += [param, buf, m, v]
    for rule, settings in dict(RULE_SETTINGS).items():   # each rule once, with its last settings
        param = x.copy()
        outputs += [param, *rule_steps(rule, param, [dy], settings)]
    return outputs


@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_other_kernels_under_schedules(schedule):
    for dtype in DTYPES:
        with emu_checking("forward"):
            expected = run_every_other_kernel(dtype)
        with emu_checking(schedule, seed=3):
            got = run_every_other_kernel(dtype)
        for i, (a, e) in enumerate(zip(got, expected)):
            assert_same_bits(a, e, f"output {i} ({np.dtype(dtype).name}) under {schedule}")


def test_optimizer_rejects_mismatched_state():
    param = np.zeros(5)
    with pytest.raises(ValueError, match="momentum_buf"):
        optim.sgd_step("emu", param, np.zeros(5), np.zeros(4), 0.1, 0.9, 0.0, False, True)


# --- the same on a GPU --------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sweep(dtype):
    rng = np.random.default_rng(1000)
    for i in range(SWEEP_SIZE):
        check_max_pool("cuda", random_pool_config(rng, "max"), dtype, ("normal", "ties", "nan", "nans")[i % 4], seed=i)
    rng = np.random.default_rng(2000)
    for i in range(SWEEP_SIZE):
        check_avg_pool("cuda", random_pool_config(rng, "avg"), dtype, seed=i)
    for name, forward_args, backward_args in ACTIVATIONS:
        x, dy = (rng.standard_normal((3, 4, 5, 6)).astype(dtype) for _ in range(2))
        xb, dyb = to_backend("cuda", x, dy)
        forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
        assert_close(forward(xb, *forward_args), forward(x, *forward_args, backend="numpy"), dtype, name)
        assert_close(backward(dyb, xb, *backward_args), backward(dy, x, *backward_args, backend="numpy"),
                     dtype, name)
    logits = rng.standard_normal((64, 10)).astype(dtype)
    labels = rng.integers(0, 10, 64)
    (logits_b, labels_b) = to_backend("cuda", logits, labels)
    loss, dlogits = F.cross_entropy(logits_b, labels_b)
    loss0, dlogits0 = F.cross_entropy(logits, labels, backend="numpy")
    assert loss == pytest.approx(loss0, rel=tolerance(dtype))
    assert_close(dlogits, dlogits0, dtype, "cross_entropy")
    for outer, channels, inner in REDUCE_SHAPES:
        a = rng.standard_normal((outer, channels, inner)).astype(dtype)
        (ab,) = to_backend("cuda", a)
        first, second = (reduce.channel_sum("cuda", ab, outer, channels, inner) for _ in range(2))
        assert_same_bits(first, second, "channel_sum on cuda")
        assert_close(first, a.sum(axis=(0, 2)), dtype, "channel_sum on cuda")


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_residual_additions_are_the_emulators(dtype):
    """F.add_relu and F.relu_backward_of_sum on a GPU are the emulator's results, bit for bit: the
    sum in acc_t rounded once, float32 subnormals flushed alike (-ftz=true), NaN and inf passed."""
    rng = np.random.default_rng(15)
    a, b, x = (rng.standard_normal((3, 4, 5, 6)).astype(dtype) for _ in range(3))
    # a subnormal sum where x > 0: flushed to 0 by both (-ftz=true), kept by NumPy
    a.ravel()[:4], b.ravel()[:4] = np.array([np.nan, np.inf, 1.0, np.finfo(dtype).tiny / 4], dtype), [1, 1, 1, 0]
    x.ravel()[:4] = 1
    ab, bb, xb = to_backend("cuda", a, b, x)
    assert_same_bits(F.add_relu(ab, bb), F.add_relu(a, b, backend="emu"), "add_relu on cuda")
    assert_same_bits(F.relu_backward_of_sum(ab, bb, xb), F.relu_backward_of_sum(a, b, x, backend="emu"),
                     "relu_backward_of_sum on cuda")


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_cuda_float16_channel_sums_are_the_emulators():
    """reduce.cu's float16 build on a GPU: FP32 sums in the emulator's fixed order, rounded once by
    cvt.rn.f16.f32, so bit for bit the emulator's results (two-level (3, 2, 4900) included)."""
    rng = np.random.default_rng(14)
    for outer, channels, inner in REDUCE_SHAPES + [(3, 2, 4900)]:
        a = (rng.standard_normal((outer, channels, inner)) * 8).astype(np.float16)
        (ab,) = to_backend("cuda", a)
        assert_same_bits(reduce.channel_sum("cuda", ab, outer, channels, inner),
                         reduce.channel_sum("emu", a, outer, channels, inner), f"float16 channel_sum {a.shape}")


def test_bias_add_fills_its_blocks_on_small_planes():
    """conv_transpose2d's bias on 512 planes of 7x7 (the SIMT dgrad's output): for_each_plane_element
    groups 20 planes a block, 26 blocks whose warps store 32 consecutive elements (794 store requests
    for the 25088 elements, the groups' ends partial), where one plane a block row ran 512 blocks of
    49 busy threads of 256 (1024 requests: a full warp and one of 17 lanes a plane)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((8, 32, 7, 7)).astype(np.float32), rng.standard_normal((32, 64, 1, 1)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    with emu.profiling() as profile:
        y = F.conv_transpose2d(x, w, b, backend="emu")
    assert profile.kernels["bias_add_nchw"]["grid"] == (1, 26, 1)
    stores = [site["requests"] for site in profile.sites if site["kernel"] == "bias_add_nchw" and site["op"] == "store"]
    assert sorted(stores) == [26, 794]   # the group's bias table in shared memory, then y
    np.testing.assert_allclose(y, F.conv_transpose2d(x, w, b, backend="numpy"), rtol=1e-5, atol=1e-5)
