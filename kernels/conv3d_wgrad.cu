// conv3d weight gradient (wgrad): dw[k, c, t, r, s] = sum over n, o, p, q of dy[n, k, o, p, q] *
// x[n, c, o*stride_d - pad_d + t*dil_d, p*stride_h - pad_h + r*dil_h, q*stride_w - pad_w + s*dil_w], per group.
// x and dy are read in place (NCDHW): no transposed copies.
//
// GEMM view, per group g:  dw_g[M x Ngemm] = dy_g[M x Kgemm] * vol2col(x_g)^T[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = (C/G)*T*R*S (filter taps, the contiguous dimension of dw, so
//   stores coalesce), Kgemm = N*O*P*Q (output voxels: a long reduction).
//
// conv2d_wgrad.cu's kernel with a depth coordinate, on the same tiles, main loops and planner
// (igemm.cuh, cnn_gpu.gpu.conv._choose). Split-K, deterministic: grid.z = G * splits; split z sums the
// reduction range [z*chunk, (z+1)*chunk) and writes its partial tile to workspace[z] of shape
// (splits, K, C/G*T*R*S) (with one split, straight into dw); the launcher then sums the workspace over
// splits in a fixed order (reduce.channel_sum): no atomics, bit-identical run to run.
//
// Both operands are contiguous along the reduction (q), so both loaders run k fastest. A thread's
// reduction row (n, o, p, q) advances by BK with carries as (od, hp, wq) = (o*stride_d, p*stride_h,
// q*stride_w) and two offsets (into dy and x), from the launcher's walk_* constants (kernel parameters:
// no register); its filter columns (c, t, r, s) are decoded once into an x offset and their three tap
// offsets, and its A rows lie PASS*O*P*Q apart from one offset: no div/mod in the main loop. A gathered
// value takes three unsigned bounds tests (depth, row, column). Operand rows and columns past the
// problem are clamped onto the last valid one (computed, never stored).
//
// Index range: 32-bit offsets; the launcher refuses tensors (and workspaces) of 2^31 or more elements.

#include "igemm.cuh"
#include "wgrad_store.cuh"

// igemm.cuh's tile, its cp.async ring (sm_80 and newer) testing every step instead of running rounds of
// untested steps: with rounds, the third bounds test's offsets and the depth walk (a register a gathered
// value, one more for the walk) spilled the float32 large tile at its 128-register cap on sm_80..sm_89
// (104 bytes with NVRTC 12.9, 48 with 13.5) and on sm_90 with 13.5 (352 bytes; tall 16, wide 8). Tested
// steps cost 0.3-1.1 points of sm_90 FMA share; every tile has 0 spills on sm_70..sm_90 with both.
template <int THREADS_M, int THREADS_N, int TM, int TN>
struct Wgrad3dTile : IgemmTile<THREADS_M, THREADS_N, TM, TN, K_FASTEST, K_FASTEST> {
    static constexpr bool ROUNDS = false;
};

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void wgrad3d_tile(
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,
    int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q,
    int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w,
    int groups, int splits, int chunk, int walk_q, int walk_p, int walk_o, int walk_dy, int walk_x, int walk_q_end,
    int walk_p_end, int walk_o_end, int walk_carry_q_x, int walk_carry_p_x, int walk_carry_o_x, int walk_carry_o_dy)
{
    typedef Wgrad3dTile<THREADS_M, THREADS_N, TM, TN> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];

    const int g = blockIdx.z / splits, split = blockIdx.z - g * splits;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S, TRS = T * RS;
    const int Ngemm = Cg * TRS;
    const int PQ = P * Q, OPQ = O * PQ;
    const int HW = H * W, DHW = D * HW;
    const SplitRange range = split_range(split, chunk, N * OPQ);
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;

    // loaders, k fastest: reduction row ab.k of both tiles; A rows (channels) and B columns (taps)
    // ab.m + i*PASS, clamped onto the last channel / tap. A row i lies i*PASS*OPQ past row 0 (at
    // dy_row below); rows past K/G (never stored) read the last channel instead.
    const LoaderPosition ab = igemm_a_position<Tile>();   // = igemm_b_position
    const int a_first = min(m0 + ab.m, Kg - 1), a_span = (Kg - 1 - a_first) * OPQ;
    int a_rows[Tile::A_LOADS];   // opaque, as conv2d_wgrad.cu's: kept rather than recomputed every step
