"""PyTorch's CosineAnnealingWarmRestarts: SGDR's cosine periods (Loshchilov & Hutter)."""
from __future__ import annotations

import math
import numbers

from ..functional._checks import real_number, whole_number
from ._base import LRScheduler, check_rates


class CosineAnnealingWarmRestarts(LRScheduler):
    """A cosine from each group's initial rate down to eta_min over T_i epochs, then a restart at
    the initial rate; the first period T_0 epochs, each next one T_mult times the last. step()
    once per epoch, or step(epoch) with a fractional epoch to anneal within one (per batch:
    step(epoch + i / batches), which PyTorch documents and does not deprecate here). PyTorch's
    arithmetic, bit for bit: the period an epoch falls in comes from its floating-point logarithm."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_0 = self.T_i = whole_number(T_0, "T_0")
        self.T_mult = whole_number(T_mult, "T_mult")
        self.eta_min = real_number(eta_min, "eta_min", minimum=0)
        self.T_cur = whole_number(last_epoch, "last_epoch", minimum=-1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base in self.base_lrs]

    def step(self, epoch=None) -> None:
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch, t_cur, t_i = self.last_epoch + 1, self.T_cur + 1, self.T_i
            if t_cur >= t_i:
                t_cur, t_i = t_cur % t_i, t_i * self.T_mult
        else:
            # an int stays one (PyTorch keeps the epoch's type in T_cur)
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
                epoch = real_number(epoch, "epoch", minimum=0)
            elif epoch < 0:
                raise ValueError(f"epoch must be >= 0, got {epoch}")
            t_cur, t_i = epoch, self.T_0
            if epoch >= self.T_0 and self.T_mult == 1:
                t_cur = epoch % self.T_0
            elif epoch >= self.T_0:
                n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                t_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                t_i = self.T_0 * self.T_mult ** n
        kept = self.T_cur, self.T_i, self.last_epoch
        self.T_cur, self.T_i, self.last_epoch = t_cur, t_i, math.floor(epoch)
        try:
            rates = self.get_lr()
            check_rates(self, rates)
        except BaseException:
            self.T_cur, self.T_i, self.last_epoch = kept
            raise
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self._last_lr = self._current()
