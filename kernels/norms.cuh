// The p-norms and their gradients shared by distance.cu (normalize, cosine_similarity,
// pairwise_distance) and loss.cu (triplet_margin_rows, whose distances are pairwise_distance's):
// PyTorch's linalg.vector_norm for finite p > 0 (sum |v|^p)^(1/p), p == 1 and 2 without pow, and its
// norm_backward.

#pragma once

#include "map_math.cuh"

// |v|^p, one element's term of a p-norm's sum
__device__ __forceinline__ acc_t lp_term(acc_t v, acc_t p)
{
    if (p == (acc_t)2) return v * v;
    const acc_t a = REAL_ABS(v);
    return p == (acc_t)1 ? a : REAL_POW(a, p);
}

// The p-norm of its sum of terms
__device__ __forceinline__ acc_t lp_root(acc_t sum, acc_t p)
{
    if (p == (acc_t)2) return REAL_SQRT(sum);
    return p == (acc_t)1 ? sum : REAL_POW(sum, (acc_t)1 / p);
}

__device__ __forceinline__ acc_t sign_of(acc_t v)
{
    return v > (acc_t)0 ? (acc_t)1 : v < (acc_t)0 ? (acc_t)-1 : v;   // sgn, NaN stays NaN
}

// d norm / d v for the values v of a row whose p-norm is `norm`: v / n (p == 2), sgn(v) (p == 1),
// sgn(v) |v|^(p-1) / n^(p-1), and for the infinity norm (p == 0) sgn(v) over `ties`, the count of
// the row's elements at the maximum or NaN; 0 where n == 0. The row's norm^(p-1) is taken once,
// where it was taken again for every element, and only for the p that use it (not 0, 1 or 2).
struct LpNormGradient {
    acc_t norm, p, ties, norm_power;
    __device__ LpNormGradient(acc_t norm, acc_t p, acc_t ties)
        : norm(norm), p(p), ties(ties),
          norm_power(p == (acc_t)0 || p == (acc_t)1 || p == (acc_t)2 ? (acc_t)1 : REAL_POW(norm, p - (acc_t)1)) {}
    __device__ acc_t operator()(acc_t v) const
    {
        if (p == (acc_t)0) {
            const acc_t a = REAL_ABS(v);
            return a == norm || a != a ? sign_of(v) / ties : (acc_t)0;
        }
        if (p == (acc_t)1)
            return sign_of(v);
        if (norm == (acc_t)0)
            return 0;
        if (p == (acc_t)2)
            return v / norm;
        if (v == (acc_t)0)
            return 0;   // PyTorch's for p < 1, where |v|^(p-1) is inf (0 * inf would be NaN)
        return sign_of(v) * REAL_POW(REAL_ABS(v), p - (acc_t)1) / norm_power;
    }
};
