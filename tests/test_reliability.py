"""Reliability classes of issue 13: kernel launches take only arrays laid out as the kernels assume
(or refuse them before anything runs), optimizer steps are all or nothing, sizes past 32 bits are
refused before any copy, hyper-parameters must be finite, the kernel sweeps and `cnn-gpu check`
catch an out-of-bounds kernel through guard zones, and `why_unavailable("cuda")` names what a GPU
machine lacks (checked with fakes of CuPy: there is no GPU here)."""
from __future__ import annotations

import functools
import math
import re
import sys
import tomllib
import tracemalloc
from pathlib import Path

import types

import numpy as np
import pytest

import cnn_gpu.functional as F
from cnn_gpu import backend, launch_checks, nn, optim
from cnn_gpu.gpu import _grid
from cnn_gpu.gpu import optim as gpu_optim
from cnn_gpu.nn import Parameter
from helpers import fake_cupy

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
KERNEL_BACKENDS = ["numpy", pytest.param("emu", marks=needs_emu)]
REPO = Path(__file__).resolve().parents[1]


# --- launches check every argument against the kernel's declaration -----------------------------

def test_every_kernel_declaration_is_understood():
    for path in backend.kernel_files():
        signatures = launch_checks.parse_signatures(backend.kernel_source(path.stem))
        assert signatures, f"no kernels found in {path.name}"
        for kernel, parameters in signatures.items():
            for p in parameters:
                assert p.ctype in ("REAL", "acc_t") or p.ctype in launch_checks.C_TYPES, f"{kernel}: {p}"


@needs_emu
def test_parsed_signatures_agree_with_the_compiler():
    """Names, count, pointer-ness and types of every kernel's parameters, as g++ sees them: in the
    float32 build (every kernel file has one) and the float16 build of backend.FLOAT16_FAMILIES
    (REAL float16, acc_t float32); every parsed kernel is in one of them."""
    from cnn_gpu import emu
    for path in backend.kernel_files():
        source = backend.kernel_source(path.stem)
        dtypes = (np.float32, np.float16) if path.stem in backend.FLOAT16_FAMILIES else (np.float32,)
        built = set()
        for dtype in dtypes:
            module = emu.RawModule(code=source, options=backend.dtype_options(dtype))
            types = {"REAL": np.dtype(dtype), "acc_t": backend.compute_dtype(dtype)}
            for kernel, parameters in launch_checks.parse_signatures(source).items():
                if kernel not in module.kernel_names:   # in the other build only (#if REAL_IS_HALF)
                    continue
                built.add(kernel)
                compiled = module.get_function(kernel)
                assert [p.name for p in parameters] == compiled.parameter_names, kernel
                codes = []
                for p in parameters:
                    dtype_of = types[p.ctype] if p.ctype in types else np.dtype(launch_checks.C_TYPES[p.ctype])
                    codes.append(("*" if p.pointer else "") + f"{dtype_of.kind}{dtype_of.itemsize}")
                assert codes == compiled.parameter_codes, kernel
        assert built == set(launch_checks.parse_signatures(source)), path.name


def _sgd(param, grad):
    gpu_optim.sgd_step("emu", param, grad, None, 0.5, 0.0, 0.0, False, True)


