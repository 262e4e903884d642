"""Cases: one op on one shape, set up on a device with rotated random inputs (convolution passes,
pooling, cross entropy, softmax; the training step is in training.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shapes import ConvShape, LossShape, PoolShape

# Input sets together span at least this many bytes (more than any CPU or GPU last-level cache),
# between MIN_INPUT_SETS and MAX_INPUT_SETS of them.
ROTATION_BYTES = 128 * 2**20
MIN_INPUT_SETS, MAX_INPUT_SETS = 2, 8


@dataclass
class Case:
    """One op on one shape: `setup(device, dtype, rng)` -> (fn, input_sets) ready to time.
    `math`: whether the op's float32 work depends on the math mode (convolutions: timed once per
    `--math` mode)."""
    op: str
    shape: object
    flops: int | None
    setup: object
    math: bool = False

    @property
    def label(self) -> str:
        return self.shape.label


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _input_sets(device, rng, make_numpy_set):
    """Several random input sets (make_numpy_set(rng) -> tuple of NumPy arrays) on `device`,
    enough of them that their bytes exceed ROTATION_BYTES."""
    first = make_numpy_set(rng)
    nbytes = sum(a.nbytes for a in first if isinstance(a, np.ndarray))
    count = min(MAX_INPUT_SETS, max(MIN_INPUT_SETS, math.ceil(ROTATION_BYTES / max(nbytes, 1))))
    sets = [first] + [make_numpy_set(rng) for _ in range(count - 1)]
    return [tuple(device.asarray(a) if isinstance(a, np.ndarray) else a for a in s) for s in sets]


def _F():
    from .. import functional
    return functional


def _torch_conv_backward(torch, g, dy, x, w, mask):
    """PyTorch's backward of one convolution, only the gradients `mask` (input, weight, bias) asks for."""
    return torch.ops.aten.convolution_backward(dy, x, w, [w.shape[0]] if mask[2] else None, list(g.stride),
                                               list(g.padding), list(g.dilation), False, [0, 0], g.groups,
                                               list(mask))


def conv_case(op: str, shape: ConvShape) -> Case:
    """The convolution passes on one layer shape. Every call gets (x, w, b, bt, dy): input, filter,
    the conv's bias (K), the transposed conv's bias (C) and an upstream gradient of the output's shape.
    conv_transpose2d maps the conv's output shape back to its input shape (dy -> an x-shaped result)."""
    g = shape.geometry()
    conv_args = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
    output_padding = tuple(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for size, out, s, p, d, k in
                           zip((g.H, g.W), (g.P, g.Q), g.stride, g.padding, g.dilation, (g.R, g.S)))

    def torch_call(torch):
        tf = torch.nn.functional

        def backward(x, w, dy, mask):
            return _torch_conv_backward(torch, g, dy, x, w, mask)
        return {
            "conv2d": lambda x, w, b, bt, dy: tf.conv2d(x, w, b, **conv_args),
            "conv2d_dgrad": lambda x, w, b, bt, dy: backward(x, w, dy, (True, False, False)),
            "conv2d_wgrad": lambda x, w, b, bt, dy: backward(x, w, dy, (False, True, False)),
            "conv2d_fwd_bwd": lambda x, w, b, bt, dy: (tf.conv2d(x, w, b, **conv_args),
                                                       backward(x, w, dy, (True, True, True))),
            "conv_transpose2d": lambda x, w, b, bt, dy: tf.conv_transpose2d(
                dy, w, bt, output_padding=output_padding, **conv_args),
        }[op]

    def cnn_call(be):
        F = _F()
        return {
            "conv2d": lambda x, w, b, bt, dy: F.conv2d(x, w, b, backend=be, **conv_args),
            "conv2d_dgrad": lambda x, w, b, bt, dy: _cnn_dgrad(F, be, dy, w, g, output_padding),
            "conv2d_wgrad": lambda x, w, b, bt, dy: _cnn_wgrad(be, dy, x, g),
            "conv2d_fwd_bwd": lambda x, w, b, bt, dy: (F.conv2d(x, w, b, backend=be, **conv_args),
                                                       F.conv2d_backward(dy, x, w, bias=True, backend=be,
                                                                         **conv_args)),
            "conv_transpose2d": lambda x, w, b, bt, dy: F.conv_transpose2d(
                dy, w, bt, output_padding=output_padding, backend=be, **conv_args),
        }[op]

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: tuple(
            _random(rng, s, dtype) for s in (g.x_shape, g.w_shape, (g.K,), (g.C,), g.y_shape)))
        if device.framework == "cnn":
            return cnn_call(device.backend), sets
        torch = device.torch
        fn = torch_call(torch)

        def run(*inputs):
            with torch.no_grad():
                return fn(*inputs)
        return run, sets

    return Case(op, shape, 3 * g.flops if op == "conv2d_fwd_bwd" else g.flops, setup, math=True)


