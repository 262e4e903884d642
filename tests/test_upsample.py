"""F.interpolate / interpolate_backward and nn.Upsample: the index rules written out as loops in
float64 (nearest's FP32 index product aside), PyTorch CPU over seeded sweeps (nearest's indices
bit for bit), finite differences, bad arguments refused before any launch, and the kernels on the
emulator (under its default checks, bit-identical under every schedule)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, refuse_kernel_runs

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


INTERPOLATING = ("bilinear", "bicubic")
PLANE_MODES = tuple(mode for mode in F.upsample.MODES if mode != "linear")   # the modes of 4-D inputs


def draw(rng, max_in=9, max_out=14, modes=PLANE_MODES):
    """(x shape, settings): sizes or factors (non-integer, below 1 too), every mode, align_corners."""
    while True:
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, max_in + 1)),
                 int(rng.integers(1, max_in + 1)))
        mode = modes[int(rng.integers(len(modes)))]
        settings = dict(mode=mode, align_corners=[None, False, True][int(rng.integers(3))]
                        if mode in INTERPOLATING else None)
        kind = rng.random()
        if kind < 0.4:
            size = [int(rng.integers(1, max_out + 1)) for _ in range(2)]
            settings["size"] = tuple(size) if rng.random() < 0.8 else size[0]
        else:
            factors = ([float(rng.integers(1, 5)) for _ in range(2)] if kind < 0.6 else
                       [round(float(rng.uniform(0.3, 3.5)), int(rng.integers(1, 4))) for _ in range(2)])
            settings["scale_factor"] = tuple(factors) if rng.random() < 0.8 else factors[0]
        try:
            F.upsample.output_size(shape[2:], settings.get("size"), settings.get("scale_factor"))
            return shape, settings
        except ValueError:   # an empty output
            continue


# --- the rules as loops --------------------------------------------------------------------------

def per_axis(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def cubic(s, a=-0.75):
    """Keys' cubic convolution kernel at distance s."""
    s = abs(s)
    return ((a + 2) * s - (a + 3)) * s * s + 1 if s <= 1 else ((a * s - 5 * a) * s + 8 * a) * s - 4 * a if s < 2 else 0


def loop_taps(mode, size, out, factor, align_corners):
    """Per output along one axis: [(input index, weight)], from the rule in the module docstring
    (area: adaptive average pooling's windows [floor(d in / out), ceil((d + 1) in / out)))."""
    taps = []
    for d in range(out):
        if mode == "area":
            begin, end = d * size // out, -(-(d + 1) * size // out)
            taps.append([(i, 1.0 / (end - begin)) for i in range(begin, end)])
            continue
        if mode == "nearest-exact":
            scale = np.float32(1.0 / factor) if factor is not None else np.float32(size) / np.float32(out)
            taps.append([(min(math.floor(np.float32((d + 0.5) * float(scale))), size - 1), 1.0)])
            continue
        if mode == "bicubic":
            ratio = (((size - 1) / (out - 1) if out > 1 else 0.0) if align_corners else
                     1.0 / factor if factor is not None else size / out)
            real = ratio * d if align_corners else ratio * (d + 0.5) - 0.5
            low = min(math.floor(np.float32(real)), size - 1)
            t = min(max(real - low, 0.0), 1.0)
            taps.append([(min(max(low + k, 0), size - 1), cubic(t - k)) for k in (-1, 0, 1, 2)])
            continue
        if mode == "nearest":
            if out == size:
                src = d
            elif out == 2 * size:
                src = d // 2
            else:
                scale = np.float32(1.0 / factor) if factor is not None else np.float32(size) / np.float32(out)
                src = min(math.floor(np.float32(d) * scale), size - 1)
            taps.append([(src, 1.0)])
            continue
        if out == size:
            taps.append([(d, 1.0)])
            continue
        if align_corners:
            real = d * ((size - 1) / (out - 1)) if out > 1 else 0.0
        else:
            ratio = 1.0 / factor if factor is not None else size / out
            real = max(ratio * (d + 0.5) - 0.5, 0.0)
        low = min(math.floor(real), size - 1)
        weight = min(real - low, 1.0)
        taps.append([(low, 1.0 - weight), (min(low + 1, size - 1), weight)])
    return taps


