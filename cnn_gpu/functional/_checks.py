"""Argument checks shared by the functional ops: every bad input is a ValueError or TypeError that
names the argument, raised before anything is computed or launched."""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import is_cupy_array
from ..launch_checks import check_device_array

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def is_array(a) -> bool:
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def array(a, name: str, ndim=None):
    """`a` as given when it is a NumPy/CuPy float16, float32 or float64 array (of rank `ndim`: an int or a
    tuple of allowed ranks); TypeError/ValueError naming `name` otherwise."""
    if not is_array(a):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, float32 or float64, got dtype {a.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            ranks = " or ".join(f"{r}-D" for r in allowed)
            raise ValueError(f"{name} must be {ranks}, got shape {tuple(a.shape)}")
    return a


def same_dtype(first_name: str, first, **others) -> None:
    """Every array in `others` (None allowed) has the dtype of `first`."""
    for name, a in others.items():
        if a is not None and a.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}; "
                            f"convert one of them (ops never change dtype silently)")


def shape_is(a, name: str, expected, why: str = "") -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{why}, got {tuple(a.shape)}")


def bias(b, channels: int, reference, reference_name: str = "weight"):
    """An optional bias of shape (channels,) in the dtype of `reference`."""
    if b is None:
        return None
    array(b, "bias", ndim=1)
    shape_is(b, "bias", (channels,), " (one value per output channel)")
    same_dtype(reference_name, reference, bias=b)
    return b


def real_number(value, name: str, *, minimum=None, below=None) -> float:
    """A finite real number (hyper-parameters, slopes), optionally >= minimum and < below, as a
    float: TypeError for a non-number, ValueError for NaN, an infinity or a value out of range
    (PyTorch refuses them too; checks like `lr < 0` alone let NaN through)."""
    kind = type(value)   # a float or an int (not a bool) passes without the ABC's isinstance
    if kind is not float and kind is not int and (isinstance(value, (bool, np.bool_))
                                                  or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"invalid {name}={value}: must be >= {minimum}")
    if below is not None and value >= below:
        raise ValueError(f"invalid {name}={value}: must be < {below}")
    return value


def whole_number(value, name: str, minimum: int = 1) -> int:
    """An int (NumPy integers too, not bool) >= minimum: TypeError for another type (a float is
    not truncated), ValueError below minimum."""
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def writeable(a) -> bool:
    """Whether array `a` may be written in place: a CuPy array always, a NumPy array where its
    flag allows."""
    return is_cupy_array(a) or a.flags.writeable


def updatable(a, name: str) -> None:
    """ValueError unless array `a` (None: no array) can be written in place."""
    if a is not None and not writeable(a):
        raise ValueError(f"{name} is updated in place, but the array is read-only")


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def gradient_flags(bias, input_grad, weight_grad) -> tuple[bool, bool, bool]:
    """A weighted op's backward's bias, input_grad and weight_grad: which gradients it returns."""
    return flag(bias, "bias"), flag(input_grad, "input_grad"), flag(weight_grad, "weight_grad")


def shape_tuple(shape, name: str, ndim: int) -> tuple[int, ...]:
    """A shape given as a sequence of `ndim` positive ints."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of {ndim} ints, got {shape!r}") from None
    if len(dims) != ndim or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"{name} must be a tuple of {ndim} ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def for_kernels(be: str, a, name: str):
    """`a` for the kernels of backend `be`, checked before the op launches anything: a CuPy array
    must be C-contiguous and on the current GPU (it is never copied behind the caller's back).
    Host arrays pass as they are: backend.launch copies a non-contiguous input to C order only
    after the launcher's own checks, so a geometry the kernels refuse costs no copy."""
    if a is not None and be == "cuda":
        check_device_array(a, name)
    return a
