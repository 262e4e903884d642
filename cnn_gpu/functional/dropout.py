"""dropout and its backward pass with a counter-based mask (torch.nn.functional.dropout's scaling).

Element i is kept when the Philox4x32-10 number of (seed, step, i) (cnn_gpu.philox) is at least
round(p * 2^32), and scaled by 1 / (1 - p). The mask is a pure function of (seed, step, i): numpy,
emu and cuda draw the same one bit for bit, and the backward pass regenerates it instead of
storing it. Dropped elements are multiplied by 0, so NaN and inf stay NaN (as PyTorch).
float16 multiplies by the FP32 scale and rounds once: the same mask as float32 for the same seed.

dropout2d (torch.nn.functional.dropout2d) keeps or drops whole (n, c) planes: plane n * C + c takes
the number dropout's element n * C + c would, one Philox number a plane.
dropout1d and dropout3d drop the same planes of their (N, C, *) inputs.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import backend as _backend
from .. import philox
from . import _checks
from ._float16 import takes_float16


def check_probability(p) -> float:
    """p as a float in [0, 1] (PyTorch's message otherwise)."""
    p = _checks.real_number(p, "dropout probability p")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p!r}")
    return p


def _mask_parameters(p: float, dtype):
    """(threshold, scale): keep numbers >= threshold and multiply them by scale, which is
    1 / (1 - p) divided in the dtype as PyTorch does it (0 for p = 1)."""
    threshold = min(round(p * 2**32), 2**32)
    real = np.dtype(dtype).type
    return threshold, real(0) if p == 1 else real(1) / real(1.0 - p)


def _apply(a, name, p, seed, step, backend, per_plane=False):
    """a through the mask of (seed, step): one number per element, or per (n, c) plane (a's first
    two axes) where per_plane."""
    _checks.array(a, name)
    seed = philox.check_seed(seed, "seed")
    step = philox.check_seed(step, "step")
    be = _backend.resolve(backend, a)
    threshold, scale = _mask_parameters(p, _backend.compute_dtype(a.dtype))
    if be == "numpy":
        count, shape = (a.shape[0] * a.shape[1], a.shape[:2] + (1,) * (a.ndim - 2)) if per_plane else (a.size, a.shape)
        keep = philox.element_numbers(seed, step, count).astype(np.int64) >= threshold
        with np.errstate(invalid="ignore"):   # a dropped inf gives NaN, as in PyTorch
            return np.asarray(a * np.where(keep, scale, a.dtype.type(0)).reshape(shape))   # 0-d: an array
    from ..gpu import dropout as gpu_dropout
    launch = gpu_dropout.apply_planes if per_plane else gpu_dropout.apply
    return launch(be, _checks.for_kernels(be, a, name), seed, step, threshold, scale)


def _dropped(a, name, p, training, seed, step, backend, per_plane=False):
    """a through the mask (_apply), or a itself, its seed and step still checked, when not training
    or p == 0."""
    if not _checks.flag(training, "training") or p == 0:
        _checks.array(a, name)
        philox.check_seed(seed, "seed")
        philox.check_seed(step, "step")
        return a
    return _apply(a, name, p, seed, step, backend, per_plane)


@takes_float16(kernels=True)
def dropout(x, p=0.5, training=True, *, seed, step=0, backend=None):
    """torch.nn.functional.dropout(x, p, training) with the mask of (seed, step): elements kept
    with probability 1 - p and scaled by 1 / (1 - p). x itself when not training or p == 0."""
    return _dropped(x, "x", check_probability(p), training, seed, step, backend)


@takes_float16(kernels=True)
def dropout_backward(dy, p, seed, step=0, *, backend=None):
    """Gradient of dropout(x, p, training=True, seed=seed, step=step): dy through the same mask and
    scale (regenerated from seed and step)."""
    return _dropped(dy, "dy", check_probability(p), True, seed, step, backend)


def _warn_of_rank(ndim: int, spatial: int) -> None:
    """PyTorch 2.13's deprecation warning of dropout2d (spatial=2) or dropout3d (3) on another rank;
    stacklevel 5 names the caller of the F.dropout2d / F.dropout3d or the layer that checked."""
    op = f"dropout{spatial}d"
    warnings.warn(f"{op}: Received a {ndim}-D input to {op}, which is deprecated and will result in an error in a "
                  f"future release. To retain the behavior and silence this warning, please use dropout instead. "
                  f"Note that {op} exists to provide channel-wise dropout on inputs with {spatial} spatial "
                  f"dimensions, a channel dimension, and an optional batch dimension (i.e. {spatial + 1}D or "
                  f"{spatial + 2}D inputs).", stacklevel=5)


def check_planes_input(a, name, warn=True):
    """PyTorch 2.13's rank rules of feature dropout: a rank of 2 or more (the (n, c) axes), refused
    below; where `warn` (the forward's calls), its warnings: a rank other than 3 or 4 is deprecated,
    and a 3-D input is (N, C, L), its planes dropped as dropout1d drops them, not an unbatched
    (C, H, W) image. The warning names the caller of F.dropout2d or nn.Dropout2d."""
    _checks.array(a, name)
    if a.ndim < 2:
        raise ValueError(f"Feature dropout requires at least 2 dimensions in the input: {name} has shape "
                         f"{tuple(a.shape)}")
    if warn and a.ndim not in (3, 4):
        _warn_of_rank(a.ndim, 2)
    if warn and a.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior "
                      "is desired - input is interpreted as shape (N, C, L), where C is the channel dim. This behavior "
                      "will change in a future release to interpret the input as one without a batch dimension, i.e. "
                      "shape (C, H, W). To maintain the 1D channel-wise dropout behavior, please switch to using "
                      "dropout1d instead.", stacklevel=4)


