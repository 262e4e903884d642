"""cnn_gpu.replay: a recorded training step, replayed on new data, gives bit for bit what the same
steps run eagerly give (parameters, running statistics, batch counts, losses), with the optimizer's
update live (learning-rate changes, Adam's step counts); what a replay could not reproduce is
refused while recording, and a recording whose code raised cannot be replayed."""
from __future__ import annotations

import types

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import backend, models, nn, optim, replay
from cnn_gpu import functional as F
from cnn_gpu.amp import GradScaler
from cnn_gpu.nn.module import to_host
from helpers import EpochBar

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

IMAGE = (3, 16, 16)
BATCH = 2
CLASSES = 10
NARROW = {"resnet18": {"width": 4}, "resnet": {"filters": 4}, "cnn": {"filters": 4}}


def _setup(name, dtype, optimizer, be="emu"):
    model = models.build(name, IMAGE, CLASSES, dtype=np.dtype(dtype), rng=np.random.default_rng(0), **NARROW[name])
    model.to(be)
    params = model.parameters()
    if optimizer in ("sgd", "adam"):
        opt = optim.SGD(params, lr=0.05, momentum=0.9) if optimizer == "sgd" else optim.Adam(params, lr=1e-3)
    else:   # another optimizer at PyTorch's defaults
        opt = getattr(optim, optimizer)(params)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn.to(be)
    return model, opt, loss_fn


def _train_step(model, opt, loss_fn, x, labels):
    opt.zero_grad()
    loss = loss_fn(model(x), labels, as_array=True)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    return loss


def _batches(dtype, count, be="emu"):
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((BATCH, *IMAGE)).astype(dtype), rng.integers(0, CLASSES, BATCH))
               for _ in range(count)]
    if be == "cuda":
        import cupy
        batches = [(cupy.asarray(x), cupy.asarray(labels)) for x, labels in batches]
    return batches


ON_CUDA = pytest.param("cuda", marks=pytest.mark.skipif("cuda" not in backend.available_backends(),
                                                        reason=f"no cuda backend: {backend.why_unavailable('cuda')}"))


LEARNING_RATES = (None, None, 0.02, None)   # the third step at a new rate, as a schedule would


@pytest.mark.parametrize("be", [pytest.param("emu", marks=needs_emu), ON_CUDA])
@pytest.mark.parametrize("name, dtype, math, optimizer", [
    ("resnet18", "float32", "fp32", "sgd"),
    ("resnet18", "float16", "tf32", "adam"),
    ("resnet", "float32", "tf32", "adam"),
    ("cnn", "float64", "fp32", "sgd"),
    # the rules with a step count and step-dependent host scalars (NAdam's mu_product: kept on the host)
    ("cnn", "float32", "fp32", "Adagrad"),
    ("cnn", "float16", "fp32", "Adamax"),
    ("cnn", "float32", "fp32", "NAdam"),
    ("cnn", "float64", "fp32", "RAdam"),
    ("cnn", "float32", "fp32", "Adadelta"),
])
def test_replayed_steps_equal_eager_steps_bit_for_bit(name, dtype, math, optimizer, be):
    batches = _batches(dtype, len(LEARNING_RATES), be)
    with cnn_gpu.math_mode(math):
        eager_model, eager_opt, eager_loss_fn = _setup(name, dtype, optimizer, be)
        eager_losses = []
        for (images, labels), lr in zip(batches, LEARNING_RATES):
            if lr is not None:
                eager_opt.param_groups[0]["lr"] = lr
            eager_losses.append(float(_train_step(eager_model, eager_opt, eager_loss_fn, images, labels)))

        model, opt, loss_fn = _setup(name, dtype, optimizer, be)
        x, labels = (a.copy() for a in batches[0])
        with replay.record() as step:
            loss = _train_step(model, opt, loss_fn, x, labels)
        losses = [float(loss)]
        for (new_images, new_labels), lr in zip(batches[1:], LEARNING_RATES[1:]):
            if lr is not None:
                opt.param_groups[0]["lr"] = lr
            x[...], labels[...] = new_images, new_labels
            opt.zero_grad()   # between replays too: the update still takes the recorded step's gradients
            step.replay()
            losses.append(float(loss))

    assert losses == eager_losses
    assert len(set(losses)) == len(losses)   # each step saw new data
    eager_state, state = eager_model.state_dict(), model.state_dict()
    assert list(state) == list(eager_state)
    for key in state:
        np.testing.assert_array_equal(to_host(state[key]), to_host(eager_state[key]), err_msg=key)
    if name != "cnn":
        assert int(state[next(k for k in state if k.endswith("num_batches_tracked"))]) == len(batches)
    for mine, theirs in zip(opt.state, eager_opt.state):
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(to_host(mine[key]), to_host(theirs[key]), err_msg=key)


