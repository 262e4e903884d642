// The tensor-core block tiles shared by the kernels of conv2d_tc.cu (their header comments give
// each GEMM view and loader).
//
// A block of 128 threads computes a (64 * WARPS_M) x 128 tile of a GEMM output with TF32 operands
// and FP32 accumulation, in reduction steps of 16. WARPS_M = 2: 2 x 2 warps of 64 x 64 (4 x 8
// m16n8k8 tiles, 128 accumulators per thread), the main tile; WARPS_M = 1: 1 x 4 warps of 64 x 32
// for GEMMs of 64 rows or fewer. A warp's fragments come from shared memory by ldmatrix.x4 (B
// always; A in wgrad), or A's from registers (fprop, dgrad: loaded from global memory in
// fragment order). A 64 x 64 warp tile moves 128 bytes of shared fragments per mma with both
// operands shared (what an SM's 32 banks deliver per clock, and an H100 SM finishes one TF32
// m16n8k8 per clock), 64 with A in registers.
//
// Shared tiles (one stage): A as [m][k] rows of the block's GEMM rows, then B as [n][k] rows of
// its 128 columns, every row 16 values + 4 of padding (pitch 80 bytes = 5 x 16). Eight consecutive
// rows start in eight different 16-byte bank groups, so an ldmatrix matrix (8 rows x 16 bytes) and
// a quarter warp's 16-byte stores to 8 consecutive rows (or to rows r and r + 4 of two row groups)
// each take one wavefront. Loaders store the values rounded to TF32 (tf32_operand).

#include "common.cuh"

#define TC_THREADS 128
#define TC_BM 128
#define TC_BN 128
#define TC_BK 16
#define TC_PITCH (TC_BK + 4)
#define TC_TILE_A (TC_BM * TC_PITCH)                    // floats of the A tile of a stage
#define TC_TILE_B (TC_BN * TC_PITCH)                    // floats of the B tile
#define TC_STAGE (TC_TILE_A + TC_TILE_B)                // a stage of A then B; two stages: 40 KiB

// loaded values as they go to the shared tiles (tf32_operand: rounded as the mma reads them)
static __device__ __forceinline__ float tf32_rounded(float v) { return __uint_as_float(tf32_operand(v)); }

static __device__ __forceinline__ float4 tf32_rounded4(float a, float b, float c, float d) {
    return make_float4(tf32_rounded(a), tf32_rounded(b), tf32_rounded(c), tf32_rounded(d));
}

// The 4 warps of a block tile of 64 * WARPS_M rows and 128 columns: WARPS_M x (4 / WARPS_M) warp
// tiles of 64 rows and NT = 16 / (4 / WARPS_M) n tiles (64 x 64 for WARPS_M = 2, 64 x 32 for 1).
template <int WARPS_M>
struct MmaTile {
    static constexpr int WARPS_N = 4 / WARPS_M, NT = 16 / WARPS_N;
    float acc[4][NT][4];     // [m tile][n tile][c0..c3]
    int warp_row, warp_col;  // the warp tile's origin in the block tile
    int group, in_group;     // lane / 4 and lane % 4: the fragment coordinates of the PTX ISA
    int a_row, b_row;        // this lane's ldmatrix row addresses in a stage (offsets in floats)

