"""GPU specifications the model runs on: public datasheet figures, one GpuSpec per GPU.

Sources (boost clocks, SM counts, peaks, memory): NVIDIA's Tesla V100 datasheet and Volta
architecture whitepaper (2017); A100 datasheet (80 GB SXM4) and Ampere GA100 whitepaper (2020);
H100 datasheet (SXM5 80 GB) and Hopper whitepaper (2022); H200 datasheet (SXM 141 GB, 2023);
L4 datasheet (2023); Ada Lovelace architecture whitepaper v1.0 (RTX 4090, 2022). Per-SM limits
(registers, shared memory with the carveout at its maximum, threads, blocks) and FP32/FP64 lanes
per SM: CUDA C Programming Guide, "compute capabilities" and "arithmetic instructions". Tensor
peaks are dense (the datasheets' headline figures with sparsity halved); the RTX 4090's FP16
figure is with FP32 accumulation. Shared memory serves 32 banks x 4 bytes = 128 bytes per clock
per SM on all of them (one wavefront per clock).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIB = 2**20


@dataclass(frozen=True)
class GpuSpec:
    key: str                     # the name after `model:` (`cnn-gpu bench --device model:h100`)
    name: str
    arch: str                    # the -arch the kernels compile for (SASS, occupancy rules)
    sms: int
    boost_mhz: float
    fp32_lanes: int              # FP32 FMA lanes per SM
    fp64_lanes: int
    tf32_tflops: float | None    # dense tensor-core peak; None where there is no TF32
    fp16_tflops: float           # dense tensor-core peak
    l2_bytes: int
    dram_gbs: float              # DRAM bandwidth, GB/s (10^9 bytes)
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    smem_bytes_per_clk: int = 128   # per SM
    datasheet_fp32_tflops: float | None = None   # the datasheet's figure, to check the derived peak
    source: str = "datasheet"    # or how a spec made from a live GPU was found
    own_limits: bool = False     # the per-SM limits above are the board's (a live GPU's properties)

    def occupancy_limits(self):
        """The per-SM limits of occupancy: the board's own where it reported them (a GPU newer than
        the arch its kernels are modeled as keeps its threads and shared memory), else the arch's."""
        from dataclasses import replace

        from ..nvrtc import ARCH_LIMITS
        limits = ARCH_LIMITS[self.arch]
        if not self.own_limits:
            return limits
        reported = {"regs_per_sm": self.regs_per_sm, "smem_per_sm": self.smem_per_sm,
                    "max_threads_per_sm": self.max_threads_per_sm, "max_blocks_per_sm": self.max_blocks_per_sm}
        return replace(limits, **{k: v for k, v in reported.items() if v})

    def peak_flops(self, dtype) -> float:
        """FMA peak of the dtype's SIMT lanes (FLOP/s; an FMA is 2 FLOPs): what the kernels use."""
        lanes = self.fp64_lanes if np.dtype(dtype) == np.float64 else self.fp32_lanes   # float16 computes in FP32
        return 2.0 * lanes * self.sms * self.boost_mhz * 1e6

    @property
    def clock_hz(self) -> float:
        return self.boost_mhz * 1e6

    @property
    def tf32_peak_flops(self) -> float:
        """The dense TF32 tensor-core peak (FLOP/s); ValueError for a GPU without one."""
        if not self.tf32_tflops:
            raise ValueError(f"{self.name} ({self.arch}): no TF32 tensor-core peak in its spec")
        return self.tf32_tflops * 1e12

    @property
    def fp16_peak_flops(self) -> float:
        """The dense FP16 tensor-core peak (FLOP/s, FP32 accumulation); ValueError for a spec without
        one (model:gpu on a board whose rate is not known here)."""
        if not self.fp16_tflops:
            raise ValueError(f"{self.name} ({self.arch}): no FP16 tensor-core peak in its spec")
        return self.fp16_tflops * 1e12

    @property
    def dram_bytes_per_s(self) -> float:
        return self.dram_gbs * 1e9

    def as_dict(self) -> dict:
        return asdict(self)


