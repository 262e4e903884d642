"""Layers, containers and losses: wiring to F, PyTorch's initialisation, layer-by-layer agreement
with torch.nn (copied weights, forward and backward), whole-model finite differences, state dicts."""
import math

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import gradcheck, models, nn, optim
from cnn_gpu.backend import why_unavailable
from helpers import assert_same_bits


@pytest.fixture
def rng():
    return np.random.default_rng(20260101)


def _randn(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# --- initialisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Conv2d(16, 32, 3), 16 * 9),
    (lambda: nn.Conv2d(12, 24, (3, 5), groups=4), 3 * 15),
    (lambda: nn.ConvTranspose2d(20, 12, 3, groups=2), 6 * 9),   # PyTorch's fan-in: size(1) * kH * kW
    (lambda: nn.Linear(300, 100), 300),
])
def test_default_init_statistics(make, fan_in):
    nn.init.manual_seed(11)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound * (1 + 1e-6)
    w = layer.weight.data.astype(np.float64)
    # U(-b, b): mean 0, standard deviation b/sqrt(3), values reaching close to both ends
    assert abs(w.mean()) < 0.1 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert w.max() > 0.9 * bound and w.min() < -0.9 * bound
    assert np.unique(layer.bias.data).size == layer.bias.data.size


def test_init_is_seeded_and_rng_overrides():
    nn.init.manual_seed(5)
    a = nn.Conv2d(3, 4, 3)
    nn.init.manual_seed(5)
    b = nn.Conv2d(3, 4, 3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    c = nn.Conv2d(3, 4, 3)
    assert not np.array_equal(a.weight.data, c.weight.data)
    d, e = nn.Linear(5, 6, rng=9), nn.Linear(5, 6, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(d.weight.data, e.weight.data)
    f64 = nn.Linear(5, 6, dtype=np.float64, rng=9)
    assert f64.weight.dtype == np.float64
    np.testing.assert_array_equal(f64.weight.data.astype(np.float32), d.weight.data)


# --- wiring: a layer is its F call --------------------------------------------------------------

def test_layers_call_F_with_their_arguments(rng):
    x = _randn(rng, 2, 4, 9, 8)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2, dtype=np.float64)
    y = conv(x)
    np.testing.assert_array_equal(y, F.conv2d(x, conv.weight.data, conv.bias.data, (2, 1), (1, 2), (2, 1), 2))
    dy = _randn(rng, *y.shape)
    dx = conv.backward(dy)
    ref = F.conv2d_backward(dy, x, conv.weight.data, (2, 1), (1, 2), (2, 1), 2)
    for got, want in zip((dx, conv.weight.grad, conv.bias.grad), ref):
        np.testing.assert_array_equal(got, want)

    tconv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1,
                               dtype=np.float64)
    y = tconv(x)
    np.testing.assert_array_equal(y, F.conv_transpose2d(x, tconv.weight.data, tconv.bias.data, 2, 1, 1, 1, 2))
    dy = _randn(rng, *y.shape)
    dx = tconv.backward(dy)
    ref = F.conv_transpose2d_backward(dy, x, tconv.weight.data, 2, 1, 1, 1, 2)
    for got, want in zip((dx, tconv.weight.grad, tconv.bias.grad), ref):
        np.testing.assert_array_equal(got, want)

    pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
    y = pool(x)
    y_ref, indices = F.max_pool2d(x, 3, 2, 1, 1, True)
    np.testing.assert_array_equal(y, y_ref)
    dy = _randn(rng, *y.shape)
    np.testing.assert_array_equal(pool.backward(dy), F.max_pool2d_backward(dy, indices, x.shape, 3, 2, 1, 1, True))

    avg = nn.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)
    y = avg(x)
    np.testing.assert_array_equal(y, F.avg_pool2d(x, (2, 3), (1, 2), (1, 1), True, False))
    dy = _randn(rng, *y.shape)
    np.testing.assert_array_equal(avg.backward(dy), F.avg_pool2d_backward(dy, x.shape, (2, 3), (1, 2), (1, 1),
                                                                          True, False))

    leaky = nn.LeakyReLU(0.2)
    np.testing.assert_array_equal(leaky(x), F.leaky_relu(x, 0.2))
    np.testing.assert_array_equal(leaky.backward(x[::-1]), F.leaky_relu_backward(x[::-1], x, 0.2))


def test_model_on_a_backend_passes_it_to_every_F_call(monkeypatch, rng):
    seen = []

    def spy(name, real=None):
        real = real or getattr(F, name)

        def call(*args, backend=None, **kwargs):
            seen.append((name, backend))
            return real(*args, backend="numpy", **kwargs)
        return call

    model = models.small_cnn((1, 8, 8), 10, filters=4, dtype=np.float64, rng=0)
    loss_fn = nn.CrossEntropyLoss()
    import cnn_gpu.nn.layers as layers
    import cnn_gpu.nn.loss as loss_module
    for name in ("max_pool2d", "max_pool2d_backward", "linear", "linear_backward"):
        monkeypatch.setattr(layers.F, name, spy(name))
    monkeypatch.setattr(layers.Conv2d, "_op", staticmethod(spy("conv2d")))   # the layer's op, bound in its class
    monkeypatch.setattr(layers.Conv2d, "_op_backward", staticmethod(spy("conv2d_backward")))
    monkeypatch.setattr(layers, "max_pool2d_backward_of_own_indices",   # the layer's own indices: unchecked
                        spy("max_pool2d_backward", layers.max_pool2d_backward_of_own_indices))
    monkeypatch.setattr(layers.ReLU, "_forward", staticmethod(spy("relu")))
    monkeypatch.setattr(layers.ReLU, "_backward", staticmethod(spy("relu_backward")))
    monkeypatch.setattr(loss_module.CrossEntropyLoss, "_loss", staticmethod(spy("cross_entropy")))
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "")
    model.to("emu")
    loss_fn.to("emu")
    assert all(p.backend == "emu" for p in model.parameters())
    loss_fn(model(_randn(rng, 3, 1, 8, 8)), np.array([1, 2, 3]))
    model.backward(loss_fn.backward())
    assert {name for name, _ in seen} == {"conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
                                          "linear", "linear_backward", "relu", "relu_backward", "cross_entropy"}
    assert {backend for _, backend in seen} == {"emu"}


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("training", [True, False])
def test_sequential_runs_a_relu_after_a_batch_norm_inside_it(be, training, rng, monkeypatch):
    """Sequential(BatchNorm2d, ReLU) gives the values and gradients of the two layers run apart
    (float64: bitwise on numpy, the same formulas; to 1e-12 on emu, whose fused kernels differ
    in evaluation order), but the ReLU's own forward and backward never run: its two passes are
    the batch norm's. A ReLU subclass is run as itself."""
    from cnn_gpu import backend as backends
    if reason := backends.why_unavailable(be):
        pytest.skip(reason)
    x, dy = _randn(rng, 4, 3, 5, 6), _randn(rng, 4, 3, 5, 6)
    weight, bias, running_var = _randn(rng, 3), _randn(rng, 3), rng.uniform(0.5, 2, 3)

    def pair(relu_class):
        bn = nn.BatchNorm2d(3, dtype=np.float64)
        bn.weight.data[...], bn.bias.data[...], bn.running_var[...] = weight, bias, running_var
        model = nn.Sequential(bn, relu_class()).train(training)
        model.to(be)
        return model

    class OwnReLU(nn.ReLU):
        pass

    apart, fused = pair(OwnReLU), pair(nn.ReLU)
    relu_calls = []
    real_forward = nn.ReLU.forward
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, x: relu_calls.append(type(self)) or real_forward(self, x))
    y_apart, y_fused = apart(x), fused(x)
    dx_apart, dx_fused = apart.backward(dy), fused.backward(dy)
    assert relu_calls == [OwnReLU] and (y_fused == 0).any() and (y_fused > 0).any()
    tolerance = dict(rtol=0, atol=0) if be == "numpy" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_fused, y_apart, **tolerance)
    np.testing.assert_allclose(dx_fused, dx_apart, **tolerance)
    for a, b in zip(fused.parameters(), apart.parameters()):
        np.testing.assert_allclose(a.grad, b.grad, **tolerance)


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("activation_class", [nn.ReLU6, nn.Hardswish, nn.SiLU])
def test_sequential_runs_relu6_hardswish_and_silu_after_a_batch_norm_inside_it(be, dtype, activation_class, rng,
                                                                              monkeypatch):
    """Sequential(Conv2d, BatchNorm2d, ReLU6 / Hardswish / SiLU), MobileNet's and EfficientNet's
    block, in training and eval: the activation layer's forward and backward never run and a step
    launches two kernels fewer (the activation's pass each way; the batch norm's kernels apply it);
    the output and every gradient are those of the activation run apart (a subclass, which
    Sequential runs as itself), float64 and float32 to their tolerances. float16: the output within
    a float16 ulp (fused, the activation's input is not rounded to float16 in between); not the
    gradients: apart, that rounding can move an input across a jump of the activation's slope
    (Hardswish's at -3 and 3, ReLU6's at 0 and 6) that the FP32 value lies on the other side of,
    changing that element's gradient by the jump (test_float16.py holds the fused float16 gradients
    to the NumPy oracle, which computes them as the kernels do)."""
    from cnn_gpu import backend
    if reason := why_unavailable(be):
        pytest.skip(reason)

    class Apart(activation_class):
        pass

    x, dy = _randn(rng, 2, 3, 5, 6, dtype=dtype), _randn(rng, 2, 4, 5, 6, dtype=dtype)
    seed = int(rng.integers(1 << 30))

    def build(layer_class, training):
        weights = np.random.default_rng(seed)
        norm = nn.BatchNorm2d(4, dtype=dtype)
        # normalised values past ReLU6's 6 and Hardswish's -3 and 3
        norm.weight.data[...], norm.bias.data[...] = weights.standard_normal(4) * 4, weights.standard_normal(4)
        # no convolution bias, as in those blocks: in training its gradient would be 0 but for rounding
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=dtype, rng=weights), norm,
                              layer_class())
        model.train(training).to(be)
        return model

    ran = []
    for method in ("forward", "backward"):
        real = getattr(activation_class, method)
        monkeypatch.setattr(activation_class, method, lambda self, *args, real=real, **kwargs:
                            ran.append(type(self)) or real(self, *args, **kwargs))
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args, **kwargs: launched.append(args[3])
                        or real_launch(*args, **kwargs))
    for training in (True, False):
        counts, results = [], []
        for layer_class in (Apart, activation_class):
            launched.clear()
            results.append(_step_results(build(layer_class, training), x, dy))
            counts.append(len(launched))
        assert ran == [Apart, Apart] and ran.clear() is None
        assert be == "numpy" or counts[1] == counts[0] - 2, counts
        if dtype == np.float16:   # y only: see the docstring
            got, want = (r[0].astype(np.float64) for r in reversed(results))
            assert np.abs(got - want).max() <= 2**-10 * max(1.0, np.abs(want).max()), training
            continue
        for got, want in zip(*reversed(results)):
            np.testing.assert_allclose(got, want, rtol=1e-12 if dtype == np.float64 else 1e-5,
                                       atol=1e-12 if dtype == np.float64 else 1e-5)


