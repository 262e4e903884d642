"""Losses with PyTorch's options: `forward(pred, target)` returns the loss (a Python float for
reduction="mean"/"sum", the array of per-position or per-element losses for "none"), `backward()`
the gradient of that loss (of its sum for "none") with respect to `pred`. `forward(pred, target,
as_array=True)` (an extension) returns a "mean"/"sum" loss as a 0-d float64 array on pred's
backend, not read back (no host synchronisation on a GPU; see cnn_gpu.functional.loss)."""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from .. import functional as F
from ..functional.loss import (check_ignore_index, check_kl_div_reduction, check_label_smoothing, check_multi_margin_p,
                               check_reduction, check_triplet_margin)
from .module import Module


class _Loss(Module):
    """A loss calling `_loss` (its functional op) with the options of `_options()`."""

    _check_reduction = staticmethod(check_reduction)

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = self._check_reduction(reduction)

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
        return self._scaled(dpred, loss_shape, dy)

    def _scaled(self, dpred, loss_shape, dy):
        """A saved gradient scaled by backward's dy (see backward)."""
        if dy is None:
            return dpred
        xp = _backend.module_of(dpred)
        if np.ndim(dy) != 0:
            if loss_shape is None or tuple(dy.shape) != loss_shape:
                expected = "a number" if loss_shape is None else f"a number or an array of shape {loss_shape}"
                raise ValueError(f"dy must be {expected} (the loss's shape), got shape {tuple(dy.shape)}")
            dy = self._per_class(dy)
            if np.broadcast_shapes(dy.shape, dpred.shape) != tuple(dpred.shape):
                raise ValueError(f"dy of shape {tuple(dy.shape)} needs the gradient of each loss element, but pred "
                                 f"{tuple(dpred.shape)} was broadcast against target: dpred holds their sums over "
                                 f"the broadcast axes (pass a number, or pred of the loss's shape)")
        # in dpred's dtype: a NumPy float64 dy must not turn a float32 gradient into float64
        return _backend.device_call(xp.multiply, dpred, dy, dtype=dpred.dtype, takes_out=True)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class _ClassLoss(_Loss):
    """A loss over class rows (cross entropy, NLL): per-class `weight` (a buffer, saved in state_dict
    and moved by `to`, used in pred's dtype) and `ignore_index`."""

    def __init__(self, weight, ignore_index, reduction):
        super().__init__(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        self.register_buffer("weight", None if weight is None else _weights(weight, class_weights=True))

    def _options(self, pred):
        return _in_dtype(self.weight, pred), self.ignore_index, self.reduction

    def _per_class(self, dy):
        # per-position losses (N, d1, ..., dk) against dlogits (N, C, d1, ..., dk)
        return dy[:, None]

    def extra_repr(self):
        weight = "" if self.weight is None else f"weight of {self.weight.shape[0]} classes, "
        return f"{weight}ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class CrossEntropyLoss(_ClassLoss):
    """Softmax cross entropy with PyTorch's options (see cnn_gpu.functional.cross_entropy): class
    indices or class probabilities as targets, per-class `weight` (a buffer, saved in state_dict
    and moved by `to`, used in pred's dtype), `ignore_index`, `reduction`, `label_smoothing`."""

    _loss = staticmethod(F.cross_entropy)

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def _options(self, pred):
        return *super()._options(pred), self.label_smoothing

    def extra_repr(self):
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"


class NLLLoss(_ClassLoss):
    """Negative log likelihood of log-probabilities (nn.LogSoftmax's output) with PyTorch's options
    (see cnn_gpu.functional.nll_loss): per-class `weight` (a buffer, as CrossEntropyLoss'),
    `ignore_index`, `reduction`."""

    _loss = staticmethod(F.nll_loss)

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean"):
        super().__init__(weight, ignore_index, reduction)


def _in_dtype(weight, pred):
    return None if weight is None else _backend.astype(weight, pred.dtype)


def _weights(weight, name="weight", class_weights=False):
    """Weights as a float array (a NumPy float64 copy of a list or integer array); per-class
    weights (class_weights) must be 1-D."""
    if not _backend.is_cupy_array(weight):
        weight = np.asarray(weight)
        if weight.dtype not in (np.float32, np.float64):
            if weight.dtype.kind not in "iuf":
                raise TypeError(f"{name} must hold real numbers, got dtype {weight.dtype}")
            weight = weight.astype(np.float64)
    if class_weights and weight.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one weight per class), got shape {tuple(weight.shape)}")
    return weight


class MSELoss(_Loss):
    """Squared error with PyTorch's `reduction` ("mean" by default, "sum" or "none")."""

    _loss = staticmethod(F.mse_loss)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)

    def _options(self, pred):
        return (self.reduction,)


