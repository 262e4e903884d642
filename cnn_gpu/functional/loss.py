"""Losses with PyTorch's options, each returning (loss, gradient of that loss): softmax
cross-entropy, negative log likelihood, mean squared error, L1, smooth L1, Huber, KL divergence,
binary cross entropy (on probabilities or logits), soft margin, hinge embedding, Poisson and
Gaussian NLL and multi-label soft margin, computed in the input's dtype; margin_ranking_loss and
gaussian_nll_loss return two gradients (their two inputs', input's and var's). The element-wise
losses but BCE broadcast input and target as PyTorch's (their gradient summed back to the input's
shape); mse_loss, l1_loss and huber_loss take PyTorch 2.13's weight.

reduction="mean" or "sum": the loss is a Python float, or with as_array=True (an extension) the
same value as a 0-d float64 array on the input's backend, not read back: on a GPU, reading a float
waits for every queued kernel (a host synchronisation), so a training loop that reads every step
leaves the GPU idle while it queues the next one. reduction="none": the loss is an array of
per-position (cross_entropy, nll_loss) or per-element (the others) losses, of the input's kind and dtype, and
the gradient is that of their sum (multiply it by an upstream gradient yourself).

Cross entropy, for every position (row of classes) with target mass
    m_c = w_c * ((1 - label_smoothing) * t_c + label_smoothing / C)
(w the class weights, t the class probabilities or the one-hot row of a class index; m = 0 where the
index equals ignore_index) is sum_c m_c * (-log_softmax(x)_c), whose gradient is
softmax(x) * sum_c m_c - m. This is exactly PyTorch's sum of its NLL and label-smoothing terms.
The mean over class indices divides by the summed weights w[target] of the counted (not ignored)
targets; the mean over class probabilities by the number of positions (PyTorch's rules). Where the
counted targets' weights sum to 0 with label_smoothing > 0, the loss and the counted rows' gradients
are NaN: PyTorch divides its NLL and smoothing terms separately, and the NLL term is then 0/0 (for
non-negative weights), where dividing their sum once would give inf.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np

from .. import backend as _backend
from .. import replay
from ..gpu.loss import broadcast_axes, index_mean_divisor, mean_of
from . import _checks
from ._float16 import takes_float16
from .distance import _lp_norm_gradient

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _nothing(be, reduction, pred, loss_shape, as_array: bool):
    """The loss of an empty input, as PyTorch gives it (NaN mean, zero sum, empty array), with an
    (empty) gradient of pred's shape."""
    xp = _backend.array_module(be)
    if reduction == "none":
        loss = xp.empty(loss_shape, dtype=pred.dtype)
    else:
        loss = math.nan if reduction == "mean" else 0.0
        if as_array:
            loss = xp.asarray(loss, dtype=np.float64)
    return loss, xp.empty_like(pred)


def _refuse_float_in_recording(reduction: str, as_array: bool) -> None:
    if reduction != "none" and not as_array:
        replay.refuse("a loss read back as a float (pass as_array=True: the loss stays an array a replay rewrites)")


def _as_array(loss: float, as_array: bool):
    """The NumPy path's float loss, as a 0-d float64 array when asked for."""
    return np.asarray(loss, dtype=np.float64) if as_array else loss


# --- cross entropy ------------------------------------------------------------------------------

def _classes(logits) -> int:
    return logits.shape[0] if logits.ndim == 1 else logits.shape[1]


def _positions_shape(logits) -> tuple:
    """The shape of the per-position losses (and of class-index targets): (N, d1, ..., dk), () unbatched."""
    return logits.shape[:1] + logits.shape[2:] if logits.ndim > 1 else ()


def _class_rows(a, classes: int):
    """(N, C, d1..dk) (or (C,)) as (N*d1*...*dk, C): one row of classes per position."""
    if a.ndim == 1:
        return a.reshape(1, classes)
    return np.moveaxis(a.reshape(a.shape[0], classes, -1), 1, 2).reshape(-1, classes)


def _from_class_rows(rows, shape):
    """The inverse of _class_rows."""
    if len(shape) == 1:
        return rows.reshape(shape)
    n, classes = shape[0], shape[1]
    return np.ascontiguousarray(np.moveaxis(rows.reshape(n, -1, classes), 2, 1)).reshape(shape)


def _cross_entropy(logits, labels, probabilities, weight, ignore_index, label_smoothing, reduction):
    """The NumPy path (and the kernels' oracle); see the module docstring for the formulas."""
    classes = _classes(logits)
    dtype = logits.dtype.type
    x = _class_rows(logits, classes)
    z = x - x.max(axis=1, keepdims=True)   # log-softmax without overflow
    exp = np.exp(z)
    sum_exp = exp.sum(axis=1, keepdims=True)
    class_weight = np.ones(classes, dtype) if weight is None else weight
    keep, spread = dtype(1 - label_smoothing), dtype(label_smoothing / classes)
    if probabilities is not None:
        counted = np.ones(len(x), dtype=bool)
        mass = class_weight * (keep * _class_rows(probabilities, classes) + spread)
    else:
        indices = labels.reshape(-1)
        counted = indices != ignore_index
        one_hot = np.zeros_like(x)
        one_hot[np.flatnonzero(counted), indices[counted]] = 1
        mass = np.where(counted[:, None], class_weight * (keep * one_hot + spread), dtype(0))
    total_mass = mass.sum(axis=1, keepdims=True)
    weighted = np.where(mass != 0, mass * z, dtype(0)).sum(axis=1)   # 0 * (-inf) adds nothing
    # an ignored row adds nothing, even one of -inf logits (whose log-softmax is NaN), as in PyTorch
    row_loss = np.where(counted, total_mass[:, 0] * np.log(sum_exp[:, 0]) - weighted, dtype(0))
    if reduction == "mean":
        divisor = len(x) if labels is None else index_mean_divisor(np, class_weight[indices[counted]].sum(),
                                                                   label_smoothing)
    else:
        divisor = 1
    grad = exp / sum_exp * total_mass - mass
    with np.errstate(divide="ignore", invalid="ignore"):
        grad[counted] /= dtype(divisor)   # an ignored row's gradient stays 0 even when divisor is 0
    grad = _from_class_rows(grad, logits.shape)
    if reduction == "none":
        return row_loss.reshape(_positions_shape(logits)), grad
    return mean_of(row_loss.sum(), divisor), grad


