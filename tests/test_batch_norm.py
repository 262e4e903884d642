"""F.batch_norm / F.batch_norm_backward and nn.BatchNorm1d / nn.BatchNorm2d: direct formulas, PyTorch
CPU, finite differences, the kernels on the emulator (a sweep, schedules with guard zones, races,
bit-identical reductions, float32 robustness) and the layers' state against torch.nn's."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close, assert_same_bits, to_host

DTYPES = (np.float64, np.float32)
FUSED = ("relu", "relu6", "hardswish", "silu")   # F.batch_norm's activations
LAYER_SHAPES = [("BatchNorm2d", (4, 3, 5, 5)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm1d", (6, 3))]
pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")



def draw_case(rng, dtype):
    """Random inputs of one configuration: shape, affine or not, running statistics or not, mode,
    momentum, eps and the fused activation (none in 60%)."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5))) + tuple(int(d) for d in rng.integers(1, 7, 2))
    if rng.random() < 0.15:
        shape = shape[:2] if rng.random() < 0.5 else shape[:3]     # (N, C) and (N, C, L) inputs
    training = bool(rng.random() < 0.6)
    if training and np.prod(shape) // shape[1] < 2:
        shape = (shape[0] + 1,) + shape[1:]
    channels = shape[1]
    affine = rng.random() < 0.75
    running = not training or rng.random() < 0.7
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(dtype)
    return dict(
        x=x, dy=rng.standard_normal(shape).astype(dtype),
        running_mean=rng.standard_normal(channels).astype(dtype) if running else None,
        running_var=(rng.random(channels) + 0.5).astype(dtype) if running else None,
        weight=rng.standard_normal(channels).astype(dtype) if affine else None,
        bias=rng.standard_normal(channels).astype(dtype) if affine and rng.random() < 0.8 else None,
        training=training, momentum=float(rng.choice([0.1, 0.3, 1.0, 0.0])), eps=float(rng.choice([1e-5, 1e-3])),
        activation=FUSED[int(rng.integers(len(FUSED)))] if rng.random() < 0.4 else None)


def copy_case(case):
    return {k: (v.copy() if hasattr(v, "shape") else v) for k, v in case.items()}   # NumPy or CuPy


def run_case(case, be):
    """(y, dx, dweight, dbias, running_mean, running_var) of one case on `be` (running stats copied)."""
    c = copy_case(case)
    y, mean, invstd = F.batch_norm(c["x"], c["running_mean"], c["running_var"], c["weight"], c["bias"],
                                   c["training"], c["momentum"], c["eps"], activation=c["activation"],
                                   return_stats=True, backend=be)
    grads = F.batch_norm_backward(c["dy"], c["x"], c["running_mean"], c["running_var"], c["weight"], c["bias"],
                                  c["training"], c["eps"], activation=c["activation"], save_mean=mean,
                                  save_invstd=invstd, backend=be)
    return (y, *grads, c["running_mean"], c["running_var"])


def assert_results_close(got, expected, dtype, what):
    names = ("y", "dx", "dweight", "dbias", "running_mean", "running_var")
    for a, e, name in zip(got, expected, names):
        if e is None:
            assert a is None, f"{what} {name}"
        else:
            assert_close(a, e, dtype, f"{what} {name}")


# --- direct formulas ----------------------------------------------------------------------------

def test_training_forward_and_running_update_match_the_formulas():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 2)) * 2 + 1
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    running_mean, running_var = rng.standard_normal(3), rng.random(3) + 0.5
    rm0, rv0 = running_mean.copy(), running_var.copy()
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.2, eps=1e-3)
    for c in range(3):
        values = x[:, c].ravel()
        mean = sum(values) / len(values)
        biased = sum((v - mean) ** 2 for v in values) / len(values)
        expected = (x[:, c] - mean) / np.sqrt(biased + 1e-3) * weight[c] + bias[c]
        np.testing.assert_allclose(y[:, c], expected, rtol=1e-12, atol=1e-12)
        assert running_mean[c] == pytest.approx(0.8 * rm0[c] + 0.2 * mean, rel=1e-12)
        unbiased = biased * len(values) / (len(values) - 1)
        assert running_var[c] == pytest.approx(0.8 * rv0[c] + 0.2 * unbiased, rel=1e-12)


def test_eval_forward_uses_running_statistics_and_leaves_them():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 3))
    running_mean, running_var = rng.standard_normal(4), rng.random(4) + 0.5
    before = running_mean.copy(), running_var.copy()
    y = F.batch_norm(x, running_mean, running_var, training=False, eps=1e-5)
    expected = (x - running_mean[:, None, None]) / np.sqrt(running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])


def test_backward_matches_the_closed_form():
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 2, 4, 5)), rng.standard_normal((3, 2, 4, 5))
    weight = rng.standard_normal(2)
    dx, dweight, dbias = F.batch_norm_backward(dy, x, None, None, weight, None, training=True, eps=1e-5)
    assert dbias is None
    for c in range(2):
        xc, gc = x[:, c], dy[:, c]
        mean, var = xc.mean(), xc.var()
        xhat = (xc - mean) / np.sqrt(var + 1e-5)
        expected = weight[c] / np.sqrt(var + 1e-5) * (gc - gc.mean() - xhat * (gc * xhat).mean())
        np.testing.assert_allclose(dx[:, c], expected, rtol=1e-10, atol=1e-12)
        assert dweight[c] == pytest.approx((gc * xhat).sum(), rel=1e-12)


