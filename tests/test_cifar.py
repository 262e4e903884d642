"""CIFAR-10: both official file formats (written small here), the errors for missing or malformed
files, per-channel normalisation, the crop-and-flip augmentation (NumPy twin and kernel bit for
bit), ResNet-18, and `cnn-gpu train --model resnet18 --dataset cifar10` end to end on numpy and emu."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from cnn_gpu import backend, cifar, gradcheck, models, nn
from cnn_gpu.cli import main
from cnn_gpu.lr_scheduler import WarmupCosine

needs_emu = pytest.mark.skipif("emu" not in backend.available_backends(),
                               reason=f"emu backend unavailable: {backend.why_unavailable('emu')}")


def make_batches(rng, per_batch=6):
    """Six (uint8 data (n, 3072), labels) batches: five training batches and the test batch. Each
    class brightens its own channel a little, so the images are learnable."""
    batches = []
    for _ in range(cifar.TRAIN_BATCHES + 1):
        labels = rng.integers(0, 10, per_batch)
        images = rng.integers(0, 200, (per_batch, 3, 32, 32))
        images[np.arange(per_batch), labels % 3] += 5 * (labels[:, None, None] + 1)
        batches.append((images.reshape(per_batch, -1).astype(np.uint8), labels))
    return batches


def write_python(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(cifar.PYTHON_FILES, batches):
        entry = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))


def write_binary(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(cifar.BINARY_FILES, batches):
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())


@pytest.fixture(scope="module")
def batches():
    return make_batches(np.random.default_rng(1))


# --- loading ------------------------------------------------------------------------------------

def test_a_protocol_5_pickle_loads(tmp_path, batches):
    """pickle.HIGHEST_PROTOCOL rebuilds arrays from buffers (numpy's _frombuffer): refused before."""
    write_python(tmp_path / "p2", batches)
    folder = tmp_path / "p5"
    folder.mkdir()
    for name, (data, labels) in zip(cifar.PYTHON_FILES, batches):
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": list(map(int, labels))}, protocol=5))
    new, old = cifar.load_cifar10(folder), cifar.load_cifar10(tmp_path / "p2")
    np.testing.assert_array_equal(new.x_train, old.x_train)
    np.testing.assert_array_equal(new.y_test, old.y_test)


def test_an_empty_batch_of_protocol_2_loads(tmp_path):
    """Protocol 2 pickles an empty bytes object as builtins.bytes(), which the unpickler takes (a
    constructor of no consequence) where it refuses every other callable."""
    path = tmp_path / "empty"
    path.write_bytes(pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2))
    images, labels = cifar.read_python_batch(path)
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,)