def _check_class_indices(target, classes: int, ignore_index):
    """ValueError naming the first entry that is neither a class index nor ignore_index (None: none)."""
    bad = (target < 0) | (target >= classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        where = tuple(int(i) for i in np.unravel_index(int(bad.ravel().argmax()), target.shape))
        ignored = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
        raise ValueError(f"target{list(where)} = {int(target[where])} is out of range for {classes} classes "
                         f"(class indices must lie in [0, {classes}){ignored})")


def _cross_entropy_target(logits, target, ignore_index):
    """(class indices as int64 or None, class probabilities or None), checked against logits (the
    indices' values by the caller: _check_class_indices)."""
    if not _checks.is_array(target):
        raise TypeError(f"target must be a NumPy or CuPy array, got {type(target).__name__}")
    if tuple(target.shape) == tuple(logits.shape):
        # PyTorch's rule: a target of the logits' shape holds class probabilities
        if target.dtype.kind != "f":
            raise TypeError(f"target of the logits' shape {tuple(logits.shape)} holds class probabilities and must "
                            f"be float16, float32 or float64, got dtype {target.dtype}")
        _checks.same_dtype("logits", logits, target=target)
        if ignore_index >= 0:
            raise ValueError(f"ignore_index ({ignore_index}) is not supported with class-probability targets; "
                             f"leave it negative (default -100)")
        return None, target
    return _class_indices(logits, target, " (or float class probabilities of the logits' shape)"), None


def _class_indices(logits, target, alternative: str = ""):
    """Class-index `target` for `logits`, checked (its values by the caller: _check_class_indices) and
    widened to int64; `alternative` names what else the op would take."""
    if not _checks.is_array(target):
        raise TypeError(f"target must be a NumPy or CuPy array, got {type(target).__name__}")
    if target.dtype.kind not in "iu" or target.dtype == np.uint64:
        raise TypeError(f"target must hold integer class indices{alternative}, got dtype {target.dtype}")
    _checks.shape_is(target, "target", _positions_shape(logits),
                     " (one class index per position: logits' shape without the class dimension)")
    # int32 or uint8 labels are widened by a device call: a replay (cnn_gpu.replay) widens its own
    return _backend.astype(target, np.int64)


def _class_loss_options(logits, name: str, ignore_index, reduction) -> tuple[int, str]:
    """cross_entropy's and nll_loss's first checks: their input (`name`) and options."""
    _checks.array(logits, name)
    if logits.ndim == 0:
        raise ValueError(f"{name} must be (C,), (N, C) or (N, C, d1, ..., dk), got a 0-D array")
    return check_ignore_index(ignore_index), check_reduction(reduction)


def _class_loss_backend(logits, name: str, target, labels, weight, ignore_index: int, reduction: str, backend,
                        as_array: bool, before_launch: bool = False) -> str:
    """cross_entropy's, nll_loss's and multi_margin_loss's checks after their target's: the class
    weights, the backend (returned), the replay rule; class indices (labels) now on numpy, for
    reduction "none", for empty logits ((N, 0): no class is in range), and with `before_launch`
    wherever the loss is read back (not as_array). The kernels' other paths check them by the loss
    read back, when it is NaN (_class_loss_result; or not at all: as_array)."""
    if weight is not None:
        _checks.array(weight, "weight", ndim=1)
        _checks.shape_is(weight, "weight", (_classes(logits),), " (one weight per class)")
        _checks.same_dtype(name, logits, weight=weight)
    be = _backend.resolve(backend, logits, target, weight)
    _refuse_float_in_recording(reduction, as_array)
    if labels is not None and (be == "numpy" or reduction == "none" or logits.size == 0
                               or (before_launch and not as_array)):
        _check_class_indices(labels, _classes(logits), ignore_index)
    return be


def _class_loss_result(loss, grad, loss_shape, labels, classes: int, ignore_index: int, reduction: str,
                       as_array: bool):
    """The kernels' (loss, gradient) of cross_entropy or nll_loss: the per-position losses in
    loss_shape, or a float loss whose NaN may be an index out of range (then named)."""
    if reduction == "none":
        return loss.reshape(loss_shape), grad
    if labels is not None and not as_array and math.isnan(loss):   # an index out of range, or NaN inputs
        _check_class_indices(labels, classes, ignore_index)
    return loss, grad


def check_ignore_index(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"ignore_index must be an int, got {value!r}")
    if not -2**63 <= value.__index__() < 2**63:
        raise ValueError(f"ignore_index must fit in 64 bits (PyTorch's int64), got {value!r}")
    return value.__index__()


def check_label_smoothing(value) -> float:
    value = _checks.real_number(value, "label_smoothing", minimum=0.0)
    if value > 1:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {value}")
    return value


@takes_float16(kernels=True)
def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                  backend=None, as_array=False):
    """Softmax cross entropy as torch.nn.functional.cross_entropy -> (loss, dlogits).

    logits (N, C), (N, C, d1, ..., dk) or unbatched (C,); target either class indices, an integer
    array of shape (N, d1, ..., dk) (() for unbatched) with values in [0, C) or equal to
    ignore_index (those positions count for nothing), or class probabilities, a float array of the
    logits' shape. weight: optional per-class weights (C,). reduction "mean", "sum" or "none";
    label_smoothing in [0, 1] mixes each target with the uniform distribution.

    loss: a Python float for "mean"/"sum", the per-position losses (N, d1, ..., dk) for "none".
    dlogits: the gradient of loss (of the sum of the per-position losses for "none").
    as_array=True (an extension): a "mean"/"sum" loss as a 0-d float64 array (the float's value) on
    the logits' backend, not read back (see the module docstring). Class indices out of range are
    then refused on numpy only: on emu and cuda, where checking them would read back, they make the
    loss NaN (PyTorch on CUDA stops at a device-side assertion). Without as_array the kernels'
    paths check the indices only when the loss they read back is NaN, which an index out of range
    makes it: the one read back stays the loss's own.
    Unlike PyTorch: any integer dtype but uint64 is taken for class indices (PyTorch: int64 and
    uint8), and a negative label_smoothing is refused (PyTorch ignores it)."""
    ignore_index, reduction = _class_loss_options(logits, "logits", ignore_index, reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    labels, probabilities = _cross_entropy_target(logits, target, ignore_index)
    classes = _classes(logits)
    be = _class_loss_backend(logits, "logits", target, labels, weight, ignore_index, reduction, backend, as_array)
    loss_shape = _positions_shape(logits)
    if logits.size == 0:
        return _nothing(be, reduction, logits, loss_shape, as_array)
    if be == "numpy":
        loss, dlogits = _cross_entropy(logits, labels, probabilities, weight, ignore_index, label_smoothing,
                                       reduction)
        return (loss if reduction == "none" else _as_array(loss, as_array)), dlogits
    from ..gpu import loss as gpu_loss
    named = ((logits, "logits"), (labels, "target"), (probabilities, "target"), (weight, "weight"))
    logits, labels, probabilities, weight = (_checks.for_kernels(be, a, n) for a, n in named)
    inner = math.prod(logits.shape[2:])
    loss, dlogits = gpu_loss.cross_entropy(
        be, logits, None if labels is None else labels.reshape(-1), probabilities, weight, classes=classes,
        inner=inner, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        as_array=as_array)
    return _class_loss_result(loss, dlogits, loss_shape, labels, classes, ignore_index, reduction, as_array)


# --- negative log likelihood --------------------------------------------------------------------

def _nll_loss(log_probs, labels, weight, ignore_index, reduction):
    """The NumPy path (and the kernels' oracle): -w[t] * x[t] a position, the mean over the summed
    weights of the counted targets, the gradient PyTorch's w[t] * (-1 / divisor) at each target."""
    classes = _classes(log_probs)
    dtype = log_probs.dtype.type
    x = _class_rows(log_probs, classes)
    indices = labels.reshape(-1)
    rows = np.flatnonzero(indices != ignore_index)
    picked = indices[rows]
    target_weight = np.zeros(len(x), dtype)
    target_weight[rows] = 1 if weight is None else weight[picked]
    row_loss = np.zeros(len(x), dtype)
    row_loss[rows] = -x[rows, picked] * target_weight[rows]
    divisor = target_weight.sum() if reduction == "mean" else dtype(1)
    grad = np.zeros_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):   # a mean over no counted weight: NaN, as PyTorch's
        grad[rows, picked] = target_weight[rows] * -(dtype(1) / divisor)
    grad = _from_class_rows(grad, log_probs.shape)
    if reduction == "none":
        return row_loss.reshape(_positions_shape(log_probs)), grad
    return mean_of(row_loss.sum(), divisor), grad


