"""What `backend.launch` checks before any kernel runs: every argument against the kernel's
parameter list as its CUDA source declares it.

CuPy hands a kernel the raw pointer of an array whatever its dtype, strides or aliasing, and the
emulator stages an array by its byte span, so a Fortran-ordered, strided, zero-stride, read-only
or aliased array would give wrong numbers or writes outside the array instead of an error. Hence:
- an array argument has exactly the declared element type (REAL: the dtype the kernel is built for;
  acc_t: the type it computes in, float32 in a float16 build) and is C-contiguous;
- an array the kernel writes (a pointer to non-const) is writeable and overlaps no other argument
  (the kernels declare their pointers __restrict__);
- an input the kernel only reads is copied to C order on the host ("emu"), after the launcher's own
  checks, so a refused geometry never costs a copy; a device array ("cuda") is never copied behind
  the caller's back and must be on the current GPU;
- a scalar is a NumPy scalar of exactly the declared C type (CuPy's rule: a Python int would be
  passed as a long long).
"""
from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass

import numpy as np

from . import backend as _backend


@dataclass(frozen=True)
class KernelParameter:
    name: str
    ctype: str      # the element type of a pointer, else the parameter's type: "REAL", "acc_t", "int", ...
    pointer: bool
    const: bool     # a pointer to const: the kernel only reads the array


