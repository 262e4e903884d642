// Batch normalisation over NCHW (any x viewed as (N, C, HW)), PyTorch's semantics.
//
// Not a GEMM: per-channel reductions of length L = N*HW and element-wise maps, bound by DRAM
// bandwidth. The reductions run thousands of blocks, with 4 (statistics; float16 8) or 8 (backward
// sums) loads in flight per thread: a channel's L elements (in (n, i) order) are cut into chunks of
// CHUNK, block (channel, chunk) reduces one chunk, and the block that completes a channel's last
// chunk (an arrival count, reset by that block) combines the channel's chunk partials. (One block
// per channel would leave most of a GPU idle on ResNet's 64-channel layers.)
// Every order is fixed by the shape: results are bit-identical run to run, whichever block
// arrives last.
//  * batch_norm_stats: one pass over x. Thread t takes elements t, t + 256, ... of its block's
//    chunk into 4 accumulators in turn, each a running (count, mean, M2) updated per element
//    (Welford: no E[x^2] - E[x]^2 cancellation in float32, and no second pass), merged with
//    Chan et al.'s formula in a fixed order: the 4, then a shared-memory halving tree of the 256
//    threads, then the channel's chunks. Writes mean and invstd = 1/sqrt(var + eps) with the
//    biased variance, and, when update_running, blends the mean and the unbiased variance into
//    the running statistics with `factor` (momentum, or 1/batches for a cumulative average).
//  * batch_norm_forward: y = act((x - mean) * (invstd * weight) + bias), act the fused activation
//    (none, ReLU, ReLU6, Hardswish or SiLU: activations.cuh, elementwise.cu's); a 2-D grid whose
//    y index walks the (n, c) planes (for_each_plane_element: 4 elements a thread, float16 8, so
//    16 bytes in flight either way; several small planes a block), so a large plane's scale is
//    computed once a round, not per element. With from_variance the `scale_source` array holds a
//    variance (eval mode: the running variance) and invstd is computed from it here.
//  * batch_norm_backward_sums: the channel sums of g and g * xhat (g: dy through the fused
//    activation's gradient, dy itself without one), which are dbias and dweight; also kept in acc_t for:
//  * batch_norm_backward_dx: dx = weight * invstd * (g - sum(g)/L - xhat * sum(g*xhat)/L) in
//    training mode, or weight * invstd * g in eval mode (constant statistics); the forward's grid.
// The fused activation's gradient needs its input, the normalised value v = bn(x): both backward
// kernels recompute it from x (which they load anyway, for xhat) and the channel's statistics,
// rather than the forward saving it. Saving v would cost the forward a second write of the whole
// activation and the backward a third array to read: the very pass the fusion removes. Recomputing
// costs an FMA an element in kernels bound by DRAM, and the forward and backward evaluate the same
// inline expression (affine_normalized), so the backward sees the forward's v to the bit: the
// kinks (ReLU's 0, ReLU6's 0 and 6, Hardswish's -3 and 3) fall where the forward's did.
// float16: v stays FP32 (the unfused pair rounds it to float16 between the two kernels, and the
// activation's gradient again before the batch norm's backward), so y, dx, dweight and dbias are
// each rounded once: within a float16 ulp of the unfused pair's, and the NumPy oracle's exactly
// as it computes them the same way.
// Element offsets are 64-bit (a plane's HW at most CURSOR_PLANE_LIMIT: channel_chunks.cuh); a
// channel's elements are walked by stepping (n, i) rather than dividing each flat index.
// float16 (REAL_IS_HALF): x, y, dy, dx, weight, bias, dweight, dbias and the running statistics
// are FP16 in memory, and all math is acc_t (FP32), each stored value rounded once, as PyTorch
// computes half batch norm. The per-channel statistics the kernels hand each other (mean, invstd,
// or a variance with from_variance, and the backward's sums) are acc_t arrays: the forward
// normalises with the FP32 statistics, not their float16 roundings (the launcher widens float16
// ones it is given).

#include "activations.cuh"
#include "channel_chunks.cuh"
#include "plane_walk.cuh"

// The moments of one value per thread over the block by a shared-memory halving tree (a fixed
// order). Only thread 0's result is the block's.
__device__ Moments block_moments(Moments s, acc_t* tree)
{
    const int t = threadIdx.x;
    for (int half = BLOCK_THREADS / 2; half > 0; half >>= 1) {
        if (t >= half && t < 2 * half) {
            tree[3 * (t - half)] = s.n;
            tree[3 * (t - half) + 1] = s.mean;
            tree[3 * (t - half) + 2] = s.m2;
        }
        __syncthreads();
        if (t < half) s = merged(s, Moments{tree[3 * t], tree[3 * t + 1], tree[3 * t + 2]});
        __syncthreads();
    }
    return s;
}

