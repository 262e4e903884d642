"""`cnn-gpu train`: train a CNN and print its test accuracy.

Defaults: the small CNN on scikit-learn's bundled digits (standardised) with Adam and a cosine
learning-rate decay over the epochs, on the best available device. `--save` writes a checkpoint
after every epoch (atomically); `--resume` continues from one with its settings (the model, data
set, optimizer and seed must agree), bit for bit as if the run had not stopped.

Data-parallel: under `mpiexec -n N` (or with `--nproc N`, which relaunches itself under the
mpiexec of mpi4py's MPI) every rank trains on its shard of each global batch of N x --batch-size
images, gradients are averaged across ranks (cnn_gpu.distributed), and rank 0 alone prints,
saves checkpoints and reports the accuracy counted over all ranks' shards of the test set.

Precision (`--precision`): fp32; tf32, training and evaluation inside math_mode("tf32"); fp16, a
float16 model and batches (the optimizer keeps FP32 master weights) with the loss gradient scaled
dynamically by cnn_gpu.amp.GradScaler, unscaled after the all-reduce so every rank skips the same
overflowing steps; the checkpoint keeps the scaler's state.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

from pathlib import Path

import numpy as np

from ..grad_mode import no_grad
from . import non_negative_int, path_argument, positive_float, positive_int, seed, unit_float
from .metrics import RunningMetrics, correct_count, read_count

# Settings a checkpoint records; on --resume, those not given on the command line come from it.
DEFAULTS = {"model": "cnn", "dataset": "digits", "data": None, "optimizer": "adam", "lr": None,
            "batch_size": 32, "seed": 0, "epochs": 15, "warmup_epochs": 0, "label_smoothing": 0.0,
            "precision": "fp32", "weight_decay": None}
# Initial learning rates by (model, optimizer): cnn and resnet tuned on digits (the small ResNet
# takes a larger Adam step); resnet18's are the usual CIFAR-10 ones (SGD 0.1 at batch 128).
DEFAULT_LR = {("cnn", "adam"): 2e-3, ("cnn", "sgd"): 0.05, ("resnet", "adam"): 5e-3, ("resnet", "sgd"): 0.05,
              ("resnet18", "adam"): 1e-3, ("resnet18", "sgd"): 0.1}
DEFAULT_LR.update({(model, "adamw"): lr for (model, kind), lr in list(DEFAULT_LR.items()) if kind == "adam"})
# RMSprop: PyTorch's default 0.01 diverges on these models; 1e-3 is the usual (Keras's default) rate
DEFAULT_LR.update({(model, "rmsprop"): 1e-3 for model in ("cnn", "resnet", "resnet18")})
# torch.optim's other rules at PyTorch's default rates (the cnn on digits: 94.7% with radam, 96.9-98.3% with
# the others, 15 epochs on numpy)
TORCH_DEFAULT_LR = {"adagrad": 1e-2, "adamax": 2e-3, "nadam": 2e-3, "radam": 1e-3, "adadelta": 1.0}
TORCH_RULES = {"adagrad": "Adagrad", "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam", "adadelta": "Adadelta"}
DEFAULT_LR.update({(model, kind): lr for model in ("cnn", "resnet", "resnet18")
                   for kind, lr in TORCH_DEFAULT_LR.items()})
# Weight decay by optimizer where --weight-decay is not given: AdamW's is PyTorch's default, the others none
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2}
SGD_MOMENTUM = 0.9
# Settings that must not change across a resume (the saved state would no longer fit, or the
# seed would be silently ignored: the checkpoint's weights and shuffling state replace it).
FIXED_ON_RESUME = ("model", "dataset", "optimizer", "seed", "precision")
# The dtype of the model and its input batches by --precision (tf32 is float32 in another math mode).
PRECISION_DTYPES = {"fp32": np.float32, "tf32": np.float32, "fp16": np.float16}


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


class RefusedByTheRanks(UsageError):
    """The checks before training refused on some ranks: rank 0 has printed each refusal once, and
    every rank exits 2 (none waits in a collective: they all checked first)."""


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
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "rmsprop", *TORCH_DEFAULT_LR),
                        help=f"adam, adamw (its --weight-decay decoupled), rmsprop (PyTorch's defaults but the "
                             f"rate), {', '.join(TORCH_DEFAULT_LR)} (PyTorch's defaults) or sgd with momentum "
                             f"{SGD_MOMENTUM} "
                             f"(default: {DEFAULTS['optimizer']})")
    parser.add_argument("--seed", type=seed,
                        help="seed of the initial weights and the shuffling (default: 0)")
    parser.add_argument("--model", choices=("cnn", "resnet", "resnet18"),
                        help="cnn: (conv-ReLU-pool) x2 + linear; resnet: a small ResNet with batch norm; "
                             "resnet18: the CIFAR ResNet-18 (default: cnn)")
    parser.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist", "npz", "cifar10"),
                        help="digits: scikit-learn's bundled 8x8 digits; mnist/fashion-mnist: a folder of IDX "
                             "files; npz: a file with x, y arrays; cifar10: the official python or binary "
                             "batches, trained with random crops and flips (default: digits)")
    parser.add_argument("--data", type=path_argument, metavar="PATH",
                        help="the folder (mnist, fashion-mnist, cifar10: it or its cifar-10-batches-py/-bin "
                             "subfolder) or file (npz)")
    parser.add_argument("--warmup-epochs", type=non_negative_int, metavar="N",
                        help="raise the learning rate linearly, step by step, over this many first epochs, then "
                             "decay it along half a cosine over the rest (default: 0)")
    parser.add_argument("--label-smoothing", type=unit_float, metavar="S",
                        help="mix each one-hot target with the uniform distribution by this much (default: 0)")
    parser.add_argument("--weight-decay", type=unit_float, metavar="W",
                        help="the optimizer's weight decay, on every parameter as PyTorch's weight_decay (default: "
                             "0, adamw 0.01 as PyTorch's; CIFAR-10 ResNet recipes use 5e-4 with SGD)")
    parser.add_argument("--precision", choices=tuple(PRECISION_DTYPES),
                        help="fp32; tf32: float32 convolutions with TF32 operands; fp16: float16 weights and "
                             "activations (FP32 math, FP32 master weights in the optimizer) with dynamic loss "
                             "scaling, on every device (default: fp32)")
    parser.add_argument("--save", type=path_argument, metavar="PATH",
                        help="write a checkpoint here after every epoch (replacing the file atomically)")
    parser.add_argument("--resume", type=path_argument, metavar="PATH",
                        help="continue from this checkpoint; the settings it records (model, precision, epochs, "
                             "batch size, ...) come from it where not given here")
    parser.add_argument("--max-batches", type=non_negative_int, metavar="N",
                        help="stop each epoch (and the evaluation) after N batches, for quick runs (0: every "
                             "batch, where a resumed checkpoint had a limit)")
    parser.add_argument("--replay", action="store_true",
                        help="record each epoch's first full batch as a step and replay it for the others "
                             "(cnn_gpu.replay), and the evaluation's first full batch likewise: the host issues "
                             "the launches without their Python, with the same results; emu or cuda, one process")
    parser.add_argument("--sync-bn", action="store_true",
                        help="with several processes, normalise by the whole global batch's statistics "
                             "(nn.SyncBatchNorm.convert_sync_batchnorm; each process's own batch otherwise); a "
                             "global batch that leaves a process no image, only an epoch's uneven last one can, "
                             "is skipped by every process")
    parser.add_argument("--nproc", type=positive_int, metavar="N",
                        help="train data-parallel in N processes on this machine: relaunches itself under "
                             "mpiexec (pip install 'cnn_gpu[mpi]'); --batch-size is per process")


def run(args) -> int:
    try:
        if args.nproc is not None and args.nproc > 1:
            return _relaunch_under_mpiexec(args)
        return _train(args)
    except RefusedByTheRanks:
        return 2
    except UsageError as err:
        from .. import distributed
        world = distributed.world()
        prefix = f"[rank {world.rank}] " if world.size > 1 else ""
        print(f"{prefix}cnn-gpu train: error: {err}", file=sys.stderr)
        # an error only some ranks see (a GPU, a file on one machine) would leave the others
        # waiting in the replica check's collective until it times out
        world.abort(2)
        return 2


def _relaunch_under_mpiexec(args) -> int:
    """`--nproc N`: run this same command in N processes under the mpiexec that comes with
    mpi4py's MPI (the mpich wheel puts it next to the Python executable), for one machine."""
    from .. import distributed
    if distributed.world_size() > 1:
        raise UsageError("--nproc relaunches under mpiexec; this process already runs under it with "
                         f"{distributed.world_size()} ranks")
    _checked_settings(args, args.nproc)   # what every rank would refuse, refused once, here
    try:
        mpiexec = distributed.find_mpiexec()
    except RuntimeError as err:
        raise UsageError(f"--nproc {err}") from None
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    command = [mpiexec, "-n", str(args.nproc), sys.executable, "-m", "cnn_gpu", *_without_nproc(argv)]
    return subprocess.call(command)


