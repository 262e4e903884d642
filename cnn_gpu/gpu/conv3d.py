"""Launch code of kernels/conv3d_fprop.cu, the implicit-GEMM 3-D convolution, for the "cuda" and "emu"
backends: its forward pass, and its input and weight gradients as convolutions of the same kernel.

`g` is a Conv3dGeometry (cnn_gpu.functional.conv3d). plan_fprop picks the tile and split-K with
conv2d's planner (cnn_gpu.gpu.conv._choose: the same tiles, wave model and split limits); `tile` and
`splits`, or a conv.forced(...) block, override it. The gradients reuse the forward kernel on
rearranged operands (device copies, cnn_gpu.backend.device_call):
- dgrad: dx is, per stride phase of its voxels (one for stride 1), the stride-1 convolution of dy with
  the filter taps that reach that phase, flipped and transposed to (C, K/G, T', R', S'), padded by minus
  the first dy offset per dimension (as conv2d's NumPy gather does its phases): no zero-inserted voxel is
  visited. A stride of (2, 2, 2) takes 8 launches, each phase's result copied into dx's strided voxels;
  conv2d_dgrad.cu runs all phases in one launch.
- wgrad: dw is the convolution of x, viewed as C/G "images" of G*N channels ((Cg, G, N) order), with
  dy as K filters of N channels each (groups G), stride and dilation swapped: the output's T x R x S
  "pixels" are the taps and its reduction is N*O*P*Q, split-K as the planner decides. The filter's
  O x P x Q taps usually pass the tap masks' fields, so x gets a zero-bordered copy first.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

from .. import backend
from ..functional.conv import _phase_taps
from . import _plan_cache, reduce
from ._grid import Launch, i32
from .conv import (BK, INDEX_LIMIT, MAX_GRID_YZ, MAX_SPLITS, SPATIAL_LIMIT, TILES as CONV2D_TILES, ConvPlan,
                   _check_grid, _choose, _forced_choices, _walk_args, _workspace_splits, check_element_counts,
                   device_sms)

FAMILY = "conv3d_fprop"
# Taps per dimension (depth, rows, columns) the kernel's tap-mask fields hold (kernels/conv3d_fprop.cu)
MASK_TAPS = (10, 11, 11)
# conv2d's tiles (igemm.cuh), but for the float64 small tile's 2 blocks an SM (kernels/conv3d_fprop.cu:
# CONV3D_SMALL_BLOCKS, at 128 registers)
TILES = {dtype: dict(tiles) for dtype, tiles in CONV2D_TILES.items()}
TILES[np.dtype(np.float64)]["small"] = dataclasses.replace(CONV2D_TILES[np.dtype(np.float64)]["small"], registers=128)


def _check_index_range(g) -> None:
    """ValueError where g's extents or element counts pass the kernel's 32-bit offsets (a padding may be
    negative here: dgrad's phases crop)."""
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
    """The copy of x a filter past the mask fields reads: the voxels its outputs reach, x at the padding."""
    if all(taps <= field for taps, field in zip((g.T, g.R, g.S), MASK_TAPS)):
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


@dataclasses.dataclass(frozen=True)
class DgradPhase:
    """One stride phase of dx (module docstring): its voxels dx[:, :, first[0]::stride_d, ...], the taps of
    each dimension that reach them (flipped order) and the stride-1 convolution of dy that makes them
    (None where no tap reaches them: they are zero)."""
    first: tuple
    taps: tuple
    geometry: object


@functools.lru_cache(maxsize=256)
def dgrad_phases(g) -> tuple:
    """dx's stride phases (one for stride 1), each a dense convolution of dy over the taps reaching it:
    conv2d's NumPy phase rule (functional.conv._phase_taps) per dimension."""
    phases = []
    sizes, taps = (g.D, g.H, g.W), (g.T, g.R, g.S)
    for first in itertools.product(*(range(min(stride, size)) for stride, size in zip(g.stride, sizes))):
        reach = [_phase_taps(*args) for args in zip(first, g.padding, g.dilation, g.stride, taps)]
        if not all(flipped for flipped, _, _ in reach):
            phases.append(DgradPhase(first, (), None))
            continue
        outputs = [len(range(start, size, stride)) for start, size, stride in zip(first, sizes, g.stride)]
        geometry = dataclasses.replace(
            g, C=g.K, D=g.O, H=g.P, W=g.Q, K=g.C, T=len(reach[0][0]), R=len(reach[1][0]), S=len(reach[2][0]),
            O=outputs[0], P=outputs[1], Q=outputs[2], stride=(1, 1, 1),
            padding=tuple(-offset for _, offset, _ in reach), dilation=tuple(step for _, _, step in reach),
            padding_extra=(0, 0, 0))
        phases.append(DgradPhase(first, tuple(tuple(flipped) for flipped, _, _ in reach), geometry))
    return tuple(phases)


def dgrad(be, dy, w, g, *, tile=None, splits=None):
    """dx of conv3d: per stride phase, the convolution of dy with the flipped filter taps reaching it."""
    xp = backend.array_module(be)
    G, cg, kg = g.groups, g.C // g.groups, g.K // g.groups
    # the filters as (C, K/G, T, R, S): dx's convolutions map dy's K channels to x's C
    by_input_channel = w.reshape(G, kg, cg, g.T, g.R, g.S).transpose(0, 2, 1, 3, 4, 5)
    transposed = backend.device_call(xp.ascontiguousarray, by_input_channel).reshape(g.C, kg, g.T, g.R, g.S)

    def phase_filter(taps):
        t, r, s = (list(dimension) for dimension in taps)
        return backend.device_call(lambda: xp.ascontiguousarray(transposed[:, :, t][:, :, :, r][:, :, :, :, s]))

    phases = dgrad_phases(g)
    if len(phases) == 1 and phases[0].geometry is not None:   # one phase: all of dx
        return fprop(be, dy, phase_filter(phases[0].taps), None, phases[0].geometry, tile=tile, splits=splits)
    dx = backend.device_call(xp.zeros, g.x_shape, dtype=dy.dtype)
    for phase in phases:
        if phase.geometry is not None:
            voxels = dx[(slice(None), slice(None)) + tuple(map(slice, phase.first, (None,) * 3, g.stride))]
            part = fprop(be, dy, phase_filter(phase.taps), None, phase.geometry, tile=tile, splits=splits)
            backend.device_call(xp.copyto, voxels, part)
    return dx


def wgrad_geometry(g):
    """The convolution of wgrad (module docstring): x as C/G images of G*N channels, dy the filters."""
    return dataclasses.replace(
        g, N=g.C // g.groups, C=g.groups * g.N, T=g.O, R=g.P, S=g.Q, O=g.T, P=g.R, Q=g.S, stride=g.dilation,
        dilation=g.stride, padding_extra=(0, 0, 0))


def wgrad(be, dy, x, g, *, tile=None, splits=None):
    """dweight of conv3d: the convolution of x with dy (module docstring), transposed to (K, C/G, T, R, S)."""
    xp = backend.array_module(be)
    G, cg = g.groups, g.C // g.groups
    images = backend.device_call(xp.ascontiguousarray, x.reshape(g.N, G, cg, -1).transpose(2, 1, 0, 3))
    filters = backend.device_call(xp.ascontiguousarray, dy.reshape(g.N, g.K, -1).transpose(1, 0, 2))
    h = wgrad_geometry(g)
    y = fprop(be, images.reshape(h.x_shape), filters.reshape(h.w_shape), None, h, tile=tile, splits=splits)
    return backend.device_call(xp.ascontiguousarray, y.transpose(1, 0, 2, 3, 4))


def bgrad(be, dy):
    """dbias: dy (N, K, O, P, Q) summed over N, O, P and Q in a fixed order."""
    n, k = dy.shape[:2]
    return reduce.channel_sum(be, dy, n, k, math.prod(dy.shape[2:]))

