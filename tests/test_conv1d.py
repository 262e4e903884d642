"""The 1-D ops and layers (conv1d, conv_transpose1d, max_pool1d, avg_pool1d, adaptive_avg_pool1d and
nn.Conv1d, ConvTranspose1d, MaxPool1d, AvgPool1d, AdaptiveAvgPool1d), views onto the 2-D ops.

Proof: seeded sweeps against PyTorch CPU (float64 to 1e-10, float32 to 1e-5) on numpy and emu, forward
and backward, where every configuration we refuse must be one PyTorch refuses; the 2-D op on the
(N, C, 1, L) view, bit for bit; finite differences; float16 against the NumPy oracle; the emulator's
guard zones and reverse/random schedules; refusals in 1-D terms before any launch; the layers and
their state dicts against PyTorch's; a small 1-D model trained a few steps beside PyTorch's."""
import re
import warnings

import numpy as np
import pytest

from cnn_gpu import backend, nn, optim
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, needs_emu
from test_torch_signatures import assert_covers, sweep, tensor

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]


def sized(rng, low, high):
    """A size argument: an int or, a third of the time, a 1-tuple, as PyTorch takes them."""
    value = int(rng.integers(low, high + 1))
    return (value,) if rng.random() < 0.33 else value


def signal(cfg, rng, dtype, channels):
    shape = (channels, cfg["L"]) if cfg["unbatched"] else (cfg["N"], channels, cfg["L"])
    return rng.standard_normal(shape).astype(dtype)


param_backend_dtype = pytest.mark.parametrize("be, dtype", [
    pytest.param(be, dt, marks=needs_emu if be == "emu" else ()) for be in ("numpy", "emu")
    for dt in (np.float64, np.float32)])


# --- convolutions against PyTorch ---------------------------------------------------------------

def draw_conv(rng):
    groups = int(rng.choice([1, 1, 2, 3]))
    transposed = bool(rng.random() < 0.35)
    cfg = dict(N=int(rng.integers(1, 4)), C=groups * int(rng.integers(1, 3)), K=groups * int(rng.integers(1, 3)),
               groups=groups, L=int(rng.integers(1, 13)), k=int(rng.integers(1, 6)), dilation=sized(rng, 1, 3),
               stride=sized(rng, 1, 3), unbatched=bool(rng.random() < 0.3), bias=bool(rng.random() < 0.7),
               transposed=transposed)
    if transposed:
        cfg["padding"] = sized(rng, 0, 2)
        cfg["output_padding"] = int(rng.integers(0, 3))
    elif rng.random() < 0.4:
        cfg["padding"] = str(rng.choice(["same", "valid"]))
        if cfg["padding"] == "same":
            cfg["stride"] = 1
    else:
        cfg["padding"] = sized(rng, 0, 3)
    return cfg


