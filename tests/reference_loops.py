"""Direct-loop reference implementations, written straight from the formulas in shared/seeds/.

Deliberately naive: one Python loop per index of each formula, no strided views, no BLAS. Only for
small float64 shapes in tests. Index conventions (PyTorch's): conv output (p, q) tap (r, s) reads
input row p*stride - pad + r*dilation.
"""
import math

import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# --- convolution: a_ij = sum_st W_st x_(i+s)(j+t) + b (seed 004), per channel and group --------

def _paddings(padding, kernel, dilation):
    """((top, left), (bottom, right)) of conv2d's padding; PyTorch's "same" splits dil*(k-1) into
    floor(half) on the top/left and the rest on the bottom/right, "valid" is none."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
    return _pair(padding), _pair(padding)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    Kg = K // groups
    (ph, pw), (bottom, right) = _paddings(padding, (R, S), (dh, dw))
    P = (H + ph + bottom - dh * (R - 1) - 1) // sh + 1
    Q = (W + pw + right - dw * (S - 1) - 1) // sw + 1
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(P):
                for q in range(Q):
                    total = 0.0 if b is None else b[k]
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h, v = p * sh - ph + r * dh, q * sw - pw + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    total += w[k, c, r, s] * x[n, g * Cg + c, h, v]
                    y[n, k, p, q] = total
    return y


def conv2d_input_grad(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dx_ij = sum_k sum_st dE/da_(i-s)(j-t) W_st (seed 004; the flipped filter of seed 001):
    with stride, only the taps for which (i + pad - r*dil) is a multiple of the stride reach i."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, C, H, W = x_shape
    K, Cg, R, S = w.shape
    (ph, pw), _ = _paddings(padding, (R, S), (dh, dw))
    _, _, P, Q = dy.shape
    Kg = K // groups
    dx = np.zeros(x_shape)
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for h in range(H):
                for v in range(W):
                    total = 0.0
                    for k in range(g * Kg, (g + 1) * Kg):
                        for r in range(R):
                            for s in range(S):
                                ph_num, pw_num = h + ph - r * dh, v + pw - s * dw
                                if ph_num % sh or pw_num % sw:
                                    continue
                                p, q = ph_num // sh, pw_num // sw
                                if 0 <= p < P and 0 <= q < Q:
                                    total += dy[n, k, p, q] * w[k, c - g * Cg, r, s]
                    dx[n, c, h, v] = total
    return dx


def conv2d_weight_grad(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dW_st = sum_ij dE/da_ij x_(i+s)(j+t) (seed 004)."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    N, C, H, W = x.shape
    K, Cg, R, S = w_shape
    (ph, pw), _ = _paddings(padding, (R, S), (dh, dw))
    _, _, P, Q = dy.shape
    Kg = K // groups
    dw_ = np.zeros(w_shape)
    for k in range(K):
        g = k // Kg
        for c in range(Cg):
            for r in range(R):
                for s in range(S):
                    total = 0.0
                    for n in range(N):
                        for p in range(P):
                            for q in range(Q):
                                h, v = p * sh - ph + r * dh, q * sw - pw + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    total += dy[n, k, p, q] * x[n, g * Cg + c, h, v]
                    dw_[k, c, r, s] = total
    return dw_


def bias_grad(dy):
    """dE/db = sum_ij dE/da_ij (seed 004)."""
    N, K, P, Q = dy.shape
    db = np.zeros(K)
    for k in range(K):
        for n in range(N):
            for p in range(P):
                for q in range(Q):
                    db[k] += dy[n, k, p, q]
    return db



# --- 3-D convolution: the same formulas with a depth index (output (o, p, q) tap (t, r, s) reads input
# voxel (o*stride - pad + t*dil, ...)) --------------------------------------------------------------

def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _paddings3d(padding, kernel, dilation):
    """(front/top/left, back/bottom/right) paddings of conv3d's padding, "same" split as conv2d's."""
    if padding == "valid":
        return (0, 0, 0), (0, 0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
    return _triple(padding), _triple(padding)


def _taps3d(w_shape, out_shape, stride, padding, dilation):
    """Every (output voxel, tap, input voxel it reads) of a conv3d, the input voxel None outside."""
    (sd, sh, sw), dil = _triple(stride), _triple(dilation)
    _, _, T, R, S = w_shape
    before, _ = _paddings3d(padding, (T, R, S), dil)
    O, P, Q = out_shape
    for o in range(O):
        for p in range(P):
            for q in range(Q):
                for t in range(T):
                    for r in range(R):
                        for s in range(S):
                            yield (o, p, q), (t, r, s), (o * sd - before[0] + t * dil[0],
                                                         p * sh - before[1] + r * dil[1],
                                                         q * sw - before[2] + s * dil[2])


def conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """a_opq = sum_trs W_trs x_(o*sd - pd + t*dd)(...)(...) + b, per channel and group."""
    dil = _triple(dilation)
    N, C, D, H, W = x.shape
    K, Cg, T, R, S = w.shape
    before, after = _paddings3d(padding, (T, R, S), dil)
    out = tuple((size + b0 + a0 - d * (k - 1) - 1) // st + 1 for size, b0, a0, d, k, st
                in zip((D, H, W), before, after, dil, (T, R, S), _triple(stride)))
    Kg = K // groups
    y = np.zeros((N, K) + out)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            if b is not None:
                y[n, k] += b[k]
            for voxel, tap, (d, h, v) in _taps3d(w.shape, out, stride, padding, dilation):
                if 0 <= d < D and 0 <= h < H and 0 <= v < W:
                    for c in range(Cg):
                        y[(n, k) + voxel] += w[(k, c) + tap] * x[n, g * Cg + c, d, h, v]
    return y


def conv3d_input_grad(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dx: every output's dE/da times each tap's weight, added into the input voxel that tap read."""
    N, C, D, H, W = x_shape
    K, Cg, _, _, _ = w.shape
    Kg = K // groups
    dx = np.zeros(x_shape)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for voxel, tap, (d, h, v) in _taps3d(w.shape, dy.shape[2:], stride, padding, dilation):
                if 0 <= d < D and 0 <= h < H and 0 <= v < W:
                    for c in range(Cg):
                        dx[n, g * Cg + c, d, h, v] += dy[(n, k) + voxel] * w[(k, c) + tap]
    return dx


