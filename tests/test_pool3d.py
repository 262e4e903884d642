"""F.max_pool3d / F.avg_pool3d / F.adaptive_avg_pool3d / F.adaptive_max_pool3d, their backward passes
and nn.MaxPool3d / AvgPool3d / AdaptiveAvgPool3d / AdaptiveMaxPool3d against PyTorch 2.13 (values,
flat (d*H + h)*W + w indices, gradients), float64 finite differences, refusals before any launch, and
the 3-D kernels of kernels/pool.cu and adaptive_pool.cu on the emulator (guard zones, the race check,
bit-identical under every schedule)."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn
from cnn_gpu.gradcheck import check_op
from helpers import needs_cuda, needs_emu, refuse_kernel_runs, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
DTYPES = [np.float64, np.float32, np.float16]
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}

# (input shape, max_pool3d arguments): cubes and not, padding, ceil_mode (a last window starting in
# the padding dropped), dilation, unbatched volumes
MAX_CASES = [((2, 3, 4, 6, 5), dict(kernel_size=2)),
             ((1, 2, 5, 7, 6), dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1), ceil_mode=True)),
             ((2, 1, 7, 6, 8), dict(kernel_size=3, stride=2, padding=1, dilation=(2, 1, 3))),
             ((1, 1, 3, 3, 3), dict(kernel_size=2, stride=2, padding=1, dilation=3, ceil_mode=True)),
             ((3, 4, 5, 6), dict(kernel_size=(2, 3, 2), stride=(1, 2, 3)))]
AVG_CASES = [((2, 3, 4, 6, 5), dict(kernel_size=2)),
             ((1, 2, 5, 7, 6), dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1), ceil_mode=True)),
             ((2, 1, 6, 5, 7), dict(kernel_size=(2, 4, 3), stride=(1, 3, 2), padding=(1, 2, 1), ceil_mode=True)),
             ((3, 4, 5, 6), dict(kernel_size=3, stride=2, padding=1))]


def draw(shape, dtype, seed, ties=False):
    """Values of the dtype; with ties, few distinct ones (many tied maxima, -0.0 and 0.0 among them)."""
    rng = np.random.default_rng(seed)
    if ties:
        return (rng.integers(-2, 3, shape) * 0.5).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def torch_run(torch, op, x, dy, **arguments):
    """PyTorch's output(s) and dx in float64 from the same values."""
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    out = op(tx, **arguments)
    y = out[0] if isinstance(out, tuple) else out
    y.backward(torch.from_numpy(dy.astype(np.float64)))
    return tuple(o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))), tx.grad.numpy()


def assert_close(got, want, dtype, what=""):
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tolerance, atol=tolerance, err_msg=what)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape, arguments", MAX_CASES)
def test_max_pool3d_is_pytorchs(shape, arguments, ties, dtype, be, torch):
    """Values and indices exactly (ties: the first maximum in (d, h, w) scan order), the gradient
    through them."""
    x = draw(shape, dtype, 1, ties)
    y, indices = F.max_pool3d(x, **arguments, backend=be)
    dy = draw(y.shape, dtype, 2)
    dx = F.max_pool3d_backward(dy, indices, shape, **arguments, backend=be)
    (want_y, want_indices), want_dx = torch_run(torch, torch.nn.functional.max_pool3d, x, dy, return_indices=True,
                                                **arguments)
    assert y.dtype == dx.dtype == dtype and indices.dtype == np.int32 and dx.shape == shape
    np.testing.assert_array_equal(y, want_y.astype(dtype))
    np.testing.assert_array_equal(indices, want_indices)
    assert_close(dx, want_dx, dtype)


@pytest.mark.parametrize("be", BACKENDS)
def test_a_window_wholly_in_the_padding_gives_minus_infinity_and_index_minus_one(be):
    """(Possible with dilation: taps -1 and 1 of a height-1 input. PyTorch's CPU kernel reads past
    such a window and aborts in its backward pass, so this is checked without it.) Its gradient
    goes nowhere."""
    x = draw((1, 2, 3, 1, 4), np.float32, 17)
    arguments = dict(kernel_size=(1, 2, 2), stride=(1, 1, 2), padding=(0, 1, 1), dilation=(1, 2, 1))
    y, indices = F.max_pool3d(x, **arguments, backend=be)
    assert y.shape == (1, 2, 3, 1, 3) and (y == -np.inf).all() and (indices == -1).all()
    dx = F.max_pool3d_backward(np.ones_like(y), indices, x.shape, **arguments, backend=be)
    assert dx.shape == x.shape and (dx == 0).all()


