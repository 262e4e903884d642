"""Optimizers: step by step against torch.optim (when importable) and against updates computed
by hand; state_dict round trip; argument checks."""

import numpy as np
import pytest

from cnn_gpu import optim
from cnn_gpu.backend import why_unavailable
from cnn_gpu.nn import Parameter
from helpers import needs_emu


def _params(rng, dtype=np.float64, shapes=((3, 4), (5,))):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _grads(rng, params, steps):
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


def _run(optimizer, params, grads):
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.copy()   # None: no gradient reached it this step
        optimizer.step()
        history.append([p.data.copy() for p in params])
    return history


SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.8, weight_decay=0.01),
               dict(lr=0.02, momentum=0.9, nesterov=True), dict(lr=0.02, momentum=0.5, weight_decay=0.1, nesterov=True),
               dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01), dict(lr=0.1, weight_decay=0.1, maximize=True),
               dict(lr=0.02, momentum=0.8, weight_decay=0.1, nesterov=True, maximize=True)]
ADAM_CONFIGS = [dict(), dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6),
                dict(lr=0.01, weight_decay=0.05), dict(lr=0.01, weight_decay=0.05, maximize=True),
                dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.05, amsgrad=True)]
ADAMW_CONFIGS = [dict(), dict(lr=0.05, weight_decay=0.2), dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0),
                 dict(lr=0.05, weight_decay=0.2, maximize=True), dict(lr=0.05, weight_decay=0.2, amsgrad=True)]
RMSPROP_CONFIGS = [dict(), dict(lr=0.01, momentum=0.9), dict(lr=0.01, centered=True),
                   dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.5, centered=True),
                   dict(lr=0.01, alpha=0.5, weight_decay=0.05, maximize=True)]


@pytest.mark.torch
@pytest.mark.parametrize("kind, config", [("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS]
                         + [("AdamW", c) for c in ADAMW_CONFIGS] + [("RMSprop", c) for c in RMSPROP_CONFIGS])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_matches_torch_step_by_step(kind, config, dtype, rtol):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(42)
    params = _params(rng, dtype)
    grads = _grads(rng, params, 6)
    torch_params = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    torch_opt = getattr(torch.optim, kind)(torch_params, **config)
    ours = _run(getattr(optim, kind)(params, **config), params, grads)
    for step, step_grads in enumerate(grads):
        for tp, g in zip(torch_params, step_grads):
            tp.grad = torch.from_numpy(g.copy())
        torch_opt.step()
        for ours_p, tp in zip(ours[step], torch_params):
            assert ours_p.dtype == dtype
            np.testing.assert_allclose(ours_p, tp.detach().numpy(), rtol=rtol, atol=rtol,
                                       err_msg=f"{kind}{config} step {step + 1}")


def test_sgd_by_hand():
    rng = np.random.default_rng(0)
    lr, mom, wd = 0.1, 0.9, 0.01
    p0 = rng.standard_normal(4)
    g1, g2 = rng.standard_normal(4), rng.standard_normal(4)
    param = Parameter(p0.copy())
    opt = optim.SGD([param], lr=lr, momentum=mom, weight_decay=wd)
    history = _run(opt, [param], [[g1], [g2]])
    d1 = g1 + wd * p0                      # first step: the buffer is the gradient itself
    p1 = p0 - lr * d1
    d2 = g2 + wd * p1
    p2 = p1 - lr * (mom * d1 + d2)
    np.testing.assert_allclose(history[0][0], p1, rtol=1e-14)
    np.testing.assert_allclose(history[1][0], p2, rtol=1e-14)
    # Nesterov: the step is g + momentum * buf
    param = Parameter(p0.copy())
    history = _run(optim.SGD([param], lr=lr, momentum=mom, nesterov=True), [param], [[g1], [g2]])
    p1 = p0 - lr * (g1 + mom * g1)
    buf = mom * g1 + g2
    np.testing.assert_allclose(history[1][0], p1 - lr * (g2 + mom * buf), rtol=1e-14)


def test_adam_by_hand():
    rng = np.random.default_rng(1)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p = p_initial = rng.standard_normal(5)
    param = Parameter(p.copy())
    grads = [[rng.standard_normal(5)] for _ in range(3)]
    history = _run(optim.Adam([param], lr=lr), [param], grads)
    m = v = np.zeros(5)
    for t, (g,) in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(history[t - 1][0], p, rtol=1e-12)
    # the first Adam step moves every coordinate by about lr (sign of the gradient)
    np.testing.assert_allclose(np.abs(history[0][0] - p_initial), lr, rtol=1e-4)


@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
                                          ("Adam", dict(lr=0.01, weight_decay=0.01)),
                                          ("AdamW", dict(lr=0.01, weight_decay=0.1)),
                                          ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
                                          ("Adagrad", dict(lr_decay=0.1, initial_accumulator_value=0.1)),
                                          ("Adamax", dict(weight_decay=0.01)),
                                          ("NAdam", dict(weight_decay=0.01, momentum_decay=0.05)),
                                          ("RAdam", dict(betas=(0.9, 0.9))),   # rectified from step 6
                                          ("Adadelta", dict(weight_decay=0.01))])
def test_state_dict_resume_is_bit_identical(kind, config):
    rng = np.random.default_rng(3)
    params = _params(rng, np.float32)
    grads = _grads(rng, params, 6)
    start = [p.data.copy() for p in params]
    straight = _run(getattr(optim, kind)(params, **config), params, grads)[-1]

    for p, s in zip(params, start):
        p.data = s.copy()
    first = getattr(optim, kind)(params, **config)
    _run(first, params, grads[:3])
    saved = first.state_dict()
    saved_copy = [{k: np.copy(v) for k, v in entry.items()} for entry in saved["state"].values()]
    resumed = getattr(optim, kind)(params, **config)
    resumed.load_state_dict(saved)
    resumed_end = _run(resumed, params, grads[3:])[-1]
    for a, b in zip(straight, resumed_end):
        np.testing.assert_array_equal(a, b)
    # the saved state is a copy: the resumed optimizer stepping on did not change it
    for entry, copy in zip(saved["state"].values(), saved_copy):
        for key in copy:
            np.testing.assert_array_equal(entry[key], copy[key])