KIB = 1024
SPECS = {spec.key: spec for spec in (
    GpuSpec("v100", "Tesla V100-SXM2", "sm_70", 80, 1530, 64, 32, None, 125.0, 6 * MIB, 900,
            smem_per_sm=96 * KIB, datasheet_fp32_tflops=15.7),
    GpuSpec("a100", "A100-SXM4-80GB", "sm_80", 108, 1410, 64, 32, 156.0, 312.0, 40 * MIB, 2039,
            smem_per_sm=164 * KIB, datasheet_fp32_tflops=19.5),
    GpuSpec("h100", "H100-SXM5-80GB", "sm_90", 132, 1980, 128, 64, 494.7, 989.4, 50 * MIB, 3350,
            datasheet_fp32_tflops=67.0),
    GpuSpec("h200", "H200-SXM-141GB", "sm_90", 132, 1980, 128, 64, 494.7, 989.4, 50 * MIB, 4800,
            datasheet_fp32_tflops=67.0),
    GpuSpec("l4", "L4", "sm_89", 58, 2040, 128, 2, 60.0, 121.0, 48 * MIB, 300,
            smem_per_sm=100 * KIB, max_threads_per_sm=1536, max_blocks_per_sm=24, datasheet_fp32_tflops=30.3),
    GpuSpec("rtx4090", "GeForce RTX 4090", "sm_89", 128, 2520, 128, 2, 82.6, 165.2, 72 * MIB, 1008,
            smem_per_sm=100 * KIB, max_threads_per_sm=1536, max_blocks_per_sm=24, datasheet_fp32_tflops=82.6),
)}
# `model:gpu`: the GPU CuPy sees, from its properties (current_gpu_spec)
CURRENT_GPU = "gpu"

# Dense TF32 tensor-core FMAs per clock per SM where every GPU of the compute capability has the same
# rate (A100/A30: 512; H100/H200: 1024); sm_86/sm_89 boards differ (L4 256, RTX 4090 128), so
# model:gpu gets a TF32 peak on sm_80 and sm_90 only.
TF32_FMAS_PER_SM_CLOCK = {(8, 0): 512, (9, 0): 1024}
# Dense FP16 (FP32 accumulation) over dense TF32 on those capabilities (A100 312 vs 156 TFLOP/s,
# H100 SXM 989 vs 495)
FP16_PER_TF32 = 2

# FP32 / FP64 FMA lanes per SM by compute capability (CUDA C Programming Guide, "arithmetic
# instructions"); capabilities not listed have 128 FP32 lanes and fp32 / 64 FP64 lanes.
FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
FP64_LANES = {(5, 0): 4, (5, 2): 4, (5, 3): 4, (6, 0): 32, (6, 1): 4, (6, 2): 4, (7, 0): 32, (7, 2): 32, (7, 5): 2,
              (8, 0): 32, (9, 0): 64, (10, 0): 64}


