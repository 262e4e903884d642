// Max and average pooling over NCHW and NCDHW, forward and backward, PyTorch's rules.
//
// Not a GEMM: every output (or input) pixel is independent, so each kernel is one thread per
// element (256-thread blocks, the plane walk below), with the window
// loop inside the thread. Consecutive threads own consecutive w (q), so loads and stores of a
// row are coalesced; the window loop reads a plane that stays in L1/L2.
//
// Geometry: x (N, C, D, H, W) -> y (N, C, T, P, Q); window of output (t, p, q) starts at
// (t*sd - pd, p*sh - ph, q*sw - pw) with taps every (dd, dh, dw). Sizes T, P, Q come from the host
// (ceil_mode already applied there). One source for both ranks: the 2-D kernels (x (N, C, H, W))
// run the 3-D bodies with a depth of 1 (D = T = kd = sd = dd = 1, pd = 0) and VOLUME false, so the
// depth loop and decode fold away at compile time and their code is what it was before the depth.
// A "plane" is one (n, c) image or volume; in-plane indices are flat: (d*H + h)*W + w.
//  * max_pool_forward: taps in the padding are skipped (-inf padding). The first in-bounds tap
//    seeds the maximum, a later tap replaces it only if strictly greater (first max wins ties) or
//    NaN (NaN propagates; like PyTorch the last NaN's index is kept). A window with every tap in
//    the padding (possible with dilation) gives -inf and index -1. Index = flat position in the plane.
//  * max_pool_backward: a GATHER, no atomics: input pixel (d, h, w) loops over the outputs whose
//    window can contain it (p in [ceil((h+ph-(kh-1)dh)/sh), floor((h+ph)/sh)], same for t and q) in
//    increasing (t, p, q) order and adds dy where indices == its flat position. Deterministic; an
//    index of -1 matches no pixel, so that window's gradient goes nowhere.
//  * avg_pool_forward/backward (no dilation): the window [p*sh-ph, min(p*sh-ph+kh, H+ph)) is
//    clipped to the input; the divisor is divisor_override when it is non-zero, else the
//    unclipped-but-padding-bounded size when count_include_pad, else the clipped size (PyTorch's
//    formula; the product of the window extents is taken in 64 bits: 46341^2 overflows an
//    int). Backward gathers dy/divisor over the windows containing the pixel, in increasing
//    (t, p, q) order.
// Grid: for_each_plane_pixel (plane_walk.cuh; host: cnn_gpu.gpu._grid.plane_pixel_grid): planes of
// over half a block are walked by the grid's x threads, one plane a block row, blockIdx.y striding
// over the planes; smaller ones (ResNet's late 7x7, 4x4 and 2x2 maps) go BLOCK_THREADS / pixels to a
// block, thread t the pixel t % pixels of plane t / pixels of the block's group, where one plane a
// block left 207 to 252 of 256 threads idle. Any plane count fits gridDim.y and pixel decodes are
// 32-bit divisions (a 64-bit division is a called subroutine whose register saves spill). In-plane
// indices are int (the host refuses planes of 2^31 pixels or more); plane offsets are 64-bit. Window
// positions are int too: the host refuses geometries where size + 2*pad + (kernel-1)*dilation + stride
// reaches 2^31, which bounds every window start, tap and end computed here.
// Values are compared and summed in acc_t (to_acc / to_real, common.cuh): a float16 sum runs in
// FP32 and each output is rounded once.

#include "plane_walk.cuh"
#include "position3.cuh"

// Kernel parameters of the 2-D pooling geometry: the planes, input H x W, output P x Q, window
// kh x kw, strides sh, sw and paddings ph, pw.
#define POOL_WINDOW_PARAMS \
    long long planes, int H, int W, int P, int Q, int kh, int kw, int sh, int sw, int ph, int pw

// The 3-D one: input D x H x W, output T x P x Q, window kd x kh x kw, strides and paddings.
#define POOL3D_WINDOW_PARAMS                                                                          \
    long long planes, int D, int H, int W, int T, int P, int Q, int kd, int kh, int kw, int sd, int sh, \
        int sw, int pd, int ph, int pw

