"""`cnn-gpu kernels`: compile every kernels/*.cu with NVRTC for each architecture and dtype, as the
cuda backend does (kernels/*.cuh headers inlined by backend.kernel_source), and print ptxas'
registers, spills, shared memory and the theoretical occupancy per kernel. Exit status 1 on a
compile error or any spilled byte, 2 when NVRTC is missing.

`--sass` prints the SASS report instead (cnn_gpu.sass: each kernel's hot-loop instruction mix and
FMA issue ceiling, from nvdisasm); exit status 1 on a compile or disassembly error, 2 when NVRTC
or nvdisasm is missing or cannot handle an --arch asked for."""
from __future__ import annotations

import itertools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from . import comma_list, path_argument, positive_int, write_output

DTYPES = ("float32", "float64", "float16")   # float16: the files with a float16 build (backend.FLOAT16_FAMILIES)


def _arch_list(archs: list[str]) -> list[str]:
    """--arch's names (comma_list: deduplicated, never empty), each one NVRTC's report knows."""
    from .. import nvrtc
    unknown = [a for a in archs if a not in nvrtc.ARCH_LIMITS]
    if unknown:
        raise ValueError(f"--arch: unknown {', '.join(unknown)}; choose from {', '.join(nvrtc.ARCHS)}")
    return archs


def _default_archs() -> list[str]:
    """Every arch of nvrtc.ARCHS the loaded NVRTC targets; the others are named on stderr (CUDA 13's
    NVRTC dropped sm_70: a GPU machine with only CuPy's may lack it)."""
    from .. import nvrtc
    archs = [arch for arch in nvrtc.ARCHS if not nvrtc.why_arch_unsupported(arch)]
    for arch in nvrtc.ARCHS:
        if arch not in archs:
            print(f"cnn-gpu kernels: {arch} left out: {nvrtc.why_arch_unsupported(arch)}", file=sys.stderr)
    return archs


def add_arguments(parser) -> None:
    parser.add_argument("--arch", type=comma_list, default=None, metavar="LIST",
                        help="comma-separated architectures (default: sm_70,sm_75,sm_80,sm_86,sm_89,sm_90, "
                             "those the NVRTC found can target)")
    parser.add_argument("--dtype", choices=DTYPES, action="append",
                        help="only this dtype (repeatable; default: every build: float32, float64, and float16 "
                             "for the files that have one)")
    parser.add_argument("--file", "--family", action="append", type=comma_list, metavar="NAME",
                        help="only this kernel file or family, e.g. pool.cu or conv2d_fprop,conv2d_dgrad "
                             "(repeatable; default: every kernels/*.cu)")
    parser.add_argument("--json", nargs="?", const="-", default=None, type=path_argument, metavar="PATH",
                        help="write the reports as JSON to PATH (no PATH: print them instead of the table)")
    parser.add_argument("--sass", action="store_true",
                        help="report each kernel's hot-loop SASS instruction mix and FMA issue ceiling (needs nvdisasm)")
    parser.add_argument("--markdown", action="store_true", help="with --sass: print the table as Markdown")
    parser.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
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

    combos = _combinations(files, dtypes, archs, lambda path: path.stem)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, combos))


def _combinations(files, dtypes, archs, family_of) -> list:
    """(file, dtype, arch) of every build to compile: those the launchers make (backend.has_build:
    float16 only for the files that have one, the tensor-core files from sm_80 in float32 and float16)."""
    from .. import backend
    return [(f, d, a) for f, d, a in itertools.product(files, dtypes, archs) if backend.has_build(family_of(f), d, a)]


def _left_out(files, dtypes, archs, dtypes_asked: bool, archs_asked: bool) -> list[str]:
    """What an explicit --dtype or --arch asked for that no launcher builds (backend.has_build)."""
    from .. import backend
    lines = []
    for dtype in dtypes if dtypes_asked else ():
        if without := [path.name for path in files if not backend.has_build(path.stem, dtype)]:
            lines.append(f"no {dtype} build of {', '.join(without)}")
    for arch in archs if archs_asked else ():
        if newer_only := [path.name for path in files if any(
                backend.has_build(path.stem, d) and not backend.has_build(path.stem, d, arch) for d in dtypes)]:
            lines.append(f"no {arch} build of {', '.join(newer_only)} (tensor-core files: "
                         f"sm_{backend.TENSOR_CORE_MIN_ARCH} and newer)")
    return lines


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


def _write_json(document, target: str) -> bool:
    """Print `document` (target "-") or write it to the file `target` atomically; False (said on
    stderr) where the file cannot be written."""
    from ..checkpoint import atomic_write
    text = json.dumps(document, indent=1) + "\n"
    if target == "-":
        print(text, end="")
        return True
    return write_output("kernels", target, lambda path: atomic_write(Path(path), lambda f: f.write(text.encode())))


