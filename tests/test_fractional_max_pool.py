"""F.fractional_max_pool2d / 3d, their backward passes and nn.FractionalMaxPool2d / 3d: ATen's window
rule and the scan rules written out as loops, PyTorch CPU given the same samples (values, indices and
autograd's gradients; ties, NaNs, output_size and output_ratio, unbatched inputs), finite differences,
the reach the samples-free backward relies on, refusals before any launch, the drawn samples, and the
kernels on the emulator (guard zones, the race check, every schedule, grids smaller than the work, the
gather's loads: the indices of the outputs within reach only)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.functional import fractional_pool
from cnn_gpu.functional.fractional_pool import REACH, largest_output
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, needs_cuda, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")
POOL = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}
BACKWARD = {2: F.fractional_max_pool2d_backward, 3: F.fractional_max_pool3d_backward}


def draw(rng, rank):
    """x shape, kernel_size, output_size or output_ratio (one of them None; each an int or a tuple):
    windows overlapping (alpha below k), touching and apart, outputs of 1, the largest outputs (alpha 1)."""
    same = rng.random() < 0.2
    kernel = (int(rng.integers(1, 4)),) * rank if same else tuple(int(k) for k in rng.integers(1, 4, rank))
    sizes = tuple(int(rng.integers(k + rank - 2, k + 12)) for k in kernel)   # (volumes: an output below size - k)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + sizes
    kernel_size = kernel[0] if same else kernel
    if rng.random() < 0.3:
        ratio = (float(rng.uniform(0.05, 0.95)),) * rank if rng.random() < 0.3 else \
            tuple(float(rng.uniform(0.05, 0.95)) for _ in sizes)
        if all(1 <= int(s * r) <= largest_output(s, k, rank) for s, r, k in zip(sizes, ratio, kernel)):
            return shape, kernel_size, None, (ratio[0] if len(set(ratio)) == 1 else ratio)
    top = [largest_output(s, k, rank) for s, k in zip(sizes, kernel)]
    out = tuple(int(rng.choice([1, most, rng.integers(1, most + 1)])) for most in top)
    return shape, kernel_size, (out[0] if len(set(out)) == 1 else out), None


def values(rng, shape, dtype):
    """Few distinct values (ties in most windows), now and then NaNs and infinities."""
    x = rng.integers(-3, 4, shape).astype(dtype)
    if rng.random() < 0.3:
        x[rng.random(shape) < 0.15] = np.nan
    if rng.random() < 0.2:
        x[rng.random(shape) < 0.1] = rng.choice([np.inf, -np.inf, -0.0])
    return x


def samples_for(rng, batch, channels, rank, dtype, extra_rows=0):
    """Samples in [0, 1) of `dtype` (PyTorch's take more rows than the batch, and use the first)."""
    return fractional_pool.draw_samples(batch + extra_rows, channels, rank, dtype) if rng.random() < 0.5 else \
        (rng.integers(0, 2**11, (batch + extra_rows, channels, rank)) * 2.0**-11).astype(dtype)


def window_starts(u, size, outputs, k, compute):
    """ATen's generate_intervals written out: int((i + u) * alpha) - int(u * alpha) in `compute`."""
    if outputs == 1:
        return [size - k]
    alpha = compute(size - k) / compute(outputs - 1)
    return [int((compute(i) + compute(u)) * alpha) - int(compute(u) * alpha) for i in range(outputs - 1)] + [size - k]


def loop_reference(x, kernel, out_size, samples):
    """(y, indices): each window scanned in (d, h, w) order, a tap replacing the maximum if strictly
    greater or NaN; 2-D samples are (u_w, u_h), 3-D (u_t, u_h, u_w)."""
    n, c, *in_size = x.shape
    compute = np.float64 if x.dtype == np.float64 else np.float32
    columns = (1, 0) if len(in_size) == 2 else (0, 1, 2)
    y, indices = np.empty((n, c, *out_size), x.dtype), np.empty((n, c, *out_size), np.int32)
    for i, j in itertools.product(range(n), range(c)):
        starts = [window_starts(samples[i, j, column], size, o, k, compute)
                  for column, size, o, k in zip(columns, in_size, out_size, kernel)]
        for out in itertools.product(*map(range, out_size)):
            best, best_index = None, -1
            for tap in itertools.product(*map(range, kernel)):
                position = tuple(s[o] + t for s, o, t in zip(starts, out, tap))
                v = x[(i, j) + position]
                if best is None or v > best or np.isnan(v):
                    best, best_index = v, int(np.ravel_multi_index(position, in_size))
            y[(i, j) + out], indices[(i, j) + out] = best, best_index
    return y, indices


def gradient_reference(dy, indices, x_shape):
    dx = np.zeros(x_shape)
    for where, index in np.ndenumerate(indices):
        dx[where[:2] + np.unravel_index(index, x_shape[2:])] += dy[where]
    return dx


def sizes_of(shape, kernel, output_size, output_ratio):
    rank = len(shape) - 2
    if output_size is not None:
        return output_size if isinstance(output_size, tuple) else (output_size,) * rank
    ratio = output_ratio if isinstance(output_ratio, tuple) else (output_ratio,) * rank
    return tuple(int(s * r) for s, r in zip(shape[2:], ratio))


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("rank", [2, 3])
def test_windows_ties_and_nans_match_the_loops(be, rank):
    rng = np.random.default_rng(1 + rank)
    for case in range(8):
        shape, kernel, output_size, output_ratio = draw(rng, rank)
        x = values(rng, shape, np.float64)
        x.flat[0] = np.nan   # a NaN in every case
        samples = samples_for(rng, shape[0], shape[1], rank, np.float64)
        y, indices = POOL[rank](x, kernel, output_size, output_ratio, True, samples, backend=be)
        kernel3 = kernel if isinstance(kernel, tuple) else (kernel,) * rank
        want_y, want_indices = loop_reference(x, kernel3, sizes_of(shape, kernel3, output_size, output_ratio), samples)
        what = f"{shape} k {kernel} -> {output_size} / {output_ratio}"
        assert y.tobytes() == want_y.tobytes() and indices.dtype == np.int32, what
        np.testing.assert_array_equal(indices, want_indices, err_msg=what)
        dy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(BACKWARD[rank](dy, indices, shape, kernel, backend=be),
                                   gradient_reference(dy, indices, shape), rtol=1e-14, atol=1e-15, err_msg=what)


@pytest.mark.torch
@pytest.mark.parametrize("rank, dtype, count", [(2, np.float64, 60), (2, np.float32, 30), (3, np.float64, 30),
                                                (3, np.float32, 15)])
def test_against_pytorch(rank, dtype, count):
    """Values, indices and autograd's gradients from PyTorch's functional given the same samples (more
    rows than the batch now and then), ties and NaNs included, batched and unbatched."""
    torch = pytest.importorskip("torch")
    torch_pool = {2: torch.nn.functional.fractional_max_pool2d, 3: torch.nn.functional.fractional_max_pool3d}[rank]
    rng = np.random.default_rng(2 + rank)
    for i in range(count):
        shape, kernel, output_size, output_ratio = draw(rng, rank)
        x = values(rng, shape, dtype)
        samples = samples_for(rng, shape[0], shape[1], rank, dtype, extra_rows=int(rng.integers(0, 2)))
        if rng.random() < 0.15:
            x = x[0]
        ratio = output_ratio if output_ratio is None or isinstance(output_ratio, tuple) else (output_ratio,) * rank
        xt = torch.tensor(x, requires_grad=True)
        yt, it = torch_pool(xt, kernel, output_size, ratio, return_indices=True,
                            _random_samples=torch.tensor(samples))
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        what = f"config {i}: {x.shape} k {kernel} -> {output_size} / {output_ratio}"
        y, indices = POOL[rank](x, kernel, output_size, output_ratio, True, samples)
        assert y.tobytes() == yt.detach().numpy().tobytes(), what
        np.testing.assert_array_equal(indices, it.numpy(), err_msg=what)
        assert_close(BACKWARD[rank](dy, indices, x.shape, kernel), xt.grad.numpy(), dtype, what + " dx")
        assert POOL[rank](x, kernel, output_size, output_ratio, False, samples).tobytes() == y.tobytes()


@pytest.mark.torch
@needs_emu
@pytest.mark.parametrize("rank", [2, 3])
def test_float16_windows_are_pytorchs_fp32_ones(rank):
    """float16 windows are computed in FP32 (PyTorch's CUDA kernels' accscalar_t; its CPU kernels round
    each float16 step, so their windows may differ): PyTorch's float32 pooling of the same values and
    samples has the same values and indices, on numpy and emu."""
    torch = pytest.importorskip("torch")
    torch_pool = {2: torch.nn.functional.fractional_max_pool2d, 3: torch.nn.functional.fractional_max_pool3d}[rank]
    rng = np.random.default_rng(4 + rank)
    # and axes of tens of inputs, where an FP16 alpha or product would move windows (PyTorch's CPU half does)
    longer = {2: [((1, 4, 57, 61), 2, (40, 23), None), ((1, 3, 50, 47), 3, None, (0.7, 0.45))],
              3: [((1, 3, 30, 41, 33), 2, (19, 29, 13), None)]}[rank]
    for i in range(12 + len(longer)):
        shape, kernel, output_size, output_ratio = draw(rng, rank) if i < 12 else longer[i - 12]
        x = values(rng, shape, np.float16)
        samples = samples_for(rng, shape[0], shape[1], rank, np.float16)
        ratio = output_ratio if output_ratio is None or isinstance(output_ratio, tuple) else (output_ratio,) * rank
        yt, it = torch_pool(torch.tensor(x.astype(np.float32)), kernel, output_size, ratio, return_indices=True,
                            _random_samples=torch.tensor(samples.astype(np.float32)))
        for be in ("numpy", "emu"):
            y, indices = POOL[rank](x, kernel, output_size, output_ratio, True, samples, backend=be)
            assert y.dtype == np.float16 and y.tobytes() == yt.numpy().astype(np.float16).tobytes(), (i, be)
            np.testing.assert_array_equal(indices, it.numpy(), err_msg=f"{i} {be}")


@pytest.mark.parametrize("rank", [2, 3])
def test_finite_differences_away_from_ties(rank):
    rng = np.random.default_rng(6 + rank)
    shape = (2, 2) + ((9, 7) if rank == 2 else (6, 5, 7))
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)
    samples = rng.random((2, 2, rank))
    largest = tuple(largest_output(size, 1, rank) for size in shape[2:])
    for kernel, out in [(2, (4, 3, 5)[:rank]), (3, (1, 2, 3)[:rank]), (1, largest)]:
        report = check_op(lambda x: POOL[rank](x, kernel, out, _random_samples=samples),
                          lambda dy, x: BACKWARD[rank](dy, POOL[rank](x, kernel, out, None, True, samples)[1],
                                                       x.shape, kernel), [x])
        assert report.max_rel_error < 1e-6, f"{kernel} -> {out}: {report}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_window_starts_stay_within_the_reach_the_backward_visits(dtype):
    """For samples at the ends of [0, 1) and between, every window start lies in [0, size - k] and within
    REACH of floor(i * (size - k) / (outputs - 1)): the outputs the kernels' backward gathers over."""
    rng = np.random.default_rng(8)
    edges = np.array([0, np.finfo(dtype).eps, 0.5, 1 - np.finfo(dtype).epsneg, np.nextafter(dtype(1), dtype(0))],
                     dtype).reshape(1, -1)
    for size in [*range(2, 40), 1000, 65537]:
        for k in {k for k in (1, 2, 3, 7) if k < size}:
            for outputs in {2, size - k + 1, max(2, (size - k) // 2), int(rng.integers(1, size - k + 1)) + 1}:
                u = np.concatenate([edges, rng.random((1, 8)).astype(dtype)], axis=1)
                assert_within_reach(fractional_pool._window_starts(u, size, outputs, k), size, outputs, k)
    size = 2**20 + 1   # a long axis (the float32 kernels take up to 2^22 - 1), alpha just above 1
    assert_within_reach(fractional_pool._window_starts(edges, size, size - 2, 2), size, size - 2, 2)


def assert_within_reach(starts, size, outputs, k):
    floor = np.arange(outputs) * (size - k) // (outputs - 1)
    assert starts.min() >= 0 and starts.max() <= size - k, (size, k, outputs)
    assert np.abs(starts - floor).max() <= fractional_pool.REACH, (size, k, outputs)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_finds_every_index_for_extreme_samples(dtype):
    """Samples next to 0 and 1 on long axes: the kernels' gather (which visits each input's reach,
    not the windows) adds every dy where np.bincount adds it."""
    rng = np.random.default_rng(9)
    below_one = np.nextafter(dtype(1), dtype(0))
    for shape, kernel, out in [((1, 4, 3, 3001), 3, (1, 1400)), ((2, 2, 601, 2), (2, 1), (300, 2)),
                               ((1, 4, 40, 3, 2001), (3, 1, 2), (19, 2, 1000))]:
        rank = len(shape) - 2
        x = rng.standard_normal(shape).astype(dtype)
        samples = np.resize(np.array([0, below_one, 1e-7, 1 - 1e-7], dtype), shape[:2] + (rank,))
        y, indices = POOL[rank](x, kernel, out, None, True, samples, backend="emu")
        dy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(BACKWARD[rank](dy, indices, shape, kernel, backend="emu"),
                     BACKWARD[rank](dy, indices, shape, kernel, backend="numpy"), dtype, str(shape))


def test_samples_drawn_from_the_init_generator():
    """Without _random_samples: (N, C, 2) drawn from nn.init's generator in [0, 1) of x's dtype, the same
    after the same manual_seed, new ones each call; float16's on the 2^-11 grid (never 1.0)."""
    x = np.random.default_rng(10).standard_normal((3, 4, 12, 11))
    runs = []
    for _ in range(2):
        nn.init.manual_seed(5)
        runs.append([F.fractional_max_pool2d(x, 2, output_ratio=0.5, return_indices=True)[1] for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert not np.array_equal(runs[0][0], runs[0][1])
    nn.init.manual_seed(5)
    samples = fractional_pool.draw_samples(3, 4, 2, np.float64)
    np.testing.assert_array_equal(runs[0][0], F.fractional_max_pool2d(x, 2, None, 0.5, True, samples)[1])
    halves = fractional_pool.draw_samples(50, 40, 3, np.float16)
    assert halves.dtype == np.float16 and halves.max() < 1 and halves.min() >= 0
    assert np.all(halves.astype(np.float64) * 2**11 % 1 == 0) and len(np.unique(halves)) > 1000


@needs_emu
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    refuse_launches(monkeypatch)
    x, s = np.ones((2, 3, 9, 7)), np.full((2, 3, 2), 0.5)
    dy, indices = np.ones((2, 3, 4, 3)), np.zeros((2, 3, 4, 3), np.int32)
    for call, error, match in [
        (lambda be: F.fractional_max_pool2d(x, 2, _random_samples=s, backend=be), ValueError,
         "either an output_size or an output_ratio"),
        (lambda be: F.fractional_max_pool2d(x, 3, (8, 3), _random_samples=s, backend=be), ValueError,
         "pool height 3 too large relative to input height 9"),
        # volumes: output + kernel_size - 1 < size, PyTorch's strict 3-D rule (4 + 3 - 1 = 6 passes for images)
        (lambda be: F.fractional_max_pool3d(np.ones((1, 1, 6, 7, 8)), 3, (4, 4, 5), _random_samples=np.full(
            (1, 1, 3), 0.5), backend=be), ValueError, "pool time 3 too large relative to input time 6"),
        (lambda be: F.fractional_max_pool2d(x, 0, (4, 3), _random_samples=s, backend=be), ValueError, "kernel_size"),
        (lambda be: F.fractional_max_pool2d(x, 2, (0, 3), _random_samples=s, backend=be), ValueError, "output_size"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3, 3), _random_samples=s, backend=be), ValueError,
         "output_size"),
        (lambda be: F.fractional_max_pool2d(x, 2, output_ratio=0.05, _random_samples=s, backend=be), ValueError,
         "empty output"),
        (lambda be: F.fractional_max_pool2d(x, 2, output_ratio=(0.5, 0.5, 0.5), _random_samples=s, backend=be),
         ValueError, "output_ratio"),
        (lambda be: F.fractional_max_pool2d(x, 2, output_ratio=float("nan"), _random_samples=s, backend=be),
         ValueError, "output_ratio"),
        (lambda be: F.fractional_max_pool2d(x[0, 0], 2, (4, 3), _random_samples=s, backend=be), ValueError,
         "3-D or 4-D"),
        (lambda be: F.fractional_max_pool2d(x[:, :0], 2, (4, 3), _random_samples=s, backend=be), ValueError,
         "non-empty"),
        (lambda be: F.fractional_max_pool2d(x.astype(np.int32), 2, (4, 3), _random_samples=s, backend=be), TypeError,
         "float"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), "yes", s, backend=be), TypeError, "return_indices"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=s[:1], backend=be), ValueError,
         r"_random_samples must have shape \(N, C, 2\)"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=s[:, :2], backend=be), ValueError,
         "_random_samples"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=np.full((2, 3, 3), 0.5), backend=be),
         ValueError, "_random_samples"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=s.reshape(6, 2), backend=be), ValueError,
         "_random_samples"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=s.astype(np.float32), backend=be),
         TypeError, "same dtype"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=list(s), backend=be), TypeError,
         "_random_samples"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=np.full((2, 3, 2), 1.0), backend=be),
         ValueError, r"in \[0, 1\)"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=np.full((2, 3, 2), np.nan), backend=be),
         ValueError, r"in \[0, 1\)"),
        (lambda be: F.fractional_max_pool2d(x, 2, (4, 3), _random_samples=-s, backend=be), ValueError, r"in \[0, 1\)"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, (2, 3, 5, 7), 3, backend=be), ValueError,
         r"output height 4 must be in \[1, 3\]"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, (2, 4, 9, 7), 2, backend=be), ValueError,
         "batch and channels"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, (2, 3, 0, 7), 2, backend=be), ValueError,
         "non-empty"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, (3, 9, 7), 2, backend=be), ValueError, "dy"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, (2, 3), 2, backend=be), ValueError, "x_shape"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices.astype(np.int64), x.shape, 2, backend=be), TypeError,
         "int32"),
        (lambda be: F.fractional_max_pool2d_backward(dy, indices[..., :1], x.shape, 2, backend=be), ValueError,
         "indices"),
        (lambda be: F.fractional_max_pool2d_backward(dy, list(indices), x.shape, 2, backend=be), TypeError,
         "indices"),
        # output (0, 2)'s windows start at column 5 (floor(2 * 5 / 2)) +- 3: column 0 is out of its reach; an
        # index outside the plane
        (lambda be: F.fractional_max_pool2d_backward(dy, indices, x.shape, 2, backend=be), ValueError,
         r"indices\[0, 0, 0, 2\] = 0 is not a pixel its window can hold"),
        (lambda be: F.fractional_max_pool2d_backward(dy, np.full_like(indices, -1), x.shape, 2, backend=be),
         ValueError, "not a pixel its window can hold"),
        (lambda be: F.fractional_max_pool2d_backward(np.ones((2, 3, 1, 1)), np.full((2, 3, 1, 1), 63, np.int32),
                                                     x.shape, 2, backend=be), ValueError, "not a pixel"),
        # one output an axis: its window is the axis's last k pixels (rows 7, 8 and columns 5, 6), not pixel 0
        (lambda be: F.fractional_max_pool2d_backward(np.ones((2, 3, 1, 1)), np.zeros((2, 3, 1, 1), np.int32),
                                                     x.shape, 2, backend=be), ValueError, "not a pixel its window"),
    ]:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                call(be)


