// Row normalisation: GroupNorm, LayerNorm and RMSNorm (PyTorch's F.group_norm, F.layer_norm and
// F.rms_norm), forward and backward.
//
// Not a GEMM: reductions along rows and element-wise maps, bound by memory bandwidth. x is viewed
// as (rows, L): a row is one (sample, group) of GroupNorm (its C / G channels of `inner` = HW
// elements each, contiguous) or one normalised slice of LayerNorm (its last axes; inner = 1).
// Element j of row r takes the affine parameters of index
//     p = (r % groups) * per_group + j / inner,   per_group = L / inner
// (LayerNorm: groups 1, p = j). So x is also (N, P, inner), N = rows / groups, P = groups *
// per_group parameters: element (n, p, i) is normalised with row n * groups + p / per_group's
// statistics.
// Reduction layout (every order fixed by the shape and the host's plan, no float atomics:
// bit-identical run to run). The row kernels take each row as slices of `span` elements (the
// host: one slice, span >= L, unless there are fewer rows than 2 blocks an SM; then slices of at
// least 4096 elements, a block a (row, slice), grid-stride). Each comes twice: wide, its walks
// moving 16-byte packs of WIDE elements (the host launches it where x, y, dy and dx start on 16
// bytes and L is whole packs, so every pack is aligned), and _unaligned, one element a load.
// Thread t takes packs t, t + blockDim, ... (blockDim a power of two from 32 to 256 the host picks
// for 2 packs a thread), unrolled by 2: 32 bytes of each array in flight a thread (for_each_pack).
//  * row_norm_forward: stats_given 0 (one slice): a block a row; the row's sum (the mean), then its
//    squared deviations from it (two passes: no E[x^2] - E[x]^2 cancellation), each summed over
//    the block by a shared-memory halving tree (rows.cuh). Writes mean and invstd = 1/sqrt(var +
//    eps) (biased variance) and, with write_y, y = (x - mean) * (invstd * weight[p]) + bias[p] in
//    a third pass over the row (still in L1/L2). stats_given 1: y alone, a block a slice, from
//    the mean and invstd row_norm_slice_stats wrote.
//  * row_norm_slice_stats: a block a (row, slice): the slice's (count, mean, M2) by the same two
//    passes, to a workspace; the block that completes a row's slices (an arrival count it
//    resets, channel_chunks.cuh) merges them in slice order (Chan et al.'s formula) into mean
//    and invstd.
//  * row_norm_backward_dx: sums_given 0: the forward's layout; the row sums of g = dy * weight[p]
//    and of g * xhat, then dx = invstd * (g - sum(g) / L - xhat * sum(g * xhat) / L), g
//    recomputed. sums_given 1: dx alone, a block a slice, from the means row_norm_slice_sums wrote.
//  * row_norm_slice_sums: a block a (row, slice): the slice's sums of g and g * xhat, added in
//    slice order by the row's last block to arrive into their means over the row.
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
// RMSNorm is the mean-free case (centered 0, a flag of the kernels that compute statistics or dx):
// the mean is taken as 0, so the second pass's "squared deviations" are the squares, invstd =
// 1/sqrt(mean(x^2) + eps) and xhat = x * invstd; the slices' moments merge unchanged (every mean
// 0), the parameter gradients are the same sums (dbias unused), and dx drops its mean(g) term:
// dx = invstd * (g - xhat * sum(g * xhat) / L). A flag rather than kernels of its own: the walks,
// plans and slicing are the same, and a uniform branch costs the LayerNorm path nothing measurable.

#include "channel_chunks.cuh"
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

// Elements a wide load moves: 16 bytes (float16 8, float32 4, float64 2): cnn_gpu.gpu.row_norm.WIDE_BYTES
#define WIDE (16 / (int)sizeof(REAL))

// N consecutive elements, moved by one load or store (N * sizeof(REAL) bytes, aligned to that)
template <int N>
struct alignas(N * sizeof(REAL)) Pack {
    REAL v[N];
};

template <int N>
static __device__ __forceinline__ Pack<N> load(const REAL* p)
{
    return *reinterpret_cast<const Pack<N>*>(p);
}

