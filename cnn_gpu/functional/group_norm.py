"""group_norm and its backward pass (torch.nn.functional.group_norm's semantics).

x is (N, C, *); its C channels fall in num_groups groups of C / num_groups consecutive ones. Each
(sample, group) is normalised over its channels and every trailing axis with its mean and biased
variance, then scaled and shifted per channel: y = (x - mean) * (invstd * weight[c]) + bias[c]. No
running statistics: training and eval alike.

Kernels (kernels/row_norm.cu, shared with layer_norm): each (sample, group) is a row of x's
memory, normalised by one block: the forward is one launch (statistics and y with the affine
fused); the backward one launch for dx (dy * weight fused) and one for dweight and dbias
(fixed-order sums per channel), plus one for the statistics when they are not given. Fewer rows
than the GPU's SMs take (a small batch) are split into slices of several blocks, their
statistics and backward sums in a launch of their own (gpu.row_norm.plan).

NumPy path (the oracle): batch norm's functions on views of x: x viewed as (1, N * G, C / G *
rest) has a sample's group as a channel, whose batch statistics are the group's; the
normalisation runs on x viewed as (1, N * C, rest), each (sample, channel) plane with its group's
statistics and its channel's weight and bias. The backward takes the sums of dy and dy * xhat of
each (sample, channel) plane, summed over the samples for dbias and dweight, and dx as batch
norm's training backward, without affine, of dy * weight on the group view.

float16: statistics, sums and dy * weight in FP32, each output rounded once (on both paths).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from ._normalization import check_backward_arguments, saved_statistic, statistics_of_nothing
from .batch_norm import _channel_array, _invstd, _numpy_backward, _numpy_forward, _numpy_stats


def _group_view(x, groups):
    """(1, N * G, C / G * rest): each (sample, group) a channel."""
    return x.reshape(1, x.shape[0] * groups, -1)


def _plane_view(x):
    """(1, N * C, rest): each (sample, channel) plane a channel."""
    return x.reshape(1, x.shape[0] * x.shape[1], -1)


def _row_layout(x, groups):
    """kernels/row_norm.cu's view of x: a row each (sample, group), a parameter each channel of HW elements."""
    from ..gpu.row_norm import RowLayout
    rows = x.shape[0] * groups
    return RowLayout(rows, x.size // rows, groups, math.prod(x.shape[2:]))


def _per_plane(x, groups, mean, invstd, weight, bias):
    """The group statistics repeated for each channel of the group and the affine parameters for
    each sample: one value per channel of _plane_view(x) (NumPy)."""
    n, per_group = x.shape[0], x.shape[1] // groups
    return (*(np.repeat(a, per_group) for a in (mean, invstd)), *(None if a is None else np.tile(a, n)
                                                                  for a in (weight, bias)))


def _check_common(x, num_groups, weight, bias, eps):
    _checks.array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    groups = _checks.whole_number(num_groups, "num_groups")
    if x.shape[1] % groups:
        raise ValueError(f"the {x.shape[1]} channels of x must be divisible by num_groups ({groups})")
    if x.size and x.size // groups == 1:   # PyTorch's check (its _verify_batch_size of N * C / G, *)
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}")
    _channel_array(weight, "weight", x)
    _channel_array(bias, "bias", x)
    return groups, _checks.real_number(eps, "eps", minimum=0.0)


