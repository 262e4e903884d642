"""The bench cases of the op families beside the convolutions, pools and first losses: activations,
normalisations, the 3-D layers, sliding blocks, the margin and likelihood losses and the distances,
each forward and backward in one call (a loss with its gradient), on the input of a shape set's
convolutions (an image batch; conv3d and conv_transpose3d: each conv layer's filter with a depth, on
volumes of depth 2), pools, volumes (the 3-D pools and norms: a shape set's VolumeShape, video clips
or scans), losses ((N, classes) rows) or fractional max pooling's images and volumes (a shape set's
FractionalShape). FAMILY_OPS holds them by name; bench.ops lists them with the
others, run when named (--ops)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..functional.conv3d import conv3d_geometry
from ..functional.geometry import pool_geometry
from .cases import Case, _F, _input_sets, _random


@dataclass(frozen=True)
class FamilyOp:
    """One op's bench case. kind: the shape it takes ("conv": its input x, "pool", "volume", "loss",
    "fractional2d" and "fractional3d");
    arrays(shape, dtype, rng) -> its NumPy inputs; cnn(F, backend, shape, *inputs) and
    torch(torch, shape, *inputs) run forward and backward."""
    kind: str
    description: str
    arrays: object
    cnn: object
    torch: object


def family_case(op: str, shape) -> Case:
    if op in OPTIMIZERS:
        return optimizer_case(op, shape)
    family = FAMILY_OPS[op]

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: family.arrays(shape, dtype, rng))
        if device.framework == "torch":
            torch = device.torch
            return (lambda *inputs: family.torch(torch, shape, *inputs)), sets
        F, be = _F(), device.backend
        return (lambda *inputs: family.cnn(F, be, shape, *inputs)), sets
    return Case(op, shape, None, setup)


# --- the arrays of a shape --------------------------------------------------------------------------

def image(shape) -> tuple:
    """The input of a convolution shape, or of a pool shape."""
    return shape.geometry().x_shape


def volume(shape) -> tuple:
    """A VolumeShape's volumes (N, C, D, H, W), the 3-D layers' input."""
    return shape.N, shape.C, shape.D, shape.H, shape.W


def signal(shape) -> tuple:
    """A convolution's input (N, C, H, W) as signals (N, C, H W), dropout1d's input."""
    n, c, h, w = image(shape)
    return (n, c, h * w)


def rows(shape) -> tuple:
    return (shape.N, shape.classes)


def _x_and_dy(input_shape, output_shape=None):
    def arrays(shape, dtype, rng):
        x = input_shape(shape)
        return _random(rng, x, dtype), _random(rng, output_shape(shape) if output_shape else x, dtype)
    return arrays


def _with_channel_parameters(input_shape):
    """x, dy and a weight and bias a channel."""
    def arrays(shape, dtype, rng):
        x = input_shape(shape)
        return (_random(rng, x, dtype), _random(rng, x, dtype), _random(rng, x[1:2], dtype),
                _random(rng, x[1:2], dtype))
    return arrays


def _torch_backward(torch, forward, grad_inputs, dy=None):
    """The gradients of forward(*grad_inputs) for each of them, dy upstream (None: a scalar loss)."""
    leaves = [a.detach().requires_grad_(True) for a in grad_inputs]
    return torch.autograd.grad(forward(*leaves), leaves, dy)


# --- 3-D convolutions --------------------------------------------------------------------------------

def volume_conv(shape):
    """The conv3d of a convolution shape on its input as volumes of depth 2: its filter, stride, padding and
    dilation with a depth axis (the filter's depth the filter's height where the padded depth holds it,
    stride and dilation 1 across the depth), so the output keeps a depth of 2 for "same"-padded filters."""
    g = shape.geometry()
    depth = min(g.R, 2 + 2 * g.padding[0])
    return conv3d_geometry((g.N, g.C, 2, g.H, g.W), (g.K, g.C // g.groups, depth, g.R, g.S), (1, *g.stride),
                           (g.padding[0], *g.padding), (1, *g.dilation), g.groups)


def _conv3d_options(g) -> dict:
    return dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)


def volume_conv_transpose_padding(g) -> tuple:
    """conv_transpose3d's output_padding that maps volume_conv's output back to its input's size."""
    return tuple(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for size, out, s, p, d, k in
                 zip((g.D, g.H, g.W), (g.O, g.P, g.Q), g.stride, g.padding, g.dilation, (g.T, g.R, g.S)))


