"""Shapes and index geometry of convolution and pooling, checked once per call.

Every backend receives one of these frozen objects instead of loose size arguments, so the output
sizes (PyTorch's formulas) are computed in exactly one place.

Convolution names follow CUTLASS: input x (N, C, H, W), filter (K, C/groups, R, S), output
(N, K, P, Q). A transposed convolution is described by the geometry of the convolution whose
input gradient it is: its input plays the role of dy (N, K, P, Q) and its output that of
dx (N, C, H, W).

Padding is `padding` rows/columns on the top/left and `padding + padding_extra` on the
bottom/right: padding="same" with an even dilated kernel extent pads one more on the bottom/right
(PyTorch's rule). The kernels take the top/left padding and the output size P x Q, so they need
no copy of the input for the extra row or column.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass


def pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= minimum, as a tuple."""
    return _sizes(value, name, minimum, 2, ("a pair (h, w)", "a pair of ints"))


def triple(value, name: str, minimum: int = 1) -> tuple[int, int, int]:
    """An int or a (d, h, w) triple of ints, each >= minimum, as a tuple (PyTorch's _triple)."""
    return _sizes(value, name, minimum, 3, ("a triple (d, h, w)", "a triple of ints"))


def _sizes(value, name: str, minimum: int, count: int, what: tuple[str, str]) -> tuple:
    """An int, repeated, or a tuple or list of `count` ints, each >= minimum; `what` names the tuple
    and its ints in the errors."""
    if isinstance(value, (tuple, list)):
        if len(value) != count:
            raise ValueError(f"{name} must be an int or {what[0]}, got {value!r}")
        items = tuple(value)
    else:
        items = (value,) * count
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) and not hasattr(item, "__index__"):
            raise TypeError(f"{name} must be an int or {what[1]}, got {value!r}")
        item = int(item.__index__()) if not isinstance(item, int) else item
        if item < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class ConvGeometry:
    N: int
    C: int          # input channels (all groups)
    H: int
    W: int
    K: int          # output channels (all groups)
    R: int          # filter height
    S: int          # filter width
    P: int          # output height
    Q: int          # output width
    stride: tuple[int, int]
    padding: tuple[int, int]        # top, left
    dilation: tuple[int, int]
    groups: int
    padding_extra: tuple[int, int] = (0, 0)   # bottom/right padding beyond top/left (0 or 1)

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        """The hash of the fields, as the dataclass's own, made once: the launchers' memos (plans,
        kernel arguments) hash a layer's geometry at each of its passes."""
        return hash(dataclasses.astuple(self))

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding."""
        (ph, pw), (eh, ew) = self.padding, self.padding_extra
        return ph, ph + eh, pw, pw + ew

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def w_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (C == groups), the case a dedicated kernel serves."""
        return self.groups == self.C and self.groups > 1

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass (dgrad and wgrad cost the same)."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dil: int, pad_extra: int = 0) -> int:
    return (size + 2 * pad + pad_extra - dil * (kernel - 1) - 1) // stride + 1


PADDING_STRINGS = ("same", "valid")


def conv_padding(padding, stride, dilation, kernel) -> tuple[tuple[int, int], tuple[int, int]]:
    """(top/left padding, extra bottom/right padding) of conv2d's `padding`: an int, an (h, w)
    pair, "valid" (none) or "same" (stride 1 only: output as large as the input, the odd pixel of
    an even dilated kernel extent on the bottom/right, as PyTorch pads)."""
    if not isinstance(padding, str):
        return pair(padding, "padding", minimum=0), (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    if tuple(stride) != (1, 1):
        raise ValueError(f"padding='same' is not supported for strided convolutions (stride {tuple(stride)}); "
                         f"use stride=1 or numeric padding")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return (totals[0] // 2, totals[1] // 2), (totals[0] % 2, totals[1] % 2)


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> ConvGeometry:
    """Geometry of F.conv2d(x, weight, ...) on a batch x (N, C, H, W); ValueError on any
    inconsistent size. Remembered per arguments where they are ints, strings and tuples of ints
    (a layer's every call: the same object for the same arguments; a refusal is never kept)."""
    options = (stride, padding, dilation, groups)
    if all(map(_plain, options)):   # equal plain values ask the same question (not True and 1)
        return _conv_geometry_kept(tuple(x_shape), tuple(w_shape), *options)
    return _conv_geometry(x_shape, w_shape, *options)


def _plain(value) -> bool:
    kind = type(value)
    return kind is int or kind is str or kind is tuple and all(type(item) is int for item in value)


@functools.lru_cache(maxsize=1024)
def _conv_geometry_kept(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    return _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups)


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"weight must be 4-D (out_channels, in_channels/groups, kH, kW), got shape {tuple(w_shape)}")
    N, C, H, W = (int(d) for d in x_shape)
    K, Cg, R, S = (int(d) for d in w_shape)
    sh, sw = pair(stride, "stride")
    dh, dw = pair(dilation, "dilation")
    (ph, pw), (eh, ew) = conv_padding(padding, (sh, sw), (dh, dw), (R, S))
    groups = _groups(groups)
    if min(N, C, H, W) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x_shape)}")
    if min(K, Cg, R, S) <= 0:
        raise ValueError(f"weight has an empty dimension: shape {tuple(w_shape)}")
    if C % groups or K % groups:
        raise ValueError(f"in_channels ({C}) and out_channels ({K}) must both be divisible by groups ({groups})")
    if Cg * groups != C:
        raise ValueError(
            f"weight shape {tuple(w_shape)} expects {Cg * groups} input channels (in_channels/groups={Cg}, "
            f"groups={groups}) but x has {C} (x shape {tuple(x_shape)})")
    P = conv_output_size(H, R, sh, ph, dh, eh)
    Q = conv_output_size(W, S, sw, pw, dw, ew)
    if P <= 0 or Q <= 0:
        raise ValueError(
            f"output would be empty ({P}x{Q}): input {H}x{W} with padding {(ph, pw)} is smaller than the "
            f"dilated kernel {dh * (R - 1) + 1}x{dw * (S - 1) + 1}")
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, (sh, sw), (ph, pw), (dh, dw), groups, (eh, ew))