@needs_emu
@pytest.mark.parametrize("make_param, message", [
    (lambda base: np.asfortranarray(base), "C-contiguous"),
    (lambda base: base[:, ::2], "C-contiguous"),
    (lambda base: np.lib.stride_tricks.as_strided(base, shape=base.shape, strides=(0, 0)), "C-contiguous"),
    (lambda base: base.copy(), None),   # a C-contiguous copy is updated as usual
], ids=["fortran", "strided", "zero_stride", "c_copy"])
def test_in_place_kernels_refuse_layouts_they_would_misread(make_param, message):
    """A Fortran-ordered parameter was updated as if C-ordered (silently wrong), a strided view was
    written past its elements, a zero-stride one killed the process."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((6, 8))
    param = make_param(base)
    before, base_before = param.copy(), base.copy()
    grad = rng.standard_normal(param.shape)
    if message is None:
        _sgd(param, grad)
        np.testing.assert_allclose(param, before - 0.5 * grad, rtol=1e-15)
        return
    with pytest.raises(ValueError, match=message):
        _sgd(param, grad)
    np.testing.assert_array_equal(base, base_before)
    np.testing.assert_array_equal(param, before)


@needs_emu
def test_launches_refuse_read_only_outputs_aliasing_and_wrong_types():
    rng = np.random.default_rng(2)
    param = rng.standard_normal(10)
    before = param.copy()
    read_only = param.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _sgd(read_only, rng.standard_normal(10))
    with pytest.raises(ValueError, match="'param0' is written in place but shares memory with argument 'grad0'"):
        _sgd(param, param)
    x, y = rng.standard_normal(10), np.zeros(10)
    y.flags.writeable = False   # refused by the launch itself, whose launcher checks nothing (sgd_step does)
    with pytest.raises(ValueError, match="kernel 'relu_forward' argument 'y' is written in place but the array is "
                                         "read-only"):
        backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,), (x, y, np.int64(10)))
    y.flags.writeable = True
    with pytest.raises(ValueError, match="shares memory"):
        backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,), (x[:8], x[2:], np.int64(8)))
    with pytest.raises(TypeError, match="'y' must be a float64 array"):
        backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,),
                       (x, np.zeros(10, np.float32), np.int64(10)))
    with pytest.raises(TypeError, match=r"'n' \(long long\) takes np.int64, got int"):
        backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,), (x, y, 10))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,), (x, y))
    np.testing.assert_array_equal(param, before)
    np.testing.assert_array_equal(read_only, before)


@needs_emu
def test_a_non_contiguous_input_is_read_through_a_copy():
    x = np.random.default_rng(3).standard_normal((5, 12))[:, ::3]
    y = np.empty(x.shape)
    backend.launch("emu", "elementwise", np.float64, "relu_forward", (1,), (256,), (x, y, np.int64(x.size)))
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@needs_emu
@pytest.mark.parametrize("dtype, mode", [(np.float16, "fp32"), (np.float32, "tf32")])
def test_convolutions_of_misaligned_views_match_aligned_copies(dtype, mode):
    """Arrays that start off 16 bytes into their allocation (a view into a flat buffer, a batch
    slice) reach the tensor-core kernels as they are, and the emulator stages them as misaligned as
    a GPU holds them: a 16-byte load from one faults here as it would there. Every pass gives what
    aligned copies give (8x8 images: aligned, dy's rows take 16-byte loads)."""
    import cnn_gpu
    rng = np.random.default_rng(46)

    def misaligned(shape):
        return rng.standard_normal(math.prod(shape) + 1).astype(dtype)[1:].reshape(shape)

    x, w, dy = misaligned((2, 16, 8, 8)), misaligned((32, 16, 3, 3)), misaligned((2, 32, 8, 8))
    with cnn_gpu.math_mode(mode):
        passes = [(F.conv2d(*a, padding=1, backend="emu"), *F.conv2d_backward(dy_, *a, padding=1, backend="emu")[:2])
                  for dy_, a in ((dy, (x, w)), (dy.copy(), (x.copy(), w.copy())))]
    for got, want in zip(*passes):
        np.testing.assert_array_equal(got, want)


@needs_emu
def test_losses_of_transposed_inputs_match_numpy():
    """The gradient arrays used to copy the input's Fortran layout, which the kernels refuse to
    write (they must be C-contiguous)."""
    from cnn_gpu import functional as F
    rng = np.random.default_rng(8)
    logits, target = rng.standard_normal((5, 7)).T, rng.integers(0, 5, 7)
    pred, wanted = rng.standard_normal((4, 6)).T, rng.standard_normal((6, 4))
    for name, args in (("cross_entropy", (logits, target)), ("mse_loss", (pred, wanted))):
        loss, grad = getattr(F, name)(*args, backend="emu")
        expected_loss, expected_grad = getattr(F, name)(*args, backend="numpy")
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


# --- optimizer steps: all or nothing; state and checkpoints laid out for the kernels ---------------

def _two_params(rng):
    good, bad = Parameter(rng.standard_normal((3, 4))), Parameter(rng.standard_normal((4, 3)))
    good.grad, bad.grad = rng.standard_normal((3, 4)), rng.standard_normal((4, 3))
    return good, bad


def _read_only(p, good):
    p.data.flags.writeable = False


def _fortran(p, good):
    p.data = np.asfortranarray(p.data)


def _shares_memory(p, good):
    p.data = good.data.reshape(4, 3)


def _integer(p, good):
    p.data, p.grad = p.data.astype(np.int64), p.grad.astype(np.int64)


@pytest.mark.parametrize("be", KERNEL_BACKENDS)
@pytest.mark.parametrize("spoil, error", [(_read_only, ValueError), (_fortran, ValueError),
                                          (_shares_memory, ValueError), (_integer, TypeError)],
                         ids=["read_only", "fortran", "shared_memory", "integer"])
@pytest.mark.parametrize("kind", ["SGD", "Adam", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta"])
def test_an_optimizer_step_changes_nothing_when_any_parameter_is_bad(kind, spoil, error, be):
    """numpy used to update the good parameter and then fail on the read-only one. The state is as
    constructed (empty, or Adagrad's sums made at construction)."""
    rng = np.random.default_rng(4)
    good, bad = _two_params(rng)
    spoil(bad, good)
    good_before, bad_before = good.data.copy(), bad.data.copy()
    optimizer = getattr(optim, kind)([good, bad], lr=0.1, backend=be)
    state_before = [{key: np.copy(value) for key, value in entry.items()} for entry in optimizer.state]
    with pytest.raises(error):
        optimizer.step()
    np.testing.assert_array_equal(good.data, good_before)
    np.testing.assert_array_equal(bad.data, bad_before)
    assert [sorted(entry) for entry in optimizer.state] == [sorted(entry) for entry in state_before]
    for entry, before in zip(optimizer.state, state_before):
        for key, value in entry.items():
            np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_shared_memory_is_found_among_many_parameters():
    """Past a few arrays the step compares sorted address spans instead of pairs."""
    rng = np.random.default_rng(9)
    params = [Parameter(rng.standard_normal(6)) for _ in range(6)]
    shared_grad = rng.standard_normal(6)
    for p in params:
        p.grad = shared_grad   # gradients are only read: one array may serve them all
    optim.SGD(params, lr=0.1, momentum=0.9).step()
    params[4].data = params[1].data[::-1][::-1]   # another view of the same memory
    before = [p.data.copy() for p in params]
    with pytest.raises(ValueError, match="parameter [14] is written in place but shares memory with parameter [14]"):
        optim.SGD(params, lr=0.1, momentum=0.9).step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


def test_the_overlap_searches_find_exactly_the_written_arrays_sharing_memory():
    """Launches compare their arrays pair by pair, optimizer steps sweep sorted spans, and both first
    set aside arrays of different owners (_first_overlap): on random slices of one buffer, of a
    copy of it seen through a memoryview (memory of unknown owner, which may alias anything) and
    separate arrays, all three find a conflict exactly when one exists."""
    rng = np.random.default_rng(11)
    buffer = rng.standard_normal(64)
    lent = np.frombuffer(memoryview(buffer))   # the same memory, its owner unknown
    conflicts = unknown = 0
    for _ in range(600):
        arrays = []
        for k in range(rng.integers(2, 8)):
            start = int(rng.integers(0, 63))
            end = int(rng.integers(start + 1, 65))
            source = rng.random()
            part = buffer[start:end] if source < 0.6 else lent[start:end] if source < 0.7 else rng.standard_normal(4)
            arrays.append((f"a{k}", part, bool(rng.random() < 0.4)))
        truth = {(m, n) for i, (m, a, w) in enumerate(arrays) for n, b, v in arrays[i + 1:]
                 if (w or v) and np.shares_memory(a, b)}
        written = [i for i, (_, _, w) in enumerate(arrays) if w]
        arrays_by_name = {name: (a, w) for name, a, w in arrays}
        for found in (launch_checks._overlap_by_pairs(arrays, written), launch_checks._overlap_by_sweep(arrays),
                      launch_checks._first_overlap(arrays)):
            assert (found is not None) == bool(truth)
            if found:
                (a, a_written), (b, _) = arrays_by_name[found[0]], arrays_by_name[found[1]]
                assert a_written and np.shares_memory(a, b)
        conflicts += bool(truth)
        unknown += any(launch_checks._owner(a) is None for _, a, _ in arrays)
    assert 150 < conflicts < 450 and unknown > 100   # every kind of case was drawn often


def test_a_launch_asks_for_the_current_gpu_once_and_refuses_an_array_of_another(monkeypatch):
    """checked_args on cuda: one device query a launch for all its arrays (it was one an array), and
    an array on another GPU still refused by name. Stand-ins for CuPy arrays (a class of module cupy)."""
    memory_kind = type("PooledMemory", (), {"__module__": "cupy.cuda.memory"})

    class FakeCupyArray:
        __module__ = "cupy._core.core"

        def __init__(self, n, device=0, dtype=np.float32):
            self.shape, self.size, self.nbytes = (n,), n, 4 * n
            self.dtype, self.strides = np.dtype(dtype), (4,)
            self.flags = types.SimpleNamespace(c_contiguous=True, writeable=True)
            self.device = types.SimpleNamespace(id=device)
            self.data = types.SimpleNamespace(mem=memory_kind(), ptr=4096 * (n + 1))

    asked = []
    monkeypatch.setattr(launch_checks, "current_device", lambda: asked.append(1) or 0)
    slot = lambda device=0: (FakeCupyArray(5, device), FakeCupyArray(5), np.int64(5))   # noqa: E731
    args = [a for k in range(8) for a in slot()] + [np.int32(8), np.float32(0.1), np.float32(0.0), np.int32(0)]
    launch_checks.checked_args("cuda", "optim", "sgd_step", np.float32, args)
    assert len(asked) == 1
    args[3:6] = slot(device=1)
    with pytest.raises(ValueError, match="argument 'param1' is on GPU 1 but the current device is GPU 0"):
        launch_checks.checked_args("cuda", "optim", "sgd_step", np.float32, args)


@needs_emu
def test_load_state_dict_of_fortran_arrays_trains_as_numpy_does():
    """load_state_dict kept Fortran-ordered arrays; the emu step then diverged from numpy by 0.036."""
    rng = np.random.default_rng(5)
    state = {"weight": np.asfortranarray(rng.standard_normal((4, 6))), "bias": rng.standard_normal(4)}
    x, dy = rng.standard_normal((7, 6)), rng.standard_normal((7, 4))
    results = {}
    for be in ("numpy", "emu"):
        layer = nn.Linear(6, 4, dtype=np.float64)
        layer.load_state_dict(state)
        assert layer.weight.data.flags.c_contiguous
        layer.to(be)
        opt = optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            layer.zero_grad()
            layer(x)
            layer.backward(dy)
            opt.step()
        results[be] = layer.weight.data
    np.testing.assert_allclose(results["emu"], results["numpy"], rtol=1e-12, atol=1e-12)


def test_module_to_makes_parameters_c_contiguous():
    layer = nn.Linear(3, 2, dtype=np.float64)
    layer.weight.data = np.asfortranarray(np.random.default_rng(6).standard_normal((2, 3)))
    expected = layer.weight.data.copy()
    layer.to("numpy")
    assert layer.weight.data.flags.c_contiguous
    np.testing.assert_array_equal(layer.weight.data, expected)


@pytest.mark.gpu
@pytest.mark.skipif(backend.cupy_or_none() is None, reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_optimizer_state_follows_module_to():
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    reference, moved = nn.Linear(3, 2, dtype=np.float64), nn.Linear(3, 2, dtype=np.float64)
    moved.load_state_dict(reference.state_dict())
    ref_opt, opt = optim.Adam(reference.parameters(), lr=0.1), optim.Adam(moved.parameters(), lr=0.1)
    for step in range(2):
        for layer, optimizer, be in ((reference, ref_opt, "numpy"), (moved, opt, "cuda" if step else "numpy")):
            layer.to(be)
            layer.zero_grad()
            layer(backend.array_module(be).asarray(x))
            layer.backward(backend.array_module(be).asarray(dy))
            optimizer.step()
    np.testing.assert_allclose(moved.weight.data.get(), reference.weight.data, rtol=1e-12)


# --- sizes past 32 bits are refused before any work ---------------------------------------------

def test_int_kernel_arguments_refuse_values_past_32_bits():
    fitting = _grid.i32(2**31 - 1, -2**31, True, np.int64(7))
    assert fitting == (2**31 - 1, -2**31, 1, 7) and all(type(v) is np.int32 for v in fitting)
    for past in (2**31, -2**31 - 1, np.int64(2**40)):
        with pytest.raises(ValueError, match=f"^{past} does not fit the kernels' 32-bit"):
            _grid.i32(5, past, 6)


@needs_emu
@pytest.mark.parametrize("call", [
    lambda x: F.conv2d(x, np.ones((1, 1, 1, 1), np.float32), backend="emu"),
    lambda x: F.max_pool2d(x, 2, backend="emu"),
], ids=["conv2d", "max_pool2d"])
def test_a_huge_broadcast_input_is_refused_before_it_is_copied(call):
    """The launchers' index-range checks used to run after the input's C-contiguous copy (8 GiB here)."""
    x = np.broadcast_to(np.float32(1), (1, 1, 2**16, 2**15))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="32-bit|2\\^31"):
            call(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


# --- non-finite hyper-parameters ----------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=NAN), lambda p: optim.SGD(p, lr=INF),
    lambda p: optim.SGD(p, lr=0.1, momentum=NAN), lambda p: optim.SGD(p, lr=0.1, weight_decay=INF),
    lambda p: optim.Adam(p, lr=NAN), lambda p: optim.Adam(p, eps=NAN), lambda p: optim.Adam(p, eps=INF),
    lambda p: optim.Adam(p, betas=(NAN, 0.999)), lambda p: optim.Adam(p, betas=(0.9, -INF)),
    lambda p: optim.Adam(p, weight_decay=NAN),
    lambda p: nn.LeakyReLU(NAN), lambda p: nn.LeakyReLU(-INF),
    lambda p: F.leaky_relu(np.ones(3), NAN), lambda p: F.leaky_relu_backward(np.ones(3), np.ones(3), INF),
])
def test_non_finite_hyper_parameters_are_refused(make):
    with pytest.raises(ValueError, match="finite|must be"):
        make([Parameter(np.ones(3))])


def test_non_numbers_are_type_errors():
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        nn.LeakyReLU(negative_slope="x")
    with pytest.raises(TypeError, match="lr"):
        optim.SGD([Parameter(np.ones(3))], lr="0.1")


@pytest.mark.parametrize("key, value", [("lr", INF), ("lr", NAN), ("weight_decay", NAN)])
def test_a_non_finite_value_set_between_steps_or_loaded_is_refused(key, value):
    param = Parameter(np.ones(3))
    param.grad = np.full(3, 0.5)
    optimizer = optim.Adam([param], lr=0.1)
    saved = optimizer.state_dict()
    optimizer.param_groups[0][key] = value
    with pytest.raises(ValueError, match="finite"):
        optimizer.step()
    np.testing.assert_array_equal(param.data, np.ones(3))
    saved["param_groups"][0][key] = value
    with pytest.raises(ValueError, match="finite"):
        optim.Adam([param], lr=0.1).load_state_dict(saved)


# --- max pool: several NaNs in a window (PyTorch's rule, checked without PyTorch) -----------------

def last_nan_max_pool(x, size):
    """Reference of max_pool2d(x, size, stride=1) on one plane: each window's taps in row-major
    order; a NaN is taken as a new maximum, so the last NaN wins, else the first largest value."""
    h, w = x.shape
    values, indices = np.empty((h - size + 1, w - size + 1)), np.empty((h - size + 1, w - size + 1), np.int32)
    for p in range(h - size + 1):
        for q in range(w - size + 1):
            best, where = -math.inf, -1
            for r in range(size):
                for s in range(size):
                    v = x[p + r, q + s]
                    if math.isnan(v) or v > best:
                        best, where = v, (p + r) * w + q + s
            values[p, q], indices[p, q] = best, where
    return values, indices


@pytest.mark.parametrize("be", KERNEL_BACKENDS)
def test_max_pool_windows_with_several_nans_report_the_last(be):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, 9))
    x[rng.random(x.shape) < 0.4] = np.nan
    want_values, want_indices = last_nan_max_pool(x, 3)
    assert (np.isnan(x[:3, :3]).sum() >= 2) and np.isnan(want_values).sum() > 5
    values, indices = F.max_pool2d(x[None, None], 3, stride=1, backend=be)
    np.testing.assert_array_equal(indices[0, 0], want_indices)
    np.testing.assert_array_equal(values[0, 0], want_values)


