"""Device-to-host reads per call, counted on the emulator with a CuPy-like array (each conversion
of a device value to a Python number is one synchronising transfer on a GPU): cross_entropy reads
its loss once, max_pool2d_backward checks its indices with one read."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")


class HostReads(np.ndarray):
    """A NumPy array that counts reads to the host the way CuPy makes them: indexing one element
    gives a 0-d array, and int(), float(), bool(), item() and tolist() copy values back."""
    count = 0

    def _read(self):
        HostReads.count += 1
        return np.asarray(self)

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return item if isinstance(item, np.ndarray) else np.asarray(item).view(HostReads)

    def __int__(self):
        return int(self._read())

    def __index__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def __bool__(self):
        return bool(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()


class _CountingNumpy:
    """numpy, whose new arrays are HostReads (stands in for backend.array_module's CuPy)."""

    def __getattr__(self, name):
        attr = getattr(np, name)
        if name in ("empty", "empty_like", "full", "zeros", "concatenate", "asarray"):
            return lambda *args, **kwargs: attr(*args, **kwargs).view(HostReads)
        return attr


@pytest.fixture
def count_reads(monkeypatch):
    monkeypatch.setattr(backend, "array_module", lambda be: _CountingNumpy())
    HostReads.count = 0
    return HostReads


@needs_emu
@pytest.mark.parametrize("reduction, targets", [("sum", "labels"), ("mean", "probabilities"), ("mean", "labels")])
def test_cross_entropy_reads_its_loss_back_once(count_reads, reduction, targets):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    target = labels if targets == "labels" else rng.dirichlet(np.ones(5), 6).astype(np.float32)
    loss, _ = F.cross_entropy(logits, target, reduction=reduction, backend="emu")
    assert count_reads.count == 1
    want, _ = F.cross_entropy(logits, target, reduction=reduction, backend="numpy")
    assert loss == pytest.approx(want, rel=1e-6)


@needs_emu
def test_max_pool_backward_checks_its_indices_with_one_read(count_reads):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6))
    y, indices = F.max_pool2d(x, 3, stride=2, padding=1)
    F.max_pool2d_backward(rng.standard_normal(y.shape), indices.view(HostReads), x.shape, 3, stride=2, padding=1,
                          backend="emu")
    assert count_reads.count == 1
    for tampered, message in ((indices + 100, "must lie in"), (np.where(indices >= 0, indices ^ 1, indices), "not a tap")):
        with pytest.raises(ValueError, match=message):
            F.max_pool2d_backward(y, tampered.view(HostReads), x.shape, 3, stride=2, padding=1, backend="emu")
