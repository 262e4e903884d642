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

SCHEDULERS = ["StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR", "CosineAnnealingLR",
              "LambdaLR", "MultiplicativeLR", "CosineAnnealingWarmRestarts"]
# the schedulers whose step(epoch) is not a deprecated jump by a closed form
NO_CLOSED_FORM = ("LambdaLR", "MultiplicativeLR", "CosineAnnealingWarmRestarts")


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
    if name == "ConstantLR":
        return (), {"factor": float(rng.uniform(0.05, 1.0)), "total_iters": int(rng.integers(1, 12))}
    if name == "PolynomialLR":
        return (), {"total_iters": int(rng.integers(1, 12)), "power": float(rng.uniform(0.0, 3.0))}
    if name == "CosineAnnealingLR":
        return (int(rng.integers(1, 9)),), {"eta_min": float(rng.uniform(0, 1e-3))}
    if name == "CosineAnnealingWarmRestarts":
        return (int(rng.integers(1, 7)),), {"T_mult": int(rng.integers(1, 4)), "eta_min": float(rng.uniform(0, 1e-3))}
    decay = float(rng.uniform(0.8, 0.99))
    if name == "MultiplicativeLR":   # a factor each epoch, changing with it
        return (lambda epoch: decay + 0.001 * (epoch % 3),), {}
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
@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in NO_CLOSED_FORM])
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


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in NO_CLOSED_FORM])
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
    (lambda o: lr_scheduler.ConstantLR(o, factor=0.0), ValueError),
    (lambda o: lr_scheduler.PolynomialLR(o, power=-1.0), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, 0), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 0), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 2, T_mult=0), ValueError),
    (lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=10, pct_start=0.1), ValueError),   # a first phase of no steps
    (lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=10, pct_start=1.5), ValueError),
    (lambda o: lr_scheduler.OneCycleLR(o, 1.0, epochs=3), ValueError),
    (lambda o: lr_scheduler.OneCycleLR(o, [1.0, 2.0], total_steps=10), ValueError),
    (lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=10, anneal_strategy="cosine"), ValueError),
    (lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=10, last_epoch=3), KeyError),
    (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.ReduceLROnPlateau(o)], []), TypeError),
    (lambda o: lr_scheduler.SequentialLR(o, [], []), ValueError),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=1.0), ValueError),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="lowest"), ValueError),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, min_lr=[0.0, 0.1]), ValueError),
    (lambda o: lr_scheduler.CosineAnnealingLR(o, 5, eta_min=-1e-3), ValueError),
    (lambda o: lr_scheduler.LambdaLR(o, [lambda e: 1.0] * 2), ValueError),
    (lambda o: lr_scheduler.MultiplicativeLR(o, 0.9), ValueError),
    (lambda o: lr_scheduler.ChainedScheduler([]), ValueError),
    (lambda o: lr_scheduler.ChainedScheduler([lr_scheduler.ReduceLROnPlateau(o)]), TypeError),
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


def _adam_pair(lr):
    ours = optim.Adam([nn.Parameter(np.zeros(3, np.float32))], lr=lr)
    theirs = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr)
    return ours, theirs


def _momenta(optimizer):
    return [group["betas"][0] if "betas" in group else group["momentum"] for group in optimizer.param_groups]


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(8))
def test_one_cycle_rates_and_momenta_are_pytorchs_bit_for_bit(seed):
    """Every step of random 1cycle settings (SGD's momentum or Adam's beta1 cycled), then a resume
    from a state saved midway, then a step past total_steps refused with nothing changed."""
    rng = np.random.default_rng(seed)
    total = int(rng.integers(12, 60))
    kwargs = dict(total_steps=total, pct_start=float(rng.uniform(0.1, 0.6)),
                  anneal_strategy=["cos", "linear"][seed % 2], three_phase=bool(seed % 3 == 0),
                  cycle_momentum=seed % 4 != 1, div_factor=float(rng.uniform(5, 30)),
                  final_div_factor=float(rng.uniform(10, 1e4)))
    max_lr = float(rng.uniform(0.1, 2.0))
    if seed % 2:
        ours, theirs = _adam_pair(0.01)
    else:
        ours = optim.SGD([nn.Parameter(np.zeros(3))], lr=0.01, momentum=0.9)
        theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.01, momentum=0.9)
    schedule = lr_scheduler.OneCycleLR(ours, max_lr, **kwargs)
    reference = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr, **kwargs)
    saved = None
    for step in range(total):
        assert _rates(ours) == _rates(theirs) and _momenta(ours) == _momenta(theirs), (step, kwargs)
        if step == total // 2:
            saved = ours.state_dict(), schedule.state_dict()
        schedule.step()
        reference.step()
    assert _rates(ours) == _rates(theirs)
    before = schedule.state_dict()
    with pytest.raises(ValueError, match=f"stepped {total + 1} times; its total_steps is {total}"):
        schedule.step()
    assert schedule.state_dict() == before and schedule.get_last_lr() == _rates(ours) == _rates(theirs)
    resumed_optimizer = (optim.Adam if seed % 2 else optim.SGD)([nn.Parameter(np.zeros(3))], lr=0.5,
                                                                 **({} if seed % 2 else {"momentum": 0.5}))
    resumed = lr_scheduler.OneCycleLR(resumed_optimizer, max_lr, **kwargs)
    resumed_optimizer.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    while resumed.last_epoch < total:
        resumed.step()
    assert _rates(resumed_optimizer) == _rates(ours) and _momenta(resumed_optimizer) == _momenta(ours)


