// Adaptive average and max pooling over NCHW and NCDHW, PyTorch's windows: output p of P along an
// axis of size H covers rows [floor(p*H/P), ceil((p+1)*H/P)); windows overlap where P does not
// divide H. The average's divisor is the window's volume (area in 2-D).
//
// Not a GEMM: every output (or input) pixel is independent; one thread per pixel, 256-thread
// blocks, the grid's x threads walk one (n, c) plane's pixels (consecutive threads on consecutive
// w: coalesced) and blockIdx.y strides over the planes (for_each_plane_pixel, plane_walk.cuh).
// One source for both ranks: x (N, C, D, H, W) -> y (N, C, T, P, Q); the 2-D kernels run the 3-D
// bodies with D = T = 1 and VOLUME false, so the depth decode and loop fold away at compile time.
// In-plane indices are flat: (d*H + h)*W + w.
//  * adaptive_avg_pool_forward: the thread of output (t, p, q) sums its window in scan order.
//  * adaptive_avg_pool_backward: a GATHER, no atomics: input pixel (d, h, w) adds dy/volume of the
//    outputs whose windows contain it, p in [floor(h*P/H), ceil((h+1)*P/H) - 1] (same for t and q),
//    in increasing (t, p, q) order: deterministic.
//  * adaptive_max_pool_forward: the thread of output (t, p, q) scans its window in (d, h, w) order;
//    a later tap replaces the maximum only if strictly greater (the first maximum wins ties) or NaN
//    (NaN propagates, the last NaN's index kept), PyTorch's rule. Index = flat position in the plane.
//  * adaptive_max_pool_backward: the average's gather, adding dy of the windows whose index is
//    this pixel (no float atomics although windows overlap: deterministic).
// In-plane indices are int (the host refuses planes of 2^31 pixels or more); products such as
// p*H are taken in 64 bits by the 2-D kernels and in 32 by the 3-D ones (Product, below); plane
// offsets are 64-bit. Sums and divisions are acc_t: float16
// adds in FP32 and rounds each output once.

#include "plane_walk.cuh"
#include "position3.cuh"

// The type of the window bounds' products o*size and i*outputs: long long in the 2-D kernels, int
// in the 3-D ones, whose host refuses an axis with (size + 1) * (outputs + 1) >= 2^31 (a 64-bit
// division is a called subroutine: with a third loop level its register saves spilled the 3-D
// average's backward gather, 44 to 160 bytes).
template <bool VOLUME>
struct Product {
    typedef long long type;
};
template <>
struct Product<true> {
    typedef int type;
};

// [start, end) of output o's window along an axis of `size` inputs and `outputs` outputs.
template <bool VOLUME>
__device__ __forceinline__ int window_start(int o, int size, int outputs)
{
    typedef typename Product<VOLUME>::type Int;
    return (int)(((Int)o * size) / outputs);
}

template <bool VOLUME>
__device__ __forceinline__ int window_end(int o, int size, int outputs)
{
    typedef typename Product<VOLUME>::type Int;
    return (int)(((Int)(o + 1) * size + outputs - 1) / outputs);
}

// The window of output `out`: [d0, d1) x [h0, h1) x [w0, w1).
struct Window {
    int d0, d1, h0, h1, w0, w1;
};

template <bool VOLUME>
__device__ __forceinline__ Window window_of(int out, int D, int H, int W, int T, int P, int Q)
{
    const Position3<VOLUME> o(out, P, Q);
    return Window{window_start<VOLUME>(o.t, D, T), window_end<VOLUME>(o.t, D, T), window_start<VOLUME>(o.p, H, P),
                  window_end<VOLUME>(o.p, H, P),   window_start<VOLUME>(o.q, W, Q), window_end<VOLUME>(o.q, W, Q)};
}

// The outputs whose windows hold input pixel `in`: t in [t_first, t_last], p in [p_first, p_last],
// q in [q_first, q_last].
struct WindowsOver {
    int t_first, t_last, p_first, p_last, q_first, q_last;
};

template <bool VOLUME>
__device__ __forceinline__ int first_window_over(int i, int size, int outputs)
{
    typedef typename Product<VOLUME>::type Int;
    return (int)(((Int)i * outputs) / size);
}

template <bool VOLUME>
__device__ __forceinline__ int last_window_over(int i, int size, int outputs)
{
    typedef typename Product<VOLUME>::type Int;
    return (int)(((Int)(i + 1) * outputs + size - 1) / size) - 1;
}

template <bool VOLUME>
__device__ __forceinline__ WindowsOver windows_over(int in, int D, int H, int W, int T, int P, int Q)
{
    const Position3<VOLUME> i(in, H, W);
    return WindowsOver{first_window_over<VOLUME>(i.t, D, T), last_window_over<VOLUME>(i.t, D, T),
                       first_window_over<VOLUME>(i.p, H, P), last_window_over<VOLUME>(i.p, H, P),
                       first_window_over<VOLUME>(i.q, W, Q), last_window_over<VOLUME>(i.q, W, Q)};
}

// Kernel parameters: the planes, input D x H x W, output T x P x Q (2-D: H x W to P x Q).
#define ADAPTIVE_PARAMS long long planes, int H, int W, int P, int Q
#define ADAPTIVE3D_PARAMS long long planes, int D, int H, int W, int T, int P, int Q
#define ADAPTIVE_AS_3D planes, 1, H, W, 1, P, Q
#define ADAPTIVE3D planes, D, H, W, T, P, Q

