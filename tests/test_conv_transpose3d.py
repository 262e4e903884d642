"""conv_transpose3d, conv_transpose3d_backward, nn.ConvTranspose3d and the lazy 3-D convolutions: conv3d's
passes with the roles swapped (forward: conv3d's input gradient; backward: conv3d's forward and weight
gradient), on the NumPy path and the implicit-GEMM kernel (kernels/conv3d_fprop.cu).

Proof: PyTorch CPU values and gradients through autograd (stride, padding, output_padding below the stride
and, past it, below the dilation, dilation, groups, bias, unbatched) on numpy and emu in float64 (1e-10) and
float32 (1e-5), and a seeded sweep of configurations; the direct loops of reference_loops.py; finite
differences; float16 against the NumPy oracle (FP32 math, rounded once); the tf32 math mode's rounded
operands; the emulator's guard zones, race check and reverse/random schedules on forced tiles; refusals
before any launch, each one PyTorch makes too; the layer (output_size=, state_dict both ways) against
torch.nn.ConvTranspose3d; the lazy modules in test_lazy_modules.py."""
import numpy as np
import pytest

import reference_loops as ref
from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.functional.conv_transpose3d import conv_transpose3d_geometry
from cnn_gpu.gpu import conv, conv3d as gpu_conv3d
from cnn_gpu.gradcheck import check_op
from helpers import (assert_close, assert_refused_as_torch_refuses, assert_refused_before_any_launch,
                     assert_transposed_layer_matches_torch, assert_within_a_float16_rounding, needs_emu)


# (x shape, weight shape, stride, padding, output_padding, groups, dilation, bias)
CASES = {
    "plain": ((2, 3, 3, 4, 5), (3, 4, 3, 2, 3), 1, 1, 0, 1, 1, True),
    "upsampling": ((2, 4, 3, 2, 4), (4, 2, 2, 3, 2), (2, 2, 3), (0, 1, 1), (1, 1, 2), 2, 1, True),
    # output_padding at or past the stride, below the dilation (PyTorch's other rule)
    "dilated": ((1, 2, 3, 4, 3), (2, 3, 2, 2, 3), (1, 2, 1), (1, 0, 2), (1, 1, 1), 1, (2, 2, 3), False),
    "unbatched": ((4, 3, 2, 3), (4, 1, 2, 2, 1), (1, 2, 2), 1, (0, 1, 1), 2, 1, True),
    "pointwise": ((2, 4, 3, 3, 3), (4, 2, 1, 1, 1), 1, 0, 0, 1, 1, False),
    # a kernel smaller than the stride: output voxels no tap reaches are the bias alone
    "sparse": ((1, 2, 3, 2, 3), (2, 2, 1, 2, 1), (3, 2, 2), 0, (2, 1, 1), 1, 1, True),
}
OPTION_NAMES = ("stride", "padding", "output_padding", "groups", "dilation")
BACKEND_DTYPES = [pytest.param(be, dtype, marks=needs_emu if be == "emu" else (), id=f"{be}-{np.dtype(dtype)}")
                  for be in ("numpy", "emu") for dtype in (np.float64, np.float32)]


def operands(case, dtype, seed=0):
    x_shape, w_shape, *_, groups, _, bias = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    return x, w, rng.standard_normal(w_shape[1] * groups).astype(dtype) if bias else None, rng


def options(case):
    return dict(zip(OPTION_NAMES, CASES[case][2:7]))


def _torch_values_and_gradients(torch, x, w, b, dy_of, settings):
    """PyTorch's y and (dx, dw, db) through autograd, dy drawn by dy_of(y's shape)."""
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv_transpose3d(xt, wt, bt, **settings)
    dy = dy_of(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), dy, [None if t is None else t.grad.numpy() for t in (xt, wt, bt)]


