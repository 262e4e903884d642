"""F.group_norm / F.layer_norm, their backward functions and nn.GroupNorm / nn.LayerNorm (the NumPy
path: batch norm's functions on views of x; the kernels: kernels/row_norm.cu): direct formulas,
PyTorch CPU on numpy and on the emulated kernels, float16 rounded once, finite differences, the
layers' state, replay, refusals, the kernels' launches, guard zones and race check."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_kernel_runs_match, needs_cuda, to_host

BACKENDS = ["numpy", "emu"]
KINDS = ["group", "layer"]
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def skip_unless(be):
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)


def ops(kind):
    """(forward, backward) of a kind; both take (x, layout, weight, bias, eps) as PyTorch's."""
    return {"group": (F.group_norm, F.group_norm_backward), "layer": (F.layer_norm, F.layer_norm_backward)}[kind]


def draw_case(rng, dtype, kind):
    """x of rank 1 to 5 ((N, C, *) of rank 2 at least for group norm) and its layout: a group count
    dividing C, or normalized_shape (an int or a tuple of x's last 1 to 3 axes); affine parameters
    or not, each on its own. 3 values a group or row at least: with 2, xhat is +-1 and dx a cancellation to 0 that
    float32 leaves at 1e-5."""
    shape = tuple(int(d) for d in rng.integers(1, 5, int(rng.integers(1 if kind == "layer" else 2, 6))))
    if kind == "group":
        layout = int(rng.integers(1, 4))
        shape = (shape[0], layout * shape[1]) + shape[2:]
        if np.prod(shape[1:]) // layout < 3:
            shape = (shape[0], 3 * layout) + shape[2:]
        parameter_shape = shape[1:2]
    else:
        axes = int(rng.integers(1, min(3, len(shape)) + 1))
        if np.prod(shape[len(shape) - axes:]) < 3:
            shape = shape[:-1] + (3,)
        parameter_shape = shape[len(shape) - axes:]
        layout = parameter_shape[0] if axes == 1 and rng.random() < 0.5 else parameter_shape
    affine = rng.random() < 0.8
    return dict(x=(rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype),
                dy=rng.standard_normal(shape).astype(dtype), layout=layout,
                weight=rng.standard_normal(parameter_shape).astype(dtype) if affine else None,
                # a bias without a weight too, for layer norm (torch's group_norm fails on it: "tensor does not
                # have a device"; test_group_norm_bias_alone checks ours)
                bias=rng.standard_normal(parameter_shape).astype(dtype)
                if rng.random() < (0.8 if affine else 0.5 if kind == "layer" else 0) else None,
                eps=float(rng.choice([1e-5, 1e-3])))


def run_case(case, be, kind):
    """(y, dx, dweight, dbias) on `be`, the backward with the forward's statistics."""
    forward, backward = ops(kind)
    args = [case[k] for k in ("x", "layout", "weight", "bias", "eps")]
    y, mean, invstd = forward(*args, return_stats=True, backend=be)
    return (y, *backward(case["dy"], *args, save_mean=mean, save_invstd=invstd, backend=be))


def torch_results(case, torch, kind):
    """(y, dx, dweight, dbias) of torch.nn.functional's op in float64."""
    t = {k: None if case[k] is None else torch.tensor(case[k].astype(np.float64), requires_grad=True)
         for k in ("x", "weight", "bias")}
    layout = case["layout"]
    y = getattr(torch.nn.functional, f"{kind}_norm")(t["x"], layout if kind == "group" else np.atleast_1d(layout)
                                                     .tolist(), t["weight"], t["bias"], case["eps"])
    y.backward(torch.tensor(case["dy"].astype(np.float64)))
    return (y.detach().numpy(), *(None if v is None else v.grad.numpy() for v in t.values()))


def assert_results_close(got, expected, dtype, what):
    for a, e, name in zip(got, expected, ("y", "dx", "dweight", "dbias")):
        if e is None:
            assert a is None, f"{what} {name}"
        else:
            assert_close(a, e.astype(dtype), dtype, f"{what} {name}")


# --- direct formulas ----------------------------------------------------------------------------

