"""Math modes and the TF32 operand rounding (cnn_gpu.precision)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu.precision import conv_operands, round_to_tf32


def _tf32_reference(x: np.ndarray) -> np.ndarray:
    """Round to 11 significant bits, half-way cases away from zero, in float64 arithmetic."""
    mantissa, exponent = np.frexp(x.astype(np.float64))          # |mantissa| in [0.5, 1)
    scaled = np.abs(mantissa) * 2.0 ** 11
    return (np.sign(mantissa) * np.ldexp(np.floor(scaled + 0.5), exponent - 11)).astype(np.float32)


def test_tf32_rounding_matches_a_float64_reference_on_normal_numbers():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-30, 30, 200_000)).astype(np.float32)
    np.testing.assert_array_equal(round_to_tf32(x), _tf32_reference(x))
    assert np.count_nonzero(round_to_tf32(x) != x) > 190_000     # almost every value changes


def test_tf32_ties_go_away_from_zero_not_to_even():
    tie = np.float32(1 + 2.0 ** -11)          # half-way between 1 and 1 + 2^-10
    below = np.nextafter(tie, np.float32(0))
    got = round_to_tf32(np.array([tie, -tie, below], dtype=np.float32))
    np.testing.assert_array_equal(got, np.array([1 + 2.0 ** -10, -(1 + 2.0 ** -10), 1], dtype=np.float32))


def test_tf32_keeps_special_values_and_rounds_subnormals_on_their_bits():
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=np.float32)
    got = round_to_tf32(special)
    assert np.isnan(got[0]) and np.array_equal(got[1:], special[1:])
    nan_with_low_payload = np.array([0x7F800001], dtype=np.uint32).view(np.float32)
    assert np.isnan(round_to_tf32(nan_with_low_payload))[0]
    assert round_to_tf32(np.array([np.finfo(np.float32).max], dtype=np.float32))[0] == np.inf
    subnormal = np.array([0x00001000, 0x00000FFF, 0x00003000], dtype=np.uint32).view(np.float32)
    np.testing.assert_array_equal(round_to_tf32(subnormal).view(np.uint32), [0x2000, 0, 0x4000])
    with pytest.raises(TypeError, match="float32"):
        round_to_tf32(np.ones(3))


def test_math_mode_default_block_and_threads():
    assert cnn_gpu.get_math_mode() == "fp32"
    seen = []
    with cnn_gpu.math_mode("tf32"):
        assert cnn_gpu.get_math_mode() == "tf32"
        assert conv_operands(np.float32) is round_to_tf32
        assert conv_operands(np.float64) is None
        worker = threading.Thread(target=lambda: seen.append(cnn_gpu.get_math_mode()))
        worker.start()
        worker.join()
    assert seen == ["fp32"] and cnn_gpu.get_math_mode() == "fp32"
    assert conv_operands(np.float32) is None
    with pytest.raises(ValueError, match="math mode"):
        cnn_gpu.set_math_mode("tf16")
    cnn_gpu.set_math_mode("tf32")
    try:
        assert cnn_gpu.get_math_mode() == "tf32"
    finally:
        cnn_gpu.set_math_mode("fp32")
