"""Few long strided rows (inner > 1) split over a block's threads: kernels/softmax.cu's _split kernels,
kernels/loss.cu's cross_entropy_split and kernels/distance.cu's normalize and cosine_similarity _split kernels
(rows.cuh for_each_split_row), chosen by _grid.split_row_lanes. The shapes that reach them (F.softmax of
(100000, 4) over dim 0, log_softmax over the channels of (2, 1000, 8, 8), cross entropy of few positions and many
classes, normalize and cosine_similarity over dim 0 of (100000, 4)) against torch and float64 NumPy on numpy and
emu, their NaN/inf rows as torch's, the emulator's guard zones, race check and schedules, the planner's
choice (and the launchers' on both sides of it) and the split walk's coalesced reads."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, emu
from cnn_gpu import functional as F
from cnn_gpu.gpu import _grid
from helpers import assert_cross_entropy_gradients_by_finite_differences, assert_same_bits, record_launches, to_host
from test_softmax import KERNEL_BACKENDS, ROWS, on, reference, reference_backward

needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")
BACKENDS = ["numpy"] + KERNEL_BACKENDS   # cuda: on a GPU, and on tests/cupy_sim (pytest -m gpu)
FD_BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
DTYPES = [np.float64, np.float32, np.float16]
NAMES = ("softmax", "log_softmax")
# (shape, dim): 4 rows of 100000, 128 rows of 1000 (channels of a small map), 10 rows of 300 (inner 5)
SOFTMAX_CASES = [((100000, 4), 0), ((2, 1000, 8, 8), 1), ((2, 300, 5), 1)]
# logits (N, C, d1..dk): few positions, many classes
CE_SHAPES = [(2, 1000, 3, 3), (1, 5000, 4), (3, 700, 2)]
# relative tolerance against float64: float32 sums of 100000 terms in another order than NumPy's, float16
# computed in FP32 and rounded once (one ulp: 2^-11 relative)
RTOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 2 ** -10}


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal(shape)).astype(dtype), rng.standard_normal(shape).astype(dtype)


def _kernels_launched(monkeypatch, call):
    """The kernel names `call()` launches (it runs on emu as usual)."""
    launched = record_launches(monkeypatch)
    call()
    return [kernel for _, kernel in launched]


def test_the_planner_splits_few_rows_and_leaves_many_a_thread_each():
    sms = 132
    # (100000, 4) dim 0: 4 rows of 100000, 4 lanes (a warp reads 8 segments of 4 neighbours: 128 bytes)
    assert _grid.split_row_lanes(4, 100000, 4, 4, sms) == 4
    # (2, 1000, 8, 8) channels: 128 rows, too few blocks at 32 lanes: down to a sector's 8 floats, 4 doubles
    assert _grid.split_row_lanes(128, 1000, 64, 4, sms) == 8
    assert _grid.split_row_lanes(128, 1000, 64, 8, sms) == 4
    assert _grid.split_row_lanes(128, 1000, 64, 2, sms) == 16
    # enough blocks at a warp of lanes: no halving
    assert _grid.split_row_lanes(32 * 2 * sms, 1000, 64, 4, sms) == 32
    # short rows: a segment of at least MIN_SEGMENT elements, else a thread a row
    assert _grid.split_row_lanes(10, 300, 5, 4, sms) == 8
    assert _grid.split_row_lanes(12, 40, 4, 4, sms) == 32
    assert _grid.split_row_lanes(12, 7, 4, 4, sms) == 0
    # many rows (a (8, 21, 128, 128) segmentation map): a thread a row fills the GPU
    assert _grid.split_row_lanes(8 * 128 * 128, 21, 128 * 128, 4, sms) == 0
    most_split = (_grid.SPLIT_BLOCKS_PER_SM * sms - 1) * _grid.THREADS   # rows a block short of 2 blocks an SM
    assert _grid.split_row_lanes(most_split, 1000, 64, 4, sms) == 32
    assert _grid.split_row_lanes(most_split + 1, 1000, 64, 4, sms) == 0


@needs_emu
def test_the_launchers_take_the_planners_kernel(monkeypatch):
    rng = np.random.default_rng(1)
    few, many = rng.standard_normal((2, 300, 5)), rng.standard_normal((2, 3, 4 * 256 * 132 // 2 + 1))
    for x, kind in ((few, "split"), (many, "columns")):
        labels = rng.integers(0, x.shape[1], (x.shape[0], x.shape[2]))
        assert _kernels_launched(monkeypatch, lambda: F.log_softmax_backward(x, F.log_softmax(x, 1, backend="emu"), 1,
                                                                              backend="emu")) == \
            [f"softmax_forward_{kind}", f"softmax_backward_{kind}"]
        cross_entropy = _kernels_launched(monkeypatch, lambda: F.cross_entropy(x, labels, reduction="sum",
                                                                                backend="emu"))
        assert ("cross_entropy_split" if kind == "split" else "cross_entropy_positions") in cross_entropy
        monkeypatch.undo()


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_few_long_rows_match_torch_and_the_float64_reference(be, dtype, torch):
    for shape, dim in SOFTMAX_CASES:
        x, dy = _inputs(shape, dtype, seed=len(shape))
        for name in NAMES:
            y = getattr(F, name)(on(be, x), dim, backend=be)
            dx = to_host(getattr(F, f"{name}_backward")(on(be, dy), y, dim, backend=be))
            y = to_host(y)
            assert y.dtype == dx.dtype == dtype
            xt = torch.tensor(x.astype(np.float64), requires_grad=True)
            yt = getattr(torch, name)(xt, dim)
            yt.backward(torch.tensor(dy.astype(np.float64)))
            want_y, want_dx = reference(name, x, dim), reference_backward(name, dy, y, dim)
            np.testing.assert_allclose(yt.detach().numpy(), want_y, rtol=1e-12, atol=0)   # the reference is torch's
            what = f"{be} {name} {shape} dim {dim}"
            # NumPy's float32 sum along a non-contiguous axis is one running sum (its pairwise summation
            # only runs along the contiguous one): the bound of such a sum of `size` terms, size * eps
            # (1.5e-4 relative measured on (100000, 4) dim 0); the kernels' segments hold 1e-5
            rtol = shape[dim] * 2 ** -23 if be == "numpy" and dtype == np.float32 else RTOL[dtype]
            # y relative to each row's largest |y| (softmax's small values, log_softmax's ~1 ones)
            y_scale = np.abs(want_y).max(axis=dim, keepdims=True)
            assert (np.abs(y - want_y) <= rtol * y_scale).all(), what
            dx_scale = np.abs(dy).max(axis=dim, keepdims=True).astype(np.float64) * (1 + np.abs(y).max())
            assert (np.abs(dx - want_dx) <= 4 * rtol * dx_scale).all(), what + " backward"
            if dtype == np.float64:   # the backward from torch's own y: torch's gradient
                np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=what)


def _cross_entropy_options(shape, dtype, rng):
    """(target, options) sets: class indices (some ignored) with weights and smoothing, probabilities
    with smoothing, plain indices."""
    classes = shape[1]
    labels = rng.integers(0, classes, shape[:1] + shape[2:])
    labels.flat[::5] = -100
    probabilities = rng.random(shape).astype(dtype)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    weight = rng.uniform(0.2, 2.0, classes).astype(dtype)
    return [(labels, dict(weight=weight, label_smoothing=0.1)), (probabilities, dict(label_smoothing=0.2)),
            (labels, {})]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_few_positions_and_many_classes_matches_torch(be, dtype, torch):
    rng = np.random.default_rng(5)
    for shape in CE_SHAPES:
        logits = (3 * rng.standard_normal(shape)).astype(dtype)
        for target, options in _cross_entropy_options(shape, dtype, rng):
            for reduction in ("mean", "none"):
                loss, dlogits = F.cross_entropy(on(be, logits), on(be, target), reduction=reduction, backend=be,
                                                **{k: on(be, v) if isinstance(v, np.ndarray) else v
                                                   for k, v in options.items()})
                logits_t = torch.tensor(logits.astype(np.float64), requires_grad=True)
                torch_options = {k: torch.tensor(v.astype(np.float64)) if isinstance(v, np.ndarray) else v
                                 for k, v in options.items()}
                target_t = torch.tensor(target.astype(np.float64) if target.dtype == dtype else target)
                loss_t = torch.nn.functional.cross_entropy(logits_t, target_t, reduction=reduction, **torch_options)
                loss_t.sum().backward()
                what = f"{be} {shape} {np.dtype(dtype).name} {reduction} {sorted(options)} {target.dtype}"
                rtol = 4 * RTOL[dtype]
                np.testing.assert_allclose(np.asarray(to_host(loss), np.float64), loss_t.detach().numpy(),
                                           rtol=rtol, atol=rtol, err_msg=what)
                grad_t = logits_t.grad.numpy()
                assert dlogits.dtype == dtype
                np.testing.assert_allclose(to_host(dlogits).astype(np.float64), grad_t, rtol=0,
                                           atol=rtol * max(np.abs(grad_t).max(), 1e-3), err_msg=what)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_split_rows_as_torch(be, dtype, torch):
    """test_softmax's rows (all -inf, -inf beside finite values, +inf, NaN, huge values) each repeated
    along 300 elements and laid out as 9 strided rows (dim 0 of (300, 9)): NaN, +inf and -inf where
    torch has them, forward and backward; cross entropy of them with an ignored position and smoothing."""
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(np.repeat(ROWS, 75, axis=1).T.astype(dtype))   # (300, 9)
    assert _grid.split_row_lanes(9, 300, 9, np.dtype(dtype).itemsize, 132)
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(dtype)
    for name in NAMES:
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        getattr(torch, name)(xt, 0).backward(torch.tensor(dy.astype(np.float64)))
        y = getattr(F, name)(on(be, x), 0, backend=be)
        dx = to_host(getattr(F, f"{name}_backward")(on(be, dy), y, 0, backend=be))
        y = to_host(y)
        want_y = getattr(torch, name)(xt, 0).detach().numpy()
        for got, want, what in ((y, want_y, "y"), (dx, xt.grad.numpy(), "dx")):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{be} {name} {what}: NaNs")
            np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{be} {name} {what}")
            np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{be} {name} {what}")
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite].astype(np.float64), want[finite], rtol=2e-3 if dtype == np.float16
                                       else 1e-5, atol=1e-3 if dtype == np.float16 else 1e-6, err_msg=f"{be} {name}")
    logits = x[None]   # (1, 300 classes, 9 positions)
    labels = np.array([[0, 1, 2, 3, -100, 5, 6, 7, 8]])
    with np.errstate(invalid="ignore"):   # the NumPy path's inf - inf of the NaN rows
        loss, dlogits = F.cross_entropy(on(be, logits), on(be, labels), reduction="none", label_smoothing=0.1,
                                        backend=be)
    logits_t = torch.tensor(logits.astype(np.float64), requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels), reduction="none", label_smoothing=0.1)
    loss_t.sum().backward()
    for got, want in ((to_host(loss), loss_t.detach().numpy()), (to_host(dlogits), logits_t.grad.numpy())):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{be} cross entropy NaNs")
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite].astype(np.float64), want[finite], rtol=2e-3 if dtype == np.float16
                                   else 1e-5, atol=1e-3 if dtype == np.float16 else 1e-6, err_msg=f"{be} cross entropy")


@pytest.mark.parametrize("be", FD_BACKENDS)
def test_cross_entropy_gradient_of_split_rows_by_finite_differences(be):
    """float64 central differences of the loss against dlogits, (2, 40, 3) logits (6 positions of 40
    classes: the split kernel), every option at once and each reduction."""
    rng = np.random.default_rng(30)
    logits = 2 * rng.standard_normal((2, 40, 3))
    assert _grid.split_row_lanes(6, 40, 3, 8, 132)
    labels = rng.integers(0, 40, (2, 3))
    labels[0, 1] = 7   # ignore_index=7 drops it
    weight = rng.uniform(0.3, 2.0, 40)
    assert_cross_entropy_gradients_by_finite_differences(logits, labels, 7, weight, rng.random(logits.shape), be)


def _split_runs(dtype):
    """The split kernels' outputs on small split shapes: softmax and log_softmax forward and backward, cross
    entropy with weights, smoothing and an ignored position."""
    outputs = []
    for shape, dim in (((2, 300, 5), 1), ((256, 4), 0), ((2, 80, 40), 1)):
        x, dy = _inputs(shape, dtype, seed=3)
        for name in NAMES:
            y = getattr(F, name)(x, dim, backend="emu")
            outputs += [y, getattr(F, f"{name}_backward")(dy, y, dim, backend="emu")]
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((3, 200, 7)).astype(dtype)
    for target, options in _cross_entropy_options(logits.shape, dtype, rng):
        outputs += list(F.cross_entropy(logits, target, reduction="none", backend="emu", **options))
    return outputs


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_kernels_under_guard_zones_race_check_and_schedules(dtype):
    """Guard zones (an access past any array faults) and the race check (unordered shared or global
    accesses of two threads fail) under the forward, reverse and random schedules: the same bits every
    schedule (fixed-order trees), and the NumPy path's values."""
    runs = []
    for options in (dict(schedule="forward"), dict(schedule="reverse"), dict(schedule="random", seed=7)):
        with emu.checking(guard=True, race=True, **options):
            runs.append(_split_runs(dtype))
    for first, *others in zip(*runs, strict=True):
        for other in others:
            assert_same_bits(first, other)
    x, dy = _inputs((2, 300, 5), dtype, seed=3)
    want = F.softmax(x, 1, backend="numpy")
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(runs[0][0], want, rtol=0, atol=8 * eps)


