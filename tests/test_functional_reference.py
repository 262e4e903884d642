"""Every functional op, forward and backward, against the direct loops of reference_loops.py (the
seeds' formulas), float64, relative error <= 1e-10."""
import decimal
import math

import numpy as np
import pytest

import reference_loops as ref
from helpers import needs_emu, rng_for
from cnn_gpu import functional as F

TOL = 1e-10


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1),
    (1, 2, 7, 5, 3, 2, 3, (2, 1), (0, 2), 1, 1),
    (2, 4, 6, 6, 4, 3, 2, 2, 1, 2, 2),
    (1, 3, 5, 5, 6, 3, 3, 3, 2, (2, 1), 3),      # depthwise with channel multiplier 2
    (2, 1, 4, 3, 2, 6, 5, 1, 1, 1, 1),           # kernel as large as the padded input
    (1, 2, 6, 7, 2, 1, 1, 2, 0, 1, 1),           # 1x1, stride 2
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, conv_path):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    rng = rng_for("conv", case)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // groups, R, S))
    b = rng.standard_normal(K)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = F.conv2d(x, w, b, **geo)
    expected = ref.conv2d(x, w, b, **geo)
    assert rel_ok(y, expected)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, **geo)
    assert rel_ok(dx, ref.conv2d_input_grad(dy, w, x.shape, **geo))
    assert rel_ok(dw, ref.conv2d_weight_grad(dy, x, w.shape, **geo))
    assert rel_ok(db, ref.bias_grad(dy))


# (N, C, H, W, K, R, S, padding, dilation, groups): PyTorch's padding strings
SAME_CASES = [
    (2, 3, 5, 6, 4, 2, 3, "same", 1, 1),             # even kernel height: the extra row at the bottom
    (1, 2, 4, 5, 2, 4, 4, "same", (1, 3), 2),        # odd extra column from an even dilated extent
    (1, 3, 6, 4, 3, 3, 2, "same", (2, 1), 3),        # depthwise
    (2, 2, 5, 5, 3, 2, 2, "valid", 1, 1),
]


