"""nn.init's in-place initialisers against PyTorch 2.13's torch.nn.init.

Deterministic results (calculate_gain, the fans, constant_/ones_/zeros_, eye_, dirac_) are compared
exactly with torch's. Random ones are compared with what torch's own draws imply for the same shape
and arguments: at least 10^6 samples each, so a standard deviation is known to 0.1% and the largest
|value| of a uniform to 0.01% of its bound, where a wrong gain, fan or formula is off by 5% or more.
trunc_normal_ is checked against the truncated normal's exact CDF in each of its sampler's regimes.
Then in-place semantics (the same object, dtype and strides, a Parameter's .data), seeding, the
CuPy path on tests/cupy_sim, and refusals that leave the array and the generator as they were."""
from __future__ import annotations

import itertools
import math
import sys
import warnings

import numpy as np
import pytest

from cnn_gpu import nn
from cnn_gpu.nn import init

SAMPLES = 10**6
NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                  "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


def random_shape(rng, dims=None):
    dims = int(rng.integers(2, 6)) if dims is None else dims
    head = [int(rng.integers(1, 200)), int(rng.integers(1, 200))]
    return tuple(head + [int(rng.integers(1, 6)) for _ in range(dims - 2)])


def ours_many(fill, shape, dtype=np.float64, samples=SAMPLES, rng=0):
    """fill(array, generator) repeated on an array of `shape` until `samples` values are drawn."""
    g = np.random.default_rng(rng)
    out, a = [], np.empty(shape, dtype)
    for _ in range(-(-samples // a.size)):
        assert fill(a, g) is a
        out.append(a.ravel().astype(np.float64))
    return np.concatenate(out)


def torch_many(torch, fill, shape, samples=SAMPLES, seed=0):
    torch.manual_seed(seed)
    t = torch.empty(shape, dtype=torch.float64)
    out = []
    for _ in range(-(-samples // t.numel())):
        fill(t)
        out.append(t.flatten().numpy().copy())
    return np.concatenate(out)


# --- deterministic: exact against torch ---------------------------------------------------------

def test_names_cover_torch(torch):
    ours = {name for name in dir(init) if name.endswith("_") and not name.startswith("_")}
    theirs = {name for name in torch.nn.init.__all__ if name.endswith("_")} - {"sparse_"}
    assert theirs <= ours, theirs - ours


@pytest.mark.parametrize("param", [None, 0, 0.2, 1, -0.5, 3, 1e-3])
def test_calculate_gain_is_torchs(torch, param):
    for name in NONLINEARITIES:
        assert init.calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param), (name, param)
    for bad in ("gelu", "ReLU", "Tanh", ""):
        with pytest.raises(ValueError, match="nonlinearity"):
            init.calculate_gain(bad)
        with pytest.raises(ValueError):
            torch.nn.init.calculate_gain(bad)
    with pytest.raises(ValueError, match="slope"):
        init.calculate_gain("leaky_relu", True)


def test_fans_are_torchs(torch):
    rng = np.random.default_rng(1)
    for _ in range(200):
        shape = random_shape(rng, int(rng.integers(2, 6)))
        expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
        assert (init.fan_in(shape), init.fan_out(shape)) == expected, shape


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_constant_ones_zeros_are_torchs(torch, dtype):
    rng = np.random.default_rng(2)
    tdtype = getattr(torch, np.dtype(dtype).name)
    for val in [0.1, -3.7, 1 / 3, 65504.0, 1e-8, math.inf, -0.0, 7]:
        a = np.full(random_shape(rng, 3), np.nan, dtype)
        t = torch.empty(a.shape, dtype=tdtype)
        assert init.constant_(a, val) is a
        torch.nn.init.constant_(t, val)
        np.testing.assert_array_equal(a.view(np.uint8), t.numpy().view(np.uint8), err_msg=str(val))
    for ours, theirs in [(init.ones_, torch.nn.init.ones_), (init.zeros_, torch.nn.init.zeros_)]:
        a = np.full((5, 7), np.nan, dtype)
        t = torch.empty(a.shape, dtype=tdtype)
        assert ours(a) is a
        np.testing.assert_array_equal(a, theirs(t).numpy())


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_eye_and_dirac_are_torchs(torch, dtype):
    rng = np.random.default_rng(3)
    for _ in range(30):
        a = np.full((int(rng.integers(0, 9)), int(rng.integers(0, 9))), 5, dtype)
        assert init.eye_(a) is a
        np.testing.assert_array_equal(a, torch.nn.init.eye_(torch.empty(a.shape)).numpy())
    for _ in range(60):
        groups = int(rng.integers(1, 4))
        shape = (groups * int(rng.integers(1, 6)), int(rng.integers(1, 6))) + tuple(
            int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 4))))
        a = np.full(shape, 5, dtype)
        assert init.dirac_(a, groups) is a
        np.testing.assert_array_equal(a, torch.nn.init.dirac_(torch.empty(shape), groups).numpy(), err_msg=str(shape))


