// Activations (forward and backward), GLU and bias addition.
//
// Not a GEMM: memory-bound maps, one thread per element, 256-thread blocks and a grid-stride
// loop over the 64-bit flat index (consecutive threads touch consecutive elements: coalesced).
// Backward kernels take x (not y) as the public API does, recomputing sigmoid/tanh/silu/gelu; sigmoid's and
// tanh's gradients from exp(-|x|) as the NumPy oracle (s (1 - s) and 1 - tanh^2 cancel where they saturate).
// The float16 builds take their exponentials, divisions and log1p in the fast forms (map_math.cuh: map_exp,
// map_divide, map_log1p; elu's map_expm1 and GELU's normal_terms here), which keeps these maps within the
// instructions an element an H100 streams at DRAM speed (tests/test_sass.py); float32 and float64 keep
// expf, expm1f, log1pf, erfcf and IEEE division.
// PyTorch's edge rules: relu(x) = 0 where x < 0, else x (NaN and -0 pass); relu'(x) = 0 where
// x <= 0 (so a NaN x passes dy); leaky_relu'(x) = slope where x <= 0.
// silu and gelu as cnn_gpu.functional.activation computes them, free of cancellation and of
// overflow's inf * 0 at any finite x: gelu(x) = x erfc(-x / sqrt(2)) / 2 (not x (1 + erf) / 2, 0
// for negative x), gelu_tanh(x) = x sigmoid(2u) (not x (1 + tanh(u)) / 2). At x = +-inf the
// backward passes give NaN as PyTorch's do; so do mish's (and mish(-inf)).
// hardtanh (also F.relu6: hardtanh(x, 0, 6)), hardsigmoid, hardswish, elu and mish with PyTorch's rules:
// clamps pass NaN and keep -0.0; the gradients at the kinks are hardtanh's 0 at both bounds,
// hardsigmoid's 0 at +-3 (and where x is NaN), hardswish's 0 at -3 and dy at 3, elu's alpha dy at 0;
// elu by expm1 (accurate near 0), and mish's tanh(softplus(x)) and 1 - tanh^2 from exp(-|x|) alone in
// sums of positive terms (mish_terms: no overflow, no cancellation).
// elu's kernels are PyTorch's elu(alpha, scale, input_scale), which also runs selu and celu; softplus,
// log_sigmoid, softsign, tanhshrink, hardshrink, softshrink (one shrink_backward for both) and threshold with
// PyTorch's formulas and rules at their kinks (each kernel's comment), but for softplus past exp's range
// (SOFTPLUS_LINEAR) and the gradients of softsign and tanhshrink, taken without PyTorch's cancellation.
// glu_forward / glu_backward: GLU's halving, a gather of two halves (its comment says why a 2-D grid).
// add_relu_forward: relu(a + b) in one pass, a residual block's output plus its shortcut and the
// ReLU after them (nn.Residual, where nn.Sequential fuses the ReLU); its gradient is relu_backward
// given the output, which is > 0 exactly where a + b is (NaN where it is NaN).
// relu_backward_of_sum: relu_backward(dy_a + dy_b, x) in one pass, for a gradient that arrives as
// two summands (a residual block's dx through its block and its shortcut, handed unsummed by
// nn.Sequential to the residual ReLU before it): the sum rounded once, as dy_a + dy_b would be.
// Both add in acc_t, so the float32 builds (-ftz=true) flush a subnormal summand or sum to zero,
// where NumPy's and CuPy's own additions keep it; float16 values are never subnormal in FP32.
// Bias addition (where not fused into a GEMM epilogue), in place:
//  * bias_add_nchw: y (N, C, HW) += bias[c], on for_each_plane_element (plane_walk.cuh): the channel's
//    bias is read once a plane and round, small planes grouped so a block's threads stay busy (one
//    plane a block row left 207 of 256 threads idle on a 7x7 plane).
//  * bias_add_rows: y (rows, F) += bias[f]; f steps with the grid-stride loop (no division).
// Values are loaded with to_acc and stored with to_real (common.cuh): float16 computes in FP32 and
// rounds each output once.

