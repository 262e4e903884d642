"""RawModule / kernel objects with CuPy's calling convention, argument checking and fault reports."""
from __future__ import annotations

import ctypes
import functools
import itertools
import json
import random
import re
import signal
import struct
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np

from . import _build, _profile
from ._checking import effective

SCHEDULE_CODES = {"forward": 0, "reverse": 1, "random": 2}
DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024  # CUDA's limit without the opt-in attribute
OPT_IN_SHARED = 227 * 1024   # H100's shared memory per block with it (cudaDevAttrMaxSharedMemoryPerBlockOptin)

C_NAMES = {"f2": "half_bits", "f4": "float", "f8": "double", "i1": "signed char", "u1": "unsigned char",
           "i2": "short", "u2": "unsigned short", "i4": "int", "u4": "unsigned int", "i8": "long long",
           "u8": "unsigned long long", "b1": "bool"}
NUMPY_NAMES = {"f2": "np.float16", "f4": "np.float32", "f8": "np.float64", "i1": "np.int8",
               "u1": "np.uint8", "i2": "np.int16", "u2": "np.uint16", "i4": "np.int32", "u4": "np.uint32",
               "i8": "np.int64", "u8": "np.uint64", "b1": "np.bool_"}
PACK_FORMATS = {"f4": "<f", "f8": "<d", "i1": "<b", "u1": "<B", "i2": "<h", "u2": "<H", "i4": "<i",
                "u4": "<I", "i8": "<q", "u8": "<Q", "b1": "<?"}


class KernelFault(RuntimeError):
    """A fault inside an emulated kernel: names the kernel, block, thread and source line."""

    def __init__(self, message: str, *, kernel: str, kind: str, block=None, thread=None, source=None):
        super().__init__(message)
        self.kernel = kernel
        self.kind = kind
        self.block = block
        self.thread = thread
        self.source = source


class _Uint3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class _ModuleState(ctypes.Structure):
    _fields_ = [("current", ctypes.c_void_p), ("block_idx", _Uint3), ("block_dim", _Uint3),
                ("grid_dim", _Uint3), ("static_shared_begin", ctypes.c_void_p),
                ("static_shared_end", ctypes.c_void_p), ("dynamic_shared", ctypes.c_void_p),
                ("dynamic_shared_capacity", ctypes.c_ulonglong), ("static_shared_guards", ctypes.c_void_p),
                ("static_shared_guards_end", ctypes.c_void_p), ("static_shared_arrays", ctypes.c_void_p),
                ("static_shared_arrays_end", ctypes.c_void_p)]


class _ProfileSite(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_ulonglong), ("space", ctypes.c_int), ("op", ctypes.c_int),
                ("requests", ctypes.c_ulonglong), ("sectors", ctypes.c_ulonglong),
                ("wavefronts", ctypes.c_ulonglong), ("bytes", ctypes.c_ulonglong)]


class _LaunchDesc(ctypes.Structure):
    _fields_ = [("module", ctypes.c_void_p), ("entry", ctypes.c_void_p), ("args", ctypes.c_void_p),
                ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_ulonglong), ("seed", ctypes.c_ulonglong),
                ("timeout_seconds", ctypes.c_double), ("schedule", ctypes.c_int), ("poison", ctypes.c_int),
                ("guard_shared", ctypes.c_int), ("flush_denormals", ctypes.c_int), ("race_check", ctypes.c_int),
                ("race_check_global", ctypes.c_int), ("global_ranges", ctypes.c_void_p),
                ("global_count", ctypes.c_int), ("race_region", ctypes.c_int), ("profile", ctypes.c_void_p),
                ("sample_blocks", ctypes.c_ulonglong), ("static_shared_limit", ctypes.c_ulonglong),
                ("fault_kind", ctypes.c_int), ("signal_number", ctypes.c_int), ("has_thread", ctypes.c_int),
                ("fault_block", ctypes.c_uint * 3), ("fault_thread", ctypes.c_uint * 3),
                ("other_thread", ctypes.c_uint * 3), ("has_other_thread", ctypes.c_int),
                ("fault_address", ctypes.c_ulonglong), ("site_offset", ctypes.c_ulonglong),
                ("other_site_offset", ctypes.c_ulonglong), ("site_object", ctypes.c_char * 512),
                ("other_site_object", ctypes.c_char * 512), ("message", ctypes.c_char * 512)]


FAULT_KINDS = {1: "signal", 2: "stack overflow", 3: "divergent barrier", 4: "barrier not reached by all threads",
               5: "warp exchange deadlock", 6: "watchdog timeout", 7: "shared memory overrun", 8: "launch setup",
               9: "shared memory race", 10: "interrupted", 11: "cp.async misuse",
               12: "warp mask"}
INTERRUPTED = 10


