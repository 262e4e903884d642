"""`cnn-gpu train`: train a CNN and print its test accuracy.

Defaults: the small CNN on scikit-learn's bundled digits (standardised) with Adam and a cosine
learning-rate decay over the epochs, on the best available device. `--save` writes a checkpoint
after every epoch (atomically); `--resume` continues from one with its settings (the model, data
set, optimizer and seed must agree), bit for bit as if the run had not stopped.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

# Settings a checkpoint records; on --resume, those not given on the command line come from it.
DEFAULTS = {"model": "cnn", "dataset": "digits", "data": None, "optimizer": "adam", "lr": None,
            "batch_size": 32, "seed": 0, "epochs": 15}
# Initial learning rates by (model, optimizer), tuned on digits (the ResNet, without batch norm,
# learns faster with a larger Adam step).
DEFAULT_LR = {("cnn", "adam"): 2e-3, ("cnn", "sgd"): 0.05, ("resnet", "adam"): 5e-3, ("resnet", "sgd"): 0.05}
SGD_MOMENTUM = 0.9
# Settings that must not change across a resume (the saved state would no longer fit, or the
# seed would be silently ignored: the checkpoint's weights and shuffling state replace it).
FIXED_ON_RESUME = ("model", "dataset", "optimizer", "seed")


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "numpy", "emu", "cuda"), default="auto",
                        help="where to train: auto = cuda when CuPy sees a GPU, else numpy (default: auto)")
    parser.add_argument("--epochs", type=int,
                        help=f"total number of epochs, counting those before a resume; the learning rate decays "
                             f"over them (default: {DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"default: {DEFAULTS['batch_size']}")
    parser.add_argument("--lr", type=float,
                        help="initial learning rate (default: " + ", ".join(
                            f"{lr:g} for {model} with {optimizer}" for (model, optimizer), lr in DEFAULT_LR.items())
                        + ")")
    parser.add_argument("--optimizer", choices=("sgd", "adam"),
                        help=f"adam, or sgd with momentum {SGD_MOMENTUM} (default: {DEFAULTS['optimizer']})")
    parser.add_argument("--seed", type=int, help="seed of the initial weights and the shuffling (default: 0)")
    parser.add_argument("--model", choices=("cnn", "resnet"),
                        help="cnn: (conv-ReLU-pool) x2 + linear; resnet: a small ResNet (default: cnn)")
    parser.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist", "npz"),
                        help="digits: scikit-learn's bundled 8x8 digits; mnist/fashion-mnist: a folder of IDX "
                             "files; npz: a file with x, y arrays (default: digits)")
    parser.add_argument("--data", metavar="PATH", help="the folder (mnist, fashion-mnist) or file (npz)")
    parser.add_argument("--save", metavar="PATH", help="write a checkpoint here after every epoch")
    parser.add_argument("--resume", metavar="PATH", help="continue from this checkpoint")
    parser.add_argument("--max-batches", type=int, metavar="N",
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


def _settings(args, checkpoint_meta):
    """The run's settings: the command line, then the checkpoint being resumed, then defaults."""
    saved = checkpoint_meta["settings"] if checkpoint_meta else {}
    settings = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if given is not None and key in FIXED_ON_RESUME and key in saved and given != saved[key]:
            raise UsageError(f"--{key.replace('_', '-')} {given} differs from the resumed checkpoint's "
                             f"{saved[key]}")
        settings[key] = given if given is not None else saved.get(key, default)
    if settings["lr"] is None:
        settings["lr"] = DEFAULT_LR[settings["model"], settings["optimizer"]]
    if settings["dataset"] != "digits" and settings["data"] is None:
        raise UsageError(f"--dataset {settings['dataset']} needs --data PATH")
    if settings["dataset"] == "digits" and settings["data"] is not None:
        raise UsageError("--data is for --dataset mnist, fashion-mnist or npz; digits are bundled")
    if settings["epochs"] < 1:
        raise UsageError(f"--epochs must be >= 1, got {settings['epochs']}")
    if settings["batch_size"] < 1:
        raise UsageError(f"--batch-size must be >= 1, got {settings['batch_size']}")
    if not settings["lr"] > 0:
        raise UsageError(f"--lr must be > 0, got {settings['lr']}")
    return settings


def _train(args) -> int:
    from .. import checkpoint, data, models, nn, optim

    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"--max-batches must be >= 1, got {args.max_batches}")
    if args.save and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        raise UsageError(f"--save {args.save}: its folder does not exist")
    resumed = None
    if args.resume:
        try:
            resumed = checkpoint.load(args.resume)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
    settings = _settings(args, resumed[2] if resumed else None)
    device = choose_device(args.device)
    try:
        dataset = data.load(settings["dataset"], settings["data"]).standardized()
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None

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
        model_state, optimizer_state, meta = resumed
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
        except ValueError as err:
            raise UsageError(f"{args.resume}: {err}") from None
        shuffle_rng.bit_generator.state = meta["shuffle_rng"]
        start_epoch = meta["epoch"]

    epochs = settings["epochs"]
    print(f"training {settings['model']} on {dataset.name} ({len(dataset.x_train)} train / {len(dataset.x_test)} "
          f"test images of {'x'.join(map(str, dataset.image_shape))}) on {device}: {settings['optimizer']} "
          f"lr={settings['lr']:g}, batch {settings['batch_size']}, "
          + (f"epochs {start_epoch + 1}..{epochs}" if start_epoch < epochs else f"all {epochs} epochs done"))
    started = time.perf_counter()
    loss_fn = nn.CrossEntropyLoss().to(device)
    accuracy = None
    for epoch in range(start_epoch, epochs):
        optimizer.param_groups[0]["lr"] = cosine_lr(settings["lr"], epoch, epochs)
        with progress_bar(dataset, settings["batch_size"], args.max_batches, f"epoch {epoch + 1}/{epochs}") as bar:
            train_epoch(model, loss_fn, optimizer, dataset, settings["batch_size"], shuffle_rng, device, bar)
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


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (from 0): base_lr decayed along half a cosine over `epochs`."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def progress_bar(dataset, batch_size, max_batches, description):
    from tqdm import tqdm

    from ..data import num_batches
    total = num_batches(len(dataset.x_train), batch_size)
    if max_batches:
        total = min(total, max_batches)
    return tqdm(total=total, desc=description, unit="batch", dynamic_ncols=True)


def train_epoch(model, loss_fn, optimizer, dataset, batch_size, shuffle_rng, device, bar):
    """One pass over the shuffled training set (bar.total batches), showing the running loss and
    accuracy on the progress bar."""
    from ..data import batches
    from ..nn.module import to_backend_array
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for index, (x, y) in enumerate(batches(dataset.x_train, dataset.y_train, batch_size, shuffle_rng)):
        if index == bar.total:
            break
        x, y = to_backend_array(x, device), to_backend_array(y, device)
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

