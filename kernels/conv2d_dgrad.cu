// conv2d input gradient (dgrad) by flipped filters: dx[n, c, h, w] = sum over k, r, s of
// dy[n, k, p, q] * w[k, c, r, s] where h + pad_h - r*dil_h = p*stride_h (likewise w), i.e. the
// convolution of the zero-inserted dy with the flipped filter, without the zeros.
// Also the forward pass of conv_transpose2d (its input plays dy, its output dx).
//
// Phase decomposition (stride > 1): the input pixels split into stride_h*stride_w phases
// ((h + pad_h) mod stride_h, (w + pad_w) mod stride_w). Within a phase the contributing taps are
// a fixed subset r = r0 + j*period (period = stride/gcd(stride, dilation)) and the output row is
// p = i + p_base - j*p_step for the phase's i-th pixel row: a dense convolution again, so no
// thread ever loops over a tap that multiplies an inserted zero. Phases with no taps get zeros.
//
// GEMM view, per (group, phase) (grid.z):  dx_g,ph[M x Ngemm] = w_g^T[M x Kgemm] * B[Kgemm x Ngemm]
//   M = C/G (input channels), Ngemm = N * Hph * Wph (the phase's input pixels, consecutive
//   threads on consecutive pixels), Kgemm = (K/G) * Rph * Sph (output channels x phase taps).
//
// Tiling: as conv2d_fprop (igemm.cuh: BK = 8, four tile variants of 64 to 256 threads, vectorized
// register blocking). The filter operand is read from a copy wt that conv2d_dgrad_filter_transpose
// makes once per call, in the order this kernel reduces it (phase by phase, row (k, jr, js), the
// channels contiguous): its A-tile loads run along the channels (PASS consecutive values per row),
// a thread's A offset steps by BK*C/G, and wt ends in BM values of padding, so the A rows
// (channels) past C/G of a ragged tile read without a bounds test. Both loaders run k slowest; the
// reduction row (k, jr, js) of a thread is the same for its A and B loads and advances by BK with
// carries; its pixel columns are decoded once into the dy offset of their origin and a tap mask
// (igemm.cuh): no div/mod in the main loop. Operand rows and columns past the problem are clamped
// onto the last valid one (computed, never stored). Phases with more than 16 taps in a dimension
// read a zero-padded copy of dy (conv2d_pad.cu) that every tap lands inside.
// Split-K (grid.z = splits * G * phases): split z sums its share of the phase's reduction (chunk =
// ceil(Kgemm / splits) rounded up to BK, computed here per phase) and writes its partial dx to
// out + z * N*C*H*W; the launcher folds the partials in a fixed order. An empty share writes zeros.
//
// Index range: 32-bit offsets; the launcher refuses tensors (and split-K workspaces) of 2^31 or
// more elements.

#include "igemm.cuh"
#include "dgrad_phases.cuh"

// The filter in the order dgrad reduces it, stride phase by phase (phase_h*stride_w + phase_w):
// the taps (jr, js) of a phase (count_h x count_w of them) make its reduction rows
// row = k*taps + jr*count_w + js, and its rows lie at wt[(K*C/G*before + row*C/G + c] (before: the
// taps of the earlier phases), so the A loader steps one offset by BK*C/G. Every tap belongs to
// exactly one phase: wt is a permutation of w (groups included, k over all K filters).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv2d_dgrad_filter_transpose(
    const REAL* __restrict__ w, REAL* __restrict__ wt, int K, int Cg, int R, int S, int stride_h,
    int stride_w, int dil_h, int dil_w)
{
    const int RS = R * S, per_filter = Cg * RS;
    const int period_h = stride_h / gcd(stride_h, dil_h), period_w = stride_w / gcd(stride_w, dil_w);
    GRID_STRIDE_LOOP(e, (long long)K * per_filter) {
        const int k = (int)(e / per_filter), rest = (int)(e - (long long)k * per_filter);
        const int c = rest / RS, rs = rest - c * RS, r = rs / S, s = rs - r * S;
        const int phase_h = (r * dil_h) % stride_h, phase_w = (s * dil_w) % stride_w;
        const int count_h = (R - r % period_h + period_h - 1) / period_h;
        const int count_w = (S - s % period_w + period_w - 1) / period_w;
        const int before = taps_before(phase_h, R, stride_h, dil_h) * S
                           + count_h * taps_before(phase_w, S, stride_w, dil_w);
        const int row = k * count_h * count_w + (r / period_h) * count_w + s / period_w;
        wt[(K * before + row) * Cg + c] = w[e];
    }
}