@needs_emu
def test_a_replay_repeats_every_launch_and_device_call_of_the_recording():
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = _batches("float32", 1)[0]
    launches = []
    real_launch = backend.launch

    def counted(*args, **kwargs):
        launches.append(args[3])
        return real_launch(*args, **kwargs)

    backend.launch = counted
    try:
        with replay.record() as step:
            _train_step(model, opt, loss_fn, x, labels)
    finally:
        backend.launch = real_launch
    optimizer_launches = sum(kernel.startswith("sgd") for kernel in launches)
    # the fixed launches, the Linear's three matmuls, the mean loss's division, each parameter's
    # gradient unbound (zero_grad) and bound again (backward), and the optimizer's update as one
    # live call
    assert step.entries == len(launches) - optimizer_launches + 3 + 1 + 2 * len(list(model.parameters())) + 1


@needs_emu
@pytest.mark.parametrize("refusal, run", [
    ("loss read back as a float", lambda: F.cross_entropy(
        np.random.default_rng(2).standard_normal((2, 3), dtype=np.float32), np.array([0, 2]), backend="emu")),
    ("loss read back as a float", lambda: F.mse_loss(
        *np.random.default_rng(3).standard_normal((2, 4, 3), dtype=np.float32), backend="emu")),
    ("Dropout in training mode", lambda: nn.Dropout(0.5).to("emu")(
        np.random.default_rng(4).standard_normal((2, 8), dtype=np.float32))),
    ("BatchNorm2d\\(momentum=None\\)", lambda: nn.BatchNorm2d(3, momentum=None).to("emu")(
        np.random.default_rng(5).standard_normal((2, 3, 4, 4), dtype=np.float32))),
    ("backend 'numpy'", lambda: F.relu(np.random.default_rng(7).standard_normal(4), backend="numpy")),
    ("copied to C order", lambda: F.relu(
        np.random.default_rng(8).standard_normal((6, 5), dtype=np.float32).T, backend="emu")),
])
def test_what_a_replay_could_not_reproduce_is_refused_while_recording(refusal, run):
    with pytest.raises((RuntimeError, ValueError), match=refusal):
        with replay.record() as step:
            run()
    with pytest.raises(RuntimeError, match="not complete"):
        step.replay()
    assert not replay.is_recording()
    run()   # the same call outside a recording is fine


@needs_emu
def test_an_explicit_unscale_is_refused_while_recording():
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = _batches("float32", 1)[0]
    loss_fn(model(x), labels, as_array=True)
    model.backward(loss_fn.backward(), input_grad=False)
    with pytest.raises(RuntimeError, match="GradScaler.unscale_"):
        with replay.record():
            GradScaler().unscale_(opt)


@needs_emu
def test_scaling_a_python_number_is_refused_while_recording():
    """Its product is a Python number, a constant of the recording: after the scale grew or backed
    off a replay would scale the loss gradient by the recorded scale (helper-91 found the weights
    off by their ratio). An array is scaled on the device, by each replay's own scale."""
    scaler = GradScaler(init_scale=4.0)
    with pytest.raises(RuntimeError, match="GradScaler.scale of a Python number"):
        with replay.record():
            scaler.scale(1.0)
    assert scaler.scale(1.0) == 4.0   # eager: fine
    with replay.record():
        scaled = scaler.scale(np.asarray(1.0, np.float32))
    assert float(scaled) == 4.0


