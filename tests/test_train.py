"""`cnn-gpu train` and checkpoints: learning on digits, bit-identical resume, atomic saves,
argument errors."""
import json
import re

import numpy as np
import pytest

from cnn_gpu import checkpoint, data
from cnn_gpu.cli import main
from cnn_gpu.cli import train as train_cli


def _accuracy(output: str) -> float:
    match = re.search(r"test accuracy: ([\d.]+)%", output)
    assert match, output
    return float(match.group(1))


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--device", "--epochs", "--batch-size", "--lr", "--optimizer", "--seed", "--model", "--dataset",
                   "--data", "--save", "--resume", "--max-batches"):
        assert option in out


def test_short_run_learns_digits(capsys):
    assert main(["train", "--device", "numpy", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert _accuracy(out) > 80.0, out   # chance is 10%


def test_auto_device_without_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr("cnn_gpu.backend.cupy_or_none", lambda: None)
    assert main(["train", "--epochs", "1", "--max-batches", "2"]) == 0
    captured = capsys.readouterr()
    assert "no CUDA GPU found" in captured.err and "on numpy" in captured.out
    # the progress bar shows the epoch, the running loss and accuracy, then the test accuracy
    assert re.search(r"epoch 1/1: 100%.*2/2.*acc=[\d.]+%, loss=[\d.]+, test=[\d.]+%", captured.err)


def _run_and_load(tmp_path, name, *extra):
    path = tmp_path / name
    assert main(["train", "--device", "numpy", "--save", str(path), *extra]) == 0
    return checkpoint.load(path)


def _assert_same_checkpoint(a, b):
    (model_a, optim_a, meta_a), (model_b, optim_b, meta_b) = a, b
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        np.testing.assert_array_equal(model_a[name], model_b[name], err_msg=name)
    assert optim_a["param_groups"] == optim_b["param_groups"]
    assert optim_a["state"].keys() == optim_b["state"].keys()
    for state_a, state_b in zip(optim_a["state"].values(), optim_b["state"].values()):
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            np.testing.assert_array_equal(state_a[key], state_b[key])
    assert meta_a == meta_b


@pytest.mark.parametrize("setup", [["--model", "cnn", "--optimizer", "adam"],
                                   ["--model", "resnet", "--optimizer", "sgd", "--batch-size", "16"]])
def test_interrupted_run_resumes_bit_identically(tmp_path, capsys, monkeypatch, setup):
    quick = ["--epochs", "3", "--max-batches", "4", "--seed", "3"] + setup
    straight = _run_and_load(tmp_path, "straight.npz", *quick)
    straight_out = capsys.readouterr().out

    real_train_epoch = train_cli.train_epoch
    epochs_started = []

    def interrupted_in_epoch_3(*args, **kwargs):
        epochs_started.append(1)
        if len(epochs_started) == 3:
            raise KeyboardInterrupt
        real_train_epoch(*args, **kwargs)
    monkeypatch.setattr(train_cli, "train_epoch", interrupted_in_epoch_3)
    path = tmp_path / "interrupted.npz"
    assert main(["train", "--device", "numpy", "--save", str(path), *quick]) == 130
    assert checkpoint.load(path)[2]["epoch"] == 2
    monkeypatch.undo()
    # the checkpoint brings the model, optimizer, seed, batch size and epoch count back
    assert main(["train", "--device", "numpy", "--max-batches", "4", "--resume", str(path), "--save", str(path)]) == 0
    resumed_out = capsys.readouterr().out
    assert "epochs 3..3" in resumed_out
    resumed = checkpoint.load(path)
    assert resumed[2]["epoch"] == 3
    _assert_same_checkpoint(straight, resumed)
    assert _accuracy(straight_out) == _accuracy(resumed_out)


def test_cosine_learning_rate():
    half_sqrt2 = 2 ** 0.5 / 2
    expected = [0.1, 0.05 * (1 + half_sqrt2), 0.05, 0.05 * (1 - half_sqrt2)]
    assert [train_cli.cosine_lr(0.1, e, 4) for e in range(4)] == pytest.approx(expected, rel=1e-12)


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    args = ["--epochs", "1", "--max-batches", "3"]
    a = _run_and_load(tmp_path, "a.npz", "--seed", "5", *args)
    b = _run_and_load(tmp_path, "b.npz", "--seed", "5", *args)
    c = _run_and_load(tmp_path, "c.npz", "--seed", "6", *args)
    _assert_same_checkpoint(a, b)
    assert not np.array_equal(a[0]["0.weight"], c[0]["0.weight"])


def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    model_state = {"0.weight": rng.standard_normal((3, 2)).astype(np.float32), "0.bias": rng.standard_normal(3)}
    # Optimizer.state_dict's layout: the second parameter has state, the first none
    optimizer_state = {"param_groups": [{"lr": 0.1, "betas": [0.9, 0.999], "params": [0, 1]}],
                       "state": {1: {"step": 4, "exp_avg": rng.standard_normal(3)}}}
    meta = {"epoch": 7, "shuffle_rng": np.random.default_rng(1).bit_generator.state}
    checkpoint.save(tmp_path / "c.npz", model_state, optimizer_state, meta)
    model_back, optimizer_back, meta_back = checkpoint.load(tmp_path / "c.npz")
    for name, value in model_state.items():
        assert model_back[name].dtype == value.dtype
        np.testing.assert_array_equal(model_back[name], value)
    assert optimizer_back["state"].keys() == {1} and optimizer_back["state"][1]["step"] == 4
    np.testing.assert_array_equal(optimizer_back["state"][1]["exp_avg"], optimizer_state["state"][1]["exp_avg"])
    assert optimizer_back["param_groups"] == optimizer_state["param_groups"]
    assert meta_back == meta


def test_a_checkpoint_from_before_parameter_groups_resumes(tmp_path):
    """Saved before the groups recorded their parameters (one group without "params") and before
    dampening and maximize existed: its scalar_state lists every parameter, which load gives the
    group as its "params", so the optimizer takes it."""
    from cnn_gpu import optim
    from cnn_gpu.nn import Parameter
    params = [Parameter(np.ones(3)), Parameter(np.ones(2))]
    first = optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = np.full_like(p.data, 0.5)
    first.step()
    path = tmp_path / "old.npz"
    checkpoint.save(path, {}, first.state_dict(), {"epoch": 1})
    with np.load(path) as stored:
        entries = {name: stored[name] for name in stored.files}
    header = json.loads(str(entries["header"]))
    for key in ("params", "dampening", "maximize"):
        del header["optimizer"]["param_groups"][0][key]
    np.savez(path, **{**entries, "header": np.array(json.dumps(header))})
    _, optimizer_state, _ = checkpoint.load(path)
    resumed = optim.SGD([Parameter(np.ones(3)), Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    resumed.load_state_dict(optimizer_state)
    for ours, theirs in zip(resumed.state, first.state):
        np.testing.assert_array_equal(ours["momentum_buffer"], theirs["momentum_buffer"])


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    good = {"w": np.arange(6.0)}
    empty_optimizer = {"param_groups": [{"params": [0]}], "state": {}}
    checkpoint.save(path, good, empty_optimizer, {"epoch": 1})
    before = path.read_bytes()

    def crash_mid_write(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")   # something reaches the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": np.zeros(6)}, empty_optimizer, {"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"], "temporary file left behind"
    monkeypatch.undo()
    model_state, _, meta = checkpoint.load(path)
    np.testing.assert_array_equal(model_state["w"], good["w"])
    assert meta == {"epoch": 1}


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable cnn_gpu checkpoint"):
        checkpoint.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a readable cnn_gpu checkpoint"):
        checkpoint.load(tmp_path / "other.npz")


def test_other_data_sets(tmp_path, capsys):
    x, y = data.synthetic(n=120, channels=2, height=9, width=9, num_classes=3, noise=0.3, seed=1)
    np.savez(tmp_path / "synthetic.npz", x=x, y=y)
    assert main(["train", "--device", "numpy", "--dataset", "npz", "--data", str(tmp_path / "synthetic.npz"),
                 "--epochs", "4", "--batch-size", "8", "--model", "resnet"]) == 0
    assert _accuracy(capsys.readouterr().out) > 70.0   # 3 classes: chance is 33%
    rng = np.random.default_rng(2)
    for stem, shape in (("train-images-idx3-ubyte", (40, 28, 28)), ("t10k-images-idx3-ubyte", (8, 28, 28)),
                        ("train-labels-idx1-ubyte", (40,)), ("t10k-labels-idx1-ubyte", (8,))):
        high = 10 if "labels" in stem else 256
        data.write_idx(tmp_path / f"{stem}.gz", rng.integers(0, high, shape, dtype=np.uint8))
    assert main(["train", "--device", "numpy", "--dataset", "fashion-mnist", "--data", str(tmp_path),
                 "--epochs", "1"]) == 0
    assert "fashion-mnist (40 train / 8 test images of 1x28x28)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [   # bad numbers: tests/test_cli_reliability.py
    (["--dataset", "mnist"], "needs --data PATH"),
    (["--data", "somewhere"], "digits are bundled"),
    (["--dataset", "npz", "--data", "/nonexistent/x.npz"], "not found"),
    (["--dataset", "mnist", "--data", "/nonexistent"], "not a folder"),
    (["--resume", "/nonexistent/ckpt.npz"], "checkpoint not found"),
    (["--save", "/nonexistent/ckpt.npz"], "folder does not exist"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(["train", "--device", "numpy", *argv]) == 2
    assert message in capsys.readouterr().err


def test_resume_with_a_different_model_exits_2(tmp_path, capsys):
    _run_and_load(tmp_path, "c.npz", "--epochs", "1", "--max-batches", "1")
    assert main(["train", "--device", "numpy", "--resume", str(tmp_path / "c.npz"), "--model", "resnet"]) == 2
    assert "differs from the resumed checkpoint" in capsys.readouterr().err


def test_unavailable_device_exits_2(monkeypatch, capsys):
    monkeypatch.setattr("cnn_gpu.backend.why_unavailable", lambda name: "CuPy sees no GPU")
    assert main(["train", "--device", "cuda"]) == 2
    assert "device 'cuda' is not available: CuPy sees no GPU" in capsys.readouterr().err


def test_argparse_rejects_unknown_choices():
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--optimizer", "lbfgs"])
    assert exit_info.value.code == 2


def test_a_quick_run_on_the_emulator(capsys):
    """`--device emu` trains through the CUDA kernels run on the CPU (a few batches)."""
    from cnn_gpu.backend import why_unavailable
    if why_unavailable("emu"):
        pytest.skip(f"emu backend unavailable: {why_unavailable('emu')}")
    assert main(["train", "--device", "emu", "--epochs", "1", "--max-batches", "3", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "on emu" in out and "first 3 batches" in out


def test_images_too_small_for_the_model_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "tiny.npz", x=np.random.default_rng(0).random((20, 3, 3)), y=np.arange(20) % 2)
    assert main(["train", "--device", "numpy", "--dataset", "npz", "--data", str(tmp_path / "tiny.npz")]) == 2
    assert "at least 4x4" in capsys.readouterr().err


def test_each_rank_makes_its_gpu_current_before_the_backend_probes_one(monkeypatch):
    """With several ranks, rank r's GPU (its local rank) is current before the cuda backend's probe
    opens a context and a cuBLAS handle (on the current GPU); too few GPUs is a usage error."""
    import sys
    import types
    from cnn_gpu import backend, distributed
    from cnn_gpu.cli import train
    events = []
    device = lambda index: types.SimpleNamespace(use=lambda: events.append(f"use {index}"))   # noqa: E731
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 4), Device=device)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(backend, "cupy_or_none", lambda: events.append("probe") or cupy)
    monkeypatch.setattr(backend, "why_unavailable", lambda be: events.append("probe") or "")
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "local_rank", lambda: 2)
    assert train.choose_device("cuda") == "cuda"
    assert events[0] == "use 2" and "probe" in events[1:]
    events.clear()
    assert train.choose_device("auto") == "cuda" and events[0] == "use 2"
    monkeypatch.setattr(distributed, "local_rank", lambda: 5)
    with pytest.raises(train.UsageError, match="6 ranks on this machine but only 4 GPUs"):
        train.choose_device("cuda")


def test_batch_norm_models_skip_a_lone_last_image_and_refuse_batches_of_one(tmp_path, capsys):
    """9 training images in batches of 8 leave a last batch of one image, which batch norm cannot
    train on (resnet18's maps end 1 x 1 on 8 x 8 images): that step is skipped, not a crash; a
    --batch-size of 1 would skip every step, so it is refused."""
    from cnn_gpu.cli import main
    rng = np.random.default_rng(3)
    path = tmp_path / "nine.npz"
    np.savez(path, x_train=rng.random((9, 8, 8)), y_train=np.arange(9) % 3, x_test=rng.random((4, 8, 8)),
             y_test=np.arange(4) % 3)
    assert main(["train", "--device", "numpy", "--model", "resnet18", "--dataset", "npz", "--data", str(path),
                 "--batch-size", "8", "--epochs", "1"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--device", "numpy", "--model", "resnet18", "--batch-size", "1", "--epochs", "1"]) == 2
    assert "has batch norm, which cannot train on one image at a time" in capsys.readouterr().err


def test_fp16_training_overflow_is_the_scalers_business_not_a_warning(capsys):
    """The first fp16 steps overflow FP16 at the loss scale 2^16, by design: the scaler halves it
    and skips them. The NumPy oracle's rounding to float16 gives inf there as the kernels do,
    without a RuntimeWarning per op."""
    import warnings
    from cnn_gpu.cli import main
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["train", "--device", "numpy", "--model", "resnet18", "--precision", "fp16", "--epochs", "1",
                     "--max-batches", "2"]) == 0
    assert "scale=32768" in capsys.readouterr().err   # one overflowing step seen and halved


def test_the_cli_default_rates_of_torchs_other_rules_are_the_optimizers_own():
    """cnn-gpu train's table (kept without importing cnn_gpu.optim at start-up) is each constructor's lr default."""
    import inspect
    from cnn_gpu import optim
    from cnn_gpu.cli import train
    for kind, name in train.TORCH_RULES.items():
        assert train.TORCH_DEFAULT_LR[kind] == inspect.signature(getattr(optim, name)).parameters["lr"].default, kind
