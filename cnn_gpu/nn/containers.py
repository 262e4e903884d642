"""Containers: `Sequential` (a chain), `Residual` (a skip connection), ModuleList and ModuleDict, and
ParameterList and ParameterDict."""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping

from .. import functional as F
import numpy as np

from ..backend import device_call, is_cupy_array, module_of
from .hooks import has_hooks
from .layers import BatchNorm1d, BatchNorm2d, Hardswish, ReLU, ReLU6, SiLU
from .layers_3d import BatchNorm3d
from .module import Module, Parameter, trains


def takes_input_grad(module) -> bool:
    """Whether module.backward takes input_grad (every built-in module; maybe not a user's)."""
    return "input_grad" in inspect.signature(module.backward).parameters


def needs_dy(module) -> bool:
    """Whether module.backward needs the real gradient of its output even where its input's is not
    wanted: it has parameters to train (not frozen), or holds a module whose backward does not take
    input_grad (a user's: always asked for its input gradient). nn.Sequential hands the others dy
    None there, so a frozen start of a network runs no backward at all, as in PyTorch."""
    return trains(module) or not all(map(takes_input_grad, module.modules()))


# The activation layers a batch norm applies in its own kernels (F.batch_norm's activation=...)
_BATCH_NORM_ACTIVATIONS = {ReLU: "relu", ReLU6: "relu6", Hardswish: "hardswish", SiLU: "silu"}


def fused_activation(layer, following) -> str | None:
    """The activation (F.batch_norm's name) nn.Sequential runs inside `layer` instead of running
    `following`, or None: a ReLU, ReLU6, Hardswish or SiLU right after a batch norm is applied by its
    kernels (MobileNet's and EfficientNet's blocks too), a ReLU right after a residual connection with
    its addition (F.add_relu), saving the activation's pass over the activations and its launch
    forward, and on the batch norm its backward's too. Their own classes, not subclasses, whose
    forward may differ (a ReLU6 only with its bounds 0 and 6). Not where either has hooks: they would
    see the pair as one call."""
    if type(layer) is Residual:
        activation = "relu" if type(following) is ReLU else None
    elif type(layer) in (BatchNorm1d, BatchNorm2d, BatchNorm3d):
        activation = _BATCH_NORM_ACTIVATIONS.get(type(following))
        if type(following) is ReLU6 and (following.min_val, following.max_val) != (0.0, 6.0):
            activation = None
    else:
        return None   # (most pairs: told by type before any hooks are asked for)
    return None if activation is None or has_hooks(layer) or has_hooks(following) else activation


def fused_activation_positions(layers) -> frozenset:
    """The positions in `layers` (a Sequential's) of the activation layers nn.Sequential runs inside
    the layer before them (fused_activation)."""
    return frozenset(i for i in range(1, len(layers)) if fused_activation(layers[i - 1], layers[i]))


def hands_on_gradient_sum(layers, fused, i: int) -> bool:
    """Whether nn.Sequential's backward has layers[i] hand its input gradient on as two summands
    (through its block and its shortcut) instead of adding them, where that gradient is wanted at
    all (its input_grad): a Residual right after a Residual that runs the ReLU following it
    (`fused`: fused_activation_positions). That Residual adds the two in its ReLU's backward pass
    (F.relu_backward_of_sum), saving the addition's pass over the activations and its launch
    (their own classes, not subclasses, whose backward may differ; not where layers[i] has hooks,
    which take one gradient)."""
    return (i >= 2 and type(layers[i]) is Residual and i - 1 in fused and type(layers[i - 2]) is Residual
            and not has_hooks(layers[i]))


