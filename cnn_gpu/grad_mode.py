"""PyTorch's gradient mode: `no_grad()`, `enable_grad()`, `set_grad_enabled(mode)`, `inference_mode(mode=True)`
and `is_grad_enabled()`, per thread, as context managers and decorators.

There is no graph to skip here: what a layer keeps from its forward for its backward (its input,
pooling indices, batch-norm statistics) is what the mode drops. With gradients disabled a module
keeps nothing, so an evaluation pass frees each activation as soon as the next layer has read it
(otherwise every layer's input stays alive until the next forward: all of a network's activations
at once), and a backward of such a forward refuses (RuntimeError) instead of running on nothing.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "inference_mode", "is_grad_enabled"]


class _ThreadMode(threading.local):
    enabled = True   # a class default: a thread that never set it reads it without an AttributeError raised


_MODE = _ThreadMode()


def is_grad_enabled() -> bool:
    """Whether forwards on this thread keep what their backward needs (True unless inside no_grad())."""
    return _MODE.enabled


class _GradModeContext:
    """Sets the mode on entry and puts back the previous one on exit; used as a decorator, around
    every call of the function."""

    _enter_mode: bool

    def __enter__(self):
        self._previous = is_grad_enabled()
        _MODE.enabled = self._enter_mode
        return self

    def __exit__(self, *exc_info) -> None:
        _MODE.enabled = self._previous

    def __call__(self, function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            with self._fresh():
                return function(*args, **kwargs)
        return run

    def _fresh(self):
        """A context of the same mode (a decorated function may run again inside itself)."""
        return set_grad_enabled(self._enter_mode)


class no_grad(_GradModeContext):
    """Forwards inside keep nothing for a backward (PyTorch's torch.no_grad)."""
    _enter_mode = False


class enable_grad(_GradModeContext):
    """Forwards inside keep what their backward needs, inside a no_grad() too."""
    _enter_mode = True


class set_grad_enabled(_GradModeContext):
    """Sets the mode at once (as a function call) and, used as a context manager, puts the previous
    one back on exit."""

    def __init__(self, mode: bool):
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled takes True or False, got {mode!r}")
        self._previous = is_grad_enabled()
        self._enter_mode = mode
        _MODE.enabled = mode

    def __enter__(self):
        return self

    def __call__(self, function):
        """As a decorator the mode is set around each call only: the one set at construction goes back."""
        _MODE.enabled = self._previous
        return super().__call__(function)


class inference_mode(_GradModeContext):
    """PyTorch's torch.inference_mode: no_grad() here; inference_mode(False) enables gradients, as
    torch's does."""

    def __init__(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise TypeError(f"inference_mode takes True or False, got {mode!r}")
        self._enter_mode = not mode