def test_group_norm_matches_the_formulas():
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, 6, 3, 2)) * 2 + 1, rng.standard_normal((2, 6, 3, 2))
    weight, bias = rng.standard_normal(6), rng.standard_normal(6)
    y, mean, invstd = F.group_norm(x, 3, weight, bias, 1e-3, return_stats=True)
    dx, dweight, dbias = F.group_norm_backward(dy, x, 3, weight, bias, 1e-3)
    expected_dweight, expected_dbias = np.zeros(6), np.zeros(6)
    for n in range(2):
        for g in range(3):
            channels = slice(2 * g, 2 * g + 2)
            xg, gw = x[n, channels], dy[n, channels] * weight[channels, None, None]
            var = xg.var()
            assert mean[n, g] == pytest.approx(xg.mean(), rel=1e-12)
            assert invstd[n, g] == pytest.approx(1 / np.sqrt(var + 1e-3), rel=1e-12)
            xhat = (xg - xg.mean()) / np.sqrt(var + 1e-3)
            np.testing.assert_allclose(y[n, channels], xhat * weight[channels, None, None] + bias[channels, None, None],
                                       rtol=1e-12, atol=1e-12)
            expected_dx = (gw - gw.mean() - xhat * (gw * xhat).mean()) / np.sqrt(var + 1e-3)
            np.testing.assert_allclose(dx[n, channels], expected_dx, rtol=1e-10, atol=1e-12)
            expected_dweight[channels] += (dy[n, channels] * xhat).sum(axis=(1, 2))
            expected_dbias[channels] += dy[n, channels].sum(axis=(1, 2))
    np.testing.assert_allclose(dweight, expected_dweight, rtol=1e-12)
    np.testing.assert_allclose(dbias, expected_dbias, rtol=1e-12)


@pytest.mark.parametrize("be", BACKENDS)
def test_group_norm_bias_alone(be):
    """A bias without a weight: dbias is dy summed over all but the channel axis, dx that of no affine."""
    skip_unless(be)
    rng = np.random.default_rng(7)
    x, dy, bias = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5)), rng.standard_normal(4)
    dx, dweight, dbias = F.group_norm_backward(dy, x, 2, None, bias, backend=be)
    assert dweight is None
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(dx, F.group_norm_backward(dy, x, 2, backend=be)[0], rtol=1e-12, atol=1e-14)


def test_layer_norm_matches_the_formulas():
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal((3, 2, 4, 5)) * 2 + 1, rng.standard_normal((3, 2, 4, 5))
    weight, bias = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    y, mean, invstd = F.layer_norm(x, (4, 5), weight, bias, 1e-3, return_stats=True)
    dx, dweight, dbias = F.layer_norm_backward(dy, x, (4, 5), weight, bias, 1e-3)
    assert mean.shape == invstd.shape == (3, 2, 1, 1)
    expected_dweight, expected_dbias = np.zeros((4, 5)), np.zeros((4, 5))
    for row in np.ndindex(3, 2):
        xr, gw = x[row], dy[row] * weight
        xhat = (xr - xr.mean()) / np.sqrt(xr.var() + 1e-3)
        assert mean[row] == pytest.approx(xr.mean(), rel=1e-12)
        np.testing.assert_allclose(y[row], xhat * weight + bias, rtol=1e-12, atol=1e-12)
        expected_dx = (gw - gw.mean() - xhat * (gw * xhat).mean()) / np.sqrt(xr.var() + 1e-3)
        np.testing.assert_allclose(dx[row], expected_dx, rtol=1e-10, atol=1e-12)
        expected_dweight += dy[row] * xhat
        expected_dbias += dy[row]
    np.testing.assert_allclose(dweight, expected_dweight, rtol=1e-12)
    np.testing.assert_allclose(dbias, expected_dbias, rtol=1e-12)


# --- PyTorch CPU --------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype, count", [(np.float64, 40), (np.float32, 25)])
def test_against_pytorch(kind, be, dtype, count):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(2)
    ranks, no_affine_seen, bias_alone_seen = set(), 0, 0
    for i in range(count):
        case = draw_case(rng, dtype, kind)
        what = f"case {i} {case['x'].shape} layout={case['layout']} on {be}"
        expected = torch_results(case, torch, kind)
        assert_results_close(run_case(case, be, kind), expected, dtype, what)
        if case["weight"] is not None:   # the statistics recomputed from x give the same gradients
            recomputed = ops(kind)[1](case["dy"], case["x"], case["layout"], case["weight"], None, case["eps"],
                                      backend=be)
            assert_close(recomputed[1], expected[2].astype(dtype), dtype, f"{what} recomputed")
        ranks.add(case["x"].ndim)
        no_affine_seen += case["weight"] is None
        bias_alone_seen += case["weight"] is None and case["bias"] is not None
    assert ranks == ({2, 3, 4, 5} if kind == "group" else {1, 2, 3, 4, 5}) and no_affine_seen
    assert bias_alone_seen or kind == "group"


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_is_within_an_ulp_of_the_largest_value_of_pytorchs_float64(kind, be):
    """FP32 statistics and sums, each output rounded once: each within one float16 ulp of the
    largest value of the result."""
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(3)
    for i in range(10):
        case = draw_case(rng, np.float16, kind)
        for got, expected in zip(run_case(case, be, kind), torch_results(case, torch, kind)):
            if expected is not None:
                assert got.dtype == np.float16
                scale = max(1.0, np.abs(expected).max())   # as assert_close: no exact zeros asked
                assert np.abs(to_host(got) - expected).max() <= 2 ** -10 * scale, f"case {i} {case['x'].shape}"


