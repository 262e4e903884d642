"""Frozen parameters (requires_grad False), ModuleList and ModuleDict, and state_dict's prefix,
keep_vars and destination: the parts of torch.nn that fine-tuning code and models of one's own use."""
import numpy as np
import pytest

from cnn_gpu import functional as F
from cnn_gpu import gradcheck, nn, optim
from cnn_gpu.functional import conv as conv_module


@pytest.fixture
def rng():
    return np.random.default_rng(20261204)


def _model(dtype=np.float32):
    nn.init.manual_seed(9)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.ConvTranspose2d(4, 3, 2, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 8 * 8, 5)).to(dtype=dtype)


def _step(model, x, dy, input_grad=True):
    model.zero_grad()
    model(x)
    return model.backward(dy, input_grad=input_grad)


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("frozen", [[0], [1], [3], [6], [0, 1, 3]])
def test_frozen_parameters_get_no_gradient_and_the_others_the_same_bits(backend, frozen, rng):
    """A frozen layer's parameters keep .grad None; every other gradient and dx are those of the
    model with nothing frozen, bit for bit."""
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    full = _model().to(backend)
    dx_full = _step(full, x, dy)
    model = _model().to(backend)
    for i in frozen:
        model[i].requires_grad_(False)
    dx = _step(model, x, dy)
    np.testing.assert_array_equal(dx, dx_full)
    for (name, p), q in zip(model.named_parameters(), full.parameters()):
        if int(name.split(".")[0]) in frozen:
            assert p.grad is None, name
        else:
            assert np.array_equal(p.grad, q.grad) and np.abs(q.grad).max() > 0, name


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_a_frozen_start_of_a_network_runs_no_backward(backend, rng, monkeypatch):
    """Frozen first layers, asked for no input gradient (as the training loop asks): neither their
    dgrad nor their wgrad runs (dy None reaches them), as PyTorch's autograd stops there; with one
    frozen layer inside the trained part, only its wgrad is skipped."""
    dgrad, wgrad = ("_gpu_dgrad", "_gpu_wgrad") if backend == "emu" else ("_input_grad", "_weight_grad")
    calls = []
    for name in (dgrad, wgrad):
        original = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    nn.init.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 5)).to(backend)
    assert _step(model, x, dy, input_grad=False) is None
    assert sorted(calls) == sorted([dgrad, dgrad, wgrad, wgrad, wgrad])
    model[0].requires_grad_(False)
    model[2].requires_grad_(False)
    calls.clear()
    _step(model, x, dy, input_grad=False)
    assert calls == [wgrad]          # the last convolution's: the first that trains needs no dx
    model[2].requires_grad_(True)
    model[4].requires_grad_(False)
    calls.clear()
    _step(model, x, dy, input_grad=False)
    assert calls == [dgrad, wgrad]   # conv 4 passes its dx on to conv 2, which trains
    assert model[4].weight.grad is None and model[2].weight.grad is not None


@pytest.mark.parametrize("op, args", [
    ("conv2d_backward", lambda r: (r.standard_normal((2, 4, 3, 3)), r.standard_normal((2, 3, 5, 5)),
                                   r.standard_normal((4, 3, 3, 3)))),
    ("conv_transpose2d_backward", lambda r: (r.standard_normal((2, 4, 7, 7)), r.standard_normal((2, 3, 5, 5)),
                                             r.standard_normal((3, 4, 3, 3)))),
    ("linear_backward", lambda r: (r.standard_normal((6, 4)), r.standard_normal((6, 3)), r.standard_normal((4, 3)))),
])
@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_weight_grad_false_skips_only_the_weight_gradient(op, args, backend, rng):
    dy, x, weight = args(rng)
    full = getattr(F, op)(dy, x, weight, backend=backend)
    dx, dweight, dbias = getattr(F, op)(dy, x, weight, weight_grad=False, backend=backend)
    assert dweight is None
    np.testing.assert_array_equal(dx, full[0])
    np.testing.assert_array_equal(dbias, full[2])
    with pytest.raises(TypeError, match="weight_grad must be True or False"):
        getattr(F, op)(dy, x, weight, weight_grad=1, backend=backend)


