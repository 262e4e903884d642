"""Memory-access profile of emulated launches: the counts Nsight Compute's memory tables show.

    with cnn_gpu.emu.profiling() as prof:       # or profiling(blocks=N): a sample of N blocks
        F.conv2d(x, w, backend="emu")
    print(prof.table())
    prof.sites      # [{kernel, file, line, space, op, requests, sectors, wavefronts, bytes}]
    prof.kernels    # {kernel: {launches, grid, block, blocks, blocks_profiled, dram_read_bytes, ...}}

Launches inside the block run the instrumented build of their module (as the race check does):
every global and shared access of every thread is recorded and grouped into warp-level requests,
the n-th execution of one instruction by the lanes of a warp. Per request, global accesses count
the distinct 32-byte sectors touched, shared accesses the wavefronts (per phase -- the whole warp
for 32-bit words, half warps for 64-bit, quarter warps for 128-bit accesses -- the most distinct
4-byte words that fall in one of the 32 banks; one word read by many lanes is a broadcast).
`dram_read_bytes`/`dram_write_bytes` are the distinct bytes of the array arguments a launch read
and wrote: its compulsory DRAM traffic. Arrays are staged 256-byte aligned, as cudaMalloc
aligns them. Requests are counted as g++ -O2 compiled the kernel without vectorisation, which
accesses memory as NVCC does for the loads and stores the source spells out; a kernel whose
accesses NVCC merges or splits differently would differ in the same way.

A sampled launch (profiling(blocks=N) with fewer than its blocks) runs N blocks spread evenly over
the grid, records them and raises `SampledLaunch`: its outputs are incomplete, so none are copied
back and an op that launched it returns nothing. Counts are those of the blocks that ran.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from pathlib import Path

SPACES = {1: "global", 2: "shared"}
OPS = {0: "load", 1: "store", 2: "atomic"}
# cudaMalloc aligns every allocation to 256 bytes; sector counts depend on it.
ALLOCATION_ALIGNMENT = 256
_COUNTS = ("requests", "sectors", "wavefronts", "bytes")


class SampledLaunch(RuntimeError):
    """A launch under `profiling(blocks=N)` ran only N of its blocks: the profile holds their
    counts, but the launch's outputs are incomplete and were not copied back."""


class Profile:
    """What the launches inside one `profiling()` block did to memory (see the module docstring)."""

    def __init__(self, blocks: int | None):
        self.blocks = blocks
        self.launches: list[dict] = []
        self._sites: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    def add_launch(self, kernel: str, grid, block, shared_mem: int, sites, totals) -> None:
        """One launch: `sites` as [(file, line, space, op, requests, sectors, wavefronts, bytes)],
        `totals` as (distinct bytes read, distinct bytes written, blocks run)."""
        with self._lock:
            for file, line, space, op, *counts in sites:
                key = (kernel, file, line, space, op)
                site = self._sites.setdefault(key, dict(zip(("kernel", "file", "line", "space", "op"), key),
                                                        **dict.fromkeys(_COUNTS, 0)))
                for name, value in zip(_COUNTS, counts):
                    site[name] += value
            blocks = grid[0] * grid[1] * grid[2]
            self.launches.append({"kernel": kernel, "grid": tuple(grid), "block": tuple(block),
                                  "shared_mem": shared_mem, "blocks": blocks, "blocks_profiled": totals[2],
                                  "dram_read_bytes": totals[0], "dram_write_bytes": totals[1]})

    @property
    def sites(self) -> list[dict]:
        """One dict per (kernel, source line, space, op), in kernel and source order."""
        with self._lock:
            return [dict(self._sites[key]) for key in sorted(self._sites)]

    @property
    def kernels(self) -> dict[str, dict]:
        """Per kernel: launches, grid/block/shared_mem of the last launch, blocks and
        blocks_profiled, and the DRAM bytes and site counts summed over its launches."""
        totals: dict[str, dict] = {}
        for launch in list(self.launches):
            total = totals.setdefault(launch["kernel"], {
                "launches": 0, "blocks": 0, "blocks_profiled": 0, "dram_read_bytes": 0, "dram_write_bytes": 0,
                **dict.fromkeys(_COUNTS, 0)})
            total["launches"] += 1
            for name in ("blocks", "blocks_profiled", "dram_read_bytes", "dram_write_bytes"):
                total[name] += launch[name]
            total.update(grid=launch["grid"], block=launch["block"], shared_mem=launch["shared_mem"])
        for site in self.sites:
            for name in _COUNTS:
                totals[site["kernel"]][name] += site[name]
        return totals

    def table(self, top: int | None = 20) -> str:
        """The `top` most expensive sites (sectors for global, wavefronts for shared accesses),
        then one line per kernel."""
        sites = sorted(self.sites, key=lambda s: -(s["sectors"] + s["wavefronts"]))[:top]
        rows = [("kernel", "source", "space", "op", "requests", "per request", "sectors", "wavefronts", "bytes")]
        for s in sites:
            cost = s["sectors"] if s["space"] == "global" else s["wavefronts"]
            unit = "sectors" if s["space"] == "global" else "wavefronts"
            rows.append((s["kernel"], f"{Path(s['file']).name}:{s['line']}", s["space"], s["op"], str(s["requests"]),
                         f"{cost / max(1, s['requests']):.2f} {unit}", str(s["sectors"]), str(s["wavefronts"]),
                         str(s["bytes"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.append("")
        for name, k in self.kernels.items():
            sampled = f", {k['blocks_profiled']} of {k['blocks']} blocks profiled" \
                if k["blocks_profiled"] < k["blocks"] else ""
            lines.append(f"{name}: {k['launches']} launch(es), grid {k['grid']}, block {k['block']}{sampled}; "
                         f"DRAM (distinct bytes) read {k['dram_read_bytes']}, written {k['dram_write_bytes']}")
        return "\n".join(lines)


_active: contextvars.ContextVar[Profile | None] = contextvars.ContextVar("cnn_gpu_emu_profile", default=None)


def active() -> Profile | None:
    """The profile recording this thread's launches, if any."""
    return _active.get()


@contextlib.contextmanager
def profiling(blocks: int | None = None):
    """Record the memory accesses of every emulator launch this thread makes inside the block (see
    the module docstring); RuntimeError inside another profiling() block. blocks=N: run and record
    only N blocks of each launch, spread over its grid; such a launch then raises SampledLaunch
    instead of returning incomplete outputs."""
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1):
        raise ValueError(f"blocks must be a positive int or None, got {blocks!r}")
    if _active.get() is not None:   # the inner one would take the launches the outer one promises to record
        raise RuntimeError("profiling() is already recording in this thread; profiles do not nest")
    profile = Profile(blocks)
    token = _active.set(profile)
    try:
        yield profile
    finally:
        _active.reset(token)
