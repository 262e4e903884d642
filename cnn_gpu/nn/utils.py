"""PyTorch's torch.nn.utils: gradient clipping (clip_grad_norm_, which is get_total_norm then
clip_grads_with_norm_, and clip_grad_value_), in place on the parameters' gradients with NumPy or
CuPy operations of the gradients' own arrays (no host synchronisation on a GPU unless
error_if_nonfinite asks to look at the norm); parameters_to_vector and vector_to_parameters; and
the folding of an eval-mode batch norm into the convolution or linear layer before it
(fuse_conv_bn_eval, fuse_linear_bn_eval and their *_weights), which saves inference its pass."""
from __future__ import annotations

import copy
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


def _arrays_of_one_kind(arrays, what: str):
    """The array module of `arrays`, all NumPy or all CuPy (ValueError otherwise)."""
    kinds = {_backend.is_cupy_array(a) for a in arrays}
    if len(kinds) > 1:
        raise ValueError(f"{what} takes arrays all on the host or all on GPUs")
    return _backend.array_module("cuda" if kinds.pop() else "numpy")


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """PyTorch's: the norm of the arrays `tensors` (one array or an iterable of them) taken together
    (the norm of their norms), as a 0-d array; norm_type a number >= 0 or math.inf; float16 arrays
    measured in FP32. error_if_nonfinite: RuntimeError where the norm is NaN or infinite (that looks
    at it: a host synchronisation on a GPU). `foreach` chooses PyTorch's implementation: ignored."""
    arrays = [tensors] if hasattr(tensors, "shape") else list(tensors)
    norm_type = float(norm_type) if norm_type == math.inf else real_number(norm_type, "norm_type", minimum=0)
    if not arrays:
        return np.zeros((), np.float32)
    xp = _arrays_of_one_kind(arrays, "get_total_norm")
    norms = [_norm(xp, a, norm_type) for a in arrays]
    if len({n.dtype for n in norms}) > 1:   # mixed dtypes: the widest
        wide = np.result_type(*[n.dtype for n in norms])
        norms = [n.astype(wide) for n in norms]
    total = _norm(xp, xp.stack(norms), norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {float(total)}: clipping them "
                           f"would make them NaN (error_if_nonfinite=False clips anyway)")
    return total


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None) -> None:
    """PyTorch's: each gradient multiplied in place by min(1, max_norm / (total_norm + 1e-6)),
    total_norm get_total_norm's (a 0-d array on the gradients' device, or a number)."""
    _scale_gradients(_gradients(parameters), real_number(max_norm, "max_norm"), total_norm)


def _scale_gradients(grads: list, max_norm: float, total_norm) -> None:
    if not grads:
        return
    xp = _arrays_of_one_kind(grads, "clip_grads_with_norm_")
    factor = xp.minimum(max_norm / (xp.asarray(total_norm) + 1e-6), 1.0)
    for g in grads:
        g *= factor.astype(g.dtype)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """PyTorch's: get_total_norm of the gradients, returned, then clip_grads_with_norm_ (before any
    change, error_if_nonfinite's RuntimeError). Gradients on one kind of device (NumPy or CuPy)."""
    grads = _gradients(parameters)
    max_norm = real_number(max_norm, "max_norm")
    total = get_total_norm(grads, norm_type, error_if_nonfinite)
    _scale_gradients(grads, max_norm, total)
    return total


def clip_grad_value_(parameters, clip_value) -> None:
    """PyTorch's: each gradient clamped in place to [-clip_value, clip_value]."""
    clip_value = real_number(clip_value, "clip_value")
    for g in _gradients(parameters):
        g.clip(-clip_value, clip_value, out=g)


def parameters_to_vector(parameters):
    """PyTorch's: the parameters' values flattened into one new 1-D array (NumPy or CuPy, as theirs)."""
    arrays = [p.data if isinstance(p, Parameter) else p for p in parameters]
    xp = _arrays_of_one_kind(arrays, "parameters_to_vector")
    return xp.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)


def vector_to_parameters(vec, parameters) -> None:
    """PyTorch's: consecutive slices of the 1-D `vec` copied into the parameters, in place (each keeps
    its own array, so an optimizer's and a replay's bindings hold; PyTorch's points each at a view
    of vec instead). ValueError, before any copy, unless vec has exactly their total size."""
    if not hasattr(vec, "ndim") or vec.ndim != 1:
        raise TypeError(f"expected vec to be a 1-D array, but got {type(vec).__name__}"
                        f"{'' if not hasattr(vec, 'ndim') else f' of {vec.ndim} dimensions'}")
    parameters = list(parameters)
    total = sum(p.data.size for p in parameters)
    if vec.size != total:
        raise ValueError(f"vec has {vec.size} elements, the parameters {total}")
    _arrays_of_one_kind([vec] + [p.data for p in parameters], "vector_to_parameters")
    for p in parameters:
        updatable(p.data, "a parameter")
    start = 0
    for p in parameters:
        p.data[...] = vec[start:start + p.data.size].reshape(p.data.shape)
        start += p.data.size


