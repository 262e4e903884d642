"""F.group_norm / F.group_norm_backward and nn.GroupNorm: direct formulas, PyTorch CPU on numpy and
on the emulated batch-norm kernels, float16, finite differences, the layer's state, refusals."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, to_host

BACKENDS = ["numpy", "emu"]
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def skip_unless(be):
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)


def draw_case(rng, dtype):
    """(N, C, *) of rank 2 to 5, a group count dividing C, affine parameters or not; 3 values a
    group at least (with 2, xhat is +-1 and dx a cancellation to 0 that float32 leaves at 1e-5)."""
    groups = int(rng.integers(1, 4))
    shape = (int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))) + tuple(
        int(d) for d in rng.integers(1, 5, int(rng.integers(0, 4))))
    if np.prod(shape[1:]) // groups < 3:
        shape = (shape[0], 3 * groups) + shape[2:]
    channels = shape[1]
    affine = rng.random() < 0.8
    return dict(x=(rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype),
                dy=rng.standard_normal(shape).astype(dtype), groups=groups,
                weight=rng.standard_normal(channels).astype(dtype) if affine else None,
                bias=rng.standard_normal(channels).astype(dtype) if affine and rng.random() < 0.8 else None,
                eps=float(rng.choice([1e-5, 1e-3])))


def run_case(case, be):
    """(y, dx, dweight, dbias) on `be`, the backward with the forward's statistics."""
    x, groups, weight, bias, eps = (case[k] for k in ("x", "groups", "weight", "bias", "eps"))
    y, mean, invstd = F.group_norm(x, groups, weight, bias, eps, return_stats=True, backend=be)
    return (y, *F.group_norm_backward(case["dy"], x, groups, weight, bias, eps, save_mean=mean, save_invstd=invstd,
                                      backend=be))


def torch_results(case, torch):
    """(y, dx, dweight, dbias) of torch.nn.functional.group_norm in float64."""
    t = {k: None if case[k] is None else torch.tensor(case[k].astype(np.float64), requires_grad=True)
         for k in ("x", "weight", "bias")}
    y = torch.nn.functional.group_norm(t["x"], case["groups"], t["weight"], t["bias"], case["eps"])
    y.backward(torch.tensor(case["dy"].astype(np.float64)))
    return (y.detach().numpy(), *(None if v is None else v.grad.numpy() for v in t.values()))


def assert_results_close(got, expected, dtype, what):
    for a, e, name in zip(got, expected, ("y", "dx", "dweight", "dbias")):
        if e is None:
            assert a is None, f"{what} {name}"
        else:
            assert_close(a, e.astype(dtype), dtype, f"{what} {name}")


# --- direct formulas ----------------------------------------------------------------------------

def test_forward_and_backward_match_the_formulas():
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


# --- PyTorch CPU --------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype, count", [(np.float64, 40), (np.float32, 25)])
def test_against_pytorch(be, dtype, count):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(2)
    ranks, no_affine_seen = set(), 0
    for i in range(count):
        case = draw_case(rng, dtype)
        assert_results_close(run_case(case, be), torch_results(case, torch), dtype,
                             f"case {i} {case['x'].shape} groups={case['groups']} on {be}")
        if case["weight"] is not None:   # the statistics recomputed from x give the same gradients
            recomputed = F.group_norm_backward(case["dy"], case["x"], case["groups"], case["weight"], None, case["eps"],
                                               backend=be)
            assert_close(recomputed[1], torch_results(case, torch)[2].astype(dtype), dtype, f"case {i} recomputed")
        ranks.add(case["x"].ndim)
        no_affine_seen += case["weight"] is None
    assert ranks == {2, 3, 4, 5} and no_affine_seen


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_float16_is_within_an_ulp_of_the_largest_value_of_pytorchs_float64(be):
    """FP32 statistics and sums, each output rounded once; dx on the kernels from float16 dy * weight
    (one rounding more): each within one float16 ulp of the largest value of the result."""
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(3)
    for i in range(10):
        case = draw_case(rng, np.float16)
        for got, expected in zip(run_case(case, be), torch_results(case, torch)):
            if expected is not None:
                assert got.dtype == np.float16
                scale = max(1.0, np.abs(expected).max())   # as assert_close: no exact zeros asked
                assert np.abs(to_host(got) - expected).max() <= 2 ** -10 * scale, f"case {i} {case['x'].shape}"


@pytest.mark.parametrize("be", BACKENDS)
def test_the_statistics_are_returned_in_the_compute_type(be):
    skip_unless(be)
    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float16)
    _, mean, invstd = F.group_norm(x, 2, return_stats=True, backend=be)
    assert mean.shape == invstd.shape == (3, 2) and mean.dtype == invstd.dtype == np.float32
    np.testing.assert_allclose(mean, x.astype(np.float32).reshape(3, 2, -1).mean(axis=2), rtol=1e-5, atol=1e-6)


# --- finite differences -------------------------------------------------------------------------

@pytest.mark.parametrize("shape, groups", [((3, 4, 5), 2), ((2, 12), 3), ((2, 4, 2, 3), 1)])
def test_finite_differences(shape, groups):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 2
    weight, bias = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])

    def forward(x, weight, bias):
        return F.group_norm(x, groups, weight, bias)

    def backward(dy, x, weight, bias):
        return F.group_norm_backward(dy, x, groups, weight, bias)

    report = check_op(forward, backward, [x, weight, bias], names=["x", "weight", "bias"])
    assert report.max_rel_error < 1e-6, str(report)


