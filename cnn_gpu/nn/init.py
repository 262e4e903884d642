"""Initialisation: PyTorch's default for layers, and PyTorch's in-place `nn.init` functions, drawn
from a seedable NumPy generator.

Layers draw their initial weights from the module-level generator unless given their own `rng`
(a `numpy.random.Generator` or an int seed). `manual_seed(n)` resets the module-level generator,
so building the same model after the same seed gives the same weights.

The in-place initialisers take PyTorch's names, arguments and formulas (torch.nn.init):
`calculate_gain`, `uniform_`, `normal_`, `trunc_normal_`, `constant_`, `ones_`, `zeros_`, `eye_`,
`dirac_`, `xavier_uniform_`, `xavier_normal_`, `kaiming_uniform_`, `kaiming_normal_`,
`orthogonal_`. Each takes a `Parameter` (its `.data` is written) or a float16/32/64 NumPy or CuPy
array, writes it in place (the same array object, its dtype, strides and device kept) and returns
what it was given, as PyTorch returns the tensor. In place of PyTorch's `generator=` each takes a
keyword-only `rng=None` (the module-level generator, an int seed or a numpy Generator). Values are
drawn on the host in float64, rounded once to the array's dtype and copied to a CuPy array's GPU,
so a seed gives the same values on every backend. Arguments are checked before anything is drawn
or written: an unknown `mode` or `nonlinearity`, fans of a tensor under 2-D, a negative or NaN
`std`, `a > b`, an integer or read-only array are refused and leave the array and the generator as
they were.

    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.constant_(bn.weight, 1); nn.init.zeros_(bn.bias)
    nn.init.trunc_normal_(fc.weight, std=0.02, rng=0)
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ..backend import array_module, is_cupy_array
from ..functional._checks import FLOAT_DTYPES, real_number
from .module import Parameter

# A fixed start-up seed (PyTorch also starts from a fixed default seed): reproducible by default.
DEFAULT_SEED = 0

_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Reset the generator every layer draws its initial weights from (unless given `rng`)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator(rng=None) -> np.random.Generator:
    """`rng` as a Generator: the module-level one for None, a new one for an int seed."""
    if rng is None:
        return _generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _receptive_field(shape, what: str) -> int:
    if len(shape) < 2:
        raise ValueError(f"{what} needs a weight with at least 2 dimensions, got shape {tuple(shape)}")
    return int(np.prod(shape[2:], dtype=np.int64))


def fan_in(shape) -> int:
    """PyTorch's fan-in of a weight tensor: size(1) times the receptive field (for a transposed
    conv weight (in, out/groups, kH, kW) that is out/groups * kH * kW, as in PyTorch)."""
    return int(shape[1]) * _receptive_field(shape, "fan_in")


def fan_out(shape) -> int:
    """PyTorch's fan-out of a weight tensor: size(0) times the receptive field."""
    return int(shape[0]) * _receptive_field(shape, "fan_out")


def uniform(shape, bound: float, dtype, rng=None) -> np.ndarray:
    """Samples of U(-bound, bound), drawn in float64 and rounded to dtype."""
    return generator(rng).uniform(-bound, bound, size=shape).astype(dtype, copy=False)


def kaiming_uniform(shape, a: float = math.sqrt(5), dtype=np.float32, rng=None) -> np.ndarray:
    """He-uniform for a leaky ReLU of slope `a` (PyTorch's kaiming_uniform_ with fan_in mode):
    bound = sqrt(6 / ((1 + a^2) * fan_in)); a = sqrt(5), PyTorch's layer default, gives
    1/sqrt(fan_in)."""
    n = fan_in(shape)
    bound = math.sqrt(6.0 / ((1.0 + a * a) * n)) if n else 0.0
    return uniform(shape, bound, dtype, rng)


def default_bias(n: int, weight_shape, dtype=np.float32, rng=None) -> np.ndarray:
    """PyTorch's bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan-in."""
    fan = fan_in(weight_shape)
    bound = 1.0 / math.sqrt(fan) if fan else 0.0
    return uniform((n,), bound, dtype, rng)


# --- PyTorch's in-place initialisers (torch.nn.init) --------------------------------------------

