"""Launch code of kernels/optim.cu: fused in-place SGD and Adam updates of one parameter array
(same signatures as cnn_gpu.optim's NumPy updates). Scalars derived from the step count are
computed here on the host, so a step needs no device-to-host transfer."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._grid import THREADS, blocks_for, i32, real


def _same_shape(param, **state):
    for name, a in state.items():
        if a.shape != param.shape or a.dtype != param.dtype:
            raise ValueError(f"{name} of shape {tuple(a.shape)} ({a.dtype}) does not match the parameter "
                             f"{tuple(param.shape)} ({param.dtype})")


def sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step):
    """In place; PyTorch's SGD without dampening. momentum_buf is None when momentum == 0."""
    n = np.int64(param.size)
    grid = (blocks_for(param.size),)
    if momentum:
        _same_shape(param, grad=grad, momentum_buf=momentum_buf)
        backend.launch(be, "optim", param.dtype, "sgd_momentum_step", grid, (THREADS,),
                       (param, grad, momentum_buf, n, *real(param.dtype, lr, momentum, weight_decay),
                        *i32(bool(nesterov), bool(first_step))))
    else:
        _same_shape(param, grad=grad)
        backend.launch(be, "optim", param.dtype, "sgd_step", grid, (THREADS,),
                       (param, grad, n, *real(param.dtype, lr, weight_decay)))


def adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """In place; PyTorch's Adam (L2 weight decay, bias correction), `step` counting from 1."""
    _same_shape(param, grad=grad, m=m, v=v)
    step_size = lr / (1 - beta1 ** step)
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    backend.launch(be, "optim", param.dtype, "adam_step", (blocks_for(param.size),), (THREADS,),
                   (param, grad, m, v, np.int64(param.size),
                    *real(param.dtype, step_size, bias2_sqrt, beta1, beta2, eps, weight_decay)))
