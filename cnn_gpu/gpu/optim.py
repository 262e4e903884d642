"""Launch code of kernels/optim.cu: fused in-place SGD and Adam updates of one parameter array
(same signatures as cnn_gpu.optim's NumPy updates), and SGD with momentum of up to MOMENTUM_SLOTS
parameters in one launch (sgd_momentum_steps, which cnn_gpu.optim.SGD uses). Scalars derived
from the step count are computed here on the host, so a step needs no device-to-host transfer.

State arrays (momentum buffer, moments) are in the kernels' compute type: FP32 for a float16
parameter, which passes its FP32 master copy as `master` (cnn_gpu.optim always does): the
*_master kernels update the master and store the parameter rounded to float16. Without one a
float16 parameter is updated in FP32 and rounded each step."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, acc, blocks_for, i32


def _check_state(param, grad, master, **state):
    """grad of the parameter's shape and dtype; the master and state arrays of its shape in the
    kernels' compute type."""
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(f"grad of shape {tuple(grad.shape)} ({grad.dtype}) does not match the parameter "
                         f"{tuple(param.shape)} ({param.dtype})")
    compute = backend.compute_dtype(param.dtype)
    if master is not None:
        state["master"] = master
    for name, a in state.items():
        if a.shape != param.shape or a.dtype != compute:
            raise ValueError(f"{name} of shape {tuple(a.shape)} ({a.dtype}) does not match the parameter "
                             f"{tuple(param.shape)} (state in {compute})")


def _launch(be, kernel, param, master, arrays, scalars):
    """The plain kernel on (param, *arrays), or its master variant on (param, master, *arrays)."""
    weights = (param,) if master is None else (param, master)
    backend.launch(be, "optim", param.dtype, kernel if master is None else f"{kernel}_master",
                   (blocks_for(param.size),), (THREADS,), (*weights, *arrays, np.int64(param.size), *scalars))


def sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step, *, master=None):
    """In place; PyTorch's SGD without dampening. momentum_buf is None when momentum == 0."""
    if momentum:
        sgd_momentum_steps(be, [(param, grad, momentum_buf, first_step, master)], lr, momentum, weight_decay, nesterov)
    else:
        _check_state(param, grad, master)
        _launch(be, "sgd_step", param, master, (grad,), acc(param.dtype, lr, weight_decay))


MOMENTUM_SLOTS = 8   # parameters a launch of kernels/optim.cu's sgd_momentum_step updates


def sgd_momentum_steps(be, updates, lr, momentum, weight_decay, nesterov):
    """In place: SGD with momentum (no dampening) of several parameters, MOMENTUM_SLOTS a launch.
    `updates` holds (param, grad, momentum_buf, first_step, master) per parameter, all of one dtype,
    master an FP32 copy for every one of them or None for every one."""
    for param, grad, buf, _, master in updates:
        _check_state(param, grad, master, momentum_buf=buf)
    if len({param.dtype for param, *_ in updates}) > 1 or len({master is None for *_, master in updates}) > 1:
        raise ValueError("one launch updates parameters of one dtype, with master copies for all or none")
    xp = backend.array_module(be)
    for first in range(0, len(updates), MOMENTUM_SLOTS):
        chunk = updates[first:first + MOMENTUM_SLOTS]
        param, _, buf, _, master = chunk[0]
        unused = MOMENTUM_SLOTS - len(chunk)   # arrays of no element (the checks take arrays), none shared
        slots = [a for p, g, b, first_step, _ in chunk for a in (p, g, b, np.int64(p.size), *i32(bool(first_step)))]
        slots += [a for _ in range(unused) for a in (xp.empty(0, param.dtype), xp.empty(0, param.dtype),
                                                     xp.empty(0, buf.dtype), np.int64(0), np.int32(0))]
        masters = () if master is None else (*(m for *_, m in chunk), *(xp.empty(0, buf.dtype) for _ in range(unused)))
        kernel = "sgd_momentum_step" if master is None else "sgd_momentum_step_master"
        backend.launch(be, "optim", param.dtype, kernel, (blocks_for(max(p.size for p, *_ in chunk)),), (THREADS,),
                       (*slots, *masters, *i32(len(chunk)), *acc(param.dtype, lr, momentum, weight_decay),
                        *i32(bool(nesterov))))


def adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, *, master=None):
    """In place; PyTorch's Adam (L2 weight decay, bias correction), `step` counting from 1."""
    _check_state(param, grad, master, m=m, v=v)
    step_size = lr / (1 - beta1 ** step)
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    _launch(be, "adam_step", param, master, (grad, m, v),
            acc(param.dtype, step_size, bias2_sqrt, 1 - beta1, beta2, 1 - beta2, eps, weight_decay))
