"""F.pad beyond the 2-D image (tests/test_pad.py has those): 1-D signals and 3-D volumes in every
mode, constant pads of any trailing dims (N and C too; negative pads crop; more than three padded
dims: the kernels' several launches), against a direct loop per output element in float64 and
against PyTorch (values and gradients, float64/32, float16 rounded once), finite differences, the
kernels under guard zones and the race check, PyTorch's refusals before any launch, the
nn.*Pad1d/3d layers against PyTorch's, and the step model's launches of those layers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
import test_pad
from helpers import needs_cuda, refuse_kernel_runs, refuse_launches
from test_pad import (BACKENDS, MODES, assert_cuda_matches_numpy, assert_emu_matches_numpy, assert_float16_rounded_once,
                      assert_layer_matches_pytorch, assert_matches_loops, assert_matches_pytorch, loop_source,
                      needs_emu)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def propose_any_rank(rng, mode, max_size):
    """(shape, pad): reflect/replicate/circular a batched or unbatched 1-D, 2-D or 3-D input;
    constant any rank from 1 to 5 with any number of its trailing dims."""
    if mode == "constant":
        ndim = int(rng.integers(1, 6))
        dims = int(rng.integers(1, ndim + 1))
    else:
        dims = int(rng.integers(1, 4))
        ndim = dims + int(rng.integers(1, 3))
    shape = tuple(int(s) for s in rng.integers(1, max_size + 1, ndim))
    return shape, tuple(int(p) for p in rng.integers(-max_size, max_size + 1, 2 * dims))


def draw(rng, mode, max_size=5):
    return test_pad.draw(rng, mode, max_size, propose_any_rank)


def loop_reference(x, pad, mode, value, dy=None):
    """y = pad(x) in float64, and dx for dy when given, output element by output element (each
    padded dim's source by test_pad.loop_source)."""
    pairs = list(zip(pad[::2], pad[1::2]))[::-1]
    first = x.ndim - len(pairs)
    y = np.zeros(x.shape[:first] + tuple(s + b + a for s, (b, a) in zip(x.shape[first:], pairs)))
    dx = np.zeros(x.shape)
    for index in itertools.product(*map(range, y.shape)):
        source = index[:first] + tuple(loop_source(mode, d - b, s, b, a)
                                       for d, s, (b, a) in zip(index[first:], x.shape[first:], pairs))
        if None in source:
            y[index] = value or 0.0
            continue
        y[index] = x[source]
        if dy is not None:
            dx[source] += dy[index]
    return y, dx


def test_the_loop_on_hand_worked_cases():
    x = np.arange(8.0).reshape(2, 2, 2)
    assert loop_reference(x, (0, 0, 0, 0, 1, 0), "constant", 9.0)[0][0].tolist() == [[9, 9], [9, 9]]
    assert loop_reference(x, (0, 0, 0, 0, 1, 0), "reflect", None)[0][0].tolist() == [[4, 5], [6, 7]]
    assert loop_reference(x, (0, 0, 0, 0, 0, 1), "circular", None)[0][2].tolist() == [[0, 1], [2, 3]]
    signal = np.arange(4.0).reshape(1, 4)
    assert loop_reference(signal, (2, -1), "replicate", None)[0].tolist() == [[0, 0, 0, 1, 2]]
    assert loop_reference(signal, (1, 0, 1, 1), "constant", 5.0)[0].tolist() == [[5] * 5, [5, 0, 1, 2, 3], [5] * 5]


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_against_the_loops(be, mode):
    rng = np.random.default_rng(30 + MODES.index(mode))
    for i in range(30 if be == "numpy" else 20):
        assert_matches_loops(rng, *draw(rng, mode), mode, be, loop_reference, f"config {i}")


# the limits: reflect's size - 1, circular's size and its crops, negative pads, odd sizes, pads of
# N and C, more than three padded dims (constant: the kernels' several launches), nothing padded
LIMITS = [((2, 3, 5), (4, 4), "reflect"), ((3, 7), (6, 6), "reflect"), ((2, 3, 3, 4, 5), (4, 4, 3, 3, 2, 2), "reflect"),
          ((3, 2, 5, 3), (-1, 2, 4, -3, 1, 0), "reflect"), ((2, 2, 3, 4, 5), (5, 5, 4, 4, 3, 3), "circular"),
          ((1, 3, 4, 5, 3), (-1, 2, 1, -1, -1, 2), "circular"), ((3, 5), (-2, 3), "circular"),
          ((2, 3, 4, 5, 3), (3, -2, 0, 4, -3, 5), "replicate"), ((2, 1, 7), (-6, 3), "replicate"),
          ((2, 3, 4, 5), (1, -2, 0, 0, 2, 1, 1, 1), "constant"), ((3, 2, 2, 3, 2), (1,) * 10, "constant"),
          ((2, 3, 4), (0, 0, 0, 0, -1, 2), "constant"), ((5,), (-2, 3), "constant"), ((2, 3, 4), (), "constant"),
          ((4, 3, 2, 3), (0, 0, 1, 0, 0, 0, -3, 1), "constant")]


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_pytorch(be, dtype):
    """Forward the same bits (a copy, or the value in the dtype), backward within tolerance."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(34)
    cases = LIMITS + [(*draw(rng, mode)[:2], mode) for mode in MODES for _ in range(20 if be == "numpy" else 8)]
    for i, (shape, pad, mode) in enumerate(cases):
        value = -0.7 if mode == "constant" else None
        assert_matches_pytorch(torch, rng, shape, pad, mode, value, dtype, be, f"case {i}")


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_forward_bits_and_gradient_rounded_once(be):
    """float16 volumes, signals and constant pads of N and C: the forward pass PyTorch's half bits,
    the gradient the exact (float64) sum rounded once to float16."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(35)
    for shape, pad, mode in [((2, 3, 4, 5, 3), (2, 2, 4, 4, 3, 3), "reflect"), ((2, 3, 4, 5), (5, 5, 4, 4, 3, 3),
                                                                                    "circular"),
                             ((3, 5), (6, 4), "replicate"), ((2, 3, 4, 5), (1, 2, -1, 3, 2, 0, 1, 1), "constant")]:
        assert_float16_rounded_once(torch, rng, shape, pad, mode, be)


def test_finite_differences():
    rng = np.random.default_rng(36)
    for shape, pad, mode in [((2, 3, 4, 3), (2, 1, 3, 0, -1, 2), "reflect"), ((2, 5), (4, -2), "reflect"),
                             ((2, 3, 4, 3), (-1, 2, 3, 1, 1, -1), "circular"), ((2, 3, 5), (5, 1), "replicate"),
                             ((2, 3, 2, 3), (1, -1, 2, 0, -1, 1, 1, 2), "constant")]:
        x = rng.standard_normal(shape)
        report = check_op(lambda x: F.pad(x, pad, mode, 0.5 if mode == "constant" else None),
                          lambda dy, x: F.pad_backward(dy, x.shape, pad, mode), [x])
        assert report.max_rel_error < 1e-6, f"{shape} {pad} {mode}: {report}"


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_kernels_under_guard_zones_and_the_race_check(dtype):
    """Against the NumPy path with guard zones and the exact race check under a random schedule,
    the limits and random volumes, signals and constant pads (several launches included)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(37)
    cases = LIMITS + [(*draw(rng, mode, max_size=4)[:2], mode) for mode in MODES for _ in range(4)]
    with emu.checking(guard=True, race=True, schedule="random", seed=5):
        for shape, pad, mode in cases:
            assert_emu_matches_numpy(rng, shape, pad, 1.25 if mode == "constant" else None, mode, dtype)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_cuda_matches_numpy(dtype):
    rng = np.random.default_rng(40)
    for shape, pad, mode in LIMITS + [(*draw(rng, mode)[:2], mode) for mode in MODES for _ in range(15)]:
        assert_cuda_matches_numpy(rng, shape, pad, 0.75 if mode == "constant" else None, mode, dtype)


@pytest.mark.parametrize("be", BACKENDS)
def test_launches(be, monkeypatch):
    """One launch a pass for up to three padded axes (a volume, or constant dims that merge into
    three axes), two for constant pads of four separate dims; an empty batch runs none."""
    launched = []
    monkeypatch.setattr(backend, "launch", lambda be, family, dtype, kernel, *args: launched.append(kernel))
    x = np.ones((2, 3, 4, 5, 6), np.float32)
    for pad, mode, count in [((1, 1, 1, 1, 1, 1), "reflect", 1), ((1, 1, 0, 0, 1, 1, 0, 0, 1, 1), "constant", 1),
                             ((1, 1, 1, 1, 1, 1, 1, 1), "constant", 2)]:
        launched.clear()
        F.pad(x, pad, mode, backend=be)
        F.pad_backward(F.pad(x, pad, mode), x.shape, pad, mode, backend=be)
        assert launched == (["pad_forward"] * count + ["pad_backward"] * count if be != "numpy" else []), (pad, mode)
    monkeypatch.undo()   # the real backend.launch, whose kernels may not run
    refuse_kernel_runs(monkeypatch)
    assert F.pad(np.ones((0, 2, 3, 3, 3)), (1,) * 6, "circular", backend=be).shape == (0, 2, 5, 5, 5)


@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_before_any_launch(be, monkeypatch):
    refuse_launches(monkeypatch)
    volume, signal = np.ones((2, 3, 4, 5, 6)), np.ones((2, 3, 5))
    for call, error, match in [
        (lambda: F.pad(volume, (1, 1, 1, 1), "reflect"), NotImplementedError, "Padding size 4 .* for 5D input"),
        (lambda: F.pad(volume[0, 0], (1,) * 6, "replicate"), NotImplementedError, "Padding size 6 .* for 3D"),
        (lambda: F.pad(volume[0, 0, 0], (1,) * 6, "replicate"), ValueError, "less than or equal to two times"),
        (lambda: F.pad(np.ones((1, 2, 2, 2, 2, 2)), (1,) * 6, "circular"), NotImplementedError, "6 .* for 6D"),
        (lambda: F.pad(signal, (1,) * 8), ValueError, "Padding length should be less than or equal to two times"),
        (lambda: F.pad(signal, (1,) * 5), ValueError, "Padding length must be divisible by 2"),
        (lambda: F.pad(volume, (0, 0, 0, 0, 4, 0), "reflect"), ValueError, r"Argument #8: .* \(4, 0\) at dimension 2"),
        (lambda: F.pad(volume, (0, 0, 5, 0, 0, 0), "reflect"), ValueError, r"Argument #6: .* \(5, 0\) at dimension 3"),
        (lambda: F.pad(signal, (0, 5), "reflect"), ValueError, r"Argument #4: .* \(0, 5\) at dimension 2"),
        (lambda: F.pad(volume, (0, 0, 0, 0, 0, 5), "circular"), ValueError, "wrapping around more than once"),
        (lambda: F.pad(volume, (0, 0, 0, 0, -1, 4), "circular"), ValueError, "wrapping around more than once"),
        (lambda: F.pad(volume, (0, 0, 0, 0, -4, 0), "replicate"), ValueError, "empty output"),
        (lambda: F.pad(signal, (-3, -3), "reflect"), ValueError, "empty output"),
        (lambda: F.pad(volume, (0, 0, 0, 0, 0, 0, 0, 0, -2, -1)), ValueError, "narrow"),
        (lambda: F.pad(volume, (0, 0, 0, 0, 0, 0, -3, 0)), ValueError, "empty output"),
        (lambda: F.pad(np.ones((2, 3, 0, 4, 5)), (1,) * 6, "reflect"), ValueError, "non-empty"),
        (lambda: F.pad(volume, (1,) * 6, "reflect", 0.5), ValueError, "doesn't take in value"),
        (lambda: F.pad_backward(np.ones((2, 3, 6, 7, 7)), volume.shape, (1,) * 6, "reflect"), ValueError,
         "dy must have shape"),
        (lambda: F.pad_backward(np.ones((2, 3, 6)), (2, 3, 5), (1, 1), "circular"), ValueError, "dy must have shape"),
    ]:
        with backend.use_backend(be), pytest.raises(error, match=match):
            call()


# --- the layers ----------------------------------------------------------------------------------

LAYERS = [(f"{kind}Pad{dims}d", args, mode, dims) for dims in (1, 3)
          for kind, args, mode in [("Zero", (), "constant"), ("Constant", (-1.5,), "constant"),
                                   ("Reflection", (), "reflect"), ("Replication", (), "replicate"),
                                   ("Circular", (), "circular")]]


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("name, args, mode, dims", LAYERS)
def test_layers_against_pytorch(be, name, args, mode, dims):
    """Batched and unbatched inputs, int and tuple padding (a negative pad where the mode takes
    one), the repr, no parameters, the gradient, and no gradient when none is asked for."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(38)
    paddings = (2, (3, 1), [0, 4]) if dims == 1 else (1, (1, 3, 0, 2, 2, 1), [2, -1, 1, 0, 0, 3])
    shapes = ((2, 3, 5), (3, 5)) if dims == 1 else ((2, 2, 4, 5, 6), (2, 4, 5, 4))
    for padding in paddings:
        layer, torch_layer = getattr(nn, name)(padding, *args).to(be), getattr(torch.nn, name)(padding, *args)
        assert_layer_matches_pytorch(torch, rng, layer, torch_layer, shapes, np.float64)


def test_layers_refuse_bad_padding_when_built():
    for make, error, match in [(lambda: nn.ReflectionPad1d((1, 2, 3, 4)), ValueError, r"2 ints \(left, right\)"),
                               (lambda: nn.ZeroPad3d((1, 2, 3, 4)), ValueError, "6 ints"),
                               (lambda: nn.CircularPad3d(1.0), ValueError, "6 ints"),
                               (lambda: nn.ReplicationPad1d((1, 2.0)), TypeError, "tuple of ints"),
                               (lambda: nn.ConstantPad1d(1, "x"), TypeError, "value")]:
        with pytest.raises(error, match=match):
            make()


@pytest.mark.torch
def test_benchmark_models_know_the_1d_and_3d_layers():
    """Their shapes, their launches (the kernels pad.cu holds: one each way) and a PyTorch mirror
    that computes what they do (a float64 Linear on the last dim at the end gives it its dtype)."""
    torch = pytest.importorskip("torch")
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    signal_model = nn.Sequential(nn.ReflectionPad1d((2, 1)), nn.ConstantPad1d(1, 0.5), nn.ZeroPad1d((-1, 2)),
                                 nn.ReplicationPad1d(2), nn.CircularPad1d((3, 0)), nn.Linear(18, 2, dtype=np.float64))
    volume_model = nn.Sequential(nn.ReflectionPad3d((1, 0, 2, 1, 0, 1)), nn.ConstantPad3d(1, -2.0),
                                 nn.ZeroPad3d((0, 0, -1, 0, 1, 1)), nn.ReplicationPad3d(1), nn.CircularPad3d(2),
                                 nn.Linear(14, 2, dtype=np.float64))
    rng = np.random.default_rng(39)
    source = backend.kernel_source("pad")
    for model, shape, outputs in [(signal_model, (2, 3, 5), [(2, 3, 8), (2, 3, 10), (2, 3, 11), (2, 3, 15),
                                                             (2, 3, 18)]),
                                  (volume_model, (2, 1, 3, 4, 5), [(2, 1, 4, 7, 6), (2, 1, 6, 9, 8), (2, 1, 8, 8, 8),
                                                                   (2, 1, 10, 10, 10), (2, 1, 14, 14, 14)])]:
        leaves = leaf_layers(model, shape)
        assert [shape_out for _, _, shape_out, _ in leaves][:-1] == outputs
        for layer in list(model)[:-1]:
            kernels = [kernel for kernel, _ in _layer_passes(layer, 1, 1, 8)]
            assert kernels == ["pad_forward", "pad_backward"], kernels
            assert all(f"\n{kernel}(" in source for kernel in kernels), kernels
        x = rng.standard_normal(shape)
        with torch.no_grad():
            np.testing.assert_allclose(torch_mirror(model, torch)(torch.tensor(x)).numpy(), model(x), rtol=1e-12)