@needs_emu
def test_split_walks_read_whole_sectors(monkeypatch):
    """The emulator's profile of the split walks' global accesses (float32): a warp's request takes 4 whole
    sectors (128 bytes) on (256, 4) dim 0, where the thread-a-row kernel's 4 busy lanes took 1 sector half
    used, and on the channels of (2, 200, 8, 8) as the thread-a-row kernel's full warps did. (Rows of at most
    256 elements a thread: the profile counts a thread's longer walks between barriers alone.)"""
    from cnn_gpu.gpu import loss as gpu_loss
    from cnn_gpu.gpu import softmax as gpu_softmax

    source = (Path(backend.__file__).parent.parent / "kernels" / "loss.cu").read_text().splitlines()
    body = {name: range(next(i for i, line in enumerate(source, 1) if line.startswith(f"{name}(")),
                        next(i for i, line in enumerate(source, 1) if line.startswith("cross_entropy_target_weights(")))
            for name in ("cross_entropy_split", "cross_entropy_positions")}

    def walked(site):
        """a site of the softmax kernels, or of the cross entropy's walks (rows.cuh's strided_row_max,
        the kernel's loads and dlogits stores: not row_target's label and divisor reads, nor the loss)"""
        if site["kernel"].startswith("softmax") or site["file"].endswith("rows.cuh"):
            return True
        in_kernel = site["file"].endswith("loss.cu") and site["line"] in body.get(site["kernel"], ())
        return in_kernel and (site["op"] == "load" or "dlogits" in source[site["line"] - 1])

    def profile(shape, dim):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with emu.profiling() as prof:
            F.softmax_backward(x, F.softmax(x, dim, backend="emu"), dim, backend="emu")
            logits = x[None] if dim == 0 else x   # (N, C, d1..dk), the classes along the softmax's dim
            F.cross_entropy(logits, np.zeros(logits.shape[:1] + logits.shape[2:], np.int64), backend="emu")
        sites = [s for s in prof.sites if s["space"] == "global" and walked(s)]
        return ({s["kernel"] for s in sites}, sum(s["requests"] for s in sites), sum(s["sectors"] for s in sites),
                sum(s["bytes"] for s in sites))

    for shape, dim in (((256, 4), 0), ((2, 200, 8, 8), 1)):
        kernels, requests, sectors, moved = profile(shape, dim)
        assert kernels == {"softmax_forward_split", "softmax_backward_split", "cross_entropy_split"}, kernels
        assert sectors == 4 * requests and moved >= 31 * sectors, (shape, requests, sectors, moved)
    for module in (gpu_softmax, gpu_loss):
        monkeypatch.setattr(module, "split_row_lanes", lambda *args: 0)
    kernels, requests, sectors, moved = profile((256, 4), 0)
    assert kernels == {"softmax_forward_columns", "softmax_backward_columns", "cross_entropy_positions"}, kernels
    assert sectors <= 1.1 * requests and moved <= 17 * sectors, (requests, sectors, moved)


