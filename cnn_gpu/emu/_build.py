"""Compile CUDA C for the CPU with g++ against cuda_emu.h, and cache the shared objects.

A module is built from the kernel source plus generated glue: one entry point per `__global__`
function (called with an array of argument addresses) and one returning its parameter type codes,
as the compiler resolved them. Cache entries are keyed by a hash of everything that goes into the
build and written atomically (temp file, fsync, rename), so concurrent pytest-xdist workers never
see a half-written file. Each entry ends with a trailer holding its length and SHA-256: an entry
that does not match (truncated, overwritten) is rebuilt instead of being handed to the dynamic
loader, which would crash on it.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import _cache

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
ABI_HEADER = HERE / "emu_abi.h"
RUNTIME_SOURCE = HERE / "emu_runtime.cpp"
GLUE_VERSION = "5"  # bump when the generated glue changes meaning

# Largest dynamic shared memory a launch can ask for (H100's opt-in limit is 227 KB).
DYNAMIC_SHARED_CAPACITY = 57 * 4096
PAGE = 4096
# The inaccessible zones before dynamic shared memory and after its capacity (emu_abi.h's)
FAR_GUARD_BYTES = int(re.search(r"#define CNN_GPU_EMU_FAR_GUARD_BYTES (\d+)ULL", ABI_HEADER.read_text())[1])

# -fwrapv: signed int overflow wraps as on a GPU (the conv walks step past INT_MAX on purpose); C++ leaves
# it undefined, and -O2 folded such comparisons
FLAGS = ("-O2", "-fwrapv", "-ffp-contract=fast", "-fno-strict-aliasing", "-fPIC", "-gdwarf-4",
         "-fvisibility=hidden", "-fno-optimize-sibling-calls", "-fno-threadsafe-statics",
         "-fstack-clash-protection", "-w")


class CompileError(RuntimeError):
    """g++ rejected a kernel source (the message carries its diagnostics)."""


def compiler() -> str:
    return os.environ.get("CXX", "g++")


@functools.lru_cache(maxsize=None)
def compiler_identity(cxx: str) -> str:
    path = shutil.which(cxx)
    if path is None:
        raise CompileError(f"no C++ compiler {cxx!r} found (install g++ or set $CXX)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return f"{path}\n{version}"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> tuple[str, ...]:
    """-mfma where the CPU has FMA: contraction then rounds once, like the GPU."""
    try:
        with open("/proc/cpuinfo") as f:
            has_fma = any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[1]} " for line in f)
    except OSError:
        has_fma = False
    return ("-mfma",) if has_fma else ()


def emulated_arch() -> int:
    """__CUDA_ARCH__ of emulated kernels: $CNN_GPU_EMU_ARCH (700, 750, 800, 860, 890, 900, ...),
    800 by default; read at every module build, so a change takes effect at the next RawModule."""
    value = os.environ.get("CNN_GPU_EMU_ARCH", "").strip() or "800"
    if not re.fullmatch(r"[1-9]\d0", value) or int(value) < 700:
        raise ValueError(f"$CNN_GPU_EMU_ARCH must be a __CUDA_ARCH__ value of 700 or more, such as 750 or 800; "
                         f"got {value!r}")
    return int(value)


def cache_dir() -> Path:
    """$CNN_GPU_CACHE/emu (default ~/.cache/cnn_gpu/emu); a private temporary folder, with a
    warning, when that cannot be created or written."""
    path = _cache.folder("emu")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK | os.X_OK):
            return path
        problem = "is not writable"
    except OSError as error:
        problem = f"cannot be created ({error.strerror or error})"
    return _private_cache(str(path), problem)


@functools.lru_cache(maxsize=None)
def _private_cache(wanted: str, problem: str) -> Path:
    private = Path(tempfile.mkdtemp(prefix="cnn_gpu_emu_cache-"))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    warnings.warn(f"cnn_gpu.emu: the kernel cache {wanted} {problem}; compiling into the private "
                  f"temporary folder {private} for this process instead (set $CNN_GPU_CACHE to a "
                  "writable folder to keep compiled kernels)", RuntimeWarning, stacklevel=4)
    return private


# How long an interrupted compiler may take to end on SIGTERM (removing its files) before SIGKILL
COMPILER_STOP_S = 2.0


def _run(cmd, what: str, stdin: str | None = None) -> str:
    """The compiler's output; CompileError with its messages. It runs with a temporary folder of its
    own, in this process's group (a terminal's Ctrl-C or hangup, a job runner's signal to the group
    reach it as before), and on an exception in this process while it runs (Ctrl-C, the exception
    SIGTERM raises in `cnn-gpu train`) it and its descendants are stopped (g++'s cc1plus and as: killing
    g++ alone left them compiling, orphaned) and the folder with their files is removed."""
    with tempfile.TemporaryDirectory(prefix="cnn-gpu-cxx-") as scratch, subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": scratch}) as process:
        try:
            out, err = process.communicate(stdin)
        except BaseException:
            _stop(process)
            raise
    if process.returncode != 0:
        raise CompileError(f"{what} failed:\n{' '.join(cmd)}\n{err.strip()}")
    return out


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux's /proc), found before any is signalled: a child whose
    parent dies is adopted by init, and its link to `pid` is lost."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue   # ended meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def _stop(process) -> None:
    """SIGTERM to the compiler and its descendants (g++ then removes its files), SIGKILL to any that
    outlives COMPILER_STOP_S; the compiler reaped."""
    pids = [process.pid, *_descendants(process.pid)]
    deadline = time.monotonic() + COMPILER_STOP_S
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids if pid != process.pid):
            time.sleep(0.02)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return
    process.wait()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# length of the entry before the trailer, its SHA-256, a magic word
_TRAILER = struct.Struct("<Q32s8s")
_MAGIC = b"cnngpu\x00\x01"


def _seal(path: Path) -> None:
    """Append the trailer and flush the file to disk."""
    data = path.read_bytes()
    with open(path, "ab") as f:
        f.write(_TRAILER.pack(len(data), hashlib.sha256(data).digest(), _MAGIC))
        f.flush()
        os.fsync(f.fileno())


def is_intact(path: Path) -> bool:
    """The entry is exactly as it was built (its trailer matches its bytes)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < _TRAILER.size:
        return False
    size, digest, magic = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    return (magic == _MAGIC and size == len(data) - _TRAILER.size
            and hashlib.sha256(memoryview(data)[:size]).digest() == digest)


