"""F.normalize, F.cosine_similarity, F.pairwise_distance (kernels/distance.cu), their backward passes,
nn.CosineSimilarity / nn.PairwiseDistance and F.one_hot against PyTorch 2.13: values and gradients
(p = 1, 2, 3, 1.5 and inf; every dim; three dtypes, float16 computed in FP32 and rounded once), zero
vectors, the infinity norm's ties and NaN, finite differences in float64, the emulator under guard
zones and every schedule, a grid smaller than the rows, the layers, PyTorch's refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_refused_before_any_launch, needs_cuda, needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
NORMALIZE = [((3, 4, 5), 1, 2.0), ((3, 4, 5), -1, 1.0), ((2, 6), 0, 3.0), ((4, 3, 2), 2, math.inf), ((5,), 0, 1.5)]
COSINE = [((3, 4, 5), 1), ((6, 3), -1), ((2, 3, 4), 0)]
PAIRWISE = [((5, 7), 2.0, False), ((2, 3, 4), 1.0, True), ((6,), math.inf, False), ((4, 5), 3.0, False)]


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def close(got, want, dtype, what):
    """float16: within one FP16 ulp (at least 2^-24 near 0) of PyTorch's float64 result; else
    assert_close's relative bound."""
    assert got.dtype == dtype and got.shape == want.shape, what
    if dtype == np.float16:
        bound = np.maximum(np.spacing(np.abs(want).astype(np.float16)).astype(np.float64), 2.0**-24)
        assert (np.abs(got.astype(np.float64) - want) <= bound).all(), what
    else:
        assert_close(got, want.astype(dtype), dtype, what)


def torch_grads(torch, op, inputs, dout, *args):
    tensors = [torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in inputs]
    out = op(*tensors, *args)
    out.backward(torch.from_numpy(np.asarray(dout, np.float64)))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_values_and_gradients_are_pytorchs(dtype, be, torch):
    tf = torch.nn.functional
    for i, (shape, dim, p) in enumerate(NORMALIZE):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 10 + i)
        want, (want_dx,) = torch_grads(torch, tf.normalize, [x], dy, p, dim)
        close(F.normalize(x, p, dim, backend=be), want, dtype, f"normalize {shape} {p}")
        close(F.normalize_backward(dy, x, p, dim, backend=be), want_dx, dtype, f"normalize dx {shape} {p}")
    for i, (shape, dim) in enumerate(COSINE):
        x1, x2 = draw(shape, dtype, 20 + i), draw(shape, dtype, 30 + i)
        dout = draw(shape[:dim % len(shape)] + shape[dim % len(shape) + 1:], dtype, 40 + i)
        want, want_grads = torch_grads(torch, tf.cosine_similarity, [x1, x2], dout, dim)
        close(F.cosine_similarity(x1, x2, dim, backend=be), want, dtype, f"cosine {shape}")
        for got, w, what in zip(F.cosine_similarity_backward(dout, x1, x2, dim, backend=be), want_grads, "12"):
            close(got, w, dtype, f"cosine dx{what} {shape}")
    for i, (shape, p, keepdim) in enumerate(PAIRWISE):
        x1, x2 = draw(shape, dtype, 50 + i), draw(shape, dtype, 60 + i)
        dout = draw(shape[:-1] + (1,) * keepdim, dtype, 70 + i)
        want, want_grads = torch_grads(torch, tf.pairwise_distance, [x1, x2], dout, p, 1e-6, keepdim)
        close(F.pairwise_distance(x1, x2, p, 1e-6, keepdim, backend=be), want, dtype, f"pairwise {shape} {p}")
        grads = F.pairwise_distance_backward(dout, x1, x2, p, 1e-6, keepdim, backend=be)
        for got, w, what in zip(grads, want_grads, "12"):
            close(got, w, dtype, f"pairwise dx{what} {shape} {p}")


