// Max and average pooling over NCHW, forward and backward, PyTorch's rules.
//
// Not a GEMM: every output (or input) pixel is independent, so each kernel is one thread per
// element (256-thread blocks, grid-stride loops, see below), with the window
// loop inside the thread. Consecutive threads own consecutive w (q), so loads and stores of a
// row are coalesced; the window loop reads a plane that stays in L1/L2.
//
// Geometry: x (N, C, H, W) -> y (N, C, P, Q); window of output (p, q) starts at
// (p*sh - ph, q*sw - pw) with taps every (dh, dw). Sizes P, Q come from the host (ceil_mode
// already applied there).
//  * max_pool_forward: taps in the padding are skipped (-inf padding). The first in-bounds tap
//    seeds the maximum, a later tap replaces it only if strictly greater (first max wins ties) or
//    NaN (NaN propagates; like PyTorch the last NaN's index is kept). A window with every tap in
//    the padding (possible with dilation) gives -inf and index -1. Index = h*W + w in the plane.
//  * max_pool_backward: a GATHER, no atomics: input pixel (h, w) loops over the outputs whose
//    window can contain it (p in [ceil((h+ph-(kh-1)dh)/sh), floor((h+ph)/sh)], same for q) in
//    increasing (p, q) order and adds dy where indices == h*W + w. Deterministic; an index of -1
//    matches no pixel, so that window's gradient goes nowhere.
//  * avg_pool_forward/backward (no dilation): the window [p*sh-ph, min(p*sh-ph+kh, H+ph)) is
//    clipped to the input; the divisor is divisor_override when it is non-zero, else the
//    unclipped-but-padding-bounded size when count_include_pad, else the clipped size (PyTorch's
//    formula; the product of the two window extents is taken in 64 bits: 46341^2 overflows an
//    int). Backward gathers dy/divisor over the windows containing the pixel, in increasing (p, q)
//    order.
// Grid: blockIdx.x walks the pixels of one (n, c) plane, blockIdx.y strides over the planes, so
// any plane count fits gridDim.y and pixel decodes are 32-bit divisions (a 64-bit division is a
// called subroutine whose register saves spill). In-plane indices are int (the host refuses
// planes of 2^31 pixels or more); plane offsets are 64-bit. Window positions are int too: the
// host refuses geometries where size + 2*pad + (kernel-1)*dilation + stride reaches 2^31, which
// bounds every window start, tap and end computed here.
// Values are compared and summed in acc_t (to_acc / to_real, common.cuh): a float16 sum runs in
// FP32 and each output is rounded once.

#include "common.cuh"

// Loop heads of every kernel: `plane` strides over the (n, c) planes along grid y, and
// GRID_STRIDE_LOOP walks one plane's pixels along grid x.
#define FOR_EACH_PLANE(plane, planes) \
    for (long long plane = blockIdx.y; plane < (planes); plane += gridDim.y)

// Kernel parameters of the pooling geometry: the planes, input H x W, output P x Q, window
// kh x kw, strides sh, sw and paddings ph, pw.
#define POOL_WINDOW_PARAMS \
    long long planes, int H, int W, int P, int Q, int kh, int kw, int sh, int sw, int ph, int pw

// Largest output o < outputs whose window starts at or before pos.
__device__ __forceinline__ int last_window(int pos, int pad, int stride, int outputs)
{
    const int o = (pos + pad) / stride;
    return o < outputs - 1 ? o : outputs - 1;
}

// Smallest output o >= 0 whose window [o*stride - pad, o*stride - pad + (kernel-1)*dilation] reaches pos.
__device__ __forceinline__ int first_window(int pos, int pad, int kernel, int stride, int dilation)
{
    const int num = pos + pad - (kernel - 1) * dilation;
    return num <= 0 ? 0 : (num + stride - 1) / stride;
}

// The outputs whose window can contain input pixel (h, w): p in [p_first, p_last], q in
// [q_first, q_last] (empty where first > last).
struct WindowsOver {
    int p_first, p_last, q_first, q_last;
};

