"""float16 on every functional op: FP16 storage, FP32 math, each output rounded to FP16 once.

`@takes_float16(kernels=...)` on a public op gives it this rule for float16 inputs:
- backend "numpy" (the oracle): the float16 arrays are widened to float32, the float32 op runs,
  and every float output is rounded to float16 once (gradients too); a loss returned as a Python
  float keeps its FP32 value. Arrays the op updates in place (`updates`, e.g. running statistics)
  are written back rounded.
- "emu" and "cuda", by `kernels`: True, the op runs its kernels' float16 build (FP16 loads and
  stores around FP32 math); "float32", it runs its float32 kernels on widened copies the same
  way as the numpy path (linear: cuBLAS/NumPy GEMMs whose float16 accumulation we do not
  control).
float16 inputs must not be mixed with float32/float64 ones (TypeError): ops never change dtype
silently; but for the arguments named in `compute_args` (statistics an op returned in the compute
type: `compute_outputs`, the last items of a tuple it returns, which stay FP32) float32 is the
dtype to give. Calls without float16 arrays go straight to the op.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .. import backend as _backend
from . import _checks

FLOAT16 = np.dtype(np.float16)
COMPUTE = np.dtype(np.float32)   # the math (and accumulation) type of float16 ops


# an op's usual arguments that are never arrays, passed over without is_array's checks
_NOT_ARRAYS = frozenset({int, float, str, bool, tuple, type(None)})


def _is_float16(a) -> bool:
    kind = type(a)
    if kind is np.ndarray:
        return a.dtype == FLOAT16
    return kind not in _NOT_ARRAYS and _checks.is_array(a) and a.dtype == FLOAT16


def _is_other_float_array(a) -> bool:
    """Whether `a` is a float array of another dtype than float16 (plain arguments passed over by type)."""
    return type(a) not in _NOT_ARRAYS and _checks.is_array(a) and a.dtype.kind == "f" and a.dtype != FLOAT16


def _all_float16(args, kwargs: dict, compute_args: tuple) -> bool:
    """Whether every float array argument is float16 (or float32 where a keyword of compute_args)."""
    if any(map(_is_other_float_array, args)):
        return False
    for name, a in kwargs.items():
        if _is_other_float_array(a) and not (name in compute_args and a.dtype == COMPUTE):
            return False
    return True


def _rounded(result, originals: dict, kept: int = 0):
    """`result` with every float32 array rounded to float16 but a tuple's last `kept` items; a
    widened input handed back as it is (dropout at p = 0 returns its input) becomes the caller's
    own array again."""
    if isinstance(result, tuple):
        rounded = len(result) - kept
        return tuple(_rounded(r, originals) if i < rounded else r for i, r in enumerate(result))
    if _checks.is_array(result) and result.dtype == COMPUTE:
        if id(result) in originals:
            return originals[id(result)]
        with np.errstate(over="ignore"):   # past the FP16 range is inf, as the kernels' rounding gives it
            return _backend.astype(result, FLOAT16)
    return result


def takes_float16(*, kernels, updates: tuple = (), compute_args: tuple = (), compute_outputs: int = 0):
    """Decorator of a public functional op (see the module docstring). `kernels`: True or
    "float32", how emu/cuda run it; `updates`: names of array arguments it writes in place;
    `compute_args`: names of arguments that may be float32 with float16 inputs; `compute_outputs`:
    how many last items of a returned tuple stay float32."""
    if kernels not in (True, "float32"):
        raise ValueError(f"kernels must be True or 'float32', got {kernels!r}")

    def decorate(op):
        signature = inspect.signature(op)

        @functools.wraps(op)
        def run(*args, **kwargs):
            values = (*args, *kwargs.values())
            if not any(map(_is_float16, values)):
                return op(*args, **kwargs)
            if kernels is True and kwargs.get("backend") in ("emu", "cuda") and _all_float16(args, kwargs,
                                                                                              compute_args):
                return op(*args, **kwargs)   # the layers' calls: no signature to bind (every step)
            bound = signature.bind(*args, **kwargs)
            arrays = {name: a for name, a in bound.arguments.items() if _checks.is_array(a)}
            for name in compute_args:
                if name in arrays and arrays[name].dtype == COMPUTE:
                    del arrays[name]   # float32 as given: the compute type
            floats = {name: a for name, a in arrays.items() if a.dtype.kind == "f"}
            first = next(name for name, a in floats.items() if a.dtype == FLOAT16)
            _checks.same_dtype(first, floats[first], **floats)
            be = _backend.resolve(bound.arguments.get("backend"), *arrays.values())
            if be != "numpy" and kernels is True:
                return op(*args, **kwargs)
            widened = {name: _backend.astype(a, COMPUTE) for name, a in floats.items()}
            for name in updates:   # read-only like the original: the op refuses before any work
                if name in widened and not floats[name].flags.writeable:
                    widened[name].flags.writeable = False
            bound.arguments.update(widened, backend=be)
            result = op(*bound.args, **bound.kwargs)
            for name in updates:   # written back where the op changed them (eval: none)
                if name in widened:
                    rounded = widened[name].astype(FLOAT16)
                    if not np.array_equal(rounded, floats[name], equal_nan=True):
                        floats[name][...] = rounded
            return _rounded(result, {id(w): floats[name] for name, w in widened.items()},
                            compute_outputs if isinstance(result, tuple) else 0)

        return run
    return decorate
