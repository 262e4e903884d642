"""Element-wise activations relu, leaky_relu, sigmoid, tanh, silu, gelu, hardtanh, relu6, hardsigmoid,
hardswish, elu, selu, celu, mish, softplus, logsigmoid, softsign, tanhshrink, hardshrink, softshrink,
threshold, and glu (a halving of one dimension, not a map), with their backward passes
`<name>_backward(dy, x, ...)`, which take the forward input x (PyTorch's conventions at the kinks: x == 0,
hardtanh's bounds, hardswish's +-3, the shrinks' +-lambd, threshold's threshold); PyTorch's in-place
spellings relu_, leaky_relu_, elu_, hardtanh_, threshold_, selu_ and celu_, which write the result into x;
add_relu, relu(a + b) in one pass, and relu_backward_of_sum, relu_backward(dy_a + dy_b, x) in one."""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from . import _checks
from ._erfc import erfc
from ._float16 import takes_float16
from .softmax import _as_rows, _axis


# Selections by a data-dependent mask are written as products: np.where and masked copies branch
# per element and run ~10x slower than arithmetic on real (unpredictable) signs.

def _sigmoid(x):
    # PyTorch's formula; exp(-x) overflowing to inf for very negative x correctly gives 0
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


# GELU's constants: Phi(x) = erfc(-x / sqrt(2)) / 2, phi(x) = exp(-x^2 / 2) / sqrt(2 pi); the tanh
# form's 0.5 (1 + tanh(u)) = sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3) (PyTorch's constants)
_SQRT_HALF = 0.7071067811865476
_RSQRT_2PI = 0.3989422804014327
_TWO_SQRT_2_OVER_PI = 1.5957691216057308
_GELU_CUBIC = 0.044715


# silu and gelu give NaN at an infinite x where PyTorch's formulas do (inf * 0), without NumPy's warnings
_INFINITIES_QUIET = np.errstate(over="ignore", invalid="ignore")


@_INFINITIES_QUIET
def _silu(x):
    # PyTorch's formula; exp(-x) overflowing to inf for very negative x gives -0
    return x / (1 + np.exp(-x))


@_INFINITIES_QUIET
def _gelu(x):
    # erfc(-x / sqrt(2)), not 1 + erf(x / sqrt(2)): no cancellation to 0 for negative x
    return x * 0.5 * erfc(x * -_SQRT_HALF)


@_INFINITIES_QUIET
def _gelu_tanh_argument(x):
    """2u of the tanh form (inf where x^3 overflows: the limit is right)."""
    return _TWO_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)


@_INFINITIES_QUIET
def _gelu_tanh(x):
    # x sigmoid(2u), not 0.5 x (1 + tanh(u)): no cancellation to 0 for negative x
    return x * _sigmoid(_gelu_tanh_argument(x))


def _elu_coefficients(dtype, coefficients):
    """PyTorch's elu(x, alpha, scale, input_scale) constants in x's dtype: (scale, input_scale, alpha * scale
    rounded as PyTorch's kernel rounds it, and the gradient's input_scale * alpha * scale)."""
    alpha, scale, input_scale = (np.dtype(dtype).type(c) for c in coefficients)
    negative = alpha * scale
    return scale, input_scale, negative, input_scale * negative


@_INFINITIES_QUIET
def _elu(x, coefficients):
    # PyTorch's elu(alpha, scale, input_scale), which also runs selu and celu: expm1, as PyTorch: accurate
    # near 0 (elu(-1e-20) = -1e-20), overflowing only where unused; x scale where x >= 0: a zero keeps its
    # sign whatever alpha's, as in PyTorch
    scale, input_scale, negative, _ = _elu_coefficients(x.dtype, coefficients)
    return np.where(x >= 0, x * scale, negative * np.expm1(x * input_scale))


# softplus's log1p(exp(t)) is t itself (rounded) past t = 40 in float32 and float64 (exp(-t) < 2^-57 t):
# taken so there, where exp(t) could overflow for a threshold past 88 (float32) or 709
_SOFTPLUS_LINEAR = 40.0


@_INFINITIES_QUIET
def _softplus(x, params):
    # PyTorch's x where x beta > threshold, else log1p(exp(x beta)) / beta
    beta, threshold = (x.dtype.type(p) for p in params)
    scaled = x * beta
    term = np.where(scaled > _SOFTPLUS_LINEAR, scaled, np.log1p(np.exp(scaled)))
    return np.where(scaled > threshold, x, term / beta)


def _log_sigmoid(x):
    # PyTorch's stable form min(x, 0) - log1p(exp(-|x|)): no overflow, no log of 0
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


@_INFINITIES_QUIET
def _softsign(x):
    # PyTorch's x / (1 + |x|), NaN at +-inf as PyTorch's (inf / inf)
    return x / (1 + np.abs(x))