@pytest.mark.parametrize("kind, layout, stats_shape", [("group", 2, (3, 2)), ("layer", 5, (3, 4, 1))])
@pytest.mark.parametrize("be", BACKENDS)
def test_the_statistics_are_returned_in_the_compute_type(kind, layout, stats_shape, be):
    skip_unless(be)
    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float16)
    _, mean, invstd = ops(kind)[0](x, layout, return_stats=True, backend=be)
    assert mean.shape == invstd.shape == stats_shape and mean.dtype == invstd.dtype == np.float32
    rows = x.astype(np.float32).reshape(int(np.prod(stats_shape)), -1)
    np.testing.assert_allclose(mean.ravel(), rows.mean(axis=1), rtol=1e-5, atol=1e-6)


# --- finite differences -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, shape, layout", [("group", (3, 4, 5), 2), ("group", (2, 12), 3),
                                                 ("group", (2, 4, 2, 3), 1), ("layer", (3, 4, 5), (4, 5)),
                                                 ("layer", (4, 6), 6)])
def test_finite_differences(kind, shape, layout):
    forward_op, backward_op = ops(kind)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 2
    parameter_shape = shape[1:2] if kind == "group" else np.atleast_1d(layout)
    weight, bias = rng.standard_normal(parameter_shape), rng.standard_normal(parameter_shape)

    def forward(x, weight, bias):
        return forward_op(x, layout, weight, bias)

    def backward(dy, x, weight, bias):
        return backward_op(dy, x, layout, weight, bias)

    report = check_op(forward, backward, [x, weight, bias], names=["x", "weight", "bias"])
    assert report.max_rel_error < 1e-6, str(report)


# --- the layers ---------------------------------------------------------------------------------

LAYERS = [("GroupNorm", (2, 4), {}), ("GroupNorm", (2, 4), {"affine": False}), ("GroupNorm", (2, 4), {"bias": False}),
          ("LayerNorm", ((4, 5),), {}), ("LayerNorm", (5,), {"elementwise_affine": False}),
          ("LayerNorm", (5,), {"bias": False}),
          # RMSNorm (tests/test_rms_norm.py has its functional ops): the same layer contract
          ("RMSNorm", ((4, 5),), {}), ("RMSNorm", (5,), {"elementwise_affine": False})]


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("layer, args, options", LAYERS)
def test_layer_matches_torch_and_its_state_dict_round_trips(be, layer, args, options):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(6)
    ours = getattr(nn, layer)(*args, eps=1e-4, dtype=np.float64, **options)
    theirs = getattr(torch.nn, layer)(*args, eps=1e-4, dtype=torch.float64, **options)
    if ours.weight is not None:
        ours.weight.data[...] = rng.standard_normal(ours.weight.shape)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs)
    ours.to(be)
    for mode in ("train", "eval"):   # no running statistics: the same in both
        getattr(ours, mode)()
        getattr(theirs, mode)()
        ours.zero_grad()
        theirs.zero_grad()
        x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dy))
        assert_close(ours(x), yt.detach().numpy(), np.float64, mode)
        assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, f"dx {mode}")
        for name, parameter in theirs.named_parameters():
            assert_close(getattr(ours, name).grad, parameter.grad.numpy(), np.float64, f"{name} {mode}")
    fresh = getattr(nn, layer)(*args, dtype=np.float64, **options)
    fresh.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, ours.state_dict()[key])


def test_layers_refuse_what_torch_refuses():
    bad = [(lambda: nn.GroupNorm(4, 6), ValueError, r"num_channels \(6\) must be divisible by num_groups \(4\)"),
           (lambda: nn.GroupNorm(0, 6), ValueError, "num_groups"),
           (lambda: nn.GroupNorm(2, 6, eps=-1.0), ValueError, "eps"),
           (lambda: nn.LayerNorm("4"), ValueError, "normalized_shape"),
           (lambda: nn.LayerNorm(4.0), TypeError, "normalized_shape"),
           (lambda: nn.LayerNorm(4, eps=float("nan")), ValueError, "eps")]
    for make, error, match in bad:
        with pytest.raises(error, match=match):
            make()


# --- argument checks ----------------------------------------------------------------------------