def test_only_a_batch_norm_and_these_activation_layers_of_their_own_classes_fuse():
    """fused_activation: BatchNorm1d/2d with ReLU, ReLU6, Hardswish, SiLU (by their F.batch_norm
    names); a Residual only with a ReLU; not a Hardtanh(0, 6), a ReLU6 whose bounds were changed, a
    subclass, another activation, or a layer with a hook."""
    from cnn_gpu.nn.containers import fused_activation
    norm = nn.BatchNorm2d(2)
    assert [fused_activation(norm, layer()) for layer in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)] == [
        "relu", "relu6", "hardswish", "silu"]
    assert fused_activation(nn.BatchNorm1d(2), nn.SiLU()) == "silu"
    moved = nn.ReLU6()
    moved.max_val = 5.0

    class OwnSiLU(nn.SiLU):
        pass

    for layer, following in ((norm, nn.Hardtanh(0.0, 6.0)), (norm, moved), (norm, OwnSiLU()), (norm, nn.GELU()),
                             (norm, nn.Hardsigmoid()), (nn.Residual(nn.Conv2d(2, 2, 1)), nn.SiLU()),
                             (nn.Residual(nn.Conv2d(2, 2, 1)), nn.ReLU6()), (nn.Conv2d(2, 2, 1), nn.ReLU6())):
        assert fused_activation(layer, following) is None, (layer, following)
    hooked = nn.Hardswish()
    hooked.register_forward_hook(lambda module, args, out: None)
    assert fused_activation(norm, hooked) is None
    assert fused_activation(nn.Residual(nn.Conv2d(2, 2, 1)), nn.ReLU()) == "relu"


class ApartReLU(nn.ReLU):
    """A ReLU subclass, which nn.Sequential runs as itself: a model built with it runs every ReLU
    apart, the reference of the fusions Sequential makes with nn.ReLU."""


def _apart_and_fused(build, be):
    """build(ApartReLU) and build(nn.ReLU) on backend `be` (build draws the same weights each call)."""
    if reason := why_unavailable(be):
        pytest.skip(reason)
    models = [build(relu_class) for relu_class in (ApartReLU, nn.ReLU)]
    for model in models:
        model.to(be)
    return models


def _step_results(model, x, dy, input_grad=True):
    """The output, the input gradient (where wanted) and every parameter's gradient of a forward
    and backward."""
    y = model(x)
    dx = model.backward(dy, input_grad=input_grad)
    return [y] + ([dx] if input_grad else []) + [p.grad for p in model.parameters()]


def _assert_same_bits(got, want, what=""):
    assert len(got) == len(want), what
    for a, b in zip(got, want):
        assert_same_bits(a, b, what)


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("with_shortcut", [False, True])
def test_sequential_runs_a_relu_after_a_residual_with_its_addition(be, dtype, with_shortcut, rng, monkeypatch):
    """Sequential(Residual, ReLU) gives the values and gradients (input and parameters) of the
    ReLU run apart, to the bit (the same sum, rounded once, and the same mask), but the ReLU's own
    forward and backward never run: F.add_relu adds and rectifies in one pass, the Residual's
    backward applies the ReLU's gradient. A ReLU subclass is run as itself."""
    out = 4 if with_shortcut else 3
    x, dy = _randn(rng, 2, 3, 5, 6).astype(dtype), _randn(rng, 2, out, 5, 6).astype(dtype)
    seed = int(rng.integers(1 << 30))

    def build(relu_class):
        weights = np.random.default_rng(seed)
        shortcut = nn.Conv2d(3, out, 1, dtype=dtype, rng=weights) if with_shortcut else None
        return nn.Sequential(nn.Residual(nn.Conv2d(3, out, 3, padding=1, dtype=dtype, rng=weights), shortcut),
                             relu_class())

    apart, fused = _apart_and_fused(build, be)
    relu_calls = []
    for method in ("forward", "backward"):
        real = getattr(nn.ReLU, method)
        monkeypatch.setattr(nn.ReLU, method, lambda self, *args, real=real, method=method, **kwargs:
                            relu_calls.append((type(self), method)) or real(self, *args, **kwargs))
    want, got = _step_results(apart, x, dy), _step_results(fused, x, dy)
    assert relu_calls == [(ApartReLU, "forward"), (ApartReLU, "backward")]
    assert (got[0] == 0).any() and (got[0] > 0).any() and got[0].dtype == dtype
    _assert_same_bits(got, want)


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("input_grad", [True, False])
def test_sequential_hands_a_residual_gradient_unsummed_to_the_residual_relu_before_it(be, dtype, input_grad, rng,
                                                                                       monkeypatch):
    """In Sequential(conv, Residual, ReLU, Residual, ReLU, Residual, ReLU) the second and third
    Residuals' input gradients (block plus shortcut) are not added: each pair goes to the residual
    ReLU before, whose backward adds it in its pass (F.relu_backward_of_sum). Values and gradients
    (input and parameters) are those of the ReLUs run apart, to the bit; one addition is left (the
    first Residual's, for the conv)."""
    from cnn_gpu.nn import containers
    x, dy = _randn(rng, 2, 3, 5, 6).astype(dtype), _randn(rng, 2, 4, 5, 6).astype(dtype)
    seed = int(rng.integers(1 << 30))

    def build(relu_class):
        weights = np.random.default_rng(seed)
        conv = lambda c, k: nn.Conv2d(c, 4, k, padding=k // 2, dtype=dtype, rng=weights)   # noqa: E731
        return nn.Sequential(conv(3, 3), nn.Residual(conv(4, 3)), relu_class(),
                             nn.Residual(conv(4, 3), conv(4, 1)), relu_class(), nn.Residual(conv(4, 3)),
                             relu_class())

    apart, fused = _apart_and_fused(build, be)
    calls = []
    for name in ("relu_backward", "relu_backward_of_sum"):
        real = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *args, real=real, name=name, **kwargs:
                            calls.append(name) or real(*args, **kwargs))
    real_sum = containers._sum
    monkeypatch.setattr(containers, "_sum", lambda a, b: calls.append("sum") or real_sum(a, b))
    want = _step_results(apart, x, dy, input_grad)
    assert calls.count("relu_backward_of_sum") == 0 and calls.count("sum") == 6   # three forward, three backward
    calls.clear()
    y = fused(x)
    calls.clear()
    dx = fused.backward(dy, input_grad=input_grad)
    assert sorted(calls) == ["relu_backward", "relu_backward_of_sum", "relu_backward_of_sum", "sum"]
    assert (dx is None) == (not input_grad)
    _assert_same_bits([y] + ([dx] if input_grad else []) + [p.grad for p in fused.parameters()], want)