def _dead_zone(x, lambd):
    """Where the shrinks are 0 and their gradients too: -lambd <= x <= lambd (never at NaN)."""
    return np.greater_equal(x, -lambd) & np.less_equal(x, lambd)


@_INFINITIES_QUIET
def _softshrink(x, lambd):
    # PyTorch's x - lambd above lambd, x + lambd below -lambd, x * 0 between (the zero keeps x's sign)
    return np.where(x > lambd, x - lambd, np.where(x < -lambd, x + lambd, x * 0))


@_INFINITIES_QUIET
def _hardswish(x):
    # PyTorch's order of operations; hardswish(-inf) = -inf * 0 = NaN as PyTorch's
    return x * np.clip(x + 3, 0, 6) / 6


def _mish_terms(x):
    """(t, 1 - t^2) with t = tanh(softplus(x)), from e = exp(-|x|) alone, in sums of positive terms (no
    cancellation, no overflow): with w = exp(softplus(x)) = 1 + exp(x), t = (w^2 - 1) / (w^2 + 1) is
    n / (n + 2), n = e (e + 2), for x < 0 and (1 + 2e) / (1 + 2e + 2e^2) for x >= 0, and 1 - t^2 is
    4 (n + 1) / (n + 2)^2, or 4 e^2 (1 + e)^2 / (1 + 2e + 2e^2)^2."""
    e = np.exp(-np.abs(x))
    negative = x < 0
    numerator = np.where(negative, e * (e + 2), 1 + 2 * e)
    denominator = np.where(negative, numerator + 2, numerator + 2 * e * e)
    sech_squared = np.where(negative, 4 * (numerator + 1), 4 * (e * (1 + e)) ** 2) / (denominator * denominator)
    return numerator / denominator, sech_squared


@_INFINITIES_QUIET
def _mish(x):
    # x tanh(softplus(x)), accurate in both tails (x exp(x) for very negative x); mish(-inf) is NaN, as PyTorch's
    return x * _mish_terms(x)[0]


def _leaky_factor(x, slope):
    """1 where x > 0, else slope (NaN: slope), exactly, without branching."""
    return np.take(np.array([slope, 1], dtype=x.dtype), (x > 0).view(np.int8))


def zero_where(a, drop, out=None):
    """a with +0.0 where the boolean array `drop` is set and a's exact bits elsewhere (inf and NaN
    too: no 0 * inf), by a bit mask: a masked copy or np.where branches per element and took 6-13x
    longer on real signs. `out` may be a itself."""
    unsigned = np.dtype(f"u{a.itemsize}")
    kept = np.subtract(drop.view(np.uint8), 1, dtype=unsigned)   # all bits set where kept, none where dropped
    bits = np.bitwise_and(a.view(unsigned), kept, out=None if out is None else out.view(unsigned))
    return bits.view(a.dtype)


def relu_in_place(y):
    """torch.relu's rule on a NumPy array, in place: 0 where y < 0, y elsewhere (NaN and -0.0 pass;
    a max with 0 would turn -0.0 into 0.0). Also the fused ReLU of conv2d and batch_norm."""
    zero_where(y, np.less(y, 0), out=y)
    return y


_FORWARD = {
    "relu": lambda x, _: relu_in_place(x.copy()),
    "leaky_relu": lambda x, slope: x * _leaky_factor(x, slope),
    "sigmoid": lambda x, _: _sigmoid(x),
    "tanh": lambda x, _: np.tanh(x),
    "silu": lambda x, _: _silu(x),
    "gelu": lambda x, _: _gelu(x),
    "gelu_tanh": lambda x, _: _gelu_tanh(x),
    # np.clip passes NaN and keeps -0.0 (relu6(-0.0) is -0.0), as PyTorch's clamp
    "hardtanh": lambda x, bounds: np.clip(x, *bounds),
    "hardsigmoid": lambda x, _: np.clip(x + 3, 0, 6) / 6,
    "hardswish": lambda x, _: _hardswish(x),
    "elu": _elu,
    "mish": lambda x, _: _mish(x),
    "softplus": _softplus,
    "log_sigmoid": lambda x, _: _log_sigmoid(x),
    "softsign": lambda x, _: _softsign(x),
    # PyTorch's x - tanh(x): it cancels near 0 (an absolute error of x's rounding), as PyTorch's
    "tanhshrink": lambda x, _: x - np.tanh(x),
    # hardshrink(-0.0) is +0.0, as PyTorch's 0 in the dead zone
    "hardshrink": lambda x, lambd: zero_where(x, _dead_zone(x, lambd)),
    "softshrink": _softshrink,
    "threshold": lambda x, params: np.where(x <= params[0], x.dtype.type(params[1]), x),
}


def _sigmoid_grad(dy, x):
    # s(x)(1 - s(x)) = e / (1 + e)^2 with e = exp(-|x|): no cancellation where s saturates
    e = np.exp(-np.abs(x))
    return dy * (e / ((1 + e) * (1 + e)))


