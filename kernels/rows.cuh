// Reductions along rows. The softmax-shaped kernels (loss.cu's cross entropy, softmax.cu) reduce a
// contiguous row of `size` elements by one block (block_row_max, block_reduce) and walk a row whose
// elements are `inner` apart by one thread (strided_row_max) or, where such rows are too few to fill
// the GPU a thread each, by the segments of a block (for_each_split_row, SplitWalk, segment_reduce);
// distance.cu and loss.cu's margin and embedding losses take a group of lanes a contiguous row
// (for_each_row, RowWalk); distance.cu's _split kernels split too few strided rows as softmax's do.
// Every order is fixed (no atomics), so results are bit-identical run to run. The softmax maxima skip
// NaN (a comparison with NaN is false): a NaN element still makes its row's exp sum, and so every
// output of the row, NaN.

#include "common.cuh"

// a or b, whichever is larger; b where a is NaN
static __device__ __forceinline__ acc_t larger(acc_t a, acc_t b) { return a > b ? a : b; }

// a or b, whichever is larger; a NaN where either is NaN
static __device__ __forceinline__ acc_t larger_or_nan(acc_t a, acc_t b) { return a > b || a != a ? a : b; }

// Sum (or max) of one value per thread over each group of `lanes` consecutive threads (a power of
// two dividing blockDim.x), by a halving tree in shared memory; every thread gets its group's result.
// The max skips NaN (larger) or, with keep_nan, is NaN where any value is (larger_or_nan).
// Every thread of the block calls it (its barriers); the trailing one lets the caller reuse `scratch`
// at once. whole_block (lanes == blockDim.x: block_reduce) spares the lane arithmetic, and `lanes` is
// unsigned: either cost the softmax and row norm kernels registers (up to 6, and 10 for a signed halving).
template <bool whole_block, bool keep_nan = false>
__device__ acc_t group_reduce(acc_t value, acc_t* scratch, bool take_max, unsigned lanes)
{
    const int t = threadIdx.x, lane = whole_block ? t : t & (lanes - 1);
    scratch[t] = value;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half >>= 1) {
        if (lane < half) {
            const acc_t other = scratch[t + half];
            scratch[t] = !take_max ? scratch[t] + other
                         : keep_nan ? larger_or_nan(other, scratch[t]) : larger(other, scratch[t]);
        }
        __syncthreads();
    }
    const acc_t result = scratch[whole_block ? 0 : t - lane];
    __syncthreads();
    return result;
}