# --- the kernel sweeps and `cnn-gpu check` catch an out-of-bounds kernel --------------------------

@pytest.fixture
def kernels_one_past_the_end(monkeypatch):
    """The elementwise, loss and optim kernels (float64) rebuilt with every loop over n elements
    (GRID_STRIDE_LOOP, for_each_element) running to i <= n: a realistic off-by-one that only guard
    zones reliably catch."""
    from cnn_gpu import emu
    planted = {}
    for family in ("elementwise", "loss", "optim"):
        source = backend.kernel_source(family)
        mutated = (source.replace("i < (n);", "i <= (n);").replace("for (; i < n;", "for (; i <= n;")
                   .replace("first < n;", "first <= n;").replace("BLOCK_THREADS < n)", "BLOCK_THREADS <= n)"))
        assert mutated != source
        planted[family] = emu.RawModule(code=mutated, options=backend.dtype_options(np.float64))
    real = backend.kernel_function

    def kernel_function(be, family, dtype, kernel):
        if be == "emu" and family in planted and np.dtype(dtype) == np.float64:
            return planted[family].get_function(kernel)
        return real(be, family, dtype, kernel)

    monkeypatch.setattr(backend, "kernel_function", kernel_function)
    return emu.KernelFault


def _sweeps():
    import test_kernels_misc as misc
    f64 = np.float64
    return {"activations": lambda: misc.test_activations("sigmoid", (), (), f64),
            "bias_add": lambda: misc.test_bias_add(f64),
            "linear": lambda: misc.test_linear(f64),
            "mse": lambda: misc.test_mse(f64),
            "sgd_step": lambda: misc.test_sgd_step(misc.SGD_SETTINGS[1], f64),
            "sgd_momentum_step": lambda: misc.test_sgd_step(misc.SGD_SETTINGS[3], f64),
            "adam_step": lambda: misc.test_adam_step(0.01, True, False, f64),
            "adam_amsgrad_step": lambda: misc.test_adam_step(0.01, False, True, f64),
            "rmsprop_step": lambda: misc.test_rmsprop_step(misc.RMSPROP_SETTINGS[3], f64),
            **{f"{rule}_step": functools.partial(misc.test_rule_step, rule, settings, f64)
               for rule, settings in dict(misc.RULE_SETTINGS).items()}}


