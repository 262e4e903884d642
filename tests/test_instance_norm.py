"""F.instance_norm / F.instance_norm_backward and nn.InstanceNorm1d / nn.InstanceNorm2d against
PyTorch 2.13: outputs, the three gradients and the running statistics (with the input's statistics
and with the running ones), on numpy and emu; the layers' input rules, state dicts, reprs, replay."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn, replay
from helpers import needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
# float64 against float64 PyTorch; float32 and float16 (FP32 math, rounded once) against the same
RTOL = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 2e-3}
SHAPES = [(2, 3, 5), (3, 4, 2, 3), (1, 2, 2, 3, 2)]


def draw(shape, dtype, seed, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def assert_close(got, want, dtype, what):
    want = np.asarray(want, np.float64)
    scale = np.abs(want).max() + 1
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                               err_msg=what)


def torchs(torch, x, dy, running, weight, bias, use_input_stats, momentum=0.1, eps=1e-5):
    """PyTorch's y, dx, dweight, dbias and running statistics, in float64 from the same values."""
    as_t = lambda a: None if a is None else torch.from_numpy(np.array(a, np.float64))   # noqa: E731
    tx, tw, tb = as_t(x).requires_grad_(), as_t(weight), as_t(bias)
    for t in (tw, tb):
        if t is not None:
            t.requires_grad_()
    rm, rv = (as_t(r) for r in running)
    ty = torch.nn.functional.instance_norm(tx, rm, rv, tw, tb, use_input_stats, momentum, eps)
    ty.backward(as_t(dy))
    grads = [None if t is None else t.grad.numpy() for t in (tw, tb)]
    return ty.detach().numpy(), tx.grad.numpy(), *grads, *(None if r is None else r.numpy() for r in (rm, rv))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("affine, tracked, use_input_stats", [(True, True, True), (False, False, True),
                                                               (True, False, True), (True, True, False),
                                                               (False, True, False)])
def test_functional_matches_pytorch(affine, tracked, use_input_stats, dtype, be, torch):
    for i, shape in enumerate(SHAPES):
        channels = shape[1]
        x = draw(shape, dtype, i, scale=2.0, shift=0.5)
        dy = draw(shape, dtype, 10 + i)
        weight, bias = (draw((channels,), dtype, 20 + i, shift=1.0), draw((channels,), dtype, 30 + i)) if affine \
            else (None, None)
        running = (draw((channels,), dtype, 40 + i), draw((channels,), dtype, 50 + i, scale=0.2, shift=1.5)) \
            if tracked else (None, None)
        want = torchs(torch, x, dy, running, weight, bias, use_input_stats)
        ours = tuple(None if r is None else r.copy() for r in running)
        y, mean, invstd = F.instance_norm(x, *ours, weight, bias, use_input_stats, 0.1, 1e-5, return_stats=True,
                                          backend=be)
        dx, dweight, dbias = F.instance_norm_backward(dy, x, *ours, weight, bias, use_input_stats, 1e-5,
                                                      save_mean=mean, save_invstd=invstd, backend=be)
        assert y.dtype == dx.dtype == dtype
        for got, expected, what in zip((y, dx, dweight, dbias, *ours), want, ("y", "dx", "dweight", "dbias",
                                                                                "running_mean", "running_var")):
            assert (got is None) == (expected is None), what
            if got is not None:
                assert got.dtype == dtype
                assert_close(got, expected, dtype, f"{shape} {what}")
        recomputed = F.instance_norm_backward(dy, x, *ours, weight, bias, use_input_stats, backend=be)
        for got, again in zip((dx, dweight, dbias), recomputed):
            assert (got is None) == (again is None)
            if got is not None:
                assert_close(again, got, dtype, "without the saved statistics")


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("kind, shape", [("InstanceNorm2d", (3, 4, 5, 6)), ("InstanceNorm1d", (2, 4, 7)),
                                         ("InstanceNorm2d", (4, 5, 6)), ("InstanceNorm1d", (4, 7))])
