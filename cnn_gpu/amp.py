"""Dynamic loss scaling for float16 training: PyTorch's GradScaler for the explicit-backward API.

    scaler = GradScaler()
    model.backward(scaler.scale(loss_fn.backward()))   # the loss gradient, scaled
    distributed.allreduce_gradients(model)             # optional: on the scaled gradients
    scaler.unscale_(optimizer)                         # .grad /= scale in FP32, in place; notes inf/NaN
    scaler.step(optimizer)                             # skipped if any gradient was inf/NaN
    scaler.update()                                    # halve on inf/NaN, double after clean runs

Scaling the loss gradient by S keeps small float16 gradients out of the subnormal range during
backward; unscaling divides by S in FP32 and rounds each gradient to its parameter's dtype once
(the optimizer widens float16 gradients onto its FP32 master weights). With several ranks, the
inf/NaN finding is reduced over the world (any rank's overflow skips every rank's step), so the
replicas never diverge.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend as _backend
from . import replay
from .functional._checks import array, writeable
from .launch_checks import check_disjoint, check_on_current_device, current_device


def _positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"GradScaler: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"GradScaler: {name} must be finite and > 0, got {value!r}")
    return value


def _as_fp32_scale(value: float) -> float:
    """A scale as PyTorch holds it: a float32 value (each update computed in double, then rounded)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


