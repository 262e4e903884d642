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
//   filter comes as (K, R, S, C/G), transposed and rounded to TF32 by the launcher, so the A loader
//   reads 8 consecutive channels of a filter row per thread (two 16-byte loads, two 16-byte
//   shared stores). The B loader: 128 threads along the pixels, 8 channels each.
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

    // A loader: filter row a_m, channels a_c .. a_c + 7 of the step (two 16-byte loads when the
    // filter rows are 16-byte aligned and the step is full); rows past K/G read as zero
    const int a_m = tid >> 1, a_c = (tid & 1) * 8;
    const bool a_row_ok = m0 + a_m < Kg;
    const bool a_vector = (Cg & 3) == 0;
    const float* w_row = w_rsc + (unsigned)((g * Kg + (a_row_ok ? m0 + a_m : 0)) * R * S * Cg) + a_c;

    // B loader: pixel column b_n, channels b_c + 2*j; the pixel is decoded once
    const int b_n = tid % TC_BN, b_c = tid / TC_BN;
    const int pixel = n0 + b_n;
    const bool pixel_ok = pixel < NPQ;
    const int clamped = pixel_ok ? pixel : NPQ - 1;
    const int n = clamped / PQ, pq = clamped - n * PQ;
    const int p = pq / Q, q = pq - p * Q;
    const int h_origin = p * stride_h - pad_h, w_origin = q * stride_w - pad_w;
    const int x_image = (n * C + g * Cg + b_c) * HW;
    unsigned int b_channel[TC_B_LOADS];       // offsets of channels b_c + 2*j from channel b_c
#pragma unroll
    for (int j = 0; j < TC_B_LOADS; ++j) b_channel[j] = (unsigned)(2 * j * HW);

    // the step's position in the (r, s, c) reduction, advanced with carries: no div/mod per step
    int r = 0, s = 0, c0 = 0, tap_offset = 0;   // tap_offset = (r*S + s)*Cg
    float a_next[8], b_next[TC_B_LOADS];
    auto fetch = [&](int) {
        const float* w_step = w_row + tap_offset + c0;
        const int channels_a = Cg - c0 - a_c;   // channel a_c + i exists while i < channels_a
        if (a_vector && a_row_ok && channels_a >= 8) {
            const float4 lo = *(const float4*)w_step, hi = *(const float4*)(w_step + 4);
            a_next[0] = lo.x; a_next[1] = lo.y; a_next[2] = lo.z; a_next[3] = lo.w;
            a_next[4] = hi.x; a_next[5] = hi.y; a_next[6] = hi.z; a_next[7] = hi.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) a_next[i] = a_row_ok && i < channels_a ? w_step[i] : 0.0f;
        }
        const int h = h_origin + r * dil_h, w = w_origin + s * dil_w;
        const bool inside = pixel_ok && (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        const unsigned int x_step = (unsigned)(x_image + c0 * HW + h * W + w);
        const int channels_b = Cg - c0 - b_c;   // channel b_c + 2*j exists while 2*j < channels_b
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j) b_next[j] = inside && 2 * j < channels_b ? x[x_step + b_channel[j]] : 0.0f;
        c0 += TC_BK;
        if (c0 >= Cg) {
            c0 = 0;
            tap_offset += Cg;
            if (++s == S) { s = 0; ++r; }
        }
    };
    // the filter comes rounded to TF32 by the launcher; the input is rounded here
    auto store = [&](int stage) {
        float* a_row = smem_a + stage * TC_A_STAGE + a_m * TC_A_PITCH + a_c;
        *(float4*)a_row = make_float4(a_next[0], a_next[1], a_next[2], a_next[3]);
        *(float4*)(a_row + 4) = make_float4(a_next[4], a_next[5], a_next[6], a_next[7]);
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
