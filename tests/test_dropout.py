"""Philox4x32-10 against Random123's published known-answer vectors (NumPy and the kernel header),
F.dropout / F.dropout_backward (the same mask bit for bit on numpy and emu, under every schedule with
guard zones; PyTorch's scaling, eval and p rules; the drop rate; finite differences) and nn.Dropout."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, checkpoint, nn, optim, philox
from cnn_gpu import functional as F
from cnn_gpu.gradcheck import check_op
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("single_torch_thread")
needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2), result (4).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def test_numpy_philox_known_answers():
    for counter, key, expected in KAT:
        assert tuple(int(v) for v in philox.philox4x32_10(counter, key)) == expected
    # vectorised: the same answers as a batch of counters
    counters = np.array([c for c, _, _ in KAT], dtype=np.uint32).T
    batch = philox.philox4x32_10(counters, KAT[1][1])
    assert tuple(int(word[1]) for word in batch) == KAT[1][2]


KAT_KERNEL = """
extern "C" __global__ void philox_kat(const unsigned int* input, unsigned int* output, int count)
{
    const int t = threadIdx.x;
    if (t >= count)
        return;
    const unsigned int* in = input + 6 * t;
    const Philox4 r = philox4x32_10(in[0], in[1], in[2], in[3], in[4], in[5]);
    for (int k = 0; k < 4; ++k)
        output[4 * t + k] = r.v[k];
}
"""


@needs_emu
def test_kernel_philox_known_answers():
    from cnn_gpu import emu
    header = (backend.kernel_dir() / "philox.cuh").read_text()
    kernel = emu.RawModule(code=header + KAT_KERNEL).get_function("philox_kat")
    inputs = np.array([list(c) + list(k) for c, k, _ in KAT], dtype=np.uint32)
    output = np.zeros((len(KAT), 4), dtype=np.uint32)
    kernel((1,), (32,), (inputs, output, np.int32(len(KAT))))
    np.testing.assert_array_equal(output, np.array([e for _, _, e in KAT], dtype=np.uint32))


def test_group_numbers_are_counter_based():
    """Element i of (seed, step) is lane i % 4 of the Philox call on counter (i // 4, step), key seed."""
    seed, step = 2**40 + 7, 2**33 + 5
    numbers = philox.element_numbers(seed, step, 11)
    for i in (0, 5, 10):
        group = i // 4
        words = philox.philox4x32_10((group, 0, step & 0xFFFFFFFF, step >> 32), (seed & 0xFFFFFFFF, seed >> 32))
        assert numbers[i] == words[i % 4]


# --- F.dropout ----------------------------------------------------------------------------------

SHAPES = [(1,), (3,), (4,), (5,), (2, 3, 5, 7), (1000,), (3, 1025)]
CASES = [dict(p=0.5, seed=0, step=0), dict(p=0.1, seed=2**40 + 3, step=7), dict(p=0.9, seed=12345, step=2**35 + 1),
         dict(p=1 / 3, seed=2**64 - 1, step=2**64 - 1), dict(p=1.0, seed=5, step=1)]


def reference(x, p, seed, step):
    """x * keep / (1 - p) written from the definition, element by element."""
    numbers = philox.element_numbers(seed, step, x.size)
    keep = np.array([int(v) >= round(p * 2**32) for v in numbers]).reshape(x.shape)
    real = x.dtype.type
    scale = real(0) if p == 1 else real(1) / real(1 - p)
    return x * (keep * scale).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_matches_the_definition(dtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(dtype)
        for case in CASES:
            y = F.dropout(x, case["p"], seed=case["seed"], step=case["step"], backend="numpy")
            assert y.dtype == dtype and y.shape == x.shape
            np.testing.assert_array_equal(y, reference(x, **case))


@needs_emu
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_emu_mask_is_the_numpy_mask_bit_for_bit(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(2)
    with emu.checking(schedule=schedule, seed=4, guard=True):
        for dtype in (np.float64, np.float32):
            for shape in SHAPES:
                x = rng.standard_normal(shape).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                for case in CASES:
                    args = (case["p"], case["seed"], case["step"])
                    y = F.dropout(x, args[0], seed=args[1], step=args[2], backend="emu")
                    assert y.tobytes() == F.dropout(x, args[0], seed=args[1], step=args[2]).tobytes()
                    dx = F.dropout_backward(dy, *args, backend="emu")
                    assert dx.tobytes() == F.dropout_backward(dy, *args, backend="numpy").tobytes()


@needs_emu
def test_a_number_equal_to_the_threshold_is_kept_on_every_backend():
    """keep is number >= threshold: p = number / 2^32 puts the threshold exactly on one element's
    number (dropout) and on one plane's (dropout2d), which must stay; a random p meets a number
    with odds 2^-32."""
    seed, step = 2**40 + 9, 6
    numbers = philox.element_numbers(seed, step, 12)
    x = np.random.default_rng(8).standard_normal((3, 4, 2, 3))
    for i in (1, 10):
        p = int(numbers[i]) / 2**32
        for be in ("numpy", "emu"):
            y = F.dropout(x.reshape(-1)[:12], p, seed=seed, step=step, backend=be)
            assert y[i] == x.reshape(-1)[i] * (1 / (1 - p)), (i, be)
            planes = F.dropout2d(x, p, seed=seed, step=step, backend=be)
            np.testing.assert_array_equal(planes[i // 4, i % 4], x[i // 4, i % 4] * (1 / (1 - p)), err_msg=f"{i} {be}")

@needs_emu
def test_grid_stride_loop_covers_every_group():
    x = np.random.default_rng(3).standard_normal(5001)
    y = np.empty_like(x)
    threshold, scale = 2**31, np.float64(2.0)
    backend.launch("emu", "dropout", x.dtype, "dropout_apply", (2,), (256,),
                   (x, y, np.int64(x.size), np.uint64(9), np.uint64(1), np.int64(threshold), scale))
    np.testing.assert_array_equal(y, F.dropout(x, 0.5, seed=9, step=1, backend="numpy"))


def test_drop_rate_scaling_and_masks():
    x = np.ones(200_000)
    for p in (0.1, 0.5, 0.8):
        y = F.dropout(x, p, seed=11)
        kept = y != 0
        # binomial: 5 standard deviations
        assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)
        np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    first, again = F.dropout(x, 0.5, seed=1, step=0), F.dropout(x, 0.5, seed=1, step=0)
    np.testing.assert_array_equal(first, again)
    for other in (F.dropout(x, 0.5, seed=1, step=1), F.dropout(x, 0.5, seed=2, step=0)):
        agreement = ((first != 0) == (other != 0)).mean()
        assert 0.45 < agreement < 0.55   # independent masks agree on about half the elements


def test_pytorch_rules():
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    assert F.dropout(x, 0.5, training=False, seed=0) is x
    assert F.dropout(x, 0.0, seed=0) is x
    assert not F.dropout(x, 1.0, seed=0).any()
    assert F.dropout_backward(x, 0.0, seed=0) is x
    special = np.array([np.nan, np.inf, -np.inf, 1.0] * 50)
    y = F.dropout(special, 0.5, seed=3)
    # dropped NaN / inf stay NaN (0 * inf) as PyTorch's x * mask * scale; kept ones are scaled
    assert np.isnan(y[0::4]).all() and np.isnan(y[1::4][y[1::4] != np.inf]).all()
    np.testing.assert_array_equal(np.unique(y[3::4]), [0.0, 2.0])


@pytest.mark.torch
def test_scale_is_pytorchs_bit_for_bit():
    torch = pytest.importorskip("torch")
    for dtype, torch_dtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
        for p in np.linspace(0.01, 0.95, 95):
            theirs = torch.nn.functional.dropout(torch.ones(4096, dtype=torch_dtype), float(p)).numpy()
            ours = F.dropout(np.ones(4096, dtype), float(p), seed=1)
            assert set(np.unique(ours)) == set(np.unique(theirs)), f"p={p} {np.dtype(dtype).name}"


def test_backward_regenerates_the_mask():
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((4, 50)), rng.standard_normal((4, 50))
    y = F.dropout(x, 0.3, seed=21, step=4)
    dx = F.dropout_backward(dy, 0.3, seed=21, step=4)
    np.testing.assert_array_equal(dx, np.where(y != 0, dy * (1 / (1 - 0.3)), 0.0))
    report = check_op(lambda x: F.dropout(x, 0.3, seed=21, step=4),
                      lambda dy, x: F.dropout_backward(dy, 0.3, 21, 4), [x])
    assert report.max_rel_error < 1e-8, str(report)


def test_bad_arguments():
    x = np.ones(4)
    for call, error, match in [
        (lambda: F.dropout(x, 1.5, seed=0), ValueError, "between 0 and 1"),
        (lambda: F.dropout(x, -0.1, seed=0), ValueError, "between 0 and 1"),
        (lambda: F.dropout(x, float("nan"), seed=0), ValueError, "finite"),
        (lambda: F.dropout(x, "0.5", seed=0), TypeError, "real number"),
        (lambda: F.dropout(x, 0.5, seed=-1), ValueError, "seed"),
        (lambda: F.dropout(x, 0.5, seed=2**64), ValueError, "seed"),
        (lambda: F.dropout(x, 0.5, seed=1.5), TypeError, "seed"),
        (lambda: F.dropout(x, 0.5, seed=0, step=-1), ValueError, "step"),
        (lambda: F.dropout(x.astype(np.int64), 0.5, seed=0), TypeError, "float32 or float64"),
        (lambda: F.dropout_backward(x, 0.5, seed=None), TypeError, "seed"),
        (lambda: F.dropout_backward(x, 0, seed=-1), ValueError, "seed"),   # p = 0 checks as the forward does
        (lambda: F.dropout_backward(x, 0, seed=0, step=2**64), ValueError, "step"),
    ]:
        with pytest.raises(error, match=match):
            call()
    layer = nn.Dropout(0.5, seed=0)
    layer.step = np.array(np.iinfo(np.int64).max)
    with pytest.raises(OverflowError, match="step counter is at int64's maximum"):
        layer(x)   # refused before any work, where it failed counting after computing the output
    assert layer._saved is None
    with pytest.raises(TypeError):
        F.dropout(x, 0.5)   # the seed is required


# --- nn.Dropout ---------------------------------------------------------------------------------

def test_layer_steps_and_reproducibility():
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((3, 40)), rng.standard_normal((3, 40))
    nn.init.manual_seed(3)
    layer = nn.Dropout(0.25)
    nn.init.manual_seed(3)
    twin = nn.Dropout(0.25)
    assert layer.seed == twin.seed
    first = layer(x)
    np.testing.assert_array_equal(layer.backward(dy), F.dropout_backward(dy, 0.25, layer.seed, 0))
    second = layer(x)
    assert layer.step == 2 and not np.array_equal(first != 0, second != 0)
    np.testing.assert_array_equal(first, twin(x))
    layer.backward(dy)   # (the second forward's pair)
    layer.eval()
    assert layer(x) is x and layer.backward(dy) is dy and layer.step == 2
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(2)
    with pytest.raises(TypeError, match="seed"):
        nn.Dropout(0.5, seed=1.5)   # never truncated to another seed
    with pytest.raises(ValueError, match="seed"):
        nn.Dropout(0.5, seed=-1)



def test_p_zero_still_advances_the_step():
    """API.md: the layer advances its step on every training call, p = 0 included, so that a p
    raised later (a schedule that turns dropout on) draws the masks of a layer built with it."""
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((2, 30)), rng.standard_normal((2, 30))
    off, on = nn.Dropout(0.0, seed=4), nn.Dropout(0.5, seed=4)
    for _ in range(3):
        assert off(x) is x and off.backward(dy) is dy
        on(x)
    assert int(off.step) == int(on.step) == 3
    off.p = 0.5
    np.testing.assert_array_equal(off(x), on(x))
    off.eval()
    assert off(x) is x and int(off.step) == 4


def _dropout_net():
    nn.init.manual_seed(21)     # the same weights and dropout seed for every run
    model = nn.Sequential(nn.Linear(6, 16, dtype=np.float64), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 3, dtype=np.float64))
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _train(model, optimizer, batches):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        model.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()


def check_a_resumed_run(make_net, batches, tmp_path):
    """A run checkpointed after two batches and resumed (make_net's model and optimizer, its
    dropout layer at index 2) ends with the bits of the uninterrupted run: the step is saved."""
    whole, whole_optimizer = make_net()
    _train(whole, whole_optimizer, batches)

    first, first_optimizer = make_net()
    _train(first, first_optimizer, batches[:2])
    checkpoint.save(tmp_path / "run.npz", first.state_dict(), first_optimizer.state_dict(), {"epoch": 1})
    model_state, optimizer_state, _ = checkpoint.load(tmp_path / "run.npz")
    assert model_state["2.step"].dtype == np.int64 and int(model_state["2.step"]) == 2
    resumed, resumed_optimizer = make_net()
    resumed.load_state_dict(model_state)
    resumed_optimizer.load_state_dict(optimizer_state)
    _train(resumed, resumed_optimizer, batches[2:])

    assert int(resumed[2].step) == int(whole[2].step) == len(batches)
    for (name, ours), theirs in zip(resumed.state_dict().items(), whole.state_dict().values()):
        assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes(), name


def test_a_resumed_run_draws_the_masks_of_an_uninterrupted_one(tmp_path):
    rng = np.random.default_rng(22)
    check_a_resumed_run(_dropout_net, [(rng.standard_normal((8, 6)), rng.integers(0, 3, 8)) for _ in range(5)],
                        tmp_path)


def test_a_state_dict_from_before_the_step_buffer_loads_as_step_0():
    model, _ = _dropout_net()
    _train(model, optim.SGD(model.parameters(), lr=0.1), [(np.ones((2, 6)) * 0.5, np.array([0, 2]))] * 3)
    old = {name: value for name, value in model.state_dict().items() if name != "2.step"}
    fresh, _ = _dropout_net()
    fresh[2].step = np.array(7, np.int64)
    fresh.load_state_dict(old)
    assert int(fresh[2].step) == 0
    for name, value in old.items():
        assert fresh.state_dict()[name].tobytes() == value.tobytes(), name
    del old["0.weight"]                 # only the newer buffer may be missing
    with pytest.raises(ValueError, match="missing keys: 0.weight$"):
        fresh.load_state_dict(old)
    # a load that is not strict (a part of a model) leaves what it lacks as it is, the step too
    fresh[2].step = np.array(7, np.int64)
    assert fresh.load_state_dict(old, strict=False).missing_keys == ["0.weight", "2.step"]
    assert int(fresh[2].step) == 7


@pytest.mark.parametrize("bad", [2.9, -1, np.nan, 2.0**64])
def test_a_state_dict_with_a_fractional_or_negative_step_is_refused_whole(bad):
    """Counts stay whole and non-negative; a refused load changes nothing (here: the weights)."""
    model, _ = _dropout_net()
    state = model.state_dict()
    weights = model.state_dict()["0.weight"].copy()
    state["0.weight"] = state["0.weight"] + 1.0
    state["2.step"] = np.array(bad)
    with pytest.raises(ValueError, match=r"2\.step: a count"):
        model.load_state_dict(state)
    assert model.state_dict()["0.weight"].tobytes() == weights.tobytes()
    state["2.step"] = np.array(5.0)     # a whole float count is fine
    model.load_state_dict(state)
    assert int(model[2].step) == 5


def test_moving_a_model_leaves_the_step_counters_on_the_host(monkeypatch):
    """On cuda a CuPy step would make every training call wait for the GPU to read it, and a CuPy
    num_batches_tracked would cost a launch a step (and a read with momentum=None)."""
    from cnn_gpu.nn import module
    moved = []
    monkeypatch.setattr(module, "to_backend_array", lambda array, backend: moved.append(array) or array)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Dropout(0.5, seed=5)).to("numpy")
    assert any(array is model[0].running_mean for array in moved)
    assert not any(array is model[0].num_batches_tracked or array is model[1].step for array in moved)


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_the_step_is_a_numpy_counter_on_cuda():
    import cupy
    layer = nn.Dropout(0.5, seed=5).to("cuda")
    layer(cupy.asarray(np.random.default_rng(23).standard_normal((2, 8))))
    assert isinstance(layer.step, np.ndarray) and int(layer.step) == 1
    norm = nn.BatchNorm2d(3, momentum=None).to("cuda")
    norm(cupy.asarray(np.random.default_rng(24).standard_normal((2, 3, 4, 4)).astype(np.float32)))
    assert isinstance(norm.num_batches_tracked, np.ndarray) and int(norm.num_batches_tracked) == 1


@needs_emu
def test_layer_on_emu_gives_the_numpy_masks():
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 5)).astype(np.float32)
    layers = [nn.Dropout(0.5, seed=99).to(be) for be in ("numpy", "emu")]
    for _ in range(2):
        a, b = (layer(x) for layer in layers)
        assert_close(a, b, np.float32, "dropout layer")
        assert a.tobytes() == b.tobytes()


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_cuda_mask_is_the_numpy_mask_bit_for_bit():
    import cupy
    rng = np.random.default_rng(8)
    for dtype in (np.float64, np.float32):
        for shape in SHAPES:
            x = rng.standard_normal(shape).astype(dtype)
            for case in CASES:
                args = (case["p"], case["seed"], case["step"])
                y = F.dropout(cupy.asarray(x), args[0], seed=args[1], step=args[2])
                assert y.get().tobytes() == F.dropout(x, args[0], seed=args[1], step=args[2]).tobytes()
                dx = F.dropout_backward(cupy.asarray(x), *args)
                assert dx.get().tobytes() == F.dropout_backward(x, *args).tobytes()