@needs_emu
def test_recordings_do_not_nest_and_replay_is_refused_inside_one():
    assert cnn_gpu.replay is replay and "replay" in cnn_gpu.__all__   # as the README uses it
    x = np.random.default_rng(9).standard_normal(16).astype(np.float32)
    with replay.record() as step:
        y = F.relu(x, backend="emu")
    with replay.record():
        with pytest.raises(RuntimeError, match="do not nest"):
            with replay.record():
                pass
        with pytest.raises(RuntimeError, match="inside a recording"):
            step.replay()
    x[...] = -x
    step.replay()
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@needs_emu
def test_live_runs_now_and_at_every_replay_with_its_own_launches_not_recorded():
    calls = []
    x = np.random.default_rng(10).standard_normal(8).astype(np.float32)

    def work():
        calls.append(replay.is_recording())
        return F.relu(x, backend="emu")

    with replay.record() as step:
        replay.live(work)
    assert step.entries == 1 and calls == [False]
    step.replay()
    step.replay()
    assert calls == [False, False, False]


@needs_emu
def test_gradients_accumulated_over_two_batches_replay_as_they_ran():
    """Two forward/backward passes before one update: the second adds into the first's gradients
    (Parameter.accumulate_grad), a device call a replay repeats."""
    batches = _batches("float32", 6)

    def accumulated_step(model, opt, loss_fn, pair):
        opt.zero_grad()
        for images, labels in pair:
            loss_fn(model(images), labels, as_array=True)
            model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    eager_model, eager_opt, eager_loss_fn = _setup("cnn", "float32", "sgd")
    for first in range(0, 6, 2):
        accumulated_step(eager_model, eager_opt, eager_loss_fn, batches[first:first + 2])
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    inputs = [tuple(a.copy() for a in batch) for batch in batches[:2]]
    with replay.record() as step:
        accumulated_step(model, opt, loss_fn, inputs)
    for first in (2, 4):
        for (x, labels), (new_x, new_labels) in zip(inputs, batches[first:first + 2]):
            x[...], labels[...] = new_x, new_labels
        step.replay()
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


@needs_emu
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the overflowed steps' inf
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_grad_scaler_replays_its_scale_skips_and_backoffs_as_eager_steps():
    """float16 with a GradScaler whose first scale overflows the gradients: the recorded step is
    skipped and backs off, and each replay scales by the scale of its own step, unscales, checks and
    steps (or skips) as an eager step would. Unscaled in place, the gradients a replay binds are
    the same arrays each time, so the optimizer checks them at its first step only."""
    from cnn_gpu import optim
    prepared = []
    real_prepare = optim.Optimizer._prepare
    batches = _batches("float16", 6)

    def scaled_step(model, opt, loss_fn, scaler, x, labels):
        opt.zero_grad()
        loss = loss_fn(model(x), labels, as_array=True)
        model.backward(scaler.scale(loss_fn.backward()), input_grad=False)
        taken = scaler.step(opt)
        scaler.update()
        return loss, taken

    eager_model, eager_opt, eager_loss_fn = _setup("cnn", "float16", "adam")
    eager_scaler = GradScaler(init_scale=2.0 ** 18, growth_interval=2)
    eager = [scaled_step(eager_model, eager_opt, eager_loss_fn, eager_scaler, *batch) for batch in batches]
    eager_scales = [eager_scaler.get_scale()]
    model, opt, loss_fn = _setup("cnn", "float16", "adam")
    scaler = GradScaler(init_scale=2.0 ** 18, growth_interval=2)
    x, labels = (a.copy() for a in batches[0])
    with replay.record() as step:
        loss, taken = scaled_step(model, opt, loss_fn, scaler, x, labels)
    assert not taken and not eager[0][1]   # 2^18 overflows the float16 gradients: skipped
    losses, checked = [float(loss)], []
    for new_x, new_labels in batches[1:]:
        x[...], labels[...] = new_x, new_labels
        prepared.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(optim.Optimizer, "_prepare", lambda self, *a: prepared.append(1) or real_prepare(self, *a))
            step.replay()
        losses.append(float(loss))
        checked.append(len(prepared))
    assert losses == [float(eager_loss) for eager_loss, _ in eager]
    # taken at replays 2, 3 and 5: checked at the first two (Adam's state appears at the first), not the third
    assert checked == [0, len(opt.params), len(opt.params), 0, 0]
    assert scaler.get_scale() == eager_scales[0] and scaler.state_dict() == eager_scaler.state_dict()
    # skipped, skipped (backoffs), taken, taken (the scale grows), skipped, taken
    assert [taken for _, taken in eager] == [False, False, True, True, False, True]
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