// Elements j, ..., j + N - 1 of the row's INPUTS arrays: value(parameter offset, their values)
// for each, its parameter offset (j + u) / inner stepped from q, r = j / inner, j % inner; with
// WRITES the results go to out[j, j + N) in one store.
template <int N, int INPUTS, bool WRITES, class Value>
static __device__ __forceinline__ void visit_pack(const REAL* const (&in)[INPUTS], REAL* out, int j, int q, int r,
                                                  int inner, Value value)
{
    Pack<N> loaded[INPUTS], result;
#pragma unroll
    for (int a = 0; a < INPUTS; ++a) loaded[a] = load<N>(in[a] + j);
#pragma unroll
    for (int u = 0; u < N; ++u) {
        acc_t v[INPUTS];
#pragma unroll
        for (int a = 0; a < INPUTS; ++a) v[a] = to_acc(loaded[a].v[u]);
        const acc_t y = value(q, v);
        if (WRITES) result.v[u] = to_real(y);
        if (++r == inner) {
            r = 0;
            ++q;
        }
    }
    if (WRITES) *reinterpret_cast<Pack<N>*>(out + j) = result;
}

// value(p, v) for this thread's elements j of [begin, end) of a row (p = j / inner, v: the
// elements j of the row's INPUTS arrays in acc_t), its results into out[j] with WRITES (else
// unused: the reductions' values add into their own sums): thread t
// takes packs t, t + blockDim, ... of V elements, one load (and store) an array each. V > 1 only
// where the host found every streamed array 16-byte aligned and the rows' length and slices'
// span multiples of V, so every pack is whole and aligned. The walk unrolls by 2: 32 bytes of each
// array in flight a thread (V == 1, the _unaligned kernels: 2 elements).
template <int V, int INPUTS, bool WRITES, class Value>
static __device__ __forceinline__ void for_each_pack(const REAL* const (&in)[INPUTS], REAL* out, int begin, int end,
                                                     int inner, Value value)
{
    const int first = begin + threadIdx.x * V, step = blockDim.x * V;
    SteppedDivision<int> walk(first, step, inner);
#pragma unroll 2
    for (int j = first; j < end; j += step, walk.advance())
        visit_pack<V, INPUTS, WRITES>(in, out, j, walk.quotient, walk.remainder, inner, value);
}

// The sum of x's elements [begin, end) of a row over the block, then of their squared deviations
// from that sum's mean: (count, mean, M2) of the range (two passes: no E[x^2] - E[x]^2
// cancellation; the second pass finds the range in L1/L2). Not `centered` (RMSNorm): mean 0, the
// first pass skipped, M2 the sum of squares.
template <int V>
static __device__ __forceinline__ Moments range_moments(const REAL* in, int begin, int end, int centered,
                                                        acc_t* scratch)
{
    const REAL* const rows_in[1] = {in};
    acc_t partial = (acc_t)0;
    const acc_t count = (acc_t)(end - begin);
    acc_t mu = (acc_t)0;
    if (centered) {
        for_each_pack<V, 1, false>(rows_in, nullptr, begin, end, 1, [&](int, const acc_t (&v)[1]) {
            partial += v[0];
            return partial;
        });
        mu = block_reduce(partial, scratch, false) / count;
        partial = (acc_t)0;
    }
    for_each_pack<V, 1, false>(rows_in, nullptr, begin, end, 1, [&](int, const acc_t (&v)[1]) {
        const acc_t d = v[0] - mu;
        partial += d * d;
        return partial;
    });
    return Moments{count, mu, block_reduce(partial, scratch, false)};
}

static __device__ __forceinline__ acc_t invstd_of(const Moments& row, acc_t eps)
{
    return (acc_t)1 / REAL_SQRT(row.m2 / row.n + eps);
}

// A block's item of the grid-stride walk over rows x slices: its row and its slice's elements [begin, end)
struct RowSlice {
    long long row;
    int begin, end;
    __device__ RowSlice(long long item, int slices, int span, int L)
        : row(item / slices), begin((int)(item - row * slices) * span), end(begin + min(span, L - begin)) {}
};

// The gradient reaching xhat: dy * weight, in acc_t (never stored: float16 dx rounds once)
static __device__ __forceinline__ acc_t scaled_gradient(acc_t dy, const REAL* weight, int p, int has_weight)
{
    return has_weight ? dy * to_acc(weight[p]) : dy;
}