# --- PyTorch CPU --------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("dtype, count", [(np.float64, 120), (np.float32, 40)])
def test_against_pytorch(dtype, count):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    activations_seen, no_running_seen, eval_seen = set(), 0, 0
    after = {"relu": torch.relu, "relu6": torch.nn.functional.relu6, "hardswish": torch.nn.functional.hardswish,
             "silu": torch.nn.functional.silu}
    for i in range(count):
        case = draw_case(rng, dtype)
        ours = run_case(case, "numpy")
        t = {k: (torch.tensor(v, requires_grad=k in ("x", "weight", "bias")) if isinstance(v, np.ndarray) else v)
             for k, v in copy_case(case).items()}
        y = torch.nn.functional.batch_norm(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"],
                                           t["training"], t["momentum"], t["eps"])
        if case["activation"]:
            y = after[case["activation"]](y)
        y.backward(torch.tensor(case["dy"]))
        grad = lambda v: None if v is None else v.grad.numpy()  # noqa: E731
        theirs = (y.detach().numpy(), grad(t["x"]), grad(t["weight"]), grad(t["bias"]),
                  *(None if v is None else v.numpy() for v in (t["running_mean"], t["running_var"])))
        assert_results_close(ours, theirs, dtype, f"case {i} {case['x'].shape} training={case['training']}")
        activations_seen.add(case["activation"])
        no_running_seen += case["running_mean"] is None
        eval_seen += not case["training"]
    assert activations_seen == {None, *FUSED} and no_running_seen and eval_seen


