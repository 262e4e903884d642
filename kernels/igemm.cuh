// Implicit-GEMM tile machinery of conv2d_fprop.cu, conv2d_dgrad.cu and conv2d_wgrad.cu (their
// header comments give each GEMM view and their loaders).
//
// A block of THREADS_M x THREADS_N threads computes a BM x BN tile of the GEMM output, reducing in
// steps of BK = 8. Four tiles (IGEMM_LARGE ...): large 128 x 128, tall 128 x 64, wide 64 x 128,
// small 64 x 64. In fp32 every thread owns 8 x 8 outputs and the thread count sets the tile (256,
// 128, 128, 64 threads): 64 FFMAs per 4 LDS.128 on every tile. In fp64 256 threads own 8 x 8
// (large) down to 4 x 4 (small) doubles.
// Register blocking, vectorized: VEC = 16 bytes / sizeof(REAL) consecutive rows (columns) form a
// "run"; a thread owns TM / VEC runs of rows at  RUN_M*i + VEC*tm  (columns: RUN_N*j + VEC*tn;
// RUN_M = VEC*THREADS_M, tm < THREADS_M) and reads each with one 128-bit shared load per
// reduction row.
// Warp tiling: a warp's lanes are 4 (M) x 8 (N) threads, so its fragments come from 4 A runs (the
// lanes of a quarter warp read the same one: broadcast) and 8 B runs (128 contiguous bytes per
// quarter warp: one wavefront).
// The A (BM x BK) and B (BK x BN) tiles sit in shared memory k-major, rows padded (IgemmTile): rows
// 16-byte aligned for the vector loads, and every loader's stores on 32 different banks.
// Main loop (igemm_main_loop), residue first: the first step takes the rows that do not fill a
// step, so no later load tests the reduction range. sm_80 and newer: a ring of IGEMM_STAGES stages
// filled by cp.async straight from global memory (zero-fill for out-of-bounds values), one barrier
// per step. sm_70 / sm_75: two stages staged through registers, the next step fetched in two halves
// (A during the first half of the multiply, B during the second) so that only one operand's values
// are in flight. Both loops are unrolled by their stages, so that every shared access is one
// LDS/STS with an immediate offset from a register fixed for the whole loop, and both sum the same
// products in the same order (bit-identical results). Every tile keeps within its register cap
// with no spill on sm_70..sm_90.
// Everything here is __forceinline__ and fully unrolled, so the accumulators and fetched values
// stay in registers exactly as if written out in each kernel.

#include "common.cuh"

#define CHUNK_ROWS 8   // split-K chunks are multiples of it (cnn_gpu.gpu.conv.BK)

#if REAL_IS_DOUBLE
typedef double2 real_vec;
#define VEC 2
#else
typedef float4 real_vec;
#define VEC 4
#endif