@needs_emu
@pytest.mark.parametrize("sweep", ["activations", "bias_add", "linear", "mse", "sgd_step", "sgd_momentum_step",
                                   "adam_step", "adam_amsgrad_step", "rmsprop_step", "adagrad_step", "adamax_step",
                                   "nadam_step", "radam_step", "adadelta_step"])
def test_kernel_sweeps_run_with_guard_zones(kernels_one_past_the_end, sweep):
    with pytest.raises(kernels_one_past_the_end, match="out-of-bounds"):
        _sweeps()[sweep]()


@needs_emu
@pytest.mark.parametrize("op", ["relu", "linear"])
def test_cnn_gpu_check_runs_with_guard_zones(kernels_one_past_the_end, op):
    from cnn_gpu import check, emu
    with emu.checking(guard=False):   # the check turns them on whatever the caller's block says
        result = check.check_op(check.OPS[op], "emu", "quick")
    assert not result.passed and "out-of-bounds" in result.failure


# --- installing for a GPU -----------------------------------------------------------------------

def test_gpu_extras_bring_the_cuda_libraries():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda12"] == ["cupy-cuda12x[ctk]>=14"]
    assert extras["cuda13"] == ["cupy-cuda13x[ctk]>=14"]


@pytest.fixture
def install_cupy(monkeypatch):
    def install(cupy):
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        backend._cuda_probe.cache_clear()
        return backend.why_unavailable("cuda")
    yield install
    backend._cuda_probe.cache_clear()


