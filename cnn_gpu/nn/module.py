"""`Module` and `Parameter`: explicit forward/backward layers with PyTorch-style bookkeeping.

A module's `forward` keeps what its `backward` needs (its input, pooling indices); `backward(dy)`
returns the gradient with respect to that input and adds the gradients of its parameters into
their `.grad` (upstream gradient times the local Jacobian, layer by layer).
"""
from __future__ import annotations

import functools
import operator
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import backend as _backend
from .. import replay
from ..grad_mode import is_grad_enabled
from ..backend import device_call
from ..functional._checks import FLOAT_DTYPES, flag
from .hooks import ModuleHooks, RemovableHandle, has_hooks, hooks_of


class IncompatibleKeys(NamedTuple):
    """What Module.load_state_dict(strict=False) skipped: the model's names the state lacked, and
    the state's names the model lacks."""
    missing_keys: list
    unexpected_keys: list


class Parameter:
    """A trainable array. `.grad` is None until a backward pass accumulates into it.
    `.requires_grad` False freezes it, as PyTorch's: backward passes leave its .grad alone (and
    skip computing its gradient), so optimizers leave it alone too. `.backend` is the backend set
    by `Module.to` (None: the one F chooses for the array)."""

    __slots__ = ("data", "grad", "backend", "_requires_grad")

    def __init__(self, data, requires_grad=True, *, backend=None):
        # a list or a tensor kept as given failed later and elsewhere (repr, the optimizer's step)
        if not (isinstance(data, np.ndarray) or _backend.is_cupy_array(data)) or data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"a Parameter holds a float16, float32 or float64 NumPy or CuPy array, got "
                            f"{type(data).__name__}{f' of {data.dtype}' if hasattr(data, 'dtype') else ''} "
                            f"(np.asarray(x, dtype=np.float32) converts a list, integers or a CPU tensor)")
        self.data = data
        self.grad = None
        self.backend = backend
        self.requires_grad = requires_grad

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value) -> None:
        self._requires_grad = flag(value, "requires_grad")

    def requires_grad_(self, requires_grad=True) -> "Parameter":
        """Sets requires_grad in place and returns the parameter, as PyTorch's."""
        self.requires_grad = requires_grad
        return self

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        """The number of elements, as PyTorch's."""
        return int(self.data.size)

    def size(self, dim=None):
        """The shape, or its length along `dim`, as PyTorch's."""
        return tuple(self.data.shape) if dim is None else int(self.data.shape[dim])

    def clear_grad(self, set_to_none: bool = True) -> None:
        """zero_grad for this parameter: .grad None, or (set_to_none=False) zeroed in place."""
        if not isinstance(set_to_none, bool):
            raise TypeError(f"set_to_none must be True or False, got {set_to_none!r}")
        if set_to_none or self.grad is None:
            self.grad = None
            # unbound at each replay too, so that the recorded backward binds anew (a gradient it
            # would zero in place holds what that backward writes, up to the sign of its zeros)
            if replay.is_recording():
                replay.first_time((self, "grad"))
                replay.live(functools.partial(setattr, self, "grad", None))
        else:
            device_call(self.grad.fill, 0)

    def accumulate_grad(self, grad) -> None:
        """Adds `grad` into .grad (binds it where None); nothing for a frozen parameter."""
        if not self._requires_grad:
            return
        if replay.first_time((self, "grad")):   # the recording's first touch of .grad: see _bound_as
            bound = self.grad
            replay.guard(lambda: self._bound_as(bound))
        # Gradients from F are fresh arrays, so the first one is kept without a copy.
        if self.grad is None:
            self.grad = grad
        else:
            device_call(operator.iadd, self.grad, grad)
        if replay.is_recording():   # a replay binds .grad again: an update between replays reads it
            replay.live(functools.partial(setattr, self, "grad", self.grad))

    def _bound_as(self, recorded):
        """A replay's check of a gradient that the recorded backward wrote without unbinding it
        first: where .grad was unbound when recorded, the recorded backward writes it anew, where it
        was bound, adds to that array; .grad must be so again (an eager backward would add to a
        gradient bound since, or make a new one for an unbound one)."""
        if self.grad is recorded:
            return None
        return (f"a parameter's .grad is {'unbound' if self.grad is None else 'bound'} where the recorded backward "
                f"{'added to an array bound' if recorded is not None else 'found it unbound'} (zero_grad every "
                f"parameter the step trains, e.g. model.zero_grad(), inside the recorded code or before each "
                f"replay)")

    def __repr__(self):
        frozen = "" if self._requires_grad else ", requires_grad=False"
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}{frozen})"