// The four block tiles: IGEMM_<TILE> (threads along M, threads along N, outputs per thread TM, TN:
// a kernel's tile_function<IGEMM_LARGE> arguments), its threads and the resident blocks per SM it is
// built for (its __launch_bounds__, which set its register cap); cnn_gpu.gpu.conv.TILES mirrors them.
// fp32: 8 x 8 outputs per thread everywhere, the thread count sets the tile (128 registers on the
// large tile, 168 on the others, whose threads fetch more values each: 2 to 4 loads per operand and
// step). fp64: 256 threads, the outputs per thread set the tile (8 x 8 doubles on the large tile:
// its 128 accumulator registers fit in 255).
#if REAL_IS_DOUBLE
#define IGEMM_LARGE 16, 16, 8, 8
#define IGEMM_TALL 16, 16, 8, 4
#define IGEMM_WIDE 16, 16, 4, 8
#define IGEMM_SMALL 16, 16, 4, 4
#define IGEMM_LARGE_THREADS 256
#define IGEMM_TALL_THREADS 256
#define IGEMM_WIDE_THREADS 256
#define IGEMM_SMALL_THREADS 256
#define IGEMM_LARGE_BLOCKS 1
#define IGEMM_TALL_BLOCKS 1   // at 128 registers tall and wide spill on sm_70 / sm_75
#define IGEMM_WIDE_BLOCKS 1
#define IGEMM_SMALL_BLOCKS 3
#else
#define IGEMM_LARGE 16, 16, 8, 8
#define IGEMM_TALL 16, 8, 8, 8
#define IGEMM_WIDE 8, 16, 8, 8
#define IGEMM_SMALL 8, 8, 8, 8
#define IGEMM_LARGE_THREADS 256
#define IGEMM_TALL_THREADS 128
#define IGEMM_WIDE_THREADS 128
#define IGEMM_SMALL_THREADS 64
#define IGEMM_LARGE_BLOCKS 2
#define IGEMM_TALL_BLOCKS 3
#define IGEMM_WIDE_BLOCKS 3
#define IGEMM_SMALL_BLOCKS 6
#endif
template <int THREADS_M, int THREADS_N, int TM, int TN>
struct IgemmThreads {
    static constexpr int COUNT = THREADS_M * THREADS_N;
};
static_assert(IgemmThreads<IGEMM_LARGE>::COUNT == IGEMM_LARGE_THREADS && IgemmThreads<IGEMM_TALL>::COUNT == IGEMM_TALL_THREADS
              && IgemmThreads<IGEMM_WIDE>::COUNT == IGEMM_WIDE_THREADS && IgemmThreads<IGEMM_SMALL>::COUNT == IGEMM_SMALL_THREADS,
              "a tile's threads are its thread grid's");

// How a loader walks its operand: k fastest (a warp covers BK reduction rows x 32/BK columns, for
// operands contiguous along the reduction) or k slowest (a warp covers PASS consecutive columns of
// each of 32/PASS rows, for operands contiguous along the columns).
enum LoaderOrder { K_FASTEST, K_SLOWEST };

// A tile of THREADS_M x THREADS_N threads of TM x TN outputs each, whose A and B loaders walk in
// A_ORDER and B_ORDER. The loaders fetch PASS = threads / BK columns of every reduction row per
// pass (a thread's values of one operand lie PASS columns apart). Row pitches, in values, keep the
// rows 16-byte aligned and each phase of a loader's stores (fp32: the warp; fp64: a half warp) on
// distinct banks: k-fastest stores put BK rows x (phase / BK) columns in a phase, which a pad of VEC
// values (16 bytes) spreads over the banks; k-slowest stores put rows of PASS columns in a phase,
// several when a row is narrower than 128 bytes, which a pad of PASS values (the row's own width)
// moves onto the next banks.
template <int THREADS_M, int THREADS_N, int TM_, int TN_, LoaderOrder A_ORDER, LoaderOrder B_ORDER>
struct IgemmTile {
    static constexpr int THREADS = THREADS_M * THREADS_N;
    static constexpr int BK = 8, PASS = THREADS / BK;
    static constexpr int TM = TM_, TN = TN_;
    static constexpr int BM = THREADS_M * TM, BN = THREADS_N * TN;
    static constexpr int RUN_M = VEC * THREADS_M, RUN_N = VEC * THREADS_N;   // rows (columns) one run of every thread covers
    static constexpr int WARPS_N = THREADS_N / 8;
    static constexpr int NARROW_PAD = PASS * (int)sizeof(REAL) < 128 ? PASS : VEC;
    static constexpr int LDA = BM + (A_ORDER == K_SLOWEST ? NARROW_PAD : VEC);
    static constexpr int LDB = BN + (B_ORDER == K_SLOWEST ? NARROW_PAD : VEC);
    static constexpr int A_LOADS = BM / PASS, B_LOADS = BN / PASS;
    static constexpr int STAGE_A = BK * LDA, STAGE = BK * (LDA + LDB);   // A tile, then B tile
    static constexpr LoaderOrder A_WALK = A_ORDER, B_WALK = B_ORDER;
    // the cp.async ring runs rounds of untested steps (igemm_reduce), except on the fp64 small tile,
    // whose 80-register cap (3 blocks per SM) they cost a spill: it tests every step
    static constexpr bool ROUNDS = TM * TN > 16;
    static_assert(THREADS_M % 4 == 0 && THREADS_N % 8 == 0, "a warp is 4 x 8 threads");
    static_assert(TM % VEC == 0 && TN % VEC == 0, "whole runs");
};

