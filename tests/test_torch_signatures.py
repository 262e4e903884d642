"""PyTorch's fuller signatures (issue 14) on every backend: unbatched (C, H, W) conv and pool inputs,
conv2d(padding="same" | "valid"), linear on (..., in_features), cross_entropy's weight /
ignore_index / reduction / label_smoothing / class-probability and K-dimensional targets, mse_loss's
reduction, avg_pool2d's divisor_override, and the layers that take them.

Proof, per feature: seeded sweeps against PyTorch CPU in float64 (1e-10) and float32 (1e-5) on
numpy and emu (and cuda with a GPU), where every configuration we refuse must be one PyTorch refuses
and arguments PyTorch refuses are refused with an error naming the argument; finite differences;
the emulator's reverse and random schedules with guard zones giving the same bits. Also the
kernel-side fixes of issue 13 in pool.cu: 64-bit avg-pool divisors, refused 32-bit overflows, and
refused tampered max-pool indices."""
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from cnn_gpu import backend, emu, nn
from cnn_gpu import functional as F
from cnn_gpu.functional import geometry
from cnn_gpu.gradcheck import check_op, gradcheck
from helpers import assert_close, assert_cross_entropy_gradients_by_finite_differences, to_host, tolerance

BACKENDS = [be for be in ("numpy", "emu", "cuda") if be in backend.available_backends()]
# accepted configurations per sweep: float64, float32; fewer on the emulator (every launch compiles
# nothing new but runs one fiber per CUDA thread)
COUNTS = {"numpy": (120, 40), "emu": (40, 20), "cuda": (60, 30)}


def on(be, *arrays):
    """The arrays as the backend takes them (CuPy for cuda)."""
    if be != "cuda":
        return arrays if len(arrays) > 1 else arrays[0]
    import cupy
    moved = tuple(None if a is None else cupy.asarray(a) for a in arrays)
    return moved if len(moved) > 1 else moved[0]


def tensor(torch, a, grad=False):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def close(ours, theirs, dtype, what):
    """An array (or a float loss) against PyTorch's tensor, within tolerance(dtype)."""
    theirs = theirs.detach().numpy()
    if isinstance(ours, float):
        assert theirs.shape == (), what
        theirs = float(theirs)
        assert (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) <= tolerance(dtype) * max(
            1.0, abs(theirs)), f"{what}: {ours} vs {theirs}"
        return
    assert_close(ours, theirs, dtype, what)


def sweep(draw, check, be, dtype, seed, torch):
    """Draw configurations until COUNTS of them are accepted; check(cfg, rng, dtype) runs ours and
    PyTorch's and compares. A configuration we refuse (ValueError) must be one PyTorch refuses
    (cfg["torch"]() raises or gives an empty output: we refuse empty outputs outright). Returns the
    accepted configurations."""
    count = COUNTS[be][0 if dtype == np.float64 else 1]
    rng = np.random.default_rng(seed)
    accepted = []
    for _ in range(20 * count):
        if len(accepted) == count:
            break
        cfg = draw(rng)
        try:
            check(cfg, rng, dtype)
        except ValueError as ours:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out = cfg["torch"]()
                except (RuntimeError, ValueError):
                    continue
                if out is not None and out.numel() == 0:
                    continue
            raise AssertionError(f"we refuse {cfg} ({ours}) but PyTorch accepts it") from None
        accepted.append(cfg)
    assert len(accepted) == count, f"only {len(accepted)} configurations accepted"
    return accepted


def assert_covers(configs, features):
    """Every feature was reached (checked on the float64 sweeps; the float32 ones are shorter)."""
    if len(configs) < min(count[0] for count in COUNTS.values()):
        return
    missing = [name for name, has in features.items() if not any(has(c) for c in configs)]
    assert not missing, f"sweep never covered: {missing}"


def pair(rng, low, high):
    """A size argument: an int or, half of the time, an (h, w) pair."""
    values = tuple(int(v) for v in rng.integers(low, high + 1, size=2))
    return values if rng.random() < 0.5 else values[0]


def as_pair(v):
    return geometry.pair(v, "size", minimum=0)


def image(cfg, rng, dtype):
    """A random input of the configuration: (C, H, W) when cfg["unbatched"], else (N, C, H, W)."""
    shape = (cfg["C"], cfg["H"], cfg["W"])
    return rng.standard_normal(shape if cfg["unbatched"] else (cfg["N"],) + shape).astype(dtype)


param_backend_dtype = pytest.mark.parametrize("be, dtype", [(be, dt) for be in BACKENDS
                                                            for dt in (np.float64, np.float32)])


# --- convolution: padding="same" | "valid", unbatched inputs -----------------------------------

