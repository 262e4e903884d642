"""The `cnn-gpu` command line: train, check, bench, kernels (one module per subcommand)."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module in cnn_gpu.cli, one-line help)
COMMANDS = {
    "train": ("train", "train a CNN (default: a small CNN on scikit-learn's digits)"),
    "check": ("check", "cross-check every op on a kernel backend against NumPy float64 and finite differences"),
    "bench": ("bench", "time the ops on CPU (NumPy), GPU (CUDA kernels) and PyTorch where installed"),
    "kernels": ("kernels", "compile every kernel with NVRTC for sm_70..sm_90 and report registers, spills, shared memory"),
}


def comma_list(text: str) -> list[str]:
    """argparse type for "a,b,c" options."""
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnn-gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f".{module}", __name__).add_arguments(cmd)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv   # what a subcommand that relaunches itself (train --nproc) passes on
    module = importlib.import_module(f".{COMMANDS[args.command][0]}", __name__)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
