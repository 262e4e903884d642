"""The SASS report (cnn_gpu.sass, `cnn-gpu kernels --sass`): the loop and counting rules on a
hand-written nvdisasm listing, then on CUBINs NVRTC compiles and nvdisasm disassembles (a planted
loop of 8 fmaf, a spilling kernel, the real conv kernels, the CLI's JSON rows and the disk cache).
The compiled tests skip, with the reason, where NVRTC or nvdisasm (pip nvidia-cuda-nvdisasm) is
missing or cannot read the arch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnn_gpu import backend, nvrtc, sass
from cnn_gpu.cli import main as cli_main
from cnn_gpu.sass import disasm, loops, mix, report
from test_nvrtc_kernels import PROBE as SPILLING_PROBE  # its kernel `spills` spills at 1024 threads


def _needs_tools(arch: str):
    reason = nvrtc.why_unavailable() or sass.why_unavailable(arch)
    return pytest.mark.skipif(bool(reason), reason=f"SASS report unavailable for {arch}: {reason}")


# Shaped like nvdisasm -c output. An outer loop (0x0020-0x0160) around an inner one (0x0050-0x0130)
# that holds every FFMA; in the inner one a guarded block (counted: the guard passes), a predicated
# load (counted), and an if/else whose else arm (FADD, FMUL) the then arm jumps over (left out).
LISTING = """
//--------------------- .text.nested              --------------------------
        .section        .text.nested,"ax",@progbits
nested:
.text.nested:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   HFMA2.MMA R3, -RZ, RZ, 0, 0 ;
.L_x_0:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   STS.128 [R0], R4 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_1:
        /*0050*/                   LDS.128 R8, [R0] ;
        /*0060*/                   LDS.64 R12, [R0+0x10] ;
        /*0070*/                   LDS R14, [R0+0x20] ;
        /*0080*/                   FFMA R20, R8, R9, R20 ;
        /*0090*/               @P0 BRA `(.L_x_2) ;
        /*00a0*/                   FFMA.FTZ R21, R10, R11, R21 ;
        /*00b0*/              @!P1 LDG.E.CONSTANT R15, desc[UR4][R2.64] ;
.L_x_2:
        /*00c0*/               @P2 BRA `(.L_x_3) ;
        /*00d0*/                   FFMA R22, R12, R13, R22 ;
        /*00e0*/                   BRA `(.L_x_4) ;
.L_x_3:
        /*00f0*/                   FADD R22, R22, R14 ;
        /*0100*/                   FMUL R22, R22, R14 ;
.L_x_4:
        /*0110*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0120*/                   ISETP.NE.AND P3, PT, R1, R5, PT ;
        /*0130*/               @P3 BRA `(.L_x_1) ;
        /*0140*/                   STL [R1], R20 ;
        /*0150*/                   IADD3 R7, R7, 0x1, RZ ;
        /*0160*/               @P4 BRA `(.L_x_0) ;
        /*0170*/                   LDL R20, [R1] ;
        /*0180*/                   STG.E desc[UR4][R2.64], R20 ;
        /*0190*/                   EXIT ;
.L_x_5:
        /*01a0*/                   BRA `(.L_x_5);
        /*01b0*/                   NOP;
        /*01c0*/                   NOP;
.L_x_6:


//--------------------- .text.flat                --------------------------
        .section        .text.flat,"ax",@progbits
flat:
.text.flat:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*0020*/               @P0 EXIT ;
        /*0030*/                   LDG.E.64 R2, desc[UR4][R4.64] ;
        /*0040*/                   DFMA R2, R2, R2, R2 ;
        /*0050*/                   STG.E.64 desc[UR4][R4.64], R2 ;
        /*0060*/                   EXIT ;
