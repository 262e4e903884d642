// Max unpooling (PyTorch's F.max_unpool1d / max_unpool2d): each (n, c) plane of x (`in_plane` pixels) is
// written into a zero-filled output plane (`out_plane` pixels) at the flat positions its indices name;
// -1 (max_pool2d's index of a window wholly in the padding) names no position. The host has checked
// every index to lie in [-1, out_plane) before any launch.
//
// Not a GEMM: maps over the (n, c) planes, one thread a pixel: blockIdx.y strides over the planes and
// the grid's x threads walk a plane (for_each_plane_pixel, plane_walk.cuh: coalesced).
//  * max_unpool_clear: owner = -1 (a kernel, not a host fill: cnn_gpu.replay replays launches only).
//  * max_unpool_claim: where several inputs name one output position, the last in scan order wins
//    (what PyTorch's serial CPU loop writes; its threaded loop and CUDA kernel let any of them win).
//    Each input pixel i claims its position with an integer atomicMax of i into `owner`: the winner
//    is the same whatever order the threads run in.
//  * max_unpool_gather, the forward's: a GATHER over the output, y = x[owner] where a pixel owns it,
//    else 0. No float atomics, no race: deterministic.
//  * max_unpool_gather, the backward's: dx[i] = dy[indices[i]] (0 for -1): every input naming a
//    position gets its gradient, the losers of a claim too, as PyTorch's backward (a gather) does.
// In-plane indices are int (the host refuses planes of 2^31 pixels or more); plane offsets are 64-bit.
// Values are copied: float16 moves FP16 bits unchanged.

#include "plane_walk.cuh"

// grid: (blocks over an output plane's pixels, min(planes, 65535)); owner: planes x out_plane ints
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
max_unpool_clear(int* __restrict__ owner, long long planes, int out_plane)
{
    for_each_plane_pixel(planes, out_plane, [&](long long plane, int pixel) { owner[plane * out_plane + pixel] = -1; });
}

// grid: (blocks over an input plane's pixels, min(planes, 65535)); owner as max_unpool_clear left it
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
max_unpool_claim(const int* __restrict__ indices, int* __restrict__ owner, long long planes, int in_plane,
                 int out_plane)
{
    for_each_plane_pixel(planes, in_plane, [&](long long plane, int pixel) {
        const int index = indices[plane * in_plane + pixel];
        if (index >= 0)
            atomicMax(owner + plane * out_plane + index, pixel);
    });
}

// out[p] = source[positions[p]] in each plane (0 where positions[p] is -1): the forward with x, the
// owners and y; the backward with dy, the indices and dx.
// grid: (blocks over an out plane's pixels, min(planes, 65535))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
max_unpool_gather(const REAL* __restrict__ source, const int* __restrict__ positions, REAL* __restrict__ out,
                  long long planes, int source_plane, int out_plane)
{
    for_each_plane_pixel(planes, out_plane, [&](long long plane, int pixel) {
        const long long at = plane * out_plane + pixel;
        const int position = positions[at];
        out[at] = position >= 0 ? source[plane * source_plane + position] : to_real((acc_t)0);
    });
}