def _tanh_grad(dy, x):
    # 1 - tanh(x)^2 = 4e / (1 + e)^2 with e = exp(-2|x|): no cancellation where tanh saturates
    e = np.exp(-2 * np.abs(x))
    return dy * (4 * e / ((1 + e) * (1 + e)))


@_INFINITIES_QUIET
def _silu_grad(dy, x):
    # PyTorch's s (1 + x (1 - s)): 1 - s loses its relative accuracy where s saturates, but x (1 - s)
    # is then negligible beside 1; at x = +-inf, NaN as PyTorch's (inf * 0)
    s = _sigmoid(x)
    return dy * (s * (1 + x * (1 - s)))


@_INFINITIES_QUIET
def _gelu_grad(dy, x):
    # Phi(x) + x phi(x); x^2 overflowing to inf gives phi = 0, the right limit
    return dy * (0.5 * erfc(x * -_SQRT_HALF) + x * (_RSQRT_2PI * np.exp(-0.5 * x * x)))


@_INFINITIES_QUIET
def _gelu_tanh_grad(dy, x):
    # d/dx x s(2u) = s + x s (1 - s) 2u' (1 - s inaccurate only where the term is negligible beside s),
    # x^3 s (1 - s) as x (x (x s (1 - s))): where s (1 - s) is 0, x^2 overflowing gives no inf * 0
    s = _sigmoid(_gelu_tanh_argument(x))
    x_slope = x * (s * (1 - s))
    return dy * (s + _TWO_SQRT_2_OVER_PI * (x_slope + 3 * _GELU_CUBIC * x * (x * x_slope)))


def _hardtanh_grad(dy, x, bounds):
    # PyTorch's rule: 0 at and beyond the bounds (also for an infinite or NaN dy), dy between them and where x is NaN
    low, high = bounds
    return zero_where(dy, np.less_equal(x, low) | np.greater_equal(x, high))


def _hardsigmoid_grad(dy, x):
    # PyTorch's rule: dy / 6 strictly between -3 and 3, else 0 (where x is NaN too)
    return zero_where(dy / 6, ~(np.greater(x, -3) & np.less(x, 3)))


@_INFINITIES_QUIET   # an infinite dy times a slope of 0, replaced by 0
def _hardswish_grad(dy, x):
    # PyTorch's rule: 0 where x <= -3, dy (x / 3 + 1/2) where x < 3, dy where x >= 3 or NaN: the left
    # derivative at -3 and the right one at 3
    above, below = ~np.less(x, 3), np.less_equal(x, -3)
    slope = zero_where(x / 3 + 0.5, above | below) + above   # no overflowing dy * slope where x <= -3
    return zero_where(dy * slope, below)   # 0 there also for an infinite or NaN dy


@_INFINITIES_QUIET
def _elu_grad(dy, x, coefficients):
    # PyTorch's rule: dy input_scale alpha scale exp(x input_scale) where x <= 0 (at 0 and -0.0 too), dy scale
    # where x > 0 or NaN
    scale, input_scale, _, negative_slope = _elu_coefficients(x.dtype, coefficients)
    return dy * np.where(x <= 0, negative_slope * np.exp(np.minimum(x, 0) * input_scale), scale)


@_INFINITIES_QUIET
def _softplus_grad(dy, x, params):
    # PyTorch's dy where x beta > threshold, else dy z / (z + 1), z = exp(x beta); z capped at exp(40), where
    # z + 1 rounds to z and the quotient to dy: no overflowing z
    beta, threshold = (x.dtype.type(p) for p in params)
    scaled = x * beta
    z = np.exp(np.minimum(scaled, _SOFTPLUS_LINEAR))
    return np.where(scaled > threshold, dy, dy * z / (z + 1))


def _log_sigmoid_grad(dy, x):
    # PyTorch's dy (1 - q) where x < 0, else dy q, with q = z / (1 + z), z = exp(-|x|): no cancellation (q <= 1/2)
    z = np.exp(-np.abs(x))
    q = z / (1 + z)
    return dy * np.where(x < 0, 1 - q, q)


@_INFINITIES_QUIET
def _softsign_grad(dy, x):
    # dy / (1 + |x|)^2 without PyTorch's cancelling quotient rule (dy / b - dy |x| / b^2); NaN at +-inf as
    # PyTorch's (inf / inf there)
    b = 1 + np.abs(x)
    return np.where(np.isinf(x), np.nan, dy / (b * b))


def _tanhshrink_grad(dy, x):
    # dy tanh(x)^2, where PyTorch's dy - dy (1 - tanh(x)^2) cancels near 0; + 0 makes a zero +0.0, as PyTorch's
    t = np.tanh(x)
    return dy * (t * t) + 0


