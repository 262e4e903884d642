"""Timing of the ops on every backend: the library behind `cnn-gpu bench`, the pytest-benchmark suite
in benchmarks/ and benchmarks/numpy_vs_torch.py.

A *case* is one op on one shape; each case runs on every chosen *device*:

    numpy            cnn_gpu's NumPy backend (CPU)
    emu              the CUDA kernels on the CPU emulator (tiny shapes only: it is a checker, not a runtime)
    cuda             the CUDA kernels on the GPU through CuPy
    torch            PyTorch's CPU ops
    torch-cuda       PyTorch on the GPU (cuDNN) with TF32 off, a like-for-like fp32 comparison;
                     float32 also gets a "torch-cuda-tf32" row with TF32 allowed, marked as such

How a case is timed: random inputs (never zeros) in several input sets that are cycled, so no
call finds its operands still in cache; one warm-up call per input set first, so kernel compilation,
module loading and allocator growth are not timed; then repeated calls, each timed on its own (CUDA
events on the GPU, the process clock on the CPU), and the median reported.

How GFLOP/s is counted (from the shape, the same for every backend and algorithm): each
convolution pass -- forward (fprop), input gradient (dgrad), weight gradient (wgrad) and the
transposed convolution -- counts 2*N*K*P*Q*(C/groups)*R*S floating-point operations: a multiply
and an add for every filter tap of every output, padding taps included. A training step counts
3x the forward FLOPs of its convolution and linear layers (forward, dgrad, wgrad) and nothing for
the element-wise layers. Pooling counts one operation per window tap; cross entropy has no FLOP
count (it is memory bound) and shows "-".
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .backend import available_backends, cupy_or_none, why_unavailable
from .checkpoint import atomic_write
from .functional.geometry import conv_geometry, conv_transpose_geometry, pool_geometry

DEVICES = ("numpy", "emu", "cuda", "torch", "torch-cuda")
DTYPES = ("float32", "float64")

# Input sets together span at least this many bytes (more than any CPU or GPU last-level cache),
# between MIN_INPUT_SETS and MAX_INPUT_SETS of them.
ROTATION_BYTES = 128 * 2**20
MIN_INPUT_SETS, MAX_INPUT_SETS = 2, 8
# Without --repeat, each row times about this many seconds of calls (at least MIN_REPEAT calls).
TIME_BUDGET_S = 0.3
MIN_REPEAT, MAX_REPEAT = 3, 100


# --- shapes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvShape:
    """A convolution layer in the issue's notation (N, C, H, W, K, R, stride, pad); square filters."""
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    stride: int = 1
    pad: int = 0

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{self.H},{self.W},{self.K},{self.R},{self.stride},{self.pad}"

    def geometry(self):
        return conv_geometry((self.N, self.C, self.H, self.W), (self.K, self.C, self.R, self.R),
                             self.stride, self.pad)


@dataclass(frozen=True)
class PoolShape:
    N: int
    C: int
    H: int
    W: int
    kernel: int
    stride: int
    pad: int = 0

    @property
    def label(self) -> str:
        return f"{self.N},{self.C},{self.H},{self.W} k{self.kernel} s{self.stride} p{self.pad}"

    def geometry(self):
        return pool_geometry((self.N, self.C, self.H, self.W), self.kernel, self.stride, self.pad)


@dataclass(frozen=True)
class LossShape:
    N: int
    classes: int

    @property
    def label(self) -> str:
        return f"{self.N}x{self.classes}"


@dataclass(frozen=True)
class ModelShape:
    """A training step of one of cnn_gpu.models' networks ("cnn", the default, or "resnet") on a
    batch of random images."""
    model: str
    batch: int
    image_shape: tuple = (1, 8, 8)     # scikit-learn's digits, what `cnn-gpu train` uses
    classes: int = 10

    @property
    def label(self) -> str:
        return f"{self.model} {self.batch}x{'x'.join(map(str, self.image_shape))}"


@dataclass(frozen=True)
class ShapeSet:
    description: str
    conv: tuple = ()
    pool: tuple = ()
    loss: tuple = ()
    model: tuple = ()


