"""F.dropout1d / nn.Dropout1d (channel dropout of signals: dropout2d's plane masks on (N, C, L) and
(C, L) inputs, without its rank warnings) and F.adaptive_max_pool1d / nn.AdaptiveMaxPool1d (the 2-D
kernels on the (N, C, 1, L) view) against PyTorch 2.13 and the 2-D ops they run."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn
from helpers import needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]


def draw(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("shape, out", [((2, 3, 10), 4), ((3, 7), 7), ((2, 2, 5), 8), ((1, 4, 9), 1)])
def test_adaptive_max_pool1d_is_pytorchs(shape, out, dtype, be, torch):
    """Values, indices (positions within L) and the gradient (overlapping windows sum where
    output > L), batched and unbatched."""
    x, dy_shape = draw(shape, dtype, 1), shape[:-1] + (out,)
    y, indices = F.adaptive_max_pool1d(x, out, backend=be)
    dy = draw(dy_shape, dtype, 2)
    dx = F.adaptive_max_pool1d_backward(dy, indices, shape, backend=be)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty, tindices = torch.nn.functional.adaptive_max_pool1d(tx, out, return_indices=True)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    assert y.dtype == dx.dtype == dtype and indices.dtype == np.int32 and y.shape == dy_shape
    np.testing.assert_array_equal(y, ty.detach().numpy().astype(dtype))
    np.testing.assert_array_equal(indices, tindices.numpy())
    want = tx.grad.numpy()
    tolerance = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(dx.astype(np.float64), want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("be", BACKENDS)
def test_the_layer_and_its_returned_indices(be, torch):
    x = draw((2, 3, 11), np.float32, 3)
    layer = nn.AdaptiveMaxPool1d(4, return_indices=True).to(be)
    assert repr(layer) == repr(torch.nn.AdaptiveMaxPool1d(4, return_indices=True))
    y, indices = layer(x)
    dy = draw(y.shape, np.float32, 4)
    np.testing.assert_array_equal(layer.backward(dy), F.adaptive_max_pool1d_backward(dy, indices, x.shape))
    plain = nn.AdaptiveMaxPool1d([3]).to(be)
    assert plain(x).shape == (2, 3, 3) and plain.output_size == (3,)
    bad = indices.copy()
    bad[1, 2, 3] = 2   # output 3 of 4 over 11 covers [8, 11)
    with pytest.raises(ValueError, match=r"indices\[1, 2, 3\] = 2 is not a pixel of its window; indices must be "
                                         r"those adaptive_max_pool1d returned for an input of shape \(2, 3, 11\)"):
        F.adaptive_max_pool1d_backward(dy, bad, x.shape, backend=be)
    bad = indices[0].copy()
    bad[0, 0] = 5   # unbatched, output 0 covers [0, 3)
    with pytest.raises(ValueError, match=r"indices\[0, 0\] = 5 .* shape \(3, 11\)"):
        F.adaptive_max_pool1d_backward(dy[0], bad, x.shape[1:], backend=be)
    with pytest.raises(ValueError, match="output_size"):
        nn.AdaptiveMaxPool1d((2, 3))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dropout1d_drops_whole_channels_as_dropout2d_does(dtype, be):
    """Each (n, c) channel kept and scaled by 1 / (1 - p), or zeroed whole; the same mask as
    dropout2d's of the (N, C, L) input (whose warning it does not give); an unbatched (C, L) signal is
    the one sample of its (1, C, L) view; the backward applies the same mask."""
    x = draw((4, 16, 9), dtype, 5) + dtype(3)   # no zeros, so a kept channel is wholly non-zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = F.dropout1d(x, 0.4, seed=7, step=3, backend=be)
        dx = F.dropout1d_backward(x, 0.4, seed=7, step=3, backend=be)
        unbatched = F.dropout1d(x[0], 0.4, seed=7, step=3, backend=be)
    kept = (y != 0).all(axis=2)
    assert ((y == 0).all(axis=2) | kept).all() and 0 < kept.mean() < 1
    scaled = (x.astype(np.float32) * (np.float32(1) / np.float32(1 - 0.4))).astype(dtype)   # FP32, rounded once
    np.testing.assert_array_equal(y[kept], scaled[kept])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # dropout2d's 3-D warning
        np.testing.assert_array_equal(y, F.dropout2d(x, 0.4, seed=7, step=3, backend=be))
    np.testing.assert_array_equal(dx, y)
    np.testing.assert_array_equal(unbatched, F.dropout1d(x[:1], 0.4, seed=7, step=3, backend=be)[0])
    assert F.dropout1d(x, 0.4, training=False, seed=7) is x and F.dropout1d(x, 0.0, seed=7) is x


def test_dropout1d_scales_kept_channels_by_pytorchs_factor():
    x = draw((3, 8, 5), np.float64, 6) + 3
    y = F.dropout1d(x, 0.25, seed=1, step=0)
    kept = (y != 0).all(axis=2)
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-15)


def test_the_dropout1d_layer_steps_and_refuses_other_ranks_in_every_mode():
    layer = nn.Dropout1d(0.5, seed=11)
    x = draw((2, 6, 4), np.float32, 7) + 3
    first = layer(x)
    layer.backward(np.ones_like(x))
    second = layer(x)
    assert not np.array_equal(first, second)   # a new mask each training call
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)) != 0, second != 0)
    assert layer.eval()(x) is x
    for mode in (True, False):
        layer.train(mode)
        with pytest.raises(ValueError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
            layer(np.ones((1, 2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="received a 1D input"):
        F.dropout1d(np.ones(3, np.float32), 0.5, seed=0)
