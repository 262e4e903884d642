"""Where a case runs (numpy, emu, cuda, torch, torch-cuda, or model:SPEC, which runs nothing: see
modeled.py): moving inputs there, timing calls, and the facts of the GPU CuPy sees."""
from __future__ import annotations

import os
import time

import numpy as np

from ..backend import available_backends, why_unavailable
from ..roofline.specs import FP16_PER_TF32, TF32_FMAS_PER_SM_CLOCK, gpu_properties, lanes_per_sm

DEVICES = ("numpy", "emu", "cuda", "torch", "torch-cuda")


class Device:
    """Where a case runs: moves NumPy inputs there and times calls."""
    name = ""
    framework = "cnn"        # "cnn": cnn_gpu.functional / nn; "torch": PyTorch
    note = ""
    modeled = False          # True: rows come from model_row(case, dtype), nothing is timed

    @property
    def skipped(self) -> dict:
        """op -> why this device has no rows of it (printed under the table)."""
        return self.__dict__.setdefault("_skipped", {})

    def asarray(self, array):
        return array

    def prepare(self, math: str = "fp32"):
        """Set process-wide state this device's rows in math mode `math` need (before warm-up)."""

    def math_unsupported(self, math: str) -> str:
        """Why this device has no rows in math mode `math` ("" when it has)."""
        return ""

    def synchronize(self):
        pass

    def time_calls(self, fn, input_sets, count):
        """Seconds of each of `count` calls of fn(*inputs), cycling through input_sets."""
        times = []
        for i in range(count):
            inputs = input_sets[i % len(input_sets)]
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
        return times


class NumpyDevice(Device):
    name = "numpy"
    backend = "numpy"


class EmuDevice(Device):
    name = "emu"
    backend = "emu"
    note = "emulator on the CPU: a correctness tool, its times say nothing about a GPU"


class CudaDevice(Device):
    name = "cuda"
    backend = "cuda"

    def __init__(self):
        import cupy
        self.cupy = cupy

    def asarray(self, array):
        return self.cupy.asarray(array)

    def synchronize(self):
        self.cupy.cuda.get_current_stream().synchronize()

    def time_calls(self, fn, input_sets, count):
        return _event_times(fn, input_sets, count, self.cupy.cuda.Event, self.synchronize,
                            lambda start, stop: self.cupy.cuda.get_elapsed_time(start, stop) / 1e3)