def _without_nproc(argv):
    """argv without --nproc and its value, as argparse took it: also abbreviated (--npro 2)."""
    def is_nproc(option):   # argparse accepts a unique prefix; no other option's name starts like nproc
        return len(option) > 2 and "--nproc".startswith(option)

    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif is_nproc(item):
            skip = True
        elif not is_nproc(item.split("=", 1)[0]) or "=" not in item:
            kept.append(item)
    return kept


def choose_device(requested: str) -> str:
    """The device to train on; with several ranks on a GPU machine, each rank's GPU is its local
    rank (one process per GPU), made current before the backend's probe touches a GPU: else every
    rank would also hold a CUDA context and a cuBLAS handle on GPU 0."""
    from .. import distributed
    if requested in ("auto", "cuda") and distributed.world_size() > 1:
        _use_local_gpu()
    return _choose_device(requested)


def _use_local_gpu() -> None:
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()   # makes no CUDA context
    except Exception:   # no usable CuPy: _choose_device says why, or trains on the CPU
        return
    from .. import distributed
    if count and distributed.local_rank() >= count:
        raise UsageError(f"{distributed.local_rank() + 1} ranks on this machine but only {count} GPUs: "
                         f"start one process per GPU")
    if count:
        cupy.cuda.Device(distributed.local_rank()).use()


