"""What the host's hot path remembers to make a training step's Python cheaper (benchmarks/host_overhead.py):
each memo gives what the code without it gives, refuses what it refuses, and forgets what changed."""
import dataclasses
import functools
import operator

import numpy as np
import pytest

from cnn_gpu import backend, launch_checks
from cnn_gpu.functional import geometry
from cnn_gpu.gpu import _grid


def test_i32_gives_the_same_scalars_from_its_memo_and_refuses_every_time():
    for _ in range(2):   # the second round from the memo
        ints = _grid.i32(5, True, np.int64(7), 3.9)
        assert ints == (5, 1, 7, 3) and all(type(i) is np.int32 for i in ints)
        assert _grid.i32(6, True, np.int64(7), 3.9) == (6, 1, 7, 3)
        with pytest.raises(ValueError, match="2147483648 does not fit"):
            _grid.i32(1, 2**31)
        with pytest.raises(TypeError):
            _grid.i32([1])   # unhashable: converted as it is, which int() refuses


def test_i64_gives_the_same_scalars_from_its_memo_and_refuses_every_time():
    for _ in range(2):   # the second round from the memo
        ints = _grid.i64(5, True, np.int32(7), 2**40)
        assert ints == (5, 1, 7, 2**40) and all(type(i) is np.int64 for i in ints)
        with pytest.raises(ValueError, match="9223372036854775808 does not fit the kernels' 64-bit"):
            _grid.i64(1, 2**63)
        with pytest.raises(TypeError):
            _grid.i64([1])


def test_real_and_acc_give_the_same_scalars_from_their_memo_a_zero_with_its_sign():
    for _ in range(2):   # the second round from the memo
        for dtype in (np.float16, np.dtype(np.float32), "float64"):
            values = _grid.real(dtype, 0.1, 3, True, 1e-5)
            assert all(type(v) is np.dtype(dtype).type for v in values)
            assert [v.item() for v in values] == [np.dtype(dtype).type(v).item() for v in (0.1, 3, 1, 1e-5)]
        assert type(_grid.acc(np.float16, 0.1)[0]) is np.float32 and type(_grid.acc("float64", 0.1)[0]) is np.float64
        for zero in (0.0, -0.0, 0, 0.0, -0.0):   # equal values: a zero's sign comes from its own value every time
            scalar, half = _grid.real(np.float32, zero, 0.5)
            assert scalar == 0 and np.signbit(scalar) == (str(zero) == "-0.0") and half == 0.5
    assert _grid.real(np.float64, np.array(2.5))[0] == 2.5   # unhashable: converted as it is


def test_real_keeps_conversions_of_zeros_too(monkeypatch):
    """SGD's usual weight decay 0 and dampening 1 - 0 reach acc() every step."""
    monkeypatch.setattr(_grid, "_real_memo", {})
    first = _grid.acc(np.float32, 0.01, 0.9, 0.0)
    assert _grid.acc(np.float32, 0.01, 0.9, 0.0) is first and len(_grid._real_memo) == 1
    assert np.signbit(_grid.acc(np.float32, 0.01, 0.9, -0.0)[2]) and len(_grid._real_memo) == 2


@pytest.mark.parametrize("convert, memo, make", [
    (_grid.i32, "_i32_memo", lambda v: (v, v + 1)), (_grid.i64, "_i64_memo", lambda v: (v, v + 1)),
    (_grid.real, "_real_memo", lambda v: (np.float32, v + 0.5))])
def test_scalar_memos_stay_within_their_size(monkeypatch, convert, memo, make):
    monkeypatch.setattr(_grid, "SCALAR_MEMO_SIZE", 3)
    monkeypatch.setattr(_grid, memo, {})
    for value in range(10):
        assert convert(*make(value))[-1] == make(value)[-1]
        assert 1 <= len(getattr(_grid, memo)) <= 3


needs_emu = pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason="the emu backend is not available here")


@needs_emu
def test_a_kernel_function_is_one_object_for_every_spelling_of_its_dtype(monkeypatch):
    monkeypatch.setattr(backend, "_functions", {})
    relu = backend.kernel_function("emu", "elementwise", np.float32, "relu_forward")
    for spelling in (np.dtype(np.float32), "float32", np.float32):
        assert backend.kernel_function("emu", "elementwise", spelling, "relu_forward") is relu
    assert backend.kernel_function("emu", "elementwise", np.float64, "relu_forward") is not relu