def _cnn_dgrad(F, be, dy, w, g, output_padding):
    """The input gradient alone: the kernel backends' dgrad pass as conv2d_backward routes it in
    the current math mode, and on NumPy the transposed convolution, which is the same computation
    (dx = conv_transpose2d(dy, w))."""
    if be == "numpy":
        return F.conv_transpose2d(dy, w, None, g.stride, g.padding, output_padding, g.dilation, g.groups,
                                  backend=be)
    from ..functional import conv
    return conv._gpu_dgrad(be, dy, w, g)


def _cnn_wgrad(be, dy, x, g):
    """The weight gradient alone: the kernel backends' wgrad pass as conv2d_backward routes it in
    the current math mode; on NumPy the function conv2d_backward computes dweight with, on its
    operands as that mode rounds them (the public op also computes dx)."""
    from ..functional import conv
    if be == "numpy":
        return conv._weight_grad(*conv._tf32_operands(dy, x), g)
    return conv._gpu_wgrad(be, dy, x, g)


def pool_case(op: str, shape: PoolShape) -> Case:
    """Max/avg pooling forward or backward; every call gets (x, dy) plus, for the max backward,
    the indices its forward produced (computed once in setup)."""
    g = shape.geometry()
    kernel, stride, padding, dilation = (list(v) for v in (g.kernel, g.stride, g.padding, g.dilation))
    args = dict(stride=g.stride, padding=g.padding)

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (_random(rng, g.x_shape, dtype), _random(rng, g.y_shape, dtype)))
        if device.framework == "torch":
            aten = device.torch.ops.aten

            def max_pool2d(x, dy):
                return aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, False)

            def max_pool2d_backward(x, dy, indices):
                return aten.max_pool2d_with_indices_backward(dy, x, kernel, stride, padding, dilation, False, indices)

            def avg_pool2d(x, dy):
                return aten.avg_pool2d(x, kernel, stride, padding, False, True)

            def avg_pool2d_backward(x, dy):
                return aten.avg_pool2d_backward(dy, x, kernel, stride, padding, False, True, None)
        else:
            F, be = _F(), device.backend

            def max_pool2d(x, dy):
                return F.max_pool2d(x, g.kernel, dilation=g.dilation, backend=be, **args)

            def max_pool2d_backward(x, dy, indices):
                return F.max_pool2d_backward(dy, indices, x.shape, g.kernel, dilation=g.dilation, backend=be, **args)

            def avg_pool2d(x, dy):
                return F.avg_pool2d(x, g.kernel, backend=be, **args)

            def avg_pool2d_backward(x, dy):
                return F.avg_pool2d_backward(dy, x.shape, g.kernel, backend=be, **args)
        if op == "max_pool2d_backward":
            sets = [(x, dy, max_pool2d(x, dy)[1]) for x, dy in sets]
        calls = dict(max_pool2d=max_pool2d, max_pool2d_backward=max_pool2d_backward, avg_pool2d=avg_pool2d,
                     avg_pool2d_backward=avg_pool2d_backward)
        return calls[op], sets

    return Case(op, shape, g.N * g.C * g.P * g.Q * g.kernel[0] * g.kernel[1], setup)


