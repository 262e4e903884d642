// Adaptive average and max pooling over NCHW, PyTorch's windows: output p of P along an axis of
// size H covers rows [floor(p*H/P), ceil((p+1)*H/P)); windows overlap where P does not divide H.
// The average's divisor is the window's area.
//
// Not a GEMM: every output (or input) pixel is independent; one thread per pixel, 256-thread
// blocks, the grid's x threads walk one (n, c) plane's pixels (consecutive threads on consecutive
// w: coalesced) and blockIdx.y strides over the planes (for_each_plane_pixel, common.cuh).
//  * adaptive_avg_pool_forward: the thread of output (p, q) sums its window row by row.
//  * adaptive_avg_pool_backward: a GATHER, no atomics: input pixel (h, w) adds dy/area of the
//    outputs whose windows contain it, p in [floor(h*P/H), ceil((h+1)*P/H) - 1] (same for q), in
//    increasing (p, q) order: deterministic.
//  * adaptive_max_pool_forward: the thread of output (p, q) scans its window row by row; a later
//    tap replaces the maximum only if strictly greater (the first maximum wins ties) or NaN (NaN
//    propagates, the last NaN's index kept), PyTorch's rule. Index = h*W + w in the plane.
//  * adaptive_max_pool_backward: the average's gather, adding dy of the windows whose index is
//    this pixel (no float atomics although windows overlap: deterministic).
// In-plane indices are int (the host refuses planes of 2^31 pixels or more); products such as
// p*H are taken in 64 bits; plane offsets are 64-bit. Sums and divisions are acc_t: float16
// adds in FP32 and rounds each output once.

#include "common.cuh"

// [start, end) of output o's window along an axis of `size` inputs and `outputs` outputs.
__device__ __forceinline__ int window_start(int o, int size, int outputs)
{
    return (int)(((long long)o * size) / outputs);
}

__device__ __forceinline__ int window_end(int o, int size, int outputs)
{
    return (int)(((long long)(o + 1) * size + outputs - 1) / outputs);
}

// The window of output `out` (p = out / Q, q = out % Q): rows [h0, h1), columns [w0, w1).
struct Window {
    int h0, h1, w0, w1;
};

__device__ __forceinline__ Window window_of(int out, int H, int W, int P, int Q)
{
    const int q = out % Q;
    const int p = out / Q;
    return Window{window_start(p, H, P), window_end(p, H, P), window_start(q, W, Q), window_end(q, W, Q)};
}

// The outputs whose windows hold input pixel `in` (h = in / W, w = in % W): p in [p_first, p_last],
// q in [q_first, q_last].
struct WindowsOver {
    int p_first, p_last, q_first, q_last;
};

__device__ __forceinline__ int first_window_over(int i, int size, int outputs)
{
    return (int)(((long long)i * outputs) / size);
}

__device__ __forceinline__ int last_window_over(int i, int size, int outputs)
{
    return (int)(((long long)(i + 1) * outputs + size - 1) / size) - 1;
}

__device__ __forceinline__ WindowsOver windows_over(int in, int H, int W, int P, int Q)
{
    const int w = in % W;
    const int h = in / W;
    return WindowsOver{first_window_over(h, H, P), last_window_over(h, H, P), first_window_over(w, W, Q),
                       last_window_over(w, W, Q)};
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_avg_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int H, int W, int P,
                          int Q)
{
    for_each_plane_pixel(planes, P * Q, [&](long long plane, int out) {
        const REAL* xp = x + plane * (H * W);
        const Window win = window_of(out, H, W, P, Q);
        acc_t sum = (acc_t)0;
        for (int h = win.h0; h < win.h1; ++h)
            for (int w = win.w0; w < win.w1; ++w)
                sum += to_acc(xp[h * W + w]);
        y[plane * (P * Q) + out] = to_real(sum / (acc_t)((long long)(win.h1 - win.h0) * (win.w1 - win.w0)));
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_avg_pool_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int H, int W,
                           int P, int Q)
{
    for_each_plane_pixel(planes, H * W, [&](long long plane, int in) {
        const REAL* dyp = dy + plane * (P * Q);
        const WindowsOver over = windows_over(in, H, W, P, Q);
        acc_t sum = (acc_t)0;
        for (int p = over.p_first; p <= over.p_last; ++p) {
            const int rows = window_end(p, H, P) - window_start(p, H, P);
            for (int q = over.q_first; q <= over.q_last; ++q) {
                const int cols = window_end(q, W, Q) - window_start(q, W, Q);
                sum += to_acc(dyp[p * Q + q]) / (acc_t)((long long)rows * cols);
            }
        }
        dx[plane * (H * W) + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                          long long planes, int H, int W, int P, int Q)
{
    for_each_plane_pixel(planes, P * Q, [&](long long plane, int out) {
        const REAL* xp = x + plane * (H * W);
        const Window win = window_of(out, H, W, P, Q);
        int best_index = win.h0 * W + win.w0;   // every window holds a tap: the first seeds the maximum
        acc_t best = to_acc(xp[best_index]);
        for (int h = win.h0; h < win.h1; ++h)
            for (int w = win.w0; w < win.w1; ++w) {
                const acc_t v = to_acc(xp[h * W + w]);
                if (v > best || v != v) {
                    best = v;
                    best_index = h * W + w;
                }
            }
        y[plane * (P * Q) + out] = to_real(best);
        indices[plane * (P * Q) + out] = best_index;
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                           long long planes, int H, int W, int P, int Q)
{
    for_each_plane_pixel(planes, H * W, [&](long long plane, int in) {
        const REAL* dyp = dy + plane * (P * Q);
        const int* index_plane = indices + plane * (P * Q);
        const WindowsOver over = windows_over(in, H, W, P, Q);
        acc_t sum = (acc_t)0;
        for (int p = over.p_first; p <= over.p_last; ++p)
            for (int q = over.q_first; q <= over.q_last; ++q)
                if (index_plane[p * Q + q] == in)
                    sum += to_acc(dyp[p * Q + q]);
        dx[plane * (H * W) + in] = to_real(sum);
    });
}
