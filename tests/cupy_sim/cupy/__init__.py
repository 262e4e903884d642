"""A CPU stand-in for CuPy (see ../README.md): device arrays held in NumPy arrays, with CuPy's
Python-visible rules, and RawModule kernels run by cnn_gpu's emulator."""
from __future__ import annotations

import atexit
import numbers
import os
import sys
import weakref
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from cnn_gpu.backend import _poisoned   # fresh device memory holds old data: NaN, integers' largest

from . import cuda
from .cuda import memory as _memory

__version__ = "14.0.0+cpu-sim"   # CuPy 14's rules (pyproject asks for >=14)

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
             "array explicitly.")


class _NoIndex(np.ndarray):
    """A 0-d device array's storage as a call's argument: CuPy's ndarray has no __index__ (a hidden
    device-to-host read), so a shape, axis or count cannot be one."""

    def __index__(self):
        raise TypeError("a 0-d cupy.ndarray cannot be used as an integer (no __index__); use int(a)")


def _to_host(value, allow_host_arrays=False, plain=False):
    """A call's argument with device arrays replaced by their NumPy storage (lists and tuples
    too); a NumPy array is refused unless allowed, as CuPy refuses one mixed into device work.
    Each device array must be on the current GPU, as CuPy's kernels require (no peer access
    here); a 0-d one is no integer, but for `plain` storage (an index, an out= array), and a
    slice's 0-d bound is read with int(), as CuPy reads it."""
    if isinstance(value, ndarray):
        _check_current(value)
        return value._a.view(_NoIndex) if value.ndim == 0 and not plain else value._a
    if isinstance(value, np.ndarray) and not allow_host_arrays:
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v, allow_host_arrays, plain) for v in value)
    if isinstance(value, dict):
        return {k: _to_host(v, allow_host_arrays, plain) for k, v in value.items()}
    if plain and isinstance(value, slice):
        return slice(*(int(b) if isinstance(b, ndarray) else b for b in (value.start, value.stop, value.step)))
    return value


def _check_current(a: "ndarray") -> None:
    current = cuda.runtime.getDevice()
    if a._device != current:
        raise ValueError(f"The device where the array resides ({a._device}) is different from the current device "
                         f"({current}). Peer access is unavailable between these devices.")


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


# The allocation (cupy.cuda.memory.PooledMemory) of each live root NumPy array, by its id: views share it.
_allocations: dict = {}


def _allocation(a: np.ndarray, device: int) -> "_memory.PooledMemory":
    root = _root(a)
    entry = _allocations.get(id(root))
    if entry is None or entry[0]() is not root:
        entry = (weakref.ref(root), _memory.PooledMemory(root.__array_interface__["data"][0], root.nbytes, device))
        _allocations[id(root)] = entry
        weakref.finalize(root, _allocations.pop, id(root), None)
    return entry[1]


def _from_host(value):
    """A NumPy result as CuPy gives it: arrays and NumPy scalars (as 0-d arrays) on the device."""
    if isinstance(value, np.ndarray):
        return ndarray._wrap(value)
    if isinstance(value, np.generic):
        return ndarray._wrap(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_from_host(v) for v in value)
    if isinstance(value, list):
        return [_from_host(v) for v in value]
    return value


def _call_on_host(function, args, kwargs, sources=()):
    """function (NumPy's) on the storage of device arrays: out= device arrays written in place and
    returned; a result that is a view of one of `sources` (device arrays) a view of it, others
    new device arrays."""
    out = kwargs.get("out")
    outs = None if out is None else out if isinstance(out, tuple) else (out,)
    host_kwargs = _to_host({k: v for k, v in kwargs.items() if k != "out"})
    if outs is not None:
        if not all(isinstance(o, ndarray) for o in outs):
            raise TypeError(f"out must be a cupy.ndarray, got {[type(o) for o in outs]}")
        host_kwargs["out"] = tuple(_to_host(o, plain=True) for o in outs)
        if len(outs) == 1 and not isinstance(function, np.ufunc):
            host_kwargs["out"] = host_kwargs["out"][0]
    result = function(*_to_host(args), **host_kwargs)
    if outs is not None:
        return outs[0] if len(outs) == 1 else outs
    if isinstance(result, np.ndarray):
        for source in sources:
            if _root(result) is _root(source._a):
                return source._view(result)
    return _from_host(result)


