"""Optimizers with PyTorch's update rules: `SGD` (momentum without dampening, Nesterov, weight
decay) and `Adam` (bias-corrected, L2 weight decay added to the gradient).

Parameters on the NumPy backend are updated by the NumPy functions below; on "emu" and "cuda" by
the fused kernels of `cnn_gpu.gpu.optim`, which have the same signatures. The backend of a
parameter is the one `Module.to` gave it, or the optimizer's `backend` argument.
"""
from __future__ import annotations

import importlib
import math

import numpy as np

from . import backend as _backend
from .nn.module import Parameter, to_backend_array, to_host


# --- the NumPy updates (same signatures as cnn_gpu.gpu.optim.sgd_step / adam_step) --------------

def numpy_sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step):
    """In place. PyTorch's SGD with dampening 0: g = grad + wd*p; buf = g on the first step, else
    momentum*buf + g; the step is g + momentum*buf (Nesterov) or buf."""
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        if first_step:
            momentum_buf[...] = grad
        else:
            momentum_buf *= momentum
            momentum_buf += grad
        grad = grad + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * grad


def numpy_adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """In place. PyTorch's Adam (step counts from 1): m += (1-beta1)(g-m); v = beta2 v + (1-beta2) g^2;
    p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)."""
    if weight_decay:
        grad = grad + weight_decay * param
    m += (1 - beta1) * (grad - m)
    v *= beta2
    v += (1 - beta2) * grad * grad
    step_size = lr / (1 - beta1 ** step)
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** step)
    denom += eps
    param -= step_size * (m / denom)


def _kernel_steps():
    return importlib.import_module("cnn_gpu.gpu.optim")


# --- optimizers ---------------------------------------------------------------------------------

class Optimizer:
    """One parameter group, kept in `param_groups[0]` as in PyTorch (so `param_groups[0]["lr"]`
    can be changed between steps); per-parameter state in `state[i]`."""

    def __init__(self, params, defaults: dict, backend=None):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be cnn_gpu.nn.Parameter objects (e.g. model.parameters()); "
                                f"item {i} is {type(p).__name__}")
        if backend is not None and backend not in _backend.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(_backend.BACKENDS)}")
        self.backend = backend
        self.param_groups = [dict(defaults, params=params)]
        self.state = [dict() for _ in params]

    @property
    def params(self):
        return self.param_groups[0]["params"]

    def _backend_of(self, p) -> str:
        return _backend.resolve(self.backend or p.backend, p.data)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        group = self.param_groups[0]
        # no gradient reached a parameter without .grad: PyTorch leaves it alone too
        pending = [(p, state) for p, state in zip(self.params, self.state) if p.grad is not None]
        # every parameter is checked before any is updated, so a bad one leaves no half-done step
        backends = []
        for p, _ in pending:
            if p.grad.shape != p.data.shape:
                raise ValueError(f"gradient shape {tuple(p.grad.shape)} does not match parameter shape "
                                 f"{tuple(p.data.shape)}")
            if p.grad.dtype != p.data.dtype:
                raise TypeError(f"gradient dtype {p.grad.dtype} does not match parameter dtype {p.data.dtype}")
            backends.append(self._backend_of(p))
        for be, (p, state) in zip(backends, pending):
            self._update(be, p, state, group)

    def state_dict(self) -> dict:
        """Hyper-parameters and per-parameter state (NumPy arrays), for checkpoints."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        state = [{k: to_host(v) if hasattr(v, "shape") else v for k, v in s.items()} for s in self.state]
        return {"param_groups": [group], "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, states = state_dict["param_groups"], state_dict["state"]
        if len(groups) != 1 or len(states) != len(self.params):
            raise ValueError(f"optimizer state has {len(states)} parameter states in {len(groups)} groups; this "
                             f"optimizer has {len(self.params)} parameters in 1 group")
        own_keys = {k for k in self.param_groups[0] if k != "params"}
        if set(groups[0]) != own_keys:
            raise ValueError(f"optimizer state has hyper-parameters {sorted(groups[0])}; {type(self).__name__} has "
                             f"{sorted(own_keys)} (a state dict of another optimizer?)")
        restored = []
        for i, (p, saved) in enumerate(zip(self.params, states)):
            entry = {}
            for key, value in saved.items():
                if hasattr(value, "shape") and np.ndim(value):
                    if tuple(value.shape) != tuple(p.data.shape):
                        raise ValueError(f"optimizer state {i}.{key} has shape {tuple(value.shape)}, the parameter "
                                         f"{tuple(p.data.shape)}")
                    kind = "cuda" if _backend.is_cupy_array(p.data) else "numpy"
                    value = to_backend_array(np.array(value, dtype=p.data.dtype), kind)
                entry[key] = value
            restored.append(entry)
        self.param_groups[0].update(groups[0])
        self.state = restored


class SGD(Optimizer):
    def __init__(self, params, lr, momentum=0, weight_decay=0, nesterov=False, backend=None):
        if lr < 0:
            raise ValueError(f"invalid learning rate lr={lr}")
        if momentum < 0:
            raise ValueError(f"invalid momentum={momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay={weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                                      nesterov=bool(nesterov)), backend)

    def _update(self, be, p, state, group):
        first_step = "momentum_buffer" not in state
        if group["momentum"] and first_step:
            state["momentum_buffer"] = _backend.array_module(be).empty_like(p.data)
        step = numpy_sgd_step if be == "numpy" else _kernel_steps().sgd_step
        step(be, p.data, p.grad, state.get("momentum_buffer"), group["lr"], group["momentum"],
             group["weight_decay"], group["nesterov"], first_step)


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, backend=None):
        if lr < 0:
            raise ValueError(f"invalid learning rate lr={lr}")
        if eps < 0:
            raise ValueError(f"invalid eps={eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay={weight_decay}")
        super().__init__(params, dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                                      weight_decay=float(weight_decay)), backend)

    def _update(self, be, p, state, group):
        if not state:
            xp = _backend.array_module(be)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        step = numpy_adam_step if be == "numpy" else _kernel_steps().adam_step
        step(be, p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"], beta1, beta2,
             group["eps"], group["weight_decay"])