template <int THREADS_M, int THREADS_N, int TM, int TN>
__device__ __forceinline__ void dgrad_tile(
    const REAL* __restrict__ dy, const REAL* __restrict__ wt, REAL* __restrict__ out,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int splits)
{
    typedef IgemmTile<THREADS_M, THREADS_N, TM, TN, K_SLOWEST, K_SLOWEST> Tile;
    __shared__ __align__(16) REAL smem[IGEMM_STAGES * Tile::STAGE];
    __shared__ int dx_column[Tile::BN];   // dx offset of each output column (-1: past the phase)

    const int phases = stride_h * stride_w;
    const int split = blockIdx.z / (groups * phases), rest = blockIdx.z - split * (groups * phases);
    const int g = rest / phases, phase = rest - g * phases;
    const int th_phase = phase / stride_w, tw_phase = phase - th_phase * stride_w;
    const PhaseTaps th = phase_taps(th_phase, H, R, stride_h, pad_h, dil_h);
    const PhaseTaps tw = phase_taps(tw_phase, W, S, stride_w, pad_w, dil_w);
    const int pixels_per_image = th.pixels * tw.pixels;
    const int Npix = N * pixels_per_image;
    const int m0 = blockIdx.y * Tile::BM;
    const int n0 = blockIdx.x * Tile::BN;
    if (n0 >= Npix) return;   // the grid is sized for the largest phase; uniform per block

    const int Cg = C / groups, Kg = K / groups;
    const int taps = th.count * tw.count;
    const int Kgemm = Kg * taps;
    const int PQ = P * Q, HW = H * W;
    const int chunk = (Kgemm + splits * CHUNK_ROWS - 1) / (splits * CHUNK_ROWS) * CHUNK_ROWS;
    const SplitRange range = split_range(split, chunk, Kgemm);

    // loaders, k slowest: reduction row ab.k for both tiles; A rows (channels) and B columns
    // (pixels) ab.m + i*PASS, pixels clamped onto the last one and decoded once into the dy offset
    // of their origin (the output pixel of tap (0, 0)) and their tap mask (bits jr and 16 + js: tap
    // (jr, js) lands in dy); the loaders of row 0 also note each column's dx offset for the
    // epilogue (which so keeps no phase geometry alive through the main loop)
    const LoaderPosition ab = igemm_a_position<Tile>();   // = igemm_b_position
    int dy_pixel[Tile::B_LOADS];
    unsigned taps_in[Tile::B_LOADS];
#pragma unroll
    for (int j = 0; j < Tile::B_LOADS; ++j) {
        const int column = ab.m + Tile::PASS * j, pixel = min(n0 + column, Npix - 1);
        const int n = pixel / pixels_per_image, rest_pixels = pixel - n * pixels_per_image;
        const int i = rest_pixels / tw.pixels, iw = rest_pixels - i * tw.pixels;
        const int p_origin = i + th.base, q_origin = iw + tw.base;
        if (ab.k == 0)
            dx_column[column] = n0 + column < Npix ? (n * C + g * Cg) * HW + (th.first_pixel + i * stride_h) * W
                                                         + tw.first_pixel + iw * stride_w : -1;
        dy_pixel[j] = (n * K + g * Kg) * PQ + p_origin * Q + q_origin;
        taps_in[j] = igemm_tap_mask(p_origin, th.count, -th.step, P, q_origin, tw.count, -tw.step, Q);
    }
    // (k, jr, js) of reduction row ab_k (k = -1 for a row before 0: residue first, see igemm.cuh),
    // carried with the dy offset of the tap, tap = k*P*Q - jr*step_h*Q - js*step_w, stepped by BK
    // with carries (taps >= 1 here: a phase without taps has an empty reduction and never
    // fetches); the A offset in wt is linear in the row: w_row steps by BK*C/G
    const int taps_or_1 = max(taps, 1), count_w = max(tw.count, 1);
    const int row = range.k_begin - igemm_skipped_rows<Tile>(range.k_count) + ab.k;
    const int k0 = floor_div(row, taps_or_1), tap0 = row - k0 * taps_or_1;
    int jr = tap0 / count_w, js = tap0 - jr * count_w;
    const int before = taps_before(th_phase, R, stride_h, dil_h) * S + th.count * taps_before(tw_phase, S, stride_w, dil_w);
    int w_row = (K * before + g * Kg * taps + row) * Cg + m0 + ab.m;
    const int tap_r = -th.step * Q, tap_s = -tw.step;
    int tap = k0 * PQ + jr * tap_r + js * tap_s;
    const int walk_k = Tile::BK / taps_or_1, walk_r = (Tile::BK % taps_or_1) / count_w, walk_s = Tile::BK % count_w;
    const int walk_tap = walk_k * PQ + walk_r * tap_r + walk_s * tap_s;

    // A from the transposed filter taps (channels past C/G read into wt's padded tail), B from dy
    // at the output pixels those taps hit
    const auto a_source = [&](int i) { return IgemmSource{wt + (w_row + Tile::PASS * i), true}; };
    const auto b_source = [&](int j) {
        return IgemmSource{dy + (dy_pixel[j] + tap), igemm_in_bounds(taps_in[j], igemm_tap_select(jr, js))};
    };
    const auto advance = [&] {
        js += walk_s; jr += walk_r; w_row += Tile::BK * Cg; tap += walk_tap;
        if (js >= tw.count) { js -= tw.count; ++jr; tap += tap_r - tw.count * tap_s; }
        if (jr >= th.count) { jr -= th.count; tap += PQ - th.count * tap_r; }
    };
    REAL acc[Tile::TM][Tile::TN];
    igemm_main_loop<Tile>(acc, smem, ab.k, ab.m, ab.k, ab.m, range.k_count, a_source, b_source, advance);

    __syncthreads();   // dx_column is complete (the main loop has no barrier when a phase has no taps)
    const int tm = igemm_tm<Tile>(), tn = igemm_tn<Tile>();
    REAL* out_split = out + split * N * C * HW;
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
        const int column = dx_column[igemm_offset<Tile::RUN_N>(j, tn)];
        if (column < 0) continue;
        REAL* dx_pixel = out_split + column;
#pragma unroll
        for (int i = 0; i < Tile::TM; ++i) {
            const int c = m0 + igemm_offset<Tile::RUN_M>(i, tm);
            if (c < Cg) dx_pixel[c * HW] = acc[i][j];
        }
    }
}

