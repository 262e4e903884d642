"""F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle and their backward functions; nn.PixelShuffle,
nn.PixelUnshuffle, nn.ChannelShuffle and nn.Unflatten: element for element PyTorch 2.13's (they only
move elements), written out from their definitions, replayed on new inputs, and PyTorch's refusals."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn, replay
from helpers import needs_cuda, needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")


BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
DTYPES = [np.float16, np.float32, np.float64]
# (input shape, factor): batched, unbatched (C, H, W), two leading dims, factor 1, a rectangle
SHUFFLE_CASES = [((2, 8, 3, 5), 2), ((9, 2, 3), 3), ((2, 3, 4, 1, 2), 2), ((1, 3, 2, 2), 1), ((3, 18, 1, 4), 3)]
UNSHUFFLE_CASES = [((2, 2, 6, 10), 2), ((1, 6, 9), 3), ((2, 3, 1, 4, 2), 2), ((1, 3, 2, 2), 1)]
CHANNEL_CASES = [((2, 6, 3, 4), 2), ((2, 6, 3, 4), 3), ((3, 8, 5), 4), ((1, 4, 2, 2, 3), 2), ((2, 5, 3), 1)]


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torch_result(torch, op, x, factor, dy):
    """PyTorch's output and the input's gradient of sum(y * dy)."""
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = getattr(torch.nn.functional, op)(tx, factor)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    return ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, cases", [("pixel_shuffle", SHUFFLE_CASES), ("pixel_unshuffle", UNSHUFFLE_CASES),
                                       ("channel_shuffle", CHANNEL_CASES)])
def test_ops_and_their_backward_move_the_elements_pytorch_moves(op, cases, dtype, be, torch):
    for i, (shape, factor) in enumerate(cases):
        x = draw(shape, dtype, i)
        y = getattr(F, op)(x, factor, backend=be)
        dy = draw(y.shape, dtype, 100 + i)
        dx = getattr(F, f"{op}_backward")(dy, factor, backend=be)
        want_y, want_dx = torch_result(torch, op, x, factor, dy)
        assert y.dtype == dx.dtype == dtype and y.flags.c_contiguous and dx.flags.c_contiguous
        np.testing.assert_array_equal(y, want_y.astype(dtype), err_msg=f"{op} {shape} y")
        np.testing.assert_array_equal(dx, want_dx.astype(dtype), err_msg=f"{op} {shape} dx")


def test_pixel_shuffle_and_channel_shuffle_follow_their_definitions():
    """pixel_shuffle: y[n, c, h r + i, w r + j] = x[n, c r^2 + i r + j, h, w]; channel_shuffle:
    channel a g + b of y is channel b (C / g) + a of x; each backward undoes its op."""
    x = draw((2, 12, 3, 4), np.float64, 7)
    r, g = 2, 3
    y = F.pixel_shuffle(x, r)
    for n, c, h, w, i, j in np.ndindex(2, 3, 3, 4, r, r):
        assert y[n, c, h * r + i, w * r + j] == x[n, c * r * r + i * r + j, h, w]
    np.testing.assert_array_equal(F.pixel_unshuffle(y, r), x)
    np.testing.assert_array_equal(F.pixel_shuffle_backward(y, r), x)
    s = F.channel_shuffle(x, g)
    per_group = 12 // g
    for a, b in np.ndindex(per_group, g):
        np.testing.assert_array_equal(s[:, a * g + b], x[:, b * per_group + a])
    np.testing.assert_array_equal(F.channel_shuffle_backward(s, g), x)


@pytest.mark.parametrize("be", BACKENDS)
def test_layers_match_pytorchs_in_a_network(be, torch):
    """A sub-pixel upsampling head (conv, PixelShuffle), ShuffleNet's shuffle, space to depth and an
    Unflatten/Flatten pair, forward and backward against torch's layers with the same weights."""
    from cnn_gpu.nn.init import manual_seed
    manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.PixelShuffle(2), nn.ChannelShuffle(2),
                          nn.PixelUnshuffle(2), nn.Flatten(2), nn.Unflatten(2, (-1, 3)), nn.Flatten()).to(be)
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Conv2d(2, 8, 3, padding=1), tnn.PixelShuffle(2), tnn.ChannelShuffle(2),
                            tnn.PixelUnshuffle(2), tnn.Flatten(2), tnn.Unflatten(2, (-1, 3)), tnn.Flatten()).double()
    theirs.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()})
    x = draw((2, 2, 5, 3), np.float32, 1)
    y = model(x)
    dy = draw(y.shape, np.float32, 2)
    dx = model.backward(dy)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model[0].weight.grad, theirs[0].weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    for ours, torchs in list(zip(model, theirs))[1:]:
        assert repr(ours) == repr(torchs)


