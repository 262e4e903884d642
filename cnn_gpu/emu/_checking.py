"""Per-launch checking settings: defaults, the `checking` context manager, call overrides."""
from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

SCHEDULES = ("forward", "reverse", "random")


def _default_timeout() -> float:
    value = os.environ.get("CNN_GPU_EMU_TIMEOUT", "").strip()
    if not value:
        return 60.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # 0, negatives and NaN would make the watchdog fire at once or never
        raise ValueError(f"$CNN_GPU_EMU_TIMEOUT must be a positive number of seconds, got {value!r}")
    return seconds


# Outside any `checking` block: forward order and the checks that cost nothing noticeable.
DEFAULTS = {"schedule": "forward", "seed": None, "guard": True, "poison": True, "race": False, "timeout": None}

_settings: contextvars.ContextVar[dict] = contextvars.ContextVar("cnn_gpu_emu_checking", default=DEFAULTS)


def validate(name: str, value):
    if name == "schedule" and value not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {value!r}")
    if name == "seed" and value is not None:   # the launch's 64-bit seed: a larger one would wrap
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**64:
            raise ValueError(f"seed must be an int in [0, 2^64) or None; got {value!r}")
        return int(value)
    if name == "race":
        if value not in (False, True, "shared"):
            raise ValueError(f"race must be True, False or 'shared'; got {value!r}")
        return value if value == "shared" else bool(value)
    if name == "timeout" and value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"timeout must be a positive number of seconds (inf: no watchdog) or None; got {value!r}")
    return value


@contextlib.contextmanager
def checking(schedule: str = "forward", seed: int | None = None, guard: bool = True, poison: bool = True,
             race: bool | str = False, timeout: float | None = None):
    """Defaults for every emulator launch inside the block; a launch's own keywords still win. A
    nested block sets every option it takes, defaults included (timeout alone inherits when None).

    schedule: order the threads of a block run between barriers ("forward", "reverse", "random");
    seed: for "random" (None: a fresh seed per launch, shown in fault messages);
    guard: stage every array argument so that its last byte lies right before an inaccessible
    page (any access past its end faults at once) with a canary in front, and guard the end of
    dynamic shared memory (on by default; guard=False: the arrays as they are, no copies);
    poison: fill shared memory with NaN before each block;
    race: report two threads touching one byte of shared memory with no barrier between them (one
    of them writing), with both source lines, and of an array argument (threads of one block, or of
    two: blocks run in no fixed order, unless a __threadfence and an atomic order them: release in
    the writing block, acquire in the reading one; an atomic conflicts with plain accesses, not
    with other atomics); runs an instrumented build, several times slower. "shared": shared memory
    only;
    timeout: watchdog seconds for one launch (None: inherit; inf: no watchdog; default 60 or
    $CNN_GPU_EMU_TIMEOUT; the watchdog looks at the clock every 1 to 50 ms)."""
    new = dict(_settings.get())
    for name, value in (("schedule", schedule), ("seed", seed), ("guard", bool(guard)), ("poison", bool(poison)),
                        ("race", race)):
        new[name] = validate(name, value)
    if timeout is not None:
        new["timeout"] = validate("timeout", timeout)
    token = _settings.set(new)
    try:
        yield new
    finally:
        _settings.reset(token)


def effective(**overrides) -> dict:
    """The settings of one launch: the innermost `checking` block (or the defaults) + overrides."""
    settings = dict(_settings.get())
    for name, value in overrides.items():
        if value is not None:
            settings[name] = validate(name, value)
    if settings["timeout"] is None:
        settings["timeout"] = _default_timeout()
    return settings
