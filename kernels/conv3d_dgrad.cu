// conv3d input gradient (dgrad) by flipped filters: dx[n, c, d, h, w] = sum over k, t, r, s of
// dy[n, k, o, p, q] * w[k, c, t, r, s] where d + pad_d - t*dil_d = o*stride_d (likewise h and w), i.e.
// the convolution of the zero-inserted dy with the flipped filter, without the zeros: conv2d_dgrad.cu's
// kernel with a depth coordinate, all stride phases in one launch, dx written in place.
//
// Phase decomposition (dgrad_phases.cuh, per dimension): the input voxels split into stride phases,
// (d mod stride_d, h mod stride_h, w mod stride_w); the phases along a dimension are its first
// min(stride, size) positions (a phase past the size has no voxel and gets no block). Within a phase
// the contributing taps are a fixed subset per dimension, so each phase is a dense convolution of dy;
// phases no tap reaches get zeros.
//
// GEMM view, per (group, phase) (grid.z):  dx_g,ph[M x Ngemm] = w_g^T[M x Kgemm] * B[Kgemm x Ngemm]
//   M = C/G (input channels), Ngemm = N * Dph * Hph * Wph (the phase's input voxels, consecutive
//   threads on consecutive voxels), Kgemm = (K/G) * Tph * Rph * Sph (output channels x phase taps).
//
// Tiling: as conv2d_dgrad.cu (igemm.cuh: BK = 8, four tile variants of 64 to 256 threads). The filter
// operand is read from a copy wt that conv3d_dgrad_filter_transpose makes once per call, in the order
// this kernel reduces it (phase by phase, row (k, jt, jr, js), the channels contiguous, BM values of
// padding at the end), so the A loads run along the channels and a thread's A offset steps by BK*C/G.
// The reduction row (k, jt, jr, js) is the same for a thread's A and B loads and advances by BK with
// carries; its voxel columns are decoded once into the dy offset of their origin and a three-field tap
// mask (conv3d_tile.cuh): no div/mod in the main loop. Operand rows and columns past the problem are
// clamped onto the last valid one (computed, never stored). Phases with more taps in a dimension than
// its mask field holds read a zero-bordered copy of dy (the launcher's) that every tap lands inside.
// Split-K (grid.z = splits * G * phases): split z sums its share of the phase's reduction (chunk =
// ceil(Kgemm / splits) rounded up to BK, computed here per phase) and writes its partial dx to
// out + split * N*C*D*H*W; the launcher folds the partials in a fixed order. An empty share writes zeros.
//
// Index range: 32-bit offsets; the launcher refuses tensors (and split-K workspaces) of 2^31 or more
// elements.

#include "igemm.cuh"
#include "conv3d_tile.cuh"
#include "dgrad_phases.cuh"

// The filter in the order dgrad reduces it, tap phase by tap phase ((phase_d*stride_h + phase_h)*stride_w
// + phase_w): the taps (jt, jr, js) of a phase (count_d x count_h x count_w of them) make its reduction
// rows row = k*taps + (jt*count_h + jr)*count_w + js, at wt[(K*before + row)*C/G + c] (before: the taps
// of the earlier phases). Every tap belongs to exactly one phase: wt is a permutation of w.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv3d_dgrad_filter_transpose(
    const REAL* __restrict__ w, REAL* __restrict__ wt, int K, int Cg, int T, int R, int S, int stride_d,
    int stride_h, int stride_w, int dil_d, int dil_h, int dil_w)
{
    const int RS = R * S, TRS = T * RS, per_filter = Cg * TRS;
    const int period_d = stride_d / gcd(stride_d, dil_d), period_h = stride_h / gcd(stride_h, dil_h);
    const int period_w = stride_w / gcd(stride_w, dil_w);
    GRID_STRIDE_LOOP(e, (long long)K * per_filter) {
        const int k = (int)(e / per_filter), rest = (int)(e - (long long)k * per_filter);
        const int c = rest / TRS, trs = rest - c * TRS, t = trs / RS, rs = trs - t * RS, r = rs / S, s = rs - r * S;
        const int phase_d = (t * dil_d) % stride_d, phase_h = (r * dil_h) % stride_h;
        const int phase_w = (s * dil_w) % stride_w;
        const int count_d = (T - t % period_d + period_d - 1) / period_d;
        const int count_h = (R - r % period_h + period_h - 1) / period_h;
        const int count_w = (S - s % period_w + period_w - 1) / period_w;
        const int before = taps_before(phase_d, T, stride_d, dil_d) * RS
                           + count_d * taps_before(phase_h, R, stride_h, dil_h) * S
                           + count_d * count_h * taps_before(phase_w, S, stride_w, dil_w);
        const int row = ((k * count_d + t / period_d) * count_h + r / period_h) * count_w + s / period_w;
        wt[(K * before + row) * Cg + c] = w[e];
    }
}