def test_zero_grad_and_skipping_params_without_grad():
    rng = np.random.default_rng(5)
    a, b = _params(rng)
    before = b.data.copy()
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad = np.ones_like(a.data)
    opt.step()
    np.testing.assert_array_equal(b.data, before)   # no gradient: untouched, as in PyTorch
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_lr_change_through_param_groups():
    param = Parameter(np.zeros(3))
    opt = optim.SGD([param], lr=1.0)
    opt.param_groups[0]["lr"] = 0.25
    param.grad = np.array([1.0, 2.0, 4.0])
    opt.step()
    np.testing.assert_array_equal(param.data, [-0.25, -0.5, -1.0])


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-1), "learning rate"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "nesterov"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov .* dampening 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=-0.1), "dampening"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "betas"),
    (lambda p: optim.Adam(p, eps=-1), "eps"),
    (lambda p: optim.Adam([], lr=0.1), "empty parameter list"),
    (lambda p: optim.Adam(p, backend="gpu"), "unknown backend"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(_params(np.random.default_rng(0)))


def test_params_must_be_parameters():
    with pytest.raises(TypeError, match="Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)


def test_gradient_shape_mismatch():
    param = Parameter(np.zeros((2, 3)))
    param.grad = np.zeros(6)
    with pytest.raises(ValueError, match="gradient shape"):
        optim.Adam([param]).step()


@pytest.mark.parametrize("bad_grad, error", [(np.ones(6), ValueError), (np.ones((2, 3), np.float32), TypeError)])
def test_a_bad_gradient_leaves_every_parameter_unchanged(bad_grad, error):
    """The step is checked as a whole first: a good parameter before the bad one is not updated."""
    good, bad = Parameter(np.ones(4)), Parameter(np.ones((2, 3)))
    good.grad, bad.grad = np.full(4, 0.5), bad_grad
    optimizer = optim.SGD([good, bad], lr=0.1, momentum=0.9)
    with pytest.raises(error, match="gradient"):
        optimizer.step()
    np.testing.assert_array_equal(good.data, np.ones(4))
    assert optimizer.state == [{}, {}]


def _torch_group_run(torch, kind, config, arrays, other_lr, grads):
    """torch.optim's `kind` over tensors of `arrays` in two groups (the last parameter in the second,
    at `other_lr`), after the steps of `grads`."""
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    optimizer = getattr(torch.optim, kind)([{"params": tensors[:-1]}, {"params": tensors[-1:], "lr": other_lr}],
                                           **config)
    _torch_steps(torch, optimizer, tensors, grads)
    return optimizer, tensors


def _torch_steps(torch, optimizer, tensors, grads):
    for step_grads in grads:
        for t, g in zip(tensors, step_grads):
            t.grad = None if g is None else torch.from_numpy(g.copy())
        optimizer.step()


def _as_torch_state(torch, state_dict):
    """Optimizer.state_dict() as torch.optim's load_state_dict takes it: its arrays as tensors."""
    state = {i: {k: torch.from_numpy(np.array(v)) if hasattr(v, "shape") else v for k, v in s.items()}
             for i, s in state_dict["state"].items()}
    return {"state": state, "param_groups": [dict(group) for group in state_dict["param_groups"]]}


@pytest.mark.torch
@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
                                          ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
                                          ("Adam", dict(lr=0.01, weight_decay=0.01, maximize=True)),
                                          ("AdamW", dict(lr=0.01, weight_decay=0.1)),
                                          ("Adam", dict(lr=0.01, betas=(0.8, 0.9), amsgrad=True)),
                                          ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1))])
@pytest.mark.parametrize("saved_by", ["torch", "ours"])
def test_a_state_dict_resumes_in_torch_optim_and_the_other_way(kind, config, saved_by):
    """PyTorch's layout both ways: a torch.optim state (two groups, a parameter whose first gradient
    is still to come: no state under its index) resumes here, and ours resumes in torch.optim (the
    arrays made tensors), and the next steps match torch.optim's."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(21)
    start = [rng.standard_normal(shape) for shape in ((3, 4), (5,), (2, 2))]
    grads = _grads(rng, [Parameter(a) for a in start], 5)
    grads[0][1] = grads[1][1] = None
    if saved_by == "torch":
        saved_optimizer, tensors = _torch_group_run(torch, kind, config, start, 0.02, grads[:2])
        saved = saved_optimizer.state_dict()
        params = [Parameter(t.detach().numpy().copy()) for t in tensors]
        resumed = getattr(optim, kind)([{"params": params[:-1]}, {"params": params[-1:], "lr": 0.02}], **config)
        resumed.load_state_dict(saved)
        reference = (saved_optimizer, tensors)
    else:
        params = [Parameter(a.copy()) for a in start]
        ours = getattr(optim, kind)([{"params": params[:-1]}, {"params": params[-1:], "lr": 0.02}], **config)
        _run(ours, params, grads[:2])
        saved = ours.state_dict()
        tensors = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
        torch_optimizer = getattr(torch.optim, kind)([{"params": tensors[:-1]}, {"params": tensors[-1:], "lr": 0.5}],
                                                     **config)
        torch_optimizer.load_state_dict(_as_torch_state(torch, saved))
        resumed, reference = ours, (torch_optimizer, tensors)
    assert sorted(saved["state"]) == [0, 2]   # the second parameter has had no gradient yet
    ours_after = _run(resumed, params, grads[2:])
    for step, step_grads in enumerate(grads[2:]):
        _torch_steps(torch, reference[0], reference[1], [step_grads])
        for p, t in zip(ours_after[step], reference[1]):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{saved_by}'s state, step {step + 3}")


@pytest.mark.torch
@pytest.mark.parametrize("torch_kind, torch_config, kind, message", [
    ("Adam", dict(decoupled_weight_decay=True), "Adam", "decoupled_weight_decay=True; Adam implements"),
    ("AdamW", dict(), "Adam", "decoupled_weight_decay=True; Adam implements"),
    ("Adam", dict(), "AdamW", "decoupled_weight_decay=False; AdamW implements"),
    ("SGD", dict(momentum=0.9), "Adam", "another optimizer"),
    # the same state keys as RAdam's, other hyper-parameters
    ("Adam", dict(), "RAdam", "another optimizer"),
    ("NAdam", dict(), "RAdam", "another optimizer"),
    ("RMSprop", dict(), "Adadelta", "another optimizer")])
def test_a_torch_optim_state_of_another_rule_is_refused(torch_kind, torch_config, kind, message):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(22)
    tensor = torch.tensor(rng.standard_normal(4), requires_grad=True)
    torch_optimizer = getattr(torch.optim, torch_kind)([tensor], lr=0.01, **torch_config)
    _torch_steps(torch, torch_optimizer, [tensor], [[rng.standard_normal(4)]])
    ours = getattr(optim, kind)([Parameter(rng.standard_normal(4))], lr=0.01)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in ours.param_groups]
    with pytest.raises(ValueError, match=message):
        ours.load_state_dict(torch_optimizer.state_dict())
    assert ours.state == [{}] and [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == groups


@pytest.mark.parametrize("kind, config, added", [("SGD", dict(lr=0.1, momentum=0.9), ("dampening", "maximize")),
                                                 ("Adam", dict(lr=0.1), ("amsgrad", "maximize"))])
def test_a_state_saved_before_dampening_and_maximize_loads_with_their_defaults(kind, config, added):
    rng = np.random.default_rng(23)
    params = _params(rng)
    first = getattr(optim, kind)(params, **config)
    _run(first, params, _grads(rng, params, 1))
    saved = first.state_dict()
    for key in added:
        del saved["param_groups"][0][key]
    resumed = getattr(optim, kind)(params, **config, maximize=True, **({"amsgrad": True} if kind == "Adam" else {}))
    resumed.load_state_dict(saved)
    assert all(resumed.param_groups[0][key] is False for key in added if key != "dampening")
    assert resumed.state[0].keys() == first.state[0].keys()


def test_a_momentum_buffer_of_none_loads_as_no_state():
    """Older PyTorch versions saved SGD's momentum_buffer as None where there was none (momentum 0)."""
    rng = np.random.default_rng(26)
    opt = optim.SGD(_params(rng), lr=0.1)
    opt.load_state_dict({**opt.state_dict(), "state": {0: {"momentum_buffer": None}, 1: {"momentum_buffer": None}}})
    assert opt.state == [{}, {}]


