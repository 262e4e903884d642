"""The emulator's race check is exact to the byte (tests/emu_kernels/subword_race.cu): threads
writing neighbouring 16-bit elements of one word do not race, threads touching the same element
with no barrier between do, in shared and in global memory."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import needs_emu, planted_kernels

pytestmark = needs_emu
THREADS = 64


@pytest.fixture(scope="module")
def kernels():
    return planted_kernels("subword_race")


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_neighbouring_halves_written_by_different_threads_do_not_race(kernels, schedule):
    out = np.zeros(2 * THREADS, np.uint16)
    kernels.get_function("neighbouring_halves")((1,), (THREADS,), (out,), race=True, schedule=schedule, seed=2)
    threads = np.arange(THREADS)
    np.testing.assert_array_equal(out[:THREADS], threads)
    np.testing.assert_array_equal(out[THREADS:], 3 * (threads ^ 1) + 1)


@pytest.mark.parametrize("kernel, what", [("plant_same_half", "writes a word written by"),
                                          ("plant_unsynchronised_read", "a word read by"),
                                          ("plant_word_then_half", "writes a word written by")])
def test_the_same_half_touched_by_two_threads_races(kernels, kernel, what):
    from cnn_gpu import emu
    out = np.zeros(THREADS, np.uint16)
    with pytest.raises(emu.KernelFault, match=what) as caught:
        kernels.get_function(kernel)((1,), (THREADS,), (out,), race=True)
    assert caught.value.kind == "shared memory race"
