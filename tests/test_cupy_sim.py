"""The cuda backend's Python, run without a GPU on tests/cupy_sim (a CuPy whose device arrays keep
CuPy's rules and whose kernels the emulator runs): first that the simulator refuses what CuPy
refuses (each rule as CuPy 14's source has it), then the CUDA test sweep, `cnn-gpu check --device
cuda`, training and the benchmark on it, each in a process whose `import cupy` finds the simulator.
A cuda code path that hands a device array to NumPy, mixes a host array into device arithmetic,
reads a device value as an index or passes a kernel a host array fails here as on a GPU."""
from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import needs_emu, run_job
from test_distributed import needs_mpi

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "tests" / "cupy_sim"


def _values(cupy, shape=(2, 3), dtype=np.float32, seed=0):
    return cupy.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# --- the simulator keeps CuPy's rules (cupy/_core/core.pyx, _kernel.pyx, _routines_indexing.pyx) ---

def test_a_device_array_is_no_numpy_array_and_numpy_cannot_convert_it(cupy):
    a = _values(cupy)
    assert not isinstance(a, np.ndarray) and type(a).__module__ == "cupy"
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    assert np.array_equal(a.get(), cupy.asnumpy(a)) and isinstance(a.get(), np.ndarray)


def test_a_host_array_in_device_arithmetic_is_refused_but_scalars_are_not(cupy):
    a = _values(cupy)
    for mixed in (lambda: a + np.ones(3, np.float32), lambda: cupy.add(a, np.ones((), np.float32)),
                  lambda: cupy.concatenate([a, np.ones((2, 3), np.float32)]), lambda: np.add(a, a, out=np.empty((2, 3)))):
        with pytest.raises(TypeError):
            mixed()
    assert isinstance(a * 2.0 + np.float32(1), cupy.ndarray)
    assert (a > np.array(0.0)).dtype == np.bool_   # comparisons read a 0-d host operand's value


def test_reductions_and_elements_are_0d_device_arrays_and_no_index(cupy):
    a = _values(cupy)
    total, element = a.sum(), a[0, 1]
    assert isinstance(total, cupy.ndarray) and total.shape == () and isinstance(float(total), float)
    element += 100   # an element is a 0-d view
    assert float(a[0, 1]) > 50
    with pytest.raises(TypeError):
        operator.index(cupy.asarray(np.int64(2)))   # CuPy has no __index__: a hidden device-to-host read


def test_flags_views_and_allocations(cupy):
    a = _values(cupy, (4, 5))
    with pytest.raises(AttributeError):
        a.flags.writeable
    assert a.flags.c_contiguous and a.flags.owndata and not a[1:].flags.owndata
    assert a[1:].data.mem is a.data.mem and a[1:].data.ptr == a.data.ptr + 5 * 4
    assert a.copy().data.mem is not a.data.mem
    assert np.may_share_memory(a, a.T) and not cupy.may_share_memory(a, a.copy())
    assert np.isnan(cupy.empty(4, np.float32).get()).all()   # fresh memory holds no zeros


def test_host_arrays_written_into_device_arrays(cupy):
    a = _values(cupy)
    with pytest.raises(ValueError, match="non-scalar"):
        a[...] = np.ones((2, 3), np.float32)   # a basic index takes a scalar only
    with pytest.raises(ValueError, match="non-scalar"):
        cupy.copyto(a, np.ones((2, 3), np.float32))
    a[np.array([1])] = np.full((1, 3), 7, np.float32)   # an advanced index converts its values
    assert (a.get()[1] == 7).all()
    with pytest.raises(TypeError):
        cupy.ascontiguousarray(np.ones(3))   # device arrays only
    assert cupy.empty_like(np.ones((2, 5))).shape == (2, 5)   # a host prototype gives its shape


def test_a_stream_is_current_while_used(cupy):
    stream = cupy.cuda.Stream()
    with stream:
        assert cupy.cuda.get_current_stream() is stream and stream.ptr
    assert cupy.cuda.get_current_stream().ptr == 0


def test_promotion_follows_numpy_2(cupy):
    half = _values(cupy, dtype=np.float16)
    assert (half * 2.0).dtype == np.float16 and (half + np.float32(1)).dtype == np.float32   # CuPy 14: NEP 50


