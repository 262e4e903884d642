"""nn.SyncBatchNorm: 2- and 3-rank `mpiexec` runs (numpy and emu backends, and cuda on
tests/cupy_sim's simulated GPUs, one a rank, whose NCCL runs over MPI; three dtypes; unequal shares
of the batch, an empty share and a share of one value per channel among them) against one
process's BatchNorm and torch's over the concatenated batch; in one process, torch.nn.SyncBatchNorm
itself (which is BatchNorm there); convert_sync_batchnorm as torch's; the refusals."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import distributed as dist
from cnn_gpu import nn
from helpers import needs_emu, run_job
from test_distributed import MPIEXEC, _environment, _why_no_nccl, needs_mpi

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).parent / "mpi" / "sync_batch_norm.py"
# of the largest magnitude of the whole-batch result: float16 values are each rounded once, at most
# an ulp (2^-11 relative) from one process's where a sum in another order lands across a rounding
RTOL = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3}
BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TORCH_BATCH_NORMS = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                     5: torch.nn.BatchNorm3d}


def _script():
    spec = importlib.util.spec_from_file_location("sync_batch_norm_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=[pytest.param((ranks, backends), marks=needs_emu)   # emu: cuda's kernels too
                                        for backends in ("numpy,emu", "cuda") for ranks in (2, 3)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def ranks_results(request, tmp_path_factory):
    """(ranks, backends, the results rank 0 saved) of one mpiexec run of the script; cuda's on the
    simulator (its kernels run by the emulator)."""
    ranks, backends = request.param
    out = tmp_path_factory.mktemp(f"sync{ranks}") / "results.npz"
    env = _environment()
    if backends == "cuda":
        env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "cupy_sim"), env["PYTHONPATH"]]),
                   CUPY_SIM_DEVICES=str(ranks), PYTHONWARNINGS="ignore::RuntimeWarning")
    done = run_job([str(MPIEXEC), "-n", str(ranks), sys.executable, str(SCRIPT), str(out), backends], 240, env=env)
    assert done.returncode == 0, done.stderr
    return ranks, backends.split(","), dict(np.load(out))


def _one_process_step(script, index, trailing, shares, momentum, backend, dtype):
    """One process's BatchNorm over the concatenated batch, as the script's layer starts."""
    x, dy, _ = script.case_arrays(index, trailing, shares, dtype)
    bn = BATCH_NORMS[x.ndim](trailing[0], momentum=momentum, dtype=dtype)
    bn.load_state_dict(script.layer(trailing[0], momentum, dtype, "numpy").state_dict())
    bn.to("emu" if backend == "cuda" else backend)   # the kernels cuda runs, on the CPU
    y = bn(x)
    dx = bn.backward(dy)
    bn.eval()
    return {"y": y, "dx": dx, "dweight": bn.weight.grad, "dbias": bn.bias.grad, "eval_y": bn(x),
            **{name: np.asarray(value) for name, value in bn.state_dict().items()
               if "running" in name or "batches" in name}}


def _torch_step(script, index, trailing, shares, momentum):
    """torch's BatchNorm in float64 over the concatenated batch."""
    x, dy, _ = script.case_arrays(index, trailing, shares, "float64")
    bn = TORCH_BATCH_NORMS[x.ndim](trailing[0], momentum=momentum, dtype=torch.float64)
    bn.load_state_dict({name: torch.from_numpy(np.asarray(value)) for name, value in
                        script.layer(trailing[0], momentum, "float64", "numpy").state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_()
    y = bn(xt)
    y.backward(torch.from_numpy(dy))
    bn.eval()
    with torch.no_grad():
        eval_y = bn(xt)
    return {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dweight": bn.weight.grad.numpy(),
            "dbias": bn.bias.grad.numpy(), "eval_y": eval_y.numpy(), "running_mean": bn.running_mean.numpy(),
            "running_var": bn.running_var.numpy(), "num_batches_tracked": bn.num_batches_tracked.numpy()}


def _assert_close(got, expected, rtol, what):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, what
    relative = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-300)
    assert relative <= rtol, (what, relative)


@needs_mpi
def test_ranks_sharing_a_batch_normalise_it_as_one_process(ranks_results):
    """Forward, running statistics (bit-identical on every rank: the script checks), the gradients
    (dweight and dbias summed over the ranks) and the eval output after the step."""
    ranks, backends, results = ranks_results
    script = _script()
    for index, (trailing, shares, momentum) in enumerate(script.CASES[ranks]):
        for backend, dtype in ((backend, dtype) for backend in backends for dtype in script.DTYPES):
            expected = _one_process_step(script, index, trailing, shares, momentum, backend, dtype)
            for name, value in expected.items():
                got = results[f"{index}/{backend}/{dtype}/{name}"]
                assert got.dtype == np.asarray(value).dtype or name in ("dweight", "dbias"), name
                _assert_close(got, value, RTOL[dtype], (ranks, index, backend, dtype, name))
        for name, value in _torch_step(script, index, trailing, shares, momentum).items():
            for backend in backends:
                _assert_close(results[f"{index}/{backend}/float64/{name}"], value, 1e-10, (ranks, index, name))


@needs_mpi
def test_a_whole_batch_of_one_value_per_channel_is_refused_on_every_rank(ranks_results):
    ranks, _, results = ranks_results
    assert len(results["refusals"]) == ranks
    assert all(f"expected more than 1 value per channel when training, got 1 over the {ranks} ranks" in message
               for message in results["refusals"])


@needs_mpi
def test_an_allgather_of_unlike_arrays_is_refused_before_any_data_moves(ranks_results):
    ranks, _, results = ranks_results
    named = "rank 1 gather" if ranks == 2 else "ranks 1, 2 gather"
    assert len(results["mismatch"]) == ranks
    assert all(f"the all-gather: {named} other arrays than rank 0 (1 arrays against 1; array 0: (dtype, shape, on GPU) "
               f"('<f8', (3,), False) against ('<f8', (2,), False))" in message for message in results["mismatch"])


@needs_mpi
def test_data_parallel_steps_with_a_converted_model_are_one_processs_with_the_whole_batch(ranks_results):
    """convert_sync_batchnorm, SyncBatchNorm and allreduce_gradients in a training loop: the
    ranks' SGD steps on their shares are one process's BatchNorm2d steps on the whole batches."""
    ranks, _, results = ranks_results
    expected = _script().train(0, 1, per_rank=4 * ranks)
    for name, value in expected.items():
        got = results[f"train/{name}"]
        if name.endswith("num_batches_tracked"):
            assert int(got) == int(value) == 3
        else:
            _assert_close(got, value, 1e-10, name)


# --- one process --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("shape, track", [((6, 3), True), ((4, 3, 5, 2, 3), True), ((5, 3, 4), False)])
def test_one_process_is_torchs_sync_batch_norm(backend, shape, track):
    """Without a process group torch's SyncBatchNorm is BatchNorm, with any input rank from 2;
    without running statistics it normalises with the batch's in eval mode too."""
    rng = np.random.default_rng(len(shape))
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    ours = nn.SyncBatchNorm(3, momentum=0.2, track_running_stats=track, dtype=np.float64).to(backend)
    theirs = torch.nn.SyncBatchNorm(3, momentum=0.2, track_running_stats=track, dtype=torch.float64)
    assert repr(ours) == repr(theirs).replace(", bias=True", "")   # (BatchNorm's here lacks torch 2.13's bias=)
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        xt = torch.from_numpy(x).requires_grad_()
        y = theirs(xt)
        y.backward(torch.from_numpy(dy))
        ours.zero_grad()
        _assert_close(ours(x), y.detach().numpy(), 1e-10, "y")
        _assert_close(ours.backward(dy), xt.grad.numpy(), 1e-10, "dx")
        _assert_close(ours.weight.grad, theirs.weight.grad.numpy(), 1e-10, "dweight")
        _assert_close(ours.bias.grad, theirs.bias.grad.numpy(), 1e-10, "dbias")
        theirs.zero_grad()
    if track:
        _assert_close(ours.running_mean, theirs.running_mean.numpy(), 1e-10, "running_mean")
        _assert_close(ours.running_var, theirs.running_var.numpy(), 1e-10, "running_var")
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1


def test_convert_replaces_every_batch_norm_keeping_its_state():
    inner = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=None, eps=1e-3))
    volumes = nn.BatchNorm3d(4, dtype=np.float64, track_running_stats=False)
    model = nn.Sequential(nn.BatchNorm1d(2, affine=False), inner, nn.Sequential(volumes))
    inner[1].eval()
    inner[1].running_mean[:] = 0.5
    originals = [model[0], inner[1], model[2][0]]
    state = {name: np.array(value) for name, value in model.state_dict().items()}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and model[1] is inner and type(inner[0]) is nn.Conv2d   # containers changed in place
    replaced = [model[0], inner[1], model[2][0]]
    assert all(type(bn) is nn.SyncBatchNorm for bn in replaced)
    for old, new in zip(originals, replaced):
        assert (new.num_features, new.eps, new.momentum, new.affine, new.track_running_stats, new.training) == (
            old.num_features, old.eps, old.momentum, old.affine, old.track_running_stats, old.training)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert getattr(new, name) is getattr(old, name), name   # the same parameters and arrays, as torch's
    assert not inner[1].training and model[0].training
    assert replaced[2].weight.data.dtype == np.float64
    assert list(model.state_dict()) == list(state)
    assert all(np.asarray(value).tobytes() == state[name].tobytes() for name, value in model.state_dict().items())
    lone = nn.BatchNorm2d(5)
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(lone)) is nn.SyncBatchNorm