// row_norm_forward: stats_given 0: slices of a whole row (span >= L), a block a row computing
// its statistics, then y; stats_given 1: y alone from mean and invstd, a block a slice.
template <int V>
static __device__ __forceinline__ void forward_rows(const REAL* x, REAL* y, acc_t* mean, acc_t* invstd,
                                                    const REAL* weight, const REAL* bias, long long rows, int L,
                                                    int groups, int inner, int span, acc_t eps, int has_weight,
                                                    int has_bias, int write_y, int stats_given, int centered,
                                                    acc_t* scratch)
{
    const int per_group = L / inner, slices = 1 + (L - 1) / span;
    for (long long item = blockIdx.x; item < rows * slices; item += gridDim.x) {
        const RowSlice at(item, slices, span, L);
        const REAL* in = x + at.row * L;
        acc_t mu, is;
        if (stats_given) {
            mu = mean[at.row];
            is = invstd[at.row];
        } else {
            const Moments row = range_moments<V>(in, 0, L, centered, scratch);
            mu = row.mean;
            is = invstd_of(row, eps);
            if (threadIdx.x == 0) {
                mean[at.row] = mu;
                invstd[at.row] = is;
            }
        }
        if (!write_y)
            continue;
        const int first_parameter = (int)(at.row % groups) * per_group;
        const REAL* const rows_in[1] = {in};
        for_each_pack<V, 1, true>(rows_in, y + at.row * L, at.begin, at.end, inner, [&](int q, const acc_t (&v)[1]) {
            const int p = first_parameter + q;
            const acc_t scaled = (v[0] - mu) * (has_weight ? is * to_acc(weight[p]) : is);
            return has_bias ? scaled + to_acc(bias[p]) : scaled;
        });
    }
}

// row_norm_slice_stats: a block a (row, slice); the slice's moments go to `partial`, and the block
// that completes a row's slices merges them in slice order (thread 0; Chan et al.'s formula).
template <int V>
static __device__ __forceinline__ void slice_stats(const REAL* x, acc_t* mean, acc_t* invstd, acc_t* partial,
                                                   unsigned int* arrivals, long long rows, int L, int span, acc_t eps,
                                                   int centered, acc_t* scratch, int* last)
{
    const int slices = 1 + (L - 1) / span;
    for (long long item = blockIdx.x; item < rows * slices; item += gridDim.x) {
        const RowSlice at(item, slices, span, L);
        const Moments slice = range_moments<V>(x + at.row * L, at.begin, at.end, centered, scratch);
        if (threadIdx.x == 0) {
            partial[2 * item] = slice.mean;
            partial[2 * item + 1] = slice.m2;
        }
        if (!last_to_arrive(arrivals, at.row, slices, last) || threadIdx.x != 0)
            continue;
        Moments row{};   // other blocks' partials through L2 (__ldcg): this SM's L1 may hold stale lines
        for (int k = 0; k < slices; ++k) {
            const long long base = 2 * (at.row * slices + k);
            const acc_t n = (acc_t)min(span, L - k * span);
            row = merged(row, Moments{n, __ldcg(&partial[base]), __ldcg(&partial[base + 1])});
        }
        mean[at.row] = row.mean;
        invstd[at.row] = invstd_of(row, eps);
    }
}

// The sums of g = dy * weight[p] and of g * xhat over [begin, end) of a row, this thread's share
template <int V>
static __device__ __forceinline__ void gradient_sums(const REAL* dy_row, const REAL* x_row, int begin, int end,
                                                     int inner, int first_parameter, const REAL* weight,
                                                     int has_weight, acc_t mu, acc_t is, acc_t& sum_g,
                                                     acc_t& sum_g_xhat)
{
    const REAL* const rows_in[2] = {x_row, dy_row};
    for_each_pack<V, 2, false>(rows_in, nullptr, begin, end, inner, [&](int q, const acc_t (&v)[2]) {
        const acc_t g = scaled_gradient(v[1], weight, first_parameter + q, has_weight);
        sum_g += g;
        sum_g_xhat += g * ((v[0] - mu) * is);
        return g;
    });
}