.L_x_9:
        /*0070*/                   BRA `(.L_x_9);
"""


def test_listing_is_parsed_with_branch_targets():
    functions = disasm.parse(LISTING)
    assert sorted(functions) == ["flat", "nested"]
    nested = functions["nested"]
    assert len(nested.instructions) == 27  # up to the trap BRA; the NOP padding is dropped
    by_address = {ins.address: ins for ins in nested.instructions}
    assert by_address[0x90].target == 0xC0 and by_address[0x90].conditional
    assert by_address[0xE0].target == 0x110 and not by_address[0xE0].conditional
    assert by_address[0xB0].guard == "@!P1" and by_address[0xB0].opcode == "LDG.E.CONSTANT"
    assert loops.loop_regions(nested) == [loops.Region(0x20, 0x160), loops.Region(0x50, 0x130)]


def test_hot_loop_is_the_inner_steady_state_path():
    row = sass.hot_loop_mix(disasm.parse(LISTING)["nested"], "float32", "sm_90")
    assert row["hot_loop"] == "0x0050-0x0130"
    assert row["instructions"] == 13
    assert (row["ffma"], row["fma"], row["fp_other"]) == (3, 3, 0)  # the else arm is left out
    assert row["lds_bits"] == [128, 64, 32] and row["lds"] == 3
    assert row["ldg_bits"] == [32] and row["sts"] == 0 and row["bar"] == 0
    assert (row["branches"], row["integer"]) == (4, 2)
    assert sum(row[name] for name in mix.COUNTS if name not in ("instructions", "fma")) == row["instructions"]
    assert row["fma_share"] == pytest.approx(3 / 13)
    assert (row["local_memory_loop"], row["local_memory"]) == (0, 2)
    assert row["kernel_instructions"] == 27


def test_function_without_loops_is_measured_on_its_entry_path():
    row = sass.hot_loop_mix(disasm.parse(LISTING)["flat"], "float64", "sm_90")
    assert row["hot_loop"] is None
    assert (row["instructions"], row["dfma"], row["branches"]) == (7, 1, 2)
    assert row["ldg_bits"] == [64] and row["stg_bits"] == [64]
    assert row["issue_ceiling"] == pytest.approx((1 / 7) / 0.5)


def test_hfma2_move_idiom_is_not_an_fma():
    move, real = disasm.parse(
        "//--------------------- .text.h  ---\n"
        "        /*0000*/                   HFMA2.MMA R3, -RZ, RZ, 0, 0 ;\n"
        "        /*0010*/                   HFMA2 R4, R5, R6, R4 ;\n")["h"].instructions
    assert mix.classify(move) == "integer" and mix.classify(real) == "hfma2"


@pytest.mark.parametrize("dtype, arch, share, ceiling", [
    ("float32", "sm_90", 0.65, 0.65),   # 128 FP32 lanes per SM: every other instruction costs an FFMA slot
    ("float32", "sm_86", 0.45, 0.45),
    ("float32", "sm_80", 0.45, 0.90),   # 64 lanes: an FFMA every other clock
    ("float32", "sm_80", 0.65, 1.0),
    ("float64", "sm_90", 0.25, 0.50),   # 64 FP64 lanes per SM
    ("float64", "sm_80", 0.20, 0.80),   # 32 FP64 lanes per SM
    ("float64", "sm_86", 0.01, 0.64),   # 2 FP64 lanes per SM
])
def test_issue_ceiling_rule(dtype, arch, share, ceiling):
    fma, other = ("ffma", "dfma") if dtype == "float32" else ("dfma", "ffma")
    counts = {"instructions": 1000, fma: round(share * 1000), other: 500}   # the other FMA never counts
    assert sass.issue_ceiling(counts, dtype, arch) == pytest.approx(ceiling)


def test_issue_ceiling_refuses_what_it_has_no_rate_for():
    counts = {"instructions": 10, "ffma": 5, "dfma": 0}
    with pytest.raises(TypeError, match="int32"):
        sass.issue_ceiling(counts, "int32", "sm_90")
    assert sass.issue_ceiling(counts, "float16", "sm_90") == 0.5   # computes in FP32: FFMA
    with pytest.raises(ValueError, match="sm_61"):
        sass.issue_ceiling(counts, "float32", "sm_61")


PLANTED = r"""
extern "C" __global__ void __launch_bounds__(128) eight_fma(float* out, const float* in, int n)
{
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = in[j * 128 + threadIdx.x];
    const float* column = in + 1024 + threadIdx.x;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        const float a = column[i * 128];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = fmaf(acc[j], a, 1.0f + j);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j * 128 + threadIdx.x] = acc[j];
}
"""


EPILOGUE = r"""
extern "C" __global__ void __launch_bounds__(128) main_then_merge(float* out, const float* in, const float* partial,
                                                                   int n, int parts)
{
    float sum = 0.0f;
#pragma unroll 1
    for (int i = 0; i < n; ++i) sum += in[i * 128 + threadIdx.x];   // the work: no FMA
    float merged = sum;
#pragma unroll 1
    for (int k = 0; k < parts; ++k) {   // other blocks' partials, through L2: FMAs, once per output
        const float p = __ldcg(&partial[k * 128 + threadIdx.x]);
        merged = fmaf(merged, p, 1.0f);
        merged = fmaf(merged, p, 2.0f);
    }
    out[threadIdx.x] = merged;
}

extern "C" __global__ void __launch_bounds__(128) merge_only(float* out, const float* partial, int parts)
{
    float merged = 0.0f;
#pragma unroll 1
    for (int k = 0; k < parts; ++k) merged = fmaf(merged, __ldcg(&partial[k * 128 + threadIdx.x]), 1.0f);
    out[threadIdx.x] = merged;
}
"""


@_needs_tools("sm_90")
def test_a_loop_combining_other_blocks_partials_is_the_hot_loop_only_when_alone():
    """A loop whose global loads are all GPU-coherent (__ldcg: LDG.E.STRONG.GPU) is a reduction's
    epilogue: the loop over the elements is the hot one although the merge has the FMAs, and a
    kernel with nothing but a merge is measured on it."""
    cubin, _ = nvrtc.compile_cubin(EPILOGUE, "epilogue.cu", "sm_90", ("-ftz=true",))
    functions = sass.disassemble(cubin, "sm_90")
    both = sass.hot_loop_mix(functions["main_then_merge"], "float32", "sm_90")
    assert both["fma"] == 0 and both["ldg_bits"] == [32]
    alone = sass.hot_loop_mix(functions["merge_only"], "float32", "sm_90")
    assert alone["fma"] == 1 and alone["ldg_bits"] == [32]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_planted_loop_of_eight_fmaf(arch):
    if reason := nvrtc.why_unavailable() or sass.why_unavailable(arch):
        pytest.skip(f"SASS report unavailable for {arch}: {reason}")
    cubin, _ = nvrtc.compile_cubin(PLANTED, "planted.cu", arch, ("-ftz=true",))
    row = sass.hot_loop_mix(sass.disassemble(cubin, arch)["eight_fma"], "float32", arch)
    assert row["hot_loop"] is not None
    assert (row["ffma"], row["fma"], row["mma"]) == (8, 8, 0)
    assert row["ldg_bits"] == [32] and row["stg"] == 0 and row["branches"] == 1
    assert row["fma_share"] == pytest.approx(8 / row["instructions"])
    assert 8 < row["instructions"] <= 16
    assert row["local_memory"] == 0


@_needs_tools("sm_90")
def test_spilling_kernel_shows_local_memory():
    cubin, _ = nvrtc.compile_cubin(SPILLING_PROBE, "probe.cu", "sm_90")
    row = sass.hot_loop_mix(sass.disassemble(cubin, "sm_90")["spills"], "float32", "sm_90")
    assert row["local_memory_loop"] > 0 and row["local_memory"] >= row["local_memory_loop"]


@_needs_tools("sm_90")
def test_conv_fprop_tiles_on_sm_90():
    rows = {row["kernel"]: row for row in sass.kernel_rows("conv2d_fprop", "float32", "sm_90")}
    assert {"conv2d_fprop_large", "conv2d_fprop_small"} <= set(rows)
    for row in rows.values():
        assert 0.3 < row["fma_share"] < 0.95, row
        assert row["ffma"] >= 64 and row["lds"] > 0 and row["bar"] >= 1, row
        assert row["local_memory"] == 0 and row["local_memory_loop"] == 0, row
        assert row["issue_ceiling"] == pytest.approx(row["ffma"] / row["instructions"])
        assert 0 < row["registers"] <= 255
    assert rows["conv2d_fprop_large"]["fma_share"] > 0.5
    assert rows["conv2d_fprop_large"]["fma_share"] > rows["conv2d_fprop_small"]["fma_share"]


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pass_name, share_cost", [("fprop", 0.03), ("dgrad", 0.03), ("wgrad", 0.05)])
def test_conv3d_tiles_keep_the_2d_hot_loop(pass_name, share_cost, dtype):
    """conv3d_<pass>.cu is conv2d_<pass>.cu's tile with a depth coordinate: per tile its sm_90 hot loop
    issues the same FMAs, global loads and barriers and as many shared loads (or one fewer), with no local
    memory, and the depth costs at most share_cost of FMA share. fprop and dgrad: one more carry and a
    three-field tap select, 3 points (float32 large: fprop 83.3% against 84.9%, dgrad 84.6% against 86.1%;
    dgrad's filter transpose is 2-D's too). wgrad: a third bounds test of each gathered value, the depth
    walk and the ring's test of every step (its untested rounds spilled), 5 points (3.8 at most: float32
    wide 76.7% against 80.5%)."""
    planar = {row["kernel"].replace("conv2d", "conv3d"): row
              for row in sass.kernel_rows(f"conv2d_{pass_name}", dtype, "sm_90")}
    rows = {row["kernel"]: row for row in sass.kernel_rows(f"conv3d_{pass_name}", dtype, "sm_90")}
    assert set(rows) == set(planar) and len(rows) == {"dgrad": 5}.get(pass_name, 4)
    for name, row in rows.items():
        for column in ("fma", "ldgsts", "bar"):
            assert row[column] == planar[name][column], (name, column, row[column], planar[name][column])
        # no more shared loads than 2-D's: at its 168-register cap NVRTC 12.9 reloads one more fragment in
        # conv2d_dgrad_wide float32 (106 LDS, 105 in every other float32 tile of either)
        assert planar[name]["lds"] - 1 <= row["lds"] <= planar[name]["lds"], (name, row["lds"], planar[name]["lds"])
        if row["ffma"]:   # a tile, not the filter transpose
            assert planar[name]["fma_share"] - share_cost < row["fma_share"] <= planar[name]["fma_share"], name
        assert row["local_memory"] == 0 and row["local_memory_loop"] == 0, row


# An SM issues 4 warp-instructions (128 lane-instructions) a clock (one per sub-partition; mix.py)
LANE_INSTRUCTIONS_PER_SM_CLOCK = 128


def _streaming_budget(bytes_per_element: int) -> float:
    """The most instructions an element a loop streaming `bytes_per_element` from DRAM may issue and
    still keep up with an H100's DRAM (its spec: bandwidth per SM and clock)."""
    from cnn_gpu.roofline.specs import spec
    h100 = spec("h100")
    dram_bytes_per_sm_clock = h100.dram_gbs * 1e9 / h100.sms / h100.clock_hz
    return LANE_INSTRUCTIONS_PER_SM_CLOCK * bytes_per_element / dram_bytes_per_sm_clock


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chunked_reductions_issue_few_enough_instructions_to_stream_at_dram_speed(dtype):
    """channel_sum_block (one array), batch_norm_backward_sums (x and dy) and batch_norm_stats (x):
    4 elements a hot-loop iteration (ACCUMULATORS; float16's statistics and sum 8: STATS_LOADS,
    SUM_LOADS), their offsets advanced by additions (ChannelCursor) and the per-element bounds
    tests only in the last
    round (for_each_round). Recomputing (n*C + c)*HW + i and testing each element took channel_sum
    35 instructions an element in float16 and the sums 48: issue-bound, below DRAM speed. The
    statistics (their loop over the elements: the merging of chunk moments is an epilogue,
    loops.py) were 42 an element; float16's stayed ~1% over their budget at 4 a round (20.25
    for 19.9: the Welford reciprocal a round), 17.6 at 8 with 8 running moments, 19 at 8 applied as
    two rounds of 4 (two reciprocals); float16 channel_sum_block 15.75 at 4, 13 at 8."""
    size = np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for family in ("reduce", "batch_norm")
            for row in sass.kernel_rows(family, dtype, "sm_90")}
    for kernel, arrays in (("channel_sum_block", 1), ("batch_norm_backward_sums", 2), ("batch_norm_stats", 1)):
        row = rows[kernel]
        per_round = 8 if dtype == "float16" and kernel != "batch_norm_backward_sums" else 4
        assert len(row["ldg_bits"]) == per_round * arrays and set(row["ldg_bits"]) == {8 * size}, row
        per_element = row["instructions"] / per_round
        assert per_element <= _streaming_budget(arrays * size), (kernel, per_element)
        assert per_element <= 21 * arrays, (kernel, per_element)   # measured 16 to 20.25 an array read


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_elementwise_kernels_issue_every_load_of_a_round_before_its_first_store(dtype):
    """for_each_element (common.cuh; the element-wise maps and the element-wise losses) gives a thread
    ELEMENTS_PER_THREAD elements a round: the hot
    loop (one round, `#pragma unroll 1`) issues all their loads before any store, so a thread keeps
    4 elements of each input in flight (one element a thread kept 2 bytes of a float16 input: too
    few for DRAM speed by Little's law). Also within the streaming budget per element."""
    from cnn_gpu.gpu._grid import ELEMENTS_PER_THREAD
    functions = {family: sass.disassemble(nvrtc.compile_as_backend(backend.kernel_source(family), f"{family}.cu",
                                                                   dtype, "sm_90")[0], "sm_90")
                 for family in ("elementwise", "loss")}
    size = np.dtype(dtype).itemsize
    maps = [("elementwise", kernel, 1) for kernel in ELEMENTWISE_MAPS] + [
        ("elementwise", kernel.replace("_forward", "_backward").replace("hardshrink", "shrink"), 2)
        for kernel in ELEMENTWISE_MAPS if kernel != "softshrink_forward"]
    maps += [("elementwise", "add_relu_forward", 2), ("elementwise", "relu_backward_of_sum", 3),
             ("elementwise", "glu_forward", 2), ("elementwise", "glu_backward", 3),
             ("loss", "regression_loss_rows", 3), ("loss", "binary_cross_entropy_rows", 4)]
    for family, kernel, inputs in maps:
        _, path = loops.hot_loop(functions[family][kernel], lambda p: 0)
        first_store = next(i for i, ins in enumerate(path) if ins.base == "STG")
        loads = [ins for ins in path if ins.base == "LDG"]
        assert len(loads) == ELEMENTS_PER_THREAD * inputs, (kernel, [ins.opcode for ins in loads])
        assert all(ins.base != "LDG" for ins in path[first_store:]), (kernel, "a load after a store")
        if kernel not in TRANSCENDENTAL_MAPS:
            assert len(path) / ELEMENTS_PER_THREAD <= _streaming_budget((inputs + 1) * size), (kernel, len(path))


# the maps of one input (each with its backward pass of dy and x) in kernels/elementwise.cu
ELEMENTWISE_MAPS = ("relu_forward", "leaky_relu_forward", "sigmoid_forward", "tanh_forward", "silu_forward",
                    "gelu_forward", "gelu_tanh_forward", "hardtanh_forward", "hardsigmoid_forward",
                    "hardswish_forward", "elu_forward", "mish_forward", "softplus_forward", "log_sigmoid_forward",
                    "softsign_forward", "tanhshrink_forward", "hardshrink_forward", "softshrink_forward",
                    "threshold_forward")
# Maps whose transcendentals take more instructions an element than the streaming budget (their load
# order is checked, not the budget). Instructions an element, sm_90, float16 (budget 39.9 for one input,
# 59.9 for two), before the float16 builds took __expf and __fdividef (common.cuh: map_exp, map_divide)
# -> after: elu_forward 43.5 -> 27.5, elu_backward 33 -> 22 (31 and 27 with selu's and celu's scale and
# input_scale), mish_forward 48 -> 28.5, mish_backward
# 97.5 -> 45.5, gelu_forward 64 -> 35.5 and gelu_backward 81.5 -> 40 (erfc by one exponential and a
# polynomial), gelu_tanh_forward 40.5 -> 22.5, silu_forward 38 -> 15, sigmoid_backward 40 -> 23 and
# tanh_backward 35.5 -> 25 (from exp(-|x|)); float32 was within its budget (twice float16's) throughout.
# binary_cross_entropy_rows (budget 99.9: input, target, the gradient): 111.25 -> 84.75 on the path
# measured, its from_logits arm 81.5, but its probabilities arm 104: two accurate logs (logf, log1pf) for
# the loss, which stays FP32 (a fast log's 2^-21.4 absolute error near 1 is large beside a small loss)
TRANSCENDENTAL_MAPS = ("binary_cross_entropy_rows",)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_softmax_kernels_load_elements_and_keep_column_walks_in_flight(dtype):
    """kernels/softmax.cu: every load is one element of the dtype (float16 read as FP16, never
    widened in memory), and the strided column walks, unrolled by 4 (the split walks by 2), issue at
    least 4 (2) loads of each array they read in their hot path (a walk of one load at a time waits a
    DRAM latency an element)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("softmax", dtype, "sm_90")}
    assert set(rows) == {f"softmax_{p}_{layout}" for p in ("forward", "backward")
                         for layout in ("rows", "columns", "split")}
    for kernel, row in rows.items():
        assert row["ldg_bits"] and set(row["ldg_bits"]) == {size_bits}, (kernel, row["ldg_bits"])
        assert row["local_memory"] == 0, kernel
    for kernel, loads in (("softmax_forward_columns", 4), ("softmax_backward_columns", 8),
                          ("softmax_forward_split", 2), ("softmax_backward_split", 4)):
        assert len(rows[kernel]["ldg_bits"]) >= loads, (kernel, rows[kernel]["ldg_bits"])


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_row_norm_kernels_load_elements_and_keep_column_walks_in_flight(dtype):
    """kernels/row_norm.cu: every load is one element of the dtype (float16 read as FP16, never
    widened in memory), an acc_t statistic or, in the wide kernels, a 16-byte pack; no local
    memory; the _unaligned row walks, unrolled by 2, and the column walk of the parameter
    gradients, by 4, issue at least 2 and 4 loads of each array they read in their hot path."""
    size_bits = 8 * np.dtype(dtype).itemsize
    acc_bits = 32 if dtype == "float16" else size_bits
    rows = {row["kernel"]: row for row in sass.kernel_rows("row_norm", dtype, "sm_90")}
    walks = ("row_norm_forward", "row_norm_slice_stats", "row_norm_backward_dx", "row_norm_slice_sums")
    assert set(rows) == {*walks, *(f"{kernel}_unaligned" for kernel in walks), "row_norm_param_grads_planes",
                         "row_norm_param_grads_columns"}
    for kernel, row in rows.items():
        assert row["ldg_bits"] and set(row["ldg_bits"]) <= {size_bits, acc_bits, 128}, (kernel, row["ldg_bits"])
        assert row["local_memory"] == 0, kernel
        assert (128 in row["ldg_bits"]) == (kernel in walks), (kernel, row["ldg_bits"])
    columns = rows["row_norm_param_grads_columns"]["ldg_bits"]
    assert columns.count(size_bits) >= 8, columns   # dy and x, 4 rows each
    for kernel in ("row_norm_forward_unaligned", "row_norm_backward_dx_unaligned"):   # 3 walks of x; 2 of dy and x
        assert rows[kernel]["ldg_bits"].count(size_bits) >= 6, (kernel, rows[kernel]["ldg_bits"])


# kernels/row_norm.cu's wide kernels: (arrays read, arrays written) of each walk over a row or slice
ROW_NORM_WALKS = {"row_norm_forward": [(1, 0), (1, 0), (1, 1)], "row_norm_slice_stats": [(1, 0), (1, 0)],
                  "row_norm_backward_dx": [(2, 0), (2, 1)], "row_norm_slice_sums": [(2, 0)]}


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_row_norm_walks_load_16_byte_packs_within_the_streaming_budget(dtype):
    """The wide kernels' row walks (for_each_pack: packs of 16 bytes, unrolled by 2) load and store
    each array they stream 16 bytes at a time, 2 packs an iteration, and issue few enough
    instructions an element to keep up with an H100's DRAM for the bytes the walk moves. One
    element a load took the forward's walks 5.5, 6.5 and 27.75 instructions an element in float32
    and 8.5, 9.5 and 34.75 in float16; the backward's 23.25 and 26.25 (float16 28.5 and 33.25)."""
    functions = sass.disassemble(nvrtc.compile_as_backend(backend.kernel_source("row_norm"), "row_norm.cu", dtype,
                                                          "sm_90")[0], "sm_90")
    size = np.dtype(dtype).itemsize
    pack = 16 // size
    for kernel, expected in ROW_NORM_WALKS.items():
        function = functions[kernel]
        regions = loops.loop_regions(function)
        found = []
        for region in regions:
            if any(other != region and region.contains(other.start) for other in regions):
                continue   # an outer loop (over rows and slices)
            path = loops.steady_path(function, region)
            wide_loads = sum(ins.base == "LDG" and ".128" in ins.opcode for ins in path)
            wide_stores = sum(ins.base == "STG" and ".128" in ins.opcode for ins in path)
            if wide_loads and wide_loads % 2 == 0:   # the unrolled walk (an odd last pack: its own loop)
                found.append((wide_loads // 2, wide_stores // 2, len(path) / (2 * pack)))
        # each walk at least once (NVRTC may copy one per has_weight / has_bias case), nothing else
        walks = [(reads, writes) for reads, writes, _ in found]
        assert set(walks) == set(expected) and len(walks) >= len(expected), (kernel, found)
        for reads, writes, per_element in found:
            assert per_element <= _streaming_budget((reads + writes) * size), (kernel, found)
            # measured 3 to 12 an array moved (float64's y: 24 for x and y); one element a load: up to 17.4
            assert per_element <= 12.5 * (reads + writes), (kernel, found)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_pad_kernels_copy_elements_and_gather_without_atomics(dtype):
    """kernels/pad.cu: every load and store of the hot loops is one element of the dtype (float16
    moved as FP16, never widened in memory), no local memory, and no atomic anywhere in either
    kernel (the hot-loop mix counts only its loop): the backward pass is a gather, each input
    pixel's gradient summed by its own thread (deterministic)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("pad", dtype, "sm_90")}
    assert set(rows) == {"pad_forward", "pad_backward"}
    for kernel, row in rows.items():
        assert row["ldg_bits"] and set(row["ldg_bits"]) == {size_bits}, (kernel, row["ldg_bits"])
        assert row["local_memory"] == 0, kernel
    assert set(rows["pad_forward"]["stg_bits"]) == {size_bits}, rows["pad_forward"]["stg_bits"]
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("pad"), "pad.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        atomics = [ins.opcode for ins in function.instructions if mix._MEMORY.get(ins.base) == "atomic"]
        assert not atomics, (kernel, atomics)


# kernels/optim.cu per kernel: the arrays an element loads and stores, (element-typed, acc_t-typed)
# each: the parameter, its gradient, the rule's state (acc_t) and a float16 parameter's FP32 master.
OPTIMIZER_ARRAYS = {"sgd_step": ((2, 0), (1, 0)), "sgd_momentum_step": ((2, 1), (1, 1)),
                    "adam_step": ((2, 2), (1, 2)), "adam_amsgrad_step": ((2, 3), (1, 3)), "unscale_grads": ((1, 0), (1, 0)),
                    "sgd_step_master": ((1, 1), (1, 1)), "sgd_momentum_step_master": ((1, 2), (1, 2)),
                    "adam_step_master": ((1, 3), (1, 3)), "adam_amsgrad_step_master": ((1, 4), (1, 4)),
                    "rmsprop_step": ((2, 3), (1, 3)), "rmsprop_step_master": ((1, 4), (1, 4)),
                    "adagrad_step": ((2, 1), (1, 1)), "adagrad_step_master": ((1, 2), (1, 2)),
                    **{f"{rule}_step": ((2, 2), (1, 2)) for rule in ("adamax", "nadam", "radam", "adadelta")},
                    **{f"{rule}_step_master": ((1, 3), (1, 3)) for rule in ("adamax", "nadam", "radam", "adadelta")}}


def _optimizer_bytes(kernel, dtype):
    """(bytes an element loads, bytes it loads and stores) of a kernels/optim.cu kernel."""
    size = np.dtype(dtype).itemsize
    acc_size = 4 if size == 2 else size
    (loads, acc_loads), (stores, acc_stores) = OPTIMIZER_ARRAYS[kernel]
    loaded = loads * size + acc_loads * acc_size
    return loaded, loaded + stores * size + acc_stores * acc_size


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_optimizer_kernels_issue_every_load_of_a_round_before_its_first_store(dtype):
    """The optimizer updates and unscale_grads walk each slot by for_each_element's rounds: the hot
    loop issues a round's loads of every array (ELEMENTS_PER_THREAD elements each) before any store
    (one element a thread left float16 sgd_step 65% and unscale_grads 32% of Little's law's bytes in
    flight on an H100), within the streaming budget per element."""
    from cnn_gpu.gpu._grid import ELEMENTS_PER_THREAD
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("optim"), "optim.cu", dtype, "sm_90")
    functions = sass.disassemble(cubin, "sm_90")
    kernels = [k for k in OPTIMIZER_ARRAYS if dtype == "float16" or not k.endswith("_master")]
    assert sorted(kernels) == sorted(functions)
    for kernel in kernels:
        (loads, acc_loads), _ = OPTIMIZER_ARRAYS[kernel]
        _, path = loops.hot_loop(functions[kernel], lambda p: 0)
        first_store = next(i for i, ins in enumerate(path) if ins.base == "STG")
        assert sum(ins.base == "LDG" for ins in path) == ELEMENTS_PER_THREAD * (loads + acc_loads), kernel
        assert all(ins.base != "LDG" for ins in path[first_store:]), (kernel, "a load after a store")
        _, moved = _optimizer_bytes(kernel, dtype)
        assert len(path) / ELEMENTS_PER_THREAD <= _streaming_budget(moved), (kernel, len(path))


# The memory-bound kernels of a training step (bench.modeled._train_step's): per (family, kernel)
# the arrays whose elements a thread's round loads, and how many of each (for_each_element and
# batch norm's element passes: ELEMENTS_PER_THREAD; the chunked reductions: ACCUMULATORS; float16's
# batch norm passes and channel sums twice as many, and the optimizer's kernels, ELEMENTS_PER_THREAD
# elements of OPTIMIZER_ARRAYS', are set by the test).
STEP_STREAMS = {("elementwise", "add_relu_forward"): (2, 4), ("elementwise", "relu_backward"): (2, 4),
                ("elementwise", "relu_backward_of_sum"): (3, 4), ("batch_norm", "batch_norm_forward"): (1, 4),
                ("batch_norm", "batch_norm_backward_dx"): (2, 4), ("batch_norm", "batch_norm_stats"): (1, 4),
                ("batch_norm", "batch_norm_backward_sums"): (2, 4), ("reduce", "channel_sum_block"): (1, 4)}
# Below Little's law's bytes in flight (ESTIMATE, ASSUMED latency): the measured share, kept from
# getting worse. None now. (channel_sum_block held 81% with 4 float16 loads a round, the statistics
# 65% with 4, and 97% with 8 running moments at 72 registers, 3 blocks; both now load two of
# float32's rounds at once. batch_norm_forward held 97% with 4 float16 elements a thread at 40
# registers, 6 blocks on sm_90; with 8 (PLANE_ELEMENTS) it holds 129% at 61, 4 blocks.)
IN_FLIGHT_SHORT = {}


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_step_memory_bound_kernels_keep_the_bytes_in_flight_dram_speed_needs(dtype):
    """Little's law (roofline.in_flight_needed_per_sm: ~12.7 KB an SM on an H100 at an ASSUMED
    500 ns): each memory-bound kernel of a training step, at the occupancy its registers and shared
    memory allow on sm_90, holds that many bytes of loads in flight (roofline.in_flight_per_sm),
    but the listed shortfalls, held at their measured share. Each kernel's hot loop has the loads
    counted. The old one-element-a-thread kernels held 2 to 8 bytes a thread (batch_norm_forward
    float16: 4 KB an SM, a third)."""
    from cnn_gpu import roofline
    from cnn_gpu.gpu._grid import ELEMENTS_PER_THREAD
    h100 = roofline.spec("h100")
    needed = roofline.in_flight_needed_per_sm(h100)
    size = np.dtype(dtype).itemsize
    streams = dict(STEP_STREAMS)
    if dtype == "float16":   # STATS_LOADS, SUM_LOADS, PLANE_ELEMENTS
        streams[("batch_norm", "batch_norm_stats")] = streams[("reduce", "channel_sum_block")] = (1, 8)
        streams[("batch_norm", "batch_norm_forward")] = (1, 8)
        streams[("batch_norm", "batch_norm_backward_dx")] = (2, 8)
    momentum = "sgd_momentum_step_master" if dtype == "float16" else "sgd_momentum_step"
    for kernel in (momentum, "unscale_grads"):   # unscale_grads: GradScaler's, every float16 step
        streams[("optim", kernel)] = (None, ELEMENTS_PER_THREAD)
    for (family, kernel), (arrays, per_array) in streams.items():
        cubin, log = nvrtc.compile_as_backend(backend.kernel_source(family), f"{family}.cu", dtype, "sm_90")
        report = next(r for r in nvrtc.reports_of(cubin, log, "sm_90") if r.name == kernel)
        row = next(r for r in sass.kernel_rows(family, dtype, "sm_90") if r["kernel"] == kernel)
        if family == "optim":
            per_thread = per_array * _optimizer_bytes(kernel, dtype)[0]
            assert len(row["ldg_bits"]) == per_array * sum(OPTIMIZER_ARRAYS[kernel][0]), (kernel, row["ldg_bits"])
        else:
            per_thread = arrays * per_array * size
            assert row["ldg_bits"].count(8 * size) >= arrays * per_array, (kernel, row["ldg_bits"])
        held = roofline.in_flight_per_sm(h100, report.registers, report.shared_bytes, 256, per_thread)
        share = held / needed
        short = IN_FLIGHT_SHORT.get((kernel, dtype))
        if short is None:
            assert share >= 1, f"{kernel} {dtype}: {held:.0f} bytes in flight an SM, {share:.0%} of {needed:.0f}"
        else:
            assert share == pytest.approx(short, abs=0.01), f"{kernel} {dtype}: {share:.2f} of Little's law's"


@_needs_tools("sm_90")
def test_float64_batch_norm_passes_keep_their_bytes_in_flight_with_the_fused_activations():
    """The fused activations' float64 gradients (SiLU's double exp and divisions) set the backward
    passes' registers: batch_norm_backward_sums runs 2 blocks an SM and batch_norm_backward_dx 3
    (SUMS_MIN_BLOCKS, DX_MIN_BLOCKS: at 3 and 4 they spilled), with no local memory, and each
    element pass still loads its round of 4 elements of each array in its hot loop and holds
    Little's law's bytes in flight an SM (an ESTIMATE, as the float32 and float16 steps' test)."""
    from cnn_gpu import roofline
    h100 = roofline.spec("h100")
    cubin, log = nvrtc.compile_as_backend(backend.kernel_source("batch_norm"), "batch_norm.cu", "float64", "sm_90")
    reports = {r.name: r for r in nvrtc.reports_of(cubin, log, "sm_90")}
    rows = {row["kernel"]: row for row in sass.kernel_rows("batch_norm", "float64", "sm_90")}
    for kernel, arrays, blocks in (("batch_norm_forward", 1, 4), ("batch_norm_backward_sums", 2, 2),
                                   ("batch_norm_backward_dx", 2, 3)):
        report, row = reports[kernel], rows[kernel]
        assert report.spill_bytes == 0 and report.stack_bytes == 0 and row["local_memory"] == 0, kernel
        assert report.blocks_per_sm >= blocks, (kernel, report.registers, report.blocks_per_sm)
        assert row["ldg_bits"].count(64) >= 4 * arrays, (kernel, row["ldg_bits"])
        held = roofline.in_flight_per_sm(h100, report.registers, report.shared_bytes, 256, 4 * arrays * 8)
        assert held >= roofline.in_flight_needed_per_sm(h100), (kernel, held)


REQUIRED = {"family": str, "kernel": str, "arch": str, "dtype": str, "registers": int, "fma": int,
            "instructions": int, "fma_share": float, "lds_bits": list, "local_memory": int, "issue_ceiling": float}


@_needs_tools("sm_90")
def test_cli_json_rows_and_markdown(tmp_path, capsys):
    target = tmp_path / "sass.json"
    status = cli_main(["kernels", "--sass", "--arch", "sm_90", "--family", "reduce", "--json", str(target)])
    out, _ = capsys.readouterr()
    assert status == 0 and "channel_sum_block" in out and "ceiling" in out
    rows = json.loads(target.read_text())["rows"]
    kernels = [r.name for r in nvrtc.file_report(backend.kernel_dir() / "reduce.cu", "float32", "sm_90")]
    assert "channel_sum_block" in kernels
    assert sorted((row["kernel"], row["dtype"]) for row in rows) == sorted(
        (kernel, dtype) for kernel in kernels for dtype in ("float32", "float64", "float16"))   # reduce.cu: all three
    for row in rows:
        for key, kind in REQUIRED.items():
            assert isinstance(row[key], kind), (key, row)
        assert row["family"] == "reduce" and row["arch"] == "sm_90"
        assert 0 <= row["fma_share"] <= 1 and 0 <= row["issue_ceiling"] <= 1
        assert len(row["lds_bits"]) == row["lds"]
    status = cli_main(["kernels", "--sass", "--arch", "sm_90", "--family", "reduce.cu", "--dtype", "float32",
                       "--markdown"])
    out, _ = capsys.readouterr()
    lines = out.strip().splitlines()
    assert status == 0 and lines[0].startswith("| family | kernel |") and len(lines) == 2 + len(kernels)


@_needs_tools("sm_90")
def test_rows_come_back_from_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_GPU_CACHE", str(tmp_path))
    report._rows.cache_clear()
    first = sass.kernel_rows("reduce", "float32", "sm_90")
    assert len(list((tmp_path / "sass").glob("reduce-float32-sm_90-*.json"))) == 1
    report._rows.cache_clear()

    def no_compiling(*args):
        raise AssertionError("compiled although the rows were cached")

    monkeypatch.setattr(nvrtc, "compile_as_backend", no_compiling)
    assert sass.kernel_rows("reduce", "float32", "sm_90") == first


def test_cli_without_nvdisasm_exits_2(capsys, monkeypatch):
    if nvrtc.why_unavailable():
        pytest.skip(f"NVRTC unavailable: {nvrtc.why_unavailable()}")
    monkeypatch.setattr(sass, "why_unavailable", lambda arch=None: "nvdisasm not found (test)")
    assert cli_main(["kernels", "--sass", "--family", "reduce"]) == 2
    assert "nvdisasm not found" in capsys.readouterr().err


def test_cli_refuses_an_unwritable_json_path_before_compiling(tmp_path, capsys, monkeypatch):
    if nvrtc.why_unavailable():
        pytest.skip(f"NVRTC unavailable: {nvrtc.why_unavailable()}")
    monkeypatch.setattr(sass, "kernel_rows", lambda *args: pytest.fail("compiled before checking --json"))
    for target in (tmp_path, tmp_path / "missing" / "rows.json"):
        assert cli_main(["kernels", "--sass", "--family", "reduce", "--json", str(target)]) == 2
        assert str(target) in capsys.readouterr().err


def test_bad_requests_raise_before_compiling():
    with pytest.raises(ValueError, match="no kernel family"):
        sass.kernel_rows("nope", "float32", "sm_90")
    with pytest.raises(ValueError, match="arch must be one of"):
        sass.kernel_rows("reduce", "float32", "sm_61")
    with pytest.raises(TypeError):
        sass.kernel_rows("reduce", "int32", "sm_90")


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_channel_dropout_draws_once_a_round_and_adaptive_max_pooling_has_no_atomics(dtype):
    """kernels/dropout.cu's dropout2d_apply walks its planes as batch norm's element passes
    (for_each_plane_element): a hot-loop round loads PLANE_ELEMENTS elements, element-sized, before
    any use and draws the plane's Philox number once for them (one plane a block row drew one a
    thread and plane, and a thread took one pixel of a plane: a Philox call an element), within the
    H100 streaming budget an element (sm_90: float32 161 instructions a round of 4, float16 205 a
    round of 8), with no local memory. kernels/adaptive_pool.cu's max kernels load elements of the
    dtype (and int32 indices), use no local memory and no atomics (the backward gathers over the
    overlapping windows)."""
    from cnn_gpu.gpu._grid import plane_elements
    size_bits = 8 * np.dtype(dtype).itemsize
    walk = next(row for row in sass.kernel_rows("dropout", dtype, "sm_90") if row["kernel"] == "dropout2d_apply")
    assert walk["local_memory"] == 0 and walk["ldg_bits"] == [size_bits] * plane_elements(dtype), walk["ldg_bits"]
    per_element = walk["instructions"] / plane_elements(dtype)   # measured at most 40.75 (float64)
    assert per_element <= min(_streaming_budget(2 * size_bits // 8), 1.1 * 40.75), walk["instructions"]
    rows = {row["kernel"]: row for row in sass.kernel_rows("adaptive_pool", dtype, "sm_90")}
    for kernel, loaded_bits in (("adaptive_max_pool_forward", {size_bits}),
                                ("adaptive_max_pool_backward", {size_bits, 32})):
        row = rows[kernel]
        assert row["local_memory"] == 0 and row["atomic"] == 0, kernel
        assert set(row["ldg_bits"]) <= loaded_bits and size_bits in row["ldg_bits"], (kernel, row["ldg_bits"])


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_prelu_kernels_keep_a_round_in_flight_and_stream_within_the_budget(dtype):
    """kernels/prelu.cu walks the planes as batch norm's element passes (for_each_plane_element): a
    hot-loop round loads PLANE_ELEMENTS elements of x (backward: and dy), element-sized, then the
    plane's slope once, with no local memory and no atomics (the slope gradient's terms are summed by
    reduce.cu); it issues within the streaming budget an element (the forward moves x and y, the
    backward dy, x, dx and an acc_t term) and holds Little's law's bytes in flight an SM on an H100
    (an ESTIMATE: roofline.in_flight_per_sm). sm_90, instructions an element forward and backward:
    float32 21.25 and 32.75, float16 21 and 31, float64 22.75 and 34.5; the plain grid-stride loop
    it replaced (one plane a block row: a small plane's block mostly idle) took 10.75 and 16.25 in
    float32, NVRTC unrolling it 4 times with the loads first."""
    from cnn_gpu import roofline
    from cnn_gpu.gpu._grid import plane_elements
    h100 = roofline.spec("h100")
    size = np.dtype(dtype).itemsize
    term = max(size, 4)
    per_round = plane_elements(dtype)
    cubin, log = nvrtc.compile_as_backend(backend.kernel_source("prelu"), "prelu.cu", dtype, "sm_90")
    reports = {r.name: r for r in nvrtc.reports_of(cubin, log, "sm_90")}
    rows = {row["kernel"]: row for row in sass.kernel_rows("prelu", dtype, "sm_90")}
    for kernel, arrays_loaded, moved in (("prelu_forward", 1, 2 * size), ("prelu_backward", 2, 3 * size + term)):
        row, report = rows[kernel], reports[kernel]
        assert row["local_memory"] == 0 and row["atomic"] == 0, kernel
        assert set(row["ldg_bits"]) == {8 * size} and len(row["ldg_bits"]) == per_round * arrays_loaded + 1, (
            kernel, row["ldg_bits"])
        # the budget, and within 10% of the measured counts: a larger growth is a regression to look at
        measured = {"prelu_forward": 22.75, "prelu_backward": 34.5}[kernel]
        assert row["instructions"] / per_round <= min(_streaming_budget(moved), 1.1 * measured), (
            kernel, row["instructions"])
        held = roofline.in_flight_per_sm(h100, report.registers, report.shared_bytes, 256,
                                         per_round * arrays_loaded * size)
        assert held >= roofline.in_flight_needed_per_sm(h100), (kernel, held, report.registers)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_upsample_kernels_load_elements_keep_taps_in_registers_and_gather_without_atomics(dtype):
    """kernels/upsample.cu: every load and store is one element of the dtype (float16 moved as
    FP16), no kernel uses local memory (bicubic's four weights a tap set and the forward pass's
    four clamped columns stay in registers) and none has an atomic: the backward passes gather,
    each input pixel's gradient summed by its own thread (deterministic)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("upsample", dtype, "sm_90")}
    assert set(rows) == {f"upsample_{mode}_{direction}" for mode in ("nearest", "nearest_exact", "bilinear", "bicubic")
                         for direction in ("forward", "backward")}
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("upsample"), "upsample.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        row = rows[kernel]
        assert row["local_memory"] == 0, kernel
        assert set(row["ldg_bits"]) <= {size_bits} and set(row["stg_bits"]) <= {size_bits}, (kernel, row)
        atomics = [ins.opcode for ins in function.instructions if mix._MEMORY.get(ins.base) == "atomic"]
        assert not atomics, (kernel, atomics)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_unpool_kernels_gather_and_claim_with_integer_atomics_only(dtype):
    """kernels/unpool.cu: no local memory; the gather (the forward's and the backward's) loads elements of
    the dtype and int32 owners or indices, stores elements of the dtype, and has no atomic (deterministic);
    the claim's only atomics are 32-bit integer maxima (the winner fixed whatever the thread order),
    never a float atomic."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("unpool", dtype, "sm_90")}
    assert set(rows) == {"max_unpool_clear", "max_unpool_claim", "max_unpool_gather"}
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("unpool"), "unpool.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        row = rows[kernel]
        assert row["local_memory"] == 0, kernel
        atomics = [ins.opcode for ins in function.instructions if mix._MEMORY.get(ins.base) == "atomic"]
        if kernel == "max_unpool_claim":
            assert atomics and all(".MAX.S32" in op for op in atomics), atomics
            continue
        assert not atomics, (kernel, atomics)
        if kernel == "max_unpool_gather":
            assert set(row["ldg_bits"]) == {size_bits, 32} and set(row["stg_bits"]) == {size_bits}, (kernel, row)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_fold_kernels_move_elements_without_atomics_and_unfold_streams_within_the_budget(dtype):
    """kernels/fold.cu: every global load and store one element of the dtype, no local memory, no
    atomics (fold gathers: each pixel's sum is its own thread's); unfold's walk steps each block's
    (bh, bw) with a carry instead of dividing per element, within the streaming budget of x read and
    cols written, and within 34 instructions an element (sm_90: 24 in float64 and float32, 33 in
    float16; with the division 36, 35.5 and 39)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("fold", dtype, "sm_90")}
    assert set(rows) == {"unfold_forward", "fold_forward"}
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("fold"), "fold.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        assert rows[kernel]["local_memory"] == 0, kernel
        kinds = [(mix.classify(ins), ins) for ins in function.instructions]
        assert not [ins.opcode for kind, ins in kinds if kind == "atomic"], kernel
        global_ops = [ins for kind, ins in kinds if kind in ("ldg", "stg")]
        assert global_ops and {mix.access_bits(ins) for ins in global_ops} == {size_bits}, (kernel, global_ops)
    unfold = rows["unfold_forward"]
    elements = len(unfold["stg_bits"])
    assert elements and unfold["ldg_bits"] == [size_bits] * elements, unfold
    assert unfold["instructions"] / elements <= min(_streaming_budget(2 * size_bits // 8), 34), unfold


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("family, kernels", [
    ("local_response_norm", {f"local_response_norm_{kernel}" for kernel in ("forward", "terms", "backward")}),
    ("distance", {f"{op}_{direction}{split}" for op in ("normalize", "cosine_similarity", "pairwise_distance")
                  for direction in ("forward", "backward") for split in ("", "_split")
                  if not (op == "pairwise_distance" and split)})])
def test_window_and_row_kernels_move_elements_without_local_memory_or_atomics(family, kernels, dtype):
    """kernels/local_response_norm.cu and kernels/distance.cu: global loads and stores of one element
    of the dtype or of the compute type (LRN's backward terms, FP32 for float16), no local memory or
    stack (pow's and powf's slow paths included), no atomics: each window is reduced by its own thread,
    each row by a group of lanes (or a lane, or a block's segments) in a fixed order."""
    widths = {8 * np.dtype(dtype).itemsize, 8 * backend.compute_dtype(dtype).itemsize}
    rows = {row["kernel"]: row for row in sass.kernel_rows(family, dtype, "sm_90")}
    assert set(rows) == kernels
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source(family), f"{family}.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        assert rows[kernel]["local_memory"] == 0 and rows[kernel]["stack_bytes"] == 0, kernel
        kinds = [(mix.classify(ins), ins) for ins in function.instructions]
        assert not [ins.opcode for kind, ins in kinds if kind == "atomic"], kernel
        global_ops = [ins for kind, ins in kinds if kind in ("ldg", "stg")]
        assert global_ops and {mix.access_bits(ins) for ins in global_ops} <= widths, (kernel, global_ops)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_row_walks_reduce_a_row_through_shared_memory_without_atomics(dtype):
    """rows.cuh's for_each_row (kernels/distance.cu, and loss.cu's margin and embedding losses): a
    contiguous row a group of lanes, whose partial sums meet in group_reduce's shared-memory tree
    (barriers, shared loads and stores; a thread a row had none), and distance.cu's _split kernels
    (for_each_split_row: a strided row a block's segments, segment_reduce's tree), no float atomics, no
    local memory."""
    kernels = {"distance": {f"{op}_{direction}{split}"
                            for op in ("normalize", "cosine_similarity", "pairwise_distance")
                            for direction in ("forward", "backward") for split in ("", "_split")
                            if not (op == "pairwise_distance" and split)},
               "loss": {"multi_margin_rows", "cosine_embedding_rows", "triplet_margin_rows"}}
    for family, names in kernels.items():
        rows = {row["kernel"]: row for row in sass.kernel_rows(family, dtype, "sm_90")}
        cubin, _ = nvrtc.compile_as_backend(backend.kernel_source(family), f"{family}.cu", dtype, "sm_90")
        for kernel, function in sass.disassemble(cubin, "sm_90").items():
            if kernel not in names:
                continue
            assert rows[kernel]["local_memory"] == 0 and rows[kernel]["stack_bytes"] == 0, kernel
            bases = [ins.base for ins in function.instructions]
            assert "BAR" in bases and "LDS" in bases and "STS" in bases, (kernel, sorted(set(bases)))
            assert not [ins.opcode for ins in function.instructions if mix.classify(ins) == "atomic"], kernel


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_fractional_pool_kernels_load_elements_and_gather_without_atomics(dtype):
    """kernels/fractional_pool.cu: the hot loops load elements of the dtype (the forward's window taps,
    float16 as FP16; the backward's dy, beside int32 indices) and store nothing wider than an element
    or an int32 index; no local memory (the windows and reaches stay in registers) and no atomic: the
    backward gathers over the outputs that can reach each pixel (deterministic)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    rows = {row["kernel"]: row for row in sass.kernel_rows("fractional_pool", dtype, "sm_90")}
    assert set(rows) == {f"fractional_max_pool{rank}_{direction}" for rank in ("", "3d")
                         for direction in ("forward", "backward")}
    cubin, _ = nvrtc.compile_as_backend(backend.kernel_source("fractional_pool"), "fractional_pool.cu", dtype, "sm_90")
    for kernel, function in sass.disassemble(cubin, "sm_90").items():
        row = rows[kernel]
        loaded = {size_bits} if kernel.endswith("forward") else {size_bits, 32}
        assert row["local_memory"] == 0, kernel
        assert set(row["ldg_bits"]) <= loaded and size_bits in row["ldg_bits"], (kernel, row["ldg_bits"])
        assert set(row["stg_bits"]) <= {size_bits, 32}, (kernel, row["stg_bits"])
        atomics = [ins.opcode for ins in function.instructions if mix._MEMORY.get(ins.base) == "atomic"]
        assert not atomics, (kernel, atomics)


@_needs_tools("sm_90")
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_volume_pools_gather_without_atomics_or_local_memory(dtype):
    """The 3-D kernels of kernels/pool.cu and adaptive_pool.cu (the 2-D bodies with a depth): element-
    sized loads (and int32 indices), no local memory (the 3-D adaptive ones take their window bounds
    in 32 bits: 64-bit divisions, called subroutines, spilled the average's backward) and no atomics
    (the backward passes gather over the windows)."""
    size_bits = 8 * np.dtype(dtype).itemsize
    for family in ("pool", "adaptive_pool"):
        rows = {row["kernel"]: row for row in sass.kernel_rows(family, dtype, "sm_90")}
        volume_kernels = [name for name in rows if "pool3d" in name]
        assert len(volume_kernels) == 4, sorted(rows)
        for kernel in volume_kernels:
            row = rows[kernel]
            loaded = {size_bits, 32} if "max" in kernel and "backward" in kernel else {size_bits}
            assert row["local_memory"] == 0 and row["atomic"] == 0, kernel
            assert set(row["ldg_bits"]) <= loaded and size_bits in row["ldg_bits"], (kernel, row["ldg_bits"])


# README's SASS table columns (cnn-gpu kernels --sass --markdown) a float32 SIMT tile row may move by on
# another machine (NVRTC's allocation follows the process's address layout: README, "How the kernels are
# proven", 1): its registers and hot-loop instructions by 2, its shared loads by 1; the layout and the
# shares derived from those counts are not compared.
DRIFT = {"regs": 2, "instr": 2, "LDS": 1}
DERIVED = {"hot loop", "FMA share", "branch", "int", "ceiling"}
SASS_TABLE_COLUMNS = ("family", "kernel", "dtype", "arch", "regs", "hot loop", "instr", "FMA", "FMA share", "MMA",
                      "LDS", "LDG", "STS", "LDGSTS", "BAR", "branch", "int", "local loop/kernel", "ceiling")


def _table_cells(row: str) -> dict:
    return dict(zip(SASS_TABLE_COLUMNS, (cell.strip() for cell in row.strip().strip("|").split("|"))))


def _row_key(cells: dict) -> tuple:
    """(family, kernel, dtype, arch): a row's place in the table."""
    return tuple(cells[column] for column in SASS_TABLE_COLUMNS[:4])


def _count(cell: str) -> int:
    """A count cell's number: "1536", or a load column's total ("9x32+96x128": 105 loads)."""
    return 0 if cell == "-" else sum(int(part.split("x")[0]) for part in cell.split("+"))


def _same_but_drift(live: dict, written: dict) -> bool:
    """The README row `written` is the live row, or a float32 SIMT tile's within DRIFT of it."""
    if live == written:
        return True
    simt_tile = (live["dtype"] == "float32" and live["family"] != "conv2d_tc"
                 and not live["kernel"].endswith("filter_transpose"))
    return simt_tile and all(
        abs(_count(live[column]) - _count(written[column])) <= DRIFT[column] if column in DRIFT
        else column in DERIVED or live[column] == written[column] for column in SASS_TABLE_COLUMNS)


@_needs_tools("sm_90")
def test_readmes_sass_table_is_the_live_sass(capsys):
    """README's SASS table (`make sass-table`: the convolutions' hot loops on sm_90) is what NVRTC and
    nvdisasm give now: deterministic on one machine, and moved by edits one would not expect to touch it
    (three float32 SIMT rows moved by a register or an instruction when common.cuh lost a helper they do
    not use), so a stale row fails here rather than misleading a reader. A float32 SIMT tile's row may
    differ from the live one by DRIFT: another machine's process layout moved six of them (a register,
    an instruction, one shared load) with the same source."""
    from pathlib import Path
    status = cli_main(["kernels", "--sass", "--arch", "sm_90", "--family",
                       "conv2d_fprop,conv2d_dgrad,conv2d_wgrad,conv2d_tc", "--markdown"])
    out, _ = capsys.readouterr()
    rows = [_table_cells(line) for line in out.splitlines() if line.startswith("| conv2d")]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    written = {_row_key(cells): cells for cells in map(_table_cells, readme.splitlines())
               if cells.get("family", "").startswith("conv2d_") and cells.get("arch") == "sm_90"}
    assert status == 0 and len(rows) == 58
    assert [row for row in rows
            if _row_key(row) not in written or not _same_but_drift(row, written[_row_key(row)])] == []
