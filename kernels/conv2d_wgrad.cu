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
// Tiling: as conv2d_fprop (BK = 8, 256 threads as 16 x 16, TM x TN outputs per thread at strided
// rows/columns; fp32 128x128 "large" and 64x64 "small", fp64 64x64 and 32x32; double-buffered
// global -> shared loads, one barrier per K step). Both operands are contiguous along the
// reduction (p, q), so each thread loads reduction row tid % 8 of both tiles: groups of 8 threads
// read 8 consecutive pixels. The shared tiles are padded by 4 words per row so that those
// transposing stores hit 32 different banks. A thread's reduction row (n, p, q) advances by BK
// with carries and its filter columns (c, r, s) are decoded once: no div/mod in the main loop.
//
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements.

#include "igemm.cuh"

#define PAD 4   // words of padding per shared tile row

template <int T>
__device__ __forceinline__ void wgrad_tile(
    REAL* smem_a, REAL* smem_b,
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int splits, int chunk)
{
    const int BM = 16 * T, BN = 16 * T;
    const int BMP = BM + PAD, BNP = BN + PAD;
    const int A_LOADS = BM * BK / IGEMM_THREADS;   // per thread, rows ab_m + 32*i
    const int B_LOADS = BN * BK / IGEMM_THREADS;   // per thread, columns ab_m + 32*j

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int g = blockIdx.z / splits, split = blockIdx.z - g * splits;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S;
    const int Ngemm = Cg * RS;
    const int PQ = P * Q, HW = H * W;
    const int NPQ = N * PQ;
    const int k_begin = split * chunk;
    const int k_count = min(chunk, NPQ - k_begin);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    // loaders: reduction row ab_k of both tiles; A rows (channels) and B columns (taps) ab_m + 32*i
    const int ab_k = tid % BK, ab_m = tid / BK;
    int c_off[B_LOADS], h_off[B_LOADS], w_off[B_LOADS];
#pragma unroll
    for (int j = 0; j < B_LOADS; ++j) {
        const int col = n0 + ab_m + 32 * j;
        if (col < Ngemm) {
            const int c = col / RS, rs = col - c * RS;
            const int r = rs / S, s = rs - r * S;
            c_off[j] = (g * Cg + c) * HW;
            h_off[j] = r * dil_h - pad_h;
            w_off[j] = s * dil_w - pad_w;
        } else {
            c_off[j] = 0;
            h_off[j] = OUTSIDE;
            w_off[j] = OUTSIDE;
        }
    }
    // (n, p, q) of this thread's reduction row, and the carry steps that advance it by BK
    int kk = ab_k;   // relative to k_begin
    int n = (k_begin + ab_k) / PQ, p = ((k_begin + ab_k) % PQ) / Q, q = (k_begin + ab_k) % Q;
    const int step_n = BK / PQ, step_p = (BK % PQ) / Q, step_q = BK % Q;
    const int dy_group = g * Kg * PQ;

    // A from dy at reduction pixel (n, p, q), B gathered from x (zero outside the padded input)
    const auto fetch = [&](int, REAL (&a_next)[A_LOADS], REAL (&b_next)[B_LOADS]) {
        const bool row_ok = kk < k_count;
        const int dy_row = n * K * PQ + dy_group + p * Q + q;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int m = m0 + ab_m + 32 * i;
            a_next[i] = (row_ok && m < Kg) ? dy[dy_row + m * PQ] : (REAL)0;
        }
        const int x_image = n * C * HW, hp = p * stride_h, wq = q * stride_w;
#pragma unroll
        for (int j = 0; j < B_LOADS; ++j) {
            const int h = hp + h_off[j], wc = wq + w_off[j];
            b_next[j] = (row_ok && (unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W)
                            ? x[x_image + c_off[j] + h * W + wc] : (REAL)0;
        }
    };
    const auto advance = [&] {
        kk += BK;
        q += step_q; p += step_p; n += step_n;
        if (q >= Q) { q -= Q; ++p; }
        if (p >= P) { p -= P; ++n; }
    };
    REAL acc[T][T];
    igemm_main_loop<T, A_LOADS, B_LOADS>(acc, smem_a, smem_b, BMP, BNP, ab_k, ab_m, ab_k, ab_m, k_count, fetch,
                                         advance);

    REAL* out = workspace + (split * K + g * Kg) * Ngemm;
#pragma unroll
    for (int i = 0; i < T; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= Kg) continue;
#pragma unroll
        for (int j = 0; j < T; ++j) {
            const int col = n0 + tx + 16 * j;
            if (col < Ngemm) out[m * Ngemm + col] = acc[i][j];
        }
    }
}

#define WGRAD_PARAMS                                                                          \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, REAL* __restrict__ workspace,    \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,                            \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,       \
    int splits, int chunk
#define WGRAD_ARGS                                                                            \
    dy, x, workspace, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h,     \
    dil_w, groups, splits, chunk

// grid (ceil((C/G)*R*S / BN), ceil((K/G) / BM), G * splits), block 256; chunk a multiple of BK
// with splits = ceil(N*P*Q / chunk), so that no split is empty
extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, 2) conv2d_wgrad_large(WGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * (16 * LARGE_T + PAD)];
    __shared__ REAL smem_b[2 * BK * (16 * LARGE_T + PAD)];
    wgrad_tile<LARGE_T>(smem_a, smem_b, WGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, SMALL_BLOCKS) conv2d_wgrad_small(WGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * (16 * SMALL_T + PAD)];
    __shared__ REAL smem_b[2 * BK * (16 * SMALL_T + PAD)];
    wgrad_tile<SMALL_T>(smem_a, smem_b, WGRAD_ARGS);
}