def bad_calls(kind):
    """(call, error, match) of arguments the op refuses, as PyTorch does where it has the argument."""
    x = np.random.default_rng(7).standard_normal((2, 6, 3))
    if kind == "group":
        stats = np.zeros((2, 3))
        return [
            (lambda: F.group_norm(x[0, 0], 1), ValueError, "at least 2 dimensions"),
            (lambda: F.group_norm(x, 4), ValueError, "divisible by num_groups"),
            (lambda: F.group_norm(x, 0), ValueError, "num_groups"),
            (lambda: F.group_norm(x, 3, np.ones(5)), ValueError, "weight"),
            (lambda: F.group_norm(x, 3, None, np.ones(6, np.float32)), TypeError, "dtype"),
            (lambda: F.group_norm(x[:1, :, :1], 6), ValueError, "more than 1 value per channel"),
            (lambda: F.group_norm(x, 3, eps=-1.0), ValueError, "eps"),
            (lambda: F.group_norm_backward(x[:1], x, 3), ValueError, "dy"),
            (lambda: F.group_norm_backward(x, x, 3, save_mean=stats), ValueError, "both"),
            (lambda: F.group_norm_backward(x, x, 3, save_mean=stats[:, :2], save_invstd=stats), ValueError,
             "save_mean"),
            (lambda: F.group_norm_backward(x, x, 3, save_mean=stats, save_invstd=stats.astype(np.float32)),
             TypeError, "dtype")]
    stats = np.zeros((2, 1, 1))
    return [
        (lambda: F.layer_norm(x, 4), ValueError, r"x must end with normalized_shape=\(4,\)"),
        (lambda: F.layer_norm(x, ()), ValueError, "normalized_shape"),
        (lambda: F.layer_norm(x, (1, 2, 6, 3)), ValueError, "normalized_shape"),
        (lambda: F.layer_norm(x, [6, 3.0]), ValueError, "normalized_shape"),
        (lambda: F.layer_norm(x, (6, 3), np.ones(3)), ValueError, "weight"),
        (lambda: F.layer_norm(x, 3, None, np.ones(3, np.float32)), TypeError, "dtype"),
        (lambda: F.layer_norm(x, 3, eps=-1.0), ValueError, "eps"),
        (lambda: F.layer_norm_backward(x[:1], x, 3), ValueError, "dy"),
        (lambda: F.layer_norm_backward(x, x, (6, 3), save_invstd=stats), ValueError, "both"),
        (lambda: F.layer_norm_backward(x, x, (6, 3), save_mean=stats[:1], save_invstd=stats), ValueError,
         "save_mean"),
        (lambda: F.layer_norm_backward(x, x, (6, 3), save_mean=stats, save_invstd=stats.astype(np.float32)),
         TypeError, "dtype")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_before_any_launch(kind, be, monkeypatch):
    skip_unless(be)
    launches = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launches.append(args[3]) or real_launch(*args))
    for call, error, match in bad_calls(kind):
        with pytest.raises(error, match=match):
            call()
    assert launches == []
    # taken: group norm's one value a channel where the batch gives more a group (PyTorch's check),
    # layer norm's rows of one value
    ops(kind)[0](np.ones((2, 6, 1)), 6 if kind == "group" else 1, backend=be)
    assert bool(launches) == (be != "numpy")   # the spy sees the kernels of the calls taken


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 6, 3), (2, 6, 0)])
def test_an_empty_input_gives_empty_results_and_zero_parameter_gradients(kind, be, shape):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    x = np.zeros(shape)
    if kind == "group":
        layout, parameters = 3, np.ones(6)
        theirs = torch.native_group_norm(torch.from_numpy(x), None, None, shape[0], 6, shape[2], 3, 1e-5)
    else:
        layout, parameters = shape[2], np.ones(shape[2])
        theirs = torch.native_layer_norm(torch.from_numpy(x), [shape[2]], None, None, 1e-5)
    forward, backward = ops(kind)
    y, mean, invstd = forward(x, layout, parameters, parameters, return_stats=True, backend=be)
    assert y.shape == shape
    np.testing.assert_array_equal(mean, theirs[1].numpy())
    np.testing.assert_array_equal(invstd, theirs[2].numpy())
    dx, dweight, dbias = backward(x, x, layout, parameters, parameters, backend=be)
    assert dx.shape == shape and dweight.shape == parameters.shape
    np.testing.assert_array_equal(dweight, 0)
    np.testing.assert_array_equal(dbias, 0)


