"""instance_norm and its backward pass (torch.nn.functional.instance_norm's semantics).

x is (N, C, *). With the input's statistics (use_input_stats, PyTorch's training mode and its
default), each (sample, channel) plane is normalised by its own mean and biased variance and scaled
and shifted per channel: group_norm with one group a channel, the same kernels (row_norm.cu).
Running statistics, where given, move towards the average over the samples of the planes' means
and unbiased variances (PyTorch's update: it runs batch norm on the (1, N C, *) view and averages
the N copies of each channel's statistics). Without the input's statistics (eval with
track_running_stats), the running ones normalise: batch norm in eval mode.
"""
from __future__ import annotations

import math

from .. import backend as _backend
from . import _checks
from ._float16 import COMPUTE, takes_float16
from .batch_norm import batch_norm, batch_norm_backward
from .group_norm import group_norm, group_norm_backward


def _check(x, running_mean, running_var, use_input_stats):
    _checks.array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must be (N, C, ...) with at least 3 dimensions, got shape {tuple(x.shape)}")
    use_input_stats = _checks.flag(use_input_stats, "use_input_stats")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    if not use_input_stats and running_mean is None:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    if use_input_stats and x.size and math.prod(x.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
    return use_input_stats


def _update_running(running, statistic, momentum: float) -> None:
    """running <- (1 - momentum) running + momentum statistic, in the compute type, written in place
    rounded once (a device call: a replay updates again)."""
    compute = COMPUTE if running.dtype.itemsize < COMPUTE.itemsize else running.dtype

    def update():
        running[...] = (running.astype(compute) * compute.type(1 - momentum)
                        + statistic.astype(compute) * compute.type(momentum)).astype(running.dtype)
    _backend.device_call(update)


@takes_float16(kernels=True, updates=("running_mean", "running_var"), compute_outputs=2)
def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1,
                  eps=1e-5, *, return_stats=False, backend=None):
    """Instance normalisation as torch.nn.functional.instance_norm. Extension: return_stats=True
    returns (y, mean, invstd): with the input's statistics the (N, C) ones of each plane (the
    compute type, as group_norm's), else the running ones (as batch_norm's), which
    instance_norm_backward takes as save_mean and save_invstd."""
    use_input_stats = _check(x, running_mean, running_var, use_input_stats)
    factor = _checks.real_number(momentum, "momentum")
    if not use_input_stats:
        return batch_norm(x, running_mean, running_var, weight, bias, False, factor, eps, return_stats=return_stats,
                          backend=backend)
    _checks.same_dtype("x", x, running_mean=running_mean, running_var=running_var)
    be = _backend.resolve(backend, x, running_mean, running_var, weight, bias)
    for name, running in (("running_mean", running_mean), ("running_var", running_var)):
        if running is not None:
            _checks.shape_is(running, name, (x.shape[1],), " (one value per channel)")
            _checks.for_kernels(be, running, name)
            _checks.updatable(running, name)
    y, mean, invstd = group_norm(x, x.shape[1], weight, bias, eps, return_stats=True, backend=be)
    if running_mean is not None and x.size:
        plane = math.prod(x.shape[2:])
        xp = _backend.array_module(be)
        _update_running(running_mean, _backend.device_call(lambda: mean.mean(axis=0)), factor)
        # each plane's unbiased variance from its invstd = 1 / sqrt(var + eps)
        unbiased = _backend.device_call(lambda: ((1 / xp.square(invstd) - invstd.dtype.type(eps))
                                                 * invstd.dtype.type(plane / (plane - 1))).mean(axis=0))
        _update_running(running_var, unbiased, factor)
    return (y, mean, invstd) if return_stats else y


@takes_float16(kernels=True, compute_args=("save_mean", "save_invstd"))
def instance_norm_backward(dy, x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                           eps=1e-5, *, save_mean=None, save_invstd=None, backend=None):
    """Gradients of instance_norm: (dx, dweight, dbias), dweight / dbias None when weight / bias
    are; save_mean / save_invstd as instance_norm(..., return_stats=True) gave them, otherwise
    recomputed."""
    use_input_stats = _check(x, running_mean, running_var, use_input_stats)
    if not use_input_stats:
        return batch_norm_backward(dy, x, running_mean, running_var, weight, bias, False, eps, save_mean=save_mean,
                                   save_invstd=save_invstd, backend=backend)
    return group_norm_backward(dy, x, x.shape[1], weight, bias, eps, save_mean=save_mean, save_invstd=save_invstd,
                               backend=backend)
