"""What each launch of a convolution pass does: the launches of the pass's ConvPlan (cnn_gpu.gpu.conv,
or cnn_gpu.gpu.conv_tc for the tensor-core kernels of the "tf32" math mode and of float16; never
re-derived here),
each with its useful FLOPs and its compulsory DRAM traffic from the geometry; and a small run of
each GEMM kernel variant on the emulator, for its shared-memory profile."""
from __future__ import annotations

import math

import numpy as np

from ..gpu import conv as gpu_conv
from ..gpu import conv_tc, reduce
from .model import LaunchWork

PASSES = ("fprop", "dgrad", "wgrad")


def _plan(pass_name: str, g, dtype, sms: int, **overrides):
    if pass_name not in PASSES:
        raise ValueError(f"pass must be one of {', '.join(PASSES)}, got {pass_name!r}")
    if g.is_depthwise:
        raise ValueError("the roofline model covers the implicit-GEMM convolutions, not depthwise ones")
    plan = {"fprop": gpu_conv.plan_fprop, "dgrad": gpu_conv.plan_dgrad, "wgrad": gpu_conv.plan_wgrad}[pass_name]
    return plan(g, dtype, sms=sms, **overrides)


def _elements(pass_name: str, g) -> tuple:
    """(elements of the pass's two operands, of its output): fprop x, w -> y; dgrad dy, w -> dx;
    wgrad dy, x -> dw."""
    x, w, y = (math.prod(s) for s in (g.x_shape, g.w_shape, g.y_shape))
    return {"fprop": (x + w, y), "dgrad": (y + w, x), "wgrad": (y + x, w)}[pass_name]


def pass_launches(pass_name: str, g, dtype, sms: int, *, bias: bool = False, **overrides):
    """(plan, [(Launch, LaunchWork)]) of one pass as planned for a GPU of `sms` SMs (`overrides`:
    the planner's tile= and splits=, to model a choice it would not make). The main launch
    reads the pass's operands (fprop x, w and the bias; dgrad dy and w; wgrad dy and x) and writes
    its output (fprop y, dgrad dx, wgrad dw), or with split-K `splits` partial outputs that the one
    launch after it reads back (with the bias) to write the output. A launch before the main one is
    dgrad's filter transpose (w in, w out), or, first, the zero-bordered copy of x (fprop) or dy
    (dgrad) that a filter longer than the tap masks' 16 taps needs (the operand in, the copy out;
    the main launch then reads the copy). `bias` is fprop's: the SIMT dgrad adds a bias in a
    pass of its own (bias_add_bytes)."""
    plan = _plan(pass_name, g, dtype, sms, **overrides)
    return plan, list(zip(plan.launches, _works(pass_name, plan, g, dtype, bias and pass_name == "fprop")))


def _works(pass_name: str, plan, g, dtype, bias: bool, pipe: str = "fma", issued_flops=None,
           partial_item=None, prelude_bytes=None) -> list:
    """The LaunchWork of each launch of `plan`, a `pass_name` pass on geometry `g` (pass_launches
    states the traffic); the main launch's FLOPs run on `pipe`, `issued_flops` of them with padding;
    split-K partials of `partial_item` bytes (default: the dtype's), their sum written in the dtype;
    `bias`: the kernel (or with split-K the sum) reads a bias of the output's channels (fprop's, or
    on the tensor cores dgrad's: conv_transpose2d's). A launch before the main one moves
    `prelude_bytes` (default: the SIMT dgrad's filter transpose, w read and written)."""
    item = np.dtype(dtype).itemsize
    partial = partial_item or item
    operands, out = _elements(pass_name, g)
    bias_elements = {"fprop": g.K, "dgrad": g.C}.get(pass_name, 0) if bias else 0
    works = []
    padded = getattr(plan, "padded", None)
    if padded is not None:   # the SIMT plan's first launch: a zero-bordered copy of x (fprop) or dy (dgrad)
        source, planes = (g.x_shape, g.N * g.C) if pass_name == "fprop" else (g.y_shape, g.N * g.K)
        copy = planes * padded.height * padded.width
        works.append(LaunchWork(0, (math.prod(source) + copy) * item))
        operands += copy - math.prod(source)   # the main launch gathers from the copy
    before, after = plan.main_index - len(works), len(plan.launches) - plan.main_index - 1
    if before > (pass_name == "dgrad" or prelude_bytes is not None) or after > (plan.splits > 1):
        raise ValueError(f"{pass_name} plan launches {[launch.kernel for launch in plan.launches]}: the model "
                         f"knows no traffic for the extra launches")
    if prelude_bytes is None:
        prelude_bytes = 2 * math.prod(g.w_shape) * item
    works += [LaunchWork(0, prelude_bytes)] * before
    if plan.splits > 1:
        works += [LaunchWork(g.flops, operands * item + plan.splits * out * partial, pipe, issued_flops),
                  LaunchWork(0, plan.splits * out * partial + (bias_elements + out) * item)]
    else:
        works += [LaunchWork(g.flops, (operands + bias_elements + out) * item, pipe, issued_flops)]
    return works