def _backward(module, dy, input_grad: bool):
    """module.backward(dy), saying input_grad=False where its backward takes it."""
    return module.backward(dy) if input_grad or not takes_input_grad(module) else module.backward(dy, input_grad=False)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse. Indexable like a list; the
    children are named "0", "1", ... as in PyTorch. A ReLU, ReLU6, Hardswish or SiLU right after a
    BatchNorm1d, 2d or 3d, and a ReLU right after a Residual, runs inside it (fused_activation),
    and a Residual's input gradient reaches the residual ReLU before it unsummed
    (hands_on_gradient_sum): the same values, fewer passes."""

    def __init__(self, *layers):
        """Sequential(layer, ...), or Sequential(OrderedDict of names to layers), as PyTorch's."""
        super().__init__()
        object.__setattr__(self, "_fused", frozenset())   # positions of the activations the last forward fused
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(name, layer)
            return
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        """Adds `layer` under the next number after the last (len(self) where numbered from 0)."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential takes Modules, got {type(layer).__name__}")
        numbers = [int(name) for name in self._modules if name.isdigit()]
        setattr(self, str(max(numbers, default=-1) + 1), layer)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        """The layer at `index`, or for a slice a Sequential of those layers under their names here
        ("2", "3"...), as PyTorch's: its state_dict's names are this one's."""
        if isinstance(index, slice):
            part = Sequential()
            for name, layer in list(self._modules.items())[index]:
                setattr(part, name, layer)
            return part
        return list(self._modules.values())[index]

    def forward(self, x):
        layers = list(self._modules.values())
        fused = fused_activation_positions(layers)
        object.__setattr__(self, "_fused", fused)
        for i, layer in enumerate(layers):
            if i not in fused:
                x = layer(x, activation=fused_activation(layer, layers[i + 1])) if i + 1 in fused else layer(x)
        return x

    def backward(self, dy, input_grad=True):
        """With input_grad=False the layers up to the first one with parameters (or of a user's
        module, whose needs are unknown) compute no input gradient: for the first convolution of
        a network that is its whole dgrad pass."""
        layers = list(self._modules.values())
        if not layers:
            return dy if input_grad else None
        if any(has_hooks(layers[i - 1]) or has_hooks(layers[i]) for i in self._fused):
            raise RuntimeError("Sequential.backward(): a hook was registered on a layer that the forward ran "
                               "fused with the activation after it (its hooks would not run); register hooks "
                               "before the forward")
        wanted = [input_grad] * len(layers)
        for i in range(1, len(layers)):
            before = layers[i - 1]
            wanted[i] = wanted[i - 1] or needs_dy(before)
        addend = None   # the second summand of dy a Residual handed on (hands_on_gradient_sum)
        for i in reversed(range(len(layers))):
            if i in self._fused:   # a fused activation's gradient is the layer's before it
                continue
            hands_on = wanted[i] and hands_on_gradient_sum(layers, self._fused, i)
            if addend is None and not hands_on:
                dy = _backward(layers[i], dy, wanted[i])
                continue
            result = layers[i].backward(dy, wanted[i], dy_addend=addend, unsummed=hands_on)
            dy, addend = result if hands_on else (result, None)
        return dy if input_grad else None   # a user's first module computes its dx regardless


