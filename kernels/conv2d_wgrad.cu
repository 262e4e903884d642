// conv2d weight gradient (wgrad): dw[k, c, r, s] = sum over n, p, q of
// dy[n, k, p, q] * x[n, c, p*stride_h - pad_h + r*dil_h, q*stride_w - pad_w + s*dil_w], per group.
//
// GEMM view, per group g:  dw_g[M x Ngemm] = dy_g[M x Kgemm] * im2col(x_g)^T[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = (C/G)*R*S (filter taps, the contiguous dimension of dw, so
//   stores coalesce), Kgemm = N*P*Q (output pixels: a long reduction).
//
// Split-K, deterministic: grid.z = G * splits; split z sums the reduction range
// [z*chunk, (z+1)*chunk) and writes its partial tile to workspace[z] of shape (splits, K, C/G*R*S)
// (with one split, straight into dw). The launcher then sums the workspace over splits in a fixed
// order (reduce.channel_sum): no atomics, bit-identical run to run.
//
// Tiling: as conv2d_fprop (igemm.cuh: BK = 8, four tile variants of 64 to 256 threads, vectorized
// register blocking). Both operands are contiguous along the reduction (p, q), so both loaders run
// k fastest: groups of 8 threads read 8 consecutive pixels (the padded shared rows keep those
// transposing stores on 32 different banks). A thread's reduction row (n, p, q) advances by BK
// with carries as two offsets (into dy and x), from the launcher's walk_* constants (kernel
// parameters: no register); its filter columns (c, r, s) are decoded once and its A rows lie
// PASS*P*Q apart from one offset: no div/mod in the main loop. Operand rows and columns past the
// problem are clamped onto the last valid one (computed, never stored).
//
// Index range: 32-bit offsets; the launcher refuses tensors (and workspaces) of 2^31 or more
// elements.

#include "igemm.cuh"
#include "wgrad_store.cuh"

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void wgrad_tile(
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int splits, int chunk, int walk_q, int walk_p, int walk_dy, int walk_x, int walk_q_end, int walk_p_end, int walk_carry_q_x, int walk_carry_p_x, int walk_carry_p_dy)
{
    typedef IgemmTile<THREADS_M, THREADS_N, TM, TN, K_FASTEST, K_FASTEST> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];

    const int g = blockIdx.z / splits, split = blockIdx.z - g * splits;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S;
    const int Ngemm = Cg * RS;
    const int PQ = P * Q, HW = H * W;
    const int NPQ = N * PQ;
    const SplitRange range = split_range(split, chunk, NPQ);
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;

    // loaders, k fastest: reduction row ab.k of both tiles; A rows (channels) and B columns (taps)
    // ab.m + i*PASS, clamped onto the last channel / tap. A row i lies i*PASS*PQ past row 0 (at
    // dy_row below); rows past K/G (never stored) read the last channel instead.
    const LoaderPosition ab = igemm_a_position<Tile>();   // = igemm_b_position
    const int a_first = min(m0 + ab.m, Kg - 1), a_span = (Kg - 1 - a_first) * PQ;
    int a_rows[Tile::A_LOADS];   // A row i's offset from row 0: opaque, so NVCC keeps it rather than
                                 // recomputing it every step (10 instructions a step on the fp64 large tile)
#pragma unroll
    for (int i = 0; i < Tile::A_LOADS; ++i) a_rows[i] = keep_in_register(min(i * Tile::PASS * PQ, a_span));
    int x_tap[Tile::B_LOADS], h_off[Tile::B_LOADS], w_off[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int col = min(n0 + ab.m + Tile::PASS * j, Ngemm - 1);
        const int c = col / RS, rs = col - c * RS;
        const int r = rs / S, s = rs - r * S;
        h_off[j] = r * dil_h - pad_h;
        w_off[j] = s * dil_w - pad_w;
        x_tap[j] = (g * Cg + c) * HW + h_off[j] * W + w_off[j];
    }
    // (n, p, q) of this thread's reduction row (n = -1 for a row before 0: residue first, see
    // igemm.cuh), carried as (hp, wq) = (p*stride_h, q*stride_w) and the offsets
    // dy_row = (n*K + g*K/G + a_first)*PQ + p*Q + q, x_row = n*C*HW + hp*W + wq, stepped by BK
    // with carries (the launcher's walk_* constants: kernel parameters, read from the constant bank
    // without a register)
    const int row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count) + ab.k;
    const int n = floor_div(row, PQ), pq = row - n * PQ, p = pq / Q, q = pq - p * Q;
    int hp = p * stride_h, wq = q * stride_w;
    int dy_row = n * K * PQ + (g * Kg + a_first) * PQ + p * Q + q, x_row = n * C * HW + hp * W + wq;

    // A from dy at reduction pixel (n, p, q), B gathered from x (zero outside the padded input)
    const auto a_source = [&](int i) { return IgemmSource{dy + (dy_row + a_rows[i]), true}; };
    const auto b_source = [&](int j) {
        const int h = hp + h_off[j], wc = wq + w_off[j];
        return IgemmSource{x + (x_row + x_tap[j]), (unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W};
    };
    const auto advance = [&] {
        wq += walk_q; hp += walk_p; dy_row += walk_dy; x_row += walk_x;
        if (wq >= walk_q_end) { wq -= walk_q_end; hp += stride_h; x_row += walk_carry_q_x; }
        if (hp >= walk_p_end) { hp -= walk_p_end; dy_row += walk_carry_p_dy; x_row += walk_carry_p_x; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, ab.k, ab.m, ab.k, ab.m, range.k_count, a_source, b_source, advance);
    igemm_store_row_major<Tile>(acc, workspace + (split * K + g * Kg) * Ngemm, m0, n0, Kg, Ngemm);
}

#define WGRAD_PARAMS                                                                          \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,    \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,                            \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,       \
    int splits, int chunk, int walk_q, int walk_p, int walk_dy, int walk_x, int walk_q_end, int walk_p_end, int walk_carry_q_x, int walk_carry_p_x, int walk_carry_p_dy
#define WGRAD_ARGS                                                                            \
    dy, x, workspace, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h,     \
    dil_w, groups, splits, chunk, walk_q, walk_p, walk_dy, walk_x, walk_q_end, walk_p_end, walk_carry_q_x, \
    walk_carry_p_x, walk_carry_p_dy

// grid (ceil((C/G)*R*S / BN), ceil((K/G) / BM), G * splits), block the tile's threads; chunk a multiple of BK
// with splits = ceil(N*P*Q / chunk), so that no split is empty
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv2d_wgrad_large(WGRAD_PARAMS)
{
    wgrad_tile<IGEMM_LARGE>(WGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv2d_wgrad_tall(WGRAD_PARAMS)
{
    wgrad_tile<IGEMM_TALL>(WGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv2d_wgrad_wide(WGRAD_PARAMS)
{
    wgrad_tile<IGEMM_WIDE>(WGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, IGEMM_SMALL_BLOCKS) conv2d_wgrad_small(WGRAD_PARAMS)
{
    wgrad_tile<IGEMM_SMALL>(WGRAD_ARGS);
}
