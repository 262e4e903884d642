"""Cross-check of every op on a kernel backend (the library behind `cnn-gpu check`).

For each op, a seeded sweep of configurations (strides, paddings, dilations, groups, odd sizes,
ceil_mode, ...) runs forward and backward on the device and is compared with the NumPy backend in
float64 on the same inputs, and the device's backward is compared with float64 central differences
of the device's own forward (cnn_gpu.gradcheck). The error of an output is
max|device - reference| / max|reference| (integer outputs such as max-pool indices must match
exactly); an op passes when its worst error over all configurations and outputs is within the
tolerance of the dtype.

With math="tf32" (`cnn-gpu check --math tf32`, float32) the convolution ops run in the "tf32" math
mode and are compared with the NumPy oracle in the same mode, element by element, within the FP32
summation bound stated at TF32_SUM_K; the other ops are unaffected by the mode and keep the float32
rule.

With dtype float16 (`cnn-gpu check --dtype float16`) the device runs every op on float16 arrays
(FP16 storage, FP32 math, one rounding per output) and is compared with the NumPy oracle on the
same float16 inputs, which computes in float32 and rounds once, within FLOAT16_TOLERANCE.

Tests plant a wrong op with `register_override(op, run)` to prove that a mismatch fails.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import backend as _backend, precision
from .functional.geometry import conv_geometry, conv_transpose_geometry, pool_geometry
from .gradcheck import gradcheck

MODES = ("quick", "normal", "thorough")
# random configurations per op in each mode; normal and thorough also run the op's edge cases,
# thorough also layer-sized ones (big enough for the kernels' large tiles and split-K paths)
RANDOM_CONFIGS = {"quick": 2, "normal": 6, "thorough": 40}
# finite-difference options per mode: random directions per array, element-wise checks up to this size
FD_OPTIONS = {"quick": dict(directions=2, elementwise_limit=0),
              "normal": dict(directions=3, elementwise_limit=0),
              "thorough": dict(directions=3, elementwise_limit=32)}

# dtype float16: the device and the oracle (the NumPy backend on the same float16 inputs) both
# compute in FP32 and round each output to float16 once. Their FP32 results differ only by the
# order of operations (relative errors of a few 2^-24, far below a float16 ulp), but the two
# roundings can then land on neighbouring float16 values: one float16 ulp of the element, at most
# 2^-10 x max|output| (float16 has 10 mantissa bits). FLOAT16_TOLERANCE = 2 x 2^-10 of max|output|
# (the usual error measure) leaves a second ulp for order effects next to a tie; an output off by
# three float16 ulps of the largest fails.
FLOAT16_ULP = 2.0 ** -10
FLOAT16_TOLERANCE = 2 * FLOAT16_ULP
# Relative error allowed against NumPy float64 (float16: against the oracle, above): float64
# devices differ only in summation order; float32 devices are compared with float64 results
# computed from the same (rounded) inputs, and ops that sum many terms get REDUCTION_SCALE times
# more room.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": FLOAT16_TOLERANCE}
REDUCTION_SCALE = 4
# math="tf32": convolutions multiply TF32-rounded operands and sum the products in FP32. A product of
# two TF32 numbers (11-bit significands) is exact in FP32, so a device and the oracle -- NumPy in the
# same mode, summed exactly: float64 sums of the same TF32 operands -- differ only by the device's FP32
# additions and the final rounding of each output. Each output element must satisfy
#     |device - oracle| <= TF32_SUM_K * 2^-24 * sum|products|
# with sum|products| the op run on the operands' magnitudes (its bias included). The worst case of a
# sum of n terms is (n - 1) * 2^-24 * sum|products|; rounding errors of random sign -- these checks'
# inputs are zero-mean -- stay within a few units of 2^-24 * sum|products| whatever n. TF32_SUM_K = 32
# leaves room for the tensor cores' own order and truncating adds, while an operand that misses its
# TF32 rounding (errors of ~2^-12 * sqrt(n) per product scale) still fails. The bias gradient, a plain
# FP32 sum of dy, is held to the same bound against dy unrounded.
TF32_SUM_K = 32
FP32_UNIT_ROUNDOFF = 2.0 ** -24
# Central differences in float64 (always, whatever --dtype; cnn_gpu.gradcheck): truncation and
# rounding leave ~1e-7 relative error, a wrong gradient gives errors of order 1.
FD_TOLERANCE = 5e-5


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


# --- configurations and inputs -------------------------------------------------------------------

def _ints(rng, low, high, count=2):
    return tuple(int(v) for v in rng.integers(low, high + 1, count))


def _conv_config(rng):
    while True:
        if rng.random() < 0.25:                       # depthwise: one input channel per group
            groups = int(rng.integers(2, 5))
            C, K = groups, groups * int(rng.integers(1, 3))
        else:
            groups = int(rng.choice([1, 1, 2, 3]))
            C, K = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        cfg = dict(N=int(rng.integers(1, 4)), C=C, K=K, HW=_ints(rng, 1, 10), RS=_ints(rng, 1, 4),
                   stride=_ints(rng, 1, 3), padding=_ints(rng, 0, 2), dilation=_ints(rng, 1, 2), groups=groups,
                   bias=bool(rng.random() < 0.7))
        try:
            conv_geometry(*_conv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["dilation"], groups)
            return cfg
        except ValueError:
            continue


def _conv_shapes(cfg):
    return (cfg["N"], cfg["C"], *cfg["HW"]), (cfg["K"], cfg["C"] // cfg["groups"], *cfg["RS"])


def _conv(**kw):
    cfg = dict(N=2, C=3, K=4, HW=(6, 6), RS=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
               bias=True)
    cfg.update(kw)
    return cfg


CONV_EDGES = (
    _conv(),                                                                  # the common 3x3 "same"
    _conv(N=1, C=1, K=1, HW=(5, 7), RS=(1, 1), padding=(0, 0)),               # 1x1, batch 1, C=1
    _conv(HW=(4, 5), RS=(6, 7), padding=(1, 1)),                              # kernel = padded input
    _conv(HW=(9, 8), RS=(2, 3), stride=(3, 2), padding=(0, 2), dilation=(2, 1), bias=False),
    _conv(C=4, K=8, groups=4, HW=(7, 7)),                                     # depthwise
    _conv(C=6, K=4, groups=2, HW=(8, 5), stride=(2, 2)),                      # grouped, strided
)


CONV_LARGE = (
    _conv(N=8, C=32, K=48, HW=(28, 28)),
    _conv(N=4, C=64, K=96, HW=(15, 17), stride=(2, 2)),
    _conv(N=16, C=256, K=64, HW=(7, 7), RS=(1, 1), padding=(0, 0)),      # long reductions both ways
    _conv(N=4, C=64, K=64, groups=64, HW=(20, 20)),                       # depthwise
)


def _conv_inputs(cfg, rng):
    x_shape, w_shape = _conv_shapes(cfg)
    g = conv_geometry(x_shape, w_shape, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    return dict(x=rng.standard_normal(x_shape), weight=rng.standard_normal(w_shape),
                bias=rng.standard_normal(g.K) if cfg["bias"] else None, dy=rng.standard_normal(g.y_shape))


def _conv_args(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])


def _conv_run(a, cfg, be):
    from . import functional as F
    y = F.conv2d(a["x"], a["weight"], a["bias"], backend=be, **_conv_args(cfg))
    dx, dw, db = F.conv2d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **_conv_args(cfg))
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _tconv_config(rng):
    while True:
        cfg = _conv_config(rng)
        # a transposed conv's weight is (in, out/groups, R, S): swap the roles of C and K
        cfg["C"], cfg["K"] = cfg["K"], cfg["C"]
        stride, dilation = cfg["stride"], cfg["dilation"]
        cfg["output_padding"] = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        try:
            _tconv_geometry(cfg)
            return cfg
        except ValueError:
            continue


def _tconv_shapes(cfg):
    return (cfg["N"], cfg["C"], *cfg["HW"]), (cfg["C"], cfg["K"] // cfg["groups"], *cfg["RS"])


def _tconv_geometry(cfg):
    return conv_transpose_geometry(*_tconv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["output_padding"],
                                   cfg["dilation"], cfg["groups"])


TCONV_EDGES = (
    _conv(output_padding=(0, 0)),
    _conv(HW=(4, 5), stride=(2, 2), padding=(0, 1), output_padding=(1, 0)),  # 2x upsampling
    _conv(HW=(3, 4), RS=(2, 3), stride=(3, 2), dilation=(2, 1), padding=(0, 0), output_padding=(1, 1), bias=False),
    _conv(C=4, K=4, groups=4, HW=(5, 5), output_padding=(0, 0)),
)


TCONV_LARGE = (
    _conv(N=4, C=48, K=32, HW=(14, 14), stride=(2, 2), padding=(1, 1), output_padding=(1, 1)),
    _conv(N=8, C=64, K=64, HW=(12, 12), output_padding=(0, 0)),
)


def _tconv_inputs(cfg, rng):
    x_shape, w_shape = _tconv_shapes(cfg)
    g = _tconv_geometry(cfg)
    return dict(x=rng.standard_normal(x_shape), weight=rng.standard_normal(w_shape),
                bias=rng.standard_normal(g.C) if cfg["bias"] else None, dy=rng.standard_normal(g.x_shape))


def _tconv_run(a, cfg, be):
    from . import functional as F
    args = dict(_conv_args(cfg), output_padding=cfg["output_padding"])
    y = F.conv_transpose2d(a["x"], a["weight"], a["bias"], backend=be, **args)
    dx, dw, db = F.conv_transpose2d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **args)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _pool_config(rng, with_dilation):
    while True:
        kernel = _ints(rng, 1, 4)
        cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=_ints(rng, 1, 10), kernel=kernel,
                   stride=None if rng.random() < 0.3 else _ints(rng, 1, 3),
                   padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel),
                   dilation=_ints(rng, 1, 2) if with_dilation else (1, 1), ceil_mode=bool(rng.random() < 0.5),
                   count_include_pad=bool(rng.random() < 0.5))
        try:
            _pool_geometry(cfg)
            return cfg
        except ValueError:
            continue


def _pool_geometry(cfg):
    return pool_geometry((cfg["N"], cfg["C"], *cfg["HW"]), cfg["kernel"], cfg["stride"], cfg["padding"],
                         cfg["dilation"], cfg["ceil_mode"], cfg["count_include_pad"])


def _pool(**kw):
    cfg = dict(N=2, C=3, HW=(8, 8), kernel=(2, 2), stride=None, padding=(0, 0), dilation=(1, 1), ceil_mode=False,
               count_include_pad=True)
    cfg.update(kw)
    return cfg


POOL_EDGES = (
    _pool(),
    _pool(HW=(7, 9), kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True),
    _pool(HW=(5, 6), kernel=(3, 2), stride=(1, 2), padding=(1, 0), count_include_pad=False),
    _pool(N=1, C=1, HW=(4, 4), kernel=(4, 4)),                                # one window = whole input
)
MAX_POOL_EDGES = POOL_EDGES + (
    _pool(HW=(9, 9), kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), ceil_mode=True),
)


POOL_LARGE = (
    _pool(N=8, C=32, HW=(56, 56), kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
    _pool(N=8, C=64, HW=(7, 7), kernel=(7, 7)),                             # global pooling
)


def _pool_inputs(cfg, rng):
    g = _pool_geometry(cfg)
    return dict(x=rng.standard_normal(g.x_shape), dy=rng.standard_normal(g.y_shape))


def _max_pool_run(a, cfg, be):
    from . import functional as F
    args = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])
    y, indices = F.max_pool2d(a["x"], cfg["kernel"], backend=be, **args)
    dx = F.max_pool2d_backward(a["dy"], indices, a["x"].shape, cfg["kernel"], backend=be, **args)
    return dict(y=y, indices=indices, dx=dx)


def _avg_pool_run(a, cfg, be):
    from . import functional as F
    args = dict(stride=cfg["stride"], padding=cfg["padding"], ceil_mode=cfg["ceil_mode"],
                count_include_pad=cfg["count_include_pad"], divisor_override=cfg.get("divisor_override"))
    y = F.avg_pool2d(a["x"], cfg["kernel"], backend=be, **args)
    dx = F.avg_pool2d_backward(a["dy"], a["x"].shape, cfg["kernel"], backend=be, **args)
    return dict(y=y, dx=dx)


def _shape_config(rng):
    return dict(shape=tuple(int(d) for d in rng.integers(1, 7, int(rng.integers(1, 5)))),
                negative_slope=float(rng.uniform(0.01, 0.3)))


def _away_from_zero(rng, shape):
    """Normal values kept at least 0.05 from 0, where ReLU's kink would break finite differences."""
    v = rng.standard_normal(shape)
    return np.where(v < 0, v - 0.05, v + 0.05)


