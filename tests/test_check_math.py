"""`cnn-gpu check --math tf32` and `--dtype float16`.

The convolutions, run in the "tf32" math mode, are held to |device - oracle| <= 32 x 2^-24 x
sum|products| per element against the NumPy oracle on the same TF32 operands: the NumPy backend
(FP32 sums) and the emulator (the tensor-core kernels) pass; a device that skips the TF32 rounding
or truncates instead of rounding fails by orders of magnitude, so the bound is tight enough to tell
the formats apart. The other ops are reported as unaffected by the mode.

With --dtype float16 every op runs on float16 arrays against the NumPy oracle on the same float16
inputs within 2 float16 ulps of the largest output: the emulator's float16 kernels pass, an output
three ulps off fails, an FP32 difference of under one ulp before the rounding passes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnn_gpu import backend, check, precision
from cnn_gpu.cli import main

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
CONV_OPS = ["conv2d", "conv_transpose2d", "conv2d_same"]


def _check(capsys, *args):
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_numpy_in_tf32_passes_and_other_ops_are_unaffected(tmp_path, capsys):
    path = tmp_path / "c.json"
    code, out, err = _check(capsys, "--device", "numpy", "--math", "tf32", "--quick", "--ops",
                            "conv2d,conv_transpose2d,relu,linear", "--json", str(path))
    assert code == 0, out + err
    assert "dtype=float32 math=tf32" in out and "sum|products|" in out
    data = json.loads(path.read_text())
    assert data["math"] == "tf32" and data["dtype"] == "float32"
    by_op = {r["op"]: r for r in data["results"]}
    for op in ("conv2d", "conv_transpose2d"):
        assert by_op[op]["math"] == "tf32" and by_op[op]["passed"]
        assert by_op[op]["tolerance"] == check.TF32_SUM_K * 2.0 ** -24
        assert 0 < by_op[op]["error"] <= by_op[op]["tolerance"]
    for op in ("relu", "linear"):
        assert by_op[op]["math"] == "unaffected" and by_op[op]["tolerance"] >= check.TOLERANCE["float32"]


def _planted(rounding):
    """A conv2d "device" that computes on NumPy in fp32 from operands rounded by `rounding`."""
    def run(inputs, cfg, be):
        operands = {k: rounding(v) if k in ("x", "weight", "dy") else v for k, v in inputs.items()}
        with precision.math_mode("fp32"):
            return check.OPS["conv2d"].run(operands, cfg, be)
    return run


def _truncated(a):
    return (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("rounding, name", [(lambda a: a, "no TF32 rounding"), (_truncated, "truncation")])
def test_tf32_bound_fails_a_device_with_the_wrong_operands(rounding, name):
    check.register_override("conv2d", _planted(rounding))
    try:
        result = next(check.check_ops("numpy", ["conv2d"], mode="quick", dtype="float32", math="tf32"))
    finally:
        check.clear_overrides()
    assert not result.passed, name
    assert result.error > 10 * result.tolerance, (name, result.error)


def test_summation_error():
    want = np.array([1.0, -2.0, 0.0])
    magnitude = np.array([4.0, 8.0, 0.0])
    assert check.summation_error(np.array([1.5, -2.0, 0.0]), want, magnitude) == 0.125
    assert check.summation_error(np.array([1.0, -2.0, 1e-30]), want, magnitude) == np.inf   # nothing to sum
    assert check.summation_error(np.array([np.nan, -2.0, 0.0]), want, magnitude) == np.inf
    assert check.summation_error(np.zeros(2), want, magnitude) == np.inf                     # wrong shape


def test_bad_math_arguments(capsys):
    code, _, err = _check(capsys, "--device", "numpy", "--dtype", "float16", "--math", "tf32", "--quick")
    assert code == 2 and "needs dtype float32" in err
    code, _, err = _check(capsys, "--device", "numpy", "--dtype", "float64", "--math", "tf32", "--quick")
    assert code == 2 and "needs dtype float32" in err
    with pytest.raises(ValueError, match="unknown math mode"):
        check.check_ops("numpy", ["relu"], dtype="float32", math="bf16")


@needs_emu
def test_emulator_tensor_core_convolutions_pass_in_tf32(capsys):
    code, out, err = _check(capsys, "--device", "emu", "--math", "tf32", "--quick", "--ops", ",".join(CONV_OPS))
    assert code == 0, out + err
    assert "3 of 3 ops passed" in out and out.count(" tf32") >= 3


def _scaled(factor):
    """A relu "device" whose outputs are the op's times `factor`, float16 ones computed in FP32 and
    rounded once (float64 ones, for the finite differences, stay float64)."""
    def run(inputs, cfg, be):
        outputs = check.OPS["relu"].run(inputs, cfg, be)
        return {k: (v.astype(np.float32) * np.float32(factor)).astype(v.dtype) if v.dtype == np.float16
                else v * factor for k, v in outputs.items()}
    return run


@pytest.mark.parametrize("factor, passes", [(1 + 3 * 2.0 ** -10, False), (1 + 0.9 * 2.0 ** -11, True)],
                         ids=["three ulps off", "under an ulp before rounding"])
def test_float16_tolerance_tells_rounding_from_error(factor, passes):
    check.register_override("relu", _scaled(factor))
    try:
        result = next(check.check_ops("numpy", ["relu"], mode="quick", dtype="float16"))
    finally:
        check.clear_overrides()
    assert result.tolerance == check.FLOAT16_TOLERANCE == 2 * 2.0 ** -10
    assert result.passed == passes and result.error > 0, result.error


@needs_emu
def test_emulator_float16_check(tmp_path, capsys):
    """The float16 kernels, the tensor-core convolutions among them, pass against the oracle."""
    path = tmp_path / "c.json"
    ops = ["conv2d", "conv_transpose2d", "batch_norm", "dropout", "adaptive_avg_pool2d", "interpolate", "pad",
           "cross_entropy"]
    code, out, err = _check(capsys, "--device", "emu", "--dtype", "float16", "--quick", "--ops", ",".join(ops),
                            "--json", str(path))
    assert code == 0, out + err
    assert "dtype=float16" in out and f"{len(ops)} of {len(ops)} ops passed" in out
    for result in json.loads(path.read_text())["results"]:
        assert result["passed"] and result["configs"] == 2, result
        assert result["tolerance"] == check.FLOAT16_TOLERANCE
