// The exponential and division of the element-wise maps and losses (elementwise.cu, activations.cuh,
// loss.cu), log1p, and the power and magnitude of the p-norms (loss.cu, distance.cu, local_response_norm.cu).
// Not in common.cuh, which every kernel includes: with them there, the float32 SIMT convolution
// tiles' SASS moved (conv2d_fprop_tall's sm_90 hot loop one instruction longer, README's SASS
// table), though nothing of them is used there.

#include "common.cuh"

#if REAL_IS_DOUBLE
#define REAL_POW pow
#define REAL_ABS fabs
#define REAL_LOG1P log1p
#else
#define REAL_POW powf
#define REAL_ABS fabsf
#define REAL_LOG1P log1pf
#endif

// The float16 builds take the fast FP32 forms (one MUFU instruction and a multiply each, where expf's
// range reduction and a division's Newton steps and slow path issue ~10 and ~8; the maps issued more
// instructions an element than an H100 streams elements, tests/test_sass.py): by the CUDA C++
// Programming Guide's bounds, __expf is within 2 + 1.2|x| FP32 ulps, __fdividef within 2 for a
// divisor's magnitude in [2^-126, 2^126] (0 beyond, NaN for an infinite dividend), 2^-12 or more below
// half an FP16 ulp for |x| < 88, so an output rounded to FP16 moves at most one FP16 ulp, and only
// near a tie (tests/test_fast_math.py counts how often). float32 and float64 keep the accurate
// functions.
static __device__ __forceinline__ acc_t map_exp(acc_t x) {
#if REAL_IS_HALF
    return __expf(x);
#else
    return REAL_EXP(x);
#endif
}

// x / y; in the float16 builds, y's magnitude must lie in [2^-126, 2^126] or the quotient be below FP16's range
static __device__ __forceinline__ acc_t map_divide(acc_t x, acc_t y) {
#if REAL_IS_HALF
    return __fdividef(x, y);
#else
    return x / y;
#endif
}

// log(1 + z) for z >= 0 (softplus's and log_sigmoid's log1p(exp(.))); in the float16 builds its Taylor
// polynomial to z^4 below z = 1/32 (truncated at z^4 / 5 < 2^-22 of the result, where __logf(1 + z)'s absolute
// error 2^-21.4 would be up to 2^-8 of a small result) and __logf(1 + z) above (within 2^-16.4 of the result
// there, and 3 ulps past 1 + z = 2: the CUDA C++ Programming Guide's bounds)
static __device__ __forceinline__ acc_t map_log1p(acc_t z) {
#if REAL_IS_HALF
    if (z < 0.03125f) return z * (1.0f - z * (0.5f - z * ((1.0f / 3) - z * 0.25f)));
    return __logf(1.0f + z);
#else
    return REAL_LOG1P(z);
#endif
}
