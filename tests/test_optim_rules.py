"""optim.Adagrad, Adamax, NAdam, RAdam and Adadelta against torch.optim 2.13 (foreach=False, CPU)
step by step on every backend, with every option; their state dicts both ways; what each keeps
of PyTorch's behaviour (Adagrad's state made at construction, RAdam's switch, Adamax's NaN).
tests/test_optim.py runs them through the shared checks too (8 parameters a launch, float16
master weights, resumes, a failed launch), tests/test_kernels_misc.py each kernel against its
formulas under guard zones."""

import numpy as np
import pytest

from cnn_gpu import backend, optim
from cnn_gpu.nn import Parameter
from cnn_gpu.nn.module import to_host
from helpers import needs_emu

CONFIGS = [
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.05, initial_accumulator_value=0.2, eps=1e-6,
                     maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, momentum_decay=0.02, maximize=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict()),   # beta2 0.999: rectified from step 6 (rho_t 5.99)
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05, maximize=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05, maximize=True))]
ON_CUDA = pytest.param("cuda", marks=pytest.mark.skipif("cuda" not in backend.available_backends(),
                                                        reason=f"no cuda backend: {backend.why_unavailable('cuda')}"))
BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu), ON_CUDA]


def _on(be, array):
    if be == "cuda":
        import cupy
        return cupy.asarray(array)
    return array.copy()


def _start_and_grads(rng, dtype, steps=8):
    """Three parameters' values and `steps` gradients each: the second gets none at the first two
    steps (its counts lag: in one launch with the others, RAdam's switch comes two steps later for
    it), the third a zero gradient at the fourth (stepped, as PyTorch steps it)."""
    shapes = ((3, 4), (5,), (7,))
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    grads[0][1] = grads[1][1] = None
    grads[3][2] = np.zeros(shapes[2], dtype)
    return start, grads