@pytest.mark.parametrize("be", BACKENDS)
def test_zero_vectors_ties_and_nan_are_pytorchs(be, torch):
    """A zero row: normalize gives 0 and dy / eps (no gradient through the clamp, as for a row whose
    norm is below eps), cosine 0 with the
    norm's gradient 0; the infinity norm splits its gradient over the tied maxima, and a NaN takes
    the gradient as PyTorch's mask does; identical inputs' distance is ||eps||."""
    tf = torch.nn.functional
    x = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [2.0, np.nan, -2.0], [1e-13, -2e-13, 0.0]])
    dy = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1], [1.0, 1.0, 1.0], [0.5, 1.0, -1.0]])
    for p in (2.0, 1.0, math.inf, 0.5, 1.5):   # p < 1: a zero element's |v|^(p-1) masked to 0, as PyTorch's
        want, (want_dx,) = torch_grads(torch, tf.normalize, [x], dy, p, 1)
        got, got_dx = F.normalize(x, p, 1, backend=be), F.normalize_backward(dy, x, p, 1, backend=be)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0, err_msg=str(p))
        np.testing.assert_allclose(got_dx, want_dx, rtol=1e-14, atol=0, err_msg=str(p))
    other = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]])
    want, want_grads = torch_grads(torch, tf.cosine_similarity, [x[:2], other[:2]], np.ones(2), 1)
    np.testing.assert_allclose(F.cosine_similarity(x[:2], other[:2], backend=be), want, rtol=1e-14)
    for got, w in zip(F.cosine_similarity_backward(np.ones(2), x[:2], other[:2], backend=be), want_grads):
        np.testing.assert_allclose(got, w, rtol=1e-14, atol=1e-300)
    same = draw((3, 4), np.float64, 1)
    want, want_grads = torch_grads(torch, tf.pairwise_distance, [same, same], np.ones(3))
    np.testing.assert_allclose(F.pairwise_distance(same, same, backend=be), want, rtol=1e-14)
    for got, w in zip(F.pairwise_distance_backward(np.ones(3), same, same, backend=be), want_grads):
        np.testing.assert_allclose(got, w, rtol=1e-14)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_match_numpy(dtype):
    for i, (shape, dim, p) in enumerate(NORMALIZE):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 10 + i)
        assert_close(F.normalize(x, p, dim, backend="emu"), F.normalize(x, p, dim), dtype, f"{shape} {p}")
        assert_close(F.normalize_backward(dy, x, p, dim, backend="emu"), F.normalize_backward(dy, x, p, dim), dtype,
                     f"{shape} {p}")
    for i, (shape, p, keepdim) in enumerate(PAIRWISE):
        x1, x2 = draw(shape, dtype, 50 + i), draw(shape, dtype, 60 + i)
        dout = draw(shape[:-1] + (1,) * keepdim, dtype, 70 + i)
        for got, want in zip(F.pairwise_distance_backward(dout, x1, x2, p, 1e-6, keepdim, backend="emu"),
                             F.pairwise_distance_backward(dout, x1, x2, p, 1e-6, keepdim)):
            assert_close(got, want, dtype, f"{shape} {p}")


