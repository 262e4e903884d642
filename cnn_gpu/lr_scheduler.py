"""Learning-rate schedules that set the `lr` of an optimizer's parameter groups.

PyTorch's schedulers, with its protocol (`torch.optim.lr_scheduler`): `StepLR`, `MultiStepLR`,
`ExponentialLR`, `LinearLR`, `CosineAnnealingLR` and `LambdaLR`. Construction records each group's
`initial_lr` and takes the first step (last_epoch -1 -> 0); call `step()` after each epoch's (or
iteration's) `optimizer.step()`; `get_last_lr()`, `last_epoch`, `base_lrs`, and `state_dict()` /
`load_state_dict()` for checkpoints (resume: build the scheduler, then load both states). The
rates are computed as PyTorch computes them (the same recursive forms), so they equal its values
bit for bit; `step(epoch)` (deprecated in PyTorch) uses the closed forms. Arguments are checked
more than PyTorch checks them (a step_size of 0, a negative eta_min, NaN are refused).

`WarmupCosine` (this project's, what `cnn-gpu train` uses): a linear warm-up over the first
`warmup_epochs` epochs, step by step from base_lr / warmup_steps up to base_lr, then half a cosine
from base_lr towards 0 over the remaining epochs, one value per epoch (with no warm-up: epoch e of
E trains at base_lr * (1 + cos(pi e / E)) / 2). The rate depends only on (epoch, step), so a
resumed run continues the schedule exactly.
"""
from __future__ import annotations

import bisect
import math
import types
import warnings
from collections import Counter

from .functional._checks import real_number, whole_number
from .optim import SCHEDULER_KEY, Optimizer


