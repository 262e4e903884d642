// Local response normalization across channels, PyTorch's F.local_response_norm / nn.LocalResponseNorm,
// over x viewed as (N, C, inner):
//   y[n, c, p] = x[n, c, p] / d[n, c, p]^beta,   d = k + alpha * S / size,
//   S[n, c, p] = sum of x[n, j, p]^2 over the window j in [c - size/2, c + (size-1)/2] within [0, C)
// (PyTorch pads the channels with size/2 zeros before and (size-1)/2 after and average-pools the
// squares with count_include_pad: the divisor is always `size`). The same operations in the same
// order as PyTorch's tensors: the squares summed in increasing j, / size, * alpha, + k, pow(beta), then
// x / that.
//
// Backward (PyTorch's autograd through those ops): with P = d^beta and
//   t[n, c, p] = -dy x / P^2 * beta d^(beta - 1) * alpha / size   (the gradient reaching S[n, c, p]),
//   dx[n, j, p] = dy[n, j, p] / P[n, j, p] + 2 x[n, j, p] * sum of t[n, c, p] over c in [j - (size-1)/2, j + size/2]
// (the windows holding j). local_response_norm_terms writes dy / P and t in acc_t (FP32 for float16:
// unrounded), local_response_norm_backward adds them up, in increasing c, and rounds dx once.
//
// Not a GEMM: one thread per element over the N*C planes of `inner` positions, walked by
// for_each_channel_plane_pixel (plane_walk.cuh): consecutive threads consecutive positions (each
// window read coalesced), planes of at most 128 positions several to a block (one plane a block row
// left 255 of 256 threads idle on (N, C, 1)), each thread's (n, c) stepped from plane to plane, not
// divided (a 64-bit modulo an element on small planes). A window is summed from scratch
// for every element (size reads, L1 hits; no running sum, whose subtractions PyTorch does not make):
// deterministic, no atomics. In-sample offsets are int (the host refuses samples of 2^31 elements
// or more); sample offsets are 64-bit.

#include "map_math.cuh"
#include "plane_walk.cuh"

// Sum of the squares of column[j * inner] for j in [first, last] clipped to [0, C), in increasing j.
__device__ __forceinline__ acc_t sum_of_squares(const REAL* column, int first, int last, int C, int inner)
{
    acc_t sum = 0;
    for (int j = first > 0 ? first : 0; j <= last && j < C; ++j) {
        const acc_t v = to_acc(column[j * inner]);
        sum += v * v;
    }
    return sum;
}

// d = k + alpha * S / size, PyTorch's (S / size) * alpha + k
__device__ __forceinline__ acc_t lrn_base(const REAL* column, int c, int C, int inner, int size, acc_t alpha,
                                          acc_t k)
{
    return sum_of_squares(column, c - size / 2, c + (size - 1) / 2, C, inner) / (acc_t)size * alpha + k;
}

// grid: cnn_gpu.gpu._grid.plane_pixel_grid(N * C, inner) (for_each_channel_plane_pixel)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
local_response_norm_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int C, int inner,
                            int size, acc_t alpha, acc_t beta, acc_t k)
{
    for_each_channel_plane_pixel(planes, C, inner, [&](long long plane, long long n, int c, int p) {
        const REAL* column = x + n * C * inner + p;
        const acc_t d = lrn_base(column, c, C, inner, size, alpha, k);
        y[plane * inner + p] = to_real(to_acc(column[c * inner]) / REAL_POW(d, beta));
    });
}

// direct = dy / P and terms = t (see the top), in acc_t. d^(beta - 1) is its own pow, as PyTorch's pow
// backward takes it: P / d, one pow fewer, differs in the last bit for about 45% of float32 d.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
local_response_norm_terms(const REAL* __restrict__ dy, const REAL* __restrict__ x, acc_t* __restrict__ direct,
                          acc_t* __restrict__ terms, long long planes, int C, int inner, int size, acc_t alpha,
                          acc_t beta, acc_t k)
{
    for_each_channel_plane_pixel(planes, C, inner, [&](long long plane, long long n, int c, int p) {
        const REAL* column = x + n * C * inner + p;
        const long long at = plane * inner + p;
        const acc_t d = lrn_base(column, c, C, inner, size, alpha, k);
        const acc_t power = REAL_POW(d, beta), g = to_acc(dy[at]), v = to_acc(column[c * inner]);
        direct[at] = g / power;
        terms[at] = -g * v / (power * power) * (beta * REAL_POW(d, beta - (acc_t)1)) * alpha / (acc_t)size;
    });
}

// dx = direct + 2 x * (sum of terms over the windows holding the element), rounded once
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
local_response_norm_backward(const REAL* __restrict__ x, const acc_t* __restrict__ direct,
                             const acc_t* __restrict__ terms, REAL* __restrict__ dx, long long planes, int C,
                             int inner, int size)
{
    for_each_channel_plane_pixel(planes, C, inner, [&](long long plane, long long n, int j, int p) {
        const acc_t* column_terms = terms + n * C * inner + p;
        const long long at = plane * inner + p;
        acc_t sum = 0;
        for (int c = j - (size - 1) / 2 > 0 ? j - (size - 1) / 2 : 0; c <= j + size / 2 && c < C; ++c)
            sum += column_terms[c * inner];
        dx[at] = to_real(direct[at] + (acc_t)2 * to_acc(x[at]) * sum);
    });
}