def test_a_0d_device_array_is_no_shape_and_arrays_of_another_gpu_are_refused(cupy, monkeypatch):
    """No __index__ (internal.pyx get_size needs it), a slice bound read by int(); a kernel of CuPy
    checks each array's GPU against the current one (_kernel.pyx _check_peer_access, no peer
    access here); asarray copies onto the current GPU, and into `order` (core.pyx _astype)."""
    a, n = _values(cupy, (6,)), cupy.asarray(np.int64(3))
    for as_integer in (lambda: cupy.zeros(n), lambda: a.reshape(n, -1), lambda: a + [1.0] * 6):
        with pytest.raises(TypeError):
            as_integer()
    assert a[:n].shape == (3,) and float(a[n + 1]) == float(a.get()[4])   # an index may be computed on the device
    with pytest.raises(TypeError):
        cupy.zeros(n + 1)
    monkeypatch.setattr(cupy.cuda.runtime, "_ARCHS", ["80", "80"])
    with cupy.cuda.Device(1):
        other = _values(cupy, (6,))
    with pytest.raises(ValueError, match="different from the current device"):
        a + other
    moved = cupy.asarray(other)
    assert moved.device.id == 0 and other.device.id == 1 and moved.data.device_id == 0
    t = _values(cupy, (2, 3)).T
    assert cupy.asarray(t) is t and cupy.asarray(t, order="C").flags.c_contiguous


def test_only_what_cupy_has(cupy):
    """Functions and methods CuPy 14 lacks are missing (cupy/__init__.py's names, core.pyx's methods)."""
    a = _values(cupy)
    with pytest.raises(AttributeError):
        cupy.nanpercentile
    with pytest.raises(TypeError, match="no implementation found"):
        np.nanpercentile(a, 50)
    with pytest.raises(TypeError):
        np.vecdot(a, a)   # a ufunc CuPy 14 lacks
    with pytest.raises(AttributeError):
        a.setflags(write=False)
    assert np.isclose(float(np.linalg.norm(a)), np.linalg.norm(a.get()))


@needs_emu
def test_kernels_take_device_arrays_and_numpy_scalars_only(cupy):
    source = 'extern "C" __global__ void scale(float* x, float s, int n) { int i = threadIdx.x; if (i < n) x[i] *= s; }'
    with pytest.raises(TypeError, match="tuple"):
        cupy.RawModule(code=source, options=["-DX=1"])
    kernel = cupy.RawModule(code=source).get_function("scale")
    x = cupy.asarray(np.arange(4, dtype=np.float32))
    kernel((1,), (32,), (x, np.float32(2), np.int32(4)))
    assert x.get().tolist() == [0, 2, 4, 6]
    with pytest.raises(TypeError, match="numpy.ndarray of shape"):
        kernel((1,), (32,), (np.arange(4, dtype=np.float32), np.float32(2), np.int32(4)))
    with pytest.raises(TypeError, match="tuples"):
        kernel([1], (32,), (x, np.float32(2), np.int32(4)))


# --- the cuda backend on the simulator --------------------------------------------------------------

