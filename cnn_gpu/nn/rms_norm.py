"""RMSNorm (LLaMA-style transformers' normalisation): F.rms_norm with PyTorch's arguments and
parameter."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional._checks import real_number
from ..functional.layer_norm import normalized_shape_tuple
from .layers import _float_dtype
from .module import Module, Parameter


class RMSNorm(Module):
    """RMS normalisation (F.rms_norm) over the last axes, normalized_shape (an int or a sequence),
    as PyTorch's: weight (ones) of normalized_shape when elementwise_affine, no bias; eps None is
    PyTorch's default (the machine epsilon of the input's compute type). No running statistics:
    training and eval alike. The forward keeps each row's invstd for the backward."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.eps = None if eps is None else real_number(eps, "eps", minimum=0.0)
        self.elementwise_affine = bool(elementwise_affine)
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if self.elementwise_affine else None

    def _weight(self):
        return None if self.weight is None else self.weight.data

    def forward(self, x):
        y, invstd = F.rms_norm(x, self.normalized_shape, self._weight(), self.eps, return_stats=True,
                               backend=self.backend)
        self._saved = (x, invstd)
        return y

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):   # dy may be None (nn.Sequential)
            return None
        x, invstd = self._saved_for_backward()
        dx, dweight = F.rms_norm_backward(dy, x, self.normalized_shape, self._weight(), self.eps, save_invstd=invstd,
                                          backend=self.backend)
        if self.weight is not None:
            self.weight.accumulate_grad(dweight)
        return dx if input_grad else None

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
