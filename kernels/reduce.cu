// Per-channel sums: `a` viewed as (outer, channels, inner) -> out[channels].
//
// Used for bias gradients (dy (N, K, P*Q): outer=N, channels=K, inner=P*Q; linear dy (B, F):
// outer=B, channels=F, inner=1), for loss means (outer=channels=1) and for folding a split-K
// workspace (splits, elements): outer=splits, channels=elements, inner=1.
//
// Not a GEMM; a reduction of length L = outer*inner per channel, bound by DRAM bandwidth. Two
// kernels, chosen on the host from the shape alone (so the choice, and every result, is
// reproducible):
//  * channel_sum_block, two levels in one launch: a channel's L elements (in (o, i) order) are cut
//    into chunks of CHUNK; block (channel, chunk) has its 256 threads add elements t, t + 256, ...
//    of the chunk into 4 independent accumulators in turn (4 loads in flight per thread, float16
//    8), adds those in a fixed order, then a shared-memory halving tree adds the 256 partials. The block
//    that completes a channel's last chunk (an arrival counter) adds the channel's chunk partials
//    the same way. So thousands of blocks stream a bias gradient or a loss mean at DRAM speed.
//  * channel_sum_column: inner == 1 and short reductions (split-K workspaces): one thread per
//    channel adds rows 0..outer-1 into 4 accumulators in turn; neighbouring threads read
//    neighbouring channels, so every row is read coalesced.
// Every order is fixed by the shape: results are bit-identical run to run, whichever block
// arrives last. Indices are 64-bit: outer*channels*inner may exceed 2^31 (inner, a plane, at most
// CURSOR_PLANE_LIMIT in channel_sum_block: channel_chunks.cuh; one channel's sum comes as planes of one).
// The float16 build reads FP16 (split_sum_epilogue: FP32 partials), adds in FP32 (acc_t; chunk
// partials too) and rounds each output once: the same sums, in the same order, as the float32
// build on the widened array.

#include "channel_chunks.cuh"

// Elements a thread loads a round: float16 two rounds of the accumulators at once (16 bytes in
// flight, as float32's 4 elements; the same additions in the same order, so the same sums)
#define SUM_LOADS (REAL_IS_HALF ? 2 * ACCUMULATORS : ACCUMULATORS)

// grid: channels * chunks blocks (chunks = ceil(L / CHUNK)), block b summing chunk b % chunks of
// channel b / chunks; partial (channels * chunks) and arrivals (channels, zero; left zero) are
// workspaces, unused when chunks == 1
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
channel_sum_block(const REAL* __restrict__ a, REAL* __restrict__ out, acc_t* __restrict__ partial,
                  unsigned int* __restrict__ arrivals, long long outer, long long channels, long long inner)
{
    __shared__ acc_t tree[BLOCK_THREADS];
    __shared__ int last;
    const ChunkOfChannel at(outer * inner);
    const long long c = at.c, chunks = at.chunks;
    const int t = threadIdx.x;
    ChannelCursor e(at.first, c, channels, inner);   // element e = o*inner + i of the channel as (o, i)
    acc_t acc[ACCUMULATORS] = {(acc_t)0, (acc_t)0, (acc_t)0, (acc_t)0};
    for_each_round<SUM_LOADS>(at, [&](int live) {
        acc_t v[SUM_LOADS];
#pragma unroll
        for (int u = 0; u < SUM_LOADS; ++u) {   // the loads first: all in flight
            if (u < live) v[u] = to_acc(a[e.offset]);
            e.advance();
        }
#pragma unroll
        for (int u = 0; u < SUM_LOADS; ++u)   // element k + 256u into accumulator u % 4, as 4 a round
            if (u < live) acc[u % ACCUMULATORS] += v[u];
    });
    const acc_t sum = block_sum(fold(acc), tree);
    if (chunks == 1) {
        if (t == 0) out[c] = to_real(sum);
        return;
    }
    if (t == 0) partial[c * chunks + at.chunk] = sum;
    if (!last_to_arrive(arrivals, c, chunks, &last)) return;
    // other blocks' partials through L2 (__ldcg): this SM's L1 may hold a stale line of them, from a
    // neighbouring channel this SM summed before
    acc_t more[ACCUMULATORS] = {(acc_t)0, (acc_t)0, (acc_t)0, (acc_t)0};
#pragma unroll 1
    for (long long k = t; k < chunks; k += ACCUMULATORS * BLOCK_THREADS) {
#pragma unroll
        for (int u = 0; u < ACCUMULATORS; ++u)
            if (k + u * BLOCK_THREADS < chunks) more[u] += __ldcg(&partial[c * chunks + k + u * BLOCK_THREADS]);
    }
    const acc_t total = block_sum(fold(more), tree);
    if (t == 0) out[c] = to_real(total);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
channel_sum_column(const REAL* __restrict__ a, REAL* __restrict__ out,
                   long long outer, long long channels)
{
    const long long c = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    if (c >= channels)
        return;
    acc_t acc[ACCUMULATORS] = {(acc_t)0, (acc_t)0, (acc_t)0, (acc_t)0};
    const REAL* row = a + c;
#pragma unroll 1
    for (long long o = 0; o < outer; o += ACCUMULATORS) {
#pragma unroll
        for (int k = 0; k < ACCUMULATORS; ++k)
            if (o + k < outer) acc[k] += to_acc(row[(o + k) * channels]);
    }
    out[c] = to_real(fold(acc));
}

// Split-K partials of a convolution output viewed as (splits, outer, channels, inner), in acc_t
// (the FP32 workspace of a float16 pass): out[e] = the partials of element e summed over splits 0,
// 1, 2, ... in that order, plus bias[channel] when has_bias, then ReLU when relu (NaN passes
// through), rounded to REAL once - the epilogue the split GEMM kernel left out.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
split_sum_epilogue(const acc_t* __restrict__ a, const REAL* __restrict__ bias, REAL* __restrict__ out,
                   long long splits, long long elements, long long channels, long long inner,
                   int has_bias, int relu)
{
    GRID_STRIDE_LOOP(e, elements) {
        acc_t sum = a[e];
        for (long long s = 1; s < splits; ++s)
            sum += a[s * elements + e];
        if (has_bias) sum += to_acc(bias[(e / inner) % channels]);
        if (relu && sum < (acc_t)0) sum = (acc_t)0;
        out[e] = to_real(sum);
    }
}
