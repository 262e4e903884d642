"""Mixed precision: cnn_gpu.amp.GradScaler (skip and halve on inf/NaN, growth, state) and
`cnn-gpu train --precision fp32|tf32|fp16` (accuracy on digits, resume, emu against numpy)."""
import re
import warnings

import numpy as np
import pytest

from cnn_gpu import checkpoint, optim
from cnn_gpu.amp import GradScaler
from cnn_gpu.cli import main
from cnn_gpu.nn import Parameter


def _float16_params(rng, shapes=((3, 4), (5,))):
    return [Parameter(rng.standard_normal(shape).astype(np.float16)) for shape in shapes]


def _scaled_grads(params, scaler, rng):
    """Gradients as a scaled backward leaves them: scale x fresh random values, in float16."""
    grads = [rng.standard_normal(p.data.shape).astype(np.float32) * 1e-3 for p in params]
    for p, g in zip(params, grads):
        p.grad = scaler.scale(g.astype(np.float16))
    return grads


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_inf_or_nan_gradient_skips_the_step_and_halves_the_scale(bad):
    rng = np.random.default_rng(1)
    params = _float16_params(rng)
    optimizer = optim.SGD(params, lr=0.1)
    scaler = GradScaler(init_scale=1024.0, growth_interval=3)
    before = [p.data.copy() for p in params]
    _scaled_grads(params, scaler, rng)
    params[1].grad[2] = bad
    assert scaler.step(optimizer) is False
    scaler.update()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
    assert scaler.get_scale() == 512.0 and scaler.state_dict()["_growth_tracker"] == 0
    # the next clean step is taken, with the gradients unscaled (an SGD step of lr * grad)
    grads = _scaled_grads(params, scaler, rng)
    assert scaler.step(optimizer) is True
    scaler.update()
    for p, b, g in zip(params, before, grads):
        np.testing.assert_allclose(p.data.astype(np.float32), b.astype(np.float32) - 0.1 * g, rtol=0, atol=2e-3)
        assert not np.array_equal(p.data, b)



def test_a_step_with_no_gradient_or_an_update_with_no_step_raises_as_pytorchs():
    """PyTorch's GradScaler asserts "No inf checks were recorded" at step() when no parameter of
    the optimizer has a gradient, and at update() when no optimizer was unscaled or stepped: a
    scale that grew on steps that checked nothing would hide a missing backward."""
    rng = np.random.default_rng(5)
    params = _float16_params(rng)
    optimizer = optim.SGD(params, lr=0.1)
    scaler = GradScaler(init_scale=8.0, growth_interval=1)
    before = [p.data.copy() for p in params]
    with pytest.raises(RuntimeError, match="no parameter of this optimizer has a gradient"):
        scaler.step(optimizer)
    assert all(np.array_equal(p.data, b) for p, b in zip(params, before))
    with pytest.raises(RuntimeError, match="no inf/NaN check was recorded"):
        GradScaler().update()
    idle = GradScaler()
    idle.unscale_(optimizer)   # no gradient to check: as if not unscaled
    with pytest.raises(RuntimeError, match="no inf/NaN check was recorded"):
        idle.update()
    _scaled_grads(params, scaler, rng)   # a gradient on some parameters is enough
    params[0].grad = None
    assert scaler.step(optimizer) is True
    scaler.update()
    assert scaler.get_scale() == 16.0
    assert GradScaler(enabled=False).update() is None   # a disabled scaler checks nothing


def test_unscale_divides_in_fp32_and_keeps_the_dtype():
    rng = np.random.default_rng(2)
    params = _float16_params(rng)
    scaler = GradScaler(init_scale=2.0 ** 16)
    grads = _scaled_grads(params, scaler, rng)
    assert np.isfinite(params[0].grad).all()      # 2**16 itself would overflow float16
    optimizer = optim.Adam(params)
    scaled = [p.grad for p in params]
    scaler.unscale_(optimizer)
    for p, g, before in zip(params, grads, scaled):
        assert p.grad is before and p.grad.dtype == np.float16   # in place, as PyTorch's
        np.testing.assert_allclose(p.grad.astype(np.float32), g, rtol=2e-3, atol=1e-7)
    with pytest.raises(RuntimeError, match="already"):
        scaler.unscale_(optimizer)


