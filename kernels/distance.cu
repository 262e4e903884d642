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
// rows.cuh's for_each_row or for_each_split_row (blocks of BLOCK_THREADS):
//  * inner == 1 (the reduced dimension is the last: (N, D) embeddings), and always for
//    pairwise_distance: a group of row_lanes(size) lanes a row (a power of two from 1 to 256; 256 /
//    lanes rows a block), lane l taking elements l, l + lanes, ...: a warp reads 32 neighbouring
//    elements of one row or of several short ones (4 sectors a float32 request, where a thread a row
//    read 32, one a lane), and the lanes' partial sums meet in group_reduce's fixed tree.
//  * inner > 1: a lane a row walking its elements in order; threads of neighbouring rows read
//    neighbouring elements (coalesced already).
//  * inner > 1 with rows too few to fill the GPU a lane each (gpu._grid.split_row_lanes: e.g.
//    cosine_similarity over dim 0 of (100000, 4): 256 busy threads, where a lane a row left 252 of the
//    block idle), normalize's and cosine_similarity's _split kernels: `lanes` neighbouring rows a block,
//    each row over the block's BLOCK_THREADS / lanes segments (for_each_split_row), segment s taking
//    elements s, s + segments, ... in order, the segments' partial sums (maxima, NaN kept) meeting in
//    segment_reduce's fixed tree. Each sum of a row is a reduction of its own, in the order the row
//    kernels take them: a norm (cosine: n1, then n2), then the dot product that needs it.
// The row bodies (normalize_row, ...) are templates over a thread's share of its row (LaneShare or
// SplitWalk), so a pass's two kernels run the same arithmetic in the same order a share.
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

// A thread's share of a row of for_each_row: its lanes' elements of `row`, with SplitWalk's interface
// (each, sum, max_or_nan, leader), so one row body serves both kernels of a pass.
struct LaneShare {
    const RowWalk& walk;
    Row row;
    // visit(offset) for each of the thread's elements, in order
    template <class Visit>
    __device__ __forceinline__ void each(Visit visit) const
    {
        for (int j = walk.first; j < row.size; j += walk.step)
            visit(row.base + j * row.stride);
    }
    __device__ acc_t sum(acc_t partial) const { return walk.sum(partial); }
    __device__ acc_t max_or_nan(acc_t partial) const { return walk.max_or_nan(partial); }
    __device__ bool leader() const { return walk.leader(); }
};

// The p-norm of the row's values v(at); p == 0 selects the infinity norm (NaN propagating). Each
// thread takes its share of the row in increasing order, then the share combines the threads'.
template <class Share, class Value>
__device__ __forceinline__ acc_t lp_norm(const Share& share, acc_t p, Value v)
{
    acc_t total = 0;
    share.each([&](long long at) {
        const acc_t value = v(at);
        if (p == (acc_t)0) {
            const acc_t a = REAL_ABS(value);
            total = (a > total || a != a) && total == total ? a : total;   // max, NaN propagating
        } else {
            total += lp_term(value, p);
        }
    });
    return p == (acc_t)0 ? share.max_or_nan(total) : lp_root(share.sum(total), p);
}

// For the infinity norm: the count of the row's values at `norm` or NaN (else 1, unused).
template <class Share, class Value>
__device__ __forceinline__ acc_t ties_of(const Share& share, acc_t norm, acc_t p, Value v)
{
    if (p != (acc_t)0)
        return 1;
    acc_t count = 0;
    share.each([&](long long at) {
        const acc_t a = REAL_ABS(v(at));
        count += a == norm || a != a;
    });
    return share.sum(count);
}

__device__ __forceinline__ acc_t clamp_min(acc_t norm, acc_t eps)
{
    return norm < eps ? eps : norm;   // a NaN norm stays NaN
}

// The row bodies, each run by a thread on its share of a row (LaneShare or SplitWalk).
template <class Share>
__device__ __forceinline__ void normalize_row(const Share& share, const REAL* __restrict__ x, REAL* __restrict__ y,
                                              acc_t p, acc_t eps)
{
    const acc_t denominator = clamp_min(lp_norm(share, p, [&](long long at) { return to_acc(x[at]); }), eps);
    share.each([&](long long at) { y[at] = to_real(to_acc(x[at]) / denominator); });
}

template <class Share>
__device__ __forceinline__ void normalize_backward_row(const Share& share, const REAL* __restrict__ dy,
                                                       const REAL* __restrict__ x, REAL* __restrict__ dx, acc_t p,
                                                       acc_t eps)
{
    const auto value = [&](long long at) { return to_acc(x[at]); };
    const acc_t norm = lp_norm(share, p, value), denominator = clamp_min(norm, eps);
    const acc_t ties = ties_of(share, norm, p, value);
    acc_t dot = 0;
    share.each([&](long long at) { dot += to_acc(dy[at]) * to_acc(x[at]); });
    dot = share.sum(dot);
    // the gradient reaching the norm: through the clamp where norm >= eps
    const acc_t to_norm = norm >= eps ? -dot / (denominator * denominator) : (acc_t)0;
    const LpNormGradient norm_gradient(norm, p, ties);
    share.each([&](long long at) {
        dx[at] = to_real(to_acc(dy[at]) / denominator + to_norm * norm_gradient(to_acc(x[at])));
    });
}

