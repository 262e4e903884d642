"""F.nll_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy and
F.binary_cross_entropy_with_logits and their layers: PyTorch 2.13 CPU (values and gradients, every
reduction, weights, pos_weight, ignore_index, (N, C, d1, d2) inputs, extreme logits, the kinks),
float64 references written out here, finite differences, float16 rounding, the kernels on the
emulator (guard zones and the race check), bad arguments refused before any launch."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import gradcheck
from helpers import to_host

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
REDUCTIONS = ("mean", "sum", "none")
F16 = np.float16


def cases(dtype):
    """name -> (our op, torch's op, positional arrays, keyword options); fresh inputs, fixed seeds."""
    rng = np.random.default_rng(42)

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    log_probs = np.log(rng.dirichlet(np.ones(5), 6)).astype(dtype)
    labels = rng.integers(0, 5, 6)
    labels[2] = -100
    maps = randn(2, 4, 3, 5)                       # (N, C, d1, d2)
    map_labels = rng.integers(0, 4, (2, 3, 5))
    map_labels[0, 1, 2] = 1000                      # an ignore_index of its own
    class_weight = rng.uniform(0.5, 2, 5).astype(dtype)
    pred = randn(4, 7)
    # the kinks: equal elements (sign(0) = 0) and |pred - target| exactly at beta / delta
    target = pred + randn(4, 7)
    target[0, :3] = pred[0, :3]
    target[1, 0], target[1, 1] = pred[1, 0] - dtype(0.5), pred[1, 1] + dtype(2)
    probabilities = rng.uniform(0.02, 0.98, (3, 4)).astype(dtype)
    probabilities[0, :2] = (0, 1)                  # log(0): clamped at -100 as torch's
    goals = rng.uniform(0, 1, (3, 4)).astype(dtype)
    goals[0, :2] = (1, 0)
    logits = randn(3, 4, scale=4.0)
    logits[0] = (60, -60, 1e4 if dtype != F16 else 6e4, -1e4 if dtype != F16 else -6e4)   # no overflow
    masks = randn(2, 3, 2, 2, scale=3.0)
    mask_goals = (rng.uniform(size=(2, 3, 2, 2)) > 0.5).astype(dtype)
    return {
        "nll": ("nll_loss", [log_probs, labels], {}),
        "nll weight ignore_index": ("nll_loss", [log_probs, labels], dict(weight=class_weight, ignore_index=-100)),
        "nll (N, C, d1, d2)": ("nll_loss", [maps, map_labels], dict(weight=class_weight[:4], ignore_index=1000)),
        "nll unbatched": ("nll_loss", [log_probs[0], np.array(3)], {}),
        "l1": ("l1_loss", [pred, target], {}),
        "smooth_l1": ("smooth_l1_loss", [pred, target], {}),
        "smooth_l1 beta 0.5": ("smooth_l1_loss", [pred, target], dict(beta=0.5)),
        "smooth_l1 beta 0 (l1)": ("smooth_l1_loss", [pred, target], dict(beta=0.0)),
        "huber": ("huber_loss", [pred, target], {}),
        "huber delta 2": ("huber_loss", [pred, target], dict(delta=2.0)),
        "bce": ("binary_cross_entropy", [probabilities, goals], {}),
        "bce weight": ("binary_cross_entropy", [probabilities, goals], dict(weight=randn(4) ** 2)),
        "bce logits": ("binary_cross_entropy_with_logits", [logits, goals], {}),
        "bce logits weight pos_weight": ("binary_cross_entropy_with_logits", [logits, goals],
                                         dict(weight=randn(3, 1) ** 2, pos_weight=randn(4) ** 2)),
        "bce logits (N, C, H, W) pos_weight per channel": (
            "binary_cross_entropy_with_logits", [masks, mask_goals], dict(pos_weight=randn(3, 1, 1) ** 2 + 1)),
    }


def torch_loss(torch, name, arrays, options, reduction):
    """torch's loss and the gradient of its sum with respect to the first array."""
    x = torch.tensor(arrays[0], requires_grad=True)
    others = [torch.tensor(a) for a in arrays[1:]]
    options = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss = getattr(torch.nn.functional, name)(x, *others, reduction=reduction, **options)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_torch(be, dtype, torch):
    assert_like_torch(torch, cases(dtype), be, dtype)


def assert_like_torch(torch, op_cases, be, dtype, reductions_of=lambda name: REDUCTIONS):
    """Every case of op_cases (as cases') and reduction of reductions_of(its op) against torch: the
    loss (a float or an array of torch's shape and our dtype) and the gradient."""
    tolerance = 1e-12 if dtype == np.float64 else 2e-6
    for what, (name, arrays, options) in op_cases.items():
        for reduction in reductions_of(name):
            loss, grad = getattr(F, name)(*arrays, reduction=reduction, backend=be, **options)
            want, want_grad = torch_loss(torch, name, arrays, options, reduction)
            message = f"{what} {reduction} {be} {np.dtype(dtype).name}"
            if reduction == "none":
                assert loss.shape == want.shape and loss.dtype == dtype, message
            else:
                assert isinstance(loss, float), message
            assert grad.shape == arrays[0].shape and grad.dtype == dtype, message
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(loss, want, rtol=tolerance, atol=tolerance * scale, err_msg=message)
            np.testing.assert_allclose(grad, want_grad, rtol=tolerance, atol=tolerance * float(np.abs(want_grad).max()),
                                       err_msg=message)


def reference(name, x, t, options):
    """Per-element (per-position) losses written out in float64 loops."""
    x, t = x.astype(np.float64), np.asarray(t)
    if name == "nll_loss":
        ignore, weight = options.get("ignore_index", -100), options.get("weight")
        out = np.zeros(t.shape)
        for index in np.ndindex(t.shape):
            if t[index] != ignore:
                w = 1.0 if weight is None else float(weight[t[index]])
                where = (t[index],) if x.ndim == 1 else (index[0], t[index]) + index[1:]   # unbatched (C,)
                out[index] = -w * x[where]
        return out
    t = t.astype(np.float64)
    out = np.zeros(x.shape)
    for index in np.ndindex(x.shape):
        a, b = float(x[index]), float(t[index])
        z = abs(a - b)
        if name == "l1_loss":
            out[index] = z
        elif name == "smooth_l1_loss":
            beta = options.get("beta", 1.0)
            out[index] = z if beta == 0 else (0.5 * z * z / beta if z < beta else z - 0.5 * beta)
        elif name == "huber_loss":
            delta = options.get("delta", 1.0)
            out[index] = 0.5 * z * z if z < delta else delta * (z - 0.5 * delta)
        elif name == "binary_cross_entropy":
            log_a = max(np.log(a), -100) if a > 0 else -100.0
            log_rest = max(np.log1p(-a), -100) if a < 1 else -100.0
            out[index] = -(b * log_a + (1 - b) * log_rest)
        else:
            pos = float(np.broadcast_to(options["pos_weight"], x.shape)[index]) if "pos_weight" in options else 1.0
            out[index] = (1 - b) * a + (1 + (pos - 1) * b) * np.logaddexp(0.0, -a)   # -log_sigmoid = log(1 + e^-a)
    if options.get("weight") is not None:
        out = out * np.broadcast_to(options["weight"], x.shape)
    return out


def test_float64_references_and_finite_differences():
    for what, (name, arrays, options) in cases(np.float64).items():
        op = getattr(F, name)
        want = reference(name, *arrays, options)
        loss, _ = op(*arrays, reduction="none", **options)
        np.testing.assert_allclose(loss, want, rtol=1e-12, atol=1e-12, err_msg=what)
        for reduction in ("mean", "sum"):
            x = arrays[0].copy()
            if "bce" in what and "logits" not in what:
                x = np.clip(x, 0.05, 0.95)   # the finite differences' steps inside [0, 1], off log(0)
            if name in ("l1_loss", "smooth_l1_loss", "huber_loss"):
                x[:2] += 0.1   # off the kinks (rows 0 and 1), where finite differences hold
            _, grad = op(x, *arrays[1:], reduction=reduction, **options)
            report = gradcheck(lambda: op(x, *arrays[1:], reduction=reduction, **options)[0], [x], [grad])
            assert report.max_rel_error < 1e-5, f"{what} {reduction}: {report}"   # the 1e4 logits: cancellation


def test_the_means_divisors():
    """nll's mean divides by the summed weights of the counted targets (NaN over none, zero gradient:
    PyTorch's); the element-wise means by the element count, weighted or not."""
    _, arrays, options = cases(np.float64)["nll weight ignore_index"]
    log_probs, labels = arrays
    counted = labels != -100
    want = reference("nll_loss", log_probs, labels, options).sum() / options["weight"][labels[counted]].sum()
    for be in ("numpy", "emu") if "emu" in backend.available_backends() else ("numpy",):
        assert F.nll_loss(*arrays, backend=be, **options)[0] == pytest.approx(want, rel=1e-13)
        loss, grad = F.nll_loss(log_probs, np.full(6, -100), backend=be)
        assert np.isnan(loss) and not grad.any()
    _, (x, t), options = cases(np.float64)["bce weight"]
    assert F.binary_cross_entropy(x, t, options["weight"])[0] == pytest.approx(
        reference("binary_cross_entropy", x, t, options).mean(), rel=1e-13)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case on the emulator with guard zones (an access past any array faults) and the race
    check, forward and reverse schedules (an array's end, then its start, right beside an
    inaccessible page); float16 is FP32 math rounded once, as the numpy path (its oracle)."""
    tolerance = {F16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for schedule in ("forward", "reverse"):
        with emu.checking(guard=True, race=True, schedule=schedule):
            for (what, (name, arrays, options)), reduction in itertools.product(cases(dtype).items(), REDUCTIONS):
                loss, grad = getattr(F, name)(*arrays, reduction=reduction, backend="emu", **options)
                want, want_grad = getattr(F, name)(*arrays, reduction=reduction, backend="numpy", **options)
                message = f"{what} {reduction} {np.dtype(dtype).name} {schedule}"
                assert grad.dtype == dtype, message
                # float16: the gradient is one rounding of the same FP32 math, bit for bit
                np.testing.assert_allclose(grad, want_grad, rtol=tolerance if dtype != F16 else 0, atol=0,
                                           err_msg=message)
                np.testing.assert_allclose(np.asarray(loss, np.float64), np.asarray(want, np.float64),
                                           rtol=tolerance, err_msg=message)


def test_float16_is_the_float32_math_rounded_once():
    for what, (name, arrays, options) in cases(F16).items():
        op = getattr(F, name)
        widened = [a.astype(np.float32) if a.dtype == F16 else a for a in arrays]
        widened_options = {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        for reduction in REDUCTIONS:
            loss, grad = op(*arrays, reduction=reduction, **options)
            loss32, grad32 = op(*widened, reduction=reduction, **widened_options)
            with np.errstate(over="ignore"):   # BCE's gradient at log(0)'s clamp is past FP16's range: inf
                grad32, loss32 = grad32.astype(F16), np.asarray(loss32).astype(F16) if reduction == "none" else loss32
            assert grad.dtype == F16 and np.array_equal(grad, grad32, equal_nan=True), what
            if reduction == "none":
                assert np.array_equal(loss, loss32, equal_nan=True), what
            else:
                assert loss == loss32, what


@pytest.mark.parametrize("be", BACKENDS)
def test_empty_inputs_as_torch(be):
    """NaN mean, zero sum, empty arrays: PyTorch's results for no elements."""
    empty = np.empty((0, 3))
    for name, target in (("nll_loss", np.empty(0, np.int64)), ("l1_loss", empty), ("smooth_l1_loss", empty),
                         ("huber_loss", empty), ("binary_cross_entropy", empty),
                         ("binary_cross_entropy_with_logits", empty)):
        op = getattr(F, name)
        assert np.isnan(op(empty, target, backend=be)[0]), name
        assert op(empty, target, reduction="sum", backend=be)[0] == 0.0, name
        loss, grad = op(empty, target, reduction="none", backend=be)
        assert loss.shape == target.shape and grad.shape == empty.shape, name


@pytest.mark.filterwarnings("ignore:Using a target size")   # l1_loss's warning, before its refusal
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    x = np.full((2, 3), 0.5)
    # (class indices and BCE's [0, 1]: checked before any launch on numpy and for "none"; see the read-back test)
    refusals = [
        (lambda be: F.nll_loss(x, np.array([0, 3]), reduction="none", backend=be), ValueError,
         r"target\[1\] = 3 is out of range for 3 classes"),
        (lambda be: F.nll_loss(x, x, backend=be), TypeError, "integer class indices"),
        (lambda be: F.nll_loss(x, np.array([0]), backend=be), ValueError, r"target must have shape \(2,\)"),
        (lambda be: F.nll_loss(x, np.array([0, 1]), np.ones(2), backend=be), ValueError, "one weight per class"),
        (lambda be: F.nll_loss(np.ones(()), np.array(0), backend=be), ValueError, "0-D"),
        (lambda be: F.l1_loss(x, x[:, :2], backend=be), ValueError,
         r"target of shape \(2, 2\) does not broadcast with input of shape \(2, 3\)"),
        (lambda be: F.huber_loss(x, x.astype(np.float32), backend=be), TypeError, "target has dtype float32"),
        (lambda be: F.huber_loss(x, x, delta=0.0, backend=be), ValueError, "non-positive values for delta"),
        (lambda be: F.smooth_l1_loss(x, x, beta=-1.0, backend=be), ValueError, "negative values for beta"),
        (lambda be: F.smooth_l1_loss(x, x, reduction="avg", backend=be), ValueError, "reduction must be"),
        (lambda be: F.binary_cross_entropy(x + 1, x, reduction="none", backend=be),ValueError,
          r"input should be between 0 and 1, got input\[0, 0\]"),
        (lambda be: F.binary_cross_entropy(x, x - 1, reduction="none", backend=be),ValueError,
          "target should be between 0 and 1"),
        (lambda be: F.binary_cross_entropy(x, x, np.ones(2), backend=be), ValueError, "does not broadcast"),
        (lambda be: F.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(2), backend=be), ValueError,
         r"pos_weight of shape \(2,\) does not broadcast"),
        (lambda be: F.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones((2, 2, 3)), backend=be), ValueError,
         "does not broadcast to the input's shape"),
        (lambda be: F.binary_cross_entropy_with_logits(x, x, np.ones(3, np.float32), backend=be),TypeError,
          "weight has dtype"),
    ]
    for be in ("numpy", "emu"):
        for call, error, match in refusals:
            with pytest.raises(error, match=match):
                call(be)