@pytest.mark.parametrize("case", SAME_CASES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_conv2d_padding_strings(case, unbatched, conv_path):
    N, C, H, W, K, R, S, padding, dilation, groups = case
    rng = rng_for("same", case)
    x = rng.standard_normal((N, C, H, W))[:1 if unbatched else N]
    w = rng.standard_normal((K, C // groups, R, S))
    geo = dict(padding=padding, dilation=dilation, groups=groups)
    expected = ref.conv2d(x, w, None, **geo)
    if padding == "same":
        assert expected.shape[2:] == x.shape[2:]
    dy = rng.standard_normal(expected.shape)
    arg = (lambda a: a[0]) if unbatched else (lambda a: a)
    y = F.conv2d(arg(x), w, **geo)
    dx, dw, _ = F.conv2d_backward(arg(dy), arg(x), w, **geo)
    assert rel_ok(y, arg(expected))
    assert rel_ok(dx, arg(ref.conv2d_input_grad(dy, w, x.shape, **geo)))
    assert rel_ok(dw, ref.conv2d_weight_grad(dy, x, w.shape, **geo))


# (N, Cin, Hin, Win, Cout, R, S, stride, padding, output_padding, dilation, groups)
CONVT_CASES = [
    (2, 3, 4, 5, 2, 3, 3, 1, 0, 0, 1, 1),
    (1, 2, 3, 4, 3, 3, 2, 2, 1, 1, 1, 1),
    (2, 4, 3, 3, 2, 2, 3, (3, 2), (1, 0), (2, 1), 1, 2),
    (1, 3, 4, 3, 3, 3, 3, 2, 2, 1, 2, 3),        # depthwise, output_padding < dilation
    (1, 1, 2, 2, 1, 4, 4, 3, 0, 0, 1, 1),        # kernel taller than the stride
    (1, 2, 3, 3, 2, 2, 2, 1, 0, 1, 2, 1),        # output_padding >= stride (allowed by dilation)
]


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d(case, conv_path):
    N, Cin, Hin, Win, Cout, R, S, stride, padding, output_padding, dilation, groups = case
    rng = rng_for("convT", case)
    x = rng.standard_normal((N, Cin, Hin, Win))
    w = rng.standard_normal((Cin, Cout // groups, R, S))
    b = rng.standard_normal(w.shape[1] * groups)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = F.conv_transpose2d(x, w, b, output_padding=output_padding, **geo)
    assert rel_ok(y, ref.conv_transpose2d(x, w, b, output_padding=output_padding, **geo))
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv_transpose2d_backward(dy, x, w, output_padding=output_padding, **geo)
    assert rel_ok(dx, ref.conv_transpose2d_input_grad(dy, w, x.shape, **geo))
    assert rel_ok(dw, ref.conv_transpose2d_weight_grad(dy, x, w.shape, **geo))
    assert rel_ok(db, ref.bias_grad(dy))


@pytest.mark.parametrize("case", CONVT_CASES)
def test_reference_transposed_conv_is_the_adjoint(case):
    """<conv_transpose2d(x), dy> == <x, its input gradient> and likewise for the weights: the
    reference loops themselves agree with each other (the backward references use that identity)."""
    N, Cin, Hin, Win, Cout, R, S, stride, padding, output_padding, dilation, groups = case
    rng = rng_for("adjoint", case)
    x = rng.standard_normal((N, Cin, Hin, Win))
    w = rng.standard_normal((Cin, Cout // groups, R, S))
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = ref.conv_transpose2d(x, w, None, output_padding=output_padding, **geo)
    dy = rng.standard_normal(y.shape)
    pairing = np.vdot(y, dy)
    assert abs(np.vdot(x, ref.conv_transpose2d_input_grad(dy, w, x.shape, **geo)) - pairing) <= TOL * abs(pairing)
    assert abs(np.vdot(w, ref.conv_transpose2d_weight_grad(dy, x, w.shape, **geo)) - pairing) <= TOL * abs(pairing)


@pytest.mark.parametrize("case", CONV_CASES)
def test_both_input_gradient_evaluations(case, conv_path):
    """The gathered (flipped filters, stride phases) and scattered (col2im) evaluations of the input
    gradient each match the reference, whichever of them conv2d_backward picks for the shape."""
    from cnn_gpu.functional import conv
    from cnn_gpu.functional.geometry import conv_geometry
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    rng = rng_for("dgrad", case)
    x_shape = (N, C, H, W)
    w = rng.standard_normal((K, C // groups, R, S))
    g = conv_geometry(x_shape, w.shape, stride, padding, dilation, groups)
    dy = rng.standard_normal(g.y_shape)
    expected = ref.conv2d_input_grad(dy, w, x_shape, stride, padding, dilation, groups)
    assert rel_ok(conv._input_grad_gather(dy, w, g), expected)
    assert rel_ok(conv._input_grad_scatter(dy, w, g), expected)


# (shape, kernel, stride, padding, dilation, ceil_mode)
MAX_POOL_CASES = [
    ((2, 3, 6, 6), 2, None, 0, 1, False),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1), 1, True),
    ((2, 1, 5, 6), 3, 2, 1, 2, True),
    ((1, 2, 1, 4), 2, 1, 1, (2, 1), False),      # windows wholly in the padding: -inf, index -1
    ((1, 1, 4, 4), 4, 1, 2, 1, True),
]


@pytest.mark.parametrize("case", MAX_POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d(case, ties):
    shape, kernel, stride, padding, dilation, ceil_mode = case
    rng = rng_for("max", case, ties)
    x = rng.standard_normal(shape)
    if ties:
        x = np.round(x)  # many equal values: the first maximum in scan order must win
    geo = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    y, idx = F.max_pool2d(x, kernel, **geo)
    y_ref, idx_ref = ref.max_pool2d(x, kernel, **geo)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    dx = F.max_pool2d_backward(dy, idx, x.shape, kernel, **geo)
    assert rel_ok(dx, ref.max_pool2d_backward(dy, idx_ref, x.shape))


def test_max_pool2d_nan_and_inf_rules():
    x = np.array([[[[1.0, np.nan, 5.0, np.nan],
                    [-np.inf, -np.inf, 2.0, 3.0],
                    [-np.inf, -np.inf, 0.0, 0.0]]]])
    y, idx = F.max_pool2d(x, (1, 4), stride=1)
    y_ref, idx_ref = ref.max_pool2d(x, (1, 4), stride=1)
    np.testing.assert_array_equal(idx[..., 0], [[[3, 7, 10]]])   # last NaN; first max; first tie
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    y, idx = F.max_pool2d(x[:, :, 1:, :2], 2)
    assert y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == 0   # all -inf: the first in-bounds tap


AVG_CASES = [
    ((2, 3, 6, 6), 2, None, 0, False, True),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1), True, True),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1), True, False),
    ((2, 1, 5, 6), 3, 2, 1, True, False),
    ((1, 1, 5, 5), 4, 3, 2, True, True),        # last window runs past the padded edge
]


@pytest.mark.parametrize("divisor_override", [None, 5, -2])
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d(case, divisor_override):
    shape, kernel, stride, padding, ceil_mode, count_include_pad = case
    rng = rng_for("avg", case)
    x = rng.standard_normal(shape)
    geo = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
               divisor_override=divisor_override)
    y = F.avg_pool2d(x, kernel, **geo)
    assert rel_ok(y, ref.avg_pool2d(x, kernel, **geo))
    dy = rng.standard_normal(y.shape)
    assert rel_ok(F.avg_pool2d_backward(dy, x.shape, kernel, **geo),
                  ref.avg_pool2d_backward(dy, x.shape, kernel, **geo))


@pytest.mark.parametrize("name, args, options", [("relu", (), {}), ("leaky_relu", (0.2,), {}), ("sigmoid", (), {}),
                                                 ("tanh", (), {}), ("silu", (), {}), ("gelu", (), {}),
                                                 ("gelu", (), {"approximate": "tanh"}), ("hardtanh", (), {}),
                                                 ("hardtanh", (-0.5, 2.0), {}), ("relu6", (), {}),
                                                 ("hardsigmoid", (), {}), ("hardswish", (), {}), ("elu", (), {}),
                                                 ("elu", (0.4,), {}), ("mish", (), {})])
def test_activation(name, args, options):
    rng = rng_for("act", name, *options.values())   # the key of the cases without options as before
    x = rng.standard_normal((2, 3, 4, 5)) * 3
    x[0, 0, 0, :2] = (40.0, -40.0)   # saturated ends
    x[1, 0, :2, :3] = ((-3.0, 3.0, -1.0), (1.0, 0.0, 6.0))   # the kinks of hardtanh, relu6, hardsigmoid, hardswish
    dy = rng.standard_normal(x.shape)
    assert rel_ok(getattr(F, name)(x, *args, **options), getattr(ref, name)(x, *args, **options))
    assert rel_ok(getattr(F, name + "_backward")(dy, x, *args, **options),
                  getattr(ref, name + "_backward")(dy, x, *args, **options))


def _smooth_activation_references(v):
    """silu, gelu, gelu_tanh and their derivatives at float v, in 60-digit decimal arithmetic (no
    cancellation or overflow: the references of the tails), gelu's Phi by math.erfc; the tanh form's
    constant the float64 one the NumPy oracle uses, so that only evaluation errors count."""
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, decimal.MAX_EMAX, decimal.MIN_EMIN
        x = decimal.Decimal(v)
        sigmoid = 1 / (1 + (-x).exp())
        cdf = decimal.Decimal(math.erfc(-v / math.sqrt(2)) / 2)
        pdf = (-x * x / 2).exp() / decimal.Decimal(2 * math.pi).sqrt()
        two_u = decimal.Decimal(1.5957691216057308) * (x + decimal.Decimal(0.044715) * x ** 3)
        s = 1 / (1 + (-two_u).exp())
        derivative_of_two_u = decimal.Decimal(1.5957691216057308) * (1 + 3 * decimal.Decimal(0.044715) * x * x)
        return {"silu": (x * sigmoid, sigmoid * (1 + x * (1 - sigmoid))),
                "gelu": (x * cdf, cdf + x * pdf),
                "gelu_tanh": (x * s, s + x * s * (1 - s) * derivative_of_two_u)}


@pytest.mark.parametrize("name, options", [("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"})])
def test_smooth_activation_tails_element_by_element(name, options):
    """The float64 oracle of silu and gelu far out in both tails, each element to 1e-12 relative of
    60-digit references wherever they are normal numbers: no cancellation (gelu as x (1 + erf) / 2
    is 0 below x = -8.4, PyTorch's result), no overflow's inf * 0. Away from the derivatives' zeros
    (|x| >= 3), where relative error is the measure."""
    x = np.concatenate([-np.geomspace(3, 800, 400), np.geomspace(3, 800, 400)])
    key = "gelu_tanh" if options else name
    references = [_smooth_activation_references(v)[key] for v in x.tolist()]
    dy = np.ones_like(x)
    for i, got in enumerate((getattr(F, name)(x, **options), getattr(F, name + "_backward")(dy, x, **options))):
        expected = np.array([float(r[i]) for r in references])
        normal = np.abs(expected) >= np.finfo(np.float64).tiny
        assert normal.sum() > 300 and (np.abs(got[~normal]) < np.finfo(np.float64).tiny).all()
        relative = np.abs(got[normal] - expected[normal]) / np.abs(expected[normal])
        assert relative.max() <= 1e-12, f"{name} {options} output {i}: x={x[normal][np.argmax(relative)]}"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(4,), (), (2, 3), (2, 1, 3)])