class GradScaler:
    """Loss scale S (init_scale), halved by backoff_factor on a step whose gradients hold inf/NaN
    (that step is skipped) and multiplied by growth_factor after growth_interval clean steps in a
    row. enabled=False makes every method a pass-through (scale 1, steps never skipped)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        self._scale = _positive_finite("init_scale", init_scale)
        self._growth_factor = _positive_finite("growth_factor", growth_factor)
        if self._growth_factor <= 1:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor!r}")
        self._backoff_factor = _positive_finite("backoff_factor", backoff_factor)
        if self._backoff_factor >= 1:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, (int, np.integer)) \
                or growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be an integer >= 1, got {growth_interval!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"GradScaler: enabled must be True or False, got {enabled!r}")
        self._growth_interval = int(growth_interval)
        self._enabled = enabled
        self._scale = _as_fp32_scale(self._scale)
        if not math.isfinite(self._scale) or self._scale == 0:
            raise ValueError(f"GradScaler: init_scale must be a positive float32 (PyTorch keeps it there), got "
                             f"{init_scale!r}")
        self._growth_tracker = 0     # clean steps since the last change of scale
        # per optimizer of this step, by id() as PyTorch's: {"found_inf": bool, "stepped": bool},
        # an entry from its unscale_ on
        self._optimizers = {}

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def scale(self, dloss):
        """The loss gradient times the scale, computed in FP32 (2**16 itself overflows float16)
        and rounded to the gradient's dtype once."""
        if not self._enabled:
            return dloss
        if not hasattr(dloss, "shape"):   # a number's product is a constant a replay would keep
            replay.refuse("GradScaler.scale of a Python number (its product with this step's scale); scale an "
                          "array instead, such as np.asarray(1.0, np.float32) or the loss's gradient")
        if getattr(dloss, "dtype", None) != np.float16:
            scaled = lambda: dloss * self._scale   # noqa: E731
        else:
            scaled = lambda: (dloss.astype(np.float32) * np.float32(self._scale)).astype(np.float16)   # noqa: E731
        # an array's is a device call: a replay (cnn_gpu.replay) multiplies by the scale of its own step
        return _backend.device_call(scaled) if hasattr(dloss, "shape") else scaled()

    def unscale_(self, optimizer) -> None:
        """Divide every parameter's .grad by the scale in FP32 (rounded back to the gradient's
        dtype), in place as PyTorch's (a read-only gradient, or one the kernels cannot write as it
        is, not C-contiguous, is unscaled into a new array bound to .grad), and note whether any is
        inf/NaN, agreed over all ranks: before unscaling, as PyTorch, and after it where a scale
        below 1 could overflow them (PyTorch would step on those). Once per optimizer and step,
        before its step(); a parameter listed twice, or a gradient array two parameters share, is
        unscaled once. Every gradient is checked before any changes (dtype, device, and no memory
        shared with another gradient or a parameter: the optimizer would refuse it after the
        unscaling had written it); where the agreement over the ranks fails, the gradients stay
        unscaled and the step is refused."""
        if not self._enabled:
            return
        replay.refuse("GradScaler.unscale_ (a replay runs step() as Python again, which unscales; code between "
                      "the two would not be replayed)")
        state = self._optimizers.get(id(optimizer))
        if state is not None:
            raise RuntimeError("GradScaler.unscale_ was already called on this optimizer since the last update()"
                               if not state["stepped"] else "GradScaler.unscale_ is being called after step()")
        with np.errstate(over="ignore", divide="ignore"):   # a scale backed off to 0 unscales to inf: skipped
            inverse = float(np.float32(1.0) / np.float32(self._scale))   # PyTorch's FP32 reciprocal
        params = list({id(p): p for p in optimizer.params if p.grad is not None}.values())   # each once
        # every parameter's backend (the optimizer's choice) and gradient checked, and the host's
        # gradients unscaled into new arrays, before any gradient changes: a refusal leaves them all
        # as they were
        chosen = [(p, optimizer.backend_of(p)) for p in params]
        grads = {id(p.grad): (p.grad, be) for p, be in chosen}   # each array once
        on_kernels = {}   # (backend, dtype): the gradient arrays the kernels unscale in place
        copies = {}       # id of a gradient the kernels cannot write as it is: its C-ordered copy
        current = None    # the current GPU, asked once for all the gradients on cuda
        for key, (grad, be) in grads.items():
            if be != "numpy":
                if be == "cuda" and current is None:
                    current = current_device()
                unscaled = _kernel_gradient(be, grad, current)
                if unscaled is not grad:
                    copies[key] = unscaled
                on_kernels.setdefault((be, grad.dtype), []).append(unscaled)
        on_host = {key: _unscaled_on_host(grad, inverse) for key, (grad, be) in grads.items() if be == "numpy"}
        copies.update((key, unscaled) for key, (unscaled, _) in on_host.items() if not writeable(grads[key][0]))
        written = [grad for grad, _ in grads.values() if id(grad) not in copies]
        check_disjoint([(f"a gradient ({i})", grad, True) for i, grad in enumerate(written)]
                       + [(f"parameter {i}", p.data, False) for i, p in enumerate(optimizer.params)],
                       "GradScaler.unscale_: ")
        for be, dtype in on_kernels:   # built (compiled) before any gradient changes
            _backend.kernel_function(be, "optim", dtype, "unscale_grads")
        found = _unscaled_on_kernels(on_kernels, inverse) if on_kernels else False
        for key, (unscaled, _) in on_host.items():
            if key not in copies:
                np.copyto(grads[key][0], unscaled)
        for p in params:   # the copies bound to every parameter of their gradient
            p.grad = copies.get(id(p.grad), p.grad)
        # unscaled from here: a failed agreement leaves the step refused (found_inf unknown)
        state = self._optimizers[id(optimizer)] = {"found_inf": None, "stepped": False, "checked": bool(params)}
        state["found_inf"] = _any_rank(found or any(host_found for _, host_found in on_host.values()))

    def step(self, optimizer) -> bool:
        """optimizer.step() unless its gradients held inf/NaN this step (unscales them first if
        unscale_ was not called). Once per optimizer between updates; with several optimizers each
        is checked (and skipped) on its own gradients, and update() backs off if any held inf/NaN.
        True when the step was taken. RuntimeError, as PyTorch's, where no parameter of the
        optimizer has a gradient: nothing was checked for inf/NaN (backward not run?)."""
        if not self._enabled:
            optimizer.step()
            return True
        # live in a recording: each replay unscales, checks and steps (or skips) its own gradients
        return replay.live(lambda: self._step(optimizer))

    def _step(self, optimizer) -> bool:
        state = self._optimizers.get(id(optimizer))
        if state is not None and state["stepped"]:
            raise RuntimeError("GradScaler.step was already called on this optimizer since the last update()")
        if state is None:
            self.unscale_(optimizer)
            state = self._optimizers[id(optimizer)]
        if not state["checked"]:   # forgotten, so that a step after the backward is taken
            del self._optimizers[id(optimizer)]
            raise RuntimeError("GradScaler.step: no parameter of this optimizer has a gradient, so none was checked "
                               "for inf/NaN (run backward first)")
        if state["found_inf"] is None:
            raise RuntimeError("GradScaler.step: the ranks did not agree on the inf/NaN check of this step's unscale_ "
                               "(it failed); call update() to skip the step")
        if state["found_inf"]:
            state["stepped"] = True
            return False
        optimizer.step()   # a step it refuses (or a failed launch) leaves this one to be retried, as PyTorch's
        state["stepped"] = True
        return True

    def update(self) -> None:
        """Adjust the scale after a step: backoff if any optimizer's gradients held inf/NaN, growth
        after growth_interval clean steps. The scale is kept in FP32 as PyTorch's (a growth that
        would overflow it is not taken). RuntimeError, as PyTorch's, where no optimizer with gradients
        was unscaled or stepped since the last update: there is nothing to update from."""
        replay.live(self._update)

    def _update(self) -> None:
        optimizers = [state for state in self._optimizers.values() if state["checked"]]
        self._optimizers = {}
        if not self._enabled:
            return
        if not optimizers:
            raise RuntimeError("GradScaler.update: no optimizer with gradients was unscaled or stepped since the last "
                               "update(), so no inf/NaN check was recorded")
        if any(state["found_inf"] is None or state["found_inf"] for state in optimizers):   # None: unknown
            self._scale = _as_fp32_scale(self._scale * self._backoff_factor)
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self._growth_interval:
                grown = _as_fp32_scale(self._scale * self._growth_factor)
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0

    def state_dict(self) -> dict:
        """Plain numbers (JSON-friendly), as PyTorch's: scale, factors, interval, tracker."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict()'s values, each checked as the constructor checks it (nothing
        changes on an error), but a scale that backoffs took down to 0, which a state may hold. As
        PyTorch's: a disabled scaler ignores the call (a run resumed without loss scaling), and
        an empty state (a disabled scaler's) is a RuntimeError."""
        if not self._enabled:
            return
        if not isinstance(state, dict):
            raise TypeError(f"GradScaler.load_state_dict expects a dict, got {type(state).__name__}")
        if not state:
            raise RuntimeError("GradScaler.load_state_dict: the state is empty, as a disabled scaler's is")
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"GradScaler.load_state_dict: keys {sorted(state)}, expected {sorted(expected)}")
        tracker, scale = state["_growth_tracker"], state["scale"]
        if isinstance(tracker, bool) or not isinstance(tracker, (int, np.integer)) or tracker < 0:
            raise ValueError(f"GradScaler.load_state_dict: _growth_tracker must be an integer >= 0, got {tracker!r}")
        underflowed = not isinstance(scale, bool) and isinstance(scale, (int, float, np.number)) and scale == 0
        checked = GradScaler(1.0 if underflowed else scale, state["growth_factor"], state["backoff_factor"],
                             state["growth_interval"])
        if tracker >= checked._growth_interval:
            raise ValueError(f"GradScaler.load_state_dict: _growth_tracker {tracker} must be below growth_interval "
                             f"{checked._growth_interval}")
        checked._growth_tracker = int(tracker)
        if underflowed:
            checked._scale = 0.0
        self.__dict__.update(checked.__dict__)