# --- the tensor cores: float32 in the "tf32" math mode, float16 -------------------------------------
TC_PLANS = {"fprop": conv_tc.plan_fprop, "dgrad": conv_tc.plan_dgrad, "wgrad": conv_tc.plan_wgrad}


def tensor_pipe(dtype) -> str:
    """The tensor pipe a dtype's tensor-core kernels issue on: "fp16" for float16, else "tf32"."""
    return "fp16" if np.dtype(dtype) == np.float16 else "tf32"


def _tensor_core_steps(pass_name: str, g, plan, dtype) -> int:
    """The bm x bn x depth block steps (wgrad: bm x 128) the main launch of a tensor-core plan
    runs, all blocks together: every block tile steps through its whole reduction depth deep (16
    TF32 or 32 FP16 values: conv_tc.step_depth), padding included (fprop: R*S taps of C/G channels
    padded to `depth`, or with a flat plan the R*S*C/G flattened indices padded once:
    conv_tc.fprop_steps; dgrad: each stride phase's taps of K/G channels over that phase's pixels;
    wgrad: the N*P*Q pixels, or the _residues kernel's chunks of them: conv_tc.wgrad_tile_steps);
    split-K cuts the steps, adding none."""
    depth = conv_tc.step_depth(dtype)
    if pass_name == "wgrad":
        return conv_tc.wgrad_tiles(g, plan.tile, dtype, plan.dy_path) * conv_tc.wgrad_tile_steps(g, dtype, plan.dy_path)
    row_tiles = plan.main.grid[1] * g.groups
    kg = g.K // g.groups
    if pass_name == "fprop":
        return plan.main.grid[0] * row_tiles * conv_tc.fprop_steps(g, depth, conv_tc.is_flat(plan))
    phases = conv_tc.dgrad_phases(g)
    pixels = conv_tc.TILES[plan.tile].bn
    return row_tiles * sum(-(-(g.N * h * w) // pixels) * phases.steps(k, kg, depth)
                           for k, (h, w) in enumerate(phases.out_shape))


def tensor_core_launches(pass_name: str, g, dtype, sms: int, *, bias: bool = False, **overrides):
    """(plan, [(Launch, LaunchWork)], glue) of a pass on the tensor-core kernels as
    cnn_gpu.functional.conv routes it (float32 in the "tf32" mode, float16; conv_tc.plan_fprop /
    plan_dgrad / plan_wgrad, planned for `sms` SMs), or None where the pass stays on the SIMT
    kernels (a depthwise convolution; wgrad of a filter conv_tc.wgrad_supported refuses). The main
    launch's FLOPs run on the dtype's tensor pipe (tensor_pipe), issued over whole block steps
    (_tensor_core_steps); split-K partials are FP32. fprop's and dgrad's first launch makes their
    filter tiles (conv2d_tc_filter_tiles: the filter read, the padded tiles written). glue: (name,
    bytes) of the launcher's CuPy work outside the plan, modeled as one memory-bound launch each:
    wgrad's channel-major copy of dy where its plan makes one (plan.dy_path; dy read and
    written); wgrad's pixel table, dgrad's phase table and the filter tiles' tables are made once
    per geometry and cached, no work per call (the main launch reads wgrad's table:
    conv_tc.pixel_table_bytes), and wgrad's arrival counts are reused. fprop's and dgrad's split-K
    sum reads the FP32 partials and writes the output in the dtype (rounded by that launch);
    wgrad's kernel sums its own (_wgrad_work). `bias`: fprop's, or dgrad's (conv_transpose2d's),
    added by the kernel or with split-K by the sum. `overrides`: the plan_* function's forced
    choices (tile=, splits=, wgrad's dy_path=)."""
    if g.is_depthwise or (pass_name == "wgrad" and not conv_tc.wgrad_supported(g)):
        return None
    item, pipe = np.dtype(dtype).itemsize, tensor_pipe(dtype)
    plan = TC_PLANS[pass_name](g, dtype=dtype, sms=sms, **overrides)
    rows = conv_tc.TILES[plan.tile].bm     # 128, or 64 for the narrow variant
    columns = conv_tc.TILE_N if pass_name == "wgrad" else conv_tc.TILES[plan.tile].bn   # filter columns or pixels
    depth = conv_tc.step_depth(dtype)
    issued = 2 * rows * columns * depth * _tensor_core_steps(pass_name, g, plan, dtype)
    glue = []
    if plan.dy_path == "channel_major":
        glue.append((f"{pipe}_dy_channel_major", 2 * math.prod(g.y_shape) * item))
    if pass_name == "wgrad":
        works = [_wgrad_work(g, dtype, plan, pipe, issued)]
    else:
        parts = conv_tc.filter_tile_parts(g, pass_name, rows, depth, conv_tc.is_flat(plan))
        tiles_bytes = math.prod(g.w_shape) * item + 4 * conv_tc.filter_tile_words(parts, g.groups)
        works = _works(pass_name, plan, g, dtype, bias, pipe, issued, conv_tc.PARTIALS.itemsize, tiles_bytes)
    return plan, list(zip(plan.launches, works)), glue


def _wgrad_work(g, dtype, plan, pipe: str, issued_flops) -> LaunchWork:
    """The tensor-core wgrad launch's work: dy and x read, dw written once, the pixel table read;
    with partial outputs, each segment's FP32 partial of its tile written and read back by the
    block that sums the tile, but for that block's own (a tile's share of dw per segment but one:
    conv_tc.wgrad_segments less one a tile)."""
    item = np.dtype(dtype).itemsize
    operands, out = _elements("wgrad", g)
    partial_bytes = 0
    if plan.splits > 1:
        tiles = conv_tc.wgrad_tiles(g, plan.tile, dtype, plan.dy_path)
        segments = conv_tc.wgrad_segments(tiles, conv_tc.wgrad_tile_steps(g, dtype, plan.dy_path), plan.main.grid[0])
        partial_bytes = 2 * (segments - tiles) * -(-out // tiles) * conv_tc.PARTIALS.itemsize
    dram = (operands + out) * item + partial_bytes + conv_tc.pixel_table_bytes(g, dtype, plan.dy_path)
    return LaunchWork(g.flops, dram, pipe, issued_flops)


def bias_add_bytes(g, dtype) -> int:
    """DRAM bytes of the SIMT dgrad's bias pass (conv_transpose2d's bias, per channel of dx): dx
    read and written, the bias read."""
    return (2 * math.prod(g.x_shape) + g.C) * np.dtype(dtype).itemsize


def compulsory_bytes(pass_name: str, g, dtype) -> int:
    """DRAM bytes any kernel of a pass must move: its two operands read and its output written
    once each, in the dtype."""
    operands, out = _elements(pass_name, g)
    return (operands + out) * np.dtype(dtype).itemsize


def tf32_rounding_bytes(pass_name: str, g, dtype) -> int:
    """DRAM bytes of rounding a SIMT pass's two operands to TF32 before it runs (read and written)."""
    return 2 * _elements(pass_name, g)[0] * np.dtype(dtype).itemsize


def float16_simt_bytes(pass_name: str, g) -> list:
    """(name, DRAM bytes) of a float16 pass run on the float32 SIMT kernels: its two operands
    widened (read 2, write 4 bytes each) and its output rounded (read 4, write 2)."""
    operands, out = _elements(pass_name, g)
    return [("widen_float16", operands * 6), ("round_to_float16", out * 6)]


def bias_grad_launch(g, dtype):
    """(Launch, LaunchWork) of dbias: dy summed over N, P, Q (what gpu.conv.bgrad launches)."""
    launch = reduce.plan_channel_sum(g.N, g.K, g.P * g.Q)
    return launch, LaunchWork(0, reduce.channel_sum_bytes(g.N, g.K, g.P * g.Q, dtype))


# A 128 x 128 x 144 (fprop, dgrad) or 128 x 128 x 128 (wgrad) GEMM: whole tiles for every tile edge
# that divides 128, so the profiled blocks each do a full block's work (the 96-pixel tiles run 3
# images: 192 pixels). (x shape, w shape, padding).
REPRESENTATIVE = {
    "fprop": ((2, 16, 8, 8), (128, 16, 3, 3), 1),
    "dgrad": ((2, 128, 8, 8), (16, 128, 3, 3), 1),
    "wgrad": ((2, 128, 8, 8), (128, 128, 1, 1), 0),
}
# float16 steps are 32 channels deep: 32 channels per tap in fprop's and dgrad's reductions (128 x
# 128 x 288), so that its blocks too run whole steps
REPRESENTATIVE_FLOAT16 = {**REPRESENTATIVE, "fprop": ((2, 32, 8, 8), (128, 32, 3, 3), 1),
                          "dgrad": ((2, 128, 8, 8), (32, 128, 3, 3), 1)}
# fprop over the flattened reduction (conv_tc's _flat kernels): 8 channels of a 4x4 filter are 128
# flattened indices, 8 TF32 or 4 FP16 whole steps (16 or 32 steps unflattened)
FLAT = "_flat"
REPRESENTATIVE_FLAT = ((2, 8, 11, 11), (128, 8, 4, 4), 0)
GATHER = "_gather"   # wgrad reading dy element by element (conv_tc's _gather kernels), same shape
# wgrad reading dy in residue bands (conv_tc.RESIDUES_KERNEL): 8 bands of 128 output channels over
# 7 x 7 pixels (P*Q odd)
RESIDUES = "_residues"
REPRESENTATIVE_RESIDUES = ((2, 128, 7, 7), (1024, 128, 1, 1), 0)
# wgrad reading x by filter rows (conv_tc.TAP_ROWS_KERNEL): a 1 x 3 filter, whose 384 filter columns
# are 3 whole tiles, over 8 x 8 pixels (rows of a lane's 4 or 8 pixels)
ROWS = "_rows"
REPRESENTATIVE_ROWS = ((2, 128, 8, 8), (128, 128, 1, 3), (0, 1))


def profile_variant(plan) -> str:
    """The representative_run variant of a tensor-core plan's main kernel: its tile, with FLAT for
    fprop over the flattened reduction, GATHER for wgrad's _gather kernels (wgrad's _pairs and
    balanced kernels share the regular kernel's shared-memory traffic and take its run), ROWS for
    wgrad's x by filter rows, RESIDUES for wgrad's dy in residue bands."""
    if conv_tc.is_flat(plan):
        return plan.tile + FLAT
    if plan.main.kernel == conv_tc.TAP_ROWS_KERNEL:
        return plan.tile + ROWS
    if plan.main.kernel == conv_tc.RESIDUES_KERNEL:
        return plan.tile + RESIDUES
    return plan.tile + (GATHER if conv_tc.is_gather(plan) else "")


def representative_run(pass_name: str, tile, dtype, images: int = 1):
    """A function that runs the pass's `tile` variant (a name of conv_tc.TILES: the tensor-core
    kernels, for fprop maybe with FLAT: profile_variant) once on the emulator without split-K and
    returns (its main Launch, its useful FLOPs); the kernel then has whole tiles only. `images`
    times the batch: wgrad's reduction that many times longer over the same tiles."""
    from ..functional.geometry import conv_geometry
    flat, gather, rows = tile.endswith(FLAT), tile.endswith(GATHER), tile.endswith(ROWS)
    residues = tile.endswith(RESIDUES)
    tile = tile.removesuffix(FLAT).removesuffix(GATHER).removesuffix(ROWS).removesuffix(RESIDUES)
    shapes = REPRESENTATIVE_FLOAT16 if np.dtype(dtype) == np.float16 else REPRESENTATIVE
    x_shape, w_shape, padding = (REPRESENTATIVE_FLAT if flat else REPRESENTATIVE_ROWS if rows
                                 else REPRESENTATIVE_RESIDUES if residues else shapes[pass_name])
    if tile in conv_tc.TILES and conv_tc.TILES[tile].bn != conv_tc.TILE_N:   # fprop, dgrad: 3 x 8 x 8 pixels
        x_shape = (3,) + x_shape[1:]   # whole tiles of 96
    x_shape = (x_shape[0] * images,) + x_shape[1:]
    g = conv_geometry(x_shape, w_shape, 1, padding)

    def run():
        rng = np.random.default_rng(0)
        x, w, dy = (rng.standard_normal(s).astype(dtype) for s in (g.x_shape, g.w_shape, g.y_shape))
        if tile in conv_tc.TILES:
            if pass_name == "fprop":
                conv_tc.fprop("emu", x, w, None, g, tile=tile, splits=1, flat=flat)
                return conv_tc.plan_fprop(g, dtype=dtype, tile=tile, splits=1, flat=flat).main, g.flops
            if pass_name == "dgrad":
                conv_tc.dgrad("emu", dy, w, g, tile=tile, splits=1)
                return conv_tc.plan_dgrad(g, dtype=dtype, tile=tile, splits=1).main, g.flops
            dy_path = "gather" if gather else "residues" if residues else None
            conv_tc.wgrad("emu", dy, x, g, tile=tile, splits=1, dy_path=dy_path)
            return conv_tc.plan_wgrad(g, dtype=dtype, tile=tile, splits=1, dy_path=dy_path).main, g.flops
        if pass_name == "fprop":
            gpu_conv.fprop("emu", x, w, None, g, tile=tile, splits=1)
        elif pass_name == "dgrad":
            gpu_conv.dgrad("emu", dy, w, g, tile=tile, splits=1)
        else:
            gpu_conv.wgrad("emu", dy, x, g, tile=tile, splits=1)
        plan = _plan(pass_name, g, dtype, gpu_conv.device_sms("emu"), tile=tile, splits=1)
        return plan.main, g.flops
    return run