ACTIVATION_LARGE = (dict(shape=(8, 32, 28, 28), negative_slope=0.1),)


def _activation_inputs(cfg, rng):
    return dict(x=_away_from_zero(rng, cfg["shape"]), dy=rng.standard_normal(cfg["shape"]))


def _activation_run(name):
    def run(a, cfg, be):
        from . import functional as F
        extra = (cfg["negative_slope"],) if name == "leaky_relu" else ()
        y = getattr(F, name)(a["x"], *extra, backend=be)
        dx = getattr(F, f"{name}_backward")(a["dy"], a["x"], *extra, backend=be)
        return dict(y=y, dx=dx)
    return run


def _linear_config(rng):
    return dict(N=int(rng.integers(1, 6)), IN=int(rng.integers(1, 12)), OUT=int(rng.integers(1, 12)),
                bias=bool(rng.random() < 0.7))


LINEAR_LARGE = (dict(N=64, IN=512, OUT=100, bias=True),)


def _linear_inputs(cfg, rng):
    return dict(x=rng.standard_normal((cfg["N"], cfg["IN"])), weight=rng.standard_normal((cfg["OUT"], cfg["IN"])),
                bias=rng.standard_normal(cfg["OUT"]) if cfg["bias"] else None,
                dy=rng.standard_normal((cfg["N"], cfg["OUT"])))


