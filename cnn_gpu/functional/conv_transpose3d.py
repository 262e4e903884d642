"""conv_transpose3d and its backward pass, as torch.nn.functional.conv_transpose3d: volumes x (N, Cin, Din,
Hin, Win) or unbatched (Cin, Din, Hin, Win), weight (Cin, Cout/groups, T, R, S), output (N, Cout, Dout, Hout,
Wout) with Dout = (Din - 1) * stride - 2 * padding + dilation * (T - 1) + output_padding + 1 (each axis).

A transposed convolution is the input gradient of the convolution its geometry describes (conv_transpose2d's
rule, cnn_gpu.functional.geometry): that convolution maps (N, Cout, Dout, Hout, Wout) to x's shape with the
filter (K=Cin, C/groups=Cout/groups, T, R, S), so the forward pass is conv3d's input gradient of x, and the
backward pass is conv3d's forward pass of dy (dx) and conv3d's weight gradient with the roles of x and dy
swapped (dweight). All of them run through conv3d's own passes (cnn_gpu.functional.conv3d): its NumPy
vol2col path on "numpy", its kernels (kernels/conv3d_dgrad.cu forward, conv3d_fprop.cu and conv3d_wgrad.cu
backward) on "emu" and "cuda", float16 and the "tf32" math mode as conv3d runs them; the bias is added on
the kernels' dx before a float16 result's one rounding.
"""
from __future__ import annotations

from .. import backend as _backend
from . import _checks
from ._float16 import takes_float16
from .conv import _check_dy, _tf32_operands, _unbatched
from .conv3d import (Conv3dGeometry, _bias_grad, _check_x_weight, _forward, _geometry, _input_grad, _weight_grad,
                     kernel_bgrad, kernel_dgrad, kernel_fprop, kernel_wgrad, plan_passes)
from .geometry import _groups, as_batch, check_transposed_sizes, triple


def conv_transpose3d_geometry(x_shape, w_shape, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1) -> Conv3dGeometry:
    """Geometry of F.conv_transpose3d(x, weight, ...) on a batch x (N, Cin, Din, Hin, Win), weight (Cin,
    Cout/groups, T, R, S), as the convolution it is the input gradient of; ValueError on any inconsistent
    size (PyTorch's rules: output_padding smaller than the stride or the dilation of its axis)."""
    N, Cin, *in_size = (int(d) for d in x_shape)
    _, Coutg, *kernel = (int(d) for d in w_shape)
    stride, dilation = triple(stride, "stride"), triple(dilation, "dilation")
    padding = triple(padding, "padding", minimum=0)
    output_padding = triple(output_padding, "output_padding", minimum=0)
    groups = _groups(groups)
    check_transposed_sizes(x_shape, w_shape, groups)
    if any(extra >= max(st, dil) for extra, st, dil in zip(output_padding, stride, dilation)):
        raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride} or dilation "
                         f"{dilation}")
    out_size = tuple((size - 1) * st - 2 * pad + dil * (taps - 1) + extra + 1 for size, st, pad, dil, taps, extra
                     in zip(in_size, stride, padding, dilation, kernel, output_padding))
    if min(out_size) <= 0:
        raise ValueError(f"output would be empty ({'x'.join(map(str, out_size))}): padding {padding} is too large "
                         f"for input {'x'.join(map(str, in_size))} and kernel {'x'.join(map(str, kernel))}")
    return Conv3dGeometry(N, Coutg * groups, *out_size, Cin, *kernel, *in_size, stride, padding, dilation, groups)


@takes_float16(kernels=True)
def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     backend=None):
    """Transposed 3-D convolution as torch.nn.functional.conv_transpose3d (PyTorch's argument order: groups
    before dilation): x (N, Cin, Din, Hin, Win) or (Cin, Din, Hin, Win), weight (Cin, Cout/groups, T, R, S),
    optional bias (Cout,) -> y (N, Cout, Dout, Hout, Wout) or (Cout, Dout, Hout, Wout). stride, padding,
    output_padding and dilation: an int or a (d, h, w) triple (no padding strings, as PyTorch's)."""
    _check_x_weight(x, weight)
    _checks.same_dtype("x", x, weight=weight)
    x, unbatched = as_batch(x, 5)
    g = _geometry(x.shape, weight.shape, stride, padding, output_padding, groups, dilation,
                  make=conv_transpose3d_geometry)
    _checks.bias(bias, g.C, weight)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        y = _input_grad(*_tf32_operands(x, weight), g)
        if bias is not None:
            y += bias[:, None, None, None]
        return _unbatched(y, unbatched)
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    plan_passes(g, x.dtype, dgrad=True)
    return _unbatched(kernel_dgrad(be, x, weight, g, bias), unbatched)


@takes_float16(kernels=True)
def conv_transpose3d_backward(dy, x, weight, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                              bias=True, *, input_grad=True, weight_grad=True, backend=None):
    """Gradients of conv_transpose3d: (dx, dweight, dbias), with conv3d_backward's flags (dbias None when
    bias=False, dx None when input_grad=False, dweight None when weight_grad=False). dy and dx have the
    rank of x."""
    _check_x_weight(x, weight)
    g = _geometry(as_batch(x, 5)[0].shape, weight.shape, stride, padding, output_padding, groups, dilation,
                  make=conv_transpose3d_geometry)
    _check_dy(dy, x, weight, g.x_shape)
    (x, unbatched), (dy, _) = as_batch(x, 5), as_batch(dy, 5)
    bias, input_grad, weight_grad = _checks.gradient_flags(bias, input_grad, weight_grad)
    be = _backend.resolve(backend, dy, x, weight)
    # The roles of the underlying convolution swap: dy is its input, x its output gradient.
    if be == "numpy":
        dy_t, x_t, weight_t = _tf32_operands(dy, x, weight)
        dx = _forward(dy_t, weight_t, None, g) if input_grad else None
        dw = _weight_grad(x_t, dy_t, g) if weight_grad else None
        return _unbatched((dx, dw, (_bias_grad(dy) if bias else None)), unbatched)
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    plan_passes(g, x.dtype, fprop=input_grad, wgrad=weight_grad)
    dx = kernel_fprop(be, dy, weight, None, g) if input_grad else None
    dw = kernel_wgrad(be, x, dy, g) if weight_grad else None
    return _unbatched((dx, dw, (kernel_bgrad(be, dy) if bias else None)), unbatched)