// Output row of accumulator row i in the tile (RUN = Tile::RUN_M, t = igemm_tm), or column of
// accumulator column j (Tile::RUN_N, igemm_tn)
template <int RUN>
__device__ __forceinline__ int igemm_offset(int i, int t) { return RUN * (i / VEC) + VEC * t + i % VEC; }
template <class Tile>
__device__ __forceinline__ int igemm_tm() { return (int)(threadIdx.x / 32 / Tile::WARPS_N) * 4 + (int)(threadIdx.x % 32) / 8; }
template <class Tile>
__device__ __forceinline__ int igemm_tn() { return (int)(threadIdx.x / 32 % Tile::WARPS_N) * 8 + (int)(threadIdx.x % 8); }

// Loader position (reduction row k, first column m) of this thread in the A / B tile
struct LoaderPosition {
    int k, m;
};
template <class Tile, LoaderOrder ORDER>
__device__ __forceinline__ LoaderPosition igemm_position()
{
    if (ORDER == K_FASTEST) return {(int)(threadIdx.x % Tile::BK), (int)(threadIdx.x / Tile::BK)};
    return {(int)(threadIdx.x / Tile::PASS), (int)(threadIdx.x % Tile::PASS)};
}
template <class Tile>
__device__ __forceinline__ LoaderPosition igemm_a_position() { return igemm_position<Tile, Tile::A_WALK>(); }
template <class Tile>
__device__ __forceinline__ LoaderPosition igemm_b_position() { return igemm_position<Tile, Tile::B_WALK>(); }

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

// T values from T / VEC runs starting at offset `at`, RUN apart, one 128-bit load per run
template <int RUN, int T>
__device__ __forceinline__ void igemm_load_runs(REAL (&frag)[T], const REAL* at)
{
#pragma unroll
    for (int run = 0; run < T / VEC; ++run) {
        const real_vec v = *reinterpret_cast<const real_vec*>(at + RUN * run);
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
        igemm_load_runs<Tile::RUN_M>(a_frag, a_read + STAGE_AT + k * Tile::LDA);
        igemm_load_runs<Tile::RUN_N>(b_frag, b_read + STAGE_AT + k * Tile::LDB);
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
            for (int j = 0; j < Tile::TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
    }
}

// Tap masks of a gathered operand column: bit t (t < 16) of igemm_tap_bits says that filter tap t of
// one dimension lands inside the input (origin + t*dil in [0, size)); a column's mask
// (igemm_tap_mask) holds the row bits in its low half and the column bits in its high half, so tap
// (r, s) is in bounds when igemm_in_bounds(mask, igemm_tap_select(r, s)): one LOP3 per load.
// Filters with more than 16 taps in a dimension run on an operand whose every tap is in bounds,
// zero-padded by the launcher when needed (cnn_gpu.gpu.conv.MASK_TAPS): their mask has all 32 bits
// set, which passes any select, so the select needs no clamp of r and s (its clamping funnel shifts
// keep it defined: a tap past 15 selects another bit, or none).
__device__ __forceinline__ unsigned igemm_tap_bits(int origin, int taps, int dil, int size)
{
    unsigned bits = 0;
#pragma unroll
    for (int t = 0; t < 16; ++t)
        if (t < taps && (unsigned)(origin + t * dil) < (unsigned)size) bits |= 1u << t;
    return bits;
}
__device__ __forceinline__ unsigned igemm_tap_mask(int row_origin, int row_taps, int row_dil, int rows, int col_origin,
                                                   int col_taps, int col_dil, int cols)
{
    if (max(row_taps, col_taps) > 16) return ~0u;
    return igemm_tap_bits(row_origin, row_taps, row_dil, rows) | igemm_tap_bits(col_origin, col_taps, col_dil, cols) << 16;
}
__device__ __forceinline__ unsigned igemm_tap_select(int r, int s)
{
    return __funnelshift_lc(0u, 1u, r) | __funnelshift_lc(0u, 0x10000u, s);
}
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

// Where a loader value comes from: its address `at` in its operand's global array, read when `valid`
// (else the value is 0). The kernels' a_source(i) / b_source(j) give it for their i-th A / j-th B
// value of the step.
struct IgemmSource {
    const REAL* at;
    bool valid;
};

#if __CUDA_ARCH__ >= 800
// sm_80 and newer: a ring of IGEMM_STAGES stages filled by cp.async straight from global memory
// (zero-fill for invalid values), no register staging. fp32 keeps 3 steps in flight; fp64 2, which
// the large tile's 33 KB of stages already take out of the 48 KB of static shared memory.
#if REAL_IS_DOUBLE
#define IGEMM_STAGES 2
#else
#define IGEMM_STAGES 3
#endif

// Copy this step's N values of one operand to the stage at `store` (value i to store[i*PASS]),
// zeros where !ok (rows before the range in the residue step) or the source is invalid
template <class Tile, int N, class Source>
__device__ __forceinline__ void igemm_copy(REAL* store, bool ok, Source& source)
{
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const IgemmSource from = source(i);
        cp_async<sizeof(REAL)>(store + Tile::PASS * i, from.at, ok && from.valid);
    }
}

