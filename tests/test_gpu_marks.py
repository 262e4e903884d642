"""gpu-check's CUDA sweep runs `pytest -m gpu`: tests/conftest.py gives every test that needs a GPU
the `gpu` mark. Without it the CUDA convolution sweep and the NCCL test were never selected there."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import conftest

ROOT = Path(__file__).resolve().parents[1]


class FakeItem:
    def __init__(self, params=None, reasons=()):
        self.callspec = SimpleNamespace(params=params) if params is not None else None
        self.skips = [pytest.mark.skipif(True, reason=reason).mark for reason in reasons]
        self.marks = []

    def iter_markers(self, name):
        return iter(self.skips if name == "skipif" else [])

    def add_marker(self, mark):
        self.marks.append(mark.name)


@pytest.mark.parametrize("item, marked", [
    (FakeItem(params={"be": "cuda", "dtype": "float32"}), True),
    (FakeItem(params={"be": "emu"}, reasons=["no cuda backend: CuPy does not import"]), True),
    (FakeItem(reasons=["NCCL needs CuPy and a GPU"]), True),
    (FakeItem(params={"be": "numpy", "x": object()}), False),
    (FakeItem(reasons=["PyTorch is not installed"]), False)])
def test_tests_that_need_a_gpu_get_the_mark(item, marked):
    conftest.pytest_collection_modifyitems(None, [item])
    assert item.marks == (["gpu"] if marked else [])


def test_the_cuda_sweeps_are_selected_by_the_gpu_mark():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                             "tests/test_kernels_conv.py", "tests/test_distributed.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "test_cuda_sweep_matches_numpy" in result.stdout, result.stdout + result.stderr
    assert "test_nccl_sum_on_one_gpu_keeps_the_values" in result.stdout
