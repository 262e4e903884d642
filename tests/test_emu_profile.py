"""The emulator's memory-access profile (cnn_gpu.emu.profiling) counts what Nsight Compute counts,
on access patterns whose counts are known (tests/emu_kernels/memory_patterns.cu)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend

pytestmark = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")

if not backend.why_unavailable("emu"):
    from cnn_gpu import emu
    from cnn_gpu import functional as F

PATTERNS = Path(__file__).resolve().parent / "emu_kernels" / "memory_patterns.cu"


@pytest.fixture(scope="module")
def patterns():
    return emu.RawModule(path=str(PATTERNS))


@pytest.fixture
def rng():
    return np.random.default_rng(20261201)


def line_of(snippet: str) -> int:
    (number,) = [i + 1 for i, line in enumerate(PATTERNS.read_text().splitlines()) if snippet in line]
    return number


def site(prof, kernel: str, space: str, op: str) -> dict:
    (found,) = [s for s in prof.sites if (s["kernel"], s["space"], s["op"]) == (kernel, space, op)]
    return found


def test_global_sectors_per_request(patterns, rng):
    n = 1024
    x = rng.standard_normal(32 * n).astype(np.float32)
    ys = {name: np.zeros_like(x) for name in ("copy_coalesced", "copy_strided", "copy_float4")}
    with emu.profiling() as prof:
        patterns.get_function("copy_coalesced")((4,), (256,), (x, ys["copy_coalesced"], np.int32(n)))
        patterns.get_function("copy_strided")((4,), (256,), (x, ys["copy_strided"], np.int32(n), np.int32(32)))
        patterns.get_function("copy_float4")((4,), (256,), (x, ys["copy_float4"], np.int32(n)))
    np.testing.assert_array_equal(ys["copy_coalesced"][:n], x[:n])  # a profiled launch still computes
    np.testing.assert_array_equal(ys["copy_strided"][::32], x[::32])
    np.testing.assert_array_equal(ys["copy_float4"][:4 * n], x[:4 * n])
    for kernel, sectors, width, line in (("copy_coalesced", 4, 4, "if (i < n) y[i] = x[i];"),
                                         ("copy_strided", 32, 4, "y[i * stride] = x[i * stride];"),
                                         ("copy_float4", 16, 16, "reinterpret_cast<float4*>(y)[i] =")):
        for op in ("load", "store"):
            counted = site(prof, kernel, "global", op)
            assert (counted["requests"], counted["sectors"], counted["wavefronts"], counted["bytes"]) == (
                n // 32, sectors * n // 32, 0, width * n), (kernel, op)
            assert (counted["file"], counted["line"]) == (str(PATTERNS), line_of(line))
        # compulsory traffic: the distinct bytes read and written
        assert (prof.kernels[kernel]["dram_read_bytes"], prof.kernels[kernel]["dram_write_bytes"]) == (width * n,) * 2
        assert prof.kernels[kernel]["launches"] == 1 and prof.kernels[kernel]["grid"] == (4, 1, 1)


def test_inactive_lanes_do_not_count(patterns, rng):
    n = 1000  # the last warp has 8 active lanes: one sector
    x = rng.standard_normal(n).astype(np.float32)
    with emu.profiling() as prof:
        patterns.get_function("copy_coalesced")((4,), (256,), (x, np.zeros_like(x), np.int32(n)))
    counted = site(prof, "copy_coalesced", "global", "load")
    assert (counted["requests"], counted["sectors"], counted["bytes"]) == (32, 31 * 4 + 1, 4 * n)


def test_shared_wavefronts_bank_conflicts_and_broadcast(patterns, rng):
    x = rng.standard_normal(1024).astype(np.float32)
    transposed = {pitch: np.zeros_like(x) for pitch in (32, 33)}
    total = np.zeros(1, np.float32)
    with emu.profiling() as prof:
        for pitch in (32, 33):
            patterns.get_function(f"transpose_{pitch}")((1,), (32, 32), (x, transposed[pitch]))
        patterns.get_function("broadcast_sum")((1,), (64,), (x, total))
    for pitch, column_read in ((32, 32), (33, 1)):
        np.testing.assert_array_equal(transposed[pitch], x.reshape(32, 32).T.reshape(-1))
        read, written = site(prof, f"transpose_{pitch}", "shared", "load"), site(prof, f"transpose_{pitch}", "shared", "store")
        assert (read["requests"], read["wavefronts"], read["sectors"]) == (32, 32 * column_read, 0)
        assert read["line"] == line_of("y[ty * 32 + tx] = tile[tx * PITCH + ty];")
        assert (written["requests"], written["wavefronts"]) == (32, 32)  # rows: conflict-free
    broadcast = site(prof, "broadcast_sum", "shared", "load")
    assert (broadcast["requests"], broadcast["wavefronts"]) == (2, 2)
    atomic = site(prof, "broadcast_sum", "global", "atomic")  # one request per warp, all lanes on one word
    assert (atomic["requests"], atomic["sectors"], atomic["bytes"]) == (2, 2, 64 * 4)
    np.testing.assert_allclose(total[0], 64 * x[0] + x[:64].sum(), rtol=1e-5)


def test_sampled_launch_records_a_spread_of_blocks_and_returns_nothing(patterns, rng):
    n = 8 * 256
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros_like(x)
    with emu.profiling(blocks=2) as prof, pytest.raises(emu.SampledLaunch, match="2 of its 8 blocks"):
        patterns.get_function("copy_coalesced")((8,), (256,), (x, y, np.int32(n)))
    assert not y.any(), "a sampled launch's incomplete outputs are not copied back"
    assert (prof.kernels["copy_coalesced"]["blocks"], prof.kernels["copy_coalesced"]["blocks_profiled"]) == (8, 2)
    assert site(prof, "copy_coalesced", "global", "load")["requests"] == 2 * 256 // 32
    assert prof.kernels["copy_coalesced"]["dram_read_bytes"] == 2 * 256 * 4
    with pytest.raises(ValueError, match="blocks"):
        emu.profiling(blocks=0).__enter__()


def test_profiles_do_not_nest(patterns, rng):
    """An inner profile took the launches inside it from the outer one, which then missed them
    silently (helper-98): refused, and the outer one records on."""
    x = rng.standard_normal(256).astype(np.float32)
    with emu.profiling() as outer:
        with pytest.raises(RuntimeError, match="do not nest"), emu.profiling():
            pass
        patterns.get_function("copy_coalesced")((1,), (256,), (x, np.zeros_like(x), np.int32(256)))
    assert outer.kernels["copy_coalesced"]["blocks"] == 1


def test_functional_ops_profile_their_kernels_lines(rng):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    with emu.profiling() as prof:
        y = F.relu(x, backend="emu")
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert prof.sites and {Path(s["file"]).parent for s in prof.sites} == {backend.kernel_dir().resolve()}
    (kernel,) = prof.kernels
    assert prof.kernels[kernel]["dram_read_bytes"] == prof.kernels[kernel]["dram_write_bytes"] == x.nbytes
    assert kernel in prof.table()
    with emu.profiling(blocks=1), pytest.raises(emu.SampledLaunch):
        F.relu(rng.standard_normal(100_000).astype(np.float32), backend="emu")


def test_a_hung_kernel_under_profiling_ends_at_its_watchdog():
    """A spinning lane keeps a bounded number of requests open, and the watchdog stops it at its line."""
    bugs = emu.RawModule(path=str(PATTERNS.parent / "planted_bugs.cu"), options=("-DREAL=float",))
    with emu.profiling() as prof, pytest.raises(emu.KernelFault, match="watchdog") as info:
        bugs.get_function("wait_forever")((1,), (32,), (np.zeros(1, np.float32),), timeout=0.3)
    assert info.value.source.startswith(f"{PATTERNS.parent / 'planted_bugs.cu'}:") and not prof.launches
