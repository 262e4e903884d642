"""The CUDA emulator (cnn_gpu.emu): kernels equal NumPy under every schedule, planted bugs are
reported, arguments are checked by CuPy's rules, and the test kernels also compile with NVRTC."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend

pytestmark = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")

if not backend.why_unavailable("emu"):
    from cnn_gpu import emu
    from cnn_gpu.emu._build import FAR_GUARD_BYTES

KERNELS = Path(__file__).resolve().parent / "emu_kernels"
SCHEDULES = ("forward", "reverse", "random")
F32 = ("-DREAL=float", "-DREAL_IS_DOUBLE=0")
F64 = ("-DREAL=double", "-DREAL_IS_DOUBLE=1")


def module(name: str, options=F32):
    return _module(name, tuple(options))


_modules: dict = {}


def _module(name, options):
    key = (name, options)
    if key not in _modules:
        _modules[key] = emu.RawModule(path=str(KERNELS / f"{name}.cu"), options=options)
    return _modules[key]


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


# --- correct kernels: equal to NumPy under all three schedules ---------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_tiled_sgemm_matches_numpy(schedule, rng):
    m, n, k = 37, 50, 45  # not multiples of the 16x16 tile
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.full((m, n), 7.0, np.float32)
    sgemm = module("sgemm").get_function("sgemm")
    sgemm(((n + 15) // 16, (m + 15) // 16), (16, 16), (a, b, c, np.int32(m), np.int32(n), np.int32(k)),
          schedule=schedule, seed=3, guard=True)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_shuffle_block_reduction_matches_numpy(schedule, rng):
    x = rng.standard_normal(20000)
    partial = np.zeros(13)
    block_sum = module("reduce", F64).get_function("block_sum")
    block_sum((13,), (256,), (x, partial, np.int32(x.size)), schedule=schedule, guard=True)
    np.testing.assert_allclose(partial.sum(), x.sum(), rtol=1e-12)
    # each block's partial sum is its grid-stride slice
    expected = [x[np.arange(x.size) % (13 * 256) // 256 == b].sum() for b in range(13)]
    np.testing.assert_allclose(partial, expected, rtol=1e-12, atol=1e-12)
    whole = np.zeros(1)
    block_sum((1,), (1024,), (x, whole, np.int32(x.size)), schedule=schedule)  # the largest block
    np.testing.assert_allclose(whole[0], x.sum(), rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dynamic_shared_memory_kernels(schedule, rng):
    mod = module("dynamic_shared", F64)
    n, threads, blocks = 1000, 128, 8
    x = rng.standard_normal(n)
    y = np.zeros(n)
    positive = np.zeros(blocks, np.int32)
    mod.get_function("reverse_chunks")((blocks,), (threads,), (x, y, positive, np.int32(n)),
                                       shared_mem=threads * 8, schedule=schedule, guard=True)
    padded = np.zeros(blocks * threads)
    padded[:n] = x
    chunks = padded.reshape(blocks, threads)
    np.testing.assert_array_equal(y, chunks[:, ::-1].reshape(-1)[:n])
    np.testing.assert_array_equal(positive, (chunks > 0).sum(axis=1))

    x4 = rng.standard_normal(4096).astype(np.float32)
    y4 = np.zeros_like(x4)
    mod.get_function("copy_float4")((4,), (256,), (x4, y4, np.int32(1024)), shared_mem=256 * 16,
                                    schedule=schedule, guard=True)
    np.testing.assert_array_equal(y4, x4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_atomics_kernel_matches_numpy(schedule, rng):
    n, classes = 5000, 10
    labels = rng.integers(0, classes, n).astype(np.int32)
    values = rng.standard_normal(n).astype(np.float32)
    counts = np.zeros(classes, np.int32)
    sums = np.zeros(classes, np.float32)
    module("atomics").get_function("class_histogram")(
        (7,), (128,), (labels, values, np.int32(n), counts, sums), schedule=schedule, guard=True)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=classes))
    np.testing.assert_allclose(sums, np.bincount(labels, values.astype(np.float64) ** 2, minlength=classes),
                               rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_correct_kernels_pass_the_race_check(schedule, rng):
    """No false alarms: barriers, __syncwarp and shared-memory atomics order accesses (the block sum's
    warp shuffles move register values only)."""
    a = rng.standard_normal((40, 24)).astype(np.float32)
    b = rng.standard_normal((24, 20)).astype(np.float32)
    c = np.zeros((40, 20), np.float32)
    module("sgemm").get_function("sgemm")((2, 3), (16, 16), (a, b, c, np.int32(40), np.int32(20), np.int32(24)),
                                          schedule=schedule, race=True)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    x = rng.standard_normal(3000)
    partial = np.zeros(3)
    module("reduce", F64).get_function("block_sum")((3,), (256,), (x, partial, np.int32(x.size)),
                                                    schedule=schedule, race=True)
    np.testing.assert_allclose(partial.sum(), x.sum(), rtol=1e-12)
    labels = rng.integers(0, 12, 2000).astype(np.int32)
    counts = np.zeros(12, np.int32)
    module("atomics").get_function("class_histogram_shared")(
        (4,), (96,), (labels, np.int32(2000), np.int32(12), counts), shared_mem=12 * 4, schedule=schedule, race=True)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=12))
    xs = rng.standard_normal(512).astype(np.float32)
    sums = np.zeros(16, np.float32)
    bugs().get_function("warp_sums_synced")((2,), (256,), (xs, sums), schedule=schedule, race=True)
    np.testing.assert_allclose(sums, xs.reshape(16, 32).sum(axis=1), rtol=1e-5, atol=1e-5)


# --- planted bugs -------------------------------------------------------------------------------

def bugs():
    return module("planted_bugs")


def at_line(snippet: str) -> str:
    """`planted_bugs.cu:N` of the line holding `snippet`, as fault reports name it."""
    lines = (KERNELS / "planted_bugs.cu").read_text().splitlines()
    (number,) = [i + 1 for i, line in enumerate(lines) if snippet in line]
    return f"{KERNELS / 'planted_bugs.cu'}:{number} "


def test_missing_barrier_is_caught_by_the_schedules(rng):
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    blocks = (n + 255) // 256
    padded = np.zeros(blocks * 256, np.float32)
    padded[:n] = x
    expected = np.roll(padded.reshape(blocks, 256), -1, axis=1).reshape(-1)[:n]
    results = {}
    for name in ("rotate_with_barrier", "rotate_missing_barrier"):
        for schedule in SCHEDULES:
            y = np.zeros(n, np.float32)
            bugs().get_function(name)((blocks,), (256,), (x, y, np.int32(n)), schedule=schedule, seed=1)
            results[name, schedule] = np.array_equal(y, expected)
    assert all(results["rotate_with_barrier", s] for s in SCHEDULES)
    assert not all(results["rotate_missing_barrier", s] for s in SCHEDULES)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_names_both_sides_of_a_missing_barrier(schedule, rng):
    x = rng.standard_normal(300).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"shared memory race on tile \(byte \d+, in rotate_missing_barrier\)"
                       ) as info:
        bugs().get_function("rotate_missing_barrier")((2,), (256,), (x, np.zeros_like(x), np.int32(300)),
                                                       schedule=schedule, race=True)
    store, load = at_line("each thread stores its element"), at_line("BUG: no __syncthreads()")
    fault = str(info.value)
    assert {info.value.source.split()[0], fault.split("other thread")[1].split(" at ")[1].split()[0]} == {
        store.split()[0], load.split()[0]}


def test_race_check_finds_warp_synchronous_code_without_syncwarp(rng):
    xs = rng.standard_normal(256).astype(np.float32)
    with pytest.raises(emu.KernelFault, match="shared memory race on partial") as info:
        bugs().get_function("warp_sums_unsynced")((1,), (256,), (xs, np.zeros(8, np.float32)), race=True)
    assert f"at {at_line('BUG: no __syncwarp()')}" in str(info.value)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_is_not_ordered_by_shuffles_or_votes(schedule, rng):
    """CUDA orders the lanes' memory accesses at a __syncwarp() only: warp sums through shared
    memory whose steps exchange a shuffle or a vote instead race, also a half warp's shuffle over
    its lanes; with __syncwarp() they do not."""
    xs = rng.standard_normal(256).astype(np.float32)
    sums = np.zeros(8, np.float32)
    kernel = bugs().get_function("warp_sums_exchanged")
    kernel((1,), (256,), (xs, sums, np.int32(2)), schedule=schedule, race=True)
    np.testing.assert_allclose(sums, xs.reshape(8, 32).sum(axis=1), rtol=1e-5, atol=1e-5)
    for mode in (0, 1):
        with pytest.raises(emu.KernelFault, match="shared memory race on partial"):
            kernel((1,), (256,), (xs, sums, np.int32(mode)), schedule=schedule, race=True)
    with pytest.raises(emu.KernelFault, match="shared memory race on partial"):
        bugs().get_function("half_warp_sums")((2,), (64,), (xs[:128], sums, np.int32(3)), schedule=schedule,
                                              race=True)

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_orders_the_lanes_of_a_partial_syncwarp(schedule, rng):
    """__syncwarp(mask) orders the memory accesses of the mask's lanes: each half of a warp sums its
    values in shared memory with no race; without the __syncwarp() the steps race, and the upper half
    reading the lower half's value races with the lower half's last step."""
    x = rng.standard_normal(128).astype(np.float32)
    sums = np.zeros(8, np.float32)
    bugs().get_function("half_warp_sums")((2,), (64,), (x, sums, np.int32(1)), schedule=schedule, seed=3, race=True)
    np.testing.assert_allclose(sums, x.reshape(8, 16).sum(axis=1), rtol=1e-5, atol=1e-5)
    for mode in (0, 2):
        with pytest.raises(emu.KernelFault, match="shared memory race on partial"):
            bugs().get_function("half_warp_sums")((2,), (64,), (x, sums, np.int32(mode)), schedule=schedule, seed=3,
                                                  race=True)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_orders_lanes_through_a_chain_of_partial_syncwarps(schedule):
    """Lane 0 writes, lanes 0-1 then lanes 1-2 sync, lane 2 reads: ordered through lane 1. Without
    the second sync, lane 2 shares no exchange with lane 0: a race."""
    x, y = np.array([3.5], np.float32), np.zeros(1, np.float32)
    bugs().get_function("syncwarp_chain")((1,), (32,), (x, y, np.int32(1)), schedule=schedule, seed=4, race=True)
    assert y[0] == 3.5
    with pytest.raises(emu.KernelFault, match="shared memory race on value"):
        bugs().get_function("syncwarp_chain")((1,), (32,), (x, y, np.int32(0)), schedule=schedule, seed=4,
                                              race=True)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_keeps_a_reader_of_another_warp(schedule):
    """64 threads read a word, warp 0 reads it again, and after its __syncwarp() lane 0 overwrites
    it: a race with warp 1's reads, found in every schedule, also where warp 0 both read first and
    read last (forward: the check kept the first and the latest reader, both ordered before the
    write, and missed it). With a __syncthreads() before the write: no race."""
    y = np.zeros(64, np.float32)
    bugs().get_function("reread_then_overwrite")((1,), (64,), (y, np.int32(1)), schedule=schedule, seed=6,
                                                 race=True)
    np.testing.assert_array_equal(y, [2.0] * 32 + [1.0] * 32)
    with pytest.raises(emu.KernelFault, match="shared memory race on value") as info:
        bugs().get_function("reread_then_overwrite")((1,), (64,), (y, np.int32(0)), schedule=schedule, seed=6,
                                                     race=True)
    assert "writes a word read by thread" in str(info.value) and f"at {at_line('warp 1 read value')}" in str(info.value)


def test_race_check_covers_global_memory_between_threads_and_blocks(rng):
    x = rng.standard_normal(64).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'out' \(element 0\).*another block"):
        bugs().get_function("blocks_write_one_element")((4,), (32,), (x, np.zeros(4, np.float32)), race=True)
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'out' \(element \d+\).*thread") as info:
        bugs().get_function("threads_write_one_element")((1,), (64,), (x, np.zeros(32, np.float32)), race=True,
                                                          guard=True)
    assert info.value.source.startswith(at_line("out[threadIdx.x / 2] = x[threadIdx.x];"))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_orders_atomics_against_plain_accesses(schedule, rng):
    """An atomic is a write to the race check: atomics of one word never conflict, a barrier orders
    them before a plain read, and without it the read is reported, from whichever side comes second."""
    x = rng.standard_normal(3 * 64).astype(np.float32)
    out = np.zeros(3, np.float32)
    bugs().get_function("shared_total")((3,), (64,), (x, out, np.int32(1)), schedule=schedule, seed=4, race=True)
    expected = x.reshape(3, 64)[:, 1:].astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(emu.KernelFault, match=r"shared memory race on total \(byte 0, in shared_total\): this "
                                              r"thread (reads a word updated atomically by thread [1-9]\d*|"
                                              r"updates atomically a word read by thread 0) ") as info:
        bugs().get_function("shared_total")((3,), (64,), (x, out, np.int32(0)), schedule=schedule, seed=4,
                                            race=True)
    assert info.value.kind == "shared memory race"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_sees_an_atomic_whose_old_value_goes_unused(schedule):
    """atomicExch(&flag, 1) with its result unused still reads the word (the optimiser would drop a
    plain read there), so the race check sees it against the other threads' reads."""
    with pytest.raises(emu.KernelFault, match=r"shared memory race on flag .*(reads a word updated atomically by "
                                              r"thread 0|updates atomically a word read by thread [1-9])"):
        bugs().get_function("shared_flag_exchanged")((1,), (64,), (np.zeros(64, np.int32),), schedule=schedule,
                                                      seed=2, race=True)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_race_check_keeps_an_unordered_atomic_behind_an_ordered_one(schedule):
    """Thread 1 reads a total after __syncwarp(): its warp's atomic is ordered before the read, the
    other warps' are not, also where they came before it (reverse: the word's last atomic is
    thread 0's, and thread 32's is the one kept beside it)."""
    with pytest.raises(emu.KernelFault, match=r"shared memory race on total .*(updated atomically by|"
                                              r"updates atomically a word read by) thread \d+"):
        bugs().get_function("shared_total_warp_synced")((1,), (128,), (np.zeros(1, np.float32),),
                                                        schedule=schedule, seed=6, race=True)