# --- random: statistics against torch's draws ----------------------------------------------------

def uniform_cases(rng):
    """(name, our fill, torch's fill) for random shapes and arguments."""
    for _ in range(3):
        shape = random_shape(rng)
        gain = float(rng.uniform(0.2, 3))
        yield (f"xavier_uniform_{shape} gain={gain}", shape, lambda a, g, gain=gain: init.xavier_uniform_(a, gain, rng=g),
               lambda t, gain=gain: torch_init().xavier_uniform_(t, gain))
    for mode, nonlinearity in itertools.product(["fan_in", "fan_out"], ["leaky_relu", "relu", "tanh", "selu", "linear"]):
        shape = random_shape(rng)
        a = float(rng.uniform(0, 3)) if nonlinearity == "leaky_relu" else 0
        yield (f"kaiming_uniform_{shape} a={a} {mode} {nonlinearity}", shape,
               lambda x, g, a=a, m=mode, n=nonlinearity: init.kaiming_uniform_(x, a, m, n, rng=g),
               lambda t, a=a, m=mode, n=nonlinearity: torch_init().kaiming_uniform_(t, a, m, n))
    for _ in range(3):
        lo = float(rng.uniform(-5, 5))
        hi = lo + float(rng.uniform(0.01, 5))
        yield (f"uniform_({lo}, {hi})", (1000,), lambda x, g, lo=lo, hi=hi: init.uniform_(x, lo, hi, rng=g),
               lambda t, lo=lo, hi=hi: torch_init().uniform_(t, lo, hi))


def torch_init():
    return sys.modules["torch"].nn.init


def test_uniform_bounds_are_torchs(torch):
    """The largest and smallest of 10^6 draws lie within 0.01% (relative to the width) of the
    bounds for both (a miss has probability e^-100), the standard deviations within 1%."""
    for name, shape, ours, theirs in uniform_cases(np.random.default_rng(4)):
        x, t = ours_many(ours, shape), torch_many(torch, theirs, shape)
        width = t.max() - t.min()
        assert abs(x.max() - t.max()) < 2e-4 * width and abs(x.min() - t.min()) < 2e-4 * width, name
        assert x.std() == pytest.approx(t.std(), rel=0.01), name


