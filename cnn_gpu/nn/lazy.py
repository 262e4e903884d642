"""Lazy modules (PyTorch's LazyLinear, LazyConv1d/2d/3d, LazyConvTranspose1d/2d/3d, LazyBatchNorm1d/2d,
LazyInstanceNorm1d/2d): in_features, in_channels or num_features is inferred
from the first forward's input, then the module becomes the regular one (its class too, as torch
2.13's `cls_to_become`), initialised as that one's constructor initialises it.

Before that first forward its parameters are UninitializedParameters and the running statistics
empty placeholders (in_features etc. 0, as PyTorch's). Module.to converts and moves them (their
dtype and backend are the materialised ones'); an optimizer may be built over them (it holds the
same objects after the forward; the step skips them until they have gradients); state_dict
holds them as empty arrays (PyTorch's holds uninitialised tensors) and load_state_dict gives them
the state's shapes, as PyTorch's lazy load hook does. Their shape is refused with PyTorch's error.
"""
from __future__ import annotations

import inspect

import numpy as np

from ..functional import _checks
from . import init
from .instance_norm import InstanceNorm1d, InstanceNorm2d
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, ConvTranspose2d, Linear
from .layers_1d import Conv1d, ConvTranspose1d
from .layers_3d import Conv3d, ConvTranspose3d
from .module import UninitializedParameter, array_like

# What a lazy module's bookkeeping adds to the regular module's attributes (not copied at materialisation)
_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "training", "backend", "_saved", "_hooks",
                           "_version", "_forward_generation", "_forwards_after_training", "_lazy_arguments",
                           "_uninitialized_buffers"})


class _LazyModule:
    """The work of every lazy module, mixed in before its regular class (`cls_to_become`): the
    constructor takes the regular one's arguments without the inferred first one (`_inferred`,
    the name of that attribute), and the first forward infers it (`_infer`), builds the regular
    module to initialise the placeholders still open, and turns into it."""

    cls_to_become: type
    _inferred: str
    _lazy_buffers: tuple = ()   # buffers whose length is the inferred size

    def __init__(self, *args, **kwargs):
        regular = self.cls_to_become
        arguments = inspect.signature(regular).bind(0, *args, **kwargs)   # PyTorch's argument errors
        arguments.apply_defaults()
        generator = init.generator(arguments.arguments.get("rng"))
        drawn = generator.bit_generator.state
        # the regular constructor's checks and settings, with a stand-in size (in_channels a
        # multiple of groups); its draws undone: PyTorch's lazy modules draw at materialisation
        regular.__init__(self, arguments.arguments.get("groups", 1), *args, **kwargs)
        generator.bit_generator.state = drawn
        object.__setattr__(self, "_lazy_arguments", (args, kwargs))
        object.__setattr__(self, "_uninitialized_buffers", set())
        for name, parameter in list(self._parameters.items()):
            if parameter is not None:
                setattr(self, name, UninitializedParameter(parameter.requires_grad, parameter.dtype))
        for name in self._lazy_buffers:
            if self._buffers.get(name) is not None:
                self.register_buffer(name, np.empty(0, self._buffers[name].dtype))
                self._uninitialized_buffers.add(name)
        object.__setattr__(self, self._inferred, 0)

    def has_uninitialized_params(self) -> bool:
        """Whether a parameter or buffer still waits for its shape (PyTorch's)."""
        return bool(self._uninitialized_buffers) or any(isinstance(p, UninitializedParameter)
                                                         for p in self._parameters.values())

    def _placeholder_dtype(self):
        arrays = [p.data for p in self._parameters.values() if p is not None] + [
            b for name, b in self._buffers.items() if name in self._lazy_buffers and b is not None]
        return arrays[0].dtype if arrays else self._lazy_arguments[1].get("dtype", np.float32)

    def initialize_parameters(self, x) -> None:
        """Infers the size from x, gives every placeholder the regular module's initial values (a
        loaded one keeps its values: its shape must fit) and becomes the regular module. Every
        array is made before anything changes: a refusal leaves the lazy module as it was."""
        _checks.array(x, "input")
        size = self._infer(x)
        args, kwargs = self._lazy_arguments
        open_ones = self.has_uninitialized_params()
        dtype_kwargs = {**kwargs, "dtype": self._placeholder_dtype()}
        draws = "rng" in inspect.signature(self.cls_to_become).parameters
        # the shapes first, from a module of a generator of its own (its values discarded where the
        # regular module draws), so a refusal moves no generator
        probe = self.cls_to_become(size, *args, **(dict(dtype_kwargs, rng=0) if draws else dtype_kwargs))
        for kind, own, made in (("parameter", self._parameters, probe._parameters),
                                ("buffer", self._buffers, probe._buffers)):
            for name, value in own.items():
                current = value.data if kind == "parameter" else value
                expected = made[name].data if kind == "parameter" else made[name]
                if value is not None and not self._is_uninitialized(name, kind) and (
                        tuple(current.shape) != tuple(expected.shape)):
                    raise ValueError(f"{type(self).__name__}: {kind} {name!r} was loaded with shape "
                                     f"{tuple(current.shape)}, but the input makes it {tuple(expected.shape)}")
        fresh = self.cls_to_become(size, *args, **dtype_kwargs) if open_ones and draws else probe
        updates = []
        for kind, own, made in (("parameter", self._parameters, fresh._parameters),
                                ("buffer", self._buffers, fresh._buffers)):
            for name, value in own.items():
                if value is not None and self._is_uninitialized(name, kind):
                    current = value.data if kind == "parameter" else value
                    array = made[name].data if kind == "parameter" else made[name]
                    updates.append((name, kind, array_like(np.asarray(array, current.dtype), current)))
        for name, kind, array in updates:
            self._initialized(name, kind, array)
        for name, value in fresh.__dict__.items():
            if name not in _MODULE_STATE and name not in self._parameters and name not in self._buffers:
                object.__setattr__(self, name, value)
        del self._lazy_arguments, self._uninitialized_buffers
        object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)
        self.__class__ = self.cls_to_become

    def forward(self, x, *args, **kwargs):
        self.initialize_parameters(x)
        return self.forward(x, *args, **kwargs)   # the regular module's now


