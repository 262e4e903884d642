"""The `cnn-gpu` command line: train, check, bench, kernels (one module per subcommand)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import os
import signal
import sys
import threading

# subcommand -> (module in cnn_gpu.cli, one-line help)
COMMANDS = {
    "train": ("train", "train a CNN (default: a small CNN on scikit-learn's digits)"),
    "check": ("check", "cross-check every op on a kernel backend against NumPy float64 and finite differences"),
    "bench": ("bench", "time the ops on CPU (NumPy), GPU (CUDA kernels) and PyTorch where installed"),
    "kernels": ("kernels", "compile every kernel with NVRTC for sm_70..sm_90 and report registers, spills, shared memory"),
}


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
# every --seed: NumPy's generators take any integer >= 0, the Philox streams (dropout, augmentation) 64 bits
seed = _number_type(int, lambda value: 0 <= value < 2**64, "an integer in [0, 2^64)")
# every PATH option: an empty one (an unset shell variable) must not mean "no file"
path_argument = _number_type(str, lambda value: value != "", "a non-empty path")


def check_outputs(args, *options, stdout=()) -> None:
    """ValueError for a path given to one of `options` (--json, --csv...) that cannot be written:
    checked before the work, not after it. "-" is standard output for the options in `stdout`,
    refused for the others (it would name a file "-")."""
    from ..checkpoint import check_writable
    targets = {}   # file (links followed) -> the option that names it: one output would replace another
    for option in options:
        path = getattr(args, option, None)
        if path not in (None, "-"):
            other = targets.setdefault(os.path.realpath(path), option)
            if other != option:
                raise ValueError(f"--{other} and --{option} name one file, {path}: the second output would "
                                 f"replace the first; give each its own")
        if path == "-" and option not in stdout:
            raise ValueError(f"--{option} -: this command writes its --{option} output to a file only; name one")
        if path not in (None, "-"):
            try:
                check_writable(path)
            except ValueError as err:
                raise ValueError(f"--{option} {err}") from None


def write_output(command: str, path, write) -> bool:
    """write(path) for an output option (--json, --csv, --plot), atomic as every output is: an
    OSError there (a full disk, a folder gone since check_outputs) is one line on stderr and False,
    the file left as it was."""
    try:
        write(path)
    except OSError as err:
        print(f"cnn-gpu {command}: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return False
    return True


def comma_list(text: str) -> list[str]:
    """argparse type for "a,b,c" options: the names in order, each once; refused when empty."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected one name or more, separated by commas, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnn-gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f".{module}", __name__).add_arguments(cmd)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that cleanups run (a checkpoint being written removes
    its temporary file) as for Ctrl-C; a BaseException, so that no `except Exception` swallows it."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..distributed._world import launcher_rank
    parser = build_parser()
    if (launcher_rank() or 0) > 0:
        # under mpiexec every rank parses the same command line: rank 0 alone prints its help or errors
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(argv)
    else:
        args = parser.parse_args(argv)
    args.argv = argv   # what a subcommand that relaunches itself (train --nproc) passes on
    module = importlib.import_module(f".{COMMANDS[args.command][0]}", __name__)
    # SIGTERM (a job scheduler's stop) ends the command like Ctrl-C, unless someone else handles it
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