def same_size_bicubic(shape, settings):
    """Bicubic to the input's own size: a copy (PyTorch's CUDA kernels, its CPU backward)."""
    return settings["mode"] == "bicubic" and F.upsample.output_size(
        shape[2:], settings.get("size"), settings.get("scale_factor")) == tuple(shape[2:])


def loop_reference(x, settings, dy=None):
    """y = interpolate(x) in float64, and dx for dy when given, output by output."""
    n, c, h, w = x.shape
    size, factor = settings.get("size"), settings.get("scale_factor")
    out = F.upsample.output_size((h, w), size, factor)
    factors = per_axis(factor) if factor is not None else (None, None)
    mode = "nearest" if same_size_bicubic(x.shape, settings) else settings["mode"]   # a copy
    rows, cols = (loop_taps(mode, s, o, f, settings.get("align_corners")) for s, o, f in zip((h, w), out, factors))
    y = np.zeros((n, c) + out)
    dx = np.zeros(x.shape)
    for p, row_taps in enumerate(rows):
        for q, col_taps in enumerate(cols):
            for i, wi in row_taps:
                for j, wj in col_taps:
                    y[:, :, p, q] += wi * wj * x[:, :, i, j].astype(np.float64)
                    if dy is not None:
                        dx[:, :, i, j] += wi * wj * dy[:, :, p, q]
    return y, dx


def test_loops_agree_with_hand_worked_indices():
    """The loops themselves on cases worked by hand: 3 -> 5 nearest reads 0 0 1 1 2 (floor(d*0.6));
    by factor 1.5, floor(3 * 1.5) = 4 outputs read floor(d / 1.5) = 0 0 1 2; factors that give
    out == in or 2*in take the shortcuts; bilinear 2 -> 4 without align_corners reads at 0 (clamped),
    1/4, 3/4 and 1 (clamped), with align_corners 2 -> 3 at 0, 1/2 and 1."""
    assert [t[0][0] for t in loop_taps("nearest", 3, 5, None, None)] == [0, 0, 1, 1, 2]
    assert [t[0][0] for t in loop_taps("nearest", 3, 4, 1.5, None)] == [0, 0, 1, 2]
    assert [t[0][0] for t in loop_taps("nearest", 3, 3, 1.2, None)] == [0, 1, 2]     # out == in: copies
    assert [t[0][0] for t in loop_taps("nearest", 3, 6, 2.1, None)] == [0, 0, 1, 1, 2, 2]
    x = np.array([[[[0.0, 4.0]]]])
    y, _ = loop_reference(x, dict(mode="bilinear", size=(1, 4)))
    np.testing.assert_array_equal(y[0, 0, 0], [0.0, 1.0, 3.0, 4.0])
    y, _ = loop_reference(x, dict(mode="bilinear", size=(1, 3), align_corners=True))
    np.testing.assert_array_equal(y[0, 0, 0], [0.0, 2.0, 4.0])


def test_loops_of_the_new_modes_agree_with_hand_worked_values():
    """nearest-exact 3 -> 5 reads floor((d + 1/2) * 0.6) = 0 0 1 2 2 (nearest: 0 0 1 1 2) and 5 -> 2
    floor((d + 1/2) * 2.5) = 1 3 (pixel centres; nearest 0 2); bicubic's weights at t = 0 are
    0 1 0 0 and at t = 1/2 -0.09375 0.59375 0.59375 -0.09375 (Keys, A = -0.75): 4 -> 8 without
    align_corners puts output 2 at real 0.25 and output 0 at -0.25 (taps -2..1 clamped to 0, 0, 0,
    1); area 5 -> 2 averages windows [0, 3) and [2, 5)."""
    assert [t[0][0] for t in loop_taps("nearest-exact", 3, 5, None, None)] == [0, 0, 1, 2, 2]
    assert [t[0][0] for t in loop_taps("nearest-exact", 5, 2, None, None)] == [1, 3]
    assert [w for _, w in loop_taps("bicubic", 3, 3, None, False)[1]] == [0.0, 1.0, 0.0, 0.0]
    assert [w for _, w in loop_taps("bicubic", 2, 3, None, True)[1]] == [-0.09375, 0.59375, 0.59375, -0.09375]
    edge = loop_taps("bicubic", 4, 8, None, False)
    assert [i for i, _ in edge[0]] == [0, 0, 0, 1] and [i for i, _ in edge[2]] == [0, 0, 1, 2]
    assert [(i, w) for i, w in loop_taps("area", 5, 2, None, None)[1]] == [(2, 1 / 3), (3, 1 / 3), (4, 1 / 3)]


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_against_the_loops(be):
    rng = np.random.default_rng(1)
    for i in range(120 if be == "numpy" else 60):
        shape, settings = draw(rng)
        x = rng.standard_normal(shape)
        y_ref, _ = loop_reference(x, settings)
        dy = rng.standard_normal(y_ref.shape)
        _, dx_ref = loop_reference(x, settings, dy)
        what = f"config {i}: {shape} {settings}"
        assert_close(F.interpolate(x, **settings, backend=be), y_ref, np.float64, what)
        assert_close(F.interpolate_backward(dy, shape, **settings, backend=be), dx_ref, np.float64, what + " dx")


