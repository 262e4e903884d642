"""Launch code of kernels/elementwise.cu: activations forward/backward, GLU, relu(a + b), in-place bias addition."""
from __future__ import annotations

import math

from .. import backend
from ._grid import MAX_GRID_Y, THREADS, acc, blocks_for, elementwise_blocks, i32, i64, plane_pixel_grid, plane_walk_grid

# gelu_tanh: gelu's tanh approximation (F.gelu(x, approximate="tanh")); hardtanh also runs F.relu6, elu
# F.selu and F.celu
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "hardtanh", "hardsigmoid",
               "hardswish", "elu", "mish", "softplus", "log_sigmoid", "softsign", "tanhshrink", "hardshrink",
               "softshrink", "threshold")
# activations whose kernels take parameters as trailing acc_t arguments: the negative slope and the shrinks'
# lambd, or a tuple: hardtanh's (min_val, max_val), elu's (alpha, scale, input_scale), softplus's (beta,
# threshold) and threshold's (threshold, value)
_WITH_PARAM = ("leaky_relu", "hardshrink", "softshrink")
_WITH_PARAM_TUPLE = ("hardtanh", "elu", "softplus", "threshold")


# backward kernels shared: both shrinks' gradients are 0 in the same dead zone
_SHARED_BACKWARD = {"hardshrink": "shrink_backward", "softshrink": "shrink_backward"}


def kernel_name(name: str, direction: str) -> str:
    """The kernel of activation `name` (ACTIVATIONS) in `direction` ("forward" or "backward")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return _SHARED_BACKWARD.get(name, f"{name}_backward") if direction == "backward" else f"{name}_forward"


def _param_args(name, dtype, param):
    if name in _WITH_PARAM_TUPLE:
        return acc(dtype, *param)
    return acc(dtype, param) if name in _WITH_PARAM else ()


def forward(be, name, x, param):
    kernel = kernel_name(name, "forward")
    y = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    backend.launch(be, "elementwise", x.dtype, kernel, (elementwise_blocks(x.size),), (THREADS,),
                   (x, y, *i64(x.size), *_param_args(name, x.dtype, param)))
    return y


def backward(be, name, dy, x, param):
    kernel = kernel_name(name, "backward")
    if name == "threshold":   # its gradient needs the threshold, not the value
        param = param[:1]
    dx = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    backend.launch(be, "elementwise", x.dtype, kernel, (elementwise_blocks(x.size),), (THREADS,),
                   (dy, x, dx, *i64(x.size), *_param_args(name, x.dtype, param)))
    return dx


def _glu_grid(outer: int, chunk: int) -> tuple:
    """glu_forward's and glu_backward's grid (kernels/elementwise.cu, for_each_glu_element): runs of at most
    half a block grouped (plane_pixel_grid); else x blocks over one run of `chunk` elements, y over the runs."""
    if 2 * chunk <= THREADS:
        return plane_pixel_grid(outer, chunk)
    return elementwise_blocks(chunk), min(outer, MAX_GRID_Y)


def glu(be, x, outer, chunk, out_shape):
    """a * sigmoid(b) of x viewed as `outer` runs of a (chunk elements) then b (chunk elements)."""
    y = backend.array_module(be).empty(out_shape, dtype=x.dtype)
    backend.launch(be, "elementwise", x.dtype, "glu_forward", _glu_grid(outer, chunk), (THREADS,),
                   (x, y, *i64(outer, chunk)))
    return y


def glu_backward(be, dy, x, outer, chunk):
    """dx of glu from dy (outer runs of chunk elements) and x."""
    dx = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    backend.launch(be, "elementwise", x.dtype, "glu_backward", _glu_grid(outer, chunk), (THREADS,),
                   (dy, x, dx, *i64(outer, chunk)))
    return dx


def add_relu(be, a, b):
    """relu(a + b) in one pass (arrays of one shape and dtype)."""
    y = backend.array_module(be).empty(a.shape, dtype=a.dtype)
    backend.launch(be, "elementwise", a.dtype, "add_relu_forward", (elementwise_blocks(a.size),), (THREADS,),
                   (a, b, y, *i64(a.size)))
    return y


def relu_backward_of_sum(be, dy_a, dy_b, x):
    """relu_backward(dy_a + dy_b, x) in one pass (arrays of one shape and dtype)."""
    dx = backend.array_module(be).empty(x.shape, dtype=x.dtype)
    backend.launch(be, "elementwise", x.dtype, "relu_backward_of_sum", (elementwise_blocks(x.size),), (THREADS,),
                   (dy_a, dy_b, x, dx, *i64(x.size)))
    return dx


def bias_add(be, y, bias):
    """In place: y[:, c, ...] += bias[c] for y of shape (N, C, ...) (NCHW, or (rows, features))."""
    if y.ndim < 2 or bias.shape != (y.shape[1],):
        raise ValueError(f"bias_add: bias of shape {tuple(bias.shape)} does not match axis 1 of y {tuple(y.shape)}")
    channels = y.shape[1]
    inner = math.prod(y.shape[2:])
    if y.size == 0:
        return y
    if inner == 1:
        backend.launch(be, "elementwise", y.dtype, "bias_add_rows", (blocks_for(y.size),), (THREADS,),
                       (y, bias, *i64(y.size), *i32(channels)))
    else:
        planes = y.shape[0] * channels
        backend.launch(be, "elementwise", y.dtype, "bias_add_nchw", plane_walk_grid(planes, inner, y.dtype),
                       (THREADS,), (y, bias, *i64(planes), *i32(channels), *i64(inner)))
    return y
