"""Each rank's share of every epoch: disjoint slices of one permutation that all ranks draw alike."""
from __future__ import annotations

import numpy as np

from ..functional._checks import whole_number


def shard_batches(n: int, batch_size: int, rng: np.random.Generator | None, rank: int, world_size: int):
    """Per-rank index batches of one epoch. The permutation comes from `rng`, which every rank
    seeds alike, so all ranks draw the same one (rng None: in order, as for evaluation); global
    batch i holds batch_size * world_size samples, and rank r takes the r-th run of batch_size of
    them. Every rank gets the same number of batches (some may be empty at the uneven end), so the
    ranks meet in every collective, and the union over ranks of batch i is batch i of
    cnn_gpu.data.batches with batch_size * world_size and the same rng."""
    n, batch_size = whole_number(n, "shard_batches: n", 0), whole_number(batch_size, "shard_batches: batch_size")
    rank, world_size = whole_number(rank, "shard_batches: rank", 0), whole_number(world_size, "shard_batches: world_size")
    if rank >= world_size:
        raise ValueError(f"shard_batches: rank {rank} of world_size {world_size}")
    return _shard(n, batch_size, rng, rank, world_size)


def _shard(n, batch_size, rng, rank, world_size):
    # The permutation is drawn on the first next(), as cnn_gpu.data.batches draws it.
    order = rng.permutation(n) if rng is not None else np.arange(n)
    global_batch = batch_size * world_size
    for start in range(0, n, global_batch):
        chunk = order[start:start + global_batch]
        yield chunk[rank * batch_size:(rank + 1) * batch_size]


def shard_sizes(n: int, batch_size: int, index: int, world_size: int) -> list:
    """The ranks' image counts in global batch `index` of shard_batches(n, batch_size, ..., world_size),
    rank 0's first: batch_size each but at the uneven end, where the last ranks may get fewer or none."""
    left = n - index * batch_size * world_size
    return [min(batch_size, max(0, left - rank * batch_size)) for rank in range(world_size)]