# C types of kernel parameters; "REAL" is the dtype the kernel file is instantiated for.
C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
           "long long": np.int64, "unsigned long long": np.uint64, "bool": np.bool_}

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_OBJECT_MACRO = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(?![\w(])[ \t]*(.*)$", re.M)
_ONE_ARGUMENT_MACRO = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)\([ \t]*(\w+)[ \t]*\)[ \t]*(.*)$", re.M)
_MACRO_CALL = re.compile(r"^\s*(\w+)\s*\(\s*(\w+)\s*\)\s*$")
_KERNEL_HEAD = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^()]*\)\s*)?(\w+)\s*\(')
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict"}


def _split_parameters(text: str, macros: dict, functions: dict) -> list[str]:
    """The parameters of a list; a piece that is just the name of an object-like macro (a shared
    parameter list such as POOL_WINDOW_PARAMS), or a call of a one-argument macro (a slot of
    optim.cu's multi-tensor kernels, its names pasted with `##`), is replaced by its parameters."""
    pieces = []
    for piece in text.split(","):
        name, call = piece.strip(), _MACRO_CALL.match(piece)
        if name in macros:
            pieces += _split_parameters(macros[name], macros, functions)
        elif call and call.group(1) in functions:
            argument, body = functions[call.group(1)]
            expanded = re.sub(rf"\s*##\s*{argument}\b|\b{argument}\b", call.group(2), body)
            pieces += _split_parameters(expanded, macros, functions)
        else:
            pieces.append(piece)
    return [p for p in pieces if p.strip() not in ("", "void")]


def _parameter(piece: str, index: int) -> KernelParameter:
    tokens = re.findall(r"[A-Za-z_]\w*|\*", piece)
    pointer = "*" in tokens
    split = tokens.index("*") if pointer else len(tokens) - 1
    type_words, rest = tokens[:split], tokens[split:]
    name = next((t for t in reversed(rest) if t not in _QUALIFIERS and t != "*"), f"arg{index}")
    return KernelParameter(name=name, ctype=" ".join(t for t in type_words if t not in _QUALIFIERS),
                           pointer=pointer, const=pointer and "const" in type_words)


def parse_signatures(source: str) -> dict[str, tuple[KernelParameter, ...]]:
    """{kernel name: parameters} of the `extern "C" __global__` functions of a kernel source."""
    text = _COMMENT.sub(" ", source.replace("\\\n", " "))
    macros = {name: body.strip() for name, body in _OBJECT_MACRO.findall(text)}
    functions = {name: (argument, body.strip()) for name, argument, body in _ONE_ARGUMENT_MACRO.findall(text)}
    signatures = {}
    for head in _KERNEL_HEAD.finditer(text):
        close, depth = head.end(), 1   # the list's closing parenthesis, past any macro call's
        while depth:
            depth += {"(": 1, ")": -1}.get(text[close], 0)
            close += 1
        pieces = _split_parameters(text[head.end():close - 1], macros, functions)
        signatures[head.group(1)] = tuple(_parameter(piece, i) for i, piece in enumerate(pieces))
    return signatures


@functools.lru_cache(maxsize=None)
def _family_signatures(family: str) -> dict:
    return parse_signatures(_backend.kernel_source(family))


def signature(family: str, kernel: str) -> tuple[KernelParameter, ...]:
    try:
        return _family_signatures(family)[kernel]
    except KeyError:
        raise ValueError(f"no kernel {kernel!r} declared in kernels/{family}.cu") from None


def memory_span(a) -> tuple[int, int]:
    """[first byte, last byte + 1) of a C-contiguous NumPy or CuPy array."""
    start = a.data.ptr if _backend.is_cupy_array(a) else a.__array_interface__["data"][0]
    return start, start + a.nbytes


# Up to this many pairs with a written array (a launch) are compared one by one, by their bounds
# in C; more (an optimizer step over a whole model) by one sweep over the sorted address spans.
PAIRWISE_LIMIT = 24


def _owner(a):
    """The object whose memory `a` is part of, where that memory is known to be its alone (a NumPy
    array that owns its data, a CuPy allocation of CuPy's own), else None (memory lent by another
    object: a memoryview, a pointer wrapped from outside, which may alias anything)."""
    if isinstance(a, np.ndarray):
        base = a.base
        while isinstance(base, np.ndarray):
            a, base = base, base.base
        return a if base is None and a.flags.owndata else None
    memory = a.data.mem   # a CuPy array's allocation
    return memory if _is_cupy_own_memory(type(memory)) else None


@functools.lru_cache(maxsize=None)
def _is_cupy_own_memory(kind: type) -> bool:
    return kind.__module__ == "cupy.cuda.memory" and kind.__name__ in ("PooledMemory", "Memory")


_UNKNOWN_OWNER = id(None)


def _first_overlap(arrays, owners=None):
    """(written name, other name) of an array that is written and shares memory with another.
    Arrays of different owners (_owner) share none, so only arrays of one owner are compared (with
    one array of unknown memory, all are). `owners`: the id() of each array's owner where the
    caller has them."""
    if owners is None:
        owners = [id(_owner(entry[1])) for entry in arrays]
    if _UNKNOWN_OWNER in owners:
        return _overlap_among(arrays)
    if len(set(owners)) == len(owners):
        return None   # each its own allocation (a launch's usual arguments)
    groups = {}
    for entry, owner in zip(arrays, owners):
        groups.setdefault(owner, []).append(entry)
    for group in groups.values():
        if len(group) > 1 and any(w for _, _, w in group):
            found = _overlap_among(group)
            if found:
                return found
    return None


def _overlap_among(arrays):
    written = [i for i, (_, _, w) in enumerate(arrays) if w]
    pairs = len(written) * len(arrays) - len(written) * (len(written) + 1) // 2
    return _overlap_by_pairs(arrays, written) if pairs <= PAIRWISE_LIMIT else _overlap_by_sweep(arrays)


def _overlap_by_pairs(arrays, written):
    for i in written:
        name, a, _ = arrays[i]
        on_device = _backend.is_cupy_array(a)
        may_share_memory = _backend.array_module("cuda").may_share_memory if on_device else np.may_share_memory
        for j, (other, b, other_written) in enumerate(arrays):
            if j == i or (other_written and j < i) or _backend.is_cupy_array(b) != on_device:
                continue   # itself, a written pair already compared, or another address space
            if may_share_memory(a, b):
                return name, other
    return None


def _overlap_by_sweep(arrays):
    for on_device in (False, True):   # host and device addresses are compared separately
        spans = sorted(((*memory_span(a), name, written) for name, a, written in arrays
                        if a.nbytes and _backend.is_cupy_array(a) == on_device), key=operator.itemgetter(0, 1))
        # Against the span reaching furthest so far: a written span overlapping any earlier one
        # overlaps that one too, or an earlier comparison has already found an overlap.
        furthest = None
        for start, end, name, written in spans:
            if furthest is not None and start < furthest[1] and (written or furthest[3]):
                return (name, furthest[2]) if written else (furthest[2], name)
            if furthest is None or end > furthest[1]:
                furthest = (start, end, name, written)
    return None


def check_disjoint(arrays, context: str = "", describe=str) -> None:
    """ValueError when an array that is written shares memory with any other: `arrays` holds
    (name, C-contiguous array, written) triples; arrays only read may overlap each other.
    `describe(name)`: the name in the message (a caller with many arrays makes none it need not)."""
    overlap = _first_overlap(arrays)
    if overlap:
        _refuse_overlap(tuple(map(describe, overlap)), context)


def _refuse_overlap(overlap, context: str):
    raise ValueError(f"{context}{overlap[0]} is written in place but shares memory with {overlap[1]}; "
                     f"pass separate arrays")


def current_device() -> int:
    import cupy
    return cupy.cuda.runtime.getDevice()


def check_device_array(a, name: str, current: int | None = None) -> None:
    """A CuPy array the kernels can take as it is: C-contiguous and on the current GPU (`current`,
    current_device() when not given: a launch asks once for all its arrays)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous for the cuda backend (shape {tuple(a.shape)}, "
                         f"strides {a.strides}); use cupy.ascontiguousarray")
    check_on_current_device(a, name, current)


def check_on_current_device(a, name: str, current: int | None = None) -> None:
    """A CuPy array on the current GPU (`current`, current_device() when not given)."""
    if current is None:
        current = current_device()
    if a.device.id != current:
        raise ValueError(f"{name} is on GPU {a.device.id} but the current device is GPU {current}; "
                         f"use `with cupy.cuda.Device({a.device.id}):`")


def _describe(value) -> str:
    if isinstance(value, np.generic):
        return f"np.{value.dtype.name} {value!r}"
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"a {value.dtype} array of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


@dataclass(frozen=True)
class _Declared:
    """A kernel build's parameters as checked_args reads them: per parameter (parameter, its NumPy
    dtype, its name in messages, its name among the arrays); per pointer parameter what the usual
    argument is checked against; where the scalars are, and each scalar's exact NumPy type, so
    that the common case is one pass in C."""
    parameters: tuple
    pointers: tuple       # per pointer parameter (its position, whether it is const, its NumPy dtype)
    scalars: tuple        # positions of the others
    scalar_types: tuple
    scalar_values: object   # args -> the scalars' values (a tuple)
    host_types: tuple     # per parameter the usual host argument's type: np.ndarray, a scalar's NumPy type


@functools.lru_cache(maxsize=None)
def _declared(family: str, kernel: str, dtype) -> _Declared:
    """The build's declaration; `dtype` as np.dtype takes it (cached per spelling)."""
    dtype, parameters = np.dtype(dtype), []
    for p in signature(family, kernel):
        if p.ctype not in ("REAL", "acc_t") and p.ctype not in C_TYPES:
            raise TypeError(f"kernel {kernel!r} parameter {p.name!r}: cannot check an argument of type {p.ctype}")
        if p.ctype == "REAL":
            want = dtype
        elif p.ctype == "acc_t":
            want = _backend.compute_dtype(dtype)
        else:
            want = np.dtype(C_TYPES[p.ctype])
        parameters.append((p, want, f"kernel {kernel!r} argument {p.name!r}", f"argument {p.name!r}"))
    scalars = tuple(i for i, (p, *_) in enumerate(parameters) if not p.pointer)
    return _Declared(parameters=tuple(parameters),
                     pointers=tuple((i, p.const, want) for i, (p, want, *_) in enumerate(parameters) if p.pointer),
                     scalars=scalars, scalar_types=tuple(parameters[i][1].type for i in scalars),
                     scalar_values=_items(scalars),
                     host_types=tuple(np.ndarray if p.pointer else want.type for p, want, *_ in parameters))


