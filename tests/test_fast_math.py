"""The fast FP32 forms of the float16 element-wise maps and losses (kernels/map_math.cuh: map_exp,
map_divide and map_log1p, __expf, __fdividef and __logf; elu's map_expm1 and GELU's normal_terms in
elementwise.cu) on the emulator, which gives those intrinsics the worst error the CUDA C++ Programming
Guide allows them (cnn_gpu/emu/cuda_emu.h): over every float16 input, the elements whose float16 result is one
float16 step from the exact result rounded to float16 are counted, and none is further; PyTorch's
special values (+-inf, NaN, -0.0, the large-|x| limits) are the NumPy oracle's. The float32 builds,
which keep the accurate functions, and the gradients of sigmoid and tanh now taken from exp(-|x|),
within a few float32 ulps of the float64 result on a sweep."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import emu
from cnn_gpu import functional as F
from helpers import float16_steps, needs_emu

pytestmark = needs_emu

# Every float16 value: the finite ones in value order, then +-inf and NaN.
_ALL_BITS = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
EVERY_FLOAT16 = np.concatenate([np.sort(_ALL_BITS[np.isfinite(_ALL_BITS)]), np.array([np.inf, -np.inf, np.nan],
                                                                                     np.float16)])

# (op, options): (forward, backward) float16 elements of EVERY_FLOAT16's 63491 (the gradients with a fixed
# random dy) one float16 step from the exact result, measured with the emulator's worst-case intrinsics
# (each bound is the count measured); the NumPy oracle, FP32 with libm, has (0, 0), (3, 1), (1, 3), (2, 3),
# (3, 5), (6, 1), (2, 2) and (0, 1) such elements, in this order: FP32 itself rounds near a tie sometimes.
ROUNDED_THE_OTHER_WAY = {
    ("elu", ()): (5, 2), ("elu", (("alpha", 0.3),)): (8, 3), ("gelu", ()): (15, 11),
    ("gelu", (("approximate", "tanh"),)): (15, 14), ("mish", ()): (15, 26), ("sigmoid", ()): (10, 7),
    ("silu", ()): (11, 12), ("tanh", ()): (0, 2),
    # the NumPy oracle's: (1, 3), (0, 3), (1, 1), (0, 4), (0, 0) and (182, 2); tanhshrink's x - tanh(x) cancels
    # near 0 in FP32 itself (a step off where the result is a few FP32 roundings of x from a tie)
    ("softplus", ()): (34, 9), ("logsigmoid", ()): (41, 6), ("selu", ()): (10, 2), ("celu", (("alpha", 0.4),)): (3, 4),
    ("softsign", ()): (0, 0), ("tanhshrink", ()): (214, 2),
}


def _exact_in_float16(exact):
    """The float64 result rounded to float16, through float32 as the kernels' FP32 math would."""
    with np.errstate(over="ignore"):
        return exact.astype(np.float32).astype(np.float16)


def _check_steps(got, exact, expected_special, bound, what):
    """got within one float16 step of the exact result, at most `bound` elements one step off; at
    +-inf and NaN inputs (the last three) exactly the oracle's values, signs of zero included."""
    reference = _exact_in_float16(exact)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(reference), err_msg=f"{what}: NaN positions")
    finite = ~np.isnan(reference)
    steps = float16_steps(got[finite], reference[finite])
    assert steps.max() <= 1, f"{what}: {steps.max()} float16 steps off at x={EVERY_FLOAT16[finite][steps.argmax()]}"
    assert np.count_nonzero(steps) <= bound, f"{what}: {np.count_nonzero(steps)} elements one step off"
    np.testing.assert_array_equal(got[-3:], expected_special, err_msg=what)
    zeros = expected_special == 0
    np.testing.assert_array_equal(np.signbit(got[-3:][zeros]), np.signbit(expected_special[zeros]), err_msg=what)


@pytest.mark.parametrize("op, options", sorted(ROUNDED_THE_OTHER_WAY), ids=lambda v: str(v))
def test_float16_maps_round_the_exact_result_but_near_a_tie(op, options):
    """Forward and backward over every float16 x (dy fixed random): one float16 step at most from the
    float64 result rounded once, and no more elements a step off than ROUNDED_THE_OTHER_WAY says."""
    options = dict(options)
    x = EVERY_FLOAT16
    dy = np.random.default_rng(40).standard_normal(x.shape).astype(np.float16)
    backward = getattr(F, f"{op}_backward")
    with emu.checking(guard=True):
        got = getattr(F, op)(x, **options, backend="emu"), backward(dy, x, **options, backend="emu")
    oracle = getattr(F, op)(x, **options), backward(dy, x, **options)
    with np.errstate(all="ignore"):
        exact = (getattr(F, op)(x.astype(np.float64), **options),
                 backward(dy.astype(np.float64), x.astype(np.float64), **options))
    for i, name in enumerate(("forward", "backward")):
        _check_steps(got[i], exact[i], oracle[i][-3:], ROUNDED_THE_OTHER_WAY[op, tuple(options.items())][i],
                     f"{op} {options} {name}")


