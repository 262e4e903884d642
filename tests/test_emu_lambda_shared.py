"""__shared__ arrays in device function templates instantiated with a lambda's type
(tests/emu_kernels/lambda_template_shared.cu) are per-block shared memory in the emulator like
any other: poisoned at every block, race-checked and named in race reports."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import needs_emu, planted_kernels

pytestmark = needs_emu
THREADS = 128


@pytest.fixture(scope="module")
def kernels():
    return planted_kernels("lambda_template_shared")


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_reduction_through_a_lambda_template_is_right_and_race_free(kernels, schedule):
    x = np.random.default_rng(31).standard_normal(3 * THREADS).astype(np.float32)
    sums = np.zeros(3, np.float32)
    kernels.get_function("block_sums")((3,), (THREADS,), (x, sums), race=True, schedule=schedule, seed=4)
    np.testing.assert_allclose(sums, x.reshape(3, THREADS).astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)


def test_the_array_is_poisoned_at_every_block(kernels):
    y = np.zeros(2 * THREADS, np.float32)
    kernels.get_function("read_uninitialised")((2,), (THREADS,), (y,))
    assert np.isnan(y).all()            # outside the shared section: zeros, then the first block's ones
    kernels.get_function("read_uninitialised")((2,), (THREADS,), (y,), poison=False)
    np.testing.assert_array_equal(y[THREADS:], 1.0)   # one shared array, which block 1 finds as block 0 left it


def test_a_missing_barrier_is_reported_on_the_named_array(kernels):
    from cnn_gpu import emu
    x = np.random.default_rng(32).standard_normal(THREADS).astype(np.float32)
    with pytest.raises(emu.KernelFault, match=r"shared memory race on slot \(byte \d+, in neighbour_of<"):
        kernels.get_function("rotate_unsynced")((1,), (THREADS,), (x, np.zeros_like(x)), race=True)