@takes_float16(kernels=True)
def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", *, backend=None, as_array=False):
    """Negative log likelihood as torch.nn.functional.nll_loss -> (loss, dinput): input holds
    log-probabilities (log_softmax's output) laid out as cross_entropy's logits, (N, C),
    (N, C, d1, ..., dk) or unbatched (C,); target class indices (N, d1, ..., dk) (() unbatched) in
    [0, C) or equal to ignore_index; weight optional per-class weights (C,). The loss of a position
    is -weight[t] * input[t] (0 where ignored); the mean divides by the summed weights of the counted
    targets (NaN when they sum to 0, as PyTorch's). loss, dinput, as_array and the checks of class
    indices as cross_entropy's; class probabilities are not taken (as PyTorch's nll_loss)."""
    ignore_index, reduction = _class_loss_options(input, "input", ignore_index, reduction)
    labels = _class_indices(input, target)
    be = _class_loss_backend(input, "input", target, labels, weight, ignore_index, reduction, backend, as_array)
    loss_shape = _positions_shape(input)
    if input.size == 0:
        return _nothing(be, reduction, input, loss_shape, as_array)
    if be == "numpy":
        loss, dinput = _nll_loss(input, labels, weight, ignore_index, reduction)
        return (loss if reduction == "none" else _as_array(loss, as_array)), dinput
    from ..gpu import loss as gpu_loss
    input, labels, weight = (_checks.for_kernels(be, a, n) for a, n in ((input, "input"), (labels, "target"),
                                                                          (weight, "weight")))
    loss, dinput = gpu_loss.nll(be, input, labels.reshape(-1), weight, classes=_classes(input),
                                inner=math.prod(input.shape[2:]), ignore_index=ignore_index, reduction=reduction,
                                as_array=as_array)
    return _class_loss_result(loss, dinput, loss_shape, labels, _classes(input), ignore_index, reduction, as_array)


# --- element-wise losses ------------------------------------------------------------------------

def _elementwise_checks(pred, target, name: str, reduction, backend, as_array: bool, **weights) -> tuple[str, str]:
    """An element-wise loss's checks -> (reduction, backend): float arrays of one shape and dtype
    (pred named `name`), the reduction, optional weights broadcasting to pred's shape, the replay rule."""
    _checks.array(pred, name)
    _checks.array(target, "target")
    _checks.same_dtype(name, pred, target=target)
    _checks.shape_is(target, "target", pred.shape, f" (the shape of {name})")
    reduction = check_reduction(reduction)
    for weight_name, weight in weights.items():
        _element_weight(weight, pred, weight_name)
    be = _backend.resolve(backend, pred, target, *weights.values())
    _refuse_float_in_recording(reduction, as_array)
    return reduction, be


def _elementwise_result(be, reduction, values, grad, as_array):
    """The NumPy path's (loss, gradient) of per-element losses `values`."""
    if reduction == "none":
        return np.asarray(values), np.asarray(grad)   # 0-d inputs: arrays, not scalars
    count = values.size if reduction == "mean" else 1
    return _as_array(mean_of(values.sum(), count), as_array), np.asarray(grad)


def _warn_at_caller(message: str) -> None:
    """A UserWarning attributed to the first caller outside cnn_gpu (torch's stacklevel=2 names the
    caller of F.<loss>; ours are called through a decorator, helpers and nn's layers)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _broadcast_checks(input, target, reduction, weight, backend, as_array, warn: bool,
                      name: str = "input") -> tuple[tuple, str]:
    """The checks of the losses that broadcast input (named `name`) and target as PyTorch's ->
    (their broadcast shape, backend): float arrays of one dtype, torch's UserWarning where the sizes
    differ (`warn`), shapes that broadcast, an optional weight of input's shape, the replay rule
    (reduction checked by the caller)."""
    _checks.array(input, name)
    _checks.array(target, "target")
    _checks.same_dtype(name, input, target=target)
    if warn and tuple(target.shape) != tuple(input.shape):
        _warn_at_caller(f"Using a target size ({_torch_size(target)}) that is different to the input size "
                        f"({_torch_size(input)}). This will likely lead to incorrect results due to broadcasting. "
                        f"Please ensure they have the same size.")
    try:
        shape = np.broadcast_shapes(input.shape, target.shape)
    except ValueError:
        raise ValueError(f"target of shape {tuple(target.shape)} does not broadcast with {name} of shape "
                         f"{tuple(input.shape)}") from None
    if weight is not None:
        _checks.array(weight, "weight")
        _checks.same_dtype(name, input, weight=weight)
        _checks.shape_is(weight, "weight", input.shape, f" (the shape of {name}, as PyTorch's)")
    be = _backend.resolve(backend, input, target, weight)
    _refuse_float_in_recording(reduction, as_array)
    return shape, be


def _torch_size(a) -> str:
    return f"torch.Size([{', '.join(str(n) for n in a.shape)}])"


HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)   # the Gaussian NLL's and Stirling's constant


def _pointwise(kind: str, x, t, beta: float, other=None, full: bool = False):
    """The NumPy path's per-element losses, their slopes and (margin ranking's input2, the Gaussian
    NLL's var: `other`) the slopes of the third operand, else None (kernels/loss.cu's
    regression_loss_rows), PyTorch's formulas; sign(0) = 0 at the kinks, and clamp_min's gradient
    passes at its bound."""
    dtype = x.dtype.type
    d = np.asarray(x - t)
    z = np.abs(d)
    sign = np.where(d > 0, dtype(1), np.where(d < 0, dtype(-1), dtype(0)))   # 0 at NaN too, as torch's sign
    zero, one = dtype(0), dtype(1)
    if kind == "l1":
        return z, sign, None
    if kind == "smooth_l1":
        return (np.where(z < beta, dtype(0.5) * z * z / dtype(beta), z - dtype(0.5 * beta)),
                np.where(z > beta, sign, d / dtype(beta)), None)
    if kind == "huber":
        return (np.where(z < beta, dtype(0.5) * z * z, dtype(beta) * (z - dtype(0.5 * beta))),
                np.where(z > beta, sign * dtype(beta), d), None)
    if kind == "mse":
        return d * d, dtype(2) * d, None
    if kind == "kl_div":
        with np.errstate(divide="ignore", invalid="ignore"):   # torch's xlogy: 0 where t = 0, NaN where t < 0
            return np.where(t == 0, zero, t * np.log(t)) - t * x, -t, None
    if kind == "kl_div_log_target":
        p = np.exp(t)
        return p * (t - x), -p, None
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):   # torch's inf and NaN where they overflow
        if kind == "soft_margin":
            e = np.exp(-t * x)
            return np.log1p(e), -t * e / (one + e), None
        if kind == "hinge_embedding":
            gap = dtype(beta) - x
            return (np.where(t != 1, np.maximum(gap, zero), zero) + np.where(t != -1, x, zero),
                    np.where((t != 1) & (gap >= 0), -one, zero) + np.where(t != -1, one, zero), None)
        if kind == "margin_ranking":   # x input1, other input2
            gap = -t * (x - other) + dtype(beta)
            slope = np.where(gap >= 0, -t, zero)
            return np.maximum(gap, zero), slope, -slope
        if kind == "gaussian_nll":   # other is var, clamped at eps (beta) as torch's clamp_ under no_grad
            var = np.where(other < beta, dtype(beta), other)
            ratio = d * d / var
            value = dtype(0.5) * (np.log(var) + ratio) + dtype(HALF_LOG_TWO_PI if full else 0)
            return value, d / var, dtype(0.5) * (one - ratio) / var
        if kind == "poisson_nll_log_input":
            rate = np.exp(x)
            value, slope = rate - t * x, rate - t
        else:   # poisson_nll, beta is eps
            value, slope = x - t * np.log(x + dtype(beta)), one - t / (x + dtype(beta))
        if full:   # Stirling's approximation of log(t!) where t > 1, as torch's masked_fill
            value = value + np.where(t > 1, t * np.log(t) - t + dtype(0.5) * np.log(t) + dtype(HALF_LOG_TWO_PI),
                                     zero)
        return value, slope, None


def _sum_to_shape(grad, shape):
    """grad summed over the axes along which `shape` was broadcast to grad's shape."""
    return np.asarray(grad.sum(axis=broadcast_axes(grad.shape, shape)).reshape(shape))


