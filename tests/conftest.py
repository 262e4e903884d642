"""Shared pytest fixtures, and the `gpu` mark of every test that needs a GPU."""
import importlib
import re
import sys
from pathlib import Path

import pytest

# a skip condition's reason that names what only a GPU machine has
_GPU_REASON = re.compile(r"\bcuda\b|\bGPU\b|CuPy|NCCL", re.IGNORECASE)


def pytest_collection_modifyitems(config, items):
    """gpu-check's CUDA sweep runs `pytest -m gpu`: every test that can run only with a GPU carries
    the mark, whether or not it was written with it. Those parametrized with the cuda backend, and
    those skipped for the lack of CuPy or a GPU (a test skipped where a GPU is present gets the mark
    too: it is skipped there either way)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_cuda = callspec is not None and any(isinstance(v, str) and v == "cuda" for v in callspec.params.values())
        gpu_reason = any(_GPU_REASON.search(str(mark.kwargs.get("reason", ""))) for mark in item.iter_markers("skipif"))
        if on_cuda or gpu_reason:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Every test plans its convolutions afresh: a plan remembered by an earlier test may have been
    made under that test's patches of the planners' tables (cnn_gpu.gpu._plan_cache)."""
    from cnn_gpu.gpu import _plan_cache
    _plan_cache.clear()


# --- NumPy convolution code paths (tests/test_functional_reference.py, tests/test_torch_oracle.py) ---

# How cnn_gpu.functional.conv gathers windows depends on the shape; tiny test shapes would reach only
# one way. Each setting forces one strategy onto every eligible shape.
CONV_PATHS = {
    "im2col": dict(NARROW_OUTPUT=0, ROW_GEMM_MIN_HEIGHT=10**9, CHANNELS_LAST_RUN_RATIO=10**9),
    "batch_last": dict(NARROW_OUTPUT=10**9, ROW_GEMM_MIN_HEIGHT=10**9, CHANNELS_LAST_RUN_RATIO=10**9),
    "channels_last": dict(ROW_GEMM_MIN_HEIGHT=10**9, CHANNELS_LAST_RUN_RATIO=0, CHANNELS_LAST_MIN_CHANNELS=0),
    "rows": dict(NARROW_OUTPUT=0, ROW_GEMM_MIN_HEIGHT=1),
}


@pytest.fixture(params=sorted(CONV_PATHS))
def conv_path(request, monkeypatch):
    """Runs the test once per gathering strategy of the NumPy convolution."""
    from cnn_gpu.functional import conv
    for name, value in CONV_PATHS[request.param].items():
        monkeypatch.setattr(conv, name, value)
    return request.param


@pytest.fixture(scope="module")
def torch():
    """PyTorch 2.13 CPU, the oracle of the files that ask for it, on one thread (its pool only costs
    on small ops and a shared 2-core machine); those tests skip without it."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (make torch)")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def single_torch_thread():
    """PyTorch on one thread for a module of small oracle ops: its thread pool only costs there, and
    spinning threads hurt on a shared 2-core machine. A no-op without PyTorch."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


CUPY_SIM = Path(__file__).resolve().parent / "cupy_sim"


@pytest.fixture
def cupy(monkeypatch):
    """tests/cupy_sim as `cupy` in this process, for one test."""
    monkeypatch.syspath_prepend(str(CUPY_SIM))
    for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("cupy")
    assert Path(module.__file__).is_relative_to(CUPY_SIM)
    yield module
    for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
        del sys.modules[name]