CUDA13_ARCHS = (75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)


@pytest.mark.parametrize("settings, expected", [
    (dict(), ""),
    (dict(nvrtc_error="libnvrtc.so.12: cannot open shared object file"), "NVRTC.*libnvrtc.so.12.*cuda12"),
    (dict(cublas_error="libcublas.so.12: cannot open shared object file"), "cuBLAS.*libcublas.so.12"),
    (dict(compile_error="Failed to find CUDA headers"),   # CuPy 14 without its [ctk] extra
     r"CuPy cannot compile a kernel \(Failed to find CUDA headers\)"),
    (dict(archs=("70",), cuda=13000, driver=13000, nvrtc=(13, 0), supported=CUDA13_ARCHS),
     r"NVRTC 13.0 cannot compile for GPU 0 \(sm_70.*V100 needs pip install 'cnn_gpu\[cuda12\]'"),
    (dict(archs=("90", "120"), nvrtc=(12, 4), supported=(50, 60, 70, 75, 80, 86, 89, 90)),
     r"NVRTC 12.4 is too old for GPU 1 \(sm_120"),
    (dict(archs=("89",), nvrtc=(12, 4), supported=(50, 60, 70, 75, 80, 86)), ""),   # sm_86 cubins run on sm_89
    (dict(driver=12020, cuda=13000), r"insufficient NVIDIA driver: it supports CUDA up to 12.2, CuPy runs on CUDA 13.0"
                                     r".*cnn_gpu\[cuda12\]"),
    (dict(driver=0), "no NVIDIA driver"),
    (dict(archs=()), "CuPy sees no GPU"),
], ids=["ok", "no_nvrtc", "no_cublas", "no_headers", "v100_on_cuda13", "nvrtc_too_old", "same_major_arch", "old_driver",
        "no_driver", "no_gpu"])