@_INFINITIES_QUIET
def _mish_grad(dy, x):
    # PyTorch's t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x)), 1 - t^2 without cancellation where t
    # saturates; NaN at x = +-inf as PyTorch's (inf * 0)
    t, sech_squared = _mish_terms(x)
    return dy * (t + x * _sigmoid(x) * sech_squared)


def _relu_grad(dy, x):
    # PyTorch's rule: 0 where x <= 0 (also for an infinite or NaN dy), dy elsewhere (also where x is NaN)
    return zero_where(dy, np.less_equal(x, 0))


_BACKWARD = {
    "relu": lambda dy, x, _: _relu_grad(dy, x),
    "leaky_relu": lambda dy, x, slope: dy * _leaky_factor(x, slope),
    "sigmoid": lambda dy, x, _: _sigmoid_grad(dy, x),
    "tanh": lambda dy, x, _: _tanh_grad(dy, x),
    "silu": lambda dy, x, _: _silu_grad(dy, x),
    "gelu": lambda dy, x, _: _gelu_grad(dy, x),
    "gelu_tanh": lambda dy, x, _: _gelu_tanh_grad(dy, x),
    "hardtanh": _hardtanh_grad,
    "hardsigmoid": lambda dy, x, _: _hardsigmoid_grad(dy, x),
    "hardswish": lambda dy, x, _: _hardswish_grad(dy, x),
    "elu": _elu_grad,
    "mish": lambda dy, x, _: _mish_grad(dy, x),
    "softplus": _softplus_grad,
    "log_sigmoid": lambda dy, x, _: _log_sigmoid_grad(dy, x),
    "softsign": lambda dy, x, _: _softsign_grad(dy, x),
    "tanhshrink": lambda dy, x, _: _tanhshrink_grad(dy, x),
    # PyTorch's rule for both shrinks: 0 where -lambd <= x <= lambd (also for an infinite or NaN dy), else dy
    "hardshrink": lambda dy, x, lambd: zero_where(dy, _dead_zone(x, lambd)),
    "softshrink": lambda dy, x, lambd: zero_where(dy, _dead_zone(x, lambd)),
    # 0 where x <= threshold (also for an infinite or NaN dy), dy elsewhere and where x is NaN
    "threshold": lambda dy, x, params: zero_where(dy, np.less_equal(x, params[0])),
}


def _forward(name, x, param, backend):
    _checks.array(x, "x")
    be = _backend.resolve(backend, x)
    if be == "numpy":   # asarray: NumPy's arithmetic makes a 0-d input's result a scalar
        return np.asarray(_FORWARD[name](x, param))
    from ..gpu import elementwise
    return elementwise.forward(be, name, _checks.for_kernels(be, x, "x"), param)


def _matching_pair(first, first_name, second, second_name, backend):
    """The backend of an op on two arrays, after checking that the second has the first's dtype and shape."""
    _checks.array(first, first_name)
    _checks.array(second, second_name)
    _checks.same_dtype(first_name, first, **{second_name: second})
    _checks.shape_is(second, second_name, first.shape, f" (the shape of {first_name})")
    return _backend.resolve(backend, first, second)


def _backward(name, dy, x, param, backend):
    be = _matching_pair(x, "x", dy, "dy", backend)
    if be == "numpy":
        return np.asarray(_BACKWARD[name](dy, x, param))
    from ..gpu import elementwise
    return elementwise.backward(be, name, _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, x, "x"), param)


@takes_float16(kernels=True)
def relu(x, *, backend=None):
    """max(x, 0)."""
    return _forward("relu", x, 0.0, backend)