@needs_emu
def test_kernels_name_what_they_find_out_of_range_by_the_loss_read_back():
    """On emu and cuda a "mean"/"sum" loss checks the BCE inputs and nll indices by the loss read back
    (NaN where one is out of range), as cross_entropy's indices: still a ValueError naming it."""
    x = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"input\[1, 2\] = 1.5"):
        bad = x.copy()
        bad[1, 2] = 1.5
        F.binary_cross_entropy(bad, x, backend="emu")
    with pytest.raises(ValueError, match=r"target\[0, 1\] = -0.5"):
        bad = x.copy()
        bad[0, 1] = -0.5
        F.binary_cross_entropy(x, bad, reduction="sum", backend="emu")
    with pytest.raises(ValueError, match=r"target\[1\] = 7"):
        F.nll_loss(x, np.array([0, 7]), backend="emu")


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_the_layers(be, torch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 2))
    dy = rng.standard_normal((4, 2))
    labels = rng.integers(0, 3, (4, 2))
    weight = rng.uniform(0.5, 2, 3)
    log_probs = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    layer = nn.NLLLoss(weight, ignore_index=1, reduction="none").to(be)
    loss = layer(log_probs, labels)
    want = torch.nn.NLLLoss(torch.tensor(weight), ignore_index=1, reduction="none")
    xt = torch.tensor(log_probs, requires_grad=True)
    lt = want(xt, torch.tensor(labels))
    lt.backward(torch.tensor(dy))
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-12)
    assert "weight" in layer.state_dict() and "ignore_index=1" in repr(layer)
    goals = (rng.uniform(size=x.shape) > 0.5).astype(np.float64)
    pos_weight = rng.uniform(0.5, 3, (3, 1))
    for ours, theirs, pred in (
            (nn.BCEWithLogitsLoss(reduction="sum", pos_weight=pos_weight),
             torch.nn.BCEWithLogitsLoss(reduction="sum", pos_weight=torch.tensor(pos_weight)), x),
            (nn.BCELoss([1.0, 2.0]), torch.nn.BCELoss(torch.tensor([1.0, 2.0], dtype=torch.float64)),
             1 / (1 + np.exp(-x))),
            (nn.L1Loss(), torch.nn.L1Loss(), x), (nn.SmoothL1Loss(beta=0.3), torch.nn.SmoothL1Loss(beta=0.3), x),
            (nn.HuberLoss(delta=0.4, reduction="sum"), torch.nn.HuberLoss(delta=0.4, reduction="sum"), x)):
        ours.to(be)
        loss = ours(pred, goals)
        xt = torch.tensor(pred, requires_grad=True)
        lt = theirs(xt, torch.tensor(goals))
        lt.backward(torch.tensor(2.0, dtype=torch.float64))
        assert isinstance(loss, float) and loss == pytest.approx(lt.item(), rel=1e-12), repr(ours)
        np.testing.assert_allclose(ours.backward(2.0), xt.grad.numpy(), rtol=1e-12, err_msg=repr(ours))
    assert "pos_weight" in nn.BCEWithLogitsLoss(pos_weight=[2.0]).state_dict()


