"""Emulator speed: fiber switch cost, a 256^3 shared-memory SGEMM, and a conv fprop
(N=8, C=16, 32x32, K=32, 3x3) with a tiled direct kernel.

In `make test` (--benchmark-disable) each case runs once and checks its result against NumPy.
To measure:  .venv/bin/python benchmarks/bench_emu.py   (prints CPU time per call; the wall time
of a loaded machine says little), or  pytest benchmarks/bench_emu.py --benchmark-enable -p no:xdist.
Targets from the feasibility study: switch ~7-8 ns, SGEMM ~12 ms, conv ~40 ms (within 2x).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend

pytestmark = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")

KERNELS = Path(__file__).resolve().parent.parent / "tests" / "emu_kernels"


def _kernel(file: str, name: str):
    from cnn_gpu import emu
    return emu.RawModule(path=str(KERNELS / file), options=("-DREAL=float",)).get_function(name)


def sgemm_case(kind: str):
    """(launch, check) for a 256^3 SGEMM: "register_tiled" (64x64 tiles, 4x4 per thread) or
    "simple" (16x16 tiles, one output per thread)."""
    rng = np.random.default_rng(0)
    n = 256
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c = np.zeros((n, n), np.float32)
    args = (a, b, c, np.int32(n), np.int32(n), np.int32(n))
    if kind == "register_tiled":
        kernel, grid, block = _kernel("sgemm_register_tiled.cu", "sgemm_64x64"), (n // 64, n // 64), (256,)
    else:
        kernel, grid, block = _kernel("sgemm.cu", "sgemm"), (n // 16, n // 16), (16, 16)

    def launch():
        kernel(grid, block, args)

    def check():
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)

    return launch, check


def conv_case():
    rng = np.random.default_rng(0)
    n, c, h, w, k = 8, 16, 32, 32, 32
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    y = np.zeros((n, k, h, w), np.float32)
    kernel = _kernel("conv_direct.cu", "conv3x3_direct")
    args = (x, weight, y, np.int32(c), np.int32(h), np.int32(w), np.int32(k))

    def launch():
        kernel(((h // 16) * (w // 16), k // 8, n), (16, 16), args)

    def check():
        padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w 3 3
        expected = np.einsum("nchwrs,kcrs->nkhw", windows, weight.astype(np.float64))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)

    return launch, check


def switch_nanoseconds(rounds: int = 2_000_000) -> float:
    """CPU nanoseconds per fiber switch (two fibers ping-ponging in the runtime)."""
    from cnn_gpu.emu._module import _runtime
    lib = _runtime()
    start = time.process_time()
    lib.cnn_gpu_emu_switch_benchmark(rounds)
    return (time.process_time() - start) / (2 * rounds) * 1e9


@pytest.mark.parametrize("kind", ["register_tiled", "simple"])
def test_bench_sgemm_256(benchmark, kind):
    launch, check = sgemm_case(kind)
    launch()  # compile/load outside the measurement
    benchmark(launch)
    check()


def test_bench_conv_fprop(benchmark):
    launch, check = conv_case()
    launch()
    benchmark(launch)
    check()


def test_bench_fiber_switch(benchmark):
    assert benchmark(switch_nanoseconds, 100_000) > 0


def _cpu_milliseconds(launch, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        launch()
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    print(f"fiber switch            {switch_nanoseconds():8.1f} ns   (target ~7-8 ns)")
    for kind in ("register_tiled", "simple"):
        launch, check = sgemm_case(kind)
        launch()
        check()
        print(f"sgemm 256^3 {kind:14s} {_cpu_milliseconds(launch):6.1f} ms   (target ~12 ms)")
    launch, check = conv_case()
    launch()
    check()
    print(f"conv fprop 8x16x32x32 K=32 3x3 {_cpu_milliseconds(launch):6.1f} ms   (target ~40 ms)")


if __name__ == "__main__":
    main()
