// Fractional max pooling (Graham's; PyTorch's F.fractional_max_pool2d / 3d) over NCHW and NCDHW,
// forward and backward. Along an axis of `size` inputs, `outputs` outputs and windows of k taps, with
// the plane's sample u in [0, 1) for that axis: alpha = (size - k) / (outputs - 1) and output i's window
// starts at int((i + u) * alpha) - int(u * alpha), the last output's at size - k (ATen's
// generate_intervals, in acc_t: FP32 for float16, as PyTorch's CUDA kernels). The host has checked
// outputs + k - 1 <= size and every sample to lie in [0, 1), so alpha >= 1 and every start lies in
// [0, size - k]: both floors are of non-negative values and the rounded products never decrease with i.
// Samples (planes, 2) hold (u_w, u_h) for images, (planes, 3) (u_t, u_h, u_w) for volumes: PyTorch's
// orders.
//
// Not a GEMM: every output (or input) pixel is independent; one thread per pixel, 256-thread blocks,
// the grid's x threads walk one (n, c) plane's pixels (consecutive threads on consecutive w: coalesced)
// and blockIdx.y strides over the planes (for_each_plane_pixel, plane_walk.cuh). One source for both
// ranks: the 2-D kernels run the 3-D bodies with D = T = kd = 1 and VOLUME false (Position3), so the
// depth folds away at compile time. In-plane indices are flat: (d*H + h)*W + w.
//  * fractional_max_pool_forward: the thread of output (t, p, q) computes its window from the plane's
//    samples and scans it in (d, h, w) order with PyTorch's tie and NaN rule (box_max, position3.cuh).
//    Index = flat position in the plane.
//  * fractional_max_pool_backward: a GATHER, no atomics, and no samples: input pixel (d, h, w) adds,
//    in increasing (t, p, q) order, dy of the outputs whose index is its flat position (deterministic).
//    It visits, per axis, every output whose window can hold the pixel for any samples in [0, 1): in
//    exact arithmetic output i's start, floor(i*alpha + u*alpha) - floor(u*alpha), is floor(i*alpha) or
//    one more, and each of the two rounded products moves its floor by at most 1 while its rounding
//    error stays below one (the host refuses axes of 2^22 inputs or more to the float32 and float16
//    builds), so the start lies within REACH of floor(i * (size - k) / (outputs - 1)), taken exactly in
//    ints. The host checks caller-given indices against the same reach
//    (cnn_gpu.functional.fractional_pool.check_indices).
// In-plane indices and the reach's products are int (the host refuses planes of 2^31 pixels or more
// and axes with (size + REACH + 1) * outputs >= 2^31); plane offsets are 64-bit. Comparisons and sums
// are acc_t: float16 adds in FP32 and rounds each output once.

#include "plane_walk.cuh"
#include "position3.cuh"

// How far from floor(i * (size - k) / (outputs - 1)) output i's window start may lie
// (cnn_gpu.gpu.fractional_pool.REACH).
#define REACH 3

// Output i's window start along an axis: ATen's interval from the plane's sample u.
__device__ __forceinline__ int fractional_start(acc_t u, int i, int size, int outputs, int k)
{
    if (i == outputs - 1)
        return size - k;
    const acc_t alpha = (acc_t)(size - k) / (acc_t)(outputs - 1);
    return (int)(((acc_t)i + u) * alpha) - (int)(u * alpha);
}

// The outputs along an axis whose windows can hold input position h for any samples: [first, last].
struct Reach {
    int first, last;
};

__device__ __forceinline__ Reach reach_of(int h, int size, int outputs, int k)
{
    if (outputs == 1)
        return Reach{0, 0};
    // floor(i * a / b) in [low, high]  <=>  i in [ceil(low * b / a), floor(((high + 1) * b - 1) / a)]
    const int a = size - k, b = outputs - 1, low = h - k + 1 - REACH, high = h + REACH;
    const int first = low <= 0 ? 0 : (low * b + a - 1) / a;
    const int last = ((high + 1) * b - 1) / a;
    return Reach{first, last < b ? last : b};
}

