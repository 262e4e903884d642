"""Timing of the ops on every backend: the library behind `cnn-gpu bench`, the pytest-benchmark suite
in benchmarks/ and benchmarks/numpy_vs_torch.py. Modules: shapes (the shape sets), devices (where a
case runs, GPU facts), cases and training (the ops set up on a device), ops (the op table, the cases
of a shape set), timing (measuring), rows (derived columns, table, JSON, CSV), plot (--plot).

A *case* is one op on one shape; each case runs on every chosen *device*:

    numpy            cnn_gpu's NumPy backend (CPU)
    emu              the CUDA kernels on the CPU emulator (tiny shapes only: it is a checker, not a runtime)
    cuda             the CUDA kernels on the GPU through CuPy
    torch            PyTorch's CPU ops
    torch-cuda       PyTorch on the GPU (cuDNN, cuBLAS) with TF32 off in math mode fp32, allowed in tf32

Math modes (`--math fp32,tf32`): a float32 case whose work depends on the mode (the convolutions
and the training step) runs once per mode, the modes side by side, each device in that mode:
cnn_gpu under cnn_gpu.math_mode, PyTorch CUDA with allow_tf32 off or on, the model on what the
mode runs. PyTorch on the CPU has no TF32 and has fp32 rows only. Other cases run once (math "").

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
from .cases import Case, conv_case, cross_entropy_case, pool_case, softmax_case
from .devices import (DEVICES, CudaDevice, Device, EmuDevice, NumpyDevice, TorchDevice,
                      default_devices, device_unavailable, gpu_info, make_devices, set_threads, torch_or_none)
from .ops import DEFAULT_OPS, DTYPES, OPS, make_cases
from .plot import require_matplotlib, write_plot
from .rows import Row, environment, finish_rows, format_table, write_csv, write_json, write_text
from .shapes import (CPU_LAYERS, RESNET_LAYERS, SHAPE_SETS, ConvShape, LossShape, ModelShape, PoolShape,
                     ShapeSet)
from .timing import measure, run_cases
from .training import build_model, model_flops, torch_mirror, train_step_case

__all__ = ["Case", "conv_case", "cross_entropy_case", "pool_case", "softmax_case", "DEVICES", "CudaDevice", "Device",
           "EmuDevice", "NumpyDevice", "TorchDevice", "default_devices", "device_unavailable", "gpu_info",
           "make_devices", "set_threads", "torch_or_none", "DEFAULT_OPS", "DTYPES", "OPS", "make_cases",
           "require_matplotlib", "write_plot", "Row", "environment", "finish_rows", "format_table", "write_csv",
           "write_json", "write_text", "CPU_LAYERS", "RESNET_LAYERS", "SHAPE_SETS", "ConvShape", "LossShape",
           "ModelShape", "PoolShape", "ShapeSet", "measure", "run_cases", "build_model", "model_flops", "torch_mirror",
           "train_step_case"]