@pytest.mark.parametrize("kind, layout", [("group", 2), ("layer", (4, 5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_replayed_step_computes_its_new_inputs(kind, layout, dtype):
    """Recorded (cnn_gpu.replay) and replayed on inputs overwritten in place: the eager results, bit
    for bit (what the kernels do not compute, CuPy's work on the GPU, is device calls a replay
    redoes)."""
    from cnn_gpu import replay
    skip_unless("emu")
    rng = np.random.default_rng(9)
    forward, backward = ops(kind)
    parameter_shape = (4,) if kind == "group" else layout

    def draw():
        return [rng.standard_normal(shape).astype(dtype) for shape in ((3, 4, 5), (3, 4, 5), parameter_shape,
                                                                        parameter_shape)]

    def step(x, dy, weight, bias):
        y, mean, invstd = forward(x, layout, weight, bias, return_stats=True, backend="emu")
        return (y, *backward(dy, x, layout, weight, bias, save_mean=mean, save_invstd=invstd, backend="emu"))

    inputs, new_inputs = draw(), draw()
    with replay.record() as recorded:
        outputs = step(*inputs)
    for a, new in zip(inputs, new_inputs):
        a[...] = new
    recorded.replay()
    for got, expected in zip(outputs, step(*new_inputs)):
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_numpy(kind, dtype):
    import cupy
    rng = np.random.default_rng(8)
    for i in range(20):
        case = draw_case(rng, dtype, kind)
        on_gpu = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in case.items()}
        first, second = run_case(on_gpu, "cuda", kind), run_case(on_gpu, "cuda", kind)
        assert_results_close(first, run_case(case, "numpy", kind), dtype, f"case {i} on cuda")
        for a, b in zip(first, second):   # fixed-order reductions: the same bits every run
            assert a is None or to_host(a).tobytes() == to_host(b).tobytes()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_float16_rounds_each_output_once(kind):
    import cupy
    assert_float16_rounded_once(lambda case: run_case({k: cupy.asarray(v) if isinstance(v, np.ndarray) else v
                                                       for k, v in case.items()}, "cuda", kind), kind)


# --- the kernels (kernels/row_norm.cu) ------------------------------------------------------------

def float64_oracle(case, kind):
    """(y, dx, dweight, dbias) of the NumPy path in float64 on the case's values: exact enough to be
    the unrounded result of a float16 case."""
    wide = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    return run_case(wide, "numpy", kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_rounds_each_output_once(kind, be):
    """float16: FP32 math with dy * weight never stored, each output rounded once: every element
    within one float16 ulp of the float64 result rounded once (dx from a float16 dy * weight, as
    the batch-norm kernels computed it, was tens of ulps off near zero). PyTorch's CPU half is no
    oracle here: its dx is not rounded once (tens of ulps from the rounded float64 result too)."""
    skip_unless(be)
    assert_float16_rounded_once(lambda case: run_case(case, be, kind), kind)


def assert_float16_rounded_once(run, kind):
    """run(case)'s results of float16 cases each within one float16 ulp of the float64 result
    rounded once."""
    rng = np.random.default_rng(12)
    for i in range(8):
        case = draw_case(rng, np.float16, kind)
        if case["weight"] is not None:   # large weights: dy * weight's rounding matters most
            case["weight"] = (case["weight"] * 3).astype(np.float16)
        for got, exact, name in zip(run(case), float64_oracle(case, kind), ("y", "dx", "dweight", "dbias")):
            if exact is None:
                continue
            want = exact.astype(np.float16)
            ulp = np.spacing(np.abs(want)).astype(np.float64)
            error = np.abs(to_host(got).astype(np.float64) - want.astype(np.float64))
            assert got.dtype == np.float16 and (error <= ulp).all(), \
                f"case {i} {case['x'].shape} {name}: {(error / ulp).max()} ulps"


@pytest.mark.parametrize("kind, layout, parameter_grads", [("group", 2, "row_norm_param_grads_planes"),
                                                           ("layer", (4, 5), "row_norm_param_grads_columns")])
def test_a_launch_for_the_forward_and_two_for_the_backward(kind, layout, parameter_grads, monkeypatch):
    """The forward is one launch (statistics and the affine fused); the backward one for dx and one
    for both parameter gradients, one more for the statistics when not given, none for the
    parameters without them; no device work between the launches."""
    skip_unless("emu")
    launched = []
    real_launch, real_device_call = backend.launch, backend.device_call
    monkeypatch.setattr(backend, "launch", lambda *args: launched.append(args[3]) or real_launch(*args))
    monkeypatch.setattr(backend, "device_call", lambda *args, **kw: launched.append("device call")
                        or real_device_call(*args, **kw))
    rng = np.random.default_rng(13)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    weight = bias = rng.standard_normal(4 if kind == "group" else layout)
    forward, backward = ops(kind)
    _, mean, invstd = forward(x, layout, weight, bias, return_stats=True, backend="emu")
    assert launched == ["row_norm_forward"]
    launched.clear()
    backward(dy, x, layout, weight, bias, save_mean=mean, save_invstd=invstd, backend="emu")
    assert launched == ["row_norm_backward_dx", parameter_grads]
    launched.clear()
    backward(dy, x, layout, backend="emu")
    assert launched == ["row_norm_forward", "row_norm_backward_dx"]


# (kind, shape, layout): rows longer than a block and planes wider than it; planes of 5 (a block's
# walk carries from plane to plane); one value a channel (the column kernel for group norm);
# rows of 300, of a 2-D normalized_shape, and 45 rows of 33 (the column kernel's second block
# holds one parameter, and its lanes walk 5 or 6 rows each)
KERNEL_CASES = [("group", (2, 6, 17, 19), 3), ("group", (3, 8, 5), 4), ("group", (5, 4), 2),
                ("layer", (7, 300), 300), ("layer", (3, 2, 4, 5), (4, 5)), ("layer", (45, 33), 33)]


def kernel_case(kind, shape, layout, dtype, affine, seed=14):
    rng = np.random.default_rng(seed)
    parameter_shape = shape[1:2] if kind == "group" else np.atleast_1d(layout)
    parameter = (lambda: rng.standard_normal(parameter_shape).astype(dtype)) if affine else (lambda: None)
    return dict(x=(rng.standard_normal(shape) * 2 + 1).astype(dtype), dy=rng.standard_normal(shape).astype(dtype),
                layout=layout, weight=parameter(), bias=parameter(), eps=1e-5)


def kernel_results(case, be, kind):
    """run_case's results, then the backward's with the statistics recomputed (dx, dweight, dbias)."""
    args = [case[k] for k in ("x", "layout", "weight", "bias", "eps")]
    return (*run_case(case, be, kind), *ops(kind)[1](case["dy"], *args, backend=be))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernels_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype):
    """Every case on the emulator with guard zones (an access past any array faults) and the race
    check, under every schedule: the NumPy path's results to a few roundings, and the same bits
    under every schedule (fixed-order sums)."""
    from cnn_gpu import emu
    skip_unless("emu")
    for kind, shape, layout in KERNEL_CASES:
        for affine in (True, False):
            case = kernel_case(kind, shape, layout, dtype, affine)
            expected = kernel_results(case, "numpy", kind)
            runs = []
            for schedule in emu.SCHEDULES:
                with emu.checking(guard=True, race=True, schedule=schedule, seed=3):
                    runs.append(kernel_results(case, "emu", kind))
            assert_kernel_runs_match(runs, expected, ("y", "dx", "dweight", "dbias") * 2, dtype,
                                       f"{kind} {shape} affine={affine}")


def recorded_launches(monkeypatch):
    """The names of the kernels backend.launch runs from now on, in order."""
    launched = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launched.append(args[3]) or real_launch(*args))
    return launched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grids_smaller_than_the_work_match_the_numpy_path_under_the_race_check(dtype, monkeypatch):
    """row_norm.MAX_GRID_X at 2: each block walks several rows, and the parameter kernels several
    parameters (layer norm's 100 columns: 4 blocks of lanes for 2 blocks, whose lane sums of one
    round are read before the next round writes them, behind a barrier the race check sees), with
    guard zones: the NumPy path's results to a few roundings."""
    from cnn_gpu import emu
    from cnn_gpu.gpu import row_norm
    skip_unless("emu")
    monkeypatch.setattr(row_norm, "MAX_GRID_X", 2)
    for kind, shape, layout in (("layer", (45, 100), 100), ("group", (3, 8, 5), 4)):
        case = kernel_case(kind, shape, layout, dtype, affine=True)
        expected = kernel_results(case, "numpy", kind)
        with emu.checking(guard=True, race=True):
            got = kernel_results(case, "emu", kind)
        assert_kernel_runs_match([got], expected, ("y", "dx", "dweight", "dbias") * 2, dtype, f"{kind} {shape}")


# (kind, shape, layout, kernel suffix) of split rows with row_norm.MIN_SLICE at 64: group norm's 4 rows
# of 528 in 8 slices of 72 (the last 24), layer norm's 3 rows of 520 in 8 of 72 (the last 16), and
# 2 rows of 301, an odd length: the _unaligned kernels, 5 slices of 64 (the last 45)
SPLIT_CASES = [("group", (2, 6, 8, 22), 2, ""), ("layer", (3, 520), 520, ""),
               ("layer", (2, 301), 301, "_unaligned")]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_split_rows_match_the_numpy_path_under_guard_zones_and_the_race_check(dtype, monkeypatch):
    """Rows cut into slices of several blocks (row_norm.plan: fewer rows than the GPU's SMs take;
    MIN_SLICE lowered so small rows split, unevenly): the slice statistics and backward sums, merged
    by the last block of a row to arrive, give the NumPy path's results to a few roundings, with
    guard zones and the race check, and the same bits under every schedule."""
    from cnn_gpu import emu
    from cnn_gpu.gpu import row_norm
    skip_unless("emu")
    monkeypatch.setattr(row_norm, "MIN_SLICE", 64)
    eps = float(np.finfo(dtype).eps)
    for kind, shape, layout, suffix in SPLIT_CASES:
        case = kernel_case(kind, shape, layout, dtype, affine=True)
        expected = kernel_results(case, "numpy", kind)
        runs = []
        for schedule in emu.SCHEDULES:
            launched = recorded_launches(monkeypatch)
            with emu.checking(guard=True, race=True, schedule=schedule, seed=3):
                runs.append(kernel_results(case, "emu", kind))
            assert launched[:2] == [f"row_norm_slice_stats{suffix}", f"row_norm_forward{suffix}"], launched
            assert f"row_norm_slice_sums{suffix}" in launched, launched
        for got, want, name in zip(runs[0], expected, ("y", "dx", "dweight", "dbias") * 2):
            scale = max(1.0, float(np.abs(want.astype(np.float64)).max()))
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0,
                                       atol=(2 if dtype == np.float16 else 64) * eps * scale,
                                       err_msg=f"{kind} {shape} {name}")
        for other in runs[1:]:
            for a, b in zip(runs[0], other):
                assert a.tobytes() == b.tobytes(), f"{kind} {shape}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cuda_split_rows_match_numpy(dtype, monkeypatch):
    """SPLIT_CASES on the cuda backend (the device's SM count, CuPy's arrival counts and
    workspaces): the NumPy path's results to a few roundings, the same bits twice."""
    import cupy
    from cnn_gpu.gpu import row_norm
    monkeypatch.setattr(row_norm, "MIN_SLICE", 64)
    eps = float(np.finfo(dtype).eps)
    for kind, shape, layout, suffix in SPLIT_CASES:
        case = kernel_case(kind, shape, layout, dtype, affine=True)
        on_gpu = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in case.items()}
        launched = recorded_launches(monkeypatch)
        first, second = kernel_results(on_gpu, "cuda", kind), kernel_results(on_gpu, "cuda", kind)
        assert launched[0] == f"row_norm_slice_stats{suffix}", launched
        for got, want, name in zip(first, kernel_results(case, "numpy", kind), ("y", "dx", "dweight", "dbias") * 2):
            scale = max(1.0, float(np.abs(want.astype(np.float64)).max()))
            np.testing.assert_allclose(to_host(got).astype(np.float64), want.astype(np.float64), rtol=0,
                                       atol=(2 if dtype == np.float16 else 64) * eps * scale,
                                       err_msg=f"{kind} {shape} {name}")
        for a, b in zip(first, second):
            assert to_host(a).tobytes() == to_host(b).tobytes(), f"{kind} {shape}"


