"""pad and its backward pass: torch.nn.functional.pad. `pad` lists (before, after) pairs from the
last dim backwards, as PyTorch orders it: (left, right[, top, bottom[, front, back ...]]). Mode
"constant" pads any number of trailing dims (up to all of them; negative pads crop); "reflect",
"replicate" and "circular" pad the last 1, 2 or 3 dims of a batched or unbatched signal, image or
volume: 2 entries on 2-D/3-D inputs, 4 on 3-D/4-D, 6 on 4-D/5-D.

Per padded dim of `in` inputs and `out` = before + in + after outputs, output d stands at input
position i = d - before and reads: "constant" input i where it exists, else `value`; "reflect" -i
left of the input and 2(in - 1) - i right of it (before, after < in); "replicate" i clamped to the
input. "circular" first crops the input by its negative pads (as PyTorch's _pad_circular does),
then wraps around what is left, of `kept` inputs: i + kept left and i - kept right of it (each
positive pad at most kept: PyTorch checks it against `in`, then fails or copies output it has not
written). The backward pass adds each output's gradient to the input it read.

NumPy path: each dim's source indices per output; the forward pass takes them (a slice into a
filled array for "constant"), the backward pass adds dy back with np.add.at (in output order:
deterministic). The kernels (kernels/pad.cu) pad up to three axes a launch and gather the backward
pass per input element; `kernel_axes` says which.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .upsample import scatter_taps

MODES = ("constant", "reflect", "replicate", "circular")


def layer_padding(padding, dims: int = 2) -> tuple:
    """The padding of a nn.*Pad{dims}d layer in F.pad's order, 2 * dims entries (left, right[, top,
    bottom[, front, back]]): an int pads every side."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, (bool, np.bool_)):
        return (int(padding),) * (2 * dims)
    sides = ("left", "right", "top", "bottom", "front", "back")[:2 * dims]
    if not isinstance(padding, (tuple, list)) or len(padding) != 2 * dims:
        raise ValueError(f"padding must be an int or a tuple of {2 * dims} ints ({', '.join(sides)}), got {padding!r}")
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
    return tuple(int(p) for p in pad)


def source_window(mode, size, before, after):
    """(origin, extent, before) of one axis: the part of the input the mode pads (circular: what
    its negative pads leave, with its positive pads; every other mode: all of it, as given)."""
    if mode != "circular":
        return 0, size, before
    origin = max(-before, 0)
    return origin, size - origin - max(-after, 0), max(before, 0)


def _check_rank(mode, ndim, entries):
    """PyTorch's rules on how many dims `pad` may reach for an input of `ndim` dims, in its order."""
    if entries > 2 * ndim:
        raise ValueError(f"Padding length should be less than or equal to two times the input dimension but got "
                         f"padding length {entries} and input of dimension {ndim}")
    if mode == "constant":
        return
    dims = entries // 2
    if not (1 <= dims <= 3 and ndim in (dims + 1, dims + 2)):   # a signal, an image or a volume
        raise NotImplementedError(f"Padding size {entries} is not supported for {ndim}D input tensor with mode "
                                  f"{mode!r}: pad (left, right) on a 2-D or 3-D input, (left, right, top, bottom) on "
                                  f"a 3-D or 4-D one, 6 entries on a 4-D or 5-D one")


def _check_mode_sizes(mode, x_shape, pairs):
    """The size rules of each mode, in PyTorch's order and words (the last dim first)."""
    for k, (before, after) in enumerate(reversed(pairs)):
        dim = len(x_shape) - 1 - k
        size = x_shape[dim]
        where = f"padding ({before}, {after}) at dimension {dim} of input {list(x_shape)}"
        if mode == "constant" and size + min(before, 0) + min(after, 0) < 0:
            raise ValueError(f"narrow(): length must be non-negative: {where} crops more than the input has")
        if mode == "reflect" and not (before < size and after < size):
            raise ValueError(f"Argument #{4 + 2 * k}: Padding size should be less than the corresponding input "
                             f"dimension, but got: {where}")
        _, kept, _ = source_window(mode, size, before, after)
        if mode == "circular" and not (max(before, 0) <= kept and max(after, 0) <= kept):
            raise ValueError(f"Padding value causes wrapping around more than once: {where} (its negative pads "
                             f"leave {kept} of {size})")


