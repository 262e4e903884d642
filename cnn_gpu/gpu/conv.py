"""Launch code of the convolution kernels (kernels/conv2d_fprop.cu, conv2d_dgrad.cu, conv2d_wgrad.cu,
conv2d_depthwise.cu) for the "cuda" and "emu" backends.

`g` is the ConvGeometry of the convolution (for a transposed convolution, that of the convolution
whose input gradient it is). Depthwise geometries (groups == C > 1) run the direct kernels of
conv2d_depthwise.cu, everything else the implicit-GEMM kernels. The keyword-only `tile` ("large"
or "small") and `splits` arguments override the launcher's choices; tests use them to reach every
kernel variant with small shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from . import reduce
from ._grid import Launch, i32

THREADS = 256
BK = 8   # reduction depth of a block tile (kernels' BK)
# Block tile edge (BM = BN) of the GEMM kernels per dtype and variant.
TILE_EDGE = {np.dtype(np.float32): {"large": 128, "small": 64},
             np.dtype(np.float64): {"large": 64, "small": 32}}
# The large tile pays off once it alone gives this many blocks: enough to fill the SMs of a big
# GPU (132 on an H100) about twice; below that the small tile's extra blocks win.
LARGE_TILE_MIN_BLOCKS = 256
# wgrad split-K: aim for this many blocks, each summing at least MIN_SPLIT_CHUNK pixels.
WGRAD_TARGET_BLOCKS = 256
MIN_SPLIT_CHUNK = 256
MAX_SPLITS = 64
# depthwise wgrad keeps one partial per thread and tap: cap that workspace (elements)
MAX_PARTIALS = 2**24
MAX_GRID_YZ = 65535
# The kernels index with 32-bit ints; a row index may run one image past the end of a tensor.
INDEX_LIMIT = 2**31
SPATIAL_LIMIT = 2**28


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_index_range(g) -> None:
    # the kernels mark absent pixels with a row origin of -2^29 that no valid tap may lift above 0
    padded = max(g.H + 2 * g.padding[0] + g.dilation[0] * g.R, g.W + 2 * g.padding[1] + g.dilation[1] * g.S,
                 g.P * g.stride[0], g.Q * g.stride[1])
    if padded >= SPATIAL_LIMIT:
        raise ValueError(f"conv2d kernels take spatial sizes below 2^28: input {g.H}x{g.W}, padding {g.padding}, "
                         f"kernel {g.R}x{g.S}, dilation {g.dilation}")
    for name, shape in (("x", g.x_shape), ("y", g.y_shape), ("weight", g.w_shape)):
        size = math.prod(shape)
        if size + size // shape[0] >= INDEX_LIMIT:
            raise ValueError(f"conv2d kernels use 32-bit indices: {name} of shape {shape} has {size} elements, "
                             f"too many (limit about 2^31); split the batch")


def _check_grid(kernel: str, grid) -> None:
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"{kernel}: grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} blocks in y and z "
                         f"(too many channels or groups)")


def _pick_tile(dtype, M: int, Ngemm: int, batches: int, tile) -> tuple[str, int]:
    """The tile variant and its edge for an M x Ngemm output repeated `batches` times."""
    edges = TILE_EDGE[np.dtype(dtype)]
    if tile is None:
        large_blocks = _ceil_div(M, edges["large"]) * _ceil_div(Ngemm, edges["large"]) * batches
        fills_rows = M > edges["small"]
        tile = "large" if fills_rows and large_blocks >= LARGE_TILE_MIN_BLOCKS else "small"
    elif tile not in edges:
        raise ValueError(f"tile must be 'large', 'small' or None, got {tile!r}")
    return tile, edges[tile]


def _geometry_args(g):
    return i32(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride[0], g.stride[1], g.padding[0],
                g.padding[1], g.dilation[0], g.dilation[1])


@dataclass(frozen=True)
class ConvPlan:
    """What a convolution pass launches, decided before any allocation or launch. The launchers
    below run it; the roofline model (cnn_gpu.roofline) reads it without running anything.

    `splits` > 1 (wgrad) means a (splits, K, taps) workspace of partial tiles summed by a
    reduce.channel_sum launch, which `launches` lists last; `chunk` is each split's share of the
    N*P*Q reduction, a multiple of BK."""
    pass_name: str               # "fprop", "dgrad" or "wgrad"
    launches: tuple
    tile: str | None = None      # "large" / "small" for the GEMM kernels, None for depthwise
    splits: int = 1
    chunk: int = 0

    @property
    def main(self) -> Launch:
        return self.launches[0]


def plan_fprop(g, dtype, *, tile=None) -> ConvPlan:
    _check_index_range(g)
    if g.is_depthwise:
        grid = (_ceil_div(math.prod(g.y_shape), THREADS), 1, 1)
        return ConvPlan("fprop", (Launch("conv2d_depthwise", "conv2d_depthwise_fprop", grid),))
    npq = g.N * g.P * g.Q
    variant, edge = _pick_tile(dtype, g.K // g.groups, npq, g.groups, tile)
    grid = (_ceil_div(npq, edge), _ceil_div(g.K // g.groups, edge), g.groups)
    _check_grid("conv2d_fprop", grid)
    return ConvPlan("fprop", (Launch("conv2d_fprop", f"conv2d_fprop_{variant}", grid),), tile=variant)


def plan_dgrad(g, dtype, *, tile=None) -> ConvPlan:
    _check_index_range(g)
    if g.is_depthwise:
        grid = (_ceil_div(math.prod(g.x_shape), THREADS), 1, 1)
        return ConvPlan("dgrad", (Launch("conv2d_depthwise", "conv2d_depthwise_dgrad", grid),))
    # the grid covers the largest stride phase of the input pixels; blocks past a smaller one exit
    (sh, sw) = g.stride
    phase_pixels = g.N * _ceil_div(g.H, sh) * _ceil_div(g.W, sw)
    cg = g.C // g.groups
    variant, edge = _pick_tile(dtype, cg, phase_pixels, g.groups * sh * sw, tile)
    grid = (_ceil_div(phase_pixels, edge), _ceil_div(cg, edge), g.groups * sh * sw)
    _check_grid("conv2d_dgrad", grid)
    return ConvPlan("dgrad", (Launch("conv2d_dgrad", f"conv2d_dgrad_{variant}", grid),), tile=variant)


def _wgrad_splits(npq: int, blocks: int, groups: int) -> int:
    wanted = _ceil_div(WGRAD_TARGET_BLOCKS, blocks)
    return max(1, min(wanted, _ceil_div(npq, MIN_SPLIT_CHUNK), MAX_SPLITS, MAX_GRID_YZ // groups))


def plan_wgrad(g, dtype, *, tile=None, splits=None) -> ConvPlan:
    _check_index_range(g)
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
        raise ValueError(f"splits must be a positive int or None, got {splits!r}")
    npq = g.N * g.P * g.Q
    if g.is_depthwise:
        taps = g.K * g.R * g.S
        if taps * THREADS >= INDEX_LIMIT:
            raise ValueError(f"depthwise wgrad: weight of shape {g.w_shape} has too many taps ({taps}) for "
                             f"32-bit indexing of its {THREADS} partial sums per tap")
        if splits is None:
            splits = max(1, min(_ceil_div(npq, THREADS * MIN_SPLIT_CHUNK), MAX_SPLITS))
        splits = max(1, min(splits, _ceil_div(npq, THREADS), MAX_PARTIALS // (taps * THREADS), MAX_GRID_YZ))
        launches = (Launch("conv2d_depthwise", "conv2d_depthwise_wgrad", (taps, splits, 1)),
                    reduce.plan_channel_sum(1, taps, splits * THREADS))
        return ConvPlan("wgrad", launches, splits=splits)
    kg, taps = g.K // g.groups, (g.C // g.groups) * g.R * g.S
    variant, edge = _pick_tile(dtype, kg, taps, g.groups, tile)
    grid_xy = (_ceil_div(taps, edge), _ceil_div(kg, edge))
    if splits is None:
        splits = _wgrad_splits(npq, grid_xy[0] * grid_xy[1] * g.groups, g.groups)
    chunk = _ceil_div(_ceil_div(npq, splits), BK) * BK
    splits = _ceil_div(npq, chunk)   # rounding the chunk up may leave trailing splits empty: drop them
    grid = grid_xy + (g.groups * splits,)
    _check_grid("conv2d_wgrad", grid)
    launches = (Launch("conv2d_wgrad", f"conv2d_wgrad_{variant}", grid),)
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, g.K * taps, 1),)
    return ConvPlan("wgrad", launches, tile=variant, splits=splits, chunk=chunk)


def _run(be, launch: Launch, dtype, args) -> None:
    backend.launch(be, launch.family, dtype, launch.kernel, launch.grid, launch.block, args,
                   shared_mem=launch.shared_mem)


def fprop(be, x, w, bias, g, activation=None, *, tile=None):
    """y = conv2d(x, w) + bias, then ReLU when activation == "relu"."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    plan = plan_fprop(g, x.dtype, tile=tile)
    y = backend.array_module(be).empty(g.y_shape, dtype=x.dtype)
    flags = i32(bias is not None, activation == "relu")
    bias_arg = y if bias is None else bias   # never read when has_bias == 0
    groups = () if g.is_depthwise else i32(g.groups)
    _run(be, plan.main, x.dtype, (x, w, bias_arg, y) + _geometry_args(g) + groups + flags)
    return y