def _items(positions: tuple):
    """args -> (args[i] for i in positions) as a tuple, by one call in C."""
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    return (lambda args: (args[positions[0]],)) if positions else (lambda args: ())


def _array_argument(be: str, p: KernelParameter, a, want: np.dtype, where: str, device: int | None):
    on_device = be == "cuda"
    if not (_backend.is_cupy_array(a) if on_device else isinstance(a, np.ndarray)):
        kind = "a CuPy array" if on_device else "a NumPy array"
        raise TypeError(f"{where} must be {kind} on backend {be!r}, got {_describe(a)}")
    if a.dtype is not want and a.dtype != want:   # NumPy's dtypes of a kind are mostly one object
        raise TypeError(f"{where} must be a {want.name} array, got {_describe(a)}")
    if on_device:
        check_device_array(a, where, device)
        return a
    flags = a.flags
    if not flags.c_contiguous:
        if p.const:
            return np.ascontiguousarray(a)   # read only: its C-ordered copy serves as well
        raise ValueError(f"{where} is written in place, so it must be C-contiguous (shape {tuple(a.shape)}, "
                         f"strides {a.strides})")
    if not p.const and not flags.writeable:
        raise ValueError(f"{where} is written in place but the array is read-only")
    return a


def checked_args(be: str, family: str, kernel: str, dtype, args) -> tuple:
    """`args` as kernels/<family>.cu:<kernel> built for `dtype` may take them (read-only inputs
    copied to C order on the host); TypeError/ValueError naming the argument otherwise."""
    declared = _declared(family, kernel, dtype)
    args = tuple(args)
    # The usual host launch, passed by the checks below in a shorter form: every argument's exact type
    # in one pass in C, then per array its dtype, layout and owner; anything else, and any possible
    # overlap, goes through them in full, which also words every refusal.
    host_types = declared.host_types
    if be != "cuda" and len(args) == len(host_types) and all(map(operator.is_, map(type, args), host_types)):
        owners = []
        for i, const, want in declared.pointers:
            a = args[i]
            flags = a.flags
            if a.dtype is not want or not flags.c_contiguous or not (const or flags.writeable):
                break
            owners.append(id((a if flags.owndata else None) if a.base is None else _owner(a)))
        else:
            if _UNKNOWN_OWNER not in owners and len(set(owners)) == len(owners):
                return args
    return _checked_in_full(be, declared, kernel, args)