__device__ __forceinline__ acc_t invstd_of(acc_t variance, acc_t eps)
{
    return (acc_t)1 / REAL_SQRT(variance + eps);
}

// The normalised, scaled and shifted value; forward and backward share it so the activation input
// the backward recomputes is the forward's exactly.
__device__ __forceinline__ acc_t affine_normalized(acc_t x, acc_t mean, acc_t scale, acc_t bias)
{
    return (x - mean) * scale + bias;
}

// Elements a thread's round loads: 8 in float16 (4 of 2 bytes held too few in flight for DRAM speed:
// tests/test_sass.py), two of float32's rounds at once, else ACCUMULATORS. 3 blocks an SM in float64
// (64 registers, MIN_BLOCKS' 4, spilled on sm_70).
#define STATS_LOADS (REAL_IS_HALF ? 2 * ACCUMULATORS : ACCUMULATORS)
#define STATS_MIN_BLOCKS (REAL_IS_DOUBLE ? 3 : MIN_BLOCKS)

// grid: C * chunks blocks (chunks = ceil(N*HW / CHUNK)); partial (C * chunks * 2: mean, M2) and
// arrivals (C, zero) are workspaces, unused when chunks == 1
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, STATS_MIN_BLOCKS)
batch_norm_stats(const REAL* __restrict__ x, acc_t* __restrict__ mean, acc_t* __restrict__ invstd,
                 REAL* __restrict__ running_mean, REAL* __restrict__ running_var, acc_t* __restrict__ partial,
                 unsigned int* __restrict__ arrivals, long long N, long long C, long long HW, acc_t eps,
                 acc_t factor, int update_running)
{
    __shared__ acc_t tree[3 * BLOCK_THREADS / 2];
    __shared__ int last;
    const long long length = N * HW;
    const ChunkOfChannel at(length);
    // Accumulator u takes elements first + 256*(ACCUMULATORS*j + u), update j: all take one in each
    // full pass of ACCUMULATORS elements (one count and one reciprocal for them), those of a last
    // partial pass a prefix of them. A float16 round is two passes, float32's two rounds: the same
    // updates in the same order, so float16's moments are float32's of the widened values.
    acc_t means[ACCUMULATORS] = {}, m2s[ACCUMULATORS] = {};
    int passes = 0;
    ChannelCursor e(at.first, at.c, C, HW);
    for_each_round<STATS_LOADS>(at, [&](int live) {
        acc_t v[STATS_LOADS];
#pragma unroll
        for (int u = 0; u < STATS_LOADS; ++u) {   // the loads first: all in flight
            if (u < live) v[u] = to_acc(x[e.offset]);
            e.advance();
        }
#pragma unroll
        for (int pass = 0; pass < STATS_LOADS; pass += ACCUMULATORS) {
            if (pass >= live) break;
            const acc_t share = (acc_t)1 / (acc_t)(++passes);   // Welford: mean += (v - mean) / n
#pragma unroll
            for (int u = 0; u < ACCUMULATORS; ++u) {
                if (pass + u < live) {
                    const acc_t d = v[pass + u] - means[u];
                    means[u] += d * share;
                    m2s[u] += d * (v[pass + u] - means[u]);
                }
            }
        }
    });
    // passes counts the partial pass too: accumulator u missed it where its element lay past the end
    const long long last_pass = at.first + (long long)(passes - 1) * ACCUMULATORS * BLOCK_THREADS;
    Moments acc[ACCUMULATORS];
#pragma unroll
    for (int u = 0; u < ACCUMULATORS; ++u)
        acc[u] = Moments{(acc_t)(passes - (passes > 0 && last_pass + u * BLOCK_THREADS >= at.end)), means[u], m2s[u]};
    Moments s = block_moments(merged(merged(acc[0], acc[1]), merged(acc[2], acc[3])), tree);
    if (at.chunks > 1) {
        if (threadIdx.x == 0) {
            partial[2 * blockIdx.x] = s.mean;
            partial[2 * blockIdx.x + 1] = s.m2;
        }
        if (!last_to_arrive(arrivals, at.c, at.chunks, &last)) return;
        // thread t merges chunks t, t + 256, ... in order (each of CHUNK elements but the last), then
        // the tree merges the threads; other blocks' partials through L2 (__ldcg): this SM's L1 may
        // hold a stale line of them
        s = Moments{};
        for (long long k = threadIdx.x; k < at.chunks; k += BLOCK_THREADS) {
            const long long base = 2 * (at.c * at.chunks + k);
            const acc_t n = (acc_t)min((long long)CHUNK, length - k * CHUNK);
            s = merged(s, Moments{n, __ldcg(&partial[base]), __ldcg(&partial[base + 1])});
        }
        s = block_moments(s, tree);
    }
    if (threadIdx.x == 0) {
        const long long c = at.c;
        mean[c] = s.mean;
        invstd[c] = invstd_of(s.m2 / (acc_t)length, eps);
        if (update_running) {
            running_mean[c] = to_real(((acc_t)1 - factor) * to_acc(running_mean[c]) + factor * s.mean);
            running_var[c] = to_real(((acc_t)1 - factor) * to_acc(running_var[c])
                                     + factor * (s.m2 / (acc_t)(length - 1)));
        }
    }
}

