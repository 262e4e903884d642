// Chunked per-channel reductions (reduce.cu's channel_sum_block, batch_norm.cu's statistics and
// backward sums): a channel's L elements, in (n, i) order of an (N, C, HW) view, cut into chunks
// of CHUNK; block (channel, chunk) reduces one chunk with ACCUMULATORS loads in flight per
// thread, and the block that completes a channel's last chunk combines the chunk partials. The
// moments' merge and the arrival count also serve row_norm.cu's slices of long rows.

#include "common.cuh"

// Count, mean and sum of squared deviations of a set of values (Welford; Chan et al.'s merge).
struct Moments {
    acc_t n, mean, m2;   // n: exact in float32 up to 2^24 elements a channel, a relative 6e-8 off beyond
};

// a then b, in that order (the result depends on it only by rounding)
__device__ __forceinline__ Moments merged(const Moments& a, const Moments& b)
{
    if (b.n == (acc_t)0) return a;
    if (a.n == (acc_t)0) return b;
    const acc_t n = a.n + b.n, d = b.mean - a.mean, share = b.n / n;
    return Moments{n, a.mean + d * share, a.m2 + b.m2 + d * d * (a.n * share)};
}

#define CHUNK (BLOCK_THREADS * 16)   // elements per block (cnn_gpu.gpu.reduce.CHUNK)
#define ACCUMULATORS 4

// (acc[0] + acc[1]) + (acc[2] + acc[3])
__device__ __forceinline__ acc_t fold(const acc_t (&acc)[ACCUMULATORS])
{
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Walks elements e = first, first + 256, ... of channel c of an (N, C, HW) array (e = n*HW + i):
// `offset` is the element's flat position (n*C + c)*HW + i, advanced by additions alone (the
// multiplications and divisions of computing it anew were most of a reduction's instructions).
// The position i in the plane is an int: HW <= CURSOR_PLANE_LIMIT (the launchers refuse larger
// planes, and view a one-channel sum as planes of one element), so i + 256 never overflows.
#define CURSOR_PLANE_LIMIT (1 << 30)   // cnn_gpu.gpu.reduce.CURSOR_PLANE_LIMIT
struct ChannelCursor {
    long long offset;
    int i;
    const int HW, step_i;
    const long long jump, wrap;   // jump: 256 elements on; wrap: (C - 1)*HW more when i passes HW
    __device__ ChannelCursor(long long first, long long c, long long C, long long HW_)
        : i((int)(first % HW_)), HW((int)HW_), step_i((int)(BLOCK_THREADS % HW_)),
          jump((BLOCK_THREADS / HW_) * C * HW_ + BLOCK_THREADS % HW_), wrap((C - 1) * HW_)
    {
        offset = ((first / HW_) * C + c) * HW_ + i;
    }
    __device__ void advance()
    {
        i += step_i;
        offset += jump;
        if (i >= HW) {   // into the next n: (n + 1)*C*HW, less the HW that i gave back
            i -= HW;
            offset += wrap;
        }
    }
};

// A reduction block's place: channel c, chunk `chunk` of `chunks`, elements [first, end) of it for
// thread t (first = the chunk's start + t).
struct ChunkOfChannel {
    long long c, chunk, chunks, first, end;
    __device__ ChunkOfChannel(long long length)
    {
        chunks = (length + CHUNK - 1) / CHUNK;
        c = blockIdx.x / chunks;
        chunk = blockIdx.x - c * chunks;
        first = chunk * CHUNK + threadIdx.x;
        end = min(length, chunk * CHUNK + CHUNK);
    }
};

// Runs round(live) over this thread's elements of its chunk, COUNT (ACCUMULATORS unless given) of
// them a round, 256 apart: live is COUNT in every full round (a constant once inlined, so a round's
// per-element `u < live` tests leave the hot loop) and the number of elements left in the last,
// partial one.
template <int COUNT = ACCUMULATORS, typename Round>
__device__ __forceinline__ void for_each_round(const ChunkOfChannel& at, Round round)
{
    long long k = at.first;
#pragma unroll 1
    for (; k + (COUNT - 1) * BLOCK_THREADS < at.end; k += COUNT * BLOCK_THREADS)
        round(COUNT);
    if (k < at.end)
        round((int)((at.end - k + BLOCK_THREADS - 1) / BLOCK_THREADS));
}

// Whether this block is the last of its channel's `chunks` to arrive (thread 0 counts it, after
// its partials are visible); the answer is in every thread. The last block resets the count.
__device__ __forceinline__ bool last_to_arrive(unsigned int* arrivals, long long c, long long chunks, int* flag)
{
    if (threadIdx.x == 0) {
        __threadfence();   // the partials are visible before the arrival that counts them
        const bool last = atomicAdd(&arrivals[c], 1u) == (unsigned int)(chunks - 1);
        if (last) arrivals[c] = 0u;   // no block of this launch counts here again
        *flag = last;
    }
    __syncthreads();
    if (*flag) __threadfence();
    return *flag;
}