@functools.lru_cache(maxsize=None)
def _runtime():
    lib = _build.runtime_library()
    lib.cnn_gpu_emu_launch.argtypes = [ctypes.POINTER(_LaunchDesc)]
    lib.cnn_gpu_emu_launch.restype = ctypes.c_int
    lib.cnn_gpu_emu_guard_alloc.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_void_p)]
    lib.cnn_gpu_emu_guard_alloc.restype = ctypes.c_void_p
    lib.cnn_gpu_emu_guard_pages.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong),
                                            ctypes.POINTER(ctypes.c_ulonglong)]
    lib.cnn_gpu_emu_guard_pages.restype = None
    lib.cnn_gpu_emu_guard_check.argtypes = [ctypes.c_void_p]
    lib.cnn_gpu_emu_guard_check.restype = ctypes.c_int
    lib.cnn_gpu_emu_guard_free.argtypes = [ctypes.c_void_p]
    lib.cnn_gpu_emu_guard_free.restype = None
    lib.cnn_gpu_emu_switch_benchmark.argtypes = [ctypes.c_long]
    lib.cnn_gpu_emu_switch_benchmark.restype = ctypes.c_double
    lib.cnn_gpu_emu_launch_desc_size.restype = ctypes.c_ulonglong
    lib.cnn_gpu_emu_profile_new.restype = ctypes.c_void_p
    lib.cnn_gpu_emu_profile_site_count.argtypes = [ctypes.c_void_p]
    lib.cnn_gpu_emu_profile_site_count.restype = ctypes.c_int
    lib.cnn_gpu_emu_profile_sites.argtypes = [ctypes.c_void_p]
    lib.cnn_gpu_emu_profile_sites.restype = ctypes.c_void_p
    lib.cnn_gpu_emu_profile_totals.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]
    lib.cnn_gpu_emu_profile_totals.restype = None
    lib.cnn_gpu_emu_profile_free.argtypes = [ctypes.c_void_p]
    lib.cnn_gpu_emu_profile_free.restype = None
    if lib.cnn_gpu_emu_launch_desc_size() != ctypes.sizeof(_LaunchDesc):
        raise RuntimeError("cnn_gpu.emu: the runtime's launch descriptor does not match _LaunchDesc")
    return lib


# The helpers of kernels/common.cuh that stand for one PTX instruction: their accesses are the
# instruction's, made where a kernel calls them (each call its own profile row and fault site).
_INSTRUCTION_HELPERS = re.compile(r"(cp_async\w*|ldmatrix_x4)\b")