def test_linear(bias, lead):
    """x (..., in_features): the leading dimensions are rows of one product."""
    rng = rng_for("linear", bias, lead)
    x, w, b = rng.standard_normal(lead + (7,)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    rows = x.reshape(-1, 7)
    y = F.linear(x, w, b if bias else None)
    assert y.shape == lead + (3,) and rel_ok(y.reshape(-1, 3), ref.linear(rows, w, b if bias else None))
    dy = rng.standard_normal(lead + (3,))
    dx, dw, db = F.linear_backward(dy, x, w, bias=bias)
    dx_ref, dw_ref, db_ref = ref.linear_backward(dy.reshape(-1, 3), rows, w)
    assert dx.shape == x.shape and rel_ok(dx.reshape(-1, 7), dx_ref) and rel_ok(dw, dw_ref)
    assert (db is None) if not bias else rel_ok(db, db_ref)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_linear_of_no_features_is_the_bias(be):
    """As in PyTorch: an empty product is 0 (the rows' count could not be inferred from 0 features)."""
    rng = rng_for("linear0", be)
    x, w, b, dy = np.empty((2, 3, 0)), np.empty((4, 0)), rng.standard_normal(4), rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(F.linear(x, w, b, backend=be), np.broadcast_to(b, (2, 3, 4)))
    dx, dw, db = F.linear_backward(dy, x, w, backend=be)
    assert dx.shape == x.shape and dw.shape == w.shape and rel_ok(db, dy.sum(axis=(0, 1)))


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_cross_entropy(scale):
    rng = rng_for("ce", scale)
    logits = rng.standard_normal((5, 4)) * scale   # large logits: the log-softmax must stay finite
    labels = rng.integers(0, 4, size=5)
    loss, grad = F.cross_entropy(logits, labels)
    loss_ref, grad_ref = ref.cross_entropy(logits, labels)
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= TOL * abs(loss_ref)
    assert rel_ok(grad, grad_ref)


CE_OPTION_CASES = [
    # (logits shape, probabilities, weight, ignore_index, reduction, label_smoothing)
    ((5, 4), False, True, 2, "mean", 0.0),
    ((5, 4), False, True, -100, "mean", 0.3),
    ((3, 4, 2, 3), False, True, 1, "mean", 0.2),       # K-dimensional, weighted, ignored, smoothed
    ((3, 4, 5), False, False, 0, "sum", 0.1),
    ((2, 3, 2, 2), False, True, -100, "none", 0.5),
    ((4, 3), True, True, -100, "mean", 0.2),
    ((2, 5, 3), True, False, -1, "sum", 0.0),
    ((2, 3, 2, 2), True, True, -100, "none", 1.0),
]


@pytest.mark.parametrize("case", CE_OPTION_CASES)
def test_cross_entropy_options(case):
    shape, probabilities, weighted, ignore_index, reduction, label_smoothing = case
    rng = rng_for("ce options", case)
    logits = rng.standard_normal(shape) * 3
    weight = rng.uniform(0.2, 2.0, shape[1]) if weighted else None
    if probabilities:
        target = rng.random(shape)
        target /= target.sum(axis=1, keepdims=True)
    else:
        target = rng.integers(0, shape[1], shape[:1] + shape[2:])
    options = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    loss, grad = F.cross_entropy(logits, target, weight, **options)
    loss_ref, grad_ref = ref.cross_entropy_options(logits, target, weight, **options)
    if reduction == "none":
        assert rel_ok(loss, loss_ref)
    else:
        assert isinstance(loss, float) and abs(loss - loss_ref) <= TOL * abs(loss_ref)
    assert rel_ok(grad, grad_ref)


def test_cross_entropy_of_only_ignored_targets():
    """The mean over no counted target is NaN and the gradient is zero (PyTorch's answer)."""
    logits = rng_for("ignored").standard_normal((3, 4))
    loss, grad = F.cross_entropy(logits, np.full(3, 2), ignore_index=2, label_smoothing=0.1)
    assert math.isnan(loss) and (grad == 0).all()


@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_an_ignored_row_of_infinite_logits_adds_nothing(be):
    """As PyTorch: an ignored position whose logits are all -inf (its log-softmax is NaN) adds 0
    to the loss, in every reduction, on the NumPy path and the kernels (it was NaN)."""
    from cnn_gpu import backend
    if backend.why_unavailable(be):
        pytest.skip(backend.why_unavailable(be))
    logits = np.array([[1.0, 2.0, 0.5], [-np.inf, -np.inf, -np.inf]])
    target = np.array([0, 1])
    expected = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5)) - 1.0
    with np.errstate(invalid="ignore"):
        for reduction in ("mean", "sum"):
            loss, _ = F.cross_entropy(logits, target, ignore_index=1, reduction=reduction, backend=be)
            assert abs(loss - expected) <= 1e-14
        losses, _ = F.cross_entropy(logits, target, ignore_index=1, reduction="none", backend=be)
    np.testing.assert_allclose(losses, [expected, 0.0], rtol=1e-14)


