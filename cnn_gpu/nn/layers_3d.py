"""The 3-D layers of volumes (video, medical images: (N, C, D, H, W) or unbatched (C, D, H, W)):
Conv3d (F.conv3d), ConvTranspose3d (F.conv_transpose3d), BatchNorm3d (batch norm's (N, C, *) kernels),
Dropout3d (dropout2d's plane masks) and the 3-D pools, with PyTorch's arguments, sizes kept as PyTorch keeps
them (triples) and state dicts."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional.adaptive_pool import adaptive_max_pool3d_backward_of_own_indices
from ..functional.dropout import check_volumes_input
from ..functional.conv3d import conv3d_padding
from ..functional.geometry import check_divisor_override, pool_stride, triple
from ..functional.pool import max_pool3d_backward_of_own_indices
from .layers import AdaptiveMaxPool2d, AvgPool2d, Dropout, MaxPool2d, _AdaptivePool2d, _BatchNorm, _Conv, _ConvTranspose
from .module import Module


class Conv3d(_Conv):
    """3-D convolution (F.conv3d); weight (out_channels, in_channels/groups, kT, kH, kW), sizes kept as
    (d, h, w) triples. A padding_mode other than "zeros" pads the input with F.pad by the layer's
    padding ("same" puts the odd voxel at the back, bottom and right) and convolves with padding 0, as
    PyTorch does."""

    _op, _op_backward = staticmethod(F.conv3d), staticmethod(F.conv3d_backward)
    _sizes = staticmethod(triple)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        # "same" and "valid" kept as such, as PyTorch keeps them; checked here
        before, extra = conv3d_padding(padding, self.stride, self.dilation, self.kernel_size)
        self.padding = padding if isinstance(padding, str) else before
        (front, top, left), (back, bottom, right) = before, extra
        self._mode_pad = (left, left + right, top, top + bottom, front, front + back)   # F.pad's order
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._init_parameters(shape, self.out_channels, bias, dtype, rng)

    def _conv_args(self):
        return self.stride, self.padding if self.padding_mode == "zeros" else 0, self.dilation, self.groups


class ConvTranspose3d(_ConvTranspose):
    """3-D transposed convolution (F.conv_transpose3d); weight (in_channels, out_channels/groups, kT, kH, kW),
    sizes kept as (d, h, w) triples. See _ConvTranspose."""

    _sizes = staticmethod(triple)
    _op, _op_backward = staticmethod(F.conv_transpose3d), staticmethod(F.conv_transpose3d_backward)

class BatchNorm3d(_BatchNorm):
    """Batch normalisation over (N, C, D, H, W): statistics per channel over N, D, H and W. See _BatchNorm."""

    _input_ranks = (5,)
    _expected_input = "a 5-D input (N, C, D, H, W)"


class Dropout3d(Dropout):
    """Channel dropout of volumes (F.dropout3d): each (n, c) volume of an (N, C, D, H, W) input (each
    channel of a (C, D, H, W) one) kept or zeroed whole, one mask a training call from (seed, step),
    with Dropout's step, state_dict and seed. PyTorch 2.13's rank rule in every mode: other ranks
    warn and are taken as unbatched."""

    _op, _op_backward = staticmethod(F.dropout3d), staticmethod(F.dropout3d_backward)

    def forward(self, x):
        # F.dropout3d warns itself where it runs (training with p > 0): once a call either way
        check_volumes_input(x, "x", warn=not (self.training and self.p))
        return super().forward(x)


class MaxPool3d(MaxPool2d):
    """Max pooling of volumes (F.max_pool3d), sizes kept as (d, h, w) triples; with return_indices=True
    forward returns (y, indices) as PyTorch does."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        Module.__init__(self)
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = pool_stride(stride, self.kernel_size, triple)
        self.padding = triple(padding, "padding", minimum=0)
        self.dilation = triple(dilation, "dilation")
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def _pool(self, x):
        return F.max_pool3d(x, *self._pool_args(), backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.max_pool3d_backward if checked else max_pool3d_backward_of_own_indices
        return backward(dy, indices, x_shape, *self._pool_args(), backend=self.backend)


class AvgPool3d(AvgPool2d):
    """Average pooling of volumes (F.avg_pool3d), sizes kept as (d, h, w) triples."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        Module.__init__(self)
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = pool_stride(stride, self.kernel_size, triple)
        self.padding = triple(padding, "padding", minimum=0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = check_divisor_override(divisor_override)

    def forward(self, x):
        self._saved = x.shape
        return F.avg_pool3d(x, *self._pool_args(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.avg_pool3d_backward(dy, self._saved_for_backward(), *self._pool_args(), backend=self.backend)


class AdaptiveAvgPool3d(_AdaptivePool2d):
    """Adaptive average pooling of volumes to `output_size` (an int or a (d, h, w) triple whose None
    entries keep the input size); AdaptiveAvgPool3d(1) is global average pooling."""

    def forward(self, x):
        self._saved = x.shape
        return F.adaptive_avg_pool3d(x, self.output_size, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.adaptive_avg_pool3d_backward(dy, self._saved_for_backward(), backend=self.backend)


class AdaptiveMaxPool3d(AdaptiveMaxPool2d):
    """Adaptive max pooling of volumes to `output_size`; with return_indices=True forward returns
    (y, indices) as PyTorch does."""

    def _pool(self, x):
        return F.adaptive_max_pool3d(x, self.output_size, backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.adaptive_max_pool3d_backward if checked else adaptive_max_pool3d_backward_of_own_indices
        return backward(dy, indices, x_shape, self.output_size, backend=self.backend)
