"""The pools' checks: max/avg pooling (their options, 1-D forms), adaptive pooling, power-average
pooling, max unpooling and fractional max pooling."""
from __future__ import annotations

import numpy as np

from ..functional.geometry import pool3d_geometry, pool_geometry
from ..functional.unpool import default_size
from .spec import OpCheck, _height_one, _ints, _signal_inputs, _unbatched, _width


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
    """The 2-D pool's geometry, or the 3-D one's where HW holds three sizes (a volume)."""
    geometry = pool3d_geometry if len(cfg["HW"]) == 3 else pool_geometry
    return geometry((cfg["N"], cfg["C"], *cfg["HW"]), cfg["kernel"], cfg["stride"], cfg["padding"],
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


def _pool_op(name: str, cfg):
    """The functional op `name` (a 2-D pool) and its backward, their 3-D forms for a volume's configuration."""
    from .. import functional as F
    name = name.replace("2d", "3d") if len(cfg["HW"]) == 3 else name
    return getattr(F, name), getattr(F, f"{name}_backward")


def _max_pool_run(a, cfg, be):
    forward, backward = _pool_op("max_pool2d", cfg)
    args = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], ceil_mode=cfg["ceil_mode"])
    y, indices = forward(a["x"], cfg["kernel"], backend=be, **args)
    dx = backward(a["dy"], indices, a["x"].shape, cfg["kernel"], backend=be, **args)
    return dict(y=y, indices=indices, dx=dx)


def _avg_pool_run(a, cfg, be):
    forward, backward = _pool_op("avg_pool2d", cfg)
    args = dict(stride=cfg["stride"], padding=cfg["padding"], ceil_mode=cfg["ceil_mode"],
                count_include_pad=cfg["count_include_pad"], divisor_override=cfg.get("divisor_override"))
    y = forward(a["x"], cfg["kernel"], backend=be, **args)
    dx = backward(a["dy"], a["x"].shape, cfg["kernel"], backend=be, **args)
    return dict(y=y, dx=dx)


def _avg_pool_options_config(rng):
    return dict(_pool_config(rng, False), unbatched=bool(rng.random() < 0.5),
                divisor_override=None if rng.random() < 0.3 else int(rng.choice([-3, 1, 2, 7])))


AVG_POOL_OPTIONS_EDGES = (
    _pool(HW=(7, 9), kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, unbatched=True,
          divisor_override=4),
    _pool(HW=(5, 6), kernel=(3, 2), stride=(1, 2), padding=(1, 0), unbatched=False, divisor_override=-2),
)


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
    forward, backward = _pool_op("adaptive_avg_pool2d", cfg)
    y = forward(a["x"], cfg["out"], backend=be)
    return dict(y=y, dx=backward(a["dy"], a["x"].shape, backend=be))


def _adaptive_max_pool_run(a, cfg, be):
    forward, backward = _pool_op("adaptive_max_pool2d", cfg)
    y, indices = forward(a["x"], cfg["out"], backend=be)
    dx = backward(a["dy"], indices, a["x"].shape, cfg["out"], backend=be)
    return dict(y=y, indices=indices, dx=dx)


def _until_valid(draw_once):
    """A configuration drawer: draw_once(rng) again until _pool_geometry takes its configuration."""
    def draw(rng):
        while True:
            cfg = draw_once(rng)
            try:
                _pool_geometry(cfg)
                return cfg
            except ValueError:
                continue
    return draw


def _signal_pool_config(with_dilation):
    return _until_valid(lambda rng: _height_one(_pool_config(rng, with_dilation), rng))


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


def _volume_pool_config(with_dilation):
    """A 3-D pool's configuration: _pool_config's draws on volumes (N, C, D, H, W); the average pool's
    (with_dilation False) at least as large as its kernel on every axis, as avg_pool3d asks."""
    def draw_once(rng):
        kernel, volume = _ints(rng, 1, 3, 3), _ints(rng, 1, 6, 3)
        if not with_dilation:
            volume = tuple(max(v, k) for v, k in zip(volume, kernel))
        return dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 3)), HW=volume, kernel=kernel,
                    stride=None if rng.random() < 0.3 else _ints(rng, 1, 2, 3),
                    padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel),
                    dilation=_ints(rng, 1, 2, 3) if with_dilation else (1, 1, 1),
                    ceil_mode=bool(rng.random() < 0.5), count_include_pad=bool(rng.random() < 0.5),
                    divisor_override=None if with_dilation or rng.random() < 0.6 else int(rng.choice([-3, 2, 7])))
    return _until_valid(draw_once)


