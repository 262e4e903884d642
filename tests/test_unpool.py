"""F.max_unpool1d/2d, their backward and nn.MaxUnpool1d/2d: a loop reference of the scatter and its
duplicate rule, PyTorch 2.13 CPU (values, gradients, sizes and refusals), finite differences, the
MaxPool2d(return_indices) -> MaxUnpool2d round trip of PyTorch's docs, and kernels/unpool.cu on the
emulator (guard zones, the race check, every schedule, grids smaller than the work)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_same_bits, needs_cuda, needs_emu, refuse_kernel_runs, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]


def draw(rng):
    """(x shape, kernel, stride, padding, output_size) of a 2-D unpool: the sizes MaxPool2d gives
    and output sizes up to a stride from the default."""
    kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    padding = (int(rng.integers(0, kernel[0] // 2 + 1)), int(rng.integers(0, kernel[1] // 2 + 1)))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    default = [(s - 1) * st + k - 2 * p for s, k, st, p in zip(shape[2:], kernel, stride, padding)]
    output_size = None
    if rng.random() < 0.5:
        output_size = tuple(d + int(rng.integers(-st + 1, st)) for d, st in zip(default, stride))
    return shape, kernel, stride, padding, output_size


def out_sizes(shape, kernel, stride, padding, output_size):
    if output_size is not None:
        return tuple(output_size[-2:])
    return tuple((s - 1) * st + k - 2 * p for s, k, st, p in zip(shape[-2:], kernel, stride, padding))


def random_indices(rng, shape, plane, duplicates):
    """Indices in [0, plane) of x's shape: with `duplicates`, few distinct ones (many inputs name one
    position); without, distinct within each plane where the plane has room."""
    pixels = shape[-1] * shape[-2]
    if duplicates or plane < pixels:
        return rng.integers(0, min(plane, 3) if duplicates else plane, shape).astype(np.int32)
    return np.stack([rng.permutation(plane)[:pixels] for _ in range(int(np.prod(shape[:-2])))]).reshape(
        shape).astype(np.int32)


def cases(rng, count, dtype):
    """(i, x, indices, (kernel, stride, padding, output_size), output plane sizes) of drawn 2-D
    unpools: duplicates in every other one, some -1 indices, int64 indices in every third."""
    for i in range(count):
        shape, kernel, stride, padding, output_size = draw(rng)
        sizes = out_sizes(shape, kernel, stride, padding, output_size)
        if min(sizes) <= 0:
            continue
        x = rng.standard_normal(shape).astype(dtype)
        indices = random_indices(rng, shape, sizes[0] * sizes[1], duplicates=i % 2 == 0)
        indices[rng.random(shape) < 0.1] = -1
        yield i, x, indices.astype(np.int64) if i % 3 == 0 else indices, (kernel, stride, padding, output_size), sizes


def loop_reference(x, indices, out_h, out_w):
    """Every input of a plane written in scan order: the last naming a position wins; -1 nowhere."""
    n, c = x.shape[:2]
    y = np.zeros((n, c, out_h * out_w), x.dtype)
    for (i, j, h, w), index in np.ndenumerate(indices):
        if index >= 0:
            y[i, j, index] = x[i, j, h, w]
    return y.reshape(n, c, out_h, out_w)


def gradient_reference(dy, indices):
    flat = dy.reshape(dy.shape[0], dy.shape[1], -1)
    dx = np.zeros(indices.shape, dy.dtype)
    for (i, j, h, w), index in np.ndenumerate(indices):
        dx[i, j, h, w] = flat[i, j, index] if index >= 0 else 0
    return dx


@pytest.mark.parametrize("be", BACKENDS)
def test_scatter_duplicates_and_gather_match_the_loops(be):
    rng = np.random.default_rng(1)
    for i, x, indices, args, sizes in cases(rng, 30, np.float64):
        y = F.max_unpool2d(x, indices, *args, backend=be)
        assert_same_bits(y, loop_reference(x, indices, *sizes), f"config {i}")
        dy = rng.standard_normal(y.shape)
        assert_same_bits(F.max_unpool2d_backward(dy, indices, backend=be), gradient_reference(dy, indices),
                         f"config {i} dx")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("be", BACKENDS)
def test_against_pytorch(be, dtype):
    """Indices max_pool2d and max_pool1d give (no duplicates where windows do not overlap: PyTorch's
    threaded CPU loop picks any duplicate), batched and unbatched, int32 and int64 indices."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for i in range(25 if be == "numpy" else 10):
        shape, kernel, stride, padding, output_size = draw(rng)
        stride = tuple(max(s, k) for s, k in zip(stride, kernel))   # disjoint windows
        source = (shape[0], shape[1], shape[2] * stride[0] + kernel[0], shape[3] * stride[1] + kernel[1])
        x, indices = F.max_pool2d(rng.standard_normal(source).astype(dtype), kernel, stride, padding)
        # the pooled input's size: within a stride of the default, which can fall short of the indices
        sizes = source[2:] if output_size is None else source
        if i % 3 == 0:
            x, indices = x[0], indices[0]
        if i % 2:
            indices = indices.astype(np.int64)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.max_unpool2d(xt, torch.tensor(indices).long(), kernel, stride, padding, sizes)
        dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
        yt.backward(torch.tensor(dy))
        y = F.max_unpool2d(x, indices, kernel, stride, padding, sizes, backend=be)
        assert_same_bits(y, yt.detach().numpy(), f"config {i}")
        assert_same_bits(F.max_unpool2d_backward(dy, indices, backend=be), xt.grad.numpy(), f"config {i} dx")
        # 1-D: a signal's max_pool1d indices
        signal_shape = (source[1], source[3]) if i % 3 == 0 else (source[0], source[1], source[3])
        signal, signal_indices = F.max_pool1d(rng.standard_normal(signal_shape).astype(dtype), kernel[1], stride[1],
                                              padding[1])
        if i % 2:
            signal_indices = signal_indices.astype(np.int64)
        yt = torch.nn.functional.max_unpool1d(torch.tensor(signal), torch.tensor(signal_indices).long(), kernel[1],
                                              stride[1], padding[1], signal_shape[-1:])
        assert_same_bits(F.max_unpool1d(signal, signal_indices, kernel[1], stride[1], padding[1], signal_shape[-1:],
                                        backend=be), yt.numpy(), f"config {i} 1-D")


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_duplicates_take_pytorchs_serial_rule(be):
    """On one thread (this module's fixture) PyTorch's CPU loop is serial: the last input naming a
    position wins, the rule every backend here keeps on any thread count."""
    torch = pytest.importorskip("torch")
    assert torch.get_num_threads() == 1
    rng = np.random.default_rng(10)
    for i, x, indices, args, _ in cases(rng, 16, np.float64):
        indices = np.maximum(indices, 0)   # PyTorch refuses -1
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.max_unpool2d(xt, torch.tensor(indices).long(), *args)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        assert_same_bits(F.max_unpool2d(x, indices, *args, backend=be), yt.detach().numpy(), f"config {i}")
        assert_same_bits(F.max_unpool2d_backward(dy, indices, backend=be), xt.grad.numpy(), f"config {i} dx")


