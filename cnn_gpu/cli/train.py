"""`cnn-gpu train`: train a CNN and print its test accuracy.

Defaults: the small CNN on scikit-learn's bundled digits (standardised) with Adam and a cosine
learning-rate decay over the epochs, on the best available device. `--save` writes a checkpoint
after every epoch (atomically); `--resume` continues from one with its settings (the model, data
set, optimizer and seed must agree), bit for bit as if the run had not stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

# Settings a checkpoint records; on --resume, those not given on the command line come from it.
DEFAULTS = {"model": "cnn", "dataset": "digits", "data": None, "optimizer": "adam", "lr": None,
            "batch_size": 32, "seed": 0, "epochs": 15, "warmup_epochs": 0, "label_smoothing": 0.0}
# Initial learning rates by (model, optimizer): cnn and resnet tuned on digits (the small ResNet
# takes a larger Adam step); resnet18's are the usual CIFAR-10 ones (SGD 0.1 at batch 128).
DEFAULT_LR = {("cnn", "adam"): 2e-3, ("cnn", "sgd"): 0.05, ("resnet", "adam"): 5e-3, ("resnet", "sgd"): 0.05,
              ("resnet18", "adam"): 1e-3, ("resnet18", "sgd"): 0.1}
SGD_MOMENTUM = 0.9
# Settings that must not change across a resume (the saved state would no longer fit, or the
# seed would be silently ignored: the checkpoint's weights and shuffling state replace it).
FIXED_ON_RESUME = ("model", "dataset", "optimizer", "seed")
# The state each optimizer keeps for a parameter once it has stepped it (none before): a resumed
# checkpoint's must match, or the first step would fail or compute garbage.
OPTIMIZER_STATE_KEYS = {"adam": {"step", "exp_avg", "exp_avg_sq"}, "sgd": {"momentum_buffer"}}


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


def _number_type(parse, accept, requirement: str):
    """An argparse type: the text parsed by `parse` and refused (exit status 2) unless accept(value)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value
    return convert


positive_int = _number_type(int, lambda value: value >= 1, "an integer >= 1")
non_negative_int = _number_type(int, lambda value: value >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda value: math.isfinite(value) and value > 0, "a finite number > 0")
unit_float = _number_type(float, lambda value: 0 <= value <= 1, "a number in [0, 1]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "numpy", "emu", "cuda"), default="auto",
                        help="where to train: auto = cuda when CuPy sees a GPU, else numpy (default: auto)")
    parser.add_argument("--epochs", type=positive_int,
                        help=f"total number of epochs, counting those before a resume; the learning rate decays "
                             f"over them (default: {DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=positive_int, help=f"default: {DEFAULTS['batch_size']}")
    parser.add_argument("--lr", type=positive_float,
                        help="initial learning rate (default: " + ", ".join(
                            f"{lr:g} for {model} with {optimizer}" for (model, optimizer), lr in DEFAULT_LR.items())
                        + ")")
    parser.add_argument("--optimizer", choices=("sgd", "adam"),
                        help=f"adam, or sgd with momentum {SGD_MOMENTUM} (default: {DEFAULTS['optimizer']})")
    parser.add_argument("--seed", type=non_negative_int,
                        help="seed of the initial weights and the shuffling (default: 0)")
    parser.add_argument("--model", choices=("cnn", "resnet", "resnet18"),
                        help="cnn: (conv-ReLU-pool) x2 + linear; resnet: a small ResNet with batch norm; "
                             "resnet18: the CIFAR ResNet-18 (default: cnn)")
    parser.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist", "npz", "cifar10"),
                        help="digits: scikit-learn's bundled 8x8 digits; mnist/fashion-mnist: a folder of IDX "
                             "files; npz: a file with x, y arrays; cifar10: the official python or binary "
                             "batches, trained with random crops and flips (default: digits)")
    parser.add_argument("--data", metavar="PATH",
                        help="the folder (mnist, fashion-mnist, cifar10: it or its cifar-10-batches-py/-bin "
                             "subfolder) or file (npz)")
    parser.add_argument("--warmup-epochs", type=non_negative_int, metavar="N",
                        help="raise the learning rate linearly, step by step, over this many first epochs, then "
                             "decay it along half a cosine over the rest (default: 0)")
    parser.add_argument("--label-smoothing", type=unit_float, metavar="S",
                        help="mix each one-hot target with the uniform distribution by this much (default: 0)")
    parser.add_argument("--save", metavar="PATH",
                        help="write a checkpoint here after every epoch (replacing the file atomically)")
    parser.add_argument("--resume", metavar="PATH", help="continue from this checkpoint")
    parser.add_argument("--max-batches", type=positive_int, metavar="N",
                        help="stop each epoch (and the evaluation) after N batches, for quick runs")


