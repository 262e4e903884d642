"""batch_norm and its backward pass (torch.nn.functional.batch_norm's semantics).

x is (N, C, *): statistics per channel over N and every trailing axis. Training mode normalises
with the batch mean and biased variance and, when running statistics are given, blends the mean
and the unbiased variance into them in place: running = (1 - momentum) * running + momentum * batch.
Eval mode normalises with the running statistics.

NumPy path (the oracle): two passes per channel (the mean, then the mean squared deviation from
it), y = (x - mean) * (invstd * weight) + bias, the same expression as the kernels, then the fused
activation if any (activation.FUSED_ACTIVATIONS: F.relu's, F.relu6's, F.hardswish's or F.silu's).

float16 (PyTorch's half batch norm): statistics, normalisation and the running-statistics blend
in FP32; y, the gradients and the running statistics stored as float16, each rounded once. The
statistics return_stats hands back stay FP32 (as torch.native_batch_norm's on CUDA; its CPU
kernel rounds them to float16), and batch_norm_backward takes them so.
"""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from ..gpu import batch_norm as gpu_bn   # (at import: an import statement in every call costs 0.5 us)
from . import _checks
from ._float16 import takes_float16
from ._normalization import check_backward_arguments
from .activation import FUSED_ACTIVATIONS, fused_activation, fused_activation_gradient

ACTIVATIONS = (None, *FUSED_ACTIVATIONS)


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _numpy_stats(x):
    """(mean, biased variance) per channel, two-pass, in x's dtype."""
    axes = _reduce_axes(x)
    mean = x.mean(axis=axes)
    deviation = x - mean.reshape(_channel_shape(x))
    return mean, (deviation * deviation).mean(axis=axes)


def _invstd(variance, eps):
    return 1 / np.sqrt(variance + variance.dtype.type(eps))


def _numpy_forward(x, mean, invstd, weight, bias, activation):
    shape = _channel_shape(x)
    scale = invstd if weight is None else invstd * weight
    y = (x - mean.reshape(shape)) * scale.reshape(shape)
    if bias is not None:
        y += bias.reshape(shape)
    return y if activation is None else fused_activation(activation, y)


def _numpy_backward(dy, x, mean, invstd, weight, bias, training, activation):
    shape = _channel_shape(x)
    axes = _reduce_axes(x)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    scale = invstd if weight is None else invstd * weight
    g = dy
    if activation is not None:   # its input recomputed, as the kernels do (batch_norm.cu)
        g = fused_activation_gradient(activation, dy, _numpy_forward(x, mean, invstd, weight, bias, None))
    sum_g = g.sum(axis=axes)
    sum_g_xhat = (g * xhat).sum(axis=axes)
    if training:
        count = x.size // x.shape[1]
        g = g - (sum_g / count).reshape(shape) - xhat * (sum_g_xhat / count).reshape(shape)
    dx = g * scale.reshape(shape)
    return dx, (None if weight is None else sum_g_xhat), (None if bias is None else sum_g)


# --- argument checks ----------------------------------------------------------------------------

def _channel_array(a, name, x, compute_too=False):
    """One value per channel of x, in x's dtype (or with compute_too in the compute type: a saved
    statistic, FP32 for float16 x)."""
    if a is None:
        return None
    if type(a) is np.ndarray and a.dtype is x.dtype and a.ndim == 1 and a.shape[0] == x.shape[1]:
        return a   # the usual parameter or statistic (x is checked before): what the checks below pass
    _checks.array(a, name, ndim=1)
    _checks.shape_is(a, name, (x.shape[1],), " (one value per channel of x)")
    if a.dtype != x.dtype and not (compute_too and a.dtype == _backend.compute_dtype(x.dtype)):
        _checks.same_dtype("x", x, **{name: a})   # refuses
    return a


