// The element-wise activations that elementwise.cu runs as kernels of their own and batch_norm.cu
// applies to its normalised values in the same pass (nn.Sequential's BatchNorm + ReLU / ReLU6 /
// Hardswish / SiLU): one definition of each value and gradient, so a fused activation computes what
// the separate kernel computes from the same input, PyTorch's rules at the kinks and at special
// values included (elementwise.cu's header states them). `v` is the activation's input, `dy` the
// gradient of its output; all in acc_t.

#include "map_math.cuh"

__device__ __forceinline__ acc_t sigmoid_of(acc_t v)
{
    return map_divide((acc_t)1, (acc_t)1 + map_exp(-v));   // float16: 0 where exp(-v) passes 2^126
}

// PyTorch's clamp: NaN passes (every comparison with it is false), and so does -0.0 against a bound of 0
__device__ __forceinline__ acc_t clamp_of(acc_t v, acc_t low, acc_t high)
{
    return v < low ? low : (v > high ? high : v);
}

// 0 where v < 0, else v (NaN and -0.0 pass)
__device__ __forceinline__ acc_t relu_of(acc_t v)
{
    return v < (acc_t)0 ? (acc_t)0 : v;
}

// 0 where v <= 0 (also for an infinite or NaN dy), else dy (also where v is NaN)
__device__ __forceinline__ acc_t relu_gradient(acc_t dy, acc_t v)
{
    return v <= (acc_t)0 ? (acc_t)0 : dy;
}

// 0 at and beyond the bounds (also for an infinite or NaN dy), dy between them and where v is NaN
__device__ __forceinline__ acc_t hardtanh_gradient(acc_t dy, acc_t v, acc_t low, acc_t high)
{
    return v <= low || v >= high ? (acc_t)0 : dy;
}

// v * hardsigmoid(v), PyTorch's order of operations (NaN at v = -inf: -inf * 0)
__device__ __forceinline__ acc_t hardswish_of(acc_t v)
{
    return v * clamp_of(v + (acc_t)3, (acc_t)0, (acc_t)6) / (acc_t)6;
}

// 0 where v <= -3 (the left derivative at -3), dy (v / 3 + 1/2) where v < 3, dy at and above 3 and where
// v is NaN
__device__ __forceinline__ acc_t hardswish_gradient(acc_t dy, acc_t v)
{
    return v <= (acc_t)-3 ? (acc_t)0 : (v < (acc_t)3 ? dy * (v / (acc_t)3 + (acc_t)0.5) : dy);
}

// v sigmoid(v) as v / (1 + exp(-v)): exp overflowing for very negative v gives -0
__device__ __forceinline__ acc_t silu_of(acc_t v)
{
    return map_divide(v, (acc_t)1 + map_exp(-v));
}

// PyTorch's dy s (1 + v (1 - s)), s = sigmoid(v): 1 - s loses its relative accuracy where s saturates,
// but v (1 - s) is then negligible beside 1; NaN at v = +-inf (inf * 0), as PyTorch's
__device__ __forceinline__ acc_t silu_gradient(acc_t dy, acc_t v)
{
    const acc_t s = sigmoid_of(v);
    return dy * (s * ((acc_t)1 + v * ((acc_t)1 - s)));
}
