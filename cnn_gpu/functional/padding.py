"""pad and its backward pass (torch.nn.functional.pad on the last two dims of (N, C, H, W) or
unbatched (C, H, W) inputs; `pad` is (left, right) or (left, right, top, bottom), as PyTorch
orders it; negative pads crop).

Per axis of `in` inputs and `out` = before + in + after outputs, output d stands at input position
i = d - before and reads: "constant" input i where it exists, else `value`; "reflect" -i left of
the input and 2(in - 1) - i right of it (before, after < in); "replicate" i clamped to the input.
"circular" first crops the input by its negative pads (as PyTorch's _pad_circular does), then
wraps around what is left, of `kept` inputs: i + kept left and i - kept right of it (each positive
pad at most kept: PyTorch checks it against `in`, then fails or copies output it has not written).
The backward pass adds each output's gradient to the input it read.

NumPy path: each axis's source indices per output; the forward pass takes them (a slice into a
filled array for "constant"), the backward pass adds dy back with np.add.at (in output order:
deterministic). The kernels (kernels/pad.cu) gather the backward pass per input pixel.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .upsample import scatter_taps

MODES = ("constant", "reflect", "replicate", "circular")


def layer_padding(padding) -> tuple:
    """The padding of a nn.*Pad2d layer as (left, right, top, bottom): an int pads all four sides."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, (bool, np.bool_)):
        return (int(padding),) * 4
    if not isinstance(padding, (tuple, list)) or len(padding) != 4:
        raise ValueError(f"padding must be an int or a tuple of 4 ints (left, right, top, bottom), got {padding!r}")
    return _pad_tuple(padding)


def fill_value(value) -> float:
    """The constant mode's value (None: 0) as a float; any real number, inf and NaN too."""
    if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
        raise TypeError(f"value must be a real number or None, got {value!r}")
    return 0.0 if value is None else float(value)


def _pad_tuple(pad) -> tuple:
    if not isinstance(pad, (tuple, list)) or not all(
            isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)) for p in pad):
        raise TypeError(f"pad must be a tuple of ints, got {pad!r}")
    if len(pad) % 2:
        raise ValueError("Padding length must be divisible by 2")
    if len(pad) not in (2, 4):
        raise ValueError(f"pad must have 2 or 4 entries (left, right[, top, bottom]): only the last two dims are "
                         f"padded, got {tuple(pad)}")
    return tuple(int(p) for p in pad) + (0, 0) * (len(pad) == 2)


def source_window(mode, size, before, after):
    """(origin, extent, before) of one axis: the part of the input the mode pads (circular: what
    its negative pads leave, with its positive pads; every other mode: all of it, as given)."""
    if mode != "circular":
        return 0, size, before
    origin = max(-before, 0)
    return origin, size - origin - max(-after, 0), max(before, 0)


def _check_mode_sizes(mode, x_shape, pads):
    """The size rules of each mode, in PyTorch's order and words (W, then H)."""
    h, w = x_shape[-2:]
    left, right, top, bottom = pads
    for size, before, after, dim, argument in ((w, left, right, len(x_shape) - 1, 4),
                                              (h, top, bottom, len(x_shape) - 2, 6)):
        where = f"padding ({before}, {after}) at dimension {dim} of input {list(x_shape)}"
        if mode == "constant" and size + min(before, 0) + min(after, 0) < 0:
            raise ValueError(f"narrow(): length must be non-negative: {where} crops more than the input has")
        if mode == "reflect" and not (before < size and after < size):
            raise ValueError(f"Argument #{argument}: Padding size should be less than the corresponding input "
                             f"dimension, but got: {where}")
        _, kept, _ = source_window(mode, size, before, after)
        if mode == "circular" and not (max(before, 0) <= kept and max(after, 0) <= kept):
            raise ValueError(f"Padding value causes wrapping around more than once: {where} (its negative pads "
                             f"leave {kept} of {size})")


