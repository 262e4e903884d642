"""Result rows: derived columns, the printed tables, JSON and CSV files, the machine facts.

Measured rows (median_ms, gflops, ...) and modeled rows (modeled=True: model_ms, model_gflops, ...)
never share a number column: the tables print them as separate sections, and the JSON and CSV
carry them in separate fields with a `modeled` flag on every row. A row's `math` is the math mode
it ran in ("fp32" or "tf32"; "" for an op the mode does not change); derived columns compare rows
of the same mode, and a tf32 row's % of peak is of the dense TF32 tensor peak. A float16 row
(`--dtype float16`) is compared with rows of its own dtype, its % of peak of the dense FP16
tensor-core peak."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..checkpoint import atomic_write
from .devices import gpu_info, torch_or_none


@dataclass
class Row:
    op: str
    shape: str
    device: str
    dtype: str
    median_ms: float | None          # measured; None on a modeled row
    repeats: int
    gflops: float | None = None
    speedup_vs_numpy: float | None = None
    pct_peak: float | None = None
    pct_cudnn: float | None = None
    note: str = ""
    flops: int | None = field(default=None, repr=False)
    modeled: bool = False            # True: a roofline estimate (bench.modeled), nothing was run
    model_ms: float | None = None
    model_gflops: float | None = None
    model_pct_peak: float | None = None
    model_bound: str = ""            # what limits the longest launch: compute, shared, dram or launch
    model_launches: list | None = field(default=None, repr=False)   # per launch (JSON only)
    math: str = ""                   # math mode: "fp32", "tf32", or "" where the op does not depend on it

    def as_dict(self) -> dict:
        return asdict(self)


def finish_rows(rows, peak_gflops=None):
    """Fill speed-up over numpy, % of the GPU's peak and % of cuDNN in place, each against the row
    of the same case in the same dtype and math mode (cuDNN with TF32 off in fp32, allowed in
    tf32); % of peak of a tf32 row is of peak_gflops["tf32"], of a float16 row of
    peak_gflops["float16"] (left empty where that is unknown)."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row.op, row.shape, row.dtype, row.math), {})[row.device] = row
    for row in rows:
        if row.modeled:
            continue
        same_case = by_case[(row.op, row.shape, row.dtype, row.math)]
        numpy_row = same_case.get("numpy")
        if numpy_row is not None and row.device != "numpy":
            row.speedup_vs_numpy = numpy_row.median_ms / row.median_ms
        peak = (peak_gflops or {}).get("tf32" if row.math == "tf32" else row.dtype)
        if row.device in ("cuda", "torch-cuda") and peak and row.gflops is not None:
            row.pct_peak = 100 * row.gflops / peak
        cudnn = same_case.get("torch-cuda")
        if row.device == "cuda" and cudnn is not None:
            row.pct_cudnn = 100 * cudnn.median_ms / row.median_ms
    return rows


# --- output ---------------------------------------------------------------------------------------

COLUMNS = (("op", "op"), ("shape", "shape"), ("device", "device"), ("dtype", "dtype"), ("math", "math"),
           ("median_ms", "median ms"),
           ("gflops", "GFLOP/s"), ("speedup_vs_numpy", "vs numpy"), ("pct_peak", "% peak"),
           ("pct_cudnn", "% cuDNN"))


def _cell(key, value) -> str:
    if value is None or (key == "math" and not value):
        return "-"
    if key in ("median_ms", "model_ms", "measured_ms"):
        return f"{value:.4g}" if value < 1000 else f"{value:.0f}"
    if key in ("gflops", "model_gflops"):
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    if key in ("speedup_vs_numpy", "measured_over_model"):
        return f"{value:.2f}x"
    if key in ("pct_peak", "pct_cudnn", "model_pct_peak"):
        return f"{value:.1f}%"
    if key == "waves":
        return f"{value:.2f}"
    if key == "issue_ceiling":
        return f"{value:.2f}"
    return str(value)


