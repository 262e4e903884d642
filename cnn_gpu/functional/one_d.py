"""The 1-D ops (conv1d, conv_transpose1d, max_pool1d, avg_pool1d, adaptive_avg_pool1d and their
backward passes) as views onto the 2-D ones: a signal (N, C, L) is the image (N, C, 1, L), a filter
(K, C/groups, k) the filter (K, C/groups, 1, k), and the 2-D ops run with height 1 everywhere (kernel,
stride, dilation 1; padding 0). The views are NumPy/CuPy views (no copy): the 2-D ops' backends,
float16 rule and kernels apply unchanged.

Unbatched (C, L) signals return (C', L') results, as PyTorch's 1-D ops do. Size arguments are an int
or a 1-tuple, as PyTorch takes them. Every argument is checked here first, in 1-D terms (the error
names the shapes and sizes the caller passed, not the 2-D view), so the 2-D op never refuses one.
"""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from . import _checks
from .adaptive_pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d,
                            adaptive_max_pool2d_backward_of_own_indices, check_max_indices)
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .geometry import PADDING_STRINGS, _groups, conv_output_size, pool_output_size
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward_of_own_indices


def single(value, name: str, minimum: int = 1) -> int:
    """An int or a 1-tuple (or 1-list) of one, >= minimum, as an int (PyTorch's _single)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple, got {value!r}")
        value = value[0]
    return _checks.whole_number(value, name, minimum)


def _as_2d(a):
    """A (N, C, L) or (C, L) signal (or a (K, C/groups, k) filter) as its height-1 2-D view."""
    return None if a is None else a[..., None, :]


def _as_1d(a):
    """The inverse of _as_2d on a 2-D op's result."""
    return None if a is None else a[..., 0, :]


def _signal_shape(x_shape):
    """(N, C, L) of a (N, C, L) or (C, L) shape."""
    return (1,) + tuple(x_shape) if len(x_shape) == 2 else tuple(x_shape)


# --- convolution ---------------------------------------------------------------------------------

def conv1d_padding(padding, stride: int, dilation: int, kernel: int) -> tuple[int, int]:
    """conv1d's (left padding, total padding) of an int, a 1-tuple, "valid" or "same" (stride 1 only;
    PyTorch pads the odd element of an even dilated kernel extent on the right)."""
    if not isinstance(padding, str):
        left = single(padding, "padding", minimum=0)
        return left, 2 * left
    if padding not in PADDING_STRINGS:
        raise ValueError(f"padding must be an int, a 1-tuple, 'same' or 'valid', got {padding!r}")
    if padding == "valid":
        return 0, 0
    if stride != 1:
        raise ValueError(f"padding='same' is not supported for strided convolutions (stride {stride}); "
                         f"use stride=1 or numeric padding")
    total = dilation * (kernel - 1)
    return total // 2, total


def _check_operands(x, weight, bias, channels_of_bias):
    """The arrays of a 1-D convolution: x (N, C, L) or (C, L), weight 3-D, bias (channels,)."""
    _checks.array(x, "x", ndim=(2, 3))
    _checks.array(weight, "weight", ndim=3)
    _checks.same_dtype("x", x, weight=weight)
    N, C, L = _signal_shape(x.shape)
    if min(N, C, L) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x.shape)}")
    if min(weight.shape) <= 0:
        raise ValueError(f"weight has an empty dimension: shape {tuple(weight.shape)}")
    if bias is not None:
        _checks.bias(bias, channels_of_bias(weight.shape), weight)
    return N, C, L


def _check_conv1d(x, weight, bias, stride, padding, dilation, groups):
    """conv1d's arguments, checked: (stride, padding for the 2-D op, dilation, groups, y's shape)."""
    groups = _groups(groups)
    N, C, L = _check_operands(x, weight, bias, lambda w_shape: w_shape[0])
    K, Cg, k = weight.shape
    stride, dilation = single(stride, "stride"), single(dilation, "dilation")
    left, total = conv1d_padding(padding, stride, dilation, k)
    if C % groups or K % groups:
        raise ValueError(f"in_channels ({C}) and out_channels ({K}) must both be divisible by groups ({groups})")
    if Cg * groups != C:
        raise ValueError(f"weight shape {tuple(weight.shape)} expects {Cg * groups} input channels "
                         f"(in_channels/groups={Cg}, groups={groups}) but x has {C} (x shape {tuple(x.shape)})")
    out = conv_output_size(L, k, stride, 0, dilation, total)
    if out <= 0:
        raise ValueError(f"output would be empty (length {out}): input length {L} with padding {left} is "
                         f"shorter than the dilated kernel {dilation * (k - 1) + 1}")
    padding_2d = padding if isinstance(padding, str) else (0, left)
    return (1, stride), padding_2d, (1, dilation), groups, (N, K, out)[3 - x.ndim:]