def test_a_split_row_past_the_segments_int_walk_is_refused_before_any_launch(monkeypatch):
    """cross_entropy_split counts a segment's classes with an int stepping by its segments: few positions
    of more than 2^31 - segments classes, which would overflow it, are refused before any launch or
    allocation (a broadcast view: no memory behind it)."""
    from cnn_gpu.gpu import loss as gpu_loss
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    classes = 2**31 - 100
    logits = np.broadcast_to(np.float32(1), (1, classes, 2))
    assert _grid.split_row_lanes(2, classes, 2, 4, 132) == 2   # 128 segments
    with pytest.raises(ValueError, match=f"a row of {classes} elements"):
        gpu_loss.cross_entropy("emu", logits, np.zeros(2, np.int64), None, None, classes=classes, inner=2,
                               ignore_index=-100, label_smoothing=0.0, reduction="sum")


# kernels/distance.cu's split kernels: (shape, dim) of normalize and cosine_similarity whose strided rows
# split (4 rows of 100000, 128 of 1000, 10 of 300), and the norms of normalize (inf: a NaN-propagating maximum)
DISTANCE_CASES = [((100000, 4), 0), ((2, 1000, 8, 8), 1), ((2, 300, 5), 1)]
NORMS = (2.0, 3.0, math.inf)
DISTANCE_KERNELS = [f"{op}_{direction}" for op in ("normalize", "cosine_similarity")
                    for direction in ("forward", "backward")]