class L1Loss(_Loss):
    """Absolute error with PyTorch's `reduction` (see cnn_gpu.functional.l1_loss)."""

    _loss = staticmethod(F.l1_loss)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)

    def _options(self, pred):
        return (self.reduction,)


class SmoothL1Loss(_Loss):
    """PyTorch's smooth L1 loss with `reduction` and `beta` (see cnn_gpu.functional.smooth_l1_loss)."""

    _loss = staticmethod(F.smooth_l1_loss)

    def __init__(self, *, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = beta

    def _options(self, pred):
        return self.reduction, self.beta

    def extra_repr(self):
        return f"{super().extra_repr()}, beta={self.beta}"


class HuberLoss(_Loss):
    """PyTorch's Huber loss with `reduction` and `delta` (see cnn_gpu.functional.huber_loss)."""

    _loss = staticmethod(F.huber_loss)

    def __init__(self, *, reduction="mean", delta=1.0):
        super().__init__(reduction)
        self.delta = delta

    def _options(self, pred):
        return self.reduction, self.delta

    def extra_repr(self):
        return f"{super().extra_repr()}, delta={self.delta}"


class KLDivLoss(_Loss):
    """PyTorch's KL divergence of log-probabilities from target probabilities (log-probabilities
    with `log_target`) with `reduction` "mean", "batchmean" (the divergence of each sample,
    averaged: knowledge distillation's), "sum" or "none" (see cnn_gpu.functional.kl_div)."""

    _loss = staticmethod(F.kl_div)
    _check_reduction = staticmethod(check_kl_div_reduction)

    def __init__(self, *, reduction="mean", log_target=False):
        super().__init__(reduction)
        self.log_target = log_target

    def _options(self, pred):
        return self.reduction, self.log_target

    def extra_repr(self):
        return f"{super().extra_repr()}, log_target={self.log_target}"


class BCELoss(_Loss):
    """Binary cross entropy of probabilities (see cnn_gpu.functional.binary_cross_entropy) with an
    optional `weight` broadcast to pred's shape (a buffer, as CrossEntropyLoss' weight)."""

    _loss = staticmethod(F.binary_cross_entropy)

    def __init__(self, weight=None, *, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else _weights(weight))

    def _options(self, pred):
        return _in_dtype(self.weight, pred), self.reduction


class BCEWithLogitsLoss(_Loss):
    """Sigmoid and binary cross entropy in one (see cnn_gpu.functional.binary_cross_entropy_with_logits)
    with optional `weight` and `pos_weight` broadcast to pred's shape (buffers, as CrossEntropyLoss'
    weight)."""

    _loss = staticmethod(F.binary_cross_entropy_with_logits)

    def __init__(self, weight=None, *, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else _weights(weight))
        self.register_buffer("pos_weight", None if pos_weight is None else _weights(pos_weight, "pos_weight"))

    def _options(self, pred):
        return _in_dtype(self.weight, pred), self.reduction, _in_dtype(self.pos_weight, pred)


class SoftMarginLoss(_Loss):
    """Two-class logistic loss of targets +1/-1 with `reduction` (see
    cnn_gpu.functional.soft_margin_loss)."""

    _loss = staticmethod(F.soft_margin_loss)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)

    def _options(self, pred):
        return (self.reduction,)


class _MarginOptions:
    """The options (margin, reduction) of a margin loss, mixed in before its _Loss base."""

    def __init__(self, margin, reduction):
        super().__init__(reduction)
        self.margin = margin

    def _options(self, pred):
        return self.margin, self.reduction

    def extra_repr(self):
        return f"margin={self.margin}, {super().extra_repr()}"


class HingeEmbeddingLoss(_MarginOptions, _Loss):
    """Hinge embedding loss of distances and targets +1/-1 with `margin` and `reduction` (see
    cnn_gpu.functional.hinge_embedding_loss)."""

    _loss = staticmethod(F.hinge_embedding_loss)

    def __init__(self, margin=1.0, *, reduction="mean"):
        super().__init__(margin, reduction)


class PoissonNLLLoss(_Loss):
    """Poisson negative log likelihood with `log_input`, `full`, `eps` and `reduction` (see
    cnn_gpu.functional.poisson_nll_loss)."""

    _loss = staticmethod(F.poisson_nll_loss)

    def __init__(self, log_input=True, full=False, *, eps=1e-8, reduction="mean"):
        super().__init__(reduction)
        self.log_input, self.full, self.eps = log_input, full, eps

    def _options(self, pred):
        return self.log_input, self.full, self.eps, self.reduction

    def extra_repr(self):
        return f"log_input={self.log_input}, full={self.full}, eps={self.eps}, {super().extra_repr()}"


