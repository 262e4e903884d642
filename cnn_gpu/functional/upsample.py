"""interpolate and its backward pass (torch.nn.functional.interpolate on (N, C, H, W), modes
"nearest", "nearest-exact", "bilinear", "bicubic" and "area", with `size` or `scale_factor`; an
output smaller than the input too; on (N, C, L), modes "nearest", "nearest-exact", "linear" and
"area", as the (N, C, 1, L) view's "nearest", "nearest-exact", "bilinear" and "area").

Per axis of `in` inputs and `out` outputs (out = size, or floor(in * scale_factor)):
- "nearest" is PyTorch's legacy rule (its nearest_idx): output d reads input d if out == in,
  d >> 1 if out == 2*in, else min(floor(d * scale), in - 1) with the product in FP32, scale =
  float32(1 / scale_factor) when a scale factor was given, else float32(in) / out. It is PyTorch's
  backward rule on the CPU and its CUDA rule; its CPU forward pass takes it for outputs with
  H + W <= 128 and a float64 variant without the two shortcuts for larger ones (so PyTorch's own
  CPU forward and backward disagree there; see tests/test_upsample.py).
- "nearest-exact" (pixel centres, PyTorch's nearest_neighbor_exact_compute_source_index): output d
  reads min(floor(float32((d + 1/2) * scale)), in - 1), the product in float64 (PyTorch's C++
  promotes it) rounded to FP32 before the floor, the same FP32 scale; no shortcuts.
- "bilinear": real = ratio * d (align_corners, ratio = (in - 1) / (out - 1)) or
  max(ratio * (d + 1/2) - 1/2, 0) (ratio = 1 / scale_factor, else in / out), in the compute type;
  taps floor(real) (at most in - 1) and the next input (the same at the last), weights 1 - l
  and l = real - floor(real), at most 1; out == in copies (both taps on d, weights 1 and 0). Every
  tap is multiplied, so an inf in a tap of weight 0 gives NaN, as in PyTorch.
- "bicubic" (PyTorch's upsample_bicubic2d, A = -0.75, no antialias): real = ratio * d
  (align_corners) or ratio * (d + 1/2) - 1/2 (no clamp at 0), the ratio as bilinear's; i =
  min(floor(float32(real)), in - 1) and t = clamp(real - i, 0, 1) (PyTorch's guard_index_and_lambda),
  taps i - 1 .. i + 2 each clamped into [0, in - 1], weights cc2(t + 1), cc1(t), cc1(1 - t),
  cc2(2 - t) with cc1(s) = ((A + 2) s - (A + 3)) s^2 + 1 and cc2(s) = ((A s - 5A) s + 8A) s - 4A.
  An output of the input's size (both axes) is a copy, as PyTorch's CUDA kernels and CPU
  backward make it (its CPU forward interpolates by a scale factor other than 1 there).
- "area" is adaptive_avg_pool2d to the output size (as in PyTorch), forward and backward.

NumPy path: each axis's taps (indices, weights) per output; the forward pass gathers them axis by
axis (columns, then rows, as PyTorch's CPU kernel), the backward pass adds dy back into its taps
with np.add.at (in output order: deterministic).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .adaptive_pool import adaptive_avg_pool2d, adaptive_avg_pool2d_backward

MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "area")
INTERPOLATING = ("linear", "bilinear", "bicubic")   # the modes that take align_corners
SIGNAL_MODES = {"nearest": "nearest", "nearest-exact": "nearest-exact", "linear": "bilinear", "area": "area"}
CUBIC_A = -0.75   # PyTorch's bicubic coefficient


def check_settings(size, scale_factor, mode, align_corners):
    """The checks that need no input, as PyTorch makes them (also at nn.Upsample's construction);
    align_corners as a bool."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined" if size is not None
                         else "either size or scale_factor should be defined")
    if mode not in INTERPOLATING:
        if align_corners is not None:
            raise ValueError("align_corners option can only be set with the interpolating modes: "
                             + " | ".join(INTERPOLATING))
        return False
    if align_corners is None:
        return False
    if not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(f"align_corners must be a bool or None, got {align_corners!r}")
    return bool(align_corners)


def _per_axis(value, name):
    """An int/float or a pair of them as a pair."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be a number or a pair (h, w) for a 4-D input, got {value!r}")
    return items


def output_size(in_size, size, scale_factor):
    """interpolate's output (h, w) for an input of spatial size `in_size` (h, w)."""
    return _output_size_and_factors(in_size, size, scale_factor)[0]