def _linear_run(a, cfg, be):
    from . import functional as F
    y = F.linear(a["x"], a["weight"], a["bias"], backend=be)
    dx, dw, db = F.linear_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _loss_config(rng):
    return dict(N=int(rng.integers(1, 9)), classes=int(rng.integers(2, 12)))


LOSS_LARGE = (dict(N=256, classes=1000),)


def _cross_entropy_inputs(cfg, rng):
    return dict(logits=3 * rng.standard_normal((cfg["N"], cfg["classes"])),
                labels=rng.integers(0, cfg["classes"], cfg["N"]).astype(np.int64))


def _cross_entropy_run(a, cfg, be):
    from . import functional as F
    loss, dlogits = F.cross_entropy(a["logits"], a["labels"], backend=be)
    return dict(loss=loss, dlogits=dlogits)


def _mse_inputs(cfg, rng):
    shape = (cfg["N"], cfg["classes"])
    return dict(pred=rng.standard_normal(shape), target=rng.standard_normal(shape))


def _mse_run(a, cfg, be):
    from . import functional as F
    loss, dpred = F.mse_loss(a["pred"], a["target"], backend=be)
    return dict(loss=loss, dpred=dpred)


# --- PyTorch's fuller signatures: padding="same", unbatched inputs, divisor_override, (..., in)
# linear inputs, every cross_entropy option ------------------------------------------------------