def _cached(target: Path, build) -> Path:
    """`target`, built by build(temp_path) unless an intact entry is there; it appears in one rename.
    A process that finds another building it waits for that build."""
    if is_intact(target):
        return target
    lock = target.with_name(f".{target.name}.lock")
    with _cache.locked(lock):
        if is_intact(target):
            return target
        temp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            build(temp)
            _seal(temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)   # a process still waiting on it finds the entry
    try:  # the rename itself survives a crash too
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return target


# --- options --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    defines: tuple[str, ...]       # -D/-U/-I flags for g++
    std: str
    flush_denormals: bool
    contract: bool
    arch: int | None = None        # -arch=sm_XX/compute_XX as __CUDA_ARCH__ (XX0); None: emulated_arch()


def translate_options(options) -> Options:
    """NVRTC/CuPy options to g++: macros and include paths pass through, the language standard,
    -ftz, --fmad and -arch (sets __CUDA_ARCH__) are honoured, other NVRTC-only options
    (-lineinfo, ...) are ignored."""
    if isinstance(options, str):
        options = (options,)
    defines, std, ftz, contract, arch = [], "c++14", True, True, None
    for option in options:
        if not isinstance(option, str):
            raise TypeError(f"options must be strings, got {option!r}")
        for prefix, flag in (("--define-macro=", "-D"), ("--undefine-macro=", "-U"), ("--include-path=", "-I")):
            if option.startswith(prefix):
                option = flag + option[len(prefix):]
        key, _, value = option.lstrip("-").partition("=")
        if option[:2] in ("-D", "-U", "-I") and len(option) > 2:
            defines.append(option)
        elif key == "std":
            std = value or std
        elif key == "ftz":
            ftz = value.lower() in ("true", "1")
        elif key == "fmad":
            contract = value.lower() in ("true", "1")
        elif key in ("use_fast_math", "use-fast-math"):
            ftz = True
        elif key in ("arch", "gpu-architecture"):
            number = re.fullmatch(r"(?:sm|compute)_(\d+)a?", value)
            if number is None:
                raise ValueError(f"unknown architecture {value!r} (expected sm_XX or compute_XX)")
            arch = int(number.group(1)) * 10
        elif not option.startswith("-"):
            raise ValueError(f"unknown compile option {option!r}")
    if not re.fullmatch(r"c\+\+\d\d", std):
        raise ValueError(f"unsupported language standard {std!r}")
    return Options(tuple(defines), std, ftz, contract, arch)


