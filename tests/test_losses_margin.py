"""F.soft_margin_loss, F.hinge_embedding_loss, F.margin_ranking_loss, F.poisson_nll_loss,
F.gaussian_nll_loss, F.multilabel_soft_margin_loss, F.multi_margin_loss, F.cosine_embedding_loss and
F.triplet_margin_loss and their layers: PyTorch 2.13 CPU (values
and the gradients of every differentiable input, every reduction and option, broadcasting, the
kinks where torch's clamp_min passes its gradient, var's shapes and clamp), float64 references
written out here, finite differences, float16 rounding, the kernels on the emulator (guard zones and
the race check), bad arguments refused before any launch."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cnn_gpu import emu, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import gradcheck
from helpers import needs_cuda, needs_emu, refuse_launches, to_host

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
REDUCTIONS = ("mean", "sum", "none")
F16 = np.float16


def cases(dtype):
    """name -> (op, positional arrays, keyword options, the positions of the arrays with gradients)."""
    rng = np.random.default_rng(134)

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def signs(*shape):
        return rng.choice(np.array([-1, 1], dtype), shape)

    scores = randn(4, 5, scale=2.0)
    distances = np.abs(randn(4, 5)) * dtype(2)
    pairs = signs(4, 5)
    distances[0, :2], pairs[0, :2] = 1, -1         # margin - x = 0: clamp_min's gradient passes
    odd_targets = pairs.copy()
    odd_targets[1, :3] = (0, 2, 0.5)                # neither +1 nor -1: torch's formula takes both terms
    first, second = randn(6), randn(6)
    second[0] = first[0]                            # a zero gap at margin 0
    counts = rng.poisson(2.5, (3, 4)).astype(dtype)
    counts[0, :2] = (0, 1)                          # Stirling's term only where t > 1
    rates = rng.uniform(0.1, 4, (3, 4)).astype(dtype)
    mean, goal = randn(4, 3), randn(4, 3)
    var = rng.uniform(0.2, 2, (4, 3)).astype(dtype)
    # under eps: clamped, its gradient still flows (float16: under "gaussian full eps"'s 0.3, in range)
    var[0, 0] = 1e-9 if dtype != F16 else 0.25
    logits, labels = randn(4, 5, scale=3.0), (rng.uniform(size=(4, 5)) > 0.5).astype(dtype)
    classes = rng.integers(0, 5, 4)
    pair_targets = np.array([1, -1, 1, -1, 0], dtype)   # 0: neither, no loss
    triplets = [randn(6, 5), randn(6, 5), randn(6, 5)]
    return {
        "soft_margin": ("soft_margin_loss", [scores, pairs], {}, (0,)),
        "soft_margin broadcast": ("soft_margin_loss", [scores, pairs[0]], {}, (0,)),
        "hinge": ("hinge_embedding_loss", [distances, pairs], {}, (0,)),
        "hinge margin 0.5, odd targets": ("hinge_embedding_loss", [distances, odd_targets], dict(margin=0.5), (0,)),
        "margin_ranking": ("margin_ranking_loss", [first, second, signs(6)], {}, (0, 1)),
        "margin_ranking margin 0.3": ("margin_ranking_loss", [first, second, signs(6)], dict(margin=0.3), (0, 1)),
        "margin_ranking broadcast": ("margin_ranking_loss", [randn(4, 1), randn(1, 5), signs(4, 5)],
                                     dict(margin=0.2), (0, 1)),
        "poisson": ("poisson_nll_loss", [randn(3, 4), counts], {}, (0,)),
        "poisson full": ("poisson_nll_loss", [randn(3, 4), counts], dict(full=True), (0,)),
        "poisson rates eps": ("poisson_nll_loss", [rates, counts], dict(log_input=False, eps=1e-3), (0,)),
        "poisson rates full broadcast": ("poisson_nll_loss", [rates[:, :1], counts], dict(log_input=False, full=True),
                                         (0,)),
        "gaussian": ("gaussian_nll_loss", [mean, goal, var], {}, (0, 2)),
        "gaussian full eps": ("gaussian_nll_loss", [mean, goal, var], dict(full=True, eps=0.3), (0, 2)),
        "gaussian var (N,)": ("gaussian_nll_loss", [mean, goal, var[:, 0]], {}, (0, 2)),
        "gaussian var (N, 1)": ("gaussian_nll_loss", [mean, goal, var[:, :1]], {}, (0, 2)),
        "gaussian var (1, D)": ("gaussian_nll_loss", [mean, goal, var[:1]], {}, (0, 2)),
        "multilabel": ("multilabel_soft_margin_loss", [logits, labels], {}, (0,)),
        "multilabel weight": ("multilabel_soft_margin_loss", [logits, labels], dict(weight=randn(5) ** 2), (0,)),
        "multilabel (N, H, C) unbatched (C,)": ("multilabel_soft_margin_loss", [logits.reshape(2, 2, 5), labels.reshape(
            2, 2, 5)], {}, (0,)),
        "multilabel (C,)": ("multilabel_soft_margin_loss", [logits[0], labels[0]], {}, (0,)),
        "multi_margin": ("multi_margin_loss", [logits, classes], {}, (0,)),
        "multi_margin p=2 margin weight": ("multi_margin_loss", [logits, classes],
                                           dict(p=2, margin=0.7, weight=randn(5) ** 2), (0,)),
        "multi_margin unbatched": ("multi_margin_loss", [logits[1], np.array(3)], dict(margin=2.0), (0,)),
        "cosine": ("cosine_embedding_loss", [randn(5, 6), randn(5, 6), pair_targets], {}, (0, 1)),
        "cosine margin": ("cosine_embedding_loss", [randn(5, 6), randn(5, 6), pair_targets], dict(margin=-0.3),
                          (0, 1)),
        "cosine (D,)": ("cosine_embedding_loss", [randn(6), randn(6), np.array(-1, dtype)], dict(margin=-0.5), (0, 1)),
        "triplet": ("triplet_margin_loss", triplets, {}, (0, 1, 2)),
        "triplet p=1 swap margin": ("triplet_margin_loss", triplets, dict(p=1, swap=True, margin=0.5), (0, 1, 2)),
        "triplet p=3 eps": ("triplet_margin_loss", triplets, dict(p=3, eps=1e-3, margin=2.0), (0, 1, 2)),
        "triplet (N, M, D) p=1.5 swap": ("triplet_margin_loss", [randn(2, 3, 4), randn(2, 3, 4), randn(2, 3, 4)],
                                         dict(p=1.5, swap=True, margin=3.0), (0, 1, 2)),
        "triplet (D,)": ("triplet_margin_loss", [t[0] for t in triplets], dict(margin=4.0), (0, 1, 2)),
    }


def torch_loss(torch, name, arrays, options, reduction, differentiable):
    """torch's loss and the gradients of its sum with respect to the differentiable arrays."""
    tensors = [torch.tensor(a, requires_grad=i in differentiable) for i, a in enumerate(arrays)]
    options = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss = getattr(torch.nn.functional, name)(*tensors, reduction=reduction, **options)
    loss.sum().backward()
    return loss.detach().numpy(), [tensors[i].grad.numpy() for i in differentiable]


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_torch(be, dtype, torch):
    tolerance = 1e-12 if dtype == np.float64 else 2e-6
    for what, (name, arrays, options, differentiable) in cases(dtype).items():
        for reduction in REDUCTIONS:
            loss, *grads = getattr(F, name)(*arrays, reduction=reduction, backend=be, **options)
            want, want_grads = torch_loss(torch, name, arrays, options, reduction, differentiable)
            message = f"{what} {reduction} {be} {np.dtype(dtype).name}"
            if reduction == "none":
                assert loss.shape == want.shape and loss.dtype == dtype, message
            else:
                assert isinstance(loss, float), message
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(loss, want, rtol=tolerance, atol=tolerance * scale, err_msg=message)
            assert len(grads) == len(differentiable), message
            for grad, want_grad, i in zip(grads, want_grads, differentiable):
                assert grad.shape == arrays[i].shape and grad.dtype == dtype, message
                np.testing.assert_allclose(grad, want_grad, rtol=tolerance,
                                           atol=tolerance * float(np.abs(want_grad).max()), err_msg=f"{message} d{i}")


