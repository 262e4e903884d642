"""Recorded steps: the device work of a training step done again without the Python that issued it.

A ResNet-18 step issues ~220 kernel launches, each costing the host ~20 us of layers, plans and
argument checks (benchmarks/host_overhead.py): ~4.5 ms a step, more than an H100 needs for the
kernels themselves at batch 128 in tf32. PyTorch's answer is a CUDA graph; ours, on both kernel backends:

    with cnn_gpu.replay.record(x, labels) as step:   # runs the code once, recording its device work
        optimizer.zero_grad()
        loss = loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward())
        optimizer.step()
    for images, targets in batches:
        step.replay(images, targets)   # copied into x and labels; the same launches on the same arrays

Unlike `torch.cuda.graph`, recording runs the step (it is an ordinary step, not a capture). A
replay re-issues every kernel launch (arguments already checked) and every array made by other
device code (`backend.device_call`: cuBLAS matmuls, CuPy arithmetic), in order, on the arrays of
the recording, which it keeps alive (all of a step's arrays at once: ResNet-18 holds about three
times an eager step's peak; README, "Replaying a step").

Host state that changes from step to step is not baked in (`live`: Python run again at each
replay): the optimizer's update (learning-rate schedules, Adam's step counts, momentum as an eager
step), on the gradients then bound; zero_grad's unbinding and the backward's binding of each
parameter's .grad; batch norms' and Dropout(p=0)'s call counts; GradScaler's scale, unscaling,
check, step or skip, and update. Only the library's device work is recorded: array operations of
your own inside the block (NumPy on emu, CuPy on cuda) run once, when recording.

Refused while recording (RuntimeError; ValueError for the C-order copy; the recording unusable), as
a replay could not reproduce them: a loss read back as a float (use as_array=True), Dropout(p>0) in
training mode, an explicit GradScaler.unscale_ (code between it and step() would not be replayed),
a batch norm with momentum=None, an all-reduce over ranks, the numpy backend (no kernels), an input
the emulator would have copied to C order, a layer's backward whose forward ran before the
recording, a module with hooks (nn.hooks: Python a replay would not run). Refused at replay, before
any work (`guard`): a module called in the recording now in another mode (train()/eval()), on
another backend, with an attribute assigned since (settings, layers), with other parameter or
buffer arrays (load_state_dict, Module.to) or with hooks; another math mode or current GPU; a
gradient bound where the recorded backward found it unbound or the reverse (an eager backward would
add where the replay writes anew, or the reverse). Replay on the thread and CuPy stream of the
recording.
"""
from __future__ import annotations

import contextlib

from . import backend, precision
from .functional._checks import is_array
from .launch_checks import current_device

__all__ = ["Recording", "record", "live", "guard", "first_time", "refuse", "is_recording"]


class Recording:
    """The device work recorded by `record(*inputs)`; replay(*new_inputs) does it again."""

    def __init__(self, inputs: tuple):
        self._inputs = inputs
        self._recorder = None   # set when the recording has completed

    @property
    def entries(self) -> int:
        """How many pieces of device work (launches, device calls, live calls) a replay does."""
        return len(self._ready().entries)

    def replay(self, *new_inputs) -> None:
        """The recorded device work again, in order, on the recorded arrays, each of the inputs
        given to record() first overwritten with the new array in its place (same shape and dtype,
        on the same device; none given: as they are). RuntimeError before any of it where
        something the recorded code depended on has changed since (its guards)."""
        if backend.recording() is not None:
            raise RuntimeError("replay() inside a recording would record nothing of its work; replay outside it")
        recorder = self._ready()
        for check in recorder.guards:
            problem = check()
            if problem:
                raise RuntimeError(f"cannot replay this recording: {problem}; record the step again")
        if new_inputs:
            self._check_inputs(new_inputs)
            for recorded, new in zip(self._inputs, new_inputs):
                backend.module_of(recorded).copyto(recorded, new)
        for run in recorder.entries:
            run()

    def _check_inputs(self, new_inputs) -> None:
        if len(new_inputs) != len(self._inputs):
            raise TypeError(f"replay() takes the {len(self._inputs)} input(s) given to record(), or none; "
                            f"got {len(new_inputs)}")
        for i, (recorded, new) in enumerate(zip(self._inputs, new_inputs)):
            if backend.is_cupy_array(new) != backend.is_cupy_array(recorded) or not hasattr(new, "shape"):
                raise TypeError(f"input {i}: the recorded one is a {type(recorded).__name__}, got "
                                f"{type(new).__name__} (replay never moves data between host and device)")
            if new.shape != recorded.shape or new.dtype != recorded.dtype:
                raise ValueError(f"input {i} has shape {tuple(new.shape)} and dtype {new.dtype}; the recorded one "
                                 f"{tuple(recorded.shape)} and {recorded.dtype} (record again for another shape)")

    def _ready(self) -> backend.Recorder:
        if self._recorder is None:
            raise RuntimeError("this recording is not complete (still recording, or its code raised)")
        return self._recorder


