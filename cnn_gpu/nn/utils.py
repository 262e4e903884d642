"""PyTorch's gradient clipping (torch.nn.utils): clip_grad_norm_ and clip_grad_value_, in place on
the parameters' gradients, with NumPy or CuPy operations of the gradients' own arrays (no host
synchronisation on a GPU unless error_if_nonfinite asks to look at the norm)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend as _backend
from ..functional._checks import real_number, updatable
from .module import Parameter


def _gradients(parameters) -> list:
    """The gradients of `parameters` (a Parameter or an iterable of them) that exist, each once."""
    parameters = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters must be cnn_gpu.nn.Parameter objects (e.g. model.parameters()); item {i} is "
                            f"{type(p).__name__}")
    grads = list({id(p.grad): p.grad for p in parameters if p.grad is not None}.values())
    for g in grads:
        updatable(g, "a gradient clipped in place")
    return grads


def _norm(xp, g, norm_type: float):
    """The norm_type-norm of array g as a 0-d array, float16 in FP32 (its squares overflow at 256)."""
    flat = g.reshape(-1).astype(np.float32) if g.dtype == np.float16 else g.reshape(-1)
    if flat.size == 0:
        return xp.zeros((), flat.dtype)
    if norm_type == math.inf:
        return xp.abs(flat).max()
    if norm_type == 0:
        return (flat != 0).sum().astype(flat.dtype)
    if flat.size == 1:   # |x| exactly, as PyTorch's vector_norm (a square over- or underflows, or rounds)
        return xp.abs(flat).max()
    return xp.linalg.norm(flat, ord=norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """PyTorch's: the norm of all gradients together (the norm of their norms), returned as a 0-d
    array; each gradient multiplied in place by min(1, max_norm / (norm + 1e-6)). norm_type a
    number >= 0 or math.inf; error_if_nonfinite: RuntimeError, before any change, where the norm
    is NaN or infinite (that looks at it: a host synchronisation on a GPU). Gradients on one kind
    of device (NumPy or CuPy); float16 ones are measured in FP32."""
    grads = _gradients(parameters)
    max_norm = real_number(max_norm, "max_norm")
    norm_type = float(norm_type) if norm_type == math.inf else real_number(norm_type, "norm_type", minimum=0)
    if not grads:
        return np.zeros((), np.float32)
    kinds = {_backend.is_cupy_array(g) for g in grads}
    if len(kinds) > 1:
        raise ValueError("clip_grad_norm_ takes gradients all on the host or all on GPUs")
    xp = _backend.array_module("cuda" if kinds.pop() else "numpy")
    norms = [_norm(xp, g, norm_type) for g in grads]
    if len({n.dtype for n in norms}) > 1:   # mixed dtypes: the widest
        wide = np.result_type(*[n.dtype for n in norms])
        norms = [n.astype(wide) for n in norms]
    total = _norm(xp, xp.stack(norms), norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {float(total)}: clipping them "
                           f"would make them NaN (error_if_nonfinite=False clips anyway)")
    factor = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= factor.astype(g.dtype)
    return total


def clip_grad_value_(parameters, clip_value) -> None:
    """PyTorch's: each gradient clamped in place to [-clip_value, clip_value]."""
    clip_value = real_number(clip_value, "clip_value")
    for g in _gradients(parameters):
        g.clip(-clip_value, clip_value, out=g)
