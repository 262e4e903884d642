"""The GEMM ops' checks: conv2d and conv_transpose2d (every stride, padding, dilation and group
form, padding="same", unbatched), their 1-D forms, conv3d and conv_transpose3d, and linear."""
from __future__ import annotations

from ..functional.conv3d import conv3d_geometry
from ..functional.conv_transpose3d import conv_transpose3d_geometry
from ..functional.geometry import conv_geometry, conv_transpose_geometry
from .spec import OpCheck, _height_one, _ints, _signal_inputs, _unbatched, _width


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


def _tconv_inputs(cfg, rng, geometry=None):
    """x, weight, bias and dy of a transposed convolution; `geometry`: conv_transpose3d's (_tconv3d_geometry)
    where not conv_transpose2d's."""
    x_shape, w_shape = _tconv_shapes(cfg)
    g = (geometry or _tconv_geometry)(cfg)
    return dict(x=rng.standard_normal(x_shape), weight=rng.standard_normal(w_shape),
                bias=rng.standard_normal(g.C) if cfg["bias"] else None, dy=rng.standard_normal(g.x_shape))


def _tconv_run(a, cfg, be):
    from .. import functional as F
    args = dict(_conv_args(cfg), output_padding=cfg["output_padding"])
    y = F.conv_transpose2d(a["x"], a["weight"], a["bias"], backend=be, **args)
    dx, dw, db = F.conv_transpose2d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **args)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


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


def _linear_nd_config(rng):
    return dict(_linear_config(rng), lead=_ints(rng, 1, 3, int(rng.integers(0, 3))))


def _linear_nd_inputs(cfg, rng):
    return dict(x=rng.standard_normal(cfg["lead"] + (cfg["IN"],)), weight=rng.standard_normal((cfg["OUT"], cfg["IN"])),
                bias=rng.standard_normal(cfg["OUT"]) if cfg["bias"] else None,
                dy=rng.standard_normal(cfg["lead"] + (cfg["OUT"],)))


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


def _conv3d_config(rng):
    """conv2d's draws with a depth: a volume of 1 to 5 slices, 1 to 3 deep taps, every stride,
    padding, dilation and group form, padding "same"/"valid" at stride 1, unbatched."""
    while True:
        plane = _conv_config(rng)
        cfg = dict(plane, HW=(int(rng.integers(1, 6)), *plane["HW"]), RS=(int(rng.integers(1, 4)), *plane["RS"]),
                   stride=(int(rng.integers(1, 3)), *plane["stride"]), padding=_ints(rng, 0, 1, 3),
                   dilation=(int(rng.integers(1, 3)), *plane["dilation"]), unbatched=bool(rng.random() < 0.3))
        if cfg["stride"] == (1, 1, 1) and rng.random() < 0.3:
            cfg["padding"] = str(rng.choice(["same", "valid"]))
        try:
            conv3d_geometry(*_conv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
            return cfg
        except ValueError:
            continue


def _conv3d_inputs(cfg, rng):
    x_shape, w_shape = _conv_shapes(cfg)
    g = conv3d_geometry(x_shape, w_shape, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    return _unbatched(dict(x=rng.standard_normal(x_shape), weight=rng.standard_normal(w_shape),
                           bias=rng.standard_normal(g.K) if cfg["bias"] else None, dy=rng.standard_normal(g.y_shape)),
                      cfg)


def _conv3d_run(a, cfg, be):
    from .. import functional as F
    y = F.conv3d(a["x"], a["weight"], a["bias"], backend=be, **_conv_args(cfg))
    dx, dw, db = F.conv3d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **_conv_args(cfg))
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


CONV3D_EDGES = (
    _conv(HW=(3, 5, 5), RS=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), dilation=(1, 1, 1), unbatched=False),
    _conv(C=6, K=4, groups=2, HW=(5, 6, 4), RS=(2, 3, 1), stride=(2, 1, 2), padding=(0, 1, 0), dilation=(2, 1, 1),
          bias=False, unbatched=True),                                    # grouped, strided, dilated, unbatched
    _conv(C=4, K=4, groups=4, HW=(2, 4, 4), RS=(2, 2, 2), stride=(1, 1, 1), padding="same", dilation=(1, 1, 1),
          unbatched=False),                                               # depthwise, an even "same" kernel
)
CONV3D_LARGE = (_conv(N=2, C=16, K=32, HW=(8, 14, 14), RS=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1),
                      dilation=(1, 1, 1), unbatched=False),)


