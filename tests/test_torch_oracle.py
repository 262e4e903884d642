"""Every functional op, forward and backward, against PyTorch's CPU op over a seeded random sweep of
at least 200 accepted configurations per op (float64, 1e-10 relative) plus a float32 sweep (1e-5).

Configurations are drawn at random and kept when PyTorch accepts them; our argument checks must
reject exactly the ones PyTorch rejects. Each sweep also asserts that it reached the features it is
meant to cover (strides 1-3, dilation, depthwise groups, ceil_mode, ...), so a generator that drifts
fails loudly instead of silently testing less.
"""
import numpy as np
import pytest

from cnn_gpu import functional as F
from helpers import tolerance

torch = pytest.importorskip("torch", reason="PyTorch is not installed (make torch)")
TF = torch.nn.functional

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny ops: a thread pool only costs here, and spinning threads hurt on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

SWEEP = 200          # accepted float64 configurations per op
SWEEP_F32 = 60       # accepted float32 configurations per op


def rel_err(ours, theirs, scale=None):
    """max |ours - theirs| / max |theirs| (or / scale); infinities must match exactly."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    infinite = np.isinf(theirs)
    if not np.array_equal(ours[infinite], theirs[infinite]):
        return np.inf
    ours, theirs = ours[~infinite].astype(np.float64), theirs[~infinite].astype(np.float64)
    if scale is None:
        scale = float(np.abs(theirs).max(initial=0.0))
    return float(np.abs(ours - theirs).max(initial=0.0) / max(scale, 1e-30))


def run_sweep(draw, check, count, dtype, seed):
    """Draw configurations until `count` are accepted by PyTorch; check each. Returns the accepted
    configurations. `draw(rng)` -> config dict; `check(cfg, rng, dtype)` -> list of errors (a
    config we reject raises ValueError; it must be one PyTorch rejects too)."""
    rng = np.random.default_rng(seed)
    accepted, failures, disagreements = [], [], []
    for _ in range(50 * count):
        if len(accepted) == count:
            break
        cfg = draw(rng)
        try:
            errors = check(cfg, rng, dtype)
        except ValueError as ours:
            if torch_accepts(cfg):
                disagreements.append((cfg, str(ours)))
            continue
        accepted.append(cfg)
        worst = max(errors)
        if not worst <= tolerance(dtype):
            failures.append((worst, cfg))
    assert not disagreements, f"we reject configs PyTorch accepts: {disagreements[:3]}"
    assert not failures, f"{len(failures)} configs differ from PyTorch, worst: {sorted(failures)[-3:]}"
    assert len(accepted) == count, f"only {len(accepted)} configs accepted"
    return accepted


def torch_accepts(cfg):
    """PyTorch runs the config and gives a non-empty output (we reject empty outputs outright)."""
    try:
        out = cfg["torch_forward"]()
    except RuntimeError:
        return False
    return out is None or out.numel() > 0


def pair(rng, low, high):
    """An int or, half of the time, a non-square (h, w) pair."""
    if rng.random() < 0.5:
        return int(rng.integers(low, high + 1))
    return tuple(int(v) for v in rng.integers(low, high + 1, size=2))


def as_pair(v):
    return v if isinstance(v, tuple) else (v, v)


def t(a, grad=True):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def covered(configs, feature):
    return any(feature(c) for c in configs)


# --- convolution --------------------------------------------------------------------------------

def draw_conv(rng, transposed=False):
    groups = int(rng.choice([1, 1, 2, 3]))
    depthwise = rng.random() < 0.25
    cin_g = 1 if depthwise else int(rng.integers(1, 3))
    cout_g = int(rng.integers(1, 5))   # up to 4x the input channels: the scattered input gradient
    cfg = dict(N=int(rng.integers(1, 3)), C=groups * cin_g, K=groups * cout_g, groups=groups,
               H=int(rng.integers(1, 8)), W=int(rng.integers(1, 8)),
               stride=pair(rng, 1, 3), padding=pair(rng, 0, 2), dilation=pair(rng, 1, 2),
               bias=bool(rng.random() < 0.7))
    R, S = (int(v) for v in rng.integers(1, 5, size=2))
    if rng.random() < 0.15 and not transposed:   # kernel exactly as large as the padded input
        (ph, pw), (dh, dw) = as_pair(cfg["padding"]), as_pair(cfg["dilation"])
        R = max(1, (cfg["H"] + 2 * ph - 1) // dh + 1)
        S = max(1, (cfg["W"] + 2 * pw - 1) // dw + 1)
    cfg.update(R=R, S=S)
    if transposed:
        cfg["output_padding"] = pair(rng, 0, 2)
    return cfg


def conv_arrays(cfg, rng, dtype, transposed):
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"])).astype(dtype)
    if transposed:
        w = rng.standard_normal((cfg["C"], cfg["K"] // cfg["groups"], cfg["R"], cfg["S"])).astype(dtype)
    else:
        w = rng.standard_normal((cfg["K"], cfg["C"] // cfg["groups"], cfg["R"], cfg["S"])).astype(dtype)
    b = rng.standard_normal(cfg["K"]).astype(dtype) if cfg["bias"] else None
    return x, w, b


def check_conv_op(cfg, rng, dtype, transposed):
    x, w, b = conv_arrays(cfg, rng, dtype, transposed)
    geo = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    if transposed:
        geo["output_padding"] = cfg["output_padding"]
        forward, backward, torch_forward = F.conv_transpose2d, F.conv_transpose2d_backward, TF.conv_transpose2d
    else:
        forward, backward, torch_forward = F.conv2d, F.conv2d_backward, TF.conv2d
    cfg["torch_forward"] = lambda: torch_forward(t(x), t(w), t(b), **geo)
    y = forward(x, w, b, **geo)
    xt, wt, bt = t(x), t(w), t(b)
    yt = torch_forward(xt, wt, bt, **geo)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = backward(dy, x, w, bias=b is not None, **geo)
    errors = [rel_err(y, yt), rel_err(dx, xt.grad), rel_err(dw, wt.grad)]
    if b is not None:
        errors.append(rel_err(db, bt.grad))
    else:
        assert db is None
    return errors


def check_conv(cfg, rng, dtype):
    return check_conv_op(cfg, rng, dtype, transposed=False)


def check_conv_transpose(cfg, rng, dtype):
    return check_conv_op(cfg, rng, dtype, transposed=True)


def conv_coverage(configs):
    features = {
        "stride 3": lambda c: 3 in as_pair(c["stride"]),
        "padding 2": lambda c: 2 in as_pair(c["padding"]),
        "dilation 2": lambda c: 2 in as_pair(c["dilation"]),
        "depthwise": lambda c: c["groups"] == c["C"] > 1,
        "groups 3": lambda c: c["groups"] == 3,
        "non-square kernel": lambda c: c["R"] != c["S"],
        "non-square image": lambda c: c["H"] != c["W"],
        "batch 1": lambda c: c["N"] == 1,
        "C=1": lambda c: c["C"] == 1,
        "no bias": lambda c: not c["bias"],
        # the NumPy code paths: one GEMM per kernel row, and the scattered input gradient
        "kernel >= 4 rows at stride 1": lambda c: c["R"] >= 4 and as_pair(c["stride"])[0] == 1,
        "channel ratio >= 3": lambda c: max(c["C"], c["K"]) >= 3 * min(c["C"], c["K"]),
    }
    return [name for name, f in features.items() if not covered(configs, f)]


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 1), (np.float32, SWEEP_F32, 2)])
def test_conv2d_sweep(dtype, count, seed, conv_path):
    configs = run_sweep(draw_conv, check_conv, count, dtype, seed)
    missing = conv_coverage(configs)
    if dtype == np.float64:
        full = [c for c in configs if c["R"] == c["H"] + 2 * as_pair(c["padding"])[0]
                and as_pair(c["dilation"])[0] == 1]
        missing += [] if full else ["kernel as large as the padded input"]
    assert not missing, f"sweep never covered: {missing}"


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 3), (np.float32, SWEEP_F32, 4)])
def test_conv_transpose2d_sweep(dtype, count, seed, conv_path):
    configs = run_sweep(lambda rng: draw_conv(rng, transposed=True), check_conv_transpose, count, dtype, seed)
    missing = conv_coverage(configs)
    if not covered(configs, lambda c: max(as_pair(c["output_padding"])) > 0):
        missing.append("output_padding")
    if not covered(configs, lambda c: any(o >= s for o, s in zip(as_pair(c["output_padding"]),
                                                                   as_pair(c["stride"])))):
        missing.append("output_padding >= stride (allowed by dilation)")
    assert not missing, f"sweep never covered: {missing}"


# --- pooling ------------------------------------------------------------------------------------

def draw_pool(rng, avg=False):
    cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 3)),
               H=int(rng.integers(1, 9)), W=int(rng.integers(1, 9)),
               kernel_size=pair(rng, 1, 4), stride=None if rng.random() < 0.2 else pair(rng, 1, 3),
               padding=pair(rng, 0, 2), ceil_mode=bool(rng.random() < 0.5), ties=bool(rng.random() < 0.3))
    if avg:
        cfg["count_include_pad"] = bool(rng.random() < 0.5)
    else:
        cfg["dilation"] = pair(rng, 1, 2)
    return cfg


def pool_input(cfg, rng, dtype):
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"]))
    return (np.round(x) if cfg["ties"] else x).astype(dtype)   # rounded: many ties


def check_max_pool(cfg, rng, dtype):
    x = pool_input(cfg, rng, dtype)
    geo = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])
    cfg["torch_forward"] = lambda: TF.max_pool2d(t(x), cfg["kernel_size"], **geo)
    y, idx = F.max_pool2d(x, cfg["kernel_size"], **geo)
    if (idx == -1).any():
        # windows wholly in the padding: PyTorch's indices (and backward) go out of range there;
        # checked against the contract in test_max_pool2d_all_padding_windows
        cfg["all_padding_window"] = True
        yt, _ = TF.max_pool2d(torch.tensor(x), cfg["kernel_size"], return_indices=True, **geo)
        return [rel_err(y, yt)]
    xt = t(x)
    yt, idx_t = TF.max_pool2d(xt, cfg["kernel_size"], return_indices=True, **geo)
    assert idx.dtype == np.int32
    if not np.array_equal(idx, idx_t.numpy()):
        return [np.inf]
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx = F.max_pool2d_backward(dy, idx, x.shape, cfg["kernel_size"], **geo)
    return [rel_err(y, yt), rel_err(dx, xt.grad)]


def check_avg_pool(cfg, rng, dtype):
    x = pool_input(cfg, rng, dtype)
    geo = dict(stride=cfg["stride"], padding=cfg["padding"], ceil_mode=cfg["ceil_mode"],
               count_include_pad=cfg["count_include_pad"])
    cfg["torch_forward"] = lambda: TF.avg_pool2d(t(x), cfg["kernel_size"], **geo)
    y = F.avg_pool2d(x, cfg["kernel_size"], **geo)
    xt = t(x)
    yt = TF.avg_pool2d(xt, cfg["kernel_size"], **geo)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx = F.avg_pool2d_backward(dy, x.shape, cfg["kernel_size"], **geo)
    return [rel_err(y, yt), rel_err(dx, xt.grad)]


def ceil_adds_window(c, axis):
    """ceil_mode produced one more output than floor mode along axis (0: rows, 1: cols)."""
    size = (c["H"], c["W"])[axis]
    k = as_pair(c["kernel_size"])[axis]
    s = as_pair(c["stride"] if c["stride"] is not None else c["kernel_size"])[axis]
    p = as_pair(c["padding"])[axis]
    d = as_pair(c.get("dilation", 1))[axis]
    return c["ceil_mode"] and (size + 2 * p - d * (k - 1) - 1) % s != 0


def windows_disjoint(c):
    """No input feeds two windows (the max pool's backward pass then scatters without summing)."""
    stride = c["stride"] if c["stride"] is not None else c["kernel_size"]
    return all(s >= (k - 1) * d + 1 for k, s, d in zip(as_pair(c["kernel_size"]), as_pair(stride),
                                                       as_pair(c.get("dilation", 1))))


def pool_coverage(configs):
    features = {
        "stride 3": lambda c: c["stride"] is not None and 3 in as_pair(c["stride"]),
        "default stride": lambda c: c["stride"] is None,
        "padding 2": lambda c: 2 in as_pair(c["padding"]),
        "non-square kernel": lambda c: isinstance(c["kernel_size"], tuple)
        and c["kernel_size"][0] != c["kernel_size"][1],
        "ceil_mode adding a window": lambda c: ceil_adds_window(c, 0) or ceil_adds_window(c, 1),
        "ties": lambda c: c["ties"],
        "batch 1, C=1": lambda c: c["N"] == 1 and c["C"] == 1,
        "overlapping windows": lambda c: not windows_disjoint(c),
        "disjoint windows": windows_disjoint,
    }
    return [name for name, f in features.items() if not covered(configs, f)]


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 5), (np.float32, SWEEP_F32, 6)])
def test_max_pool2d_sweep(dtype, count, seed):
    configs = run_sweep(draw_pool, check_max_pool, count, dtype, seed)
    missing = pool_coverage(configs)
    if not covered(configs, lambda c: 2 in as_pair(c["dilation"])):
        missing.append("dilation 2")
    assert not missing, f"sweep never covered: {missing}"
    assert sum(not c.get("all_padding_window") for c in configs) >= 0.9 * count


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 7), (np.float32, SWEEP_F32, 8)])
def test_avg_pool2d_sweep(dtype, count, seed):
    configs = run_sweep(lambda rng: draw_pool(rng, avg=True), check_avg_pool, count, dtype, seed)
    missing = pool_coverage(configs)
    for flag in (True, False):
        if not covered(configs, lambda c: c["count_include_pad"] is flag and max(as_pair(c["padding"])) > 0):
            missing.append(f"count_include_pad={flag} with padding")
    assert not missing, f"sweep never covered: {missing}"


