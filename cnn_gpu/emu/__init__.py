"""Run the project's CUDA kernels on the CPU: g++ + a CUDA-emulation header + one fiber per thread.

    mod = cnn_gpu.emu.RawModule(path="kernels/x.cu", options=("-DREAL=float",))
    kernel = mod.get_function("saxpy")
    kernel((blocks,), (256,), (x, y, np.float32(2.0), np.int32(n)))      # like cupy.RawModule
    kernel(grid, block, args, schedule="reverse", guard=True, race=True)  # checking options
    with cnn_gpu.emu.checking(schedule="random", seed=1): ...             # defaults for a block

Checking options: schedule ("forward" | "reverse" | "random", + seed), poison (NaN in shared
memory before each block; on by default), guard (on by default: array arguments end right before
an inaccessible page, so reads and writes past their end fault; guarded dynamic shared memory;
guard=False turns it off), race (instrumented build: unordered accesses of two threads to one byte
of shared memory or of an argument, blocks ordered only by a __threadfence and an atomic;
race="shared": of shared memory only), timeout (watchdog
seconds; 60 or $CNN_GPU_EMU_TIMEOUT).
Faults inside a kernel raise `KernelFault` (kernel, block, thread, source line); Ctrl-C ends a
launch within about 0.1 s (KeyboardInterrupt); arguments that do not match the kernel's parameters
raise TypeError. `with profiling() as prof:` records the memory accesses of the launches inside it
(see _profile.py). Kernels see __CUDA_ARCH__ 800, or $CNN_GPU_EMU_ARCH, or what an -arch=sm_XX
option says; cp.async copies are poisoned (NaN) until waited for (cuda_emu.h). Compiled modules
are cached in $CNN_GPU_CACHE/emu (default ~/.cache/cnn_gpu/emu); damaged entries are rebuilt.
x86-64 Linux with g++ only.
"""
from ._build import CompileError
from ._checking import SCHEDULES, checking
from ._module import Kernel, KernelFault, RawModule
from ._profile import Profile, SampledLaunch, profiling

__all__ = ["RawModule", "Kernel", "KernelFault", "CompileError", "checking", "SCHEDULES", "profiling", "Profile",
           "SampledLaunch"]