def test_both_formats_in_every_place_give_the_same_data(tmp_path, batches):
    write_python(tmp_path / "py", batches)
    write_python(tmp_path / "py_parent" / "cifar-10-batches-py", batches)
    write_binary(tmp_path / "bin", batches)
    write_binary(tmp_path / "bin_parent" / "cifar-10-batches-bin", batches)
    loaded = [cifar.load_cifar10(tmp_path / name) for name in ("py", "py_parent", "bin", "bin_parent")]
    first = loaded[0]
    assert first.x_train.shape == (30, 3, 32, 32) and first.x_test.shape == (6, 3, 32, 32)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64 and first.num_classes == 10
    expected_train = np.concatenate([labels for _, labels in batches[:5]])
    np.testing.assert_array_equal(first.y_train, expected_train)
    np.testing.assert_array_equal(first.y_test, batches[5][1])
    for other in loaded[1:]:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(other, name), getattr(first, name))
    # the 3072 bytes are 1024 red, 1024 green, 1024 blue pixels, rows top to bottom
    raw = np.concatenate([data for data, _ in batches[:5]])
    mean, std = cifar.channel_statistics(raw.reshape(-1, 3, 32, 32))
    pixel = raw[7, 1024 + 32 * 5 + 9] / 255.0     # green, row 5, column 9 of image 7
    assert first.x_train[7, 1, 5, 9] == pytest.approx((pixel - mean[1]) / std[1], rel=1e-5)
    # per-channel normalisation with the training set's statistics
    np.testing.assert_allclose(first.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(first.x_train.std(axis=(0, 2, 3)), 1, rtol=1e-4)


def test_missing_files_say_what_was_looked_for(tmp_path, batches):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        cifar.load_cifar10(tmp_path / "nowhere")
    write_python(tmp_path / "partial", batches)
    (tmp_path / "partial" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as err:
        cifar.load_cifar10(tmp_path / "partial")
    message = str(err.value)
    for expected in ("data_batch_1", "test_batch", "data_batch_1.bin", "cifar-10-batches-py", "cifar-10-batches-bin"):
        assert expected in message
    assert message.endswith(f"; {tmp_path / 'partial'} lacks data_batch_3")   # the one file missing


@pytest.mark.parametrize("damage, match", [
    ("truncated_binary", "whole number"),
    ("label_out_of_range", "labels must be integers"),
    ("not_a_pickle", "not a CIFAR-10 python batch"),
    ("code_in_pickle", "refusing to load"),
    ("wrong_keys", "b'data' and b'labels'"),
    ("wrong_data_shape", "uint8 of shape"),
    ("scalar_labels", r"labels of shape \(\) for 2 images"),
    ("mixed_key_types", "b'data' and b'labels'"),
    ("ragged_data", "unreadable labels or data"),
    ("forged_size", "not a CIFAR-10 python batch \\(OverflowError"),   # helper-98: a traceback before
    ("bytes_of_a_size", r"refusing bytes\(1000000000,\)"),   # 30 bytes asking for a gigabyte
])
def test_malformed_files_are_refused(tmp_path, batches, damage, match):
    binary = damage in ("truncated_binary", "label_out_of_range")
    folder = tmp_path / damage
    (write_binary if binary else write_python)(folder, batches)
    target = folder / ("data_batch_2.bin" if binary else "data_batch_2")
    if damage == "truncated_binary":
        target.write_bytes(target.read_bytes()[:-1])
    elif damage == "label_out_of_range":
        raw = bytearray(target.read_bytes())
        raw[0] = 10
        target.write_bytes(bytes(raw))
    elif damage == "not_a_pickle":
        target.write_bytes(b"\x00garbage")
    elif damage == "code_in_pickle":
        target.write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    elif damage == "wrong_keys":
        target.write_bytes(pickle.dumps({b"pixels": 1}))
    elif damage == "scalar_labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": 3}))
    elif damage == "mixed_key_types":
        target.write_bytes(pickle.dumps({b"pixels": 1, "labels": 2, 3: 4}))
    elif damage == "ragged_data":
        target.write_bytes(pickle.dumps({b"data": [[1, 2], [3]], b"labels": [0, 1]}))
    elif damage == "bytes_of_a_size":   # protocol 2: bytes(10**9)
        target.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\xca\x9a;\x85R.")
    elif damage == "forged_size":   # BINBYTES8 claiming 2^64 - 1 bytes
        target.write_bytes(b"\x80\x04\x8e" + (2**64 - 1).to_bytes(8, "little"))
    else:
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=match):
        cifar.load_cifar10(folder)


# --- augmentation -------------------------------------------------------------------------------

def reference_crop_flip(x, seed, step, padding, flip):
    """Pixel by pixel from the definition: output (h, w) of image n reads input (h + oy - padding,
    w' + ox - padding), w' = W-1-w when flipped, 0 outside."""
    rows, cols, flips = cifar.crop_offsets(seed, step, len(x), padding)
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(n):
        for r in range(h):
            for col in range(w):
                source_r = r + rows[i] - padding
                source_c = (w - 1 - col if flip and flips[i] else col) + cols[i] - padding
                if 0 <= source_r < h and 0 <= source_c < w:
                    out[i, :, r, col] = x[i, :, source_r, source_c]
    return out


def test_crop_flip_matches_the_definition():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 5, 7))
    for padding, flip in [(4, True), (1, False), (0, True), (0, False)]:
        got = cifar.random_crop_flip(x, 11, 3, padding, flip)
        np.testing.assert_array_equal(got, reference_crop_flip(x, 11, 3, padding, flip))
    np.testing.assert_array_equal(cifar.random_crop_flip(x, 11, 3, 0, False), x)