_UNINITIALIZED = ("Can't access the shape of an uninitialized parameter or buffer. This error usually happens in "
                  "`load_state_dict` when trying to load an uninitialized parameter into an initialized one. Call "
                  "`forward` to initialize the parameters before accessing their attributes.")


class UninitializedParameter(Parameter):
    """A lazy module's parameter before its first forward fixes its shape (PyTorch's). It holds an
    empty array of its dtype, so Module.to converts and moves it as any parameter; its shape is
    refused with PyTorch's error. It becomes a Parameter in place (materialize_as), so an optimizer
    or a ParameterList that holds it holds the materialised parameter."""

    __slots__ = ()   # Parameter's layout: materialize_as changes the class in place

    def __init__(self, requires_grad=True, dtype=np.float32):
        super().__init__(np.empty(0, dtype), requires_grad)

    @property
    def shape(self):
        raise RuntimeError(_UNINITIALIZED)

    @property
    def ndim(self):
        raise RuntimeError(_UNINITIALIZED)

    def numel(self):
        raise RuntimeError(_UNINITIALIZED)

    def size(self, dim=None):
        raise RuntimeError(_UNINITIALIZED)

    def materialize_as(self, array) -> None:
        """Holds `array` (of the placeholder's dtype and backend) and becomes a Parameter."""
        self.data = array
        self.__class__ = Parameter

    def __repr__(self):
        return "<UninitializedParameter>"


def to_backend_array(array, backend: str):
    """`array` as the array kind of `backend` (CuPy for "cuda", NumPy for "numpy"/"emu"), laid out
    as the kernels take it: C-contiguous (copied only when it is not)."""
    if backend == "cuda":
        return _backend.array_module("cuda").asarray(array, order="C")
    return np.asarray(array.get() if _backend.is_cupy_array(array) else array, order="C")


def backend_of_device(device) -> str:
    """The backend of a device as Module.to takes it: a backend name, PyTorch's "cpu" (numpy),
    "cuda:N" or a torch.device (its type and index), where GPU N must be CuPy's current GPU: the
    kernels run there (ValueError naming the way to make it current otherwise)."""
    if not isinstance(device, str) and hasattr(device, "type") and hasattr(device, "index"):   # torch.device
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    if not isinstance(device, str):
        raise TypeError(f"to() takes a device such as \"cuda\", \"cuda:0\" or \"cpu\", got {device!r}")
    kind, colon, index = device.partition(":")
    if not colon:
        return "numpy" if device == "cpu" else device
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"unknown device {device!r}; expected a backend ({', '.join(_backend.BACKENDS)}), \"cpu\" "
                         f"or \"cuda:N\"")
    reason = _backend.why_unavailable("cuda")
    if reason:
        raise RuntimeError(f"device {device!r}: backend 'cuda' is not available: {reason}")
    from ..launch_checks import current_device
    current = current_device()
    if int(index) != current:
        raise ValueError(f"device {device!r}: the kernels run on CuPy's current GPU, {current}; make GPU {int(index)} "
                         f"current first (`cupy.cuda.Device({int(index)}).use()`, or a `with` block around the model's "
                         f"use), then \"cuda\" or \"cuda:{int(index)}\" is that GPU")
    return "cuda"


def array_like(array, like):
    """`array` (NumPy or CuPy) as an array of `like`'s kind, C-contiguous: for a CuPy `like` on its
    GPU, whichever GPU is current (a model on GPU 1 stays there when GPU 0 is current)."""
    if _backend.is_cupy_array(like):
        with like.device:
            return to_backend_array(array, "cuda")
    return to_backend_array(array, "numpy")


