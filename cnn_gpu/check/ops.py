"""The ops `cnn-gpu check` covers (OPS): per op its random configurations, fixed edge cases and
layer-sized cases, its float64 inputs and how it runs forward and backward on a backend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.geometry import conv_geometry, conv_transpose_geometry, pool_geometry
from ..functional.unpool import default_size

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
    from .. import functional as F
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
    from .. import functional as F
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
    from .. import functional as F
    args = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])
    y, indices = F.max_pool2d(a["x"], cfg["kernel"], backend=be, **args)
    dx = F.max_pool2d_backward(a["dy"], indices, a["x"].shape, cfg["kernel"], backend=be, **args)
    return dict(y=y, indices=indices, dx=dx)


def _avg_pool_run(a, cfg, be):
    from .. import functional as F
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


# threshold's arguments in the checks (it has no defaults)
THRESHOLD_OPTIONS = {"threshold": 0.1, "value": -2.0}
# the kinks of the piecewise activations (hardtanh at its default bounds; relu6 is hardtanh(x, 0, 6))
PIECEWISE_KINKS = {"hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0), "hardsigmoid": (-3.0, 3.0), "hardswish": (-3.0, 3.0),
                   "elu": (0.0,), "selu": (0.0,), "celu": (0.0,), "hardshrink": (-0.5, 0.5), "softshrink": (-0.5, 0.5),
                   "threshold": (THRESHOLD_OPTIONS["threshold"],)}


def _piecewise_activation_inputs(name):
    def inputs(cfg, rng):
        """Normal values 3 times wider than _activation_inputs' (some beyond every kink), none within
        0.05 of a kink, where finite differences would straddle it."""
        x = rng.standard_normal(cfg["shape"]) * 3
        for kink in PIECEWISE_KINKS[name]:
            x = np.where(np.abs(x - kink) < 0.05, kink + np.where(x < kink, -0.05, 0.05), x)
        return dict(x=x, dy=rng.standard_normal(cfg["shape"]))
    return inputs


def _activation_call(name, cfg):
    """The functional op of the activation check `name` and its options (gelu_tanh: gelu's tanh form)."""
    if name == "leaky_relu":
        return name, {"negative_slope": cfg["negative_slope"]}
    if name == "gelu_tanh":
        return "gelu", {"approximate": "tanh"}
    if name == "threshold":
        return name, THRESHOLD_OPTIONS
    return name, {}


def _activation_run(name):
    def run(a, cfg, be):
        from .. import functional as F
        op, options = _activation_call(name, cfg)
        y = getattr(F, op)(a["x"], **options, backend=be)
        dx = getattr(F, f"{op}_backward")(a["dy"], a["x"], **options, backend=be)
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
    from .. import functional as F
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
    from .. import functional as F
    loss, dlogits = F.cross_entropy(a["logits"], a["labels"], backend=be)
    return dict(loss=loss, dlogits=dlogits)


def _mse_inputs(cfg, rng):
    shape = (cfg["N"], cfg["classes"])
    return dict(pred=rng.standard_normal(shape), target=rng.standard_normal(shape))


def _mse_run(a, cfg, be):
    from .. import functional as F
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
    from .. import functional as F
    loss, dlogits = F.cross_entropy(a["logits"], a["target"], a["weight"], cfg["ignore_index"], cfg["reduction"],
                                    cfg["label_smoothing"], backend=be)
    return _loss_outputs(loss, "dlogits", dlogits, cfg["reduction"])


def _loss_outputs(loss, grad_name: str, grad, reduction: str) -> dict:
    if reduction == "none":   # the gradient is that of the per-position (per-element) losses' sum
        return {"loss": float(loss.sum()), "losses": loss, grad_name: grad}
    return {"loss": loss, grad_name: grad}


# --- nll_loss and the element-wise losses, every option ------------------------------------------

def _nll_config(rng):
    classes = int(rng.integers(2, 9))
    return dict(N=int(rng.integers(1, 5)), classes=classes, kdims=_ints(rng, 1, 3, int(rng.integers(0, 3))),
                weight=bool(rng.random() < 0.6),
                ignore_index=int(rng.integers(0, classes)) if rng.random() < 0.5 else -100,
                reduction=str(rng.choice(["mean", "sum", "none"])))


NLL_LARGE = (dict(N=8, classes=21, kdims=(32, 32), weight=True, ignore_index=0, reduction="mean"),)   # segmentation


def _nll_inputs(cfg, rng):
    shape = (cfg["N"], cfg["classes"]) + cfg["kdims"]
    logits = 3 * rng.standard_normal(shape)
    target = rng.integers(0, cfg["classes"], shape[:1] + shape[2:]).astype(np.int64)
    target.flat[0] = (cfg["ignore_index"] + 1) % cfg["classes"]   # one counted target: a finite mean
    return dict(input=logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)), target=target,
                weight=rng.uniform(0.2, 2.0, cfg["classes"]) if cfg["weight"] else None)