# --- the layer ----------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("options", [{}, {"affine": False}, {"bias": False}])
def test_layer_matches_torch_and_its_state_dict_round_trips(be, options):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    rng = np.random.default_rng(6)
    ours = nn.GroupNorm(2, 4, eps=1e-4, dtype=np.float64, **options)
    theirs = torch.nn.GroupNorm(2, 4, eps=1e-4, dtype=torch.float64, **options)
    if ours.weight is not None:
        ours.weight.data[:] = rng.standard_normal(4)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs).replace(", bias=True", "").replace(", bias=False", "")
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
    fresh = nn.GroupNorm(2, 4, dtype=np.float64, **options)
    fresh.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, ours.state_dict()[key])


def test_layer_refuses_what_torch_refuses():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_groups"):
        nn.GroupNorm(0, 6)
    with pytest.raises(ValueError, match="eps"):
        nn.GroupNorm(2, 6, eps=-1.0)


# --- argument checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("be", BACKENDS)
def test_bad_arguments_are_refused_before_any_launch(be, monkeypatch):
    skip_unless(be)
    launches = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launches.append(args[3]) or real_launch(*args))
    x = np.random.default_rng(7).standard_normal((2, 6, 3))
    stats = np.zeros((2, 3))
    bad_calls = [
        (lambda: F.group_norm(x[0, 0], 1), ValueError, "at least 2 dimensions"),
        (lambda: F.group_norm(x, 4), ValueError, "divisible by num_groups"),
        (lambda: F.group_norm(x, 0), ValueError, "num_groups"),
        (lambda: F.group_norm(x, 3, np.ones(5)), ValueError, "weight"),
        (lambda: F.group_norm(x, 3, None, np.ones(6, np.float32)), TypeError, "dtype"),
        (lambda: F.group_norm(x[:1, :, :1], 6), ValueError, "more than 1 value per channel"),
        (lambda: F.group_norm(x, 3, eps=-1.0), ValueError, "eps"),
        (lambda: F.group_norm_backward(x[:1], x, 3), ValueError, "dy"),
        (lambda: F.group_norm_backward(x, x, 3, save_mean=stats), ValueError, "both"),
        (lambda: F.group_norm_backward(x, x, 3, save_mean=stats[:, :2], save_invstd=stats), ValueError, "save_mean"),
        (lambda: F.group_norm_backward(x, x, 3, save_mean=stats, save_invstd=stats.astype(np.float32)), TypeError,
         "dtype"),
    ]
    for call, error, match in bad_calls:
        with pytest.raises(error, match=match):
            call()
    assert launches == []
    F.group_norm(x, 6, backend=be)   # one value per channel is taken where the batch gives more per group
    assert bool(launches) == (be != "numpy")   # the spy sees the kernels of the calls taken


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 6, 3), (2, 6, 0)])
def test_an_empty_input_gives_empty_results_and_zero_parameter_gradients(be, shape):
    torch = pytest.importorskip("torch")
    skip_unless(be)
    x, weight = np.zeros(shape), np.ones(6)
    y, mean, invstd = F.group_norm(x, 3, weight, weight, return_stats=True, backend=be)
    _, their_mean, their_invstd = torch.native_group_norm(torch.from_numpy(x), None, None, shape[0], 6,
                                                          shape[2], 3, 1e-5)
    assert y.shape == shape
    np.testing.assert_array_equal(mean, their_mean.numpy())
    np.testing.assert_array_equal(invstd, their_invstd.numpy())
    dx, dweight, dbias = F.group_norm_backward(x, x, 3, weight, weight, backend=be)
    assert dx.shape == shape
    np.testing.assert_array_equal(dweight, 0)
    np.testing.assert_array_equal(dbias, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_replayed_step_computes_its_new_inputs(dtype):
    """Recorded (cnn_gpu.replay) and replayed on inputs overwritten in place: the eager results, bit
    for bit (the statistics repeated per plane, dy * weight and the sums over the samples are
    device calls a replay redoes)."""
    from cnn_gpu import replay
    skip_unless("emu")
    rng = np.random.default_rng(9)

    def draw():
        return [rng.standard_normal(shape).astype(dtype) for shape in ((3, 4, 5), (3, 4, 5), (4,), (4,))]

    def step(x, dy, weight, bias):
        y, mean, invstd = F.group_norm(x, 2, weight, bias, return_stats=True, backend="emu")
        return (y, *F.group_norm_backward(dy, x, 2, weight, bias, save_mean=mean, save_invstd=invstd, backend="emu"))

    inputs, new_inputs = draw(), draw()
    with replay.record() as recorded:
        outputs = step(*inputs)
    for a, new in zip(inputs, new_inputs):
        a[...] = new
    recorded.replay()
    for got, expected in zip(outputs, step(*new_inputs)):
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(8)
    for i in range(20):
        case = draw_case(rng, dtype)
        on_gpu = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in case.items()}
        first, second = run_case(on_gpu, "cuda"), run_case(on_gpu, "cuda")
        assert_results_close(first, run_case(case, "numpy"), dtype, f"case {i} on cuda")
        for a, b in zip(first, second):   # batch norm's fixed-order reductions: the same bits every run
            assert a is None or to_host(a).tobytes() == to_host(b).tobytes()
