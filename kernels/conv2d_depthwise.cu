// Depthwise convolution (groups == C: one input channel per group, K = C * multiplier output
// channels; output channel k reads input channel k / multiplier), forward and both gradients.
//
// Not a GEMM: as an implicit GEMM each group would have M = multiplier, Kgemm = R*S, which leaves
// a 128x128 tile almost idle. Direct kernels instead, with the thread grid over the output of
// each pass so that no two threads write one element:
//  * conv2d_depthwise_fprop: one thread per y[n, k, p, q] (consecutive threads on consecutive q,
//    so loads of x and stores of y coalesce), R*S taps in registers; fused bias and ReLU.
//  * conv2d_depthwise_dgrad: one thread per dx[n, c, h, w], summing over the multiplier's output
//    channels and only the taps r = r0 + j*period that hit an output pixel (r*dil = h + pad
//    (mod stride)): the zero-inserted positions of a strided convolution are never visited.
//  * conv2d_depthwise_wgrad: dw[k, 0, r, s] is a reduction over N*P*Q. grid (K*R*S, splits):
//    thread t of split z sums the pixels t + z*256 + i*(256*splits) (stepping the (n, p, q)
//    decode with carries, no division per element) and writes that partial to
//    partial[k*R*S + r*S + s][z*256 + t]; the launcher folds the partials in a fixed order
//    (reduce.channel_sum). No atomics: bit-identical run to run.
//
// Sums are acc_t (common.cuh): float16 inputs are multiplied and summed in FP32, each output
// rounded once; the wgrad partials stay FP32 for the fixed-order sum.
//
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements and spatial
// extents of 2^28 or more. The thread index is formed in 64 bits: the grid's last block may reach
// past 2^31 - 1 although every element index fits in an int.

#include "common.cuh"
#include "taps.cuh"

// grid (ceil(N*K*P*Q / 256)), block 256; `bias` is never read when has_bias == 0
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
conv2d_depthwise_fprop(const REAL* __restrict__ x, const REAL* __restrict__ w,
                       const REAL* __restrict__ bias, REAL* __restrict__ y,
                       int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                       int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
                       int has_bias, int relu)
{
    const long long thread = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    if (thread >= (long long)N * K * P * Q) return;
    const int index = (int)thread;
    const int q = index % Q, p = (index / Q) % P, nk = index / (P * Q);
    const int k = nk % K, n = nk / K;
    const int c = k / (K / C);
    const REAL* x_plane = x + (n * C + c) * H * W;
    const REAL* w_filter = w + k * R * S;
    const int h0 = p * stride_h - pad_h, w0 = q * stride_w - pad_w;
    acc_t sum = (acc_t)0;
    for (int r = 0; r < R; ++r) {
        const int h = h0 + r * dil_h;
        if ((unsigned)h >= (unsigned)H) continue;
        for (int s = 0; s < S; ++s) {
            const int wc = w0 + s * dil_w;
            if ((unsigned)wc < (unsigned)W) sum += to_acc(x_plane[h * W + wc]) * to_acc(w_filter[r * S + s]);
        }
    }
    if (has_bias) sum += to_acc(bias[k]);
    if (relu && sum < (acc_t)0) sum = (acc_t)0;   // written so that NaN passes through
    y[index] = to_real(sum);
}

// grid (ceil(N*C*H*W / 256)), block 256; period = stride / gcd(stride, dilation) per dimension
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
conv2d_depthwise_dgrad(const REAL* __restrict__ dy, const REAL* __restrict__ w, REAL* __restrict__ dx,
                       int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                       int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
                       int period_h, int period_w)
{
    const long long thread = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    if (thread >= (long long)N * C * H * W) return;
    const int index = (int)thread;
    const int wc = index % W, h = (index / W) % H, nc = index / (H * W);
    const int c = nc % C, n = nc / C;
    const int multiplier = K / C;
    int p_first = 0, q_first = 0;
    const int r_first = first_tap(h, pad_h, stride_h, dil_h, R, period_h, &p_first);
    const int s_first = first_tap(wc, pad_w, stride_w, dil_w, S, period_w, &q_first);
    acc_t sum = (acc_t)0;
    if (r_first >= 0 && s_first >= 0) {
        // period * dil can pass 2^31 (stride and dilation each up to 2^28); the quotient, dil / gcd, fits
        const int p_step = (int)((long long)period_h * dil_h / stride_h);
        const int q_step = (int)((long long)period_w * dil_w / stride_w);
        for (int m = 0; m < multiplier; ++m) {
            const int k = c * multiplier + m;
            const REAL* dy_plane = dy + (n * K + k) * P * Q;
            const REAL* w_filter = w + k * R * S;
            // p falls as r rises: taps past p < 0 cannot contribute
            for (int r = r_first, p = p_first; r < R && p >= 0; r += period_h, p -= p_step) {
                if (p >= P) continue;
                for (int s = s_first, q = q_first; s < S && q >= 0; s += period_w, q -= q_step)
                    if (q < Q) sum += to_acc(dy_plane[p * Q + q]) * to_acc(w_filter[r * S + s]);
            }
        }
    }
    dx[index] = to_real(sum);
}

// grid (K*R*S, splits), block 256; partial has shape (K*R*S, splits*256)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
conv2d_depthwise_wgrad(const REAL* __restrict__ dy, const REAL* __restrict__ x, acc_t* __restrict__ partial,
                       int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                       int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w)
{
    const int tap = blockIdx.x;
    const int k = tap / (R * S), r = (tap / S) % R, s = tap % S;
    const int c = k / (K / C);
    const int PQ = P * Q;
    const int threads = gridDim.y * BLOCK_THREADS;
    const int first = blockIdx.y * BLOCK_THREADS + threadIdx.x;
    // walk pixels first, first + threads, ... as (n, p, q), advancing with carries
    int n = first / PQ, p = (first % PQ) / Q, q = first % Q;
    const int step_n = threads / PQ, step_p = (threads % PQ) / Q, step_q = threads % Q;
    const int h_off = r * dil_h - pad_h, w_off = s * dil_w - pad_w;
    acc_t sum = (acc_t)0;
    while (n < N) {
        const int h = p * stride_h + h_off, wc = q * stride_w + w_off;
        if ((unsigned)h < (unsigned)H && (unsigned)wc < (unsigned)W)
            sum += to_acc(dy[((n * K + k) * P + p) * Q + q]) * to_acc(x[((n * C + c) * H + h) * W + wc]);
        q += step_q; p += step_p; n += step_n;
        if (q >= Q) { q -= Q; ++p; }
        if (p >= P) { p -= P; ++n; }
    }
    partial[tap * threads + first] = sum;
}
