"""PyTorch's SequentialLR (schedulers one after another: a warm-up, then a decay) and ChainedScheduler
(schedulers stepped together, each changing the rates the one before it set)."""
from __future__ import annotations

import bisect

from ..functional._checks import whole_number
from ._base import LRScheduler, checked_optimizer
from .plateau import ReduceLROnPlateau


class SequentialLR(LRScheduler):
    """`schedulers[i]` sets the rates from epoch milestones[i-1] on: each takes its steps as
    PyTorch's SequentialLR gives them (at its milestone it starts from its epoch 0, by its closed
    form where it has one), so the rates are PyTorch's bit for bit. Construction puts every group
    back at its initial_lr and undoes the first step each scheduler took when it was built (their
    epoch counts back by one), then takes the first scheduler's. state_dict() holds the schedulers'."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        checked_optimizer(optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler) or isinstance(scheduler, (ReduceLROnPlateau, SequentialLR)):
                raise TypeError(f"schedulers[{i}] is a {type(scheduler).__name__}; SequentialLR takes epoch-wise "
                                f"cnn_gpu.lr_scheduler schedulers (not ReduceLROnPlateau, nor another SequentialLR)")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] ({type(scheduler).__name__}) sets another optimizer's rates")
        milestones = [whole_number(m, f"milestones[{i}]", minimum=0) for i, m in enumerate(milestones)]
        if len(milestones) != len(schedulers) - 1 or milestones != sorted(milestones):
            raise ValueError(f"milestones must be {len(schedulers) - 1} epochs in order (one fewer than the "
                             f"schedulers), got {milestones}")
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = whole_number(last_epoch, "last_epoch", minimum=-1) + 1
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for scheduler in schedulers:
            scheduler.last_epoch -= 1
        first = self._schedulers[bisect.bisect_right(milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        index = bisect.bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict:
        state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [scheduler.state_dict() for scheduler in self._schedulers]
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        inner = state.pop("_schedulers")
        self.__dict__.update(state)
        for scheduler, saved in zip(self._schedulers, inner):
            scheduler.load_state_dict(saved)


class ChainedScheduler(LRScheduler):
    """Every one of `schedulers` steps at each step(), in order, on the same optimizer (their
    recursive forms multiply: a warm-up factor and a decay at once). state_dict() holds theirs."""

    def __init__(self, schedulers, optimizer=None):
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("ChainedScheduler expects at least one scheduler to be chained, but got no scheduler.")
        optimizer = checked_optimizer(optimizer or schedulers[0].optimizer)
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler) or isinstance(scheduler, ReduceLROnPlateau):
                raise TypeError(f"schedulers[{i}] is a {type(scheduler).__name__}; ChainedScheduler chains epoch-wise "
                                f"cnn_gpu.lr_scheduler schedulers (not ReduceLROnPlateau, whose step takes a metric)")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] ({type(scheduler).__name__}) sets another optimizer's rates")
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._last_lr = self._current()

    def step(self) -> None:
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = self._current()

    state_dict = SequentialLR.state_dict
    load_state_dict = SequentialLR.load_state_dict