def test_max_pool2d_all_padding_windows():
    """The contract where PyTorch goes out of range: -inf, index -1, and no gradient."""
    x = np.random.default_rng(9).standard_normal((2, 3, 1, 5))
    y, idx = F.max_pool2d(x, (2, 3), stride=1, padding=1, dilation=2)   # rows -1 and 1: none inside
    assert y.shape == (2, 3, 1, 3)
    assert (idx == -1).all() and (y == -np.inf).all()
    dx = F.max_pool2d_backward(np.ones(y.shape), idx, x.shape, (2, 3), stride=1, padding=1, dilation=2)
    assert (dx == 0).all()
    yt = TF.max_pool2d(torch.tensor(x), (2, 3), stride=1, padding=1, dilation=2)
    np.testing.assert_array_equal(y, yt.numpy())



@pytest.mark.parametrize("kernel", [16, 17], ids=["256 taps", "289 taps"])
def test_max_pool2d_of_many_taps_matches_torch(kernel):
    """Tap numbers are kept in uint8 up to 256 taps, in int32 beyond: both give PyTorch's values and
    indices, ties (few distinct values) included."""
    x = np.random.default_rng(32).integers(-3, 4, size=(2, 3, 20, 19)).astype(np.float32)
    y, idx = F.max_pool2d(x, kernel, stride=2, padding=kernel // 2)
    yt, it = TF.max_pool2d(torch.tensor(x), kernel, stride=2, padding=kernel // 2, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_max_pool2d_signed_zero_ties(backend, dtype):
    """A window whose maximum is a tie of -0.0 and 0.0 returns the value at its index (the first in
    scan order), sign included, as PyTorch does: a max over the window may return either zero."""
    x = np.random.default_rng(31).choice([0.0, -0.0, -1.0], size=(2, 3, 7, 6)).astype(dtype)
    y, idx = F.max_pool2d(x, 3, stride=1, padding=1, backend=backend)
    yt, it = TF.max_pool2d(torch.tensor(x), 3, stride=1, padding=1, return_indices=True)
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_array_equal(np.signbit(y), torch.signbit(yt).numpy())
    assert np.signbit(y).any() and (~np.signbit(y) & (y == 0)).any()   # both signs reached

# --- upsampling ---------------------------------------------------------------------------------

def draw_interpolate(rng):
    """Sizes (0 too) or factors (integer, non-integer, small enough to empty the output) per mode."""
    mode = str(rng.choice(["nearest", "nearest-exact", "bilinear", "bicubic", "area"]))
    cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 3)), H=int(rng.integers(1, 9)),
               W=int(rng.integers(1, 9)), mode=mode, size=None, scale_factor=None,
               align_corners=[None, False, True][int(rng.integers(3))] if mode in ("bilinear", "bicubic") else None)
    if rng.random() < 0.4:
        cfg["size"] = pair(rng, 0, 13)
    elif rng.random() < 0.4:
        cfg["scale_factor"] = float(rng.integers(1, 4)) if rng.random() < 0.5 else tuple(
            float(v) for v in rng.integers(1, 4, size=2))
    else:
        cfg["scale_factor"] = tuple(round(float(v), 2) for v in rng.uniform(0.1, 3.5, size=2))
    return cfg