def source_lines(obj: str, offsets) -> dict[int, tuple[str, str] | None]:
    """{offset: (`file:line`, function)} of instructions of a shared object: the innermost
    (inlined) frame outside the emulator's own header and common.cuh's instruction helpers; None
    where there is no line information."""
    offsets = sorted(set(offsets))
    found: dict[int, tuple[str, str] | None] = dict.fromkeys(offsets)
    if not obj or not offsets:
        return found
    try:
        out = subprocess.run(["addr2line", "-a", "-f", "-i", "-C", "-e", obj, *map(hex, offsets)],
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return found
    offset, i = None, 0
    while i + 1 < len(out):
        if out[i].startswith("0x"):  # -a: each address comes before its frames, innermost first
            offset, i = int(out[i], 16), i + 1
            continue
        function, location = out[i], out[i + 1]
        i += 2
        ours = ("cuda_emu.h" in location or "cnn_gpu_emu_glue" in location or location.startswith("??")
                or ("common.cuh" in location and _INSTRUCTION_HELPERS.match(function) is not None))
        if offset in found and found[offset] is None and not ours:
            location = location.split(" (discriminator")[0]
            if "<code>" in location:  # a source given as a string: no directory
                location = location[location.index("<code>"):]
            found[offset] = (location, function)
    return found


@functools.lru_cache(maxsize=4096)
def source_line(obj: str, offset: int) -> str | None:
    """`file:line (in function)` of one instruction, as fault reports name it."""
    frame = source_lines(obj, [offset])[offset]
    return f"{frame[0]} (in {frame[1]})" if frame else None


@functools.lru_cache(maxsize=64)
def _data_symbols(path: str) -> tuple[int, list[tuple[int, int, str]]]:
    """(address of cnn_gpu_emu_module, [(address, size, demangled name)]) from the library's symbol
    table: names the __shared__ array a race report's address falls in."""
    try:
        out = subprocess.run(["nm", "-S", "-C", "--defined-only", path], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, []
    module_address, symbols = 0, []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] in "bBdDuVv":   # u, V, v: the statics of inline functions
            address, size, name = int(parts[0], 16), int(parts[1], 16), parts[3]
            symbols.append((address, size, name))
            if name == "cnn_gpu_emu_module":
                module_address = address
    return module_address, symbols


def shared_variable(library, address: int) -> str | None:
    """`name (byte N)` of the static __shared__ array holding `address`, if the symbols say."""
    module_address, symbols = _data_symbols(str(library.path))
    if not module_address:
        return None
    relative = address - (library.state_address - module_address)
    for start, size, name in symbols:
        if start <= relative < start + size:
            return f"{name.split('::')[-1]} (byte {relative - start}, in {name.rsplit('::', 1)[0]})"
    return None


def _static_shared_arrays(library) -> list[tuple[int, int, str]] | None:
    """(address in this process, bytes, name) of each static __shared__ array of a loaded library, by
    its symbols; None where nm cannot read them."""
    module_address, symbols = _data_symbols(str(library.path))
    if not module_address:
        return None
    shift = library.state_address - module_address
    begin, end = library.state.static_shared_begin, library.state.static_shared_end
    return [(start + shift, size, name) for start, size, name in symbols if begin <= start + shift < end and size]


def shared_guard_place(library, address: int) -> str | None:
    """Where byte `address` of a guard zone between the static __shared__ arrays lies, if the symbols
    say: `byte N past the end of` the array before it, or `N bytes before the start of` the one after,
    whichever is nearer."""
    arrays = _static_shared_arrays(library)
    if not arrays:
        return None
    before = max((a for a in arrays if a[0] + a[1] <= address), key=lambda a: a[0], default=None)
    after = min((a for a in arrays if a[0] > address), key=lambda a: a[0], default=None)
    if before is None and after is None:
        return None
    past = address - before[0] - before[1] if before else None
    if after is None or (before is not None and past <= after[0] - address):
        where, name = f"byte {past} past the end of", before[2]
    else:
        where, name = f"{after[0] - address} bytes before the start of", after[2]
    return f"{where} __shared__ array {name.split('::')[-1]} (in {name.rsplit('::', 1)[0]})"


def _in_static_shared_far_zone(state, address: int) -> bool:
    """Whether `address` lies in the inaccessible zone before the static __shared__ arrays or after
    the page that holds their end (_build.shared_section_script)."""
    begin, end = state.static_shared_begin, state.static_shared_end
    if not begin:
        return False
    after = (end + _build.PAGE - 1) // _build.PAGE * _build.PAGE
    return begin - _build.FAR_GUARD_BYTES <= address < begin or after <= address < after + _build.FAR_GUARD_BYTES


def _dims(name: str, value) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        dims = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of up to 3 ints, got {value!r}") from None
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise ValueError(f"{name} must have 1 to 3 positive dimensions, got {value!r}")
    return dims + (1,) * (3 - len(dims))


def _array_code(a: np.ndarray) -> str:
    return f"{a.dtype.kind}{a.dtype.itemsize}" if a.dtype.kind in "fiub" else a.dtype.str


def _describe(arg) -> str:
    if isinstance(arg, np.ndarray):
        return f"a {arg.dtype} array"
    if isinstance(arg, bool):
        return "Python bool (passed as bool)"
    if isinstance(arg, int):
        return "Python int (passed as long long)"
    if isinstance(arg, float):
        return "Python float (passed as double)"
    if isinstance(arg, np.generic):
        return f"np.{arg.dtype.name} scalar"
    return f"{type(arg).__name__} {arg!r}"


def _scalar_code(arg) -> str | None:
    if isinstance(arg, bool):
        return "b1"
    if isinstance(arg, int):
        return "i8"
    if isinstance(arg, float):
        return "f8"
    if isinstance(arg, np.generic) and arg.dtype.kind in "fiub":
        return f"{arg.dtype.kind}{arg.dtype.itemsize}"
    return None


_byte_bounds = np.lib.array_utils.byte_bounds if hasattr(np.lib, "array_utils") else np.byte_bounds


def _memory_spans(arrays: list[tuple[int, str, np.ndarray]]) -> list[tuple[int, int, list]]:
    """The memory the array arguments span, overlapping arrays merged: [(low, high, members)]."""
    spans: list[list] = []
    for low, high, member in sorted(((*_byte_bounds(a), (i, name, a)) for i, name, a in arrays),
                                    key=lambda span: span[0]):
        if spans and low < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], high)
            spans[-1][2].append(member)
        else:
            spans.append([low, high, [member]])
    return [tuple(span) for span in spans]


# The global-memory part of the race check keeps 144 bytes of shadow (ShadowWord) per 4 bytes of arguments.
RACE_CHECK_GLOBAL_LIMIT = 8 << 20


def _arrays_at_end(schedule: str, seed) -> bool:
    """The guarded layout of a launch's arrays (_Staging): against the back page under the forward
    schedule, against the front page under reverse, and by the seed's parity under random; so a
    kernel swept over the schedules faults on reading past either end of an array."""
    if schedule == "random":
        return (seed or 0) % 2 == 0
    return schedule != "reverse"


# A view whose offset in its allocation is not a multiple of this many bytes is staged at that
# offset modulo it: the widest access a kernel makes (a 16-byte vector or cp.async) faults there on a
# GPU, so it must not work on a copy that happens to be aligned.
GUARD_ALIGNMENT = 16


def _allocation_offset(a: np.ndarray) -> int:
    """Bytes from the start of the allocation `a` views (its base's base ..., else its own) to its
    first byte: on a GPU, allocations start 256-byte aligned and a view keeps its offset."""
    owner = a
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    return _byte_bounds(a)[0] - _byte_bounds(owner)[0]