def conv3d_weight_grad(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dW_trs = sum over outputs of dE/da times the input voxel tap (t, r, s) read."""
    N, C, D, H, W = x.shape
    K, Cg, _, _, _ = w_shape
    Kg = K // groups
    dw_ = np.zeros(w_shape)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for voxel, tap, (d, h, v) in _taps3d(w_shape, dy.shape[2:], stride, padding, dilation):
                if 0 <= d < D and 0 <= h < H and 0 <= v < W:
                    for c in range(Cg):
                        dw_[(k, c) + tap] += dy[(n, k) + voxel] * x[n, g * Cg + c, d, h, v]
    return dw_

# --- transposed ("expanding") convolution: z(i, j) = sum_m sum_kl w(m, i - k b, j - l b) y(m, k, l)

def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Seed 001's expanding convolution: every input pixel (k, l) spreads w times its value to the
    output rows k*stride - pad + r*dil."""
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    N, Cin, Hin, Win = x.shape
    _, Coutg, R, S = w.shape
    Cin_g = Cin // groups
    Hout = (Hin - 1) * sh - 2 * ph + dh * (R - 1) + oh + 1
    Wout = (Win - 1) * sw - 2 * pw + dw * (S - 1) + ow + 1
    z = np.zeros((N, Coutg * groups, Hout, Wout))
    for n in range(N):
        for m in range(Cin):
            g = m // Cin_g
            for k in range(Hin):
                for l in range(Win):
                    for co in range(Coutg):
                        for r in range(R):
                            for s in range(S):
                                i, j = k * sh - ph + r * dh, l * sw - pw + s * dw
                                if 0 <= i < Hout and 0 <= j < Wout:
                                    z[n, g * Coutg + co, i, j] += w[m, co, r, s] * x[n, m, k, l]
    if b is not None:
        for co in range(z.shape[1]):
            z[:, co] += b[co]
    return z


def conv_transpose2d_input_grad(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dx(m, k, l) = sum over the outputs (i, j) pixel (k, l) reached of dE/dz(i, j) w(m, r, s): the
    expanding convolution's adjoint, which is the ordinary convolution of dy with the same weights
    (rows past the input, possible when output_padding >= stride, are cut off)."""
    dx = conv2d(dy, w, None, stride, padding, dilation, groups)
    return dx[:, :, :x_shape[2], :x_shape[3]]


def conv_transpose2d_weight_grad(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """dE/dw(m, co, r, s) = sum over pixels (k, l) of x(m, k, l) dE/dz(k*stride - pad + r*dil, ...):
    the convolution weight gradient with x in the role of dy and dy in the role of the input."""
    return conv2d_weight_grad(x, dy, w_shape, stride, padding, dilation, groups)


# --- pooling (seed 001: max routes the gradient to the argmax, mean shares it) ------------------

def _pool_out(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Scan each window row by row; a strictly larger value or any NaN takes over (PyTorch's rule). All-(-inf)
    windows report their first in-bounds tap; windows with no in-bounds tap report -1."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(kernel_size if stride is None else stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    P, Q = _pool_out(H, kh, sh, ph, dh, ceil_mode), _pool_out(W, kw, sw, pw, dw, ceil_mode)
    y = np.full((N, C, P, Q), -np.inf)
    idx = np.full((N, C, P, Q), -1, dtype=np.int32)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    best, where = -math.inf, -1
                    for r in range(kh):
                        for s in range(kw):
                            h, v = p * sh - ph + r * dh, q * sw - pw + s * dw
                            if not (0 <= h < H and 0 <= v < W):
                                continue
                            value = x[n, c, h, v]
                            if where == -1 or value > best or math.isnan(value):
                                best, where = value, h * W + v
                    y[n, c, p, q], idx[n, c, p, q] = best, where
    return y, idx


def max_pool2d_backward(dy, idx, x_shape):
    N, C, H, W = x_shape
    dx = np.zeros(x_shape)
    _, _, P, Q = dy.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    if idx[n, c, p, q] >= 0:
                        h, v = divmod(int(idx[n, c, p, q]), W)
                        dx[n, c, h, v] += dy[n, c, p, q]
    return dx


def _avg_windows(x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    """(p, q, [(h, v) in the window], divisor) per output, with PyTorch's divisor: divisor_override
    when given, else the window clipped to the padded input when padding counts, to the input
    otherwise."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(kernel_size if stride is None else stride)
    (ph, pw) = _pair(padding)
    _, _, H, W = x_shape
    P, Q = _pool_out(H, kh, sh, ph, 1, ceil_mode), _pool_out(W, kw, sw, pw, 1, ceil_mode)
    for p in range(P):
        for q in range(Q):
            h0, v0 = p * sh - ph, q * sw - pw
            h1, v1 = min(h0 + kh, H + ph), min(v0 + kw, W + pw)
            taps = [(h, v) for h in range(h0, h1) for v in range(v0, v1) if 0 <= h < H and 0 <= v < W]
            divisor = (h1 - h0) * (v1 - v0) if count_include_pad else len(taps)
            yield p, q, taps, divisor if divisor_override is None else divisor_override


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    windows = list(_avg_windows(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override))
    P, Q = windows[-1][0] + 1, windows[-1][1] + 1
    N, C = x.shape[:2]
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p, q, taps, divisor in windows:
                y[n, c, p, q] = sum(x[n, c, h, v] for h, v in taps) / divisor
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    dx = np.zeros(x_shape)
    N, C = x_shape[:2]
    for n in range(N):
        for c in range(C):
            for p, q, taps, divisor in _avg_windows(x_shape, kernel_size, stride, padding, ceil_mode,
                                                    count_include_pad, divisor_override):
                for h, v in taps:
                    dx[n, c, h, v] += dy[n, c, p, q] / divisor
    return dx


# --- element-wise activations (seed 000: s'(x) = s(x)(1 - s(x))) ----------------------------------

def _elementwise(f, *arrays):
    out = np.empty(arrays[0].shape)
    for i in np.ndindex(out.shape):
        out[i] = f(*(a[i] for a in arrays))
    return out


def relu(x):
    return _elementwise(lambda v: v if v > 0 else 0.0, x)


def relu_backward(dy, x):
    return _elementwise(lambda d, v: d if v > 0 else 0.0, dy, x)


def leaky_relu(x, slope=0.01):
    return _elementwise(lambda v: v if v > 0 else slope * v, x)


def leaky_relu_backward(dy, x, slope=0.01):
    return _elementwise(lambda d, v: d if v > 0 else slope * d, dy, x)


def _s(v):
    return 1 / (1 + math.exp(-v))


def sigmoid(x):
    return _elementwise(_s, x)


def sigmoid_backward(dy, x):
    return _elementwise(lambda d, v: d * _s(v) * (1 - _s(v)), dy, x)


def tanh(x):
    return _elementwise(math.tanh, x)


def tanh_backward(dy, x):
    return _elementwise(lambda d, v: d * (1 - math.tanh(v) ** 2), dy, x)


def silu(x):
    return _elementwise(lambda v: v * _s(v), x)


def silu_backward(dy, x):
    return _elementwise(lambda d, v: d * (_s(v) + v * _s(v) * (1 - _s(v))), dy, x)


# GELU in PyTorch's formulas: x Phi(x) with Phi(x) = (1 + erf(x / sqrt(2))) / 2, or its tanh form
# 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3)

def _phi(v):
    return math.exp(-v * v / 2) / math.sqrt(2 * math.pi)


def _gelu_u(v):
    return math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return _elementwise(lambda v: 0.5 * v * (1 + math.tanh(_gelu_u(v))), x)
    return _elementwise(lambda v: v * (1 + math.erf(v / math.sqrt(2))) / 2, x)


def gelu_backward(dy, x, approximate="none"):
    if approximate == "tanh":
        def slope(v):
            t = math.tanh(_gelu_u(v))
            return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * v * v)
        return _elementwise(lambda d, v: d * slope(v), dy, x)
    return _elementwise(lambda d, v: d * ((1 + math.erf(v / math.sqrt(2))) / 2 + v * _phi(v)), dy, x)


# hardtanh, relu6, hardsigmoid, hardswish, elu and mish in PyTorch's formulas, branch by branch (its
# gradients at the kinks: 0 at hardtanh's bounds and at hardsigmoid's +-3, hardswish's 0 at -3 and 1 at 3,
# elu's alpha at 0)

def hardtanh(x, min_val=-1.0, max_val=1.0):
    return _elementwise(lambda v: min_val if v < min_val else max_val if v > max_val else v, x)


def hardtanh_backward(dy, x, min_val=-1.0, max_val=1.0):
    return _elementwise(lambda d, v: 0.0 if v <= min_val or v >= max_val else d, dy, x)


def relu6(x):
    return hardtanh(x, 0.0, 6.0)


def relu6_backward(dy, x):
    return hardtanh_backward(dy, x, 0.0, 6.0)


def hardsigmoid(x):
    return _elementwise(lambda v: 0.0 if v <= -3 else 1.0 if v >= 3 else v / 6 + 0.5, x)


def hardsigmoid_backward(dy, x):
    return _elementwise(lambda d, v: d / 6 if -3 < v < 3 else 0.0, dy, x)


def hardswish(x):
    return _elementwise(lambda v: 0.0 if v <= -3 else v if v >= 3 else v * (v + 3) / 6, x)


def hardswish_backward(dy, x):
    return _elementwise(lambda d, v: 0.0 if v <= -3 else d if v >= 3 else d * (2 * v + 3) / 6, dy, x)


def elu(x, alpha=1.0):
    return _elementwise(lambda v: v if v > 0 else alpha * math.expm1(v), x)


def elu_backward(dy, x, alpha=1.0):
    return _elementwise(lambda d, v: d if v > 0 else d * alpha * math.exp(v), dy, x)


def _softplus(v):
    return math.log1p(math.exp(v)) if v < 30 else v + math.log1p(math.exp(-v))


def mish(x):
    return _elementwise(lambda v: v * math.tanh(_softplus(v)), x)


def mish_backward(dy, x):
    def slope(v):
        t = math.tanh(_softplus(v))
        return t + v * _s(v) * (1 - t * t)
    return _elementwise(lambda d, v: d * slope(v), dy, x)


# --- linear: a = b + W h (seed 003) ---------------------------------------------------------------

def linear(x, w, b=None):
    N, I = x.shape
    O = w.shape[0]
    y = np.zeros((N, O))
    for n in range(N):
        for o in range(O):
            y[n, o] = (0.0 if b is None else b[o]) + sum(w[o, i] * x[n, i] for i in range(I))
    return y


def linear_backward(dy, x, w):
    N, I = x.shape
    O = w.shape[0]
    dx = np.array([[sum(dy[n, o] * w[o, i] for o in range(O)) for i in range(I)] for n in range(N)])
    dw = np.array([[sum(dy[n, o] * x[n, i] for n in range(N)) for i in range(I)] for o in range(O)])
    db = np.array([sum(dy[n, o] for n in range(N)) for o in range(O)])
    return dx, dw, db


# --- losses ----------------------------------------------------------------------------------------

def cross_entropy(logits, labels):
    """Mean over rows of -log softmax(a)_y; gradient -(e(y) - softmax(a)) / N (seed 003)."""
    N, K = logits.shape
    loss = 0.0
    grad = np.zeros((N, K))
    for n in range(N):
        top = max(logits[n])
        total = sum(math.exp(logits[n, k] - top) for k in range(K))
        loss -= (logits[n, labels[n]] - top) - math.log(total)
        for k in range(K):
            softmax = math.exp(logits[n, k] - top) / total
            grad[n, k] = -((1.0 if k == labels[n] else 0.0) - softmax) / N
    return loss / N, grad


def cross_entropy_options(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """PyTorch's F.cross_entropy term by term, logits (N, C, d...) -> (loss, gradient of the loss or,
    for "none", of the sum of the per-position losses).

    Class indices y: (1 - eps) * NLL + eps/C * SMOOTH, NLL_i = -w[y_i] log_softmax_i[y_i] and
    SMOOTH_i = -sum_c w[c] log_softmax_i[c], both 0 where y_i == ignore_index; the mean divides both
    sums by the summed w[y_i] of the counted positions. Class probabilities t: per position
    -sum_c w[c] ((1 - eps) t_c + eps/C) log_softmax_c, the mean over positions.
    d(-log_softmax_i[c])/dx_i[j] = softmax_i[j] - [j == c]."""
    N, C = logits.shape[:2]
    w = np.ones(C) if weight is None else weight
    eps = label_smoothing
    probabilities = target.shape == logits.shape
    losses = np.zeros(logits.shape[:1] + logits.shape[2:])
    grad = np.zeros(logits.shape)
    divisor = 0.0
    for position in np.ndindex(losses.shape):
        n, rest = position[0], position[1:]
        row = [logits[(n, c) + rest] for c in range(C)]
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        log_softmax = [v - top - math.log(total) for v in row]
        softmax = [math.exp(v) for v in log_softmax]
        if probabilities:
            coefficients = [w[c] * ((1 - eps) * target[(n, c) + rest] + eps / C) for c in range(C)]
            divisor += 1
        else:
            y = int(target[position])
            if y == ignore_index:
                continue
            coefficients = [(1 - eps) * w[c] * (c == y) + eps / C * w[c] for c in range(C)]
            divisor += w[y]
        losses[position] = -sum(k * lp for k, lp in zip(coefficients, log_softmax))
        for j in range(C):
            grad[(n, j) + rest] = sum(k * (softmax[j] - (j == c)) for c, k in enumerate(coefficients))
    if reduction == "none":
        return losses, grad
    if reduction == "sum":
        return losses.sum(), grad
    if divisor == 0:   # nothing counted: a NaN mean, and no position has a gradient
        return math.nan, grad
    return losses.sum() / divisor, grad / divisor


def mse_loss(pred, target):
    """The seeds' squared loss (y - y_hat)^2 averaged over all elements (PyTorch's mean, without the
    seed's factor 1/2), and its gradient 2 (y_hat - y) / count."""
    count = pred.size
    loss = 0.0
    grad = np.zeros(pred.shape)
    for i in np.ndindex(pred.shape):
        diff = pred[i] - target[i]
        loss += diff * diff
        grad[i] = 2 * diff / count
    return loss / count, grad


def rel_error(actual, expected):
    """Largest absolute difference relative to the largest expected magnitude (NaN-aware: NaNs
    must sit at the same places)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    same_nan = np.isnan(actual) == np.isnan(expected)
    assert same_nan.all(), "NaNs at different places"
    finite = ~np.isnan(expected)
    a, e = actual[finite], expected[finite]
    assert (a[np.isinf(e)] == e[np.isinf(e)]).all(), "infinities differ"
    a, e = a[np.isfinite(e)], e[np.isfinite(e)]
    if e.size == 0:
        return 0.0
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-300))
