"""FractionalMaxPool2d and FractionalMaxPool3d (PyTorch's): F.fractional_max_pool2d / 3d as layers, with
PyTorch's arguments and checks, sizes kept as tuples and _random_samples a buffer (in the state dict when
given). Without _random_samples every forward draws new samples from nn.init's generator (the numbers are
not torch.rand's); the backward routes dy through the forward's indices."""
from __future__ import annotations

from .. import functional as F
from ..functional import _checks
from ..functional.fractional_pool import (fractional_max_pool2d_backward_of_own_indices,
                                          fractional_max_pool3d_backward_of_own_indices)
from ..functional.geometry import pair, triple
from .layers import _MaxPool


class _FractionalMaxPool(_MaxPool):
    """Subclasses: _sizes (pair or triple), _op, _backward, _backward_of_own_indices."""

    def __init__(self, kernel_size, output_size=None, output_ratio=None, return_indices=False, _random_samples=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = self._sizes(kernel_size, "kernel_size")
        self.return_indices = bool(return_indices)
        if _random_samples is not None and not _checks.is_array(_random_samples):
            raise TypeError(f"_random_samples must be None or a NumPy or CuPy array, got "
                            f"{type(_random_samples).__name__}")
        self.register_buffer("_random_samples", _random_samples)
        if output_size is None and output_ratio is None:
            raise ValueError(f"{name} requires specifying either an output size, or a pooling ratio")
        if output_size is not None and output_ratio is not None:
            raise ValueError("only one of output_size and output_ratio may be specified")
        self.output_size = None if output_size is None else self._sizes(output_size, "output_size")
        self.output_ratio = None
        if output_ratio is not None:
            count = len(self.kernel_size)
            ratios = tuple(output_ratio) if isinstance(output_ratio, (tuple, list)) else (output_ratio,) * count
            if len(ratios) != count:
                raise ValueError(f"output_ratio must be a number or a tuple of {count}, got {output_ratio!r}")
            ratios = tuple(_checks.real_number(r, "output_ratio") for r in ratios)
            if not all(0 < r < 1 for r in ratios):
                raise ValueError(f"output_ratio must be between 0 and 1 (got {output_ratio})")
            self.output_ratio = ratios

    def _pool(self, x):
        return self._op(x, self.kernel_size, self.output_size, self.output_ratio, True, self._random_samples,
                        backend=self.backend)

    def _unpool(self, dy, indices, x_shape, checked):
        backward = self._backward if checked else self._backward_of_own_indices
        return backward(dy, indices, x_shape, self.kernel_size, backend=self.backend)


class FractionalMaxPool2d(_FractionalMaxPool):
    """Fractional max pooling of (N, C, H, W) or (C, H, W) inputs (F.fractional_max_pool2d); with
    return_indices=True forward returns (y, indices) as PyTorch does."""

    _sizes = staticmethod(pair)
    _op = staticmethod(F.fractional_max_pool2d)
    _backward = staticmethod(F.fractional_max_pool2d_backward)
    _backward_of_own_indices = staticmethod(fractional_max_pool2d_backward_of_own_indices)


class FractionalMaxPool3d(_FractionalMaxPool):
    """Fractional max pooling of volumes (N, C, T, H, W) or (C, T, H, W) (F.fractional_max_pool3d), sizes
    and ratios kept as triples; with return_indices=True forward returns (y, indices)."""

    _sizes = staticmethod(triple)
    _op = staticmethod(F.fractional_max_pool3d)
    _backward = staticmethod(F.fractional_max_pool3d_backward)
    _backward_of_own_indices = staticmethod(fractional_max_pool3d_backward_of_own_indices)