@takes_float16(kernels=True, compute_outputs=2)
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, return_stats=False, backend=None):
    """Group normalisation as torch.nn.functional.group_norm. Extension: return_stats=True returns
    (y, mean, invstd), the (N, G) statistics of each sample's groups (in the compute type: float32
    for float16 x), which group_norm_backward can reuse."""
    groups, eps = _check_common(x, num_groups, weight, bias, eps)
    be = _backend.resolve(backend, x, weight, bias)
    xp = _backend.array_module(be)
    stats_shape = (x.shape[0], groups)
    if x.size == 0:   # as PyTorch: an empty y
        y = xp.empty(x.shape, x.dtype)
        return (y, *statistics_of_nothing(xp, stats_shape, x.dtype)) if return_stats else y
    if be == "numpy":
        mean, variance = _numpy_stats(_group_view(x, groups))
        invstd = _invstd(variance, eps)
        y = _numpy_forward(_plane_view(x), *_per_plane(x, groups, mean, invstd, weight, bias), None)
        y = y.reshape(x.shape)
    else:
        from ..gpu import row_norm
        x, weight, bias = (_checks.for_kernels(be, a, name) for a, name in ((x, "x"), (weight, "weight"),
                                                                            (bias, "bias")))
        y, mean, invstd = row_norm.forward(be, x, _row_layout(x, groups), weight, bias, eps)
    return (y, mean.reshape(stats_shape), invstd.reshape(stats_shape)) if return_stats else y


@takes_float16(kernels=True, compute_args=("save_mean", "save_invstd"))
def group_norm_backward(dy, x, num_groups, weight=None, bias=None, eps=1e-5, *, save_mean=None, save_invstd=None,
                        backend=None):
    """Gradients of group_norm: (dx, dweight, dbias); dweight / dbias are None when weight / bias
    are. The statistics are save_mean / save_invstd when given (group_norm(..., return_stats=True)),
    otherwise recomputed from x."""
    groups, eps = _check_common(x, num_groups, weight, bias, eps)
    check_backward_arguments(dy, x, save_mean, save_invstd)
    save_mean, save_invstd = (saved_statistic(a, name, x, (x.shape[0], groups), "one value per sample and group")
                              for a, name in ((save_mean, "save_mean"), (save_invstd, "save_invstd")))
    be = _backend.resolve(backend, dy, x, weight, bias, save_mean, save_invstd)
    xp = _backend.array_module(be)
    channels = x.shape[1]
    if x.size == 0:   # sums over no element
        zeros = [None if a is None else xp.zeros(channels, x.dtype) for a in (weight, bias)]
        return (xp.empty(x.shape, x.dtype), *zeros)
    if be != "numpy":
        from ..gpu import row_norm
        dy, x, weight, save_mean, save_invstd = (
            _checks.for_kernels(be, a, name) for a, name in (
                (dy, "dy"), (x, "x"), (weight, "weight"), (save_mean, "save_mean"), (save_invstd, "save_invstd")))
        layout = _row_layout(x, groups)
        if save_mean is None:
            _, save_mean, save_invstd = row_norm.forward(be, x, layout, None, None, eps, write_y=False)
        dx, dweight, dbias = row_norm.backward(be, dy, x, layout, save_mean, save_invstd, weight,
                                               weight is not None or bias is not None)
        return dx, (None if weight is None else dweight), (None if bias is None else dbias)
    channel_shape = (1, channels) + (1,) * (x.ndim - 2)
    g = dy if weight is None else dy * weight.reshape(channel_shape)
    if save_mean is None:
        mean, variance = _numpy_stats(_group_view(x, groups))
        save_mean, save_invstd = mean, _invstd(variance, eps)
    dweight = dbias = None
    if weight is not None or bias is not None:   # (x-hat, a pass over x, only for the parameters' gradients)
        mean, invstd = _per_plane(x, groups, save_mean, save_invstd, None, None)[:2]
        planes, dy_planes = _plane_view(x), _plane_view(dy)
        xhat = (planes - mean[:, None]) * invstd[:, None]
        dbias, dweight = (s.reshape(x.shape[0], channels).sum(axis=0).astype(x.dtype)
                          for s in (dy_planes.sum(axis=(0, 2)), (dy_planes * xhat).sum(axis=(0, 2))))
    dx = _numpy_backward(_group_view(g, groups), _group_view(x, groups), save_mean, save_invstd, None, None, True,
                         None)[0]
    return dx.reshape(x.shape), (None if weight is None else dweight), (None if bias is None else dbias)