def _pointwise_loss(kind: str, input, target, weight, reduction, shape, be, as_array, *, beta=0.0,
                    mean_divisor=None, mean_over_weight=False, other=None, full=False):
    """l1/smooth_l1/huber/mse_loss, kl_div and the margin, Poisson and Gaussian losses after their
    checks: the loss of input and target (and `other`, see _pointwise) broadcast to `shape` (an
    optional weight of input's shape broadcast with them), the mean over mean_divisor (by default
    the element count) or over the summed weight (mean_over_weight), and the gradient summed back to
    input's shape (and other's gradient to other's shape: then (loss, dinput, dother)). See
    gpu.loss.regression."""
    if math.prod(shape) == 0:
        xp = _backend.array_module(be)
        loss, dinput = _nothing(be, reduction, input, shape, as_array)
        if reduction == "mean" and (mean_divisor is not None or mean_over_weight):
            # 0 over kl_div's batch or over the summed weight (of input, which may have elements): as torch's
            loss = mean_of(0.0, float(weight.sum()) if mean_over_weight else mean_divisor)
            loss = xp.asarray(loss, dtype=np.float64) if as_array else loss
        # an input may have elements (broadcast against an empty target): their gradient is 0
        grads = tuple(dinput if a.size == 0 else _backend.device_call(xp.zeros, a.shape, dtype=a.dtype)
                      for a in ((input,) if other is None else (input, other)))
        return (loss, *grads)
    if be != "numpy":
        from ..gpu import loss as gpu_loss
        named = ((input, "input"), (target, "target"), (weight, "weight"))
        result = gpu_loss.regression(be, kind, *(_checks.for_kernels(be, a, n) for a, n in named), reduction,
                                     beta=beta, mean_divisor=mean_divisor, mean_over_weight=mean_over_weight,
                                     as_array=as_array, other=_checks.for_kernels(be, other, "other"), full=full)
        return ((result[0].reshape(shape) if reduction == "none" else result[0]), *result[1:])
    dtype = input.dtype.type
    value, slope, other_slope = _pointwise(kind, *np.broadcast_arrays(input, target, *(
        () if other is None else (other,)))[:2], beta, None if other is None else np.broadcast_to(other, shape),
                                           full)
    if weight is not None:
        value, slope = value * weight, slope * weight
    if reduction == "mean":
        divisor = weight.sum(dtype=dtype) if mean_over_weight else dtype(value.size if mean_divisor is None
                                                                          else mean_divisor)
    else:
        divisor = dtype(1)
    with np.errstate(divide="ignore", invalid="ignore"):   # a zero weight sum: NaN, as PyTorch's
        grads = tuple(_sum_to_shape(s * (dtype(1) / divisor), a.shape)
                      for s, a in ((slope, input), (other_slope, other)) if s is not None)
    if reduction == "none":
        return (np.asarray(value), *grads)
    return (_as_array(mean_of(value.sum(), divisor), as_array), *grads)


@takes_float16(kernels=True)
def mse_loss(pred, target, reduction="mean", weight=None, *, backend=None, as_array=False):
    """Squared error (pred - target)^2 -> (loss, dpred): the mean ("mean") or sum ("sum") as a float
    (a 0-d float64 array with as_array=True, an extension: see the module docstring), or the
    per-element array ("none"); dpred the gradient of the loss (of the sum of the elements for
    "none"). As PyTorch 2.13's: pred and target of one dtype broadcast (with its UserWarning where
    their sizes differ), dpred summed back to pred's shape; weight (of pred's shape, broadcast with
    it) multiplies each element's loss, and its "mean" divides by the summed weight."""
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(pred, target, reduction, weight, backend, as_array, warn=True, name="pred")
    return _pointwise_loss("mse", pred, target, weight, reduction, shape, be, as_array,
                           mean_over_weight=weight is not None)


# --- L1, smooth L1, Huber -----------------------------------------------------------------------

@takes_float16(kernels=True)
def l1_loss(input, target, reduction="mean", weight=None, *, backend=None, as_array=False):
    """Absolute error |input - target| -> (loss, dinput), the conventions of mse_loss (broadcasting
    and weight included: "mean" divides by the summed weight); the gradient sign(input - target), 0
    where they are equal (PyTorch's)."""
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, weight, backend, as_array, warn=True)
    return _pointwise_loss("l1", input, target, weight, reduction, shape, be, as_array,
                           mean_over_weight=weight is not None)


@takes_float16(kernels=True)
def smooth_l1_loss(input, target, reduction="mean", beta=1.0, *, backend=None, as_array=False):
    """PyTorch's smooth L1 loss -> (loss, dinput): with z = |input - target|, 0.5 z^2 / beta where
    z < beta, else z - 0.5 beta; beta >= 0, and beta = 0 is l1_loss (as PyTorch). The conventions of
    mse_loss (PyTorch 2.13's smooth_l1_loss takes no weight)."""
    beta = _checks.real_number(beta, "beta")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss does not support negative values for beta, got {beta}")
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=True)
    return _pointwise_loss("smooth_l1" if beta > 0 else "l1", input, target, None, reduction, shape, be, as_array,
                           beta=beta)


@takes_float16(kernels=True)
def huber_loss(input, target, reduction="mean", delta=1.0, weight=None, *, backend=None, as_array=False):
    """PyTorch's Huber loss -> (loss, dinput): with z = |input - target|, 0.5 z^2 where z < delta,
    else delta (z - 0.5 delta); delta > 0. The conventions of mse_loss, but a weighted "mean"
    divides by the element count, as PyTorch 2.13's (where mse_loss and l1_loss divide by the
    summed weight)."""
    delta = _checks.real_number(delta, "delta")
    if delta <= 0:
        raise ValueError(f"huber_loss does not support non-positive values for delta, got {delta}")
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, weight, backend, as_array, warn=True)
    return _pointwise_loss("huber", input, target, weight, reduction, shape, be, as_array, beta=delta)


# --- KL divergence ------------------------------------------------------------------------------

KL_DIV_REDUCTIONS = ("mean", "batchmean", "sum", "none")


def check_kl_div_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in KL_DIV_REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'batchmean', 'sum' or 'none', got {reduction!r}")
    return reduction


@takes_float16(kernels=True)
def kl_div(input, target, reduction="mean", log_target=False, *, backend=None, as_array=False):
    """Kullback-Leibler divergence as torch.nn.functional.kl_div -> (loss, dinput): input holds
    log-probabilities (log_softmax's output), target probabilities (log-probabilities with
    log_target=True); each element's loss is PyTorch's xlogy(t, t) - t x, 0 where t = 0 (with a
    zero gradient), or exp(t) (t - x) with log_target; the gradient -t (-exp(t)). reduction
    "batchmean" divides the sum by input's first size (the KL divergence of each sample, averaged:
    knowledge distillation's loss; no division for a 0-d input, as PyTorch), "mean" by the element
    count (with PyTorch's UserWarning that it is not batchmean), "sum" and "none" as mse_loss's.
    input and target of one dtype broadcast (without a warning, as PyTorch's), the gradient summed
    back to input's shape."""
    reduction = check_kl_div_reduction(reduction)
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be a bool, got {log_target!r}")
    if reduction == "mean":
        _warn_at_caller("reduction: 'mean' divides the total loss by both the batch size and the support size."
                        "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                        "'mean' will be changed to behave the same as 'batchmean' in the next major release.")
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)
    batch = None
    if reduction == "batchmean":
        reduction, batch = "mean", input.shape[0] if input.ndim else 1
    return _pointwise_loss("kl_div_log_target" if log_target else "kl_div", input, target, None, reduction, shape,
                           be, as_array, mean_divisor=batch)


