// Per-channel sums: `a` viewed as (outer, channels, inner) -> out[channels].
//
// Used for bias gradients (dy (N, K, P*Q): outer=N, channels=K, inner=P*Q; linear dy (B, F):
// outer=B, channels=F, inner=1) and for folding a split-K workspace (splits, elements): outer=
// splits, channels=elements, inner=1.
//
// Not a GEMM; a reduction of length L = outer*inner per channel. Two kernels, chosen on the host
// from the shape alone (so the choice, and every result, is reproducible):
//  * channel_sum_block: one 256-thread block per channel. Thread t adds elements t, t+256, ...
//    of its channel in that order, then a shared-memory halving tree adds the 256 partials.
//    For long reductions (bias gradients over N*P*Q).
//  * channel_sum_column: inner == 1 and short reductions (split-K workspaces): one thread per
//    channel adds rows 0..outer-1 in order; neighbouring threads read neighbouring channels,
//    so every row is read coalesced.
// Both orders are fixed by the shape: results are bit-identical run to run (no atomics).
// Indices are 64-bit: outer*channels*inner may exceed 2^31.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
channel_sum_block(const REAL* __restrict__ a, REAL* __restrict__ out,
                  long long outer, long long channels, long long inner)
{
    __shared__ REAL partial[BLOCK_THREADS];
    const long long c = blockIdx.x;
    const int t = threadIdx.x;
    // Walk elements e = t + k*256 of the channel as (o, i) with e = o*inner + i, stepping the
    // decode instead of dividing each element.
    const long long step_o = BLOCK_THREADS / inner;
    const long long step_i = BLOCK_THREADS % inner;
    long long o = t / inner;
    long long i = t % inner;
    REAL sum = (REAL)0;
    while (o < outer) {
        sum += a[(o * channels + c) * inner + i];
        o += step_o;
        i += step_i;
        if (i >= inner) {
            i -= inner;
            ++o;
        }
    }
    partial[t] = sum;
    __syncthreads();
    for (int half = BLOCK_THREADS / 2; half > 0; half >>= 1) {
        if (t < half)
            partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t == 0)
        out[c] = partial[0];
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
channel_sum_column(const REAL* __restrict__ a, REAL* __restrict__ out,
                   long long outer, long long channels)
{
    const long long c = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    if (c >= channels)
        return;
    REAL sum = (REAL)0;
    for (long long o = 0; o < outer; ++o)
        sum += a[o * channels + c];
    out[c] = sum;
}

// Split-K partials of a convolution output viewed as (splits, outer, channels, inner):
// out[e] = the partials of element e summed over splits in order, plus bias[channel] when
// has_bias, then ReLU when relu (NaN passes through) - the epilogue the split GEMM kernel left out.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
split_sum_epilogue(const REAL* __restrict__ a, const REAL* __restrict__ bias, REAL* __restrict__ out,
                   long long splits, long long elements, long long channels, long long inner,
                   int has_bias, int relu)
{
    GRID_STRIDE_LOOP(e, elements) {
        REAL sum = a[e];
        for (long long s = 1; s < splits; ++s)
            sum += a[s * elements + e];
        if (has_bias) sum += bias[(e / inner) % channels];
        if (relu && sum < (REAL)0) sum = (REAL)0;
        out[e] = sum;
    }
}