@pytest.mark.torch
@pytest.mark.parametrize("layer, shape", LAYER_SHAPES)
def test_layer_matches_torch_over_steps(layer, shape):
    """Several training steps (momentum 0.1 and the cumulative average), then eval: outputs, gradients,
    running statistics, num_batches_tracked and the state_dict keys as torch.nn's layer."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for momentum in (0.1, None):
        ours = getattr(nn, layer)(3, momentum=momentum, dtype=np.float64)
        theirs = getattr(torch.nn, layer)(3, momentum=momentum, dtype=torch.float64)
        ours.weight.data[:] = rng.standard_normal(3)
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(ours.weight.data))
        for step in range(4):
            x, dy = rng.standard_normal(shape) + step, rng.standard_normal(shape)
            if step == 3:
                ours.eval()
                theirs.eval()
            ours.zero_grad()
            theirs.zero_grad()
            xt = torch.tensor(x, requires_grad=True)
            y, yt = ours(x), theirs(xt)
            yt.backward(torch.tensor(dy))
            dx = ours.backward(dy)
            assert_close(y, yt.detach().numpy(), np.float64, f"y step {step}")
            assert_close(dx, xt.grad.numpy(), np.float64, f"dx step {step}")
            assert_close(ours.weight.grad, theirs.weight.grad.numpy(), np.float64, "dweight")
            assert_close(ours.bias.grad, theirs.bias.grad.numpy(), np.float64, "dbias")
        state, torch_state = ours.state_dict(), theirs.state_dict()
        assert list(state) == list(torch_state) == ["weight", "bias", "running_mean", "running_var",
                                                    "num_batches_tracked"]
        for key in state:
            np.testing.assert_allclose(state[key], torch_state[key].numpy(), rtol=1e-12, err_msg=key)
        assert state["num_batches_tracked"].dtype == np.int64 and int(state["num_batches_tracked"]) == 3


def test_layer_options_and_state_dict_round_trip():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    plain = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert list(plain.parameters()) == [] and plain.state_dict() == {}
    plain.eval()   # no running statistics: batch statistics even in eval mode, as PyTorch
    y = plain(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    assert plain.backward(rng.standard_normal(x.shape).astype(np.float32)).shape == x.shape

    layer = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    layer(x)
    state = layer.state_dict()
    assert list(state)[2:] == ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert [name for name, _ in layer.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert len(list(layer.buffers())) == 3 and len(list(layer.parameters())) == 4   # buffers are not trained
    fresh = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
        assert value.dtype == state[key].dtype, key
    with pytest.raises(ValueError, match="running_var"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})
    with pytest.raises(ValueError, match="4-D"):
        nn.BatchNorm2d(3)(x[0])
    for bad, error in ((dict(momentum=1.5), ValueError), (dict(momentum="0.1"), TypeError),
                       (dict(eps=-1e-5), ValueError), (dict(eps=float("nan")), ValueError)):
        with pytest.raises(error, match=next(iter(bad))):
            nn.BatchNorm2d(3, **bad)


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6), (2, 3, 2, 3, 2)])
def test_any_rank_from_2_matches_torch(be, dtype, shape):
    """(N, C), (N, C, L) and (N, C, D, H, W) take the (N, C, H, W) kernels as (N, C, rest, 1):
    training forward, running update and backward as torch.nn.functional.batch_norm."""
    torch = pytest.importorskip("torch")
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    rng = np.random.default_rng(14)
    case = dict(x=(rng.standard_normal(shape) * 2 + 1).astype(dtype), dy=rng.standard_normal(shape).astype(dtype),
                running_mean=rng.standard_normal(3).astype(dtype), running_var=(rng.random(3) + 0.5).astype(dtype),
                weight=rng.standard_normal(3).astype(dtype), bias=rng.standard_normal(3).astype(dtype),
                training=True, momentum=0.1, eps=1e-5, activation=None)
    t = {k: (torch.tensor(v, requires_grad=k in ("x", "weight", "bias")) if isinstance(v, np.ndarray) else v)
         for k, v in copy_case(case).items()}
    y = torch.nn.functional.batch_norm(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"], True,
                                       0.1, 1e-5)
    y.backward(torch.tensor(case["dy"]))
    theirs = (y.detach().numpy(), t["x"].grad.numpy(), t["weight"].grad.numpy(), t["bias"].grad.numpy(),
              t["running_mean"].numpy(), t["running_var"].numpy())
    assert_results_close(run_case(case, be), theirs, dtype, f"{shape} on {be}")


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_batch_norm1d_refuses_what_torch_refuses_before_any_launch(be, monkeypatch):
    """BatchNorm1d takes (N, C) and (N, C, L) only, and in training more than one value per channel
    (torch.nn.BatchNorm1d's checks); a refused call launches nothing and leaves the running
    statistics as they were."""
    torch = pytest.importorskip("torch")
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    ours, theirs = nn.BatchNorm1d(3).to(be), torch.nn.BatchNorm1d(3)
    launches = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args: launches.append(args[3]) or real_launch(*args))
    refused = [((3,), "2-D or 3-D"), ((2, 3, 2, 2), "2-D or 3-D"),
               ((1, 3), "more than 1 value per channel"), ((1, 3, 1), "more than 1 value per channel")]
    for shape, match in refused:
        with pytest.raises(ValueError, match=match):
            ours(np.zeros(shape, np.float32))
        with pytest.raises(ValueError):
            theirs(torch.zeros(shape))
    assert launches == []
    np.testing.assert_array_equal(ours.running_mean, 0)
    np.testing.assert_array_equal(ours.running_var, 1)
    for shape, training in (((1, 3, 2), True), ((1, 3), False), ((1, 3, 1), False)):   # taken, as torch takes them
        ours.train(training)
        theirs.train(training)
        x = np.random.default_rng(15).standard_normal(shape).astype(np.float32)
        assert_close(ours(x), theirs(torch.tensor(x)).detach().numpy(), np.float32, f"{shape} training={training}")
    assert bool(launches) == (be != "numpy")   # the spy sees the kernels of the calls taken


@pytest.mark.torch
def test_batch_norm1d_state_dict_loads_into_torch_and_back():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    ours = nn.BatchNorm1d(4, momentum=0.3, dtype=np.float64)
    for step in range(2):
        ours(rng.standard_normal((5, 4)) * 3 + step)
    theirs = torch.nn.BatchNorm1d(4, momentum=0.3, dtype=torch.float64)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    back = nn.BatchNorm1d(4, dtype=np.float64)
    back.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((3, 4, 2))
    for layer in (ours, theirs, back):
        layer.eval()
    expected = theirs(torch.from_numpy(x)).detach().numpy()
    for layer in (ours, back):
        assert_close(layer(x), expected, np.float64, "eval output")
    assert int(back.num_batches_tracked) == 2 and back.num_batches_tracked.dtype == np.int64


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_linear_batch_norm1d_relu_head_runs_its_relu_inside_the_batch_norm(be, monkeypatch):
    """Sequential(Linear, BatchNorm1d, ReLU, Linear), the usual MLP head: torch's values and
    gradients, with the ReLU applied by the batch norm's kernels (its own forward never runs)."""
    torch = pytest.importorskip("torch")
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    rng = np.random.default_rng(17)
    ours = nn.Sequential(nn.Linear(6, 4, dtype=np.float64, rng=rng), nn.BatchNorm1d(4, dtype=np.float64),
                         nn.ReLU(), nn.Linear(4, 2, dtype=np.float64, rng=rng))
    theirs = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2)).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.to(be)
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, x: pytest.fail("the ReLU ran apart"))
    x, dy = rng.standard_normal((8, 6)), rng.standard_normal((8, 2))
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), np.float64, "y")
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, "dx")
    grads = dict(ours.named_parameters())
    for name, parameter in theirs.named_parameters():
        assert_close(grads[name].grad, parameter.grad.numpy(), np.float64, name)


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_a_volume_network_runs_its_activation_inside_batch_norm3d(be, monkeypatch):
    """Sequential(BatchNorm3d, SiLU) of a 3-D network: torch's values and gradients, the SiLU applied by
    the batch norm's kernels as BatchNorm2d's is (its own forward and backward never run)."""
    torch = pytest.importorskip("torch")
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    rng = np.random.default_rng(19)
    ours = nn.Sequential(nn.BatchNorm3d(3, dtype=np.float64), nn.SiLU())
    theirs = torch.nn.Sequential(torch.nn.BatchNorm3d(3), torch.nn.SiLU()).double()
    ours[0].weight.data[...] = rng.standard_normal(3)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.to(be)
    monkeypatch.setattr(nn.SiLU, "forward", lambda self, x: pytest.fail("the SiLU ran apart"))
    x, dy = rng.standard_normal((2, 3, 3, 4, 5)), rng.standard_normal((2, 3, 3, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), np.float64, "y")
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, "dx")
    assert_close(ours[0].weight.grad, theirs[0].weight.grad.numpy(), np.float64, "dweight")


# --- fused activations --------------------------------------------------------------------------

APART = {"relu": (F.relu, F.relu_backward), "relu6": (F.relu6, F.relu6_backward),
         "hardswish": (F.hardswish, F.hardswish_backward), "silu": (F.silu, F.silu_backward)}


def fused_and_apart(activation, x, dy, running, weight, bias, training, eps, be):
    """[y, dx, dweight, dbias] of batch_norm with `activation` fused, then of batch_norm and the
    activation's own op apart (the backward with the forward's statistics either way)."""
    forward, backward = APART[activation]
    results = []
    for fused in (activation, None):
        stats = [a.copy() for a in running]
        y, mean, invstd = F.batch_norm(x, *stats, weight, bias, training, 0.1, eps, activation=fused,
                                       return_stats=True, backend=be)
        g = dy if fused else backward(dy, y, backend=be)
        grads = F.batch_norm_backward(g, x, None, None, weight, bias, training, eps, activation=fused,
                                      save_mean=mean, save_invstd=invstd, backend=be)
        results.append([y if fused else forward(y, backend=be), *grads])
    return results