def nll_run(as_array: bool = False):
    """The nll_loss check's run; as_array=True (replays: a float read back is refused in a
    recording) leaves a "mean"/"sum" loss on the device."""
    def run(a, cfg, be):
        from .. import functional as F
        loss, dinput = F.nll_loss(a["input"], a["target"], a["weight"], cfg["ignore_index"], cfg["reduction"],
                                  backend=be, as_array=as_array)
        return _loss_outputs(loss, "dinput", dinput, cfg["reduction"])
    return run


def _elementwise_loss_config(rng):
    return dict(shape=_ints(rng, 1, 6, int(rng.integers(1, 5))), reduction=str(rng.choice(["mean", "sum", "none"])),
                weighted=bool(rng.random() < 0.5), beta=float(rng.choice([0.0, 0.5, 1.0])),
                delta=float(rng.choice([0.5, 1.0, 2.0])))


def _kl_div_config(rng):
    # "mean" is the element-wise mean the other losses check (and warns, as torch's): batchmean instead
    return dict(_elementwise_loss_config(rng), reduction=str(rng.choice(["batchmean", "sum", "none"])),
                log_target=bool(rng.random() < 0.5))


ELEMENTWISE_LOSS_LARGE = (dict(shape=(8, 3, 64, 64), reduction="mean", weighted=True, beta=1.0, delta=1.0),)
KL_DIV_LARGE = (dict(ELEMENTWISE_LOSS_LARGE[0], reduction="batchmean", log_target=False),)   # distillation maps


def _elementwise_loss_inputs(probabilities: bool):
    """input (probabilities in [0.05, 0.95] for binary_cross_entropy: its finite differences stay
    inside [0, 1]), target, weight and pos_weight over the last dimension (BCE's), and a weight of
    the input's shape (element_weight: l1_loss's and huber_loss's, as PyTorch 2.13 takes it)."""
    def inputs(cfg, rng):
        shape = cfg["shape"]
        weights = (rng.uniform(0.2, 2.0, shape[-1:]), rng.uniform(0.5, 3.0, shape[-1:]),
                   rng.uniform(0.2, 2.0, shape)) if cfg["weighted"] else (None, None, None)
        return dict(input=rng.uniform(0.05, 0.95, shape) if probabilities else 3 * rng.standard_normal(shape),
                    target=rng.uniform(0, 1, shape), weight=weights[0], pos_weight=weights[1],
                    element_weight=weights[2])
    return inputs