# --- binary cross entropy -----------------------------------------------------------------------

def _element_weight(w, input, name: str) -> None:
    """An optional weight (or pos_weight) of input's dtype that broadcasts to input's shape."""
    if w is None:
        return
    _checks.array(w, name)
    _checks.same_dtype("input", input, **{name: w})
    try:
        fits = np.broadcast_shapes(w.shape, input.shape) == input.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} of shape {tuple(w.shape)} does not broadcast to the input's shape "
                         f"{tuple(input.shape)}")


def _check_probabilities(a, name: str) -> None:
    """ValueError naming the first element of `a` outside [0, 1] (NaN included), as PyTorch refuses."""
    bad = ~((a >= 0) & (a <= 1))
    if bool(bad.any()):
        where = tuple(int(i) for i in np.unravel_index(int(bad.ravel().argmax()), a.shape))
        raise ValueError(f"all elements of {name} should be between 0 and 1, got {name}{list(where)} = "
                         f"{float(a[where])}")


def _bce(input, target, weight, pos_weight, reduction, from_logits: bool, backend, as_array):
    """binary_cross_entropy and binary_cross_entropy_with_logits (see those)."""
    reduction, be = _elementwise_checks(input, target, "input", reduction, backend, as_array, weight=weight,
                                        pos_weight=pos_weight)
    checked_after = be != "numpy" and reduction != "none"   # by the loss read back, as cross_entropy's indices
    if not from_logits and not checked_after:
        _check_probabilities(input, "input")
        _check_probabilities(target, "target")
    if input.size == 0:
        return _nothing(be, reduction, input, input.shape, as_array)
    if be != "numpy":
        from ..gpu import loss as gpu_loss
        xp = _backend.array_module(be)
        weight, pos_weight = (None if w is None else _backend.device_call(
            lambda w=w: xp.ascontiguousarray(xp.broadcast_to(w, input.shape))) for w in (weight, pos_weight))
        named = ((input, "input"), (target, "target"), (weight, "weight"), (pos_weight, "pos_weight"))
        loss, dinput = gpu_loss.binary_cross_entropy(be, *(_checks.for_kernels(be, a, n) for a, n in named),
                                                     reduction, from_logits, as_array)
        if reduction == "none":
            return loss.reshape(input.shape), dinput
        if not from_logits and not as_array and math.isnan(loss):   # an input or target outside [0, 1]?
            _check_probabilities(input, "input")
            _check_probabilities(target, "target")
        return loss, dinput
    x, t = np.asarray(input), np.asarray(target)
    if from_logits:
        log_sigmoid = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))   # no overflow at any |x|
        with np.errstate(over="ignore"):
            sigmoid = 1 / (1 + np.exp(-x))
        if pos_weight is None:
            value, slope = (1 - t) * x - log_sigmoid, sigmoid - t
        else:
            value = (1 - t) * x - ((pos_weight - 1) * t + 1) * log_sigmoid
            slope = (pos_weight * t + 1 - t) * sigmoid - pos_weight * t
    else:
        with np.errstate(divide="ignore"):   # log(0) is clamped at -100, as torch's
            value = (t - 1) * np.maximum(np.log1p(-x), -100) - t * np.maximum(np.log(x), -100)
        epsilon = x.dtype.type(np.float32(1e-12))   # torch's: the float 1e-12 in every dtype
        slope = (x - t) / np.maximum((1 - x) * x, epsilon)
    if weight is not None:
        value, slope = value * weight, slope * weight
    grad = slope * x.dtype.type(1 / x.size if reduction == "mean" else 1)
    return _elementwise_result(be, reduction, value, grad, as_array)


@takes_float16(kernels=True)
def binary_cross_entropy(input, target, weight=None, reduction="mean", *, backend=None, as_array=False):
    """Binary cross entropy of probabilities as torch.nn.functional.binary_cross_entropy -> (loss,
    dinput): -weight * (t log(x) + (1 - t) log(1 - x)) an element, each log clamped at -100 and the
    gradient weight * (x - t) / max(x (1 - x), 1e-12) (PyTorch's). input and target of one shape
    and dtype with every element in [0, 1] (ValueError otherwise; on emu and cuda checked by the
    loss read back when it is NaN, as cross_entropy's class indices, and not at all with as_array);
    weight broadcasts to input's shape. The conventions of mse_loss."""
    return _bce(input, target, weight, None, reduction, False, backend, as_array)


@takes_float16(kernels=True)
def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None, *,
                                     backend=None, as_array=False):
    """Sigmoid and binary cross entropy in one, as torch.nn.functional.binary_cross_entropy_with_logits
    -> (loss, dinput), PyTorch's stable formula: with l = 1 + (pos_weight - 1) t,
    weight * ((1 - t) x - l log_sigmoid(x)), log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), finite
    at any finite logit (an infinite one gives NaN, as PyTorch's); the gradient
    weight * ((pos_weight t + 1 - t) sigmoid(x) - pos_weight t). weight and pos_weight broadcast
    to input's shape (a (C,) pos_weight weighs the last dimension's classes; (C, 1, 1) the channels
    of (N, C, H, W)). The conventions of mse_loss."""
    return _bce(input, target, weight, pos_weight, reduction, True, backend, as_array)


# --- margin, Poisson and Gaussian losses (regression_loss_rows' kinds) ----------------------------

def _margin(value, name: str = "margin") -> float:
    return _checks.real_number(value, name)


@takes_float16(kernels=True)
def soft_margin_loss(input, target, reduction="mean", *, backend=None, as_array=False):
    """Two-class logistic loss as torch.nn.functional.soft_margin_loss -> (loss, dinput):
    log(1 + exp(-y x)) an element for targets y of +1 or -1 (any real y is taken, as PyTorch's),
    the gradient -y e / (1 + e) with e = exp(-y x) (PyTorch's formula: inf and NaN where e
    overflows, as its). target (of input's dtype) broadcasts to input's shape (without a warning, as
    PyTorch's); the conventions of mse_loss."""
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)
    if shape != input.shape:   # torch's kernel writes an output of input's shape
        raise ValueError(f"target of shape {tuple(target.shape)} does not broadcast to the input's shape "
                         f"{tuple(input.shape)} (soft_margin_loss broadcasts target only, as PyTorch's)")
    return _pointwise_loss("soft_margin", input, target, None, reduction, shape, be, as_array)


@takes_float16(kernels=True)
def hinge_embedding_loss(input, target, margin=1.0, reduction="mean", *, backend=None, as_array=False):
    """Hinge embedding loss as torch.nn.functional.hinge_embedding_loss -> (loss, dinput): input
    holds distances, target +1 (similar pair: the loss is x) or -1 (dissimilar: max(0, margin - x));
    PyTorch's formula where(t != 1, max(0, margin - x), 0) + where(t != -1, x, 0) for any target,
    the gradient passing max's at margin - x = 0 (torch's clamp_min). The conventions of
    soft_margin_loss."""
    margin = _margin(margin)
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)
    return _pointwise_loss("hinge_embedding", input, target, None, reduction, shape, be, as_array, beta=margin)


