"""Data-parallel scaling of a training step (`cnn-gpu bench --nproc N`): images/s measured in one
process and in N processes under mpiexec (one BLAS thread each, on the numpy backend), their
scaling efficiency, and the roofline model's all-reduce time per step for the same gradient
bytes on GPUs (labelled as a model).

The worker (`python -m cnn_gpu.bench.scaling MODEL BATCH STEPS`) times STEPS steps of forward,
loss, backward, gradient all-reduce and SGD update after one warm-up step; rank 0 prints one JSON
line: the global images per second and the seconds per step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from .shapes import ModelShape

SINGLE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _worker(model_name: str, batch: int, steps: int) -> None:
    from .. import distributed, nn, optim
    from .training import build_model
    world = distributed.init()
    shape = ModelShape(model_name, batch)
    model = build_model(shape, np.float32, seed=0)
    distributed.broadcast_parameters(model)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(1 + world.rank)
    x = rng.standard_normal((batch, *shape.image_shape)).astype(np.float32)
    y = rng.integers(0, shape.classes, batch)

    def step():
        optimizer.zero_grad()
        loss_fn.forward(model(x), y)
        model.backward(loss_fn.backward())
        distributed.allreduce_gradients(model)
        optimizer.step()

    step()
    distributed.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    distributed.barrier()
    seconds = (time.perf_counter() - started) / steps
    if world.rank == 0:
        gradient_bytes = sum(p.data.nbytes for p in model.parameters())
        print(json.dumps({"ranks": world.size, "seconds_per_step": seconds,
                          "images_per_s": batch * world.size / seconds, "gradient_bytes": gradient_bytes}))


def measure(nproc: int, model_name: str = "cnn", batch: int = 32, steps: int = 20) -> list[dict]:
    """[one process, nproc processes]: the worker's JSON rows, measured (modeled: False)."""
    from ..distributed import find_mpiexec
    mpiexec = find_mpiexec()
    env = dict(os.environ, CNN_GPU_BACKEND="numpy", **SINGLE_THREAD)
    worker = [sys.executable, "-m", "cnn_gpu.bench.scaling", model_name, str(batch), str(steps)]
    rows = []
    for command in (worker, [mpiexec, "-n", str(nproc)] + worker):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])}...: {done.stderr.strip()[-500:]}")
        rows.append(dict(json.loads(done.stdout.strip().splitlines()[-1]), modeled=False))
    return rows


def format_scaling(rows: list[dict], model_name: str, batch: int) -> str:
    one, many = rows
    efficiency = many["images_per_s"] / (many["ranks"] * one["images_per_s"])
    lines = [f"MEASURED data-parallel scaling, numpy backend, {model_name} at batch {batch} per process, "
             f"one BLAS thread per process:",
             f"  1 process : {one['images_per_s']:9.1f} images/s ({1e3 * one['seconds_per_step']:.1f} ms/step)",
             f"  {many['ranks']} processes: {many['images_per_s']:9.1f} images/s "
             f"({1e3 * many['seconds_per_step']:.1f} ms/step), scaling efficiency {efficiency:.0%}"]
    return "\n".join(lines)


def format_allreduce_model(gradient_bytes: int) -> str:
    from ..roofline.collective import data_parallel_step
    lines = [f"MODELED gradient all-reduce per step ({gradient_bytes / 1e6:.2f} MB of gradients; "
             f"cnn_gpu.roofline.collective states the model):"]
    for gpus, machines in ((8, 1), (8, 2), (8, 4)):
        estimate = data_parallel_step(gradient_bytes, gpus, machines)
        lines.append(f"  {machines} x {gpus} H100 over {estimate.link.name}: {1e6 * estimate.seconds:8.1f} us (model)")
    return "\n".join(lines)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