def _counts_fit(value: np.ndarray, dtype) -> bool:
    """Whether every value is a whole number in [0, dtype's max]: the integer buffers are counts
    (BatchNorm's num_batches_tracked, Dropout's step), which a checkpoint must not make fractional
    or negative."""
    if value.dtype.kind == "f" and not bool(np.all(np.isfinite(value) & (value == np.floor(value)))):
        return False
    return bool(np.all(value >= 0) and np.all(value <= np.iinfo(dtype).max))


def to_host(array) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return array.get() if _backend.is_cupy_array(array) else np.array(array, copy=True)


# The forward pass a module runs in (Module.__call__): a call made outside any module's forward starts
# a new one; per thread.
_FORWARD = threading.local()
# The backward a module runs in: the outermost call checks its module's forwards (_paired); per thread.
_BACKWARD = threading.local()
# Why a module may not take two places in one model (Module refuses it where the model is built and
# at a training forward)
_ONE_PLACE = ("a module keeps only its latest forward's input for backward, so one used twice would get wrong "
              "gradients; use a new module for each place (to tie weights, assign one Parameter to both)")
# What a module holds for its backward after a forward under cnn_gpu.no_grad(): nothing
_NOT_KEPT = "not kept under no_grad"


def _paired(backward):
    """`backward` of a Module subclass, warning at the outermost call where its module ran forward
    again after a training forward since its last backward: a module keeps its latest forward's
    inputs only, so the gradient of the training forward's output (an evaluation forward in
    between, a second batch) silently came out at the later inputs, where PyTorch's autograd
    differentiates each call's own graph. (Evaluation forwards before the training forward, as
    between epochs, are no concern.)"""
    @functools.wraps(backward)
    def run(self, *args, **kwargs):
        depth = getattr(_BACKWARD, "depth", 0)
        if depth == 0:
            later = self.__dict__.get("_forwards_after_training", 0)
            object.__setattr__(self, "_forwards_after_training", None)
            if later:
                warnings.warn(f"{type(self).__name__} ran forward {later} more time(s) after a training forward since "
                              f"its last backward: backward differentiates the latest forward's inputs only (a "
                              f"module keeps no graph per call, as PyTorch's autograd does); run forward and "
                              f"backward in pairs", UserWarning, stacklevel=2)
        _BACKWARD.depth = depth + 1
        try:
            hooks = self.__dict__.get("_hooks")   # (hooks_of, inline: every backward call asks)
            if hooks is None:
                return backward(self, *args, **kwargs)
            return hooks.call_backward(self, backward, args, kwargs)
        finally:
            _BACKWARD.depth = depth
    return run


def trains(module) -> bool:
    """Whether `module` holds a parameter that requires a gradient."""
    return any(parameter.requires_grad for parameter in module.parameters())