def _sequence(module, optimizer, seed):
    """A random warm-up and decay (or three schedulers) of `module` (ours or torch's) on `optimizer`."""
    rng = np.random.default_rng(seed)
    warm = module.LinearLR(optimizer, start_factor=float(rng.uniform(0.05, 0.5)), total_iters=int(rng.integers(1, 6)))
    if seed % 3 == 0:
        warm = module.ConstantLR(optimizer, factor=float(rng.uniform(0.1, 0.9)), total_iters=int(rng.integers(1, 6)))
    decays = [module.CosineAnnealingLR(optimizer, T_max=int(rng.integers(3, 15)), eta_min=1e-4),
              module.StepLR(optimizer, step_size=int(rng.integers(1, 5)), gamma=0.5),
              module.ExponentialLR(optimizer, gamma=0.9),
              module.LambdaLR(optimizer, lambda epoch: 0.95 ** epoch)]
    first, second = int(rng.integers(1, 8)), int(rng.integers(9, 20))
    chosen = [warm, decays[seed % 4]] + ([decays[(seed + 1) % 4]] if seed % 2 else [])
    return module.SequentialLR(optimizer, chosen, [first, second][:len(chosen) - 1])


def _assert_pytorchs_bit_for_bit_and_resumed(make, seed: int, epochs: int, saved_at: int) -> None:
    """The schedule `make(module, optimizer, seed)` builds from ours and from torch's module: the same
    rates (and epoch counts, where it keeps one) at every step, and a resume from the state dicts of
    epoch `saved_at` continues as the whole run."""
    ours = optim.SGD([nn.Parameter(np.zeros(3))], lr=0.3, momentum=0.9)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.3, momentum=0.9)
    schedule, reference = make(lr_scheduler, ours, seed), make(torch.optim.lr_scheduler, theirs, seed)
    assert _rates(ours) == _rates(theirs) and schedule.get_last_lr() == reference.get_last_lr()
    for epoch in range(epochs):
        if epoch == saved_at:
            saved = ours.state_dict(), schedule.state_dict()
        schedule.step()
        reference.step()
        assert _rates(ours) == _rates(theirs), epoch
        assert getattr(schedule, "last_epoch", None) == getattr(reference, "last_epoch", None), epoch
        assert schedule.get_last_lr() == reference.get_last_lr(), epoch
    resumed_optimizer = optim.SGD([nn.Parameter(np.zeros(3))], lr=0.3, momentum=0.9)
    resumed = make(lr_scheduler, resumed_optimizer, seed)
    resumed_optimizer.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    for _ in range(epochs - saved_at):
        resumed.step()
    assert _rates(resumed_optimizer) == _rates(ours)


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(8))
def test_sequential_rates_are_pytorchs_bit_for_bit_and_resume(seed):
    _assert_pytorchs_bit_for_bit_and_resumed(_sequence, seed, 30, 12)


