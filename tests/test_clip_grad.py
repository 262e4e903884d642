"""nn.utils.clip_grad_norm_ / clip_grad_value_ against torch.nn.utils, and nn.Identity, Module.apply."""
import math

import numpy as np
import pytest

from cnn_gpu import backend, nn
from cnn_gpu.nn.module import to_backend_array, to_host

BACKENDS = ["numpy", pytest.param("cuda", marks=pytest.mark.skipif(
    bool(backend.why_unavailable("cuda")), reason=f"no cuda backend: {backend.why_unavailable('cuda')}"))]


def _parameters(rng, dtype, be):
    """Four parameters, one without a gradient; gradients of a few hundred (float16's squares overflow
    from 256 on)."""
    params = [nn.Parameter(to_backend_array(rng.standard_normal(s).astype(dtype), be)) for s in ((3, 4), (7,), (2, 2, 3), (5,))]
    for p in params[:3]:
        p.grad = to_backend_array((rng.standard_normal(p.shape) * 200).astype(dtype), be)
    return params


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-6), (np.float16, 2e-3)])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])   # clipped, and left as they are (times 1.0)
def test_clip_grad_norm_is_pytorchs(be, dtype, rtol, norm_type, max_norm):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(31)
    params = _parameters(rng, dtype, be)
    wide = (lambda a: torch.tensor(a.astype(np.float32))) if dtype == np.float16 else torch.tensor   # noqa: E731
    tensors = [wide(to_host(p.data)) for p in params]   # (float16 in float32: ours measures it so)
    for t, p in zip(tensors, params):
        t.grad = None if p.grad is None else wide(to_host(p.grad))
    total = nn.utils.clip_grad_norm_((p for p in params), max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type)
    np.testing.assert_allclose(float(total), float(expected), rtol=rtol)
    for p, t in zip(params, tensors):
        if p.grad is None:
            assert t.grad is None
            continue
        assert p.grad.dtype == dtype and backend.is_cupy_array(p.grad) == (be == "cuda")
        np.testing.assert_allclose(to_host(p.grad).astype(np.float64), t.grad.double().numpy(), rtol=rtol,
                                   atol=rtol * 1e-3)
    if max_norm < float(total):   # clipped: the new norm is max_norm (short of it by PyTorch's 1e-6)
        again = nn.utils.clip_grad_norm_(params, 1e9, norm_type)
        np.testing.assert_allclose(float(again), max_norm * float(total) / (float(total) + 1e-6), rtol=10 * rtol)


def test_clip_grad_norm_refuses_a_nonfinite_norm_before_any_change_when_asked():
    rng = np.random.default_rng(32)
    params = _parameters(rng, np.float64, "numpy")
    params[1].grad[3] = np.nan
    before = [p.grad.copy() for p in params[:3]]
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is nan"):
        nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.grad, b)
    assert math.isnan(float(nn.utils.clip_grad_norm_(params, 1.0)))   # PyTorch's default clips anyway


@pytest.mark.parametrize("make, error, message", [
    (lambda ps: nn.utils.clip_grad_norm_([ps[0].grad], 1.0), TypeError, "item 0 is ndarray"),
    (lambda ps: nn.utils.clip_grad_norm_(ps, math.nan), ValueError, "max_norm must be finite"),
    (lambda ps: nn.utils.clip_grad_norm_(ps, 1.0, norm_type=-1), ValueError, "norm_type"),
    (lambda ps: nn.utils.clip_grad_value_(ps, "0.1"), TypeError, "clip_value"),
])
def test_bad_arguments_are_refused(make, error, message):
    params = _parameters(np.random.default_rng(33), np.float32, "numpy")
    before = [p.grad.copy() for p in params[:3]]
    with pytest.raises(error, match=message):
        make(params)
    assert all(np.array_equal(p.grad, b) for p, b in zip(params, before))


@pytest.mark.torch
@pytest.mark.parametrize("be", BACKENDS)
def test_clip_grad_value_is_pytorchs(be):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    params = _parameters(np.random.default_rng(34), np.float32, be)
    tensors = [torch.tensor(to_host(p.data)) for p in params]
    for t, p in zip(tensors, params):
        t.grad = None if p.grad is None else torch.tensor(to_host(p.grad))
    nn.utils.clip_grad_value_(params[0], 0.7)   # one Parameter, as PyTorch takes a tensor
    nn.utils.clip_grad_value_(params[1:], 0.7)
    torch.nn.utils.clip_grad_value_(tensors, 0.7)
    for p, t in zip(params[:3], tensors):
        np.testing.assert_array_equal(to_host(p.grad), t.grad.numpy())
    assert max(float(abs(to_host(p.grad)).max()) for p in params[:3]) == np.float32(0.7)


def test_identity_passes_input_and_gradient_through_and_apply_visits_children_first():
    rng = np.random.default_rng(35)
    x, dy = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    layer = nn.Identity(54, unused_argument=0.1)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(dy)
    assert layer(x) is x and layer.backward(dy) is dy and layer.backward(dy, input_grad=False) is None
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64, rng=1), nn.Sequential(nn.Identity(), nn.ReLU()))
    visited = []
    assert model.apply(lambda m: visited.append(type(m).__name__)) is model
    assert visited == ["Linear", "Identity", "ReLU", "Sequential", "Sequential"]
    y = model(x)
    assert model.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, 3.5, 0.5])
def test_a_one_element_norm_is_its_absolute_value_as_torchs(dtype, norm_type):
    """PyTorch's vector_norm of one element is |x| exactly, for any order: so is a single gradient's
    total (the norm of one norm). Squaring it overflowed float32 from 1.8e19 on (the norm inf, the
    gradient clipped to 0, where torch scales it to max_norm) and underflowed below 1e-19 (norm 0),
    and came out an ulp off for an ordinary value."""
    p = nn.Parameter(np.zeros((), dtype))
    for value in (3e20, -1.5e-30, 0.1, -7.3):
        p.grad = np.array(value, dtype)
        total = nn.utils.clip_grad_norm_(p, 1e30, norm_type)
        assert total.dtype == dtype and total == np.abs(np.array(value, dtype))
    p.grad = np.array(-3e20, dtype)
    nn.utils.clip_grad_norm_([p], 2.0, norm_type)
    assert p.grad == pytest.approx(-2.0, rel=1e-6)