def test_a_state_maps_to_parameters_through_the_groups_indices():
    """As PyTorch's: the k-th parameter gets the state under the k-th index of the saved groups'
    "params", whatever the indices' order."""
    rng = np.random.default_rng(25)
    params = _params(rng)
    first = optim.Adam(params, lr=0.1)
    _run(first, params, _grads(rng, params, 2))
    saved = first.state_dict()
    renumbered = {"param_groups": [{**saved["param_groups"][0], "params": [7, 3]}],
                  "state": {7: saved["state"][0], 3: saved["state"][1]}}
    resumed = optim.Adam(params, lr=0.1)
    resumed.load_state_dict(renumbered)
    for ours, theirs in zip(resumed.state, first.state):
        np.testing.assert_array_equal(ours["exp_avg"], theirs["exp_avg"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("state"), "a dict with 'state' and 'param_groups'"),
    (lambda s: s.update(param_groups={"params": [0, 1]}), "'param_groups' must be a list of dicts"),
    (lambda s: s["param_groups"].append(5), "'param_groups' must be a list of dicts"),
    (lambda s: s["state"][0].update(momentum_buffer=np.ones((3, 4), np.complex128)), "complex128, not real numbers"),
    (lambda s: s["param_groups"][0].update(decoupled_weight_decay=np.array([False, True])),
     r"decoupled_weight_decay=array\(\[False,  True\]\); Adam implements"),
])
def test_a_malformed_state_dict_is_refused_with_a_value_error_before_any_change(edit, message):
    rng = np.random.default_rng(28)
    params = _params(rng)
    opt = (optim.Adam(params) if "decoupled" in message else optim.SGD(params, lr=0.1, momentum=0.9))
    _run(opt, params, _grads(rng, params, 1))
    before = [{k: np.copy(v) for k, v in s.items()} for s in opt.state]
    saved = opt.state_dict()
    edit(saved)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    for ours, kept in zip(opt.state, before):
        assert ours.keys() == kept.keys() and all(np.array_equal(ours[k], kept[k]) for k in kept)


@pytest.mark.parametrize("states, message", [
    ({2: {}}, r"state 2 belongs to no parameter"), ({"0": {}}, "state '0' belongs to no parameter"),
    ((), "'state' must be a dict of parameter indices, got tuple"),
    ([{}], "1 parameter states in a list; the groups' 'params' must number them from 0")])
def test_a_state_of_indices_the_groups_do_not_hold_is_refused(states, message):
    rng = np.random.default_rng(24)
    opt = optim.SGD(_params(rng), lr=0.1, momentum=0.9)
    saved = {**opt.state_dict(), "state": states}
    if isinstance(states, list):
        saved["param_groups"][0]["params"] = [1, 0]
        saved["state"] = [{}]
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)


def test_load_state_dict_checks_shapes():
    rng = np.random.default_rng(6)
    params = _params(rng)
    opt = optim.Adam(params)
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    saved = opt.state_dict()
    other = optim.Adam(_params(rng, shapes=((4, 3), (5,))))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match="parameter states"):
        optim.Adam(_params(rng, shapes=((3, 4),))).load_state_dict(saved)
    with pytest.raises(ValueError, match="another optimizer"):
        optim.SGD(params, lr=0.1, momentum=0.9).load_state_dict(saved)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(step=-1), "step must be an int >= 0"),
    (lambda s: s.update(step=1.5), "step must be an int >= 0"),
    (lambda s: s.update(step=True), "step must be an int >= 0"),
    (lambda s: s.pop("exp_avg_sq"), r"holds \['exp_avg', 'step'\]; Adam keeps"),
    (lambda s: s.update(momentum_buffer=np.zeros(5)), "Adam keeps"),
    (lambda s: s.update(exp_avg=0.5), "exp_avg has shape"),
    (lambda s: s.update(master=np.zeros(5, np.float32)), "master weights, which belong to float16"),
])
def test_load_state_dict_refuses_a_state_a_step_could_not_use(edit, message):
    """A state whose step would fail (or divide by zero after counting itself) is refused at the
    load, and the optimizer keeps its own."""
    rng = np.random.default_rng(7)
    params = _params(rng, shapes=((5,),))
    opt = optim.Adam(params)
    params[0].grad = np.ones(5)
    opt.step()
    saved = opt.state_dict()
    edit(saved["state"][0])
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    assert opt.state[0]["step"] == 1
    opt.step()   # its own state still works
    optim.Adam(params).load_state_dict({**saved, "state": [{}]})   # nothing before a first step: fine


