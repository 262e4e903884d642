// Dropout (forward and backward: the same map): y[i] = x[i] * (keep[i] ? scale : 0), with
// keep[i] = (Philox number of element i >= threshold), threshold = round(p * 2^32) and
// scale = 1 / (1 - p) (0 when p = 1). Multiplying (rather than selecting) propagates NaN and inf
// from dropped elements as PyTorch does.
//
// Not a GEMM: memory-bound map. Element i takes output lane i % 4 of the Philox call for group
// i / 4 (kernels/philox.cuh) keyed by (seed, step), so the mask depends on nothing but
// (seed, step, i): every backend, grid and schedule draws the same one, and the backward pass
// regenerates it instead of storing it. One thread per group of 4 elements, a grid-stride loop
// over groups; 64-bit indices. float16 multiplies in FP32 (scale is acc_t) and rounds once.

#include "philox.cuh"
#include "plane_walk.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
dropout_apply(const REAL* __restrict__ x, REAL* __restrict__ y, long long n, unsigned long long seed,
              unsigned long long step, long long threshold, acc_t scale)
{
    const long long groups = (n + 3) / 4;
    GRID_STRIDE_LOOP(group, groups) {
        const Philox4 r = philox_group(seed, step, (unsigned long long)group);
        for (int lane = 0; lane < 4; ++lane) {
            const long long i = group * 4 + lane;
            if (i < n)
                y[i] = to_real(to_acc(x[i]) * ((long long)r.v[lane] >= threshold ? scale : (acc_t)0));
        }
    }
}

// Channel dropout (dropout2d, forward and backward alike): one keep decision per (n, c) plane of
// `pixels` elements, plane j keeping when number j of (seed, step) (lane j % 4 of group j / 4:
// what dropout draws for element j) is >= threshold. The planes are walked as batch norm's element
// passes walk them (for_each_plane_element, plane_walk.cuh: a plane's factor drawn once a round of
// 4 elements a thread, float16 8, or once a small plane into a block's table; one plane a block row
// drew a Philox number an element on large planes and left a small plane's block mostly idle).
// grid: cnn_gpu.gpu._grid.plane_walk_grid(planes, pixels)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
dropout2d_apply(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, long long pixels,
                unsigned long long seed, unsigned long long step, long long threshold, acc_t scale)
{
    for_each_plane_element(planes, pixels,
        [&](long long plane) {
            const Philox4 r = philox_group(seed, step, (unsigned long long)plane / 4);
            return (long long)r.v[plane % 4] >= threshold ? scale : (acc_t)0;
        },
        [&](long long at) { return Loaded<1>{{x[at]}}; },
        [&](long long at, acc_t factor, const Loaded<1>& in) { y[at] = to_real(to_acc(in.v[0]) * factor); });
}