def test_checked_arguments_pass_as_given_or_copied_and_memory_of_unknown_owner_is_compared():
    check = functools.partial(launch_checks.checked_args, "emu", "elementwise", "relu_forward", np.float64)
    x, y = np.ones(8), np.zeros(8)
    args = (x, y, np.int64(8))
    assert all(map(operator.is_, check(args), args))
    strided = np.ones(16)[::2]
    checked = check((strided, y, np.int64(8)))
    assert checked[0] is not strided and checked[0].flags.c_contiguous and checked[1] is y
    buffer = np.zeros(16)
    lent = np.frombuffer(memoryview(buffer))   # the same memory, its owner unknown
    apart = (buffer[8:], lent[:8], np.int64(8))
    assert all(map(operator.is_, check(apart), apart))   # apart: passes, as given
    with pytest.raises(ValueError, match="'y' is written in place but shares memory with argument 'x'"):
        check((buffer[:8], lent[4:12], np.int64(8)))
    with pytest.raises(ValueError, match="'y' is written in place but shares memory with argument 'x'"):
        check((buffer[:8], buffer[4:12], np.int64(8)))


def test_a_conv_geometry_hashes_as_its_fields_once_and_a_changed_one_anew():
    g = geometry.conv_geometry((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1)
    again = geometry._conv_geometry((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1)   # not the memo's object
    assert again is not g and again == g and hash(again) == hash(g)
    assert hash(g) == hash(tuple(getattr(g, f.name) for f in dataclasses.fields(g)))
    padded = dataclasses.replace(g, H=10, padding=(0, 0))
    assert hash(padded) == hash(tuple(getattr(padded, f.name) for f in dataclasses.fields(padded)))
    assert {g: 1}[again] == 1 and padded not in {g: 1}


def test_an_optimizer_step_names_the_arrays_it_refuses_as_before():
    from cnn_gpu import optim
    from cnn_gpu.nn import Parameter
    rng = np.random.default_rng(3)
    params = [Parameter(rng.standard_normal(6)) for _ in range(3)]
    for p in params:
        p.grad = rng.standard_normal(6)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    opt.step()   # momentum buffers made
    params[0].grad = params[2].data[::-1][::-1]   # the same memory
    with pytest.raises(ValueError, match=r"^optimizer step: parameter 2 is written in place but shares memory with "
                                         r"the gradient of parameter 0; pass separate arrays$"):
        opt.step()
    params[0].grad = opt.state[1]["momentum_buffer"][:]
    with pytest.raises(ValueError, match=r"^optimizer step: state 'momentum_buffer' of parameter 1 is written in "
                                         r"place but shares memory with the gradient of parameter 0"):
        opt.step()
    params[0].grad = rng.standard_normal(6)
    opt.state[2]["momentum_buffer"].flags.writeable = False
    with pytest.raises(ValueError, match=r"^parameter 2: its state 'momentum_buffer' is updated in place, but the "
                                         r"array is read-only$"):
        opt.step()
    params[1].data.flags.writeable = False
    with pytest.raises(ValueError, match=r"^parameter 1: the parameter is updated in place, but the array is "
                                         r"read-only$"):
        opt.step()


def test_compute_dtype_answers_every_spelling_as_np_dtype_does(monkeypatch):
    monkeypatch.setattr(backend, "_compute_dtypes", {})
    for _ in range(2):   # the second round from the memo
        for spelling in (np.float16, np.dtype(np.float16), "float16", "e"):
            assert backend.compute_dtype(spelling) == np.float32
        for spelling in (np.float32, "float64", np.dtype(">f8")):
            assert backend.compute_dtype(spelling) == np.dtype(spelling)
        assert backend.compute_dtype([("a", "f2")]) == np.dtype([("a", "f2")])   # unhashable: as it is
    assert _grid.acc(np.float16, 0.1, -0.0) == (np.float32(0.1), np.float32(-0.0))
    assert np.signbit(_grid.acc(np.float16, -0.0)[0]) and type(_grid.real(np.float64, 1)[0]) is np.float64


def test_real_number_takes_and_refuses_what_it_did_with_floats_and_ints_passed_first():
    from fractions import Fraction
    from cnn_gpu.functional._checks import real_number
    for value in (0.5, 2, np.float32(0.5), np.int64(2), Fraction(1, 2)):
        assert real_number(value, "v") == float(value) and type(real_number(value, "v")) is float
    for value in (True, np.bool_(False), "1", None, 1j):
        with pytest.raises(TypeError, match="v must be a real number"):
            real_number(value, "v")
    with pytest.raises(ValueError, match="finite"):
        real_number(float("nan"), "v")


def test_batch_norm_channel_arrays_refuse_another_dtype_and_take_the_compute_type_where_allowed():
    from cnn_gpu.functional.batch_norm import _channel_array
    x = np.ones((2, 3, 4), np.float16)
    assert _channel_array(np.ones(3, np.float32), "save_mean", x, compute_too=True) is not None
    with pytest.raises(TypeError, match="weight has dtype float32 but x has dtype float16"):
        _channel_array(np.ones(3, np.float32), "weight", x)
    with pytest.raises(TypeError, match="save_mean has dtype float64 but x has dtype float16"):
        _channel_array(np.ones(3, np.float64), "save_mean", x, compute_too=True)


def test_resolve_tells_host_device_and_mixed_inputs_apart_as_before():
    device_array = type("ndarray", (), {"__module__": "cupy._core.core"})()   # a stand-in: its type's module
    host = np.ones(2)
    assert backend.resolve("emu", host, None, host) == "emu" and backend.resolve(None, None) == backend.get_backend()
    assert backend.resolve(None, host.view(np.memmap)) == backend.get_backend()   # a subclass: on the host too
    with pytest.raises(TypeError, match="inputs mix CuPy and NumPy arrays"):
        backend.resolve(None, host, device_array)
    with pytest.raises(TypeError, match="backend 'cuda' takes CuPy arrays; got NumPy arrays"):
        backend.resolve("cuda", host, None)
    with pytest.raises(TypeError, match="backend 'numpy' takes NumPy arrays; got CuPy arrays"):
        backend.resolve("numpy", None, device_array)


def test_launch_dims_are_python_ints_from_the_memo_too(monkeypatch):
    monkeypatch.setattr(backend, "_dims_memo", {})
    for _ in range(2):   # the second round from the memo
        for sizes, ints in (((np.int64(3), 1, 1), (3, 1, 1)), ((256,), (256,)), ([4, np.int32(2)], (4, 2))):
            dims = backend._dims(sizes)
            assert dims == ints and all(type(d) is int for d in dims)
        assert backend._dims((np.int64(5),)) == (5,) and backend._dims((0,)) == (0,)


def test_all_float16_passes_plain_arguments_over_and_finds_any_other_float_array():
    from cnn_gpu.functional._float16 import _all_float16
    x16, x32 = np.ones(3, np.float16), np.ones(3, np.float32)
    plain = (1, 2.5, "same", (1, 1), None, True)
    assert _all_float16((x16, *plain, np.arange(3)), {"backend": "emu", "bias": None}, ())   # int arrays: not floats
    assert not _all_float16((x16, *plain, x32), {}, ())
    assert not _all_float16((x16,), {"weight": np.ones(3)}, ())
    assert _all_float16((x16,), {"save_mean": x32}, ("save_mean",))
    assert not _all_float16((x16,), {"save_mean": np.ones(3)}, ("save_mean",))   # float64: not the compute type


def test_a_tuple_assigned_to_a_private_name_still_reaches_the_registries():
    """Module.__setattr__ passes a layer's saved tuple straight on, but not past a registered name."""
    from cnn_gpu import nn
    module = nn.Module()
    module.register_buffer("_counts", np.zeros(2))
    module._counts = (1, 2)
    assert module._buffers["_counts"] == (1, 2) and module._counts == (1, 2)
    module._weight = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="cannot assign tuple as parameter '_weight'"):
        module._weight = (1, 2)
    module._inner = nn.ReLU()
    with pytest.raises(TypeError, match="cannot assign tuple as child module '_inner'"):
        module._inner = (1, 2)
    module._saved = (3,)
    assert module._saved == (3,)
    assert "_saved" not in module._parameters and "_saved" not in module._modules and "_saved" not in module._buffers


def test_a_plan_memo_answers_from_one_lookup_stays_within_its_size_and_plans_unhashable_arguments_anew(monkeypatch):
    from cnn_gpu.gpu import _plan_cache
    monkeypatch.setattr(_plan_cache, "PLAN_MEMO_SIZE", 3)
    monkeypatch.setattr(_plan_cache, "_CACHES", [])
    calls = []

    @_plan_cache.memoized()
    def planner(size, *, tile=None):
        calls.append(size)
        return (size, tile)
    known = _plan_cache._CACHES[0]
    assert planner(1, tile="a") is planner(1, tile="a") and calls == [1]
    for size in range(10):
        assert planner(size) == (size, None)
        assert 1 <= len(known) <= 3
    assert planner([2]) == ([2], None) and planner([2]) == ([2], None) and calls[-2:] == [[2], [2]]
    _plan_cache.clear()
    assert not known