// The 2-D geometry as the 3-D bodies take it: a depth of 1, no depth padding.
#define POOL_WINDOW_AS_3D planes, 1, H, W, 1, P, Q, 1, kh, kw, 1, sh, sw, 0, ph, pw
#define POOL3D_WINDOW planes, D, H, W, T, P, Q, kd, kh, kw, sd, sh, sw, pd, ph, pw

// Resident blocks an SM each kernel asks of ptxas (__launch_bounds__; MIN_BLOCKS is 4), by dtype: the
// small-plane walk's per-thread planes (64-bit plane offsets in per-thread registers, where one plane a
// block row kept them in uniform ones) took up to 24 more registers. These keep every kernel at its
// earlier blocks an SM or above, 0 spills on sm_70..sm_90 with NVRTC 12.9 and 13.5, but where that
// spilled: the 3-D max backward float16/float32 runs 5 (from 6), the 3-D average backward
// float16/float32 4 (from 5), the 2-D one float64 4 (from 5 on sm_80..sm_89), the 2-D max backward
// float32 5 on sm_70 (from 6), and on sm_90 the 3-D max forward and the 2-D max backward
// float16/float32 6 (from 8). The backward gathers re-derive their pixel each plane (keep_in_register):
// held across a thread's planes, their window ranges took the registers of another block; the 2-D and
// 3-D max backward read through register_pointer plane pointers (one IMAD.WIDE a load; 2-D float32 6
// blocks where it ran 5 without them).
#define POOL_BLOCKS(half, single, double_) (REAL_IS_HALF ? half : REAL_IS_DOUBLE ? double_ : single)
#define MAX_FORWARD_BLOCKS 6
#if !REAL_IS_HALF && !REAL_IS_DOUBLE && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#define MAX_BACKWARD_BLOCKS 5   // float32 on sm_70: 6 spilled 96 bytes (NVRTC 12.9)
#else
#define MAX_BACKWARD_BLOCKS 6
#endif
#define MAX3D_BACKWARD_BLOCKS POOL_BLOCKS(5, 5, 6)
#define AVG_FORWARD_BLOCKS POOL_BLOCKS(6, 6, 5)
#define AVG3D_FORWARD_BLOCKS 5
#define AVG_BACKWARD_BLOCKS POOL_BLOCKS(6, 6, 4)

// *p in acc_t by the read-only path (LDG.CONSTANT), which a register_pointer's loads otherwise leave for
// generic ones (LD)
__device__ __forceinline__ acc_t load_acc(const REAL* p)
{
#if REAL_IS_HALF
    REAL v;
    v.bits = __ldg(&p->bits);
    return to_acc(v);
#else
    return to_acc(__ldg(p));
#endif
}

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

// The outputs along one axis whose window can contain input position pos: [first, last] (empty
// where first > last).
struct WindowsOver {
    int first, last;
};

__device__ __forceinline__ WindowsOver windows_over(int pos, int outputs, int kernel, int stride, int pad,
                                                    int dilation)
{
    return WindowsOver{first_window(pos, pad, kernel, stride, dilation), last_window(pos, pad, stride, outputs)};
}

template <bool VOLUME>
__device__ __forceinline__ void max_pool_forward_of(const REAL* __restrict__ x, REAL* __restrict__ y,
                                                    int* __restrict__ indices, POOL3D_WINDOW_PARAMS, int dd, int dh,
                                                    int dw)
{
    const int plane_inputs = D * H * W;
    const int plane_outputs = T * P * Q;
    for_each_plane_pixel(planes, plane_outputs, [&](long long plane, int out) {
        const Position3<VOLUME> o(out, P, Q);
        const REAL* xp = x + plane * plane_inputs;
        const int d0 = o.t * sd - pd;
        const int h0 = o.p * sh - ph;
        const int w0 = o.q * sw - pw;
        acc_t best = REAL_NEG_INF;
        int best_index = -1;
        for (int z = 0; z < kd; ++z) {
            const int d = d0 + z * dd;
            if (d < 0 || d >= D)
                continue;
            for (int r = 0; r < kh; ++r) {
                const int h = h0 + r * dh;
                if (h < 0 || h >= H)
                    continue;
                for (int s = 0; s < kw; ++s) {
                    const int w = w0 + s * dw;
                    if (w < 0 || w >= W)
                        continue;
                    const int index = (d * H + h) * W + w;
                    const acc_t v = to_acc(xp[index]);
                    if (best_index < 0 || v > best || v != v) {
                        best = v;
                        best_index = index;
                    }
                }
            }
        }
        y[plane * plane_outputs + out] = to_real(best);
        indices[plane * plane_outputs + out] = best_index;
    });
}

