"""Layers with PyTorch's constructor arguments and default initialisation.

Each layer calls `cnn_gpu.functional` with `backend=self.backend` (set by `Module.to`), so a
model moved to "emu" runs the CUDA kernels although its arrays are NumPy arrays.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import functional as F
from .. import philox, replay
from ..functional._checks import FLOAT_DTYPES, array, real_number, whole_number
from ..functional.adaptive_pool import adaptive_max_pool2d_backward_of_own_indices
from ..functional.activation import gelu_form
from ..functional.dropout import check_planes_input, check_probability
from ..functional.geometry import check_divisor_override, conv_padding, pair, pool_stride
from ..functional.layer_norm import normalized_shape_tuple
from ..functional.padding import fill_value, layer_padding
from ..functional.pool import max_pool2d_backward_of_own_indices
from ..functional.upsample import check_settings as check_upsample_settings
from . import init
from .module import Module, Parameter


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
    return dtype


class _Weighted(Module):
    """A layer with a weight and an optional bias, initialised as PyTorch does."""

    def _init_parameters(self, weight_shape, bias_size: int, bias: bool, dtype, rng) -> None:
        dtype = _float_dtype(dtype)
        self.weight = Parameter(init.kaiming_uniform(weight_shape, dtype=dtype, rng=rng))
        self.bias = Parameter(init.default_bias(bias_size, weight_shape, dtype, rng)) if bias else None

    def _bias_data(self):
        return None if self.bias is None else self.bias.data

    def _gradients_wanted(self, input_grad) -> dict:
        """The backward op's flags for the gradients to compute: the input's where wanted, and
        those of the parameters not frozen (requires_grad)."""
        return dict(input_grad=input_grad, weight_grad=self.weight.requires_grad,
                    bias=self.bias is not None and self.bias.requires_grad)

    def _accumulate(self, dweight, dbias) -> None:
        self.weight.accumulate_grad(dweight)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias)


class _Conv(_Weighted):
    """A convolution layer: its functional op and backward (`_op`, `_op_backward`) called with the
    layer's weight, bias and `_conv_args()`; its sizes taken by `_sizes` (an int or a pair, as
    tuples: a 2-D layer's; a 1-D layer's are 1-tuples)."""
    _sizes = staticmethod(pair)

    def _init_conv(self, in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode) -> None:
        self.in_channels = whole_number(in_channels, "in_channels")
        self.out_channels = whole_number(out_channels, "out_channels")
        self.groups = whole_number(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                             f"divisible by groups ({groups})")
        self.kernel_size = self._sizes(kernel_size, "kernel_size")
        self.stride = self._sizes(stride, "stride")
        self.dilation = self._sizes(dilation, "dilation")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be one of {{'zeros', 'reflect', 'replicate', 'circular'}}, but got "
                             f"padding_mode={padding_mode!r}")
        self.padding_mode = padding_mode

    # A padding_mode other than "zeros" (Conv2d, Conv1d): the input padded by `_mode_pad` (F.pad's
    # order) before the convolution, which then takes padding 0 (`_conv_args`), and the padded input's
    # gradient folded back, as PyTorch does it (F.pad pads a batched or unbatched signal or image)

    def forward(self, x):
        x_shape = x.shape
        if self.padding_mode != "zeros":
            x = F.pad(x, self._mode_pad, self.padding_mode, backend=self.backend)
        self._saved = (x, x_shape)
        return self._op(x, self.weight.data, self._bias_data(), *self._conv_args(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x, x_shape = self._saved_for_backward()
        dx, dweight, dbias = self._op_backward(dy, x, self.weight.data, *self._conv_args(),
                                               **self._gradients_wanted(input_grad), backend=self.backend)
        self._accumulate(dweight, dbias)
        if dx is not None and self.padding_mode != "zeros":
            dx = F.pad_backward(dx, x_shape, self._mode_pad, self.padding_mode, backend=self.backend)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}" + (f", padding_mode={self.padding_mode}"
                                                   if self.padding_mode != "zeros" else ""))


class Conv2d(_Conv):
    """2-D convolution; weight (out_channels, in_channels/groups, kH, kW). A padding_mode other
    than "zeros" pads the input with F.pad by the layer's padding (left, right, top, bottom; "same"
    puts the odd pixel on the right and bottom) and convolves with padding 0, as PyTorch does."""

    _op, _op_backward = staticmethod(F.conv2d), staticmethod(F.conv2d_backward)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        self.padding = self._padding(padding)
        (top, left), (bottom_extra, right_extra) = conv_padding(self.padding, self.stride, self.dilation,
                                                                self.kernel_size)
        self._mode_pad = (left, left + right_extra, top, top + bottom_extra)   # F.pad's order
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._init_parameters(shape, self.out_channels, bias, dtype, rng)

    def _conv_padding(self):
        return self.padding if self.padding_mode == "zeros" else 0

    def _padding(self, padding):
        # PyTorch's strings "same" and "valid" are kept as such (F.conv2d takes them); checked here
        conv_padding(padding, self.stride, self.dilation, self.kernel_size)
        return padding if isinstance(padding, str) else pair(padding, "padding", minimum=0)

    def _conv_args(self):
        return self.stride, self._conv_padding(), self.dilation, self.groups


class _ConvTranspose(_Conv):
    """A transposed convolution layer (ConvTranspose1d/2d/3d), PyTorch's constructor and
    forward(x, output_size=None): output_size, the output's spatial sizes (or its whole shape), picks
    that call's output padding (each axis from the smallest output up to stride - 1 more, PyTorch's
    rule), kept with the input for its backward."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        if padding_mode != "zeros":
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')
        self.padding = self._sizes(padding, "padding", minimum=0)
        self.output_padding = self._sizes(output_padding, "output_padding", minimum=0)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            def shown(sizes):   # a 1-D layer's sizes as numbers
                return sizes[0] if len(sizes) == 1 else sizes
            raise ValueError(f"output_padding {shown(self.output_padding)} must be smaller than stride "
                             f"{shown(self.stride)} or dilation {shown(self.dilation)}")
        shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        self._init_parameters(shape, self.out_channels, bias, dtype, rng)

    def _output_padding(self, x, output_size) -> tuple:
        """The layer's output_padding, or (PyTorch's rule) the one that makes the output `output_size`."""
        if output_size is None:
            return self.output_padding
        spatial = len(self.kernel_size)
        array(x, "x", ndim=(spatial + 1, spatial + 2))
        leading = x.ndim - spatial
        output_size = tuple(output_size)
        if len(output_size) == leading + spatial:
            output_size = output_size[leading:]
        if len(output_size) != spatial:
            raise ValueError(f"ConvTranspose{spatial}D: for {x.ndim}D input, output_size must have {spatial} or "
                             f"{leading + spatial} elements (got {len(output_size)})")
        smallest = [(size - 1) * s - 2 * p + d * (k - 1) + 1 for size, s, p, d, k
                    in zip(x.shape[leading:], self.stride, self.padding, self.dilation, self.kernel_size)]
        largest = [low + s - 1 for low, s in zip(smallest, self.stride)]
        if any(not low <= size <= high for size, low, high in zip(output_size, smallest, largest)):
            raise ValueError(f"requested an output size of {list(output_size)}, but valid sizes range from {smallest} "
                             f"to {largest} (for an input of {tuple(x.shape[leading:])})")
        return tuple(int(size) - low for size, low in zip(output_size, smallest))

    def _options(self, output_padding) -> dict:
        return dict(stride=self.stride, padding=self.padding, output_padding=output_padding, groups=self.groups,
                    dilation=self.dilation)

    def forward(self, x, output_size=None):
        output_padding = self._output_padding(x, output_size)
        self._saved = (x, output_padding)
        return self._op(x, self.weight.data, self._bias_data(), **self._options(output_padding), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x, output_padding = self._saved_for_backward()
        dx, dweight, dbias = self._op_backward(dy, x, self.weight.data, **self._options(output_padding),
                                               **self._gradients_wanted(input_grad), backend=self.backend)
        self._accumulate(dweight, dbias)
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", output_padding={self.output_padding}"


class ConvTranspose2d(_ConvTranspose):
    """2-D transposed convolution; weight (in_channels, out_channels/groups, kH, kW). See _ConvTranspose."""

    _op, _op_backward = staticmethod(F.conv_transpose2d), staticmethod(F.conv_transpose2d_backward)


class Linear(_Weighted):
    """y = x @ weight.T + bias; weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = whole_number(in_features, "in_features")
        self.out_features = whole_number(out_features, "out_features")
        self._init_parameters((self.out_features, self.in_features), self.out_features, bias, dtype, rng)

    def forward(self, x):
        self._saved = x
        return F.linear(x, self.weight.data, self._bias_data(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x = self._saved_for_backward()
        dx, dweight, dbias = F.linear_backward(dy, x, self.weight.data, **self._gradients_wanted(input_grad),
                                               backend=self.backend)
        self._accumulate(dweight, dbias)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _MaxPool(Module):
    """A max pool: forward returns y, or (y, indices) with `return_indices` as PyTorch does; the
    backward routes dy through the indices its forward saved. Subclasses: `_pool(x)` -> (y,
    indices), and `_unpool(dy, indices, x_shape, checked)`, checked=False skipping the index check
    for the layer's own indices (the caller holds them only with return_indices)."""

    def forward(self, x):
        y, indices = self._pool(x)
        self._saved = (indices, x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        indices, x_shape = self._saved_for_backward()
        return self._unpool(dy, indices, x_shape, checked=self.return_indices)


class MaxPool2d(_MaxPool):
    """Max pooling; with return_indices=True forward returns (y, indices) as PyTorch does."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pool_stride(stride, self.kernel_size)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation")
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def _pool_args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def _pool(self, x):
        return F.max_pool2d(x, *self._pool_args(), backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.max_pool2d_backward if checked else max_pool2d_backward_of_own_indices
        return backward(dy, indices, x_shape, *self._pool_args(), backend=self.backend)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pool_stride(stride, self.kernel_size)
        self.padding = pair(padding, "padding", minimum=0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = check_divisor_override(divisor_override)

    def _pool_args(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                self.divisor_override)

    def forward(self, x):
        self._saved = x.shape
        return F.avg_pool2d(x, *self._pool_args(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.avg_pool2d_backward(dy, self._saved_for_backward(), *self._pool_args(), backend=self.backend)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}, "
                f"divisor_override={self.divisor_override}")


class _Activation(Module):
    """An activation F.<name>(x, **options) with F.<name>_backward(dy, saved, **options): saved is the
    forward input x, or its output y where _backward_takes_output (softmax's gradient needs only y)."""
    _backward_takes_output = False

    def _options(self, x) -> dict:
        return {}

    def forward(self, x):
        options = self._options(x)
        y = self._forward(x, **options, backend=self.backend)
        self._saved = (y if self._backward_takes_output else x, options)
        return y

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        saved, options = self._saved_for_backward()
        return self._backward(dy, saved, **options, backend=self.backend)


def _refuse_inplace(inplace, layer: str) -> None:
    """PyTorch's inplace=True overwrites the input; these layers keep their input arrays unchanged."""
    if inplace:
        raise ValueError(f"inplace {layer} is not supported (the layer keeps its input arrays unchanged)")


class _ActivationWithInplace(_Activation):
    """An activation whose PyTorch layer takes inplace=False as its only argument."""

    def __init__(self, inplace=False):
        super().__init__()
        _refuse_inplace(inplace, type(self).__name__)


class ReLU(_ActivationWithInplace):
    _forward = staticmethod(F.relu)
    _backward = staticmethod(F.relu_backward)


class Sigmoid(_Activation):
    _forward = staticmethod(F.sigmoid)
    _backward = staticmethod(F.sigmoid_backward)


class Tanh(_Activation):
    _forward = staticmethod(F.tanh)
    _backward = staticmethod(F.tanh_backward)


class SiLU(_ActivationWithInplace):
    _forward = staticmethod(F.silu)
    _backward = staticmethod(F.silu_backward)


class GELU(_Activation):
    """PyTorch's GELU(approximate="none"): the exact erf form, or "tanh" for its tanh approximation."""
    _forward = staticmethod(F.gelu)
    _backward = staticmethod(F.gelu_backward)

    def __init__(self, approximate="none"):
        super().__init__()
        gelu_form(approximate)   # refused here, not at the first forward
        self.approximate = approximate

    def _options(self, x):
        return {"approximate": self.approximate}

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class _ActivationWithParameter(_Activation):
    """An activation whose PyTorch layer takes (<_parameter>, inplace=False), one real number, kept
    as the attribute of that name and passed to F.<name> by it."""
    _parameter: str

    def __init__(self, value, inplace):
        super().__init__()
        setattr(self, self._parameter, real_number(value, self._parameter))
        _refuse_inplace(inplace, type(self).__name__)

    def _options(self, x):
        return {self._parameter: getattr(self, self._parameter)}

    def extra_repr(self):
        return f"{self._parameter}={getattr(self, self._parameter)}"


class LeakyReLU(_ActivationWithParameter):
    _forward = staticmethod(F.leaky_relu)
    _backward = staticmethod(F.leaky_relu_backward)
    _parameter = "negative_slope"

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(negative_slope, inplace)


class Hardtanh(_Activation):
    """PyTorch's Hardtanh(min_val=-1.0, max_val=1.0, inplace=False, min_value=None, max_value=None): the
    deprecated min_value and max_value replace min_val and max_val with PyTorch's FutureWarning; bounds
    with max_val <= min_val are refused when built (ValueError, PyTorch's message; PyTorch raises
    AssertionError)."""
    _forward = staticmethod(F.hardtanh)
    _backward = staticmethod(F.hardtanh_backward)

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False, min_value=None, max_value=None):
        super().__init__()
        if min_value is not None:
            warnings.warn("keyword argument `min_value` is deprecated and renamed to `min_val`", FutureWarning,
                          stacklevel=2)
            min_val = min_value
        if max_value is not None:
            warnings.warn("keyword argument `max_value` is deprecated and renamed to `max_val`", FutureWarning,
                          stacklevel=2)
            max_val = max_value
        self.min_val, self.max_val = real_number(min_val, "min_val"), real_number(max_val, "max_val")
        if self.max_val <= self.min_val:   # stricter than F.hardtanh, as in PyTorch
            raise ValueError(f"max_val ({self.max_val}) must be greater than min_val ({self.min_val})")
        _refuse_inplace(inplace, type(self).__name__)

    def _options(self, x):
        return {"min_val": self.min_val, "max_val": self.max_val}

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    """PyTorch's ReLU6(inplace=False): Hardtanh(0.0, 6.0), as PyTorch's subclass."""

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self):
        return ""


class Hardsigmoid(_ActivationWithInplace):
    _forward = staticmethod(F.hardsigmoid)
    _backward = staticmethod(F.hardsigmoid_backward)


class Hardswish(_ActivationWithInplace):
    _forward = staticmethod(F.hardswish)
    _backward = staticmethod(F.hardswish_backward)


class ELU(_ActivationWithParameter):
    _forward = staticmethod(F.elu)
    _backward = staticmethod(F.elu_backward)
    _parameter = "alpha"

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__(alpha, inplace)


class Mish(_ActivationWithInplace):
    _forward = staticmethod(F.mish)
    _backward = staticmethod(F.mish_backward)


class _Softmax(_Activation):
    """F.<name>(x, dim) over self.dim, its backward from the output y. dim=None takes PyTorch's
    legacy implicit dim (0 for 0-, 1- and 3-D inputs, else 1) with PyTorch's deprecation warning."""
    _backward_takes_output = True

    def __init__(self, dim=None):
        super().__init__()
        if dim is not None and (isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer))):
            raise TypeError(f"dim must be an int or None, got {dim!r}")
        self.dim = dim   # checked against the input's rank by F.<name>, as PyTorch does

    def _options(self, x):
        if self.dim is not None:
            return {"dim": self.dim}
        warnings.warn(f"Implicit dimension choice for {self._forward.__name__} has been deprecated. Change the call "
                      f"to include dim=X as an argument.", UserWarning, stacklevel=4)
        return {"dim": 0 if x.ndim in (0, 1, 3) else 1}

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_Softmax):
    _forward = staticmethod(F.softmax)
    _backward = staticmethod(F.softmax_backward)


