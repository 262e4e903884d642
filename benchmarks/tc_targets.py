"""Issue 10's instruments for the tensor-core convolution kernels, with its targets: no GPU needed.

    .venv/bin/python benchmarks/tc_targets.py [--gpu h100] [--batch 128] [--markdown]

1. SASS hot loops of kernels/conv2d_tc.cu on sm_80, sm_86, sm_89 and sm_90 (NVRTC + nvdisasm),
   float32 (TF32) and float16: HMMAs per loop, instructions, no local memory; the MMA issue
   ceiling on the GPU's spec (cnn_gpu.roofline.mma_issue_ceiling).
2. The roofline model of fprop, dgrad and wgrad on the 11 ResNet/DeepBench layers: % of the dense
   TF32 peak (tf32 math mode) and of the dense FP16 peak (float16), next to the pass's roofline
   bound, the most any kernel can reach where its compulsory DRAM traffic takes longer than its
   FLOPs at peak (roofline.roofline_bound). Target: >= 60% of the peak or, for a DRAM-bound pass,
   of its bound. The stem's dgrad is listed but not counted: training never runs it (the images
   need no gradient: Module.backward(dy, input_grad=False)).
A figure is a model or a static count, not a measurement; tests/test_roofline.py checks the bound.

Why the bound: the issue asked for 60% of the dense peak on every pass, which no kernel can reach
on a layer whose bytes take longer than its FLOPs. A 1x1 convolution from 64 to 256 channels at
56x56 does 13.2 GFLOP at batch 128 over 514 MB of x and y in float32 (26 FLOPs per byte): 153 us
at H100's 3.35 TB/s, so at most 17% of the 495 TFLOP/s TF32 peak, whatever the kernel. The same
holds for the stem (7x7, 3 -> 64 channels: its 411 MB output) and, in float16, for more layers:
twice the peak on half the bytes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from cnn_gpu import nvrtc, roofline, sass
from cnn_gpu.bench import RESNET_LAYERS
from conv_targets import format_table   # beside this script

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
DTYPES = ("float32", "float16")
PASSES = ("fprop", "dgrad", "wgrad")
TARGET = 0.60


def sass_rows(gpu: str):
    """One row per tensor-core kernel, dtype and arch; (rows, None) or (None, why not)."""
    reason = nvrtc.why_unavailable() or next(filter(None, map(sass.why_unavailable, ARCHS)), None)
    if reason:
        return None, reason
    spec = roofline.spec(gpu)
    rows = []
    for dtype in DTYPES:
        pipe = "fp16" if dtype == "float16" else "tf32"
        for arch in ARCHS:
            for row in sass.kernel_rows("conv2d_tc", dtype, arch):
                traits = roofline.KernelTraits(row["registers"], 0, 1.0, None, mma=row["mma"],
                                               instructions=row["instructions"])
                # the filter tiles' kernel issues no MMA: memory-bound, no ceiling
                ceiling = roofline.mma_issue_ceiling(traits, spec, pipe) if arch == spec.arch and row["mma"] else None
                rows.append((row["kernel"], dtype, arch, row["registers"], row["mma"], row["instructions"],
                             row["local_memory"], "-" if ceiling is None else f"{ceiling:.0%}"))
    return rows, None


def model_rows(gpu: str, batch: int):
    """(rows, passes meeting the target, passes) per dtype: each layer's three passes as
    'model% / bound%', starred below the target."""
    spec = roofline.spec(gpu)
    results = {}
    for dtype in DTYPES:
        math, peak = ("fp32", spec.fp16_peak_flops) if dtype == "float16" else ("tf32", spec.tf32_peak_flops)
        rows, met, total = [], 0, 0
        for index, layer in enumerate(RESNET_LAYERS):
            shape = dataclasses.replace(layer, N=batch)
            g = shape.geometry()
            cells = []
            for pass_name in PASSES:
                if index == 0 and pass_name == "dgrad":   # the stem's: not run in training
                    cells.append("not run")
                    continue
                seconds = sum(e.seconds for e in roofline.model_conv(pass_name, g, dtype, spec, math=math,
                                                                     bias=pass_name == "fprop"))
                share = g.flops / seconds / peak
                bound = roofline.roofline_bound(pass_name, g, dtype, spec, peak)
                ok = share >= TARGET * bound
                met, total = met + ok, total + 1
                cells.append(f"{share:.0%} / {bound:.0%}" + ("" if ok else " *"))
            rows.append((shape.label, *cells))
        results[dtype] = (rows, met, total)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100", help="roofline spec of the model (default h100)")
    parser.add_argument("--batch", type=int, default=128, help="batch of the layers (default 128)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args(argv)
    rows, reason = sass_rows(args.gpu)
    print("SASS hot loops of conv2d_tc" + (f": unavailable ({reason})" if reason else ""))
    if rows:
        print(format_table(("kernel", "dtype", "arch", "regs", "HMMA", "instr", "local", f"MMA issue ceiling ({args.gpu})"),
                     rows, args.markdown))
    for dtype, (rows, met, total) in model_rows(args.gpu, args.batch).items():
        peak = "dense FP16" if dtype == "float16" else "dense TF32"
        print(f"\nModel on {args.gpu}, {dtype}, batch {args.batch}: % of the {peak} peak / roofline bound "
              f"(* below {TARGET:.0%} of the bound); {met} of {total} passes meet it")
        print(format_table(("layer (N,C,H,W,K,R,stride,pad)", *PASSES), rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
