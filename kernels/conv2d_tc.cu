// conv2d forward (fprop) on tensor cores: TF32 operands, FP32 accumulation (mma.sync m16n8k8,
// sm_80 and newer); NCHW input x (N, C, H, W) float32, output y (N, K, P, Q), G groups.
//
// GEMM view, per group g:  y_g[M x Ngemm] = w_g[M x Kgemm] * im2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*P*Q (output pixels), Kgemm = R*S*(C/G) ordered (r, s, c):
//   one BK-deep step covers BK channels of a single filter tap, so a pixel's tap offset and bounds
//   test are worked out once per step and its channels follow at +H*W (no div/mod per element).
//   The filter comes transposed to (K, R, S, C/G) (the launcher makes that copy once per call),
//   so the A loader reads it contiguously along the reduction. Channels past C/G read as zero.
//
// Tiling: 256 threads, block tile 128 x 128 x 16; the 8 warps form 2 (M) x 4 (N), each a 64 x 32
//   warp tile of 4 x 4 mma tiles (16 x 8). Operands are rounded to TF32 (cvt.rna) once, when they
//   are stored to shared memory, so fragments load as plain words. Shared tiles: A as [m][k] with
//   pitch BK + 4 and B as [k][n] with pitch BN + 8, so each fragment load (lanes = 8 groups x 4)
//   hits 32 different banks. Two stages: the next step is fetched into registers while the
//   current one is multiplied; one barrier per step.
// Loaders: A by 16 threads per filter row (a warp reads 2 rows x 64 contiguous bytes), B by 128
//   threads along the pixels (consecutive output pixels, consecutive addresses at stride 1).
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements.

#include "common.cuh"

#define TC_THREADS 256
#define TC_BM 128
#define TC_BN 128
#define TC_BK 16
#define TC_A_PITCH (TC_BK + 4)
#define TC_B_PITCH (TC_BN + 8)
#define TC_A_LOADS (TC_BM * TC_BK / TC_THREADS)   // 8 filter values per thread and step
#define TC_B_LOADS (TC_BK * TC_BN / TC_THREADS)   // 8 input values per thread and step

static __device__ __forceinline__ float tf32_rounded(float v) { return __uint_as_float(tf32_from_float(v)); }

extern "C" __global__ void __launch_bounds__(TC_THREADS, 1) conv2d_fprop_tf32(
    const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
    float* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,
    int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,
    int has_bias, int relu)
{
    __shared__ __align__(16) float smem_a[2][TC_BM * TC_A_PITCH];
    __shared__ __align__(16) float smem_b[2][TC_BK * TC_B_PITCH];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = lane >> 2, in_group = lane & 3;
    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, NPQ = N * PQ;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int channel_steps = (Cg + TC_BK - 1) / TC_BK;
    const int steps = R * S * channel_steps;

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
            a_next[i] = ok ? wt[a_first + 16 * i * filter_row + tap * Cg + c_a] : 0.0f;
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
            smem_a[stage][(a_m + 16 * i) * TC_A_PITCH + a_c] = tf32_rounded(a_next[i]);
#pragma unroll
        for (int j = 0; j < TC_B_LOADS; ++j)
            smem_b[stage][(b_c + 2 * j) * TC_B_PITCH + b_n] = tf32_rounded(b_next[j]);
    };

    float acc[4][4][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

    const int warp_row = (warp >> 2) * 64, warp_col = (warp & 3) * 32;
    fetch(0);
    store(0);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        const int stage = step & 1;
        if (step + 1 < steps) fetch(step + 1);
        const float* a_tile = smem_a[stage];
        const float* b_tile = smem_b[stage];
#pragma unroll
        for (int k8 = 0; k8 < TC_BK; k8 += 8) {
            unsigned int fa[4][4], fb[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {   // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
                const float* row = a_tile + (warp_row + mt * 16 + group) * TC_A_PITCH + k8 + in_group;
                fa[mt][0] = __float_as_uint(row[0]);
                fa[mt][1] = __float_as_uint(row[8 * TC_A_PITCH]);
                fa[mt][2] = __float_as_uint(row[4]);
                fa[mt][3] = __float_as_uint(row[8 * TC_A_PITCH + 4]);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {   // b0 (t, g), b1 (t+4, g)
                const float* col = b_tile + (k8 + in_group) * TC_B_PITCH + warp_col + nt * 8 + group;
                fb[nt][0] = __float_as_uint(col[0]);
                fb[nt][1] = __float_as_uint(col[4 * TC_B_PITCH]);
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) mma_tf32_m16n8k8(acc[mt][nt], fa[mt], fb[nt]);
        }
        if (step + 1 < steps) store(stage ^ 1);
        __syncthreads();
    }

    // epilogue: c0, c1 at (g, 2t + 0/1), c2, c3 at (g + 8, 2t + 0/1) of each mma tile
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + warp_row + mt * 16 + group + (i >> 1) * 8;
            if (m >= Kg) continue;
            const int k = g * Kg + m;
            const float b = has_bias ? bias[k] : 0.0f;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const int col = n0 + warp_col + nt * 8 + in_group * 2 + (i & 1);
                if (col >= NPQ) continue;
                const int image = col / PQ, pixel_in_image = col - image * PQ;
                float v = acc[mt][nt][i] + b;
                if (relu && v < 0.0f) v = 0.0f;   // written so that NaN passes through
                y[(image * K + k) * PQ + pixel_in_image] = v;
            }
        }
}