@needs_emu
@pytest.mark.parametrize("float16", [False, True])
def test_a_training_epoch_replayed_trains_as_one_run_eagerly(float16, monkeypatch):
    """cnn-gpu train --replay: the first full batch recorded, the later full ones replayed, the last
    (partial) batch run eagerly, with a learning rate set before every step: the same weights,
    metrics and loss scale as the epoch run without replay."""
    from cnn_gpu.cli import train as train_cli
    batch, steps = 4, 5
    rng = np.random.default_rng(11)
    dataset = types.SimpleNamespace(x_train=rng.standard_normal((batch * (steps - 1) + 3, 1, 8, 8)).astype(np.float32),
                                    y_train=rng.integers(0, 4, batch * (steps - 1) + 3))
    dtype = np.float16 if float16 else np.float32
    recorded = []
    real_record = replay.record

    def counted_record(*inputs):
        recorded.append(1)
        return real_record(*inputs)

    monkeypatch.setattr(replay, "record", counted_record)

    def epoch(replayed):
        model = models.build("cnn", (1, 8, 8), 4, dtype=np.dtype(dtype), rng=np.random.default_rng(12)).to("emu")
        optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler, bar = (GradScaler() if float16 else None), EpochBar(steps)
        set_lr = lambda index: optimizer.param_groups[0].update(lr=0.1 / (index + 1))   # noqa: E731
        train_cli.train_epoch(model, nn.CrossEntropyLoss().to("emu"), optimizer, dataset, batch,
                              np.random.default_rng(13), "emu", bar, set_lr, scaler=scaler, replayed=replayed)
        return model, bar.postfix, scaler and scaler.state_dict()

    eager_model, eager_shown, eager_scaler = epoch(False)
    assert not recorded
    model, shown, scaler = epoch(True)
    assert len(recorded) == 1
    assert shown == eager_shown and scaler == eager_scaler
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


@needs_emu
def test_cnn_gpu_train_replay_gives_the_run_without_it_and_refuses_numpy(capsys, tmp_path):
    """The same accuracy and, to the bit, the same saved weights and optimizer state."""
    from cnn_gpu.cli import main
    run = ["train", "--device", "emu", "--epochs", "2", "--max-batches", "3", "--batch-size", "8"]
    assert main(run + ["--save", str(tmp_path / "plain.npz")]) == 0
    plain = capsys.readouterr().out.splitlines()[-1]
    assert main(run + ["--replay", "--save", str(tmp_path / "replayed.npz")]) == 0
    replayed = capsys.readouterr().out.splitlines()[-1]
    assert plain.startswith("test accuracy:") and replayed.split(" in ")[0] == plain.split(" in ")[0]
    with np.load(tmp_path / "plain.npz") as saved_plain, np.load(tmp_path / "replayed.npz") as saved_replayed:
        arrays = [name for name in saved_plain.files if saved_plain[name].dtype.kind in "fiu"]
        assert len(arrays) > 4 and set(saved_plain.files) == set(saved_replayed.files)
        for name in arrays:
            np.testing.assert_array_equal(saved_replayed[name], saved_plain[name], err_msg=name)
    assert main(["train", "--device", "numpy", "--replay", "--epochs", "1"]) == 2
    assert "--replay replays the kernels of one process: it needs --device emu or cuda" in capsys.readouterr().err


@needs_emu
def test_an_evaluation_replayed_counts_as_the_one_run_eagerly(monkeypatch):
    """Labels are the model's own eager predictions, so every image counts as correct only where
    each replay computes its own batch's logits."""
    from cnn_gpu.cli import train as train_cli
    rng = np.random.default_rng(14)
    images = 4 * 5 + 3   # a partial last batch, run eagerly
    x_test = rng.standard_normal((images, 3, 16, 16)).astype(np.float32)
    model = _setup("cnn", "float32", "sgd")[0]
    model.eval()
    predicted = np.concatenate([model(x_test[i:i + 4]).argmax(axis=1) for i in range(0, images, 4)])
    assert len(set(predicted.tolist())) > 1   # the predictions depend on the image
    dataset = types.SimpleNamespace(x_test=x_test, y_test=predicted)
    recorded = []
    real_record = replay.record
    monkeypatch.setattr(replay, "record", lambda *inputs: recorded.append(1) or real_record(*inputs))
    assert train_cli.evaluate(model, dataset, 4, "emu", replayed=True) == (images, images)
    assert len(recorded) == 1