def _check_conv_transpose1d(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """conv_transpose1d's arguments, checked: (the 2-D op's stride, padding, output_padding,
    dilation, groups, y's shape)."""
    groups = _groups(groups)
    N, C, L = _check_operands(x, weight, bias, lambda w_shape: w_shape[1] * groups)
    Cin, Coutg, k = weight.shape
    stride, dilation = single(stride, "stride"), single(dilation, "dilation")
    padding = single(padding, "padding", minimum=0)
    output_padding = single(output_padding, "output_padding", minimum=0)
    if Cin != C:
        raise ValueError(f"weight shape {tuple(weight.shape)} expects {Cin} input channels but x has {C} "
                         f"(x shape {tuple(x.shape)})")
    if C % groups:
        raise ValueError(f"in_channels ({C}) must be divisible by groups ({groups})")
    if output_padding >= max(stride, dilation):
        raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride} or dilation "
                         f"{dilation}")
    out = (L - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
    if out <= 0:
        raise ValueError(f"output would be empty (length {out}): padding {padding} is too large for input "
                         f"length {L} and kernel {k}")
    return ((1, stride), (0, padding), (0, output_padding), (1, dilation), groups,
            (N, Coutg * groups, out)[3 - x.ndim:])


def _check_dy(dy, x, expected_shape):
    _checks.array(dy, "dy", ndim=x.ndim)
    _checks.same_dtype("x", x, dy=dy)
    _checks.shape_is(dy, "dy", expected_shape, " (the shape of the op's output)")


def _backward_1d(grads):
    """(dx, dweight, dbias) of a 2-D backward on the views, in 1-D shapes."""
    dx, dweight, dbias = grads
    return _as_1d(dx), _as_1d(dweight), dbias


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """1-D cross-correlation as torch.nn.functional.conv1d: x (N, C, L) or (C, L), weight
    (K, C/groups, k), optional bias (K,) -> y (N, K, L') or (K, L'). padding: an int, a 1-tuple,
    "valid" or "same" (stride 1; the odd element of an even dilated kernel extent on the right)."""
    stride, padding, dilation, groups, _ = _check_conv1d(x, weight, bias, stride, padding, dilation, groups)
    return _as_1d(conv2d(_as_2d(x), _as_2d(weight), bias, stride, padding, dilation, groups, backend=backend))


def conv1d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True, *, input_grad=True,
                    weight_grad=True, backend=None):
    """Gradients of conv1d: (dx, dweight, dbias), with conv2d_backward's bias, input_grad and
    weight_grad (a gradient not asked for is None, its pass not run). dy and dx have the rank of x."""
    stride, padding, dilation, groups, y_shape = _check_conv1d(x, weight, None, stride, padding, dilation, groups)
    _check_dy(dy, x, y_shape)
    return _backward_1d(conv2d_backward(_as_2d(dy), _as_2d(x), _as_2d(weight), stride, padding, dilation, groups,
                                        bias, input_grad=input_grad, weight_grad=weight_grad, backend=backend))


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     backend=None):
    """Transposed 1-D convolution as torch.nn.functional.conv_transpose1d (PyTorch's argument order:
    groups before dilation): x (N, Cin, Lin) or (Cin, Lin), weight (Cin, Cout/groups, k), optional
    bias (Cout,) -> y (N, Cout, Lout) or (Cout, Lout)."""
    stride, padding, output_padding, dilation, groups, _ = _check_conv_transpose1d(
        x, weight, bias, stride, padding, output_padding, groups, dilation)
    return _as_1d(conv_transpose2d(_as_2d(x), _as_2d(weight), bias, stride, padding, output_padding, dilation,
                                   groups, backend=backend))