def run_on_sim(args, timeout=600, gpus=1, device_log=None) -> subprocess.CompletedProcess:
    """`python args...` in the checkout, with the simulator as cupy and `gpus` simulated GPUs (its
    RuntimeWarning that CuPy compiles the source rather than a checked CUBIN silenced: the
    simulator cannot load a CUBIN)."""
    path = os.pathsep.join([str(SIM), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, PYTHONPATH=path, PYTHONWARNINGS="ignore::RuntimeWarning", CUPY_SIM_DEVICES=str(gpus))
    if device_log is not None:   # each process writes the GPUs it launched kernels on
        env["CUPY_SIM_DEVICE_LOG"] = str(device_log)
    return run_job([sys.executable, *args], timeout, cwd=ROOT, env=env)


def _passed(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@needs_emu
@pytest.mark.slow
def test_the_cuda_test_sweep_passes_on_the_simulator():
    """gpu-check's first step (pytest -m gpu) but for what needs a real GPU (the checked-build
    test loads CUBINs, tc_plans' test times every plan) and the NVRTC compiles of
    test_nvrtc_kernels, which the suite runs anyway."""
    out = _passed(run_on_sim(["-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", "tests",
                              "--deselect", "tests/test_nvrtc_kernels.py",
                              "--deselect", "tests/test_reliability.py::test_the_gpu_runs_the_checked_builds",
                              "--deselect", "tests/test_roofline.py::test_tc_plans_put_each_choice_beside_its_alternatives"]))
    passed = {line.split()[1].split("[")[0] for line in out.splitlines() if line.startswith("PASSED ")}
    for test in ("tests/test_replay.py::test_replayed_steps_equal_eager_steps_bit_for_bit",   # torch or not
                 "tests/test_distributed.py::test_nccl_sum_on_one_gpu_keeps_the_values",
                 "tests/test_batch_norm.py::test_cuda_matches_numpy", "tests/test_kernels_conv.py"):
        assert any(name.startswith(test) for name in passed), (test, out[-3000:])


@needs_emu
@pytest.mark.parametrize("mode", [[], ["--dtype", "float32"], ["--math", "tf32"], ["--dtype", "float16"]],
                         ids=["float64", "float32", "tf32", "float16"])
def test_check_passes_on_the_simulator(mode):
    out = _passed(run_on_sim(["-m", "cnn_gpu", "check", "--device", "cuda", "--quick", *mode]))
    counts = re.search(r"(\d+) of (\d+) ops passed", out)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(2)) >= 18, out[-2000:]


@needs_emu
@pytest.mark.parametrize("run", [["--epochs", "2", "--max-batches", "3", "--precision", "fp16", "--replay"],
                                 ["--epochs", "1", "--max-batches", "2", "--model", "resnet", "--optimizer", "sgd",
                                  "--precision", "tf32", "--replay"],
                                 pytest.param(["--epochs", "2", "--max-batches", "3", "--precision", "fp16",
                                               "--nproc", "2"], marks=needs_mpi)],
                         ids=["cnn-fp16-replay", "resnet-tf32-replay", "cnn-fp16-two-gpus"])
def test_training_on_the_simulator_matches_the_emulator(run, tmp_path):
    """The same kernels from the same arrays: the cuda backend's run gives the emu backend's
    losses, accuracies and loss scale to the last printed digit. With two ranks, one simulated GPU
    each (a kernel refuses an array of another GPU), their gradients summed by the simulator's NCCL
    (distributed._nccl, which no other test runs), the emu backend's by MPI."""
    def summary(device):
        result = run_on_sim(["-m", "cnn_gpu", "train", "--device", device, *run], gpus=2, device_log=tmp_path)
        _passed(result)
        bars = [line.rsplit("\r", 1)[-1] for line in result.stderr.splitlines() if "test=" in line]
        accuracy = re.sub(r" in [\d.]+ s$", "", result.stdout.strip().splitlines()[-1])
        return [re.sub(r"\[[^\]]*\]", "", bar) for bar in bars], accuracy
    on_cuda, on_emu = summary("cuda"), summary("emu")
    assert on_cuda[1].startswith("test accuracy") and on_cuda[0], on_cuda
    assert on_cuda == on_emu
    ranks = 2 if "--nproc" in run else 1   # each rank on its own GPU, the local rank's
    assert sorted(p.read_text() for p in tmp_path.glob("*.txt")) == [str(r) for r in range(ranks)]


@needs_emu
def test_gpu_check_rehearses_its_steps_on_the_simulator(tmp_path):
    """gpu-check itself (environment, steps, report) with three of its --quick steps, so that the
    first GPU lease is not spent on a command that cannot run; its benchmark has a cuda row of
    every op it times."""
    result = run_on_sim(["-m", "cnn_gpu.acceptance", "--quick", "--out", str(tmp_path),
                         "--only", "check float16,bench,train fp16 --replay"])
    _passed(result)
    report = (tmp_path / "gpu-check-report.md").read_text()
    assert "Overall: **PASS**" in report and "Simulated GPU sm_80" in report
    for title in ("check float16", "bench", "train fp16 --replay"):
        assert f"| {title} | PASS | 0 |" in report
    assert (tmp_path / "check-float16.json").stat().st_size
    from cnn_gpu.bench import DEFAULT_OPS
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["op"] for r in rows if r["device"] == "cuda"} == {*DEFAULT_OPS, "train_step_replayed"}