def check_conv(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    x = signal(cfg, rng, dtype, cfg["C"])
    b = rng.standard_normal(cfg["K"]).astype(dtype) if cfg["bias"] else None
    options = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    if cfg["transposed"]:
        w = rng.standard_normal((cfg["C"], cfg["K"] // cfg["groups"], cfg["k"])).astype(dtype)
        options["output_padding"] = cfg["output_padding"]
        ours, ours_backward, theirs = F.conv_transpose1d, F.conv_transpose1d_backward, TF.conv_transpose1d
    else:
        w = rng.standard_normal((cfg["K"], cfg["C"] // cfg["groups"], cfg["k"])).astype(dtype)
        ours, ours_backward, theirs = F.conv1d, F.conv1d_backward, TF.conv1d
    cfg["torch"] = lambda: theirs(tensor(torch, x), tensor(torch, w), tensor(torch, b), **options)
    y = ours(x, w, b, **options, backend=be)
    xt, wt, bt = tensor(torch, x, True), tensor(torch, w, True), tensor(torch, b, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # PyTorch's warning that asymmetric "same" copies the input
        yt = theirs(xt, wt, bt, **options)
    dy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = ours_backward(dy, x, w, **options, bias=cfg["bias"], backend=be)
    what = f"{be} {cfg}"
    assert_close(y, yt.detach().numpy(), dtype, what + " y")
    assert_close(dx, xt.grad.numpy(), dtype, what + " dx")
    assert_close(dw, wt.grad.numpy(), dtype, what + " dweight")
    if cfg["bias"]:
        assert_close(db, bt.grad.numpy(), dtype, what + " dbias")
    else:
        assert db is None


@param_backend_dtype
def test_convolutions_against_pytorch(be, dtype, torch):
    configs = sweep(draw_conv, lambda c, r, d: check_conv(c, r, d, be, torch), be, dtype, 11, torch)
    if dtype == np.float64 and be == "numpy":   # the longest sweep
        one = lambda v: v[0] if isinstance(v, tuple) else v   # noqa: E731
        assert_covers(configs, {
            "conv1d same, even extent": lambda c: c["padding"] == "same" and one(c["dilation"]) * (c["k"] - 1) % 2,
            "conv1d valid": lambda c: c["padding"] == "valid",
            "conv1d strided, dilated, grouped": lambda c: not c["transposed"] and one(c["stride"]) > 1
            and one(c["dilation"]) > 1 and c["groups"] > 1,
            "conv1d unbatched": lambda c: c["unbatched"] and not c["transposed"],
            "conv_transpose1d output_padding, groups": lambda c: c["transposed"] and c["output_padding"] > 0
            and c["groups"] > 1,
            "conv_transpose1d unbatched": lambda c: c["unbatched"] and c["transposed"],
            "1-tuple sizes": lambda c: isinstance(c["stride"], tuple) and isinstance(c["dilation"], tuple),
        })


# --- pooling against PyTorch --------------------------------------------------------------------

def draw_pool(rng):
    kernel = int(rng.integers(1, 6))
    cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), L=int(rng.integers(1, 14)),
               kernel_size=(kernel,) if rng.random() < 0.3 else kernel,
               stride=None if rng.random() < 0.3 else sized(rng, 1, 3), padding=int(rng.integers(0, kernel // 2 + 1)),
               ceil_mode=bool(rng.random() < 0.5), unbatched=bool(rng.random() < 0.3),
               kind=str(rng.choice(["max", "avg", "adaptive"])))
    if cfg["kind"] == "max":
        cfg["dilation"] = sized(rng, 1, 3)
    elif cfg["kind"] == "avg":
        cfg["count_include_pad"] = bool(rng.random() < 0.5)
    else:
        cfg = dict(cfg, output_size=sized(rng, 1, 15))
    return cfg


def check_pool(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    x = signal(cfg, rng, dtype, cfg["C"])
    if cfg["kind"] == "max":   # some ties: values drawn from a few levels
        x = rng.integers(-3, 4, x.shape).astype(dtype) + (rng.random(x.shape) < 0.5) * x
    if cfg["kind"] == "adaptive":
        options = dict(output_size=cfg["output_size"])
        ours, theirs = F.adaptive_avg_pool1d, TF.adaptive_avg_pool1d
    else:
        options = {k: cfg[k] for k in ("kernel_size", "stride", "padding", "ceil_mode", "dilation",
                                       "count_include_pad") if k in cfg}
        ours, theirs = (F.max_pool1d, TF.max_pool1d) if cfg["kind"] == "max" else (F.avg_pool1d, TF.avg_pool1d)
    cfg["torch"] = lambda: theirs(tensor(torch, x), **options)
    result = ours(x, **options, backend=be)
    xt = tensor(torch, x, True)
    if cfg["kind"] == "max":
        yt, indices_t = theirs(xt, **options, return_indices=True)
    else:
        yt = theirs(xt, **options)
    dy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    what = f"{be} {cfg}"
    if cfg["kind"] == "max":
        y, indices = result
        assert indices.dtype == np.int32 and indices.shape == y.shape
        np.testing.assert_array_equal(indices, indices_t.numpy(), err_msg=what + " indices")
        dx = F.max_pool1d_backward(dy, indices, x.shape, **options, backend=be)
    elif cfg["kind"] == "avg":
        y, dx = result, F.avg_pool1d_backward(dy, x.shape, **options, backend=be)
    else:
        y, dx = result, F.adaptive_avg_pool1d_backward(dy, x.shape, backend=be)
    assert_close(y, yt.detach().numpy(), dtype, what + " y")
    assert_close(dx, xt.grad.numpy(), dtype, what + " dx")


@param_backend_dtype
def test_pooling_against_pytorch(be, dtype, torch):
    configs = sweep(draw_pool, lambda c, r, d: check_pool(c, r, d, be, torch), be, dtype, 12, torch)
    if dtype == np.float64 and be == "numpy":   # the longest sweep
        assert_covers(configs, {
            "max, dilated, padded, ceil_mode": lambda c: c["kind"] == "max" and c["dilation"] not in (1, (1,))
            and c["padding"] and c["ceil_mode"],
            "avg, ceil_mode, padding not counted": lambda c: c["kind"] == "avg" and c["ceil_mode"] and c["padding"]
            and not c["count_include_pad"],
            "adaptive, output longer than input": lambda c: c["kind"] == "adaptive"
            and np.max(c["output_size"]) > c["L"],
            "unbatched max": lambda c: c["unbatched"] and c["kind"] == "max",
            "stride None": lambda c: c["kind"] != "adaptive" and c["stride"] is None,
        })


def test_max_pool1d_nan_and_tie_rules_as_pytorch(torch):
    """Ties take the first maximum, a NaN wins with the last NaN's position (PyTorch's kernels)."""
    x = np.array([[[1, 3, 3, 0, np.nan, 2, np.nan, 5, 5, -np.inf, -np.inf, 4]]])
    for kernel, stride, padding in [(3, 1, 1), (4, 2, 2), (2, 3, 0), (5, 1, 2)]:
        y, indices = F.max_pool1d(x, kernel, stride, padding)
        yt, it = torch.nn.functional.max_pool1d(torch.tensor(x), kernel, stride, padding, return_indices=True)
        np.testing.assert_array_equal(y, yt.numpy())
        np.testing.assert_array_equal(indices, it.numpy())


# --- the 2-D view, finite differences -----------------------------------------------------------

def test_same_bits_as_the_2d_op_on_the_view():
    rng = np.random.default_rng(13)
    x, w, b = rng.standard_normal((3, 4, 17)), rng.standard_normal((6, 2, 4)), rng.standard_normal(6)
    y = F.conv1d(x, w, b, 2, 3, 2, 2)
    y2 = F.conv2d(x[:, :, None], w[:, :, None], b, (1, 2), (0, 3), (1, 2), 2)
    assert np.array_equal(y, y2[:, :, 0])
    dy = rng.standard_normal(y.shape)
    for ours, theirs in zip(F.conv1d_backward(dy, x, w, 2, 3, 2, 2),
                            F.conv2d_backward(dy[:, :, None], x[:, :, None], w[:, :, None], (1, 2), (0, 3), (1, 2), 2)):
        assert np.array_equal(ours, theirs[:, :, 0] if theirs.ndim == 4 else theirs)
    y, indices = F.max_pool1d(x, 3, 2, 1, 2, True)
    y2, indices2 = F.max_pool2d(x[:, :, None], (1, 3), (1, 2), (0, 1), (1, 2), True)
    assert np.array_equal(y, y2[:, :, 0]) and np.array_equal(indices, indices2[:, :, 0])
    assert np.array_equal(F.avg_pool1d(x, 4, 3, 2, True, False),
                          F.avg_pool2d(x[:, :, None], (1, 4), (1, 3), (0, 2), True, False)[:, :, 0])


OPS = {
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, 2, 1, 2, 2),
               lambda dy, x, w, b: F.conv1d_backward(dy, x, w, 2, 1, 2, 2), (2, 4, 9), (6, 2, 3), True),
    "conv1d same": (lambda x, w: F.conv1d(x, w, None, 1, "same", 3),
                    lambda dy, x, w: F.conv1d_backward(dy, x, w, 1, "same", 3, bias=False)[:2], (2, 3, 7), (4, 3, 2),
                    False),
    "conv_transpose1d": (lambda x, w, b: F.conv_transpose1d(x, w, b, 2, 1, 1, 2, 2),
                         lambda dy, x, w, b: F.conv_transpose1d_backward(dy, x, w, 2, 1, 1, 2, 2), (2, 4, 5),
                         (4, 2, 3), True),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_finite_differences_of_the_convolutions(name):
    forward, backward, x_shape, w_shape, bias = OPS[name]
    rng = np.random.default_rng(14)
    inputs = [rng.standard_normal(x_shape), rng.standard_normal(w_shape)]
    channels = w_shape[0] if "transpose" not in name else w_shape[1] * 2
    inputs += [rng.standard_normal(channels)] if bias else []
    report = check_op(forward, backward, inputs)
    assert report.max_rel_error < 1e-6, f"{name}: {report}"


def test_finite_differences_of_the_pools():
    rng = np.random.default_rng(15)
    separated = rng.permutation(2 * 3 * 11).reshape(2, 3, 11) * 0.1   # unique maxima under perturbation
    pool = dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)
    for forward, backward, x in [
        (lambda x: F.max_pool1d(x, **pool), lambda dy, x: F.max_pool1d_backward(
            dy, F.max_pool1d(x, **pool)[1], x.shape, **pool), separated),
        (lambda x: F.avg_pool1d(x, 4, 3, 2, True, False),
         lambda dy, x: F.avg_pool1d_backward(dy, x.shape, 4, 3, 2, True, False), rng.standard_normal((2, 3, 11))),
        (lambda x: F.adaptive_avg_pool1d(x, 4), lambda dy, x: F.adaptive_avg_pool1d_backward(dy, x.shape),
         rng.standard_normal((3, 10))),
    ]:
        report = check_op(forward, backward, [x])
        assert report.max_rel_error < 1e-6, str(report)


# --- float16, the emulator's checks ------------------------------------------------------------

def _every_op(x, w, wt, dy_conv, dy_convt, be):
    """Every 1-D op and backward on one signal, as a list of arrays."""
    y, indices = F.max_pool1d(x, 3, 2, 1, 2, True, backend=be)
    return [F.conv1d(x, w, None, 1, "same", 2, backend=be),
            *F.conv1d_backward(dy_conv, x, w, 1, "same", 2, backend=be),
            F.conv_transpose1d(x, wt, None, 2, 1, 1, backend=be),
            *F.conv_transpose1d_backward(dy_convt, x, wt, 2, 1, 1, backend=be),
            y, indices, F.max_pool1d_backward(y, indices, x.shape, 3, 2, 1, 2, True, backend=be),
            F.avg_pool1d(x, 3, 2, 1, True, False, backend=be),
            F.avg_pool1d_backward(x[..., :6], x.shape, 3, 2, 1, True, False, backend=be),
            F.adaptive_avg_pool1d(x, 5, backend=be), F.adaptive_avg_pool1d_backward(x[..., :5], x.shape, backend=be)]


def _operands(rng, dtype, unbatched=False):
    x = rng.standard_normal((4, 11) if unbatched else (2, 4, 11)).astype(dtype)
    w, wt = rng.standard_normal((6, 4, 4)).astype(dtype), rng.standard_normal((4, 3, 3)).astype(dtype)
    lead = x.shape[:-2]
    return (x, w, wt, rng.standard_normal(lead + (6, 11)).astype(dtype),
            rng.standard_normal(lead + (3, 22)).astype(dtype))


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("unbatched", [False, True])
def test_emulator_against_numpy(dtype, unbatched):
    """The kernels on the views (under the emulator's default guard zones) against the NumPy path;
    float16 within one FP16 rounding of the oracle."""
    operands = _operands(np.random.default_rng(16), dtype, unbatched)
    for i, (ours, oracle) in enumerate(zip(_every_op(*operands, "emu"), _every_op(*operands, "numpy"))):
        assert ours.dtype == oracle.dtype and ours.shape == oracle.shape, i
        if dtype == np.float16:
            np.testing.assert_allclose(ours.astype(np.float32), oracle.astype(np.float32), rtol=2**-9, atol=2**-9,
                                       err_msg=f"output {i}")
        else:
            assert_close(ours, oracle, dtype, f"output {i}")


def test_float16_on_numpy_is_the_float32_op_rounded_once():
    operands = _operands(np.random.default_rng(17), np.float16)
    wide = [a.astype(np.float32) for a in operands]
    for i, (half, single) in enumerate(zip(_every_op(*operands, "numpy"), _every_op(*wide, "numpy"))):
        expected = single if single.dtype == np.int32 else single.astype(np.float16)
        assert half.dtype == expected.dtype and np.array_equal(half, expected), f"output {i}"


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emulator_bit_identical_under_schedules(schedule):
    """Guard zones on, the blocks and threads run in another order: the same bits (no race)."""
    from cnn_gpu import emu
    operands = _operands(np.random.default_rng(18), np.float32)
    results = []
    for checks in (dict(schedule="forward"), dict(schedule=schedule, seed=5)):
        with emu.checking(guard=True, **checks):
            results.append(_every_op(*operands, "emu"))
    for i, (a, b) in enumerate(zip(*results)):
        assert a.tobytes() == b.tobytes(), f"output {i} under {schedule}"


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_in_1d_terms_before_any_launch(be, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("launched before the arguments were checked")
    monkeypatch.setattr(backend, "launch", no_launch)
    x, w, wt = np.ones((2, 4, 6)), np.ones((6, 2, 3)), np.ones((4, 3, 3))
    y, indices = F.max_pool1d(x, 3, backend="numpy")
    for call, error, match in [
        (lambda: F.conv1d(x, w, groups=2, dilation=4), ValueError,
         r"output would be empty \(length -2\): input length 6 with padding 0 is shorter than the dilated kernel 9"),
        (lambda: F.conv1d(x, w), ValueError, r"weight shape \(6, 2, 3\) expects 2 input channels .* x has 4 "
                                             r"\(x shape \(2, 4, 6\)\)"),
        (lambda: F.conv1d(x, w, groups=4), ValueError, r"out_channels \(6\) must both be divisible by groups \(4\)"),
        (lambda: F.conv1d(x, w, groups=2, stride=2, padding="same"), ValueError, r"strided convolutions \(stride 2\)"),
        (lambda: F.conv1d(x, w, groups=2, padding="full"), ValueError, "padding must be an int, a 1-tuple"),
        (lambda: F.conv1d(x, w, groups=2, stride=(1, 2)), ValueError,
         r"stride must be an int or a 1-tuple, got \(1, 2\)"),
        (lambda: F.conv1d(x, w, groups=2, padding=-1), ValueError, "padding must be an int >= 0"),
        (lambda: F.conv1d(x, w, groups=2, stride=1.5), TypeError, "stride must be a positive int"),
        (lambda: F.conv1d(x, w[:, :, :, None], groups=2), ValueError, "weight must be 3-D"),
        (lambda: F.conv1d(x[:, :, :, None], w, groups=2), ValueError, "x must be 2-D or 3-D"),
        (lambda: F.conv1d(x, w, np.ones(5), groups=2), ValueError, r"bias must have shape \(6,\)"),
        (lambda: F.conv1d(x, w.astype(np.float32), groups=2), TypeError, "weight has dtype float32"),
        (lambda: F.conv1d(np.ones((2, 4, 0)), w, groups=2), ValueError, r"x has an empty dimension: shape \(2, 4, 0\)"),
        (lambda: F.conv1d_backward(np.ones((2, 6, 5)), x, w, groups=2), ValueError,
         r"dy must have shape \(2, 6, 4\)"),
        (lambda: F.conv1d_backward(np.ones((2, 6, 4)), x, w, groups=2, input_grad=1), TypeError, "input_grad"),
        (lambda: F.conv_transpose1d(x, wt, output_padding=1), ValueError,
         "output_padding 1 must be smaller than stride 1 or dilation 1"),
        (lambda: F.conv_transpose1d(x, wt, padding=5), ValueError,
         r"output would be empty \(length -2\): padding 5 is too large for input length 6 and kernel 3"),
        (lambda: F.conv_transpose1d(x, wt[:3]), ValueError, r"expects 3 input channels but x has 4"),
        (lambda: F.conv_transpose1d_backward(np.ones((2, 3, 7)), x, wt), ValueError, r"dy must have shape \(2, 3, 8\)"),
        (lambda: F.max_pool1d(x, 3, padding=2), ValueError, "padding 2 must be at most half of kernel_size 3"),
        (lambda: F.max_pool1d(x, 4, dilation=2), ValueError,
         r"output would be empty \(length 0\): input length 6 with padding 0 is shorter than the dilated window 7"),
        (lambda: F.max_pool1d(x, (2, 2)), ValueError, "kernel_size must be an int or a 1-tuple"),
        (lambda: F.max_pool1d(x, 3, ceil_mode=1), TypeError, "ceil_mode"),
        (lambda: F.max_pool1d_backward(y, indices + 3, x.shape, 3), ValueError,
         r"indices\[0, 0, 0\] = 3 is not a tap of its window \(positions 0..2 step 1 of a length-6 input"),
        (lambda: F.max_pool1d_backward(y, indices - 1, x.shape, 3), ValueError, r"indices\[0, 0, 0\] = -1 is not"),
        (lambda: F.max_pool1d_backward(y, indices.astype(np.int64), x.shape, 3), TypeError, "int32"),
        (lambda: F.max_pool1d_backward(y, indices, (2, 4, 9), 3), ValueError,
         r"dy must have shape \(2, 4, 3\) \(the pooled shape of x_shape \(2, 4, 9\)\)"),
        (lambda: F.max_pool1d_backward(y, indices, (2, 4, 6, 1), 3), ValueError, "x_shape must be a tuple of 2 or 3"),
        (lambda: F.avg_pool1d(x, 0), ValueError, "kernel_size must be a positive int"),
        (lambda: F.avg_pool1d(x, 7), ValueError, r"output would be empty \(length 0\): input length 6"),
        (lambda: F.avg_pool1d_backward(y, x.shape, 2), ValueError, r"dy must have shape \(2, 4, 3\)"),
        (lambda: F.adaptive_avg_pool1d(x, 0), ValueError, "output_size must be a positive int"),
        (lambda: F.adaptive_avg_pool1d(x, (2, 2)), ValueError, "output_size must be an int or a 1-tuple"),
        (lambda: F.adaptive_avg_pool1d(np.ones((2, 0, 6)), 2), ValueError, "non-empty channel and length"),
        (lambda: F.adaptive_avg_pool1d_backward(y, (2, 3, 6)), ValueError, r"cannot come from an input of shape"),
    ]:
        with backend.use_backend(be), pytest.raises(error, match=match) as refusal:
            call()
        # no internal (N, C, 1, L) view in the message: no 4-D shape, no "AxB" sizes
        message = str(refusal.value)
        assert not re.search(r"\(\d+, \d+, 1, \d+\)|\d+x\d+", message), message


# --- the layers ----------------------------------------------------------------------------------

LAYERS = [
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, dtype=np.float64),
     lambda t: t.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (2, 4, 11)),
    (lambda: nn.Conv1d(3, 5, 4, padding="same", bias=False, dtype=np.float64),
     lambda t: t.nn.Conv1d(3, 5, 4, padding="same", bias=False), (3, 9)),
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dtype=np.float64),
     lambda t: t.nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 7)),
    (lambda: nn.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True), lambda t: t.nn.MaxPool1d(3, 2, 1, 2, ceil_mode=True),
     (2, 3, 10)),
    (lambda: nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda t: t.nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False), (3, 10)),
    (lambda: nn.AdaptiveAvgPool1d(4), lambda t: t.nn.AdaptiveAvgPool1d(4), (2, 3, 10)),
]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("index", range(len(LAYERS)))
def test_layers_and_state_dicts_against_pytorch(index, be, torch):
    ours_factory, theirs_factory, x_shape = LAYERS[index]
    rng = np.random.default_rng(19 + index)
    nn.init.manual_seed(index)
    ours, theirs = ours_factory().to(be), theirs_factory(torch).double()
    assert repr(ours).split("(")[0] == repr(theirs).split("(")[0]
    state = ours.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    x = rng.standard_normal(x_shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    y = ours(x)
    assert_close(y, yt.detach().numpy(), np.float64, "forward")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, "dx")
    for (name, p), (name_t, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == name_t
        assert_close(p.grad, pt.grad.numpy(), np.float64, name)
    if state:   # and back: PyTorch's parameters load into ours
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(-0.5)
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        assert_close(ours(x), theirs(xt).detach().numpy(), np.float64, "forward after loading PyTorch's state")


def test_default_initialisation_as_pytorch():
    """kaiming_uniform(a=sqrt(5)) weights and U(+-1/sqrt(fan_in)) biases, fan_in of PyTorch's shapes."""
    nn.init.manual_seed(24)
    for layer, fan_in in [(nn.Conv1d(60, 80, 5, groups=2), 30 * 5), (nn.ConvTranspose1d(60, 80, 5, groups=2), 40 * 5)]:
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert p.dtype == np.float32 and np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound
    assert nn.Conv1d(6, 8, 5, groups=2).weight.data.shape == (8, 3, 5)
    assert nn.ConvTranspose1d(6, 8, 5, groups=2).weight.data.shape == (6, 4, 5)


def test_layers_refuse_bad_settings_when_built():
    for build, match in [(lambda: nn.Conv1d(4, 6, 3, groups=4), "divisible by groups"),
                         (lambda: nn.Conv1d(4, 6, 3, stride=2, padding="same"), "strided"),
                         (lambda: nn.Conv1d(4, 6, (3, 3)), "kernel_size must be an int or a 1-tuple"),
                         (lambda: nn.Conv1d(4, 6, 3, padding_mode="mirror"), "padding_mode"),
                         (lambda: nn.ConvTranspose1d(4, 6, 3, padding_mode="reflect"), "padding mode"),
                         (lambda: nn.ConvTranspose1d(4, 6, 3, output_padding=1), "output_padding"),
                         (lambda: nn.MaxPool1d(3, padding=2), "at most half"),
                         (lambda: nn.AvgPool1d((2, 2)), "1-tuple"),
                         (lambda: nn.AdaptiveAvgPool1d(0), "output_size")]:
        with pytest.raises(ValueError, match=match):
            build()


def test_max_pool_layer_returns_indices_and_checks_only_those_it_handed_out(monkeypatch):
    import cnn_gpu.nn.layers_1d as layers_1d
    x = np.random.default_rng(20).standard_normal((2, 3, 9))
    checked = []
    real = layers_1d.F.max_pool1d_backward
    monkeypatch.setattr(layers_1d.F, "max_pool1d_backward", lambda *a, **k: checked.append(1) or real(*a, **k))
    y, indices = nn.MaxPool1d(3, return_indices=True)(x)
    assert indices.dtype == np.int32 and y.shape == indices.shape == (2, 3, 3)
    pool = nn.MaxPool1d(3)
    pool(x)
    pool.backward(np.ones((2, 3, 3)))
    assert checked == []
    with_indices = nn.MaxPool1d(3, return_indices=True)
    with_indices(x)
    with_indices.backward(np.ones((2, 3, 3)))
    assert checked == [1]


def _model_1d(dtype=np.float64):
    nn.init.manual_seed(21)
    return nn.Sequential(nn.Conv1d(2, 6, 5, padding=2, dtype=dtype), nn.BatchNorm1d(6, dtype=dtype), nn.ReLU(),
                         nn.MaxPool1d(2), nn.Conv1d(6, 4, 3, groups=2, dtype=dtype), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(12, 5, dtype=dtype))


@pytest.mark.parametrize("be", BACKENDS)
def test_frozen_layers_and_no_input_gradient(be, monkeypatch):
    """A frozen first Conv1d asked for no input gradient runs neither dgrad nor wgrad; a frozen one
    inside the trained part runs its dgrad only; the others' gradients are those of the full model."""
    from cnn_gpu.functional import conv as conv_module
    dgrad, wgrad = ("_gpu_dgrad", "_gpu_wgrad") if be == "emu" else ("_input_grad", "_weight_grad")
    calls = []
    for name in (dgrad, wgrad):
        original = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(22)
    x, dy = rng.standard_normal((3, 2, 16)), rng.standard_normal((3, 5))
    full = _model_1d().to(be)
    full(x)
    assert full.backward(dy, input_grad=False) is None
    assert sorted(calls) == sorted([dgrad, wgrad, wgrad])   # the first convolution's dgrad is skipped
    model = _model_1d().to(be)
    model[0].requires_grad_(False)
    model[4].requires_grad_(False)
    calls.clear()
    model(x)
    model.backward(dy, input_grad=False)
    assert calls == [dgrad]
    assert model[0].weight.grad is None and model[4].weight.grad is None and model[4].bias.grad is None
    for (name, p), q in zip(model.named_parameters(), full.parameters()):
        if p.grad is not None:
            assert np.array_equal(p.grad, q.grad), name


@pytest.mark.parametrize("be", BACKENDS)
def test_small_1d_model_trains_as_pytorch(be, torch):
    """Conv1d-BatchNorm1d-ReLU-MaxPool1d-Conv1d-ReLU-AdaptiveAvgPool1d-Flatten-Linear, three SGD steps
    with momentum beside PyTorch's: the same losses, gradients and parameters."""
    tnn = torch.nn
    ours = _model_1d().to(be)
    theirs = tnn.Sequential(tnn.Conv1d(2, 6, 5, padding=2), tnn.BatchNorm1d(6), tnn.ReLU(), tnn.MaxPool1d(2),
                            tnn.Conv1d(6, 4, 3, groups=2), tnn.ReLU(), tnn.AdaptiveAvgPool1d(3), tnn.Flatten(),
                            tnn.Linear(12, 5)).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(23)
    loss_fn = nn.CrossEntropyLoss()
    opt, opt_t = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1,
                                                                                      momentum=0.9)
    for step in range(3):
        x, labels = rng.standard_normal((4, 2, 16)), rng.integers(0, 5, 4)
        loss = loss_fn(ours(x), labels)
        opt.zero_grad()
        ours.backward(loss_fn.backward())
        opt.step()
        opt_t.zero_grad()
        loss_t = tnn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(labels))
        loss_t.backward()
        grads_t = {k: p.grad.numpy().copy() for k, p in theirs.named_parameters()}
        opt_t.step()
        assert abs(loss - loss_t.item()) <= 1e-10 * max(1, abs(loss)), step
        for name, p in ours.named_parameters():
            assert_close(p.grad, grads_t[name], np.float64, f"step {step} grad {name}")
    for name, value in theirs.state_dict().items():
        assert_close(np.asarray(ours.state_dict()[name]), value.numpy(), np.float64, name)


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

