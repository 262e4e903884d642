"""pytest-benchmark suite: every op of cnn_gpu.bench on every device (the same cases `cnn-gpu bench` times).

In `make test` it runs with --benchmark-disable, so each case executes once as a test on the tiny
shapes. To measure:  CNN_GPU_BENCH_SHAPES=default pytest benchmarks --benchmark-enable -p no:xdist
(emu always uses the tiny shapes; cuda and torch-cuda cases skip without a GPU, torch cases without torch).
"""
import os

import numpy as np
import pytest

from cnn_gpu import bench

SHAPES = os.environ.get("CNN_GPU_BENCH_SHAPES", "tiny")
DTYPE = np.float32


def _cases(shape_set):
    return [pytest.param(case, id=f"{case.op}[{case.label}]") for case in bench.make_cases(shape_set)]


def _device_params():
    marks = {"cuda": [pytest.mark.gpu], "torch": [pytest.mark.torch],
             "torch-cuda": [pytest.mark.torch, pytest.mark.gpu]}
    return [pytest.param(name, marks=marks.get(name, ())) for name in bench.DEVICES]


def _all_finite(result) -> bool:
    """True when every array, tensor or float in a (nested) result is finite."""
    if result is None:
        return True
    if isinstance(result, (tuple, list)):
        return all(_all_finite(r) for r in result)
    if hasattr(result, "detach"):  # torch tensor
        result = result.detach().cpu().numpy()
    elif hasattr(result, "get"):   # CuPy array
        result = result.get()
    result = np.asarray(result)
    return result.dtype.kind not in "fc" or bool(np.isfinite(result).all())


def _run(benchmark, device_name, case):
    reason = bench.device_unavailable(device_name)
    if reason:
        pytest.skip(reason)
    device = bench.make_devices([device_name])[0]
    fn, input_sets = case.setup(device, DTYPE, np.random.default_rng(0))
    inputs = input_sets[0]
    fn(*inputs)   # warm-up: kernel compilation and module loading are not measured
    device.synchronize()

    def call():
        out = fn(*inputs)
        device.synchronize()
        return out

    assert _all_finite(benchmark(call)), f"{case.op} on {device_name} gave non-finite values"


@pytest.mark.parametrize("device_name", [p for p in _device_params() if p.values[0] != "emu"])
@pytest.mark.parametrize("case", _cases(SHAPES))
def test_op(benchmark, device_name, case):
    _run(benchmark, device_name, case)


@pytest.mark.parametrize("case", _cases("tiny"))
def test_op_emu(benchmark, case):
    """The emulator runs the CUDA source on the CPU: tiny shapes only (it is a checker, not a runtime)."""
    _run(benchmark, "emu", case)