_LINEAR_GAIN = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "sigmoid")
_NONLINEARITIES = _LINEAR_GAIN + ("tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """PyTorch's recommended gain for a nonlinearity (its `nn.functional` name): 1 for linear, the
    convolutions and sigmoid, 5/3 for tanh, sqrt(2) for relu, sqrt(2 / (1 + slope^2)) for leaky_relu
    (`param` the negative slope, 0.01 when None) and 3/4 for selu."""
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real):
            raise ValueError(f"calculate_gain: the negative slope of leaky_relu must be a number, got {param!r}")
        return math.sqrt(2.0 / (1.0 + float(slope) ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r} (one of {', '.join(_NONLINEARITIES)})")


def _target(tensor, who: str):
    """The array a Parameter or an array stands for, checked writable and of a float dtype."""
    array = tensor.data if isinstance(tensor, Parameter) else tensor
    on_gpu = is_cupy_array(array)
    if not (isinstance(array, np.ndarray) or on_gpu):
        raise TypeError(f"{who} takes a cnn_gpu.nn.Parameter or a NumPy or CuPy float array, got "
                        f"{type(array).__name__}")
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who} fills float16, float32 or float64 arrays, got {array.dtype}")
    if not on_gpu and not array.flags.writeable:
        raise ValueError(f"{who}: the array is read-only")
    return array


def _real(value, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: {name} must be a real number, got {value!r}")
    return float(value)


def _finite(value, name: str, who: str) -> float:
    return real_number(value, f"{who}: {name}")


def _std(value, who: str, name: str = "std") -> float:
    return real_number(value, f"{who}: {name}", minimum=0.0)


def _write(array, values):
    """values (host, array's shape) rounded to the array's dtype and written into it in place."""
    values = np.asarray(values).astype(array.dtype, copy=False)
    array[...] = array_module("cuda").asarray(values) if is_cupy_array(array) else values


def _fans(array, who: str):
    if array.ndim < 2:
        raise ValueError(f"{who}: fan_in and fan_out need a tensor with at least 2 dimensions, got shape "
                         f"{tuple(array.shape)}")
    return fan_in(array.shape), fan_out(array.shape)


def _fan(array, mode, who: str) -> int:
    low = mode.lower() if isinstance(mode, str) else None   # PyTorch takes "FAN_OUT" too
    if low not in ("fan_in", "fan_out"):
        raise ValueError(f"{who}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fans = _fans(array, who)
    return fans[0] if low == "fan_in" else fans[1]


def _uniform_bounds(array, a: float, b: float, who: str):
    if not a <= b:
        raise ValueError(f"{who}: the lower bound must not exceed the upper, got [{a}, {b}]")
    largest = float(np.finfo(array.dtype).max)
    if max(abs(a), abs(b)) > largest or not math.isfinite(b - a):
        raise ValueError(f"{who}: bounds [{a}, {b}] out of range for {array.dtype}")


def uniform_(tensor, a: float = 0.0, b: float = 1.0, *, rng=None):
    """Fill with U(a, b) in place (PyTorch's uniform_)."""
    array = _target(tensor, "uniform_")
    a, b = _finite(a, "a", "uniform_"), _finite(b, "b", "uniform_")
    _uniform_bounds(array, a, b, "uniform_")
    _write(array, generator(rng).uniform(a, b, size=array.shape))
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, *, rng=None):
    """Fill with N(mean, std^2) in place (PyTorch's normal_)."""
    array = _target(tensor, "normal_")
    mean, std = _finite(mean, "mean", "normal_"), _std(std, "normal_")
    _write(array, generator(rng).normal(mean, std, size=array.shape))
    return tensor


def _std_normal_between(g: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """n samples of the standard normal restricted to [lo, hi] (lo < inf, hi > -inf), by rejection
    from whichever proposal accepts well: the normal itself where [lo, hi] holds much of it, a
    uniform over a narrow interval, a shifted exponential over a tail (Robert 1995)."""
    if hi <= 0.0 and lo < 0.0:   # left of the mode: mirror
        return -_std_normal_between(g, -hi, -lo, n)
    out = np.empty(n)
    pending = np.arange(n)
    if lo < 0.0 < hi:
        mass = 0.5 * (math.erf(hi / math.sqrt(2.0)) - math.erf(lo / math.sqrt(2.0)))
        if mass > 0.3:   # the normal itself accepts more than 30%
            def propose(k):
                return g.standard_normal(k)

            def log_ratio(z):
                return np.zeros_like(z)
        else:            # narrow around the mode (under 0.77 wide): density ratio above 0.74
            def propose(k):
                return g.uniform(lo, hi, k)

            def log_ratio(z):
                return -0.5 * z * z
    elif math.isfinite(hi) and (hi - lo) * max(lo, 1.0) <= 1.0:   # narrow, at or right of the mode
        def propose(k):
            return g.uniform(lo, hi, k)

        def log_ratio(z):   # density over its value at lo: above exp(-1.5)
            return 0.5 * (lo * lo - z * z)
    else:   # a right tail from lo >= 0: lo + Exp(rate), accepting over 48% (with a cut at hi)
        rate = 0.5 * (lo + math.sqrt(lo * lo + 4.0))

        def propose(k):
            return lo + g.standard_exponential(k) / rate

        def log_ratio(z):
            return -0.5 * (z - rate) ** 2
    while pending.size:
        z = propose(pending.size)
        keep = (np.log(g.random(pending.size)) <= log_ratio(z)) & (z >= lo) & (z <= hi)
        out[pending[keep]] = z[keep]
        pending = pending[~keep]
    return out


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0, *, rng=None):
    """Fill in place with N(mean, std^2) restricted to [a, b] (PyTorch's trunc_normal_: a and b are
    absolute cut-offs, not in units of std; values outside are drawn again). Every value lies in
    [a, b] after rounding to the array's dtype. Tails far from the mean are sampled exactly (PyTorch
    warns there that its values may be wrong); std must be > 0 (PyTorch divides by it)."""
    who = "trunc_normal_"
    array = _target(tensor, who)
    mean, std = _finite(mean, "mean", who), _std(std, who)
    a, b = _real(a, "a", who), _real(b, "b", who)
    if std == 0:
        raise ValueError(f"{who}: std must be > 0, got 0.0")
    if not a <= b or a == math.inf or b == -math.inf:
        raise ValueError(f"{who}: needs a <= b, a < inf and b > -inf, got a={a}, b={b}")
    # the dtype's values nearest inside [a, b]: rounding never takes a sample outside
    # (compared as Python floats: NumPy would compare a float16 with a Python float in float16)
    low, high = np.array([a, b]).astype(array.dtype)
    if float(low) < a:
        low = np.nextafter(low, array.dtype.type(np.inf))
    if float(high) > b:
        high = np.nextafter(high, array.dtype.type(-np.inf))
    if not low <= high:
        raise ValueError(f"{who}: no {array.dtype} value lies in [{a}, {b}]")
    g = generator(rng)
    z = _std_normal_between(g, (a - mean) / std, (b - mean) / std, array.size)
    _write(array, np.clip((mean + std * z).astype(array.dtype), low, high).reshape(array.shape))
    return tensor


def _fill(tensor, val, who: str):
    array = _target(tensor, who)
    val = _real(val, "val", who)
    with np.errstate(over="ignore"):
        rounded = np.array(val).astype(array.dtype)
    if math.isfinite(val) and not np.isfinite(rounded):
        raise ValueError(f"{who}: {val} overflows {array.dtype}")
    array.fill(rounded.item())
    return tensor


def constant_(tensor, val: float):
    """Fill with val in place (PyTorch's constant_). A finite val that overflows the dtype (float16
    above 65504) is refused, as PyTorch does; inf and NaN are written."""
    return _fill(tensor, val, "constant_")


def ones_(tensor):
    """Fill with 1 in place (PyTorch's ones_)."""
    return _fill(tensor, 1.0, "ones_")


def zeros_(tensor):
    """Fill with 0 in place (PyTorch's zeros_)."""
    return _fill(tensor, 0.0, "zeros_")


def eye_(tensor):
    """Fill a 2-D tensor with the identity matrix in place (ones on the main diagonal of a
    rectangular one too; PyTorch's eye_)."""
    array = _target(tensor, "eye_")
    if array.ndim != 2:
        raise ValueError(f"eye_ takes a 2-D tensor, got shape {tuple(array.shape)}")
    _write(array, np.eye(*array.shape))
    return tensor


def dirac_(tensor, groups: int = 1):
    """Fill a 3-, 4- or 5-D conv weight with the Dirac delta in place (PyTorch's dirac_): within
    each of `groups` groups of output channels, output d takes input channel d at the kernel's
    centre, for d below min(out/groups, in)."""
    array = _target(tensor, "dirac_")
    if array.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_ takes a 3-, 4- or 5-D tensor, got shape {tuple(array.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"dirac_: groups must be a positive int, got {groups!r}")
    if array.shape[0] % groups:
        raise ValueError(f"dirac_: dim 0 ({array.shape[0]}) must be divisible by groups ({groups})")
    per_group = array.shape[0] // groups
    values = np.zeros(array.shape)
    centre = tuple(size // 2 for size in array.shape[2:])
    for d in range(min(per_group, array.shape[1])):
        values[(np.arange(groups) * per_group + d, d) + centre] = 1.0
    _write(array, values)
    return tensor


def _xavier_std(array, gain, who: str) -> float:
    """gain * sqrt(2 / (fan_in + fan_out)), after PyTorch's checks."""
    gain = _std(gain, who, "gain")
    fan_sum = sum(_fans(array, who))
    return gain * math.sqrt(2.0 / fan_sum) if array.size else 0.0


def xavier_uniform_(tensor, gain: float = 1.0, *, rng=None):
    """Glorot uniform in place (PyTorch's xavier_uniform_): U(-bound, bound) with
    bound = gain * sqrt(6 / (fan_in + fan_out))."""
    array = _target(tensor, "xavier_uniform_")
    std = _xavier_std(array, gain, "xavier_uniform_")
    if array.size:
        _write(array, uniform(array.shape, math.sqrt(3.0) * std, np.float64, generator(rng)))
    return tensor


def xavier_normal_(tensor, gain: float = 1.0, *, rng=None):
    """Glorot normal in place (PyTorch's xavier_normal_): N(0, std^2) with
    std = gain * sqrt(2 / (fan_in + fan_out))."""
    array = _target(tensor, "xavier_normal_")
    std = _xavier_std(array, gain, "xavier_normal_")
    if array.size:
        _write(array, generator(rng).normal(0.0, std, size=array.shape))
    return tensor


def _kaiming_std(array, a, mode, nonlinearity, who: str) -> float:
    """gain / sqrt(fan) with PyTorch's checks (mode first, then the fans, then the gain)."""
    fan = _fan(array, mode, who)
    try:
        gain = calculate_gain(nonlinearity, a)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None
    if array.size == 0:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return 0.0
    return gain / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *, rng=None):
    """He uniform in place (PyTorch's kaiming_uniform_): U(-bound, bound) with
    bound = sqrt(3) * gain / sqrt(fan), gain = calculate_gain(nonlinearity, a), fan the fan_in or
    fan_out of `mode`. a = sqrt(5) with the defaults is a layer's default initialisation."""
    array = _target(tensor, "kaiming_uniform_")
    std = _kaiming_std(array, a, mode, nonlinearity, "kaiming_uniform_")
    if array.size:
        _write(array, uniform(array.shape, math.sqrt(3.0) * std, np.float64, generator(rng)))
    return tensor


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *, rng=None):
    """He normal in place (PyTorch's kaiming_normal_): N(0, std^2) with std = gain / sqrt(fan),
    gain = calculate_gain(nonlinearity, a), fan the fan_in or fan_out of `mode`."""
    array = _target(tensor, "kaiming_normal_")
    std = _kaiming_std(array, a, mode, nonlinearity, "kaiming_normal_")
    if array.size:
        _write(array, generator(rng).normal(0.0, std, size=array.shape))
    return tensor


def orthogonal_(tensor, gain: float = 1.0, *, rng=None):
    """A (semi-)orthogonal matrix times gain in place (PyTorch's orthogonal_): the trailing
    dimensions flattened, rows (or columns, where fewer) orthonormal; Q of the QR of a standard
    normal matrix with R's diagonal made positive, so uniformly distributed."""
    array = _target(tensor, "orthogonal_")
    if array.ndim < 2:
        raise ValueError(f"orthogonal_ takes a tensor of at least 2 dimensions, got shape {tuple(array.shape)}")
    gain = _finite(gain, "gain", "orthogonal_")
    if array.size == 0:
        return tensor
    rows = array.shape[0]
    cols = array.size // rows
    flat = generator(rng).standard_normal((rows, cols))
    tall = flat if rows >= cols else flat.T
    q, r = np.linalg.qr(tall)
    q *= np.where(np.diagonal(r) < 0, -1.0, 1.0)
    _write(array, (gain * (q if rows >= cols else q.T)).reshape(array.shape))
    return tensor