def test_gradients_match_finite_differences():
    for i, (shape, dim, p) in enumerate(NORMALIZE[:3] + NORMALIZE[4:]):
        x = np.random.default_rng(i).standard_normal(shape)
        report = check_op(lambda a: F.normalize(a, p, dim), lambda dy, a: F.normalize_backward(dy, a, p, dim), [x])
        assert report.max_rel_error < 1e-6, (shape, p, report)
    for shape, dim in COSINE:
        x1, x2 = (np.random.default_rng(s).standard_normal(shape) for s in (1, 2))
        report = check_op(lambda a, b: F.cosine_similarity(a, b, dim),
                          lambda g, a, b: F.cosine_similarity_backward(g, a, b, dim), [x1, x2])
        assert report.max_rel_error < 1e-6, (shape, report)
    for shape, p, keepdim in PAIRWISE[:2] + PAIRWISE[3:]:
        x1, x2 = (np.random.default_rng(s).standard_normal(shape) for s in (3, 4))
        report = check_op(lambda a, b: F.pairwise_distance(a, b, p, 1e-6, keepdim),
                          lambda g, a, b: F.pairwise_distance_backward(g, a, b, p, 1e-6, keepdim), [x1, x2])
        assert report.max_rel_error < 1e-6, (shape, p, report)


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emulated_kernels_are_bit_identical_under_schedules_and_guard_zones(schedule):
    from cnn_gpu import emu
    x1, x2 = draw((3, 4, 5), np.float32, 1), draw((3, 4, 5), np.float32, 2)
    dout = draw((3, 5), np.float32, 3)
    results = []
    for options in (dict(schedule="forward"), dict(schedule=schedule, seed=5)):
        with emu.checking(guard=True, **options):
            results.append((F.normalize(x1, 3.0, backend="emu"), F.normalize_backward(x2, x1, 3.0, backend="emu"),
                            F.cosine_similarity(x1, x2, backend="emu"),
                            *F.cosine_similarity_backward(dout, x1, x2, backend="emu"),
                            F.pairwise_distance(x1, x2, math.inf, backend="emu"),
                            *F.pairwise_distance_backward(x1[..., 0], x1, x2, math.inf, backend="emu")))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes(), schedule


def long_rows():
    """Rows along the last dim: of 6 (8 lanes a row, 32 rows a block: the groups past row 37 walk
    nothing) and longer than a warp (40 and 300: 64 and 256 lanes, some taking two elements); each
    size's rows for the infinity norm hold a NaN (past the first warp in the long rows) and a tie."""
    x1, x2, dy = draw((3, 300), np.float64, 20), draw((3, 300), np.float64, 21), draw((3, 300), np.float64, 22)
    x1[1, 200] = np.nan
    x1[2, 7] = x1[2, 250] = -np.abs(x1[2]).max() - 1
    middle = [a[:, :40].copy() for a in (x1, x2, dy)]
    middle[0][1, 35] = np.nan
    middle[0][2, 33] = -middle[0][2, 7]   # the row's maximum magnitude twice, in two warps
    short = [draw((37, 6), np.float64, seed) for seed in (23, 24, 25)]
    short[0][30, 4] = np.nan
    short[0][31, 1] = short[0][31, 5] = np.abs(short[0][31]).max() + 1
    return [short, middle, (x1, x2, dy)]


def long_row_results(x1, x2, dy, be):
    dout = dy[:, 0].copy()
    results = []
    for p in (2.0, 3.0, math.inf):
        results += [F.normalize(x1, p, -1, backend=be), F.normalize_backward(dy, x1, p, -1, backend=be),
                    F.pairwise_distance(x1, x2, p, backend=be),
                    *F.pairwise_distance_backward(dout, x1, x2, p, backend=be)]
    return results + [F.cosine_similarity(x1, x2, -1, backend=be),
                      *F.cosine_similarity_backward(dout, x1, x2, -1, backend=be)]


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_contiguous_rows_by_lane_groups_are_the_numpy_paths_under_the_race_check(schedule):
    """Rows along the last dim are reduced by a group of lanes a row (rows.cuh's for_each_row): float64
    within 1e-12 of the NumPy path (the infinity norm's NaN and ties included), guard zones and the race
    check on group_reduce's scratch, and bit for bit the same under the forward and this schedule."""
    from cnn_gpu import emu
    for x1, x2, dy in long_rows():
        runs = []
        for options in (dict(schedule="forward"), dict(schedule=schedule, seed=7)):
            with emu.checking(guard=True, race=True, **options):
                runs.append(long_row_results(x1, x2, dy, "emu"))
        for got, again, want in zip(*runs, long_row_results(x1, x2, dy, "numpy"), strict=True):
            assert got.tobytes() == again.tobytes(), (x1.shape, schedule)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=str(x1.shape))