@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_a_gradient_handed_on_in_another_layout_is_added_apart(be, rng, monkeypatch):
    """A block whose backward returns an F-ordered gradient (a user's module): the residual ReLU
    before adds the two summands apart and then takes its gradient, as without the hand-on (the
    kernels take C-ordered arrays, and a recording refuses copying one), to the same bits."""

    class FortranGradient(nn.Module):
        def forward(self, x):
            return x.copy()

        def backward(self, dy):
            return np.asfortranarray(dy)

    def build(relu_class):
        conv = nn.Conv2d(3, 3, 3, padding=1, dtype=np.float64, rng=np.random.default_rng(5))
        return nn.Sequential(nn.Residual(conv), relu_class(), nn.Residual(FortranGradient()), relu_class())

    apart, fused = _apart_and_fused(build, be)
    x, dy = _randn(rng, 2, 3, 5, 6), _randn(rng, 2, 3, 5, 6)
    calls = []
    real = F.relu_backward_of_sum
    monkeypatch.setattr(F, "relu_backward_of_sum", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    _assert_same_bits(_step_results(fused, x, dy), _step_results(apart, x, dy))
    assert calls == []


@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_sequential_fusions_give_the_bits_of_the_layers_run_apart_in_random_chains(be, rng):
    """Random chains of Residuals (with and without a shortcut, their ReLU or none), ReLUs, batch
    norms and convolutions, nested Sequentials among them: with every fusion nn.Sequential makes
    (ReLUs run inside the layer before, residual gradients handed on unsummed), the output and
    every gradient are those of the same chain with its ReLUs run apart, to the bit."""
    kinds = ["residual", "residual_shortcut", "relu", "batch_norm", "conv", "nested"]
    for trial in range(12):
        plan = [kinds[k] for k in rng.integers(0, len(kinds), int(rng.integers(2, 9)))]
        seed = int(rng.integers(1 << 30))

        def build(relu_class, plan=plan, seed=seed):
            weights = np.random.default_rng(seed)
            conv = lambda k=3: nn.Conv2d(4, 4, k, padding=k // 2, dtype=np.float64, rng=weights)   # noqa: E731
            norm = lambda: nn.BatchNorm2d(4, dtype=np.float64)   # noqa: E731
            make = {"residual": lambda: nn.Residual(conv()),
                    "residual_shortcut": lambda: nn.Residual(nn.Sequential(conv(), norm()), conv(1)),
                    "relu": relu_class, "batch_norm": norm, "conv": conv,
                    "nested": lambda: nn.Sequential(nn.Residual(conv()), relu_class(), nn.Residual(conv()))}
            return nn.Sequential(conv(), *(make[kind]() for kind in plan))

        apart, fused = _apart_and_fused(build, be)
        x, dy = _randn(rng, 2, 4, 5, 6), _randn(rng, 2, 4, 5, 6)
        input_grad = bool(trial % 3)
        _assert_same_bits(_step_results(fused, x, dy, input_grad), _step_results(apart, x, dy, input_grad), f"{plan}")


@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_max_pool_layer_checks_only_indices_its_caller_holds(be, rng, monkeypatch):
    """nn.MaxPool2d's backward takes the indices of its own forward as they are (checking them is a
    dozen launches and a read back that waits for a GPU, every step), unless return_indices=True
    handed them to the caller too; both give F.max_pool2d_backward's dx."""
    from cnn_gpu import backend as backends
    from cnn_gpu.functional import pool as pool_module
    if be == "emu" and backends.why_unavailable("emu"):
        pytest.skip(f"emulator unavailable: {backends.why_unavailable('emu')}")
    checked = []
    check = pool_module._check_indices
    monkeypatch.setattr(pool_module, "_check_indices", lambda *args: checked.append(1) or check(*args))
    x = _randn(rng, 2, 3, 7, 6)
    for return_indices in (False, True):
        layer = nn.MaxPool2d(3, stride=2, padding=1, return_indices=return_indices)
        layer.to(be)
        out = layer(x)
        indices = F.max_pool2d(x, 3, 2, 1, backend=be)[1]
        dy = _randn(rng, *indices.shape)
        checked.clear()
        dx = layer.backward(dy)
        assert len(checked) == return_indices, return_indices
        np.testing.assert_array_equal(dx, F.max_pool2d_backward(dy, indices, x.shape, 3, 2, 1, backend=be))
        assert len(checked) == return_indices + 1   # the functional op checks them
        if return_indices:
            np.testing.assert_array_equal(out[1], indices)


# --- against torch.nn, layer by layer -----------------------------------------------------------

def _torch_pairs():
    """(our layer, the torch.nn layer with the same arguments, input shape)."""
    import torch
    return [
        (nn.Conv2d(3, 4, 3, dtype=np.float64), torch.nn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
        (nn.Conv2d(4, 6, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, dtype=np.float64),
         torch.nn.Conv2d(4, 6, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), (3, 4, 6, 7)),
        (nn.Conv2d(4, 4, 3, padding="same", groups=4, bias=False, dtype=np.float64),
         torch.nn.Conv2d(4, 4, 3, padding="same", groups=4, bias=False), (2, 4, 5, 5)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dtype=np.float64),
         torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5, 4)),
        (nn.ConvTranspose2d(3, 2, (2, 3), dilation=2, bias=False, dtype=np.float64),
         torch.nn.ConvTranspose2d(3, 2, (2, 3), dilation=2, bias=False), (1, 3, 4, 5)),
        (nn.Linear(7, 5, dtype=np.float64), torch.nn.Linear(7, 5), (4, 7)),
        (nn.Linear(7, 5, bias=False, dtype=np.float64), torch.nn.Linear(7, 5, bias=False), (3, 7)),
        (nn.MaxPool2d(2), torch.nn.MaxPool2d(2), (2, 3, 6, 7)),
        (nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
         (2, 2, 7, 8)),
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
         torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 7, 8)),
        (nn.ReLU(), torch.nn.ReLU(), (3, 4, 5)),
        (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1), (3, 4, 5)),
        (nn.Sigmoid(), torch.nn.Sigmoid(), (3, 4, 5)),
        (nn.Tanh(), torch.nn.Tanh(), (3, 4, 5)),
        (nn.SiLU(), torch.nn.SiLU(), (3, 4, 5)),
        (nn.GELU(), torch.nn.GELU(), (3, 4, 5)),
        (nn.GELU("tanh"), torch.nn.GELU("tanh"), (3, 4, 5)),
        (nn.Softmax(1), torch.nn.Softmax(1), (3, 4, 5)),
        (nn.LogSoftmax(-1), torch.nn.LogSoftmax(-1), (3, 4, 5)),
        (nn.Flatten(), torch.nn.Flatten(), (2, 3, 4, 5)),
        (nn.Flatten(0, 2), torch.nn.Flatten(0, 2), (2, 3, 4, 5)),
        (nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2), (2, 3, 4, 5)),
        (nn.Upsample(size=(7, 3), mode="bilinear", align_corners=True),
         torch.nn.Upsample(size=(7, 3), mode="bilinear", align_corners=True), (2, 2, 4, 5)),
        (nn.Upsample(scale_factor=(1.5, 0.7), mode="bilinear"),
         torch.nn.Upsample(scale_factor=(1.5, 0.7), mode="bilinear"), (1, 2, 5, 6)),
        (nn.Upsample(scale_factor=(1.5, 0.7), mode="bicubic"),
         torch.nn.Upsample(scale_factor=(1.5, 0.7), mode="bicubic"), (1, 2, 5, 6)),
        (nn.Upsample(size=(8, 3), mode="bicubic", align_corners=True),
         torch.nn.Upsample(size=(8, 3), mode="bicubic", align_corners=True), (2, 2, 4, 5)),
        (nn.Upsample(scale_factor=(1.7, 0.5), mode="nearest-exact"),
         torch.nn.Upsample(scale_factor=(1.7, 0.5), mode="nearest-exact"), (2, 3, 4, 6)),
        (nn.Upsample(size=(3, 2), mode="area"), torch.nn.Upsample(size=(3, 2), mode="area"), (2, 3, 7, 5)),
    ]