def _plan(x_shape, pad, mode, value):
    """((left, right, top, bottom), output (P, Q), fill value) for an input of shape x_shape."""
    if mode not in MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    pads = _pad_tuple(pad)
    fill = fill_value(value)
    if mode != "constant":
        if fill != 0:
            raise ValueError(f'Padding mode "{mode}" doesn\'t take in value argument')
        if len(pad) == 2 and len(x_shape) == 4:
            raise NotImplementedError(f"Padding size 2 is not supported for 4D input tensor with mode {mode!r}: pad "
                                      f"(left, right, top, bottom) on a 4-D input, (left, right) on a 3-D one")
    if min(x_shape[-3:]) < 1:
        raise ValueError(f"x must have non-empty channel and spatial dimensions, got shape {tuple(x_shape)}")
    _check_mode_sizes(mode, x_shape, pads)
    left, right, top, bottom = pads
    out_size = (x_shape[-2] + top + bottom, x_shape[-1] + left + right)
    if min(out_size) < 1:
        raise ValueError(f"pad {tuple(pad)} gives an empty output {tuple(x_shape[:-2]) + out_size} for an input of "
                         f"shape {tuple(x_shape)}")
    return pads, out_size, fill


def padded_shape(x_shape, pad, mode="constant") -> tuple:
    """The shape pad(x, pad, mode) gives an input of shape x_shape (ValueError where it refuses)."""
    return tuple(x_shape[:-2]) + _plan(tuple(x_shape), pad, mode, None)[1]


def _axis_sources(mode, size, before, after):
    """The input index each output along one axis reads (constant: its position, maybe outside)."""
    if mode == "circular":
        origin, kept, positive = source_window(mode, size, before, after)
        return origin + np.mod(np.arange(-positive, kept + max(after, 0)), kept)
    i = np.arange(-before, size + after)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= size, 2 * (size - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    return i


def _inside(size, before, after):
    """The slices of the output and of the input that are the input itself (constant mode)."""
    out_start, in_start = max(before, 0), max(-before, 0)
    length = size - in_start - max(-after, 0)
    return slice(out_start, out_start + length), slice(in_start, in_start + length)


def _check_input(x, name):
    _checks.array(x, name, ndim=(3, 4))


@takes_float16(kernels=True)
def pad(x, pad, mode="constant", value=None, *, backend=None):
    """torch.nn.functional.pad of a 4-D (N, C, H, W) or 3-D (C, H, W) input on its last two dims,
    `pad` = (left, right[, top, bottom]). An empty output is refused."""
    _check_input(x, "x")
    pads, out_size, fill = _plan(x.shape, pad, mode, value)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        left, right, top, bottom = pads
        if mode == "constant":
            y = np.full(x.shape[:-2] + out_size, fill, dtype=x.dtype)
            (out_rows, in_rows), (out_cols, in_cols) = _inside(x.shape[-2], top, bottom), _inside(x.shape[-1], left,
                                                                                                right)
            y[..., out_rows, out_cols] = x[..., in_rows, in_cols]
            return y
        rows = _axis_sources(mode, x.shape[-2], top, bottom)
        return np.take(np.take(x, rows, axis=-2), _axis_sources(mode, x.shape[-1], left, right), axis=-1)
    from ..gpu import pad as gpu_pad
    return gpu_pad.forward(be, _checks.for_kernels(be, x, "x"), pads, _windows(x.shape, pads, mode), mode, fill,
                           out_size)


def _windows(x_shape, pads, mode) -> tuple:
    """source_window of the rows and of the columns: what the kernels take of the mode's index rule."""
    left, right, top, bottom = pads
    return source_window(mode, x_shape[-2], top, bottom), source_window(mode, x_shape[-1], left, right)


@takes_float16(kernels=True)
def pad_backward(dy, x_shape, pad, mode="constant", *, backend=None):
    """Gradient of pad for an input of shape x_shape (3-D or 4-D), given the same pad and mode."""
    _check_input(dy, "dy")
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    pads, out_size, _ = _plan(x_shape, pad, mode, None)
    _checks.shape_is(dy, "dy", x_shape[:-2] + out_size, f" (the output of pad for x of shape {x_shape})")
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        left, right, top, bottom = pads
        h, w = x_shape[-2:]
        if mode == "constant":
            dx = np.zeros(x_shape, dtype=dy.dtype)
            (out_rows, in_rows), (out_cols, in_cols) = _inside(h, top, bottom), _inside(w, left, right)
            dx[..., in_rows, in_cols] = dy[..., out_rows, out_cols]
            return dx
        dx_rows = scatter_taps(dy, [(_axis_sources(mode, w, left, right), None)], dy.ndim - 1, w)
        return scatter_taps(dx_rows, [(_axis_sources(mode, h, top, bottom), None)], dy.ndim - 2, h)
    from ..gpu import pad as gpu_pad
    return gpu_pad.backward(be, _checks.for_kernels(be, dy, "dy"), x_shape, pads, _windows(x_shape, pads, mode), mode)