def test_an_index_within_the_reach_gets_its_gradient_everywhere():
    """The checked backward takes any index within its output's reach, not only its window's pixels: dy
    lands there on numpy and emu alike; one past the reach is refused."""
    x = np.random.default_rng(10).standard_normal((1, 1, 9, 7))
    _, indices = F.fractional_max_pool2d(x, 2, (4, 3), None, True, np.full((1, 1, 2), 0.5))
    # output (1, 0): window rows 2 and 3 (int(1.5 * 7/3) - int(0.5 * 7/3)), reach rows -1 .. 6 (floor start 2)
    indices[0, 0, 1, 0] = 6 * 7 + 1
    dy = np.arange(1.0, 13.0).reshape(1, 1, 4, 3)
    for be in ("numpy", "emu") if "emu" in backend.available_backends() else ("numpy",):
        dx = F.fractional_max_pool2d_backward(dy, indices, x.shape, 2, backend=be)
        np.testing.assert_array_equal(dx, gradient_reference(dy, indices, x.shape))
        assert dx[0, 0, 6, 1] == 4, be
        beyond = indices.copy()
        beyond[0, 0, 1, 0] = 7 * 7 + 1
        with pytest.raises(ValueError, match=r"indices\[0, 0, 1, 0\] = 50 is not a pixel"):
            F.fractional_max_pool2d_backward(dy, beyond, x.shape, 2, backend=be)