@pytest.mark.torch
def test_output_sizes_and_refusals_match_pytorchs():
    """output_size's forms and its checks (PyTorch's messages), and the index range."""
    torch = pytest.importorskip("torch")
    x, indices = np.ones((1, 2, 2, 3)), np.zeros((1, 2, 2, 3), np.int64)
    tx, ti = torch.tensor(x), torch.tensor(indices)
    for kernel, stride, padding, size in [(2, None, 0, None), (3, 2, 1, None), (2, 2, 0, (5, 7)), (2, 2, 0, [3, 5]),
                                          (2, 2, 0, (1, 2, 4, 6)), ((2, 3), (1, 2), (1, 1), None)]:
        want = torch.nn.functional.max_unpool2d(tx, ti, kernel, stride, padding, size).shape
        assert F.max_unpool2d(x, indices, kernel, stride, padding, size).shape == tuple(want), (kernel, size)
    for size in [(7, 6), (4, 8), (1, 2, 3), (4, -2)]:
        with pytest.raises(ValueError) as theirs:
            torch.nn.functional.max_unpool2d(tx, ti, 2, output_size=size)
        with pytest.raises(ValueError) as ours:
            F.max_unpool2d(x, indices, 2, output_size=size)
        assert str(ours.value) == str(theirs.value), size
    with pytest.raises(ValueError) as theirs:
        torch.nn.functional.max_unpool2d(tx, ti, 2, padding=3)
    with pytest.raises(ValueError) as ours:
        F.max_unpool2d(x, indices, 2, padding=3)
    assert str(ours.value) == str(theirs.value)
    for bad in (24, -2):
        wrong = indices.copy()
        wrong[0, 1, 1, 2] = bad
        with pytest.raises(RuntimeError) as theirs:
            torch.nn.functional.max_unpool2d(tx, torch.tensor(wrong), 2)
        with pytest.raises(ValueError) as ours:
            F.max_unpool2d(x, wrong, 2)
        assert str(ours.value).startswith(str(theirs.value)), (str(ours.value), str(theirs.value))


