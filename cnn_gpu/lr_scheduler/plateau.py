"""PyTorch's ReduceLROnPlateau: the rate cut when a metric stops improving."""
from __future__ import annotations

import math
import warnings

from ..functional._checks import real_number, whole_number
from ._base import LRScheduler, checked_optimizer, per_group


class ReduceLROnPlateau(LRScheduler):
    """step(metric) after each evaluation: a metric better than the best so far (mode "min": below
    best*(1 - threshold), or best - threshold with threshold_mode "abs"; "max" the other way) resets
    the count of bad epochs; after more than `patience` bad ones each group's rate becomes
    max(rate*factor, min_lr) where that lowers it by more than eps, and `cooldown` epochs follow in
    which bad epochs are not counted. PyTorch's rules and state (last_epoch, best, num_bad_epochs,
    cooldown_counter...); it takes no initial step and adds nothing to the groups."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        self.optimizer = checked_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = real_number(factor, "factor", minimum=0, below=1)
        self.patience = whole_number(patience, "patience", minimum=0)
        self.threshold = real_number(threshold, "threshold", minimum=0)
        self.cooldown = whole_number(cooldown, "cooldown", minimum=0)
        self.eps = real_number(eps, "eps", minimum=0)
        self.min_lrs = per_group(min_lr, "min_lr", optimizer, lambda v, name: real_number(v, name, minimum=0))
        # one number follows groups added later (PyTorch's); a list per group does not
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else self.min_lrs[0]
        self.mode, self.threshold_mode = mode, threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = self._current()
        self.best, self.num_bad_epochs, self.cooldown_counter = self.mode_worse, 0, 0

    def _is_better(self, metric: float) -> bool:
        if self.threshold_mode == "rel":
            bound = self.best * (1.0 - self.threshold if self.mode == "min" else self.threshold + 1.0)
        else:
            bound = self.best - self.threshold if self.mode == "min" else self.best + self.threshold
        return metric < bound if self.mode == "min" else metric > bound

    def step(self, metrics, epoch=None) -> None:
        """One evaluation's metric (a number, or a 0-d array); `epoch` deprecated, as PyTorch's."""
        current = float(metrics)
        if epoch is not None:
            warnings.warn("passing an epoch to step() is deprecated (as in PyTorch); call step() once per epoch",
                          UserWarning, stacklevel=2)
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs) and self.default_min_lr is None:
            raise ValueError(f"the optimizer has {len(groups)} parameter groups, min_lr lists {len(self.min_lrs)} "
                             f"(a group added since): set min_lrs to one per group")
        self.last_epoch = self.last_epoch + 1 if epoch is None else whole_number(epoch, "epoch", minimum=0)
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0   # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            if len(groups) != len(self.min_lrs):
                self.min_lrs = [self.default_min_lr] * len(groups)
            for group, min_lr in zip(groups, self.min_lrs):
                old = float(group["lr"])   # (PyTorch's: a NumPy float32 rate multiplies as a Python float)
                rate = max(old * self.factor, min_lr)
                if old - rate > self.eps:
                    group["lr"] = rate
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = self._current()