@takes_float16(kernels=True)
def margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean", *, backend=None, as_array=False):
    """Margin ranking loss as torch.nn.functional.margin_ranking_loss -> (loss, dinput1, dinput2):
    max(0, -y (x1 - x2) + margin) an element, y = +1 where x1 should rank higher, -1 where x2
    should; the gradients -y and y where -y (x1 - x2) + margin >= 0 (torch's clamp_min), 0 elsewhere.
    input1, input2 and target of one dtype and one number of dimensions (ValueError otherwise, where
    PyTorch raises a RuntimeError), broadcast together; each gradient summed back to its input's
    shape. The conventions of mse_loss otherwise."""
    margin = _margin(margin)
    reduction = check_reduction(reduction)
    for a, name in ((input1, "input1"), (input2, "input2"), (target, "target")):
        _checks.array(a, name)
    if not input1.ndim == input2.ndim == target.ndim:
        raise ValueError(f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
                         f"input1: {_torch_size(input1)}, input2: {_torch_size(input2)}, "
                         f"target: {_torch_size(target)} ")
    _checks.same_dtype("input1", input1, input2=input2)
    shape, be = _broadcast_checks(input1, target, reduction, None, backend, as_array, warn=False, name="input1")
    try:
        shape = np.broadcast_shapes(shape, input2.shape)
    except ValueError:
        raise ValueError(f"input2 of shape {tuple(input2.shape)} does not broadcast with input1 and target "
                         f"(broadcast shape {tuple(shape)})") from None
    be = _backend.resolve(backend, input1, input2, target)
    return _pointwise_loss("margin_ranking", input1, target, None, reduction, shape, be, as_array, beta=margin,
                           other=input2)


@takes_float16(kernels=True)
def poisson_nll_loss(input, target, log_input=True, full=False, eps=1e-8, reduction="mean", *, backend=None,
                     as_array=False):
    """Poisson negative log likelihood as torch.nn.functional.poisson_nll_loss -> (loss, dinput):
    exp(x) - t x an element with log_input (input the log of the rate), else x - t log(x + eps);
    full adds Stirling's approximation t log t - t + 0.5 log(2 pi t) of log(t!) where t > 1 (it
    has no gradient). The gradient exp(x) - t, or 1 - t / (x + eps). input and target of one
    dtype broadcast (without a warning, as PyTorch's); the conventions of mse_loss."""
    for flag, name in ((log_input, "log_input"), (full, "full")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    eps = _checks.real_number(eps, "eps")
    reduction = check_reduction(reduction)
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)
    return _pointwise_loss("poisson_nll_log_input" if log_input else "poisson_nll", input, target, None, reduction,
                           shape, be, as_array, beta=eps, full=bool(full))


def _gaussian_var_shape(input, var) -> tuple:
    """The shape var is taken in (torch 2.13's rules): input's; input's without its last dimension
    (homoscedastic: a trailing 1 is added); or input's number of dimensions with exactly one
    dimension differing, where var's size is 1 (e.g. (N, 1, H, W) for (N, C, H, W))."""
    if var.shape == input.shape:
        return var.shape
    if input.ndim >= 1 and var.shape == input.shape[:-1]:
        return var.shape + (1,)
    if var.ndim == input.ndim and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1:
        return var.shape
    raise ValueError(f"var is of incorrect size: {tuple(var.shape)} for input of shape {tuple(input.shape)} (the "
                     f"input's shape, it without its last dimension, or it with one dimension of size 1)")


def _check_variances(var) -> None:
    """ValueError naming the first negative variance, as PyTorch refuses any."""
    negative = var < 0
    if bool(negative.any()):
        where = tuple(int(i) for i in np.unravel_index(int(negative.ravel().argmax()), var.shape))
        raise ValueError(f"var has negative entry/entries: var{list(where)} = {float(var[where])}")


@takes_float16(kernels=True)
def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean", *, backend=None,
                      as_array=False):
    """Gaussian negative log likelihood as torch.nn.functional.gaussian_nll_loss -> (loss, dinput,
    dvar): 0.5 (log v + (x - t)^2 / v) an element with v = max(var, eps) (plus 0.5 log(2 pi) with
    full); the gradients (x - t) / v and 0.5 (1 - (x - t)^2 / v) / v, the latter also where var
    was clamped (PyTorch clamps under no_grad). var of input's shape, or of it without its last
    dimension, or with one dimension of size 1 (one variance for a row, or for the channels of a
    pixel), broadcast with input and target; dvar has var's shape; a Python number var is taken for
    every element (dvar then None). A negative variance is a ValueError before any launch, as
    PyTorch's (on cuda one read back of `any(var < 0)`, the sync PyTorch makes too); on emu and cuda
    with as_array and a "mean"/"sum" loss it is not read back and makes the loss NaN. The
    conventions of mse_loss otherwise (no size warning)."""
    if not isinstance(full, (bool, np.bool_)):
        raise TypeError(f"full must be a bool, got {full!r}")
    eps = _checks.real_number(eps, "eps")
    reduction = check_reduction(reduction)
    _checks.array(input, "input")
    if isinstance(var, (int, float)) and not isinstance(var, bool):   # one variance for every element
        if var < 0:
            raise ValueError(f"var has negative entry/entries: var = {var}")
        _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)   # before the fill
        xp = _backend.array_module(_backend.resolve(backend, input))
        var = _backend.device_call(xp.full, input.shape, var, dtype=input.dtype)
        return (*gaussian_nll_loss(input, target, var, full, eps, reduction, backend=backend, as_array=as_array)[:2],
                None)
    _checks.array(var, "var")
    _checks.same_dtype("input", input, var=var)
    var_shape = _gaussian_var_shape(input, var)
    shape, be = _broadcast_checks(input, target, reduction, None, backend, as_array, warn=False)
    try:
        shape = np.broadcast_shapes(shape, var_shape)
    except ValueError:
        raise ValueError(f"var of shape {tuple(var.shape)} does not broadcast with input and target "
                         f"(broadcast shape {tuple(shape)})") from None
    be = _backend.resolve(backend, input, target, var)
    if be == "numpy" or reduction == "none" or not as_array:   # as_array: nothing read back (NaN instead)
        _check_variances(var)
    loss, dinput, dvar = _pointwise_loss("gaussian_nll", input, target, None, reduction, shape, be, as_array,
                                         beta=eps, other=var.reshape(var_shape), full=bool(full))
    return loss, dinput, dvar.reshape(var.shape)


# --- multi-label soft margin (binary_cross_entropy_rows, then sums over classes) ---------------------

