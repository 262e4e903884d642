"""Running training metrics summed where the batches are, read back only when they are shown.

On the GPU a number read back (a float loss, an int count) waits for every kernel queued before it:
read every step, the host would stop queueing until the GPU finishes each step, and host and GPU
time would add up instead of overlapping. So the batches' losses (0-d arrays: the losses'
as_array=True) and correct counts stay on the device, and are summed and read in one transfer
at most every READ_EVERY_S seconds, and when the epoch ends.
"""
from __future__ import annotations

import time

import numpy as np

from .. import backend

READ_EVERY_S = 0.5


def correct_count(logits, labels):
    """The number of rows whose largest logit is the label's, as a 0-d array where they are."""
    return (logits.argmax(axis=1) == labels).sum()


def read_count(counts) -> int:
    """The sum of correct_count's 0-d arrays as an int: one transfer."""
    if not counts:
        return 0
    return int(backend.module_of(counts[0]).stack(counts).sum())


class RunningMetrics:
    """The running mean loss and accuracy of an epoch's batches: add() keeps a batch's values where
    they are; due() says when to read() them (every `every` seconds of `clock`); read() sums what
    was added since the last read (one transfer) and returns the bar's fields."""

    def __init__(self, every: float = READ_EVERY_S, clock=time.monotonic):
        self._every, self._clock = every, clock
        self._last_read = clock()
        self._pending = []   # (loss, correct count, images) per batch, not yet read
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss, logits, labels) -> None:
        """A batch's loss (a 0-d array: the batch's mean, kept as it is until read) and its logits
        and labels."""
        self._pending.append((loss, correct_count(logits, labels), len(labels)))

    def due(self) -> bool:
        return bool(self._pending) and self._clock() - self._last_read >= self._every

    def read(self) -> dict:
        """{"loss": ..., "acc": ...} over every batch added so far (empty before the first)."""
        self._last_read = self._clock()
        if self._pending:
            losses, counts, images = zip(*self._pending)
            self._pending = []
            xp = backend.module_of(losses[0])
            weights = xp.asarray(images, dtype=np.float64)
            loss_sum, correct = xp.stack(((xp.stack(losses) * weights).sum(),
                                          xp.stack(counts).sum().astype(np.float64))).tolist()
            self.loss_sum += loss_sum
            self.correct += int(correct)
            self.seen += sum(images)
        if not self.seen:
            return {}
        return {"loss": f"{self.loss_sum / self.seen:.4f}", "acc": f"{self.correct / self.seen:.1%}"}
