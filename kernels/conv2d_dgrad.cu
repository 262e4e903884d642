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
// Tiling: as conv2d_fprop (same register budget and the same reasons): BK = 8, 256 threads as
// 16 x 16, each thread TM x TN outputs at strided rows/columns; fp32 128x128 (8x8) "large" and
// 64x64 (4x4) "small", fp64 64x64 and 32x32; double-buffered global -> shared loads, one
// barrier per K step. The reduction row (k, jr, js) of a thread is the same for its A and B
// loads and advances by BK with carries; its pixel columns are decoded once: no div/mod in the
// main loop.
//
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements.

#include "igemm.cuh"

// The taps of one dimension that reach the input pixels of `phase`: r = r0 + j*period for
// j < count, hitting output row p = i + base - j*step for the phase's i-th input row.
struct PhaseTaps {
    int first_pixel, pixels, r0, period, count, base, step;
};

__device__ __forceinline__ PhaseTaps phase_taps(int phase, int size, int taps, int stride, int pad,
                                                int dil)
{
    PhaseTaps t;
    int a = stride, b = dil;
    while (b) { const int rem = a % b; a = b; b = rem; }
    t.period = stride / a;
    t.first_pixel = ((phase - pad) % stride + stride) % stride;
    t.pixels = t.first_pixel < size ? (size - t.first_pixel + stride - 1) / stride : 0;
    t.r0 = -1;
    for (int r = 0; r < t.period && r < taps; ++r)
        if ((r * dil) % stride == phase) { t.r0 = r; break; }
    t.count = t.r0 < 0 ? 0 : (taps - t.r0 + t.period - 1) / t.period;
    t.base = t.r0 < 0 ? 0 : (t.first_pixel + pad - t.r0 * dil) / stride;   // exact division
    t.step = t.period * dil / stride;
    return t;
}