@needs_emu
@pytest.mark.parametrize("size", [256, 8])
def test_contiguous_float32_rows_are_read_and_written_coalesced(size):
    """(64, size) float32 rows along the last dim: a request of a group's loads or stores takes a sector
    an 8-lane group, at most 4 a warp (a thread a row took 32, one a lane), and a warp takes 32 / size
    rows of 8 elements, its lanes all loading (at least half the bytes of full warps' requests; a block
    a row left 24 of them idle)."""
    from cnn_gpu import emu
    x1, x2 = draw((64, size), np.float32, 30), draw((64, size), np.float32, 31)
    dout = draw((64,), np.float32, 32)
    with emu.profiling() as prof:
        F.normalize(x1, 2.0, 1, backend="emu")
        F.normalize_backward(x2, x1, 3.0, 1, backend="emu")
        F.cosine_similarity(x1, x2, 1, backend="emu")
        F.cosine_similarity_backward(dout, x1, x2, 1, backend="emu")
        F.pairwise_distance(x1, x2, math.inf, backend="emu")
        F.pairwise_distance_backward(dout, x1, x2, 1.5, backend="emu")
    assert_rows_coalesced(prof, {f"{op}_{direction}" for op in ("normalize", "cosine_similarity", "pairwise_distance")
                                 for direction in ("forward", "backward")})


def assert_rows_coalesced(prof, kernels):
    """Every global access of `kernels` at most 4 sectors a request, and each kernel's loads at least
    64 bytes a request (16 float32 lanes). (Shared with test_losses_margin.)"""
    sites = [site for site in prof.sites if site["space"] == "global"]
    assert {site["kernel"] for site in sites} == kernels
    for site in sites:
        assert site["sectors"] <= 4 * site["requests"], site
    for kernel in kernels:
        loads = [site for site in sites if site["kernel"] == kernel and site["op"] == "load"]
        assert sum(site["bytes"] for site in loads) >= 64 * sum(site["requests"] for site in loads), (kernel, loads)


@needs_emu
def test_a_grid_smaller_than_the_rows_covers_every_row():
    x, dy = draw((7, 3, 100), np.float64, 4), draw((7, 3, 100), np.float64, 5)
    y, dx = np.empty_like(x), np.empty_like(x)
    rows = (np.int64(700), np.int32(3), np.int64(100), np.float64(2.0), np.float64(1e-12))
    backend.launch("emu", "distance", x.dtype, "normalize_forward", (1,), (256,), (x, y, *rows))
    backend.launch("emu", "distance", x.dtype, "normalize_backward", (1,), (256,), (dy, x, dx, *rows))
    assert_close(y, F.normalize(x), np.float64, "y")
    assert_close(dx, F.normalize_backward(dy, x), np.float64, "dx")


