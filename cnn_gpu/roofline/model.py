"""The roofline estimate of one kernel launch (a model, not a measurement).

    time = max(compute / wave efficiency, shared / wave efficiency, DRAM) + launch overhead

compute  = FLOPs / (SMs x FMA lanes x 2 x boost clock x issue ceiling): the SASS hot loop's FMA
           share caps the FMA pipe (cnn_gpu.sass.mix states the rule);
           on tensor cores (pipe "tf32" or "fp16"): issued FLOPs (whole 128 x 128 x 16-word block
           tiles, padding included) / (dense TF32 or FP16 peak x MMA issue ceiling), the ceiling
           from the hot loop's MMA count (mma_issue_ceiling states the rule);
shared   = shared-memory wavefronts / (SMs x 1 wavefront per clock x clock), the wavefronts per
           issued FLOP from the emulator's profile of a run with whole tiles;
DRAM     = compulsory bytes (each distinct byte read or written once) / DRAM bandwidth;
waves    = blocks / (SMs x resident blocks per SM), the resident blocks from registers, shared
           memory and threads (cnn_gpu.nvrtc.occupancy); the last wave, if partial, costs a whole
           one, so the SM-bound terms are divided by waves / ceil(waves);
overhead = LAUNCH_OVERHEAD_S per launch, an assumed figure for back-to-back kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import nvrtc
from .specs import GpuSpec

LAUNCH_OVERHEAD_S = 3e-6      # assumed per launch (kernel start and drain), not measured
WAVEFRONT_BYTES = 128         # a shared-memory wavefront: 32 banks x 4 bytes, one per clock per SM
# Stand-ins for inputs that cannot be measured on this machine; a row built on one says so.
DEFAULT_ISSUE_CEILING = 0.5   # half the FMA pipe's peak: a stand-in ceiling where no SASS of the arch is read
DEFAULT_REGISTERS = 255       # the most a thread may use: one 256-thread block per SM
DEFAULT_MMA_ISSUE_CEILING = 1.0   # without SASS: the tensor pipe is taken as never short of MMAs

# MMA issue rule. The tensor-core kernels issue mma.sync.m16n8k8 with TF32 operands, one SASS
# HMMA.1688.F32.TF32 each: 16 x 8 x 8 = 1024 FMAs. An SM has 4 sub-partitions (SMSPs); each issues
# one warp-instruction per clock and its tensor pipe takes a new HMMA every `mma_issue_clocks`
# clocks, derived from the spec: FMAs per clock per SMSP = dense TF32 peak / (2 x SMs x 4 x clock),
# clocks = 1024 / that, rounded to a power of two (hardware rates are). A100 (156 TFLOP/s, 108 SMs,
# 1410 MHz): 128 FMAs per clock -> 8 clocks; H100/H200 (494.7 TFLOP/s, 132 SMs, 1980 MHz): 237 ->
# 4.3 -> 4 (their tensor peak is quoted at 1830 MHz, where it is exactly 256 -> 4); L4: 16; RTX
# 4090: 32. A hot loop of N instructions with M HMMAs needs at least max(N, M x clocks) clocks per
# warp iteration, so the tensor pipe runs at most at
#     mma issue ceiling = min(1, M x clocks / N)
# of its peak. float16 issues mma.sync.m16n8k16 (HMMA.16816.F32, 2048 FMAs) against the dense FP16
# peak, twice TF32's on these GPUs: the same clocks per HMMA.
MMA_FMAS = {"tf32": 16 * 8 * 8, "fp16": 16 * 8 * 16}
SM_SUB_PARTITIONS = 4


@dataclass(frozen=True)
class KernelTraits:
    """What the model knows about one kernel compiled for one dtype and arch."""
    registers: int
    shared_bytes: int                  # static shared memory per block
    issue_ceiling: float               # fraction of the FMA peak the hot loop's issue allows (0..1]
    wavefronts_per_flop: float | None  # shared wavefronts per issued FLOP; None: shared time not modeled
    assumed: tuple = ()                # which inputs are defaults rather than measured (notes)
    mma: int = 0                       # MMA instructions in the SASS hot loop (0: none or no SASS)
    instructions: int = 0              # instructions in the hot loop (0: no SASS)


@dataclass(frozen=True)
class LaunchWork:
    flops: float          # useful FLOPs (2 per multiply-add), 0 for a launch that only moves data
    dram_bytes: float     # compulsory DRAM traffic: distinct bytes read plus bytes written
    pipe: str = "fma"     # what does the FLOPs: "fma" (the dtype's SIMT lanes), "tf32" or "fp16" (tensor cores)
    issued_flops: float | None = None   # FLOPs the pipe executes, tile padding included (None: = flops)

    @property
    def executed_flops(self) -> float:
        return self.flops if self.issued_flops is None else self.issued_flops


def tensor_peak_flops(spec: GpuSpec, pipe: str) -> float:
    """The dense tensor-core peak of `pipe` ("tf32" or "fp16") on `spec`."""
    if pipe not in MMA_FMAS:
        raise ValueError(f"tensor pipe must be one of {', '.join(MMA_FMAS)}, got {pipe!r}")
    return spec.tf32_peak_flops if pipe == "tf32" else spec.fp16_peak_flops


def mma_issue_clocks(spec: GpuSpec, pipe: str = "tf32") -> float:
    """Clocks between two HMMAs (HMMA.1688.F32.TF32, or HMMA.16816.F32 for "fp16") on one SMSP's
    tensor pipe of `spec` (the rule above); ValueError for a spec without that peak."""
    fmas_per_clock = tensor_peak_flops(spec, pipe) / (2 * spec.sms * SM_SUB_PARTITIONS * spec.clock_hz)
    return 2.0 ** round(math.log2(MMA_FMAS[pipe] / fmas_per_clock))


def tensor_clock_hz(spec: GpuSpec, pipe: str = "tf32") -> float:
    """The clock at which `spec`'s tensor peak holds at mma_issue_clocks per HMMA: the clock of a
    tensor-core launch's other terms. H100/H200: 1830 MHz (their tensor peaks are quoted there, below
    the 1980 MHz boost of the FP32 one), elsewhere about the boost clock."""
    fmas_per_clock = MMA_FMAS[pipe] / mma_issue_clocks(spec, pipe)
    return tensor_peak_flops(spec, pipe) / (2 * spec.sms * SM_SUB_PARTITIONS * fmas_per_clock)


def mma_issue_ceiling(traits: KernelTraits, spec: GpuSpec, pipe: str = "tf32") -> float:
    """min(1, MMAs x mma_issue_clocks / instructions) of the hot loop; DEFAULT_MMA_ISSUE_CEILING
    when the traits have no SASS counts."""
    if not traits.instructions:
        return DEFAULT_MMA_ISSUE_CEILING
    return min(1.0, traits.mma * mma_issue_clocks(spec, pipe) / traits.instructions)


@dataclass(frozen=True)
class LaunchEstimate:
    kernel: str
    grid: tuple
    block: tuple
    seconds: float
    compute_s: float
    shared_s: float
    dram_s: float
    overhead_s: float
    bound: str               # "compute", "shared", "dram" or "launch": the largest term
    blocks_per_sm: int
    occupancy_limiter: str
    waves: float
    wave_efficiency: float
    issue_ceiling: float
    flops: float
    dram_bytes: float
    assumed: tuple = ()
    pipe: str = "fma"

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "grid": list(self.grid), "block": list(self.block),
                "ms": self.seconds * 1e3, "compute_ms": self.compute_s * 1e3, "shared_ms": self.shared_s * 1e3,
                "dram_ms": self.dram_s * 1e3, "overhead_ms": self.overhead_s * 1e3, "bound": self.bound,
                "blocks_per_sm": self.blocks_per_sm, "occupancy_limiter": self.occupancy_limiter,
                "waves": self.waves, "wave_efficiency": self.wave_efficiency,
                "issue_ceiling": self.issue_ceiling, "flops": self.flops, "dram_bytes": self.dram_bytes,
                "assumed": list(self.assumed), "pipe": self.pipe}


def estimate(launch, work: LaunchWork, traits: KernelTraits, spec: GpuSpec, dtype) -> LaunchEstimate:
    """The modeled time of `launch` (a cnn_gpu.gpu._grid.Launch) doing `work` on `spec`."""
    threads = math.prod(launch.block)
    blocks = math.prod(launch.grid)
    _, per_sm, limiter = nvrtc.occupancy(spec.arch, traits.registers, traits.shared_bytes + launch.shared_mem,
                                         threads, spec.occupancy_limits())
    if per_sm < 1:
        raise ValueError(f"{launch.kernel}: a block of {threads} threads, {traits.registers} registers each and "
                         f"{traits.shared_bytes + launch.shared_mem} bytes of shared memory does not fit an SM "
                         f"of {spec.name} ({limiter})")
    waves = blocks / (spec.sms * per_sm)
    efficiency = waves / math.ceil(waves) if blocks else 1.0
    if work.pipe in MMA_FMAS:
        peak, ceiling = tensor_peak_flops(spec, work.pipe), mma_issue_ceiling(traits, spec, work.pipe)
        clock_hz = tensor_clock_hz(spec, work.pipe)
    elif work.pipe == "fma":
        peak, ceiling, clock_hz = spec.peak_flops(dtype), traits.issue_ceiling, spec.clock_hz
    else:
        raise ValueError(f"pipe must be 'fma', 'tf32' or 'fp16', got {work.pipe!r}")
    compute = 0.0
    if work.flops:
        compute = work.executed_flops / (peak * ceiling) / efficiency
    shared = 0.0
    if traits.wavefronts_per_flop is not None:
        per_clock = spec.sms * spec.smem_bytes_per_clk / WAVEFRONT_BYTES
        shared = traits.wavefronts_per_flop * work.executed_flops / (per_clock * clock_hz) / efficiency
    dram = work.dram_bytes / spec.dram_bytes_per_s
    terms = {"compute": compute, "shared": shared, "dram": dram}
    bound = max(terms, key=terms.get)
    if terms[bound] < LAUNCH_OVERHEAD_S:
        bound = "launch"
    return LaunchEstimate(launch.kernel, tuple(launch.grid), tuple(launch.block),
                          max(terms.values()) + LAUNCH_OVERHEAD_S, compute, shared, dram, LAUNCH_OVERHEAD_S, bound,
                          per_sm, limiter, waves, efficiency, ceiling, work.flops, work.dram_bytes,
                          traits.assumed, work.pipe)


# Little's law for DRAM: streaming at full bandwidth keeps bandwidth x latency bytes of loads in
# flight. ASSUMED latency, not measured here: pointer-chasing measurements put A100/H100 DRAM latency
# at roughly 400-600 ns. memory_bound does not charge for a shortfall; tests/test_sass.py holds the
# memory-bound kernels of a training step to it (in_flight_per_sm against in_flight_needed_per_sm).
ASSUMED_DRAM_LATENCY_S = 500e-9


def in_flight_needed_per_sm(spec: GpuSpec) -> float:
    """The load bytes an SM keeps in flight at `spec`'s DRAM bandwidth, by Little's law (an ESTIMATE:
    ASSUMED_DRAM_LATENCY_S); H100 SXM: ~12.7 KB."""
    return spec.dram_bytes_per_s * ASSUMED_DRAM_LATENCY_S / spec.sms


def in_flight_per_sm(spec: GpuSpec, registers: int, shared_bytes: int, threads: int, bytes_per_thread: float) -> float:
    """The load bytes an SM holds in flight running a memory-bound kernel on a grid that fills it:
    its resident threads (nvrtc.occupancy from registers and static shared memory, on `spec`'s
    limits) times the bytes each thread's round loads before using any (a round's loads issue
    together; the next round's wait for this one's uses)."""
    _, blocks, _ = nvrtc.occupancy(spec.arch, registers, shared_bytes, threads, spec.occupancy_limits())
    return blocks * threads * bytes_per_thread


def memory_bound(kernel: str, dram_bytes: float, spec: GpuSpec) -> LaunchEstimate:
    """A launch modeled only by its compulsory traffic and the launch overhead (for kernels without a
    launch plan: pooling, losses, element-wise ops)."""
    dram = dram_bytes / spec.dram_bytes_per_s
    return LaunchEstimate(kernel, (), (), dram + LAUNCH_OVERHEAD_S, 0.0, 0.0, dram, LAUNCH_OVERHEAD_S,
                          "dram" if dram >= LAUNCH_OVERHEAD_S else "launch", 0, "", 0.0, 1.0, 0.0, 0.0, dram_bytes,
                          ("memory-bound model: no occupancy, waves or compute",))


def streaming(kernel: str, dram_bytes: float, spec: GpuSpec, traits: KernelTraits, blocks: int, threads: int,
              block_bytes_in_flight: float) -> LaunchEstimate:
    """memory_bound's traffic at the bandwidth a launch's loads in flight sustain (Little's law at
    the ASSUMED latency): its resident blocks (all of them, or as many as occupancy lets the SMs
    hold) times the bytes a block's round loads, over the latency, at most the DRAM's. So a grid of
    fewer blocks than the SMs take, or of blocks with few bytes in flight, streams below DRAM speed."""
    _, per_sm, limiter = nvrtc.occupancy(spec.arch, traits.registers, traits.shared_bytes, threads,
                                         spec.occupancy_limits())
    resident = min(blocks, max(per_sm, 1) * spec.sms)
    bandwidth = min(spec.dram_bytes_per_s, resident * block_bytes_in_flight / ASSUMED_DRAM_LATENCY_S)
    dram = dram_bytes / bandwidth if dram_bytes else 0.0
    waves = blocks / (spec.sms * max(per_sm, 1))
    return LaunchEstimate(kernel, (blocks,), (threads,), dram + LAUNCH_OVERHEAD_S, 0.0, 0.0, dram, LAUNCH_OVERHEAD_S,
                          "dram" if dram >= LAUNCH_OVERHEAD_S else "launch", per_sm, limiter, waves, 1.0, 0.0, 0.0,
                          dram_bytes, (*traits.assumed, "streaming model: Little's law at an ASSUMED DRAM latency"))