def batch_norm_case(shape: ConvShape) -> Case:
    """Batch norm in training on a convolution's input, as nn.BatchNorm2d runs a step: the
    statistics (blended into running ones), the normalisation, then dx, dweight and dbias."""
    x_shape = shape.geometry().x_shape
    channels = x_shape[1]

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (
            _random(rng, x_shape, dtype), _random(rng, x_shape, dtype),
            *(_random(rng, (channels,), dtype) for _ in range(3)), np.ones(channels, dtype)))
        if device.framework == "torch":
            torch = device.torch

            def run(x, dy, weight, bias, running_mean, running_var):
                x, weight, bias = (a.detach().requires_grad_(True) for a in (x, weight, bias))
                y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training=True)
                return torch.autograd.grad(y, (x, weight, bias), dy)
            return run, sets
        F, be = _F(), device.backend

        def run(x, dy, weight, bias, running_mean, running_var):
            _, mean, invstd = F.batch_norm(x, running_mean, running_var, weight, bias, True, return_stats=True,
                                           backend=be)
            return F.batch_norm_backward(dy, x, None, None, weight, bias, True, save_mean=mean, save_invstd=invstd,
                                         backend=be)
        return run, sets

    return Case("batch_norm", shape, None, setup)


def _class_index_loss_case(name: str, shape: LossShape) -> Case:
    """F.<name> (cross_entropy, nll_loss) of (N, classes) scores against class indices: the loss
    and its gradient together (the functional loss returns both)."""
    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (_random(rng, (shape.N, shape.classes), dtype),
                                                     rng.integers(0, shape.classes, shape.N).astype(np.int64)))
        if device.framework == "torch":
            torch = device.torch

            def run(scores, labels):
                scores = scores.detach().requires_grad_(True)
                return torch.autograd.grad(getattr(torch.nn.functional, name)(scores, labels), scores)
            return run, sets
        F = _F()
        return (lambda scores, labels: getattr(F, name)(scores, labels, backend=device.backend)), sets

    return Case(name, shape, None, setup)


def cross_entropy_case(shape: LossShape) -> Case:
    """Softmax cross entropy against class indices, loss and gradient together."""
    return _class_index_loss_case("cross_entropy", shape)


def nll_loss_case(shape: LossShape) -> Case:
    """NLL of log-probabilities against class indices (after log_softmax, as PyTorch's MNIST example),
    loss and gradient together."""
    return _class_index_loss_case("nll_loss", shape)


def bce_with_logits_case(shape: LossShape) -> Case:
    """Multi-label binary cross entropy on (N, classes) logits with 0/1 targets, loss and gradient
    together."""
    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (
            _random(rng, (shape.N, shape.classes), dtype),
            (rng.random((shape.N, shape.classes)) < 0.5).astype(dtype)))
        if device.framework == "torch":
            torch = device.torch

            def run(logits, target):
                logits = logits.detach().requires_grad_(True)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                return torch.autograd.grad(loss, logits)
            return run, sets
        F = _F()
        return (lambda logits, target: F.binary_cross_entropy_with_logits(logits, target, backend=device.backend)), sets

    return Case("binary_cross_entropy_with_logits", shape, None, setup)


def softmax_case(shape: LossShape) -> Case:
    """Softmax over the classes of (N, classes) logits and its backward pass from the output y."""
    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (_random(rng, (shape.N, shape.classes), dtype),
                                                     _random(rng, (shape.N, shape.classes), dtype)))
        if device.framework == "torch":
            torch = device.torch

            def run(x, dy):
                x = x.detach().requires_grad_(True)
                return torch.autograd.grad(torch.softmax(x, 1), x, dy)
            return run, sets
        F = _F()

        def run(x, dy):
            y = F.softmax(x, 1, backend=device.backend)
            return F.softmax_backward(dy, y, 1, backend=device.backend)
        return run, sets

    return Case("softmax", shape, None, setup)