def _chain(module, optimizer, seed):
    """A warm-up and a decay chained (both stepping each epoch), as in PyTorch's docs' example."""
    rng = np.random.default_rng(seed)
    warm = module.LinearLR(optimizer, start_factor=float(rng.uniform(0.05, 0.5)), total_iters=int(rng.integers(2, 8)))
    decay = [module.ExponentialLR(optimizer, float(rng.uniform(0.8, 0.99))),
             module.StepLR(optimizer, int(rng.integers(2, 6)), float(rng.uniform(0.2, 0.9)))][seed % 2]
    return module.ChainedScheduler([warm, decay])


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(4))
def test_chained_rates_are_pytorchs_bit_for_bit_and_resume(seed):
    _assert_pytorchs_bit_for_bit_and_resumed(_chain, seed, 25, 10)


@needs_torch
@pytest.mark.parametrize("seed", range(8))
def test_plateau_rates_and_counters_are_pytorchs_bit_for_bit(seed):
    """Random metrics with plateaus, both modes and threshold modes, cooldown, per-group min_lr."""
    rng = np.random.default_rng(seed)
    kwargs = dict(mode=["min", "max"][seed % 2], factor=float(rng.uniform(0.1, 0.9)),
                  patience=int(rng.integers(0, 4)), threshold=float(rng.uniform(0, 0.05)),
                  threshold_mode=["rel", "abs"][seed // 2 % 2], cooldown=int(rng.integers(0, 3)),
                  min_lr=[1e-3, 0.5] if seed % 3 else 2e-3)   # 0.5: above the rate (left as it is)
    ours = optim.SGD([{"params": [nn.Parameter(np.zeros(2))]}, {"params": [nn.Parameter(np.zeros(2))], "lr": 0.2}],
                     lr=1.0)
    theirs = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.2}], lr=1.0)
    schedule = lr_scheduler.ReduceLROnPlateau(ours, **kwargs)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kwargs)
    metric, resumed = 1.0, None
    for epoch in range(60):
        metric = metric * float(rng.uniform(0.9, 1.0)) if rng.uniform() < 0.4 else metric * float(rng.uniform(1, 1.1))
        if epoch == 30:   # resumed from here, in a new optimizer and scheduler
            resumed_optimizer = optim.SGD([{"params": [nn.Parameter(np.zeros(2))]},
                                           {"params": [nn.Parameter(np.zeros(2))], "lr": 0.2}], lr=1.0)
            resumed = lr_scheduler.ReduceLROnPlateau(resumed_optimizer, **kwargs)
            resumed_optimizer.load_state_dict(ours.state_dict())
            resumed.load_state_dict(schedule.state_dict())
        for s in (schedule, reference) + ((resumed,) if resumed else ()):
            s.step(metric)
        assert _rates(ours) == _rates(theirs), (epoch, kwargs)
        for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
            assert getattr(schedule, key) == getattr(reference, key), key
        assert schedule.get_last_lr() == reference.get_last_lr()
    assert _rates(resumed_optimizer) == _rates(ours)
    assert min(_rates(ours)) < 0.2   # the runs did cut the rates


def test_a_plateau_with_a_list_of_min_lr_refuses_a_group_added_since_before_changing_anything():
    first, second = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    optimizer = optim.SGD([first], lr=1.0)
    schedule = lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, min_lr=[0.0])
    schedule.step(1.0)
    optimizer.add_param_group({"params": [second]})
    with pytest.raises(ValueError, match="2 parameter groups, min_lr lists 1"):
        schedule.step(2.0)
    assert schedule.last_epoch == 1 and schedule.num_bad_epochs == 0 and _rates(optimizer) == [1.0, 1.0]


def test_optimizer_states_load_with_or_without_one_cycles_keys():
    """OneCycleLR adds max_lr, min_lr and the momentum bounds to each group: a state with them loads
    into an optimizer without a scheduler and the other way round."""
    plain = optim.Adam([nn.Parameter(np.zeros(2))], lr=0.5)
    scheduled = optim.Adam([nn.Parameter(np.zeros(2))], lr=0.5)
    lr_scheduler.OneCycleLR(scheduled, 1.0, total_steps=10)
    plain.load_state_dict(scheduled.state_dict())
    assert {"max_lr", "min_lr", "max_momentum", "base_momentum"} <= plain.param_groups[0].keys()
    assert plain.param_groups[0]["betas"] == scheduled.param_groups[0]["betas"] == (0.95, 0.999)
    scheduled.load_state_dict(optim.Adam([nn.Parameter(np.zeros(2))], lr=0.125).state_dict())
    assert scheduled.param_groups[0]["lr"] == 0.125


