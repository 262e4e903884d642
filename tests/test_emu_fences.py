"""The race check of global memory orders blocks by a __threadfence and an atomic, as the PTX
memory model's release and acquire patterns do (tests/emu_kernels/fence_handoff.cu): the last-block
hand-off passes with every thread fencing before the barrier, thread 0 fencing after it, or every
thread fencing and counting itself; without the release fence, without the acquire fence, with
block-scope fences only, with a write after the release, with no barrier before thread 0's fence, or
with the other threads' fences after the barrier, the last block's read is reported, naming the
partial and both threads. What one block acquired does not carry over to the next block."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import EMU_KERNELS, needs_emu, planted_kernels

pytestmark = needs_emu
BLOCKS, THREADS = 5, 64


@pytest.fixture(scope="module")
def kernels():
    return planted_kernels("fence_handoff")


def _run(kernels, name, schedule="forward", seed=None, arrivals=None):
    x = np.random.default_rng(8).standard_normal(BLOCKS * THREADS).astype(np.float32)
    out = np.zeros(THREADS, np.float32)
    arrivals = np.zeros(1, np.uint32) if arrivals is None else arrivals
    kernels.get_function(name)((BLOCKS,), (THREADS,),
                               (x, np.zeros(BLOCKS * THREADS, np.float32), arrivals, out),
                               race=True, schedule=schedule, seed=seed)
    return x, out


@pytest.mark.parametrize("name", ["every_thread_fences", "thread0_fences", "every_thread_counts", "thread0_resets",
                                  "thread1_resets"])
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_a_fenced_last_block_handoff_is_no_race(kernels, name, schedule):
    """every_thread_counts: each thread releases its own partial through the one counter, with no
    barrier between the releases: the block's releases through a word add up. thread0_resets: the
    last block's plain store of 0 after its own atomic comes after the other blocks' atomics;
    thread1_resets: so does another thread's, after the barrier that follows that atomic."""
    arrivals = np.zeros(1, np.uint32)
    x, out = _run(kernels, name, schedule, seed=3, arrivals=arrivals)
    expected = (2.0 * x.reshape(BLOCKS, THREADS).astype(np.float64)).sum(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    counted = {"every_thread_counts": BLOCKS * THREADS, "thread0_resets": 0, "thread1_resets": 0}.get(name, BLOCKS)
    assert arrivals[0] == counted


@pytest.mark.parametrize("name", ["plant_no_release", "plant_no_acquire", "plant_block_scope",
                                  "plant_write_after_release", "plant_no_barrier", "plant_fences_after_barrier"])
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_a_handoff_missing_its_ordering_is_a_race(kernels, name, schedule):
    from cnn_gpu import emu
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'partials' \(element \d+\): this "
                                              r"thread reads a word written by thread \d+ of another block") as caught:
        _run(kernels, name, schedule, seed=5)
    assert caught.value.kind == "global memory race"
    source = EMU_KERNELS / "fence_handoff.cu"
    (line,) = [i + 1 for i, text in enumerate(source.read_text().splitlines()) if "sum += partials" in text]
    assert caught.value.source.startswith(f"{source}:{line} ")


def test_what_one_block_acquired_is_not_the_next_ones(kernels):
    """Block 0 releases, block 1 acquires, block 2 reads without acquiring: a race (each block
    starts holding nothing)."""
    from cnn_gpu import emu
    x = np.random.default_rng(9).standard_normal(THREADS).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'partials' \(element \d+\)") as caught:
        kernels.get_function("plant_read_without_acquire")((3,), (THREADS,), (x, np.zeros(THREADS, np.float32),
                                                            np.zeros(1, np.uint32), np.zeros(THREADS, np.float32)),
                                                           race=True, schedule="forward")
    assert caught.value.block == (2, 0, 0)


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_a_count_reset_under_other_blocks_atomics_is_a_race(kernels, schedule):
    """The first block to arrive sets the count back to 0 (meant: the last): the next block's
    atomic is reported against that plain store."""
    from cnn_gpu import emu
    with pytest.raises(emu.KernelFault, match=r"global memory race on argument 'arrivals' \(element 0\): this "
                                              r"thread updates atomically a word written by thread 0 of another "
                                              r"block") as caught:
        _run(kernels, "plant_reset_first", schedule, seed=5)
    source = EMU_KERNELS / "fence_handoff.cu"
    (line,) = [i + 1 for i, text in enumerate(source.read_text().splitlines()) if "= atomicAdd(arrivals" in text]
    assert caught.value.source.startswith(f"{source}:{line} ")