@pytest.mark.parametrize("be", BACKENDS)
def test_max_pool3d_nan_and_infinity_rules(be, torch):
    """A NaN wins its window (the last NaN's index, as PyTorch's scan); an all -inf window names its
    first tap."""
    x = draw((1, 2, 4, 4, 4), np.float32, 3)
    x[0, 0, 1, 0, 1] = x[0, 0, 1, 1, 0] = np.nan
    x[0, 1, 2:, 2:, 2:] = -np.inf
    y, indices = F.max_pool3d(x, 2, backend=be)
    want_y, want_indices = torch.nn.functional.max_pool3d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(y, want_y.numpy())
    np.testing.assert_array_equal(indices, want_indices.numpy())
    assert indices[0, 0, 0, 0, 0] == 1 * 16 + 1 * 4 + 0 and indices[0, 1, 1, 1, 1] == 2 * 16 + 2 * 4 + 2


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, None), (True, 5),
                                                                 (False, -3)])
@pytest.mark.parametrize("shape, arguments", AVG_CASES)
def test_avg_pool3d_is_pytorchs(shape, arguments, count_include_pad, divisor_override, dtype, be, torch):
    x = draw(shape, dtype, 4)
    options = dict(arguments, count_include_pad=count_include_pad, divisor_override=divisor_override)
    y = F.avg_pool3d(x, **options, backend=be)
    dy = draw(y.shape, dtype, 5)
    dx = F.avg_pool3d_backward(dy, shape, **options, backend=be)
    (want_y,), want_dx = torch_run(torch, torch.nn.functional.avg_pool3d, x, dy, **options)
    assert y.dtype == dx.dtype == dtype and dx.shape == shape
    assert_close(y, want_y, dtype, "y")
    assert_close(dx, want_dx, dtype, "dx")


ADAPTIVE_CASES = [((2, 3, 4, 6, 5), (2, 3, 2)), ((1, 2, 5, 7, 6), (3, None, 4)), ((2, 1, 3, 4, 2), (5, 6, 3)),
                  ((3, 4, 5, 6), 1), ((2, 2, 7, 3, 9), (7, 3, 9))]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_pool3d_is_pytorchs(shape, output_size, dtype, be, torch):
    """Average and maximum (values, indices, gradients; overlapping windows where the output is
    larger than the input), batched and unbatched, None keeping an input size."""
    x = draw(shape, dtype, 6, ties=dtype == np.float16)
    y = F.adaptive_avg_pool3d(x, output_size, backend=be)
    dy = draw(y.shape, dtype, 7)
    (want_y,), want_dx = torch_run(torch, torch.nn.functional.adaptive_avg_pool3d, x, dy, output_size=output_size)
    assert y.dtype == dtype and y.shape == want_y.shape
    assert_close(y, want_y, dtype, "avg y")
    assert_close(F.adaptive_avg_pool3d_backward(dy, shape, backend=be), want_dx, dtype, "avg dx")
    y, indices = F.adaptive_max_pool3d(x, output_size, backend=be)
    dx = F.adaptive_max_pool3d_backward(dy, indices, shape, output_size, backend=be)
    (want_y, want_indices), want_dx = torch_run(torch, torch.nn.functional.adaptive_max_pool3d, x, dy,
                                                output_size=output_size, return_indices=True)
    np.testing.assert_array_equal(y, want_y.astype(dtype))
    np.testing.assert_array_equal(indices, want_indices)
    assert indices.dtype == np.int32 and dx.dtype == dtype
    assert_close(dx, want_dx, dtype, "max dx")


