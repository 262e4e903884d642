"""PyTorch's schedules that decay a rate epoch by epoch, by its recursive forms (bit for bit), and
their closed forms for step(epoch)."""
from __future__ import annotations

import bisect
import math
import types
from collections import Counter

from ..functional._checks import real_number, whole_number
from ._base import LRScheduler, checked_optimizer


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


class ConstantLR(LRScheduler):
    """The rate times factor for the first total_iters epochs, then the rate itself again."""

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1):
        self.factor = real_number(factor, "factor")
        if not 0 < self.factor <= 1:   # (PyTorch takes 0, then divides by it at total_iters)
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        self.total_iters = whole_number(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0:
            return [rate * self.factor for rate in self._current()]
        if self.last_epoch != self.total_iters:
            return self._current()
        return [rate * (1.0 / self.factor) for rate in self._current()]

    def _closed_form_lr(self) -> list:
        return [base * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    """The rate times (1 - epoch/total_iters)**power over total_iters epochs (0 from then on)."""

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        self.total_iters = whole_number(total_iters, "total_iters")
        self.power = real_number(power, "power", minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        done, before = self.last_epoch / self.total_iters, (self.last_epoch - 1) / self.total_iters
        factor = ((1.0 - done) / (1.0 - before)) ** self.power
        return [rate * factor for rate in self._current()]

    def _closed_form_lr(self) -> list:
        return [base * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters) ** self.power
                for base in self.base_lrs]


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


class _LambdaSchedule(LRScheduler):
    """A schedule of lr_lambda: one function, or one per parameter group. state_dict keeps a
    callable object's attributes, not a function (PyTorch's rule)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        groups = len(checked_optimizer(optimizer).param_groups)
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * groups
        if len(lambdas) != groups or not all(map(callable, lambdas)):
            raise ValueError(f"lr_lambda must be a callable or a list of {groups} callables (one per parameter group)")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

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


class LambdaLR(_LambdaSchedule):
    """base_lr * lr_lambda(epoch)."""

    def get_lr(self) -> list:
        return [base * factor(self.last_epoch) for factor, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaSchedule):
    """The rate times lr_lambda(epoch) every epoch (from the groups' current rates, as PyTorch's)."""

    def get_lr(self) -> list:
        if self._is_initial:
            return self._current()
        return [rate * factor(self.last_epoch) for factor, rate in zip(self.lr_lambdas, self._current())]