def test_why_cuda_is_unavailable(install_cupy, settings, expected):
    reason = install_cupy(fake_cupy(**settings))
    if expected:
        assert reason and re.search(expected, reason), reason
        assert backend.cupy_or_none() is None and "cuda" not in backend.available_backends()
    else:
        assert reason == "" and backend.cupy_or_none() is sys.modules["cupy"]


def test_a_cupy_that_does_not_import_is_reported(install_cupy):
    reason = install_cupy(None)   # sys.modules[name] = None makes `import name` fail
    assert reason.startswith("CuPy does not import") and "cnn_gpu[cuda12]" in reason


# --- the cuda backend runs the build the checks read ---------------------------------------------

class _RawModuleRecord:
    """A fake cupy.RawModule that keeps what it was made from."""
    def __init__(self, code=None, options=(), path=None):
        self.code, self.options, self.path = code, tuple(options), path


@pytest.fixture
def cuda_module(monkeypatch, tmp_path, install_cupy):
    """backend.kernel_module("cuda", family, dtype) against a fake CuPy whose GPUs have `archs`,
    CuPy's libnvrtc being `compiler` (default: the one the checks compile with), CUBIN files under
    tmp_path (the other caches stay where they are)."""
    from cnn_gpu import _cache, nvrtc
    if nvrtc.why_unavailable():
        pytest.skip(nvrtc.why_unavailable())
    folder = _cache.folder
    monkeypatch.setattr(_cache, "folder", lambda kind: tmp_path / kind if kind == "cubin" else folder(kind))
    monkeypatch.setattr(backend, "_modules", {})
    monkeypatch.setattr(backend, "_unchecked_reasons", set())

    def make(family, dtype, archs=("90",), compiler="checks"):
        cupy = fake_cupy(archs=archs)
        cupy.RawModule = _RawModuleRecord
        install_cupy(cupy)
        monkeypatch.setattr(nvrtc, "cupy_compiler", lambda: nvrtc.load() if compiler == "checks" else compiler)
        return backend.kernel_module("cuda", family, dtype)
    return make


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_cuda_backend_loads_the_checked_build(cuda_module, dtype, recwarn):
    """CuPy loads the CUBIN that cnn_gpu.nvrtc compiles in its fixed child process (the one
    `cnn-gpu kernels`, the spill gate and the SASS report read), not a compile of its own in this
    process, whose registers follow this process's heap."""
    from cnn_gpu import nvrtc
    module = cuda_module("reduce", dtype)
    assert module.code is None and module.path.endswith(".cubin")
    checked, _ = nvrtc.compile_as_backend(backend.kernel_source("reduce"), "reduce.cu", dtype, "sm_90")
    assert Path(module.path).read_bytes() == checked
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("archs, compiler, reason", [
    (("80", "90"), "checks", r"GPUs of 2 architectures: sm_80, sm_90"),
    (("120",), "checks", r"the checks cover sm_70, .*, not sm_120"),
    (("90",), None, r"CuPy's libnvrtc does not load in cnn_gpu.nvrtc or cannot target sm_90"),
], ids=["two_archs", "newer_arch", "no_compiler"])
def test_the_cuda_backend_compiles_in_process_where_no_checked_build_exists(cuda_module, archs, compiler, reason):
    """Then CuPy compiles the source with the backend's options, and one warning says why."""
    with pytest.warns(RuntimeWarning, match=r"CuPy compiles the kernels in this process \(" + reason) as caught:
        module = cuda_module("reduce", np.float32, archs, compiler)
        cuda_module("pool", np.float32, archs, compiler)   # the same reason: no second warning
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert module.path is None and module.code == backend.kernel_source("reduce")
    assert module.options == backend.NVRTC_OPTIONS + backend.dtype_options(np.float32)


