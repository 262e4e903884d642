"""`cnn-gpu train` refuses every bad input before the first epoch: a one-line error, exit status 2,
no traceback, nothing trained, and an existing checkpoint left as it was (issue 13). Also: a save
interrupted anywhere leaves no temporary file and no open file behind."""
import json
import os

import numpy as np
import pytest

from cnn_gpu import checkpoint
from cnn_gpu.cli import main


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """The bytes of a real checkpoint (cnn, adam, digits, one batch)."""
    path = tmp_path_factory.mktemp("good") / "good.npz"
    assert main(["train", "--device", "numpy", "--epochs", "1", "--max-batches", "1", "--save", str(path)]) == 0
    return path.read_bytes()


def _refused_before_training(capsys, folder, argv, message, keep):
    """Runs `cnn-gpu train argv`; checks the one-line error, that nothing was trained, that `keep`
    (an existing checkpoint) is unchanged and that no file appeared in `folder`."""
    before = keep.read_bytes()
    files = sorted(os.listdir(folder))
    assert main(["train", "--device", "numpy", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "training started"
    assert captured.err.startswith("cnn-gpu train: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert keep.read_bytes() == before, "the existing checkpoint changed"
    assert sorted(os.listdir(folder)) == files, "a file was left behind"


def _images(rng, n, size=8):
    return rng.random((n, size, size)).astype(np.float32)


def _labels(n, classes=4):
    return np.arange(n) % classes


def _with(array, value, index=5):
    """A copy of `array` with `value` at flat position `index`."""
    array = array.copy()
    array.flat[index] = value
    return array


# each: (arrays of the .npz, a piece of the error)
BAD_DATA = {
    "empty test split": (lambda rng: dict(x_train=_images(rng, 40), y_train=_labels(40),
                                          x_test=_images(rng, 0), y_test=_labels(0)), "the test set is empty"),
    "empty data set": (lambda rng: dict(x=_images(rng, 0), y=_labels(0)), "the training set is empty"),
    "split too small for a test set": (lambda rng: dict(x=_images(rng, 8), y=_labels(8)), "the test set is empty"),
    "train and test shapes differ": (lambda rng: dict(x_train=_images(rng, 40), y_train=_labels(40),
                                                      x_test=_images(rng, 8, size=9), y_test=_labels(8)),
                                     "differ in shape"),
    "NaN pixel": (lambda rng: dict(x=_with(_images(rng, 40), np.nan, 1000), y=_labels(40)),
                  "1 training image(s) hold NaN or infinite pixels"),
    "infinite pixel": (lambda rng: dict(x_train=_images(rng, 40), y_train=_labels(40),
                                        x_test=_with(_images(rng, 8), -np.inf), y_test=_labels(8)),
                       "1 test image(s) hold NaN or infinite"),
    "pixels beyond float32": (lambda rng: dict(x=_images(rng, 40).astype(np.float64) * 1e300, y=_labels(40)),
                              "NaN or infinite"),
    "huge label": (lambda rng: dict(x=_images(rng, 40), y=_with(_labels(40), 10**9)), "would make 1000000001 classes"),
    "huge unsigned label": (lambda rng: dict(x=_images(rng, 40), y=_with(_labels(40).astype(np.uint64), 2**63)),
                            "would make 9223372036854775809 classes"),
    "negative label": (lambda rng: dict(x=_images(rng, 40), y=_with(_labels(40), -1)), "non-negative integers"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_training(tmp_path, capsys, good_checkpoint, case):
    make_arrays, message = BAD_DATA[case]
    np.savez(tmp_path / "data.npz", **make_arrays(np.random.default_rng(13)))
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    _refused_before_training(capsys, tmp_path, ["--dataset", "npz", "--data", str(tmp_path / "data.npz"),
                                                "--epochs", "1", "--save", str(keep)], message, keep)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2^64), got '-1'"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1"),
    (["--epochs", "1.5"], "argument --epochs: must be an integer >= 1, got '1.5'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--max-batches", "-2"], "argument --max-batches: must be an integer >= 0"),
])
def test_bad_numeric_options_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "numpy", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last_line = err.splitlines()[-1]   # argparse prints the usage first
    assert last_line.startswith("cnn-gpu train: error: ") and message in last_line, err
    assert "Traceback" not in err