def test_finite_differences():
    """float64 gradients of the four ops against central differences (max pooling of distinct values)."""
    rng = np.random.default_rng(8)
    x = rng.permutation(2 * 2 * 4 * 5 * 3).reshape(2, 2, 4, 5, 3) / 7.0
    sizes = dict(kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0), ceil_mode=True)
    cases = [
        (lambda a: F.max_pool3d(a, **sizes)[0],
         lambda dy, a: F.max_pool3d_backward(dy, F.max_pool3d(a, **sizes)[1], a.shape, **sizes)),
        (lambda a: F.avg_pool3d(a, **sizes, count_include_pad=False),
         lambda dy, a: F.avg_pool3d_backward(dy, a.shape, **sizes, count_include_pad=False)),
        (lambda a: F.adaptive_avg_pool3d(a, (3, 2, 4)), lambda dy, a: F.adaptive_avg_pool3d_backward(dy, a.shape)),
        (lambda a: F.adaptive_max_pool3d(a, (3, 2, 4))[0],
         lambda dy, a: F.adaptive_max_pool3d_backward(dy, F.adaptive_max_pool3d(a, (3, 2, 4))[1], a.shape,
                                                      (3, 2, 4)))]
    for forward, backward in cases:
        report = check_op(forward, lambda dy, a, backward=backward: (backward(dy, a),), [x])
        assert report.max_rel_error < 1e-6, report


@pytest.mark.parametrize("be", BACKENDS)
def test_refusals_before_any_launch(be, monkeypatch):
    refuse_launches(monkeypatch)
    x = np.ones((1, 2, 4, 4, 4), np.float32)
    for call, error, message in [
            (lambda: F.max_pool3d(x[0, 0], 2, backend=be), ValueError, r"x must be 4-D or 5-D, got shape \(4, 4, 4\)"),
            (lambda: F.max_pool3d(x, (2, 2), backend=be), ValueError, r"kernel_size must be an int or a triple"),
            (lambda: F.max_pool3d(x, 2, padding=(0, 0, 2), backend=be), ValueError, "at most half of kernel_size"),
            (lambda: F.avg_pool3d(x, (5, 1, 1), backend=be), ValueError, "output would be empty"),
            (lambda: F.avg_pool3d(x, 2, divisor_override=0, backend=be), ValueError, "divisor_override"),
            (lambda: F.max_pool3d_backward(np.ones((1, 2, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2, 2), np.int64),
                                           x.shape, 2, backend=be), TypeError, "as max_pool3d returns them"),
            (lambda: F.max_pool3d_backward(np.ones((1, 2, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2, 2), np.int32),
                                           x.shape, 2, backend=be), ValueError,
             r"indices\[0, 0, 0, 0, 1\] = 0 \(depth 0, row 0, col 0\) is not a tap of its window \(depths 0..1 step 1, "
             r"rows 0..1 step 1, cols 2..3 step 1\); indices must be those max_pool3d returned"),
            (lambda: F.avg_pool3d_backward(np.ones((1, 2, 2, 2), np.float32), x.shape, 2, backend=be), ValueError,
             "dy"),
            (lambda: F.adaptive_avg_pool3d(x, (2, 2), backend=be), ValueError, r"a triple \(d, h, w\)"),
            (lambda: F.adaptive_max_pool3d(x, (2, 0, 2), backend=be), ValueError, "positive"),
            (lambda: F.adaptive_max_pool3d_backward(np.ones((1, 2, 2, 2, 2), np.float32),
                                                    np.full((1, 2, 2, 2, 2), 63, np.int32), x.shape, 2, backend=be),
             ValueError, r"indices\[0, 0, 0, 0, 0\] = 63 is not a pixel of its window; indices must be those "
                         r"adaptive_max_pool3d returned")]:
        with pytest.raises(error, match=message):
            call()


def test_3d_adaptive_kernels_refuse_window_products_past_32_bits():
    from cnn_gpu.gpu import adaptive_pool as gpu_pool
    with pytest.raises(ValueError, match=r"along the width, \(input 70000 \+ 1\) x \(output 40000 \+ 1\) "
                                         r"reaches 2\^31"):
        gpu_pool._args((1, 1, 1, 1, 70000), (1, 1, 40000))
    gpu_pool._args((1, 1, 1, 70000), (1, 40000))   # the 2-D kernels take them in 64 bits