# Flags of kernel modules only: one section per static, so that the shared-section linker script
# (shared_section_script) can gather every function-local __shared__ array; and a load or store not
# aligned to its type (a float4 at an odd float) traps (SIGILL), as a GPU faults with "misaligned
# address" where x86 would just do it. So do a shift by the operand's width or more (x86 takes the
# count mod 32 or 64, a GPU's shift clamps it) and a float converted to an integer type that cannot
# hold it (x86 gives the lowest integer, a GPU saturates, NaN gives 0): undefined in C++, so a kernel
# whose result would differ between the two never passes here unseen.
MODULE_FLAGS = ("-fdata-sections", "-fsanitize=alignment,shift-exponent,float-cast-overflow", "-fsanitize-undefined-trap-on-error")

# A local variable read before it is written holds whatever its register held on a GPU; on a fiber's
# fresh stack it would read 0, and an accumulator nobody initialised would look right. It holds a
# pattern instead where the compiler can (g++ 12: 0xfe bytes, -1.7e38 as a float; clang 8 too).
UNINITIALISED_LOCALS_FLAG = "-ftrivial-auto-var-init=pattern"


@functools.lru_cache(maxsize=None)
def compiler_accepts(cxx: str, flag: str) -> bool:
    """Whether `cxx` compiles an empty translation unit with `flag`."""
    result = subprocess.run([cxx, flag, "-x", "c++", "-fsyntax-only", "-"], input="", capture_output=True,
                            text=True)
    return result.returncode == 0


def _compile_flags(opts: Options) -> list[str]:
    flags = [*FLAGS, *MODULE_FLAGS, *cpu_flags(), f"-std={opts.std}"]
    if compiler_accepts(compiler(), UNINITIALISED_LOCALS_FLAG):
        flags.append(UNINITIALISED_LOCALS_FLAG)
    if not opts.contract:
        flags.append("-ffp-contract=off")
    return flags


# --- the runtime library --------------------------------------------------------------------------

_runtime = None


def runtime_library() -> ctypes.CDLL:
    """The fiber runtime, built once per cache and loaded RTLD_GLOBAL so kernel modules bind to it."""
    global _runtime
    if _runtime is not None:
        return _runtime
    cxx = compiler()
    flags = [*FLAGS, *cpu_flags(), "-std=c++14", "-pthread"]
    digest = hashlib.sha256()
    for part in (GLUE_VERSION, compiler_identity(cxx), " ".join(flags),
                 RUNTIME_SOURCE.read_text(), ABI_HEADER.read_text()):
        digest.update(part.encode() + b"\0")
    name = f"libcnn_gpu_emu_runtime-{digest.hexdigest()[:24]}.so"
    path = _cached(cache_dir() / name, lambda temp: _run(
        [cxx, *flags, "-shared", "-fno-exceptions", f"-Wl,-soname,{name}", str(RUNTIME_SOURCE), "-o", str(temp), "-lrt"],
        "building the emulator runtime"))
    _runtime = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    return _runtime


# --- kernel modules -------------------------------------------------------------------------------

