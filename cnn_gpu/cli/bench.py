"""`cnn-gpu bench`: time every op on NumPy (CPU), the CUDA kernels (GPU) and PyTorch where installed."""
from __future__ import annotations

import argparse
import sys

from . import comma_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import bench
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "shape sets:\n" + "".join(f"  {name:8s} {s.description}\n" for name, s in bench.SHAPE_SETS.items())
        + "ops:\n" + "".join(f"  {name:20s} {desc}\n" for name, (_, _, desc) in bench.OPS.items())
        + "\nGFLOP/s counts 2*N*K*P*Q*(C/groups)*R*S per convolution pass (fprop, dgrad, wgrad alike).\n"
          "Times are medians of repeated calls after a warm-up, inputs rotated among several random sets;\n"
          "GPU calls are timed with CUDA events. Ctrl-C prints the rows finished so far.")
    parser.add_argument("--shapes", default="default", choices=list(bench.SHAPE_SETS),
                        help="shape set (default: %(default)s; emu needs 'tiny')")
    parser.add_argument("--ops", type=comma_list, default=None, metavar="OP[,OP...]",
                        help="ops to time (default: all but conv2d_fwd_bwd)")
    parser.add_argument("--device", type=comma_list, default=None, metavar="DEV[,DEV...]",
                        help=f"devices among {', '.join(bench.DEVICES)} (default: numpy plus cuda, torch and "
                             "torch-cuda where available; torch-cuda adds a TF32 row for float32)")
    parser.add_argument("--dtype", default="float32", choices=bench.DTYPES, help="default: %(default)s")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed calls per row (default: as many as fit in ~0.3 s, at least 3)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for NumPy's BLAS (via threadpoolctl) and PyTorch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and machine facts as JSON")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--plot", metavar="PNG", help="also plot time per op and device (needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _machine_line(meta: dict) -> str:
    blas = ", ".join(f"{p['api']} {p['threads']} threads" for p in meta.get("blas", []))
    parts = [f"NumPy {meta['numpy']} ({blas or 'BLAS threads unknown'})", f"{meta['cpu_count']} CPUs"]
    if "torch" in meta:
        parts.append(f"PyTorch {meta['torch']} ({meta['torch_threads']} threads)")
    if "gpu" in meta:
        parts.append(f"GPU {meta['gpu']['name']}")
    return "machine: " + "; ".join(parts)


def run(args) -> int:
    from .. import bench
    devices = args.device or bench.default_devices()
    ops = args.ops or list(bench.DEFAULT_OPS)
    # Every argument is checked before anything is timed.
    try:
        if args.repeat is not None and args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if "emu" in devices and args.shapes != "tiny":
            raise ValueError(f"the emulator runs only with --shapes tiny (it executes every GPU thread on the CPU, "
                             f"far too slow for --shapes {args.shapes})")
        if args.plot:
            bench.require_matplotlib()
        if args.threads:
            bench.set_threads(args.threads)
        cases = bench.make_cases(args.shapes, ops)
        device_objects = bench.make_devices(devices, args.dtype)
    except (ValueError, ImportError) as err:
        print(f"cnn-gpu bench: {err}", file=sys.stderr)
        return 2

    rows, interrupted = [], False
    try:
        for row in bench.run_cases(cases, device_objects, args.dtype, args.repeat, args.seed,
                                   progress=not args.no_progress):
            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
    meta = bench.environment()
    meta.update(shapes=args.shapes, dtype=args.dtype, devices=devices, threads=args.threads,
                interrupted=interrupted)
    bench.finish_rows(rows, meta.get("gpu", {}).get("peak_gflops"))

    print(f"cnn-gpu bench: shapes={args.shapes} dtype={args.dtype} (convolutions: N,C,H,W,K,R,stride,pad)")
    print(_machine_line(meta) + "\n")
    print(bench.format_table(rows, markdown=args.markdown))
    for path, write in ((args.json, lambda p: bench.write_json(rows, p, meta)),
                        (args.csv, lambda p: bench.write_csv(rows, p)),
                        (args.plot, lambda p: bench.write_plot(rows, p, f"cnn-gpu bench --shapes {args.shapes} "
                                                                     f"({args.dtype})"))):
        if path and rows:
            write(path)
            print(f"wrote {path}")
    if interrupted:
        print(f"interrupted: {len(rows)} of {len(cases) * len(device_objects)} rows done", file=sys.stderr)
        return 130
    return 0
