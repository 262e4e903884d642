"""Math modes of float32 convolutions, and the operand rounding the NumPy oracle shares with the
tensor-core kernels.

"fp32" (the default) computes float32 convolutions exactly in FP32. "tf32" rounds their operands
to TF32 (8-bit exponent, 10-bit mantissa; round to nearest, ties away from zero, as PTX's
`cvt.rna.tf32.f32`) and accumulates in FP32: on tensor cores on sm_80 and newer, and the same way
on the NumPy backend, so the backends agree within the accumulation-order tolerance. Other
dtypes ignore the mode. Like the backend, the mode is per process with a per-thread override.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

MATH_MODES = ("fp32", "tf32")
TF32_MANTISSA_BITS = 10


class _ThreadState(threading.local):
    override = None   # math_mode's mode in this thread (a class default: no getattr default to raise for)


_state = _ThreadState()
_process_mode = "fp32"


def _check_mode(name) -> str:
    if name not in MATH_MODES:
        raise ValueError(f"unknown math mode {name!r}; expected one of {', '.join(MATH_MODES)}")
    return name


def get_math_mode() -> str:
    """The math mode of float32 convolutions in this thread: "fp32" or "tf32"."""
    override = _state.override
    return override if override is not None else _process_mode


def set_math_mode(name: str) -> None:
    """Set the process's math mode (a `math_mode` block still takes precedence)."""
    global _process_mode
    _process_mode = _check_mode(name)


@contextlib.contextmanager
def math_mode(name: str):
    """`with math_mode("tf32"): ...` runs float32 convolutions in that mode inside the block."""
    previous = _state.override
    _state.override = _check_mode(name)
    try:
        yield name
    finally:
        _state.override = previous


def round_to_float16(a):
    """An FP32 array (NumPy or CuPy) rounded to float16 once, on its device (nearest even; past
    65504 inf, as cvt.rn.f16.f32 does, without NumPy's overflow warning)."""
    with np.errstate(over="ignore"):
        return a.astype(np.float16)


def round_to_tf32(a):
    """float32 `a` (NumPy or CuPy) rounded to TF32, kept in float32 storage: the 13 low mantissa
    bits are rounded to nearest with ties away from zero, as `cvt.rna.tf32.f32` does. Infinities
    and NaNs pass through (a NaN stays a NaN; a finite value may round up to infinity)."""
    from .backend import module_of
    xp = module_of(a)
    a = xp.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"round_to_tf32 takes float32 arrays, not {a.dtype}")
    dropped = 23 - TF32_MANTISSA_BITS
    bits = a.view(xp.uint32)
    # Sign and magnitude are separate in IEEE bits: adding half of the dropped ulp to the
    # magnitude and truncating rounds half-way cases away from zero; a carry moves into the exponent.
    rounded = (bits + xp.uint32(1 << (dropped - 1))) & xp.uint32(~((1 << dropped) - 1) & 0xFFFFFFFF)
    return xp.where(xp.isfinite(a), rounded.view(xp.float32), a)


def conv_operands(dtype, mode: str | None = None):
    """The function the NumPy backend applies to float32 convolution operands in `mode` (the
    current one when None): TF32 rounding in "tf32", none otherwise or for other dtypes."""
    mode = get_math_mode() if mode is None else _check_mode(mode)
    if mode == "tf32" and np.dtype(dtype) == np.float32:
        return round_to_tf32
    return None
