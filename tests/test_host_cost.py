"""What the host's hot path remembers to make a training step's Python cheaper (benchmarks/host_overhead.py):
each memo gives what the code without it gives, refuses what it refuses, and forgets what changed."""
import numpy as np
import pytest

from cnn_gpu.gpu import _grid


def test_i32_gives_the_same_scalars_from_its_memo_and_refuses_every_time():
    for _ in range(2):   # the second round from the memo
        ints = _grid.i32(5, True, np.int64(7), 3.9)
        assert ints == (5, 1, 7, 3) and all(type(i) is np.int32 for i in ints)
        assert _grid.i32(6, True, np.int64(7), 3.9) == (6, 1, 7, 3)
        with pytest.raises(ValueError, match="2147483648 does not fit"):
            _grid.i32(1, 2**31)
        with pytest.raises(TypeError):
            _grid.i32([1])   # unhashable: converted as it is, which int() refuses


def test_i32_memo_stays_within_its_size(monkeypatch):
    monkeypatch.setattr(_grid, "I32_MEMO_SIZE", 3)
    monkeypatch.setattr(_grid, "_i32_memo", {})
    for value in range(10):
        assert _grid.i32(value, value + 1) == (value, value + 1)
        assert len(_grid._i32_memo) <= 3
