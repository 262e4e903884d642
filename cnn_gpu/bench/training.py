"""The training-step case: forward, loss, backward and SGD step of one of cnn_gpu.models' networks,
its FLOP count, and its PyTorch mirror."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..functional.geometry import conv_geometry, conv_transpose_geometry, pool_geometry
from ..functional.one_d import pool_sizes, single
from ..functional.padding import padded_shape
from ..functional.upsample import output_size
from .cases import Case, _input_sets, _random
from .shapes import ModelShape


def build_model(shape: ModelShape, dtype, seed: int = 0):
    from .. import models
    return models.build(shape.model, shape.image_shape, shape.classes, dtype=dtype, rng=np.random.default_rng(seed))


@dataclass(frozen=True)
class WithActivation:
    """A batch norm that runs the activation layer after it (nn.containers.fused_activation): its
    kernels' launches and traffic, the activation's none."""
    layer: object
    activation: str


@dataclass(frozen=True)
class ResidualLeaf:
    """A Residual's own work in a step as nn.Sequential runs it: its addition, with the ReLU after
    it (`relu`: nn.containers.fused_activation); that ReLU's backward, adding the two summands of the gradient the
    Residual after it hands on (`adds_handed_on`); and its branches' gradients added, unless it
    hands them on (`hands_on`: nn.containers.hands_on_gradient_sum)."""
    layer: object
    relu: bool = False
    adds_handed_on: bool = False
    hands_on: bool = False


def _signal_leaf(module, shape):
    """(geometry or None, output shape) of a 1-D layer on a (N, C, L) batch: the geometry of the 2-D
    convolution it runs on the (N, C, 1, L) view (None for a pool)."""
    from .. import nn
    view = (*shape[:-1], 1, shape[-1])
    if isinstance(module, nn.AdaptiveAvgPool1d):
        return None, (*shape[:-1], single(module.output_size, "output_size"))
    if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)):
        kernel, stride, padding, dilation = pool_sizes(module.kernel_size, module.stride, module.padding,
                                                       getattr(module, "dilation", 1))
        g = pool_geometry(view, (1, kernel), (1, stride), (0, padding), (1, dilation), module.ceil_mode)
        return None, (*shape[:-1], g.Q)
    weight = (*module.weight.shape[:-1], 1, module.weight.shape[-1])
    stride, dilation = (1, *module.stride), (1, *module.dilation)
    if isinstance(module, nn.Conv1d):   # a padding_mode other than zeros: convolves F.pad's output
        if module.padding_mode != "zeros":
            view, padding = padded_shape(view, (*module._mode_pad, 0, 0), module.padding_mode), (0, 0)
        else:
            padding = module.padding if isinstance(module.padding, str) else (0, *module.padding)
        g = conv_geometry(view, weight, stride, padding, dilation, module.groups)
        return g, (g.N, g.K, g.Q)
    g = conv_transpose_geometry(view, weight, stride, (0, *module.padding), (0, *module.output_padding), dilation,
                                module.groups)
    return g, (g.N, g.C, g.W)


def activation_layers() -> tuple:
    """The element-wise activation layers (ReLU6 is a Hardtanh): one forward and one backward launch, input
    and output of one shape."""
    from .. import nn
    return (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
            nn.ELU, nn.Mish, nn.Softplus, nn.SELU, nn.CELU, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Hardshrink,
            nn.Softshrink, nn.Threshold)


def leaf_layers(model, input_shape):
    """(layer, input shape, output shape, geometry or None) of every leaf layer of one forward pass
    of `model` on a batch of shape `input_shape`, in order (a Residual's block, then its shortcut,
    then the Residual itself for its addition, as a ResidualLeaf); an activation that nn.Sequential
    runs inside the batch norm or Residual before it (nn.containers.fused_activation) is no leaf: that
    batch norm is listed as WithActivation(layer, activation), that Residual's leaf says so. Raises
    ValueError for a layer type it does not know."""
    from .. import nn
    from ..nn.containers import fused_activation, fused_activation_positions, hands_on_gradient_sum
    leaves = []

    def mark(index, **flags):
        leaf = leaves[index]
        leaves[index] = (dataclasses.replace(leaf[0], **flags), *leaf[1:])

    def walk(module, shape):
        if isinstance(module, nn.Sequential):
            layers = list(module)
            fused = fused_activation_positions(layers)
            leaf_of = {}   # position in `layers` -> index in `leaves` of its last leaf
            for i, layer in enumerate(layers):
                if i in fused:   # the layer before: the last leaf
                    leaf = leaves[-1][0]
                    if isinstance(leaf, ResidualLeaf):
                        mark(-1, relu=True)
                    else:
                        leaves[-1] = (WithActivation(leaf, fused_activation(layers[i - 1], layer)), *leaves[-1][1:])
                    continue
                shape = walk(layer, shape)
                leaf_of[i] = len(leaves) - 1
                if hands_on_gradient_sum(layers, fused, i):
                    mark(leaf_of[i], hands_on=True)
                    mark(leaf_of[i - 2], adds_handed_on=True)
            return shape
        if isinstance(module, nn.Residual):
            out = walk(module.block, shape)
            if module.shortcut is not None:
                walk(module.shortcut, shape)
            leaves.append((ResidualLeaf(module), shape, out, None))
            return out
        g, out = None, shape
        if isinstance(module, nn.Conv2d):   # a padding_mode other than zeros: convolves F.pad's output
            padded = shape if module.padding_mode == "zeros" else padded_shape(shape, module._mode_pad,
                                                                                  module.padding_mode)
            g = conv_geometry(padded, module.weight.shape, module.stride, module._conv_padding(), module.dilation,
                              module.groups)
            out = g.y_shape
        elif isinstance(module, nn.ConvTranspose2d):
            g = conv_transpose_geometry(shape, module.weight.shape, module.stride, module.padding,
                                        module.output_padding, module.dilation, module.groups)
            out = g.x_shape
        elif isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)):
            g, out = _signal_leaf(module, shape)
        elif isinstance(module, nn.Linear):
            out = (*shape[:-1], module.out_features)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            out = pool_geometry(shape, module.kernel_size, module.stride, module.padding,
                                getattr(module, "dilation", 1), module.ceil_mode).y_shape
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size
            size = (size, size) if isinstance(size, int) else size
            out = (*shape[:2], *(s if s is not None else d for s, d in zip(size, shape[2:])))
        elif isinstance(module, nn.Upsample):
            out = (*shape[:2], *output_size(shape[2:], module.size, module.scale_factor))
        elif isinstance(module, nn.layers._Pad):
            out = padded_shape(shape, module.padding, module._mode)
        elif isinstance(module, nn.Flatten):
            start, end = module.start_dim % len(shape), module.end_dim % len(shape)
            out = (*shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
        elif not isinstance(module, (*activation_layers(), nn.Dropout, nn.layers._BatchNorm, nn.GroupNorm,
                                     nn.LayerNorm)):
            raise ValueError(f"no shape rule for layer {type(module).__name__}")
        leaves.append((module, shape, out, g))
        return out

    walk(model, tuple(input_shape))
    return leaves


def model_flops(model, input_shape) -> int | None:
    """2 x multiply-adds of the conv and linear layers of one forward pass of `model` on a batch of
    shape `input_shape` (None for a model with a layer type leaf_layers does not know)."""
    from .. import nn
    try:
        leaves = leaf_layers(model, input_shape)
    except ValueError:
        return None
    total = 0
    for layer, shape, out, g in leaves:
        if g is not None:
            total += g.flops
        elif isinstance(layer, nn.Linear):
            total += 2 * int(np.prod(shape[:-1])) * layer.in_features * layer.out_features
    return total


def torch_mirror(model, torch):
    """The same network as a torch.nn module with the same parameter values (state_dict names
    follow PyTorch's, so they load directly)."""
    from .. import nn
    tnn = torch.nn

    class TorchResidual(tnn.Module):
        def __init__(self, block, shortcut):
            super().__init__()
            self.block = block
            self.shortcut = shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    def convert(m):
        if isinstance(m, nn.Sequential):
            return tnn.Sequential(*(convert(layer) for layer in m))
        if isinstance(m, nn.Residual):
            return TorchResidual(convert(m.block), None if m.shortcut is None else convert(m.shortcut))
        if isinstance(m, nn.Conv2d):
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
        if isinstance(m, nn.ConvTranspose2d):
            return tnn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                       m.output_padding, m.groups, bias=m.bias is not None, dilation=m.dilation)
        if isinstance(m, nn.Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.MaxPool2d):
            return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
        if isinstance(m, nn.Flatten):
            return tnn.Flatten(m.start_dim, m.end_dim)
        if isinstance(m, nn.LeakyReLU):
            return tnn.LeakyReLU(m.negative_slope)
        if isinstance(m, nn.GELU):
            return tnn.GELU(m.approximate)
        if isinstance(m, nn.ReLU6):   # before Hardtanh, its base class (as in PyTorch)
            return tnn.ReLU6()
        if isinstance(m, nn.Hardtanh):
            return tnn.Hardtanh(m.min_val, m.max_val)
        if isinstance(m, nn.ELU):
            return tnn.ELU(m.alpha)
        if isinstance(m, nn.CELU):
            return tnn.CELU(m.alpha)
        if isinstance(m, nn.Softplus):
            return tnn.Softplus(m.beta, m.threshold)
        if isinstance(m, (nn.Hardshrink, nn.Softshrink)):
            return getattr(tnn, type(m).__name__)(m.lambd)
        if isinstance(m, nn.Threshold):
            return tnn.Threshold(m.threshold, m.value)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return tnn.AdaptiveAvgPool2d(m.output_size)
        if isinstance(m, nn.AdaptiveMaxPool2d):
            return tnn.AdaptiveMaxPool2d(m.output_size)
        if isinstance(m, nn.Dropout):   # nn.Dropout2d among them
            return (tnn.Dropout2d if isinstance(m, nn.Dropout2d) else tnn.Dropout)(m.p)
        if isinstance(m, nn.Upsample):
            return tnn.Upsample(m.size, m.scale_factor, m.mode, m.align_corners)
        if isinstance(m, nn.GroupNorm):
            return tnn.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine, bias=m.bias is not None)
        if isinstance(m, nn.LayerNorm):
            return tnn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None)
        if isinstance(m, nn.Conv1d):
            return tnn.Conv1d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                              bias=m.bias is not None, padding_mode=m.padding_mode)
        if isinstance(m, nn.ConvTranspose1d):
            return tnn.ConvTranspose1d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                       m.output_padding, m.groups, bias=m.bias is not None, dilation=m.dilation)
        if isinstance(m, nn.MaxPool1d):
            return tnn.MaxPool1d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
        if isinstance(m, nn.AvgPool1d):
            return tnn.AvgPool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
        if isinstance(m, nn.AdaptiveAvgPool1d):
            return tnn.AdaptiveAvgPool1d(m.output_size)
        if isinstance(m, nn.layers._Pad):   # the same names and arguments (ConstantPad*d: its value too)
            takes_value = isinstance(m, nn.layers._ConstantPad) and not isinstance(m, nn.layers._ZeroFill)
            return getattr(tnn, type(m).__name__)(m.padding, *((m.value,) if takes_value else ()))
        for ours, theirs in ((nn.BatchNorm1d, tnn.BatchNorm1d), (nn.BatchNorm2d, tnn.BatchNorm2d)):
            if isinstance(m, ours):
                return theirs(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        for ours, theirs in ((nn.ReLU, tnn.ReLU), (nn.Sigmoid, tnn.Sigmoid), (nn.Tanh, tnn.Tanh), (nn.SiLU, tnn.SiLU),
                             (nn.Hardsigmoid, tnn.Hardsigmoid), (nn.Hardswish, tnn.Hardswish), (nn.Mish, tnn.Mish),
                             (nn.SELU, tnn.SELU), (nn.LogSigmoid, tnn.LogSigmoid), (nn.Softsign, tnn.Softsign),
                             (nn.Tanhshrink, tnn.Tanhshrink)):
            if isinstance(m, ours):
                return theirs()
        raise TypeError(f"no PyTorch counterpart for layer {type(m).__name__}")

    mirror = convert(model)
    dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
             np.dtype(np.float64): torch.float64}[
        np.dtype(next(model.parameters()).dtype)]
    mirror = mirror.to(dtype)
    # a Dropout's step (the count its masks are drawn from) has no PyTorch counterpart
    steps = {f"{name}.step" if name else "step" for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    mirror.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value))
                            for name, value in model.state_dict().items() if name not in steps})
    return mirror


