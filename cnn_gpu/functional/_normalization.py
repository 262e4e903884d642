"""Argument checks and results shared by the normalisation ops (batch_norm, group_norm, layer_norm)."""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from . import _checks


def check_backward_arguments(dy, x, save_mean, save_invstd) -> None:
    """dy of x's shape and dtype; the saved statistics both given or neither."""
    _checks.array(dy, "dy")
    _checks.shape_is(dy, "dy", x.shape, " (the shape of x)")
    _checks.same_dtype("x", x, dy=dy)
    if (save_mean is None) != (save_invstd is None):
        raise ValueError("give both save_mean and save_invstd, or neither")


def saved_statistic(a, name, x, shape, what):
    """A statistic the forward returned (`shape`, x's dtype or the compute type), flattened."""
    if a is None:
        return None
    _checks.array(a, name)
    _checks.shape_is(a, name, shape, f" ({what})")
    if a.dtype != _backend.compute_dtype(x.dtype):
        _checks.same_dtype("x", x, **{name: a})
    return a.reshape(-1)


def statistics_of_nothing(xp, shape, x_dtype):
    """(mean, invstd) of empty groups or rows, as PyTorch gives them: 0 and NaN."""
    compute = _backend.compute_dtype(x_dtype)
    return xp.zeros(shape, compute), xp.full(shape, np.nan, compute)