template <bool VOLUME>
__device__ __forceinline__ void max_pool_backward_of(const REAL* __restrict__ dy, const int* __restrict__ indices,
                                                     REAL* __restrict__ dx, POOL3D_WINDOW_PARAMS, int dd, int dh,
                                                     int dw)
{
    const int plane_inputs = D * H * W;
    const int plane_outputs = T * P * Q;
    for_each_plane_pixel(planes, plane_inputs, [&](long long plane, int walked) {
        const int in = keep_in_register(walked);
        const Position3<VOLUME> i(in, H, W);
        const WindowsOver ts = windows_over(i.t, T, kd, sd, pd, dd);
        const WindowsOver ps = windows_over(i.p, P, kh, sh, ph, dh);
        const WindowsOver qs = windows_over(i.q, Q, kw, sw, pw, dw);
        const long long plane_offset = plane * plane_outputs;
        const int* index_plane = register_pointer(indices + plane_offset);
        const REAL* dy_plane = register_pointer(dy + plane_offset);
        acc_t sum = (acc_t)0;
        for (int t = ts.first; t <= ts.last; ++t) {
            for (int p = ps.first; p <= ps.last; ++p) {
                for (int q = qs.first; q <= qs.last; ++q) {
                    const int out = (t * P + p) * Q + q;
                    if (__ldg(index_plane + out) == in)
                        sum += load_acc(dy_plane + out);
                }
            }
        }
        dx[plane * plane_inputs + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MAX_FORWARD_BLOCKS)
max_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                 POOL_WINDOW_PARAMS, int dh, int dw)
{
    max_pool_forward_of<false>(x, y, indices, POOL_WINDOW_AS_3D, 1, dh, dw);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MAX_BACKWARD_BLOCKS)
max_pool_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                  POOL_WINDOW_PARAMS, int dh, int dw)
{
    max_pool_backward_of<false>(dy, indices, dx, POOL_WINDOW_AS_3D, 1, dh, dw);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MAX_FORWARD_BLOCKS)
max_pool3d_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                   POOL3D_WINDOW_PARAMS, int dd, int dh, int dw)
{
    max_pool_forward_of<true>(x, y, indices, POOL3D_WINDOW, dd, dh, dw);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MAX3D_BACKWARD_BLOCKS)
max_pool3d_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                    POOL3D_WINDOW_PARAMS, int dd, int dh, int dw)
{
    max_pool_backward_of<true>(dy, indices, dx, POOL3D_WINDOW, dd, dh, dw);
}

// Clipped window [start, end) of output o along one axis and its divisor factor (PyTorch's
// avg_pool2d/3d): `padded` spans up to size + pad, `clipped` is the part inside the input.
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

__device__ __forceinline__ acc_t avg_divisor(const AvgSpan& ds, const AvgSpan& hs, const AvgSpan& ws,
                                            int count_include_pad, acc_t divisor_override)
{
    if (divisor_override != (acc_t)0)
        return divisor_override;
    return count_include_pad ? (acc_t)((long long)ds.padded * hs.padded * ws.padded)
                             : (acc_t)((long long)(ds.end - ds.start) * (hs.end - hs.start) * (ws.end - ws.start));
}