CHECKPOINT_ON_GPU_1 = """
import numpy as np, cupy
from cnn_gpu import nn, optim
nn.init.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
loss_fn = nn.CrossEntropyLoss()
rng = np.random.default_rng(0)
try:
    model.to("cuda:1")
except ValueError as err:
    print("refused:", err)
with cupy.cuda.Device(1):
    model.to("cuda:1")   # PyTorch's spelling, for the current GPU
    loss_fn.cuda(1)
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = cupy.asarray(rng.standard_normal((4, 1, 6, 6)).astype(np.float32))
    labels = cupy.asarray(rng.integers(0, 3, 4))

def step():
    with cupy.cuda.Device(1):
        opt.zero_grad()
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

step()
weights, state = model.state_dict(), opt.state_dict()
step()
model.load_state_dict(weights)   # GPU 0 is current
opt.load_state_dict(state)
on = {a.device.id for a in [p.data for p in model.parameters()] + [v for s in opt.state for v in s.values()
                                                                    if hasattr(v, "device")]}
assert on == {1}, on
step()
print("resumed on GPU", *on)
"""


LAUNCH_MEMO_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import backend
memo = backend.LaunchMemo()
dy, x = (cupy.asarray(np.random.default_rng(i).standard_normal(300).astype(np.float32)) for i in range(2))
args = (dy, x, cupy.empty_like(x), np.int64(300))
memo.launch("cuda", "elementwise", np.float32, "relu_backward", (2,), (256,), args)
with cupy.cuda.Device(1):
    try:
        memo.launch("cuda", "elementwise", np.float32, "relu_backward", (2,), (256,), args)
    except ValueError as err:
        print("refused:", err)
"""


@needs_emu
def test_a_launch_memo_checks_a_launch_on_another_current_gpu():
    """backend.LaunchMemo's unchecked launch needs the GPU its checked one had: with another GPU
    current, the same arrays are checked again, and refused (they live on GPU 0)."""
    out = _passed(run_on_sim(["-c", LAUNCH_MEMO_ON_ANOTHER_GPU], gpus=2))
    assert "refused: kernel 'relu_backward' argument 'dy' is on GPU 0 but the current device is GPU 1" in out


POOL_INDICES_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import functional as F
x = cupy.asarray(np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32))
y, indices = F.max_pool2d(x, 2)
with cupy.cuda.Device(1):
    other = cupy.asarray(indices)
try:
    F.max_pool2d_backward(cupy.ones_like(y), other, x.shape, 2)
except ValueError as err:
    print("refused:", err)
"""


@needs_emu
def test_max_pool_backward_names_indices_on_another_gpu():
    """The library's own device check comes before the index check, which computes on the indices
    (CuPy's peer-access error came first, helper-100)."""
    out = _passed(run_on_sim(["-c", POOL_INDICES_ON_ANOTHER_GPU], gpus=2))
    assert "refused: indices is on GPU 1 but the current device is GPU 0" in out


GRADIENT_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import optim
from cnn_gpu.nn import Parameter
p = Parameter(cupy.ones(3, np.float32), backend="cuda")
with cupy.cuda.Device(1):
    p.grad = cupy.ones(3, np.float32)
for make in (lambda: optim.SGD([p], lr=0.5), lambda: optim.Adam([p])):
    try:
        make().step()
    except ValueError as err:
        print("refused:", err)
p.grad = np.ones(3, np.float32)
try:
    optim.SGD([p], lr=0.5).step()
except TypeError as err:
    print("refused:", err)
print("parameter", float(p.data[0]))
"""


@needs_emu
def test_an_optimizer_refuses_a_gradient_on_another_gpu_or_the_host():
    """The step copied it onto the parameter's GPU behind the caller's back (helper-100), against
    README's rule that a CuPy array is never copied for you; a NumPy gradient of a GPU parameter
    likewise. Refused before any parameter changes."""
    out = _passed(run_on_sim(["-c", GRADIENT_ON_ANOTHER_GPU], gpus=2))
    assert out.count("refused: parameter 0: its gradient is on GPU 1 but the parameter on GPU 0") == 2
    assert "refused: inputs mix CuPy and NumPy arrays" in out
    assert "parameter 1.0" in out


ADAGRAD_STATE_ON_THE_PARAMETERS_GPU = """
import numpy as np, cupy
from cnn_gpu import optim
from cnn_gpu.nn import Parameter
with cupy.cuda.Device(1):
    p = Parameter(cupy.ones(3, np.float32), backend="cuda")
optimizer = optim.Adagrad([p], lr=0.5, initial_accumulator_value=3.0)   # GPU 0 current
print("sum on GPU", optimizer.state[0]["sum"].device.id)
with cupy.cuda.Device(1):
    p.grad = cupy.ones(3, np.float32)
    optimizer.step()