template <int T>
__device__ __forceinline__ void dgrad_tile(
    REAL* smem_a, REAL* smem_b,
    const REAL* __restrict__ dy, const REAL* __restrict__ w, REAL* __restrict__ dx,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups)
{
    const int BM = 16 * T, BN = 16 * T;
    const int A_LOADS = BM * BK / IGEMM_THREADS;   // per thread, rows ab_m + 32*i
    const int B_LOADS = BN * BK / IGEMM_THREADS;   // per thread, columns ab_m + 32*j

    const int phases = stride_h * stride_w;
    const int g = blockIdx.z / phases, phase = blockIdx.z - g * phases;
    const PhaseTaps th = phase_taps(phase / stride_w, H, R, stride_h, pad_h, dil_h);
    const PhaseTaps tw = phase_taps(phase % stride_w, W, S, stride_w, pad_w, dil_w);
    const int pixels_per_image = th.pixels * tw.pixels;
    const int Npix = N * pixels_per_image;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    if (n0 >= Npix) return;   // the grid is sized for the largest phase; uniform per block

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int Cg = C / groups, Kg = K / groups;
    const int taps = th.count * tw.count;
    const int Kgemm = Kg * taps;
    const int PQ = P * Q, HW = H * W, RS = R * S;

    // loaders: reduction row ab_k for both tiles; A rows (channels) and B columns (pixels) ab_m + 32*i
    const int ab_k = tid / 32, ab_m = tid % 32;
    int dy_image[B_LOADS], p_origin[B_LOADS], q_origin[B_LOADS];
#pragma unroll
    for (int j = 0; j < B_LOADS; ++j) {
        const int pixel = n0 + ab_m + 32 * j;
        if (pixel < Npix) {
            const int n = pixel / pixels_per_image, rest = pixel - n * pixels_per_image;
            const int i = rest / tw.pixels, iw = rest - i * tw.pixels;
            dy_image[j] = (n * K + g * Kg) * PQ;
            p_origin[j] = i + th.base;
            q_origin[j] = iw + tw.base;
        } else {
            dy_image[j] = 0;
            p_origin[j] = OUTSIDE;
            q_origin[j] = OUTSIDE;
        }
    }
    // (k, jr, js) of reduction row ab_k, and the carry steps that advance it by BK
    int k = 0, jr = 0, js = 0, step_k = 0, step_r = 0, step_s = 0;
    if (taps > 0) {
        k = ab_k / taps; jr = (ab_k % taps) / tw.count; js = ab_k % tw.count;
        step_k = BK / taps; step_r = (BK % taps) / tw.count; step_s = BK % tw.count;
    }
    // filter offset of tap (k, jr, js): w_base + k*Cg*R*S + jr*w_step_r + js*w_step_s
    const int w_base = g * Kg * Cg * RS + th.r0 * S + tw.r0;
    const int w_step_r = th.period * S, w_step_s = tw.period;

    // A from the filter taps (k, jr, js), B from dy at the output pixels those taps hit
    const auto fetch = [&](int, REAL (&a_next)[A_LOADS], REAL (&b_next)[B_LOADS]) {
        const bool row_ok = k < Kg;
        const int w_row = w_base + k * Cg * RS + jr * w_step_r + js * w_step_s;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int c = m0 + ab_m + 32 * i;
            a_next[i] = (row_ok && c < Cg) ? w[w_row + c * RS] : (REAL)0;
        }
        const int dp = jr * th.step, dq = js * tw.step, k_off = k * PQ;
#pragma unroll
        for (int j = 0; j < B_LOADS; ++j) {
            const int p = p_origin[j] - dp, q = q_origin[j] - dq;
            b_next[j] = (row_ok && (unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q)
                            ? dy[dy_image[j] + k_off + p * Q + q] : (REAL)0;
        }
    };
    const auto advance = [&] {
        js += step_s; jr += step_r; k += step_k;
        if (js >= tw.count) { js -= tw.count; ++jr; }
        if (jr >= th.count) { jr -= th.count; ++k; }
    };
    REAL acc[T][T];
    igemm_main_loop<T, A_LOADS, B_LOADS>(acc, smem_a, smem_b, BM, BN, ab_k, ab_m, ab_k, ab_m, Kgemm, fetch,
                                         advance);

#pragma unroll
    for (int j = 0; j < T; ++j) {
        const int pixel = n0 + tx + 16 * j;
        if (pixel >= Npix) continue;
        const int n = pixel / pixels_per_image, rest = pixel - n * pixels_per_image;
        const int i = rest / tw.pixels, iw = rest - i * tw.pixels;
        REAL* dx_pixel = dx + (n * C + g * Cg) * HW + (th.first_pixel + i * stride_h) * W
                         + tw.first_pixel + iw * stride_w;
#pragma unroll
        for (int i = 0; i < T; ++i) {
            const int c = m0 + ty + 16 * i;
            if (c < Cg) dx_pixel[c * HW] = acc[i][j];
        }
    }
}

#define DGRAD_PARAMS                                                                          \
    const REAL* __restrict__ dy, const REAL* __restrict__ w, REAL* __restrict__ dx,           \
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,                            \
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups
#define DGRAD_ARGS                                                                            \
    dy, w, dx, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups

// grid (ceil(N * ceil(H/stride_h) * ceil(W/stride_w) / BN), ceil((C/G) / BM), G * stride_h * stride_w)
extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, 2) conv2d_dgrad_large(DGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * 16 * LARGE_T];
    __shared__ REAL smem_b[2 * BK * 16 * LARGE_T];
    dgrad_tile<LARGE_T>(smem_a, smem_b, DGRAD_ARGS);
}

extern "C" __global__ void __launch_bounds__(IGEMM_THREADS, SMALL_BLOCKS) conv2d_dgrad_small(DGRAD_PARAMS)
{
    __shared__ REAL smem_a[2 * BK * 16 * SMALL_T];
    __shared__ REAL smem_b[2 * BK * 16 * SMALL_T];
    dgrad_tile<SMALL_T>(smem_a, smem_b, DGRAD_ARGS);
}