def run(args) -> int:
    try:
        return _train(args)
    except UsageError as err:
        print(f"cnn-gpu train: error: {err}", file=sys.stderr)
        return 2


def choose_device(requested: str) -> str:
    from ..backend import cupy_or_none, why_unavailable
    if requested == "auto":
        if cupy_or_none() is not None:
            return "cuda"
        print("no CUDA GPU found (CuPy sees none): training on the CPU with the numpy backend", file=sys.stderr)
        return "numpy"
    reason = why_unavailable(requested)
    if reason:
        raise UsageError(f"device {requested!r} is not available: {reason}")
    return requested


class _CheckpointSettingsParser(argparse.ArgumentParser):
    """The train options' parser, raising UsageError where argparse would exit."""

    def error(self, message):
        raise UsageError(message)


def _checked_saved_settings(saved, source: str) -> dict:
    """The settings a checkpoint records (those of DEFAULTS; None = not recorded), each refused
    as the command line would refuse it: they go through the same argparse types and choices."""
    if not isinstance(saved, dict):
        raise UsageError(f"{source}: malformed checkpoint: its settings are not an object")
    recorded = {key: saved[key] for key in DEFAULTS if saved.get(key) is not None}
    for key, value in recorded.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UsageError(f"{source}: malformed checkpoint: setting {key} is {value!r}")
    parser = _CheckpointSettingsParser(add_help=False)
    add_arguments(parser)
    try:
        parsed = parser.parse_args([f"--{key.replace('_', '-')}={value}" for key, value in recorded.items()])
    except UsageError as err:
        raise UsageError(f"{source}: malformed checkpoint setting: {err}") from None
    return {key: getattr(parsed, key) for key in recorded}


def _load_checkpoint(path: str):
    """(model_state, optimizer_state, meta) of the checkpoint to resume, its meta checked (epoch,
    settings, shuffling state): UsageError before anything is built from it."""
    from .. import checkpoint
    try:
        model_state, optimizer_state, meta = checkpoint.load(path)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    epoch = meta.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"{path}: malformed checkpoint: its epoch is {epoch!r}, not an integer >= 0")
    meta = dict(meta, settings=_checked_saved_settings(meta.get("settings"), path))
    try:
        np.random.default_rng().bit_generator.state = meta.get("shuffle_rng")
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise UsageError(f"{path}: malformed checkpoint: its shuffling state does not fit numpy's PCG64 "
                         f"({type(err).__name__}: {err})") from None
    return model_state, optimizer_state, meta


def _settings(args, saved: dict) -> dict:
    """The run's settings: the command line, then the checkpoint being resumed, then defaults."""
    settings = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if given is not None and key in FIXED_ON_RESUME and key in saved and given != saved[key]:
            raise UsageError(f"--{key.replace('_', '-')} {given} differs from the resumed checkpoint's "
                             f"{saved[key]}")
        settings[key] = given if given is not None else saved.get(key, default)
    if settings["lr"] is None:
        settings["lr"] = DEFAULT_LR[settings["model"], settings["optimizer"]]
    return settings