NUMERIC = {"median_ms", "gflops", "speedup_vs_numpy", "pct_peak", "pct_cudnn", "model_ms", "model_gflops",
           "model_pct_peak", "blocks_per_sm", "waves", "issue_ceiling", "measured_ms", "measured_over_model"}


def _render(columns, records, markdown: bool) -> list[str]:
    """Lines of an aligned text (or markdown) table of `records` (dicts) under (key, title) columns."""
    table = [[title for _, title in columns]]
    table += [[_cell(key, record.get(key)) for key, _ in columns] for record in records]
    if markdown:
        lines = ["| " + " | ".join(table[0]) + " |",
                 "|" + "|".join("---:" if key in NUMERIC else "---" for key, _ in columns) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in table[1:]]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) if key in NUMERIC else cell.ljust(w)
                       for cell, w, (key, _) in zip(r, widths, columns)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _shown(key, rows) -> bool:
    """Whether a column is printed: the math column once a row ran in tf32, the dtype column once
    rows of several dtypes are side by side, others when filled."""
    if key == "math":
        return any(r.math == "tf32" for r in rows)
    if key == "dtype":
        return len({r.dtype for r in rows}) > 1
    return any(getattr(r, key) is not None for r in rows)


def _measured_table(rows, markdown: bool) -> list[str]:
    columns = [(key, title) for key, title in COLUMNS
               if key in ("op", "shape", "device", "median_ms") or _shown(key, rows)]
    notes = sorted({f"{row.device}: {row.note}" for row in rows if row.note})
    lines = _render(columns, [r.as_dict() for r in rows], markdown)
    return lines + [""] + notes if notes else lines


MODEL_COLUMNS = (("op", "op"), ("shape", "shape"), ("device", "device"), ("dtype", "dtype"), ("math", "math"),
                 ("pipe", "pipe"),
                 ("model_ms", "model ms"),
                 ("model_gflops", "model GFLOP/s"), ("model_pct_peak", "model % peak"), ("model_bound", "bound"),
                 ("blocks_per_sm", "blocks/SM"), ("waves", "waves"), ("issue_ceiling", "issue ceiling"),
                 ("assumed", "assumed"))


def _pipe(launches) -> str | None:
    """Where the row's FLOPs run: "tensor" (tensor cores) or "SIMT" (FMA lanes); None without FLOPs."""
    busiest = max(launches, key=lambda launch: launch["flops"])
    if not busiest["flops"]:
        return None
    return "SIMT" if busiest.get("pipe", "fma") == "fma" else "tensor"


def _modeled_table(rows, markdown: bool) -> list[str]:
    """The modeled rows, with the longest launch's occupancy, waves and issue ceiling, and numbered
    notes for inputs that are defaults rather than measured; with tf32 rows, the math mode and the
    pipe the FLOPs run on."""
    assumptions = list(dict.fromkeys(a for row in rows for launch in row.model_launches for a in launch["assumed"]))
    records = []
    for row in rows:
        longest = max(row.model_launches, key=lambda launch: launch["ms"])
        used = sorted({assumptions.index(a) + 1 for launch in row.model_launches for a in launch["assumed"]})
        records.append({**row.as_dict(), "blocks_per_sm": longest["blocks_per_sm"] or None,
                        "waves": longest["waves"] or None, "issue_ceiling": longest["issue_ceiling"] or None,
                        "assumed": ",".join(map(str, used)) or None, "pipe": _pipe(row.model_launches)})
    title = "MODELED: roofline estimates on a GPU spec, not measurements (README, \"Performance model\")"
    tf32 = _shown("math", rows)
    half = any(r.dtype == "float16" for r in rows)
    columns = [(key, name) for key, name in MODEL_COLUMNS
               if (key not in ("math", "pipe") or tf32 or (key == "pipe" and half)) and (key != "dtype"
                                                                                        or _shown(key, rows))]
    lines = [f"**{title}**" if markdown else title, ""] + _render(columns, records, markdown)
    notes = sorted({f"{row.device}: {row.note}" for row in rows})
    if tf32:
        notes.append("math tf32: % peak of the dense TF32 tensor-core peak (of the FP32 FMA peak on a GPU without "
                     "TF32); pipe: where the FLOPs run (tensor cores, or the SIMT kernels on TF32-rounded operands); "
                     "the issue ceiling of a tensor launch is its MMA issue ceiling")
    if half:
        notes.append("float16: % peak of the dense FP16 tensor-core peak (FP32 accumulation) where the FLOPs run on "
                     "tensor cores (pipe tensor), else of the FP32 FMA peak; bytes of every array at 2 per element")
    notes += [f"assumed [{i}]: {a}" for i, a in enumerate(assumptions, 1)]
    return lines + [""] + notes