class _Staging:
    """Array arguments copied into guarded buffers between two inaccessible pages, canary bytes
    in the gaps; overlapping arrays share one buffer so aliasing stays as it was. at_end: the last
    byte right before the back page (an access past the end faults at once, even one that writes
    back the canary bytes it read; one before the start lands in canary bytes, reported after the
    launch if written), else the first byte right after the front page (the other way round).
    A buffer whose first array starts off GUARD_ALIGNMENT in its allocation starts that far off
    instead, as close to that page as it allows (canary bytes in the few bytes between), and with
    `align` (profiling: cudaMalloc's 256) every buffer starts at its offset modulo `align`."""

    def __init__(self, lib, arrays: list[tuple[int, str, np.ndarray]], align: int = 0, at_end: bool = True):
        self.lib = lib
        # [low, high, [(index, name, array)], handle, data, (front page, back page)]
        self.groups = [[low, high, members, None, 0, (0, 0)] for low, high, members in _memory_spans(arrays)]
        try:
            for group in self.groups:
                data = ctypes.c_void_p()
                offset = _allocation_offset(group[2][0][2])
                modulus = align or (GUARD_ALIGNMENT if offset % GUARD_ALIGNMENT else 0)
                phase = offset % modulus if modulus else 0
                group[3] = lib.cnn_gpu_emu_guard_alloc(group[1] - group[0], modulus, phase, int(not at_end),
                                                       ctypes.byref(data))
                if not group[3]:
                    raise MemoryError("cnn_gpu.emu: cannot map a guarded buffer")
                group[4] = data.value or 0
                front, back = ctypes.c_ulonglong(), ctypes.c_ulonglong()
                lib.cnn_gpu_emu_guard_pages(group[3], ctypes.byref(front), ctypes.byref(back))
                group[5] = (front.value, back.value)
                ctypes.memmove(group[4], group[0], group[1] - group[0])
        except BaseException:
            self.release()
            raise

    def pointers(self) -> dict[int, int]:
        return {index: group[4] + (a.__array_interface__["data"][0] - group[0])
                for group in self.groups for index, _, a in group[2]}

    def overrun_argument(self, address: int) -> tuple[str, str] | None:
        """(argument, "before the start" or "past the end") when one of an argument's guard pages
        holds `address`, else None."""
        for group in self.groups:
            for page, side in zip(group[5], ("before the start", "past the end")):
                if page <= address < page + _build.PAGE:
                    return group[2][0][1], side
        return None

    def check_canaries(self) -> str | None:
        for group in self.groups:
            status = self.lib.cnn_gpu_emu_guard_check(group[3])
            if status:
                names = "/".join(repr(name) for _, name, _ in group[2])
                where = "before the start" if status == 1 else "past the end"
                return f"out-of-bounds write {where} of argument {names}"
        return None

    def copy_back(self) -> None:
        """Each writeable array gets its own bytes back (read-only ones, passed only for pointers
        to const, are never written to)."""
        for low, _, members, _, data, _ in self.groups:
            for _, _, a in members:
                if a.flags.writeable:
                    start, end = _byte_bounds(a)
                    ctypes.memmove(start, data + (start - low), end - start)

    def release(self) -> None:
        for group in self.groups:
            if group[3]:
                self.lib.cnn_gpu_emu_guard_free(group[3])
                group[3] = None


