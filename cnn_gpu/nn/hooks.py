"""Module hooks, PyTorch's: forward pre-hooks and hooks, backward pre-hooks and full backward hooks
(`Module.register_forward_pre_hook` and the like), each registration returning a RemovableHandle.

What they see here, where modules have an explicit backward instead of autograd:
- a forward pre-hook `hook(module, args)` and a forward hook `hook(module, args, output)` run around
  forward (with_kwargs=True: `hook(module, args, kwargs)`, `hook(module, args, kwargs, output)`); a
  value returned replaces the input (output), as in PyTorch. A module's backward differentiates its
  own forward only, never the hook's change, so the backward of a forward whose input or output a
  hook replaced refuses (RuntimeError): that gradient would be wrong. Hooks that read (feature
  extraction) are what this is for.
- a backward pre-hook `hook(module, grad_output)` and a full backward hook `hook(module, grad_input,
  grad_output)` run around the module's backward, grad_output = (dy,) and grad_input = (dx,) (dx None
  where no input gradient is computed, as PyTorch's None); a tuple returned replaces them (the dy
  the backward takes, the dx it hands on). They do not run where no gradient reaches the module
  (nn.Sequential's frozen start, which runs no backward), as PyTorch's do not fire there.
nn.Sequential runs a hooked layer and its neighbours unfused (a fused ReLU has no call of its own).
A replay (cnn_gpu.replay) runs launches, not Python: recording a hooked module's call is refused, and
a recording refuses to replay once a module it called has hooks.
"""
from __future__ import annotations

import itertools
import warnings
from collections import OrderedDict

from .. import replay

_NEXT_ID = itertools.count()