def test_a_first_adam_step_whose_launch_failed_leaves_a_state_that_loads(monkeypatch):
    """A first step whose update fails (a kernel fault, Ctrl-C) leaves the zero moments it made and
    step 0 (so that a retry finds no garbage): its state_dict loads into a fresh Adam, which then
    steps as one that never failed."""
    from cnn_gpu.gpu import optim as gpu_optim
    rng = np.random.default_rng(8)
    params = _params(rng, shapes=((5,), (2, 3)))
    grads = [rng.standard_normal(p.data.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    opt = optim.Adam(params, lr=0.1, backend="emu")
    real = gpu_optim.adam_steps
    monkeypatch.setattr(gpu_optim, "adam_steps", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    monkeypatch.setattr(gpu_optim, "adam_steps", real)
    assert [s["step"] for s in opt.state] == [0, 0]
    fresh_params = [Parameter(p.data.copy()) for p in params]
    resumed = optim.Adam(fresh_params, lr=0.1, backend="emu")
    resumed.load_state_dict(opt.state_dict())
    untouched = [Parameter(p.data.copy()) for p in params]
    reference = optim.Adam(untouched, lr=0.1, backend="emu")
    for p, q, g in zip(fresh_params, untouched, grads):
        p.grad, q.grad = g, g
    resumed.step()
    reference.step()
    for p, q in zip(fresh_params, untouched):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_parameter_listed_twice_is_refused_at_construction():
    """Its update would run twice; PyTorch 2.13 warns that this will be an error."""
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    for make in (optim.SGD, optim.Adam):
        with pytest.raises(ValueError, match="item 2 is item 0 again"):
            make([p, q, p], lr=0.1)


def test_kernel_backends_use_the_fused_step(monkeypatch):
    """Parameters moved to a kernel backend go through cnn_gpu.gpu.optim's multi-parameter updates
    with the arguments the NumPy update gets, and a launch memo where a step finds the arrays the
    last one checked (the dispatch is checked here; the kernels by their own tests)."""
    import sys
    import types
    calls = []
    fake = types.ModuleType("cnn_gpu.gpu.optim")
    memos = []
    fake.sgd_steps = lambda *args, memo: calls.append(("sgd",) + args) or memos.append(memo)
    fake.sgd_momentum_steps = lambda *args, memo: calls.append(("sgd momentum",) + args) or memos.append(memo)
    fake.adam_steps = lambda *args, memo: calls.append(("adam",) + args) or memos.append(memo)
    fake.UPDATE_SLOTS = 8
    monkeypatch.setitem(sys.modules, "cnn_gpu.gpu.optim", fake)
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "")
    param = Parameter(np.ones(3), backend="emu")
    param.grad = np.full(3, 2.0)
    optim.SGD([param], lr=0.5, maximize=True).step()
    optim.SGD([param], lr=0.5, momentum=0.9, dampening=0.25).step()
    optim.Adam([param], lr=0.1, maximize=True).step()
    optim.AdamW([param], lr=0.1, amsgrad=True).step()
    # per call: (kind, backend, [update per parameter], hyper-parameters...)
    (update,) = calls[0][2]   # (param, grad, master)
    assert calls[0][:2] == ("sgd", "emu") and calls[0][3:] == (0.5, 0.0, True)
    assert update[0] is param.data and update[2] is None
    (update,) = calls[1][2]   # (param, grad, buffer, first step, master)
    assert calls[1][:2] == ("sgd momentum", "emu") and calls[1][3:] == (0.5, 0.9, 0.0, False, 0.25, False)
    assert update[0] is param.data and update[3:] == (True, None)
    (update,) = calls[2][2]   # (param, grad, m, v, v_max, step, master)
    assert calls[2][:2] == ("adam", "emu") and calls[2][3:] == (0.1, 0.9, 0.999, 1e-8, 0.0, 0.0, True)
    assert update[0] is param.data and update[4:] == (None, 1, None)
    # AdamW: no L2 decay of the gradient, its decay decoupled (the kernel's decay = 1 - lr*weight_decay)
    assert calls[3][:2] == ("adam", "emu") and calls[3][3:] == (0.1, 0.9, 0.999, 1e-8, 0.0, 0.01, False)
    (update,) = calls[3][2]   # AMSGrad: its running maximum of v made at the first step, zero
    assert update[4].shape == (3,) and not update[4].any() and update[4] is not update[3]
    assert memos == [None] * 4   # a first step keeps no launch
    # the optimizer's own backend argument overrides the parameter's
    optim.SGD([param], lr=0.5, momentum=0.9, backend="numpy").step()
    assert len(calls) == 4
    np.testing.assert_array_equal(param.data, [0.0, 0.0, 0.0])
    again = optim.SGD([param], lr=0.5)
    again.step()
    again.step()   # on the arrays the first checked: through a launch memo
    from cnn_gpu.backend import LaunchMemo
    assert memos[-2] is None and isinstance(memos[-1], LaunchMemo)


@pytest.mark.parametrize("kind, config, kernel", [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True), "sgd_momentum_step"),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, maximize=True), "sgd_momentum_step"),
    ("SGD", dict(lr=0.05, weight_decay=0.01), "sgd_step"),
    ("SGD", dict(lr=0.05, weight_decay=0.01, maximize=True), "sgd_step"),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01), "adam_step"),
    ("Adam", dict(lr=0.01, weight_decay=0.01, maximize=True), "adam_step"),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), amsgrad=True), "adam_amsgrad_step"),
    ("AdamW", dict(lr=0.05, weight_decay=0.3, amsgrad=True, maximize=True), "adam_amsgrad_step"),
    ("AdamW", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.3), "adam_step"),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01), "rmsprop_step"),
    ("RMSprop", dict(lr=0.01, maximize=True), "rmsprop_step"),
    ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.1), "adagrad_step"),
    ("Adamax", dict(lr=0.01, weight_decay=0.01, maximize=True), "adamax_step"),
    ("NAdam", dict(lr=0.01, weight_decay=0.05, momentum_decay=0.01), "nadam_step"),
    ("NAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, maximize=True), "nadam_step"),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, decoupled_weight_decay=True), "radam_step"),
    ("Adadelta", dict(weight_decay=0.01, maximize=True), "adadelta_step")])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5), (np.float16, 0)])
