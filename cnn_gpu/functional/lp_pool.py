"""lp_pool2d and lp_pool1d (power-average pooling) with their backward passes, built as PyTorch 2.13's
torch.nn.functional defines them, from the pools it has:

    y = (sign(a) * relu(|a|) * kernel_area) ** (1 / p),   a = avg_pool(x ** p, kernel_size, stride,
                                                              padding=0, ceil_mode)

(avg_pool's divisor, with ceil_mode, is the window clipped to the input, so a partial window's sum is
scaled up to the full kernel's area, as PyTorch's is); p = inf is max_pool(|x|) and p = -inf
-max_pool(-|x|). The backward is the chain rule of that graph with PyTorch's autograd rules: pow's
`g * e * b ** (e - 1)`, relu's zero where its output is 0 (a window whose sum of x ** p is 0 gets a zero
gradient, as PyTorch's docstring says), abs's `g * sign(x)`. x ** p of a negative x is NaN for a
non-integer p, and an odd p's negative sum NaN after the root, as in PyTorch.

The pools run on the backend's kernels (avg_pool2d's, max_pool2d's); the element-wise steps are the
array module's (NumPy's; CuPy's on cuda), through backend.device_call so that cnn_gpu.replay redoes them.
float16 is computed in FP32 throughout, the output rounded once. norm_type 0 raises ZeroDivisionError
as PyTorch's 1.0 / norm_type does; NaN is refused.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .geometry import as_batch, pair, pool_geometry, pool_stride
from .one_d import _check_pooled_dy, _pool_output, pool_sizes
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward_of_own_indices


def _norm(norm_type) -> float:
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r}")
    p = float(norm_type)
    if math.isnan(p):
        raise ValueError("norm_type must not be NaN")
    if p == 0:
        raise ZeroDivisionError("norm_type 0: lp_pool takes the 1 / norm_type root (float division by zero)")
    return p


def _settings(x, norm_type, kernel_size, stride, ceil_mode):
    """(p, (kh, kw), stride pair, ceil_mode) of a 2-D call, x checked."""
    _checks.array(x, "x", ndim=(3, 4))
    return (_norm(norm_type), pair(kernel_size, "kernel_size"), pool_stride(stride, kernel_size),
            _checks.flag(ceil_mode, "ceil_mode"))


def _arithmetic(fn):
    """fn(), array arithmetic on the backend's arrays (NaN and inf where PyTorch's are, unwarned), as
    backend.device_call: inside a recording a replay computes it again from the arrays' new values."""
    def quiet():
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return fn()
    return _backend.device_call(quiet)


def _max_of_magnitudes(x, p, kernel, stride, ceil_mode, be):
    """(y, indices) of p = inf (max of |x|) or -inf (-max of -|x|)."""
    xp = _backend.module_of(x)
    sign = 1 if p > 0 else -1
    y, indices = max_pool2d(_arithmetic(lambda: sign * xp.abs(x)), kernel, stride, 0, 1, ceil_mode, backend=be)
    return _arithmetic(lambda: sign * y), indices


def _scaled_average(x, p, kernel, stride, ceil_mode, be):
    """(a, s): a = avg_pool(x ** p), s = sign(a) relu(|a|) * area (a with -0.0 as +0.0: sign(0) is 0)."""
    xp = _backend.module_of(x)
    a = avg_pool2d(_arithmetic(lambda: xp.power(x, p)), kernel, stride, 0, ceil_mode, backend=be)
    return a, _arithmetic(lambda: xp.where(a == 0, xp.zeros((), a.dtype), a) * (kernel[0] * kernel[1]))


@takes_float16(kernels="float32")
def lp_pool2d(x, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """Power-average pooling as torch.nn.functional.lp_pool2d: x (N, C, H, W) or (C, H, W) -> y of the
    same rank, (sum over the window of x ** p) ** (1 / p), no padding (see the module docstring)."""
    p, kernel, stride, ceil_mode = _settings(x, norm_type, kernel_size, stride, ceil_mode)
    pool_geometry(as_batch(x)[0].shape, kernel, stride, 0, 1, ceil_mode)   # refused before x ** p is computed
    be = _backend.resolve(backend, x)
    if math.isinf(p):
        return _max_of_magnitudes(x, p, kernel, stride, ceil_mode, be)[0]
    _, s = _scaled_average(x, p, kernel, stride, ceil_mode, be)
    return _arithmetic(lambda: _backend.module_of(x).power(s, 1.0 / p))


@takes_float16(kernels="float32")
def lp_pool2d_backward(dy, x, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """Gradient of lp_pool2d at x (PyTorch's autograd of its definition): dx of x's shape."""
    p, kernel, stride, ceil_mode = _settings(x, norm_type, kernel_size, stride, ceil_mode)
    _checks.array(dy, "dy", ndim=x.ndim)
    _checks.same_dtype("x", x, dy=dy)
    pooled = pool_geometry(as_batch(x)[0].shape, kernel, stride, 0, 1, ceil_mode).y_shape[4 - x.ndim:]
    _checks.shape_is(dy, "dy", pooled, " (the pooled shape of x)")
    be = _backend.resolve(backend, dy, x)
    xp = _backend.module_of(x)
    if math.isinf(p):
        _, indices = _max_of_magnitudes(x, p, kernel, stride, ceil_mode, be)
        dm = max_pool2d_backward_of_own_indices(dy, indices, x.shape, kernel, stride, 0, 1, ceil_mode, backend=be)
        return _arithmetic(lambda: dm * xp.sign(x))
    a, s = _scaled_average(x, p, kernel, stride, ceil_mode, be)
    # pow's, the area's and relu's (zero where the window's sum is 0) steps; sign's and abs's factors
    # sign(a)^2 are 1 elsewhere (a NaN a: NaN either way)
    da = _arithmetic(lambda: xp.where(a == 0, xp.zeros((), a.dtype),
                                      dy * ((1.0 / p) * xp.power(s, 1.0 / p - 1)) * (kernel[0] * kernel[1])))
    dz = avg_pool2d_backward(da, x.shape, kernel, stride, 0, ceil_mode, backend=be)
    return _arithmetic(lambda: dz * (p * xp.power(x, p - 1)))


def _settings_1d(x, norm_type, kernel_size, stride, ceil_mode):
    """(the 2-D call's (norm_type, kernel, stride, ceil_mode), the pooled length) of a 1-D call, checked
    in 1-D terms."""
    _checks.array(x, "x", ndim=(2, 3))
    p = _norm(norm_type)
    kernel, stride, _, _ = pool_sizes(kernel_size, stride, 0)
    ceil_mode = _checks.flag(ceil_mode, "ceil_mode")
    out = _pool_output(x.shape, kernel, stride, 0, 1, ceil_mode)
    return (p, (1, kernel), (1, stride), ceil_mode), out


@takes_float16(kernels="float32")
def lp_pool1d(x, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """Power-average pooling as torch.nn.functional.lp_pool1d: x (N, C, L) or (C, L) -> y of the same
    rank; lp_pool2d on the (.., 1, L) view."""
    settings, _ = _settings_1d(x, norm_type, kernel_size, stride, ceil_mode)
    return lp_pool2d(x[..., None, :], *settings, backend=backend)[..., 0, :]


@takes_float16(kernels="float32")
def lp_pool1d_backward(dy, x, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """Gradient of lp_pool1d at x: dx of x's shape."""
    settings, out = _settings_1d(x, norm_type, kernel_size, stride, ceil_mode)
    _check_pooled_dy(dy, x.shape, out)
    return lp_pool2d_backward(dy[..., None, :], x[..., None, :], *settings, backend=backend)[..., 0, :]
