"""Linear layer on the kernel backends: the dense GEMMs by xp.matmul (cuBLAS through cupy.matmul on
"cuda", NumPy's matmul on "emu"; device calls, which a recording keeps: cnn_gpu.replay), bias
addition by kernels/elementwise.cu and the bias gradient by the deterministic reduce.channel_sum."""
from __future__ import annotations

from .. import backend
from . import elementwise, reduce


def forward(be, x, w, bias):
    y = backend.device_call(backend.array_module(be).matmul, x, w.T, takes_out=True)
    if bias is not None:
        elementwise.bias_add(be, y, bias)
    return y


def backward(be, dy, x, w, bias, input_grad=True, weight_grad=True):
    xp = backend.array_module(be)
    dx = backend.device_call(xp.matmul, dy, w, takes_out=True) if input_grad else None
    dw = backend.device_call(xp.matmul, dy.T, x, takes_out=True) if weight_grad else None
    db = None
    if bias:   # an empty batch contributes nothing (channel_sum takes no empty arrays)
        db = reduce.channel_sum(be, dy, dy.shape[0], dy.shape[1], 1) if dy.size else xp.zeros(dy.shape[1], dy.dtype)
    return dx, dw, db
