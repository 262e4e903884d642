"""Launch code of kernels/optim.cu: fused in-place SGD and Adam updates of one parameter array
(same signatures as cnn_gpu.optim's NumPy updates). Scalars derived from the step count are
computed here on the host, so a step needs no device-to-host transfer.

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
    dtype = param.dtype
    if momentum:
        _check_state(param, grad, master, momentum_buf=momentum_buf)
        _launch(be, "sgd_momentum_step", param, master, (grad, momentum_buf),
                (*acc(dtype, lr, momentum, weight_decay), *i32(bool(nesterov), bool(first_step))))
    else:
        _check_state(param, grad, master)
        _launch(be, "sgd_step", param, master, (grad,), acc(dtype, lr, weight_decay))


def adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, *, master=None):
    """In place; PyTorch's Adam (L2 weight decay, bias correction), `step` counting from 1."""
    _check_state(param, grad, master, m=m, v=v)
    step_size = lr / (1 - beta1 ** step)
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    _launch(be, "adam_step", param, master, (grad, m, v),
            acc(param.dtype, step_size, bias2_sqrt, 1 - beta1, beta2, 1 - beta2, eps, weight_decay))
