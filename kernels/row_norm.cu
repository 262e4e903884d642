// Row normalisation: GroupNorm and LayerNorm (PyTorch's F.group_norm and F.layer_norm), forward
// and backward.
//
// Not a GEMM: reductions along rows and element-wise maps, bound by memory bandwidth. x is viewed
// as (rows, L): a row is one (sample, group) of GroupNorm (its C / G channels of `inner` = HW
// elements each, contiguous) or one normalised slice of LayerNorm (its last axes; inner = 1).
// Element j of row r takes the affine parameters of index
//     p = (r % groups) * per_group + j / inner,   per_group = L / inner
// (LayerNorm: groups 1, p = j). So x is also (N, P, inner), N = rows / groups, P = groups *
// per_group parameters: element (n, p, i) is normalised with row n * groups + p / per_group's
// statistics.
// Reduction layout (every order fixed by the shape, no atomics: bit-identical run to run):
//  * row_norm_forward: a block a row (grid-stride over rows; blockDim a power of two from 32 to
//    256 the host picks to fit L). Thread t takes the row's elements t, t + blockDim, ... (each
//    walk unrolled by 4: 4 loads in flight a thread, which NVRTC did not do by itself in float16),
//    their sum (the mean), then their squared deviations from it (two passes: no E[x^2] - E[x]^2
//    cancellation), each summed over the block by a shared-memory halving tree (rows.cuh). Writes
//    mean and invstd = 1/sqrt(var + eps) (biased variance) and, with write_y, y = (x - mean) *
//    (invstd * weight[p]) + bias[p] in a third pass over the row (still in L1/L2).
//  * row_norm_backward_dx: the forward's layout. The row sums of g = dy * weight[p] and of
//    g * xhat, then dx = invstd * (g - sum(g) / L - xhat * sum(g * xhat) / L), g recomputed.
//  * row_norm_param_grads_planes (inner > 1: GroupNorm over planes): a block a parameter p
//    (grid-stride); thread t takes its (n, i) pairs t, t + blockDim, ... of the N * inner in order
//    (a warp reads consecutive i: coalesced), then a halving tree. dweight[p] = sum dy * xhat,
//    dbias[p] = sum dy.
//  * row_norm_param_grads_columns (inner == 1: LayerNorm, GroupNorm of (N, C)): a block of
//    COLUMN_LANES x 8 threads per COLUMN_LANES consecutive parameters (grid-stride): lane (tx, ty)
//    walks parameter tx's rows n = ty, ty + 8, ... in order (a warp reads 32 consecutive
//    parameters' elements: coalesced), then the 8 lanes of a parameter are added in order.
// Sizes: rows, N and element offsets are 64-bit; L, P and inner are ints (the host refuses 2^31
// or more). Math and sums are acc_t (common.cuh): FP32 for float16 and float32 (as PyTorch's CPU
// kernels accumulate), FP64 for float64. float16 (REAL_IS_HALF): x, y, dy, dx and the parameters
// and their gradients are FP16 in memory, the statistics acc_t; each output is rounded once (dx
// too: dy * weight is never stored).

#include "rows.cuh"

// k / divisor and k % divisor along the walk k = first, first + step, ...: stepped, not divided, each
// element. For a row's element j: its parameter's index within the row's group and the position
// in its plane; for a parameter's pair k of planes: the sample n and the position i.
template <class Quotient>
struct SteppedDivision {
    Quotient quotient;
    int remainder;
    const int divisor, step_quotient, step_remainder;
    __device__ SteppedDivision(int first, int step, int divisor)
        : quotient(first / divisor), remainder(first % divisor), divisor(divisor), step_quotient(step / divisor),
          step_remainder(step % divisor) {}
    __device__ __forceinline__ void advance()
    {
        quotient += step_quotient;
        remainder += step_remainder;
        if (remainder >= divisor) {
            remainder -= divisor;
            ++quotient;
        }
    }
};

// grid: min(rows, 65535) blocks of blockDim a power of two (32..256); mean and invstd (rows) in acc_t.
// weight / bias are read only with has_weight / has_bias, y written only with write_y (without it
// the statistics alone, for a backward pass not given them).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_forward(const REAL* __restrict__ x, REAL* __restrict__ y, acc_t* __restrict__ mean,
                 acc_t* __restrict__ invstd, const REAL* __restrict__ weight, const REAL* __restrict__ bias,
                 long long rows, int L, int groups, int inner, acc_t eps, int has_weight, int has_bias, int write_y)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    const int t = threadIdx.x, threads = blockDim.x, per_group = L / inner;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const REAL* in = x + row * L;
        acc_t partial = (acc_t)0;
#pragma unroll 4
        for (int j = t; j < L; j += threads)
            partial += to_acc(in[j]);
        const acc_t mu = block_reduce(partial, scratch, false) / (acc_t)L;
        partial = (acc_t)0;
#pragma unroll 4
        for (int j = t; j < L; j += threads) {
            const acc_t d = to_acc(in[j]) - mu;
            partial += d * d;
        }
        const acc_t is = (acc_t)1 / REAL_SQRT(block_reduce(partial, scratch, false) / (acc_t)L + eps);
        if (t == 0) {
            mean[row] = mu;
            invstd[row] = is;
        }
        if (!write_y)
            continue;
        REAL* out = y + row * L;
        const int first_parameter = (int)(row % groups) * per_group;
        SteppedDivision<int> walk(t, threads, inner);
#pragma unroll 4
        for (int j = t; j < L; j += threads, walk.advance()) {
            const int p = first_parameter + walk.quotient;
            const acc_t v = (to_acc(in[j]) - mu) * (has_weight ? is * to_acc(weight[p]) : is);
            out[j] = to_real(has_bias ? v + to_acc(bias[p]) : v);
        }
    }
}

