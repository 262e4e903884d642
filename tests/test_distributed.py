"""cnn_gpu.distributed: sharding, and 2-process `mpiexec` runs on the CPU (numpy backend):
equivalence with one process at the doubled batch, bit-identical reruns, replica checks and the
abort of the whole job when one rank fails."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, data
from cnn_gpu import distributed as dist
from helpers import run_job

SCRIPT = Path(__file__).parent / "mpi" / "train_steps.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _mpi_reason() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'cnn_gpu[mpi]')"
    if not MPIEXEC.exists():
        return f"no mpiexec next to {sys.executable} (the mpich wheel provides one)"
    return ""


needs_mpi = pytest.mark.skipif(bool(_mpi_reason()), reason=_mpi_reason() or "mpi present")


def _environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "HYDI_", "MPI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    env["CNN_GPU_BACKEND"] = "numpy"
    return env


def run_script(tmp_path, ranks: int, *args, name="weights.npz", timeout=120):
    """Run the script (under mpiexec for ranks > 1); on a timeout every process of the job is
    killed, not only mpiexec, so a hung rank cannot outlive the test."""
    out = tmp_path / name
    command = [sys.executable, str(SCRIPT), str(out), *map(str, args)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks)] + command
    return run_job(command, timeout, env=_environment()), out


def test_a_job_that_times_out_is_killed_with_its_children(tmp_path):
    """helpers.run_job: on a timeout the whole process group dies (as mpiexec's ranks must), not
    only the process it started, and the call returns at once."""
    import time
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_job([sys.executable, "-c", parent], timeout=3)
    assert time.monotonic() - start < 30   # not held until the child ends by its copy of the output pipes
    pid = int(pid_file.read_text())
    for _ in range(50):   # gone, or a zombie waiting for a reaper
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {pid} outlived its job")


def test_single_process_world_without_mpi():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.local_rank() == 0
    assert "mpi4py.MPI" not in sys.modules     # not launched by mpiexec: MPI is not even initialised
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    assert dist.allreduce_sum(grads) == grads      # a no-op, not even a copy


def test_shards_are_disjoint_and_union_to_the_single_process_batches():
    n, batch, ranks = 23, 3, 4            # 23 = one full global batch of 12 and an uneven one of 11
    per_rank = [list(dist.shard_batches(n, batch, np.random.default_rng(5), r, ranks)) for r in range(ranks)]
    single = list(dist.shard_batches(n, batch * ranks, np.random.default_rng(5), 0, 1))
    assert all(len(b) == len(single) for b in per_rank)          # every rank meets every collective
    for i, whole in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([per_rank[r][i] for r in range(ranks)]), whole)
    assert [len(per_rank[r][-1]) for r in range(ranks)] == [3, 3, 3, 2]
    assert sorted(np.concatenate([b for r in per_rank for b in r])) == list(range(n))


@pytest.mark.parametrize("seeded", [True, False])
def test_one_rank_shards_are_the_single_process_batches(seeded):
    x, y = np.arange(23) * 10, np.arange(23)
    rng = (lambda: np.random.default_rng(9)) if seeded else (lambda: None)
    shards = list(dist.shard_batches(len(x), 5, rng(), 0, 1))
    whole = list(data.batches(x, y, 5, rng()))
    assert len(shards) == len(whole) == 5
    for idx, (xb, yb) in zip(shards, whole):
        np.testing.assert_array_equal(x[idx], xb)
        np.testing.assert_array_equal(y[idx], yb)


@pytest.mark.parametrize("n, batch, rank, size", [(-1, 2, 0, 1), (5, 0, 0, 1), (5, 2, 2, 2), (5, 2, -1, 2)])
def test_bad_shard_arguments_are_refused_before_iterating(n, batch, rank, size):
    with pytest.raises(ValueError, match="shard_batches"):
        dist.shard_batches(n, batch, None, rank, size)


@pytest.mark.parametrize("n, batch, rank, size", [(5.5, 2, 0, 1), (5, 2.5, 0, 1), (5, 2, 0.5, 2), (5, 2, 0, 1.5),
                                                  (5, True, 0, 1)])
def test_shard_arguments_that_are_no_ints_are_refused_before_iterating(n, batch, rank, size):
    """They used to pass the range check and fail at the first next() inside range() or a slice."""
    with pytest.raises(TypeError, match="shard_batches"):
        dist.shard_batches(n, batch, None, rank, size)


def test_a_bool_is_no_sample_count_or_root():
    rng = np.random.default_rng(11)
    from cnn_gpu import nn
    model = nn.Linear(2, 2, dtype=np.float64)
    for p in model.parameters():
        p.grad = rng.standard_normal(p.shape)
    with pytest.raises(ValueError, match="count must be a sample count"):
        dist.allreduce_gradients(model, count=True)
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast_parameters(model, root=False)


def test_bad_timeouts_and_roots_are_refused(monkeypatch):
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(ValueError, match="timeout_s"):
            dist.World(timeout_s=bad)
    monkeypatch.setenv("CNN_GPU_COLLECTIVE_TIMEOUT", "never")
    monkeypatch.setattr(dist._world, "_world", None)
    with pytest.raises(ValueError, match="CNN_GPU_COLLECTIVE_TIMEOUT"):
        dist.init()
    monkeypatch.setenv("CNN_GPU_COLLECTIVE_TIMEOUT", "7.5")
    assert dist.init().timeout_s == 7.5 and dist.init(timeout_s=3).timeout_s == 3
    from cnn_gpu import nn
    with pytest.raises(ValueError, match="root"):
        dist.broadcast_parameters(nn.Linear(2, 2), root=1)
    with pytest.raises(ValueError, match="count"):
        dist.allreduce_gradients(nn.Linear(2, 2), count=-1)
    # no model: refused in a one-process world too, where nothing else would read it (helper-100)
    for call in (dist.allreduce_gradients, dist.broadcast_parameters, dist.broadcast_buffers):
        with pytest.raises(TypeError, match="model must be a cnn_gpu.nn.Module, got NoneType"):
            call(None)


def test_buckets_split_evenly_over_ranks():
    from cnn_gpu.distributed._reduce import _buckets
    buckets = _buckets(10_000_000, 4, 3)
    assert buckets[0][0] == 0 and buckets[-1][1] == 10_000_000
    assert all((stop - start) % 3 == 0 for start, stop in buckets[:-1])
    assert all(b[1] == c[0] for b, c in zip(buckets, buckets[1:]))


@needs_mpi
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-5)])
def test_two_ranks_match_one_process_with_the_doubled_batch(tmp_path, dtype, rtol):
    # 53 samples, 2 ranks x 8: the 4th global batch of each epoch is uneven (5 samples: 5 + 0)
    steps = 9
    done, two = run_script(tmp_path, 2, dtype, 8, steps, name="two.npz")
    assert done.returncode == 0, done.stderr
    done, one = run_script(tmp_path, 1, dtype, 16, steps, name="one.npz")
    assert done.returncode == 0, done.stderr
    two, one = np.load(two), np.load(one)
    for name in one.files:
        scale = np.abs(one[name]).max()
        assert np.abs(two[name] - one[name]).max() <= rtol * scale, name
        assert scale > 0, name


@needs_mpi
def test_a_frozen_layer_gets_no_reduced_gradient_and_stays_as_it_was(tmp_path):
    done, out = run_script(tmp_path, 2, "float64", 8, 4, "frozen")
    assert done.returncode == 0, done.stderr
    trained, start = np.load(out), _train_steps().build(np.float64).state_dict()
    for name in ("0.weight", "0.bias"):    # a reduced zero gradient would have decayed them
        assert trained[name].tobytes() == start[name].tobytes(), name
    assert not np.array_equal(trained["3.weight"], start["3.weight"])


def _train_steps():
    spec = importlib.util.spec_from_file_location("train_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mpi
def test_reruns_are_bit_identical(tmp_path):
    first, a = run_script(tmp_path, 2, "float32", 8, 5, name="a.npz")
    second, b = run_script(tmp_path, 2, "float32", 8, 5, name="b.npz")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = np.load(a), np.load(b)
    for name in a.files:
        assert a[name].tobytes() == b[name].tobytes(), name


@needs_mpi
@pytest.mark.parametrize("mode, messages", [
    ("fault", ["[rank 1]", "planted failure on rank 1"]),   # an exception on one rank aborts all
    # rank 1 sleeps 60 s: rank 0's 2 s collective timeout must abort both (else communicate times out)
    ("hang", ["[rank 0]", "CollectiveTimeout"]),
    # ranks with different models are named before any reduction
    ("mismatch", ["ReplicaMismatch", "rank 1 has other parameters than rank 0"]),
    # ...and by the all-reduce itself, which summed misaligned bytes (helper-100)
    ("unchecked", ["ReplicaMismatch", "the all-reduce: rank 1 reduce other arrays than rank 0",
                   "array 0: (dtype, shape, on GPU) ('<f8', (5, 1, 3, 3), False) against ('<f8', (4, 1, 3, 3), False)"]),
])
def test_a_failing_rank_ends_the_whole_job_with_its_message(tmp_path, mode, messages):
    done, out = run_script(tmp_path, 2, "float64", 8, 5, mode, timeout=40)
    assert done.returncode != 0
    assert all(message in done.stderr for message in messages), done.stderr
    assert not out.exists()


@needs_mpi
def test_broadcast_makes_every_buffer_rank_0s_integer_counters_included(tmp_path):
    done, two = run_script(tmp_path, 2, "float32", 0, 0, "broadcast", name="two.npz", timeout=60)
    assert done.returncode == 0, done.stderr
    done, one = run_script(tmp_path, 1, "float32", 0, 0, "broadcast", name="one.npz", timeout=60)
    assert done.returncode == 0, done.stderr
    two, one = np.load(two), np.load(one)
    assert two["1.num_batches_tracked"].shape == () and int(two["1.num_batches_tracked"]) == 1
    for name in one.files:
        assert two[name].dtype == one[name].dtype and two[name].tobytes() == one[name].tobytes(), name


def _why_no_nccl() -> str:
    if "cuda" not in backend.available_backends():
        return f"NCCL needs CuPy and a GPU: {backend.why_unavailable('cuda')}"
    from cnn_gpu.distributed import _nccl
    return _nccl.why_unavailable() and f"NCCL unavailable: {_nccl.why_unavailable()}"


@pytest.mark.gpu
@pytest.mark.skipif(bool(_why_no_nccl()), reason=_why_no_nccl() or "")
def test_nccl_sum_on_one_gpu_keeps_the_values(monkeypatch):
    import cupy
    from cnn_gpu.distributed import _nccl
    monkeypatch.setattr(_nccl, "_communicator", None)
    expected = np.random.default_rng(4).standard_normal(1001)
    flat = cupy.asarray(expected)
    _nccl.sum_in_place(flat, dist.World())          # a one-rank NCCL world: the sum is the input
    np.testing.assert_array_equal(flat.get(), expected)


@needs_mpi
def test_count_weighted_reduction_of_loss_scaled_float16_gradients_does_not_overflow(tmp_path):
    dtype = "float16"
    done, out = run_script(tmp_path, 2, dtype, 8, 1, "large")
    assert done.returncode == 0, done.stderr
    grads = np.load(out)
    big = np.finfo(dtype).max / 2
    for name in grads.files:
        assert grads[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(grads[name], np.full(grads[name].shape, big, dtype=dtype))


# --- the NCCL path's deadline, on fakes of CuPy's event and communicator (no GPU needed) --------

class _FakeEvent:
    """A CUDA event whose `done` turns true at query `polls` + 1 (never, for None)."""

    def __init__(self, polls):
        self.polls, self.queries = polls, 0

    @property
    def done(self):
        self.queries += 1
        return self.polls is not None and self.queries > self.polls


class _FakeRequest:
    """An MPI request that never completes."""

    def Test(self):
        return False


class _OldCommunicator:
    """A communicator of NCCL before 2.4: no abort, no asynchronous error query."""

    def __init__(self, async_error=None):
        self.async_error, self.aborts = async_error, 0

    def check_async_error(self):
        if self.async_error is not None:
            raise self.async_error


class _FakeCommunicator(_OldCommunicator):
    def abort(self):
        self.aborts += 1


@pytest.fixture
def nccl_state(monkeypatch):
    """_nccl with a fake communicator installed as the process's; returns (module, communicator)."""
    from cnn_gpu.distributed import _nccl
    comm = _FakeCommunicator()
    monkeypatch.setattr(_nccl, "_communicator", (0, comm))
    return _nccl, comm


def test_nccl_wait_returns_once_the_event_completes(nccl_state):
    _nccl, comm = nccl_state
    event = _FakeEvent(polls=3)
    _nccl.wait_for_collective(event, comm, dist.World(timeout_s=30), "the test all-reduce", True)
    assert event.queries == 4 and comm.aborts == 0 and _nccl._communicator == (0, comm)


def test_nccl_timeout_aborts_the_communicator_and_raises_the_mpi_paths_error(nccl_state):
    _nccl, comm = nccl_state
    w = dist.World(timeout_s=0.05)
    with pytest.raises(dist.CollectiveTimeout) as nccl_error:
        _nccl.wait_for_collective(_FakeEvent(polls=None), comm, w, "the test all-reduce", True)
    assert comm.aborts == 1 and _nccl._communicator is None     # a later reduction makes a new one
    with pytest.raises(dist.CollectiveTimeout) as mpi_error:
        w.wait(_FakeRequest(), "the test all-reduce")
    assert str(nccl_error.value) == str(mpi_error.value)
    assert "rank 0: the test all-reduce did not complete within 0.05 s" in str(nccl_error.value)


def test_nccl_async_error_aborts_at_once_and_is_raised(nccl_state):
    _nccl, comm = nccl_state
    comm.async_error = RuntimeError("NCCL error: remote process exited")
    event = _FakeEvent(polls=None)
    with pytest.raises(RuntimeError, match="remote process exited"):
        _nccl.wait_for_collective(event, comm, dist.World(timeout_s=30), "the test all-reduce", True)
    assert comm.aborts == 1 and _nccl._communicator is None and event.queries == 0


def test_nccl_before_2_4_is_not_asked_for_errors_and_still_times_out(monkeypatch):
    from cnn_gpu.distributed import _nccl
    comm = _OldCommunicator(async_error=RuntimeError("ncclCommGetAsyncError is not available"))
    monkeypatch.setattr(_nccl, "_communicator", (0, comm))
    _nccl.wait_for_collective(_FakeEvent(polls=2), comm, dist.World(timeout_s=30), "the test all-reduce", False)
    with pytest.raises(dist.CollectiveTimeout, match="the test all-reduce did not complete"):
        _nccl.wait_for_collective(_FakeEvent(polls=None), comm, dist.World(timeout_s=0.05), "the test all-reduce",
                                  False)
    assert _nccl._communicator is None


def test_a_cupy_without_nccl_is_named_before_any_reduction(monkeypatch):
    """CuPy's NCCL binding imports without the library (available False) and would fail at its
    first constant; the reduction says what is missing instead."""
    import sys
    import types
    from cnn_gpu.distributed import _nccl
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = False
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    assert "CuPy finds no NCCL library" in _nccl.why_unavailable()
    with pytest.raises(RuntimeError, match="rank 0: the gradient all-reduce of CuPy arrays needs NCCL: CuPy finds no"):
        _nccl.sum_in_place(np.zeros(3), dist.World())
    nccl.available = True
    assert _nccl.why_unavailable() == ""