def _output_size_and_factors(in_size, size, scale_factor):
    """(out_size, scale_factors): the scale factors are None where `size` was given."""
    if size is not None:
        return tuple(_checks.whole_number(s, "size") for s in _per_axis(size, "size")), (None, None)
    factors = tuple(_checks.real_number(f, "scale_factor") for f in _per_axis(scale_factor, "scale_factor"))
    if min(factors) <= 0:
        raise ValueError(f"scale_factor must be positive, got {scale_factor!r}")
    out_size = tuple(math.floor(float(s) * f) for s, f in zip(in_size, factors))
    if min(out_size) < 1:
        raise ValueError(f"scale_factor {scale_factor!r} gives an empty output {out_size} for an input of "
                         f"spatial size {tuple(in_size)}")
    return out_size, factors


def _axis_param(mode, size, out, scale_factor, align_corners, compute_dtype):
    """The nearest modes' FP32 scale or bilinear's and bicubic's ratio in the compute type, as
    PyTorch computes them."""
    if mode.startswith("nearest"):
        return np.float32(1.0 / scale_factor) if scale_factor is not None else np.float32(size) / np.float32(out)
    real = compute_dtype.type
    if align_corners:
        return real(size - 1) / real(out - 1) if out > 1 else real(0)
    return real(1.0 / scale_factor) if scale_factor is not None else real(size) / real(out)


def _axis_taps(mode, size, out, param, align_corners):
    """[(input index, weight or None)] per tap: output d of the axis reads sum(weight[d] * x[index[d]])."""
    d = np.arange(out)
    if mode == "nearest":
        if out == size:
            return [(d, None)]
        if out == 2 * size:
            return [(d >> 1, None)]
        return [(np.minimum(np.floor(d.astype(np.float32) * param).astype(np.int64), size - 1), None)]
    if mode == "nearest-exact":
        centres = ((d + 0.5) * np.float64(param)).astype(np.float32)
        return [(np.minimum(np.floor(centres).astype(np.int64), size - 1), None)]
    if mode == "bicubic":
        return _cubic_taps(d, size, param, align_corners)
    if out == size:
        return [(d, np.ones(out, param.dtype)), (d, np.zeros(out, param.dtype))]
    real_d = d.astype(param.dtype)
    half = param.dtype.type(0.5)
    real = param * real_d if align_corners else np.maximum(param * (real_d + half) - half, 0)
    low = np.minimum(real.astype(np.int64), size - 1)   # truncation: floor, as real >= 0
    upper = np.minimum(real - low.astype(real.dtype), 1)
    high = np.where(low < size - 1, low + 1, low)
    return [(low, 1 - upper), (high, upper)]


def _cubic_taps(d, size, ratio, align_corners):
    real_d = d.astype(ratio.dtype)
    half = ratio.dtype.type(0.5)
    real = ratio * real_d if align_corners else ratio * (real_d + half) - half
    low = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), size - 1)   # floorf, as PyTorch
    t = np.clip(real - low.astype(real.dtype), 0, 1)
    a = ratio.dtype.type(CUBIC_A)

    def near(s):      # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s):       # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    return [(np.clip(low + k - 1, 0, size - 1), w) for k, w in enumerate(weights)]


def _one_item(value, name):
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(items) != 1:
        raise ValueError(f"{name} must be a number or a 1-tuple for a 3-D (N, C, L) input, got {value!r}")
    return items[0]


def _signal_settings(size, scale_factor, mode):
    """(size, scale_factor, mode) of the (N, C, 1, L) view of a 3-D input's interpolation: its one
    row kept (size 1, factor 1: out == in, a copy along it in every mode; bilinear's copy takes
    taps of weight 1 and 0, so an inf there gives NaN, unlike PyTorch's 1-D kernel)."""
    if mode not in SIGNAL_MODES:
        if mode in MODES:
            raise NotImplementedError(f"Got 3D input, but {mode} mode needs 4D input")
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return (None if size is None else (1, _one_item(size, "size")),
            None if scale_factor is None else (1.0, _one_item(scale_factor, "scale_factor")), SIGNAL_MODES[mode])


def _with_row(shape):
    return tuple(shape[:2]) + (1,) + tuple(shape[2:])


