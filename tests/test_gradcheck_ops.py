"""Finite-difference gradient checks (cnn_gpu.gradcheck) of every functional op in float64, and
checks that gradcheck itself catches wrong gradients."""
import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_model, check_op, gradcheck

TOL = 1e-6  # central differences in float64 with eps = 1e-5
rng = np.random.default_rng(2024)


def randn(*shape):
    return rng.standard_normal(shape)


def away_from(kinks, x):
    """x with every element at least 0.05 from each kink, where central differences would straddle it."""
    for kink in kinks:
        x = np.where(np.abs(x - kink) < 0.05, kink + np.copysign(0.05, x - kink), x)
    return x


CONV = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
CONVT = dict(stride=2, padding=1, output_padding=(1, 0), dilation=(1, 2), groups=2)
MAXP = dict(stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True)
AVGP = dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False)
MAXP1 = dict(stride=2, padding=1, dilation=2, ceil_mode=True)

OPS = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, **CONV),
               lambda dy, x, w, b: F.conv2d_backward(dy, x, w, **CONV),
               [randn(2, 4, 5, 6), randn(6, 2, 3, 2), randn(6)]),
    "conv2d depthwise": (lambda x, w: F.conv2d(x, w, padding=1, groups=3),
                         lambda dy, x, w: F.conv2d_backward(dy, x, w, padding=1, groups=3, bias=False)[:2],
                         [randn(2, 3, 4, 4), randn(6, 1, 3, 3)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, **CONVT),
                         lambda dy, x, w, b: F.conv_transpose2d_backward(dy, x, w, **CONVT),
                         [randn(2, 4, 3, 4), randn(4, 3, 3, 2), randn(6)]),
    # well-separated values keep every window's maximum unique under the perturbation
    "max_pool2d": (lambda x: F.max_pool2d(x, (3, 2), **MAXP),
                   lambda dy, x: F.max_pool2d_backward(dy, F.max_pool2d(x, (3, 2), **MAXP)[1], x.shape, (3, 2), **MAXP),
                   [rng.permutation(60).reshape(1, 2, 5, 6) * 0.1]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, **AVGP),
                   lambda dy, x: F.avg_pool2d_backward(dy, x.shape, 3, **AVGP),
                   [randn(2, 2, 6, 5)]),
    # away from the kink at 0
    "relu": (F.relu, F.relu_backward, [randn(3, 4) + np.sign(randn(3, 4)) * 0.5]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda dy, x: F.leaky_relu_backward(dy, x, 0.1),
                   [randn(3, 4) + np.sign(randn(3, 4)) * 0.5]),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, [randn(3, 4) * 3]),
    "tanh": (F.tanh, F.tanh_backward, [randn(3, 4) * 2]),
    "linear": (F.linear, lambda dy, x, w, b: F.linear_backward(dy, x, w), [randn(4, 5), randn(3, 5), randn(3)]),
    "silu": (F.silu, F.silu_backward, [randn(3, 4) * 3]),
    "gelu": (F.gelu, F.gelu_backward, [randn(3, 4) * 3]),
    "gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda dy, x: F.gelu_backward(dy, x, approximate="tanh"),
                  [randn(3, 4) * 3]),
    "pad reflect": (lambda x: F.pad(x, (3, 1, -1, 2), "reflect"),
                    lambda dy, x: F.pad_backward(dy, x.shape, (3, 1, -1, 2), "reflect"), [randn(2, 2, 4, 6)]),
    "pad circular": (lambda x: F.pad(x, (-2, 4, 4, 1), "circular"),
                     lambda dy, x: F.pad_backward(dy, x.shape, (-2, 4, 4, 1), "circular"), [randn(2, 2, 4, 6)]),
    "interpolate nearest": (lambda x: F.interpolate(x, scale_factor=(1.7, 0.6)),
                            lambda dy, x: F.interpolate_backward(dy, x.shape, scale_factor=(1.7, 0.6)),
                            [randn(2, 2, 4, 6)]),
    "interpolate bilinear": (lambda x: F.interpolate(x, size=(7, 3), mode="bilinear", align_corners=True),
                             lambda dy, x: F.interpolate_backward(dy, x.shape, size=(7, 3), mode="bilinear",
                                                                  align_corners=True),
                             [randn(2, 2, 4, 6)]),
    "interpolate bicubic": (lambda x: F.interpolate(x, scale_factor=(1.7, 0.6), mode="bicubic"),
                            lambda dy, x: F.interpolate_backward(dy, x.shape, scale_factor=(1.7, 0.6), mode="bicubic"),
                            [randn(2, 2, 4, 6)]),
    "interpolate area": (lambda x: F.interpolate(x, size=(3, 4), mode="area"),
                         lambda dy, x: F.interpolate_backward(dy, x.shape, size=(3, 4), mode="area"),
                         [randn(2, 2, 4, 6)]),
    # the 1-D ops: views onto the 2-D ones
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, 2, 1, 2, 2),
               lambda dy, x, w, b: F.conv1d_backward(dy, x, w, 2, 1, 2, 2), [randn(2, 4, 9), randn(6, 2, 3), randn(6)]),
    "conv_transpose1d": (lambda x, w, b: F.conv_transpose1d(x, w, b, 2, 1, 1, 2, 2),
                         lambda dy, x, w, b: F.conv_transpose1d_backward(dy, x, w, 2, 1, 1, 2, 2),
                         [randn(2, 4, 5), randn(4, 3, 3), randn(6)]),
    "max_pool1d": (lambda x: F.max_pool1d(x, 3, **MAXP1),
                   lambda dy, x: F.max_pool1d_backward(dy, F.max_pool1d(x, 3, **MAXP1)[1], x.shape, 3, **MAXP1),
                   [rng.permutation(22).reshape(2, 11) * 0.1]),
    "avg_pool1d": (lambda x: F.avg_pool1d(x, 3, **AVGP), lambda dy, x: F.avg_pool1d_backward(dy, x.shape, 3, **AVGP),
                   [randn(2, 2, 8)]),
    "adaptive_avg_pool1d": (lambda x: F.adaptive_avg_pool1d(x, 4),
                            lambda dy, x: F.adaptive_avg_pool1d_backward(dy, x.shape), [randn(2, 3, 7)]),
    # the backward passes take the forward output; dim 1 of three is a strided reduction
    "softmax": (lambda x: F.softmax(x, 1), lambda dy, x: F.softmax_backward(dy, F.softmax(x, 1), 1),
                [randn(2, 4, 3) * 2]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), lambda dy, x: F.log_softmax_backward(dy, F.log_softmax(x, -1), -1),
                    [randn(3, 5) * 2]),
    # overlapping windows (7 -> 4 rows, 5 -> 3 columns); well-separated values: unique maxima
    "adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (4, 3))[0],
                            lambda dy, x: F.adaptive_max_pool2d_backward(dy, F.adaptive_max_pool2d(x, (4, 3))[1],
                                                                         x.shape, (4, 3)),
                            [rng.permutation(70).reshape(1, 2, 7, 5) * 0.1]),
    "dropout2d": (lambda x: F.dropout2d(x, 0.4, seed=5, step=2), lambda dy, x: F.dropout2d_backward(dy, 0.4, 5, 2),
                  [randn(3, 4, 2, 3)]),
    # the piecewise activations on both sides of their kinks, away from them
    "hardtanh": (lambda x: F.hardtanh(x, -0.5, 1.5), lambda dy, x: F.hardtanh_backward(dy, x, -0.5, 1.5),
                 [away_from((-0.5, 1.5), randn(4, 5) * 2)]),
    "relu6": (F.relu6, F.relu6_backward, [away_from((0.0, 6.0), randn(4, 5) * 4)]),
    "hardsigmoid": (F.hardsigmoid, F.hardsigmoid_backward, [away_from((-3.0, 3.0), randn(4, 5) * 3)]),
    "hardswish": (F.hardswish, F.hardswish_backward, [away_from((-3.0, 3.0), randn(4, 5) * 3)]),
    "elu": (lambda x: F.elu(x, 0.7), lambda dy, x: F.elu_backward(dy, x, 0.7), [away_from((0.0,), randn(3, 4) * 3)]),
    "mish": (F.mish, F.mish_backward, [randn(3, 4) * 3]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gradients(name):
    forward, backward, inputs = OPS[name]
    report = check_op(forward, backward, inputs)
    assert report.checks >= 3
    assert report.max_rel_error < TOL, str(report)


def test_cross_entropy_gradient():
    logits, labels = randn(4, 5) * 3, rng.integers(0, 5, size=4)
    report = gradcheck(lambda: F.cross_entropy(logits, labels)[0], [logits], [F.cross_entropy(logits, labels)[1]])
    assert report.checks == 3 + logits.size
    assert report.max_rel_error < TOL, str(report)


def test_mse_gradient():
    pred, target = randn(3, 4), randn(3, 4)
    report = gradcheck(lambda: F.mse_loss(pred, target)[0], [pred], [F.mse_loss(pred, target)[1]])
    assert report.max_rel_error < TOL, str(report)


GOALS, CLASS_WEIGHT = rng.uniform(0, 1, (3, 4)), randn(5) ** 2
LAST_DIM_WEIGHT, POS_WEIGHT = randn(4) ** 2, randn(4) ** 2
LOSSES = {   # name -> (loss(x) returning (loss, dx), x); x off the kinks of the L1-type losses
    "nll_loss": (lambda x: F.nll_loss(x, np.array([2, 0, -100, 4]), CLASS_WEIGHT), randn(4, 5)),
    "l1_loss": (lambda x: F.l1_loss(x, GOALS), GOALS + np.sign(randn(3, 4)) * rng.uniform(0.2, 1, (3, 4))),
    "smooth_l1_loss": (lambda x: F.smooth_l1_loss(x, GOALS, beta=0.5), GOALS + randn(3, 4)),
    "huber_loss": (lambda x: F.huber_loss(x, GOALS, delta=0.7), GOALS + randn(3, 4)),
    # weight of the input's shape, and the input broadcast against the target (the gradient summed back)
    "mse_loss weight": (lambda x: F.mse_loss(x, GOALS, weight=GOALS + 0.5), randn(3, 4)),
    "l1_loss weight broadcast": (lambda x: F.l1_loss(x, GOALS[:, :1] + np.array([-1.5, -2.5, 2.0]),
                                                      weight=GOALS[:, :1] + 0.5), randn(3, 1) * 0.2),
    "huber_loss weight broadcast": (lambda x: F.huber_loss(x, GOALS, delta=0.7, weight=GOALS[0] + 0.5), randn(4)),
    "kl_div batchmean": (lambda x: F.kl_div(x, GOALS / GOALS.sum(axis=1, keepdims=True), reduction="batchmean"),
                         randn(3, 4)),
    "kl_div log_target broadcast": (lambda x: F.kl_div(x, np.log(GOALS[0]), reduction="sum", log_target=True),
                                    randn(2, 4)),
    "binary_cross_entropy": (lambda x: F.binary_cross_entropy(x, GOALS, LAST_DIM_WEIGHT, reduction="sum"),
                             rng.uniform(0.1, 0.9, (3, 4))),
    "binary_cross_entropy_with_logits": (
        lambda x: F.binary_cross_entropy_with_logits(x, GOALS, LAST_DIM_WEIGHT, pos_weight=POS_WEIGHT),
        randn(3, 4) * 3),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.filterwarnings("ignore:Using a target size")   # the broadcast cases: torch's warning
def test_loss_gradients(name):
    loss, x = LOSSES[name]
    report = gradcheck(lambda: loss(x)[0], [x], [loss(x)[1]])
    assert report.max_rel_error < TOL, str(report)


# --- gradcheck checks itself ------------------------------------------------------------------

def test_nothing_to_check_is_an_error_not_a_pass():
    """A report of 0 checks had error 0, so any threshold passed it."""
    x = np.random.default_rng(4).standard_normal(3)
    with pytest.raises(ValueError, match="no gradient to check"):
        gradcheck(lambda: float(np.sum(x ** 2)), [x], [None])
    with pytest.raises(ValueError, match="no gradient to check"):
        gradcheck(lambda: 0.0, [np.empty(0)], [np.empty(0)])
    big = np.random.default_rng(5).standard_normal(100)   # beyond elementwise_limit: directions alone
    with pytest.raises(ValueError, match="nothing was checked"):
        gradcheck(lambda: float(np.sum(big ** 2)), [big], [np.zeros(100)], directions=0)


def test_catches_a_slightly_wrong_gradient():
    forward, backward, inputs = OPS["conv2d"]

    def off_by_a_bit(dy, x, w, b):
        dx, dw, db = backward(dy, x, w, b)
        return dx, dw * 1.001, db   # 0.1% off in one array only

    report = check_op(forward, off_by_a_bit, inputs, names=["x", "weight", "bias"])
    assert report.max_rel_error > 5e-4
    assert "weight" in report.worst


def test_catches_a_wrong_element():
    # its own generator: the module's shared one would make x depend on which tests ran before
    x = np.random.default_rng(5).standard_normal((3, 3))

    def wrong(dy, x):
        dx = F.tanh_backward(dy, x)
        dx[1, 2] = 0.0   # one element missing: random directions may blur it, the element check cannot
        return dx

    assert check_op(F.tanh, wrong, [x], names=["x"]).max_rel_error > 0.1
    # a random direction may even score worse (opposite signs), so look at the element checks alone
    report = check_op(F.tanh, wrong, [x], names=["x"], directions=0)
    assert report.max_rel_error == pytest.approx(1.0)
    assert "x[1, 2]" in report.worst


def test_catches_a_nan_gradient():
    x = np.random.default_rng(6).standard_normal((3, 3))

    def with_nan(dy, x):
        dx = F.tanh_backward(dy, x)
        dx[2, 0] = np.nan   # NaN loses every comparison: it must still count as the worst error
        return dx

    report = check_op(F.tanh, with_nan, [x], names=["x"])
    assert report.max_rel_error == np.inf, str(report)
    assert report.per_array["x"] == np.inf


def test_restores_inputs_and_needs_float64():
    x = randn(2, 3)
    before = x.copy()
    gradcheck(lambda: float((x ** 2).sum()), [x], [2 * x])
    np.testing.assert_array_equal(x, before)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda: 0.0, [x.astype(np.float32)], [x])
    with pytest.raises(ValueError, match="shape"):
        gradcheck(lambda: 0.0, [x], [x[:1]])


class TwoLayer:
    """The smallest object with the Module interface check_model relies on: parameters() with
    .data/.grad, zero_grad(), __call__ (forward) and backward(dy) -> dx accumulating .grad."""

    class Param:
        def __init__(self, data):
            self.data, self.grad = data, np.zeros_like(data)

    def __init__(self, rng, wrong=False):
        self.w1, self.b1 = self.Param(rng.standard_normal((4, 3))), self.Param(rng.standard_normal(4))
        self.w2 = self.Param(rng.standard_normal((2, 4)))
        self.wrong = wrong

    def parameters(self):
        return [self.w1, self.b1, self.w2]

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def __call__(self, x):
        self.x, self.h = x, F.linear(x, self.w1.data, self.b1.data)
        return F.linear(F.tanh(self.h), self.w2.data)

    def backward(self, dy):
        da, dw2, _ = F.linear_backward(dy, F.tanh(self.h), self.w2.data, bias=False)
        dh = F.tanh_backward(da, self.h)
        dx, dw1, db1 = F.linear_backward(dh, self.x, self.w1.data)
        self.w1.grad += dw1
        self.b1.grad += db1 * (2 if self.wrong else 1)
        self.w2.grad += dw2
        return dx


class CrossEntropy:
    def forward(self, logits, labels):
        self.loss, self.grad = F.cross_entropy(logits, labels)
        return self.loss

    def backward(self):
        return self.grad


def test_check_model():
    # its own generator: the module's shared one would make the data depend on which tests ran before
    local = np.random.default_rng(11)
    x, labels = local.standard_normal((5, 3)), local.integers(0, 2, size=5)
    report = check_model(TwoLayer(np.random.default_rng(12)), CrossEntropy(), x, labels)
    assert report.max_rel_error < TOL, str(report)
    report = check_model(TwoLayer(np.random.default_rng(12), wrong=True), CrossEntropy(), x, labels)
    assert report.per_array["parameter 1"] > 0.1, report.per_array
    # the arrays whose gradients are right pass (the joint direction mixes in the wrong one)
    assert all(report.per_array[name] < TOL for name in ("parameter 0", "parameter 2", "input")), report.per_array


def test_check_model_with_a_parameter_backward_never_reaches():
    from cnn_gpu import nn
    local = np.random.default_rng(9)
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0))
    model.unused = nn.Parameter(local.standard_normal(2))   # gets no .grad: its gradient is zero
    x, labels = local.standard_normal((4, 3)), local.integers(0, 2, size=4)
    report = check_model(model, nn.CrossEntropyLoss(), x, labels)
    assert report.max_rel_error < TOL, str(report)
    assert set(report.per_array) == {"parameter 0", "parameter 1", "parameter 2", "input", "joint"}
