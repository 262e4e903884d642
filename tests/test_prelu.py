"""F.prelu / F.prelu_backward and nn.PReLU (kernels/prelu.cu) against PyTorch 2.13: values and both
gradients (one slope and a slope per channel; 1- to 5-D inputs; three dtypes, float16 rounded once),
PyTorch's special values, the emulator under guard zones and every schedule, a grid smaller than the
work, the launches, the layer, PyTorch's refusals."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_network_matches_torch, needs_cuda, needs_emu, record_launches, refuse_launches

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
# (x shape, slopes): per channel of (N, C, H, W), one slope, (N, C), (N, C, L), 5-D, a 1-D signal, planes
# larger than a block's span (for_each_plane_element's other walk; float16's span is 2048 elements)
CASES = [((2, 3, 5, 7), 3), ((2, 3, 5, 7), 1), ((4, 6), 6), ((3, 2, 9), 2), ((2, 2, 3, 2, 4), 2), ((11,), 1),
         ((2, 4, 1, 1), 4), ((2, 3, 40, 61), 3)]


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torchs(torch, x, weight, dy):
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    tw = torch.from_numpy(np.asarray(weight, np.float64)).requires_grad_()
    ty = torch.nn.functional.prelu(tx, tw)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_values_and_gradients_are_pytorchs(dtype, be, torch):
    """float64 and float32 to their rounding; float16 within one FP16 rounding of the float64 result
    (each output computed in FP32 and rounded once; the slopes' gradient summed unrounded)."""
    for i, (shape, slopes) in enumerate(CASES):
        x, dy = draw(shape, dtype, i), draw(shape, dtype, 50 + i)
        weight = (draw((slopes,), dtype, 100 + i) * 0.5 + 0.25).astype(dtype)
        y = F.prelu(x, weight, backend=be)
        dx, dweight = F.prelu_backward(dy, x, weight, backend=be)
        assert y.dtype == dx.dtype == dweight.dtype == dtype and dweight.shape == weight.shape
        for got, want, what in zip((y, dx, dweight), torchs(torch, x, weight, dy), ("y", "dx", "dweight")):
            if dtype == np.float16:
                bound = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64) + 1e-3 * (what == "dweight")
                assert (np.abs(got.astype(np.float64) - want) <= bound).all(), (shape, what)
            else:
                assert_close(got, want.astype(dtype), dtype, f"{shape} {what}")


@pytest.mark.parametrize("be", BACKENDS)
def test_special_values_are_pytorchs_bit_for_bit(be, torch):
    """A NaN x takes the slope (dx = weight dy, its slope term NaN), -0.0 gives weight * -0.0, 0 and
    infinities as PyTorch's comparisons give them; a 0-d weight is one slope."""
    x = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -2.0, 3.0], np.float32)
    dy = np.array([1.0, 2.0, -3.0, 0.5, 1.5, -1.0, 2.0], np.float32)
    for weight in (np.float32([0.25]), np.array(-0.5, np.float32)):
        y = F.prelu(x, weight, backend=be)
        dx, dweight = F.prelu_backward(dy, x, weight, backend=be)
        want_y, want_dx, want_dweight = torchs(torch, x, weight, dy)
        assert y.astype(np.float64).tobytes() == want_y.tobytes()
        assert dx.astype(np.float64).tobytes() == want_dx.tobytes()
        assert np.isnan(dweight) and np.isnan(want_dweight) and dweight.shape == weight.shape


