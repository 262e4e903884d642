"""InstanceNorm1d, InstanceNorm2d and InstanceNorm3d (style transfer, GAN generators, volumes): F.instance_norm with
PyTorch's arguments, parameters, buffers and input rules."""
from __future__ import annotations

import warnings

import numpy as np

from .. import functional as F
from ..functional._checks import real_number, whole_number
from .layers import _float_dtype
from .module import Module, Parameter


class _InstanceNorm(Module):
    """weight (ones) and bias (zeros) when affine (bias=False leaves the bias out);
    running_mean (zeros), running_var (ones) and num_batches_tracked (0: PyTorch's instance norm
    never counts) when track_running_stats, which then normalise in eval mode. momentum=None is
    PyTorch's 0: the running statistics stay as they are."""

    _host_buffers = frozenset({"num_batches_tracked"})
    _batched_rank = 0   # the input rank with a batch dimension; one less is an unbatched input

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 dtype=np.float32, *, bias=True):
        super().__init__()
        self.num_features = whole_number(num_features, "num_features")
        self.eps = real_number(eps, "eps", minimum=0.0)
        self.momentum = None if momentum is None else real_number(momentum, "momentum")
        if self.momentum is not None and not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be None or in [0, 1], got {momentum!r}")
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_features, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_features, dtype)) if self.affine and bias else None
        tracked = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(self.num_features, dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64) if tracked else None)

    def _batched(self, x):
        """x with its batch dimension (a view of an unbatched input), after PyTorch's checks."""
        rank = self._batched_rank
        if x.ndim not in (rank - 1, rank):
            raise ValueError(f"expected {rank - 1}D or {rank}D input (got {x.ndim}D input)")
        feature_dim = x.ndim - (rank - 1)
        if x.shape[feature_dim] != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match num_features "
                                 f"({self.num_features}), but got: {x.shape[feature_dim]}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You can silence this "
                          "warning by not passing in num_features, which is not used because affine=False",
                          stacklevel=3)
        return x if x.ndim == rank else x[None]

    def _arguments(self, use_input_stats: bool):
        """F.instance_norm's (running_mean, running_var, weight, bias, use_input_stats)"""
        return (self.running_mean, self.running_var, *(None if p is None else p.data for p in (self.weight, self.bias)),
                use_input_stats)

    def forward(self, x):
        batched = self._batched(x)
        use_input_stats = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        y, mean, invstd = F.instance_norm(batched, *self._arguments(use_input_stats), momentum, self.eps,
                                          return_stats=True, backend=self.backend)
        self._saved = (batched, mean, invstd, use_input_stats, x.shape)
        return y.reshape(x.shape)

    def backward(self, dy, input_grad=True):
        """As BatchNorm2d's: the parameters' gradients come with dx."""
        if self._nothing_to_compute(input_grad):
            return None
        x, mean, invstd, use_input_stats, shape = self._saved_for_backward()
        dx, dweight, dbias = F.instance_norm_backward(dy.reshape(x.shape), x, *self._arguments(use_input_stats),
                                                      self.eps, save_mean=mean, save_invstd=invstd,
                                                      backend=self.backend)
        for parameter, grad in ((self.weight, dweight), (self.bias, dbias)):
            if parameter is not None:
                parameter.accumulate_grad(grad)
        return dx.reshape(shape) if input_grad else None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class InstanceNorm1d(_InstanceNorm):
    """On (N, C, L) or unbatched (C, L) signals."""
    _batched_rank = 3


class InstanceNorm2d(_InstanceNorm):
    """On (N, C, H, W) or unbatched (C, H, W) images."""
    _batched_rank = 4


class InstanceNorm3d(_InstanceNorm):
    """On (N, C, D, H, W) or unbatched (C, D, H, W) volumes."""
    _batched_rank = 5