#include "activations.cuh"   // the values and gradients batch_norm.cu's fused activations share
#include "plane_walk.cuh"    // GLU's short runs, bias_add_nchw's planes

// GELU's constants (cnn_gpu.functional.activation's): 1/sqrt(2), 1/sqrt(2 pi), and for the tanh form
// 2u = 2 sqrt(2 / pi) (x + 0.044715 x^3)
#define SQRT_HALF ((acc_t)0.7071067811865476)
#define RSQRT_2PI ((acc_t)0.3989422804014327)
#define TWO_SQRT_2_OVER_PI ((acc_t)1.5957691216057308)
#define GELU_CUBIC ((acc_t)0.044715)

// GELU's Phi(v) = erfc(-v / sqrt(2)) / 2 and phi(v) = exp(-v^2 / 2) / sqrt(2 pi). The float16 builds take both
// from one exponential: erfc(a) = exp(-a^2) P(t) for a = |v| / sqrt(2), t = (a - 2) / (a + 2) = 1 - 4 / (a + 2) in
// [-1, 1], P a degree-8 fit of erfc(a) exp(a^2) (within 2^-21.7 of it in FP32 for a <= 6, bounded beyond, where
// exp(-a^2) is below 2^-51), and erfc(-a) = 2 - erfc(a); with map_exp's error (~2^-19 at a = 3.3, where Phi leaves
// FP16's normal range) the result stays within 2^-18 of Phi and phi. float32 and float64: erfc and exp.
struct NormalTerms {
    acc_t cdf, pdf;
};

__device__ __forceinline__ NormalTerms normal_terms(acc_t v)
{
#if REAL_IS_HALF
    const acc_t a = fabsf(v) * SQRT_HALF;
    const acc_t t = 1.0f - map_divide(4.0f, a + 2.0f);   // 1 for an infinite a
    acc_t p = -1.27210165e-4f;
    p = p * t - 9.39785095e-4f;
    p = p * t - 7.41208671e-4f;
    p = p * t + 7.00390479e-3f;
    p = p * t + 3.71115142e-3f;
    p = p * t - 7.89802298e-2f;
    p = p * t + 2.41659760e-1f;
    p = p * t - 4.27185804e-1f;
    p = p * t + 2.55395651e-1f;
    const acc_t gaussian = map_exp(-a * a);
    const acc_t tail = gaussian * p;   // erfc(a)
    return {0.5f * (v < 0.0f ? tail : 2.0f - tail), RSQRT_2PI * gaussian};
#else
    // pdf 0 where v * v overflows
    return {(acc_t)0.5 * REAL_ERFC(v * -SQRT_HALF), RSQRT_2PI * REAL_EXP((acc_t)-0.5 * v * v)};
#endif
}

__device__ __forceinline__ acc_t gelu_tanh_argument(acc_t v)
{
    return TWO_SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v);
}

// e^v - 1 (elu's, for v <= 0 but where celu's alpha < 0 makes v >= 0), accurate near 0: expm1, and in the
// float16 builds map_exp(v) - 1 for |v| >= 1/16 (for v <= -1/16 an exact subtraction, e^v in [1/2, 1], its
// error below 2^-19 of the result; above 1/16 below 2^-17) and e^v's Taylor polynomial to v^4 between
// (truncated at 2^-23 of the result)
__device__ __forceinline__ acc_t map_expm1(acc_t v)
{
#if REAL_IS_HALF
    if (fabsf(v) >= (acc_t)0.0625) return map_exp(v) - (acc_t)1;
    return v * ((acc_t)1 + v * ((acc_t)0.5 + v * ((acc_t)(1.0 / 6) + v * (acc_t)(1.0 / 24))));
#else
    return REAL_EXPM1(v);
#endif
}

// mish's t = tanh(softplus(v)) and 1 - t^2 from e = exp(-|v|) alone (cnn_gpu.functional.activation's
// _mish_terms): sums of positive terms, so no cancellation or overflow; t = n / d with n = e (e + 2),
// d = n + 2 for v < 0, n = 1 + 2e, d = n + 2e^2 for v >= 0, and 1 - t^2 = 4 (n + 1) / d^2 or 4 (e (1 + e))^2 / d^2
struct MishTerms {
    acc_t t, sech_squared;
};