def test_crop_flip_draws():
    rows, cols, flips = cifar.crop_offsets(5, 0, 20000, 4)
    for offsets in (rows, cols):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > 0.9 * 20000 / 9
    assert abs(flips.mean() - 0.5) < 0.02
    x = np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(cifar.random_crop_flip(x, 1, 2), cifar.random_crop_flip(x, 1, 2))
    assert not np.array_equal(cifar.random_crop_flip(x, 1, 2), cifar.random_crop_flip(x, 1, 3))
    with pytest.raises(ValueError, match="padding"):
        cifar.random_crop_flip(x, 1, 2, padding=-1)
    with pytest.raises(ValueError, match="seed"):
        cifar.random_crop_flip(x, -5, 2)
    with pytest.raises(ValueError, match="batch"):
        cifar.random_crop_flip(x[0], 1, 2)


@pytest.mark.parametrize("be", ["numpy", pytest.param("emu", marks=needs_emu)])
def test_shards_draw_what_the_whole_batch_draws(be):
    """A data-parallel rank augments its shard of the global batch with `first`, its offset there:
    the shards together are the batch one process augments (they drew the same crops before)."""
    x = np.random.default_rng(5).standard_normal((8, 3, 9, 9)).astype(np.float32)
    whole = cifar.random_crop_flip(x, 7, 12, 2)
    shards = [cifar.random_crop_flip(x[start:start + 3], 7, 12, 2, first=start, backend=be) for start in (0, 3, 6)]
    np.testing.assert_array_equal(np.concatenate(shards), whole)
    assert not np.array_equal(shards[1], cifar.random_crop_flip(x[3:6], 7, 12, 2, backend=be))
    with pytest.raises(ValueError, match="first"):
        cifar.random_crop_flip(x, 7, 12, first=-1)


@needs_emu
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_kernel_is_the_numpy_twin_bit_for_bit(schedule):
    from cnn_gpu import emu
    rng = np.random.default_rng(4)
    with emu.checking(schedule=schedule, seed=2, guard=True):
        for dtype in (np.float16, np.float32, np.float64):   # float16: --precision fp16's batches
            for shape, padding, flip in [((5, 3, 32, 32), 4, True), ((3, 2, 7, 5), 2, True),
                                         ((2, 1, 17, 19), 0, True), ((4, 3, 6, 6), 3, False)]:
                x = rng.standard_normal(shape).astype(dtype)
                got = cifar.random_crop_flip(x, 2**40 + 1, 77, padding, flip, backend="emu")
                assert got.tobytes() == cifar.random_crop_flip(x, 2**40 + 1, 77, padding, flip).tobytes()


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
def test_cuda_augmentation_is_the_numpy_twin():
    import cupy
    x = np.random.default_rng(10).standard_normal((64, 3, 32, 32)).astype(np.float32)
    got = cifar.random_crop_flip(cupy.asarray(x), 123, 4)
    assert got.get().tobytes() == cifar.random_crop_flip(x, 123, 4).tobytes()


# --- ResNet-18 ----------------------------------------------------------------------------------

def test_resnet18_architecture():
    model = models.build("resnet18", (3, 32, 32), 10, rng=0)
    # the CIFAR ResNet-18's well-known parameter count
    assert sum(p.data.size for p in model.parameters()) == 11_173_962
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 20 and all(c.bias is None for c in convs)   # 17 3x3 + 3 1x1 projections
    assert sorted({c.kernel_size for c in convs}) == [(1, 1), (3, 3)]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model.eval()
    assert model(x).shape == (2, 10)


def test_resnet18_gradients_by_finite_differences():
    # 8x8 images reach 1x1 in the last stage: a batch of 6 keeps that batch norm well conditioned
    model = models.build("resnet18", (3, 8, 8), 4, dtype=np.float64, rng=1, width=2)
    rng = np.random.default_rng(6)
    x, labels = rng.standard_normal((6, 3, 8, 8)), rng.integers(0, 4, 6)
    report = gradcheck.check_model(model, nn.CrossEntropyLoss(), x, labels, directions=1, elementwise_limit=8)
    assert report.max_rel_error < 1e-6, report