def _copy_weights_to_torch(ours, theirs):
    import torch
    theirs.double()
    with torch.no_grad():
        theirs.load_state_dict({name: torch.from_numpy(value) for name, value in ours.state_dict().items()})


def _compare_with_torch(ours, theirs, x, rng, rtol=1e-11):
    import torch
    _copy_weights_to_torch(ours, theirs)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    y = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol)
    dy = _randn(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    ours.zero_grad()
    dx = ours.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=rtol)
    grads = dict(ours.named_parameters())
    for name, tp in theirs.named_parameters():
        np.testing.assert_allclose(grads[name].grad, tp.grad.numpy(), rtol=rtol, atol=rtol, err_msg=name)


TORCH_PAIRS = 28   # len(_torch_pairs()), which needs torch: a pair added past it fails the test below


@pytest.mark.torch
@pytest.mark.parametrize("index", range(TORCH_PAIRS))
def test_layer_matches_torch(index, rng):
    pytest.importorskip("torch", reason="torch is not installed")
    pairs = _torch_pairs()
    assert len(pairs) == TORCH_PAIRS, "update TORCH_PAIRS: pairs past it are never compared"
    ours, theirs, shape = pairs[index]
    _compare_with_torch(ours, theirs, _randn(rng, *shape), rng)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_models_match_torch(name, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    ours = models.build(name, (1, 10, 9), 7, dtype=np.float64, rng=3)
    theirs = _torch_model(torch, ours)
    _compare_with_torch(ours, theirs, _randn(rng, 3, 1, 10, 9), rng)


def _torch_model(torch, module):
    """The torch.nn twin of one of our modules (same structure and names, untrained weights)."""
    if isinstance(module, nn.Sequential):
        return torch.nn.Sequential(*[_torch_model(torch, m) for m in module])
    if isinstance(module, nn.Residual):
        class TorchResidual(torch.nn.Module):
            def __init__(self, block, shortcut):
                super().__init__()
                self.block, self.shortcut = block, shortcut

            def forward(self, x):
                return self.block(x) + (x if self.shortcut is None else self.shortcut(x))
        return TorchResidual(_torch_model(torch, module.block),
                             None if module.shortcut is None else _torch_model(torch, module.shortcut))
    if isinstance(module, nn.Conv2d):
        return torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                               module.padding, module.dilation, module.groups, module.bias is not None)
    if isinstance(module, nn.Linear):
        return torch.nn.Linear(module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.MaxPool2d):
        return torch.nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                                  ceil_mode=module.ceil_mode)
    if isinstance(module, nn.AvgPool2d):
        return torch.nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                  module.count_include_pad)
    if isinstance(module, nn.BatchNorm2d):
        return torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, dtype=torch.float64)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return torch.nn.AdaptiveAvgPool2d(module.output_size)
    return {nn.ReLU: torch.nn.ReLU, nn.Flatten: torch.nn.Flatten}[type(module)]()


@pytest.mark.torch
@pytest.mark.parametrize("loss_name", ["CrossEntropyLoss", "MSELoss"])
def test_losses_match_torch(loss_name, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pred = _randn(rng, 6, 5)
    target = rng.integers(0, 5, 6) if loss_name == "CrossEntropyLoss" else _randn(rng, 6, 5)
    ours = getattr(nn, loss_name)()
    loss = ours(pred, target)
    assert isinstance(loss, float)
    tp = torch.from_numpy(pred.copy()).requires_grad_(True)
    tl = getattr(torch.nn, loss_name)()(tp, torch.from_numpy(target))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(ours.backward(), tp.grad.numpy(), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("loss_name", ["CrossEntropyLoss", "MSELoss"])
def test_loss_backward_scaled_keeps_dtype(loss_name, rng):
    """backward(dy) scales the gradient by dy in the prediction's dtype, even for a float64 dy."""
    pred = _randn(rng, 4, 3, dtype=np.float32)
    target = rng.integers(0, 3, 4) if loss_name == "CrossEntropyLoss" else _randn(rng, 4, 3, dtype=np.float32)
    loss = getattr(nn, loss_name)()
    loss(pred, target)
    scaled = loss.backward(np.float64(2.5))
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, loss.backward() * np.float32(2.5))


# --- finite differences of whole models ---------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("cnn", (2, 2, 8, 9)), ("resnet", (2, 2, 6, 5))])
def test_whole_model_finite_differences(name, shape, rng):
    """Central differences in float64 (cnn_gpu.gradcheck) for the input and every parameter."""
    model = models.build(name, shape[1:], 4, dtype=np.float64, rng=1, filters=4)
    x = _randn(rng, *shape)
    labels = rng.integers(0, 4, shape[0])
    before = model.state_dict()
    report = gradcheck.check_model(model, nn.CrossEntropyLoss(), x, labels)
    assert report.max_rel_error < 1e-6, report
    assert report.checks > 3 * len(before)
    for key, value in model.state_dict().items():   # the check restores the parameters exactly
        np.testing.assert_array_equal(value, before[key])


def test_whole_model_check_catches_a_wrong_gradient(rng, monkeypatch):
    """The finite-difference check above can fail: a bias gradient off by 1% is caught."""
    model = models.build("cnn", (1, 8, 8), 3, dtype=np.float64, rng=1)
    real_backward = nn.Linear.backward

    def skewed(self, dy):
        dx = real_backward(self, dy)
        self.bias.grad *= 1.01
        return dx
    monkeypatch.setattr(nn.Linear, "backward", skewed)
    report = gradcheck.check_model(model, nn.CrossEntropyLoss(), _randn(rng, 2, 1, 8, 8), np.array([0, 2]))
    assert report.max_rel_error > 1e-3


# --- containers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
def test_residual_refuses_branches_of_different_dtypes(fused, rng):
    """A shortcut in float64 beside a float32 block: the addition would promote the output, so the
    Residual refuses it, with or without the ReLU nn.Sequential fuses into it."""
    class Widen(nn.Module):
        def forward(self, x):
            return x.astype(np.float64)

        def backward(self, dy, input_grad=True):
            return dy.astype(np.float32)

    residual = nn.Residual(nn.Conv2d(2, 2, 3, padding=1, dtype=np.float32, rng=rng), Widen())
    model = nn.Sequential(residual, nn.ReLU()) if fused else residual
    with pytest.raises(TypeError, match="block output \\(float32\\) and shortcut output \\(float64\\) differ"):
        model(_randn(rng, 1, 2, 4, 4).astype(np.float32))


def test_residual_backward_sums_both_paths(rng):
    x = _randn(rng, 2, 3, 5, 5)
    block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, dtype=np.float64, rng=1), nn.Tanh())
    residual = nn.Residual(block)
    y = residual(x)
    np.testing.assert_allclose(y, block(x) + x, rtol=1e-15)
    dy = _randn(rng, *y.shape)
    dx = residual.backward(dy)
    block.zero_grad()   # (its saved input is x, from the forward above)
    np.testing.assert_allclose(dx, block.backward(dy) + dy, rtol=1e-14)

    shortcut = nn.Conv2d(3, 6, 1, stride=2, dtype=np.float64, rng=2)
    block = nn.Conv2d(3, 6, 3, stride=2, padding=1, dtype=np.float64, rng=3)
    residual = nn.Residual(block, shortcut)
    assert list(residual.state_dict()) == ["block.weight", "block.bias", "shortcut.weight", "shortcut.bias"]
    y = residual(x)
    dy = _randn(rng, *y.shape)
    residual.zero_grad()
    dx = residual.backward(dy)
    ref_block = F.conv2d_backward(dy, x, block.weight.data, 2, 1)
    ref_short = F.conv2d_backward(dy, x, shortcut.weight.data, 2, 0)
    np.testing.assert_allclose(dx, ref_block[0] + ref_short[0], rtol=1e-13)
    np.testing.assert_array_equal(shortcut.weight.grad, ref_short[1])

    with pytest.raises(ValueError, match="shortcut"):
        nn.Residual(nn.Conv2d(3, 4, 1, dtype=np.float64))(x)
    with pytest.raises(TypeError, match="Module"):
        nn.Residual(np.tanh)