def conv_transpose_geometry(x_shape, w_shape, stride=1, padding=0, output_padding=0, dilation=1,
                            groups=1) -> ConvGeometry:
    """Geometry of F.conv_transpose2d(x, weight, ...), x (N, Cin, Hin, Win), weight
    (Cin, Cout/groups, kH, kW), as the convolution it is the input gradient of: that convolution
    maps (N, Cout, Hout, Wout) to (N, Cin, Hin, Win) with filter (K=Cin, C/groups=Cout/groups, R, S)."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"weight must be 4-D (in_channels, out_channels/groups, kH, kW), got shape {tuple(w_shape)}")
    N, Cin, Hin, Win = (int(d) for d in x_shape)
    _, Coutg, R, S = (int(d) for d in w_shape)
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding", minimum=0)
    oph, opw = pair(output_padding, "output_padding", minimum=0)
    dh, dw = pair(dilation, "dilation")
    groups = _groups(groups)
    check_transposed_sizes(x_shape, w_shape, groups)
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(f"output_padding {(oph, opw)} must be smaller than stride {(sh, sw)} or dilation {(dh, dw)}")
    Hout = (Hin - 1) * sh - 2 * ph + dh * (R - 1) + oph + 1
    Wout = (Win - 1) * sw - 2 * pw + dw * (S - 1) + opw + 1
    if Hout <= 0 or Wout <= 0:
        raise ValueError(f"output would be empty ({Hout}x{Wout}): padding {(ph, pw)} is too large for input "
                         f"{Hin}x{Win} and kernel {R}x{S}")
    Cout = Coutg * groups
    return ConvGeometry(N, Cout, Hout, Wout, Cin, R, S, Hin, Win, (sh, sw), (ph, pw), (dh, dw), groups)


def check_transposed_sizes(x_shape, w_shape, groups: int) -> None:
    """ValueError where a transposed convolution's x (N, Cin, ...) and weight (Cin, Cout/groups, ...) do
    not fit: an empty dimension, another input channel count, Cin not divisible by groups."""
    if min(x_shape) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x_shape)}")
    if min(w_shape) <= 0:
        raise ValueError(f"weight has an empty dimension: shape {tuple(w_shape)}")
    if w_shape[0] != x_shape[1]:
        raise ValueError(f"weight shape {tuple(w_shape)} expects {w_shape[0]} input channels but x has {x_shape[1]} "
                         f"(x shape {tuple(x_shape)})")
    if x_shape[1] % groups:
        raise ValueError(f"in_channels ({x_shape[1]}) must be divisible by groups ({groups})")


def _groups(groups) -> int:
    # any integer type (np.int64 too), as pair() takes for the other size arguments
    if isinstance(groups, bool) or not hasattr(groups, "__index__"):
        raise TypeError(f"groups must be a positive int, got {groups!r}")
    if groups.__index__() < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return groups.__index__()


@dataclass(frozen=True)
class PoolGeometry:
    N: int
    C: int
    H: int
    W: int
    P: int          # output height
    Q: int          # output width
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool = True   # avg pool only
    divisor_override: int | None = None   # avg pool only: every window's divisor when given

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.P, self.Q)

    # the spatial sizes, as Pool3dGeometry's: code written for either rank loops over these
    @property
    def in_size(self):
        return (self.H, self.W)

    @property
    def out_size(self):
        return (self.P, self.Q)


@dataclass(frozen=True)
class Pool3dGeometry:
    """PoolGeometry of volumes: x (N, C, D, H, W) -> y (N, C, T, P, Q); kernel, stride, padding and
    dilation are (depth, height, width) triples."""
    N: int
    C: int
    D: int
    H: int
    W: int
    T: int          # output depth
    P: int
    Q: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int]
    ceil_mode: bool
    count_include_pad: bool = True
    divisor_override: int | None = None

    @property
    def x_shape(self):
        return (self.N, self.C, self.D, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, self.T, self.P, self.Q)

    @property
    def in_size(self):
        return (self.D, self.H, self.W)

    @property
    def out_size(self):
        return (self.T, self.P, self.Q)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dil: int, ceil_mode: bool) -> int:
    """PyTorch's rule: with ceil_mode the last window is kept only if it starts inside the input or
    the left padding."""
    span = size + 2 * pad - dil * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_stride(stride, kernel_size, sizes=pair) -> tuple:
    """A pool's stride as a pair (a triple with sizes=triple): None, or an empty tuple or list as
    PyTorch also takes it, means kernel_size."""
    if stride is None or isinstance(stride, (tuple, list)) and len(stride) == 0:
        return sizes(kernel_size, "kernel_size")
    return sizes(stride, "stride")


def pool_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  count_include_pad=True, divisor_override=None) -> PoolGeometry:
    """Geometry of pooling a batch x (N, C, H, W); ValueError/TypeError on any bad argument."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(d) for d in x_shape)
    if min(N, C, H, W) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x_shape)}")
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pool_stride(stride, kernel_size)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation")
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {(ph, pw)} must be at most half of kernel_size {(kh, kw)}")
    P = pool_output_size(H, kh, sh, ph, dh, bool(ceil_mode))
    Q = pool_output_size(W, kw, sw, pw, dw, bool(ceil_mode))
    if P <= 0 or Q <= 0:
        raise ValueError(f"output would be empty ({P}x{Q}): input {H}x{W} with padding {(ph, pw)} is smaller "
                         f"than the dilated window {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}")
    return PoolGeometry(N, C, H, W, P, Q, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bool(ceil_mode),
                        bool(count_include_pad), check_divisor_override(divisor_override))


