"""This project's schedule, what `cnn-gpu train` uses (see the package's docstring)."""
from __future__ import annotations

import math

from ..functional._checks import real_number, whole_number


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
