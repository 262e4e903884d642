// The tensor-core block tile shared by the kernels of conv2d_tc.cu (their header comments give
// each GEMM view and loader).
//
// A block of 256 threads computes a 128 x 128 tile of a GEMM output with TF32 operands and FP32
// accumulation, reducing in steps of 16. The 8 warps form 2 (M) x 4 (N); each owns a 64 x 32 warp
// tile of 4 x 4 mma tiles (m16n8k8), 64 accumulators per thread. Loaders store the A tile as
// [m][k] with pitch 16 + 4 and the B tile as [k][n] with pitch 128 + 8, already rounded to TF32
// (cvt.rna when stored), so fragments load as plain words and each fragment load (lanes = 8
// groups x 4) hits 32 different banks.

#include "common.cuh"

#define TC_THREADS 256
#define TC_BM 128
#define TC_BN 128
#define TC_BK 16
#define TC_A_PITCH (TC_BK + 4)
#define TC_B_PITCH (TC_BN + 8)
#define TC_A_STAGE (TC_BM * TC_A_PITCH)
#define TC_B_STAGE (TC_BK * TC_B_PITCH)
#define TC_A_LOADS (TC_BM * TC_BK / TC_THREADS)   // A values each thread fetches per step
#define TC_B_LOADS (TC_BK * TC_BN / TC_THREADS)   // B values each thread fetches per step

static __device__ __forceinline__ float tf32_rounded(float v) { return __uint_as_float(tf32_from_float(v)); }

struct MmaTile {
    float acc[4][4][4];      // [m tile][n tile][c0..c3]
    int warp_row, warp_col;  // the warp tile's origin in the block tile
    int group, in_group;     // lane / 4 and lane % 4: the fragment coordinates of the PTX ISA

    __device__ __forceinline__ void init() {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        warp_row = (warp >> 2) * 64;
        warp_col = (warp & 3) * 32;
        group = lane >> 2;
        in_group = lane & 3;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }

    // acc += A[:, 0:16] * B[0:16, :] from one stage of the shared tiles
    __device__ __forceinline__ void multiply(const float* a_tile, const float* b_tile) {
#pragma unroll
        for (int k8 = 0; k8 < TC_BK; k8 += 8) {
            unsigned int fa[4][4], fb[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {   // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
                const float* row = a_tile + (warp_row + mt * 16 + group) * TC_A_PITCH + k8 + in_group;
                fa[mt][0] = __float_as_uint(row[0]);
                fa[mt][1] = __float_as_uint(row[8 * TC_A_PITCH]);
                fa[mt][2] = __float_as_uint(row[4]);
                fa[mt][3] = __float_as_uint(row[8 * TC_A_PITCH + 4]);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {   // b0 (t, g), b1 (t+4, g)
                const float* col = b_tile + (k8 + in_group) * TC_B_PITCH + warp_col + nt * 8 + group;
                fb[nt][0] = __float_as_uint(col[0]);
                fb[nt][1] = __float_as_uint(col[4 * TC_B_PITCH]);
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) mma_tf32_m16n8k8(acc[mt][nt], fa[mt], fb[nt]);
        }
    }

    // store(m, n, value) for each accumulator, (m, n) relative to the block tile: c0, c1 sit at
    // (g, 2t + 0/1) of an mma tile, c2, c3 at (g + 8, 2t + 0/1)
    template <class Store>
    __device__ __forceinline__ void for_each(Store store) const {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
                    store(warp_row + mt * 16 + group + (i >> 1) * 8, warp_col + nt * 8 + in_group * 2 + (i & 1),
                          acc[mt][nt][i]);
    }
};

// The main loop: `fetch(step)` loads step's operands into the loader's registers, `store(stage)`
// writes them (rounded to TF32) into that stage of the shared tiles. Two stages: the next step is
// fetched while the current one is multiplied; one barrier per step.
template <class Fetch, class Store>
__device__ __forceinline__ void mma_main_loop(MmaTile& tile, float* smem_a, float* smem_b, int steps,
                                              Fetch fetch, Store store) {
    if (steps <= 0) return;
    fetch(0);
    store(0);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        const int stage = step & 1;
        if (step + 1 < steps) fetch(step + 1);
        tile.multiply(smem_a + stage * TC_A_STAGE, smem_b + stage * TC_B_STAGE);
        if (step + 1 < steps) store(stage ^ 1);
        __syncthreads();
    }
}