@needs_torch
@pytest.mark.parametrize("seed", range(6))
def test_warm_restarts_with_fractional_epochs_are_pytorchs_bit_for_bit(seed):
    """step(epoch + i / batches) per batch (PyTorch's documented use, no warning), epochs jumped
    back and forth, the logarithm's periods for T_mult > 1, and a resume."""
    rng = np.random.default_rng(seed)
    args, kwargs = _arguments("CosineAnnealingWarmRestarts", rng)
    ours, schedule, theirs, reference = _pair("CosineAnnealingWarmRestarts", args, kwargs, 0.5)
    batches = int(rng.integers(1, 5))
    epochs = [e + i / batches for e in range(25) for i in range(batches)] + [int(e) for e in rng.integers(0, 60, 10)]
    epochs.append(float(rng.uniform(0, 40)) + 0.25)   # the plain steps after it count on from a fraction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in epochs:
            schedule.step(epoch)
            reference.step(epoch)
            assert _rates(ours) == _rates(theirs) and schedule.last_epoch == reference.last_epoch, (epoch, kwargs)
            assert (schedule.T_cur, schedule.T_i) == (reference.T_cur, reference.T_i)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        schedule.step(-1)
    with pytest.raises(ValueError, match="epoch must be finite"):
        schedule.step(math.nan)
    assert _rates(ours) == _rates(theirs)
    resumed_optimizer = optim.SGD([nn.Parameter(np.zeros(3, np.float32))], lr=0.5, momentum=0.9)
    resumed = lr_scheduler.CosineAnnealingWarmRestarts(resumed_optimizer, *args, **kwargs)
    resumed_optimizer.load_state_dict(ours.state_dict())
    resumed.load_state_dict(schedule.state_dict())
    for _ in range(9):
        for s in (schedule, resumed, reference):
            s.step()
        assert _rates(resumed_optimizer) == _rates(ours) == _rates(theirs)


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_rate_a_schedule_takes_below_zero_steps_and_loads_as_in_pytorch():
    """OneCycleLR's linear end (and LinearLR's end_factor 0 by a rounding) take the rate below 0:
    PyTorch's step and load take it, so ours do; only a group given to the optimizer must have lr >= 0."""
    ours = optim.SGD([nn.Parameter(np.zeros(3))], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    schedule = lr_scheduler.OneCycleLR(ours, 0.1, total_steps=10, anneal_strategy="linear")
    reference = torch.optim.lr_scheduler.OneCycleLR(theirs, 0.1, total_steps=10, anneal_strategy="linear")
    for _ in range(10):
        schedule.step()
        reference.step()
    assert _rates(ours) == _rates(theirs) and _rates(ours)[0] < 0
    ours.params[0].grad = np.ones(3)
    ours.step()
    optim.SGD([nn.Parameter(np.zeros(3))], lr=0.1, momentum=0.9).load_state_dict(ours.state_dict())
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([nn.Parameter(np.zeros(3))], lr=-0.1)
    with pytest.raises(ValueError, match="learning rate"):
        ours.add_param_group({"params": [nn.Parameter(np.zeros(2))], "lr": -1e-3})


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_cycle_with_pct_start_1_runs_its_steps_as_pytorch():
    """pct_start=1: the fall is a phase of no steps, reached only by the step after the last:
    PyTorch divides by zero there, ours raises ValueError and changes nothing."""
    ours = optim.Adam([nn.Parameter(np.zeros(3))], lr=0.1)
    theirs = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    schedule = lr_scheduler.OneCycleLR(ours, 0.5, total_steps=8, pct_start=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(theirs, 0.5, total_steps=8, pct_start=1.0)
    for _ in range(7):
        schedule.step()
        reference.step()
        assert _rates(ours) == _rates(theirs) and _momenta(ours) == _momenta(theirs)
    before = schedule.state_dict(), _rates(ours)
    with pytest.raises(ValueError, match="step 8 falls in a phase of no steps"):
        schedule.step()
    with pytest.raises(ZeroDivisionError):
        reference.step()
    assert (schedule.state_dict(), _rates(ours)) == before


@needs_torch
def test_a_plateau_cuts_a_numpy_float_rate_as_a_python_float_as_pytorch():
    ours = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    ours.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = np.float32(0.3)
    schedule = lr_scheduler.ReduceLROnPlateau(ours, patience=0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, patience=0)
    for metric in (1.0, 2.0):
        schedule.step(metric)
        reference.step(metric)
    assert _rates(ours) == _rates(theirs) and type(_rates(ours)[0]) is float


def test_the_package_loads_lr_scheduler_amp_and_cifar_on_first_use():
    """`import cnn_gpu` then cnn_gpu.lr_scheduler (as torch.optim.lr_scheduler after import torch)."""
    import subprocess
    import sys
    code = "import cnn_gpu; cnn_gpu.lr_scheduler.OneCycleLR; cnn_gpu.amp.GradScaler; cnn_gpu.cifar.load_cifar10"
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_beta1_one_cycles_linear_end_takes_past_1_loads_as_in_pytorch_and_refuses_to_step():
    """OneCycleLR's last step (the one after the optimizer's last) extrapolates its linear phase:
    with max_momentum 0.999 Adam's beta1 ends above 1, in PyTorch too. The optimizer's state saved
    then (the end of a run) loads, as PyTorch's does; a step with it (bias correction 1 - beta1^t
    of 0 or below) is refused and changes nothing."""
    ours = optim.Adam([nn.Parameter(np.zeros(3))], lr=0.1)
    theirs = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    schedule = lr_scheduler.OneCycleLR(ours, 0.1, total_steps=100, anneal_strategy="linear", max_momentum=0.999)
    reference = torch.optim.lr_scheduler.OneCycleLR(theirs, 0.1, total_steps=100, anneal_strategy="linear",
                                                    max_momentum=0.999)
    for _ in range(100):
        schedule.step()
        reference.step()
    assert ours.param_groups[0]["betas"] == theirs.param_groups[0]["betas"] and ours.param_groups[0]["betas"][0] > 1
    resumed = optim.Adam([nn.Parameter(np.ones(3))], lr=0.1)
    resumed.load_state_dict(ours.state_dict())
    assert resumed.param_groups[0]["betas"] == ours.param_groups[0]["betas"]
    resumed.params[0].grad = np.ones(3)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        resumed.step()
    assert not resumed.state[0] and np.array_equal(resumed.params[0].data, np.ones(3))
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        optim.Adam([nn.Parameter(np.zeros(3))], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"betas\[1\]"):   # beta2 >= 1 is no schedule's: refused at a load too
        resumed.load_state_dict({**ours.state_dict(), "param_groups": [{**ours.state_dict()["param_groups"][0],
                                                                        "betas": (0.9, 1.0)}]})


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name, args, by_epoch", [
    ("CosineAnnealingLR", (1,), False), ("LambdaLR", (lambda e: 0.9 ** e,), False),
    ("CosineAnnealingWarmRestarts", (3,), False), ("StepLR", (2,), True), ("LinearLR", (), True)])
