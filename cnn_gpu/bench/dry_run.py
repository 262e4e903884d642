"""Dry runs on the emulator backend: every kernel launch passes backend.launch's argument checks and is
recorded, nothing is compiled or run. What they show is the library's own side of a computation (its
Python, its launches in order): benchmarks/host_overhead.py times it, and the step model
(modeled._train_step) is checked against the launches a training step makes."""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend


@contextlib.contextmanager
def launches_counted_not_run():
    """Inside: emu launches pass backend.launch's checks and are counted (the yielded list gets
    each kernel's name) but run nothing, and emu allocations are not filled with NaN (the arrays
    hold garbage, so NumPy's warnings about their values are silenced)."""
    counted = []
    real_function, real_poisoned = backend.kernel_function, backend._poisoned
    backend.kernel_function = lambda be, family, dtype, kernel: (
        lambda grid, block, args, shared_mem=0: counted.append(kernel))
    backend._poisoned = lambda a: a
    try:
        with np.errstate(all="ignore"):
            yield counted
    finally:
        backend.kernel_function, backend._poisoned = real_function, real_poisoned


def training_step(model, batch_shape, classes: int, rng, optimizer: str = "sgd"):
    """A function running one training step of `model` (on emu) as the benchmarks time it: forward,
    cross entropy (its loss left on the device), backward without the images' gradient, an
    `optimizer` step: "sgd" (momentum 0.9) or "adam"."""
    from .. import nn, optim
    if optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    elif optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
    else:
        raise ValueError(f"optimizer {optimizer!r}: expected 'sgd' or 'adam'")
    loss_fn = nn.CrossEntropyLoss()
    loss_fn.to(model.backend)
    x = rng.standard_normal(batch_shape).astype(next(model.parameters()).dtype)
    labels = rng.integers(0, classes, batch_shape[0])

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
    return step