def reference(name, arrays, options):
    """Per-element (per-sample for multilabel) losses written out in float64 loops."""
    if name == "multi_margin_loss":
        x, y = arrays[0].reshape(-1, arrays[0].shape[-1]).astype(np.float64), arrays[1].reshape(-1)
        p, margin, weight = options.get("p", 1), options.get("margin", 1.0), options.get("weight")
        out = [sum(max(0.0, margin - x[n, y[n]] + x[n, c]) ** p * (1.0 if weight is None else float(weight[y[n]]))
                   for c in range(x.shape[1]) if c != y[n]) / x.shape[1] for n in range(len(x))]
        return np.array(out).reshape(arrays[1].shape)
    arrays = [a.astype(np.float64) for a in arrays]
    if name == "cosine_embedding_loss":
        a, b, y = (np.atleast_2d(arrays[0]), np.atleast_2d(arrays[1]), np.atleast_1d(arrays[2]))
        out = []
        for u, v, t in zip(a, b, y):
            cosine = float(u @ v) / math.sqrt((float(u @ u) + 1e-12) * (float(v @ v) + 1e-12))
            out.append(1 - cosine if t == 1 else max(0.0, cosine - options.get("margin", 0.0)) if t == -1 else 0.0)
        return np.array(out).reshape(arrays[2].shape)
    if name == "triplet_margin_loss":
        p, eps = options.get("p", 2), options.get("eps", 1e-6)
        rows = [a.reshape(-1, a.shape[-1]) for a in arrays]
        out = []
        for a, q, n in zip(*rows):
            distance = [sum(abs(u - v + eps) ** p for u, v in zip(x, y)) ** (1 / p)
                        for x, y in ((a, q), (a, n), (q, n))]
            negative = min(distance[1:]) if options.get("swap") else distance[1]
            out.append(max(0.0, options.get("margin", 1.0) + distance[0] - negative))
        return np.array(out).reshape(arrays[0].shape[:-1])
    if name == "multilabel_soft_margin_loss":
        x, y = arrays
        weight = np.broadcast_to(options.get("weight", 1.0), x.shape)
        out = np.zeros(x.shape[:-1])
        for index in np.ndindex(out.shape):
            terms = [-(b * math.log(1 / (1 + math.exp(-a))) + (1 - b) * math.log(1 / (1 + math.exp(a)))) * w
                     for a, b, w in zip(x[index], y[index], weight[index])]
            out[index] = sum(terms) / x.shape[-1]
        return out
    if name == "gaussian_nll_loss" and arrays[2].shape == arrays[0].shape[:-1]:
        arrays[2] = arrays[2][..., None]
    arrays = np.broadcast_arrays(*arrays)
    out = np.zeros(arrays[0].shape)
    for index in np.ndindex(out.shape):
        a, b, *rest = (float(v[index]) for v in arrays)
        if name == "soft_margin_loss":
            out[index] = math.log(1 + math.exp(-a * b))
        elif name == "hinge_embedding_loss":
            margin = options.get("margin", 1.0)
            out[index] = (max(0.0, margin - a) if b != 1 else 0.0) + (a if b != -1 else 0.0)
        elif name == "margin_ranking_loss":   # arrays: input1, input2, target
            out[index] = max(0.0, -rest[0] * (a - b) + options.get("margin", 0.0))
        elif name == "poisson_nll_loss":
            if options.get("log_input", True):
                out[index] = math.exp(a) - b * a
            else:
                out[index] = a - b * math.log(a + options.get("eps", 1e-8))
            if options.get("full") and b > 1:
                out[index] += b * math.log(b) - b + 0.5 * math.log(2 * math.pi * b)
        else:
            v = max(rest[0], options.get("eps", 1e-6))
            out[index] = 0.5 * (math.log(v) + (a - b) ** 2 / v) + (0.5 * math.log(2 * math.pi) if options.get("full")
                                                                    else 0.0)
    return out