@pytest.mark.parametrize("be", BACKENDS)
def test_layers_are_pytorchs(be, torch):
    x = draw((2, 3, 5, 6, 7), np.float32, 9)
    for ours, theirs in [(nn.MaxPool3d((2, 3, 2), stride=1, padding=1, ceil_mode=True),
                          torch.nn.MaxPool3d((2, 3, 2), stride=1, padding=1, ceil_mode=True)),
                         (nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False, divisor_override=None),
                          torch.nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False)),
                         (nn.AdaptiveAvgPool3d((3, None, 2)), torch.nn.AdaptiveAvgPool3d((3, None, 2))),
                         (nn.AdaptiveMaxPool3d(4), torch.nn.AdaptiveMaxPool3d(4))]:
        ours.to(be)
        y = ours(x)
        dy = draw(y.shape, np.float32, 10)
        (want_y, *_), want_dx = torch_run(torch, theirs, x, dy)
        assert_close(y, want_y, np.float32, type(ours).__name__)
        assert_close(ours.backward(dy), want_dx, np.float32, type(ours).__name__)
        assert dict(ours.state_dict()) == {}
    for ours, theirs in [(nn.MaxPool3d(2, return_indices=True), torch.nn.MaxPool3d(2, return_indices=True)),
                         (nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True),
                          torch.nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True))]:
        (y, indices), (want_y, want_indices) = ours.to(be)(x[0]), theirs(torch.from_numpy(x[0]))
        np.testing.assert_array_equal(y, want_y.numpy())
        np.testing.assert_array_equal(indices, want_indices.numpy())
    assert nn.MaxPool3d(2).kernel_size == nn.MaxPool3d((2, 2, 2)).stride == (2, 2, 2)
    with pytest.raises(ValueError, match="kernel_size must be an int or a triple"):
        nn.AvgPool3d((2, 2))


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES)
def test_emu_kernels_with_guard_zones_and_the_race_check(dtype):
    """The 3-D kernels against the NumPy path under guard zones and the byte-exact race check
    (float16's neighbours share 4-byte words); maxima and indices bit for bit."""
    from cnn_gpu import emu
    x = draw((2, 3, 5, 6, 7), dtype, 11, ties=True)
    with emu.checking(schedule="random", seed=2, guard=True, race=True):
        for arguments in (dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=1, dilation=(1, 2, 1),
                               ceil_mode=True), dict(kernel_size=2, stride=1)):
            y, indices = F.max_pool3d(x, **arguments, backend="emu")
            want_y, want_indices = F.max_pool3d(x, **arguments)
            assert y.tobytes() == want_y.tobytes() and indices.tobytes() == want_indices.tobytes()
            dy = draw(y.shape, dtype, 12)
            assert_close(F.max_pool3d_backward(dy, indices, x.shape, **arguments, backend="emu"),
                         F.max_pool3d_backward(dy, indices, x.shape, **arguments), dtype)
            sizes = {k: v for k, v in arguments.items() if k != "dilation"}
            y = F.avg_pool3d(x, **sizes, count_include_pad=False, backend="emu")
            assert_close(y, F.avg_pool3d(x, **sizes, count_include_pad=False), dtype)
            dy = draw(y.shape, dtype, 18)
            assert_close(F.avg_pool3d_backward(dy, x.shape, **sizes, backend="emu"),
                         F.avg_pool3d_backward(dy, x.shape, **sizes), dtype)
        for output_size in ((3, 4, 5), (7, 2, 9)):
            y, indices = F.adaptive_max_pool3d(x, output_size, backend="emu")
            want_y, want_indices = F.adaptive_max_pool3d(x, output_size)
            assert y.tobytes() == want_y.tobytes() and indices.tobytes() == want_indices.tobytes()
            dy = draw(y.shape, dtype, 13)
            assert_close(F.adaptive_max_pool3d_backward(dy, indices, x.shape, output_size, backend="emu"),
                         F.adaptive_max_pool3d_backward(dy, indices, x.shape, output_size), dtype)
            assert_close(F.adaptive_avg_pool3d(x, output_size, backend="emu"), F.adaptive_avg_pool3d(x, output_size),
                         dtype)
            assert_close(F.adaptive_avg_pool3d_backward(dy, x.shape, backend="emu"),
                         F.adaptive_avg_pool3d_backward(dy, x.shape), dtype)


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emu_bit_identical_under_schedules(schedule):
    """The backward gathers sum in a fixed order: the same bits under every schedule."""
    from cnn_gpu import emu
    x = draw((2, 2, 5, 4, 6), np.float32, 14)
    dy_max = draw((2, 2, 4, 3, 5), np.float32, 15)
    dy_adaptive = draw((2, 2, 3, 5, 4), np.float32, 16)
    results = []
    for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=3)):
        with emu.checking(guard=True, **settings):
            y, indices = F.max_pool3d(x, 2, stride=1, backend="emu")
            _, adaptive_indices = F.adaptive_max_pool3d(x, (3, 5, 4), backend="emu")
            results.append((y, F.max_pool3d_backward(dy_max, indices, x.shape, 2, stride=1, backend="emu"),
                            F.avg_pool3d_backward(dy_max, x.shape, 2, stride=1, backend="emu"),
                            F.adaptive_avg_pool3d_backward(dy_adaptive, x.shape, backend="emu"),
                            F.adaptive_max_pool3d_backward(dy_adaptive, adaptive_indices, x.shape, (3, 5, 4),
                                                           backend="emu")))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@needs_emu
