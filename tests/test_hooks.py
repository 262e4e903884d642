"""Module hooks (cnn_gpu.nn.hooks) against PyTorch 2.13's: forward pre-hooks and hooks (feature
extraction, replaced inputs and outputs), backward pre-hooks and full backward hooks (the gradients
they see and replace), their order and removal; and where this library must differ, refusing rather
than giving a wrong result: a backward of a forward whose input or output a hook replaced, a fused
layer hooked after its forward, a recorded step with hooks."""
import numpy as np
import pytest

from cnn_gpu import backend, nn, replay
from cnn_gpu.nn.containers import fused_activation_positions

torch = pytest.importorskip("torch")
# torch warns where a full backward hook fires with no input needing a gradient (grad_input None), as ours
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

EMU_REASON = backend.why_unavailable("emu")


@pytest.fixture
def rng():
    return np.random.default_rng(20261204)


def _models():
    """The same small CNN here and in torch (weights copied; float64 for exact comparisons)."""
    nn.init.manual_seed(3)
    ours = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 2 * 2, 5)).to(dtype=np.float64)
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 3, 3), torch.nn.Tanh(),
                                 torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 5)).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def _arrays(values):
    return [None if v is None else (v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for v in values]


def _assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(_arrays(ours), _arrays(theirs)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _run(model, x, dy, torch_side: bool, input_grad: bool):
    if torch_side:
        xt = torch.from_numpy(x).requires_grad_(input_grad)
        model(xt).backward(torch.from_numpy(dy))
        return xt.grad
    model(x)
    return model.backward(dy, input_grad=input_grad)


@pytest.mark.parametrize("input_grad", [True, False])
def test_forward_and_backward_hooks_see_what_pytorchs_see(rng, input_grad):
    """On every layer: the forward hook's inputs and output, the backward pre-hook's grad_output and
    the full backward hook's grad_input and grad_output equal torch's (grad_input None at the first
    layer where the input needs no gradient), in the same order; the model's results are unchanged."""
    x = rng.standard_normal((2, 2, 8, 8))
    dy = rng.standard_normal((2, 5))
    seen = {}
    for side, model in zip(("ours", "torch"), _models()):
        log = seen[side] = []
        for i, layer in enumerate(model):
            layer.register_forward_pre_hook(lambda m, args, i=i, log=log: log.append(("pre", i, args)))
            layer.register_forward_hook(lambda m, args, out, i=i, log=log: log.append(("fwd", i, (*args, out))))
            layer.register_full_backward_pre_hook(lambda m, go, i=i, log=log: log.append(("bpre", i, go)))
            layer.register_full_backward_hook(lambda m, gi, go, i=i, log=log: log.append(("bwd", i, (*gi, *go))))
        dx = _run(model, x, dy, side == "torch", input_grad)
        log.append(("dx", None, (dx,)))
    assert [entry[:2] for entry in seen["ours"]] == [entry[:2] for entry in seen["torch"]]
    for ours, theirs in zip(seen["ours"], seen["torch"]):
        _assert_close(ours[2], theirs[2])


def test_a_frozen_start_fires_no_backward_hook_as_in_pytorch(rng):
    """Where no gradient reaches a layer (frozen, and its input needs none), its backward hooks do not
    run, here as in torch; the layers after it see theirs."""
    x = rng.standard_normal((2, 2, 8, 8))
    dy = rng.standard_normal((2, 5))
    fired = {}
    for side, model in zip(("ours", "torch"), _models()):
        for layer in list(model)[:2]:
            layer.requires_grad_(False)
        log = fired[side] = []
        for i, layer in enumerate(model):
            layer.register_full_backward_hook(lambda m, gi, go, i=i, log=log: log.append(i))
        _run(model, x, dy, side == "torch", input_grad=False)
    assert fired["ours"] == fired["torch"] == [7, 6, 5, 4]


def test_backward_hooks_replacing_gradients_change_the_gradients_as_in_pytorch(rng):
    """A backward pre-hook scaling grad_output and a full backward hook clipping grad_input: every
    parameter gradient and dx as torch's with the same hooks."""
    x = rng.standard_normal((2, 2, 8, 8))
    dy = rng.standard_normal((2, 5))
    results = []
    for side, model in zip(("ours", "torch"), _models()):
        model[7].register_full_backward_pre_hook(lambda m, go: (go[0] * 3,))
        model[4].register_full_backward_hook(lambda m, gi, go: (gi[0].clip(-0.01, 0.01),))
        dx = _run(model, x, dy, side == "torch", input_grad=True)
        results.append([dx] + [p.grad for p in model.parameters()])
    _assert_close(*results)
    baseline = _models()[0]
    baseline(x)
    baseline.backward(dy)
    assert not np.allclose(baseline[0].weight.grad, results[0][1])   # the hooks did change the gradients


def test_forward_hooks_that_replace_input_or_output_act_as_in_pytorch_and_refuse_backward(rng):
    """A pre-hook's replacement is the layer's input and a forward hook's the model's next input, as in
    torch; the backward of such a forward refuses (it cannot differentiate the hook), and once the hook
    is removed a new forward trains again."""
    x = rng.standard_normal((2, 2, 8, 8))
    outputs, handles = [], []
    for model in _models():
        model.eval()
        handles.append(model[0].register_forward_pre_hook(lambda m, args: args[0] * 2))
        model[5].register_forward_hook(lambda m, args, out: out + 1)
        outputs.append(model(x if isinstance(model, nn.Module) else torch.from_numpy(x)))
    _assert_close([outputs[0]], [outputs[1]])
    ours = _models()[0]
    handle = ours[0].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    ours(x)
    with pytest.raises(RuntimeError, match="replaced this module's input"):
        ours.backward(np.ones((2, 5)))
    handle.remove()
    ours(x)
    assert ours.backward(np.ones((2, 5))).shape == x.shape
    ours[3].register_forward_hook(lambda m, args, out: out.copy())
    ours(x)
    with pytest.raises(RuntimeError, match="replaced this module's output"):
        ours.backward(np.ones((2, 5)))


def test_order_prepend_kwargs_always_call_and_removal_as_pytorch():
    """Hooks run in registration order, prepend first; with_kwargs hooks see the keywords and may
    replace them; always_call hooks run when forward raises (the exception goes on); a handle removes
    its hook once (a second remove does nothing), also as a context manager."""
    class Scaled(nn.Module):
        def forward(self, x, *, scale=1.0):
            if scale < 0:
                raise ValueError("negative scale")
            return x * scale

    class TorchScaled(torch.nn.Module):
        def forward(self, x, *, scale=1.0):
            if scale < 0:
                raise ValueError("negative scale")
            return x * scale

    logs = []
    for module, x in ((Scaled(), np.ones(2, np.float32)), (TorchScaled(), torch.ones(2))):
        log = []
        module.register_forward_hook(lambda m, a, o, log=log: log.append("a"))
        module.register_forward_hook(lambda m, a, o, log=log: log.append("b"), prepend=True)
        module.register_forward_pre_hook(lambda m, a, k, log=log: log.append(("kw", dict(k))) or (a, {"scale": 3.0}),
                                         with_kwargs=True)
        module.register_forward_hook(lambda m, a, k, o, log=log: log.append(("seen", k["scale"], float(o[0]))),
                                     with_kwargs=True)
        always = module.register_forward_hook(lambda m, a, o, log=log: log.append(("always", o)), always_call=True)
        module(x, scale=2.0)
        negative = module.register_forward_pre_hook(lambda m, a, k: (a, {"scale": -1.0}), with_kwargs=True)
        with pytest.raises(ValueError, match="negative scale"):
            module(x, scale=2.0)
        negative.remove()
        always.remove()
        always.remove()
        with module.register_forward_hook(lambda m, a, o, log=log: log.append("scoped")):
            module(x)
        module(x)
        logs.append([entry if not isinstance(entry, tuple) or entry[0] != "always" else ("always", _arrays([entry[1]]))
                     for entry in log])
    assert str(logs[0]) == str(logs[1])
    assert logs[0][:4] == [("kw", {"scale": 2.0}), "b", "a", ("seen", 3.0, 3.0)]
    assert logs[0].count("scoped") == 1 and logs[0][-1] == ("seen", 3.0, 3.0)


def test_a_hooked_relu_runs_unfused_and_a_hook_added_after_the_forward_is_refused(rng):
    """Sequential runs a ReLU after a batch norm inside the batch norm; hooked, either one runs on
    its own so the hook sees the ReLU's own input and output (as torch's). A hook registered on a
    fused pair after the forward would not run in its backward: refused."""
    x = rng.standard_normal((2, 2, 8, 8))
    ours, theirs = _models()
    assert fused_activation_positions(list(ours)) == {2}
    seen = []
    for model, given in ((ours, x), (theirs, torch.from_numpy(x))):
        model[2].register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
        model(given)
    assert ours._fused == frozenset()
    _assert_close(seen[0], seen[1])
    fresh = _models()[0]
    fresh(x)
    assert fresh._fused == {2}
    fresh[1].register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(RuntimeError, match="register hooks before the forward"):
        fresh.backward(np.ones((2, 5)))


def test_a_subclass_backward_calling_its_base_runs_the_hooks_once(rng):
    """A layer subclass whose backward calls super().backward (two wrapped backwards on one module)
    runs its backward hooks once, around the outer call."""
    class Doubled(nn.Linear):
        def backward(self, dy, input_grad=True):
            return super().backward(dy * 2, input_grad)

    layer = Doubled(3, 2)
    calls = []
    layer.register_full_backward_hook(lambda m, gi, go: calls.append(go[0]))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layer(x)
    dy = rng.standard_normal((4, 2)).astype(np.float32)
    layer.backward(dy)
    assert len(calls) == 1 and calls[0] is dy


def test_bad_hooks_and_bad_returns_are_refused():
    layer = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="callable"):
        layer.register_forward_hook(None)
    with pytest.raises(TypeError, match="prepend"):
        layer.register_full_backward_hook(lambda *a: None, prepend=1)
    layer.register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
    x = np.ones((1, 3), np.float32)
    layer(x)
    with pytest.raises(RuntimeError, match="got 2, but expected 1"):
        layer.backward(np.ones((1, 2), np.float32))
    other = nn.Linear(3, 2)
    other.register_full_backward_pre_hook(lambda m, go: go[0])
    other(x)
    with pytest.raises(TypeError, match="tuple of gradients"):
        other.backward(np.ones((1, 2), np.float32))
    kw = nn.Linear(3, 2)
    kw.register_forward_pre_hook(lambda m, a, k: a, with_kwargs=True)
    with pytest.raises(RuntimeError, match="new_args, new_kwargs"):
        kw(x)


@pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
def test_a_recording_refuses_hooks_and_a_replay_refuses_hooks_added_since(rng):
    """A replay runs launches, not Python: recording a hooked call is refused; hooks registered after a
    recording stop its replay before any work."""
    nn.init.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to("emu")
    x = rng.standard_normal((2, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 2)).astype(np.float32)
    handle = model[1].register_forward_hook(lambda m, a, o: None)
    with pytest.raises(RuntimeError, match="hooks"):
        with replay.record(x):
            model.eval()(x)   # (in eval: a training forward wants its backward)
    handle.remove()
    model.train()
    with replay.record(x) as step:
        model(x)
        model.backward(dy)
    model[2].register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(RuntimeError, match="has hooks now"):
        step.replay(x)


def test_a_hooked_residual_gets_its_gradient_summed_and_the_model_the_same_gradients(rng):
    """Sequential hands a Residual's input gradient to the residual ReLU before it as two summands;
    hooked, the Residual's full backward hook sees its one gradient, the sum, and dx and every
    parameter gradient are those of the model without hooks."""
    def model():
        nn.init.manual_seed(5)
        return nn.Sequential(nn.Residual(nn.Conv2d(2, 2, 3, padding=1)), nn.ReLU(),
                             nn.Residual(nn.Conv2d(2, 2, 3, padding=1)), nn.ReLU()).to(dtype=np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal((2, 2, 5, 5))
    plain, hooked = model(), model()
    seen = []
    hooked[2].register_full_backward_hook(lambda m, gi, go: seen.append(gi[0]))
    results = []
    for m in (plain, hooked):
        m(x)
        results.append([m.backward(dy)] + [p.grad for p in m.parameters()])
    assert len(seen) == 1 and isinstance(seen[0], np.ndarray) and seen[0].shape == x.shape
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_raising_pre_hook_still_runs_the_always_call_hooks_as_pytorch():
    """A forward pre-hook that raises: the always_call forward hooks run (output None), one of them
    raising too is reported as a warning and dropped, and the pre-hook's error goes on, in torch as
    here."""
    seen = []
    for module, x in ((nn.Linear(2, 2), np.ones((1, 2), np.float32)), (torch.nn.Linear(2, 2), torch.ones(1, 2))):
        log = []
        module.register_forward_pre_hook(lambda m, a: 1 / 0)
        module.register_forward_hook(lambda m, a, o, log=log: log.append(("always", o)), always_call=True)
        module.register_forward_hook(lambda m, a, o: log.append("plain"))

        def failing(m, a, o):
            raise KeyError("in the hook")
        module.register_forward_hook(failing, always_call=True)
        with pytest.warns(UserWarning, match="silenced as another error was raised in forward: 'in the hook'"):
            with pytest.raises(ZeroDivisionError):
                module(x)
        seen.append(log)
    assert seen[0] == seen[1] == [("always", None)]
