"""How fast this GPU issues mma.sync, beside the rate the model assumes (a gpu-check step).

    .venv/bin/python benchmarks/mma_rate.py [--gpu SPEC] [--iterations 20000] [--blocks-per-sm 4] [--markdown]

The model takes every tensor-core kernel's issue ceiling from its SASS, but the rate of the
tensor pipe itself from a datasheet: roofline.mma_issue_clocks, the clocks between two HMMAs on an
SM sub-partition, derived from the dense peak (4 on H100 and H200 for both TF32 m16n8k8 and FP16
m16n8k16, 8 on A100). Hopper's own tensor-core instruction is the asynchronous, warpgroup-wide
wgmma; whether mma.sync reaches the dense peak there is what this measures. kernels/mma_rate.cu
issues nothing but independent mma.sync on operands held in registers, on every SM (--blocks-per-sm
blocks of 4 warps each, all resident at once). Per dtype (float32: TF32 m16n8k8, float16: FP16
m16n8k16) it prints the MEASURED clocks per HMMA per sub-partition (the kernel's clock64 cycles over
the HMMAs each sub-partition issued) and TFLOP/s (CUDA events), beside the MODELED clocks and dense
peak of --gpu. Every accumulator is checked before anything is timed. Without a GPU it runs one
short launch on the emulator: checked results, no timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from cnn_gpu import backend, roofline
from conv_targets import format_table   # beside this script

CHAINS = 8                # kernels/mma_rate.cu MMA_RATE_CHAINS: mma per warp and iteration
WARPS_PER_BLOCK = 4       # one per SM sub-partition
DTYPES = ("float32", "float16")   # TF32 m16n8k8 and FP16 m16n8k16 (roofline.conv.tensor_pipe)
# Operand words: every A value 1 and every B value 1/2 (TF32 words; FP16 pairs), so one mma adds
# (reduction depth) / 2 to each accumulator: 4 for m16n8k8, 8 for m16n8k16, exact in FP32.
WORDS = {"float32": (0x3F800000, 0x3F000000), "float16": (0x3C003C00, 0x38003800)}
DEPTH = {"float32": 8, "float16": 16}


def measure(be: str, dtype: str, iterations: int, blocks: int) -> dict:
    """One launch of `blocks` blocks on backend `be`: {"cycles": median clock64 cycles of a warp,
    "seconds": elapsed time (cuda; None on emu), "mmas": HMMAs issued}. ValueError unless every
    accumulator holds exactly what its `iterations` mma added."""
    a, b = WORDS[dtype]
    lane_words = np.tile(np.array([a, a, a, a, b, b], np.uint32), 32)
    threads = blocks * WARPS_PER_BLOCK * 32
    out = np.zeros(threads * CHAINS * 4, np.float32)
    clocks = np.zeros(blocks * WARPS_PER_BLOCK, np.int64)
    from cnn_gpu.bench.devices import CudaDevice, EmuDevice
    device = CudaDevice() if be == "cuda" else EmuDevice()
    args = [device.asarray(a) for a in (lane_words, out, clocks)] + [np.int32(iterations)]

    def launch():
        backend.launch(be, "mma_rate", dtype, "mma_rate", (blocks,), (WARPS_PER_BLOCK * 32,), args)
    launch()   # compiles (and on a GPU warms up); the emulator's one launch is all it runs
    seconds = device.time_calls(launch, [()], 1)[0] if be == "cuda" else None
    out, clocks = (a.get() if be == "cuda" else a for a in args[1:3])
    expected = np.float32(iterations * DEPTH[dtype] / 2)
    if not np.all(out == expected):
        wrong = np.flatnonzero(out != expected)
        raise ValueError(f"mma_rate {dtype}: {wrong.size} accumulators differ from {expected} "
                         f"(first: element {wrong[0]} = {out[wrong[0]]})")
    if not np.all(clocks > 0):
        raise ValueError(f"mma_rate {dtype}: a warp measured {clocks.min()} cycles")
    return {"cycles": float(statistics.median(clocks.tolist())), "seconds": seconds,
            "mmas": threads // 32 * iterations * CHAINS}


def rows(gpu: str, iterations: int, blocks_per_sm: int, be: str = "cuda") -> list[tuple]:
    """Per dtype: (dtype, instruction, measured clocks per HMMA per sub-partition, modeled clocks,
    measured TFLOP/s, modeled dense peak TFLOP/s, measured / peak); "-" where there is no GPU."""
    spec = roofline.spec(gpu)
    sms = 1   # the emulator: one SM's blocks are enough to check the results
    if be == "cuda":
        from cnn_gpu.bench import gpu_info
        sms = gpu_info()["sms"]
    table = []
    for dtype in DTYPES:
        pipe = roofline.conv.tensor_pipe(dtype)
        result = measure(be, dtype, iterations, sms * blocks_per_sm)
        model_clocks = roofline.mma_issue_clocks(spec, pipe)
        peak = roofline.tensor_peak_flops(spec, pipe)
        shape = "m16n8k8 TF32" if pipe == "tf32" else "m16n8k16 FP16"
        if result["seconds"] is None:
            table.append((dtype, shape, "-", f"{model_clocks:g}", "-", f"{peak / 1e12:.0f}", "-"))
            continue
        # each warp of a block runs on its own sub-partition beside the same warp of the other
        # resident blocks: blocks_per_sm warps share a sub-partition's tensor pipe
        clocks_per_mma = result["cycles"] / (iterations * CHAINS * blocks_per_sm)
        flops = result["mmas"] * 2 * roofline.MMA_FMAS[pipe] / result["seconds"]
        table.append((dtype, shape, f"{clocks_per_mma:.2f}", f"{model_clocks:g}", f"{flops / 1e12:.0f}",
                      f"{peak / 1e12:.0f}", f"{flops / peak:.0%}"))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", help="the spec of the model's figures (default: the GPU CuPy sees, its peak at the "
                                      "clock it reports; else h100)")
    parser.add_argument("--iterations", type=int, default=20000, help="loop iterations of each warp")
    parser.add_argument("--blocks-per-sm", type=int, default=4, help="resident blocks of 4 warps per SM")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    be = "emu" if backend.why_unavailable("cuda") else "cuda"
    if args.gpu is None:
        args.gpu = "h100" if be == "emu" else roofline.CURRENT_GPU
    iterations, blocks_per_sm = (args.iterations, args.blocks_per_sm) if be == "cuda" else (3, 1)
    headers = ("dtype", "mma.sync", "cuda clocks/HMMA", "model clocks/HMMA", "cuda TFLOP/s", "model peak TFLOP/s",
               "cuda / peak")
    measured = ("cuda = MEASURED on this GPU" if be == "cuda"
                else "no GPU here: the emulator checked the kernel's results, nothing is measured")
    print(f"mma.sync issue rate, clocks per HMMA per SM sub-partition: {measured}; model = MODELED for {args.gpu} "
          f"(roofline.mma_issue_clocks, from the dense peak)")
    print(format_table(headers, rows(args.gpu, iterations, blocks_per_sm, be), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
