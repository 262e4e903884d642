// Vector norms along one dimension and what PyTorch builds on them: F.normalize, F.cosine_similarity
// and F.pairwise_distance, forward and backward. Every input is viewed as (outer, size, inner) around the
// reduced dimension; a row is the `size` elements a[o, :, i], `inner` apart.
//  * lp norms (PyTorch's linalg.vector_norm): p == 2 sqrt(sum v^2), p == 1 sum |v|, other finite
//    p > 0 (sum |v|^p)^(1/p), `infinity` max |v| (NaN propagating); their gradient PyTorch's
//    norm_backward: v / n (p == 2), sgn(v) (p == 1), sgn(v) |v|^(p-1) / n^(p-1), and for the infinity
//    norm sgn(v) over the count of elements equal to the maximum (or NaN); 0 where n == 0.
//  * normalize: y = x / max(n, eps) (clamp_min: a NaN norm stays NaN; its gradient passes where
//    n >= eps).
//  * cosine_similarity (PyTorch 2's): sum over the row of (x1 / max(n1, eps)) * (x2 / max(n2, eps)),
//    n the 2-norms; the clamps are made without gradient, so the gradient reaches each norm as if
//    unclamped.
//  * pairwise_distance: the p-norm of x1 - x2 + eps along the row (the last dimension).
//
// Not a GEMM. Every sum and maximum is taken in a fixed order (deterministic, no atomics), by
// rows.cuh's for_each_row (blocks of BLOCK_THREADS):
//  * inner == 1 (the reduced dimension is the last: (N, D) embeddings), and always for
//    pairwise_distance: a group of row_lanes(size) lanes a row (a power of two from 1 to 256; 256 /
//    lanes rows a block), lane l taking elements l, l + lanes, ...: a warp reads 32 neighbouring
//    elements of one row or of several short ones (4 sectors a float32 request, where a thread a row
//    read 32, one a lane), and the lanes' partial sums meet in group_reduce's fixed tree.
//  * inner > 1: a lane a row walking its elements in order; threads of neighbouring rows read
//    neighbouring elements (coalesced already).
// acc_t math: float16 rounds each output once. Offsets are 64-bit.

#include "norms.cuh"
#include "rows.cuh"

struct Row {
    long long base, stride;
    int size;
};

// Row r of (outer, size, inner): its first element and stride. Contiguous rows (inner == 1, the
// lane groups' case, uniform across the block) skip the 64-bit division and remainder.
__device__ __forceinline__ Row row_of(long long r, int size, long long inner)
{
    if (inner == 1)
        return Row{r * size, 1, size};
    return Row{(r / inner) * size * inner + r % inner, inner, size};
}

// The p-norm of the row's values v(at); p == 0 selects the infinity norm (NaN propagating). Each
// thread takes its share of the row in increasing order, then `walk` combines the shares.
template <class Value>
__device__ __forceinline__ acc_t lp_norm(const RowWalk& walk, const Row& row, acc_t p, Value v)
{
    acc_t total = 0;
    for (int j = walk.first; j < row.size; j += walk.step) {
        const acc_t value = v(row.base + j * row.stride);
        if (p == (acc_t)0) {
            const acc_t a = REAL_ABS(value);
            total = (a > total || a != a) && total == total ? a : total;   // max, NaN propagating
        } else {
            total += lp_term(value, p);
        }
    }
    return p == (acc_t)0 ? walk.max_or_nan(total) : lp_root(walk.sum(total), p);
}

// For the infinity norm: the count of the row's values at `norm` or NaN (else 1, unused).
template <class Value>
__device__ __forceinline__ acc_t ties_of(const RowWalk& walk, const Row& row, acc_t norm, acc_t p, Value v)
{
    if (p != (acc_t)0)
        return 1;
    acc_t count = 0;
    for (int j = walk.first; j < row.size; j += walk.step) {
        const acc_t a = REAL_ABS(v(row.base + j * row.stride));
        count += a == norm || a != a;
    }
    return walk.sum(count);
}

__device__ __forceinline__ acc_t clamp_min(acc_t norm, acc_t eps)
{
    return norm < eps ? eps : norm;   // a NaN norm stays NaN
}

