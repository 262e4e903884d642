"""Host time of a training step: the Python a step costs before any kernel runs.

    .venv/bin/python benchmarks/host_overhead.py [--models cnn,resnet18] [--batch 2] [--steps 20] [--optimizer sgd]
        [--clock wall] [--markdown]

Runs each model's training step (forward, cross-entropy, backward without dx of the images, SGD
with momentum or Adam: --optimizer) on the emu backend with every kernel launch checked as usual but not run, and the
emulator's NaN-filled allocations left as allocated (backend._poisoned): what remains is the
library's own host work per step (layers, functional ops, plans, device tables, argument checks). MEASURED on this
machine's CPU, per float32 ("fp32" and "tf32" math) and float16. On a GPU the host issues launches
ahead of the kernels, so this time bounds a step from below: a step whose kernels take less is
host-bound. CuPy's own cost per launch (argument packing, the driver call) comes on top. The
models are built narrow (NARROW: 8 channels where they have 16 to 512) and the batch small, so
NumPy's share stays small (host work here that a GPU would do on the device: allocations, layout
copies, the float16 master weights' conversions); the layers, passes and the Python that runs them
are the full-width model's (its split-K choices, and so a few launches, may differ; the arrays are
garbage, so their arithmetic warnings are silenced). "replayed" is the host time of the same step
recorded once and replayed (cnn_gpu.replay: its launches issued again, the optimizer's update run
as Python); on cuda each replayed launch adds CuPy's own cost.
--clock thread times each step in this thread's CPU time (time.thread_time) instead of wall time: on a
machine loaded by other work a step of a few ms is preempted whatever its turn, so even the fastest of
20 wall-time steps counts other processes' time slices, while its CPU time does not.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import cnn_gpu
from cnn_gpu import models, replay
from cnn_gpu.bench.dry_run import launches_counted_not_run, training_step
from conv_targets import format_table   # beside this script

SETTINGS = (("float32", "fp32"), ("float32", "tf32"), ("float16", "fp32"))
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}   # --clock: what a step's time is read from
NARROW = {"cnn": {"filters": 8}, "resnet": {"filters": 8}, "resnet18": {"width": 8}}


def step_host_time(name: str, dtype: str, math: str, batch: int, steps: int,
                   optimizer: str = "sgd", clock: str = "wall") -> tuple[float, int, float]:
    """(seconds a training step of model `name` takes on the host, launches a step, seconds a
    replay of it takes: cnn_gpu.replay): the fastest of `steps` steps (replays) after two warm-up
    steps (plans and device tables made): on a shared machine other work only ever adds to a step.
    `clock`: a key of CLOCKS."""
    now = CLOCKS[clock]
    rng = np.random.default_rng(0)
    image_shape = (3, 32, 32)
    model = models.build(name, image_shape, 10, dtype=np.dtype(dtype), rng=rng, **NARROW.get(name, {}))
    model.to("emu")
    step = training_step(model, (batch, *image_shape), 10, rng, optimizer)

    with cnn_gpu.math_mode(math), launches_counted_not_run() as counted:
        step()
        step()
        times = []
        for _ in range(steps):
            counted.clear()
            start = now()
            step()
            times.append(now() - start)
        launches = len(counted)
        with replay.record() as recorded:
            step()
        replays = []
        for _ in range(steps):
            start = now()
            recorded.replay()
            replays.append(now() - start)
    return min(times), launches, min(replays)


def rows(names, batch: int, steps: int, optimizer: str = "sgd", clock: str = "wall") -> list[tuple]:
    out = []
    for name in names:
        for dtype, math in SETTINGS:
            seconds, launches, replayed = step_host_time(name, dtype, math, batch, steps, optimizer, clock)
            out.append((name, dtype, math, launches, f"{seconds * 1e3:.1f}", f"{seconds / launches * 1e6:.0f}",
                        f"{replayed * 1e3:.2f}"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet18", help="comma-separated cnn_gpu.models names")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="SGD with momentum 0.9, or Adam")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall time, or this thread's CPU time (a machine loaded by other work)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    table = rows(args.models.split(","), args.batch, args.steps, args.optimizer, args.clock)
    print(f"Host time of a training step, batch {args.batch}, {args.optimizer}, kernels not run (MEASURED on this CPU; "
          f"fastest of {args.steps} steps, {args.clock} clock)")
    print(format_table(("model", "dtype", "math", "launches", "host ms/step", "host us/launch", "replayed ms/step"), table,
                       args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
