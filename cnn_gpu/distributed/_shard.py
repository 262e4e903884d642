"""Each rank's share of every epoch: disjoint slices of one permutation that all ranks draw alike."""
from __future__ import annotations

import numpy as np


def shard_batches(n: int, batch_size: int, rng: np.random.Generator, rank: int, world_size: int):
    """Per-rank index batches of one epoch. The permutation comes from `rng`, which every rank
    seeds alike, so all ranks draw the same one; global batch i holds batch_size * world_size
    samples, and rank r takes the r-th run of batch_size of them. Every rank gets the same number
    of batches (some may be empty at the uneven end), so the ranks meet in every collective, and
    the union over ranks of batch i is batch i of a single process with batch_size * world_size."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_batches: batch_size {batch_size}, rank {rank}, world_size {world_size}")
    order = rng.permutation(n)
    global_batch = batch_size * world_size
    for start in range(0, n, global_batch):
        chunk = order[start:start + global_batch]
        yield chunk[rank * batch_size:(rank + 1) * batch_size]
