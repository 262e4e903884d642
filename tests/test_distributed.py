"""cnn_gpu.distributed: sharding, and 2-process `mpiexec` runs on the CPU (numpy backend):
equivalence with one process at the doubled batch, bit-identical reruns, replica checks and the
abort of the whole job when one rank fails."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import distributed as dist

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
    out = tmp_path / name
    command = [sys.executable, str(SCRIPT), str(out), *map(str, args)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks)] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_environment())
    return done, out


def test_single_process_world_without_mpi():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.local_rank() == 0
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
def test_reruns_are_bit_identical(tmp_path):
    first, a = run_script(tmp_path, 2, "float32", 8, 5, name="a.npz")
    second, b = run_script(tmp_path, 2, "float32", 8, 5, name="b.npz")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = np.load(a), np.load(b)
    for name in a.files:
        assert a[name].tobytes() == b[name].tobytes(), name


@needs_mpi
def test_an_exception_on_one_rank_aborts_the_job_with_its_message(tmp_path):
    done, out = run_script(tmp_path, 2, "float64", 8, 5, "fault", timeout=60)
    assert done.returncode != 0
    assert "[rank 1]" in done.stderr and "planted failure on rank 1" in done.stderr
    assert not out.exists()


@needs_mpi
def test_ranks_with_different_models_are_named_before_any_reduction(tmp_path):
    done, out = run_script(tmp_path, 2, "float64", 8, 5, "mismatch", timeout=60)
    assert done.returncode != 0
    assert "ReplicaMismatch" in done.stderr and "rank 1 has other parameters than rank 0" in done.stderr
    assert not out.exists()