def test_sequential_indexing_and_names():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and seq[-1] is seq[2]
    assert len(seq[:2]) == 2 and seq[:2][0] is seq[0]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p for p in seq.parameters()] == [seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias]
    with pytest.raises(TypeError, match="Modules"):
        nn.Sequential(nn.ReLU(), "relu")



def test_a_module_used_twice_in_one_model_is_refused():
    """A module keeps its latest forward's input only, so a second place in the same model would
    give the first place's backward the wrong input: refused where the model is built."""
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="Linear is already part of this Sequential"):
        nn.Sequential(lin, nn.Tanh(), lin)
    with pytest.raises(ValueError, match="already part of this Residual"):
        nn.Residual(lin, lin)
    with pytest.raises(ValueError, match="already part"):
        nn.Sequential(nn.Sequential(nn.ReLU(), lin), lin)   # inside a child too
    seq = nn.Sequential(lin)
    with pytest.raises(ValueError, match="already part"):
        seq.append(seq)
    seq.block = nn.ReLU()
    seq.block = nn.ReLU()   # replacing a child under its own name is fine
    assert len(list(seq.parameters())) == 2
    # added to a container after that one was nested: the building check cannot see it, the forward can
    inner = nn.Sequential()
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), inner)
    inner.append(model[0])
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="Linear ran twice in one forward pass"):
        model(x)
    model.eval()
    assert model(x).shape == (2, 3)   # inference needs no backward: reuse is harmless there
    model.train()
    layer = nn.Linear(3, 3)
    layer(x), layer(x)   # two calls of one layer from outside any module are two forward passes


def test_tied_weights_get_both_places_gradients(rng):
    """One Parameter assigned to two modules: listed once (as PyTorch lists it), its gradient the sum
    over both places, as autograd gives."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (make torch)")
    first, second = nn.Linear(3, 3, dtype=np.float64, rng=1), nn.Linear(3, 3, dtype=np.float64, rng=2)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)
    assert list(model.parameters()) == [first.weight, first.bias, second.bias]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x, dy = _randn(rng, 4, 3), _randn(rng, 4, 3)
    model(x)
    model.backward(dy)
    w = torch.tensor(first.weight.data, requires_grad=True)
    b1, b2 = torch.tensor(first.bias.data), torch.tensor(second.bias.data)
    y = torch.tanh(torch.tensor(x) @ w.T + b1) @ w.T + b2
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(first.weight.grad, w.grad.numpy(), rtol=1e-12)
    optim.SGD(model.parameters(), lr=0.1).step()   # one Parameter once: no aliasing refusal

def test_gradients_accumulate_until_zero_grad(rng):
    layer = nn.Linear(3, 2, dtype=np.float64, rng=0)
    x, dy = _randn(rng, 4, 3), _randn(rng, 4, 2)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None
    layer.backward(dy)
    kept = layer.weight.grad
    optim.SGD(layer.parameters(), lr=0.1).zero_grad(set_to_none=False)   # PyTorch's in-place zeroing
    assert layer.weight.grad is kept and not kept.any() and not layer.bias.grad.any()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, once, rtol=1e-15)
    layer.zero_grad(set_to_none=False)
    assert layer.weight.grad is kept and not kept.any()
    with pytest.raises(TypeError, match="set_to_none"):
        layer.zero_grad(set_to_none=0)


def test_train_eval_flags():
    model = models.small_resnet(rng=0)
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="bool"):
        model.train("no")   # PyTorch refuses it too; bool("no") would have meant training
    assert all(m.training for m in model.modules())


# --- state dicts --------------------------------------------------------------------------------

def test_state_dict_round_trip_is_exact():
    a = models.small_resnet((3, 8, 8), 5, rng=1)
    b = models.small_resnet((3, 8, 8), 5, rng=2)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == (np.int64 if name.endswith("num_batches_tracked")
                                                          else np.float32) for name, v in state.items())
    b.load_state_dict(state)
    for (name, va), (name_b, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert name == name_b
        np.testing.assert_array_equal(va, vb)
    # copies, both ways: changing the dict or the source model does not reach the loaded one
    state["0.weight"][...] = 7
    next(a.parameters()).data[...] = 8
    assert not np.any(next(b.parameters()).data == 7) and not np.any(next(b.parameters()).data == 8)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("3.bias"), "missing keys: 3.bias"),
    (lambda s: s.update(extra=np.zeros(2)), "unexpected keys: extra"),
    (lambda s: s.update({"7.weight": np.zeros((10, 64), np.float32)}), r"7.weight: shape \(10, 64\)"),
    (lambda s: s.update({"0.bias": np.full(s["0.bias"].shape, "a")}), "not numeric"),
])
def test_load_state_dict_errors_change_nothing(edit, message):
    model = models.small_cnn(rng=4)
    before = model.state_dict()
    state = models.small_cnn(rng=5).state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_needs_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        models.small_cnn().load_state_dict([1, 2])



def test_load_state_dict_not_strict_skips_and_reports_names():
    """strict=False loads what matches and returns (missing_keys, unexpected_keys), as PyTorch;
    a shape mismatch is still refused."""
    model, source = models.small_cnn(rng=6), models.small_cnn(rng=7)
    state = source.state_dict()
    kept_bias = model.state_dict()["3.bias"]
    del state["3.bias"]
    state["extra"] = np.zeros(2)
    with pytest.raises(ValueError, match="missing keys: 3.bias; unexpected keys: extra"):
        model.load_state_dict(state)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["3.bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(model.state_dict()["0.weight"], state["0.weight"])
    np.testing.assert_array_equal(model.state_dict()["3.bias"], kept_bias)
    assert model.load_state_dict(source.state_dict()) == ([], [])
    state["0.weight"] = np.zeros((1, 1))
    with pytest.raises(ValueError, match="0.weight: shape"):
        model.load_state_dict(state, strict=False)
    with pytest.raises(TypeError, match="strict"):
        model.load_state_dict(source.state_dict(), strict="no")


def test_registered_names_take_their_kind_or_none_and_del_unregisters():
    """PyTorch's rules: an array assigned to a parameter's name is refused (it would leave the
    parameter unregistered: gone from parameters() and state_dict()), None is taken and skipped;
    likewise a child module's name; `del` unregisters a parameter, buffer or module."""
    layer = nn.Linear(2, 3)
    version = layer.__dict__.get("_version")
    with pytest.raises(TypeError, match="cannot assign ndarray as parameter 'weight'.*assign to its .data"):
        layer.weight = np.zeros((3, 2), np.float32)
    assert layer.__dict__.get("_version") == version   # a refused assignment changed nothing a replay guards
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    layer.bias = None
    assert list(layer.state_dict()) == ["weight"] and list(layer.parameters()) == [layer.weight]
    layer.bias = nn.Parameter(np.ones(3, np.float32))   # back in its place
    assert list(layer.state_dict()) == ["weight", "bias"]
    del layer.bias
    assert list(layer.state_dict()) == ["weight"] and not hasattr(layer, "bias")
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with pytest.raises(TypeError, match="cannot assign int as child module '1'"):
        setattr(model, "1", 5)
    norm = nn.BatchNorm2d(3)
    del norm.running_var
    assert "running_var" not in norm.state_dict()