@pytest.mark.torch
@pytest.mark.parametrize("rank", [2, 3])
def test_layers_match_pytorchs(rank):
    torch = pytest.importorskip("torch")
    ours_type, theirs_type = {2: (nn.FractionalMaxPool2d, torch.nn.FractionalMaxPool2d),
                              3: (nn.FractionalMaxPool3d, torch.nn.FractionalMaxPool3d)}[rank]
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3) + (9, 8, 7)[:rank])
    samples = rng.random((2, 3, rank))
    for args in [dict(kernel_size=2, output_size=4), dict(kernel_size=3, output_ratio=0.5),
                 dict(kernel_size=(2, 1, 3)[:rank], output_size=(5, 7, 3)[:rank], return_indices=True)]:
        theirs = theirs_type(**args, _random_samples=torch.tensor(samples))
        ours = ours_type(**args, _random_samples=samples)
        assert repr(ours) == repr(theirs)
        assert ours.kernel_size == theirs.kernel_size and ours.output_size == theirs.output_size
        assert ours.output_ratio == theirs.output_ratio
        assert list(ours.state_dict()) == list(theirs.state_dict()) == ["_random_samples"]
        got, want = ours(x), theirs(torch.tensor(x))
        if args.get("return_indices"):
            np.testing.assert_array_equal(got[1], want[1].numpy())
            got, want = got[0], want[0]
        np.testing.assert_array_equal(got, want.numpy())
    assert ours_type(2, output_size=3).state_dict() == {}


