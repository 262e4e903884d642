"""The lazy modules against torch 2.13: the size inferred at the first forward, the regular class
after it, initial values as the regular constructor's (drawn then, not at construction),
uninitialised parameters before it (their shape refused, Module.to, optimizers, state_dict and
load_state_dict), refusals that leave the module lazy, and a model of lazy layers trained as
PyTorch's."""
import numpy as np
import pytest

from cnn_gpu import nn, no_grad, optim
from helpers import assert_close

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (class name, constructor arguments, input shape, the inferred attribute)
LAZY = [("LazyLinear", (3,), {}, (2, 5), "in_features"),
        ("LazyConv1d", (4, 3), {}, (2, 3, 7), "in_channels"),
        ("LazyConv2d", (4, 3), {"padding": 1}, (2, 3, 5, 5), "in_channels"),
        ("LazyConv2d", (4, 3), {"groups": 2}, (6, 5, 5), "in_channels"),   # unbatched
        ("LazyConvTranspose1d", (4, 3), {"stride": 2, "output_padding": 1}, (2, 3, 5), "in_channels"),
        ("LazyConvTranspose2d", (4, 3), {"stride": 2}, (2, 3, 4, 4), "in_channels"),
        ("LazyConv3d", (4, (2, 3, 2)), {"padding": 1}, (2, 3, 3, 4, 4), "in_channels"),
        ("LazyConv3d", (4, 3), {"groups": 2, "padding": "same"}, (6, 3, 4, 4), "in_channels"),   # unbatched
        ("LazyConvTranspose3d", (4, 3), {"stride": 2, "output_padding": 1}, (2, 3, 2, 3, 2), "in_channels"),
        ("LazyConvTranspose3d", (6, 2), {"groups": 3, "dilation": 2}, (6, 2, 3, 2), "in_channels"),   # unbatched
        ("LazyBatchNorm1d", (), {}, (4, 3), "num_features"),
        ("LazyBatchNorm2d", (), {"momentum": 0.2}, (2, 3, 4, 4), "num_features"),
        ("LazyInstanceNorm1d", (), {}, (2, 3, 7), "num_features"),
        ("LazyInstanceNorm2d", (), {"affine": False, "track_running_stats": False}, (2, 3, 4, 4), "num_features")]


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("name, args, kwargs, shape, inferred", LAZY)
def test_the_first_forward_infers_the_size_and_becomes_the_regular_module(name, args, kwargs, shape, inferred):
    ours = getattr(nn, name)(*args, dtype=np.float64, **kwargs)
    theirs = getattr(torch.nn, name)(*args, dtype=torch.float64, **kwargs)
    assert getattr(ours, inferred) == getattr(theirs, inferred) == 0
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = _input(shape)
    theirs(torch.from_numpy(x))
    with no_grad():   # a dry run, as PyTorch suggests: the backward below pairs with the next forward
        y = ours(x)
    assert type(ours) is getattr(nn, type(theirs).__name__) and type(ours).__name__ == name.replace("Lazy", "")
    if ours.weight is None and getattr(ours, "running_mean", None) is None:
        # nothing to materialise: PyTorch's module keeps num_features 0; ours takes the input's
        assert (getattr(ours, inferred), getattr(theirs, inferred)) == (shape[1], 0)
    else:
        assert getattr(ours, inferred) == getattr(theirs, inferred)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    # from here it is the regular module: PyTorch's values on PyTorch's state
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = _input(yt.shape, 1)
    yt.backward(torch.from_numpy(dy))
    assert_close(ours(x), yt.detach().numpy(), np.float64, "y")
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, "dx")
    assert y.shape == tuple(yt.shape)
    for key, value in theirs.state_dict().items():   # running statistics updated alike
        assert_close(np.asarray(ours.state_dict()[key], np.float64), value.numpy().astype(np.float64), np.float64,
                     key)