def _checked_in_full(be: str, declared: _Declared, kernel: str, args: tuple) -> tuple:
    """checked_args's every check, for any backend and argument."""
    if len(args) != len(declared.parameters):
        names = ", ".join(p.name for p, *_ in declared.parameters)
        raise TypeError(f"kernel {kernel!r} takes {len(declared.parameters)} arguments ({names}), got {len(args)}")
    scalar_types = map(type, declared.scalar_values(args))
    if not all(map(operator.is_, scalar_types, declared.scalar_types)):
        for i in declared.scalars:   # exactly the NumPy scalar type (a subclass passes its dtype too)
            p, want, where, _ = declared.parameters[i]
            a = args[i]
            if type(a) is not want.type and not (isinstance(a, np.generic) and a.dtype == want):
                raise TypeError(f"{where} ({p.ctype}) takes np.{want.name}, got {_describe(a)}")
    checked, owners = None, []   # checked: the arguments, made where one is replaced (a C-ordered copy)
    on_host, device = be != "cuda", None   # device: the current GPU, asked once a launch
    for i, const, want in declared.pointers:
        a = args[i]
        if on_host and type(a) is np.ndarray and a.dtype is want:   # the usual case, in line
            flags = a.flags
            if flags.c_contiguous and (const or flags.writeable):
                owners.append(id((a if flags.owndata else None) if a.base is None else _owner(a)))
                continue
        if device is None and not on_host and _backend.is_cupy_array(a):
            device = current_device()
        if checked is None:
            checked = list(args)
        p, _, where, _ = declared.parameters[i]
        checked[i] = a = _array_argument(be, p, a, want, where, device)
        owners.append(id(_owner(a)))
    if checked is not None:
        args = tuple(checked)
    if _UNKNOWN_OWNER in owners or len(set(owners)) != len(owners):   # else each its own allocation
        arrays = [(declared.parameters[i][3], args[i], not const) for i, const, _ in declared.pointers]
        overlap = _first_overlap(arrays, owners)
        if overlap:
            _refuse_overlap(overlap, f"kernel {kernel!r}: ")
    return args
