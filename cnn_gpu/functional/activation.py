"""Element-wise activations relu, leaky_relu, sigmoid, tanh and their backward passes
`<name>_backward(dy, x, ...)`, which take the forward input x (PyTorch's conventions at x == 0);
add_relu, relu(a + b) in one pass, and relu_backward_of_sum, relu_backward(dy_a + dy_b, x) in one."""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16


# Selections by a data-dependent mask are written as products: np.where and masked copies branch
# per element and run ~10x slower than arithmetic on real (unpredictable) signs.

def _sigmoid(x):
    # PyTorch's formula; exp(-x) overflowing to inf for very negative x correctly gives 0
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


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
}


def _sigmoid_grad(dy, x):
    # s(x)(1 - s(x)) = e / (1 + e)^2 with e = exp(-|x|): no cancellation where s saturates
    e = np.exp(-np.abs(x))
    return dy * (e / ((1 + e) * (1 + e)))


def _tanh_grad(dy, x):
    # 1 - tanh(x)^2 = 4e / (1 + e)^2 with e = exp(-2|x|): no cancellation where tanh saturates
    e = np.exp(-2 * np.abs(x))
    return dy * (4 * e / ((1 + e) * (1 + e)))


def _relu_grad(dy, x):
    # PyTorch's rule: 0 where x <= 0 (also for an infinite or NaN dy), dy elsewhere (also where x is NaN)
    return zero_where(dy, np.less_equal(x, 0))


_BACKWARD = {
    "relu": lambda dy, x, _: _relu_grad(dy, x),
    "leaky_relu": lambda dy, x, slope: dy * _leaky_factor(x, slope),
    "sigmoid": lambda dy, x, _: _sigmoid_grad(dy, x),
    "tanh": lambda dy, x, _: _tanh_grad(dy, x),
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
