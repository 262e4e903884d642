"""Backend registry: which of "numpy", "emu" and "cuda" runs an op, and where the kernels live.

The backend of a call is chosen from its inputs (CuPy arrays -> "cuda") or, for NumPy arrays,
from the current default, which `set_backend` / `use_backend` / $CNN_GPU_BACKEND set.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import shutil
import threading
from pathlib import Path

import numpy as np

BACKENDS = ("numpy", "emu", "cuda")

_state = threading.local()


def _check_name(name) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def _env_default() -> str:
    name = os.environ.get("CNN_GPU_BACKEND", "numpy").strip() or "numpy"
    try:
        return _check_name(name)
    except ValueError as err:
        raise ValueError(f"$CNN_GPU_BACKEND: {err}") from None


_process_default = None


def get_backend() -> str:
    """The current default backend (for NumPy inputs)."""
    global _process_default
    name = getattr(_state, "override", None)
    if name is not None:
        return name
    if _process_default is None:
        _process_default = _env_default()
    return _process_default


def set_backend(name: str) -> None:
    """Set the default backend for this process (a `use_backend` block still takes precedence)."""
    global _process_default
    _require_available(_check_name(name))
    _process_default = name


@contextlib.contextmanager
def use_backend(name: str):
    """`with use_backend("emu"): ...` runs NumPy-array ops on that backend inside the block."""
    _require_available(_check_name(name))
    previous = getattr(_state, "override", None)
    _state.override = name
    try:
        yield name
    finally:
        _state.override = previous


def _require_available(name: str) -> None:
    if name not in available_backends():
        raise RuntimeError(f"backend {name!r} is not available on this machine: {why_unavailable(name)}")


# --- availability -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def cupy_or_none():
    """The cupy module when it imports and sees at least one GPU, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no CuPy, no driver, or no device: all mean "no cuda backend"
        pass
    return None


def why_unavailable(name: str) -> str:
    if name == "numpy":
        return ""
    if name == "emu":
        return _why_emu_unavailable()
    if name == "cuda":
        try:
            import cupy  # noqa: F401
        except Exception as err:
            return f"CuPy does not import ({err}); pip install 'cnn_gpu[cuda12]' or '[cuda13]'"
        if cupy_or_none() is None:
            return "CuPy sees no GPU"
        return ""
    return f"unknown backend {name!r}"


@functools.lru_cache(maxsize=None)
def _why_emu_unavailable() -> str:
    # Probed once: resolve() asks on every emu op and optimizer step.
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "the emulator runs on x86-64 Linux only"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no g++ found (install g++ or set $CXX)"
    return ""


def available_backends() -> list[str]:
    """Backends usable on this machine, numpy first."""
    return [name for name in BACKENDS if not why_unavailable(name)]


# --- choosing the backend of a call -------------------------------------------------------------

def is_cupy_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def resolve(backend, *arrays) -> str:
    """The backend a call runs on. None: "cuda" for CuPy inputs, the default for NumPy inputs.

    Raises TypeError when the inputs' kind does not fit the backend (CuPy arrays on numpy/emu, or
    NumPy arrays on cuda): ops never move data between host and device behind the user's back.
    """
    present = [a for a in arrays if a is not None]
    on_gpu = [is_cupy_array(a) for a in present]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("inputs mix CuPy and NumPy arrays; move them to one device first")
    if backend is None:
        backend = "cuda" if any(on_gpu) else get_backend()
    _check_name(backend)
    if backend == "cuda":
        if not all(on_gpu):
            raise TypeError("backend 'cuda' takes CuPy arrays; got NumPy arrays (use cupy.asarray)")
    elif any(on_gpu):
        raise TypeError(f"backend {backend!r} takes NumPy arrays; got CuPy arrays (use .get())")
    if backend == "emu":
        reason = why_unavailable("emu")
        if reason:
            raise RuntimeError(f"backend 'emu' is not available: {reason}")
    return backend


