"""`cnn-gpu train` data-parallel on the CPU: `mpiexec -n 2` and `--nproc 2` against one process
with the doubled batch (numpy backend, digits)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run_job
from test_distributed import MPIEXEC, needs_mpi

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "HYDI_", "MPI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["CNN_GPU_COLLECTIVE_TIMEOUT"] = "60"
    return env


def train(*args, ranks=1, timeout=240):
    command = [sys.executable, "-m", "cnn_gpu", "train", "--device", "numpy", *map(str, args)]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks)] + command
    return run_job(command, timeout, env=_env())


def _weights(path):
    from cnn_gpu import checkpoint
    return checkpoint.load(path)[0]


@needs_mpi
def test_two_ranks_take_the_steps_of_one_process_with_the_doubled_batch(tmp_path):
    quick = ("--epochs", 2, "--max-batches", 4, "--seed", 3)
    two = train(*quick, "--batch-size", 16, "--save", tmp_path / "two.npz", ranks=2)
    one = train(*quick, "--batch-size", 32, "--save", tmp_path / "one.npz")
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    assert two.stdout.count("training cnn") == 1 and "batch 16 x 2 ranks" in two.stdout   # rank 0 alone prints
    a, b = _weights(tmp_path / "two.npz"), _weights(tmp_path / "one.npz")
    for name in b:
        scale = np.abs(b[name]).max()
        assert scale > 0 and np.abs(a[name] - b[name]).max() <= 1e-4 * scale, name


@needs_mpi
def test_two_ranks_augment_cifar_as_one_process_does(tmp_path):
    """Each rank crops and flips its shard as the whole global batch's images at those places (they
    drew the first shard's crops on every rank)."""
    from test_cifar import make_batches, write_binary
    write_binary(tmp_path / "cifar", make_batches(np.random.default_rng(9), per_batch=16))
    quick = ("--dataset", "cifar10", "--data", tmp_path / "cifar", "--model", "cnn", "--epochs", 1, "--max-batches", 3)
    two = train(*quick, "--batch-size", 8, "--save", tmp_path / "two.npz", ranks=2)
    one = train(*quick, "--batch-size", 16, "--save", tmp_path / "one.npz")
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    a, b = _weights(tmp_path / "two.npz"), _weights(tmp_path / "one.npz")
    for name in b:
        scale = np.abs(b[name]).max()
        assert scale > 0 and np.abs(a[name] - b[name]).max() <= 1e-4 * scale, name


@needs_mpi
def test_nproc_relaunches_under_mpiexec_and_reaches_the_single_process_accuracy(tmp_path):
    two = train("--epochs", 3, "--batch-size", 16, "--nproc", 2)
    one = train("--epochs", 3, "--batch-size", 32)
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr

    def accuracy(out):
        line = [l for l in out.splitlines() if l.startswith("test accuracy:")]
        assert len(line) == 1, out
        return float(line[0].split()[2].rstrip("%"))
    assert accuracy(two.stdout) > 90 and abs(accuracy(two.stdout) - accuracy(one.stdout)) <= 1.5


@needs_mpi
def test_a_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    path = tmp_path / "run.npz"
    first = train("--epochs", 1, "--max-batches", 3, "--batch-size", 16, "--save", path, ranks=2)
    assert first.returncode == 0, first.stderr
    from cnn_gpu import checkpoint
    assert checkpoint.load(path)[2]["world_size"] == 2
    resumed = train("--epochs", 2, "--max-batches", 3, "--batch-size", 32, "--resume", path, "--save", path)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 2..2" in resumed.stdout and checkpoint.load(path)[2]["epoch"] == 2


def test_nproc_is_refused_cleanly_without_mpi4py(monkeypatch, capsys):
    import builtins

    from cnn_gpu.cli import main
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name == "mpi4py":
            raise ImportError("no mpi4py")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    assert main(["train", "--nproc", "2"]) == 2
    assert "pip install 'cnn_gpu[mpi]'" in capsys.readouterr().err