def test_convert_refuses_a_lazy_batch_norm_still_waiting_for_its_size_before_changing_anything():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(nn.LazyBatchNorm2d()))
    first = model[0]
    with pytest.raises(ValueError, match="the lazy batch norm 1.0 has no num_features yet; run a forward first"):
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert model[0] is first
    model(np.random.default_rng(3).standard_normal((4, 3, 2, 2)).astype(np.float32))   # infers it
    nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[0]) is type(model[1][0]) is nn.SyncBatchNorm and model[1][0].num_features == 3


def test_refusals():
    bn = nn.SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"SyncBatchNorm expects an input of at least 2 dimensions .* shape \(3,\)"):
        bn(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="process_group must be None"):
        nn.SyncBatchNorm(3, process_group="group")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="running_mean must have shape"):
        bn(np.ones((2, 4), np.float32))
    bn.eval()   # eval mode normalises a lone value with the running statistics, as torch
    np.testing.assert_allclose(bn(np.full((1, 3), 2, np.float32)), np.full((1, 3), 2 / np.sqrt(1 + 1e-5)), 1e-6)


def test_allgather_in_one_process_stacks_the_array():
    a = np.arange(6.0).reshape(2, 3)
    gathered = dist.allgather(a)
    assert gathered.shape == (1, 2, 3) and np.array_equal(gathered[0], a)