RESNET_LAYERS = tuple(ConvShape(*dims) for dims in (
    (16, 3, 224, 224, 64, 7, 2, 3), (16, 64, 56, 56, 64, 3, 1, 1), (16, 64, 56, 56, 256, 1, 1, 0),
    (16, 256, 56, 56, 128, 1, 2, 0), (16, 128, 28, 28, 128, 3, 1, 1), (16, 256, 14, 14, 256, 3, 1, 1),
    (16, 1024, 14, 14, 512, 1, 2, 0), (16, 512, 7, 7, 512, 3, 1, 1), (16, 512, 7, 7, 2048, 1, 1, 0),
    (16, 128, 56, 56, 128, 3, 2, 1), (16, 64, 112, 112, 128, 3, 1, 1)))

# Issue 2's CPU table (N, C, H, W, K, R), stride 1, "same" padding R//2.
CPU_LAYERS = tuple(ConvShape(N, C, H, W, K, R, 1, R // 2) for N, C, H, W, K, R in (
    (32, 3, 32, 32, 32, 3), (32, 32, 16, 16, 64, 3), (64, 64, 8, 8, 128, 3), (32, 16, 28, 28, 16, 5),
    (32, 64, 14, 14, 64, 1)))

SHAPE_SETS = {
    "tiny": ShapeSet(
        "a few small shapes for the emulator and the tests",
        conv=(ConvShape(2, 3, 8, 8, 4, 3, 1, 1), ConvShape(2, 4, 7, 7, 6, 3, 2, 1)),
        pool=(PoolShape(2, 3, 8, 8, 2, 2), PoolShape(2, 3, 7, 7, 3, 2, 1)),
        loss=(LossShape(8, 10),),
        model=(ModelShape("cnn", 4),)),
    "default": ShapeSet(
        "small layers that run in well under a minute on a CPU",
        conv=(ConvShape(8, 16, 32, 32, 32, 3, 1, 1), ConvShape(8, 32, 16, 16, 64, 3, 2, 1),
              ConvShape(8, 64, 8, 8, 64, 1, 1, 0)),
        pool=(PoolShape(8, 32, 32, 32, 2, 2), PoolShape(8, 64, 16, 16, 3, 2, 1)),
        loss=(LossShape(128, 10), LossShape(64, 1000)),
        model=(ModelShape("cnn", 32), ModelShape("resnet", 32))),
    "resnet": ShapeSet(
        "the ResNet/DeepBench layers of issue 5, ResNet's stem max pool and final average pool; models on 3x32x32",
        conv=RESNET_LAYERS,
        pool=(PoolShape(16, 64, 112, 112, 3, 2, 1), PoolShape(16, 2048, 7, 7, 7, 7)),
        loss=(LossShape(256, 1000),),
        model=(ModelShape("cnn", 32, (3, 32, 32)), ModelShape("resnet", 32, (3, 32, 32)))),
    "cpu": ShapeSet(
        "issue 2's NumPy-vs-PyTorch table (stride 1, padding R//2) and the default model",
        conv=CPU_LAYERS,
        model=(ModelShape("cnn", 32),)),
}


# --- devices --------------------------------------------------------------------------------------