def test_save_path_is_probed_up_front(tmp_path, capsys, good_checkpoint, monkeypatch):
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    (tmp_path / "folder").mkdir()
    for save, message in ((tmp_path / "folder", "is a folder"), ("/dev/null", "not a regular file"),
                          (tmp_path / "nowhere" / "c.npz", "folder does not exist")):
        _refused_before_training(capsys, tmp_path, ["--save", str(save)], message, keep)

    def no_permission(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", no_permission)
    _refused_before_training(capsys, tmp_path, ["--save", str(keep)], "cannot write in its folder", keep)


def test_save_may_not_overwrite_the_data(tmp_path, capsys, good_checkpoint):
    """--save naming the --data file, or a file inside the --data folder, is refused up front."""
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    rng = np.random.default_rng(3)
    data = tmp_path / "data.npz"
    np.savez(data, x=_images(rng, 40), y=_labels(40))
    link = tmp_path / "alias.npz"
    link.symlink_to(data)
    for save in (data, link):
        _refused_before_training(capsys, tmp_path, ["--dataset", "npz", "--data", str(data), "--save", str(save)],
                                 "would overwrite the training data", keep)
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"images")
    _refused_before_training(capsys, tmp_path, ["--dataset", "cifar10", "--data", str(folder), "--save",
                                                str(folder / "data_batch_1")], "would overwrite the training data", keep)