def elementwise_loss_run(name: str, as_array: bool = False):
    """The check's run of the element-wise loss `name`; as_array as nll_run's."""
    def run(a, cfg, be):
        from .. import functional as F
        options = dict(l1_loss=dict(weight=a["element_weight"]), smooth_l1_loss=dict(beta=cfg["beta"]),
                       huber_loss=dict(delta=cfg["delta"], weight=a["element_weight"]),
                       kl_div=dict(log_target=cfg.get("log_target")),
                       binary_cross_entropy=dict(weight=a["weight"]),
                       binary_cross_entropy_with_logits=dict(weight=a["weight"], pos_weight=a["pos_weight"]))[name]
        loss, dinput = getattr(F, name)(a["input"], a["target"], reduction=cfg["reduction"], backend=be,
                                        as_array=as_array, **options)
        return _loss_outputs(loss, "dinput", dinput, cfg["reduction"])
    return run



def _batch_norm_config(rng):
    from ..functional.activation import FUSED_ACTIVATIONS   # F.batch_norm's activations
    fused = list(FUSED_ACTIVATIONS)
    cfg = dict(N=int(rng.integers(2, 5)), C=int(rng.integers(1, 5)), HW=_ints(rng, 1, 7),
               training=bool(rng.random() < 0.6), affine=bool(rng.random() < 0.8),
               activation=fused[int(rng.integers(len(fused)))] if rng.random() < 0.4 else None)
    # two values per channel normalise to +-1 whatever they are: dx vanishes into rounding noise
    if cfg["N"] * cfg["HW"][0] * cfg["HW"][1] < 4:
        cfg["N"] = 4
    return cfg


BATCH_NORM_EDGES = (
    dict(N=4, C=3, HW=(1, 1), training=True, affine=True, activation=None),      # one pixel per channel
    dict(N=1, C=2, HW=(17, 19), training=True, affine=False, activation=None),   # HW beyond one block
    dict(N=3, C=4, HW=(5, 5), training=False, affine=True, activation="relu"),
    dict(N=3, C=4, HW=(5, 5), training=True, affine=True, activation="silu"),
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
    from .. import functional as F
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
    from .. import functional as F
    y = F.dropout(a["x"], cfg["p"], seed=cfg["seed"], step=cfg["step"], backend=be)
    return dict(y=y, dx=F.dropout_backward(a["dy"], cfg["p"], cfg["seed"], cfg["step"], backend=be))


def _dropout2d_config(rng):
    """dropout's settings on (N, C, H, W) inputs (PyTorch warns on other ranks)."""
    return dict(_dropout_config(rng), shape=(int(rng.integers(1, 4)), int(rng.integers(1, 9)), *_ints(rng, 1, 6)))


def _dropout2d_run(a, cfg, be):
    from .. import functional as F
    y = F.dropout2d(a["x"], cfg["p"], seed=cfg["seed"], step=cfg["step"], backend=be)
    return dict(y=y, dx=F.dropout2d_backward(a["dy"], cfg["p"], cfg["seed"], cfg["step"], backend=be))


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
    from .. import functional as F
    y = F.adaptive_avg_pool2d(a["x"], cfg["out"], backend=be)
    return dict(y=y, dx=F.adaptive_avg_pool2d_backward(a["dy"], a["x"].shape, backend=be))


def _adaptive_max_pool_run(a, cfg, be):
    from .. import functional as F
    y, indices = F.adaptive_max_pool2d(a["x"], cfg["out"], backend=be)
    dx = F.adaptive_max_pool2d_backward(a["dy"], indices, a["x"].shape, cfg["out"], backend=be)
    return dict(y=y, indices=indices, dx=dx)


def _upsample_config(rng):
    from ..functional.upsample import output_size
    while True:
        mode = str(rng.choice(["nearest", "nearest-exact", "bilinear", "bicubic", "area"]))
        cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=_ints(rng, 1, 9), mode=mode,
                   align_corners=bool(rng.random() < 0.5) if mode in ("bilinear", "bicubic") else None, size=None,
                   scale_factor=None)
        if rng.random() < 0.5:
            cfg["size"] = _ints(rng, 1, 12)
        else:   # non-integer factors, below 1 (downsampling) too
            cfg["scale_factor"] = tuple(round(float(f), 2) for f in rng.uniform(0.4, 3.2, 2))
        try:
            return dict(cfg, out=output_size(cfg["HW"], cfg["size"], cfg["scale_factor"]))
        except ValueError:   # an empty output
            continue