_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\b")
# nvcc's `#pragma unroll [N]` (GCC ignores it) in GCC's spelling, through a macro so that N may be a
# macro too. Without a count nvcc unrolls constant trip counts fully; 32 does that for the short
# loops of our kernels without bloating long ones.
_PRAGMA_UNROLL = re.compile(r"^([ \t]*)#[ \t]*pragma[ \t]+unroll\b[ \t]*(.*?)[ \t]*$", re.M)
_GLOBAL_MARK = "CNN_GPU_EMU_GLOBAL_MARK"
# A static __shared__ declaration of several arrays (`__shared__ float a[32], b[32];`): one
# declaration, one section (cuda_emu.h's __shared__), so no guard zone between its arrays. Only
# plain ones are split, on one line or several: no parenthesis, brace, initializer, template
# argument list, preprocessor line or macro line continuation. Found in the code with its comments,
# strings and character literals blanked.
_SHARED_DECLARATION = re.compile(r"\b(?:(?:static|volatile|const)\s+)*__shared__\b[^;{}()=<>#\\]*;")
_COMMENT_OR_STRING = re.compile(r"""//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""", re.S)
_LAST_DECLARATOR = re.compile(r"[*&\s]*[A-Za-z_]\w*\s*(?:\[[^\[\]]*\]\s*)*$")
_ATTRIBUTE = r"(?:(?:__launch_bounds__|__attribute__)\s*\((?:[^()]|\([^()]*\))*\)\s*)*"
_KERNEL_HEAD = re.compile(rf"\s*{_ATTRIBUTE}void\s+{_ATTRIBUTE}([A-Za-z_]\w*)\s*\(")
_DYNAMIC_SHARED = re.compile(r"\bextern\s+cnn_gpu_emu_dynamic_shared_decl\b[^;]*?([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
_TYPE_WORDS = {"const", "volatile", "unsigned", "signed", "int", "long", "short", "char", "float",
               "double", "bool", "void", "__restrict__"}


def _closing_paren(text: str, open_index: int) -> int:
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise CompileError("unbalanced parentheses in a __global__ declaration")


def _parameters(params: str) -> list[tuple[str, str]]:
    """(name, access) of each parameter in a parameter list: its name (argN for an unnamed one), for
    error messages, and how the kernel may touch memory through it, for the launch's aliasing check:
    "r" a __restrict__ pointer to const, "w" a __restrict__ pointer to non-const, "c" another pointer
    to const, "-" anything else."""
    params = params.strip()
    if params in ("", "void"):
        return []
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(params[start:i])
            start = i + 1
    pieces.append(params[start:])
    found = []
    for index, piece in enumerate(pieces):
        words = re.findall(r"[A-Za-z_]\w*", piece)
        named = len(words) > 1 and words[-1] not in _TYPE_WORDS
        access = "-"
        if "*" in piece or "[" in piece:   # a pointer, or an array parameter (one too)
            pointee = piece[:piece.rindex("*")] if "*" in piece else piece
            const = re.search(r"\bconst\b", pointee) is not None
            restrict = re.search(r"\b__restrict(__)?\b", piece) is not None
            access = ("r" if const else "w") if restrict else ("c" if const else "-")
        found.append((words[-1] if named else f"arg{index}", access))
    return found


def scan_kernels(preprocessed: str) -> dict[str, list[tuple[str, str]]]:
    """{kernel name: its parameters' (name, access) (_parameters)} of the non-template __global__ functions."""
    kernels: dict[str, list[tuple[str, str]]] = {}
    for mark in re.finditer(rf"\b{_GLOBAL_MARK}\b", preprocessed):
        before = preprocessed[max(0, mark.start() - 300):mark.start()]
        if re.search(r"template\s*<[^;{}]*>\s*(extern\s+\"C\"\s*)?$", before):
            continue
        head = _KERNEL_HEAD.match(preprocessed, mark.end())
        if head is None:
            continue
        close = _closing_paren(preprocessed, head.end() - 1)
        kernels.setdefault(head.group(1), _parameters(preprocessed[head.end():close]))
    return kernels


def _included_files(source: str, include_dir: Path | None, search: list[Path], seen: set | None = None) -> list[Path]:
    """Files a source pulls in with #include "..." (recursively), for the cache key: looked up as
    g++ does, in the including file's folder (`include_dir`), then in the -I folders `search`."""
    seen = set() if seen is None else seen
    found = []
    folders = ([include_dir] if include_dir is not None else []) + search
    for name in _QUOTED_INCLUDE.findall(source):
        path = next((candidate for candidate in (folder / name for folder in folders) if candidate.is_file()), None)
        if path is None:
            continue
        path = path.resolve()
        if path not in seen:
            seen.add(path)
            found.append(path)
            found += _included_files(path.read_text(), path.parent, search, seen)
    return found


# Every __shared__ array in one output section, so that the runtime can poison, race-check and profile
# it, with a guard zone before each array and after the last: the runtime fills the zones with canary
# bytes at every block and faults on one it finds changed, or at once on an access into one in the
# instrumented build, so that an index past an array's end does not silently read or write the next
# array. cuda_emu.h gives each array a section of its own (.bss.cnn_gpu_emu_shared.<n>); GCC ignores the
# section attribute of the statics of templates and inline functions: they go to .bss._ZZ<function>
# <name> sections, or, for a template instantiated with a lambda's (local) type, to plain .bss unless
# the module is compiled with -fdata-sections (MODULE_FLAGS), which gives every static its own
# .bss._ZZ section. The script names each section the object holds (_object_sections), as a wildcard
# would place them back to back. Any zero-initialised function-local static counts as shared memory
# this way; CUDA's other kind, a function-scope `static __device__` variable, would be poisoned per
# block too (the kernels here have none). The zones' (offset, bytes) pairs go to a table the module
# state points at. Around them all, FAR_GUARD_BYTES on either side that a guarded launch makes
# inaccessible (as around dynamic shared memory): an index far off (a wrong stride or sign) faults
# instead of reading or writing the library's other data. Every input section is NOBITS, so the
# output section is too and costs no room in the file; it goes right before .bss (a NOBITS section
# followed by data would be written out as zeros) and the zone table after .data.
SHARED_GUARD_BYTES = 1024   # past an array's end: a row of 256 floats
SHARED_GUARD_ALIGN = 64     # a zone runs on to here, the next array's start (most align to 16)


def _is_shared_section(name: str) -> bool:
    return name.startswith(".bss.cnn_gpu_emu_shared.") or name.startswith(".bss._ZZ")


def one_array_per_shared_declaration(source: str) -> str:
    """`source` with each plain static __shared__ declaration of several declarators split into one
    declaration per declarator, so that each array gets its own section and guard zones. The split
    declarations take the first line of theirs, followed by as many line breaks as it spanned, so
    the lines after it keep their numbers (fault reports name them)."""
    def split(text):
        parts, depth, start = [], 0, 0
        for i, char in enumerate(text[:-1]):
            depth += (char == "[") - (char == "]")
            if char == "," and depth == 0:
                parts.append(text[start:i])
                start = i + 1
        if not parts:
            return None
        parts.append(text[start:-1])
        first = _LAST_DECLARATOR.search(parts[0])
        if first is None:
            return None
        specifiers = " ".join(parts[0][:first.start()].split())
        declarators = [parts[0][first.start():], *parts[1:]]
        return " ".join(f"{specifiers} {' '.join(d.split())};" for d in declarators) + "\n" * text.count("\n")

    code = _COMMENT_OR_STRING.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), source)
    pieces, end = [], 0
    for match in _SHARED_DECLARATION.finditer(code):
        replaced = split(match.group(0))
        if replaced is not None:
            pieces += [source[end:match.start()], replaced]
            end = match.end()
    return "".join(pieces) + source[end:]


