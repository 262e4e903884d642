"""Run the project's CUDA kernels on the CPU: g++ + a CUDA-emulation header + one fiber per thread.

    mod = cnn_gpu.emu.RawModule(path="kernels/x.cu", options=("-DREAL=float",))
    kernel = mod.get_function("saxpy")
    kernel((blocks,), (256,), (x, y, np.float32(2.0), np.int32(n)))      # like cupy.RawModule
    kernel(grid, block, args, schedule="reverse", guard=True, race=True)  # checking options
    with cnn_gpu.emu.checking(schedule="random", seed=1): ...             # defaults for a block

Checking options: schedule ("forward" | "reverse" | "random", + seed), poison (NaN in shared
memory before each block; on by default), guard (array arguments against inaccessible pages,
guarded dynamic shared memory), race (instrumented build: unordered accesses of two threads to
one word of shared memory or of an argument), timeout (watchdog seconds; 60 or
$CNN_GPU_EMU_TIMEOUT). Faults inside a kernel raise `KernelFault` (kernel, block, thread, source
line); arguments that do not match the kernel's parameters raise TypeError. Compiled modules are
cached in $CNN_GPU_CACHE/emu (default ~/.cache/cnn_gpu/emu). x86-64 Linux with g++ only.
"""
from ._build import CompileError
from ._checking import SCHEDULES, checking
from ._module import Kernel, KernelFault, RawModule

__all__ = ["RawModule", "Kernel", "KernelFault", "CompileError", "checking", "SCHEDULES"]