def draw_conv(rng):
    groups = int(rng.choice([1, 1, 2]))
    cfg = dict(N=int(rng.integers(1, 3)), C=groups * int(rng.integers(1, 3)), K=groups * int(rng.integers(1, 3)),
               groups=groups, H=int(rng.integers(1, 8)), W=int(rng.integers(1, 8)),
               R=int(rng.integers(1, 5)), S=int(rng.integers(1, 5)), dilation=pair(rng, 1, 2),
               stride=1 if rng.random() < 0.85 else pair(rng, 1, 2),
               padding=str(rng.choice(["same", "same", "valid"])) if rng.random() < 0.8 else pair(rng, 0, 2),
               unbatched=bool(rng.random() < 0.4), bias=bool(rng.random() < 0.7),
               transposed=bool(rng.random() < 0.2))
    if cfg["transposed"]:   # conv_transpose2d takes no string padding: unbatched inputs only
        cfg["padding"] = pair(rng, 0, 1)
    return cfg


def check_conv(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    x = image(cfg, rng, dtype)
    if cfg["transposed"]:
        w = rng.standard_normal((cfg["C"], cfg["K"] // cfg["groups"], cfg["R"], cfg["S"])).astype(dtype)
        ours, ours_backward, theirs = F.conv_transpose2d, F.conv_transpose2d_backward, TF.conv_transpose2d
    else:
        w = rng.standard_normal((cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"])).astype(dtype)
        ours, ours_backward, theirs = F.conv2d, F.conv2d_backward, TF.conv2d
    b = rng.standard_normal(cfg["K"]).astype(dtype) if cfg["bias"] else None
    geo = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    cfg["torch"] = lambda: theirs(tensor(torch, x), tensor(torch, w), tensor(torch, b), **geo)
    y = ours(*on(be, x, w, b), **geo)
    xt, wt, bt = tensor(torch, x, True), tensor(torch, w, True), tensor(torch, b, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # PyTorch's warning that asymmetric "same" copies the input
        yt = theirs(xt, wt, bt, **geo)
    dy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = ours_backward(*on(be, dy, x, w), bias=cfg["bias"], **geo)
    what = f"{be} {cfg}"
    close(to_host(y), yt, dtype, what + " y")
    close(to_host(dx), xt.grad, dtype, what + " dx")
    close(to_host(dw), wt.grad, dtype, what + " dweight")
    if cfg["bias"]:
        close(to_host(db), bt.grad, dtype, what + " dbias")
    else:
        assert db is None


def odd_extent(c):
    """padding="same" with an even dilated kernel extent on some axis: the extra bottom/right pixel."""
    return c["padding"] == "same" and any(d * (k - 1) % 2 for d, k in zip(as_pair(c["dilation"]), (c["R"], c["S"])))


@param_backend_dtype
def test_conv_sweep(be, dtype, torch):
    configs = sweep(draw_conv, lambda c, r, d: check_conv(c, r, d, be, torch), be, dtype, 21, torch)
    assert_covers(configs, {
        "same, extra bottom/right pixel": odd_extent,
        "same, symmetric": lambda c: c["padding"] == "same" and not odd_extent(c),
        "same, dilation 2": lambda c: c["padding"] == "same" and 2 in as_pair(c["dilation"]),
        "valid": lambda c: c["padding"] == "valid",
        "unbatched conv2d": lambda c: c["unbatched"] and not c["transposed"],
        "unbatched conv_transpose2d": lambda c: c["unbatched"] and c["transposed"],
        "groups 2 with same": lambda c: c["groups"] == 2 and c["padding"] == "same",
    })


# --- pooling: unbatched inputs, divisor_override -----------------------------------------------

def draw_pool(rng):
    kernel = pair(rng, 1, 4)
    cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 3)), H=int(rng.integers(1, 9)),
               W=int(rng.integers(1, 9)), kernel_size=kernel, stride=None if rng.random() < 0.3 else pair(rng, 1, 3),
               padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in as_pair(kernel)),
               ceil_mode=bool(rng.random() < 0.5), unbatched=bool(rng.random() < 0.5),
               avg=bool(rng.random() < 0.5))
    if cfg["avg"]:
        cfg["count_include_pad"] = bool(rng.random() < 0.5)
        cfg["divisor_override"] = None if rng.random() < 0.4 else int(rng.choice([-3, 1, 2, 7]))
    else:
        cfg["dilation"] = pair(rng, 1, 2)
    return cfg


def check_pool(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    x = image(cfg, rng, dtype)
    keys = ("stride", "padding", "ceil_mode") + (("count_include_pad", "divisor_override") if cfg["avg"]
                                                  else ("dilation",))
    geo = {k: cfg[k] for k in keys}
    what = f"{be} {cfg}"
    xt = tensor(torch, x, True)
    if cfg["avg"]:
        cfg["torch"] = lambda: TF.avg_pool2d(tensor(torch, x), cfg["kernel_size"], **geo)
        y = F.avg_pool2d(on(be, x), cfg["kernel_size"], **geo)
        yt = TF.avg_pool2d(xt, cfg["kernel_size"], **geo)
        dy = rng.standard_normal(yt.shape).astype(dtype)
        dx = F.avg_pool2d_backward(on(be, dy), x.shape, cfg["kernel_size"], **geo)
    else:
        cfg["torch"] = lambda: TF.max_pool2d(tensor(torch, x), cfg["kernel_size"], **geo)
        y, indices = F.max_pool2d(on(be, x), cfg["kernel_size"], **geo)
        yt, indices_t = TF.max_pool2d(xt, cfg["kernel_size"], return_indices=True, **geo)
        dy = rng.standard_normal(yt.shape).astype(dtype)
        if (to_host(indices) == -1).any():   # windows wholly in the padding: PyTorch's indices go out of range
            close(to_host(y), yt, dtype, what + " y")
            return
        np.testing.assert_array_equal(to_host(indices), indices_t.numpy(), err_msg=what)
        dx = F.max_pool2d_backward(on(be, dy), indices, x.shape, cfg["kernel_size"], **geo)
    yt.backward(torch.tensor(dy))
    assert y.shape == tuple(yt.shape) and dx.shape == x.shape, what
    close(to_host(y), yt, dtype, what + " y")
    close(to_host(dx), xt.grad, dtype, what + " dx")


@param_backend_dtype
def test_pool_sweep(be, dtype, torch):
    configs = sweep(draw_pool, lambda c, r, d: check_pool(c, r, d, be, torch), be, dtype, 22, torch)
    assert_covers(configs, {
        "unbatched max": lambda c: c["unbatched"] and not c["avg"],
        "unbatched avg": lambda c: c["unbatched"] and c["avg"],
        "negative divisor_override": lambda c: c["avg"] and (c["divisor_override"] or 0) < 0,
        "divisor_override with padding": lambda c: c["avg"] and c["divisor_override"] and max(c["padding"]) > 0,
        "divisor_override with ceil_mode": lambda c: c["avg"] and c["divisor_override"] and c["ceil_mode"],
    })


# --- linear on (..., in_features) ----------------------------------------------------------------

def draw_linear(rng):
    lead = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(0, 4))))
    return dict(lead=lead, I=int(rng.integers(1, 7)), O=int(rng.integers(1, 6)), bias=bool(rng.random() < 0.7))