def test_cubin_files_of_other_builds_stay_until_unused_for_a_month(cuda_module, tmp_path):
    """Another process's build (an edited kernel, another NVRTC) never replaces a file CuPy may still
    load on a device; a file unused for backend.CUBIN_KEPT_S goes."""
    import os
    import time
    folder = tmp_path / "cubin"
    folder.mkdir()
    recent, unused = folder / "reduce-float32-sm_90-0123.cubin", folder / "pool-float32-sm_90-4567.cubin"
    recent.write_bytes(b"another build")
    unused.write_bytes(b"an old build")
    old = time.time() - backend.CUBIN_KEPT_S - 60
    os.utime(recent, (old + 120, old + 120))
    os.utime(unused, (old, old))
    module = cuda_module("reduce", np.float32)
    assert recent.is_file() and not unused.exists() and Path(module.path).is_file()


def test_a_cubin_already_cached_loads_where_the_cache_is_read_only(cuda_module, monkeypatch, recwarn):
    first = cuda_module("reduce", np.float32)
    monkeypatch.setattr(backend, "_modules", {})

    def read_only(*_):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(backend.os, "utime", read_only)
    again = cuda_module("reduce", np.float32)
    assert again.path == first.path and again.code is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_the_cuda_backend_compiles_in_process_where_the_cubin_cannot_be_written(cuda_module, tmp_path):
    (tmp_path / "cubin").write_text("a file where the folder would be")
    with pytest.warns(RuntimeWarning, match=r"\(.*cubin is not writable\)"):
        module = cuda_module("reduce", np.float32)
    assert module.path is None and module.code == backend.kernel_source("reduce")


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_the_gpu_runs_the_checked_builds(monkeypatch):
    """On a GPU: every kernel of every build the launchers make is loaded from the child compile's
    CUBIN and has, as CuPy loaded it, the registers of that compile's ptxas report for this GPU, and
    no local memory where that build has no stack frame (no spill)."""
    import warnings
    from cnn_gpu import nvrtc
    for cache in ("_modules", "_functions"):   # loaded by this test, not by an earlier one
        monkeypatch.setattr(backend, cache, {})
    monkeypatch.setattr(backend, "_unchecked_reasons", set())
    cupy = backend.cupy_or_none()
    arch = f"sm_{backend.device_arch(cupy, cupy.cuda.runtime.getDevice())}"
    if arch not in nvrtc.ARCH_LIMITS:
        pytest.skip(f"no checked build for {arch}")
    options = backend.NVRTC_OPTIONS
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "CuPy compiles the kernels", RuntimeWarning)   # the fallback
        for path in backend.kernel_files():
            for dtype in (np.float32, np.float64, np.float16):
                if not backend.has_build(path.stem, dtype, arch):
                    continue
                module = backend.kernel_module("cuda", path.stem, dtype)
                assert module.code is None, f"{path.name}: compiled by CuPy, not loaded from the CUBIN"
                checked = nvrtc.compile_cubin(backend.kernel_source(path.stem), path.name, arch,
                                              options + backend.dtype_options(dtype), compiler=nvrtc.cupy_compiler())
                for report in nvrtc.reports_of(*checked, arch):
                    loaded = module.get_function(report.name).attributes
                    where = f"{path.name} {np.dtype(dtype).name} {report.name}"
                    assert loaded["num_regs"] == report.registers, where
                    assert report.stack_bytes or loaded["local_size_bytes"] == 0, where


