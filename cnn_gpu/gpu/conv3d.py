"""Launch code of kernels/conv3d_fprop.cu, the implicit-GEMM 3-D convolution, kernels/conv3d_dgrad.cu,
its input gradient, and kernels/conv3d_wgrad.cu, its weight gradient, for the "cuda" and "emu" backends.

`g` is a Conv3dGeometry (cnn_gpu.functional.conv3d). plan_fprop, plan_dgrad and plan_wgrad pick the tile
and split-K with conv2d's planner (cnn_gpu.gpu.conv._choose: the same tiles, wave model and split limits);
`tile` and `splits`, or a conv.forced(...) block, override it.
- dgrad: conv2d_dgrad.cu's phase decomposition with a depth coordinate. dx's voxels split into stride
  phases (min(stride, size) per dimension); each phase is the dense convolution of dy with the flipped
  filter taps that reach it, so no zero-inserted voxel is visited, and one launch runs every phase
  (grid.z: splits x groups x phases) and writes dx in place; phases no tap reaches get zeros. Its
  launches: the filter transpose (wt, in the order the kernel reduces it), the kernel, and split-K's
  fixed-order fold when it splits; phases with more taps in a dimension than the mask fields hold
  (MASK_TAPS) read a zero-bordered copy of dy first. A stride of (2, 2, 2) was 8 launches of the
  forward kernel, each result copied into dx's strided voxels, before this kernel.
- wgrad: conv2d_wgrad.cu's GEMM with a depth: dw_g = dy_g x vol2col(x_g)^T, M = K/G, N = C/G*T*R*S,
  reduction N*O*P*Q, x and dy read in place (it ran the forward kernel on transposed copies before this
  kernel); split-K writes a workspace (splits, K, C/G*T*R*S) summed in a fixed order (reduce.channel_sum).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .. import backend
from . import _plan_cache, reduce
from ._grid import Launch, blocks_for, i32
from .conv import (BK, FILTER_TAIL, INDEX_LIMIT, MAX_GRID_YZ, MAX_SPLITS, SPATIAL_LIMIT, TILES as CONV2D_TILES,
                   ConvPlan, _check_grid, _choose, _forced_choices, _phase_extent, _phase_taps as _most_phase_taps,
                   _walk_args, _workspace_splits, check_element_counts, device_sms)

FAMILY = "conv3d_fprop"
WGRAD_FAMILY = "conv3d_wgrad"
# Taps per dimension (depth, rows, columns) the fprop and dgrad kernels' tap-mask fields hold
# (kernels/conv3d_tile.cuh)
MASK_TAPS = (10, 11, 11)
# conv2d's tiles (igemm.cuh), but for the float64 small tile's 2 blocks an SM (kernels/conv3d_tile.cuh:
# CONV3D_SMALL_BLOCKS, at 128 registers)
TILES = {dtype: dict(tiles) for dtype, tiles in CONV2D_TILES.items()}
TILES[np.dtype(np.float64)]["small"] = dataclasses.replace(CONV2D_TILES[np.dtype(np.float64)]["small"], registers=128)
# conv3d_wgrad.cu runs igemm.cuh's launch bounds unchanged: conv2d's tiles
WGRAD_TILES = CONV2D_TILES


def _check_index_range(g) -> None:
    """ValueError where g's extents or element counts pass the kernels' 32-bit offsets."""
    spans = [max(size + 2 * abs(pad) + dil * taps, outputs * stride)
             for size, pad, dil, taps, outputs, stride in zip((g.D, g.H, g.W), g.padding, g.dilation, (g.T, g.R, g.S),
                                                             (g.O, g.P, g.Q), g.stride)]
    if max(spans) >= SPATIAL_LIMIT:
        raise ValueError(f"conv3d kernels take spatial sizes below 2^28: input {g.D}x{g.H}x{g.W}, padding "
                         f"{g.padding}, kernel {g.T}x{g.R}x{g.S}, dilation {g.dilation}")
    check_element_counts("conv3d", g, INDEX_LIMIT)


@dataclasses.dataclass(frozen=True)
class Embedding:
    """Where an operand's voxels go in a zeroed array of `shape` (N, C, *spatial): voxel i of each
    spatial dimension at offset + i, those outside dropped (a zero-bordered copy or a crop)."""
    shape: tuple
    offsets: tuple


def _embedded(be, a, embedding: Embedding):
    """`a` placed in zeros as `embedding` says (device copies)."""
    xp = backend.array_module(be)
    out = backend.device_call(xp.zeros, embedding.shape, dtype=a.dtype)
    source, target = [slice(None)] * 2, [slice(None)] * 2
    for size, length, offset in zip(a.shape[2:], embedding.shape[2:], embedding.offsets):
        first, end = max(0, -offset), min(size, length - offset)
        if end <= first:
            return out
        source.append(slice(first, end))
        target.append(slice(offset + first, offset + end))
    backend.device_call(xp.copyto, out[tuple(target)], a[tuple(source)])
    return out


def _fprop_padding(g) -> Embedding | None:
    """The copy of x a filter past the mask fields reads (its all-ones mask passes every tap): the voxels its
    outputs reach, x at the padding; none without padding, where every tap lies in x (as conv2d's)."""
    if all(taps <= field for taps, field in zip((g.T, g.R, g.S), MASK_TAPS)) or not any(map(any, g.pads)):
        return None
    reach = tuple((outputs - 1) * stride + (taps - 1) * dil + 1 for outputs, stride, taps, dil
                  in zip((g.O, g.P, g.Q), g.stride, (g.T, g.R, g.S), g.dilation))
    return Embedding((g.N, g.C) + reach, g.padding)


def _padded_input(g, embedding: Embedding):
    """The same convolution over the copy of x that `embedding` makes."""
    D, H, W = embedding.shape[2:]
    return dataclasses.replace(g, D=D, H=H, W=W, padding=(0, 0, 0), padding_extra=(0, 0, 0))


@_plan_cache.memoized(_forced_choices)
def plan_fprop(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    """The launches of y = conv3d(x, w) (+ bias): the GEMM tile, split-K, and a zero-bordered copy of
    x (`padded`, an Embedding) for filters past the mask fields."""
    _check_index_range(g)
    voxels, kg = g.N * g.O * g.P * g.Q, g.K // g.groups
    kgemm = (g.C // g.groups) * g.T * g.R * g.S
    out = math.prod(g.y_shape)
    variant, spec, splits, chunk = _choose(dtype, kg, voxels, g.groups, kgemm, out, sms, tile, splits,
                                           min(_workspace_splits(MAX_SPLITS, out), MAX_GRID_YZ // g.groups), TILES)
    grid = (-(-voxels // spec.bn), -(-kg // spec.bm), g.groups * splits)
    _check_grid(FAMILY, grid)
    padded = _fprop_padding(g)
    if padded:
        _check_index_range(_padded_input(g, padded))
    launches = (Launch(FAMILY, f"{FAMILY}_{variant}", grid, (spec.threads, 1, 1)),)
    if splits > 1:
        launches += (reduce.plan_split_sum_epilogue(out),)
    return ConvPlan("fprop", launches, tile=variant, splits=splits, chunk=chunk, padded=padded)


def _geometry_args(g):
    return i32(g.N, g.C, g.D, g.H, g.W, g.K, g.T, g.R, g.S, g.O, g.P, g.Q, *g.stride, *g.padding, *g.dilation)


def _fprop_walk(g):
    """(walk_s, walk_r, walk_t, walk_tap, walk_carry_s, walk_carry_r, walk_carry_t) of conv3d_fprop.cu:
    BK reduction rows (c, t, r, s) as steps of s, r, t and the x offset, and the offset carries when
    s, r and t wrap."""
    rs, hw = g.R * g.S, g.H * g.W
    trs, dhw = g.T * rs, g.D * hw
    (dd, dh, dw) = g.dilation
    walk_s, walk_r, walk_t = BK % g.S, (BK % rs) // g.S, (BK % trs) // rs
    return _walk_args(walk_s, walk_r, walk_t, (BK // trs) * dhw + walk_t * dd * hw + walk_r * dh * g.W + walk_s * dw,
                      dh * g.W - g.S * dw, dd * hw - g.R * dh * g.W, dhw - g.T * dd * hw)


def fprop(be, x, w, bias, g, *, tile=None, splits=None):
    """y = conv3d(x, w) + bias (bias None: none)."""
    plan = plan_fprop(g, x.dtype, tile=tile, splits=splits, sms=device_sms(be))
    xp = backend.array_module(be)
    y = xp.empty(g.y_shape, dtype=x.dtype)
    if plan.padded:
        x = _embedded(be, x, plan.padded)
        g = _padded_input(g, plan.padded)
    bias_arg = reduce.unread_bias(xp, x.dtype) if bias is None else bias
    out = y if plan.splits == 1 else xp.empty((plan.splits,) + tuple(g.y_shape), dtype=x.dtype)
    backend.launch(be, FAMILY, x.dtype, plan.main.kernel, plan.main.grid, plan.main.block,
                   (x, w, bias_arg, out) + _geometry_args(g)
                   + i32(g.groups, bias is not None and plan.splits == 1, plan.chunk) + _fprop_walk(g))
    if plan.splits == 1:
        return y
    return reduce.split_sum_epilogue(be, out, y, g.K, g.O * g.P * g.Q, bias)


DGRAD_FAMILY = "conv3d_dgrad"


def dgrad_phase_counts(g) -> tuple:
    """dx's stride phases per dimension (kernels/conv3d_dgrad.cu): its first min(stride, size) voxels."""
    return tuple(min(stride, size) for stride, size in zip(g.stride, (g.D, g.H, g.W)))


def _dgrad_padding(g) -> Embedding | None:
    """dgrad's zero-bordered copy of dy for a stride phase with more taps in a dimension than its mask
    field holds: dy with borders that every tap of every phase lands inside (conv2d's _phase_extent per
    dimension)."""
    if all(_most_phase_taps(taps, stride, dil) <= field for taps, stride, dil, field
           in zip((g.T, g.R, g.S), g.stride, g.dilation, MASK_TAPS)):
        return None
    extents = [_phase_extent(*args) for args in zip((g.D, g.H, g.W), (g.T, g.R, g.S), g.stride, g.padding,
                                                    g.dilation, (g.O, g.P, g.Q))]
    return Embedding((g.N, g.K) + tuple(before + outputs + after for (before, after), outputs
                                        in zip(extents, (g.O, g.P, g.Q))),
                     tuple(before for before, _ in extents))


def _padded_output(g, embedding: Embedding):
    """The geometry dgrad runs on over its bordered copy of dy: dy voxel o sits at o + before, which the
    kernel's phase origins see as stride * before more padding."""
    O, P, Q = embedding.shape[2:]
    return dataclasses.replace(g, O=O, P=P, Q=Q, padding=tuple(pad + before * stride for pad, before, stride
                                                               in zip(g.padding, embedding.offsets, g.stride)))


@_plan_cache.memoized(_forced_choices)
def plan_dgrad(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    """The launches of dx = conv3d's input gradient: the filter transpose, then every stride phase in one
    launch of conv3d_dgrad_<tile> (the grid covers the largest phase; blocks past a smaller one exit; a z
    of splits x groups x phases past MAX_GRID_YZ runs as several launches of that grid's z slices),
    split-K's fold when it splits, and a zero-bordered copy of dy (`padded`) for phases past the mask
    fields."""
    _check_index_range(g)
    phase_voxels = g.N * math.prod(-(-size // stride) for size, stride in zip((g.D, g.H, g.W), g.stride))
    cg = g.C // g.groups
    kgemm = (g.K // g.groups) * math.prod(_most_phase_taps(*args) for args in zip((g.T, g.R, g.S), g.stride,
                                                                                  g.dilation))
    out = math.prod(g.x_shape)
    batches = g.groups * math.prod(dgrad_phase_counts(g))
    variant, spec, splits, chunk = _choose(dtype, cg, phase_voxels, batches, kgemm, out, sms, tile, splits,
                                           _workspace_splits(MAX_SPLITS, out), TILES)   # z slices: no z limit
    grid = (-(-phase_voxels // spec.bn), -(-cg // spec.bm), batches * splits)
    _check_grid(DGRAD_FAMILY, grid[:2] + (1,))   # z runs in launches of at most MAX_GRID_YZ blocks (z_first)
    padded = _dgrad_padding(g)
    if padded:
        _check_index_range(_padded_output(g, padded))
    launches = (Launch(DGRAD_FAMILY, f"{DGRAD_FAMILY}_filter_transpose", (blocks_for(math.prod(g.w_shape)), 1, 1)),
                Launch(DGRAD_FAMILY, f"{DGRAD_FAMILY}_{variant}", grid, (spec.threads, 1, 1)))
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, out, 1),)
    return ConvPlan("dgrad", launches, tile=variant, splits=splits, chunk=chunk, main_index=1, padded=padded)


def dgrad(be, dy, w, g, *, tile=None, splits=None):
    """dx of conv3d: every stride phase of dx in one launch of kernels/conv3d_dgrad.cu, written in place
    (with split-K, into partials that reduce.channel_sum folds in a fixed order)."""
    plan = plan_dgrad(g, dy.dtype, tile=tile, splits=splits, sms=device_sms(be))
    xp = backend.array_module(be)
    cg = g.C // g.groups
    wt = xp.zeros(g.K * cg * g.T * g.R * g.S + FILTER_TAIL[w.dtype], dtype=w.dtype)   # its padding zeroed
    transpose = plan.launches[0]
    backend.launch(be, DGRAD_FAMILY, dy.dtype, transpose.kernel, transpose.grid, transpose.block,
                   (w, wt) + i32(g.K, cg, g.T, g.R, g.S, *g.stride, *g.dilation))
    if plan.padded:
        dy = _embedded(be, dy, plan.padded)
        g = _padded_output(g, plan.padded)
    dx = xp.empty(g.x_shape, dtype=dy.dtype)
    out = dx if plan.splits == 1 else xp.empty((plan.splits,) + tuple(g.x_shape), dtype=dy.dtype)
    arguments = (dy, wt, out) + _geometry_args(g) + i32(g.groups, plan.splits)
    x_blocks, y_blocks, z_blocks = plan.main.grid
    for z_first in range(0, z_blocks, MAX_GRID_YZ):   # splits x groups x phases may pass CUDA's z limit
        backend.launch(be, DGRAD_FAMILY, dy.dtype, plan.main.kernel,
                       (x_blocks, y_blocks, min(MAX_GRID_YZ, z_blocks - z_first)), plan.main.block,
                       arguments + i32(z_first))
    if plan.splits == 1:
        return dx
    return reduce.channel_sum(be, out, plan.splits, dx.size, 1).reshape(g.x_shape)


@_plan_cache.memoized(_forced_choices)
def plan_wgrad(g, dtype, *, tile=None, splits=None, sms=None) -> ConvPlan:
    """The launches of dw = conv3d's weight gradient: the GEMM tile and split-K (conv2d's planner over
    M = K/G, N = C/G*T*R*S, reduction N*O*P*Q), then, split, the fixed-order sum of the workspace."""
    _check_index_range(g)
    kg, taps = g.K // g.groups, (g.C // g.groups) * g.T * g.R * g.S
    out = math.prod(g.w_shape)
    variant, spec, splits, chunk = _choose(dtype, kg, taps, g.groups, g.N * g.O * g.P * g.Q, out, sms, tile, splits,
                                           min(_workspace_splits(MAX_SPLITS, out), MAX_GRID_YZ // g.groups),
                                           WGRAD_TILES)
    grid = (-(-taps // spec.bn), -(-kg // spec.bm), g.groups * splits)
    _check_grid(WGRAD_FAMILY, grid)
    launches = (Launch(WGRAD_FAMILY, f"{WGRAD_FAMILY}_{variant}", grid, (spec.threads, 1, 1)),)
    if splits > 1:
        launches += (reduce.plan_channel_sum(splits, out, 1),)
    return ConvPlan("wgrad", launches, tile=variant, splits=splits, chunk=chunk)


@functools.lru_cache(maxsize=256)
def _wgrad_walk(g):
    """(walk_q, walk_p, walk_o, walk_dy, walk_x, walk_q_end, walk_p_end, walk_o_end, walk_carry_q_x,
    walk_carry_p_x, walk_carry_o_x, walk_carry_o_dy) of conv3d_wgrad.cu: BK reduction rows (n, o, p, q)
    as steps of q*stride_w, p*stride_h, o*stride_d and the dy and x offsets, the ends of the first three,
    and the offset carries when they wrap."""
    pq, hw = g.P * g.Q, g.H * g.W
    opq, dhw = g.O * pq, g.D * hw
    (sd, sh, sw) = g.stride
    step_n, step_o, step_p, step_q = BK // opq, (BK % opq) // pq, (BK % pq) // g.Q, BK % g.Q
    return _walk_args(step_q * sw, step_p * sh, step_o * sd, step_n * g.K * opq + step_o * pq + step_p * g.Q + step_q,
                      step_n * g.C * dhw + step_o * sd * hw + step_p * sh * g.W + step_q * sw, g.Q * sw, g.P * sh,
                      g.O * sd, sh * g.W - g.Q * sw, sd * hw - g.P * sh * g.W, g.C * dhw - g.O * sd * hw,
                      g.K * opq - opq)


def wgrad(be, dy, x, g, *, tile=None, splits=None):
    """dweight of conv3d (K, C/G, T, R, S) from x and dy in place: split-K partial tiles, then a
    fixed-order sum over the splits."""
    plan = plan_wgrad(g, x.dtype, tile=tile, splits=splits, sms=device_sms(be))
    taps = (g.C // g.groups) * g.T * g.R * g.S
    workspace = backend.array_module(be).empty((plan.splits, g.K, taps), dtype=x.dtype)
    backend.launch(be, WGRAD_FAMILY, x.dtype, plan.main.kernel, plan.main.grid, plan.main.block,
                   (dy, x, workspace) + _geometry_args(g) + i32(g.groups, plan.splits, plan.chunk) + _wgrad_walk(g))
    if plan.splits == 1:
        return workspace.reshape(g.w_shape)
    return reduce.channel_sum(be, workspace, plan.splits, g.K * taps, 1).reshape(g.w_shape)


def bgrad(be, dy):
    """dbias: dy (N, K, O, P, Q) summed over N, O, P and Q in a fixed order."""
    n, k = dy.shape[:2]
    return reduce.channel_sum(be, dy, n, k, math.prod(dy.shape[2:]))

