"""Timing the cases: warm-up, repeated calls, the median; one Row per case and device."""
from __future__ import annotations

import statistics
import sys

import numpy as np

from .. import precision
from .devices import Device
from .rows import Row

# Without --repeat, each row times about this many seconds of calls (at least MIN_REPEAT calls).
TIME_BUDGET_S = 0.3
MIN_REPEAT, MAX_REPEAT = 3, 100


def measure(device: Device, fn, input_sets, repeat: int | None = None) -> tuple[float, int]:
    """(median seconds per call, number of timed calls): one warm-up call per input set, then
    `repeat` timed calls (by default as many as fit in TIME_BUDGET_S, at least MIN_REPEAT)."""
    for inputs in input_sets:
        fn(*inputs)
    device.synchronize()
    if repeat is None:
        probe = statistics.median(device.time_calls(fn, input_sets, 1))
        repeat = int(min(MAX_REPEAT, max(MIN_REPEAT, TIME_BUDGET_S / max(probe, 1e-9))))
    times = device.time_calls(fn, input_sets, repeat)
    return statistics.median(times), repeat


def case_math_modes(case, dtype, math=("fp32",)) -> tuple:
    """The math modes `case` runs in: each of `math` for a float32 op that depends on the mode,
    ("",) for any other (run in the default mode; its rows carry no mode)."""
    return tuple(math) if case.math and np.dtype(dtype) == np.float32 else ("",)


def run_cases(cases, devices, dtype="float32", repeat=None, seed=0, progress=True, math=("fp32",)):
    """Yield a Row for every case on every device in every dtype of `dtype` (one name or several)
    and every math mode of `math` that the case depends on (cases outermost, then dtypes, then
    modes, so an interrupted run has whole cases and a case's dtypes and modes sit side by side);
    a device without a mode (Device.math_unsupported) is left out of it. A model device estimates
    instead of timing, and yields nothing for an op it does not model. Derived columns (speed-up,
    % of peak and of cuDNN) are filled by `finish_rows`."""
    from tqdm import tqdm
    dtypes = [np.dtype(d) for d in ((dtype,) if isinstance(dtype, (str, np.dtype, type)) else dtype)]
    runs = [(case, dt, mode, device) for case in cases for dt in dtypes for mode in case_math_modes(case, dt, math)
            for device in devices if not device.math_unsupported(mode or "fp32")]
    with tqdm(total=len(runs), desc="bench", unit="row", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for case, dt, mode, device in runs:
            bar.set_postfix_str(f"{case.op} {case.label} {device.name} {dt.name} {mode}".rstrip())
            with precision.math_mode(mode or "fp32"):
                row = _row(case, device, dt, repeat, seed, mode or "fp32")
            if row is not None:
                row.math = mode
                yield row
            bar.update()


def _row(case, device: Device, dtype, repeat, seed, math: str) -> Row | None:
    if device.modeled:
        return device.model_row(case, dtype, math)
    device.prepare(math)
    prepared = case.setup(device, dtype, np.random.default_rng(seed))
    if prepared is None:   # the case does not run on this device
        device.skipped[case.op] = "has no rows: it does not run on this device (see cnn-gpu bench --help)"
        return None
    fn, input_sets = prepared
    del prepared
    seconds, count = measure(device, fn, input_sets, repeat)
    del fn, input_sets  # free (device) memory before the next case allocates its inputs
    gflops = case.flops / seconds / 1e9 if case.flops else None
    return Row(case.op, case.label, device.name, dtype.name, seconds * 1e3, count, gflops, note=device.note,
               flops=case.flops)