def test_race_check_reports_an_atomic_over_another_blocks_store(rng):
    x = rng.standard_normal(4).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'out' \(element 0\): this thread "
                                              r"updates atomically a word written by thread 0 of another block"):
        bugs().get_function("blocks_add_over_a_store")((4,), (32,), (x, np.zeros(1, np.float32)), race=True,
                                                         schedule="forward")
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'out' \(element 0\): this thread "
                                              r"writes a word updated atomically by thread 0 of another block"):
        bugs().get_function("blocks_add_over_a_store")((4,), (32,), (x, np.zeros(1, np.float32)), race=True,
                                                         schedule="reverse")


def test_race_check_of_shared_memory_only_leaves_global_memory_out(rng):
    """race="shared": the missing barrier and warp sync in shared memory are still found, two blocks
    writing one element of an argument no longer; other values refused."""
    x = rng.standard_normal(300).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"shared memory race on tile"):
        bugs().get_function("rotate_missing_barrier")((2,), (256,), (x, np.zeros_like(x), np.int32(300)),
                                                       race="shared")
    xs = rng.standard_normal(256).astype(np.float32)
    with emu.checking(race="shared"), pytest.raises(emu.KernelFault, match="shared memory race on partial"):
        bugs().get_function("warp_sums_unsynced")((1,), (256,), (xs, np.zeros(8, np.float32)))
    bugs().get_function("blocks_write_one_element")((4,), (32,), (x[:64], np.zeros(4, np.float32)), race="shared")
    for bad in ("global", 2):
        with pytest.raises(ValueError, match="race must be True, False or 'shared'"):
            bugs().get_function("blocks_write_one_element")((4,), (32,), (x[:64], np.zeros(4, np.float32)), race=bad)


def test_out_of_bounds_global_write_faults_with_thread_and_line():
    y = np.zeros(1024, np.float32)
    with pytest.raises(emu.KernelFault) as info:
        bugs().get_function("write_one_past_end")((5,), (256,), (y, np.int32(1024)), guard=True)
    fault = info.value
    assert fault.kernel == "write_one_past_end" and "past the end of argument 'y'" in str(fault)
    assert fault.block == (4, 0, 0) and fault.thread == (0, 0, 0)
    assert fault.source.startswith(at_line("if (i <= n) y[i]"))
    assert not y.any(), "nothing is copied back from a faulting launch"


@pytest.mark.parametrize("n", [1021, 1022, 1023, 1024])  # every byte size modulo 16
def test_guard_zones_are_on_by_default_and_fault_at_once_past_the_end(n, rng):
    """An array ends right before its guard page whatever its size: a read or a write one element
    past the end faults at once, with block, thread and line (no alignment gap to land in)."""
    x = rng.standard_normal(n).astype(np.float32)
    with pytest.raises(emu.KernelFault, match="past the end of argument 'x'") as info:
        bugs().get_function("read_one_past_end")((5,), (256,), (x, np.zeros(n, np.float32), np.int32(n)))
    assert info.value.block == (n // 256, 0, 0) and info.value.thread == (n % 256, 0, 0)
    assert info.value.source.startswith(at_line("y[i < n ? i : 0] += x[i]"))
    y = np.zeros(n, np.float32)
    with pytest.raises(emu.KernelFault, match="past the end of argument 'y'") as info:
        bugs().get_function("write_one_past_end")((5,), (256,), (y, np.int32(n)))
    assert info.value.thread == (n % 256, 0, 0) and not y.any()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_view_keeps_its_misalignment_in_either_layout(schedule, rng):
    """Staged for a launch, a view starts off 16 bytes as far as it does in its allocation (as on a
    GPU, where allocations are aligned): one float into its allocation, 4096 floats fault on
    16-byte loads, though a copy ending right before the back page or starting right after the front
    one would be aligned; 4 floats in they take them. A view ending on 16 bytes of its allocation
    still ends right before the back page: a read one element past it faults at once."""
    copy = module("memory_patterns", F32).get_function("copy_float4")
    allocation = rng.standard_normal(4100).astype(np.float32)
    x, y = allocation[4:4100], np.zeros(4096, np.float32)
    copy((4,), (256,), (x, y, np.int32(1024)), schedule=schedule, seed=1)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(emu.KernelFault, match="misaligned address"):
        copy((4,), (256,), (allocation[1:4097], y, np.int32(1024)), schedule=schedule, seed=1)
    if schedule == "forward":
        with pytest.raises(emu.KernelFault, match="past the end of argument 'x'"):
            bugs().get_function("read_one_past_end")((4,), (256,), (allocation[1:1024], np.zeros(1023, np.float32),
                                                                    np.int32(1023)))


def test_reading_before_the_start_faults_in_the_other_layout(rng):
    """The forward schedule puts arrays against the page after them, reverse against the page before
    them: a sweep over the schedules faults on reads past either end. Where the read lands in the
    canary bytes in front instead, it reads 8.5e37 as a float (0xa5 bytes were -3e-16: what zero
    padding gives)."""
    x = rng.standard_normal(300).astype(np.float32)
    y = np.zeros(300, np.float32)
    kernel = bugs().get_function("read_one_before_start")
    kernel((2,), (256,), (x, y, np.int32(300)), schedule="forward")   # lands in canary bytes
    assert y[0] > 8e37 and np.array_equal(y[1:], x[:-1] + x[1:])
    with pytest.raises(emu.KernelFault, match="before the start of argument 'x'") as info:
        kernel((2,), (256,), (x, y, np.int32(300)), schedule="reverse")
    assert info.value.block == (0, 0, 0) and info.value.thread == (0, 0, 0)
    assert info.value.source.startswith(at_line("y[i] = x[i - 1] + x[i]"))
    faults = []
    for seed in range(4):   # random: the layout follows the seed's parity
        try:
            kernel((2,), (256,), (x, y, np.int32(300)), schedule="random", seed=seed)
        except emu.KernelFault:
            faults.append(seed)
    assert faults == [1, 3]


def test_a_misaligned_vector_access_faults():
    with pytest.raises(emu.KernelFault, match="not aligned to its type .*misaligned address") as info:
        bugs().get_function("misaligned_vector_load")((1,), (32,), (np.ones(160, np.float32), np.zeros(32, np.float32)))
    assert info.value.source.endswith("(in misaligned_vector_load)")   # the load's line, or its use's


def test_a_shift_by_the_width_faults():
    counts, y = np.arange(32, dtype=np.int32), np.zeros(32, np.uint32)
    bugs().get_function("shift_by_count")((1,), (32,), (counts, y))
    np.testing.assert_array_equal(y, 1 << counts.astype(np.uint64))
    counts[5] = 32
    with pytest.raises(emu.KernelFault, match="a shift by the operand's width or more") as info:
        bugs().get_function("shift_by_count")((1,), (32,), (counts, y))
    assert info.value.thread == (5, 0, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e9, -2.2e9])
