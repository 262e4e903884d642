"""for_each_plane_pixel (kernels/common.cuh): planes of at most half a block go several to a block,
larger ones one plane a block row. Both walks, through adaptive pooling's and padding's kernels, on
the launcher's grid and on smaller ones (the grid-stride loops), under guard zones and the race
check, give the NumPy backend's results; the grid helper sizes the grid to the groups."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F
from cnn_gpu.gpu import _grid, adaptive_pool, pad

needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


def test_the_grid_takes_groups_of_small_planes():
    assert _grid.plane_pixel_grid(65536, 1) == (1, 256)           # a global average pool: 256 planes a block
    assert _grid.plane_pixel_grid(1000, 16) == (1, 63)            # 16 planes a block, the last one partial
    assert _grid.plane_pixel_grid(10, 100) == (1, 5)              # 2 planes a block, 56 threads idle
    assert _grid.plane_pixel_grid(10, 129) == (1, 10)             # over half a block: a plane a block row
    assert _grid.plane_pixel_grid(10**6, 300) == (2, _grid.MAX_GRID_Y)
    assert _grid.plane_pixel_grid(0, 16) == (1, 0) and _grid.plane_pixel_grid(4, 0) == (0, 0)   # nothing to launch


def draw(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("shape, out_size", [((4, 75, 4, 4), (1, 1)), ((2, 9, 3, 5), (2, 3)),
                                             ((3, 5, 10, 10), (7, 9)), ((2, 3, 13, 11), (4, 4))])
def test_adaptive_pooling_walks_every_plane_on_any_grid(shape, out_size, dtype, monkeypatch):
    """Pixels per plane 1, 6, 63 and 143 (forward) and 16, 15, 100 and 143 (backward: the input's):
    groups of 256, 42 (4 threads idle), 4 and 1 planes a block."""
    from cnn_gpu import emu
    x = draw(shape, 1).astype(dtype)
    dy = draw(shape[:2] + out_size, 2).astype(dtype)
    want_y = F.adaptive_avg_pool2d(x, out_size, backend="numpy")
    want_dx = F.adaptive_avg_pool2d_backward(dy, shape, backend="numpy")
    want_max, want_indices = F.adaptive_max_pool2d(x, out_size, backend="numpy")
    for rows in (None, 1, 3):
        if rows is not None:
            monkeypatch.setattr(adaptive_pool, "plane_pixel_grid", lambda planes, pixels: (1, rows))
        with emu.checking(guard=True, race=True):
            y = adaptive_pool.forward("emu", x, out_size)
            dx = adaptive_pool.backward("emu", dy, shape)
            y_max, indices = adaptive_pool.max_forward("emu", x, out_size)
        monkeypatch.undo()
        tolerance = dict(rtol=1e-3, atol=1e-3) if dtype == np.float16 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y.astype(np.float64), want_y.astype(np.float64), **tolerance, err_msg=str(rows))
        np.testing.assert_allclose(dx.astype(np.float64), want_dx.astype(np.float64), **tolerance, err_msg=str(rows))
        np.testing.assert_array_equal(y_max, want_max)
        np.testing.assert_array_equal(indices, want_indices)


@needs_emu
@pytest.mark.parametrize("rows", [None, 1, 2])
def test_padding_walks_every_plane_on_any_grid(rows, monkeypatch):
    """Reflect padding of 3x4 planes to 5x8 (40 pixels: 6 planes a block) and its backward (12: 21)."""
    from cnn_gpu import emu
    x = draw((5, 7, 3, 4), 3)
    dy = draw((5, 7, 5, 8), 4)
    if rows is not None:
        monkeypatch.setattr(pad, "plane_pixel_grid", lambda planes, pixels: (1, rows))
    with emu.checking(guard=True, race=True):
        y = F.pad(x, (2, 2, 1, 1), "reflect", backend="emu")
        dx = F.pad_backward(dy, x.shape, (2, 2, 1, 1), "reflect", backend="emu")
    monkeypatch.undo()
    np.testing.assert_array_equal(y, F.pad(x, (2, 2, 1, 1), "reflect", backend="numpy"))
    np.testing.assert_allclose(dx, F.pad_backward(dy, x.shape, (2, 2, 1, 1), "reflect", backend="numpy"),
                               rtol=1e-13, atol=1e-13)