UPSAMPLE_EDGES = (dict(N=2, C=3, HW=(4, 5), mode="nearest", align_corners=None, size=None, scale_factor=(2, 2),
                       out=(8, 10)),                                             # the out == 2*in shortcut
                  dict(N=1, C=2, HW=(5, 7), mode="nearest", align_corners=None, size=None,
                       scale_factor=(1.1, 2.1), out=(5, 14)),                    # shortcuts taken by size, not factor
                  dict(N=2, C=1, HW=(1, 6), mode="bilinear", align_corners=True, size=(5, 1), scale_factor=None,
                       out=(5, 1)),                                              # one input row, one output column
                  dict(N=1, C=2, HW=(9, 8), mode="bilinear", align_corners=False, size=(4, 3), scale_factor=None,
                       out=(4, 3)),                                              # downsampling
                  dict(N=1, C=2, HW=(2, 9), mode="bicubic", align_corners=False, size=(7, 4), scale_factor=None,
                       out=(7, 4)),                                              # taps clamped at both edges
                  dict(N=2, C=1, HW=(5, 5), mode="bicubic", align_corners=False, size=None, scale_factor=(1.1, 1.1),
                       out=(5, 5)),                                              # the same size: a copy
                  dict(N=1, C=3, HW=(8, 6), mode="nearest-exact", align_corners=None, size=None,
                       scale_factor=(0.5, 1.7), out=(4, 10)),                    # pixel centres on input edges
                  dict(N=2, C=2, HW=(7, 5), mode="area", align_corners=None, size=(3, 2), scale_factor=None,
                       out=(3, 2)))                                              # overlapping windows
UPSAMPLE_LARGE = (dict(N=8, C=32, HW=(16, 16), mode="bilinear", align_corners=False, size=None, scale_factor=(2, 2),
                       out=(32, 32)),)


def _upsample_inputs(cfg, rng):
    return dict(x=rng.standard_normal((cfg["N"], cfg["C"], *cfg["HW"])),
                dy=rng.standard_normal((cfg["N"], cfg["C"], *cfg["out"])))


def _upsample_run(a, cfg, be):
    from .. import functional as F
    settings = dict(size=cfg["size"], scale_factor=cfg["scale_factor"], mode=cfg["mode"],
                    align_corners=cfg["align_corners"], backend=be)
    return dict(y=F.interpolate(a["x"], **settings), dx=F.interpolate_backward(a["dy"], a["x"].shape, **settings))


def _softmax_config(rng):
    shape = _shape_config(rng)["shape"]
    return dict(shape=shape, dim=int(rng.integers(-len(shape), len(shape))))


SOFTMAX_EDGES = (dict(shape=(3, 700), dim=1),       # contiguous rows longer than a block
                 dict(shape=(2, 300, 5), dim=-2),   # long strided rows
                 dict(shape=(4, 1), dim=1))         # one element a row: y = 1 (log: 0), dx = 0
SOFTMAX_LARGE = (dict(shape=(256, 1000), dim=1), dict(shape=(8, 21, 32, 32), dim=1))   # classifier, segmentation


def _softmax_inputs(cfg, rng):
    return dict(x=3 * rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(cfg["shape"]))


def _softmax_run(name):
    def run(a, cfg, be):
        from .. import functional as F
        y = getattr(F, name)(a["x"], cfg["dim"], backend=be)
        return dict(y=y, dx=getattr(F, f"{name}_backward")(a["dy"], y, cfg["dim"], backend=be))
    return run


# --- the 1-D ops: the 2-D configurations with height 1, run on (N, C, L) or unbatched (C, L) signals ---------

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