def _object_sections(path: Path) -> list[str]:
    """The section names of an ELF64 little-endian object file, in order."""
    data = path.read_bytes()
    offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    header = lambda i: struct.unpack_from("<IIQQQQIIQQ", data, offset + i * entry_size)   # noqa: E731
    if count == 0:          # 0xff00 sections or more: the count is section 0's size, the index its link
        count = header(0)[5]
    if names_index == 0xFFFF:
        names_index = header(0)[6]
    names_at = header(names_index)[4]

    def name(i):
        start = names_at + header(i)[0]
        return data[start:data.index(b"\0", start)].decode()

    return [name(i) for i in range(count)]


def shared_section_script(sections: list[str]) -> str:
    """The link's script: the shared arrays' sections `sections` in one output section with guard
    zones around them, and the zones' table."""
    names = list(dict.fromkeys(name for name in sections if _is_shared_section(name)))
    lines = ["SECTIONS", "{", f"  cnn_gpu_emu_shared : ALIGN({PAGE}) {{", f"    . += {FAR_GUARD_BYTES};",
             "    HIDDEN(__start_cnn_gpu_emu_shared = .);"]

    def guard(i):
        lines.append(f"    HIDDEN(cnn_gpu_emu_guard_{i} = .); . += {SHARED_GUARD_BYTES}; "
                     f". = ALIGN({SHARED_GUARD_ALIGN}); HIDDEN(cnn_gpu_emu_guard_end_{i} = .);")

    guard(0)
    for i, name in enumerate(names, 1):
        lines.append(f"    *({name})")
        guard(i)
    lines += ["    *(.bss.cnn_gpu_emu_shared.*) *(.bss._ZZ*)", "    HIDDEN(__stop_cnn_gpu_emu_shared = .);",
              f"    . = ALIGN({PAGE}); . += {FAR_GUARD_BYTES};", "  }", "}", "INSERT BEFORE .bss;",
              "SECTIONS", "{", "  cnn_gpu_emu_shared_guards : ALIGN(8) {",
              "    HIDDEN(__start_cnn_gpu_emu_shared_guards = .);"]
    lines += [f"    QUAD(cnn_gpu_emu_guard_{i} - __start_cnn_gpu_emu_shared); "
              f"QUAD(cnn_gpu_emu_guard_end_{i} - cnn_gpu_emu_guard_{i});" for i in range(len(names) + 1)]
    lines += ["    HIDDEN(__stop_cnn_gpu_emu_shared_guards = .);", "  }", "}", "INSERT AFTER .data;", ""]
    return "\n".join(lines)