def _choose_device(requested: str) -> str:
    from ..backend import cupy_or_none, why_unavailable
    if requested == "auto":
        if cupy_or_none() is not None:
            return "cuda"
        from .. import distributed
        if distributed.rank() == 0:
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
    for key, absent in (("max_batches", None), ("world_size", 1), ("blas_threads", None)):
        value = meta.get(key, absent)   # what the run recorded besides its settings
        if value is not absent and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{path}: malformed checkpoint: its {key} is {value!r}, not an integer >= 1")
    meta = dict(meta, settings=_checked_saved_settings(meta.get("settings"), path))
    meta["settings"].setdefault("precision", "fp32")   # checkpoints from before --precision trained in fp32
    meta["settings"].setdefault("weight_decay", 0.0)   # ... and from before --weight-decay without it
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
        if key == "data" and given is not None:   # recorded as an absolute path: a resume from elsewhere finds it
            given = os.path.abspath(given)
        settings[key] = given if given is not None else saved.get(key, default)
    if settings["lr"] is None:
        settings["lr"] = DEFAULT_LR[settings["model"], settings["optimizer"]]
    if settings["weight_decay"] is None:
        settings["weight_decay"] = DEFAULT_WEIGHT_DECAY.get(settings["optimizer"], 0.0)
    return settings


def _check_args(args, settings: dict) -> None:
    """Checks of the run that need no data (UsageError), after each option's own value passed its
    argparse type: the options fit together and the --save path can be written (probed, so a bad
    one fails now rather than after the first epoch)."""
    from .. import checkpoint, distributed
    if settings["dataset"] != "digits" and settings["data"] is None:
        raise UsageError(f"--dataset {settings['dataset']} needs --data PATH")
    if settings["dataset"] == "digits" and settings["data"] is not None:
        raise UsageError("--data is for --dataset mnist, fashion-mnist, npz or cifar10; digits are bundled")
    if settings["warmup_epochs"] >= settings["epochs"]:
        raise UsageError(f"--warmup-epochs {settings['warmup_epochs']} must be below --epochs {settings['epochs']} "
                         f"(the cosine decay needs an epoch)")
    if args.save and distributed.rank() == 0:   # the one rank that writes it
        try:
            checkpoint.check_writable(args.save)
        except ValueError as err:
            raise UsageError(f"--save {err}") from None
        if settings["data"] is not None and _overwrites(args.save, settings["data"]):
            raise UsageError(f"--save {args.save} would overwrite the training data (--data {settings['data']})")


def _overwrites(save: str, data: str) -> bool:
    """Whether writing `save` would replace the data file `data` or an existing file inside the data
    folder `data` (links followed)."""
    target, source = Path(os.path.realpath(save)), Path(os.path.realpath(data))
    return target == source or (source.is_dir() and target.is_relative_to(source) and target.exists())


def _load_dataset(settings: dict):
    """The data set, checked by data.validate_dataset and standardised; UsageError if unfit."""
    from .. import data
    try:
        dataset = data.validate_dataset(data.load(settings["dataset"], settings["data"]))
        # CIFAR-10 comes normalised per channel
        return dataset if settings["dataset"] == "cifar10" else dataset.standardized()
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None