def _conv1d_config(rng):
    while True:
        cfg = _height_one(_conv_config(rng), rng)
        if cfg["stride"] == (1, 1) and rng.random() < 0.3:
            cfg["padding"] = str(rng.choice(["same", "valid"]))
        try:
            conv_geometry(*_conv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
            return cfg
        except ValueError:
            continue


def _tconv1d_config(rng):
    while True:
        cfg = _height_one(_tconv_config(rng), rng)
        try:
            _tconv_geometry(cfg)
            return cfg
        except ValueError:
            continue


def _signal_pool_config(with_dilation):
    def draw(rng):
        while True:
            cfg = _height_one(_pool_config(rng, with_dilation), rng)
            try:
                _pool_geometry(cfg)
                return cfg
            except ValueError:
                continue
    return draw


def _conv1d_args(cfg):
    return dict(stride=_width(cfg["stride"]), padding=_width(cfg["padding"]), dilation=_width(cfg["dilation"]),
                groups=cfg["groups"])


def _conv1d_run(a, cfg, be):
    from .. import functional as F
    y = F.conv1d(a["x"], a["weight"], a["bias"], backend=be, **_conv1d_args(cfg))
    dx, dw, db = F.conv1d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **_conv1d_args(cfg))
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _tconv1d_run(a, cfg, be):
    from .. import functional as F
    args = dict(_conv1d_args(cfg), output_padding=_width(cfg["output_padding"]))
    y = F.conv_transpose1d(a["x"], a["weight"], a["bias"], backend=be, **args)
    dx, dw, db = F.conv_transpose1d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **args)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _max_pool1d_run(a, cfg, be):
    from .. import functional as F
    args = dict(stride=_width(cfg["stride"]), padding=_width(cfg["padding"]), dilation=_width(cfg["dilation"]),
                ceil_mode=cfg["ceil_mode"])
    y, indices = F.max_pool1d(a["x"], _width(cfg["kernel"]), backend=be, **args)
    dx = F.max_pool1d_backward(a["dy"], indices, a["x"].shape, _width(cfg["kernel"]), backend=be, **args)
    return dict(y=y, indices=indices, dx=dx)


def _avg_pool1d_run(a, cfg, be):
    from .. import functional as F
    args = dict(stride=_width(cfg["stride"]), padding=_width(cfg["padding"]), ceil_mode=cfg["ceil_mode"],
                count_include_pad=cfg["count_include_pad"])
    y = F.avg_pool1d(a["x"], _width(cfg["kernel"]), backend=be, **args)
    return dict(y=y, dx=F.avg_pool1d_backward(a["dy"], a["x"].shape, _width(cfg["kernel"]), backend=be, **args))


def _adaptive_pool1d_run(a, cfg, be):
    from .. import functional as F
    y = F.adaptive_avg_pool1d(a["x"], _width(cfg["out"]), backend=be)
    return dict(y=y, dx=F.adaptive_avg_pool1d_backward(a["dy"], a["x"].shape, backend=be))


