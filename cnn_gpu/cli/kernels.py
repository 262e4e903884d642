"""`cnn-gpu kernels`: compile every kernels/*.cu with NVRTC for each architecture and dtype, as the
cuda backend does (kernels/*.cuh headers inlined by backend.kernel_source), and print ptxas'
registers, spills, shared memory and the theoretical occupancy per kernel. Exit status 1 on a
compile error or any spilled byte, 2 when NVRTC is missing."""
from __future__ import annotations

import itertools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

DTYPES = ("float32", "float64")


def _arch_list(text: str) -> list[str]:
    from .. import nvrtc
    archs = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in archs if a not in nvrtc.ARCH_LIMITS]
    if unknown or not archs:
        raise ValueError(f"--arch: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(nvrtc.ARCHS)}")
    return archs


def add_arguments(parser) -> None:
    parser.add_argument("--arch", default=None, metavar="LIST",
                        help="comma-separated architectures (default: sm_70,sm_75,sm_80,sm_86,sm_89,sm_90)")
    parser.add_argument("--dtype", choices=DTYPES, action="append",
                        help="only this dtype (repeatable; default: both)")
    parser.add_argument("--file", action="append", metavar="NAME",
                        help="only this kernel file, e.g. pool.cu (repeatable; default: every kernels/*.cu)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON instead of a table")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiles run in parallel (default: the number of CPUs)")


def collect(files, dtypes, archs, jobs: int = 1):
    """[(file name, dtype, arch, reports or None, error message or None)] in a fixed order."""
    from .. import nvrtc

    def one(combo):
        path, dtype, arch = combo
        try:
            return path.name, dtype, arch, nvrtc.file_report(path, dtype, arch), None
        except nvrtc.CompileError as err:
            return path.name, dtype, arch, None, str(err)

    combos = list(itertools.product(files, dtypes, archs))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, combos))


def _format_table(results) -> str:
    header = ("file", "kernel", "dtype", "arch", "regs", "spill st/ld B", "smem B", "stack B", "threads",
              "occupancy")
    rows = []
    for file, dtype, arch, reports, error in results:
        if error is not None:
            rows.append((file, "COMPILE ERROR", dtype, arch, "", "", "", "", "", ""))
            continue
        for r in reports:
            occupancy = "-" if r.occupancy is None else f"{r.occupancy:.0%} ({r.blocks_per_sm} blk, {r.occupancy_limiter})"
            rows.append((file, r.name, dtype, arch, str(r.registers), f"{r.spill_store_bytes}/{r.spill_load_bytes}",
                         str(r.shared_bytes), str(r.stack_bytes), str(r.max_threads or "-"), occupancy))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run(args) -> int:
    from .. import backend, nvrtc
    reason = nvrtc.why_unavailable()
    if reason:
        print(f"cnn-gpu kernels: {reason}", file=sys.stderr)
        return 2
    try:
        archs = _arch_list(args.arch) if args.arch else list(nvrtc.ARCHS)
    except ValueError as err:
        print(f"cnn-gpu kernels: {err}", file=sys.stderr)
        return 2
    files = backend.kernel_files()
    if args.file:
        missing = sorted(set(args.file) - {path.name for path in files})
        if missing:
            print(f"cnn-gpu kernels: no kernel file {', '.join(missing)} in {backend.kernel_dir()}", file=sys.stderr)
            return 2
        files = [path for path in files if path.name in args.file]
    dtypes = args.dtype or list(DTYPES)
    results = collect(files, dtypes, archs, args.jobs)

    errors = [(f, d, a, e) for f, d, a, _, e in results if e is not None]
    spills = [(f, d, a, r.name, r.spill_bytes) for f, d, a, reports, _ in results if reports
              for r in reports if r.spill_bytes]
    compiler = nvrtc.load()
    if args.json:
        print(json.dumps({
            "nvrtc": {"path": compiler.path, "version": list(compiler.version)},
            "results": [{"file": f, "dtype": d, "arch": a, "error": e,
                         "kernels": [asdict(r) for r in reports] if reports else []}
                        for f, d, a, reports, e in results],
        }, indent=1))
    else:
        print(f"NVRTC {compiler.version[0]}.{compiler.version[1]} ({compiler.path}); options "
              f"{' '.join(backend.NVRTC_OPTIONS)} -DREAL=... -arch=<arch> --ptxas-options=-v")
        print(_format_table(results))
    for file, dtype, arch, error in errors:
        print(f"compile error: {file} {dtype} {arch}:\n{error}", file=sys.stderr)
    for file, dtype, arch, kernel, nbytes in spills:
        print(f"spill: {file} {kernel} {dtype} {arch}: {nbytes} bytes", file=sys.stderr)
    return 1 if errors or spills else 0
