"""The 1-D layers (PyTorch's Conv1d, ConvTranspose1d, MaxPool1d, AvgPool1d, AdaptiveAvgPool1d) on
the 1-D functional ops, which run the 2-D ones on (N, C, 1, L) views, and the 1-D padding layers
(F.pad of a (N, C, L) or (C, L) signal's last dim). Sizes are kept as 1-tuples, as
PyTorch keeps them; weights are PyTorch's shapes, so state dicts load into PyTorch's layers and back.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional.dropout import check_signal_input
from ..functional.one_d import (adaptive_max_pool1d_backward_of_own_indices, conv1d_padding,
                                max_pool1d_backward_of_own_indices, pool_sizes, single)
from .layers import Dropout, _Conv, _ConvTranspose, _MaxPool, padding_layers
from .module import Module


def _one(value, name: str, minimum: int = 1) -> tuple:
    """An int or a 1-tuple as a 1-tuple (how PyTorch's 1-D layers keep their sizes)."""
    return (single(value, name, minimum),)


class _Conv1d(_Conv):
    """A 1-D convolution layer: _Conv's, sizes as 1-tuples."""
    _sizes = staticmethod(_one)


class Conv1d(_Conv1d):
    """1-D convolution; weight (out_channels, in_channels/groups, k). A padding_mode other than
    "zeros" pads the signal with F.pad by the layer's padding ("same" puts the odd element on the
    right) and convolves with padding 0, as PyTorch does."""

    _op, _op_backward = staticmethod(F.conv1d), staticmethod(F.conv1d_backward)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        # "same" and "valid" kept as such, as PyTorch keeps them; checked here
        left, total = conv1d_padding(padding, self.stride[0], self.dilation[0], self.kernel_size[0])
        self._mode_pad = (left, total - left)
        self.padding = padding if isinstance(padding, str) else _one(padding, "padding", minimum=0)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._init_parameters(shape, self.out_channels, bias, dtype, rng)

    def _conv_args(self):
        padding = self.padding if self.padding_mode == "zeros" else (0,)
        return self.stride, padding, self.dilation, self.groups


class ConvTranspose1d(_ConvTranspose, _Conv1d):
    """1-D transposed convolution; weight (in_channels, out_channels/groups, k). See _ConvTranspose."""

    _op, _op_backward = staticmethod(F.conv_transpose1d), staticmethod(F.conv_transpose1d_backward)

class MaxPool1d(_MaxPool):
    """1-D max pooling; with return_indices=True forward returns (y, indices) as PyTorch does."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        kernel, stride, padding, dilation = pool_sizes(kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def _pool_args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def _pool(self, x):
        return F.max_pool1d(x, *self._pool_args(), backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.max_pool1d_backward if checked else max_pool1d_backward_of_own_indices
        return backward(dy, indices, x_shape, *self._pool_args(), backend=self.backend)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool1d(Module):
    """1-D average pooling (PyTorch's AvgPool1d: no divisor_override)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        kernel, stride, padding, _ = pool_sizes(kernel_size, stride, padding)
        # 1-tuples, as PyTorch's AvgPool1d keeps them
        self.kernel_size, self.stride, self.padding = (kernel,), (stride,), (padding,)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def _pool_args(self):
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    def forward(self, x):
        self._saved = x.shape
        return F.avg_pool1d(x, *self._pool_args(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.avg_pool1d_backward(dy, self._saved_for_backward(), *self._pool_args(), backend=self.backend)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")


class AdaptiveAvgPool1d(Module):
    """1-D adaptive average pooling to `output_size` (an int or a 1-tuple); AdaptiveAvgPool1d(1) is
    global average pooling over L."""

    def __init__(self, output_size):
        super().__init__()
        single(output_size, "output_size")   # refused here, not at the first forward
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size

    def forward(self, x):
        self._saved = x.shape
        return F.adaptive_avg_pool1d(x, self.output_size, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.adaptive_avg_pool1d_backward(dy, self._saved_for_backward(), backend=self.backend)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(_MaxPool):
    """1-D adaptive max pooling to `output_size` (an int or a 1-tuple); with return_indices=True forward
    returns (y, indices) as PyTorch does."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        single(output_size, "output_size")   # refused here, not at the first forward
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size
        self.return_indices = bool(return_indices)

    def _pool(self, x):
        return F.adaptive_max_pool1d(x, self.output_size, backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.adaptive_max_pool1d_backward if checked else adaptive_max_pool1d_backward_of_own_indices
        return backward(dy, indices, x_shape, backend=self.backend)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Dropout1d(Dropout):
    """Channel dropout of signals (F.dropout1d): each channel of an (N, C, L) or (C, L) input kept or
    zeroed whole, one mask a training call from (seed, step), with Dropout's step, state_dict and
    seed; other ranks refused in every mode, as PyTorch's."""

    _op, _op_backward = staticmethod(F.dropout1d), staticmethod(F.dropout1d_backward)

    def forward(self, x):
        check_signal_input(x, "x")   # in eval mode too, as PyTorch's
        return super().forward(x)


ConstantPad1d, ZeroPad1d, ReflectionPad1d, ReplicationPad1d, CircularPad1d = padding_layers(
    1, "a signal (the last dim of (N, C, L) or (C, L))", __name__)