// Kernel parameters: the planes, input D x H x W, output T x P x Q, window kd x kh x kw (2-D: H x W to
// P x Q, kh x kw).
#define FRACTIONAL_PARAMS long long planes, int H, int W, int P, int Q, int kh, int kw
#define FRACTIONAL3D_PARAMS long long planes, int D, int H, int W, int T, int P, int Q, int kd, int kh, int kw
#define FRACTIONAL_AS_3D planes, 1, H, W, 1, P, Q, 1, kh, kw
#define FRACTIONAL3D planes, D, H, W, T, P, Q, kd, kh, kw

template <bool VOLUME>
__device__ __forceinline__ void fractional_max_pool_forward_of(const REAL* __restrict__ x,
                                                               const REAL* __restrict__ samples,
                                                               REAL* __restrict__ y, int* __restrict__ indices,
                                                               FRACTIONAL3D_PARAMS)
{
    for_each_plane_pixel(planes, T * P * Q, [&](long long plane, int out) {
        const Position3<VOLUME> o(out, P, Q);
        const REAL* u = samples + plane * (VOLUME ? 3 : 2);
        const int d0 = VOLUME ? fractional_start(to_acc(u[0]), o.t, D, T, kd) : 0;
        const int h0 = fractional_start(to_acc(u[1]), o.p, H, P, kh);
        const int w0 = fractional_start(to_acc(u[VOLUME ? 2 : 0]), o.q, W, Q, kw);
        const BoxMax best = box_max(x + plane * (D * H * W), d0, d0 + kd, h0, h0 + kh, w0, w0 + kw, H, W);
        y[plane * (T * P * Q) + out] = to_real(best.value);
        indices[plane * (T * P * Q) + out] = best.index;
    });
}

template <bool VOLUME>
__device__ __forceinline__ void fractional_max_pool_backward_of(const REAL* __restrict__ dy,
                                                                const int* __restrict__ indices,
                                                                REAL* __restrict__ dx, FRACTIONAL3D_PARAMS)
{
    for_each_plane_pixel(planes, D * H * W, [&](long long plane, int in) {
        const Position3<VOLUME> i(in, H, W);
        const Reach over_t = VOLUME ? reach_of(i.t, D, T, kd) : Reach{0, 0};
        const Reach over_p = reach_of(i.p, H, P, kh), over_q = reach_of(i.q, W, Q, kw);
        const REAL* dyp = dy + plane * (T * P * Q);
        const int* index_plane = indices + plane * (T * P * Q);
        acc_t sum = (acc_t)0;
        for (int t = over_t.first; t <= over_t.last; ++t)
            for (int p = over_p.first; p <= over_p.last; ++p)
                for (int q = over_q.first; q <= over_q.last; ++q) {
                    const int out = (t * P + p) * Q + q;
                    if (index_plane[out] == in)
                        sum += to_acc(dyp[out]);
                }
        dx[plane * (D * H * W) + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
fractional_max_pool_forward(const REAL* __restrict__ x, const REAL* __restrict__ samples, REAL* __restrict__ y,
                            int* __restrict__ indices, FRACTIONAL_PARAMS)
{
    fractional_max_pool_forward_of<false>(x, samples, y, indices, FRACTIONAL_AS_3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
fractional_max_pool_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                             FRACTIONAL_PARAMS)
{
    fractional_max_pool_backward_of<false>(dy, indices, dx, FRACTIONAL_AS_3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
fractional_max_pool3d_forward(const REAL* __restrict__ x, const REAL* __restrict__ samples, REAL* __restrict__ y,
                              int* __restrict__ indices, FRACTIONAL3D_PARAMS)
{
    fractional_max_pool_forward_of<true>(x, samples, y, indices, FRACTIONAL3D);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
fractional_max_pool3d_backward(const REAL* __restrict__ dy, const int* __restrict__ indices, REAL* __restrict__ dx,
                               FRACTIONAL3D_PARAMS)
{
    fractional_max_pool_backward_of<true>(dy, indices, dx, FRACTIONAL3D);
}
