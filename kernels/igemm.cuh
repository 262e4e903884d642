// Implicit-GEMM tile machinery of conv2d_fprop.cu, conv2d_dgrad.cu and conv2d_wgrad.cu (their
// header comments give each GEMM view and their loaders).
//
// A block of 256 threads computes a BM x BN tile of the GEMM output, reducing in steps of BK = 8.
// Register blocking, vectorized: VEC = 16 bytes / sizeof(REAL) consecutive rows (columns) form a
// "run"; every thread owns RM runs of rows and RN runs of columns, TM x TN = (VEC*RM) x (VEC*RN)
// outputs, at rows  TILE_RUN*i + VEC*tm + v  and columns  TILE_RUN*j + VEC*tn + v  (TILE_RUN =
// 16*VEC, tm, tn in 0..15). Per reduction row a thread reads RM + RN runs with one 128-bit shared
// load each (4 LDS.128 feed 64 FFMAs on the fp32 128x128 tile, not 16 LDS.32).
// Warp tiling: the 8 warps form 4 (M) x 2 (N), a warp's lanes 4 x 8, so a warp's fragments come
// from 4 A runs (lanes of a quarter warp read the same one: broadcast) and 8 B runs (128
// contiguous bytes per quarter warp: one wavefront).
// The A (BM x BK) and B (BK x BN) tiles sit in shared memory k-major with 16 bytes of padding per
// row (pitch BM + VEC): 16-byte aligned rows for the vector loads, and loaders that store along
// k (8 rows x 4 columns per warp) hit 32 different banks.
// Main loop (igemm_main_loop): two stages, the loop unrolled by them so that every shared access
// is one LDS/STS with an immediate offset from a register fixed for the whole loop. Residue first:
// the first step takes the rows that do not fill a step, so no later load tests the reduction
// range. While a step multiplies one stage, the next step is fetched into registers in two halves
// (A during the first half of the multiply, B during the second), so that only one operand's
// values are in flight: the large tiles keep within 128 registers with no spill on sm_70..sm_90.
// Everything here is __forceinline__ and fully unrolled, so the accumulators and fetched values
// stay in registers exactly as if written out in each kernel.

#include "common.cuh"

#define IGEMM_THREADS 256
#define CHUNK_ROWS 8   // split-K chunks are multiples of it (cnn_gpu.gpu.conv.BK)

#if REAL_IS_DOUBLE
typedef double2 real_vec;
#define VEC 2
#else
typedef float4 real_vec;
#define VEC 4
#endif
#define TILE_RUN (16 * VEC)   // rows (columns) that one run of all 16 thread rows (columns) covers

// Resident blocks per SM each tile variant is built for (its register cap at 256 threads: 128
// registers for 2 blocks, 80 for 3).
#define LARGE_BLOCKS 2
#define MEDIUM_BLOCKS 2
#define SMALL_BLOCKS 3

// A BM x BN block tile. Loaders fetch PASS = 256 / BK columns of every reduction row per pass (a
// thread's values of one operand lie PASS columns apart).
template <int RM, int RN>
struct IgemmTile {
    static constexpr int BK = 8, PASS = IGEMM_THREADS / BK;
    static constexpr int BM = TILE_RUN * RM, BN = TILE_RUN * RN;
    static constexpr int TM = VEC * RM, TN = VEC * RN;
    static constexpr int LDA = BM + VEC, LDB = BN + VEC;   // padded row pitches
    static constexpr int A_LOADS = BM / PASS, B_LOADS = BN / PASS;
    static constexpr int STAGE_A = BK * LDA, STAGE = BK * (LDA + LDB);   // A tile, then B tile
};

// Output row of accumulator row i (column of accumulator column j: the same with tn), in the tile.
__device__ __forceinline__ int igemm_offset(int i, int t) { return TILE_RUN * (i / VEC) + VEC * t + i % VEC; }
__device__ __forceinline__ int igemm_tm() { return (threadIdx.x / 64) * 4 + (threadIdx.x % 32) / 8; }
__device__ __forceinline__ int igemm_tn() { return ((threadIdx.x / 32) % 2) * 8 + threadIdx.x % 8; }

