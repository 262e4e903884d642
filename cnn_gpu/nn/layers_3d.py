"""The 3-D layers of volumes (video, medical images: (N, C, D, H, W) or unbatched (C, D, H, W)):
Conv3d (F.conv3d), ConvTranspose3d (F.conv_transpose3d), BatchNorm3d (batch norm's (N, C, *) kernels),
Dropout3d (dropout2d's plane masks) and the 3-D pools, with PyTorch's arguments, sizes kept as PyTorch keeps
them (triples) and state dicts."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional import _checks
from ..functional.adaptive_pool import adaptive_max_pool3d_backward_of_own_indices
from ..functional.dropout import check_volumes_input
from ..functional.conv3d import conv3d_padding
from ..functional.geometry import check_divisor_override, pool_stride, triple
from ..functional.pool import max_pool3d_backward_of_own_indices
from .layers import AdaptiveMaxPool2d, AvgPool2d, Dropout, MaxPool2d, _AdaptivePool2d, _BatchNorm, _Conv
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


class ConvTranspose3d(_Conv):
    """3-D transposed convolution (F.conv_transpose3d); weight (in_channels, out_channels/groups, kT, kH, kW),
    sizes kept as (d, h, w) triples. forward(x, output_size=None) takes PyTorch's output_size: the (D, H, W)
    (or the whole shape) of the output, which picks the output padding of that call (each axis up to its
    stride - 1 past the smallest output), kept with the input for its backward."""

    _sizes = staticmethod(triple)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        if padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose3d')
        self.padding = triple(padding, "padding", minimum=0)
        self.output_padding = triple(output_padding, "output_padding", minimum=0)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than stride {self.stride} "
                             f"or dilation {self.dilation}")
        shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        self._init_parameters(shape, self.out_channels, bias, dtype, rng)

    def _output_padding(self, x, output_size) -> tuple:
        """PyTorch's: the layer's output_padding, or the one that makes the output `output_size` (its
        spatial sizes, or the output's whole shape), each between the smallest output and stride - 1 more."""
        if output_size is None:
            return self.output_padding
        leading = 2 if x.ndim == 5 else 1
        output_size = tuple(output_size)
        if len(output_size) == leading + 3:
            output_size = output_size[leading:]
        if len(output_size) != 3:
            raise ValueError(f"ConvTranspose3D: for {x.ndim}D input, output_size must have 3 or {leading + 3} "
                             f"elements (got {len(output_size)})")
        smallest = [(size - 1) * s - 2 * p + d * (k - 1) + 1 for size, s, p, d, k
                    in zip(x.shape[leading:], self.stride, self.padding, self.dilation, self.kernel_size)]
        largest = [low + s - 1 for low, s in zip(smallest, self.stride)]
        if any(not low <= size <= high for size, low, high in zip(output_size, smallest, largest)):
            raise ValueError(f"requested an output size of {list(output_size)}, but valid sizes range from {smallest} "
                             f"to {largest} (for an input of {tuple(x.shape[leading:])})")
        return tuple(int(size) - low for size, low in zip(output_size, smallest))

    def _conv_args(self, output_padding):
        return self.stride, self.padding, output_padding, self.groups, self.dilation

    def forward(self, x, output_size=None):
        _checks.array(x, "x", ndim=(4, 5))
        output_padding = self._output_padding(x, output_size)
        self._saved = (x, output_padding)
        return F.conv_transpose3d(x, self.weight.data, self._bias_data(), *self._conv_args(output_padding),
                                  backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x, output_padding = self._saved_for_backward()
        dx, dweight, dbias = F.conv_transpose3d_backward(dy, x, self.weight.data, *self._conv_args(output_padding),
                                                         **self._gradients_wanted(input_grad), backend=self.backend)
        self._accumulate(dweight, dbias)
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", output_padding={self.output_padding}"


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
