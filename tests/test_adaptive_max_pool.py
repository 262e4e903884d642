"""F.adaptive_max_pool2d / its backward and nn.AdaptiveMaxPool2d: the window and scan rules written
out as loops, PyTorch CPU over a seeded sweep with ties and NaNs, finite differences away from ties,
refusals before any launch, and the kernels on the emulator (guard zones, the race check, every
schedule, grids smaller than the work)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, needs_cuda, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


def draw(rng):
    """x shape and output_size: outputs smaller, equal and larger than the input (overlapping
    windows where they do not divide it), None entries."""
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    out = [int(rng.integers(1, 14)) for _ in range(2)]
    if rng.random() < 0.1:
        out[int(rng.integers(2))] = None
    output_size = tuple(out) if rng.random() < 0.8 or None in out else out[0]
    return shape, output_size


def values(rng, shape, dtype):
    """Few distinct values (ties in most windows), now and then NaNs, infinities and -0.0."""
    x = rng.integers(-3, 4, shape).astype(dtype)
    if rng.random() < 0.3:
        x[rng.random(shape) < 0.15] = np.nan
    if rng.random() < 0.2:
        x[rng.random(shape) < 0.1] = rng.choice([np.inf, -np.inf, -0.0])
    return x


def sizes(output_size, shape):
    items = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    return tuple(s if o is None else o for o, s in zip(items, shape[-2:]))


def loop_reference(x, out_h, out_w):
    """Each window scanned row by row: a tap replaces the maximum if strictly greater or NaN."""
    n, c, h, w = x.shape
    y, indices = np.empty((n, c, out_h, out_w), x.dtype), np.empty((n, c, out_h, out_w), np.int32)
    for i in range(n):
        for j in range(c):
            for p in range(out_h):
                for q in range(out_w):
                    best, best_index = None, -1
                    for r in range((p * h) // out_h, -(-(p + 1) * h // out_h)):
                        for s in range((q * w) // out_w, -(-(q + 1) * w // out_w)):
                            v = x[i, j, r, s]
                            if best is None or v > best or np.isnan(v):
                                best, best_index = v, r * w + s
                    y[i, j, p, q], indices[i, j, p, q] = best, best_index
    return y, indices


def gradient_reference(dy, indices, x_shape):
    dx = np.zeros(x_shape)
    n, c, h, w = x_shape
    for (i, j, p, q), index in np.ndenumerate(indices):
        dx[i, j, index // w, index % w] += dy[i, j, p, q]
    return dx


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_windows_ties_and_nans_match_the_loops(be):
    rng = np.random.default_rng(1)
    for shape, out in [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), (1, 1)), ((1, 1, 4, 6), (7, 2)), ((2, 1, 10, 3), 10),
                       ((1, 2, 9, 8), (4, 5))]:
        x = values(rng, shape, np.float64)
        x[0, 0, 0, 0] = np.nan   # a NaN in every shape
        y, indices = F.adaptive_max_pool2d(x, out, backend=be)
        want_y, want_indices = loop_reference(x, *sizes(out, shape))
        assert y.tobytes() == want_y.tobytes() and indices.dtype == np.int32, (shape, out)
        np.testing.assert_array_equal(indices, want_indices)
        dy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(F.adaptive_max_pool2d_backward(dy, indices, shape, out, backend=be),
                                   gradient_reference(dy, indices, shape), rtol=1e-14, atol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("dtype, count", [(np.float64, 200), (np.float32, 60)])
def test_against_pytorch(dtype, count):
    """Values, indices and gradients, ties and NaNs included, batched and unbatched."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for i in range(count):
        shape, output_size = draw(rng)
        x = values(rng, shape, dtype)
        if rng.random() < 0.15:
            x = x[0]
        xt = torch.tensor(x, requires_grad=True)
        yt, it = torch.nn.functional.adaptive_max_pool2d(xt, output_size, return_indices=True)
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        what = f"config {i}: {x.shape} -> {output_size}"
        y, indices = F.adaptive_max_pool2d(x, output_size)
        assert y.tobytes() == yt.detach().numpy().tobytes(), what
        np.testing.assert_array_equal(indices, it.numpy(), err_msg=what)
        assert_close(F.adaptive_max_pool2d_backward(dy, indices, x.shape, output_size), xt.grad.numpy(), dtype,
                     what + " dx")


