// conv2d forward (fprop) as an implicit GEMM; NCHW input x (N, C, H, W), filter w (K, C/G, R, S),
// output y (N, K, P, Q), G groups.
//
// GEMM view, per group g:  y_g[M x Ngemm] = w_g[M x Kgemm] * im2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*P*Q (output pixels; consecutive threads own consecutive
//   pixels, so the stores y[n, k, p, q] coalesce), Kgemm = (C/G)*R*S (reduction over (c, r, s)).
//   The im2col operand is never materialised: each thread gathers its elements of the B tile
//   straight from x, zero outside the padded input.
//
// Tiling (igemm.cuh): BK = 8, vectorized register blocking; four block tiles, large 128x128, tall
//   128x64, wide 64x128, small 64x64 (fp32: 256, 128, 128, 64 threads of 8x8 outputs; fp64: 256
//   threads), chosen by cnn_gpu.gpu.conv.plan_fprop for the GPU's SM count; a cp.async ring on
//   sm_80+, register staging on sm_70/75.
// Loaders: A (filter rows, contiguous along the reduction) k fastest, so a warp reads 4 rows x 32
//   bytes; one offset, stepped by BK, addresses row 0 and the others lie PASS*Kgemm apart. B (the
//   gather from x) k slowest: a warp reads PASS consecutive pixels of each of 32/PASS reduction
//   rows. Each B column is decoded once into the x offset of its tap origin and its tap mask
//   (igemm.cuh); the reduction row (c, r, s) is carried with the x offset of its tap, stepped by
//   BK with carries from the launcher's walk_* constants (kernel parameters: read from the
//   constant bank, they take no register). Per gathered value: one LOP3 bounds test and one add,
//   no div/mod in the main loop. Operand rows and columns past the problem are clamped onto the last valid one:
//   their outputs are computed, never stored. Filters with more than 16 taps in a dimension get a
//   zero-padded copy of x (conv2d_pad.cu) and no padding.
// Split-K (grid.z = splits * G): split z sums reduction rows [z*chunk, (z+1)*chunk) and writes its
//   partial y to out + z * N*K*P*Q; the launcher folds the partials in a fixed order and applies
//   bias and ReLU there (it passes has_bias = relu = 0 to the kernel). With one split, out is y
//   and the epilogue fuses bias and optionally ReLU.
//
// Index range: 32-bit offsets (64-bit ones cost the large fp32 tile its last free registers);
// the launcher refuses tensors (and split-K workspaces) of 2^31 or more elements.

