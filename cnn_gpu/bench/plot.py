"""`--plot`: time per (op, shape) and device as a PNG."""
from __future__ import annotations

from ..checkpoint import atomic_write


def require_matplotlib():
    """matplotlib.pyplot with the file-only Agg backend; ImportError with the fix when absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed: pip install 'cnn_gpu[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


def series_namer(rows):
    """The bar series of a row: its device, its dtype where the rows hold several (else one dtype's
    time would overwrite another's under the device's name), and the math mode when it is tf32."""
    several_dtypes = len({r.dtype for r in rows}) > 1

    def name(row) -> str:
        tf32 = ["tf32"] if row.math == "tf32" else []
        return " ".join([row.device, *([row.dtype] if several_dtypes else []), *tf32])
    return name


def write_plot(rows, path, title="") -> None:
    """Grouped horizontal bars: time per (op, shape) for each device (and dtype, math mode), log axis.
    Modeled rows are hatched and labelled "(MODELED)" in the legend."""
    plt = require_matplotlib()
    _series = series_namer(rows)
    cases = list(dict.fromkeys((r.op, r.shape) for r in rows))
    devices = list(dict.fromkeys(_series(r) for r in rows))
    modeled = {_series(r) for r in rows if r.modeled}
    times = {(r.op, r.shape, _series(r)): r.model_ms if r.modeled else r.median_ms for r in rows}
    height = 0.8 / len(devices)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(cases) * len(devices)))
    for i, device in enumerate(devices):
        ys = [n + i * height for n, case in enumerate(cases) if (*case, device) in times]
        xs = [times[(*case, device)] for case in cases if (*case, device) in times]
        if device in modeled:
            ax.barh(ys, xs, height=height, label=f"{device} (MODELED)", hatch="///", alpha=0.6)
        else:
            ax.barh(ys, xs, height=height, label=device)
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(cases))])
    ax.set_yticklabels([f"{op}  {shape}" for op, shape in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per call (ms, log scale; shorter is faster)" if not modeled else
                  "time per call (ms, log scale): measured medians; hatched bars are model estimates")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