class Device:
    """Where a case runs: moves NumPy inputs there and times calls."""
    name = ""
    framework = "cnn"        # "cnn": cnn_gpu.functional / nn; "torch": PyTorch
    note = ""

    def asarray(self, array):
        return array

    def prepare(self):
        """Set process-wide state this device's rows need (before warm-up)."""

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

    def __init__(self, name="torch", tf32=False):
        import torch
        self.torch = torch
        self.name = name
        self.tf32 = tf32
        self.is_gpu = name != "torch"
        self.device = torch.device("cuda" if self.is_gpu else "cpu")
        if tf32:
            self.note = "TF32 tensor cores allowed (10-bit mantissa): not an fp32 result"

    def asarray(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def synchronize(self):
        if self.is_gpu:
            self.torch.cuda.synchronize()

    def prepare(self):
        """TF32 on or off for this device's calls (the flags are process-wide)."""
        if self.is_gpu:
            self.torch.backends.cuda.matmul.allow_tf32 = self.tf32
            self.torch.backends.cudnn.allow_tf32 = self.tf32

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
    return f"unknown device {name!r}; expected one of {', '.join(DEVICES)}"


def default_devices() -> list[str]:
    """numpy, plus cuda, torch and torch-cuda where present (never emu: it is far too slow)."""
    return [name for name in DEVICES if name != "emu" and not device_unavailable(name)]


def make_devices(names, dtype) -> list[Device]:
    """Device objects for `names`; torch-cuda adds a TF32 row for float32."""
    devices = []
    for name in names:
        reason = device_unavailable(name)
        if reason:
            raise ValueError(f"device {name!r} is not available: {reason}")
        if name == "numpy":
            devices.append(NumpyDevice())
        elif name == "emu":
            devices.append(EmuDevice())
        elif name == "cuda":
            devices.append(CudaDevice())
        elif name == "torch":
            devices.append(TorchDevice("torch"))
        else:
            devices.append(TorchDevice("torch-cuda"))
            if np.dtype(dtype) == np.float32:
                devices.append(TorchDevice("torch-cuda-tf32", tf32=True))
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

# FP32 and FP64 lanes per SM by compute capability (NVIDIA's CUDA C programming guide, "arithmetic
# instruction throughput"); an FMA is 2 FLOPs.
_FP32_LANES = {(7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
_FP64_LANES = {(6, 0): 32, (7, 0): 32, (8, 0): 32, (9, 0): 64, (10, 0): 64}
CUDA_DEV_ATTR_CLOCK_RATE = 13   # cudaDevAttrClockRate


def gpu_info() -> dict:
    """Name, compute capability, SM count, clock and peak GFLOP/s of CuPy's current GPU ({} without one)."""
    cupy = cupy_or_none()
    if cupy is None:
        return {}
    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    major, minor = int(props["major"]), int(props["minor"])
    sms = int(props["multiProcessorCount"])
    # kHz; CUDA 13 dropped clockRate from the properties, the attribute query still has it
    clock_khz = int(props.get("clockRate", 0))
    if not clock_khz:
        try:
            clock_khz = int(cupy.cuda.runtime.deviceGetAttribute(CUDA_DEV_ATTR_CLOCK_RATE, device.id))
        except Exception:  # unknown clock: no peak figures
            clock_khz = 0
    fp32 = _FP32_LANES.get((major, minor), 128)
    fp64 = _FP64_LANES.get((major, minor), fp32 // 64)
    info = {"name": name, "compute_capability": f"{major}.{minor}", "sms": sms, "clock_mhz": clock_khz / 1e3,
            "memory_gib": round(int(props["totalGlobalMem"]) / 2**30, 1)}
    if clock_khz:
        info["peak_gflops"] = {"float32": 2 * fp32 * sms * clock_khz / 1e6,
                               "float64": 2 * fp64 * sms * clock_khz / 1e6}
    return info


# --- ops ------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One op on one shape: `setup(device, dtype, rng)` -> (fn, input_sets) ready to time."""
    op: str
    shape: object
    flops: int | None
    setup: object

    @property
    def label(self) -> str:
        return self.shape.label


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _input_sets(device, rng, make_numpy_set):
    """Several random input sets (make_numpy_set(rng) -> tuple of NumPy arrays) on `device`,
    enough of them that their bytes exceed ROTATION_BYTES."""
    first = make_numpy_set(rng)
    nbytes = sum(a.nbytes for a in first if isinstance(a, np.ndarray))
    count = min(MAX_INPUT_SETS, max(MIN_INPUT_SETS, math.ceil(ROTATION_BYTES / max(nbytes, 1))))
    sets = [first] + [make_numpy_set(rng) for _ in range(count - 1)]
    return [tuple(device.asarray(a) if isinstance(a, np.ndarray) else a for a in s) for s in sets]


def _F():
    from . import functional
    return functional


def _torch_conv_backward(torch, g, dy, x, w, mask):
    """PyTorch's backward of one convolution, only the gradients `mask` (input, weight, bias) asks for."""
    return torch.ops.aten.convolution_backward(dy, x, w, [w.shape[0]] if mask[2] else None, list(g.stride),
                                               list(g.padding), list(g.dilation), False, [0, 0], g.groups,
                                               list(mask))


def conv_case(op: str, shape: ConvShape) -> Case:
    """The convolution passes on one layer shape. Every call gets (x, w, b, bt, dy): input, filter,
    the conv's bias (K), the transposed conv's bias (C) and an upstream gradient of the output's shape.
    conv_transpose2d maps the conv's output shape back to its input shape (dy -> an x-shaped result)."""
    g = shape.geometry()
    conv_args = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
    output_padding = tuple(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1) for size, out, s, p, d, k in
                           zip((g.H, g.W), (g.P, g.Q), g.stride, g.padding, g.dilation, (g.R, g.S)))

    def torch_call(torch):
        tf = torch.nn.functional

        def backward(x, w, dy, mask):
            return _torch_conv_backward(torch, g, dy, x, w, mask)
        return {
            "conv2d": lambda x, w, b, bt, dy: tf.conv2d(x, w, b, **conv_args),
            "conv2d_dgrad": lambda x, w, b, bt, dy: backward(x, w, dy, (True, False, False)),
            "conv2d_wgrad": lambda x, w, b, bt, dy: backward(x, w, dy, (False, True, False)),
            "conv2d_fwd_bwd": lambda x, w, b, bt, dy: (tf.conv2d(x, w, b, **conv_args),
                                                       backward(x, w, dy, (True, True, True))),
            "conv_transpose2d": lambda x, w, b, bt, dy: tf.conv_transpose2d(
                dy, w, bt, output_padding=output_padding, **conv_args),
        }[op]

    def cnn_call(be):
        F = _F()
        return {
            "conv2d": lambda x, w, b, bt, dy: F.conv2d(x, w, b, backend=be, **conv_args),
            "conv2d_dgrad": lambda x, w, b, bt, dy: _cnn_dgrad(F, be, dy, w, g, output_padding),
            "conv2d_wgrad": lambda x, w, b, bt, dy: _cnn_wgrad(be, dy, x, g),
            "conv2d_fwd_bwd": lambda x, w, b, bt, dy: (F.conv2d(x, w, b, backend=be, **conv_args),
                                                       F.conv2d_backward(dy, x, w, bias=True, backend=be,
                                                                         **conv_args)),
            "conv_transpose2d": lambda x, w, b, bt, dy: F.conv_transpose2d(
                dy, w, bt, output_padding=output_padding, backend=be, **conv_args),
        }[op]

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: tuple(
            _random(rng, s, dtype) for s in (g.x_shape, g.w_shape, (g.K,), (g.C,), g.y_shape)))
        if device.framework == "cnn":
            return cnn_call(device.backend), sets
        torch = device.torch
        fn = torch_call(torch)

        def run(*inputs):
            with torch.no_grad():
                return fn(*inputs)
        return run, sets

    return Case(op, shape, 3 * g.flops if op == "conv2d_fwd_bwd" else g.flops, setup)


def _cnn_dgrad(F, be, dy, w, g, output_padding):
    """The input gradient alone: the kernel backends' dgrad pass, and on NumPy the transposed
    convolution, which is the same computation (dx = conv_transpose2d(dy, w))."""
    if be == "numpy":
        return F.conv_transpose2d(dy, w, None, g.stride, g.padding, output_padding, g.dilation, g.groups,
                                  backend=be)
    from .gpu import conv
    return conv.dgrad(be, dy, w, g)


def _cnn_wgrad(be, dy, x, g):
    """The weight gradient alone: the kernel backends' wgrad pass; on NumPy the function
    conv2d_backward computes dweight with (the public op also computes dx)."""
    if be == "numpy":
        from .functional import conv
        return conv._weight_grad(dy, x, g)
    from .gpu import conv
    return conv.wgrad(be, dy, x, g)


def pool_case(op: str, shape: PoolShape) -> Case:
    """Max/avg pooling forward or backward; every call gets (x, dy) plus, for the max backward,
    the indices its forward produced (computed once in setup)."""
    g = shape.geometry()
    kernel, stride, padding, dilation = (list(v) for v in (g.kernel, g.stride, g.padding, g.dilation))
    args = dict(stride=g.stride, padding=g.padding)

    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (_random(rng, g.x_shape, dtype), _random(rng, g.y_shape, dtype)))
        if device.framework == "torch":
            aten = device.torch.ops.aten

            def max_pool2d(x, dy):
                return aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, False)

            def max_pool2d_backward(x, dy, indices):
                return aten.max_pool2d_with_indices_backward(dy, x, kernel, stride, padding, dilation, False, indices)

            def avg_pool2d(x, dy):
                return aten.avg_pool2d(x, kernel, stride, padding, False, True)

            def avg_pool2d_backward(x, dy):
                return aten.avg_pool2d_backward(dy, x, kernel, stride, padding, False, True, None)
        else:
            F, be = _F(), device.backend

            def max_pool2d(x, dy):
                return F.max_pool2d(x, g.kernel, dilation=g.dilation, backend=be, **args)

            def max_pool2d_backward(x, dy, indices):
                return F.max_pool2d_backward(dy, indices, x.shape, g.kernel, dilation=g.dilation, backend=be, **args)

            def avg_pool2d(x, dy):
                return F.avg_pool2d(x, g.kernel, backend=be, **args)

            def avg_pool2d_backward(x, dy):
                return F.avg_pool2d_backward(dy, x.shape, g.kernel, backend=be, **args)
        if op == "max_pool2d_backward":
            sets = [(x, dy, max_pool2d(x, dy)[1]) for x, dy in sets]
        calls = dict(max_pool2d=max_pool2d, max_pool2d_backward=max_pool2d_backward, avg_pool2d=avg_pool2d,
                     avg_pool2d_backward=avg_pool2d_backward)
        return calls[op], sets

    return Case(op, shape, g.N * g.C * g.P * g.Q * g.kernel[0] * g.kernel[1], setup)