def check_linear(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    x = rng.standard_normal(cfg["lead"] + (cfg["I"],)).astype(dtype)
    w = rng.standard_normal((cfg["O"], cfg["I"])).astype(dtype)
    b = rng.standard_normal(cfg["O"]).astype(dtype) if cfg["bias"] else None
    cfg["torch"] = lambda: None
    xt, wt, bt = tensor(torch, x, True), tensor(torch, w, True), tensor(torch, b, True)
    yt = TF.linear(xt, wt, bt)
    dy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    y = F.linear(*on(be, x, w, b))
    dx, dw, db = F.linear_backward(*on(be, dy, x, w), bias=cfg["bias"])
    what = f"{be} {cfg}"
    for ours, theirs, name in ((y, yt, "y"), (dx, xt.grad, "dx"), (dw, wt.grad, "dweight")):
        close(to_host(ours), theirs, dtype, f"{what} {name}")
    if cfg["bias"]:
        close(to_host(db), bt.grad, dtype, what + " dbias")


@param_backend_dtype
def test_linear_sweep(be, dtype, torch):
    configs = sweep(draw_linear, lambda c, r, d: check_linear(c, r, d, be, torch), be, dtype, 23, torch)
    assert_covers(configs, {"1-D x": lambda c: c["lead"] == (), "3 leading dimensions": lambda c: len(c["lead"]) == 3})


# --- cross entropy and mse: every option ---------------------------------------------------------

def draw_cross_entropy(rng):
    classes = int(rng.integers(1, 7))
    layout = str(rng.choice(["unbatched", "rows", "rows", "k-dim", "k-dim"]))
    kdims = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(1, 3)))) if layout == "k-dim" else ()
    cfg = dict(classes=classes, layout=layout, N=int(rng.integers(1, 5)), kdims=kdims,
               scale=float(rng.choice([1.0, 10.0, 300.0])), probabilities=bool(rng.random() < 0.3),
               weight=bool(rng.random() < 0.5), reduction=str(rng.choice(["mean", "sum", "none"])),
               label_smoothing=float(rng.choice([0.0, 0.0, 0.1, 0.5, 1.0])),
               ignore_index=int(rng.choice([-100, -100, -1, 0, 2])), ignored_share=float(rng.choice([0.0, 0.3, 1.0])))
    return cfg


