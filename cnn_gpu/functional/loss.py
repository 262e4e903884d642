"""Losses returning (loss as a Python float, gradient of that mean loss): softmax cross-entropy with
integer labels and mean squared error. Both are computed in the input's dtype."""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from . import _checks


def _cross_entropy(logits, labels):
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)   # log-softmax without overflow
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_prob = shifted - np.log(total)
    rows = np.arange(n)
    loss = -log_prob[rows, labels].sum() / logits.dtype.type(n)
    grad = exp / total
    grad[rows, labels] -= 1
    grad /= logits.dtype.type(n)
    return float(loss), grad


def _mean_of_nothing(be, pred):
    """PyTorch's mean loss over an empty input: NaN, with an (empty) gradient of pred's shape."""
    return math.nan, _backend.array_module(be).empty_like(pred)


def cross_entropy(logits, labels, *, backend=None):
    """Mean negative log-likelihood of softmax(logits) at integer labels: logits (N, classes), labels
    (N,) with values in [0, classes) -> (loss float, dlogits)."""
    _checks.array(logits, "logits", ndim=2)
    _checks.labels(labels, logits.shape[0], logits.shape[1])
    be = _backend.resolve(backend, logits, labels)
    if logits.shape[0] == 0:
        return _mean_of_nothing(be, logits)
    if be == "numpy":
        return _cross_entropy(logits, labels)
    from ..gpu import loss as gpu_loss
    return gpu_loss.cross_entropy(be, _checks.for_kernels(be, logits, "logits"),
                                  _checks.for_kernels(be, labels.astype("int64", copy=False), "labels"))


def mse_loss(pred, target, *, backend=None):
    """Mean of (pred - target)^2 over all elements -> (loss float, dpred)."""
    _checks.array(pred, "pred")
    _checks.array(target, "target")
    _checks.same_dtype("pred", pred, target=target)
    _checks.shape_is(target, "target", pred.shape, " (the shape of pred)")
    be = _backend.resolve(backend, pred, target)
    if pred.size == 0:
        return _mean_of_nothing(be, pred)
    if be == "numpy":
        diff = pred - target
        scale = pred.dtype.type(pred.size)
        return float(np.vdot(diff, diff) / scale), diff * (2 / scale)
    from ..gpu import loss as gpu_loss
    return gpu_loss.mse(be, _checks.for_kernels(be, pred, "pred"), _checks.for_kernels(be, target, "target"))
