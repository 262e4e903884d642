// The tensor-core block tiles shared by the kernels of conv2d_tc.cu (their header comments give
// each GEMM view and loader).
//
// Operand words: the shared tiles and fragments hold 32-bit words, in the float32 build one
// TF32 value (mma.sync m16n8k8 .tf32), in the float16 build two FP16 values of consecutive
// reduction indices, the lower index in the low half (m16n8k16 .f16). Counted in words, the PTX
// ISA's m16n8k16 .f16 A and B fragments are the m16n8k8 .tf32 ones (A: a0 (g, t), a1 (g + 8, t),
// a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (t, g), b1 (t + 4, g); g = lane / 4, t = lane % 4,
// k in words), and the accumulators are the same, so one tile machinery serves both formats: a
// step of 16 words covers TC_DEPTH = 16 (TF32) or 32 (FP16) reduction indices, and a "k8" half
// step 8 words. Loaders make the words as they load (operand_word_of_widened, operand_word_or_zero).
//
// A block of 128 threads computes a (64 * WARPS_M) x BN tile of a GEMM output with FP32
// accumulation. WARPS_M = 2, BN = 128: 2 x 2 warps of 64 x 64 (4 x 8 mma tiles, 128 accumulators
// per thread), the main tile; WARPS_M = 1 (1 x 4 warps) or BN = 64 (2 x 2 warps): warp tiles of
// 64 x 32 for GEMMs of 64 rows or columns or fewer. K_WARPS = 2 (WARPS_M = 2, BN = 64: wgrad's
// 64-channel tile) splits each step between two warps instead: 2 x 1 warp tiles of 64 x 64, warp w
// taking half step w % 2, the halves summed (reduce_k_halves) before the epilogue. Each fragment
// read from shared memory then feeds 8 MMAs, as in the main tile, not 4. One operand's fragments come from registers,
// loaded from global memory in fragment order one step ahead (fprop's and dgrad's A, the filter
// tiles; wgrad's B, dy), the other's from shared memory by ldmatrix.x4: a 64 x 64 warp tile then
// moves 64 bytes of shared fragments per mma (half of what an SM's 32 banks deliver per clock, and
// an H100 SM finishes one TF32 m16n8k8 or FP16 m16n8k16 per clock).
//
// Shared tiles (one stage): 128 rows of the shared operand, [n][k] (B) or [m][k] (A), every row
// 16 words + 4 of padding (pitch 80 bytes = 5 x 16). Eight consecutive rows start in eight
// different 16-byte bank groups, so an ldmatrix matrix (8 rows x 16 bytes) and a quarter warp's
// 16-byte stores to 8 consecutive rows each take one wavefront.

// Tensor cores take float32 (as TF32) and float16: the float64 build of a file that includes this
// one (the compile gate builds every file per dtype; nothing launches it) is the float32 one.
#if REAL_IS_DOUBLE
#undef REAL
#undef REAL_IS_DOUBLE
#define REAL float
#define REAL_IS_DOUBLE 0
#endif

#include "common.cuh"

#define TC_THREADS 128
#define TC_BN 128                                       // columns of a block tile (rows of a shared tile)
#define TC_BK 16                                        // words of a step
#define TC_PITCH (TC_BK + 4)
#define TC_STAGE_WORDS (TC_BN * TC_PITCH)               // words of a stage's shared tile; two stages: 20 KiB

// __byte_perm (PRMT): byte i of the result is byte (selector >> 4i) & 7 of the eight bytes of
// {high, low}, low's lowest first (__byte_perm reads 3 bits a nibble: no sign replication)
static __device__ __forceinline__ unsigned int byte_permute(unsigned int low, unsigned int high, unsigned int selector) {
#if defined(CNN_GPU_EMU)
    const unsigned long long bytes = (unsigned long long)high << 32 | low;
    unsigned int result = 0;
    for (int i = 0; i < 4; ++i) result |= (unsigned int)(bytes >> 8 * (selector >> 4 * i & 7) & 0xff) << 8 * i;
    return result;
#else
    return __byte_perm(low, high, selector);
#endif
}

#if REAL_IS_HALF
#define TC_PER_WORD 2                                   // FP16 values per operand word
#define TC_READS_ZEROED 1                               // operand_word_or_zero reads values it zeroes