def test_kernel_updates_take_eight_parameters_a_launch(kind, config, kernel, dtype, rtol):
    """19 parameters of mixed sizes on emu: 3 launches (8 + 8 + 3 slots) that give NumPy's steps,
    also where some parameters take their first step later (no gradient before: their momentum
    buffers start then, and Adam's step counts differ between the slots of one launch), and for
    float16 (FP32 master weights; within one float16 ulp of NumPy's float32 math)."""
    from cnn_gpu.backend import why_unavailable
    from cnn_gpu.bench.dry_run import launches_counted_not_run
    if why_unavailable("emu"):
        pytest.skip(f"emu backend unavailable: {why_unavailable('emu')}")
    rng = np.random.default_rng(19)
    shapes = [(int(n),) for n in rng.integers(1, 700, 19)]
    numpy_params = _params(rng, dtype, shapes)
    emu_params = [Parameter(p.data.copy(), backend="emu") for p in numpy_params]
    grads = _grads(rng, numpy_params, 3)
    for late in (2, 11, 17):   # no gradient at the first step
        grads[0][late] = None
    expected = _run(getattr(optim, kind)(numpy_params, **config), numpy_params, grads)
    got = _run(getattr(optim, kind)(emu_params, **config), emu_params, grads)
    for e_step, g_step in zip(expected, got):
        for e, g in zip(e_step, g_step):
            assert g.dtype == dtype
            if dtype == np.float16:
                assert np.abs(g.view(np.int16).astype(int) - e.view(np.int16).astype(int)).max() <= 1
            else:
                np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)
    for p, g in zip(emu_params, grads[0]):
        p.grad = g if g is not None else rng.standard_normal(p.shape).astype(dtype)
    with launches_counted_not_run() as launched:
        getattr(optim, kind)(emu_params, **config).step()
    assert launched == [f"{kernel}_master" if dtype == np.float16 else kernel] * 3


@needs_emu
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_kernel_updates_cover_every_element_of_every_slot_with_any_grid(dtype, monkeypatch):
    """The optimizer kernels walk each slot by for_each_element's rounds (common.cuh: 4 elements a
    thread, a block's 1024 a round): slots of sizes around a round in one launch update every
    element once as NumPy does, with the launchers' grid (the largest slot's rounds) and with
    grids of 1 and 2 blocks (a thread then takes several rounds of a slot, as past the 65536-block
    cap), bit for bit; unscale_grads finds an inf in the last element of the largest slot."""
    from cnn_gpu.gpu import optim as gpu_optim
    from helpers import assert_same_bits
    rng = np.random.default_rng(23)
    sizes = (1, 255, 1024, 3 * 1024 + 7, 1025, 2048)
    start = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(2)]

    def on_grid(blocks, run):
        with monkeypatch.context() as patch:
            if blocks:
                patch.setattr(gpu_optim, "elementwise_blocks", lambda count: blocks)
            return run()

    def steps(kind, config, be):
        params = [Parameter(p.copy(), backend=be) for p in start]
        return _run(getattr(optim, kind)(params, **config), params, grads)[-1]

    for kind, config in (("SGD", dict(lr=0.05, weight_decay=0.01)), ("SGD", dict(lr=0.05, momentum=0.9)),
                         ("Adam", dict(lr=0.01, weight_decay=0.01))):
        expected = steps(kind, config, "numpy")
        launched = on_grid(None, lambda: steps(kind, config, "emu"))
        for e, g in zip(expected, launched):
            if dtype == np.float16:   # FP32 master weights on both; one rounding apart at most
                assert np.abs(g.view(np.int16).astype(int) - e.view(np.int16).astype(int)).max() <= 1, kind
            else:
                np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=kind)
        for blocks in (1, 2):
            for a, b in zip(on_grid(blocks, lambda: steps(kind, config, "emu")), launched):
                assert_same_bits(a, b, f"{kind} {config} on {blocks} blocks")
    for blocks in (None, 1, 2):
        unscaled = [g.copy() for g in grads[0]]
        unscaled[3][-1] = np.inf
        found = np.zeros(1, np.int32)
        on_grid(blocks, lambda: gpu_optim.unscale_grads("emu", unscaled, 0.25, found))
        assert found[0] == 1, f"the inf in the largest slot's last element, {blocks} blocks"
        for u, g in zip(unscaled[:3] + unscaled[4:], grads[0][:3] + grads[0][4:]):
            assert_same_bits(u, g * dtype(0.25), f"unscaled on {blocks} blocks")
        assert_same_bits(unscaled[3][:-1], grads[0][3][:-1] * dtype(0.25), f"unscaled on {blocks} blocks")


@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                          ("Adam", dict(lr=0.01, weight_decay=0.01)),
                                          ("NAdam", dict(lr=0.01, momentum_decay=0.1)),
                                          ("Adagrad", dict(lr=0.01, lr_decay=0.5))])
def test_a_failed_launch_leaves_the_state_of_the_parameters_it_did_not_update(kind, config, monkeypatch):
    """10 parameters, two launches (8 + 2), the second failing: the first 8 took their step and
    their state says so; the last 2 did not, and the state made for them is no garbage (momentum
    buffers zero, Adam's counts unchanged), so stepping those two again gives NumPy's first step."""
    from cnn_gpu import backend as backends
    if backends.why_unavailable("emu"):
        pytest.skip(f"emu backend unavailable: {backends.why_unavailable('emu')}")
    rng = np.random.default_rng(21)
    numpy_params = _params(rng, np.float32, shapes=[(int(n),) for n in rng.integers(1, 50, 10)])
    emu_params = [Parameter(p.data.copy(), backend="emu") for p in numpy_params]
    grads = _grads(rng, numpy_params, 1)
    expected = _run(getattr(optim, kind)(numpy_params, **config), numpy_params, grads)
    optimizer = getattr(optim, kind)(emu_params, **config)
    real_launch = backends.launch
    launches = []

    def second_fails(be, family, dtype, kernel, grid, block, args):
        launches.append(kernel)
        if len(launches) == 2:
            raise RuntimeError("launch failed")
        return real_launch(be, family, dtype, kernel, grid, block, args)

    for p, g in zip(emu_params, grads[0]):
        p.grad = g.copy()
    monkeypatch.setattr(backends, "launch", second_fails)
    with pytest.raises(RuntimeError, match="launch failed"):
        optimizer.step()
    monkeypatch.setattr(backends, "launch", real_launch)
    for got, want in zip(emu_params[:8], expected[0][:8]):
        np.testing.assert_allclose(got.data, want, rtol=1e-6, atol=1e-7)
    if kind != "SGD":
        assert [state["step"] for state in optimizer.state] == [1] * 8 + [0] * 2
    for p in emu_params[:8]:
        p.grad = None   # stepped already: only the last two step again
    optimizer.step()
    for got, want in zip(emu_params, expected[0]):
        np.testing.assert_allclose(got.data, want, rtol=1e-6, atol=1e-7)


def test_the_multi_parameter_updates_take_an_empty_list():
    from cnn_gpu.bench.dry_run import launches_counted_not_run
    from cnn_gpu.gpu import optim as gpu_optim
    with launches_counted_not_run() as launched:
        gpu_optim.sgd_steps("emu", [], 0.1, 0.0)
        gpu_optim.sgd_momentum_steps("emu", [], 0.1, 0.9, 0.0, False)
        gpu_optim.adam_steps("emu", [], 0.1, 0.9, 0.999, 1e-8, 0.0)
        gpu_optim.unscale_grads("emu", [], 0.5, np.zeros(1, np.int32))
    assert launched == []


