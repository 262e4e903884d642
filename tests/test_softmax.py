"""F.softmax / F.log_softmax, their backward passes (from the forward output y) and nn.Softmax /
nn.LogSoftmax: float64 references written out here, PyTorch CPU for non-finite rows and the layers,
finite differences, the kernels on the emulator (guard zones and the race check) in every layout
(contiguous rows: a block a row; inner > 1: a thread a row, or a block's segments a row where the rows
are few, as (513, 3) over dim 0: test_split_rows.py), float16, and bad inputs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.gpu import softmax as gpu_softmax
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, to_host

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")
KERNEL_BACKENDS = [pytest.param("emu", marks=needs_emu),
                   pytest.param("cuda", marks=pytest.mark.skipif(
                       "cuda" not in backend.available_backends(),
                       reason=f"cuda backend unavailable: {backend.why_unavailable('cuda')}"))]
BACKENDS = ["numpy"] + KERNEL_BACKENDS
NAMES = ("softmax", "log_softmax")
F16 = np.float16

# (shape, dim): every rank, negative dims, contiguous rows (the last dim) shorter and longer than a
# block (256 threads), strided rows (inner > 1) short and long, and one-element rows
CASES = [((7,), 0), ((5,), -1), ((3, 5), 1), ((3, 5), 0), ((3, 5), -2), ((2, 3, 4), 0), ((2, 3, 4), -2),
         ((2, 3, 4), 2), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -1), ((3, 700), 1), ((2, 1000), -1), ((2, 300, 5), 1),
         ((513, 3), 0), ((4, 1), 1), ((1, 6), 0)]


def reference(name, x, axis):
    """The float64 forward pass, max-subtracted."""
    x = x.astype(np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=axis, keepdims=True))
    return z - log_sum if name == "log_softmax" else np.exp(z - log_sum)


def reference_backward(name, dy, y, axis):
    """PyTorch's formulas in float64, from the output y."""
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    if name == "log_softmax":
        return dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def on(be, a):
    """a on backend be's kind of array (CuPy for cuda)."""
    return backend.array_module(be).asarray(a) if be == "cuda" else a


def run(name, be, x, dy, dim):
    y = getattr(F, name)(on(be, x), dim, backend=be)
    dx = getattr(F, f"{name}_backward")(on(be, dy), y, dim, backend=be)
    return to_host(y), to_host(dx)