def _unbatched(arrays: dict, cfg) -> dict:
    """x and dy as their first image when the configuration runs an unbatched (C, H, W) input."""
    return {k: v[0] if cfg["unbatched"] and k in ("x", "dy") else v for k, v in arrays.items()}


def _conv_same_config(rng):
    while True:
        cfg = dict(_conv_config(rng), stride=(1, 1), padding=str(rng.choice(["same", "same", "valid"])),
                   unbatched=bool(rng.random() < 0.4))
        try:
            conv_geometry(*_conv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
            return cfg
        except ValueError:
            continue


CONV_SAME_EDGES = (
    _conv(RS=(2, 4), padding="same", unbatched=False),                      # even kernel: extra bottom/right
    _conv(RS=(3, 2), dilation=(2, 3), padding="same", unbatched=True),      # dilated, unbatched
    _conv(C=4, K=4, groups=4, RS=(4, 4), padding="same", unbatched=False),  # depthwise
    _conv(HW=(7, 5), RS=(3, 2), padding="valid", unbatched=True),
)


def _avg_pool_options_config(rng):
    return dict(_pool_config(rng, False), unbatched=bool(rng.random() < 0.5),
                divisor_override=None if rng.random() < 0.3 else int(rng.choice([-3, 1, 2, 7])))


AVG_POOL_OPTIONS_EDGES = (
    _pool(HW=(7, 9), kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, unbatched=True,
          divisor_override=4),
    _pool(HW=(5, 6), kernel=(3, 2), stride=(1, 2), padding=(1, 0), unbatched=False, divisor_override=-2),
)


def _linear_nd_config(rng):
    return dict(_linear_config(rng), lead=_ints(rng, 1, 3, int(rng.integers(0, 3))))


def _linear_nd_inputs(cfg, rng):
    return dict(x=rng.standard_normal(cfg["lead"] + (cfg["IN"],)), weight=rng.standard_normal((cfg["OUT"], cfg["IN"])),
                bias=rng.standard_normal(cfg["OUT"]) if cfg["bias"] else None,
                dy=rng.standard_normal(cfg["lead"] + (cfg["OUT"],)))


def _cross_entropy_options_config(rng):
    classes = int(rng.integers(2, 9))
    probabilities = bool(rng.random() < 0.3)
    return dict(N=int(rng.integers(1, 5)), classes=classes, kdims=_ints(rng, 1, 3, int(rng.integers(0, 3))),
                probabilities=probabilities, weight=bool(rng.random() < 0.6),
                ignore_index=int(rng.integers(0, classes)) if not probabilities and rng.random() < 0.5 else -100,
                reduction=str(rng.choice(["mean", "sum", "none"])), label_smoothing=float(rng.choice([0, 0.1, 0.4])))


CROSS_ENTROPY_OPTIONS_LARGE = (dict(N=8, classes=21, kdims=(32, 32), probabilities=False, weight=True,
                                    ignore_index=0, reduction="mean", label_smoothing=0.1),)   # segmentation


def _cross_entropy_options_inputs(cfg, rng):
    shape = (cfg["N"], cfg["classes"]) + cfg["kdims"]
    if cfg["probabilities"]:
        target = rng.random(shape)
        target /= target.sum(axis=1, keepdims=True)
    else:
        target = rng.integers(0, cfg["classes"], shape[:1] + shape[2:]).astype(np.int64)
        target.flat[0] = (cfg["ignore_index"] + 1) % cfg["classes"]   # one counted target: a finite mean
    return dict(logits=3 * rng.standard_normal(shape), target=target,
                weight=rng.uniform(0.2, 2.0, cfg["classes"]) if cfg["weight"] else None)


def _cross_entropy_options_run(a, cfg, be):
    from . import functional as F
    loss, dlogits = F.cross_entropy(a["logits"], a["target"], a["weight"], cfg["ignore_index"], cfg["reduction"],
                                    cfg["label_smoothing"], backend=be)
    if cfg["reduction"] == "none":   # dlogits is the gradient of the per-position losses' sum
        return dict(loss=float(loss.sum()), losses=loss, dlogits=dlogits)
    return dict(loss=loss, dlogits=dlogits)



def _batch_norm_config(rng):
    cfg = dict(N=int(rng.integers(2, 5)), C=int(rng.integers(1, 5)), HW=_ints(rng, 1, 7),
               training=bool(rng.random() < 0.6), affine=bool(rng.random() < 0.8),
               activation="relu" if rng.random() < 0.3 else None)
    # two values per channel normalise to +-1 whatever they are: dx vanishes into rounding noise
    if cfg["N"] * cfg["HW"][0] * cfg["HW"][1] < 4:
        cfg["N"] = 4
    return cfg


BATCH_NORM_EDGES = (
    dict(N=4, C=3, HW=(1, 1), training=True, affine=True, activation=None),      # one pixel per channel
    dict(N=1, C=2, HW=(17, 19), training=True, affine=False, activation=None),   # HW beyond one block
    dict(N=3, C=4, HW=(5, 5), training=False, affine=True, activation="relu"),
)
BATCH_NORM_LARGE = (dict(N=16, C=64, HW=(16, 16), training=True, affine=True, activation=None),)


def _batch_norm_inputs(cfg, rng):
    shape = (cfg["N"], cfg["C"], *cfg["HW"])
    affine = cfg["affine"]
    return dict(x=2 * rng.standard_normal(shape) + 1, dy=rng.standard_normal(shape),
                weight=rng.standard_normal(cfg["C"]) if affine else None,
                bias=rng.standard_normal(cfg["C"]) if affine else None,
                running_mean=rng.standard_normal(cfg["C"]), running_var=rng.random(cfg["C"]) + 0.5)


def _batch_norm_run(a, cfg, be):
    from . import functional as F
    running_mean, running_var = a["running_mean"].copy(), a["running_var"].copy()
    y = F.batch_norm(a["x"], running_mean, running_var, a["weight"], a["bias"], cfg["training"],
                     activation=cfg["activation"], backend=be)
    dx, dw, db = F.batch_norm_backward(a["dy"], a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                       cfg["training"], activation=cfg["activation"], backend=be)
    return dict(y=y, dx=dx, dweight=dw, dbias=db, running_mean=running_mean, running_var=running_var)


def _dropout_config(rng):
    return dict(_shape_config(rng), p=float(rng.choice([0.1, 0.5, 0.9])), seed=int(rng.integers(2**63)),
                step=int(rng.integers(1000)))


def _dropout_run(a, cfg, be):
    from . import functional as F
    y = F.dropout(a["x"], cfg["p"], seed=cfg["seed"], step=cfg["step"], backend=be)
    return dict(y=y, dx=F.dropout_backward(a["dy"], cfg["p"], cfg["seed"], cfg["step"], backend=be))


def _adaptive_pool_config(rng):
    return dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=_ints(rng, 1, 10), out=_ints(rng, 1, 11))