def test_the_launchers_activation_codes_are_the_kernels():
    """gpu.batch_norm.ACTIVATION_CODES, one for each of F.batch_norm's activations (and None), are
    kernels/batch_norm.cu's ACTIVATION_* codes."""
    from cnn_gpu.gpu.batch_norm import ACTIVATION_CODES
    source = backend.kernel_source("batch_norm")
    assert set(ACTIVATION_CODES) == {None, *FUSED} and len(set(ACTIVATION_CODES.values())) == len(ACTIVATION_CODES)
    for name, code in ACTIVATION_CODES.items():
        assert f"#define ACTIVATION_{(name or 'none').upper()} {code}\n" in source, name


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_fused_activations_at_their_kinks_and_special_values_are_the_ops_apart(be, dtype):
    """Eval mode with mean 0, variance 1, eps 0, weight 1 and bias 0 normalises x to itself, so x
    puts the activation's input on its kinks (ReLU's and ReLU6's 0 and 6, Hardswish's -3 and 3),
    on -0.0, infinities and NaN: y and dx are the bits of F.relu / relu6 / hardswish / silu and
    their backward run apart (PyTorch's rules, tests/test_mobile_activations.py), on the emulator
    inside guard zones; dweight and dbias sum what the ops apart hand on (float16: rounded there)."""
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    from cnn_gpu import emu
    rng = np.random.default_rng(19)
    special = [-np.inf, -6.5, -3.0, -2.5, -0.0, 0.0, 1e-3, 2.5, 3.0, 5.5, 6.0, 6.5, np.inf, np.nan]
    x = rng.standard_normal((3, 2, 4, 5)) * 4
    x[0, 0].flat[:len(special)] = special
    x, dy = x.astype(dtype), rng.standard_normal(x.shape).astype(dtype)
    dy[1, 1, 0, :2] = np.inf, np.nan   # a zero gradient is 0 also for them
    identity = (np.zeros(2, dtype), np.ones(2, dtype))
    for activation in FUSED:
        with emu.checking(guard=True) if be == "emu" else np.errstate(invalid="ignore"):   # NumPy's inf * 0
            fused, apart = fused_and_apart(activation, x, dy, identity, np.ones(2, dtype), np.zeros(2, dtype),
                                           False, 0.0, be)
        for name, got, want in zip(("y", "dx"), fused, apart):
            assert_same_bits(got, want, f"{activation} {name}")
        for name, got, want in zip(("dweight", "dbias"), fused[2:], apart[2:]):
            np.testing.assert_allclose(to_host(got), to_host(want), rtol=1e-3 if dtype == np.float16 else 1e-6,
                                       err_msg=f"{activation} {name}")


@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_fused_activations_give_the_ops_apart_in_training(be, dtype):
    """Training mode, normalised values well past every kink: the fused activation's y, dx, dweight
    and dbias are those of batch_norm and the activation's op run apart, float64 and float32 to
    their tolerances (the same formulas), float16 within a float16 ulp of the values' scale: fused,
    the activation's input and its gradient stay FP32 and each output is rounded once, where apart
    they are rounded to float16 in between. (No normalised value of this draw rounds across a jump
    of the activation's slope, which would change its gradient by the jump: tests/test_nn.py.)"""
    if reason := backend.why_unavailable(be):
        pytest.skip(reason)
    rng = np.random.default_rng(23)
    shape = (4, 3, 6, 7)
    x, dy = (rng.standard_normal(shape) * 2 + 1).astype(dtype), rng.standard_normal(shape).astype(dtype)
    weight, bias = (rng.standard_normal(3) * 4).astype(dtype), rng.standard_normal(3).astype(dtype)
    running = (rng.standard_normal(3).astype(dtype), (rng.random(3) + 0.5).astype(dtype))
    for activation in FUSED:
        fused, apart = fused_and_apart(activation, x, dy, running, weight, bias, True, 1e-5, be)
        for name, got, want in zip(("y", "dx", "dweight", "dbias"), fused, apart):
            what = f"{activation} {name}"
            if dtype == np.float16:
                got, want = to_host(got).astype(np.float64), to_host(want).astype(np.float64)
                assert np.abs(got - want).max() <= 2**-10 * max(1.0, np.abs(want).max()), what
            else:
                assert_close(got, want, dtype, what)


# --- finite differences -------------------------------------------------------------------------

@pytest.mark.parametrize("training, activation", [(True, None), (False, None), (True, "relu"), (True, "relu6"),
                                                  (True, "hardswish"), (True, "silu"), (False, "silu")])
def test_finite_differences(training, activation):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 3, 4)) * 2
    # normalised values past ReLU6's 6 and Hardswish's -3 and 3 (none within 0.03 of a kink)
    weight, bias = rng.standard_normal(2) + np.array([4.0, -3.0]), rng.standard_normal(2) + 0.3
    running_mean, running_var = rng.standard_normal(2), rng.random(2) + 0.5

    def forward(x, weight, bias):   # copies: the running statistics must not drift between evaluations
        return F.batch_norm(x, running_mean.copy(), running_var.copy(), weight, bias, training, 0.1, 1e-5,
                            activation=activation)

    def backward(dy, x, weight, bias):
        return F.batch_norm_backward(dy, x, running_mean, running_var, weight, bias, training, 1e-5,
                                     activation=activation)

    report = check_op(forward, backward, [x, weight, bias], names=["x", "weight", "bias"])
    assert report.max_rel_error < 1e-6, str(report)