def test_layers_train_and_evaluate_as_pytorchs(kind, shape, be, torch):
    """Two training steps (the running statistics moving), then eval (normalised by them), batched
    and unbatched, with every option PyTorch's layers have; state dicts and reprs alike."""
    channels = shape[-3] if kind == "InstanceNorm2d" else shape[-2]
    for options in (dict(), dict(affine=True), dict(affine=True, track_running_stats=True, momentum=0.3),
                    dict(track_running_stats=True, momentum=None), dict(affine=True, bias=False, eps=1e-3)):
        ours = getattr(nn, kind)(channels, dtype=np.float64, **options).to(be)
        theirs = getattr(torch.nn, kind)(channels, **options).double()
        assert repr(ours) == repr(theirs) and list(ours.state_dict()) == list(theirs.state_dict())
        for p in ours.parameters():
            p.data[...] = draw(p.shape, np.float64, 5, shift=1.0)
        theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
        for step, training in enumerate((True, True, False)):
            ours.train(training)
            theirs.train(training)
            x, dy = draw(shape, np.float64, 60 + step, scale=3.0, shift=-1.0), draw(shape, np.float64, 70 + step)
            tx = torch.from_numpy(x).requires_grad_()
            ty = theirs(tx)
            ty.backward(torch.from_numpy(dy))
            ours.zero_grad()
            y = ours(x)
            dx = ours.backward(dy)
            what = f"{kind} {shape} {options} step {step}"
            assert_close(y, ty.detach().numpy(), np.float64, f"{what} y")
            assert_close(dx, tx.grad.numpy(), np.float64, f"{what} dx")
            for name, p in theirs.named_parameters():
                assert_close(getattr(ours, name).grad, p.grad.numpy(), np.float64, f"{what} d{name}")
                p.grad = None
            for name, b in theirs.named_buffers():
                assert_close(getattr(ours, name), b.numpy(), np.float64, f"{what} {name}")


def test_layers_refuse_and_warn_as_pytorchs():
    with pytest.raises(ValueError, match=r"expected 3D or 4D input \(got 2D input\)"):
        nn.InstanceNorm2d(3)(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        nn.InstanceNorm1d(3)(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"size at dim=1 to match num_features \(4\), but got: 3."):
        nn.InstanceNorm2d(4, affine=True)(draw((2, 3, 2, 2), np.float32, 0))
    with pytest.warns(UserWarning, match="input's size at dim=0 does not match num_features"):
        nn.InstanceNorm1d(4)(draw((2, 4), np.float32, 0))   # (C, L) = (2, 4): unbatched, as PyTorch reads it
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        nn.InstanceNorm2d(3)(np.ones((2, 3, 1, 1), np.float32))
    layer = nn.InstanceNorm2d(3, track_running_stats=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer(np.ones((2, 3, 1, 1), np.float32)).shape == (2, 3, 1, 1)   # the running statistics
    with pytest.raises(ValueError, match="running_mean and running_var to be defined when use_input_stats is false"):
        F.instance_norm(np.ones((2, 3, 4), np.float32), use_input_stats=False)
    with pytest.raises(ValueError, match="momentum must be None or in"):
        nn.InstanceNorm2d(3, momentum=2.0)


@needs_emu
def test_a_replayed_training_forward_moves_the_running_statistics_again():
    """The update of the running statistics is device work a replay redoes, from its new input."""
    layer = nn.InstanceNorm2d(3, affine=True, track_running_stats=True).to("emu")
    twin = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    x, new = draw((2, 3, 4, 4), np.float32, 1), draw((2, 3, 4, 4), np.float32, 2, shift=3.0)
    with replay.record() as recorded:
        layer.zero_grad()
        y = layer(x)
        layer.backward(draw(y.shape, np.float32, 3))
    x[...] = new
    recorded.replay()
    twin(draw((2, 3, 4, 4), np.float32, 1))
    twin(new)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(layer, name), getattr(twin, name), rtol=1e-6, err_msg=name)
