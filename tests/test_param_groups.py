"""Parameter groups as PyTorch's: per-group hyper-parameters stepped against torch.optim on numpy
and emu (the kernels' launches grouped per group), add_param_group, schedulers over several groups,
state_dict's groups (PyTorch's format) and their checks."""
import numpy as np
import pytest

from cnn_gpu import lr_scheduler, nn, optim
from cnn_gpu.backend import why_unavailable
from cnn_gpu.nn import Parameter

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (make torch)")
BACKENDS = ["numpy"] + ([] if why_unavailable("emu") else ["emu"])

# (kind, defaults, the second group's overrides)
CASES = [("SGD", dict(lr=0.1, momentum=0.9), dict(lr=0.01, weight_decay=0.1, nesterov=True)),
         ("SGD", dict(lr=0.05), dict(momentum=0.5)),
         ("Adam", dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.99), weight_decay=0.05)),
         ("AdamW", dict(lr=0.01, weight_decay=0.1), dict(weight_decay=0.0, eps=1e-6))]


def _groups(rng, dtype, backend):
    """Two groups' parameters (3 and 10: the second takes two launches on a kernel backend)."""
    make = lambda shape: Parameter(rng.standard_normal(shape).astype(dtype), backend=backend)  # noqa: E731
    return [make((4, 3)), make((5,)), make((2, 2))], [make((int(n),)) for n in rng.integers(1, 40, 10)]


def _torch_twin(params):
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in params]


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, defaults, overrides", CASES)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_groups_step_as_pytorchs(backend, kind, defaults, overrides, dtype, rtol):
    rng = np.random.default_rng(5)
    first, second = _groups(rng, dtype, backend)
    theirs_first, theirs_second = _torch_twin(first), _torch_twin(second)
    ours = getattr(optim, kind)([{"params": first}, {"params": second, **overrides}], **defaults)
    theirs = getattr(torch.optim, kind)([{"params": theirs_first}, {"params": theirs_second, **overrides}], **defaults)
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    for step in range(5):
        if step == 3:   # a group's value changed between steps
            ours.param_groups[1]["lr"] = theirs.param_groups[1]["lr"] = 0.02
        for p, q in zip(first + second, theirs_first + theirs_second):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, q.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        for p, q in zip(first + second, theirs_first + theirs_second):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=rtol, atol=rtol, err_msg=f"step {step}")


def test_each_group_takes_its_own_launches(monkeypatch):
    """Parameters of two groups never share a launch (one launch has one set of hyper-parameters)."""
    if why_unavailable("emu"):
        pytest.skip(why_unavailable("emu"))
    from cnn_gpu.bench.dry_run import launches_counted_not_run
    rng = np.random.default_rng(2)
    first, second = _groups(rng, np.float32, "emu")
    for p in first + second:
        p.grad = np.ones(p.shape, np.float32)
    with launches_counted_not_run() as launched:
        optim.SGD([{"params": first}, {"params": second, "lr": 0.5}], lr=0.1).step()
    assert launched == ["sgd_step"] * 3   # 3 parameters, then 8 + 2


@needs_torch
def test_add_param_group_and_schedules_over_groups_as_pytorchs():
    rng = np.random.default_rng(9)
    first, second = _groups(rng, np.float64, "numpy")
    theirs_first, theirs_second = _torch_twin(first), _torch_twin(second)
    ours = optim.SGD(first, lr=0.2, momentum=0.9)
    theirs = torch.optim.SGD(theirs_first, lr=0.2, momentum=0.9)
    ours.add_param_group({"params": second, "lr": 0.05})
    theirs.add_param_group({"params": theirs_second, "lr": 0.05})
    schedule, reference = lr_scheduler.StepLR(ours, 2, gamma=0.5), torch.optim.lr_scheduler.StepLR(theirs, 2, 0.5)
    for _ in range(6):
        for p, q in zip(first + second, theirs_first + theirs_second):
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        schedule.step()
        reference.step()
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        for p, q in zip(first + second, theirs_first + theirs_second):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-12)
    saved = ours.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [g["params"] for g in theirs.state_dict()["param_groups"]]


def test_a_state_dict_of_groups_resumes_bit_for_bit_and_checks_its_groups():
    rng = np.random.default_rng(4)
    first, second = _groups(rng, np.float32, "numpy")
    groups = lambda: [{"params": first}, {"params": second, "lr": 0.01, "betas": (0.5, 0.9)}]  # noqa: E731
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in first + second] for _ in range(6)]
    start = [p.data.copy() for p in first + second]

    def run(optimizer, steps):
        for step_grads in steps:
            for p, g in zip(first + second, step_grads):
                p.grad = g.copy()
            optimizer.step()

    straight = optim.Adam(groups(), lr=0.1)
    run(straight, grads)
    end = [p.data.copy() for p in first + second]
    for p, s in zip(first + second, start):
        p.data = s.copy()
    before = optim.Adam(groups(), lr=0.1)
    run(before, grads[:3])
    resumed = optim.Adam(groups(), lr=0.1)
    resumed.load_state_dict(before.state_dict())
    assert resumed.param_groups[1]["betas"] == (0.5, 0.9) and resumed.param_groups[1]["lr"] == 0.01
    run(resumed, grads[3:])
    for p, e in zip(first + second, end):
        np.testing.assert_array_equal(p.data, e)
    # another grouping of the same parameters: refused, nothing changed
    regrouped = optim.Adam([{"params": first + second[:1]}, {"params": second[1:]}], lr=0.1)
    with pytest.raises(ValueError, match=r"groups of \[3, 10\]; this optimizer has 13 parameters in groups of "
                                         r"\[4, 9\]"):
        regrouped.load_state_dict(resumed.state_dict())
    assert all(not s for s in regrouped.state) and regrouped.param_groups[0]["lr"] == 0.1
    # a state from before the groups' "params" were recorded (one group of all), its "state" a list
    single = optim.Adam(first + second, lr=0.1)
    run(single, grads[:1])
    old = single.state_dict()
    del old["param_groups"][0]["params"]
    old["state"] = [old["state"][i] for i in range(len(first + second))]
    optim.Adam(first + second, lr=0.1).load_state_dict(old)