def _unscaled_on(backend, grads, scale):
    """(the gradients unscale_ leaves, whether it found inf/NaN) of parameters on `backend`."""
    params = [Parameter(np.zeros_like(g), backend=backend) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    scaler, optimizer = GradScaler(init_scale=scale), optim.SGD(params, lr=0.1)
    scaler.unscale_(optimizer)
    return [p.grad for p in params], scaler._optimizers[id(optimizer)]["found_inf"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_kernels_unscale_as_numpy_eight_gradients_a_launch(dtype, monkeypatch):
    """kernels/optim.cu's unscale_grads (emu) against the NumPy path, bit for bit: 11 gradients (two
    launches), clean, with an inf or NaN in the second launch's slots, and overflowing only once
    unscaled by a scale below 1 (the check after)."""
    from cnn_gpu import backend
    launches = []
    real_launch = backend.launch
    monkeypatch.setattr(backend, "launch", lambda *args, **kw: launches.append(args[3]) or real_launch(*args, **kw))
    rng = np.random.default_rng(40)
    shapes = [(3, 4), (5,), (2, 3, 3), (7,), (), (4, 4), (9,), (2, 2), (6,), (3,), (300,)]
    clean = [np.asarray(rng.standard_normal(shape) * 2.0 ** 10).astype(dtype) for shape in shapes]
    for planted, scale in ((None, 2.0 ** 16), (np.inf, 2.0 ** 16), (np.nan, 2.0 ** 16), (None, 2.0 ** -7)):
        grads = [g.copy() for g in clean]
        if planted is not None:
            grads[9][1] = planted
        launches.clear()
        ours, found = _unscaled_on("emu", grads, scale)
        assert launches == ["unscale_grads"] * 2
        want, want_found = _unscaled_on("numpy", grads, scale)
        overflows = dtype == np.float16 and scale < 1   # 2^10 * N(0, 1) * 2^7 passes float16's 65504
        assert found == want_found == (planted is not None or overflows)
        for got, expected in zip(ours, want):
            assert isinstance(got, np.ndarray) and isinstance(expected, np.ndarray)
            assert got.dtype == dtype and got.shape == expected.shape and got.tobytes() == expected.tobytes()


def test_unscale_changes_no_gradient_when_it_refuses_one_and_unscales_a_repeated_parameter_once():
    host = Parameter(np.zeros(3, np.float32), backend="numpy")
    device = Parameter(np.zeros(3, np.float32), backend="emu")
    wrong = Parameter(np.zeros(3, np.float32), backend="emu")
    host.grad, device.grad = np.full(3, 8.0, np.float32), np.full(3, 8.0, np.float32)
    wrong.grad = np.full(3, 8, np.int32)   # the kernels take no int32: refused at its launch
    with pytest.raises(TypeError):
        GradScaler(init_scale=4.0).unscale_(optim.SGD([host, device, wrong], lr=0.1))
    assert (host.grad == 8).all() and (device.grad == 8).all()   # nothing divided, so a retry is right
    junk = Parameter(np.zeros(3, np.float32), backend="numpy")
    junk.grad = np.array(["a", "b", "c"])   # refused by NumPy's isfinite, before the kernels run
    with pytest.raises(TypeError):
        GradScaler(init_scale=4.0).unscale_(optim.SGD([device, host, junk], lr=0.1))
    assert (host.grad == 8).all() and (device.grad == 8).all()
    for p in (host, device):   # listed twice (param_groups edited: the constructor refuses it)
        scaler = GradScaler(init_scale=4.0)
        twice = optim.SGD([p], lr=0.1)
        twice.param_groups[0]["params"] = [p, p]
        scaler.unscale_(twice)
        assert (p.grad == 2).all()
    integer = Parameter(np.zeros(3, np.float32), backend="numpy")
    integer.grad = np.full(3, 8, np.int64)   # NumPy would truncate its quotient: refused as on the kernels
    with pytest.raises(TypeError, match="int64"):
        GradScaler(init_scale=4.0).unscale_(optim.SGD([host, integer], lr=0.1))
    assert (host.grad == 2).all() and (integer.grad == 8).all()


def test_a_step_the_optimizer_refused_can_be_retried():
    """As PyTorch's: the step stays to be taken after optimizer.step() raised (here on a NaN lr),
    and a retry takes it. (update() counts a step by its inf/NaN check alone, as PyTorch's: one
    refused and never retried counts as clean too.)"""
    p = Parameter(np.ones(2, np.float32))
    opt, scaler = optim.SGD([p], lr=0.1), GradScaler()
    p.grad = np.full(2, 65536.0, np.float32)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        scaler.step(opt)
    opt.param_groups[0]["lr"] = 0.1
    assert scaler.step(opt) is True
    np.testing.assert_array_equal(p.data, np.full(2, 0.9, np.float32))
    scaler.update()
    assert scaler.get_scale() == 65536.0


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_unscale_writes_in_place_once_per_array_and_copies_what_it_cannot_write(backend):
    """unscale_ divides each gradient array in place, once where parameters share it (disjoint views
    of one flat buffer each in place); a read-only gradient, and on the kernels an F-ordered one,
    is unscaled into a C-ordered copy bound to .grad, the original left as it was; gradients that
    overlap are refused before any changes."""
    from cnn_gpu.backend import why_unavailable
    if reason := why_unavailable(backend):
        pytest.skip(reason)
    flat = np.arange(1, 13, dtype=np.float32)
    frozen = np.full((2, 2), 8.0, np.float32)
    frozen.flags.writeable = False
    fortran = np.asfortranarray(np.full((3, 2), 8.0, np.float32))
    params = [Parameter(np.zeros(s, np.float32), backend=backend) for s in (6, 6, 6, (2, 2), (3, 2))]
    params[0].grad, params[1].grad = flat[:6], flat[6:]
    params[2].grad = params[1].grad   # one array for two parameters
    params[3].grad, params[4].grad = frozen, fortran
    GradScaler(init_scale=4.0).unscale_(optim.SGD(params, lr=0.1))
    np.testing.assert_array_equal(flat, np.arange(1, 13) / 4)
    assert params[1].grad is params[2].grad and params[1].grad.base is flat
    copied = [(params[3], frozen)] + ([(params[4], fortran)] if backend != "numpy" else [])   # NumPy writes any order
    for p, original in copied:
        assert p.grad is not original and p.grad.flags.c_contiguous and (p.grad == 2).all() and (original == 8).all()
    if backend == "numpy":
        assert params[4].grad is fortran and (fortran == 2).all()
    overlapping = np.full(10, 8.0, np.float32)
    params = [Parameter(np.zeros(6, np.float32), backend=backend) for _ in range(2)]
    params[0].grad, params[1].grad = overlapping[:6], overlapping[4:]
    with pytest.raises(ValueError, match="shares memory"):   # each is written in place: refused
        GradScaler(init_scale=4.0).unscale_(optim.SGD(params, lr=0.1))
    assert (overlapping == 8).all()


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_unscale_refuses_a_gradient_sharing_a_parameters_memory_before_any_change(backend):
    """A gradient that is a view of a parameter (which the optimizer would refuse after the
    unscaling had divided the parameter) is refused first: nothing changes."""
    from cnn_gpu.backend import why_unavailable
    if reason := why_unavailable(backend):
        pytest.skip(reason)
    params = [Parameter(np.full(4, 8.0, np.float32), backend=backend) for _ in range(3)]
    params[0].grad, params[1].grad = np.full(4, 8.0, np.float32), params[2].data[:]
    scaler = GradScaler(init_scale=4.0)
    with pytest.raises(ValueError, match="shares memory with parameter 2"):
        scaler.step(optim.SGD(params, lr=0.1))
    assert all((p.data == 8).all() for p in params) and (params[0].grad == 8).all()


def test_a_failed_agreement_over_the_ranks_leaves_the_gradients_unscaled_and_the_step_refused(monkeypatch):
    """Where the inf/NaN agreement over the ranks raises, every gradient (host and kernels) is
    unscaled once: unscale_ again says so, step() refuses, update() backs off."""
    import cnn_gpu.amp as amp
    from cnn_gpu.backend import why_unavailable
    params = [Parameter(np.zeros(3, np.float32), backend=be) for be in ("numpy", "emu" if not why_unavailable("emu")
                                                                      else "numpy")]
    for p in params:
        p.grad = np.full(3, 8.0, np.float32)
    scaler, optimizer = GradScaler(init_scale=4.0), optim.SGD(params, lr=0.1)

    def no_agreement(found):
        raise TimeoutError("a rank did not answer")
    monkeypatch.setattr(amp, "_any_rank", no_agreement)
    with pytest.raises(TimeoutError):
        scaler.unscale_(optimizer)
    assert all((p.grad == 2).all() for p in params)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="did not agree"):
        scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0 and all((p.data == 0).all() for p in params)


def test_scale_doubles_after_growth_interval_clean_steps():
    rng = np.random.default_rng(3)
    params = _float16_params(rng)
    optimizer = optim.Adam(params, lr=1e-3)
    scaler = GradScaler(init_scale=8.0, growth_factor=2.0, growth_interval=4)
    scales = []
    for _ in range(9):
        _scaled_grads(params, scaler, rng)
        assert scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [8.0] * 3 + [16.0] * 4 + [32.0] * 2


def test_state_dict_round_trip_and_refusals():
    rng = np.random.default_rng(4)
    params = _float16_params(rng)
    scaler = GradScaler(init_scale=64.0, growth_interval=5)
    for bad_step in (False, True, False):
        _scaled_grads(params, scaler, rng)
        if bad_step:
            params[0].grad[0, 0] = np.inf
        scaler.step(optim.SGD(params, lr=0.01))
        scaler.update()
    state = scaler.state_dict()
    assert state == {"scale": 32.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 5,
                     "_growth_tracker": 1}
    restored = GradScaler()
    restored.load_state_dict(state)
    assert restored.state_dict() == state and restored.get_scale() == 32.0
    for broken, error in (({**state, "scale": -1.0}, ValueError), ({**state, "_growth_tracker": 5}, ValueError),
                          ({**state, "extra": 1}, ValueError), ({}, RuntimeError), ([], TypeError)):
        with pytest.raises(error):   # {}: a disabled scaler's state, as PyTorch refuses it
            restored.load_state_dict(broken)
        assert restored.state_dict() == state     # nothing changed
    assert GradScaler(enabled=False).state_dict() == {}
    disabled = GradScaler(enabled=False)   # PyTorch's resume without loss scaling: the call is ignored
    assert disabled.load_state_dict(state) is None and disabled.state_dict() == {} and disabled.get_scale() == 1.0
    # backoffs take a float32 scale down to 0 (a scaler that will skip every step); its state reloads
    dead = {**state, "scale": 0.0, "_growth_tracker": 0}
    restored.load_state_dict(dead)
    assert restored.state_dict() == dead


def test_each_optimizer_is_unscaled_checked_and_skipped_on_its_own_gradients():
    """PyTorch's pattern for several optimizers: step(o1); step(o2); update(). Each is unscaled and
    checked; one whose gradients hold inf is skipped alone, and the scale backs off."""
    rng = np.random.default_rng(6)
    first, second = _float16_params(rng, ((3,),)), _float16_params(rng, ((4,),))
    optimizers = optim.SGD(first, lr=0.5), optim.SGD(second, lr=0.5)
    scaler = GradScaler(init_scale=1024.0)
    before = [p.data.copy() for p in first + second]
    grads = _scaled_grads(first, scaler, rng) + _scaled_grads(second, scaler, rng)
    assert scaler.step(optimizers[0]) and scaler.step(optimizers[1])
    scaler.update()
    for p, b, g in zip(first + second, before, grads):   # both stepped by lr * the unscaled gradient
        np.testing.assert_allclose(p.data.astype(np.float32), b.astype(np.float32) - 0.5 * g, rtol=0, atol=2e-3)
    _scaled_grads(first, scaler, rng)
    _scaled_grads(second, scaler, rng)
    second[0].grad[1] = np.inf
    kept = [p.data.copy() for p in first + second]
    assert scaler.step(optimizers[0]) is True and scaler.step(optimizers[1]) is False
    scaler.update()
    assert not np.array_equal(first[0].data, kept[0]) and np.array_equal(second[0].data, kept[1])
    assert scaler.get_scale() == 512.0
    # once per optimizer between updates, and unscale_ only before its step
    _scaled_grads(first, scaler, rng)
    scaler.step(optimizers[0])
    with pytest.raises(RuntimeError, match="step was already called"):
        scaler.step(optimizers[0])
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(optimizers[0])
    scaler.unscale_(optimizers[1])   # another optimizer: allowed
    scaler.update()


def test_a_scale_backed_off_to_zero_skips_every_step_without_a_crash():
    """Inf gradients step after step halve a float32 scale to 0 (166 steps from 2^16), as in PyTorch:
    then every unscale gives inf and every step is skipped; no division by zero, no warning."""
    param = Parameter(np.ones(2, np.float32))
    optimizer = optim.SGD([param], lr=0.1)
    scaler = GradScaler(init_scale=2.0 ** 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(200):
            param.grad = np.array([np.inf, 1.0], np.float32)
            assert scaler.step(optimizer) is False
            scaler.update()
        param.grad = np.ones(2, np.float32)
        assert scaler.step(optimizer) is False
    assert scaler.get_scale() == 0.0 and (param.data == 1).all()
    with pytest.raises(ValueError, match="positive float32"):
        GradScaler(init_scale=1e-50)   # rounds to 0 in float32


def test_scale_follows_pytorchs_float32_updates():
    """Non-power-of-two factors and growth up to float32's limit: the scale PyTorch's CPU scaler
    keeps, a float32 updated in double and rounded (growth past float32 is not taken)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (make torch)")
    options = dict(init_scale=2.0e37, growth_factor=3.7, backoff_factor=0.3, growth_interval=2)
    ours = GradScaler(**options)
    theirs = torch.amp.GradScaler("cpu", **options)
    param = Parameter(np.ones(3, np.float32))
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer, torch_optimizer = optim.SGD([param], lr=0.0), torch.optim.SGD([weight], lr=0.0)
    scales = []
    for step in range(24):
        bad = step % 7 == 6
        grad = np.full(3, np.inf if bad else 1.0, np.float32)
        param.grad = grad
        weight.grad = torch.tensor(grad)
        ours.step(optimizer)
        ours.update()
        theirs.scale(torch.ones(1))   # PyTorch's scaler starts on its first scale()
        theirs.step(torch_optimizer)
        theirs.update()
        assert ours.get_scale() == theirs.get_scale(), step
        scales.append(ours.get_scale())
    assert max(scales) * 3.7 > float(np.finfo(np.float32).max)   # a growth past float32 was refused


@pytest.mark.parametrize("kwargs", [dict(init_scale=0.0), dict(init_scale=np.inf), dict(init_scale=np.nan),
                                    dict(growth_factor=1.0), dict(growth_factor=0.5), dict(backoff_factor=1.0),
                                    dict(backoff_factor=0.0), dict(growth_interval=0), dict(growth_interval=2.5)])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="GradScaler"):
        GradScaler(**kwargs)


def test_a_disabled_scaler_passes_through():
    rng = np.random.default_rng(5)
    params = [Parameter(rng.standard_normal(4).astype(np.float32))]
    params[0].grad = rng.standard_normal(4).astype(np.float32)
    expected = params[0].data - 0.5 * params[0].grad
    scaler = GradScaler(enabled=False)
    assert scaler.scale(params[0].grad) is params[0].grad and scaler.get_scale() == 1.0
    assert scaler.step(optim.SGD(params, lr=0.5))
    np.testing.assert_allclose(params[0].data, expected, rtol=1e-6)


# --- cnn-gpu train --precision ------------------------------------------------------------------

def _accuracy(output: str) -> float:
    match = re.search(r"test accuracy: ([\d.]+)%", output)
    assert match, output
    return float(match.group(1))


# 5 epochs at batch 16 reach ~97.8% in every precision (the default 15 at batch 32: ~98.2%).
QUICK_DIGITS = ["--device", "numpy", "--epochs", "5", "--batch-size", "16"]


@pytest.mark.parametrize("precision", ["fp16", "tf32"])
def test_reduced_precision_training_reaches_97_percent(precision, tmp_path, capsys):
    path = tmp_path / "run.npz"
    assert main(["train", *QUICK_DIGITS, "--precision", precision, "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert f", {precision}, " in out and _accuracy(out) >= 97.0, out
    model_state, optimizer_state, meta = checkpoint.load(path)
    assert meta["settings"]["precision"] == precision
    dtype = np.float16 if precision == "fp16" else np.float32
    assert all(value.dtype == dtype for value in model_state.values())
    if precision == "fp16":   # FP32 masters, and the scale of a run without overflow
        assert all(state["master"].dtype == np.float32 for state in optimizer_state["state"].values())
        assert meta["scaler"]["scale"] == 2.0 ** 16
    else:
        assert meta["scaler"] == {}


def test_fp16_resume_restores_the_scale_and_refuses_another_precision(tmp_path, capsys):
    path = tmp_path / "fp16.npz"
    assert main(["train", "--device", "numpy", "--precision", "fp16", "--epochs", "1", "--max-batches", "2",
                 "--save", str(path)]) == 0
    model_state, optimizer_state, meta = checkpoint.load(path)
    assert meta["scaler"]["_growth_tracker"] == 2
    # a scale and counter the run could not have reached in 2 steps: the resumed run must carry them on
    meta["scaler"].update(scale=512.0, _growth_tracker=7)
    checkpoint.save(path, model_state, optimizer_state, meta)
    capsys.readouterr()
    assert main(["train", "--device", "numpy", "--resume", str(path), "--precision", "fp32"]) == 2
    assert "--precision fp32 differs from the resumed checkpoint's fp16" in capsys.readouterr().err
    assert main(["train", "--device", "numpy", "--resume", str(path), "--epochs", "2", "--max-batches", "3",
                 "--save", str(path)]) == 0
    resumed = checkpoint.load(path)[2]
    assert resumed["settings"]["precision"] == "fp16"
    assert resumed["scaler"]["scale"] == 512.0 and resumed["scaler"]["_growth_tracker"] == 10


def _needs_emu():
    from cnn_gpu.backend import why_unavailable
    if why_unavailable("emu"):
        pytest.skip(f"emu backend unavailable: {why_unavailable('emu')}")


def test_fp16_on_emu_matches_numpy_fp16(tmp_path):
    """Two loss-scaled Adam steps of the default model in float16 on the emulator (every op on its
    float16 kernels) against the NumPy oracle: FP32 master weights within 1e-5 (an Adam step is
    2e-3), the float16 weights those masters rounded once, bit for bit (near zero the masters'
    tolerance is many float16 ulps), both steps taken at the initial scale."""
    _needs_emu()
    short = ["--precision", "fp16", "--epochs", "1", "--max-batches", "2", "--batch-size", "16"]
    runs = {}
    for device in ("emu", "numpy"):
        path = tmp_path / f"{device}.npz"
        assert main(["train", "--device", device, *short, "--save", str(path)]) == 0
        runs[device] = checkpoint.load(path)
    (emu_weights, emu_optimizer, emu_meta), (weights, optimizer, meta) = runs["emu"], runs["numpy"]
    assert emu_meta["scaler"] == meta["scaler"] and meta["scaler"]["_growth_tracker"] == 2
    assert len(weights) == len(emu_optimizer["state"]) == len(optimizer["state"])
    for name, ours, theirs in zip(weights, emu_optimizer["state"].values(), optimizer["state"].values()):
        assert ours["master"].dtype == np.float32 and np.abs(theirs["exp_avg"]).max() > 0
        np.testing.assert_allclose(ours["master"], theirs["master"], rtol=0, atol=1e-5)
        assert emu_weights[name].dtype == np.float16
        assert emu_weights[name].tobytes() == ours["master"].astype(np.float16).tobytes(), name
        assert weights[name].tobytes() == theirs["master"].astype(np.float16).tobytes(), name


def test_tf32_on_emu_matches_numpy_tf32(tmp_path):
    _needs_emu()
    short = ["--epochs", "1", "--max-batches", "2", "--batch-size", "16"]
    weights = {}
    for device, precision in (("emu", "tf32"), ("numpy", "tf32"), ("numpy", "fp32")):
        path = tmp_path / f"{device}-{precision}.npz"
        assert main(["train", "--device", device, "--precision", precision, *short, "--save", str(path)]) == 0
        weights[device, precision] = checkpoint.load(path)[0]
    emu, oracle, fp32 = weights["emu", "tf32"], weights["numpy", "tf32"], weights["numpy", "fp32"]
    for name in oracle:
        np.testing.assert_allclose(emu[name], oracle[name], rtol=0, atol=5e-5, err_msg=name)
    # TF32 operands did change the run: two Adam steps apart by far more than the tolerance
    assert max(np.abs(oracle[name] - fp32[name]).max() for name in oracle) > 1e-3


# Rank 1 alone overflows: every rank must skip its step and halve its scale.
ONE_RANK_OVERFLOWS = """
import numpy as np
from cnn_gpu import distributed, optim
from cnn_gpu.amp import GradScaler
from cnn_gpu.nn import Parameter
world = distributed.init()
rng = np.random.default_rng(10 + world.rank)
p = Parameter(rng.standard_normal(4).astype(np.float16))
before = p.data.copy()
scaler = GradScaler(init_scale=256.0)
p.grad = scaler.scale(rng.standard_normal(4).astype(np.float16))
if world.rank == 1:
    p.grad[0] = np.inf
took = scaler.step(optim.SGD([p], lr=0.1))
scaler.update()
outcome = world.allgather_object((took, scaler.get_scale(), bool((p.data == before).all())))
if world.rank == 0:   # one printer: the ranks' output streams may interleave
    print(outcome)
"""


def test_an_overflow_on_one_rank_skips_the_step_on_every_rank():
    import sys

    from helpers import run_job
    from test_distributed import MPIEXEC, _mpi_reason
    from test_distributed_train import _env
    if _mpi_reason():
        pytest.skip(_mpi_reason())
    run = run_job([str(MPIEXEC), "-n", "2", sys.executable, "-c", ONE_RANK_OVERFLOWS], 120, env=_env())
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[(False, 128.0, True), (False, 128.0, True)]", run.stdout
