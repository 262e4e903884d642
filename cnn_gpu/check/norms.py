"""The normalisations' checks: batch, group, instance, layer, RMS and local response norm."""
from __future__ import annotations

import math

from .spec import OpCheck, _ints


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


def _batch_norm3d_config(rng):
    """batch_norm's settings on (N, C, D, H, W) volumes, at least 4 values a channel."""
    cfg = dict(_batch_norm_config(rng), HW=_ints(rng, 1, 4, 3))
    if cfg["N"] * math.prod(cfg["HW"]) < 4:
        cfg["N"] = 4
    return cfg


BATCH_NORM3D_LARGE = (dict(N=4, C=32, HW=(8, 16, 16), training=True, affine=True, activation=None),)


def _plane_norm_config(rng, volumes: bool = False, instance: bool = False):
    """Group or instance norm's x (N, C, *planes), planes of 1 to 3 dims (3: volumes), C a multiple of
    num_groups, at least 4 values in a group, a plane for instance norm (two normalise to +-1
    whatever they are: dx is rounding noise)."""
    while True:
        groups = int(rng.integers(1, 4))
        planes = _ints(rng, 1, 4, 3 if volumes else int(rng.integers(1, 3)))
        cfg = dict(N=int(rng.integers(1, 4)), C=groups * int(rng.integers(1, 3)), HW=planes, groups=groups,
                   affine=bool(rng.random() < 0.8), use_input_stats=bool(rng.random() < 0.8),
                   running=bool(rng.random() < 0.5))
        if (1 if instance else cfg["C"] // groups) * math.prod(planes) >= 4:
            return cfg


def _plane_norm_inputs(cfg, rng):
    return _batch_norm_inputs(dict(cfg, training=True), rng)


def _group_norm_run(a, cfg, be):
    from .. import functional as F
    y = F.group_norm(a["x"], cfg["groups"], a["weight"], a["bias"], backend=be)
    dx, dw, db = F.group_norm_backward(a["dy"], a["x"], cfg["groups"], a["weight"], a["bias"], backend=be)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


GROUP_NORM_LARGE = (dict(N=8, C=64, HW=(16, 16), groups=32, affine=True, use_input_stats=True, running=False),)


def instance_norm_run(updates_copies: bool = True):
    """The instance_norm check's run: x normalised by each plane's statistics (blended into the running
    ones where the configuration has them: into copies, or with updates_copies False, as the replay
    tests ask, into the inputs themselves) or, with use_input_stats False, by the running ones."""
    def run(a, cfg, be):
        from .. import functional as F
        running = cfg["running"] or not cfg["use_input_stats"]
        stats = (a["running_mean"], a["running_var"]) if running else (None, None)
        updated = tuple(s.copy() for s in stats) if running and updates_copies else stats
        y = F.instance_norm(a["x"], *updated, a["weight"], a["bias"], cfg["use_input_stats"], backend=be)
        dx, dw, db = F.instance_norm_backward(a["dy"], a["x"], *stats, a["weight"], a["bias"],
                                              cfg["use_input_stats"], backend=be)
        outputs = dict(y=y, dx=dx, dweight=dw, dbias=db)
        return dict(outputs, running_mean=updated[0], running_var=updated[1]) if running else outputs
    return run


def _row_norm_config(rng):
    """layer_norm's and rms_norm's x: leading dims, then normalized_shape (1 or 2 dims, at least 4 values)."""
    while True:
        normalized = _ints(rng, 1, 7, int(rng.integers(1, 3)))
        if math.prod(normalized) >= 4:
            return dict(lead=_ints(rng, 1, 4, int(rng.integers(0, 3))), normalized=normalized,
                        affine=bool(rng.random() < 0.8))


ROW_NORM_EDGES = (dict(lead=(3,), normalized=(700,), affine=True),     # a row longer than a block's walk
                  dict(lead=(), normalized=(2, 3), affine=False))      # one row, unbatched
ROW_NORM_LARGE = (dict(lead=(16, 196), normalized=(384,), affine=True),)   # a ViT's tokens


def _row_norm_inputs(cfg, rng):
    shape = cfg["lead"] + cfg["normalized"]
    parameters = cfg["normalized"] if cfg["affine"] else None
    return dict(x=2 * rng.standard_normal(shape) + 1, dy=rng.standard_normal(shape),
                weight=None if parameters is None else rng.standard_normal(parameters),
                bias=None if parameters is None else rng.standard_normal(parameters))


def _layer_norm_run(a, cfg, be):
    from .. import functional as F
    y = F.layer_norm(a["x"], cfg["normalized"], a["weight"], a["bias"], backend=be)
    dx, dw, db = F.layer_norm_backward(a["dy"], a["x"], cfg["normalized"], a["weight"], a["bias"], backend=be)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


def _rms_norm_run(a, cfg, be):
    """rms_norm takes no bias: the inputs' one is left out."""
    from .. import functional as F
    y = F.rms_norm(a["x"], cfg["normalized"], a["weight"], backend=be)
    dx, dw = F.rms_norm_backward(a["dy"], a["x"], cfg["normalized"], a["weight"], backend=be)
    return dict(y=y, dx=dx, dweight=dw)


def _local_response_norm_config(rng):
    """x (N, C, *) of 3 to 5 dims, a window of 1 to C + 2 channels, an alpha large enough that the
    normalisation is far from the identity."""
    channels = int(rng.integers(1, 7))
    return dict(shape=(int(rng.integers(1, 3)), channels, *_ints(rng, 1, 5, int(rng.integers(1, 4)))),
                size=int(rng.integers(1, channels + 3)), alpha=float(rng.choice([1e-4, 0.5, 2.0])),
                beta=float(rng.choice([0.5, 0.75, 1.5])), k=float(rng.choice([1.0, 2.0])))


LOCAL_RESPONSE_NORM_LARGE = (dict(shape=(8, 96, 27, 27), size=5, alpha=1e-4, beta=0.75, k=2.0),)   # AlexNet's


def _local_response_norm_inputs(cfg, rng):
    return dict(x=rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(cfg["shape"]))


def _local_response_norm_run(a, cfg, be):
    from .. import functional as F
    args = (cfg["size"], cfg["alpha"], cfg["beta"], cfg["k"])
    return dict(y=F.local_response_norm(a["x"], *args, backend=be),
                dx=F.local_response_norm_backward(a["dy"], a["x"], *args, backend=be))


AFFINE_GRADS = {"x": "dx", "weight": "dweight", "bias": "dbias"}

CHECKS = (
    OpCheck("batch_norm", _batch_norm_config, BATCH_NORM_EDGES, _batch_norm_inputs, _batch_norm_run, "y", "dy",
            AFFINE_GRADS, reduces=True, large_configs=BATCH_NORM_LARGE),
    OpCheck("batch_norm3d", _batch_norm3d_config, (), _batch_norm_inputs, _batch_norm_run, "y", "dy", AFFINE_GRADS,
            reduces=True, large_configs=BATCH_NORM3D_LARGE),
    OpCheck("group_norm", _plane_norm_config, (), _plane_norm_inputs, _group_norm_run, "y", "dy", AFFINE_GRADS,
            reduces=True, large_configs=GROUP_NORM_LARGE),
    OpCheck("instance_norm", lambda rng: _plane_norm_config(rng, instance=True), (), _plane_norm_inputs,
            instance_norm_run(), "y", "dy", AFFINE_GRADS, reduces=True),
    OpCheck("instance_norm3d", lambda rng: _plane_norm_config(rng, volumes=True, instance=True), (), _plane_norm_inputs,
            instance_norm_run(), "y", "dy", AFFINE_GRADS, reduces=True),
    OpCheck("layer_norm", _row_norm_config, ROW_NORM_EDGES, _row_norm_inputs, _layer_norm_run, "y", "dy",
            AFFINE_GRADS, reduces=True, large_configs=ROW_NORM_LARGE),
    OpCheck("rms_norm", _row_norm_config, ROW_NORM_EDGES, _row_norm_inputs, _rms_norm_run, "y", "dy",
            {"x": "dx", "weight": "dweight"}, reduces=True, large_configs=ROW_NORM_LARGE),
    OpCheck("local_response_norm", _local_response_norm_config, (), _local_response_norm_inputs,
            _local_response_norm_run, "y", "dy", {"x": "dx"}, reduces=True, large_configs=LOCAL_RESPONSE_NORM_LARGE),
)
