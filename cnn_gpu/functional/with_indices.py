"""PyTorch's *_with_indices functionals: max pooling that always returns (y, indices). This library's
max pools return both anyway, indices int32 (flat h*W + w in the plane, or the position within L):
these are the same calls under PyTorch's names, with its ignored `return_indices` argument."""
from __future__ import annotations

from . import _checks
from .adaptive_pool import adaptive_max_pool2d
from .one_d import adaptive_max_pool1d, max_pool1d
from .pool import max_pool2d


def max_pool2d_with_indices(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False, *, backend=None):
    """torch.nn.functional.max_pool2d_with_indices: F.max_pool2d's (y, indices int32)."""
    _checks.flag(return_indices, "return_indices")
    return max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, backend=backend)


def max_pool1d_with_indices(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False, *, backend=None):
    """torch.nn.functional.max_pool1d_with_indices: F.max_pool1d's (y, indices int32)."""
    _checks.flag(return_indices, "return_indices")
    return max_pool1d(x, kernel_size, stride, padding, dilation, ceil_mode, backend=backend)


def adaptive_max_pool2d_with_indices(x, output_size, return_indices=False, *, backend=None):
    """torch.nn.functional.adaptive_max_pool2d_with_indices: F.adaptive_max_pool2d's (y, indices int32)."""
    _checks.flag(return_indices, "return_indices")
    return adaptive_max_pool2d(x, output_size, backend=backend)


def adaptive_max_pool1d_with_indices(x, output_size, return_indices=False, *, backend=None):
    """torch.nn.functional.adaptive_max_pool1d_with_indices: F.adaptive_max_pool1d's (y, indices int32)."""
    _checks.flag(return_indices, "return_indices")
    return adaptive_max_pool1d(x, output_size, backend=backend)