@needs_emu
def test_a_replayed_rearrangement_copies_its_new_input():
    """The copy is a device call: a replay on an input overwritten in place gives the eager result."""
    x, dy = draw((2, 8, 3, 3), np.float32, 4), draw((2, 2, 6, 6), np.float32, 5)
    with replay.record() as recorded:
        y = F.pixel_shuffle(x, 2, backend="emu")
        dx = F.pixel_shuffle_backward(dy, 2, backend="emu")
        s = F.channel_shuffle(x, 4, backend="emu")
    x[...], dy[...] = draw(x.shape, np.float32, 6), draw(dy.shape, np.float32, 7)
    recorded.replay()
    np.testing.assert_array_equal(y, F.pixel_shuffle(x, 2))
    np.testing.assert_array_equal(dx, F.pixel_unshuffle(dy, 2))
    np.testing.assert_array_equal(s, F.channel_shuffle(x, 4))


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.pixel_shuffle(np.ones((4, 2)), 2), ValueError, "at least 3 dimensions, but got input with 2"),
    (lambda: F.pixel_shuffle(np.ones((1, 5, 2, 2)), 2), ValueError, r"input.size\(-3\)=5 is not divisible by 4"),
    (lambda: F.pixel_shuffle(np.ones((1, 4, 2, 2)), 0), ValueError, "positive upscale_factor, but got 0"),
    (lambda: F.pixel_shuffle(np.ones((1, 4, 2, 2)), 1.5), TypeError, "upscale_factor must be int, not float"),
    (lambda: F.pixel_unshuffle(np.ones((1, 1, 3, 4)), 2), ValueError, r"height .* input.size\(-2\)=3"),
    (lambda: F.pixel_unshuffle(np.ones((1, 1, 4, 3)), 2), ValueError, r"width .* input.size\(-1\)=3"),
    (lambda: F.pixel_unshuffle(np.ones((1, 1, 4, 4)), -1), ValueError, "positive downscale_factor, but got -1"),
    (lambda: F.pixel_shuffle_backward(np.ones((1, 1, 4, 3)), 2), ValueError, r"dy.size\(-1\)=3"),
    (lambda: F.channel_shuffle(np.ones((1, 5, 2)), 2), ValueError, "Got 5 channels and 2 groups"),
    (lambda: F.channel_shuffle(np.ones((1, 4, 2)), 0), ValueError, "positive groups, but got 0"),
    (lambda: F.channel_shuffle(np.ones((4, 2)), 2), ValueError, r"> 2 dims, but got input with sizes \[4, 2\]"),
    (lambda: nn.Unflatten(1, 5), TypeError, "must be a tuple of ints, but found type int"),
    (lambda: nn.Unflatten(1, (2.0, 3)), TypeError, "found element of type float at pos 0"),
    (lambda: nn.Unflatten(3, (2, 3))(np.ones((2, 6))), IndexError, r"range of \[-2, 1\], but got 3"),
    (lambda: nn.Unflatten(1, (-1, 4))(np.ones((2, 6))), ValueError, r"sizes \[-1, 4\] don't multiply up to .* \(6\)"),
    (lambda: nn.Unflatten(1, (2, 2))(np.ones((2, 5))), ValueError, r"sizes \[2, 2\] don't multiply up"),
    (lambda: nn.Unflatten(1, (-1, -1))(np.ones((2, 4))), ValueError, "don't multiply up"),
    (lambda: nn.Unflatten(1, (-2, -2))(np.ones((2, 4))), ValueError, "don't multiply up"),
    (lambda: nn.PixelShuffle(2).backward(np.ones((1, 1, 2, 2))), RuntimeError, "forward"),
])
def test_pytorchs_refusals(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_unflatten_takes_a_negative_dim_and_infers_one_size():
    x = draw((2, 3, 12), np.float64, 9)
    layer = nn.Unflatten(-1, (2, -1, 3))
    y = layer(x)
    assert y.shape == (2, 3, 2, 2, 3) and np.shares_memory(y, x)
    np.testing.assert_array_equal(layer.backward(y), x)


@needs_cuda
@pytest.mark.gpu
def test_cuda_matches_numpy():
    import cupy
    x = draw((2, 8, 3, 5), np.float32, 11)
    on_gpu = cupy.asarray(x)
    for op, factor in (("pixel_shuffle", 2), ("channel_shuffle", 4)):
        got = getattr(F, op)(on_gpu, factor)
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(got.get(), getattr(F, op)(x, factor))