def check_cross_entropy(cfg, rng, dtype, be, torch):
    TF = torch.nn.functional
    C = cfg["classes"]
    shape = (C,) if cfg["layout"] == "unbatched" else (cfg["N"], C) + cfg["kdims"]
    logits = (rng.standard_normal(shape) * cfg["scale"]).astype(dtype)
    options = dict(ignore_index=cfg["ignore_index"], reduction=cfg["reduction"],
                   label_smoothing=cfg["label_smoothing"])
    weight = rng.uniform(0.2, 2.0, C).astype(dtype) if cfg["weight"] else None
    if cfg["probabilities"]:
        target = rng.random(shape).astype(dtype)
        target /= target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        target_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        target = rng.integers(0, C, size=target_shape)
        target = np.where(rng.random(target_shape) < cfg["ignored_share"], cfg["ignore_index"], target)
    cfg["torch"] = lambda: TF.cross_entropy(tensor(torch, logits), torch.tensor(target), tensor(torch, weight),
                                            **options)
    loss, dlogits = F.cross_entropy(*on(be, logits, target, weight), **options)
    logits_t = tensor(torch, logits, True)
    loss_t = TF.cross_entropy(logits_t, torch.tensor(target), tensor(torch, weight), **options)
    loss_t.sum().backward()
    what = f"{be} {cfg}"
    if cfg["reduction"] == "none":
        assert loss.dtype == logits.dtype and loss.shape == tuple(loss_t.shape), what
        loss = to_host(loss)
    else:
        assert isinstance(loss, float), what
    close(loss, loss_t, dtype, what + " loss")
    close(to_host(dlogits), logits_t.grad, dtype, what + " dlogits")


@param_backend_dtype
def test_cross_entropy_sweep(be, dtype, torch):
    configs = sweep(draw_cross_entropy, lambda c, r, d: check_cross_entropy(c, r, d, be, torch), be, dtype, 24,
                    torch)
    index = [c for c in configs if not c["probabilities"]]
    assert_covers(configs, {
        **{f"reduction {r}": (lambda c, r=r: c["reduction"] == r) for r in ("mean", "sum", "none")},
        "probabilities with weight and smoothing": lambda c: c["probabilities"] and c["weight"]
        and c["label_smoothing"] > 0,
        "k-dim probabilities": lambda c: c["probabilities"] and c["layout"] == "k-dim",
        "unbatched": lambda c: c["layout"] == "unbatched",
    })
    assert_covers(index, {
        "weighted mean with ignored targets": lambda c: c["weight"] and c["reduction"] == "mean"
        and 0 < c["ignored_share"] < 1,
        "every target ignored (NaN mean)": lambda c: c["ignored_share"] == 1 and c["reduction"] == "mean",
        "ignore_index a real class": lambda c: c["ignore_index"] >= 0 and c["ignored_share"] > 0,
        "k-dim with smoothing": lambda c: c["layout"] == "k-dim" and c["label_smoothing"] > 0,
        "smoothing 1": lambda c: c["label_smoothing"] == 1.0,
    })


@param_backend_dtype
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_reductions(be, dtype, reduction, torch):
    rng = np.random.default_rng(25)
    for shape in [(5,), (3, 4), (2, 3, 4, 5)]:
        pred, target = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
        pred_t = tensor(torch, pred, True)
        loss_t = torch.nn.functional.mse_loss(pred_t, torch.tensor(target), reduction=reduction)
        loss_t.sum().backward()
        loss, dpred = F.mse_loss(*on(be, pred, target), reduction)
        close(to_host(loss) if reduction == "none" else loss, loss_t, dtype, f"{be} {shape} loss")
        close(to_host(dpred), pred_t.grad, dtype, f"{be} {shape} dpred")


@pytest.mark.parametrize("be", BACKENDS)
def test_loss_of_nothing(be):
    """Empty inputs: a NaN mean, a zero sum, an empty array for "none" (PyTorch's answers)."""
    logits, labels = np.empty((0, 3, 2)), np.empty((0, 2), np.int64)
    for reduction, expected in (("mean", math.nan), ("sum", 0.0)):
        loss, grad = F.cross_entropy(*on(be, logits, labels), reduction=reduction)
        assert (math.isnan(loss) if math.isnan(expected) else loss == expected) and grad.shape == logits.shape
    loss, grad = F.cross_entropy(*on(be, logits, labels), reduction="none")
    assert loss.shape == (0, 2)
    loss, grad = F.mse_loss(*on(be, logits, logits), reduction="sum")
    assert loss == 0.0 and grad.shape == logits.shape



@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("kdims", [(), (2, 3)], ids=["rows", "positions"])
def test_cross_entropy_mean_over_zero_target_weight(be, kdims, torch):
    """Counted targets whose weights sum to 0: PyTorch's NLL term is 0/0, so its mean is NaN with NaN
    gradients on the counted rows also with label smoothing (whose own term alone would be inf)."""
    rng = np.random.default_rng(28)
    logits = rng.standard_normal((4, 3) + kdims)
    weight = np.array([0.0, 0.0, 1.5])   # class 2 weighs something, but no target is class 2
    target = rng.integers(0, 2, size=(4,) + kdims)
    target.flat[0] = -100   # one ignored: its gradient stays 0
    for smoothing in (0.0, 0.3, 1.0):
        logits_t = tensor(torch, logits, True)
        loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(target), tensor(torch, weight),
                                                   label_smoothing=smoothing)
        loss_t.backward()
        loss, dlogits = F.cross_entropy(*on(be, logits, target, weight), label_smoothing=smoothing)
        assert math.isnan(loss) and math.isnan(loss_t.item()), (smoothing, loss)
        close(to_host(dlogits), logits_t.grad, np.float64, f"{be} {kdims} smoothing {smoothing}")