def test_named_parameters_and_parameters_as_pytorch_gives_them():
    """Tied weights once under their first name (remove_duplicate=False: every place), recurse=False
    a module's own, parameters() and buffers() iterators, a slice of a Sequential keeping its names."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (make torch)")
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm2d(3), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    reference = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(3, 3))
    reference[2].weight = reference[0].weight
    for options in ({}, {"remove_duplicate": False}, {"recurse": False}, {"prefix": "net"}):
        assert ([name for name, _ in model.named_parameters(**options)]
                == [name for name, _ in reference.named_parameters(**options)]), options
        assert ([name for name, _ in model.named_buffers(**options)]
                == [name for name, _ in reference.named_buffers(**options)]), options
    optim.SGD([p for _, p in model.named_parameters()], lr=0.1)   # each once: accepted
    assert list(model[1:].state_dict()) == list(reference[1:].state_dict())   # "1.weight", ... "2.bias"


def test_parameters_are_iterators_and_a_slice_keeps_its_names():
    """Without PyTorch too: parameters() and buffers() iterate (next(model.parameters()), PyTorch's
    idiom), tied weights once; a Sequential slice keeps its layers' names and values, and append
    takes the next free number."""
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm2d(3), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    assert next(model.parameters()) is model[0].weight and len(list(model.parameters())) == 5
    assert next(model.buffers()) is model[1].running_mean
    assert len(list(model.named_parameters(remove_duplicate=False))) == 6
    part = model[1:]
    assert list(part.state_dict()) == [name for name in model.state_dict() if not name.startswith("0.")]
    assert all(part.state_dict()[name].tobytes() == value.tobytes() for name, value in model.state_dict().items()
               if name in part.state_dict())
    part.append(nn.ReLU())
    assert list(part._modules) == ["1", "2", "3"] and len(part) == 3


def test_batch_norm_state_without_num_batches_tracked_loads_keeping_the_count(rng):
    """PyTorch's state dicts from before num_batches_tracked load; the layer keeps its count."""
    layer = nn.BatchNorm2d(3, dtype=np.float64)
    for _ in range(2):
        layer(_randn(rng, 2, 3, 4, 4))
    state = nn.BatchNorm2d(3, dtype=np.float64).state_dict()
    state["running_mean"] = _randn(rng, 3)
    del state["num_batches_tracked"]
    assert layer.load_state_dict(state) == ([], [])
    np.testing.assert_array_equal(layer.running_mean, state["running_mean"])
    assert int(layer.num_batches_tracked) == 2

# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "divisible by groups"),
    (lambda: nn.Conv2d(3, 4, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2d(3, 4, 3, padding="same", stride=2), ValueError, "not supported for strided convolutions"),
    (lambda: nn.Conv2d(3, 4, 2, padding="full"), ValueError, "'same' or 'valid', got 'full'"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="reflection"), ValueError, "padding_mode must be one of"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect"), ValueError, 'Only "zeros" padding mode'),
    (lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), TypeError, "float16, float32 or float64"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=2), ValueError, "output_padding"),
    (lambda: nn.Linear(3, 2.5), TypeError, "out_features"),
    (lambda: nn.Linear(3, 0), ValueError, "out_features"),
    (lambda: nn.Linear(3, 2, rng="seed"), TypeError, "rng"),
    (lambda: nn.MaxPool2d((2, 2, 2)), ValueError, "kernel_size"),
    (lambda: nn.ReLU(inplace=True), ValueError, "inplace ReLU is not supported"),
    (lambda: nn.LeakyReLU(0.1, True), ValueError, "inplace LeakyReLU is not supported"),
    (lambda: nn.SiLU(inplace=True), ValueError, "inplace SiLU is not supported"),
    (lambda: nn.Hardtanh(inplace=True), ValueError, "inplace Hardtanh is not supported"),
    (lambda: nn.ReLU6(True), ValueError, "inplace ReLU6 is not supported"),
    (lambda: nn.Hardsigmoid(inplace=True), ValueError, "inplace Hardsigmoid is not supported"),
    (lambda: nn.Hardswish(True), ValueError, "inplace Hardswish is not supported"),
    (lambda: nn.ELU(0.5, True), ValueError, "inplace ELU is not supported"),
    (lambda: nn.Mish(inplace=True), ValueError, "inplace Mish is not supported"),
    (lambda: nn.Hardtanh(2.0, 1.0), ValueError, r"max_val \(1.0\) must be greater than min_val \(2.0\)"),
    (lambda: nn.Hardtanh(1.0, 1.0), ValueError, r"max_val \(1.0\) must be greater than min_val \(1.0\)"),
    (lambda: nn.Hardtanh("a"), TypeError, "min_val must be a real number"),
    (lambda: nn.ELU(float("nan")), ValueError, "alpha must be finite"),
    (lambda: nn.GELU("erf"), ValueError, "approximate must be 'none' or 'tanh', got 'erf'"),
    (lambda: nn.GELU(approximate=None), TypeError, "approximate must be a str"),
    (lambda: nn.Dropout(0.5, True), ValueError, "inplace dropout is not supported"),
])
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_activation_layers_take_pytorchs_inplace_false():
    """PyTorch code writes nn.ReLU(inplace=False) and nn.LeakyReLU(0.2, inplace=False): a TypeError before."""
    x = np.random.default_rng(2).standard_normal((3, 4))
    np.testing.assert_array_equal(nn.ReLU(inplace=False)(x), F.relu(x))
    np.testing.assert_array_equal(nn.LeakyReLU(0.2, False)(x), F.leaky_relu(x, 0.2))
    np.testing.assert_array_equal(nn.SiLU(inplace=False)(x), F.silu(x))


MOBILE_ACTIVATION_LAYERS = [
    (lambda: nn.Hardtanh(), lambda t: t.Hardtanh(), "hardtanh", {}),
    (lambda: nn.Hardtanh(-2.5, 0.5, False), lambda t: t.Hardtanh(-2.5, 0.5, False), "hardtanh",
     {"min_val": -2.5, "max_val": 0.5}),
    (lambda: nn.ReLU6(inplace=False), lambda t: t.ReLU6(inplace=False), "relu6", {}),
    (lambda: nn.Hardsigmoid(inplace=False), lambda t: t.Hardsigmoid(inplace=False), "hardsigmoid", {}),
    (lambda: nn.Hardswish(), lambda t: t.Hardswish(), "hardswish", {}),
    (lambda: nn.ELU(), lambda t: t.ELU(), "elu", {}),
    (lambda: nn.ELU(0.3, inplace=False), lambda t: t.ELU(0.3, inplace=False), "elu", {"alpha": 0.3}),
    (lambda: nn.Mish(), lambda t: t.Mish(), "mish", {}),
]


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("make, name, options", [(nn.SiLU, "silu", {}), (nn.GELU, "gelu", {}),
                                                 (lambda: nn.GELU("tanh"), "gelu", {"approximate": "tanh"})] + [
    (make, name, options) for make, _, name, options in MOBILE_ACTIVATION_LAYERS])
def test_activation_layers_run_their_functional_ops(make, name, options, dtype, be):
    """nn.SiLU, nn.GELU and the MobileNet activations on each backend and dtype: forward and backward
    are their functional op (with the layer's arguments) of the input the forward saw, which stays
    unchanged."""
    layer = make().to(be)
    rng = np.random.default_rng(4)
    x, dy = (rng.standard_normal((2, 3, 5)).astype(dtype) * 3 for _ in range(2))
    before = x.copy()
    y = layer(x)
    np.testing.assert_array_equal(y, getattr(F, name)(x, **options, backend=be))
    np.testing.assert_array_equal(layer.backward(dy), getattr(F, name + "_backward")(dy, x, **options, backend=be))
    np.testing.assert_array_equal(x, before)
    assert y.dtype == dtype and layer.backward(dy, input_grad=False) is None


def test_activation_reprs_are_torchs():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    for ours, theirs in ((nn.SiLU(), torch.nn.SiLU()), (nn.GELU(), torch.nn.GELU()),
                         (nn.GELU("tanh"), torch.nn.GELU(approximate="tanh")),
                         (nn.Hardtanh(), torch.nn.Hardtanh()), (nn.Hardtanh(-2.5, 0.5), torch.nn.Hardtanh(-2.5, 0.5)),
                         (nn.ReLU6(), torch.nn.ReLU6()), (nn.Hardsigmoid(), torch.nn.Hardsigmoid()),
                         (nn.Hardswish(), torch.nn.Hardswish()), (nn.ELU(), torch.nn.ELU()),
                         (nn.ELU(0.5), torch.nn.ELU(0.5)), (nn.Mish(), torch.nn.Mish())):
        assert repr(ours) == repr(theirs)