template <bool VOLUME>
__device__ __forceinline__ void avg_pool_forward_of(const REAL* __restrict__ x, REAL* __restrict__ y,
                                                    POOL3D_WINDOW_PARAMS, int count_include_pad,
                                                    acc_t divisor_override)
{
    const int plane_inputs = D * H * W;
    const int plane_outputs = T * P * Q;
    for_each_plane_pixel(planes, plane_outputs, [&](long long plane, int out) {
        const Position3<VOLUME> o(out, P, Q);
        const AvgSpan ds = avg_span(o.t, D, kd, sd, pd);
        const AvgSpan hs = avg_span(o.p, H, kh, sh, ph);
        const AvgSpan ws = avg_span(o.q, W, kw, sw, pw);
        if (ds.start >= ds.end || hs.start >= hs.end || ws.start >= ws.end) {
            y[plane * plane_outputs + out] = to_real((acc_t)0);   // window wholly in the padding: PyTorch writes 0
            return;
        }
        const REAL* xp = x + plane * plane_inputs;
        acc_t sum = (acc_t)0;
        for (int d = ds.start; d < ds.end; ++d)
            for (int h = hs.start; h < hs.end; ++h)
                for (int w = ws.start; w < ws.end; ++w)
                    sum += to_acc(xp[(d * H + h) * W + w]);
        y[plane * plane_outputs + out] = to_real(sum / avg_divisor(ds, hs, ws, count_include_pad, divisor_override));
    });
}

template <bool VOLUME>
__device__ __forceinline__ void avg_pool_backward_of(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                                                     POOL3D_WINDOW_PARAMS, int count_include_pad,
                                                     acc_t divisor_override)
{
    const int plane_inputs = D * H * W;
    const int plane_outputs = T * P * Q;
    for_each_plane_pixel(planes, plane_inputs, [&](long long plane, int walked) {
        const int in = keep_in_register(walked);
        const Position3<VOLUME> i(in, H, W);
        const WindowsOver ts = windows_over(i.t, T, kd, sd, pd, 1);
        const WindowsOver ps = windows_over(i.p, P, kh, sh, ph, 1);
        const WindowsOver qs = windows_over(i.q, Q, kw, sw, pw, 1);
        const REAL* dyp = dy + plane * plane_outputs;
        acc_t sum = (acc_t)0;
        for (int t = ts.first; t <= ts.last; ++t) {
            const AvgSpan ds = avg_span(t, D, kd, sd, pd);
            if (i.t < ds.start || i.t >= ds.end)
                continue;
            for (int p = ps.first; p <= ps.last; ++p) {
                const AvgSpan hs = avg_span(p, H, kh, sh, ph);
                if (i.p < hs.start || i.p >= hs.end)
                    continue;
                for (int q = qs.first; q <= qs.last; ++q) {
                    const AvgSpan ws = avg_span(q, W, kw, sw, pw);
                    if (i.q < ws.start || i.q >= ws.end)
                        continue;
                    sum += to_acc(dyp[(t * P + p) * Q + q]) /
                           avg_divisor(ds, hs, ws, count_include_pad, divisor_override);
                }
            }
        }
        dx[plane * plane_inputs + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, AVG_FORWARD_BLOCKS)
avg_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y,
                 POOL_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    avg_pool_forward_of<false>(x, y, POOL_WINDOW_AS_3D, count_include_pad, divisor_override);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, AVG_BACKWARD_BLOCKS)
avg_pool_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                  POOL_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    avg_pool_backward_of<false>(dy, dx, POOL_WINDOW_AS_3D, count_include_pad, divisor_override);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, AVG3D_FORWARD_BLOCKS)
avg_pool3d_forward(const REAL* __restrict__ x, REAL* __restrict__ y,
                   POOL3D_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    avg_pool_forward_of<true>(x, y, POOL3D_WINDOW, count_include_pad, divisor_override);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
avg_pool3d_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                    POOL3D_WINDOW_PARAMS, int count_include_pad, acc_t divisor_override)
{
    avg_pool_backward_of<true>(dy, dx, POOL3D_WINDOW, count_include_pad, divisor_override);
}