class LogSoftmax(_Softmax):
    _forward = staticmethod(F.log_softmax)
    _backward = staticmethod(F.log_softmax_backward)


class Identity(Module):
    """The input itself (PyTorch's, whose arguments it takes and ignores): a placeholder layer."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self._saved = True
        return x

    def backward(self, dy, input_grad=True):
        return None if self._nothing_to_compute(input_grad) else dy


class Flatten(Module):
    """Merge dimensions start_dim..end_dim into one (PyTorch's defaults keep the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x):
        ndim = x.ndim
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < ndim:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an input "
                             f"of shape {tuple(x.shape)}")
        self._saved = x.shape
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return dy.reshape(self._saved_for_backward())

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _BatchNorm(Module):
    """Batch normalisation over (N, C, *) with PyTorch's arguments and state: weight (ones) and
    bias (zeros) when affine; buffers running_mean (zeros), running_var (ones) and
    num_batches_tracked when track_running_stats. momentum=None averages cumulatively. A state
    dict without num_batches_tracked (as PyTorch's before 0.4.1) loads, keeping the count.
    num_batches_tracked stays a NumPy counter on every backend (Module._host_buffers): counted on
    the device it would cost a launch a step, and a read (a synchronisation) with momentum=None.
    The subclasses differ only in the input ranks they take, as PyTorch's (its _BatchNorm)."""

    _input_ranks: tuple = ()
    _expected_input = ""   # for the error on another rank

    _host_buffers = frozenset({"num_batches_tracked"})
    _defaults_for_missing_buffers = {"num_batches_tracked": None}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        self.num_features = whole_number(num_features, "num_features")
        dtype = _float_dtype(dtype)
        self.momentum = None if momentum is None else real_number(momentum, "momentum")
        if self.momentum is not None and not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be None or in [0, 1], got {momentum!r}")
        self.eps = real_number(eps, "eps", minimum=0.0)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.weight = Parameter(np.ones(self.num_features, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_features, dtype)) if self.affine else None
        tracked = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(self.num_features, dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64) if tracked else None)

    def _batch_statistics(self) -> bool:
        # PyTorch: batch statistics while training, and always when no running statistics are kept
        return self.training or self.running_mean is None

    def forward(self, x, *, activation=None):
        """activation="relu", "relu6", "hardswish" or "silu": the activation layer that follows, in the
        same pass (and its gradient in backward's; F.batch_norm's activation); nn.Sequential asks for
        it where an nn.ReLU, nn.ReLU6, nn.Hardswish or nn.SiLU follows this layer."""
        if x.ndim not in self._input_ranks:
            raise ValueError(f"{type(self).__name__} expects {self._expected_input}, got shape {tuple(x.shape)}")
        factor = self._blend_factor()
        use_running = not self.training or self.track_running_stats
        running = (self.running_mean, self.running_var) if use_running else (None, None)
        weight, bias = (None, None) if not self.affine else (self.weight.data, self.bias.data)
        training = self._batch_statistics()
        y, mean, invstd = F.batch_norm(x, *running, weight, bias, training, factor, self.eps, activation=activation,
                                       return_stats=True, backend=self.backend)
        self._saved = (x, mean, invstd, training, activation)
        return y

    def _blend_factor(self) -> float:
        """The factor this call blends the batch statistics into the running ones with (momentum, or
        for momentum=None a cumulative average's), counting the batch where they are tracked."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.momentum is None:   # cumulative moving average
                replay.refuse(f"{type(self).__name__}(momentum=None) in training (its averaging factor changes "
                              f"every step)")
                factor = 1.0 / (int(self.num_batches_tracked) + 1)
            replay.live(self._count_batch)
        return factor

    def _count_batch(self) -> None:
        self.num_batches_tracked = np.array(int(self.num_batches_tracked) + 1, np.int64)

    def backward(self, dy, input_grad=True):
        """The parameters' gradients come out of the same reductions as dx: input_grad=False
        returns None but saves no work, but where there are none to train (affine=False, or
        frozen): nothing to do."""
        if self._nothing_to_compute(input_grad):   # dy may be None (nn.Sequential)
            return None
        x, mean, invstd, training, activation = self._saved_for_backward()
        weight, bias = (None, None) if not self.affine else (self.weight.data, self.bias.data)
        dx, dweight, dbias = F.batch_norm_backward(dy, x, None, None, weight, bias, training, self.eps,
                                                   activation=activation, save_mean=mean, save_invstd=invstd,
                                                   backend=self.backend)
        if self.affine:
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
        return dx if input_grad else None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) (a Linear's output) or (N, C, L): statistics per channel
    over N (and L). See _BatchNorm."""

    _input_ranks = (2, 3)
    _expected_input = "a 2-D or 3-D input (N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W): statistics per channel over N, H and W. See _BatchNorm."""

    _input_ranks = (4,)
    _expected_input = "a 4-D input (N, C, H, W)"