class RemovableHandle:
    """What a hook registration returns: `remove()` unregisters the hook (again: nothing happens);
    as a context manager, removes it on exit."""

    def __init__(self, hooks: "ModuleHooks"):
        self.id = next(_NEXT_ID)
        self._hooks = hooks

    def remove(self) -> None:
        self._hooks.remove(self.id)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def _replacement(result, count: int, what: str) -> tuple:
    """The gradients a backward hook returned, checked: a tuple (or list) of `count`."""
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"{what} must return None or a tuple of gradients, got {type(result).__name__}")
    if len(result) != count:
        raise RuntimeError(f"{what} returned an invalid number of gradients, got {len(result)}, but expected {count}")
    return tuple(result)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class ModuleHooks:
    """One module's hooks by handle id, in call order, and what its latest hooked forward did."""

    __slots__ = ("forward_pre", "forward", "backward_pre", "backward", "with_kwargs", "always_call",
                 "replaced", "in_backward")

    def __init__(self):
        self.forward_pre, self.forward = OrderedDict(), OrderedDict()
        self.backward_pre, self.backward = OrderedDict(), OrderedDict()
        self.with_kwargs, self.always_call = set(), set()
        self.replaced = None        # "input" or "output": a hook replaced it in the latest forward
        self.in_backward = False    # the module's backward is running (a subclass's calling its base's)

    def add(self, kind: str, hook, *, prepend: bool, with_kwargs: bool = False,
            always_call: bool = False) -> RemovableHandle:
        if not callable(hook):
            raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
        handle = RemovableHandle(self)
        registry = getattr(self, kind)
        registry[handle.id] = hook
        if prepend:
            registry.move_to_end(handle.id, last=False)
        if with_kwargs:
            self.with_kwargs.add(handle.id)
        if always_call:
            self.always_call.add(handle.id)
        return handle

    def remove(self, handle_id: int) -> None:
        for registry in (self.forward_pre, self.forward, self.backward_pre, self.backward):
            registry.pop(handle_id, None)
        self.with_kwargs.discard(handle_id)
        self.always_call.discard(handle_id)

    def any(self) -> bool:
        return bool(self.forward_pre or self.forward or self.backward_pre or self.backward)

    def call_forward(self, module, args: tuple, kwargs: dict):
        """module.forward(*args, **kwargs) between its forward pre-hooks and forward hooks."""
        if self.any():
            replay.refuse(f"a call of {type(module).__name__}, which has hooks (Python that a replay would not run)")
        self.replaced = None
        given = args, kwargs
        output, called = None, set()
        try:   # a pre-hook raising runs the always_call hooks too, as in PyTorch
            args, kwargs = self._pre_hooked(module, args, kwargs)
            if not (_same(args, given[0]) and kwargs is given[1]):
                self.replaced = "input"
            output = module.forward(*args, **kwargs)
            for hook_id, hook in self.forward.items():
                called.add(hook_id)
                result = (hook(module, args, kwargs, output) if hook_id in self.with_kwargs
                          else hook(module, args, output))
                if result is not None and result is not output:
                    output, self.replaced = result, "output"
        except Exception:
            self._always_called(module, args, kwargs, output, called)
            raise
        return output

    def _pre_hooked(self, module, args: tuple, kwargs: dict) -> tuple:
        """(args, kwargs) after the forward pre-hooks, each taking the previous one's."""
        for hook_id, hook in self.forward_pre.items():
            if hook_id in self.with_kwargs:
                result = hook(module, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"a forward pre-hook with kwargs must return None or a tuple of "
                                           f"(new_args, new_kwargs), got {result!r}")
                    args, kwargs = result
            else:
                result = hook(module, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        return args, kwargs

    def _always_called(self, module, args, kwargs, output, called: set) -> None:
        """The always_call forward hooks not yet run, after a pre-hook, forward or a hook raised; what
        they raise is reported as a warning and dropped for the first exception, as in PyTorch."""
        for hook_id, hook in self.forward.items():
            if hook_id in self.always_call and hook_id not in called:
                try:
                    result = (hook(module, args, kwargs, output) if hook_id in self.with_kwargs
                              else hook(module, args, output))
                    output = output if result is None else result
                except Exception as err:
                    warnings.warn(f"module forward hook with ``always_call=True`` raised an exception that was "
                                  f"silenced as another error was raised in forward: {err}", stacklevel=3)

    def call_backward(self, module, backward, args: tuple, kwargs: dict):
        """backward(module, *args, **kwargs) between the module's backward pre-hooks and full backward
        hooks. args[0] (or kwargs["dy"]) is dy."""
        if self.in_backward:   # a subclass's backward calling its base class's: hooks ran outside
            return backward(module, *args, **kwargs)
        if self.replaced is not None:
            raise RuntimeError(f"{type(module).__name__}.backward(): a forward hook replaced this module's "
                               f"{self.replaced} in the forward it would differentiate, and a module's backward "
                               f"differentiates its own forward only (there is no autograd to follow the hook); "
                               f"make the change in a module of your own with a backward")
        dy = args[0] if args else kwargs.get("dy")
        input_grad = args[1] if len(args) > 1 else kwargs.get("input_grad", True)
        hooked = self.backward_pre or self.backward
        if hooked and (dy is not None or input_grad):
            replay.refuse(f"the backward of {type(module).__name__}, which has backward hooks (Python that a "
                          f"replay would not run)")
        else:
            hooked = False
        grad_output = (dy,)
        if hooked:
            for hook in self.backward_pre.values():
                result = hook(module, grad_output)
                if result is not None:
                    grad_output = _replacement(result, 1, "a backward pre-hook")
            if grad_output[0] is not dy:   # dy given positionally or by name
                if args:
                    args = (grad_output[0], *args[1:])
                else:
                    kwargs = {**kwargs, "dy": grad_output[0]}
        self.in_backward = True
        try:
            dx = backward(module, *args, **kwargs)
        finally:
            self.in_backward = False
        if hooked:
            grad_input = (dx,)
            for hook in self.backward.values():
                result = hook(module, grad_input, grad_output)
                if result is not None:
                    grad_input = _replacement(result, 1, "a full backward hook")
            dx = grad_input[0]
        return dx


def hooks_of(module) -> ModuleHooks | None:
    """The module's hooks, None where none was ever registered."""
    return module.__dict__.get("_hooks")


def has_hooks(module) -> bool:
    """Whether the module has a hook registered now."""
    hooks = hooks_of(module)
    return hooks is not None and hooks.any()
