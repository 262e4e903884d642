"""F.pad / pad_backward, the nn.*Pad2d layers and Conv2d(padding_mode=...): the index rules written
out as loops in float64, PyTorch CPU over seeded sweeps (pads at the modes' limits and negative
ones; the forward pass a copy, the same bits), every refusal one PyTorch makes too, float16 (the
forward pass the same bits as PyTorch's half, the gradient summed in FP32 and rounded once), finite
differences, bad arguments refused before any launch, and the kernels on the emulator under guard
zones, the race check and every schedule."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op, gradcheck
from helpers import assert_close, needs_cuda, refuse_kernel_runs, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")
MODES = ("constant", "reflect", "replicate", "circular")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]


def propose_image(rng, mode, max_size):
    """(shape, pad) of a 3-D or 4-D input, pads of 2 or 4 entries in [-max_size, max_size]."""
    shape = tuple(int(s) for s in rng.integers(1, max_size + 1, 4))
    if rng.random() < 0.3:
        shape = shape[1:]
    entries = 4 if (len(shape) == 4 and mode != "constant") or rng.random() < 0.7 else 2
    return shape, tuple(int(p) for p in rng.integers(-max_size, max_size + 1, entries))


def draw(rng, mode, max_size=6, propose=propose_image):
    """(x shape, pad, value) that the mode accepts, from the proposals (shape, pad) of `propose`
    (by default images): pads up to the mode's limits (reflect size - 1, circular what the crop
    leaves), negative ones cropping."""
    while True:
        shape, pad = propose(rng, mode, max_size)
        value = round(float(rng.standard_normal()), 3) if mode == "constant" else None
        try:
            F.padding._plan(shape, pad, mode, value)
            return shape, pad, value
        except ValueError:
            continue


# --- the rules as loops --------------------------------------------------------------------------

def loop_source(mode, i, size, before, after):
    """The input index output position i (= d - before) reads along one axis; None: the fill."""
    if mode == "constant":
        return i if 0 <= i < size else None
    if mode == "reflect":
        return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    first = max(-before, 0)                          # circular: wraps what the negative pads leave
    kept = size - first - max(-after, 0)
    return first + (i + min(before, 0)) % kept


def loop_reference(x, pad, mode, value, dy=None):
    """y = pad(x) in float64, and dx for dy when given, output pixel by output pixel."""
    left, right, top, bottom = tuple(pad) + (0, 0) * (len(pad) == 2)
    h, w = x.shape[-2:]
    y = np.zeros(x.shape[:-2] + (h + top + bottom, w + left + right))
    dx = np.zeros(x.shape)
    for p in range(y.shape[-2]):
        for q in range(y.shape[-1]):
            i, j = loop_source(mode, p - top, h, top, bottom), loop_source(mode, q - left, w, left, right)
            if i is None or j is None:
                y[..., p, q] = value or 0.0
                continue
            y[..., p, q] = x[..., i, j]
            if dy is not None:
                dx[..., i, j] += dy[..., p, q]
    return y, dx


def test_loops_agree_with_hand_worked_rows():
    x = np.arange(4.0).reshape(1, 1, 4)
    rows = {mode: loop_reference(x, (2, 3), mode, 9.0)[0][0, 0] for mode in MODES}
    assert rows["constant"].tolist() == [9, 9, 0, 1, 2, 3, 9, 9, 9]
    assert rows["reflect"].tolist() == [2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert rows["replicate"].tolist() == [0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert rows["circular"].tolist() == [2, 3, 0, 1, 2, 3, 0, 1, 2]
    # circular crops first: (-1, 2) wraps [1, 2, 3]; constant crops too
    assert loop_reference(x, (-1, 2), "circular", None)[0][0, 0].tolist() == [1, 2, 3, 1, 2]
    assert loop_reference(x, (-1, -2), "constant", 0.0)[0][0, 0].tolist() == [1]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_against_the_loops(be, mode):
    rng = np.random.default_rng(MODES.index(mode))
    for i in range(40 if be == "numpy" else 25):
        assert_matches_loops(rng, *draw(rng, mode), mode, be, loop_reference, f"config {i}")


def assert_matches_loops(rng, shape, pad, value, mode, be, reference, what):
    """pad and pad_backward on `be` against `reference` (a loop: y, or y and dx for a dy) in float64."""
    x = rng.standard_normal(shape)
    y_ref, _ = reference(x, pad, mode, value)
    dy = rng.standard_normal(y_ref.shape)
    _, dx_ref = reference(x, pad, mode, value, dy)
    what = f"{what}: {shape} {pad}"
    np.testing.assert_array_equal(F.pad(x, pad, mode, value, backend=be), y_ref, err_msg=what)
    assert_close(F.pad_backward(dy, shape, pad, mode, backend=be), dx_ref, np.float64, what + " dx")


# --- PyTorch -------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_pytorch(be, dtype):
    """Forward the same bits (a copy, or the value in the dtype), backward within tolerance, on
    random shapes and pads incl. the limits (reflect: size - 1, circular: size, negative pads)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    limits = [((2, 3, 4, 5), (4, 4, 3, 3), "reflect"), ((3, 4, 5), (5, 5, 4, 4), "circular"),
              ((1, 2, 3, 3), (-1, 2, -2, 1), "circular"), ((1, 1, 4, 5), (-4, 2, 3, -3), "replicate"),
              ((2, 1, 3, 4), (-2, -1, 2, -2), "reflect"), ((2, 2, 3, 4), (-4, 1, 0, -2), "constant"),
              ((2, 3, 4), (3, 1), "reflect"), ((2, 1, 5), (0, 1), "circular")]
    cases = limits + [(*draw(rng, mode)[:2], mode) for mode in MODES for _ in range(30 if be == "numpy" else 12)]
    for i, (shape, pad, mode) in enumerate(cases):
        value = 0.3 if mode == "constant" else None
        assert_matches_pytorch(torch, rng, shape, pad, mode, value, dtype, be, f"case {i}")


