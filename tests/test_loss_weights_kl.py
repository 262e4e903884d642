"""PyTorch 2.13's element-wise loss options: the weight of F.mse_loss, F.l1_loss and F.huber_loss,
input and target broadcast (with torch's UserWarning, the gradient summed back to the input's
shape), F.kl_div and nn.KLDivLoss (every reduction, log_target, xlogy's zero at a zero target):
against torch 2.13 CPU, float64 loops, finite differences, float16 rounded once, the kernel on the
emulator under guard zones and the race check, refusals before any launch, the layers."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import gradcheck
from helpers import needs_cuda, needs_emu, refuse_launches, to_host
from test_losses import assert_like_torch, torch_loss

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
F16 = np.float16
KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")


def cases(dtype):
    """name -> (op, positional arrays, keyword options); fresh inputs, fixed seeds. Targets of
    another shape than the input broadcast against it (PyTorch warns there; kl_div does not)."""
    rng = np.random.default_rng(126)

    def randn(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def weight(*shape):
        return rng.uniform(0.25, 2.0, shape).astype(dtype)

    def log_probs(*shape):
        x = randn(*shape)
        return (x - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True))).astype(dtype)

    probabilities = rng.dirichlet(np.ones(5), 4).astype(dtype)
    probabilities[0, 1] = probabilities[2, 4] = 0          # xlogy: no contribution, zero gradient
    return {
        "mse weight": ("mse_loss", [randn(4, 6), randn(4, 6)], dict(weight=weight(4, 6))),
        "l1 weight": ("l1_loss", [randn(4, 6), randn(4, 6)], dict(weight=weight(4, 6))),
        "huber weight delta 0.7": ("huber_loss", [randn(4, 6), randn(4, 6)], dict(delta=0.7, weight=weight(4, 6))),
        "mse input (3, 1) target (3, 5)": ("mse_loss", [randn(3, 1), randn(3, 5)], {}),
        "l1 input (3, 1) target (3, 5) weight": ("l1_loss", [randn(3, 1), randn(3, 5)], dict(weight=weight(3, 1))),
        "smooth_l1 input (5,) target (2, 3, 5)": ("smooth_l1_loss", [randn(5), randn(2, 3, 5)], dict(beta=0.5)),
        "huber input (2, 1, 4) target (3, 1) weight": ("huber_loss", [randn(2, 1, 4), randn(3, 1)],
                                                        dict(weight=weight(2, 1, 4))),
        "mse input (2, 3) target (3,) weight": ("mse_loss", [randn(2, 3), randn(3)], dict(weight=weight(2, 3))),
        "kl_div": ("kl_div", [log_probs(4, 5), probabilities], {}),
        "kl_div log_target": ("kl_div", [log_probs(4, 5), log_probs(4, 5)], dict(log_target=True)),
        "kl_div (N, C, H, W)": ("kl_div", [log_probs(2, 3, 2, 2), np.ascontiguousarray(
            rng.dirichlet(np.ones(3), (2, 2, 2)).transpose(0, 3, 1, 2).astype(dtype))], {}),
        "kl_div target (5,) broadcast": ("kl_div", [log_probs(3, 5), probabilities[1]], {}),
        "kl_div input (4, 1) broadcast": ("kl_div", [randn(4, 1), probabilities], {}),
    }


def reductions(name):
    return KL_REDUCTIONS if name == "kl_div" else ("mean", "sum", "none")


def quiet(call):
    """call() with the size and 'mean' warnings (checked by their own test) left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return call()


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.filterwarnings("ignore::UserWarning")   # the size and 'mean' warnings: test_torch_warnings_...
def test_against_torch(be, dtype, torch):
    assert_like_torch(torch, cases(dtype), be, dtype, reductions)