@pytest.mark.parametrize("be, dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_match_torch(torch, case, be, dtype):
    x, w, b, rng = operands(case, dtype)
    want_y, dy, want = _torch_values_and_gradients(torch, x, w, b, lambda s: rng.standard_normal(s).astype(dtype),
                                                   options(case))
    assert_close(F.conv_transpose3d(x, w, b, **options(case), backend=be), want_y, dtype, f"{case} y")
    grads = F.conv_transpose3d_backward(dy, x, w, **options(case), bias=b is not None, backend=be)
    for ours, theirs, name in zip(grads, want, ("dx", "dw", "db")):
        if theirs is None:
            assert ours is None, name
        else:
            assert_close(ours, theirs, dtype, f"{case} {name}")


def draw(rng):
    """A random conv_transpose3d configuration: (x shape, weight shape, options), each option an int or a
    triple, output_padding below the stride or the dilation of its axis, groups 1 to 3, unbatched a fifth
    of the time."""
    groups = int(rng.choice([1, 1, 2, 3]))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 3))
    stride = tuple(int(v) for v in rng.integers(1, 4, 3))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 3))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    padding = tuple(int(v) for v in rng.integers(0, 3, 3)) if rng.random() < 0.5 else int(rng.integers(0, 2))
    pads = (padding,) * 3 if isinstance(padding, int) else padding
    # inputs large enough that the output is not empty
    sizes = [max(1, -(-(2 * p - d * (k - 1)) // s) + 1) + int(rng.integers(0, 3))
             for p, d, k, s in zip(pads, dilation, kernel, stride)]
    x_shape = (int(rng.integers(1, 3)), groups * int(rng.integers(1, 3)), *sizes)
    w_shape = (x_shape[1], int(rng.integers(1, 3)), *kernel)
    if rng.random() < 0.2:
        x_shape = x_shape[1:]
    settings = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                    dilation=dilation)
    if rng.random() < 0.3:   # the ints PyTorch takes too
        settings = {name: value[0] if isinstance(value, tuple) and len(set(value)) == 1 else value
                    for name, value in settings.items()}
    return x_shape, w_shape, settings


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_seeded_sweep_matches_torch(torch, be):
    """60 random configurations (draw) against PyTorch in float64: y, dx, dw and db."""
    rng = np.random.default_rng(21)
    for _ in range(60):
        x_shape, w_shape, settings = draw(rng)
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        b = rng.standard_normal(w_shape[1] * settings["groups"])
        want_y, dy, want = _torch_values_and_gradients(torch, x, w, b, rng.standard_normal, settings)
        what = f"{x_shape} {w_shape} {settings}"
        assert_close(F.conv_transpose3d(x, w, b, **settings, backend=be), want_y, np.float64, f"{what} y")
        for ours, theirs, name in zip(F.conv_transpose3d_backward(dy, x, w, **settings, backend=be), want,
                                      ("dx", "dw", "db")):
            assert_close(ours, theirs, np.float64, f"{what} {name}")


@pytest.mark.parametrize("case", ["upsampling", "unbatched"])
def test_numpy_path_matches_the_direct_loops(case):
    """y is conv3d's input gradient of x (reference_loops' scatter loop), dx conv3d's forward of dy, dw
    conv3d's weight gradient with x and dy swapped."""
    x, w, b, rng = operands(case, np.float64, seed=1)
    settings = options(case)
    conv_settings = {name: settings[name] for name in ("stride", "padding", "dilation", "groups")}
    unbatched = x.ndim == 4
    xb = x[None] if unbatched else x
    g = conv_transpose3d_geometry(xb.shape, w.shape, **settings)
    y = F.conv_transpose3d(x, w, b, **settings, backend="numpy")
    want = ref.conv3d_input_grad(xb, w, g.x_shape, **conv_settings) + b[:, None, None, None]
    assert_close(y, want[0] if unbatched else want, np.float64, "y")
    dy = rng.standard_normal(y.shape)
    dyb = dy[None] if unbatched else dy
    dx, dw, db = F.conv_transpose3d_backward(dy, x, w, **settings, backend="numpy")
    want_dx = ref.conv3d(dyb, w, None, **conv_settings)
    assert_close(dx, want_dx[0] if unbatched else want_dx, np.float64, "dx")
    assert_close(dw, ref.conv3d_weight_grad(xb, dyb, w.shape, **conv_settings), np.float64, "dw")
    assert_close(db, dyb.sum(axis=(0, 2, 3, 4)), np.float64, "db")


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("case", ["upsampling", "dilated"])
def test_finite_differences(be, case):
    x, w, b, _ = operands(case, np.float64, seed=2)
    inputs = [x, w] if b is None else [x, w, b]

    def forward(x, w, b=None):
        return F.conv_transpose3d(x, w, b, **options(case), backend=be)

    def backward(dy, x, w, b=None):
        dx, dw, db = F.conv_transpose3d_backward(dy, x, w, **options(case), bias=b is not None, backend=be)
        return (dx, dw) if b is None else (dx, dw, db)

    report = check_op(forward, backward, inputs)
    assert report.max_rel_error < 1e-6, str(report)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_gradients_not_wanted_are_not_computed(monkeypatch, be):
    """input_grad=False, weight_grad=False and bias=False give None for those gradients, the others as the
    full call's, and on the kernels skip their passes (fewer launches)."""
    x, w, b, rng = operands("upsampling", np.float64, seed=5)
    dy = rng.standard_normal(F.conv_transpose3d(x, w, b, **options("upsampling")).shape)
    launched = []
    real = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args, **kwargs: launched.append(args[3]) or real(*args, **kwargs))
    full = F.conv_transpose3d_backward(dy, x, w, **options("upsampling"), backend=be)
    everything = len(launched)
    for flags, kept in ((dict(input_grad=False), (1, 2)), (dict(weight_grad=False), (0, 2)),
                        (dict(bias=False), (0, 1))):
        launched.clear()
        grads = F.conv_transpose3d_backward(dy, x, w, **options("upsampling"), **flags, backend=be)
        assert [i for i, grad in enumerate(grads) if grad is not None] == list(kept), flags
        for i in kept:
            np.testing.assert_array_equal(grads[i], full[i], err_msg=f"{flags} {i}")
        assert be == "numpy" or len(launched) < everything, (flags, launched)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_float16_is_the_float32_math_rounded_once(be):
    case = "upsampling"
    x, w, b, rng = operands(case, np.float16, seed=3)
    dy = rng.standard_normal(F.conv_transpose3d(x, w, b, **options(case), backend="numpy").shape).astype(np.float16)
    wide = [a.astype(np.float32) for a in (x, w, b, dy)]
    y = F.conv_transpose3d(x, w, b, **options(case), backend=be)
    grads = F.conv_transpose3d_backward(dy, x, w, **options(case), backend=be)
    want_y = F.conv_transpose3d(*wide[:3], **options(case), backend="numpy")
    want = F.conv_transpose3d_backward(wide[3], wide[0], wide[1], **options(case), backend="numpy")
    for got, expected, name in zip((y,) + grads, (want_y,) + want, ("y", "dx", "dw", "db")):
        assert_within_a_float16_rounding(got, expected, name)
    # the same backend's float32 passes on the widened operands, the bias added before the one rounding
    np.testing.assert_array_equal(y, F.conv_transpose3d(*wide[:3], **options(case), backend=be).astype(np.float16))


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_tf32_mode_multiplies_tf32_rounded_operands(be):
    """In the "tf32" math mode every pass multiplies operands rounded to TF32, as conv3d's do."""
    from cnn_gpu import precision
    case = "upsampling"
    x, w, b, rng = operands(case, np.float32, seed=10)
    dy = rng.standard_normal(F.conv_transpose3d(x, w, b, **options(case), backend="numpy").shape).astype(np.float32)
    with precision.math_mode("tf32"):
        got = (F.conv_transpose3d(x, w, b, **options(case), backend=be),)
        got += F.conv_transpose3d_backward(dy, x, w, **options(case), backend=be)
    rounded = [precision.round_to_tf32(a).astype(np.float64) for a in (x, w, dy)]
    want = (F.conv_transpose3d(rounded[0], rounded[1], b.astype(np.float64), **options(case), backend="numpy"),)
    want += F.conv_transpose3d_backward(rounded[2], rounded[0], rounded[1], **options(case), backend="numpy")
    exact = F.conv_transpose3d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                        **options(case), backend="numpy")
    for ours, expected, name in zip(got, want[:3] + exact[2:], ("y", "dx", "dw", "db")):
        assert_close(ours.astype(np.float64), expected, np.float32, f"tf32 {name}")
    assert np.abs(got[2] - exact[1]).max() > 1e-4   # TF32's rounding shows (the exact weight gradient differs)


