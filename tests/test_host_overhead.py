"""benchmarks/host_overhead.py: a training step's host time, its kernel launches checked and
counted but not run (cnn_gpu.bench.dry_run)."""
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu.bench import dry_run


@pytest.fixture
def host_overhead(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import host_overhead
    return host_overhead


def test_launches_are_checked_and_counted_not_run():
    real = backend.kernel_function
    x, y = np.ones(8, np.float32), np.full(8, 7.0, np.float32)
    with dry_run.launches_counted_not_run() as counted:
        backend.launch("emu", "elementwise", np.float32, "relu_forward", (1,), (256,), (x, y, np.int64(8)))
        with pytest.raises(TypeError, match="long long"):   # still checked
            backend.launch("emu", "elementwise", np.float32, "relu_forward", (1,), (256,), (x, y, np.int32(8)))
    assert counted == ["relu_forward"] and (y == 7).all()
    assert backend.kernel_function is real and np.isnan(backend.array_module("emu").empty(3)).all()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_each_setting_of_a_model_gets_its_launches_and_time(host_overhead, optimizer):
    rows = host_overhead.rows(["cnn"], batch=2, steps=1, optimizer=optimizer)
    assert [row[1:3] for row in rows] == list(host_overhead.SETTINGS)
    assert all(row[3] > 20 and float(row[4]) > 0 and int(row[5]) > 0 and float(row[6]) > 0 for row in rows), rows


@pytest.mark.parametrize("optimizer, kernel", [("sgd", "sgd_momentum_step"), ("adam", "adam_step")])
def test_the_timed_step_runs_the_optimizer_asked_for(optimizer, kernel):
    from cnn_gpu import models
    rng = np.random.default_rng(0)
    model = models.build("cnn", (3, 8, 8), 10, rng=rng, filters=4)
    model.to("emu")
    step = dry_run.training_step(model, (2, 3, 8, 8), 10, rng, optimizer)
    with dry_run.launches_counted_not_run() as counted:
        step()
    assert [name for name in counted if name.endswith("_step")] == [kernel]


def test_the_thread_clock_times_the_steps_by_this_threads_cpu_time(host_overhead, monkeypatch):
    ticks = iter(range(0, 10**6, 2))   # each reading 2 ms after the last: a step and a replay take 2 ms
    monkeypatch.setitem(host_overhead.CLOCKS, "thread", lambda: next(ticks) / 1e3)
    (row,) = [r for r in host_overhead.rows(["cnn"], batch=2, steps=2, clock="thread") if r[1:3] == ("float32", "fp32")]
    assert (row[4], row[6]) == ("2.0", "2.00"), row