POOL3D_LARGE = (dict(_pool(N=4, C=32, HW=(16, 28, 28), kernel=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1),
                           dilation=(1, 1, 1)), divisor_override=None),)


def _adaptive_pool3d_config(rng):
    return dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 3)), HW=_ints(rng, 1, 6, 3), out=_ints(rng, 1, 7, 3))


ADAPTIVE_POOL3D_LARGE = (dict(N=8, C=64, HW=(4, 7, 7), out=(1, 1, 1)),)   # a video network's global pooling


def _adaptive_max_pool1d_run(a, cfg, be):
    from .. import functional as F
    y, indices = F.adaptive_max_pool1d(a["x"], _width(cfg["out"]), backend=be)
    return dict(y=y, indices=indices, dx=F.adaptive_max_pool1d_backward(a["dy"], indices, a["x"].shape, backend=be))


def _lp_pool1d_run(a, cfg, be):
    from .. import functional as F
    args = (cfg["norm_type"], _width(cfg["kernel"]), _width(cfg["stride"]), cfg["ceil_mode"])
    return dict(y=F.lp_pool1d(a["x"], *args, backend=be), dx=F.lp_pool1d_backward(a["dy"], a["x"], *args, backend=be))


def _unpool1d_config(rng):
    """_unpool_config's on signals (N, C, L): an output length holding at least L."""
    while True:
        cfg = _height_one(_unpool_config(rng), rng)
        if _unpool_out(cfg)[1] >= cfg["HW"][1]:
            return cfg


def _unpool1d_run(a, cfg, be):
    from .. import functional as F
    from ..backend import module_of
    indices = _unpool_indices(cfg)[:, :, 0]
    indices = module_of(a["x"]).asarray(indices[0] if cfg["unbatched"] else indices)
    args = (_width(cfg["kernel"]), _width(cfg["stride"]), _width(cfg["padding"]))
    y = F.max_unpool1d(a["x"], indices, *args, backend=be)
    return dict(y=y, dx=F.max_unpool1d_backward(a["dy"], indices, backend=be))


def _fractional_config(rank: int):
    """A fractional max pool's sizes: outputs 1 or 1 + a power of two per axis, so alpha = (size - k) /
    (outputs - 1) and every window bound are exact in float16's FP32 and float32 as in float64 (the same
    windows as the float64 reference), unbatched 30% of the time."""
    from ..functional.fractional_pool import largest_output

    def draw(rng):
        kernel = _ints(rng, 1, 3, rank)
        sizes = tuple(int(rng.integers(k + 1, k + 9)) for k in kernel)
        out = tuple(int(rng.choice([o for o in (1, 2, 3, 5, 9) if o <= largest_output(size, k, rank)]))
                    for k, size in zip(kernel, sizes))
        return dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=sizes, kernel=kernel, out=out,
                    unbatched=bool(rng.random() < 0.3))
    return draw


FRACTIONAL_EDGES = (dict(N=2, C=3, HW=(9, 8), kernel=(2, 3), out=(5, 3), unbatched=False),   # overlapping windows
                    dict(N=1, C=2, HW=(5, 7), kernel=(1, 1), out=(5, 5), unbatched=True),    # every row once
                    dict(N=2, C=1, HW=(4, 6), kernel=(3, 2), out=(1, 2), unbatched=False))   # one window a column


def _fractional_inputs(cfg, rng):
    """x, dy and the samples, on the 2^-11 grid in (0, 1): exact in float16 (and never zero)."""
    n, c = cfg["N"], cfg["C"]
    arrays = dict(x=rng.standard_normal((n, c, *cfg["HW"])), dy=rng.standard_normal((n, c, *cfg["out"])),
                  samples=rng.integers(1, 2**11, (n, c, len(cfg["HW"]))) * 2.0**-11)
    return _unbatched(arrays, cfg)


def _fractional_run(a, cfg, be):
    forward, backward = _pool_op("fractional_max_pool2d", cfg)   # (an unbatched x takes the samples' first row)
    y, indices = forward(a["x"], cfg["kernel"], cfg["out"], return_indices=True, _random_samples=a["samples"],
                         backend=be)
    return dict(y=y, indices=indices, dx=backward(a["dy"], indices, a["x"].shape, cfg["kernel"], backend=be))