class Kernel:
    """One __global__ function; call as `kernel(grid, block, args, shared_mem=0)` like CuPy."""

    def __init__(self, module: "RawModule", name: str, parameter_names: list[str], parameter_access: str):
        signature = getattr(module._library(False).lib, f"cnn_gpu_emu_signature_{name}")
        signature.restype = ctypes.POINTER(ctypes.c_char_p)
        codes_ptr = signature()
        codes = []
        while codes_ptr[len(codes)] is not None:
            codes.append(codes_ptr[len(codes)].decode())
        self.module = module
        self.name = name
        self.parameter_codes = codes
        self.parameter_names = (parameter_names if len(parameter_names) == len(codes)
                                else [f"arg{i}" for i in range(len(codes))])
        # how the kernel may touch each pointer's memory (_build._parameters), for _check_aliasing and
        # _check_writeable; unknown ("-", unchecked by the latter) where the parameter list was not parsed
        self._access_known = len(parameter_access) == len(codes)
        self.parameter_access = parameter_access if self._access_known else "-" * len(codes)
        # The GPU flushes float32 denormals (-ftz=true) and keeps float64 ones, but x86 has one
        # switch for both: a kernel with a double parameter runs with denormals kept.
        self.flush_denormals = module._options.flush_denormals and not any(c.lstrip("*") == "f8" for c in codes)
        self._max_dynamic_shared = DEFAULT_MAX_DYNAMIC_SHARED
        self._opted_in = False   # whether max_dynamic_shared_size_bytes was set (CUDA's opt-in)

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        """The most dynamic shared memory a launch may ask for (CuPy's attribute): 48 KB until set."""
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        self._max_dynamic_shared = int(value)
        self._opted_in = True

    def _parameter(self, i: int) -> str:
        code = self.parameter_codes[i]
        ctype = ("void*" if code == "*" else f"{C_NAMES.get(code[1:], '?')}*") if code.startswith("*") \
            else C_NAMES.get(code, "an unsupported type")
        return f"kernel {self.name!r} parameter {i} {self.parameter_names[i]!r} ({ctype})"

    def _static_shared_limit(self, shared_mem: int) -> int:
        """The most bytes of static __shared__ arrays a launch with `shared_mem` bytes of dynamic shared
        memory may use, as CUDA counts them: 48 KB for both together; once max_dynamic_shared_size_bytes
        is set (the opt-in), 48 KB of arrays (ptxas's limit) and the opt-in maximum for them and the
        attribute together."""
        if not self._opted_in:
            return max(0, DEFAULT_MAX_DYNAMIC_SHARED - shared_mem)
        return max(0, min(DEFAULT_MAX_DYNAMIC_SHARED, OPT_IN_SHARED - self._max_dynamic_shared))

    def _check_writeable(self, arrays: list[tuple[int, str, np.ndarray]]) -> None:
        """Refuses a read-only array for a pointer to non-const: the kernel may write through it, and
        the emulator would drop those writes (guard zones stage a copy, which a read-only array does
        not get back) or, with guard=False, write into memory NumPy holds immutable (the bytes of a
        bytes object): either way the results would depend on the checking settings."""
        for i, _, a in arrays:
            if self._access_known and self.parameter_access[i] in "w-" and not a.flags.writeable:
                raise ValueError(f"{self._parameter(i)}: the array is read-only, but the kernel may write through "
                                 f"this pointer (to non-const); pass a writeable array or declare the parameter const")

    def _check_aliasing(self, arrays: list[tuple[int, str, np.ndarray]]) -> None:
        """Refuses two array arguments whose spans overlap where one is a __restrict__ pointer and either
        may be written through: undefined behaviour in CUDA C++, where the compiler may keep what it read
        through a __restrict__ pointer in registers or read it through the non-coherent cache, and which
        the emulator's g++ build would run as the source reads."""
        access = self.parameter_access
        for (i, name_i, a), (j, name_j, b) in itertools.combinations(arrays, 2):
            restrict = access[i] in "rw" or access[j] in "rw"
            written = access[i] in "w-" or access[j] in "w-"   # a pointer to non-const
            if not (restrict and written) or not np.may_share_memory(a, b):   # spans: kernels index raw pointers
                continue
            restricted = name_i if access[i] in "rw" else name_j
            raise ValueError(f"kernel {self.name!r}: arguments {name_i!r} and {name_j!r} overlap in memory, but "
                             f"{restricted!r} is a __restrict__ pointer and the kernel may write through one of "
                             f"them: undefined behaviour on a GPU (its loads may be cached or reordered); pass "
                             f"separate arrays")

    def _marshal(self, args) -> tuple[ctypes.Array, list[tuple[int, str, np.ndarray]]]:
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.parameter_codes):
            listed = ", ".join(self.parameter_names)
            raise TypeError(f"kernel {self.name!r} takes {len(self.parameter_codes)} arguments ({listed}), "
                            f"got {len(args)}")
        slots = (ctypes.c_uint64 * max(1, len(args)))()
        arrays = []
        for i, (arg, code) in enumerate(zip(args, self.parameter_codes)):
            if code.startswith("*"):
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{self._parameter(i)}: expected an array, got {_describe(arg)}")
                want = code[1:]
                if want and _array_code(arg) != want:
                    raise TypeError(f"{self._parameter(i)}: expected a {NUMPY_NAMES[want][3:]} array, "
                                    f"got {_describe(arg)}")
                arrays.append((i, self.parameter_names[i], arg))
                slots[i] = arg.__array_interface__["data"][0]
            else:
                if code not in PACK_FORMATS:
                    raise TypeError(f"{self._parameter(i)}: the emulator cannot pass this parameter type")
                got = _scalar_code(arg)
                if got != code:
                    raise TypeError(f"{self._parameter(i)}: expected {C_NAMES[code]} "
                                    f"(pass {NUMPY_NAMES[code]}), got {_describe(arg)}")
                struct.pack_into(PACK_FORMATS[code], slots, 8 * i, arg.item() if isinstance(arg, np.generic) else arg)
        return slots, arrays

    def __call__(self, grid, block, args, shared_mem=0, *, schedule=None, seed=None, guard=None, poison=None,
                 race=None, timeout=None, stream=None):
        """Launch like CuPy. Checking keywords (defaults from `emu.checking`): schedule, seed, guard,
        poison, race (race check of shared memory and array arguments, or "shared": shared memory
        only; an instrumented build, slower), timeout (seconds).
        Inside `emu.profiling()` the launch's memory accesses are recorded."""
        settings = effective(schedule=schedule, seed=seed, guard=guard, poison=poison, race=race, timeout=timeout)
        grid3, block3 = _dims("grid", grid), _dims("block", block)
        threads = block3[0] * block3[1] * block3[2]
        if threads > 1024 or block3[2] > 64:
            raise ValueError(f"kernel {self.name!r}: block {block3} exceeds 1024 threads (or 64 in z)")
        if grid3[0] >= 2 ** 31 or grid3[1] > 65535 or grid3[2] > 65535:
            raise ValueError(f"kernel {self.name!r}: grid {grid3} exceeds CUDA's limits")
        shared_mem = int(shared_mem)
        limit = min(self.max_dynamic_shared_size_bytes, _build.DYNAMIC_SHARED_CAPACITY)
        if not 0 <= shared_mem <= limit:
            raise ValueError(f"kernel {self.name!r}: shared_mem={shared_mem} bytes outside 0..{limit} "
                             "(raise kernel.max_dynamic_shared_size_bytes as on a GPU)")
        slots, arrays = self._marshal(args)
        self._check_writeable(arrays)
        self._check_aliasing(arrays)
        profile = _profile.active()
        library = self.module._library(instrumented=settings["race"] or profile is not None)
        lib = _runtime()
        seed_value = settings["seed"]
        if settings["schedule"] == "random" and seed_value is None:
            seed_value = random.getrandbits(63)
        # a profile stages every array, aligned as cudaMalloc aligns it (sector counts depend on it)
        at_end = _arrays_at_end(settings["schedule"], seed_value)
        staging = (_Staging(lib, arrays, _profile.ALLOCATION_ALIGNMENT if profile else 0, at_end)
                   if (settings["guard"] or profile) and arrays else None)
        profile_handle = lib.cnn_gpu_emu_profile_new() if profile else None
        try:
            if staging:
                for index, pointer in staging.pointers().items():
                    slots[index] = pointer
            base = ctypes.addressof(slots)
            arg_addresses = (ctypes.c_void_p * max(1, len(args)))(*[base + 8 * i for i in range(len(args))])
            desc = _LaunchDesc()
            desc.module = library.state_address
            desc.entry = library.entry(self.name)
            desc.args = ctypes.addressof(arg_addresses)
            desc.grid[:] = grid3
            desc.block[:] = block3
            desc.shared_mem = shared_mem
            desc.static_shared_limit = self._static_shared_limit(shared_mem)
            desc.seed = seed_value or 0
            desc.timeout_seconds = float(settings["timeout"])
            desc.schedule = SCHEDULE_CODES[settings["schedule"]]
            desc.poison = int(settings["poison"])
            desc.guard_shared = int(settings["guard"])
            desc.flush_denormals = int(self.flush_denormals)
            desc.race_check = int(bool(settings["race"]))
            global_ranges = self._global_ranges(arrays, staging) if settings["race"] or profile else []
            # array arguments too, unless asked for shared memory only or past the shadow's limit
            argument_bytes = sum(end - begin for begin, end, *_ in global_ranges)
            desc.race_check_global = int(settings["race"] is True and argument_bytes <= RACE_CHECK_GLOBAL_LIMIT)
            if settings["race"] is True and not desc.race_check_global:   # shown once per calling line
                warnings.warn(f"race check of {self.name!r}: its array arguments hold {argument_bytes} bytes, over "
                              f"the {RACE_CHECK_GLOBAL_LIMIT >> 20} MiB the global-memory check covers; only shared "
                              f"memory is checked in this launch", RuntimeWarning, stacklevel=2)
            if global_ranges:
                flat = (ctypes.c_ulonglong * (2 * len(global_ranges)))(*[v for r in global_ranges for v in r[:2]])
                desc.global_ranges = ctypes.addressof(flat)
                desc.global_count = len(global_ranges)
            if profile:
                desc.profile = profile_handle
                desc.sample_blocks = profile.blocks or 0
            with library.lock:
                status = lib.cnn_gpu_emu_launch(ctypes.byref(desc))
            if status == INTERRUPTED and threading.current_thread() is threading.main_thread():
                ctypes.pythonapi.PyErr_CheckSignals()  # Python's SIGINT handler: KeyboardInterrupt
            if status:
                raise self._fault(desc, settings, seed_value, shared_mem, staging, library, global_ranges)
            if staging:
                problem = staging.check_canaries()
                if problem:
                    raise KernelFault(f"kernel {self.name!r}: {problem} (found after the launch; "
                                      "block and thread unknown)", kernel=self.name, kind="out-of-bounds write")
            if profile:
                blocks_run = self._record_profile(profile, lib, profile_handle, library, grid3, block3, shared_mem)
                if blocks_run < grid3[0] * grid3[1] * grid3[2]:
                    raise _profile.SampledLaunch(
                        f"kernel {self.name!r}: profiled {blocks_run} of its {grid3[0] * grid3[1] * grid3[2]} "
                        "blocks (profiling(blocks=...)); its outputs are incomplete and were not returned")
            if staging:
                staging.copy_back()
        finally:
            if staging:
                staging.release()
            if profile_handle:
                lib.cnn_gpu_emu_profile_free(profile_handle)

    def _record_profile(self, profile, lib, handle, library, grid, block, shared_mem: int) -> int:
        """Hands a launch's counts to `profile`; returns the number of blocks that ran."""
        count = lib.cnn_gpu_emu_profile_site_count(handle)
        raw = (_ProfileSite * count).from_address(lib.cnn_gpu_emu_profile_sites(handle)) if count else []
        lines = library.source_lines([site.offset for site in raw])
        sites = []
        for site in raw:
            location = lines.get(site.offset)
            file, _, line = location[0].rpartition(":") if location else ("?", "", "0")
            sites.append((file, int(line) if line.isdigit() else 0, _profile.SPACES[site.space],
                          _profile.OPS[site.op], site.requests, site.sectors, site.wavefronts, site.bytes))
        totals = (ctypes.c_ulonglong * 3)()
        lib.cnn_gpu_emu_profile_totals(handle, totals)
        profile.add_launch(self.name, grid, block, shared_mem, sites, tuple(totals))
        return totals[2]

    @staticmethod
    def _global_ranges(arrays, staging) -> list[tuple[int, int, str, int]]:
        """[(begin, end, argument name, itemsize)] of the memory the kernel sees as its arrays."""
        if staging:
            spans = [(group[4], group[4] + group[1] - group[0], group[2]) for group in staging.groups]
        else:
            spans = _memory_spans(arrays)
        return [(begin, end, members[0][1], members[0][2].itemsize) for begin, end, members in spans]

    def _fault(self, desc: _LaunchDesc, settings, seed, shared_mem: int, staging, library,
               global_ranges) -> KernelFault:
        kind = FAULT_KINDS.get(desc.fault_kind, "fault")
        message = desc.message.decode(errors="replace")
        if desc.fault_kind == 1:
            name = signal.Signals(desc.signal_number).name if desc.signal_number else "signal"
            address = desc.fault_address
            message = f"{name} (address 0x{address:x})"
            if desc.signal_number == signal.SIGILL:
                message = (f"{name}: a load or store not aligned to its type (a GPU faults on it: misaligned "
                           f"address), an ldmatrix row that is misaligned or not in shared memory, a shift by "
                           f"the operand's width or more or by a negative count, a floating-point value converted "
                           f"to an integer type that cannot hold it (NaN, inf, out of range, or a local never "
                           f"written, which holds -1.7e38 here: x86 and a GPU give different integers, C++ none; "
                           f"CUDA's __float2int_* intrinsics saturate), or __trap()")
            overrun = staging.overrun_argument(address) if staging else None
            dynamic = library.state.dynamic_shared or 0
            shared_guard = dynamic + (shared_mem + _build.PAGE - 1) // _build.PAGE * _build.PAGE
            far_end = dynamic + _build.DYNAMIC_SHARED_CAPACITY + _build.PAGE + _build.FAR_GUARD_BYTES
            if overrun:
                kind = "out-of-bounds access"
                message = f"out-of-bounds access {overrun[1]} of argument {overrun[0]!r} ({name})"
            elif settings["guard"] and shared_guard <= address < far_end:
                kind = "shared memory overrun"
                message = (f"access past the end of the {shared_mem} bytes of dynamic shared memory, at byte "
                           f"{address - dynamic} ({name})")
            elif settings["guard"] and dynamic - _build.FAR_GUARD_BYTES <= address < dynamic:
                kind = "shared memory overrun"
                message = (f"access before the start of dynamic shared memory, at byte {address - dynamic} "
                           f"({name})")
            elif settings["guard"] and _in_static_shared_far_zone(library.state, address):
                kind = "shared memory overrun"
                place = shared_guard_place(library, address) or "outside the static __shared__ arrays"
                message = f"access at {place} ({name})"
        elif desc.fault_kind == 9:
            if desc.race_region >= 2:
                begin, _, name, itemsize = global_ranges[desc.race_region - 2]
                variable = f"argument {name!r} (element {(desc.fault_address - begin) // itemsize})"
                space, kind = "global memory", "global memory race"
            else:
                variable = shared_variable(library, desc.fault_address)
                space = "shared memory"
            if variable:
                message = f"{space} race on {variable}: this thread{message.split(': this thread', 1)[1]}"
        elif desc.fault_kind == 7 and "guard zone" in message:
            place = shared_guard_place(library, desc.fault_address)
            if place:
                message = f"{message.split()[0]} at {place}"
        elif desc.fault_kind == 2:
            message = "fiber stack overflow (64 KB per CUDA thread)"
        elif desc.fault_kind == 6:
            message = f"watchdog: the launch ran longer than {settings['timeout']} s (an endless loop?)"
        elif desc.fault_kind == INTERRUPTED:
            message = "interrupted by SIGINT (Ctrl-C)"
        block = tuple(desc.fault_block)
        thread = tuple(desc.fault_thread) if desc.has_thread else None
        source = source_line(desc.site_object.decode(), desc.site_offset)
        text = f"kernel {self.name!r}: {message}; block {block}"
        if thread is not None:
            text += f", thread {thread}"
        if source:
            text += f", at {source}"
        if desc.has_other_thread:
            other = source_line(desc.other_site_object.decode(), desc.other_site_offset)
            text += f"; other thread {tuple(desc.other_thread)}" + (f" at {other}" if other else "")
        text += f" [schedule={settings['schedule']}" + (f", seed={seed}]" if settings["schedule"] == "random" else "]")
        return KernelFault(text, kernel=self.name, kind=kind, block=block, thread=thread, source=source)


