// Training-time augmentation of an image batch (N, C, H, W): a random crop of an H x W window
// from the image zero-padded by `pad` pixels on every side, then a random horizontal flip (with
// probability 1/2 when `flip`), in one pass (torchvision's RandomCrop(padding=pad) followed by
// RandomHorizontalFlip).
//
// Not a GEMM: a gather, one thread per output pixel. The crop offsets and the flip of image n are
// Philox4x32-10 numbers of group first + n keyed by (seed, step) (kernels/philox.cuh; `first`: the
// batch's first image in the global batch, which a data-parallel rank's shard starts into): offsets r0 % (2pad+1),
// r1 % (2pad+1), flip r2 & 1. Every thread of an image draws them itself (no second kernel, no
// stored state), and cnn_gpu.cifar.random_crop_flip draws the same on the host: numpy, emu and
// cuda give identical batches. The output pixel (h, w) reads input (h + oy - pad,
// w' + ox - pad) with w' = W-1-w when flipped, 0 outside the image.
// Grid as kernels/pool.cu: blockIdx.y strides over the (n, c) planes, blockIdx.x walks a plane's
// pixels (consecutive threads on consecutive w: coalesced stores). In-plane indices are int (the
// host refuses planes of 2^31 pixels or more, and sides that reach 2^31 with the padding: a
// source row or column is side - 1 + pad at most); plane offsets are 64-bit. The values are copied
// (float16 too: fp16 training augments its float16 batches), so every dtype is exact.

#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
random_crop_flip(const REAL* __restrict__ x, REAL* __restrict__ y, long long planes, int C, int H, int W, int pad,
                 int flip, unsigned long long seed, unsigned long long step, unsigned long long first)
{
    const int plane_pixels = H * W;
    const unsigned int positions = 2u * (unsigned int)pad + 1u;
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const Philox4 r = philox_group(seed, step, first + (unsigned long long)(plane / C));
        const int oy = (int)(r.v[0] % positions) - pad;
        const int ox = (int)(r.v[1] % positions) - pad;
        const bool flipped = flip && (r.v[2] & 1u);
        const REAL* xp = x + plane * plane_pixels;
        GRID_STRIDE_LOOP(flat, plane_pixels) {
            const int out = (int)flat;
            const int w = out % W;
            const int h = out / W;
            const int source_h = h + oy;
            const int source_w = (flipped ? W - 1 - w : w) + ox;
            const bool inside = source_h >= 0 && source_h < H && source_w >= 0 && source_w < W;
            y[plane * plane_pixels + out] = inside ? xp[source_h * W + source_w] : to_real((acc_t)0);
        }
    }
}