// row_norm_backward_dx: sums_given 0: a block a row (span >= L), its sums of g and g * xhat,
// then dx; sums_given 1: dx alone from row_sums (the means of g and g * xhat, 2 a row), a block a slice.
// Not centered (RMSNorm): dx without the mean of g.
template <int V>
static __device__ __forceinline__ void backward_rows(const REAL* dy, const REAL* x, const acc_t* mean,
                                                     const acc_t* invstd, const REAL* weight, const acc_t* row_sums,
                                                     REAL* dx, long long rows, int L, int groups, int inner, int span,
                                                     int has_weight, int sums_given, int centered, acc_t* scratch)
{
    const int per_group = L / inner, slices = 1 + (L - 1) / span;
    for (long long item = blockIdx.x; item < rows * slices; item += gridDim.x) {
        const RowSlice at(item, slices, span, L);
        const REAL* dy_row = dy + at.row * L;
        const REAL* x_row = x + at.row * L;
        const acc_t mu = mean[at.row], is = invstd[at.row];
        const int first_parameter = (int)(at.row % groups) * per_group;
        acc_t mean_g, mean_g_xhat;
        if (sums_given) {
            mean_g = row_sums[2 * at.row];
            mean_g_xhat = row_sums[2 * at.row + 1];
        } else {
            acc_t sum_g = (acc_t)0, sum_g_xhat = (acc_t)0;
            gradient_sums<V>(dy_row, x_row, 0, L, inner, first_parameter, weight, has_weight, mu, is, sum_g,
                             sum_g_xhat);
            mean_g = block_reduce(sum_g, scratch, false) / (acc_t)L;
            mean_g_xhat = block_reduce(sum_g_xhat, scratch, false) / (acc_t)L;
        }
        if (!centered)
            mean_g = (acc_t)0;
        const REAL* const rows_in[2] = {x_row, dy_row};
        for_each_pack<V, 2, true>(rows_in, dx + at.row * L, at.begin, at.end, inner, [&](int q, const acc_t (&v)[2]) {
            const acc_t g = scaled_gradient(v[1], weight, first_parameter + q, has_weight);
            const acc_t xhat = (v[0] - mu) * is;
            return (g - mean_g - xhat * mean_g_xhat) * is;
        });
    }
}

// row_norm_slice_sums: a block a (row, slice); its sums of g and g * xhat go to `partial`, and the
// block that completes a row's slices adds them in slice order (thread 0) into row_sums (their means)
template <int V>
static __device__ __forceinline__ void slice_sums(const REAL* dy, const REAL* x, const acc_t* mean,
                                                  const acc_t* invstd, const REAL* weight, acc_t* row_sums,
                                                  acc_t* partial, unsigned int* arrivals, long long rows, int L,
                                                  int groups, int inner, int span, int has_weight, acc_t* scratch,
                                                  int* last)
{
    const int per_group = L / inner, slices = 1 + (L - 1) / span;
    for (long long item = blockIdx.x; item < rows * slices; item += gridDim.x) {
        const RowSlice at(item, slices, span, L);
        acc_t sum_g = (acc_t)0, sum_g_xhat = (acc_t)0;
        gradient_sums<V>(dy + at.row * L, x + at.row * L, at.begin, at.end, inner, (int)(at.row % groups) * per_group,
                         weight, has_weight, mean[at.row], invstd[at.row], sum_g, sum_g_xhat);
        sum_g = block_reduce(sum_g, scratch, false);
        sum_g_xhat = block_reduce(sum_g_xhat, scratch, false);
        if (threadIdx.x == 0) {
            partial[2 * item] = sum_g;
            partial[2 * item + 1] = sum_g_xhat;
        }
        if (!last_to_arrive(arrivals, at.row, slices, last) || threadIdx.x != 0)
            continue;
        sum_g = sum_g_xhat = (acc_t)0;
        for (long long k = at.row * slices; k < (at.row + 1) * slices; ++k) {
            sum_g += __ldcg(&partial[2 * k]);
            sum_g_xhat += __ldcg(&partial[2 * k + 1]);
        }
        row_sums[2 * at.row] = sum_g / (acc_t)L;
        row_sums[2 * at.row + 1] = sum_g_xhat / (acc_t)L;
    }
}

