"""The distances' checks: normalize, cosine_similarity and pairwise_distance (their norms' every p)."""
from __future__ import annotations

import numpy as np

from .spec import OpCheck, _ints

# the norms checked: the kinks of p <= 1 (a zero element) and of inf (a tie of the largest) are not
# met by random inputs
NORMS = (0.5, 1.0, 1.5, 2.0, 3.0, float("inf"))


def _normalize_config(rng):
    """A shape and a dim of at least 2 elements (one element normalises to its sign: no gradient)."""
    shape = list(_ints(rng, 1, 6, int(rng.integers(1, 5))))
    dim = int(rng.integers(-len(shape), len(shape)))
    shape[dim] = max(shape[dim], 2)
    return dict(shape=tuple(shape), dim=dim, p=float(rng.choice(NORMS)))


DISTANCE_EDGES = (dict(shape=(3, 700), dim=1, p=2.0),        # rows longer than a block
                  dict(shape=(2, 300, 5), dim=-2, p=1.0))    # long strided rows
NORMALIZE_LARGE = (dict(shape=(256, 2048), dim=1, p=2.0),)   # embeddings


def _normalize_inputs(cfg, rng):
    return dict(x=rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(cfg["shape"]))


def _normalize_run(a, cfg, be):
    from .. import functional as F
    return dict(y=F.normalize(a["x"], cfg["p"], cfg["dim"], backend=be),
                dx=F.normalize_backward(a["dy"], a["x"], cfg["p"], cfg["dim"], backend=be))


def _pair_inputs(forward):
    """x1 and x2 of the configuration's shape, dout of the shape of forward(x1, x2, cfg) (on NumPy)."""
    def inputs(cfg, rng):
        x1, x2 = rng.standard_normal(cfg["shape"]), rng.standard_normal(cfg["shape"])
        return dict(x1=x1, x2=x2, dout=rng.standard_normal(np.shape(forward(x1, x2, cfg, "numpy"))))
    return inputs


def _cosine_similarity(x1, x2, cfg, be):
    from .. import functional as F
    return F.cosine_similarity(x1, x2, cfg["dim"], backend=be)


def _cosine_similarity_run(a, cfg, be):
    from .. import functional as F
    dx1, dx2 = F.cosine_similarity_backward(a["dout"], a["x1"], a["x2"], cfg["dim"], backend=be)
    return dict(out=_cosine_similarity(a["x1"], a["x2"], cfg, be), dx1=dx1, dx2=dx2)


def _pairwise_distance_config(rng):
    """Rows (N, D) or one row (D,); keepdim keeps the rows' last axis."""
    return dict(shape=_ints(rng, 1, 7, int(rng.integers(1, 3))), p=float(rng.choice(NORMS)),
                keepdim=bool(rng.random() < 0.3))


PAIRWISE_DISTANCE_EDGES = (dict(shape=(3, 700), p=2.0, keepdim=False), dict(shape=(5,), p=1.0, keepdim=True))
PAIRWISE_DISTANCE_LARGE = (dict(shape=(1024, 512), p=2.0, keepdim=False),)


def _pairwise_distance(x1, x2, cfg, be):
    from .. import functional as F
    return F.pairwise_distance(x1, x2, cfg["p"], 1e-6, cfg["keepdim"], backend=be)


def _pairwise_distance_run(a, cfg, be):
    from .. import functional as F
    dx1, dx2 = F.pairwise_distance_backward(a["dout"], a["x1"], a["x2"], cfg["p"], 1e-6, cfg["keepdim"], backend=be)
    return dict(out=_pairwise_distance(a["x1"], a["x2"], cfg, be), dx1=dx1, dx2=dx2)


CHECKS = (
    OpCheck("normalize", _normalize_config, DISTANCE_EDGES, _normalize_inputs, _normalize_run, "y", "dy",
            {"x": "dx"}, reduces=True, large_configs=NORMALIZE_LARGE),
    OpCheck("cosine_similarity", _normalize_config, DISTANCE_EDGES, _pair_inputs(_cosine_similarity),
            _cosine_similarity_run, "out", "dout", {"x1": "dx1", "x2": "dx2"}, reduces=True,
            large_configs=NORMALIZE_LARGE),
    OpCheck("pairwise_distance", _pairwise_distance_config, PAIRWISE_DISTANCE_EDGES,
            _pair_inputs(_pairwise_distance), _pairwise_distance_run, "out", "dout", {"x1": "dx1", "x2": "dx2"},
            reduces=True, large_configs=PAIRWISE_DISTANCE_LARGE),
)
