"""conv3d and its backward pass, as torch.nn.functional.conv3d: volumes x (N, C, D, H, W) or unbatched
(C, D, H, W), filters (K, C/groups, T, R, S), output (N, K, O, P, Q).

NumPy path (the CPU backend and the kernels' oracle): the windows of the padded input are gathered
through a strided view into a vol2col matrix (C/groups * T*R*S, O*P*Q) per image and group and
contracted with the filters by one batched matmul; the input gradient is the same products taken the
other way (w^T dy, one matmul for all taps) added tap by tap at each tap's offset (col2vol); the weight
gradient is dy times the vol2col matrix transposed, summed over the batch.
emu and cuda: the implicit-GEMM kernels (cnn_gpu.gpu.conv3d) of kernels/conv3d_fprop.cu, conv3d_dgrad.cu
(every stride phase of the input gradient in one launch) and conv3d_wgrad.cu (x and dy read in place).
float16 runs the float32 kernels on widened operands, each result rounded once (as conv2d's SIMT path);
the "tf32" math mode rounds float32 operands to TF32 first, as it does for conv2d (no tensor-core path for 3-D).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backend as _backend
from ..gpu import conv3d as gpu_conv3d, elementwise
from . import _checks
from ._float16 import takes_float16
from .conv import _check_dy, _simt, _tf32_operands, _unbatched
from .geometry import PADDING_STRINGS, _groups, _plain, as_batch, conv_output_size, triple


@dataclasses.dataclass(frozen=True)
class Conv3dGeometry:
    """A 3-D convolution's sizes (CUTLASS's names with a depth: x (N, C, D, H, W), filter (K, C/groups,
    T, R, S), output (N, K, O, P, Q)); padding on the front/top/left, padding + padding_extra on the
    back/bottom/right (padding="same" with an even dilated kernel extent)."""
    N: int
    C: int
    D: int
    H: int
    W: int
    K: int
    T: int          # filter depth
    R: int          # filter height
    S: int          # filter width
    O: int          # output depth
    P: int          # output height
    Q: int          # output width
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int]
    groups: int
    padding_extra: tuple[int, int, int] = (0, 0, 0)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        """(before, after) padding of each spatial dimension."""
        return tuple((pad, pad + extra) for pad, extra in zip(self.padding, self.padding_extra))

    @property
    def x_shape(self):
        return (self.N, self.C, self.D, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.K, self.O, self.P, self.Q)

    @property
    def w_shape(self):
        return (self.K, self.C // self.groups, self.T, self.R, self.S)


def conv3d_padding(padding, stride, dilation, kernel):
    """(front/top/left padding, extra back/bottom/right padding) of conv3d's `padding`: an int, a (d, h, w)
    triple, "valid" or "same" (stride 1 only; an even dilated kernel extent pads its odd voxel at the end,
    as PyTorch pads)."""
    if not isinstance(padding, str):
        return triple(padding, "padding", minimum=0), (0, 0, 0)
    if padding not in PADDING_STRINGS:
        raise ValueError(f"padding must be an int, a triple of ints, 'same' or 'valid', got {padding!r}")
    if padding == "valid":
        return (0, 0, 0), (0, 0, 0)
    if tuple(stride) != (1, 1, 1):
        raise ValueError(f"padding='same' is not supported for strided convolutions (stride {tuple(stride)}); "
                         f"use stride=1 or numeric padding")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return tuple(t // 2 for t in totals), tuple(t % 2 for t in totals)


def conv3d_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> Conv3dGeometry:
    """Geometry of F.conv3d(x, weight, ...) on a batch x (N, C, D, H, W); ValueError on any inconsistent
    size, before anything runs."""
    N, C, D, H, W = (int(d) for d in x_shape)
    K, Cg, T, R, S = (int(d) for d in w_shape)
    stride, dilation = triple(stride, "stride"), triple(dilation, "dilation")
    padding, extra = conv3d_padding(padding, stride, dilation, (T, R, S))
    groups = _groups(groups)
    if min(N, C, D, H, W) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x_shape)}")
    if min(K, Cg, T, R, S) <= 0:
        raise ValueError(f"weight has an empty dimension: shape {tuple(w_shape)}")
    if C % groups or K % groups:
        raise ValueError(f"in_channels ({C}) and out_channels ({K}) must both be divisible by groups ({groups})")
    if Cg * groups != C:
        raise ValueError(
            f"weight shape {tuple(w_shape)} expects {Cg * groups} input channels (in_channels/groups={Cg}, "
            f"groups={groups}) but x has {C} (x shape {tuple(x_shape)})")
    O, P, Q = (conv_output_size(size, taps, st, pad, dil, ext) for size, taps, st, pad, dil, ext
               in zip((D, H, W), (T, R, S), stride, padding, dilation, extra))
    if min(O, P, Q) <= 0:
        raise ValueError(
            f"output would be empty ({O}x{P}x{Q}): input {D}x{H}x{W} with padding {padding} is smaller than the "
            f"dilated kernel {'x'.join(str(d * (k - 1) + 1) for d, k in zip(dilation, (T, R, S)))}")
    return Conv3dGeometry(N, C, D, H, W, K, T, R, S, O, P, Q, stride, padding, dilation, groups, extra)


@functools.lru_cache(maxsize=256)
def _geometry_kept(make, x_shape, w_shape, options) -> Conv3dGeometry:
    return make(x_shape, w_shape, *options)


def _geometry(x_shape, w_shape, *options, make=conv3d_geometry) -> Conv3dGeometry:
    """make(x_shape, w_shape, *options) (conv3d_geometry, or conv_transpose3d's), remembered where the
    options are plain ints, strings and tuples of ints (a layer's every call; a refusal is never kept)."""
    if all(map(_plain, options)):
        return _geometry_kept(make, tuple(x_shape), tuple(w_shape), options)
    return make(x_shape, w_shape, *options)


# --- NumPy ----------------------------------------------------------------------------------------

def _padded(a, g: Conv3dGeometry):
    """a (N, C, D, H, W) zero-padded by g's padding (and its extra back/bottom/right voxel)."""
    if not any(any(p) for p in g.pads):
        return a
    return np.pad(a, ((0, 0), (0, 0)) + g.pads)


def _vol2col(x, g: Conv3dGeometry):
    """(N, groups, C/groups * T*R*S, O*P*Q): row (c, t, r, s), column (o, p, q) holding the padded
    x[n, g*C/groups + c, o*sd + t*dd, p*sh + r*dh, q*sw + s*dw]."""
    xp = _padded(x, g)
    sn, sc, sd, sh, sw = xp.strides
    (st_d, st_h, st_w), (dd, dh, dw) = g.stride, g.dilation
    shape = (g.N, g.C, g.T, g.R, g.S, g.O, g.P, g.Q)
    strides = (sn, sc, dd * sd, dh * sh, dw * sw, st_d * sd, st_h * sh, st_w * sw)
    cols = np.ascontiguousarray(as_strided(xp, shape=shape, strides=strides, writeable=False))
    return cols.reshape(g.N, g.groups, -1, g.O * g.P * g.Q)


def _filters(w, g: Conv3dGeometry):
    """w as (groups, K/groups, C/groups * T*R*S)."""
    return w.reshape(g.groups, g.K // g.groups, -1)


def _forward(x, w, bias, g: Conv3dGeometry):
    y = np.matmul(_filters(w, g), _vol2col(x, g)).reshape(g.y_shape)
    if bias is not None:
        y += bias[:, None, None, None]
    return y


def _input_grad(dy, w, g: Conv3dGeometry):
    """dx: the products w^T dy of every tap (one matmul), each tap's added at its offset (col2vol)."""
    G = g.groups
    products = np.matmul(_filters(w, g).transpose(0, 2, 1), dy.reshape(g.N, G, g.K // G, -1))
    products = products.reshape(g.N, g.C, g.T, g.R, g.S, g.O, g.P, g.Q)
    (before_d, after_d), (before_h, after_h), (before_w, after_w) = g.pads
    dxp = np.zeros((g.N, g.C, g.D + before_d + after_d, g.H + before_h + after_h, g.W + before_w + after_w),
                   dy.dtype)
    (sd, sh, sw), (dd, dh, dw) = g.stride, g.dilation
    for t in range(g.T):
        for r in range(g.R):
            for s in range(g.S):
                dxp[:, :, t * dd:t * dd + (g.O - 1) * sd + 1:sd, r * dh:r * dh + (g.P - 1) * sh + 1:sh,
                    s * dw:s * dw + (g.Q - 1) * sw + 1:sw] += products[:, :, t, r, s]
    return np.ascontiguousarray(dxp[:, :, before_d:before_d + g.D, before_h:before_h + g.H, before_w:before_w + g.W])


def _weight_grad(dy, x, g: Conv3dGeometry):
    """dw: dy times the vol2col matrix transposed, summed over the batch in order."""
    G = g.groups
    per_image = np.matmul(dy.reshape(g.N, G, g.K // G, -1), _vol2col(x, g).transpose(0, 1, 3, 2))
    return per_image.sum(axis=0).reshape(g.w_shape)


def _bias_grad(dy):
    return dy.sum(axis=(0, 2, 3, 4))


# --- public ops ---------------------------------------------------------------------------------

def _check_x_weight(x, weight):
    _checks.array(x, "x", ndim=(4, 5))
    _checks.array(weight, "weight", ndim=5)


@takes_float16(kernels=True)
def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """3-D cross-correlation as torch.nn.functional.conv3d: x (N, C, D, H, W) or (C, D, H, W), weight
    (K, C/groups, T, R, S), optional bias (K,) -> y (N, K, O, P, Q) or (K, O, P, Q).

    stride, dilation: an int or a (d, h, w) triple; padding: an int, a triple, "valid" (none) or "same"
    (stride 1 only; output as large as the input, the odd voxel of an even dilated kernel extent at the
    back/bottom/right)."""
    _check_x_weight(x, weight)
    _checks.same_dtype("x", x, weight=weight)
    x, unbatched = as_batch(x, 5)
    g = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _checks.bias(bias, g.K, weight)
    be = _backend.resolve(backend, x, weight, bias)
    if be == "numpy":
        return _unbatched(_forward(*_tf32_operands(x, weight), bias, g), unbatched)
    x, weight, bias = (_checks.for_kernels(be, a, n) for a, n in ((x, "x"), (weight, "weight"), (bias, "bias")))
    plan_passes(g, x.dtype, fprop=True)   # before float16's widening or tf32's rounding on the device
    return _unbatched(kernel_fprop(be, x, weight, bias, g), unbatched)


@takes_float16(kernels=True)
def conv3d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True, *, input_grad=True,
                    weight_grad=True, backend=None):
    """Gradients of conv3d: (dx, dweight, dbias), with conv2d_backward's flags (dbias None when
    bias=False, dx None when input_grad=False, dweight None when weight_grad=False). dy and dx have the
    rank of x (unbatched (C, D, H, W) or a batch)."""
    _check_x_weight(x, weight)
    g = _geometry(as_batch(x, 5)[0].shape, weight.shape, stride, padding, dilation, groups)
    _check_dy(dy, x, weight, g.y_shape)
    (x, unbatched), (dy, _) = as_batch(x, 5), as_batch(dy, 5)
    bias, input_grad, weight_grad = _checks.gradient_flags(bias, input_grad, weight_grad)
    be = _backend.resolve(backend, dy, x, weight)
    if be == "numpy":
        dy_t, x_t, weight_t = _tf32_operands(dy, x, weight)
        dx = _input_grad(dy_t, weight_t, g) if input_grad else None
        dw = _weight_grad(dy_t, x_t, g) if weight_grad else None
        return _unbatched((dx, dw, (_bias_grad(dy) if bias else None)), unbatched)
    dy, x, weight = (_checks.for_kernels(be, a, n) for a, n in ((dy, "dy"), (x, "x"), (weight, "weight")))
    plan_passes(g, x.dtype, dgrad=input_grad, wgrad=weight_grad)
    dx = kernel_dgrad(be, dy, weight, g) if input_grad else None
    dw = kernel_wgrad(be, dy, x, g) if weight_grad else None
    return _unbatched((dx, dw, (kernel_bgrad(be, dy) if bias else None)), unbatched)


# --- the kernels' passes by geometry (emu, cuda): conv3d's and conv_transpose3d's -------------------

def plan_passes(g: Conv3dGeometry, dtype, *, fprop=False, dgrad=False, wgrad=False) -> None:
    """The plans of the passes about to run (their index-range checks), all made before the first launch."""
    kernel_dtype = _backend.compute_dtype(dtype)
    if fprop:
        gpu_conv3d.plan_fprop(g, kernel_dtype)
    if dgrad:
        gpu_conv3d.plan_dgrad(g, kernel_dtype)
    if wgrad:
        gpu_conv3d.plan_wgrad(g, kernel_dtype)


def kernel_fprop(be, x, weight, bias, g: Conv3dGeometry):
    """y = conv3d(x, weight) + bias on the kernels."""
    return _simt(lambda x, w, b: gpu_conv3d.fprop(be, x, w, b, g), (x, weight), bias)


def kernel_dgrad(be, dy, weight, g: Conv3dGeometry, bias=None):
    """dx on the kernels, plus `bias` per channel (conv_transpose3d's) before a float16 result's one rounding."""
    def dgrad(dy, w, b):
        dx = gpu_conv3d.dgrad(be, dy, w, g)
        if b is not None:
            elementwise.bias_add(be, dx, b)
        return dx
    return _simt(dgrad, (dy, weight), bias)


def kernel_wgrad(be, dy, x, g: Conv3dGeometry):
    """dweight on the kernels."""
    return _simt(lambda dy, x, _: gpu_conv3d.wgrad(be, dy, x, g), (dy, x))


def kernel_bgrad(be, dy):
    """dbias on the kernels: dy summed per channel in a fixed order."""
    return gpu_conv3d.bgrad(be, dy)