__device__ __forceinline__ WindowsOver windows_over(int h, int w, int P, int Q, int kh, int kw, int sh, int sw,
                                                    int ph, int pw, int dh, int dw)
{
    WindowsOver o;
    o.p_first = first_window(h, ph, kh, sh, dh);
    o.q_first = first_window(w, pw, kw, sw, dw);
    o.p_last = last_window(h, ph, sh, P);
    o.q_last = last_window(w, pw, sw, Q);
    return o;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
max_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                 POOL_WINDOW_PARAMS, int dh, int dw)
{
    const int plane_inputs = H * W;
    const int plane_outputs = P * Q;
    FOR_EACH_PLANE(plane, planes) GRID_STRIDE_LOOP(flat, plane_outputs) {
        const int out = (int)flat;
        const int q = out % Q;
        const int p = out / Q;
        const REAL* xp = x + plane * plane_inputs;
        const int h0 = p * sh - ph;
        const int w0 = q * sw - pw;
        acc_t best = REAL_NEG_INF;
        int best_index = -1;
        for (int r = 0; r < kh; ++r) {
            const int h = h0 + r * dh;
            if (h < 0 || h >= H)
                continue;
            for (int s = 0; s < kw; ++s) {
                const int w = w0 + s * dw;
                if (w < 0 || w >= W)
                    continue;
                const int index = h * W + w;
                const acc_t v = to_acc(xp[index]);
                if (best_index < 0 || v > best || v != v) {
                    best = v;
                    best_index = index;
                }
            }
        }
        y[plane * plane_outputs + out] = to_real(best);
        indices[plane * plane_outputs + out] = best_index;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
max_pool_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                  POOL_WINDOW_PARAMS, int dh, int dw)
{
    const int plane_inputs = H * W;
    const int plane_outputs = P * Q;
    FOR_EACH_PLANE(plane, planes) GRID_STRIDE_LOOP(flat, plane_inputs) {
        const int in = (int)flat;
        const int w = in % W;
        const int h = in / W;
        const WindowsOver windows = windows_over(h, w, P, Q, kh, kw, sh, sw, ph, pw, dh, dw);
        const long long plane_offset = plane * plane_outputs;
        const int* index_plane = indices + plane_offset;
        const REAL* dy_plane = dy + plane_offset;
        acc_t sum = (acc_t)0;
        for (int p = windows.p_first; p <= windows.p_last; ++p) {
            for (int q = windows.q_first; q <= windows.q_last; ++q) {
                if (index_plane[p * Q + q] == in)
                    sum += to_acc(dy_plane[p * Q + q]);
            }
        }
        dx[plane * plane_inputs + in] = to_real(sum);
    }
}

// Clipped window [start, end) of output o along one axis and its divisor factor (PyTorch's
// avg_pool2d): `padded` spans up to size + pad, `clipped` is the part inside the input.
struct AvgSpan {
    int start, end, padded;
};

__device__ __forceinline__ AvgSpan avg_span(int o, int size, int kernel, int stride, int pad)
{
    AvgSpan span;
    const int start = o * stride - pad;
    const int end = start + kernel < size + pad ? start + kernel : size + pad;
    span.padded = end - start;
    span.start = start > 0 ? start : 0;
    span.end = end < size ? end : size;
    return span;
}

__device__ __forceinline__ acc_t avg_divisor(const AvgSpan& hs, const AvgSpan& ws, int count_include_pad,
                                            acc_t divisor_override)
{
    if (divisor_override != (acc_t)0)
        return divisor_override;
    return count_include_pad ? (acc_t)((long long)hs.padded * ws.padded)
                             : (acc_t)((long long)(hs.end - hs.start) * (ws.end - ws.start));
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
avg_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y,
                 POOL_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    const int plane_inputs = H * W;
    const int plane_outputs = P * Q;
    FOR_EACH_PLANE(plane, planes) GRID_STRIDE_LOOP(flat, plane_outputs) {
        const int out = (int)flat;
        const int q = out % Q;
        const int p = out / Q;
        const AvgSpan hs = avg_span(p, H, kh, sh, ph);
        const AvgSpan ws = avg_span(q, W, kw, sw, pw);
        if (hs.start >= hs.end || ws.start >= ws.end) {
            y[plane * plane_outputs + out] = to_real((acc_t)0);   // window wholly in the padding: PyTorch writes 0
            continue;
        }
        const REAL* xp = x + plane * plane_inputs;
        acc_t sum = (acc_t)0;
        for (int h = hs.start; h < hs.end; ++h)
            for (int w = ws.start; w < ws.end; ++w)
                sum += to_acc(xp[h * W + w]);
        y[plane * plane_outputs + out] = to_real(sum / avg_divisor(hs, ws, count_include_pad, divisor_override));
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
avg_pool_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                  POOL_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    const int plane_inputs = H * W;
    const int plane_outputs = P * Q;
    FOR_EACH_PLANE(plane, planes) GRID_STRIDE_LOOP(flat, plane_inputs) {
        const int in = (int)flat;
        const int w = in % W;
        const int h = in / W;
        const WindowsOver windows = windows_over(h, w, P, Q, kh, kw, sh, sw, ph, pw, 1, 1);
        const REAL* dyp = dy + plane * plane_outputs;
        acc_t sum = (acc_t)0;
        for (int p = windows.p_first; p <= windows.p_last; ++p) {
            const AvgSpan hs = avg_span(p, H, kh, sh, ph);
            if (h < hs.start || h >= hs.end)
                continue;
            for (int q = windows.q_first; q <= windows.q_last; ++q) {
                const AvgSpan ws = avg_span(q, W, kw, sw, pw);
                if (w < ws.start || w >= ws.end)
                    continue;
                sum += to_acc(dyp[p * Q + q]) / avg_divisor(hs, ws, count_include_pad, divisor_override);
            }
        }
        dx[plane * plane_inputs + in] = to_real(sum);
    }
}