__device__ __forceinline__ MishTerms mish_terms(acc_t v)
{
    const acc_t e = map_exp(v < (acc_t)0 ? v : -v);
    const bool negative = v < (acc_t)0;
    const acc_t numerator = negative ? e * (e + (acc_t)2) : (acc_t)1 + (acc_t)2 * e;
    const acc_t denominator = negative ? numerator + (acc_t)2 : numerator + (acc_t)2 * e * e;
    const acc_t e_one_plus_e = e * ((acc_t)1 + e);
    const acc_t four_times = negative ? (acc_t)4 * (numerator + (acc_t)1) : (acc_t)4 * e_one_plus_e * e_one_plus_e;
    return {map_divide(numerator, denominator), map_divide(four_times, denominator * denominator)};
}

// Each kernel walks its elements with for_each_element (common.cuh): `load` reads an element's inputs
// (Loaded, raw), `store` computes and writes its output.
#define LOAD_X [&](long long i) { return Loaded<1>{{x[i]}}; }
#define LOAD_X_DY [&](long long i) { return Loaded<2>{{x[i], dy[i]}}; }

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
relu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) { y[i] = to_real(relu_of(to_acc(in.v[0]))); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
add_relu_forward(const REAL* __restrict__ a, const REAL* __restrict__ b, REAL* __restrict__ y, long long n)
{
    for_each_element(n, [&](long long i) { return Loaded<2>{{a[i], b[i]}}; }, [&](long long i, const Loaded<2>& in) {
        y[i] = to_real(relu_of(to_acc(in.v[0]) + to_acc(in.v[1])));   // float16: rounded once, as a + b would be
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
relu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = to_acc(in.v[0]) <= (acc_t)0 ? to_real((acc_t)0) : in.v[1];
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
relu_backward_of_sum(const REAL* __restrict__ dy_a, const REAL* __restrict__ dy_b, const REAL* __restrict__ x,
                     REAL* __restrict__ dx, long long n)
{
    for_each_element(n, [&](long long i) { return Loaded<3>{{x[i], dy_a[i], dy_b[i]}}; },
                     [&](long long i, const Loaded<3>& in) {
        dx[i] = to_acc(in.v[0]) <= (acc_t)0 ? to_real((acc_t)0) : to_real(to_acc(in.v[1]) + to_acc(in.v[2]));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
leaky_relu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t slope)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v > (acc_t)0 ? v : v * slope);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
leaky_relu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
                    acc_t slope)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t g = to_acc(in.v[1]);
        dx[i] = to_real(to_acc(in.v[0]) > (acc_t)0 ? g : g * slope);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sigmoid_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) { y[i] = to_real(sigmoid_of(to_acc(in.v[0]))); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sigmoid_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        // s (1 - s) = e / (1 + e)^2 with e = exp(-|x|), as the NumPy oracle: 1 - s cancels where s nears 1
        const acc_t e = map_exp(-fabs(to_acc(in.v[0])));
        dx[i] = to_real(to_acc(in.v[1]) * map_divide(e, ((acc_t)1 + e) * ((acc_t)1 + e)));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
tanh_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) { y[i] = to_real(REAL_TANH(to_acc(in.v[0]))); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
tanh_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        // 1 - tanh^2 = 4e / (1 + e)^2 with e = exp(-2|x|), as the NumPy oracle: 1 - t^2 cancels where t nears +-1
        const acc_t e = map_exp((acc_t)-2 * fabs(to_acc(in.v[0])));
        dx[i] = to_real(to_acc(in.v[1]) * map_divide((acc_t)4 * e, ((acc_t)1 + e) * ((acc_t)1 + e)));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
silu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) { y[i] = to_real(silu_of(to_acc(in.v[0]))); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
silu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = to_real(silu_gradient(to_acc(in.v[1]), to_acc(in.v[0])));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
gelu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v * normal_terms(v).cdf);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
gelu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        const NormalTerms normal = normal_terms(v);
        dx[i] = to_real(to_acc(in.v[1]) * (normal.cdf + v * normal.pdf));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
gelu_tanh_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v * sigmoid_of(gelu_tanh_argument(v)));
    });
}