def _distance_inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]


def _distance_results(be, x1, x2, dy, dim):
    """normalize (each of NORMS) and cosine_similarity of x1 and x2 along `dim`, forward and backward, on be
    (cosine's dout: dy's first plane along dim)."""
    dout = np.take(dy, 0, axis=dim)
    x1, x2, dy, dout = (on(be, a) for a in (x1, x2, dy, dout))
    results = []
    for p in NORMS:
        results += [F.normalize(x1, p, dim, backend=be), F.normalize_backward(dy, x1, p, dim, backend=be)]
    results += [F.cosine_similarity(x1, x2, dim, backend=be), *F.cosine_similarity_backward(dout, x1, x2, dim,
                                                                                              backend=be)]
    return [to_host(r) for r in results]


def _assert_near_the_float64_path(got, x1, x2, dy, dim, rtol, what):
    """`got` (_distance_results of x1, x2, dy) within rtol of the NumPy path on their float64 values: the
    normalized values and gradients relative to their row's largest magnitude, cosine (a sum of terms whose
    magnitudes add up to at most 1) absolutely, and within the dtype's smallest subnormal (float16's cosine
    gradients of rows of 100000 fall to its subnormals); NaN where it has NaN."""
    want = _distance_results("numpy", *(a.astype(np.float64) for a in (x1, x2, dy)), dim)
    atol = float(np.finfo(x1.dtype).smallest_subnormal)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == x1.dtype and g.shape == w.shape, (what, i)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{what} result {i}: NaNs")
        scale = 1.0 if w.ndim < x1.ndim else np.abs(np.nan_to_num(w)).max(axis=dim, keepdims=True)
        with np.errstate(invalid="ignore"):
            assert not (np.abs(g.astype(np.float64) - w) > rtol * scale + atol).any(), f"{what} result {i}"


