"""Launch code of kernels/pad.cu: F.pad's four modes, forward and backward (a deterministic gather).
The input is `planes` blocks, each padded along `axes` (functional.padding.kernel_axes: outermost
first, each (size, output size, source window), checked against the mode's rules and for a
non-empty output). A launch pads up to three axes; constant mode's more axes take more launches."""
from __future__ import annotations

import math

from .. import backend
from ._grid import THREADS, acc, check_planes, i32, i64, plane_pixel_grid

MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}   # kernels/pad.cu: PAD_*
AXES = 3                                                                # kernels/pad.cu: depth, rows, columns
UNPADDED = (1, 1, (0, 1, 0))                                            # an axis of one, its whole window


def _launches(planes, axes):
    """(planes, axes) of each launch, innermost axes first: up to AXES axes a launch, the axes
    outside them its planes; what a launch padded is one unpadded block of the next launch's
    innermost axis (constant mode only has more axes than AXES; its windows are whole axes)."""
    launches = []
    while len(axes) > AXES:
        outer, inner = axes[:-AXES], axes[-AXES:]
        launches.append((planes * math.prod(size for size, _, _ in outer), inner))
        done = math.prod(out for _, out, _ in inner)
        size, out, (_, _, before) = outer[-1]
        axes = outer[:-1] + [(size * done, out * done, (0, size * done, before * done))]
    return launches + [(planes, axes)]


def _sizes(axes):
    return math.prod(size for size, _, _ in axes), math.prod(out for _, out, _ in axes)


def _args(planes, axes, mode):
    axes = [UNPADDED] * (AXES - len(axes)) + list(axes)
    inputs, outputs = _sizes(axes)
    check_planes("padding", input=inputs, output=outputs)
    # the backward pass's reader positions reach 2 * size + |before| along an axis (circular's wrap)
    i32(*(2 * size + abs(out) + abs(before) for size, out, (_, _, before) in axes))
    sizes, outs, windows = zip(*axes)
    origins, extents, befores = zip(*windows)
    return *i64(planes), *i32(*sizes, *outs, *origins, *extents, *befores, MODES[mode])


def forward(be, x, planes, axes, mode, value, out_shape):
    xp = backend.array_module(be)
    y = x
    for launch_planes, launch_axes in _launches(planes, axes):
        _, outputs = _sizes(launch_axes)
        padded = xp.empty(launch_planes * outputs, dtype=x.dtype)
        backend.launch(be, "pad", x.dtype, "pad_forward", plane_pixel_grid(launch_planes, outputs), (THREADS,),
                       (y, padded, *_args(launch_planes, launch_axes, mode), *acc(x.dtype, value)))
        y = padded
    return y.reshape(out_shape)


def backward(be, dy, planes, axes, mode, x_shape):
    xp = backend.array_module(be)
    dx = dy
    for launch_planes, launch_axes in reversed(_launches(planes, axes)):
        inputs, _ = _sizes(launch_axes)
        gathered = xp.empty(launch_planes * inputs, dtype=dy.dtype)
        backend.launch(be, "pad", dy.dtype, "pad_backward", plane_pixel_grid(launch_planes, inputs), (THREADS,),
                       (dx, gathered, *_args(launch_planes, launch_axes, mode)))
        dx = gathered
    return dx.reshape(x_shape)