def _is_basic(key) -> bool:
    """An index of ints, slices, None and Ellipsis only (a view in CuPy and NumPy)."""
    return all(k is None or k is Ellipsis or isinstance(k, (slice, numbers.Integral)) and not isinstance(k, bool)
               for k in (key if isinstance(key, tuple) else (key,)))


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")   # no writeable: device memory has no such flag

    def __init__(self, a: np.ndarray, owndata: bool):
        self.c_contiguous, self.f_contiguous, self.owndata = a.flags.c_contiguous, a.flags.f_contiguous, owndata

    def __getitem__(self, name):
        keys = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous", "OWNDATA": "owndata"}
        if name not in keys:
            raise KeyError(f"{name} is not defined for cupy.ndarray.flags")
        return getattr(self, keys[name])


class ndarray(NDArrayOperatorsMixin):
    """A device array: its values live in a NumPy array no NumPy function may see directly."""
    __slots__ = ("_a", "_device", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("cupy_sim: ndarray(memptr=/strides=) is not simulated")
        self._a = _poisoned(np.empty(shape, dtype, order))
        self._device = cuda.runtime.getDevice()

    @classmethod
    def _wrap(cls, a: np.ndarray, device: int | None = None) -> "ndarray":
        self = cls.__new__(cls)
        self._a = a if type(a) is np.ndarray else a.view(np.ndarray)   # a result computed from a _NoIndex
        self._device = cuda.runtime.getDevice() if device is None else device
        return self

    def _view(self, a: np.ndarray) -> "ndarray":
        return ndarray._wrap(a, self._device)

    # --- what NumPy may not do with a device array -------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ not in _API:
            return NotImplemented   # CuPy 14 has no such ufunc: NumPy raises TypeError
        for x in inputs:
            if x is None or isinstance(x, (list, tuple)):
                raise TypeError(f"Unsupported type {type(x)}")   # CuPy's operands are arrays and scalars
        if ufunc.__name__ in _COMPARISONS:   # CuPy's comparison operators read a 0-d NumPy operand's value
            inputs = [x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs]
        return _call_on_host(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """numpy.f(device arrays) runs cupy.f, as CuPy's dispatch does; NumPy raises TypeError
        where CuPy has no such function."""
        name, module = func.__name__, func.__module__
        if module == "numpy":
            if name not in _API:
                return NotImplemented
            function = globals().get(name)
            function = function if callable(function) else _numpy_function(name)
        elif module == "numpy.linalg":   # cupy.linalg.norm and the like
            function = _numpy_function(name, np.linalg)
        else:
            return NotImplemented   # not simulated
        return function(*args, **kwargs)

    # --- attributes -----------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    strides = property(lambda self: self._a.strides)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    T = property(lambda self: self._view(self._a.T))
    flags = property(lambda self: _Flags(self._a, self._a.base is None))
    device = property(lambda self: cuda.Device(self._device))
    data = property(lambda self: _memory.MemoryPointer(_allocation(self._a, self._device), self._a.__array_interface__["data"][0]))

    @property
    def base(self):
        """CuPy's: the root array of a view (a new object here), None for an allocation."""
        return None if self._a.base is None else self._view(_root(self._a))

    # --- host reads (each one a synchronising copy on a GPU) -----------------------------------
    def get(self, stream=None, order="C", out=None):
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order, copy=True)

    def item(self, *args):
        return self._a.item(*args)

    def tolist(self):
        return self._a.tolist()

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)   # 0-d: TypeError, as CuPy's

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __reduce__(self):
        return array, (self.get(),)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # --- indexing -------------------------------------------------------------------------------
    def __getitem__(self, key):
        key = _to_host(key, allow_host_arrays=True, plain=True)
        keys = key if isinstance(key, tuple) else (key,)
        if _is_basic(keys):   # a view, an element too (a 0-d view, as CuPy's: the Ellipsis keeps it an array)
            return self._view(self._a[keys if any(k is Ellipsis for k in keys) else (*keys, Ellipsis)])
        return _from_host(self._a[key])   # advanced indexing: a copy

    def __setitem__(self, key, value):
        key = _to_host(key, allow_host_arrays=True, plain=True)
        if not isinstance(value, ndarray) and _is_basic(key) and np.asarray(value).shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")   # CuPy fills with a host value
        self._a[key] = _to_host(value, allow_host_arrays=True, plain=True)

    # --- methods --------------------------------------------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        """Itself where nothing changes (copy=False, its dtype, a layout that is `order`'s), else a
        copy on the current GPU."""
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if not copy and np.dtype(dtype) == self.dtype and _in_order(self._a, order):
            return self
        return ndarray._wrap(self._a.astype(dtype, order=order))

    def copy(self, order="C"):
        return ndarray._wrap(self._a.copy(order=order))

    def view(self, dtype=None):
        return self._view(self._a if dtype is None else self._a.view(dtype))

    def fill(self, value):
        if not isinstance(value, ndarray) and np.asarray(value).shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a.fill(_to_host(value, allow_host_arrays=True))

    def __getattr__(self, name):
        """Other NumPy methods (reshape, ravel, transpose, sum, max, ...) on the device: views stay
        views of the same allocation, results are device arrays (scalars 0-d)."""
        if name not in _CUPY_METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        method = getattr(self._a, name)

        def on_device(*args, **kwargs):
            _check_current(self)
            return _call_on_host(method, args, kwargs, sources=(self,))
        return on_device


_COMPARISONS = frozenset({"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"})
# Methods of CuPy 14's ndarray (cupy/_core/core.pyx, class _ndarray_base) that __getattr__ hands to
# NumPy's; NumPy's others (ctypes, setflags, resize, ...) do not exist on a device array.
_CUPY_METHODS = frozenset({
    "all", "any", "argmax", "argmin", "argpartition", "argsort", "byteswap", "choose", "clip", "compress", "conj",
    "conjugate", "cumprod", "cumsum", "diagonal", "dot", "dump", "dumps", "flatten", "max", "mean", "min", "nonzero",
    "partition", "prod", "ptp", "put", "ravel", "repeat", "reshape", "round", "searchsorted", "sort", "squeeze",
    "std", "sum", "swapaxes", "take", "tobytes", "tofile", "trace", "transpose", "var"})


# --- creating arrays -------------------------------------------------------------------------------

def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order=order)


def _prototype(a):
    """A *_like function's prototype: CuPy reads only its dtype, shape and layout, so a NumPy array
    will do."""
    return _to_host(a, allow_host_arrays=True)


def _copied_in(value):
    """A value CuPy copies into a device array (copyto, full): a device array's storage, a scalar,
    or a NumPy array of size 1 (_manipulation/basic.py copyto)."""
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
    return _to_host(value, allow_host_arrays=True)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray._wrap(_poisoned(np.empty_like(_prototype(prototype), dtype, order, shape=shape)))


def zeros_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray._wrap(np.zeros_like(_prototype(prototype), dtype, order, shape=shape))


def ones_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray._wrap(np.ones_like(_prototype(prototype), dtype, order, shape=shape))


def full_like(prototype, fill_value, dtype=None, order="K", subok=None, shape=None):
    return ndarray._wrap(np.full_like(_prototype(prototype), _copied_in(fill_value), dtype, order, shape=shape))


def full(shape, fill_value, dtype=None, order="C"):
    return ndarray._wrap(np.full(_to_host(shape), _copied_in(fill_value), dtype, order))


def _filled(make):
    def made(*args, **kwargs):
        return ndarray._wrap(make(*_to_host(args), **_to_host(kwargs)))
    made.__name__ = make.__name__
    return made


zeros, ones, arange, eye, linspace = map(_filled, (np.zeros, np.ones, np.arange, np.eye, np.linspace))


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    """A new device array: from the host (a copy to the device) or from the device."""
    host = obj._a if isinstance(obj, ndarray) else _to_host(obj, allow_host_arrays=True, plain=True)   # copies across GPUs too
    return ndarray._wrap(np.array(host, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def _in_order(a: np.ndarray, order) -> bool:
    return {"C": a.flags.c_contiguous, "F": a.flags.f_contiguous}.get(order, True)


def asarray(a, dtype=None, order=None):
    """CuPy's: a device array itself where it is on the current GPU in `dtype` and `order`, else a
    copy on the current GPU; a host array copied to it."""
    if isinstance(a, ndarray) and a._device == cuda.runtime.getDevice():
        return a.astype(a.dtype if dtype is None else dtype, order=order or "K", copy=False)
    return array(a, dtype=dtype, order=order or "K")   # a host array or another GPU's


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):   # CuPy's takes a device array only (core.pyx ascontiguousarray)
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, got "
                        f"{type(a).__name__})")
    return a.astype(a.dtype if dtype is None else dtype, order="C", copy=False) if a.ndim else a.reshape(1)


def asnumpy(a, stream=None, order="C", out=None):
    return a.get(order=order, out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def copyto(dst, src, casting="same_kind", where=True):
    if not isinstance(dst, ndarray):
        raise TypeError(f"Unsupported type {type(dst)}")
    np.copyto(dst._a, _copied_in(src), casting=casting, where=_to_host(where))


def _numpy_function(name, namespace=np):
    """numpy.<name> on device arrays: NumPy arrays among the arguments are refused (CuPy's
    functions take device arrays), results are device arrays, views stay views."""
    function = getattr(namespace, name)

    def on_device(*args, **kwargs):
        sources = [a for a in (*args, *kwargs.values()) if isinstance(a, ndarray)]
        return _call_on_host(function, args, kwargs, sources)
    on_device.__name__ = name
    return on_device


_NUMPY_NAMES = (   # dtypes and constants CuPy takes from NumPy
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64", "complex64", "complex128", "intp", "dtype", "newaxis", "inf", "nan", "pi", "e", "iinfo", "finfo",
    "result_type", "promote_types", "can_cast")


class _Submodule:
    """cupy.linalg and the like: NumPy's functions of that name on device arrays."""

    def __init__(self, namespace):
        self._namespace = namespace

    def __getattr__(self, name):
        return _numpy_function(name, self._namespace)