@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
                                          ("SGD", dict(lr=0.1)),
                                          ("Adam", dict(lr=0.01, weight_decay=0.01)),
                                          # 1 - beta2 rounded from double, not computed in FP32 (1e-3 off)
                                          ("Adam", dict(lr=0.01, betas=(0.5, 0.99999))),
                                          ("AdamW", dict(lr=0.05, weight_decay=0.3)),
                                          ("RMSprop", dict(lr=0.01, momentum=0.9)),
                                          ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, weight_decay=0.01)),
                                          ("Adagrad", dict(lr_decay=0.05, initial_accumulator_value=0.5)),
                                          ("Adamax", dict(betas=(0.5, 0.99999), eps=1e-3)),
                                          ("NAdam", dict(lr=0.01, betas=(0.5, 0.99999), momentum_decay=0.1)),
                                          ("RAdam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.01)),
                                          ("Adadelta", dict(lr=0.5, rho=0.5, eps=1e-3, weight_decay=0.01))])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_emu_kernels_match_numpy(kind, config, dtype, rtol):
    """The same steps on the "emu" backend (the fused CUDA kernels on the CPU) and on NumPy."""
    from cnn_gpu.backend import why_unavailable
    if why_unavailable("emu"):
        pytest.skip(f"emu backend unavailable: {why_unavailable('emu')}")
    rng = np.random.default_rng(8)
    numpy_params = _params(rng, dtype, shapes=((7, 5), (300,)))
    emu_params = [Parameter(p.data.copy(), backend="emu") for p in numpy_params]
    grads = _grads(rng, numpy_params, 4)
    expected = _run(getattr(optim, kind)(numpy_params, **config), numpy_params, grads)
    got = _run(getattr(optim, kind)(emu_params, **config), emu_params, grads)
    for step, (e_step, g_step) in enumerate(zip(expected, got)):
        for e, g in zip(e_step, g_step):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol, err_msg=f"{kind} step {step + 1}")


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emu", marks=pytest.mark.skipif(
    bool(why_unavailable("emu")), reason=f"emulator unavailable: {why_unavailable('emu')}"))])
def test_a_step_on_the_arrays_the_last_one_checked_skips_the_checks_and_any_change_brings_them_back(
        backend, monkeypatch):
    """A step whose parameters, gradients and state are the arrays the last step checked, bound the
    same way (a replayed step, a loop that keeps its gradients), skips the per-parameter checks and
    (emu) its launch's argument checks (the unused slots pass one kept array of no element); a
    new gradient array, state loaded, or a parameter made read-only is checked again (and a
    refusal still leaves every parameter unchanged)."""
    from cnn_gpu import launch_checks
    rng = np.random.default_rng(31)
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((4, 3), (5,), (2, 2, 2))]
    for p in params:
        p.backend = backend
    optimizer = optim.Adam(params, lr=0.01, backend=backend)
    reference = optim.Adam([Parameter(p.data.copy()) for p in params], lr=0.01, backend=backend)
    grads = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
    prepared = []
    real_prepare = optim.Optimizer._prepare
    monkeypatch.setattr(optim.Optimizer, "_prepare", lambda self, *a: prepared.append(1) or real_prepare(self, *a))
    launches_checked = []
    real_checked_args = launch_checks.checked_args
    monkeypatch.setattr(launch_checks, "checked_args", lambda be, family, *a: launches_checked.append(family)
                        or real_checked_args(be, family, *a))

    def step(opt, new_grads=False):
        for p, g in zip(opt.params, grads):
            if new_grads or p.grad is None:
                p.grad = g.copy()
            else:
                p.grad[...] = g
        prepared.clear()
        launches_checked.clear()
        opt.step()
        return len(prepared)

    steps = [(step(optimizer), len(launches_checked)) for _ in range(4)]
    # the second step: Adam's state is new; the third finds the arrays again, its launch checked and kept
    assert steps == ([(3, 0), (3, 0), (0, 0), (0, 0)] if backend == "numpy" else [(3, 1), (3, 1), (0, 1), (0, 0)])
    for _ in range(4):
        step(reference, new_grads=True)   # new gradient arrays: checked every step
    for mine, theirs in zip(params, reference.params):
        np.testing.assert_array_equal(mine.data, theirs.data)
    assert step(optimizer, new_grads=True) == 3
    optimizer.load_state_dict(optimizer.state_dict())
    assert step(optimizer) == 3 and step(optimizer) == 0
    kept = [p.data.copy() for p in params]
    params[2].data.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        step(optimizer)
    for p, before in zip(params, kept):
        np.testing.assert_array_equal(p.data, before)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_amsgrad_switched_on_between_steps_starts_its_maximum_then(backend):
    """Its maximum made at the first step with amsgrad on (zero, so that step takes v itself),
    kept when amsgrad goes off again, and not updated then."""
    rng = np.random.default_rng(30)
    p = Parameter(rng.standard_normal(9), backend=backend)
    plain = Parameter(p.data.copy(), backend=backend)
    opt, reference = optim.Adam([p], lr=0.01), optim.Adam([plain], lr=0.01)
    grads = [rng.standard_normal(9) for _ in range(4)]
    for step, g in enumerate(grads):
        opt.param_groups[0]["amsgrad"] = step in (1, 2)
        for q, o in ((p, opt), (plain, reference)):
            q.grad = g.copy()
            o.step()
        if step == 1:   # max(0, v) is v: the same step as plain Adam
            np.testing.assert_array_equal(p.data, plain.data)
            np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"], opt.state[0]["exp_avg_sq"])
        if step == 2:
            kept = opt.state[0]["max_exp_avg_sq"].copy()
    assert np.array_equal(opt.state[0]["max_exp_avg_sq"], kept) and not np.array_equal(kept, opt.state[0]["exp_avg_sq"])


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_amsgrad_keeps_a_nan_in_its_maximum_as_torch_maximum_does(dtype):
    """A NaN gradient makes v NaN; torch.maximum (and np.maximum) keep it in max_exp_avg_sq where
    CUDA's fmax would drop it: the kernel keeps it too."""
    rng = np.random.default_rng(29)
    start = rng.standard_normal(37).astype(dtype)
    grads = [rng.standard_normal(37).astype(dtype) for _ in range(2)]
    grads[0][[3, 30]] = np.nan
    states = []
    for backend in ("numpy", "emu"):
        p = Parameter(start.copy(), backend=backend)
        opt = optim.Adam([p], lr=0.01, amsgrad=True)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        states.append(opt.state[0]["max_exp_avg_sq"])
    assert np.isnan(states[0][[3, 30]]).all() and np.isfinite(np.delete(states[0], [3, 30])).all()
    np.testing.assert_allclose(states[1], states[0], rtol=1e-6)   # (NaN where NaN: equal_nan)


