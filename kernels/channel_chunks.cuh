// Chunked per-channel reductions (reduce.cu's channel_sum_block, batch_norm.cu's statistics and
// backward sums): a channel's L elements, in (n, i) order of an (N, C, HW) view, cut into chunks
// of CHUNK; block (channel, chunk) reduces one chunk with ACCUMULATORS loads in flight per
// thread, and the block that completes a channel's last chunk combines the chunk partials.

#include "common.cuh"

#define CHUNK (BLOCK_THREADS * 16)   // elements per block (cnn_gpu.gpu.reduce.CHUNK)
#define ACCUMULATORS 4

// (acc[0] + acc[1]) + (acc[2] + acc[3])
__device__ __forceinline__ acc_t fold(const acc_t (&acc)[ACCUMULATORS])
{
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Walks elements e = first, first + 256, ... of one channel of an (N, C, HW) array as (n, i)
// pairs with e = n*HW + i: offset(c) is the element's flat position.
struct ChannelCursor {
    long long n, i;
    const long long HW;
    const int step_n, step_i;
    __device__ ChannelCursor(long long first, long long HW_)
        : n(first / HW_), i(first % HW_), HW(HW_), step_n((int)(BLOCK_THREADS / HW_)),
          step_i((int)(BLOCK_THREADS % HW_)) {}
    __device__ void advance()
    {
        n += step_n;
        i += step_i;
        if (i >= HW) {
            i -= HW;
            ++n;
        }
    }
    __device__ long long offset(long long c, long long C) const { return (n * C + c) * HW + i; }
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