def test_a_float_no_int_holds_faults(bad):
    x, y = np.linspace(-2e9, 2e9, 32).astype(np.float32), np.zeros(32, np.int32)
    bugs().get_function("float_to_int")((1,), (32,), (x, y))
    np.testing.assert_array_equal(y, np.trunc(x).astype(np.int32))
    x[7] = bad
    with pytest.raises(emu.KernelFault, match="converted to an integer type that cannot hold it") as info:
        bugs().get_function("float_to_int")((1,), (32,), (x, y))
    assert info.value.thread == (7, 0, 0)


def test_shared_poison_differs_by_schedule(rng):
    """fmaxf ignores the NaN poison, so an uninitialised maximum looks right under forward; the
    reverse schedule's poison (3.4e38) gives it away."""
    x = rng.random(64).astype(np.float32)
    y = np.zeros(1, np.float32)
    kernel = bugs().get_function("uninitialised_shared_max")
    kernel((1,), (64,), (x, y), schedule="forward")
    assert y[0] == x.max()
    kernel((1,), (64,), (x, y), schedule="reverse")
    assert y[0] == np.float32(np.frombuffer(b"\x7f" * 4, np.float32)[0]) > x.max()
    seen = set()
    for seed in range(3):
        kernel((1,), (64,), (x, y), schedule="random", seed=seed)
        seen.add(float(y[0]))
    assert len(seen) == 2 and float(x.max()) in seen   # 0xff, 0x7f and 0xc3 (-391.5: hidden too)


def test_float_to_int_intrinsics_saturate_as_on_a_gpu():
    """CUDA defines them for every input (NaN 0, out of range the nearest end): the emulator's used to
    be plain casts, which fault here since they are undefined in C++."""
    x = np.array([2.5, -2.5, 3.7, -3.7, np.nan, np.inf, -np.inf, 3e9, -3e9, 5e9, 1e30, -0.0], np.float32)
    rounded, unsigned_rounded = np.zeros(5 * x.size, np.int32), np.zeros(x.size, np.uint32)
    module("conversions").get_function("float_to_int_intrinsics")((1,), (32,), (x, rounded, unsigned_rounded,
                                                                               np.int32(x.size)))
    wide = x.astype(np.float64)

    def saturated(whole, low, high):
        return np.where(np.isnan(whole), 0, np.clip(np.nan_to_num(whole, posinf=high, neginf=low), low, high))

    int_range = (-2**31, 2**31 - 1)
    expected = np.stack([saturated(f(wide), *int_range) for f in (np.rint, np.trunc, np.floor, np.ceil, np.trunc)], 1)
    np.testing.assert_array_equal(rounded.reshape(-1, 5), expected)
    np.testing.assert_array_equal(unsigned_rounded, saturated(np.rint(wide), 0, 2**32 - 1))


def test_signed_int_overflow_wraps_as_on_a_gpu():
    """INT_MAX + 1 is INT_MIN on a GPU, and not greater than INT_MAX: the emulator's build makes signed
    overflow wrap (-fwrapv), where g++ -O2 folded the comparison to true (the conv walks wrap on purpose)."""
    out = np.zeros(2, np.int32)
    module("conversions").get_function("wrapping_int")((1,), (1,), (np.int32(2**31 - 1), np.int32(1), out))
    np.testing.assert_array_equal(out, [0, -2**31])


def test_fast_intrinsics_err_by_their_documented_bound(rng):
    """__expf, __logf and __fdividef: the correctly rounded result moved by the CUDA C++ Programming
    Guide's bound (__expf: 2 ulps after x log2(e) rounds to FP32; __logf: 3 ulps, 2^-21.41 absolute in
    [0.5, 2]; __fdividef: 2 ulps, 0 for a finite divisor past 2^126, NaN for an infinite dividend
    there), up for some inputs and down for others, and exact where the unit's result is a power of
    two (exp2 of 0, log2 of 1, 2 and 1/2, division by 1, 2 and 1/4)."""
    x = np.concatenate([rng.uniform(-80, 80, 500), rng.uniform(0.01, 100, 500)]).astype(np.float32)
    y = rng.uniform(0.5, 8, x.size).astype(np.float32)
    x[:6], y[:6] = [0, 1, 2, 0.5, 3, np.inf], [1, 2, 0.25, 1, 2**127, 2**127]
    out = np.zeros((x.size, 3), np.float32)
    module("conversions").get_function("fast_intrinsics")((32,), (32,), (x, y, out, np.int32(x.size)))
    np.testing.assert_array_equal(out[:4, 0], [1, *out[1:4, 0]])
    np.testing.assert_array_equal(out[:4, 1], [-np.inf, 0, np.float32(np.log(2)), -np.float32(np.log(2))])
    np.testing.assert_array_equal(out[:6, 2], [0, 0.5, 8, 0.5, 0, np.nan])
    wide, out, x, y = x[6:].astype(np.float64), out[6:].astype(np.float64), x[6:], y[6:]
    exact = np.stack([np.exp2((x * np.float32(1.44269504)).astype(np.float64)),
                      np.log(wide, where=wide > 0, out=np.full_like(wide, np.nan)), wide / y], 1)
    with np.errstate(over="ignore", invalid="ignore"):
        ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    error = out - exact
    finite = np.isfinite(out[:, 0])   # exp overflows past x = 88.7
    exp_error = error[finite, 0] / ulp[finite, 0]
    assert np.abs(exp_error).max() <= 2.6 and exp_error.min() < -1.5 and exp_error.max() > 1.5   # past libm's rounding
    near_one, elsewhere = (wide >= 0.5) & (wide <= 2), (wide > 0) & ((wide < 0.5) | (wide > 2))
    assert (np.abs(error[near_one, 1]) <= 2.0**-21.41).all()
    assert error[near_one, 1].min() < -2.0**-22 and error[near_one, 1].max() > 2.0**-22
    assert (np.abs(error[elsewhere, 1]) / ulp[elsewhere, 1] <= 3.6).all() and np.isnan(out[wide < 0, 1]).all()
    assert (np.abs(error[:, 2]) / ulp[:, 2] <= 2.6).all()


def _pattern_initialises_locals() -> bool:
    build = emu._build
    return build.compiler_accepts(build.compiler(), build.UNINITIALISED_LOCALS_FLAG)


def test_an_uninitialised_local_does_not_read_zero(rng):
    """On a fiber's fresh stack the sum would start at 0 and come out right; the pattern the
    compiler fills locals with (g++: 0xfe bytes, -1.7e38) gives it away."""
    if not _pattern_initialises_locals():
        pytest.skip("the C++ compiler has no -ftrivial-auto-var-init=pattern (g++ 12, clang 8)")
    x = rng.random((32, 8)).astype(np.float32)
    y = np.zeros(32, np.float32)
    bugs().get_function("uninitialised_local_sum")((1,), (32,), (x, y, np.int32(8)))
    assert np.all(~np.isfinite(y) | (np.abs(y) > 1e30))


@pytest.mark.parametrize("name", ["half_mask_shuffle", "half_mask_syncwarp"])
def test_a_lane_outside_its_warp_mask_faults(name):
    """Every lane takes part in the emulator's exchanges, so a mask must name each lane that runs it;
    one that leaves lanes out (undefined on a GPU) used to be ignored."""
    x, y = np.ones(32, np.float32), np.zeros(32, np.float32)
    args = (x, y) if name == "half_mask_shuffle" else (y,)
    with pytest.raises(emu.KernelFault, match=r"lane 16 runs a warp shuffle, vote or __syncwarp whose "
                                              r"mask 0x0000ffff leaves it out") as info:
        bugs().get_function(name)((1,), (32,), args)
    assert info.value.kind == "warp mask" and info.value.thread == (16, 0, 0) and f"(in {name})" in info.value.source
    bugs().get_function("half_mask_shuffle")((1,), (16,), (x, y))   # a 16-lane warp: the mask holds it all


def test_guard_false_opts_out_of_guard_zones():
    base = np.zeros(1024, np.float32)
    bugs().get_function("write_one_past_end")((4,), (256,), (base[:1023], np.int32(1023)), guard=False)
    assert base[1023] == 2046  # unguarded, the write lands in whatever follows the view
    with emu.checking(guard=False):
        bugs().get_function("write_one_past_end")((4,), (256,), (base[:1022], np.int32(1022)))
    assert base[1022] == 2044


def test_correct_launch_with_guard_copies_results_back():
    y = np.zeros(1024, np.float32)
    bugs().get_function("write_one_past_end")((4,), (256,), (y[:1023], np.int32(1022)), guard=True)
    np.testing.assert_array_equal(y[:1023], 2.0 * np.arange(1023, dtype=np.float32))
    assert y[1023] == 0


@pytest.mark.parametrize("shared_floats", [256, 1024])  # ends mid-page (canary) / on a page (guard page)
def test_dynamic_shared_memory_overrun_is_reported(shared_floats):
    y = np.zeros(2 * shared_floats, np.float32)
    with pytest.raises(emu.KernelFault, match="shared memory") as info:
        bugs().get_function("shared_overrun")((2,), (shared_floats,), (y,), shared_mem=4 * shared_floats,
                                              guard=True)
    if shared_floats == 1024:
        assert info.value.thread == (1023, 0, 0)
        assert info.value.source.startswith(at_line("buffer[threadIdx.x + 1] ="))



DYNAMIC_SHARED_PAST_END = """
extern "C" __global__ void shifted(float* out, int offset, int store) {
    extern __shared__ float d[];
    d[threadIdx.x] = 1.0f;
    __syncthreads();
    if (store) d[threadIdx.x + offset] = 2.0f;
    else out[threadIdx.x] = d[threadIdx.x + offset];
}"""