@pytest.mark.parametrize("params, error, message", [
    ([{"params": []}], ValueError, "parameter group 0 has no parameters"),
    ([{"lr": 0.1}], TypeError, "a parameter group must be a dict with 'params'"),
    ([{"params": [Parameter(np.ones(2))]}, [Parameter(np.ones(2))]], TypeError, "a parameter group must be a dict"),
    ([{"params": [Parameter(np.ones(2))], "lr": -1.0}], ValueError, "lr"),
])
def test_bad_groups_are_refused(params, error, message):
    with pytest.raises(error, match=message):
        optim.SGD(params, lr=0.1)


def test_a_parameter_in_two_groups_is_refused_and_groups_are_the_given_dicts():
    shared, other = Parameter(np.ones(2)), Parameter(np.ones(3))
    with pytest.raises(ValueError, match="item 1 is item 0 again"):
        optim.SGD([{"params": [shared]}, {"params": [shared]}], lr=0.1)
    optimizer = optim.SGD(({"params": shared} for _ in range(1)), lr=0.1)   # a generator; one Parameter as params
    with pytest.raises(ValueError, match="item 1 is item 0 again"):
        optimizer.add_param_group({"params": [shared]})
    assert len(optimizer.param_groups) == 1 and len(optimizer.state) == 1
    # a generator as a group's params (Module.parameters()), read once: helper-101 saw it read twice,
    # the constructor refusing an empty group and add_param_group adding one
    model = nn.Linear(2, 3)
    assert len(optim.SGD([{"params": model.parameters()}], lr=0.1).param_groups[0]["params"]) == 2
    optimizer.add_param_group({"params": (p for p in [other]), "lr": 0.5})
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1] and len(optimizer.state) == 2
    # the group is the dict given, its defaults filled in (PyTorch's): a later edit of it counts
    given = {"params": [Parameter(np.ones(2))], "lr": 0.2}
    grouped = optim.SGD([given], lr=0.1, momentum=0.5)
    assert grouped.param_groups[0] is given and given["momentum"] == 0.5
    given["lr"] = 0.25
    given["params"][0].grad = np.ones(2)
    grouped.step()
    np.testing.assert_array_equal(given["params"][0].data, 0.75)


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_edited_in_place_keep_each_parameters_state_as_pytorchs(backend):
    """The state follows its parameter through a group's list reordered, a parameter moved to
    another group and one added in place (PyTorch keys state by parameter: a new one starts with
    none), with gradients written in place, so the steps between edits take the checked arrays'
    fast path."""
    rng = np.random.default_rng(12)
    first, second = _groups(rng, np.float64, backend)
    theirs_first, theirs_second = _torch_twin(first), _torch_twin(second)
    ours = optim.SGD([{"params": list(first)}, {"params": list(second), "lr": 0.02}], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([{"params": list(theirs_first)}, {"params": list(theirs_second), "lr": 0.02}],
                             lr=0.1, momentum=0.9)
    everything, everything_theirs = first + second, theirs_first + theirs_second
    for p, q in zip(everything, everything_theirs):
        p.grad, q.grad = np.zeros(p.shape), torch.zeros(p.shape, dtype=torch.float64)
    extra, extra_theirs = Parameter(rng.standard_normal(4), backend=backend), None
    extra_theirs = torch.tensor(extra.data.copy(), requires_grad=True)
    for step in range(9):
        if step == 3:
            for o in (ours, theirs):
                o.param_groups[0]["params"].reverse()
        if step == 5:   # the second group's first parameter moves to the first group
            for o in (ours, theirs):
                o.param_groups[0]["params"].append(o.param_groups[1]["params"].pop(0))
        if step == 7:
            ours.param_groups[1]["params"].append(extra)
            theirs.param_groups[1]["params"].append(extra_theirs)
            everything, everything_theirs = everything + [extra], everything_theirs + [extra_theirs]
            extra.grad, extra_theirs.grad = np.zeros(4), torch.zeros(4, dtype=torch.float64)
        for p, q in zip(everything, everything_theirs):
            g = rng.standard_normal(p.shape)
            p.grad[...] = g   # in place: the same arrays as the last step checked
            q.grad.copy_(torch.from_numpy(g))
        ours.step()
        theirs.step()
        for p, q in zip(everything, everything_theirs):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=f"step {step}")
    ours.param_groups[1]["params"].append(first[0])   # now in both groups
    with pytest.raises(ValueError, match="listed twice"):
        ours.step()