CONV1D_EDGES = (
    _conv(HW=(1, 9), RS=(1, 4), padding="same", dilation=(1, 3), unbatched=False),   # even extent: the extra right
    _conv(C=6, K=4, groups=2, HW=(1, 11), RS=(1, 3), stride=(1, 2), padding=(0, 2), dilation=(1, 2), bias=False,
          unbatched=True),
    _conv(C=4, K=8, groups=4, HW=(1, 7), RS=(1, 3), padding=(0, 1), unbatched=False),   # depthwise
)
CONV1D_LARGE = (_conv(N=8, C=32, K=64, HW=(1, 512), RS=(1, 9), padding=(0, 4), unbatched=False),)   # audio-like
TCONV1D_EDGES = (
    _conv(HW=(1, 6), RS=(1, 4), stride=(1, 2), padding=(0, 1), output_padding=(0, 1), unbatched=True),
    _conv(C=4, K=6, groups=2, HW=(1, 5), RS=(1, 3), stride=(1, 3), dilation=(1, 2), padding=(0, 0),
          output_padding=(0, 2), unbatched=False),
)
POOL1D_EDGES = (
    _pool(HW=(1, 9), kernel=(1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True, unbatched=True),
    _pool(HW=(1, 8), kernel=(1, 4), padding=(0, 2), count_include_pad=False, unbatched=False),
)
MAX_POOL1D_EDGES = POOL1D_EDGES + (
    _pool(HW=(1, 10), kernel=(1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 3), ceil_mode=True, unbatched=False),
)
POOL1D_LARGE = (_pool(N=8, C=64, HW=(1, 1024), kernel=(1, 3), stride=(1, 2), padding=(0, 1), unbatched=False),)
ADAPTIVE_POOL1D_EDGES = (dict(N=2, C=3, HW=(1, 9), out=(1, 1), unbatched=False),    # global average pooling
                         dict(N=1, C=2, HW=(1, 4), out=(1, 7), unbatched=True))     # overlapping windows


def _pad_config(rng):
    """A signal's, an image's or a volume's padding (HW: its 1 to 3 padded dims)."""
    from ..functional.padding import padded_shape
    while True:
        mode = str(rng.choice(["constant", "reflect", "replicate", "circular"]))
        dims = int(rng.integers(1, 4))
        cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)),
                   HW=tuple(int(s) for s in rng.integers(1, 9, dims)), mode=mode,
                   pad=tuple(int(p) for p in rng.integers(-3, 9, 2 * dims)),   # crops too
                   value=round(float(rng.standard_normal()), 2) if mode == "constant" else None)
        try:
            return dict(cfg, out=padded_shape((cfg["C"], *cfg["HW"]), cfg["pad"], mode)[1:])
        except ValueError:   # past the mode's limits, or an empty output
            continue


PAD_EDGES = (dict(N=2, C=3, HW=(4, 5), mode="reflect", pad=(4, 4, 3, 3), value=None, out=(10, 13)),   # size - 1
             dict(N=1, C=2, HW=(3, 4), mode="circular", pad=(4, 4, 3, 3), value=None, out=(9, 12)),   # a whole wrap
             dict(N=1, C=2, HW=(5, 4), mode="circular", pad=(-1, 3, 2, -2), value=None, out=(5, 6)),  # crop, then wrap
             dict(N=2, C=1, HW=(1, 1), mode="replicate", pad=(5, 0, 0, 6), value=None, out=(7, 6)),   # one pixel
             dict(N=1, C=2, HW=(6, 5), mode="constant", pad=(-2, 3, 2, -6), value=-1.5, out=(2, 6)),  # crops
             dict(N=2, C=2, HW=(3, 4, 5), mode="reflect", pad=(4, 4, 3, 3, 2, 2), value=None, out=(7, 10, 13)),
             dict(N=1, C=3, HW=(7,), mode="circular", pad=(-2, 5), value=None, out=(10,)))   # a signal
PAD_LARGE = (dict(N=8, C=32, HW=(64, 64), mode="reflect", pad=(3, 3, 3, 3), value=None, out=(70, 70)),)


def _pad_inputs(cfg, rng):
    return dict(x=rng.standard_normal((cfg["N"], cfg["C"], *cfg["HW"])),
                dy=rng.standard_normal((cfg["N"], cfg["C"], *cfg["out"])))


def _pad_run(a, cfg, be):
    from .. import functional as F
    return dict(y=F.pad(a["x"], cfg["pad"], cfg["mode"], cfg["value"], backend=be),
                dx=F.pad_backward(a["dy"], a["x"].shape, cfg["pad"], cfg["mode"], backend=be))


def _lp_pool_config(rng):
    """A pool configuration without padding (lp_pool has none) and an even or infinite norm (odd and
    fractional ones make NaN roots of random inputs' negative sums, as PyTorch's do)."""
    while True:
        cfg = dict(_pool_config(rng, False), padding=(0, 0), norm_type=float(rng.choice([2.0, 4.0, np.inf])))
        try:
            _pool_geometry(cfg)
            return cfg
        except ValueError:
            continue


