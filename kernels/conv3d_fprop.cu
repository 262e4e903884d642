// conv3d forward (fprop) as an implicit GEMM; NCDHW input x (N, C, D, H, W), filter w (K, C/G, T, R, S),
// output y (N, K, O, P, Q), G groups. The input and weight gradients have kernels of their own
// (conv3d_dgrad.cu, conv3d_wgrad.cu).
//
// GEMM view, per group g:  y_g[M x Ngemm] = w_g[M x Kgemm] * vol2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*O*P*Q (output voxels; consecutive threads own consecutive
//   voxels, so the stores y[n, k, o, p, q] coalesce), Kgemm = (C/G)*T*R*S (reduction over (c, t, r, s)).
//   The vol2col operand is never materialised: each thread gathers its elements of the B tile
//   straight from x, zero outside the padded input.
//
// conv2d_fprop.cu's kernel with a depth coordinate, on the same tiles, main loop and planner
// (igemm.cuh, cnn_gpu.gpu.conv._choose): A (filter rows) k fastest, B (the gather) k slowest. Each B
// column is decoded once into the x offset of its tap origin and a three-field tap mask (depth taps
// in bits 0..9, row taps in 10..20, column taps in 21..31: one LOP3 test per load); the reduction row
// (c, t, r, s) is carried with the x offset of its tap, stepped by BK with carries from the
// launcher's walk_* constants (kernel parameters, read from the constant bank). Filters with more
// taps in a dimension than its field holds get a zero-bordered copy of x and an all-ones mask.
// Split-K (grid.z = splits * G): split z sums reduction rows [z*chunk, (z+1)*chunk) and writes its
//   partial y to out + z * N*K*O*P*Q; the launcher folds the partials and adds the bias there (it
//   passes has_bias = 0). With one split, out is y and the epilogue adds the bias.
//
// Index range: 32-bit offsets; the launcher refuses tensors (and split-K workspaces) of 2^31 or more
// elements.

