"""Losses with PyTorch's options, each returning (loss, gradient of that loss): softmax
cross-entropy and mean squared error, computed in the input's dtype.

reduction="mean" or "sum": the loss is a Python float, or with as_array=True (an extension) the
same value as a 0-d float64 array on the input's backend, not read back: on a GPU, reading a float
waits for every queued kernel (a host synchronisation), so a training loop that reads every step
leaves the GPU idle while it queues the next one. reduction="none": the loss is an array of
per-position (cross_entropy) or per-element (mse_loss) losses, of the input's kind and dtype, and
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

import numpy as np

from .. import backend as _backend
from .. import replay
from ..gpu.loss import index_mean_divisor, mean_of
from . import _checks
from ._float16 import takes_float16

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


def _check_class_indices(target, classes: int, ignore_index: int):
    """ValueError naming the first entry that is neither a class index nor ignore_index."""
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bool(bad.any()):
        where = tuple(int(i) for i in np.unravel_index(int(bad.ravel().argmax()), target.shape))
        raise ValueError(f"target{list(where)} = {int(target[where])} is out of range for {classes} classes "
                         f"(class indices must lie in [0, {classes}) or equal ignore_index={ignore_index})")


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
    if target.dtype.kind not in "iu" or target.dtype == np.uint64:
        raise TypeError(f"target must hold integer class indices (or float class probabilities of the logits' "
                        f"shape), got dtype {target.dtype}")
    _checks.shape_is(target, "target", _positions_shape(logits),
                     " (one class index per position: logits' shape without the class dimension)")
    # int32 or uint8 labels are widened by a device call: a replay (cnn_gpu.replay) widens its own
    return _backend.astype(target, np.int64), None


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
    _checks.array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must be (C,), (N, C) or (N, C, d1, ..., dk), got a 0-D array")
    ignore_index = check_ignore_index(ignore_index)
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    labels, probabilities = _cross_entropy_target(logits, target, ignore_index)
    classes = _classes(logits)
    if weight is not None:
        _checks.array(weight, "weight", ndim=1)
        _checks.shape_is(weight, "weight", (classes,), " (one weight per class)")
        _checks.same_dtype("logits", logits, weight=weight)
    be = _backend.resolve(backend, logits, target, weight)
    _refuse_float_in_recording(reduction, as_array)
    checked_after = be != "numpy" and reduction != "none"   # by the loss read back (or not at all: as_array)
    if labels is not None and not checked_after:
        _check_class_indices(labels, classes, ignore_index)
    loss_shape = _positions_shape(logits)
    if logits.size == 0:
        if labels is not None and checked_after and labels.size:   # (N, 0) logits: no class is in range
            _check_class_indices(labels, classes, ignore_index)
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
    if reduction == "none":
        return loss.reshape(loss_shape), dlogits
    if labels is not None and not as_array and math.isnan(loss):   # an index out of range, or NaN logits
        _check_class_indices(labels, classes, ignore_index)
    return loss, dlogits


# --- mean squared error -------------------------------------------------------------------------

@takes_float16(kernels=True)
def mse_loss(pred, target, reduction="mean", *, backend=None, as_array=False):
    """Squared error (pred - target)^2 of two arrays of one shape and dtype -> (loss, dpred): the mean
    ("mean") or sum ("sum") as a float (a 0-d float64 array with as_array=True, an extension: see
    the module docstring), or the per-element array ("none"); dpred the gradient of the loss (of
    the sum of the elements for "none")."""
    _checks.array(pred, "pred")
    _checks.array(target, "target")
    _checks.same_dtype("pred", pred, target=target)
    _checks.shape_is(target, "target", pred.shape, " (the shape of pred)")
    reduction = check_reduction(reduction)
    be = _backend.resolve(backend, pred, target)
    _refuse_float_in_recording(reduction, as_array)
    if pred.size == 0:
        return _nothing(be, reduction, pred, pred.shape, as_array)
    if be == "numpy":
        diff = pred - target
        count = pred.size if reduction == "mean" else 1
        grad = np.asarray(diff * (2 / pred.dtype.type(count)))   # 0-d pred: an array, not a scalar
        if reduction == "none":
            return np.asarray(diff * diff), grad
        return _as_array(float(np.vdot(diff, diff) / pred.dtype.type(count)), as_array), grad
    from ..gpu import loss as gpu_loss
    loss, dpred = gpu_loss.mse(be, _checks.for_kernels(be, pred, "pred"), _checks.for_kernels(be, target, "target"),
                               reduction, as_array)
    return (loss.reshape(pred.shape) if reduction == "none" else loss), dpred