@pytest.mark.parametrize("shape", [(6, 2), (3, 2, 4), (2, 2, 2, 3, 2)])
def test_finite_differences_of_other_ranks(shape):
    rng = np.random.default_rng(18)
    x = rng.standard_normal(shape) * 2
    weight, bias = rng.standard_normal(2), rng.standard_normal(2)

    def forward(x, weight, bias):
        return F.batch_norm(x, None, None, weight, bias, True)

    def backward(dy, x, weight, bias):
        return F.batch_norm_backward(dy, x, None, None, weight, bias, True)

    report = check_op(forward, backward, [x, weight, bias], names=["x", "weight", "bias"])
    assert report.max_rel_error < 1e-6, str(report)


# --- argument checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("be", ["numpy", "emu"])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
def test_eval_mode_takes_an_empty_batch_and_its_gradients_are_zero(be, shape):
    """Eval mode normalises an empty batch (or empty planes) to an empty output, and the backward
    gives zero dweight and dbias (sums over no element; the emulator's NaN-filled allocations show
    any left unwritten), as PyTorch does."""
    from cnn_gpu import backend as backends
    if reason := backends.why_unavailable(be):
        pytest.skip(reason)
    x = np.zeros(shape)
    running_mean, running_var, weight, bias = np.zeros(3), np.ones(3), np.full(3, 2.0), np.ones(3)
    y = F.batch_norm(x, running_mean, running_var, weight, bias, False, backend=be)
    dx, dweight, dbias = F.batch_norm_backward(x, x, running_mean, running_var, weight, bias, False, backend=be)
    assert y.shape == shape and dx.shape == shape
    np.testing.assert_array_equal(dweight, 0)
    np.testing.assert_array_equal(dbias, 0)