def _unscaled_on_host(grad, inverse: float) -> tuple:
    """(grad unscaled with NumPy as GradScaler.unscale_ states, whether it held inf/NaN: before, or
    with a scale below 1 after, where PyTorch would step on values that overflowed)."""
    wide = array(grad, "GradScaler.unscale_: a gradient")
    wide = wide.astype(np.float32 if grad.dtype == np.float16 else grad.dtype)
    found = not bool(np.isfinite(wide).all())
    with np.errstate(over="ignore", invalid="ignore"):
        unscaled = np.asarray((wide * inverse).astype(grad.dtype))   # a 0-d one stays an array
    return unscaled, found or (inverse > 1 and not bool(np.isfinite(unscaled).all()))


def _kernel_gradient(be: str, grad, current):
    """The array the kernels unscale for gradient `grad` on backend `be`: itself where they can write
    it as it is (C-contiguous, writeable), else a C-ordered copy; refused (before any gradient
    changes) where a launch would refuse it."""
    array(grad, "GradScaler.unscale_: a gradient")
    if be == "cuda":
        check_on_current_device(grad, "GradScaler.unscale_: a gradient", current)
    if not grad.flags.c_contiguous or not writeable(grad):
        grad = _backend.array_module(be).array(grad, order="C")
    return grad


def _unscaled_on_kernels(groups: dict, inverse: float) -> bool:
    """Unscale in place the gradient arrays of `groups` ({(backend, dtype): arrays}) with
    kernels/optim.cu's unscale_grads, 8 a launch, the same values as _unscaled_on_host; whether any
    held inf/NaN, noted in one flag per backend: one read back a step (on a GPU a wait for it)
    instead of one per parameter."""
    from .gpu import optim as gpu_optim
    flags = {}
    for (be, _), grads in groups.items():
        if be not in flags:
            flags[be] = _backend.array_module(be).zeros(1, np.int32)
        gpu_optim.unscale_grads(be, grads, inverse, flags[be])
    return any(int(flag[0]) for flag in flags.values())


def _any_rank(found: bool) -> bool:
    """True on every rank when any rank found inf/NaN (one all-gather under several ranks)."""
    from . import distributed
    if distributed.world_size() > 1:
        return any(distributed.world().allgather_object(bool(found), "the GradScaler inf/NaN check"))
    return found