def assert_matches_pytorch(torch, rng, shape, pad, mode, value, dtype, be, what):
    """The forward pass PyTorch's bits (a copy, or the value in the dtype), the backward pass
    within the dtype's tolerance, on a fresh input."""
    x = rng.standard_normal(shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.pad(xt, pad, mode=mode, value=value)
    dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.tensor(dy))
    what = f"{what}: {shape} {pad} {mode}"
    y = F.pad(x, pad, mode, value, backend=be)
    assert y.dtype == dtype and y.shape == tuple(yt.shape) and y.tobytes() == yt.detach().numpy().tobytes(), what
    assert_close(F.pad_backward(dy, shape, pad, mode, backend=be), xt.grad.numpy(), dtype, what + " dx")


@pytest.mark.torch
def test_what_we_refuse_pytorch_refuses_or_leaves_empty():
    """Over random ranks 1 to 5, pad lengths 0 to twice the rank plus 2 and pads of both signs:
    every call we take PyTorch takes, with our shape; every one we refuse PyTorch refuses too (a
    length a mode does not take for the rank: NotImplementedError both), gives an empty output,
    or is a circular pad past what the crop leaves (PyTorch's copies read what they have not
    written)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    refused = 0
    for mode in MODES:
        for _ in range(250):
            shape = tuple(int(s) for s in rng.integers(1, 5, int(rng.integers(1, 6))))
            pad = tuple(int(p) for p in rng.integers(-4, 6, 2 * int(rng.integers(0, len(shape) + 2))))
            try:
                torch_shape = tuple(torch.nn.functional.pad(torch.ones(shape), pad, mode=mode).shape)
                torch_error = None
            except (RuntimeError, NotImplementedError) as error:
                torch_shape, torch_error = None, type(error)
            try:
                assert F.pad(np.ones(shape), pad, mode).shape == torch_shape, (shape, pad, mode)
            except (ValueError, NotImplementedError) as error:
                refused += 1
                assert (torch_error is NotImplementedError) == isinstance(error, NotImplementedError), (shape, pad,
                                                                                                       mode, error)
                pairs = list(zip(pad[::2], pad[1::2]))[::-1]
                wrapped = mode == "circular" and any(
                    max(b, 0) > s - max(-b, 0) - max(-a, 0) or max(a, 0) > s - max(-b, 0) - max(-a, 0)
                    for s, (b, a) in zip(shape[len(shape) - len(pairs):], pairs))
                assert torch_shape is None or min(torch_shape, default=1) == 0 or wrapped, (shape, pad, mode)
    assert refused > 200


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_an_inf_or_nan_goes_where_pytorch_takes_it(be):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    for mode in MODES:
        x = rng.standard_normal((1, 2, 4, 5))
        x[0, 1, 1, 0], x[0, 0, 3, 4] = np.inf, np.nan
        value = -np.inf if mode == "constant" else None
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.pad(xt, (2, 3, 1, 2), mode=mode, value=value)
        dy = rng.standard_normal(tuple(yt.shape))
        dy[0, 0, 0, 0] = np.nan
        yt.backward(torch.tensor(dy))
        assert F.pad(x, (2, 3, 1, 2), mode, value, backend=be).tobytes() == yt.detach().numpy().tobytes(), mode
        assert_close(F.pad_backward(dy, x.shape, (2, 3, 1, 2), mode, backend=be), xt.grad.numpy(), np.float64, mode)


def test_finite_differences():
    x = np.random.default_rng(14).standard_normal((2, 2, 4, 5))
    for pad, mode in [((2, 1, 3, 0), "constant"), ((-1, 2, 1, -2), "constant"), ((3, 4, 3, 2), "reflect"),
                      ((-2, 3, 1, -1), "reflect"), ((4, 1, 0, 5), "replicate"), ((5, 5, 4, 4), "circular"),
                      ((-2, 3, 2, -1), "circular")]:
        report = check_op(lambda x: F.pad(x, pad, mode, 0.5 if mode == "constant" else None),
                          lambda dy, x: F.pad_backward(dy, x.shape, pad, mode), [x])
        assert report.max_rel_error < 1e-6, f"{pad} {mode}: {report}"


# --- float16 -------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_forward_bits_and_gradient_rounded_once(be):
    """The forward pass copies float16 bits (the fill value rounded as PyTorch's half: via FP32);
    the gradient sums in FP32 and rounds once: within half a float16 ulp of PyTorch's exact sum
    (here computed in float64), where a float16 sum would be further off."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(15)
    for mode in MODES:
        assert_float16_rounded_once(torch, rng, (2, 3, 5, 4), (3, 3, 4, 4) if mode != "circular" else (4, 4, 5, 5),
                                    mode, be)


def assert_float16_rounded_once(torch, rng, shape, pad, mode, be):
    """float16: the forward pass PyTorch's half bits (the fill value 0.1 rounded via FP32), the
    gradient the exact (float64) sum rounded once."""
    x = rng.standard_normal(shape).astype(np.float16)
    value = 0.1 if mode == "constant" else None
    yt = torch.nn.functional.pad(torch.tensor(x), pad, mode=mode, value=value)
    y = F.pad(x, pad, mode, value, backend=be)
    assert y.dtype == np.float16 and y.tobytes() == yt.numpy().tobytes(), (mode, shape, pad)
    dy = rng.standard_normal(y.shape).astype(np.float16)
    exact = F.pad_backward(dy.astype(np.float64), shape, pad, mode)
    dx = F.pad_backward(dy, shape, pad, mode, backend=be)
    assert dx.dtype == np.float16
    np.testing.assert_array_equal(dx, exact.astype(np.float16), err_msg=f"{mode} {shape} {pad}")


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("be", BACKENDS)
def test_empty_batch_runs_no_kernel(be, monkeypatch):
    refuse_kernel_runs(monkeypatch)
    y = F.pad(np.zeros((0, 2, 3, 3), np.float32), (1, 1, 2, 2), "reflect", backend=be)
    assert y.shape == (0, 2, 7, 5) and y.dtype == np.float32
    assert F.pad_backward(np.zeros((0, 2, 7, 5), np.float32), (0, 2, 3, 3), (1, 1, 2, 2), "reflect",
                          backend=be).shape == (0, 2, 3, 3)


@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_before_any_launch(be, monkeypatch):
    refuse_launches(monkeypatch)
    x, dy = np.ones((2, 3, 4, 5)), np.ones((2, 3, 6, 7))
    for call, error, match in [
        (lambda: F.pad(x, (1, 1), "reflect"), NotImplementedError, "Padding size 2 is not supported for 4D input"),
        (lambda: F.pad(x, (1, 1, 1), "constant"), ValueError, "Padding length must be divisible by 2"),
        (lambda: F.pad(x, (1,) * 10), ValueError, "Padding length should be less than or equal to two times the input"),
        (lambda: F.pad(x, (1,) * 8, "reflect"), NotImplementedError, "Padding size 8 is not supported for 4D input"),
        (lambda: F.pad(x[0], (1,) * 6, "circular"), NotImplementedError, "Padding size 6 is not supported for 3D"),
        (lambda: F.pad(x[0, 0, 0], (1, 1), "replicate"), NotImplementedError, "Padding size 2 .* for 1D input"),
        (lambda: F.pad(x, (), "reflect"), NotImplementedError, "Padding size 0 is not supported for 4D input"),
        (lambda: F.pad(x, (1.0, 1)), TypeError, "tuple of ints"),
        (lambda: F.pad(x, (True, 1)), TypeError, "tuple of ints"),
        (lambda: F.pad(x, 1), TypeError, "tuple of ints"),
        (lambda: F.pad(x, (1, 1), "edge"), NotImplementedError, "Unrecognised padding mode edge"),
        (lambda: F.pad(x, (1, 1, 1, 1), "reflect", 1.0), ValueError, 'mode "reflect" doesn\'t take in value'),
        (lambda: F.pad(x, (1, 1), value="0"), TypeError, "value"),
        (lambda: F.pad(x, (5, 0, 0, 0), "reflect"), ValueError, r"Argument #4: .* padding \(5, 0\) at dimension 3"),
        (lambda: F.pad(x, (0, 0, 1, 4), "reflect"), ValueError, r"Argument #6: .* padding \(1, 4\) at dimension 2"),
        (lambda: F.pad(x, (6, 0, 0, 0), "circular"), ValueError, "wrapping around more than once"),
        (lambda: F.pad(x, (-1, 5, 0, 0), "circular"), ValueError, "wrapping around more than once"),
        (lambda: F.pad(x, (-3, -3)), ValueError, "narrow"),
        (lambda: F.pad(x, (-3, -2)), ValueError, "empty output"),
        (lambda: F.pad(x, (0, 0, -4, 0), "replicate"), ValueError, "empty output"),
        (lambda: F.pad(np.ones((2, 0, 4, 5)), (1, 1)), ValueError, "empty output"),
        (lambda: F.pad(np.ones((0, 4, 5)), (1, 1, 1, 1, 0, 0)), ValueError, "empty output"),   # a padded first dim
        (lambda: F.pad(np.ones((2, 0, 4, 5)), (1, 1, 1, 1), "reflect"), ValueError, "non-empty"),
        (lambda: F.pad(x.astype(np.int64), (1, 1)), TypeError, "float"),
        (lambda: F.pad_backward(dy, (2, 3, 4, 5), (1, 1, 1, 2)), ValueError, "dy must have shape"),
        (lambda: F.pad_backward(dy, (2, 3, 4), (1, 1, 1, 1)), ValueError, "x_shape"),
        (lambda: F.pad_backward(dy, (2, 3, 4, 5), (1, 1, 1, 1), "wrap"), NotImplementedError, "padding mode"),
    ]:
        with backend.use_backend(be), pytest.raises(error, match=match):
            call()


# --- the layers ----------------------------------------------------------------------------------

LAYERS = [("ZeroPad2d", (), "constant"), ("ConstantPad2d", (2.5,), "constant"), ("ReflectionPad2d", (), "reflect"),
          ("ReplicationPad2d", (), "replicate"), ("CircularPad2d", (), "circular")]


@pytest.mark.torch
@pytest.mark.parametrize("name, args, mode", LAYERS)
def test_layers_against_pytorch(name, args, mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    for padding in (2, (1, 3, 0, 2), [3, 0, 2, 1]):
        layer, torch_layer = getattr(nn, name)(padding, *args), getattr(torch.nn, name)(padding, *args)
        assert_layer_matches_pytorch(torch, rng, layer, torch_layer, ((2, 3, 4, 5), (3, 4, 4)), np.float32)


def assert_layer_matches_pytorch(torch, rng, layer, torch_layer, shapes, dtype):
    """A padding layer against PyTorch's: its repr, no parameters, its output and gradient on each
    shape, and no gradient when none is asked for."""
    assert repr(layer) == repr(torch_layer).replace("[", "(").replace("]", ")")
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    for shape in shapes:
        x = rng.standard_normal(shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_layer(xt)
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        what = f"{layer} {shape}"
        np.testing.assert_array_equal(layer(x), yt.detach().numpy(), err_msg=what)
        assert_close(layer.backward(dy), xt.grad.numpy(), dtype, what)
    layer(x)
    assert layer.backward(dy, input_grad=False) is None


def test_layers_refuse_bad_padding_when_built():
    for make, error, match in [(lambda: nn.ReflectionPad2d((1, 2)), ValueError, "tuple of 4 ints"),
                               (lambda: nn.ZeroPad2d(1.5), ValueError, "tuple of 4 ints"),
                               (lambda: nn.CircularPad2d((1, 2, 3, 4.0)), TypeError, "tuple of ints"),
                               (lambda: nn.ConstantPad2d(1, "x"), TypeError, "value")]:
        with pytest.raises(error, match=match):
            make()


# --- Conv2d(padding_mode=...) --------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_mode_against_pytorch(be, padding_mode):
    """Forward, input and parameter gradients of torch's Conv2d loaded from our state dict (and
    back), for int, pair and "same" padding (odd extents: the extra pixel right and bottom)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    for kwargs, shape in [(dict(kernel_size=3, padding=1), (2, 3, 6, 7)),
                          (dict(kernel_size=(3, 4), padding=(2, 1), stride=2), (1, 3, 5, 6)),
                          (dict(kernel_size=(2, 3), padding="same", dilation=(1, 2)), (2, 3, 5, 6)),
                          (dict(kernel_size=3, padding=2, groups=3), (3, 6, 6))]:
        channels = shape[-3]
        layer = nn.Conv2d(channels, 6, padding_mode=padding_mode, dtype=np.float64, **kwargs).to(be)
        torch_layer = torch.nn.Conv2d(channels, 6, padding_mode=padding_mode, dtype=torch.float64, **kwargs)
        torch_layer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
        x = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_layer(xt)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        what = f"{padding_mode} {kwargs} {shape}"
        assert_close(layer(x), yt.detach().numpy(), np.float64, what)
        layer.zero_grad()
        assert_close(layer.backward(dy), xt.grad.numpy(), np.float64, what + " dx")
        assert_close(layer.weight.grad, torch_layer.weight.grad.numpy(), np.float64, what + " dweight")
        assert_close(layer.bias.grad, torch_layer.bias.grad.numpy(), np.float64, what + " dbias")
        back = nn.Conv2d(channels, 6, padding_mode=padding_mode, dtype=np.float64, **kwargs)
        back.load_state_dict({k: v.detach().numpy() for k, v in torch_layer.state_dict().items()})
        np.testing.assert_array_equal(back.weight.data, torch_layer.weight.detach().numpy())
        assert repr(layer).endswith(f"padding_mode={padding_mode})")


def test_conv2d_padding_mode_finite_differences():
    """The input's, weight's and bias's gradients of sum(r * layer(x)) against central differences."""
    rng = np.random.default_rng(18)
    for padding_mode, padding in (("reflect", 2), ("replicate", (1, 3)), ("circular", "same")):
        layer = nn.Conv2d(2, 3, (3, 2), padding=padding, padding_mode=padding_mode, dtype=np.float64, rng=rng)
        x = rng.standard_normal((2, 2, 5, 4))
        r = rng.standard_normal(layer(x).shape)
        layer.zero_grad()
        dx = layer.backward(r)
        report = gradcheck(lambda: float(np.sum(r * layer(x))), [x, layer.weight.data, layer.bias.data],
                           [dx, layer.weight.grad, layer.bias.grad])
        assert report.max_rel_error < 1e-6, f"{padding_mode}: {report}"


def test_conv_padding_mode_refusals():
    with pytest.raises(ValueError, match="padding_mode must be one of .* but got padding_mode='edge'"):
        nn.Conv2d(3, 4, 3, padding_mode="edge")
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'):
        nn.ConvTranspose2d(3, 4, 3, padding_mode="circular")
    with pytest.raises(ValueError, match="Argument #4"):   # a reflection pad as large as the input
        nn.Conv2d(1, 1, 5, padding=2, padding_mode="reflect")(np.ones((1, 1, 2, 2), np.float32))


# --- the kernels on the emulator -----------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_kernels_under_guard_zones_and_the_race_check(dtype):
    """Against the NumPy path with guard zones (an access past any array faults) and the race
    check (exact to the byte: float16 neighbours share words) under a random schedule."""
    from cnn_gpu import emu
    rng = np.random.default_rng(19)
    with emu.checking(guard=True, race=True, schedule="random", seed=3):
        for mode in MODES:
            for i in range(6):
                assert_emu_matches_numpy(rng, *draw(rng, mode, max_size=5), mode, dtype)


def assert_emu_matches_numpy(rng, shape, pad, value, mode, dtype):
    """The kernels (on the emulator, under whatever checking is on) against the NumPy path."""
    x = rng.standard_normal(shape).astype(dtype)
    y = F.pad(x, pad, mode, value, backend="emu")
    dy = rng.standard_normal(y.shape).astype(dtype)
    what = f"{mode} {shape} {pad}"
    np.testing.assert_array_equal(y, F.pad(x, pad, mode, value, backend="numpy"), err_msg=what)
    dx, expected = (F.pad_backward(dy, shape, pad, mode, backend=be) for be in ("emu", "numpy"))
    if dtype == np.float16:   # FP32 sums in other orders: one float16 rounding apart at most
        np.testing.assert_allclose(dx.astype(np.float32), expected, rtol=2**-10, atol=2**-14, err_msg=what)
    else:
        assert_close(dx, expected, dtype, what + " dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_kernels_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(20)
    for shape, pad, mode in [((2, 3, 7, 9), (6, 6, 6, 6), "reflect"), ((1, 2, 5, 4), (-2, 2, 5, 5), "circular"),
                             ((2, 1, 4, 6), (7, 2, 0, 9), "replicate")]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(F.pad(x, pad, mode).shape).astype(np.float32)
        results = []
        for checks in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
            with emu.checking(guard=True, **checks):
                results.append(F.pad_backward(dy, shape, pad, mode, backend="emu"))
        assert results[0].tobytes() == results[1].tobytes(), f"{shape} {pad} {mode} under {schedule}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    rng = np.random.default_rng(21)
    for mode in MODES:
        for i in range(20):
            assert_cuda_matches_numpy(rng, *draw(rng, mode), mode, dtype)


def assert_cuda_matches_numpy(rng, shape, pad, value, mode, dtype):
    """The cuda backend on CuPy arrays: the forward pass NumPy's bits, the gradient within a float16
    rounding or the dtype's tolerance (sums in another order)."""
    import cupy
    x = rng.standard_normal(shape).astype(dtype)
    y = F.pad(cupy.asarray(x), pad, mode, value)
    what = f"{mode} {shape} {pad}"
    assert y.get().tobytes() == F.pad(x, pad, mode, value).tobytes(), what
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.pad_backward(cupy.asarray(dy), shape, pad, mode).get()
    expected = F.pad_backward(dy, shape, pad, mode)
    if dtype == np.float16:
        np.testing.assert_allclose(dx.astype(np.float64), expected, rtol=2**-10, atol=2**-12, err_msg=what)
    else:
        assert_close(dx, expected, dtype, what + " dx")


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

@pytest.mark.torch
def test_benchmark_models_know_the_layers_and_padding_modes():
    """A model with the padding layers and a Conv2d(padding_mode="circular") gets its shapes (the
    convolution's geometry on the padded input), its launches (kernels pad.cu holds) and a PyTorch
    mirror that computes what it does."""
    torch = pytest.importorskip("torch")
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.ReflectionPad2d((1, 2, 0, 1)), nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular",
                                                                      dtype=np.float64),
                          nn.ZeroPad2d((-1, 0, 2, 0)), nn.ConstantPad2d(1, 0.5), nn.ReplicationPad2d(2),
                          nn.CircularPad2d((1, 1, 0, 3)))
    x = np.random.default_rng(22).standard_normal((2, 2, 5, 4))
    leaves = leaf_layers(model, x.shape)
    shapes = [(type(leaf).__name__, shape_in, shape_out) for leaf, shape_in, shape_out, _ in leaves]
    assert shapes == [("ReflectionPad2d", (2, 2, 5, 4), (2, 2, 6, 7)), ("Conv2d", (2, 2, 6, 7), (2, 3, 6, 9)),
                      ("ZeroPad2d", (2, 3, 6, 9), (2, 3, 8, 8)), ("ConstantPad2d", (2, 3, 8, 8), (2, 3, 10, 10)),
                      ("ReplicationPad2d", (2, 3, 10, 10), (2, 3, 14, 14)),
                      ("CircularPad2d", (2, 3, 14, 14), (2, 3, 17, 16))]
    assert leaves[1][3].x_shape == (2, 2, 8, 11) and leaves[1][3].padding == (0, 0)
    source = backend.kernel_source("pad")
    for layer in (model[0], *model[2:]):
        kernels = [kernel for kernel, _ in _layer_passes(layer, 1, 1, 8)]
        assert kernels == ["pad_forward", "pad_backward"], kernels
        assert all(f"\n{kernel}(" in source for kernel in kernels), kernels
    with torch.no_grad():
        np.testing.assert_allclose(torch_mirror(model, torch)(torch.tensor(x)).numpy(), model(x), rtol=1e-12)


def test_step_model_prices_the_padding_of_a_padding_mode(monkeypatch):
    """Conv2d(padding_mode=...) in the benchmark's step model: F.pad's forward launch before each
    such convolution and its backward after the dgrad (none for the first layer, whose input gets
    no gradient), each reading and writing the input and the padded input once."""
    from cnn_gpu import bench, roofline
    from cnn_gpu.bench import modeled, training
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect", bias=False, dtype=np.float32),
                          nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=(2, 1), padding_mode="circular", bias=False, dtype=np.float32),
                          nn.Flatten(), nn.Linear(4 * 10 * 8, 10, dtype=np.float32))
    monkeypatch.setattr(training, "build_model", lambda shape, dtype: model)
    # the convolutions' own launches are priced elsewhere (from emulator profiles: slow to build)
    monkeypatch.setattr(roofline, "model_conv", lambda *args, **kwargs: [])
    case = bench.make_cases("tiny", ["train_step"])[0]
    assert case.shape.image_shape == (1, 8, 8)
    batch = case.shape.batch
    kernels = [(e.kernel, e.dram_bytes) for e in modeled.case_estimates(case, roofline.spec("h100"), "float32")
               if e.kernel.startswith("pad_")]
    first, second = (batch * 1 * 8 * 8 + batch * 1 * 10 * 10) * 4, (batch * 4 * 8 * 8 + batch * 4 * 12 * 10) * 4
    assert kernels == [("pad_forward", first), ("pad_forward", second), ("pad_backward", second)]
