// Batch normalisation over NCHW (any x viewed as (N, C, HW)), PyTorch's semantics.
//
// Not a GEMM: per-channel reductions of length L = N*HW and element-wise maps.
//  * batch_norm_stats: one 256-thread block per channel (grid-stride over channels). Two passes
//    over the channel: the mean, then the sum of squared deviations from it (no E[x^2] - E[x]^2
//    cancellation in float32). Thread t adds elements t, t+256, ... in that order, then a
//    shared-memory halving tree adds the 256 partials: the order depends on the shape only, so
//    results are bit-identical run to run (no atomics). Writes mean and invstd = 1/sqrt(var + eps)
//    with the biased variance, and, when update_running, blends the mean and the unbiased variance
//    into the running statistics with `factor` (momentum, or 1/batches for a cumulative average).
//  * batch_norm_forward: y = (x - mean) * (invstd * weight) + bias [then ReLU]; a 2-D grid whose
//    y index walks the (n, c) planes, so the channel's scale is computed once per plane, not per
//    element. With from_variance the `scale_source` array holds a variance (eval mode: the running
//    variance) and invstd is computed from it here.
//  * batch_norm_backward: one block per channel, fused: the channel sums of g and g * xhat (g: dy,
//    masked by the recomputed ReLU when fused), which are dbias and dweight, then in the same block
//    dx = weight * invstd * (g - sum(g)/L - xhat * sum(g*xhat)/L) in training mode, or
//    weight * invstd * g in eval mode (constant statistics).
// Element offsets are 64-bit; a channel's elements are walked by stepping (n, i) rather than
// dividing each flat index.
// float16 (REAL_IS_HALF): x, y, dy, dx, weight, bias, dweight, dbias and the running statistics
// are FP16 in memory, and all math is acc_t (FP32), each stored value rounded once, as PyTorch
// computes half batch norm. The per-channel statistics the kernels hand each other (mean, invstd,
// or a variance with from_variance) are acc_t arrays: the forward normalises with the FP32
// statistics, not their float16 roundings (the launcher widens float16 ones it is given).

#include "common.cuh"

// block_sum (common.cuh), then a barrier: `partial` is written again by the next sum.
__device__ __forceinline__ acc_t channel_total(acc_t value, acc_t* partial)
{
    const acc_t total = block_sum(value, partial);
    __syncthreads();
    return total;
}

// Walks the elements t, t + BLOCK_THREADS, ... of one channel of an (N, C, HW) array as
// (n, i) pairs: offset(c) is the element's flat position.
struct ChannelCursor {
    long long n, i;
    __device__ explicit ChannelCursor(long long HW) : n(threadIdx.x / HW), i(threadIdx.x % HW) {}
    __device__ void advance(long long HW)
    {
        n += BLOCK_THREADS / HW;
        i += BLOCK_THREADS % HW;
        if (i >= HW) {
            i -= HW;
            ++n;
        }
    }
    __device__ long long offset(long long c, long long C, long long HW) const { return (n * C + c) * HW + i; }
};

__device__ __forceinline__ acc_t invstd_of(acc_t variance, acc_t eps)
{
    return (acc_t)1 / REAL_SQRT(variance + eps);
}

