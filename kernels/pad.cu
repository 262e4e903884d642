// Padding of up to three axes (depth, rows, columns) of every plane, as torch.nn.functional.pad,
// modes "constant", "reflect", "replicate" and "circular" (negative pads crop). The host
// (cnn_gpu/gpu/pad.py) gives a 1-D signal's or a 2-D image's missing axes size one and no pad, and
// constant mode's dims merged into at most three axes a launch. The index rule, per axis of `in`
// inputs and `out` = before + in + after outputs: output d stands at input position i = d - before,
// and reads
//  * constant: input i where 0 <= i < in, else the fill value;
//  * reflect: i < 0 -> -i, i >= in -> 2(in - 1) - i (the host holds before, after < in);
//  * replicate: i clamped to [0, in - 1];
//  * circular: i < 0 -> i + in, i >= in -> i - in (the host holds before, after <= in).
// The axis's source is a window [origin, origin + in) of the array's axis: circular pads what its
// negative pads leave, as PyTorch (origin and in from the crop, before = max(pad, 0)); every other
// mode the whole axis (origin 0), negative pads as they are.
//
// Not a GEMM: every output (or input) element is independent; one thread per element, 256-thread
// blocks, the grid's x threads walk one plane's elements (consecutive threads on consecutive
// columns: coalesced) and blockIdx.y strides over the planes (for_each_plane_pixel, plane_walk.cuh).
//  * pad_forward: the thread of output (o, p, q) copies its source element (or the fill value).
//  * pad_backward: a GATHER, no atomics. The outputs that read input h along an axis are at most
//    three ranges of d, in increasing order: the mirror or wrap on the left (reflect: i = -h for
//    h > 0; circular: i = h - in), the element itself (i = h; replicate: from d = 0 for h = 0 and
//    to d = out for h = in - 1), the mirror or wrap on the right (reflect: i = 2(in - 1) - h for
//    h < in - 1; circular: i = h + in), each clipped to [0, out); none for an h outside the
//    window. The thread of input (e, h, w) sums dy over the depth x row x column ranges in
//    increasing (o, p, q) order: deterministic.
// In-plane indices are int (the host refuses planes of 2^31 elements or more); plane offsets are
// 64-bit. Sums are acc_t: float16 adds in FP32 and rounds each output once.

#include "plane_walk.cuh"

// cnn_gpu/gpu/pad.py: MODES
#define PAD_CONSTANT 0
#define PAD_REFLECT 1
#define PAD_REPLICATE 2
#define PAD_CIRCULAR 3

// The input index output position i (= d - before) reads; for constant, i itself (the caller
// tests whether it is inside).
__device__ __forceinline__ int pad_source(int i, int in, int mode)
{
    if (mode == PAD_REFLECT) {
        if (i < 0)
            i = -i;
        return i >= in ? 2 * (in - 1) - i : i;
    }
    if (mode == PAD_REPLICATE)
        return i < 0 ? 0 : (i >= in ? in - 1 : i);
    if (mode == PAD_CIRCULAR)
        return i < 0 ? i + in : (i >= in ? i - in : i);
    return i;
}

// The outputs d that read input h along one axis: ranges [begin[r], end[r]), increasing, disjoint.
struct PadReaders {
    int begin[3], end[3];
};

__device__ __forceinline__ PadReaders pad_readers(int h, int in, int out, int before, int mode)
{
    // input positions i, each range [first, last]; an empty one has last < first
    int first[3] = {0, h, 0}, last[3] = {-1, h, -1};
    if (h < 0 || h >= in)
        last[1] = h - 1;   // outside the window (a circular crop): read by none
    else if (mode == PAD_REPLICATE) {
        if (h == 0)
            first[1] = -before;
        if (h == in - 1)
            last[1] = out - 1 - before;
    } else if (mode == PAD_REFLECT) {
        if (h > 0)
            first[0] = last[0] = -h;
        if (h < in - 1)
            first[2] = last[2] = 2 * (in - 1) - h;
    } else if (mode == PAD_CIRCULAR) {
        first[0] = last[0] = h - in;
        first[2] = last[2] = h + in;
    }
    PadReaders readers;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const int begin = first[r] + before, end = last[r] + before + 1;
        readers.begin[r] = begin < 0 ? 0 : begin;
        readers.end[r] = end > out ? out : end;
    }
    return readers;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
pad_forward(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int D, int H, int W, int O, int P,
            int Q, int depth0, int row0, int col0, int depths, int rows, int cols, int front, int top, int left,
            int mode, acc_t fill)
{
    const REAL filler = to_real(fill);
    for_each_plane_pixel(planes, O * P * Q, [&](long long plane, int out) {
        const int j = out % Q - left;
        const int i = out / Q % P - top;
        const int k = out / (P * Q) - front;
        const bool outside = mode == PAD_CONSTANT &&
                             (k < 0 || k >= depths || i < 0 || i >= rows || j < 0 || j >= cols);
        y[plane * (O * P * Q) + out] =
            outside ? filler
                    : x[plane * (D * H * W) + ((depth0 + pad_source(k, depths, mode)) * H + row0 +
                                               pad_source(i, rows, mode)) * W + col0 + pad_source(j, cols, mode)];
    });
}

// float64 3 blocks an SM: for_each_plane_pixel's small-plane walk keeps the three axes' reader ranges
// across its planes, which spilled at 64 registers on sm_70
#define BACKWARD_MIN_BLOCKS (REAL_IS_DOUBLE ? 3 : MIN_BLOCKS)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, BACKWARD_MIN_BLOCKS)
pad_backward(const REAL* __restrict__ dy, REAL* __restrict__ dx, long long planes, int D, int H, int W, int O,
             int P, int Q, int depth0, int row0, int col0, int depths, int rows, int cols, int front, int top,
             int left, int mode)
{
    for_each_plane_pixel(planes, D * H * W, [&](long long plane, int in) {
        const int w = in % W;
        const int h = in / W % H;
        const int e = in / (H * W);
        const REAL* dyp = dy + plane * (O * P * Q);
        const PadReaders depth_readers = pad_readers(e - depth0, depths, O, front, mode);
        const PadReaders row_readers = pad_readers(h - row0, rows, P, top, mode);
        const PadReaders col_readers = pad_readers(w - col0, cols, Q, left, mode);
        acc_t sum = (acc_t)0;
#pragma unroll
        for (int d = 0; d < 3; ++d)
            for (int o = depth_readers.begin[d]; o < depth_readers.end[d]; ++o)
#pragma unroll
                for (int r = 0; r < 3; ++r)
                    for (int p = row_readers.begin[r]; p < row_readers.end[r]; ++p)
#pragma unroll
                        for (int c = 0; c < 3; ++c)
                            for (int q = col_readers.begin[c]; q < col_readers.end[c]; ++q)
                                sum += to_acc(dyp[(o * P + p) * Q + q]);
        dx[plane * (D * H * W) + in] = to_real(sum);
    });
}