class Module:
    """Base class of layers, containers and losses.

    Assigning a `Parameter` or a `Module` to an attribute registers it (in assignment order, which
    fixes the order of `parameters()` and the names of `state_dict()`, e.g. "0.weight").
    `register_buffer(name, array)` registers state that is saved but not trained (batch norm's
    running statistics); assigning to that attribute later replaces the buffer."""

    # Buffers the host reads at every call (step counters): NumPy on every backend, since reading
    # a CuPy array would wait for the GPU.
    _host_buffers: frozenset = frozenset()
    # Buffers that state dicts saved before they existed lack, and the value such a load gives
    # them instead of failing (as PyTorch loads BatchNorm's num_batches_tracked of old files);
    # None: the buffer keeps its value.
    _defaults_for_missing_buffers: dict = {}
    # ParameterList and ParameterDict: parameters the module holding them reads in its forward
    _holds_parameters_for_parent: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:   # (a user's module too)
            cls.backward = _paired(cls.__dict__["backward"])

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "backend", None)
        object.__setattr__(self, "_saved", None)

    def __setattr__(self, name, value):
        attributes = self.__dict__
        parameters, modules = attributes.get("_parameters"), attributes.get("_modules")
        if parameters is None:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before "
                                 f"assigning attributes")
        if (type(value) is tuple and name.startswith("_") and name not in parameters and name not in modules
                and name not in self._buffers):
            object.__setattr__(self, name, value)   # a layer's saved arrays (every forward): nothing to register
            return
        if name in self._buffers:
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Module):
            self._check_not_in_tree(name, value)
        registered = name in parameters or name in modules
        if registered and value is not None and not isinstance(value, (Parameter, Module)):
            # PyTorch's rule: a registered name takes a Parameter, a Module or None
            if name in parameters:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} (cnn_gpu.nn.Parameter "
                                f"or None expected; to change its values, assign to its .data)")
            raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} (cnn_gpu.nn.Module "
                            f"or None expected)")
        if not name.startswith("_"):   # a setting, layer or parameter: what a recording's guard compares
            object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)
        # a name registered before keeps its place (the order of parameters() and state_dict()), as in PyTorch
        if isinstance(value, Parameter):
            modules.pop(name, None)
            parameters[name] = value
        elif isinstance(value, Module):
            parameters.pop(name, None)
            modules[name] = value
        elif registered:   # None: the name stays registered, its entry skipped
            (parameters if name in parameters else modules)[name] = None
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        """Deleting a parameter, buffer or child module unregisters it, as in PyTorch."""
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)
        object.__delattr__(self, name)

    def _is_uninitialized(self, key: str, kind: str) -> bool:
        """Whether parameter or buffer `key` is a lazy module's placeholder, its shape still open."""
        if kind == "parameter":
            return isinstance(self._parameters[key], UninitializedParameter)
        return key in self.__dict__.get("_uninitialized_buffers", ())

    def _initialized(self, key: str, kind: str, array) -> None:
        """Placeholder `key` takes `array` (its dtype and backend): a lazy module's first forward or a load."""
        if kind == "parameter":
            self._parameters[key].materialize_as(array)
        else:
            self._uninitialized_buffers.discard(key)
            setattr(self, key, array)

    def _check_not_in_tree(self, name: str, child: "Module") -> None:
        """ValueError when `child` (or a module inside it) is this module or already sits in its tree
        under another name: a module keeps only its latest forward's input for backward, so one
        used twice in a model would get wrong gradients."""
        tree = {id(self)}
        for other_name, other in self.named_children():
            if other_name != name:
                tree.update(id(module) for module in other.modules())
        reused = next((module for module in child.modules() if id(module) in tree), None)
        if reused is not None:
            raise ValueError(f"{type(reused).__name__} is already part of this {type(self).__name__}: {_ONE_PLACE}")

    # --- computation ----------------------------------------------------------------------------

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy, input_grad=True):
        """The gradient of the input, accumulating the parameters' gradients. input_grad=False: the
        input needs no gradient (the network's first layers; a container tells them), so none is
        computed and None is returned. A module of one's own may define backward(self, dy) alone:
        containers then always ask it for its input gradient."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args, **kwargs):
        """forward(...); in training, ValueError if this module already ran in the same outer call
        (a module added to a container after that container was nested escapes the check where the
        model is built): its backward would read the second use's input."""
        depth, keeps = getattr(_FORWARD, "depth", 0), is_grad_enabled()
        if depth == 0:
            _FORWARD.generation = getattr(_FORWARD, "generation", 0) + 1
        if depth == 0 and keeps:   # (after a forward under no_grad its backward refuses anyway)
            # forwards after a training forward since the last backward (None: no training forward)
            later = self.__dict__.get("_forwards_after_training")
            object.__setattr__(self, "_forwards_after_training", later + 1 if later is not None else
                               0 if self.training else None)
        if (self.training and self.__dict__.get("_forward_generation") == _FORWARD.generation
                and keeps):   # (under no_grad nothing is kept: a second use is harmless)
            raise ValueError(f"{type(self).__name__} ran twice in one forward pass: {_ONE_PLACE}")
        object.__setattr__(self, "_forward_generation", _FORWARD.generation)
        guarded = replay.first_time(self)
        _FORWARD.depth = depth + 1
        hooks = self.__dict__.get("_hooks")   # (hooks_of, inline: every call asks)
        try:
            output = self.forward(*args, **kwargs) if hooks is None else hooks.call_forward(self, args, kwargs)
        finally:
            _FORWARD.depth = depth
        if not keeps:   # its input and the rest go now, not at the next forward
            object.__setattr__(self, "_saved", _NOT_KEPT)
        if guarded:   # a replay runs the launches of these settings and arrays (as forward left them)
            replay.guard(functools.partial(self._changed_since, self.training, self.backend,
                                           self.__dict__.get("_version", 0), self._device_arrays(),
                                           self._gradients_required()))
        return output

    def _forward_parameters(self) -> list:
        """The parameters this module's forward reads: its own, and those of the ParameterLists and
        ParameterDicts it holds (which are never called themselves)."""
        held = [parameter for child in self.children() if child._holds_parameters_for_parent
                for parameter in child._forward_parameters()]
        return [p for p in self._parameters.values() if p is not None] + held

    def _device_arrays(self) -> list:
        """The arrays of this module's forward parameters and the buffers its launches take (not
        the host counters, which are new arrays every call)."""
        return ([p.data for p in self._forward_parameters()]
                + [b for name, b in self._buffers.items() if name not in self._host_buffers])

    def _gradients_required(self) -> tuple:
        """requires_grad of this module's forward parameters: which gradients its backward computes."""
        return tuple(p.requires_grad for p in self._forward_parameters())

    def _changed_since(self, training: bool, backend, version: int, arrays: list, required: tuple) -> str | None:
        """What a recording of this module's call no longer fits (cnn_gpu.replay), None if nothing."""
        if self.training != training:
            return f"{type(self).__name__} is in {'training' if self.training else 'eval'} mode now"
        if self.backend != backend:
            return f"{type(self).__name__} runs on {self.backend!r} now (Module.to)"
        if self.__dict__.get("_version", 0) != version:
            return f"{type(self).__name__} has had an attribute assigned (a setting, a layer, a parameter)"
        now = self._device_arrays()
        if len(now) != len(arrays) or any(a is not b for a, b in zip(now, arrays)):
            return (f"{type(self).__name__} has other parameter or buffer arrays now (load_state_dict, Module.to "
                    f"or an assignment replaces them)")
        if self._gradients_required() != required:
            return f"{type(self).__name__} has a parameter frozen or unfrozen since (requires_grad)"
        if has_hooks(self):
            return f"{type(self).__name__} has hooks now (Python that a replay would not run)"
        return None

    def _nothing_to_compute(self, input_grad) -> bool:
        """Whether this layer's backward has nothing to do: no input gradient wanted and no
        parameter to train (dy may then be None: nn.Sequential), after checking that forward ran."""
        self._saved_for_backward()
        return not input_grad and not trains(self)

    def _saved_for_backward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        if self._saved is _NOT_KEPT:
            raise RuntimeError(f"{type(self).__name__}.backward(): its latest forward ran under cnn_gpu.no_grad() "
                               f"(or inference_mode()) and kept nothing for a backward; run that forward with "
                               f"gradients enabled")
        if replay.is_recording() and replay.first_time(self):   # its forward was not recorded
            replay.refuse(f"{type(self).__name__}.backward() of a forward run outside the recording (a replay "
                          f"would read that forward's saved arrays; record forward and backward together)")
        return self._saved

    # --- hooks (cnn_gpu.nn.hooks) ----------------------------------------------------------------

    def _hook_registry(self) -> ModuleHooks:
        hooks = hooks_of(self)
        if hooks is None:
            hooks = ModuleHooks()
            object.__setattr__(self, "_hooks", hooks)
        return hooks

    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False) -> RemovableHandle:
        """hook(module, args) before every forward; a value returned replaces the input (a tuple
        of positional arguments, or a single one). with_kwargs: hook(module, args, kwargs),
        returning None or (args, kwargs). prepend: run before the hooks registered so far."""
        return self._hook_registry().add("forward_pre", hook, prepend=flag(prepend, "prepend"),
                                         with_kwargs=flag(with_kwargs, "with_kwargs"))

    def register_forward_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False,
                              always_call: bool = False) -> RemovableHandle:
        """hook(module, args, output) after every forward; a value returned replaces the output.
        with_kwargs: hook(module, args, kwargs, output). always_call: also when forward raises."""
        return self._hook_registry().add("forward", hook, prepend=flag(prepend, "prepend"),
                                         with_kwargs=flag(with_kwargs, "with_kwargs"),
                                         always_call=flag(always_call, "always_call"))

    def register_full_backward_pre_hook(self, hook, prepend: bool = False) -> RemovableHandle:
        """hook(module, grad_output) before every backward, grad_output = (dy,); a tuple returned
        replaces it."""
        return self._hook_registry().add("backward_pre", hook, prepend=flag(prepend, "prepend"))

    def register_full_backward_hook(self, hook, prepend: bool = False) -> RemovableHandle:
        """hook(module, grad_input, grad_output) after every backward, grad_input = (dx,) (dx None
        where no input gradient was computed); a tuple returned replaces grad_input."""
        return self._hook_registry().add("backward", hook, prepend=flag(prepend, "prepend"))

    # --- tree walking ---------------------------------------------------------------------------

    def children(self):
        return (child for child in self._modules.values() if child is not None)

    def named_children(self):
        return ((name, child) for name, child in self._modules.items() if child is not None)

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (module for _, module in self.named_modules())

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool):
        """(name, member) of the registry's members that are not None, module by module (only this
        one's where not `recurse`), each once where `remove_duplicate` (tied weights: the first name)."""
        seen = set()
        for module_name, module in self.named_modules(prefix) if recurse else ((prefix, self),):
            for name, member in getattr(module, registry).items():
                if member is None or remove_duplicate and (id(member) in seen or seen.add(id(member))):
                    continue
                yield (f"{module_name}.{name}" if module_name else name), member

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(name, Parameter) pairs: a module's own parameters first, then its children's; a
        Parameter tied to two places once, under its first name, unless not `remove_duplicate`
        (PyTorch's)."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def _register(self, name: str, member, kind: type, what: str) -> None:
        """setattr(self, name, member) for a `kind` or None under a name that need not be an
        identifier (add_module, register_parameter: PyTorch's)."""
        if not isinstance(name, str):   # TypeError, KeyError for a bad string: PyTorch's
            raise TypeError(f"a {what}'s name must be a str, got {type(name).__name__} {name!r}")
        if not name or "." in name:
            raise KeyError(f"a {what}'s name is a non-empty string without '.', got {name!r}")
        if member is not None and not isinstance(member, kind):
            raise TypeError(f"a {what} must be a {kind.__name__} or None, got {type(member).__name__}")
        setattr(self, name, member)

    def add_module(self, name: str, module) -> None:
        self._register(name, module, Module, "module")

    def register_parameter(self, name: str, parameter) -> None:
        self._register(name, parameter, Parameter, "parameter")

    def apply(self, fn):
        """fn(module) for every child module, depth first, then for this one (PyTorch's order, e.g.
        custom initialisation); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def parameters(self, recurse: bool = True):
        """An iterator over the Parameters, each once, in the order of named_parameters (PyTorch's)."""
        return (parameter for _, parameter in self.named_parameters(recurse=recurse))

    def register_buffer(self, name: str, array) -> None:
        """Register `array` (or None: absent) as the buffer `name`, saved in state_dict()."""
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(name, array) pairs of the buffers that are not None, in the order of named_parameters."""
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        return (array for _, array in self.named_buffers(recurse=recurse))

    def _named_state(self):
        """(name, module, key, kind, array) of every parameter and buffer that is not None: each module's
        parameters, then its buffers, module by module (PyTorch's state_dict order)."""
        for module_name, module in self.named_modules():
            for registry, kind in ((module._parameters, "parameter"), (module._buffers, "buffer")):
                for key, value in registry.items():
                    if value is not None:
                        array = value.data if kind == "parameter" else value
                        yield (f"{module_name}.{key}" if module_name else key), module, key, kind, array

    # --- state ----------------------------------------------------------------------------------

    def requires_grad_(self, requires_grad: bool = True):
        """Freezes (False) or unfreezes every parameter, as PyTorch's; returns self."""
        for parameter in self.parameters():
            parameter.requires_grad = requires_grad
        return self

    def get_submodule(self, target: str) -> "Module":
        """The module at dotted path `target` ("layer1.0.conv1"; "" is this one), as PyTorch's."""
        module = self
        for name in target.split(".") if target else ():
            child = module._modules.get(name)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no submodule {name!r} (in {target!r})")
            module = child
        return module

    def get_parameter(self, target: str) -> Parameter:
        """The Parameter at dotted path `target` ("fc.weight"), as PyTorch's."""
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        parameter = module._parameters.get(name)
        if parameter is None:
            raise AttributeError(f"{type(module).__name__} has no parameter {name!r} (in {target!r})")
        return parameter

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every parameter's .grad None (or zeroed in place: set_to_none=False), as PyTorch."""
        for parameter in self.parameters():
            parameter.clear_grad(set_to_none)

    def train(self, mode: bool = True):
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"training mode is expected to be a bool (as PyTorch), got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def to(self, backend=None, dtype=None):
        """Move the parameters to `backend` ("numpy", "emu": NumPy arrays; "cuda": CuPy arrays, all
        C-contiguous; "cpu" is "numpy", so PyTorch's `model.to("cuda" if ... else "cpu")` runs
        unchanged; "cuda:N" and a torch.device as backend_of_device takes them) and run every later
        forward/backward there, and/or convert the parameters, their gradients and the float buffers
        to `dtype` (float16, float32 or float64; integer buffers such as counts keep theirs), as
        PyTorch's to(dtype); `to(np.float16)` converts alone. Saved activations are dropped. An
        optimizer's state made before follows at its next step (moved, and converted to the
        parameter's state dtype; a float16 parameter's FP32 master weights are made anew from its
        values)."""
        # to(np.float16): a dtype, not a device (a torch.device has an index)
        if backend is not None and dtype is None and not isinstance(backend, str) and not hasattr(backend, "index"):
            backend, dtype = None, backend
        if backend is None and dtype is None:
            raise TypeError("to() takes a backend, a dtype or both")
        backend = None if backend is None else backend_of_device(backend)
        if dtype is not None:
            try:
                converted = np.dtype(dtype)
            except TypeError:
                converted = np.dtype(object)   # (not None: a dtype compares equal to None, float64's alias)
            if converted not in FLOAT_DTYPES:
                raise TypeError(f"to(dtype=...) takes float16, float32 or float64, got {dtype!r}")
            dtype = converted
        if backend is not None:
            if backend not in _backend.BACKENDS:
                raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(_backend.BACKENDS)}")
            reason = _backend.why_unavailable(backend)
            if reason:
                raise RuntimeError(f"backend {backend!r} is not available: {reason}")

        def moved(array):
            if dtype is not None and array.dtype != dtype and array.dtype.kind == "f":
                array = array.astype(dtype)
            return array if backend is None else to_backend_array(array, backend)

        for module in self.modules():
            if backend is not None:
                object.__setattr__(module, "backend", backend)
            object.__setattr__(module, "_saved", None)
        for parameter in self.parameters():
            parameter.data = moved(parameter.data)
            if parameter.grad is not None:
                parameter.grad = moved(parameter.grad)
            parameter.backend = backend or parameter.backend
        for module in self.modules():
            for name, array in module._buffers.items():
                if array is not None and name not in module._host_buffers:
                    setattr(module, name, moved(array))
        return self

    def cuda(self, device=None):
        """to("cuda"), as PyTorch's; `device` a GPU index, "cuda:N" or a torch.device, of CuPy's
        current GPU (backend_of_device)."""
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    def cpu(self):
        """to("numpy"), PyTorch's CPU."""
        return self.to("numpy")

    def half(self):
        """to(np.float16), as PyTorch's."""
        return self.to(dtype=np.float16)

    def float(self):
        """to(np.float32), as PyTorch's."""
        return self.to(dtype=np.float32)

    def double(self):
        """to(np.float64), as PyTorch's."""
        return self.to(dtype=np.float64)

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """Copies of the parameters and buffers as NumPy arrays, named like PyTorch's ("0.weight",
        "1.running_mean"), each name after `prefix`, in `destination` (a new OrderedDict where
        None), which is returned. keep_vars=True: the Parameters and buffer arrays themselves, not
        copies (PyTorch's keyword-only arguments)."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        keep_vars = flag(keep_vars, "keep_vars")
        state = OrderedDict() if destination is None else destination
        for name, module, key, kind, array in self._named_state():
            if keep_vars:
                state[prefix + name] = module._parameters[key] if kind == "parameter" else array
            else:
                state[prefix + name] = to_host(array)
        return state

    def load_state_dict(self, state: Mapping, strict: bool = True) -> IncompatibleKeys:
        """Copy `state` into the parameters and buffers as C-contiguous copies in their dtype,
        whatever the layout of the given arrays. strict: the same names (otherwise missing and
        unexpected names are skipped); shapes must match either way. Every entry is checked and
        converted before any parameter changes, so a failed load changes nothing. In a strict load,
        a buffer newer than the state dict (one of its module's `_defaults_for_missing_buffers`,
        such as Dropout's step) takes its default value; a load that is not strict leaves every
        missing entry as it is and lists it. Returns (missing_keys, unexpected_keys), as PyTorch."""
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict expects a mapping of names to arrays, got {type(state).__name__}")
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        own = OrderedDict((name, entry) for name, *entry in self._named_state())
        defaults = {}
        for name, (module, key, kind, current) in own.items():
            if strict and kind == "buffer" and key in module._defaults_for_missing_buffers and name not in state:
                default = module._defaults_for_missing_buffers[key]
                defaults[name] = to_host(current) if default is None else default
        state = {**state, **defaults}
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        problems = []
        if missing and strict:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected and strict:
            problems.append(f"unexpected keys: {', '.join(map(str, unexpected))}")
        converted = []
        for name, (module, key, kind, current) in own.items():
            if name not in state:
                continue
            value = state[name]
            value = value.data if isinstance(value, Parameter) else value   # state_dict(keep_vars=True)'s
            value = value.get() if _backend.is_cupy_array(value) else np.asarray(value)
            if value.shape != tuple(current.shape) and not module._is_uninitialized(key, kind):
                problems.append(f"{name}: shape {value.shape} in the state dict, {tuple(current.shape)} "
                                f"in the model")
            elif value.dtype.kind not in "fiu":
                problems.append(f"{name}: dtype {value.dtype} is not numeric")
            elif current.dtype.kind in "iu" and not _counts_fit(value, current.dtype):
                problems.append(f"{name}: a count ({current.dtype}), but the state dict holds values that are "
                                f"not whole numbers in [0, {np.iinfo(current.dtype).max}]")
            else:
                converted.append((module, key, kind, current, value))
        if problems:
            raise ValueError(f"cannot load state dict into {type(self).__name__}: " + "; ".join(problems))
        # Build every new array first (a device allocation may fail), then swap them all in.
        new_arrays = [array_like(np.array(value, dtype=current.dtype, order="C"), current)
                      for _, _, _, current, value in converted]
        for (module, key, kind, _, _), array in zip(converted, new_arrays):
            if module._is_uninitialized(key, kind):   # a lazy module's: it takes the state's shape (PyTorch's)
                module._initialized(key, kind, array)
            elif kind == "parameter":
                module._parameters[key].data = array
            else:
                setattr(module, key, array)
        return IncompatibleKeys(missing, unexpected)

    # --- printing -------------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
