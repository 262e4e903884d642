"""The losses' checks: cross entropy, nll, the element-wise losses and the margin, embedding and
likelihood losses, every option."""
from __future__ import annotations

import numpy as np

from .spec import OpCheck, _ints


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
    return _loss_outputs(loss, cfg["reduction"], dlogits=dlogits)


def _loss_outputs(loss, reduction: str, **grads) -> dict:
    if reduction == "none":   # the gradients are those of the per-position (per-element) losses' sum
        return {"loss": float(loss.sum()), "losses": loss, **grads}
    return {"loss": loss, **grads}


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
        return _loss_outputs(loss, cfg["reduction"], dinput=dinput)
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
        return _loss_outputs(loss, cfg["reduction"], dinput=dinput)
    return run


# --- the margin, embedding and likelihood losses: soft_margin_loss ... triplet_margin_loss ----------

def _margin_loss_config(rng):
    """Settings every one of these losses draws from (each takes those it has): inputs of 1 to 4 dims,
    rows (N, D) for the row losses, and the losses' options."""
    return dict(shape=_ints(rng, 1, 6, int(rng.integers(1, 5))),
                rows=(int(rng.integers(1, 6)), int(rng.integers(2, 7))),
                reduction=str(rng.choice(["mean", "sum", "none"])), margin=float(rng.choice([0.5, 1.0, 2.0])),
                weighted=bool(rng.random() < 0.5), p=int(rng.choice([1, 2])), log_input=bool(rng.random() < 0.5),
                full=bool(rng.random() < 0.5), var_shape=str(rng.choice(["same", "last one"])),
                swap=bool(rng.random() < 0.5), cosine_margin=float(rng.choice([-0.5, 0.0, 0.5])),
                norm=float(rng.choice([1.5, 2.0, 3.0])))   # triplet's (p = 1 can make a row's gradient exactly 0)


MARGIN_LOSS_LARGE = (dict(shape=(64, 1000), rows=(256, 128), reduction="mean", margin=1.0, weighted=True, p=2,
                          log_input=True, full=True, var_shape="same", swap=True, cosine_margin=0.0,
                          norm=2.0),)


def _signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _off_kink(value, kink, step=0.1):
    """value moved by `step` where it lies within 0.05 of kink (finite differences would straddle it)."""
    return np.where(np.abs(value - kink) < 0.05, value + step, value)


def _soft_margin_inputs(cfg, rng):
    return dict(input=2 * rng.standard_normal(cfg["shape"]), target=_signs(rng, cfg["shape"]))


def _hinge_embedding_inputs(cfg, rng):
    """The first target 1 (its loss x: a gradient however the hinges of the others fall)."""
    target = _signs(rng, cfg["shape"])
    target.flat[0] = 1.0
    return dict(input=_off_kink(2 * rng.standard_normal(cfg["shape"]), cfg["margin"]), target=target)


def _margin_ranking_inputs(cfg, rng):
    """x1 moved off the hinge's kink -y (x1 - x2) + margin = 0 (by 0.1 y: the hinge's argument by -0.1),
    the first element's hinge 2 margin + 0.5 (a gradient however the others fall)."""
    x1, x2, y = rng.standard_normal(cfg["shape"]), rng.standard_normal(cfg["shape"]), _signs(rng, cfg["shape"])
    hinge = -y * (x1 - x2) + cfg["margin"]
    x1 = np.where(np.abs(hinge) < 0.05, x1 + 0.1 * y, x1)
    x1.flat[0] = x2.flat[0] - y.flat[0] * (cfg["margin"] + 0.5)
    return dict(input1=x1, input2=x2, target=y)


def _poisson_nll_inputs(cfg, rng):
    """Log-rates, or rates in [0.5, 3] (log(x + eps) of positive x); non-negative counts, many above 1
    (full's Stirling term)."""
    rates = rng.standard_normal(cfg["shape"]) if cfg["log_input"] else rng.uniform(0.5, 3.0, cfg["shape"])
    return dict(input=rates, target=rng.uniform(0.0, 4.0, cfg["shape"]))


def _gaussian_nll_inputs(cfg, rng):
    """Variances in [0.5, 2] (above eps: clamped ones would have no input gradient), of the input's
    shape or with its last dimension 1."""
    var_shape = cfg["shape"] if cfg["var_shape"] == "same" else cfg["shape"][:-1] + (1,)
    return dict(input=rng.standard_normal(cfg["shape"]), target=rng.standard_normal(cfg["shape"]),
                var=rng.uniform(0.5, 2.0, var_shape))


def _multilabel_soft_margin_inputs(cfg, rng):
    n, classes = cfg["rows"]
    return dict(input=2 * rng.standard_normal((n, classes)), target=(rng.random((n, classes)) < 0.5).astype(float),
                weight=rng.uniform(0.2, 2.0, classes) if cfg["weighted"] else None)


def _multi_margin_inputs(cfg, rng):
    """Scores with every hinge margin - x_y + x_c at least 0.05 from 0 (x_c moved by 0.1), the first
    row's next class's 0.5 (a gradient however the others fall)."""
    n, classes = cfg["rows"]
    x = rng.standard_normal((n, classes))
    target = rng.integers(0, classes, n).astype(np.int64)
    picked = x[np.arange(n), target][:, None]
    moved = _off_kink(cfg["margin"] - picked + x, 0.0) - cfg["margin"] + picked
    x = np.where(np.arange(classes) == target[:, None], x, moved)
    x[0, (target[0] + 1) % classes] = x[0, target[0]] - cfg["margin"] + 0.5
    return dict(input=x, target=target, weight=rng.uniform(0.2, 2.0, classes) if cfg["weighted"] else None)