ADAPTIVE_POOL_EDGES = (dict(N=2, C=3, HW=(7, 7), out=(1, 1)),      # global average pooling
                       dict(N=1, C=2, HW=(5, 9), out=(5, 9)),      # identity windows
                       dict(N=2, C=1, HW=(4, 3), out=(7, 5)))      # overlapping windows (output > input)
ADAPTIVE_POOL_LARGE = (dict(N=16, C=64, HW=(8, 8), out=(1, 1)),)


def _adaptive_pool_inputs(cfg, rng):
    return dict(x=rng.standard_normal((cfg["N"], cfg["C"], *cfg["HW"])),
                dy=rng.standard_normal((cfg["N"], cfg["C"], *cfg["out"])))


def _adaptive_pool_run(a, cfg, be):
    from . import functional as F
    y = F.adaptive_avg_pool2d(a["x"], cfg["out"], backend=be)
    return dict(y=y, dx=F.adaptive_avg_pool2d_backward(a["dy"], a["x"].shape, backend=be))


# every convolution pass multiplies these operands; the bias gradient is a plain sum of dy
CONV_MATH = dict(math_operands=("x", "weight", "dy"), math_outputs=("y", "dx", "dweight"))

OPS = {op.name: op for op in (
    OpCheck("conv2d", _conv_config, CONV_EDGES, _conv_inputs, _conv_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=CONV_LARGE, **CONV_MATH),
    OpCheck("conv_transpose2d", _tconv_config, TCONV_EDGES, _tconv_inputs, _tconv_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=TCONV_LARGE,
            **CONV_MATH),
    OpCheck("max_pool2d", lambda rng: _pool_config(rng, True), MAX_POOL_EDGES, _pool_inputs, _max_pool_run, "y",
            "dy", {"x": "dx"}, large_configs=POOL_LARGE),
    OpCheck("avg_pool2d", lambda rng: _pool_config(rng, False), POOL_EDGES, _pool_inputs, _avg_pool_run, "y", "dy",
            {"x": "dx"}, large_configs=POOL_LARGE),
    *(OpCheck(name, _shape_config, (), _activation_inputs, _activation_run(name), "y", "dy", {"x": "dx"},
              large_configs=ACTIVATION_LARGE)
      for name in ("relu", "leaky_relu", "sigmoid", "tanh")),
    OpCheck("linear", _linear_config, (), _linear_inputs, _linear_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=LINEAR_LARGE),
    OpCheck("cross_entropy", _loss_config, (), _cross_entropy_inputs, _cross_entropy_run, "loss", None,
            {"logits": "dlogits"}, reduces=True, large_configs=LOSS_LARGE),
    OpCheck("mse_loss", _loss_config, (), _mse_inputs, _mse_run, "loss", None, {"pred": "dpred"}, reduces=True,
            large_configs=LOSS_LARGE),
    OpCheck("conv2d_same", _conv_same_config, CONV_SAME_EDGES, lambda cfg, rng: _unbatched(_conv_inputs(cfg, rng), cfg),
            _conv_run, "y", "dy", {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, **CONV_MATH),
    OpCheck("avg_pool2d_options", _avg_pool_options_config, AVG_POOL_OPTIONS_EDGES,
            lambda cfg, rng: _unbatched(_pool_inputs(cfg, rng), cfg), _avg_pool_run, "y", "dy", {"x": "dx"}),
    OpCheck("linear_nd", _linear_nd_config, (), _linear_nd_inputs, _linear_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True),
    OpCheck("cross_entropy_options", _cross_entropy_options_config, (), _cross_entropy_options_inputs,
            _cross_entropy_options_run, "loss", None, {"logits": "dlogits"}, reduces=True,
            large_configs=CROSS_ENTROPY_OPTIONS_LARGE),
    OpCheck("dropout", _dropout_config, (), _activation_inputs, _dropout_run, "y", "dy", {"x": "dx"},
            large_configs=(dict(ACTIVATION_LARGE[0], p=0.5, seed=2**40, step=3),)),
    OpCheck("adaptive_avg_pool2d", _adaptive_pool_config, ADAPTIVE_POOL_EDGES, _adaptive_pool_inputs,
            _adaptive_pool_run, "y", "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL_LARGE),
    OpCheck("batch_norm", _batch_norm_config, BATCH_NORM_EDGES, _batch_norm_inputs, _batch_norm_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=BATCH_NORM_LARGE),
)}


# --- the test hook -------------------------------------------------------------------------------

_overrides: dict = {}


def register_override(op: str, run) -> None:
    """Replace the device-side run of `op` (signature of OpCheck.run: (inputs, cfg, backend) ->
    outputs by name) for later checks, so a test can plant a wrong op and see it fail.
    `run=None` removes the override. For tests only."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if run is None:
        _overrides.pop(op, None)
    else:
        _overrides[op] = run


def clear_overrides() -> None:
    _overrides.clear()


# --- checking ------------------------------------------------------------------------------------

@dataclass
class OpResult:
    op: str
    configs: int = 0
    error: float = 0.0           # worst relative error against NumPy float64
    tolerance: float = 0.0
    fd_error: float = 0.0        # worst relative error against central differences (float64)
    fd_tolerance: float = FD_TOLERANCE
    worst: str = ""              # output and configuration of the worst error against NumPy
    fd_worst: str = ""           # the same for finite differences
    failure: str = ""            # an exception raised by the device, if any
    seconds: float = 0.0
    details: list = field(default_factory=list)
    math: str = ""               # "tf32": checked in that math mode; "unaffected": an op the mode leaves alone

    @property
    def passed(self) -> bool:
        return not self.failure and self.error <= self.tolerance and self.fd_error <= self.fd_tolerance

    def as_dict(self) -> dict:
        return dict(op=self.op, configs=self.configs, error=self.error, tolerance=self.tolerance,
                    fd_error=self.fd_error, fd_tolerance=self.fd_tolerance, passed=self.passed, worst=self.worst,
                    fd_worst=self.fd_worst, failure=self.failure, seconds=self.seconds, math=self.math)

    def why_failed(self) -> str:
        if self.failure:
            return self.failure
        reasons = []
        if self.error > self.tolerance:
            reasons.append(f"error {self.error:.2e} > {self.tolerance:.2g} against NumPy in {self.worst}")
        if self.fd_error > self.fd_tolerance:
            reasons.append(f"error {self.fd_error:.2e} > {self.fd_tolerance:.0e} against finite differences in "
                           f"{self.fd_worst}")
        return "; ".join(reasons)


def default_device() -> str:
    """The best kernel backend here: cuda with a GPU, otherwise the emulator."""
    available = _backend.available_backends()
    for name in ("cuda", "emu"):
        if name in available:
            return name
    raise RuntimeError(f"no kernel backend is available: cuda: {_backend.why_unavailable('cuda')}; "
                       f"emu: {_backend.why_unavailable('emu')}")


def configs_for(spec: OpCheck, mode: str, seed: int) -> list:
    rng = np.random.default_rng([seed, sum(map(ord, spec.name))])
    fixed = list(spec.edge_configs) if mode != "quick" else []
    if mode == "thorough":
        fixed += list(spec.large_configs)
    return fixed + [spec.configs(rng) for _ in range(RANDOM_CONFIGS[mode])]


def _to_device(value, be, dtype=None):
    if not isinstance(value, np.ndarray):
        return value
    if dtype is not None and value.dtype.kind == "f":
        value = value.astype(dtype)
    return _backend.array_module("cuda").asarray(value) if be == "cuda" else value


def _to_host(value):
    if value is None or isinstance(value, (float, int)):
        return value
    return value.get() if _backend.is_cupy_array(value) else np.asarray(value)


def relative_error(got, want) -> float:
    """max|got - want| / max|want| (exact match for integer arrays: 0 or 1; equal infinities agree)."""
    if want is None or got is None:
        return 0.0 if got is None and want is None else float("inf")
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return float("inf")
    if want.dtype.kind in "iu":
        return 0.0 if np.array_equal(got, want) else 1.0
    got, want = got.astype(np.float64), want.astype(np.float64)   # float16 references too
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
    diff[np.isnan(diff)] = np.inf   # a NaN where the reference has a number is the worst mismatch
    if diff.size == 0:
        return 0.0
    scale = np.max(np.abs(np.where(np.isfinite(want), want, 0.0)), initial=0.0)
    worst = float(np.max(diff))
    return worst / scale if scale > 0 else worst


def _finite_differences(spec: OpCheck, run, inputs: dict, cfg, be, options, seed):
    """float64 central differences of the device's forward against the device's backward."""
    xp = _backend.array_module(be)
    outputs = run(inputs, cfg, be)
    names = [name for name in spec.grads if inputs.get(name) is not None]

    def scalar():
        out = run(inputs, cfg, be)[spec.output]
        if spec.upstream is None:
            return float(out)
        # windows lying wholly in the padding give -inf (max pool); they carry no gradient
        return float(xp.vdot(inputs[spec.upstream], xp.where(xp.isfinite(out), out, 0)))

    return gradcheck(scalar, [inputs[n] for n in names], [outputs[spec.grads[n]] for n in names], names=names,
                     seed=seed, **options)


def _guard_zones(be: str):
    """On the emulator every launch of a check runs against guard zones, so an out-of-bounds access
    fails the op at once; the surrounding `emu.checking` block's other settings are kept."""
    if be != "emu":
        return contextlib.nullcontext()
    from .emu import checking
    from .emu._checking import effective
    current = effective()
    return checking(**{key: current[key] for key in ("schedule", "seed", "poison", "race", "timeout")}, guard=True)


def check_op(spec: OpCheck, be: str, mode: str = "normal", dtype="float64", seed: int = 0,
             math: str = "fp32") -> OpResult:
    with _guard_zones(be), precision.math_mode(math):
        return _check_op(spec, be, mode, np.dtype(dtype), seed, math)


def _magnitudes(inputs: dict) -> dict:
    return {k: np.abs(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in inputs.items()}


def _tf32_references(spec: OpCheck, inputs: dict, cfg) -> tuple[dict, dict]:
    """(reference, sum|products|) by output name in the "tf32" mode, from float32-valued `inputs`:
    the outputs the mode changes from TF32-rounded operands, the others (the bias gradient) from
    the inputs as they are, all summed exactly in float64; the op on the inputs' magnitudes gives
    each element's sum|products|."""
    as_tf32 = {k: precision.round_to_tf32(v.astype(np.float32)).astype(np.float64)
               if k in spec.math_operands and v is not None else v for k, v in inputs.items()}
    rounded, plain = spec.run(as_tf32, cfg, "numpy"), spec.run(inputs, cfg, "numpy")
    want = {name: rounded[name] if name in spec.math_outputs else value for name, value in plain.items()}
    return want, spec.run(_magnitudes(inputs), cfg, "numpy")


def summation_error(got, want, magnitude) -> float:
    """max over elements of |got - want| / sum|products| (the "tf32" rule; where the magnitude is 0
    the two must be equal). A missing output, a wrong shape or a NaN is the worst error, as in
    relative_error."""
    if want is None or got is None or np.shape(got) != np.shape(want):
        return relative_error(got, want)
    diff = np.abs(np.asarray(got, dtype=np.float64) - want)
    diff[np.isnan(diff)] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / np.asarray(magnitude))
    return float(np.max(ratio, initial=0.0))


def _oracle_inputs(inputs: dict, dtype: np.dtype) -> dict:
    """The inputs as the reference gets them: the device's values (rounded to dtype) in float64,
    or for float16 the float16 arrays themselves (the oracle is the NumPy backend in float16)."""
    rounded = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
               for k, v in inputs.items()}
    if dtype == np.float16:
        return rounded
    return {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in rounded.items()}


def _run_leaving_inputs(run, inputs: dict, cfg, be):
    """run(inputs, cfg, be), failing (AssertionError) where it wrote into an input array: the
    comparisons and finite differences after it would read the damaged values and could agree."""
    before = {k: _to_host(v).copy() for k, v in inputs.items()
              if _backend.is_cupy_array(v) or isinstance(v, np.ndarray)}
    got = run(inputs, cfg, be)
    changed = [k for k, v in before.items() if not np.array_equal(_to_host(inputs[k]), v, equal_nan=True)]
    if changed:
        raise AssertionError(f"the op wrote into its input {', '.join(changed)}")
    return got


def _check_op(spec: OpCheck, be: str, mode: str, dtype: np.dtype, seed: int, math: str) -> OpResult:
    scale = REDUCTION_SCALE if spec.reduces and dtype == np.float32 else 1
    result = OpResult(spec.name, tolerance=TOLERANCE[dtype.name] * scale)
    tf32 = math == "tf32" and bool(spec.math_outputs)
    if math == "tf32":
        result.math = "tf32" if tf32 else "unaffected"
    if tf32:
        result.tolerance = TF32_SUM_K * FP32_UNIT_ROUNDOFF
    run = _overrides.get(spec.name, spec.run)
    start = time.perf_counter()
    for index, cfg in enumerate(configs_for(spec, mode, seed)):
        rng = np.random.default_rng([seed, index])
        inputs = spec.inputs(cfg, rng)
        # the reference sees exactly the values the device sees (rounded to dtype first)
        rounded = _oracle_inputs(inputs, dtype)
        try:
            want, magnitude = _tf32_references(spec, rounded, cfg) if tf32 else (spec.run(rounded, cfg, "numpy"), None)
            device_inputs = {k: _to_device(v, be, dtype) for k, v in inputs.items()}
            got = _run_leaving_inputs(run, device_inputs, cfg, be)
            for name, reference in want.items():
                value = _to_host(got.get(name))
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype != dtype:
                    raise TypeError(f"{name} came back as {value.dtype} from {dtype} inputs")
                error = (summation_error(value, reference, magnitude[name]) if tf32
                         else relative_error(value, reference))
                if error > result.error or not result.worst:
                    result.error, result.worst = error, f"{name}, config {cfg}"
            report = _finite_differences(spec, run, {k: _to_device(v, be) for k, v in inputs.items()}, cfg, be,
                                         FD_OPTIONS[mode], seed + index)
            if report.max_rel_error > result.fd_error or not result.fd_worst:
                result.fd_error, result.fd_worst = report.max_rel_error, f"{report.worst}, config {cfg}"
        except Exception as err:  # a kernel fault or a crash fails the op; the other ops still run
            result.failure = f"{type(err).__name__}: {err} (config {cfg})"
            result.details.append(traceback.format_exc())
        result.configs += 1
        if result.failure:
            break
    result.seconds = time.perf_counter() - start
    return result


def check_ops(be: str, ops=None, mode: str = "normal", dtype="float64", seed: int = 0, math: str = "fp32"):
    """An iterator of OpResults, one per op (all ops by default), each computed when it is reached,
    the device running in math mode `math` ("tf32": float32 only); ValueError at once for an
    unknown op, mode, dtype or math mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if np.dtype(dtype).name not in TOLERANCE:
        raise ValueError(f"dtype must be float16, float32 or float64, got {dtype!r}")
    if math not in precision.MATH_MODES:
        raise ValueError(f"unknown math mode {math!r}; expected one of {', '.join(precision.MATH_MODES)}")
    if math == "tf32" and np.dtype(dtype) != np.float32:
        raise ValueError(f"math mode 'tf32' changes float32 convolutions only; it needs dtype float32, "
                         f"not {np.dtype(dtype).name}")
    ops = list(OPS) if ops is None else list(ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; expected some of {', '.join(OPS)}")
    return (check_op(OPS[op], be, mode, dtype, seed, math) for op in ops)


def format_results(results, markdown=False) -> str:
    """The results as a text (or markdown) table, then a line per failure. Results of a math-mode
    check get a last column "math" (tf32 / unaffected) and a note on what their error measures."""
    header = ["op", "configs", "max rel err vs numpy", "tol", "max rel err vs finite diff", "tol", "result"]
    table = [header] + [[r.op, str(r.configs), f"{r.error:.2e}", f"{r.tolerance:.2g}", f"{r.fd_error:.2e}",
                         f"{r.fd_tolerance:.0e}", "PASS" if r.passed else "FAIL"] for r in results]
    notes = []
    if any(r.math for r in results):
        header.append("math")
        for row, r in zip(table[1:], results):
            row.append(r.math)
        notes = ["", f"math tf32: max over elements of |device - oracle| / sum|products|, both from the same TF32 "
                     f"operands (tolerance {TF32_SUM_K} x 2^-24); unaffected: the math mode does not change the op "
                     f"(float32 rule)"]
    left = (0, 6, 7)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i in left else "---:"
                                                                 for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    else:
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 .rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [f"FAIL {r.op}: {r.why_failed()}" for r in results if not r.passed]
    # a blank line ends a markdown table
    return "\n".join(lines + notes + ([""] + failures if failures else []))