def test_optimizers_leave_frozen_parameters_alone(rng):
    """Weight decay and momentum would move a parameter whose gradient were zeros; a frozen one
    has none, so every optimizer passes it over (and still trains the rest)."""
    x = rng.standard_normal((4, 2, 4, 4))
    dy = rng.standard_normal((4, 5))
    for make in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                 lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.1), lambda ps: optim.AdamW(ps, lr=0.1)):
        model = _model(np.float64)
        model[0].requires_grad_(False)
        before = model.state_dict()
        opt = make(model.parameters())
        for _ in range(2):
            _step(model, x, dy, input_grad=False)
            opt.step()
        after = model.state_dict()
        for name in ("0.weight", "0.bias"):
            assert after[name].tobytes() == before[name].tobytes(), name
        assert not np.array_equal(after["6.weight"], before["6.weight"])


def test_gradcheck_of_a_model_with_a_frozen_layer_checks_the_trained_ones(rng):
    """check_model compares the parameters that get gradients: a frozen one (whose .grad stays
    None, where its true gradient is not zero) is left out, not failed."""
    model = _model(np.float64)
    model[0].requires_grad_(False)
    x = rng.standard_normal((3, 2, 4, 4))
    target = rng.integers(0, 5, 3)
    report = gradcheck.check_model(model, nn.CrossEntropyLoss(), x, target)
    assert report.max_rel_error < 1e-6, str(report)
    assert set(report.per_array) == {*(f"parameter {i}" for i in range(6)), "input", "joint"}