def inputs(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (np.asarray(scale * rng.standard_normal(shape), dtype=dtype),
            np.asarray(rng.standard_normal(shape), dtype=dtype))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_matches_the_float64_reference(name, dtype, be):
    for shape, dim in CASES:
        x, dy = inputs(shape, dtype, seed=len(shape) + dim)
        y, dx = run(name, be, x, dy, dim)
        axis = dim % len(shape)
        assert_close(y, reference(name, x, axis).astype(dtype), dtype, f"{name} {shape} dim {dim}")
        # dx against the formula on the y we returned: the backward pass alone
        assert_close(dx, reference_backward(name, dy, y, axis).astype(dtype), dtype, f"{name}_backward {shape} {dim}")
        if name == "softmax":
            assert_close(y.sum(axis=axis), np.ones(y.sum(axis=axis).shape, dtype), dtype, "rows sum to 1")


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_a_zero_dimensional_input_is_its_own_row(name, be):
    """PyTorch takes dim 0 or -1 of a 0-d tensor: softmax 1, log_softmax 0, gradient 0."""
    for dim in (0, -1):
        y, dx = run(name, be, np.array(2.5), np.array(-1.5), dim)
        assert y.shape == dx.shape == ()
        assert y == (0.0 if name == "log_softmax" else 1.0) and dx == 0.0


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_float16_computes_in_fp32_and_rounds_once(name, be):
    """float16 in and out; the float32 result rounded once (the oracle's rule), within one float16
    ulp where the kernels' FP32 sums differ in order from NumPy's."""
    for shape, dim in CASES:
        x, dy = inputs(shape, F16, seed=7)
        y, dx = run(name, be, x, dy, dim)
        assert y.dtype == dx.dtype == F16
        axis = dim % len(shape)
        want_y = reference(name, x, axis).astype(F16)
        want_dx = reference_backward(name, dy, y, axis).astype(F16)
        for got, want, what in ((y, want_y, "y"), (dx, want_dx, "dx")):
            ulp = np.spacing(np.abs(want)).astype(np.float64)
            error = np.abs(got.astype(np.float64) - want.astype(np.float64))
            assert (error <= ulp).all(), f"{name} {shape} dim {dim} {what}: {error.max()} > one ulp"


@needs_emu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case on the emulator with guard zones (an access past any array faults) and the race
    check (unordered shared-memory or global accesses of two threads fail), random schedules."""
    with emu.checking(guard=True, race=True, schedule="random", seed=3):
        for name in NAMES:
            for shape, dim in CASES:
                x, dy = inputs(shape, dtype, seed=11)
                y, dx = run(name, "emu", x, dy, dim)
                want_y = getattr(F, name)(x, dim, backend="numpy")
                want_dx = getattr(F, f"{name}_backward")(dy, y, dim, backend="numpy")   # from the same y
                # a few roundings apart (sums in another order): eps-sized, never a wrong element
                eps = float(np.finfo(dtype).eps)
                np.testing.assert_allclose(y, want_y, rtol=0, atol=8 * eps * max(1.0, float(np.abs(want_y).max())),
                                           err_msg=f"{name} {shape} {dim}")
                np.testing.assert_allclose(dx, want_dx, rtol=0, atol=16 * eps * max(1.0, float(np.abs(dy).max())),
                                           err_msg=f"{name}_backward {shape} {dim}")


@needs_emu
def test_kernels_are_bit_identical_run_to_run_and_read_views():
    """Fixed-order reductions: the same bits under two schedules; a transposed view reads as its
    C-order copy."""
    x, dy = inputs((300, 37), np.float32, seed=5)
    for name in NAMES:
        with emu.checking(schedule="random", seed=1):
            first = run(name, "emu", x, dy, 0)
        with emu.checking(schedule="random", seed=2):
            second = run(name, "emu", x, dy, 0)
        for a, b in zip(first, second):
            assert a.tobytes() == b.tobytes()
        np.testing.assert_array_equal(run(name, "emu", x.T, dy.T, 1)[0], run(name, "emu", x.T.copy(), dy.T, 1)[0])


ROWS = np.array([[-np.inf, -np.inf, -np.inf, -np.inf],   # all -inf: NaN throughout
                 [-np.inf, 1.0, 2.0, -np.inf],           # -inf beside finite values: 0 / -inf there
                 [np.inf, 1.0, 2.0, 0.0],                 # +inf: NaN throughout
                 [np.inf, np.inf, 0.0, 1.0],
                 [np.nan, 1.0, 2.0, 3.0],                 # NaN: NaN throughout
                 [3.0, np.nan, 1.0, 2.0],
                 [-np.inf, np.inf, 0.0, 0.0],
                 [1e30, -1e30, 0.0, 5.0],                 # no overflow: the maximum is subtracted
                 [-70000.0, -70001.0, -70002.0, -69999.0]])


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_rows_as_pytorch(name, dtype, be):
    """NaN, +inf and -inf propagate as PyTorch's CPU op gives them, forward and backward, in
    contiguous rows and in strided ones (the transposed array over dim 0)."""
    torch = pytest.importorskip("torch")
    with np.errstate(over="ignore"):
        x = ROWS.astype(dtype)
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch, name)(xt, 1)
    yt.backward(torch.tensor(dy))
    for layout, x_in, dy_in, dim, back in (("rows", x, dy, 1, lambda a: a),
                                           ("columns", x.T.copy(), dy.T.copy(), 0, lambda a: a.T)):
        y, dx = run(name, be, x_in, dy_in, dim)
        for got, want, what in ((back(y), yt.detach().numpy(), "y"), (back(dx), xt.grad.numpy(), "dx")):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{layout} {what}: NaNs")
            np.testing.assert_array_equal(np.isinf(got) & (got > 0), np.isinf(want) & (want > 0))
            np.testing.assert_array_equal(np.isinf(got) & (got < 0), np.isinf(want) & (want < 0))
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite].astype(np.float64), want[finite].astype(np.float64),
                                       rtol=2e-3 if dtype == F16 else 1e-5, atol=1e-3 if dtype == F16 else 1e-6,
                                       err_msg=f"{layout} {what}")


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_by_finite_differences(name, be):
    """float64 central differences of the forward pass against the backward pass from y, in both
    kernel layouts."""
    rng = np.random.default_rng(8)
    for shape, dim in (((3, 6), 1), ((2, 5, 3), 1), ((4, 3), 0), ((300, 2), 0)):
        def forward(x):
            return getattr(F, name)(x, dim, backend=be)

        def backward(dy, x):
            return getattr(F, f"{name}_backward")(dy, forward(x), dim, backend=be)

        report = check_op(forward, backward, [2 * rng.standard_normal(shape)], names=["x"])
        assert report.max_rel_error < 1e-6, f"{shape} dim {dim}: {report}"


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_empty_inputs_give_empty_results(name, be):
    """PyTorch returns an empty tensor of the input's shape for any dim, the empty one included."""
    for shape, dim in (((0, 3), 1), ((0, 3), 0), ((2, 0, 4), 1), ((2, 0, 4), -1)):
        x = np.empty(shape, np.float32)
        y, dx = run(name, be, x, x, dim)
        assert y.shape == dx.shape == shape and y.dtype == dx.dtype == np.float32


def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("launched")
    monkeypatch.setattr(backend, "launch", no_launch)
    x = np.zeros((2, 3), np.float32)
    for name in NAMES:
        forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
        for dim in (2, -3):   # PyTorch: IndexError, "Dimension out of range"
            with pytest.raises(IndexError, match=rf"dim {dim} is out of range .*\[-2, 1\]"):
                forward(x, dim, backend="emu")
            with pytest.raises(IndexError, match="out of range"):
                backward(x, x, dim, backend="emu")
        with pytest.raises(IndexError, match=r"\[-1, 0\]"):
            forward(np.zeros((), np.float32), 1, backend="emu")
        for dim in (1.0, True, None, "1"):
            with pytest.raises(TypeError, match="dim must be an int"):
                forward(x, dim, backend="emu")
        with pytest.raises(TypeError, match="x must be float16, float32 or float64"):
            forward(np.zeros((2, 3), np.int32), 1, backend="emu")
        with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
            forward([[1.0, 2.0]], 1, backend="emu")
        with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\) \(the shape of y\)"):
            backward(np.zeros((3, 2), np.float32), x, 1, backend="emu")
        with pytest.raises(TypeError, match="dy has dtype float64 but y has dtype float32"):
            backward(x.astype(np.float64), x, 1, backend="emu")
        with pytest.raises(TypeError, match="float16"):
            backward(x.astype(F16), x, 1, backend="emu")
        with pytest.raises(TypeError):
            forward(x)   # dim is required, as in F.softmax without PyTorch's deprecated implicit dim