@needs_emu
def test_resnet18_step_on_emu_matches_numpy():
    rng = np.random.default_rng(7)
    x, labels = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 3, 4)
    results = []
    for be in ("numpy", "emu"):
        model = models.build("resnet18", (3, 8, 8), 3, dtype=np.float64, rng=2, width=4).to(be)
        loss_fn = nn.CrossEntropyLoss().to(be)
        loss = loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        results.append((loss, [p.grad for p in model.parameters()], model.state_dict()))
    (loss0, grads0, state0), (loss1, grads1, state1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-10)
    for g0, g1 in zip(grads0, grads1):
        np.testing.assert_allclose(g1, g0, rtol=1e-8, atol=1e-10)
    for key in state0:   # running statistics updated alike
        np.testing.assert_allclose(state1[key], state0[key], rtol=1e-10, atol=1e-12, err_msg=key)


# --- cnn-gpu train end to end -------------------------------------------------------------------

def _accuracy(output: str) -> float:
    match = re.search(r"test accuracy: ([\d.]+)%", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])   # fp16: float16 batches through the augmentation
def test_train_resnet18_on_cifar_files_numpy(tmp_path, capsys, precision):
    write_binary(tmp_path / "cifar-10-batches-bin", make_batches(np.random.default_rng(8), per_batch=16))
    argv = ["train", "--device", "numpy", "--model", "resnet18", "--dataset", "cifar10", "--data", str(tmp_path),
            "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--max-batches", "2",
            "--label-smoothing", "0.1", "--precision", precision]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "cifar10" in out and precision in out
    assert 0.0 <= _accuracy(out) <= 100.0


@needs_emu
def test_train_resnet18_one_batch_on_emu(tmp_path, capsys):
    write_python(tmp_path, make_batches(np.random.default_rng(9), per_batch=4))
    assert main(["train", "--device", "emu", "--model", "resnet18", "--dataset", "cifar10", "--data", str(tmp_path),
                 "--epochs", "1", "--batch-size", "4", "--max-batches", "1"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_warmup_cosine_schedule():
    class Optimizer:
        param_groups = [{"lr": None}]

    schedule = WarmupCosine(Optimizer(), 0.4, epochs=4, steps_per_epoch=5, warmup_epochs=2)
    warmup = [schedule.lr(epoch, step) for epoch in range(2) for step in range(5)]
    np.testing.assert_allclose(warmup, 0.4 * np.arange(1, 11) / 10, rtol=1e-15)   # linear, step by step
    # then half a cosine over the remaining two epochs, one value per epoch
    assert [schedule.lr(2, s) for s in (0, 4)] == [pytest.approx(0.4)] * 2
    assert schedule.lr(3) == pytest.approx(0.2)
    assert schedule.apply(0, 1) == Optimizer.param_groups[0]["lr"] == pytest.approx(0.08)
    # without warm-up: the per-epoch cosine of `cnn-gpu train`
    plain = WarmupCosine(None, 0.1, epochs=4, steps_per_epoch=3)
    np.testing.assert_allclose([plain.lr(e, 2) for e in range(4)],
                               0.05 * (1 + np.cos(np.pi * np.arange(4) / 4)), rtol=1e-15)
    with pytest.raises(ValueError, match="warmup_epochs"):
        WarmupCosine(None, 0.1, epochs=2, steps_per_epoch=3, warmup_epochs=2)
    with pytest.raises(TypeError, match="warmup_epochs must be an int"):
        WarmupCosine(None, 0.1, epochs=2, steps_per_epoch=3, warmup_epochs=0.5)   # not truncated to 0
    with pytest.raises(TypeError, match="epochs must be a positive int"):
        WarmupCosine(None, 0.1, epochs=2.5, steps_per_epoch=3)
    # outside the schedule: no negative or above-base rates
    for epoch, step in ((-1, 0), (4, 0), (0, 5), (0, -1)):
        with pytest.raises(ValueError, match="(epoch|step) must be"):
            schedule.lr(epoch, step)


@pytest.mark.parametrize("argv, message", [
    (["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs 3 must be below --epochs 3"),
    (["--dataset", "cifar10"], "needs --data"),
])
def test_bad_training_options_exit_2(argv, message, capsys):
    assert main(["train", "--device", "numpy", *argv]) == 2
    assert message in capsys.readouterr().err


def test_label_smoothing_out_of_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "numpy", "--label-smoothing", "1.5"])
    assert exit_info.value.code == 2 and "label-smoothing" in capsys.readouterr().err


def test_train_refuses_a_missing_cifar_folder(tmp_path, capsys):
    assert main(["train", "--device", "numpy", "--dataset", "cifar10", "--data", str(tmp_path)]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