@needs_emu
def test_a_launch_memo_skips_the_checks_only_for_the_last_launchs_arrays_and_scalar_types(monkeypatch):
    """backend.LaunchMemo issues a launch again unchecked only where its arrays are the last
    launch's objects and its scalars of the same types, with the new values; another array, a
    scalar of another type, or a launch inside a recording is checked (and refused) as
    backend.launch checks it."""
    import gc
    import weakref
    from cnn_gpu import backend, launch_checks, replay
    checked = []
    real = launch_checks.checked_args
    monkeypatch.setattr(launch_checks, "checked_args", lambda *a: checked.append(1) or real(*a))
    rng = np.random.default_rng(33)
    dy, x = (rng.standard_normal(300).astype(np.float32) for _ in range(2))
    dx = np.empty_like(x)
    memo = backend.LaunchMemo()

    def relu_backward(*args):
        checked.clear()
        memo.launch("emu", "elementwise", np.float32, "relu_backward", (2,), (256,), args)
        return len(checked)

    assert relu_backward(dy, x, dx, np.int64(300)) == 1
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))
    dy[:] = rng.standard_normal(300)
    assert relu_backward(dy, x, dx, np.int64(200)) == 0   # the same arrays, a new count
    np.testing.assert_array_equal(dx[:200], np.where(x > 0, dy, 0)[:200])
    with pytest.raises(TypeError, match="np.int64"):
        relu_backward(dy, x, dx, 300)   # a Python int: checked, refused
    assert relu_backward(dy, x, dx, np.int64(300)) == 1
    with pytest.raises(TypeError, match="float32"):
        relu_backward(dy.astype(np.float64), x, dx, np.int64(300))   # another array: checked
    assert relu_backward(dy, x, dx, np.int64(300)) == 1
    with replay.record():
        assert relu_backward(dy, x, dx, np.int64(300)) == 1   # recorded as launch() records it
    assert relu_backward(dy, x, dx, np.int64(300)) == 0
    frozen = np.empty_like(dx)
    frozen.flags.writeable = False
    for out in (frozen, dy):   # another output of the same dtype: read-only, or the input itself
        with pytest.raises(ValueError, match="read-only|shares memory"):
            relu_backward(dy, x, out, np.int64(300))
        assert relu_backward(dy, x, dx, np.int64(300)) == 1
    strided = np.repeat(x, 2)[::2]   # read-only input copied to C order by the checks: never kept
    for _ in range(2):
        assert relu_backward(dy, strided, dx, np.int64(300)) == 1
        np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))
    assert relu_backward(dy, x, dx, np.int64(300)) == 1 and relu_backward(dy, x, dx, np.int64(300)) == 0
    kept = weakref.ref(dx)
    del dx
    gc.collect()
    assert kept() is None   # the memo holds its arrays weakly


@needs_emu
def test_kept_launches_hold_no_gradient_and_a_layout_changed_in_place_is_checked_again():
    """On a kernel backend a step's kept launches (backend.LaunchMemo) hold no array: zero_grad
    frees the gradients; and an array turned to F order in place (the same object, shape and
    dtype) brings the checks back: a parameter is refused, a gradient is read in C order."""
    import gc
    import weakref
    rng = np.random.default_rng(34)
    params = [Parameter(rng.standard_normal((2, 3)).astype(np.float32), backend="emu") for _ in range(2)]
    reference = [Parameter(p.data.copy(), backend="emu") for p in params]
    opt, ref_opt = optim.SGD(params, lr=0.1, momentum=0.9), optim.SGD(reference, lr=0.1, momentum=0.9)
    grads = [rng.standard_normal((2, 3)).astype(np.float32) for _ in params]
    for p, q, g in zip(params, reference, grads):
        p.grad, q.grad = g.copy(), g.copy()

    def reorder(a, order):   # the same array object, its memory now in `order`
        a.__setstate__((1, a.shape, a.dtype, order == "F", np.array(a, order=order).tobytes(order=order)))
        assert a.flags[f"{order}_CONTIGUOUS"] and a.ndim > 1 and not a.flags["CF".replace(order, "") + "_CONTIGUOUS"]

    for _ in range(3):
        opt.step()
        ref_opt.step()
    kept = [p.data.copy() for p in params]
    reorder(params[0].data, "F")
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.step()
    for p, before in zip(params, kept):
        np.testing.assert_array_equal(np.ascontiguousarray(p.data), before)
    reorder(params[0].data, "C")
    opt.step()
    ref_opt.step()
    reorder(params[1].grad, "F")   # read as it holds its values: in C order, by a copy
    ref_opt.params[1].grad = np.ascontiguousarray(params[1].grad)
    opt.step()
    ref_opt.step()
    for p, q in zip(params, reference):
        np.testing.assert_array_equal(p.data, q.data)
    reorder(params[1].grad, "C")
    for _ in range(3):   # C-ordered again: checked, then kept (its launch checked), then launched unchecked
        opt.step()
    old = [weakref.ref(p.grad) for p in params]
    opt.zero_grad()
    gc.collect()
    assert [ref() for ref in old] == [None, None]


