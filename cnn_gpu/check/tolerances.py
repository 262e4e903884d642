"""What `cnn-gpu check` runs per mode and how far a device may differ from its references: per
dtype and math mode, and against finite differences."""
from __future__ import annotations

MODES = ("quick", "normal", "thorough")
# random configurations per op in each mode; normal and thorough also run the op's edge cases,
# thorough also layer-sized ones (big enough for the kernels' large tiles and split-K paths)
RANDOM_CONFIGS = {"quick": 2, "normal": 6, "thorough": 40}
# finite-difference options per mode: random directions per array, element-wise checks up to this size
FD_OPTIONS = {"quick": dict(directions=2, elementwise_limit=0),
              "normal": dict(directions=3, elementwise_limit=0),
              "thorough": dict(directions=3, elementwise_limit=32)}

# dtype float16: the device and the oracle (the NumPy backend on the same float16 inputs) both
# compute in FP32 and round each output to float16 once. Their FP32 results differ only by the
# order of operations (relative errors of a few 2^-24, far below a float16 ulp), but the two
# roundings can then land on neighbouring float16 values: one float16 ulp of the element, at most
# 2^-10 x max|output| (float16 has 10 mantissa bits). FLOAT16_TOLERANCE = 2 x 2^-10 of max|output|
# (the usual error measure) leaves a second ulp for order effects next to a tie; an output off by
# three float16 ulps of the largest fails.
FLOAT16_ULP = 2.0 ** -10
FLOAT16_TOLERANCE = 2 * FLOAT16_ULP
# Relative error allowed against NumPy float64 (float16: against the oracle, above): float64
# devices differ only in summation order; float32 devices are compared with float64 results
# computed from the same (rounded) inputs, and ops that sum many terms get REDUCTION_SCALE times
# more room.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": FLOAT16_TOLERANCE}
REDUCTION_SCALE = 4
# math="tf32": convolutions multiply TF32-rounded operands and sum the products in FP32. A product of
# two TF32 numbers (11-bit significands) is exact in FP32, so a device and the oracle -- NumPy in the
# same mode, summed exactly: float64 sums of the same TF32 operands -- differ only by the device's FP32
# additions and the final rounding of each output. Each output element must satisfy
#     |device - oracle| <= TF32_SUM_K * 2^-24 * sum|products|
# with sum|products| the op run on the operands' magnitudes (its bias included). The worst case of a
# sum of n terms is (n - 1) * 2^-24 * sum|products|; rounding errors of random sign -- these checks'
# inputs are zero-mean -- stay within a few units of 2^-24 * sum|products| whatever n. TF32_SUM_K = 32
# leaves room for the tensor cores' own order and truncating adds, while an operand that misses its
# TF32 rounding (errors of ~2^-12 * sqrt(n) per product scale) still fails. The bias gradient, a plain
# FP32 sum of dy, is held to the same bound against dy unrounded.
TF32_SUM_K = 32
FP32_UNIT_ROUNDOFF = 2.0 ** -24
# Central differences in float64 (always, whatever --dtype; cnn_gpu.gradcheck): truncation and
# rounding leave ~1e-7 relative error, a wrong gradient gives errors of order 1.
FD_TOLERANCE = 5e-5
