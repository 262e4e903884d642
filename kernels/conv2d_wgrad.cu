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

#ifndef REAL
#define REAL float
#define REAL_IS_DOUBLE 0
#endif

#define THREADS 256
#define BK 8
#define PAD 4

// SMALL_BLOCKS: resident blocks per SM the small tile is built for (its register cap)
#if REAL_IS_DOUBLE
#define LARGE_T 4
#define SMALL_T 2
#define SMALL_BLOCKS 3
#else
#define LARGE_T 8
#define SMALL_T 4
#define SMALL_BLOCKS 4
#endif

// a filter column past the last tap gets this row offset, so it fails the bounds test
#define OUTSIDE (-(1 << 29))   // the launcher keeps every padded extent below 2^28

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
    const int A_LOADS = BM * BK / THREADS;   // per thread, rows ab_m + 32*i
    const int B_LOADS = BN * BK / THREADS;   // per thread, columns ab_m + 32*j

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

    REAL a_next[A_LOADS], b_next[B_LOADS];
    REAL acc[T][T];
#pragma unroll
    for (int i = 0; i < T; ++i)
#pragma unroll
        for (int j = 0; j < T; ++j) acc[i][j] = (REAL)0;

#define FETCH                                                                                 \
    {                                                                                         \
        const bool row_ok = kk < k_count;                                                     \
        const int dy_row = n * K * PQ + dy_group + p * Q + q;                                 \
        _Pragma("unroll") for (int i = 0; i < A_LOADS; ++i) {                                 \
            const int m = m0 + ab_m + 32 * i;                                                 \
            a_next[i] = (row_ok && m < Kg) ? dy[dy_row + m * PQ] : (REAL)0;                   \
        }                                                                                     \
        const int x_image = n * C * HW, hp = p * stride_h, wq = q * stride_w;                 \
        _Pragma("unroll") for (int j = 0; j < B_LOADS; ++j) {                                 \
            const int h = hp + h_off[j], wc = wq + w_off[j];                                  \
            b_next[j] = (row_ok && (unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W)   \
                            ? x[x_image + c_off[j] + h * W + wc] : (REAL)0;                    \
        }                                                                                     \
    }
#define STORE(buf)                                                                            \
    {                                                                                         \
        _Pragma("unroll") for (int i = 0; i < A_LOADS; ++i)                                   \
            smem_a[((buf) * BK + ab_k) * BMP + ab_m + 32 * i] = a_next[i];                    \
        _Pragma("unroll") for (int j = 0; j < B_LOADS; ++j)                                   \
            smem_b[((buf) * BK + ab_k) * BNP + ab_m + 32 * j] = b_next[j];                    \
    }

    FETCH
    STORE(0)
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < k_count; k0 += BK) {
        const bool has_next = k0 + BK < k_count;
        if (has_next) {
            kk += BK;
            q += step_q; p += step_p; n += step_n;
            if (q >= Q) { q -= Q; ++p; }
            if (p >= P) { p -= P; ++n; }
            FETCH
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            REAL a_frag[T], b_frag[T];
#pragma unroll
            for (int i = 0; i < T; ++i) a_frag[i] = smem_a[(buf * BK + k) * BMP + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < T; ++j) b_frag[j] = smem_b[(buf * BK + k) * BNP + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < T; ++i)
#pragma unroll
                for (int j = 0; j < T; ++j) acc[i][j] += a_frag[i] * b_frag[j];
        }
        if (has_next) STORE(buf ^ 1)
        __syncthreads();
        buf ^= 1;
    }
#undef FETCH
#undef STORE

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
extern "C" __global__ void __launch_bounds__(THREADS, 2) conv2d_wgrad_large(WGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * (16 * LARGE_T + PAD)];
    __shared__ REAL smem_b[2 * BK * (16 * LARGE_T + PAD)];
    wgrad_tile<LARGE_T>(smem_a, smem_b, WGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(THREADS, SMALL_BLOCKS) conv2d_wgrad_small(WGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * (16 * SMALL_T + PAD)];
    __shared__ REAL smem_b[2 * BK * (16 * SMALL_T + PAD)];
    wgrad_tile<SMALL_T>(smem_a, smem_b, WGRAD_ARGS);
}
