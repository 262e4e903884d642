"""LPPool1d and LPPool2d (PyTorch's power-average pooling layers; F.lp_pool1d / lp_pool2d). The
settings are kept as given, as PyTorch keeps them, and checked here."""
from __future__ import annotations

from .. import functional as F
from ..functional import _checks
from ..functional.geometry import pair, pool_stride
from ..functional.lp_pool import _norm
from ..functional.one_d import single
from .module import Module


class _LPPool(Module):
    """forward(x) -> y; backward(dy) -> dx at the forward's x. Subclasses: _op, _op_backward."""

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        super().__init__()
        _norm(norm_type)
        self._check_sizes(kernel_size, stride)
        self.norm_type, self.kernel_size, self.stride = norm_type, kernel_size, stride
        self.ceil_mode = _checks.flag(ceil_mode, "ceil_mode")

    def _args(self):
        return self.norm_type, self.kernel_size, self.stride, self.ceil_mode

    def forward(self, x):
        self._saved = x
        return self._op(x, *self._args(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        return self._op_backward(dy, self._saved_for_backward(), *self._args(), backend=self.backend)

    def extra_repr(self):
        return (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ceil_mode={self.ceil_mode}")


class LPPool2d(_LPPool):
    """Power-average pooling of (N, C, H, W) or (C, H, W) inputs."""

    _op, _op_backward = staticmethod(F.lp_pool2d), staticmethod(F.lp_pool2d_backward)

    @staticmethod
    def _check_sizes(kernel_size, stride):
        pair(kernel_size, "kernel_size")
        pool_stride(stride, kernel_size)


class LPPool1d(_LPPool):
    """Power-average pooling of (N, C, L) or (C, L) signals."""

    _op, _op_backward = staticmethod(F.lp_pool1d), staticmethod(F.lp_pool1d_backward)

    @staticmethod
    def _check_sizes(kernel_size, stride):
        single(kernel_size, "kernel_size")
        if stride is not None:
            single(stride, "stride")