def test_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 3, 4))
    indices = random_indices(rng, x.shape, 8 * 9, duplicates=False)
    indices[0, 0, 0, 0] = -1
    report = check_op(lambda x: F.max_unpool2d(x, indices, (3, 3), 3, 1, (8, 9)),
                      lambda dy, x: F.max_unpool2d_backward(dy, indices), [x])
    assert report.max_rel_error < 1e-8, report
    signal, signal_indices = x[0], random_indices(rng, (3, 1, 12), 32, duplicates=False)[:, 0]
    report = check_op(lambda s: F.max_unpool1d(s, signal_indices, 3, 3, 2),
                      lambda dy, s: F.max_unpool1d_backward(dy, signal_indices), [signal.reshape(3, 12)])
    assert report.max_rel_error < 1e-8, report


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_an_empty_batch_gives_an_empty_batch_as_pytorchs(be, monkeypatch):
    """No kernel runs (backend.launch takes a grid of no blocks as nothing to launch)."""
    torch = pytest.importorskip("torch")
    refuse_kernel_runs(monkeypatch)
    x, indices = np.ones((0, 2, 2, 3)), np.zeros((0, 2, 2, 3), np.int32)
    want = torch.nn.functional.max_unpool2d(torch.tensor(x), torch.tensor(indices).long(), 2).shape
    y = F.max_unpool2d(x, indices, 2, backend=be)
    assert y.shape == tuple(want) == (0, 2, 4, 6)
    assert F.max_unpool2d_backward(y, indices, backend=be).shape == x.shape
    assert F.max_unpool1d(x[:, :, 0], indices[:, :, 0], 2, backend=be).shape == (0, 2, 6)


@pytest.mark.parametrize("be", BACKENDS)
def test_round_trip_of_pytorchs_docs(be):
    """torch.nn.MaxUnpool2d's example: the pooled maxima back at their places, zeros elsewhere, also
    to an odd output size; and MaxUnpool1d's."""
    pool, unpool = nn.MaxPool2d(2, stride=2, return_indices=True), nn.MaxUnpool2d(2, stride=2)
    pool.to(be), unpool.to(be)
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    output, indices = pool(x)
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, 1::2, 1::2] = [[6, 8], [14, 16]]
    np.testing.assert_array_equal(unpool(output, indices), want)
    unpool = nn.MaxUnpool2d(2, stride=2).to(be)
    x = np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    output, indices = pool(x)
    y = unpool(output, indices, output_size=x.shape)
    want = np.zeros((1, 1, 5, 5))
    want[0, 0, 1:4:2, 1:4:2] = [[7, 9], [17, 19]]
    np.testing.assert_array_equal(y, want)
    dy = np.arange(25.0).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(unpool.backward(dy), [[[[6, 8], [16, 18]]]])
    pool, unpool = nn.MaxPool1d(2, stride=2, return_indices=True), nn.MaxUnpool1d(2, stride=2)
    pool.to(be), unpool.to(be)
    output, indices = pool(np.arange(1.0, 9.0).reshape(1, 1, 8))
    np.testing.assert_array_equal(unpool(output, indices), [[[0, 2, 0, 4, 0, 6, 0, 8]]])
    np.testing.assert_array_equal(unpool.backward(np.arange(8.0).reshape(1, 1, 8)), [[[1, 3, 5, 7]]])


