// The walks of an (N, C, ...) array's (n, c) planes: for_each_plane_pixel, a pixel a thread (the
// pooling, padding, interpolation and unpooling gathers; grid: cnn_gpu.gpu._grid.plane_pixel_grid),
// for_each_channel_plane_pixel, the same walk with each plane's (n, c) stepped (local_response_norm.cu),
// and for_each_plane_element, element-wise with constants per plane (batch_norm.cu's element passes,
// prelu.cu, channel dropout; grid: plane_walk_grid). Not in common.cuh, which every kernel includes:
// there, they moved the float32 SIMT convolution tiles' SASS (README's table), unused as they are.
#pragma once
#include "common.cuh"

// fn(plane, pixel) for every pixel of `planes` planes of `pixels` each (NCHW's (n, c) planes):
// blockIdx.y strides over the planes and the grid's x threads over one plane's pixels (in-plane
// indices are int; the launchers refuse planes of 2^31 pixels or more). Planes of at most half a
// block go BLOCK_THREADS / pixels to a block (thread t: plane t / pixels of the block's group, its
// pixel t % pixels, divided once), so a block's threads stay busy: one plane a block left 255 of
// 256 threads idle in a global average pool's forward (1x1 outputs) and 240 in its backward (4x4
// inputs). Any grid covers every pixel; cnn_gpu.gpu._grid.plane_pixel_grid sizes it.
// for_each_small_plane_pixel is its walk of planes of at most half a block (2 * pixels <= BLOCK_THREADS).
template <class PixelFn>
static __device__ __forceinline__ void for_each_small_plane_pixel(long long planes, int pixels, PixelFn fn)
{
    const int per_block = BLOCK_THREADS / pixels, sub = (int)threadIdx.x / pixels;
    if (sub >= per_block)
        return;   // the threads past the block's whole planes
    const int pixel = (int)threadIdx.x - sub * pixels;
    for (long long plane = (long long)blockIdx.y * per_block + sub; plane < planes;
         plane += (long long)gridDim.y * per_block)
        fn(plane, pixel);
}

template <class PixelFn>
static __device__ __forceinline__ void for_each_plane_pixel(long long planes, int pixels, PixelFn fn)
{
    if (2 * pixels > BLOCK_THREADS) {
        for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y)
            GRID_STRIDE_LOOP(flat, pixels)
                fn(plane, (int)flat);
        return;
    }
    for_each_small_plane_pixel(planes, pixels, fn);
}