CHECKS = (
    OpCheck("max_pool2d", lambda rng: _pool_config(rng, True), MAX_POOL_EDGES, _pool_inputs, _max_pool_run, "y",
            "dy", {"x": "dx"}, large_configs=POOL_LARGE),
    OpCheck("avg_pool2d", lambda rng: _pool_config(rng, False), POOL_EDGES, _pool_inputs, _avg_pool_run, "y", "dy",
            {"x": "dx"}, large_configs=POOL_LARGE),
    OpCheck("avg_pool2d_options", _avg_pool_options_config, AVG_POOL_OPTIONS_EDGES,
            lambda cfg, rng: _unbatched(_pool_inputs(cfg, rng), cfg), _avg_pool_run, "y", "dy", {"x": "dx"}),
    OpCheck("adaptive_avg_pool2d", _adaptive_pool_config, ADAPTIVE_POOL_EDGES, _adaptive_pool_inputs,
            _adaptive_pool_run, "y", "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL_LARGE),
    OpCheck("adaptive_max_pool2d", _adaptive_pool_config, ADAPTIVE_POOL_EDGES, _adaptive_pool_inputs,
            _adaptive_max_pool_run, "y", "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL_LARGE),
    OpCheck("max_pool1d", _signal_pool_config(True), MAX_POOL1D_EDGES, _signal_inputs(_pool_inputs),
            _max_pool1d_run, "y", "dy", {"x": "dx"}, large_configs=POOL1D_LARGE),
    OpCheck("avg_pool1d", _signal_pool_config(False), POOL1D_EDGES, _signal_inputs(_pool_inputs), _avg_pool1d_run,
            "y", "dy", {"x": "dx"}),
    OpCheck("adaptive_avg_pool1d", lambda rng: _height_one(_adaptive_pool_config(rng), rng), ADAPTIVE_POOL1D_EDGES,
            _signal_inputs(_adaptive_pool_inputs), _adaptive_pool1d_run, "y", "dy", {"x": "dx"}),
    OpCheck("lp_pool2d", _lp_pool_config, LP_POOL_EDGES, _pool_inputs, _lp_pool_run, "y", "dy", {"x": "dx"}),
    OpCheck("max_unpool2d", _unpool_config, UNPOOL_EDGES, _unpool_inputs, _unpool_run, "y", "dy", {"x": "dx"}),
    OpCheck("max_pool3d", _volume_pool_config(True), (), _pool_inputs, _max_pool_run, "y", "dy", {"x": "dx"},
            large_configs=POOL3D_LARGE),
    OpCheck("avg_pool3d", _volume_pool_config(False), (), _pool_inputs, _avg_pool_run, "y", "dy", {"x": "dx"},
            large_configs=POOL3D_LARGE),
    OpCheck("adaptive_avg_pool3d", _adaptive_pool3d_config, (), _adaptive_pool_inputs, _adaptive_pool_run, "y", "dy",
            {"x": "dx"}, large_configs=ADAPTIVE_POOL3D_LARGE),
    OpCheck("adaptive_max_pool3d", _adaptive_pool3d_config, (), _adaptive_pool_inputs, _adaptive_max_pool_run, "y",
            "dy", {"x": "dx"}, large_configs=ADAPTIVE_POOL3D_LARGE),
    OpCheck("adaptive_max_pool1d", lambda rng: _height_one(_adaptive_pool_config(rng), rng), ADAPTIVE_POOL1D_EDGES,
            _signal_inputs(_adaptive_pool_inputs), _adaptive_max_pool1d_run, "y", "dy", {"x": "dx"}),
    OpCheck("lp_pool1d", lambda rng: _height_one(_lp_pool_config(rng), rng), (), _signal_inputs(_pool_inputs),
            _lp_pool1d_run, "y", "dy", {"x": "dx"}),
    OpCheck("max_unpool1d", _unpool1d_config, (), _signal_inputs(_unpool_inputs), _unpool1d_run, "y", "dy",
            {"x": "dx"}),
    OpCheck("fractional_max_pool2d", _fractional_config(2), FRACTIONAL_EDGES, _fractional_inputs, _fractional_run,
            "y", "dy", {"x": "dx"}),
    OpCheck("fractional_max_pool3d", _fractional_config(3), (), _fractional_inputs, _fractional_run, "y", "dy",
            {"x": "dx"}),
)