@pytest.mark.parametrize("store", [0, 1])
def test_the_instrumented_build_faults_at_once_past_dynamic_shared_memory(store):
    """In a dynamic shared buffer that ends mid-page, what lies past its end is a canary, not a
    page: the plain build reads it unseen (0x7e bytes) and reports a write only after the block.
    The instrumented build (race=True, profiles) faults at the access, with its thread and line."""
    kernel = emu.RawModule(code=DYNAMIC_SHARED_PAST_END).get_function("shifted")
    out = np.zeros(32, np.float32)
    kernel((1,), (32,), (out, np.int32(0), np.int32(store)), shared_mem=128, race=True)   # in bounds: fine
    verb = "write" if store else "read"
    with pytest.raises(emu.KernelFault, match=f"{verb} past the end of the 128 bytes of dynamic shared memory") \
            as info:
        kernel((1,), (32,), (out, np.int32(1), np.int32(store)), shared_mem=128, race=True)
    line = 1 + DYNAMIC_SHARED_PAST_END.splitlines().index(
        "    if (store) d[threadIdx.x + offset] = 2.0f;" if store else "    else out[threadIdx.x] = d[threadIdx.x + offset];")
    assert info.value.thread == (31, 0, 0) and info.value.source.startswith(f"<code>:{line} ")

@pytest.mark.parametrize("race", [False, True])
@pytest.mark.parametrize("store", [0, 1])
@pytest.mark.parametrize("offset, where", [
    (100_000, "past the end of the 128 bytes of dynamic shared memory, at byte 400000"),  # past the capacity
    (-1_000, "before the start of dynamic shared memory, at byte -4000"),
    (-200_000, "before the start of dynamic shared memory, at byte -800000"),
])
def test_a_far_off_dynamic_shared_index_faults(offset, where, store, race):
    """An index far outside dynamic shared memory (a wrong stride or sign: a GPU faults on it) lands
    in an inaccessible zone of 1 MiB on either side instead of the library's other data, in the
    plain and the instrumented build; the message says how far off it was."""
    kernel = emu.RawModule(code=DYNAMIC_SHARED_PAST_END.replace("threadIdx.x + offset", "(int)threadIdx.x + offset")
                           ).get_function("shifted")
    out = np.zeros(32, np.float32)
    with pytest.raises(emu.KernelFault, match=where) as info:
        kernel((1,), (32,), (out, np.int32(offset), np.int32(store)), shared_mem=128, race=race)
    assert info.value.kind == "shared memory overrun" and info.value.thread == (0, 0, 0)
    kernel((1,), (32,), (out, np.int32(0), np.int32(store)), shared_mem=128, race=race)   # and in bounds, fine


STATIC_SHARED_KERNELS = ("static_shared_offset", "template_shared_offset")


def _static_shared_args(name, x, y, offset, store=True):
    return (x, y, np.int32(offset)) + ((np.int32(store),) if name == "static_shared_offset" else ())


@pytest.mark.parametrize("race", [False, True])
@pytest.mark.parametrize("name", STATIC_SHARED_KERNELS)
def test_static_shared_arrays_in_bounds_run_clean(name, race, rng):
    x = rng.standard_normal(256).astype(np.float32)
    y = np.zeros_like(x)
    bugs().get_function(name)((2,), (128,), _static_shared_args(name, x, y, 0), race=race, schedule="random", seed=5)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("race", [False, True])   # after the block (canaries) / at the store (instrumented)
@pytest.mark.parametrize("name, offset, place", [
    ("static_shared_offset", 1, "byte 0 past the end of __shared__ array first (in static_shared_offset)"),
    ("static_shared_offset", -1, "4 bytes before the start of __shared__ array first"),
    ("template_shared_offset", 1,
     "byte 0 past the end of __shared__ array values (in through_template_array<128>(float, int))"),
])
def test_a_store_out_of_a_static_shared_array_is_reported(name, offset, place, race, rng):
    """Each static __shared__ array has a guard zone on either side: the store does not land
    silently in the next array."""
    x = rng.standard_normal(256).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"write at " + re.escape(place)) as info:
        bugs().get_function(name)((2,), (128,), _static_shared_args(name, x, np.zeros_like(x), offset), race=race)
    assert info.value.kind == "shared memory overrun"
    if race:
        assert info.value.thread == ((127 if offset > 0 else 0), 0, 0)
        snippet = "first[store ? t + offset" if name == "static_shared_offset" else "values[(int)threadIdx.x + offset]"
        assert info.value.source.startswith(at_line(snippet))


@pytest.mark.parametrize("race", [False, True])
@pytest.mark.parametrize("store", [True, False])
@pytest.mark.parametrize("offset, place", [
    (100_000, r"byte \d+ past the end of __shared__ array \w+"),     # 400 KB past: beyond every array
    (-200_000, r"\d+ bytes before the start of __shared__ array \w+"),   # 800 KB before
])
def test_a_far_off_static_shared_index_faults(offset, place, store, race, rng):
    """An index far outside the static __shared__ arrays (a wrong stride or sign: a GPU faults on it)
    lands in an inaccessible zone of 1 MiB before the first and after the last array, in the plain
    and the instrumented build, not in the library's other data; the message places it."""
    x = rng.standard_normal(256).astype(np.float32)
    kernel = bugs().get_function("static_shared_offset")
    with pytest.raises(emu.KernelFault, match=r"access at " + place) as info:
        kernel((2,), (128,), _static_shared_args("static_shared_offset", x, np.zeros_like(x), offset, store),
               race=race)
    assert info.value.kind == "shared memory overrun" and info.value.block == (0, 0, 0)


def test_static_shared_arrays_take_no_room_in_the_module_file():
    """The static __shared__ arrays' section and its far zones are NOBITS: megabytes of address space,
    no bytes of the library file (as .bss)."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    for instrumented in (False, True):
        path = bugs()._library(instrumented).path
        header = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
        line = next(line for line in header.splitlines() if " cnn_gpu_emu_shared " in line)
        fields = line.split("]", 1)[1].split()
        assert fields[1] == "NOBITS" and int(fields[4], 16) >= 2 * FAR_GUARD_BYTES, line


@pytest.mark.parametrize("race", [False, True])
@pytest.mark.parametrize("offset, place", [(1, "byte 0 past the end of"), (-1, "4 bytes before the start of")])
@pytest.mark.parametrize("declaration", ["first[128], second[128];", "first[128],  // two lines\n        second[128];"],
                         ids=["one_line", "two_lines"])
def test_arrays_declared_together_get_a_guard_zone_each(declaration, offset, place, race, rng):
    """`__shared__ float first[128], second[128];` is one declaration: the emulator splits it, so a
    store out of `first` on either side lands in a zone rather than silently in `second`; on one
    line or several, the lines after it keeping their numbers."""
    code = ('extern "C" __global__ void __launch_bounds__(128) together(const float* x, float* y, int offset) {\n'
            f'    __shared__ float {declaration}\n'
            '    const int t = threadIdx.x;\n'
            '    second[t] = -1.0f;\n'
            '    first[t + offset] = x[t];\n'
            '    __syncthreads();\n'
            '    y[t] = first[t] + second[t];\n'
            '}\n')
    kernel = emu.RawModule(code=code).get_function("together")
    x = rng.standard_normal(128).astype(np.float32)
    y = np.zeros_like(x)
    kernel((1,), (128,), (x, y, np.int32(0)), race=race)
    np.testing.assert_array_equal(y, x - np.float32(1))
    with pytest.raises(emu.KernelFault, match=rf"write at {place} __shared__ array first") as info:
        kernel((1,), (128,), (x, y, np.int32(offset)), race=race)
    if race:   # at the store, on its line (first[t + offset] = x[t]: 5, or 6 below a two-line declaration)
        line = 5 + declaration.count("\n")
        assert info.value.thread == ((127 if offset > 0 else 0), 0, 0)
        assert info.value.source.startswith(f"<code>:{line} ")


def test_only_plain_shared_declarations_are_split():
    from cnn_gpu.emu._build import one_array_per_shared_declaration as split
    assert split("  volatile __shared__ unsigned int tile[2][64], table[N + 1], *p; int n;") == \
        "  volatile __shared__ unsigned int tile[2][64]; volatile __shared__ unsigned int table[N + 1]; " \
        "volatile __shared__ unsigned int *p; int n;"
    # over several lines (their comments dropped), the line breaks kept after the declarations
    assert split("static\n__shared__ float a[8],  // the first\n    b[8];\nint n;") == \
        "static __shared__ float a[8]; static __shared__ float b[8];\n\n\nint n;"
    assert split("char q = '\"'; __shared__ float a[8], b[8]; puts(\"x\");") == \
        "char q = '\"'; __shared__ float a[8]; __shared__ float b[8]; puts(\"x\");"
    for whole in ("__shared__ float a[32];", "__shared__ __align__(16) float a[8], b[8];",
                  "__shared__ Pair<int, float> p[4], q[4];", "__shared__ float a[8],\n#if WIDE\n b[8];\n#endif",
                  "// __shared__ arrays, then\nfloat x, y;", "/* __shared__ float a, b; */ int q;",
                  'puts("__shared__ float a, b;");', "extern cnn_gpu_emu_dynamic_shared_decl float s[];",
                  "#define TILES \\\n    __shared__ float a[32], \\\n        b[32];"):
        assert split(whole) == whole


@pytest.mark.parametrize("offset, place", [(1, "byte 0 past the end of"), (-2, "8 bytes before the start of")])
def test_a_load_out_of_a_static_shared_array_is_reported_by_the_instrumented_build(offset, place, rng):
    """The plain build checks the zones' canaries after each block, so it sees stores only; the
    instrumented one (race=True, profiles) checks every access."""
    x = rng.standard_normal(256).astype(np.float32)
    args = _static_shared_args("static_shared_offset", x, np.zeros_like(x), offset, store=False)
    with pytest.raises(emu.KernelFault, match=r"read at " + re.escape(place) + " __shared__ array first") as info:
        bugs().get_function("static_shared_offset")((2,), (128,), args, race=True)
    assert info.value.thread == ((127 if offset > 0 else 0), 0, 0)
    assert info.value.source.startswith(at_line("first[store ? t : t + offset]"))


@pytest.mark.parametrize("offset, threads", [(1, [127]), (-2, [0, 1])])
def test_a_load_out_of_a_static_shared_array_in_the_plain_build_reads_a_loud_value(offset, threads, rng):
    """The plain build sees no load from a guard zone, but the load reads 8.5e37 (canary bytes),
    not a value near 0 that a sum would hide."""
    x = rng.standard_normal(256).astype(np.float32)
    y = np.zeros_like(x)
    bugs().get_function("static_shared_offset")((2,), (128,), _static_shared_args("static_shared_offset", x, y,
                                                                                  offset, store=False))
    outside = [block * 128 + t for block in range(2) for t in threads]
    assert (y[outside] > 8e37).all()
    inside = np.setdiff1d(np.arange(256), outside)
    np.testing.assert_array_equal(y[inside], x[inside + offset])


def test_guard_false_leaves_the_static_shared_guard_zones_unchecked(rng):
    x = rng.standard_normal(256).astype(np.float32)
    y = np.zeros_like(x)
    bugs().get_function("static_shared_offset")((2,), (128,), _static_shared_args("static_shared_offset", x, y, 1),
                                                guard=False)
    np.testing.assert_array_equal(y[129:256], x[128:255])   # each thread read its neighbour's element


@pytest.mark.parametrize("name", ["planted_bugs", "lambda_template_shared"])
def test_every_static_shared_array_lies_between_guard_zones(name):
    from cnn_gpu.emu import _build, _module
    library = module(name)._library(False)
    state = library.state
    count = (state.static_shared_guards_end - state.static_shared_guards) // 16
    table = np.ctypeslib.as_array((ctypes.c_ulonglong * (2 * count)).from_address(state.static_shared_guards))
    zones = [(state.static_shared_begin + offset, size) for offset, size in table.reshape(count, 2).tolist()]
    module_address, symbols = _module._data_symbols(str(library.path))
    shift = library.state_address - module_address
    arrays = sorted((start + shift, size) for start, size, _ in symbols
                    if state.static_shared_begin <= start + shift < state.static_shared_end and size)
    assert len(arrays) >= 3 and len(zones) == len(arrays) + 1
    assert zones[0][0] == state.static_shared_begin
    for (start, size), (zone_before, before_size), (zone_after, after_size) in zip(arrays, zones, zones[1:]):
        assert zone_before + before_size <= start and zone_after == start + size
        assert before_size >= _build.SHARED_GUARD_BYTES and after_size >= _build.SHARED_GUARD_BYTES
    assert zones[-1][0] + zones[-1][1] == state.static_shared_end


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("max_dynamic, shared_mem, refused", [
    (None, 16 * 1024, False),             # 32 KB of arrays + 16 KB: CUDA's 48 KB exactly
    (None, 16 * 1024 + 256, True),
    (48 * 1024, 48 * 1024, False),        # set to its default value: still the opt-in, 32 + 48 KB
    (100 * 1024, 64 * 1024, False),       # opted in: 32 KB + 100 KB within 227 KB
    (200 * 1024, 1024, True),             # 32 KB + 200 KB past it
])
def test_static_and_dynamic_shared_memory_past_the_limit_are_refused(max_dynamic, shared_mem, refused, schedule):
    kernel = bugs().get_function("static_and_dynamic_shared")
    kernel = type(kernel)(kernel.module, kernel.name, kernel.parameter_names, kernel.parameter_access)
    if max_dynamic:
        kernel.max_dynamic_shared_size_bytes = max_dynamic
    y = np.zeros(64, np.float32)
    if not refused:
        kernel((2,), (64,), (y,), shared_mem=shared_mem, schedule=schedule)
        np.testing.assert_array_equal(y, 3.0)
        return
    with pytest.raises(emu.KernelFault, match=r"too much shared memory: the first block wrote 32768 bytes of "
                                              r"__shared__ arrays, over the \d+ this launch leaves them") as info:
        kernel((2,), (64,), (y,), shared_mem=shared_mem, schedule=schedule)
    assert info.value.kind == "launch setup"


def test_only_the_arrays_a_kernel_writes_count_against_the_shared_memory_limit():
    """One declaration of two 24 KB arrays, the kernel using one: 24 KB + 24 KB dynamic is CUDA's 48 KB."""
    kernel = bugs().get_function("second_of_two_arrays")
    state = bugs()._library(False).state
    arrays = state.static_shared_arrays
    for table in (arrays, None):   # the library's symbols, or without them the spans between the guard zones
        state.static_shared_arrays = table
        y = np.zeros(64, np.float32)
        try:
            kernel((2,), (64,), (y,), shared_mem=24 * 1024)
        finally:
            state.static_shared_arrays = arrays
        np.testing.assert_array_equal(y, 6143.0 - np.arange(64) + 1.0)
        with pytest.raises(emu.KernelFault, match="the first block wrote 24576 bytes"):
            state.static_shared_arrays = table
            try:
                kernel((2,), (64,), (y,), shared_mem=24 * 1024 + 256)
            finally:
                state.static_shared_arrays = arrays


