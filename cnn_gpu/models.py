"""The models `cnn-gpu train` offers: a small CNN (the default), a small ResNet and the CIFAR
ResNet-18."""
from __future__ import annotations

import numpy as np

from . import nn

MODELS = ("cnn", "resnet", "resnet18")


def _check_image_shape(image_shape, minimum: int, model: str):
    if len(image_shape) != 3:
        raise ValueError(f"{model}: image_shape must be (channels, height, width), got {tuple(image_shape)}")
    channels, height, width = (int(d) for d in image_shape)
    if min(height, width) < minimum:
        raise ValueError(f"{model}: images must be at least {minimum}x{minimum}, got {height}x{width}")
    return channels, height, width


def small_cnn(image_shape=(1, 8, 8), num_classes: int = 10, filters: int = 32, dtype=np.float32, rng=None):
    """(conv 3x3 - ReLU - max pool 2) x 2 with `filters` and 2*`filters` channels, then a linear
    classifier."""
    channels, height, width = _check_image_shape(image_shape, 4, "cnn")
    features = 2 * filters * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, filters, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(filters, 2 * filters, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(features, num_classes, dtype=dtype, rng=rng))


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, dtype, rng):
    """A convolution without bias (the batch norm's shift replaces it) followed by batch norm."""
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False, dtype=dtype,
                      rng=rng), nn.BatchNorm2d(out_channels, dtype=dtype)]


def _basic_block(in_channels: int, out_channels: int, stride: int, dtype, rng):
    """ResNet's basic block without its final ReLU: (3x3 conv - BN - ReLU - 3x3 conv - BN) plus a
    skip connection, a strided 1x1 convolution with BN where the channel count or the size changes."""
    block = nn.Sequential(*_conv_bn(in_channels, out_channels, 3, stride, dtype, rng), nn.ReLU(),
                          *_conv_bn(out_channels, out_channels, 3, 1, dtype, rng))
    shortcut = None
    if in_channels != out_channels or stride != 1:
        shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride, dtype, rng))
    return nn.Residual(block, shortcut)


def _head(features: int, num_classes: int, dtype, rng):
    """Global average pooling and a linear classifier."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, num_classes, dtype=dtype, rng=rng)]


def small_resnet(image_shape=(1, 8, 8), num_classes: int = 10, filters: int = 16, dtype=np.float32, rng=None):
    """A 3x3 stem, a residual block at `filters` channels, a strided one at 2*`filters` (batch norm
    after every convolution), global average pooling and a linear classifier."""
    channels, _, _ = _check_image_shape(image_shape, 2, "resnet")
    return nn.Sequential(
        *_conv_bn(channels, filters, 3, 1, dtype, rng), nn.ReLU(),
        _basic_block(filters, filters, 1, dtype, rng), nn.ReLU(),
        _basic_block(filters, 2 * filters, 2, dtype, rng), nn.ReLU(),
        *_head(2 * filters, num_classes, dtype, rng))


RESNET18_STAGES = (64, 128, 256, 512)   # channels of the four stages of two basic blocks each


def resnet18(image_shape=(3, 32, 32), num_classes: int = 10, width: int = 64, dtype=np.float32, rng=None):
    """ResNet-18 for CIFAR-sized images (He et al. 2016, as commonly adapted to 32x32): a 3x3 stem
    with `width` channels and no max pool, four stages of two basic blocks at 1, 2, 4 and 8 times
    `width` channels (the last three start with stride 2), batch norm after every convolution,
    global average pooling and a linear classifier. width=64 is the standard model (11.2M
    parameters); a smaller width gives the same architecture for quick runs."""
    channels, _, _ = _check_image_shape(image_shape, 8, "resnet18")
    widths = [width * c // RESNET18_STAGES[0] for c in RESNET18_STAGES]
    layers = [*_conv_bn(channels, widths[0], 3, 1, dtype, rng), nn.ReLU()]
    in_channels = widths[0]
    for stage, out_channels in enumerate(widths):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            layers += [_basic_block(in_channels, out_channels, stride, dtype, rng), nn.ReLU()]
            in_channels = out_channels
    return nn.Sequential(*layers, *_head(in_channels, num_classes, dtype, rng))


def build(name: str, image_shape, num_classes: int, dtype=np.float32, rng=None, **options):
    """The model `name` ("cnn", "resnet" or "resnet18") for images of `image_shape` (C, H, W);
    `options` go to its builder (e.g. filters=8, or width=16 for resnet18)."""
    builders = {"cnn": small_cnn, "resnet": small_resnet, "resnet18": resnet18}
    if name in builders:
        return builders[name](image_shape, num_classes, dtype=dtype, rng=rng, **options)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