// Loader positions (reduction row k, first column m) of this thread: k fastest - a warp covers BK
// rows x 32/BK columns, for operands contiguous along the reduction - or k slowest - a warp
// covers 32 consecutive columns of one row, for operands contiguous along the columns.
struct LoaderPosition {
    int k, m;
};
template <class Tile>
__device__ __forceinline__ LoaderPosition igemm_k_fastest() { return {(int)(threadIdx.x % Tile::BK), (int)(threadIdx.x / Tile::BK)}; }
template <class Tile>
__device__ __forceinline__ LoaderPosition igemm_k_slowest() { return {(int)(threadIdx.x / Tile::PASS), (int)(threadIdx.x % Tile::PASS)}; }

// Shared memory is addressed by 32-bit offsets in values from the start of `smem`; a stage's offset
// is a compile-time constant (the main loop is unrolled by the two stages), so every shared access
// is one LDS/STS with an immediate offset from a per-thread register.

// Copy N fetched registers to a stage: value i to store[STAGE_AT + i*PASS] (store points at the
// thread's first slot in stage 0's A or B tile; STAGE_AT is 0 or Tile::STAGE)
template <class Tile, int STAGE_AT, int N>
__device__ __forceinline__ void igemm_store(REAL* store, const REAL (&next)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i) store[STAGE_AT + Tile::PASS * i] = next[i];
}

// T values from T / VEC runs starting at offset `at`, TILE_RUN apart, one 128-bit load per run
template <int T>
__device__ __forceinline__ void igemm_load_runs(REAL (&frag)[T], const REAL* at)
{
#pragma unroll
    for (int run = 0; run < T / VEC; ++run) {
        const real_vec v = *reinterpret_cast<const real_vec*>(at + TILE_RUN * run);
        frag[VEC * run] = v.x;
        frag[VEC * run + 1] = v.y;
#if !REAL_IS_DOUBLE
        frag[VEC * run + 2] = v.z;
        frag[VEC * run + 3] = v.w;
#endif
    }
}

// acc += A * B over rows K_FIRST..K_END-1 of stage STAGE_AT, for this thread's TM x TN outputs;
// a_read / b_read: the thread's first run in row 0 of stage 0's A / B tile
template <class Tile, int STAGE_AT, int K_FIRST, int K_END>
__device__ __forceinline__ void igemm_multiply(REAL (&acc)[Tile::TM][Tile::TN], const REAL* a_read,
                                               const REAL* b_read)
{
#pragma unroll
    for (int k = K_FIRST; k < K_END; ++k) {
        REAL a_frag[Tile::TM], b_frag[Tile::TN];
        igemm_load_runs(a_frag, a_read + STAGE_AT + k * Tile::LDA);
        igemm_load_runs(b_frag, b_read + STAGE_AT + k * Tile::LDB);
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
            for (int j = 0; j < Tile::TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
    }
}

// Tap masks of a gathered operand column: bit t (t < 16) of igemm_tap_bits says that filter tap t of
// one dimension lands inside the input (origin + t*dil in [0, size)); a column's mask holds the
// row bits in its low half and the column bits in its high half, so tap (r, s) is in bounds when
// igemm_in_bounds(mask, igemm_tap_select(r, s)): one LOP3 per load. Filters with more than 16 taps
// in a dimension run on an operand whose every tap is in bounds, zero-padded by the launcher when
// needed (cnn_gpu.gpu.conv.MASK_TAPS): all bits set, and tap t >= 16 tests bit 15.
__device__ __forceinline__ unsigned igemm_tap_bits(int origin, int taps, int dil, int size)
{
    unsigned bits = 0;
#pragma unroll
    for (int t = 0; t < 16; ++t)
        if (t < taps && (unsigned)(origin + t * dil) < (unsigned)size) bits |= 1u << t;
    return bits;
}
__device__ __forceinline__ unsigned igemm_tap_select(int r, int s) { return (1u << min(r, 15)) | (0x10000u << min(s, 15)); }
__device__ __forceinline__ bool igemm_in_bounds(unsigned mask, unsigned select) { return (~mask & select) == 0; }

// Residue first: the first step of a k_count-row reduction takes its k_count % BK rows that do not
// fill a step (a whole step when there are none), so every later step is full and its loads need
// no reduction-range test. A loader whose row in that first step falls before the range - local
// row (0..BK-1) below igemm_skipped_rows - loads zeros; the kernels start their loader state at
// reduction row k_begin + local row - igemm_skipped_rows (possibly before k_begin: they decode it
// with floor division).
template <class Tile>
__device__ __forceinline__ int igemm_skipped_rows(int k_count) { return (Tile::BK - k_count % Tile::BK) % Tile::BK; }

// floor(a / b) for b > 0 (a loader row before the range is negative)
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }

// One step of the main loop, multiplying stage READ_AT. While rows remain, the next step is fetched
// in two halves that overlap the two halves of the multiply: A into registers, first half, A to
// the other stage, B into registers, second half, B to the other stage, barrier. Only one
// operand's values are in flight at a time, which keeps the large tiles within their register
// cap. Returns whether rows remain after this step.
template <class Tile, int READ_AT, class FetchA, class FetchB, class Advance>
__device__ __forceinline__ bool igemm_step(REAL (&acc)[Tile::TM][Tile::TN], const REAL* a_read, const REAL* b_read,
                                           REAL* a_store, REAL* b_store, int& remaining, FetchA& fetch_a,
                                           FetchB& fetch_b, Advance& advance)
{
    constexpr int WRITE_AT = Tile::STAGE - READ_AT;
    const bool more = remaining > 0;
    if (more) advance();
    {
        REAL a_next[Tile::A_LOADS];
        if (more) fetch_a(true, a_next);
        igemm_multiply<Tile, READ_AT, 0, Tile::BK / 2>(acc, a_read, b_read);
        if (more) igemm_store<Tile, WRITE_AT>(a_store, a_next);
    }
    {
        REAL b_next[Tile::B_LOADS];
        if (more) fetch_b(true, b_next);
        igemm_multiply<Tile, READ_AT, Tile::BK / 2, Tile::BK>(acc, a_read, b_read);
        if (more) {
            igemm_store<Tile, WRITE_AT>(b_store, b_next);
            __syncthreads();
        }
    }
    remaining -= Tile::BK;
    return more;
}

// The main loop over a reduction of k_count rows: acc = A * B. The kernel supplies
//   fetch_a(ok, a_next) / fetch_b(ok, b_next): load the values of its A / B loader rows into
//     registers (zeros when ok is false), and
//   advance(): move its loader state on by BK rows (index carries, no division).
// Its loaders place A value i at (row a_k, column a_m + i*PASS) of the A tile, B value j at (b_k,
// b_n + j*PASS) of the B tile (igemm_k_fastest / igemm_k_slowest give such positions), and start
// at the rows igemm_skipped_rows describes. With k_count <= 0
// it only zeroes acc (no load, no barrier). smem holds two stages of Tile::STAGE values (A tile,
// then B tile), 16-byte aligned.
template <class Tile, class FetchA, class FetchB, class Advance>
__device__ __forceinline__ void igemm_main_loop(REAL (&acc)[Tile::TM][Tile::TN], REAL* smem,
                                                int a_k, int a_m, int b_k, int b_n, int k_count,
                                                FetchA fetch_a, FetchB fetch_b, Advance advance)
{
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::TN; ++j) acc[i][j] = (REAL)0;
    if (k_count <= 0)
        return;
    const REAL* a_read = smem + keep_in_register(VEC * igemm_tm());
    const REAL* b_read = smem + keep_in_register(Tile::STAGE_A + VEC * igemm_tn());
    REAL* a_store = smem + keep_in_register(a_k * Tile::LDA + a_m);
    REAL* b_store = smem + keep_in_register(Tile::STAGE_A + b_k * Tile::LDB + b_n);
    const int skipped = igemm_skipped_rows<Tile>(k_count);
    {
        REAL a_next[Tile::A_LOADS], b_next[Tile::B_LOADS];
        fetch_a(a_k >= skipped, a_next);
        fetch_b(b_k >= skipped, b_next);
        igemm_store<Tile, 0>(a_store, a_next);
        igemm_store<Tile, 0>(b_store, b_next);
    }
    __syncthreads();
    int remaining = k_count + skipped - Tile::BK;   // rows after the first step: whole steps
    while (igemm_step<Tile, 0>(acc, a_read, b_read, a_store, b_store, remaining, fetch_a, fetch_b, advance)
           && igemm_step<Tile, Tile::STAGE>(acc, a_read, b_read, a_store, b_store, remaining, fetch_a, fetch_b,
                                            advance)) {
    }
}

// The (split, reduction range) of split-K block z: split `split` sums rows [k_begin, k_begin +
// k_count) of a k_total-row reduction cut into chunks of `chunk` rows (k_count <= 0: empty split).
struct SplitRange {
    int k_begin, k_count;
};
__device__ __forceinline__ SplitRange split_range(int split, int chunk, int k_total)
{
    SplitRange s;
    s.k_begin = split * chunk;
    s.k_count = min(chunk, k_total - s.k_begin);
    return s;
}