def cross_entropy_case(shape: LossShape) -> Case:
    """Loss and its gradient together (F.cross_entropy returns both)."""
    def setup(device, dtype, rng):
        sets = _input_sets(device, rng, lambda rng: (_random(rng, (shape.N, shape.classes), dtype),
                                                     rng.integers(0, shape.classes, shape.N).astype(np.int64)))
        if device.framework == "torch":
            torch = device.torch

            def run(logits, labels):
                logits = logits.detach().requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                return torch.autograd.grad(loss, logits)
            return run, sets
        F = _F()
        return (lambda logits, labels: F.cross_entropy(logits, labels, backend=device.backend)), sets

    return Case("cross_entropy", shape, None, setup)


def build_model(shape: ModelShape, dtype, seed: int = 0):
    from . import models
    return models.build(shape.model, shape.image_shape, shape.classes, dtype=dtype, rng=np.random.default_rng(seed))


def model_flops(model, input_shape) -> int | None:
    """2 x multiply-adds of the conv and linear layers of one forward pass of `model` on a batch of
    shape `input_shape`, found by walking its layers (None for a layer type it does not know)."""
    from . import nn

    def walk(module, shape):
        if isinstance(module, nn.Sequential):
            total = 0
            for layer in module:
                flops, shape = walk(layer, shape)
                if flops is None:
                    return None, shape
                total += flops
            return total, shape
        if isinstance(module, nn.Residual):
            flops, out = walk(module.block, shape)
            if module.shortcut is not None and flops is not None:
                extra, _ = walk(module.shortcut, shape)
                flops = None if extra is None else flops + extra
            return flops, out
        if isinstance(module, nn.Conv2d):
            g = conv_geometry(shape, module.weight.shape, module.stride, module.padding, module.dilation,
                              module.groups)
            return g.flops, g.y_shape
        if isinstance(module, nn.ConvTranspose2d):
            g = conv_transpose_geometry(shape, module.weight.shape, module.stride, module.padding,
                                        module.output_padding, module.dilation, module.groups)
            return g.flops, g.x_shape
        if isinstance(module, nn.Linear):
            return 2 * int(np.prod(shape[:-1])) * module.in_features * module.out_features, \
                (*shape[:-1], module.out_features)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            g = pool_geometry(shape, module.kernel_size, module.stride, module.padding,
                              getattr(module, "dilation", 1), module.ceil_mode)
            return 0, g.y_shape
        if isinstance(module, nn.Flatten):
            start = module.start_dim % len(shape)
            end = module.end_dim % len(shape)
            return 0, (*shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
        if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)):
            return 0, shape
        return None, shape

    return walk(model, tuple(input_shape))[0]