// A channel's constants: invstd, mean, weight*invstd and the bias.
struct ChannelAffine {
    acc_t is, mu, scale, shift;
    __device__ ChannelAffine(const acc_t* mean, const acc_t* scale_source, const REAL* weight, const REAL* bias,
                             long long c, acc_t eps, int from_variance)
        : is(from_variance ? invstd_of(scale_source[c], eps) : scale_source[c]), mu(mean[c]),
          scale(is * to_acc(weight[c])), shift(to_acc(bias[c])) {}
};

// The fused activation, an argument of the element passes (cnn_gpu.gpu.batch_norm.ACTIVATION_CODES)
#define ACTIVATION_NONE 0
#define ACTIVATION_RELU 1
#define ACTIVATION_RELU6 2
#define ACTIVATION_HARDSWISH 3
#define ACTIVATION_SILU 4

__device__ __forceinline__ acc_t activated(acc_t v, int activation)
{
    switch (activation) {
    case ACTIVATION_RELU: return relu_of(v);
    case ACTIVATION_RELU6: return clamp_of(v, (acc_t)0, (acc_t)6);   // F.relu6: hardtanh(v, 0, 6)
    case ACTIVATION_HARDSWISH: return hardswish_of(v);
    case ACTIVATION_SILU: return silu_of(v);
    default: return v;
    }
}

