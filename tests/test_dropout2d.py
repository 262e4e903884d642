"""F.dropout2d / F.dropout2d_backward and nn.Dropout2d: one keep decision per (n, c) plane drawn from
(seed, step) (the number dropout draws for element n * C + c), the same mask bit for bit on numpy and
emu (guard zones, the race check, every schedule), PyTorch 2.13's scaling, rank rules and warnings,
finite differences, and the layer's step and state_dict."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import backend, nn, optim, philox
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import needs_cuda, needs_emu, refuse_launches
from test_dropout import check_a_resumed_run

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (N, C, H, W) with planes of 1 pixel, of more than a block's threads and more planes than a Philox
# group has lanes; 3-D (N, C, L), and the deprecated 2-D and 5-D ranks
SHAPES = [(2, 3, 4, 5), (1, 1, 1, 1), (3, 5, 1, 1), (1, 2, 17, 19), (2, 7, 6), (5, 9), (2, 3, 2, 3, 2), (0, 3, 4, 4)]
CASES = [dict(p=0.5, seed=0, step=0), dict(p=0.1, seed=2**40 + 3, step=7), dict(p=0.9, seed=12345, step=2**35 + 1),
         dict(p=1 / 3, seed=2**64 - 1, step=2**64 - 1), dict(p=1.0, seed=5, step=1)]


def quietly(call, *args, **kwargs):
    """call(...) with the rank warnings of 2-, 3- and 5-D inputs silenced (tested on their own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def reference(x, p, seed, step):
    """x * keep / (1 - p) written from the definition, plane by plane: plane (n, c) takes the number
    of element n * C + c of (seed, step)."""
    numbers = philox.element_numbers(seed, step, x.shape[0] * x.shape[1])
    real = x.dtype.type
    scale = real(0) if p == 1 else real(1) / real(1 - p)
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            keep = int(numbers[n * x.shape[1] + c]) >= round(p * 2**32)
            y[n, c] = x[n, c] * (scale if keep else real(0))
    return y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_matches_the_definition(dtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(dtype)
        for case in CASES:
            y = quietly(F.dropout2d, x, case["p"], seed=case["seed"], step=case["step"], backend="numpy")
            assert y.dtype == dtype and y.shape == x.shape
            np.testing.assert_array_equal(y, reference(x, **case), err_msg=f"{shape} {case}")


def test_the_plane_mask_is_dropouts_mask_of_the_n_by_c_array():
    """One number a plane, the one dropout draws for element n * C + c: dropout2d of x is x times
    dropout of ones((N, C)) broadcast over the planes."""
    x = np.random.default_rng(2).standard_normal((4, 6, 3, 5))
    for case in CASES:
        planes = F.dropout(np.ones((4, 6)), case["p"], seed=case["seed"], step=case["step"])
        np.testing.assert_array_equal(F.dropout2d(x, case["p"], seed=case["seed"], step=case["step"]),
                                      x * planes[:, :, None, None])


@needs_emu
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_emu_mask_is_the_numpy_mask_bit_for_bit(schedule):
    """Guard zones and the race check on (float16's neighbouring elements share 4-byte words)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(3)
    with emu.checking(schedule=schedule, seed=4, guard=True, race=True):
        for dtype in (np.float64, np.float32, np.float16):
            for shape in SHAPES:
                x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
                for case in CASES:
                    args = (case["p"], case["seed"], case["step"])
                    y = quietly(F.dropout2d, x, args[0], seed=args[1], step=args[2], backend="emu")
                    assert y.dtype == dtype
                    assert y.tobytes() == quietly(F.dropout2d, x, args[0], seed=args[1], step=args[2]).tobytes()
                    dx = F.dropout2d_backward(dy, *args, backend="emu")
                    assert dx.tobytes() == F.dropout2d_backward(dy, *args, backend="numpy").tobytes()


@needs_emu
@pytest.mark.parametrize("shape, grid", [((3, 5, 31, 19), (1, 2)), ((3, 5, 1, 1), (1, 1)), ((3, 5, 40, 61), (2, 3))])
def test_the_grid_strides_cover_every_plane_and_pixel(shape, grid):
    """Grids smaller than the work, for both plane walks (plane_walk.cuh): small planes in groups a
    block (their factors in a shared table a block reuses: guard zones and the race check), planes
    of more than a block's span across x blocks."""
    from cnn_gpu import emu
    x = np.random.default_rng(4).standard_normal(shape)
    y = np.empty_like(x)
    with emu.checking(guard=True, race=True):
        backend.launch("emu", "dropout", x.dtype, "dropout2d_apply", grid, (256,),
                       (x, y, np.int64(shape[0] * shape[1]), np.int64(shape[2] * shape[3]), np.uint64(9), np.uint64(1),
                        np.int64(2**31), np.float64(2.0)))
    np.testing.assert_array_equal(y, F.dropout2d(x, 0.5, seed=9, step=1, backend="numpy"))


def test_float16_draws_the_float32_mask_and_rounds_once():
    x = np.random.default_rng(5).standard_normal((3, 8, 4, 4)).astype(np.float16)
    half = F.dropout2d(x, 0.3, seed=11, step=4)
    single = F.dropout2d(x.astype(np.float32), 0.3, seed=11, step=4)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, single.astype(np.float16))


def test_drop_rate_and_masks():
    x = np.ones((400, 250, 2, 2))
    for p in (0.1, 0.5, 0.8):
        y = F.dropout2d(x, p, seed=11)
        kept = y[:, :, 0, 0] != 0
        assert (y == y[:, :, :1, :1]).all()   # whole planes
        assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / kept.size)   # binomial: 5 deviations
        np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)
    first = F.dropout2d(x, 0.5, seed=1, step=0) != 0
    for other in (F.dropout2d(x, 0.5, seed=1, step=1), F.dropout2d(x, 0.5, seed=2, step=0)):
        assert 0.45 < (first == (other != 0)).mean() < 0.55   # independent masks agree on about half the planes