def conv_transpose1d_backward(dy, x, weight, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                              bias=True, *, input_grad=True, weight_grad=True, backend=None):
    """Gradients of conv_transpose1d: (dx, dweight, dbias), flags as conv1d_backward's."""
    stride, padding, output_padding, dilation, groups, y_shape = _check_conv_transpose1d(
        x, weight, None, stride, padding, output_padding, groups, dilation)
    _check_dy(dy, x, y_shape)
    return _backward_1d(conv_transpose2d_backward(
        _as_2d(dy), _as_2d(x), _as_2d(weight), stride, padding, output_padding, dilation, groups, bias,
        input_grad=input_grad, weight_grad=weight_grad, backend=backend))


# --- pooling -------------------------------------------------------------------------------------

def pool_sizes(kernel_size, stride, padding, dilation=1) -> tuple[int, int, int, int]:
    """A 1-D pool's (kernel, stride, padding, dilation) as ints; stride None (or an empty tuple, as
    PyTorch also takes it) is the kernel size. The padding is at most half the kernel."""
    kernel = single(kernel_size, "kernel_size")
    no_stride = stride is None or isinstance(stride, (tuple, list)) and len(stride) == 0
    stride = kernel if no_stride else single(stride, "stride")
    padding = single(padding, "padding", minimum=0)
    dilation = single(dilation, "dilation")
    if 2 * padding > kernel:
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    return kernel, stride, padding, dilation


def _pool_output(shape, kernel, stride, padding, dilation, ceil_mode, name="x") -> int:
    """The pooled length of a (N, C, L) or (C, L) `shape`, refusing an empty input or output."""
    if min(shape) <= 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(shape)}")
    out = pool_output_size(shape[-1], kernel, stride, padding, dilation, ceil_mode)
    if out <= 0:
        raise ValueError(f"output would be empty (length {out}): input length {shape[-1]} with padding {padding} "
                         f"is shorter than the dilated window {dilation * (kernel - 1) + 1}")
    return out


def _pool_args_2d(kernel, stride, padding, dilation):
    return (1, kernel), (1, stride), (0, padding), (1, dilation)


def _signal_x_shape(x_shape):
    """A backward's x_shape: a tuple of 2 or 3 ints ((C, L) or (N, C, L))."""
    try:
        dims = tuple(x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of 2 or 3 ints, got {x_shape!r}") from None
    if len(dims) not in (2, 3):
        raise ValueError(f"x_shape must be a tuple of 2 or 3 ints ((C, L) or (N, C, L)), got {x_shape!r}")
    return _checks.shape_tuple(dims, "x_shape", len(dims))


def _check_pooled_dy(dy, x_shape, out: int):
    _checks.array(dy, "dy", ndim=len(x_shape))
    _checks.shape_is(dy, "dy", tuple(x_shape[:-1]) + (out,), f" (the pooled shape of x_shape {tuple(x_shape)})")


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, backend=None):
    """Max pooling as torch.nn.functional.max_pool1d(..., return_indices=True): x (N, C, L) or
    (C, L) -> (y, indices int32) of the same rank. indices are positions within L; ties take the
    first maximum, a NaN wins (the last NaN's position), a window wholly in the padding gives -inf
    and index -1 (max_pool2d's rules)."""
    _checks.array(x, "x", ndim=(2, 3))
    sizes = pool_sizes(kernel_size, stride, padding, dilation)
    _pool_output(x.shape, *sizes, _checks.flag(ceil_mode, "ceil_mode"))
    y, indices = max_pool2d(_as_2d(x), *_pool_args_2d(*sizes), ceil_mode, backend=backend)
    return _as_1d(y), _as_1d(indices)