def _conv3d_arrays(transposed):
    """x, the filter, a bias and dy of volume_conv (transposed: x of its output's shape, dy of its input's)."""
    def arrays(shape, dtype, rng):
        g = volume_conv(shape)
        x, y = (g.y_shape, g.x_shape) if transposed else (g.x_shape, g.y_shape)
        return (_random(rng, x, dtype), _random(rng, g.w_shape, dtype), _random(rng, y[1:2], dtype),
                _random(rng, y, dtype))
    return arrays


def _conv3d_cnn(F, be, shape, x, w, b, dy):
    options = _conv3d_options(volume_conv(shape))
    return F.conv3d(x, w, b, backend=be, **options), F.conv3d_backward(dy, x, w, backend=be, **options)


def _conv_transpose3d_cnn(F, be, shape, x, w, b, dy):
    g = volume_conv(shape)
    options = dict(_conv3d_options(g), output_padding=volume_conv_transpose_padding(g))
    return (F.conv_transpose3d(x, w, b, backend=be, **options),
            F.conv_transpose3d_backward(dy, x, w, backend=be, **options))


def _conv3d_torch(transposed):
    def run(torch, shape, x, w, b, dy):
        g = volume_conv(shape)
        options = _conv3d_options(g)
        if transposed:
            options["output_padding"] = volume_conv_transpose_padding(g)
        forward = getattr(torch.nn.functional, "conv_transpose3d" if transposed else "conv3d")
        return _torch_backward(torch, lambda *a: forward(*a, **options), [x, w, b], dy)
    return run


# --- activations ------------------------------------------------------------------------------------

def _activation(name, **options):
    """An element-wise activation on a convolution's input, forward and backward from x."""
    def cnn(F, be, shape, x, dy):
        return getattr(F, name)(x, backend=be, **options), getattr(F, f"{name}_backward")(dy, x, backend=be, **options)

    def torch_run(torch, shape, x, dy):
        return _torch_backward(torch, lambda a: getattr(torch.nn.functional, name)(a, **options), [x], dy)
    return FamilyOp("conv", f"{name}, forward and backward", _x_and_dy(image), cnn, torch_run)


def _glu_input(shape):
    """A convolution's input with an even channel count (one more channel where it is odd)."""
    n, c, h, w = image(shape)
    return (n, c + c % 2, h, w)