def array_module(backend: str):
    """numpy for "numpy"/"emu", cupy for "cuda"."""
    if backend == "cuda":
        import cupy
        return cupy
    return np


# --- kernel sources and modules -----------------------------------------------------------------

def kernel_dir() -> Path:
    """Folder of the CUDA sources: cnn_gpu/kernels in an installed wheel, ./kernels in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(f"no CUDA kernel sources found next to {here} (looked for kernels/*.cu)")


def kernel_files() -> list[Path]:
    """The kernel families, kernels/*.cu (not the shared kernels/*.cuh headers they include)."""
    return sorted(kernel_dir().glob("*.cu"))


_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"')


def _line_directive(number: int, path: Path) -> str:
    quoted = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'#line {number} "{quoted}"'


def _inline_includes(path: Path, directory: Path, inlined: set) -> list[str]:
    lines = [_line_directive(1, path)]
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _QUOTED_INCLUDE.match(line)
        if match is None:
            lines.append(line)
            continue
        header = (directory / match.group(1)).resolve()
        if not header.is_file():
            raise FileNotFoundError(f'{path}:{number}: #include "{match.group(1)}": no such header in {directory}')
        if header not in inlined:
            inlined.add(header)
            lines += _inline_includes(header, directory, inlined)
        lines.append(_line_directive(number + 1, path))
    return lines


def kernel_source(family: str, directory=None) -> str:
    """The text of kernels/<family>.cu as NVRTC and the emulator compile it: each quoted
    `#include "x.cuh"` is replaced by that header from the same folder (recursively, each header
    once), since NVRTC gets sources without includes. `#line` directives name the original file and
    line of every inlined line, so compiler errors and emulator faults point into the right file."""
    directory = (Path(directory) if directory is not None else kernel_dir()).resolve()
    return "\n".join(_inline_includes(directory / f"{family}.cu", directory, set())) + "\n"


def dtype_options(dtype) -> tuple[str, ...]:
    """Preprocessor options that instantiate a kernel file for one dtype: REAL is the element
    type, REAL_IS_DOUBLE selects the fp64 tiling where it differs."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return ("-DREAL=float", "-DREAL_IS_DOUBLE=0")
    if dtype == np.float64:
        return ("-DREAL=double", "-DREAL_IS_DOUBLE=1")
    raise TypeError(f"kernels take float32 or float64 arrays, not {dtype}")


# Options CuPy-compiled kernels get (the emulator mirrors -ftz and FMA contraction itself).
NVRTC_OPTIONS = ("--std=c++14", "-ftz=true")

_modules: dict = {}
_modules_lock = threading.Lock()


def kernel_module(backend: str, family: str, dtype):
    """The compiled module of kernels/<family>.cu for `dtype` on `backend` ("cuda" or "emu")."""
    key = (backend, family, np.dtype(dtype).str)
    module = _modules.get(key)
    if module is not None:
        return module
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            source = kernel_source(family)
            options = dtype_options(dtype)
            if backend == "cuda":
                import cupy
                module = cupy.RawModule(code=source, options=NVRTC_OPTIONS + options)
            elif backend == "emu":
                from . import emu
                module = emu.RawModule(code=source, options=options)
            else:
                raise ValueError(f"backend {backend!r} runs no kernels")
            _modules[key] = module
    return module


def launch(backend: str, family: str, dtype, kernel: str, grid, block, args, shared_mem: int = 0):
    """Launch kernels/<family>.cu:<kernel> with CuPy's calling convention on cuda or emu.

    `args` follow CuPy's rules: arrays, and NumPy scalars of exactly the declared C type
    (np.int32 for `int`, np.int64 for `long long`, the array dtype for REAL)."""
    fn = kernel_module(backend, family, dtype).get_function(kernel)
    grid = tuple(int(g) for g in grid)
    block = tuple(int(b) for b in block)
    if min(grid) <= 0:
        return  # empty problem: nothing to launch
    fn(grid, block, tuple(args), shared_mem=int(shared_mem))