def test_finite_differences_away_from_ties():
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 2 * 7 * 5).reshape(2, 2, 7, 5) * 0.1 + rng.uniform(0, 0.01, (2, 2, 7, 5))
    for out in [(3, 2), (1, 1), (9, 6), (4, None)]:
        report = check_op(lambda x: F.adaptive_max_pool2d(x, out)[0],
                          lambda dy, x: F.adaptive_max_pool2d_backward(dy, F.adaptive_max_pool2d(x, out)[1], x.shape,
                                                                       out), [x])
        assert report.max_rel_error < 1e-6, f"{out}: {report}"


@needs_emu
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    refuse_launches(monkeypatch)
    x = np.ones((2, 3, 4, 4))
    dy, indices = np.ones((2, 3, 2, 2)), np.zeros((2, 3, 2, 2), np.int32)
    for call, error, match in [
        (lambda be: F.adaptive_max_pool2d(x, 0, backend=be), ValueError, "positive"),
        (lambda be: F.adaptive_max_pool2d(x, (1, 2, 3), backend=be), ValueError, "pair"),
        (lambda be: F.adaptive_max_pool2d(x, 1.5, backend=be), TypeError, "output_size"),
        (lambda be: F.adaptive_max_pool2d(x[0, 0], 1, backend=be), ValueError, "3-D or 4-D"),
        (lambda be: F.adaptive_max_pool2d(np.ones((2, 3, 0, 4)), 1, backend=be), ValueError, "non-empty"),
        (lambda be: F.adaptive_max_pool2d(x.astype(np.int32), 1, backend=be), TypeError, "float"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, (2, 3, 4, 4), 3, backend=be), ValueError, "shape"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, (2, 4, 4, 4), 2, backend=be), ValueError, "shape"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, (2, 3, 0, 4), 2, backend=be), ValueError,
         "non-empty"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, (3, 4, 4), 2, backend=be), ValueError, "dy"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, (2, 3), 2, backend=be), ValueError, "x_shape"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices.astype(np.int64), x.shape, 2, backend=be), TypeError,
         "int32"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices[..., :1], x.shape, 2, backend=be), ValueError,
         "indices"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, list(indices), x.shape, 2, backend=be), TypeError,
         "indices"),
        # an index outside its own window (output (0, 1) covers columns 2 and 3), or outside the plane
        (lambda be: F.adaptive_max_pool2d_backward(dy, indices, x.shape, 2, backend=be), ValueError,
         r"indices\[0, 0, 0, 1\] = 0 is not a pixel of its window"),
        (lambda be: F.adaptive_max_pool2d_backward(dy, np.full_like(indices, -1), x.shape, 2, backend=be), ValueError,
         "not a pixel of its window"),
        (lambda be: F.adaptive_max_pool2d_backward(np.ones((2, 3, 1, 1)), np.full((2, 3, 1, 1), 16, np.int32),
                                                   x.shape, 1, backend=be), ValueError, "not a pixel of its window"),
    ]:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                call(be)


def test_layer_return_indices_none_entries_and_backward():
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 6)).astype(np.float32)
    layer = nn.AdaptiveMaxPool2d(1)
    y = layer(x)
    assert y.shape == (2, 3, 1, 1) and y.dtype == np.float32 and repr(layer) == "AdaptiveMaxPool2d(output_size=1)"
    np.testing.assert_array_equal(y, x.max(axis=(2, 3), keepdims=True))
    dx = layer.backward(np.ones(y.shape, np.float32))
    np.testing.assert_array_equal(dx, (x == x.max(axis=(2, 3), keepdims=True)).astype(np.float32))
    layer = nn.AdaptiveMaxPool2d((None, 2), return_indices=True)
    y, indices = layer(x)
    assert y.shape == indices.shape == (2, 3, 5, 2) and indices.dtype == np.int32
    np.testing.assert_array_equal(layer.backward(np.ones(y.shape, np.float32)),
                                  F.adaptive_max_pool2d_backward(np.ones(y.shape, np.float32), indices, x.shape,
                                                                 (None, 2)))
    assert not isinstance(layer, nn.AdaptiveAvgPool2d) and layer.state_dict() == {}
    size = [2, 2]
    layer = nn.AdaptiveMaxPool2d(size)   # kept as a tuple: an edit of the list later changes nothing
    size[1] = 4
    assert layer.output_size == (2, 2) and layer(x).shape == (2, 3, 2, 2)


