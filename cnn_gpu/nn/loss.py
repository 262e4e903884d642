"""Losses with PyTorch's options: `forward(pred, target)` returns the loss (a Python float for
reduction="mean"/"sum", the array of per-position or per-element losses for "none"), `backward()`
the gradient of that loss (of its sum for "none") with respect to `pred`. `forward(pred, target,
as_array=True)` (an extension) returns a "mean"/"sum" loss as a 0-d float64 array on pred's
backend, not read back (no host synchronisation on a GPU; see cnn_gpu.functional.loss)."""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from .. import functional as F
from ..functional.loss import check_ignore_index, check_label_smoothing, check_reduction
from .module import Module


class _Loss(Module):
    """A loss calling `_loss` (its functional op) with the options of `_options()`."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, pred, target, *, as_array=False):
        loss, dpred = self._loss(pred, target, *self._options(pred), backend=self.backend, as_array=as_array)
        self._saved = (dpred, None if self.reduction != "none" else tuple(loss.shape))
        return loss

    def _per_class(self, dy):
        """An upstream gradient of the per-position losses, broadcastable against dpred."""
        return dy

    def backward(self, dy=None):
        """The gradient of the loss with respect to pred, scaled by `dy` when given: a number, or for
        reduction="none" also an array of the loss's shape (the gradient of the losses' sum
        weighted by dy)."""
        dpred, loss_shape = self._saved_for_backward()
        if dy is None:
            return dpred
        xp = _backend.module_of(dpred)
        if np.ndim(dy) != 0:
            if loss_shape is None or tuple(dy.shape) != loss_shape:
                expected = "a number" if loss_shape is None else f"a number or an array of shape {loss_shape}"
                raise ValueError(f"dy must be {expected} (the loss's shape), got shape {tuple(dy.shape)}")
            dy = self._per_class(dy)
        # in dpred's dtype: a NumPy float64 dy must not turn a float32 gradient into float64
        return _backend.device_call(xp.multiply, dpred, dy, dtype=dpred.dtype, takes_out=True)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """Softmax cross entropy with PyTorch's options (see cnn_gpu.functional.cross_entropy): class
    indices or class probabilities as targets, per-class `weight` (a buffer, saved in state_dict
    and moved by `to`, used in pred's dtype), `ignore_index`, `reduction`, `label_smoothing`."""

    _loss = staticmethod(F.cross_entropy)

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.register_buffer("weight", None if weight is None else _class_weights(weight))

    def _options(self, pred):
        weight = self.weight
        if weight is not None:
            weight = _backend.astype(weight, pred.dtype)
        return weight, self.ignore_index, self.reduction, self.label_smoothing

    def _per_class(self, dy):
        # per-position losses (N, d1, ..., dk) against dlogits (N, C, d1, ..., dk)
        return dy[:, None]

    def extra_repr(self):
        weight = "" if self.weight is None else f"weight of {self.weight.shape[0]} classes, "
        return (f"{weight}ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


def _class_weights(weight):
    """Per-class weights as a 1-D float array (a NumPy float64 copy of a list or integer array)."""
    if not _backend.is_cupy_array(weight):
        weight = np.asarray(weight)
        if weight.dtype not in (np.float32, np.float64):
            if weight.dtype.kind not in "iuf":
                raise TypeError(f"weight must hold real numbers, got dtype {weight.dtype}")
            weight = weight.astype(np.float64)
    if weight.ndim != 1:
        raise ValueError(f"weight must be 1-D (one weight per class), got shape {tuple(weight.shape)}")
    return weight


class MSELoss(_Loss):
    """Squared error with PyTorch's `reduction` ("mean" by default, "sum" or "none")."""

    _loss = staticmethod(F.mse_loss)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)

    def _options(self, pred):
        return (self.reduction,)
