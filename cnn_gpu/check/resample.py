"""The checks of the ops that move values: upsampling, padding, sliding blocks (fold, unfold) and the
shuffles."""
from __future__ import annotations

from .spec import OpCheck, _ints


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


def _fold_config(rng):
    """An image (N, C, H, W) and sliding blocks over it with at least one block (unfold's x, fold's output)."""
    from ..functional.folding import _unfold_geometry
    while True:
        cfg = dict(N=int(rng.integers(1, 3)), C=int(rng.integers(1, 4)), HW=_ints(rng, 1, 8), kernel=_ints(rng, 1, 3),
                   dilation=_ints(rng, 1, 2), padding=_ints(rng, 0, 2), stride=_ints(rng, 1, 3),
                   unbatched=bool(rng.random() < 0.3))
        try:
            g = _unfold_geometry((cfg["N"], cfg["C"], *cfg["HW"]), *_fold_sizes(cfg))
            return dict(cfg, cols=(cfg["N"], g.C * g.taps, g.L))
        except ValueError:   # no block fits
            continue


def _fold_sizes(cfg):
    return cfg["kernel"], cfg["dilation"], cfg["padding"], cfg["stride"]


FOLD_EDGES = (dict(N=2, C=3, HW=(6, 6), kernel=(3, 3), dilation=(1, 1), padding=(1, 1), stride=(1, 1),
                   unbatched=False, cols=(2, 27, 36)),               # im2col of a 3x3 "same" convolution
              dict(N=1, C=2, HW=(7, 5), kernel=(2, 3), dilation=(2, 1), padding=(0, 2), stride=(3, 2),
                   unbatched=True, cols=(1, 12, 8)))                # pixels no block reads
FOLD_LARGE = (dict(N=8, C=64, HW=(28, 28), kernel=(3, 3), dilation=(1, 1), padding=(1, 1), stride=(1, 1),
                   unbatched=False, cols=(8, 576, 784)),)


def _fold_image_and_columns(cfg, rng):
    image = rng.standard_normal((cfg["N"], cfg["C"], *cfg["HW"]))
    columns = rng.standard_normal(cfg["cols"])
    return (image[0], columns[0]) if cfg["unbatched"] else (image, columns)


def _unfold_inputs(cfg, rng):
    x, dy = _fold_image_and_columns(cfg, rng)
    return dict(x=x, dy=dy)


def _unfold_run(a, cfg, be):
    from .. import functional as F
    return dict(y=F.unfold(a["x"], *_fold_sizes(cfg), backend=be),
                dx=F.unfold_backward(a["dy"], a["x"].shape, *_fold_sizes(cfg), backend=be))


def _fold_inputs(cfg, rng):
    dy, cols = _fold_image_and_columns(cfg, rng)
    return dict(cols=cols, dy=dy)


def _fold_run(a, cfg, be):
    from .. import functional as F
    return dict(y=F.fold(a["cols"], cfg["HW"], *_fold_sizes(cfg), backend=be),
                dcols=F.fold_backward(a["dy"], *_fold_sizes(cfg), backend=be))


def _shuffle_config(rng):
    """x (N, C, H, W) that pixel_shuffle, pixel_unshuffle (factor r) and channel_shuffle (groups) all
    take: C a multiple of r^2 and of groups, H and W of r."""
    factor, groups = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    channels = factor * factor * groups * int(rng.integers(1, 3))
    height, width = (factor * size for size in _ints(rng, 1, 3))
    return dict(shape=(int(rng.integers(1, 4)), channels, height, width),
                factor=factor, groups=groups)


SHUFFLE_LARGE = (dict(shape=(8, 256, 32, 32), factor=2, groups=4),)


def _shuffled_shape(name, cfg):
    *lead, c, h, w = cfg["shape"]
    r = cfg["factor"]
    return {"pixel_shuffle": (*lead, c // (r * r), h * r, w * r), "pixel_unshuffle": (*lead, c * r * r, h // r, w // r),
            "channel_shuffle": cfg["shape"]}[name]


def _shuffle_inputs(name):
    def inputs(cfg, rng):
        return dict(x=rng.standard_normal(cfg["shape"]), dy=rng.standard_normal(_shuffled_shape(name, cfg)))
    return inputs


def _shuffle_run(name):
    def run(a, cfg, be):
        from .. import functional as F
        argument = cfg["groups"] if name == "channel_shuffle" else cfg["factor"]
        return dict(y=getattr(F, name)(a["x"], argument, backend=be),
                    dx=getattr(F, f"{name}_backward")(a["dy"], argument, backend=be))
    return run


CHECKS = (
    OpCheck("pad", _pad_config, PAD_EDGES, _pad_inputs, _pad_run, "y", "dy", {"x": "dx"}, large_configs=PAD_LARGE),
    OpCheck("interpolate", _upsample_config, UPSAMPLE_EDGES, _upsample_inputs, _upsample_run, "y", "dy", {"x": "dx"},
            large_configs=UPSAMPLE_LARGE),
    OpCheck("unfold", _fold_config, FOLD_EDGES, _unfold_inputs, _unfold_run, "y", "dy", {"x": "dx"},
            large_configs=FOLD_LARGE),
    OpCheck("fold", _fold_config, FOLD_EDGES, _fold_inputs, _fold_run, "y", "dy", {"cols": "dcols"},
            large_configs=FOLD_LARGE),
    *(OpCheck(name, _shuffle_config, (), _shuffle_inputs(name), _shuffle_run(name), "y", "dy", {"x": "dx"},
              large_configs=SHUFFLE_LARGE)
      for name in ("pixel_shuffle", "pixel_unshuffle", "channel_shuffle")),
)
