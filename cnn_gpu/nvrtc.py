"""Compile CUDA C with NVRTC (no GPU, no driver needed) and read ptxas' resource report.

A ctypes wrapper of libnvrtc (cnn_gpu._nvrtc_lib), the compiler CuPy itself uses. Every compile
runs in a fresh child process set up the same way each time (a fixed address layout, an empty
environment, fixed paths): NVRTC's register allocation follows its process's address layout and
heap, and in this process the reports would differ from run to run. Each compile targets one real
architecture (`-arch=sm_XX`), so the result is a CUBIN whose ptxas report (`-Xptxas=-v`, in the
program log) gives per kernel: registers, spill stores/loads, static shared memory and stack frame.
compile_as_backend hands the CUBIN itself to cnn_gpu.sass (the SASS report).
Since a compile is then deterministic, its CUBIN and log are cached on disk ($CNN_GPU_CACHE/nvrtc,
else ~/.cache/cnn_gpu/nvrtc) per library, interpreter, options and source text.
The block size a kernel is built for is read from the CUBIN (`__launch_bounds__` ends up as the
EIATTR_MAX_THREADS attribute of the kernel's `.nv.info.<name>` ELF section), so macros in the
bounds need no preprocessing here. Theoretical occupancy follows the CUDA occupancy calculator's
rules for each architecture.

libnvrtc is looked for (1) where CuPy loaded it, (2) in the nvidia-cuda-nvrtc-cu12 wheel
(site-packages/nvidia/cuda_nvrtc/lib), (3) under $CUDA_PATH / $CUDA_HOME, (4) on the loader path.
"""
from __future__ import annotations

import base64
import ctypes.util
import functools
import glob
import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _cache, _nvrtc_lib


class NvrtcUnavailable(RuntimeError):
    """No usable libnvrtc on this machine."""


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message carries the compiler log."""


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability (CUDA C Programming Guide, table of technical
    specifications), with the shared memory carveout at its maximum."""
    max_threads_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int               # bytes usable by blocks on one SM
    smem_reserved_per_block: int   # bytes the runtime reserves per resident block (sm_80+)
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    register_unit: int = 256       # registers are allocated per warp in units of this many
    partitions: int = 4            # a warp's registers come from one of 4 SM sub-partitions


KIB = 1024
ARCH_LIMITS = {
    "sm_70": ArchLimits(2048, 32, 96 * KIB, 0),
    "sm_75": ArchLimits(1024, 16, 64 * KIB, 0),
    "sm_80": ArchLimits(2048, 32, 164 * KIB, 1 * KIB),
    "sm_86": ArchLimits(1536, 16, 100 * KIB, 1 * KIB),
    "sm_89": ArchLimits(1536, 24, 100 * KIB, 1 * KIB),
    "sm_90": ArchLimits(2048, 32, 228 * KIB, 1 * KIB),
}
ARCHS = tuple(ARCH_LIMITS)
WARP = 32