@needs_emu
@pytest.mark.parametrize("size", [6, 300])
def test_a_grid_smaller_than_the_contiguous_rows_covers_every_row(size):
    """One block over 100 rows along the last dim: 32 rows of 6 a round (the last round's 4 rows leave
    28 groups without one) or one row of 300 a round."""
    from cnn_gpu import emu
    x, dy = draw((100, size), np.float64, 6), draw((100, size), np.float64, 7)
    y, dx = np.empty_like(x), np.empty_like(x)
    rows = (np.int64(100), np.int32(size), np.int64(1), np.float64(3.0), np.float64(1e-12))
    with emu.checking(guard=True, race=True, schedule="reverse"):
        backend.launch("emu", "distance", x.dtype, "normalize_forward", (1,), (256,), (x, y, *rows))
        backend.launch("emu", "distance", x.dtype, "normalize_backward", (1,), (256,), (dy, x, dx, *rows))
    np.testing.assert_allclose(y, F.normalize(x, 3.0, -1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, F.normalize_backward(dy, x, 3.0, -1), rtol=1e-12, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_replay_computes_new_inputs(dtype):
    """Recorded (cnn_gpu.replay), the inputs overwritten and replayed: what the ops compute eagerly on
    the new inputs, bit for bit."""
    from test_replay_ops import assert_replay_is_eager

    def run(a):
        x1, x2, dout = a["x1"], a["x2"], a["dout"]
        dx1, dx2 = F.cosine_similarity_backward(dout, x1, x2, 1, backend="emu")
        dd1, dd2 = F.pairwise_distance_backward(dout, x1, x2, 3.0, backend="emu")
        return dict(y=F.normalize(x1, 2.0, 1, backend="emu"), dx=F.normalize_backward(x2, x1, 2.0, 1, backend="emu"),
                    cos=F.cosine_similarity(x1, x2, 1, backend="emu"), dx1=dx1, dx2=dx2,
                    distance=F.pairwise_distance(x1, x2, 3.0, backend="emu"), dd1=dd1, dd2=dd2)
    # (3, 5) rows: cosine along dim 1 and the distance along the last dim both give (3,)
    inputs = [dict(x1=draw((3, 5), dtype, seed), x2=draw((3, 5), dtype, seed + 1), dout=draw((3,), dtype, seed + 2))
              for seed in (1, 4)]
    assert_replay_is_eager(run, *inputs, "distance")


@needs_emu
def test_the_layers(torch):
    x1, x2 = draw((4, 6, 3), np.float32, 6), draw((4, 6, 3), np.float32, 7)
    layers = ((nn.CosineSimilarity(dim=2, eps=1e-6), torch.nn.CosineSimilarity(2, 1e-6), (4, 6)),
              (nn.PairwiseDistance(1.0, keepdim=True), torch.nn.PairwiseDistance(1.0, keepdim=True), (4, 6, 1)))
    for ours, theirs, dout_shape in layers:
        assert repr(ours) == repr(theirs)
        ours.to("emu")
        out = ours(x1, x2)
        dout = draw(dout_shape, np.float32, 8)
        dx1, dx2 = ours.backward(dout)
        want, (want1, want2) = torch_grads(torch, theirs, [x1, x2], dout)
        for got, w, what in ((out, want, "out"), (dx1, want1, "dx1"), (dx2, want2, "dx2")):
            assert_close(got, w.astype(np.float32), np.float32, f"{ours} {what}")


def test_one_hot_is_pytorchs(torch):
    labels = np.array([[0, 3], [2, 1], [3, 3]], np.int64)
    for num_classes in (-1, 4, 6):
        got = F.one_hot(labels, num_classes)
        want = torch.nn.functional.one_hot(torch.from_numpy(labels), num_classes).numpy()
        assert got.dtype == np.int64 and np.array_equal(got, want), num_classes
    assert F.one_hot(np.zeros((0, 2), np.int64), 3).shape == (0, 2, 3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.normalize(np.ones((2, 3)), 2.0, 2), IndexError, r"range of \[-2, 1\], but got 2"),
    (lambda: F.normalize(np.ones((2, 3)), 0.0), ValueError, "p must be a finite number > 0 or inf"),
    (lambda: F.normalize(np.ones(()), 2.0, 0), ValueError, "at least one dimension"),
    (lambda: F.normalize_backward(np.ones((2, 4)), np.ones((2, 3))), ValueError, "x and dy must have the same shape"),
    (lambda: F.cosine_similarity(np.ones((2, 3)), np.ones((1, 3))), ValueError, "broadcasting is not supported"),
    (lambda: F.cosine_similarity(np.ones((2, 3)), np.ones((2, 3), np.float32)), TypeError, "x2 has dtype float32"),
    (lambda: F.cosine_similarity_backward(np.ones(3), np.ones((2, 3)), np.ones((2, 3))), ValueError,
     r"dout must have shape \(2,\)"),
    (lambda: F.pairwise_distance(np.ones((2, 3)), np.ones((2, 3)), -1.0), ValueError, "p must be"),
    (lambda: F.pairwise_distance(np.ones((2, 3)), np.ones((2, 3)), keepdim=1), TypeError, "keepdim must be True"),
    (lambda: F.pairwise_distance_backward(np.ones(2), np.ones((2, 3)), np.ones((2, 3)), keepdim=True), ValueError,
     r"dout must have shape \(2, 1\)"),
    (lambda: F.one_hot(np.array([0, -1])), ValueError, "Class values must be non-negative."),
    (lambda: F.one_hot(np.array([0, 4]), 4), ValueError, "Class values must be smaller than num_classes."),
    (lambda: F.one_hot(np.array([0.0, 1.0])), TypeError, "LongTensor"),
    (lambda: F.one_hot(np.zeros(0, np.int64)), ValueError, "Can not infer total number of classes from empty tensor"),
])
def test_pytorchs_refusals_before_any_launch(call, error, message, monkeypatch):
    assert_refused_before_any_launch(monkeypatch, call, error, message)