@takes_float16(kernels=True)
def dropout2d(x, p=0.5, training=True, *, seed, step=0, backend=None):
    """torch.nn.functional.dropout2d(x, p, training) with the mask of (seed, step): each (n, c)
    plane of an (N, C, H, W) input kept with probability 1 - p and scaled by 1 / (1 - p), or zeroed.
    As PyTorch 2.13: a 3-D input is (N, C, L) (a warning says so), other ranks of 2 or more work
    the same way on their first two axes with a deprecation warning, ranks below 2 are refused.
    x itself when not training or p == 0."""
    p = check_probability(p)
    check_planes_input(x, "x")
    return _dropped(x, "x", p, training, seed, step, backend, per_plane=True)


@takes_float16(kernels=True)
def dropout2d_backward(dy, p, seed, step=0, *, backend=None):
    """Gradient of dropout2d(x, p, training=True, seed=seed, step=step): dy through the same plane
    mask and scale (regenerated from seed and step)."""
    p = check_probability(p)
    check_planes_input(dy, "dy", warn=False)
    return _dropped(dy, "dy", p, True, seed, step, backend, per_plane=True)


def check_signal_input(a, name):
    """PyTorch 2.13's rank rule of dropout1d: (N, C, L) or unbatched (C, L)."""
    _checks.array(a, name)
    if a.ndim not in (2, 3):
        raise ValueError(f"dropout1d: Expected 2D or 3D input, but received a {a.ndim}D input. Note that dropout1d "
                         "exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel "
                         "dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")


@takes_float16(kernels=True)
def dropout1d(x, p=0.5, training=True, *, seed, step=0, backend=None):
    """torch.nn.functional.dropout1d(x, p, training) with the mask of (seed, step): each (n, c)
    channel of an (N, C, L) signal (of a (C, L) one: each channel) kept with probability 1 - p and
    scaled by 1 / (1 - p), or zeroed: dropout2d's planes, without its rank warnings. x itself when
    not training or p == 0."""
    p = check_probability(p)
    check_signal_input(x, "x")
    return _signal_dropped(x, "x", p, training, seed, step, backend)


@takes_float16(kernels=True)
def dropout1d_backward(dy, p, seed, step=0, *, backend=None):
    """Gradient of dropout1d(x, p, training=True, seed=seed, step=step): dy through the same channel
    mask and scale."""
    p = check_probability(p)
    check_signal_input(dy, "dy")
    return _signal_dropped(dy, "dy", p, True, seed, step, backend)


def _signal_dropped(a, name, p, training, seed, step, backend):
    """_dropped's plane masks of an (N, C, L) signal, or of a (C, L) one as its (1, C, L) view."""
    return _channels_dropped(a, name, p, training, seed, step, backend, batched_rank=3)


def _channels_dropped(a, name, p, training, seed, step, backend, batched_rank):
    """_dropped's plane masks of `a`, viewed with a batch axis of one unless its rank is
    `batched_rank` (PyTorch's is_batched)."""
    batched = a if a.ndim == batched_rank else a[None]
    if batched.ndim < 2 and _checks.flag(training, "training") and p != 0:
        raise ValueError(f"Feature dropout requires at least 2 dimensions in the input: {name} has shape "
                         f"{tuple(a.shape)}")
    dropped = _dropped(batched, name, p, training, seed, step, backend, per_plane=True)
    return a if dropped is batched else dropped.reshape(a.shape)


def check_volumes_input(a, name, warn=True):
    """PyTorch 2.13's rank rule of dropout3d: (N, C, D, H, W) or unbatched (C, D, H, W); where `warn`
    (the forward's calls), other ranks warn and are taken as unbatched (a batch axis of one added).
    The warning names the caller of F.dropout3d or nn.Dropout3d."""
    _checks.array(a, name)
    if warn and a.ndim not in (4, 5):
        _warn_of_rank(a.ndim, 3)


@takes_float16(kernels=True)
def dropout3d(x, p=0.5, training=True, *, seed, step=0, backend=None):
    """torch.nn.functional.dropout3d(x, p, training) with the mask of (seed, step): each (n, c)
    volume of an (N, C, D, H, W) input (each channel of a (C, D, H, W) one) kept with probability
    1 - p and scaled by 1 / (1 - p), or zeroed: dropout2d's plane masks. As PyTorch 2.13: other
    ranks warn and are taken as unbatched (their first axis the channels). x itself when not
    training or p == 0."""
    p = check_probability(p)
    check_volumes_input(x, "x")
    return _channels_dropped(x, "x", p, training, seed, step, backend, batched_rank=5)


@takes_float16(kernels=True)
def dropout3d_backward(dy, p, seed, step=0, *, backend=None):
    """Gradient of dropout3d(x, p, training=True, seed=seed, step=step): dy through the same
    channel mask and scale."""
    p = check_probability(p)
    check_volumes_input(dy, "dy", warn=False)
    return _channels_dropped(dy, "dy", p, True, seed, step, backend, batched_rank=5)