# --- PyTorch -------------------------------------------------------------------------------------

def torch_settings(settings):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_pytorch(be, dtype):
    """Nearest: the same bits forward (a copy) wherever PyTorch's CPU forward takes the legacy rule
    (outputs with H + W <= 128: all here), nearest-exact too; the other modes within tolerance,
    backward too."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for i in range(150 if be == "numpy" else 50):
        shape, settings = draw(rng)
        x = rng.standard_normal(shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.interpolate(xt, **torch_settings(settings))
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        what = f"config {i}: {shape} {settings}"
        y = F.interpolate(x, **settings, backend=be)
        if settings["mode"].startswith("nearest"):
            assert y.tobytes() == yt.detach().numpy().tobytes(), what
        expected = x if same_size_bicubic(shape, settings) else yt.detach().numpy()   # see the test below
        assert_close(y, expected, dtype, what)
        assert_close(F.interpolate_backward(dy, shape, **settings, backend=be), xt.grad.numpy(), dtype, what + " dx")


def coded(shape):
    """dy with a distinct integer per output pixel: the sums that reach each input are exact in
    float64 in any order, and name which outputs reached it."""
    return np.broadcast_to(np.arange(1.0, shape[2] * shape[3] + 1).reshape(shape[2:]), shape).copy()


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_gradient_routes_as_pytorch_bit_for_bit(be, mode):
    """Large outputs, odd sizes, non-integer factors (with out == in and out == 2*in from factors
    other than 1 and 2): each input gets exactly the outputs PyTorch's backward pass gives it."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    cases = [((1, 1, 55, 7), dict(scale_factor=(3.96, 1.0))), ((1, 1, 5, 10), dict(scale_factor=(1.1, 2.05))),
             ((1, 1, 183, 3), dict(size=(63, 5))), ((1, 1, 97, 61), dict(scale_factor=(1.37, 0.71)))]
    cases += [draw(rng, max_in=120, max_out=250) for _ in range(30)]
    for shape, settings in cases:
        settings = dict(settings, mode=mode, align_corners=None)
        xt = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        yt = torch.nn.functional.interpolate(xt, **torch_settings(settings))
        dy = coded(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        dx = F.interpolate_backward(dy, shape, **settings, backend=be)
        assert dx.tobytes() == xt.grad.numpy().tobytes(), f"{shape} {settings}"


@pytest.mark.torch
def test_pytorch_cpu_forward_of_large_float64_outputs_leaves_its_own_rule():
    """Why the oracle above is PyTorch's backward pass: for outputs with H + W > 128 its CPU forward
    computes float64 indices in float64 without the shortcuts, and then disagrees with its own
    gradient (55 -> 217 columns by 3.96: output 99 reads input 25, its gradient goes to 24). Our
    forward keeps the rule of the gradient."""
    torch = pytest.importorskip("torch")
    x = np.arange(55.0).reshape(1, 1, 1, 55)
    y = F.interpolate(x, scale_factor=(1.0, 3.96))
    yt = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=(1.0, 3.96)).numpy()
    assert y[0, 0, 0, 99] == 24 and yt[0, 0, 0, 99] == 25
    assert np.count_nonzero(y != yt) == 2                                          # outputs 99 and 198
    dx = F.interpolate_backward(coded(y.shape), x.shape, scale_factor=(1.0, 3.96))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.interpolate(xt, scale_factor=(1.0, 3.96)).backward(torch.tensor(coded(y.shape)))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_bicubic_to_the_same_size_copies_as_pytorch_backward_does(be):
    """Bicubic whose output has the input's size (by a scale factor other than 1: 5 * 1.1 -> 5) is a
    copy forward and backward, as PyTorch's CUDA kernels and CPU backward (inf and NaN copied,
    spreading nowhere); PyTorch's CPU forward interpolates by the factor there instead, so its
    gradient is not the adjoint of its own forward pass."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for shape, settings in [((1, 2, 5, 5), dict(scale_factor=1.1)), ((2, 1, 1, 3), dict(scale_factor=(1.53, 1.21))),
                            ((1, 1, 4, 6), dict(size=(4, 6), align_corners=True))]:
        settings = dict(settings, mode="bicubic")
        x = rng.standard_normal(shape)
        x[0, 0, 0, 1] = np.inf
        dy = rng.standard_normal(shape)
        dy[-1, -1, -1, 0] = np.nan
        np.testing.assert_array_equal(F.interpolate(x, **settings, backend=be), x)
        np.testing.assert_array_equal(F.interpolate_backward(dy, shape, **settings, backend=be), dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.interpolate(xt, **torch_settings(settings))
        yt.backward(torch.tensor(dy))
        np.testing.assert_array_equal(xt.grad.numpy(), dy)
        if "scale_factor" in settings:
            assert not np.array_equal(yt.detach().numpy(), x, equal_nan=True)


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_an_inf_or_nan_lands_where_pytorch_puts_it(be):
    """Every tap is multiplied, one of weight 0 too, as PyTorch's kernels do: an inf makes NaN
    wherever it is a tap of weight 0 (an axis of out == in included), forward and backward, and
    nothing where it is no tap."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    for shape, settings in [((1, 1, 1, 4), dict(size=(1, 4), mode="bilinear")),
                            ((1, 2, 3, 4), dict(size=(3, 7), mode="bilinear")),
                            ((1, 1, 4, 4), dict(scale_factor=1.5, mode="bilinear", align_corners=True)),
                            ((1, 1, 5, 3), dict(size=(2, 3), mode="bilinear")),
                            ((1, 2, 5, 4), dict(size=(7, 3), mode="bicubic")),
                            ((1, 1, 6, 5), dict(scale_factor=(1.5, 0.7), mode="bicubic", align_corners=True)),
                            ((2, 1, 4, 5), dict(scale_factor=(1.5, 0.6)))]:
        for bad in (np.inf, -np.inf, np.nan):
            x = rng.standard_normal(shape)
            x[0, 0, shape[2] // 2, 1] = bad
            xt = torch.tensor(x, requires_grad=True)
            yt = torch.nn.functional.interpolate(xt, **torch_settings(settings))
            dy = rng.standard_normal(tuple(yt.shape))
            dy[0, 0, 0, 1] = bad
            yt.backward(torch.tensor(dy))
            what = f"{shape} {settings} {bad}"
            assert_close(F.interpolate(x, **settings, backend=be), yt.detach().numpy(), np.float64, what)
            assert_close(F.interpolate_backward(dy, shape, **settings, backend=be), xt.grad.numpy(), np.float64,
                         what + " dx")


def test_finite_differences():
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 4))
    for settings in [dict(size=(9, 7)), dict(scale_factor=1.7), dict(size=(3, 2)), dict(scale_factor=(2, 0.6)),
                     dict(size=(8, 3), mode="bilinear"), dict(size=(8, 3), mode="bilinear", align_corners=True),
                     dict(scale_factor=(1.3, 2.6), mode="bilinear"), dict(size=(2, 1), mode="bilinear"),
                     dict(size=(1, 6), mode="bilinear", align_corners=True),
                     dict(size=(9, 3), mode="bicubic"), dict(scale_factor=(1.7, 0.6), mode="bicubic"),
                     dict(size=(2, 7), mode="bicubic", align_corners=True), dict(size=(1, 1), mode="bicubic"),
                     dict(scale_factor=(2.3, 0.5), mode="nearest-exact"), dict(size=(3, 7), mode="area")]:
        report = check_op(lambda x: F.interpolate(x, **settings),
                          lambda dy, x: F.interpolate_backward(dy, x.shape, **settings), [x])
        assert report.max_rel_error < 1e-6, f"{settings}: {report}"


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_empty_batch(be, monkeypatch):
    """PyTorch allows N = 0 (an empty result) and refuses empty channel or spatial dimensions. No
    kernel runs for it: backend.launch takes a grid of no blocks (which CUDA refuses) as nothing to
    launch."""
    refuse_kernel_runs(monkeypatch)
    for mode in PLANE_MODES:   # area's through adaptive average pooling
        y = F.interpolate(np.zeros((0, 2, 3, 3), np.float32), scale_factor=2, mode=mode, backend=be)
        assert y.shape == (0, 2, 6, 6) and y.dtype == np.float32, mode
        dx = F.interpolate_backward(np.zeros((0, 2, 4, 4), np.float32), (0, 2, 3, 3), size=4, mode=mode, backend=be)
        assert dx.shape == (0, 2, 3, 3), mode
    with pytest.raises(ValueError, match="non-empty"):
        F.interpolate(np.zeros((1, 0, 3, 3)), size=2, backend=be)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_bad_arguments_are_refused_before_any_launch(be, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("launched before the arguments were checked")
    monkeypatch.setattr(backend, "launch", no_launch)
    x, dy = np.ones((2, 3, 4, 4)), np.ones((2, 3, 8, 8))
    for call, error, match in [
        (lambda: F.interpolate(x, size=2, scale_factor=2), ValueError, "only one of size or scale_factor"),
        (lambda: F.interpolate(x), ValueError, "either size or scale_factor"),
        (lambda: F.interpolate(x, size=0), ValueError, "size must be a positive int"),
        (lambda: F.interpolate(x, size=(2, -1)), ValueError, "size must be a positive int"),
        (lambda: F.interpolate(x, size=2.5), TypeError, "size"),
        (lambda: F.interpolate(x, size=True), TypeError, "size"),
        (lambda: F.interpolate(x, size=(1, 2, 3)), ValueError, "pair"),
        (lambda: F.interpolate(x, scale_factor=0), ValueError, "positive"),
        (lambda: F.interpolate(x, scale_factor=-2.0), ValueError, "positive"),
        (lambda: F.interpolate(x, scale_factor=float("nan")), ValueError, "finite"),
        (lambda: F.interpolate(x, scale_factor=float("inf")), ValueError, "finite"),
        (lambda: F.interpolate(x, scale_factor=0.2), ValueError, "empty output"),
        (lambda: F.interpolate(x, scale_factor="2"), TypeError, "scale_factor"),
        (lambda: F.interpolate(x, size=2, mode="trilinear"), ValueError, "mode"),
        (lambda: F.interpolate(x, size=2, align_corners=False), ValueError, "align_corners"),
        (lambda: F.interpolate(x, size=2, mode="nearest-exact", align_corners=True), ValueError, "align_corners"),
        (lambda: F.interpolate(x, size=2, mode="area", align_corners=False), ValueError, "align_corners"),
        (lambda: F.interpolate(x, size=2, mode="bicubic", align_corners="yes"), TypeError, "align_corners"),
        (lambda: F.interpolate(x, scale_factor=0.2, mode="area"), ValueError, "empty output"),
        (lambda: F.interpolate(x, size=2, mode="bilinear", align_corners=1), TypeError, "align_corners"),
        (lambda: F.interpolate(x[0, 0], size=2), ValueError, "3-D or 4-D"),
        (lambda: F.interpolate(x[0], size=2, mode="bicubic"), NotImplementedError, "3D input, but bicubic"),
        (lambda: F.interpolate(x[0], size=2, mode="bilinear"), NotImplementedError, "3D input, but bilinear"),
        (lambda: F.interpolate(x, size=2, mode="linear"), NotImplementedError, "4D input, but linear"),
        (lambda: F.interpolate(x[0], size=(2, 3)), ValueError, "1-tuple"),
        (lambda: F.interpolate(x[0], scale_factor=(2.0, 2.0), mode="linear"), ValueError, "1-tuple"),
        (lambda: F.interpolate(x[0], scale_factor=0.2, mode="area"), ValueError, "empty output"),
        (lambda: F.interpolate(x[0], size=2, mode="nearest-exact", align_corners=False), ValueError, "align_corners"),
        (lambda: F.interpolate_backward(dy[0], (3, 4, 4), size=7, mode="linear"), ValueError, "dy must have shape"),
        (lambda: F.interpolate(x.astype(np.int64), size=2), TypeError, "float"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4, 4), size=7), ValueError, "dy must have shape"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4), size=8), ValueError, "x_shape"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4, 4), scale_factor=2, mode="trilinear"), ValueError, "mode"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4, 4), scale_factor=2, mode="linear"), NotImplementedError,
         "linear"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4, 4), size=7, mode="bicubic"), ValueError, "dy must have shape"),
        (lambda: F.interpolate_backward(dy, (2, 3, 4, 4), size=7, mode="area"), ValueError, "dy must have shape"),
    ]:
        with backend.use_backend(be), pytest.raises(error, match=match):
            call()