def _plan(x_shape, pad, mode, value):
    """(pairs, output shape, fill value) for an input of shape x_shape: pairs the (before, after)
    of each padded dim, outermost first."""
    if mode not in MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    pad = _pad_tuple(pad)
    fill = fill_value(value)
    if mode != "constant" and fill != 0:
        raise ValueError(f'Padding mode "{mode}" doesn\'t take in value argument')
    _check_rank(mode, len(x_shape), len(pad))
    pairs = tuple(zip(pad[::2], pad[1::2]))[::-1]
    batch = len(x_shape) == len(pairs) + 2   # may be empty, as PyTorch allows
    if mode != "constant" and min(x_shape[int(batch):]) < 1:
        raise ValueError(f"x must have non-empty dimensions (but a batch's) for mode {mode!r}, got shape "
                         f"{tuple(x_shape)}")
    _check_mode_sizes(mode, x_shape, pairs)
    first = len(x_shape) - len(pairs)
    out_shape = tuple(x_shape[:first]) + tuple(s + b + a for s, (b, a) in zip(x_shape[first:], pairs))
    if min(out_shape[1:], default=1) < 1 or (out_shape and out_shape[0] < (0 if first else 1)):
        raise ValueError(f"pad {pad} gives an empty output {out_shape} for an input of shape {tuple(x_shape)} "
                         f"(only an unpadded first dim, a batch, may be empty)")
    return pairs, out_shape, fill


def padded_shape(x_shape, pad, mode="constant") -> tuple:
    """The shape pad(x, pad, mode) gives an input of shape x_shape (ValueError where it refuses)."""
    return _plan(tuple(x_shape), pad, mode, None)[1]


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


def _inside(x_shape, pairs):
    """The output's and the input's slices of the part that is the input itself (constant mode)."""
    first = len(x_shape) - len(pairs)
    out, inp = [slice(None)] * first, [slice(None)] * first
    for size, (before, after) in zip(x_shape[first:], pairs):
        out_start, in_start = max(before, 0), max(-before, 0)
        length = size - in_start - max(-after, 0)
        out.append(slice(out_start, out_start + length))
        inp.append(slice(in_start, in_start + length))
    return tuple(out), tuple(inp)


def kernel_axes(x_shape, pairs, mode):
    """(planes, axes) of what kernels/pad.cu pads: `planes` leading blocks of the input, each padded
    along `axes`, outermost first, each (size, output size, source_window). The reflect, replicate
    and circular modes' axes are the padded dims (at most three). Constant mode's are its
    nonzero-padded dims, every unpadded dim after the first of them merged into the axis before it
    (a pad of p of that axis is p * size elements of the merged one: the same copy and fill), so
    that any number of dims pads in as many axes as it has padded dims (gpu.pad launches three at a
    time)."""
    first = len(x_shape) - len(pairs)
    if mode != "constant":
        planes, axes = math.prod(x_shape[:first]), [(s, b, a) for s, (b, a) in zip(x_shape[first:], pairs)]
    else:
        planes, axes = 1, []
        for size, (before, after) in zip(x_shape, ((0, 0),) * first + tuple(pairs)):
            if before or after:
                axes.append((size, before, after))
            elif axes:
                axes[-1] = tuple(size * entry for entry in axes[-1])
            else:
                planes *= size
        if not axes:   # nothing padded: one axis of every element
            planes, axes = 1, [(planes, 0, 0)]
    return planes, [(s, s + b + a, source_window(mode, s, b, a)) for s, b, a in axes]


@takes_float16(kernels=True)
def pad(x, pad, mode="constant", value=None, *, backend=None):
    """torch.nn.functional.pad (see the module docstring for the dims each mode pads). An empty
    output is refused, but for an empty batch (an unpadded first dim)."""
    _checks.array(x, "x")
    pairs, out_shape, fill = _plan(x.shape, pad, mode, value)
    be = _backend.resolve(backend, x)
    if be == "numpy":
        if mode == "constant":
            y = np.full(out_shape, fill, dtype=x.dtype)
            out_part, in_part = _inside(x.shape, pairs)
            y[out_part] = x[in_part]
            return y
        first = x.ndim - len(pairs)
        for axis, (before, after) in enumerate(pairs, first):
            x = np.take(x, _axis_sources(mode, x.shape[axis], before, after), axis=axis)
        return x
    from ..gpu import pad as gpu_pad
    return gpu_pad.forward(be, _checks.for_kernels(be, x, "x"), *kernel_axes(x.shape, pairs, mode), mode, fill,
                           out_shape)


@takes_float16(kernels=True)
def pad_backward(dy, x_shape, pad, mode="constant", *, backend=None):
    """Gradient of pad for an input of shape x_shape, given the same pad and mode."""
    _checks.array(dy, "dy")
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    pairs, out_shape, _ = _plan(x_shape, pad, mode, None)
    _checks.shape_is(dy, "dy", out_shape, f" (the output of pad for x of shape {x_shape})")
    be = _backend.resolve(backend, dy)
    if be == "numpy":
        if mode == "constant":
            dx = np.zeros(x_shape, dtype=dy.dtype)
            out_part, in_part = _inside(x_shape, pairs)
            dx[in_part] = dy[out_part]
            return dx
        first = dy.ndim - len(pairs)
        for axis, (before, after) in enumerate(pairs, first):
            size = x_shape[axis]
            dy = scatter_taps(dy, [(_axis_sources(mode, size, before, after), None)], axis, size)
        return dy
    from ..gpu import pad as gpu_pad
    return gpu_pad.backward(be, _checks.for_kernels(be, dy, "dy"), *kernel_axes(x_shape, pairs, mode), mode, x_shape)