def _redrawn_rows(rng, shape, arrays, far_from_kinks):
    """arrays (n, d) with the rows where far_from_kinks(*arrays) is False drawn again until it holds."""
    arrays = list(arrays)
    while True:
        bad = ~far_from_kinks(*arrays)
        if not bad.any():
            return arrays
        for a in arrays:
            a[bad] = rng.standard_normal((int(bad.sum()), shape[1]))


def _cosine(x1, x2):
    return (x1 * x2).sum(-1) / np.sqrt(((x1 * x1).sum(-1) + 1e-12) * ((x2 * x2).sum(-1) + 1e-12))


def _cosine_embedding_inputs(cfg, rng):
    """Row pairs whose cosine is 0.05 from the margin (the hinge's kink for target -1), the first
    target 1 (its loss 1 - cos: a gradient however the hinges fall)."""
    shape = cfg["rows"]
    x1, x2 = _redrawn_rows(rng, shape, (rng.standard_normal(shape), rng.standard_normal(shape)),
                           lambda a, b: np.abs(_cosine(a, b) - cfg["cosine_margin"]) >= 0.05)
    target = _signs(rng, shape[:1])
    target[0] = 1.0
    return dict(input1=x1, input2=x2, target=target)


def _triplet_inputs(cfg, rng):
    """Triplets 0.05 from the hinge's kink and, with swap, from a tie of the two negative distances, the
    first one's hinge active (a gradient however the others fall)."""
    shape, p = cfg["rows"], cfg["norm"]

    def far_from_kinks(a, q, n):
        def distance(x, y):
            return np.linalg.norm(x - y + 1e-6, ord=p, axis=-1)
        negative = np.minimum(distance(a, n), distance(q, n)) if cfg["swap"] else distance(a, n)
        hinge = cfg["margin"] + distance(a, q) - negative
        far = (np.abs(hinge) >= 0.05) & ((np.arange(len(hinge)) > 0) | (hinge > 0))
        return far & (np.abs(distance(a, n) - distance(q, n)) >= 0.05) if cfg["swap"] else far
    anchor, positive, negative = _redrawn_rows(rng, shape, [rng.standard_normal(shape) for _ in range(3)],
                                               far_from_kinks)
    return dict(anchor=anchor, positive=positive, negative=negative)


# name -> (inputs, the call's arguments and options from (inputs, cfg), the gradients: input -> output name)
MARGIN_LOSSES = {
    "soft_margin_loss": (_soft_margin_inputs, lambda a, cfg: ((a["input"], a["target"]), {}), {"input": "dinput"}),
    "hinge_embedding_loss": (_hinge_embedding_inputs,
                             lambda a, cfg: ((a["input"], a["target"]), dict(margin=cfg["margin"])),
                             {"input": "dinput"}),
    "margin_ranking_loss": (_margin_ranking_inputs,
                            lambda a, cfg: ((a["input1"], a["input2"], a["target"]), dict(margin=cfg["margin"])),
                            {"input1": "dinput1", "input2": "dinput2"}),
    "poisson_nll_loss": (_poisson_nll_inputs,
                         lambda a, cfg: ((a["input"], a["target"]), dict(log_input=cfg["log_input"], full=cfg["full"])),
                         {"input": "dinput"}),
    "gaussian_nll_loss": (_gaussian_nll_inputs,
                          lambda a, cfg: ((a["input"], a["target"], a["var"]), dict(full=cfg["full"])),
                          {"input": "dinput", "var": "dvar"}),
    "multilabel_soft_margin_loss": (_multilabel_soft_margin_inputs,
                                    lambda a, cfg: ((a["input"], a["target"]), dict(weight=a["weight"])),
                                    {"input": "dinput"}),
    "multi_margin_loss": (_multi_margin_inputs,
                          lambda a, cfg: ((a["input"], a["target"]),
                                          dict(p=cfg["p"], margin=cfg["margin"], weight=a["weight"])),
                          {"input": "dinput"}),
    "cosine_embedding_loss": (_cosine_embedding_inputs,
                              lambda a, cfg: ((a["input1"], a["input2"], a["target"]),
                                              dict(margin=cfg["cosine_margin"])),
                              {"input1": "dinput1", "input2": "dinput2"}),
    "triplet_margin_loss": (_triplet_inputs,
                            lambda a, cfg: ((a["anchor"], a["positive"], a["negative"]),
                                            dict(margin=cfg["margin"], p=cfg["norm"], swap=cfg["swap"])),
                            {"anchor": "danchor", "positive": "dpositive", "negative": "dnegative"}),
}


def margin_loss_run(name: str, as_array: bool = False):
    """The check's run of MARGIN_LOSSES' loss `name`; as_array as nll_run's."""
    _, call, grads = MARGIN_LOSSES[name]

    def run(a, cfg, be):
        from .. import functional as F
        args, options = call(a, cfg)
        loss, *values = getattr(F, name)(*args, reduction=cfg["reduction"], backend=be, as_array=as_array, **options)
        return _loss_outputs(loss, cfg["reduction"], **dict(zip(grads.values(), values)))
    return run


CHECKS = (
    OpCheck("cross_entropy", _loss_config, (), _cross_entropy_inputs, _cross_entropy_run, "loss", None,
            {"logits": "dlogits"}, reduces=True, large_configs=LOSS_LARGE),
    OpCheck("mse_loss", _loss_config, (), _mse_inputs, _mse_run, "loss", None, {"pred": "dpred"}, reduces=True,
            large_configs=LOSS_LARGE),
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
    *(OpCheck(name, _margin_loss_config, (), inputs, margin_loss_run(name), "loss", None, grads, reduces=True,
              large_configs=MARGIN_LOSS_LARGE)
      for name, (inputs, _, grads) in MARGIN_LOSSES.items()),
)