def _plan(x_shape, size, scale_factor, mode, align_corners, dtype):
    """(the mode that runs, align_corners, out_size, per-axis kernel parameters) for an input of
    shape x_shape: bicubic to the input's own size runs as nearest's copy (out == in)."""
    align = check_settings(size, scale_factor, mode, align_corners)
    if mode == "linear":
        raise NotImplementedError("Got 4D input, but linear mode needs 3D input")
    _, c, h, w = x_shape
    if min(c, h, w) < 1:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x_shape)}")
    out_size, factors = _output_size_and_factors((h, w), size, scale_factor)
    compute = _backend.compute_dtype(dtype)
    if mode == "area":   # adaptive_avg_pool2d's windows: no parameters
        return mode, align, out_size, None
    if mode == "bicubic" and out_size == (h, w):
        # PyTorch's CUDA kernels (both passes) and its CPU backward copy here, whatever the scale
        # factor; its CPU forward interpolates by the factor instead (tests/test_upsample.py)
        mode = "nearest"
    params = tuple(_axis_param(mode, s, o, f, align, compute) for s, o, f in zip((h, w), out_size, factors))
    return mode, align, out_size, params


def _along(axis, weight, ndim=4):
    return weight.reshape((-1,) + (1,) * (ndim - 1 - axis))


def _gather(a, taps, axis):
    total = None
    for index, weight in taps:
        part = np.take(a, index, axis=axis)
        if weight is not None:
            with np.errstate(invalid="ignore"):   # inf * 0 is NaN on purpose (PyTorch's result)
                part = part * _along(axis, weight)
        total = part if total is None else total + part
    return total


def scatter_taps(g, taps, axis, size):
    """The adjoint of _gather (of np.take along `axis` for one tap of weight None): g added into the
    taps' inputs, in output order (deterministic)."""
    moved = np.moveaxis(g, axis, 0)
    total = np.zeros((size,) + moved.shape[1:], dtype=g.dtype)
    for index, weight in taps:
        with np.errstate(invalid="ignore"):
            np.add.at(total, index, moved if weight is None else moved * _along(0, weight))
    return np.moveaxis(total, 0, axis)


@takes_float16(kernels=True)
def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None, *, backend=None):
    """torch.nn.functional.interpolate of a 4-D (N, C, H, W) input, modes "nearest", "nearest-exact",
    "bilinear", "bicubic" (no antialias) and "area" (adaptive_avg_pool2d to the output size), or
    of a 3-D (N, C, L) one, modes "nearest", "nearest-exact", "linear" and "area" (size and
    scale_factor a number or a 1-tuple; an inf under "linear" becomes NaN at the outputs reading
    it, where PyTorch keeps inf: see _signal_settings)."""
    _checks.array(x, "x", ndim=(3, 4))
    if x.ndim == 3:
        size, scale_factor, mode = _signal_settings(size, scale_factor, mode)
        y = interpolate(x.reshape(_with_row(x.shape)), size, scale_factor, mode, align_corners, backend=backend)
        return y.reshape(y.shape[:2] + y.shape[3:])
    mode, align, out_size, params = _plan(x.shape, size, scale_factor, mode, align_corners, x.dtype)
    if mode == "area":
        return adaptive_avg_pool2d(x, out_size, backend=backend)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        rows, cols = (_axis_taps(mode, s, o, p, align) for s, o, p in zip(x.shape[2:], out_size, params))
        return _gather(_gather(x, cols, 3), rows, 2)
    from ..gpu import upsample as gpu_upsample
    return gpu_upsample.forward(be, mode, _checks.for_kernels(be, x, "x"), out_size, params, align)


@takes_float16(kernels=True)
def interpolate_backward(dy, x_shape, size=None, scale_factor=None, mode="nearest", align_corners=None, *,
                         backend=None):
    """Gradient of interpolate for an input of shape x_shape, given the same size / scale_factor,
    mode and align_corners."""
    _checks.array(dy, "dy", ndim=(3, 4))
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    if dy.ndim == 3:
        size, scale_factor, mode = _signal_settings(size, scale_factor, mode)
        dx = interpolate_backward(dy.reshape(_with_row(dy.shape)), _with_row(x_shape), size, scale_factor, mode,
                                  align_corners, backend=backend)
        return dx.reshape(x_shape)
    mode, align, out_size, params = _plan(x_shape, size, scale_factor, mode, align_corners, dy.dtype)
    _checks.shape_is(dy, "dy", x_shape[:2] + out_size, f" (the output of interpolate for x of shape {x_shape})")
    if mode == "area":
        return adaptive_avg_pool2d_backward(dy, x_shape, backend=backend)
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        rows, cols = (_axis_taps(mode, s, o, p, align) for s, o, p in zip(x_shape[2:], out_size, params))
        return scatter_taps(scatter_taps(dy, rows, 2, x_shape[2]), cols, 3, x_shape[3])
    from ..gpu import upsample as gpu_upsample
    return gpu_upsample.backward(be, mode, _checks.for_kernels(be, dy, "dy"), x_shape, params, align)