# --- the emulator's checks on forced tiles ---------------------------------------------------------

# (case, plan forced)
EMU_CASES = [("upsampling", dict(tile="large", splits=1)), ("dilated", dict(tile="tall", splits=3)),
             ("unbatched", dict(tile="small", splits=None))]


def _every_pass(case, dtype, be):
    x, w, b, rng = operands(case, dtype, seed=4)
    y = F.conv_transpose3d(x, w, b, **options(case), backend=be)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return (y,) + F.conv_transpose3d_backward(dy, x, w, **options(case), bias=b is not None, backend=be)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_emu_under_guard_zones_the_race_check_and_every_schedule(dtype):
    """Every case against the NumPy path with guard zones and the race check, then bit for bit the same
    under the reverse and random schedules."""
    from cnn_gpu import emu
    for case, plan in EMU_CASES:
        want = _every_pass(case, dtype, "numpy")
        with conv.forced(**plan):
            with emu.checking(guard=True, race=True):
                checked = _every_pass(case, dtype, "emu")
            for got, expected, name in zip(checked, want, ("y", "dx", "dw", "db")):
                if expected is not None:
                    assert_close(got, expected, dtype, f"{case} {name}")
            for schedule in ("reverse", "random"):
                with emu.checking(schedule=schedule, seed=5, guard=True):
                    for got, first, name in zip(_every_pass(case, dtype, "emu"), checked, ("y", "dx", "dw", "db")):
                        np.testing.assert_array_equal(got, first, err_msg=f"{case} {name} under {schedule}")


