// A zero-bordered copy of a gathered operand of the implicit-GEMM convolutions, for filters with
// more taps in a dimension than their tap masks hold (kernels/igemm.cuh, cnn_gpu.gpu.conv.MASK_TAPS):
// fprop's x, dgrad's dy. Memory-bound, one thread per output element.

#include "common.cuh"

// out (planes, H_out, W_out) holds in (planes, H_in, W_in) at (top, left) and zeros around it
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
conv2d_pad(const REAL* __restrict__ in, REAL* __restrict__ out, long long planes, int H_in, int W_in, int H_out,
           int W_out, int top, int left)
{
    const long long plane_out = (long long)H_out * W_out;
    GRID_STRIDE_LOOP(e, planes * plane_out) {
        const long long plane = e / plane_out;
        const int rest = (int)(e - plane * plane_out), h = rest / W_out - top, w = rest % W_out - left;
        out[e] = (unsigned)h < (unsigned)H_in && (unsigned)w < (unsigned)W_in ? in[(plane * H_in + h) * W_in + w] : (REAL)0;
    }
}
