"""PyTorch's default initialisation, drawn from a seedable NumPy generator.

Layers draw their initial weights from the module-level generator unless given their own `rng`
(a `numpy.random.Generator` or an int seed). `manual_seed(n)` resets the module-level generator,
so building the same model after the same seed gives the same weights.
"""
from __future__ import annotations

import math

import numpy as np

# A fixed start-up seed (PyTorch also starts from a fixed default seed): reproducible by default.
DEFAULT_SEED = 0

_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Reset the generator every layer draws its initial weights from (unless given `rng`)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator(rng=None) -> np.random.Generator:
    """`rng` as a Generator: the module-level one for None, a new one for an int seed."""
    if rng is None:
        return _generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def fan_in(shape) -> int:
    """PyTorch's fan-in of a weight tensor: size(1) times the receptive field (for a transposed
    conv weight (in, out/groups, kH, kW) that is out/groups * kH * kW, as in PyTorch)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight with at least 2 dimensions, got shape {tuple(shape)}")
    return int(shape[1]) * int(np.prod(shape[2:], dtype=np.int64))


def uniform(shape, bound: float, dtype, rng=None) -> np.ndarray:
    """Samples of U(-bound, bound), drawn in float64 and rounded to dtype."""
    return generator(rng).uniform(-bound, bound, size=shape).astype(dtype, copy=False)


def kaiming_uniform(shape, a: float = math.sqrt(5), dtype=np.float32, rng=None) -> np.ndarray:
    """He-uniform for a leaky ReLU of slope `a` (PyTorch's kaiming_uniform_ with fan_in mode):
    bound = sqrt(6 / ((1 + a^2) * fan_in)); a = sqrt(5), PyTorch's layer default, gives
    1/sqrt(fan_in)."""
    n = fan_in(shape)
    bound = math.sqrt(6.0 / ((1.0 + a * a) * n)) if n else 0.0
    return uniform(shape, bound, dtype, rng)


def default_bias(n: int, weight_shape, dtype=np.float32, rng=None) -> np.ndarray:
    """PyTorch's bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan-in."""
    fan = fan_in(weight_shape)
    bound = 1.0 / math.sqrt(fan) if fan else 0.0
    return uniform((n,), bound, dtype, rng)