def test_cupys_compiler_is_the_loaded_libnvrtc_of_cupys_version(install_cupy):
    """Of the libnvrtc copies this process has loaded (nvrtc.load() may pick another than CuPy's),
    the one whose version CuPy's NVRTC reports; None where none has it."""
    import os
    from cnn_gpu import nvrtc
    if nvrtc.why_unavailable():
        pytest.skip(nvrtc.why_unavailable())
    loaded = nvrtc.load()
    try:
        install_cupy(fake_cupy(nvrtc=loaded.version))
        nvrtc.cupy_compiler.cache_clear()
        found = nvrtc.cupy_compiler()
        assert found is not None and found.version == loaded.version
        assert os.path.realpath(found.path) in {os.path.realpath(path) for path in nvrtc._candidates_from_cupy()}
        install_cupy(fake_cupy(nvrtc=(loaded.version[0] + 1, 0)))
        nvrtc.cupy_compiler.cache_clear()
        assert nvrtc.cupy_compiler() is None
    finally:
        nvrtc.cupy_compiler.cache_clear()


def test_emu_outputs_start_poisoned():
    """The emu backend's empty arrays (every launcher's outputs and workspaces) hold NaN or the
    integer maximum, not the allocator's zeros, so a kernel that leaves part of its output unwritten
    fails where the expected value is 0 (a GPU's fresh memory holds old data)."""
    xp = backend.array_module("emu")
    assert np.isnan(xp.empty((3, 4), np.float32)).all() and np.isnan(xp.empty_like(np.zeros(5, np.float16))).all()
    assert (xp.empty(6, np.int32) == np.iinfo(np.int32).max).all()
    assert (xp.empty_like(np.zeros(2, np.uint64), shape=(7,)) == np.iinfo(np.uint64).max).all()
    assert xp.float32 is np.float32 and xp.zeros(2).dtype == np.float64 and backend.array_module("numpy") is np