def lanes_per_sm(major: int, minor: int) -> tuple[int, int]:
    """(FP32, FP64) FMA lanes per SM of a compute capability."""
    fp32 = FP32_LANES.get((major, minor), 128)
    return fp32, FP64_LANES.get((major, minor), fp32 // 64)


def spec(key: str) -> GpuSpec:
    """The spec named `key` (case-insensitive); `gpu` is the GPU CuPy sees. ValueError naming the
    choices for an unknown key."""
    key = key.strip().lower()
    if key == CURRENT_GPU:
        return current_gpu_spec()
    if key not in SPECS:
        raise ValueError(f"unknown GPU spec {key!r}; choose from {', '.join(SPECS)} or {CURRENT_GPU!r} "
                         f"(the GPU CuPy sees)")
    return SPECS[key]


def format_specs() -> str:
    """The spec table as text (`cnn-gpu bench --device model:list`)."""
    header = ("key", "GPU", "arch", "SMs", "boost MHz", "FP32 TF", "FP64 TF", "TF32 TC", "FP16 TC", "L2 MiB",
              "DRAM GB/s", "smem KiB/SM", "threads/SM", "blocks/SM")
    rows = [header]
    for s in SPECS.values():
        rows.append((s.key, s.name, s.arch, str(s.sms), f"{s.boost_mhz:.0f}", f"{s.peak_flops('float32') / 1e12:.1f}",
                     f"{s.peak_flops('float64') / 1e12:.2f}", "-" if s.tf32_tflops is None else f"{s.tf32_tflops:g}",
                     f"{s.fp16_tflops:g}", f"{s.l2_bytes / MIB:g}", f"{s.dram_gbs:g}", f"{s.smem_per_sm // KIB}",
                     str(s.max_threads_per_sm), str(s.max_blocks_per_sm)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", "FP32/FP64 TF: SIMT FMA peak (SMs x lanes x 2 x boost clock), what the kernels "
                                  "use; TF32/FP16 TC: dense tensor-core peaks (TFLOP/s).",
                              f"model:{CURRENT_GPU} models the GPU CuPy sees, from its properties (SMs, clock, "
                              "memory clock and bus width)."])


# CUDA device attributes (cudaDeviceAttr) for fields CUDA 13 dropped from the properties struct
_ATTRIBUTES = {"clockRate": 13, "memoryClockRate": 36, "memoryBusWidth": 37}


def gpu_properties() -> dict:
    """CuPy's current GPU: name, compute capability, SM count, clocks (kHz), bus width, L2 and per-SM
    limits ({} without a GPU CuPy can use). A field the driver does not report is 0."""
    from ..backend import cupy_or_none
    cupy = cupy_or_none()
    if cupy is None:
        return {}
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device().id
    props = runtime.getDeviceProperties(device)

    def field(key):
        value = int(props.get(key, 0) or 0)
        if not value and key in _ATTRIBUTES:
            try:
                value = int(runtime.deviceGetAttribute(_ATTRIBUTES[key], device))
            except Exception:  # unknown to this driver: left 0
                value = 0
        return value

    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"name": name, "major": field("major"), "minor": field("minor"), "sms": field("multiProcessorCount"),
            "clock_khz": field("clockRate"), "memory_clock_khz": field("memoryClockRate"),
            "bus_width_bits": field("memoryBusWidth"), "l2_bytes": field("l2CacheSize"),
            "regs_per_sm": field("regsPerMultiprocessor"), "smem_per_sm": field("sharedMemPerMultiprocessor"),
            "max_threads_per_sm": field("maxThreadsPerMultiProcessor"),
            "max_blocks_per_sm": field("maxBlocksPerMultiProcessor"), "memory_bytes": field("totalGlobalMem")}


def current_gpu_spec() -> GpuSpec:
    """A spec for CuPy's current GPU from its properties, so the model sees this board's SM count,
    boost clock and memory (DRAM bandwidth = memory clock x bus width x 2, DDR), whichever variant
    of a listed GPU it is; a TF32 peak (TF32_FMAS_PER_SM_CLOCK x 2 x SMs x clock) and an FP16 one
    (FP16_PER_TF32 times that) on sm_80 and sm_90, no tensor peak elsewhere. ValueError without a
    usable GPU."""
    from .. import nvrtc
    props = gpu_properties()
    if not props:
        raise ValueError(f"model:{CURRENT_GPU} needs a GPU that CuPy can use; none here (choose a listed spec: "
                         f"{', '.join(SPECS)})")
    name, sms, major, minor = props["name"], props["sms"], props["major"], props["minor"]
    fp32, fp64 = lanes_per_sm(major, minor)
    arch = f"sm_{major}{minor}"
    older = [a for a in nvrtc.ARCHS if int(a[3:]) <= major * 10 + minor]
    model_arch = arch if arch in nvrtc.ARCH_LIMITS else (older[-1] if older else nvrtc.ARCHS[0])
    tf32_fmas = TF32_FMAS_PER_SM_CLOCK.get((major, minor))
    tf32_tflops = 2 * tf32_fmas * sms * props["clock_khz"] * 1e3 / 1e12 if tf32_fmas else None
    fp16_tflops = FP16_PER_TF32 * tf32_tflops if tf32_tflops else 0.0
    return GpuSpec(
        CURRENT_GPU, name, model_arch, sms, props["clock_khz"] / 1e3, fp32, fp64, tf32_tflops, fp16_tflops,
        props["l2_bytes"],
        2 * props["memory_clock_khz"] * 1e3 * props["bus_width_bits"] / 8 / 1e9,
        regs_per_sm=props["regs_per_sm"], smem_per_sm=props["smem_per_sm"],
        max_threads_per_sm=props["max_threads_per_sm"], max_blocks_per_sm=props["max_blocks_per_sm"],
        own_limits=True,
        source=f"properties of {name} (compute capability {major}.{minor}"
               + ("" if model_arch == arch else f"; kernels modeled as {model_arch}") + ")")
