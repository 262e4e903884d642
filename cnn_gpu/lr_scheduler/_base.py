"""The base of PyTorch's schedulers (torch.optim.lr_scheduler.LRScheduler's protocol)."""
from __future__ import annotations

import warnings

from ..functional._checks import whole_number
from ..optim import SCHEDULER_KEY, Optimizer


def checked_optimizer(optimizer) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not a cnn_gpu.optim optimizer")
    return optimizer


def per_group(value, name: str, optimizer, check) -> list:
    """`value` (one for every group, or a list or tuple of one per group) as a list with `check`
    applied to each (PyTorch's per-group arguments: OneCycleLR's max_lr, ReduceLROnPlateau's min_lr)."""
    groups = len(optimizer.param_groups)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * groups
    if len(values) != groups:
        raise ValueError(f"{name} must be one number or a list of {groups} (one per parameter group), got "
                         f"{len(values)}")
    return [check(v, f"{name}[{i}]") for i, v in enumerate(values)]


def check_rates(scheduler, rates) -> None:
    """ValueError unless `rates` has one rate per parameter group: a schedule computed from
    base_lrs has none for a group added to the optimizer since it was built (PyTorch's zip(strict=True)
    raises there too, after counting the epoch)."""
    groups = len(scheduler.optimizer.param_groups)
    if len(rates) != groups:
        raise ValueError(f"{type(scheduler).__name__} has {len(rates)} rates for the optimizer's {groups} parameter "
                         f"groups (a group added since it was built); build the scheduler after adding the group")


class LRScheduler:
    """The base of PyTorch's schedulers: subclasses give get_lr() (from the groups' current rates,
    as PyTorch's recursive forms) and may give _closed_form_lr() (from base_lrs, for step(epoch))."""

    def __init__(self, optimizer, last_epoch: int = -1):
        checked_optimizer(optimizer)
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
        self._is_initial = False   # the first step keeps the groups' rates where a subclass says so
        self._initial_step()

    def _initial_step(self) -> None:
        """The step construction takes (SequentialLR takes it again of the scheduler it starts with)."""
        self._step_count = 0
        self._is_initial = True
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
        if epoch is not None:
            warnings.warn("passing an epoch to step() is deprecated (as in PyTorch); call step() once per epoch",
                          UserWarning, stacklevel=2)
        self._step_count += 1
        try:
            self._update_lr(epoch)
        except BaseException:
            self._step_count -= 1
            raise

    def _update_lr(self, epoch=None) -> None:
        """The rates of the next epoch, or of `epoch` by the closed form where there is one, into the
        groups; a schedule that refuses the epoch (get_lr raises) leaves the epoch count as it was."""
        previous = self.last_epoch
        try:
            if epoch is None:
                self.last_epoch += 1
                rates = self.get_lr()
            else:
                self.last_epoch = whole_number(epoch, "epoch", minimum=0)
                rates = self._closed_form_lr() if hasattr(self, "_closed_form_lr") else self.get_lr()
            check_rates(self, rates)
        except BaseException:
            self.last_epoch = previous
            raise
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
