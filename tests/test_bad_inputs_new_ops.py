"""The ops of the last stop refuse bad inputs that PyTorch 2.13 refuses too (each case names our
exception type and message; PyTorch's may be another error type), before any kernel launches:
wrong shapes, dtypes and ranks, option values and sizes that give an empty output, label and index
ranges, negative variances; an in-place activation that refuses leaves its input as it was. Each
case runs on the emulator with every launch and every other device work refused
(helpers.refuse_device_work: softmin's negation, lp_pool's power, a fill) and on PyTorch, which
must refuse it too."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from helpers import needs_cuda, needs_emu, refuse_device_work

rng = np.random.default_rng(11)
X2 = rng.standard_normal((4, 3))
X3 = rng.standard_normal((2, 3, 6))
X4 = rng.standard_normal((2, 3, 5, 5))
X5 = rng.standard_normal((2, 3, 4, 4, 4))
COLUMNS = rng.standard_normal((2, 12, 16))   # unfold of (2, 3, 5, 5) by 2x2 windows
POOLED, INDICES = F.max_pool2d_with_indices(X4, 2, backend="numpy")
LABELS = np.array([0, 2, 1, 1])
VAR = np.abs(X2) + 0.1
NEGATIVE_VAR = VAR.copy()
NEGATIVE_VAR[2, 1] = -0.5


# (id, our call, PyTorch's call of torch.nn.functional `tf` and a converter `t` of arrays, error, our message)
CASES = [
    ("celu alpha 0", lambda: F.celu(X4, alpha=0.0), lambda tf, t: tf.celu(t(X4), alpha=0.0), ValueError,
     "alpha cannot be 0"),
    ("softshrink negative lambd", lambda: F.softshrink(X4, -1.0), lambda tf, t: tf.softshrink(t(X4), -1.0),
     ValueError, "lambda must be greater or equal to 0"),
    ("threshold not a number", lambda: F.threshold(X4, "a", 1.0), lambda tf, t: tf.threshold(t(X4), "a", 1.0),
     TypeError, "threshold must be a real number"),
    ("glu odd dimension", lambda: F.glu(X2), lambda tf, t: tf.glu(t(X2)), ValueError, "Halving dimension must be even"),
    ("glu dim out of range", lambda: F.glu(X4, dim=4), lambda tf, t: tf.glu(t(X4), dim=4), IndexError,
     "out of range"),
    ("softmin dim out of range", lambda: F.softmin(X2, dim=2), lambda tf, t: tf.softmin(t(X2), dim=2), IndexError,
     "out of range"),
    ("softmin_backward shapes", lambda: F.softmin_backward(X2, X2[:2], 1),
     lambda tf, t: tf.softmin(t(X2[:2]).requires_grad_(), 1).backward(t(X2)), ValueError, "dy must have shape"),
    ("selu_ integer", lambda: F.selu_(np.ones(3, np.int64)), lambda tf, t: tf.selu_(t(np.ones(3, np.int64))),
     TypeError, "x must be float16, float32 or float64"),
    ("max_unpool2d output_size", lambda: F.max_unpool2d(POOLED, INDICES, 2, output_size=(9, 9)),
     lambda tf, t: tf.max_unpool2d(t(POOLED), t(INDICES.astype(np.int64)), 2, output_size=(9, 9)), ValueError,
     "invalid output_size"),
    ("max_unpool2d output_size length", lambda: F.max_unpool2d(POOLED, INDICES, 2, output_size=(1, 5, 5, 5, 5)),
     lambda tf, t: tf.max_unpool2d(t(POOLED), t(INDICES.astype(np.int64)), 2, output_size=(1, 5, 5, 5, 5)),
     ValueError, "2 or 4 elements"),
    ("max_unpool2d indices shape", lambda: F.max_unpool2d(POOLED, INDICES[:, :1], 2),
     lambda tf, t: tf.max_unpool2d(t(POOLED), t(INDICES[:, :1].astype(np.int64)), 2), ValueError,
     "indices must have shape"),
    ("max_unpool2d float indices", lambda: F.max_unpool2d(POOLED, INDICES.astype(np.float64), 2),
     lambda tf, t: tf.max_unpool2d(t(POOLED), t(INDICES.astype(np.float64)), 2), TypeError, "indices must be int32"),
    ("max_unpool2d index range", lambda: F.max_unpool2d(POOLED, INDICES + 100, 2),
     lambda tf, t: tf.max_unpool2d(t(POOLED), t(INDICES.astype(np.int64) + 100), 2), ValueError,
     "invalid max index"),
    ("max_unpool1d rank", lambda: F.max_unpool1d(POOLED, INDICES, 2),
     lambda tf, t: tf.max_unpool1d(t(POOLED), t(INDICES.astype(np.int64)), 2), ValueError, "x must be 2-D or 3-D"),
    ("lp_pool2d window past the input", lambda: F.lp_pool2d(X4, 2, 7), lambda tf, t: tf.lp_pool2d(t(X4), 2, 7),
     ValueError, "output would be empty"),
    ("lp_pool2d stride 0", lambda: F.lp_pool2d(X4, 2, 2, stride=0), lambda tf, t: tf.lp_pool2d(t(X4), 2, 2, stride=0),
     ValueError, "stride must be >= 1"),
    ("lp_pool1d rank", lambda: F.lp_pool1d(X4, 2, 2), lambda tf, t: tf.lp_pool1d(t(X4), 2, 2), ValueError,
     "x must be 2-D or 3-D"),
    ("max_pool1d_with_indices padding", lambda: F.max_pool1d_with_indices(X3, 2, padding=2),
     lambda tf, t: tf.max_pool1d_with_indices(t(X3), 2, padding=2), ValueError, "at most half of kernel_size"),
    ("adaptive_max_pool1d_with_indices negative", lambda: F.adaptive_max_pool1d_with_indices(X3, -1),
     lambda tf, t: tf.adaptive_max_pool1d_with_indices(t(X3), -1), ValueError, "output_size must be a positive int"),
    ("unfold window past the input", lambda: F.unfold(X4, 7), lambda tf, t: tf.unfold(t(X4), 7), ValueError,
     "kernel_size=\\(7, 7\\)"),
    ("unfold negative padding", lambda: F.unfold(X4, 2, padding=-1), lambda tf, t: tf.unfold(t(X4), 2, padding=-1),
     ValueError, "padding must be >= 0"),
    ("fold output too small", lambda: F.fold(COLUMNS, (3, 3), 2), lambda tf, t: tf.fold(t(COLUMNS), (3, 3), 2),
     ValueError, "output_size=\\(3, 3\\)"),
    ("fold channels", lambda: F.fold(COLUMNS[:, :11], (5, 5), 2), lambda tf, t: tf.fold(t(COLUMNS[:, :11]), (5, 5), 2),
     ValueError, "divisible by the product of kernel_size"),
    ("fold block count", lambda: F.fold(COLUMNS[:, :, :15], (5, 5), 2),
     lambda tf, t: tf.fold(t(COLUMNS[:, :, :15]), (5, 5), 2), ValueError, "output_size=\\(5, 5\\)"),
    ("fold rank", lambda: F.fold(X4, (5, 5), 2), lambda tf, t: tf.fold(t(X4), (5, 5), 2), ValueError,
     "Expected 2D or 3D"),
    ("local_response_norm size 0", lambda: F.local_response_norm(X4, 0), lambda tf, t: tf.local_response_norm(t(X4), 0),
     ValueError, "size must be a positive int"),
    ("local_response_norm rank", lambda: F.local_response_norm(X2, 2), lambda tf, t: tf.local_response_norm(t(X2), 2),
     ValueError, "Expected 3D or higher"),
    ("normalize dim", lambda: F.normalize(X2, dim=2), lambda tf, t: tf.normalize(t(X2), dim=2), IndexError,
     "Dimension out of range"),
    ("cosine_similarity shapes", lambda: F.cosine_similarity(X2, X2[:, :2]),
     lambda tf, t: tf.cosine_similarity(t(X2), t(X2[:, :2])), ValueError, "must have the same shape"),
    ("pairwise_distance shapes", lambda: F.pairwise_distance(X2, X2[:, :2]),
     lambda tf, t: tf.pairwise_distance(t(X2), t(X2[:, :2])), ValueError, "must have the same shape"),
    ("one_hot negative", lambda: F.one_hot(np.array([0, -1])), lambda tf, t: tf.one_hot(t(np.array([0, -1]))),
     ValueError, "non-negative"),
    ("one_hot past num_classes", lambda: F.one_hot(np.array([0, 5]), 3),
     lambda tf, t: tf.one_hot(t(np.array([0, 5])), 3), ValueError, "smaller than num_classes"),
    ("one_hot float", lambda: F.one_hot(np.array([0.0, 1.0])), lambda tf, t: tf.one_hot(t(np.array([0.0, 1.0]))),
     TypeError, "int64"),
    ("one_hot no labels, 0 classes", lambda: F.one_hot(np.zeros(0, np.int64), 0),
     lambda tf, t: tf.one_hot(t(np.zeros(0, np.int64)), 0), ValueError, "Can not infer total number of classes"),
    ("max_pool3d rank", lambda: F.max_pool3d(X4[0], 2), lambda tf, t: tf.max_pool3d(t(X4[0]), 2), ValueError,
     "x must be 4-D or 5-D"),
    ("max_pool3d window past the input", lambda: F.max_pool3d(X5, 5), lambda tf, t: tf.max_pool3d(t(X5), 5),
     ValueError, "output would be empty"),
    ("avg_pool3d padding", lambda: F.avg_pool3d(X5, 2, padding=2), lambda tf, t: tf.avg_pool3d(t(X5), 2, padding=2),
     ValueError, "at most half of kernel_size"),
    ("avg_pool3d input smaller than the window", lambda: F.avg_pool3d(X5, (2, 5, 2), padding=1),
     lambda tf, t: tf.avg_pool3d(t(X5), (2, 5, 2), padding=1), ValueError, r"input image \(T: 4 H: 4 W: 4\) smaller"),
    ("avg_pool3d_backward input smaller than the window",
     lambda: F.avg_pool3d_backward(np.ones((2, 3, 3, 1, 3)), X5.shape, (2, 5, 2), padding=1),
     lambda tf, t: __import__("torch").ops.aten.avg_pool3d_backward(t(np.ones((2, 3, 3, 1, 3))), t(X5), [2, 5, 2],
                                                                    [2, 5, 2], [1, 1, 1], False, True, None),
     ValueError, "smaller than kernel size"),
    ("avg_pool3d divisor 0", lambda: F.avg_pool3d(X5, 2, divisor_override=0),
     lambda tf, t: tf.avg_pool3d(t(X5), 2, divisor_override=0), ValueError, "divisor_override"),
    ("adaptive_max_pool3d negative", lambda: F.adaptive_max_pool3d(X5, -1),
     lambda tf, t: tf.adaptive_max_pool3d(t(X5), -1), ValueError, "output_size must be positive"),
    ("adaptive_avg_pool3d pair", lambda: F.adaptive_avg_pool3d(X5, (2, 2)),
     lambda tf, t: tf.adaptive_avg_pool3d(t(X5), (2, 2)), ValueError, "a triple"),
    ("dropout3d p", lambda: F.dropout3d(X5, 1.5, seed=1), lambda tf, t: tf.dropout3d(t(X5), 1.5), ValueError,
     "between 0 and 1"),
    ("rms_norm shape", lambda: F.rms_norm(X2, (4,)), lambda tf, t: tf.rms_norm(t(X2), (4,)), ValueError,
     "must end with normalized_shape"),
    ("rms_norm weight", lambda: F.rms_norm(X2, (3,), np.ones(4)), lambda tf, t: tf.rms_norm(t(X2), (3,), t(np.ones(4))),
     ValueError, "weight must have shape"),
    ("multilabel_soft_margin_loss shapes", lambda: F.multilabel_soft_margin_loss(X2, X2[:, :2]),
     lambda tf, t: tf.multilabel_soft_margin_loss(t(X2), t(X2[:, :2])), ValueError, "target must have shape"),
    ("hinge_embedding_loss margin", lambda: F.hinge_embedding_loss(X2, X2, margin="a"),
     lambda tf, t: tf.hinge_embedding_loss(t(X2), t(X2), margin="a"), TypeError, "margin must be a real number"),
    ("margin_ranking_loss shapes", lambda: F.margin_ranking_loss(X2[0], X2[0], X2[1, :2]),
     lambda tf, t: tf.margin_ranking_loss(t(X2[0]), t(X2[0]), t(X2[1, :2])), ValueError, "does not broadcast"),
    ("cosine_embedding_loss target", lambda: F.cosine_embedding_loss(X2, X2, np.ones(3)),
     lambda tf, t: tf.cosine_embedding_loss(t(X2), t(X2), t(np.ones(3))), ValueError, "target must have shape"),
    ("triplet_margin_loss margin 0", lambda: F.triplet_margin_loss(X2, X2, X2, margin=0.0),
     lambda tf, t: tf.triplet_margin_loss(t(X2), t(X2), t(X2), margin=0.0), ValueError,
     "margin must be greater than 0"),
    ("triplet_margin_loss negative margin", lambda: F.triplet_margin_loss(X2, X2, X2, margin=-1),
     lambda tf, t: tf.triplet_margin_loss(t(X2), t(X2), t(X2), margin=-1), ValueError,
     "margin must be greater than 0"),
    ("multi_margin_loss float labels", lambda: F.multi_margin_loss(X2, LABELS.astype(np.float64)),
     lambda tf, t: tf.multi_margin_loss(t(X2), t(LABELS.astype(np.float64))), TypeError, "integer class indices"),
    ("multi_margin_loss label past the classes", lambda: F.multi_margin_loss(X2, LABELS + 1),
     lambda tf, t: tf.multi_margin_loss(t(X2), t(LABELS + 1)), ValueError, r"target\[1\] = 3 is out of range"),
    ("multi_margin_loss negative label", lambda: F.multi_margin_loss(X2, LABELS - 1, reduction="sum"),
     lambda tf, t: tf.multi_margin_loss(t(X2), t(LABELS - 1), reduction="sum"), ValueError,
     r"target\[0\] = -1 is out of range"),
    ("multi_margin_loss p", lambda: F.multi_margin_loss(X2, LABELS, p=3),
     lambda tf, t: tf.multi_margin_loss(t(X2), t(LABELS), p=3), ValueError, "only p == 1 and p == 2"),
    ("gaussian_nll_loss negative var", lambda: F.gaussian_nll_loss(X2, X2, NEGATIVE_VAR),
     lambda tf, t: tf.gaussian_nll_loss(t(X2), t(X2), t(NEGATIVE_VAR)), ValueError,
     r"var has negative entry/entries: var\[2, 1\] = -0.5"),
    ("gaussian_nll_loss negative var sum", lambda: F.gaussian_nll_loss(X2, X2, NEGATIVE_VAR[:, 1:2], reduction="sum"),
     lambda tf, t: tf.gaussian_nll_loss(t(X2), t(X2), t(NEGATIVE_VAR[:, 1:2]), reduction="sum"), ValueError,
     "var has negative entry"),
    ("gaussian_nll_loss one var, target shape", lambda: F.gaussian_nll_loss(X2, X2[:, :2], 0.5),
     lambda tf, t: tf.gaussian_nll_loss(t(X2), t(X2[:, :2]), 0.5), ValueError, "does not broadcast"),
    ("gaussian_nll_loss var shape", lambda: F.gaussian_nll_loss(X2, X2, VAR[:, :2]),
     lambda tf, t: tf.gaussian_nll_loss(t(X2), t(X2), t(VAR[:, :2])), ValueError, "var is of incorrect size"),
]
IDS = [case[0] for case in CASES]


@needs_emu
@pytest.mark.parametrize("ours, error, message", [(c[1], c[3], c[4]) for c in CASES], ids=IDS)
def test_refused_before_any_launch(monkeypatch, ours, error, message):
    refuse_device_work(monkeypatch)
    with backend.use_backend("emu"):
        with pytest.raises(error, match=message):
            ours()


@pytest.mark.torch
@pytest.mark.parametrize("theirs", [c[2] for c in CASES], ids=IDS)
def test_pytorch_refuses_it_too(torch, theirs):
    with pytest.raises((ValueError, TypeError, IndexError, RuntimeError, NotImplementedError)):
        theirs(torch.nn.functional, lambda a: torch.from_numpy(np.ascontiguousarray(a)))


@pytest.mark.parametrize("make, message", [
    (lambda: nn.TripletMarginLoss(margin=0.0), "margin must be greater than 0"),
    (lambda: nn.TripletMarginLoss(margin=-2), "margin must be greater than 0"),
    (lambda: nn.MultiMarginLoss(p=3), "only p == 1 and p == 2"),
    (lambda: nn.MultiMarginLoss(p=True), "only p == 1 and p == 2"),
], ids=["triplet margin 0", "triplet negative margin", "multi margin p 3", "multi margin p True"])
def test_modules_refuse_at_construction_what_pytorchs_do(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.torch
@pytest.mark.parametrize("name, error", [(1, TypeError), (None, TypeError), ("", KeyError), ("a.b", KeyError)])
def test_parameter_and_module_names_are_refused_as_pytorch_refuses_them(torch, name, error):
    for ours, theirs in ((lambda: nn.ParameterDict({name: nn.Parameter(X2)}),
                          lambda: torch.nn.ParameterDict({name: torch.nn.Parameter(torch.ones(2))})),
                         (lambda: nn.Module().register_parameter(name, None),
                          lambda: torch.nn.Module().register_parameter(name, None)),
                         (lambda: nn.Module().add_module(name, None),
                          lambda: torch.nn.Module().add_module(name, None))):
        with pytest.raises(error):
            theirs()
        with pytest.raises(error, match="name"):
            ours()


@needs_emu
@pytest.mark.parametrize("op, options, error", [
    ("celu_", dict(alpha=0.0), ValueError),
    ("elu_", dict(alpha=float("nan")), ValueError),
    ("threshold_", dict(threshold="a", value=1.0), TypeError),
    ("leaky_relu_", dict(negative_slope="x"), TypeError),
])
def test_a_refused_in_place_activation_leaves_x_as_it_was(monkeypatch, op, options, error):
    x = rng.standard_normal((3, 4))
    before = x.copy()
    refuse_device_work(monkeypatch)
    with pytest.raises(error):
        getattr(F, op)(x, **options, backend="emu")
    np.testing.assert_array_equal(x, before)


@needs_cuda
def test_on_cuda_a_negative_variance_and_a_class_out_of_range_are_refused_before_any_launch(monkeypatch):
    """The cuda path reads any(var < 0) and the labels' range check back before its launches (as_array: not
    read, the loss NaN)."""
    import cupy
    var, labels = cupy.asarray(NEGATIVE_VAR), cupy.asarray(LABELS + 1)
    x = cupy.asarray(X2)
    for as_array in (True, False):
        if as_array:
            assert bool(cupy.isnan(F.gaussian_nll_loss(x, x, var, backend="cuda", as_array=True)[0]))
            assert bool(cupy.isnan(F.multi_margin_loss(x, labels, backend="cuda", as_array=True)[0]))
            continue
        with monkeypatch.context() as patch:
            refuse_device_work(patch)
            with pytest.raises(ValueError, match=r"var\[2, 1\] = -0.5"):
                F.gaussian_nll_loss(x, x, var, backend="cuda")
            with pytest.raises(ValueError, match=r"target\[1\] = 3 is out of range"):
                F.multi_margin_loss(x, labels, backend="cuda")
