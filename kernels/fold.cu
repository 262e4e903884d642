// Unfold (im2col) and Fold (col2im) over NCHW, PyTorch's F.unfold / F.fold (nn.Unfold / nn.Fold).
// Columns cols (N, C*KH*KW, L): row c*KH*KW + i*KW + j holds tap (i, j) of every sliding block,
// block l = bh*LW + bw reading image pixel (bh*stride_h - pad_h + i*dil_h, bw*stride_w - pad_w +
// j*dil_w), zero outside the image; LH = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1 (LW
// likewise), L = LH*LW. This is the convolutions' im2col operand materialised: conv2d_fprop.cu's B
// tile, reduction row (c, r, s) = (c, i, j) and GEMM column (n, p, q) = (n, bh, bw), which the conv
// kernels gather from x without storing it.
//
// Not a GEMM: one thread per element written, no reduction across threads.
//  * unfold: rows (n, c, tap) of cols walked as for_each_plane_pixel (plane_walk.cuh) walks planes
//    (grid: plane_pixel_grid), consecutive threads consecutive blocks (coalesced stores), without its
//    per-element divisions: rows of more than half a block L blocks one a block row, each row's tap
//    and image plane decoded once before its walk and each block's (bh, bw) stepped with a carry;
//    rows of at most half a block (L <= 128: a 3x3 kernel over 8x8 maps has L = 64, where one row a
//    block row left 192 of 256 threads idle) several to a block, a thread's block l fixed and its
//    rows' (plane, i, j) stepped with carries. Each element is a copy of its pixel or 0 (no
//    arithmetic: bit exact).
//  * fold: a GATHER, no atomics, over for_each_plane_pixel (planes of at most 128 pixels several to a
//    block): the thread of image pixel (h, w) of plane (n, c) sums the column
//    elements that read it, taps (i, j) in increasing row-major order (the NumPy oracle's order):
//    tap i reads row h from block bh = (h + pad_h - i*dil_h) / stride_h where that is a whole
//    number in [0, LH) (columns likewise): taps i0, i0 + period, ... (taps.cuh, as the depthwise
//    dgrad's), so no thread visits a tap of another phase and the inner loop has no div/mod. acc_t
//    sums: float16 adds in FP32 and rounds each output once; deterministic, bit-identical run to run.
// Unfold's backward pass is fold of dy and fold's is unfold of dy: these two kernels are all four.
// In-row and in-plane indices are int (the host refuses rows, image planes and a plane's columns,
// C*KH*KW*L / C elements, of 2^31 or more); row and plane offsets are 64-bit.

#include "plane_walk.cuh"
#include "taps.cuh"

// grid: cnn_gpu.gpu._grid.plane_pixel_grid(N*C*KH*KW, LH*LW)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
unfold_forward(const REAL* __restrict__ x, REAL* __restrict__ cols, long long rows, int H, int W, int KH, int KW,
               int LH, int LW, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w)
{
    const int taps = KH * KW, blocks = LH * LW;
    if (2 * blocks <= BLOCK_THREADS) {
        // Rows of at most half a block go BLOCK_THREADS / blocks to a block, as for_each_plane_pixel's
        // groups: a thread keeps one block l, its (bh, bw) divided once, and steps its rows, row =
        // (plane * KH + i) * KW + j, by the same stride: (plane, i, j) stepped with carries, not divided.
        const int per_block = BLOCK_THREADS / blocks, sub = (int)threadIdx.x / blocks;
        if (sub >= per_block)
            return;   // the threads past the block's whole rows
        const int l = (int)threadIdx.x - sub * blocks, bh = l / LW, bw = l - bh * LW;
        const int top = bh * stride_h - pad_h, left = bw * stride_w - pad_w;
        const long long first = (long long)blockIdx.y * per_block + sub, step = (long long)gridDim.y * per_block;
        const long long plane_step = step / taps;
        const int tap_step = (int)(step - plane_step * taps), i_step = tap_step / KW, j_step = tap_step - i_step * KW;
        const long long first_plane = first / taps, image = (long long)H * W;
        const int tap = (int)(first - first_plane * taps);
        int i = tap / KW, j = tap - i * KW;
        const REAL* x_plane = x + first_plane * image;
        REAL* out = cols + first * blocks + l;
        for (long long row = first; row < rows; row += step, out += step * blocks) {
            const int h = top + i * dil_h, w = left + j * dil_w;
            const bool inside = (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
            *out = inside ? x_plane[h * W + w] : to_real((acc_t)0);
            x_plane += plane_step * image;
            i += i_step;
            j += j_step;
            if (j >= KW) {
                j -= KW;
                ++i;
            }
            if (i >= KH) {
                i -= KH;
                x_plane += image;
            }
        }
        return;
    }
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

// grid: cnn_gpu.gpu._grid.plane_pixel_grid(N*C, H*W) (for_each_plane_pixel); period = stride / gcd(stride, dil)
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
    for_each_plane_pixel(planes, H * W, [&](long long plane, int pixel) {
        const REAL* cols_plane = cols + plane * KH * KW * blocks;
        const int h = pixel / W, w = pixel - h * W;
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
        y[plane * H * W + pixel] = to_real(sum);
    });
}