// acc += a * b on one 16 x 8 tile, 8 words deep (mma.sync m16n8k16 .f16)
static __device__ __forceinline__ void mma_words(float (&acc)[4], const unsigned int (&a)[4],
                                                 const unsigned int (&b)[2]) {
    mma_f16_m16n8k16(acc, a, b);
}

// A gathering loader's value through the read-only data cache, widened to a word of its bits
// (zero-extended: a zeroed value then costs half a CS2R instead of a 16-bit move), and the operand
// word of two such values, v[0] (the lower reduction index) in the low half: one PRMT
static __device__ __forceinline__ unsigned int load_widened(const REAL* p) { return __ldg(&p->bits); }
static __device__ __forceinline__ unsigned int operand_word_of_widened(const unsigned int (&v)[TC_PER_WORD]) {
    return byte_permute(v[0], v[1], 0x5410u);
}

// the four operand words of 16 aligned bytes of values in reduction order (8 FP16 values)
static __device__ __forceinline__ uint4 load_operand_words(const REAL* p) { return __ldg((const uint4*)p); }
// the two operand words of 8 aligned bytes (4 FP16 values)
static __device__ __forceinline__ uint2 load_operand_pair(const REAL* p) { return __ldg((const uint2*)p); }

// Word `word` of the values at row, row + stride, row + 2 * stride, ... (consecutive reduction
// indices), or 0 where !keep. Its two values are read either way (so both must lie inside the
// array): the packing PRMT then zeroes the word too, from the zero upper halves of the loaded
// values, instead of a zeroed register per value under a predicated load.
static __device__ __forceinline__ unsigned int operand_word_or_zero(const REAL* row, unsigned int stride, int word,
                                                                    bool keep) {
    const REAL* low = row + (size_t)stride * (2 * word);
    return byte_permute(__ldg(&low->bits), __ldg(&low[stride].bits), keep ? 0x5410u : 0x2222u);
}
#else
#define TC_PER_WORD 1
#define TC_READS_ZEROED 0

// acc += a * b on one 16 x 8 tile, 8 words deep (mma.sync m16n8k8 .tf32)
static __device__ __forceinline__ void mma_words(float (&acc)[4], const unsigned int (&a)[4],
                                                 const unsigned int (&b)[2]) {
    mma_tf32_m16n8k8(acc, a, b);
}

// A gathering loader's value as a word of its bits, and the operand word of it: rounded to TF32
// as the mma reads it (tf32_operand)
static __device__ __forceinline__ unsigned int load_widened(const REAL* p) { return __float_as_uint(__ldg(p)); }
static __device__ __forceinline__ unsigned int operand_word_of_widened(const unsigned int (&v)[TC_PER_WORD]) {
    return tf32_operand(__uint_as_float(v[0]));
}

// the four operand words of 16 aligned bytes of values in reduction order (4 values, TF32-rounded)
static __device__ __forceinline__ uint4 load_operand_words(const REAL* p) {
    const float4 v = __ldg((const float4*)p);
    return make_uint4(tf32_operand(v.x), tf32_operand(v.y), tf32_operand(v.z), tf32_operand(v.w));
}

// the two operand words of 8 aligned bytes (2 values, TF32-rounded)
static __device__ __forceinline__ uint2 load_operand_pair(const REAL* p) {
    const float2 v = __ldg((const float2*)p);
    return make_uint2(tf32_operand(v.x), tf32_operand(v.y));
}

// Word `word` of the values at row, row + stride, ... (one value), or of 0 where !keep (then not read)
static __device__ __forceinline__ unsigned int operand_word_or_zero(const REAL* row, unsigned int stride, int word,
                                                                    bool keep) {
    return tf32_operand(keep ? __ldg(row + (size_t)stride * word) : 0.0f);
}
#endif

#define TC_DEPTH (TC_BK * TC_PER_WORD)                  // reduction indices of a step

// The operand word of widened values v[first], v[first + 1], ... (TC_PER_WORD of them)
template <int N>
static __device__ __forceinline__ unsigned int operand_word_at(const unsigned int (&v)[N], int first) {
    unsigned int word[TC_PER_WORD];
#pragma unroll
    for (int e = 0; e < TC_PER_WORD; ++e) word[e] = v[first + e];
    return operand_word_of_widened(word);
}