@pytest.mark.parametrize("be", BACKENDS)
def test_float16_slope_gradient_sums_its_terms_unrounded(be):
    """x * dy = -1.5 * (1 + 2^-10) lies halfway between two FP16 values: rounded term by term (to
    -1.501953125) a thousand sum to -1502 in FP16, unrounded to -1501.46..., which rounds to -1501."""
    x = np.full((1, 1, 1000), -1.5, np.float16)
    dy = np.full((1, 1, 1000), 1 + 2.0**-10, np.float16)
    _, dweight = F.prelu_backward(dy, x, np.float16([0.25]), backend=be)
    assert dweight[0] == np.float16(-1501)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4))
    x[np.abs(x) < 0.05] += 0.2   # away from the kink
    weight = rng.standard_normal(3)
    report = check_op(lambda a, w: F.prelu(a, w), lambda dy, a, w: F.prelu_backward(dy, a, w), [x, weight])
    assert report.max_rel_error < 1e-6, report


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_emulated_kernels_are_bit_identical_under_schedules_and_guard_zones(schedule):
    from cnn_gpu import emu
    x, dy = draw((3, 4, 6, 5), np.float32, 1), draw((3, 4, 6, 5), np.float32, 2)
    weight = draw((4,), np.float32, 3)
    results = []
    for settings in (dict(schedule="forward"), dict(schedule=schedule, seed=5)):
        with emu.checking(guard=True, **settings):
            results.append((F.prelu(x, weight, backend="emu"), *F.prelu_backward(dy, x, weight, backend="emu")))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes(), schedule


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_a_grid_smaller_than_the_work_covers_every_plane_and_pixel(dtype):
    """for_each_plane_element's two walks on grids smaller than the launcher's: blockIdx.y strides
    over more planes (small planes: groups of planes, their slopes in a shared table a block reuses,
    checked for races) than the grid has rows, x blocks over a plane larger than their span; the
    slope of a plane is that of its channel."""
    from cnn_gpu import emu
    from cnn_gpu.gpu._grid import plane_elements
    for shape in [(3, 5, 23, 17), (3, 5, 1, 1), (2, 3, 40, 61)]:
        x, dy = draw(shape, dtype, 4), draw(shape, dtype, 5)
        weight = draw((shape[1],), dtype, 6)
        inner = shape[2] * shape[3]
        shape_args = (np.int64(shape[0] * shape[1]), np.int32(shape[1]), np.int32(inner))
        for grid in [(1, 2), (2, 3)]:
            grid = grid if inner >= 256 * plane_elements(dtype) else (1, grid[1])   # small planes take gridDim.x 1
            y, dx = np.empty_like(x), np.empty_like(x)
            terms = np.empty(shape, backend.compute_dtype(dtype))
            with emu.checking(guard=True, race=True):
                backend.launch("emu", "prelu", dtype, "prelu_forward", grid, (256,), (x, weight, y, *shape_args))
                backend.launch("emu", "prelu", dtype, "prelu_backward", grid, (256,),
                               (dy, x, weight, dx, terms, *shape_args))
            np.testing.assert_array_equal(y, F.prelu(x, weight, backend="emu"), err_msg=f"{shape} {grid}")
            np.testing.assert_array_equal(dx, F.prelu_backward(dy, x, weight, backend="emu")[0])
            wide_x, wide_dy = x.astype(terms.dtype), dy.astype(terms.dtype)
            np.testing.assert_array_equal(terms, np.where(wide_x > 0, 0, wide_x * wide_dy))


@needs_emu
def test_launches_and_the_layer(torch, monkeypatch):
    """nn.PReLU against torch's in a network (forward, dx, the slopes' and the conv's gradients), its
    repr and state dict; a forward is one launch, a backward the map and the channel sums."""
    nn.init.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.PReLU(3, init=0.1), nn.Conv2d(3, 2, 1), nn.PReLU())
    model.to("emu")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.PReLU(3, init=0.1),
                                 torch.nn.Conv2d(3, 2, 1), torch.nn.PReLU())
    assert [repr(m) for m in model][1::2] == [repr(m) for m in theirs][1::2]
    assert list(model.state_dict()) == list(theirs.state_dict())
    assert_network_matches_torch(torch, model, theirs, draw((2, 2, 5, 4), np.float32, 8))
    launched = record_launches(monkeypatch)
    layer = model[1]
    layer(draw((2, 3, 5, 4), np.float32, 10))
    assert launched == [("prelu", "prelu_forward")]
    launched.clear()
    layer.backward(draw((2, 3, 5, 4), np.float32, 11))
    assert launched[0] == ("prelu", "prelu_backward") and {f for f, _ in launched[1:]} == {"reduce"}


@pytest.mark.parametrize("call, message", [
    (lambda: F.prelu(np.ones(()), np.ones(1)), "Not allow zero-dim input tensor"),
    (lambda: F.prelu(np.ones((2, 3, 4)), np.ones(2)), "parameter numbers = 2 and channel size = 3"),
    (lambda: F.prelu(np.ones(3), np.ones(3)), "parameter numbers = 3 and channel size = 1"),
    (lambda: F.prelu(np.ones((2, 3)), np.ones((3, 1))), "scalar or 1D tensor, but got: ndim = 2"),
    (lambda: F.prelu_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones(3)), "dy"),
])
def test_pytorchs_refusals_before_any_launch(call, message, monkeypatch):
    refuse_launches(monkeypatch)
    with pytest.raises(ValueError, match=message):
        call()
    with pytest.raises(TypeError, match="float16"):
        F.prelu(np.ones((2, 3), np.float32), np.ones(3, np.float16))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    import cupy
    for i, (shape, slopes) in enumerate(CASES):
        x, dy, weight = draw(shape, dtype, i), draw(shape, dtype, 20 + i), draw((slopes,), dtype, 40 + i)
        on_gpu = [cupy.asarray(a) for a in (dy, x, weight)]
        y = F.prelu(on_gpu[1], on_gpu[2])
        dx, dweight = F.prelu_backward(*on_gpu)
        want_dx, want_dweight = F.prelu_backward(dy, x, weight)
        np.testing.assert_array_equal(y.get(), F.prelu(x, weight))
        np.testing.assert_array_equal(dx.get(), want_dx)
        assert_close(dweight.get(), want_dweight, dtype, f"{shape} dweight")