@pytest.mark.skipif(backend.cupy_or_none() is None, reason="no GPU: CuPy is missing or sees no device")
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
def test_cuda_matches_numpy(dtype):
    """Every pass on CuPy arrays (a GPU, or tests/cupy_sim: the cuda backend's Python on the emulator)."""
    cupy = backend.cupy_or_none()
    for case, plan in EMU_CASES:
        x, w, b, rng = operands(case, dtype, seed=9)
        y = F.conv_transpose3d(x, w, b, **options(case), backend="numpy")
        dy = rng.standard_normal(y.shape).astype(dtype)
        want = (y,) + F.conv_transpose3d_backward(dy, x, w, **options(case), bias=b is not None, backend="numpy")
        with conv.forced(**plan):
            got = (F.conv_transpose3d(cupy.asarray(x), cupy.asarray(w), None if b is None else cupy.asarray(b),
                                      **options(case)),)
            got += F.conv_transpose3d_backward(*map(cupy.asarray, (dy, x, w)), **options(case), bias=b is not None)
        for ours, expected, name in zip(got, want, ("y", "dx", "dw", "db")):
            if expected is None:
                assert ours is None, name
            elif dtype == np.float16:
                assert_within_a_float16_rounding(ours, expected, f"{case} {name}")
            else:
                assert_close(ours, expected, dtype, f"{case} {name}")


# --- refusals ----------------------------------------------------------------------------------

def _torch_backward(torch, x, w, dy):
    torch.nn.functional.conv_transpose3d(torch.tensor(x, requires_grad=True), torch.tensor(w)).backward(
        torch.tensor(dy))


def _both(**settings):
    """(ours, PyTorch's) conv_transpose3d of (x, w) with `settings`."""
    return (lambda x, w: F.conv_transpose3d(x, w, **settings),
            lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x), T.tensor(w), **settings))


@pytest.mark.parametrize("call, theirs, error, message", [
    (lambda x, w: F.conv_transpose3d(x[0, 0], w),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x[0, 0]), T.tensor(w)), ValueError,
     "x must be 4-D or 5-D"),
    (lambda x, w: F.conv_transpose3d(x, w[0]),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x), T.tensor(w[0])), ValueError, "weight must be 5-D"),
    (lambda x, w: F.conv_transpose3d(x, w.astype(np.float64)),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x), T.tensor(w.astype(np.float64))), TypeError,
     "dtype"),
    (*_both(groups=3), ValueError, "divisible by groups"),
    (lambda x, w: F.conv_transpose3d(x[:, :3], w),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x[:, :3]), T.tensor(w)), ValueError,
     "expects 4 input channels"),
    (*_both(stride=2, output_padding=2), ValueError, "output_padding .* must be smaller"),
    (*_both(output_padding=(0, 1, 0), dilation=(2, 1, 2)), ValueError, "output_padding .* must be smaller"),
    (*_both(padding=4), ValueError, "output would be empty"),
    (lambda x, w: F.conv_transpose3d(x[:, :, :0], w),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x[:, :, :0]), T.tensor(w)), ValueError,
     "empty dimension"),
    (*_both(padding="same"), TypeError, "padding must be an int or a triple"),
    (*_both(stride=(1, 2)), ValueError, "stride must be an int or a triple"),
    (*_both(stride=0), ValueError, "stride must be >= 1"),
    (*_both(padding=-1), ValueError, "padding must be >= 0"),
    (lambda x, w: F.conv_transpose3d(x, w, np.zeros(5, np.float32)),
     lambda T, x, w: T.nn.functional.conv_transpose3d(T.tensor(x), T.tensor(w), T.zeros(5)), ValueError,
     "bias must have shape"),
    (lambda x, w: F.conv_transpose3d_backward(np.zeros((2, 2, 3, 4, 4), np.float32), x, w),
     lambda T, x, w: _torch_backward(T, x, w, np.zeros((2, 2, 3, 4, 4), np.float32)), ValueError,
     "dy must have shape"),
])
def test_refused_before_any_launch_as_pytorch_refuses(monkeypatch, torch, call, theirs, error, message):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 2, 3, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 2, 2)).astype(np.float32)
    assert_refused_as_torch_refuses(monkeypatch, torch, call, theirs, (x, w), error, message)