@takes_float16(kernels=True)
def relu_backward(dy, x, *, backend=None):
    """dy where x > 0, else 0."""
    return _backward("relu", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def add_relu(a, b, *, backend=None):
    """relu(a + b) in one pass (an extension: nn.Residual with the ReLU after it). Its gradient is
    relu_backward(dy, y) with y the output, which is > 0 exactly where a + b is. float32 on the
    kernels: a subnormal summand or sum flushes to zero (-ftz=true), where NumPy's addition keeps it."""
    be = _matching_pair(a, "a", b, "b", backend)
    if be == "numpy":
        return relu_in_place(np.asarray(np.add(a, b)))   # asarray: a 0-d sum is a scalar
    from ..gpu import elementwise
    return elementwise.add_relu(be, _checks.for_kernels(be, a, "a"), _checks.for_kernels(be, b, "b"))


@takes_float16(kernels=True)
def relu_backward_of_sum(dy_a, dy_b, x, *, backend=None):
    """relu_backward(dy_a + dy_b, x) in one pass (an extension: a gradient that arrives as two
    summands, as nn.Sequential hands a residual block's on to the residual ReLU before it); the sum
    rounded once, as dy_a + dy_b would be. float32 on the kernels: a subnormal summand or sum
    flushes to zero (-ftz=true), where NumPy's addition keeps it."""
    be = _matching_pair(x, "x", dy_a, "dy_a", backend)
    _matching_pair(x, "x", dy_b, "dy_b", be)
    if be == "numpy":
        return np.asarray(_relu_grad(np.add(dy_a, dy_b), x))   # asarray: a 0-d sum is a scalar
    from ..gpu import elementwise
    return elementwise.relu_backward_of_sum(be, *(_checks.for_kernels(be, a, name) for a, name in
                                                  ((dy_a, "dy_a"), (dy_b, "dy_b"), (x, "x"))))


@takes_float16(kernels=True)
def leaky_relu(x, negative_slope=0.01, *, backend=None):
    """x where x > 0, else negative_slope * x."""
    return _forward("leaky_relu", x, _checks.real_number(negative_slope, "negative_slope"), backend)


@takes_float16(kernels=True)
def leaky_relu_backward(dy, x, negative_slope=0.01, *, backend=None):
    """dy where x > 0, else negative_slope * dy."""
    return _backward("leaky_relu", dy, x, _checks.real_number(negative_slope, "negative_slope"), backend)


@takes_float16(kernels=True)
def sigmoid(x, *, backend=None):
    """1 / (1 + exp(-x)), computed without overflow."""
    return _forward("sigmoid", x, 0.0, backend)


@takes_float16(kernels=True)
def sigmoid_backward(dy, x, *, backend=None):
    """dy * s * (1 - s) with s = sigmoid(x), computed without cancellation for large |x|."""
    return _backward("sigmoid", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def tanh(x, *, backend=None):
    return _forward("tanh", x, 0.0, backend)


@takes_float16(kernels=True)
def tanh_backward(dy, x, *, backend=None):
    """dy * (1 - tanh(x)^2), computed without cancellation for large |x|."""
    return _backward("tanh", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def silu(x, *, backend=None):
    """x * sigmoid(x), computed without overflow."""
    return _forward("silu", x, 0.0, backend)


@takes_float16(kernels=True)
def silu_backward(dy, x, *, backend=None):
    """dy * s * (1 + x * (1 - s)) with s = sigmoid(x), computed without cancellation for large |x|."""
    return _backward("silu", dy, x, 0.0, backend)


# gelu's approximate= and the activation it names (the kernels': gelu_forward, gelu_tanh_forward, ...)
GELU_FORMS = {"none": "gelu", "tanh": "gelu_tanh"}


def gelu_form(approximate) -> str:
    """The activation name of gelu(approximate=...), checked as PyTorch does."""
    if not isinstance(approximate, str):
        raise TypeError(f"approximate must be a str, 'none' or 'tanh', got {approximate!r}")
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU_FORMS[approximate]


@takes_float16(kernels=True)
def gelu(x, *, approximate="none", backend=None):
    """x * Phi(x), Phi the standard normal CDF (approximate="none"), or PyTorch's tanh approximation
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (approximate="tanh"), keyword-only as in
    PyTorch; both computed without cancellation for negative x."""
    return _forward(gelu_form(approximate), x, 0.0, backend)


@takes_float16(kernels=True)
def gelu_backward(dy, x, *, approximate="none", backend=None):
    """dy times the derivative of gelu(x, approximate)."""
    return _backward(gelu_form(approximate), dy, x, 0.0, backend)


def hardtanh_bounds(min_val, max_val) -> tuple[float, float]:
    """hardtanh's (min_val, max_val), checked as PyTorch does: real numbers, min_val <= max_val."""
    bounds = _checks.real_number(min_val, "min_val"), _checks.real_number(max_val, "max_val")
    if bounds[0] > bounds[1]:
        raise ValueError(f"min_val cannot be greater than max_val, got min_val={min_val}, max_val={max_val}")
    return bounds


@takes_float16(kernels=True)
def hardtanh(x, min_val=-1.0, max_val=1.0, *, backend=None):
    """x clamped to [min_val, max_val] (NaN and -0.0 pass, as in PyTorch)."""
    return _forward("hardtanh", x, hardtanh_bounds(min_val, max_val), backend)


@takes_float16(kernels=True)
def hardtanh_backward(dy, x, min_val=-1.0, max_val=1.0, *, backend=None):
    """dy where min_val < x < max_val or x is NaN, else 0 (0 at the bounds, as in PyTorch)."""
    return _backward("hardtanh", dy, x, hardtanh_bounds(min_val, max_val), backend)


# relu6 is PyTorch's hardtanh(x, 0, 6), and runs its kernels
_RELU6_BOUNDS = (0.0, 6.0)


@takes_float16(kernels=True)
def relu6(x, *, backend=None):
    """min(max(x, 0), 6): hardtanh(x, 0, 6), as in PyTorch (so relu6(-0.0) is -0.0)."""
    return _forward("hardtanh", x, _RELU6_BOUNDS, backend)


@takes_float16(kernels=True)
def relu6_backward(dy, x, *, backend=None):
    """dy where 0 < x < 6 or x is NaN, else 0 (0 at 0 and at 6, as in PyTorch)."""
    return _backward("hardtanh", dy, x, _RELU6_BOUNDS, backend)


@takes_float16(kernels=True)
def hardsigmoid(x, *, backend=None):
    """min(max(x + 3, 0), 6) / 6."""
    return _forward("hardsigmoid", x, 0.0, backend)


@takes_float16(kernels=True)
def hardsigmoid_backward(dy, x, *, backend=None):
    """dy / 6 where -3 < x < 3, else 0 (at +-3 and where x is NaN too, as in PyTorch). float64: the
    exact dy / 6, where PyTorch's float64 kernel multiplies by the float32 constant 1/6."""
    return _backward("hardsigmoid", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def hardswish(x, *, backend=None):
    """x * min(max(x + 3, 0), 6) / 6 (NaN at x = -inf, as in PyTorch: -inf * 0)."""
    return _forward("hardswish", x, 0.0, backend)


@takes_float16(kernels=True)
def hardswish_backward(dy, x, *, backend=None):
    """0 where x <= -3, dy * (x / 3 + 1/2) where x < 3, dy elsewhere and where x is NaN (PyTorch's
    values at the kinks: 0 at -3, dy at 3)."""
    return _backward("hardswish", dy, x, 0.0, backend)


def _elu_form(alpha):
    """elu's (alpha, scale, input_scale) for PyTorch's elu(x, alpha)."""
    return _checks.real_number(alpha, "alpha"), 1.0, 1.0


@takes_float16(kernels=True)
def elu(x, alpha=1.0, *, backend=None):
    """x where x > 0, else alpha * (exp(x) - 1), the latter by expm1 (accurate near 0)."""
    return _forward("elu", x, _elu_form(alpha), backend)


@takes_float16(kernels=True)
def elu_backward(dy, x, alpha=1.0, *, backend=None):
    """dy where x > 0 or x is NaN, else dy * alpha * exp(x) (alpha * dy at x == 0, as in PyTorch)."""
    return _backward("elu", dy, x, _elu_form(alpha), backend)


# SELU's constants (PyTorch's, from Klambauer et al.), run as elu(x, alpha, scale, 1)
_SELU_FORM = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946, 1.0)


@takes_float16(kernels=True)
def selu(x, *, backend=None):
    """scale * x where x > 0, else scale * alpha * (exp(x) - 1) (PyTorch's constants; elu's kernels)."""
    return _forward("elu", x, _SELU_FORM, backend)


@takes_float16(kernels=True)
def selu_backward(dy, x, *, backend=None):
    """dy * scale where x > 0 or x is NaN, else dy * scale * alpha * exp(x) (at x == 0 too, as in PyTorch)."""
    return _backward("elu", dy, x, _SELU_FORM, backend)


def celu_form(alpha):
    """celu(x, alpha) as PyTorch's elu(x, alpha, 1, 1 / alpha); alpha = 0 refused with PyTorch's message."""
    alpha = _checks.real_number(alpha, "alpha")
    if alpha == 0:
        raise ValueError("ZeroDivisionError: alpha cannot be 0 for CELU")
    return alpha, 1.0, 1.0 / alpha


@takes_float16(kernels=True)
def celu(x, alpha=1.0, *, backend=None):
    """x where x > 0, else alpha * (exp(x / alpha) - 1) (by expm1; elu's kernels)."""
    return _forward("elu", x, celu_form(alpha), backend)


@takes_float16(kernels=True)
def celu_backward(dy, x, alpha=1.0, *, backend=None):
    """dy where x > 0 or x is NaN, else dy * exp(x / alpha) (dy at x == 0, as in PyTorch)."""
    return _backward("elu", dy, x, celu_form(alpha), backend)


@takes_float16(kernels=True)
def mish(x, *, backend=None):
    """x * tanh(softplus(x)), softplus(x) = log(1 + exp(x)) computed without overflow."""
    return _forward("mish", x, 0.0, backend)


@takes_float16(kernels=True)
def mish_backward(dy, x, *, backend=None):
    """dy * (t + x * sigmoid(x) * (1 - t^2)) with t = tanh(softplus(x)), 1 - t^2 computed without
    cancellation for large x."""
    return _backward("mish", dy, x, 0.0, backend)


def _softplus_form(beta, threshold):
    return _checks.real_number(beta, "beta"), _checks.real_number(threshold, "threshold")


@takes_float16(kernels=True)
def softplus(x, beta=1.0, threshold=20.0, *, backend=None):
    """log(1 + exp(beta * x)) / beta, by log1p, and x itself where beta * x > threshold (PyTorch's switch to
    the linear function). Deliberately unlike PyTorch for a threshold past exp's range (88 in float32, 709
    in float64): log1p(exp(t)) is taken as t past t = 40, where it rounds to t, so it stays finite where
    PyTorch's exp overflows to inf (and its gradient to NaN)."""
    return _forward("softplus", x, _softplus_form(beta, threshold), backend)


@takes_float16(kernels=True)
def softplus_backward(dy, x, beta=1.0, threshold=20.0, *, backend=None):
    """dy where beta * x > threshold, else dy * z / (z + 1), z = exp(beta * x) (PyTorch's formula)."""
    return _backward("softplus", dy, x, _softplus_form(beta, threshold), backend)


@takes_float16(kernels=True)
def logsigmoid(x, *, backend=None):
    """log(sigmoid(x)) as PyTorch's stable min(x, 0) - log1p(exp(-|x|)) (no overflow, no log of 0)."""
    return _forward("log_sigmoid", x, 0.0, backend)


@takes_float16(kernels=True)
def logsigmoid_backward(dy, x, *, backend=None):
    """dy * sigmoid(-x), as PyTorch's dy (1 - z / (1 + z)) where x < 0, else dy z / (1 + z), z = exp(-|x|)."""
    return _backward("log_sigmoid", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def softsign(x, *, backend=None):
    """x / (1 + |x|) (NaN at +-inf, as PyTorch's: inf / inf)."""
    return _forward("softsign", x, 0.0, backend)


@takes_float16(kernels=True)
def softsign_backward(dy, x, *, backend=None):
    """dy / (1 + |x|)^2 (NaN at +-inf, as PyTorch's), without the cancellation of PyTorch's quotient rule."""
    return _backward("softsign", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def tanhshrink(x, *, backend=None):
    """x - tanh(x), PyTorch's formula (near 0 its error is absolute, of x's order of rounding)."""
    return _forward("tanhshrink", x, 0.0, backend)


@takes_float16(kernels=True)
def tanhshrink_backward(dy, x, *, backend=None):
    """dy * tanh(x)^2 (PyTorch's dy - dy (1 - tanh(x)^2) without its cancellation near 0)."""
    return _backward("tanhshrink", dy, x, 0.0, backend)


@takes_float16(kernels=True)
def hardshrink(x, lambd=0.5, *, backend=None):
    """x where |x| > lambd, else 0 (+0.0; at +-lambd too); NaN passes. Any real lambd, as PyTorch's."""
    return _forward("hardshrink", x, _checks.real_number(lambd, "lambd"), backend)


@takes_float16(kernels=True)
def hardshrink_backward(dy, x, lambd=0.5, *, backend=None):
    """dy where |x| > lambd or x is NaN, else 0 (at +-lambd too, as in PyTorch)."""
    return _backward("hardshrink", dy, x, _checks.real_number(lambd, "lambd"), backend)


def shrink_lambd(lambd):
    """softshrink's lambd, which PyTorch needs >= 0."""
    lambd = _checks.real_number(lambd, "lambd")
    if lambd < 0:
        raise ValueError(f"lambda must be greater or equal to 0, but found to be {lambd}")
    return lambd


@takes_float16(kernels=True)
def softshrink(x, lambd=0.5, *, backend=None):
    """x - lambd where x > lambd, x + lambd where x < -lambd, else x * 0 (a zero of x's sign, as PyTorch's)."""
    return _forward("softshrink", x, shrink_lambd(lambd), backend)


@takes_float16(kernels=True)
def softshrink_backward(dy, x, lambd=0.5, *, backend=None):
    """dy where |x| > lambd or x is NaN, else 0 (at +-lambd too, as in PyTorch)."""
    return _backward("softshrink", dy, x, shrink_lambd(lambd), backend)


def _threshold_form(threshold, value):
    return _checks.real_number(threshold, "threshold"), _checks.real_number(value, "value")


@takes_float16(kernels=True)
def threshold(x, threshold, value, *, backend=None):
    """value where x <= threshold, else x (NaN passes), as PyTorch's."""
    return _forward("threshold", x, _threshold_form(threshold, value), backend)


@takes_float16(kernels=True)
def threshold_backward(dy, x, threshold, value, *, backend=None):
    """0 where x <= threshold (also for an infinite or NaN dy), else dy (also where x is NaN)."""
    return _backward("threshold", dy, x, _threshold_form(threshold, value), backend)


_threshold_op = threshold   # threshold_'s own argument `threshold` hides the op


def _glu_view(x, dim):
    """(axis, outer, half * inner, the output's shape): GLU's view of x (PyTorch's checks: no 0-d input, an
    even size along dim), the first half of each of the `outer` runs of 2 * half * inner elements the value,
    the second the gate."""
    if x.ndim == 0:
        raise ValueError("glu does not support scalars because halving size must be even")
    axis = _axis(dim, x.ndim)
    if x.shape[axis] % 2:
        raise ValueError(f"Halving dimension must be even, but dimension {axis} is size {x.shape[axis]}")
    outer, size, inner = _as_rows(x.shape, axis)
    return axis, outer, size // 2 * inner, x.shape[:axis] + (size // 2,) + x.shape[axis + 1:]


def _glu_gate_terms(b):
    """(sigmoid(b), sigmoid'(b)) from e = exp(-|b|), r = 1 / (1 + e): sigmoid is r or e r, its derivative
    e r^2 (no cancellation of s (1 - s) where s saturates)."""
    e = np.exp(-np.abs(b))
    r = 1 / (1 + e)
    return np.where(b >= 0, r, e * r), e * r * r


@takes_float16(kernels=True)
def glu(x, dim=-1, *, backend=None):
    """a * sigmoid(b), a and b the first and second halves of x along dim (PyTorch's GLU)."""
    _checks.array(x, "x")
    axis, outer, chunk, half_shape = _glu_view(x, dim)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        a, b = np.split(x, 2, axis=axis)
        return np.asarray(a * _sigmoid(b))
    from ..gpu import elementwise
    return elementwise.glu(be, _checks.for_kernels(be, x, "x"), outer, chunk, half_shape)


@takes_float16(kernels=True)
def glu_backward(dy, x, dim=-1, *, backend=None):
    """dx: dy * sigmoid(b) for the first half a, dy * a * sigmoid'(b) for the second half b."""
    _checks.array(x, "x")
    axis, outer, chunk, half_shape = _glu_view(x, dim)
    _checks.array(dy, "dy")
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", half_shape, " (glu's output: x halved along dim)")
    be = _backend.resolve(backend, x, dy)
    if be == "numpy":
        a, b = np.split(x, 2, axis=axis)
        gate, slope = _glu_gate_terms(b)
        return np.concatenate([dy * gate, dy * (a * slope)], axis=axis)
    from ..gpu import elementwise
    return elementwise.glu_backward(be, _checks.for_kernels(be, dy, "dy"), _checks.for_kernels(be, x, "x"), outer,
                                    chunk)


def _overwritten(x, op, *args, backend):
    """op(x, *args) written into x, which is returned: PyTorch's in-place spellings. The result is computed
    out of place and copied (the kernels never alias an input and an output); x must be writable, which is
    checked before anything runs."""
    _checks.array(x, "x")
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError("x is read-only: an in-place op writes its result into x")
    result = op(x, *args, backend=backend)
    _backend.device_call(_backend.module_of(x).copyto, x, result)   # device work: a replay copies again
    return x


def relu_(x, *, backend=None):
    """relu(x) written into x, which is returned."""
    return _overwritten(x, relu, backend=backend)


def leaky_relu_(x, negative_slope=0.01, *, backend=None):
    """leaky_relu(x, negative_slope) written into x, which is returned."""
    return _overwritten(x, leaky_relu, negative_slope, backend=backend)


def elu_(x, alpha=1.0, *, backend=None):
    """elu(x, alpha) written into x, which is returned."""
    return _overwritten(x, elu, alpha, backend=backend)


def hardtanh_(x, min_val=-1.0, max_val=1.0, *, backend=None):
    """hardtanh(x, min_val, max_val) written into x, which is returned."""
    return _overwritten(x, hardtanh, min_val, max_val, backend=backend)


def threshold_(x, threshold, value, *, backend=None):
    """threshold(x, threshold, value) written into x, which is returned."""
    return _overwritten(x, _threshold_op, threshold, value, backend=backend)


def selu_(x, *, backend=None):
    """selu(x) written into x, which is returned."""
    return _overwritten(x, selu, backend=backend)


def celu_(x, alpha=1.0, *, backend=None):
    """celu(x, alpha) written into x, which is returned."""
    return _overwritten(x, celu, alpha, backend=backend)


# The functional ops whose kernels carry another activation's name (cnn_gpu.gpu.elementwise.ACTIVATIONS); the
# others' are their own
KERNELS_OF = {"selu": "elu", "celu": "elu", "logsigmoid": "log_sigmoid", "relu6": "hardtanh"}


# The activations F.batch_norm applies to its output in the same pass (its activation=...; nn.Sequential
# fuses a BatchNorm and the activation layer after it): name -> (the element-wise op whose formulas and
# rules it takes, that op's parameter)
FUSED_ACTIVATIONS = {"relu": ("relu", 0.0), "relu6": ("hardtanh", _RELU6_BOUNDS), "hardswish": ("hardswish", 0.0),
                     "silu": ("silu", 0.0)}


def fused_activation(name, v):
    """The fused activation `name` (FUSED_ACTIVATIONS) of the NumPy array v, which it may overwrite."""
    op, parameter = FUSED_ACTIVATIONS[name]
    return relu_in_place(v) if op == "relu" else _FORWARD[op](v, parameter)


def fused_activation_gradient(name, dy, v):
    """dy through the fused activation `name`'s gradient at its input v (NumPy arrays)."""
    op, parameter = FUSED_ACTIVATIONS[name]
    return _BACKWARD[op](dy, v, parameter)