@contextlib.contextmanager
def record(*inputs):
    """Run the block, recording this thread's device work into the Recording it yields (complete
    when the block ends without an exception). `inputs`: the arrays the block reads its data from
    (the batch), which replay(*new_inputs) overwrites (C-contiguous NumPy or CuPy arrays)."""
    if backend.recording() is not None:
        raise RuntimeError("record() inside a recording: recordings do not nest")
    for i, a in enumerate(inputs):
        if not is_array(a) or not a.flags.c_contiguous:
            raise TypeError(f"record() input {i} must be a C-contiguous NumPy or CuPy array, got "
                            f"{type(a).__name__}{'' if not hasattr(a, 'flags') else ' (not C-contiguous)'}")
    recording, recorder = Recording(inputs), backend.Recorder()
    mode, device = precision.get_math_mode(), _current_gpu()
    recorder.guards += [lambda: precision.get_math_mode() != mode and f"the math mode is now "
                                                                       f"{precision.get_math_mode()!r}, not {mode!r}",
                        lambda: _current_gpu() != device and f"the current GPU is now {_current_gpu()}, not {device}"]
    with backend.recording_into(recorder):
        yield recording
    recording._recorder = recorder


def _current_gpu():
    """The current CuPy device where the cuda backend is usable (its launches go there), else None."""
    if backend.why_unavailable("cuda"):
        return None
    return current_device()


def is_recording() -> bool:
    """Whether this thread is inside record()."""
    return backend.recording() is not None


def live(fn):
    """fn() now and, inside a recording, again at every replay, as Python (its own launches run
    anew each time, not replayed): for work whose kernel arguments change from step to step. fn
    must change arrays in place; arrays it returns are not those of later replays."""
    recorder = backend.recording()
    if recorder is None:
        return fn()
    with backend.recording_into(None):
        result = fn()
    recorder.entries.append(fn)
    return result


def guard(check) -> None:
    """Inside a recording: check() is asked before every replay, and a message it returns (the
    state the recorded code depended on has changed: a parameter array replaced, a layer's mode)
    stops the replay before any work, as a RuntimeError."""
    recorder = backend.recording()
    if recorder is not None:
        recorder.guards.append(check)


def first_time(key) -> bool:
    """Inside a recording, whether `key` is noted in it for the first time (then noted); False
    outside one. For what a recording checks once per object (a parameter's gradient binding)."""
    recorder = backend.recording()
    if recorder is None or key in recorder.noted:
        return False
    recorder.noted.add(key)
    return True


def refuse(what: str) -> None:
    """RuntimeError inside a recording: `what` would not be the same in a replay."""
    if backend.recording() is not None:
        raise RuntimeError(f"cannot record {what}: a replay would repeat the recorded step's value; "
                           f"run it outside cnn_gpu.replay.record()")