# --- arguments PyTorch refuses --------------------------------------------------------------------

X = np.random.default_rng(26).standard_normal((2, 3, 5, 5))
W = np.random.default_rng(27).standard_normal((4, 3, 2, 2))
LOGITS = np.random.default_rng(28).standard_normal((4, 3))
LABELS = np.array([0, 2, 1, 2])
REFUSED = [
    # (id, our call, PyTorch's call (of T: torch.nn.functional as T.F, torch.tensor as T.t, torch.nn as
    # T.nn), error type, pattern naming the argument)
    ("same strided", lambda: F.conv2d(X, W, padding="same", stride=2),
     lambda T: T.F.conv2d(T.t(X), T.t(W), padding="same", stride=2), ValueError, "padding='same'.*strided"),
    ("padding string", lambda: F.conv2d(X, W, padding="full"),
     lambda T: T.F.conv2d(T.t(X), T.t(W), padding="full"), ValueError, "padding must be"),
    ("transposed same", lambda: F.conv_transpose2d(X, W.transpose(1, 0, 2, 3), padding="same"),
     lambda T: T.F.conv_transpose2d(T.t(X), T.t(W.transpose(1, 0, 2, 3)), padding="same"), TypeError, "padding"),
    ("conv 2-D x", lambda: F.conv2d(X[0, 0], W),
     lambda T: T.F.conv2d(T.t(X[0, 0]), T.t(W)), ValueError, "x must be 3-D or 4-D"),
    ("pool 2-D x", lambda: F.avg_pool2d(X[0, 0], 2),
     lambda T: T.F.avg_pool2d(T.t(X[0, 0]), 2), ValueError, "x must be 3-D or 4-D"),
    ("divisor zero", lambda: F.avg_pool2d(X, 2, divisor_override=0),
     lambda T: T.F.avg_pool2d(T.t(X), 2, divisor_override=0), ValueError, "divisor_override"),
    ("divisor float", lambda: F.avg_pool2d(X, 2, divisor_override=2.5),
     lambda T: T.F.avg_pool2d(T.t(X), 2, divisor_override=2.5), TypeError, "divisor_override"),
    ("divisor bool", lambda: F.avg_pool2d(X, 2, divisor_override=True),
     lambda T: T.F.avg_pool2d(T.t(X), 2, divisor_override=True), TypeError, "divisor_override"),
    ("linear 0-D", lambda: F.linear(np.ones(()), np.ones((2, 1))),
     lambda T: T.F.linear(T.t(np.ones(())), T.t(np.ones((2, 1)))), ValueError, "x must have at least 1 dimension"),
    ("linear features", lambda: F.linear(X, np.ones((2, 4))),
     lambda T: T.F.linear(T.t(X), T.t(np.ones((2, 4)))), ValueError, "x has 5 features"),
    ("reduction", lambda: F.cross_entropy(LOGITS, LABELS, reduction="avg"),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(LABELS), reduction="avg"), ValueError, "reduction"),
    ("mse reduction", lambda: F.mse_loss(LOGITS, LOGITS, reduction="batchmean"),
     lambda T: T.F.mse_loss(T.t(LOGITS), T.t(LOGITS), reduction="batchmean"), ValueError, "reduction"),
    ("label_smoothing > 1", lambda: F.cross_entropy(LOGITS, LABELS, label_smoothing=1.5),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(LABELS), label_smoothing=1.5), ValueError, "label_smoothing"),
    ("weight size", lambda: F.cross_entropy(LOGITS, LABELS, np.ones(4)),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(LABELS), T.t(np.ones(4))), ValueError, "weight"),
    ("weight dtype", lambda: F.cross_entropy(LOGITS, LABELS, np.ones(3, np.float32)),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(LABELS), T.t(np.ones(3, np.float32))), TypeError, "weight"),
    ("ignore_index float", lambda: F.cross_entropy(LOGITS, LABELS, ignore_index=1.5),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(LABELS), ignore_index=1.5), TypeError, "ignore_index"),
    ("ignore_index with probabilities", lambda: F.cross_entropy(LOGITS, np.full((4, 3), 1 / 3), ignore_index=1),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(np.full((4, 3), 1 / 3)), ignore_index=1), ValueError,
     "ignore_index"),
    ("class out of range", lambda: F.cross_entropy(LOGITS, np.array([0, 3, 1, 2])),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(np.array([0, 3, 1, 2]))), ValueError, r"target\[1\] = 3"),
    ("float target of another shape", lambda: F.cross_entropy(LOGITS, np.zeros(4)),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(np.zeros(4))), TypeError, "target"),
    ("integer probabilities", lambda: F.cross_entropy(LOGITS, np.zeros((4, 3), np.int64)),
     lambda T: T.F.cross_entropy(T.t(LOGITS), T.t(np.zeros((4, 3), np.int64))), TypeError, "target"),
    ("k-dim target shape", lambda: F.cross_entropy(X, np.zeros((2, 5), np.int64)),
     lambda T: T.F.cross_entropy(T.t(X), T.t(np.zeros((2, 5), np.int64))), ValueError, "target must have shape"),
    ("layer padding string", lambda: nn.Conv2d(3, 4, 3, padding="full"),
     lambda T: T.nn.Conv2d(3, 4, 3, padding="full"), ValueError, "padding"),
    ("layer same strided", lambda: nn.Conv2d(3, 4, 3, padding="same", stride=2),
     lambda T: T.nn.Conv2d(3, 4, 3, padding="same", stride=2), ValueError, "padding='same'"),
    ("layer label_smoothing", lambda: nn.CrossEntropyLoss(label_smoothing=2.0)(LOGITS, LABELS),
     lambda T: T.nn.CrossEntropyLoss(label_smoothing=2.0)(T.t(LOGITS), T.t(LABELS)), ValueError,
     "label_smoothing"),
]


