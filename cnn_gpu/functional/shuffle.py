"""Rearrangements of channels and pixels (PyTorch's pixel_shuffle, pixel_unshuffle and
channel_shuffle): each output element is one input element, so each op is a reshape, an axis
permutation and one copy to C order (NumPy's on numpy and emu, CuPy's on cuda: a copy needs no
kernel of ours), and its backward is the inverse rearrangement of dy. Any dtype; no rounding.

    pixel_shuffle(x, r):   (*, C r^2, H, W) -> (*, C, H r, W r),
                           y[..., c, h r + i, w r + j] = x[..., c r^2 + i r + j, h, w]
    pixel_unshuffle(x, r): its inverse
    channel_shuffle(x, g): (N, C, *) -> (N, C, *), channel a g + b of y is channel b (C/g) + a of x
                           (the (g, C/g) grid of channels transposed: ShuffleNet's shuffle)
"""
from __future__ import annotations

from .. import backend as _backend
from . import _checks


def _factor(value, what: str, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{op}(): {what} must be int, not {type(value).__name__}")
    if int(value) <= 0:
        raise ValueError(f"{op} expects a positive {what}, but got {int(value)}")
    return int(value)


def _image_input(x, op: str, backend):
    """The backend of an op on (*, C, H, W) images, after checking x."""
    _checks.array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"{op} expects input to have at least 3 dimensions, but got input with {x.ndim} dimension(s)")
    be = _backend.resolve(backend, x)
    _checks.for_kernels(be, x, "x")
    return be


def _rearranged(be: str, x, split: tuple, axes: tuple, shape: tuple):
    """x viewed as `split`, its axes permuted to `axes`, copied to C order as `shape` (a replay
    copies again: backend.device_call)."""
    xp = _backend.array_module(be)
    return _backend.device_call(lambda: xp.ascontiguousarray(x.reshape(split).transpose(axes)).reshape(shape))


def _shuffle(x, r: int, be: str):
    *batch, channels, h, w = x.shape
    lead = len(batch)
    c = channels // (r * r)
    split = (*batch, c, r, r, h, w)
    axes = (*range(lead), lead, lead + 3, lead + 1, lead + 4, lead + 2)
    return _rearranged(be, x, split, axes, (*batch, c, h * r, w * r))


def _unshuffle(x, r: int, be: str):
    *batch, c, height, width = x.shape
    lead = len(batch)
    h, w = height // r, width // r
    split = (*batch, c, h, r, w, r)
    axes = (*range(lead), lead, lead + 2, lead + 4, lead + 1, lead + 3)
    return _rearranged(be, x, split, axes, (*batch, c * r * r, h, w))


def _check_shuffle(x, r: int) -> None:
    if x.shape[-3] % (r * r):
        raise ValueError(f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the square of "
                         f"upscale_factor, but input.size(-3)={x.shape[-3]} is not divisible by {r * r}")


def _check_unshuffle(x, r: int, name: str = "input") -> None:
    for axis, side in ((-2, "height"), (-1, "width")):
        if x.shape[axis] % r:
            raise ValueError(f"pixel_unshuffle expects {side} to be divisible by downscale_factor, but "
                             f"{name}.size({axis})={x.shape[axis]} is not divisible by {r}")


def pixel_shuffle(x, upscale_factor, backend=None):
    """(*, C r^2, H, W) -> (*, C, H r, W r), r = upscale_factor (sub-pixel convolution's output)."""
    r = _factor(upscale_factor, "upscale_factor", "pixel_shuffle")
    be = _image_input(x, "pixel_shuffle", backend)
    _check_shuffle(x, r)
    return _shuffle(x, r, be)


def pixel_shuffle_backward(dy, upscale_factor, backend=None):
    """dx of pixel_shuffle: pixel_unshuffle(dy)."""
    r = _factor(upscale_factor, "upscale_factor", "pixel_shuffle")
    be = _image_input(dy, "pixel_shuffle_backward", backend)
    _check_unshuffle(dy, r, "dy")
    return _unshuffle(dy, r, be)


def pixel_unshuffle(x, downscale_factor, backend=None):
    """(*, C, H r, W r) -> (*, C r^2, H, W), r = downscale_factor."""
    r = _factor(downscale_factor, "downscale_factor", "pixel_unshuffle")
    be = _image_input(x, "pixel_unshuffle", backend)
    _check_unshuffle(x, r)
    return _unshuffle(x, r, be)


def pixel_unshuffle_backward(dy, downscale_factor, backend=None):
    """dx of pixel_unshuffle: pixel_shuffle(dy)."""
    r = _factor(downscale_factor, "downscale_factor", "pixel_unshuffle")
    be = _image_input(dy, "pixel_unshuffle_backward", backend)
    _check_shuffle(dy, r)
    return _shuffle(dy, r, be)


def _channel_groups(x, groups, backend):
    g = _factor(groups, "groups", "channel_shuffle")
    _checks.array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"channel_shuffle expects input with > 2 dims, but got input with sizes {list(x.shape)}")
    if x.shape[1] % g:
        raise ValueError(f"Number of channels must be divisible by groups. Got {x.shape[1]} channels and {g} groups.")
    be = _backend.resolve(backend, x)
    _checks.for_kernels(be, x, "x")
    return g, be


def _transpose_channels(x, rows: int, be: str):
    n, c, *rest = x.shape
    return _rearranged(be, x, (n, rows, c // rows, *rest), (0, 2, 1, *range(3, x.ndim + 1)), x.shape)


def channel_shuffle(x, groups, backend=None):
    """(N, C, *): the channels as a (groups, C / groups) grid, transposed (ShuffleNet)."""
    g, be = _channel_groups(x, groups, backend)
    return _transpose_channels(x, g, be)


def channel_shuffle_backward(dy, groups, backend=None):
    """dx of channel_shuffle: the (C / groups, groups) grid of dy's channels transposed back."""
    g, be = _channel_groups(dy, groups, backend)
    return _transpose_channels(dy, dy.shape[1] // g, be)
