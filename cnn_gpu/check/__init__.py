"""Cross-check of every op on a kernel backend (the library behind `cnn-gpu check`).

For each op, a seeded sweep of configurations (strides, paddings, dilations, groups, odd sizes,
ceil_mode, ...) runs forward and backward on the device and is compared with the NumPy backend in
float64 on the same inputs, and the device's backward is compared with float64 central differences
of the device's own forward (cnn_gpu.gradcheck). The error of an output is
max|device - reference| / max|reference| (integer outputs such as max-pool indices must match
exactly); an op passes when its worst error over all configurations and outputs is within the
tolerance of the dtype.

With math="tf32" (`cnn-gpu check --math tf32`, float32) the convolution ops run in the "tf32" math
mode and are compared with the NumPy oracle in the same mode, element by element, within the FP32
summation bound stated at TF32_SUM_K; the other ops are unaffected by the mode and keep the float32
rule.

With dtype float16 (`cnn-gpu check --dtype float16`) the device runs every op on float16 arrays
(FP16 storage, FP32 math, one rounding per output) and is compared with the NumPy oracle on the
same float16 inputs, which computes in float32 and rounds once, within FLOAT16_TOLERANCE.

Tests plant a wrong op with `register_override(op, run)` to prove that a mismatch fails.

The package: tolerances (the modes and the agreement rules), ops (what is checked: OPS, from a module
per family of ops: conv, pool, activations, losses, norms, resample) and compare
(running the checks).
"""
from __future__ import annotations

from .compare import (OpResult, check_op, check_ops, clear_overrides, configs_for, default_device,  # noqa: F401
                      format_results, register_override, relative_error, summation_error)
from .ops import OPS  # noqa: F401
from .spec import OpCheck  # noqa: F401
from .tolerances import (FD_OPTIONS, FD_TOLERANCE, FLOAT16_TOLERANCE, FLOAT16_ULP, FP32_UNIT_ROUNDOFF,  # noqa: F401
                         MODES, RANDOM_CONFIGS, REDUCTION_SCALE, TF32_SUM_K, TOLERANCE)
