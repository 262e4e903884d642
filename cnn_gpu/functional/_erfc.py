"""erfc on NumPy arrays, which NumPy lacks (and SciPy is no dependency; math.erfc element by element
took 0.10 s a million float64s, this 0.05 s, a sigmoid 0.005 s): W. J. Cody's rational Chebyshev
approximations ("Rational Chebyshev approximations for the error function", Math. Comp. 23, 1969;
SPECFUN's CALERF), within a few float64 ulps, computed in the array's own dtype (float32 for
float16's FP32 math)."""
from __future__ import annotations

import numpy as np

# Coefficients in Horner order, the highest power first.
# |x| <= _SMALL: erf(x) = x P(x^2) / Q(x^2), and erfc = 1 - erf (erf <= 0.5 there: no cancellation)
_SMALL = 0.46875
_SMALL_P = (1.85777706184603153e-1, 3.16112374387056560e0, 1.13864154151050156e2, 3.77485237685302021e2,
            3.20937758913846947e3)
_SMALL_Q = (1.0, 2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3, 2.84423683343917062e3)
# _SMALL < |x| <= _MIDDLE: erfc(|x|) = exp(-x^2) P(|x|) / Q(|x|)
_MIDDLE = 4.0
_MIDDLE_P = (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e0, 6.61191906371416295e1,
             2.98635138197400131e2, 8.81952221241769090e2, 1.71204761263407058e3, 2.05107837782607147e3,
             1.23033935479799725e3)
_MIDDLE_Q = (1.0, 1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2, 1.62138957456669019e3,
             3.29079923573345963e3, 4.36261909014324716e3, 3.43936767414372164e3, 1.23033935480374942e3)
# |x| > _MIDDLE: erfc(|x|) = exp(-x^2) / |x| (1/sqrt(pi) - z P(z) / Q(z)) with z = 1/x^2
_LARGE_P = (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
            1.60837851487422766e-2, 6.58749161529837803e-4)
_LARGE_Q = (1.0, 2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1, 6.05183413124413191e-2,
            2.33520497626869185e-3)
_RSQRT_PI = 5.6418958354775628695e-1
# erfc(28) is 0 in float64: |x| is clamped here, so an infinite x gives 0 and not inf - inf
_ZERO_FROM = 28.0


def _horner(coefficients, z):
    value = coefficients[0]
    for c in coefficients[1:]:
        value = value * z + c
    return value


def _exp_minus_square(y):
    """exp(-y^2) as CALERF takes it: y^2 split into a part exact in floating point (y rounded down
    to 1/16) and a small rest, so that y^2's rounding error is not magnified by the exponential."""
    head = np.trunc(y * 16) / 16
    return np.exp(-head * head) * np.exp(-(y - head) * (y + head))


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function of a float array, elementwise, in its dtype (NaN stays NaN)."""
    flat = np.ravel(x)
    magnitude = np.minimum(np.abs(flat), _ZERO_FROM)
    out = np.empty_like(flat)
    small = magnitude <= _SMALL
    large = magnitude > _MIDDLE
    middle = ~(small | large)   # NaN too

    v = flat[small]
    z = v * v
    out[small] = 1 - v * _horner(_SMALL_P, z) / _horner(_SMALL_Q, z)

    y = magnitude[middle]
    out[middle] = _exp_minus_square(y) * _horner(_MIDDLE_P, y) / _horner(_MIDDLE_Q, y)

    y = magnitude[large]
    z = 1 / (y * y)
    out[large] = _exp_minus_square(y) * (_RSQRT_PI - z * _horner(_LARGE_P, z) / _horner(_LARGE_Q, z)) / y

    reflected = ~small & (flat < 0)   # erfc(-y) = 2 - erfc(y)
    out[reflected] = 2 - out[reflected]
    return out.reshape(np.shape(x))