@needs_emu
def test_gradients_zeroed_in_place_and_a_given_loss_gradient_replay_as_they_ran():
    """zero_grad(set_to_none=False) fills the recorded gradients with zeros, and a loss's backward
    with an upstream gradient multiplies by it: device calls a replay repeats (else the gradients
    would add up over the replays)."""
    batches = _batches("float32", 3)
    upstream = np.random.default_rng(15).standard_normal(BATCH).astype(np.float32)

    loss_fn = nn.CrossEntropyLoss(reduction="none").to("emu")

    def step(model, opt, x, labels, dy):
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward(dy), input_grad=False)
        opt.step()

    eager_model, eager_opt, _ = _setup("cnn", "float32", "sgd")
    for p in eager_model.parameters():   # gradients to zero in place
        p.grad = np.ones_like(p.data)
    for (images, labels), scale in zip(batches, (1, 2, 3)):
        step(eager_model, eager_opt, images, labels, upstream * scale)
    model, opt, _ = _setup("cnn", "float32", "sgd")
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    x, labels = (a.copy() for a in batches[0])
    dy = upstream.copy()
    with replay.record() as recorded:
        step(model, opt, x, labels, dy)
    for (new_x, new_labels), scale in zip(batches[1:], (2, 3)):
        x[...], labels[...], dy[...] = new_x, new_labels, upstream * scale
        recorded.replay()
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


def test_an_all_reduce_over_ranks_is_refused_while_recording(monkeypatch):
    from cnn_gpu import distributed
    monkeypatch.setattr(distributed._world, "_world", types.SimpleNamespace(size=2, rank=0))
    grads = [np.random.default_rng(16).standard_normal(3)]
    for reduce in (lambda: distributed.allreduce_sum(grads),
                   lambda: distributed.allreduce_gradients(nn.Linear(2, 2), count=4)):
        with pytest.raises(RuntimeError, match="all-reduce over ranks"):
            with replay.record():
                reduce()


@needs_emu
def test_a_recorded_backward_binds_its_gradients_again_for_an_eager_update():
    """Forward and backward recorded, the update eager after each replay, with zero_grad (which
    unbinds the gradients) before it: the replay binds each parameter's gradient again."""
    batches = _batches("float32", 3)
    eager_model, eager_opt, eager_loss_fn = _setup("cnn", "float32", "adam")
    for images, labels in batches:
        _train_step(eager_model, eager_opt, eager_loss_fn, images, labels)
    model, opt, loss_fn = _setup("cnn", "float32", "adam")
    x, labels = (a.copy() for a in batches[0])
    with replay.record() as forward_backward:
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    for new_x, new_labels in batches[1:]:
        opt.zero_grad()
        x[...], labels[...] = new_x, new_labels
        forward_backward.replay()
        opt.step()
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


@needs_emu
def test_a_dropout_of_p_0_counts_every_replayed_call_and_class_weights_are_read_anew():
    """Dropout(p=0) passes its input but counts each training call (its step is in state_dict);
    CrossEntropyLoss converts float64 class weights to float32 logits' dtype each call, by a
    device call: weights changed in place between replays are used."""
    dropout = nn.Dropout(0.0).to("emu")
    weight, new_weight = np.linspace(0.5, 2.0, CLASSES), np.linspace(2.0, 0.5, CLASSES)
    loss_fn = nn.CrossEntropyLoss(weight=weight.copy()).to("emu")
    rng = np.random.default_rng(17)
    logits, labels = rng.standard_normal((BATCH, CLASSES)).astype(np.float32), rng.integers(0, CLASSES, BATCH)
    with replay.record() as step:
        loss = loss_fn(dropout(logits), labels, as_array=True)
    loss_fn.weight[...] = new_weight
    step.replay()
    step.replay()
    assert int(dropout.step) == 3
    eager = F.cross_entropy(logits, labels, new_weight.astype(np.float32), backend="emu", as_array=True)[0]
    assert float(loss) == float(eager) != float(F.cross_entropy(logits, labels, weight.astype(np.float32),
                                                                 backend="emu", as_array=True)[0])


def _recorded_cnn_step():
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = _batches("float32", 1)[0]
    with replay.record() as step:
        _train_step(model, opt, loss_fn, x, labels)
    return model, opt, loss_fn, x, labels, step