@pytest.mark.parametrize("offset, length, kernel", [(0, 40, "row_norm_forward"),
                                                    (1, 40, "row_norm_forward_unaligned"),
                                                    (0, 41, "row_norm_forward_unaligned")])
def test_the_wide_kernels_run_only_on_aligned_rows(offset, length, kernel, monkeypatch):
    """16-byte packs where x and y start on 16 bytes and a row is whole packs; a view one element
    into its allocation, or rows of an odd length, run the _unaligned kernels (the emulator faults
    on a misaligned pack, as a GPU does), all matching PyTorch in float64."""
    torch = pytest.importorskip("torch")
    skip_unless("emu")
    rng = np.random.default_rng(16)
    x = rng.standard_normal(3 * length + offset).astype(np.float32)[offset:].reshape(3, length)
    dy, weight, bias = rng.standard_normal((3, length)), rng.standard_normal(length), rng.standard_normal(length)
    launched = recorded_launches(monkeypatch)
    with __import__("cnn_gpu").emu.checking(guard=True):
        y = F.layer_norm(x, length, weight.astype(np.float32), bias.astype(np.float32), backend="emu")
        dx, _, _ = F.layer_norm_backward(dy.astype(np.float32), x, length, weight.astype(np.float32), backend="emu")
    assert launched[0] == kernel and launched[1:3] == [kernel, kernel.replace("forward", "backward_dx")], launched
    case = dict(x=x, dy=dy, layout=length, weight=weight, bias=bias, eps=1e-5)
    want_y, want_dx, _, _ = torch_results(case, torch, "layer")
    assert_close(y, want_y.astype(np.float32), np.float32, "y")
    assert_close(dx, want_dx.astype(np.float32), np.float32, "dx")