@takes_float16(kernels=True)
def multilabel_soft_margin_loss(input, target, weight=None, reduction="mean", *, backend=None, as_array=False):
    """Multi-label one-versus-all logistic loss as torch.nn.functional.multilabel_soft_margin_loss
    -> (loss, dinput): input (..., C) logits of C independent labels, target of its shape holding
    0/1 (any real, as PyTorch's); each sample's loss is the mean over its C classes of
    -(y log sigmoid(x) + (1 - y) log sigmoid(-x)) (times weight, which broadcasts to input's shape:
    per-class (C,)); "none" gives the (...,) per-sample losses, "mean" their mean, "sum" their sum.
    The per-element terms are binary_cross_entropy_with_logits', computed by its kernel. Unlike
    PyTorch, target must have input's shape (PyTorch would broadcast it)."""
    reduction, be = _elementwise_checks(input, target, "input", reduction, backend, as_array, weight=weight)
    if input.ndim == 0:
        raise ValueError("multilabel_soft_margin_loss needs an input with a class dimension, got a 0-D array")
    classes = input.shape[-1]
    samples_shape = input.shape[:-1]
    if input.size == 0:
        loss, dinput = _nothing(be, reduction, input, samples_shape, as_array)
        if math.prod(samples_shape) != 0:   # samples of no class: each loss is 0/0, as torch's
            xp = _backend.array_module(be)
            if reduction == "none":
                loss = _backend.device_call(xp.full, samples_shape, math.nan, dtype=input.dtype)
            else:
                loss = xp.asarray(math.nan, dtype=np.float64) if as_array else math.nan
        return loss, dinput
    samples = input.size // classes
    # torch: the class sum over C, then the samples' mean: one division by C * samples
    divisor = classes * (samples if reduction == "mean" else 1)
    if be != "numpy":
        from ..gpu import loss as gpu_loss
        xp = _backend.array_module(be)
        if weight is not None:
            weight = _backend.device_call(lambda w: xp.ascontiguousarray(xp.broadcast_to(w, input.shape)), weight)
        named = ((input, "input"), (target, "target"), (weight, "weight"))
        loss, dinput = gpu_loss.multilabel_soft_margin(be, *(_checks.for_kernels(be, a, n) for a, n in named),
                                                       classes, divisor, reduction, as_array)
        return (loss.reshape(samples_shape) if reduction == "none" else loss), dinput
    x, t = np.asarray(input), np.asarray(target)
    dtype = x.dtype.type
    log_sigmoid = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))
    with np.errstate(over="ignore"):
        sigmoid = 1 / (1 + np.exp(-x))
    value, slope = (1 - t) * x - log_sigmoid, sigmoid - t
    if weight is not None:
        value, slope = value * weight, slope * weight
    grad = np.asarray(slope * dtype(1 / divisor))
    if reduction == "none":
        return np.asarray(value.sum(axis=-1) / dtype(classes)), grad
    return _as_array(mean_of(value.sum(), divisor), as_array), grad


# --- multi-class hinge (multi_margin_rows) ---------------------------------------------------------

def _multi_margin(input, labels, p: int, margin: float, weight, reduction):
    """The NumPy path (and the kernels' oracle), torch's CPU kernel: see multi_margin_loss."""
    classes = input.shape[-1]
    dtype = input.dtype.type
    x, y = input.reshape(-1, classes), labels.reshape(-1)
    rows = np.arange(len(x))
    z = dtype(margin) - x[rows, y][:, None] + x
    counted = z > 0
    counted[rows, y] = False
    w = dtype(1) if weight is None else weight[y][:, None]
    row_loss = np.where(counted, z * z if p == 2 else z, dtype(0)) * w
    row_loss = row_loss.sum(axis=1) / dtype(classes)
    divisor = len(x) if reduction == "mean" else 1
    scale = dtype(1 / (classes * divisor))
    grad = np.where(counted, dtype(2) * scale * z if p == 2 else scale, dtype(0)) * w
    grad[rows, y] = -grad.sum(axis=1)
    grad = grad.reshape(input.shape)
    if reduction == "none":
        return row_loss.reshape(_positions_shape(input)), grad
    return mean_of(row_loss.sum(), divisor), grad


def check_multi_margin_p(p) -> int:
    """multi_margin_loss's p: 1 or 2, as PyTorch's (its module refuses others at construction)."""
    if isinstance(p, (bool, np.bool_)) or p not in (1, 2):
        raise ValueError(f"only p == 1 and p == 2 supported, got p={p!r}")
    return int(p)


@takes_float16(kernels=True)
def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, reduction="mean", *, backend=None,
                      as_array=False):
    """Multi-class hinge loss as torch.nn.functional.multi_margin_loss -> (loss, dinput): input
    (N, C) or (C,) scores, target class indices (N,) (() for (C,)); a sample's loss is
    sum_{c != y} w_y max(0, margin - x_y + x_c)^p / C, p 1 or 2, w the optional per-class weights
    (C,); "mean" averages the samples. The gradient is torch's (nothing where margin - x_y + x_c is
    exactly 0). Class indices out of range are refused before any launch, as PyTorch's CPU kernel
    refuses them (on cuda one read back of their range check, before the loss's own); on emu and cuda
    with as_array and a "mean"/"sum" loss they are not read back and make the loss NaN, as
    cross_entropy's. Unlike PyTorch: any integer dtype but uint64 is taken for class
    indices, and a "mean" over no samples is NaN (PyTorch's value is then unspecified)."""
    p = check_multi_margin_p(p)
    margin = _margin(margin)
    reduction = check_reduction(reduction)
    _checks.array(input, "input")
    if input.ndim not in (1, 2) or input.shape[-1] == 0:
        raise ValueError(f"Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
                         f"{tuple(input.shape)}")
    labels = _class_indices(input, target)
    be = _class_loss_backend(input, "input", target, labels, weight, None, reduction, backend, as_array,
                             before_launch=True)
    classes, loss_shape = input.shape[-1], _positions_shape(input)
    if input.size == 0:
        return _nothing(be, reduction, input, loss_shape, as_array)
    if be == "numpy":
        loss, dinput = _multi_margin(input, labels, p, margin, weight, reduction)
        return (loss if reduction == "none" else _as_array(loss, as_array)), dinput
    from ..gpu import loss as gpu_loss
    input, labels, weight = (_checks.for_kernels(be, a, n) for a, n in ((input, "input"), (labels, "target"),
                                                                          (weight, "weight")))
    loss, dinput = gpu_loss.multi_margin(be, input, labels.reshape(-1), weight, classes=classes, squared=p == 2,
                                         margin=margin, reduction=reduction, as_array=as_array)
    return (loss.reshape(loss_shape) if reduction == "none" else loss), dinput


# --- cosine embedding (cosine_embedding_rows) --------------------------------------------------------

def _cosine_embedding(x1, x2, y, margin: float, reduction):
    """The NumPy path (and the kernels' oracle): see cosine_embedding_loss."""
    dtype = x1.dtype.type
    a, b = np.atleast_2d(x1), np.atleast_2d(x2)
    epsilon = dtype(1e-12)
    square1 = (a * a).sum(axis=1) + epsilon
    square2 = (b * b).sum(axis=1) + epsilon
    inv_denominator = dtype(1) / np.sqrt(square1 * square2)
    cosine = (a * b).sum(axis=1) * inv_denominator
    t = np.atleast_1d(y)
    gap = cosine - dtype(margin)
    loss = np.where(t == 1, dtype(1) - cosine, np.where(t == -1, np.maximum(gap, dtype(0)), dtype(0)))
    slope = np.where(t == 1, dtype(-1), np.where((t == -1) & (gap >= 0), dtype(1), dtype(0)))
    divisor = len(t) if reduction == "mean" else 1
    slope = (slope * dtype(1 / divisor))[:, None]
    dinput1 = slope * (b * inv_denominator[:, None] - (cosine / square1)[:, None] * a)
    dinput2 = slope * (a * inv_denominator[:, None] - (cosine / square2)[:, None] * b)
    dinput1, dinput2 = dinput1.reshape(x1.shape), dinput2.reshape(x2.shape)
    if reduction == "none":
        return loss.reshape(y.shape), dinput1, dinput2
    return mean_of(loss.sum(), divisor), dinput1, dinput2


