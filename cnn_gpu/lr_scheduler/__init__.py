"""Learning-rate schedules that set the `lr` of an optimizer's parameter groups.

PyTorch's schedulers, with its protocol (`torch.optim.lr_scheduler`): `StepLR`, `MultiStepLR`,
`ExponentialLR`, `LinearLR`, `ConstantLR`, `PolynomialLR`, `CosineAnnealingLR`, `LambdaLR` and
`MultiplicativeLR` (decays.py), `CosineAnnealingWarmRestarts` (restarts.py), `OneCycleLR`
(one_cycle.py: per batch, the momentum cycled too), `SequentialLR` and `ChainedScheduler`
(sequential.py: one scheduler after another, or several at once) and
`ReduceLROnPlateau` (plateau.py: `step(metric)`). Construction records each group's `initial_lr`
and takes the first step (last_epoch -1 -> 0; not ReduceLROnPlateau); call `step()` after each
epoch's (or iteration's) `optimizer.step()`; `get_last_lr()`, `last_epoch`, `base_lrs`, and
`state_dict()` / `load_state_dict()` for checkpoints (resume: build the scheduler, then load both
states). The rates are computed as PyTorch computes them (the same recursive forms), so they equal
its values bit for bit; `step(epoch)` (deprecated in PyTorch) uses the closed forms. Arguments are
checked more than PyTorch checks them (a step_size of 0, a negative eta_min, NaN), before anything
changes; a step PyTorch would divide by zero in (OneCycleLR's phase of no steps) or refuse after
counting it (past total_steps) raises ValueError and changes nothing.

`WarmupCosine` (this project's, what `cnn-gpu train` uses): a linear warm-up over the first
`warmup_epochs` epochs, step by step from base_lr / warmup_steps up to base_lr, then half a cosine
from base_lr towards 0 over the remaining epochs, one value per epoch (with no warm-up: epoch e of
E trains at base_lr * (1 + cos(pi e / E)) / 2). The rate depends only on (epoch, step), so a
resumed run continues the schedule exactly.
"""

from ._base import LRScheduler
from .decays import (ConstantLR, CosineAnnealingLR, ExponentialLR, LambdaLR, LinearLR, MultiplicativeLR, MultiStepLR,
                     PolynomialLR, StepLR)
from .one_cycle import OneCycleLR
from .plateau import ReduceLROnPlateau
from .restarts import CosineAnnealingWarmRestarts
from .sequential import ChainedScheduler, SequentialLR
from .warmup_cosine import WarmupCosine

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR",
           "CosineAnnealingLR", "LambdaLR", "MultiplicativeLR", "CosineAnnealingWarmRestarts", "OneCycleLR",
           "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau", "WarmupCosine"]