// Each kernel twice: wide (packs of WIDE elements, 16 bytes: the host checks that the streamed
// arrays start on 16 bytes and L is whole packs) and _unaligned (one element at a time).
// Grids: min(rows * slices, 2^31 - 1) blocks (slices = ceil(L / span)), blockDim a power of two
// (32..256) the host picks for 2 packs a thread; mean, invstd, row_sums and partial in acc_t,
// arrivals (rows, zero; left zero) for the slice kernels.
// weight / bias are read only with has_weight / has_bias, y written only with write_y; centered 0:
// RMSNorm (mean 0; row_norm_forward, row_norm_slice_stats and row_norm_backward_dx take it).
#define FORWARD_PARAMETERS                                                                                  \
    const REAL* __restrict__ x, REAL* __restrict__ y, acc_t* __restrict__ mean, acc_t* __restrict__ invstd,    \
        const REAL* __restrict__ weight, const REAL* __restrict__ bias, long long rows, int L, int groups,    \
        int inner, int span, acc_t eps, int has_weight, int has_bias, int write_y, int stats_given, int centered
#define FORWARD(V)                                                                                            \
    __shared__ acc_t scratch[BLOCK_THREADS];                                                                 \
    forward_rows<V>(x, y, mean, invstd, weight, bias, rows, L, groups, inner, span, eps, has_weight, has_bias,  \
                    write_y, stats_given, centered, scratch)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) row_norm_forward(FORWARD_PARAMETERS)
{
    FORWARD(WIDE);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) row_norm_forward_unaligned(FORWARD_PARAMETERS)
{
    FORWARD(1);
}

#define SLICE_STATS_PARAMETERS                                                                                \
    const REAL* __restrict__ x, acc_t* __restrict__ mean, acc_t* __restrict__ invstd,                        \
        acc_t* __restrict__ partial, unsigned int* __restrict__ arrivals, long long rows, int L, int span,    \
        acc_t eps, int centered
#define SLICE_STATS(V)                                                                                        \
    __shared__ acc_t scratch[BLOCK_THREADS];                                                                 \
    __shared__ int last;                                                                                     \
    slice_stats<V>(x, mean, invstd, partial, arrivals, rows, L, span, eps, centered, scratch, &last)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) row_norm_slice_stats(SLICE_STATS_PARAMETERS)
{
    SLICE_STATS(WIDE);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_slice_stats_unaligned(SLICE_STATS_PARAMETERS)
{
    SLICE_STATS(1);
}

#define BACKWARD_PARAMETERS                                                                                   \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,                 \
        const acc_t* __restrict__ invstd, const REAL* __restrict__ weight, const acc_t* __restrict__ row_sums, \
        REAL* __restrict__ dx, long long rows, int L, int groups, int inner, int span, int has_weight,        \
        int sums_given, int centered
#define BACKWARD(V)                                                                                           \
    __shared__ acc_t scratch[BLOCK_THREADS];                                                                 \
    backward_rows<V>(dy, x, mean, invstd, weight, row_sums, dx, rows, L, groups, inner, span, has_weight,    \
                     sums_given, centered, scratch)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) row_norm_backward_dx(BACKWARD_PARAMETERS)
{
    BACKWARD(WIDE);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_backward_dx_unaligned(BACKWARD_PARAMETERS)
{
    BACKWARD(1);
}

#define SLICE_SUMS_PARAMETERS                                                                                 \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, const acc_t* __restrict__ mean,                 \
        const acc_t* __restrict__ invstd, const REAL* __restrict__ weight, acc_t* __restrict__ row_sums,     \
        acc_t* __restrict__ partial, unsigned int* __restrict__ arrivals, long long rows, int L, int groups,  \
        int inner, int span, int has_weight
#define SLICE_SUMS(V)                                                                                         \
    __shared__ acc_t scratch[BLOCK_THREADS];                                                                 \
    __shared__ int last;                                                                                     \
    slice_sums<V>(dy, x, mean, invstd, weight, row_sums, partial, arrivals, rows, L, groups, inner, span,    \
                  has_weight, scratch, &last)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) row_norm_slice_sums(SLICE_SUMS_PARAMETERS)
{
    SLICE_SUMS(WIDE);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
row_norm_slice_sums_unaligned(SLICE_SUMS_PARAMETERS)
{
    SLICE_SUMS(1);
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