// d/dx x s(2u) = s + x s (1 - s) 2u', with x^3 s (1 - s) as x (x (x s (1 - s))): where s (1 - s) is 0,
// v * v overflowing gives no inf * 0
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
gelu_tanh_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        const acc_t s = sigmoid_of(gelu_tanh_argument(v));
        const acc_t x_slope = v * (s * ((acc_t)1 - s));
        const acc_t slope = s + TWO_SQRT_2_OVER_PI * (x_slope + (acc_t)3 * GELU_CUBIC * v * (v * x_slope));
        dx[i] = to_real(to_acc(in.v[1]) * slope);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardtanh_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t low, acc_t high)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        y[i] = to_real(clamp_of(to_acc(in.v[0]), low, high));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardtanh_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
                  acc_t low, acc_t high)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = to_real(hardtanh_gradient(to_acc(in.v[1]), to_acc(in.v[0]), low, high));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardsigmoid_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        y[i] = to_real(clamp_of(to_acc(in.v[0]) + (acc_t)3, (acc_t)0, (acc_t)6) / (acc_t)6);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardsigmoid_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        dx[i] = to_real(v > (acc_t)-3 && v < (acc_t)3 ? to_acc(in.v[1]) / (acc_t)6 : (acc_t)0);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardswish_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        y[i] = to_real(hardswish_of(to_acc(in.v[0])));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardswish_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = to_real(hardswish_gradient(to_acc(in.v[1]), to_acc(in.v[0])));
    });
}

// PyTorch's elu(alpha, scale, input_scale), which runs F.elu (scale = input_scale = 1), F.selu and F.celu
// (input_scale = 1 / alpha): x scale where x >= 0 (a zero keeps its sign, as in PyTorch), else
// alpha scale expm1(x input_scale); the products of the coefficients rounded in acc_t as PyTorch's
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
elu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t alpha, acc_t scale,
            acc_t input_scale)
{
    const acc_t negative = alpha * scale;
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v >= (acc_t)0 ? v * scale : negative * map_expm1(v * input_scale));
    });
}

// dy input_scale alpha scale exp(x input_scale) where x <= 0 (at 0 too, as PyTorch), else (and at NaN) dy scale
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
elu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
             acc_t alpha, acc_t scale, acc_t input_scale)
{
    const acc_t negative_slope = input_scale * (alpha * scale);
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        const acc_t g = to_acc(in.v[1]);
        dx[i] = to_real(v <= (acc_t)0 ? g * (negative_slope * map_exp(v * input_scale)) : g * scale);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
mish_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v * mish_terms(v).t);
    });
}

// t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
mish_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        const MishTerms terms = mish_terms(v);
        dx[i] = to_real(to_acc(in.v[1]) * (terms.t + v * sigmoid_of(v) * terms.sech_squared));
    });
}

// log1p(exp(t)), which rounds to t past t = 40 (exp(-t) < 2^-57 t): taken so there, where exp(t) could
// overflow (for a softplus threshold past 88 in float32 and float16's FP32, 709 in float64)
#define SOFTPLUS_LINEAR ((acc_t)40)

// PyTorch's x where x beta > threshold, else log1p(exp(x beta)) / beta
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softplus_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t beta, acc_t threshold)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        const acc_t t = v * beta;
        const acc_t term = t > SOFTPLUS_LINEAR ? t : map_log1p(map_exp(t));
        y[i] = to_real(t > threshold ? v : map_divide(term, beta));   // float16: beta within [2^-126, 2^126]
    });
}

// PyTorch's dy where x beta > threshold, else dy z / (z + 1), z = exp(x beta) (dy past SOFTPLUS_LINEAR, where
// z / (z + 1) rounds to 1)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softplus_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
                  acc_t beta, acc_t threshold)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t t = to_acc(in.v[0]) * beta;
        const acc_t g = to_acc(in.v[1]);
        const acc_t z = map_exp(t);
        dx[i] = to_real(t > threshold || t > SOFTPLUS_LINEAR ? g : map_divide(g * z, z + (acc_t)1));
    });
}