#define DGRAD_PARAMS                                                                          \
    const REAL* __restrict__ dy, const REAL* __restrict__ wt, REAL* __restrict__ out,         \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,                            \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int splits
#define DGRAD_ARGS                                                                            \
    dy, wt, out, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, splits

// grid (ceil(N * ceil(H/stride_h) * ceil(W/stride_w) / BN), ceil((C/G) / BM),
// splits * G * stride_h * stride_w), block the tile's threads; wt from conv2d_dgrad_filter_transpose
extern "C" __global__ void __launch_bounds__(IGEMM_LARGE_THREADS, IGEMM_LARGE_BLOCKS) conv2d_dgrad_large(DGRAD_PARAMS)
{
    dgrad_tile<IGEMM_LARGE>(DGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_TALL_THREADS, IGEMM_TALL_BLOCKS) conv2d_dgrad_tall(DGRAD_PARAMS)
{
    dgrad_tile<IGEMM_TALL>(DGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_WIDE_THREADS, IGEMM_WIDE_BLOCKS) conv2d_dgrad_wide(DGRAD_PARAMS)
{
    dgrad_tile<IGEMM_WIDE>(DGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_SMALL_THREADS, IGEMM_SMALL_BLOCKS) conv2d_dgrad_small(DGRAD_PARAMS)
{
    dgrad_tile<IGEMM_SMALL>(DGRAD_ARGS);
}
