"""dropout and its backward pass with a counter-based mask (torch.nn.functional.dropout's scaling).

Element i is kept when the Philox4x32-10 number of (seed, step, i) (cnn_gpu.philox) is at least
round(p * 2^32), and scaled by 1 / (1 - p). The mask is a pure function of (seed, step, i): numpy,
emu and cuda draw the same one bit for bit, and the backward pass regenerates it instead of
storing it. Dropped elements are multiplied by 0, so NaN and inf stay NaN (as PyTorch).
float16 multiplies by the FP32 scale and rounds once: the same mask as float32 for the same seed.
"""
from __future__ import annotations

import numpy as np

from .. import backend as _backend
from .. import philox
from . import _checks
from ._float16 import takes_float16


def check_probability(p) -> float:
    """p as a float in [0, 1] (PyTorch's message otherwise)."""
    p = _checks.real_number(p, "dropout probability p")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p!r}")
    return p


def _mask_parameters(p: float, dtype):
    """(threshold, scale): keep numbers >= threshold and multiply them by scale, which is
    1 / (1 - p) divided in the dtype as PyTorch does it (0 for p = 1)."""
    threshold = min(round(p * 2**32), 2**32)
    real = np.dtype(dtype).type
    return threshold, real(0) if p == 1 else real(1) / real(1.0 - p)


def _apply(a, name, p, seed, step, backend):
    _checks.array(a, name)
    seed = philox.check_seed(seed, "seed")
    step = philox.check_seed(step, "step")
    be = _backend.resolve(backend, a)
    threshold, scale = _mask_parameters(p, _backend.compute_dtype(a.dtype))
    if be == "numpy":
        keep = philox.element_numbers(seed, step, a.size).astype(np.int64) >= threshold
        with np.errstate(invalid="ignore"):   # a dropped inf gives NaN, as in PyTorch
            return np.asarray(a * np.where(keep, scale, a.dtype.type(0)).reshape(a.shape))   # 0-d: an array
    from ..gpu import dropout as gpu_dropout
    return gpu_dropout.apply(be, _checks.for_kernels(be, a, name), seed, step, threshold, scale)


@takes_float16(kernels=True)
def dropout(x, p=0.5, training=True, *, seed, step=0, backend=None):
    """torch.nn.functional.dropout(x, p, training) with the mask of (seed, step): elements kept
    with probability 1 - p and scaled by 1 / (1 - p). x itself when not training or p == 0."""
    p = check_probability(p)
    if not _checks.flag(training, "training") or p == 0:
        _checks.array(x, "x")
        philox.check_seed(seed, "seed")
        philox.check_seed(step, "step")
        return x
    return _apply(x, "x", p, seed, step, backend)


@takes_float16(kernels=True)
def dropout_backward(dy, p, seed, step=0, *, backend=None):
    """Gradient of dropout(x, p, training=True, seed=seed, step=step): dy through the same mask and
    scale (regenerated from seed and step)."""
    p = check_probability(p)
    if p == 0:   # checked as the forward checks them
        _checks.array(dy, "dy")
        philox.check_seed(seed, "seed")
        philox.check_seed(step, "step")
        return dy
    return _apply(dy, "dy", p, seed, step, backend)