def torch_mirror(model, torch):
    """The same network as a torch.nn module with the same parameter values (state_dict names
    follow PyTorch's, so they load directly)."""
    from . import nn
    tnn = torch.nn

    class TorchResidual(tnn.Module):
        def __init__(self, block, shortcut):
            super().__init__()
            self.block = block
            self.shortcut = shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    def convert(m):
        if isinstance(m, nn.Sequential):
            return tnn.Sequential(*(convert(layer) for layer in m))
        if isinstance(m, nn.Residual):
            return TorchResidual(convert(m.block), None if m.shortcut is None else convert(m.shortcut))
        if isinstance(m, nn.Conv2d):
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, bias=m.bias is not None)
        if isinstance(m, nn.ConvTranspose2d):
            return tnn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                       m.output_padding, m.groups, bias=m.bias is not None, dilation=m.dilation)
        if isinstance(m, nn.Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.MaxPool2d):
            return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
        if isinstance(m, nn.Flatten):
            return tnn.Flatten(m.start_dim, m.end_dim)
        if isinstance(m, nn.LeakyReLU):
            return tnn.LeakyReLU(m.negative_slope)
        for ours, theirs in ((nn.ReLU, tnn.ReLU), (nn.Sigmoid, tnn.Sigmoid), (nn.Tanh, tnn.Tanh)):
            if isinstance(m, ours):
                return theirs()
        raise TypeError(f"no PyTorch counterpart for layer {type(m).__name__}")

    mirror = convert(model)
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(model.parameters()[0].dtype)]
    mirror = mirror.to(dtype)
    mirror.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value))
                            for name, value in model.state_dict().items()})
    return mirror