// The normalised, scaled and shifted value; forward and backward share it so the ReLU mask the
// backward recomputes is the forward's exactly.
__device__ __forceinline__ acc_t affine_normalized(acc_t x, acc_t mean, acc_t scale, acc_t bias)
{
    return (x - mean) * scale + bias;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
batch_norm_stats(const REAL* __restrict__ x, acc_t* __restrict__ mean, acc_t* __restrict__ invstd,
                 REAL* __restrict__ running_mean, REAL* __restrict__ running_var,
                 long long N, long long C, long long HW, acc_t eps, acc_t factor, int update_running)
{
    __shared__ acc_t partial[BLOCK_THREADS];
    const long long count = N * HW;
    for (long long c = blockIdx.x; c < C; c += gridDim.x) {
        acc_t sum = (acc_t)0;
        for (ChannelCursor e(HW); e.n < N; e.advance(HW))
            sum += to_acc(x[e.offset(c, C, HW)]);
        const acc_t mu = channel_total(sum, partial) / (acc_t)count;
        acc_t squares = (acc_t)0;
        for (ChannelCursor e(HW); e.n < N; e.advance(HW)) {
            const acc_t d = to_acc(x[e.offset(c, C, HW)]) - mu;
            squares += d * d;
        }
        const acc_t m2 = channel_total(squares, partial);
        if (threadIdx.x == 0) {
            mean[c] = mu;
            invstd[c] = invstd_of(m2 / (acc_t)count, eps);
            if (update_running) {
                running_mean[c] = to_real(((acc_t)1 - factor) * to_acc(running_mean[c]) + factor * mu);
                running_var[c] = to_real(((acc_t)1 - factor) * to_acc(running_var[c])
                                         + factor * (m2 / (acc_t)(count - 1)));
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
batch_norm_forward(const REAL* __restrict__ x, REAL* __restrict__ y, const acc_t* __restrict__ mean,
                   const acc_t* __restrict__ scale_source, const REAL* __restrict__ weight,
                   const REAL* __restrict__ bias, long long planes, int C, long long HW, acc_t eps,
                   int from_variance, int relu)
{
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int c = (int)(plane % C);
        const acc_t is = from_variance ? invstd_of(scale_source[c], eps) : scale_source[c];
        const acc_t mu = mean[c];
        const acc_t scale = is * to_acc(weight[c]);
        const acc_t shift = to_acc(bias[c]);
        const REAL* xp = x + plane * HW;
        REAL* yp = y + plane * HW;
        GRID_STRIDE_LOOP(i, HW) {
            const acc_t v = affine_normalized(to_acc(xp[i]), mu, scale, shift);
            yp[i] = to_real((relu && v < (acc_t)0) ? (acc_t)0 : v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
batch_norm_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,
                    const acc_t* __restrict__ scale_source, const REAL* __restrict__ weight,
                    const REAL* __restrict__ bias, REAL* __restrict__ dx, REAL* __restrict__ dweight,
                    REAL* __restrict__ dbias, long long N, long long C, long long HW, acc_t eps,
                    int from_variance, int training, int relu)
{
    __shared__ acc_t partial[BLOCK_THREADS];
    const long long count = N * HW;
    for (long long c = blockIdx.x; c < C; c += gridDim.x) {
        const acc_t is = from_variance ? invstd_of(scale_source[c], eps) : scale_source[c];
        const acc_t mu = mean[c];
        const acc_t scale = is * to_acc(weight[c]);
        const acc_t shift = to_acc(bias[c]);
        acc_t sum_g = (acc_t)0;
        acc_t sum_g_xhat = (acc_t)0;
        for (ChannelCursor e(HW); e.n < N; e.advance(HW)) {
            const long long at = e.offset(c, C, HW);
            const acc_t v = to_acc(x[at]);
            // ReLU's rule: no gradient where the output was <= 0
            const acc_t g = (relu && affine_normalized(v, mu, scale, shift) <= (acc_t)0) ? (acc_t)0 : to_acc(dy[at]);
            sum_g += g;
            sum_g_xhat += g * ((v - mu) * is);
        }
        const acc_t total_g = channel_total(sum_g, partial);
        const acc_t total_g_xhat = channel_total(sum_g_xhat, partial);
        if (threadIdx.x == 0) {
            dbias[c] = to_real(total_g);
            dweight[c] = to_real(total_g_xhat);
        }
        const acc_t mean_g = training ? total_g / (acc_t)count : (acc_t)0;
        const acc_t mean_g_xhat = training ? total_g_xhat / (acc_t)count : (acc_t)0;
        for (ChannelCursor e(HW); e.n < N; e.advance(HW)) {
            const long long at = e.offset(c, C, HW);
            const acc_t v = to_acc(x[at]);
            const acc_t g = (relu && affine_normalized(v, mu, scale, shift) <= (acc_t)0) ? (acc_t)0 : to_acc(dy[at]);
            dx[at] = to_real((g - mean_g - ((v - mu) * is) * mean_g_xhat) * scale);
        }
    }
}