@needs_emu
def test_distance_launches_its_split_kernels_exactly_where_the_planner_splits(monkeypatch):
    """normalize and cosine_similarity launch their _split kernels where split_row_lanes splits the strided
    rows, else a thread a row: on a 1-SM device 256 rows of 32 (one block of 32 rows short of 2 blocks an
    SM) split, 257 rows do not, nor do contiguous rows (dim -1); each within 1e-10 of the float64 NumPy path."""
    from cnn_gpu.gpu import distance as gpu_distance
    monkeypatch.setattr(gpu_distance, "device_sms", lambda be: 1)
    for shape, dim, split in (((32, 256), 0, True), ((32, 257), 0, False), ((256, 32), -1, False)):
        x1, x2, dy = _distance_inputs(shape, np.float64, 2)
        inner = shape[1] if dim == 0 else 1
        assert inner == 1 or bool(_grid.split_row_lanes(shape[1], 32, inner, 8, 1)) == split
        results = []
        launched = _kernels_launched(monkeypatch, lambda: results.extend(_distance_results("emu", x1, x2, dy, dim)))
        want = [kernel + ("_split" if split else "") for kernel in DISTANCE_KERNELS[:2]] * len(NORMS) + \
            [kernel + ("_split" if split else "") for kernel in DISTANCE_KERNELS[2:]]
        assert launched == want, (shape, dim)
        _assert_near_the_float64_path(results, x1, x2, dy, dim % 2, RTOL[np.float64], f"{shape} dim {dim}")
        monkeypatch.undo()
        monkeypatch.setattr(gpu_distance, "device_sms", lambda be: 1)