def _check_indices(indices, length: int, out: int, kernel, stride, padding, dilation) -> None:
    """Every index is -1 in a window wholly in the padding, and otherwise the position of one of its
    own window's taps (NumPy or CuPy alike: on CuPy one flag is read back)."""
    xp = _backend.module_of(indices)
    origin = np.arange(out, dtype=np.int64) * stride - padding
    first_tap = np.maximum(0, -(origin // dilation))
    last_tap = np.minimum(kernel - 1, (length - 1 - origin) // dilation)
    offset = indices.astype(np.int64) - xp.asarray(origin)
    on_tap = (indices >= 0) & (indices < length) & (offset >= 0) & (offset <= (kernel - 1) * dilation) & (
        offset % dilation == 0)
    valid = xp.where(indices == -1, xp.asarray(first_tap > last_tap), on_tap)
    if bool(valid.all()):
        return
    where = tuple(int(i) for i in np.unravel_index(int((~valid).ravel().argmax()), indices.shape))
    start = int(origin[where[-1]])
    raise ValueError(f"indices{list(where)} = {int(indices[where])} is not a tap of its window (positions {start}.."
                     f"{start + (kernel - 1) * dilation} step {dilation} of a length-{length} input, or -1 for a "
                     f"window wholly in the padding); indices must be those max_pool1d returned for this geometry")


def max_pool1d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                        backend=None):
    """Gradient of max_pool1d: dy routed to the positions its indices name. x_shape is (N, C, L) or
    (C, L); dy, indices and dx have that rank. Each index must name a tap of its own window (or be
    -1 for a window wholly in the padding): ValueError otherwise."""
    return _max_pool1d_backward(dy, indices, x_shape, kernel_size, stride, padding, dilation, ceil_mode, backend,
                                check_indices=True)


def max_pool1d_backward_of_own_indices(dy, indices, x_shape, kernel_size, stride=None, padding=0, dilation=1,
                                       ceil_mode=False, *, backend=None):
    """max_pool1d_backward for indices max_pool1d returned for this geometry (nn.MaxPool1d's own),
    not checked again (see max_pool2d_backward_of_own_indices)."""
    return _max_pool1d_backward(dy, indices, x_shape, kernel_size, stride, padding, dilation, ceil_mode, backend,
                                check_indices=False)


def _max_pool1d_backward(dy, indices, x_shape, kernel_size, stride, padding, dilation, ceil_mode, backend,
                         check_indices: bool):
    x_shape = _signal_x_shape(x_shape)
    sizes = pool_sizes(kernel_size, stride, padding, dilation)
    out = _pool_output(x_shape, *sizes, _checks.flag(ceil_mode, "ceil_mode"), name="x_shape")
    _check_pooled_dy(dy, x_shape, out)
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as max_pool1d returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape, " (the shape of dy)")
    if check_indices:
        _check_indices(indices, x_shape[-1], out, *sizes)
    x_shape_2d = x_shape[:-1] + (1, x_shape[-1])
    return _as_1d(max_pool2d_backward_of_own_indices(_as_2d(dy), _as_2d(indices), x_shape_2d,
                                                     *_pool_args_2d(*sizes), ceil_mode, backend=backend))


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *, backend=None):
    """Average pooling as torch.nn.functional.avg_pool1d (PyTorch's divisors, also with ceil_mode):
    x (N, C, L) or (C, L) -> y of the same rank."""
    _checks.array(x, "x", ndim=(2, 3))
    kernel, stride, padding, _ = pool_sizes(kernel_size, stride, padding)
    _pool_output(x.shape, kernel, stride, padding, 1, _checks.flag(ceil_mode, "ceil_mode"))
    kernel, stride, padding, _ = _pool_args_2d(kernel, stride, padding, 1)
    return _as_1d(avg_pool2d(_as_2d(x), kernel, stride, padding, ceil_mode,
                             _checks.flag(count_include_pad, "count_include_pad"), backend=backend))


def avg_pool1d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *,
                        backend=None):
    """Gradient of avg_pool1d: each window's dy shared among its taps by the forward divisor. x_shape
    is (N, C, L) or (C, L); dy and dx have that rank."""
    x_shape = _signal_x_shape(x_shape)
    kernel, stride, padding, _ = pool_sizes(kernel_size, stride, padding)
    out = _pool_output(x_shape, kernel, stride, padding, 1, _checks.flag(ceil_mode, "ceil_mode"), name="x_shape")
    _check_pooled_dy(dy, x_shape, out)
    kernel, stride, padding, _ = _pool_args_2d(kernel, stride, padding, 1)
    return _as_1d(avg_pool2d_backward(_as_2d(dy), x_shape[:-1] + (1, x_shape[-1]), kernel, stride, padding,
                                      ceil_mode, _checks.flag(count_include_pad, "count_include_pad"),
                                      backend=backend))