LP_POOL_EDGES = (dict(_pool(HW=(7, 9), kernel=(3, 3), stride=(2, 2), ceil_mode=True), norm_type=2.0),  # partial windows
                 dict(_pool(HW=(5, 6), kernel=(3, 2), stride=(1, 2)), norm_type=float("inf")),
                 dict(_pool(N=1, C=1, HW=(4, 4), kernel=(4, 4)), norm_type=4.0))


def _lp_pool_run(a, cfg, be):
    from .. import functional as F
    args = (cfg["norm_type"], cfg["kernel"], cfg["stride"], cfg["ceil_mode"])
    return dict(y=F.lp_pool2d(a["x"], *args, backend=be), dx=F.lp_pool2d_backward(a["dy"], a["x"], *args, backend=be))


def _unpool_out(cfg):
    return tuple(default_size(*axis) for axis in zip(cfg["HW"], cfg["kernel"], cfg["stride"], cfg["padding"]))


def _unpool_config(rng):
    """x's sizes and an unpool geometry whose output plane holds at least x's plane (distinct indices:
    with duplicates the unpooled value is one of them, not differentiable by finite differences)."""
    while True:
        kernel = _ints(rng, 1, 4)
        cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=_ints(rng, 1, 6), kernel=kernel,
                   stride=_ints(rng, 1, 4), padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel),
                   seed=int(rng.integers(2**31)))
        out = _unpool_out(cfg)
        if min(out) > 0 and out[0] * out[1] >= cfg["HW"][0] * cfg["HW"][1]:
            return cfg


UNPOOL_EDGES = (dict(N=2, C=3, HW=(4, 4), kernel=(2, 2), stride=(2, 2), padding=(0, 0), seed=1),  # MaxPool2d(2)'s
                dict(N=1, C=2, HW=(3, 5), kernel=(3, 3), stride=(1, 2), padding=(1, 1), seed=2))


def _unpool_indices(cfg):
    """Distinct positions in each output plane, int32 of x's shape, drawn from the configuration's seed."""
    rng = np.random.default_rng(cfg["seed"])
    out_plane, in_plane = int(np.prod(_unpool_out(cfg))), cfg["HW"][0] * cfg["HW"][1]
    planes = [rng.permutation(out_plane)[:in_plane] for _ in range(cfg["N"] * cfg["C"])]
    return np.stack(planes).reshape(cfg["N"], cfg["C"], *cfg["HW"]).astype(np.int32)


def _unpool_inputs(cfg, rng):
    return dict(x=rng.standard_normal((cfg["N"], cfg["C"], *cfg["HW"])),
                dy=rng.standard_normal((cfg["N"], cfg["C"], *_unpool_out(cfg))))