    // b_tile: where the B rows start in a stage (TC_TILE_A, or 0 with A in registers)
    __device__ __forceinline__ void init(int b_tile) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        warp_row = (warp / WARPS_N) * 64;
        warp_col = (warp % WARPS_N) * NT * 8;
        group = lane >> 2;
        in_group = lane & 3;
        // A, per m tile: matrices (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7, k 4-7),
        // (rows 8-15, k 4-7) are a0..a3. B, per pair of n tiles: (n 0-7, k 0-3), (n 0-7, k 4-7),
        // (n 8-15, k 0-3), (n 8-15, k 4-7) are b0, b1 of the first and b0, b1 of the second.
        const int row = lane & 7, matrix = lane >> 3;
        a_row = (warp_row + row + (matrix & 1) * 8) * TC_PITCH + (matrix >> 1) * 4;
        b_row = b_tile + (warp_col + row + (matrix >> 1) * 8) * TC_PITCH + (matrix & 1) * 4;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }

    // acc += A[:, 0:16] * B[0:16, :] from one stage of the shared tiles
    __device__ __forceinline__ void multiply(const float* stage) {
#pragma unroll
        for (int k8 = 0; k8 < 2; ++k8) {
            unsigned int fa[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) ldmatrix_x4(fa[mt], stage + a_row + mt * 16 * TC_PITCH + k8 * 8);
            multiply_k8(fa, stage, k8);
        }
    }

    // the same with this warp's A fragments in registers: a[k8][m tile] (MmaFragments)
    __device__ __forceinline__ void multiply(const unsigned int (&a)[2][4][4], const float* stage) {
#pragma unroll
        for (int k8 = 0; k8 < 2; ++k8) multiply_k8(a[k8], stage, k8);
    }

    // acc += A[:, 8*k8 : 8*k8 + 8] * B[8*k8 : 8*k8 + 8, :], A's fragments given
    __device__ __forceinline__ void multiply_k8(const unsigned int (&fa)[4][4], const float* stage, int k8) {
        unsigned int fb[NT][2];
#pragma unroll
        for (int pair = 0; pair < NT / 2; ++pair) {
            unsigned int b[4];
            ldmatrix_x4(b, stage + b_row + pair * 16 * TC_PITCH + k8 * 8);
            fb[2 * pair][0] = b[0];
            fb[2 * pair][1] = b[1];
            fb[2 * pair + 1][0] = b[2];
            fb[2 * pair + 1][1] = b[3];
        }
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_tf32_m16n8k8(acc[mt][nt], fa[mt], fb[nt]);
    }

    // column(n) once per GEMM column this thread holds, then store(m, column's result, value) for
    // each of its accumulators in that column; (m, n) relative to the block tile. c0, c1 sit at
    // (g, 2t + 0/1) of an mma tile, c2, c3 at (g + 8, 2t + 0/1).
    template <class Column, class Store>
    __device__ __forceinline__ void for_each(Column column, Store store) const {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const auto where = column(warp_col + nt * 8 + in_group * 2 + j);
#pragma unroll
                for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                    for (int half = 0; half < 2; ++half)
                        store(warp_row + mt * 16 + group + half * 8, where, acc[mt][nt][half * 2 + j]);
            }
    }
};

// The main loop over `steps` reduction steps: `fetch(step)` loads a step's operands into the
// loader's registers, `store(step)` writes them (rounded to TF32) into stage step % 2 of `smem`.
// Two stages: the next step is fetched while the current one is multiplied; one barrier per step.
template <class Tile, class Fetch, class Store>
__device__ __forceinline__ void mma_main_loop(Tile& tile, float* smem, int steps, Fetch fetch, Store store) {
    if (steps <= 0) return;
    fetch(0);
    store(0);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        if (step + 1 < steps) fetch(step + 1);
        tile.multiply(smem + (step & 1) * TC_STAGE);
        if (step + 1 < steps) store(step + 1);
        __syncthreads();
    }
}

// The main loop with the A operand's fragments in registers (loaded from global memory in fragment
// order, no shared tile; a stage of `smem` is a B tile): `load_a(step, a)` loads a step's
// fragments, one step ahead like the B loader's `fetch`/`store`. Unrolled by two so that the two
// register sets alternate without copies.
template <class Tile, class LoadA, class Fetch, class Store>
__device__ __forceinline__ void mma_main_loop_a_registers(Tile& tile, float* smem, int steps, LoadA load_a,
                                                          Fetch fetch, Store store) {
    if (steps <= 0) return;
    unsigned int a[2][2][4][4];
    load_a(0, a[0]);
    fetch(0);
    store(0);
    __syncthreads();
    for (int step = 0; step < steps; step += 2) {
        if (step + 1 < steps) {
            load_a(step + 1, a[1]);
            fetch(step + 1);
        }
        tile.multiply(a[0], smem);
        if (step + 1 < steps) store(step + 1);
        __syncthreads();
        if (step + 1 == steps) break;
        if (step + 2 < steps) {
            load_a(step + 2, a[0]);
            fetch(step + 2);
        }
        tile.multiply(a[1], smem + TC_TILE_B);
        if (step + 2 < steps) store(step + 2);
        __syncthreads();
    }
}
