"""Unfold and Fold (PyTorch's nn.Unfold / nn.Fold): im2col and col2im, each the other's backward pass
(cnn_gpu.functional.folding, kernels/fold.cu)."""
from __future__ import annotations

from .. import functional as F
from .module import Module


class Unfold(Module):
    """(N, C, H, W) or (C, H, W) -> the sliding blocks as columns (N, C*KH*KW, L) or (C*KH*KW, L)."""

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, x):
        self._saved = x.shape
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x_shape = self._saved_for_backward()
        return F.unfold_backward(dy, x_shape, self.kernel_size, self.dilation, self.padding, self.stride,
                                 backend=self.backend)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, stride={self.stride}"


class Fold(Module):
    """Columns (N, C*KH*KW, L) or (C*KH*KW, L) -> the image (N, C, H, W) or (C, H, W) of output_size
    (H, W), overlapping blocks summed."""

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.output_size, self.kernel_size = output_size, kernel_size
        self.dilation, self.padding, self.stride = dilation, padding, stride

    def forward(self, x):
        self._saved = True
        return F.fold(x, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride,
                      backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        self._saved_for_backward()
        return F.fold_backward(dy, self.kernel_size, self.dilation, self.padding, self.stride, backend=self.backend)

    def extra_repr(self):
        return (f"output_size={self.output_size}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}")