class Residual(Module):
    """y = block(x) + shortcut(x), the shortcut the identity when None (ResNet's skip connection).
    The gradient of x is the sum of the gradients through both paths."""

    def __init__(self, block, shortcut=None):
        super().__init__()
        for name, module in (("block", block), ("shortcut", shortcut)):
            if module is not None and not isinstance(module, Module):
                raise TypeError(f"Residual {name} must be a Module, got {type(module).__name__}")
        self.block = block
        self.shortcut = shortcut

    def forward(self, x, *, activation=None):
        """activation="relu": the ReLU that follows, applied with the addition in one pass
        (F.add_relu; its gradient in backward's); nn.Sequential asks for it where a ReLU follows."""
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        y = self.block(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if y.shape != skip.shape:
            raise ValueError(f"Residual: block output {tuple(y.shape)} and shortcut output {tuple(skip.shape)} "
                             f"differ; give a shortcut (e.g. a 1x1 Conv2d) that matches the block")
        if y.dtype != skip.dtype:   # an addition would promote one of them: ops never change dtype silently
            raise TypeError(f"Residual: block output ({y.dtype}) and shortcut output ({skip.dtype}) differ in dtype")
        out = _sum(y, skip) if activation is None else F.add_relu(y, skip, backend=self.backend)
        self._saved = (out if activation else None,)   # the ReLU's output: > 0 where its input is
        return out

    def backward(self, dy, input_grad=True, *, dy_addend=None, unsummed=False):
        """dx, the sum of the gradients through the block and the shortcut. For nn.Sequential
        (hands_on_gradient_sum): `dy_addend`, a second summand of dy, added in the ReLU's backward
        pass where the ReLU is fused; `unsummed`, return the two gradients of x as a pair."""
        if not input_grad and not needs_dy(self) and self._nothing_to_compute(input_grad):
            return None   # nothing to compute (dy may be None: nn.Sequential)
        (relu_output,) = self._saved_for_backward()
        if dy_addend is not None and (relu_output is None or not (dy.flags.c_contiguous and
                                                                   dy_addend.flags.c_contiguous)):
            dy, dy_addend = _sum(dy, dy_addend), None   # added apart (a user's module's layout), as unfused
        if relu_output is not None:
            dy = (F.relu_backward(dy, relu_output, backend=self.backend) if dy_addend is None else
                  F.relu_backward_of_sum(dy, dy_addend, relu_output, backend=self.backend))
        dx = _backward(self.block, dy, input_grad)
        skip = dy if self.shortcut is None else _backward(self.shortcut, dy, input_grad)
        if not input_grad:
            return None
        return (dx, skip) if unsummed else _sum(dx, skip)


def _sum(a, b):
    """a + b on their device (a device call: cnn_gpu.replay adds again into the same array)."""
    return device_call(module_of(a).add, a, b, takes_out=True)


class ModuleList(Module):
    """Modules held in a list, named "0", "1", ... (renumbered when one is inserted or deleted), as
    PyTorch's: a module of one's own keeps its layers here and runs them in its forward, and its
    backward runs them in reverse. It has no forward or backward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _renumber(self, modules: list) -> None:
        for name in list(self._modules):
            delattr(self, name)
        for i, module in enumerate(modules):
            self._register(str(i), module, Module, "module")

    def _index(self, index: int) -> int:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"ModuleList indices are integers or slices, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a ModuleList of {len(self)}")
        return index % len(self)

    def append(self, module):
        self._register(str(len(self)), module, Module, "module")
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"a module must be a Module, got {type(module).__name__}")
        self._check_not_in_tree(None, module)   # before any renaming: a refusal changes nothing
        modules = list(self)
        modules.insert(index, module)
        self._renumber(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(list(self)[index])
        return self._modules[str(self._index(index))]

    def __setitem__(self, index: int, module) -> None:
        self._register(str(self._index(index)), module, Module, "module")

    def __delitem__(self, index) -> None:
        modules = list(self)
        del modules[index if isinstance(index, slice) else self._index(index)]
        self._renumber(modules)


class _NamedEntries:
    """dict's reading and deleting methods over the registry (`_registry`: "_modules" or
    "_parameters") where ModuleDict and ParameterDict keep their entries by name."""

    _registry: str

    @property
    def _entries(self):
        return self.__dict__[self._registry]

    def __getitem__(self, key: str):
        return self._entries[key]

    def __delitem__(self, key: str) -> None:
        if key not in self._entries:
            raise KeyError(key)
        delattr(self, key)

    def __len__(self):
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def keys(self):
        return self._entries.keys()

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def pop(self, key: str):
        entry = self[key]
        del self[key]
        return entry

    def clear(self) -> None:
        for key in list(self._entries):
            del self[key]


class ModuleDict(_NamedEntries, Module):
    """Modules held by name in insertion order, as PyTorch's ModuleDict (no forward or backward of
    its own)."""

    _registry = "_modules"

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __setitem__(self, key: str, module) -> None:
        self.add_module(key, module)

    def update(self, modules) -> None:
        """Adds (or replaces) modules from a mapping or from (name, module) pairs."""
        for key, module in modules.items() if isinstance(modules, Mapping) else modules:
            self[key] = module


def _as_parameter(value):
    """A Parameter as PyTorch's parameter containers take one: a NumPy or CuPy array becomes a new
    Parameter (requires_grad True), as a tensor does there."""
    return value if isinstance(value, Parameter) else Parameter(value)


def _parameter_line(name, parameter) -> str:
    """PyTorch's repr line of a container's parameter: "(0): Parameter containing: [float32 of size 3x4]"."""
    size = "x".join(map(str, parameter.shape))
    return f"({name}): Parameter containing: [{parameter.dtype} of size {size}]"


class _ParameterContainer(Module):
    """What ParameterList and ParameterDict share: they hold parameters for the module that has
    them (it reads them in its own forward), so that module's replay guard covers their arrays
    (Module._device_arrays), and PyTorch's repr, one line a parameter."""

    _holds_parameters_for_parent = True

    def __len__(self):
        return len(self._parameters)

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} has no forward: the module that holds it reads its parameters")

    def __repr__(self):
        if not self._parameters:
            return f"{type(self).__name__}()"
        lines = [f"    {_parameter_line(name, parameter)}" for name, parameter in self._parameters.items()]
        return "\n".join([f"{type(self).__name__}(", *lines, ")"])