def test_the_reprs_are_pytorchs_before_and_after():
    ours, theirs = nn.LazyLinear(3), torch.nn.LazyLinear(3)
    assert repr(ours) == repr(theirs) == "LazyLinear(in_features=0, out_features=3, bias=True)"
    ours(np.ones((1, 5), np.float32))
    theirs(torch.ones(1, 5))
    assert repr(ours) == repr(theirs)
    assert repr(nn.LazyBatchNorm2d()).startswith("LazyBatchNorm2d(0, eps=1e-05")


def test_initial_values_are_drawn_at_the_first_forward_as_the_regular_constructor_draws_them():
    nn.init.manual_seed(7)
    lazy = nn.LazyConv2d(4, 3)   # draws nothing: its forward draws the numbers a Conv2d made now would
    lazy(np.ones((1, 2, 5, 5), np.float32))
    nn.init.manual_seed(7)
    regular = nn.Conv2d(2, 4, 3)
    for a, b in zip(lazy.parameters(), regular.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    seeded = nn.LazyLinear(3, rng=11)
    seeded(np.ones((1, 5), np.float32))
    np.testing.assert_array_equal(seeded.weight.data, nn.Linear(5, 3, rng=11).weight.data)


def test_uninitialized_parameters_before_the_first_forward():
    model = nn.LazyLinear(3)
    assert isinstance(model.weight, nn.UninitializedParameter) and repr(model.weight) == "<UninitializedParameter>"
    assert model.has_uninitialized_params()
    for question in (lambda: model.weight.shape, lambda: model.weight.numel(), lambda: model.bias.size()):
        with pytest.raises(RuntimeError, match="Can't access the shape of an uninitialized parameter"):
            question()
    model.to("emu" if "emu" in __import__("cnn_gpu").backend.available_backends() else "numpy").double()
    weight = model.weight
    model(np.ones((2, 6)))
    assert model.weight is weight and type(weight) is nn.Parameter   # the same object, materialised in place
    assert weight.dtype == np.float64 and weight.shape == (3, 6) and type(model) is nn.Linear


def test_an_optimizer_built_before_the_first_forward_trains_as_one_built_after():
    nn.init.manual_seed(3)
    lazy = nn.LazyLinear(3)
    early = optim.SGD(lazy.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    with no_grad():
        lazy(x)
    regular = nn.Linear(5, 3)
    regular.load_state_dict(lazy.state_dict())
    late = optim.SGD(regular.parameters(), lr=0.1, momentum=0.9)
    for model, opt in ((lazy, early), (regular, late)):
        for _ in range(3):
            y = model(x)
            opt.zero_grad()
            model.backward(np.cos(y))
            opt.step()
    for a, b in zip(lazy.parameters(), regular.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    assert not (lazy.weight.data == nn.Linear(5, 3, rng=0).weight.data).all()


def test_adagrad_which_makes_its_state_when_built_refuses_placeholders_as_pytorchs_does():
    """Adagrad fills its "sum" when built, from the parameter's shape: a placeholder has none (its
    empty array would make a state no step could use). PyTorch refuses it too (ValueError)."""
    with pytest.raises(ValueError):
        torch.optim.Adagrad(torch.nn.LazyLinear(3).parameters())
    lazy = nn.LazyLinear(3)
    with pytest.raises(ValueError, match="first forward"):
        optim.Adagrad(lazy.parameters())
    lazy(np.ones((2, 5), np.float32))
    optim.Adagrad(lazy.parameters()).step()   # once materialised, as any parameter


def test_load_state_dict_gives_the_placeholders_the_states_shapes():
    source = nn.BatchNorm2d(3)
    source.running_mean[...] = [1.0, 2.0, 3.0]
    lazy = nn.LazyBatchNorm2d()
    theirs = torch.nn.LazyBatchNorm2d()
    lazy.load_state_dict(source.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in source.state_dict().items()})
    assert type(lazy).__name__ == type(theirs).__name__ == "LazyBatchNorm2d"   # lazy until its forward
    assert not lazy.has_uninitialized_params() and not theirs.has_uninitialized_params()
    lazy.eval()
    lazy(np.ones((2, 3, 2, 2), np.float32))
    assert type(lazy) is nn.BatchNorm2d and lazy.num_features == 3
    np.testing.assert_array_equal(lazy.running_mean, [1.0, 2.0, 3.0])   # the loaded values kept
    loaded = nn.LazyLinear(3)
    loaded.load_state_dict(nn.Linear(4, 3).state_dict())
    with pytest.raises(ValueError, match=r"loaded with shape \(3, 4\), but the input makes it \(3, 5\)"):
        loaded(np.ones((1, 5), np.float32))
    assert type(loaded) is nn.LazyLinear


def test_refusals_leave_the_module_lazy():
    conv = nn.LazyConv2d(4, 3)
    with pytest.raises(RuntimeError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to LazyConv2d"):
        conv(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="in_channels"):   # 3 channels, groups 2: the regular constructor's check
        nn.LazyConv2d(4, 3, groups=2)(np.ones((1, 3, 5, 5), np.float32))
    assert type(conv) is nn.LazyConv2d and conv.has_uninitialized_params()
    with pytest.raises(TypeError):
        nn.LazyLinear()
    with pytest.raises(ValueError, match="out_features"):
        nn.LazyLinear(-1)


def test_a_loaded_array_the_input_does_not_fit_is_refused_before_any_change_or_draw():
    """A loaded buffer is checked as a loaded parameter is (a BatchNorm without affine has only
    buffers), before the module changes class and before the global generator draws."""
    norm = nn.LazyBatchNorm2d(affine=False)
    norm.load_state_dict(nn.BatchNorm2d(3, affine=False).state_dict())
    with pytest.raises(ValueError, match="buffer 'running_mean' was loaded with shape"):
        norm(np.ones((2, 5, 4, 4), np.float32))
    assert type(norm) is nn.LazyBatchNorm2d and norm.running_mean.shape == (3,)
    linear = nn.LazyLinear(3)
    linear.load_state_dict({"weight": np.ones((3, 4), np.float32)}, strict=False)   # the bias left to draw
    nn.init.manual_seed(5)
    with pytest.raises(ValueError, match="parameter 'weight' was loaded with shape"):
        linear(np.ones((2, 6), np.float32))
    after_refusal = nn.Linear(2, 2).weight.data
    nn.init.manual_seed(5)
    np.testing.assert_array_equal(after_refusal, nn.Linear(2, 2).weight.data)


def test_a_model_of_lazy_layers_trains_as_pytorchs():
    ours = nn.Sequential(nn.LazyConv2d(4, 3, padding=1, dtype=np.float64), nn.LazyBatchNorm2d(dtype=np.float64),
                         nn.ReLU(), nn.Flatten(), nn.LazyLinear(2, dtype=np.float64))
    theirs = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3, padding=1, dtype=torch.float64),
                                 torch.nn.LazyBatchNorm2d(dtype=torch.float64), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.LazyLinear(2, dtype=torch.float64))
    x = _input((2, 3, 4, 4))
    with no_grad():
        ours(x)
    theirs(torch.from_numpy(x))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = _input(tuple(yt.shape), 2)
    yt.backward(torch.from_numpy(dy))
    assert_close(ours(x), yt.detach().numpy(), np.float64, "y")
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, "dx")
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p.grad, q.grad.numpy(), np.float64, name)


def test_an_unbatched_instance_norm_input_gives_its_channel_axis():
    """(C, L): num_features from axis 0 (PyTorch's lazy instance norm takes axis 1, the length, and
    then refuses the input; ours takes the channels, as the regular InstanceNorm1d reads them)."""
    lazy = nn.LazyInstanceNorm1d(dtype=np.float64)
    x = _input((3, 7))
    y = lazy(x)
    assert type(lazy) is nn.InstanceNorm1d and lazy.num_features == 3 and lazy.weight.shape == (3,)
    with pytest.raises(ValueError, match="num_features"):
        torch.nn.LazyInstanceNorm1d(dtype=torch.float64)(torch.from_numpy(x))
    regular = nn.InstanceNorm1d(3, affine=True, track_running_stats=True, dtype=np.float64)
    np.testing.assert_array_equal(y, regular(x))