def test_a_dimension_past_the_kernels_int_is_refused_before_any_launch(monkeypatch):
    """The kernels take the softmax dimension's size as an int: 2^31 or more is refused, not wrapped
    (a broadcast view: no memory behind it)."""
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    x = np.broadcast_to(np.float32(0), (1, 2**31))
    with pytest.raises(ValueError, match="32-bit int"):
        gpu_softmax.forward("emu", x, (1, 2**31, 1), False)
    with pytest.raises(ValueError, match="32-bit int"):
        gpu_softmax.backward("emu", x, x, (1, 2**31, 1), True)


# --- layers --------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("layer", ["Softmax", "LogSoftmax"])
def test_layers_match_torch(layer, dtype, be):
    torch = pytest.importorskip("torch")
    x, dy = inputs((3, 4, 5), dtype, seed=9)
    for dim in (0, 1, -1):
        ours = getattr(nn, layer)(dim).to(be)
        theirs = getattr(torch.nn, layer)(dim)
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dy.astype(np.float64)))
        y = to_host(ours(on(be, x)))
        dx = to_host(ours.backward(on(be, dy)))
        assert y.dtype == dx.dtype == dtype
        tol = 2e-3 if dtype == F16 else 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol * float(np.abs(dy).max()))


@pytest.mark.torch
@pytest.mark.parametrize("layer", ["Softmax", "LogSoftmax"])
def test_layers_without_dim_take_torchs_implicit_dim_and_warn(layer):
    """PyTorch's legacy rule: dim 0 for 0-, 1- and 3-D inputs, 1 otherwise, with its warning."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    for shape in ((), (4,), (2, 3), (2, 3, 4), (2, 3, 4, 5)):
        x = np.asarray(rng.standard_normal(shape))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            want = getattr(torch.nn, layer)()(torch.tensor(x)).numpy()
        torch_message = str(caught[-1].message)
        with pytest.warns(UserWarning) as ours:
            y = getattr(nn, layer)()(x)
        assert [str(w.message) for w in ours] == [torch_message]
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(nn, layer)(1)(np.zeros((2, 3)))   # an explicit dim: no warning


@pytest.mark.parametrize("layer", ["Softmax", "LogSoftmax"])
def test_layer_backward_uses_its_saved_output(layer):
    """backward takes the saved forward output and the dim the forward used; before a forward it is
    an error, and with nothing to compute it returns None."""
    x, dy = inputs((4, 6), np.float64, seed=12)
    module = getattr(nn, layer)(-1)
    with pytest.raises(RuntimeError, match="before forward"):
        module.backward(dy)
    y = module(x)
    fn = "log_softmax" if layer == "LogSoftmax" else "softmax"
    np.testing.assert_array_equal(module.backward(dy), getattr(F, f"{fn}_backward")(dy, y, -1))
    assert module.backward(None, input_grad=False) is None
    assert repr(module) == f"{layer}(dim=-1)" and repr(getattr(nn, layer)()) == f"{layer}(dim=None)"
    with pytest.raises(TypeError, match="dim must be an int or None"):
        getattr(nn, layer)(1.5)
    with pytest.raises(IndexError, match="out of range"):
        module.dim = 2
        module(x)


def test_a_row_past_the_blocks_int_walk_is_refused_before_any_launch(monkeypatch):
    """softmax_rows and cross_entropy_rows walk a row with an int stepping by their 256 threads: a row
    of more than 2^31 - 256 elements, which would overflow it past the row's end, is refused before
    any launch or allocation (broadcast views: no memory behind them)."""
    from cnn_gpu.gpu import loss as gpu_loss
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    size = 2**31 - 255
    x = np.broadcast_to(np.float32(1), (1, size))
    with pytest.raises(ValueError, match=f"a row of {size} elements"):
        gpu_softmax._launch("emu", "softmax_forward", (x,), x, (1, size, 1), False)
    with pytest.raises(ValueError, match=f"a row of {size} elements"):
        gpu_loss.cross_entropy("emu", x, np.zeros(1, np.int64), None, None, classes=size, inner=1, ignore_index=-100,
                               label_smoothing=0.0, reduction="mean")