def test_float64_references_and_finite_differences():
    for what, (name, arrays, options, differentiable) in cases(np.float64).items():
        op = getattr(F, name)
        loss, *_ = op(*arrays, reduction="none", **options)
        np.testing.assert_allclose(loss, reference(name, arrays, options), rtol=1e-12, atol=1e-12, err_msg=what)
        arrays = [a.copy() for a in arrays]
        if name in ("hinge_embedding_loss", "margin_ranking_loss"):
            arrays[0] += 0.01 * np.sign(arrays[0])   # off the kinks, where finite differences hold
        if name == "gaussian_nll_loss":
            arrays[2] = np.maximum(arrays[2], options.get("eps", 0.0) + 0.1)   # off the clamp at eps
        for reduction in ("mean", "sum"):
            _, *grads = op(*arrays, reduction=reduction, **options)
            inputs = [arrays[i] for i in differentiable]
            report = gradcheck(lambda: op(*arrays, reduction=reduction, **options)[0], inputs, grads)
            assert report.max_rel_error < 1e-6, f"{what} {reduction}: {report}"


@needs_emu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case on the emulator with guard zones and the race check, forward and reverse schedules;
    float16 is FP32 math rounded once, as the numpy path (its oracle)."""
    tolerance = {F16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for schedule in ("forward", "reverse"):
        with emu.checking(guard=True, race=True, schedule=schedule):
            for (what, (name, arrays, options, _)), reduction in itertools.product(cases(dtype).items(), REDUCTIONS):
                loss, *grads = getattr(F, name)(*arrays, reduction=reduction, backend="emu", **options)
                want, *want_grads = getattr(F, name)(*arrays, reduction=reduction, backend="numpy", **options)
                message = f"{what} {reduction} {np.dtype(dtype).name} {schedule}"
                for grad, want_grad in zip(grads, want_grads, strict=True):
                    assert grad.dtype == dtype, message
                    # the Poisson gradient exp(x) - t cancels: within tolerance of the gradients' size
                    np.testing.assert_allclose(grad, want_grad, rtol=tolerance,
                                               atol=tolerance * float(np.abs(want_grad).max()), err_msg=message)
                # the Poisson loss without log_input cancels: within tolerance of its terms' size
                np.testing.assert_allclose(np.asarray(loss, np.float64), np.asarray(want, np.float64), rtol=tolerance,
                                           atol=tolerance * max(1.0, float(np.abs(want).max())), err_msg=message)


def long_row_losses(be):
    """The row kernels' losses and gradients, float64, reduction "none", on rows of 5 (8 lanes a row, 32
    rows a block: the last block's groups past row 37 walk nothing) and rows longer than a warp (64 and
    256 lanes, some taking two elements)."""
    rng = np.random.default_rng(139)
    results = []
    for rows, dim in ((37, 5), (3, 40), (3, 300)):
        x1, x2, x3 = (rng.standard_normal((rows, dim)) for _ in range(3))
        labels = np.arange(rows) * 7 % dim
        results += [*F.multi_margin_loss(x1, labels, reduction="none", backend=be),
                    *F.multi_margin_loss(x1, labels, p=2, margin=0.7, weight=rng.uniform(0.5, 2, dim),
                                         reduction="none", backend=be),
                    *F.cosine_embedding_loss(x1, x2, np.resize([1.0, -1.0, -1.0], rows), margin=-0.2, reduction="none",
                                             backend=be),
                    *F.triplet_margin_loss(x1, x2, x3, reduction="none", backend=be),
                    *F.triplet_margin_loss(x1, x2, x3, p=1.5, swap=True, margin=30.0, reduction="none", backend=be)]
    return results


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_rows_by_lane_groups_are_the_numpy_paths_under_the_race_check(schedule):
    """multi_margin_rows, cosine_embedding_rows and triplet_margin_rows reduce a row by a group of lanes
    (rows.cuh's for_each_row): within 1e-12 of the NumPy path, guard zones and the race check on
    group_reduce's scratch, and bit for bit the same under the forward and this schedule."""
    runs = []
    for options in (dict(schedule="forward"), dict(schedule=schedule, seed=11)):
        with emu.checking(guard=True, race=True, **options):
            runs.append(long_row_losses("emu"))
    for got, again, want in zip(*runs, long_row_losses("numpy"), strict=True):
        assert got.tobytes() == again.tobytes(), schedule
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("size", [256, 8])
def test_float32_rows_are_read_and_written_coalesced(size):
    """(64, size) float32 rows: a sector an 8-lane group a request, at most 4 a warp (a thread a row took
    32, one a lane), and for rows of 8 a warp takes 4 rows, its lanes all loading (a block a row left 24
    of them idle): test_distance's assert_rows_coalesced."""
    from test_distance import assert_rows_coalesced
    rng = np.random.default_rng(256)
    x1, x2, x3 = (rng.standard_normal((64, size)).astype(np.float32) for _ in range(3))
    with emu.profiling() as prof:
        F.multi_margin_loss(x1, rng.integers(0, size, 64), reduction="none", backend="emu")
        F.cosine_embedding_loss(x1, x2, rng.choice(np.array([-1, 1], np.float32), 64), reduction="none",
                                backend="emu")
        F.triplet_margin_loss(x1, x2, x3, reduction="none", backend="emu")
    assert_rows_coalesced(prof, {"multi_margin_rows", "cosine_embedding_rows", "triplet_margin_rows"})


def test_float16_is_the_float32_math_rounded_once():
    for what, (name, arrays, options, _) in cases(F16).items():
        op = getattr(F, name)
        widened = [a.astype(np.float32) if a.dtype == F16 else a for a in arrays]
        widened_options = {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        for reduction in REDUCTIONS:
            loss, *grads = op(*arrays, reduction=reduction, **options)
            loss32, *grads32 = op(*widened, reduction=reduction, **widened_options)
            for grad, grad32 in zip(grads, grads32, strict=True):
                assert grad.dtype == F16 and np.array_equal(grad, grad32.astype(F16), equal_nan=True), what
            if reduction == "none":
                assert np.array_equal(loss, loss32.astype(F16), equal_nan=True), what
            else:
                assert loss == loss32, what


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_empty_inputs_and_a_number_for_var_as_torch(be, torch):
    empty = np.empty((0, 3))
    for name, arrays in (("soft_margin_loss", [empty, empty]), ("hinge_embedding_loss", [empty, empty]),
                         ("margin_ranking_loss", [empty, empty, empty]), ("poisson_nll_loss", [empty, empty]),
                         ("gaussian_nll_loss", [empty, empty, empty]),
                         ("multilabel_soft_margin_loss", [empty, empty]),
                         ("multilabel_soft_margin_loss", [np.empty((2, 0)), np.empty((2, 0))]),
                         ("multi_margin_loss", [empty, np.empty(0, np.int64)]),
                         ("cosine_embedding_loss", [empty, empty, np.empty(0)]),
                         ("triplet_margin_loss", [empty, empty, empty])):
        for reduction in REDUCTIONS:
            loss, *grads = getattr(F, name)(*arrays, reduction=reduction, backend=be)
            want = getattr(torch.nn.functional, name)(*map(torch.tensor, arrays), reduction=reduction).numpy()
            if name == "multi_margin_loss" and reduction != "none":
                # torch's loss of no samples is unspecified (uninitialised memory); ours a NaN mean, a zero sum
                want = np.nan if reduction == "mean" else 0.0
            np.testing.assert_array_equal(loss, want, err_msg=f"{name} {reduction}")
            assert [g.shape for g in grads] == [a.shape for a in arrays][:len(grads)] or name == "gaussian_nll_loss"
    x, t = np.linspace(-1, 1, 6).reshape(2, 3), np.linspace(0, 2, 6).reshape(2, 3)
    loss, dinput, dvar = F.gaussian_nll_loss(x, t, 0.7, reduction="sum", backend=be)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.gaussian_nll_loss(xt, torch.tensor(t), 0.7, reduction="sum")
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-13) and dvar is None
    np.testing.assert_allclose(dinput, xt.grad.numpy(), rtol=1e-13)


@pytest.mark.torch
def test_bad_arguments_are_refused_as_torch_and_before_any_launch(monkeypatch, torch):
    """Each refusal (but mixed dtypes) is one torch makes too (its message where we share it), before any
    kernel launch."""
    refuse_launches(monkeypatch)
    x = np.full((2, 3), 0.5)
    refusals = [
        ("margin_ranking_loss", (x, x[0], x), {}, ValueError, "All input tensors should have same dimension"),
        ("margin_ranking_loss", (x, x[:, :2], x), {}, ValueError, "does not broadcast"),
        ("soft_margin_loss", (x, x[:, :2]), {}, ValueError, "does not broadcast"),
        ("soft_margin_loss", (x[:, :1], x), {}, ValueError, "does not broadcast to the input's shape"),
        ("poisson_nll_loss", (x, x), dict(reduction="avg"), ValueError, "reduction must be"),
        ("gaussian_nll_loss", (x, x, np.ones((2, 2))), {}, ValueError, "var is of incorrect size"),
        ("gaussian_nll_loss", (x, x, np.ones((1, 1))), {}, ValueError, "var is of incorrect size"),
        ("gaussian_nll_loss", (x, x, -x), dict(reduction="none"), ValueError, "var has negative entry"),
        ("gaussian_nll_loss", (x, x, -0.5), {}, ValueError, "var has negative entry"),
        ("multilabel_soft_margin_loss", (x, x, np.ones(2)), {}, ValueError, "does not broadcast"),
        ("multi_margin_loss", (x, np.array([0, 1])), dict(p=3), ValueError, "only p == 1 and p == 2"),
        ("multi_margin_loss", (x, np.array([0, 3])), dict(reduction="none"), ValueError,
         r"target\[1\] = 3 is out of range for 3 classes \(class indices must lie in \[0, 3\)\)"),
        ("multi_margin_loss", (x, np.array([[0], [1]])), {}, ValueError, r"target must have shape \(2,\)"),
        ("multi_margin_loss", (x, np.array([0, 1])), dict(weight=np.ones(2)), ValueError, "one weight per class"),
        ("multi_margin_loss", (x.reshape(2, 3, 1), np.array([0, 1])), {}, ValueError, "non-empty vector or matrix"),
        ("multi_margin_loss", (np.empty((2, 0)), np.array([0, 1])), {}, ValueError, "non-empty vector or matrix"),
        ("cosine_embedding_loss", (x, x, x), {}, ValueError, "0D or 1D target tensor expected"),
        ("cosine_embedding_loss", (x[0], x[0], x[:, 0]), {}, ValueError, "1D target tensor expects 2D input"),
        ("triplet_margin_loss", (x, x, x[0]), {}, ValueError, "expected to have the same number of dimensions"),
    ]
    for name, arrays, options, error, match in refusals:
        with pytest.raises(Exception):
            getattr(torch.nn.functional, name)(*(torch.tensor(a) if isinstance(a, np.ndarray) else a for a in arrays),
                                               **options)
    # and mixed dtypes, which torch promotes: ops never change dtype silently (as the other losses)
    refusals.append(("hinge_embedding_loss", (x, x.astype(np.float32)), {}, TypeError, "target has dtype float32"))
    for name, arrays, options, error, match in refusals:
        for be in ("numpy", "emu"):
            with pytest.raises(error, match=match):
                getattr(F, name)(*arrays, backend=be, **options)


@needs_emu
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_negative_variance_and_a_class_out_of_range_are_named_before_any_launch(monkeypatch, reduction):
    """As PyTorch refuses them before computing; with as_array (nothing read back) the kernels'
    "mean"/"sum" loss is NaN instead, as cross_entropy's."""
    x = np.full((2, 3), 0.5)
    var = np.ones((2, 3))
    var[1, 2] = -0.25
    labels = np.array([0, 7])
    for as_array in (False, True):
        if as_array and reduction != "none":
            assert np.isnan(F.gaussian_nll_loss(x, x, var, reduction=reduction, backend="emu", as_array=True)[0])
            assert np.isnan(F.multi_margin_loss(x, labels, reduction=reduction, backend="emu", as_array=True)[0])
            continue
        with monkeypatch.context() as patch:
            refuse_launches(patch)
            with pytest.raises(ValueError, match=r"var\[1, 2\] = -0.25"):
                F.gaussian_nll_loss(x, x, var, reduction=reduction, backend="emu", as_array=as_array)
            with pytest.raises(ValueError, match=r"target\[1\] = 7"):
                F.multi_margin_loss(x, labels, reduction=reduction, backend="emu", as_array=as_array)


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_the_layers(be, torch):
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((4, 5)), (rng.uniform(size=(4, 5)) > 0.5).astype(np.float64)
    dy = rng.standard_normal(4)
    layer = nn.MultiLabelSoftMarginLoss([1.0, 2.0, 0.5, 1.0, 3.0], reduction="none").to(be)
    loss = layer(x, t)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.MultiLabelSoftMarginLoss(torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64),
                                           reduction="none")(xt, torch.tensor(t))
    lt.backward(torch.tensor(dy))
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-12)
    assert "weight" in layer.state_dict()
    y = np.sign(t - 0.5)
    # per-row losses weighted by an upstream dy: the three-array layers' backward
    for ours, theirs, arrays in ((nn.TripletMarginLoss(p=1.5, swap=True, reduction="none"),
                                  torch.nn.TripletMarginLoss(p=1.5, swap=True, reduction="none"), (x, t, -x)),
                                 (nn.CosineEmbeddingLoss(reduction="none"),
                                  torch.nn.CosineEmbeddingLoss(reduction="none"), (x, t + 0.5, y[:, 0]))):
        loss = ours.to(be)(*arrays)
        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        theirs(*tensors).backward(torch.tensor(dy))
        grads = ours.backward(dy)
        for grad, tensor in zip(grads, tensors):   # (the target's gradient: none of ours)
            np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=repr(ours))
        assert loss.shape == (4,)
    for ours, theirs, arrays, differentiable in (
            (nn.SoftMarginLoss(), torch.nn.SoftMarginLoss(), (x, y), (0,)),
            (nn.HingeEmbeddingLoss(0.7, reduction="sum"), torch.nn.HingeEmbeddingLoss(0.7, reduction="sum"),
             (np.abs(x), y), (0,)),
            (nn.PoissonNLLLoss(False, True, eps=1e-4), torch.nn.PoissonNLLLoss(False, True, eps=1e-4),
             (np.abs(x), 3 * t), (0,)),
            (nn.MarginRankingLoss(0.1), torch.nn.MarginRankingLoss(0.1), (x, t, y), (0, 1)),
            (nn.CosineEmbeddingLoss(-0.2), torch.nn.CosineEmbeddingLoss(-0.2), (x, t + 0.5, y[:, 0]), (0, 1)),
            (nn.TripletMarginLoss(2.0, 1.0, swap=True), torch.nn.TripletMarginLoss(2.0, 1.0, swap=True),
             (x, t, -x), (0, 1, 2)),
            (nn.MultiMarginLoss(2, 0.5, [1.0, 2.0, 0.5, 1.0, 3.0]),
             torch.nn.MultiMarginLoss(2, 0.5, torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)),
             (x, np.array([0, 4, 2, 1])), (0,)),
            (nn.GaussianNLLLoss(full=True, eps=1e-3, reduction="sum"),
             torch.nn.GaussianNLLLoss(full=True, eps=1e-3, reduction="sum"), (x, t, np.abs(x[:, :1])), (0, 2))):
        ours.to(be)
        loss = ours(*arrays)
        tensors = [torch.tensor(a, requires_grad=i in differentiable) for i, a in enumerate(arrays)]
        lt = theirs(*tensors)
        lt.backward(torch.tensor(2.0, dtype=torch.float64))
        assert isinstance(loss, float) and loss == pytest.approx(lt.item(), rel=1e-12), repr(ours)
        grads = ours.backward(2.0)
        grads = grads if isinstance(grads, tuple) else (grads,)
        for grad, i in zip(grads, differentiable, strict=True):
            np.testing.assert_allclose(grad, tensors[i].grad.numpy(), rtol=1e-12, err_msg=repr(ours))


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cuda_matches_numpy(dtype):
    """The cuda path (the emu path's launcher code on CuPy arrays): every case and reduction, and "mean"
    losses left on the device with as_array."""
    import cupy
    tolerance = {F16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    for (what, (name, arrays, options, _)), reduction in itertools.product(cases(dtype).items(), REDUCTIONS):
        on_device = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        loss, *grads = getattr(F, name)(*map(cupy.asarray, arrays), reduction=reduction, **on_device)
        want, *want_grads = getattr(F, name)(*arrays, reduction=reduction, backend="numpy", **options)
        for grad, want_grad in zip(grads, want_grads, strict=True):
            assert isinstance(grad, cupy.ndarray) and grad.dtype == dtype, what
            np.testing.assert_allclose(to_host(grad), want_grad, rtol=tolerance,
                                       atol=tolerance * float(np.abs(want_grad).max()), err_msg=f"{what} {reduction}")
        np.testing.assert_allclose(np.asarray(to_host(loss), np.float64), np.asarray(want, np.float64), rtol=tolerance,
                                   atol=tolerance * max(1.0, float(np.abs(want).max())), err_msg=f"{what} {reduction}")
    for name in ("poisson_nll_loss", "gaussian_nll_loss", "multilabel_soft_margin_loss", "margin_ranking_loss",
                 "multi_margin_loss", "cosine_embedding_loss", "triplet_margin_loss"):
        _, arrays, options, _ = next(case for case in cases(dtype).values() if case[0] == name)
        loss, *_ = getattr(F, name)(*map(cupy.asarray, arrays), as_array=True, **options)
        assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == np.float64, name
        want, *_ = getattr(F, name)(*arrays, backend="numpy", **options)
        assert float(to_host(loss)) == pytest.approx(want, rel=tolerance), name