def test_the_plan_splits_few_long_rows_and_keeps_many_short_ones_whole():
    """On an H100's 132 SMs: GroupNorm(32, 256) of (2, 256, 64, 64), 64 rows of 32768, goes in 5
    slices a row (320 blocks, from 64: half the SMs idle); LayerNorm(768) of 4096 rows stays a
    block a row, of threads for 2 packs each: 128 for float32's 192 packs, 64 for float16's 96,
    256 for the _unaligned kernels' 768 elements. No rows: one slice (no division by the row count)."""
    from cnn_gpu.gpu.row_norm import RowLayout, RowPlan, plan
    group = plan(RowLayout(rows=64, length=32768, groups=32, inner=4096), np.float32, 132, wide=True)
    assert group == RowPlan(slices=5, span=6560, wide=True, threads=256)
    assert 64 * group.slices >= 2 * 132 and (group.slices - 1) * group.span < 32768 <= group.slices * group.span
    layer = RowLayout(rows=4096, length=768, groups=1, inner=1)
    assert plan(layer, np.float32, 132, wide=True) == RowPlan(slices=1, span=768, wide=True, threads=128)
    assert plan(layer, np.float16, 132, wide=True).threads == 64
    assert plan(layer, np.float32, 132, wide=False).threads == 256
    assert plan(RowLayout(rows=0, length=768, groups=1, inner=1), np.float32, 132, wide=True).slices == 1   # no rows