// PyTorch's stable min(x, 0) - log1p(exp(-|x|))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
log_sigmoid_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real((v < (acc_t)0 ? v : (acc_t)0) - map_log1p(map_exp(-fabs(v))));   // NaN passes
    });
}

// PyTorch's dy (1 - q) where x < 0, else dy q, q = z / (1 + z) <= 1/2, z = exp(-|x|)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
log_sigmoid_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = to_acc(in.v[0]);
        const acc_t z = map_exp(-fabs(v));
        const acc_t q = map_divide(z, (acc_t)1 + z);
        dx[i] = to_real(to_acc(in.v[1]) * (v < (acc_t)0 ? (acc_t)1 - q : q));
    });
}

// x / (1 + |x|): NaN at +-inf, as PyTorch's (inf / inf)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softsign_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v / ((acc_t)1 + fabs(v)));   // IEEE division: inf / inf must give NaN
    });
}

// dy / (1 + |x|)^2 (no cancelling quotient rule); NaN at +-inf, as PyTorch's
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softsign_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t v = fabs(to_acc(in.v[0]));
        const acc_t b = (acc_t)1 + v;
        dx[i] = to_real(isinf(v) ? REAL_NAN : to_acc(in.v[1]) / (b * b));
    });
}

// PyTorch's x - tanh(x)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
tanhshrink_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v - REAL_TANH(v));
    });
}

// dy tanh(x)^2, where PyTorch's dy - dy (1 - tanh^2) cancels near 0; + 0 makes a zero +0.0, as PyTorch's
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
tanhshrink_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        const acc_t t = REAL_TANH(to_acc(in.v[0]));
        dx[i] = to_real(to_acc(in.v[1]) * (t * t) + (acc_t)0);
    });
}

// The shrinks' dead zone -lambd <= v <= lambd (never at NaN), where both gradients are 0
__device__ __forceinline__ bool in_dead_zone(acc_t v, acc_t lambd)
{
    return v >= -lambd && v <= lambd;
}

// x, but +0.0 in the dead zone (hardshrink(-0.0) is +0.0, as PyTorch's)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
hardshrink_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t lambd)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        y[i] = in_dead_zone(to_acc(in.v[0]), lambd) ? to_real((acc_t)0) : in.v[0];
    });
}

// 0 in the dead zone (also for an infinite or NaN dy), dy elsewhere and where x is NaN; hardshrink's and
// softshrink's
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
shrink_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
                acc_t lambd)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = in_dead_zone(to_acc(in.v[0]), lambd) ? to_real((acc_t)0) : in.v[1];
    });
}

// PyTorch's x - lambd above lambd, x + lambd below -lambd, x * 0 between (a zero of x's sign); NaN passes
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softshrink_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t lambd)
{
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        const acc_t v = to_acc(in.v[0]);
        y[i] = to_real(v > lambd ? v - lambd : (v < -lambd ? v + lambd : v * (acc_t)0));
    });
}

// PyTorch's value where x <= threshold, else x (NaN passes)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
threshold_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, acc_t threshold, acc_t value)
{
    const REAL replacement = to_real(value);
    for_each_element(n, LOAD_X, [&](long long i, const Loaded<1>& in) {
        y[i] = to_acc(in.v[0]) <= threshold ? replacement : in.v[0];
    });
}

// 0 where x <= threshold (also for an infinite or NaN dy), dy elsewhere and where x is NaN
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
threshold_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long n,
                   acc_t threshold)
{
    for_each_element(n, LOAD_X_DY, [&](long long i, const Loaded<2>& in) {
        dx[i] = to_acc(in.v[0]) <= threshold ? to_real((acc_t)0) : in.v[1];
    });
}