def reference(name, x, t, options, reduction):
    """The loss written out in float64 loops over the broadcast elements."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    shape = np.broadcast_shapes(x.shape, t.shape)
    weight = options.get("weight")
    total, weight_sum, out = 0.0, 0.0 if weight is None else float(weight.astype(np.float64).sum()), np.zeros(shape)
    xb, tb = np.broadcast_to(x, shape), np.broadcast_to(t, shape)
    wb = None if weight is None else np.broadcast_to(weight.astype(np.float64), shape)
    for index in np.ndindex(shape):
        a, b = float(xb[index]), float(tb[index])
        z = abs(a - b)
        if name == "mse_loss":
            value = z * z
        elif name == "l1_loss":
            value = z
        elif name == "smooth_l1_loss":
            beta = options["beta"]
            value = 0.5 * z * z / beta if z < beta else z - 0.5 * beta
        elif name == "huber_loss":
            delta = options.get("delta", 1.0)
            value = 0.5 * z * z if z < delta else delta * (z - 0.5 * delta)
        elif options.get("log_target"):
            value = np.exp(b) * (b - a)
        else:
            value = (0.0 if b == 0 else b * np.log(b)) - b * a
        out[index] = value * (1.0 if wb is None else float(wb[index]))
        total += out[index]
    if reduction == "none":
        return out
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / x.shape[0]
    by_weight = weight is not None and name in ("mse_loss", "l1_loss")   # huber's weighted mean: elements
    return total / (weight_sum if by_weight else out.size)


def test_float64_references_and_finite_differences():
    for what, (name, arrays, options) in cases(np.float64).items():
        op = getattr(F, name)
        for reduction in reductions(name):
            loss, grad = quiet(lambda: op(*arrays, reduction=reduction, **options))
            np.testing.assert_allclose(loss, reference(name, *arrays, options, reduction), rtol=1e-12, atol=1e-13,
                                       err_msg=f"{what} {reduction}")
            if reduction == "none":
                continue
            x = arrays[0].copy()
            report = gradcheck(lambda: quiet(lambda: op(x, *arrays[1:], reduction=reduction, **options))[0], [x],
                               [grad])
            assert report.max_rel_error < 1e-6, f"{what} {reduction}: {report}"


def test_the_means_divisors_and_a_zero_target():
    """torch 2.13 by experiment: a weighted mean of mse_loss and l1_loss divides by the summed
    weight (of the input's shape, not broadcast), huber_loss's by the element count; kl_div's
    batchmean by input's first size (none for a 0-d input), its mean by the element count; a zero
    target adds nothing to kl_div and has a zero gradient (even at an input of -inf... whose 0 * -inf
    is NaN, as torch's)."""
    rng = np.random.default_rng(3)
    x, t, w = rng.standard_normal((3, 1)), rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (3, 1))
    for be in ("numpy", "emu") if "emu" in backend.available_backends() else ("numpy",):
        summed = quiet(lambda: F.l1_loss(x, t, reduction="sum", weight=w, backend=be))[0]
        assert quiet(lambda: F.l1_loss(x, t, weight=w, backend=be))[0] == pytest.approx(summed / w.sum(), rel=1e-14)
        summed = quiet(lambda: F.huber_loss(x, t, reduction="sum", weight=w, backend=be))[0]
        assert quiet(lambda: F.huber_loss(x, t, weight=w, backend=be))[0] == pytest.approx(summed / 12, rel=1e-14)
        log_probs, target = rng.standard_normal((2, 3)), np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
        summed = F.kl_div(log_probs, target, reduction="sum", backend=be)[0]
        assert F.kl_div(log_probs, target, reduction="batchmean", backend=be)[0] == pytest.approx(summed / 2, rel=1e-14)
        assert quiet(lambda: F.kl_div(log_probs, target, backend=be))[0] == pytest.approx(summed / 6, rel=1e-14)
        loss, grad = F.kl_div(log_probs, target, reduction="none", backend=be)
        assert not loss[target == 0].any() and not grad[target == 0].any()
        scalar = np.array(-0.5)
        assert F.kl_div(scalar, np.array(0.25), reduction="batchmean", backend=be)[0] == pytest.approx(
            0.25 * np.log(0.25) + 0.125, rel=1e-14)
        loss, grad = F.kl_div(np.array([-np.inf, 1.0]), np.zeros(2), reduction="none", backend=be)
        assert np.isnan(loss[0]) and loss[1] == 0 and not grad.any()


@needs_emu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_kernel_matches_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case on the emulator with guard zones and the race check, forward and reverse
    schedules; float16 is the FP32 math rounded once, as the numpy path (its oracle): bit for bit
    where the gradient is no sum, within one FP16 rounding of a differently ordered FP32 sum where
    the input was broadcast (the kernels' sums are fixed-order: channel_sum)."""
    tolerance = {F16: 1e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for schedule in ("forward", "reverse"):
        with emu.checking(guard=True, race=True, schedule=schedule):
            for what, (name, arrays, options) in cases(dtype).items():
                summed = arrays[0].shape != np.broadcast_shapes(arrays[0].shape, arrays[1].shape)
                for reduction in reductions(name):
                    loss, grad = quiet(lambda: getattr(F, name)(*arrays, reduction=reduction, backend="emu",
                                                                **options))
                    want, want_grad = quiet(lambda: getattr(F, name)(*arrays, reduction=reduction, backend="numpy",
                                                                     **options))
                    message = f"{what} {reduction} {np.dtype(dtype).name} {schedule}"
                    assert grad.dtype == dtype and grad.shape == arrays[0].shape, message
                    exact = dtype == F16 and not summed
                    np.testing.assert_allclose(grad, want_grad, rtol=0 if exact else tolerance,
                                               atol=0 if exact else tolerance * float(np.abs(want_grad).max()),
                                               err_msg=message)
                    np.testing.assert_allclose(np.asarray(loss, np.float64), np.asarray(want, np.float64),
                                               rtol=tolerance, atol=tolerance * 1e-3, err_msg=message)


@needs_emu
def test_a_broadcast_float16_inputs_gradient_is_summed_before_its_one_rounding():
    """Gradients of +-0.3 that nearly cancel over the 64 elements an input element is broadcast to:
    rounding each to float16 before the sum moves it by dozens of FP16 steps; summed in FP32 and
    rounded once it is within one step of the numpy oracle (itself so)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1)).astype(F16)
    t = (x.astype(np.float64) - np.where(np.arange(64) % 2 == 0, 0.3, -0.299)).astype(F16)
    for name in ("mse_loss", "huber_loss"):
        grad = quiet(lambda: getattr(F, name)(x, t, reduction="sum", backend="emu"))[1]
        want = quiet(lambda: getattr(F, name)(x, t, reduction="sum", backend="numpy"))[1]
        assert grad.dtype == F16 and np.all(np.abs(grad.astype(np.float64) - want) <= np.spacing(np.abs(want))), name


def test_float16_is_the_float32_math_rounded_once():
    for what, (name, arrays, options) in cases(F16).items():
        op = getattr(F, name)
        widened = [a.astype(np.float32) for a in arrays]
        widened_options = {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        for reduction in reductions(name):
            loss, grad = quiet(lambda: op(*arrays, reduction=reduction, **options))
            loss32, grad32 = quiet(lambda: op(*widened, reduction=reduction, **widened_options))
            assert grad.dtype == F16 and np.array_equal(grad, grad32.astype(F16)), what
            if reduction == "none":
                assert np.array_equal(loss, loss32.astype(F16)), what
            else:
                assert loss == loss32, what


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_torch_warnings_at_the_callers_line(be, torch):
    """The size warning of mse/l1/smooth_l1/huber (none where the sizes agree, none from kl_div) and
    kl_div's 'mean' warning: torch's category and text, attributed to the line that called the op
    or the layer (torch's stacklevel=2 names the caller of F.<loss>)."""
    x, t = np.ones((3, 1)), np.full((3, 2), 0.5)
    for name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            getattr(F, name)(x, t, backend=be); line = _line()   # noqa: E702  (the call's line)
            getattr(F, name)(t, t, backend=be)
        with warnings.catch_warnings(record=True) as theirs:
            warnings.simplefilter("always")
            getattr(torch.nn.functional, name)(torch.tensor(x), torch.tensor(t))
        assert [str(w.message) for w in ours] == [str(w.message) for w in theirs], name
        assert ours[0].category is UserWarning and (ours[0].filename, ours[0].lineno) == (__file__, line), name
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        nn.KLDivLoss().to(be)(x, t); line = _line()   # noqa: E702
        F.kl_div(x, t, reduction="batchmean", backend=be)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        torch.nn.functional.kl_div(torch.tensor(x), torch.tensor(t))
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert ours[0].category is UserWarning and (ours[0].filename, ours[0].lineno) == (__file__, line)


def _line() -> int:
    """The caller's line number."""
    import sys
    return sys._getframe(1).f_lineno


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_empty_broadcasts_as_torch(be, torch):
    """A target that broadcasts the input to no elements: torch's NaN mean (but 0 for kl_div's
    batchmean over a non-empty batch and for a mean over a non-empty weight's sum), zero sum, an
    empty per-element array, a zero gradient of the input's shape."""
    x, t = np.full((3, 1), 0.5), np.empty((3, 0))
    weighted = dict(weight=np.array([[0.5], [1.0], [2.0]]))
    for name, reduction, options in itertools.chain(
            ((n, r, o) for n in ("mse_loss", "l1_loss", "huber_loss") for r in ("mean", "sum", "none")
             for o in ({}, weighted)),
            (("kl_div", r, {}) for r in KL_REDUCTIONS)):
        loss, grad = quiet(lambda: getattr(F, name)(x, t, reduction=reduction, backend=be, **options))
        want, want_grad = quiet(lambda: torch_loss(torch, name, [x, t], options, reduction))
        np.testing.assert_array_equal(loss, want, err_msg=f"{name} {reduction} {options}")
        np.testing.assert_array_equal(grad, want_grad, err_msg=f"{name} {reduction} {options}")


def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    refuse_launches(monkeypatch)
    x = np.full((2, 3), 0.5)
    refusals = [
        (lambda be: F.l1_loss(x, x, weight=np.ones(3), backend=be), ValueError,
         r"weight must have shape \(2, 3\) \(the shape of input, as PyTorch's\), got \(3,\)"),
        (lambda be: F.mse_loss(x[:, :1], x, weight=x, backend=be), ValueError,   # of the input's shape, unbroadcast
         r"weight must have shape \(2, 1\) \(the shape of pred"),
        (lambda be: F.huber_loss(x, x, weight=x.astype(np.float32), backend=be), TypeError, "weight has dtype"),
        (lambda be: F.mse_loss(x, np.ones((3, 2)), backend=be), ValueError,
         r"target of shape \(3, 2\) does not broadcast with pred of shape \(2, 3\)"),
        (lambda be: F.kl_div(x, x[:1, :2], backend=be), ValueError, "does not broadcast with input"),
        (lambda be: F.kl_div(x, x, reduction="avg", backend=be), ValueError,
         "reduction must be 'mean', 'batchmean', 'sum' or 'none'"),
        (lambda be: F.kl_div(x, x, log_target=1, backend=be), TypeError, "log_target must be a bool"),
        (lambda be: F.kl_div(x, x.astype(np.float32), backend=be), TypeError, "target has dtype float32"),
        (lambda be: F.mse_loss(x, x, reduction="batchmean", backend=be), ValueError, "reduction must be"),
        # BCE refuses differing sizes, as torch's ValueError (it does not broadcast)
        (lambda be: F.binary_cross_entropy(x, x[:, :1], backend=be), ValueError, r"target must have shape \(2, 3\)"),
        (lambda be: F.binary_cross_entropy_with_logits(x[:1], x, backend=be), ValueError,
         r"target must have shape \(1, 3\)"),
    ]
    for be in ("numpy", "emu"):
        for call, error, match in refusals:
            with pytest.raises(error, match=match):
                quiet(lambda: call(be))


@needs_emu
def test_a_weighted_mean_left_on_the_device():
    """as_array: the weighted mean (its divisor a device sum) as a 0-d float64 array, the float's value."""
    _, (x, t), options = cases(np.float64)["l1 input (3, 1) target (3, 5) weight"]
    loss = quiet(lambda: F.l1_loss(x, t, backend="emu", as_array=True, **options))[0]
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float64
    assert float(loss) == quiet(lambda: F.l1_loss(x, t, backend="emu", **options))[0]
    assert float(loss) == pytest.approx(quiet(lambda: F.l1_loss(x, t, backend="numpy", **options))[0], rel=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_the_layers(be, torch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 5))
    student = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    teacher = rng.dirichlet(np.ones(5), 4)
    for reduction, log_target, dy in (("batchmean", False, 2.0), ("sum", True, 0.5),
                                      ("none", False, rng.standard_normal((4, 5)))):
        target = np.log(teacher) if log_target else teacher
        ours = nn.KLDivLoss(reduction=reduction, log_target=log_target).to(be)
        xt = torch.tensor(student, requires_grad=True)
        lt = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)(xt, torch.tensor(target))
        lt.backward(torch.tensor(dy))
        np.testing.assert_allclose(ours(student, target), lt.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
        assert repr(ours) == f"KLDivLoss(reduction={reduction!r}, log_target={log_target})"
    with pytest.raises(ValueError, match="reduction must be 'mean', 'batchmean'"):
        nn.KLDivLoss(reduction="avg")
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        nn.L1Loss(reduction="batchmean")
    # a broadcast pred: a number scales its summed gradient; an array dy needs each element's, refused
    layer = nn.MSELoss(reduction="none").to(be)
    quiet(lambda: layer(x[:, :1], x))
    np.testing.assert_allclose(layer.backward(3.0), 3 * 2 * (x[:, :1] - x).sum(axis=1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match=r"pred \(4, 1\) was broadcast against target"):
        layer.backward(np.ones((4, 5)))


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cuda_matches_numpy(dtype):
    """The cuda path (the emu path's launcher code on CuPy arrays): every case and reduction."""
    import cupy
    tolerance = {F16: 1e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for what, (name, arrays, options) in cases(dtype).items():
        for reduction in reductions(name):
            on_device = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
            loss, grad = quiet(lambda: getattr(F, name)(*map(cupy.asarray, arrays), reduction=reduction, **on_device))
            want, want_grad = quiet(lambda: getattr(F, name)(*arrays, reduction=reduction, backend="numpy",
                                                             **options))
            assert isinstance(grad, cupy.ndarray) and grad.dtype == dtype, what
            np.testing.assert_allclose(to_host(grad), want_grad, rtol=tolerance,
                                       atol=tolerance * float(np.abs(want_grad).max()), err_msg=f"{what} {reduction}")
            np.testing.assert_allclose(np.asarray(to_host(loss), np.float64), np.asarray(want, np.float64),
                                       rtol=tolerance, err_msg=f"{what} {reduction}")