@pytest.mark.torch
def test_layers_match_pytorchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    # (ours, theirs, x's shape, its plane's dims, the unpooled plane's pixels)
    for ours, theirs, shape, plane_dims, out_pixels in [
            (nn.MaxUnpool2d(3, 2, 1), torch.nn.MaxUnpool2d(3, 2, 1), (2, 3, 4, 5), 2, 7 * 9),
            (nn.MaxUnpool2d((2, 3)), torch.nn.MaxUnpool2d((2, 3)), (3, 2, 2), 2, 4 * 6),
            (nn.MaxUnpool1d(3, 2), torch.nn.MaxUnpool1d(3, 2), (2, 3, 6), 1, 13)]:
        assert repr(ours) == repr(theirs) and ours.state_dict() == {}
        x = rng.standard_normal(shape)
        plane = shape[-plane_dims:]
        indices = np.broadcast_to(rng.permutation(out_pixels)[:int(np.prod(plane))].reshape(plane), shape).copy()
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt, torch.tensor(indices))
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        np.testing.assert_array_equal(ours(x, indices), yt.detach().numpy())
        np.testing.assert_array_equal(ours.backward(dy), xt.grad.numpy())


@needs_emu
def test_bad_arguments_are_refused_before_any_launch(monkeypatch):
    refuse_launches(monkeypatch)
    x, indices = np.ones((2, 3, 2, 2)), np.zeros((2, 3, 2, 2), np.int32)
    dy = np.ones((2, 3, 4, 4))
    for call, error, match in [
        (lambda be: F.max_unpool2d(x[0, 0], indices[0, 0], 2, backend=be), ValueError, "3-D or 4-D"),
        (lambda be: F.max_unpool2d(np.ones((2, 0, 2, 2)), np.zeros((2, 0, 2, 2), np.int32), 2, backend=be),
         ValueError, "non-zero"),
        (lambda be: F.max_unpool2d(x, indices.astype(np.int16), 2, backend=be), TypeError, "int32"),
        (lambda be: F.max_unpool2d(x, indices.astype(np.float32), 2, backend=be), TypeError, "int32"),
        (lambda be: F.max_unpool2d(x, list(indices), 2, backend=be), TypeError, "indices"),
        (lambda be: F.max_unpool2d(x, indices[..., :1], 2, backend=be), ValueError, "shape"),
        (lambda be: F.max_unpool2d(x.astype(np.int32), indices, 2, backend=be), TypeError, "float"),
        (lambda be: F.max_unpool2d(x, indices, 0, backend=be), ValueError, "kernel_size"),
        (lambda be: F.max_unpool2d(x, indices, 2, stride=0, backend=be), ValueError, "stride"),
        (lambda be: F.max_unpool2d(x, indices, 2, padding=-1, backend=be), ValueError, "padding"),
        (lambda be: F.max_unpool2d(x, indices, 2, output_size=4, backend=be), TypeError, "output_size"),
        (lambda be: F.max_unpool2d(x, indices, 2, output_size=(4, 4.0), backend=be), TypeError, "output_size"),
        (lambda be: F.max_unpool2d(x, indices + 16, 2, backend=be), ValueError, "invalid max index: 16"),
        (lambda be: F.max_unpool2d(x, indices - 2, 2, backend=be), ValueError, "invalid max index: -2"),
        (lambda be: F.max_unpool1d(x, indices, 2, backend=be), ValueError, "2-D or 3-D"),
        (lambda be: F.max_unpool1d(x[0], indices[0, ..., 0], 2, backend=be), ValueError, "shape"),
        (lambda be: F.max_unpool1d(x[0, 0], indices[0, 0] + 4, 2, backend=be), ValueError, "invalid max index: 4"),
        (lambda be: F.max_unpool2d_backward(dy, indices + 16, backend=be), ValueError, "invalid max index: 16"),
        (lambda be: F.max_unpool2d_backward(dy[:1], indices, backend=be), ValueError, "leading sizes"),
        (lambda be: F.max_unpool2d_backward(dy[..., :0], indices, backend=be), ValueError, "non-empty"),
        (lambda be: F.max_unpool2d_backward(dy, indices.astype(np.uint8), backend=be), TypeError, "int32"),
        (lambda be: F.max_unpool2d_backward(dy[0, 0], indices[0, 0], backend=be), ValueError, "3-D or 4-D"),
        (lambda be: F.max_unpool1d_backward(np.ones((2, 8)), indices[0, ..., 0], backend=be), ValueError,
         "leading sizes"),
    ]:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                call(be)


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_emu_sweep_with_guard_zones_and_the_race_check(dtype):
    """float16's neighbouring elements share 4-byte words: the race check is exact to the byte; the
    claims are integer atomics, the only accesses two threads share."""
    from cnn_gpu import emu
    rng = np.random.default_rng(5)
    with emu.checking(schedule="random", seed=2, guard=True, race=True):
        for i, x, indices, args, _ in cases(rng, 24, dtype):
            y = F.max_unpool2d(x, indices, *args, backend="emu")
            assert_same_bits(y, F.max_unpool2d(x, indices, *args, backend="numpy"), f"config {i}")
            dy = rng.standard_normal(y.shape).astype(dtype)
            assert_same_bits(F.max_unpool2d_backward(dy, indices, backend="emu"),
                             F.max_unpool2d_backward(dy, indices, backend="numpy"), f"config {i} dx")


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_duplicates_bit_identical_under_schedules(schedule):
    """Every input of a plane names one of three positions: the claim's winner (the last) is the same
    whatever order the threads run in."""
    from cnn_gpu import emu
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    indices = random_indices(rng, x.shape, 19 * 22, duplicates=True)
    results = []
    for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
        with emu.checking(guard=True, **settings):
            results.append(F.max_unpool2d(x, indices, 2, output_size=(19, 22), backend="emu"))
    assert_same_bits(results[0], results[1], schedule)
    assert_same_bits(results[0], loop_reference(x, indices, 19, 22), "the last wins")