class ParameterList(_ParameterContainer):
    """Parameters held in a list, named "0", "1", ... (state_dict keys "<name>.0", ...), as PyTorch's:
    a module of one's own keeps a variable number of weights here. Arrays given are made
    Parameters. Indexing (a slice: a new ParameterList of the same Parameters), assignment to an
    index, append, extend and +=."""

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def _index(self, index) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"ParameterList indices are integers or slices, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range")
        return int(index) % len(self)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ParameterList(list(self)[index])
        return self._parameters[str(self._index(index))]

    def __setitem__(self, index, value) -> None:
        self.register_parameter(str(self._index(index)), _as_parameter(value))

    def __iter__(self):
        return iter(self._parameters.values())

    def __iadd__(self, values):
        return self.extend(values)

    def append(self, value):
        self.register_parameter(str(len(self)), _as_parameter(value))
        return self

    def extend(self, values):
        if not hasattr(values, "__iter__") or isinstance(values, (str, np.ndarray)) or is_cupy_array(values):
            raise TypeError(f"ParameterList.extend should be called with an iterable of parameters, got "
                            f"{type(values).__name__}")
        for value in values:
            self.append(value)
        return self


class ParameterDict(_NamedEntries, _ParameterContainer):
    """Parameters held by name (state_dict keys "<name>.<key>"), as PyTorch's ParameterDict: a
    plain dict given to the constructor or update() is taken in sorted key order, an OrderedDict,
    a ParameterDict or (key, value) pairs in theirs; arrays are made Parameters. dict's methods
    (keys, items, values, get, pop, popitem, setdefault, update, clear, copy, fromkeys)."""

    _registry = "_parameters"

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __setitem__(self, key: str, value) -> None:
        self.register_parameter(key, _as_parameter(value))

    def __reversed__(self):
        return reversed(list(self._parameters))

    def get(self, key: str, default=None):
        return self._parameters.get(key, default)

    def popitem(self):
        """The last (key, Parameter) inserted, removed."""
        if not self._parameters:
            raise KeyError("popitem(): ParameterDict is empty")
        key = next(reversed(self._parameters))
        return key, self.pop(key)

    def setdefault(self, key: str, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, parameters) -> None:
        if isinstance(parameters, (OrderedDict, ParameterDict)):
            pairs = parameters.items()
        elif isinstance(parameters, Mapping):
            pairs = sorted(parameters.items())
        else:
            pairs = parameters
        for key, value in pairs:
            self[key] = value

    def copy(self) -> "ParameterDict":
        """A new ParameterDict of the same Parameters (not copies), as PyTorch's."""
        return ParameterDict(OrderedDict(self.items()))

    def fromkeys(self, keys, default=None) -> "ParameterDict":
        """A new ParameterDict with `keys`, each holding `default` (one Parameter for all)."""
        return ParameterDict(OrderedDict((key, default) for key in keys))