// The three sums of a cosine row in turn, each over the whole row before the next: n1, n2 (lp_norm),
// then the sum of (x1 / d1) (x2 / d2), which needs both clamped norms.
template <class Share>
__device__ __forceinline__ void cosine_similarity_row(const Share& share, long long r, const REAL* __restrict__ x1,
                                                      const REAL* __restrict__ x2, REAL* __restrict__ out, acc_t eps)
{
    const acc_t d1 = clamp_min(lp_norm(share, (acc_t)2, [&](long long at) { return to_acc(x1[at]); }), eps);
    const acc_t d2 = clamp_min(lp_norm(share, (acc_t)2, [&](long long at) { return to_acc(x2[at]); }), eps);
    acc_t total = 0;
    share.each([&](long long at) { total += to_acc(x1[at]) / d1 * (to_acc(x2[at]) / d2); });
    total = share.sum(total);
    if (share.leader())
        out[r] = to_real(total);
}

template <class Share>
__device__ __forceinline__ void cosine_similarity_backward_row(const Share& share, long long r,
                                                               const REAL* __restrict__ dout,
                                                               const REAL* __restrict__ x1,
                                                               const REAL* __restrict__ x2, REAL* __restrict__ dx1,
                                                               REAL* __restrict__ dx2, acc_t eps)
{
    const acc_t n1 = lp_norm(share, (acc_t)2, [&](long long at) { return to_acc(x1[at]); });
    const acc_t n2 = lp_norm(share, (acc_t)2, [&](long long at) { return to_acc(x2[at]); });
    const acc_t d1 = clamp_min(n1, eps), d2 = clamp_min(n2, eps), g = to_acc(dout[r]);
    acc_t dot = 0;   // sum of (x1 / d1) (x2 / d2) over the row, as the forward pass
    share.each([&](long long at) { dot += to_acc(x1[at]) / d1 * (to_acc(x2[at]) / d2); });
    dot = share.sum(dot);
    // u = x1 / d1, v = x2 / d2: dL/du = g v, dL/dd1 = -g sum(v x1) / d1^2 = -g dot / d1 (likewise d2)
    const acc_t to_n1 = -g * dot / d1, to_n2 = -g * dot / d2;
    const LpNormGradient n1_gradient(n1, (acc_t)2, (acc_t)1), n2_gradient(n2, (acc_t)2, (acc_t)1);
    share.each([&](long long at) {
        const acc_t a = to_acc(x1[at]), b = to_acc(x2[at]);
        dx1[at] = to_real(g * (b / d2) / d1 + to_n1 * n1_gradient(a));
        dx2[at] = to_real(g * (a / d1) / d2 + to_n2 * n2_gradient(b));
    });
}

#define NORMALIZE_FORWARD_PARAMS \
    const REAL* __restrict__ x, REAL* __restrict__ y, long long rows, int size, long long inner, acc_t p, acc_t eps
#define NORMALIZE_BACKWARD_PARAMS                                                                                \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ dx, long long rows, int size, \
        long long inner, acc_t p, acc_t eps
#define COSINE_FORWARD_PARAMS                                                                                      \
    const REAL* __restrict__ x1, const REAL* __restrict__ x2, REAL* __restrict__ out, long long rows, int size, \
        long long inner, acc_t eps
#define COSINE_BACKWARD_PARAMS                                                                                    \
    const REAL* __restrict__ dout, const REAL* __restrict__ x1, const REAL* __restrict__ x2, REAL* __restrict__ dx1, \
        REAL* __restrict__ dx2, long long rows, int size, long long inner, acc_t eps

// grid: for_each_row's (rows = outer * inner)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) normalize_forward(NORMALIZE_FORWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        normalize_row(LaneShare{walk, row_of(r, size, inner)}, x, y, p, eps);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) normalize_backward(NORMALIZE_BACKWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        normalize_backward_row(LaneShare{walk, row_of(r, size, inner)}, dy, x, dx, p, eps);
    });
}

// out (outer, inner) from x1 and x2 (outer, size, inner)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_forward(COSINE_FORWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        cosine_similarity_row(LaneShare{walk, row_of(r, size, inner)}, r, x1, x2, out, eps);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_backward(COSINE_BACKWARD_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, size, inner, scratch, [&](long long r, const RowWalk& walk) {
        cosine_similarity_backward_row(LaneShare{walk, row_of(r, size, inner)}, r, dout, x1, x2, dx1, dx2, eps);
    });
}

// The split kernels (see the top): grid ceil(rows / lanes) blocks (grid-stride beyond), `lanes` from
// gpu._grid.split_row_lanes.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
normalize_forward_split(NORMALIZE_FORWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long, const SplitWalk& walk) {
        normalize_row(walk, x, y, p, eps);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
normalize_backward_split(NORMALIZE_BACKWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long, const SplitWalk& walk) {
        normalize_backward_row(walk, dy, x, dx, p, eps);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_forward_split(COSINE_FORWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long r, const SplitWalk& walk) {
        cosine_similarity_row(walk, r, x1, x2, out, eps);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_similarity_backward_split(COSINE_BACKWARD_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, size, inner, lanes, scratch, [&](long long r, const SplitWalk& walk) {
        cosine_similarity_backward_row(walk, r, dout, x1, x2, dx1, dx2, eps);
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
        const acc_t norm = lp_norm(LaneShare{walk, row_of(r, size, 1)}, p,
                                   [&](long long at) { return to_acc(x1[at]) - to_acc(x2[at]) + eps; });
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
        const LaneShare share{walk, row_of(r, size, 1)};
        const auto difference = [&](long long at) { return to_acc(x1[at]) - to_acc(x2[at]) + eps; };
        const acc_t norm = lp_norm(share, p, difference), ties = ties_of(share, norm, p, difference);
        const acc_t g = to_acc(dout[r]);
        const LpNormGradient norm_gradient(norm, p, ties);
        share.each([&](long long at) {
            const acc_t gradient = g * norm_gradient(difference(at));
            dx1[at] = to_real(gradient);
            dx2[at] = to_real(-gradient);
        });
    });
}
