"""The tensor-core planner's choices beside the alternatives it weighed, for a GPU run to check.

    .venv/bin/python benchmarks/tc_plans.py [--gpu SPEC] [--batch 128] [--repeat 20] [--markdown]

For each of the 11 ResNet/DeepBench layers, each pass and each of float32 (TF32 operands) and
float16: the plan cnn_gpu.gpu.conv_tc picks and its alternatives (fprop and dgrad: each tile of
conv_tc.TILES; wgrad: each of its tiles and, where a lane's pixels straddle images, the
channel-major copy of dy, the _gather kernels and where it runs the _residues one), each forced
through the plan_* functions with the rest left to the planner. Beside each: the roofline model's
time on --gpu (MODELED) and, where CuPy sees a GPU, the median of --repeat timed calls of
conv_tc's launcher with the plan forced (measured: the filter tiles, a dy copy and split-K sums
included, as a training step runs them).
The planner's choice is marked *. `make gpu-check` runs this: a measured alternative faster than
the choice shows where the planner's weights (conv_tc: TILES, WGRAD_EFFICIENCY, GATHER_EFFICIENCY,
RESIDUES_EFFICIENCY, the wave and traffic costs) or the model need revisiting.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import numpy as np

from cnn_gpu import roofline
from cnn_gpu.bench import RESNET_LAYERS
from cnn_gpu.gpu import conv_tc
from conv_targets import format_table   # beside this script

DTYPES = ("float32", "float16")
PASSES = ("fprop", "dgrad", "wgrad")
STRADDLING = ("channel_major", "gather", "residues")   # wgrad's dy paths where P*Q is no multiple of 4 words


def alternatives(pass_name: str, g, dtype) -> list[dict]:
    """The forced choices to compare for one pass: {} (the planner's), then each alternative."""
    if pass_name == "wgrad":
        if not conv_tc.wgrad_supported(g):
            return []
        forced = [{"tile": tile} for tile in conv_tc.WGRAD_EFFICIENCY]
        if conv_tc.wgrad_dy_path(g, dtype) in STRADDLING:
            forced += [{"dy_path": path} for path in STRADDLING
                       if path != "residues" or conv_tc.residues_supported(g, dtype)]
        return [{}] + forced
    return [{}] + [{"tile": tile} for tile in conv_tc.TILES]


def describe(plan, dy_copy: bool) -> str:
    """A plan in a few words: its main kernel, grid and partial outputs, and wgrad's dy copy."""
    main = plan.main
    words = f"{main.kernel} {'x'.join(str(d) for d in main.grid)}"
    if plan.splits > 1:
        words += f" {plan.splits} partials"
    return words + (" + dy copy" if dy_copy else "")


def _plan(pass_name, g, dtype, sms, forced):
    plan_fn = {"fprop": conv_tc.plan_fprop, "dgrad": conv_tc.plan_dgrad, "wgrad": conv_tc.plan_wgrad}[pass_name]
    return plan_fn(g, dtype=dtype, sms=sms, **forced)


def _timer(g, dtype, be):
    """fn(pass_name, forced, repeat) -> median seconds of the pass on backend `be` ("cuda"; "emu"
    only checks that the forced calls run), or None where `be` is unavailable."""
    from cnn_gpu import backend
    if backend.why_unavailable(be):
        return None
    from cnn_gpu.bench.devices import CudaDevice, EmuDevice
    device, rng = (CudaDevice() if be == "cuda" else EmuDevice()), np.random.default_rng(0)
    x, w, dy = (device.asarray(rng.standard_normal(shape).astype(dtype)) for shape in (g.x_shape, g.w_shape, g.y_shape))
    calls = {"fprop": lambda **kw: conv_tc.fprop(be, x, w, None, g, **kw),
             "dgrad": lambda **kw: conv_tc.dgrad(be, dy, w, g, **kw),
             "wgrad": lambda **kw: conv_tc.wgrad(be, dy, x, g, **kw)}

    def time(pass_name, forced, repeat):
        def call():
            calls[pass_name](**forced)
        for _ in range(3 if be == "cuda" else 1):   # compile and warm up
            call()
        return statistics.median(device.time_calls(call, [()], repeat))
    return time


def rows(layers, gpu: str, batch: int, repeat: int, dtypes=DTYPES, be="cuda"):
    """(layer, pass, dtype, plan, model us, measured us on `be` or "-", "*" for the planner's
    choice)."""
    spec = roofline.spec(gpu)
    table = []
    for layer in layers:
        g = dataclasses.replace(layer, N=batch).geometry()
        for dtype in dtypes:
            timer = _timer(g, dtype, be)
            math = "tf32" if dtype == "float32" else "fp32"
            for pass_name in PASSES:
                choices = alternatives(pass_name, g, dtype)
                if not choices:
                    continue
                picked = _plan(pass_name, g, dtype, spec.sms, {})
                seen = set()
                for forced in choices:
                    plan = _plan(pass_name, g, dtype, spec.sms, forced)
                    words = describe(plan, plan.dy_path == "channel_major")
                    if words in seen:   # an alternative the planner's choice already is
                        continue
                    seen.add(words)
                    model = sum(e.seconds for e in roofline.model_conv(pass_name, g, dtype, spec, math=math,
                                                                      **forced))
                    measured = timer(pass_name, forced, repeat) if timer else None
                    table.append((",".join(str(d) for d in dataclasses.astuple(layer)[1:]), pass_name, dtype, words,
                                  f"{model * 1e6:.1f}", "-" if measured is None else f"{measured * 1e6:.1f}",
                                  "*" if plan == picked else ""))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", help="the spec the model and the planner use (default: the GPU CuPy sees, so "
                                      "that the plans marked and described are the ones timed; else h100)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per plan on a GPU (median)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.gpu is None:
        from cnn_gpu import backend
        args.gpu = "h100" if backend.why_unavailable("cuda") else roofline.CURRENT_GPU
    headers = ("layer (C,H,W,K,R,stride,pad)", "pass", "dtype", "plan", "model us", "cuda us", "picked")
    print(f"Tensor-core plans at batch {args.batch}: the planner's choice (*) and its alternatives; "
          f"model us = MODELED on {args.gpu}, cuda us = measured (median of {args.repeat}) where a GPU is present")
    print(format_table(headers, rows(RESNET_LAYERS, args.gpu, args.batch, args.repeat), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