def test_eval_p_zero_p_one_and_non_finite_values():
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert F.dropout2d(x, 0.5, training=False, seed=0) is x
    assert F.dropout2d(x, 0.0, seed=0) is x
    assert F.dropout2d_backward(x, 0.0, seed=0) is x
    assert not F.dropout2d(x, 1.0, seed=0).any()
    special = np.tile(np.array([np.nan, np.inf, 1.0])[None, None, None], (20, 10, 2, 1))
    y = F.dropout2d(special, 0.5, seed=3)
    dropped = y[:, :, 0, 2] == 0
    assert 0 < dropped.mean() < 1
    # a dropped plane's NaN and inf become NaN (0 * inf), as PyTorch's x * mask
    assert np.isnan(y[:, :, :, 0]).all() and np.isnan(y[dropped][:, :, 1]).all()
    assert (y[~dropped][:, :, 1] == np.inf).all()


@pytest.mark.torch
def test_pytorchs_scale_planes_and_eval():
    torch = pytest.importorskip("torch")
    for dtype, torch_dtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
        for p in np.linspace(0.01, 0.95, 40):
            theirs = torch.nn.functional.dropout2d(torch.ones(64, 64, 2, 3, dtype=torch_dtype), float(p)).numpy()
            ours = F.dropout2d(np.ones((64, 64, 2, 3), dtype), float(p), seed=1)
            assert set(np.unique(ours)) == set(np.unique(theirs)), f"p={p} {np.dtype(dtype).name}"
            assert (theirs == theirs[:, :, :1, :1]).all() and (ours == ours[:, :, :1, :1]).all()
    x = np.random.default_rng(7).standard_normal((2, 3, 4, 4))
    for p in (0.0, 0.4, 1.0):
        theirs = torch.nn.functional.dropout2d(torch.tensor(x), p, training=False).numpy()
        np.testing.assert_array_equal(F.dropout2d(x, p, training=False, seed=0), theirs)
    assert not torch.nn.functional.dropout2d(torch.tensor(x), 1.0).any() and not F.dropout2d(x, 1.0, seed=0).any()


