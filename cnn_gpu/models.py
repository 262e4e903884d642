"""The models `cnn-gpu train` offers: a small CNN (the default) and a small ResNet."""
from __future__ import annotations

import numpy as np

from . import nn

MODELS = ("cnn", "resnet")


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


def _basic_block(in_channels: int, out_channels: int, stride: int, dtype, rng):
    """Two 3x3 convolutions with a skip connection; a strided 1x1 convolution on the skip path
    where the channel count or the size changes."""
    block = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, dtype=dtype, rng=rng), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype, rng=rng))
    shortcut = None
    if in_channels != out_channels or stride != 1:
        shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, dtype=dtype, rng=rng)
    return nn.Residual(block, shortcut)


def small_resnet(image_shape=(1, 8, 8), num_classes: int = 10, filters: int = 16, dtype=np.float32, rng=None):
    """A 3x3 stem, a residual block at `filters` channels, a strided one at 2*`filters`, global
    average pooling and a linear classifier (no batch norm: the contract has none)."""
    channels, height, width = _check_image_shape(image_shape, 2, "resnet")
    pooled = (-(-height // 2), -(-width // 2))  # size after the stride-2 block
    return nn.Sequential(
        nn.Conv2d(channels, filters, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(),
        _basic_block(filters, filters, 1, dtype, rng), nn.ReLU(),
        _basic_block(filters, 2 * filters, 2, dtype, rng), nn.ReLU(),
        nn.AvgPool2d(pooled), nn.Flatten(), nn.Linear(2 * filters, num_classes, dtype=dtype, rng=rng))


def build(name: str, image_shape, num_classes: int, dtype=np.float32, rng=None, **options):
    """The model `name` ("cnn" or "resnet") for images of `image_shape` (C, H, W); `options` go to
    its builder (e.g. filters=8)."""
    if name == "cnn":
        return small_cnn(image_shape, num_classes, dtype=dtype, rng=rng, **options)
    if name == "resnet":
        return small_resnet(image_shape, num_classes, dtype=dtype, rng=rng, **options)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