#include "igemm.cuh"
#include "conv3d_tile.cuh"

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void fprop3d_tile(
    const REAL* __restrict__ x, const REAL* __restrict__ w, const REAL* __restrict__ bias,
    REAL* __restrict__ out, int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q,
    int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w,
    int groups, int has_bias, int chunk, int walk_s, int walk_r, int walk_t, int walk_tap, int walk_carry_s,
    int walk_carry_r, int walk_carry_t)
{
    typedef IgemmTile<THREADS_M, THREADS_N, TM, TN, K_FASTEST, K_SLOWEST> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];

    const int split = blockIdx.z / groups, g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S, TRS = T * RS;
    const int Kgemm = Cg * TRS;
    const int PQ = P * Q, OPQ = O * PQ;
    const int HW = H * W, DHW = D * HW;
    const int NOPQ = N * OPQ;
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;
    const SplitRange range = split_range(split, chunk, Kgemm);

    // loader rows start igemm_skipped_rows before the range (residue first, see igemm.cuh)
    const int first_row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count);

    // A (filter) loader, k fastest, as conv2d_fprop.cu's: rows past K/G read the last filter row
    const LoaderPosition a = igemm_a_position<Tile>();
    const int a_first = min(m0 + a.m, Kg - 1), a_span = (Kg - 1 - a_first) * Kgemm;
    int w_row = (g * Kg + a_first) * Kgemm + first_row + a.k;

    // B (input) loader, k slowest: reduction row b.k, voxel columns b.m + j*PASS, decoded once into
    // the x offset of the column's tap origin and its tap mask
    const LoaderPosition b = igemm_b_position<Tile>();
    int x_voxel[Tile::B_LOADS];
    unsigned taps_in[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int voxel = min(n0 + b.m + Tile::PASS * j, NOPQ - 1);
        const int n = voxel / OPQ, opq = voxel - n * OPQ;
        const int o = opq / PQ, pq = opq - o * PQ;
        const int p = pq / Q, q = pq - p * Q;
        const int d_origin = o * stride_d - pad_d, h_origin = p * stride_h - pad_h, w_origin = q * stride_w - pad_w;
        x_voxel[j] = (n * C + g * Cg) * DHW + d_origin * HW + h_origin * W + w_origin;
        taps_in[j] = conv3d_tap_mask(d_origin, T, dil_d, D, h_origin, R, dil_h, H, w_origin, S, dil_w, W);
    }
    // reduction row b.k as (c, t, r, s) (c = -1 for a row before 0), carried with the x offset of the
    // tap, tap = c*DHW + t*dil_d*HW + r*dil_h*W + s*dil_w, each stepped by BK with carries
    const int row = first_row + b.k;
    const int c0 = floor_div(row, TRS), trs0 = row - c0 * TRS;
    const int rs0 = trs0 % RS;
    int t = trs0 / RS, r = rs0 / S, s = rs0 - r * S;
    int tap = c0 * DHW + t * dil_d * HW + r * dil_h * W + s * dil_w;
    const auto a_source = [&](int i) { return IgemmSource{w + (w_row + min(i * Tile::PASS * Kgemm, a_span)), true}; };
    const auto b_source = [&](int j) {
        return IgemmSource{x + (x_voxel[j] + tap), igemm_in_bounds(taps_in[j], conv3d_tap_select(t, r, s))};
    };
    const auto advance = [&] {
        w_row += Tile::BK;
        s += walk_s; r += walk_r; t += walk_t; tap += walk_tap;
        if (s >= S) { s -= S; ++r; tap += walk_carry_s; }
        if (r >= R) { r -= R; ++t; tap += walk_carry_r; }
        if (t >= T) { t -= T; tap += walk_carry_t; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, a.k, a.m, b.k, b.m, range.k_count, a_source, b_source, advance);

    const int tm = igemm_tm<Tile>(), tn = igemm_tn<Tile>();
    REAL* out_split = out + split * K * NOPQ;
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
        const int voxel = n0 + igemm_offset<Tile::RUN_N>(j, tn);
        if (voxel >= NOPQ) continue;
        const int n = voxel / OPQ;
        REAL* y_voxel = out_split + (n * K + g * Kg) * OPQ + (voxel - n * OPQ);
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i) {
            const int m = m0 + igemm_offset<Tile::RUN_M>(i, tm);
            if (m >= Kg) continue;
            y_voxel[m * OPQ] = has_bias ? acc[i][j] + bias[g * Kg + m] : acc[i][j];
        }
    }
}

#define FPROP3D_PARAMS                                                                                       \
    const REAL* __restrict__ x, const REAL* __restrict__ w, const REAL* __restrict__ bias,                  \
    REAL* __restrict__ out, int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q, \
    int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w, \
    int groups, int has_bias, int chunk, int walk_s, int walk_r, int walk_t, int walk_tap, int walk_carry_s,  \
    int walk_carry_r, int walk_carry_t
#define FPROP3D_ARGS                                                                                         \
    x, w, bias, out, N, C, D, H, W, K, T, R, S, O, P, Q, stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,   \
    dil_d, dil_h, dil_w, groups, has_bias, chunk, walk_s, walk_r, walk_t, walk_tap, walk_carry_s, walk_carry_r, \
    walk_carry_t

// grid (ceil(N*O*P*Q / BN), ceil((K/G) / BM), splits * G), block the tile's threads; chunk a multiple of BK
// with splits = ceil(C/G*T*R*S / chunk); `bias` is never read when has_bias == 0
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv3d_fprop_large(FPROP3D_PARAMS)
{
    fprop3d_tile<IGEMM_LARGE>(FPROP3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv3d_fprop_tall(FPROP3D_PARAMS)
{
    fprop3d_tile<IGEMM_TALL>(FPROP3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv3d_fprop_wide(FPROP3D_PARAMS)
{
    fprop3d_tile<IGEMM_WIDE>(FPROP3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, CONV3D_SMALL_BLOCKS)
conv3d_fprop_small(FPROP3D_PARAMS)
{
    fprop3d_tile<IGEMM_SMALL>(FPROP3D_ARGS);
}