_library_locks: dict[str, threading.Lock] = {}
_library_locks_guard = threading.Lock()


def _library_lock(path: str) -> threading.Lock:
    """One lock per loaded library: its shared memory and state serve one launch at a time, and
    RawModules of the same source share the library (dlopen hands back the same handle)."""
    with _library_locks_guard:
        return _library_locks.setdefault(path, threading.Lock())


# The static __shared__ arrays' tables by module state address (_Library._shared_arrays)
_SHARED_ARRAY_TABLES: dict[int, tuple[ctypes.Array, int]] = {}


class _Library:
    """One compiled build of a module (plain, or instrumented for the race check and profile)."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        state_of = self.lib.cnn_gpu_emu_module_state_of
        state_of.restype = ctypes.c_void_p
        self.state_address = state_of()
        self.state = _ModuleState.from_address(self.state_address)
        metadata = self.lib.cnn_gpu_emu_metadata
        metadata.restype = ctypes.c_char_p
        described = json.loads(metadata().decode())
        self.kernel_parameters = described["kernels"]
        self.kernel_access = described["access"]
        self.lock = _library_lock(str(path))
        self._arrays = self._shared_arrays()
        self._entries: dict[str, int] = {}
        self._lines: dict[int, tuple[str, str] | None] = {}

    def _shared_arrays(self):
        """The static __shared__ arrays' (offset, bytes) pairs for the runtime's shared memory limit
        (module state static_shared_arrays), from the library's symbols; None where nm cannot read them.
        One table per loaded library, kept for the process: every _Library of one path shares its
        module state (the dynamic loader loads a path once), so a table freed with one of them would
        leave the state pointing at freed memory."""
        table = _SHARED_ARRAY_TABLES.get(self.state_address)
        if table is None:
            arrays = _static_shared_arrays(self)
            if arrays is None:
                return None
            pairs = sorted((start - self.state.static_shared_begin, size) for start, size, _ in arrays)
            table = (ctypes.c_ulonglong * (2 * len(pairs) or 1))(*[v for pair in pairs for v in pair])
            table = _SHARED_ARRAY_TABLES.setdefault(self.state_address, (table, len(pairs)))
        self.state.static_shared_arrays = ctypes.addressof(table[0])
        self.state.static_shared_arrays_end = ctypes.addressof(table[0]) + 16 * table[1]
        return table

    def source_lines(self, offsets) -> dict[int, tuple[str, str] | None]:
        """{offset: (`file:line`, function)} of instructions of this library, looked up once each."""
        missing = [offset for offset in set(offsets) if offset not in self._lines]
        if missing:
            self._lines.update(source_lines(str(self.path), missing))
        return {offset: self._lines[offset] for offset in offsets}

    def entry(self, name: str) -> int:
        address = self._entries.get(name)
        if address is None:
            function = getattr(self.lib, f"cnn_gpu_emu_entry_{name}")
            address = self._entries[name] = ctypes.cast(function, ctypes.c_void_p).value
        return address


class RawModule:
    """CUDA C source compiled for the CPU; `get_function(name)` gives a CuPy-style kernel."""

    def __init__(self, code: str | None = None, path: str | None = None, options=(), **_cupy_only):
        if (code is None) == (path is None):
            raise ValueError("RawModule takes exactly one of code= or path=")
        if path is not None:
            file = Path(path).resolve()
            self._source, self._display, self._include_dir = file.read_text(), str(file), file.parent
        else:
            if not isinstance(code, str):
                raise TypeError(f"code must be a str, got {type(code).__name__}")
            self._source, self._display, self._include_dir = code, "<code>", None
        self._raw_options = options
        _runtime()  # load the runtime first: the module binds to its symbols
        so_path, self._options = _build.build_module(self._source, self._display, self._include_dir, options)
        self._libraries = {False: _Library(so_path)}
        self._libraries_lock = threading.Lock()
        self.path = so_path
        self._kernel_parameters = self._libraries[False].kernel_parameters
        self._kernels: dict[str, Kernel] = {}

    def _library(self, instrumented: bool) -> _Library:
        """The plain build, or (built on first use) the one instrumented for the race check and profile."""
        library = self._libraries.get(instrumented)
        if library is None:
            with self._libraries_lock:
                library = self._libraries.get(instrumented)
                if library is None:
                    so_path, _ = _build.build_module(self._source, self._display, self._include_dir,
                                                     self._raw_options, instrumented=instrumented)
                    library = self._libraries[instrumented] = _Library(so_path)
        return library

    @property
    def kernel_names(self) -> list[str]:
        return list(self._kernel_parameters)

    def get_function(self, name: str) -> Kernel:
        kernel = self._kernels.get(name)
        if kernel is None:
            if name not in self._kernel_parameters:
                raise ValueError(f"no __global__ function {name!r} in this module; it has: "
                                 f"{', '.join(self._kernel_parameters) or 'none'}")
            kernel = self._kernels[name] = Kernel(self, name, self._kernel_parameters[name],
                                                  self._libraries[False].kernel_access[name])
        return kernel