class TorchDevice(Device):
    framework = "torch"

    def __init__(self, name="torch"):
        import torch
        self.torch = torch
        self.name = name
        self.is_gpu = name != "torch"
        self.device = torch.device("cuda" if self.is_gpu else "cpu")

    def asarray(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def synchronize(self):
        if self.is_gpu:
            self.torch.cuda.synchronize()

    def prepare(self, math: str = "fp32"):
        """TF32 allowed in cuDNN and cuBLAS for math mode "tf32", off for "fp32" (the flags are
        process-wide)."""
        if self.is_gpu:
            self.torch.backends.cuda.matmul.allow_tf32 = math == "tf32"
            self.torch.backends.cudnn.allow_tf32 = math == "tf32"

    def math_unsupported(self, math: str) -> str:
        if math == "tf32" and not self.is_gpu:
            return "PyTorch has no TF32 mode on the CPU (its CPU convolutions are FP32)"
        return ""

    def time_calls(self, fn, input_sets, count):
        if not self.is_gpu:
            return super().time_calls(fn, input_sets, count)
        return _event_times(fn, input_sets, count, lambda: self.torch.cuda.Event(enable_timing=True),
                            self.synchronize, lambda start, stop: start.elapsed_time(stop) / 1e3)


def _event_times(fn, input_sets, count, make_event, synchronize, elapsed_s):
    """GPU time of each call between two events on the current stream (no host round trip between
    calls, so launch latency overlaps the previous call as it does in a real training loop)."""
    events = [(make_event(), make_event()) for _ in range(count)]
    synchronize()
    for i, (start, stop) in enumerate(events):
        start.record()
        fn(*input_sets[i % len(input_sets)])
        stop.record()
    synchronize()
    return [elapsed_s(start, stop) for start, stop in events]


def torch_or_none():
    try:
        import torch
        return torch
    except Exception:  # torch absent or broken: the torch rows are skipped
        return None


def device_unavailable(name: str) -> str:
    """Why device `name` cannot run here ("" when it can)."""
    if name in ("numpy", "emu", "cuda"):
        if name in available_backends():
            return ""
        return why_unavailable(name) or f"backend {name!r} is not available"
    if name in ("torch", "torch-cuda"):
        torch = torch_or_none()
        if torch is None:
            return "PyTorch is not installed (pip install torch)"
        if name == "torch-cuda" and not torch.cuda.is_available():
            return "PyTorch sees no CUDA GPU"
        return ""
    from .modeled import PREFIX, is_model
    if is_model(name):
        from .. import roofline
        try:
            roofline.spec(name[len(PREFIX):])
        except ValueError as err:
            return str(err)
        return ""
    return f"unknown device {name!r}; expected one of {', '.join(DEVICES)} or model:SPEC (model:list lists them)"


def default_devices() -> list[str]:
    """numpy, plus cuda, torch and torch-cuda where present (never emu: it is far too slow)."""
    return [name for name in DEVICES if name != "emu" and not device_unavailable(name)]


def make_devices(names) -> list[Device]:
    """Device objects for `names`."""
    from .modeled import PREFIX, ModelDevice, is_model
    devices = []
    for name in names:
        reason = device_unavailable(name)
        if reason:
            raise ValueError(f"device {name!r} is not available: {reason}")
        if is_model(name):
            devices.append(ModelDevice(name[len(PREFIX):]))
        elif name == "numpy":
            devices.append(NumpyDevice())
        elif name == "emu":
            devices.append(EmuDevice())
        elif name == "cuda":
            devices.append(CudaDevice())
        elif name == "torch":
            devices.append(TorchDevice("torch"))
        else:
            devices.append(TorchDevice("torch-cuda"))
    return devices


def set_threads(threads: int) -> None:
    """Limit NumPy's BLAS (and OpenMP) and PyTorch to `threads` threads. The BLAS limit is set
    through threadpoolctl when it is installed; scripts that must be exact set OPENBLAS_NUM_THREADS
    etc. before NumPy is first imported (see benchmarks/numpy_vs_torch.py)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # for subprocesses and libraries loaded later
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)


# --- GPU peak -------------------------------------------------------------------------------------

def gpu_info() -> dict:
    """Name, compute capability, SM count, clock and peak GFLOP/s of CuPy's current GPU ({} without
    one): float32 and float64 FMA peaks, and the dense TF32 ("tf32") and FP16 ("float16") tensor peaks
    where they are known."""
    props = gpu_properties()
    if not props:
        return {}
    major, minor, sms, clock_khz = props["major"], props["minor"], props["sms"], props["clock_khz"]
    fp32, fp64 = lanes_per_sm(major, minor)   # an FMA is 2 FLOPs
    info = {"name": props["name"], "compute_capability": f"{major}.{minor}", "sms": sms, "clock_mhz": clock_khz / 1e3,
            "memory_gib": round(props["memory_bytes"] / 2**30, 1)}
    if clock_khz:   # unknown clock: no peak figures
        info["peak_gflops"] = {"float32": 2 * fp32 * sms * clock_khz / 1e6,
                               "float64": 2 * fp64 * sms * clock_khz / 1e6}
        tf32 = TF32_FMAS_PER_SM_CLOCK.get((major, minor))
        if tf32:
            info["peak_gflops"]["tf32"] = 2 * tf32 * sms * clock_khz / 1e6
            info["peak_gflops"]["float16"] = FP16_PER_TF32 * info["peak_gflops"]["tf32"]
    return info