// One step of the ring, multiplying stage STAGE_NO: wait for its group and sync (every thread's
// copies visible, every thread done with the previous stage), multiply, then refill the previous
// stage with the step STAGES-1 ahead if there is one (REFILLS: the caller knows there is). A group
// is committed per step, empty ones included, so that "at most STAGES-2 pending" always means "this
// step has landed". Returns whether a step was left to multiply.
template <class Tile, int STAGE_NO, bool REFILLS, class SourceA, class SourceB, class Advance>
__device__ __forceinline__ bool igemm_ring_step(REAL (&acc)[Tile::TM][Tile::TN], const REAL* a_read,
                                                const REAL* b_read, REAL* a_store, REAL* b_store, int& remaining,
                                                SourceA& a_source, SourceB& b_source, Advance& advance)
{
    constexpr int READ_AT = STAGE_NO * Tile::STAGE;
    constexpr int WRITE_AT = (STAGE_NO + IGEMM_STAGES - 1) % IGEMM_STAGES * Tile::STAGE;
    if (!REFILLS && remaining == 0)
        return false;
    cp_async_wait<IGEMM_STAGES - 2>();
    __syncthreads();
    igemm_multiply<Tile, READ_AT, 0, Tile::BK>(acc, a_read, b_read);
    if (REFILLS || remaining >= IGEMM_STAGES) {
        advance();
        igemm_copy<Tile, Tile::A_LOADS>(a_store + WRITE_AT, true, a_source);
        igemm_copy<Tile, Tile::B_LOADS>(b_store + WRITE_AT, true, b_source);
    }
    cp_async_commit();
    --remaining;
    return true;
}