@pytest.mark.parametrize("rank", [2, 3])
def test_layer_refusals_draws_and_backward(rank):
    layer_type = {2: nn.FractionalMaxPool2d, 3: nn.FractionalMaxPool3d}[rank]
    name = layer_type.__name__
    for args, error, match in [
        (dict(kernel_size=2), ValueError, f"{name} requires specifying either an output size, or a pooling ratio"),
        (dict(kernel_size=2, output_size=3, output_ratio=0.5), ValueError, "only one of output_size and output_ratio"),
        (dict(kernel_size=2, output_ratio=1.0), ValueError, "output_ratio must be between 0 and 1"),
        (dict(kernel_size=2, output_ratio=(0.5,) * (rank - 1) + (0.0,)), ValueError, "between 0 and 1"),
        (dict(kernel_size=0, output_size=3), ValueError, "kernel_size"),
        (dict(kernel_size=2, output_size=3, _random_samples=[0.5]), TypeError, "_random_samples"),
    ]:
        with pytest.raises(error, match=match):
            layer_type(**args)
    x = np.random.default_rng(12).standard_normal((2, 3) + (10, 9, 8)[:rank])
    layer = layer_type(2, output_ratio=0.5)
    y = layer(x)
    dx = layer.backward(np.ones(y.shape))
    assert dx.shape == x.shape and dx.sum() == y.size and layer.output_ratio == (0.5,) * rank
    assert y.shape == (2, 3) + (5, 4, 4)[:rank] and not np.array_equal(y, layer(x))   # new samples each forward
    layer = layer_type(2, output_size=3, return_indices=True)
    y, indices = layer(x[0])   # unbatched
    np.testing.assert_array_equal(layer.backward(np.ones(y.shape)),
                                  BACKWARD[rank](np.ones(y.shape), indices, x[0].shape, 2))


