// conv2d forward (fprop) as an implicit GEMM; NCHW input x (N, C, H, W), filter w (K, C/G, R, S),
// output y (N, K, P, Q), G groups.
//
// GEMM view, per group g (grid.z):  y_g[M x Ngemm] = w_g[M x Kgemm] * im2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*P*Q (output pixels; consecutive threads own consecutive
//   pixels, so the stores y[n, k, p, q] coalesce), Kgemm = (C/G)*R*S (reduction over (c, r, s)).
//   The im2col operand is never materialised: each thread gathers its elements of the B tile
//   straight from x, zero outside the padded input.
//
// Tiling: block tile BM x BN x BK with BK = 8, 256 threads as a 16 x 16 grid, each thread owning
//   TM x TN outputs at rows ty + 16*i and columns tx + 16*j (strided, so a warp's shared-memory
//   reads of B are 16 consecutive words: no bank conflicts, A reads broadcast).
//   fp32: "large" 128x128 (8x8 per thread: 64 FMAs per 16 shared loads, the usual sweet spot
//   under 128 registers) and "small" 64x64 (4x4) that the launcher picks when the large tile
//   would leave most SMs idle. fp64 halves both (64x64 and 32x32): each value takes two
//   registers, and the double-precision FMA rate, not shared bandwidth, is the limit.
//   __launch_bounds__: large 2 blocks/SM (<= 128 registers, 0 spills), small 4 blocks/SM in fp32
//   (<= 64 registers: its 16 accumulators fit, and the extra resident warps hide latency).
//   Global -> shared loads are double-buffered: the next tile is fetched into registers while
//   the current one is multiplied, so each K step needs a single barrier.
//   No div/mod in the main loop: a thread's B columns (n, p, q) are decoded once, and its B row
//   (c, r, s) advances by BK with carries. Epilogue fuses bias and optionally ReLU.
//
// Index range: 32-bit offsets (64-bit ones cost the large fp32 tile its last free registers);
// the launcher refuses tensors of 2^31 or more elements with a clear error.

#include "igemm.cuh"

template <int T>
__device__ __forceinline__ void fprop_tile(
    REAL* smem_a, REAL* smem_b,
    const REAL* __restrict__ x, const REAL* __restrict__ w, const REAL* __restrict__ bias,
    REAL* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int has_bias, int relu)
{
    const int BM = 16 * T, BN = 16 * T;
    const int A_LOADS = BM * BK / IGEMM_THREADS;   // per thread, rows a_m + 32*i
    const int B_LOADS = BN * BK / IGEMM_THREADS;   // per thread, columns b_n + 32*j

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int RS = R * S;
    const int Kgemm = Cg * RS;
    const int PQ = P * Q;
    const int HW = H * W;
    const int NPQ = N * PQ;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    // A (filter) loader: row a_m + 32*i of the tile, reduction column a_k
    const int a_k = tid % BK, a_m = tid / BK;
    const int w_group = g * Kg * Kgemm;

    // B (input) loader: reduction row b_k, pixel columns b_n + 32*j, decoded once
    const int b_k = tid / 32, b_n = tid % 32;
    int x_image[B_LOADS];
    int h_origin[B_LOADS], w_origin[B_LOADS];
#pragma unroll
    for (int j = 0; j < B_LOADS; ++j) {
        const int pixel = n0 + b_n + 32 * j;
        if (pixel < NPQ) {
            const int n = pixel / PQ, pq = pixel - n * PQ;
            const int p = pq / Q, q = pq - p * Q;
            x_image[j] = (n * C + g * Cg) * HW;
            h_origin[j] = p * stride_h - pad_h;
            w_origin[j] = q * stride_w - pad_w;
        } else {
            x_image[j] = 0;
            h_origin[j] = OUTSIDE;
            w_origin[j] = OUTSIDE;
        }
    }
    // (c, r, s) of reduction row b_k, and the carry steps that advance it by BK
    int c = b_k / RS, r = (b_k % RS) / S, s = b_k % S;
    const int step_c = BK / RS, step_r = (BK % RS) / S, step_s = BK % S;

    // A from the filter rows, B gathered from x (zero outside the padded input)
    const auto fetch = [&](int k_base, REAL (&a_next)[A_LOADS], REAL (&b_next)[B_LOADS]) {
        const int kk = k_base + a_k;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int m = m0 + a_m + 32 * i;
            a_next[i] = (m < Kg && kk < Kgemm) ? w[w_group + m * Kgemm + kk] : (REAL)0;
        }
        const bool row_ok = c < Cg;
        const int hr = r * dil_h, ws = s * dil_w, c_off = c * HW;
#pragma unroll
        for (int j = 0; j < B_LOADS; ++j) {
            const int h = h_origin[j] + hr, wc = w_origin[j] + ws;
            b_next[j] = (row_ok && (unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W)
                            ? x[x_image[j] + c_off + h * W + wc] : (REAL)0;
        }
    };
    const auto advance = [&] {
        s += step_s; r += step_r; c += step_c;
        if (s >= S) { s -= S; ++r; }
        if (r >= R) { r -= R; ++c; }
    };
    REAL acc[T][T];
    igemm_main_loop<T, A_LOADS, B_LOADS>(acc, smem_a, smem_b, BM, BN, a_k, a_m, b_k, b_n, Kgemm, fetch, advance);

#pragma unroll
    for (int j = 0; j < T; ++j) {
        const int pixel = n0 + tx + 16 * j;
        if (pixel >= NPQ) continue;
        const int n = pixel / PQ;
        REAL* y_pixel = y + (n * K + g * Kg) * PQ + (pixel - n * PQ);
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const int m = m0 + ty + 16 * i;
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
    REAL* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,     \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,      \
    int has_bias, int relu
#define FPROP_ARGS                                                                            \
    x, w, bias, y, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, \
    groups, has_bias, relu

// grid (ceil(N*P*Q / BN), ceil((K/G) / BM), G), block 256; `bias` is never read when has_bias == 0
extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, 2) conv2d_fprop_large(FPROP_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * 16 * LARGE_T];
    __shared__ REAL smem_b[2 * BK * 16 * LARGE_T];
    fprop_tile<LARGE_T>(smem_a, smem_b, FPROP_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, SMALL_BLOCKS) conv2d_fprop_small(FPROP_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * 16 * SMALL_T];
    __shared__ REAL smem_b[2 * BK * 16 * SMALL_T];
    fprop_tile<SMALL_T>(smem_a, smem_b, FPROP_ARGS);
}