def test_the_shared_array_table_outlives_a_second_module_of_the_same_library():
    """Two RawModules of one source share the loaded library and its module state: dropping one
    must not leave the state pointing at a freed table of the arrays (it crashed a CI run)."""
    script = textwrap.dedent(f"""
        import gc
        import numpy as np
        from cnn_gpu import emu
        path = {str(KERNELS / "planted_bugs.cu")!r}
        kernel = emu.RawModule(path=path, options=("-DREAL=float",)).get_function("second_of_two_arrays")
        for _ in range(20):
            other = emu.RawModule(path=path, options=("-DREAL=float",))
            other.get_function("second_of_two_arrays")
            del other
            gc.collect()
            reuse = [np.full(14000, 0xAB, np.uint64).copy() for _ in range(100)]   # over the freed memory
            y = np.zeros(64, np.float32)
            kernel((2,), (64,), (y,), shared_mem=24 * 1024)
            assert (y == 6143.0 - np.arange(64) + 1.0).all()
        print("ok")
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_divergent_barrier_is_a_fault():
    with pytest.raises(emu.KernelFault, match="divergent __syncthreads") as info:
        bugs().get_function("divergent_barrier")((1,), (64,), (np.zeros(64, np.float32),))
    first, second = at_line("the first half waits here"), at_line("the second half waits here")
    assert info.value.source.startswith(second) and f"other thread (0, 0, 0) at {first}" in str(info.value)


BARRIERS_ON_ONE_LINE = textwrap.dedent("""
    __device__ void helper_barrier(float* y) {
    #line 500 "helper.cuh"
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    }
    extern "C" __global__ void split(float* y, int divergent) {
        if (divergent && threadIdx.x < 32) {
            helper_barrier(y);
        } else {
    #line 500 "split.cu"
            __syncthreads();
            y[threadIdx.x] = 2.0f;
        }
    }""")


def test_barriers_on_the_same_line_of_different_files_are_different_barriers():
    """A barrier is its file and line: a helper's barrier and a kernel's on the same line number
    are two barriers."""
    split = emu.RawModule(code=BARRIERS_ON_ONE_LINE).get_function("split")
    y = np.zeros(64, np.float32)
    split((1,), (64,), (y, np.int32(0)))
    np.testing.assert_array_equal(y, 2.0)
    with pytest.raises(emu.KernelFault, match="divergent __syncthreads") as info:
        split((1,), (64,), (y, np.int32(1)))
    assert "split.cu:500 (in split)" in info.value.source and "helper.cuh:500 (in helper_barrier" in str(info.value)


def test_barrier_some_threads_never_reach_is_a_fault(rng):
    x = rng.standard_normal(300).astype(np.float32)
    with pytest.raises(emu.KernelFault, match="reached by 44 of 256") as info:
        bugs().get_function("barrier_after_return")((2,), (256,), (x, np.zeros_like(x), np.int32(300)))
    assert info.value.block == (1, 0, 0)


def test_shuffle_with_exited_lanes_is_a_fault():
    with pytest.raises(emu.KernelFault, match="exited lanes"):
        bugs().get_function("shuffle_after_exit")((1,), (64,), (np.ones(64, np.float32),))


def test_watchdog_ends_an_endless_loop():
    flag = np.zeros(1, np.float32)
    with pytest.raises(emu.KernelFault, match="watchdog") as info:
        bugs().get_function("wait_forever")((1,), (32,), (flag,), timeout=0.3)
    assert info.value.source.startswith(at_line("while (f[0] == 0.0f)"))


def test_watchdog_extremes_neither_hang_nor_fire_early():
    """A timeout far below the tick (which once armed a 1 ns periodic timer that starved the
    process) still ends a hung kernel; an infinite one (which once made a deadline in the past)
    lets a kernel run past the first tick. In a subprocess: the first bug hangs for good."""
    script = textwrap.dedent(f"""
        import numpy as np
        from cnn_gpu import emu
        bugs = emu.RawModule(path={str(KERNELS / "planted_bugs.cu")!r}, options=("-DREAL=float",))
        try:
            bugs.get_function("wait_forever")((1,), (32,), (np.zeros(1, np.float32),), timeout=1e-6)
        except emu.KernelFault as fault:
            print(fault.kind)
        spin = emu.RawModule(code='extern "C" __global__ void spin(int* y, int n) '
                                  '{{ volatile int s = 0; for (int i = 0; i < n; ++i) s = s + 1; y[0] = s; }}')
        y = np.zeros(1, np.int32)
        spin.get_function("spin")((1,), (1,), (y, np.int32(200_000_000)), timeout=float("inf"))
        print(y[0])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["watchdog timeout", "200000000"], done.stderr
    with pytest.raises(ValueError, match="timeout"):
        bugs().get_function("wait_forever")((1,), (32,), (np.ones(1, np.float32),), timeout=float("nan"))


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_bad_timeout_in_the_environment_is_refused_before_launching(value, monkeypatch):
    monkeypatch.setenv("CNN_GPU_EMU_TIMEOUT", value)
    with pytest.raises(ValueError, match="CNN_GPU_EMU_TIMEOUT must be a positive number"):
        bugs().get_function("wait_forever")((1,), (32,), (np.ones(1, np.float32),))  # the flag is set


def test_segfault_and_stack_overflow_are_faults_not_crashes():
    y = np.zeros(64, np.float32)
    with pytest.raises(emu.KernelFault, match="SIGSEGV") as info:
        bugs().get_function("null_dereference")((1,), (64,), (y, np.int32(0)))
    assert info.value.thread == (0, 0, 0)
    assert info.value.source.startswith(at_line("nowhere[offset + threadIdx.x]"))
    with pytest.raises(emu.KernelFault, match="stack overflow"):
        bugs().get_function("huge_stack_frame")((1,), (4,), (y, np.int32(5)))
    # the process and the emulator are still fine afterwards
    test_correct_launch_with_guard_copies_results_back()


# --- argument checking (CuPy's marshalling rules) ------------------------------------------------

def test_python_int_for_int_parameter_is_a_type_error():
    with pytest.raises(TypeError, match=r"'write_one_past_end' parameter 1 'n' \(int\).*Python int"):
        bugs().get_function("write_one_past_end")((1,), (32,), (np.zeros(32, np.float32), 31))


def test_float64_array_for_float_pointer_is_a_type_error():
    with pytest.raises(TypeError, match=r"parameter 0 'y' \(float\*\): expected a float32 array, got a float64"):
        bugs().get_function("write_one_past_end")((1,), (32,), (np.zeros(32), np.int32(31)))



def test_a_float16_pointer_names_its_dtype_when_given_another():
    """A half_bits* parameter (the float16 builds' REAL) given a float32 array: a TypeError naming
    float16, as for the other dtypes (the message's dtype table lacked it: KeyError 'f2')."""
    mod = emu.RawModule(code=textwrap.dedent("""
        struct half_bits { unsigned short x; };
        extern "C" __global__ void widen(const half_bits* h, float* out) { out[0] = h[0].x; }"""))
    with pytest.raises(TypeError, match=r"parameter 0 'h' \(half_bits\*\): expected a float16 array, got a "
                                        r"float32"):
        mod.get_function("widen")((1,), (1,), (np.ones(1, np.float32), np.zeros(1, np.float32)))


def test_race_check_says_when_array_arguments_are_too_large_for_it():
    """race=True checks the array arguments up to RACE_CHECK_GLOBAL_LIMIT bytes of them: past it a
    launch checks shared memory only, and says so, so that a large unrelated argument cannot hide a
    race on a small one without a word."""
    from cnn_gpu.emu import _module
    kernel = emu.RawModule(code=textwrap.dedent("""
        extern "C" __global__ void handoff(float* buf, float* big) {
            if (blockIdx.x == 0) buf[0] = big[0]; else buf[1] = buf[0];
        }""")).get_function("handoff")
    buf = np.zeros(2, np.float32)
    with pytest.raises(emu.KernelFault, match="global memory race"):
        kernel((2,), (1,), (buf, np.ones(16, np.float32)), race=True)
    big = np.ones(_module.RACE_CHECK_GLOBAL_LIMIT // 4 + 1, np.float32)
    with pytest.warns(RuntimeWarning, match=r"race check of 'handoff': its array arguments hold \d+ bytes, over the "
                                            r"8 MiB the global-memory check covers"):
        kernel((2,), (1,), (buf, big), race=True)

def test_wrong_argument_count_is_a_type_error():
    with pytest.raises(TypeError, match=r"takes 2 arguments \(y, n\), got 3"):
        bugs().get_function("write_one_past_end")((1,), (32,), (np.zeros(32, np.float32), np.int32(1), np.int32(2)))


def test_scalars_follow_cupy_rules():
    mod = emu.RawModule(code=textwrap.dedent("""
        extern "C" __global__ void scalars(double* out, long long a, double b, float c, unsigned int d) {
            out[0] = (double)a; out[1] = b; out[2] = (double)c; out[3] = (double)d;
        }"""))
    out = np.zeros(4)
    mod.get_function("scalars")((1,), (1,), (out, -(2 ** 40), 0.1, np.float32(1.5), np.uint32(7)))
    np.testing.assert_array_equal(out, [-(2 ** 40), 0.1, 1.5, 7])
    with pytest.raises(TypeError, match="expected float"):
        mod.get_function("scalars")((1,), (1,), (out, 1, 0.1, 1.5, np.uint32(7)))


# --- checking modes -----------------------------------------------------------------------------

def test_checking_context_sets_defaults_and_call_keywords_override(rng):
    x = rng.standard_normal(256).astype(np.float32)
    rotate = bugs().get_function("rotate_missing_barrier")

    def run(**kwargs):
        y = np.zeros(256, np.float32)
        rotate((1,), (256,), (x, y, np.int32(256)), **kwargs)
        return y

    forward, reverse = run(schedule="forward"), run(schedule="reverse")
    assert not np.array_equal(forward, reverse, equal_nan=True)
    with emu.checking(schedule="reverse"):
        np.testing.assert_array_equal(run(), reverse)
        np.testing.assert_array_equal(run(schedule="forward"), forward)
    np.testing.assert_array_equal(run(), forward)
    np.testing.assert_array_equal(run(schedule="random", seed=11), run(schedule="random", seed=11))
    np.testing.assert_array_equal(run(schedule="random", seed=np.int64(11)), run(schedule="random", seed=11))
    with pytest.raises(ValueError, match="schedule"):
        run(schedule="backwards")
    for bad in (2**64 + 11, -1, True, 1.0):   # 2^64 + 11 ran as 11 (the launch's seed is 64 bits)
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
            run(schedule="random", seed=bad)


def test_shared_memory_is_poisoned_with_nan():
    mod = emu.RawModule(code=textwrap.dedent("""
        template <int N> __device__ float* tile() { __shared__ float t[N]; return t; }
        extern "C" __global__ void read_uninitialised(float* y) {
            __shared__ float s[32];
            extern __shared__ float d[];
            float* t = tile<32>();  // a template's (or inline function's) __shared__ array too
            if (threadIdx.x == 0) { y[3 * blockIdx.x] = s[3]; y[3 * blockIdx.x + 1] = d[3]; y[3 * blockIdx.x + 2] = t[3]; }
            __syncthreads();
            s[threadIdx.x] = 1.0f; d[threadIdx.x] = 2.0f; t[threadIdx.x] = 3.0f;
        }"""))
    y = np.zeros(6, np.float32)
    mod.get_function("read_uninitialised")((2,), (32,), (y,), shared_mem=128)
    assert np.isnan(y).all()
    mod.get_function("read_uninitialised")((2,), (32,), (y,), shared_mem=128, poison=False)
    np.testing.assert_array_equal(y[3:], [1, 2, 3])  # the second block sees what the first left behind
    only_templates = emu.RawModule(code=textwrap.dedent("""
        template <int N> __device__ float* tile() { __shared__ float t[N]; return t; }
        extern "C" __global__ void read_uninitialised(float* y) {
            if (threadIdx.x == 0) y[blockIdx.x] = tile<32>()[3];
            __syncthreads();
            tile<32>()[threadIdx.x] = 3.0f;
        }"""))
    only_templates.get_function("read_uninitialised")((2,), (32,), (y,))
    assert np.isnan(y[:2]).all()


def test_float32_denormals_flush_to_zero_unless_ftz_false():
    source = 'extern "C" __global__ void halve(float* x) { x[threadIdx.x] = x[threadIdx.x] * 0.5f; }'
    tiny = np.full(4, 2e-38, np.float32)  # the half is a float32 denormal
    flushed = tiny.copy()
    emu.RawModule(code=source).get_function("halve")((1,), (4,), (flushed,))
    assert not flushed.any()
    kept = tiny.copy()
    emu.RawModule(code=source, options=("-ftz=false",)).get_function("halve")((1,), (4,), (kept,))
    np.testing.assert_array_equal(kept, tiny * np.float32(0.5))


def test_float64_denormals_are_kept_as_on_the_gpu():
    """-ftz=true flushes float32 denormals (inputs and results); float64 keeps them on a GPU."""
    mod = emu.RawModule(code=textwrap.dedent("""
        extern "C" __global__ void scale64(double* x, double f) { x[threadIdx.x] *= f; }
        extern "C" __global__ void scale32(float* x, float f) { x[threadIdx.x] *= f; }"""))
    x64 = np.array([2e-308, 1e-310, 3e-320, -4e-315])  # a normal whose product is a denormal, denormals
    kept = x64.copy()
    mod.get_function("scale64")((1,), (4,), (kept, 0.75))
    np.testing.assert_array_equal(kept, x64 * 0.75)
    assert kept.all() and (np.abs(kept) < np.finfo(np.float64).tiny).all()
    x32 = np.array([1.2e-38, 1e-39, 3e-44, -4e-40], np.float32)
    flushed = x32.copy()
    mod.get_function("scale32")((1,), (4,), (flushed, np.float32(0.75)))
    assert not flushed.any()


# --- build cache ----------------------------------------------------------------------------------

def _cache_with_runtime(cache: Path) -> Path:
    """A new cache folder holding this process's runtime library (saves building it again)."""
    from cnn_gpu.emu import _module
    runtime = Path(_module._runtime()._name)
    (cache / "emu").mkdir(parents=True)
    shutil.copyfile(runtime, cache / "emu" / runtime.name)
    return cache / "emu" / runtime.name


def _run_tiny_kernel(source: Path, cache: Path, count: int = 1) -> list[subprocess.Popen]:
    """`count` fresh processes, each building and running a tiny kernel with its cache in `cache`."""
    source.write_text('extern "C" __global__ void tiny(int* y) { y[threadIdx.x] = threadIdx.x + 41; }\n')
    script = textwrap.dedent(f"""
        import numpy as np
        from cnn_gpu import emu
        y = np.zeros(4, np.int32)
        emu.RawModule(path={str(source)!r}).get_function("tiny")((1,), (4,), (y,))
        assert list(y) == [41, 42, 43, 44], y
    """)
    env = dict(os.environ, CNN_GPU_CACHE=str(cache))
    return [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(count)]


def test_concurrent_builds_share_one_cache_entry(tmp_path):
    _cache_with_runtime(tmp_path / "cache")
    workers = _run_tiny_kernel(tmp_path / "tiny.cu", tmp_path / "cache", count=2)
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    built = sorted(p.name for p in (tmp_path / "cache" / "emu").iterdir())
    assert len([name for name in built if name.startswith("module-")]) == 1
    assert not [name for name in built if name.endswith(".tmp")]


def test_a_build_under_way_in_another_process_is_waited_for(tmp_path, monkeypatch):
    """Two pytest-xdist workers asking for one module: the second waits for the first's build."""
    import threading
    from cnn_gpu import _cache
    from cnn_gpu.emu import _build
    target, built = tmp_path / "module-x.so", tmp_path / "built.so"
    _build._cached(built, lambda temp: temp.write_bytes(b"an intact entry"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["built.so"]   # no lock file left
    looked, real_is_intact = threading.Event(), _build.is_intact
    monkeypatch.setattr(_build, "is_intact", lambda path: looked.set() or real_is_intact(path))
    builds, results = [], []
    with _cache.locked(tmp_path / ".module-x.so.lock"):   # "another process" is building it
        waiting = threading.Thread(target=lambda: results.append(_build._cached(
            target, lambda temp: builds.append(temp) or temp.write_bytes(b"built twice"))))
        waiting.start()
        assert looked.wait(60)
        waiting.join(0.5)
        assert waiting.is_alive(), "did not wait for the build under way"
        shutil.copyfile(built, target)   # ...and has stored it
    waiting.join(60)
    assert results == [target] and builds == [] and real_is_intact(target)


def test_an_interrupted_compile_leaves_no_compiler_process_and_no_file(tmp_path):
    """An exception in the middle of a compile (Ctrl-C, SIGTERM in cnn-gpu train) stops the
    compiler's whole group and removes its temporary folder: killing g++ alone left its cc1plus
    compiling, orphaned, and its temporary .s file in /tmp (helper-97's SIGTERM test). A shell
    stands in for g++, its `sleep` for cc1plus; one that ignores SIGTERM gets SIGKILL."""
    import signal
    import time
    from cnn_gpu.emu import _build
    record = tmp_path / "record"
    # the "cc1plus" ignores SIGTERM, as a process may: SIGKILL after COMPILER_STOP_S
    script = (f'echo "$TMPDIR" > {record}; [ -n "$TMPDIR" ] && touch "$TMPDIR/cc1.s"; '
              f'cut -d" " -f5 /proc/$$/stat >> {record}; (trap "" TERM; exec sleep 60) & echo $! >> {record}; wait')

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            _build._run(["sh", "-c", script], "a compile")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    scratch, group, grandchild = record.read_text().splitlines()
    assert int(group) == os.getpgrp()   # in this process's group: a terminal's or job runner's signal reaches it
    for _ in range(100):   # the orphan's parent (init) reaps it
        try:
            os.kill(int(grandchild), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(int(grandchild), signal.SIGKILL)
        raise AssertionError("the compiler's child outlived the interrupted compile")
    assert scratch and not os.path.exists(scratch), "the compiler's temporary folder is left"


def test_a_changed_header_in_an_include_path_rebuilds_the_module(tmp_path):
    (tmp_path / "value.cuh").write_text("#define VALUE 5\n")
    code = '#include "value.cuh"\nextern "C" __global__ void k(int* y) { y[threadIdx.x] = VALUE; }'
    y = np.zeros(2, np.int32)
    for value in (5, 6):
        (tmp_path / "value.cuh").write_text(f"#define VALUE {value}\n")
        emu.RawModule(code=code, options=(f"-I{tmp_path}",)).get_function("k")((1,), (2,), (y,))
        np.testing.assert_array_equal(y, [value, value])


TINY_KERNEL = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 2.0f * threadIdx.x; }\n'


def test_a_module_binds_to_a_changed_runtime_without_a_rebuild(tmp_path, monkeypatch):
    """A module's cache key covers emu_abi.h, through which it binds to the runtime, and not the
    runtime's source: an edit of the runtime alone rebuilds the runtime, not every module."""
    from cnn_gpu.emu import _build
    path, _ = _build.build_module(TINY_KERNEL, "tiny.cu", None, ())
    changed = tmp_path / "emu_runtime.cpp"
    changed.write_text(_build.RUNTIME_SOURCE.read_text() + "\n// an edit\n")
    monkeypatch.setattr(_build, "RUNTIME_SOURCE", changed)
    assert _build.build_module(TINY_KERNEL, "tiny.cu", None, ())[0] == path
    abi = tmp_path / "emu_abi.h"
    abi.write_text(_build.ABI_HEADER.read_text() + "\n/* an edit */\n")
    monkeypatch.setattr(_build, "ABI_HEADER", abi)
    assert _build.build_module(TINY_KERNEL, "tiny.cu", None, ())[0] != path


def test_the_runtime_sees_the_declarations_of_what_modules_call():
    """Every runtime function that cuda_emu.h calls is declared in emu_abi.h, which the runtime
    includes, so a change of its parameters on one side alone fails the runtime's build (a module
    built before it would otherwise call it with the old ones)."""
    import re as regex
    from cnn_gpu.emu import _build
    exported = set(regex.findall(r"^EXPORT\b.*?\b(cnn_gpu_emu_\w+)\(", _build.RUNTIME_SOURCE.read_text(), regex.M))
    called = set(regex.findall(r"\b(cnn_gpu_emu_\w+)\s*\(", _build.HEADER.read_text())) & exported
    declared = set(regex.findall(r"\b(cnn_gpu_emu_\w+)\(", _build.ABI_HEADER.read_text()))
    assert len(called) >= 9 and called <= declared, called - declared
    assert not regex.search(r'extern "C"[^;{]*\bcnn_gpu_emu_\w+\s*\(', _build.HEADER.read_text())


def test_damaged_cache_entries_are_rebuilt(tmp_path):
    """A truncated runtime library (SIGBUS when loaded) and a module overwritten with garbage
    ('invalid ELF header') are rebuilt by the next run instead of failing it."""
    from cnn_gpu.emu import _build
    runtime = _cache_with_runtime(tmp_path / "cache")
    (first,) = _run_tiny_kernel(tmp_path / "tiny.cu", tmp_path / "cache")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    (module_entry,) = runtime.parent.glob("module-*.so")
    runtime.write_bytes(runtime.read_bytes()[:runtime.stat().st_size // 2])
    module_entry.write_bytes(b"not an ELF file" * 100)
    (second,) = _run_tiny_kernel(tmp_path / "tiny.cu", tmp_path / "cache")
    assert second.wait(timeout=180) == 0, second.stderr.read()
    assert _build.is_intact(runtime) and _build.is_intact(module_entry)


@pytest.mark.parametrize("problem", ["not a folder", "read-only"])
def test_unusable_cache_folder_falls_back_to_a_private_one(problem, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    if problem == "not a folder":
        cache.write_text("")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (cache / "emu").mkdir(parents=True)
        (cache / "emu").chmod(0o500)
    monkeypatch.setenv("CNN_GPU_CACHE", str(cache))
    with pytest.warns(RuntimeWarning, match=r"kernel cache .* (cannot be created|is not writable).*private"):
        mod = emu.RawModule(code='extern "C" __global__ void k(int* y) { y[threadIdx.x] = 7 * threadIdx.x; }')
    y = np.zeros(3, np.int32)
    mod.get_function("k")((1,), (3,), (y,))
    np.testing.assert_array_equal(y, [0, 7, 14])
    assert Path(mod.path).parent.name.startswith("cnn_gpu_emu_cache-")


# --- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_interrupts_a_hung_kernel_promptly():
    """SIGINT ends a launch that would only end at its 120 s watchdog: KeyboardInterrupt in the
    main thread, and a KernelFault in a thread that was running a launch too."""
    script = textwrap.dedent(f"""
        import os, signal, threading
        # Python's Ctrl-C handler, as in a terminal: a child inherits an ignored SIGINT (a job run in
        # the background by a shell without job control), and then Python installs none
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import numpy as np
        from cnn_gpu import emu
        path = {str(KERNELS / "planted_bugs.cu")!r}
        waits = [emu.RawModule(path=path, options=(f"-DREAL={{t}}",)).get_function("wait_forever")
                 for t in ("float", "double")]
        faults, launching = [], threading.Event()
        def in_thread():
            launching.set()
            try:
                waits[1]((1,), (32,), (np.zeros(1, np.float32),), timeout=120)
            except emu.KernelFault as fault:
                faults.append(fault.kind)
        worker = threading.Thread(target=in_thread)
        worker.start()
        # a launch that starts after the signal runs to its watchdog: the worker's must be under way,
        # which takes it from launching.set() to the call
        launching.wait()
        threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            waits[0]((1,), (32,), (np.zeros(1, np.float32),), timeout=120)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        worker.join()
        print(faults)
    """)
    # built here first, so the child's time holds no compilation (a fresh clone's emulator cache is cold)
    for real in ("float", "double"):
        emu.RawModule(path=KERNELS / "planted_bugs.cu", options=(f"-DREAL={real}",))
    # (the limit is above the 120 s watchdog, so a launch the signal missed fails the assertion
    # below with what the child printed)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=200)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the child ran past 200 s; it printed {expired.stdout!r}, {expired.stderr!r}")
    assert done.stdout.split() == ["KeyboardInterrupt", "['interrupted']"], f"{done.stdout!r}\n{done.stderr}"


# --- the test kernels are CUDA, not a dialect of the emulator ----------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in KERNELS.glob("*.cu")))
def test_test_kernels_compile_with_nvrtc(name):
    from cnn_gpu import nvrtc
    reason = nvrtc.why_unavailable()
    if reason:
        pytest.skip(reason)
    source = backend.kernel_source(name, KERNELS)  # with its #include "..." inlined, as NVRTC needs
    oldest = next(arch for arch in nvrtc.ARCHS if not nvrtc.why_arch_unsupported(arch))   # sm_70 where it can
    for options in (F32, F64):
        nvrtc.load().compile(source, f"{name}.cu", ("--std=c++14", f"-arch={oldest}", *options))


def test_guard_staging_keeps_aliasing_and_views(rng):
    mod = emu.RawModule(code=textwrap.dedent("""
        extern "C" __global__ void axpy(const float* x, float* y, int n) {
            const int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] += 2.0f * x[i];
        }"""))
    axpy = mod.get_function("axpy")
    a = rng.standard_normal(300).astype(np.float32)
    expected = a * 3
    axpy((3,), (128,), (a, a, np.int32(300)), guard=True)  # the same array twice: in place
    np.testing.assert_array_equal(a, expected)
    base = rng.standard_normal(600).astype(np.float32)
    for guard in (False, True):  # a strided view: the kernel sees its memory as CuPy would pass it
        b = base.copy()
        axpy((1,), (64,), (b[100:], b[::2], np.int32(50)), guard=guard)
        if not guard:
            unguarded = b
    np.testing.assert_array_equal(b, unguarded)
    readonly = rng.standard_normal(300).astype(np.float32)
    readonly.flags.writeable = False
    out = np.zeros(300, np.float32)
    axpy((3,), (128,), (readonly, out, np.int32(300)), guard=True)
    np.testing.assert_array_equal(out, 2 * readonly)


RESTRICT_KERNELS = textwrap.dedent("""
    extern "C" __global__ void scale(const float* __restrict__ x, float* __restrict__ y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = 2.0f * x[i];
    }
    extern "C" __global__ void scale_into(const float* __restrict__ x, float* y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = 2.0f * x[i];
    }
    extern "C" __global__ void add(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                   int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = a[i] + b[i];
    }
    extern "C" __global__ void add_array(const float* __restrict__ a, const float b[], float* __restrict__ y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = a[i] + b[i];
    }""")


@pytest.mark.parametrize("name, views", [
    ("scale", lambda a: (a, a)),                         # in place through two __restrict__ pointers
    ("scale", lambda a: (a[:200], a[100:])),             # overlapping slices
    ("scale_into", lambda a: (a, a)),                    # a __restrict__ input and a plain output
    ("add", lambda a: (a, a[50:250], a[100:300])),       # the output overlaps an input
    ("scale", lambda a: (a[::2], a[1::2])),              # interleaved: the kernel indexes y = x + 1
])
def test_arguments_that_alias_a_restrict_pointer_are_refused(name, views, rng):
    """__restrict__ promises the compiler no other pointer touches that memory while the kernel
    runs; g++ would run the aliased launch as the source reads, a GPU need not."""
    kernel = emu.RawModule(code=RESTRICT_KERNELS).get_function(name)
    a = rng.standard_normal(300).astype(np.float32)
    before = a.copy()
    with pytest.raises(ValueError, match=r"overlap in memory, but '(x|y|a|b)' is a __restrict__ pointer"):
        kernel((3,), (128,), (*views(a), np.int32(100)))
    np.testing.assert_array_equal(a, before)   # refused before the launch


def test_restrict_pointers_that_only_read_or_do_not_overlap_run(rng):
    mod = emu.RawModule(code=RESTRICT_KERNELS)
    a = rng.standard_normal(300).astype(np.float32)
    y = np.zeros(300, np.float32)
    mod.get_function("add")((3,), (128,), (a, a, y, np.int32(300)))   # one array read twice
    np.testing.assert_array_equal(y, 2 * a)
    z = np.zeros(300, np.float32)
    mod.get_function("add_array")((3,), (128,), (a, a, z, np.int32(300)))   # b[] of const: read only too
    np.testing.assert_array_equal(z, 2 * a)
    mod.get_function("scale")((1,), (128,), (a[:100], a[100:200], np.int32(100)))   # neighbours
    np.testing.assert_array_equal(a[100:200], 2 * a[:100])


@pytest.mark.parametrize("guard", [True, False])
def test_a_read_only_array_for_a_pointer_to_non_const_is_refused(guard, rng):
    """helper-98: a read-only output stayed unwritten with guard zones (their staged copy is not
    copied back) and was written behind NumPy's back without (into a bytes object's memory);
    refused either way, as the op launchers refuse it. A read-only input of a const pointer runs."""
    mod = emu.RawModule(code=RESTRICT_KERNELS)
    a = rng.standard_normal(300).astype(np.float32)
    frozen = np.frombuffer(bytes(1200), np.float32)
    with pytest.raises(ValueError, match=r"parameter 2 'y' .*read-only, but the kernel may write"):
        mod.get_function("add")((3,), (128,), (a, a, frozen, np.int32(300)), guard=guard)
    assert not frozen.any()
    read_only = a.copy()
    read_only.flags.writeable = False
    y = np.zeros(300, np.float32)
    mod.get_function("add")((3,), (128,), (read_only, a, y, np.int32(300)), guard=guard)
    np.testing.assert_array_equal(y, 2 * a)


def test_launches_from_several_threads(rng):
    from concurrent.futures import ThreadPoolExecutor
    a = rng.standard_normal((48, 40)).astype(np.float32)
    b = rng.standard_normal((40, 33)).astype(np.float32)
    expected = a.astype(np.float64) @ b

    def run(schedule):
        sgemm = emu.RawModule(path=str(KERNELS / "sgemm.cu"), options=F32).get_function("sgemm")
        c = np.zeros((48, 33), np.float32)
        for _ in range(3):
            sgemm((3, 3), (16, 16), (a, b, c, np.int32(48), np.int32(33), np.int32(40)), schedule=schedule)
        return c

    with ThreadPoolExecutor(3) as pool:
        for c in pool.map(run, SCHEDULES):
            np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)


def test_pragma_unroll_forms_and_cuda_macros():
    mod = emu.RawModule(code=textwrap.dedent("""
        #define TILE 4
        extern "C" __global__ void sums(float* y) {
            float s = 0;
        #pragma unroll
            for (int i = 0; i < 8; ++i) s += y[i];
            #pragma unroll TILE
            for (int i = 0; i < 8; ++i) s += y[i];
        #pragma unroll (TILE * 2)
            for (int i = 0; i < 8; ++i) s += y[i];
        #pragma unroll 1
            for (int i = 0; i < 8; ++i) s += y[i];
        #if defined(__CUDACC__) && __CUDA_ARCH__ >= 700
            y[8] = s;
        #endif
        }"""))
    y = np.arange(9, dtype=np.float32)
    mod.get_function("sums")((1,), (1,), (y,))
    assert y[8] == 4 * 28


def test_kernel_discovery_and_parameter_types_come_from_the_compiled_source():
    mod = emu.RawModule(code=textwrap.dedent("""
        extern "C" {
        __global__ void __launch_bounds__(128) a(REAL* y) { y[threadIdx.x] = 1; }
        __global__ void b(REAL* y, const int n) { if (threadIdx.x < n) y[threadIdx.x] = 2; }
        }
        template <int N> __global__ void templated(float* y) { y[0] = N; }
        extern "C" __global__ void c(double* y);
        extern "C" __global__ void c(double* y) { y[0] = 3; }
        """), options=F64)
    assert mod.kernel_names == ["a", "b", "c"]
    b = mod.get_function("b")
    assert b.parameter_names == ["y", "n"] and b.parameter_codes == ["*f8", "i4"]  # REAL resolved
    y = np.zeros(4)
    b((1,), (4,), (y, np.int32(2)))
    mod.get_function("a")((1,), (1,), [y])
    np.testing.assert_array_equal(y, [1, 2, 0, 0])
    with pytest.raises(ValueError, match="no __global__ function 'templated'"):
        mod.get_function("templated")
    with pytest.raises(emu.CompileError, match="INFINITY"):
        emu.RawModule(code='extern "C" __global__ void k(float* y) { y[0] = INFINITY; }')


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
@pytest.mark.parametrize("low_lanes", [16, 20, 1, 32])
def test_warp_exchanges_with_partial_masks_run_each_group_apart(low_lanes, schedule, rng):
    """Each half of a warp exchanges among the lanes of its own mask in its own branch (shuffles,
    ballot, votes, __syncwarp), as CUDA allows; a lane outside the group reads as all ones."""
    x = rng.standard_normal(64).astype(np.float32)
    out = np.zeros(64 * 4, np.float32)
    module("warp_ops").get_function("masked_groups")((1,), (64,), (x, out, np.int32(low_lanes)), schedule=schedule,
                                                      seed=7)
    out = out.reshape(64, 4)
    for t in range(64):
        base, lane = t - t % 32, t % 32
        group = range(base, base + low_lanes) if lane < low_lanes else range(base + low_lanes, base + 32)
        values = x[list(group)]
        np.testing.assert_allclose(out[t, 0], values.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)
        assert out[t, 1] == (values > 0).sum()
        assert out[t, 2] == int((values > 1).any()) + 2 * int((values > -2.5).all())
        position = group.index(t)
        assert out[t, 3] == out[group[(position + 1) % len(group)], 0]


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
@pytest.mark.parametrize("n", [20, 8, 1])
def test_overlapping_warp_masks_without_a_deadlock_run(n, schedule, rng):
    """Lanes may wait in different exchanges at once (a tail reduction under its ballot's mask while
    the others wait at the __syncwarp() after it, a nested branch's smaller mask inside)."""
    x = rng.standard_normal(32).astype(np.float32)
    out = np.full(40, -7.0, np.float32)
    module("warp_ops").get_function("nested_masks")((1,), (32,), (x, out, np.int32(n)), schedule=schedule, seed=3)
    np.testing.assert_allclose(out[0], x[:n].astype(np.float64).sum(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[n:32], 0.0)
    nested = min(n, 8)
    expected = np.where(np.arange(nested) ^ 1 < nested, x[np.arange(nested) ^ 1], np.nan)
    np.testing.assert_array_equal(out[32:32 + nested], expected.astype(np.float32))   # NaN: outside the mask


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_crossed_warp_masks_are_a_deadlock(schedule, rng):
    x = rng.standard_normal(32).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"deadlock: lane \d+ waits in a warp exchange over mask "
                                              r"0x(0001ffff|ffff0001) for lane (0|16), which waits in one over "
                                              r"mask 0x(ffff0001|0001ffff)") as info:
        module("warp_ops").get_function("crossed_masks")((1,), (32,), (x, np.zeros_like(x)), schedule=schedule)
    assert info.value.kind == "warp exchange deadlock"


def test_a_masked_exchange_waiting_for_an_exited_lane_is_a_fault(rng):
    x = rng.standard_normal(32).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"waits for lane 5, which has exited"):
        module("warp_ops").get_function("masked_exchange_with_exited_lane")((1,), (32,), (x, np.zeros_like(x)))


@pytest.mark.parametrize("width", [32, 8])
def test_warp_primitives_match_cuda_semantics(width, rng):
    x = rng.standard_normal(64).astype(np.float32)
    d = rng.standard_normal(64)
    out = np.zeros(64 * 9, np.float32)
    module("warp_ops").get_function("warp_ops")((1,), (64,), (x, d, out, np.int32(width)), schedule="reverse")
    out = out.reshape(64, 9)
    lane = np.arange(64) % 32
    warp_base = np.arange(64) - lane
    segment = warp_base + lane // width * width  # first thread of each thread's width-segment
    within = lane % width
    np.testing.assert_array_equal(out[:, 0], x[segment + 5 % width])
    np.testing.assert_array_equal(out[:, 1], np.where(within >= 3, x[np.arange(64) - 3], x))
    np.testing.assert_array_equal(out[:, 2], np.where(within + 3 < width, x[np.minimum(np.arange(64) + 3, 63)], x))
    source = warp_base + (lane ^ 6)
    np.testing.assert_array_equal(out[:, 3], np.where(lane ^ 6 < (lane // width + 1) * width, x[source], x))
    np.testing.assert_array_equal(out[:, 4], np.where(within + 1 < width, d[np.minimum(np.arange(64) + 1, 63)], d)
                                  .astype(np.float32))
    ballots = [sum(1 << i for i in range(32) if x[w * 32 + i] > 0) for w in range(2)]
    np.testing.assert_array_equal(out[:, 5], np.repeat([b & 0xFFFF for b in ballots], 32))
    np.testing.assert_array_equal(out[:, 6], np.repeat([b >> 16 for b in ballots], 32))
    votes = [int((x[w * 32:(w + 1) * 32] > 2).any()) + 2 * int((x[w * 32:(w + 1) * 32] > -3).all()) for w in range(2)]
    np.testing.assert_array_equal(out[:, 7], np.repeat(votes, 32))
    np.testing.assert_array_equal(out[:, 8], warp_base + (lane + 1) % 32)