def _steps(torch, optimizer, params, tensors, step_grads, be):
    """One step of ours and of torch.optim's on the same gradients."""
    for p, t, g in zip(params, tensors, step_grads):
        p.grad = None if g is None else _on(be, g)
        t.grad = None if g is None else torch.from_numpy(g.copy())
    optimizer[0].step()
    optimizer[1].step()


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("kind, config", CONFIGS, ids=lambda c: c if isinstance(c, str) else
                         "-".join(f"{k}{v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_step_by_step(kind, config, dtype, be):
    """8 steps against torch.optim's single-tensor update: float64 to 1e-12; float32 within 4 ulps of
    each parameter's largest magnitude (2 seen: PyTorch's CPU kernels fuse addcmul_ and addcdiv_
    into FMAs where the NumPy update rounds each operation, and the kernels fuse others, with the
    step's scalars folded on the host)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(42)
    start, grads = _start_and_grads(rng, dtype)
    params = [Parameter(_on(be, a), backend=be) for a in start]
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    pair = (getattr(optim, kind)(params, **config), getattr(torch.optim, kind)(tensors, foreach=False, **config))
    for step, step_grads in enumerate(grads, start=1):
        _steps(torch, pair, params, tensors, step_grads, be)
        for p, t in zip(params, tensors):
            ours, theirs = to_host(p.data), t.detach().numpy()
            assert ours.dtype == dtype
            if dtype == np.float64:
                np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, err_msg=f"{kind} step {step}")
            else:
                ulps = np.abs(ours - theirs).max() / np.spacing(np.abs(theirs).max())
                assert ulps <= 4, f"{kind}{config} step {step}: {ulps} ulps"
    for state, p in zip(pair[0].state, tensors):
        theirs = pair[1].state[p]
        assert state.keys() == theirs.keys()
        assert state["step"] == theirs["step"].item()


def _as_torch_state(torch, state_dict):
    state = {i: {k: torch.from_numpy(np.array(v)) if hasattr(v, "shape") else v for k, v in s.items()}
             for i, s in state_dict["state"].items()}
    return {"state": state, "param_groups": [dict(group) for group in state_dict["param_groups"]]}


@pytest.mark.torch
@pytest.mark.parametrize("kind, config", [c for c in CONFIGS if c[1]])
@pytest.mark.parametrize("saved_by", ["torch", "ours"])
def test_a_state_dict_resumes_in_torch_optim_and_the_other_way(kind, config, saved_by):
    """After 4 steps (the second parameter's first 2), a state saved by either loads into the other
    and the next 4 steps (RAdam's switch among them) match torch.optim's; NAdam's mu_product goes
    as a number one way and a 0-d tensor the other."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(21)
    start, grads = _start_and_grads(rng, np.float64)
    params = [Parameter(a.copy()) for a in start]
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    groups = lambda p: [{"params": p[:-1]}, {"params": p[-1:], "lr": 0.02}]   # noqa: E731
    pair = (getattr(optim, kind)(groups(params), **config),
            getattr(torch.optim, kind)(groups(tensors), foreach=False, **config))
    for step_grads in grads[:4]:
        _steps(torch, pair, params, tensors, step_grads, "numpy")
    if saved_by == "torch":
        resumed = getattr(optim, kind)(groups(params), **config)
        resumed.load_state_dict(pair[1].state_dict())
        pair = (resumed, pair[1])
    else:
        resumed = getattr(torch.optim, kind)(groups(tensors), foreach=False, **config)
        resumed.load_state_dict(_as_torch_state(torch, pair[0].state_dict()))
        pair = (pair[0], resumed)
    for step, step_grads in enumerate(grads[4:], start=5):
        _steps(torch, pair, params, tensors, step_grads, "numpy")
        for p, t in zip(params, tensors):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{saved_by}'s state, step {step}")


@pytest.mark.torch
def test_adagrad_makes_its_state_at_construction_from_the_constructors_accumulator_value():
    """As torch.optim.Adagrad: every parameter's state (step 0, sum filled) before any step, the
    constructor's initial_accumulator_value for a group that sets its own (PyTorch reads no group's),
    and a group added later gets its state at its first step."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s) for s in ((4,), (3,), (2,))]
    params = [Parameter(a.copy()) for a in start]
    tensors = [torch.tensor(a, requires_grad=True) for a in start]
    groups = lambda p: [{"params": p[:1]}, {"params": p[1:2], "initial_accumulator_value": 5.0}]   # noqa: E731
    ours = optim.Adagrad(groups(params), initial_accumulator_value=0.25)
    theirs = torch.optim.Adagrad(groups(tensors), initial_accumulator_value=0.25)
    ours.add_param_group({"params": params[2:]})
    theirs.add_param_group({"params": tensors[2:]})
    saved, torch_saved = ours.state_dict(), theirs.state_dict()
    assert sorted(saved["state"]) == sorted(torch_saved["state"]) == [0, 1]
    for i in (0, 1):
        assert saved["state"][i]["step"] == torch_saved["state"][i]["step"].item() == 0
        np.testing.assert_array_equal(saved["state"][i]["sum"], torch_saved["state"][i]["sum"].numpy())
        np.testing.assert_array_equal(saved["state"][i]["sum"], 0.25)
    for _ in range(2):
        _steps(torch, (ours, theirs), params, tensors, [rng.standard_normal(a.shape) for a in start], "numpy")
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.state[2]["sum"], theirs.state[tensors[2]]["sum"].numpy(), rtol=1e-14)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_radam_takes_the_bias_corrected_momentum_alone_until_rho_t_passes_5(be):
    """Steps 1-5 (rho_t 1 to 4.996 with beta2 0.999): p -= lr * m / (1 - beta1^t), whatever the
    second moment; step 6 (rho_t 5.994): the adaptive, rectified step."""
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(50)
    param = Parameter(p0.copy(), backend=be)
    optimizer = optim.RAdam([param], lr=0.01)
    m, p = np.zeros(50), p0.copy()
    for t in range(1, 7):
        g = rng.standard_normal(50)
        param.grad = g.copy()
        optimizer.step()
        m = 0.9 * m + 0.1 * g
        plain = p - 0.01 * m / (1 - 0.9 ** t)
        if t <= 5:
            np.testing.assert_allclose(param.data, plain, rtol=1e-13, atol=1e-15, err_msg=f"step {t}")
        else:
            assert np.abs(param.data - plain).min() > 1e-6   # another step, each element
        p = param.data.copy()


@pytest.mark.torch
@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_adamax_keeps_a_nan_in_its_infinity_norm_as_torch_maximum_does(be, dtype):
    """A NaN gradient element makes exp_inf NaN there (torch.maximum; fmax would drop it), and the
    parameter NaN; the other elements step on, float16 through its FP32 master weights."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal(9).astype(dtype)
    grad = rng.standard_normal(9).astype(dtype)
    grad[4] = np.nan
    param = Parameter(p0.copy(), backend=be)
    optimizer = optim.Adamax([param], lr=0.01)
    tensor = torch.tensor(p0.astype(np.float32), requires_grad=True)
    theirs = torch.optim.Adamax([tensor], lr=0.01, foreach=False)
    for _ in range(2):
        param.grad, tensor.grad = grad.copy(), torch.from_numpy(grad.astype(np.float32))
        optimizer.step()
        theirs.step()
    exp_inf = theirs.state[tensor]["exp_inf"].numpy()
    assert np.isnan(exp_inf[4]) and np.isnan(optimizer.state[0]["exp_inf"][4]) and np.isnan(param.data[4])
    np.testing.assert_array_equal(np.isnan(optimizer.state[0]["exp_inf"]), np.isnan(exp_inf))
    np.testing.assert_allclose(param.data, tensor.detach().numpy().astype(dtype), rtol=1e-3 if dtype == np.float16
                               else 1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.Adagrad(p, lr_decay=-0.1), "lr_decay"),
    (lambda p: optim.Adagrad(p, initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda p: optim.Adagrad(p, eps=-1e-10), "eps"),
    (lambda p: optim.Adamax(p, betas=(1.0, 0.999)), "betas"),
    (lambda p: optim.Adamax(p, weight_decay=-1), "weight_decay"),
    (lambda p: optim.NAdam(p, momentum_decay=-1e-3), "momentum_decay"),
    (lambda p: optim.NAdam(p, betas=(0.9, 1.0)), "betas"),
    (lambda p: optim.RAdam(p, lr=-1), "learning rate"),
    (lambda p: optim.RAdam(p, betas=(-0.1, 0.999)), "betas"),
    (lambda p: optim.Adadelta(p, rho=1.5), "rho"),
    (lambda p: optim.Adadelta(p, rho=-0.5), "rho"),
])
def test_bad_arguments_are_refused_as_pytorch_refuses_them(make, message):
    with pytest.raises(ValueError, match=message):
        make([Parameter(np.zeros(3))])


@pytest.mark.parametrize("make", [lambda p: optim.NAdam(p, decoupled_weight_decay=1),
                                  lambda p: optim.RAdam(p, decoupled_weight_decay="yes"),
                                  lambda p: optim.Adagrad(p, maximize=None)])
def test_flags_must_be_bools(make):
    with pytest.raises(TypeError):
        make([Parameter(np.zeros(3))])


def test_a_malformed_mu_product_is_refused_before_any_change():
    param = Parameter(np.ones(3))
    optimizer = optim.NAdam([param])
    param.grad = np.ones(3)
    optimizer.step()
    saved = optimizer.state_dict()
    before = {k: np.copy(v) for k, v in optimizer.state[0].items()}
    for bad in ("0.5", np.full(3, 0.5), float("nan")):
        saved["state"][0]["mu_product"] = bad
        with pytest.raises(ValueError, match="mu_product"):
            optimizer.load_state_dict(saved)
        for key, value in before.items():
            np.testing.assert_array_equal(optimizer.state[0][key], value)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["Adamax", "NAdam", "RAdam"])
def test_one_cycle_cycles_their_beta1_as_torchs_and_the_state_at_its_end_loads(kind):
    """OneCycleLR cycles beta1 of an optimizer with betas (as Adam's): 7 steps beside torch.optim's,
    and the state saved after the schedule's last step (its linear phase extrapolated: beta1 past 1,
    in PyTorch too) loads, as Adam's."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from cnn_gpu import lr_scheduler
    rng = np.random.default_rng(13)
    start = rng.standard_normal(6)
    param, tensor = Parameter(start.copy()), torch.tensor(start.copy(), requires_grad=True)
    pair = (getattr(optim, kind)([param]), getattr(torch.optim, kind)([tensor], foreach=False))
    settings = dict(max_lr=0.01, total_steps=7, base_momentum=0.85, max_momentum=0.999, anneal_strategy="linear")
    schedules = (lr_scheduler.OneCycleLR(pair[0], **settings), torch.optim.lr_scheduler.OneCycleLR(pair[1], **settings))
    for step in range(7):
        _steps(torch, pair, [param], [tensor], [rng.standard_normal(6)], "numpy")
        for schedule in schedules:
            schedule.step()
        assert pair[0].param_groups[0]["betas"] == pair[1].param_groups[0]["betas"]
        np.testing.assert_allclose(param.data, tensor.detach().numpy(), rtol=1e-12, err_msg=f"step {step + 1}")
    assert pair[0].param_groups[0]["betas"][0] > 1
    getattr(optim, kind)([Parameter(start.copy())]).load_state_dict(pair[0].state_dict())
