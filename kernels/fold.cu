// Unfold (im2col) and Fold (col2im) over NCHW, PyTorch's F.unfold / F.fold (nn.Unfold / nn.Fold).
// Columns cols (N, C*KH*KW, L): row c*KH*KW + i*KW + j holds tap (i, j) of every sliding block,
// block l = bh*LW + bw reading image pixel (bh*stride_h - pad_h + i*dil_h, bw*stride_w - pad_w +
// j*dil_w), zero outside the image; LH = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1 (LW
// likewise), L = LH*LW. This is the convolutions' im2col operand materialised: conv2d_fprop.cu's B
// tile, reduction row (c, r, s) = (c, i, j) and GEMM column (n, p, q) = (n, bh, bw), which the conv
// kernels gather from x without storing it.
//
// Not a GEMM: one thread per element written, no reduction across threads.
//  * unfold: the grid's x threads walk one row (n, c, tap) of cols (its L blocks, consecutive
//    threads consecutive blocks: coalesced stores), blockIdx.y strides over the N*C*KH*KW rows, as
//    for_each_plane_pixel (plane_walk.cuh) does but with the row's tap and image plane decoded once
//    before its walk and each block's (bh, bw) stepped, not divided. Each element is a copy of its
//    pixel or 0 (no arithmetic: bit exact).
//  * fold: a GATHER, no atomics: the thread of image pixel (h, w) of plane (n, c) sums the column
//    elements that read it, taps (i, j) in increasing row-major order (the NumPy oracle's order):
//    tap i reads row h from block bh = (h + pad_h - i*dil_h) / stride_h where that is a whole
//    number in [0, LH) (columns likewise): taps i0, i0 + period, ... (taps.cuh, as the depthwise
//    dgrad's), so no thread visits a tap of another phase and the inner loop has no div/mod. acc_t
//    sums: float16 adds in FP32 and rounds each output once; deterministic, bit-identical run to run.
// Unfold's backward pass is fold of dy and fold's is unfold of dy: these two kernels are all four.
// In-row and in-plane indices are int (the host refuses rows and planes of 2^31 elements or more);
// row and plane offsets are 64-bit.

#include "common.cuh"
#include "taps.cuh"

// grid: (blocks over a row's L blocks, min(N*C*KH*KW, 65535))
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
unfold_forward(const REAL* __restrict__ x, REAL* __restrict__ cols, long long rows, int H, int W, int KH, int KW,
               int LH, int LW, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w)
{
    const int taps = KH * KW, blocks = LH * LW;
    // A thread's blocks l = first, first + step, ... are the same in every row: their (bh, bw) are
    // stepped with a carry, not divided per element (step < 2^24: the grid has at most 65536 x blocks).
    const int first = blockIdx.x * BLOCK_THREADS + threadIdx.x, step = gridDim.x * BLOCK_THREADS;
    const int first_bh = first / LW, step_bh = step / LW;
    const int first_bw = first - first_bh * LW, step_bw = step - step_bh * LW;
    for (long long row = blockIdx.y; row < rows; row += gridDim.y) {
        const int tap = (int)(row % taps);
        const REAL* x_plane = x + (row / taps) * H * W;
        const int top = (tap / KW) * dil_h - pad_h, left = (tap % KW) * dil_w - pad_w;
        REAL* cols_row = cols + row * blocks;
        int bh = first_bh, bw = first_bw;
        for (long long l = first; l < blocks; l += step) {
            const int h = top + bh * stride_h, w = left + bw * stride_w;
            const bool inside = (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
            cols_row[l] = inside ? x_plane[h * W + w] : to_real((acc_t)0);
            bh += step_bh;
            bw += step_bw;
            if (bw >= LW) {
                bw -= LW;
                ++bh;
            }
        }
    }
}

// grid: (blocks over an image plane's H*W pixels, min(N*C, 65535)); period = stride / gcd(stride, dil)
// per axis (taps.cuh)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
fold_forward(const REAL* __restrict__ cols, REAL* __restrict__ y, long long planes, int H, int W, int KH, int KW,
             int LH, int LW, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
             int period_h, int period_w)
{
    const int blocks = LH * LW;
    // period * dil can pass 2^31; the quotient, dil / gcd, fits
    const int bh_step = (int)((long long)period_h * dil_h / stride_h);
    const int bw_step = (int)((long long)period_w * dil_w / stride_w);
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const REAL* cols_plane = cols + plane * KH * KW * blocks;
        REAL* y_plane = y + plane * H * W;
        GRID_STRIDE_LOOP(pixel, H * W) {
            const int h = (int)pixel / W, w = (int)pixel - h * W;
            int bh_first = 0, bw_first = 0;
            const int i_first = first_tap(h, pad_h, stride_h, dil_h, KH, period_h, &bh_first);
            const int j_first = first_tap(w, pad_w, stride_w, dil_w, KW, period_w, &bw_first);
            acc_t sum = 0;
            if (i_first >= 0 && j_first >= 0) {
                // blocks fall as taps rise: none past a block < 0
                for (int i = i_first, bh = bh_first; i < KH && bh >= 0; i += period_h, bh -= bh_step) {
                    if (bh >= LH)
                        continue;
                    for (int j = j_first, bw = bw_first; j < KW && bw >= 0; j += period_w, bw -= bw_step)
                        if (bw < LW)
                            sum += to_acc(cols_plane[(i * KW + j) * blocks + bh * LW + bw]);
                }
            }
            y_plane[pixel] = to_real(sum);
        }
    }
}
