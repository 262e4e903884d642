"""Rows of the SASS report (one per kernel x arch x dtype), their disk cache, and the tables."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections import Counter

import numpy as np

from .. import _cache
from . import loops, mix
from .disasm import Function, SassUnavailable, disassemble, find, why_unavailable

# Bump when a rule or a field changes: it keys the disk cache.
ANALYSIS_VERSION = 4   # 3: compiles in a fixed child process (cnn_gpu._nvrtc_lib); 4: epilogue loops set aside
_WEIGHTED = frozenset({"ffma", "dfma", "hfma2", "mma"})


def hot_loop_mix(function: Function, dtype, arch: str) -> dict:
    """The hot loop of one disassembled function (cnn_gpu.sass.loops states the rules) and its mix:
    `hot_loop` ("0x0100-0x0340", None when the function has no loop and its entry path is
    measured), the counts of cnn_gpu.sass.mix.count, `fma_share` (fma / instructions),
    `local_memory_loop` and `local_memory` (LDL + STL in the loop and in the whole function),
    `kernel_instructions` and `issue_ceiling` (mix.issue_ceiling for `dtype` on `arch`)."""
    region, path = loops.hot_loop(function, lambda p: sum(mix.classify(ins) in _WEIGHTED for ins in p))
    counts = mix.count(path)
    return {
        "hot_loop": None if region is None else f"0x{region.start:04x}-0x{region.end:04x}",
        **counts,
        "fma_share": counts["fma"] / counts["instructions"] if counts["instructions"] else 0.0,
        "local_memory_loop": counts["local"],
        "local_memory": sum(mix.classify(ins) == "local" for ins in function.instructions),
        "kernel_instructions": len(function.instructions),
        "issue_ceiling": mix.issue_ceiling(counts, dtype, arch),
    }


def families() -> list[str]:
    """The kernel families: the stems of kernels/*.cu."""
    from .. import backend
    return [path.stem for path in backend.kernel_files()]


def kernel_rows(family: str, dtype, arch: str) -> list[dict]:
    """One row per kernel of kernels/<family>.cu compiled as the cuda backend does for `dtype` and
    `arch`: family, kernel, arch, dtype, registers, stack_bytes, then hot_loop_mix's fields.
    Cached on disk per (source text, options, tool versions); SassUnavailable when nvdisasm cannot
    read `arch`, nvrtc.NvrtcUnavailable / CompileError from the compile."""
    from .. import backend, nvrtc
    if family not in families():
        raise ValueError(f"no kernel family {family!r}; choose from {', '.join(families())}")
    if arch not in nvrtc.ARCH_LIMITS:
        raise ValueError(f"arch must be one of {', '.join(nvrtc.ARCHS)}, got {arch!r}")
    dtype_name = np.dtype(dtype).name
    options = (*backend.NVRTC_OPTIONS, *backend.dtype_options(dtype_name))
    reason = why_unavailable(arch)
    if reason:
        raise SassUnavailable(reason)
    source = backend.kernel_source(family)
    identity = json.dumps([ANALYSIS_VERSION, source, options, arch, nvrtc.load().version, find().version])
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return copy.deepcopy(_rows(family, source, dtype_name, arch, key))


@functools.lru_cache(maxsize=None)
def _rows(family: str, source: str, dtype_name: str, arch: str, key: str) -> list[dict]:
    stem = f"{family}-{dtype_name}-{arch}"
    cached = _cache.read_json("sass", stem, key)
    if cached is not None:
        return cached
    from .. import nvrtc
    cubin, log = nvrtc.compile_as_backend(source, f"{family}.cu", dtype_name, arch)
    functions = disassemble(cubin, arch)
    rows = []
    for report in nvrtc.reports_of(cubin, log, arch):
        rows.append({"family": family, "kernel": report.name, "arch": arch, "dtype": dtype_name,
                     "registers": report.registers, "stack_bytes": report.stack_bytes,
                     **hot_loop_mix(functions[report.name], dtype_name, arch)})
    _cache.write_json("sass", stem, key, rows)
    return rows


# --- tables ---------------------------------------------------------------------------------------

def widths_summary(bits: list[int]) -> str:
    """[32, 32, 128] -> "2x32+1x128"; "-" when empty."""
    counted = sorted(Counter(bits).items())
    return "+".join(f"{n}x{width}" for width, n in counted) or "-"


COLUMNS = ("family", "kernel", "dtype", "arch", "regs", "hot loop", "instr", "FMA", "FMA share", "MMA",
           "LDS", "LDG", "STS", "LDGSTS", "BAR", "branch", "int", "local loop/kernel", "ceiling")


def _cells(row: dict) -> tuple[str, ...]:
    return (row["family"], row["kernel"], row["dtype"], row["arch"], str(row["registers"]), row["hot_loop"] or "none",
            str(row["instructions"]), str(row["fma"]), f"{row['fma_share']:.1%}", str(row["mma"]),
            widths_summary(row["lds_bits"]), widths_summary(row["ldg_bits"]), widths_summary(row["sts_bits"]),
            widths_summary(row["ldgsts_bits"]), str(row["bar"]), str(row["branches"]), str(row["integer"]),
            f"{row['local_memory_loop']}/{row['local_memory']}", f"{row['issue_ceiling']:.0%}")


def format_table(rows, markdown: bool = False) -> str:
    """The rows as an aligned text table, or a Markdown table."""
    body = [_cells(row) for row in rows]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(cells[i]) for cells in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [COLUMNS, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