// group_reduce over the whole block (blockDim.x a power of two)
__device__ acc_t block_reduce(acc_t value, acc_t* scratch, bool take_max)
{
    return group_reduce<true>(value, scratch, take_max, blockDim.x);
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
// and embedding losses): a group of `lanes` consecutive threads a row (row_lanes), lane l taking elements
// l, l + lanes, ... in order, and sum() (max_or_nan()) combining the lanes' partial sums (maxima) by
// group_reduce's fixed-order tree. Where the rows are contiguous a warp reads neighbouring elements of
// its row or rows (coalesced); rows `inner` > 1 apart take a lane each (neighbouring threads already
// read neighbouring elements), reduced by no one. Every thread of the block calls sum() alike.
// One type, not one a layout: NVRTC takes no generic lambdas for the kernels' row bodies.
struct RowWalk {
    // a group past the last row starts at 2^31 - 1, past its row (such groups exist only for rows
    // under BLOCK_THREADS elements): it walks no element. An int walk of a row of more than
    // 2^31 - step elements would overflow: the host refuses those (gpu._grid.row_walk_blocks).
    int first, step;
    acc_t* scratch;    // BLOCK_THREADS acc_t of shared memory
    __device__ bool leader() const { return first == 0; }   // lane 0 of a group with a row
    __device__ acc_t sum(acc_t partial) const
    {
        return step > 1 ? group_reduce<false>(partial, scratch, false, step) : partial;
    }
    // the row's maximum, NaN (REAL_NAN, whatever NaN a lane held) where any lane's partial is NaN
    __device__ acc_t max_or_nan(acc_t partial) const
    {
        if (step == 1)
            return partial;
        const acc_t largest = group_reduce<false, true>(partial, scratch, true, step);
        return largest != largest ? REAL_NAN : largest;
    }
};

// The lanes of a contiguous row of `size` elements: the smallest power of two covering it, at most
// BLOCK_THREADS (gpu._grid.row_lanes: the host's grid).
__device__ __forceinline__ int row_lanes(long long size)
{
    int lanes = 1;
    while (lanes < size && lanes < BLOCK_THREADS)
        lanes *= 2;
    return lanes;
}

// body(row, walk) for each row of (outer, size, inner), rows = outer * inner, in blocks of
// BLOCK_THREADS (grid: blocks_for(rows * lanes)): BLOCK_THREADS / lanes rows a block, `lanes` =
// row_lanes(size) where the rows are contiguous (inner == 1), else 1; grid-stride over the rows.
// The loop is the same for every thread of a block (its groups' barriers): a group past the last row
// runs the body on the last row, walking no element and writing nothing (walk.first, leader()).
// `scratch`: BLOCK_THREADS acc_t of shared memory.
template <class Body>
__device__ __forceinline__ void for_each_row(long long rows, long long size, long long inner, acc_t* scratch,
                                             Body body)
{
    const int lanes = inner == 1 ? row_lanes(size) : 1, groups = BLOCK_THREADS / lanes;
    const int lane = threadIdx.x & (lanes - 1), group = threadIdx.x / lanes;
    for (long long first = (long long)blockIdx.x * groups; first < rows; first += (long long)gridDim.x * groups) {
        const long long row = first + group;
        const RowWalk walk{row < rows ? lane : 0x7fffffff, lanes, scratch};
        body(row < rows ? row : rows - 1, walk);
    }
}

// Sum (or max, skipping NaN or, with keep_nan, NaN where any value is) of one value per thread over each
// set of threads `lanes` apart (lanes a power of two dividing BLOCK_THREADS: a SplitWalk's segments of one
// row), by a halving tree in shared memory whose every step pairs threads t and t + half, half a multiple
// of lanes; every thread gets its set's result. Every thread of the block calls it; the trailing barrier
// lets the caller reuse `scratch` at once.
template <bool keep_nan = false>
__device__ acc_t segment_reduce(acc_t value, acc_t* scratch, bool take_max, unsigned lanes)
{
    const unsigned t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (unsigned half = BLOCK_THREADS / 2; half >= lanes; half >>= 1) {
        if (t < half) {
            const acc_t other = scratch[t + half];
            scratch[t] = !take_max ? scratch[t] + other
                         : keep_nan ? larger_or_nan(other, scratch[t]) : larger(other, scratch[t]);
        }
        __syncthreads();
    }
    const acc_t result = scratch[t & (lanes - 1)];
    __syncthreads();
    return result;
}

// One thread's share of a strided row (elements `inner` apart) split over the `segments` =
// BLOCK_THREADS / lanes threads of a block that reduce it: segment s takes the row's elements s,
// s + segments, ... in order, at offsets e, e + step, ... below `end`. A warp holds `lanes` neighbouring
// rows (neighbouring inner positions) times 32 / lanes consecutive segments, so each of its reads
// takes whole sectors where lanes spans a sector, or covers inner (the segments' elements adjoin).
// A thread past the last row walks nothing (e == end) and writes nothing (leader()).
struct SplitWalk {
    long long e, end, step;   // the thread's first element, its row's end, segments * inner
    int k, segments;          // the index of its first element in the row (its segment), the row's segments
    unsigned lanes;
    acc_t* scratch;           // BLOCK_THREADS acc_t of shared memory
    __device__ bool leader() const { return k == 0 && e < end; }   // segment 0 of a row
    __device__ acc_t sum(acc_t partial) const { return segment_reduce(partial, scratch, false, lanes); }
    __device__ acc_t max(acc_t partial) const { return segment_reduce(partial, scratch, true, lanes); }
    // the row's maximum, NaN (REAL_NAN) where any segment's partial is NaN (RowWalk's max_or_nan)
    __device__ acc_t max_or_nan(acc_t partial) const
    {
        const acc_t largest = segment_reduce<true>(partial, scratch, true, lanes);
        return largest != largest ? REAL_NAN : largest;
    }
    // visit(offset) for each of the thread's elements, in order
    template <class Visit>
    __device__ __forceinline__ void each(Visit visit) const
    {
        for (long long at = e; at < end; at += step)
            visit(at);
    }
};

// body(row, walk) for each row of (outer, size, inner), rows = outer * inner, `lanes` consecutive rows a
// block of BLOCK_THREADS (a power of two dividing it; grid: ceil(rows / lanes) blocks, grid-stride
// beyond): thread t takes row t % lanes of its block's and segment t / lanes of that row
// (gpu._grid.split_row_lanes picks lanes). The loop is the same for every thread of a block
// (segment_reduce's barriers): a lane past the last row runs the body on the last row, walking no element.
template <class Body>
__device__ __forceinline__ void for_each_split_row(long long rows, int size, long long inner, int lanes, acc_t* scratch,
                                                   Body body)
{
    const int lane = threadIdx.x & (lanes - 1), segment = threadIdx.x / lanes, segments = BLOCK_THREADS / lanes;
    for (long long first = (long long)blockIdx.x * lanes; first < rows; first += (long long)gridDim.x * lanes) {
        const bool has_row = first + lane < rows;
        const long long row = has_row ? first + lane : rows - 1;
        const long long n = row / inner;
        const long long start = n * size * inner + (row - n * inner);   // the row's element 0
        const long long end = has_row ? start + size * inner : start;
        body(row, SplitWalk{start + segment * inner, end, segments * inner, segment, segments, (unsigned)lanes,
                            scratch});
    }
}
