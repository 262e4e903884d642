"""cnn_gpu.lr_scheduler's PyTorch schedulers against torch.optim.lr_scheduler: the same rates bit for
bit (the same recursive forms), through a rate changed by hand between steps, a state_dict resume
and step(epoch)'s closed forms; bad arguments refused before the optimizer changes."""
import math
import warnings

import numpy as np
import pytest

from cnn_gpu import lr_scheduler, nn, optim

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (make torch)")

SCHEDULERS = ["StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR", "LambdaLR"]


def _arguments(name: str, rng) -> tuple:
    """Random (args, kwargs) of scheduler `name` (fresh draws per seed)."""
    if name == "StepLR":
        return (int(rng.integers(1, 6)),), {"gamma": float(rng.uniform(0.1, 0.9))}
    if name == "MultiStepLR":
        return (sorted(int(m) for m in rng.integers(0, 25, 4)),), {"gamma": float(rng.uniform(0.1, 0.9))}
    if name == "ExponentialLR":
        return (float(rng.uniform(0.8, 0.99)),), {}
    if name == "LinearLR":
        return (), {"start_factor": float(rng.uniform(0.05, 1.0)), "end_factor": float(rng.uniform(0.0, 1.0)),
                    "total_iters": int(rng.integers(1, 12))}
    if name == "CosineAnnealingLR":
        return (int(rng.integers(1, 9)),), {"eta_min": float(rng.uniform(0, 1e-3))}
    decay = float(rng.uniform(0.8, 0.99))
    return (lambda epoch: decay ** epoch,), {}


def _pair(name, args, kwargs, lr):
    """(our optimizer, our scheduler, torch's optimizer, torch's scheduler) for the same settings."""
    ours = optim.SGD([nn.Parameter(np.zeros(3, np.float32))], lr=lr, momentum=0.9)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr, momentum=0.9)
    return (ours, getattr(lr_scheduler, name)(ours, *args, **kwargs),
            theirs, getattr(torch.optim.lr_scheduler, name)(theirs, *args, **kwargs))