class _LazyConv(_LazyModule):
    _inferred = "in_channels"
    _spatial_dims: int

    def _infer(self, x) -> int:
        """PyTorch's: the channel axis of a batched or an unbatched input."""
        batched = self._spatial_dims + 2
        if x.ndim not in (batched - 1, batched):
            raise RuntimeError(f"Expected {batched - 1}D (unbatched) or {batched}D (batched) input to "
                               f"{type(self).__name__}, but got input of size: {tuple(x.shape)}")
        return int(x.shape[1] if x.ndim == batched else x.shape[0])


class _LazyNorm(_LazyModule):
    _inferred = "num_features"
    _lazy_buffers = ("running_mean", "running_var")

    def _infer(self, x) -> int:
        """The channel axis: 1 (PyTorch's), or 0 for an instance norm's unbatched input."""
        if x.ndim < 2:
            raise ValueError(f"{type(self).__name__} expects an input with a channel axis, got shape {tuple(x.shape)}")
        unbatched = x.ndim == getattr(self, "_batched_rank", 0) - 1
        return int(x.shape[0 if unbatched else 1])


class LazyLinear(_LazyModule, Linear):
    """Linear with in_features inferred from the first input's last axis: LazyLinear(out_features,
    bias=True, dtype=np.float32, rng=None)."""
    cls_to_become = Linear
    _inferred = "in_features"

    def _infer(self, x) -> int:
        if x.ndim < 1:
            raise ValueError("LazyLinear takes an input of one axis at least, got a 0-d array")
        return int(x.shape[-1])


class LazyConv1d(_LazyConv, Conv1d):
    """Conv1d with in_channels inferred from the first input: LazyConv1d(out_channels, kernel_size, ...)."""
    cls_to_become, _spatial_dims = Conv1d, 1


class LazyConvTranspose1d(_LazyConv, ConvTranspose1d):
    """ConvTranspose1d with in_channels inferred from the first input: LazyConvTranspose1d(out_channels,
    kernel_size, ...)."""
    cls_to_become, _spatial_dims = ConvTranspose1d, 1


class LazyConv2d(_LazyConv, Conv2d):
    """Conv2d with in_channels inferred from the first input: LazyConv2d(out_channels, kernel_size, ...)."""
    cls_to_become, _spatial_dims = Conv2d, 2


class LazyConvTranspose2d(_LazyConv, ConvTranspose2d):
    """ConvTranspose2d with in_channels inferred from the first input: LazyConvTranspose2d(out_channels,
    kernel_size, ...)."""
    cls_to_become, _spatial_dims = ConvTranspose2d, 2


class LazyConv3d(_LazyConv, Conv3d):
    """Conv3d with in_channels inferred from the first input: LazyConv3d(out_channels, kernel_size, ...)."""
    cls_to_become, _spatial_dims = Conv3d, 3


class LazyConvTranspose3d(_LazyConv, ConvTranspose3d):
    """ConvTranspose3d with in_channels inferred from the first input: LazyConvTranspose3d(out_channels,
    kernel_size, ...)."""
    cls_to_become, _spatial_dims = ConvTranspose3d, 3


class LazyBatchNorm1d(_LazyNorm, BatchNorm1d):
    """BatchNorm1d with num_features inferred from the first input's axis 1: LazyBatchNorm1d(eps=1e-5, ...)."""
    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyNorm, BatchNorm2d):
    """BatchNorm2d with num_features inferred from the first input's axis 1: LazyBatchNorm2d(eps=1e-5, ...)."""
    cls_to_become = BatchNorm2d


class LazyInstanceNorm1d(_LazyNorm, InstanceNorm1d):
    """InstanceNorm1d with num_features inferred from the first input's channel axis, PyTorch's
    lazy defaults affine=True and track_running_stats=True: LazyInstanceNorm1d(eps=1e-5,
    momentum=0.1, affine=True, track_running_stats=True, ...)."""
    cls_to_become = InstanceNorm1d

    def __init__(self, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, **kwargs):
        super().__init__(eps, momentum, affine, track_running_stats, **kwargs)


class LazyInstanceNorm2d(_LazyNorm, InstanceNorm2d):
    """InstanceNorm2d as LazyInstanceNorm1d does InstanceNorm1d."""
    cls_to_become = InstanceNorm2d

    def __init__(self, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, **kwargs):
        super().__init__(eps, momentum, affine, track_running_stats, **kwargs)
