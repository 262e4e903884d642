"""The plane walks of kernels/plane_walk.cuh: for_each_plane_pixel (planes of at most half a block
several to a block, larger ones one plane a block row), through pooling's, adaptive pooling's and padding's
kernels, for_each_channel_plane_pixel through LRN's, its grouped walk through GLU's short runs, and
unfold's and fold's groups (tests/test_fold.py too): on the launcher's grid and on smaller ones (the
grid-stride loops), under guard zones and the race check, they give the NumPy backend's results;
the grid helper sizes the grid to the groups, and the launchers use it."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend
from cnn_gpu import functional as F
from cnn_gpu.gpu import _grid, adaptive_pool, elementwise, local_response_norm, pad, pool

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


def record_grids(monkeypatch) -> list:
    """The grid of every backend.launch from now on (the launches still run)."""
    grids, launch = [], backend.launch
    monkeypatch.setattr(backend, "launch", lambda be, family, dtype, kernel, grid, *args, **kwargs:
                        grids.append(grid) or launch(be, family, dtype, kernel, grid, *args, **kwargs))
    return grids


@needs_emu
@pytest.mark.parametrize("shape, size", [((9, 60, 1), 5), ((3, 7, 4, 5), 3), ((2, 5, 129), 2), ((80, 4, 1), 3)])
def test_local_response_norm_walks_every_plane_on_any_grid(shape, size, monkeypatch):
    """for_each_channel_plane_pixel: planes of 1, 20 and 129 positions go 256 (the 540 planes' groups
    cross samples: each thread's channel carries into its sample), 12 and one to a block; grids of 1 and 3
    rows step each thread's (n, c) by 256, 768, 12, 36, 1 and 3 planes (none a multiple of C = 60, 7, 5).
    C = 4 with 320 one-position planes: a grid of 1 row steps by 256 = 64 C planes (channel_step 0, the
    thread's channel kept and its sample moved on)."""
    from cnn_gpu import emu
    x, dy = draw(shape, 5), draw(shape, 6)
    settings = (size, 0.5, 0.75, 1.5)
    want_y = F.local_response_norm(x, *settings, backend="numpy")
    want_dx = F.local_response_norm_backward(dy, x, *settings, backend="numpy")
    for rows in (None, 1, 3):
        if rows is not None:
            monkeypatch.setattr(local_response_norm, "plane_pixel_grid", lambda planes, pixels: (1, rows))
        with emu.checking(guard=True, race=True):
            y = F.local_response_norm(x, *settings, backend="emu")
            dx = F.local_response_norm_backward(dy, x, *settings, backend="emu")
        monkeypatch.undo()
        np.testing.assert_allclose(y, want_y, rtol=1e-13, atol=1e-13, err_msg=str(rows))
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12, err_msg=str(rows))


@needs_emu
def test_local_response_norm_launches_groups_of_small_planes(monkeypatch):
    """(8, 64, 1), a Linear's output: 512 planes of one position, 256 a block (one plane a block row
    was 512 blocks of one busy thread)."""
    grids = record_grids(monkeypatch)
    x = draw((8, 64, 1), 7)
    F.local_response_norm_backward(x, x, 3, backend="emu")
    F.local_response_norm(x, 3, backend="emu")
    assert grids == [(1, 2)] * 3


@needs_emu
@pytest.mark.parametrize("shape, dim, launched", [((33, 80), -1, (1, 6)), ((4, 6, 5), 1, (1, 1)),
                                                   ((3, 300), 1, (1, 3))])
def test_glu_walks_short_runs_several_to_a_block_on_any_grid(shape, dim, launched, monkeypatch):
    """GLU's runs of 40 and 15 elements go 6 and 17 to a block (one a block row left 216 and 241 of 256
    threads idle), runs of 150 one a block row (for_each_element); on grids of 1 and 3 rows too, under
    guard zones and the race check, bit for bit the launcher's grid's results and the NumPy oracle's."""
    from cnn_gpu import emu
    x = draw(shape, 8) * 4
    dy = draw(F.glu(x, dim).shape, 9)
    results = []
    for rows in (None, 1, 3):
        if rows is not None:
            monkeypatch.setattr(elementwise, "plane_pixel_grid", lambda planes, pixels: (1, rows))
            monkeypatch.setattr(elementwise, "MAX_GRID_Y", rows)
        grids = record_grids(monkeypatch)
        with emu.checking(guard=True, race=True):
            results.append((F.glu(x, dim, backend="emu"), F.glu_backward(dy, x, dim, backend="emu")))
        monkeypatch.undo()
        assert grids == [launched if rows is None else (launched[0], rows)] * 2
    for y, dx in results:
        assert y.tobytes() == results[0][0].tobytes() and dx.tobytes() == results[0][1].tobytes()
        np.testing.assert_allclose(y, F.glu(x, dim, backend="numpy"), rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(dx, F.glu_backward(dy, x, dim, backend="numpy"), rtol=1e-14, atol=1e-14)


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_the_grouped_walks_are_bit_identical_under_schedules(schedule):
    """LRN's, unfold's, fold's and GLU's grouped small planes (1 and 20 positions, rows of 70 blocks,
    planes of 99 pixels, runs of 40) give the forward schedule's bytes under another, with guard zones and
    the race check."""
    from cnn_gpu import emu
    x, image, features = draw((9, 60, 1), 10), draw((2, 3, 9, 11), 11), draw((33, 80), 12)
    planes = draw((3, 7, 4, 5), 13)
    results = []
    for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
        with emu.checking(guard=True, race=True, **settings):
            cols = F.unfold(image, (3, 2), backend="emu")
            results.append([F.local_response_norm(x, 5, backend="emu"),
                            F.local_response_norm_backward(x, x, 5, backend="emu"),
                            F.local_response_norm_backward(planes, planes, 3, backend="emu"), cols,
                            F.fold(cols, (9, 11), (3, 2), backend="emu"),
                            F.glu_backward(features[:, :40], features, backend="emu")])
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes(), schedule
@needs_emu
def test_pooling_fills_its_blocks_on_small_planes():
    """ResNet's late maps: a 2x2 max pool of 512 planes of 8x8 runs 32 blocks of 16 planes of 4x4 outputs and
    the average's backward 128 blocks of 4 input planes, every warp storing 32 pixels at once (the emulator's
    profile), where one plane a block row ran 512 blocks of 16 and of 64 busy threads (half-warp stores of
    the 4x4 planes). A volume's 6 planes of 2x2x2 outputs take one block."""
    from cnn_gpu import emu
    x = draw((8, 64, 8, 8), 7)
    with emu.profiling() as profile:
        y, _ = F.max_pool2d(x, 2, backend="emu")
        F.avg_pool2d_backward(y, x.shape, 2, backend="emu")
        F.avg_pool3d(draw((2, 3, 4, 4, 4), 8), 2, backend="emu")
    assert {kernel: launch["grid"] for kernel, launch in profile.kernels.items()} == {
        "max_pool_forward": (1, 32, 1), "avg_pool_backward": (1, 128, 1), "avg_pool3d_forward": (1, 1, 1)}
    full_warps = {"max_pool_forward": 512 * 16 // 32, "avg_pool_backward": 512 * 64 // 32}
    stores = [(site["kernel"], site["requests"]) for site in profile.sites
              if site["op"] == "store" and site["kernel"] in full_warps]
    assert sorted(stores) == [("avg_pool_backward", 1024), ("max_pool_forward", 256), ("max_pool_forward", 256)]


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("shape, kernel_size, stride, padding, ceil_mode", [
    ((4, 75, 4, 4), 2, 2, 0, False),     # 2x2 outputs: 64 planes a block; 4x4 inputs: 16
    ((2, 9, 7, 7), 3, 2, 1, True),       # 4x4 outputs (ceil_mode): 16 planes a block; 7x7 inputs: 5, 11 threads idle
    ((3, 5, 12, 13), 2, 1, 0, False),    # 11x12 outputs and 12x13 inputs: a plane a block row
    ((2, 7, 3, 4, 5), 2, 2, 1, True),    # a volume: 2x3x3 outputs, 14 planes a block; 3x4x5 inputs: 4
])
def test_pooling_walks_every_plane_on_any_grid(shape, kernel_size, stride, padding, ceil_mode, dtype, monkeypatch):
    """pool.cu's max and average kernels, forward and backward, images and volumes, under guard zones, the
    race check and the reverse and random schedules, on the launcher's grid and on smaller ones, give the
    NumPy backend's results."""
    from cnn_gpu import emu
    volume = len(shape) == 5
    max_pool, max_pool_backward = (F.max_pool3d, F.max_pool3d_backward) if volume else (F.max_pool2d,
                                                                                         F.max_pool2d_backward)
    avg_pool, avg_pool_backward = (F.avg_pool3d, F.avg_pool3d_backward) if volume else (F.avg_pool2d,
                                                                                         F.avg_pool2d_backward)
    window = (kernel_size, stride, padding)
    x = draw(shape, 5).astype(dtype)
    want_max, want_indices = max_pool(x, *window, 1, ceil_mode, backend="numpy")
    dy = draw(want_max.shape, 6).astype(dtype)
    want_max_dx = max_pool_backward(dy, want_indices, shape, *window, 1, ceil_mode, backend="numpy")
    want_avg = avg_pool(x, *window, ceil_mode, False, backend="numpy")
    want_avg_dx = avg_pool_backward(dy, shape, *window, ceil_mode, False, backend="numpy")
    for rows, schedule in ((None, "reverse"), (None, "random"), (1, "random"), (3, "reverse")):
        if rows is not None:
            monkeypatch.setattr(pool, "plane_pixel_grid", lambda planes, pixels: (1, rows))
        with emu.checking(guard=True, race=True, schedule=schedule, seed=4):
            y, indices = max_pool(x, *window, 1, ceil_mode, backend="emu")
            max_dx = max_pool_backward(dy, indices, shape, *window, 1, ceil_mode, backend="emu")
            avg = avg_pool(x, *window, ceil_mode, False, backend="emu")
            avg_dx = avg_pool_backward(dy, shape, *window, ceil_mode, False, backend="emu")
        monkeypatch.undo()
        np.testing.assert_array_equal(y, want_max, err_msg=str(rows))
        np.testing.assert_array_equal(indices, want_indices, err_msg=str(rows))
        tolerance = dict(rtol=1e-3, atol=1e-3) if dtype == np.float16 else dict(rtol=1e-13, atol=1e-13)
        for got, want in ((max_dx, want_max_dx), (avg, want_avg), (avg_dx, want_avg_dx)):
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **tolerance, err_msg=str(rows))