def test_mse_loss():
    rng = rng_for("mse")
    pred, target = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    loss, grad = F.mse_loss(pred, target)
    loss_ref, grad_ref = ref.mse_loss(pred, target)
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= TOL * abs(loss_ref)
    assert rel_ok(grad, grad_ref)


def rel_ok(actual, expected):
    assert actual.dtype == np.float64, actual.dtype
    error = ref.rel_error(actual, expected)
    assert error <= TOL, f"relative error {error:.3e}"
    return True


def test_any_memory_layout():
    """Non-contiguous, reversed and Fortran-ordered inputs give the results of C-contiguous copies
    (up to BLAS summation order): the strided views must use the arrays' own strides."""
    rng = rng_for("layout")
    base = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((4, 4, 3, 3))
    views = [base[:, :, ::-1], base.transpose(0, 1, 3, 2)[:, :, :6, :6], np.asfortranarray(base),
             base[:, ::2].repeat(2, axis=1)[:, :, 1:, ::-1]]
    calls = [
        lambda a: F.conv2d(a, w, stride=2, padding=1),
        lambda a: F.conv2d(a, w[:, :1], groups=4, padding=(0, 1)),
        lambda a: F.conv2d(a, w[:, :, :1, :1]),
        lambda a: F.conv_transpose2d(a, w, stride=2, output_padding=1),
        lambda a: F.conv2d_backward(a, a, w[:, :, :1, :1])[1],
        lambda a: F.max_pool2d(a, 3, 2, 1)[0],
        lambda a: F.avg_pool2d(a, 2, ceil_mode=True),
        lambda a: F.tanh_backward(a, a),
    ]
    for view in views:
        for call in calls:
            assert rel_ok(call(view), call(np.ascontiguousarray(view)))


