// Reductions along rows shared by the softmax-shaped kernels (loss.cu's cross entropy, softmax.cu):
// a row of `size` elements is either contiguous and reduced by one block, or `inner` elements
// apart and walked by one thread. Every order is fixed (no atomics), so results are bit-identical
// run to run. The maxima skip NaN (a comparison with NaN is false): a NaN element still makes its
// row's exp sum, and so every output of the row, NaN.

#include "common.cuh"

// a or b, whichever is larger; b where a is NaN
static __device__ __forceinline__ acc_t larger(acc_t a, acc_t b) { return a > b ? a : b; }

// Sum (or max) of one value per thread over the block; every thread gets the result. blockDim.x
// is a power of two; the trailing barrier lets the caller reuse `scratch` at once.
__device__ acc_t block_reduce(acc_t value, acc_t* scratch, bool take_max)
{
    const int t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (t < half) {
            const acc_t other = scratch[t + half];
            scratch[t] = take_max ? larger(other, scratch[t]) : scratch[t] + other;
        }
        __syncthreads();
    }
    const acc_t result = scratch[0];
    __syncthreads();
    return result;
}

// The maximum of the contiguous row x[0, size) (-inf for a row of NaN) by the whole block, thread
// t (threadIdx.x) taking the elements `threads` (blockDim.x) apart from t; every thread gets it.
// t and threads come from the caller, whose loops use them too: read again here, they cost
// the cross entropy 8 more registers.
static __device__ __forceinline__ acc_t block_row_max(const REAL* x, int size, int t, int threads, acc_t* scratch)
{
    acc_t row_max = REAL_NEG_INF;
    for (int j = t; j < size; j += threads)
        row_max = larger(to_acc(x[j]), row_max);
    return block_reduce(row_max, scratch, true);
}

// The maximum of the `size` elements x[first + k * inner] by one thread; e steps rather than
// multiplies (fewer registers).
static __device__ __forceinline__ acc_t strided_row_max(const REAL* x, long long first, int size, long long inner)
{
    acc_t row_max = REAL_NEG_INF;
    long long e = first;
    for (int k = 0; k < size; ++k, e += inner)
        row_max = larger(to_acc(x[e]), row_max);
    return row_max;
}

// How a row's elements are shared among the threads that reduce it (distance.cu, loss.cu's margin
// and embedding losses): a thread takes elements first, first + step, ... in order, and sum()
// (max_or_nan()) combines the threads' partial sums (maxima); every thread of the row calls them alike.
//  * by_block: a contiguous row a block; thread t takes elements t, t + blockDim.x, ... (a warp
//    reads 32 neighbouring elements: coalesced), combined by block_reduce's fixed-order tree.
//  * else a row a thread, its elements in order (rows `inner` > 1 apart: neighbouring threads
//    already read neighbouring elements).
// One type with a flag, not one a layout: NVRTC takes no generic lambdas for the kernels' row bodies.
struct RowWalk {
    int first, step;
    bool by_block;
    acc_t* scratch;   // BLOCK_THREADS acc_t of shared memory
    __device__ bool leader() const { return first == 0; }
    __device__ acc_t sum(acc_t partial) const { return by_block ? block_reduce(partial, scratch, false) : partial; }
    // the row's maximum, NaN where any thread's partial is NaN (block_reduce's maximum skips NaN)
    __device__ acc_t max_or_nan(acc_t partial) const
    {
        if (!by_block)
            return partial;
        const acc_t largest = block_reduce(partial, scratch, true);
        return block_reduce(partial != partial ? (acc_t)1 : (acc_t)0, scratch, false) != (acc_t)0 ? REAL_NAN : largest;
    }
};

// body(row, walk) for each row of (outer, size, inner), rows = outer * inner: a block a row where
// they are contiguous (inner == 1; grid-stride over the rows, the host launching a power of two of
// threads: row_threads), else a thread a row (grid-stride; blocks of BLOCK_THREADS).
// `scratch`: BLOCK_THREADS acc_t of shared memory.
template <class Body>
__device__ __forceinline__ void for_each_row(long long rows, long long inner, acc_t* scratch, Body body)
{
    const bool by_block = inner == 1;
    const RowWalk walk{by_block ? (int)threadIdx.x : 0, by_block ? (int)blockDim.x : 1, by_block, scratch};
    const long long first = by_block ? (long long)blockIdx.x : (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    const long long step = by_block ? (long long)gridDim.x : (long long)gridDim.x * BLOCK_THREADS;
    for (long long row = first; row < rows; row += step)
        body(row, walk);
}
