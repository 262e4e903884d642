"""Arguments refused before anything runs: learning-rate schedules with a non-finite or
non-positive base rate, augmentation sizes past the kernel's 32-bit row and column indices, and
planes past the augmentation and pooling kernels' 32-bit pixel indices."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from cnn_gpu.gpu import augment
from cnn_gpu.lr_scheduler import WarmupCosine


@pytest.mark.parametrize("base_lr, error", [(float("inf"), ValueError), (float("nan"), ValueError),
                                            (-0.1, ValueError), (0.0, ValueError), ("0.1", TypeError)])
def test_warmup_cosine_refuses_bad_base_rates(base_lr, error):
    with pytest.raises(error, match="base_lr"):
        WarmupCosine(None, base_lr, epochs=3, steps_per_epoch=2)


def _image(h, w):
    """An (1, 1, h, w) float32 batch without h*w elements behind it (the launcher reads its shape
    only before refusing)."""
    return as_strided(np.zeros(1, np.float32), shape=(1, 1, h, w), strides=(0, 0, 0, 0))


@pytest.mark.parametrize("h, w", [(1, 2**31 - 3), (2**31 - 3, 1)])
def test_augment_refuses_sides_that_reach_2_to_the_31_with_the_padding(h, w):
    with pytest.raises(ValueError, match="plus padding 4 reaches 2\\^31"):
        augment.random_crop_flip("emu", _image(h, w), 1, 2, 4, True)


def test_augment_takes_a_long_row_that_stays_below_2_to_the_31():
    x = np.random.default_rng(1).standard_normal((1, 2, 1, 70)).astype(np.float32)
    assert augment.random_crop_flip("emu", x, 1, 2, 4, True).shape == x.shape


def test_augment_and_pools_refuse_a_plane_of_2_to_the_31_pixels_before_any_launch(monkeypatch):
    """Their kernels index a plane's pixels with 32-bit ints (gpu._grid.check_planes): a plane of
    2^31 pixels is refused, naming it (an average pool's padded output too)."""
    from cnn_gpu import backend, functional as F
    launched = []
    monkeypatch.setattr(backend, "launch", lambda *args, **kw: launched.append(args))
    with pytest.raises(ValueError, match="the image plane has 2147483648 pixels"):
        augment.random_crop_flip("emu", _image(2**16, 2**15), 1, 2, 0, True)
    with pytest.raises(ValueError, match="pooling kernels .* the input plane has 2147483648 pixels"):
        F.max_pool2d(_image(2**16, 2**15), 2, backend="emu")
    with pytest.raises(ValueError, match="pooling kernels .* the output plane has 2147483648 pixels"):
        F.avg_pool2d(_image(2**16 - 1, 2**15 - 1), 2, stride=1, padding=1, backend="emu")
    assert not launched