def test_layer_checks_indices_only_where_the_caller_holds_them(monkeypatch):
    x = np.random.default_rng(13).standard_normal((1, 2, 8, 8))
    check, calls = fractional_pool.check_indices, []
    monkeypatch.setattr(fractional_pool, "check_indices", lambda *a: calls.append(1) or check(*a))
    for return_indices, checked in ((False, 0), (True, 1)):
        calls.clear()
        layer = nn.FractionalMaxPool2d(2, 4, return_indices=return_indices)
        layer(x)
        layer.backward(np.ones((1, 2, 4, 4)))
        assert len(calls) == checked


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_emu_sweep_with_guard_zones_and_the_race_check(dtype):
    """float16's neighbouring elements share 4-byte words: the race check is exact to the byte."""
    from cnn_gpu import emu
    rng = np.random.default_rng(14)
    with emu.checking(schedule="random", seed=2, guard=True, race=True):
        for i in range(16):
            rank = 2 + i % 2
            shape, kernel, output_size, output_ratio = draw(rng, rank)
            x = values(rng, shape, dtype)
            samples = samples_for(rng, shape[0], shape[1], rank, dtype)
            args = (kernel, output_size, output_ratio, True, samples)
            y, indices = POOL[rank](x, *args, backend="emu")
            want_y, want_indices = POOL[rank](x, *args, backend="numpy")
            what = f"config {i}: {shape} k {kernel} -> {output_size} / {output_ratio}"
            assert y.dtype == dtype and y.tobytes() == want_y.tobytes(), what
            np.testing.assert_array_equal(indices, want_indices, err_msg=what)
            dy = rng.standard_normal(y.shape).astype(dtype)
            assert_close(BACKWARD[rank](dy, indices, shape, kernel, backend="emu"),
                         BACKWARD[rank](dy, indices, shape, kernel, backend="numpy"), dtype, what + " dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(15)
    for shape, kernel, out in [((2, 3, 9, 11), 2, (4, 5)), ((1, 2, 20, 19), 3, (9, 8)),
                               ((2, 1, 7, 6, 9), 2, (3, 4, 4))]:
        rank = len(shape) - 2
        x = rng.standard_normal(shape).astype(np.float32)
        samples = rng.random(shape[:2] + (rank,)).astype(np.float32)
        dy = rng.standard_normal(shape[:2] + out).astype(np.float32)
        results = []
        for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
            with emu.checking(guard=True, **settings):
                y, indices = POOL[rank](x, kernel, out, None, True, samples, backend="emu")
                results.append((y, indices, BACKWARD[rank](dy, indices, shape, kernel, backend="emu")))
        for a, b in zip(*results):
            assert a.tobytes() == b.tobytes(), f"{shape} -> {out} under {schedule}"


@needs_emu
def test_grids_smaller_than_the_work_cover_every_plane_and_pixel():
    """blockIdx.y strides over more planes than the grid has rows, x threads over a plane larger than
    the grid's threads."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((3, 5, 31, 29))
    samples = rng.random((3, 5, 2))
    y, indices = np.empty((3, 5, 23, 17)), np.empty((3, 5, 23, 17), np.int32)
    sizes_args = (np.int64(15), *map(np.int32, (31, 29, 23, 17, 3, 2)))
    backend.launch("emu", "fractional_pool", x.dtype, "fractional_max_pool_forward", (1, 2), (256,),
                   (x, samples, y, indices, *sizes_args))
    want_y, want_indices = F.fractional_max_pool2d(x, (3, 2), (23, 17), None, True, samples)
    assert y.tobytes() == want_y.tobytes() and indices.tobytes() == want_indices.tobytes()
    dy, dx = rng.standard_normal(y.shape), np.empty_like(x)
    backend.launch("emu", "fractional_pool", x.dtype, "fractional_max_pool_backward", (1, 2), (256,),
                   (dy, indices, dx, *sizes_args))
    assert_close(dx, F.fractional_max_pool2d_backward(dy, indices, x.shape, (3, 2)), np.float64, "dx")


def outputs_within_reach(size, outputs, k):
    """For each position along an axis, how many outputs' windows can hold it for some samples: those whose
    floor(i * (size - k) / (outputs - 1)) lies in [h - k + 1 - REACH, h + REACH] (all of one output)."""
    if outputs == 1:
        return np.ones(size, np.int64)
    floor_starts = np.arange(outputs) * (size - k) // (outputs - 1)
    h = np.arange(size)[:, None]
    return ((floor_starts >= h - k + 1 - REACH) & (floor_starts <= h + REACH)).sum(axis=1)


@needs_emu
@pytest.mark.parametrize("shape, kernel, out", [((2, 3, 13, 11), (3, 2), (5, 4)), ((2, 2, 20, 6), (2, 3), (8, 2)),
                                                ((1, 2, 7, 9, 8), (2, 3, 2), (3, 4, 1))])
def test_backward_reads_the_indices_of_the_outputs_within_reach_only(shape, kernel, out):
    """The gather loads, per input pixel, the index of each output within its reach (the product of the
    axes' counts) and no other, and each output's dy once (its index names one pixel): a looser reach
    would still sum the right gradients, visiting more outputs."""
    from cnn_gpu import emu
    rng = np.random.default_rng(18)
    rank = len(kernel)
    x = rng.standard_normal(shape)
    _, indices = POOL[rank](x, kernel, out, None, True, rng.random(shape[:2] + (rank,)), backend="numpy")
    dy = rng.standard_normal(indices.shape)
    with emu.profiling() as profile:
        dx = BACKWARD[rank](dy, indices, shape, kernel, backend="emu")
    assert_close(dx, BACKWARD[rank](dy, indices, shape, kernel, backend="numpy"), np.float64, "dx")
    lines = (Path(__file__).resolve().parent.parent / "kernels" / "fractional_pool.cu").read_text().splitlines()
    index_line, dy_line = (lines.index(next(line for line in lines if text in line)) + 1
                           for text in ("index_plane[out] == in", "sum += to_acc(dyp[out])"))
    loaded = {site["line"]: site["bytes"] for site in profile.sites if site["op"] == "load"}
    visits = shape[0] * shape[1] * np.prod([outputs_within_reach(size, o, k).sum()
                                            for size, o, k in zip(shape[2:], out, kernel)])
    assert loaded[index_line] == 4 * visits and loaded[dy_line] == 8 * dy.size


@needs_emu
def test_float16_rounds_each_gradient_once():
    """Overlapping windows share a maximum: the float16 gradient sums them in FP32 and rounds once, on
    numpy and emu alike (a float16 sum would round every addition)."""
    x = np.zeros((1, 1, 3, 3), np.float16)
    x[0, 0, 1, 1] = 1   # the maximum of all 4 windows of 2 x 2 taps (outputs 2 x 2: starts 0 and 1)
    dy = np.array([2048, 1, 1, 1], np.float16).reshape(1, 1, 2, 2)   # 2048 + 1 rounds back to 2048 in FP16
    samples = np.full((1, 1, 2), 0.5, np.float16)
    for be in ("numpy", "emu"):
        y, indices = F.fractional_max_pool2d(x, 2, 2, None, True, samples, backend=be)
        assert (indices == 4).all()
        dx = F.fractional_max_pool2d_backward(dy, indices, x.shape, 2, backend=be)
        assert dx.dtype == np.float16 and dx[0, 0, 1, 1] == 2052 and dx.sum() == 2052, be


def test_with_indices_names_and_empty_batches():
    x = np.random.default_rng(17).standard_normal((2, 3, 6, 5, 4))
    samples = np.full((2, 3, 3), 0.25)
    y, indices = F.fractional_max_pool3d_with_indices(x, 2, (3, 3, 2), _random_samples=samples)
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(y, F.fractional_max_pool3d(x, 2, (3, 3, 2), _random_samples=samples))
    y2, indices2 = F.fractional_max_pool2d_with_indices(x[:, :, 0], 2, 3, _random_samples=samples[..., :2])
    assert y2.shape == indices2.shape == (2, 3, 3, 3)
    y, indices = F.fractional_max_pool2d(x[:0, :, 0], 2, 3, None, True, samples[..., :2])   # as PyTorch: empty
    assert y.shape == indices.shape == (0, 3, 3, 3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(18)
    for i in range(30):
        rank = 2 + i % 2
        shape, kernel, output_size, output_ratio = draw(rng, rank)
        x = values(rng, shape, dtype)
        samples = samples_for(rng, shape[0], shape[1], rank, dtype)
        args = (kernel, output_size, output_ratio, True)
        y, indices = POOL[rank](cupy.asarray(x), *args, cupy.asarray(samples))
        want_y, want_indices = POOL[rank](x, *args, samples)
        what = f"config {i}: {shape} k {kernel} -> {output_size} / {output_ratio}"
        assert y.get().tobytes() == want_y.tobytes(), what
        np.testing.assert_array_equal(indices.get(), want_indices, err_msg=what)
        dy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(BACKWARD[rank](cupy.asarray(dy), indices, shape, kernel),
                     BACKWARD[rank](dy, want_indices, shape, kernel), dtype, what + " dx")
        drawn = POOL[rank](cupy.asarray(x), *args)[0]   # samples drawn on the host, moved to the GPU
        assert isinstance(drawn, cupy.ndarray) and drawn.shape == y.shape