def test_a_row_past_the_packs_int_walk_is_refused_before_any_launch():
    """for_each_pack walks a row with an int stepping by a block's packs (256 threads of 4 float32s):
    a row of 2^31 - 1024 elements is walked, one more would overflow the index past its end (plan
    refuses it, before any launch; the int length check alone passed it)."""
    from cnn_gpu.gpu.row_norm import RowLayout, plan
    assert plan(RowLayout(rows=1, length=2**31 - 1024, groups=1, inner=1), np.float32, 132, wide=True).threads == 256
    with pytest.raises(ValueError, match="a row of 2147482625 elements"):
        plan(RowLayout(rows=1, length=2**31 - 1023, groups=1, inner=1), np.float32, 132, wide=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_past_the_kernels_int_is_refused_before_any_launch(kind, monkeypatch):
    """The kernels take a row's length as an int: 2^31 or more is refused, not wrapped (a broadcast
    view: no memory behind it)."""
    monkeypatch.setattr(backend, "launch", lambda *a, **k: pytest.fail("launched"))
    x = np.broadcast_to(np.float32(1), (1, 2, 2**30))
    layout = 1 if kind == "group" else (2, 2**30)
    with pytest.raises(ValueError, match="32-bit int"):
        ops(kind)[0](x, layout, backend="emu")
    with pytest.raises(ValueError, match="32-bit int"):
        ops(kind)[1](x, x, layout, backend="emu")


# --- the benchmarks' step model and PyTorch mirror -------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("min_slice", [None, 16])
def test_benchmark_models_know_the_layers(min_slice, monkeypatch):
    """A model with nn.GroupNorm and nn.LayerNorm gets their shapes, the launches an emulated
    training step of each makes (forward with statistics saved, backward; with row_norm.MIN_SLICE
    at 16 the group norms' rows of 40 split in 2, and their statistics and sums get launches of
    their own) and a PyTorch mirror that computes what it does."""
    torch = pytest.importorskip("torch")
    if min_slice:
        from cnn_gpu.gpu import row_norm
        monkeypatch.setattr(row_norm, "MIN_SLICE", min_slice)
    from cnn_gpu.bench.modeled import _row_norm_launches
    from cnn_gpu.gpu.conv import DEFAULT_SMS
    from cnn_gpu.bench.training import leaf_layers, torch_mirror
    model = nn.Sequential(nn.Conv2d(2, 4, 3, dtype=np.float64), nn.GroupNorm(2, 4, dtype=np.float64),
                          nn.LayerNorm((5, 4), dtype=np.float64), nn.GroupNorm(2, 4, affine=False, dtype=np.float64))
    x = np.random.default_rng(15).standard_normal((2, 2, 7, 6))
    leaves = leaf_layers(model, x.shape)
    assert [(shape_in, shape_out) for _, shape_in, shape_out, _ in leaves[1:]] == [((2, 4, 5, 4), (2, 4, 5, 4))] * 3
    launched = []
    real_launch = backend.launch
    for layer, shape_in, _, _ in leaves[1:]:
        layer.backend = "emu"
        launched.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(backend, "launch", lambda *args: launched.append(args[3]) or real_launch(*args))
            layer.backward(layer(np.ones(shape_in)))
        kernels = [launch[0] for launch in _row_norm_launches(layer, shape_in, np.float64, DEFAULT_SMS)]
        assert launched == kernels, type(layer).__name__
    for layer in model:
        layer.backend = "numpy"
    with torch.no_grad():
        np.testing.assert_allclose(torch_mirror(model, torch)(torch.tensor(x)).numpy(), model(x), rtol=1e-12)


def test_the_step_model_streams_a_split_group_norm_at_dram_speed():
    """roofline.streaming: a launch's DRAM time at the bandwidth its loads in flight sustain. 64
    blocks of 256 threads with 16 bytes in flight each (the one-block-a-row GroupNorm of 64 rows:
    256 KiB) stream at 256 KiB / 500 ns, a sixth of an H100's DRAM; the split plan's launches of
    GroupNorm(32, 256) on (2, 256, 64, 64) (MODELED) all run at DRAM speed."""
    from cnn_gpu import roofline
    from cnn_gpu.bench.modeled import _row_norm_estimates
    from cnn_gpu.roofline.model import KernelTraits
    h100 = roofline.spec("h100")
    traits = KernelTraits(registers=32, shared_bytes=1024, issue_ceiling=1.0, wavefronts_per_flop=None)
    few = roofline.streaming("row_norm_forward", 2**26, h100, traits, 64, 256, 256 * 16)
    bandwidth = 64 * 256 * 16 / roofline.ASSUMED_DRAM_LATENCY_S
    assert bandwidth < h100.dram_bytes_per_s / 6 and few.dram_s == pytest.approx(2**26 / bandwidth)
    many = roofline.streaming("row_norm_forward", 2**26, h100, traits, 4096, 256, 256 * 16)
    assert many.dram_s == pytest.approx(2**26 / h100.dram_bytes_per_s)
    estimates = _row_norm_estimates(nn.GroupNorm(32, 256), (2, 256, 64, 64), "float32", h100)
    assert [e.kernel for e in estimates] == ["row_norm_slice_stats", "row_norm_forward", "row_norm_slice_sums",
                                             "row_norm_backward_dx", "row_norm_param_grads_planes"]
    for e in estimates:
        assert e.dram_s == pytest.approx(e.dram_bytes / h100.dram_bytes_per_s), e.kernel