def check_interpolate(cfg, rng, dtype):
    x = rng.standard_normal((cfg["N"], cfg["C"], cfg["H"], cfg["W"])).astype(dtype)
    settings = {k: cfg[k] for k in ("size", "scale_factor", "mode", "align_corners")}
    cfg["torch_forward"] = lambda: TF.interpolate(t(x), **settings)
    y = F.interpolate(x, **settings)
    xt = t(x)
    yt = TF.interpolate(xt, **settings)
    if cfg["mode"].startswith("nearest") and y.tobytes() != yt.detach().numpy().tobytes():
        return [np.inf]   # a copy: the same inputs picked give the same bits
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    cfg["out"] = y.shape[2:]
    if cfg["mode"] == "bicubic" and y.shape == x.shape:   # a copy, as PyTorch's backward (test_upsample.py)
        yt = torch.tensor(x)
    return [rel_err(y, yt), rel_err(F.interpolate_backward(dy, x.shape, **settings), xt.grad)]


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 19), (np.float32, SWEEP_F32, 20)])
def test_interpolate_sweep(dtype, count, seed):
    configs = run_sweep(draw_interpolate, check_interpolate, count, dtype, seed)
    factors = lambda c: as_pair(c["scale_factor"]) if c["scale_factor"] is not None else ()   # noqa: E731
    features = {
        "bilinear, align_corners": lambda c: c["mode"] == "bilinear" and c["align_corners"] is True,
        "bilinear, no align_corners": lambda c: c["mode"] == "bilinear" and not c["align_corners"],
        "bicubic, align_corners": lambda c: c["mode"] == "bicubic" and c["align_corners"],
        "bicubic, no align_corners": lambda c: c["mode"] == "bicubic" and not c["align_corners"],
        "nearest": lambda c: c["mode"] == "nearest",
        "nearest-exact": lambda c: c["mode"] == "nearest-exact",
        "area": lambda c: c["mode"] == "area",
        "non-integer factor": lambda c: any(f != int(f) for f in factors(c)),
        "downsampling": lambda c: c["out"][0] < c["H"] or c["out"][1] < c["W"],
        "out == in or 2*in from another factor": lambda c: any(
            o in (s, 2 * s) and f not in (1.0, 2.0) for o, s, f in zip(c["out"], (c["H"], c["W"]), factors(c))),
    }
    missing = [name for name, f in features.items() if not covered(configs, f)]
    assert not missing, f"sweep never covered: {missing}"