class LRScheduler:
    """The base of PyTorch's schedulers: subclasses give get_lr() (from the groups' current rates,
    as PyTorch's recursive forms) and may give _closed_form_lr() (from base_lrs, for step(epoch))."""

    def __init__(self, optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a cnn_gpu.optim optimizer")
        last_epoch = whole_number(last_epoch, "last_epoch", minimum=-1)
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault(SCHEDULER_KEY, group["lr"])
        else:
            lacking = [i for i, group in enumerate(groups) if SCHEDULER_KEY not in group]
            if lacking:
                raise KeyError(f"param_groups[{lacking[0]}] has no 'initial_lr': a scheduler resumed with last_epoch "
                               f">= 0 needs its optimizer's state from a run that had a scheduler (load it first)")
        self.optimizer = optimizer
        self.base_lrs = [group[SCHEDULER_KEY] for group in groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True   # the first step keeps the groups' rates where a subclass says so
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def _current(self) -> list:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch=None) -> None:
        """The next rates into the optimizer's groups (epoch: jump to it by the closed form; PyTorch
        deprecates it, and warns likewise)."""
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            rates = self.get_lr()
        else:
            warnings.warn("passing an epoch to step() is deprecated (as in PyTorch); call step() once per epoch",
                          UserWarning, stacklevel=2)
            self.last_epoch = whole_number(epoch, "epoch", minimum=0)
            rates = self._closed_form_lr() if hasattr(self, "_closed_form_lr") else self.get_lr()
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self._last_lr = self._current()

    def get_last_lr(self) -> list:
        """The rates the last step() set, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer, as PyTorch's."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class StepLR(LRScheduler):
    """The rate times gamma every step_size epochs."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = whole_number(step_size, "step_size")
        self.gamma = real_number(gamma, "gamma", minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._current()
        return [rate * self.gamma for rate in self._current()]

    def _closed_form_lr(self) -> list:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """The rate times gamma at each milestone epoch (gamma**n at one listed n times)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones = Counter(whole_number(m, "a milestone", minimum=0) for m in milestones)
        self.gamma = real_number(gamma, "gamma", minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch not in self.milestones:
            return self._current()
        return [rate * self.gamma ** self.milestones[self.last_epoch] for rate in self._current()]

    def _closed_form_lr(self) -> list:
        passed = bisect.bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma ** passed for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """The rate times gamma every epoch."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = real_number(gamma, "gamma", minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return self._current() if self._is_initial else [rate * self.gamma for rate in self._current()]

    def _closed_form_lr(self) -> list:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class LinearLR(LRScheduler):
    """The rate times a factor going linearly from start_factor to end_factor over total_iters epochs."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        self.start_factor = real_number(start_factor, "start_factor")
        self.end_factor = real_number(end_factor, "end_factor", minimum=0)
        if not 0 < self.start_factor <= 1 or self.end_factor > 1:
            raise ValueError(f"start_factor must be in (0, 1] and end_factor in [0, 1] (PyTorch's ranges), got "
                             f"{start_factor} and {end_factor}")
        self.total_iters = whole_number(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0:
            return [rate * self.start_factor for rate in self._current()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        change = self.end_factor - self.start_factor
        factor = 1.0 + change / (self.total_iters * self.start_factor + (self.last_epoch - 1) * change)
        return [rate * factor for rate in self._current()]

    def _closed_form_lr(self) -> list:
        change = (self.end_factor - self.start_factor) * min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * (self.start_factor + change) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, by PyTorch's recursive form
    (which follows a rate changed between steps), cycling on past T_max."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = whole_number(T_max, "T_max")
        self.eta_min = real_number(eta_min, "eta_min", minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self._is_initial:
            return self._current()
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base - self.eta_min) * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [rate + (base - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for rate, base in zip(self._current(), self.base_lrs)]
        ratio = ((1 + math.cos(math.pi * self.last_epoch / self.T_max))
                 / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max)))
        return [ratio * (rate - self.eta_min) + self.eta_min for rate in self._current()]

    def _closed_form_lr(self) -> list:
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LambdaLR(LRScheduler):
    """base_lr * lr_lambda(epoch): one function, or one per parameter group. state_dict keeps a
    callable object's attributes, not a function (PyTorch's rule)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        groups = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 1
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * groups
        if len(lambdas) != groups or not all(map(callable, lambdas)):
            raise ValueError(f"lr_lambda must be a callable or a list of {groups} callables (one per parameter group)")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [base * factor(self.last_epoch) for factor, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self) -> dict:
        state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(factor, types.FunctionType) else dict(factor.__dict__)
                               for factor in self.lr_lambdas]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        kept = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for factor, attributes in zip(self.lr_lambdas, kept):
            if attributes is not None:
                factor.__dict__.update(attributes)


class WarmupCosine:
    def __init__(self, optimizer, base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0):
        base_lr = real_number(base_lr, "base_lr")   # NaN and infinities refused too
        if not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        epochs = whole_number(epochs, "epochs")
        steps_per_epoch = whole_number(steps_per_epoch, "steps_per_epoch")
        if whole_number(warmup_epochs, "warmup_epochs", minimum=0) >= epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs) = [0, {epochs}), got {warmup_epochs}")
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = int(warmup_epochs)

    def lr(self, epoch: int, step: int = 0) -> float:
        """The rate of step `step` (from 0) of epoch `epoch` (from 0); ValueError outside the schedule
        (epoch in [0, epochs), step in [0, steps_per_epoch))."""
        if whole_number(epoch, "epoch", minimum=0) >= self.epochs:
            raise ValueError(f"epoch must be in [0, {self.epochs}), got {epoch}")
        if whole_number(step, "step", minimum=0) >= self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}), got {step}")
        if epoch < self.warmup_epochs:
            done = epoch * self.steps_per_epoch + step + 1
            return self.base_lr * done / (self.warmup_epochs * self.steps_per_epoch)
        decay_epochs = self.epochs - self.warmup_epochs
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / decay_epochs))

    def apply(self, epoch: int, step: int = 0) -> float:
        """Set every parameter group's rate for (epoch, step); returns it."""
        rate = self.lr(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        return rate