def test_a_schedule_with_a_rate_per_initial_group_refuses_a_group_added_since_before_changing_anything(
        name, args, by_epoch):
    """A schedule computed from base_lrs has no rate for a group added after it was built: PyTorch's
    zip(strict=True) raises ValueError there (after counting the epoch); ours raises before any
    change, where it set the first groups' rates and left the new one alone. (CosineAnnealingLR with
    T_max 1: its step to epoch 2 is one from base_lrs.)"""
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    schedule = getattr(lr_scheduler, name)(opt, *args)
    schedule.step()
    opt.add_param_group({"params": [nn.Parameter(np.zeros(2))], "lr": 0.5})
    before = (schedule.last_epoch, _rates(opt), schedule.get_last_lr())
    with pytest.raises(ValueError, match="2 parameter groups"):
        schedule.step(3) if by_epoch else schedule.step()
    assert (schedule.last_epoch, _rates(opt), schedule.get_last_lr()) == before
    if torch is not None:
        theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        reference = getattr(torch.optim.lr_scheduler, name)(theirs, *args)
        reference.step()
        theirs.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5})
        with pytest.raises(ValueError):
            reference.step(3) if by_epoch else reference.step()


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_schedule_of_the_groups_own_rates_takes_a_group_added_since_as_pytorch():
    ours = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    schedule, reference = lr_scheduler.StepLR(ours, 2, 0.5), torch.optim.lr_scheduler.StepLR(theirs, 2, 0.5)
    ours.add_param_group({"params": [nn.Parameter(np.zeros(2))], "lr": 0.3})
    theirs.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.3})
    for _ in range(5):
        schedule.step()
        reference.step()
        assert schedule.get_last_lr() == reference.get_last_lr() and _rates(ours) == _rates(theirs)