// grid: for_each_row's (rows = outer * inner)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
normalize_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long rows, int size, long long inner,
                  acc_t p, acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, inner);
        const acc_t denominator =
            clamp_min(lp_norm(walk, row, p, [&](long long at) { return to_acc(x[at]); }), eps);
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            y[at] = to_real(to_acc(x[at]) / denominator);
        }
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
normalize_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long rows,
                   int size, long long inner, acc_t p, acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, inner);
        const auto value = [&](long long at) { return to_acc(x[at]); };
        const acc_t norm = lp_norm(walk, row, p, value), denominator = clamp_min(norm, eps);
        const acc_t ties = ties_of(walk, row, norm, p, value);
        acc_t dot = 0;
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            dot += to_acc(dy[at]) * to_acc(x[at]);
        }
        dot = walk.sum(dot);
        // the gradient reaching the norm: through the clamp where norm >= eps
        const acc_t to_norm = norm >= eps ? -dot / (denominator * denominator) : (acc_t)0;
        const LpNormGradient norm_gradient(norm, p, ties);
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            const acc_t v = to_acc(x[at]);
            dx[at] = to_real(to_acc(dy[at]) / denominator + to_norm * norm_gradient(v));
        }
    });
}

// out (outer, inner) from x1 and x2 (outer, size, inner)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_forward(const REAL* __restrict__ x1, const REAL* __restrict__ x2, REAL* __restrict__ out,
                          long long rows, int size, long long inner, acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, inner);
        const acc_t d1 = clamp_min(lp_norm(walk, row, (acc_t)2, [&](long long at) { return to_acc(x1[at]); }), eps);
        const acc_t d2 = clamp_min(lp_norm(walk, row, (acc_t)2, [&](long long at) { return to_acc(x2[at]); }), eps);
        acc_t total = 0;
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            total += to_acc(x1[at]) / d1 * (to_acc(x2[at]) / d2);
        }
        total = walk.sum(total);
        if (walk.leader())
            out[r] = to_real(total);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_backward(const REAL* __restrict__ dout, const REAL* __restrict__ x1, const REAL* __restrict__ x2,
                           REAL* __restrict__ dx1, REAL* __restrict__ dx2, long long rows, int size, long long inner,
                           acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, inner);
        const acc_t n1 = lp_norm(walk, row, (acc_t)2, [&](long long at) { return to_acc(x1[at]); });
        const acc_t n2 = lp_norm(walk, row, (acc_t)2, [&](long long at) { return to_acc(x2[at]); });
        const acc_t d1 = clamp_min(n1, eps), d2 = clamp_min(n2, eps), g = to_acc(dout[r]);
        acc_t dot = 0;   // sum of (x1 / d1) (x2 / d2) over the row, as the forward pass
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            dot += to_acc(x1[at]) / d1 * (to_acc(x2[at]) / d2);
        }
        dot = walk.sum(dot);
        // u = x1 / d1, v = x2 / d2: dL/du = g v, dL/dd1 = -g sum(v x1) / d1^2 = -g dot / d1 (likewise d2)
        const acc_t to_n1 = -g * dot / d1, to_n2 = -g * dot / d2;
        const LpNormGradient n1_gradient(n1, (acc_t)2, (acc_t)1), n2_gradient(n2, (acc_t)2, (acc_t)1);
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j * row.stride;
            const acc_t a = to_acc(x1[at]), b = to_acc(x2[at]);
            dx1[at] = to_real(g * (b / d2) / d1 + to_n1 * n1_gradient(a));
            dx2[at] = to_real(g * (a / d1) / d2 + to_n2 * n2_gradient(b));
        }
    });
}

// out (outer,) from x1 and x2 (outer, size): the p-norm of x1 - x2 + eps (p == 0: the infinity norm);
// grid: for_each_row's with inner 1
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
pairwise_distance_forward(const REAL* __restrict__ x1, const REAL* __restrict__ x2, REAL* __restrict__ out,
                          long long rows, int size, acc_t p, acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, 1, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, 1);
        const acc_t norm = lp_norm(walk, row, p, [&](long long at) { return to_acc(x1[at]) - to_acc(x2[at]) + eps; });
        if (walk.leader())
            out[r] = to_real(norm);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
pairwise_distance_backward(const REAL* __restrict__ dout, const REAL* __restrict__ x1, const REAL* __restrict__ x2,
                           REAL* __restrict__ dx1, REAL* __restrict__ dx2, long long rows, int size, acc_t p,
                           acc_t eps)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, 1, scratch, [&](long long r, const RowWalk& walk) {
        const Row row = row_of(r, size, 1);
        const auto difference = [&](long long at) { return to_acc(x1[at]) - to_acc(x2[at]) + eps; };
        const acc_t norm = lp_norm(walk, row, p, difference), ties = ties_of(walk, row, norm, p, difference);
        const acc_t g = to_acc(dout[r]);
        const LpNormGradient norm_gradient(norm, p, ties);
        for (int j = walk.first; j < size; j += walk.step) {
            const long long at = row.base + j;
            const acc_t gradient = g * norm_gradient(difference(at));
            dx1[at] = to_real(gradient);
            dx2[at] = to_real(-gradient);
        }
    });
}