def test_a_row_past_the_kernels_int_walk_is_refused_before_any_launch(monkeypatch):
    """The kernels walk a contiguous row with an int stepping by its 256 lanes: a row of more than
    2^31 - 256 elements, which would overflow it, is refused (a broadcast view: no memory behind
    it); 2^31 - 256 is walked, and a thread a row (inner > 1) steps by 1."""
    from cnn_gpu.gpu import _grid
    from cnn_gpu.gpu import distance as gpu_distance
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    assert _grid.row_walk_blocks(1, 2**31 - 256) == 1 and _grid.row_walk_blocks(1, 2**31 - 1, False) == 1
    with pytest.raises(ValueError, match="32-bit ints 256 apart: a row of 2147483393 elements"):
        _grid.row_walk_blocks(1, 2**31 - 255)
    x = np.broadcast_to(np.float32(1), (1, 2**31 - 255))
    with pytest.raises(ValueError, match="a row of 2147483393 elements"):
        gpu_distance.pairwise_distance("emu", x, x, 1, 2**31 - 255, 2.0, 1e-6)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    for i, (shape, dim, p) in enumerate(NORMALIZE):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 10 + i)
        close(F.normalize(cupy.asarray(x), p, dim).get(), F.normalize(x, p, dim).astype(np.float64), dtype, "y")
        close(F.normalize_backward(cupy.asarray(dy), cupy.asarray(x), p, dim).get(),
              F.normalize_backward(dy, x, p, dim).astype(np.float64), dtype, "dx")
    for i, (shape, p, keepdim) in enumerate(PAIRWISE):
        x1, x2 = draw(shape, dtype, 50 + i), draw(shape, dtype, 60 + i)
        dout = draw(shape[:-1] + (1,) * keepdim, dtype, 70 + i)
        on_gpu = [cupy.asarray(a) for a in (dout, x1, x2)]
        got = F.pairwise_distance(*on_gpu[1:], p, 1e-6, keepdim).get()
        close(got, F.pairwise_distance(x1, x2, p, 1e-6, keepdim).astype(np.float64), dtype, "distance")
        for got, want in zip(F.pairwise_distance_backward(*on_gpu, p, 1e-6, keepdim),
                             F.pairwise_distance_backward(dout, x1, x2, p, 1e-6, keepdim)):
            close(got.get(), want.astype(np.float64), dtype, "distance dx")
    x1, x2, dout = draw((3, 4, 5), dtype, 1), draw((3, 4, 5), dtype, 2), draw((3, 5), dtype, 3)
    on_gpu = [cupy.asarray(a) for a in (dout, x1, x2)]
    close(F.cosine_similarity(*on_gpu[1:]).get(), F.cosine_similarity(x1, x2).astype(np.float64), dtype, "cosine")
    for got, want in zip(F.cosine_similarity_backward(*on_gpu), F.cosine_similarity_backward(dout, x1, x2)):
        close(got.get(), want.astype(np.float64), dtype, "cosine dx")
    labels = np.array([[0, 3], [2, 1]], np.int64)
    np.testing.assert_array_equal(F.one_hot(cupy.asarray(labels), 5).get(), F.one_hot(labels, 5))