def normal_cases(rng):
    for _ in range(3):
        shape = random_shape(rng)
        gain = float(rng.uniform(0.2, 3))
        yield (f"xavier_normal_{shape} gain={gain}", shape, lambda a, g, gain=gain: init.xavier_normal_(a, gain, rng=g),
               lambda t, gain=gain: torch_init().xavier_normal_(t, gain))
    for mode, nonlinearity in itertools.product(["fan_in", "fan_out"], ["leaky_relu", "relu", "tanh", "selu", "sigmoid"]):
        shape = random_shape(rng)
        a = float(rng.uniform(0, 3)) if nonlinearity == "leaky_relu" else 0
        yield (f"kaiming_normal_{shape} a={a} {mode} {nonlinearity}", shape,
               lambda x, g, a=a, m=mode, n=nonlinearity: init.kaiming_normal_(x, a, m, n, rng=g),
               lambda t, a=a, m=mode, n=nonlinearity: torch_init().kaiming_normal_(t, a, m, n))
    for _ in range(3):
        mean, std = float(rng.uniform(-3, 3)), float(rng.uniform(0.01, 3))
        yield (f"normal_({mean}, {std})", (1000,), lambda x, g, m=mean, s=std: init.normal_(x, m, s, rng=g),
               lambda t, m=mean, s=std: torch_init().normal_(t, m, s))


def test_normal_std_is_torchs(torch):
    """Standard deviations within 1% of torch's (each known to 0.07%: a 10-sigma margin), means
    within 5 standard errors."""
    for name, shape, ours, theirs in normal_cases(np.random.default_rng(5)):
        x, t = ours_many(ours, shape), torch_many(torch, theirs, shape)
        assert x.std() == pytest.approx(t.std(), rel=0.01), name
        assert abs(x.mean() - t.mean()) < 5 * t.std() * math.sqrt(2 / x.size), name


def test_kaiming_normal_resnet_call_std():
    """ResNet's call: std = sqrt(2 / fan_out) within 2% for 10^6 samples (known to 0.07%)."""
    w = np.empty((256, 128, 3, 3), np.float32)   # 294,912 values; 4 draws
    x = ours_many(lambda a, g: nn.init.kaiming_normal_(a, mode="fan_out", nonlinearity="relu", rng=g), w.shape,
                  np.float32)
    assert x.std() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)


def test_kaiming_uniform_with_sqrt5_is_the_layer_default():
    for shape in [(32, 16, 3, 3), (100, 300), (12, 6, 3, 5)]:
        w = init.kaiming_uniform_(np.empty(shape, np.float32), a=math.sqrt(5), rng=8)
        np.testing.assert_allclose(w, init.kaiming_uniform(shape, rng=8), rtol=1e-6, atol=0)


# --- trunc_normal_ -------------------------------------------------------------------------------

def truncated_cdf(x, mean, std, a, b):
    """The exact CDF of N(mean, std^2) restricted to [a, b], in the tail's own terms where the
    interval is far from the mean (erfc keeps its digits)."""
    lo, hi, z = (a - mean) / std, (b - mean) / std, (np.asarray(x) - mean) / std
    erfc = np.vectorize(math.erfc)
    if lo >= 0:   # right of the mean: upper tails Q
        q = lambda v: 0.5 * erfc(v / math.sqrt(2))   # noqa: E731
        return (q(lo) - q(z)) / (q(lo) - q(hi))
    phi = lambda v: 0.5 * erfc(-v / math.sqrt(2))    # noqa: E731
    return (phi(z) - phi(lo)) / (phi(hi) - phi(lo))


# one case per regime of the sampler: the normal itself, uniform at the mode, uniform in a tail,
# exponential tails (right, mirrored left, one-sided), and the non-unit std / shifted mean that
# tell absolute cut-offs from ones in units of std
TRUNC_CASES = [(0, 1, -2, 2), (0, 0.02, -2, 2), (1, 2, 0, 3), (0, 1, -0.3, 0.2), (0, 1, 0.5, 0.7),
               (0, 1, 1, 4), (0, 1, 6, 9), (2, 0.5, -3, 0.5), (0, 1, 3, math.inf), (-1, 3, -math.inf, -8)]


