"""A roofline model of the kernels' launches on a named GPU: an estimate, never a measurement.

    from cnn_gpu import roofline
    spec = roofline.spec("h100")                      # roofline.SPECS: v100, a100, h100, h200, l4, rtx4090
    estimates = roofline.model_conv("fprop", g, "float32", spec, bias=True)
    sum(e.seconds for e in estimates)
    roofline.model_conv("wgrad", g, "float32", spec, math="tf32")   # the tensor-core kernels

Each launch of a pass's plan (cnn_gpu.gpu.conv.plan_fprop / plan_dgrad / plan_wgrad, exactly what
the launchers run) is estimated from its FLOPs, its compulsory DRAM traffic, the kernel's registers
and shared memory (occupancy, waves), its SASS issue ceiling and its shared-memory wavefronts per
FLOP from the emulator's profile (model.py states the formula; traits.py where each input comes
from and the defaults used when a tool is missing). In the "tf32" math mode float32 passes, and
float16 passes always, are modeled on what runs there: the tensor-core plans of
cnn_gpu.gpu.conv_tc against the dense TF32 (FP16) peak with the MMA issue ceiling
(model.mma_issue_ceiling), the launcher's CuPy glue as memory-bound steps; a pass that stays on
the SIMT kernels (depthwise, wgrad of a filter the tensor-core kernel refuses, a GPU without
tensor cores) adds the rounding of its operands to TF32, or for float16 runs the float32 kernels
between the widening of its operands and the rounding of its output.
What the model ignores is listed in the README's "Performance model" section.
"""
from __future__ import annotations

import numpy as np

from . import conv
from .model import (ASSUMED_DRAM_LATENCY_S, LAUNCH_OVERHEAD_S, MMA_FMAS, KernelTraits, LaunchEstimate, LaunchWork,
                    estimate, in_flight_needed_per_sm, in_flight_per_sm, memory_bound, mma_issue_ceiling,
                    mma_issue_clocks, streaming, tensor_peak_flops)
from .specs import CURRENT_GPU, SPECS, GpuSpec, format_specs, lanes_per_sm, spec
from .traits import kernel_traits

__all__ = ["ASSUMED_DRAM_LATENCY_S", "CURRENT_GPU", "LAUNCH_OVERHEAD_S", "MMA_FMAS", "SPECS", "GpuSpec", "KernelTraits", "LaunchEstimate", "LaunchWork",
           "estimate", "estimate_launch", "format_specs", "has_tensor_cores", "in_flight_needed_per_sm",
           "in_flight_per_sm", "kernel_traits", "lanes_per_sm",
           "memory_bound", "mma_issue_ceiling", "mma_issue_clocks", "model_bias_grad", "model_conv", "roofline_bound",
           "spec", "streaming", "tensor_peak_flops"]


def estimate_launch(launch, work: LaunchWork, dtype, gpu: GpuSpec, profile: tuple | None = None) -> LaunchEstimate:
    """estimate() with the kernel's traits gathered for `gpu`'s arch (traits.kernel_traits)."""
    traits = kernel_traits(launch.family, launch.kernel, np.dtype(dtype).name, gpu.arch, profile)
    return estimate(launch, work, traits, gpu, dtype)


def has_tensor_cores(gpu: GpuSpec, dtype="float32") -> bool:
    """Whether convolutions of `dtype` run the tensor-core kernels on `gpu` (sm_80 and newer; float32
    in the "tf32" mode); ValueError for such a GPU whose spec has no peak of that format (TF32, or
    FP16 for float16) to model them against."""
    from ..gpu.conv_tc import MIN_ARCH
    if int(gpu.arch[3:]) < MIN_ARCH:
        return False
    half = np.dtype(dtype) == np.float16
    if not (gpu.fp16_tflops if half else gpu.tf32_tflops):
        raise ValueError(f"{gpu.name} ({gpu.arch}) runs {'float16 convolutions' if half else 'the tf32 mode'} on "
                         f"tensor cores, but its spec has no {'FP16' if half else 'TF32'} peak to model them against")
    return True


def model_conv(pass_name: str, g, dtype, gpu: GpuSpec, *, bias: bool = False, math: str = "fp32",
               **overrides) -> list[LaunchEstimate]:
    """One estimate per launch of the pass ("fprop", "dgrad" or "wgrad") on geometry `g`, planned for
    `gpu`'s SM count (`overrides`: the planner's choices to force, as its plan_* functions take them:
    tile= and splits=, and for the tensor-core plans also wgrad's dy_path=); the GEMM launch's shared
    wavefronts come from a profile of the same kernel variant. math="tf32" (float32): what that
    mode runs, and float16 in any mode (module docstring), the steps outside the plan first.
    `bias`: fprop's, or dgrad's (conv_transpose2d's: in the tensor-core kernel's epilogue, else a
    bias_add pass after the SIMT plan)."""
    from ..precision import MATH_MODES
    if math not in MATH_MODES:
        raise ValueError(f"unknown math mode {math!r}; expected one of {', '.join(MATH_MODES)}")
    tf32 = math == "tf32" and np.dtype(dtype) == np.float32
    half = np.dtype(dtype) == np.float16
    if (tf32 or half) and has_tensor_cores(gpu, dtype):
        on_tensor_cores = conv.tensor_core_launches(pass_name, g, dtype, gpu.sms, bias=bias, **overrides)
        if on_tensor_cores is not None:
            plan, launches, glue = on_tensor_cores
            profile = (pass_name, conv.profile_variant(plan))
            # a float16 split-K sum runs the float16 build of its kernel (FP32 partials in, FP16 out)
            return [memory_bound(name, nbytes, gpu) for name, nbytes in glue] + [
                estimate_launch(launch, work, dtype, gpu, profile if i == plan.main_index else None)
                for i, (launch, work) in enumerate(launches)]
    if half:   # the float32 SIMT kernels between a widening and a rounding (functional.conv._simt)
        wide = np.float32
        glue = [memory_bound(name, nbytes, gpu) for name, nbytes in conv.float16_simt_bytes(pass_name, g)]
        return glue + model_conv(pass_name, g, wide, gpu, bias=bias, math="fp32", **overrides)
    plan, launches = conv.pass_launches(pass_name, g, dtype, gpu.sms, bias=bias, **overrides)
    rounding = [memory_bound("round_to_tf32", conv.tf32_rounding_bytes(pass_name, g, dtype), gpu)] if tf32 else []
    bias_add = [memory_bound("bias_add", conv.bias_add_bytes(g, dtype), gpu)] if bias and pass_name == "dgrad" else []
    return rounding + [estimate_launch(launch, work, dtype, gpu, (pass_name, plan.tile) if i == plan.main_index
                                       else None) for i, (launch, work) in enumerate(launches)] + bias_add


def roofline_bound(pass_name: str, g, dtype, gpu: GpuSpec, peak_flops: float) -> float:
    """The share of `peak_flops` that no kernel of the pass can exceed on `gpu`: the pass's FLOPs
    over the time its compulsory DRAM traffic (conv.compulsory_bytes) takes at full bandwidth,
    capped at 1. Below 1 the layer is DRAM-bound in any kernel: a 1x1 convolution does a few
    dozen FLOPs per byte, where H100's TF32 peak needs about 150."""
    dram_s = conv.compulsory_bytes(pass_name, g, dtype) / gpu.dram_bytes_per_s
    return min(1.0, g.flops / dram_s / peak_flops)


def model_bias_grad(g, dtype, gpu: GpuSpec) -> LaunchEstimate:
    return estimate_launch(*conv.bias_grad_launch(g, dtype), dtype, gpu)
