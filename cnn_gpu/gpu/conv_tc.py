"""Launch code of the tensor-core convolutions (kernels/conv2d_tc.cu): float32 convolutions in
the "tf32" math mode on sm_80 and newer GPUs, and on the emulator.

The filter is handed to the kernel transposed to (K, R, S, C/G), one copy per call, so that the
kernel's reduction order (r, s, c) reads it contiguously."""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import backend
from ._grid import Launch, i32
from .conv import ConvPlan, _check_grid, _check_index_range, _geometry_args

TILE_M = TILE_N = 128
MIN_ARCH = 80   # mma.sync with TF32 operands: Ampere and newer


@functools.lru_cache(maxsize=None)
def _device_arch(device_id: int) -> int:
    import cupy
    major, minor = cupy.cuda.Device(device_id).compute_capability
    return int(major) * 10 + int(minor)


def supported(be: str) -> bool:
    """Whether `be` runs the tensor-core kernels: the emulator always, a GPU from sm_80 on."""
    if be == "emu":
        return True
    if be == "cuda":
        import cupy
        return _device_arch(cupy.cuda.Device().id) >= MIN_ARCH
    return False


def plan_fprop(g) -> ConvPlan:
    _check_index_range(g)
    kg = g.K // g.groups
    grid = (-(-g.N * g.P * g.Q // TILE_N), -(-kg // TILE_M), g.groups)
    _check_grid("conv2d_fprop_tf32", grid)
    return ConvPlan("fprop", (Launch("conv2d_tc", "conv2d_fprop_tf32", grid),), tile="tf32")


def fprop(be, x, w, bias, g, activation=None):
    """y = conv2d(x, w) + bias (then ReLU) with TF32 operands and FP32 accumulation."""
    if x.dtype != np.float32:
        raise TypeError(f"the TF32 kernels take float32 arrays, not {x.dtype}")
    plan = plan_fprop(g)
    xp = backend.array_module(be)
    filter_rsc = xp.ascontiguousarray(w.transpose(0, 2, 3, 1))
    y = xp.empty(g.y_shape, dtype=x.dtype)
    bias_arg = filter_rsc if bias is None else bias   # never read when has_bias == 0 (an input: no aliasing of y)
    args = ((x, filter_rsc, bias_arg, y) + _geometry_args(g)
            + i32(g.groups, bias is not None, activation == "relu"))
    launch = plan.main
    backend.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    return y


def flops(g) -> int:
    return 2 * math.prod(g.y_shape) * (g.C // g.groups) * g.R * g.S
