"""Helpers shared by the test files: comparisons (the tolerances of the house rules: float64 results
against a float64 reference to 1e-10 relative, float32 to 1e-5) and the planted emulator kernels."""
import os
import signal
import subprocess
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend


def rng_for(*key):
    """A generator seeded by the test case itself (stable across runs, unlike hash(), which Python
    salts per process for strings)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def run_job(command, timeout, **popen_options) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True, timeout=timeout), but a timeout kills
    the whole process group, not only its first process: the ranks mpiexec (or `train --nproc`)
    started cannot outlive the test."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **popen_options) as job:
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
            raise
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def tolerance(dtype) -> float:
    """Relative tolerance of a result computed in `dtype`."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-5


def to_host(a):
    """A NumPy view or copy of a NumPy or CuPy array."""
    return a.get() if backend.is_cupy_array(a) else np.asarray(a)


def assert_same_bits(a, b, what=""):
    """The same dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = to_host(a), to_host(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: the bits differ"


def assert_close(actual, expected, dtype, what=""):
    """Same dtype and shape, NaNs and infinities at the same places, and every other element within
    tolerance(dtype) times the largest finite expected magnitude (at least 1, so values near 0 need
    no exact zeros)."""
    actual, expected = to_host(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{what}: non-finite values differ")
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    error = float(np.abs(actual[finite].astype(np.float64) - expected[finite]).max(initial=0.0))
    assert error <= tolerance(dtype) * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def float16_steps(a, b):
    """How many float16 values apart a and b (float16 arrays) are, elementwise: the distance of their bit
    patterns in value order (-0.0 and 0.0 are one; subnormals count as every other step)."""
    def ordered(v):
        bits = np.asarray(v, dtype=np.float16).view(np.int16).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


def assert_fp16_within_one_ulp(actual, expected, what=""):
    """float16 arrays with NaNs and infinities at the same places and every other element at most one
    float16 step from the expected one (rounded the other way near a tie)."""
    actual, expected = to_host(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype == np.float16 and actual.shape == expected.shape, what
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=f"{what}: non-finite values differ")
    steps = float16_steps(actual[finite], expected[finite])
    assert steps.max(initial=0) <= 1, f"{what}: {steps.max()} float16 steps off"


# The planted test kernels of tests/emu_kernels/, run on the emulator.
EMU_KERNELS = Path(__file__).resolve().parent / "emu_kernels"
needs_emu = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")
needs_cuda = pytest.mark.skipif("cuda" not in backend.available_backends(),
                                reason=f"no cuda backend: {backend.why_unavailable('cuda')}")


def refuse_launches(monkeypatch) -> None:
    """Every kernel launch raises AssertionError("launched"): for tests of what is refused before any."""
    def launch(*args, **kwargs):
        raise AssertionError("launched")
    monkeypatch.setattr(backend, "launch", launch)


def refuse_device_work(monkeypatch) -> None:
    """Every kernel launch and every other device work (backend.device_call: CuPy's arithmetic, copies,
    fills) raises AssertionError: for tests of what is refused before an op computes anything."""
    refuse_launches(monkeypatch)

    def device_call(*args, **kwargs):
        raise AssertionError("device work")
    monkeypatch.setattr(backend, "device_call", device_call)


def refuse_kernel_runs(monkeypatch) -> None:
    """Every kernel that would run raises AssertionError("a kernel ran"); backend.launch's own checks
    still happen, and a grid of no blocks (an empty problem) returns before running one."""
    def kernel_function(*args, **kwargs):
        def run(*run_args, **run_kwargs):
            raise AssertionError("a kernel ran")
        return run
    monkeypatch.setattr(backend, "kernel_function", kernel_function)


def planted_kernels(name: str):
    """emu.RawModule of tests/emu_kernels/<name>.cu."""
    from cnn_gpu import emu
    return emu.RawModule(path=str(EMU_KERNELS / f"{name}.cu"))


# A CuPy for the cuda backend's probes on a machine without one.

def _fail(message):
    """A callable that raises RuntimeError(message)."""
    def raise_it(*_):
        raise RuntimeError(message)
    return raise_it


def fake_cupy(driver=12080, cuda=12080, archs=("90",), nvrtc=(12, 8), supported=(50, 60, 70, 75, 80, 86, 89, 90, 100, 120),
              nvrtc_error=None, cublas_error=None, compile_error=None):
    """The few CuPy calls why_unavailable("cuda") makes, answering as a machine would (compute
    capabilities as device attributes 75 and 76: no Device(i).compute_capability, which makes the
    device current)."""
    def attribute(number, index):
        return {75: int(archs[index][:-1]), 76: int(archs[index][-1])}[number]
    runtime = types.SimpleNamespace(driverGetVersion=lambda: driver, runtimeGetVersion=lambda: cuda,
                                    getDeviceCount=lambda: len(archs), deviceGetAttribute=attribute)
    nvrtc_module = types.SimpleNamespace(getVersion=_fail(nvrtc_error) if nvrtc_error else lambda: nvrtc,
                                         getSupportedArchs=lambda: tuple(supported))
    device = types.SimpleNamespace(get_cublas_handle=_fail(cublas_error) if cublas_error else lambda: 1)
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=runtime, nvrtc=nvrtc_module, device=device,
                                      Device=lambda index=0: types.SimpleNamespace())
    cupy.__version__ = "14.0.0"
    cupy.RawModule = lambda code: types.SimpleNamespace(get_function=_fail(compile_error) if compile_error
                                                        else lambda name: name)
    return cupy


class EpochBar:
    """A stand-in for train_epoch's tqdm bar: `total` steps, hidden when `disable` (another
    rank's), keeping the fields last set on it."""

    def __init__(self, total: int, disable: bool = False):
        self.total, self.disable, self.postfix = total, disable, None

    def set_postfix(self, refresh, **fields):
        self.postfix = fields

    def update(self):
        pass