def adaptive_avg_pool1d(x, output_size, *, backend=None):
    """Adaptive average pooling as torch.nn.functional.adaptive_avg_pool1d: x (N, C, L) or (C, L)
    -> (N, C, output_size) or (C, output_size); output p averages [floor(p*L/out), ceil((p+1)*L/out))."""
    return _as_1d(adaptive_avg_pool2d(_as_2d(x), _adaptive_output(x, output_size), backend=backend))


def adaptive_avg_pool1d_backward(dy, x_shape, *, backend=None):
    """Gradient of adaptive_avg_pool1d for an input of shape x_shape (the output size is dy's)."""
    return _as_1d(adaptive_avg_pool2d_backward(_as_2d(dy), _adaptive_x_shape_2d(dy, x_shape), backend=backend))


def _adaptive_output(x, output_size) -> tuple[int, int]:
    """The 2-D output size of an adaptive pool of the (N, C, L) or (C, L) signal x."""
    _checks.array(x, "x", ndim=(2, 3))
    if 0 in x.shape[-2:]:
        raise ValueError(f"x must have non-empty channel and length dimensions, got shape {tuple(x.shape)}")
    return 1, single(output_size, "output_size")


def _adaptive_x_shape_2d(dy, x_shape) -> tuple:
    """The 2-D view's input shape of an adaptive pool's backward, after checking dy against x_shape."""
    _checks.array(dy, "dy", ndim=(2, 3))
    x_shape = _checks.shape_tuple(x_shape, "x_shape", dy.ndim)
    if x_shape[:-1] != dy.shape[:-1] or x_shape[-1] < 1:
        raise ValueError(f"dy of shape {tuple(dy.shape)} cannot come from an input of shape {x_shape} "
                         f"(batch and channels must agree, the length be positive)")
    return x_shape[:-1] + (1, x_shape[-1])


def adaptive_max_pool1d(x, output_size, *, backend=None):
    """Adaptive max pooling as torch.nn.functional.adaptive_max_pool1d(x, output_size,
    return_indices=True): x (N, C, L) or (C, L) -> (y, indices int32) of the same rank, indices the
    position within L of each window's maximum (adaptive_max_pool2d's tie and NaN rules)."""
    y, indices = adaptive_max_pool2d(_as_2d(x), _adaptive_output(x, output_size), backend=backend)
    return _as_1d(y), _as_1d(indices)


def adaptive_max_pool1d_backward(dy, indices, x_shape, *, backend=None):
    """Gradient of adaptive_max_pool1d for an input of shape x_shape (the output size is dy's): dy
    added at the positions its indices name, each checked to lie in its own window."""
    return _adaptive_max_pool1d_backward(dy, indices, x_shape, backend, check_indices=True)


def adaptive_max_pool1d_backward_of_own_indices(dy, indices, x_shape, *, backend=None):
    """adaptive_max_pool1d_backward for indices adaptive_max_pool1d returned (nn.AdaptiveMaxPool1d's
    own), not checked again."""
    return _adaptive_max_pool1d_backward(dy, indices, x_shape, backend, check_indices=False)


def _adaptive_max_pool1d_backward(dy, indices, x_shape, backend, check_indices: bool):
    x_shape_2d = _adaptive_x_shape_2d(dy, x_shape)
    if not _checks.is_array(indices):
        raise TypeError(f"indices must be a NumPy or CuPy int32 array, got {type(indices).__name__}")
    if indices.dtype != np.int32:
        raise TypeError(f"indices must be int32 (as adaptive_max_pool1d returns them), got {indices.dtype}")
    _checks.shape_is(indices, "indices", dy.shape, " (the shape of dy)")
    out_size = (1, dy.shape[-1])
    if check_indices:
        x4_shape = (1,) * (4 - len(x_shape_2d)) + x_shape_2d   # (only its (1, L) plane is read)
        check_max_indices(_as_2d(indices), x4_shape, out_size, "adaptive_max_pool1d", indices, tuple(x_shape))
    return _as_1d(adaptive_max_pool2d_backward_of_own_indices(_as_2d(dy), _as_2d(indices), x_shape_2d, out_size,
                                                              backend=backend))