# --- 3-D (N, C, L) inputs --------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_one_dimensional_modes_against_pytorch(be):
    """nearest, nearest-exact, linear and area on (N, C, L), sizes and factors as a number or a
    1-tuple: values and gradients as PyTorch's, but for nearest's forward pass where out == in or
    2*in from another factor: PyTorch's 1-D CPU forward leaves its shortcuts there (its backward and
    CUDA rule take them, as ours), so the oracle of that pass is PyTorch's 2-D forward on the
    (N, C, 1, L) view, which takes them."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    modes = ("nearest", "nearest-exact", "linear", "area")
    seen = set()
    for i in range(160 if be == "numpy" else 60):
        mode, length = modes[i % 4], int(rng.integers(1, 12))
        settings = dict(mode=mode, align_corners=[None, False, True][i % 3] if mode == "linear" else None)
        if rng.random() < 0.5:
            out = int(rng.integers(1, 20))
            settings["size"] = out if rng.random() < 0.5 else (out,)
        else:
            factor = round(float(rng.uniform(0.3, 3.5)), int(rng.integers(1, 3)))
            if math.floor(length * factor) < 1:
                continue
            settings["scale_factor"] = factor if rng.random() < 0.5 else (factor,)
        x = rng.standard_normal((2, 3, length))
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.interpolate(xt, **torch_settings(settings))
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        expected = yt.detach().numpy()
        if mode == "nearest":
            view = dict(torch_settings(settings), size=None if "size" not in settings else [1, yt.shape[2]],
                        scale_factor=None if "scale_factor" not in settings else [1.0, factor])
            expected = torch.nn.functional.interpolate(torch.tensor(x[:, :, None]), **view).numpy()[:, :, 0]
            seen.add(("shortcut", yt.shape[2] in (length, 2 * length) and not np.array_equal(expected,
                                                                                            yt.detach().numpy())))
        what = f"config {i}: {x.shape} {settings}"
        y = F.interpolate(x, **settings, backend=be)
        assert y.shape == yt.shape, what
        assert_close(y, expected, np.float64, what)
        assert_close(F.interpolate_backward(dy, x.shape, **settings, backend=be), xt.grad.numpy(), np.float64,
                     what + " dx")
    assert ("shortcut", True) in seen   # PyTorch's 1-D forward did leave its rule somewhere


def test_one_dimensional_finite_differences_and_layer():
    x = np.random.default_rng(13).standard_normal((2, 3, 6))
    for settings in [dict(size=9, mode="linear"), dict(scale_factor=0.7, mode="linear", align_corners=True),
                     dict(scale_factor=(2.3,), mode="nearest-exact"), dict(size=(4,), mode="area")]:
        report = check_op(lambda x: F.interpolate(x, **settings),
                          lambda dy, x: F.interpolate_backward(dy, x.shape, **settings), [x])
        assert report.max_rel_error < 1e-6, f"{settings}: {report}"
    layer = nn.Upsample(scale_factor=1.5, mode="linear")
    y = layer(x)
    assert y.shape == (2, 3, 9)
    np.testing.assert_array_equal(y, F.interpolate(x, scale_factor=1.5, mode="linear"))
    np.testing.assert_array_equal(layer.backward(y), F.interpolate_backward(y, x.shape, scale_factor=1.5,
                                                                            mode="linear"))


@pytest.mark.torch
def test_linear_on_three_d_makes_nan_of_an_inf_where_pytorch_keeps_it():
    """The one documented difference of the (N, C, 1, L) view: its row axis (1 -> 1) multiplies
    every value by its taps 1 and 0 (PyTorch's 2-D rule, test_an_inf_or_nan_lands_where_pytorch_puts_it),
    so an inf becomes NaN at the outputs reading it, where PyTorch's 1-D kernel keeps inf."""
    torch = pytest.importorskip("torch")
    x = np.array([[[0.0, np.inf, 2.0, 3.0]]])
    y = F.interpolate(x, size=7, mode="linear")
    yt = torch.nn.functional.interpolate(torch.tensor(x), size=7, mode="linear").numpy()
    np.testing.assert_array_equal(y[np.isfinite(yt)], yt[np.isfinite(yt)])
    assert np.isinf(yt[0, 0, 1:4]).all() and np.isnan(y[0, 0, :4]).all()


# --- the layer -----------------------------------------------------------------------------------

def test_layer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    size = [6, 7]
    layer = nn.Upsample(size=size, mode="bilinear", align_corners=True)
    size[0] = 1                                                    # kept as a tuple: the edit changes nothing
    y = layer(x)
    assert y.shape == (2, 3, 6, 7) and layer.size == (6, 7)
    assert_close(y, F.interpolate(x, size=(6, 7), mode="bilinear", align_corners=True), np.float32, "forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(layer.backward(dy), F.interpolate_backward(dy, x.shape, size=(6, 7), mode="bilinear",
                                                            align_corners=True), np.float32, "backward")
    layer(x)
    assert layer.backward(dy, input_grad=False) is None
    assert repr(nn.Upsample(scale_factor=2)) == "Upsample(scale_factor=2.0, mode='nearest')"
    assert repr(nn.Upsample(scale_factor=[2, 3])) == "Upsample(scale_factor=(2.0, 3.0), mode='nearest')"
    assert repr(layer) == "Upsample(size=(6, 7), mode='bilinear')"
    assert list(layer.parameters()) == [] and layer.state_dict() == {}