def emulate_arch(monkeypatch, arch: int) -> None:
    """Kernels built from here on see __CUDA_ARCH__ == arch (fresh modules; the disk cache keeps both)."""
    monkeypatch.setenv("CNN_GPU_EMU_ARCH", str(arch))
    monkeypatch.setattr(backend, "_modules", {})
    monkeypatch.setattr(backend, "_functions", {})


def record_launches(monkeypatch) -> list:
    """The (family, kernel) of every backend.launch from now on, in order (the launches still run)."""
    launched = []
    real = backend.launch

    def launch(be, family, dtype, kernel, *args, **kwargs):
        launched.append((family, kernel))
        return real(be, family, dtype, kernel, *args, **kwargs)
    monkeypatch.setattr(backend, "launch", launch)
    return launched


def assert_network_matches_torch(torch, model, theirs, x, dy_seed=9):
    """A float32 cnn_gpu `model` and PyTorch's `theirs` (given the model's parameters in float64) on x
    and a drawn dy: y, dx and every parameter's gradient within float32's tolerance."""
    state = model.state_dict()
    theirs.double().load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in state.items()})
    y = model(x)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    assert_close(y, ty.detach().numpy().astype(np.float32), np.float32, "y")
    assert_close(dx, tx.grad.numpy().astype(np.float32), np.float32, "dx")
    for (name, ours), theirs_p in zip(model.named_parameters(), theirs.parameters()):
        assert_close(ours.grad, theirs_p.grad.numpy().astype(np.float32), np.float32, name)