linalg = _Submodule(np.linalg)


_API = frozenset(line for line in (Path(__file__).parent / "api_names.txt").read_text().split("\n")
                 if line and not line.startswith("#"))


def __getattr__(name):
    if name in _NUMPY_NAMES:
        return getattr(np, name)
    if name not in _API:
        raise AttributeError(f"module 'cupy' has no attribute {name!r}")
    if not callable(getattr(np, name, None)):
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (cupy_sim: CuPy has it; not simulated)")
    if isinstance(getattr(np, name), np.ufunc):
        return getattr(np, name)   # NumPy's ufunc on device arrays runs ndarray.__array_ufunc__
    return _numpy_function(name)


# --- kernels ---------------------------------------------------------------------------------------

class RawModule:
    """CuPy's RawModule for CUDA C source, built and run by cnn_gpu's emulator; a CUBIN (path=)
    cannot run here."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple, got {type(options).__name__}")
        if path is not None:
            raise NotImplementedError("cupy_sim runs CUDA C source through the emulator, not a CUBIN (path=)")
        from cnn_gpu import emu
        if not any(o.startswith(("-arch", "--gpu-architecture")) for o in options):
            options += (f"-arch=sm_{cuda.device_arch(cuda.runtime.getDevice())}",)   # as CuPy: the current GPU's
        self._module = emu.RawModule(code=code, options=options)

    def get_function(self, name):
        return RawKernel._of(self._module.get_function(name), name)


# The GPUs this process launched kernels on; with $CUPY_SIM_DEVICE_LOG set (a folder), written there
# at exit as <pid>.txt, so that a test can see which GPU each rank of a job used.
_launched_on: set = set()


def _write_device_log():
    folder = os.environ.get("CUPY_SIM_DEVICE_LOG")
    if folder and _launched_on:
        Path(folder, f"{os.getpid()}.txt").write_text(" ".join(map(str, sorted(_launched_on))))


atexit.register(_write_device_log)


class RawKernel:
    def __init__(self, code, name, options=(), **kwargs):
        self._kernel = RawModule(code=code, options=options, **kwargs)._module.get_function(name)
        self.name = name

    @classmethod
    def _of(cls, kernel, name):
        self = cls.__new__(cls)
        self._kernel, self.name = kernel, name
        return self

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError("grid and block must be tuples")
        host_args, device = [], cuda.runtime.getDevice()
        for a in args:
            if isinstance(a, np.ndarray):
                if a.size != 1:
                    raise TypeError(f"You are trying to pass a numpy.ndarray of shape {a.shape} as a kernel parameter. "
                                    f"Only numpy.ndarrays of size one can be passed by value. If you meant to pass a "
                                    f"pointer to __global__ memory, you need to pass a cupy.ndarray instead.")
                a = a.reshape(-1)[0]   # passed by value
            if isinstance(a, ndarray) and a._device != device:
                raise RuntimeError(f"cupy_sim: an array of GPU {a._device} passed to a kernel on GPU {device} (an "
                                   f"illegal address on a GPU)")
            python_scalar = {bool: np.bool_, int: np.int64, float: np.float64, complex: np.complex128}.get(type(a))
            if python_scalar is not None:   # CuPy passes Python scalars as 64-bit values
                a = python_scalar(a)
            if not isinstance(a, (ndarray, np.generic)):
                raise TypeError(f"Unsupported type {type(a)}")
            host_args.append(a._a if isinstance(a, ndarray) else a)
        self._kernel(grid, block, tuple(host_args), shared_mem=shared_mem)
        _launched_on.add(device)
