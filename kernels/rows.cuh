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
