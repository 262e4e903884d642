"""Philox4x32-10 in NumPy, bit for bit the generator of kernels/philox.cuh (the kernels' twin).

A counter-based generator: four uint32 outputs as a pure function of a 128-bit counter and a
64-bit key (Salmon et al., SC 2011). `group_numbers(seed, step, groups)` draws what the kernels
draw for element groups 0..groups-1 keyed by (seed, step); element i of a tensor takes lane i % 4
of group i // 4, so NumPy, the emulator and the GPU produce the same numbers for the same element.
Vectorised: uint32 lanes with uint64 products.
"""
from __future__ import annotations

import numpy as np

MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
KEY_BUMPS = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
MASK32 = 0xFFFFFFFF
UINT64_LIMIT = 2**64


def philox4x32_10(counter, key):
    """The four output words for counters (c0, c1, c2, c3) (uint32 arrays or ints, broadcast)
    and key (k0, k1) (ints): a tuple of four uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = (int(k) & MASK32 for k in key)
    shift = np.uint64(32)
    for _ in range(ROUNDS):
        p0 = c0.astype(np.uint64) * MULTIPLIERS[0]
        p1 = c2.astype(np.uint64) * MULTIPLIERS[1]
        c0, c1, c2, c3 = ((p1 >> shift).astype(np.uint32) ^ c1 ^ np.uint32(k0), p1.astype(np.uint32),
                          (p0 >> shift).astype(np.uint32) ^ c3 ^ np.uint32(k1), p0.astype(np.uint32))
        k0 = (k0 + KEY_BUMPS[0]) & MASK32
        k1 = (k1 + KEY_BUMPS[1]) & MASK32
    return c0, c1, c2, c3


def check_seed(value, name: str) -> int:
    """`value` as an int in [0, 2^64): the key and counter halves of the kernels."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= int(value) < UINT64_LIMIT:
        raise ValueError(f"{name} must lie in [0, 2^64), got {value}")
    return int(value)


def group_numbers(seed: int, step: int, groups: int, first: int = 0) -> np.ndarray:
    """(groups, 4) uint32: the numbers of element groups first..first+groups-1 for (seed, step),
    as philox_group in kernels/philox.cuh (counter (group, step), key seed, low halves first)."""
    group = np.arange(first, first + groups, dtype=np.uint64)
    counter = (group & np.uint64(MASK32), group >> np.uint64(32), step & MASK32, step >> 32)
    return np.stack(philox4x32_10(counter, (seed & MASK32, seed >> 32)), axis=1)


def element_numbers(seed: int, step: int, count: int) -> np.ndarray:
    """(count,) uint32: the number of every element 0..count-1 for (seed, step)."""
    return group_numbers(seed, step, -(-count // 4)).reshape(-1)[:count]