def test_pytorchs_upsampling_layers_of_fixed_mode():
    """UpsamplingNearest2d is Upsample in nearest mode, UpsamplingBilinear2d bilinear with
    align_corners=True (where Upsample's default is False), outputs, gradients and reprs as torch's."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    for name, kwargs in (("UpsamplingNearest2d", dict(scale_factor=2)), ("UpsamplingBilinear2d", dict(size=(7, 9))),
                         ("UpsamplingBilinear2d", dict(scale_factor=1.5))):
        ours, theirs = getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
        assert repr(ours) == repr(theirs)
        tx = torch.from_numpy(x).requires_grad_()
        ty = theirs(tx)
        y = ours(x)
        dy = np.random.default_rng(7).standard_normal(y.shape)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_layer_refuses_bad_settings_when_built():
    for kwargs, error, match in [(dict(), ValueError, "either size"),
                                 (dict(size=2, scale_factor=2), ValueError, "only one"),
                                 (dict(size=2, mode="lanczos"), ValueError, "mode"),
                                 (dict(size=2, align_corners=True), ValueError, "align_corners"),
                                 (dict(size=2, mode="nearest-exact", align_corners=True), ValueError, "align_corners")]:
        with pytest.raises(error, match=match):
            nn.Upsample(**kwargs)


# --- the kernels on the emulator -----------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_emu_sweep(dtype):
    """Against the NumPy path under the emulator's default checks (guarded arrays)."""
    rng = np.random.default_rng(6)
    for i in range(80):
        shape, settings = draw(rng)
        x = rng.standard_normal(shape).astype(dtype)
        y = F.interpolate(x, **settings, backend="emu")
        dy = rng.standard_normal(y.shape).astype(dtype)
        what = f"config {i}: {shape} {settings}"
        expected = F.interpolate(x, **settings, backend="numpy")
        if dtype == np.float16:   # compared in FP32 terms: one float16 rounding apart at most
            np.testing.assert_allclose(y.astype(np.float32), expected, rtol=2**-10, atol=2**-14, err_msg=what)
            np.testing.assert_allclose(F.interpolate_backward(dy, shape, **settings, backend="emu").astype(np.float32),
                                       F.interpolate_backward(dy, shape, **settings, backend="numpy"),
                                       rtol=2**-10, atol=2**-12, err_msg=what + " dx")
            continue
        assert_close(y, expected, dtype, what)
        assert_close(F.interpolate_backward(dy, shape, **settings, backend="emu"),
                     F.interpolate_backward(dy, shape, **settings, backend="numpy"), dtype, what + " dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(7)
    for shape, settings in [((2, 3, 7, 9), dict(scale_factor=2.5)), ((1, 2, 17, 19), dict(size=(5, 4))),
                            ((2, 1, 4, 6), dict(size=(9, 13), mode="bilinear")),
                            ((1, 1, 30, 20), dict(scale_factor=(0.4, 3.3), mode="bilinear", align_corners=True)),
                            ((2, 1, 5, 7), dict(size=(11, 4), mode="bicubic")),
                            ((1, 2, 13, 6), dict(scale_factor=(0.45, 2.7), mode="bicubic", align_corners=True)),
                            ((1, 2, 9, 5), dict(scale_factor=(1.6, 0.7), mode="nearest-exact"))]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(F.interpolate(x, **settings).shape).astype(np.float32)
        results = []
        for checks in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
            with emu.checking(guard=True, **checks):
                results.append((F.interpolate(x, **settings, backend="emu"),
                                F.interpolate_backward(dy, shape, **settings, backend="emu")))
        for a, b in zip(*results):
            assert a.tobytes() == b.tobytes(), f"{shape} {settings} under {schedule}"


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(8)
    for i in range(100):
        shape, settings = draw(rng)
        x = rng.standard_normal(shape).astype(dtype)
        y = F.interpolate(cupy.asarray(x), **settings)
        dy = rng.standard_normal(y.shape).astype(dtype)
        what = f"config {i}: {shape} {settings}"
        expected = F.interpolate(x, **settings)
        if settings["mode"].startswith("nearest"):
            assert y.get().tobytes() == expected.tobytes(), what
        assert_close(y, expected, dtype, what)
        assert_close(F.interpolate_backward(cupy.asarray(dy), shape, **settings),
                     F.interpolate_backward(dy, shape, **settings), dtype, what + " dx")


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

@pytest.mark.torch
def test_benchmark_models_know_the_layer():
    """A model with nn.Upsample gets its shapes, its launches (kernels upsample.cu holds) and a
    PyTorch mirror that computes what it does."""
    torch = pytest.importorskip("torch")
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=np.float64), nn.Upsample(scale_factor=1.5, mode="bilinear"),
                          nn.Upsample(size=(4, 9)), nn.Upsample(scale_factor=1.5, mode="bicubic", align_corners=True),
                          nn.Upsample(size=(5, 7), mode="nearest-exact"), nn.Upsample(scale_factor=0.5, mode="area"))
    x = np.random.default_rng(9).standard_normal((2, 2, 7, 6))
    shapes = {type(leaf).__name__ + str(i): (shape_in, shape_out)
              for i, (leaf, shape_in, shape_out, _) in enumerate(leaf_layers(model, x.shape))}
    assert shapes == {"Conv2d0": ((2, 2, 7, 6), (2, 3, 5, 4)), "Upsample1": ((2, 3, 5, 4), (2, 3, 7, 6)),
                      "Upsample2": ((2, 3, 7, 6), (2, 3, 4, 9)), "Upsample3": ((2, 3, 4, 9), (2, 3, 6, 13)),
                      "Upsample4": ((2, 3, 6, 13), (2, 3, 5, 7)), "Upsample5": ((2, 3, 5, 7), (2, 3, 2, 3))}
    expected = {"bilinear": ("upsample", "upsample_bilinear"), "nearest": ("upsample", "upsample_nearest"),
                "bicubic": ("upsample", "upsample_bicubic"), "nearest-exact": ("upsample", "upsample_nearest_exact"),
                "area": ("adaptive_pool", "adaptive_avg_pool")}
    for layer in model[1:]:
        family, stem = expected[layer.mode]
        kernels = [kernel for kernel, _ in _layer_passes(layer, 1, 1, 8)]
        assert kernels == [f"{stem}_forward", f"{stem}_backward"], kernels
        assert all(f"\n{kernel}(" in backend.kernel_source(family) for kernel in kernels), kernels
    with torch.no_grad():
        np.testing.assert_allclose(torch_mirror(model, torch)(torch.tensor(x)).numpy(), model(x), rtol=1e-12)