@needs_emu
@pytest.mark.parametrize("change, refusal", [
    (lambda model, _: model.eval(), "in eval mode now"),
    (lambda model, _: model.load_state_dict(model.state_dict()), "other parameter or buffer arrays"),
    (lambda model, _: model.to("numpy"), "runs on 'numpy' now"),
    (lambda _, math: cnn_gpu.set_math_mode(math), "math mode is now 'tf32'"),
    # the recorded backward would still write the frozen weight's gradient, and the step train it
    (lambda model, _: model[0].requires_grad_(False), "frozen or unfrozen since"),
])
def test_a_replay_refuses_before_any_work_what_no_longer_fits_its_recording(change, refusal):
    """A layer's mode, its parameter or buffer arrays (replaced by load_state_dict or Module.to),
    which of its parameters train, and the math mode are what the recorded launches assumed: a replay checks them first."""
    model, *_, step = _recorded_cnn_step()
    before = [p.data.copy() for p in model.parameters()]
    step.replay()   # fine as recorded
    changed = [p.data.copy() for p in model.parameters()]
    try:
        change(model, "tf32")
        with pytest.raises(RuntimeError, match=refusal):
            step.replay()
    finally:
        cnn_gpu.set_math_mode("fp32")
    assert all((a != b).any() for a, b in zip(before, changed))   # the replay above trained
    for p, kept in zip(model.parameters(), changed):   # the refused one changed nothing
        np.testing.assert_array_equal(np.asarray(p.data), kept)


@needs_emu
def test_a_replay_refuses_a_gradient_bound_otherwise_than_when_recorded():
    """Forward and backward recorded with the gradients unbound write them anew; replayed again
    without a zero_grad (an eager backward would add to them) it refuses. Recorded adding into
    bound gradients, a replay after zero_grad (an eager backward would make new ones) refuses too."""
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = _batches("float32", 1)[0]
    with replay.record() as forward_backward:
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
    opt.zero_grad()
    forward_backward.replay()
    with pytest.raises(RuntimeError, match="is bound where the recorded backward found it unbound"):
        forward_backward.replay()
    with replay.record() as adding:   # gradients bound now: this backward adds to them
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
    adding.replay()   # bound to the same arrays: adds again, as an eager backward would
    opt.zero_grad()
    with pytest.raises(RuntimeError, match="is unbound where the recorded backward added"):
        adding.replay()


@needs_emu
def test_a_zero_d_device_call_replays_into_an_array_on_the_emulator():
    """NumPy makes 0-d results scalars (CuPy keeps arrays): inside a recording a device call's 0-d
    result is an array, which a replay can write into."""
    dloss = np.asarray(np.float32(0.5))
    scaler = GradScaler(init_scale=4.0)
    with replay.record() as step:
        scaled = scaler.scale(dloss)
    dloss[...] = 0.25
    step.replay()
    assert isinstance(scaled, np.ndarray) and float(scaled) == 1.0


@needs_emu
def test_replay_copies_new_inputs_into_the_recorded_ones_after_checking_them():
    batches = _batches("float32", 3)
    eager_model, eager_opt, eager_loss_fn = _setup("cnn", "float32", "sgd")
    eager_losses = [float(_train_step(eager_model, eager_opt, eager_loss_fn, *batch)) for batch in batches]
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = (a.copy() for a in batches[0])
    with replay.record(x, labels) as step:
        loss = _train_step(model, opt, loss_fn, x, labels)
    losses = [float(loss)]
    for new_x, new_labels in batches[1:]:
        step.replay(new_x, new_labels)
        losses.append(float(loss))
    assert losses == eager_losses
    np.testing.assert_array_equal(x, batches[-1][0])
    trained = [p.data.copy() for p in model.parameters()]
    images, targets = batches[0]
    for wrong, refusal in [((images,), "takes the 2 input"), ((images[:1], targets), "has shape"),
                           ((images.astype(np.float64), targets), "dtype float64"),
                           ((images.tolist(), targets), "got list")]:
        with pytest.raises((TypeError, ValueError), match=refusal):
            step.replay(*wrong)
    for p, kept in zip(model.parameters(), trained):   # refused before any work
        np.testing.assert_array_equal(p.data, kept)
    with pytest.raises(TypeError, match="not C-contiguous"):
        with replay.record(np.asfortranarray(images)):
            pass