def pool3d_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    count_include_pad=True, divisor_override=None) -> Pool3dGeometry:
    """Geometry of pooling a batch of volumes x (N, C, D, H, W); pool_geometry's rules a third axis."""
    if len(x_shape) != 5:
        raise ValueError(f"x must be 5-D (N, C, D, H, W), got shape {tuple(x_shape)}")
    N, C, *in_size = (int(d) for d in x_shape)
    if min(N, C, *in_size) <= 0:
        raise ValueError(f"x has an empty dimension: shape {tuple(x_shape)}")
    kernel = triple(kernel_size, "kernel_size")
    stride = pool_stride(stride, kernel_size, triple)
    padding = triple(padding, "padding", minimum=0)
    dilation = triple(dilation, "dilation")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    out_size = tuple(pool_output_size(*axis, bool(ceil_mode)) for axis in zip(in_size, kernel, stride, padding,
                                                                                dilation))
    if min(out_size) <= 0:
        window = "x".join(str(d * (k - 1) + 1) for k, d in zip(kernel, dilation))
        raise ValueError(f"output would be empty ({'x'.join(map(str, out_size))}): input "
                         f"{'x'.join(map(str, in_size))} with padding {padding} is smaller than the dilated window "
                         f"{window}")
    return Pool3dGeometry(N, C, *in_size, *out_size, kernel, stride, padding, dilation, bool(ceil_mode),
                          bool(count_include_pad), check_divisor_override(divisor_override))


def check_divisor_override(value):
    # PyTorch takes any non-zero int (a negative one too) and refuses floats and bools
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"divisor_override must be None or a non-zero int, got {value!r}")
    if value.__index__() == 0:
        raise ValueError("divisor_override must be None or a non-zero int, got 0")
    return value.__index__()


# --- unbatched images -----------------------------------------------------------------------------

def as_batch(a, batched_rank: int = 4):
    """(a as (N, C, H, W), whether it was unbatched): an unbatched image (C, H, W) becomes a batch
    of one, as a view (no copy, C-contiguous when `a` is). batched_rank=5: volumes (N, C, D, H, W)."""
    return (a[None], True) if a.ndim == batched_rank - 1 else (a, False)


_SPATIAL_NAMES = {4: "H, W", 5: "D, H, W"}


def batch_shape(x_shape, batched_rank: int = 4):
    """A shape given as (C, H, W) or (N, C, H, W) ints: (the 4-D shape, whether it was unbatched).
    batched_rank=5: (C, D, H, W) or (N, C, D, H, W) and the 5-D shape."""
    unbatched_rank, spatial = batched_rank - 1, _SPATIAL_NAMES[batched_rank]
    try:
        dims = tuple(x_shape)
    except TypeError:
        raise TypeError(f"x_shape must be a tuple of {unbatched_rank} or {batched_rank} ints, "
                        f"got {x_shape!r}") from None
    if len(dims) not in (unbatched_rank, batched_rank) or not all(hasattr(d, "__index__") and not isinstance(d, bool)
                                                                  for d in dims):
        raise ValueError(f"x_shape must be a tuple of {unbatched_rank} or {batched_rank} ints ((C, {spatial}) or "
                         f"(N, C, {spatial})), got {x_shape!r}")
    dims = tuple(d.__index__() for d in dims)
    return ((1,) + dims, True) if len(dims) == unbatched_rank else (dims, False)