def _selected_files(args):
    """The kernels/*.cu files --file/--family names (all without it); ValueError for unknown names."""
    from .. import backend
    files = backend.kernel_files()
    if not args.file:
        return files
    wanted = {name.removesuffix(".cu") for names in args.file for name in names}
    missing = sorted(wanted - {path.stem for path in files})
    if missing:
        raise ValueError(f"no kernel file {', '.join(missing)} in {backend.kernel_dir()}")
    return [path for path in files if path.stem in wanted]


def run(args) -> int:
    from .. import nvrtc
    from . import check_outputs
    reason = nvrtc.why_unavailable()
    if reason:
        print(f"cnn-gpu kernels: {reason}", file=sys.stderr)
        return 2
    try:
        if args.markdown and not args.sass:
            raise ValueError("--markdown needs --sass")
        archs = _arch_list(args.arch) if args.arch else _default_archs()
        files = _selected_files(args)
        check_outputs(args, "json", stdout=("json",))    # before minutes of compiling, not after
    except ValueError as err:
        print(f"cnn-gpu kernels: {err}", file=sys.stderr)
        return 2
    dtypes = args.dtype or list(DTYPES)
    for line in _left_out(files, dtypes, archs, bool(args.dtype), bool(args.arch)):
        print(f"cnn-gpu kernels: {line}", file=sys.stderr)
    cupys = nvrtc.cupy_compiler()   # the one the cuda backend builds with (backend._cuda_module)
    if cupys is not None and os.path.realpath(cupys.path) != os.path.realpath(nvrtc.load().path):
        print(f"cnn-gpu kernels: the cuda backend builds with CuPy's NVRTC {cupys.version[0]}.{cupys.version[1]} "
              f"({cupys.path}), not with the one this report uses", file=sys.stderr)
    if not _combinations(files, dtypes, archs, lambda path: path.stem):
        return 2   # nothing to compile is a usage error, not an empty table
    if args.sass:
        return _run_sass(args, [path.stem for path in files], dtypes, archs)
    return _run_ptxas(args, files, dtypes, archs)


def _run_ptxas(args, files, dtypes, archs) -> int:
    from .. import backend, nvrtc
    results = collect(files, dtypes, archs, args.jobs)
    errors = [(f, d, a, e) for f, d, a, _, e in results if e is not None]
    spills = [(f, d, a, r.name, r.spill_bytes) for f, d, a, reports, _ in results if reports
              for r in reports if r.spill_bytes]
    compiler = nvrtc.load()
    if args.json and not _write_json({
            "nvrtc": {"path": compiler.path, "version": list(compiler.version)},
            "results": [{"file": f, "dtype": d, "arch": a, "error": e,
                         "kernels": [asdict(r) for r in reports] if reports else []}
                        for f, d, a, reports, e in results]}, args.json):
        return 1
    if args.json != "-":
        print(f"NVRTC {compiler.version[0]}.{compiler.version[1]} ({compiler.path}); options "
              f"{' '.join(backend.NVRTC_OPTIONS)} -DREAL=... -arch=<arch> --ptxas-options=-v")
        print(_format_table(results))
    for file, dtype, arch, error in errors:
        print(f"compile error: {file} {dtype} {arch}:\n{error}", file=sys.stderr)
    for file, dtype, arch, kernel, nbytes in spills:
        print(f"spill: {file} {kernel} {dtype} {arch}: {nbytes} bytes", file=sys.stderr)
    return 1 if errors or spills else 0


def _run_sass(args, families, dtypes, archs) -> int:
    from .. import nvrtc, sass
    reasons = {arch: sass.why_unavailable(arch) for arch in archs}
    unreadable = {arch: reason for arch, reason in reasons.items() if reason}
    if unreadable and (args.arch or len(unreadable) == len(archs)):
        print(f"cnn-gpu kernels --sass: {next(iter(unreadable.values()))}", file=sys.stderr)
        return 2
    for arch, reason in unreadable.items():
        print(f"cnn-gpu kernels --sass: skipping {arch}: {reason}", file=sys.stderr)
    archs = [arch for arch in archs if arch not in unreadable]

    def one(combo):
        try:
            return sass.kernel_rows(*combo), None
        except (nvrtc.CompileError, sass.DisassemblyError) as err:
            return [], f"{' '.join(combo)}: {err}"

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, _combinations(families, dtypes, archs, lambda family: family)))
    rows = [row for found, _ in results for row in found]
    errors = [error for _, error in results if error]
    compiler, disassembler = nvrtc.load(), sass.disasm.find()
    if args.json and not _write_json({"nvrtc": {"path": compiler.path, "version": list(compiler.version)},
                                      "nvdisasm": {"path": disassembler.path, "version": list(disassembler.version)},
                                      "rows": rows}, args.json):
        return 1
    if args.json != "-":
        if not args.markdown:
            print(f"NVRTC {compiler.version[0]}.{compiler.version[1]}, nvdisasm {disassembler.version[0]}."
                  f"{disassembler.version[1]}; hot loop = steady-state iteration (cnn_gpu.sass.loops); "
                  "LDS/LDG/STS/LDGSTS as count x bits; ceiling = FMA issue ceiling (cnn_gpu.sass.mix)")
        print(sass.format_table(rows, markdown=args.markdown))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0