@pytest.mark.parametrize("be", [pytest.param("cuda", marks=pytest.mark.skipif(
    "cuda" not in backend.available_backends(),
    reason=f"cuda backend unavailable: {backend.why_unavailable('cuda')}"))])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cuda_matches_numpy(be, dtype):
    """The cuda path (the emu path's launcher code on CuPy arrays): every case and reduction, and a
    "mean" loss left on the device with as_array."""
    import cupy
    tolerance = {F16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for (what, (name, arrays, options)), reduction in itertools.product(cases(dtype).items(), REDUCTIONS):
        on_device = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        loss, grad = getattr(F, name)(*map(cupy.asarray, arrays), reduction=reduction, **on_device)
        want, want_grad = getattr(F, name)(*arrays, reduction=reduction, backend="numpy", **options)
        assert isinstance(grad, cupy.ndarray) and grad.dtype == dtype, what
        np.testing.assert_allclose(to_host(grad), want_grad, rtol=tolerance, atol=0, err_msg=f"{what} {reduction}")
        np.testing.assert_allclose(np.asarray(to_host(loss), np.float64), np.asarray(want, np.float64),
                                   rtol=tolerance, err_msg=f"{what} {reduction}")
    loss, _ = F.binary_cross_entropy_with_logits(*map(cupy.asarray, cases(dtype)["bce logits"][1]), as_array=True)
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == np.float64