// fn(plane, outer, channel, pixel) for every pixel of `planes` planes, plane = outer * channels + channel
// (NCHW's (n, c); local_response_norm.cu's windows need c and n's sample): for_each_plane_pixel's walk
// and grid (plane_pixel_grid), small planes grouped. A thread's planes are first, first + step, ...:
// their (outer, channel) are divided once and then stepped with a carry, where a 64-bit modulo per
// plane cost more than a small plane's element itself (LRN of (N, C, 1): a plane a thread).
template <class ChannelPixelFn>
static __device__ __forceinline__ void for_each_channel_plane_pixel(long long planes, int channels, int pixels,
                                                                    ChannelPixelFn fn)
{
    const bool grouped = 2 * pixels <= BLOCK_THREADS;
    const int per_block = grouped ? BLOCK_THREADS / pixels : 1, sub = grouped ? (int)threadIdx.x / pixels : 0;
    if (sub >= per_block)
        return;   // the threads past the block's whole planes
    const long long first = (long long)blockIdx.y * per_block + sub, step = (long long)gridDim.y * per_block;
    const long long outer_step = step / channels;
    const int channel_step = (int)(step - outer_step * channels);
    long long outer = first / channels;
    int channel = (int)(first - outer * channels);
    // grouped: the thread's one pixel of each plane (gridDim.x is 1); else the grid's x threads
    const long long first_pixel = grouped ? (int)threadIdx.x - sub * pixels
                                          : (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x;
    const long long pixel_step = grouped ? pixels : (long long)gridDim.x * BLOCK_THREADS;
    for (long long plane = first; plane < planes; plane += step) {
        for (long long pixel = first_pixel; pixel < pixels; pixel += pixel_step)
            fn(plane, outer, channel, (int)pixel);
        outer += outer_step;
        channel += channel_step;
        if (channel >= channels) {
            channel -= channels;
            ++outer;
        }
    }
}

// for_each_plane_element: store(offset, constants(plane), load(offset)) for every element,
// PLANE_ELEMENTS a thread per round with every load of a round before any use (as for_each_element,
// common.cuh: one element a thread kept too few bytes in flight for DRAM speed). PLANE_ELEMENTS is
// ELEMENTS_PER_THREAD, float16 twice that: 16 bytes of each array in flight a thread, as float32's 4
// elements. (With 4, float16's batch norm forward held 97% of the bytes an H100 needs in flight, at 40
// registers and 6 blocks an SM; with 8 it holds 129% at 61 registers and 4 blocks, dx 258% at 56 and
// 4, from 161% at 46 and 5: an ESTIMATE, tests/test_sass.py. On sm_90 their hot loops take 25 and 43
// instructions an element, from 36 and 59.) Grid y steps over groups of planes. A plane of at least
// SPAN elements is a group, taken SPAN elements a block by the grid's x blocks (thread t: t + 256k of
// its block's span), its channel's constants computed once a round. Smaller planes go min(SPAN / HW,
// GROUP_PLANES) to a group (gridDim.x 1), contiguous in memory: thread t takes the group's elements
// t + 256k, so a warp's lanes work on consecutive elements however small the plane; the group's planes'
// constants are computed once, into shared memory (per element, the channel's index and loads were ~4x
// the instructions an element may take at DRAM speed).
#define PLANE_ELEMENTS (REAL_IS_HALF ? 2 * ELEMENTS_PER_THREAD : ELEMENTS_PER_THREAD)
#define SPAN (BLOCK_THREADS * PLANE_ELEMENTS)        // cnn_gpu.gpu._grid.plane_elements, plane_walk_grid
#define GROUP_PLANES 256                             // cnn_gpu.gpu._grid.GROUP_PLANES
template <class Constants, class Load, class Store>
__device__ __forceinline__ void for_each_plane_element(long long planes, long long HW, Constants constants, Load load,
                                                       Store store)
{
    if (HW >= SPAN) {
        for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
            const long long base = plane * HW;
#pragma unroll 1
            for (long long first = (long long)blockIdx.x * SPAN + threadIdx.x; first < HW;
                 first += (long long)gridDim.x * SPAN)
                load_then_store<PLANE_ELEMENTS>(first, HW, [&](long long i) { return load(base + i); },
                                [&] { return constants(plane); },
                                [&](long long i, const decltype(constants(plane))& held,
                                    const decltype(load(base))& in) { store(base + i, held, in); });
        }
        return;
    }
    typedef decltype(constants(0LL)) Held;
    __shared__ __align__(16) unsigned char table_bytes[GROUP_PLANES * sizeof(Held)];
    Held* table = reinterpret_cast<Held*>(table_bytes);
    const int hw = (int)HW, per_group = min(SPAN / hw, GROUP_PLANES), elements = per_group * hw;
    // element t + 256k of a group lies in its plane sub_k at position i_k: stepped, not divided
    const int first_sub = threadIdx.x / hw, first_i = threadIdx.x - first_sub * hw;
    const int step_sub = BLOCK_THREADS / hw, step_i = BLOCK_THREADS - step_sub * hw;
    for (long long group = blockIdx.y; group * per_group < planes; group += gridDim.y) {
        const long long first_plane = group * per_group, base = first_plane * HW;
        const int end = (int)min((long long)elements, (planes - first_plane) * HW);   // the last group may hold fewer
        decltype(load(base)) values[PLANE_ELEMENTS];
#pragma unroll
        for (int k = 0; k < PLANE_ELEMENTS; ++k) {
            const int j = threadIdx.x + k * BLOCK_THREADS;
            if (j < end) values[k] = load(base + j);
        }
        __syncthreads();   // the previous group's table is read
        if (threadIdx.x < per_group && first_plane + threadIdx.x < planes)
            table[threadIdx.x] = constants(first_plane + threadIdx.x);
        __syncthreads();
        int sub = first_sub, i = first_i;
#pragma unroll
        for (int k = 0; k < PLANE_ELEMENTS; ++k) {
            const int j = threadIdx.x + k * BLOCK_THREADS;
            if (j < end) store(base + j, table[sub], values[k]);
            sub += step_sub;
            i += step_i;
            if (i >= hw) {
                i -= hw;
                ++sub;
            }
        }
    }
}