def _fingerprint(dataset) -> str:
    """Sizes, labels and a sample of the images (64 spread over each split) of the data set, hashed:
    the replica check's test that every rank loaded the same data."""
    import hashlib
    digest = hashlib.sha256()
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        digest.update(repr((x.shape, str(x.dtype), y.shape, str(y.dtype))).encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        digest.update(np.ascontiguousarray(x[::max(1, len(x) // 64)]).tobytes())
    return digest.hexdigest()[:16]


# The optimizer's hyper-parameters that follow the run's settings (the schedule's lr, --weight-decay),
# not the checkpoint: a resume may change them, as any setting (said by _changed_on_resume)
SETTING_HYPERS = ("lr", "weight_decay")
# ...and what is no hyper-parameter: the group's parameter indices (checkpoints before them lack them)
NOT_COMPARED = (*SETTING_HYPERS, "params")


def _restore(model, optimizer, resumed, source: str) -> None:
    """Load a checkpoint's weights and optimizer state, refusing (UsageError) state that does not
    fit: shapes, the hyper-parameters this trainer fixes (all but SETTING_HYPERS, which keep the
    run's values), the state keys."""
    model_state, optimizer_state, _ = resumed
    # The optimizer is built with fixed hyper-parameters; compare them as the checkpoint's JSON holds them.
    group = dict(optimizer.param_groups[0])   # as built: a copy, which the load below does not change
    own = json.loads(json.dumps({k: v for k, v in group.items() if k not in NOT_COMPARED}))
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{source}: {err}") from None
    # (hyper-parameters added since a checkpoint was saved take their defaults, as the load gave them)
    saved = {k: v for k, v in {**optimizer.added_hyper_defaults, **optimizer_state["param_groups"][0]}.items()
             if k not in NOT_COMPARED}
    if saved != own:
        raise UsageError(f"{source}: malformed checkpoint: optimizer hyper-parameters {saved}, expected {own}")
    optimizer.param_groups[0].update({k: group[k] for k in SETTING_HYPERS})
    for i, (parameter, state) in enumerate(zip(optimizer.params, optimizer.state)):
        # all of a stepped parameter's state, float16 ones' FP32 master weights too (load_state_dict
        # takes a part of it, which a resume would not continue bit for bit)
        expected = optimizer.state_keys | ({"master"} if parameter.data.dtype == np.float16 else set())
        if state and set(state) != expected:
            raise UsageError(f"{source}: malformed checkpoint: optimizer state {i} has {sorted(state)}, expected "
                             f"{sorted(expected)}")


def _restore_scaler(scaler, meta: dict, source: str) -> None:
    """The resumed run's loss scale and growth counter (fp16 runs), or UsageError."""
    if not scaler.is_enabled():
        return
    try:
        scaler.load_state_dict(meta.get("scaler"))
    except (ValueError, TypeError, RuntimeError) as err:
        raise UsageError(f"{source}: malformed checkpoint: {err}") from None


def _train(args) -> int:
    import contextlib

    from .. import distributed
    from ..precision import math_mode
    world = distributed.init()
    # Everything is checked before the first epoch: no run fails late for a reason known now.
    with _refusals_agreed(world, "the ranks' checks of their options"):
        resumed, settings = _checked_settings(args, world.size)
    # tf32: training and evaluation alike
    with math_mode("tf32") if settings["precision"] == "tf32" else contextlib.nullcontext():
        return _train_in_precision(args, world, resumed, settings)


def _checked_settings(args, processes: int) -> tuple:
    """(the --resume checkpoint or None, the run's settings) of a run in `processes` processes,
    after the checks of the options and of the checkpoint; UsageError where one refuses."""
    resumed = _load_checkpoint(args.resume) if args.resume else None
    if resumed and args.max_batches is None:   # not a setting, but taken from the checkpoint as they are
        args.max_batches = resumed[2].get("max_batches")
    if args.max_batches == 0:   # given 0: every batch (a resumed run's limit dropped)
        args.max_batches = None
    settings = _settings(args, resumed[2]["settings"] if resumed else {})
    _check_args(args, settings)
    if resumed and resumed[2]["epoch"] > settings["epochs"]:
        raise UsageError(f"--epochs {settings['epochs']} is below the {resumed[2]['epoch']} epochs {args.resume} "
                         f"has trained already")
    if args.replay and processes > 1:
        raise UsageError(f"--replay replays the kernels of one process: this run has {processes}")
    return resumed, settings


@contextlib.contextmanager
def _refusals_agreed(world, what: str):
    """Under mpiexec every rank runs the block (which makes no collective) and then shares its
    refusal, its UsageError's message or None: where any rank refused, rank 0 prints each refusal
    once (naming the ranks where not every rank refused alike) and every rank raises
    RefusedByTheRanks. Each rank printing its own would repeat an error of the command line once
    a rank; a rank aborting the job could cut the others' messages short. One process: the
    UsageError as it is."""
    refusal = None
    try:
        yield
    except UsageError as err:
        if world.size == 1:
            raise
        refusal = str(err)
    if world.size == 1:
        return
    refusals = world.allgather_object(refusal, what)
    if not any(refusals):
        return
    if world.rank == 0:
        for message in dict.fromkeys(filter(None, refusals)):
            ranks = [rank for rank, other in enumerate(refusals) if other == message]
            named = "" if len(ranks) == world.size else f"[rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}] "
            print(f"{named}cnn-gpu train: error: {message}", file=sys.stderr)
    raise RefusedByTheRanks()


def _changed_on_resume(args, settings: dict, meta: dict, processes: int, data_fingerprint: str) -> list:
    """The options that differ from the resumed checkpoint's, as "--lr 0.01 (it trained with 0.002)":
    extending --epochs is the usual reason to resume; any other change is said, not refused, the
    number of processes (`processes` now) too: it sets the global batch; and the data, where the
    checkpoint recorded its fingerprint (_fingerprint) and the data at its path has changed."""
    saved = dict(meta["settings"])
    if saved.get("data") is not None:   # recorded relative before it was made absolute: taken from here
        saved["data"] = os.path.abspath(saved["data"])
    changed = [f"--{key.replace('_', '-')} {settings[key]} (it trained with {saved[key]})" for key in DEFAULTS
               if key not in (*FIXED_ON_RESUME, "epochs") and key in saved and settings[key] != saved[key]]
    # not a setting, but it sets the steps of an epoch (the schedule's and the augmentation's)
    if "max_batches" in meta and args.max_batches != meta["max_batches"]:
        trained = meta["max_batches"] or "unset"
        changed.append(f"--max-batches {args.max_batches or 'unset'} (it trained with {trained})")
    if meta.get("world_size", processes) != processes:
        now, before = settings["batch_size"] * processes, saved["batch_size"] * meta["world_size"]
        batch = f"a global batch of {now} images, not {before}" if now != before else f"the same global batch of {now}"
        changed.append(f"--nproc {processes} (it trained with {meta['world_size']}: {batch})")
    if meta.get("data_fingerprint", data_fingerprint) != data_fingerprint:
        changed.append(f"other data (the {settings['dataset']} data it loads differs from what it trained on)")
    return changed


def _train_in_precision(args, world, resumed, settings: dict) -> int:
    from .. import checkpoint, distributed, models, nn, optim
    from ..functional.conv import blas_threads
    from ..amp import GradScaler
    from ..lr_scheduler import WarmupCosine

    leader = world.rank == 0
    # a refusal on one rank (its GPUs, its data file) is reported by rank 0 with the others' (if any)
    with _refusals_agreed(world, "the ranks' set-up"):
        device = choose_device(args.device)
        if args.replay and device == "numpy":
            raise UsageError("--replay replays the kernels of one process: it needs --device emu or cuda "
                             f"(this run: {device})")
        try:
            dataset = _load_dataset(settings)
        except UsageError as err:
            if resumed and args.data is None and settings["data"] is not None:
                raise UsageError(f"{err} (the --data path {args.resume} recorded; give --data to read it from "
                                 f"elsewhere)") from None
            raise

        nn.init.manual_seed(settings["seed"])
        try:
            model = models.build(settings["model"], dataset.image_shape, dataset.num_classes,
                                 dtype=PRECISION_DTYPES[settings["precision"]]).to(device)
        except ValueError as err:   # images too small for the model
            raise UsageError(str(err)) from None
        if settings["batch_size"] == 1 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and not (
                args.sync_bn and world.size > 1):
            raise UsageError(f"--batch-size 1: --model {settings['model']} has batch norm, which cannot train on one "
                             f"image at a time (per process, without --sync-bn); use 2 or more")
        if args.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if settings["optimizer"] in ("adam", "adamw"):
            adam = optim.Adam if settings["optimizer"] == "adam" else optim.AdamW
            optimizer = adam(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        elif settings["optimizer"] == "rmsprop":
            optimizer = optim.RMSprop(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        elif settings["optimizer"] in TORCH_DEFAULT_LR:
            optimizer = getattr(optim, TORCH_RULES[settings["optimizer"]])(model.parameters(), lr=settings["lr"],
                                                                          weight_decay=settings["weight_decay"])
        else:
            optimizer = optim.SGD(model.parameters(), lr=settings["lr"], momentum=SGD_MOMENTUM,
                                  weight_decay=settings["weight_decay"])
        # Every rank draws the same permutations: the checkpoint holds no per-rank state, so a run
        # resumes with any number of ranks.
        shuffle_rng = np.random.default_rng(settings["seed"])
        scaler = GradScaler(enabled=settings["precision"] == "fp16")
        loss_fn = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"]).to(device)
        start_epoch = 0
        fingerprint = _fingerprint(dataset)
        if resumed:
            _restore(model, optimizer, resumed, args.resume)
            _restore_scaler(scaler, resumed[2], args.resume)
            changed = _changed_on_resume(args, settings, resumed[2], world.size, fingerprint)
            if changed:   # said once the checkpoint has proven loadable, not before a refusal
                _say(leader, f"note: resuming {args.resume} with {', '.join(changed)}")
            shuffle_rng.bit_generator.state = resumed[2]["shuffle_rng"]
            start_epoch = resumed[2]["epoch"]
            saved_threads = resumed[2].get("blas_threads")
            if device == "numpy" and saved_threads not in (None, blas_threads()):
                _say(leader, f"note: {args.resume} was trained with {saved_threads} BLAS threads, this run has "
                             f"{blas_threads()}: NumPy's BLAS rounds some products differently with another count, "
                             f"so the run will not match an uninterrupted one bit for bit (OPENBLAS_NUM_THREADS="
                             f"{saved_threads} would)")
    # the data path may differ between machines; the data, the run's place and everything else must
    # agree before any reduction (a different step count would misalign the collectives)
    distributed.check_replicas(model, {**{k: v for k, v in settings.items() if k != "data"},
                                       "data set": fingerprint, "max_batches": args.max_batches,
                                       "start_epoch": start_epoch, "shuffle_rng": shuffle_rng.bit_generator.state,
                                       "device": device, "sync_bn": args.sync_bn})
    distributed.broadcast_parameters(model)

    epochs = settings["epochs"]
    ranks = f" x {world.size} ranks" if world.size > 1 else ""
    decay = f" weight_decay={settings['weight_decay']:g}" if settings["weight_decay"] else ""
    _say(leader, f"training {settings['model']} on {dataset.name} ({len(dataset.x_train)} train / "
                 f"{len(dataset.x_test)} test images of {'x'.join(map(str, dataset.image_shape))}) on {device}: "
                 f"{settings['optimizer']} lr={settings['lr']:g}{decay}, batch {settings['batch_size']}{ranks}, "
                 f"{settings['precision']}, "
         + (f"epochs {start_epoch + 1}..{epochs}" if start_epoch < epochs else f"all {epochs} epochs done"))
    started = time.perf_counter()
    accuracy = None
    for epoch in range(start_epoch, epochs):
        with progress_bar(dataset, settings["batch_size"] * world.size, args.max_batches,
                          f"epoch {epoch + 1}/{epochs}", shown=leader) as bar:
            schedule = WarmupCosine(optimizer, settings["lr"], epochs, bar.total, settings["warmup_epochs"])
            augment = _augmentation(settings, epoch, bar.total, device)
            train_epoch(model, loss_fn, optimizer, dataset, settings["batch_size"], shuffle_rng, device, bar,
                        lambda index, epoch=epoch: schedule.apply(epoch, index), augment, scaler, args.replay)
            accuracy = evaluate(model, dataset, settings["batch_size"], device, args.max_batches, args.replay)
            # a rank whose shards held no image this epoch has set no postfix
            shown = getattr(bar, "postfix", None)
            bar.set_postfix_str((f"{shown}, " if shown else "") + f"test={accuracy[0] / accuracy[1]:.1%}")
        if args.save and leader:
            meta = {"epoch": epoch + 1, "settings": settings, "shuffle_rng": shuffle_rng.bit_generator.state,
                    "test_accuracy": accuracy[0] / accuracy[1], "world_size": world.size,
                    "scaler": scaler.state_dict(), "blas_threads": blas_threads(), "max_batches": args.max_batches,
                    "data_fingerprint": fingerprint}
            try:
                checkpoint.save(args.save, model.state_dict(), optimizer.state_dict(), meta)
            except OSError as err:   # a full disk, a folder gone: the file still holds the last checkpoint
                print(f"cnn-gpu train: error: cannot write the checkpoint of epoch {epoch + 1} to {args.save} "
                      f"({err.strerror or err}); the file is unchanged", file=sys.stderr, flush=True)
                world.abort(1)   # other ranks would wait for this one in the next collective
                return 1
    if accuracy is None:  # resumed from a checkpoint that already has every epoch
        accuracy = evaluate(model, dataset, settings["batch_size"], device, args.max_batches, args.replay)
    correct, total = accuracy
    _say(leader, f"test accuracy: {100 * correct / total:.1f}% ({correct}/{total}"
                 f"{', first ' + str(args.max_batches) + ' batches' if args.max_batches else ''}) "
                 f"in {time.perf_counter() - started:.1f} s")
    return 0


def _say(leader: bool, text: str) -> None:
    if leader:
        print(text, flush=True)


def _augmentation(settings, epoch: int, steps_per_epoch: int, device: str):
    """CIFAR-10's random crop and flip of each training batch on the training device (None for
    other data sets), drawn from (seed, global step): a resumed run draws what the uninterrupted
    one would have."""
    if settings["dataset"] != "cifar10":
        return None
    from .. import distributed
    from ..cifar import random_crop_flip
    first = distributed.rank() * settings["batch_size"]   # the rank's shard within the global batch
    return lambda x, index: random_crop_flip(x, settings["seed"], epoch * steps_per_epoch + index, first=first,
                                             backend=device)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (from 0): base_lr decayed along half a cosine over `epochs`
    (the schedule with no warm-up)."""
    from ..lr_scheduler import WarmupCosine
    return WarmupCosine(None, base_lr, epochs, 1).lr(epoch)


def progress_bar(dataset, batch_size, max_batches, description, shown=True):
    """The epoch's bar; `batch_size` is the global batch (per rank x ranks), so bar.total is the
    number of steps every rank takes."""
    from tqdm import tqdm

    from ..data import num_batches
    total = num_batches(len(dataset.x_train), batch_size)
    if max_batches:
        total = min(total, max_batches)
    return tqdm(total=total, desc=description, unit="batch", dynamic_ncols=True, disable=not shown)


def train_epoch(model, loss_fn, optimizer, dataset, batch_size, shuffle_rng, device, bar, before_step=None,
                augment=None, scaler=None, replayed=False):
    """One pass over the shuffled training set (bar.total batches), showing the running loss and
    accuracy on the progress bar (summed on the device and read when shown: metrics.RunningMetrics;
    a rank whose bar is hidden reads none). before_step(index) runs before batch `index` (the
    learning-rate schedule); augment(x, index) transforms the batch on the device. Batches take the
    model's dtype; with an enabled GradScaler the loss gradient is scaled, and the averaged gradients are
    unscaled and stepped (or the step skipped on overflow) by it. In a model with batch norm, a
    rank's shard of one image trains as an empty one (batch norm takes no lone image in training,
    as in PyTorch; the last batch may leave one), and a step that has no image left is skipped.
    With SyncBatchNorm in several processes a lone image trains (the statistics are the global
    batch's), and a global batch that leaves any rank no image is skipped by every rank (each
    computes the shards' sizes: a rank without images would miss the norms' collectives).
    replayed (one process, emu or cuda): the epoch's first full batch is a recorded step
    (cnn_gpu.replay), replayed with each later full batch copied into its arrays; others run as
    they are."""
    from .. import distributed
    from ..distributed._shard import shard_sizes
    from ..nn import BatchNorm2d, SyncBatchNorm
    from ..nn.module import to_backend_array
    model.train()
    synced = distributed.world_size() > 1 and any(isinstance(module, SyncBatchNorm) for module in model.modules())
    drops_lone_images = not synced and any(isinstance(module, (BatchNorm2d, SyncBatchNorm))
                                           for module in model.modules())
    metrics = RunningMetrics() if not getattr(bar, "disable", False) else None
    dtype = _model_dtype(model)
    shards = distributed.shard_batches(len(dataset.x_train), batch_size, shuffle_rng, distributed.rank(),
                                       distributed.world_size())
    recorded = []   # [the recorded step, its (loss, logits)] once the first full batch ran
    for index, chosen in enumerate(shards):
        if index == bar.total:
            break
        if before_step is not None:
            before_step(index)
        if synced and 0 in shard_sizes(len(dataset.x_train), batch_size, index, distributed.world_size()):
            bar.update()   # every rank skips it alike, meeting in no collective
            continue
        if drops_lone_images and len(chosen) == 1:
            chosen = chosen[:0]
        if not len(chosen):   # the uneven last global batch may leave a rank without images
            optimizer.zero_grad()
            if distributed.allreduce_gradients(model, count=0):
                _update(optimizer, scaler)
            bar.update()
            continue
        x = to_backend_array(dataset.x_train[chosen].astype(dtype, copy=False), device)
        y = to_backend_array(dataset.y_train[chosen], device)
        if augment is not None:
            x = augment(x, index)
        loss, logits = _batch(recorded, replayed and len(chosen) == batch_size,
                              lambda x, y: _train_step(model, loss_fn, optimizer, scaler, x, y), x, y)
        if metrics is not None:   # a recorded step's loss: a copy, as the next replay rewrites it
            metrics.add(loss.copy() if recorded else loss, logits, y)
            if metrics.due():
                _show(bar, metrics, scaler)
        bar.update()
    if metrics is not None:
        _show(bar, metrics, scaler)


def _batch(recorded: list, replayed: bool, fn, *inputs):
    """fn(*inputs) as it is, or (replayed) recorded at the first call into `recorded` ([the
    recording, fn's outputs]) and replayed on the new inputs at later calls (cnn_gpu.replay)."""
    from .. import replay
    if not replayed:
        return fn(*inputs)
    if recorded:
        recording, outputs = recorded
        recording.replay(*inputs)
        return outputs
    with replay.record(*inputs) as recording:
        outputs = fn(*inputs)
    recorded += [recording, outputs]
    return outputs


def _train_step(model, loss_fn, optimizer, scaler, x, y):
    """Forward, loss, backward and update of one batch (x, y on the device) -> (loss, logits)."""
    from .. import distributed
    optimizer.zero_grad()
    logits = model(x)
    loss = loss_fn(logits, y, as_array=True)
    dlogits = loss_fn.backward()
    # the images need no gradient: the first convolution runs no dgrad pass
    model.backward(scaler.scale(dlogits) if scaler is not None else dlogits, input_grad=False)
    # weighted by the shards' sizes: the same step as one process with the whole global batch
    distributed.allreduce_gradients(model, count=len(y))
    _update(optimizer, scaler)
    return loss, logits


def _update(optimizer, scaler) -> None:
    if scaler is not None:   # unscaled after the sums, so every rank sees the same inf/NaN
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _show(bar, metrics, scaler) -> None:
    """The running loss and accuracy (read back from the device: metrics.RunningMetrics) and the
    loss scale on the bar, for its next refresh."""
    shown = metrics.read()
    if shown and scaler is not None and scaler.is_enabled():
        shown["scale"] = f"{scaler.get_scale():g}"
    if shown:
        bar.set_postfix(refresh=False, **shown)


def _model_dtype(model):
    """The dtype of the model's parameters, which its input batches take."""
    return next(iter(model.parameters())).data.dtype


@no_grad()
def evaluate(model, dataset, batch_size, device, max_batches=None, replayed=False):
    """(correct, total) on the test set (its first max_batches batches when given), counted over
    every rank's shard; the ranks first take rank 0's buffers (batch-norm running statistics,
    which each rank updated from its own shards), so all evaluate one model. replayed: the first
    full batch's forward recorded and replayed for the later full ones (cnn_gpu.replay). Under
    no_grad: each activation is freed once the next layer has read it."""
    from .. import distributed
    from ..nn.module import to_backend_array
    distributed.broadcast_buffers(model)
    model.eval()
    dtype = _model_dtype(model)
    correct, total = [], 0   # correct counts per batch, read back at the end (metrics.read_count)
    shards = distributed.shard_batches(len(dataset.x_test), batch_size, None, distributed.rank(),
                                       distributed.world_size())
    recorded = []   # [the recorded forward, its logits] once the first full batch ran
    for index, chosen in enumerate(shards):
        if max_batches and index == max_batches:
            break
        if not len(chosen):
            continue
        x = to_backend_array(dataset.x_test[chosen].astype(dtype, copy=False), device)
        logits = _batch(recorded, replayed and len(chosen) == batch_size, model, x)
        correct.append(correct_count(logits, to_backend_array(dataset.y_test[chosen], device)))
        total += len(chosen)
    counts = distributed.world().allgather_object((read_count(correct), total), "the test accuracy")
    return sum(c for c, _ in counts), sum(t for _, t in counts)

