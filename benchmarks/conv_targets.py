"""Issue 9's instruments for the SIMT convolution kernels, with its targets: no GPU needed.

    .venv/bin/python benchmarks/conv_targets.py [--gpu h100] [--markdown]

1. SASS hot loops on sm_90 (cnn_gpu.sass: NVRTC + nvdisasm): FFMA/DFMA share of every GEMM tile
   of conv2d_fprop/dgrad/wgrad; targets >= 80% (large fp32), >= 75% (every fp32 tile), >= 80%
   (fp64 large), no local memory.
2. The roofline model (cnn_gpu.roofline) of fprop, dgrad and wgrad on the 11 ResNet/DeepBench
   layers at batch 32 and 128: % of the GPU's FP32 peak (target >= 70%), as planned for its SMs.
3. The reductions (kernels/reduce.cu): the bias gradient of a (32, 64, 112, 112) fp32 tensor and
   an MSE over 19M elements, modeled as % of DRAM bandwidth (target >= 50%).
A figure is a model or a static count, not a measurement; tests/test_sass_targets.py asserts (1).

Where a target is missed, and why:
- Model, the 1x1 stride-2 layer (256 -> 128 channels, 56x56 -> 28x28): DRAM-bound. Each pass
  does 16 FLOPs per byte of x (read by fprop and wgrad, written by dgrad), below H100's balance
  point of 20 FLOPs per byte; the model counts all of x as compulsory though a stride-2 1x1
  filter reads every other row: 65%/60%/51% at batch 32, 70% (69.6%)/68%/65% at batch 128.
- Model, batch 32 on the 14x14 and 7x7 1x1 layers (1024 -> 512 stride 2; 512 -> 2048): 30-140 us
  of work that fills one wave of blocks or less. Split-K supplies the missing blocks but adds the
  fold of its partials (written and read back) as a second launch, and each launch costs the
  assumed 3 us: 56-68%.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np

from cnn_gpu import nvrtc, roofline, sass
from cnn_gpu.bench import RESNET_LAYERS
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import reduce

FAMILIES = ("conv2d_fprop", "conv2d_dgrad", "conv2d_wgrad")
TILES = ("large", "tall", "wide", "small")
SASS_TARGET = {("float32", "large"): 0.80, ("float32", "tall"): 0.75, ("float32", "wide"): 0.75,
               ("float32", "small"): 0.75, ("float64", "large"): 0.80}
MODEL_TARGET = 0.70
DRAM_TARGET = 0.50


def format_table(header, rows, markdown: bool) -> str:
    cells = [tuple(header)] + [tuple(str(c) for c in row) for row in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in cells[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def sass_rows(arch: str = "sm_90"):
    reason = nvrtc.why_unavailable() or sass.why_unavailable(arch)
    if reason:
        return None, reason
    rows = []
    for family in FAMILIES:
        for dtype in ("float32", "float64"):
            by_name = {row["kernel"]: row for row in sass.kernel_rows(family, dtype, arch)}
            for tile in TILES:
                row = by_name[f"{family}_{tile}"]
                target = SASS_TARGET.get((dtype, tile))
                status = "-" if target is None else ("met" if row["fma_share"] >= target else f"below {target:.0%}")
                rows.append((family, tile, dtype, row["registers"], row["instructions"], row["fma"],
                             f"{row['fma_share']:.1%}", f"{row['issue_ceiling']:.0%}", row["local_memory"], status))
    return rows, None


def model_rows(gpu: str):
    spec = roofline.spec(gpu)
    rows = []
    for batch in (32, 128):
        for layer in RESNET_LAYERS:
            g = dataclasses.replace(layer, N=batch).geometry()
            cells = []
            for pass_name in ("fprop", "dgrad", "wgrad"):
                seconds = sum(e.seconds for e in roofline.model_conv(pass_name, g, "float32", spec, bias=pass_name == "fprop"))
                share = g.flops / seconds / spec.peak_flops("float32")
                cells.append(f"{share:.0%}" + ("" if share >= MODEL_TARGET else " *"))
            rows.append((batch, dataclasses.replace(layer, N=batch).label, *cells))
    return rows


def reduction_rows(gpu: str):
    spec = roofline.spec(gpu)
    item = np.dtype(np.float32).itemsize
    g = conv_geometry((32, 64, 112, 112), (64, 64, 1, 1))
    bias = roofline.model_bias_grad(g, "float32", spec)
    elements = 19_000_000
    launch = reduce.plan_channel_sum(1, 1, elements)
    mse = roofline.estimate_launch(launch, roofline.LaunchWork(0, (elements + 1) * item), "float32", spec)
    rows = []
    for name, estimate, blocks in (("bias gradient (32, 64, 112, 112)", bias, math.prod(bias.grid)),
                                   ("MSE sum over 19M elements", mse, math.prod(launch.grid))):
        share = estimate.dram_bytes / spec.dram_bytes_per_s / estimate.seconds
        rows.append((name, blocks, f"{estimate.seconds * 1e6:.1f}", f"{share:.0%}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100", help="roofline spec of the model (default h100)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args(argv)
    rows, reason = sass_rows()
    print("SASS hot loops, sm_90" + (f": unavailable ({reason})" if reason else ""))
    if rows:
        print(format_table(("family", "tile", "dtype", "regs", "instr", "FMA", "FMA share", "issue ceiling", "local",
                      "target"), rows, args.markdown))
    print(f"\nModel on {args.gpu}: % of FP32 peak (* below {MODEL_TARGET:.0%})")
    print(format_table(("batch", "layer (N,C,H,W,K,R,stride,pad)", "fprop", "dgrad", "wgrad"), model_rows(args.gpu),
                 args.markdown))
    print(f"\nReductions on {args.gpu}: % of DRAM bandwidth (target {DRAM_TARGET:.0%})")
    print(format_table(("reduction", "blocks", "model us", "DRAM"), reduction_rows(args.gpu), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