def _bn_scale(xp, bn_rv, bn_eps, bn_w):
    """bn_w / sqrt(bn_rv + bn_eps), PyTorch's rsqrt product, in the statistics' dtype."""
    scale = 1 / xp.sqrt(bn_rv + bn_rv.dtype.type(bn_eps))
    return scale if bn_w is None else bn_w * scale


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    """PyTorch's: (weight, bias) Parameters of the convolution that computes bn(conv(x)) for an
    eval-mode batch norm: each output channel's filter times bn_w / sqrt(bn_rv + bn_eps) (dimension
    1 of a transposed convolution's weight), bias (conv_b - bn_rm) times it plus bn_b; weight in
    conv_w's dtype, bias in conv_b's (conv_w's without one)."""
    arrays = [_value(a) for a in (conv_w, conv_b, bn_rm, bn_rv, bn_w, bn_b)]
    conv_w, conv_b, bn_rm, bn_rv, bn_w, bn_b = arrays
    xp = _arrays_of_one_kind([a for a in arrays if a is not None], "fuse_conv_bn_weights")
    bias_dtype = conv_w.dtype if conv_b is None else conv_b.dtype
    conv_b = xp.zeros_like(bn_rm) if conv_b is None else conv_b
    bn_b = xp.zeros_like(bn_rm) if bn_b is None else bn_b
    scale = _bn_scale(xp, bn_rv, bn_eps, bn_w)
    shape = [1] * conv_w.ndim
    shape[1 if transpose else 0] = -1
    weight = (conv_w * scale.reshape(shape)).astype(conv_w.dtype)
    bias = ((conv_b - bn_rm) * scale + bn_b).astype(bias_dtype)
    return Parameter(xp.ascontiguousarray(weight)), Parameter(xp.ascontiguousarray(bias))


def fuse_linear_bn_weights(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """PyTorch's: (weight, bias) Parameters of the linear layer that computes bn(linear(x)) for an
    eval-mode batch norm of its out_features (or of one feature)."""
    arrays = [_value(a) for a in (linear_w, linear_b, bn_rm, bn_rv, bn_w, bn_b)]
    linear_w, linear_b, bn_rm, bn_rv, bn_w, bn_b = arrays
    xp = _arrays_of_one_kind([a for a in arrays if a is not None], "fuse_linear_bn_weights")
    bias_dtype = linear_w.dtype if linear_b is None else linear_b.dtype
    linear_b = xp.zeros_like(bn_rm) if linear_b is None else linear_b
    scale = _bn_scale(xp, bn_rv, bn_eps, bn_w)
    weight = linear_w * scale[:, None].astype(linear_w.dtype)
    bias = ((linear_b - bn_rm) * scale + (0 if bn_b is None else bn_b)).astype(bias_dtype)
    return Parameter(xp.ascontiguousarray(weight)), Parameter(xp.ascontiguousarray(bias))


def _value(a):
    return a.data if isinstance(a, Parameter) else a


def _check_eval_pair(layer, bn) -> None:
    if layer.training or bn.training:
        raise ValueError("Fusion only for eval! (call .eval() on both layers first)")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn.running_mean and bn.running_var must not be None (a batch norm without "
                         "track_running_stats normalises by each batch's statistics: nothing to fold)")


def _placed_as(fused, layer):
    """`fused`'s new parameters on `layer`'s backend, frozen where its were (PyTorch's fused
    Parameters take the original weight's and bias's requires_grad; a new bias the weight's)."""
    for name in ("weight", "bias"):
        original = getattr(layer, name) if getattr(layer, name) is not None else layer.weight
        getattr(fused, name).backend = original.backend
        getattr(fused, name).requires_grad = original.requires_grad
    return fused


def fuse_conv_bn_eval(conv, bn, transpose=False):
    """PyTorch's: a new convolution (a deep copy of `conv`, with a bias) that computes bn(conv(x))
    for both layers in eval mode: one layer's pass at inference instead of two."""
    _check_eval_pair(conv, bn)
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                                    bn.weight, bn.bias, transpose)
    return _placed_as(fused, conv)


def fuse_linear_bn_eval(linear, bn):
    """PyTorch's: a new linear layer computing bn(linear(x)) for both in eval mode (bn over
    linear.out_features, or over one feature)."""
    _check_eval_pair(linear, bn)
    if linear.out_features != bn.num_features and bn.num_features != 1:
        raise ValueError(f"To fuse, linear.out_features == bn.num_features or bn.num_features == 1, got "
                         f"linear.out_features={linear.out_features} and bn.num_features={bn.num_features}")
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(linear.weight, linear.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
    return _placed_as(fused, linear)
