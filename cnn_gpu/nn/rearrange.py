"""Layers that only rearrange their input: PixelShuffle and PixelUnshuffle (super-resolution's
sub-pixel convolution, space-to-depth), ChannelShuffle (ShuffleNet) and Unflatten, as PyTorch's.
Their backward is the inverse rearrangement (cnn_gpu.functional.shuffle; Unflatten's a reshape)."""
from __future__ import annotations

import math
import operator

from .. import functional as F
from .module import Module


class PixelShuffle(Module):
    """(*, C r^2, H, W) -> (*, C, H r, W r), r = upscale_factor."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x):
        self._saved = x.shape
        return F.pixel_shuffle(x, self.upscale_factor, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        self._saved_for_backward()
        return F.pixel_shuffle_backward(dy, self.upscale_factor, backend=self.backend)

    def extra_repr(self):
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H r, W r) -> (*, C r^2, H, W), r = downscale_factor."""

    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, x):
        self._saved = x.shape
        return F.pixel_unshuffle(x, self.downscale_factor, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        self._saved_for_backward()
        return F.pixel_unshuffle_backward(dy, self.downscale_factor, backend=self.backend)

    def extra_repr(self):
        return f"downscale_factor={self.downscale_factor}"


class ChannelShuffle(Module):
    """(N, C, *): the channels as a (groups, C / groups) grid, transposed."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        self._saved = x.shape
        return F.channel_shuffle(x, self.groups, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        self._saved_for_backward()
        return F.channel_shuffle_backward(dy, self.groups, backend=self.backend)

    def extra_repr(self):
        return f"groups={self.groups}"


class Unflatten(Module):
    """Dimension `dim` split into `unflattened_size` (a tuple or list of ints, one of them -1 to be
    inferred), a view as PyTorch's; Flatten's inverse."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        if not isinstance(unflattened_size, (tuple, list)):
            raise TypeError(f"unflattened_size must be a tuple of ints, but found type "
                            f"{type(unflattened_size).__name__}")
        for position, size in enumerate(unflattened_size):
            if isinstance(size, bool) or not hasattr(size, "__index__"):
                raise TypeError(f"unflattened_size must be tuple of ints, but found element of type "
                                f"{type(size).__name__} at pos {position}")
        self.dim = operator.index(dim)
        self.unflattened_size = unflattened_size

    def _shape(self, shape: tuple) -> tuple:
        rank = len(shape)
        if not -rank <= self.dim < rank:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got "
                             f"{self.dim})")
        dim = self.dim % rank
        sizes = [int(s) for s in self.unflattened_size]
        known = math.prod(s for s in sizes if s != -1)
        fits = all(s >= -1 for s in sizes) and sizes.count(-1) <= 1 and (
            known == shape[dim] if -1 not in sizes else known > 0 and shape[dim] % known == 0)
        if not fits:
            raise ValueError(f"unflatten: Provided sizes {sizes} don't multiply up to the size of dim {self.dim} "
                             f"({shape[dim]}) in the input tensor")
        sizes = [shape[dim] // known if s == -1 else s for s in sizes]
        return (*shape[:dim], *sizes, *shape[dim + 1:])

    def forward(self, x):
        self._saved = x.shape
        return x.reshape(self._shape(x.shape))

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return dy.reshape(self._saved_for_backward())

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