# --- element-wise, linear, losses ---------------------------------------------------------------

ACTIVATIONS = {
    "relu": (TF.relu, lambda rng: ()),
    "leaky_relu": (TF.leaky_relu, lambda rng: (float(rng.uniform(0.0, 0.5)),)),
    "sigmoid": (torch.sigmoid, lambda rng: ()),
    "tanh": (torch.tanh, lambda rng: ()),
    "silu": (TF.silu, lambda rng: ()),
    "gelu": (TF.gelu, lambda rng: ()),
    "gelu_tanh": (lambda x: TF.gelu(x, approximate="tanh"), lambda rng: ()),
}


def ours_of(name):
    """Our op of an ACTIVATIONS name and its options (gelu_tanh: gelu's tanh form)."""
    return ("gelu", {"approximate": "tanh"}) if name == "gelu_tanh" else (name, {})


def draw_elementwise(rng):
    rank = int(rng.integers(1, 5))
    return dict(shape=tuple(int(v) for v in rng.integers(1, 5, size=rank)), scale=float(rng.choice([1, 5, 30])))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 11), (np.float32, SWEEP_F32, 12)])
def test_activation_sweep(name, dtype, count, seed):
    torch_fn, draw_args = ACTIVATIONS[name]

    def check(cfg, rng, dtype):
        args = draw_args(rng)
        x = (rng.standard_normal(cfg["shape"]) * cfg["scale"]).astype(dtype)
        cfg["torch_forward"] = lambda: None
        xt = t(x)
        yt = torch_fn(xt, *args)
        dy = rng.standard_normal(x.shape).astype(dtype)
        yt.backward(torch.tensor(dy))
        op, options = ours_of(name)
        y = getattr(F, op)(x, *args, **options)
        dx = getattr(F, op + "_backward")(dy, x, *args, **options)
        # dx relative to dy's scale: PyTorch's 1 - tanh(x)^2 and s(1 - s) lose all relative
        # precision where the activation saturates; ours are accurate there. So does PyTorch's gelu, 1 + erf
        # or 1 + tanh cancelling to 0 for very negative x: its y relative to x's scale
        y_scale = float(np.abs(x).max()) if op == "gelu" else None
        return [rel_err(y, yt, scale=y_scale), rel_err(dx, xt.grad, scale=float(np.abs(dy).max()))]

    run_sweep(draw_elementwise, check, count, dtype, seed)


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh"])
def test_smooth_activations_at_infinities_nan_and_overflow(name, dtype, backend):
    """silu and gelu where PyTorch's formulas meet inf, NaN, overflow and underflow: NaN where x is
    NaN, NaN from silu(-inf), gelu(-inf) and every gradient at +-inf (PyTorch's inf * 0), inf from
    f(+inf), and PyTorch's limits at large finite x. Against PyTorch in float64 (then rounded to the
    dtype): its float32 kernels return NaN for gelu(+inf) and for the tanh form's gradient where x^2
    overflows (|x| > 1.8e19), where its float64 ones and ours give inf and the limits 0 and 1."""
    big = 6e4 if dtype == np.float16 else 1e30
    values = [-np.inf, -big, -800.0, -100.0, -30.0, -10.0, -1.0, -0.0, 0.0, 1.0, 10.0, 30.0, 100.0, 800.0, big,
              np.inf, np.nan]
    x = np.array(values, dtype)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    torch_fn, _ = ACTIVATIONS[name]
    yt = torch_fn(xt)
    yt.backward(torch.ones_like(xt))
    op, options = ours_of(name)
    y = getattr(F, op)(x, **options, backend=backend)
    dx = getattr(F, op + "_backward")(np.ones_like(x), x, **options, backend=backend)
    rtol = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}[dtype]
    for what, ours, theirs in (("forward", y, yt), ("backward", dx, xt.grad)):
        with np.errstate(over="ignore"):
            expected = theirs.detach().numpy().astype(dtype)
        np.testing.assert_allclose(ours, expected, rtol=rtol, atol=rtol, err_msg=f"{name} {what} at x={values}")