def _glu_output(shape):
    n, c, h, w = _glu_input(shape)
    return (n, c // 2, h, w)


def _prelu_arrays(shape, dtype, rng):
    x, dy = _x_and_dy(image)(shape, dtype, rng)
    return x, dy, rng.uniform(0.1, 0.3, x.shape[1]).astype(dtype)


def _softmin_cnn(F, be, shape, x, dy):
    y = F.softmin(x, 1, backend=be)
    return F.softmin_backward(dy, y, 1, backend=be)


# --- normalisations ---------------------------------------------------------------------------------

def num_groups(channels: int) -> int:
    return math.gcd(channels, 32)


def _affine_norm(cnn_forward, cnn_backward, torch_forward, input_shape=image, description=""):
    """A normalisation with a weight and bias a channel: forward (its statistics kept), then dx, dweight
    and dbias from them, as a layer's step runs it."""
    def cnn(F, be, shape, x, dy, weight, bias):
        y, mean, invstd = cnn_forward(F, be, x, weight, bias)
        return y, cnn_backward(F, be, dy, x, weight, bias, mean, invstd)

    def torch_run(torch, shape, x, dy, weight, bias):
        return _torch_backward(torch, lambda a, w, b: torch_forward(torch.nn.functional, a, w, b), [x, weight, bias],
                               dy)
    return FamilyOp("volume" if input_shape is volume else "conv", description, _with_channel_parameters(input_shape),
                    cnn, torch_run)


def _batch_norm_cnn(F, be, shape, x, dy, weight, bias):
    """Training mode, the batch's statistics handed to the backward as a layer's step does."""
    _, mean, invstd = F.batch_norm(x, None, None, weight, bias, True, return_stats=True, backend=be)
    return F.batch_norm_backward(dy, x, None, None, weight, bias, True, save_mean=mean, save_invstd=invstd,
                                 backend=be)


def _row_norm_arrays(shape, dtype, rng):
    """x, dy and parameters of normalized_shape (C, H, W)."""
    x = image(shape)
    return tuple(_random(rng, s, dtype) for s in (x, x, x[1:], x[1:]))


def _layer_norm_cnn(F, be, shape, x, dy, weight, bias):
    y, mean, invstd = F.layer_norm(x, x.shape[1:], weight, bias, return_stats=True, backend=be)
    return y, F.layer_norm_backward(dy, x, x.shape[1:], weight, bias, save_mean=mean, save_invstd=invstd, backend=be)


def _layer_norm_torch(torch, shape, x, dy, weight, bias):
    return _torch_backward(torch, lambda a, w, b: torch.nn.functional.layer_norm(a, a.shape[1:], w, b),
                           [x, weight, bias], dy)


def _rms_norm_cnn(F, be, shape, x, dy, weight, bias):
    y, invstd = F.rms_norm(x, x.shape[1:], weight, return_stats=True, backend=be)
    return y, F.rms_norm_backward(dy, x, x.shape[1:], weight, save_invstd=invstd, backend=be)


def _rms_norm_torch(torch, shape, x, dy, weight, bias):
    return _torch_backward(torch, lambda a, w: torch.nn.functional.rms_norm(a, a.shape[1:], w), [x, weight], dy)


# instance_norm's forward (its statistics kept), backward from them and PyTorch's forward
INSTANCE_NORM_CALLS = (
    lambda F, be, x, w, b: F.instance_norm(x, None, None, w, b, return_stats=True, backend=be),
    lambda F, be, dy, x, w, b, mean, invstd: F.instance_norm_backward(dy, x, None, None, w, b, save_mean=mean,
                                                                      save_invstd=invstd, backend=be),
    lambda tf, x, w, b: tf.instance_norm(x, weight=w, bias=b))

LRN_SIZE = 5   # AlexNet's


def _local_response_norm_cnn(F, be, shape, x, dy):
    return (F.local_response_norm(x, LRN_SIZE, backend=be),
            F.local_response_norm_backward(dy, x, LRN_SIZE, backend=be))


def _local_response_norm_torch(torch, shape, x, dy):
    return _torch_backward(torch, lambda a: torch.nn.functional.local_response_norm(a, LRN_SIZE), [x], dy)


def _channel_dropout(name, input_shape):
    def cnn(F, be, shape, x, dy):
        return getattr(F, name)(x, 0.5, seed=7, backend=be), getattr(F, f"{name}_backward")(dy, 0.5, 7, backend=be)

    def torch_run(torch, shape, x, dy):
        return _torch_backward(torch, lambda a: getattr(torch.nn.functional, name)(a, 0.5), [x], dy)
    return FamilyOp("volume" if input_shape is volume else "conv",
                    f"{name}: whole channels dropped (p 0.5), forward and backward", _x_and_dy(input_shape), cnn,
                    torch_run)


# --- the 3-D pools, fractional max pooling, power-average pooling, unpooling, sliding blocks ----------------

def pool3d_window(shape) -> tuple:
    """A VolumeShape's pool window: (kernel, stride, padding)."""
    g = shape.geometry()
    return g.kernel, g.stride, g.padding


def pooled_volume(shape):
    g = shape.geometry()
    return (g.N, g.C, g.T, g.P, g.Q)


def _max_pool3d_cnn(F, be, shape, x, dy):
    kernel, stride, padding = pool3d_window(shape)
    y, indices = F.max_pool3d(x, kernel, stride, padding, backend=be)
    return y, F.max_pool3d_backward(dy, indices, x.shape, kernel, stride, padding, backend=be)


def _avg_pool3d_cnn(F, be, shape, x, dy):
    kernel, stride, padding = pool3d_window(shape)
    return (F.avg_pool3d(x, kernel, stride, padding, backend=be),
            F.avg_pool3d_backward(dy, x.shape, kernel, stride, padding, backend=be))


def _pool3d_torch(name):
    def run(torch, shape, x, dy):
        return _torch_backward(torch, lambda a: getattr(torch.nn.functional, name)(a, *pool3d_window(shape)), [x], dy)
    return run


def _global_volume(shape):
    return (shape.N, shape.C, 1, 1, 1)


def _adaptive_pool3d_cnn(name):
    def run(F, be, shape, x, dy):
        if name == "adaptive_max_pool3d":
            y, indices = F.adaptive_max_pool3d(x, 1, backend=be)
            return y, F.adaptive_max_pool3d_backward(dy, indices, x.shape, 1, backend=be)
        return F.adaptive_avg_pool3d(x, 1, backend=be), F.adaptive_avg_pool3d_backward(dy, x.shape, backend=be)
    return run


def _adaptive_pool3d_torch(name):
    def run(torch, shape, x, dy):
        return _torch_backward(torch, lambda a: getattr(torch.nn.functional, name)(a, 1), [x], dy)
    return run


def _fractional_max_pool(rank):
    """fractional_max_pool2d or 3d with its samples drawn by the op (nn.init's generator), then the backward
    of those indices as nn.FractionalMaxPool2d / 3d's step runs it (not checked again)."""
    from ..functional import fractional_pool
    name = f"fractional_max_pool{rank}d"
    backward = getattr(fractional_pool, f"{name}_backward_of_own_indices")

    def cnn(F, be, shape, x, dy):
        y, indices = getattr(F, name)(x, shape.kernel, output_ratio=(shape.ratio,) * rank, return_indices=True,
                                      backend=be)
        return y, backward(dy, indices, x.shape, shape.kernel, backend=be)

    def torch_run(torch, shape, x, dy):   # PyTorch's functional takes the ratio as a tuple only
        pool = getattr(torch.nn.functional, name)
        return _torch_backward(torch, lambda a: pool(a, shape.kernel, output_ratio=(shape.ratio,) * rank), [x], dy)
    return FamilyOp(f"fractional{rank}d", f"fractional max pooling of {'volumes' if rank == 3 else 'images'} "
                    "(samples drawn each call), forward and backward",
                    _x_and_dy(lambda shape: shape.x_shape, lambda shape: shape.y_shape), cnn, torch_run)


def _lp_pool_args(shape):
    g = shape.geometry()
    return 2.0, g.kernel, g.stride


def lp_pooled(shape):
    """The pool shape's output without its padding (lp_pool has none)."""
    g = shape.geometry()
    return pool_geometry(g.x_shape, g.kernel, g.stride).y_shape


def _lp_pool_cnn(F, be, shape, x, dy):
    return F.lp_pool2d(x, *_lp_pool_args(shape), backend=be), F.lp_pool2d_backward(dy, x, *_lp_pool_args(shape),
                                                                                   backend=be)


def _lp_pool_torch(torch, shape, x, dy):
    return _torch_backward(torch, lambda a: torch.nn.functional.lp_pool2d(a, *_lp_pool_args(shape)), [x], dy)


def _unpool_arrays(shape, dtype, rng):
    """The pooled values, an upstream gradient of the unpooled plane and the max pool's indices of a
    random image (int32 here; PyTorch's int64)."""
    from .. import functional as F
    g = shape.geometry()
    _, indices = F.max_pool2d(_random(rng, g.x_shape, dtype), g.kernel, g.stride, g.padding, backend="numpy")
    return _random(rng, g.y_shape, dtype), _random(rng, g.x_shape, dtype), indices


def _unpool_cnn(F, be, shape, x, dy, indices):
    g = shape.geometry()
    y = F.max_unpool2d(x, indices, g.kernel, g.stride, g.padding, output_size=g.x_shape[2:], backend=be)
    return y, F.max_unpool2d_backward(dy, indices, backend=be)


def _unpool_torch(torch, shape, x, dy, indices):
    g = shape.geometry()
    return _torch_backward(torch, lambda a: torch.nn.functional.max_unpool2d(
        a, indices.long(), g.kernel, g.stride, g.padding, output_size=g.x_shape[2:]), [x], dy)


def fold_args(shape) -> tuple:
    """A convolution shape's im2col: (kernel, dilation, padding, stride)."""
    g = shape.geometry()
    return (g.R, g.S), g.dilation, g.padding, g.stride


def columns(shape) -> tuple:
    g = shape.geometry()
    return (g.N, g.C * g.R * g.S, g.P * g.Q)


def _unfold_cnn(F, be, shape, x, dy):
    return F.unfold(x, *fold_args(shape), backend=be), F.unfold_backward(dy, x.shape, *fold_args(shape), backend=be)


def _unfold_torch(torch, shape, x, dy):
    return _torch_backward(torch, lambda a: torch.nn.functional.unfold(a, *fold_args(shape)), [x], dy)


def _fold_cnn(F, be, shape, cols, dy):
    size = image(shape)[2:]
    return F.fold(cols, size, *fold_args(shape), backend=be), F.fold_backward(dy, *fold_args(shape), backend=be)


def _fold_torch(torch, shape, cols, dy):
    size = image(shape)[2:]
    return _torch_backward(torch, lambda a: torch.nn.functional.fold(a, size, *fold_args(shape)), [cols], dy)


# --- losses and distances on (N, classes) rows ------------------------------------------------------------

def _signs(rng, shape, dtype):
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(dtype)


def _loss_arrays(kind):
    """The inputs of a loss on (N, classes) rows: the scores (and second and third inputs) and targets."""
    def arrays(shape, dtype, rng):
        r = rows(shape)
        if kind == "signs":          # input and a +-1 target
            return _random(rng, r, dtype), _signs(rng, r, dtype)
        if kind == "pairs":          # two inputs and a +-1 target per element (per row: row_target)
            return _random(rng, r, dtype), _random(rng, r, dtype), _signs(rng, r, dtype)
        if kind == "row_pairs":
            return _random(rng, r, dtype), _random(rng, r, dtype), _signs(rng, r[:1], dtype)
        if kind == "triplets":
            return tuple(_random(rng, r, dtype) for _ in range(3))
        if kind == "counts":         # log-rates and counts
            return _random(rng, r, dtype), rng.poisson(2.0, r).astype(dtype)
        if kind == "gaussian":       # means, targets and variances
            return _random(rng, r, dtype), _random(rng, r, dtype), rng.uniform(0.5, 2.0, r).astype(dtype)
        if kind == "labels":         # multi-label 0/1 targets
            return _random(rng, r, dtype), (rng.random(r) < 0.5).astype(dtype)
        return _random(rng, r, dtype), rng.integers(0, shape.classes, shape.N).astype(np.int64)   # class indices
    return arrays


def _loss(name, kind, description):
    """A loss (mean) with its gradients: cnn_gpu's in one call, PyTorch's by autograd (its
    differentiable inputs: those before the target; gaussian_nll_loss's variance too)."""
    differentiable = {"pairs": 2, "row_pairs": 2, "triplets": 3}.get(kind, 1)

    def cnn(F, be, shape, *inputs):
        return getattr(F, name)(*inputs, backend=be, as_array=True)

    def torch_run(torch, shape, *inputs):
        op = getattr(torch.nn.functional, name)
        if kind == "gaussian":
            mean, target, var = inputs
            return _torch_backward(torch, lambda m, v: op(m, target, v), [mean, var])
        grads, rest = inputs[:differentiable], inputs[differentiable:]
        return _torch_backward(torch, lambda *a: op(*a, *rest), grads)
    return FamilyOp("loss", description, _loss_arrays(kind), cnn, torch_run)


def _distance(name):
    """normalize (dim 1, p 2), cosine_similarity (dim 1) or pairwise_distance (p 2) of (N, classes)
    rows, forward and backward."""
    def arrays(shape, dtype, rng):
        r = rows(shape)
        if name == "normalize":
            return _random(rng, r, dtype), _random(rng, r, dtype)
        return _random(rng, r, dtype), _random(rng, r, dtype), _random(rng, r[:1], dtype)

    def cnn(F, be, shape, *inputs):
        if name == "normalize":
            x, dy = inputs
            return F.normalize(x, backend=be), F.normalize_backward(dy, x, backend=be)
        x1, x2, dout = inputs
        return getattr(F, name)(x1, x2, backend=be), getattr(F, f"{name}_backward")(dout, x1, x2, backend=be)

    def torch_run(torch, shape, *inputs):
        op = getattr(torch.nn.functional, name)
        return _torch_backward(torch, op, list(inputs[:-1]), inputs[-1])
    return FamilyOp("loss", f"{name} of rows, forward and backward", arrays, cnn, torch_run)


# the element-wise activations and their options
ACTIVATIONS = {"softplus": {}, "selu": {}, "celu": {}, "logsigmoid": {}, "softsign": {}, "tanhshrink": {},
               "hardshrink": {}, "softshrink": {}, "threshold": {"threshold": 0.1, "value": -2.0}}

FAMILY_OPS = {
    **{name: _activation(name, **options) for name, options in ACTIVATIONS.items()},
    "glu": FamilyOp("conv", "glu over the channels, forward and backward", _x_and_dy(_glu_input, _glu_output),
                    lambda F, be, shape, x, dy: (F.glu(x, 1, backend=be), F.glu_backward(dy, x, 1, backend=be)),
                    lambda torch, shape, x, dy: _torch_backward(torch, lambda a: torch.nn.functional.glu(a, 1), [x],
                                                                dy)),
    "prelu": FamilyOp("conv", "prelu with a slope a channel, forward and backward (dx, dweight)", _prelu_arrays,
                      lambda F, be, shape, x, dy, w: (F.prelu(x, w, backend=be),
                                                      F.prelu_backward(dy, x, w, backend=be)),
                      lambda torch, shape, x, dy, w: _torch_backward(torch, torch.nn.functional.prelu, [x, w], dy)),
    "softmin": FamilyOp("loss", "softmin over the classes, forward and backward (from the output)", _x_and_dy(rows),
                        _softmin_cnn,
                        lambda torch, shape, x, dy: _torch_backward(
                            torch, lambda a: torch.nn.functional.softmin(a, 1), [x], dy)),
    "group_norm": _affine_norm(
        lambda F, be, x, w, b: F.group_norm(x, num_groups(x.shape[1]), w, b, return_stats=True, backend=be),
        lambda F, be, dy, x, w, b, mean, invstd: F.group_norm_backward(
            dy, x, num_groups(x.shape[1]), w, b, save_mean=mean, save_invstd=invstd, backend=be),
        lambda tf, x, w, b: tf.group_norm(x, num_groups(x.shape[1]), w, b),
        description="group norm (gcd(C, 32) groups), forward and backward (dx, dweight, dbias)"),
    "instance_norm": _affine_norm(
        *INSTANCE_NORM_CALLS,
        description="instance norm, forward and backward (dx, dweight, dbias)"),
    "instance_norm3d": _affine_norm(
        *INSTANCE_NORM_CALLS, volume,
        description="instance norm of volumes, forward and backward"),
    "batch_norm3d": FamilyOp(
        "volume", "batch norm of volumes in training: statistics, normalisation, dx/dweight/dbias",
        _with_channel_parameters(volume), _batch_norm_cnn,
        lambda torch, shape, x, dy, w, b: _torch_backward(
            torch, lambda a, w, b: torch.nn.functional.batch_norm(a, None, None, w, b, training=True), [x, w, b], dy)),
    "layer_norm": FamilyOp("conv", "layer norm over (C, H, W), forward and backward", _row_norm_arrays,
                           _layer_norm_cnn, _layer_norm_torch),
    "rms_norm": FamilyOp("conv", "RMS norm over (C, H, W), forward and backward (dx, dweight)", _row_norm_arrays,
                         _rms_norm_cnn, _rms_norm_torch),
    "local_response_norm": FamilyOp("conv", f"local response norm over {LRN_SIZE} channels, forward and backward",
                                    _x_and_dy(image), _local_response_norm_cnn, _local_response_norm_torch),
    "conv3d": FamilyOp("conv", "3-D convolution of volumes (depth 2, the layer's filter with a depth), forward "
                       "and backward (dx, dweight, dbias)", _conv3d_arrays(False), _conv3d_cnn, _conv3d_torch(False)),
    "conv_transpose3d": FamilyOp("conv", "conv3d's transpose, its output volumes back to its input's, forward and "
                                 "backward (dx, dweight, dbias)", _conv3d_arrays(True), _conv_transpose3d_cnn,
                                 _conv3d_torch(True)),
    "dropout1d": _channel_dropout("dropout1d", signal),
    "dropout3d": _channel_dropout("dropout3d", volume),
    "max_pool3d": FamilyOp("volume", "max pooling of volumes, forward and backward",
                           _x_and_dy(volume, pooled_volume), _max_pool3d_cnn, _pool3d_torch("max_pool3d")),
    "avg_pool3d": FamilyOp("volume", "average pooling of volumes, forward and backward",
                           _x_and_dy(volume, pooled_volume), _avg_pool3d_cnn, _pool3d_torch("avg_pool3d")),
    **{name: FamilyOp("volume", f"{name} of volumes to one value a channel, forward and backward",
                      _x_and_dy(volume, _global_volume), _adaptive_pool3d_cnn(name), _adaptive_pool3d_torch(name))
       for name in ("adaptive_avg_pool3d", "adaptive_max_pool3d")},
    "fractional_max_pool2d": _fractional_max_pool(2),
    "fractional_max_pool3d": _fractional_max_pool(3),
    "lp_pool2d": FamilyOp("pool", "power-average pooling (norm 2), forward and backward", _x_and_dy(image, lp_pooled),
                          _lp_pool_cnn, _lp_pool_torch),
    "max_unpool2d": FamilyOp("pool", "max unpooling of a max pool's output and indices, forward and backward",
                             _unpool_arrays, _unpool_cnn, _unpool_torch),
    "unfold": FamilyOp("conv", "im2col of the convolution's input, forward and backward", _x_and_dy(image, columns),
                       _unfold_cnn, _unfold_torch),
    "fold": FamilyOp("conv", "col2im to the convolution's input, forward and backward", _x_and_dy(columns, image),
                     _fold_cnn, _fold_torch),
    "soft_margin_loss": _loss("soft_margin_loss", "signs", "soft margin loss of +-1 targets, loss and gradient"),
    "hinge_embedding_loss": _loss("hinge_embedding_loss", "signs", "hinge embedding loss, loss and gradient"),
    "margin_ranking_loss": _loss("margin_ranking_loss", "pairs", "margin ranking loss, loss and both gradients"),
    "poisson_nll_loss": _loss("poisson_nll_loss", "counts", "Poisson NLL of log-rates, loss and gradient"),
    "gaussian_nll_loss": _loss("gaussian_nll_loss", "gaussian", "Gaussian NLL, loss and gradients of mean and var"),
    "multilabel_soft_margin_loss": _loss("multilabel_soft_margin_loss", "labels",
                                         "multi-label soft margin loss, loss and gradient"),
    "multi_margin_loss": _loss("multi_margin_loss", "classes", "multi-class hinge loss, loss and gradient"),
    "cosine_embedding_loss": _loss("cosine_embedding_loss", "row_pairs",
                                   "cosine embedding loss of row pairs, loss and both gradients"),
    "triplet_margin_loss": _loss("triplet_margin_loss", "triplets", "triplet margin loss, loss and three gradients"),
    **{name: _distance(name) for name in ("normalize", "cosine_similarity", "pairwise_distance")},
}


# --- optimizers -------------------------------------------------------------------------------------

# bench op -> (the optimizer class, cnn_gpu.optim's and torch.optim's, with its default options but
# SGD's momentum; its state arrays a parameter element, each read and written by a step)
OPTIMIZERS = {"sgd": ("SGD", {}, 0), "sgd_momentum": ("SGD", {"momentum": 0.9}, 1), "adam": ("Adam", {}, 2),
              "adamw": ("AdamW", {}, 2), "rmsprop": ("RMSprop", {}, 1), "adagrad": ("Adagrad", {}, 1),
              "adamax": ("Adamax", {}, 2), "nadam": ("NAdam", {}, 2), "radam": ("RAdam", {}, 2),
              "adadelta": ("Adadelta", {}, 2)}


def optimizer_parameters(shape) -> tuple:
    """The shapes of the parameters a step updates: a convolution shape's weight and bias."""
    g = shape.geometry()
    return g.w_shape, (g.K,)


def optimizer_case(op: str, shape) -> Case:
    """One step of the optimizer (lr 1e-3) on the convolution's weight and bias, their gradients given;
    the optimizer is made once a device (its state, after the warm-up's first step, as a training run's)."""
    kind, options, _ = OPTIMIZERS[op]

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: tuple(_random(rng, s, dtype) for s in optimizer_parameters(shape)))
        values = [device.asarray(_random(rng, s, dtype)) for s in optimizer_parameters(shape)]
        if device.framework == "torch":
            torch = device.torch
            params = [torch.nn.Parameter(v) for v in values]
            optimizer = getattr(torch.optim, kind)(params, lr=1e-3, **options)
        else:
            from .. import optim
            from ..nn import Parameter
            params = [Parameter(v, backend=device.backend) for v in values]
            optimizer = getattr(optim, kind)(params, lr=1e-3, **options)

        def step(*grads):
            for p, grad in zip(params, grads):
                p.grad = grad
            optimizer.step()
        return step, sets
    return Case(op, shape, None, setup)
