"""What a check of one op is (OpCheck) and the helpers its configurations share: random size pairs,
unbatched inputs, and the 1-D ops' configurations as 2-D ones of height 1."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpCheck:
    """How to check one op.

    configs(rng) -> one random configuration (a dict); edge_configs: fixed corner cases;
    large_configs: layer-sized cases (thorough mode);
    inputs(cfg, rng) -> float64 NumPy arrays by name (None for an absent bias);
    run(inputs, cfg, backend) -> outputs by name (forward and backward) on that backend;
    output / upstream: the forward output and the input holding its upstream gradient (upstream
    None: the output is a scalar loss); grads: input name -> name of its gradient among the outputs;
    math_operands / math_outputs: what the "tf32" math mode changes (convolutions only)."""
    name: str
    configs: object
    edge_configs: tuple
    inputs: object
    run: object
    output: str
    upstream: str | None
    grads: dict
    reduces: bool = False
    large_configs: tuple = ()
    math_operands: tuple = ()    # inputs the "tf32" math mode rounds to TF32 (none: the op ignores the mode)
    math_outputs: tuple = ()     # outputs computed from those rounded operands


def _ints(rng, low, high, count=2):
    return tuple(int(v) for v in rng.integers(low, high + 1, count))


def _unbatched(arrays: dict, cfg) -> dict:
    """x and dy as their first image when the configuration runs an unbatched (C, H, W) input."""
    return {k: v[0] if cfg["unbatched"] and k in ("x", "dy") else v for k, v in arrays.items()}


def _height_one(cfg, rng, **extra):
    """A 2-D configuration with every height-wise size 1 (padding 0): a 1-D one, unbatched 30% of the time."""
    heights = dict(HW=1, RS=1, kernel=1, stride=1, padding=0, dilation=1, output_padding=0, out=1)
    flat = {k: (h, cfg[k][1]) for k, h in heights.items() if isinstance(cfg.get(k), tuple)}
    return dict(cfg, **flat, unbatched=bool(rng.random() < 0.3), **extra)


def _width(value):
    """The 1-D op's argument of a 2-D configuration's size pair (strings and None as they are)."""
    return value[1] if isinstance(value, tuple) else value


def _signal_inputs(inputs):
    """A configuration's 2-D inputs as 1-D ones: (N, C, 1, L) signals and (K, C/groups, 1, k) filters
    without their height axis, x and dy unbatched where the configuration is."""
    def one_d(cfg, rng):
        arrays = {k: v[:, :, 0] if v is not None and v.ndim == 4 else v for k, v in inputs(cfg, rng).items()}
        return _unbatched(arrays, cfg)
    return one_d