class MultiLabelSoftMarginLoss(_Loss):
    """Multi-label one-versus-all logistic loss (see cnn_gpu.functional.multilabel_soft_margin_loss)
    with an optional `weight` broadcast to pred's shape (per class: (C,); a buffer, as
    CrossEntropyLoss' weight); reduction="none" gives one loss per sample."""

    _loss = staticmethod(F.multilabel_soft_margin_loss)

    def __init__(self, weight=None, *, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else _weights(weight))

    def _options(self, pred):
        return _in_dtype(self.weight, pred), self.reduction

    def _per_class(self, dy):
        # per-sample losses (...,) against dpred (..., C)
        return dy[..., None]


class _ThreeArrayLoss(_Loss):
    """A loss of three arrays with several gradients: forward(a, b, c) returns the loss, backward(dy)
    the tuple of gradients (each scaled as _Loss.backward's)."""

    def forward(self, first, second, third, *, as_array=False):
        loss, *grads = self._loss(first, second, third, *self._options(first), backend=self.backend,
                                  as_array=as_array)
        self._saved = (tuple(grads), None if self.reduction != "none" else tuple(loss.shape))
        return loss

    def backward(self, dy=None):
        grads, loss_shape = self._saved_for_backward()
        return tuple(self._scaled(grad, loss_shape, dy) for grad in grads)


class MarginRankingLoss(_MarginOptions, _ThreeArrayLoss):
    """Margin ranking loss with `margin` and `reduction` (see cnn_gpu.functional.margin_ranking_loss):
    forward(input1, input2, target), backward() -> (dinput1, dinput2)."""

    _loss = staticmethod(F.margin_ranking_loss)

    def __init__(self, margin=0.0, *, reduction="mean"):
        super().__init__(margin, reduction)


class GaussianNLLLoss(_ThreeArrayLoss):
    """Gaussian negative log likelihood with `full`, `eps` and `reduction` (see
    cnn_gpu.functional.gaussian_nll_loss): forward(input, target, var), backward() -> (dinput, dvar)."""

    _loss = staticmethod(F.gaussian_nll_loss)

    def __init__(self, *, full=False, eps=1e-6, reduction="mean"):
        super().__init__(reduction)
        self.full, self.eps = full, eps

    def _options(self, pred):
        return self.full, self.eps, self.reduction

    def extra_repr(self):
        return f"full={self.full}, eps={self.eps}, {super().extra_repr()}"


class MultiMarginLoss(_Loss):
    """Multi-class hinge loss with `p` (1 or 2), `margin`, per-class `weight` (a buffer, as
    CrossEntropyLoss') and `reduction` (see cnn_gpu.functional.multi_margin_loss)."""

    _loss = staticmethod(F.multi_margin_loss)

    def __init__(self, p=1, margin=1.0, weight=None, *, reduction="mean"):
        super().__init__(reduction)
        check_multi_margin_p(p)   # refused at construction, as PyTorch's
        self.p, self.margin = p, margin
        self.register_buffer("weight", None if weight is None else _weights(weight, class_weights=True))

    def _options(self, pred):
        return self.p, self.margin, _in_dtype(self.weight, pred), self.reduction

    def _per_class(self, dy):
        # per-sample losses (N,) against dinput (N, C)
        return dy[:, None]

    def extra_repr(self):
        return f"p={self.p}, margin={self.margin}, {super().extra_repr()}"


class CosineEmbeddingLoss(_MarginOptions, _ThreeArrayLoss):
    """Cosine embedding loss with `margin` and `reduction` (see
    cnn_gpu.functional.cosine_embedding_loss): forward(input1, input2, target), backward() ->
    (dinput1, dinput2)."""

    _loss = staticmethod(F.cosine_embedding_loss)

    def __init__(self, margin=0.0, *, reduction="mean"):
        super().__init__(margin, reduction)

    def _per_class(self, dy):
        # per-pair losses (N,) against the gradients (N, D)
        return dy[..., None]


class TripletMarginLoss(_ThreeArrayLoss):
    """Triplet margin loss with `margin`, `p`, `eps`, `swap` and `reduction` (see
    cnn_gpu.functional.triplet_margin_loss): forward(anchor, positive, negative), backward() ->
    (danchor, dpositive, dnegative)."""

    _loss = staticmethod(F.triplet_margin_loss)

    def __init__(self, margin=1.0, p=2.0, eps=1e-6, swap=False, *, reduction="mean"):
        super().__init__(reduction)
        check_triplet_margin(margin)   # refused at construction, as PyTorch's
        self.margin, self.p, self.eps, self.swap = margin, p, eps, swap

    def _options(self, pred):
        return self.margin, self.p, self.eps, self.swap, self.reduction

    def _per_class(self, dy):
        # per-row losses (...,) against the gradients (..., D)
        return dy[..., None]

    def extra_repr(self):
        return f"margin={self.margin}, p={self.p}, eps={self.eps}, swap={self.swap}, {super().extra_repr()}"