def dgrad(be, dy, w, g, *, tile=None):
    """dx of conv2d (also the forward pass of conv_transpose2d, its input passed as dy)."""
    plan = plan_dgrad(g, dy.dtype, tile=tile)
    dx = backend.array_module(be).empty(g.x_shape, dtype=dy.dtype)
    if g.is_depthwise:
        (sh, sw), (dh, dw) = g.stride, g.dilation
        extra = i32(sh // math.gcd(sh, dh), sw // math.gcd(sw, dw))   # stride phase periods
    else:
        extra = i32(g.groups)
    _run(be, plan.main, dy.dtype, (dy, w, dx) + _geometry_args(g) + extra)
    return dx


def wgrad(be, dy, x, g, *, tile=None, splits=None):
    """dweight of conv2d: split-K partial tiles, then a fixed-order sum over the splits."""
    plan = plan_wgrad(g, x.dtype, tile=tile, splits=splits)
    xp = backend.array_module(be)
    if g.is_depthwise:
        taps = g.K * g.R * g.S
        partial = xp.empty((taps, plan.splits * THREADS), dtype=x.dtype)
        _run(be, plan.main, x.dtype, (dy, x, partial) + _geometry_args(g))
        return reduce.channel_sum(be, partial, 1, taps, plan.splits * THREADS).reshape(g.w_shape)
    taps = (g.C // g.groups) * g.R * g.S
    workspace = xp.empty((plan.splits, g.K, taps), dtype=x.dtype)
    _run(be, plan.main, x.dtype, (dy, x, workspace) + _geometry_args(g) + i32(g.groups, plan.splits, plan.chunk))
    if plan.splits == 1:
        return workspace.reshape(g.w_shape)
    return reduce.channel_sum(be, workspace, plan.splits, g.K * taps, 1).reshape(g.w_shape)


def bgrad(be, dy):
    """dbias: dy (N, K, P, Q) summed over N, P and Q in a fixed order."""
    n, k, p, q = dy.shape
    return reduce.channel_sum(be, dy, n, k, p * q)
