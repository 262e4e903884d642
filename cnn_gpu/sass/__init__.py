"""The SASS report: what a GPU would issue, computed without a GPU.

Each kernels/*.cu file is compiled to a CUBIN exactly as the cuda backend compiles it (NVRTC,
backend.NVRTC_OPTIONS + backend.dtype_options, `-arch=sm_XX`), disassembled by nvdisasm (pip
nvidia-cuda-nvdisasm), and each kernel's hot loop is measured: the steady-state path through
it (cnn_gpu.sass.loops states the rules), its instruction mix and the FMA issue ceiling
(cnn_gpu.sass.mix states the classes and the ceiling rule). SASS counts are deterministic for a
given source and toolchain, so they are cached on disk ($CNN_GPU_CACHE/sass or
~/.cache/cnn_gpu/sass) and tests may assert them.

Public API (what `cnn-gpu kernels --sass` and the roofline model use):
- kernel_rows(family, dtype, arch) -> list[dict]: one row per kernel of kernels/<family>.cu,
  with family, kernel, arch, dtype, registers, stack_bytes, hot_loop, instructions, fma (ffma +
  dfma + hfma2), ffma, dfma, hfma2, mma, fp_other, lds, sts, ldg, stg, ldgsts, local, ldc,
  atomic, other_memory, bar, branches, integer, other (the classes add up to instructions),
  lds_bits / sts_bits / ldg_bits / stg_bits / ldgsts_bits (access width of each, in path
  order), fma_share (0..1), local_memory_loop, local_memory (LDL + STL in the whole kernel),
  kernel_instructions and issue_ceiling (0..1).
- hot_loop_mix(function, dtype, arch) -> dict: the same fields (less the compile's) for one
  Function of disassemble(cubin, arch), e.g. of a CUBIN from cnn_gpu.nvrtc.compile_cubin.
- families(), format_table(rows, markdown=False), why_unavailable(arch=None),
  supported_archs(), issue_ceiling(counts, dtype, arch), FFMA_RATE, DFMA_RATE.
Errors: SassUnavailable (no nvdisasm, or one that cannot read the arch: CUDA 13's refuses
sm_70), DisassemblyError, and cnn_gpu.nvrtc's NvrtcUnavailable / CompileError.
"""
from __future__ import annotations

from .disasm import DisassemblyError, Function, Instruction, SassUnavailable, disassemble, why_unavailable
from .mix import DFMA_RATE, FFMA_RATE, issue_ceiling
from .report import families, format_table, hot_loop_mix, kernel_rows

__all__ = ["DFMA_RATE", "DisassemblyError", "FFMA_RATE", "Function", "Instruction", "SassUnavailable",
           "disassemble", "families", "format_table", "hot_loop_mix", "issue_ceiling", "kernel_rows",
           "supported_archs", "why_unavailable"]


def supported_archs() -> list[str]:
    """The architectures of cnn_gpu.nvrtc.ARCHS this machine's nvdisasm reads (none without one)."""
    from .. import nvrtc
    return [arch for arch in nvrtc.ARCHS if not why_unavailable(arch)]
