"""The transposed convolution layers of every rank share one forward/backward (nn.layers._ConvTranspose):
forward(x, output_size=None) with PyTorch's output_size rule on ConvTranspose1d and ConvTranspose2d
(ConvTranspose3d's in test_conv_transpose3d), values and gradients against torch.nn given our initial
weights, the call's output padding kept for its backward; PyTorch's refusals of output_size."""
import numpy as np
import pytest

from cnn_gpu import nn
from helpers import assert_transposed_layer_matches_torch, needs_emu

CASES = [   # (rank, constructor settings, x shape, output_size)
    (1, dict(stride=3, padding=1), (2, 4, 5), (14,)),
    (1, dict(stride=2, dilation=2, groups=2), (4, 6), [6, 16]),            # unbatched, the whole shape
    (1, dict(stride=2, output_padding=1), (2, 4, 5), None),                 # the layer's own
    (2, dict(stride=(2, 3), padding=(1, 0)), (2, 4, 3, 4), (6, 13)),
    (2, dict(stride=2, groups=2, bias=False), (4, 3, 2), [6, 8, 6]),        # unbatched, the whole shape
    (2, dict(stride=2, dilation=(1, 2)), (1, 4, 3, 3), [1, 6, 7, 10]),
]


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("rank, settings, x_shape, output_size", CASES)
def test_output_size_matches_torch(torch, rank, settings, x_shape, output_size, be):
    rng = np.random.default_rng(rank * 10 + len(x_shape))
    ours = getattr(nn, f"ConvTranspose{rank}d")(4, 6, 3, dtype=np.float64, rng=rng, **settings)
    ours.backend = be
    theirs = getattr(torch.nn, f"ConvTranspose{rank}d")(4, 6, 3, dtype=torch.float64, **settings)
    assert_transposed_layer_matches_torch(torch, ours, theirs, rng.standard_normal(x_shape), output_size, str(settings))


@pytest.mark.parametrize("rank", [1, 2])
def test_output_size_refused_as_torch_refuses(torch, rank):
    layer = getattr(nn, f"ConvTranspose{rank}d")(2, 3, 3, stride=2)
    theirs = getattr(torch.nn, f"ConvTranspose{rank}d")(2, 3, 3, stride=2)
    x = np.random.default_rng(rank).standard_normal((1, 2) + (4,) * rank).astype(np.float32)
    for output_size, message in (((12,) * rank, "valid sizes range from"), ((9,) * (rank + 1), "must have")):
        with pytest.raises(ValueError, match=message):
            theirs(torch.tensor(x), output_size=output_size)
        with pytest.raises(ValueError, match=message):
            layer(x, output_size=output_size)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_padding_mode_refused_with_the_class_name(torch, rank):
    for module in (nn, torch.nn):
        with pytest.raises(ValueError, match=f'Only "zeros" padding mode is supported for ConvTranspose{rank}d'):
            getattr(module, f"ConvTranspose{rank}d")(2, 3, 3, padding_mode="reflect")
