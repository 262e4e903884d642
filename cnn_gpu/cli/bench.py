"""`cnn-gpu bench`: time every op on NumPy (CPU), the CUDA kernels (GPU) and PyTorch where installed,
or estimate it on a GPU spec with the roofline model (--device model:h100; model:list lists the specs)."""
from __future__ import annotations

import argparse
import sys

from ..precision import MATH_MODES
from . import check_outputs, comma_list, path_argument, seed, write_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import bench, roofline
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "shape sets:\n" + "".join(f"  {name:8s} {s.description}\n" for name, s in bench.SHAPE_SETS.items())
        + "ops:\n" + "".join(f"  {name:20s} {desc}\n" for name, (_, _, desc) in bench.OPS.items())
        + "\nGFLOP/s counts 2*N*K*P*Q*(C/groups)*R*S per convolution pass (fprop, dgrad, wgrad alike).\n"
          "Times are medians of repeated calls after a warm-up, inputs rotated among several random sets;\n"
          "GPU calls are timed with CUDA events. Ctrl-C prints the rows finished so far.\n\n"
          f"model:SPEC devices ({', '.join(roofline.SPECS)}, or {roofline.CURRENT_GPU}: the GPU CuPy sees) time "
          "nothing: they print\nthe roofline MODEL's estimate in a separate, labelled section (JSON/CSV: "
          "\"modeled\": true);\n--device model:list prints the specs. With cuda rows too, a measured-vs-modeled "
          "table follows.\n\n"
          "--math fp32,tf32 times the float32 convolutions (and the training step) once per math mode, side by "
          "side:\ncnn_gpu in that mode (cnn_gpu.set_math_mode; tf32 runs the tensor-core kernels on sm_80+), "
          "PyTorch CUDA with\ntorch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 off "
          "(fp32) or on (tf32), PyTorch CPU\nin fp32 only (it has no TF32), and the model on what the mode runs "
          "(tf32 % peak: of the dense TF32 peak).\n\n"
          "--dtype float32,float16 times every case once per dtype, side by side: cnn_gpu on float16 arrays "
          "(FP16 storage,\nFP32 math), PyTorch on float16 tensors, the model with 2-byte elements (float16 % "
          "peak: of the dense FP16\ntensor-core peak). With --math fp32,tf32 the float32 convolutions also run "
          "once per mode: fp32, tf32 and\nfloat16 rows side by side.")
    parser.add_argument("--shapes", default="default", choices=list(bench.SHAPE_SETS),
                        help="shape set (default: %(default)s; emu needs 'tiny')")
    parser.add_argument("--ops", type=comma_list, default=None, metavar="OP[,OP...]",
                        help="ops to time (default: all but conv2d_fwd_bwd and train_step_replayed)")
    parser.add_argument("--device", type=comma_list, default=None, metavar="DEV[,DEV...]",
                        help=f"devices among {', '.join(bench.DEVICES)} and model:SPEC (default: numpy plus cuda, "
                             "torch and torch-cuda where available)")
    parser.add_argument("--dtype", type=comma_list, default=["float32"], metavar="DTYPE[,DTYPE...]",
                        help=f"dtypes among {', '.join(bench.DTYPES)}, each its own rows (default: float32)")
    parser.add_argument("--math", type=comma_list, default=["fp32"], metavar="MODE[,MODE...]",
                        help=f"math modes of the float32 convolutions among {', '.join(MATH_MODES)}, each its own "
                             "rows (default: fp32)")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="batch size of every shape of the set (default: the set's own, e.g. 16 for resnet)")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed calls per row (default: as many as fit in ~0.3 s, at least 3)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for NumPy's BLAS (via threadpoolctl) and PyTorch")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random inputs")
    parser.add_argument("--json", type=path_argument, metavar="PATH", help="also write the rows and machine facts as JSON")
    parser.add_argument("--csv", type=path_argument, metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--plot", type=path_argument, metavar="PNG", help="also plot time per op and device (needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="instead of the op table: a training step's images/s in 1 and in N processes under "
                             "mpiexec on the CPU, its scaling efficiency, and the modeled all-reduce time on GPUs")


def _machine_line(meta: dict) -> str:
    blas = "; ".join(", ".join(filter(None, (f"{p['api']} {p.get('version', '')}".strip(),
                                             p.get("architecture") and f"{p['architecture']} kernels",
                                             f"{p['threads']} threads")))
                     for p in meta.get("blas", []) if p.get("user_api") == "blas")
    parts = [f"NumPy {meta['numpy']} ({blas or 'BLAS unknown'})", f"{meta['cpu_count']} CPUs"]
    if meta.get("openblas_env"):
        parts.append(" ".join(f"{k}={v}" for k, v in meta["openblas_env"].items()))
    if "torch" in meta:
        parts.append(f"PyTorch {meta['torch']} ({meta['torch_threads']} threads)")
    if "gpu" in meta:
        parts.append(f"GPU {meta['gpu']['name']}")
    return "machine: " + "; ".join(parts)


def run(args) -> int:
    from .. import bench
    if args.nproc is not None:
        return _scaling(args)
    if args.device and "model:list" in args.device:
        given = ["other devices"] * any(device != "model:list" for device in args.device) + _given(args, LIST_IGNORES)
        if given:
            print(f"cnn-gpu bench: --device model:list prints the GPU specs and runs nothing; it takes no "
                  f"{', '.join(given)}", file=sys.stderr)
            return 2
        from ..roofline import format_specs
        print(format_specs())
        return 0
    devices = args.device or bench.default_devices()
    ops = args.ops or list(bench.DEFAULT_OPS)
    # Every argument is checked before anything is timed.
    try:
        if args.repeat is not None and args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        unknown = [mode for mode in args.math if mode not in MATH_MODES]
        if unknown:
            raise ValueError(f"unknown math mode(s) {', '.join(unknown)}; expected some of {', '.join(MATH_MODES)}")
        unknown = [dtype for dtype in args.dtype if dtype not in bench.DTYPES]
        if unknown:
            raise ValueError(f"unknown dtype(s) {', '.join(unknown)}; expected some of {', '.join(bench.DTYPES)}")
        if "tf32" in args.math and "float32" not in args.dtype:
            raise ValueError(f"--math tf32 changes float32 convolutions only, not {','.join(args.dtype)}")
        if "emu" in devices and (args.shapes != "tiny" or (args.batch or 0) > 4):
            asked = f"--shapes {args.shapes}" + (f" --batch {args.batch}" if args.batch else "")
            raise ValueError(f"the emulator runs only with --shapes tiny and --batch <= 4 (it executes every GPU "
                             f"thread on the CPU, far too slow for {asked})")
        if args.plot:
            bench.require_matplotlib()
        check_outputs(args, "json", "csv", "plot")
        if args.threads:
            bench.set_threads(args.threads)
        cases = bench.make_cases(args.shapes, ops, args.batch)
        device_objects = bench.make_devices(devices)
    except (ValueError, ImportError) as err:
        print(f"cnn-gpu bench: {err}", file=sys.stderr)
        return 2

    rows, interrupted, out_of_memory = [], False, None
    try:
        for row in bench.run_cases(cases, device_objects, args.dtype, args.repeat, args.seed,
                                   progress=not args.no_progress, math=args.math):
            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
    except MemoryError as err:   # a case's inputs (e.g. a --batch too large for this machine)
        out_of_memory = str(err) or "MemoryError"
    meta = bench.environment()
    meta.update(shapes=args.shapes, batch=args.batch, dtype=args.dtype, math=args.math, devices=devices,
                threads=args.threads, interrupted=interrupted)
    models = [d for d in device_objects if d.modeled]
    if models:
        meta["models"] = {d.name: d.spec.as_dict() for d in models}
    bench.finish_rows(rows, meta.get("gpu", {}).get("peak_gflops"))

    batch = "" if args.batch is None else f" batch={args.batch}"
    print(f"cnn-gpu bench: shapes={args.shapes}{batch} dtype={','.join(args.dtype)} math={','.join(args.math)} "
          f"(convolutions: N,C,H,W,K,R,stride,pad)")
    print(_machine_line(meta) + "\n")
    print(bench.format_table(rows, markdown=args.markdown))
    for device in device_objects:
        for op, why in device.skipped.items():
            print(f"{device.name}: {op} {why}")
    for device in device_objects:
        for mode in args.math:
            why = device.math_unsupported(mode)
            if why and "float32" in args.dtype:
                print(f"{device.name}: no {mode} rows: {why}")
    # written even without rows (an empty table), so that an older file of the same name is not
    # taken for this run's; a plot only of rows
    for path, write in ((args.json, lambda p: bench.write_json(rows, p, meta)),
                        (args.csv, lambda p: bench.write_csv(rows, p)),
                        (args.plot if rows else None, lambda p: bench.write_plot(
                            rows, p, f"cnn-gpu bench --shapes {args.shapes} ({','.join(args.dtype)})"))):
        if path:
            if not write_output("bench", path, write):
                return 1
            print(f"wrote {path}")
    if interrupted:
        print(f"interrupted: {len(rows)} of {len(cases) * len(device_objects)} rows done", file=sys.stderr)
        return 130
    if out_of_memory:
        print(f"cnn-gpu bench: out of memory after {len(rows)} rows: {out_of_memory}", file=sys.stderr)
        return 2
    if not rows:
        unwritten = " (--plot not written)" if args.plot else ""
        print(f"cnn-gpu bench: no rows: none of these devices runs these ops{unwritten}", file=sys.stderr)
        return 1
    return 0


# the options of the op table, with their defaults: --nproc measures one model's step, no table
SCALING_IGNORES = {"ops": None, "device": None, "shapes": "default", "csv": None, "plot": None, "threads": None,
                   "dtype": ["float32"], "math": ["fp32"]}


def _given(args, defaults: dict) -> list[str]:
    """The options of `defaults` ({name: default}) given another value, as "--name"."""
    return [f"--{name}" for name, default in defaults.items() if getattr(args, name, default) != default]


# what --device model:list, which runs nothing, refuses beside it
LIST_IGNORES = {**{name: default for name, default in SCALING_IGNORES.items() if name != "device"}, "json": None,
                "batch": None, "repeat": None, "markdown": False, "seed": 0}


def _scaling(args) -> int:
    from ..bench import scaling
    try:
        if args.nproc < 2:
            raise ValueError(f"--nproc must be >= 2, got {args.nproc}")
        for name, value in (("--batch", args.batch), ("--repeat", args.repeat)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        given = _given(args, SCALING_IGNORES)
        if given:
            raise ValueError(f"--nproc measures the training step of the small CNN alone; it takes no "
                             f"{', '.join(given)}")
        check_outputs(args, "json", "csv", "plot")
    except ValueError as err:
        print(f"cnn-gpu bench: {err}", file=sys.stderr)
        return 2
    batch = args.batch or 32
    try:
        rows = scaling.measure(args.nproc, "cnn", batch, steps=args.repeat or 20)
    except RuntimeError as err:
        print(f"cnn-gpu bench: --nproc {err}", file=sys.stderr)
        return 2
    print(scaling.format_scaling(rows, "cnn", batch))
    print(scaling.format_allreduce_model(rows[0]["gradient_bytes"]))
    if args.json:
        import json

        from ..bench import write_text
        text = json.dumps({"scaling": rows}, indent=1)
        if not write_output("bench", args.json, lambda path: write_text(path, text)):
            return 1
    return 0