def test_layer_checks_indices_only_where_the_caller_holds_them(monkeypatch):
    """Its own indices (return_indices=False) go to the unchecked backward: on CuPy the check reads
    a flag back every step; with return_indices=True the caller may have changed them."""
    from cnn_gpu.functional import adaptive_pool
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 6))
    check, calls = adaptive_pool.check_max_indices, []
    monkeypatch.setattr(adaptive_pool, "check_max_indices", lambda *a: calls.append(1) or check(*a))
    for return_indices, checked in ((False, 0), (True, 1)):
        calls.clear()
        layer = nn.AdaptiveMaxPool2d(4, return_indices)
        layer(x)
        layer.backward(np.ones((1, 2, 4, 4)))
        assert len(calls) == checked


@pytest.mark.torch
def test_layer_matches_pytorchs():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 7, 5))
    for size in [3, (None, 2), (4, None), (9, 1)]:
        theirs = torch.nn.AdaptiveMaxPool2d(size, return_indices=True)
        ours = nn.AdaptiveMaxPool2d(size, return_indices=True)
        assert repr(ours) == repr(theirs).replace(", return_indices=True", "")
        (ty, ti), (y, indices) = theirs(torch.tensor(x)), ours(x)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(indices, ti.numpy())
        assert dict(ours.state_dict()) == dict(theirs.state_dict()) == {}


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_emu_sweep_with_guard_zones_and_the_race_check(dtype):
    """float16's neighbouring elements share 4-byte words: the race check is exact to the byte."""
    from cnn_gpu import emu
    rng = np.random.default_rng(7)
    with emu.checking(schedule="random", seed=2, guard=True, race=True):
        for i in range(40):
            shape, output_size = draw(rng)
            x = values(rng, shape, dtype)
            y, indices = F.adaptive_max_pool2d(x, output_size, backend="emu")
            want_y, want_indices = F.adaptive_max_pool2d(x, output_size, backend="numpy")
            what = f"config {i}: {shape} -> {output_size}"
            assert y.dtype == dtype and y.tobytes() == want_y.tobytes(), what
            np.testing.assert_array_equal(indices, want_indices, err_msg=what)
            dy = rng.standard_normal(y.shape).astype(dtype)
            assert_close(F.adaptive_max_pool2d_backward(dy, indices, shape, output_size, backend="emu"),
                         F.adaptive_max_pool2d_backward(dy, indices, shape, output_size, backend="numpy"), dtype,
                         what + " dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(8)
    for shape, out in [((2, 3, 7, 9), (3, 4)), ((1, 2, 17, 19), (1, 1)), ((2, 1, 4, 6), (7, 5)),
                       ((1, 1, 30, 20), (4, 3))]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal((shape[0], shape[1]) + out).astype(np.float32)
        results = []
        for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
            with emu.checking(guard=True, **settings):
                y, indices = F.adaptive_max_pool2d(x, out, backend="emu")
                results.append((y, indices, F.adaptive_max_pool2d_backward(dy, indices, shape, out, backend="emu")))
        for a, b in zip(*results):
            assert a.tobytes() == b.tobytes(), f"{shape} -> {out} under {schedule}"


@needs_emu
def test_grids_smaller_than_the_work_cover_every_plane_and_pixel():
    """blockIdx.y strides over more planes than the grid has rows, x threads over a plane larger
    than the grid's threads."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 31, 19))
    y, indices = np.empty((3, 5, 23, 17)), np.empty((3, 5, 23, 17), np.int32)
    sizes_args = (np.int64(15), *map(np.int32, (31, 19, 23, 17)))
    backend.launch("emu", "adaptive_pool", x.dtype, "adaptive_max_pool_forward", (1, 2), (256,),
                   (x, y, indices, *sizes_args))
    want_y, want_indices = F.adaptive_max_pool2d(x, (23, 17))
    assert y.tobytes() == want_y.tobytes() and indices.tobytes() == want_indices.tobytes()
    dy, dx = rng.standard_normal(y.shape), np.empty_like(x)
    backend.launch("emu", "adaptive_pool", x.dtype, "adaptive_max_pool_backward", (1, 2), (256,),
                   (dy, indices, dx, *sizes_args))
    assert_close(dx, F.adaptive_max_pool2d_backward(dy, indices, x.shape, (23, 17)), np.float64, "dx")


@needs_emu
def test_float16_rounds_each_gradient_once():
    """Overlapping windows share maxima: the float16 gradient sums them in FP32 and rounds once,
    on numpy and emu alike (a float16 sum would round every addition)."""
    x = np.zeros((1, 1, 3, 3), np.float16)
    x[0, 0, 1, 1] = 1   # the maximum of all 4 overlapping windows of a 3x3 -> 2x2 pooling
    dy = np.array([2048, 1, 1, 1], np.float16).reshape(1, 1, 2, 2)   # 2048 + 1 rounds back to 2048 in FP16
    for be in ("numpy", "emu"):
        y, indices = F.adaptive_max_pool2d(x, 2, backend=be)
        assert (indices == 4).all()
        dx = F.adaptive_max_pool2d_backward(dy, indices, x.shape, 2, backend=be)
        assert dx.dtype == np.float16 and dx[0, 0, 1, 1] == 2052 and dx.sum() == 2052, be


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(10)
    for i in range(60):
        shape, output_size = draw(rng)
        x = values(rng, shape, dtype)
        y, indices = F.adaptive_max_pool2d(cupy.asarray(x), output_size)
        want_y, want_indices = F.adaptive_max_pool2d(x, output_size)
        what = f"config {i}: {shape} -> {output_size}"
        assert y.get().tobytes() == want_y.tobytes(), what
        np.testing.assert_array_equal(indices.get(), want_indices, err_msg=what)
        dy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(F.adaptive_max_pool2d_backward(cupy.asarray(dy), indices, shape, output_size),
                     F.adaptive_max_pool2d_backward(dy, want_indices, shape, output_size), dtype, what + " dx")


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

@pytest.mark.torch
def test_benchmark_models_know_the_layer():
    """A model with nn.AdaptiveMaxPool2d gets its shapes, its launches (kernels adaptive_pool.cu
    holds, the indices' bytes counted) and a PyTorch mirror that computes what it does."""
    torch = pytest.importorskip("torch")
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=np.float64), nn.AdaptiveMaxPool2d((3, None)),
                          nn.AdaptiveMaxPool2d(2))
    x = np.random.default_rng(11).standard_normal((2, 2, 7, 6))
    shapes = {type(leaf).__name__ + str(i): (shape_in, shape_out)
              for i, (leaf, shape_in, shape_out, _) in enumerate(leaf_layers(model, x.shape))}
    assert shapes == {"Conv2d0": ((2, 2, 7, 6), (2, 3, 5, 4)), "AdaptiveMaxPool2d1": ((2, 3, 5, 4), (2, 3, 3, 4)),
                      "AdaptiveMaxPool2d2": ((2, 3, 3, 4), (2, 3, 2, 2))}
    source = backend.kernel_source("adaptive_pool")
    passes = _layer_passes(model[2], 36, 12, 8)
    assert passes == [("adaptive_max_pool_forward", 48 * 8 + 12 * 4), ("adaptive_max_pool_backward", 48 * 8 + 12 * 4)]
    for kernel, _ in passes:
        assert f"\n{kernel}(" in source, kernel
    with torch.no_grad():
        np.testing.assert_allclose(torch_mirror(model, torch)(torch.tensor(x)).numpy(), model(x), rtol=1e-12)


@pytest.mark.torch
@needs_emu
def test_float16_matches_pytorchs_half():
    """Values and indices of torch's float16 adaptive_max_pool2d, ties and NaNs included, on numpy and emu."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    for i in range(20):
        shape, output_size = draw(rng)
        x = values(rng, shape, np.float16)
        ty, ti = torch.nn.functional.adaptive_max_pool2d(torch.tensor(x), output_size, return_indices=True)
        for be in ("numpy", "emu"):
            y, indices = F.adaptive_max_pool2d(x, output_size, backend=be)
            assert y.dtype == np.float16 and y.tobytes() == ty.numpy().tobytes(), (i, be)
            np.testing.assert_array_equal(indices, ti.numpy())
