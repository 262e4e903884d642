"""Recorded steps: the device work of a training step done again without the Python that issued it.

A ResNet-18 step issues ~220 kernel launches, each costing the host ~40 us of layers, plans and
argument checks (benchmarks/host_overhead.py): ~9 ms a step, more than an H100 needs for the
kernels themselves at batch 128. PyTorch's answer is a CUDA graph; ours, on both kernel backends:

    with cnn_gpu.replay.record() as step:        # runs the code once, recording its device work
        optimizer.zero_grad()
        loss = loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward())
        optimizer.step()
    for images, targets in batches:
        x[...] = images; labels[...] = targets   # new data into the recorded arrays
        step.replay()                            # the same launches on the same arrays

Unlike `torch.cuda.graph`, recording runs the step (it is an ordinary step, not a capture). A
replay re-issues every kernel launch (arguments already checked) and every array made by other
device code (`backend.device_call`: cuBLAS matmuls, CuPy arithmetic), in order, on the arrays of
the recording, which it keeps alive (all of a step's arrays at once: ResNet-18 holds about three
times an eager step's peak; README, "Replaying a step"). Host state that changes from step to step is not baked in:
the optimizer's update runs again as Python on each replay (`live`: learning-rate schedules, Adam's
step counts, momentum buffers as an eager step) on the gradients then bound (a recorded backward
binds each parameter's .grad again, whatever zero_grad did since), BatchNorm2d and Dropout(p=0)
count their calls, and GradScaler scales by its current scale, and unscales, checks and steps (or
skips) each replay's gradients. Only the library's device work is recorded: array operations of
your own inside the block (NumPy on emu, CuPy on cuda) run once, when recording.
What a replay could not reproduce is refused while recording (RuntimeError, the recording
discarded): a loss read back as a float (use as_array=True), dropout in training mode, an explicit
GradScaler.unscale_ (code between it and step() would not be replayed), BatchNorm2d with
momentum=None, the numpy backend (no kernels), an input the emulator would have copied to C order.
A replay does not see Python-side changes to the model (train()/eval(), new arrays assigned to
parameters): record again after them. Replay on the thread and CuPy stream of the recording.
"""
from __future__ import annotations

import contextlib

from . import backend

__all__ = ["Recording", "record", "live", "refuse", "is_recording"]


class Recording:
    """The device work recorded by `record()`; replay() does it again."""

    def __init__(self):
        self._entries = None   # set when the recording has completed

    @property
    def entries(self) -> int:
        """How many pieces of device work (launches, device calls, live calls) a replay does."""
        return len(self._ready())

    def replay(self) -> None:
        """The recorded device work again, in order, on the recorded arrays."""
        if backend.recording() is not None:
            raise RuntimeError("replay() inside a recording would record nothing of its work; replay outside it")
        for run in self._ready():
            run()

    def _ready(self) -> list:
        if self._entries is None:
            raise RuntimeError("this recording is not complete (still recording, or its code raised)")
        return self._entries


@contextlib.contextmanager
def record():
    """Run the block, recording this thread's device work into the Recording it yields (complete
    when the block ends without an exception)."""
    if backend.recording() is not None:
        raise RuntimeError("record() inside a recording: recordings do not nest")
    recording, entries = Recording(), []
    with backend.recording_into(entries):
        yield recording
    recording._entries = entries


def is_recording() -> bool:
    """Whether this thread is inside record()."""
    return backend.recording() is not None


def live(fn):
    """fn() now and, inside a recording, again at every replay, as Python (its own launches run
    anew each time, not replayed): for work whose kernel arguments change from step to step. fn
    must change arrays in place; arrays it returns are not those of later replays."""
    entries = backend.recording()
    if entries is None:
        return fn()
    with backend.recording_into(None):
        result = fn()
    entries.append(fn)
    return result


def refuse(what: str) -> None:
    """RuntimeError inside a recording: `what` would not be the same in a replay."""
    if backend.recording() is not None:
        raise RuntimeError(f"cannot record {what}: a replay would repeat the recorded step's value; "
                           f"run it outside cnn_gpu.replay.record()")