def test_bad_arguments_fail_before_any_update():
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4))
    running_mean, running_var = np.zeros(3), np.ones(3)
    bad_calls = [
        (lambda: F.batch_norm(x, running_mean, running_var, np.ones(4), training=True), ValueError, "weight"),
        (lambda: F.batch_norm(x, running_mean, None, training=True), ValueError, "both"),
        (lambda: F.batch_norm(x, None, None, training=False), ValueError, "eval mode"),
        (lambda: F.batch_norm(x[:1, :, :1, :1], running_mean, running_var, training=True), ValueError,
         "more than 1 value"),
        (lambda: F.batch_norm(x, running_mean.astype(np.float32), running_var, training=True), TypeError, "dtype"),
        (lambda: F.batch_norm(x, running_mean, running_var, training=True, eps=-1.0), ValueError, "eps"),
        (lambda: F.batch_norm(x, running_mean, running_var, training=True, momentum=float("nan")), ValueError,
         "momentum"),
        (lambda: F.batch_norm(x, running_mean, running_var, training=True, activation="tanh"), ValueError,
         "activation"),
        (lambda: F.batch_norm(x[0, 0, 0], running_mean, running_var), ValueError, "2 dimensions"),
        (lambda: F.batch_norm_backward(x[:1], x, running_mean, running_var), ValueError, "dy"),
        (lambda: F.batch_norm_backward(x, x, None, None, training=True, save_mean=[0.0] * 3, save_invstd=[1.0] * 3),
         TypeError, "save_mean must be a NumPy or CuPy array"),
        (lambda: F.batch_norm_backward(x.astype(np.float16), x.astype(np.float16), None, None, training=True,
                                       save_mean=[0.0] * 3, save_invstd=[1.0] * 3),
         TypeError, "save_mean must be a NumPy or CuPy array"),
        (lambda: F.batch_norm_backward(x.astype(np.float16), x.astype(np.float16), None, None, training=True,
                                       save_mean=np.zeros(3), save_invstd=np.ones(3)), TypeError, "dtype"),
    ]
    for call, error, match in bad_calls:
        with pytest.raises(error, match=match):
            call()
    np.testing.assert_array_equal(running_mean, 0)
    np.testing.assert_array_equal(running_var, 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_a_read_only_running_statistic_is_refused_before_either_is_updated(dtype):
    """numpy updated running_mean, then failed on a read-only running_var."""
    x = np.random.default_rng(9).standard_normal((4, 3, 2, 2)).astype(dtype)
    running_mean, running_var = np.zeros(3, dtype), np.ones(3, dtype)
    running_var.flags.writeable = False
    with pytest.raises(ValueError, match="running_var is updated in place, but the array is read-only"):
        F.batch_norm(x, running_mean, running_var, training=True)
    np.testing.assert_array_equal(running_mean, 0)
    # eval mode writes neither: read-only statistics serve (float16 used to write them back)
    running_mean.flags.writeable = False
    y = F.batch_norm(x, running_mean, running_var, training=False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-3 if dtype == np.float16 else 1e-12)


# --- kernels on the emulator --------------------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("dtype", DTYPES)
def test_emu_sweep(dtype):
    from cnn_gpu import emu
    rng = np.random.default_rng(9)
    with emu.checking(schedule="forward", guard=True):
        for i in range(60):
            case = draw_case(rng, dtype)
            what = f"case {i} {case['x'].shape} training={case['training']} {case['activation']}"
            assert_results_close(run_case(case, "emu"), run_case(case, "numpy"), dtype, what)
            if case["training"]:   # the statistics recomputed from x give the same gradients
                c = copy_case(case)
                recomputed = F.batch_norm_backward(c["dy"], c["x"], None, None, c["weight"], c["bias"], True,
                                                   c["eps"], activation=c["activation"], backend="emu")
                assert_close(recomputed[0], run_case(case, "numpy")[1], dtype, what + " recomputed")


@needs_emu
def test_float16_statistics_are_the_float32_statistics_of_the_widened_input():
    """batch_norm_stats' float16 build loads 8 elements a round (bytes in flight for DRAM speed) and
    applies them as two of float32's rounds, so its mean, invstd and running statistics are float32's
    of the widened x (the running ones rounded once) bit for bit: shapes whose threads' last round
    holds 1 to 7 elements, over one chunk and over two (4096 elements a chunk)."""
    from cnn_gpu.gpu import batch_norm as gpu_batch_norm
    rng = np.random.default_rng(31)
    for shape in [(2, 3, 5, 7), (3, 2, 20, 25), (3, 2, 40, 41), (4, 2, 33, 35), (2, 2, 64, 40)]:
        x = (rng.standard_normal(shape) * 2 + 3).astype(np.float16)
        running = [rng.standard_normal(shape[1]).astype(np.float16), (rng.random(shape[1]) + 0.5).astype(np.float16)]
        wide_running = [a.astype(np.float32) for a in running]
        half = gpu_batch_norm.stats("emu", x, *running, 0.1, 1e-5)
        wide = gpu_batch_norm.stats("emu", x.astype(np.float32), *wide_running, 0.1, 1e-5)
        for got, expected, what in zip((*half, *running), (*wide, *(a.astype(np.float16) for a in wide_running)),
                                       ("mean", "invstd", "running_mean", "running_var")):
            assert_same_bits(got, expected, f"{shape} {what}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_long_channels_are_numpys_under_the_race_check(dtype):
    """Channels of 1500 elements (a thread's second pass partial: the accumulators it misses count one
    element less) and of 3 reduction blocks (4096 elements a chunk, the last partial), whose moments
    and backward sums the last block to arrive merges: the NumPy path's y, mean, invstd, running
    statistics and gradients, with guard zones and the race check (the sweep's channels fit one pass;
    the other chunked tests compare the kernels with themselves)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(33)
    for shape in [(2, 3, 25, 30), (3, 2, 50, 61), (5, 1, 41, 43)]:
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        weight, bias = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
        results = {}
        for be in ("numpy", "emu"):
            running = [np.zeros(shape[1], dtype), np.ones(shape[1], dtype)]
            with emu.checking(guard=True, race=True):
                results[be] = (*F.batch_norm(x, *running, weight, bias, True, return_stats=True, backend=be),
                               *running, *F.batch_norm_backward(dy, x, None, None, weight, bias, True, backend=be))
        for got, want, what in zip(results["emu"], results["numpy"], ("y", "mean", "invstd", "running_mean",
                                                                     "running_var", "dx", "dweight", "dbias")):
            assert_close(got, want, dtype, f"{shape} {what}")


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_element_passes_cover_every_plane_size_and_any_grid(dtype, monkeypatch):
    """batch_norm_forward and batch_norm_backward_dx walk 4 elements a thread, float16 8
    (for_each_plane_element): planes of at least SPAN = 1024 elements (float16 2048) across x blocks,
    smaller ones SPAN // HW a block (a partial last group, their constants in a shared table). Every
    plane size path matches NumPy, and grids smaller than the launcher's (the grid-stride loops past
    CUDA's grid limits) give the same bits, with no shared-memory race between a block's groups."""
    from cnn_gpu import emu
    from cnn_gpu.gpu import _grid, batch_norm as gpu_batch_norm
    source = backend.kernel_source("batch_norm")   # the launcher's grid mirrors the kernel's group size
    assert f"#define GROUP_PLANES {_grid.GROUP_PLANES} " in source
    assert "#define SPAN (BLOCK_THREADS * PLANE_ELEMENTS) " in source
    assert "#define PLANE_ELEMENTS (REAL_IS_HALF ? 2 * ELEMENTS_PER_THREAD : ELEMENTS_PER_THREAD)\n" in source
    span = 256 * _grid.plane_elements(dtype)
    rng = np.random.default_rng(17)
    for shape in [(3, 5, 1, 1), (2, 3, 7, 7), (5, 3, 16, 16), (3, 2, 20, 20), (2, 3, 32, 32), (2, 3, 33, 33),
                  (1, 2, 32, 64), (1, 2, 50, 61)]:
        case = dict(x=(rng.standard_normal(shape) + 1).astype(dtype), dy=rng.standard_normal(shape).astype(dtype),
                    weight=rng.standard_normal(shape[1]).astype(dtype), bias=rng.standard_normal(shape[1]).astype(dtype),
                    running_mean=rng.standard_normal(shape[1]).astype(dtype),
                    running_var=(rng.random(shape[1]) + 0.5).astype(dtype), momentum=0.1, eps=1e-5)
        for training in (True, False):
            for activation in (None, "relu"):
                c = dict(case, training=training, activation=activation)
                what = f"{shape} training={training} {activation}"
                with emu.checking(guard=True):
                    got = run_case(c, "emu")
                expected = run_case(c, "numpy")
                if dtype == np.float32:
                    assert_results_close(got, expected, dtype, what)
                else:   # FP32 math in another order, each output rounded once: a float16 ulp apart
                    for a, e in zip(got, expected):
                        if e is not None:
                            e = e.astype(np.float64)
                            assert np.abs(a - e).max() <= 2**-10 * max(1.0, np.abs(e).max()), what
                planes, inner = shape[0] * shape[1], shape[2] * shape[3]
                for grid in ((1, 1), (1, 2), (2, 3)):
                    x_blocks = grid[0] if inner >= span else 1   # small planes take gridDim.x 1
                    monkeypatch.setattr(gpu_batch_norm, "plane_walk_grid",
                                        lambda planes, inner, dtype: (x_blocks, grid[1]))
                    with emu.checking(guard=True, race=True):   # blocks taking several groups reuse their table
                        small = run_case(c, "emu")
                    monkeypatch.undo()
                    for a, e in zip(small[:2], got[:2]):   # y and dx
                        np.testing.assert_array_equal(a, e, err_msg=f"{what} grid {grid}, planes {planes}")


# Shapes whose channel walks wrap in different ways: HW above, below and equal to the block size,
# and channels of several reduction blocks (3 and 2 chunks, the last partial) that a schedule may
# finish in any order.
SCHEDULE_SHAPES = [(2, 3, 17, 19), (7, 2, 1, 1), (3, 5, 16, 16), (1, 2, 300, 1), (3, 2, 50, 61)]


def run_all_kernels(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    channels = shape[1]
    running_mean, running_var = np.zeros(channels, dtype), np.ones(channels, dtype)
    weight, bias = rng.standard_normal(channels).astype(dtype), rng.standard_normal(channels).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    activation = FUSED[seed % len(FUSED)]   # each fused activation in turn over the shapes
    y, mean, invstd = F.batch_norm(x, running_mean, running_var, weight, bias, True, activation=activation,
                                   return_stats=True, backend="emu")
    grads = F.batch_norm_backward(dy, x, None, None, weight, bias, True, activation=activation, backend="emu")
    eval_y = F.batch_norm(x, running_mean, running_var, weight, bias, False, backend="emu")
    eval_grads = F.batch_norm_backward(dy, x, running_mean, running_var, weight, bias, False, backend="emu")
    return [y, mean, invstd, *grads, running_mean, running_var, eval_y, *eval_grads]


@needs_emu
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_kernels_bit_identical_under_schedules(schedule):
    from cnn_gpu import emu
    for i, shape in enumerate(SCHEDULE_SHAPES):
        for dtype in DTYPES:
            with emu.checking(schedule="forward", guard=True):
                expected = run_all_kernels(shape, dtype, i)
            with emu.checking(schedule=schedule, seed=i, guard=True):
                got = run_all_kernels(shape, dtype, i)
            for k, (a, e) in enumerate(zip(got, expected)):
                assert to_host(a).tobytes() == to_host(e).tobytes(), f"output {k} {shape} {dtype} under {schedule}"


@needs_emu
def test_kernels_have_no_shared_memory_races():
    from cnn_gpu import emu
    with emu.checking(schedule="random", seed=3, race=True):
        run_all_kernels((2, 3, 9, 7), np.float32, 0)
        run_all_kernels((5, 2, 33, 30), np.float32, 1)   # 2 reduction blocks a channel


@needs_emu
def test_chunked_reductions_leave_their_counts_zero_and_a_failed_launch_drops_them(monkeypatch):
    """Channels of 20,000 elements: 5 reduction blocks each (the last partial), combined by the last
    to arrive: the statistics and the backward sums to float64 accuracy, the arrival counts zero
    after every launch; a launch that fails part-way drops them, and the next gives the same bits."""
    from cnn_gpu.gpu import _arrivals
    from cnn_gpu.gpu import reduce
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 100, 100)) * 2 + 5
    dy = rng.standard_normal(x.shape)
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    assert reduce.chunks(2, 100 * 100) == 5

    def run():
        y, mean, invstd = F.batch_norm(x, None, None, weight, bias, True, return_stats=True, backend="emu")
        return (y, mean, invstd, *F.batch_norm_backward(dy, x, None, None, weight, bias, True, backend="emu"))

    first = run()
    expected = (F.batch_norm(x, None, None, weight, bias, True, return_stats=True, backend="numpy")
                + F.batch_norm_backward(dy, x, None, None, weight, bias, True, backend="numpy"))
    for name, got, want in zip(("y", "mean", "invstd", "dx", "dweight", "dbias"), first, expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)
    assert not _arrivals._COUNTS[_arrivals._key("emu")].any()
    real_launch = backend.launch

    def failing(be, family, dtype, kernel, grid, block, args):
        if kernel == "batch_norm_backward_sums":
            args[10][:2] = 1   # counts left part-way
            raise RuntimeError("launch failed")
        return real_launch(be, family, dtype, kernel, grid, block, args)

    with monkeypatch.context() as patch:
        patch.setattr(backend, "launch", failing)
        with pytest.raises(RuntimeError, match="launch failed"):
            run()
    assert _arrivals._key("emu") not in _arrivals._COUNTS
    assert [a.tobytes() for a in run()] == [a.tobytes() for a in first]


@needs_emu
def test_two_threads_launching_reductions_at_once_keep_their_own_arrival_counts():
    """The emulator runs two threads' launches at once (the GIL is released while a kernel runs):
    batch norm's statistics in one thread and channel sums in another, both several blocks a
    channel, each keep their thread's arrival counts and give the bits they give alone."""
    import threading
    from cnn_gpu import emu
    from cnn_gpu.gpu import batch_norm as gpu_batch_norm
    from cnn_gpu.gpu import reduce
    rng = np.random.default_rng(14)
    a = rng.standard_normal((3, 4, 9000))                        # 7 chunks a channel
    x = rng.standard_normal((2, 4, 12000)).astype(np.float32)   # 6 chunks a channel
    expected_sum = reduce.channel_sum("emu", a, 3, 4, 9000).tobytes()
    expected_stats = [s.tobytes() for s in gpu_batch_norm.stats("emu", x, None, None, 0.1, 1e-5)]
    wrong = []

    def sums():
        with emu.checking(guard=False):
            wrong.extend("sum" for _ in range(15) if reduce.channel_sum("emu", a, 3, 4, 9000).tobytes() != expected_sum)

    def stats():
        with emu.checking(guard=False):
            for _ in range(15):
                if [s.tobytes() for s in gpu_batch_norm.stats("emu", x, None, None, 0.1, 1e-5)] != expected_stats:
                    wrong.append("stats")

    threads = [threading.Thread(target=sums), threading.Thread(target=stats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@needs_emu
@pytest.mark.parametrize("shape", [(8, 6, 4, 4), (4, 8, 8, 8)])
def test_element_passes_keep_every_lane_busy_on_small_planes(shape):
    """ResNet's last stages have 4x4 and 8x8 planes: the forward and the backward's dx pass take
    several planes a block there, so each warp request moves 128 bytes of x, y, dy or dx (32
    lanes, 4 sectors) where a block per plane left 16 of its 256 threads working (64 bytes)."""
    from cnn_gpu import emu
    rng = np.random.default_rng(13)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    weight, bias = rng.standard_normal(shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    with emu.profiling() as prof:
        F.batch_norm(x, None, None, weight, bias, True, backend="emu")
        F.batch_norm_backward(dy, x, None, None, weight, bias, True, activation="relu", backend="emu")
    # the elements' sites (the per-channel constants move a few hundred bytes)
    element_sites = [site for site in prof.sites if site["space"] == "global" and site["bytes"] >= x.nbytes
                     and site["kernel"] in ("batch_norm_forward", "batch_norm_backward_dx")]
    # forward: x, y; dx: x, dy, dx (a site is a source line: x and dy are loaded on one)
    assert sum(site["bytes"] for site in element_sites) == 5 * x.nbytes
    for site in element_sites:
        assert site["requests"] * 128 == site["bytes"] and site["sectors"] == 4 * site["requests"], site


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_element_passes_take_a_round_of_16_bytes_a_thread_in_every_block(dtype):
    """A thread of batch_norm_forward and batch_norm_backward_dx loads a round of 16 bytes of each
    array before using any (PLANE_ELEMENTS: float32's 4 elements, float16's 8; 4 float16 ones held 97%
    of Little's law's bytes in flight on an H100: tests/test_sass.py counts the loads), and the
    launcher's grid gives every block one round of SPAN = 256 x that many elements, none idle: planes
    across x blocks (64x64), a group of two planes (32x32: float16's span) or of several (8x8), every
    warp request 32 lanes wide."""
    from cnn_gpu import emu
    span = 256 * 16 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(19)
    for shape in [(2, 3, 64, 64), (4, 2, 32, 32), (8, 16, 8, 8)]:
        x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
        weight, bias = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
        with emu.profiling() as prof:
            F.batch_norm(x, None, None, weight, bias, True, backend="emu")
            F.batch_norm_backward(dy, x, None, None, weight, bias, True, backend="emu")
        for kernel in ("batch_norm_forward", "batch_norm_backward_dx"):
            assert prof.kernels[kernel]["blocks"] * span == x.size, (shape, kernel, prof.kernels[kernel]["grid"])
        element_sites = [site for site in prof.sites if site["space"] == "global" and site["bytes"] >= x.nbytes
                         and site["kernel"] in ("batch_norm_forward", "batch_norm_backward_dx")]
        assert sum(site["bytes"] for site in element_sites) == 5 * x.nbytes   # x, y; x, dy, dx
        for site in element_sites:
            assert site["requests"] * 32 * x.itemsize == site["bytes"], (shape, site)


@needs_emu
@pytest.mark.parametrize("be", ["numpy", "emu"])
def test_float32_statistics_have_no_cancellation(be):
    """A large offset and a small spread: E[x^2] - E[x]^2 in float32 would lose every digit of the
    variance; the statistics (NumPy: two passes; the kernels: Welford) keep it to float32 accuracy
    (eps 1e-12: 1e-8 of the variance)."""
    rng = np.random.default_rng(11)
    x64 = 1000 + 0.01 * rng.standard_normal((8, 2, 32, 32))   # 2 reduction blocks a channel on emu
    x = x64.astype(np.float32)
    y, mean, invstd = F.batch_norm(x, None, None, training=True, eps=1e-12, return_stats=True, backend=be)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(invstd, 1 / exact.std(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3), dtype=np.float64), 1, rtol=1e-4)


@needs_emu
@pytest.mark.parametrize("layer, shape", LAYER_SHAPES)
def test_layer_on_emu_matches_numpy(layer, shape):
    rng = np.random.default_rng(12)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    layers = {be: getattr(nn, layer)(3, dtype=np.float64).to(be) for be in ("numpy", "emu")}
    for be, layer in layers.items():
        layer.weight.data[:] = np.arange(1, 4)
    for mode in ("train", "eval"):
        outputs = {}
        for be, layer in layers.items():
            getattr(layer, mode)()
            outputs[be] = (layer(x), layer.backward(dy), layer.running_mean.copy(), layer.weight.grad.copy())
            layer.zero_grad()
        for a, e in zip(outputs["emu"], outputs["numpy"]):
            assert_close(a, e, np.float64, mode)


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_numpy(dtype):
    import cupy
    rng = np.random.default_rng(13)
    for i in range(30):
        case = draw_case(rng, dtype)
        on_gpu = {k: (cupy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in case.items()}
        first, second = run_case(on_gpu, "cuda"), run_case(on_gpu, "cuda")
        assert_results_close(first, run_case(case, "numpy"), dtype, f"case {i} on cuda")
        for a, b in zip(first, second):   # fixed-order reductions: the same bits every run
            assert a is None or to_host(a).tobytes() == to_host(b).tobytes()


def test_zero_eps_is_refused_in_training_only():
    """As PyTorch: eps = 0 would divide a constant channel's zero variance by zero in training;
    running statistics in eval mode are the caller's, so eps = 0 is taken there."""
    x = np.random.default_rng(5).standard_normal((4, 3, 2, 2))
    with pytest.raises(ValueError, match="eps must be positive during training"):
        F.batch_norm(x, None, None, training=True, eps=0.0)
    mean, var = np.zeros(3), np.ones(3)
    np.testing.assert_allclose(F.batch_norm(x, mean, var, training=False, eps=0.0), x, rtol=1e-15)
