"""nn.ParameterList and nn.ParameterDict against torch 2.13: registration, state_dict keys and
round trips, named_parameters order, the list and dict methods, Module.to, an optimizer over
model.parameters(), and a replay's check of the arrays they hold."""
from collections import OrderedDict

import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import nn, optim, replay
from helpers import needs_emu

torch = pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(135)


def _arrays(rng, *shapes, dtype=np.float32):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


class _Heads(nn.Module):
    """A model of one's own over a ParameterList and a ParameterDict: y = x @ weights[-1].T + the
    dict's bias b."""

    def __init__(self, weights, biases):
        super().__init__()
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterDict(biases)

    def forward(self, x):
        self._saved = (x,)
        return F.linear(x, self.weights[-1].data, self.biases["b"].data, backend=self.backend)


def _torch_heads(weights, biases):
    module = torch.nn.Module()
    module.scale = torch.nn.Parameter(torch.ones(1))
    module.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(w.copy())) for w in weights])
    module.biases = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.from_numpy(v.copy()))
                                            for k, v in biases.items()})
    return module


def test_state_dict_keys_and_named_parameters_are_pytorchs(rng):
    weights, biases = _arrays(rng, (3, 4), (3, 4)), dict(zip("ba", _arrays(rng, (3,), (2,))))
    ours, theirs = _Heads(weights, biases), _torch_heads(weights, biases)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "scale", "weights.0", "weights.1", "biases.a", "biases.b"]   # a plain dict's keys sorted, as PyTorch
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    for (name, ours_value), theirs_value in zip(ours.state_dict().items(), theirs.state_dict().values()):
        np.testing.assert_array_equal(ours_value, theirs_value.numpy(), err_msg=name)
    ordered = nn.ParameterDict(OrderedDict(zip("ba", _arrays(rng, (3,), (2,)))))   # an OrderedDict keeps its order
    assert list(ordered.keys()) == list(torch.nn.ParameterDict(OrderedDict(
        (k, torch.zeros(1)) for k in "ba")).keys()) == ["b", "a"]


def test_state_dict_round_trip_and_to(rng):
    weights, biases = _arrays(rng, (3, 4), (3, 4)), {"b": _arrays(rng, (3,))[0]}
    model, other = _Heads(weights, biases), _Heads(_arrays(rng, (3, 4), (3, 4)), {"b": np.zeros(3, np.float32)})
    other.load_state_dict(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    theirs = _torch_heads(weights, biases)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in other.state_dict().items()})
    with pytest.raises(ValueError, match=r"weights\.1: shape"):
        other.load_state_dict({**model.state_dict(), "weights.1": np.zeros((4, 3), np.float32)})
    held = [other.weights[0], other.biases["b"]]
    other.double()
    assert [p.dtype for p in other.parameters()] == [np.float64] * 4
    assert other.weights[0] is held[0] and other.biases["b"] is held[1]   # the same Parameters, converted
    np.testing.assert_array_equal(other.weights[1].data, weights[1].astype(np.float64))


def test_list_methods_as_pytorch(rng):
    a, b, c, d = _arrays(rng, (2,), (3,), (4,), (5,))
    ours = nn.ParameterList([nn.Parameter(a)])
    theirs = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(a))])
    for container, wrap in ((ours, lambda x: x), (theirs, torch.from_numpy)):
        container.append(wrap(b))
        container.extend([wrap(c)])
        container += [wrap(d)]
        container[1] = wrap(d * 2)
    assert isinstance(ours[1], nn.Parameter) and ours[1].requires_grad   # an array becomes a Parameter
    assert len(ours) == len(theirs) == 4
    for mine, torch_parameter in zip(ours, theirs):
        np.testing.assert_array_equal(mine.data, torch_parameter.detach().numpy())
    assert ours[-1] is ours[3] and [p.shape for p in ours[1:3]] == [(5,), (4,)]
    assert isinstance(ours[1:3], nn.ParameterList) and ours[1:3][0] is ours[1]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()] == list("0123")
    with pytest.raises(IndexError, match="out of range"):
        ours[4]
    with pytest.raises(TypeError, match="iterable of parameters"):
        ours.extend(a)
    with pytest.raises(TypeError, match="a Parameter holds"):
        ours.append([1.0, 2.0])
    with pytest.raises(RuntimeError, match="has no forward"):
        ours(a)


def test_dict_methods_as_pytorch(rng):
    a, b, c = _arrays(rng, (2,), (3,), (4,))
    ours = nn.ParameterDict({"x": a, "y": b})
    theirs = torch.nn.ParameterDict({"x": torch.from_numpy(a), "y": torch.from_numpy(b)})
    for container, wrap in ((ours, lambda x: x), (theirs, torch.from_numpy)):
        container["z"] = wrap(c)
        container.update([("w", wrap(a))])
        container.setdefault("x", wrap(c))
        del container["y"]
    assert list(ours) == list(theirs) == ["x", "z", "w"]
    assert list(reversed(ours)) == list(reversed(theirs))
    assert "z" in ours and "y" not in ours and ours.get("y") is None
    np.testing.assert_array_equal(ours["x"].data, a)   # setdefault kept the one there
    assert ours.popitem()[0] == theirs.popitem()[0] == "w"
    assert ours.pop("x").shape == (2,) and list(ours.keys()) == ["z"]
    copied = ours.copy()
    assert copied["z"] is ours["z"] and list(ours.fromkeys(["p", "q"], nn.Parameter(a))) == ["p", "q"]
    ours.clear()
    assert len(ours) == 0 and list(ours.state_dict()) == []
    with pytest.raises(KeyError):
        del ours["nothing"]


def test_repr_is_pytorchs(rng):
    arrays = _arrays(rng, (3, 4), (2,))
    arrays[1] = arrays[1].astype(np.float64)
    theirs = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(x)) for x in arrays])
    assert repr(nn.ParameterList(arrays)) == repr(theirs).replace("torch.", "")
    assert repr(nn.ParameterList()) == repr(torch.nn.ParameterList())
    assert repr(nn.ParameterDict({"w": arrays[0]})) == (
        "ParameterDict(\n    (w): Parameter containing: [float32 of size 3x4]\n)")


def test_an_optimizer_trains_the_held_parameters_as_torch(rng):
    weights, biases = _arrays(rng, (3, 4), (3, 4)), {"b": _arrays(rng, (3,))[0]}
    ours, theirs = _Heads(weights, biases), _torch_heads(weights, biases)
    grads = _arrays(rng, (1,), (3, 4), (3, 4), (3,))
    for parameter, grad in zip(ours.parameters(), grads):
        parameter.grad = grad.copy()
    for parameter, grad in zip(theirs.parameters(), grads):
        parameter.grad = torch.from_numpy(grad.copy())
    step, torch_step = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(
        theirs.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        step.step()
        torch_step.step()
    for (name, mine), torch_parameter in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(mine.data, torch_parameter.detach().numpy(), rtol=1e-6, err_msg=name)


@needs_emu
def test_a_replay_checks_the_arrays_a_parameter_list_holds(rng):
    """The module that holds a ParameterList reads its parameters in its forward: a replay refuses
    once one is replaced (its recorded launches read the old array)."""
    model = _Heads(_arrays(rng, (3, 4), (3, 4)), {"b": _arrays(rng, (3,))[0]}).to("emu")
    x = _arrays(rng, (2, 4))[0]
    with replay.record() as step:
        model(x)
    step.replay()
    model.weights[1] = _arrays(rng, (3, 4))[0]
    with pytest.raises(RuntimeError, match="other parameter or buffer arrays"):
        step.replay()
