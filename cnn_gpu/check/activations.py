"""The element-wise activations', dropout's and softmax's checks."""
from __future__ import annotations

import numpy as np

from .spec import OpCheck, _ints


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


def _dropout_config(rng):
    return dict(_shape_config(rng), p=float(rng.choice([0.1, 0.5, 0.9])), seed=int(rng.integers(2**63)),
                step=int(rng.integers(1000)))


def _dropout_run(a, cfg, be):
    from .. import functional as F
    y = F.dropout(a["x"], cfg["p"], seed=cfg["seed"], step=cfg["step"], backend=be)
    return dict(y=y, dx=F.dropout_backward(a["dy"], cfg["p"], cfg["seed"], cfg["step"], backend=be))


def _channel_dropout_config(planes: int):
    """dropout's settings on (N, C, *planes) inputs, the rank dropout1d/2d/3d take without a warning."""
    def draw(rng):
        return dict(_dropout_config(rng), shape=(int(rng.integers(1, 4)), int(rng.integers(1, 9)),
                                                 *_ints(rng, 1, 6, planes)))
    return draw


def _channel_dropout_run(name):
    def run(a, cfg, be):
        from .. import functional as F
        y = getattr(F, name)(a["x"], cfg["p"], seed=cfg["seed"], step=cfg["step"], backend=be)
        return dict(y=y, dx=getattr(F, f"{name}_backward")(a["dy"], cfg["p"], cfg["seed"], cfg["step"], backend=be))
    return run


def _softmax_config(rng):
    shape = _shape_config(rng)["shape"]
    return dict(shape=shape, dim=int(rng.integers(-len(shape), len(shape))))


SOFTMAX_EDGES = (dict(shape=(3, 700), dim=1),       # contiguous rows longer than a block
                 dict(shape=(2, 300, 5), dim=-2),   # long strided rows
                 dict(shape=(4, 1), dim=1))         # one element a row: y = 1 (log: 0), dx = 0
SOFTMAX_LARGE = (dict(shape=(256, 1000), dim=1), dict(shape=(8, 21, 32, 32), dim=1))   # classifier, segmentation


def _softmax_inputs(cfg, rng):
    return dict(x=3 * rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(cfg["shape"]))


def _glu_config(rng):
    """A shape whose size along dim is even (GLU halves it)."""
    shape = list(_shape_config(rng)["shape"])
    dim = int(rng.integers(-len(shape), len(shape)))
    shape[dim] = 2 * int(rng.integers(1, 4))
    return dict(shape=tuple(shape), dim=dim)


GLU_EDGES = (dict(shape=(3, 2), dim=-1),            # one a and one b a row
             dict(shape=(2, 6, 5), dim=1))          # a strided half
GLU_LARGE = (dict(shape=(64, 2048), dim=-1),)      # a gated MLP's hidden layer


def _glu_inputs(cfg, rng):
    half = list(cfg["shape"])
    half[cfg["dim"]] //= 2
    return dict(x=2 * rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(half))


def _glu_run(a, cfg, be):
    from .. import functional as F
    return dict(y=F.glu(a["x"], cfg["dim"], backend=be), dx=F.glu_backward(a["dy"], a["x"], cfg["dim"], backend=be))


def _prelu_config(rng):
    """x of 1 to 4 dims; one slope, or one a channel (dimension 1) when x has one."""
    shape = _shape_config(rng)["shape"]
    return dict(shape=shape, per_channel=len(shape) > 1 and bool(rng.random() < 0.7))


PRELU_LARGE = (dict(shape=(8, 32, 28, 28), per_channel=True),)


def _prelu_inputs(cfg, rng):
    slopes = cfg["shape"][1] if cfg["per_channel"] else 1
    return dict(_activation_inputs(cfg, rng), weight=rng.uniform(-0.5, 0.5, slopes))