// The taps of the phase whose voxels start at `first` along a dimension (first < min(stride, size)):
// dgrad_phases.cuh's phase_taps of the tap phase (first + pad) mod stride
__device__ __forceinline__ PhaseTaps voxel_phase_taps(int first, int size, int taps, int stride, int pad, int dil)
{
    return phase_taps((first + pad) % stride, size, taps, stride, pad, dil);
}

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void dgrad3d_tile(
    const REAL* __restrict__ dy, const REAL* __restrict__ wt, REAL* __restrict__ out,
    int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q, int stride_d, int stride_h,
    int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w, int groups, int splits,
    int z_first)
{
    typedef IgemmTile<THREADS_M, THREADS_N, TM, TN, K_SLOWEST, K_SLOWEST> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];
    __shared__ int dx_column[Tile::BN];   // dx offset of each output column (-1: past the phase)

    // the phases of each dimension: its first min(stride, size) voxels
    const int phases_h = min(stride_h, H), phases_w = min(stride_w, W);
    const int phases = min(stride_d, D) * phases_h * phases_w;
    const int z = z_first + blockIdx.z;
    const int split = z / (groups * phases), rest = z - split * (groups * phases);
    const int g = rest / phases, phase = rest - g * phases;
    const int phase_dh = phase / phases_w, first_w = phase - phase_dh * phases_w;
    const int first_d = phase_dh / phases_h, first_h = phase_dh - first_d * phases_h;
    const PhaseTaps td = voxel_phase_taps(first_d, D, T, stride_d, pad_d, dil_d);
    const PhaseTaps th = voxel_phase_taps(first_h, H, R, stride_h, pad_h, dil_h);
    const PhaseTaps tw = voxel_phase_taps(first_w, W, S, stride_w, pad_w, dil_w);
    const int hw_pixels = th.pixels * tw.pixels, voxels_per_image = td.pixels * hw_pixels;
    const int Nvox = N * voxels_per_image;
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;
    if (n0 >= Nvox) return;   // the grid is sized for the largest phase; uniform per block

    const int Cg = C / groups, Kg = K / groups;
    const int taps = td.count * th.count * tw.count;
    const int Kgemm = Kg * taps;
    const int PQ = P * Q, OPQ = O * PQ, HW = H * W, DHW = D * HW;
    const int chunk = (Kgemm + splits * CHUNK_ROWS - 1) / (splits * CHUNK_ROWS) * CHUNK_ROWS;
    const SplitRange range = split_range(split, chunk, Kgemm);

    // loaders, k slowest: reduction row ab.k for both tiles; A rows (channels) and B columns (voxels)
    // ab.m + i*PASS, voxels clamped onto the last one and decoded once into the dy offset of their
    // origin (the output voxel of tap (0, 0, 0)) and their tap mask; the loaders of row 0 also note each
    // column's dx offset for the epilogue
    const LoaderPosition ab = igemm_a_position<Tile>();   // = igemm_b_position
    int dy_voxel[Tile::B_LOADS];
    unsigned taps_in[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int column = ab.m + Tile::PASS * j, voxel = min(n0 + column, Nvox - 1);
        const int n = voxel / voxels_per_image, in_image = voxel - n * voxels_per_image;
        const int id = in_image / hw_pixels, in_plane = in_image - id * hw_pixels;
        const int ih = in_plane / tw.pixels, iw = in_plane - ih * tw.pixels;
        const int o_origin = id + td.base, p_origin = ih + th.base, q_origin = iw + tw.base;
        if (ab.k == 0)
            dx_column[column] = n0 + column < Nvox ? (n * C + g * Cg) * DHW + (first_d + id * stride_d) * HW
                                                         + (first_h + ih * stride_h) * W + first_w + iw * stride_w
                                                   : -1;
        dy_voxel[j] = (n * K + g * Kg) * OPQ + o_origin * PQ + p_origin * Q + q_origin;
        taps_in[j] = conv3d_tap_mask(o_origin, td.count, -td.step, O, p_origin, th.count, -th.step, P, q_origin,
                                     tw.count, -tw.step, Q);
    }
    // (k, jt, jr, js) of reduction row ab_k (k = -1 for a row before 0: residue first, see igemm.cuh),
    // carried with the dy offset of the tap, tap = k*O*P*Q - jt*step_d*P*Q - jr*step_h*Q - js*step_w,
    // stepped by BK with carries (taps >= 1 here: a phase without taps has an empty reduction and never
    // fetches); the A offset in wt is linear in the row: w_row steps by BK*C/G
    const int taps_or_1 = max(taps, 1), count_h = max(th.count, 1), count_w = max(tw.count, 1);
    const int plane_taps = count_h * count_w;
    const int row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count) + ab.k;
    const int k0 = floor_div(row, taps_or_1), tap0 = row - k0 * taps_or_1;
    const int plane_tap0 = tap0 % plane_taps;
    int jt = tap0 / plane_taps, jr = plane_tap0 / count_w, js = plane_tap0 - jr * count_w;
    const int before = taps_before((first_d + pad_d) % stride_d, T, stride_d, dil_d) * R * S
                       + td.count * taps_before((first_h + pad_h) % stride_h, R, stride_h, dil_h) * S
                       + td.count * th.count * taps_before((first_w + pad_w) % stride_w, S, stride_w, dil_w);
    int w_row = (K * before + g * Kg * taps + row) * Cg + m0 + ab.m;
    const int tap_t = -td.step * PQ, tap_r = -th.step * Q, tap_s = -tw.step;
    int tap = k0 * OPQ + jt * tap_t + jr * tap_r + js * tap_s;
    const int walk_rest = Tile::BK % taps_or_1;
    const int walk_t = walk_rest / plane_taps, walk_r = (walk_rest % plane_taps) / count_w;
    const int walk_s = walk_rest % count_w;
    const int walk_tap = (Tile::BK / taps_or_1) * OPQ + walk_t * tap_t + walk_r * tap_r + walk_s * tap_s;

    // A from the transposed filter taps (channels past C/G read into wt's padded tail), B from dy at
    // the output voxels those taps hit
    const auto a_source = [&](int i) { return IgemmSource{wt + (w_row + Tile::PASS * i), true}; };
    const auto b_source = [&](int j) {
        return IgemmSource{dy + (dy_voxel[j] + tap), igemm_in_bounds(taps_in[j], conv3d_tap_select(jt, jr, js))};
    };
    const auto advance = [&] {
        js += walk_s; jr += walk_r; jt += walk_t; w_row += Tile::BK * Cg; tap += walk_tap;
        if (js >= tw.count) { js -= tw.count; ++jr; tap += tap_r - tw.count * tap_s; }
        if (jr >= th.count) { jr -= th.count; ++jt; tap += tap_t - th.count * tap_r; }
        if (jt >= td.count) { jt -= td.count; tap += OPQ - td.count * tap_t; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, ab.k, ab.m, ab.k, ab.m, range.k_count, a_source, b_source, advance);

    __syncthreads();   // dx_column is complete (the main loop has no barrier when a phase has no taps)
    const int tm = igemm_tm<Tile>(), tn = igemm_tn<Tile>();
    REAL* out_split = out + split * N * C * DHW;
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
        const int column = dx_column[igemm_offset<Tile::RUN_N>(j, tn)];
        if (column < 0) continue;
        REAL* dx_voxel = out_split + column;
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i) {
            const int c = m0 + igemm_offset<Tile::RUN_M>(i, tm);
            if (c < Cg) dx_voxel[c * DHW] = acc[i][j];
        }
    }
}