def test_benchmark_models_know_the_layers(torch):
    """A 1-D model gets its shapes (those its forward produces), the FLOPs of its convolutions, its
    pools' launches (kernels pool.cu and adaptive_pool.cu hold) and a PyTorch mirror that computes
    what it does."""
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, model_flops, torch_mirror
    nn.init.manual_seed(25)
    model = nn.Sequential(nn.Conv1d(2, 4, 4, padding="same", dtype=np.float64),
                          nn.MaxPool1d(3, 2, 1, 2, ceil_mode=True),
                          nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1, groups=2, dtype=np.float64),
                          nn.AvgPool1d(2, padding=1), nn.Conv1d(6, 3, 3, stride=(2,), dilation=2, dtype=np.float64),
                          nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(6, 2, dtype=np.float64))
    x = np.random.default_rng(26).standard_normal((2, 2, 23))
    shapes, a = [], x
    for layer in model:
        shapes.append((a.shape, layer(a).shape))
        a = layer(a)
    leaves = leaf_layers(model, x.shape)
    assert [(shape_in, shape_out) for _, shape_in, shape_out, _ in leaves] == shapes
    # K, C/groups, k and output length of each convolution (the transposed one: of the convolution whose input
    # gradient it is, input length 11 to 24)
    convolutions = [(4, 2, 4, 23), (4, 3, 3, 11), (3, 6, 3, 5)]
    assert model_flops(model, x.shape) == sum(2 * 2 * K * Cg * k * P for K, Cg, k, P in convolutions) + 2 * 2 * 6 * 2
    for index, family, kind in [(1, "pool", "max_pool"), (3, "pool", "avg_pool"),
                                (5, "adaptive_pool", "adaptive_avg_pool")]:
        kernels = [kernel for kernel, _ in _layer_passes(model[index], 1, 1, 8)]
        assert kernels == [f"{kind}_forward", f"{kind}_backward"], (index, kernels)
        source = backend.kernel_source(family)
        assert all(f"\n{kernel}(" in source for kernel in kernels), kernels
    with torch.no_grad():
        expected = torch_mirror(model, torch)(torch.from_numpy(x)).numpy()
    assert_close(model(x), expected, np.float64, "mirror")


