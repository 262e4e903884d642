"""Backend registry: which of "numpy", "emu" and "cuda" runs an op, and where the kernels live.

The backend of a call is chosen from its inputs (CuPy arrays -> "cuda") or, for NumPy arrays,
from the current default, which `set_backend` / `use_backend` / $CNN_GPU_BACKEND set.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import operator
import os
import platform
import re
import shutil
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np

BACKENDS = ("numpy", "emu", "cuda")


class _ThreadState(threading.local):
    """Per thread: use_backend's backend and the open recording (cnn_gpu.replay), None where there
    is none. Defaults on the class: getattr's default for an attribute a thread never set costs an
    AttributeError raised and caught, and recording() is asked several times a launch."""
    override = None
    recording = None


_state = _ThreadState()


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
    name = _state.override
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
    previous = _state.override
    _state.override = name
    try:
        yield name
    finally:
        _state.override = previous


def _require_available(name: str) -> None:
    if name not in available_backends():
        raise RuntimeError(f"backend {name!r} is not available on this machine: {why_unavailable(name)}")


# --- availability -------------------------------------------------------------------------------

def cupy_or_none():
    """The cupy module when the cuda backend can compile and run the kernels here, else None."""
    return _cuda_probe()[0]


def why_unavailable(name: str) -> str:
    if name == "numpy":
        return ""
    if name == "emu":
        return _why_emu_unavailable()
    if name == "cuda":
        return _cuda_probe()[1]
    return f"unknown backend {name!r}"


INSTALL_HINT = "pip install 'cnn_gpu[cuda12]' (CUDA 12 driver) or 'cnn_gpu[cuda13]' (CUDA 13 driver)"


def _cuda_version(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


# cudaDeviceAttr's compute capability (CUDA runtime API)
_COMPUTE_CAPABILITY_MAJOR, _COMPUTE_CAPABILITY_MINOR = 75, 76


def device_arch(cupy, index: int) -> int:
    """GPU `index`'s compute capability as one number (90 for sm_90, 100 for sm_100), read as an
    attribute: CuPy's Device.compute_capability makes the device current, which creates a CUDA
    context on it (half a GB on every GPU for each probing rank; an error in exclusive-process mode)."""
    runtime = cupy.cuda.runtime
    major = runtime.deviceGetAttribute(_COMPUTE_CAPABILITY_MAJOR, index)
    return 10 * major + runtime.deviceGetAttribute(_COMPUTE_CAPABILITY_MINOR, index)


@functools.lru_cache(maxsize=None)
def _cuda_probe() -> tuple:
    """(cupy, "") when CuPy imports, the driver is new enough for CuPy's CUDA runtime, a GPU is
    visible, NVRTC and cuBLAS load, NVRTC compiles for every GPU's architecture and CuPy compiles a
    kernel; else (None,
    why not). Probed once: a missing library would otherwise surface as a crash at the first
    kernel compile or matrix product."""
    try:
        import cupy
    except Exception as err:
        return None, f"CuPy does not import ({err}); {INSTALL_HINT}"
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()
        cuda = runtime.runtimeGetVersion()
    except Exception as err:
        return None, f"no usable NVIDIA driver or CUDA runtime ({err})"
    if driver == 0:
        return None, "no NVIDIA driver is installed"
    # CuPy compiles kernels to cubins, which a driver of the same major version runs (minor
    # version compatibility); an older major version cannot run them at all.
    if driver // 1000 < cuda // 1000:
        extra = {12: " or install 'cnn_gpu[cuda12]' instead"}.get(driver // 1000, "")
        return None, (f"insufficient NVIDIA driver: it supports CUDA up to {_cuda_version(driver)}, CuPy runs on "
                      f"CUDA {_cuda_version(cuda)}; update the driver{extra}")
    try:
        count = runtime.getDeviceCount()
    except Exception as err:
        return None, f"CuPy sees no GPU ({err})"
    if count <= 0:
        return None, "CuPy sees no GPU"
    nvrtc = cupy.cuda.nvrtc
    try:
        major, minor = nvrtc.getVersion()
        supported = sorted(int(arch) for arch in nvrtc.getSupportedArchs())
    except Exception as err:
        return None, f"NVRTC, which compiles the kernels, does not load ({err}); {INSTALL_HINT}"
    for index in range(count):
        try:
            arch = device_arch(cupy, index)
        except Exception as err:
            return None, f"CuPy cannot read GPU {index}'s compute capability ({err})"
        if arch < supported[0]:
            return None, (f"NVRTC {major}.{minor} cannot compile for GPU {index} (sm_{arch}; it supports sm_"
                          f"{supported[0]} to sm_{supported[-1]}): CUDA 13 dropped sm_70 and older, so a V100 "
                          f"needs pip install 'cnn_gpu[cuda12]'")
        if arch // 10 > supported[-1] // 10:   # a cubin runs on later minor versions of its major arch only
            return None, (f"NVRTC {major}.{minor} is too old for GPU {index} (sm_{arch}; it compiles for up to sm_"
                          f"{supported[-1]}); upgrade it: pip install -U 'cnn_gpu[cuda12]' or 'cnn_gpu[cuda13]'")
    try:
        cupy.cuda.device.get_cublas_handle()
    except Exception as err:
        return None, f"cuBLAS, which runs the linear layers, does not load ({err}); {INSTALL_HINT}"
    try:   # CuPy 14 compiles only with the CUDA headers at hand (its [ctk] extra installs them)
        cupy.RawModule(code='extern "C" __global__ void cnn_gpu_probe() {}').get_function("cnn_gpu_probe")
    except Exception as err:
        return None, f"CuPy cannot compile a kernel ({err}); {INSTALL_HINT}"
    return cupy, ""


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
    kind = type(a)
    return kind is not np.ndarray and kind.__module__.startswith("cupy")


_HOST_KINDS = frozenset({np.ndarray})


def resolve(backend, *arrays) -> str:
    """The backend a call runs on. None: "cuda" for CuPy inputs, the default for NumPy inputs.

    Raises TypeError when the inputs' kind does not fit the backend (CuPy arrays on numpy/emu, or
    NumPy arrays on cuda): ops never move data between host and device behind the user's back.
    """
    kinds = set(map(type, arrays))
    kinds.discard(type(None))
    if kinds <= _HOST_KINDS:   # NumPy arrays or none (the usual call, told without a call an array)
        any_on_gpu, all_on_gpu = False, not kinds
    else:
        on_gpu = [is_cupy_array(a) for a in arrays if a is not None]
        any_on_gpu, all_on_gpu = any(on_gpu), all(on_gpu)
    if any_on_gpu and not all_on_gpu:
        raise TypeError("inputs mix CuPy and NumPy arrays; move them to one device first")
    if backend is None:
        backend = "cuda" if any_on_gpu else get_backend()
    _check_name(backend)
    if backend == "cuda":
        if not all_on_gpu:
            raise TypeError("backend 'cuda' takes CuPy arrays; got NumPy arrays (use cupy.asarray)")
    elif any_on_gpu:
        raise TypeError(f"backend {backend!r} takes NumPy arrays; got CuPy arrays (use .get())")
    if backend == "emu":
        reason = why_unavailable("emu")
        if reason:
            raise RuntimeError(f"backend 'emu' is not available: {reason}")
    elif backend == "numpy" and recording() is not None:
        raise RuntimeError("backend 'numpy' runs no kernels, so a recording (cnn_gpu.replay) would replay nothing "
                           "of it; record on 'emu' or 'cuda'")
    return backend


def array_module(backend: str):
    """numpy for "numpy", cupy for "cuda"; for "emu" numpy whose empty arrays come poisoned."""
    if backend == "cuda":
        import cupy
        return cupy
    return _EMU_NUMPY if backend == "emu" else np


def module_of(a):
    """The array module of an array: cupy for a CuPy array, numpy otherwise (the emulator's arrays
    are NumPy's: new ones made here are not poisoned)."""
    return array_module("cuda" if is_cupy_array(a) else "numpy")


def _poisoned(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    return a


class _PoisonedNumpy:
    """numpy for the emu backend, except that empty() and empty_like() fill their arrays with NaN
    (integers: their largest value) rather than leave what the allocator had, often zeros: a kernel
    that leaves part of its output unwritten then cannot pass where the expected value is 0, as it
    would not on a GPU, whose fresh memory holds old data."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float, order="C"):
        return _poisoned(np.empty(shape, dtype, order))

    @staticmethod
    def empty_like(prototype, dtype=None, order="K", subok=True, shape=None):
        return _poisoned(np.empty_like(prototype, dtype, order, subok, shape))


_EMU_NUMPY = _PoisonedNumpy()


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


# The kernel files with a float16 build (FP16 storage, FP32 math); the others take float32 and
# float64 only, and cnn_gpu.functional refuses float16 for their ops before any launch.
FLOAT16_FAMILIES = ("adaptive_pool", "augment", "batch_norm", "conv2d_depthwise", "conv2d_tc", "distance", "dropout",
                    "elementwise", "fold", "fractional_pool", "local_response_norm", "loss", "mma_rate", "optim", "pad",
                    "pool", "prelu", "reduce", "row_norm", "softmax", "unpool", "upsample")


# The kernel files of tensor-core kernels (mma.sync on TF32 or FP16 operands): built for float32
# and float16 only (float64 convolutions run the SIMT kernels) and for sm_80 and newer only (their
# launchers check the GPU first: cnn_gpu.gpu.conv_tc.supported; below sm_80 the mma helpers trap).
TENSOR_CORE_FAMILIES = ("conv2d_tc", "mma_rate")
TENSOR_CORE_MIN_ARCH = 80


def has_build(family: str, dtype, arch: str | None = None) -> bool:
    """Whether the launchers build kernels/<family>.cu for `dtype` (and for `arch`, "sm_XX", given
    one): the builds the compile gate and `cnn-gpu kernels` check."""
    dtype = np.dtype(dtype)
    if dtype == np.float16 and family not in FLOAT16_FAMILIES:
        return False
    if family in TENSOR_CORE_FAMILIES:
        return dtype != np.float64 and (arch is None or int(arch.removeprefix("sm_")) >= TENSOR_CORE_MIN_ARCH)
    return True


def dtype_options(dtype) -> tuple[str, ...]:
    """Preprocessor options that instantiate a kernel file for one dtype: REAL is the element
    type, REAL_IS_DOUBLE selects the fp64 tiling where it differs, REAL_IS_HALF the float16
    build (half_bits storage, FP32 math: kernels/common.cuh) of the FLOAT16_FAMILIES."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return ("-DREAL=float", "-DREAL_IS_DOUBLE=0")
    if dtype == np.float64:
        return ("-DREAL=double", "-DREAL_IS_DOUBLE=1")
    if dtype == np.float16:
        return ("-DREAL=half_bits", "-DREAL_IS_DOUBLE=0", "-DREAL_IS_HALF=1")
    raise TypeError(f"kernels take float16, float32 or float64 arrays, not {dtype}")


_compute_dtypes: dict = {}   # compute_dtype's answers per spelling of a dtype (np.float16, np.dtype, "float16")


def compute_dtype(dtype) -> np.dtype:
    """The type a kernel built for `dtype` computes in (its acc_t): float32 for float16, else the
    dtype itself. (Asked at most launches: found by the spelling before np.dtype() is made.)"""
    try:
        return _compute_dtypes[dtype]
    except (KeyError, TypeError):   # (TypeError: an unhashable spelling)
        pass
    known = np.dtype(dtype)
    known = np.dtype(np.float32) if known == np.float16 else known
    with contextlib.suppress(TypeError):
        _compute_dtypes[dtype] = known
    return known


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
    if not has_build(family, dtype):
        raise NotImplementedError(f"kernels/{family}.cu has no {np.dtype(dtype).name} build")
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            source = kernel_source(family)
            options = dtype_options(dtype)
            if backend == "cuda":
                import cupy
                module = _cuda_module(cupy, family, dtype, source, options)
            elif backend == "emu":
                from . import emu
                module = emu.RawModule(code=source, options=options)
            else:
                raise ValueError(f"backend {backend!r} runs no kernels")
            _modules[key] = module
    return module


class _UncheckedBuild(Exception):
    """Why the cuda backend cannot load the checked build of a kernel file."""


_unchecked_reasons: set = set()


def _cuda_module(cupy, family: str, dtype, source: str, options: tuple):
    """CuPy's module of kernels/<family>.cu for this machine's GPUs, loaded from the CUBIN that
    cnn_gpu.nvrtc compiles in its fixed child process with CuPy's libnvrtc and the backend's
    options: made as the builds whose registers, spills and SASS `cnn-gpu kernels` and the tests
    check are (the same build where that libnvrtc is the one they use). NVRTC's register
    allocation follows the heap of the process it runs in, so CuPy's compile in this process
    could spill where that build does not. Where that build cannot be made (GPUs of several
    architectures, one the checks do not cover, no child compile), CuPy compiles the source
    itself, and a warning says why, once per reason."""
    try:
        path = _checked_cubin(cupy, family, dtype, source, options)
    except _UncheckedBuild as err:
        if str(err) not in _unchecked_reasons:
            _unchecked_reasons.add(str(err))
            warnings.warn(f"CuPy compiles the kernels in this process ({err}): their registers and spills may "
                          f"differ from those `cnn-gpu kernels` reports", RuntimeWarning, stacklevel=2)
        return cupy.RawModule(code=source, options=NVRTC_OPTIONS + options)
    return cupy.RawModule(path=str(path))


CUBIN_KEPT_S = 30 * 86400   # an unused CUBIN file is removed after this long


def _checked_cubin(cupy, family: str, dtype, source: str, options: tuple) -> Path:
    """The path of the checked build's CUBIN for the GPUs' architecture, written under
    $CNN_GPU_CACHE/cubin, one file per content. CuPy loads a module from the file on each device when
    first used there, maybe much later, so another process's build (an edited kernel, another NVRTC)
    never replaces it; files unused for CUBIN_KEPT_S are removed."""
    from . import _cache, nvrtc
    archs = sorted({device_arch(cupy, index) for index in range(cupy.cuda.runtime.getDeviceCount())})
    if len(archs) != 1:
        raise _UncheckedBuild(f"GPUs of {len(archs)} architectures: sm_{', sm_'.join(map(str, archs))}")
    arch = f"sm_{archs[0]}"
    if arch not in nvrtc.ARCH_LIMITS:
        raise _UncheckedBuild(f"the checks cover {', '.join(nvrtc.ARCHS)}, not {arch}")
    compiler = nvrtc.cupy_compiler()
    if compiler is None or arch not in compiler.supported_archs:
        raise _UncheckedBuild(f"CuPy's libnvrtc does not load in cnn_gpu.nvrtc or cannot target {arch}")
    try:
        cubin, _ = nvrtc.compile_cubin(source, f"{family}.cu", arch, NVRTC_OPTIONS + options, compiler=compiler)
    except nvrtc.CompileError as err:   # CuPy's compile then raises its own error, if the source has one
        raise _UncheckedBuild(f"the child compile failed: {str(err).splitlines()[0]}") from None
    group, key = f"{family}-{np.dtype(dtype).name}-{arch}", hashlib.sha256(cubin).hexdigest()[:24]
    path = _cache.entry("cubin", group, key, "cubin")
    if path.is_file():
        with contextlib.suppress(OSError):   # in use (a read-only cache keeps its files)
            os.utime(path)
    else:
        _cache.write("cubin", group, key, cubin, suffix="cubin", replace_group=False)
        if not path.is_file():
            raise _UncheckedBuild(f"{path.parent} is not writable")
    _cache.remove_unused("cubin", "cubin", CUBIN_KEPT_S, keep=path)
    return path


_functions: dict = {}


def kernel_function(backend: str, family: str, dtype, kernel: str):
    """kernel_module(...).get_function(kernel), cached per (module, name): CuPy looks the function
    up anew on every get_function call, a cost every launch would pay. Found first under `dtype` as
    given (np.float32 or np.dtype("float32"): np.dtype() costs a launch more than the lookup)."""
    fn = _functions.get((backend, family, dtype, kernel))
    if fn is None:
        key = (backend, family, np.dtype(dtype).str, kernel)
        fn = _functions.get(key)
        if fn is None:
            fn = _functions.setdefault(key, kernel_module(backend, family, dtype).get_function(kernel))
        _functions[backend, family, dtype, kernel] = fn
    return fn


_dims_memo: dict = {}   # _dims's answers (a launcher's grids and blocks recur every step); emptied at 4096


def _dims(sizes) -> tuple:
    """A grid or block as the tuple of Python ints CuPy takes (np.int64 sizes converted); equal
    sizes have equal ints, so the answer is kept per sizes given."""
    try:
        known = _dims_memo.get(sizes)
    except TypeError:   # unhashable (a list)
        return tuple(map(int, sizes))
    if known is None:
        known = tuple(map(int, sizes))
        if len(_dims_memo) >= 4096:
            _dims_memo.clear()
        _dims_memo[sizes] = known
    return known


def launch(backend: str, family: str, dtype, kernel: str, grid, block, args, shared_mem: int = 0):
    """Launch kernels/<family>.cu:<kernel> with CuPy's calling convention on cuda or emu.

    `args` follow CuPy's rules: arrays, and NumPy scalars of exactly the declared C type
    (np.int32 for `int`, np.int64 for `long long`, the array dtype for REAL). Every argument is
    checked against the kernel's declaration first (cnn_gpu.launch_checks): a wrong dtype, layout,
    read-only output or aliasing is refused before anything runs, on every backend. Inside a
    recording (cnn_gpu.replay) the launch is also kept, with its arguments, to be replayed."""
    checked = _launch_checks.checked_args(backend, family, kernel, dtype, args)
    fn = kernel_function(backend, family, dtype, kernel)
    grid, block = _dims(grid), _dims(block)
    if min(grid) <= 0:
        return  # empty problem: nothing to launch
    if type(shared_mem) is not int:   # (most launches pass 0)
        shared_mem = int(shared_mem)
    recorder = recording()
    if recorder is not None and any(map(operator.is_not, checked, args)):
        raise ValueError(f"kernel {kernel!r}: an input was copied to C order for the launch, and a replay would read "
                         f"that copy, not the input; give C-contiguous arrays inside a recording")
    fn(grid, block, checked, shared_mem=shared_mem)
    if recorder is not None:
        recorder.entries.append(functools.partial(fn, grid, block, checked, shared_mem=shared_mem))


class LaunchMemo:
    """One launch site's last launch, for a caller that makes the same launch step after step and
    has itself made sure that its arrays are unchanged since in everything launch_checks checks
    (cnn_gpu.optim: a step on the very arrays the last step checked, their shapes, dtypes, strides
    and, where written, writeable flags compared): a launch whose array arguments are the last
    one's own objects and whose scalars have the last one's types, on the same current GPU, runs
    without launch()'s argument checks again; any other launch, and every launch inside a
    recording, is launch(). It holds the arrays weakly: a memo keeps no array alive."""
    __slots__ = ("_last",)

    def __init__(self):
        self._last = None   # (what launched, its kernel function, per argument: _argument_trace)

    def launch(self, backend: str, family: str, dtype, kernel: str, grid, block, args) -> None:
        key = (backend, family, np.dtype(dtype), kernel, tuple(map(int, grid)), tuple(map(int, block)),
               _launch_checks.current_device() if backend == "cuda" else None)   # the arrays' GPU, checked
        args = tuple(args)
        last = self._last
        if last is not None and last[0] == key and recording() is None and _same_arguments(args, last[2]):
            last[1](key[4], key[5], args, shared_mem=0)
            return
        self._last = None
        launch(backend, family, dtype, kernel, grid, block, args)
        # kept where the checks passed the arguments on as they are (none copied to C order)
        if min(key[4]) > 0 and all(isinstance(a, np.generic) or a.flags.c_contiguous for a in args):
            self._last = (key, kernel_function(backend, family, dtype, kernel), tuple(map(_argument_trace, args)))


def _argument_trace(a) -> tuple:
    """What LaunchMemo keeps of a launch argument: a scalar's type; an array's type and a weak
    reference to it."""
    return (type(a),) if isinstance(a, np.generic) else (type(a), weakref.ref(a))


def _same_arguments(args, traces) -> bool:
    """Whether `args` are the traced ones but for their scalars' values (LaunchMemo): the same
    array objects and scalars of the same types."""
    return len(args) == len(traces) and all(type(a) is trace[0] and (len(trace) == 1 or trace[1]() is a)
                                            for a, trace in zip(args, traces))


# --- recordings (cnn_gpu.replay): the device work of this thread, kept to be done again ------------

class Recorder:
    """What a recording keeps: `entries`, callables each doing one piece of its device work again,
    in order; `guards`, callables a replay asks first (a message where the replay would no longer
    do what the recorded code did, else None); `noted`, keys of what it has noted once."""
    __slots__ = ("entries", "guards", "noted")

    def __init__(self):
        self.entries, self.guards, self.noted = [], [], set()


def recording() -> Recorder | None:
    """The recording open in this thread, None outside one."""
    return _state.recording


@contextlib.contextmanager
def recording_into(recorder: Recorder | None):
    """Inside, this thread's launches and device calls go to `recorder` (None: to no recording,
    also inside an open one)."""
    outer = recording()
    _state.recording = recorder
    try:
        yield
    finally:
        _state.recording = outer


def device_call(fn, *args, takes_out: bool = False, **kwargs):
    """fn(*args, **kwargs): device work done by other code than the kernels (cuBLAS' matmul, CuPy's
    arithmetic and copies), making an array or (returning None or an array it was given) changing
    one in place; inside a recording, kept too: a replay does it again, into the same array
    (takes_out: fn is a ufunc or matmul, which a replay hands that array as out=, rather than
    copying a new one into it). A 0-d result is an array there, as CuPy's, not NumPy's scalar: a
    replay writes into it."""
    recorder = recording()
    if recorder is None:
        return fn(*args, **kwargs)
    with recording_into(None):   # work fn launches itself is redone by fn
        result = fn(*args, **kwargs)
    if isinstance(result, np.generic):
        result = np.asarray(result)
    if takes_out:
        recorder.entries.append(functools.partial(fn, *args, out=result, **kwargs))
        return result
    copyto = module_of(result).copyto

    def again():
        fresh = fn(*args, **kwargs)
        if fresh is not None and fresh is not result:
            copyto(result, fresh)
    recorder.entries.append(again)
    return result


def astype(a, dtype):
    """`a` in `dtype`: itself where it has it, else a converted copy; inside a recording, a replay
    converts into that copy again (no new array)."""
    if a.dtype == dtype:
        return a
    result = a.astype(dtype)
    recorder = recording()
    if recorder is not None:
        recorder.entries.append(functools.partial(module_of(a).copyto, result, a, casting="unsafe"))
    return result


from . import launch_checks as _launch_checks  # noqa: E402  (it reads this module's functions at call time)