def _check_common(x, running_mean, running_var, weight, bias, training, eps, activation, have_stats=False):
    _checks.array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _channel_array(a, name, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    training = _checks.flag(training, "training")
    if not training and running_mean is None and not have_stats:
        raise ValueError("running_mean and running_var must be given in eval mode (training=False)")
    if training and x.size // max(x.shape[1], 1) <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, {', '.join(map(repr, FUSED_ACTIVATIONS))}, got {activation!r}")
    eps = _checks.real_number(eps, "eps", minimum=0.0)
    if training and eps == 0.0:   # a constant channel would divide by zero (PyTorch refuses it too)
        raise ValueError("eps must be positive during training, got 0.0")
    return training, eps


# --- public ops ---------------------------------------------------------------------------------

@takes_float16(kernels=True, updates=("running_mean", "running_var"), compute_outputs=2)
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               activation=None, return_stats=False, backend=None):
    """Batch normalisation as torch.nn.functional.batch_norm; running_mean / running_var (both or
    neither; required in eval mode) are updated in place when training.

    Extensions: activation="relu", "relu6", "hardswish" or "silu" applies that activation to the output
    in the same pass (F.relu, F.relu6, F.hardswish, F.silu: their formulas and rules at the kinks and
    special values; batch_norm_backward takes the same activation and its gradient in its passes, from
    the normalised value recomputed; float16: that value is not rounded to float16 in between, so the
    result is rounded once, where the two ops apart round twice);
    return_stats=True returns (y, mean, invstd), the statistics y was normalised with (batch
    statistics when training, running ones otherwise), which batch_norm_backward can reuse: in
    the compute type (float32 for float16 x, as torch.native_batch_norm's save_mean and
    save_invstd on CUDA), so the backward uses exactly the forward's, with no conversion launched."""
    training, eps = _check_common(x, running_mean, running_var, weight, bias, training, eps, activation)
    factor = _checks.real_number(momentum, "momentum")
    if training:
        _checks.updatable(running_mean, "running_mean")
        _checks.updatable(running_var, "running_var")
    be = _backend.resolve(backend, x, running_mean, running_var, weight, bias)
    if be == "numpy":
        if training:
            mean, variance = _numpy_stats(x)
            if running_mean is not None:
                count = x.size // x.shape[1]
                running_mean *= 1 - factor
                running_mean += factor * mean
                running_var *= 1 - factor
                running_var += factor * (variance * (count / (count - 1)))
        else:
            mean, variance = running_mean, running_var
        invstd = _invstd(variance, eps)
        y = _numpy_forward(x, mean, invstd, weight, bias, activation)
        return (y, mean if training else mean.copy(), invstd) if return_stats else y
    if training and running_mean is not None and not (running_mean.flags.c_contiguous
                                                      and running_var.flags.c_contiguous):
        raise ValueError(f"running_mean and running_var must be C-contiguous on the {be} backend, which updates "
                         f"them in place")
    x, running_mean, running_var, weight, bias = (
        _checks.for_kernels(be, a, name) for a, name in ((x, "x"), (running_mean, "running_mean"),
                                                         (running_var, "running_var"), (weight, "weight"),
                                                         (bias, "bias")))
    if training:
        mean, invstd = gpu_bn.stats(be, x, running_mean, running_var, factor, eps)
        y = gpu_bn.forward(be, x, mean, invstd, weight, bias, eps, False, activation)
        return (y, mean, invstd) if return_stats else y   # acc_t: the kernels' statistics as they are
    y = gpu_bn.forward(be, x, running_mean, running_var, weight, bias, eps, True, activation)
    if not return_stats:
        return y
    compute = _backend.compute_dtype(x.dtype)
    xp = _backend.array_module(be)
    invstd = _backend.device_call(lambda: 1 / xp.sqrt(running_var.astype(compute) + compute.type(eps)))
    return y, _backend.device_call(running_mean.astype, compute), invstd


@takes_float16(kernels=True, compute_args=("save_mean", "save_invstd"))
def batch_norm_backward(dy, x, running_mean, running_var, weight=None, bias=None, training=False, eps=1e-5, *,
                        activation=None, save_mean=None, save_invstd=None, backend=None):
    """Gradients of batch_norm: (dx, dweight, dbias); dweight / dbias are None when weight / bias
    are. The statistics are save_mean / save_invstd when given (from batch_norm(...,
    return_stats=True): x's dtype or the compute type, float32 for float16 x), otherwise the
    batch's, recomputed from x (training) or the running ones (eval). In training mode the
    gradient also flows through the batch statistics. activation: the one batch_norm fused (its
    gradient applied first, at the normalised value recomputed from x and the statistics)."""
    training, eps = _check_common(x, running_mean, running_var, weight, bias, training, eps, activation,
                                  have_stats=save_mean is not None)
    check_backward_arguments(dy, x, save_mean, save_invstd)
    _channel_array(save_mean, "save_mean", x, compute_too=True)
    _channel_array(save_invstd, "save_invstd", x, compute_too=True)
    be = _backend.resolve(backend, dy, x, running_mean, running_var, weight, bias, save_mean, save_invstd)
    if be == "numpy":
        if save_mean is not None:
            mean, invstd = save_mean, save_invstd
        elif not training:
            mean, invstd = running_mean, _invstd(running_var, eps)
        else:
            mean, variance = _numpy_stats(x)
            invstd = _invstd(variance, eps)
        return _numpy_backward(dy, x, mean, invstd, weight, bias, training, activation)
    dy, x, running_mean, running_var, weight, bias, save_mean, save_invstd = (
        _checks.for_kernels(be, a, name) for a, name in (
            (dy, "dy"), (x, "x"), (running_mean, "running_mean"), (running_var, "running_var"),
            (weight, "weight"), (bias, "bias"), (save_mean, "save_mean"), (save_invstd, "save_invstd")))
    if save_mean is not None:
        mean, source, from_variance = save_mean, save_invstd, False
    elif not training:
        mean, source, from_variance = running_mean, running_var, True
    else:
        mean, source = gpu_bn.stats(be, x, None, None, 0.0, eps)
        from_variance = False
    dx, dweight, dbias = gpu_bn.backward(be, dy, x, mean, source, weight, bias, eps, from_variance, training,
                                         activation)
    return dx, (None if weight is None else dweight), (None if bias is None else dbias)