@pytest.mark.torch
@pytest.mark.parametrize("make, make_torch, name, options", MOBILE_ACTIVATION_LAYERS)
def test_mobile_activation_layers_match_torchs(make, make_torch, name, options, rng):
    """nn.Hardtanh, ReLU6, Hardsigmoid, Hardswish, ELU and Mish (PyTorch's arguments, inplace=False
    included) against PyTorch's layers on inputs wide enough to pass every kink, some exactly at one;
    hardsigmoid's gradient to 1e-7, PyTorch multiplying by the float32 constant 1/6 in float64."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = _randn(rng, 4, 3, 5) * 4
    x.flat[:6] = (-3.0, 3.0, -1.0, 1.0, 0.0, 6.0)
    _compare_with_torch(make(), make_torch(torch.nn), x, rng, rtol=1e-7 if name == "hardsigmoid" else 1e-11)


def test_hardtanh_takes_pytorchs_deprecated_min_value_and_max_value():
    """PyTorch's deprecated keywords replace min_val / max_val, each with its FutureWarning; ReLU6 is a
    Hardtanh, as in PyTorch."""
    with pytest.warns(FutureWarning, match="`min_value` is deprecated and renamed to `min_val`"):
        layer = nn.Hardtanh(min_value=-0.5)
    assert (layer.min_val, layer.max_val) == (-0.5, 1.0)
    with pytest.warns(FutureWarning, match="`max_value` is deprecated and renamed to `max_val`"):
        assert nn.Hardtanh(max_value=2.0).max_val == 2.0
    assert isinstance(nn.ReLU6(), nn.Hardtanh) and (nn.ReLU6().min_val, nn.ReLU6().max_val) == (0.0, 6.0)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.CrossEntropyLoss().backward()


def test_flatten_bad_dims():
    with pytest.raises(ValueError, match="Flatten"):
        nn.Flatten(2, 1)(np.ones((2, 3, 4)))


def test_to_unknown_or_unavailable_backend(monkeypatch):
    model = models.small_cnn()
    with pytest.raises(ValueError, match="unknown backend"):
        model.to("gpu")
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "CuPy sees no GPU" if name == "cuda" else "")
    with pytest.raises(RuntimeError, match="CuPy sees no GPU"):
        model.to("cuda")
    with pytest.raises(RuntimeError, match="CuPy sees no GPU"):
        model.cuda()                 # PyTorch's spelling
    assert model.to("numpy") is model and model.backend == "numpy"
    assert model.to("emu").to("cpu") is model and model.backend == "numpy"   # PyTorch's "cpu": NumPy
    assert model.to("emu").cpu() is model and model.backend == "numpy"


def test_to_takes_pytorchs_device_spellings(monkeypatch):
    """"cuda:N", .cuda(N) and torch.device as PyTorch scripts write them: the CPU's is numpy; a GPU's
    must be CuPy's current one (the kernels run there): another is refused, saying how to make it
    current, as is a malformed spelling, before anything moves."""
    torch = pytest.importorskip("torch")
    model = models.small_cnn()
    assert model.to(torch.device("cpu")).backend == "numpy"
    for device in ("cuda:", "cuda:x", "cuda:-1", "gpu:0", "cpu:0", "cuda:1:0"):
        with pytest.raises(ValueError, match="unknown device"):
            model.to(device)
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "")
    monkeypatch.setattr("cnn_gpu.launch_checks.current_device", lambda: 1)   # GPU 1 current, none moved below
    for device in ("cuda:0", torch.device("cuda", 0), 0):
        with pytest.raises(ValueError, match=r"'cuda:0': the kernels run on CuPy's current GPU, 1; make GPU 0 current "
                                             r"first \(`cupy.cuda.Device\(0\).use\(\)`"):
            model.cuda(device) if device == 0 else model.to(device, np.float64)
    assert model.backend == "numpy" and model[0].weight.dtype == np.float32   # nothing converted either
    monkeypatch.setattr("cnn_gpu.nn.module.to_backend_array", lambda array, backend: (backend, array))
    assert model.cuda(1)[0].weight.data[0] == "cuda" and model.backend == "cuda"
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "CuPy sees no GPU" if name == "cuda" else "")
    with pytest.raises(RuntimeError, match="'cuda:1': backend 'cuda' is not available: CuPy sees no GPU"):
        model.to(torch.device("cuda:1"))


def test_module_subclass_must_call_init():
    class Broken(nn.Module):
        def __init__(self):
            self.layer = nn.ReLU()
    with pytest.raises(AttributeError, match="super"):
        Broken()


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_float32_models_stay_float32(name, rng):
    model = models.build(name, (2, 8, 8), 5, rng=0, filters=4)
    loss_fn = nn.CrossEntropyLoss()
    x = _randn(rng, 3, 2, 8, 8, dtype=np.float32)
    logits = model(x)
    assert logits.dtype == np.float32 and logits.shape == (3, 5)
    loss_fn(logits, np.array([0, 4, 2]))
    dx = model.backward(loss_fn.backward())
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(p.grad.dtype == np.float32 and p.grad.shape == p.data.shape for p in model.parameters())


def test_model_builders_reject_tiny_images():
    with pytest.raises(ValueError, match="at least 4x4"):
        models.small_cnn((1, 3, 8))
    with pytest.raises(ValueError, match="unknown model"):
        models.build("vgg", (1, 8, 8), 10)


# --- input_grad=False: no input gradient where nothing needs it ---------------------------------

def _grads(model):
    return [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_a_network_asked_for_no_input_gradient_runs_no_first_dgrad(backend, rng, monkeypatch):
    """Sequential(...).backward(dy, input_grad=False): None, the same parameter gradients bit for
    bit, and one dgrad pass fewer (the first convolution's; the layers before it run nothing)."""
    from cnn_gpu.functional import conv as conv_module
    nn.init.manual_seed(5)
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).to(backend)
    x = _randn(rng, 3, 2, 6, 6, dtype=np.float32)
    dy = _randn(rng, 3, 5, dtype=np.float32)
    dgrad = "_gpu_dgrad" if backend == "emu" else "_input_grad"
    calls = []
    original = getattr(conv_module, dgrad)
    monkeypatch.setattr(conv_module, dgrad, lambda *a, **k: calls.append(1) or original(*a, **k))
    runs = {}
    for input_grad in (True, False):
        model.zero_grad()
        model(x)
        calls.clear()
        dx = model.backward(dy, input_grad=input_grad)
        runs[input_grad] = dx, len(calls), _grads(model)
    (dx, dgrads, grads), (none, fewer, same) = runs[True], runs[False]
    assert dx.shape == x.shape and none is None
    assert (dgrads, fewer) == (2, 1)
    assert all(np.array_equal(a, b) for a, b in zip(grads, same)) and all(np.abs(g).max() > 0 for g in same)


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_parameter_free_layers_before_the_first_parameters_take_no_dy(backend, rng):
    """Layers without parameters before the first one with them get dy None with input_grad=False
    (nothing after them computes one): a BatchNorm2d(affine=False), alone or with its ReLU fused,
    and a Residual of parameter-free layers with its ReLU fused return None without reading it, and
    the parameters after them get the gradients a full backward gives."""
    models = [lambda: nn.Sequential(nn.BatchNorm2d(2, affine=False), nn.Conv2d(2, 3, 1)),
              lambda: nn.Sequential(nn.BatchNorm2d(2, affine=False), nn.ReLU(), nn.Conv2d(2, 3, 1)),
              lambda: nn.Sequential(nn.Residual(nn.ReLU()), nn.ReLU(), nn.Conv2d(2, 3, 1)),
              lambda: nn.Sequential(nn.Residual(nn.BatchNorm2d(2, affine=False)), nn.ReLU(),
                                    nn.Residual(nn.ReLU()), nn.ReLU(), nn.Conv2d(2, 3, 1))]
    x = _randn(rng, 2, 2, 4, 4, dtype=np.float32)
    dy = _randn(rng, 2, 3, 4, 4, dtype=np.float32)
    for i, make in enumerate(models):
        nn.init.manual_seed(7)
        model = make().to(backend)
        model(x)
        model.backward(dy)
        want = _grads(model)
        model.zero_grad()
        model(x)
        assert model.backward(dy, input_grad=False) is None, i
        assert all(np.array_equal(a, b) for a, b in zip(_grads(model), want)), i