@pytest.mark.parametrize("option", ["--save", "--resume", "--data"])
def test_an_empty_path_is_refused(capsys, option):
    """An empty path (an unset shell variable) was taken as no --resume, so a fresh run overwrote
    the checkpoint it should have resumed."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "numpy", option, ""])
    assert exit_info.value.code == 2
    assert "must be a non-empty path" in capsys.readouterr().err


def test_a_loop_of_symbolic_links_is_refused_and_left_as_it_is(tmp_path, capsys):
    """helper-92: --save through a loop of links (a -> b -> a) replaced the link with the file
    (realpath stops at a link of a loop): refused before training, and atomic_write raises ELOOP
    rather than renaming over a link (the JSON outputs of check/bench/kernels take the same path)."""
    import errno
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    first.symlink_to(second)
    second.symlink_to(first)
    assert main(["train", "--device", "numpy", "--max-batches", "1", "--save", str(first)]) == 2
    err = capsys.readouterr().err
    assert "a loop of symbolic links" in err and err.count("error:") == 1, err
    with pytest.raises(OSError) as info:
        checkpoint.atomic_write(first, lambda f: f.write(b"data"))
    assert info.value.errno == errno.ELOOP
    assert first.is_symlink() and second.is_symlink() and sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_save_writes_through_a_symbolic_link(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    link = tmp_path / "latest.npz"
    link.symlink_to(store / "real.npz")
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--save", str(link)]
    assert main([*argv, "--epochs", "1"]) == 0
    assert link.is_symlink() and checkpoint.load(store / "real.npz")[2]["epoch"] == 1
    assert main([*argv, "--epochs", "2", "--resume", str(link)]) == 0
    assert link.is_symlink() and checkpoint.load(store / "real.npz")[2]["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "store"]


def test_a_failed_save_stops_the_run_and_leaves_the_file(tmp_path, capsys, good_checkpoint, monkeypatch):
    """A full disk at a save: a one-line error, exit status 1, the previous checkpoint unchanged."""
    path = tmp_path / "ck.npz"
    path.write_bytes(good_checkpoint)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.np, "savez", disk_full)
    assert main(["train", "--device", "numpy", "--epochs", "2", "--max-batches", "1", "--save", str(path)]) == 1
    err = capsys.readouterr().err
    assert "cannot write the checkpoint of epoch 1" in err and "No space left on device" in err
    assert "Traceback" not in err
    assert path.read_bytes() == good_checkpoint and sorted(os.listdir(tmp_path)) == ["ck.npz"]


def test_resume_from_a_folder_or_nothing_says_which(tmp_path, capsys, good_checkpoint):
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    (tmp_path / "folder").mkdir()
    _refused_before_training(capsys, tmp_path, ["--resume", str(tmp_path / "folder")], "is a folder, not a file", keep)
    _refused_before_training(capsys, tmp_path, ["--resume", str(tmp_path / "none.npz")], "checkpoint not found", keep)
    _refused_before_training(capsys, tmp_path, ["--resume", os.devnull], f"{os.devnull} is not a regular file", keep)


def test_a_resume_with_changed_settings_says_which(tmp_path, capsys):
    path = tmp_path / "ck.npz"
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--save", str(path)]
    assert main([*argv, "--epochs", "1"]) == 0
    assert main([*argv, "--epochs", "2", "--resume", str(path)]) == 0
    assert "note: resuming" not in capsys.readouterr().out   # a longer run alone is the usual case
    assert main([*argv, "--epochs", "3", "--resume", str(path), "--lr", "0.01", "--label-smoothing", "0.1"]) == 0
    out = capsys.readouterr().out
    assert f"note: resuming {path} with --lr 0.01 (it trained with 0.002), --label-smoothing 0.1 (it trained " \
           f"with 0.0)" in out
    # --max-batches is no setting, but it sets an epoch's steps (the schedule's and the augmentation's)
    assert main(["train", "--device", "numpy", "--max-batches", "2", "--save", str(path), "--epochs", "4",
                 "--resume", str(path)]) == 0
    assert "with --max-batches 2 (it trained with 1)" in capsys.readouterr().out



def test_weight_decay_is_a_setting_a_resume_may_change(tmp_path, capsys):
    """--weight-decay goes to the optimizer (its state_dict's hyper-parameter), is recorded, taken
    by a resume that does not give it, and applied and said where a resume changes it; a checkpoint
    from before the option trained without decay."""
    path = tmp_path / "ck.npz"
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--optimizer", "sgd"]
    assert main([*argv, "--epochs", "1", "--weight-decay", "5e-4", "--save", str(path)]) == 0
    assert "sgd lr=0.05 weight_decay=0.0005," in capsys.readouterr().out
    _, optimizer_state, meta = checkpoint.load(path)
    assert optimizer_state["param_groups"][0]["weight_decay"] == meta["settings"]["weight_decay"] == 5e-4
    assert main([*argv, "--epochs", "2", "--resume", str(path), "--save", str(path)]) == 0
    assert "note: resuming" not in capsys.readouterr().out
    assert checkpoint.load(path)[1]["param_groups"][0]["weight_decay"] == 5e-4
    assert main([*argv, "--epochs", "3", "--resume", str(path), "--weight-decay", "0.01", "--save", str(path)]) == 0
    assert "with --weight-decay 0.01 (it trained with 0.0005)" in capsys.readouterr().out
    assert checkpoint.load(path)[1]["param_groups"][0]["weight_decay"] == 0.01
    model, optimizer, meta = checkpoint.load(path)   # as saved before --weight-decay existed
    del meta["settings"]["weight_decay"]
    optimizer["param_groups"][0]["weight_decay"] = 0.0
    del optimizer["param_groups"][0]["dampening"], optimizer["param_groups"][0]["maximize"]   # (and these)
    checkpoint.save(path, model, optimizer, meta)
    assert main([*argv, "--epochs", "4", "--resume", str(path), "--weight-decay", "0.001"]) == 0
    assert "with --weight-decay 0.001 (it trained with 0.0)" in capsys.readouterr().out
    # adamw: the decay decoupled, Adam's default rate, PyTorch's default decay
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--epochs", "1", "--optimizer", "adamw"]
    assert main(argv) == 0
    assert "adamw lr=0.002 weight_decay=0.01," in capsys.readouterr().out
    assert main([*argv, "--weight-decay", "0.05", "--save", str(tmp_path / "w.npz")]) == 0
    assert "adamw lr=0.002 weight_decay=0.05," in capsys.readouterr().out
    assert main([*argv, "--epochs", "2", "--resume", str(tmp_path / "w.npz")]) == 0
    assert main([*argv, "--epochs", "3", "--resume", str(tmp_path / "w.npz"), "--optimizer", "adam"]) == 2
    # rmsprop: its own rate (PyTorch's 0.01 diverges here), its square averages saved and resumed
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--epochs", "1", "--optimizer", "rmsprop"]
    assert main([*argv, "--save", str(tmp_path / "r.npz")]) == 0
    assert "rmsprop lr=0.001," in capsys.readouterr().out
    _, optimizer_state, _ = checkpoint.load(tmp_path / "r.npz")
    assert optimizer_state["param_groups"][0]["alpha"] == 0.99 and "square_avg" in optimizer_state["state"][0]
    assert main([*argv, "--epochs", "2", "--resume", str(tmp_path / "r.npz")]) == 0
    # torch.optim's other rules at PyTorch's rates, their state (NAdam's mu_product a number) saved and resumed
    for kind, lr, key in (("adagrad", "0.01", "sum"), ("adamax", "0.002", "exp_inf"), ("nadam", "0.002", "mu_product"),
                          ("radam", "0.001", "exp_avg_sq"), ("adadelta", "1", "acc_delta")):
        argv = ["train", "--device", "numpy", "--max-batches", "1", "--epochs", "1", "--optimizer", kind]
        assert main([*argv, "--save", str(tmp_path / f"{kind}.npz")]) == 0
        assert f"{kind} lr={lr}," in capsys.readouterr().out
        _, optimizer_state, _ = checkpoint.load(tmp_path / f"{kind}.npz")
        assert key in optimizer_state["state"][0] and optimizer_state["state"][0]["step"] == 1
        assert main([*argv, "--epochs", "2", "--resume", str(tmp_path / f"{kind}.npz")]) == 0


def test_a_resume_takes_the_checkpoints_max_batches_unless_given(tmp_path, capsys):
    """README: options not given take the checkpoint's values, --max-batches too (a resumed quick
    run trained whole epochs); --max-batches 0 drops the limit, and says so."""
    path = tmp_path / "ck.npz"
    assert main(["train", "--device", "numpy", "--max-batches", "2", "--epochs", "1", "--save", str(path)]) == 0
    capsys.readouterr()
    assert main(["train", "--device", "numpy", "--epochs", "2", "--resume", str(path), "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note: resuming" not in out and "first 2 batches" in out
    assert checkpoint.load(path)[2]["max_batches"] == 2
    assert main(["train", "--device", "numpy", "--epochs", "3", "--resume", str(path), "--max-batches", "0"]) == 0
    out = capsys.readouterr().out
    assert "with --max-batches unset (it trained with 2)" in out and "first 2 batches" not in out


def test_a_relative_data_path_is_recorded_whole(tmp_path, capsys, monkeypatch):
    """--data given relative to the folder a run started in is recorded as an absolute path, so a
    resume started elsewhere reads the same file; a recorded path that is gone says where it came from."""
    rng = np.random.default_rng(3)
    (tmp_path / "run").mkdir()
    np.savez(tmp_path / "run" / "d.npz", x=_images(rng, 120), y=_labels(120))
    monkeypatch.chdir(tmp_path / "run")
    argv = ["train", "--device", "numpy", "--dataset", "npz", "--max-batches", "1"]
    assert main([*argv, "--data", "d.npz", "--epochs", "1", "--save", "ck.npz"]) == 0
    assert checkpoint.load("ck.npz")[2]["settings"]["data"] == str(tmp_path / "run" / "d.npz")
    model, optimizer, meta = checkpoint.load("ck.npz")   # as recorded before: relative, which a resume
    meta["settings"]["data"] = "d.npz"                   # from the same folder takes for the same file
    checkpoint.save("old.npz", model, optimizer, meta)
    capsys.readouterr()
    assert main([*argv, "--data", "d.npz", "--epochs", "2", "--resume", "old.npz"]) == 0
    assert "note: resuming" not in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume", "run/ck.npz"]) == 0
    assert "note: resuming" not in capsys.readouterr().out
    (tmp_path / "run" / "d.npz").rename(tmp_path / "moved.npz")
    assert main([*argv, "--epochs", "2", "--resume", "run/ck.npz"]) == 2
    assert "(the --data path run/ck.npz recorded; give --data to read it from elsewhere)" in capsys.readouterr().err
    assert main([*argv, "--epochs", "2", "--resume", "run/ck.npz", "--data", "moved.npz"]) == 0


def test_a_resume_with_another_number_of_processes_says_so(tmp_path, capsys):
    """--batch-size is each process's share, so a checkpoint of a 2-process run resumed by one
    process trains on half the global batch: said, as any other changed option is."""
    path = tmp_path / "ck.npz"
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--save", str(path)]
    assert main([*argv, "--epochs", "1"]) == 0
    model, optimizer, meta = checkpoint.load(path)
    assert meta["world_size"] == 1
    checkpoint.save(path, model, optimizer, {**meta, "world_size": 2})   # as `--nproc 2` saves it
    capsys.readouterr()
    resume = ["train", "--device", "numpy", "--max-batches", "1", "--epochs", "2", "--resume", str(path)]
    assert main(resume) == 0
    assert (f"note: resuming {path} with --nproc 1 (it trained with 2: a global batch of 32 images, not 64)"
            in capsys.readouterr().out)
    # twice the share in half the processes: the global batch is the checkpoint's
    assert main([*resume, "--batch-size", "64"]) == 0
    assert ("with --batch-size 64 (it trained with 32), --nproc 1 (it trained with 2: the same global batch of 64)"
            in capsys.readouterr().out)


def test_resuming_with_fewer_epochs_than_trained_is_refused(tmp_path, capsys, good_checkpoint):
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    trained = tmp_path / "two.npz"
    assert main(["train", "--device", "numpy", "--epochs", "2", "--max-batches", "1", "--save", str(trained)]) == 0
    capsys.readouterr()
    _refused_before_training(capsys, tmp_path, ["--epochs", "1", "--resume", str(trained)],
                             "--epochs 1 is below the 2 epochs", keep)


def test_a_resume_with_another_blas_thread_count_says_so(tmp_path, capsys, monkeypatch):
    from cnn_gpu.functional import conv
    path = tmp_path / "ck.npz"
    argv = ["train", "--device", "numpy", "--max-batches", "1", "--save", str(path)]
    monkeypatch.setattr(conv, "blas_threads", lambda: 2)
    assert main([*argv, "--epochs", "1"]) == 0
    assert main([*argv, "--epochs", "2", "--resume", str(path)]) == 0
    assert "BLAS threads" not in capsys.readouterr().out
    monkeypatch.setattr(conv, "blas_threads", lambda: 1)
    assert main([*argv, "--epochs", "3", "--resume", str(path)]) == 0
    assert "was trained with 2 BLAS threads, this run has 1" in capsys.readouterr().out


def test_writable_probe_leaves_nothing_behind(tmp_path, good_checkpoint):
    keep = tmp_path / "keep.npz"
    keep.write_bytes(good_checkpoint)
    checkpoint.check_writable(keep)
    checkpoint.check_writable(tmp_path / "new.npz")
    assert sorted(os.listdir(tmp_path)) == ["keep.npz"] and keep.read_bytes() == good_checkpoint


def _tamper(header):
    """Malformed variants of a checkpoint's (valid JSON) header: name -> (header, piece of the error)."""
    meta, optimizer = header["meta"], header["optimizer"]
    settings = meta["settings"]
    step_states = [dict(s, step="x") for s in optimizer["scalar_state"]]
    return {
        "header is a list": ([], "not an object"),
        "no optimizer": ({k: v for k, v in header.items() if k != "optimizer"}, "optimizer is not an object"),
        "meta is a list": (dict(header, meta=[]), "meta is not an object"),
        "no scalar state": (dict(header, optimizer=dict(optimizer, scalar_state=[])), "belongs to no parameter"),
        "no epoch": (dict(header, meta={k: v for k, v in meta.items() if k != "epoch"}), "its epoch is None"),
        "epoch a string": (dict(header, meta=dict(meta, epoch="1")), "its epoch is '1'"),
        "negative epoch": (dict(header, meta=dict(meta, epoch=-1)), "its epoch is -1"),
        "settings a list": (dict(header, meta=dict(meta, settings=[1])), "settings are not an object"),
        "unknown model": (dict(header, meta=dict(meta, settings=dict(settings, model="vgg"))), "--model: invalid"),
        "infinite lr": (dict(header, meta=dict(meta, settings=dict(settings, lr=float("inf")))), "--lr: must be"),
        "negative seed": (dict(header, meta=dict(meta, settings=dict(settings, seed=-3))), "--seed: must be"),
        "fractional epochs": (dict(header, meta=dict(meta, settings=dict(settings, epochs=2.5))), "--epochs: must"),
        "boolean batch size": (dict(header, meta=dict(meta, settings=dict(settings, batch_size=True))),
                               "setting batch_size is True"),
        "shuffling state": (dict(header, meta=dict(meta, shuffle_rng={"bit_generator": "PCG64"})), "shuffling state"),
        "world size a string": (dict(header, meta=dict(meta, world_size="x")), "its world_size is 'x'"),
        "max batches 0": (dict(header, meta=dict(meta, max_batches=0)), "its max_batches is 0"),
        "blas threads a float": (dict(header, meta=dict(meta, blas_threads=1.5)), "its blas_threads is 1.5"),
        "foreign eps": (dict(header, optimizer=dict(optimizer, param_groups=[dict(optimizer["param_groups"][0],
                                                                                  eps=0.5)])),
                        "optimizer hyper-parameters"),
        "step a string": (dict(header, optimizer=dict(optimizer, scalar_state=step_states)),
                          "0.step must be an int >= 0, got 'x'"),
    }