// The main loop (igemm_main_loop states the contract): steps 0..STAGES-2 copied ahead, then
// igemm_ring_step unrolled by the stages, so that every shared access has an immediate offset:
// rounds of STAGES steps that all refill, tested once per round, then the last steps (or, without
// Tile::ROUNDS, every step tested).
template <class Tile, class SourceA, class SourceB, class Advance>
__device__ __forceinline__ void igemm_reduce(REAL (&acc)[Tile::TM][Tile::TN], REAL* smem, int a_k, int a_m, int b_k,
                                             int b_n, int k_count, SourceA& a_source, SourceB& b_source,
                                             Advance& advance)
{
    static_assert(IGEMM_STAGES == 2 || IGEMM_STAGES == 3, "the loop below is unrolled by 2 or 3 stages");
    const REAL* a_read = smem + keep_in_register(VEC * igemm_tm<Tile>());
    const REAL* b_read = smem + keep_in_register(Tile::STAGE_A + VEC * igemm_tn<Tile>());
    REAL* a_store = smem + keep_in_register(a_k * Tile::LDA + a_m);
    REAL* b_store = smem + keep_in_register(Tile::STAGE_A + b_k * Tile::LDB + b_n);
    const int skipped = igemm_skipped_rows<Tile>(k_count);
    int remaining = (k_count + skipped) / Tile::BK;   // steps not yet multiplied
#pragma unroll
    for (int ahead = 0; ahead < IGEMM_STAGES - 1; ++ahead) {
        if (ahead < remaining) {
            if (ahead > 0) advance();
            igemm_copy<Tile, Tile::A_LOADS>(a_store + ahead * Tile::STAGE, ahead > 0 || a_k >= skipped,
                                            a_source);
            igemm_copy<Tile, Tile::B_LOADS>(b_store + ahead * Tile::STAGE, ahead > 0 || b_k >= skipped,
                                            b_source);
        }
        cp_async_commit();
    }
    if (Tile::ROUNDS) {
        while (remaining >= 2 * IGEMM_STAGES - 1) {
            igemm_ring_step<Tile, 0, true>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source, advance);
            igemm_ring_step<Tile, 1, true>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source, advance);
            if (IGEMM_STAGES == 3)
                igemm_ring_step<Tile, 2 % IGEMM_STAGES, true>(acc, a_read, b_read, a_store, b_store, remaining, a_source,
                                                              b_source, advance);
        }
        // the last steps, at most 2*STAGES-2: straight code (no second loop)
        if (igemm_ring_step<Tile, 0, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source, advance)
            && igemm_ring_step<Tile, 1, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source,
                                               advance)
            && IGEMM_STAGES == 3
            && igemm_ring_step<Tile, 2 % IGEMM_STAGES, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source,
                                                              b_source, advance))
            igemm_ring_step<Tile, 0, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source, advance);
    } else {
        while (igemm_ring_step<Tile, 0, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source,
                                               advance)
               && igemm_ring_step<Tile, 1, false>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source,
                                                  advance)
               && (IGEMM_STAGES == 2
                   || igemm_ring_step<Tile, 2 % IGEMM_STAGES, false>(acc, a_read, b_read, a_store, b_store, remaining,
                                                                     a_source, b_source, advance))) {
        }
    }
    cp_async_wait_all();   // only empty groups remain; no copy outlives the loop
}
#else
// sm_70 / sm_75: two stages, staged through registers.
#define IGEMM_STAGES 2

// This step's N values of one operand into registers, zeros where !ok or the source is invalid
template <int N, class Source>
__device__ __forceinline__ void igemm_fetch(REAL (&next)[N], bool ok, Source& source)
{
#pragma unroll
    // the address only where the value is read: evaluated ahead of the test, it costs the sm_75
    // dgrad large tile a spill
    for (int i = 0; i < N; ++i) next[i] = ok && source(i).valid ? *source(i).at : (REAL)0;
}