def _check_args(args, settings: dict) -> None:
    """Checks of the run that need no data (UsageError), after each option's own value passed its
    argparse type: the options fit together and the --save path can be written (probed, so a bad
    one fails now rather than after the first epoch)."""
    from .. import checkpoint
    if settings["dataset"] != "digits" and settings["data"] is None:
        raise UsageError(f"--dataset {settings['dataset']} needs --data PATH")
    if settings["dataset"] == "digits" and settings["data"] is not None:
        raise UsageError("--data is for --dataset mnist, fashion-mnist, npz or cifar10; digits are bundled")
    if settings["warmup_epochs"] >= settings["epochs"]:
        raise UsageError(f"--warmup-epochs {settings['warmup_epochs']} must be below --epochs {settings['epochs']} "
                         f"(the cosine decay needs an epoch)")
    if args.save:
        try:
            checkpoint.check_writable(args.save)
        except ValueError as err:
            raise UsageError(f"--save {err}") from None


def _load_dataset(settings: dict):
    """The data set, checked by data.validate_dataset and standardised; UsageError if unfit."""
    from .. import data
    try:
        dataset = data.validate_dataset(data.load(settings["dataset"], settings["data"]))
        # CIFAR-10 comes normalised per channel
        return dataset if settings["dataset"] == "cifar10" else dataset.standardized()
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None


def _restore(model, optimizer, optimizer_name: str, resumed, source: str) -> None:
    """Load a checkpoint's weights and optimizer state, refusing (UsageError) state that does not
    fit: shapes, the hyper-parameters this trainer uses (all but the scheduled lr), the state keys."""
    model_state, optimizer_state, _ = resumed
    # The optimizer is built with fixed hyper-parameters; compare them as the checkpoint's JSON holds them.
    own = json.loads(json.dumps({k: v for k, v in optimizer.state_dict()["param_groups"][0].items() if k != "lr"}))
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{source}: {err}") from None
    saved = {k: v for k, v in optimizer_state["param_groups"][0].items() if k != "lr"}
    if saved != own:
        raise UsageError(f"{source}: malformed checkpoint: optimizer hyper-parameters {saved}, expected {own}")
    for i, (parameter, state) in enumerate(zip(optimizer.params, optimizer.state)):
        if state and set(state) != OPTIMIZER_STATE_KEYS[optimizer_name]:
            raise UsageError(f"{source}: malformed checkpoint: optimizer state {i} has {sorted(state)}, expected "
                             f"{sorted(OPTIMIZER_STATE_KEYS[optimizer_name])}")
        for key, value in state.items():
            fits = (isinstance(value, int) and not isinstance(value, bool) and value >= 1 if key == "step"
                    else getattr(value, "shape", None) == parameter.data.shape)
            if not fits:
                raise UsageError(f"{source}: malformed checkpoint: optimizer state {i}.{key} is {value!r:.60}")