@needs_emu
def test_the_step_model_prices_the_launches_a_1d_training_step_makes(monkeypatch):
    """The modeled launches of a 1-D model's training step are, kernel by kernel and count by count,
    those an emulated step makes (its Conv1d layers modeled as the convolutions of their views; one
    with 17 taps, past the tap masks' 16, copies x and dy with zero borders first)."""
    from collections import Counter

    from cnn_gpu import roofline
    from cnn_gpu.bench import dry_run, modeled, training
    from cnn_gpu.bench.shapes import ModelShape

    def build_model(shape, dtype, seed=0):
        nn.init.manual_seed(seed)
        return nn.Sequential(nn.Conv1d(2, 8, 5, padding=2, dtype=dtype), nn.BatchNorm1d(8, dtype=dtype), nn.ReLU(),
                             nn.MaxPool1d(2), nn.Conv1d(8, 8, 3, groups=2, dtype=dtype), nn.ReLU(),
                             nn.AvgPool1d(2), nn.Conv1d(8, 8, 17, padding=8, dtype=dtype), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(2),
                             nn.Flatten(), nn.Linear(16, 5, dtype=dtype))
    monkeypatch.setattr(training, "build_model", build_model)
    case = training.train_step_case(ModelShape("cnn", 4, (2, 40), 5))
    estimates = modeled.case_estimates(case, roofline.spec("h100"), "float32")
    model = build_model(case.shape, "float32").to("emu")
    step = dry_run.training_step(model, (case.shape.batch, *case.shape.image_shape), case.shape.classes,
                                 np.random.default_rng(1))
    with dry_run.launches_counted_not_run() as launched:
        step()
    outside = (modeled.CUBLAS_GEMM, modeled.CUPY_ELEMENTWISE)
    assert Counter(e.kernel for e in estimates if e.kernel not in outside) == Counter(launched)
    assert sum(1 for name in launched if "fprop" in name) == 3 and sum(1 for name in launched if "pool" in name) == 6
    assert Counter(launched)["conv2d_pad"] == 2   # the long filter's fprop and dgrad