class _NormWithoutRunningStats(Module):
    """GroupNorm's and LayerNorm's work: their functional op (`_op`, `_op_backward`) with the
    layer's layout argument (`_layout`), optional weight and bias, and the forward's statistics
    saved for the backward. No running statistics: training and eval alike."""

    def _affine(self):
        return tuple(None if p is None else p.data for p in (self.weight, self.bias))

    def forward(self, x):
        y, mean, invstd = self._op(x, self._layout(), *self._affine(), self.eps, return_stats=True,
                                   backend=self.backend)
        self._saved = (x, mean, invstd)
        return y

    def backward(self, dy, input_grad=True):
        """As BatchNorm2d's: the parameters' gradients come with dx."""
        if self._nothing_to_compute(input_grad):   # dy may be None (nn.Sequential)
            return None
        x, mean, invstd = self._saved_for_backward()
        dx, dweight, dbias = self._op_backward(dy, x, self._layout(), *self._affine(), self.eps, save_mean=mean,
                                               save_invstd=invstd, backend=self.backend)
        for parameter, grad in ((self.weight, dweight), (self.bias, dbias)):
            if parameter is not None:
                parameter.accumulate_grad(grad)
        return dx if input_grad else None


class GroupNorm(_NormWithoutRunningStats):
    """Group normalisation (F.group_norm) of (N, C, *) inputs with PyTorch's arguments and
    parameters: weight (ones) and bias (zeros) when affine, bias=False leaving the bias out."""

    _op, _op_backward = staticmethod(F.group_norm), staticmethod(F.group_norm_backward)

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32, *, bias=True):
        super().__init__()
        self.num_groups = whole_number(num_groups, "num_groups")
        self.num_channels = whole_number(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({self.num_channels}) must be divisible by num_groups ({self.num_groups})")
        self.eps = real_number(eps, "eps", minimum=0.0)
        self.affine = bool(affine)
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_channels, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_channels, dtype)) if self.affine and bias else None

    def _layout(self):
        return self.num_groups

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class LayerNorm(_NormWithoutRunningStats):
    """Layer normalisation (F.layer_norm) over the last axes, normalized_shape (an int or a
    sequence), with PyTorch's arguments and parameters: weight (ones) and bias (zeros) of
    normalized_shape when elementwise_affine, bias=False leaving the bias out."""

    _op, _op_backward = staticmethod(F.layer_norm), staticmethod(F.layer_norm_backward)

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.eps = real_number(eps, "eps", minimum=0.0)
        self.elementwise_affine = bool(elementwise_affine)
        dtype = _float_dtype(dtype)
        affine = self.elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if affine and bias else None

    def _layout(self):
        return self.normalized_shape

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class Dropout(Module):
    """Dropout with PyTorch's p; the mask of each training call comes from (seed, step) (see
    F.dropout) and `step` advances on every training call. seed=None draws the seed from the
    nn.init generator, so nn.init.manual_seed makes the masks reproducible too. `step` (a 0-d
    int64 array) is a buffer, saved in state_dict(), so that a run resumed from a checkpoint
    draws the masks the uninterrupted run would; a state dict without it (saved before it was
    one) loads as step 0, a layer that has not trained yet."""

    _host_buffers = frozenset({"step"})
    _defaults_for_missing_buffers = {"step": 0}
    _op, _op_backward = staticmethod(F.dropout), staticmethod(F.dropout_backward)

    def __init__(self, p=0.5, inplace=False, seed=None):
        super().__init__()
        _refuse_inplace(inplace, "dropout")
        self.p = check_probability(p)
        self.seed = int(init.generator().integers(2**63)) if seed is None else philox.check_seed(seed, "seed")
        self.register_buffer("step", np.zeros((), np.int64))

    def forward(self, x):
        if not self.training:
            self._saved = ()
            return x
        name = type(self).__name__
        if self.p:
            replay.refuse(f"{name} in training mode (each step draws a new mask)")
        step = int(self.step)
        if step >= np.iinfo(np.int64).max:   # refused before any work: this call could not be counted
            raise OverflowError(f"{name}'s step counter is at int64's maximum ({step}); set .step lower")
        # p == 0 keeps every element but still counts the call: a p raised later draws the masks
        # of the same steps as a layer built with it
        y = self._op(x, self.p, True, seed=self.seed, step=step, backend=self.backend) if self.p else x
        replay.live(self._count_call)   # p == 0 only, in a recording
        self._saved = (step,) if self.p else ()
        return y

    def _count_call(self) -> None:
        self.step = np.array(int(self.step) + 1, np.int64)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        saved = self._saved_for_backward()
        if not saved:
            return dy
        return self._op_backward(dy, self.p, self.seed, saved[0], backend=self.backend)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Channel dropout (F.dropout2d): each (n, c) plane kept or zeroed whole, one mask a training
    call from (seed, step), with Dropout's step, state_dict and seed. PyTorch 2.13's input rules in
    every mode: a 3-D input is (N, C, L) (with its warning), ranks other than 3 or 4 warn, below 2
    are refused."""

    _op, _op_backward = staticmethod(F.dropout2d), staticmethod(F.dropout2d_backward)

    def forward(self, x):
        # F.dropout2d warns itself where it runs (training with p > 0): once a call either way
        check_planes_input(x, "x", warn=not (self.training and self.p))
        return super().forward(x)


class _AdaptivePool2d(Module):
    """The adaptive pools' setting: `output_size`, an int or an (h, w) pair whose None entries keep
    the input size."""

    def __init__(self, output_size):
        super().__init__()
        # a list kept as a tuple: the caller's list edited in place later changes nothing (a replay
        # could not see such an edit; cnn_gpu.replay refuses an assigned setting)
        self.output_size = tuple(output_size) if isinstance(output_size, list) else output_size

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Adaptive average pooling to `output_size`; AdaptiveAvgPool2d(1) is global average pooling."""

    def forward(self, x):
        self._saved = x.shape
        return F.adaptive_avg_pool2d(x, self.output_size, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.adaptive_avg_pool2d_backward(dy, self._saved_for_backward(), backend=self.backend)


class AdaptiveMaxPool2d(_AdaptivePool2d, _MaxPool):
    """Adaptive max pooling to `output_size`; with return_indices=True forward returns (y, indices)
    as PyTorch does."""

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def _pool(self, x):
        return F.adaptive_max_pool2d(x, self.output_size, backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = F.adaptive_max_pool2d_backward if checked else adaptive_max_pool2d_backward_of_own_indices
        return backward(dy, indices, x_shape, self.output_size, backend=self.backend)


class Upsample(Module):
    """F.interpolate as a layer (torch.nn.Upsample): to `size`, or by `scale_factor`, with mode
    "nearest", "nearest-exact", "bilinear", "bicubic" or "area" on (N, C, H, W), "nearest",
    "nearest-exact", "linear" or "area" on (N, C, L). The settings are checked here, as far as
    they can be without an input."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        check_upsample_settings(size, scale_factor, mode, align_corners)
        # lists kept as tuples (an edit of the caller's list later changes nothing, as in
        # AdaptiveAvgPool2d); scale factors as floats, as PyTorch keeps and prints them
        self.size = tuple(size) if isinstance(size, list) else size
        if scale_factor is not None:
            scale_factor = (tuple(float(f) for f in scale_factor) if isinstance(scale_factor, (tuple, list))
                            else float(scale_factor))
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def _settings(self):
        return dict(size=self.size, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners)

    def forward(self, x):
        self._saved = x.shape
        return F.interpolate(x, **self._settings(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.interpolate_backward(dy, self._saved_for_backward(), **self._settings(), backend=self.backend)

    def extra_repr(self):
        target = f"scale_factor={self.scale_factor!r}" if self.scale_factor is not None else f"size={self.size!r}"
        return f"{target}, mode={self.mode!r}"


class UpsamplingNearest2d(Upsample):
    """PyTorch's (deprecated there, as here in favour of Upsample) nearest upsampling of images."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """PyTorch's bilinear upsampling of images with align_corners=True (Upsample's default is False)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


class _Pad(Module):
    """F.pad of the last `_dims` dims by `padding` (an int, or 2 * _dims ints in F.pad's order:
    (left, right[, top, bottom[, front, back]])) in `_mode`, on batched or unbatched inputs."""
    _mode = "constant"
    _dims = 2
    value = None

    def __init__(self, padding):
        super().__init__()
        self.padding = layer_padding(padding, self._dims)

    def forward(self, x):
        self._saved = x.shape
        return F.pad(x, self.padding, self._mode, self.value, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return F.pad_backward(dy, self._saved_for_backward(), self.padding, self._mode, backend=self.backend)

    def extra_repr(self):
        return f"{self.padding}"


class _ConstantPad(_Pad):
    """Pads with the constant `value`; negative padding crops."""

    def __init__(self, padding, value):
        super().__init__(padding)
        self.value = fill_value(value)

    def extra_repr(self):
        return f"padding={self.padding}, value={self.value}"


class _ZeroFill:
    """The ZeroPad*d layers: their ConstantPad*d's with value 0, PyTorch's constructor and repr."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def extra_repr(self):
        return f"{self.padding}"


def padding_layers(dims: int, padded: str, module: str = __name__) -> tuple:
    """PyTorch's five padding layers of `dims` padded dims: (ConstantPad, ZeroPad, ReflectionPad,
    ReplicationPad, CircularPad){dims}d, ZeroPad a ConstantPad as in PyTorch; `padded` says what
    they pad in their docstrings, `module` is where they are defined."""
    def layer(kind, bases, mode, how):
        name = f"{kind}Pad{dims}d"
        return type(name, bases, dict(_mode=mode, _dims=dims, __doc__=f"Pads {padded} {how}", __module__=module,
                                      __qualname__=name))
    constant = layer("Constant", (_ConstantPad,), "constant", "with the constant `value`; negative padding crops.")
    return (constant, layer("Zero", (_ZeroFill, constant), "constant", "with zeros; negative padding crops."),
            layer("Reflection", (_Pad,), "reflect", "with its reflection, the edge not repeated (each pad below the "
                                                    "size)."),
            layer("Replication", (_Pad,), "replicate", "with copies of its edge elements."),
            layer("Circular", (_Pad,), "circular", "with itself wrapped around (each pad at most the size)."))


ConstantPad2d, ZeroPad2d, ReflectionPad2d, ReplicationPad2d, CircularPad2d = padding_layers(
    2, "an image (the last two dims of (N, C, H, W) or (C, H, W))")
ConstantPad3d, ZeroPad3d, ReflectionPad3d, ReplicationPad3d, CircularPad3d = padding_layers(
    3, "a volume (the last three dims of (N, C, D, H, W) or (C, D, H, W))")


class Softplus(_Activation):
    """PyTorch's Softplus(beta=1.0, threshold=20.0)."""
    _forward = staticmethod(F.softplus)
    _backward = staticmethod(F.softplus_backward)

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta, self.threshold = real_number(beta, "beta"), real_number(threshold, "threshold")

    def _options(self, x):
        return {"beta": self.beta, "threshold": self.threshold}

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class SELU(_ActivationWithInplace):
    _forward = staticmethod(F.selu)
    _backward = staticmethod(F.selu_backward)


class CELU(_ActivationWithParameter):
    """PyTorch's CELU(alpha=1.0, inplace=False); alpha = 0 refused when built (PyTorch: at the first forward)."""
    _forward = staticmethod(F.celu)
    _backward = staticmethod(F.celu_backward)
    _parameter = "alpha"

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__(alpha, inplace)
        F.activation.celu_form(self.alpha)


class LogSigmoid(_Activation):
    _forward = staticmethod(F.logsigmoid)
    _backward = staticmethod(F.logsigmoid_backward)


class Softsign(_Activation):
    _forward = staticmethod(F.softsign)
    _backward = staticmethod(F.softsign_backward)


class Tanhshrink(_Activation):
    _forward = staticmethod(F.tanhshrink)
    _backward = staticmethod(F.tanhshrink_backward)


class _Shrink(_Activation):
    """PyTorch's Hardshrink(lambd=0.5) and Softshrink(lambd=0.5): extra_repr the bare lambd, as PyTorch's."""

    def __init__(self, lambd=0.5):
        super().__init__()
        self.lambd = real_number(lambd, "lambd")

    def _options(self, x):
        return {"lambd": self.lambd}

    def extra_repr(self):
        return str(self.lambd)


class Hardshrink(_Shrink):
    _forward = staticmethod(F.hardshrink)
    _backward = staticmethod(F.hardshrink_backward)


class Softshrink(_Shrink):
    """Softshrink(lambd=0.5), lambd >= 0 (refused when built; PyTorch: at the first forward)."""
    _forward = staticmethod(F.softshrink)
    _backward = staticmethod(F.softshrink_backward)

    def __init__(self, lambd=0.5):
        super().__init__(lambd)
        F.activation.shrink_lambd(self.lambd)


class Threshold(_Activation):
    """PyTorch's Threshold(threshold, value, inplace=False): value where x <= threshold, else x."""
    _forward = staticmethod(F.threshold)
    _backward = staticmethod(F.threshold_backward)

    def __init__(self, threshold, value, inplace=False):
        super().__init__()
        self.threshold, self.value = real_number(threshold, "threshold"), real_number(value, "value")
        _refuse_inplace(inplace, type(self).__name__)

    def _options(self, x):
        return {"threshold": self.threshold, "value": self.value}

    def extra_repr(self):
        return f"threshold={self.threshold}, value={self.value}"


class GLU(_Activation):
    """PyTorch's GLU(dim=-1): the first half of the input along dim times the sigmoid of the second."""
    _forward = staticmethod(F.glu)
    _backward = staticmethod(F.glu_backward)

    def __init__(self, dim=-1):
        super().__init__()
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = int(dim)   # checked against the input's rank by F.glu, as PyTorch does

    def _options(self, x):
        return {"dim": self.dim}

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmin(_Softmax):
    """PyTorch's Softmin(dim=None): softmax(-x) over dim (the implicit dim as Softmax's, with its warning)."""
    _forward = staticmethod(F.softmin)
    _backward = staticmethod(F.softmin_backward)


class Softmax2d(_Softmax):
    """PyTorch's Softmax2d(): softmax over the channels (dim -3) of a (N, C, H, W) or (C, H, W) input."""
    _forward = staticmethod(F.softmax)
    _backward = staticmethod(F.softmax_backward)

    def __init__(self):
        super().__init__(-3)

    def _options(self, x):
        if x.ndim not in (3, 4):
            raise ValueError(f"Softmax2d: expected input to be 3D or 4D, got {x.ndim}D instead")
        return {"dim": -3}

    def extra_repr(self):
        return ""