def _train(args) -> int:
    from .. import checkpoint, models, nn, optim
    from ..lr_scheduler import WarmupCosine

    # Everything is checked before the first epoch: no run fails late for a reason known now.
    resumed = _load_checkpoint(args.resume) if args.resume else None
    settings = _settings(args, resumed[2]["settings"] if resumed else {})
    _check_args(args, settings)
    device = choose_device(args.device)
    dataset = _load_dataset(settings)

    nn.init.manual_seed(settings["seed"])
    try:
        model = models.build(settings["model"], dataset.image_shape, dataset.num_classes).to(device)
    except ValueError as err:   # images too small for the model
        raise UsageError(str(err)) from None
    if settings["optimizer"] == "adam":
        optimizer = optim.Adam(model.parameters(), lr=settings["lr"])
    else:
        optimizer = optim.SGD(model.parameters(), lr=settings["lr"], momentum=SGD_MOMENTUM)
    shuffle_rng = np.random.default_rng(settings["seed"])
    start_epoch = 0
    if resumed:
        _restore(model, optimizer, settings["optimizer"], resumed, args.resume)
        shuffle_rng.bit_generator.state = resumed[2]["shuffle_rng"]
        start_epoch = resumed[2]["epoch"]

    epochs = settings["epochs"]
    print(f"training {settings['model']} on {dataset.name} ({len(dataset.x_train)} train / {len(dataset.x_test)} "
          f"test images of {'x'.join(map(str, dataset.image_shape))}) on {device}: {settings['optimizer']} "
          f"lr={settings['lr']:g}, batch {settings['batch_size']}, "
          + (f"epochs {start_epoch + 1}..{epochs}" if start_epoch < epochs else f"all {epochs} epochs done"))
    started = time.perf_counter()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"]).to(device)
    accuracy = None
    for epoch in range(start_epoch, epochs):
        with progress_bar(dataset, settings["batch_size"], args.max_batches, f"epoch {epoch + 1}/{epochs}") as bar:
            schedule = WarmupCosine(optimizer, settings["lr"], epochs, bar.total, settings["warmup_epochs"])
            augment = _augmentation(settings, epoch, bar.total, device)
            train_epoch(model, loss_fn, optimizer, dataset, settings["batch_size"], shuffle_rng, device, bar,
                        lambda index, epoch=epoch: schedule.apply(epoch, index), augment)
            accuracy = evaluate(model, dataset, settings["batch_size"], device, args.max_batches)
            bar.set_postfix_str(f"{bar.postfix}, test={accuracy[0] / accuracy[1]:.1%}")
        if args.save:
            meta = {"epoch": epoch + 1, "settings": settings, "shuffle_rng": shuffle_rng.bit_generator.state,
                    "test_accuracy": accuracy[0] / accuracy[1]}
            checkpoint.save(args.save, model.state_dict(), optimizer.state_dict(), meta)
    if accuracy is None:  # resumed from a checkpoint that already has every epoch
        accuracy = evaluate(model, dataset, settings["batch_size"], device, args.max_batches)
    correct, total = accuracy
    print(f"test accuracy: {100 * correct / total:.1f}% ({correct}/{total}"
          f"{', first ' + str(args.max_batches) + ' batches' if args.max_batches else ''}) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def _augmentation(settings, epoch: int, steps_per_epoch: int, device: str):
    """CIFAR-10's random crop and flip of each training batch on the training device (None for
    other data sets), drawn from (seed, global step): a resumed run draws what the uninterrupted
    one would have."""
    if settings["dataset"] != "cifar10":
        return None
    from ..cifar import random_crop_flip
    return lambda x, index: random_crop_flip(x, settings["seed"], epoch * steps_per_epoch + index, backend=device)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (from 0): base_lr decayed along half a cosine over `epochs`
    (the schedule with no warm-up)."""
    from ..lr_scheduler import WarmupCosine
    return WarmupCosine(None, base_lr, epochs, 1).lr(epoch)


def progress_bar(dataset, batch_size, max_batches, description):
    from tqdm import tqdm

    from ..data import num_batches
    total = num_batches(len(dataset.x_train), batch_size)
    if max_batches:
        total = min(total, max_batches)
    return tqdm(total=total, desc=description, unit="batch", dynamic_ncols=True)


def train_epoch(model, loss_fn, optimizer, dataset, batch_size, shuffle_rng, device, bar, before_step=None,
                augment=None):
    """One pass over the shuffled training set (bar.total batches), showing the running loss and
    accuracy on the progress bar. before_step(index) runs before batch `index` (the learning-rate
    schedule); augment(x, index) transforms the batch on the device."""
    from ..data import batches
    from ..nn.module import to_backend_array
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for index, (x, y) in enumerate(batches(dataset.x_train, dataset.y_train, batch_size, shuffle_rng)):
        if index == bar.total:
            break
        x, y = to_backend_array(x, device), to_backend_array(y, device)
        if before_step is not None:
            before_step(index)
        if augment is not None:
            x = augment(x, index)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()
        loss_sum += loss * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.1%}", refresh=False)
        bar.update()


def evaluate(model, dataset, batch_size, device, max_batches=None):
    """(correct, total) on the test set (its first max_batches batches when given)."""
    from ..data import batches
    from ..nn.module import to_backend_array
    model.eval()
    correct = total = 0
    for index, (x, y) in enumerate(batches(dataset.x_test, dataset.y_test, batch_size)):
        if max_batches and index == max_batches:
            break
        logits = model(to_backend_array(x, device))
        correct += int((logits.argmax(axis=1) == to_backend_array(y, device)).sum())
        total += len(y)
    return correct, total