@takes_float16(kernels=True)
def cosine_embedding_loss(input1, input2, target, margin=0.0, reduction="mean", *, backend=None, as_array=False):
    """Cosine embedding loss as torch.nn.functional.cosine_embedding_loss -> (loss, dinput1,
    dinput2): for each pair of rows (N, D) (or one pair (D,)) with cos = x1.x2 / sqrt((|x1|^2 +
    1e-12)(|x2|^2 + 1e-12)) (torch's EPSILON), the loss 1 - cos where the target (N,) (or ()) is 1,
    max(0, cos - margin) where it is -1, 0 for any other value; the gradients pass max's at its
    bound (torch's clamp_min). Unlike PyTorch, input1 and input2 must have one shape and the target
    one value a row (PyTorch would broadcast them)."""
    margin = _margin(margin)
    reduction = check_reduction(reduction)
    for a, name in ((input1, "input1"), (input2, "input2"), (target, "target")):
        _checks.array(a, name)
    _checks.same_dtype("input1", input1, input2=input2, target=target)
    if target.ndim not in (0, 1):
        raise ValueError(f"0D or 1D target tensor expected, multi-target not supported, got target of shape "
                         f"{tuple(target.shape)}")
    if input1.ndim != target.ndim + 1:
        raise ValueError(f"{target.ndim}D target tensor expects {target.ndim + 1}D input tensors, but found inputs "
                         f"with sizes {list(input1.shape)} and {list(input2.shape)}.")
    _checks.shape_is(input2, "input2", input1.shape, " (the shape of input1)")
    _checks.shape_is(target, "target", input1.shape[:-1], " (one target a row of input1)")
    be = _backend.resolve(backend, input1, input2, target)
    _refuse_float_in_recording(reduction, as_array)
    if target.size == 0:   # no rows
        loss, dinput1 = _nothing(be, reduction, input1, target.shape, as_array)
        return loss, dinput1, _backend.array_module(be).empty_like(input2)
    if be == "numpy":
        loss, dinput1, dinput2 = _cosine_embedding(input1, input2, target, margin, reduction)
        return (loss if reduction == "none" else _as_array(loss, as_array)), dinput1, dinput2
    from ..gpu import loss as gpu_loss
    named = ((input1, "input1"), (input2, "input2"), (target, "target"))
    loss, dinput1, dinput2 = gpu_loss.cosine_embedding(be, *(_checks.for_kernels(be, a, n) for a, n in named),
                                                       margin=margin, reduction=reduction, as_array=as_array)
    return (loss.reshape(target.shape) if reduction == "none" else loss), dinput1, dinput2


# --- triplet margin (triplet_margin_rows) ---------------------------------------------------------

def _distance(x, y, p: float, eps: float):
    """torch's pairwise_distance of rows: (x - y + eps, its rows' p-norms)."""
    v = x - y + x.dtype.type(eps)
    if p == 2:
        return v, np.sqrt((v * v).sum(axis=-1))
    if p == 1:
        return v, np.abs(v).sum(axis=-1)
    return v, (np.abs(v) ** p).sum(axis=-1) ** (1 / p)


def _triplet_margin(anchor, positive, negative, margin: float, p: float, eps: float, swap: bool, reduction):
    """The NumPy path (and the kernels' oracle): see triplet_margin_loss."""
    dtype = anchor.dtype.type
    to_positive, d_positive = _distance(anchor, positive, p, eps)
    to_negative, d_negative = _distance(anchor, negative, p, eps)
    negative_share, swap_share = dtype(1), dtype(0)
    d_closest = d_negative
    if swap:
        between, d_swap = _distance(positive, negative, p, eps)
        tie = d_negative == d_swap
        negative_share = np.where(tie, dtype(0.5), np.where(d_negative < d_swap, dtype(1), dtype(0)))[..., None]
        swap_share = np.where(tie, dtype(0.5), np.where(d_swap < d_negative, dtype(1), dtype(0)))[..., None]
        d_closest = np.minimum(d_negative, d_swap)
    gap = dtype(margin) + d_positive - d_closest
    loss = np.maximum(gap, dtype(0))
    divisor = loss.size if reduction == "mean" else 1
    scale = np.where(gap >= 0, dtype(1 / divisor), dtype(0))[..., None]
    # d||v||_p / dv: distance's norm_backward, the kernels' (0 where an element or its row's norm is 0)
    slope_positive = _lp_norm_gradient(to_positive, d_positive[..., None], p, -1)
    slope_negative = negative_share * _lp_norm_gradient(to_negative, d_negative[..., None], p, -1)
    slope_swap = swap_share * _lp_norm_gradient(between, d_swap[..., None], p, -1) if swap else dtype(0)
    grads = (scale * (slope_positive - slope_negative), scale * (-slope_positive - slope_swap),
             scale * (slope_negative + slope_swap))
    if reduction == "none":
        return (np.asarray(loss), *grads)
    return (mean_of(loss.sum(), divisor), *grads)


def check_triplet_margin(margin) -> float:
    """triplet_margin_loss's margin: a real number > 0, as PyTorch's (its function and module refuse others)."""
    margin = _margin(margin)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    return margin


@takes_float16(kernels=True)
def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False, reduction="mean", *,
                        backend=None, as_array=False):
    """Triplet margin loss as torch.nn.functional.triplet_margin_loss -> (loss, danchor, dpositive,
    dnegative): for rows (..., D) (an embedding a row) of anchors, positives and negatives with
    d(x, y) = ||x - y + eps||_p (torch's pairwise_distance), max(0, margin + d(a, q) - d(a, n));
    swap takes min(d(a, n), d(q, n)) for the negative distance (the distance swap of Balntas et
    al.). The gradients are torch's: 0 where the norm or an element of x - y + eps is 0, clamp_min's
    passed at its bound, a tie of swap's minimum split in halves. The loss of each row (...,) for
    "none". Unlike PyTorch: the three arrays must have one shape (PyTorch would broadcast them), at
    least one dimension and rows of at least one element, and p must be a positive finite number
    (PyTorch also takes 0 and inf). margin must be > 0 (ValueError, as PyTorch's)."""
    margin = check_triplet_margin(margin)
    p = _checks.real_number(p, "p")
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"p must be a positive finite number, got {p}")
    eps = _checks.real_number(eps, "eps")
    if not isinstance(swap, (bool, np.bool_)):
        raise TypeError(f"swap must be a bool, got {swap!r}")
    reduction = check_reduction(reduction)
    for a, name in ((anchor, "anchor"), (positive, "positive"), (negative, "negative")):
        _checks.array(a, name)
    if not anchor.ndim == positive.ndim == negative.ndim:
        raise ValueError(f"The anchor, positive, and negative tensors are expected to have the same number of "
                         f"dimensions, but got: anchor {anchor.ndim}D, positive {positive.ndim}D, and negative "
                         f"{negative.ndim}D inputs")
    _checks.same_dtype("anchor", anchor, positive=positive, negative=negative)
    if anchor.ndim == 0:
        raise ValueError("triplet_margin_loss needs rows of at least one dimension, got 0-D arrays")
    for a, name in ((positive, "positive"), (negative, "negative")):
        _checks.shape_is(a, name, anchor.shape, " (the anchor's shape)")
    be = _backend.resolve(backend, anchor, positive, negative)
    _refuse_float_in_recording(reduction, as_array)
    loss_shape = anchor.shape[:-1]
    rows = math.prod(loss_shape)
    xp = _backend.array_module(be)
    if anchor.shape[-1] == 0 and rows:
        raise ValueError(f"triplet_margin_loss needs embeddings of at least one element, got shape "
                         f"{tuple(anchor.shape)}")
    if rows == 0:
        loss, danchor = _nothing(be, reduction, anchor, loss_shape, as_array)
        return loss, danchor, xp.empty_like(positive), xp.empty_like(negative)
    if be == "numpy":
        loss, *grads = _triplet_margin(anchor, positive, negative, margin, float(p), eps, bool(swap), reduction)
        return (loss if reduction == "none" else _as_array(loss, as_array), *grads)
    from ..gpu import loss as gpu_loss
    named = ((anchor, "anchor"), (positive, "positive"), (negative, "negative"))
    loss, *grads = gpu_loss.triplet_margin(be, *(_checks.for_kernels(be, a, n) for a, n in named), rows=rows,
                                           margin=margin, p=float(p), eps=eps, swap=bool(swap), reduction=reduction,
                                           as_array=as_array)
    return ((loss.reshape(loss_shape) if reduction == "none" else loss), *grads)