@dataclass(frozen=True)
class KernelReport:
    """ptxas' resources of one kernel for one arch, plus its launch bound and occupancy."""
    name: str
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int              # static shared memory
    stack_bytes: int
    max_threads: int | None        # from __launch_bounds__; None when the kernel declares none
    occupancy: float | None        # resident warps / max warps at max_threads per block
    blocks_per_sm: int | None
    occupancy_limiter: str | None  # "warps", "registers", "shared memory" or "blocks"

    @property
    def spill_bytes(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes


def occupancy(arch: str, registers: int, shared_bytes: int, threads: int, limits: ArchLimits | None = None):
    """Theoretical occupancy of a kernel with `registers` per thread, `shared_bytes` of shared
    memory per block and `threads` per block: (fraction, resident blocks per SM, limiting resource).
    `limits`: a board's own (a GPU's properties), else the arch's ARCH_LIMITS."""
    limits = limits or ARCH_LIMITS[arch]
    warps_per_block = -(-threads // WARP)
    max_warps = limits.max_threads_per_sm // WARP
    regs_per_warp = -(-max(registers, 1) * WARP // limits.register_unit) * limits.register_unit
    warps_by_registers = limits.partitions * ((limits.regs_per_sm // limits.partitions) // regs_per_warp)
    smem_per_block = shared_bytes + limits.smem_reserved_per_block
    candidates = {
        "warps": max_warps // warps_per_block,
        "registers": warps_by_registers // warps_per_block,
        "shared memory": limits.smem_per_sm // smem_per_block if smem_per_block else limits.max_blocks_per_sm,
        "blocks": limits.max_blocks_per_sm,
    }
    limiter = min(candidates, key=candidates.get)
    blocks = candidates[limiter]
    return blocks * warps_per_block / max_warps, blocks, limiter


# --- finding and loading libnvrtc ---------------------------------------------------------------

def _candidates_from_cupy():
    try:
        import cupy
        cupy.cuda.nvrtc.getVersion()  # makes CuPy load the library
    except Exception:
        return []
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libnvrtc.so" in line
                           and "builtins" not in line})
    except OSError:
        return []


def _candidates_from_wheel():
    # nvidia-cuda-nvrtc-cu12 installs nvidia/cuda_nvrtc/lib, CUDA 13's nvidia-cuda-nvrtc nvidia/cu13/lib
    found = []
    for entry in sys.path:
        for layout in (("cuda_nvrtc", "lib"), ("cu[0-9]*", "lib")):
            found += sorted(glob.glob(os.path.join(entry, "nvidia", *layout, "libnvrtc.so*")))
    return [path for path in found if "builtins" not in path and ".alt." not in path]


def _candidates_from_cuda_path():
    found = []
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            for sub in ("lib64", "lib"):
                found += sorted(glob.glob(os.path.join(root, sub, "libnvrtc.so*")))
    return [path for path in found if "builtins" not in path and ".alt." not in path]


def library_candidates() -> list[str]:
    found = _candidates_from_cupy() + _candidates_from_wheel() + _candidates_from_cuda_path()
    system = ctypes.util.find_library("nvrtc")
    if system:
        found.append(system)
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=1)
def _child_command() -> tuple[str, ...]:
    """The command a compile runs as: the base interpreter (not the virtual environment's link, whose
    path differs from tree to tree) running _nvrtc_lib's text. It starts with the same arguments, an
    empty environment and "/" as its folder wherever the tree lies: Python's own start-up
    allocations follow them, and NVRTC's output follows the heap they leave."""
    return (os.path.realpath(sys.executable), "-I", "-S", "-c", Path(_nvrtc_lib.__file__).read_text())


LINK_FOLDER = "/tmp/cnn-gpu-nvrtc-{uid}"   # where _stable_library_path makes its links


_UNSAFE_IN_FILE_NAME = re.compile(r"[^\w.]")


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex), read again when its size or time changes; OSError where it
    cannot be read."""
    info = os.stat(path)
    return _content_digest(path, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    content = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            content.update(block)
    return content.hexdigest()


@functools.lru_cache(maxsize=None)
def _stable_library_path(path: str) -> str:
    """`path` reached through a link whose path has the same length wherever the library lies:
    LINK_FOLDER/<digest of the library>/<its name>, the middle part a link to its
    folder (where libnvrtc also finds its builtins library). The loader keeps the path a library
    was opened by, and NVRTC's output follows its length. `path` itself where no such link can be
    made, or where the folder above it is not this user's alone."""
    real = os.path.realpath(path)
    try:
        content = _file_digest(real)
        base = LINK_FOLDER.format(uid=os.getuid())
        os.makedirs(base, mode=0o700, exist_ok=True)
        info = os.lstat(base)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return path
        link, target = os.path.join(base, content[:16]), os.path.dirname(real)
        if os.path.realpath(link) != target:   # absent, dangling, or another tree's copy of the library
            temporary = f"{link}.{os.getpid()}"
            os.symlink(target, temporary)
            os.replace(temporary, link)
        return os.path.join(link, os.path.basename(real))
    except OSError:
        return path


@functools.lru_cache(maxsize=1)
def _warn_randomized_layout() -> None:
    warnings.warn("this system does not let the NVRTC child process fix its address layout (turn address "
                  "randomization off: personality(ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT)): register counts, "
                  "spills and SASS may differ a little from compile to compile", RuntimeWarning, stacklevel=3)


class Nvrtc:
    """One libnvrtc: its version and archs, read in this process, and compile(), which runs in a
    fresh child process (_nvrtc_lib says why)."""

    def __init__(self, path: str):
        self.path = path
        try:
            library = _nvrtc_lib.Library(path)
            archs = library.supported_archs()
        except RuntimeError as err:
            raise CompileError(str(err)) from None
        self.version = library.version
        # NVRTC < 11.2 cannot say; assume the arch list is fine
        self.supported_archs = frozenset(ARCHS) if archs is None else frozenset(archs)

    def compile(self, source: str, name: str, options) -> tuple[bytes, str]:
        """(cubin, log) of `source`; CompileError with the log when compilation fails. From the disk
        cache where the same child compiled the same request with this library before."""
        try:   # what the child's output follows besides the request
            compiler = (_file_digest(os.path.realpath(self.path)), sys.version, *_child_command())
        except OSError:   # no readable library: the child will say why
            return self._compile(source, name, options)[:2]
        settings = hashlib.sha256(json.dumps([compiler, list(options)]).encode()).hexdigest()[:16]
        group = f"{_UNSAFE_IN_FILE_NAME.sub('_', name)}-{settings}"
        key = hashlib.sha256(source.encode()).hexdigest()[:32]
        cached = _cached_compile(group, key)
        if cached is None:
            with _cache.group_lock("nvrtc", group):
                cached = _cached_compile(group, key)   # another process may have compiled it meanwhile
                if cached is None:
                    cubin, log, fixed_layout = self._compile(source, name, options)
                    if fixed_layout:   # else the output varies from compile to compile
                        entry = {"log": log, "cubin": base64.b64encode(zlib.compress(cubin)).decode()}
                        _cache.write_json("nvrtc", group, key, entry)
                    cached = cubin, log
        return cached

    def _compile(self, source: str, name: str, options) -> tuple[bytes, str, bool]:
        """(cubin, log, whether the child ran with address randomization off) from a fresh child."""
        request = json.dumps({"library": _stable_library_path(self.path), "source": source, "name": name,
                              "options": list(options)})
        child = subprocess.run(_child_command(), input=request, capture_output=True, text=True, env={}, cwd="/")
        try:
            reply = json.loads(child.stdout)
        except ValueError:
            raise CompileError(f"{name}: the NVRTC child process ended with status {child.returncode} "
                               f"and no reply: {child.stderr.strip()[-2000:]}") from None
        if reply["status"] != 0:
            raise CompileError(f"{name} ({' '.join(options)}): {reply['reason']}\n{reply['log']}")
        if not reply["fixed_layout"]:
            _warn_randomized_layout()
        return base64.b64decode(reply["cubin"]), reply["log"], reply["fixed_layout"]


def _cached_compile(group: str, key: str) -> tuple[bytes, str] | None:
    """(cubin, log) of a cached compile, or None (absent or unreadable)."""
    entry = _cache.read_json("nvrtc", group, key)
    try:
        return None if entry is None else (zlib.decompress(base64.b64decode(entry["cubin"])), entry["log"])
    except (ValueError, KeyError, TypeError, zlib.error):
        return None


def _loadable(errors: list | None = None):
    """Each libnvrtc of library_candidates() that loads, in that order; the others' reasons go to
    `errors`."""
    for path in library_candidates():
        try:
            yield Nvrtc(path)
        except (OSError, AttributeError, CompileError) as err:
            if errors is not None:
                errors.append(f"{path}: {err}")


@functools.lru_cache(maxsize=1)
def cupy_compiler() -> Nvrtc | None:
    """CuPy's own libnvrtc, whose CUBINs CuPy's CUDA runtime and the driver it was checked against
    run, as an Nvrtc: of the libraries this process has loaded, the one of CuPy's NVRTC version (load()
    may have loaded another); None where CuPy has none or it does not load."""
    try:
        import cupy
        version = tuple(cupy.cuda.nvrtc.getVersion())[:2]
    except Exception:
        return None
    for path in _candidates_from_cupy():
        try:
            compiler = Nvrtc(path)
        except (OSError, AttributeError, CompileError):
            continue
        if tuple(compiler.version)[:2] == version:
            return compiler
    return None


@functools.lru_cache(maxsize=1)
def load() -> Nvrtc:
    """The libnvrtc that targets the most of ARCHS, the first found among equals (CuPy's, then the
    wheel's...): CUDA 13's cannot target sm_70, which the test extra's CUDA 12 wheel still can.
    NvrtcUnavailable (saying where it looked) when none loads."""
    errors, loaded = [], []
    for compiler in _loadable(errors):
        loaded.append(compiler)
        if compiler.supported_archs >= set(ARCHS):
            break
    if loaded:
        return max(loaded, key=lambda compiler: len(compiler.supported_archs & set(ARCHS)))
    tried = "; ".join(errors) if errors else "none found"
    raise NvrtcUnavailable(
        "libnvrtc not found (looked in CuPy, the nvidia-cuda-nvrtc(-cu12) wheels, $CUDA_PATH/$CUDA_HOME and the "
        f"loader path: {tried}); pip install nvidia-cuda-nvrtc-cu12")


def newest() -> Nvrtc | None:
    """The newest libnvrtc found (CuPy for CUDA 13 compiles with CUDA 13's, which load() passes over
    for CUDA 12's where that one also targets sm_70), or None: spills depend on the compiler."""
    return max(_loadable(), key=lambda compiler: compiler.version, default=None)


def why_unavailable() -> str:
    """'' when NVRTC loads, else the reason."""
    try:
        load()
        return ""
    except NvrtcUnavailable as err:
        return str(err)


def why_arch_unsupported(arch: str) -> str:
    """'' when the loaded NVRTC compiles for `arch`, else the reason (no NVRTC included)."""
    reason = why_unavailable()
    if reason:
        return reason
    compiler = load()
    if arch in compiler.supported_archs:
        return ""
    return (f"NVRTC {compiler.version[0]}.{compiler.version[1]} ({compiler.path}) cannot target {arch}; "
            f"install nvidia-cuda-nvrtc-cu12")


# --- the ptxas report and the CUBIN -------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """Per kernel name: registers, spill_store_bytes, spill_load_bytes, shared_bytes, stack_bytes."""
    kernels: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = kernels.setdefault(entry.group(1), dict(
                registers=0, spill_store_bytes=0, spill_load_bytes=0, shared_bytes=0, stack_bytes=0))
            continue
        if current is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            current["stack_bytes"], current["spill_store_bytes"], current["spill_load_bytes"] = (
                int(value) for value in frame.groups())
        used = _USED.search(line)
        if used:
            current["registers"] = int(used.group(1))
            smem = _SMEM.search(line)
            current["shared_bytes"] = int(smem.group(1)) if smem else 0
    return kernels


_EIATTR_MAX_THREADS = 0x05
_EIFMT_SVAL = 0x04


def launch_bounds_from_cubin(cubin: bytes) -> dict[str, int]:
    """Kernel name -> threads per block from `__launch_bounds__` (kernels without one are absent).

    Reads the ELF section headers, then the attribute records of each `.nv.info.<kernel>`
    section: (format u8, attribute u8, then a u16 size and payload for format SVAL, else a u16)."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not a 64-bit ELF CUBIN")
    section_offset, = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, section_offset + i * entry_size) for i in range(count)]
    names_at = sections[names_index][4]

    def section_name(offset: int) -> str:
        start = names_at + offset
        return cubin[start:cubin.index(b"\0", start)].decode()

    bounds = {}
    prefix = ".nv.info."
    for header in sections:
        name = section_name(header[0])
        if not name.startswith(prefix):
            continue
        body = cubin[header[4]:header[4] + header[5]]
        at = 0
        while at + 4 <= len(body):
            fmt, attribute = body[at], body[at + 1]
            if fmt == _EIFMT_SVAL:
                size, = struct.unpack_from("<H", body, at + 2)
                if attribute == _EIATTR_MAX_THREADS and size >= 12:
                    x, y, z = struct.unpack_from("<III", body, at + 4)
                    bounds[name[len(prefix):]] = x * y * z
                at += 4 + size
            else:
                at += 4
    return bounds


# --- compiling the project's kernel files -------------------------------------------------------

_LINE_DIRECTIVE = re.compile(r'^(#line \d+ ")([^"\n]*/)?([^"/\n]*)"', re.MULTILINE)


def _line_directives_by_name(source: str) -> tuple[str, dict[str, str]]:
    """`source` with each `#line` directive's file named without its folder (backend.kernel_source
    writes absolute paths, and NVRTC's output follows every byte of its input, so it would follow
    where the tree lies), and {name: the path it stood for} for the names that stood for one path."""
    paths: dict[str, set] = {}

    def by_name(match):
        paths.setdefault(match.group(3), set()).add((match.group(2) or "") + match.group(3))
        return f'{match.group(1)}{match.group(3)}"'
    named = _LINE_DIRECTIVE.sub(by_name, source)
    return named, {file_name: min(found) for file_name, found in paths.items() if len(found) == 1}


def compile_cubin(source: str, name: str, arch: str, options=(),
                  compiler: Nvrtc | None = None) -> tuple[bytes, str]:
    """(CUBIN, ptxas log) of `source` compiled for `arch` with `options`, `-arch=<arch>` and
    `--ptxas-options=-v`, by `compiler` (default: load()'s). The CUBIN is the whole ELF image: nvrtcGetCUBINSize bytes (CuPy's
    nvrtc.getCUBIN drops the last byte, which leaves nvdisasm seeing no device code).
    NVRTC sees `#line` directives' file names without their folders; a compile error names the
    files by their paths again."""
    if arch not in ARCH_LIMITS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if compiler is None:
        reason = why_arch_unsupported(arch)
        if reason:
            raise CompileError(reason)
        compiler = load()
    elif arch not in compiler.supported_archs:
        raise CompileError(f"NVRTC {compiler.version[0]}.{compiler.version[1]} cannot target {arch}")
    source, paths = _line_directives_by_name(source)
    try:
        return compiler.compile(source, name, (*options, f"-arch={arch}", "--ptxas-options=-v"))
    except CompileError as err:
        message = str(err)
        for file_name, path in paths.items():   # NVRTC's diagnostics start "name(line): "
            message = re.sub(rf"^{re.escape(file_name)}(?=\(\d+\))", lambda _: path, message, flags=re.MULTILINE)
        raise CompileError(message) from None


def reports_of(cubin: bytes, log: str, arch: str) -> list[KernelReport]:
    """Every kernel's report (sorted by name) from a compile's CUBIN and ptxas log."""
    bounds = launch_bounds_from_cubin(cubin)
    reports = []
    for kernel, res in sorted(parse_ptxas_log(log).items()):
        threads = bounds.get(kernel)
        occ = occupancy(arch, res["registers"], res["shared_bytes"], threads) if threads else (None, None, None)
        reports.append(KernelReport(kernel, res["registers"], res["spill_store_bytes"], res["spill_load_bytes"],
                                    res["shared_bytes"], res["stack_bytes"], threads, *occ))
    return reports


def kernel_report(source: str, name: str, arch: str, options=()) -> list[KernelReport]:
    """Compile `source` for `arch` and report every kernel in it (sorted by name)."""
    return reports_of(*compile_cubin(source, name, arch, options), arch)


@functools.lru_cache(maxsize=None)
def _compile_as_backend(source: str, name: str, dtype_name: str, arch: str) -> tuple[bytes, str]:
    from . import backend
    options = (*backend.NVRTC_OPTIONS, *backend.dtype_options(dtype_name))
    return compile_cubin(source, name, arch, options)


def compile_as_backend(source: str, name: str, dtype, arch: str) -> tuple[bytes, str]:
    """(CUBIN, ptxas log) of a kernel source (backend.kernel_source's text) compiled as the cuda
    backend compiles it: backend.NVRTC_OPTIONS and backend.dtype_options(dtype), for `arch`;
    cached per (source text, name, dtype, arch)."""
    return _compile_as_backend(source, name, np.dtype(dtype).name, arch)


def file_report(path, dtype, arch: str) -> tuple[KernelReport, ...]:
    """Reports of a kernels/*.cu file, its headers inlined by backend.kernel_source, compiled by
    compile_as_backend."""
    from . import backend
    path = Path(path)
    source = backend.kernel_source(path.stem, path.parent)
    return tuple(reports_of(*compile_as_backend(source, path.name, dtype, arch), arch))
