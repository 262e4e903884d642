// Convolutions on tensor cores: TF32 operands, FP32 accumulation (mma.sync m16n8k8, sm_80 and
// newer), on the 128 x 128 x 16 block tile of mma_tile.cuh. NCHW float32 tensors: input x
// (N, C, H, W), output y (N, K, P, Q), G groups. The input gradient (dgrad) of a stride-1
// convolution is the fprop below run on dy with the flipped, transposed filter (the launcher
// prepares it); strided dgrad stays on the SIMT kernels of conv2d_dgrad.cu.
//
// fprop, per group g:  y_g[M x Ngemm] = w_g[M x Kgemm] * im2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*P*Q (output pixels), Kgemm = R*S*(C/G) ordered (r, s, c):
//   one step covers 16 channels of a single filter tap, so a pixel's tap offset and bounds test
//   are worked out once per step and its channels follow at +H*W (no div/mod per element). The
//   filter comes as (K, R, S, C/G) (transposed by the launcher), so the A loader reads it
//   contiguously: 16 threads per filter row. The B loader: 128 threads along the pixels.
//
// wgrad, per group g:  dw_g[M x Ngemm] = dy_g[M x Kgemm] * im2col(x_g)^T[Kgemm x Ngemm]
//   M = K/G, Ngemm = (C/G)*R*S (the filter's (c, r, s), as dw is laid out), Kgemm = N*P*Q, split
//   into `splits` chunks of `chunk` pixels (grid.z = splits * G); split z writes its partial dw to
//   out + z * K*(C/G)*R*S and the launcher sums the partials in a fixed order. The A loader reads
//   dy along the pixels (16 threads per channel row); the B loader keeps one (c, r, s) column per
//   thread and walks its pixels with carries.
//
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements.

#include "mma_tile.cuh"

extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) conv2d_fprop_tf32(
    const float* __restrict__ x, const float* __restrict__ w_rsc, const float* __restrict__ bias,
    float* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int has_bias, int relu)
{
    __shared__ __align__(16) float smem_a[2 * TC_A_STAGE];
    __shared__ __align__(16) float smem_b[2 * TC_B_STAGE];

    const int tid = threadIdx.x, g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, NPQ = N * PQ;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int channel_steps = (Cg + TC_BK - 1) / TC_BK;

    // A loader: channel a_c of the step, filter rows a_m + 16*i
    const int a_c = tid % TC_BK, a_m = tid / TC_BK;
    const int filter_row = R * S * Cg;
    const int a_first = (g * Kg + m0 + a_m) * filter_row;

    // B loader: pixel column b_n, channels b_c + 2*j; the pixel is decoded once
    const int b_n = tid % TC_BN, b_c = tid / TC_BN;
    const int pixel = n0 + b_n;
    const bool pixel_ok = pixel < NPQ;
    const int clamped = pixel_ok ? pixel : NPQ - 1;
    const int n = clamped / PQ, pq = clamped - n * PQ;
    const int p = pq / Q, q = pq - p * Q;
    const int h_origin = p * stride_h - pad_h, w_origin = q * stride_w - pad_w;
    const int x_image = (n * C + g * Cg) * HW;

    float a_next[TC_A_LOADS], b_next[TC_B_LOADS];
    auto fetch = [&](int step) {
        const int tap = step / channel_steps;
        const int c0 = (step - tap * channel_steps) * TC_BK;
        const int r = tap / S, s = tap - r * S;
        const int c_a = c0 + a_c;
#pragma unroll
        for (int i = 0; i < TC_A_LOADS; ++i) {
            const bool ok = m0 + a_m + 16 * i < Kg && c_a < Cg;
            a_next[i] = ok ? w_rsc[a_first + 16 * i * filter_row + tap * Cg + c_a] : 0.0f;
        }
        const int h = h_origin + r * dil_h, w = w_origin + s * dil_w;
        const bool inside = pixel_ok && (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        const int offset = x_image + h * W + w;
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j) {
            const int c = c0 + b_c + 2 * j;
            b_next[j] = inside && c < Cg ? x[offset + c * HW] : 0.0f;
        }
    };
    auto store = [&](int stage) {
#pragma unroll
        for (int i = 0; i < TC_A_LOADS; ++i)
            smem_a[stage * TC_A_STAGE + (a_m + 16 * i) * TC_A_PITCH + a_c] = tf32_rounded(a_next[i]);
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j)
            smem_b[stage * TC_B_STAGE + (b_c + 2 * j) * TC_B_PITCH + b_n] = tf32_rounded(b_next[j]);
    };

    MmaTile tile;
    tile.init();
    mma_main_loop(tile, smem_a, smem_b, R * S * channel_steps, fetch, store);

    tile.for_each([&](int row, int col, float v) {
        const int m = m0 + row, pixel_out = n0 + col;
        if (m >= Kg || pixel_out >= NPQ) return;
        const int k = g * Kg + m;
        const int image = pixel_out / PQ;
        if (has_bias) v += bias[k];
        if (relu && v < 0.0f) v = 0.0f;   // written so that NaN passes through
        y[(image * K + k) * PQ + pixel_out - image * PQ] = v;
    });
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) conv2d_wgrad_tf32(
    const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
    int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int splits, int chunk)
{
    __shared__ __align__(16) float smem_a[2 * TC_A_STAGE];
    __shared__ __align__(16) float smem_b[2 * TC_B_STAGE];

    const int tid = threadIdx.x;
    const int split = blockIdx.z / groups, g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups, RS = R * S, CRS = Cg * RS;
    const int HW = H * W, PQ = P * Q, NPQ = N * PQ;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int first = split * chunk;
    const int last = min(first + chunk, NPQ);

    // A loader (dy): pixel a_k of the step, output-channel rows a_m + 16*i
    const int a_k = tid % TC_BK, a_m = tid / TC_BK;
    const int dy_channel = g * Kg + m0 + a_m;

    // B loader (x): filter column b_n = (c, r, s), decoded once; pixels b_k + 2*j of the step
    const int b_n = tid % TC_BN, b_k = tid / TC_BN;
    const int column = n0 + b_n;
    const bool column_ok = column < CRS;
    const int crs = column_ok ? column : CRS - 1;
    const int c = crs / RS, r = (crs - c * RS) / S, s = crs - c * RS - r * S;
    const int tap_h = r * dil_h - pad_h, tap_w = s * dil_w - pad_w;
    const int x_channel = (g * Cg + c) * HW;

    float a_next[TC_A_LOADS], b_next[TC_B_LOADS];
    auto fetch = [&](int step) {
        const int k0 = first + step * TC_BK;
        const int pixel_a = k0 + a_k;
        const int image_a = pixel_a / PQ;
        const int dy_pixel = image_a * K * PQ + pixel_a - image_a * PQ;
#pragma unroll
        for (int i = 0; i < TC_A_LOADS; ++i) {
            const bool ok = pixel_a < last && m0 + a_m + 16 * i < Kg;
            a_next[i] = ok ? dy[dy_pixel + (dy_channel + 16 * i) * PQ] : 0.0f;
        }
        // pixels b_k, b_k + 2, ...: decode the first, then step with carries
        int pixel_b = k0 + b_k;
        int image = pixel_b / PQ, pq = pixel_b - image * PQ;
        int p = pq / Q, q = pq - p * Q;
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j) {
            const int h = p * stride_h + tap_h, w = q * stride_w + tap_w;
            const bool ok = column_ok && pixel_b < last && (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
            b_next[j] = ok ? x[image * C * HW + x_channel + h * W + w] : 0.0f;
            pixel_b += 2;
            q += 2;
            while (q >= Q) { q -= Q; if (++p == P) { p = 0; ++image; } }
        }
    };
    auto store = [&](int stage) {
#pragma unroll
        for (int i = 0; i < TC_A_LOADS; ++i)
            smem_a[stage * TC_A_STAGE + (a_m + 16 * i) * TC_A_PITCH + a_k] = tf32_rounded(a_next[i]);
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j)
            smem_b[stage * TC_B_STAGE + (b_k + 2 * j) * TC_B_PITCH + b_n] = tf32_rounded(b_next[j]);
    };

    MmaTile tile;
    tile.init();
    mma_main_loop(tile, smem_a, smem_b, (last - first + TC_BK - 1) / TC_BK, fetch, store);

    float* partial = out + (long long)split * K * CRS;
    tile.for_each([&](int row, int col, float v) {
        const int m = m0 + row, filter_column = n0 + col;
        if (m < Kg && filter_column < CRS) partial[(g * Kg + m) * CRS + filter_column] = v;
    });
}
