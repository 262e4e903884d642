"""cnn_gpu.no_grad() and its kin (PyTorch's grad-mode API): the mode's nesting, decorators and
threads as torch's; under it a module keeps nothing from its forward, so an evaluation pass frees
each activation once the next layer has read it, and a backward of such a forward refuses."""
import threading
import weakref

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import nn

torch = pytest.importorskip("torch")


def _model():
    nn.init.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Residual(nn.Conv2d(4, 4, 3, padding=1)), nn.ReLU(), nn.Dropout(0.0), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def _activations_alive(model, x) -> int:
    """How many of the layers' outputs are still alive once the forward's result is dropped."""
    refs = []
    handles = [layer.register_forward_hook(lambda m, args, out: refs.append(weakref.ref(out))) for layer in model]
    model(x)
    for handle in handles:
        handle.remove()
    return sum(ref() is not None for ref in refs)


def test_a_forward_under_no_grad_keeps_no_activation_and_its_backward_refuses():
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    model = _model()
    assert _activations_alive(model, x) >= 6   # kept for backward: every layer's input
    with cnn_gpu.no_grad():
        assert _activations_alive(model, x) == 0
        y = model(x)
    with pytest.raises(RuntimeError, match="ran under cnn_gpu.no_grad"):
        model.backward(np.ones_like(y))
    y = model(x)   # with gradients again: a training step as ever
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_the_mode_nests_decorates_and_is_per_thread_as_pytorchs():
    def trace(module):
        seen = []
        assert module.is_grad_enabled()
        with module.no_grad():
            seen.append(module.is_grad_enabled())
            with module.enable_grad():
                seen.append(module.is_grad_enabled())
            with module.set_grad_enabled(True):
                seen.append(module.is_grad_enabled())
            seen.append(module.is_grad_enabled())
            with module.inference_mode(False):
                seen.append(module.is_grad_enabled())
        with module.inference_mode():
            seen.append(module.is_grad_enabled())
        module.set_grad_enabled(False)   # as a plain call: set until set again
        seen.append(module.is_grad_enabled())
        module.set_grad_enabled(True)

        @module.no_grad()
        def decorated():
            return module.is_grad_enabled()
        seen += [decorated(), module.is_grad_enabled()]

        @module.set_grad_enabled(False)   # sets the mode around each call, not from here on
        def disabled():
            return module.is_grad_enabled()
        seen += [module.is_grad_enabled(), disabled(), module.is_grad_enabled()]
        other = []
        with module.no_grad():
            thread = threading.Thread(target=lambda: other.append(module.is_grad_enabled()))
            thread.start()
            thread.join()
        return seen + other

    assert trace(cnn_gpu) == trace(torch) == [False, True, True, False, True, False, False, False, True, True, False,
                                              True, True]
    with pytest.raises(TypeError, match="True or False"):
        cnn_gpu.set_grad_enabled(1)


def test_cnn_gpu_train_evaluates_under_no_grad(monkeypatch):
    from cnn_gpu.cli import train
    modes = []
    model = _model()
    model.register_forward_hook(lambda m, args, out: modes.append(cnn_gpu.is_grad_enabled()))
    images = np.random.default_rng(1).standard_normal((5, 2, 8, 8)).astype(np.float32)

    class Dataset:
        x_test, y_test = images, np.arange(5) % 3

    train.evaluate(model, Dataset(), 2, "numpy")
    assert modes == [False] * 3 and cnn_gpu.is_grad_enabled()


def test_under_no_grad_a_module_may_run_twice_in_one_pass():
    """Reuse in one training forward is refused because the second use's input would replace the
    first's for backward; under no_grad nothing is kept, so it runs (as in torch)."""
    relu = nn.ReLU()
    x = -np.ones(3, np.float32)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = relu

        def forward(self, x):
            return self.relu(self.relu(x) - 1)

    model = Twice()
    with pytest.raises(ValueError, match="ran twice in one forward pass"):
        model(x)
    with cnn_gpu.no_grad():
        np.testing.assert_array_equal(model(x), np.zeros(3, np.float32))