def train_step_case(shape: ModelShape) -> Case:
    """Forward, loss, backward and an SGD (momentum 0.9) step of a model on one batch."""
    batch_shape = (shape.batch, *shape.image_shape)
    forward_flops = model_flops(build_model(shape, np.float32), batch_shape)

    def setup(device, dtype, rng):
        from . import nn, optim
        model = build_model(shape, dtype)
        sets = _input_sets(device, rng, lambda rng: (_random(rng, batch_shape, dtype),
                                                     rng.integers(0, shape.classes, shape.batch).astype(np.int64)))
        if device.framework == "torch":
            torch = device.torch
            net = torch_mirror(model, torch).to(device.device)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()

            def run(x, labels):
                optimizer.zero_grad(set_to_none=False)
                loss = loss_fn(net(x), labels)
                loss.backward()
                optimizer.step()
            return run, sets
        model.to(device.backend)
        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        loss_fn.to(device.backend)

        def run(x, labels):
            optimizer.zero_grad()
            loss_fn(model(x), labels)
            model.backward(loss_fn.backward())
            optimizer.step()
        return run, sets

    return Case("train_step", shape, None if forward_flops is None else 3 * forward_flops, setup)


# op name -> (kind of shape it takes, case builder, one-line description)
OPS = {
    "conv2d": ("conv", lambda s: conv_case("conv2d", s), "convolution forward (fprop), with bias"),
    "conv2d_dgrad": ("conv", lambda s: conv_case("conv2d_dgrad", s), "input gradient (dgrad)"),
    "conv2d_wgrad": ("conv", lambda s: conv_case("conv2d_wgrad", s), "weight gradient (wgrad)"),
    "conv2d_fwd_bwd": ("conv", lambda s: conv_case("conv2d_fwd_bwd", s),
                       "forward + full backward (dx, dw, db); counted as 3 passes"),
    "conv_transpose2d": ("conv", lambda s: conv_case("conv_transpose2d", s),
                         "transposed convolution from the conv's output shape back to its input shape, with bias"),
    "max_pool2d": ("pool", lambda s: pool_case("max_pool2d", s), "max pooling forward (values and indices)"),
    "max_pool2d_backward": ("pool", lambda s: pool_case("max_pool2d_backward", s), "max pooling backward"),
    "avg_pool2d": ("pool", lambda s: pool_case("avg_pool2d", s), "average pooling forward"),
    "avg_pool2d_backward": ("pool", lambda s: pool_case("avg_pool2d_backward", s), "average pooling backward"),
    "cross_entropy": ("loss", cross_entropy_case, "softmax cross entropy, loss and gradient"),
    "train_step": ("model", train_step_case, "forward, loss, backward and SGD step of a model"),
}
# conv2d_fwd_bwd repeats fprop + dgrad + wgrad, so it runs only when asked for (numpy_vs_torch.py).
DEFAULT_OPS = tuple(op for op in OPS if op != "conv2d_fwd_bwd")