@pytest.mark.gpu
@pytest.mark.skipif(bool(_why_no_nccl()), reason=_why_no_nccl() or "")
def test_nccl_gather_on_one_gpu_is_the_array(monkeypatch):
    import cupy
    from cnn_gpu.distributed import _nccl
    monkeypatch.setattr(_nccl, "_communicator", None)
    expected = np.random.default_rng(5).standard_normal(7)
    gathered = _nccl.gather(cupy.asarray(expected), dist.World())   # a one-rank NCCL world
    assert gathered.shape == (1, 7)
    np.testing.assert_array_equal(gathered.get()[0], expected)


@pytest.mark.gpu
@pytest.mark.skipif(bool(_why_no_nccl()), reason=_why_no_nccl() or "")
def test_nccl_gather_leaves_its_result_on_the_arrays_gpu_not_the_current_one(monkeypatch):
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    from cnn_gpu.distributed import _nccl
    monkeypatch.setattr(_nccl, "_communicator", None)
    with cupy.cuda.Device(1):
        a = cupy.arange(5.0)
    assert cupy.cuda.runtime.getDevice() == 0
    gathered = _nccl.gather(a, dist.World())
    assert gathered.device.id == 1 and gathered.get().tolist() == [list(range(5))]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_a_backward_without_input_grad_reduces_nothing(backend, monkeypatch):
    """Two ranks holding the same share (a stand-in world: allgather stacks the share twice,
    allreduce_sum doubles and counts): input_grad=False gives the same dweight and dbias as a full
    backward and no dx, with no all-reduce (the sums serve only dx), as PyTorch skips it."""
    from cnn_gpu import distributed
    from cnn_gpu.backend import module_of
    sums = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "allgather", lambda a: module_of(a).stack([a, a]))
    monkeypatch.setattr(distributed, "allreduce_sum", lambda arrays: sums.append(1) or [2 * a for a in arrays])
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((4, 3, 5)) * 2 + 1, rng.standard_normal((4, 3, 5))
    layer = nn.SyncBatchNorm(3, dtype=np.float64).to(backend)
    grads = []
    for input_grad in (True, False):
        layer.zero_grad()
        layer(x)
        dx = layer.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad) and len(sums) == 1
        grads.append((np.asarray(layer.weight.grad), np.asarray(layer.bias.grad)))
    for full, without in zip(*grads):
        np.testing.assert_array_equal(without, full)