// g: dy through the fused activation's gradient at its input v (dy without an activation)
__device__ __forceinline__ acc_t activation_gradient(acc_t dy, acc_t v, int activation)
{
    switch (activation) {
    case ACTIVATION_RELU: return relu_gradient(dy, v);
    case ACTIVATION_RELU6: return hardtanh_gradient(dy, v, (acc_t)0, (acc_t)6);
    case ACTIVATION_HARDSWISH: return hardswish_gradient(dy, v);
    case ACTIVATION_SILU: return silu_gradient(dy, v);
    default: return dy;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
batch_norm_forward(const REAL* __restrict__ x, REAL* __restrict__ y, const acc_t* __restrict__ mean,
                   const acc_t* __restrict__ scale_source, const REAL* __restrict__ weight,
                   const REAL* __restrict__ bias, long long planes, int C, long long HW, acc_t eps,
                   int from_variance, int activation)
{
    for_each_plane_element(planes, HW,
        [&](long long plane) { return ChannelAffine(mean, scale_source, weight, bias, plane % C, eps, from_variance); },
        [&](long long offset) { return Loaded<1>{{x[offset]}}; },
        [&](long long offset, const ChannelAffine& a, const Loaded<1>& in) {
            y[offset] = to_real(activated(affine_normalized(to_acc(in.v[0]), a.mu, a.scale, a.shift), activation));
        });
}

// g of an element x with gradient dy, its channel's constants `a`
__device__ __forceinline__ acc_t gradient_through_activation(acc_t dy, acc_t x, const ChannelAffine& a, int activation)
{
    return activation_gradient(dy, affine_normalized(x, a.mu, a.scale, a.shift), activation);
}

// grid: C * chunks blocks, as batch_norm_stats; sums (2C): the totals of g and g*xhat in acc_t for
// batch_norm_backward_dx; partial (C * chunks * 2) and arrivals (C, zero) workspaces, unused when
// chunks == 1
// 3 blocks an SM, not MIN_BLOCKS' 4: 85 registers for the 8 loads in flight of a float64 thread
// (24 KB in flight an SM in float32, 48 KB in float64: plenty to stream at DRAM speed). float64 2
// blocks: a fused SiLU's double exp and divisions beside the 8 loads spilled at 85 registers (32 KB in
// flight an SM still streams; the backward kernels' SiLU gradient sets their float64 register needs).
#define SUMS_MIN_BLOCKS (REAL_IS_DOUBLE ? 2 : 3)

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, SUMS_MIN_BLOCKS)
batch_norm_backward_sums(const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,
                         const acc_t* __restrict__ scale_source, const REAL* __restrict__ weight,
                         const REAL* __restrict__ bias, REAL* __restrict__ dweight, REAL* __restrict__ dbias,
                         acc_t* __restrict__ sums, acc_t* __restrict__ partial, unsigned int* __restrict__ arrivals,
                         long long N, long long C, long long HW, acc_t eps, int from_variance, int activation)
{
    __shared__ acc_t tree[BLOCK_THREADS];
    __shared__ int last;
    const ChunkOfChannel at(N * HW);
    const ChannelAffine a(mean, scale_source, weight, bias, at.c, eps, from_variance);
    acc_t sum_g[ACCUMULATORS] = {}, sum_g_xhat[ACCUMULATORS] = {};
    ChannelCursor e(at.first, at.c, C, HW);
    for_each_round(at, [&](int live) {
        acc_t v[ACCUMULATORS], d[ACCUMULATORS];
#pragma unroll
        for (int u = 0; u < ACCUMULATORS; ++u) {   // the loads first: 8 in flight
            if (u < live) {
                v[u] = to_acc(x[e.offset]);
                d[u] = to_acc(dy[e.offset]);
            }
            e.advance();
        }
#pragma unroll
        for (int u = 0; u < ACCUMULATORS; ++u) {
            if (u < live) {
                const acc_t g = gradient_through_activation(d[u], v[u], a, activation);
                sum_g[u] += g;
                sum_g_xhat[u] += g * ((v[u] - a.mu) * a.is);
            }
        }
    });
    acc_t total_g = block_sum(fold(sum_g), tree);
    __syncthreads();
    acc_t total_g_xhat = block_sum(fold(sum_g_xhat), tree);
    if (at.chunks > 1) {
        if (threadIdx.x == 0) {
            partial[2 * blockIdx.x] = total_g;
            partial[2 * blockIdx.x + 1] = total_g_xhat;
        }
        if (!last_to_arrive(arrivals, at.c, at.chunks, &last)) return;
        acc_t chunks_g = (acc_t)0, chunks_g_xhat = (acc_t)0;   // thread t: chunks t, t + 256, ..., in order
        for (long long k = threadIdx.x; k < at.chunks; k += BLOCK_THREADS) {   // through L2, as in batch_norm_stats
            chunks_g += __ldcg(&partial[2 * (at.c * at.chunks + k)]);
            chunks_g_xhat += __ldcg(&partial[2 * (at.c * at.chunks + k) + 1]);
        }
        __syncthreads();   // the tree is written again
        total_g = block_sum(chunks_g, tree);
        __syncthreads();
        total_g_xhat = block_sum(chunks_g_xhat, tree);
    }
    if (threadIdx.x == 0) {
        dbias[at.c] = to_real(total_g);
        dweight[at.c] = to_real(total_g_xhat);
        sums[at.c] = total_g;
        sums[C + at.c] = total_g_xhat;
    }
}

// A channel's constants for dx: its affine, and in training mode the means of g and g * xhat.
struct ChannelGradient {
    ChannelAffine affine;
    acc_t mean_g, mean_g_xhat;
};

// grid: batch_norm_forward's over the (n, c) planes. float64 3 blocks an SM, not MIN_BLOCKS' 4: a
// fused SiLU's gradient spilled at 64 registers (48 KB in flight an SM at 3)
#define DX_MIN_BLOCKS (REAL_IS_DOUBLE ? 3 : MIN_BLOCKS)

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, DX_MIN_BLOCKS)
batch_norm_backward_dx(const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,
                       const acc_t* __restrict__ scale_source, const REAL* __restrict__ weight,
                       const REAL* __restrict__ bias, const acc_t* __restrict__ sums, REAL* __restrict__ dx,
                       long long planes, int C, long long HW, long long count, acc_t eps, int from_variance,
                       int training, int activation)
{
    for_each_plane_element(planes, HW,
        [&](long long plane) {
            const long long c = plane % C;
            return ChannelGradient{ChannelAffine(mean, scale_source, weight, bias, c, eps, from_variance),
                                   training ? sums[c] / (acc_t)count : (acc_t)0,
                                   training ? sums[C + c] / (acc_t)count : (acc_t)0};
        },
        [&](long long offset) { return Loaded<2>{{x[offset], dy[offset]}}; },
        [&](long long offset, const ChannelGradient& k, const Loaded<2>& in) {
            const ChannelAffine& a = k.affine;
            const acc_t v = to_acc(in.v[0]);
            const acc_t g = gradient_through_activation(to_acc(in.v[1]), v, a, activation);
            dx[offset] = to_real((g - k.mean_g - ((v - a.mu) * a.is) * k.mean_g_xhat) * a.scale);
        });
}
