// Losses: softmax cross entropy and mean squared error, value and gradient in one pass.
//
// Not a GEMM.
//  * cross_entropy_rows: one block per row of logits (B, classes) (grid-stride over rows), with
//    blockDim a power of two from 32 to 256 picked by the host to fit `classes`. The block finds
//    the row maximum, then sum(exp(x - max)) by shared-memory halving trees (fixed order: no
//    atomics), writes the row's loss log(sum) - (x[label] - max) (numerically stable) and the
//    gradient (softmax - onehot) * grad_scale, grad_scale = 1/B for the batch mean. A label
//    outside [0, classes) gives a NaN loss and no one-hot (never an out-of-bounds read).
//    The mean over rows is a fixed-order reduction of the per-row losses (reduce.cu), so the
//    loss is bit-identical run to run.
//  * mse_rows: one thread per element (grid-stride): dpred = (pred - target) * 2/n, and the
//    squared error into a workspace that reduce.cu sums in fixed order.

#include "common.cuh"

// Sum (or max) of one value per thread over the block; every thread gets the result. blockDim.x
// is a power of two; the trailing barrier lets the caller reuse `scratch` at once.
__device__ REAL block_reduce(REAL value, REAL* scratch, bool take_max)
{
    const int t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (t < half) {
            const REAL other = scratch[t + half];
            scratch[t] = take_max ? (other > scratch[t] ? other : scratch[t]) : scratch[t] + other;
        }
        __syncthreads();
    }
    const REAL result = scratch[0];
    __syncthreads();
    return result;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cross_entropy_rows(const REAL* __restrict__ logits, const long long* __restrict__ labels,
                   REAL* __restrict__ dlogits, REAL* __restrict__ row_loss,
                   long long rows, int classes, REAL grad_scale)
{
    __shared__ REAL scratch[BLOCK_THREADS];
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const REAL* x = logits + row * classes;
        REAL* dx = dlogits + row * classes;
        const long long label = labels[row];
        const bool label_ok = label >= 0 && label < classes;

        REAL row_max = REAL_NEG_INF;
        for (int j = t; j < classes; j += threads)
            row_max = x[j] > row_max ? x[j] : row_max;
        row_max = block_reduce(row_max, scratch, true);

        REAL partial = (REAL)0;
        for (int j = t; j < classes; j += threads)
            partial += REAL_EXP(x[j] - row_max);
        const REAL sum = block_reduce(partial, scratch, false);

        const REAL inv_sum = (REAL)1 / sum;
        for (int j = t; j < classes; j += threads) {
            const REAL softmax = REAL_EXP(x[j] - row_max) * inv_sum;
            dx[j] = (softmax - (label_ok && j == label ? (REAL)1 : (REAL)0)) * grad_scale;
        }
        if (t == 0)
            row_loss[row] = label_ok ? REAL_LOG(sum) - (x[label] - row_max) : REAL_NAN;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
mse_rows(const REAL* __restrict__ pred, const REAL* __restrict__ target, REAL* __restrict__ dpred,
         REAL* __restrict__ squared, long long n, REAL grad_scale)
{
    GRID_STRIDE_LOOP(i, n) {
        const REAL d = pred[i] - target[i];
        squared[i] = d * d;
        dpred[i] = d * grad_scale;
    }
}