COMPARISON_COLUMNS = (("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("math", "math"),
                      ("measured_ms", "cuda median ms"),
                      ("model", "model"),
                      ("model_ms", "model ms"), ("measured_over_model", "measured / model"))


def _comparison_table(rows, markdown: bool) -> list[str]:
    """The cuda rows (this project's kernels, measured) beside the model's estimate of the same case."""
    measured = {(r.op, r.shape, r.dtype, r.math): r for r in rows if r.device == "cuda" and not r.modeled}
    records = [{"op": r.op, "shape": r.shape, "dtype": r.dtype, "math": r.math, "model": r.device,
                "model_ms": r.model_ms, "measured_ms": measured[(r.op, r.shape, r.dtype, r.math)].median_ms,
                "measured_over_model": measured[(r.op, r.shape, r.dtype, r.math)].median_ms / r.model_ms}
               for r in rows if r.modeled and (r.op, r.shape, r.dtype, r.math) in measured]
    if not records:
        return []
    title = "MEASURED vs MODELED: the cuda kernels' median time over the model's estimate (1.00x = the model is exact)"
    columns = [(key, name) for key, name in COMPARISON_COLUMNS if key not in ("math", "dtype") or _shown(key, rows)]
    return [f"**{title}**" if markdown else title, ""] + _render(columns, records, markdown)


def format_table(rows, markdown=False) -> str:
    """The rows as aligned text tables (or markdown tables): the measured rows (columns that are empty
    in every row, e.g. the GPU columns on a CPU-only machine, left out), then the modeled rows in
    their own section, then measured beside modeled where both exist."""
    measured = [r for r in rows if not r.modeled]
    modeled = [r for r in rows if r.modeled]
    sections = []
    if measured or not modeled:
        sections.append(_measured_table(measured, markdown))
    if modeled:
        sections.append(_modeled_table(modeled, markdown))
    comparison = _comparison_table(rows, markdown)
    if comparison:
        sections.append(comparison)
    return "\n\n".join("\n".join(lines) for lines in sections)


def write_json(rows, path, meta: dict) -> None:
    import json
    write_text(path, json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")


def write_csv(rows, path) -> None:
    import csv
    import io
    out = io.StringIO()
    fields = [name for name in Row.__dataclass_fields__ if name != "model_launches"]   # per-launch detail: JSON
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.as_dict().items()})
    write_text(path, out.getvalue())


def write_text(path, text: str) -> None:
    """Write atomically: a crash leaves the old file or none, never half of one."""
    atomic_write(path, lambda f: f.write(text.encode()))


BLAS_FACTS = ("version", "architecture", "threading_layer", "prefix", "filepath")   # threadpoolctl's keys


def environment() -> dict:
    """Versions and machine facts stored with the results."""
    import platform
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    torch = torch_or_none()
    if torch is not None:
        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
    try:   # each thread pool: which library, which of its CPU kernels (OpenBLAS: "architecture"), threads
        from threadpoolctl import threadpool_info
        meta["blas"] = [{"api": p.get("internal_api"), "user_api": p.get("user_api"), "threads": p.get("num_threads"),
                         **{k: p[k] for k in BLAS_FACTS if p.get(k) is not None}} for p in threadpool_info()]
    except ImportError:
        pass
    # set on these machines for old OpenBLAS builds; they hold a current one to its Haswell kernels
    meta["openblas_env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    gpu = gpu_info()
    if gpu:
        meta["gpu"] = gpu
    return meta