// GLU: x viewed as `outer` runs of 2 * chunk elements, each a (the first chunk) then b (the gate); y holds
// outer runs of chunk elements. A gather of two halves, not a map: a 2-D grid (_glu_grid), and no element
// pays a 64-bit division to find its run (a flat walk would). Runs of more than half a block:
// blockIdx.y strides over the runs and for_each_element walks one run's chunk along x, so both halves
// stream as contiguous coalesced runs with a round's loads in flight. Runs of at most 128 go several
// to a block, an element a thread (for_each_small_plane_pixel, plane_walk.cuh: a run is a plane), where one
// run a block row left 256 - chunk threads idle (GLU over the features of an (N, 2C) input: chunk C).
// (for_each_plane_element's 4 elements a thread would need each element's run before its loads: the
// division this walk avoids.) store(run, i, load(run, i)) for element i of every run.
template <class Load, class Store>
static __device__ __forceinline__ void for_each_glu_element(long long outer, long long chunk, Load load, Store store)
{
    if (2 * chunk <= BLOCK_THREADS) {
        for_each_small_plane_pixel(outer, (int)chunk,
                                   [&](long long run, int i) { store(run, (long long)i, load(run, i)); });
        return;
    }
    for (long long run = blockIdx.y; run < outer; run += gridDim.y)
        for_each_element(chunk, [&](long long i) { return load(run, i); },
                         [&](long long i, const decltype(load(run, 0LL))& in) { store(run, i, in); });
}

// a sigmoid(b), sigmoid as PyTorch's 1 / (1 + exp(-b))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
glu_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long outer, long long chunk)
{
    for_each_glu_element(outer, chunk, [&](long long run, long long i) {
        const REAL* a = x + 2 * run * chunk + i;
        return Loaded<2>{{a[0], a[chunk]}};
    }, [&](long long run, long long i, const Loaded<2>& in) {
        y[run * chunk + i] = to_real(to_acc(in.v[0]) * sigmoid_of(to_acc(in.v[1])));
    });
}

// da = dy sigmoid(b), db = dy a sigmoid'(b), from e = exp(-|b|), r = 1 / (1 + e): sigmoid(b) = r or e r,
// sigmoid'(b) = e r^2 (s (1 - s) would cancel where s saturates), as the NumPy oracle
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
glu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long outer,
             long long chunk)
{
    for_each_glu_element(outer, chunk, [&](long long run, long long i) {
        const REAL* a = x + 2 * run * chunk + i;
        return Loaded<3>{{dy[run * chunk + i], a[0], a[chunk]}};
    }, [&](long long run, long long i, const Loaded<3>& in) {
        const acc_t gate = to_acc(in.v[2]);
        const acc_t e = map_exp(-fabs(gate));
        const acc_t r = map_divide((acc_t)1, (acc_t)1 + e);
        const acc_t grad = to_acc(in.v[0]);
        REAL* da = dx + 2 * run * chunk + i;
        da[0] = to_real(grad * (gate >= (acc_t)0 ? r : e * r));
        da[chunk] = to_real(grad * (to_acc(in.v[1]) * (e * r * r)));
    });
}

// grid: cnn_gpu.gpu._grid.plane_walk_grid
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
bias_add_nchw(REAL* __restrict__ y, const REAL* __restrict__ bias, long long planes, int channels,
              long long plane_size)
{
    for_each_plane_element(planes, plane_size, [&](long long plane) { return to_acc(bias[plane % channels]); },
        [&](long long at) { return Loaded<1>{{y[at]}}; },
        [&](long long at, acc_t b, const Loaded<1>& in) { y[at] = to_real(to_acc(in.v[0]) + b); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
bias_add_rows(REAL* __restrict__ y, const REAL* __restrict__ bias, long long n, int features)
{
    const long long stride = (long long)gridDim.x * BLOCK_THREADS;
    // 64-bit feature counters: f + feature_step reaches 2 * features, past 2^31 for 2^30 features
    const long long feature_step = stride % features;
    long long i = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    long long f = i % features;
    for (; i < n; i += stride) {
        const acc_t b = to_acc(bias[f]);
        y[i] = to_real(to_acc(y[i]) + b);
        f += feature_step;
        if (f >= features)
            f -= features;
    }
}
