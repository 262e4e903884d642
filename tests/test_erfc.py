"""cnn_gpu.functional._erfc.erfc, the NumPy erfc of gelu's oracle, against Python's math.erfc."""
import math

import numpy as np
import pytest

from cnn_gpu.functional._erfc import erfc


def math_erfc(x):
    return np.array([math.erfc(v) for v in np.ravel(x).astype(np.float64).tolist()]).reshape(np.shape(x))


def test_float64_within_a_few_ulps_of_math_erfc():
    """Relative error per element, every region of the approximation and its edges, both signs,
    down to erfc's smallest normal results and into its subnormal ones."""
    rng = np.random.default_rng(5)
    edges = np.array([0.46875, 4.0, 26.5, 26.6, 27.2])
    x = np.concatenate([np.linspace(-30, 30, 120001), rng.standard_normal(20000) * 0.3,
                        np.nextafter(edges, 0), edges, np.nextafter(edges, np.inf), [1e-300, 5e-324, 1e300]])
    x = np.concatenate([x, -x])
    got, expected = erfc(x), math_erfc(x)
    normal = expected >= np.finfo(np.float64).tiny
    relative = np.abs(got[normal] - expected[normal]) / expected[normal]
    assert relative.max() <= 4e-15, x[normal][np.argmax(relative)]
    assert np.abs(got[~normal] - expected[~normal]).max() <= 1e-320   # subnormal: absolute


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_infinities_nan_zeros_and_dtype(dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30], dtype)
    got = erfc(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, [0, 2, np.nan, 1, 1, 0, 2])


def test_float32_computes_in_float32_to_its_accuracy():
    x = np.linspace(-12, 12, 24001, dtype=np.float32)
    got, expected = erfc(x), math_erfc(x)
    assert got.dtype == np.float32
    normal = expected >= np.finfo(np.float32).tiny
    assert (np.abs(got[normal] - expected[normal]) / expected[normal]).max() <= 2e-6


@pytest.mark.parametrize("shape", [(), (1,), (3, 4, 2), (0, 5)])
def test_keeps_the_shape(shape):
    x = np.random.default_rng(1).standard_normal(shape) * 3
    got = erfc(x)
    assert got.shape == shape
    np.testing.assert_allclose(got, math_erfc(x), rtol=4e-15)