def _warnings_of(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 5), (4, 5), (2, 3, 2, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_pytorchs_rank_rules_and_warnings(shape, training):
    """PyTorch 2.13 takes ranks 2 and up on the first two axes; 3-D is (N, C, L) (not an
    unbatched image) with a warning saying so, ranks other than 3 and 4 a deprecation warning; in
    eval mode as in training. The layer warns the same."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).standard_normal(shape)
    theirs, expected = _warnings_of(lambda: torch.nn.functional.dropout2d(torch.ones(shape), 0.5, training))
    _, ours = _warnings_of(lambda: F.dropout2d(x, 0.5, training, seed=3))
    assert ours == expected and (len(expected) > 0) == (shape != (2, 3, 4, 5))
    layer = nn.Dropout2d(0.5, seed=3)
    layer.train(training)
    _, from_layer = _warnings_of(lambda: layer(x))
    assert from_layer == expected
    if training:   # planes of the first two axes: each (i, j) slice kept or dropped whole
        planes = theirs.reshape(shape[0], shape[1], -1).numpy()
        assert (planes == planes[:, :, :1]).all()
        y = quietly(F.dropout2d, x, 0.5, seed=3).reshape(shape[0], shape[1], -1)
        assert ((y == 0).all(axis=2) | (y != 0).all(axis=2)).all()


@pytest.mark.torch
def test_ranks_below_2_are_refused_as_pytorch_refuses_them():
    torch = pytest.importorskip("torch")
    for shape in [(5,), ()]:
        with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"):
            quietly(torch.nn.functional.dropout2d, torch.ones(shape), 0.5)
        for call in (lambda: F.dropout2d(np.ones(shape), 0.5, seed=0),
                     lambda: F.dropout2d(np.ones(shape), 0.5, training=False, seed=0),
                     lambda: F.dropout2d_backward(np.ones(shape), 0.5, seed=0),
                     lambda: nn.Dropout2d(0.5, seed=0).eval()(np.ones(shape))):
            with pytest.raises(ValueError, match="Feature dropout requires at least 2 dimensions"):
                quietly(call)


def test_backward_regenerates_the_mask_and_finite_differences():
    rng = np.random.default_rng(9)
    x, dy = rng.standard_normal((3, 5, 4, 3)), rng.standard_normal((3, 5, 4, 3))
    y = F.dropout2d(x, 0.3, seed=21, step=4)
    dx = F.dropout2d_backward(dy, 0.3, seed=21, step=4)
    np.testing.assert_array_equal(dx, np.where(y != 0, dy * (1 / (1 - 0.3)), 0.0))
    report = check_op(lambda x: F.dropout2d(x, 0.3, seed=21, step=4),
                      lambda dy, x: F.dropout2d_backward(dy, 0.3, 21, 4), [x])
    assert report.max_rel_error < 1e-8, str(report)


@needs_emu
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    refuse_launches(monkeypatch)
    x = np.ones((2, 3, 4, 4))
    for call, error, match in [
        (lambda be: F.dropout2d(x, 1.5, seed=0, backend=be), ValueError, "between 0 and 1"),
        (lambda be: F.dropout2d(x, float("nan"), seed=0, backend=be), ValueError, "finite"),
        (lambda be: F.dropout2d(x, 0.5, seed=-1, backend=be), ValueError, "seed"),
        (lambda be: F.dropout2d(x, 0.5, seed=1.5, backend=be), TypeError, "seed"),
        (lambda be: F.dropout2d(x, 0.5, seed=0, step=2**64, backend=be), ValueError, "step"),
        (lambda be: F.dropout2d(x, 0.5, training=None, seed=0, backend=be), TypeError, "training"),
        (lambda be: F.dropout2d(x, 0.5, training=False, seed=-1, backend=be), ValueError, "seed"),
        (lambda be: F.dropout2d(x.astype(np.int64), 0.5, seed=0, backend=be), TypeError, "float32 or float64"),
        (lambda be: F.dropout2d([[1.0]], 0.5, seed=0, backend=be), TypeError, "array"),
        (lambda be: F.dropout2d_backward(x, 0.5, seed=None, backend=be), TypeError, "seed"),
        (lambda be: F.dropout2d_backward(x, 0, seed=-1, backend=be), ValueError, "seed"),   # p = 0: as the forward
    ]:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                call(be)
    with pytest.raises(TypeError):
        F.dropout2d(x, 0.5)   # the seed is required


# --- nn.Dropout2d -------------------------------------------------------------------------------

def test_layer_steps_reproducibility_and_eval():
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal((3, 8, 2, 2)), rng.standard_normal((3, 8, 2, 2))
    nn.init.manual_seed(3)
    layer = nn.Dropout2d(0.25)
    nn.init.manual_seed(3)
    twin = nn.Dropout2d(0.25)
    assert layer.seed == twin.seed and repr(layer) == "Dropout2d(p=0.25)"
    first = layer(x)
    np.testing.assert_array_equal(first, F.dropout2d(x, 0.25, seed=layer.seed, step=0))
    np.testing.assert_array_equal(layer.backward(dy), F.dropout2d_backward(dy, 0.25, layer.seed, 0))
    second = layer(x)
    assert int(layer.step) == 2 and not np.array_equal(first != 0, second != 0)
    np.testing.assert_array_equal(first, twin(x))
    layer.backward(dy)
    layer.eval()
    assert layer(x) is x and layer.backward(dy) is dy and int(layer.step) == 2
    off = nn.Dropout2d(0.0, seed=4)
    assert off(x) is x and off.backward(dy) is dy and int(off.step) == 1   # p = 0 counts its calls too
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout2d(2)
    with pytest.raises(ValueError, match="inplace"):
        nn.Dropout2d(0.5, True)
    layer = nn.Dropout2d(0.5, seed=0)
    layer.step = np.array(np.iinfo(np.int64).max)
    with pytest.raises(OverflowError, match="Dropout2d's step counter is at int64's maximum"):
        layer(x)
    assert layer._saved is None


def _dropout2d_net():
    nn.init.manual_seed(21)     # the same weights and dropout seed for every run
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=np.float64), nn.ReLU(), nn.Dropout2d(0.5),
                          nn.Flatten(), nn.Linear(4 * 5 * 5, 3, dtype=np.float64))
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_a_resumed_run_draws_the_masks_of_an_uninterrupted_one(tmp_path):
    rng = np.random.default_rng(22)
    check_a_resumed_run(_dropout2d_net, [(rng.standard_normal((6, 2, 5, 5)), rng.integers(0, 3, 6))
                                         for _ in range(4)], tmp_path)


@needs_emu
def test_layer_on_emu_gives_the_numpy_masks():
    x = np.random.default_rng(11).standard_normal((2, 6, 5, 5)).astype(np.float32)
    dy = np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)
    layers = [nn.Dropout2d(0.5, seed=99).to(be) for be in ("numpy", "emu")]
    for _ in range(2):
        a, b = (layer(x) for layer in layers)
        assert a.tobytes() == b.tobytes()
        assert layers[0].backward(dy).tobytes() == layers[1].backward(dy).tobytes()


@pytest.mark.gpu
@needs_cuda
def test_cuda_mask_is_the_numpy_mask_bit_for_bit():
    import cupy
    rng = np.random.default_rng(13)
    for dtype in (np.float64, np.float32, np.float16):
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(dtype)
            for case in CASES:
                args = (case["p"], case["seed"], case["step"])
                y = quietly(F.dropout2d, cupy.asarray(x), args[0], seed=args[1], step=args[2])
                assert y.get().tobytes() == quietly(F.dropout2d, x, args[0], seed=args[1], step=args[2]).tobytes()
                dx = F.dropout2d_backward(cupy.asarray(x), *args)
                assert dx.get().tobytes() == F.dropout2d_backward(x, *args).tobytes()


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

@pytest.mark.torch
def test_benchmark_models_know_the_layer():
    """A model with nn.Dropout2d gets its shape, its two launches (dropout2d_apply forward and
    backward; none at p = 0) and a PyTorch mirror, the same as ours in eval mode."""
    torch = pytest.importorskip("torch")
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=np.float64), nn.Dropout2d(0.2), nn.Dropout(0.3))
    x = np.random.default_rng(14).standard_normal((2, 2, 7, 6))
    assert [(type(leaf).__name__, shape_out) for leaf, _, shape_out, _ in leaf_layers(model, x.shape)] == [
        ("Conv2d", (2, 3, 5, 4)), ("Dropout2d", (2, 3, 5, 4)), ("Dropout", (2, 3, 5, 4))]
    assert _layer_passes(model[1], 120, 120, 8) == [("dropout2d_apply", 240 * 8)] * 2
    assert _layer_passes(model[2], 120, 120, 8) == [("dropout_apply", 240 * 8)] * 2
    assert _layer_passes(nn.Dropout2d(0.0), 120, 120, 8) == []
    source = backend.kernel_source("dropout")
    assert "\ndropout2d_apply(" in source and "\ndropout_apply(" in source
    mirror = torch_mirror(model, torch)
    assert [type(m).__name__ for m in mirror][1:] == ["Dropout2d", "Dropout"] and mirror[1].p == 0.2
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(mirror.eval()(torch.tensor(x)).numpy(), model(x), rtol=1e-12)
