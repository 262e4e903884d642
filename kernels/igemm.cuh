// Implicit-GEMM tile machinery of conv2d_fprop.cu, conv2d_dgrad.cu and conv2d_wgrad.cu (their
// header comments give each GEMM view and why the tiling is what it is).
//
// A block of 256 threads, a 16 x 16 grid (tx, ty), computes a (16*T) x (16*T) tile of the GEMM
// output; thread (tx, ty) owns the T x T outputs at rows ty + 16*i and columns tx + 16*j. The
// reduction runs in steps of BK: the A tile (BM x BK) and B tile (BK x BN) sit in shared memory
// k-major (row k of A holds BM values, at a row pitch lda >= BM; likewise B), double-buffered: the
// next step is fetched into registers while the current one is multiplied, one barrier per step.
// Everything here is __forceinline__ and fully unrolled, so the accumulators and fetched values
// stay in registers exactly as if written out in each kernel.

#include "common.cuh"

#define IGEMM_THREADS 256
#define BK 8

// LARGE_T, SMALL_T: outputs per thread per dimension of the two tiles; SMALL_BLOCKS: resident
// blocks per SM the small tile is built for (its register cap)
#if REAL_IS_DOUBLE
#define LARGE_T 4
#define SMALL_T 2
#define SMALL_BLOCKS 3
#else
#define LARGE_T 8
#define SMALL_T 4
#define SMALL_BLOCKS 4
#endif

// an operand column outside the problem gets this origin, so every tap fails the bounds test
#define OUTSIDE (-(1 << 29))   // the launchers keep every padded extent below 2^28

// Copy the fetched registers to shared buffer `buf`: A value i to row a_k, column a_m + 32*i;
// B value j to row b_k, column b_n + 32*j.
template <int A_LOADS, int B_LOADS>
__device__ __forceinline__ void igemm_store(REAL* smem_a, REAL* smem_b, int lda, int ldb, int buf,
                                            int a_k, int a_m, int b_k, int b_n,
                                            const REAL (&a_next)[A_LOADS], const REAL (&b_next)[B_LOADS])
{
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) smem_a[(buf * BK + a_k) * lda + a_m + 32 * i] = a_next[i];
#pragma unroll
    for (int j = 0; j < B_LOADS; ++j) smem_b[(buf * BK + b_k) * ldb + b_n + 32 * j] = b_next[j];
}

// acc += A tile * B tile of buffer `buf`, for this thread's T x T outputs: per reduction row, T + T
// shared loads (strided by 16: B reads of a warp hit 16 consecutive words, A reads broadcast)
// feed T * T FMAs.
template <int T>
__device__ __forceinline__ void igemm_multiply(REAL (&acc)[T][T], const REAL* smem_a, const REAL* smem_b,
                                               int lda, int ldb, int buf, int tx, int ty)
{
#pragma unroll
    for (int k = 0; k < BK; ++k) {
        REAL a_frag[T], b_frag[T];
#pragma unroll
        for (int i = 0; i < T; ++i) a_frag[i] = smem_a[(buf * BK + k) * lda + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < T; ++j) b_frag[j] = smem_b[(buf * BK + k) * ldb + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < T; ++i)
#pragma unroll
            for (int j = 0; j < T; ++j) acc[i][j] += a_frag[i] * b_frag[j];
    }
}

// The main loop over a reduction of k_count rows: acc = A * B. The kernel supplies
//   fetch(k_base, a_next, b_next): load its values of the step whose first row is k_base into
//     registers (zero outside the problem), and
//   advance(): move its loader state on to the next step (index carries, no division).
// Its loaders place A value i at (row a_k, column a_m + 32*i) of the A tile, B value j at (b_k,
// b_n + 32*j) of the B tile. With k_count <= 0 it only zeroes acc (no load, no barrier).
template <int T, int A_LOADS, int B_LOADS, class Fetch, class Advance>
__device__ __forceinline__ void igemm_main_loop(REAL (&acc)[T][T], REAL* smem_a, REAL* smem_b, int lda, int ldb,
                                                int a_k, int a_m, int b_k, int b_n, int k_count,
                                                Fetch fetch, Advance advance)
{
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < T; ++i)
#pragma unroll
        for (int j = 0; j < T; ++j) acc[i][j] = (REAL)0;
    if (k_count <= 0)
        return;
    REAL a_next[A_LOADS], b_next[B_LOADS];
    fetch(0, a_next, b_next);
    igemm_store(smem_a, smem_b, lda, ldb, 0, a_k, a_m, b_k, b_n, a_next, b_next);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < k_count; k0 += BK) {
        const bool has_next = k0 + BK < k_count;
        if (has_next) {
            advance();
            fetch(k0 + BK, a_next, b_next);
        }
        igemm_multiply(acc, smem_a, smem_b, lda, ldb, buf, tx, ty);
        if (has_next) igemm_store(smem_a, smem_b, lda, ldb, buf ^ 1, a_k, a_m, b_k, b_n, a_next, b_next);
        __syncthreads();
        buf ^= 1;
    }
}