def test_an_empty_batch_runs_no_kernel(monkeypatch):
    """Adaptive pooling takes N = 0 (as PyTorch): a grid of no blocks, nothing run."""
    refuse_kernel_runs(monkeypatch)
    x = np.ones((0, 2, 3, 4, 5), np.float32)
    y, indices = F.adaptive_max_pool3d(x, 2, backend="emu")
    assert y.shape == indices.shape == (0, 2, 2, 2, 2)
    assert F.adaptive_avg_pool3d(x, (1, 2, 3), backend="emu").shape == (0, 2, 1, 2, 3)
    assert F.adaptive_avg_pool3d_backward(np.ones((0, 2, 1, 2, 3), np.float32), x.shape, backend="emu").shape == x.shape
    assert F.adaptive_max_pool3d_backward(y, indices, x.shape, 2, backend="emu").shape == x.shape


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_numpy(dtype):
    import cupy
    x = draw((2, 3, 5, 6, 7), dtype, 19, ties=True)
    arguments = dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=1, ceil_mode=True)
    y, indices = F.max_pool3d(cupy.asarray(x), **arguments, dilation=(1, 2, 1))
    want_y, want_indices = F.max_pool3d(x, **arguments, dilation=(1, 2, 1))
    assert y.get().tobytes() == want_y.tobytes() and indices.get().tobytes() == want_indices.tobytes()
    dy = draw(y.shape, dtype, 20)
    assert_close(F.max_pool3d_backward(cupy.asarray(dy), indices, x.shape, **arguments, dilation=(1, 2, 1)).get(),
                 F.max_pool3d_backward(dy, want_indices, x.shape, **arguments, dilation=(1, 2, 1)), dtype)
    y = F.avg_pool3d(cupy.asarray(x), **arguments, count_include_pad=False)
    assert_close(y.get(), F.avg_pool3d(x, **arguments, count_include_pad=False), dtype)
    dy = draw(y.shape, dtype, 21)
    assert_close(F.avg_pool3d_backward(cupy.asarray(dy), x.shape, **arguments).get(),
                 F.avg_pool3d_backward(dy, x.shape, **arguments), dtype)
    y, indices = F.adaptive_max_pool3d(cupy.asarray(x), (3, 4, 9))
    want_y, want_indices = F.adaptive_max_pool3d(x, (3, 4, 9))
    assert y.get().tobytes() == want_y.tobytes() and indices.get().tobytes() == want_indices.tobytes()
    dy = draw(y.shape, dtype, 22)
    assert_close(F.adaptive_max_pool3d_backward(cupy.asarray(dy), indices, x.shape, (3, 4, 9)).get(),
                 F.adaptive_max_pool3d_backward(dy, want_indices, x.shape, (3, 4, 9)), dtype)
    assert_close(F.adaptive_avg_pool3d(cupy.asarray(x), (3, 4, 9)).get(), F.adaptive_avg_pool3d(x, (3, 4, 9)), dtype)
    assert_close(F.adaptive_avg_pool3d_backward(cupy.asarray(dy), x.shape).get(),
                 F.adaptive_avg_pool3d_backward(dy, x.shape), dtype)