print("parameter", float(p.data[0]))
"""


@needs_emu
def test_adagrads_state_made_at_construction_is_on_the_parameters_gpu():
    """Adagrad makes its state when built, as PyTorch's: on the parameter's GPU, whichever is current,
    so the first step on that GPU takes it (sum 3 + 1, p = 1 - 0.5 / 2)."""
    out = _passed(run_on_sim(["-c", ADAGRAD_STATE_ON_THE_PARAMETERS_GPU], gpus=2))
    assert "sum on GPU 1" in out and "parameter 0.75" in out


UNSCALE_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import optim
from cnn_gpu.amp import GradScaler
from cnn_gpu.nn import Parameter
with cupy.cuda.Device(1):
    p = Parameter(cupy.zeros((3, 2), np.float32), backend="cuda")
    p.grad = cupy.asfortranarray(cupy.full((3, 2), 8.0, np.float32))
try:
    GradScaler(init_scale=4.0).unscale_(optim.SGD([p], lr=0.1))
except ValueError as err:
    print("refused:", err)
print("left on GPU", p.grad.device.id, float(p.grad[0, 0]))
"""


@needs_emu
def test_unscale_refuses_a_gradient_of_another_gpu_in_any_layout():
    """GradScaler.unscale_ with GPU 0 current refuses an F-ordered gradient on GPU 1 (whose C-ordered
    copy would otherwise be made on GPU 0 and bound), leaving it as it was."""
    out = _passed(run_on_sim(["-c", UNSCALE_ON_ANOTHER_GPU], gpus=2))
    assert "refused: GradScaler.unscale_: a gradient is on GPU 1 but the current device is GPU 0" in out
    assert "left on GPU 1 8.0" in out


@needs_emu
def test_a_checkpoint_loads_onto_the_gpu_its_model_is_on():
    """load_state_dict of a model and of its optimizer on GPU 1 while GPU 0 is current (a rank of a
    two-GPU job resuming) keeps every array on GPU 1, where the next step runs. The model moved there by
    to("cuda:1") with GPU 1 current, refused with GPU 0 current."""
    out = _passed(run_on_sim(["-c", CHECKPOINT_ON_GPU_1], gpus=2))
    assert "resumed on GPU 1" in out
    # "cuda:1" with GPU 0 current: refused (the kernels run on the current GPU), nothing moved
    assert "refused: device 'cuda:1': the kernels run on CuPy's current GPU, 0; make GPU 1 current first" in out


UNPOOL_INDICES_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import functional as F
x = cupy.asarray(np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32))
y, indices = F.max_pool2d(x, 2)
with cupy.cuda.Device(1):
    other = cupy.asarray(indices)
for call in (lambda: F.max_unpool2d(y, other, 2), lambda: F.max_unpool2d_backward(x, other)):
    try:
        call()
    except ValueError as err:
        print("refused:", err)
"""


@needs_emu
def test_max_unpool_names_indices_on_another_gpu():
    """max_unpool2d and its backward check the arrays' GPU before the index range check computes on
    the indices."""
    out = _passed(run_on_sim(["-c", UNPOOL_INDICES_ON_ANOTHER_GPU], gpus=2))
    assert out.count("refused: indices is on GPU 1 but the current device is GPU 0") == 2, out


FRACTIONAL_ARRAYS_ON_ANOTHER_GPU = """
import numpy as np, cupy
from cnn_gpu import functional as F
x = cupy.asarray(np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32))
samples = np.full((1, 2, 2), 0.5, np.float32)
y, indices = F.fractional_max_pool2d(x, 2, 3, None, True, cupy.asarray(samples))
with cupy.cuda.Device(1):
    other_samples, other_indices = cupy.asarray(samples), cupy.asarray(indices)
for call in (lambda: F.fractional_max_pool2d(x, 2, 3, _random_samples=other_samples),
             lambda: F.fractional_max_pool2d_backward(cupy.ones_like(y), other_indices, x.shape, 2)):
    try:
        call()
    except ValueError as err:
        print("refused:", err)
"""


@needs_emu
def test_fractional_max_pool_names_samples_and_indices_on_another_gpu():
    """fractional_max_pool2d checks its samples' GPU before their range check, and its backward the
    indices' before the reach check, each of which computes on them."""
    out = _passed(run_on_sim(["-c", FRACTIONAL_ARRAYS_ON_ANOTHER_GPU], gpus=2))
    assert "refused: _random_samples is on GPU 1 but the current device is GPU 0" in out, out
    assert "refused: indices is on GPU 1 but the current device is GPU 0" in out, out