// One step of the main loop, multiplying stage READ_AT. While rows remain, the next step is fetched
// in two halves that overlap the two halves of the multiply: A into registers, first half, A to
// the other stage, B into registers, second half, B to the other stage, barrier. Only one
// operand's values are in flight at a time, which keeps the large tiles within their register
// cap. Returns whether rows remain after this step.
template <class Tile, int READ_AT, class SourceA, class SourceB, class Advance>
__device__ __forceinline__ bool igemm_step(REAL (&acc)[Tile::TM][Tile::TN], const REAL* a_read, const REAL* b_read,
                                           REAL* a_store, REAL* b_store, int& remaining, SourceA& a_source,
                                           SourceB& b_source, Advance& advance)
{
    constexpr int WRITE_AT = Tile::STAGE - READ_AT;
    const bool more = remaining > 0;
    if (more) advance();
    {
        REAL a_next[Tile::A_LOADS];
        if (more) igemm_fetch(a_next, true, a_source);
        igemm_multiply<Tile, READ_AT, 0, Tile::BK / 2>(acc, a_read, b_read);
        if (more) igemm_store<Tile, WRITE_AT>(a_store, a_next);
    }
    {
        REAL b_next[Tile::B_LOADS];
        if (more) igemm_fetch(b_next, true, b_source);
        igemm_multiply<Tile, READ_AT, Tile::BK / 2, Tile::BK>(acc, a_read, b_read);
        if (more) {
            igemm_store<Tile, WRITE_AT>(b_store, b_next);
            __syncthreads();
        }
    }
    remaining -= Tile::BK;
    return more;
}

// The main loop (igemm_main_loop states the contract): the first step staged, then igemm_step,
// unrolled by the two stages so that every shared access has an immediate offset.
template <class Tile, class SourceA, class SourceB, class Advance>
__device__ __forceinline__ void igemm_reduce(REAL (&acc)[Tile::TM][Tile::TN], REAL* smem, int a_k, int a_m, int b_k,
                                             int b_n, int k_count, SourceA& a_source, SourceB& b_source,
                                             Advance& advance)
{
    const REAL* a_read = smem + keep_in_register(VEC * igemm_tm<Tile>());
    const REAL* b_read = smem + keep_in_register(Tile::STAGE_A + VEC * igemm_tn<Tile>());
    REAL* a_store = smem + keep_in_register(a_k * Tile::LDA + a_m);
    REAL* b_store = smem + keep_in_register(Tile::STAGE_A + b_k * Tile::LDB + b_n);
    const int skipped = igemm_skipped_rows<Tile>(k_count);
    {
        REAL a_next[Tile::A_LOADS], b_next[Tile::B_LOADS];
        igemm_fetch(a_next, a_k >= skipped, a_source);
        igemm_fetch(b_next, b_k >= skipped, b_source);
        igemm_store<Tile, 0>(a_store, a_next);
        igemm_store<Tile, 0>(b_store, b_next);
    }
    __syncthreads();
    int remaining = k_count + skipped - Tile::BK;   // rows after the first step: whole steps
    while (igemm_step<Tile, 0>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source, advance)
           && igemm_step<Tile, Tile::STAGE>(acc, a_read, b_read, a_store, b_store, remaining, a_source, b_source,
                                            advance)) {
    }
}
#endif

// The main loop over a reduction of k_count rows: acc = A * B. The kernel supplies
//   a_source(i) / b_source(j): the IgemmSource of its i-th A / j-th B value of the current step,
//     an address in its A / B operand, and
//   advance(): move its loader state on by BK rows (index carries, no division).
// Its loaders place A value i at (row a_k, column a_m + i*PASS) of the A tile, B value j at (b_k,
// b_n + j*PASS) of the B tile (igemm_a_position / igemm_b_position give these positions), and start
// at the rows igemm_skipped_rows describes. With k_count <= 0 it only zeroes acc (no load, no
// barrier). smem holds IGEMM_STAGES stages of Tile::STAGE values (A tile, then B tile), 16-byte
// aligned.
template <class Tile, class SourceA, class SourceB, class Advance>
__device__ __forceinline__ void igemm_main_loop(REAL (&acc)[Tile::TM][Tile::TN], REAL* smem,
                                                int a_k, int a_m, int b_k, int b_n, int k_count,
                                                SourceA a_source, SourceB b_source, Advance advance)
{
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::TN; ++j) acc[i][j] = (REAL)0;
    if (k_count > 0)
        igemm_reduce<Tile>(acc, smem, a_k, a_m, b_k, b_n, k_count, a_source, b_source, advance);
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
