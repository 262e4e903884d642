"""Losses: `forward(pred, target)` returns the mean loss as a Python float, `backward()` the
gradient of that mean with respect to `pred`."""
from __future__ import annotations

from .. import backend as _backend
from .. import functional as F
from .module import Module


class _Loss(Module):
    def forward(self, pred, target) -> float:
        loss, self._saved = self._loss(pred, target, backend=self.backend)
        return loss

    def backward(self, dy=None):
        """The gradient of the loss with respect to pred (scaled by `dy` when given)."""
        dpred = self._saved_for_backward()
        if dy is None:
            return dpred
        # in dpred's dtype: a NumPy float64 scalar dy must not turn a float32 gradient into float64
        xp = _backend.array_module("cuda" if _backend.is_cupy_array(dpred) else "numpy")
        return xp.multiply(dpred, dy, dtype=dpred.dtype)


class CrossEntropyLoss(_Loss):
    """Softmax + mean negative log-likelihood of integer class labels (PyTorch's defaults)."""
    _loss = staticmethod(F.cross_entropy)


class MSELoss(_Loss):
    """Mean squared error (PyTorch's default reduction="mean")."""
    _loss = staticmethod(F.mse_loss)