@pytest.mark.parametrize("mean, std, a, b", TRUNC_CASES)
def test_trunc_normal_distribution(mean, std, a, b):
    """Within [a, b] always; the empirical CDF of 10^6 draws within 0.004 of the exact one at 200
    points (DKW: a miss has probability below 2e-13)."""
    x = init.trunc_normal_(np.empty(SAMPLES), mean, std, a, b, rng=11)
    assert a <= x.min() and x.max() <= b
    lo, hi = max(a, mean - 8 * std), min(b, mean + 8 * std)
    grid = np.linspace(x.min(), x.max(), 200) if lo >= hi else np.linspace(lo, hi, 200)
    ecdf = np.searchsorted(np.sort(x), grid, side="right") / x.size
    assert np.max(np.abs(ecdf - truncated_cdf(grid, mean, std, a, b))) < 0.004


@pytest.mark.parametrize("mean, std, a, b", [c for c in TRUNC_CASES if math.isfinite(c[2] - c[3]) and c[2] < 3])
def test_trunc_normal_is_torchs(torch, mean, std, a, b):
    """torch's draws agree with the same exact CDF (so a and b mean what they mean in torch), and
    ours with torch's in mean and standard deviation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's "more than 2 std" warning
        t = torch_many(torch, lambda t: torch.nn.init.trunc_normal_(t, mean, std, a, b), (SAMPLES,))
    grid = np.linspace(a, b, 200)
    ecdf = np.searchsorted(np.sort(t), grid, side="right") / t.size
    assert np.max(np.abs(ecdf - truncated_cdf(grid, mean, std, a, b))) < 0.004
    x = init.trunc_normal_(np.empty(SAMPLES), mean, std, a, b, rng=12)
    assert abs(x.mean() - t.mean()) < 6 * t.std() / math.sqrt(SAMPLES)
    assert x.std() == pytest.approx(t.std(), rel=0.01)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_trunc_normal_never_rounds_outside(dtype):
    """Bounds no float16/float32 holds: samples near them round to the nearest value inside."""
    for a, b in [(-0.1, 0.1), (0.3, 0.3003), (1e-3, 1.7e-3)]:
        x = init.trunc_normal_(np.empty(200_000, dtype), (a + b) / 2, (b - a), a, b, rng=3)
        assert x.dtype == dtype and a <= x.astype(np.float64).min() and x.astype(np.float64).max() <= b, (a, b)
    with pytest.raises(ValueError, match="no float16 value"):
        init.trunc_normal_(np.empty(3, np.float16), 0, 1, 0.1, 0.10001)


# --- in place, seeded, on CuPy ---------------------------------------------------------------------

INPLACE = {
    "uniform_": lambda a: init.uniform_(a, -1, 2, rng=0),
    "normal_": lambda a: init.normal_(a, 1, 2, rng=0),
    "trunc_normal_": lambda a: init.trunc_normal_(a, 0, 1, -1, 1, rng=0),
    "constant_": lambda a: init.constant_(a, 0.25),
    "ones_": init.ones_,
    "zeros_": init.zeros_,
    "xavier_uniform_": lambda a: init.xavier_uniform_(a, rng=0),
    "xavier_normal_": lambda a: init.xavier_normal_(a, rng=0),
    "kaiming_uniform_": lambda a: init.kaiming_uniform_(a, rng=0),
    "kaiming_normal_": lambda a: init.kaiming_normal_(a, mode="fan_out", nonlinearity="relu", rng=0),
    "orthogonal_": lambda a: init.orthogonal_(a, rng=0),
    "eye_": init.eye_,
    "dirac_": init.dirac_,
}
SHAPE = {"eye_": (8, 6)}   # every other one fills an (8, 6, 3, 3) weight


@pytest.mark.parametrize("name", sorted(INPLACE))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_in_place(name, dtype):
    """The same array, dtype and layout, every element written; a Parameter's .data written and the
    Parameter returned; a strided view written through, the rest of its base untouched."""
    fill, shape = INPLACE[name], SHAPE.get(name, (8, 6, 3, 3))
    base = np.full(shape, np.nan, dtype)
    assert fill(base) is base
    assert base.dtype == dtype and not np.isnan(base).any()
    reference = base.copy()

    p = nn.Parameter(np.full(shape, np.nan, dtype))
    data = p.data
    assert fill(p) is p
    assert p.data is data and p.data.dtype == dtype
    np.testing.assert_array_equal(p.data, reference)   # the same seed, the same values

    fortran = np.asfortranarray(np.full(shape, np.nan, dtype))
    fill(fortran)
    assert fortran.flags.f_contiguous
    np.testing.assert_array_equal(fortran, reference)

    wide = np.full((shape[0], 2 * shape[1]) + shape[2:], -7, dtype)
    fill(wide[:, ::2])
    np.testing.assert_array_equal(wide[:, ::2], reference)
    assert (wide[:, 1::2] == -7).all()


def test_seeding():
    w = lambda: np.empty((64, 32, 3, 3), np.float32)   # noqa: E731
    init.manual_seed(21)
    first, second = init.kaiming_normal_(w()), init.kaiming_normal_(w())
    init.manual_seed(21)
    np.testing.assert_array_equal(init.kaiming_normal_(w()), first)
    np.testing.assert_array_equal(init.kaiming_normal_(w()), second)
    assert not np.array_equal(first, second)
    for fill in (init.uniform_, init.normal_, init.trunc_normal_, init.xavier_normal_, init.orthogonal_):
        a = fill(w(), rng=5)
        np.testing.assert_array_equal(fill(w(), rng=np.random.default_rng(5)), a)
        assert not np.array_equal(fill(w(), rng=6), a)


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_cupy_arrays_get_the_host_values(cupy, name):
    """A CuPy array is written in place with the values a NumPy array gets for the same seed (drawn
    on the host, copied to its device)."""
    shape = SHAPE.get(name, (8, 6, 3, 3))
    host = np.full(shape, np.nan, np.float32)
    INPLACE[name](host)
    device = cupy.full(shape, np.nan, dtype=cupy.float32)
    p = nn.Parameter(device)
    assert INPLACE[name](p) is p
    assert p.data is device and type(device).__module__ == "cupy"
    np.testing.assert_array_equal(device.get(), host)


# --- refusals ------------------------------------------------------------------------------------

def refusals(torch):
    """(what, ours on a float64 (6, 4, 3) array, torch's on a tensor or None, exception, match)."""
    T = torch.nn.init
    return [
        ("unknown mode", lambda a: init.kaiming_normal_(a, mode="fan_avg"), lambda t: T.kaiming_normal_(t, mode="fan_avg"),
         ValueError, "mode"),
        ("unknown nonlinearity", lambda a: init.kaiming_uniform_(a, nonlinearity="gelu"),
         lambda t: T.kaiming_uniform_(t, nonlinearity="gelu"), ValueError, "nonlinearity"),
        ("bad slope", lambda a: init.kaiming_normal_(a, a="x"), lambda t: T.kaiming_normal_(t, a="x"), ValueError,
         "slope"),
        ("1-D kaiming", lambda a: init.kaiming_normal_(a[0, 0]), lambda t: T.kaiming_normal_(t[0, 0]), ValueError,
         "2 dimensions"),
        ("1-D xavier", lambda a: init.xavier_uniform_(a[0, 0]), lambda t: T.xavier_uniform_(t[0, 0]), ValueError,
         "2 dimensions"),
        ("1-D orthogonal", lambda a: init.orthogonal_(a[0, 0]), lambda t: T.orthogonal_(t[0, 0]), ValueError,
         "2 dimensions"),
        ("std < 0", lambda a: init.normal_(a, 0, -1), lambda t: T.normal_(t, 0, -1), ValueError, "std"),
        ("std NaN", lambda a: init.normal_(a, 0, math.nan), lambda t: T.normal_(t, 0, math.nan), ValueError, "std"),
        ("trunc std 0", lambda a: init.trunc_normal_(a, 0, 0), lambda t: T.trunc_normal_(t, 0, 0), ValueError, "std"),
        ("trunc std < 0", lambda a: init.trunc_normal_(a, 0, -1), None, ValueError, "std"),
        ("trunc a > b", lambda a: init.trunc_normal_(a, 0, 1, 2, -2), lambda t: T.trunc_normal_(t, 0, 1, 2, -2),
         ValueError, "a <= b"),
        ("uniform a > b", lambda a: init.uniform_(a, 1, 0), lambda t: T.uniform_(t, 1, 0), ValueError, "bound"),
        ("uniform inf", lambda a: init.uniform_(a, 0, math.inf), lambda t: T.uniform_(t, 0, math.inf), ValueError,
         "finite"),
        ("xavier gain < 0", lambda a: init.xavier_normal_(a, -1), lambda t: T.xavier_normal_(t, -1), ValueError,
         "gain"),
        ("eye_ 3-D", init.eye_, T.eye_, ValueError, "2-D"),
        ("dirac_ groups", lambda a: init.dirac_(a, 4), lambda t: T.dirac_(t, 4), ValueError, "divisible"),
        ("dirac_ groups 0", lambda a: init.dirac_(a, 0), lambda t: T.dirac_(t, 0), ValueError, "groups"),
        ("bad rng", lambda a: init.normal_(a, rng=1.5), None, TypeError, "rng"),
        ("bad rng kaiming", lambda a: init.kaiming_uniform_(a, rng="0"), None, TypeError, "rng"),
    ]


def test_refusals_write_nothing(torch):
    """Refused before anything is drawn or written: the array and the generator as they were; and
    PyTorch refuses the same calls (with its own exception types)."""
    for what, ours, theirs, kind, match in refusals(torch):
        a = np.full((6, 4, 3), 7.0)
        state = init.generator().bit_generator.state
        with pytest.raises(kind, match=match):
            ours(a)
        assert (a == 7).all() and init.generator().bit_generator.state == state, what
        if theirs is not None:
            with pytest.raises(Exception):
                theirs(torch.empty(6, 4, 3))


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_int_read_only_and_foreign_arrays_are_refused(torch, name):
    fill, shape = INPLACE[name], SHAPE.get(name, (8, 6, 3, 3))
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        fill(np.zeros(shape, np.int32))
    frozen = np.full(shape, 7.0)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=f"{name}: the array is read-only"):   # not NumPy's own refusal
        fill(frozen)
    assert (frozen == 7).all()
    with pytest.raises(TypeError, match="NumPy or CuPy"):
        fill(torch.zeros(shape))
    with pytest.raises(TypeError, match="NumPy or CuPy"):
        fill([[1.0, 2.0]])