template <bool VOLUME>
__device__ __forceinline__ void adaptive_avg_pool_forward_of(const REAL* __restrict__ x, REAL* __restrict__ y,
                                                             ADAPTIVE3D_PARAMS)
{
    for_each_plane_pixel(planes, T * P * Q, [&](long long plane, int out) {
        const REAL* xp = x + plane * (D * H * W);
        const Window win = window_of<VOLUME>(out, D, H, W, T, P, Q);
        acc_t sum = (acc_t)0;
        for (int d = win.d0; d < win.d1; ++d)
            for (int h = win.h0; h < win.h1; ++h)
                for (int w = win.w0; w < win.w1; ++w)
                    sum += to_acc(xp[(d * H + h) * W + w]);
        const long long volume = (long long)(win.d1 - win.d0) * (win.h1 - win.h0) * (win.w1 - win.w0);
        y[plane * (T * P * Q) + out] = to_real(sum / (acc_t)volume);
    });
}

template <bool VOLUME>
__device__ __forceinline__ void adaptive_avg_pool_backward_of(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                                                              ADAPTIVE3D_PARAMS)
{
    for_each_plane_pixel(planes, D * H * W, [&](long long plane, int in) {
        const REAL* dyp = dy + plane * (T * P * Q);
        const WindowsOver over = windows_over<VOLUME>(in, D, H, W, T, P, Q);
        acc_t sum = (acc_t)0;
        for (int t = over.t_first; t <= over.t_last; ++t) {
            const int layers = window_end<VOLUME>(t, D, T) - window_start<VOLUME>(t, D, T);
            for (int p = over.p_first; p <= over.p_last; ++p) {
                const int rows = window_end<VOLUME>(p, H, P) - window_start<VOLUME>(p, H, P);
                for (int q = over.q_first; q <= over.q_last; ++q) {
                    const int cols = window_end<VOLUME>(q, W, Q) - window_start<VOLUME>(q, W, Q);
                    sum += to_acc(dyp[(t * P + p) * Q + q]) / (acc_t)((long long)layers * rows * cols);
                }
            }
        }
        dx[plane * (D * H * W) + in] = to_real(sum);
    });
}

template <bool VOLUME>
__device__ __forceinline__ void adaptive_max_pool_forward_of(const REAL* __restrict__ x, REAL* __restrict__ y,
                                                             int* __restrict__ indices, ADAPTIVE3D_PARAMS)
{
    for_each_plane_pixel(planes, T * P * Q, [&](long long plane, int out) {
        const REAL* xp = x + plane * (D * H * W);
        const Window win = window_of<VOLUME>(out, D, H, W, T, P, Q);
        const BoxMax best = box_max(xp, win.d0, win.d1, win.h0, win.h1, win.w0, win.w1, H, W);
        y[plane * (T * P * Q) + out] = to_real(best.value);
        indices[plane * (T * P * Q) + out] = best.index;
    });
}

template <bool VOLUME>
__device__ __forceinline__ void adaptive_max_pool_backward_of(const REAL* __restrict__ dy,
                                                              const int* __restrict__ indices, REAL* __restrict__ dx,
                                                              ADAPTIVE3D_PARAMS)
{
    for_each_plane_pixel(planes, D * H * W, [&](long long plane, int in) {
        const REAL* dyp = dy + plane * (T * P * Q);
        const int* index_plane = indices + plane * (T * P * Q);
        const WindowsOver over = windows_over<VOLUME>(in, D, H, W, T, P, Q);
        acc_t sum = (acc_t)0;
        for (int t = over.t_first; t <= over.t_last; ++t)
            for (int p = over.p_first; p <= over.p_last; ++p)
                for (int q = over.q_first; q <= over.q_last; ++q) {
                    const int out = (t * P + p) * Q + q;
                    if (index_plane[out] == in)
                        sum += to_acc(dyp[out]);
                }
        dx[plane * (D * H * W) + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_avg_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, ADAPTIVE_PARAMS)
{
    adaptive_avg_pool_forward_of<false>(x, y, ADAPTIVE_AS_3D);
}

// float64 3 blocks an SM: with plane_walk.cuh's small-plane walk beside the large-plane one, NVRTC
// 13.5 spilled 16 bytes at 64 registers on sm_90 (the 2-D window bounds are 64-bit products)
#define AVG_BACKWARD_MIN_BLOCKS (REAL_IS_DOUBLE ? 3 : MIN_BLOCKS)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, AVG_BACKWARD_MIN_BLOCKS)
adaptive_avg_pool_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, ADAPTIVE_PARAMS)
{
    adaptive_avg_pool_backward_of<false>(dy, dx, ADAPTIVE_AS_3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                          ADAPTIVE_PARAMS)
{
    adaptive_max_pool_forward_of<false>(x, y, indices, ADAPTIVE_AS_3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                           ADAPTIVE_PARAMS)
{
    adaptive_max_pool_backward_of<false>(dy, indices, dx, ADAPTIVE_AS_3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_avg_pool3d_forward(const REAL* __restrict__ x, REAL* __restrict__ y, ADAPTIVE3D_PARAMS)
{
    adaptive_avg_pool_forward_of<true>(x, y, ADAPTIVE3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_avg_pool3d_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, ADAPTIVE3D_PARAMS)
{
    adaptive_avg_pool_backward_of<true>(dy, dx, ADAPTIVE3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool3d_forward(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ indices,
                            ADAPTIVE3D_PARAMS)
{
    adaptive_max_pool_forward_of<true>(x, y, indices, ADAPTIVE3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adaptive_max_pool3d_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                             ADAPTIVE3D_PARAMS)
{
    adaptive_max_pool_backward_of<true>(dy, indices, dx, ADAPTIVE3D);
}