def make_cases(shape_set: str, ops=DEFAULT_OPS) -> list[Case]:
    """Every (op, shape) of the shape set, op by op in the order of `ops`."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {shape_set!r}; expected one of {', '.join(SHAPE_SETS)}")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; expected some of {', '.join(OPS)}")
    shapes = SHAPE_SETS[shape_set]
    cases = []
    for op in ops:
        kind, build, _ = OPS[op]
        cases += [build(shape) for shape in getattr(shapes, kind)]
    return cases


# --- measuring ------------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    shape: str
    device: str
    dtype: str
    median_ms: float
    repeats: int
    gflops: float | None = None
    speedup_vs_numpy: float | None = None
    pct_peak: float | None = None
    pct_cudnn: float | None = None
    note: str = ""
    flops: int | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return asdict(self)


def measure(device: Device, fn, input_sets, repeat: int | None = None) -> tuple[float, int]:
    """(median seconds per call, number of timed calls): one warm-up call per input set, then
    `repeat` timed calls (by default as many as fit in TIME_BUDGET_S, at least MIN_REPEAT)."""
    for inputs in input_sets:
        fn(*inputs)
    device.synchronize()
    if repeat is None:
        probe = statistics.median(device.time_calls(fn, input_sets, 1))
        repeat = int(min(MAX_REPEAT, max(MIN_REPEAT, TIME_BUDGET_S / max(probe, 1e-9))))
    times = device.time_calls(fn, input_sets, repeat)
    return statistics.median(times), repeat


def run_cases(cases, devices, dtype="float32", repeat=None, seed=0, progress=True):
    """Yield a Row for every case on every device (cases outermost, so an interrupted run has whole
    cases). Derived columns (speed-up, % of peak and of cuDNN) are filled by `finish_rows`."""
    from tqdm import tqdm
    dtype = np.dtype(dtype)
    with tqdm(total=len(cases) * len(devices), desc="bench", unit="row", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for case in cases:
            for device in devices:
                bar.set_postfix_str(f"{case.op} {case.label} {device.name}")
                device.prepare()
                fn, input_sets = case.setup(device, dtype, np.random.default_rng(seed))
                seconds, count = measure(device, fn, input_sets, repeat)
                del fn, input_sets  # free (device) memory before the next case allocates its inputs
                gflops = case.flops / seconds / 1e9 if case.flops else None
                yield Row(case.op, case.label, device.name, dtype.name, seconds * 1e3, count, gflops,
                          note=device.note, flops=case.flops)
                bar.update()


def finish_rows(rows, peak_gflops=None):
    """Fill speed-up over numpy, % of the GPU's peak and % of cuDNN (fp32, TF32 off) in place."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row.op, row.shape), {})[row.device] = row
    for row in rows:
        same_case = by_case[(row.op, row.shape)]
        numpy_row = same_case.get("numpy")
        if numpy_row is not None and row.device != "numpy":
            row.speedup_vs_numpy = numpy_row.median_ms / row.median_ms
        gpu = row.device in ("cuda", "torch-cuda", "torch-cuda-tf32")
        if gpu and peak_gflops and row.gflops is not None:
            row.pct_peak = 100 * row.gflops / peak_gflops[row.dtype]
        cudnn = same_case.get("torch-cuda")
        if row.device == "cuda" and cudnn is not None:
            row.pct_cudnn = 100 * cudnn.median_ms / row.median_ms
    return rows


