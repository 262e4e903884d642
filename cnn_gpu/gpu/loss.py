"""Launch code of kernels/loss.cu: softmax cross entropy and mean squared error, each returning
(loss as a Python float, gradient of the mean loss). The mean is a fixed-order reduction
(reduce.channel_sum), so both are bit-identical run to run; reading the float back is the one host
synchronisation, which the API's float loss requires."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import reduce
from ._grid import THREADS, blocks_for, real

MAX_GRID_X = 2**31 - 1


def _row_threads(classes: int) -> int:
    """Block size for one row: a power of two from 32 (a warp) to THREADS covering `classes`."""
    threads = 32
    while threads < classes and threads < THREADS:
        threads *= 2
    return threads


def _mean(be, values, count: int) -> float:
    total = reduce.channel_sum(be, values, 1, 1, count)
    return float(total[0]) / count


def cross_entropy(be, logits, labels):
    rows, classes = logits.shape
    if labels.dtype != np.int64:
        raise TypeError(f"labels must be int64 for the kernels, got {labels.dtype}")
    xp = backend.array_module(be)
    dlogits = xp.empty_like(logits)
    row_loss = xp.empty((rows,), dtype=logits.dtype)
    backend.launch(be, "loss", logits.dtype, "cross_entropy_rows", (min(rows, MAX_GRID_X),),
                   (_row_threads(classes),),
                   (logits, labels, dlogits, row_loss, np.int64(rows), np.int32(classes),
                    *real(logits.dtype, 1.0 / rows)))
    return _mean(be, row_loss, rows), dlogits


def mse(be, pred, target):
    n = pred.size
    xp = backend.array_module(be)
    dpred = xp.empty_like(pred)
    squared = xp.empty((n,), dtype=pred.dtype)
    backend.launch(be, "loss", pred.dtype, "mse_rows", (blocks_for(n),), (THREADS,),
                   (pred, target, dpred, squared, np.int64(n), *real(pred.dtype, 2.0 / n)))
    return _mean(be, squared, n), dpred
