"""Helpers shared by the test files: comparisons (the tolerances of the house rules: float64 results
against a float64 reference to 1e-10 relative, float32 to 1e-5) and the planted emulator kernels."""
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend


def tolerance(dtype) -> float:
    """Relative tolerance of a result computed in `dtype`."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-5


def to_host(a):
    """A NumPy view or copy of a NumPy or CuPy array."""
    return a.get() if backend.is_cupy_array(a) else np.asarray(a)


def assert_close(actual, expected, dtype, what=""):
    """Same dtype and shape, NaNs and infinities at the same places, and every other element within
    tolerance(dtype) times the largest finite expected magnitude (at least 1, so values near 0 need
    no exact zeros)."""
    actual, expected = to_host(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{what}: non-finite values differ")
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    error = float(np.abs(actual[finite].astype(np.float64) - expected[finite]).max(initial=0.0))
    assert error <= tolerance(dtype) * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


# The planted test kernels of tests/emu_kernels/, run on the emulator.
EMU_KERNELS = Path(__file__).resolve().parent / "emu_kernels"
needs_emu = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")


def planted_kernels(name: str):
    """emu.RawModule of tests/emu_kernels/<name>.cu."""
    from cnn_gpu import emu
    return emu.RawModule(path=str(EMU_KERNELS / f"{name}.cu"))
