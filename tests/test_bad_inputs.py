"""Bad arguments raise the documented ValueError/TypeError, naming the argument, before any work."""
import numpy as np
import pytest

from cnn_gpu import functional as F

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 6, 6))
W = rng.standard_normal((3, 4, 3, 3))
X32 = X.astype(np.float32)
Y = F.conv2d(X, W, padding=1)
POOLED, INDICES = F.max_pool2d(X, 2)
LOGITS = rng.standard_normal((5, 3))

CASES = [
    # (id, call, error type, message pattern)
    ("conv x rank", lambda: F.conv2d(X[0, 0], W), ValueError, r"x must be 3-D or 4-D.*\(6, 6\)"),
    ("conv weight rank", lambda: F.conv2d(X, W[0]), ValueError, r"weight must be 4-D"),
    ("conv channel mismatch", lambda: F.conv2d(X, W[:, :3]), ValueError, r"weight shape \(3, 3, 3, 3\).*x has 4"),
    ("conv groups divide", lambda: F.conv2d(X, W[:, :2], groups=2), ValueError,
     r"out_channels \(3\) must both be divisible by groups \(2\)"),
    ("conv groups zero", lambda: F.conv2d(X, W, groups=0), ValueError, r"groups must be a positive int"),
    ("conv groups type", lambda: F.conv2d(X, W, groups=1.0), TypeError, r"groups must be a positive int"),
    ("conv dtype mismatch", lambda: F.conv2d(X32, W), TypeError, r"weight has dtype float64 but x has dtype float32"),
    ("conv integer dtype", lambda: F.conv2d(X.astype(np.int64), W), TypeError, r"x must be float16, float32 or float64"),
    ("conv float16 with float64", lambda: F.conv2d(X.astype(np.float16), W), TypeError,
     r"weight has dtype float64 but x has dtype float16"),
    ("conv stride zero", lambda: F.conv2d(X, W, stride=0), ValueError, r"stride must be >= 1"),
    ("conv stride pair length", lambda: F.conv2d(X, W, stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair"),
    ("conv stride float", lambda: F.conv2d(X, W, stride=1.5), TypeError, r"stride must be an int"),
    ("conv negative padding", lambda: F.conv2d(X, W, padding=-1), ValueError, r"padding must be >= 0"),
    ("conv dilation zero", lambda: F.conv2d(X, W, dilation=(1, 0)), ValueError, r"dilation must be >= 1"),
    ("conv empty output", lambda: F.conv2d(X, W, dilation=4), ValueError, r"output would be empty"),
    ("conv bias shape", lambda: F.conv2d(X, W, np.zeros(4)), ValueError, r"bias must have shape \(3,\)"),
    ("conv bias dtype", lambda: F.conv2d(X, W, np.zeros(3, np.float32)), TypeError, r"bias has dtype float32"),
    ("conv list input", lambda: F.conv2d(X.tolist(), W), TypeError, r"x must be a NumPy or CuPy array, got list"),
    ("conv activation", lambda: F.conv2d(X, W, activation="gelu"), ValueError, r"activation must be None or 'relu'"),
    ("conv backward dy shape", lambda: F.conv2d_backward(Y[:, :, 1:], X, W, padding=1), ValueError,
     r"dy must have shape \(2, 3, 6, 6\)"),
    ("conv backward dy dtype", lambda: F.conv2d_backward(Y.astype(np.float32), X, W, padding=1), TypeError,
     r"dy has dtype float32"),
    ("conv backward bias flag", lambda: F.conv2d_backward(Y, X, W, padding=1, bias=None), TypeError,
     r"bias must be True or False"),
    ("convT weight channels", lambda: F.conv_transpose2d(X, W), ValueError, r"weight shape \(3, 4, 3, 3\) expects 3 input"),
    ("convT output_padding", lambda: F.conv_transpose2d(X, W.transpose(1, 0, 2, 3), stride=2, output_padding=2),
     ValueError, r"output_padding \(2, 2\) must be smaller than stride"),
    ("convT empty output", lambda: F.conv_transpose2d(X[:, :, :1, :1], W.transpose(1, 0, 2, 3), padding=2),
     ValueError, r"output would be empty"),
    ("max_pool kernel zero", lambda: F.max_pool2d(X, 0), ValueError, r"kernel_size must be >= 1"),
    ("max_pool padding > half kernel", lambda: F.max_pool2d(X, 2, padding=2), ValueError,
     r"padding \(2, 2\) must be at most half of kernel_size"),
    ("max_pool x rank", lambda: F.max_pool2d(X[0, 0], 2), ValueError, r"x must be 3-D or 4-D"),
    ("max_pool ceil_mode type", lambda: F.max_pool2d(X, 2, ceil_mode="yes"), TypeError, r"ceil_mode must be True or False"),
    ("max_pool empty output", lambda: F.max_pool2d(X, 7), ValueError, r"output would be empty"),
    ("max_pool backward indices dtype", lambda: F.max_pool2d_backward(POOLED, INDICES.astype(np.int64), X.shape, 2),
     TypeError, r"indices must be int32"),
    ("max_pool backward indices shape", lambda: F.max_pool2d_backward(POOLED, INDICES[:, :, :2], X.shape, 2),
     ValueError, r"indices must have shape \(2, 4, 3, 3\)"),
    ("max_pool backward indices range", lambda: F.max_pool2d_backward(POOLED, INDICES + 40, X.shape, 2),
     ValueError, r"indices must lie in \[-1, 36\)"),
    ("max_pool backward indices list", lambda: F.max_pool2d_backward(POOLED, INDICES.tolist(), X.shape, 2),
     TypeError, r"indices must be a NumPy or CuPy int32 array"),
    ("max_pool backward dy shape", lambda: F.max_pool2d_backward(POOLED, INDICES, (2, 4, 8, 8), 2), ValueError,
     r"dy must have shape \(2, 4, 4, 4\)"),
    ("max_pool backward x_shape", lambda: F.max_pool2d_backward(POOLED, INDICES, (4, 6), 2), ValueError,
     r"x_shape must be a tuple of 3 or 4 ints"),
    ("max_pool backward rank mismatch", lambda: F.max_pool2d_backward(POOLED, INDICES, (4, 6, 6), 2), ValueError,
     r"dy must be 3-D"),
    ("avg_pool count_include_pad type", lambda: F.avg_pool2d(X, 2, count_include_pad=1), TypeError,
     r"count_include_pad must be True or False"),
    ("avg_pool backward dy shape", lambda: F.avg_pool2d_backward(POOLED[:, :1], X.shape, 2), ValueError,
     r"dy must have shape \(2, 4, 3, 3\)"),
    ("relu non-array", lambda: F.relu([1.0, -1.0]), TypeError, r"x must be a NumPy or CuPy array"),
    ("relu backward shape", lambda: F.relu_backward(X[:1], X), ValueError, r"dy must have shape \(2, 4, 6, 6\)"),
    ("tanh backward dtype", lambda: F.tanh_backward(X32, X), TypeError, r"dy has dtype float32 but x has dtype float64"),
    ("leaky_relu slope", lambda: F.leaky_relu(X, "0.1"), TypeError, r"negative_slope must be a real number"),
    ("silu integer x", lambda: F.silu(X.astype(np.int32)), TypeError, r"x must be float16, float32 or float64"),
    ("silu backward shape", lambda: F.silu_backward(X[:1], X), ValueError, r"dy must have shape \(2, 4, 6, 6\)"),
    ("gelu non-array", lambda: F.gelu([1.0]), TypeError, r"x must be a NumPy or CuPy array"),
    ("gelu backward dtype", lambda: F.gelu_backward(X32, X), TypeError, r"dy has dtype float32 but x has dtype float64"),
    ("gelu approximate", lambda: F.gelu(X, approximate="erf"), ValueError, r"approximate must be 'none' or 'tanh'"),
    ("gelu backward approximate type", lambda: F.gelu_backward(X, X, approximate=True), TypeError,
     r"approximate must be a str"),
    ("gelu approximate positional", lambda: F.gelu(X, "tanh"), TypeError, r"positional argument"),
    ("linear weight rank", lambda: F.linear(LOGITS, W[0, 0, 0]), ValueError, r"weight must be 2-D"),
    ("linear in_features", lambda: F.linear(LOGITS, np.ones((2, 4))), ValueError,
     r"x has 3 features \(shape \(5, 3\)\) but weight expects 4"),
    ("linear backward dy shape", lambda: F.linear_backward(np.ones((5, 3)), LOGITS, np.ones((2, 3))), ValueError,
     r"dy must have shape \(5, 2\)"),
    ("cross_entropy label range", lambda: F.cross_entropy(LOGITS, np.array([0, 1, 2, 3, 0])), ValueError,
     r"target\[3\] = 3 is out of range for 3 classes"),
    ("cross_entropy negative label", lambda: F.cross_entropy(LOGITS, np.array([0, -1, 2, 1, 0])), ValueError,
     r"target\[1\] = -1 is out of range"),
    ("cross_entropy label shape", lambda: F.cross_entropy(LOGITS, np.zeros((5, 1), np.int64)), ValueError,
     r"target must have shape \(5,\)"),
    ("cross_entropy float labels", lambda: F.cross_entropy(LOGITS, np.zeros(5)), TypeError,
     r"target must hold integer class indices"),
    ("cross_entropy logits rank", lambda: F.cross_entropy(LOGITS[0], np.zeros(1, np.int64)), ValueError,
     r"target must have shape \(\)"),
    ("cross_entropy reduction", lambda: F.cross_entropy(LOGITS, np.zeros(5, np.int64), reduction="avg"), ValueError,
     r"reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    ("cross_entropy label_smoothing", lambda: F.cross_entropy(LOGITS, np.zeros(5, np.int64), label_smoothing=1.5),
     ValueError, r"label_smoothing must be between 0.0 and 1.0"),
    ("cross_entropy weight shape", lambda: F.cross_entropy(LOGITS, np.zeros(5, np.int64), np.ones(4)), ValueError,
     r"weight must have shape \(3,\)"),
    ("cross_entropy ignore_index type", lambda: F.cross_entropy(LOGITS, np.zeros(5, np.int64), ignore_index=1.5),
     TypeError, r"ignore_index must be an int"),
    ("cross_entropy probabilities ignore_index", lambda: F.cross_entropy(LOGITS, LOGITS, ignore_index=0),
     ValueError, r"ignore_index \(0\) is not supported with class-probability targets"),
    ("mse reduction", lambda: F.mse_loss(LOGITS, LOGITS, reduction="avg"), ValueError, r"reduction must be"),
    ("conv padding string", lambda: F.conv2d(X, W, padding="Same"), ValueError,
     r"padding must be an int, a pair of ints, 'same' or 'valid', got 'Same'"),
    ("conv same strided", lambda: F.conv2d(X, W, padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    ("convT padding string", lambda: F.conv_transpose2d(X, W.transpose(1, 0, 2, 3), padding="same"), TypeError,
     r"padding must be an int or a pair of ints, got 'same'"),
    ("avg_pool divisor zero", lambda: F.avg_pool2d(X, 2, divisor_override=0), ValueError,
     r"divisor_override must be None or a non-zero int"),
    ("avg_pool divisor float", lambda: F.avg_pool2d(X, 2, divisor_override=2.0), TypeError,
     r"divisor_override must be None or a non-zero int"),
    ("linear 0-D x", lambda: F.linear(np.ones(()), np.ones((2, 1))), ValueError,
     r"x must have at least 1 dimension"),
    ("mse shape", lambda: F.mse_loss(LOGITS, LOGITS[:, :2]), ValueError,
     r"target of shape \(5, 2\) does not broadcast with pred of shape \(5, 3\)"),
    ("mse dtype", lambda: F.mse_loss(LOGITS, LOGITS.astype(np.float32)), TypeError, r"target has dtype float32"),
    ("unknown backend", lambda: F.relu(X, backend="tpu"), ValueError, r"unknown backend 'tpu'"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.filterwarnings("ignore:Using a target size")   # mse_loss's warning (PyTorch's), before its refusal
def test_bad_input_raises(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_enough_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 25


def test_numpy_integer_sizes_are_accepted():
    """groups, like the other size arguments, may be any integer type (np.int64 from a shape)."""
    w = W[:, :1].repeat(2, axis=0)[:4]
    np.testing.assert_array_equal(F.conv2d(X, w, groups=np.int64(4), stride=np.int32(2)),
                                  F.conv2d(X, w, groups=4, stride=2))


def test_cupy_numpy_mix_is_a_type_error():
    """Mixing kinds is caught by backend.resolve before any work (a fake CuPy array suffices)."""
    fake_cupy = type("ndarray", (), {"__module__": "cupy"})
    fake = fake_cupy()
    fake.dtype, fake.ndim, fake.shape = X.dtype, 4, W.shape
    with pytest.raises(TypeError, match="mix CuPy and NumPy"):
        F.conv2d(X, fake)


def test_conv_geometry_is_remembered_for_plain_arguments_only():
    """conv_geometry keeps its answers per shapes and options of ints, strings and tuples of ints
    (a layer's repeated call gets the same object back); True and 1.0, equal to 1 as keys, are
    still refused after 1 was answered."""
    from cnn_gpu.functional.geometry import conv_geometry
    plain = dict(stride=1, padding=(1, 1), dilation=1, groups=1)
    first = conv_geometry(X.shape, W.shape, **plain)
    assert conv_geometry(X.shape, W.shape, **plain) is first and first.P == X.shape[2]
    for bad in (dict(stride=True), dict(stride=1.0), dict(padding=(1, True)), dict(dilation=(1.0, 1)),
                dict(groups=True)):
        with pytest.raises(TypeError, match="must be"):
            conv_geometry(X.shape, W.shape, **{**plain, **bad})
