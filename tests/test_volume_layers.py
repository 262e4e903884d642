"""nn.BatchNorm3d, nn.InstanceNorm3d and F.dropout3d / nn.Dropout3d (volumes (N, C, D, H, W) and
unbatched (C, D, H, W)) against PyTorch 2.13: batch and instance norm's (N, C, *) kernels on 5-D
inputs (outputs, gradients, running statistics), dropout2d's plane masks for whole volumes."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn
from helpers import needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
RTOL = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 2e-3}


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_close(got, want, dtype, what):
    want = np.asarray(want, np.float64)
    tolerance = RTOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tolerance,
                               atol=tolerance * (np.abs(want).max() + 1), err_msg=what)


def _torch_layer_run(torch, layer, x, dy):
    """PyTorch layer's y, dx and parameter gradients in float64 from the same values."""
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = layer(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    return ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("name, shape", [("BatchNorm3d", (2, 3, 4, 5, 3)), ("InstanceNorm3d", (2, 3, 4, 5, 3)),
                                         ("InstanceNorm3d", (3, 2, 4, 5))])
def test_volume_norms_are_pytorchs(name, shape, dtype, be, torch):
    """Training then eval: y, dx, dweight, dbias and the running statistics as PyTorch's layer's."""
    channels = shape[-4]
    options = dict(affine=True, track_running_stats=True)
    ours = getattr(nn, name)(channels, momentum=0.3, dtype=dtype, **options).to(be)
    theirs = getattr(torch.nn, name)(channels, momentum=0.3, dtype=torch.float64, **options)
    for parameter, seed in ((ours.weight, 1), (ours.bias, 2)):
        parameter.data[...] = draw(channels, dtype, seed) + (seed == 1)
    theirs.weight.data = torch.from_numpy(ours.weight.data.astype(np.float64))
    theirs.bias.data = torch.from_numpy(ours.bias.data.astype(np.float64))
    for training, seed in ((True, 3), (False, 4)):
        ours.train(training)
        theirs.train(training)
        x, dy = draw(shape, dtype, seed) * 2 + 1, draw(shape, dtype, seed + 10)
        y = ours(x)
        dx = ours.backward(dy)
        want_y, want_dx = _torch_layer_run(torch, theirs, x, dy)
        assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
        assert_close(y, want_y, dtype, f"y training={training}")
        assert_close(dx, want_dx, dtype, f"dx training={training}")
        assert_close(ours.running_mean, theirs.running_mean.numpy(), dtype, "running_mean")
        assert_close(ours.running_var, theirs.running_var.numpy(), dtype, "running_var")
    assert_close(ours.weight.grad, theirs.weight.grad.numpy(), dtype, "dweight")
    assert_close(ours.bias.grad, theirs.bias.grad.numpy(), dtype, "dbias")
    if name == "InstanceNorm3d":   # (BatchNorm2d's repr, which BatchNorm3d shares, lacks torch 2.13's bias=)
        assert repr(ours).split("(")[1:] == repr(theirs).split("(")[1:]


def test_volume_norms_refuse_other_ranks_as_pytorch(torch):
    with pytest.raises(ValueError, match=r"BatchNorm3d expects a 5-D input \(N, C, D, H, W\), got shape "
                                         r"\(2, 3, 4, 5\)"):
        nn.BatchNorm3d(3)(np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected 4D or 5D input \(got 3D input\)"):
        nn.InstanceNorm3d(3)(np.ones((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="expected 5D input"):
        torch.nn.BatchNorm3d(3)(torch.ones(2, 3, 4, 5))
    with pytest.raises(ValueError, match="expected 4D or 5D input"):
        torch.nn.InstanceNorm3d(3)(torch.ones(3, 4, 5))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dropout3d_drops_whole_volumes_as_dropout2d_drops_planes(dtype, be):
    """Each (n, c) volume kept and scaled by 1 / (1 - p) (in FP32, rounded once), or zeroed whole:
    dropout2d's mask of the same (N, C, ...) input; an unbatched (C, D, H, W) volume is the one
    sample of its (1, C, D, H, W) view; the backward applies the same mask. No warning for 4-D and
    5-D inputs."""
    x = draw((3, 8, 2, 3, 4), dtype, 5) + dtype(4)   # no zeros: a kept volume is wholly non-zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = F.dropout3d(x, 0.4, seed=7, step=3, backend=be)
        dx = F.dropout3d_backward(x, 0.4, seed=7, step=3, backend=be)
        unbatched = F.dropout3d(x[1], 0.4, seed=7, step=3, backend=be)
    kept = (y != 0).all(axis=(2, 3, 4))
    assert ((y == 0).all(axis=(2, 3, 4)) | kept).all() and 0 < kept.mean() < 1
    scaled = (x.astype(np.float32) * (np.float32(1) / np.float32(1 - 0.4))).astype(dtype)
    np.testing.assert_array_equal(y[kept], scaled[kept])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # dropout2d's 5-D warning
        np.testing.assert_array_equal(y, F.dropout2d(x, 0.4, seed=7, step=3, backend=be))
    np.testing.assert_array_equal(dx, y)
    np.testing.assert_array_equal(unbatched, F.dropout3d(x[1:2], 0.4, seed=7, step=3, backend=be)[0])
    assert F.dropout3d(x, 0.4, training=False, seed=7) is x and F.dropout3d(x, 0.0, seed=7) is x


def test_dropout3d_takes_other_ranks_as_unbatched_with_pytorchs_warning(torch):
    """A rank other than 4 or 5 warns (as PyTorch's, also in eval mode and from the layer) and gets a
    batch axis of one: each entry of its first axis is a channel. A 0-D input is refused when
    training, as PyTorch's feature dropout refuses it."""
    x = draw((6, 5, 4), np.float32, 8) + 3
    with pytest.warns(UserWarning, match="dropout3d: Received a 3-D input to dropout3d, which is deprecated"):
        y = F.dropout3d(x, 0.5, seed=2)
    with pytest.warns(UserWarning, match="Received a 3-D input"):
        torch.nn.functional.dropout3d(torch.from_numpy(x), 0.5)
    np.testing.assert_array_equal(y, F.dropout3d(x[None, :, None], 0.5, seed=2)[0, :, 0])
    for training in (True, False):
        with pytest.warns(UserWarning, match="Received a 2-D input"):
            nn.Dropout3d(0.5, seed=1).train(training)(x[0])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="Feature dropout requires at least 2 dimensions"):
        F.dropout3d(np.ones((), np.float32), 0.5, seed=0)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="Feature dropout requires at least 2"):
        torch.nn.functional.dropout3d(torch.ones(()), 0.5)


def test_the_dropout3d_layer_draws_a_mask_a_step():
    layer = nn.Dropout3d(0.5, seed=11)
    x = draw((2, 6, 2, 2, 3), np.float32, 7) + 3
    first = layer(x)
    layer.backward(np.ones_like(x))
    second = layer(x)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)) != 0, second != 0)
    assert layer.eval()(x) is x and int(layer.step) == 2