def test_the_roofline_model_prices_the_copy_a_long_filter_makes():
    """A filter past 16 taps with padding: fprop reads x and writes its zero-bordered copy in a launch of
    its own, and its main launch gathers from the copy instead of x."""
    from cnn_gpu import roofline
    from cnn_gpu.functional.geometry import conv_geometry
    from cnn_gpu.roofline import conv as model
    g = conv_geometry((8, 32, 1, 2000), (32, 32, 1, 25), 1, (0, 12))
    _, launches = model.pass_launches("fprop", g, np.float32, 132)
    assert [launch.kernel for launch, _ in launches][0] == "conv2d_pad"
    x, copy = 8 * 32 * 2000, 8 * 32 * (2000 + 24)
    assert launches[0][1].dram_bytes == 4 * (x + copy)
    unpadded = conv_geometry((8, 32, 1, 2024), (32, 32, 1, 25), 1, 0)   # what the main launch reads: the copy
    _, plain = model.pass_launches("fprop", unpadded, np.float32, 132)
    assert launches[1][1].dram_bytes == plain[0][1].dram_bytes and launches[1][1].flops == plain[0][1].flops
    assert [e.kernel for e in roofline.model_conv("dgrad", g, np.float32, roofline.spec("h100"))][:2] == [
        "conv2d_pad", "conv2d_dgrad_filter_transpose"]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv1d_padding_modes_as_pytorchs(mode, be, torch):
    """Conv1d(padding_mode=...) pads the signal with F.pad and convolves with padding 0, as torch's:
    output, input and weight gradients and state dicts equal torch's, for numeric and "same"
    padding (an even kernel: the odd element on the right), batched and unbatched."""
    rng = np.random.default_rng(46)
    for padding, kernel, dilation, shape in ((2, 5, 1, (2, 3, 11)), ("same", 4, 1, (3, 12)), ("same", 3, 2, (2, 3, 9)),
                                             (1, 3, 1, (3, 7))):
        ours = nn.Conv1d(3, 4, kernel, padding=padding, dilation=dilation, padding_mode=mode)
        ours.to(dtype=np.float64).to(be)
        theirs = torch.nn.Conv1d(3, 4, kernel, padding=padding, dilation=dilation, padding_mode=mode).double()
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        x = rng.standard_normal(shape)
        y = ours(x)
        x_torch = torch.from_numpy(x).requires_grad_()
        y_torch = theirs(x_torch)
        dy = rng.standard_normal(y.shape)
        y_torch.backward(torch.from_numpy(dy))
        dx = ours.backward(dy)
        for got, want in ((y, y_torch), (dx, x_torch.grad), (ours.weight.grad, theirs.weight.grad),
                          (ours.bias.grad, theirs.bias.grad)):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_the_bench_mirror_and_shapes_keep_conv1d_padding_modes(torch):
    """The PyTorch mirror pads as the layer does, and the step model's geometry is the convolution of
    F.pad's output with padding 0 (what the layer runs)."""
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    (_, _, out, g), _ = leaf_layers(model, (2, 2, 9))
    assert out == (2, 3, 9) and g.x_shape == (2, 2, 1, 11) and g.padding == (0, 0)
    mirror = torch_mirror(model, torch)
    assert mirror[0].padding_mode == "reflect"
    x = np.random.default_rng(3).standard_normal((2, 2, 9)).astype(np.float32)
    np.testing.assert_allclose(model(x), mirror(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