// The 4 warps of a block tile of 64 * WARPS_M rows and BN columns: WARPS_M x (4 / WARPS_M) warp
// tiles of 64 rows and NT = BN / 8 / (4 / WARPS_M) n tiles (64 x 64 for WARPS_M = 2 and BN = 128,
// 64 x 32 for WARPS_M = 1 or BN = 64). One operand's fragments come from registers (Fragments:
// multiply), the other's from a stage of shared memory (rows of TC_PITCH words, by ldmatrix.x4).
template <int WARPS_M, int BN = TC_BN, int K_WARPS = 1>
struct MmaTile {
    static_assert(K_WARPS == 1 || (K_WARPS == 2 && WARPS_M == 2), "reduce_k_halves sums pairs of warps");
    static constexpr int WARPS_N = 4 / WARPS_M / K_WARPS, NT = BN / 8 / WARPS_N;
    static constexpr int K8S = 2 / K_WARPS;        // half steps a warp multiplies
    using AFragments = unsigned int[K8S][4][4];    // [k8][m tile][a0..a3]
    using BFragments = unsigned int[K8S][NT][2];   // [k8][n tile][b0, b1]
    float acc[4][NT][4];     // [m tile][n tile][c0..c3]
    int warp_row, warp_col;  // the warp tile's origin in the block tile
    int k_half;              // K_WARPS = 2: the half step this warp multiplies (else 0)
    int group, in_group;     // lane / 4 and lane % 4: the fragment coordinates of the PTX ISA
    int a_row, b_row;        // this lane's ldmatrix row addresses in a stage of [m][k] or [n][k] rows (in words)

    __device__ __forceinline__ void init() {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tile_warp = warp / K_WARPS;
        k_half = warp % K_WARPS;
        warp_row = (tile_warp / WARPS_N) * 64;
        warp_col = (tile_warp % WARPS_N) * NT * 8;
        group = lane >> 2;
        in_group = lane & 3;
        // (k in words) A, per m tile: matrices (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7,
        // k 4-7), (rows 8-15, k 4-7) are a0..a3. B, per pair of n tiles: (n 0-7, k 0-3), (n 0-7,
        // k 4-7), (n 8-15, k 0-3), (n 8-15, k 4-7) are b0, b1 of the first and b0, b1 of the second.
        const int row = lane & 7, matrix = lane >> 3;
        a_row = (warp_row + row + (matrix & 1) * 8) * TC_PITCH + (matrix >> 1) * 4 + k_half * 8;
        // kept in a register by the K_WARPS = 2 tile, whose loop NVRTC would otherwise make rebuild it
        // every step (7 instructions a loop); the 128 x 128 wgrad tile would spill (float16, sm_80)
        if (K_WARPS == 2) a_row = keep_in_register(a_row);
        b_row = (warp_col + row + (matrix >> 1) * 8) * TC_PITCH + (matrix & 1) * 4 + k_half * 8;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }

    // acc += A[:, step] * B[step, :]: this warp's A fragments in registers, B's [n][k] rows in `stage`
    // (its half steps: k8 counts them from the warp's first, k_half)
    __device__ __forceinline__ void multiply(const AFragments& a, const unsigned int* stage) {
#pragma unroll
        for (int k8 = 0; k8 < K8S; ++k8) {
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
            mma_k8(a[k8], fb);
        }
    }

    // the same with B's fragments in registers and A's [m][k] rows in `stage`
    __device__ __forceinline__ void multiply(const BFragments& b, const unsigned int* stage) {
#pragma unroll
        for (int k8 = 0; k8 < K8S; ++k8) {
            unsigned int fa[4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) ldmatrix_x4(fa[mt], stage + a_row + mt * 16 * TC_PITCH + k8 * 8);
            mma_k8(fa, b[k8]);
        }
    }