SOFTMAXES = {"softmax": TF.softmax, "log_softmax": TF.log_softmax}


def draw_softmax(rng):
    rank = int(rng.integers(0, 5))
    dims = max(rank, 1)   # a 0-d input takes dim 0 or -1
    return dict(shape=tuple(int(v) for v in rng.integers(1, 6, size=rank)), dim=int(rng.integers(-dims, dims)),
                scale=float(rng.choice([1, 5, 30])))


@pytest.mark.parametrize("name", sorted(SOFTMAXES))
@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 13), (np.float32, SWEEP_F32, 14)])
def test_softmax_sweep(name, dtype, count, seed):
    """Every rank from 0 to 4 and every dim, negative ones too; the backward pass from our output y."""
    def check(cfg, rng, dtype):
        x = np.asarray(rng.standard_normal(cfg["shape"]) * cfg["scale"], dtype=dtype)   # asarray: 0-d too
        dy = np.asarray(rng.standard_normal(cfg["shape"]), dtype=dtype)
        cfg["torch_forward"] = lambda: None
        xt = t(x)
        yt = SOFTMAXES[name](xt, cfg["dim"])
        yt.backward(torch.tensor(dy))
        y = getattr(F, name)(x, cfg["dim"])
        dx = getattr(F, name + "_backward")(dy, y, cfg["dim"])
        return [rel_err(y, yt), rel_err(dx, xt.grad, scale=float(np.abs(dy).max()))]

    accepted = run_sweep(draw_softmax, check, count, dtype, seed)
    assert {len(cfg["shape"]) for cfg in accepted} == {0, 1, 2, 3, 4}
    assert min(cfg["dim"] for cfg in accepted) < 0 <= max(cfg["dim"] for cfg in accepted)


