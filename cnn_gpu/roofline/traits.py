"""The model's inputs about a kernel, gathered without a GPU and cached on disk (they are
deterministic for a given source): registers and static shared memory from the NVRTC compile
(cnn_gpu.nvrtc), the FMA issue ceiling and the MMA and instruction counts from the SASS hot loop
(cnn_gpu.sass), shared wavefronts per FLOP from the emulator's memory profile of a small run with
whole tiles (cnn_gpu.emu.profiling).

Where a tool is missing the model uses a stated default (model.DEFAULT_*) and the traits say so
in `assumed`; such traits are not cached, so the measured figures are used once the tool is there.
Cache: $CNN_GPU_CACHE/roofline, else ~/.cache/cnn_gpu/roofline; one small JSON file per kernel,
named by a hash of everything the figures depend on.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from .. import _cache
from .model import DEFAULT_ISSUE_CEILING, DEFAULT_MMA_ISSUE_CEILING, DEFAULT_REGISTERS, KernelTraits

INPUTS_VERSION = 5       # bump when the way the figures are derived changes (5: fixed NVRTC child process)
# An arch whose SASS this machine's nvdisasm cannot read (CUDA 13 dropped sm_70) takes the hot loop
# of the nearest one it can: Turing's compile of the same source, the same ISA family as Volta.
SASS_STAND_INS = {"sm_70": "sm_75"}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def _emulator_identity() -> str:
    """The emulator's own sources: a change to how it counts invalidates cached profiles."""
    folder = Path(__file__).resolve().parent.parent / "emu"
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in (".h", ".cpp", ".py"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def _cached(name: str, key: str, compute):
    """compute() -> (dict, complete); a complete result is stored under `name`-`key`, older keys of
    the same name removed. Best effort: an unwritable cache only costs recomputation."""
    cached = _cache.read_json("roofline", name, key)
    if cached is not None:
        return cached
    value, complete = compute()
    if complete:
        _cache.write_json("roofline", name, key, value)
    return value


def _compiled(family: str, kernel: str, dtype_name: str, arch: str) -> dict:
    """registers, shared_bytes, issue_ceiling, mma and instructions (of the hot loop) of one kernel,
    and `assumed` notes for what is missing."""
    from .. import backend, nvrtc, sass
    figures, assumed = {}, []
    try:
        try:
            row = next(r for r in sass.kernel_rows(family, dtype_name, arch) if r["kernel"] == kernel)
            figures.update(issue_ceiling=row["issue_ceiling"], mma=row["mma"], instructions=row["instructions"])
        except sass.SassUnavailable as unreadable:
            if arch not in SASS_STAND_INS:
                raise
            # the stand-in's hot loop, its FMA share judged at this arch's issue rate
            stand_in = SASS_STAND_INS[arch]
            row = next(r for r in sass.kernel_rows(family, dtype_name, stand_in) if r["kernel"] == kernel)
            figures.update(issue_ceiling=sass.issue_ceiling(row, dtype_name, arch), mma=row["mma"],
                           instructions=row["instructions"])
            assumed.append(f"hot loop of {stand_in}'s SASS, at {arch}'s FMA rate (no SASS of {arch}: "
                           f"{_short(unreadable)})")
    except (sass.SassUnavailable, sass.DisassemblyError, nvrtc.NvrtcUnavailable, nvrtc.CompileError,
            StopIteration) as err:
        assumed.append(f"issue ceiling {DEFAULT_ISSUE_CEILING} (FMA pipe) or {DEFAULT_MMA_ISSUE_CEILING} (tensor "
                       f"pipe) assumed (no SASS: {_short(err)})")
    try:
        cubin_log = nvrtc.compile_as_backend(backend.kernel_source(family), f"{family}.cu", dtype_name, arch)
        report = next(r for r in nvrtc.reports_of(*cubin_log, arch) if r.name == kernel)
        figures.update(registers=report.registers, shared_bytes=report.shared_bytes)
    except (nvrtc.NvrtcUnavailable, nvrtc.CompileError, StopIteration) as err:
        assumed.append(f"{DEFAULT_REGISTERS} registers and no static shared memory assumed (no NVRTC report: "
                       f"{_short(err)})")
    return {**figures, "assumed": assumed}


def _short(err) -> str:
    """The first line of an error, cut to a table note's length."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 90 else text[:87] + "..."


def _profiled(run, longer=None) -> tuple[float | None, str]:
    """(shared wavefronts per useful FLOP, "") from profiling `run` (representative_run's function:
    a shape small enough to profile every block) on the emulator, or (None, why not). With `longer`
    (the same tiles over a longer reduction: wgrad's), the rate of the steps the longer run adds:
    the main loop's alone, without a tile's fixed prologue and epilogue traffic (the 64-channel
    tile's sum of its warps' halves: about 4 steps' worth), small beside a layer's segments of
    about 100 steps (more than a run of 8 would charge to every FLOP), not modeled."""
    from .. import backend, emu
    reason = backend.why_unavailable("emu")
    if reason:
        return None, f"no emulator: {reason}"
    measured = []
    for one in (run, longer) if longer else (run,):
        try:
            with emu.profiling() as prof:
                launch, flops = one()
        except (emu.KernelFault, emu.CompileError) as err:   # reported by the emulator's own checks too
            return None, f"the emulator failed: {_short(err)}"
        counts = prof.kernels.get(launch.kernel)
        if not counts or not counts["blocks_profiled"]:
            return None, f"the emulator's profile has no launch of {launch.kernel}"
        wavefronts = sum(site["wavefronts"] for site in prof.sites
                         if site["kernel"] == launch.kernel and site["space"] == "shared")
        # whole tiles: every block does flops / blocks of the useful work
        measured.append((wavefronts, flops * counts["blocks_profiled"] / counts["blocks"]))
    if len(measured) == 1:
        return measured[0][0] / measured[0][1], ""
    (short_wavefronts, short_flops), (long_wavefronts, long_flops) = measured
    return (long_wavefronts - short_wavefronts) / (long_flops - short_flops), ""


@functools.lru_cache(maxsize=None)
def _toolchain() -> tuple:
    """Versions of NVRTC and nvdisasm (None where absent): part of every cache key."""
    from .. import nvrtc
    from ..sass import disasm
    versions = []
    for probe in (lambda: nvrtc.load().version, lambda: disasm.find().version):
        try:
            versions.append(probe())
        except Exception:  # a missing tool: its figures are defaults, which are not cached
            versions.append(None)
    return tuple(versions)


@functools.lru_cache(maxsize=None)
def kernel_traits(family: str, kernel: str, dtype_name: str, arch: str, profile: tuple | None = None) -> KernelTraits:
    """The traits of kernels/<family>.cu:<kernel> for `dtype_name` on `arch`. `profile` = (pass, variant)
    names the representative run (conv.representative_run) whose emulator profile gives the shared
    wavefronts; without one, shared-memory time is not modeled."""
    from .. import backend
    from .conv import representative_run
    source = backend.kernel_source(family)

    def compile_figures():
        figures = _compiled(family, kernel, dtype_name, arch)
        return figures, not figures["assumed"]
    compiled = _cached(f"{kernel}-{dtype_name}-{arch}",
                       _digest(INPUTS_VERSION, source, dtype_name, arch, _toolchain()), compile_figures)
    assumed = list(compiled["assumed"])
    shared_bytes = compiled.get("shared_bytes", 0)
    per_flop = None
    if profile is not None:
        def profile_figures():   # a zero for a kernel with shared memory is not believed, so not kept
            longer = representative_run(*profile, dtype_name, images=2) if profile[0] == "wgrad" else None
            value, why = _profiled(representative_run(*profile, dtype_name), longer)
            return {"wavefronts_per_flop": value, "why": why}, bool(value) or (value == 0 and not shared_bytes)
        profiled = _cached(f"{kernel}-{dtype_name}-profile",
                           _digest(INPUTS_VERSION, source, dtype_name, profile, _emulator_identity()),
                           profile_figures)
        per_flop, why = profiled["wavefronts_per_flop"], profiled["why"]
        if per_flop == 0 and shared_bytes:   # a profile blind to the kernel's shared accesses
            per_flop = None
            why = f"the emulator's profile recorded no shared access of a kernel with {shared_bytes} B of shared memory"
        if per_flop is None:
            assumed.append(f"shared-memory time not modeled ({why})")
    return KernelTraits(compiled.get("registers", DEFAULT_REGISTERS), shared_bytes,
                        compiled.get("issue_ceiling", DEFAULT_ISSUE_CEILING), per_flop, tuple(assumed),
                        compiled.get("mma", 0), compiled.get("instructions", 0))
