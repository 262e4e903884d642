// Softmax and log-softmax over one dimension, forward and backward (PyTorch's F.softmax and
// F.log_softmax with an explicit dim).
//
// Not a GEMM. The input is viewed as (outer, size, inner), `size` the softmax dimension: each of
// the rows = outer * inner rows holds `size` elements `inner` apart. With z = x - max(x) over a row,
//     softmax     y = exp(z) / sum exp(z)       backward  dx = y * (dy - sum(dy * y))
//     log_softmax y = z - log(sum exp(z))       backward  dx = dy - exp(y) * sum(dy)
// The backward passes read the forward OUTPUT y (PyTorch's formulas), not x. `is_log` selects
// log_softmax. A row holding NaN or +inf, or only -inf, has a NaN sum and so is NaN throughout,
// as PyTorch's; -inf next to finite values gives softmax 0 and log_softmax -inf.
// Reduction layout:
//  - *_rows (inner == 1, contiguous rows): one block per row (grid-stride over rows), blockDim a
//    power of two from 32 to 256 picked by the host to fit `size`. The block's threads take the
//    row's elements blockDim.x apart; the row maximum and sum go through shared-memory halving
//    trees (rows.cuh: fixed order, no atomics).
//  - *_columns (inner > 1, many rows): one thread per row (grid-stride); consecutive threads own
//    consecutive inner positions, so each read of a plane of the softmax dimension is coalesced,
//    and each thread walks its row's `size` elements in order.
//  - *_split (inner > 1, rows too few to fill the GPU a thread each: gpu._grid.split_row_lanes,
//    e.g. dim 0 of a (100000, 4) array, 4 rows): `lanes` consecutive rows a block of BLOCK_THREADS,
//    each row over BLOCK_THREADS / lanes segments (rows.cuh for_each_split_row): segment s walks
//    elements s, s + segments, ... in order, and the segments' maxima and sums are combined by
//    segment_reduce's fixed shared-memory tree (no atomics). A warp holds lanes neighbouring inner
//    positions of 32 / lanes consecutive segments: its reads take whole 32-byte sectors.
// Sizes: rows, inner and every element offset are 64-bit; `size` is an int (the host refuses 2^31
// or more). Math and sums are acc_t (common.cuh): a float16 build computes in FP32 and rounds each
// output element once.

#include "rows.cuh"

#define SOFTMAX_FORWARD_PARAMS \
    const REAL* __restrict__ x, REAL* __restrict__ y, long long rows, int size, long long inner, int is_log
#define SOFTMAX_BACKWARD_PARAMS                                                                          \
    const REAL* __restrict__ dy, const REAL* __restrict__ y, REAL* __restrict__ dx, long long rows, int size, \
    long long inner, int is_log

// One output of the forward pass from z = x - max and the row's 1 / sum exp(z) and log(sum exp(z)):
// a product with the reciprocal, as PyTorch's CPU kernel (and no division an element).
static __device__ __forceinline__ REAL softmax_value(acc_t z, acc_t inv_sum, acc_t log_sum, int is_log)
{
    return to_real(is_log ? z - log_sum : REAL_EXP(z) * inv_sum);
}

// What the backward pass sums over a row: dy (log_softmax) or dy * y (softmax).
static __device__ __forceinline__ acc_t backward_term(REAL dy, REAL y, int is_log)
{
    return is_log ? to_acc(dy) : to_acc(dy) * to_acc(y);
}

// One gradient element from the row's sum of backward_term.
static __device__ __forceinline__ REAL backward_value(REAL dy, REAL y, acc_t sum, int is_log)
{
    return to_real(is_log ? to_acc(dy) - REAL_EXP(to_acc(y)) * sum : to_acc(y) * (to_acc(dy) - sum));
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_forward_rows(SOFTMAX_FORWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const REAL* in = x + row * size;
        REAL* out = y + row * size;
        const acc_t row_max = block_row_max(in, size, threadIdx.x, blockDim.x, scratch);
        acc_t partial = (acc_t)0;
        for (int j = threadIdx.x; j < size; j += blockDim.x)
            partial += REAL_EXP(to_acc(in[j]) - row_max);
        const acc_t sum_exp = block_reduce(partial, scratch, false);
        const acc_t inv_sum = (acc_t)1 / sum_exp, log_sum = REAL_LOG(sum_exp);
        for (int j = threadIdx.x; j < size; j += blockDim.x)
            out[j] = softmax_value(to_acc(in[j]) - row_max, inv_sum, log_sum, is_log);
    }
}