def _prelu_run(a, cfg, be):
    from .. import functional as F
    dx, dweight = F.prelu_backward(a["dy"], a["x"], a["weight"], backend=be)
    return dict(y=F.prelu(a["x"], a["weight"], backend=be), dx=dx, dweight=dweight)


def _add_relu_inputs(cfg, rng):
    """a and b whose sum stays 0.05 from ReLU's kink; dy_a and dy_b the upstream gradient's two summands."""
    a = rng.standard_normal(cfg["shape"])
    return dict(a=a, b=_away_from_zero(rng, cfg["shape"]) - a, dy=rng.standard_normal(cfg["shape"]),
                dy_b=rng.standard_normal(cfg["shape"]))


def _add_relu_run(a, cfg, be):
    """relu(a + b) in one pass, its gradient (relu_backward of the output, for a and b alike), and the
    gradient arriving as two summands (relu_backward_of_sum of dy and dy_b, against the oracle only)."""
    from .. import functional as F
    y = F.add_relu(a["a"], a["b"], backend=be)
    dx = F.relu_backward(a["dy"], y, backend=be)
    return dict(y=y, da=dx, db=dx, dsum=F.relu_backward_of_sum(a["dy"], a["dy_b"], y, backend=be))


def _softmax_run(name):
    def run(a, cfg, be):
        from .. import functional as F
        y = getattr(F, name)(a["x"], cfg["dim"], backend=be)
        return dict(y=y, dx=getattr(F, f"{name}_backward")(a["dy"], y, cfg["dim"], backend=be))
    return run


# the activations smooth but for a kink at 0 (relu's, leaky_relu's), which _activation_inputs keeps x from
SMOOTH_BUT_AT_ZERO = ("relu", "leaky_relu", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "mish", "softplus",
                      "logsigmoid", "softsign", "tanhshrink")

CHECKS = (
    *(OpCheck(name, _shape_config, (), _activation_inputs, _activation_run(name), "y", "dy", {"x": "dx"},
              large_configs=ACTIVATION_LARGE)
      for name in SMOOTH_BUT_AT_ZERO),
    *(OpCheck(name, _shape_config, (), _piecewise_activation_inputs(name), _activation_run(name), "y", "dy",
              {"x": "dx"}, large_configs=ACTIVATION_LARGE)
      for name in PIECEWISE_KINKS),
    OpCheck("dropout", _dropout_config, (), _activation_inputs, _dropout_run, "y", "dy", {"x": "dx"},
            large_configs=(dict(ACTIVATION_LARGE[0], p=0.5, seed=2**40, step=3),)),
    *(OpCheck(name, _channel_dropout_config(planes), (), _activation_inputs, _channel_dropout_run(name), "y", "dy",
              {"x": "dx"}, large_configs=(dict(ACTIVATION_LARGE[0], shape=large, p=0.5, seed=2**40, step=3),))
      for name, planes, large in (("dropout2d", 2, ACTIVATION_LARGE[0]["shape"]), ("dropout1d", 1, (8, 64, 512)),
                                  ("dropout3d", 3, (4, 16, 16, 16, 16)))),
    *(OpCheck(name, _softmax_config, SOFTMAX_EDGES, _softmax_inputs, _softmax_run(name), "y", "dy", {"x": "dx"},
              reduces=True, large_configs=SOFTMAX_LARGE)
      for name in ("softmax", "log_softmax", "softmin")),
    OpCheck("glu", _glu_config, GLU_EDGES, _glu_inputs, _glu_run, "y", "dy", {"x": "dx"}, large_configs=GLU_LARGE),
    OpCheck("prelu", _prelu_config, (), _prelu_inputs, _prelu_run, "y", "dy", {"x": "dx", "weight": "dweight"},
            reduces=True, large_configs=PRELU_LARGE),
    OpCheck("add_relu", _shape_config, (), _add_relu_inputs, _add_relu_run, "y", "dy", {"a": "da", "b": "db"},
            large_configs=ACTIVATION_LARGE),
)
