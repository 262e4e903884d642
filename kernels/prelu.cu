// PReLU (PyTorch's F.prelu / nn.PReLU): y = x where x > 0, else weight[c] x, a learned slope for each
// channel c of x viewed as (N, C, inner) (one slope for all: C = 1).
//
// Not a GEMM: element-wise maps over the (n, c) planes, one thread a pixel: blockIdx.y strides over
// the planes and the grid's x threads walk a plane (consecutive threads consecutive pixels,
// coalesced), as for_each_plane_pixel (common.cuh) does, but with the plane's slope read once before
// its walk (inside for_each_plane_pixel's pixel function NVRTC loaded it, and took plane % C, again for
// every element).
//  * prelu_forward: y.
//  * prelu_backward: dx = dy where x > 0, else weight[c] dy; and the terms of the slope's gradient,
//    g = x dy where x <= 0, else 0, in acc_t (FP32 for float16: each term unrounded), which
//    reduce.cu's channel sums add per channel in a fixed order (dweight[c] = sum of channel c's g):
//    deterministic, no atomics.
// PyTorch's comparisons: a NaN x (x > 0 false) gives y = weight NaN = NaN, dx = weight dy, g = NaN;
// -0.0 gives weight * -0.0. In-plane indices are int (the host refuses planes of 2^31 pixels or
// more); plane offsets are 64-bit. Math in acc_t: float16 rounds each output once.

#include "common.cuh"

// grid: (blocks over a plane's pixels, min(planes, 65535))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
prelu_forward(const REAL* __restrict__ x, const REAL* __restrict__ weight, REAL* __restrict__ y, long long planes,
              int channels, int inner)
{
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const acc_t slope = to_acc(weight[plane % channels]);
        const REAL* x_plane = x + plane * inner;
        REAL* y_plane = y + plane * inner;
        GRID_STRIDE_LOOP(pixel, inner) {
            const acc_t v = to_acc(x_plane[pixel]);
            y_plane[pixel] = to_real(v > (acc_t)0 ? v : slope * v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
prelu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, const REAL* __restrict__ weight,
               REAL* __restrict__ dx, acc_t* __restrict__ slope_terms, long long planes, int channels, int inner)
{
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const acc_t slope = to_acc(weight[plane % channels]);
        const long long first = plane * inner;
        GRID_STRIDE_LOOP(pixel, inner) {
            const long long at = first + pixel;
            const acc_t v = to_acc(x[at]), g = to_acc(dy[at]);
            const bool positive = v > (acc_t)0;
            dx[at] = to_real(positive ? g : slope * g);
            slope_terms[at] = positive ? (acc_t)0 : v * g;
        }
    }
}