def _unpool_run(a, cfg, be):
    from .. import functional as F
    from ..backend import module_of
    indices = module_of(a["x"]).asarray(_unpool_indices(cfg))
    y = F.max_unpool2d(a["x"], indices, cfg["kernel"], cfg["stride"], cfg["padding"], backend=be)
    return dict(y=y, dx=F.max_unpool2d_backward(a["dy"], indices, backend=be))


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
      for name in ("relu", "leaky_relu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "mish", "softplus",
                   "logsigmoid", "softsign", "tanhshrink")),
    *(OpCheck(name, _shape_config, (), _piecewise_activation_inputs(name), _activation_run(name), "y", "dy",
              {"x": "dx"}, large_configs=ACTIVATION_LARGE)
      for name in PIECEWISE_KINKS),
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
    OpCheck("nll_loss", _nll_config, (), _nll_inputs, nll_run(), "loss", None, {"input": "dinput"}, reduces=True,
            large_configs=NLL_LARGE),
    *(OpCheck(name, _elementwise_loss_config, (), _elementwise_loss_inputs(name == "binary_cross_entropy"),
              elementwise_loss_run(name), "loss", None, {"input": "dinput"}, reduces=True,
              large_configs=ELEMENTWISE_LOSS_LARGE)
      for name in ("l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                   "binary_cross_entropy_with_logits")),
    OpCheck("kl_div", _kl_div_config, (), _elementwise_loss_inputs(False), elementwise_loss_run("kl_div"), "loss", None,
            {"input": "dinput"}, reduces=True, large_configs=KL_DIV_LARGE),
    OpCheck("dropout", _dropout_config, (), _activation_inputs, _dropout_run, "y", "dy", {"x": "dx"},
            large_configs=(dict(ACTIVATION_LARGE[0], p=0.5, seed=2**40, step=3),)),
    OpCheck("dropout2d", _dropout2d_config, (), _activation_inputs, _dropout2d_run, "y", "dy", {"x": "dx"},
            large_configs=(dict(ACTIVATION_LARGE[0], p=0.5, seed=2**40, step=3),)),
    OpCheck("adaptive_avg_pool2d", _adaptive_pool_config, ADAPTIVE_POOL_EDGES, _adaptive_pool_inputs,
            _adaptive_pool_run, "y", "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL_LARGE),
    OpCheck("adaptive_max_pool2d", _adaptive_pool_config, ADAPTIVE_POOL_EDGES, _adaptive_pool_inputs,
            _adaptive_max_pool_run, "y", "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL_LARGE),
    OpCheck("pad", _pad_config, PAD_EDGES, _pad_inputs, _pad_run, "y", "dy", {"x": "dx"}, large_configs=PAD_LARGE),
    OpCheck("interpolate", _upsample_config, UPSAMPLE_EDGES, _upsample_inputs, _upsample_run, "y", "dy", {"x": "dx"},
            large_configs=UPSAMPLE_LARGE),
    *(OpCheck(name, _softmax_config, SOFTMAX_EDGES, _softmax_inputs, _softmax_run(name), "y", "dy", {"x": "dx"},
              reduces=True, large_configs=SOFTMAX_LARGE)
      for name in ("softmax", "log_softmax")),
    OpCheck("conv1d", _conv1d_config, CONV1D_EDGES, _signal_inputs(_conv_inputs), _conv1d_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=CONV1D_LARGE, **CONV_MATH),
    OpCheck("conv_transpose1d", _tconv1d_config, TCONV1D_EDGES, _signal_inputs(_tconv_inputs), _tconv1d_run, "y",
            "dy", {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, **CONV_MATH),
    OpCheck("max_pool1d", _signal_pool_config(True), MAX_POOL1D_EDGES, _signal_inputs(_pool_inputs),
            _max_pool1d_run, "y", "dy", {"x": "dx"}, large_configs=POOL1D_LARGE),
    OpCheck("avg_pool1d", _signal_pool_config(False), POOL1D_EDGES, _signal_inputs(_pool_inputs), _avg_pool1d_run,
            "y", "dy", {"x": "dx"}),
    OpCheck("adaptive_avg_pool1d", lambda rng: _height_one(_adaptive_pool_config(rng), rng), ADAPTIVE_POOL1D_EDGES,
            _signal_inputs(_adaptive_pool_inputs), _adaptive_pool1d_run, "y", "dy", {"x": "dx"}),
    OpCheck("batch_norm", _batch_norm_config, BATCH_NORM_EDGES, _batch_norm_inputs, _batch_norm_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=BATCH_NORM_LARGE),
    OpCheck("lp_pool2d", _lp_pool_config, LP_POOL_EDGES, _pool_inputs, _lp_pool_run, "y", "dy", {"x": "dx"}),
    OpCheck("max_unpool2d", _unpool_config, UNPOOL_EDGES, _unpool_inputs, _unpool_run, "y", "dy", {"x": "dx"}),
)}
