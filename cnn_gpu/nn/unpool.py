"""MaxUnpool1d and MaxUnpool2d (PyTorch's): the partial inverses of MaxPool1d/2d, taking the pooled
input and its indices (MaxPool's return_indices=True output), with PyTorch's sizes kept as tuples."""
from __future__ import annotations

from .. import functional as F
from ..functional.geometry import pair, pool_stride
from ..functional.one_d import single
from .module import Module


class _MaxUnpool(Module):
    """forward(x, indices, output_size=None) -> y, zero but at the indices; backward(dy) -> dx, dy
    gathered at the forward's indices. Subclasses: _op, _op_backward."""

    def forward(self, x, indices, output_size=None):
        y = self._op(x, indices, self.kernel_size, self.stride, self.padding, output_size, backend=self.backend)
        self._saved = indices
        return y

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return self._op_backward(dy, self._saved_for_backward(), backend=self.backend)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool2d(_MaxUnpool):
    """Max unpooling of (N, C, H, W) or (C, H, W) inputs (F.max_unpool2d)."""

    _op, _op_backward = staticmethod(F.max_unpool2d), staticmethod(F.max_unpool2d_backward)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pool_stride(stride, kernel_size)
        self.padding = pair(padding, "padding", minimum=0)


class MaxUnpool1d(_MaxUnpool):
    """Max unpooling of (N, C, L) or (C, L) signals (F.max_unpool1d)."""

    _op, _op_backward = staticmethod(F.max_unpool1d), staticmethod(F.max_unpool1d_backward)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = (single(kernel_size, "kernel_size"),)
        self.stride = self.kernel_size if stride is None else (single(stride, "stride"),)
        self.padding = (single(padding, "padding", minimum=0),)