def test_constant_overflow_refused_as_torch():
    a = np.full(3, 7, np.float16)
    with pytest.raises(ValueError, match="overflows float16"):
        init.constant_(a, 1e6)
    assert (a == 7).all()
    init.constant_(a, -math.inf)
    assert (a == -np.inf).all()


def test_zero_element_kaiming_warns_as_torch():
    a = np.empty((0, 3))
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_normal_(a) is a
    assert init.xavier_uniform_(a) is a and init.orthogonal_(a) is a


def test_orthogonal():
    """Orthonormal rows (or columns, where fewer) times gain, for every flattening; Haar-distributed:
    the mean of Q's diagonal is 0 (QR's signs left as LAPACK gives them make it about -0.5)."""
    rng = np.random.default_rng(9)
    for _ in range(30):
        shape = random_shape(rng, int(rng.integers(2, 5)))
        gain = float(rng.uniform(0.5, 2))
        q = init.orthogonal_(np.empty(shape), gain, rng=rng).reshape(shape[0], -1)
        small = q @ q.T if q.shape[0] <= q.shape[1] else q.T @ q
        np.testing.assert_allclose(small, gain**2 * np.eye(len(small)), atol=1e-10, err_msg=str(shape))
    diagonals = [np.diagonal(init.orthogonal_(np.empty((3, 3)), rng=rng)) for _ in range(2000)]
    assert abs(np.mean(diagonals)) < 0.05   # standard error 0.01