// The gradient reaching xhat: dy * weight, in acc_t (never stored: float16 dx rounds once)
static __device__ __forceinline__ acc_t scaled_gradient(REAL dy, const REAL* weight, int p, int has_weight)
{
    return has_weight ? to_acc(dy) * to_acc(weight[p]) : to_acc(dy);
}

// grid: row_norm_forward's; mean and invstd (rows) in acc_t; weight read only with has_weight
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_backward_dx(const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,
                     const acc_t* __restrict__ invstd, const REAL* __restrict__ weight, REAL* __restrict__ dx,
                     long long rows, int L, int groups, int inner, int has_weight)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    const int t = threadIdx.x, threads = blockDim.x, per_group = L / inner;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const REAL* dy_row = dy + row * L;
        const REAL* x_row = x + row * L;
        const acc_t mu = mean[row], is = invstd[row];
        const int first_parameter = (int)(row % groups) * per_group;
        acc_t sum_g = (acc_t)0, sum_g_xhat = (acc_t)0;
        SteppedDivision<int> walk(t, threads, inner);
#pragma unroll 4
        for (int j = t; j < L; j += threads, walk.advance()) {
            const acc_t g = scaled_gradient(dy_row[j], weight, first_parameter + walk.quotient, has_weight);
            sum_g += g;
            sum_g_xhat += g * ((to_acc(x_row[j]) - mu) * is);
        }
        const acc_t mean_g = block_reduce(sum_g, scratch, false) / (acc_t)L;
        const acc_t mean_g_xhat = block_reduce(sum_g_xhat, scratch, false) / (acc_t)L;
        REAL* out = dx + row * L;
        SteppedDivision<int> again(t, threads, inner);
#pragma unroll 4
        for (int j = t; j < L; j += threads, again.advance()) {
            const acc_t g = scaled_gradient(dy_row[j], weight, first_parameter + again.quotient, has_weight);
            const acc_t xhat = (to_acc(x_row[j]) - mu) * is;
            out[j] = to_real((g - mean_g - xhat * mean_g_xhat) * is);
        }
    }
}

// grid: min(P, 65535) blocks of blockDim a power of two (32..256); dweight and dbias (P)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_param_grads_planes(const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,
                            const acc_t* __restrict__ invstd, REAL* __restrict__ dweight, REAL* __restrict__ dbias,
                            long long N, int parameters, int groups, int per_group, int inner)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    const int t = threadIdx.x, threads = blockDim.x;
    const long long pairs = N * inner;
    for (int p = blockIdx.x; p < parameters; p += gridDim.x) {
        const int group = p / per_group;
        acc_t sum_dy = (acc_t)0, sum_dy_xhat = (acc_t)0;
        SteppedDivision<long long> pair(t, threads, inner);   // pair k = n * inner + i (n may pass an int)
        for (long long k = t; k < pairs; k += threads, pair.advance()) {
            const long long n = pair.quotient, row = n * groups + group;
            const long long offset = (n * parameters + p) * inner + pair.remainder;
            const acc_t d = to_acc(dy[offset]);
            sum_dy += d;
            sum_dy_xhat += d * ((to_acc(x[offset]) - mean[row]) * invstd[row]);
        }
        const acc_t total_dy = block_reduce(sum_dy, scratch, false);
        const acc_t total_dy_xhat = block_reduce(sum_dy_xhat, scratch, false);
        if (t == 0) {
            dbias[p] = to_real(total_dy);
            dweight[p] = to_real(total_dy_xhat);
        }
    }
}

// grid: ceil(P / COLUMN_LANES) blocks (capped; grid-stride) of (COLUMN_LANES, ROW_LANES) threads;
// dweight and dbias (P). A lane's walk over its rows unrolls by 4: 4 loads of each array in
// flight a thread. (A thread a parameter left a LayerNorm of 768 parameters 3 blocks.)
#define COLUMN_LANES 32                             // cnn_gpu.gpu.row_norm.COLUMN_LANES
#define ROW_LANES (BLOCK_THREADS / COLUMN_LANES)    // 8
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_param_grads_columns(const REAL* __restrict__ dy, const REAL* __restrict__ x,
                             const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                             REAL* __restrict__ dweight, REAL* __restrict__ dbias, long long N, int parameters,
                             int groups, int per_group)
{
    __shared__ acc_t lane_sums[2][ROW_LANES][COLUMN_LANES];
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (long long first = (long long)blockIdx.x * COLUMN_LANES; first < parameters;
         first += (long long)gridDim.x * COLUMN_LANES) {
        const long long p = first + tx;
        acc_t sum_dy = (acc_t)0, sum_dy_xhat = (acc_t)0;
        if (p < parameters) {
            const long long group = p / per_group;
#pragma unroll 4
            for (long long n = ty; n < N; n += ROW_LANES) {
                const long long row = n * groups + group, offset = n * parameters + p;
                const acc_t d = to_acc(dy[offset]);
                sum_dy += d;
                sum_dy_xhat += d * ((to_acc(x[offset]) - mean[row]) * invstd[row]);
            }
        }
        __syncthreads();   // the previous parameters' lane sums are read
        lane_sums[0][ty][tx] = sum_dy;
        lane_sums[1][ty][tx] = sum_dy_xhat;
        __syncthreads();
        if (ty == 0 && p < parameters) {
            for (int lane = 1; lane < ROW_LANES; ++lane) {
                sum_dy += lane_sums[0][lane][tx];
                sum_dy_xhat += lane_sums[1][lane][tx];
            }
            dbias[p] = to_real(sum_dy);
            dweight[p] = to_real(sum_dy_xhat);
        }
    }
}