def test_malformed_checkpoint_headers_exit_2(tmp_path, capsys, good_checkpoint):
    (tmp_path / "good.npz").write_bytes(good_checkpoint)
    entries = dict(np.load(tmp_path / "good.npz"))
    header = json.loads(str(entries["header"]))
    for name, (bad_header, message) in _tamper(header).items():
        bad = tmp_path / "bad.npz"
        np.savez(bad, **dict(entries, header=np.array(json.dumps(bad_header))))
        _refused_before_training(capsys, tmp_path, ["--epochs", "2", "--resume", str(bad), "--save", str(bad)],
                                 message, bad)


@pytest.mark.parametrize("name, message", [
    ("optimizer/x/exp_avg", "unexpected array"), ("weights", "unexpected array"),
    ("optimizer/99/exp_avg", "belongs to no parameter"), ("optimizer/0/step", "also a value in the header"),
])
def test_malformed_array_names_are_refused_by_load(tmp_path, good_checkpoint, name, message):
    (tmp_path / "good.npz").write_bytes(good_checkpoint)
    entries = dict(np.load(tmp_path / "good.npz"), **{name: np.ones(3)})
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match=f"malformed cnn_gpu checkpoint: .*{message}"):
        checkpoint.load(tmp_path / "bad.npz")


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count open files")
@pytest.mark.parametrize("where", ["fchmod", "savez", "fsync", "replace"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_save_interrupted_anywhere_leaves_nothing_behind(tmp_path, monkeypatch, where, error):
    path = tmp_path / "model.npz"
    empty_optimizer = {"param_groups": [{"params": [0]}], "state": {}}
    checkpoint.save(path, {"w": np.arange(6.0)}, empty_optimizer, {"epoch": 1})
    before = path.read_bytes()
    real = {"savez": checkpoint.np.savez, "fchmod": os.fchmod, "fsync": os.fsync, "replace": os.replace}[where]

    def fail_midway(*args, **kwargs):
        if where == "savez":
            real(*args, **kwargs)   # the whole file is written, then the failure comes
        raise error("injected")
    monkeypatch.setattr(checkpoint.np if where == "savez" else checkpoint.os, where, fail_midway)
    fds = _open_fds()
    with pytest.raises(error):
        checkpoint.save(path, {"w": np.ones(6)}, empty_optimizer, {"epoch": 2})
    monkeypatch.undo()
    assert _open_fds() == fds, "the temporary file was left open"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"], "temporary file left behind"
    assert path.read_bytes() == before


def test_sigterm_ends_training_like_ctrl_c_and_leaves_a_loadable_checkpoint(tmp_path):
    """A scheduler's SIGTERM raises inside the run, so a checkpoint being written removes its
    temporary file (the default action killed the process mid-write, leaving one behind)."""
    import subprocess
    import sys
    import time
    from pathlib import Path
    path = tmp_path / "ck.npz"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    job = subprocess.Popen([sys.executable, "-m", "cnn_gpu", "train", "--device", "numpy", "--epochs", "500",
                            "--save", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        assert path.exists(), job.communicate()[1]
        job.terminate()
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143 and err.rstrip().endswith("terminated"), err[-500:]
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"] and checkpoint.load(path)[2]["epoch"] >= 1


# --- the other commands' outputs, and what bench has no rows for ---------------------------------

def _nvrtc_reason():
    from cnn_gpu import nvrtc
    return nvrtc.why_unavailable()


@pytest.mark.parametrize("argv", [
    ["check", "--device", "numpy", "--quick", "--ops", "relu"],
    ["bench", "--device", "model:h100", "--shapes", "resnet", "--ops", "max_pool2d"],
    ["kernels", "--file", "pool.cu", "--arch", "sm_80", "--dtype", "float32"],
], ids=["check", "bench", "kernels"])
def test_a_full_disk_at_an_output_is_one_line_and_leaves_the_file(tmp_path, capsys, monkeypatch, argv):
    """helper-92: --json on a full disk was a traceback (exit 1) in check, bench and kernels, where
    train's --save says so in one line; the atomic write leaves the old file (and no temporary)."""
    if argv[0] == "kernels" and _nvrtc_reason():
        pytest.skip(f"no NVRTC: {_nvrtc_reason()}")
    path = tmp_path / "out.json"
    path.write_text("old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "replace", disk_full)
    assert main([*argv, "--json", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {path}: No space left on device" in err and "Traceback" not in err, err
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_bench_without_rows_says_why_exits_1_and_writes_an_empty_table(tmp_path, capsys):
    """helper-92: numpy has no train_step_replayed rows (replay needs a kernel backend); bench
    printed an empty table, exited 0 and left an older --json of the same name in place."""
    path = tmp_path / "rows.json"
    path.write_text("older results")
    assert main(["bench", "--device", "numpy", "--shapes", "tiny", "--ops", "train_step_replayed",
                 "--no-progress", "--json", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "numpy: train_step_replayed has no rows: it does not run on this device" in out
    assert "no rows" in err and json.loads(path.read_text())["rows"] == []


def test_bench_out_of_memory_is_one_line(capsys, monkeypatch):
    """helper-92: a --batch too large for the machine was a MemoryError traceback on numpy."""
    from cnn_gpu.bench import timing

    def too_large(*args, **kwargs):
        raise MemoryError("Unable to allocate 143. GiB")
    monkeypatch.setattr(timing, "_row", too_large)
    assert main(["bench", "--device", "numpy", "--shapes", "tiny", "--ops", "conv2d", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "out of memory after 0 rows: Unable to allocate 143. GiB" in err and "Traceback" not in err


def test_check_refuses_numpy_against_its_own_float16_oracle(capsys):
    assert main(["check", "--device", "numpy", "--dtype", "float16", "--quick"]) == 2
    assert "compare the NumPy backend with itself" in capsys.readouterr().err


def test_an_unwritable_output_names_its_option(tmp_path, capsys):
    assert main(["check", "--device", "numpy", "--quick", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "cnn-gpu check: --json " in capsys.readouterr().err


def test_two_outputs_naming_one_file_are_refused(tmp_path, capsys):
    """bench --json X --csv X wrote both, said so twice, and kept only the CSV (helper-98); a link to
    the other's file counts as the same file."""
    (tmp_path / "link.json").symlink_to(tmp_path / "out.json")
    for second in ("out.json", "link.json"):
        argv = ["bench", "--device", "numpy", "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / second)]
        assert main(argv) == 2
        assert "--json and --csv name one file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json"]


def test_a_shape_set_without_the_ops_asked_for_says_so(capsys):
    """It ran, printed an empty table and blamed the devices ("none of these devices runs these ops")."""
    assert main(["bench", "--device", "numpy", "--shapes", "resnet18", "--ops", "conv2d"]) == 2
    assert "shape set 'resnet18' has no case of conv2d; its ops: train_step" in capsys.readouterr().err


def test_bench_nproc_without_mpi_names_the_option(capsys, monkeypatch):
    from cnn_gpu.bench import scaling

    def no_mpi(*args, **kwargs):
        raise RuntimeError("needs mpi4py and an MPI: pip install 'cnn_gpu[mpi]'")
    monkeypatch.setattr(scaling, "measure", no_mpi)
    assert main(["bench", "--nproc", "2"]) == 2
    assert capsys.readouterr().err.startswith("cnn-gpu bench: --nproc needs mpi4py")


def test_a_resume_on_changed_data_at_the_same_path_says_so(tmp_path, capsys):
    """helper-92: the data file's contents changed between runs went unnoticed on --resume (its
    fingerprint was compared across ranks only); the checkpoint now records it."""
    rng = np.random.default_rng(8)
    data, path = tmp_path / "data.npz", tmp_path / "ck.npz"
    np.savez(data, x=_images(rng, 40), y=_labels(40))
    argv = ["train", "--device", "numpy", "--dataset", "npz", "--data", str(data), "--max-batches", "1",
            "--save", str(path)]
    assert main([*argv, "--epochs", "1"]) == 0
    assert main([*argv, "--epochs", "2", "--resume", str(path)]) == 0
    assert "note: resuming" not in capsys.readouterr().out
    np.savez(data, x=_images(rng, 40), y=_labels(40))   # other images, same path and shapes
    assert main([*argv, "--epochs", "3", "--resume", str(path)]) == 0
    assert "other data (the npz data it loads differs from what it trained on)" in capsys.readouterr().out