@pytest.mark.parametrize("ours, theirs, error, pattern", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_as_pytorch_refuses(ours, theirs, error, pattern, torch):
    T = SimpleNamespace(F=torch.nn.functional, t=torch.tensor, nn=torch.nn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((RuntimeError, ValueError, TypeError, IndexError)):
            theirs(T)
    with pytest.raises(error, match=pattern):
        ours()


def test_negative_label_smoothing_is_refused():
    """A deliberate difference: PyTorch silently ignores a negative label_smoothing; we refuse it."""
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(LOGITS, LABELS, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=float("nan"))


# --- finite differences --------------------------------------------------------------------------

FD_BACKENDS = [be for be in BACKENDS if be != "cuda"]   # cuda: cnn-gpu check runs them there


@pytest.mark.parametrize("be", FD_BACKENDS)
def test_finite_differences(be):
    rng = np.random.default_rng(29)
    x3 = rng.standard_normal((2, 5, 6))
    w = rng.standard_normal((3, 2, 2, 3))
    cases = {
        "conv same, even kernel, dilation": (
            lambda x, w: F.conv2d(x, w, padding="same", dilation=(1, 2), backend=be),
            lambda dy, x, w: F.conv2d_backward(dy, x, w, padding="same", dilation=(1, 2), bias=False,
                                               backend=be)[:2], [x3, w]),
        "conv_transpose unbatched": (
            lambda x, w: F.conv_transpose2d(x, w, stride=2, backend=be),
            lambda dy, x, w: F.conv_transpose2d_backward(dy, x, w, stride=2, bias=False, backend=be)[:2],
            [x3, rng.standard_normal((2, 3, 2, 2))]),
        "avg pool divisor_override unbatched": (
            lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4, backend=be),
            lambda dy, x: F.avg_pool2d_backward(dy, x.shape, 3, 2, 1, ceil_mode=True, divisor_override=4,
                                                backend=be), [x3]),
        "max pool unbatched": (
            lambda x: F.max_pool2d(x, 2, 1, backend=be)[0],
            lambda dy, x: F.max_pool2d_backward(dy, F.max_pool2d(x, 2, 1, backend=be)[1], x.shape, 2, 1,
                                                backend=be), [x3]),
        "linear 3-D": (
            lambda x, w: F.linear(x, w, backend=be),
            lambda dy, x, w: F.linear_backward(dy, x, w, bias=False, backend=be)[:2],
            [x3, rng.standard_normal((4, 6))]),
    }
    for name, (forward, backward, inputs) in cases.items():
        report = check_op(forward, backward, inputs)
        assert report.max_rel_error < 1e-6, f"{be} {name}: {report}"


@pytest.mark.parametrize("be", FD_BACKENDS)
def test_cross_entropy_finite_differences(be):
    """Every option at once, and each reduction (the gradient of the sum for "none")."""
    rng = np.random.default_rng(30)
    logits = rng.standard_normal((3, 4, 2, 3)) * 2
    weight = rng.uniform(0.3, 2.0, 4)
    labels = rng.integers(0, 4, (3, 2, 3))
    labels[0, 1] = 1   # ignore_index=1 drops these and every other 1
    assert_cross_entropy_gradients_by_finite_differences(logits, labels, 1, weight, rng.random(logits.shape), be)
    for reduction in ("mean", "sum", "none"):
        pred, goal = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
        _, grad = F.mse_loss(pred, goal, reduction, backend=be)
        report = gradcheck(lambda: float(np.sum(F.mse_loss(pred, goal, reduction, backend=be)[0])), [pred], [grad])
        assert report.max_rel_error < 1e-6, f"{be} mse {reduction}: {report}"


# --- the emulator's schedules with guard zones ----------------------------------------------------

def kernel_results(dtype):
    """Every kernel path this file adds, on emu: the asymmetric "same" conv, unbatched pools with a
    divisor override, both cross-entropy kernels (rows and K-dim positions) with every option."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((3, 7, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 2, 4)).astype(dtype)
    y = F.conv2d(x, w, padding="same", dilation=(1, 2), backend="emu")
    dy = rng.standard_normal(y.shape).astype(dtype)
    out = [y, *F.conv2d_backward(dy, x, w, padding="same", dilation=(1, 2), backend="emu")]
    pooled = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=5, backend="emu")
    out += [pooled, F.avg_pool2d_backward(pooled, x.shape, 3, 2, 1, ceil_mode=True, divisor_override=5,
                                          backend="emu")]
    weight = rng.uniform(0.5, 2, 5).astype(dtype)
    for shape in ((6, 5), (2, 5, 3, 4)):
        logits = (rng.standard_normal(shape) * 5).astype(dtype)
        labels = rng.integers(-1, 5, shape[:1] + shape[2:])
        probabilities = rng.random(shape).astype(dtype)
        for target, ignore_index in ((labels, -1), (probabilities, -100)):
            for reduction in ("mean", "none"):
                loss, grad = F.cross_entropy(logits, target, weight, ignore_index, reduction, 0.1, backend="emu")
                out += [np.atleast_1d(loss), grad]
    return out


@pytest.mark.skipif("emu" not in BACKENDS, reason=f"emu unavailable: {backend.why_unavailable('emu')}")
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_schedules_with_guard_zones_give_the_same_bits(schedule):
    for dtype in (np.float64, np.float32):
        expected = kernel_results(dtype)
        with emu.checking(schedule=schedule, seed=5, guard=True):
            got = kernel_results(dtype)
        for i, (a, e) in enumerate(zip(got, expected)):
            assert a.dtype == e.dtype and a.tobytes() == e.tobytes(), f"result {i} ({np.dtype(dtype).name})"


# --- issue 13: 32-bit products in pool.cu, tampered max-pool indices ------------------------------

@pytest.mark.parametrize("be", FD_BACKENDS)
@pytest.mark.parametrize("kernel, padding", [(46342, 23171), (65536, 32768)])
def test_huge_pool_windows(be, kernel, padding):
    """A window of 46342 (65536) with padding counts kernel^2 > 2^31 taps: the kernels' divisor is a
    64-bit product (an int product gave a negative mean, or inf), and the NumPy path visits only the
    taps that reach the input (it allocated the whole padded input, 17 GiB, and looped over every tap)."""
    x = np.array([[[[3.0]]]])
    divisor = float(kernel) ** 2   # the window spans the whole padded input: kernel x kernel taps
    y = F.avg_pool2d(x, kernel, padding=padding, backend=be)
    assert y[0, 0, 0, 0] == 3.0 / divisor
    dx = F.avg_pool2d_backward(np.ones_like(y), x.shape, kernel, padding=padding, backend=be)
    assert dx[0, 0, 0, 0] == 1.0 / divisor
    y, indices = F.max_pool2d(x, kernel, padding=padding, backend=be)
    assert y[0, 0, 0, 0] == 3.0 and indices[0, 0, 0, 0] == 0


@pytest.mark.skipif("emu" not in BACKENDS, reason=f"emu unavailable: {backend.why_unavailable('emu')}")
def test_pool_geometry_beyond_32_bits_is_refused_before_any_copy(monkeypatch):
    """Window positions past 2^31 would wrap in the kernels' ints: refused with a ValueError before the
    input is copied or anything launched."""
    launched = []
    monkeypatch.setattr(backend, "launch", lambda *args, **kw: launched.append(args))
    x = np.broadcast_to(np.float64(1.0), (1, 1, 2**15, 2**15))   # 8 GiB if it were ever copied
    with pytest.raises(ValueError, match="32-bit ints"):
        F.max_pool2d(x, 3, stride=2**31 - 2**15, dilation=2**30 // 3, ceil_mode=True, backend="emu")
    with pytest.raises(ValueError, match="32-bit ints"):
        F.avg_pool2d(x[:, :, :1, :1], 2**30, padding=2**29, backend="emu")
    assert not launched


@pytest.mark.parametrize("be", [be for be in BACKENDS if be != "cuda"])
def test_tampered_max_pool_indices_are_refused(be):
    """An in-range index outside its window (numpy scattered it, emu dropped it) and a -1 in a window
    with taps inside the input are refused on every backend; genuine indices pass."""
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 3, 6, 6))
    y, indices = F.max_pool2d(x, 2, backend=be)
    dy = rng.standard_normal(y.shape)
    assert F.max_pool2d_backward(dy, indices, x.shape, 2, backend=be).shape == x.shape
    for where, value, message in (((1, 2, 0, 0), 35, r"indices\[1, 2, 0, 0\] = 35 \(row 5, col 5\) is not a tap"),
                                  ((0, 1, 2, 1), 0, r"indices\[0, 1, 2, 1\] = 0 .* is not a tap"),
                                  ((0, 0, 1, 1), -1, r"-1 \(no tap\) is not a tap")):
        bad = indices.copy()
        bad[where] = value
        with pytest.raises(ValueError, match=message):
            F.max_pool2d_backward(dy, bad, x.shape, 2, backend=be)
    # with dilation the window is a lattice: a position between its taps is not one of them
    y, indices = F.max_pool2d(x, 2, stride=1, dilation=2, backend=be)
    bad = indices.copy()
    bad[0, 0, 0, 0] = 1   # row 0, col 1: between taps 0 and 2
    with pytest.raises(ValueError, match="not a tap"):
        F.max_pool2d_backward(np.ones(y.shape), bad, x.shape, 2, stride=1, dilation=2, backend=be)



@pytest.mark.parametrize("empty", [(), []], ids=["tuple", "list"])
def test_empty_pool_stride_means_the_kernel_size(empty, torch):
    """PyTorch takes stride=() (or []) as its default, the kernel size: the functions, their
    backward and the layers do too."""
    rng = np.random.default_rng(34)
    x = rng.standard_normal((2, 3, 7, 6))
    dy = rng.standard_normal((2, 3, 3, 2))
    y, indices = F.max_pool2d(x, (2, 3), stride=empty)
    close(y, torch.nn.functional.max_pool2d(torch.tensor(x), (2, 3), stride=empty), np.float64, "max")
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, indices, x.shape, (2, 3), stride=empty),
                                  F.max_pool2d_backward(dy, indices, x.shape, (2, 3)))
    close(F.avg_pool2d(x, (2, 3), stride=empty), torch.nn.functional.avg_pool2d(torch.tensor(x), (2, 3), stride=empty),
          np.float64, "avg")
    np.testing.assert_array_equal(F.avg_pool2d_backward(dy, x.shape, (2, 3), stride=empty),
                                  F.avg_pool2d_backward(dy, x.shape, (2, 3)))
    assert nn.MaxPool2d((2, 3), stride=empty).stride == nn.AvgPool2d((2, 3), stride=empty).stride == (2, 3)

# --- layers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("be", FD_BACKENDS)
def test_layers_take_the_options(be, torch):
    rng = np.random.default_rng(33)
    conv = nn.Conv2d(3, 4, (2, 3), padding="same", dilation=2, dtype=np.float64).to(be)
    conv_t = torch.nn.Conv2d(3, 4, (2, 3), padding="same", dilation=2, dtype=torch.float64)
    with torch.no_grad():
        conv_t.weight.copy_(torch.tensor(conv.weight.data))
        conv_t.bias.copy_(torch.tensor(conv.bias.data))
    pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=3).to(be)
    pool_t = torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=3)
    x = rng.standard_normal((3, 6, 5))   # unbatched through both layers
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yt = pool_t(conv_t(xt))
    y = pool(conv(x))
    close(y, yt, np.float64, "conv same + avg pool")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    close(conv.backward(pool.backward(dy)), xt.grad, np.float64, "dx")
    close(conv.weight.grad, conv_t.weight.grad, np.float64, "dweight")

    logits = rng.standard_normal((4, 5, 3))
    labels = rng.integers(0, 5, (4, 3))
    weight = rng.uniform(0.5, 2, 5)
    for reduction in ("mean", "sum", "none"):
        loss_fn = nn.CrossEntropyLoss(weight, ignore_index=2, reduction=reduction, label_smoothing=0.1).to(be)
        loss_t_fn = torch.nn.CrossEntropyLoss(torch.tensor(weight), ignore_index=2, reduction=reduction,
                                              label_smoothing=0.1)
        logits_t = torch.tensor(logits, requires_grad=True)
        loss_t = loss_t_fn(logits_t, torch.tensor(labels))
        upstream = rng.standard_normal(loss_t.shape) if reduction == "none" else 0.5
        loss_t.backward(torch.tensor(upstream))
        loss = loss_fn(logits, labels)
        close(loss, loss_t, np.float64, f"CrossEntropyLoss {reduction}")
        close(loss_fn.backward(upstream), logits_t.grad, np.float64, f"CrossEntropyLoss {reduction} backward")
    assert list(loss_fn.state_dict()) == ["weight"]
    mse = nn.MSELoss(reduction="sum").to(be)
    assert isinstance(mse(logits, logits * 0.5), float)
    np.testing.assert_allclose(mse.backward(), logits, rtol=1e-12)


def test_cross_entropy_layer_casts_its_weight_to_the_logits_dtype():
    logits = np.random.default_rng(34).standard_normal((3, 4)).astype(np.float32)
    loss_fn = nn.CrossEntropyLoss([1, 2, 1, 1], label_smoothing=0.1)
    loss_fn(logits, np.array([0, 1, 3]))
    assert loss_fn.backward().dtype == np.float32
    with pytest.raises(ValueError, match=r"dy must be a number \(the loss's shape\)"):
        loss_fn.backward(np.ones(3))