def assert_transposed_layer_matches_torch(torch, ours, theirs, x, output_size, what):
    """A ConvTranspose layer's output (of output_size's shape), dx, dweight and dbias against the torch.nn
    layer's in float64, theirs given our weights first."""
    theirs.load_state_dict({name: torch.tensor(value) for name, value in ours.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x, output_size=output_size), theirs(xt, output_size=output_size)
    assert y.shape == tuple(yt.shape), what
    assert_close(y, yt.detach().numpy(), np.float64, f"{what} y")
    dy = np.random.default_rng(zlib.crc32(what.encode())).standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    assert_close(ours.backward(dy), xt.grad.numpy(), np.float64, f"{what} dx")
    assert_close(ours.weight.grad, theirs.weight.grad.numpy(), np.float64, f"{what} dweight")
    if ours.bias is not None:
        assert_close(ours.bias.grad, theirs.bias.grad.numpy(), np.float64, f"{what} dbias")


def assert_cross_entropy_gradients_by_finite_differences(logits, labels, ignore_index, weight, probabilities, be):
    """F.cross_entropy's dlogits (label smoothing 0.2, `weight`) against float64 central differences of its
    loss, for class labels with `ignore_index` and for class probabilities (`probabilities` normalised over
    dim 1), each reduction (the gradient of the sum for "none")."""
    from cnn_gpu import functional as F
    from cnn_gpu.gradcheck import gradcheck
    for target, ignore in ((labels, ignore_index), (probabilities / probabilities.sum(axis=1, keepdims=True), -100)):
        for reduction in ("mean", "sum", "none"):
            def loss():
                value, _ = F.cross_entropy(logits, target, weight, ignore, reduction, 0.2, backend=be)
                return float(np.sum(value))
            _, grad = F.cross_entropy(logits, target, weight, ignore, reduction, 0.2, backend=be)
            report = gradcheck(loss, [logits], [grad])
            assert report.max_rel_error < 1e-6, f"{be} {reduction} {target.dtype}: {report}"


def assert_refused_before_any_launch(monkeypatch, call, error, message):
    """call() raises `error` matching `message` with no kernel launched, on emu where it is available."""
    refuse_launches(monkeypatch)
    with backend.use_backend("emu" if "emu" in backend.available_backends() else "numpy"):
        with pytest.raises(error, match=message):
            call()


def assert_within_a_float16_rounding(actual, expected, what=""):
    """A float16 result within a rounding of the FP32 one it was computed from, summed in another order
    (the kernels' against BLAS's): relative 2e-3, and 2e-3 of the largest expected magnitude."""
    actual, expected = to_host(actual), np.asarray(expected, np.float32)
    assert actual.dtype == np.float16, what
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=2e-3,
                               atol=2e-3 * float(np.abs(expected).max()), err_msg=what)


def assert_refused_as_torch_refuses(monkeypatch, torch, call, theirs, operands, error, message):
    """PyTorch refuses theirs(torch, *operands) (any exception type), and call(*operands) raises `error`
    matching `message` with no kernel launched."""
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        theirs(torch, *operands)
    assert_refused_before_any_launch(monkeypatch, lambda: call(*operands), error, message)


def activation_and_gradient(op: str, options: dict, x, dy, be: str):
    """F.<op>(x, **options) and F.<op>_backward(dy, x, **options) on backend `be` as NumPy arrays (cuda:
    computed on CuPy copies): the element-wise activation tests' own results."""
    from cnn_gpu import functional as F
    if be == "cuda":
        x, dy = backend.array_module(be).asarray(x), backend.array_module(be).asarray(dy)
    return (to_host(getattr(F, op)(x, **options, backend=be)),
            to_host(getattr(F, op + "_backward")(dy, x, **options, backend=be)))


def torch_activation_and_gradient(torch, function, x, dy):
    """PyTorch's function(x) and its gradient given dy, as NumPy arrays of x's dtype."""
    xt = torch.tensor(x, requires_grad=True)
    yt = function(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def assert_kernel_runs_match(runs, expected, names, dtype, what=""):
    """Runs of a kernel family (emulated under every schedule, or repeated on the GPU; `runs`: tuples
    of NumPy results, None where absent) against the NumPy path's `expected`: each within a few
    roundings of the dtype times the largest value (2 eps for float16, whose outputs are rounded once;
    64 eps for the sums' orders otherwise), and the same bits in every run (fixed-order sums)."""
    eps = float(np.finfo(dtype).eps)
    for got, want, name in zip(runs[0], expected, names):
        assert (got is None) == (want is None), f"{what} {name}"
        if want is not None:
            scale = max(1.0, float(np.abs(want.astype(np.float64)).max()))
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0,
                                       atol=(2 if dtype == np.float16 else 64) * eps * scale,
                                       err_msg=f"{what} {name}")
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a is None or a.tobytes() == b.tobytes(), what