def test_the_skipped_checks_come_back_for_a_new_default_backend_or_an_array_retyped_in_place():
    """The cached check holds for the default backend it resolved (a parameter without a backend
    of its own follows it) and each array's shape and dtype; zero_grad(set_to_none) drops what it
    held, so the old gradients are freed."""
    import gc
    import weakref
    from cnn_gpu import use_backend
    rng = np.random.default_rng(32)
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((3, 2), (4,))]
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    prepared = []
    real_prepare = optim.Optimizer._prepare

    def counted(self, *args):
        prepared.append(1)
        return real_prepare(self, *args)

    optim.Optimizer._prepare = counted
    try:
        for _ in range(3):
            optimizer.step()
        assert len(prepared) == 4   # steps 1 and 2 (the momentum buffers appear at step 1), not 3
        if not why_unavailable("emu"):
            with use_backend("emu"):
                optimizer.step()
            assert len(prepared) == 6
        optimizer.step()   # on numpy again: checked, then skipped
        optimizer.step()
        kept = [p.data.copy() for p in params]
        params[1].grad.dtype = np.int32   # same bytes, another dtype: refused, nothing changed
        with pytest.raises(TypeError, match="gradient dtype"):
            optimizer.step()
        for p, before in zip(params, kept):
            np.testing.assert_array_equal(p.data, before)
    finally:
        optim.Optimizer._prepare = real_prepare
    old = weakref.ref(params[0].grad)
    optimizer.zero_grad()
    gc.collect()
    assert old() is None
    for p in params:   # cached again, then unbound by the parameters themselves (Module.zero_grad)
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    optimizer.step()
    optimizer.step()
    old = weakref.ref(params[0].grad)
    for p in params:
        p.clear_grad()
    gc.collect()
    assert old() is None


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_kept_gradient_written_in_place_updates_with_its_new_values(backend, order, monkeypatch):
    """A loop that keeps its gradient arrays and writes new values into them each step, C-ordered
    (the skipped checks' case) or not (each step copies it to C order, which the kernels need: checked
    every step), updates exactly as one that binds new arrays each step."""
    if why_unavailable(backend):
        pytest.skip(f"{backend} backend unavailable: {why_unavailable(backend)}")
    rng = np.random.default_rng(33)
    shapes = ((4, 3), (3, 5))
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    fresh = [Parameter(p.data.copy()) for p in params]
    kept_opt = optim.SGD(params, lr=0.1, momentum=0.9, backend=backend)
    fresh_opt = optim.SGD(fresh, lr=0.1, momentum=0.9, backend=backend)
    for p in params:
        p.grad = np.zeros(p.data.shape, np.float32, order=order)
    prepared = []
    real_prepare = optim.Optimizer._prepare
    monkeypatch.setattr(optim.Optimizer, "_prepare", lambda self, *a: prepared.append(1) or real_prepare(self, *a))
    checked = []
    for _ in range(4):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]   # new values every step
        for p, q, g in zip(params, fresh, grads):
            p.grad[...] = g
            q.grad = g.copy()
        prepared.clear()
        kept_opt.step()
        checked.append(len(prepared))
        fresh_opt.step()
    for p, q in zip(params, fresh):
        np.testing.assert_array_equal(p.data, q.data)
    assert checked == ([2, 2, 0, 0] if order == "C" else [2, 2, 2, 2])


def test_step_takes_pytorchs_closure_and_returns_its_loss():
    from cnn_gpu import nn
    rng = np.random.default_rng(36)
    model = nn.Linear(3, 2, dtype=np.float64, rng=1)
    criterion = nn.MSELoss()
    x, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    twin = nn.Linear(3, 2, dtype=np.float64, rng=1)
    opt, twin_opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9), optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), target)
        model.backward(criterion.backward())
        return loss

    for _ in range(2):
        loss = opt.step(closure)
        twin_opt.zero_grad()
        expected = criterion(twin(x), target)
        twin.backward(criterion.backward())
        assert twin_opt.step() is None and loss == expected
    np.testing.assert_array_equal(model.weight.data, twin.weight.data)
    with pytest.raises(TypeError, match="closure must be callable"):
        opt.step(0.5)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_moment_of_a_small_beta1_takes_torchs_lerp_for_a_weight_of_a_half_or_more(backend, dtype):
    """torch.optim.Adam's exp_avg.lerp_(grad, 1 - beta1) computes m + w*(g - m) for w < 0.5 but
    g - (g - m)*(1 - w) from 0.5 on: with beta1 = 0 the moment is the gradient exactly, where
    m + 1*(g - m) cancels (a gradient far smaller than the last one came out 2^-12-ish, wrong in
    its first digits)."""
    p = Parameter(np.zeros(4, dtype), backend=backend)
    opt = optim.Adam([p], lr=0.01, betas=(0.0, 0.9))
    for g in (np.ones(4, dtype), np.array([1e-4, -3e-5, 7e-6, 0.0], dtype)):
        p.grad = g.copy()
        opt.step()
        np.testing.assert_array_equal(opt.state[0]["exp_avg"], g)
    # beta1 = 0.5: w = 1 - w = 0.5, the moment (g + m) / 2 computed as g - (g - m) * 0.5
    opt = optim.AdamW([p], lr=0.01, betas=(0.5, 0.9))
    m = np.array([1.0, 1.0, -1.0, 3.0], dtype)
    g = np.array([1e-7, 2.0, 1e-3, -2.9], dtype)
    for grad in (m * 2, g):
        p.grad = grad.copy()
        opt.step()
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], g - (g - m) * dtype(0.5))


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_with_beta1_0_matches_torch_when_the_gradient_shrinks(kind):
    beta1 = 0.0
    torch = pytest.importorskip("torch", reason="torch is not installed")
    start = np.array([0.5, -1.0, 2.0])
    grads = [np.array([3.0, -2.0, 1.0]), np.array([1e-6, 2e-7, -5e-8]), np.array([4e-9, -1e-9, 2e-10])]
    p, t = Parameter(start.copy()), torch.tensor(start.copy(), requires_grad=True)
    ours = getattr(optim, kind)([p], lr=0.1, betas=(beta1, 0.9))
    theirs = getattr(torch.optim, kind)([t], lr=0.1, betas=(beta1, 0.9))
    for g in grads:
        p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        np.testing.assert_allclose(ours.state[0]["exp_avg"], theirs.state[t]["exp_avg"].numpy(), rtol=1e-13, atol=0)
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-13, atol=0)


@pytest.mark.torch
@pytest.mark.parametrize("kind, config", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_a_torch_optim_state_of_named_parameters_loads_its_names_left_out(kind, config):
    """torch.optim built from model.named_parameters() saves each group's "param_names" (PyTorch
    2.6 on): which parameters the indices stand for, not a hyper-parameter. The state loads (the
    names dropped, as ours are unnamed) and steps as torch.optim's."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(40)
    model = torch.nn.Linear(3, 2).double()
    theirs = getattr(torch.optim, kind)(model.named_parameters(), **config)
    grads = [[rng.standard_normal(tuple(p.shape)) for p in model.parameters()] for _ in range(3)]
    _torch_steps(torch, theirs, list(model.parameters()), grads[:2])
    saved = theirs.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["weight", "bias"]
    params = [Parameter(p.detach().numpy().copy()) for p in model.parameters()]
    ours = getattr(optim, kind)(params, **config)
    ours.load_state_dict(saved)
    assert "param_names" not in ours.param_groups[0]
    _run(ours, params, grads[2:])
    _torch_steps(torch, theirs, list(model.parameters()), grads[2:])
    for p, t in zip(params, model.parameters()):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
