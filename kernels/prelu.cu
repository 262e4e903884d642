// PReLU (PyTorch's F.prelu / nn.PReLU): y = x where x > 0, else weight[c] x, a learned slope for each
// channel c of x viewed as (N, C, inner) (one slope for all: C = 1).
//
// Not a GEMM: element-wise maps over the (n, c) planes with the plane's slope as its constant:
// for_each_plane_element (plane_walk.cuh, batch norm's element passes' walk), 4 elements a thread a
// round, float16 8, every load of a round before any use. Its point is the small planes, grouped
// so that a block's threads stay busy: one plane a block row left 207 of 256 threads idle on a
// 7x7 plane and 255 on x viewed as (N, C, 1) (a Linear's output). (A large plane's plain
// grid-stride loop, which NVRTC unrolled 4 times with the loads first, issued half the walk's
// instructions an element, both far below what DRAM speed allows: tests/test_sass.py.)
//  * prelu_forward: y.
//  * prelu_backward: dx = dy where x > 0, else weight[c] dy; and the terms of the slope's gradient,
//    g = x dy where x <= 0, else 0, in acc_t (FP32 for float16: each term unrounded), which
//    reduce.cu's channel sums add per channel in a fixed order (dweight[c] = sum of channel c's g):
//    deterministic, no atomics.
// PyTorch's comparisons: a NaN x (x > 0 false) gives y = weight NaN = NaN, dx = weight dy, g = NaN;
// -0.0 gives weight * -0.0. In-plane indices are int (the host refuses planes of 2^31 pixels or
// more); plane offsets are 64-bit. Math in acc_t: float16 rounds each output once.

#include "plane_walk.cuh"

// grid: cnn_gpu.gpu._grid.plane_walk_grid(planes, inner)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
prelu_forward(const REAL* __restrict__ x, const REAL* __restrict__ weight, REAL* __restrict__ y, long long planes,
              int channels, int inner)
{
    for_each_plane_element(planes, inner, [&](long long plane) { return to_acc(weight[plane % channels]); },
        [&](long long at) { return Loaded<1>{{x[at]}}; },
        [&](long long at, acc_t slope, const Loaded<1>& in) {
            const acc_t v = to_acc(in.v[0]);
            y[at] = to_real(v > (acc_t)0 ? v : slope * v);
        });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
prelu_backward(const REAL* __restrict__ dy, const REAL* __restrict__ x, const REAL* __restrict__ weight,
               REAL* __restrict__ dx, acc_t* __restrict__ slope_terms, long long planes, int channels, int inner)
{
    for_each_plane_element(planes, inner, [&](long long plane) { return to_acc(weight[plane % channels]); },
        [&](long long at) { return Loaded<2>{{x[at], dy[at]}}; },
        [&](long long at, acc_t slope, const Loaded<2>& in) {
            const acc_t v = to_acc(in.v[0]), g = to_acc(in.v[1]);
            const bool positive = v > (acc_t)0;
            dx[at] = to_real(positive ? g : slope * g);
            slope_terms[at] = positive ? (acc_t)0 : v * g;
        });
}