// The column kernels' walks unroll by 4 (4 loads in flight a thread): NVRTC's own unrolling of the
// forward pass spilled in its float64 build for sm_90.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_forward_columns(SOFTMAX_FORWARD_PARAMS)
{
    GRID_STRIDE_LOOP(row, rows) {
        const long long n = row / inner;
        const long long first = n * size * inner + (row - n * inner);   // the row's element 0
        const acc_t row_max = strided_row_max(x, first, size, inner);
        acc_t sum_exp = (acc_t)0;
        long long e = first;
#pragma unroll 4
        for (int k = 0; k < size; ++k, e += inner)
            sum_exp += REAL_EXP(to_acc(x[e]) - row_max);
        const acc_t inv_sum = (acc_t)1 / sum_exp, log_sum = REAL_LOG(sum_exp);
        e = first;
#pragma unroll 4
        for (int k = 0; k < size; ++k, e += inner)
            y[e] = softmax_value(to_acc(x[e]) - row_max, inv_sum, log_sum, is_log);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_backward_rows(SOFTMAX_BACKWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long start = row * size;
        acc_t partial = (acc_t)0;
        for (int j = threadIdx.x; j < size; j += blockDim.x)
            partial += backward_term(dy[start + j], y[start + j], is_log);
        const acc_t sum = block_reduce(partial, scratch, false);
        for (int j = threadIdx.x; j < size; j += blockDim.x)
            dx[start + j] = backward_value(dy[start + j], y[start + j], sum, is_log);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_backward_columns(SOFTMAX_BACKWARD_PARAMS)
{
    GRID_STRIDE_LOOP(row, rows) {
        const long long n = row / inner;
        const long long first = n * size * inner + (row - n * inner);
        acc_t sum = (acc_t)0;
        long long e = first;
#pragma unroll 4
        for (int k = 0; k < size; ++k, e += inner)
            sum += backward_term(dy[e], y[e], is_log);
        e = first;
#pragma unroll 4
        for (int k = 0; k < size; ++k, e += inner)
            dx[e] = backward_value(dy[e], y[e], sum, is_log);
    }
}

// The split kernels (see the top): their walks unroll by 2, as by 4 the float64 builds for sm_90
// spilled (36 and 84 bytes, NVRTC 12.9).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_forward_split(SOFTMAX_FORWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long, const SplitWalk& walk) {
        acc_t partial = REAL_NEG_INF;
#pragma unroll 2
        for (long long e = walk.e; e < walk.end; e += walk.step)
            partial = larger(to_acc(x[e]), partial);
        const acc_t row_max = walk.max(partial);
        partial = (acc_t)0;
#pragma unroll 2
        for (long long e = walk.e; e < walk.end; e += walk.step)
            partial += REAL_EXP(to_acc(x[e]) - row_max);
        const acc_t sum_exp = walk.sum(partial);
        const acc_t inv_sum = (acc_t)1 / sum_exp, log_sum = REAL_LOG(sum_exp);
#pragma unroll 2
        for (long long e = walk.e; e < walk.end; e += walk.step)
            y[e] = softmax_value(to_acc(x[e]) - row_max, inv_sum, log_sum, is_log);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
softmax_backward_split(SOFTMAX_BACKWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long, const SplitWalk& walk) {
        acc_t partial = (acc_t)0;
#pragma unroll 2
        for (long long e = walk.e; e < walk.end; e += walk.step)
            partial += backward_term(dy[e], y[e], is_log);
        const acc_t sum = walk.sum(partial);
#pragma unroll 2
        for (long long e = walk.e; e < walk.end; e += walk.step)
            dx[e] = backward_value(dy[e], y[e], sum, is_log);
    });
}