def train_step_case(shape: ModelShape, replayed: bool = False) -> Case:
    """Forward, loss, backward and an SGD (momentum 0.9) step of a model on one batch; replayed:
    the step recorded once and replayed with each input set copied into its arrays (cnn_gpu.replay,
    kernel backends only: no row on numpy or torch)."""
    batch_shape = (shape.batch, *shape.image_shape)
    forward_flops = model_flops(build_model(shape, np.float32), batch_shape)

    def setup(device, dtype, rng):
        from .. import nn, optim, replay
        if replayed and (device.framework == "torch" or device.backend == "numpy"):
            return None
        model = build_model(shape, dtype)
        sets = _input_sets(device, rng, lambda rng: (_random(rng, batch_shape, dtype),
                                                     rng.integers(0, shape.classes, shape.batch).astype(np.int64)))
        if device.framework == "torch":
            torch = device.torch
            net = torch_mirror(model, torch).to(device.device)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()

            def run(x, labels):
                optimizer.zero_grad(set_to_none=False)
                loss = loss_fn(net(x), labels)
                loss.backward()
                optimizer.step()
            return run, sets
        model.to(device.backend)
        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        loss_fn.to(device.backend)

        def run(x, labels):
            optimizer.zero_grad()
            loss_fn(model(x), labels, as_array=True)   # left on the device, as torch's: no read back
            model.backward(loss_fn.backward(), input_grad=False)   # as torch: x needs no gradient
            optimizer.step()
        if not replayed:
            return run, sets
        recorded_x, recorded_labels = (a.copy() for a in sets[0])
        with replay.record(recorded_x, recorded_labels) as step:
            run(recorded_x, recorded_labels)
        return step.replay, sets

    return Case("train_step_replayed" if replayed else "train_step", shape,
                None if forward_flops is None else 3 * forward_flops, setup, math=True)