def _tconv3d_config(rng):
    """_conv3d_config's draws as a transposed convolution's: C and K swapped, numeric padding, an
    output_padding below the stride or the dilation of each axis."""
    while True:
        cfg = _conv3d_config(rng)
        cfg["C"], cfg["K"] = cfg["K"], cfg["C"]
        if isinstance(cfg["padding"], str):
            cfg["padding"] = _ints(rng, 0, 1, 3)
        cfg["output_padding"] = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(cfg["stride"], cfg["dilation"]))
        try:
            _tconv3d_geometry(cfg)
            return cfg
        except ValueError:
            continue


def _tconv3d_geometry(cfg):
    return conv_transpose3d_geometry(*_tconv_shapes(cfg), cfg["stride"], cfg["padding"], cfg["output_padding"],
                                     cfg["groups"], cfg["dilation"])


def _tconv3d_run(a, cfg, be):
    from .. import functional as F
    args = dict(_conv_args(cfg), output_padding=cfg["output_padding"])
    y = F.conv_transpose3d(a["x"], a["weight"], a["bias"], backend=be, **args)
    dx, dw, db = F.conv_transpose3d_backward(a["dy"], a["x"], a["weight"], bias=cfg["bias"], backend=be, **args)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


TCONV3D_EDGES = (
    _conv(HW=(2, 3, 3), RS=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1), output_padding=(1, 1, 1),
          dilation=(1, 1, 1), unbatched=False),                           # a decoder's 2x upsampling
    _conv(C=4, K=6, groups=2, HW=(3, 4, 2), RS=(2, 3, 1), stride=(1, 2, 3), padding=(0, 1, 0), output_padding=(1, 1, 2),
          dilation=(2, 1, 1), bias=False, unbatched=True),                # output_padding past a stride of 1
    _conv(C=4, K=4, groups=4, HW=(2, 3, 3), RS=(2, 2, 2), stride=(2, 1, 1), padding=(0, 0, 0),
          output_padding=(0, 0, 0), dilation=(1, 1, 1), unbatched=False),  # depthwise
)
TCONV3D_LARGE = (_conv(N=2, C=32, K=16, HW=(4, 8, 8), RS=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0),
                       output_padding=(0, 0, 0), dilation=(1, 1, 1), unbatched=False),)   # a 3-D U-Net's up step


CONV_MATH = dict(math_operands=("x", "weight", "dy"), math_outputs=("y", "dx", "dweight"))


CHECKS = (
    OpCheck("conv2d", _conv_config, CONV_EDGES, _conv_inputs, _conv_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=CONV_LARGE, **CONV_MATH),
    OpCheck("conv_transpose2d", _tconv_config, TCONV_EDGES, _tconv_inputs, _tconv_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=TCONV_LARGE,
            **CONV_MATH),
    OpCheck("linear", _linear_config, (), _linear_inputs, _linear_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=LINEAR_LARGE),
    OpCheck("conv2d_same", _conv_same_config, CONV_SAME_EDGES, lambda cfg, rng: _unbatched(_conv_inputs(cfg, rng), cfg),
            _conv_run, "y", "dy", {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, **CONV_MATH),
    OpCheck("linear_nd", _linear_nd_config, (), _linear_nd_inputs, _linear_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True),
    OpCheck("conv1d", _conv1d_config, CONV1D_EDGES, _signal_inputs(_conv_inputs), _conv1d_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=CONV1D_LARGE, **CONV_MATH),
    OpCheck("conv_transpose1d", _tconv1d_config, TCONV1D_EDGES, _signal_inputs(_tconv_inputs), _tconv1d_run, "y",
            "dy", {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, **CONV_MATH),
    OpCheck("conv3d", _conv3d_config, CONV3D_EDGES, _conv3d_inputs, _conv3d_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=CONV3D_LARGE, **CONV_MATH),
    OpCheck("conv_transpose3d", _tconv3d_config, TCONV3D_EDGES,
            lambda cfg, rng: _unbatched(_tconv_inputs(cfg, rng, _tconv3d_geometry), cfg), _tconv3d_run, "y", "dy",
            {"x": "dx", "weight": "dweight", "bias": "dbias"}, reduces=True, large_configs=TCONV3D_LARGE,
            **CONV_MATH),
)