#pragma unroll
    for (int i = 0; i < Tile::A_LOADS; ++i) a_rows[i] = keep_in_register(min(i * Tile::PASS * OPQ, a_span));
    int x_tap[Tile::B_LOADS], d_off[Tile::B_LOADS], h_off[Tile::B_LOADS], w_off[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int col = min(n0 + ab.m + Tile::PASS * j, Ngemm - 1);
        const int c = col / TRS, trs = col - c * TRS;
        const int t = trs / RS, rs = trs - t * RS;
        const int r = rs / S, s = rs - r * S;
        d_off[j] = t * dil_d - pad_d;
        h_off[j] = r * dil_h - pad_h;
        w_off[j] = s * dil_w - pad_w;
        x_tap[j] = (g * Cg + c) * DHW + d_off[j] * HW + h_off[j] * W + w_off[j];
    }
    // (n, o, p, q) of this thread's reduction row (n = -1 for a row before 0: residue first, see
    // igemm.cuh), carried as (od, hp, wq) = (o*stride_d, p*stride_h, q*stride_w) and the offsets
    // dy_row = (n*K + g*K/G + a_first)*OPQ + o*PQ + p*Q + q, x_row = n*C*DHW + od*HW + hp*W + wq,
    // stepped by BK with carries (the launcher's walk_* constants)
    const int row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count) + ab.k;
    const int n = floor_div(row, OPQ), opq = row - n * OPQ;
    const int o = opq / PQ, pq = opq - o * PQ, p = pq / Q, q = pq - p * Q;
    int od = o * stride_d, hp = p * stride_h, wq = q * stride_w;
    int dy_row = n * K * OPQ + (g * Kg + a_first) * OPQ + opq, x_row = n * C * DHW + od * HW + hp * W + wq;

    // A from dy at reduction voxel (n, o, p, q), B gathered from x (zero outside the padded input)
    const auto a_source = [&](int i) { return IgemmSource{dy + (dy_row + a_rows[i]), true}; };
    const auto b_source = [&](int j) {
        const int d = od + d_off[j], h = hp + h_off[j], wc = wq + w_off[j];
        return IgemmSource{x + (x_row + x_tap[j]),
                           (unsigned)d < (unsigned)D && (unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W};
    };
    const auto advance = [&] {
        wq += walk_q; hp += walk_p; od += walk_o; dy_row += walk_dy; x_row += walk_x;
        if (wq >= walk_q_end) { wq -= walk_q_end; hp += stride_h; x_row += walk_carry_q_x; }
        if (hp >= walk_p_end) { hp -= walk_p_end; od += stride_d; x_row += walk_carry_p_x; }
        if (od >= walk_o_end) { od -= walk_o_end; dy_row += walk_carry_o_dy; x_row += walk_carry_o_x; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, ab.k, ab.m, ab.k, ab.m, range.k_count, a_source, b_source, advance);
    igemm_store_row_major<Tile>(acc, workspace + (split * K + g * Kg) * Ngemm, m0, n0, Kg, Ngemm);
}

#define WGRAD3D_PARAMS                                                                                         \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,                    \
    int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q,                       \
    int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w, \
    int groups, int splits, int chunk, int walk_q, int walk_p, int walk_o, int walk_dy, int walk_x,           \
    int walk_q_end, int walk_p_end, int walk_o_end, int walk_carry_q_x, int walk_carry_p_x, int walk_carry_o_x, \
    int walk_carry_o_dy
#define WGRAD3D_ARGS                                                                                           \
    dy, x, workspace, N, C, D, H, W, K, T, R, S, O, P, Q, stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,  \
    dil_d, dil_h, dil_w, groups, splits, chunk, walk_q, walk_p, walk_o, walk_dy, walk_x, walk_q_end,           \
    walk_p_end, walk_o_end, walk_carry_q_x, walk_carry_p_x, walk_carry_o_x, walk_carry_o_dy

// grid (ceil((C/G)*T*R*S / BN), ceil((K/G) / BM), G * splits), block the tile's threads; chunk a multiple
// of BK with splits = ceil(N*O*P*Q / chunk), so that no split is empty
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv3d_wgrad_large(WGRAD3D_PARAMS)
{
    wgrad3d_tile<IGEMM_LARGE>(WGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv3d_wgrad_tall(WGRAD3D_PARAMS)
{
    wgrad3d_tile<IGEMM_TALL>(WGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv3d_wgrad_wide(WGRAD3D_PARAMS)
{
    wgrad3d_tile<IGEMM_WIDE>(WGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, IGEMM_SMALL_BLOCKS) conv3d_wgrad_small(WGRAD3D_PARAMS)
{
    wgrad3d_tile<IGEMM_SMALL>(WGRAD3D_ARGS);
}
