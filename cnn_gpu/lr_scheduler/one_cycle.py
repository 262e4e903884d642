"""PyTorch's OneCycleLR: the 1cycle policy (Smith & Topham's super-convergence), stepped after every
batch."""
from __future__ import annotations

import math

from ..functional._checks import flag, real_number, whole_number
from ._base import LRScheduler, checked_optimizer, per_group

# the keys OneCycleLR adds to each parameter group (optim.SCHEDULER_KEYS), which its rates come from
RATE_KEYS = ("initial_lr", "max_lr", "min_lr")
MOMENTUM_KEYS = ("max_momentum", "base_momentum")


def _cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


class OneCycleLR(LRScheduler):
    """The rate rises from max_lr/div_factor to max_lr over the first pct_start of total_steps
    (or epochs * steps_per_epoch) and falls to the start over final_div_factor by the end,
    annealed by cosine or linearly; three_phase falls back to the start first, then to the end.
    With cycle_momentum the momentum (SGD's, or Adam's beta1) moves the other way, between
    max_momentum and base_momentum. Each group gets initial_lr, max_lr and min_lr (and the momentum
    bounds), which every rate is computed from as PyTorch computes it: its values bit for bit.
    A step past total_steps raises ValueError and changes nothing."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        checked_optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = whole_number(total_steps, "total_steps")
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = whole_number(epochs, "epochs") * whole_number(steps_per_epoch, "steps_per_epoch")
        else:
            raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        pct_start = real_number(pct_start, "pct_start", minimum=0)
        if pct_start > 1:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = flag(cycle_momentum, "cycle_momentum")
        self.use_beta1 = "betas" in optimizer.defaults
        self._pct_start = pct_start
        self._phases = self._phases_of(pct_start, flag(three_phase, "three_phase"))
        nonnegative = lambda v, name: real_number(v, name, minimum=0)   # noqa: E731
        # (Adam's beta1 below 1, as the optimizer's step checks it)
        momentum = (lambda v, name: real_number(v, name, minimum=0, below=1)) if self.use_beta1 else nonnegative
        max_lrs = per_group(max_lr, "max_lr", optimizer, nonnegative)
        div_factor = real_number(div_factor, "div_factor")
        final_div_factor = real_number(final_div_factor, "final_div_factor")
        if not (div_factor > 0 and final_div_factor > 0):
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor} and {final_div_factor}")
        momenta = (per_group(max_momentum, "max_momentum", optimizer, momentum),
                   per_group(base_momentum, "base_momentum", optimizer, momentum)) if self.cycle_momentum else None
        keys = RATE_KEYS + (MOMENTUM_KEYS if self.cycle_momentum else ())
        self._phase_of(whole_number(last_epoch, "last_epoch", minimum=-1) + 1)   # the first step's, before any change
        if last_epoch == -1:
            for i, group in enumerate(optimizer.param_groups):
                group.update(initial_lr=max_lrs[i] / div_factor, max_lr=max_lrs[i])
                group["min_lr"] = group["initial_lr"] / final_div_factor
                if self.cycle_momentum:
                    group.update(max_momentum=momenta[0][i], base_momentum=momenta[1][i])
                    self._set_momentum(group, momenta[0][i])
        else:
            lacking = [(i, key) for i, group in enumerate(optimizer.param_groups) for key in keys if key not in group]
            if lacking:
                raise KeyError(f"param_groups[{lacking[0][0]}] has no {lacking[0][1]!r}: a OneCycleLR resumed with "
                               f"last_epoch >= 0 needs its optimizer's state from a run that had one (load it first)")
        super().__init__(optimizer, last_epoch)

    def _phases_of(self, pct_start: float, three_phase: bool) -> list:
        """(end step, rate keys from and to, momentum keys from and to) of each phase, PyTorch's."""
        rise = float(pct_start * self.total_steps) - 1
        if three_phase:
            phases = [(rise, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                      (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr", "base_momentum",
                       "max_momentum"),
                      (self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            phases = [(rise, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                      (self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        return phases

    def _set_momentum(self, group: dict, momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def get_lr(self) -> list:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {step} times; its total_steps is {self.total_steps}")
        anneal = _cosine if self.anneal_strategy == "cos" else _linear
        start, (end, rate_from, rate_to, momentum_from, momentum_to) = self._phase_of(step)
        pct = (step - start) / (end - start)
        rates = []
        for group in self.optimizer.param_groups:
            rates.append(anneal(group[rate_from], group[rate_to], pct))
            if self.cycle_momentum:
                self._set_momentum(group, anneal(group[momentum_from], group[momentum_to], pct))
        return rates

    def _phase_of(self, step: int) -> tuple:
        """(the step its phase starts after, the phase) of `step`, PyTorch's choice: the first phase
        it does not pass, else the last; ValueError for a phase of no steps (PyTorch divides by zero)."""
        start = 0.0
        for i, phase in enumerate(self._phases):
            if step <= phase[0] or i == len(self._phases) - 1:
                if phase[0] == start:
                    raise ValueError(f"OneCycleLR step {step} falls in a phase of no steps (pct_start "
                                     f"{self._pct_start} of total_steps {self.total_steps})")
                return start, phase
            start = phase[0]
