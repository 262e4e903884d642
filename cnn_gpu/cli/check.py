"""`cnn-gpu check`: every op's forward and backward on a device against NumPy float64 and finite differences."""
from __future__ import annotations

import argparse
import json
import sys

from ..precision import MATH_MODES
from . import check_outputs, comma_list, path_argument, seed, write_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import check
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Each op runs on a seeded sweep of configurations (strides, paddings, dilations, groups, odd sizes,\n"
        "ceil_mode, ...). Error = max|device - numpy float64| / max|numpy float64| over all outputs and\n"
        f"configurations; tolerance {check.TOLERANCE['float64']:g} (float64) or {check.TOLERANCE['float32']:g} "
        f"(float32, x{check.REDUCTION_SCALE} for ops that sum).\n"
        f"The backward is also checked against float64 central differences of the device's forward "
        f"(tolerance {check.FD_TOLERANCE:g}).\n"
        "--math tf32 (float32): the convolutions run in the tf32 math mode against the NumPy oracle in the\n"
        "same mode (same TF32 operands, summed exactly), element by element: |device - oracle| <= "
        f"{check.TF32_SUM_K} x 2^-24 x sum|products|\n(FP32 summation order); the other ops are unaffected "
        "by the mode and keep the float32 tolerance.\n"
        "--dtype float16: every op runs on float16 arrays (FP16 storage, FP32 math, one rounding) against the\n"
        "NumPy oracle on the same float16 inputs (FP32 math, one rounding); tolerance "
        f"{check.FLOAT16_TOLERANCE:g} = 2 float16 ulps (2 x 2^-10)\nof max|output|.\n"
        f"Configurations per op: quick {check.RANDOM_CONFIGS['quick']}, normal edge cases + "
        f"{check.RANDOM_CONFIGS['normal']}, thorough edge cases + {check.RANDOM_CONFIGS['thorough']}.\n"
        "Exit status: 0 all passed, 1 a failure, 2 bad arguments or no kernel backend.")
    parser.add_argument("--device", choices=("emu", "cuda", "numpy"), default=None,
                        help="backend to check (default: cuda with a GPU, otherwise emu; numpy checks the "
                             "oracle itself: float32 against float64 and finite differences)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick",
                       help="two random configurations per op (seconds on the emulator)")
    modes.add_argument("--thorough", dest="mode", action="store_const", const="thorough",
                       help="edge cases plus 40 random configurations per op, element-wise differences")
    parser.set_defaults(mode="normal")
    parser.add_argument("--dtype", choices=("float64", "float32", "float16"), default=None,
                        help="dtype run on the device (the reference is float64, or for float16 the NumPy "
                             "oracle in float16; default: float64, float32 with --math tf32 or --device numpy)")
    parser.add_argument("--math", choices=MATH_MODES, default="fp32",
                        help="math mode of float32 convolutions (cnn_gpu.set_math_mode; default: %(default)s)")
    parser.add_argument("--ops", type=comma_list, default=None, metavar="OP[,OP...]",
                        help=f"ops to check (default: all: {', '.join(check.OPS)})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the configurations and inputs")
    parser.add_argument("--json", type=path_argument, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")


def run(args) -> int:
    from .. import check
    from ..backend import available_backends, why_unavailable
    try:
        device = args.device or check.default_device()
        if device not in available_backends():
            raise RuntimeError(f"backend {device!r} is not available: {why_unavailable(device)}")
        ops = args.ops or list(check.OPS)
        # numpy in float64 would be compared with itself
        dtype = args.dtype or ("float32" if args.math == "tf32" or device == "numpy" else "float64")
        if device == "numpy" and dtype == "float16" and args.math == "fp32":   # the float16 oracle is numpy's own
            raise ValueError("--device numpy --dtype float16 would compare the NumPy backend with itself (its float16 "
                             "ops are the oracle); check float16 on emu or cuda")
        check_outputs(args, "json")
        pending = check.check_ops(device, ops, args.mode, dtype, args.seed, args.math)
    except (RuntimeError, ValueError) as err:
        print(f"cnn-gpu check: {err}", file=sys.stderr)
        return 2

    print(f"cnn-gpu check: device={device} dtype={dtype} math={args.math} mode={args.mode} seed={args.seed}\n",
          flush=True)
    if device == "numpy" and dtype == "float64":
        print("(numpy in float64 is the reference itself: its error column is 0 by construction; the finite "
              "differences check its gradients)\n", flush=True)
    results = []
    try:
        from tqdm import tqdm
        with tqdm(total=len(ops), desc="check", unit="op", file=sys.stderr, leave=False) as bar:
            for result in pending:
                results.append(result)
                bar.set_postfix_str(f"{result.op} {'PASS' if result.passed else 'FAIL'}")
                bar.update()
    except KeyboardInterrupt:
        print(check.format_results(results, args.markdown))
        print(f"interrupted after {len(results)} of {len(ops)} ops", file=sys.stderr)
        return 130
    print(check.format_results(results, args.markdown))
    for result in results:
        for trace in result.details:
            print(f"--- {result.op}:\n{trace}", file=sys.stderr)
    failed = [r.op for r in results if not r.passed]
    if args.json:
        from ..bench import write_text
        document = json.dumps({"device": device, "dtype": dtype, "math": args.math, "mode": args.mode,
                               "seed": args.seed, "results": [r.as_dict() for r in results]}, indent=2) + "\n"
        if not write_output("check", args.json, lambda path: write_text(path, document)):
            return 1
    print(f"\n{len(results) - len(failed)} of {len(results)} ops passed" + (f"; FAILED: {', '.join(failed)}"
                                                                          if failed else ""))
    return 1 if failed else 0