def test_conv_batch_blocks_on_threads_are_bit_identical(conv_path, monkeypatch):
    """Tiny batch blocks spread over 1, 2 and 3 threads: the same bits each time (disjoint output
    slices, weight-gradient partials added in block order), and right against the direct loops."""
    from cnn_gpu.functional import conv
    rng = np.random.default_rng(42)
    x = rng.standard_normal((7, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    geo = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)          # one image per block: 7+ blocks
    conv.blas_threads()                                  # the real BLAS handle the pool limits
    monkeypatch.setattr(conv, "_pool", None)              # so the assertion below sees this test's pool
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(conv, "blas_threads", lambda threads=threads: threads)
        y = F.conv2d(x, w, b, **geo)
        dy = np.random.default_rng(7).standard_normal(y.shape)
        results.append((y, *F.conv2d_backward(dy, x, w, **geo)))
    assert conv._pool is not None and conv._pool[1] == 3, "the blocks never reached the thread pool"
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            np.testing.assert_array_equal(a, e)
    y, dx, dw, db = results[0]
    assert rel_ok(y, ref.conv2d(x, w, b, **geo))
    dy = np.random.default_rng(7).standard_normal(y.shape)
    assert rel_ok(dw, ref.conv2d_weight_grad(dy, x, w.shape, **geo))
    assert rel_ok(dx, ref.conv2d_input_grad(dy, w, x.shape, **geo))