def _rates(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")   # torch's warning about step() before optimizer.step()
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("seed", range(4))
def test_rates_are_pytorchs_bit_for_bit(name, seed):
    rng = np.random.default_rng(seed)
    args, kwargs = _arguments(name, rng)
    lr = float(rng.uniform(0.01, 1.0))
    ours, schedule, theirs, reference = _pair(name, args, kwargs, lr)
    assert _rates(ours) == _rates(theirs) and ours.param_groups[0]["initial_lr"] == lr
    changed_at = int(rng.integers(3, 20))
    for epoch in range(40):
        if epoch == changed_at:   # a rate changed by hand: the recursive forms follow it
            for optimizer in (ours, theirs):
                optimizer.param_groups[0]["lr"] *= 0.5
        schedule.step()
        reference.step()
        assert _rates(ours) == _rates(theirs), (epoch, kwargs)
        assert schedule.get_last_lr() == reference.get_last_lr() and schedule.last_epoch == reference.last_epoch
    assert schedule.base_lrs == reference.base_lrs == [lr]


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_resumed_schedule_continues_as_the_whole_run(name):
    """Save after some epochs, build a new optimizer and scheduler, load both states: the later
    rates are the uninterrupted run's (and PyTorch's)."""
    rng = np.random.default_rng(7)
    args, kwargs = _arguments(name, rng)
    ours, schedule, theirs, reference = _pair(name, args, kwargs, 0.3)
    for _ in range(9):
        schedule.step()
        reference.step()
    saved = ours.state_dict(), schedule.state_dict()
    resumed_optimizer = optim.SGD([nn.Parameter(np.zeros(3, np.float32))], lr=0.3, momentum=0.9)
    resumed = getattr(lr_scheduler, name)(resumed_optimizer, *args, **kwargs)
    resumed_optimizer.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    assert resumed.optimizer is resumed_optimizer
    for _ in range(20):
        for s in (schedule, resumed, reference):
            s.step()
        assert _rates(resumed_optimizer) == _rates(ours) == _rates(theirs)


@needs_torch
def test_linear_closed_form_rounds_as_pytorchs():
    """(end - start) * epochs / total, in that order: the product first gave 0.1 * (0.1 + 0.6 * (2/7))
    one ulp away from PyTorch's value (and 212 of 300 random settings' rates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, schedule, theirs, reference = _pair("LinearLR", (), dict(start_factor=0.1, end_factor=0.7,
                                                                      total_iters=7), 0.1)
        schedule.step(2)
        reference.step(2)
    assert _rates(ours) == _rates(theirs) == [0.1 * (0.1 + 0.6000000000000001 * 2 / 7)]


def test_warmup_cosine_sets_every_group():
    first, second = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    optimizer = optim.SGD([{"params": [first]}, {"params": [second], "lr": 5.0}], lr=1.0)
    rate = lr_scheduler.WarmupCosine(optimizer, 0.5, epochs=4, steps_per_epoch=2).apply(1, 0)
    assert [group["lr"] for group in optimizer.param_groups] == [rate, rate]


@needs_torch
@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "LambdaLR"])
def test_step_with_an_epoch_jumps_by_the_closed_form_and_warns(name):
    args, kwargs = _arguments(name, np.random.default_rng(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, schedule, theirs, reference = _pair(name, args, kwargs, 0.2)
        for epoch in (5, 2, 17, 17, 0):
            reference.step(epoch)
            with pytest.warns(UserWarning, match="deprecated"):
                schedule.step(epoch)
            assert _rates(ours) == _rates(theirs), epoch


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "LambdaLR"])
def test_rates_follow_the_closed_forms(name):
    """Without a hand-changed rate the recursive forms give the closed forms' values (to rounding):
    checked without PyTorch too."""
    args, kwargs = _arguments(name, np.random.default_rng(11))
    optimizer = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.4)
    schedule = getattr(lr_scheduler, name)(optimizer, *args, **kwargs)
    for _ in range(30):
        assert _rates(optimizer) == pytest.approx(schedule._closed_form_lr(), rel=1e-12, abs=1e-15), schedule.last_epoch
        schedule.step()


def test_the_optimizer_steps_with_the_scheduled_rate():
    parameter = nn.Parameter(np.zeros(2))
    optimizer = optim.SGD([parameter], lr=1.0)
    schedule = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.25)
    for rate in (1.0, 0.25, 0.0625):
        parameter.grad = np.ones(2)
        before = parameter.data.copy()
        optimizer.step()
        np.testing.assert_array_equal(before - parameter.data, rate)
        schedule.step()


def test_lambda_state_keeps_a_callable_objects_attributes_not_a_function():
    class Decay:
        def __init__(self, rate):
            self.rate = rate

        def __call__(self, epoch):
            return self.rate ** epoch

    optimizer = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    schedule = lr_scheduler.LambdaLR(optimizer, Decay(0.5))
    state = schedule.state_dict()
    assert state["lr_lambdas"] == [{"rate": 0.5}]
    other = lr_scheduler.LambdaLR(optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0), Decay(0.9))
    other.load_state_dict(state)
    assert other.lr_lambdas[0].rate == 0.5
    assert lr_scheduler.LambdaLR(optimizer, lambda e: 1.0).state_dict()["lr_lambdas"] == [None]


@pytest.mark.parametrize("make, error", [
    (lambda o: lr_scheduler.StepLR(o, 0), ValueError),
    (lambda o: lr_scheduler.StepLR(o, 2.5), TypeError),
    (lambda o: lr_scheduler.StepLR(o, 2, gamma=math.nan), ValueError),
    (lambda o: lr_scheduler.MultiStepLR(o, [3, -1]), ValueError),
    (lambda o: lr_scheduler.ExponentialLR(o, -0.5), ValueError),
    (lambda o: lr_scheduler.LinearLR(o, start_factor=0.0), ValueError),
    (lambda o: lr_scheduler.LinearLR(o, end_factor=1.5), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, 0), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, 5, eta_min=-1e-3), ValueError),
    (lambda o: lr_scheduler.LambdaLR(o, [lambda e: 1.0] * 2), ValueError),
    (lambda o: lr_scheduler.StepLR(o, 2, last_epoch=-2), ValueError),
    (lambda o: lr_scheduler.StepLR(o, 2, last_epoch=4), KeyError),   # resuming: no initial_lr recorded
    (lambda o: lr_scheduler.StepLR(object(), 2), TypeError),
])
def test_bad_arguments_are_refused_before_the_optimizer_changes(make, error):
    optimizer = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    with pytest.raises(error):
        make(optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.5 and "initial_lr" not in optimizer.param_groups[0]


def test_optimizer_states_load_with_or_without_a_schedulers_initial_lr():
    """PyTorch's optimizers take a group's extra keys; ours take the one a scheduler adds, either way."""
    plain = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    scheduled = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    lr_scheduler.ExponentialLR(scheduled, 0.5).step()
    plain.load_state_dict(scheduled.state_dict())
    assert plain.param_groups[0]["lr"] == 0.25 and plain.param_groups[0]["initial_lr"] == 0.5
    scheduled.load_state_dict(optim.SGD([nn.Parameter(np.zeros(2))], lr=0.125).state_dict())
    assert scheduled.param_groups[0]["lr"] == 0.125 and scheduled.param_groups[0]["initial_lr"] == 0.5
    broken = scheduled.state_dict()
    broken["param_groups"][0]["initial_lr"] = math.inf
    with pytest.raises(ValueError, match="initial_lr"):
        plain.load_state_dict(broken)