#define DGRAD3D_PARAMS                                                                                        \
    const REAL* __restrict__ dy, const REAL* __restrict__ wt, REAL* __restrict__ out,                        \
    int N, int C, int D, int H, int W, int K, int T, int R, int S, int O, int P, int Q, int stride_d,         \
    int stride_h, int stride_w, int pad_d, int pad_h, int pad_w, int dil_d, int dil_h, int dil_w, int groups, \
    int splits, int z_first
#define DGRAD3D_ARGS                                                                                          \
    dy, wt, out, N, C, D, H, W, K, T, R, S, O, P, Q, stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, \
    dil_h, dil_w, groups, splits, z_first

// grid (ceil(N * ceil(D/stride_d) * ceil(H/stride_h) * ceil(W/stride_w) / BN), ceil((C/G) / BM),
// splits * G * min(stride_d, D) * min(stride_h, H) * min(stride_w, W)), block the tile's threads; wt from
// conv3d_dgrad_filter_transpose. A z past CUDA's 65535 runs as several launches, each from z_first.
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv3d_dgrad_large(DGRAD3D_PARAMS)
{
    dgrad3d_tile<IGEMM_LARGE>(DGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv3d_dgrad_tall(DGRAD3D_PARAMS)
{
    dgrad3d_tile<IGEMM_TALL>(DGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv3d_dgrad_wide(DGRAD3D_PARAMS)
{
    dgrad3d_tile<IGEMM_WIDE>(DGRAD3D_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, CONV3D_SMALL_BLOCKS)
conv3d_dgrad_small(DGRAD3D_PARAMS)
{
    dgrad3d_tile<IGEMM_SMALL>(DGRAD3D_ARGS);
}