def test_activation_at_zero():
    """PyTorch's convention at the kink: relu and leaky_relu take the x <= 0 branch at 0."""
    x = np.array([0.0, -0.0, 1.0, -1.0])
    dy = np.full(4, 2.0)
    np.testing.assert_array_equal(F.relu_backward(dy, x), [0, 0, 2, 0])
    np.testing.assert_array_equal(F.leaky_relu_backward(dy, x, 0.5), [1, 1, 2, 1])


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_relu_keeps_a_negative_zero_as_torch_does(backend, dtype):
    """torch.relu returns x where x is not below 0: -0.0 stays -0.0 and NaN stays NaN (a max with
    0 returned +0.0)."""
    x = np.array([-0.0, 0.0, np.nan, -1.5, 2.0, -np.inf], dtype)
    expected = torch.relu(torch.tensor(x)).numpy()
    y = F.relu(x, backend=backend)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_add_relu_is_torchs_relu_of_the_sum(backend, dtype):
    """F.add_relu(a, b) (nn.Residual with its ReLU) is torch.relu(a + b) to the bit, signed zeros,
    NaN and overflow included."""
    rng = np.random.default_rng(31)
    big = np.finfo(dtype).max
    a = np.concatenate([[-0.0, 0.0, np.nan, big, -np.inf], rng.standard_normal(300)]).astype(dtype)
    b = np.concatenate([[-0.0, -0.0, 1.0, big, 2.0], rng.standard_normal(300)]).astype(dtype)
    expected = torch.relu(torch.tensor(a) + torch.tensor(b)).numpy()
    with np.errstate(over="ignore"):
        y = F.add_relu(a, b, backend=backend)
    np.testing.assert_array_equal(y.view(f"u{y.itemsize}"), expected.view(f"u{y.itemsize}"))


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_relu_backward_of_sum_is_torchs_gradient_of_the_summed_gradient(backend, dtype):
    """F.relu_backward_of_sum(dy_a, dy_b, x) (a residual ReLU's gradient where the Residual after
    it hands its input gradient on as two summands) is torch's gradient of relu at x for the
    upstream gradient dy_a + dy_b, to the bit: the sum rounded once, masked where x <= 0 (also an
    infinite or NaN sum), passed where x is NaN."""
    rng = np.random.default_rng(32)
    big = np.finfo(dtype).max
    dy_a = np.concatenate([[np.inf, 1.0, big, np.nan, 0.5], rng.standard_normal(300)]).astype(dtype)
    dy_b = np.concatenate([[1.0, 2.0, big, 1.0, 0.25], rng.standard_normal(300)]).astype(dtype)
    x = np.concatenate([[-1.0, np.nan, 2.0, 0.0, 1.0], rng.standard_normal(300)]).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dy_a) + torch.tensor(dy_b))
    expected = xt.grad.numpy()
    with np.errstate(over="ignore"):
        dx = F.relu_backward_of_sum(dy_a, dy_b, x, backend=backend)
    np.testing.assert_array_equal(dx.view(f"u{dx.itemsize}"), expected.view(f"u{dx.itemsize}"))