def test_without_nproc_drops_only_that_option():
    from cnn_gpu.cli.train import _without_nproc
    assert _without_nproc(["--epochs", "2", "--nproc", "4", "--seed=1", "--nproc=3"]) == ["--epochs", "2", "--seed=1"]
    # abbreviated as argparse accepts it
    assert _without_nproc(["--npro", "2", "--epochs=2", "--np=3", "--model", "cnn"]) == ["--epochs=2", "--model", "cnn"]
    assert _without_nproc(["--n", "2", "--epochs", "1", "--"]) == ["--epochs", "1", "--"]


def test_no_other_train_option_starts_like_nproc():
    """_without_nproc takes any --n... prefix of --nproc for it."""
    from cnn_gpu.cli import train as train_cli
    parser = train_cli.argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    options = [o for action in parser._actions for o in action.option_strings]
    assert [o for o in options if o.startswith("--n")] == ["--nproc"]


@needs_mpi
def test_ranks_started_with_different_settings_are_named_before_training(tmp_path):
    base = [sys.executable, "-m", "cnn_gpu", "train", "--device", "numpy", "--epochs", "1", "--max-batches", "2"]
    command = [str(MPIEXEC), "-n", "1", *base, "--lr", "0.01", ":", "-n", "1", *base, "--lr", "0.02"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode != 0
    assert "rank 1 has other settings than rank 0" in done.stderr and "lr=0.02" in done.stderr
    assert "test accuracy" not in done.stdout


def _two_rank_job(first: list, second: list, timeout=120):
    base = [sys.executable, "-m", "cnn_gpu", "train", "--device", "numpy", "--epochs", "1"]
    command = [str(MPIEXEC), "-n", "1", *base, *first, ":", "-n", "1", *base, *second]
    return run_job(command, timeout, env=_env())


@needs_mpi
@pytest.mark.parametrize("second_images", [110, 140])
def test_ranks_with_different_data_are_named_before_training(tmp_path, second_images):
    """110 images: the same 4 steps, silently other data before; 140: 5 steps against 4, the
    collectives misaligned (an MPI crash)."""
    rng = np.random.default_rng(7)
    paths = []
    for n in (100, second_images):
        paths.append(tmp_path / f"data{n}.npz")
        np.savez(paths[-1], x=rng.random((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, n))
    options = ["--dataset", "npz", "--batch-size", "16"]
    done = _two_rank_job([*options, "--data", paths[0]], [*options, "--data", paths[1]])
    assert done.returncode != 0
    assert "rank 1 has other settings than rank 0: data set=" in done.stderr
    assert "test accuracy" not in done.stdout


@needs_mpi
def test_ranks_with_different_max_batches_are_named_before_training():
    done = _two_rank_job(["--max-batches", "2"], ["--max-batches", "3"])
    assert done.returncode != 0
    assert "max_batches=3 (rank 0: 2)" in done.stderr


@needs_mpi
def test_a_usage_error_on_one_rank_ends_the_job_at_once():
    """Rank 1 alone refuses its options: the job ends with exit 2 instead of rank 0 waiting out the
    replica check's collective (the test's timeout is below CNN_GPU_COLLECTIVE_TIMEOUT=60)."""
    done = _two_rank_job(["--max-batches", "2"], ["--max-batches", "2", "--warmup-epochs", "5"], timeout=45)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "[rank 1] cnn-gpu train: error: --warmup-epochs 5 must be below --epochs 1" in done.stderr


@needs_mpi
@pytest.mark.parametrize("options, message", [
    (["--warmup-epochs", "5"], "cnn-gpu train: error: --warmup-epochs 5 must be below --epochs 1"),
    (["--replay"], "cnn-gpu train: error: --replay replays the kernels of one process: this run has 2"),
    (["--epochs", "0"], "train: error: argument --epochs: must be"),   # argparse's
    (["--bogus"], "error: unrecognized arguments: --bogus"),
    (["--batch-size", "1", "--model", "resnet"], "cnn-gpu train: error: --batch-size 1: --model resnet has batch norm"),
])
def test_an_option_every_rank_refuses_is_reported_once_under_a_hand_started_mpiexec(options, message):
    """helper-92: `mpiexec -n 2 cnn-gpu train <bad options>` printed the error once a rank (and a
    rank's abort could cut another's short): the ranks share their refusals before any other
    collective and rank 0 alone prints each; argparse's errors only on rank 0; exit status 2."""
    done = train("--epochs", "1", "--max-batches", "2", *options, ranks=2, timeout=90)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count(message) == 1 and done.stderr.count("error:") == 1, done.stderr[-2000:]
    assert "[rank" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


@needs_mpi
def test_a_data_file_missing_on_one_rank_is_reported_once_by_rank_0_naming_it(tmp_path):
    """A refusal of one rank's set-up (its data file, its GPUs) is printed once, naming the rank,
    and the job exits 2 (rank 0 prints it after the ranks' set-ups, where it was rank 1's abort)."""
    rng = np.random.default_rng(5)
    present = tmp_path / "data.npz"
    np.savez(present, x=rng.random((100, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 100))
    done = _two_rank_job(["--max-batches", "2", "--dataset", "npz", "--data", present],
                         ["--max-batches", "2", "--dataset", "npz", "--data", tmp_path / "missing.npz"], timeout=45)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("error:") == 1 and "[rank 1] cnn-gpu train: error: " in done.stderr, done.stderr[-2000:]
    assert "missing.npz" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


@needs_mpi
def test_killing_the_job_mid_run_leaves_the_last_checkpoint_loadable(tmp_path):
    import signal
    import time

    from cnn_gpu import checkpoint
    path = tmp_path / "run.npz"
    command = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "cnn_gpu", "train", "--device", "numpy",
               "--epochs", "15", "--batch-size", "16", "--save", str(path)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        assert path.exists(), "no checkpoint was written"
        time.sleep(0.3)                      # somewhere in a later epoch, possibly mid-save
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    model_state, _, meta = checkpoint.load(path)
    assert meta["epoch"] >= 1 and meta["world_size"] == 2 and model_state


@needs_mpi
def test_bench_nproc_reports_scaling_and_the_modeled_allreduce(tmp_path, capsys):
    import json

    from cnn_gpu.cli import main
    path = tmp_path / "scaling.json"
    assert main(["bench", "--nproc", "2", "--repeat", "2", "--batch", "8", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MEASURED data-parallel scaling" in out and "scaling efficiency" in out
    assert "MODELED gradient all-reduce" in out and "(model)" in out
    rows = json.loads(path.read_text())["scaling"]
    assert [r["ranks"] for r in rows] == [1, 2] and not any(r["modeled"] for r in rows)
    assert all(r["images_per_s"] > 0 for r in rows)
    assert main(["bench", "--nproc", "1"]) == 2


@needs_mpi
def test_a_rank_whose_shards_are_empty_finishes_the_epoch():
    """Three ranks of 720 images on the 1438 training images: the one global batch leaves rank 2
    nothing, which must still evaluate and report (it once died reading a progress postfix it
    never set)."""
    run = train("--epochs", 1, "--batch-size", 720, ranks=3)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("test accuracy:") == 1


@needs_mpi
def test_a_lone_image_on_one_rank_is_skipped_by_batch_norm_models(tmp_path):
    """9 images, 2 ranks of 4: the last global batch is one image on rank 0 and none on rank 1;
    resnet18's batch norm cannot train on it, so both ranks skip that step together."""
    rng = np.random.default_rng(3)
    path = tmp_path / "nine.npz"
    np.savez(path, x_train=rng.random((9, 8, 8)), y_train=np.arange(9) % 3, x_test=rng.random((4, 8, 8)),
             y_test=np.arange(4) % 3)
    run = train("--model", "resnet18", "--dataset", "npz", "--data", path, "--batch-size", 4, "--epochs", 1, ranks=2)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("test accuracy:") == 1


def test_nproc_refuses_what_every_rank_would_refuse_once_before_relaunching(tmp_path, monkeypatch, capsys):
    """helper-92: --replay, a bad --resume file or clashing options were refused by every rank
    (each printing the error and aborting); they are refused once, before mpiexec starts."""
    import subprocess

    from cnn_gpu.cli import main
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("relaunched"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    for argv, message in ((["--replay", "--device", "emu"], "--replay replays the kernels of one process"),
                          (["--resume", str(bad)], "bad.npz"),
                          (["--warmup-epochs", "3", "--epochs", "2"], "--warmup-epochs 3 must be below")):
        assert main(["train", "--nproc", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("cnn-gpu train: error:") == 1, err


@needs_mpi
def test_sync_bn_makes_two_ranks_take_the_steps_of_one_process_with_the_doubled_batch(tmp_path):
    """--sync-bn: the small ResNet's batch norms normalise by the global batch, so two ranks of 8 train
    as one process of 16 does; without it each rank's statistics are its own 8 images' (they differ)."""
    quick = ("--model", "resnet", "--epochs", 1, "--max-batches", 3, "--seed", 5)
    synced = train(*quick, "--batch-size", 8, "--sync-bn", "--save", tmp_path / "synced.npz", ranks=2)
    apart = train(*quick, "--batch-size", 8, "--save", tmp_path / "apart.npz", ranks=2)
    one = train(*quick, "--batch-size", 16, "--save", tmp_path / "one.npz")
    assert synced.returncode == 0 and apart.returncode == 0 and one.returncode == 0, (
        synced.stderr + apart.stderr + one.stderr)
    a, b, c = _weights(tmp_path / "synced.npz"), _weights(tmp_path / "apart.npz"), _weights(tmp_path / "one.npz")
    worst_apart = 0.0
    for name in c:
        scale = np.abs(c[name]).max()
        assert scale > 0 and np.abs(a[name] - c[name]).max() <= 1e-4 * scale, name
        worst_apart = max(worst_apart, np.abs(b[name] - c[name]).max() / scale)
    assert worst_apart > 1e-3


@needs_mpi
def test_sync_bn_skips_the_global_batch_that_leaves_a_rank_no_image(tmp_path):
    """9 images, 2 ranks of 4 with --sync-bn: the last global batch is one image on rank 0 and none
    on rank 1, which both ranks skip (rank 1 alone would miss the norms' collectives), as one
    process of 8 skips its lone last image (with --sync-bn too): the same weights."""
    rng = np.random.default_rng(3)
    path = tmp_path / "nine.npz"
    np.savez(path, x_train=rng.random((9, 8, 8)), y_train=np.arange(9) % 3, x_test=rng.random((4, 8, 8)),
             y_test=np.arange(4) % 3)
    quick = ("--model", "resnet18", "--dataset", "npz", "--data", path, "--epochs", 2, "--optimizer", "sgd")
    two = train(*quick, "--batch-size", 4, "--sync-bn", "--save", tmp_path / "two.npz", ranks=2)
    one = train(*quick, "--batch-size", 8, "--save", tmp_path / "one.npz")
    one_synced = train(*quick, "--batch-size", 8, "--sync-bn", "--save", tmp_path / "one_synced.npz")
    assert two.returncode == 0 and one.returncode == 0 and one_synced.returncode == 0, (
        two.stderr + one.stderr + one_synced.stderr)
    a, b, c = (_weights(tmp_path / f"{run}.npz") for run in ("two", "one", "one_synced"))
    for name in b:
        scale = np.abs(b[name]).max()
        assert scale > 0 and np.abs(a[name] - b[name]).max() <= 1e-4 * scale, name
        assert np.abs(c[name] - b[name]).max() <= 1e-6 * scale, name


def test_shard_sizes_follow_shard_batches():
    from cnn_gpu.distributed import shard_batches
    from cnn_gpu.distributed._shard import shard_sizes
    for n, batch, world in [(9, 4, 2), (30, 4, 3), (7, 8, 2), (24, 4, 3)]:
        shards = [list(shard_batches(n, batch, None, rank, world)) for rank in range(world)]
        for index in range(len(shards[0])):
            assert shard_sizes(n, batch, index, world) == [len(s[index]) for s in shards], (n, batch, world, index)