#include "igemm.cuh"

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void fprop_tile(
    const REAL* __restrict__ x, const REAL* __restrict__ w, const REAL* __restrict__ bias,
    REAL* __restrict__ out, int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int has_bias, int relu, int chunk, int walk_s, int walk_r, int walk_tap, int walk_carry_s, int walk_carry_r)
{
    typedef IgemmTile<THREADS_M, THREADS_N, TM, TN, K_FASTEST, K_SLOWEST> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];

    const int split = blockIdx.z / groups, g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S;
    const int Kgemm = Cg * RS;
    const int PQ = P * Q;
    const int HW = H * W;
    const int NPQ = N * PQ;
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;
    const SplitRange range = split_range(split, chunk, Kgemm);

    // loader rows start igemm_skipped_rows before the range (residue first, see igemm.cuh)
    const int first_row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count);

    // A (filter) loader, k fastest: reduction column a.k, rows a.m + i*PASS, the first at
    // w_row = (g*K/G + a.m)*Kgemm + (reduction offset); row i lies i*PASS*Kgemm further, and rows
    // past K/G (never stored) read the last filter row instead
    const LoaderPosition a = igemm_a_position<Tile>();
    const int a_first = min(m0 + a.m, Kg - 1), a_span = (Kg - 1 - a_first) * Kgemm;
    int w_row = (g * Kg + a_first) * Kgemm + first_row + a.k;

    // B (input) loader, k slowest: reduction row b.k, pixel columns b.m + j*PASS, decoded once into
    // the x offset of the column's tap origin and its tap mask
    const LoaderPosition b = igemm_b_position<Tile>();
    int x_pixel[Tile::B_LOADS];
    unsigned taps_in[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int pixel = min(n0 + b.m + Tile::PASS * j, NPQ - 1);
        const int n = pixel / PQ, pq = pixel - n * PQ;
        const int p = pq / Q, q = pq - p * Q;
        const int h_origin = p * stride_h - pad_h, w_origin = q * stride_w - pad_w;
        x_pixel[j] = (n * C + g * Cg) * HW + h_origin * W + w_origin;
        taps_in[j] = igemm_tap_mask(h_origin, R, dil_h, H, w_origin, S, dil_w, W);
    }
    // reduction row b.k as (c, r, s) (c = -1 for a row before 0), carried with the x offset of the
    // tap, tap = c*HW + r*dil_h*W + s*dil_w, each stepped by BK with carries (the launcher's
    // walk_* constants: kernel parameters, read from the constant bank without a register)
    const int row = first_row + b.k;
    const int c0 = floor_div(row, RS), rs0 = row - c0 * RS;
    int r = rs0 / S, s = rs0 - r * S, tap = c0 * HW + r * dil_h * W + s * dil_w;
    // A from the filter rows, B gathered from x (zero outside the padded input)
    const auto a_source = [&](int i) { return IgemmSource{w + (w_row + min(i * Tile::PASS * Kgemm, a_span)), true}; };
    const auto b_source = [&](int j) {
        return IgemmSource{x + (x_pixel[j] + tap), igemm_in_bounds(taps_in[j], igemm_tap_select(r, s))};
    };
    const auto advance = [&] {
        w_row += Tile::BK;
        s += walk_s; r += walk_r; tap += walk_tap;
        if (s >= S) { s -= S; ++r; tap += walk_carry_s; }
        if (r >= R) { r -= R; tap += walk_carry_r; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, a.k, a.m, b.k, b.m, range.k_count, a_source, b_source, advance);

    const int tm = igemm_tm<Tile>(), tn = igemm_tn<Tile>();
    REAL* out_split = out + split * K * NPQ;
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
        const int pixel = n0 + igemm_offset<Tile::RUN_N>(j, tn);
        if (pixel >= NPQ) continue;
        const int n = pixel / PQ;
        REAL* y_pixel = out_split + (n * K + g * Kg) * PQ + (pixel - n * PQ);
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i) {
            const int m = m0 + igemm_offset<Tile::RUN_M>(i, tm);
            if (m >= Kg) continue;
            REAL v = acc[i][j];
            if (has_bias) v += bias[g * Kg + m];
            if (relu && v < (REAL)0) v = (REAL)0;   // written so that NaN passes through
            y_pixel[m * PQ] = v;
        }
    }
}

#define FPROP_PARAMS                                                                          \
    const REAL* __restrict__ x, const REAL* __restrict__ w, const REAL* __restrict__ bias,   \
    REAL* __restrict__ out, int N, int C, int H, int W, int K, int R, int S, int P, int Q,   \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,      \
    int has_bias, int relu, int chunk, int walk_s, int walk_r, int walk_tap, int walk_carry_s, int walk_carry_r
#define FPROP_ARGS                                                                            \
    x, w, bias, out, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, \
    groups, has_bias, relu, chunk, walk_s, walk_r, walk_tap, walk_carry_s, walk_carry_r

// grid (ceil(N*P*Q / BN), ceil((K/G) / BM), splits * G), block the tile's threads; chunk a multiple of BK with
// splits = ceil(C/G*R*S / chunk); `bias` is never read when has_bias == 0
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv2d_fprop_large(FPROP_PARAMS)
{
    fprop_tile<IGEMM_LARGE>(FPROP_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv2d_fprop_tall(FPROP_PARAMS)
{
    fprop_tile<IGEMM_TALL>(FPROP_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv2d_fprop_wide(FPROP_PARAMS)
{
    fprop_tile<IGEMM_WIDE>(FPROP_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, IGEMM_SMALL_BLOCKS) conv2d_fprop_small(FPROP_PARAMS)
{
    fprop_tile<IGEMM_SMALL>(FPROP_ARGS);
}