def test_index_range_refused_before_any_launch(monkeypatch):
    """An operand of 2^31 elements or more would overflow the kernel's 32-bit offsets: refused by the plans
    of every pass before the first launch (the forward's dgrad, the backward's forward and wgrad)."""
    monkeypatch.setattr(gpu_conv3d, "INDEX_LIMIT", 3000)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 6, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32)
    for call in (lambda: F.conv_transpose3d(x, w),
                 lambda: F.conv_transpose3d_backward(np.zeros((2, 3, 8, 8, 8), np.float32), x, w),
                 lambda: F.conv_transpose3d_backward(np.zeros((2, 3, 8, 8, 8), np.float32), x, w, input_grad=False)):
        assert_refused_before_any_launch(monkeypatch, call, ValueError, "32-bit")
    # the weight gradient's plan (its checks read the same geometry as dx's) is made before the input
    # gradient's launch: its refusal launches nothing
    monkeypatch.setattr(gpu_conv3d, "INDEX_LIMIT", 2 ** 31)

    def refused_wgrad_plan(*args, **kwargs):
        raise ValueError("conv3d_wgrad: past 32-bit offsets")
    monkeypatch.setattr(gpu_conv3d, "plan_wgrad", refused_wgrad_plan)
    assert_refused_before_any_launch(
        monkeypatch, lambda: F.conv_transpose3d_backward(np.ones((2, 3, 8, 8, 8), np.float32), x, w), ValueError,
        "32-bit")


# --- the layer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("settings, x_shape, output_size", [
    (dict(stride=2, padding=1, output_padding=1), (2, 4, 2, 3, 3), None),
    (dict(stride=(1, 2, 2), groups=2, dilation=(2, 1, 1), bias=False), (4, 3, 2, 3), None),   # unbatched
    (dict(stride=(2, 3, 2), padding=(1, 0, 1)), (2, 4, 2, 3, 3), (4, 9, 5)),
    (dict(stride=2, groups=2), (4, 2, 3, 2), [6, 6, 7, 6]),   # unbatched, the output's whole shape
])
def test_layer_matches_torch(torch, settings, x_shape, output_size, be):
    """Values and gradients of nn.ConvTranspose3d against torch.nn.ConvTranspose3d given our initial
    weights, output_size= too; then PyTorch's weights loaded back into ours give the same output."""
    rng = np.random.default_rng(8)
    ours = nn.ConvTranspose3d(4, 6, (3, 2, 3), dtype=np.float64, rng=rng, **settings)
    ours.backend = be
    theirs = torch.nn.ConvTranspose3d(4, 6, (3, 2, 3), dtype=torch.float64, **settings)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = rng.standard_normal(x_shape)
    assert_transposed_layer_matches_torch(torch, ours, theirs, x, output_size, str(settings))
    for name in ("kernel_size", "stride", "padding", "output_padding", "dilation", "groups"):
        assert getattr(ours, name) == getattr(theirs, name), name
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(-0.5)
    ours.load_state_dict({name: value.numpy() for name, value in theirs.state_dict().items()})
    assert_close(ours(x, output_size=output_size), theirs(torch.tensor(x), output_size=output_size).detach().numpy(),
                 np.float64, f"{settings} y of PyTorch's weights")


def test_layer_refuses_what_torch_refuses(torch):
    for kwargs in (dict(groups=4), dict(padding_mode="reflect")):
        arguments = dict(in_channels=3, out_channels=6, kernel_size=3) | kwargs
        with pytest.raises(ValueError):
            torch.nn.ConvTranspose3d(**arguments)
        with pytest.raises(ValueError):
            nn.ConvTranspose3d(**arguments)
    layer, theirs = nn.ConvTranspose3d(2, 3, 3, stride=2), torch.nn.ConvTranspose3d(2, 3, 3, stride=2)
    x = np.random.default_rng(9).standard_normal((1, 2, 2, 3, 2)).astype(np.float32)
    for output_size, message in (((7, 7, 5), "valid sizes range from"), ((5, 7), "must have 3 or 5 elements")):
        with pytest.raises(ValueError, match=message):
            theirs(torch.tensor(x), output_size=output_size)
        with pytest.raises(ValueError, match=message):
            layer(x, output_size=output_size)
    # PyTorch refuses this output_padding at the first forward; refused here at construction
    with pytest.raises(RuntimeError):
        torch.nn.ConvTranspose3d(2, 3, 3, output_padding=1)(torch.tensor(x))
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose3d(2, 3, 3, output_padding=1)
