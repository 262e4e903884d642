// Upsampling over NCHW as torch.nn.functional.interpolate, modes "nearest", "nearest-exact",
// "bilinear" and "bicubic" (an output smaller than the input too; "area" is adaptive_avg_pool2d and
// runs kernels/adaptive_pool.cu). The index rules, per axis of `in` inputs and `out` outputs:
//  * nearest, PyTorch's nearest_idx: src(d) = d if out == in, d >> 1 if out == 2*in, else
//    min(floor((float)d * scale), in - 1) in FP32 for every dtype, scale = (float)(1/scale_factor)
//    when a scale factor was given, else (float)in / out (the host passes it rounded to FP32).
//  * nearest-exact, PyTorch's nearest_neighbor_exact_compute_source_index: src(d) =
//    min(floor((float)((d + 0.5) * (double)scale)), in - 1), no shortcuts, the same scale.
//  * bilinear: real = ratio*d (align_corners) or max(ratio*(d + 1/2) - 1/2, 0) in acc_t; taps
//    i0 = min(floor(real), in - 1) and i1 = i0 + (i0 < in - 1) with weights 1 - l and
//    l = clamp(real - i0, 0, 1); out == in copies (both taps d, weights 1 and 0). Every tap is
//    multiplied, as PyTorch does, so an inf in a tap of weight 0 gives NaN there too.
//  * bicubic, PyTorch's upsample_bicubic2d (A = -0.75): real as bilinear's without the clamp at 0;
//    i = min(floor((float)real), in - 1), t = clamp(real - i, 0, 1); taps i-1 .. i+2 each clamped
//    into [0, in - 1], weights cubic_weights(t).
//
// Not a GEMM: every output (or input) pixel is independent; one thread per pixel, 256-thread
// blocks, the grid's x threads walk one (n, c) plane's pixels (consecutive threads on consecutive
// w: coalesced) and blockIdx.y strides over the planes (for_each_plane_pixel, plane_walk.cuh).
//  * *_forward: the thread of output (p, q) reads its one (nearest), four (bilinear) or sixteen
//    (bicubic) taps.
//  * *_backward: a GATHER, no atomics. src(d), i0(d) and i(d) never decrease with d, so the
//    outputs that read input h along an axis are one contiguous range, found by binary search:
//    nearest [first d with src(d) >= h, first d with src(d) >= h + 1); bilinear the same bounds
//    for i0 at h - 1 and h + 1, bicubic for i at h - 2 and h + 2 (its clamped taps reach h from
//    i in [h - 2, h + 1] only, as i >= -1), each output adding dy times each of its taps that is h
//    (tap by tap, as PyTorch's backward pass scatters them; nothing from an output none of whose
//    taps is h). The thread of input (h, w) sums dy over its row range x column range in
//    increasing (p, q) order: deterministic, the bounds computed by the very functions the
//    forward pass uses.
// In-plane indices are int (the host refuses planes of 2^31 pixels or more); plane offsets are
// 64-bit. Sums are acc_t: float16 adds in FP32 and rounds each output once.

#include "plane_walk.cuh"