def test_requires_grad_flags(rng):
    layer = nn.Linear(3, 2)
    assert layer.weight.requires_grad and layer.requires_grad_(False) is layer
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert repr(layer.weight).endswith("requires_grad=False)")
    assert layer.weight.requires_grad_() is layer.weight and layer.weight.requires_grad
    assert not nn.Parameter(np.ones(2), False).requires_grad     # PyTorch's second positional argument
    assert [p.requires_grad for p in layer.parameters()] == [True, False]
    for bad in (1, None, "yes"):
        with pytest.raises(TypeError, match="requires_grad must be True or False"):
            layer.weight.requires_grad = bad
        with pytest.raises(TypeError, match="requires_grad must be True or False"):
            layer.requires_grad_(bad)


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_a_frozen_bias_alone(backend, rng, monkeypatch):
    """A frozen bias with a trained weight: the weight's gradient, and no bias gradient computed."""
    bgrad = "_gpu_bgrad" if backend == "emu" else "_bias_grad"
    original = getattr(conv_module, bgrad)
    calls = []
    monkeypatch.setattr(conv_module, bgrad, lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = nn.Conv2d(2, 3, 3).to(backend)
    layer.bias.requires_grad_(False)
    layer(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    layer.backward(rng.standard_normal((2, 3, 3, 3)).astype(np.float32))
    assert layer.bias.grad is None and layer.weight.grad.shape == (3, 2, 3, 3) and not calls


# --- ModuleList, ModuleDict ---------------------------------------------------------------------

class _Stack(nn.Module):
    """A model of one's own over a ModuleList, as PyTorch code writes one."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(list(self.layers)):
            dy = layer.backward(dy)
        return dy


def test_a_module_list_model_trains_as_the_same_sequential(rng):
    nn.init.manual_seed(4)
    mine = _Stack()
    nn.init.manual_seed(4)
    chain = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    assert [name for name, _ in mine.named_parameters()] == ["layers.0.weight", "layers.0.bias",
                                                            "layers.2.weight", "layers.2.bias"]
    x, dy = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(mine(x), chain(x))
    np.testing.assert_array_equal(mine.backward(dy), chain.backward(dy))
    for p, q in zip(mine.parameters(), chain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_module_list_indexing_renumbers_as_pytorch():
    relu, tanh, sigmoid, linear = nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Linear(2, 2)
    layers = nn.ModuleList([relu, tanh])
    layers.append(sigmoid)
    layers.insert(1, linear)
    assert list(layers) == [relu, linear, tanh, sigmoid] and len(layers) == 4
    assert layers[-1] is sigmoid and list(layers[1:3]) == [linear, tanh]
    assert list(layers.state_dict()) == ["1.weight", "1.bias"]
    del layers[0]
    assert list(layers.state_dict()) == ["0.weight", "0.bias"] and layers[0] is linear
    layers[1] = relu
    assert list(layers) == [linear, relu, sigmoid]
    layers += [tanh]
    assert list(layers) == [linear, relu, sigmoid, tanh]
    for bad in (4, -5):
        with pytest.raises(IndexError):
            layers[bad]
    with pytest.raises(TypeError, match="integers or slices"):
        layers["0"]
    with pytest.raises(TypeError, match="must be a Module"):
        layers.append(np.ones(2))
    for bad, error in ((np.ones(2), TypeError), (relu, ValueError)):   # refused before any renumbering
        with pytest.raises(error):
            layers.insert(0, bad)
        assert list(layers) == [linear, relu, sigmoid, tanh] and list(layers.state_dict()) == ["0.weight", "0.bias"]
    with pytest.raises(NotImplementedError):
        layers(np.ones(2))


def test_module_dict_as_pytorch():
    heads = nn.ModuleDict({"class": nn.Linear(4, 3), "box": nn.Linear(4, 2)})
    heads["extra"] = nn.ReLU()
    assert list(heads) == ["class", "box", "extra"] and "box" in heads and len(heads) == 3
    assert list(heads.state_dict()) == ["class.weight", "class.bias", "box.weight", "box.bias"]
    assert isinstance(heads.pop("extra"), nn.ReLU) and list(heads.keys()) == ["class", "box"]
    heads.update([("box", nn.Linear(4, 5))])
    assert heads["box"].out_features == 5 and list(heads) == ["class", "box"]
    del heads["class"]
    assert list(heads.state_dict()) == ["box.weight", "box.bias"]
    with pytest.raises(KeyError):
        del heads["class"]
    heads.clear()
    assert len(heads) == 0 and list(heads.parameters()) == []


# --- state_dict's options, get_submodule / get_parameter ----------------------------------------------

def test_state_dict_prefix_destination_and_keep_vars(rng):
    model = _model()
    plain = model.state_dict()
    into = {"step": 3}
    assert model.state_dict(destination=into, prefix="net.") is into
    assert list(into) == ["step"] + [f"net.{name}" for name in plain]
    assert all(np.array_equal(into[f"net.{name}"], value) for name, value in plain.items())
    live = model.state_dict(keep_vars=True)
    assert live["0.weight"] is model[0].weight and live["1.running_mean"] is model[1].running_mean
    assert plain["0.weight"] is not model[0].weight.data     # a copy without keep_vars
    other = _model()
    other[0].weight.data = rng.standard_normal(other[0].weight.shape).astype(np.float32)
    model.load_state_dict(other.state_dict(keep_vars=True))  # Parameters as values load too
    np.testing.assert_array_equal(model[0].weight.data, other[0].weight.data)
    assert model[0].weight.data is not other[0].weight.data
    with pytest.raises(TypeError, match="prefix must be a string"):
        model.state_dict(prefix=1)
    with pytest.raises(TypeError):
        model.state_dict(None)       # keyword-only, as PyTorch's


def test_get_submodule_and_get_parameter():
    model = nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1))), nn.Flatten())
    assert model.get_submodule("") is model
    assert model.get_submodule("0.block.0") is model[0].block[0]
    assert model.get_parameter("0.block.0.weight") is model[0].block[0].weight
    with pytest.raises(AttributeError, match="no submodule '1'"):
        model.get_submodule("0.block.1")
    with pytest.raises(AttributeError, match="no parameter 'gamma'"):
        model.get_parameter("0.block.0.gamma")