def _glue(kernels: dict[str, list[tuple[str, str]]], dynamic_names: list[str], metadata: str) -> str:
    lines = [
        '#line 1 "cnn_gpu_emu_glue"',
        'extern "C" {',
        f'__attribute__((visibility("hidden"), aligned({PAGE}))) char '
        f'cnn_gpu_emu_dynamic_shared_storage[{FAR_GUARD_BYTES + DYNAMIC_SHARED_CAPACITY + PAGE + FAR_GUARD_BYTES}];',
        'extern char __start_cnn_gpu_emu_shared[] __attribute__((weak, visibility("hidden")));',
        'extern char __stop_cnn_gpu_emu_shared[] __attribute__((weak, visibility("hidden")));',
        'extern const unsigned long long __start_cnn_gpu_emu_shared_guards[] __attribute__((weak, '
        'visibility("hidden")));',
        'extern const unsigned long long __stop_cnn_gpu_emu_shared_guards[] __attribute__((weak, '
        'visibility("hidden")));',
        '__attribute__((visibility("hidden"))) cnn_gpu_emu_module_state cnn_gpu_emu_module = {',
        '    nullptr, {0, 0, 0}, {1, 1, 1}, {1, 1, 1}, __start_cnn_gpu_emu_shared, __stop_cnn_gpu_emu_shared,',
        f'    cnn_gpu_emu_dynamic_shared_storage + {FAR_GUARD_BYTES}, {DYNAMIC_SHARED_CAPACITY}ULL,',
        '    __start_cnn_gpu_emu_shared_guards, __stop_cnn_gpu_emu_shared_guards, nullptr, nullptr};',
        '__attribute__((visibility("default"))) cnn_gpu_emu_module_state* cnn_gpu_emu_module_state_of() {',
        '    return &cnn_gpu_emu_module; }',
        f'__attribute__((visibility("default"))) const char* cnn_gpu_emu_metadata() {{ return {json.dumps(metadata)}; }}',
        '}',
    ]
    for name in dynamic_names:  # every extern __shared__ array is the one dynamic buffer
        lines.append(f'asm(".globl {name}\\n.hidden {name}\\n.set {name}, cnn_gpu_emu_dynamic_shared_storage + '
                     f'{FAR_GUARD_BYTES}\\n");')
    for name in kernels:
        lines.append(f'extern "C" __attribute__((visibility("default"))) void cnn_gpu_emu_entry_{name}('
                     f'void** cnn_gpu_emu_args) {{ cnn_gpu_emu::invoke(&{name}, cnn_gpu_emu_args); }}')
        lines.append(f'extern "C" __attribute__((visibility("default"))) const char* const* '
                     f'cnn_gpu_emu_signature_{name}() {{ return cnn_gpu_emu::signature(&{name}); }}')
    return "\n".join(lines) + "\n"