    // acc += A * B over 8 words of the step
    __device__ __forceinline__ void mma_k8(const unsigned int (&fa)[4][4], const unsigned int (&fb)[NT][2]) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_words(acc[mt][nt], fa[mt], fb[nt]);
    }

    // K_WARPS = 2: the odd warps' sums added into the even warps' (their partners on the same warp
    // tile), through `scratch` (16 KiB: 64 floats a lane of the odd warps; the stages' memory, after
    // the main loop's last barrier) in two rounds. Every thread of the block calls it.
    __device__ __forceinline__ void reduce_k_halves(float* scratch) {
        if (K_WARPS == 1) return;
        constexpr int ROUND = 4 * NT * 4 / 2;   // accumulators a round
        static_assert(K_WARPS == 1 || 4 / K_WARPS * 32 * ROUND <= 2 * TC_STAGE_WORDS, "scratch");
        float* mine = scratch + (threadIdx.x >> 5) / K_WARPS * ROUND * 32 + (threadIdx.x & 31);
#pragma unroll
        for (int round = 0; round < 2; ++round) {
            if (k_half)
#pragma unroll
                for (int i = 0; i < ROUND; ++i) {
                    const int at = round * ROUND + i;
                    mine[i * 32] = acc[at / (NT * 4)][at / 4 % NT][at % 4];
                }
            __syncthreads();
            if (!k_half)
#pragma unroll
                for (int i = 0; i < ROUND; ++i) {
                    const int at = round * ROUND + i;
                    acc[at / (NT * 4)][at / 4 % NT][at % 4] += mine[i * 32];
                }
            __syncthreads();
        }
    }

    // column(n) once per GEMM column this thread holds, then store(m, column's result, value) for
    // each of its accumulators in that column (of m tiles [mt_first, mt_end): constants once
    // inlined); (m, n) relative to the block tile. c0, c1 sit at (g, 2t + 0/1) of an mma tile, c2,
    // c3 at (g + 8, 2t + 0/1). K_WARPS = 2: the even warps alone (after reduce_k_halves).
    template <class Column, class Store>
    __device__ __forceinline__ void for_each(Column column, Store store, int mt_first = 0, int mt_end = 4) const {
        if (k_half) return;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const auto where = column(warp_col + nt * 8 + in_group * 2 + j);
#pragma unroll
                for (int mt = mt_first; mt < mt_end; ++mt)
#pragma unroll
                    for (int half = 0; half < 2; ++half)
                        store(warp_row + mt * 16 + group + half * 8, where, acc[mt][nt][half * 2 + j]);
            }
    }
};

// The main loop over `steps` reduction steps, one operand's fragments in registers (Fragments:
// the tile's AFragments or BFragments), the other's tiles in two stages of `smem` (TC_STAGE_WORDS words
// each): `load(step, f)` loads a step's fragments from global memory, `fetch(step)` a step's
// shared operand words into the loader's registers, `store(step)` writes them into stage step % 2.
// Both one step ahead: the next step is loaded while the current one is multiplied; one barrier
// per step. Unrolled by two so that the two register sets alternate without copies. `ready(step, f)`
// (where given) touches a step's fragments up once the step before has been multiplied (its loads
// have had that long to arrive, and the step before's fragments are free registers), before the
// barrier that ends the step before.
template <class Fragments, class Tile, class Load, class Fetch, class Store, class Ready>
__device__ __forceinline__ void mma_main_loop_registers(Tile& tile, unsigned int* smem, int steps, Load load,
                                                        Fetch fetch, Store store, Ready ready) {
    if (steps <= 0) return;
    Fragments f[2];
    load(0, f[0]);
    fetch(0);
    store(0);
    __syncthreads();
    ready(0, f[0]);
    for (int step = 0; step < steps; step += 2) {
        if (step + 1 < steps) {
            load(step + 1, f[1]);
            fetch(step + 1);
        }
        tile.multiply(f[0], smem);
        if (step + 1 < steps) {
            ready(step + 1, f[1]);
            store(step + 1);
        }
        __syncthreads();
        if (step + 1 == steps) break;
        if (step + 2 < steps) {
            load(step + 2, f[0]);
            fetch(step + 2);
        }
        tile.multiply(f[1], smem + TC_STAGE_WORDS);
        if (step + 2 < steps) {
            ready(step + 2, f[0]);
            store(step + 2);
        }
        __syncthreads();
    }
}

template <class Fragments, class Tile, class Load, class Fetch, class Store>
__device__ __forceinline__ void mma_main_loop_registers(Tile& tile, unsigned int* smem, int steps, Load load,
                                                        Fetch fetch, Store store) {
    mma_main_loop_registers<Fragments>(tile, smem, steps, load, fetch, store, [](int, Fragments&) {});
}