def test_relu_backward_of_non_finite_dy_matches_torch():
    """An infinite or NaN dy where x <= 0 gives 0 (the gradient is masked, not multiplied by 0)."""
    x = np.array([-1.0, 0.0, 2.0, -3.0, 1.0, np.nan])
    dy = np.array([np.inf, np.nan, np.inf, -np.inf, 0.5, 2.0])
    xt = t(x)
    torch.relu(xt).backward(torch.tensor(dy))
    np.testing.assert_array_equal(F.relu_backward(dy, x), xt.grad.numpy())
    np.testing.assert_array_equal(F.relu_backward(dy, x), [0, 0, np.inf, 0, 0.5, 2.0])


def draw_linear(rng):
    return dict(N=int(rng.integers(1, 6)), I=int(rng.integers(1, 9)), O=int(rng.integers(1, 9)),
                bias=bool(rng.random() < 0.7))


def check_linear(cfg, rng, dtype):
    x = rng.standard_normal((cfg["N"], cfg["I"])).astype(dtype)
    w = rng.standard_normal((cfg["O"], cfg["I"])).astype(dtype)
    b = rng.standard_normal(cfg["O"]).astype(dtype) if cfg["bias"] else None
    cfg["torch_forward"] = lambda: None
    xt, wt, bt = t(x), t(w), t(b)
    yt = TF.linear(xt, wt, bt)
    dy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dw, db = F.linear_backward(dy, x, w, bias=cfg["bias"])
    errors = [rel_err(F.linear(x, w, b), yt), rel_err(dx, xt.grad), rel_err(dw, wt.grad)]
    if b is not None:
        errors.append(rel_err(db, bt.grad))
    else:
        assert db is None
    return errors


