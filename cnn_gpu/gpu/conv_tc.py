"""Launch code of the tensor-core convolutions (kernels/conv2d_tc.cu): float32 convolutions in
the "tf32" math mode on sm_80 and newer GPUs, and on the emulator.

fprop hands the kernel its filter transposed to (K, R, S, C/G) and rounded to TF32, one small
copy per call, so the kernel's reduction order (r, s, c) reads it contiguously and rounds only
the input. dgrad of a stride-1 convolution is that
fprop over dy with the filter flipped and transposed ((C, R, S, K/G) directly); dgrad of a strided
convolution returns None (the caller runs the SIMT kernel). wgrad splits its long N*P*Q
reduction over blocks and sums the partials in a fixed order (bit-identical run to run)."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from .. import backend
from . import reduce
from ..precision import round_to_tf32
from ._grid import Launch, i32
from .conv import INDEX_LIMIT, ConvPlan, _check_grid, _check_index_range, _geometry_args

TILE_M = TILE_N = 128
TILE_K = 16
MIN_ARCH = 80            # mma.sync with TF32 operands: Ampere and newer
# wgrad split-K: aim for two waves of one block per SM on an H100 (132 SMs), each split summing
# at least MIN_SPLIT_PIXELS pixels; the partials must fit 32-bit indexing.
WGRAD_TARGET_BLOCKS = 264
MIN_SPLIT_PIXELS = 512
MAX_SPLITS = 64


@functools.lru_cache(maxsize=None)
def _device_arch(device_id: int) -> int:
    import cupy
    major, minor = cupy.cuda.Device(device_id).compute_capability
    return int(major) * 10 + int(minor)


def supported(be: str) -> bool:
    """Whether `be` runs the tensor-core kernels: the emulator always, a GPU from sm_80 on (an
    older one runs the SIMT kernels on TF32-rounded operands and says so once)."""
    if be == "emu":
        return True
    if be != "cuda":
        return False
    import cupy
    arch = _device_arch(cupy.cuda.Device().id)
    if arch < MIN_ARCH:
        _warn_no_tensor_cores(arch)
    return arch >= MIN_ARCH


@functools.lru_cache(maxsize=None)
def _warn_no_tensor_cores(arch: int) -> None:
    warnings.warn(f"math mode 'tf32': this GPU (sm_{arch}) has no TF32 tensor cores; float32 convolutions "
                  f"run on the SIMT kernels with TF32-rounded operands", RuntimeWarning, stacklevel=4)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plan_fprop(g) -> ConvPlan:
    _check_index_range(g)
    grid = (_ceil_div(g.N * g.P * g.Q, TILE_N), _ceil_div(g.K // g.groups, TILE_M), g.groups)
    _check_grid("conv2d_fprop_tf32", grid)
    return ConvPlan("fprop", (Launch("conv2d_tc", "conv2d_fprop_tf32", grid),), tile="tf32")


def dgrad_as_fprop_geometry(g):
    """The geometry of the stride-1 convolution of dy whose output is dx, or None when dgrad is
    no such convolution (a stride above 1, or padding beyond the dilated kernel's reach)."""
    from ..functional.geometry import conv_geometry
    if g.stride != (1, 1):
        return None
    pads = tuple(d * (k - 1) - p for d, k, p in zip(g.dilation, (g.R, g.S), g.padding))
    if min(pads) < 0:
        return None
    return conv_geometry((g.N, g.K, g.P, g.Q), (g.C, g.K // g.groups, g.R, g.S), stride=1, padding=pads,
                         dilation=g.dilation, groups=g.groups)


def plan_wgrad(g, splits=None) -> ConvPlan:
    _check_index_range(g)
    kg, crs, npq = g.K // g.groups, (g.C // g.groups) * g.R * g.S, g.N * g.P * g.Q
    grid_xy = (_ceil_div(crs, TILE_N), _ceil_div(kg, TILE_M))
    if splits is None:
        splits = _ceil_div(WGRAD_TARGET_BLOCKS, grid_xy[0] * grid_xy[1] * g.groups)
        splits = min(splits, _ceil_div(npq, MIN_SPLIT_PIXELS), MAX_SPLITS, (INDEX_LIMIT - 1) // (g.K * crs))
    splits = max(1, min(int(splits), npq))
    chunk = _ceil_div(_ceil_div(npq, splits), TILE_K) * TILE_K
    splits = _ceil_div(npq, chunk)   # rounding the chunk up may leave trailing splits empty: drop them
    grid = grid_xy + (g.groups * splits,)
    _check_grid("conv2d_wgrad_tf32", grid)
    launches = (Launch("conv2d_tc", "conv2d_wgrad_tf32", grid),)
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, g.K * crs, 1),)
    return ConvPlan("wgrad", launches, tile="tf32", splits=splits, chunk=chunk)


def _float32(a):
    if a.dtype != np.float32:
        raise TypeError(f"the TF32 kernels take float32 arrays, not {a.dtype}")


def _launch_fprop(be, x, filter_rsc, bias, g, activation):
    plan = plan_fprop(g)
    y = backend.array_module(be).empty(g.y_shape, dtype=x.dtype)
    bias_arg = filter_rsc if bias is None else bias   # never read when has_bias == 0 (an input: no aliasing of y)
    args = ((x, filter_rsc, bias_arg, y) + _geometry_args(g)
            + i32(g.groups, bias is not None, activation == "relu"))
    launch = plan.main
    backend.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    return y


def fprop(be, x, w, bias, g, activation=None):
    """y = conv2d(x, w) + bias (then ReLU when activation == "relu"), TF32 products, FP32 sums."""
    _float32(x)
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    filter_rsc = round_to_tf32(backend.array_module(be).ascontiguousarray(w.transpose(0, 2, 3, 1)))
    return _launch_fprop(be, x, filter_rsc, bias, g, activation)


def dgrad(be, dy, w, g):
    """dx of a stride-1 conv2d on tensor cores, or None when the geometry needs the SIMT kernel."""
    _float32(dy)
    flipped = dgrad_as_fprop_geometry(g)
    if flipped is None:
        return None
    xp = backend.array_module(be)
    kg, cg = g.K // g.groups, g.C // g.groups
    # w (G*Kg, Cg, R, S) -> (G*Cg, R, S, Kg), taps reversed: the filter of the flipped convolution
    per_group = w.reshape(g.groups, kg, cg, g.R, g.S)[:, :, :, ::-1, ::-1]
    filter_rsc = round_to_tf32(xp.ascontiguousarray(per_group.transpose(0, 2, 3, 4, 1)).reshape(g.C, g.R, g.S, kg))
    return _launch_fprop(be, dy, filter_rsc, None, flipped, None)


def wgrad(be, dy, x, g, *, splits=None):
    """dweight of conv2d on tensor cores: split-K partials summed in a fixed order."""
    _float32(x)
    plan = plan_wgrad(g, splits)
    crs = (g.C // g.groups) * g.R * g.S
    workspace = backend.array_module(be).empty((plan.splits, g.K, crs), dtype=x.dtype)
    args = (dy, x, workspace) + _geometry_args(g) + i32(g.groups, plan.splits, plan.chunk)
    launch = plan.main
    backend.launch(be, launch.family, x.dtype, launch.kernel, launch.grid, launch.block, args)
    if plan.splits == 1:
        return workspace.reshape(g.w_shape)
    return reduce.channel_sum(be, workspace, plan.splits, g.K * crs, 1).reshape(g.w_shape)


def flops(g) -> int:
    """Multiply-adds x 2 of each pass (fprop, dgrad and wgrad do the same number)."""
    return 2 * math.prod(g.y_shape) * (g.C // g.groups) * g.R * g.S