@pytest.mark.parametrize("be", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_distance_of_few_long_strided_rows_matches_the_float64_numpy_path(be, dtype):
    """The split kernels (the device's SMs: DEFAULT_SMS on emu) against the NumPy path in float64 on the same
    inputs: float64 within 1e-10, float32 1e-5 (its sums of 100000 terms in segments, then a tree), float16 (FP32
    math, each output rounded once) 2^-10. (NumPy's own float32 and float16 paths sum a strided axis in one
    running sum, which strays by up to size * 2^-24: not the oracle here.)"""
    from cnn_gpu.gpu.conv import DEFAULT_SMS
    for shape, dim in DISTANCE_CASES:
        x1, x2, dy = _distance_inputs(shape, dtype, len(shape))
        outer, size = int(np.prod(shape[:dim])), shape[dim]
        inner = x1.size // (outer * size)
        assert _grid.split_row_lanes(outer * inner, size, inner, np.dtype(dtype).itemsize, DEFAULT_SMS)
        _assert_near_the_float64_path(_distance_results(be, x1, x2, dy, dim), x1, x2, dy, dim, RTOL[dtype],
                                      f"{be} {np.dtype(dtype).name} {shape} dim {dim}")


def _distance_split_runs(dtype):
    """_distance_results on small split shapes: (256, 4) dim 0 (64 segments a row), whose row 1 holds a NaN
    (segment 37) and row 2 its largest magnitude twice (elements 5 and 200: segments 5 and 8, the infinity
    norm's tie), and (2, 300, 5) dim 1."""
    x1, x2, dy = _distance_inputs((256, 4), dtype, 8)
    x1[37, 1] = np.nan
    x1[5, 2] = x1[200, 2] = -np.abs(x1[:, 2]).max() - 1
    return [(_distance_results("emu", x1, x2, dy, 0), (x1, x2, dy, 0)),
            (_distance_results("emu", *_distance_inputs((2, 300, 5), dtype, 9), 1),
             (*_distance_inputs((2, 300, 5), dtype, 9), 1))]


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES)
def test_distance_split_kernels_under_guard_zones_race_check_and_schedules(dtype):
    """The split distance kernels under guard zones and the race check, forward, reverse and random
    schedules: the same bits every schedule, and the float64 NumPy path's values (the NaN row NaN
    throughout, the tie's gradient split in halves)."""
    runs = []
    for options in (dict(schedule="forward"), dict(schedule="reverse"), dict(schedule="random", seed=7)):
        with emu.checking(guard=True, race=True, **options):
            runs.append(_distance_split_runs(dtype))
    for (first, inputs), *others in zip(*runs, strict=True):
        for other, _ in others:
            for a, b in zip(first, other, strict=True):
                assert_same_bits(a, b)
        _assert_near_the_float64_path(first, *inputs, RTOL[dtype], f"{np.dtype(dtype).name} {inputs[0].shape}")