def test_a_users_module_without_input_grad_is_still_asked_for_its_input_gradient(rng):
    """A module whose backward takes dy alone gets a real dy (the layer after it computes its
    input gradient) and its dx is returned; the built-in layers before it are told to skip."""
    class Scale(nn.Module):
        def forward(self, x):
            self._saved = True
            return 2 * x

        def backward(self, dy):
            self._saved_for_backward()
            return 2 * dy

    nested = [nn.Sequential(nn.Residual(Scale()), nn.Conv2d(2, 3, 3), nn.Flatten()),
              nn.Sequential(nn.Sequential(Scale(), nn.ReLU()), nn.Conv2d(2, 3, 3), nn.Flatten()),
              nn.Sequential(nn.Residual(nn.Sequential(nn.ReLU(), Scale())), nn.ReLU(), nn.Conv2d(2, 3, 3),
                            nn.Flatten())]
    for model in nested:   # inside a container too: asked, with a real dy
        model(_randn(rng, 2, 2, 5, 5, dtype=np.float32))
        seen = []
        for m in model.modules():
            if isinstance(m, Scale):
                m.backward = (lambda dy, m=m: seen.append(dy) or Scale.backward(m, dy))
        assert model.backward(np.ones((2, 27), np.float32), input_grad=False) is None
        assert seen and all(dy is not None for dy in seen), model

    nn.init.manual_seed(6)
    model = nn.Sequential(nn.ReLU(), Scale(), nn.Conv2d(2, 3, 3), nn.Flatten())
    x = _randn(rng, 2, 2, 5, 5, dtype=np.float32)
    model(x)
    want = model.backward(np.ones((2, 27), np.float32))
    assert nn.containers.takes_input_grad(model[0]) and not nn.containers.takes_input_grad(model[1])
    got = model.backward(np.ones((2, 27), np.float32), input_grad=False)
    assert got is None   # the ReLU before Scale was told: no gradient of x is needed
    model[0].backward(None, input_grad=False)   # a parameter-free layer skips without looking at dy
    assert want.shape == x.shape
    assert nn.Sequential().backward(x, input_grad=False) is None and nn.Sequential().backward(x) is x


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "linear"])
@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_functional_backward_without_input_grad(op, backend, rng):
    """F.<op>_backward(..., input_grad=False): dx None, dweight and dbias exactly those of the full
    call (unbatched conv input too); a non-bool input_grad is refused."""
    if op == "linear":
        x, w, dy = _randn(rng, 4, 6), _randn(rng, 3, 6), _randn(rng, 4, 3)
        backward = F.linear_backward
    elif op == "conv2d":
        x, w, dy = _randn(rng, 3, 7, 7), _randn(rng, 4, 3, 3, 3), _randn(rng, 4, 5, 5)
        backward = F.conv2d_backward
    else:
        x, w, dy = _randn(rng, 2, 3, 4, 4), _randn(rng, 3, 2, 3, 3), _randn(rng, 2, 2, 6, 6)
        backward = F.conv_transpose2d_backward
    full = backward(dy, x, w, backend=backend)
    dx, dw, db = backward(dy, x, w, input_grad=False, backend=backend)
    assert full[0].shape == x.shape and dx is None
    np.testing.assert_array_equal(dw, full[1])
    np.testing.assert_array_equal(db, full[2])
    with pytest.raises(TypeError, match="input_grad"):
        backward(dy, x, w, input_grad=1, backend=backend)


def test_a_backward_after_a_later_forward_warns_that_it_takes_the_latest_inputs(rng):
    """A module keeps one forward's inputs: a second forward (another batch, an evaluation
    forward) between a training forward and its backward gave that backward the later inputs,
    silently (PyTorch differentiates each call's graph). Warned now; evaluation forwards before
    the training forward (between epochs) and paired calls are not."""
    import warnings
    model = nn.Sequential(nn.Linear(4, 3, dtype=np.float64, rng=1), nn.ReLU(), nn.Linear(3, 2, dtype=np.float64, rng=2))
    loss = nn.CrossEntropyLoss()
    x, other, labels = _randn(rng, 5, 4), _randn(rng, 5, 4), np.array([0, 1, 0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(model(x), labels)
        model.backward(loss.backward())
        model.eval()
        model(other)
        model.train()
        loss(model(x), labels)
        expected = model.backward(loss.backward())
    for between in ("train", "eval"):
        loss(model(x), labels)
        dlogits = loss.backward()
        getattr(model, between)()
        model(other)
        model.train()
        with pytest.warns(UserWarning, match="Sequential ran forward 1 more time.s. after a training forward"):
            wrong = model.backward(dlogits)
        assert not np.allclose(wrong, expected)   # what the warning is about
        model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_array_equal(model.backward(dlogits), expected)   # paired again: no warning


@pytest.mark.parametrize("data, shown", [([1.0, 2.0], "list"), (np.ones(3, np.int64), "ndarray of int64"),
                                         (2.5, "float")])
def test_a_parameter_takes_a_float_array_only(data, shown):
    with pytest.raises(TypeError, match=f"got {shown} .np.asarray"):
        nn.Parameter(data)


def _small_model(dtype=np.float32):
    return nn.Sequential(nn.Conv2d(3, 4, 3, dtype=dtype, rng=1), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5, dtype=dtype, rng=2), nn.Dropout(0.1, seed=3))


def test_to_dtype_half_float_double_convert_parameters_gradients_and_float_buffers(rng):
    model = _small_model()
    loss = nn.CrossEntropyLoss()
    loss(model(_randn(rng, 2, 3, 8, 8, dtype=np.float32)), np.array([1, 2]))
    model.backward(loss.backward())
    weight = model[0].weight
    for convert, dtype in ((lambda m: m.double(), np.float64), (lambda m: m.half(), np.float16),
                           (lambda m: m.to(np.float32), np.float32), (lambda m: m.to("numpy", dtype="float64"), np.float64)):
        assert convert(model) is model and model[0].weight is weight   # the same Parameter objects
        state = model.state_dict()
        assert {k: v.dtype for k, v in state.items() if not k.endswith(("num_batches_tracked", "step"))} == \
            dict.fromkeys([k for k in state if not k.endswith(("num_batches_tracked", "step"))], np.dtype(dtype))
        assert state["1.num_batches_tracked"].dtype == np.int64 and state["5.step"].dtype == np.int64
        assert all(p.grad.dtype == dtype for p in model.parameters())
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for bad, error in (((), TypeError), ((np.int32,), TypeError), ((None, "float8"), TypeError), (("gpu",), ValueError)):
        with pytest.raises(error):
            model.to(*bad)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())   # nothing changed


@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01))])
@pytest.mark.parametrize("conversions", [("double",), ("half",), ("half", "step", "float")])
def test_an_optimizer_made_before_a_dtype_conversion_steps_on_as_one_loaded_after_it(rng, kind, config, conversions):
    """Its state follows the parameters' new dtype at the next step (a float16 parameter gets FP32
    master weights from its values; one no longer float16 drops them), as a new optimizer given the
    state dict would: the same steps."""
    import copy
    model = _small_model()
    opt = getattr(optim, kind)(model.parameters(), **config)
    for p in model.parameters():
        p.grad = _randn(rng, *p.shape, dtype=np.float32)
    opt.step()
    for name in conversions:   # ("step": one in float16, which makes its master weights)
        if name == "step":
            for p in model.parameters():
                p.grad = _randn(rng, *p.shape, dtype=np.float16)
            opt.step()
            assert "master" in opt.state[0]
        else:
            getattr(model, name)()
    twin = copy.deepcopy(model)
    twin_opt = getattr(optim, kind)(twin.parameters(), **config)
    twin_opt.load_state_dict({**opt.state_dict(), "state": {i: {k: v for k, v in s.items() if k != "master"}
                                                              for i, s in opt.state_dict()["state"].items()}})
    dtype = model[0].weight.dtype
    for _ in range(2):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = _randn(rng, *p.shape, dtype=dtype)
            q.grad = p.grad.copy()
        opt.step()
        twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert ("master" in opt.state[0]) == (dtype == np.float16)


def test_pytorchs_naming_helpers(rng):
    """Sequential(OrderedDict), add_module, register_parameter, Parameter.numel/size/ndim."""
    from collections import OrderedDict
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3, dtype=np.float64, rng=1)), ("act", nn.ReLU())]))
    model.add_module("flat", nn.Flatten())
    model.register_parameter("scale", nn.Parameter(np.ones(1)))
    assert [n for n, _ in model.named_children()] == ["conv", "act", "flat"] and model[0] is model.conv
    assert list(model.state_dict()) == ["scale", "conv.weight", "conv.bias"]
    assert model(_randn(rng, 2, 1, 5, 5)).shape == (2, 18)
    weight = model.conv.weight
    assert (weight.numel(), weight.size(), weight.size(-1), weight.ndim) == (18, (2, 1, 3, 3), 3, 4)
    for call, error in ((lambda: model.add_module("a.b", nn.ReLU()), KeyError),
                        (lambda: model.add_module("x", np.ones(2)), TypeError),
                        (lambda: model.register_parameter("w", np.ones(2)), TypeError)):
        with pytest.raises(error):
            call()
    assert [n for n, _ in model.named_children()] == ["conv", "act", "flat"]