# --- output ---------------------------------------------------------------------------------------

COLUMNS = (("op", "op"), ("shape", "shape"), ("device", "device"), ("median_ms", "median ms"),
           ("gflops", "GFLOP/s"), ("speedup_vs_numpy", "vs numpy"), ("pct_peak", "% peak"),
           ("pct_cudnn", "% cuDNN"))


def _cell(key, value) -> str:
    if value is None:
        return "-"
    if key == "median_ms":
        return f"{value:.4g}" if value < 1000 else f"{value:.0f}"
    if key == "gflops":
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    if key == "speedup_vs_numpy":
        return f"{value:.2f}x"
    if key in ("pct_peak", "pct_cudnn"):
        return f"{value:.1f}%"
    return str(value)


def format_table(rows, markdown=False) -> str:
    """The rows as an aligned text table (or a markdown table); columns that are empty in every row
    (e.g. the GPU columns on a CPU-only machine) are left out."""
    columns = [(key, title) for key, title in COLUMNS
               if key in ("op", "shape", "device", "median_ms") or any(getattr(r, key) is not None for r in rows)]
    table = [[title for _, title in columns]]
    table += [[_cell(key, getattr(row, key)) for key, _ in columns] for row in rows]
    notes = sorted({f"{row.device}: {row.note}" for row in rows if row.note})
    numeric = {"median_ms", "gflops", "speedup_vs_numpy", "pct_peak", "pct_cudnn"}
    if markdown:
        lines = ["| " + " | ".join(table[0]) + " |",
                 "|" + "|".join("---:" if key in numeric else "---" for key, _ in columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    else:
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        lines = ["  ".join(cell.rjust(w) if key in numeric else cell.ljust(w)
                           for cell, w, (key, _) in zip(r, widths, columns)).rstrip() for r in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + notes) if notes else "\n".join(lines)


def write_json(rows, path, meta: dict) -> None:
    import json
    write_text(path, json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")


def write_csv(rows, path) -> None:
    import csv
    import io
    out = io.StringIO()
    fields = list(Row.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.as_dict().items()})
    write_text(path, out.getvalue())


def write_text(path, text: str) -> None:
    """Write atomically: a crash leaves the old file or none, never half of one."""
    atomic_write(path, lambda f: f.write(text.encode()))


def require_matplotlib():
    """matplotlib.pyplot with the file-only Agg backend; ImportError with the fix when absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed: pip install 'cnn_gpu[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


def write_plot(rows, path, title="") -> None:
    """Grouped horizontal bars: time per (op, shape) for each device, log axis."""
    plt = require_matplotlib()
    cases = list(dict.fromkeys((r.op, r.shape) for r in rows))
    devices = list(dict.fromkeys(r.device for r in rows))
    times = {(r.op, r.shape, r.device): r.median_ms for r in rows}
    height = 0.8 / len(devices)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(cases) * len(devices)))
    for i, device in enumerate(devices):
        ys = [n + i * height for n, case in enumerate(cases) if (*case, device) in times]
        xs = [times[(*case, device)] for case in cases if (*case, device) in times]
        ax.barh(ys, xs, height=height, label=device)
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(cases))])
    ax.set_yticklabels([f"{op}  {shape}" for op, shape in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per call (ms, log scale; shorter is faster)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def environment() -> dict:
    """Versions and machine facts stored with the results."""
    import platform
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    torch = torch_or_none()
    if torch is not None:
        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_info
        meta["blas"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads")} for p in threadpool_info()]
    except ImportError:
        pass
    gpu = gpu_info()
    if gpu:
        meta["gpu"] = gpu
    return meta