@needs_emu
def test_grids_smaller_than_the_work_cover_every_plane_and_pixel():
    """blockIdx.y strides over more planes than the grid has rows, x threads over a plane larger than
    the grid's threads."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 19, 17))
    indices = random_indices(rng, x.shape, 40 * 35, duplicates=False)
    planes, in_plane, out_plane = np.int64(15), np.int32(19 * 17), np.int32(40 * 35)
    owner, y = np.empty(15 * 40 * 35, np.int32), np.empty((3, 5, 40, 35))
    for kernel, args in (("max_unpool_clear", (owner, planes, out_plane)),
                         ("max_unpool_claim", (indices, owner, planes, in_plane, out_plane)),
                         ("max_unpool_gather", (x, owner, y, planes, in_plane, out_plane))):
        backend.launch("emu", "unpool", x.dtype, kernel, (1, 2), (256,), args)
    assert_same_bits(y, loop_reference(x, indices, 40, 35))
    dy, dx = rng.standard_normal(y.shape), np.empty_like(x)
    backend.launch("emu", "unpool", x.dtype, "max_unpool_gather", (1, 2), (256,),
                   (dy, indices, dx, planes, out_plane, in_plane))
    assert_same_bits(dx, gradient_reference(dy, indices))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(8)
    for i, x, indices, args, _ in cases(rng, 20, dtype):
        y = F.max_unpool2d(cupy.asarray(x), cupy.asarray(indices), *args)
        assert_same_bits(y, F.max_unpool2d(x, indices, *args), f"config {i}")
        dy = rng.standard_normal(y.shape).astype(dtype)
        assert_same_bits(F.max_unpool2d_backward(cupy.asarray(dy), cupy.asarray(indices)),
                         F.max_unpool2d_backward(dy, indices), f"config {i} dx")


@pytest.mark.torch
def test_with_indices_functionals_are_pytorchs_names_for_the_max_pools():
    """F.max_pool1d/2d_with_indices and F.adaptive_max_pool1d/2d_with_indices: PyTorch's (y, indices)
    values, indices int32 as this library's max pools give them (PyTorch's int64 values)."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(9)
    image, signal = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((2, 3, 9))
    for ours, theirs, x, args in [
            (F.max_pool2d_with_indices, tf.max_pool2d_with_indices, image, (3, 2, 1, 1, True)),
            (F.max_pool1d_with_indices, tf.max_pool1d_with_indices, signal, (2, 1, 1, 2, False)),
            (F.adaptive_max_pool2d_with_indices, tf.adaptive_max_pool2d_with_indices, image, ((4, 5),)),
            (F.adaptive_max_pool1d_with_indices, tf.adaptive_max_pool1d_with_indices, signal, (4,))]:
        for return_indices in (False, True):   # ignored, as PyTorch ignores it
            y, indices = ours(x, *args, return_indices=return_indices)
            ty, ti = theirs(torch.tensor(x), *args, return_indices=return_indices)
            np.testing.assert_array_equal(y, ty.numpy())
            assert indices.dtype == np.int32 and ti.dtype == torch.int64
            np.testing.assert_array_equal(indices, ti.numpy())
    with pytest.raises(TypeError, match="return_indices"):
        F.max_pool2d_with_indices(image, 2, return_indices=None)