# The instrumented build (race check, memory profile): every memory access calls a __tsan_* hook
# (defined in cuda_emu.h). Accesses are seen as the code makes them: no vectorising or merging of
# scalar accesses, and vector types (float4, ...) are not split into their members (SRA), so
# that the accesses are those a GPU makes (LDS.32, LDG.128, ...).
INSTRUMENTED_FLAGS = ("-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-fno-tree-vectorize",
                      "-fno-store-merging", "-fno-tree-sra", "-DCNN_GPU_EMU_INSTRUMENTED=1")


def build_module(source: str, display_name: str, include_dir: Path | None, options,
                 instrumented: bool = False) -> tuple[Path, Options]:
    """The cached shared object of a kernel source (built when missing) and its translated options."""
    opts = translate_options(options)
    cxx = compiler()
    flags = _compile_flags(opts) + (list(INSTRUMENTED_FLAGS) if instrumented else [])
    flags.append(f"-DCNN_GPU_EMU_ARCH={opts.arch or emulated_arch()}")
    includes = [f"-I{include_dir}"] if include_dir else []
    transformed = one_array_per_shared_declaration(_EXTERN_SHARED.sub("extern cnn_gpu_emu_dynamic_shared_decl", source))
    transformed = _PRAGMA_UNROLL.sub(lambda m: f"{m.group(1)}CNN_GPU_EMU_UNROLL({m.group(2) or 32})", transformed)
    digest = hashlib.sha256()
    # not the runtime's source: a module binds to the runtime through emu_abi.h's declarations
    parts = [GLUE_VERSION, compiler_identity(cxx), " ".join(flags), "\n".join(opts.defines), display_name,
             HEADER.read_text(), ABI_HEADER.read_text(), shared_section_script([".bss.cnn_gpu_emu_shared.0"]),
             transformed]
    search = [Path(flag[2:]) for flag in opts.defines if flag.startswith("-I")]
    parts += [p.read_text() for p in _included_files(source, include_dir, search)]
    for part in parts:
        digest.update(part.encode() + b"\0")
    path = cache_dir() / f"module-{digest.hexdigest()[:32]}.so"
    if is_intact(path):
        return path, opts

    preprocessed = _run([cxx, "-E", "-P", "-x", "c++", f"-std={opts.std}", *opts.defines, *includes,
                         f"-D__global__={_GLOBAL_MARK}", "-"], f"preprocessing {display_name}", stdin=transformed)
    kernels = scan_kernels(preprocessed)
    dynamic_names = sorted(set(_DYNAMIC_SHARED.findall(preprocessed)))
    metadata = json.dumps({"kernels": {name: [p[0] for p in params] for name, params in kernels.items()},
                           "access": {name: "".join(p[1] for p in params) for name, params in kernels.items()},
                           "source": display_name})
    text = (f'#include "{HEADER}"\n#line 1 "{display_name}"\n{transformed}\n'
            f'{_glue(kernels, dynamic_names, metadata)}')

    def compile_to(temp: Path) -> None:
        generated, obj, script = temp.with_suffix(".cpp"), temp.with_suffix(".o"), temp.with_suffix(".ld")
        generated.write_text(text)
        try:
            # compile and link apart: linking with -fsanitize=thread would pull in libtsan
            _run([cxx, *flags, *opts.defines, *includes, "-c", "-x", "c++", str(generated), "-o", str(obj)],
                 f"compiling {display_name} for the emulator")
            script.write_text(shared_section_script(_object_sections(obj)))
            _run([cxx, "-shared", str(obj), f"-Wl,-T,{script}", "-o", str(temp)],
                 f"linking {display_name} for the emulator")
        finally:
            for path in (generated, obj, script):
                path.unlink(missing_ok=True)

    return _cached(path, compile_to), opts