@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 13), (np.float32, SWEEP_F32, 14)])
def test_linear_sweep(dtype, count, seed):
    run_sweep(draw_linear, check_linear, count, dtype, seed)


def draw_loss(rng):
    return dict(N=int(rng.integers(1, 7)), classes=int(rng.integers(1, 8)), scale=float(rng.choice([1, 10, 1000])))


def loss_errors(ours, theirs, pred, target, torch_target):
    pt = t(pred)
    loss_t = theirs(pt, torch_target)
    loss_t.backward()
    loss, grad = ours(pred, target)
    assert isinstance(loss, float) and grad.dtype == pred.dtype
    return [abs(loss - loss_t.item()) / max(abs(loss_t.item()), 1e-30), rel_err(grad, pt.grad)]


def check_cross_entropy(cfg, rng, dtype):
    logits = (rng.standard_normal((cfg["N"], cfg["classes"])) * cfg["scale"]).astype(dtype)
    labels = rng.integers(0, cfg["classes"], size=cfg["N"])
    cfg["torch_forward"] = lambda: None
    return loss_errors(F.cross_entropy, TF.cross_entropy, logits, labels, torch.tensor(labels))


def check_mse(cfg, rng, dtype):
    shape = (cfg["N"], cfg["classes"])
    pred = (rng.standard_normal(shape) * cfg["scale"]).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    cfg["torch_forward"] = lambda: None
    return loss_errors(F.mse_loss, TF.mse_loss, pred, target, torch.tensor(target))


@pytest.mark.parametrize("check", [check_cross_entropy, check_mse], ids=["cross_entropy", "mse_loss"])
@pytest.mark.parametrize("dtype, count, seed", [(np.float64, SWEEP, 15), (np.float32, SWEEP_F32, 16)])
def test_loss_sweep(check, dtype, count, seed):
    run_sweep(draw_loss, check, count, dtype, seed)


@pytest.mark.parametrize("groups, dilation, output_padding", [(1, 2, 1), (2, 3, (2, 1)), (1, (2, 3), (1, 2))])
def test_pointwise_transposed_conv_with_output_padding(groups, dilation, output_padding):
    """A 1x1 transposed conv of stride 1 takes output_padding below its dilation: its output is
    larger than its input, so it is no plain matrix product (it once took that path and failed to
    reshape). Forward and both gradients against PyTorch, float64."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 4, 3, 5))
    w = rng.standard_normal((4, 6 // groups, 1, 1))
    b = rng.standard_normal(6)
    geo = dict(stride=1, dilation=dilation, output_padding=output_padding, groups=groups)
    y = F.conv_transpose2d(x, w, b, **geo)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = TF.conv_transpose2d(xt, wt, torch.tensor(b), **geo)
    assert y.shape == tuple(yt.shape) and rel_err(y, yt.detach().numpy()) <= 1e-12
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx, dw = F.conv_transpose2d_backward(dy, x, w, bias=False, **geo)[:2]
    assert rel_err(dx, xt.grad.numpy()) <= 1e-12 and rel_err(dw, wt.grad.numpy()) <= 1e-12