@needs_emu
def test_zero_grad_in_place_on_a_fresh_model_replays_as_eager_steps():
    """zero_grad(set_to_none=False) before the first backward leaves the gradients unbound, as
    set_to_none does: recorded so, each replay unbinds them too and its backward binds anew."""
    batches = _batches("float32", 3)

    def step(model, opt, loss_fn, x, labels):
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), labels, as_array=True)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    eager_model, eager_opt, eager_loss_fn = _setup("cnn", "float32", "adam")
    for batch in batches:
        step(eager_model, eager_opt, eager_loss_fn, *batch)
    model, opt, loss_fn = _setup("cnn", "float32", "adam")
    x, labels = (a.copy() for a in batches[0])
    with replay.record(x, labels) as recorded:
        step(model, opt, loss_fn, x, labels)
    for batch in batches[1:]:
        recorded.replay(*batch)
    for mine, theirs in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(mine.data, theirs.data)


@needs_emu
@pytest.mark.parametrize("change", [
    lambda model, loss_fn: setattr(model[0], "stride", (2, 2)),
    lambda model, loss_fn: setattr(loss_fn, "label_smoothing", 0.1),
    lambda model, loss_fn: model.append(nn.ReLU()),
])
def test_a_replay_refuses_a_module_whose_settings_or_layers_changed(change):
    model, opt, loss_fn, x, labels, step = _recorded_cnn_step()
    change(model, loss_fn)
    with pytest.raises(RuntimeError, match="has had an attribute assigned"):
        step.replay()


@needs_emu
def test_a_backward_whose_forward_ran_outside_the_recording_is_refused():
    model, opt, loss_fn = _setup("cnn", "float32", "sgd")
    x, labels = _batches("float32", 1)[0]
    loss_fn(model(x), labels, as_array=True)
    with pytest.raises(RuntimeError, match="forward run outside the recording"):
        with replay.record():
            model.backward(loss_fn.backward(), input_grad=False)


@needs_emu
def test_a_module_that_sets_an_attribute_in_its_forward_replays():
    """What forward itself assigns (a replay never runs it) does not count against the recording;
    an assignment after it does."""
    class Counting(nn.Module):
        def forward(self, x):
            self.last_batch = x.shape[0]
            return F.relu(x, backend="emu")

    layer = Counting()
    x = np.random.default_rng(18).standard_normal(8).astype(np.float32)
    with replay.record(x) as step:
        y = layer(x)
    negated = -x
    step.replay(negated)
    np.testing.assert_array_equal(y, np.maximum(negated, 0))
    layer.last_batch = 3
    with pytest.raises(RuntimeError, match="has had an attribute assigned"):
        step.replay(x)


@needs_emu
def test_replayed_steps_of_batch_norms_running_relu6_hardswish_and_silu_equal_eager_ones():
    """Conv-BN-ReLU6, Conv-BN-Hardswish and Conv-BN-SiLU blocks (nn.Sequential runs each activation
    inside its batch norm): a recorded step replayed on two more batches leaves the parameters and
    running statistics of three eager steps, bit for bit."""
    def build():
        weights = np.random.default_rng(1)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False, rng=weights), nn.BatchNorm2d(4), nn.ReLU6(),
                             nn.Conv2d(4, 4, 1, bias=False, rng=weights), nn.BatchNorm2d(4), nn.Hardswish(),
                             nn.Conv2d(4, 4, 1, bias=False, rng=weights), nn.BatchNorm2d(4), nn.SiLU(),
                             nn.Flatten(), nn.Linear(4 * 36, 3, rng=weights))

    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), rng.integers(0, 3, 2)) for _ in range(3)]
    states = []
    for replayed in (False, True):
        model, loss_fn = build().to("emu"), nn.CrossEntropyLoss().to("emu")
        optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, target):
            optimizer.zero_grad()
            loss_fn(model(x), target, as_array=True)
            model.backward(loss_fn.backward())
            optimizer.step()

        if replayed:
            x, target = (a.copy() for a in batches[0])
            with replay.record(x, target) as recorded:
                step(x, target)
            for batch in batches[1:]:
                recorded.replay(*batch)
        else:
            for batch in batches:
                step(*batch)
        assert model._fused == {2, 5, 8}
        states.append({name: to_host(value).copy() for name, value in model.state_dict().items()})
    for name, value in states[0].items():
        assert value.tobytes() == states[1][name].tobytes(), name