// The first output d in [0, out] at which `reaches(d)` holds (out when none does): the index
// functions never decrease with d, so once it holds it holds for every later d.
template <class Reaches>
__device__ __forceinline__ int first_output(int out, Reaches reaches)
{
    int lo = 0, hi = out;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (reaches(mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

template <bool EXACT>
__device__ __forceinline__ int nearest_source(int d, int in, int out, float scale)
{
    if (EXACT) {   // the product in double, as PyTorch's C++ promotes (d + 0.5) * scale, then floorf
        const long long src = (long long)floorf((float)(((double)d + 0.5) * (double)scale));
        return (int)(src < in - 1 ? src : in - 1);
    }
    if (out == in)
        return d;
    if (out == 2LL * in)
        return d >> 1;
    const long long src = (long long)floorf((float)d * scale);   // FP32 product: PyTorch's rounding
    return (int)(src < in - 1 ? src : in - 1);
}

// The first output d in [0, out] whose nearest source is >= h (out when none is).
template <bool EXACT>
__device__ __forceinline__ int first_nearest_reader(int h, int in, int out, float scale)
{
    return first_output(out, [&](int d) { return nearest_source<EXACT>(d, in, out, scale) >= h; });
}

// Bilinear taps of output d: the lower and upper input indices and the upper one's weight.
struct LinearTaps {
    int low, high;
    acc_t upper_weight;
};

__device__ __forceinline__ LinearTaps linear_taps(int d, int in, int out, acc_t ratio, int align_corners)
{
    LinearTaps taps;
    if (out == in) {
        taps.low = taps.high = d;
        taps.upper_weight = (acc_t)0;
        return taps;
    }
    acc_t real = align_corners ? ratio * (acc_t)d : ratio * ((acc_t)d + (acc_t)0.5) - (acc_t)0.5;
    if (real < (acc_t)0)
        real = (acc_t)0;
    const long long low = (long long)real;   // truncation: floor, as real >= 0
    taps.low = (int)(low < in - 1 ? low : in - 1);
    taps.high = taps.low < in - 1 ? taps.low + 1 : taps.low;
    const acc_t upper = real - (acc_t)taps.low;
    taps.upper_weight = upper > (acc_t)1 ? (acc_t)1 : upper;
    return taps;
}

// What `value` (dy, or a row's sum of it) adds to input h through the taps of one output: value
// times the weight of each tap that is h, tap by tap; zero when neither is.
__device__ __forceinline__ acc_t tap_shares(acc_t value, int h, LinearTaps taps)
{
    acc_t share = (acc_t)0;
    if (taps.low == h)
        share += value * ((acc_t)1 - taps.upper_weight);
    if (taps.high == h)
        share += value * taps.upper_weight;
    return share;
}

// Bicubic taps of output d: the first tap's index before clamping (i - 1) and the four weights.
struct CubicTaps {
    int first;
    acc_t weight[4];
};

__device__ __forceinline__ CubicTaps cubic_taps(int d, int in, acc_t ratio, int align_corners)
{
    const acc_t a = (acc_t)-0.75;
    const acc_t real = align_corners ? ratio * (acc_t)d : ratio * ((acc_t)d + (acc_t)0.5) - (acc_t)0.5;
    // PyTorch's guard_index_and_lambda: the floor taken in FP32 (floorf), at most in - 1; t in [0, 1]
    long long low = (long long)floorf((float)real);
    if (low > in - 1)
        low = in - 1;
    acc_t t = real - (acc_t)low;
    t = t < (acc_t)0 ? (acc_t)0 : (t > (acc_t)1 ? (acc_t)1 : t);
    CubicTaps taps;
    taps.first = (int)low - 1;
    const acc_t s0 = t + (acc_t)1, s1 = t, s2 = (acc_t)1 - t, s3 = (acc_t)2 - t;
    // |s| > 1: ((A s - 5A) s + 8A) s - 4A; |s| <= 1: ((A + 2) s - (A + 3)) s^2 + 1
    taps.weight[0] = ((a * s0 - (acc_t)5 * a) * s0 + (acc_t)8 * a) * s0 - (acc_t)4 * a;
    taps.weight[1] = ((a + (acc_t)2) * s1 - (a + (acc_t)3)) * s1 * s1 + (acc_t)1;
    taps.weight[2] = ((a + (acc_t)2) * s2 - (a + (acc_t)3)) * s2 * s2 + (acc_t)1;
    taps.weight[3] = ((a * s3 - (acc_t)5 * a) * s3 + (acc_t)8 * a) * s3 - (acc_t)4 * a;
    return taps;
}

__device__ __forceinline__ int clamped_tap(int index, int in)
{
    return index < 0 ? 0 : (index > in - 1 ? in - 1 : index);
}

// What `value` adds to input h through the four clamped taps of one output, tap by tap.
__device__ __forceinline__ acc_t cubic_shares(acc_t value, int h, int in, const CubicTaps& taps)
{
    acc_t share = (acc_t)0;
    for (int k = 0; k < 4; ++k)
        if (clamped_tap(taps.first + k, in) == h)
            share += value * taps.weight[k];
    return share;
}

// The interpolating modes' axes for their shared backward gather: an output's taps, its anchor
// (the lower tap, or i) and what it adds to input h; outputs whose anchor lies in [h - BELOW,
// h + ABOVE] are those that can reach h.
struct LinearAxis {
    typedef LinearTaps Taps;
    static const int BELOW = 1, ABOVE = 0;
    __device__ static Taps taps(int d, int in, int out, acc_t ratio, int align_corners)
    {
        return linear_taps(d, in, out, ratio, align_corners);
    }
    __device__ static int anchor(const Taps& taps) { return taps.low; }
    __device__ static acc_t shares(acc_t value, int h, int, const Taps& taps) { return tap_shares(value, h, taps); }
};

struct CubicAxis {
    typedef CubicTaps Taps;
    static const int BELOW = 2, ABOVE = 1;   // i >= -1 and at most in - 1: the clamped edges need no more
    __device__ static Taps taps(int d, int in, int, acc_t ratio, int align_corners)
    {
        return cubic_taps(d, in, ratio, align_corners);
    }
    __device__ static int anchor(const Taps& taps) { return taps.first + 1; }
    __device__ static acc_t shares(acc_t value, int h, int in, const Taps& taps)
    {
        return cubic_shares(value, h, in, taps);
    }
};

// The first output d in [0, out] whose anchor is >= h (out when none is).
template <class Axis>
__device__ __forceinline__ int first_reader(int h, int in, int out, acc_t ratio, int align_corners)
{
    return first_output(out, [&](int d) { return Axis::anchor(Axis::taps(d, in, out, ratio, align_corners)) >= h; });
}

// Input pixel (h, w) sums dy over the outputs that can reach it, rows x columns in increasing
// order, each adding its share through each of its taps that is (h, w).
template <class Axis>
__device__ __forceinline__ void interpolating_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx,
                                                       long long planes, int H, int W, int P, int Q, acc_t ratio_h,
                                                       acc_t ratio_w, int align_corners)
{
    for_each_plane_pixel(planes, H * W, [&](long long plane, int in) {
        const int w = in % W;
        const int h = in / W;
        const REAL* dyp = dy + plane * (P * Q);
        const int p_end = first_reader<Axis>(h + Axis::ABOVE + 1, H, P, ratio_h, align_corners);
        const int q_begin = first_reader<Axis>(w - Axis::BELOW, W, Q, ratio_w, align_corners);
        const int q_end = first_reader<Axis>(w + Axis::ABOVE + 1, W, Q, ratio_w, align_corners);
        acc_t sum = (acc_t)0;
        for (int p = first_reader<Axis>(h - Axis::BELOW, H, P, ratio_h, align_corners); p < p_end; ++p) {
            acc_t row = (acc_t)0;
            for (int q = q_begin; q < q_end; ++q)
                row += Axis::shares(to_acc(dyp[p * Q + q]), w, W, Axis::taps(q, W, Q, ratio_w, align_corners));
            sum += Axis::shares(row, h, H, Axis::taps(p, H, P, ratio_h, align_corners));
        }
        dx[plane * (H * W) + in] = to_real(sum);
    });
}

template <bool EXACT>
__device__ __forceinline__ void nearest_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes,
                                                int H, int W, int P, int Q, float scale_h, float scale_w)
{
    for_each_plane_pixel(planes, P * Q, [&](long long plane, int out) {
        const int h = nearest_source<EXACT>(out / Q, H, P, scale_h);
        const int w = nearest_source<EXACT>(out % Q, W, Q, scale_w);
        y[plane * (P * Q) + out] = x[plane * (H * W) + h * W + w];
    });
}

template <bool EXACT>
__device__ __forceinline__ void nearest_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes,
                                                 int H, int W, int P, int Q, float scale_h, float scale_w)
{
    for_each_plane_pixel(planes, H * W, [&](long long plane, int in) {
        const int w = in % W;
        const int h = in / W;
        const REAL* dyp = dy + plane * (P * Q);
        const int p_end = first_nearest_reader<EXACT>(h + 1, H, P, scale_h);
        const int q_begin = first_nearest_reader<EXACT>(w, W, Q, scale_w);
        const int q_end = first_nearest_reader<EXACT>(w + 1, W, Q, scale_w);
        acc_t sum = (acc_t)0;
        for (int p = first_nearest_reader<EXACT>(h, H, P, scale_h); p < p_end; ++p)
            for (int q = q_begin; q < q_end; ++q)
                sum += to_acc(dyp[p * Q + q]);
        dx[plane * (H * W) + in] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_nearest_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int H, int W, int P,
                         int Q, float scale_h, float scale_w)
{
    nearest_forward<false>(x, y, planes, H, W, P, Q, scale_h, scale_w);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_nearest_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int H, int W, int P,
                          int Q, float scale_h, float scale_w)
{
    nearest_backward<false>(dy, dx, planes, H, W, P, Q, scale_h, scale_w);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_nearest_exact_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int H, int W, int P,
                               int Q, float scale_h, float scale_w)
{
    nearest_forward<true>(x, y, planes, H, W, P, Q, scale_h, scale_w);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_nearest_exact_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int H, int W,
                                int P, int Q, float scale_h, float scale_w)
{
    nearest_backward<true>(dy, dx, planes, H, W, P, Q, scale_h, scale_w);
}


extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_bilinear_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int H, int W, int P,
                          int Q, acc_t ratio_h, acc_t ratio_w, int align_corners)
{
    for_each_plane_pixel(planes, P * Q, [&](long long plane, int out) {
        const LinearTaps rows = linear_taps(out / Q, H, P, ratio_h, align_corners);
        const LinearTaps cols = linear_taps(out % Q, W, Q, ratio_w, align_corners);
        const REAL* low_row = x + plane * (H * W) + rows.low * W;
        const REAL* high_row = x + plane * (H * W) + rows.high * W;
        const int w0 = cols.low, w1 = cols.high;
        const acc_t col0 = (acc_t)1 - cols.upper_weight, col1 = cols.upper_weight;
        const acc_t low = to_acc(low_row[w0]) * col0 + to_acc(low_row[w1]) * col1;
        const acc_t high = to_acc(high_row[w0]) * col0 + to_acc(high_row[w1]) * col1;
        y[plane * (P * Q) + out] = to_real(low * ((acc_t)1 - rows.upper_weight) + high * rows.upper_weight);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_bilinear_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int H, int W,
                           int P, int Q, acc_t ratio_h, acc_t ratio_w, int align_corners)
{
    interpolating_backward<LinearAxis>(dy, dx, planes, H, W, P, Q, ratio_h, ratio_w, align_corners);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_bicubic_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int H, int W, int P,
                         int Q, acc_t ratio_h, acc_t ratio_w, int align_corners)
{
    for_each_plane_pixel(planes, P * Q, [&](long long plane, int out) {
        const CubicTaps rows = cubic_taps(out / Q, H, ratio_h, align_corners);
        const CubicTaps cols = cubic_taps(out % Q, W, ratio_w, align_corners);
        int w[4];
        for (int k = 0; k < 4; ++k)
            w[k] = clamped_tap(cols.first + k, W);
        const REAL* xp = x + plane * (H * W);
        acc_t sum = (acc_t)0;
        for (int j = 0; j < 4; ++j) {
            const REAL* row = xp + clamped_tap(rows.first + j, H) * W;
            acc_t across = (acc_t)0;
            for (int k = 0; k < 4; ++k)
                across += to_acc(row[w[k]]) * cols.weight[k];
            sum += across * rows.weight[j];
        }
        y[plane * (P * Q) + out] = to_real(sum);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
upsample_bicubic_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int H, int W,
                          int P, int Q, acc_t ratio_h, acc_t ratio_w, int align_corners)
{
    interpolating_backward<CubicAxis>(dy, dx, planes, H, W, P, Q, ratio_h, ratio_w, align_corners);
}
