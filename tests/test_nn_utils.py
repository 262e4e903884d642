"""nn.utils beyond clipping (test_clip_grad.py): get_total_norm and clip_grads_with_norm_ (the two
halves of clip_grad_norm_), parameters_to_vector / vector_to_parameters, and the batch-norm folding
of fuse_conv_bn_eval / fuse_linear_bn_eval and their *_weights, against torch.nn.utils."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnn_gpu import nn
from helpers import needs_emu

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _trained_bn(bn, seed):
    """A batch norm in eval mode with drawn running statistics and affine parameters."""
    rng = np.random.default_rng(seed)
    c = bn.num_features
    bn.running_mean[...] = rng.standard_normal(c)
    bn.running_var[...] = rng.uniform(0.5, 2.0, c)
    if bn.affine:
        bn.weight.data[...] = rng.standard_normal(c)
        bn.bias.data[...] = rng.standard_normal(c)
    return bn.eval()


def _torch_copy(torch, layer, ours):
    layer.double().load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    return layer.eval()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_total_norm_then_clipping_is_clip_grad_norm_and_torchs(norm_type, torch):
    rng = np.random.default_rng(3)
    params = [nn.Parameter(rng.standard_normal(s)) for s in ((3, 4), (5,), (2, 2))]
    for p in params:
        p.grad = rng.standard_normal(p.shape) * 3
    tensors = [torch.from_numpy(p.grad.copy()) for p in params]
    total = nn.utils.get_total_norm([p.grad for p in params], norm_type)
    np.testing.assert_allclose(total, torch.nn.utils.get_total_norm(tensors, norm_type).numpy(), rtol=1e-13)
    torch_params = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
    for t, g in zip(torch_params, tensors):
        t.grad = g
    nn.utils.clip_grads_with_norm_(params, 0.5, total)
    torch.nn.utils.clip_grads_with_norm_(torch_params, 0.5, torch.tensor(float(total), dtype=torch.float64))
    for p, t in zip(params, torch_params):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(nn.utils.get_total_norm(params[0].grad, norm_type),
                               torch.nn.utils.get_total_norm(torch_params[0].grad, norm_type).numpy(), rtol=1e-13)


def test_parameters_to_vector_and_back(torch):
    rng = np.random.default_rng(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    theirs = _torch_copy(torch, torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                                                    torch.nn.Flatten(), torch.nn.Linear(12, 2)), model)
    vector = nn.utils.parameters_to_vector(model.parameters())
    np.testing.assert_array_equal(vector, torch.nn.utils.parameters_to_vector(theirs.parameters()).detach().numpy())
    arrays = [p.data for p in model.parameters()]
    new = rng.standard_normal(vector.shape).astype(vector.dtype)
    nn.utils.vector_to_parameters(new, model.parameters())
    np.testing.assert_array_equal(nn.utils.parameters_to_vector(model.parameters()), new)
    assert all(p.data is a for p, a in zip(model.parameters(), arrays))   # in place: the same arrays
    with pytest.raises(ValueError, match=f"vec has {new.size - 1} elements, the parameters {new.size}"):
        nn.utils.vector_to_parameters(np.zeros(new.size - 1, np.float32), model.parameters())
    with pytest.raises(TypeError, match="1-D array"):
        nn.utils.vector_to_parameters(new.reshape(1, -1), model.parameters())
    np.testing.assert_array_equal(nn.utils.parameters_to_vector(model.parameters()), new)   # nothing copied


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("bias, affine", [(True, True), (False, True), (True, False)])
def test_a_folded_convolution_computes_conv_then_batch_norm(bias, affine, be, torch):
    """Its output is the pair's (float64, to rounding) and its weights torch's fuse_conv_bn_eval's; the
    originals are left as they were; a transposed convolution folds along its weight's dimension 1."""
    for transpose in (False, True):
        nn.init.manual_seed(5)
        make = nn.ConvTranspose2d if transpose else nn.Conv2d
        conv = make(3, 4, 3, padding=1, bias=bias, dtype=np.float64).to(be).eval()
        bn = _trained_bn(nn.BatchNorm2d(4, affine=affine, dtype=np.float64), 6).to(be)
        before = {k: v.copy() for k, v in conv.state_dict().items()}
        fused = nn.utils.fuse_conv_bn_eval(conv, bn, transpose=transpose)
        x = np.random.default_rng(7).standard_normal((2, 3, 5, 5))
        np.testing.assert_allclose(fused(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
        assert fused.bias is not None and fused.backend == conv.backend == be
        assert all(np.array_equal(v, before[k]) for k, v in conv.state_dict().items())
        tmake = torch.nn.ConvTranspose2d if transpose else torch.nn.Conv2d
        tconv = _torch_copy(torch, tmake(3, 4, 3, padding=1, bias=bias), conv)
        tbn = _torch_copy(torch, torch.nn.BatchNorm2d(4, affine=affine), bn)
        theirs = torch.nn.utils.fuse_conv_bn_eval(tconv, tbn, transpose=transpose)
        np.testing.assert_allclose(fused.weight.data, theirs.weight.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(fused.bias.data, theirs.bias.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_a_folded_linear_layer_computes_linear_then_batch_norm(torch):
    nn.init.manual_seed(8)
    for features in (5, 1):
        linear = nn.Linear(3, 5, dtype=np.float64).eval()
        bn = _trained_bn(nn.BatchNorm1d(features, dtype=np.float64), 9)
        fused = nn.utils.fuse_linear_bn_eval(linear, bn)
        x = np.random.default_rng(10).standard_normal((4, 5 if features == 1 else 3))
        if features == 1:   # one feature: BatchNorm1d over (N, 1, 5) outputs
            x = x[:, :3]
            np.testing.assert_allclose(fused(x), bn(linear(x)[:, None, :])[:, 0], rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_allclose(fused(x), bn(linear(x)), rtol=1e-12, atol=1e-12)
        theirs = torch.nn.utils.fuse_linear_bn_eval(_torch_copy(torch, torch.nn.Linear(3, 5), linear),
                                                    _torch_copy(torch, torch.nn.BatchNorm1d(features), bn))
        np.testing.assert_allclose(fused.weight.data, theirs.weight.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(fused.bias.data, theirs.bias.detach().numpy(), rtol=1e-14)


def test_folding_refuses_training_layers_and_batch_statistics():
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="Fusion only for eval"):
        nn.utils.fuse_conv_bn_eval(conv, bn)
    with pytest.raises(ValueError, match="running_mean and bn.running_var must not be None"):
        nn.utils.fuse_conv_bn_eval(conv.eval(), nn.BatchNorm2d(3, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="linear.out_features == bn.num_features or bn.num_features == 1"):
        nn.utils.fuse_linear_bn_eval(nn.Linear(2, 3).eval(), nn.BatchNorm1d(4).eval())