# BCE's float16 gradients (dinput; the loss stays FP32): elements of the sweep (63488 logits, 15362
# probabilities) one or more float16 steps off (the count measured; the NumPy oracle's: 57, 32 and 0).
# Those past one step (on logits, up to 3 and 5) are where the gradient's two terms, (p t + 1 - t)
# sigmoid(x) and p t, cancel, and lie within FP32's rounding of those terms, as the oracle's (up to 1, 2)
BCE_ROUNDED_THE_OTHER_WAY = {"logits": 117, "logits, pos_weight": 95, "probabilities": 4}


@pytest.mark.parametrize("case", sorted(BCE_ROUNDED_THE_OTHER_WAY))
def test_float16_binary_cross_entropy_gradients_round_the_exact_result_but_near_a_tie(case):
    """binary_cross_entropy(_with_logits) in float16 (reduction "sum": the gradient unscaled) over every
    finite float16 logit, or every float16 probability, random targets in [0, 1] (pos_weight 0.5 to 4):
    the gradient within one float16 step of the float64 one rounded once, or where its terms cancel
    within 2^-21 of their magnitude (a few FP32 roundings); the FP32 loss within 1e-6 of the float64 one."""
    rng = np.random.default_rng(41)
    logits = case.startswith("logits")
    x = EVERY_FLOAT16[np.isfinite(EVERY_FLOAT16)]
    if not logits:
        x = x[(x >= 0) & (x <= 1)]
    target = rng.uniform(0, 1, x.shape).astype(np.float16)
    pos_weight = rng.uniform(0.5, 4, x.shape).astype(np.float16) if "pos_weight" in case else None
    options = {} if pos_weight is None else {"pos_weight": pos_weight}
    op = F.binary_cross_entropy_with_logits if logits else F.binary_cross_entropy
    with emu.checking(guard=True):
        loss, grad = op(x, target, reduction="sum", **options, backend="emu")
    x64, t64 = x.astype(np.float64), target.astype(np.float64)
    wide = {name: a.astype(np.float64) for name, a in options.items()}
    with np.errstate(all="ignore"):
        exact_loss, exact_grad = op(x64, t64, reduction="sum", **wide)
    p64 = 1.0 if pos_weight is None else pos_weight.astype(np.float64)
    with np.errstate(over="ignore"):
        terms = np.abs((p64 * t64 + 1 - t64) / (1 + np.exp(-x64))) + p64 * t64 if logits else 0.0
    reference = _exact_in_float16(exact_grad)
    steps = float16_steps(grad, reference)
    with np.errstate(invalid="ignore"):   # the spacing of an infinite gradient (x (1 - x) below 1e-12)
        step = np.spacing(np.abs(reference)).astype(np.float64)
    cancelled = np.abs(grad.astype(np.float64) - exact_grad) <= step + 2.0**-21 * terms
    assert ((steps <= 1) | cancelled).all(), f"{case}: {steps.max()} float16 steps off at x={x[steps.argmax()]}"
    assert np.count_nonzero(steps) <= BCE_ROUNDED_THE_OTHER_WAY[case], f"{case}: {np.count_nonzero(steps)} off"
    assert loss == pytest.approx(exact_loss, rel=1e-6)


def test_float32_sigmoid_and_tanh_gradients_from_exp_of_minus_abs_x():
    """sigmoid's and tanh's gradients as e / (1 + e)^2 and 4e / (1 + e)^2 from e = exp(-|x|) (exp(-2|x|)):
    within 6 ulps of the float64 result everywhere on a sweep to |x| = 100, where s (1 - s) and 1 - tanh^2
    had cancelled to 0 or to a multiple of 2^-24 (up to 2^24 ulps off) where they saturate."""
    dtype = np.float32
    rng = np.random.default_rng(42)
    x = np.concatenate([rng.standard_normal(20000) * 8, rng.uniform(-100, 100, 5000)]).astype(dtype)
    dy = rng.uniform(0.5, 2, x.shape).astype(dtype)
    for op in (F.sigmoid_backward, F.tanh_backward):
        got = op(dy, x, backend="emu")
        exact = op(dy.astype(np.float64), x.astype(np.float64))
        # float32's kernels flush subnormals, e's too, where dy 4e / (1 + e)^2 may still be normal
        normal = np.abs(exact) >= 8 * np.finfo(dtype).tiny
        off = np.abs(got[normal] - exact[normal]) / np.spacing(np.abs(exact[normal]).astype(dtype))
        assert float(off.max()) <= 6, f"{op.__name__}: {off.max():.1f} ulps"
        assert (np.abs(got[~normal]) <= 8 * np.finfo(dtype).tiny).all()


def test_bce_with_logits_float32_gradient_within_three_ulps():
    """BCE on logits takes sigmoid(x) as (x < 0 ? e : 1) / (1 + e) from log_sigmoid's e = exp(-|x|)
    (one exponential, not two): float32's gradient sigmoid(x) - t, with t = 0 sigmoid(x) itself, stays
    within 3 ulps of the float64 result on a sweep (measured 2.1; the former 1 / (1 + exp(-x)), computed
    so in NumPy's float32, 2.6)."""
    rng = np.random.default_rng(43)
    x = np.concatenate([rng.standard_normal(20000) * 8, rng.uniform(-100, 100, 5000)]).astype(np.float32)
    _, grad = F.binary_cross_entropy_with_logits(x, np.zeros_like(x), reduction="sum", backend="emu")
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    normal = exact >= 4 * np.finfo(np.float32).tiny
    off = np.abs(grad[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert float(off.max()) <= 3, f"{off.max():.2f} ulps"
